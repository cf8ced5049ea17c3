//! `verify`: every archive in the directory checked against its record, one line each.

use std::io::Write;
use std::path::PathBuf;

use tracing::info;

use crate::app::AppError;
use crate::store::{ArchiveStore, verify};

pub(super) async fn verify(dir: PathBuf) -> Result<(), AppError> {
    let store = ArchiveStore::new(&dir);
    let report = crate::store::blocking(move || verify::verify(&store)).await;
    let mut out = std::io::stdout().lock();
    for (path, finding) in &report.findings {
        let _ = writeln!(out, "{:<10} {}: {finding}", finding.label(), path.display());
    }
    let problems = report.problems();
    info!(archives = report.findings.len(), problems, dir = %dir.display(), "verified");
    match problems {
        0 => Ok(()),
        problems => Err(AppError::VerifyFailed { problems, total: report.findings.len(), dir }),
    }
}

//! `--prune`: remove archives this tool made for images no longer in the list.
//!
//! Only archives with a readable record of ours are candidates; anything else in the directory
//! (other tools' files, archives from the seed chart, unreadable records) is never touched. Each
//! removal happens under the archive's lock, so an archive being built or verified is skipped.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::archive::{ArchiveError, ArchiveStore};
use crate::lock::ArchiveLock;
use crate::record::record_path;

/// Removes the recorded archives (and their records and lock files) whose relative path is not in
/// `wanted`. Returns the relative paths removed.
pub fn prune(store: &ArchiveStore, wanted: &HashSet<PathBuf>) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut removed = Vec::new();
    for (relative, record) in store.recorded()? {
        if wanted.contains(&relative) {
            continue;
        }
        let archive = store.path_of(&relative);
        let lock = match ArchiveLock::try_acquire(&archive) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                info!(archive = %relative.display(), "not pruned: another process is working on it");
                continue;
            }
            Err(e) => {
                warn!(archive = %relative.display(), "not pruned: {e}");
                continue;
            }
        };
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| ArchiveError::Cleanup { path, source }
        };
        remove_if_present(&archive).map_err(failed(&archive))?;
        let record_file = record_path(&archive);
        remove_if_present(&record_file).map_err(failed(&record_file))?;
        drop(lock);
        // Drop the `<user>/` directory if that was its last archive.
        if let Some(parent) = archive.parent()
            && parent != store.root()
        {
            let _ = fs::remove_dir(parent);
        }
        info!(archive = %relative.display(), reference = %record.reference, "pruned: no longer in the image list");
        removed.push(relative);
    }
    Ok(removed)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

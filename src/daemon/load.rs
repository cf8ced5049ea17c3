//! `load`: the consumer side. Archives go into a runner's own daemon before a CI job starts.
//!
//! Each archive is read once to check it (a complete image archive, matching its record when it
//! has one) and to learn its image ID from `manifest.json`; an image the daemon already has is
//! skipped; anything else is streamed to the daemon's load endpoint. Nothing is ever written to the
//! archive directory, so it can be mounted read-only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::daemon::DockerDaemon;
use crate::format::layout::ArchiveContents;
use crate::human;
use crate::store::check::{FileCheck, check_file};
use crate::store::record::{Record, RecordError};

/// One archive to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadTarget {
    /// How it was named (relative to the directory, or as given).
    pub label: String,
    /// Where it is.
    pub path: PathBuf,
}

/// What happened to one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Sent to the daemon, which loaded these images.
    Loaded { images: Vec<String>, bytes: u64, elapsed: Duration },
    /// The daemon already had every image in it, under every tag.
    Present,
    /// No such file.
    Missing,
    /// Not a complete archive, or not matching its record; not sent.
    Damaged(String),
    /// The daemon refused it or the transfer failed.
    Failed(String),
    /// Shutdown came first.
    Cancelled,
}

impl LoadOutcome {
    /// The one-word status for reports.
    pub fn label(&self) -> &'static str {
        match self {
            LoadOutcome::Loaded { .. } => "loaded",
            LoadOutcome::Present => "present",
            LoadOutcome::Missing => "missing",
            LoadOutcome::Damaged(_) => "damaged",
            LoadOutcome::Failed(_) => "failed",
            LoadOutcome::Cancelled => "cancelled",
        }
    }
}

/// Loads `targets` into the daemon, up to `concurrency` at a time, in the given order.
pub async fn load_all(
    daemon: &DockerDaemon,
    targets: &[LoadTarget],
    concurrency: usize,
    cancel: &CancellationToken,
) -> Vec<(LoadTarget, LoadOutcome)> {
    let mut outcomes: Vec<(usize, LoadOutcome)> = stream::iter(targets.iter().enumerate())
        .map(|(i, target)| async move {
            let span = info_span!("archive", archive = %target.label);
            (i, load_one(daemon, target, cancel).instrument(span).await)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(i, o)| (targets[i].clone(), o)).collect()
}

async fn load_one(daemon: &DockerDaemon, target: &LoadTarget, cancel: &CancellationToken) -> LoadOutcome {
    if cancel.is_cancelled() {
        return LoadOutcome::Cancelled;
    }
    if !target.path.is_file() {
        warn!(path = %target.path.display(), "missing: no archive at this path");
        return LoadOutcome::Missing;
    }
    let path = target.path.clone();
    let checked = tokio::task::spawn_blocking(move || check(&path)).await.expect("archive check panicked");
    let (contents, size) = match checked {
        Ok(ok) => ok,
        Err(why) => {
            error!("damaged, not loaded: {why}");
            return LoadOutcome::Damaged(why);
        }
    };
    match daemon.has_images(&contents).await {
        Ok(true) => {
            info!("already present in the daemon");
            return LoadOutcome::Present;
        }
        Ok(false) => {}
        Err(e) => warn!("cannot tell whether the daemon has it, loading: {e}"),
    }
    let started = Instant::now();
    let loaded = tokio::select! {
        biased;
        _ = cancel.cancelled() => return LoadOutcome::Cancelled,
        loaded = daemon.load(&target.path) => loaded,
    };
    match loaded {
        Ok(images) => {
            let elapsed = started.elapsed();
            info!(
                bytes = size,
                load_ms = elapsed.as_millis() as u64,
                "loaded {} in {} ({:.0} MiB/s): {}",
                human::bytes(size),
                human::duration(elapsed),
                human::mib_per_s(size, elapsed),
                images.join(", ")
            );
            LoadOutcome::Loaded { images, bytes: size, elapsed }
        }
        Err(e) => {
            error!("{e}");
            LoadOutcome::Failed(e.to_string())
        }
    }
}

/// Reads the archive and compares it with its record. If they disagree, reads both once more:
/// the DaemonSet may have replaced the archive (and then its record) while we read.
fn check(path: &Path) -> Result<(ArchiveContents, u64), String> {
    let mut last = String::new();
    for _ in 0..2 {
        let record = match Record::read(path) {
            Ok(record) => record,
            Err(RecordError::Invalid { message, .. }) => {
                return Err(format!("its record is unreadable: {message}"));
            }
            Err(e) => return Err(e.to_string()),
        };
        let file = check_file(path).map_err(|e| e.to_string())?;
        match compare(record.as_ref(), file) {
            Ok(ok) => return Ok(ok),
            Err(why) => last = why,
        }
    }
    Err(last)
}

fn compare(record: Option<&Record>, file: FileCheck) -> Result<(ArchiveContents, u64), String> {
    let contents = file.contents.map_err(|why| format!("not a complete image archive: {why}"))?;
    if let Some(record) = record {
        if let Some(why) = &record.damaged {
            return Err(format!("verify marked it damaged: {why}"));
        }
        if record.size != file.size {
            return Err(format!("it has {} bytes, its record says {}", file.size, record.size));
        }
        if record.sha256 != file.sha256 {
            return Err(format!("its sha256 is {}, its record says {}", file.sha256, record.sha256));
        }
    }
    Ok((contents, file.size))
}

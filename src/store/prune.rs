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

use crate::store::names::record_path;
use crate::store::{ArchiveStore, StoreError, listing};

/// Removes the recorded archives (and their records) whose relative path is not in `wanted`
/// (blocking I/O). Returns the relative paths removed; unreadable records and paths are logged and
/// left alone, and the walk goes on.
pub fn prune(store: &ArchiveStore, wanted: &HashSet<PathBuf>) -> Result<Vec<PathBuf>, StoreError> {
    let mut removed = Vec::new();
    let walk = listing::recorded(store.root());
    for (path, why) in &walk.unreadable {
        warn!(path = %path.display(), "not pruned: cannot read it: {why}");
    }
    for (relative, record) in walk.found {
        if wanted.contains(&relative) {
            continue;
        }
        let guard = match store.try_lock(&relative) {
            Ok(Some(guard)) => guard,
            Ok(None) => {
                info!(archive = %relative.display(), "not pruned: another process is working on it");
                continue;
            }
            Err(e) => {
                warn!(archive = %relative.display(), "not pruned: {e}");
                continue;
            }
        };
        let archive = guard.path().to_owned();
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Cleanup { path, source }
        };
        remove_if_present(&archive).map_err(failed(&archive))?;
        let record_file = record_path(&archive);
        remove_if_present(&record_file).map_err(failed(&record_file))?;
        drop(guard);
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

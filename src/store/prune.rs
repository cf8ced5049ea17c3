//! `--prune`: remove archives this tool made for images no longer in the list.
//!
//! Only archives with a readable record of ours are candidates; anything else in the directory
//! (other tools' files, archives from the seed chart, unreadable records) is never touched. Each
//! removal happens under the archive's lock, so an archive being built or verified is skipped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::store::beneath::{BeneathError, Dir};
use crate::store::names::RECORD_SUFFIX;
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
        let (dir, name) = (guard.dir(), guard.name());
        let failed = |e: BeneathError| match e {
            BeneathError::Io { path, source } => StoreError::Cleanup { path, source },
            other => StoreError::Unsafe(other),
        };
        dir.remove(name).map_err(failed)?;
        dir.remove(&format!("{name}{RECORD_SUFFIX}")).map_err(failed)?;
        drop(guard);
        // Drop the `<user>/` directory if that was its last archive (never through a link).
        if let Some(user) = relative.parent().and_then(Path::to_str).filter(|p| !p.is_empty())
            && let Ok(root) = Dir::open(store.root(), Path::new(""), false)
        {
            root.remove_empty_dir(user);
        }
        info!(archive = %relative.display(), reference = %record.reference, "pruned: no longer in the image list");
        removed.push(relative);
    }
    Ok(removed)
}

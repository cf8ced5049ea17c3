//! Hot reload of `--images-file` for `run`: polls the file's content (a ConfigMap volume swaps a
//! `..data` symlink, so the path's inode says nothing) and hands a changed, valid list to the loop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::image::list::{self, ImageListError, ImageSpec};
use crate::preload::status::StatusFeed;

/// How often the file is read.
pub const POLL: Duration = Duration::from_secs(2);

/// Where the list comes from: the positional arguments and the images file.
#[derive(Debug, Clone)]
pub struct ListSource {
    /// `IMAGE` arguments.
    pub arguments: Vec<String>,
    /// `--images-file`.
    pub file: PathBuf,
}

/// Why a changed list was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    List(#[from] ImageListError),
    #[error("the list is empty")]
    Empty,
}

impl ListSource {
    /// Reads and validates the list.
    pub fn load(&self) -> Result<Vec<ImageSpec>, ReloadError> {
        let list = list::load(&self.arguments, Some(&self.file))?;
        for (origin, reference) in &list.duplicates {
            warn!("{origin}: {reference} names an image already listed; ignored");
        }
        if list.images.is_empty() {
            return Err(ReloadError::Empty);
        }
        Ok(list.images)
    }
}

async fn content_hash(path: &Path) -> Option<[u8; 32]> {
    let path = path.to_owned();
    // An unreadable file hashes as "nothing": the load below reports why.
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path).ok()).await.ok().flatten()?;
    Some(Sha256::digest(&bytes).into())
}

/// Polls `source.file` every `poll` until `cancel`; a change that validates replaces the list in
/// `list`, one that does not is refused (logged, counted) and the previous list stays.
pub async fn watch_list(
    source: ListSource,
    list: watch::Sender<Vec<ImageSpec>>,
    feed: StatusFeed,
    poll: Duration,
    cancel: CancellationToken,
) {
    // Nothing seen yet: the first poll compares the file with the list in force, so a change made
    // while the daemon was awaited (after the list was first read) is not missed.
    let mut seen = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let hash = Some(content_hash(&source.file).await);
        if hash == seen {
            continue;
        }
        seen = hash;
        let loader = source.clone();
        let loaded = match tokio::task::spawn_blocking(move || loader.load()).await {
            Ok(loaded) => loaded,
            Err(e) => {
                error!("reading the image list failed: {e}");
                continue;
            }
        };
        match loaded {
            Ok(images) => {
                let before = list.borrow().clone();
                if images == before {
                    continue;
                }
                let added = images.iter().filter(|i| !before.contains(i)).count();
                let removed = before.iter().filter(|i| !images.contains(i)).count();
                info!(
                    file = %source.file.display(),
                    images = images.len(),
                    added,
                    removed,
                    "the images file changed: applying the new list"
                );
                list.send_replace(images);
            }
            Err(e) => {
                feed.metrics().list_refused();
                error!(
                    file = %source.file.display(),
                    images = list.borrow().len(),
                    "refused the changed images file, keeping the previous list: {e}"
                );
            }
        }
    }
}

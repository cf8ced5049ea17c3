//! The archive directory as one concept: where archives live, the one path by which a new one is
//! written and published, their records and locks, the disk guard, prune and verify.
//!
//! Callers never take locks or touch files themselves: [`ArchiveStore::lock`] hands out an
//! [`ArchiveGuard`] for one archive, and everything done to that archive goes through it. Every
//! file-system call of the async API runs on a blocking thread.

pub mod beneath;
pub mod check;
pub mod error;
pub mod inventory;
pub mod listing;
pub mod lock;
pub mod names;
pub mod prune;
pub mod publish;
pub mod record;
pub mod space;
pub mod state;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

pub use error::{StoreError, StoreErrorKind};
pub use lock::LockError;
pub use publish::{PublishError, Published, RecordDraft};
pub use state::{ArchiveState, RecordState};
pub use writer::SpaceWatch;

use listing::Walk;
use lock::ArchiveLock;
use record::Record;

/// The directory that holds the archives.
#[derive(Debug, Clone)]
pub struct ArchiveStore {
    root: PathBuf,
}

/// One archive, locked: while the guard lives no other process decides on, builds, verifies or
/// prunes it. Dropping it releases the lock.
#[derive(Debug)]
pub struct ArchiveGuard {
    path: PathBuf,
    name: String,
    lock: ArchiveLock,
}

impl ArchiveStore {
    /// The store rooted at `root` (created when the first archive is written).
    pub fn new(root: impl Into<PathBuf>) -> ArchiveStore {
        ArchiveStore { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of an archive given relative to the directory.
    pub fn path_of(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// Locks the archive at `relative`, calling `on_wait` once if another process holds it and
    /// then waiting until it is free or `cancel` fires.
    pub async fn lock(
        &self,
        relative: &Path,
        cancel: &CancellationToken,
        on_wait: impl FnOnce(),
    ) -> Result<ArchiveGuard, LockError> {
        let lock = ArchiveLock::acquire(&self.root, relative, cancel, on_wait).await?;
        Ok(self.guard(relative, lock))
    }

    /// Locks the archive at `relative` if nobody else holds it (blocking I/O).
    pub fn try_lock(&self, relative: &Path) -> Result<Option<ArchiveGuard>, LockError> {
        Ok(ArchiveLock::try_acquire(&self.root, relative)?.map(|lock| self.guard(relative, lock)))
    }

    fn guard(&self, relative: &Path, lock: ArchiveLock) -> ArchiveGuard {
        let name = relative.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        ArchiveGuard { path: self.path_of(relative), name, lock }
    }

    /// Every archive file (`*.tar`) in the directory, relative, sorted, and what could not be
    /// read.
    pub async fn archives(&self) -> Walk<PathBuf> {
        let root = self.root.clone();
        blocking(move || listing::archives(&root)).await
    }

    /// Every archive with a readable record, and the records that could not be read.
    pub async fn recorded(&self) -> Walk<(PathBuf, Record)> {
        let root = self.root.clone();
        blocking(move || listing::recorded(&root)).await
    }

    /// Removes temporary and lock files left by killed runs (see [`listing::remove_leftovers`]).
    pub async fn remove_leftovers(&self) -> Walk<PathBuf> {
        let root = self.root.clone();
        blocking(move || listing::remove_leftovers(&root)).await
    }
}

impl ArchiveGuard {
    /// The archive's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archive's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The archive's directory, held open: every operation on the archive goes through it.
    pub fn dir(&self) -> &beneath::Dir {
        self.lock.dir()
    }

    /// The archive's state on disk and what its record says (see [`state::read`]).
    pub async fn state(&self) -> Result<(Option<ArchiveState>, RecordState), StoreError> {
        let (dir, name) = (self.dir().try_clone().map_err(StoreError::from)?, self.name.clone());
        blocking(move || state::read(&dir, &name)).await
    }

    /// Marks the archive as confirmed current (see [`state::touch`]).
    pub async fn touch(&self) -> Result<(), StoreError> {
        let (dir, name) = (self.dir().try_clone().map_err(StoreError::from)?, self.name.clone());
        blocking(move || state::touch(&dir, &name)).await
    }
}

/// Runs blocking file-system work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task failed: {e}"),
    }
}

//! One writer per archive: an advisory `flock` on `.<archive-name>.lock` next to the archive, held
//! while an archive is decided on, built, verified or pruned. Two processes sharing a directory (a
//! DaemonSet and a manual `warm`, two releases) never build the same archive at once: the second
//! waits, then decides again (and usually finds the archive fresh).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::names::lock_path;

/// Pause between attempts while another process holds the lock.
const RETRY: Duration = Duration::from_millis(250);

/// A held archive lock. Dropping it removes the lock file, then releases the lock: the lock file
/// exists only while someone holds it (or was killed holding it).
#[derive(Debug)]
pub struct ArchiveLock {
    file: Option<File>,
    path: PathBuf,
}

impl Drop for ArchiveLock {
    fn drop(&mut self) {
        // Unlink first, then unlock: a waiter that then locks the unlinked file notices (inode
        // check in `try_acquire`) and starts over on a fresh file.
        let _ = fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

/// Errors taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("interrupted while waiting for the lock on {path}")]
    Cancelled { path: PathBuf },
}

impl ArchiveLock {
    /// Takes the lock without waiting; `Ok(None)` if another process holds it. Creates the
    /// archive's directory if needed.
    pub fn try_acquire(archive: &Path) -> Result<Option<ArchiveLock>, LockError> {
        let path = lock_path(archive);
        let io_err = |source| LockError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        loop {
            let file =
                OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
            // A pruner may have removed the lock file after we opened it: a lock on an unlinked
            // file protects nothing, so start over on the file now at that path.
            let held = file.metadata().map_err(io_err)?;
            match fs::metadata(&path) {
                Ok(current) if current.ino() == held.ino() && current.dev() == held.dev() => {
                    return Ok(Some(ArchiveLock { file: Some(file), path }));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
    }

    /// [`ArchiveLock::try_acquire`] on a blocking thread.
    pub async fn try_acquire_async(archive: &Path) -> Result<Option<ArchiveLock>, LockError> {
        let owned = archive.to_owned();
        crate::store::blocking(move || ArchiveLock::try_acquire(&owned)).await
    }

    /// Takes the lock, calling `on_wait` once if another process holds it and then polling until
    /// it is free or `cancel` fires. The file-system work runs on a blocking thread.
    pub async fn acquire(
        archive: &Path,
        cancel: &CancellationToken,
        on_wait: impl FnOnce(),
    ) -> Result<ArchiveLock, LockError> {
        if let Some(lock) = ArchiveLock::try_acquire_async(archive).await? {
            return Ok(lock);
        }
        on_wait();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(LockError::Cancelled { path: lock_path(archive) }),
                _ = tokio::time::sleep(RETRY) => {}
            }
            if let Some(lock) = ArchiveLock::try_acquire_async(archive).await? {
                return Ok(lock);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_waits_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("u/app_1.tar");
        let first = ArchiveLock::try_acquire(&archive).unwrap().expect("free");
        assert!(ArchiveLock::try_acquire(&archive).unwrap().is_none(), "held by the first");
        let cancel = CancellationToken::new();
        let mut waited = false;
        let release = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        };
        let (second, ()) = tokio::join!(ArchiveLock::acquire(&archive, &cancel, || waited = true), release);
        assert!(second.is_ok());
        assert!(waited);
        assert!(lock_path(&archive).exists(), "held: the file is there");
        drop(second);
        assert!(!lock_path(&archive).exists(), "released: no lock file left behind");
    }

    #[tokio::test]
    async fn waiting_is_cancellable() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("app_1.tar");
        let _held = ArchiveLock::try_acquire(&archive).unwrap().unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = ArchiveLock::acquire(&archive, &cancel, || {}).await.unwrap_err();
        assert!(matches!(err, LockError::Cancelled { .. }));
    }
}

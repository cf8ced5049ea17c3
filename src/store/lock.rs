//! One writer per archive: an advisory `flock` on `.<archive-name>.lock` next to the archive, held
//! while an archive is decided on, built, verified or pruned. Two processes sharing a directory (a
//! DaemonSet and a manual `warm`, two releases) never build the same archive at once: the second
//! waits, then decides again (and usually finds the archive fresh).

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::beneath::{BeneathError, Dir, Entry};
use crate::store::names::lock_path;

/// Pause between attempts while another process holds the lock.
const RETRY: Duration = Duration::from_millis(250);

/// A held archive lock, with the handle of the archive's directory every operation on the archive
/// goes through. Dropping it removes the lock file, then releases the lock: the lock file exists
/// only while someone holds it (or was killed holding it).
#[derive(Debug)]
pub struct ArchiveLock {
    file: Option<File>,
    dir: Dir,
    name: String,
}

impl Drop for ArchiveLock {
    fn drop(&mut self) {
        // Unlink first, then unlock: a waiter that then locks the unlinked file notices (inode
        // check in `try_acquire`) and starts over on a fresh file.
        self.dir.unlink(&self.name);
        drop(self.file.take());
    }
}

/// Errors taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot lock {}: {source}", .path.display())]
    Unsafe { path: PathBuf, source: BeneathError },
    #[error("interrupted while waiting for the lock on {path}")]
    Cancelled { path: PathBuf },
}

impl ArchiveLock {
    /// The directory the archive lives in, held open.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Takes the lock of the archive at `relative` under `root` without waiting; `Ok(None)` if
    /// another process holds it. Creates the archive's directory if needed. No symbolic link under
    /// `root` is followed: one where the lock or the `<user>/` directory should be is an error.
    pub fn try_acquire(root: &Path, relative: &Path) -> Result<Option<ArchiveLock>, LockError> {
        let path = lock_path(&root.join(relative));
        let unsafe_err = |source| LockError::Unsafe { path: path.clone(), source };
        let io_err = |source| LockError::Io { path: path.clone(), source };
        let parent = relative.parent().unwrap_or(Path::new(""));
        let dir = Dir::open(root, parent, true).map_err(unsafe_err)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        loop {
            let file = dir.open_or_create(&name).map_err(unsafe_err)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
            // A pruner may have removed the lock file after we opened it: a lock on an unlinked
            // file protects nothing, so start over on the file now at that path.
            let held = file.metadata().map_err(io_err)?;
            use std::os::unix::fs::MetadataExt;
            match dir.entry(&name).map_err(unsafe_err)? {
                Entry::File { dev, ino, .. } if ino == held.ino() && dev == held.dev() => {
                    return Ok(Some(ArchiveLock { file: Some(file), dir, name }));
                }
                Entry::Missing | Entry::File { .. } => continue,
                Entry::Symlink => return Err(unsafe_err(BeneathError::Symlink { path: path.clone() })),
                Entry::Other => return Err(io_err(io::Error::other("not a regular file"))),
            }
        }
    }

    /// [`ArchiveLock::try_acquire`] on a blocking thread.
    pub async fn try_acquire_async(root: &Path, relative: &Path) -> Result<Option<ArchiveLock>, LockError> {
        let (root, relative) = (root.to_owned(), relative.to_owned());
        crate::store::blocking(move || ArchiveLock::try_acquire(&root, &relative)).await
    }

    /// Takes the lock, calling `on_wait` once if another process holds it and then polling until
    /// it is free or `cancel` fires. The file-system work runs on a blocking thread.
    pub async fn acquire(
        root: &Path,
        relative: &Path,
        cancel: &CancellationToken,
        on_wait: impl FnOnce(),
    ) -> Result<ArchiveLock, LockError> {
        if let Some(lock) = ArchiveLock::try_acquire_async(root, relative).await? {
            return Ok(lock);
        }
        on_wait();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(LockError::Cancelled { path: lock_path(&root.join(relative)) }),
                _ = tokio::time::sleep(RETRY) => {}
            }
            if let Some(lock) = ArchiveLock::try_acquire_async(root, relative).await? {
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
        let rel = Path::new("u/app_1.tar");
        let archive = dir.path().join(rel);
        let first = ArchiveLock::try_acquire(dir.path(), rel).unwrap().expect("free");
        assert!(ArchiveLock::try_acquire(dir.path(), rel).unwrap().is_none(), "held by the first");
        let cancel = CancellationToken::new();
        let mut waited = false;
        let release = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        };
        let (second, ()) =
            tokio::join!(ArchiveLock::acquire(dir.path(), rel, &cancel, || waited = true), release);
        assert!(second.is_ok());
        assert!(waited);
        assert!(lock_path(&archive).exists(), "held: the file is there");
        drop(second);
        assert!(!lock_path(&archive).exists(), "released: no lock file left behind");
    }

    #[tokio::test]
    async fn waiting_is_cancellable() {
        let dir = tempfile::tempdir().unwrap();
        let rel = Path::new("app_1.tar");
        let _held = ArchiveLock::try_acquire(dir.path(), rel).unwrap().unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = ArchiveLock::acquire(dir.path(), rel, &cancel, || {}).await.unwrap_err();
        assert!(matches!(err, LockError::Cancelled { .. }));
    }

    #[test]
    fn a_symlinked_lock_or_directory_is_refused_and_its_target_untouched() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("u")).unwrap();
        let target = outside.path().join("nologin");
        std::os::unix::fs::symlink(&target, dir.path().join("u/.app_1.tar.lock")).unwrap();
        let err = ArchiveLock::try_acquire(dir.path(), Path::new("u/app_1.tar")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("v")).unwrap();
        let err = ArchiveLock::try_acquire(dir.path(), Path::new("v/app_1.tar")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing created outside");
    }
}

//! Paths under the archive directory, resolved without following symbolic links.
//!
//! The directory may be writable by others (a hostPath shared with other pods), and the tool often
//! runs as root: a symlink planted where the tool expects its own file or `<user>/` directory must
//! never send a create, write, rename, time change or removal outside `--dir`. So `--dir` itself is
//! opened once (it is the operator's choice, symlink or not), and everything below it is reached
//! from that handle: with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it
//! (Linux 5.6+), otherwise one `O_NOFOLLOW` component at a time; files are then opened, created,
//! renamed, timed and removed relative to their directory's handle, never by path. A symlink is
//! reported as [`BeneathError::Symlink`] with its path and left alone.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// Problems resolving or using a path under the directory.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error(
        "{path} is a symbolic link; image-preloader never follows links in its directory and leaves it alone"
    )]
    Symlink { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl BeneathError {
    /// The underlying I/O error, when there is one.
    pub fn io(&self) -> Option<&io::Error> {
        match self {
            BeneathError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the path does not exist.
    pub fn is_not_found(&self) -> bool {
        self.io().is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
    }

    /// The same error as an `io::Error`, for callers that carry those.
    pub fn into_io(self) -> io::Error {
        match self {
            BeneathError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        }
    }
}

fn io_at(path: &Path, e: rustix::io::Errno) -> BeneathError {
    BeneathError::Io { path: path.to_owned(), source: e.into() }
}

/// A directory under (or at) `--dir`, held open: every file operation in it goes through this
/// handle.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What is at a name in a directory, without following a link there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Nothing.
    Missing,
    /// A regular file.
    File { size: u64, modified: SystemTime, dev: u64, ino: u64 },
    /// A symbolic link.
    Symlink,
    /// A directory, FIFO, device or socket.
    Other,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY.union(OFlags::CLOEXEC).union(OFlags::RDONLY);

impl Dir {
    /// Opens `root.join(relative)`, where `relative` holds only plain components (a `<user>/`
    /// directory, or nothing for `--dir` itself). With `create`, missing directories are made
    /// (mode 0755), `--dir` too.
    pub fn open(root: &Path, relative: &Path, create: bool) -> Result<Dir, BeneathError> {
        let root_fd = match rustix::fs::open(root, DIR_FLAGS, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) if create => {
                std::fs::create_dir_all(root)
                    .map_err(|source| BeneathError::Io { path: root.to_owned(), source })?;
                rustix::fs::open(root, DIR_FLAGS, Mode::empty()).map_err(|e| io_at(root, e))?
            }
            Err(rustix::io::Errno::NOTDIR) => {
                return Err(BeneathError::NotADirectory { path: root.to_owned() });
            }
            other => other.map_err(|e| io_at(root, e))?,
        };
        let mut dir = Dir { fd: root_fd, path: root.to_owned() };
        let names: Vec<&std::ffi::OsStr> = relative
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(Ok(name)),
                Component::CurDir => None,
                _ => Some(Err(())),
            })
            .collect::<Result<_, ()>>()
            .map_err(|()| BeneathError::Io {
                path: root.join(relative),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path"),
            })?;
        if names.is_empty() {
            return Ok(dir);
        }
        // The whole path in one call where the kernel can refuse links itself.
        if !create {
            match rustix::fs::openat2(
                &dir.fd,
                relative,
                DIR_FLAGS.union(OFlags::NOFOLLOW),
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            ) {
                Ok(fd) => return Ok(Dir { fd, path: root.join(relative) }),
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM | rustix::io::Errno::LOOP) => {}
                Err(rustix::io::Errno::NOTDIR) => {}
                Err(e) => return Err(io_at(&root.join(relative), e)),
            }
        }
        // One component at a time, never following a link (and finding out which one it was).
        for name in names {
            dir = dir.child(Path::new(name), create)?;
        }
        Ok(dir)
    }

    /// The directory `name` in this one, made if missing and `create`.
    fn child(&self, name: &Path, create: bool) -> Result<Dir, BeneathError> {
        let path = self.path.join(name);
        loop {
            match rustix::fs::openat(&self.fd, name, DIR_FLAGS.union(OFlags::NOFOLLOW), Mode::empty()) {
                Ok(fd) => return Ok(Dir { fd, path }),
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => continue,
                        Err(e) => return Err(io_at(&path, e)),
                    }
                }
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(match self.entry(name)? {
                        Entry::Symlink => BeneathError::Symlink { path },
                        _ => BeneathError::NotADirectory { path },
                    });
                }
                Err(e) => return Err(io_at(&path, e)),
            }
        }
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory (for messages).
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// What is at `name`, without following a link.
    pub fn entry(&self, name: impl AsRef<Path>) -> Result<Entry, BeneathError> {
        let name = name.as_ref();
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => {
                let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
                Ok(match kind {
                    rustix::fs::FileType::RegularFile => Entry::File {
                        size: stat.st_size as u64,
                        modified: SystemTime::UNIX_EPOCH
                            + std::time::Duration::new(stat.st_mtime as u64, stat.st_mtime_nsec as u32),
                        dev: stat.st_dev,
                        ino: stat.st_ino,
                    },
                    rustix::fs::FileType::Symlink => Entry::Symlink,
                    _ => Entry::Other,
                })
            }
            Err(rustix::io::Errno::NOENT) => Ok(Entry::Missing),
            Err(e) => Err(io_at(&self.path.join(name), e)),
        }
    }

    fn open_with(&self, name: &str, flags: OFlags, mode: u32) -> Result<File, BeneathError> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        match rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode)) {
            Ok(fd) => Ok(File::from(fd)),
            Err(rustix::io::Errno::LOOP) => Err(BeneathError::Symlink { path: self.path_of(name) }),
            Err(e) => Err(io_at(&self.path_of(name), e)),
        }
    }

    /// Opens the regular file `name` for reading; a link, FIFO or device is refused without
    /// being followed or waited on.
    pub fn open_read(&self, name: &str) -> Result<File, BeneathError> {
        let file = self.open_with(name, OFlags::RDONLY | OFlags::NONBLOCK, 0)?;
        let meta = file.metadata().map_err(|source| BeneathError::Io { path: self.path_of(name), source })?;
        if !meta.is_file() {
            return Err(BeneathError::Io {
                path: self.path_of(name),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        // Back to blocking reads.
        let _ = rustix::fs::fcntl_setfl(&file, OFlags::RDONLY);
        Ok(file)
    }

    /// Opens `name` for writing, creating it if missing (mode 0644, for lock files).
    pub fn open_or_create(&self, name: &str) -> Result<File, BeneathError> {
        self.open_with(name, OFlags::WRONLY | OFlags::CREATE, 0o644)
    }

    /// Creates a new file named `<prefix><random><suffix>` (mode 0600), never an existing one.
    pub fn create_temp(
        &self,
        prefix: &str,
        random: usize,
        suffix: &str,
    ) -> Result<(File, String), BeneathError> {
        loop {
            let name = format!("{prefix}{}{suffix}", random_chars(random));
            match self.open_with(&name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, 0o600) {
                Ok(file) => return Ok((file, name)),
                Err(BeneathError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Renames `from` over `to` in this directory. A link at `to` is refused (and left alone)
    /// rather than replaced: it is not this tool's file.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), BeneathError> {
        if self.entry(to)? == Entry::Symlink {
            return Err(BeneathError::Symlink { path: self.path_of(to) });
        }
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(|e| io_at(&self.path_of(to), e))
    }

    /// Removes the file `name` (a link there is refused); `Ok(false)` if there was none.
    pub fn remove(&self, name: &str) -> Result<bool, BeneathError> {
        match self.entry(name)? {
            Entry::Missing => return Ok(false),
            Entry::Symlink => return Err(BeneathError::Symlink { path: self.path_of(name) }),
            _ => {}
        }
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(io_at(&self.path_of(name), e)),
        }
    }

    /// Removes the file `name` without checking what it is (for our own temporaries and locks).
    pub fn unlink(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
    }

    /// Removes the empty directory `name` in this one, if it is empty and not a link.
    pub fn remove_empty_dir(&self, name: &str) {
        if matches!(self.entry(name), Ok(Entry::Other)) {
            let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR);
        }
    }

    /// Sets the modification (and access) time of the regular file `name`, never through a link.
    pub fn set_mtime(&self, name: &str, time: SystemTime) -> Result<(), BeneathError> {
        let file = self.open_with(name, OFlags::RDONLY | OFlags::NONBLOCK, 0)?;
        let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let stamp =
            rustix::fs::Timespec { tv_sec: since.as_secs() as i64, tv_nsec: since.subsec_nanos() as _ };
        let times = rustix::fs::Timestamps { last_access: stamp, last_modification: stamp };
        rustix::fs::futimens(&file, &times).map_err(|e| io_at(&self.path_of(name), e))
    }

    /// Makes the directory's entries durable.
    pub fn sync(&self) -> Result<(), BeneathError> {
        rustix::fs::fsync(&self.fd).map_err(|e| io_at(&self.path, e))
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Dir, BeneathError> {
        let fd = self
            .fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| BeneathError::Io { path: self.path.clone(), source })?;
        Ok(Dir { fd, path: self.path.clone() })
    }
}

/// `n` random alphanumeric characters (from the clock and a counter: unpredictability is not
/// needed, `O_EXCL` makes the name ours).
fn random_chars(n: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher
        .write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.write_u32(std::process::id());
    let mut bits = hasher.finish();
    (0..n)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char;
            bits /= ALPHABET.len() as u64;
            if bits == 0 {
                bits = hasher.finish().rotate_left(17) | 1;
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_refused_and_left_alone() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("team")).unwrap();
        let err = Dir::open(root.path(), Path::new("team"), true).unwrap_err();
        assert!(matches!(err, BeneathError::Symlink { .. }), "{err}");
        let err = Dir::open(root.path(), Path::new("team"), false).unwrap_err();
        assert!(matches!(err, BeneathError::Symlink { .. }), "{err}");

        let dir = Dir::open(root.path(), Path::new("real"), true).unwrap();
        std::os::unix::fs::symlink(outside.path().join("target"), root.path().join("real/.a.tar.lock"))
            .unwrap();
        let err = dir.open_or_create(".a.tar.lock").unwrap_err();
        assert!(matches!(err, BeneathError::Symlink { .. }), "{err}");
        assert!(dir.remove(".a.tar.lock").is_err());
        assert!(dir.set_mtime(".a.tar.lock", SystemTime::UNIX_EPOCH).is_err());
        let (_, temp) = dir.create_temp(".a.tar.", 6, ".partial").unwrap();
        assert!(matches!(dir.rename(&temp, ".a.tar.lock"), Err(BeneathError::Symlink { .. })));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing created outside");
        assert_eq!(dir.entry(".a.tar.lock").unwrap(), Entry::Symlink);
    }

    #[test]
    fn temporary_names_differ() {
        let names: std::collections::HashSet<_> = (0..1000).map(|_| random_chars(6)).collect();
        assert_eq!(names.len(), 1000);
        assert!(names.iter().all(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_alphanumeric())));
    }
}

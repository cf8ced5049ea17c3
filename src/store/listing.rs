//! Walking the archive directory: the archives, the records, and the leftovers of killed runs.
//! A path that cannot be read is reported with its reason and the walk goes on (blocking I/O).
//! Links are never followed (nor walked into): a link named like an archive is reported and left
//! alone.

use std::fs::TryLockError;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::store::beneath::{BeneathError, Dir};
use crate::store::names::{archive_of, is_archive, is_lock_file, is_temporary};
use crate::store::record::Record;

const LINK: &str =
    "a symbolic link; image-preloader never follows links in its directory and leaves it alone";

/// The handle of the directory an entry found by the walk is in.
fn dir_of(root: &Path, entry: &walkdir::DirEntry) -> Result<Dir, BeneathError> {
    let parent = relative(root, entry.path()).parent().map(Path::to_owned).unwrap_or_default();
    Dir::open(root, &parent, false)
}

fn name_of(entry: &walkdir::DirEntry) -> String {
    entry.file_name().to_string_lossy().into_owned()
}

/// What a walk found, and the paths it could not read (with why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk<T> {
    /// What was found, sorted by path.
    pub found: Vec<T>,
    /// Paths that could not be read, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl<T> Default for Walk<T> {
    fn default() -> Self {
        Walk { found: Vec::new(), unreadable: Vec::new() }
    }
}

/// Archives are at most two levels deep (`<user>/<image>_<tag>.tar`), and so are their records,
/// locks and temporaries. Symlinks are never followed.
fn entries(root: &Path, walk: &mut Walk<impl Sized>) -> Vec<walkdir::DirEntry> {
    let mut out = Vec::new();
    if !root.is_dir() {
        return out;
    }
    for entry in WalkDir::new(root).min_depth(1).max_depth(2).follow_links(false).sort_by_file_name() {
        match entry {
            Ok(entry) => out.push(entry),
            Err(e) => {
                let path = e.path().unwrap_or(root).to_owned();
                let why = e.io_error().map(|e| e.to_string()).unwrap_or_else(|| e.to_string());
                walk.unreadable.push((path, why));
            }
        }
    }
    out
}

fn relative(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_owned()
}

/// Every file named like an archive (`*.tar`) under `root`, relative, sorted.
pub fn archives(root: &Path) -> Walk<PathBuf> {
    let mut walk = Walk::default();
    for entry in entries(root, &mut walk) {
        let name = entry.file_name().to_string_lossy();
        if entry.file_type().is_file() && is_archive(&name) {
            walk.found.push(relative(root, entry.path()));
        } else if entry.file_type().is_symlink() && is_archive(&name) {
            walk.unreadable.push((entry.path().to_owned(), LINK.to_owned()));
        }
    }
    walk
}

/// Every archive under `root` that has a readable record, as `(relative path, record)`. Records
/// that cannot be read are reported, not returned: a file we cannot vouch for is not ours to touch.
pub fn recorded(root: &Path) -> Walk<(PathBuf, Record)> {
    let mut walk = Walk::default();
    for entry in entries(root, &mut walk) {
        if !entry.file_type().is_file() {
            continue;
        }
        let Some(archive) = archive_of(entry.path()) else { continue };
        let archive_name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let read = dir_of(root, &entry)
            .map_err(|e| e.to_string())
            .and_then(|dir| Record::read_in(&dir, &archive_name).map_err(|e| e.to_string()));
        match read {
            Ok(Some(record)) => walk.found.push((relative(root, &archive), record)),
            Ok(None) => {}
            Err(e) => walk.unreadable.push((entry.path().to_owned(), e)),
        }
    }
    walk
}

/// Removes temporary files and lock files left by killed runs. Files another live process holds
/// locked are left alone. Returns what was removed.
pub fn remove_leftovers(root: &Path) -> Walk<PathBuf> {
    let mut walk = Walk::default();
    for entry in entries(root, &mut walk) {
        let name = entry.file_name().to_str().unwrap_or("");
        if !entry.file_type().is_file() || !(is_temporary(name) || is_lock_file(name)) {
            continue;
        }
        let path = entry.path();
        match dir_of(root, &entry).and_then(|dir| remove_unless_locked(&dir, &name_of(&entry))) {
            Ok(true) => walk.found.push(path.to_owned()),
            Ok(false) => {}
            Err(e) => walk.unreadable.push((path.to_owned(), e.to_string())),
        }
    }
    walk
}

fn remove_unless_locked(dir: &Dir, name: &str) -> Result<bool, BeneathError> {
    let file = match dir.open_read(name) {
        Ok(file) => file,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(false),
        Err(TryLockError::Error(source)) => return Err(BeneathError::Io { path: dir.path_of(name), source }),
    }
    dir.remove(name)
}

//! Walking the archive directory: the archives, the records, and the leftovers of killed runs.
//! A path that cannot be read is reported with its reason and the walk goes on (blocking I/O).

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::store::names::{archive_of, is_archive, is_lock_file, is_temporary};
use crate::store::record::Record;

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
        match Record::read(&archive) {
            Ok(Some(record)) => walk.found.push((relative(root, &archive), record)),
            Ok(None) => {}
            Err(e) => walk.unreadable.push((entry.path().to_owned(), e.to_string())),
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
        match remove_unless_locked(path) {
            Ok(true) => walk.found.push(path.to_owned()),
            Ok(false) => {}
            Err(e) => walk.unreadable.push((path.to_owned(), e.to_string())),
        }
    }
    walk
}

fn remove_unless_locked(path: &Path) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(false),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

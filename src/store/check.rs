//! Reading an archive file back: its size, its checksum and whether it is a complete image archive.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::format::layout::{self, ArchiveContents};
use crate::format::tar::TarScanner;
use crate::store::beneath::Dir;
use crate::store::error::StoreError;

/// What reading an archive file back found.
#[derive(Debug, Clone)]
pub struct FileCheck {
    /// Bytes read.
    pub size: u64,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// What it holds, or why it is not a complete image archive.
    pub contents: Result<ArchiveContents, String>,
}

/// Opens the archive at `path` for reading: its directory by path, the file itself never through a
/// link (nor a FIFO or device).
fn open_path(path: &Path) -> Result<File, StoreError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = Dir::open(parent, Path::new(""), false)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(dir.open_read(&name)?)
}

/// Reads an archive file once, computing its checksum and checking it is a complete image archive
/// (blocking I/O).
pub fn check_file(path: &Path) -> Result<FileCheck, StoreError> {
    check_open(open_path(path)?, path)
}

/// [`check_file`] of the archive `name` in `dir`.
pub fn check_in(dir: &Dir, name: &str) -> Result<FileCheck, StoreError> {
    check_open(dir.open_read(name)?, &dir.path_of(name))
}

fn check_open(mut file: File, path: &Path) -> Result<FileCheck, StoreError> {
    let read_err = |source| StoreError::Stat { path: path.to_owned(), source };
    let mut scanner = TarScanner::new(layout::capture_filter);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut tar_error = None;
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if tar_error.is_none()
            && let Err(e) = scanner.update(&buf[..n])
        {
            tar_error = Some(e.to_string());
        }
    }
    let contents = match tar_error {
        Some(e) => Err(e),
        None => scanner
            .finish()
            .map_err(|e| e.to_string())
            .and_then(|listing| layout::check(&listing).map_err(|e| e.to_string())),
    };
    Ok(FileCheck { size, sha256: hex(&hasher.finalize()), contents })
}

/// Only the checksum of the archive `name` in `dir` (blocking I/O).
pub fn sha256_in(dir: &Dir, name: &str) -> Result<(u64, String), StoreError> {
    let path = dir.path_of(name);
    let read_err = |source| StoreError::Stat { path: path.clone(), source };
    let mut file = dir.open_read(name)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok((size, hex(&hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

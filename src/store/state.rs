//! What is on disk for one archive and what its record says, settled when the two disagree: a
//! `pending` record (a publish was interrupted) or a modification time other than the recorded one
//! (the file changed behind the record's back) is decided by checksum, not by size alone.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use tracing::info;

use crate::store::check::sha256_of;
use crate::store::error::StoreError;
use crate::store::record::{self, Record, RecordError};

/// What is on disk for an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveState {
    /// Modification time.
    pub modified: SystemTime,
    /// Size in bytes.
    pub size: u64,
}

/// What the archive's record says, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// No record (an archive made by another tool or an older version).
    Missing,
    /// A readable record.
    Present {
        /// The size it promises.
        size: u64,
        /// The registry digest the archive was built from, if known.
        repo_digest: Option<String>,
        /// Why `verify` found the archive damaged, if it did.
        damaged: Option<String>,
        /// The platform of the archived image, if recorded.
        platform: Option<String>,
    },
    /// A record that cannot be read or parsed.
    Unreadable(String),
}

/// Reads the archive's state and its record, settling a pending or out-of-date record by checksum
/// (blocking I/O).
pub fn read(path: &Path) -> Result<(Option<ArchiveState>, RecordState), StoreError> {
    let archive = match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Some(ArchiveState {
            modified: meta.modified().map_err(|source| StoreError::Stat { path: path.to_owned(), source })?,
            size: meta.len(),
        }),
        Ok(_) => return Err(StoreError::NotAFile { path: path.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(StoreError::Stat { path: path.to_owned(), source }),
    };
    let record = match Record::read(path) {
        Ok(None) => RecordState::Missing,
        Ok(Some(r)) => match archive {
            Some(state) if needs_settling(&r, state) => settle(path, r, state)?,
            _ => present(r),
        },
        Err(RecordError::Invalid { message, .. }) => RecordState::Unreadable(message),
        Err(e) => return Err(e.into()),
    };
    Ok((archive, record))
}

fn present(r: Record) -> RecordState {
    RecordState::Present {
        size: r.size,
        repo_digest: r.repo_digest,
        damaged: r.damaged,
        platform: r.platform,
    }
}

/// Whether the record cannot be trusted on size alone.
fn needs_settling(record: &Record, archive: ArchiveState) -> bool {
    record.pending || record.mtime_ns.is_some_and(|t| t != record::nanos(archive.modified))
}

/// Compares the archive's checksum with the record's: if they agree the record is confirmed (and
/// rewritten, final, with the current time); if not, the archive is reported damaged so the next
/// decision rebuilds it.
fn settle(path: &Path, mut record: Record, archive: ArchiveState) -> Result<RecordState, StoreError> {
    let why = if record.pending { "a publish was interrupted" } else { "the archive's time changed" };
    let (size, sha256) = sha256_of(path)?;
    if size == record.size && sha256 == record.sha256 {
        info!(archive = %path.display(), "{why}; the archive matches its record (checksum confirmed)");
        record.pending = false;
        record.mtime_ns = Some(record::nanos(archive.modified));
        record.write_durably(path)?;
        return Ok(present(record));
    }
    info!(archive = %path.display(), "{why}; the archive does not match its record (checksum differs): rebuilding");
    Ok(RecordState::Present {
        size: record.size,
        repo_digest: record.repo_digest,
        damaged: Some(format!("{why} and its checksum differs from the record's")),
        platform: record.platform,
    })
}

/// Marks an archive as confirmed current: its modification time becomes now (so the age rules
/// start over) and its record notes the check and the new time (blocking I/O).
pub fn touch(path: &Path) -> Result<(), StoreError> {
    let now = SystemTime::now();
    filetime::set_file_mtime(path, filetime::FileTime::from_system_time(now))
        .map_err(|source| StoreError::Touch { path: path.to_owned(), source })?;
    let modified = fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|source| StoreError::Touch { path: path.to_owned(), source })?;
    if let Some(mut record) = Record::read(path)? {
        record.checked = record::timestamp(now);
        record.mtime_ns = Some(record::nanos(modified));
        record.write(path)?;
    }
    Ok(())
}

//! What is on disk for one archive and what its record says, settled when the two disagree: a
//! `pending` record (a publish was interrupted) or a modification time other than the recorded one
//! (the file changed behind the record's back) is decided by checksum, not by size alone.

use std::time::SystemTime;

use tracing::info;

use crate::store::beneath::{BeneathError, Dir, Entry};
use crate::store::check::sha256_in;
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

/// Reads the state of the archive `name` in `dir` and its record, settling a pending or out-of-date
/// record by checksum (blocking I/O). A link where the archive should be is an error, left alone.
pub fn read(dir: &Dir, name: &str) -> Result<(Option<ArchiveState>, RecordState), StoreError> {
    let path = dir.path_of(name);
    let archive = match dir.entry(name)? {
        Entry::File { size, modified, .. } => Some(ArchiveState { modified, size }),
        Entry::Missing => None,
        Entry::Symlink => return Err(BeneathError::Symlink { path }.into()),
        Entry::Other => return Err(StoreError::NotAFile { path }),
    };
    let record = match Record::read_in(dir, name) {
        Ok(None) => RecordState::Missing,
        Ok(Some(r)) => match archive {
            Some(state) if needs_settling(&r, state) => settle(dir, name, r, state)?,
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
fn settle(
    dir: &Dir,
    name: &str,
    mut record: Record,
    archive: ArchiveState,
) -> Result<RecordState, StoreError> {
    let path = dir.path_of(name);
    let why = if record.pending { "a publish was interrupted" } else { "the archive's time changed" };
    let (size, sha256) = sha256_in(dir, name)?;
    if size == record.size && sha256 == record.sha256 {
        info!(archive = %path.display(), "{why}; the archive matches its record (checksum confirmed)");
        record.pending = false;
        record.mtime_ns = Some(record::nanos(archive.modified));
        record.write_durably_in(dir, name)?;
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
/// start over) and its record notes the check and the new time (blocking I/O). Never through a
/// link: a link where the archive should be is an error, and its target keeps its time.
pub fn touch(dir: &Dir, name: &str) -> Result<(), StoreError> {
    let now = SystemTime::now();
    dir.set_mtime(name, now)?;
    let Entry::File { modified, .. } = dir.entry(name)? else {
        return Err(StoreError::NotAFile { path: dir.path_of(name) });
    };
    if let Some(mut record) = Record::read_in(dir, name)? {
        record.checked = record::timestamp(now);
        record.mtime_ns = Some(record::nanos(modified));
        record.write_in(dir, name)?;
    }
    Ok(())
}

//! The record kept next to each archive: `<archive>.json`, e.g. `team/app_2.0.tar.json`.
//!
//! It says what the archive holds (reference, the registry digest it was built from, image ID),
//! how to check it (size, sha256, the archive's modification time) and when it was made and last
//! confirmed current. It is written atomically (temporary file, fsync, rename): once marked
//! `pending` before the archive is renamed into place, and again, final, after (see
//! [`crate::store::publish`]). Archives without a record (made by other tools, or by the seed
//! chart) are never pruned and are refreshed by age alone.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::format::layout::Layout;
use crate::store::beneath::{BeneathError, Dir};
use crate::store::names::{self, FILE_MODE, RECORD_SUFFIX, TEMP_SUFFIX, record_path};
/// The record format version this build writes.
pub const FORMAT: u32 = 1;
/// Largest record read: a real one is about 1 KiB. A larger file is not read (constant memory)
/// and counts as an invalid record.
pub const RECORD_MAX: u64 = 64 << 10;

/// The record of one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version.
    pub format: u32,
    /// The reference the archive was built for, as given.
    pub reference: String,
    /// The registry digest (manifest or index) the reference resolved to when built, if known.
    pub repo_digest: Option<String>,
    /// The image ID in the daemon that exported it.
    pub image_id: Option<String>,
    /// The export layout.
    pub layout: Layout,
    /// Archive size in bytes.
    pub size: u64,
    /// Hex sha256 of the whole archive.
    pub sha256: String,
    /// When the archive was written (RFC 3339).
    pub created: String,
    /// When the archive was last confirmed current against the registry (RFC 3339).
    pub checked: String,
    /// Set by `verify` when the archive no longer matches: the next pass rebuilds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// Written before the archive was renamed into place and not yet confirmed after: the file
    /// under the archive's name may be the old or the new one until its checksum says which.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// The archive's modification time (nanoseconds since the epoch) when the record was last
    /// written: a different time means the file changed behind the record's back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u64>,
    /// The platform of the archived image (`os/arch[/variant]`, from its config), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The tool that wrote it, e.g. `image-preloader 0.1.0`.
    pub tool: String,
}

/// Errors reading or writing records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read record {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("record {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write record {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// An RFC 3339 timestamp (UTC, seconds).
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A modification time as nanoseconds since the epoch (0 before it).
pub fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Record {
    /// Reads the record of the archive at `archive`; `Ok(None)` if there is none. The archive's
    /// directory is reached by path; the record itself is never read through a link.
    pub fn read(archive: &Path) -> Result<Option<Record>, RecordError> {
        let path = record_path(archive);
        let dir = match Dir::open(archive.parent().unwrap_or(Path::new(".")), Path::new(""), false) {
            Ok(dir) => dir,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(RecordError::Read { path, source: e.into_io() }),
        };
        Record::read_in(&dir, &file_name(archive))
    }

    /// Reads the record of the archive `archive_name` in `dir`; `Ok(None)` if there is none.
    pub fn read_in(dir: &Dir, archive_name: &str) -> Result<Option<Record>, RecordError> {
        let name = format!("{archive_name}{RECORD_SUFFIX}");
        let path = dir.path_of(&name);
        let file = match dir.open_read(&name) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(BeneathError::Symlink { .. }) => {
                return Err(RecordError::Invalid { path, message: "a symbolic link (not followed)".into() });
            }
            Err(BeneathError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidInput => {
                return Err(RecordError::Invalid { path, message: source.to_string() });
            }
            Err(e) => return Err(RecordError::Read { path, source: e.into_io() }),
        };
        let mut text = Vec::new();
        file.take(RECORD_MAX + 1)
            .read_to_end(&mut text)
            .map_err(|source| RecordError::Read { path: path.clone(), source })?;
        if text.len() as u64 > RECORD_MAX {
            return Err(RecordError::Invalid {
                path,
                message: format!("larger than {RECORD_MAX} bytes (not read)"),
            });
        }
        let record: Record = serde_json::from_slice(&text)
            .map_err(|e| RecordError::Invalid { path: path.clone(), message: e.to_string() })?;
        if record.format > FORMAT {
            return Err(RecordError::Invalid {
                path,
                message: format!("format {} is newer than this build understands ({FORMAT})", record.format),
            });
        }
        Ok(Some(record))
    }

    /// Writes the record of the archive at `archive` atomically (see [`Record::write_in`]).
    pub fn write(&self, archive: &Path) -> Result<(), RecordError> {
        let dir = Dir::open(archive.parent().unwrap_or(Path::new(".")), Path::new(""), false)
            .map_err(|e| RecordError::Write { path: record_path(archive), source: e.into_io() })?;
        self.write_in(&dir, &file_name(archive))
    }

    /// Writes the record of the archive `archive_name` in `dir` atomically: a temporary file,
    /// fsynced, renamed over the record (never over a link there). The directory is not fsynced;
    /// callers that need that do it once for both files.
    pub fn write_in(&self, dir: &Dir, archive_name: &str) -> Result<(), RecordError> {
        let name = format!("{archive_name}{RECORD_SUFFIX}");
        let path = dir.path_of(&name);
        let write_err = |source| RecordError::Write { path: path.clone(), source };
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| write_err(io::Error::other(e)))?;
        json.push(b'\n');
        let (mut temp, temp_name) = dir
            .create_temp(&format!(".{name}."), names::TEMP_RANDOM, TEMP_SUFFIX)
            .map_err(|e| write_err(e.into_io()))?;
        let written = (|| {
            // Locked like archive temporaries, so a concurrent start's cleanup leaves it alone.
            temp.lock()?;
            temp.write_all(&json)?;
            use std::os::unix::fs::PermissionsExt;
            temp.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
            temp.sync_all()?;
            dir.rename(&temp_name, &name).map_err(BeneathError::into_io)
        })();
        if written.is_err() {
            dir.unlink(&temp_name);
        }
        written.map_err(write_err)
    }

    /// Writes the record and fsyncs its directory.
    pub fn write_durably(&self, archive: &Path) -> Result<(), RecordError> {
        let dir = Dir::open(archive.parent().unwrap_or(Path::new(".")), Path::new(""), false)
            .map_err(|e| RecordError::Write { path: record_path(archive), source: e.into_io() })?;
        self.write_durably_in(&dir, &file_name(archive))
    }

    /// [`Record::write_in`], then fsyncs the directory.
    pub fn write_durably_in(&self, dir: &Dir, archive_name: &str) -> Result<(), RecordError> {
        self.write_in(dir, archive_name)?;
        dir.sync().map_err(|e| RecordError::Write {
            path: dir.path_of(&format!("{archive_name}{RECORD_SUFFIX}")),
            source: e.into_io(),
        })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            format: FORMAT,
            reference: "reg:5000/team/app:1".into(),
            repo_digest: Some(format!("sha256:{}", "a".repeat(64))),
            image_id: Some(format!("sha256:{}", "b".repeat(64))),
            layout: Layout::Classic,
            size: 1234,
            sha256: "c".repeat(64),
            created: timestamp(SystemTime::UNIX_EPOCH),
            checked: timestamp(SystemTime::UNIX_EPOCH),
            damaged: None,
            pending: false,
            mtime_ns: None,
            platform: Some("linux/amd64".into()),
            tool: "image-preloader 0.1.0".into(),
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(nanos(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(5)), 5);
    }

    #[test]
    fn round_trip_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("app_1.tar");
        assert!(Record::read(&archive).unwrap().is_none());
        let record = sample();
        record.write_durably(&archive).unwrap();
        assert_eq!(Record::read(&archive).unwrap(), Some(record.clone()));
        let text = fs::read_to_string(record_path(&archive)).unwrap();
        assert!(!text.contains("pending") && !text.contains("mtime_ns"), "defaults stay out: {text}");
        let pending = Record { pending: true, mtime_ns: Some(7), ..record };
        pending.write(&archive).unwrap();
        assert_eq!(Record::read(&archive).unwrap(), Some(pending));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["app_1.tar.json"], "no temporary left behind");
    }

    #[test]
    fn invalid_and_future_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("app_1.tar");
        fs::write(record_path(&archive), b"{ not json").unwrap();
        assert!(matches!(Record::read(&archive), Err(RecordError::Invalid { .. })));
        let mut future = sample();
        future.format = FORMAT + 1;
        future.write(&archive).unwrap();
        let err = Record::read(&archive).unwrap_err();
        assert!(err.to_string().contains("newer than this build"), "{err}");
    }

    #[test]
    fn oversized_and_special_records_are_invalid_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("app_1.tar");
        let file = fs::File::create(record_path(&archive)).unwrap();
        file.set_len(1 << 30).unwrap(); // sparse: 1 GiB of zeros
        let err = Record::read(&archive).unwrap_err();
        assert!(
            matches!(err, RecordError::Invalid { .. }) && err.to_string().contains("larger than"),
            "{err}"
        );
        fs::remove_file(record_path(&archive)).unwrap();
        let fifo =
            std::ffi::CString::new(record_path(&archive).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = Record::read(&archive).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}

//! `verify`: read every archive back, recompute its checksum, check it is a complete image archive
//! and compare with its record.
//!
//! A damaged archive is reported and its record marked, so the next `run` or `warm` pass rebuilds
//! it; the file itself is left for inspection until then.

use std::fmt;
use std::path::PathBuf;

use crate::store::check::check_in;
use crate::store::names::record_path;
use crate::store::record::{Record, RecordError};
use crate::store::{ArchiveStore, StoreError, listing};

/// What `verify` found for one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Complete and matching its record.
    Ok,
    /// Not matching its record, or not a complete image archive.
    Damaged(String),
    /// A complete archive without a record (made by another tool or by the seed chart).
    Unrecorded,
    /// A file without a record that is not a complete image archive either.
    Invalid(String),
    /// A record whose archive is gone.
    MissingArchive,
    /// Another process holds the archive's lock; not checked.
    Busy,
    /// The file or its directory cannot be read.
    Unreadable(String),
}

impl Finding {
    /// Whether this finding makes `verify` exit with 1.
    pub fn is_problem(&self) -> bool {
        !matches!(self, Finding::Ok | Finding::Busy)
    }

    /// The one-word status printed first on each line.
    pub fn label(&self) -> &'static str {
        match self {
            Finding::Ok => "ok",
            Finding::Damaged(_) => "damaged",
            Finding::Unrecorded => "unrecorded",
            Finding::Invalid(_) => "invalid",
            Finding::MissingArchive => "missing",
            Finding::Busy => "busy",
            Finding::Unreadable(_) => "unreadable",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Ok => f.write_str("matches its record"),
            Finding::Damaged(why) => write!(f, "{why} (marked: the next pass rebuilds it)"),
            Finding::Unrecorded => f.write_str("complete, but has no record (not made by image-preloader)"),
            Finding::Invalid(why) => write!(f, "no record and not a complete image archive: {why}"),
            Finding::MissingArchive => {
                f.write_str("a record without its archive (the next pass rebuilds it)")
            }
            Finding::Busy => f.write_str("being written by another process; not checked"),
            Finding::Unreadable(why) => write!(f, "cannot be read: {why}"),
        }
    }
}

/// Every archive's finding, sorted by path.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// `(relative path, finding)`.
    pub findings: Vec<(PathBuf, Finding)>,
}

impl VerifyReport {
    /// Findings that count as problems.
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|(_, f)| f.is_problem()).count()
    }
}

/// Checks every archive in the store (blocking I/O: call from a blocking thread).
pub fn verify(store: &ArchiveStore) -> VerifyReport {
    let mut report = VerifyReport::default();
    let relative_to_root =
        |path: &std::path::Path| path.strip_prefix(store.root()).unwrap_or(path).to_owned();
    let archives = listing::archives(store.root());
    for (path, why) in archives.unreadable {
        report.findings.push((relative_to_root(&path), Finding::Unreadable(why)));
    }
    for relative in &archives.found {
        let finding = verify_one(store, relative).unwrap_or_else(|e| Finding::Unreadable(e.to_string()));
        report.findings.push((relative.clone(), finding));
    }
    for (relative, _) in listing::recorded(store.root()).found {
        if !archives.found.contains(&relative) {
            report.findings.push((relative, Finding::MissingArchive));
        }
    }
    report.findings.sort_by(|a, b| a.0.cmp(&b.0));
    report.findings.dedup();
    report
}

fn verify_one(store: &ArchiveStore, relative: &std::path::Path) -> Result<Finding, StoreError> {
    let Some(guard) = store.try_lock(relative)? else {
        return Ok(Finding::Busy);
    };
    let (dir, name) = (guard.dir(), guard.name());
    let record = match Record::read_in(dir, name) {
        Ok(record) => record,
        Err(RecordError::Invalid { message, .. }) => {
            return Ok(Finding::Damaged(format!(
                "its record {} is unreadable: {message}",
                record_path(relative).display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let check = check_in(dir, name)?;
    let Some(mut record) = record else {
        return Ok(match check.contents {
            Ok(_) => Finding::Unrecorded,
            Err(why) => Finding::Invalid(why),
        });
    };
    let problem = if check.size != record.size {
        Some(format!("it has {} bytes, its record says {}", check.size, record.size))
    } else if check.sha256 != record.sha256 {
        Some(format!("its sha256 is {}, its record says {}", check.sha256, record.sha256))
    } else {
        check.contents.err().map(|why| format!("not a complete image archive: {why}"))
    };
    Ok(match problem {
        None => Finding::Ok,
        Some(why) => {
            record.damaged = Some(why.clone());
            record.write_durably_in(dir, name)?;
            Finding::Damaged(why)
        }
    })
}

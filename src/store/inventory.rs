//! `status`: what the archive directory holds, from its files alone (stat and records; nothing is
//! read through, written or locked), set against an optional image list and `--max-image-age`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::image::list::ImageSpec;
use crate::store::listing;
use crate::store::record::{Record, RecordError};

/// One archive (or a listed image without one).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    /// Relative to the directory.
    pub archive: PathBuf,
    /// The reference: from the list if listed, else from the record.
    pub reference: Option<String>,
    /// Whether the image list names it (`None` without a list).
    pub listed: Option<bool>,
    /// Archive size in bytes, if the archive exists.
    pub size: Option<u64>,
    /// Seconds since the archive was written or last confirmed.
    pub age_seconds: Option<u64>,
    /// The registry digest it was built from (from its record).
    pub digest: Option<String>,
    /// `fresh`, `due` (refreshed at the next pass), `kept` (never refreshed) or `absent`.
    pub freshness: &'static str,
    /// What is wrong: `not yet built`, `missing`, `damaged: …`, `unrecorded`, `pending`.
    pub problems: Vec<String>,
}

/// Every archive and record in `root`, plus every listed image without an archive, sorted by
/// archive path (blocking I/O).
pub fn inventory(
    root: &Path,
    list: Option<&[ImageSpec]>,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Vec<Entry> {
    let mut entries: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    let archives = listing::archives(root);
    for relative in archives.found {
        entries.insert(relative.clone(), archive_entry(root, &relative, max_age, now));
    }
    for (path, why) in archives.unreadable {
        let relative = path.strip_prefix(root).unwrap_or(&path).to_owned();
        entries.insert(relative.clone(), absent(relative, None, format!("unreadable: {why}")));
    }
    for (relative, record) in listing::recorded(root).found {
        entries
            .entry(relative.clone())
            .or_insert_with(|| absent(relative, Some(record.reference.clone()), "missing".to_owned()));
    }
    if let Some(list) = list {
        for entry in entries.values_mut() {
            entry.listed = Some(false);
        }
        for image in list {
            let entry = entries
                .entry(image.archive.clone())
                .or_insert_with(|| absent(image.archive.clone(), None, "not yet built".to_owned()));
            entry.reference = Some(image.reference.to_string());
            entry.listed = Some(true);
        }
    }
    entries.into_values().collect()
}

fn absent(archive: PathBuf, reference: Option<String>, problem: String) -> Entry {
    Entry {
        archive,
        reference,
        listed: None,
        size: None,
        age_seconds: None,
        digest: None,
        freshness: "absent",
        problems: vec![problem],
    }
}

fn archive_entry(root: &Path, relative: &Path, max_age: Option<Duration>, now: SystemTime) -> Entry {
    let path = root.join(relative);
    let mut entry = absent(relative.to_owned(), None, String::new());
    entry.problems.clear();
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) => {
            entry.problems.push(format!("unreadable: {e}"));
            return entry;
        }
    };
    entry.size = Some(meta.len());
    let age = meta.modified().ok().map(|m| now.duration_since(m).unwrap_or_default());
    entry.age_seconds = age.map(|a| a.as_secs());
    entry.freshness = freshness(age.unwrap_or_default(), max_age);
    match Record::read(&path) {
        Ok(None) => entry.problems.push("unrecorded".to_owned()),
        Ok(Some(record)) => {
            entry.reference = Some(record.reference.clone());
            entry.digest = record.repo_digest.clone();
            if let Some(why) = &record.damaged {
                entry.problems.push(format!("damaged: {why}"));
            } else if record.size != meta.len() {
                entry.problems.push(format!(
                    "damaged: {} bytes, its record says {}",
                    meta.len(),
                    record.size
                ));
            } else if record.pending {
                entry.problems.push("pending: the next pass confirms it by checksum".to_owned());
            }
        }
        Err(RecordError::Invalid { message, .. }) => {
            entry.problems.push(format!("damaged: its record is unreadable: {message}"))
        }
        Err(e) => entry.problems.push(format!("unreadable: {e}")),
    }
    entry
}

/// `fresh` below the `--max-image-age` limit, `due` at or past it, `kept` without a limit.
pub fn freshness(age: Duration, max_age: Option<Duration>) -> &'static str {
    match max_age {
        None => "kept",
        Some(limit) if age < limit => "fresh",
        Some(_) => "due",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_policy() {
        let day = Duration::from_secs(86_400);
        assert_eq!(freshness(day, Some(day * 7)), "fresh");
        assert_eq!(freshness(day * 7, Some(day * 7)), "due");
        assert_eq!(freshness(Duration::ZERO, Some(Duration::ZERO)), "due");
        assert_eq!(freshness(day * 365, None), "kept");
    }
}

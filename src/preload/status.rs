//! The status feed: what the `run` loop knows (per image: last outcome, archive, times, failures;
//! per pass: counts), published through a `tokio::sync::watch` channel so that readers (a health
//! endpoint, metrics, `status`) see a consistent snapshot without touching the loop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::image::list::ImageSpec;
use crate::preload::outcome::{Failure, Outcome, PassReport};

/// A snapshot of what the loop knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// Every listed image, by reference as given, in list order of first appearance.
    pub images: BTreeMap<String, ImageStatus>,
    /// Passes finished.
    pub passes: u64,
    /// The last finished pass.
    pub last_pass: Option<PassStatus>,
    /// When the loop last finished a pass or started waiting (for liveness).
    pub heartbeat: Option<SystemTime>,
}

impl Status {
    /// Whether every listed image has a usable archive.
    pub fn ready(&self) -> bool {
        self.images.values().all(|i| i.ready)
    }

    /// The listed images without a usable archive yet.
    pub fn missing(&self) -> impl Iterator<Item = &ImageStatus> {
        self.images.values().filter(|i| !i.ready)
    }
}

/// What is known about one listed image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageStatus {
    /// The reference, as given.
    pub reference: String,
    /// Its archive, relative to the directory.
    pub archive: PathBuf,
    /// Whether a valid archive is known to exist (stays true while a later refresh fails).
    pub ready: bool,
    /// The last outcome's label (`built`, `kept`, `unchanged`, `unverified`, `failed`, ...).
    pub last_outcome: Option<&'static str>,
    /// When it was last processed.
    pub last_attempt: Option<SystemTime>,
    /// When its archive was last built or confirmed.
    pub last_success: Option<SystemTime>,
    /// Size of the archive last built, if one was built by this process.
    pub bytes: Option<u64>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Failures since start.
    pub failures: u64,
    /// The last failure.
    pub last_failure: Option<Failure>,
}

/// Counts of one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassStatus {
    /// Its number (1 = first).
    pub number: u64,
    /// When it ended.
    pub finished: SystemTime,
    /// How long it took.
    pub elapsed: Duration,
    /// Archives built.
    pub built: usize,
    /// Archives kept (with or without asking the registry).
    pub kept: usize,
    /// Images failed.
    pub failed: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// The writing end of the feed, held by the loop.
#[derive(Debug, Clone)]
pub struct StatusFeed {
    tx: watch::Sender<Status>,
}

impl Default for StatusFeed {
    fn default() -> Self {
        StatusFeed::new()
    }
}

impl StatusFeed {
    /// A feed with an empty status.
    pub fn new() -> StatusFeed {
        StatusFeed { tx: watch::Sender::new(Status::default()) }
    }

    /// A reader of the feed.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Status {
        self.tx.borrow().clone()
    }

    /// Sets the listed images: new ones start not ready, unlisted ones go.
    pub fn set_list(&self, images: &[ImageSpec]) {
        self.tx.send_modify(|status| {
            let mut next = BTreeMap::new();
            for image in images {
                let key = image.reference.to_string();
                let entry = status.images.remove(&key).unwrap_or_else(|| ImageStatus {
                    reference: key.clone(),
                    archive: image.archive.clone(),
                    ready: false,
                    last_outcome: None,
                    last_attempt: None,
                    last_success: None,
                    bytes: None,
                    consecutive_failures: 0,
                    failures: 0,
                    last_failure: None,
                });
                next.insert(key, entry);
            }
            status.images = next;
        });
    }

    /// Records a finished pass.
    pub fn record_pass(&self, number: u64, report: &PassReport) {
        let now = SystemTime::now();
        self.tx.send_modify(|status| {
            for (image, outcome) in &report.outcomes {
                let Some(entry) = status.images.get_mut(&image.reference.to_string()) else { continue };
                if matches!(outcome, Outcome::Cancelled) {
                    continue;
                }
                entry.last_outcome = Some(outcome.label());
                entry.last_attempt = Some(now);
                match outcome {
                    Outcome::Failed(failure) => {
                        entry.consecutive_failures += 1;
                        entry.failures += 1;
                        entry.last_failure = Some(failure.clone());
                    }
                    _ => {
                        entry.ready = true;
                        entry.last_success = Some(now);
                        entry.consecutive_failures = 0;
                        if let Outcome::Built(built) = outcome {
                            entry.bytes = Some(built.bytes);
                        }
                    }
                }
            }
            status.passes = number;
            status.last_pass = Some(PassStatus {
                number,
                finished: now,
                elapsed: report.elapsed,
                built: report.built(),
                kept: report.kept(),
                failed: report.failed(),
                bytes: report.bytes_written(),
            });
            status.heartbeat = Some(now);
        });
    }

    /// Notes that the loop is alive (it started waiting for the next due image).
    pub fn heartbeat(&self) {
        self.tx.send_modify(|status| status.heartbeat = Some(SystemTime::now()));
    }
}

//! The status feed: what the `run` loop knows (per image: last outcome, archive, times, failures;
//! per pass: counts), published through a `tokio::sync::watch` channel so that readers (a health
//! endpoint, metrics, `status`) see a consistent snapshot without touching the loop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::image::list::ImageSpec;
use crate::preload::metrics::Metrics;
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
    /// When the loop last made progress: started, finished an image or a pass, started waiting
    /// (for liveness).
    pub heartbeat: Option<SystemTime>,
    /// When the pass under way started.
    pub pass_started: Option<SystemTime>,
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

    /// Whether the loop made progress within `bound` of `now`.
    pub fn alive(&self, now: SystemTime, bound: Duration) -> bool {
        self.heartbeat.is_some_and(|beat| now.duration_since(beat).unwrap_or_default() <= bound)
    }
}

/// How long the loop may go without progress before it counts as stuck: the longest quiet time a
/// healthy loop has is a wait for the daemon (`wait_timeout`), a wait between passes (at most
/// `interval`) or one image's pull and save (bounded by another `interval`), so
/// `2 × interval + wait_timeout`, and never less than [`MIN_LIVENESS_BOUND`].
pub fn liveness_bound(interval: Duration, wait_timeout: Duration) -> Duration {
    (interval.saturating_mul(2).saturating_add(wait_timeout)).max(MIN_LIVENESS_BOUND)
}

/// The smallest liveness bound: a big image's pull and save may take this long even with a short
/// `--interval`.
pub const MIN_LIVENESS_BOUND: Duration = Duration::from_secs(10 * 60);

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
    metrics: Arc<Metrics>,
}

impl Default for StatusFeed {
    fn default() -> Self {
        StatusFeed::new()
    }
}

impl StatusFeed {
    /// A feed with an empty status.
    pub fn new() -> StatusFeed {
        let status = Status { heartbeat: Some(SystemTime::now()), ..Status::default() };
        StatusFeed { tx: watch::Sender::new(status), metrics: Arc::new(Metrics::new()) }
    }

    /// The metrics the feed keeps up to date.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
            for gone in status.images.keys() {
                self.metrics.forget(gone);
            }
            status.images = next;
            self.update_counts(status);
        });
    }

    fn update_counts(&self, status: &Status) {
        let ready = status.images.values().filter(|i| i.ready).count();
        self.metrics.set_counts(status.images.len(), ready);
    }

    /// Notes that a pass starts.
    pub fn pass_started(&self) {
        let now = SystemTime::now();
        self.tx.send_modify(|status| {
            status.pass_started = Some(now);
            status.heartbeat = Some(now);
        });
    }

    /// Records one image's outcome as soon as it is known (progress within a pass).
    pub fn record_image(&self, image: &ImageSpec, outcome: &Outcome) {
        let now = SystemTime::now();
        self.tx.send_modify(|status| {
            self.apply(status, image, outcome, now);
            status.heartbeat = Some(now);
            self.update_counts(status);
        });
    }

    fn apply(&self, status: &mut Status, image: &ImageSpec, outcome: &Outcome, now: SystemTime) {
        let key = image.reference.to_string();
        let Some(entry) = status.images.get_mut(&key) else { return };
        if matches!(outcome, Outcome::Cancelled) {
            return;
        }
        entry.last_outcome = Some(outcome.label());
        entry.last_attempt = Some(now);
        self.metrics.checked(&key, now);
        self.metrics.outcome(outcome.label());
        match outcome {
            Outcome::Failed(failure) => {
                entry.consecutive_failures += 1;
                entry.failures += 1;
                entry.last_failure = Some(failure.clone());
                self.metrics.failed(&key, failure);
            }
            // The archive is there, but the registry could not confirm it: ready, not a success.
            Outcome::Unverified(_) => entry.ready = true,
            _ => {
                entry.ready = true;
                entry.last_success = Some(now);
                entry.consecutive_failures = 0;
                let built = match outcome {
                    Outcome::Built(built) => {
                        entry.bytes = Some(built.bytes);
                        Some((built.bytes, built.pull_time + built.save_time))
                    }
                    _ => None,
                };
                self.metrics.succeeded(&key, now, built);
            }
        }
    }

    /// Records a finished pass, and the outcomes of its images not yet recorded one by one.
    pub fn record_pass(&self, number: u64, report: &PassReport) {
        let now = SystemTime::now();
        self.tx.send_modify(|status| {
            let started = status.pass_started.take();
            for (image, outcome) in &report.outcomes {
                let recorded = status
                    .images
                    .get(&image.reference.to_string())
                    .and_then(|i| i.last_attempt)
                    .zip(started)
                    .is_some_and(|(attempt, started)| attempt >= started);
                if !recorded {
                    self.apply(status, image, outcome, now);
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
            self.metrics.pass(report.elapsed);
            self.update_counts(status);
        });
    }

    /// Notes that the loop is alive (it started waiting for the next due image).
    pub fn heartbeat(&self) {
        self.tx.send_modify(|status| status.heartbeat = Some(SystemTime::now()));
    }
}

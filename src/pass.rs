//! One pass over the image list: per image, take the archive's lock, decide, then keep, check the
//! registry, or build; report.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::archive::{ArchiveError, ArchiveStore, RecordDraft};
use crate::human;
use crate::images::ImageSpec;
use crate::lock::{ArchiveLock, LockError};
use crate::policy::{BuildReason, Decision, Inputs, KeepReason, MaxAge, RefreshPolicy};
use crate::source::{ImageSource, PullOutcome, SourceError};
use crate::space::{self, MinFree};

/// How a pass treats archives.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `--max-image-age`.
    pub max_age: MaxAge,
    /// `--refresh-policy`.
    pub refresh: RefreshPolicy,
    /// `--min-free`.
    pub min_free: MinFree,
    /// Images processed at once.
    pub concurrency: usize,
    /// `--remove-after-save`.
    pub remove_after_save: bool,
}

/// Preloads images from a source into an archive store.
#[derive(Debug)]
pub struct Preloader<S> {
    source: S,
    store: ArchiveStore,
    settings: Settings,
}

/// What happened to one image in a pass.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new archive was published.
    Built(Built),
    /// The existing archive was kept without asking the registry.
    Kept(KeepReason),
    /// The registry still serves the recorded digest: the archive was kept and its time refreshed.
    Unchanged,
    /// The registry could not be asked: the archive was kept and will be checked again.
    Unverified(String),
    /// Something failed; any previous archive is untouched.
    Failed(Failure),
    /// Shutdown came first; any previous archive is untouched.
    Cancelled,
}

/// Figures for a published archive.
#[derive(Debug, Clone)]
pub struct Built {
    /// Why it was built.
    pub reason: BuildReason,
    /// What the pull found.
    pub pulled: PullOutcome,
    /// Time spent pulling.
    pub pull_time: Duration,
    /// Time spent exporting, checking and publishing.
    pub save_time: Duration,
    /// Archive size.
    pub bytes: u64,
    /// Final path.
    pub path: PathBuf,
}

/// The step at which a build failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the existing archive's state or taking its lock.
    Inspect,
    /// Pulling the image.
    Pull,
    /// The disk guard refused the build.
    Space,
    /// Receiving the export from the source.
    Export,
    /// Writing to the archive directory.
    Write,
    /// Checking the archive is complete.
    Check,
    /// Making it durable and renaming it into place.
    Publish,
}

impl Step {
    /// Lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Inspect => "inspect",
            Step::Pull => "pull",
            Step::Space => "space",
            Step::Export => "export",
            Step::Write => "write",
            Step::Check => "check",
            Step::Publish => "publish",
        }
    }
}

/// A failed build: the step and the full message (naming image or path and the cause).
#[derive(Debug, Clone)]
pub struct Failure {
    /// Where it failed.
    pub step: Step,
    /// Why.
    pub message: String,
}

impl Failure {
    fn new(step: Step, error: impl std::fmt::Display) -> Failure {
        Failure { step, message: error.to_string() }
    }

    fn from_archive(error: ArchiveError) -> Failure {
        let step = match &error {
            ArchiveError::Stat { .. } | ArchiveError::NotAFile { .. } => Step::Inspect,
            ArchiveError::Tar { .. } | ArchiveError::Layout { .. } => Step::Check,
            ArchiveError::Publish { .. } | ArchiveError::Record(_) => Step::Publish,
            _ => Step::Write,
        };
        Failure::new(step, error)
    }
}

/// The result of a pass, in list order.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Each image with its outcome.
    pub outcomes: Vec<(ImageSpec, Outcome)>,
    /// Wall time of the pass.
    pub elapsed: Duration,
}

impl PassReport {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, o)| f(o)).count()
    }

    /// Archives built.
    pub fn built(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Built(_)))
    }

    /// Archives kept, with or without asking the registry (including unverified ones).
    pub fn kept(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Kept(_) | Outcome::Unchanged | Outcome::Unverified(_)))
    }

    /// Archives confirmed current by the registry.
    pub fn unchanged(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Unchanged))
    }

    /// Archives kept because the registry could not be asked.
    pub fn unverified(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Unverified(_)))
    }

    /// Images that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// Images not finished because of shutdown.
    pub fn cancelled(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Cancelled))
    }

    /// Bytes of archives written.
    pub fn bytes_written(&self) -> u64 {
        self.outcomes.iter().map(|(_, o)| if let Outcome::Built(b) = o { b.bytes } else { 0 }).sum()
    }
}

impl<S: ImageSource> Preloader<S> {
    /// A preloader with these settings.
    pub fn new(source: S, store: ArchiveStore, settings: Settings) -> Self {
        Preloader {
            source,
            store,
            settings: Settings { concurrency: settings.concurrency.max(1), ..settings },
        }
    }

    /// The archive store.
    pub fn store(&self) -> &ArchiveStore {
        &self.store
    }

    /// Processes `images`, up to `concurrency` at a time, until done or cancelled.
    pub async fn pass(&self, images: &[ImageSpec], cancel: &CancellationToken) -> PassReport {
        let start = Instant::now();
        let mut outcomes: Vec<(usize, Outcome)> = stream::iter(images.iter().enumerate())
            .map(|(i, image)| async move { (i, self.preload(image, cancel).await) })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        outcomes.sort_by_key(|(i, _)| *i);
        PassReport {
            outcomes: outcomes.into_iter().map(|(i, o)| (images[i].clone(), o)).collect(),
            elapsed: start.elapsed(),
        }
    }

    /// Brings one image's archive up to date. Logs the decision and the result.
    pub async fn preload(&self, image: &ImageSpec, cancel: &CancellationToken) -> Outcome {
        let span = info_span!("image", image = %image.reference, archive = %image.archive.display());
        async {
            if cancel.is_cancelled() {
                return Outcome::Cancelled;
            }
            let path = self.store.path_of(&image.archive);
            let waiting = || info!("another process is working on this archive; waiting for it");
            let _lock = match ArchiveLock::acquire(&path, cancel, waiting).await {
                Ok(lock) => lock,
                Err(LockError::Cancelled { .. }) => return Outcome::Cancelled,
                Err(e) => return log_failure(Failure::new(Step::Inspect, e)),
            };
            let (archive, record) = match self.store.state(&image.archive) {
                Ok(state) => state,
                Err(e) => return log_failure(Failure::from_archive(e)),
            };
            let decision = Decision::decide(&Inputs {
                archive,
                record: &record,
                pinned: image.reference.digest().is_some(),
                now: SystemTime::now(),
                max_age: self.settings.max_age,
                policy: self.settings.refresh,
            });
            match decision {
                Decision::Keep(reason) => {
                    info!(decision = "keep", "up to date: {reason}");
                    Outcome::Kept(reason)
                }
                Decision::Check { age, digest } => self.check(image, age, digest, cancel).await,
                Decision::Build(reason) => self.build_logged(image, reason, cancel).await,
            }
        }
        .instrument(span)
        .await
    }

    /// Asks the registry whether the recorded digest is still current.
    async fn check(
        &self,
        image: &ImageSpec,
        age: Duration,
        recorded: String,
        cancel: &CancellationToken,
    ) -> Outcome {
        let current = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Outcome::Cancelled,
            current = self.source.remote_digest(&image.reference) => current,
        };
        match current {
            Ok(current) if current == recorded => match self.store.touch(&image.archive) {
                Ok(()) => {
                    info!(decision = "unchanged", digest = %current, "up to date: the registry still serves the archived digest (archive was {} old; its time is refreshed)", human::duration(age));
                    Outcome::Unchanged
                }
                Err(e) => log_failure(Failure::from_archive(e)),
            },
            Ok(current) => self.build_logged(image, BuildReason::Changed { recorded, current }, cancel).await,
            Err(e) => {
                warn!(decision = "unverified", "keeping the archive, will check again: {e}");
                Outcome::Unverified(e.to_string())
            }
        }
    }

    async fn build_logged(
        &self,
        image: &ImageSpec,
        reason: BuildReason,
        cancel: &CancellationToken,
    ) -> Outcome {
        info!(decision = "build", "building: {reason}");
        match self.build(image, reason, cancel).await {
            Ok(Some(built)) => {
                info!(
                    bytes = built.bytes,
                    pull_ms = built.pull_time.as_millis() as u64,
                    save_ms = built.save_time.as_millis() as u64,
                    "saved {} in {} ({:.0} MiB/s) after pull in {} ({})",
                    human::bytes(built.bytes),
                    human::duration(built.save_time),
                    human::mib_per_s(built.bytes, built.save_time),
                    human::duration(built.pull_time),
                    built.pulled,
                );
                if self.settings.remove_after_save {
                    match self.source.remove(&image.reference).await {
                        Ok(()) => info!("removed the image from the daemon (--remove-after-save)"),
                        Err(e) => warn!("{e}"),
                    }
                }
                Outcome::Built(built)
            }
            Ok(None) => {
                warn!("abandoned for shutdown; the previous archive, if any, is unchanged");
                Outcome::Cancelled
            }
            Err(failure) => log_failure(failure),
        }
    }

    /// Pulls, checks the disk has room, streams the export into a new archive and publishes it
    /// with its record. `Ok(None)` when cancelled.
    async fn build(
        &self,
        image: &ImageSpec,
        reason: BuildReason,
        cancel: &CancellationToken,
    ) -> Result<Option<Built>, Failure> {
        let started = Instant::now();
        let pulled = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(None),
            pulled = self.source.pull(&image.reference) => pulled.map_err(|e| Failure::new(Step::Pull, e))?,
        };
        let facts = self.source.inspect(&image.reference).await.map_err(|e| Failure::new(Step::Pull, e))?;
        let pull_time = started.elapsed();

        let root = self.store.root();
        std::fs::create_dir_all(root).map_err(|e| {
            Failure::from_archive(ArchiveError::CreateDir { path: root.to_owned(), source: e })
        })?;
        if !self.settings.min_free.is_disabled() {
            let needed = space::estimate_archive_size(facts.size);
            let free = space::space_of(root).map_err(|e| Failure::new(Step::Space, e))?;
            space::check(root, free, needed, self.settings.min_free)
                .map_err(|e| Failure::new(Step::Space, e))?;
        }

        let started = Instant::now();
        let mut sink = self.store.create(&image.archive).map_err(Failure::from_archive)?.spawn();
        let mut export = self.source.export(&image.reference);
        loop {
            enum Next {
                Sent,
                WriterStopped,
                SourceFailed(SourceError),
                End,
                Cancelled,
            }
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => Next::Cancelled,
                next = async {
                    match export.next().await {
                        Some(Ok(chunk)) => if sink.send(chunk).await.is_ok() { Next::Sent } else { Next::WriterStopped },
                        Some(Err(e)) => Next::SourceFailed(e),
                        None => Next::End,
                    }
                } => next,
            };
            match next {
                Next::Sent => {}
                Next::End => break,
                Next::Cancelled => {
                    sink.abandon().await;
                    return Ok(None);
                }
                Next::SourceFailed(e) => {
                    sink.abandon().await;
                    return Err(Failure::new(Step::Export, e));
                }
                Next::WriterStopped => {
                    let error = sink.abandon().await;
                    return Err(match error {
                        Some(e) => Failure::from_archive(e),
                        None => Failure::new(Step::Write, "the archive writer stopped"),
                    });
                }
            }
        }
        let draft = RecordDraft {
            reference: image.reference.to_string(),
            repo_digest: pulled.digest,
            image_id: Some(facts.id),
        };
        let published = sink.commit(draft).await.map_err(Failure::from_archive)?;
        Ok(Some(Built {
            reason,
            pulled: pulled.outcome,
            pull_time,
            save_time: started.elapsed(),
            bytes: published.bytes,
            path: published.path,
        }))
    }
}

fn log_failure(failure: Failure) -> Outcome {
    error!(step = failure.step.as_str(), "{}", failure.message);
    Outcome::Failed(failure)
}

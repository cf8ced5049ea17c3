//! One pass over the image list: per image, lock its archive, decide, then keep, check the
//! registry, or build through the store's publish path; report.
//!
//! An export that lacks content it references (a daemon's incomplete copy of the image, see
//! [`crate::source::docker`]) is not published; the source repairs its copy and the image is built
//! again, within the same pass. A repair may remove other images from the source, so it waits
//! until no other build of this pass is pulling or exporting, and holds them off while it runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::format::layout::Lacking;
use crate::human;
use crate::image::list::ImageSpec;
use crate::platform::Platform;
use crate::preload::outcome::{Built, Failure, FailureKind, Outcome, PassReport, Step};
use crate::preload::policy::{BuildReason, Decision, Inputs, MaxAge, RefreshPolicy};
use crate::registry::{CredentialSet, Lookup, RegistryHost};
use crate::source::{ErrorKind, ImageSource, SourceError};
use crate::store::space::{self, MinFree};
use crate::store::{
    ArchiveGuard, ArchiveStore, LockError, PublishError, RecordDraft, RecordState, SpaceWatch, StoreError,
};

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
    /// The registry credentials in force (replaced between passes when the config file changes).
    credentials: RwLock<CredentialSet>,
    /// One build at a time per source name: the same reference listed for two platforms is
    /// pulled and exported under one tag, so its builds must not interleave.
    names: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held shared by each build while it pulls and exports, exclusively by a repair.
    source_use: tokio::sync::RwLock<()>,
}

/// Repairs of the source's copy one build may make before it gives up.
const MAX_REPAIRS: usize = 2;

impl<S: ImageSource> Preloader<S> {
    /// A preloader with these settings (and no registry credentials).
    pub fn new(source: S, store: ArchiveStore, settings: Settings) -> Self {
        Preloader {
            source,
            store,
            settings: Settings { concurrency: settings.concurrency.max(1), ..settings },
            credentials: RwLock::new(CredentialSet::default()),
            names: Mutex::new(HashMap::new()),
            source_use: tokio::sync::RwLock::new(()),
        }
    }

    /// Puts `credentials` in force for the images processed from now on.
    pub fn set_credentials(&self, credentials: CredentialSet) {
        *self.credentials.write().unwrap_or_else(|e| e.into_inner()) = credentials;
    }

    /// What the credentials in force hold for `image`'s registry.
    fn auth_for(&self, image: &ImageSpec) -> Lookup {
        let credentials = self.credentials.read().unwrap_or_else(|e| e.into_inner());
        credentials.lookup(&RegistryHost::of(&image.reference))
    }

    /// The lock serialising builds under one source name.
    fn name_lock(&self, image: &ImageSpec) -> Arc<tokio::sync::Mutex<()>> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.entry(image.reference.export_name()).or_default().clone()
    }

    /// The archive store.
    pub fn store(&self) -> &ArchiveStore {
        &self.store
    }

    /// Processes `images`, up to `concurrency` at a time, until done or cancelled.
    pub async fn pass(&self, images: &[ImageSpec], cancel: &CancellationToken) -> PassReport {
        self.pass_observed(images, cancel, |_, _| {}).await
    }

    /// Like [`Preloader::pass`], calling `done` with each image's outcome as soon as it is known.
    pub async fn pass_observed(
        &self,
        images: &[ImageSpec],
        cancel: &CancellationToken,
        mut done: impl FnMut(&ImageSpec, &Outcome),
    ) -> PassReport {
        let start = Instant::now();
        // A hand-rolled `buffer_unordered`: its closure form makes the future's `Send` proof fail
        // (rustc's higher-ranked lifetime limits), and `run` spawns this future.
        let mut waiting = images.iter().enumerate();
        let mut running = FuturesUnordered::new();
        let mut outcomes: Vec<(usize, Outcome)> = Vec::with_capacity(images.len());
        for (i, image) in waiting.by_ref().take(self.settings.concurrency) {
            running.push(self.preload_nth(i, image, cancel));
        }
        while let Some((i, outcome)) = running.next().await {
            done(&images[i], &outcome);
            outcomes.push((i, outcome));
            if let Some((i, image)) = waiting.next() {
                running.push(self.preload_nth(i, image, cancel));
            }
        }
        outcomes.sort_by_key(|(i, _)| *i);
        PassReport {
            outcomes: outcomes.into_iter().map(|(i, o)| (images[i].clone(), o)).collect(),
            elapsed: start.elapsed(),
        }
    }

    async fn preload_nth(&self, i: usize, image: &ImageSpec, cancel: &CancellationToken) -> (usize, Outcome) {
        (i, self.preload(image, cancel).await)
    }

    /// Brings one image's archive up to date. Logs the decision and the result.
    pub async fn preload(&self, image: &ImageSpec, cancel: &CancellationToken) -> Outcome {
        let span = info_span!("image", image = %image.reference, archive = %image.archive.display());
        async {
            if cancel.is_cancelled() {
                return Outcome::Cancelled;
            }
            let waiting = || info!("another process is working on this archive; waiting for it");
            let guard = match self.store.lock(&image.archive, cancel, waiting).await {
                Ok(guard) => guard,
                Err(LockError::Cancelled { .. }) => return Outcome::Cancelled,
                Err(e) => return log_failure(Failure::store(StoreError::Lock(e))),
            };
            let (archive, record) = match guard.state().await {
                Ok(state) => state,
                Err(e) => return log_failure(Failure::store(e)),
            };
            let decision = match other_platform(image, &record) {
                Some(reason) => Decision::Build(reason),
                None => Decision::decide(&Inputs {
                    archive,
                    record: &record,
                    pinned: image.reference.digest().is_some(),
                    now: SystemTime::now(),
                    max_age: self.settings.max_age,
                    policy: self.settings.refresh,
                }),
            };
            match decision {
                Decision::Keep(reason) => {
                    info!(decision = "keep", "up to date: {reason}");
                    Outcome::Kept(reason)
                }
                Decision::Check { age, digest } => self.check(&guard, image, age, digest, cancel).await,
                Decision::Build(reason) => self.build_logged(&guard, image, reason, cancel).await,
            }
        }
        .instrument(span)
        .await
    }

    /// Asks the registry whether the recorded digest is still current.
    async fn check(
        &self,
        guard: &ArchiveGuard,
        image: &ImageSpec,
        age: Duration,
        recorded: String,
        cancel: &CancellationToken,
    ) -> Outcome {
        let auth = self.auth_for(image);
        let current = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Outcome::Cancelled,
            current = self.source.remote_digest(&image.reference, &auth) => current,
        };
        match current {
            Ok(current) if current == recorded => match guard.touch().await {
                Ok(()) => {
                    info!(decision = "unchanged", digest = %current, "up to date: the registry still serves the archived digest (archive was {} old; its time is refreshed)", human::duration(age));
                    Outcome::Unchanged
                }
                Err(e) => log_failure(Failure::store(e)),
            },
            Ok(current) => {
                self.build_logged(guard, image, BuildReason::Changed { recorded, current }, cancel).await
            }
            // The registry answered and refused: not an outage but a configuration problem, so a
            // failure (with its slower retry), though the archive is kept.
            Err(e) if e.kind == ErrorKind::Auth => {
                log_failure(source_failure(Step::Pull, e, &auth, "; the archive is kept"))
            }
            Err(e) => {
                warn!(
                    decision = "unverified",
                    kind = e.kind.as_str(),
                    "keeping the archive, will check again: {e}"
                );
                Outcome::Unverified(e.to_string())
            }
        }
    }

    async fn build_logged(
        &self,
        guard: &ArchiveGuard,
        image: &ImageSpec,
        reason: BuildReason,
        cancel: &CancellationToken,
    ) -> Outcome {
        info!(decision = "build", "building: {reason}");
        match self.build(guard, image, reason, cancel).await {
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
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => warn!("shutdown: the image stays in the daemon"),
                        removed = self.source.remove(&image.reference) => match removed {
                            Ok(()) => info!("removed the image from the daemon (--remove-after-save)"),
                            Err(e) => warn!("{e}"),
                        },
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

    /// Builds the archive; when the export lacks content, repairs the source's copy and builds
    /// again (at most [`MAX_REPAIRS`] times). `Ok(None)` when cancelled.
    async fn build(
        &self,
        guard: &ArchiveGuard,
        image: &ImageSpec,
        reason: BuildReason,
        cancel: &CancellationToken,
    ) -> Result<Option<Built>, Failure> {
        let name_lock = self.name_lock(image);
        let _one_build_per_name = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(None),
            held = name_lock.lock() => held,
        };
        let mut repairs = 0;
        loop {
            let attempt = {
                let _shared = self.source_use.read().await;
                self.build_once(guard, image, reason.clone(), cancel).await
            };
            let (lacking, failure) = match attempt {
                Ok(built) => return Ok(built),
                Err(Attempt::Failed(failure)) => return Err(failure),
                Err(Attempt::Lacking(lacking, failure)) => (lacking, failure),
            };
            if repairs == MAX_REPAIRS {
                return Err(Failure {
                    message: format!(
                        "{}; still so after {repairs} repairs of the source's copy (a stopped container may \
                         hold the image's layers: see `docker ps -a`)",
                        failure.message
                    ),
                    ..failure
                });
            }
            repairs += 1;
            warn!(
                step = failure.step.as_str(),
                kind = failure.kind.as_str(),
                "{}: the daemon's copy of the image lacks content; on the containerd image store a pull \
                 skips the blob of a layer already unpacked from another image (moby#49473), so the \
                 repair removes the images holding that layer and pulls again, then builds again",
                failure.message
            );
            let _exclusive = self.source_use.write().await;
            let auth = self.auth_for(image);
            let repaired = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(None),
                repaired = self.source.repair(&image.reference, image.platform.as_ref(), &auth, lacking) => {
                    repaired.map_err(|e| source_failure(Step::Repair, e, &auth, ""))?
                }
            };
            info!(
                removed = repaired.removed.len(),
                "repaired: removed {} from the daemon{} and pulled the image again",
                repaired.removed.join(", "),
                repaired.layer.as_deref().map(|l| format!(" (they hold layer {l})")).unwrap_or_default(),
            );
        }
    }

    /// Pulls, checks the disk has room, streams the export through the store's publish path.
    /// `Ok(None)` when cancelled.
    async fn build_once(
        &self,
        guard: &ArchiveGuard,
        image: &ImageSpec,
        reason: BuildReason,
        cancel: &CancellationToken,
    ) -> Result<Option<Built>, Attempt> {
        let started = Instant::now();
        let auth = self.auth_for(image);
        let platform = image.platform.as_ref();
        let pulled = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(None),
            pulled = self.source.pull(&image.reference, platform, &auth) => {
                pulled.map_err(|e| source_failure(Step::Pull, e, &auth, ""))?
            }
        };
        let facts = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(None),
            facts = self.source.inspect(&image.reference) => facts.map_err(|e| Failure::source(Step::Pull, e))?,
        };
        if let (Some(wanted), Some(got)) = (platform, &facts.platform)
            && !provides(wanted, got)
        {
            // A daemon pulls a single-platform image whatever platform was asked for.
            let message = format!("{} provides no {wanted} image (it is {got})", image.reference);
            return Err(Failure::new(Step::Pull, FailureKind::NotFound, message).into());
        }
        let pull_time = started.elapsed();

        self.check_space(guard, facts.size).await?;

        let started = Instant::now();
        let draft = RecordDraft {
            reference: image.reference.to_string(),
            repo_digest: pulled.digest,
            image_id: Some(facts.id),
        };
        let watch = SpaceWatch { min_free: self.settings.min_free };
        let export = self.source.export(&image.reference);
        let published = match guard.publish(export, draft, watch, cancel).await {
            Ok(Some(published)) => published,
            Ok(None) => return Ok(None),
            Err(PublishError::Source(e)) => return Err(Failure::source(Step::Export, e).into()),
            Err(PublishError::Store(e)) => {
                return Err(match e.lacking() {
                    Some(lacking) => Attempt::Lacking(lacking, Failure::store(e)),
                    None => Failure::store(e).into(),
                });
            }
        };
        Ok(Some(Built {
            reason,
            pulled: pulled.outcome,
            pull_time,
            save_time: started.elapsed(),
            bytes: published.bytes,
            path: published.path,
        }))
    }

    /// The disk guard before a build: the estimated archive must leave the floor free. An image of
    /// unknown size is checked against the floor alone (and again while it is written).
    async fn check_space(&self, guard: &ArchiveGuard, size: Option<u64>) -> Result<(), Failure> {
        let min_free = self.settings.min_free;
        if min_free.is_disabled() {
            return Ok(());
        }
        if size.is_none() {
            warn!(
                "the source did not report the image size: checking the --min-free floor only, and again while writing"
            );
        }
        let root = self.store.root().to_owned();
        let dir: PathBuf = guard.path().parent().map(|p| p.to_owned()).unwrap_or_else(|| root.clone());
        let needed = space::estimate_archive_size(size.unwrap_or(0));
        crate::store::blocking(move || {
            // The archive's directory exists once its lock is held; statvfs it (the same file system).
            let free = space::space_of(&dir)?;
            space::check(&root, free, needed, min_free)
        })
        .await
        .map_err(|e| Failure::new(Step::Space, FailureKind::NoSpace, e))
    }
}

/// Why one build attempt ended without an archive.
enum Attempt {
    /// The export lacked content it references: the source's copy needs a repair.
    Lacking(Lacking, Failure),
    /// Anything else.
    Failed(Failure),
}

impl From<Failure> for Attempt {
    fn from(failure: Failure) -> Attempt {
        Attempt::Failed(failure)
    }
}

/// When a platform is asked for and the record says the archive holds another one (`--platform`
/// changed), the archive is rebuilt whatever its age.
fn other_platform(image: &ImageSpec, record: &RecordState) -> Option<BuildReason> {
    let wanted = image.platform.as_ref()?;
    let RecordState::Present { platform: Some(recorded), .. } = record else { return None };
    let held = Platform::parse(recorded).ok()?;
    (!provides(wanted, &held))
        .then(|| BuildReason::Platform { recorded: recorded.clone(), wanted: wanted.to_string() })
}

/// Whether an image of platform `got` is the `wanted` one (a wanted variant must match).
fn provides(wanted: &Platform, got: &Platform) -> bool {
    wanted.os() == got.os()
        && wanted.architecture() == got.architecture()
        && (wanted.variant().is_none() || wanted.variant() == got.variant())
}

/// A source failure; one refused for authentication also says what credentials were used.
fn source_failure(step: Step, error: SourceError, auth: &Lookup, suffix: &str) -> Failure {
    let mut failure = Failure::source(step, error);
    if failure.kind == FailureKind::Auth {
        failure.message = format!("{}; {auth}{suffix}", failure.message);
    }
    failure
}

fn log_failure(failure: Failure) -> Outcome {
    error!(step = failure.step.as_str(), kind = failure.kind.as_str(), "{}", failure.message);
    Outcome::Failed(failure)
}

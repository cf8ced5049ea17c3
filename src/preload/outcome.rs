//! What a pass reports: per image an [`Outcome`] (built, kept, unchanged, unverified, failed with
//! a step and a kind, cancelled), and the [`PassReport`] that sums them up.

use std::path::PathBuf;
use std::time::Duration;

use crate::image::list::ImageSpec;
use crate::preload::policy::{BuildReason, KeepReason};
use crate::source::{ErrorKind, PullOutcome, SourceError};
use crate::store::{StoreError, StoreErrorKind};

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

impl Outcome {
    /// The one-word label for logs, metrics and the status feed.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Built(_) => "built",
            Outcome::Kept(_) => "kept",
            Outcome::Unchanged => "unchanged",
            Outcome::Unverified(_) => "unverified",
            Outcome::Failed(_) => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
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
    /// Repairing the source's copy of an image whose export lacked content.
    Repair,
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
            Step::Repair => "repair",
        }
    }
}

/// What kind of failure, for backoff, metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The registry refused the credentials.
    Auth,
    /// The image, tag or platform does not exist.
    NotFound,
    /// A registry or daemon down, a timeout, a rate limit: worth retrying soon.
    Transient,
    /// The disk guard refused, or the disk filled.
    NoSpace,
    /// The export was not a complete image archive.
    IncompleteExport,
    /// Reading or writing the archive directory failed.
    Io,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Auth => "auth",
            FailureKind::NotFound => "not_found",
            FailureKind::Transient => "transient",
            FailureKind::NoSpace => "no_space",
            FailureKind::IncompleteExport => "incomplete_export",
            FailureKind::Io => "io",
            FailureKind::Other => "other",
        }
    }
}

impl From<ErrorKind> for FailureKind {
    fn from(kind: ErrorKind) -> FailureKind {
        match kind {
            ErrorKind::Auth => FailureKind::Auth,
            ErrorKind::NotFound => FailureKind::NotFound,
            ErrorKind::Transient => FailureKind::Transient,
            ErrorKind::Other => FailureKind::Other,
        }
    }
}

/// A failed build: the step, the kind and the full message (naming image or path and the cause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where it failed.
    pub step: Step,
    /// What kind of failure.
    pub kind: FailureKind,
    /// Why.
    pub message: String,
}

impl Failure {
    /// A failure at `step` of `kind`.
    pub fn new(step: Step, kind: FailureKind, error: impl std::fmt::Display) -> Failure {
        Failure { step, kind, message: error.to_string() }
    }

    /// A failure of the source at `step`, with the source's kind.
    pub fn source(step: Step, error: SourceError) -> Failure {
        Failure::new(step, error.kind.into(), error)
    }

    /// A failure of the archive directory, with its step and kind.
    pub fn store(error: StoreError) -> Failure {
        let kind = match error.kind() {
            StoreErrorKind::Incomplete => FailureKind::IncompleteExport,
            StoreErrorKind::NoSpace => FailureKind::NoSpace,
            StoreErrorKind::Read | StoreErrorKind::Write | StoreErrorKind::Lock => FailureKind::Io,
            StoreErrorKind::Abandoned => FailureKind::Other,
        };
        let step = match &error {
            StoreError::Stat { .. } | StoreError::NotAFile { .. } | StoreError::Lock(_) => Step::Inspect,
            StoreError::Tar { .. } | StoreError::Layout { .. } => Step::Check,
            StoreError::Space(_) => Step::Space,
            StoreError::Publish { .. } | StoreError::Record(_) => Step::Publish,
            _ => Step::Write,
        };
        Failure::new(step, kind, error)
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

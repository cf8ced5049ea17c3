//! Where images come from: the small interface the preload cycle needs.
//!
//! Today the only source is a Docker daemon ([`crate::docker::DockerDaemon`]), which pulls from the
//! registry and exports a `docker save` archive. A daemonless source that reads registries directly
//! fits behind the same calls: `pull` fetches manifests, `inspect` sums layer sizes,
//! `remote_digest` is a manifest HEAD, `export` assembles the archive, `remove` does nothing.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::reference::Reference;

/// A source of image archives.
pub trait ImageSource: Send + Sync {
    /// Makes the newest content for `image` available for export (for a daemon: a pull).
    fn pull(&self, image: &Reference) -> impl Future<Output = Result<Pulled, SourceError>> + Send;

    /// Facts about the pulled image: its ID and content size.
    fn inspect(&self, image: &Reference) -> impl Future<Output = Result<ImageFacts, SourceError>> + Send;

    /// The digest the registry currently serves for `image`, without pulling it.
    fn remote_digest(&self, image: &Reference) -> impl Future<Output = Result<String, SourceError>> + Send;

    /// Streams `image` as a `docker save` archive (classic or OCI layout).
    fn export(&self, image: &Reference) -> BoxStream<'static, Result<Bytes, SourceError>>;

    /// Frees the source's copy of `image` after it was archived.
    fn remove(&self, image: &Reference) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// The result of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// What the pull found.
    pub outcome: PullOutcome,
    /// The registry digest the reference resolved to, if the source said.
    pub digest: Option<String>,
}

/// Facts about a pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// The image ID.
    pub id: String,
    /// Size of its content in bytes (about the size of its archive).
    pub size: u64,
}

/// What a pull found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    /// New content was downloaded.
    Downloaded,
    /// The local copy was already current.
    UpToDate,
    /// The source did not say.
    Unknown,
}

impl fmt::Display for PullOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullOutcome::Downloaded => "downloaded newer image",
            PullOutcome::UpToDate => "image is up to date",
            PullOutcome::Unknown => "done",
        })
    }
}

/// A failure of the source, with the image and the source's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("pull of {image} failed: {message}")]
    Pull { image: String, message: String },
    #[error("tagging {image} failed: {message}")]
    Tag { image: String, message: String },
    #[error("inspecting {image} failed: {message}")]
    Inspect { image: String, message: String },
    #[error("asking the registry for the digest of {image} failed: {message}")]
    Resolve { image: String, message: String },
    #[error("export of {image} failed: {message}")]
    Export { image: String, message: String },
    #[error("removing {image} from the source failed: {message}")]
    Remove { image: String, message: String },
    #[error("loading {archive} failed: {message}")]
    Load { archive: String, message: String },
}

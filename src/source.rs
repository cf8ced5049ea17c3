//! Where images come from: the small interface the preload cycle needs.
//!
//! Today the only source is a Docker daemon ([`crate::docker::DockerDaemon`]), which pulls from the
//! registry and exports a `docker save` archive. A daemonless source that reads registries directly
//! fits behind the same two calls.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::reference::Reference;

/// A source of image archives.
pub trait ImageSource: Send + Sync {
    /// Makes the newest content for `image` available for export (for a daemon: a pull).
    fn pull(
        &self,
        image: &Reference,
    ) -> impl Future<Output = Result<PullOutcome, SourceError>> + Send;

    /// Streams `image` as a `docker save` archive (classic or OCI layout).
    fn export(&self, image: &Reference) -> BoxStream<'static, Result<Bytes, SourceError>>;
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
    #[error("export of {image} failed: {message}")]
    Export { image: String, message: String },
}

//! Where images come from: the small interface a preload pass needs, its typed errors, and
//! [`Source`], the source chosen at run time.
//!
//! Two implementations: a Docker daemon ([`docker`]), which pulls from the registry and exports a
//! `docker save` archive, and the registries themselves ([`registry`], registry mode): `pull`
//! resolves the manifest, `inspect` gives the config digest and the exact archive size,
//! `remote_digest` is a manifest HEAD, `export` assembles the archive from the blobs, `remove`
//! does nothing.

pub mod docker;
pub mod error;
pub mod registry;

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use futures_util::stream::BoxStream;

pub use error::{ErrorKind, Operation, SourceError};

use crate::daemon::DockerDaemon;
use crate::format::layout::Lacking;
use crate::image::reference::Reference;
use crate::platform::Platform;
use crate::registry::Lookup;

/// A source of image archives. Calls that reach a registry get the credentials found for it
/// (`auth`, possibly none); `platform` `None` means the source's own.
pub trait ImageSource: Send + Sync {
    /// Makes the newest content for `image` available for export (for a daemon: a pull).
    fn pull(
        &self,
        image: &Reference,
        platform: Option<&Platform>,
        auth: &Lookup,
    ) -> impl Future<Output = Result<Pulled, SourceError>> + Send;

    /// Facts about the pulled image: its ID, content size and platform.
    fn inspect(&self, image: &Reference) -> impl Future<Output = Result<ImageFacts, SourceError>> + Send;

    /// The digest the registry currently serves for `image`, without pulling it.
    fn remote_digest(
        &self,
        image: &Reference,
        auth: &Lookup,
    ) -> impl Future<Output = Result<String, SourceError>> + Send;

    /// Streams `image` as a `docker save` archive (classic or OCI layout).
    fn export(&self, image: &Reference) -> BoxStream<'static, Result<Bytes, SourceError>>;

    /// Frees the source's copy of `image` after it was archived.
    fn remove(&self, image: &Reference) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Repairs the source's copy of `image` after its export lacked content it references
    /// (`lacking` says which layer first), so that the next export is whole; pulls it again like
    /// [`ImageSource::pull`].
    fn repair(
        &self,
        image: &Reference,
        platform: Option<&Platform>,
        auth: &Lookup,
        lacking: Lacking,
    ) -> impl Future<Output = Result<Repaired, SourceError>> + Send;
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The images removed from the source (names, or IDs of untagged ones), the repaired one
    /// included.
    pub removed: Vec<String>,
    /// The diff ID of the layer they shared, if known.
    pub layer: Option<String>,
}

/// The source a command uses, chosen at run time.
#[derive(Debug, Clone)]
pub enum Source {
    /// A Docker daemon pulls and exports.
    Daemon(DockerDaemon),
    /// The registries are read directly (registry mode): no daemon.
    Registry(std::sync::Arc<registry::RegistrySource>),
}

impl ImageSource for Source {
    async fn pull(
        &self,
        image: &Reference,
        platform: Option<&Platform>,
        auth: &Lookup,
    ) -> Result<Pulled, SourceError> {
        match self {
            Source::Daemon(daemon) => daemon.pull(image, platform, auth).await,
            Source::Registry(registry) => registry.pull(image, platform, auth).await,
        }
    }

    async fn inspect(&self, image: &Reference) -> Result<ImageFacts, SourceError> {
        match self {
            Source::Daemon(daemon) => daemon.inspect(image).await,
            Source::Registry(registry) => registry.inspect(image).await,
        }
    }

    async fn remote_digest(&self, image: &Reference, auth: &Lookup) -> Result<String, SourceError> {
        match self {
            Source::Daemon(daemon) => daemon.remote_digest(image, auth).await,
            Source::Registry(registry) => registry.remote_digest(image, auth).await,
        }
    }

    fn export(&self, image: &Reference) -> BoxStream<'static, Result<Bytes, SourceError>> {
        match self {
            Source::Daemon(daemon) => daemon.export(image),
            Source::Registry(registry) => registry.export(image),
        }
    }

    async fn remove(&self, image: &Reference) -> Result<(), SourceError> {
        match self {
            Source::Daemon(daemon) => daemon.remove(image).await,
            Source::Registry(registry) => registry.remove(image).await,
        }
    }

    async fn repair(
        &self,
        image: &Reference,
        platform: Option<&Platform>,
        auth: &Lookup,
        lacking: Lacking,
    ) -> Result<Repaired, SourceError> {
        match self {
            Source::Daemon(daemon) => daemon.repair(image, platform, auth, lacking).await,
            Source::Registry(registry) => registry.repair(image, platform, auth, lacking).await,
        }
    }
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
    /// Size of its content in bytes (about the size of its archive), if the source knows it.
    pub size: Option<u64>,
    /// Its platform, if the source knows it.
    pub platform: Option<Platform>,
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

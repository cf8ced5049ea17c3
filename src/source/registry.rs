//! Registries as a source (registry mode, no daemon): the manifest resolved for the platform, the
//! archive planned by [`crate::format::builder`], and the layers streamed from the registry into
//! it with their digests checked on the way.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tracing::warn;

use super::{ErrorKind, ImageFacts, ImageSource, Operation, PullOutcome, Pulled, Repaired, SourceError};
use crate::format::layout::Lacking;
use crate::registry::client;

use crate::format::builder::{ArchivePlan, ArchiveSpec, BlobRef, Part};
use crate::image::reference::Reference;
use crate::platform::Platform;
use crate::registry::Lookup;
use crate::registry::client::{RegistryClient, RegistryError, Resolved, Target};
use crate::registry::manifest::{self, LayerKind};

/// An image ready to be streamed.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Where it comes from.
    pub target: Target,
    /// The resolved manifest and config.
    pub resolved: Resolved,
    /// The archive to write.
    pub plan: ArchivePlan,
}

impl Prepared {
    /// The image ID `docker load` gives it: the config digest.
    pub fn image_id(&self) -> &str {
        &self.resolved.image.config.digest
    }
}

/// Resolves `image` for `wanted` and plans its archive. Refuses what `docker load` cannot use.
pub async fn prepare(
    client: &RegistryClient,
    image: &Reference,
    wanted: &Platform,
) -> Result<Prepared, RegistryError> {
    let target = Target::of(image);
    let resolved = client.resolve(&target, wanted).await?;
    let refuse = |detail: String| RegistryError::Protocol {
        registry: target.registry.clone(),
        what: image.to_string(),
        detail,
    };
    for layer in &resolved.image.layers {
        match manifest::layer_kind(&layer.media_type) {
            LayerKind::Tar => {}
            LayerKind::Zstd => warn!(
                layer = %layer.digest,
                "zstd-compressed layer: `docker load` reads it from Docker 23.0 on, older daemons refuse the archive"
            ),
            LayerKind::Foreign => warn!(
                layer = %layer.digest,
                "foreign (non-distributable) layer: fetched from the registry, which may not serve it"
            ),
            LayerKind::Unknown => {
                return Err(refuse(format!(
                    "layer {} has media type {:?}: not a container image layer that `docker load` can use",
                    layer.digest, layer.media_type
                )));
            }
        }
    }
    let (repo_tags, full_name) = match image.tag() {
        Some(tag) => {
            let full = format!("{}/{}:{tag}", target.registry, target.repository);
            (vec![image.export_name()], Some(full))
        }
        None if image.digest().is_none() => {
            (vec![image.export_name()], Some(format!("{}/{}:latest", target.registry, target.repository)))
        }
        None => (Vec::new(), None),
    };
    let spec = ArchiveSpec {
        repo_tags,
        full_name,
        manifest: resolved.manifest.clone(),
        manifest_media_type: resolved.media_type.clone(),
        config: resolved.config.clone(),
        config_digest: resolved.image.config.digest.clone(),
        layers: resolved
            .image
            .layers
            .iter()
            .map(|l| BlobRef { digest: l.digest.clone(), size: l.size })
            .collect(),
    };
    let plan = ArchivePlan::new(&spec).map_err(|e| refuse(e.to_string()))?;
    Ok(Prepared { target, resolved, plan })
}

/// The archive's bytes: the builder's parts with each layer streamed from the registry. An error
/// (including a wrong digest, reported after the blob's last byte) ends the stream.
pub fn stream(
    client: &RegistryClient,
    prepared: &Prepared,
) -> BoxStream<'static, Result<Bytes, RegistryError>> {
    let client = client.clone();
    let target = prepared.target.clone();
    stream::iter(prepared.plan.parts().to_vec())
        .flat_map(move |part| match part {
            Part::Bytes(bytes) => stream::once(async move { Ok(bytes) }).boxed(),
            Part::Blob(blob) => client.blob(&target, &blob.digest, blob.size),
        })
        // Nothing after the first error.
        .scan(false, |failed, item| {
            let next = (!*failed).then(|| {
                *failed = item.is_err();
                item
            });
            std::future::ready(next)
        })
        .boxed()
}

/// Registries as an [`ImageSource`]: `pull` resolves the manifest for the platform and plans the
/// archive (nothing is downloaded but the manifests and the config), `inspect` gives the config
/// digest (the image ID) and the exact archive size, `remote_digest` is a manifest HEAD, `export`
/// streams the archive with every layer checked, and `remove` forgets the plan.
#[derive(Debug)]
pub struct RegistrySource {
    client: RegistryClient,
    platform: Platform,
    /// Plans made by `pull`, taken by `export`, per image.
    planned: Mutex<HashMap<String, Prepared>>,
}

impl RegistrySource {
    /// A source that reads registries through `client`, for `platform`.
    pub fn new(client: RegistryClient, platform: Platform) -> RegistrySource {
        RegistrySource { client, platform, planned: Mutex::new(HashMap::new()) }
    }

    /// The platform images are resolved for.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    fn planned(&self, image: &Reference) -> Option<Prepared> {
        self.planned.lock().expect("plan cache").get(&image.to_string()).cloned()
    }
}

/// A registry failure as a source failure of `operation`, keeping its kind.
fn source_error(operation: Operation, image: &Reference, error: RegistryError) -> SourceError {
    let kind = match error.kind() {
        client::ErrorKind::Auth => ErrorKind::Auth,
        client::ErrorKind::NotFound => ErrorKind::NotFound,
        client::ErrorKind::Transient => ErrorKind::Transient,
        client::ErrorKind::Other => ErrorKind::Other,
    };
    SourceError { operation, image: image.to_string(), kind, message: error.to_string() }
}

impl ImageSource for RegistrySource {
    /// The credentials come from the client's own lookup (the same credentials in force), so
    /// `_auth` is not needed here.
    async fn pull(
        &self,
        image: &Reference,
        platform: Option<&Platform>,
        _auth: &Lookup,
    ) -> Result<Pulled, SourceError> {
        let prepared = prepare(&self.client, image, platform.unwrap_or(&self.platform))
            .await
            .map_err(|e| source_error(Operation::Pull, image, e))?;
        let digest = Some(prepared.resolved.digest.clone());
        self.planned.lock().expect("plan cache").insert(image.to_string(), prepared);
        Ok(Pulled { outcome: PullOutcome::Unknown, digest })
    }

    async fn inspect(&self, image: &Reference) -> Result<ImageFacts, SourceError> {
        let prepared = self.planned(image).ok_or_else(|| SourceError {
            operation: Operation::Inspect,
            image: image.to_string(),
            kind: ErrorKind::Other,
            message: "the image was not resolved first".into(),
        })?;
        Ok(ImageFacts {
            id: prepared.image_id().to_owned(),
            size: Some(prepared.plan.size()),
            platform: crate::format::layout::config_platform(&prepared.resolved.config),
        })
    }

    async fn remote_digest(&self, image: &Reference, _auth: &Lookup) -> Result<String, SourceError> {
        self.client
            .head_digest(&Target::of(image))
            .await
            .map_err(|e| source_error(Operation::Resolve, image, e))
    }

    fn export(&self, image: &Reference) -> BoxStream<'static, Result<Bytes, SourceError>> {
        let taken = self.planned.lock().expect("plan cache").remove(&image.to_string());
        let image = image.clone();
        match taken {
            Some(prepared) => stream(&self.client, &prepared)
                .map(move |item| item.map_err(|e| source_error(Operation::Export, &image, e)))
                .boxed(),
            None => futures_util::stream::once(async move {
                Err(SourceError {
                    operation: Operation::Export,
                    image: image.to_string(),
                    kind: ErrorKind::Other,
                    message: "the image was not resolved first".into(),
                })
            })
            .boxed(),
        }
    }

    async fn remove(&self, image: &Reference) -> Result<(), SourceError> {
        self.planned.lock().expect("plan cache").remove(&image.to_string());
        Ok(())
    }

    /// Nothing to repair: the archive is planned from the registry's manifest and every blob is
    /// streamed from the registry; the next pull plans it afresh.
    async fn repair(
        &self,
        image: &Reference,
        platform: Option<&Platform>,
        auth: &Lookup,
        _lacking: Lacking,
    ) -> Result<Repaired, SourceError> {
        self.pull(image, platform, auth).await?;
        Ok(Repaired { removed: Vec::new(), layer: None })
    }
}

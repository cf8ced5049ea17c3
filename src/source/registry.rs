//! Registries as a source (registry mode, no daemon): the manifest resolved for the platform, the
//! archive planned by [`crate::format::builder`], and the layers streamed from the registry into
//! it with their digests checked on the way.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tracing::warn;

use crate::format::builder::{ArchivePlan, ArchiveSpec, BlobRef, Part};
use crate::image::reference::Reference;
use crate::platform::Platform;
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

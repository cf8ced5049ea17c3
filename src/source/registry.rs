//! Registries as a source (registry mode, no daemon): the manifest resolved for the platform, the
//! archive planned by [`crate::format::builder`], and the layers streamed from the registry into
//! it with their digests checked on the way: kept compressed as served, or gunzipped on the way
//! (`--layers uncompressed`) with both the blob digest and the config's `diff_id` checked.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tracing::warn;

use super::{ErrorKind, ImageFacts, ImageSource, Operation, PullOutcome, Pulled, Repaired, SourceError};
use crate::format::layout::Lacking;
use crate::registry::client;

use crate::format::builder::{self, ArchivePlan, ArchiveSpec, BlobRef, Decode, Layer, Part};
use crate::image::reference::Reference;
use crate::platform::Platform;
use crate::registry::Lookup;
use crate::registry::client::{RegistryClient, RegistryError, Resolved, Target};
use crate::registry::manifest::{self, LayerKind};

/// How layers are stored in registry mode's archives (`--layers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerStorage {
    /// As the registry serves them (gzip): smaller archives, `docker load` decompresses.
    Compressed,
    /// Gunzipped while streaming, as `docker save` writes them: `docker load` only unpacks.
    #[default]
    Uncompressed,
}

/// Output chunks of the gunzip worker.
const GUNZIP_CHUNK: usize = 32 << 10;
/// Compressed chunks buffered towards the gunzip worker, and output chunks back (the compressed
/// chunks are slices of the HTTP client's read buffer, which they keep alive while queued).
const GUNZIP_QUEUE: usize = 2;
/// Concurrent range requests for gzip trailers while planning.
const TRAILER_REQUESTS: usize = 4;

/// The uncompressed size of a gzip layer of `compressed` bytes whose trailer states `isize` (the
/// size modulo 2^32): the smallest size congruent to it that is at least 7/8 of `compressed`
/// (encoders do not grow data by more than that: incompressible data from Go's gzip, which pushes
/// most layers, comes out about 0.01% larger, fixed Huffman codes at most 12.5%). A layer of 4 GiB
/// or more uncompressed that compresses well is beyond what the trailer can tell; streaming it then
/// fails with a size mismatch, publishing nothing.
pub fn gzip_size(compressed: u64, isize: u32) -> u64 {
    let floor = compressed.saturating_sub(compressed / 8 + 1024);
    let size = u64::from(isize);
    if size >= floor { size } else { size + ((floor - size).div_ceil(1 << 32) << 32) }
}

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

/// Resolves `image` for `wanted` and plans its archive, layers stored as `storage` says. Refuses
/// what `docker load` cannot use: foreign (non-distributable) layers, zstd layers to be stored
/// uncompressed, and anything that is not a layer tar.
pub async fn prepare(
    client: &RegistryClient,
    image: &Reference,
    wanted: &Platform,
    storage: LayerStorage,
) -> Result<Prepared, RegistryError> {
    let target = Target::of(image);
    let resolved = client.resolve(&target, wanted).await?;
    let refuse = |detail: String| RegistryError::Protocol {
        registry: target.registry.clone(),
        what: image.to_string(),
        detail,
    };
    let diff_ids = match storage {
        LayerStorage::Compressed => Vec::new(),
        LayerStorage::Uncompressed => {
            let ids = diff_ids(&resolved.config).map_err(|e| refuse(e.to_owned()))?;
            if ids.len() != resolved.image.layers.len() {
                return Err(refuse(format!(
                    "the manifest has {} layers, the config {} diff_ids",
                    resolved.image.layers.len(),
                    ids.len()
                )));
            }
            ids
        }
    };
    // What each layer becomes; gzip layers to store uncompressed still need their size (None).
    let mut planned: Vec<(Layer, bool)> = Vec::new();
    for (i, layer) in resolved.image.layers.iter().enumerate() {
        let fetch = BlobRef { digest: layer.digest.clone(), size: layer.size };
        let gunzip = match layer_action(&layer.media_type, storage) {
            Ok(LayerAction::Gunzip) => true,
            Ok(LayerAction::AsServed) => false,
            Ok(LayerAction::Zstd) => {
                warn!(
                    image = %image,
                    layer = %layer.digest,
                    "zstd-compressed layer kept as served: `docker load` reads it from Docker 23.0 on, older daemons refuse the archive"
                );
                false
            }
            Err(detail) => return Err(refuse(format!("layer {}: {detail}", layer.digest))),
        };
        let stored = if gunzip { BlobRef { digest: diff_ids[i].clone(), size: 0 } } else { fetch.clone() };
        let decode = if gunzip { Decode::Gzip } else { Decode::None };
        planned.push((Layer { stored, fetch, decode }, gunzip));
    }
    // The uncompressed sizes, from the gzip trailers (range requests for their last 4 bytes).
    let trailers: Vec<(BlobRef, bool)> =
        planned.iter().map(|(layer, gunzip)| (layer.fetch.clone(), *gunzip)).collect();
    let sizes: Vec<Option<u64>> = stream::iter(trailers.into_iter().map(|(fetch, gunzip)| {
        let (client, target, registry, what) =
            (client.clone(), target.clone(), target.registry.clone(), image.to_string());
        async move {
            if !gunzip {
                return Ok(None);
            }
            let refuse = |detail: String| RegistryError::Protocol { registry, what, detail };
            if fetch.size < 18 {
                return Err(refuse(format!("layer {} is too small for gzip data", fetch.digest)));
            }
            let tail = client.blob_tail(&target, &fetch.digest, fetch.size, 4).await?;
            let Ok(isize) = <[u8; 4]>::try_from(&tail[..]) else {
                return Err(refuse(format!(
                    "layer {}: the registry served {} bytes for its last 4",
                    fetch.digest,
                    tail.len()
                )));
            };
            Ok(Some(gzip_size(fetch.size, u32::from_le_bytes(isize))))
        }
    }))
    .buffered(TRAILER_REQUESTS)
    .try_collect()
    .await?;
    let layers: Vec<Layer> = planned
        .into_iter()
        .zip(sizes)
        .map(|((mut layer, _), size)| {
            if let Some(size) = size {
                layer.stored.size = size;
            }
            layer
        })
        .collect();
    let manifest = if layers.iter().any(|l| l.decode != Decode::None) {
        builder::uncompressed_manifest(&resolved.manifest, &resolved.media_type, &layers)
            .map_err(|e| refuse(e.to_string()))?
    } else {
        resolved.manifest.clone()
    };
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
        manifest,
        manifest_media_type: resolved.media_type.clone(),
        config: resolved.config.clone(),
        config_digest: resolved.image.config.digest.clone(),
        layers,
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
            Part::Blob(Layer { fetch, decode: Decode::None, .. }) => {
                client.blob(&target, &fetch.digest, fetch.size)
            }
            Part::Blob(Layer { stored, fetch, decode: Decode::Gzip }) => {
                let compressed = client.blob(&target, &fetch.digest, fetch.size);
                let (registry, what) =
                    (target.registry.clone(), format!("blob {} of {}", fetch.digest, target.repository));
                gunzip(compressed, stored, move |detail| RegistryError::Integrity {
                    registry: registry.clone(),
                    what: what.clone(),
                    detail,
                })
            }
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

/// What becomes of a layer of this media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerAction {
    /// Stored as served (gzip kept, or an uncompressed tar).
    AsServed,
    /// A zstd layer stored as served (`--layers compressed`): Docker 23.0+ loads it.
    Zstd,
    /// A gzip layer stored uncompressed.
    Gunzip,
}

/// The layer's fate for `storage`, or why registry mode refuses it.
fn layer_action(media_type: &str, storage: LayerStorage) -> Result<LayerAction, String> {
    match (manifest::layer_kind(media_type), storage) {
        (LayerKind::Tar, LayerStorage::Uncompressed) if media_type.ends_with("gzip") => {
            Ok(LayerAction::Gunzip)
        }
        (LayerKind::Tar, _) => Ok(LayerAction::AsServed),
        (LayerKind::Zstd, LayerStorage::Compressed) => Ok(LayerAction::Zstd),
        (LayerKind::Zstd, LayerStorage::Uncompressed) => Err("it is zstd-compressed: --layers uncompressed \
             decompresses gzip layers only; use --layers compressed (`docker load` reads zstd layers from \
             Docker 23.0 on) or --mode daemon"
            .into()),
        (LayerKind::Foreign, _) => Err(format!(
            "it is a foreign (non-distributable) layer ({media_type}): registries need not serve its \
             content and `docker save` leaves it out, so registry mode does not archive it"
        )),
        (LayerKind::Unknown, _) => Err(format!(
            "media type {media_type:?} is not a container image layer that `docker load` can use"
        )),
    }
}

/// The config's `rootfs.diff_ids`: each layer's uncompressed digest.
fn diff_ids(config: &[u8]) -> Result<Vec<String>, &'static str> {
    let value: serde_json::Value = serde_json::from_slice(config).map_err(|_| "the config is not JSON")?;
    value["rootfs"]["diff_ids"]
        .as_array()
        .ok_or("the config has no rootfs.diff_ids")?
        .iter()
        .map(|id| id.as_str().map(str::to_owned).ok_or("a diff_id is not a string"))
        .collect()
}

/// Gunzips a layer blob while it streams, on a blocking thread: exactly `stored.size` bytes whose
/// sha256 is `stored.digest` (the config's `diff_id`), else an error from `integrity` ends the
/// stream. The compressed blob's own checks (digest, size) pass through as its errors. Memory is a
/// few chunks each way and the decoder's window.
fn gunzip(
    compressed: BoxStream<'static, Result<Bytes, RegistryError>>,
    stored: BlobRef,
    integrity: impl Fn(String) -> RegistryError + Send + 'static,
) -> BoxStream<'static, Result<Bytes, RegistryError>> {
    let (in_tx, in_rx) = mpsc::channel(GUNZIP_QUEUE);
    let (out_tx, out_rx) = mpsc::channel(GUNZIP_QUEUE);
    tokio::spawn(async move {
        let mut compressed = compressed;
        while let Some(item) = compressed.next().await {
            let failed = item.is_err();
            if in_tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let reader = ChannelReader { rx: in_rx, current: Bytes::new(), error: None, ended: false };
    tokio::task::spawn_blocking(move || gunzip_blocking(reader, &out_tx, &stored, &integrity));
    stream::unfold(out_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

/// The blocking side of [`gunzip`].
fn gunzip_blocking(
    reader: ChannelReader,
    out: &mpsc::Sender<Result<Bytes, RegistryError>>,
    stored: &BlobRef,
    integrity: &dyn Fn(String) -> RegistryError,
) {
    let mut decoder = flate2::read::MultiGzDecoder::new(reader);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let mut buf = BytesMut::zeroed(GUNZIP_CHUNK);
        let mut filled = 0;
        let mut end = false;
        while filled < GUNZIP_CHUNK {
            match decoder.read(&mut buf[filled..]) {
                Ok(0) => {
                    end = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let error = decoder
                        .get_mut()
                        .error
                        .take()
                        .unwrap_or_else(|| integrity(format!("it is not valid gzip data: {e}")));
                    let _ = out.blocking_send(Err(error));
                    return;
                }
            }
        }
        buf.truncate(filled);
        total += filled as u64;
        if total > stored.size {
            let _ = out.blocking_send(Err(integrity(format!(
                "it decompresses to more than the {} bytes its gzip trailer states (a layer of 4 GiB \
                 or more uncompressed, or several gzip members): use --layers compressed",
                stored.size
            ))));
            return;
        }
        hasher.update(&buf);
        if filled > 0 && out.blocking_send(Ok(buf.freeze())).is_err() {
            return;
        }
        if end {
            break;
        }
    }
    let actual = format!("sha256:{}", hex(&hasher.finalize()));
    let failure = if total != stored.size {
        Some(format!("it decompresses to {total} bytes, its gzip trailer states {}", stored.size))
    } else if actual != stored.digest {
        Some(format!(
            "its uncompressed content has digest {actual}, the config's diff_id is {}",
            stored.digest
        ))
    } else {
        None
    };
    if let Some(detail) = failure {
        let _ = out.blocking_send(Err(integrity(detail)));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The compressed blob's chunks as a [`Read`] (on the gunzip thread); a failure of the blob is
/// kept to be passed on as it is.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, RegistryError>>,
    current: Bytes,
    error: Option<RegistryError>,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return match &self.error {
                    Some(_) => Err(io::Error::other("the compressed blob failed")),
                    None => Ok(0),
                };
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.error = Some(e);
                    self.ended = true;
                }
                None => self.ended = true,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Registries as an [`ImageSource`]: `pull` resolves the manifest for the platform and plans the
/// archive (nothing is downloaded but the manifests and the config), `inspect` gives the config
/// digest (the image ID) and the exact archive size, `remote_digest` is a manifest HEAD, `export`
/// streams the archive with every layer checked, and `remove` forgets the plan.
#[derive(Debug)]
pub struct RegistrySource {
    client: RegistryClient,
    platform: Platform,
    storage: LayerStorage,
    /// Plans made by `pull`, taken by `export`, per image.
    planned: Mutex<HashMap<String, Prepared>>,
}

impl RegistrySource {
    /// A source that reads registries through `client`, for `platform`, storing layers as
    /// `storage` says.
    pub fn new(client: RegistryClient, platform: Platform, storage: LayerStorage) -> RegistrySource {
        RegistrySource { client, platform, storage, planned: Mutex::new(HashMap::new()) }
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
        let prepared = prepare(&self.client, image, platform.unwrap_or(&self.platform), self.storage)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_sizes_from_the_trailer() {
        // Below 4 GiB the trailer is the size.
        assert_eq!(gzip_size(1000, 5000), 5000);
        assert_eq!(gzip_size(300 << 20, 1 << 30), 1 << 30);
        // Incompressible data: a little larger compressed than uncompressed (this one measured).
        assert_eq!(gzip_size(1_000_100, 1_000_000), 1_000_000);
        assert_eq!(gzip_size(268_470_000, 268_437_504), 268_437_504);
        assert_eq!(gzip_size(1_100_000, 1_000_000), 1_000_000);
        // A 5 GiB incompressible layer: the trailer holds 1 GiB, the compressed size tells the rest.
        let five = 5u64 << 30;
        assert_eq!(gzip_size(five + 100_000, (five % (1 << 32)) as u32), five);
    }

    #[test]
    fn layer_actions() {
        use LayerStorage::{Compressed, Uncompressed};
        let gzip = "application/vnd.docker.image.rootfs.diff.tar.gzip";
        let oci_gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        let tar = "application/vnd.oci.image.layer.v1.tar";
        let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
        let foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
        assert_eq!(layer_action(gzip, Uncompressed), Ok(LayerAction::Gunzip));
        assert_eq!(layer_action(oci_gzip, Uncompressed), Ok(LayerAction::Gunzip));
        assert_eq!(layer_action(gzip, Compressed), Ok(LayerAction::AsServed));
        assert_eq!(layer_action(tar, Uncompressed), Ok(LayerAction::AsServed));
        assert_eq!(layer_action(zstd, Compressed), Ok(LayerAction::Zstd));
        assert!(layer_action(zstd, Uncompressed).unwrap_err().contains("--layers compressed"));
        for storage in [Compressed, Uncompressed] {
            assert!(layer_action(foreign, storage).unwrap_err().contains("foreign (non-distributable)"));
            assert!(layer_action("application/vnd.cncf.helm.chart.content.v1.tar+gzip", storage).is_err());
        }
    }

    #[test]
    fn diff_ids_from_the_config() {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]}}"#;
        assert_eq!(diff_ids(config).unwrap(), ["sha256:aa", "sha256:bb"]);
        assert!(diff_ids(b"{}").is_err());
        assert!(diff_ids(b"nope").is_err());
    }
}

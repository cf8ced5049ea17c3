//! Writes a `docker save`-compatible archive from registry blobs: the layout of Docker 25+
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) with the `manifest.json` and `repositories` files
//! every `docker load` since Docker 1.10 reads.
//!
//! The builder is pure: from the registry manifest, the config and the layer descriptors it plans
//! the whole archive (its exact size is known before the first byte) as a sequence of [`Part`]s:
//! bytes it produces itself (tar headers, padding, the small JSON files) and placeholders for the
//! layer blobs, which the caller streams from the registry. Each byte is produced once, so the
//! archive can go straight into the store's publish path.
//!
//! Layers are either kept as the registry serves them (compressed: `docker load` decompresses gzip
//! layers itself and checks each layer's uncompressed digest against the config's `diff_ids`) or
//! stored uncompressed, as `docker save` writes them (the caller decompresses while streaming; the
//! archive then carries a manifest of its own naming the uncompressed layers, as `docker save`'s
//! does). Either way the loaded image has the same ID as a pull: the config is kept byte for byte.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use serde_json::json;

const BLOCK: usize = 512;
/// Largest size the 11 octal digits of a ustar header hold; larger sizes use base-256.
const OCTAL_SIZE_MAX: u64 = 0o77777777777;

/// The OCI image index media type, used for `index.json`.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A content-addressed blob: its digest (`sha256:<hex>`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// How a layer's content is produced from the registry blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// The registry blob, as served.
    None,
    /// The registry blob, gunzipped.
    Gzip,
}

/// A layer as the archive stores it and where its content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The file in the archive: its digest names it, its size is in the tar header.
    pub stored: BlobRef,
    /// The registry blob it is made from (the same as `stored` when not decoded).
    pub fetch: BlobRef,
    /// How.
    pub decode: Decode,
}

impl Layer {
    /// A layer stored as the registry serves it.
    pub fn as_served(blob: BlobRef) -> Layer {
        Layer { stored: blob.clone(), fetch: blob, decode: Decode::None }
    }
}

/// What the archive is made of.
#[derive(Debug, Clone)]
pub struct ArchiveSpec {
    /// Tags `docker load` applies (`name:tag`); empty for an image referenced by digest only.
    pub repo_tags: Vec<String>,
    /// The fully qualified name (`docker.io/library/nginx:1.27`) for the index annotation, if tagged.
    pub full_name: Option<String>,
    /// The single-platform image manifest: byte for byte as the registry served it, or (layers
    /// stored uncompressed) one naming the stored layers, from [`uncompressed_manifest`].
    pub manifest: Bytes,
    /// Its media type (Docker v2 schema 2 or OCI).
    pub manifest_media_type: String,
    /// The image config, byte for byte (its digest is the image ID).
    pub config: Bytes,
    /// The config's digest, as the manifest states it.
    pub config_digest: String,
    /// The layers in manifest order (a layer may appear twice; its blob is written once).
    pub layers: Vec<Layer>,
}

/// A piece of the archive, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Bytes the builder made (headers, padding, small files).
    Bytes(Bytes),
    /// The content of this layer, streamed by the caller: exactly `stored.size` bytes with the
    /// digest `stored.digest`, made from the registry blob `fetch`.
    Blob(Layer),
}

/// Why an archive cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("unsupported digest {0:?}: only sha256:<64 lowercase hex> is supported")]
    Digest(String),
    #[error("the config's content does not match its digest {0}")]
    ConfigDigest(String),
    #[error("the manifest cannot be rewritten for uncompressed layers: {0}")]
    Manifest(String),
}

/// The planned archive: its parts and total size.
#[derive(Debug, Clone)]
pub struct ArchivePlan {
    parts: Vec<Part>,
    size: u64,
    manifest_digest: String,
}

impl ArchivePlan {
    /// Plans the archive for `spec`.
    pub fn new(spec: &ArchiveSpec) -> Result<ArchivePlan, BuildError> {
        let config_hex = sha256_hex(&spec.config_digest)?;
        if hex(&sha2_digest(&spec.config)) != config_hex {
            return Err(BuildError::ConfigDigest(spec.config_digest.clone()));
        }
        for layer in &spec.layers {
            sha256_hex(&layer.stored.digest)?;
            sha256_hex(&layer.fetch.digest)?;
        }
        let manifest_digest = format!("sha256:{}", hex(&sha2_digest(&spec.manifest)));

        let mut out = PartsBuilder::default();
        out.dir("blobs/");
        out.dir("blobs/sha256/");
        out.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        out.file(&blob_path(&spec.config_digest), &spec.config);
        let mut written = HashSet::new();
        written.insert(spec.config_digest.clone());
        for layer in &spec.layers {
            if written.insert(layer.stored.digest.clone()) {
                out.blob(&blob_path(&layer.stored.digest), layer);
            }
        }
        if written.insert(manifest_digest.clone()) {
            out.file(&blob_path(&manifest_digest), &spec.manifest);
        }

        let mut annotations = serde_json::Map::new();
        if let Some(name) = &spec.full_name {
            annotations.insert("io.containerd.image.name".into(), json!(name));
            if let Some((_, tag)) = name.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
                annotations.insert("org.opencontainers.image.ref.name".into(), json!(tag));
            }
        }
        let mut descriptor = json!({
            "mediaType": spec.manifest_media_type,
            "digest": manifest_digest,
            "size": spec.manifest.len(),
        });
        if !annotations.is_empty() {
            descriptor["annotations"] = serde_json::Value::Object(annotations);
        }
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor] });
        out.file("index.json", &to_json(&index));

        let manifest = json!([{
            "Config": blob_path(&spec.config_digest),
            "RepoTags": if spec.repo_tags.is_empty() { serde_json::Value::Null } else { json!(spec.repo_tags) },
            "Layers": spec.layers.iter().map(|l| blob_path(&l.stored.digest)).collect::<Vec<_>>(),
        }]);
        out.file("manifest.json", &to_json(&manifest));

        // `repositories`: name → tag → the top layer's ID, as `docker save` writes it.
        let mut repositories = serde_json::Map::new();
        if let Some(top) = spec.layers.last() {
            for tagged in &spec.repo_tags {
                if let Some((name, tag)) = tagged.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
                    let entry = repositories.entry(name.to_owned()).or_insert_with(|| json!({}));
                    entry[tag] = json!(sha256_hex(&top.stored.digest)?);
                }
            }
        }
        out.file("repositories", &to_json(&serde_json::Value::Object(repositories)));
        out.end();
        let (parts, size) = out.finish();
        Ok(ArchivePlan { parts, size, manifest_digest })
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Consumes the plan, returning its parts.
    pub fn into_parts(self) -> Vec<Part> {
        self.parts
    }

    /// The exact archive size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of the image manifest stored in the archive.
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }
}

/// The media type of an uncompressed layer in a manifest of `manifest_media_type`.
fn uncompressed_layer_type(manifest_media_type: &str) -> &'static str {
    if manifest_media_type.contains("docker") {
        "application/vnd.docker.image.rootfs.diff.tar"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    }
}

/// The registry's image manifest with its decoded layers replaced by the stored (uncompressed)
/// ones, as `docker save` writes it: each such layer's media type, digest (the config's `diff_id`)
/// and size; layers stored as served and the rest (config, annotations) kept.
pub fn uncompressed_manifest(
    manifest: &[u8],
    media_type: &str,
    stored: &[Layer],
) -> Result<Bytes, BuildError> {
    let bad = |detail: &str| BuildError::Manifest(detail.to_owned());
    let mut value: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| bad(&e.to_string()))?;
    let layers =
        value.get_mut("layers").and_then(|l| l.as_array_mut()).ok_or_else(|| bad("no layers array"))?;
    if layers.len() != stored.len() {
        return Err(bad("the layer count changed"));
    }
    for (layer, blob) in layers.iter_mut().zip(stored) {
        if blob.decode == Decode::None {
            continue;
        }
        let blob = &blob.stored;
        let object = layer.as_object_mut().ok_or_else(|| bad("a layer is not an object"))?;
        object.insert("mediaType".into(), json!(uncompressed_layer_type(media_type)));
        object.insert("digest".into(), json!(blob.digest));
        object.insert("size".into(), json!(blob.size));
        object.remove("urls");
    }
    Ok(Bytes::from(to_json(&value)))
}

/// `sha256:abc…` → `blobs/sha256/abc…`.
pub fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn sha256_hex(digest: &str) -> Result<&str, BuildError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| BuildError::Digest(digest.to_owned()))
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha2_digest(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values serialize")
}

/// Collects parts, merging adjacent produced bytes.
#[derive(Default)]
struct PartsBuilder {
    parts: Vec<Part>,
    pending: BytesMut,
    size: u64,
}

impl PartsBuilder {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
    }

    fn dir(&mut self, path: &str) {
        self.push(&header(path, b'5', 0, 0o755));
    }

    fn file(&mut self, path: &str, content: &[u8]) {
        self.push(&header(path, b'0', content.len() as u64, 0o644));
        self.push(content);
        self.push(&padding(content.len() as u64));
    }

    fn blob(&mut self, path: &str, layer: &Layer) {
        let size = layer.stored.size;
        self.push(&header(path, b'0', size, 0o644));
        if !self.pending.is_empty() {
            self.parts.push(Part::Bytes(self.pending.split().freeze()));
        }
        self.parts.push(Part::Blob(layer.clone()));
        self.size += size;
        self.push(&padding(size));
    }

    /// The end-of-archive marker: two zero blocks.
    fn end(&mut self) {
        self.push(&[0; 2 * BLOCK]);
    }

    fn finish(mut self) -> (Vec<Part>, u64) {
        if !self.pending.is_empty() {
            self.parts.push(Part::Bytes(self.pending.split().freeze()));
        }
        (self.parts, self.size)
    }
}

/// Zero bytes that round `size` up to a whole block.
fn padding(size: u64) -> Vec<u8> {
    vec![0; ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize]
}

/// A ustar header for a regular file (`b'0'`) or directory (`b'5'`), owned by root, time 0.
/// Paths here are at most 77 bytes (`blobs/sha256/<64 hex>`), within ustar's 100.
fn header(path: &str, kind: u8, size: u64, mode: u32) -> [u8; BLOCK] {
    assert!(path.len() <= 100, "tar path {path:?} longer than 100 bytes");
    let mut h = [0u8; BLOCK];
    h[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size <= OCTAL_SIZE_MAX {
        octal(&mut h[124..136], size);
    } else {
        // GNU base-256: high bit set, big-endian value in the remaining bytes.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let field = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(field.as_bytes());
    h
}

/// Zero-padded octal with a trailing NUL, filling the field.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::layout::{self, Layout};
    use crate::format::tar::{EntryKind, TarScanner};

    fn digest_of(data: &[u8]) -> String {
        format!("sha256:{}", hex(&sha2_digest(data)))
    }

    fn spec(layers: &[&[u8]]) -> ArchiveSpec {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer_refs: Vec<BlobRef> =
            layers.iter().map(|l| BlobRef { digest: digest_of(l), size: l.len() as u64 }).collect();
        let stored: Vec<Layer> = layer_refs.iter().cloned().map(Layer::as_served).collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest_of(config), "size": config.len()},
            "layers": layer_refs.iter().map(|l| json!({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        ArchiveSpec {
            repo_tags: vec!["reg.io/team/app:1".into()],
            full_name: Some("reg.io/team/app:1".into()),
            manifest: Bytes::from(to_json(&manifest)),
            manifest_media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            config: Bytes::from_static(config),
            config_digest: digest_of(config),
            layers: stored,
        }
    }

    /// The archive with each blob placeholder filled from `layers`.
    fn render(plan: &ArchivePlan, layers: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in plan.parts() {
            match part {
                Part::Bytes(b) => out.extend_from_slice(b),
                Part::Blob(layer) => {
                    let content = layers.iter().find(|l| digest_of(l) == layer.stored.digest).unwrap();
                    out.extend_from_slice(content);
                }
            }
        }
        out
    }

    #[test]
    fn archive_is_a_complete_oci_docker_archive() {
        let layers: [&[u8]; 3] = [&[1; 1000], &[2; 512], &[1; 1000]];
        let spec = spec(&layers);
        let plan = ArchivePlan::new(&spec).unwrap();
        let bytes = render(&plan, &layers);
        assert_eq!(bytes.len() as u64, plan.size(), "the planned size is exact");
        assert_eq!(bytes.len() % BLOCK, 0);
        let blobs = plan.parts().iter().filter(|p| matches!(p, Part::Blob(_))).count();
        assert_eq!(blobs, 2, "a repeated layer's blob is written once");

        let mut scanner = TarScanner::new(layout::capture_filter);
        for chunk in bytes.chunks(777) {
            scanner.update(chunk).unwrap();
        }
        let listing = scanner.finish().unwrap();
        let contents = layout::check(&listing).unwrap();
        assert_eq!(contents.layout, Layout::Oci);
        assert_eq!(contents.images[0].repo_tags, ["reg.io/team/app:1"]);
        assert_eq!(contents.images[0].config_digest.as_deref(), Some(spec.config_digest.as_str()));
        assert_eq!(contents.images[0].layers, 3);
        assert_eq!(
            listing.entry(&blob_path(&spec.layers[0].stored.digest)),
            Some(&EntryKind::File { size: 1000 })
        );
        assert_eq!(listing.captured(&blob_path(plan.manifest_digest())), Some(&spec.manifest[..]));
        let index: serde_json::Value =
            serde_json::from_slice(listing.captured("index.json").unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], plan.manifest_digest());
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "1");

        let mut everything = TarScanner::new(|_, _| true);
        everything.update(&bytes).unwrap();
        let listing = everything.finish().unwrap();
        let repositories: serde_json::Value =
            serde_json::from_slice(listing.captured("repositories").unwrap()).unwrap();
        assert_eq!(repositories["reg.io/team/app"]["1"], sha256_hex(&spec.layers[2].stored.digest).unwrap());
    }

    #[test]
    fn digest_only_image_has_no_tags() {
        let layers: [&[u8]; 1] = [b"layer"];
        let mut spec = spec(&layers);
        spec.repo_tags.clear();
        spec.full_name = None;
        let plan = ArchivePlan::new(&spec).unwrap();
        let mut scanner = TarScanner::new(layout::capture_filter);
        scanner.update(&render(&plan, &layers)).unwrap();
        let listing = scanner.finish().unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(listing.captured("manifest.json").unwrap()).unwrap();
        assert!(manifest[0]["RepoTags"].is_null());
        assert!(layout::check(&listing).unwrap().images[0].repo_tags.is_empty());
    }

    #[test]
    fn bad_digests_are_refused() {
        let layers: [&[u8]; 1] = [b"layer"];
        let mut bad_config = spec(&layers);
        bad_config.config = Bytes::from_static(b"{}");
        assert!(matches!(ArchivePlan::new(&bad_config), Err(BuildError::ConfigDigest(_))));
        let mut bad_layer = spec(&layers);
        bad_layer.layers[0].stored.digest = "sha512:abc".into();
        assert!(matches!(ArchivePlan::new(&bad_layer), Err(BuildError::Digest(_))));
    }

    #[test]
    fn uncompressed_manifest_names_the_stored_layers() {
        let layers: [&[u8]; 2] = [b"one", b"two"];
        let spec = spec(&layers);
        let gunzipped = |data: &[u8], size| Layer {
            stored: BlobRef { digest: digest_of(data), size },
            fetch: BlobRef { digest: digest_of(b"compressed"), size: 10 },
            decode: Decode::Gzip,
        };
        let stored = [gunzipped(b"ONE", 3000), gunzipped(b"TWO", 4000)];
        let rewritten = uncompressed_manifest(&spec.manifest, &spec.manifest_media_type, &stored).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(value["layers"][1]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar");
        assert_eq!(value["layers"][1]["digest"], stored[1].stored.digest);
        assert_eq!(value["layers"][1]["size"], 4000);
        assert_eq!(value["config"]["digest"], spec.config_digest, "the config (the image ID) is kept");
        let oci =
            uncompressed_manifest(&spec.manifest, "application/vnd.oci.image.manifest.v1+json", &stored)
                .unwrap();
        let oci: serde_json::Value = serde_json::from_slice(&oci).unwrap();
        assert_eq!(oci["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar");
        assert!(matches!(
            uncompressed_manifest(&spec.manifest, &spec.manifest_media_type, &stored[..1]),
            Err(BuildError::Manifest(_))
        ));
        // A layer stored as served keeps its descriptor.
        let mixed = [spec.layers[0].clone(), gunzipped(b"TWO", 4000)];
        let value: serde_json::Value = serde_json::from_slice(
            &uncompressed_manifest(&spec.manifest, &spec.manifest_media_type, &mixed).unwrap(),
        )
        .unwrap();
        assert_eq!(value["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
        assert_eq!(value["layers"][0]["digest"], spec.layers[0].stored.digest);
        assert_eq!(value["layers"][1]["size"], 4000);
    }

    #[test]
    fn headers() {
        let h = header("blobs/sha256/x", b'0', 1000, 0o644);
        assert_eq!(&h[124..136], b"00000001750\0");
        let big = header("x", b'0', 10 << 30, 0o644);
        assert_eq!(big[124], 0x80);
        assert_eq!(u64::from_be_bytes(big[128..136].try_into().unwrap()), 10 << 30);
        // The scanner accepts both forms and their checksums.
        for h in [h, big] {
            let mut scanner = TarScanner::new(|_, _| false);
            scanner.update(&h).unwrap();
            assert_eq!(scanner.offset(), 512);
        }
        assert_eq!(padding(512).len(), 0);
        assert_eq!(padding(513).len(), 511);
    }
}

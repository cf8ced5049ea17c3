//! Whether a scanned tar is a complete Docker image archive.
//!
//! Two layouts exist and both carry `manifest.json` (a list of `{Config, RepoTags, Layers}`):
//! - classic (Docker ≤ 24): `<config-hex>.json`, `<layer-id>/layer.tar`, possibly symlinked;
//! - OCI (Docker 25+, containerd image store): `oci-layout`, `index.json` and
//!   `blobs/<algorithm>/<hex>`; `manifest.json` points into `blobs/`.
//!
//! An archive is complete when every file `manifest.json` references resolves to a regular file
//! and, for the OCI layout, every blob `index.json` references (and, for a single-platform image,
//! every blob of that manifest) is present with the size its descriptor states.
//!
//! The check also works out the IDs a daemon gives each image once it has loaded the archive: the
//! config digest on the classic image store; on the containerd image store the digest of the
//! manifest (or index) `index.json` lists for it, or, for a classic-layout archive, the digest of
//! the manifest the store makes of `manifest.json` while loading.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::format::tar::{EntryKind, TarListing};
use crate::platform::Platform;

/// Largest blob captured for inspection (manifests and configs are far smaller).
const SMALL_BLOB_MAX: u64 = 256 << 10;

/// Largest `manifest.json` or `index.json` read (one image's are a few KiB); a larger one makes the
/// archive damaged.
pub const TOP_FILE_MAX: u64 = 1 << 20;

/// Which small files the tar scanner keeps for the checks below (top-level `.json` files are the
/// image configs of the classic layout, read for their platform).
pub fn capture_filter(path: &str, size: u64) -> bool {
    (matches!(path, "manifest.json" | "index.json" | "oci-layout") && size <= TOP_FILE_MAX)
        || ((path.starts_with("blobs/") || (!path.contains('/') && path.ends_with(".json")))
            && !matches!(path, "manifest.json" | "index.json")
            && size <= SMALL_BLOB_MAX)
}

/// The captured content of `manifest.json` or `index.json`; `Ok(None)` if the archive has none,
/// an error if it has one too large to have been captured.
fn top_file<'a>(listing: &'a TarListing, path: &'static str) -> Result<Option<&'a [u8]>, LayoutError> {
    match (listing.captured(path), listing.entry(path)) {
        (Some(data), _) => Ok(Some(data)),
        (None, Some(EntryKind::File { size })) if *size > TOP_FILE_MAX => {
            Err(LayoutError::TooLarge { path, size: *size })
        }
        _ => Ok(None),
    }
}

fn is_hex64(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The export layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `docker save` of Docker ≤ 24.
    Classic,
    /// OCI image layout (Docker 25+).
    Oci,
}

/// One image listed in `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedImage {
    /// The image's config digest (its image ID on the classic store), e.g. `sha256:…`.
    pub config_digest: Option<String>,
    /// The tags `docker load` will apply.
    pub repo_tags: Vec<String>,
    /// Number of layers.
    pub layers: usize,
    /// The platform its config states (`os`, `architecture`, `variant`), if it says.
    pub platform: Option<Platform>,
    /// The IDs a daemon gives the image once it has loaded this archive (see the module notes),
    /// config digest first. An image the daemon holds under one of them is this image.
    pub loaded_ids: Vec<String>,
}

/// What a complete archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveContents {
    /// The layout the daemon exported.
    pub layout: Layout,
    /// The images in `manifest.json`.
    pub images: Vec<ArchivedImage>,
}

/// Why an archive is not a complete image archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no manifest.json")]
    NoManifest,
    #[error("{path} has {size} bytes, more than the {TOP_FILE_MAX} this tool reads")]
    TooLarge { path: &'static str, size: u64 },
    #[error("manifest.json is not valid: {0}")]
    BadManifest(String),
    #[error("manifest.json lists no image")]
    EmptyManifest,
    #[error("{path} (referenced by {by}) is missing or not a regular file")]
    Missing { path: String, by: &'static str, layer: Option<usize> },
    #[error("index.json is not valid: {0}")]
    BadIndex(String),
    #[error("blob {digest} (referenced by {by}) is missing")]
    MissingBlob { digest: String, by: String, layer: Option<usize> },
    #[error("blob {digest} has {actual} bytes, its descriptor says {expected}")]
    BlobSize { digest: String, expected: u64, actual: u64 },
}

/// Content an archive references but does not hold: an exporting daemon's copy of the image is
/// incomplete (see [`LayoutError::lacking`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lacking {
    /// The position, in its image's layer list, of the first layer missing; `None` when what is
    /// missing is not a layer.
    pub layer: Option<usize>,
}

impl LayoutError {
    /// Whether the archive lacks content it references (rather than being malformed), and which
    /// layer first.
    pub fn lacking(&self) -> Option<Lacking> {
        match self {
            LayoutError::Missing { layer, .. } | LayoutError::MissingBlob { layer, .. } => {
                Some(Lacking { layer: *layer })
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
    #[serde(rename = "mediaType", default)]
    media_type: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Checks a scanned archive, returning what it holds.
pub fn check(listing: &TarListing) -> Result<ArchiveContents, LayoutError> {
    let manifest = top_file(listing, "manifest.json")?.ok_or(LayoutError::NoManifest)?;
    let entries: Vec<ManifestEntry> =
        serde_json::from_slice(manifest).map_err(|e| LayoutError::BadManifest(e.to_string()))?;
    if entries.is_empty() {
        return Err(LayoutError::EmptyManifest);
    }

    let mut images = Vec::with_capacity(entries.len());
    let index = top_file(listing, "index.json")?;
    for entry in entries {
        // Layers first: a daemon whose copy of the image is incomplete lacks layers (and sometimes
        // the config too), and the first missing layer says which.
        let layers = entry.layers.iter().enumerate().map(|(i, path)| (path, Some(i)));
        for (path, layer) in layers.chain([(&entry.config, None)]) {
            if listing.resolve_file(path).is_none() {
                return Err(LayoutError::Missing { path: path.clone(), by: "manifest.json", layer });
            }
        }
        let config_digest = config_digest(&entry.config);
        let mut loaded_ids: Vec<String> = config_digest.iter().cloned().collect();
        if index.is_none()
            && let Some(converted) = converted_manifest_digest(listing, &entry)
        {
            loaded_ids.push(converted);
        }
        images.push(ArchivedImage {
            config_digest,
            repo_tags: entry.repo_tags.unwrap_or_default(),
            layers: entry.layers.len(),
            platform: listing.captured(&entry.config).and_then(config_platform),
            loaded_ids,
        });
    }

    let layout = match index {
        None => Layout::Classic,
        Some(index) => {
            check_oci(listing, index)?;
            for (config, id) in index_ids(listing, index) {
                for image in images.iter_mut().filter(|i| i.config_digest.as_deref() == Some(&config)) {
                    if !image.loaded_ids.contains(&id) {
                        image.loaded_ids.push(id.clone());
                    }
                }
            }
            Layout::Oci
        }
    };
    Ok(ArchiveContents { layout, images })
}

/// For each image manifest `index.json` leads to (directly, or through an image index held in
/// the archive): its config digest and the digest a containerd image store gives the loaded image
/// (the manifest's, or the index's).
fn index_ids(listing: &TarListing, index: &[u8]) -> Vec<(String, String)> {
    let parse = |bytes: &[u8]| serde_json::from_slice::<Index>(bytes).ok();
    let config_of = |digest: &str| {
        let blob = listing.captured(&blob_path(digest))?;
        serde_json::from_slice::<ImageManifest>(blob).ok().map(|m| m.config.digest)
    };
    let mut ids = Vec::new();
    for descriptor in parse(index).map(|i| i.manifests).unwrap_or_default() {
        if let Some(config) = config_of(&descriptor.digest) {
            ids.push((config, descriptor.digest.clone()));
        } else if let Some(inner) = listing.captured(&blob_path(&descriptor.digest)).and_then(parse) {
            for child in inner.manifests {
                if let Some(config) = config_of(&child.digest) {
                    ids.push((config, descriptor.digest.clone()));
                }
            }
        }
    }
    ids
}

/// The digest of the manifest a containerd image store (containerd's archive importer, as in
/// Docker 25 to 29) writes for a classic-layout image when loading it: a Docker schema 2 manifest
/// of the config and the uncompressed layers, the layer digests being the diff IDs. `None` when
/// the config is not at hand or does not match the layers. A store that writes another manifest
/// only makes `load` send an archive it already has.
fn converted_manifest_digest(listing: &TarListing, entry: &ManifestEntry) -> Option<String> {
    let config_digest = config_digest(&entry.config)?;
    let config_bytes = listing.captured(&entry.config)?;
    let config: ImageConfig = serde_json::from_slice(config_bytes).ok()?;
    if config.rootfs.diff_ids.len() != entry.layers.len() {
        return None;
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (path, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
        let size = listing.resolve_file(path)?;
        layers.push(format!(
            r#"{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","digest":"{diff_id}","size":{size}}}"#
        ));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config_bytes.len(),
        layers.join(",")
    );
    let hex: String = Sha256::digest(manifest.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("sha256:{hex}"))
}

fn check_oci(listing: &TarListing, index: &[u8]) -> Result<(), LayoutError> {
    let index: Index = serde_json::from_slice(index).map_err(|e| LayoutError::BadIndex(e.to_string()))?;
    if index.manifests.is_empty() {
        return Err(LayoutError::BadIndex("it lists no manifest".into()));
    }
    for descriptor in &index.manifests {
        check_blob(listing, descriptor, "index.json", None)?;
        // A single-platform image manifest must be whole. The manifests of an image index may
        // legitimately be absent for platforms the daemon does not hold; manifest.json covers the
        // exported platform.
        if descriptor.media_type.contains("index") || descriptor.media_type.contains("manifest.list") {
            continue;
        }
        let Some(blob) = listing.captured(&blob_path(&descriptor.digest)) else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<ImageManifest>(blob) else {
            continue;
        };
        let by = format!("manifest {}", descriptor.digest);
        let layers = manifest.layers.iter().enumerate().map(|(i, d)| (d, Some(i)));
        for (inner, layer) in layers.chain([(&manifest.config, None)]) {
            check_blob(listing, inner, &by, layer)?;
        }
    }
    Ok(())
}

fn check_blob(
    listing: &TarListing,
    descriptor: &Descriptor,
    by: &str,
    layer: Option<usize>,
) -> Result<(), LayoutError> {
    let missing = || LayoutError::MissingBlob { digest: descriptor.digest.clone(), by: by.to_owned(), layer };
    if !descriptor.digest.contains(':') {
        return Err(missing());
    }
    let actual = listing.resolve_file(&blob_path(&descriptor.digest)).ok_or_else(missing)?;
    if actual != descriptor.size {
        return Err(LayoutError::BlobSize {
            digest: descriptor.digest.clone(),
            expected: descriptor.size,
            actual,
        });
    }
    Ok(())
}

/// The platform fields of an image config.
#[derive(Deserialize)]
struct ConfigPlatform {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

/// The platform an image config states, if it is readable and says.
pub fn config_platform(config: &[u8]) -> Option<Platform> {
    let fields: ConfigPlatform = serde_json::from_slice(config).ok()?;
    Some(Platform::from_parts(&fields.os?, &fields.architecture?, fields.variant.as_deref()))
}

/// `sha256:abc` → `blobs/sha256/abc`.
fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// The config digest from its path: `<hex>.json` (classic) or `blobs/sha256/<hex>` (OCI).
fn config_digest(config_path: &str) -> Option<String> {
    if let Some(hex) = config_path.strip_prefix("blobs/sha256/") {
        return is_hex64(hex).then(|| format!("sha256:{hex}"));
    }
    let hex = config_path.strip_suffix(".json")?;
    is_hex64(hex).then(|| format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tar::TarScanner;
    use crate::format::tar::tests::TarBuilder;

    const CONFIG: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const LAYER: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const MANIFEST: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    fn scan(bytes: &[u8]) -> TarListing {
        let mut scanner = TarScanner::new(capture_filter);
        scanner.update(bytes).unwrap();
        scanner.finish().unwrap()
    }

    fn classic(with_layer: bool) -> Vec<u8> {
        let manifest = format!(
            r#"[{{"Config":"{CONFIG}.json","RepoTags":["app:1"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}}]"#
        );
        let mut b = TarBuilder::default();
        b.dir("aaa/").file("aaa/VERSION", b"1.0").file("aaa/json", b"{}");
        if with_layer {
            b.file("aaa/layer.tar", &[0; 1024]);
        }
        b.dir("bbb/").symlink("bbb/layer.tar", "../aaa/layer.tar");
        b.file(&format!("{CONFIG}.json"), br#"{"os":"linux","architecture":"arm64","variant":"v8"}"#)
            .file("manifest.json", manifest.as_bytes())
            .file("repositories", b"{}")
            .end()
    }

    fn oci(drop_layer: bool, layer_size_in_manifest: usize) -> Vec<u8> {
        let layer = vec![9u8; 3000];
        let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";
        let image_manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{CONFIG}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{LAYER}","size":{layer_size_in_manifest}}}]}}"#,
            config.len()
        );
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{MANIFEST}","size":{}}}]}}"#,
            image_manifest.len()
        );
        let docker_manifest = format!(
            r#"[{{"Config":"blobs/sha256/{CONFIG}","RepoTags":["app:1"],"Layers":["blobs/sha256/{LAYER}"]}}]"#
        );
        let mut b = TarBuilder::default();
        b.dir("blobs/").dir("blobs/sha256/");
        b.file(&format!("blobs/sha256/{CONFIG}"), config);
        if !drop_layer {
            b.file(&format!("blobs/sha256/{LAYER}"), &layer);
        }
        b.file(&format!("blobs/sha256/{MANIFEST}"), image_manifest.as_bytes())
            .file("index.json", index.as_bytes())
            .file("manifest.json", docker_manifest.as_bytes())
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .end()
    }

    #[test]
    fn classic_archive_is_complete() {
        let contents = check(&scan(&classic(true))).unwrap();
        assert_eq!(contents.layout, Layout::Classic);
        assert_eq!(
            contents.images,
            vec![ArchivedImage {
                config_digest: Some(format!("sha256:{CONFIG}")),
                repo_tags: vec!["app:1".into()],
                layers: 2,
                platform: Some(Platform::parse("linux/arm64").unwrap()),
                // The config here holds no diff IDs: no converted manifest to predict.
                loaded_ids: vec![format!("sha256:{CONFIG}")],
            }]
        );
    }

    #[test]
    fn classic_archive_missing_a_layer_is_refused() {
        let err = check(&scan(&classic(false))).unwrap_err();
        assert_eq!(
            err,
            LayoutError::Missing { path: "aaa/layer.tar".into(), by: "manifest.json", layer: Some(0) }
        );
        assert_eq!(err.lacking(), Some(Lacking { layer: Some(0) }));
    }

    #[test]
    fn oci_archive_is_complete() {
        let contents = check(&scan(&oci(false, 3000))).unwrap();
        assert_eq!(contents.layout, Layout::Oci);
        assert_eq!(contents.images[0].config_digest, Some(format!("sha256:{CONFIG}")));
        assert_eq!(contents.images[0].platform, Some(Platform::parse("linux/amd64").unwrap()));
        assert_eq!(
            contents.images[0].loaded_ids,
            [format!("sha256:{CONFIG}"), format!("sha256:{MANIFEST}")],
            "the config digest (classic store) and the manifest digest (containerd store)"
        );
    }

    #[test]
    fn oci_archive_missing_a_shared_blob_is_refused() {
        let err = check(&scan(&oci(true, 3000))).unwrap_err();
        assert!(matches!(err, LayoutError::Missing { ref path, .. } if path.ends_with(LAYER)), "{err}");
        assert_eq!(err.lacking(), Some(Lacking { layer: Some(0) }));
    }

    #[test]
    fn oci_blob_of_the_wrong_size_is_refused() {
        let err = check(&scan(&oci(false, 2999))).unwrap_err();
        assert_eq!(
            err,
            LayoutError::BlobSize { digest: format!("sha256:{LAYER}"), expected: 2999, actual: 3000 }
        );
    }

    #[test]
    fn oci_index_pointing_at_a_missing_manifest_is_refused() {
        let index = format!(r#"{{"manifests":[{{"digest":"sha256:{MANIFEST}","size":10}}]}}"#);
        let manifest = format!(r#"[{{"Config":"blobs/sha256/{CONFIG}","Layers":[]}}]"#);
        let bytes = TarBuilder::default()
            .file(&format!("blobs/sha256/{CONFIG}"), b"{}")
            .file("index.json", index.as_bytes())
            .file("manifest.json", manifest.as_bytes())
            .end();
        let err = check(&scan(&bytes)).unwrap_err();
        assert!(matches!(err, LayoutError::MissingBlob { .. }), "{err}");
        assert_eq!(err.lacking(), Some(Lacking { layer: None }));
    }

    #[test]
    fn manifest_problems() {
        let no_manifest = TarBuilder::default().file("a", b"x").end();
        assert_eq!(check(&scan(&no_manifest)).unwrap_err(), LayoutError::NoManifest);
        let empty = TarBuilder::default().file("manifest.json", b"[]").end();
        assert_eq!(check(&scan(&empty)).unwrap_err(), LayoutError::EmptyManifest);
        let garbage = TarBuilder::default().file("manifest.json", b"{not json").end();
        assert!(matches!(check(&scan(&garbage)).unwrap_err(), LayoutError::BadManifest(_)));
        let huge = vec![b' '; TOP_FILE_MAX as usize + 1];
        let oversized = TarBuilder::default().file("manifest.json", &huge).end();
        let err = check(&scan(&oversized)).unwrap_err();
        assert_eq!(err, LayoutError::TooLarge { path: "manifest.json", size: TOP_FILE_MAX + 1 });
        assert!(err.to_string().starts_with("manifest.json has 1048577 bytes"), "{err}");
        assert_eq!(LayoutError::EmptyManifest.lacking(), None);
    }

    /// A classic archive's image, loaded into Docker 26.1.5's containerd image store, got the ID
    /// of the manifest the store wrote for it: the same digest, predicted from the archive.
    #[test]
    fn the_containerd_store_id_of_a_classic_archive_is_predicted() {
        const CONFIG_HEX: &str = "136ed7dd6164c9b9481f55008e6cbe23e300b27926e8a0ba74139cb7b4a39b4e";
        const DIFF_ID: &str = "sha256:032ff7ce9eb5e132b2c53676597b2231c67df9908a060b20594d4afcf3fedb64";
        // The image's own config was 633 bytes; its diff IDs are what matters here, so a config of
        // that size holding them stands in.
        let mut config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{DIFF_ID}"]}}}}"#);
        config.push_str(&" ".repeat(633 - config.len()));
        let manifest =
            format!(r#"[{{"Config":"{CONFIG_HEX}.json","RepoTags":["a:1"],"Layers":["l/layer.tar"]}}]"#);
        let bytes = TarBuilder::default()
            .file("l/layer.tar", &vec![0; 1984512])
            .file(&format!("{CONFIG_HEX}.json"), config.as_bytes())
            .file("manifest.json", manifest.as_bytes())
            .end();
        let contents = check(&scan(&bytes)).unwrap();
        assert_eq!(
            contents.images[0].loaded_ids,
            [
                format!("sha256:{CONFIG_HEX}"),
                "sha256:a4e98f7d61360f61b8b6de3016273ececc19aaca03f82205f221d29302e6f4dc".to_owned()
            ]
        );
    }

    #[test]
    fn an_index_in_the_archive_gives_its_own_digest() {
        const INDEX: &str = "4444444444444444444444444444444444444444444444444444444444444444";
        let image_manifest = format!(
            r#"{{"config":{{"digest":"sha256:{CONFIG}","size":2}},"layers":[{{"digest":"sha256:{LAYER}","size":3}}]}}"#
        );
        let inner = format!(
            r#"{{"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{MANIFEST}","size":{}}}]}}"#,
            image_manifest.len()
        );
        let index = format!(
            r#"{{"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:{INDEX}","size":{}}}]}}"#,
            inner.len()
        );
        let docker_manifest = format!(
            r#"[{{"Config":"blobs/sha256/{CONFIG}","RepoTags":["app:1"],"Layers":["blobs/sha256/{LAYER}"]}}]"#
        );
        let bytes = TarBuilder::default()
            .file(&format!("blobs/sha256/{CONFIG}"), b"{}")
            .file(&format!("blobs/sha256/{LAYER}"), b"abc")
            .file(&format!("blobs/sha256/{MANIFEST}"), image_manifest.as_bytes())
            .file(&format!("blobs/sha256/{INDEX}"), inner.as_bytes())
            .file("index.json", index.as_bytes())
            .file("manifest.json", docker_manifest.as_bytes())
            .end();
        let contents = check(&scan(&bytes)).unwrap();
        assert_eq!(contents.images[0].loaded_ids, [format!("sha256:{CONFIG}"), format!("sha256:{INDEX}")]);
    }
}

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

use serde::Deserialize;

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
    Missing { path: String, by: &'static str },
    #[error("index.json is not valid: {0}")]
    BadIndex(String),
    #[error("blob {digest} (referenced by {by}) is missing")]
    MissingBlob { digest: String, by: String },
    #[error("blob {digest} has {actual} bytes, its descriptor says {expected}")]
    BlobSize { digest: String, expected: u64, actual: u64 },
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

/// Checks a scanned archive, returning what it holds.
pub fn check(listing: &TarListing) -> Result<ArchiveContents, LayoutError> {
    let manifest = top_file(listing, "manifest.json")?.ok_or(LayoutError::NoManifest)?;
    let entries: Vec<ManifestEntry> =
        serde_json::from_slice(manifest).map_err(|e| LayoutError::BadManifest(e.to_string()))?;
    if entries.is_empty() {
        return Err(LayoutError::EmptyManifest);
    }

    let mut images = Vec::with_capacity(entries.len());
    for entry in entries {
        for path in std::iter::once(&entry.config).chain(&entry.layers) {
            if listing.resolve_file(path).is_none() {
                return Err(LayoutError::Missing { path: path.clone(), by: "manifest.json" });
            }
        }
        images.push(ArchivedImage {
            config_digest: config_digest(&entry.config),
            repo_tags: entry.repo_tags.unwrap_or_default(),
            layers: entry.layers.len(),
            platform: listing.captured(&entry.config).and_then(config_platform),
        });
    }

    let layout = match top_file(listing, "index.json")? {
        None => Layout::Classic,
        Some(index) => {
            check_oci(listing, index)?;
            Layout::Oci
        }
    };
    Ok(ArchiveContents { layout, images })
}

fn check_oci(listing: &TarListing, index: &[u8]) -> Result<(), LayoutError> {
    let index: Index = serde_json::from_slice(index).map_err(|e| LayoutError::BadIndex(e.to_string()))?;
    if index.manifests.is_empty() {
        return Err(LayoutError::BadIndex("it lists no manifest".into()));
    }
    for descriptor in &index.manifests {
        check_blob(listing, descriptor, "index.json")?;
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
        for inner in std::iter::once(&manifest.config).chain(&manifest.layers) {
            check_blob(listing, inner, &by)?;
        }
    }
    Ok(())
}

fn check_blob(listing: &TarListing, descriptor: &Descriptor, by: &str) -> Result<(), LayoutError> {
    let missing = || LayoutError::MissingBlob { digest: descriptor.digest.clone(), by: by.to_owned() };
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
    let hex_ok = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(hex) = config_path.strip_prefix("blobs/sha256/") {
        return hex_ok(hex).then(|| format!("sha256:{hex}"));
    }
    let hex = config_path.strip_suffix(".json")?;
    hex_ok(hex).then(|| format!("sha256:{hex}"))
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
            }]
        );
    }

    #[test]
    fn classic_archive_missing_a_layer_is_refused() {
        let err = check(&scan(&classic(false))).unwrap_err();
        assert_eq!(err, LayoutError::Missing { path: "aaa/layer.tar".into(), by: "manifest.json" });
    }

    #[test]
    fn oci_archive_is_complete() {
        let contents = check(&scan(&oci(false, 3000))).unwrap();
        assert_eq!(contents.layout, Layout::Oci);
        assert_eq!(contents.images[0].config_digest, Some(format!("sha256:{CONFIG}")));
        assert_eq!(contents.images[0].platform, Some(Platform::parse("linux/amd64").unwrap()));
    }

    #[test]
    fn oci_archive_missing_a_shared_blob_is_refused() {
        let err = check(&scan(&oci(true, 3000))).unwrap_err();
        assert!(matches!(err, LayoutError::Missing { ref path, .. } if path.ends_with(LAYER)), "{err}");
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
    }
}

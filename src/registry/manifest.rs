//! Registry manifests: Docker v2 schema 2 and OCI image manifests, manifest lists and OCI indexes,
//! and choosing a platform's manifest from a list. Pure parsing, no I/O.

use serde::Deserialize;

use crate::platform::Platform;

/// Docker v2 schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// What a manifest request accepts, most specific first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// Largest manifest accepted (registries cap them at 4 MiB).
pub const MANIFEST_MAX: usize = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// For index entries: the platform.
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
    /// Alternative locations of a foreign layer.
    #[serde(default)]
    pub urls: Vec<String>,
}

/// The platform of an index entry or a config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct PlatformSpec {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

/// The platform of the machine this binary runs on (Linux; Go's architecture names): registry
/// mode's default.
pub fn host_platform() -> Platform {
    Platform::from_parts("linux", std::env::consts::ARCH, None)
}

/// Whether an index entry's platform is `wanted`: the same normalised platform, or the same OS and
/// architecture when `wanted` names no variant.
pub fn matches(wanted: &Platform, spec: &PlatformSpec) -> bool {
    let entry = Platform::from_parts(&spec.os, &spec.architecture, spec.variant.as_deref());
    entry == *wanted
        || (wanted.variant().is_none()
            && entry.os() == wanted.os()
            && entry.architecture() == wanted.architecture())
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image.
    Image(ImageManifest),
    /// A manifest list or OCI index.
    Index(Vec<Descriptor>),
}

/// A single-platform image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageManifest {
    /// The config blob.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Why a manifest is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON: {0}")]
    Json(String),
    #[error("schema 1 manifests are not supported (the registry or image is too old); use --mode daemon")]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("the image has no manifest for platform {wanted} (it has: {available})")]
    NoPlatform { wanted: String, available: String },
}

/// Parses a manifest body; `content_type` is the response's Content-Type, used when the body
/// does not name its media type.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<(Manifest, String), ManifestError> {
    let probe: Probe = serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    if probe.schema_version == 1 {
        return Err(ManifestError::Schema1);
    }
    let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
    let media_type = probe.media_type.clone().or(header.filter(|h| h.starts_with("application/vnd.")));
    let media_type = match media_type {
        Some(m) => m,
        // OCI allows omitting mediaType: tell by shape.
        None if probe.manifests.is_some() => OCI_INDEX.to_owned(),
        None => OCI_MANIFEST.to_owned(),
    };
    match media_type.as_str() {
        DOCKER_LIST | OCI_INDEX => Ok((Manifest::Index(probe.manifests.unwrap_or_default()), media_type)),
        DOCKER_MANIFEST | OCI_MANIFEST => {
            let config = probe.config.ok_or_else(|| ManifestError::Json("no config descriptor".into()))?;
            Ok((
                Manifest::Image(ImageManifest { config, layers: probe.layers.unwrap_or_default() }),
                media_type,
            ))
        }
        "application/vnd.docker.distribution.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => Err(ManifestError::Schema1),
        other => Err(ManifestError::MediaType(other.to_owned())),
    }
}

/// The entry of `index` for `wanted`: the first image manifest whose platform matches.
pub fn select<'a>(index: &'a [Descriptor], wanted: &Platform) -> Result<&'a Descriptor, ManifestError> {
    index
        .iter()
        .filter(|d| d.media_type != "application/vnd.in-toto+json")
        .find(|d| d.platform.as_ref().is_some_and(|p| matches(wanted, p)))
        .ok_or_else(|| ManifestError::NoPlatform {
            wanted: wanted.to_string(),
            available: {
                let list: Vec<String> = index
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect();
                if list.is_empty() { "none".into() } else { list.join(", ") }
            },
        })
}

/// What a layer's media type means for an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// gzip or uncompressed tar: every `docker load` reads it.
    Tar,
    /// zstd: `docker load` reads it from Docker 23.0 on.
    Zstd,
    /// A foreign or non-distributable layer (Windows base layers): often not served by the registry.
    Foreign,
    /// Something that is not a layer tar (an artifact).
    Unknown,
}

/// Classifies a layer media type.
pub fn layer_kind(media_type: &str) -> LayerKind {
    if media_type.contains("foreign") || media_type.contains("nondistributable") {
        LayerKind::Foreign
    } else if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
        LayerKind::Zstd
    } else if media_type.contains("rootfs.diff.tar")
        || media_type.starts_with("application/vnd.oci.image.layer.v1.tar")
        || media_type.is_empty()
    {
        LayerKind::Tar
    } else {
        LayerKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn index() -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"sha256:a","size":2,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"sha256:b","size":3,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn platform_selection() {
        let (Manifest::Index(list), media) = parse(&index(), None).unwrap() else { panic!() };
        assert_eq!(media, DOCKER_LIST);
        let pick = |p: &str| select(&list, &Platform::parse(p).unwrap()).map(|d| d.size);
        assert_eq!(pick("linux/amd64"), Ok(1));
        assert_eq!(pick("linux/arm64"), Ok(2));
        assert_eq!(pick("linux/arm64/v8"), Ok(2));
        assert_eq!(pick("linux/arm/v7"), Ok(3));
        let err = pick("linux/s390x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the image has no manifest for platform linux/s390x (it has: linux/amd64, linux/arm64/v8, linux/arm/v7)"
        );
    }

    #[test]
    fn image_manifests() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":5}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":7}}]}}"#
        );
        let (Manifest::Image(m), media) =
            parse(body.as_bytes(), Some("application/vnd.oci.image.manifest.v1+json")).unwrap()
        else {
            panic!()
        };
        assert_eq!(media, OCI_MANIFEST);
        assert_eq!((m.config.size, m.layers.len(), m.layers[0].size), (5, 1, 7));
        assert_eq!(parse(br#"{"schemaVersion":1}"#, None).unwrap_err(), ManifestError::Schema1);
        assert!(matches!(parse(b"nope", None), Err(ManifestError::Json(_))));
        let weird = r#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert!(matches!(parse(weird.as_bytes(), None), Err(ManifestError::MediaType(_))));
    }

    #[test]
    fn layer_kinds() {
        assert_eq!(layer_kind("application/vnd.docker.image.rootfs.diff.tar.gzip"), LayerKind::Tar);
        assert_eq!(layer_kind("application/vnd.oci.image.layer.v1.tar"), LayerKind::Tar);
        assert_eq!(layer_kind("application/vnd.oci.image.layer.v1.tar+gzip"), LayerKind::Tar);
        assert_eq!(layer_kind("application/vnd.oci.image.layer.v1.tar+zstd"), LayerKind::Zstd);
        assert_eq!(
            layer_kind("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            LayerKind::Foreign
        );
        assert_eq!(
            layer_kind("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            LayerKind::Foreign
        );
        assert_eq!(layer_kind("application/vnd.cncf.helm.chart.content.v1.tar+gzip"), LayerKind::Unknown);
    }

    #[test]
    fn host_platform_is_linux() {
        assert_eq!(host_platform().os(), "linux");
        assert!(!host_platform().architecture().is_empty());
    }
}

//! A small OCI distribution client on reqwest: token and basic auth, manifests (resolved for a
//! platform), manifest digests by HEAD, and blobs streamed with their digest checked on the fly,
//! retried with backoff and resumed with range requests after a dropped connection. Mirrors are
//! tried first, in order, with fallback to the upstream registry, as dockerd does.
//!
//! TLS is rustls with the webpki roots compiled in (the container image has no CA store), plus the
//! certificates of `--ca-file`. Hosts listed as insecure, and loopback registries (as dockerd treats
//! 127.0.0.0/8), are spoken to over plain HTTP.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::credentials::Credentials;
use super::host::RegistryHost;
use super::manifest::{self, ImageManifest, MANIFEST_MAX, Manifest};
use super::retry::{self, RetryPolicy};
use crate::image::reference::Reference;
use crate::platform::Platform;

/// Docker Hub's canonical name and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Largest config blob accepted in memory.
const CONFIG_MAX: u64 = 16 << 20;

/// Finds the credentials for a registry host (`docker.io` for Docker Hub).
pub type CredentialLookup = Arc<dyn Fn(&str) -> Option<Credentials> + Send + Sync>;

/// How the client reaches registries.
#[derive(Clone)]
pub struct ClientOptions {
    /// Registry hosts (`host[:port]`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra PEM CA certificates trusted besides the bundled roots.
    pub ca_file: Option<PathBuf>,
    /// Mirror base URLs per registry host (`docker.io` for Docker Hub), tried in order before it.
    pub mirrors: HashMap<String, Vec<String>>,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
    /// Where credentials come from.
    pub credentials: CredentialLookup,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: Vec::new(),
            ca_file: None,
            mirrors: HashMap::new(),
            retry: RetryPolicy::default(),
            credentials: Arc::new(|_| None),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("insecure", &self.insecure)
            .field("ca_file", &self.ca_file)
            .field("mirrors", &self.mirrors)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The kind of a registry failure, for backoff, messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Credentials missing or refused.
    Auth,
    /// The repository, tag, manifest or blob does not exist.
    NotFound,
    /// The registry is unreachable, overloaded or failing: worth trying again later.
    Transient,
    /// Anything else (bad content, unsupported image, configuration).
    Other,
}

/// A registry failure, naming the registry and what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry} refused access to {what} ({detail}); {}", if *.had_credentials { "the credentials found for it were refused" } else { "no credentials were found for it" })]
    Auth { registry: String, what: String, had_credentials: bool, detail: String },
    #[error("{what} not found at {registry}")]
    NotFound { registry: String, what: String },
    #[error("{registry} is unavailable for {what}: {detail}")]
    Unavailable { registry: String, what: String, detail: String },
    #[error("{registry} served wrong content for {what}: {detail}")]
    Integrity { registry: String, what: String, detail: String },
    #[error("{registry}: {what}: {detail}")]
    Protocol { registry: String, what: String, detail: String },
    #[error("registry client setup: {0}")]
    Setup(String),
}

impl RegistryError {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Auth { .. } => ErrorKind::Auth,
            RegistryError::NotFound { .. } => ErrorKind::NotFound,
            RegistryError::Unavailable { .. } => ErrorKind::Transient,
            RegistryError::Integrity { .. } | RegistryError::Protocol { .. } | RegistryError::Setup(_) => {
                ErrorKind::Other
            }
        }
    }
}

/// An image in a registry: where to ask and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The registry host (`docker.io` for Docker Hub), the key for credentials and mirrors.
    pub registry: String,
    /// The repository path as the API wants it (`library/nginx`).
    pub repository: String,
    /// Tag or digest.
    pub reference: String,
}

impl Target {
    /// Where `image` lives.
    pub fn of(image: &Reference) -> Target {
        let registry = RegistryHost::of(image).as_str().to_owned();
        let mut repository = image.path().join("/");
        if registry == DOCKER_HUB && image.path().len() == 1 {
            repository = format!("library/{repository}");
        }
        Target { registry, repository, reference: image.pull_tag() }
    }
}

/// A base URL requests go to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `scheme://host[:port][/prefix]`, no trailing slash.
    base: String,
    /// The host for credentials: the registry's own, or the mirror's.
    host: String,
    mirror: bool,
}

/// An image manifest resolved for a platform, with its config.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The digest the reference points to (the index's, for a multi-platform image): what a manifest
    /// HEAD returns and what `docker pull` reports.
    pub digest: String,
    /// The single-platform manifest, byte for byte.
    pub manifest: Bytes,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub manifest_digest: String,
    /// Its parsed content.
    pub image: ImageManifest,
    /// The config blob, checked against its digest.
    pub config: Bytes,
}

#[derive(Debug, Clone)]
enum Auth {
    Bearer(String),
    Basic,
}

struct Inner {
    http: reqwest::Client,
    options: ClientOptions,
    /// Authorization per (endpoint base, repository).
    auth: Mutex<HashMap<(String, String), Auth>>,
}

/// A registry client; cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

/// The certificates of a PEM CA file (`--ca-file`); an error names the file.
pub fn load_ca(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, RegistryError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |e: &dyn fmt::Display| RegistryError::Setup(format!("--ca-file {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The TLS configuration: ring, the bundled webpki roots and the certificates of `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, RegistryError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in load_ca(path)? {
            roots
                .add(cert)
                .map_err(|e| RegistryError::Setup(format!("--ca-file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether a host is a loopback address, which dockerd treats as insecure by default.
fn is_loopback(host: &str) -> bool {
    let name = host
        .rsplit_once(':')
        .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host });
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

impl RegistryClient {
    /// A client with these options. Fails on an unreadable `--ca-file`.
    pub fn new(options: ClientOptions) -> Result<RegistryClient, RegistryError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(options.ca_file.as_deref())?)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("image-preloader/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Setup(e.to_string()))?;
        Ok(RegistryClient { inner: Arc::new(Inner { http, options, auth: Mutex::new(HashMap::new()) }) })
    }

    /// Mirrors first, then the registry itself.
    fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .inner
            .options
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
            .map(|url| {
                let base = url.trim_end_matches('/').to_owned();
                let host = base.split_once("://").map_or(base.as_str(), |(_, rest)| rest);
                let host = host.split('/').next().unwrap_or(host).to_owned();
                Endpoint { base, host, mirror: true }
            })
            .collect();
        let api = if registry == DOCKER_HUB { DOCKER_HUB_API } else { registry };
        let insecure = self.inner.options.insecure.iter().any(|h| h == registry) || is_loopback(registry);
        let scheme = if insecure { "http" } else { "https" };
        out.push(Endpoint { base: format!("{scheme}://{api}"), host: registry.to_owned(), mirror: false });
        out
    }

    /// The digest `target` points to now: a manifest HEAD (a GET if the registry sends no digest).
    pub async fn head_digest(&self, target: &Target) -> Result<String, RegistryError> {
        let what = format!("manifest {}:{}", target.repository, target.reference);
        self.each_endpoint(target, &what, |ep| {
            let what = what.clone();
            async move {
                let path = format!("/v2/{}/manifests/{}", target.repository, target.reference);
                let response = self
                    .request(&ep, target, &what, Method::HEAD, &path, &[(ACCEPT, manifest::ACCEPT)])
                    .await?;
                match header(response.headers(), "docker-content-digest") {
                    Some(digest) => Ok(digest),
                    None => {
                        let (body, _, digest) = self.get_manifest(&ep, target, &target.reference).await?;
                        drop(body);
                        Ok(digest)
                    }
                }
            }
        })
        .await
    }

    /// Resolves `target` to the image manifest for `wanted` and fetches its config.
    pub async fn resolve(&self, target: &Target, wanted: &Platform) -> Result<Resolved, RegistryError> {
        let what = format!("manifest {}:{}", target.repository, target.reference);
        self.each_endpoint(target, &what, |ep| async move {
            let (body, media_type, digest) = self.get_manifest(&ep, target, &target.reference).await?;
            let protocol = |detail: String| RegistryError::Protocol {
                registry: target.registry.clone(),
                what: format!("{}@{digest}", target.repository),
                detail,
            };
            let (parsed, media_type) =
                manifest::parse(&body, Some(&media_type)).map_err(|e| protocol(e.to_string()))?;
            let (manifest, media_type, manifest_digest, image) = match parsed {
                Manifest::Image(image) => (body, media_type, digest.clone(), image),
                Manifest::Index(list) => {
                    let chosen = manifest::select(&list, wanted).map_err(|e| protocol(e.to_string()))?;
                    let (body, media_type, child) = self.get_manifest(&ep, target, &chosen.digest).await?;
                    match manifest::parse(&body, Some(&media_type)).map_err(|e| protocol(e.to_string()))? {
                        (Manifest::Image(image), media_type) => (body, media_type, child, image),
                        (Manifest::Index(_), _) => return Err(protocol("an index inside an index".into())),
                    }
                }
            };
            if image.config.size > CONFIG_MAX {
                return Err(protocol(format!("config of {} bytes is too large", image.config.size)));
            }
            let config = self.blob_bytes(&ep, target, &image.config.digest, image.config.size).await?;
            Ok(Resolved { digest, manifest, media_type, manifest_digest, image, config })
        })
        .await
    }

    /// Runs `op` against each endpoint in turn until one succeeds; a mirror's failure is logged and
    /// the next endpoint tried, the last endpoint's error is returned.
    async fn each_endpoint<'a, T, F, Fut>(
        &'a self,
        target: &'a Target,
        what: &str,
        op: F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>> + 'a,
    {
        let endpoints = self.endpoints(&target.registry);
        let last = endpoints.len() - 1;
        for (i, ep) in endpoints.into_iter().enumerate() {
            let mirror = ep.mirror.then(|| ep.base.clone());
            match op(ep).await {
                Ok(value) => return Ok(value),
                Err(e) if i < last => {
                    warn!(
                        mirror = mirror.as_deref().unwrap_or(""),
                        "mirror failed for {what}, trying the next: {e}"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("every registry has at least its own endpoint")
    }

    /// GETs a manifest by tag or digest: body, media type, and its checked digest.
    async fn get_manifest(
        &self,
        ep: &Endpoint,
        target: &Target,
        reference: &str,
    ) -> Result<(Bytes, String, String), RegistryError> {
        let what = format!("manifest {}:{reference}", target.repository);
        let path = format!("/v2/{}/manifests/{reference}", target.repository);
        let integrity = |detail: String| RegistryError::Integrity {
            registry: target.registry.clone(),
            what: what.clone(),
            detail,
        };
        let mut attempt = 1;
        loop {
            let response =
                self.request(ep, target, &what, Method::GET, &path, &[(ACCEPT, manifest::ACCEPT)]).await?;
            let media_type = header(response.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
            let announced = header(response.headers(), "docker-content-digest");
            match read_limited(response, MANIFEST_MAX).await {
                Ok(body) => {
                    let digest = format!("sha256:{}", hex(&Sha256::digest(&body)));
                    let expected = reference.contains(':').then(|| reference.to_owned());
                    for claimed in expected.iter().chain(announced.iter()) {
                        if claimed.starts_with("sha256:") && *claimed != digest {
                            return Err(integrity(format!("expected {claimed}, the content has {digest}")));
                        }
                    }
                    return Ok((body, media_type, digest));
                }
                Err(detail) => {
                    attempt += 1;
                    let Some(wait) = self.inner.options.retry.wait(attempt, None) else {
                        return Err(self.unavailable(target, &what, detail));
                    };
                    debug!("reading {what} failed ({detail}); retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A small blob, whole, checked against its digest.
    async fn blob_bytes(
        &self,
        ep: &Endpoint,
        target: &Target,
        digest: &str,
        size: u64,
    ) -> Result<Bytes, RegistryError> {
        let mut stream = self.blob_from(vec![ep.clone()], target.clone(), digest.to_owned(), size);
        let mut out = BytesMut::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    /// Streams a blob of `size` bytes from the registry (mirrors first). The digest is computed as
    /// the bytes pass; a wrong size or digest ends the stream with an [`RegistryError::Integrity`]
    /// error after the last byte, so a consumer that publishes only on a clean end never publishes
    /// wrong content. Dropped connections and 429/5xx answers are retried with backoff, resuming
    /// with a range request (or skipping what was already received if the registry ignores it).
    pub fn blob(
        &self,
        target: &Target,
        digest: &str,
        size: u64,
    ) -> BoxStream<'static, Result<Bytes, RegistryError>> {
        self.blob_from(self.endpoints(&target.registry), target.clone(), digest.to_owned(), size)
    }

    /// The last `n` bytes of a blob of `size` bytes (a range request; mirrors first, retried like
    /// [`Self::blob`]). Not checked against the digest: a caller uses them only to plan, and
    /// checks what it planned against the whole blob when it streams it.
    pub async fn blob_tail(
        &self,
        target: &Target,
        digest: &str,
        size: u64,
        n: u64,
    ) -> Result<Bytes, RegistryError> {
        let mut stream = self.blob_range_from(
            self.endpoints(&target.registry),
            target.clone(),
            digest.to_owned(),
            size,
            size.saturating_sub(n),
        );
        let mut out = BytesMut::with_capacity(n.min(size) as usize);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    fn blob_from(
        &self,
        endpoints: Vec<Endpoint>,
        target: Target,
        digest: String,
        size: u64,
    ) -> BoxStream<'static, Result<Bytes, RegistryError>> {
        self.blob_range_from(endpoints, target, digest, size, 0)
    }

    /// Bytes `start..size` of a blob; only a whole blob (`start` 0) is checked against its digest.
    fn blob_range_from(
        &self,
        endpoints: Vec<Endpoint>,
        target: Target,
        digest: String,
        size: u64,
        start: u64,
    ) -> BoxStream<'static, Result<Bytes, RegistryError>> {
        let state = BlobState {
            client: self.clone(),
            what: format!("blob {digest} of {}", target.repository),
            endpoints,
            current: 0,
            target,
            digest,
            size,
            received: start,
            whole: start == 0,
            skip: 0,
            hasher: Sha256::new(),
            body: None,
            attempt: 1,
            done: false,
        };
        futures_util::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            let item = state.next().await;
            match item {
                Some(Ok(chunk)) => Some((Ok(chunk), state)),
                Some(Err(e)) => {
                    state.done = true;
                    Some((Err(e), state))
                }
                None => None,
            }
        })
        .boxed()
    }

    fn unavailable(&self, target: &Target, what: &str, detail: String) -> RegistryError {
        RegistryError::Unavailable { registry: target.registry.clone(), what: what.to_owned(), detail }
    }

    /// Sends one request with authorization, retrying 429/5xx and connection failures. Returns a
    /// successful (2xx) response; other statuses become errors of their kind.
    async fn request(
        &self,
        ep: &Endpoint,
        target: &Target,
        what: &str,
        method: Method,
        path: &str,
        headers: &[(reqwest::header::HeaderName, &str)],
    ) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}{path}", ep.base);
        let key = (ep.base.clone(), target.repository.clone());
        let mut attempt = 1;
        let mut authorized_after_challenge = false;
        loop {
            let mut request = self.inner.http.request(method.clone(), &url);
            for (name, value) in headers {
                request = request.header(name, *value);
            }
            let auth = self.inner.auth.lock().expect("auth cache").get(&key).cloned();
            match auth {
                Some(Auth::Bearer(token)) => request = request.bearer_auth(token),
                Some(Auth::Basic) => {
                    if let Some(credentials) = (self.inner.options.credentials)(&ep.host)
                        && let Some((username, password)) = credentials.basic()
                    {
                        request = request.basic_auth(username, Some(password));
                    }
                }
                None => {}
            }
            let failure = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    if status == StatusCode::UNAUTHORIZED && !authorized_after_challenge {
                        let challenge = header(response.headers(), WWW_AUTHENTICATE.as_str());
                        self.authorize(ep, target, what, challenge.as_deref()).await?;
                        authorized_after_challenge = true;
                        continue;
                    }
                    let retry_after = header(response.headers(), RETRY_AFTER.as_str())
                        .and_then(|v| retry::parse_retry_after(&v));
                    let detail = error_detail(response).await;
                    let registry = target.registry.clone();
                    match status.as_u16() {
                        401 | 403 => {
                            return Err(RegistryError::Auth {
                                registry: ep_label(ep, &registry),
                                what: what.to_owned(),
                                had_credentials: (self.inner.options.credentials)(&ep.host).is_some(),
                                detail: format!("HTTP {status}: {detail}"),
                            });
                        }
                        404 => {
                            return Err(RegistryError::NotFound {
                                registry: ep_label(ep, &registry),
                                what: what.to_owned(),
                            });
                        }
                        s if retry::retriable_status(s) => (format!("HTTP {status}: {detail}"), retry_after),
                        _ => {
                            return Err(RegistryError::Protocol {
                                registry: ep_label(ep, &registry),
                                what: what.to_owned(),
                                detail: format!("HTTP {status}: {detail}"),
                            });
                        }
                    }
                }
                Err(e) => (describe(&e), None),
            };
            attempt += 1;
            let Some(wait) = self.inner.options.retry.wait(attempt, failure.1) else {
                return Err(RegistryError::Unavailable {
                    registry: ep_label(ep, &target.registry),
                    what: what.to_owned(),
                    detail: format!("{} (after {} attempts)", failure.0, attempt - 1),
                });
            };
            debug!(url = %url, "{what}: {}; retrying in {wait:?}", failure.0);
            tokio::time::sleep(wait).await;
        }
    }

    /// Answers a 401 challenge: a bearer token from the realm (with the credentials, if any) or
    /// basic auth.
    async fn authorize(
        &self,
        ep: &Endpoint,
        target: &Target,
        what: &str,
        challenge: Option<&str>,
    ) -> Result<(), RegistryError> {
        let key = (ep.base.clone(), target.repository.clone());
        let credentials = (self.inner.options.credentials)(&ep.host);
        let refused = |detail: String| RegistryError::Auth {
            registry: ep_label(ep, &target.registry),
            what: what.to_owned(),
            had_credentials: credentials.is_some(),
            detail,
        };
        let Some(challenge) = challenge else {
            return Err(refused("HTTP 401 without a WWW-Authenticate challenge".into()));
        };
        let (scheme, params) = parse_challenge(challenge);
        if let Some(token) = credentials.as_ref().and_then(Credentials::bearer) {
            // A registry token is sent as it is.
            self.inner.auth.lock().expect("auth cache").insert(key, Auth::Bearer(token.to_owned()));
            return Ok(());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            if credentials.as_ref().and_then(Credentials::basic).is_none() {
                return Err(refused("the registry asks for basic authentication".into()));
            }
            self.inner.auth.lock().expect("auth cache").insert(key, Auth::Basic);
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(refused(format!("unsupported authentication scheme {scheme:?}")));
        }
        let realm = params.get("realm").ok_or_else(|| refused("bearer challenge without a realm".into()))?;
        let scope = format!("repository:{}:pull", target.repository);
        let mut url =
            reqwest::Url::parse(realm).map_err(|e| refused(format!("bad token realm {realm:?}: {e}")))?;
        let service = params.get("service").cloned();
        let mut attempt = 1;
        loop {
            let refresh = credentials.as_ref().and_then(Credentials::refresh_token);
            let basic = credentials.as_ref().and_then(Credentials::basic);
            let request = match refresh {
                Some(token) => {
                    let mut form = reqwest::Url::parse("x:/").expect("static URL");
                    {
                        let mut pairs = form.query_pairs_mut();
                        pairs.append_pair("grant_type", "refresh_token").append_pair("refresh_token", token);
                        pairs.append_pair("client_id", "image-preloader").append_pair("scope", &scope);
                        if let Some(service) = &service {
                            pairs.append_pair("service", service);
                        }
                    }
                    let body = form.query().unwrap_or("").to_owned();
                    self.inner
                        .http
                        .post(url.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(body)
                }
                None => {
                    {
                        let mut pairs = url.query_pairs_mut();
                        pairs.clear();
                        if let Some(service) = &service {
                            pairs.append_pair("service", service);
                        }
                        pairs.append_pair("scope", &scope);
                    }
                    let request = self.inner.http.get(url.clone());
                    match basic {
                        Some((username, password)) => request.basic_auth(username, Some(password)),
                        None => request,
                    }
                }
            };
            let failure = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let body = read_limited(response, 1 << 20)
                        .await
                        .map_err(|e| refused(format!("token response: {e}")))?;
                    #[derive(serde::Deserialize)]
                    struct TokenAnswer {
                        token: Option<String>,
                        access_token: Option<String>,
                    }
                    let answer: TokenAnswer = serde_json::from_slice(&body)
                        .map_err(|e| refused(format!("token response is not valid: {e}")))?;
                    let token = answer
                        .token
                        .or(answer.access_token)
                        .ok_or_else(|| refused("the token response holds no token".into()))?;
                    self.inner.auth.lock().expect("auth cache").insert(key, Auth::Bearer(token));
                    return Ok(());
                }
                Ok(response) if retry::retriable_status(response.status().as_u16()) => {
                    format!("token service answered HTTP {}", response.status())
                }
                Ok(response) => {
                    let status = response.status();
                    return Err(refused(format!(
                        "token service answered HTTP {status}: {}",
                        error_detail(response).await
                    )));
                }
                Err(e) => format!("token service: {}", describe(&e)),
            };
            attempt += 1;
            let Some(wait) = self.inner.options.retry.wait(attempt, None) else {
                return Err(RegistryError::Unavailable {
                    registry: ep_label(ep, &target.registry),
                    what: what.to_owned(),
                    detail: failure,
                });
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The registry, naming the mirror when the request went to one.
fn ep_label(ep: &Endpoint, registry: &str) -> String {
    if ep.mirror { format!("mirror {} of {registry}", ep.base) } else { registry.to_owned() }
}

/// A header's value as text.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A reqwest error with its causes, without URLs' query strings (which may carry tokens).
fn describe(error: &reqwest::Error) -> String {
    let mut text = String::from(if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_redirect() {
        "bad redirect"
    } else if error.is_body() || error.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The start of an error body (registries send `{"errors":[…]}`), on one line.
async fn error_detail(response: reqwest::Response) -> String {
    let body = read_limited(response, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() { "no details".into() } else { text.chars().take(300).collect() }
}

/// The body, refusing more than `limit` bytes.
async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("body larger than {limit} bytes"));
    }
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| describe(&e))?;
        if body.len() + chunk.len() > limit {
            // Keep what fits: error bodies are only shown, manifests are refused below.
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Err(format!("body larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// `Bearer realm="…",service="…"` → (`Bearer`, {realm, service}).
fn parse_challenge(value: &str) -> (String, HashMap<String, String>) {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, val.to_owned());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_owned(), params)
}

/// The state of one blob download.
struct BlobState {
    client: RegistryClient,
    what: String,
    endpoints: Vec<Endpoint>,
    current: usize,
    target: Target,
    digest: String,
    size: u64,
    /// Bytes passed on so far (or the start of the range asked for).
    received: u64,
    /// Whether the whole blob passes (then its digest is checked at the end).
    whole: bool,
    /// Bytes of the current response to drop (a registry that ignored the range).
    skip: u64,
    hasher: Sha256,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Attempts since the last progress.
    attempt: u32,
    done: bool,
}

impl BlobState {
    fn integrity(&self, detail: String) -> RegistryError {
        RegistryError::Integrity {
            registry: ep_label(&self.endpoints[self.current], &self.target.registry),
            what: self.what.clone(),
            detail,
        }
    }

    /// The next chunk, `None` at the verified end.
    async fn next(&mut self) -> Option<Result<Bytes, RegistryError>> {
        loop {
            let Some(body) = &mut self.body else {
                if self.received == self.size {
                    return self.finish();
                }
                if let Err(e) = self.open().await {
                    return Some(Err(e));
                }
                continue;
            };
            let failure = match body.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let n = self.skip.min(chunk.len() as u64) as usize;
                        self.skip -= n as u64;
                        chunk = chunk.slice(n..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    if self.received + chunk.len() as u64 > self.size {
                        return Some(Err(self
                            .integrity(format!("more than the {} bytes its descriptor states", self.size))));
                    }
                    self.received += chunk.len() as u64;
                    self.hasher.update(&chunk);
                    self.attempt = 1;
                    return Some(Ok(chunk));
                }
                Some(Err(e)) => describe(&e),
                None if self.received == self.size => {
                    self.body = None;
                    return self.finish();
                }
                None => format!("the connection ended after {} of {} bytes", self.received, self.size),
            };
            self.body = None;
            if let Err(e) = self.backoff(failure).await {
                return Some(Err(e));
            }
        }
    }

    fn finish(&mut self) -> Option<Result<Bytes, RegistryError>> {
        self.done = true;
        if !self.whole {
            return None;
        }
        let actual = format!("sha256:{}", hex(&std::mem::take(&mut self.hasher).finalize()));
        if actual != self.digest {
            return Some(Err(self.integrity(format!("its content has digest {actual}"))));
        }
        None
    }

    async fn backoff(&mut self, failure: String) -> Result<(), RegistryError> {
        self.attempt += 1;
        match self.client.inner.options.retry.wait(self.attempt, None) {
            Some(wait) => {
                warn!("{}: {failure}; resuming at byte {} in {wait:?}", self.what, self.received);
                tokio::time::sleep(wait).await;
                Ok(())
            }
            None => Err(RegistryError::Unavailable {
                registry: ep_label(&self.endpoints[self.current], &self.target.registry),
                what: self.what.clone(),
                detail: format!("{failure} (after {} attempts)", self.attempt - 1),
            }),
        }
    }

    /// Opens a response at `received`, falling back to the next endpoint on a final error.
    async fn open(&mut self) -> Result<(), RegistryError> {
        if !self.digest.starts_with("sha256:") {
            return Err(self.integrity(format!("unsupported digest algorithm in {}", self.digest)));
        }
        loop {
            let ep = self.endpoints[self.current].clone();
            let path = format!("/v2/{}/blobs/{}", self.target.repository, self.digest);
            let range = format!("bytes={}-", self.received);
            let headers: Vec<(reqwest::header::HeaderName, &str)> =
                if self.received > 0 { vec![(RANGE, range.as_str())] } else { Vec::new() };
            match self.client.request(&ep, &self.target, &self.what, Method::GET, &path, &headers).await {
                Ok(response) => {
                    let partial = response.status() == StatusCode::PARTIAL_CONTENT;
                    let start = header(response.headers(), CONTENT_RANGE.as_str()).and_then(|v| {
                        v.strip_prefix("bytes ")
                            .and_then(|r| r.split('-').next())
                            .and_then(|s| s.parse::<u64>().ok())
                    });
                    self.skip = match (partial, start) {
                        (true, Some(start)) if start <= self.received => self.received - start,
                        (true, _) => {
                            return Err(self.integrity(format!(
                                "a range answer that does not start at byte {}",
                                self.received
                            )));
                        }
                        (false, _) => self.received,
                    };
                    if self.received > 0 {
                        debug!(partial, "{}: resumed at byte {}", self.what, self.received);
                    }
                    self.body = Some(response.bytes_stream().boxed());
                    return Ok(());
                }
                Err(e) if self.current + 1 < self.endpoints.len() => {
                    warn!("mirror {} failed for {}, trying the next: {e}", ep.base, self.what);
                    self.current += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = |s: &str| Target::of(&Reference::parse(s).unwrap());
        assert_eq!(
            t("nginx:1.27"),
            Target {
                registry: "docker.io".into(),
                repository: "library/nginx".into(),
                reference: "1.27".into()
            }
        );
        assert_eq!(t("docker.io/bitnami/redis").repository, "bitnami/redis");
        assert_eq!(t("index.docker.io/library/busybox").registry, "docker.io");
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = t(&format!("127.0.0.1:5000/team/app:1@{digest}"));
        assert_eq!(
            (pinned.registry.as_str(), pinned.reference.as_str()),
            ("127.0.0.1:5000", digest.as_str())
        );
    }

    #[test]
    fn challenges() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((scheme.as_str(), p["realm"].as_str()), ("Basic", "Registry Realm"));
        let (_, p) = parse_challenge("Bearer realm=https://x/t, service=s");
        assert_eq!((p["realm"].as_str(), p["service"].as_str()), ("https://x/t", "s"));
    }

    #[test]
    fn endpoints_put_mirrors_first_and_pick_schemes() {
        let mut options = ClientOptions::default();
        options.mirrors.insert("docker.io".into(), vec!["https://mirror.example/".into()]);
        options.insecure.push("reg.local:5000".into());
        let client = RegistryClient::new(options).unwrap();
        let hub = client.endpoints("docker.io");
        assert_eq!(
            hub.iter().map(|e| e.base.as_str()).collect::<Vec<_>>(),
            ["https://mirror.example", "https://registry-1.docker.io"]
        );
        assert_eq!(hub[0].host, "mirror.example");
        assert_eq!(client.endpoints("reg.local:5000")[0].base, "http://reg.local:5000");
        assert_eq!(client.endpoints("127.0.0.1:5000")[0].base, "http://127.0.0.1:5000");
        assert_eq!(client.endpoints("ghcr.io")[0].base, "https://ghcr.io");
        assert!(is_loopback("localhost:5000") && is_loopback("127.0.0.1") && !is_loopback("reg.io:127"));
    }

    #[test]
    fn bad_ca_file_is_a_setup_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let options = ClientOptions { ca_file: Some(path), ..ClientOptions::default() };
        let err = RegistryClient::new(options).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}

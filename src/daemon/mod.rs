//! A Docker daemon: waiting for it, connecting, and the calls the `load` side makes (is an image
//! present, stream an archive in). Its use as an image source is [`crate::source::docker`].

pub mod load;

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    ImportImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bytes::Bytes;
use futures_util::stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::format::layout::ArchiveContents;
use crate::platform::Platform;
use crate::registry::Lookup;

/// How long one connection attempt (ping, version negotiation) may take.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between pings while waiting.
const PING_INTERVAL: Duration = Duration::from_millis(500);
/// How often a "still waiting" line is logged.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Time the daemon may take to start answering a request. Exports of large images on the classic
/// store are staged on the daemon's disk before the first byte, so this is generous; the streams
/// themselves have no deadline.
const REQUEST_TIMEOUT_SECS: u64 = 60 * 60;

/// Problems reaching the daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    #[error(
        "unsupported docker host {host:?}: use unix:///path/to/docker.sock, tcp://host:port or http://host:port"
    )]
    UnsupportedHost { host: String },
    #[error("the docker daemon at {host} did not answer within {}: {last_error}", humantime::format_duration(*.waited))]
    Unavailable { host: String, waited: Duration, last_error: String },
    #[error("interrupted while waiting for the docker daemon at {host}")]
    Interrupted { host: String },
}

/// Checks that `host` is a daemon address this build can use, without connecting.
pub fn validate_host(host: &str) -> Result<(), DockerError> {
    let rest = ["unix://", "tcp://", "http://"].iter().find_map(|scheme| host.strip_prefix(scheme));
    match rest {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(DockerError::UnsupportedHost { host: host.to_owned() }),
    }
}

/// A daemon call that failed: what was asked, the HTTP status if the daemon answered, and the
/// daemon's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} failed: {message}")]
pub struct CallError {
    /// What was asked, e.g. `inspecting nginx:1`.
    pub what: String,
    /// The HTTP status, when the daemon answered with one.
    pub status: Option<u16>,
    /// The daemon's message (or the transport's).
    pub message: String,
}

impl CallError {
    /// The error of the call described by `what`.
    pub fn new(what: impl Into<String>, error: bollard::errors::Error) -> CallError {
        use bollard::errors::Error;
        let (status, message) = match error {
            Error::DockerResponseServerError { status_code, message } => {
                (Some(status_code), format!("{message} (HTTP {status_code})"))
            }
            Error::DockerStreamError { error } => (None, error),
            other => (None, other.to_string()),
        };
        CallError { what: what.into(), status, message }
    }
}

/// What the daemon says about itself.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    /// Engine version, e.g. `20.10.24`.
    pub version: String,
    /// The negotiated API version, e.g. `1.41`.
    pub api_version: String,
    /// The platform it runs on (its OS and architecture; the variant is not reported).
    pub platform: Option<Platform>,
}

/// A connected Docker daemon.
#[derive(Debug, Clone)]
pub struct DockerDaemon {
    client: Docker,
    host: String,
}

impl DockerDaemon {
    /// Polls the daemon's ping endpoint until it answers (its socket may not exist yet), then
    /// negotiates the API version. Logs progress while waiting.
    pub async fn wait_until_ready(
        host: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(DockerDaemon, DaemonInfo), DockerError> {
        validate_host(host)?;
        let start = Instant::now();
        let mut last_log = start;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // One attempt never runs past the overall deadline (but gets a moment even at 0).
            let budget =
                PING_TIMEOUT.min(timeout.saturating_sub(start.elapsed())).max(Duration::from_millis(200));
            let last_error = match tokio::time::timeout(budget, try_connect(host)).await {
                Ok(Ok(ready)) => return Ok(ready),
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {}ms", budget.as_millis()),
            };
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(DockerError::Unavailable { host: host.to_owned(), waited, last_error });
            }
            if attempts == 1 || last_log.elapsed() >= WAIT_LOG_EVERY {
                info!(
                    docker_host = host,
                    waited_s = waited.as_secs(),
                    error = %last_error,
                    "waiting for the docker daemon"
                );
                last_log = Instant::now();
            }
            let pause = PING_INTERVAL.min(timeout - waited);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return Err(DockerError::Interrupted { host: host.to_owned() }),
            }
        }
    }

    /// The address the daemon was reached at.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The underlying client, for operations outside [`ImageSource`].
    pub fn client(&self) -> &Docker {
        &self.client
    }

    /// Whether the daemon has every image of an archive, under every tag the archive would apply:
    /// each tag (for an untagged image, one of its IDs) resolves to an ID the image gets when
    /// loaded ([`crate::format::layout::ArchivedImage::loaded_ids`]: the config digest on the classic image store, a
    /// manifest digest on the containerd image store) or to one of `also`, IDs known to be the same
    /// content (the registry digest the archive was built from: the ID of the pulled image on the
    /// containerd store).
    pub async fn has_images(&self, contents: &ArchiveContents, also: &[String]) -> Result<bool, CallError> {
        for image in &contents.images {
            let same = |id: &String| image.loaded_ids.contains(id) || also.contains(id);
            if image.repo_tags.is_empty() {
                let mut found = false;
                for id in image.loaded_ids.iter().chain(also) {
                    if self.image_id(id).await?.as_ref().is_some_and(same) {
                        found = true;
                        break;
                    }
                }
                if !found {
                    return Ok(false);
                }
            }
            for tag in &image.repo_tags {
                if !self.image_id(tag).await?.as_ref().is_some_and(same) {
                    return Ok(false);
                }
            }
        }
        Ok(!contents.images.is_empty())
    }

    /// The image ID each tag of the archive resolves to now (`None`: no such image).
    pub async fn tag_ids(
        &self,
        contents: &ArchiveContents,
    ) -> Result<Vec<(String, Option<String>)>, CallError> {
        let mut tags = Vec::new();
        for tag in contents.images.iter().flat_map(|i| &i.repo_tags) {
            tags.push((tag.clone(), self.image_id(tag).await?));
        }
        Ok(tags)
    }

    /// After a load the daemon refused: each tag that now names an image of the archive (the
    /// containerd image store tags an image whose layers then fail to unpack) is put back on the
    /// image it named before (`before`, from [`DockerDaemon::tag_ids`]), or removed. Returns what
    /// was done, one line per tag.
    pub async fn untag_refused(
        &self,
        contents: &ArchiveContents,
        before: &[(String, Option<String>)],
    ) -> Result<Vec<String>, CallError> {
        let ids: Vec<&String> = contents.images.iter().flat_map(|i| &i.loaded_ids).collect();
        let mut done = Vec::new();
        for (tag, old) in before {
            let now = self.image_id(tag).await?;
            let Some(now) = now.filter(|now| Some(now) != old.as_ref() && ids.contains(&now)) else {
                continue;
            };
            match old {
                Some(old) => {
                    let (repo, name_tag) = split_tag(tag);
                    let options = TagImageOptionsBuilder::default().repo(repo).tag(name_tag).build();
                    self.client
                        .tag_image(old, Some(options))
                        .await
                        .map_err(|e| CallError::new(format!("tagging {old} as {tag}"), e))?;
                    done.push(format!("{tag} names {old} again (not the refused {now})"));
                }
                None => {
                    let options = RemoveImageOptionsBuilder::default().build();
                    self.client
                        .remove_image(tag, Some(options), None)
                        .await
                        .map_err(|e| CallError::new(format!("removing the tag {tag}"), e))?;
                    done.push(format!("removed {tag} (the refused {now})"));
                }
            }
        }
        Ok(done)
    }

    /// The ID of the image `name` resolves to, or `None` if the daemon has no such image.
    async fn image_id(&self, name: &str) -> Result<Option<String>, CallError> {
        match self.client.inspect_image(name).await {
            Ok(info) => Ok(info.id),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(CallError::new(format!("inspecting {name}"), e)),
        }
    }

    /// Streams an archive to the daemon's load endpoint and returns what it loaded (`name:tag`, or
    /// an image ID for untagged images). If `archive` yields an error, the request is aborted
    /// before its body ends, so the daemon sees a broken upload and loads (and tags) nothing.
    pub async fn load<S>(&self, label: &str, archive: S) -> Result<Vec<String>, CallError>
    where
        S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = format!("loading {label}");
        let load_err = |message| CallError { what: what.clone(), status: None, message };
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut progress = self.client.import_image_stream(options, archive, None);
        let mut loaded = Vec::new();
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| CallError::new(what.clone(), e))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(load_err(error));
            }
            for line in info.stream.as_deref().unwrap_or("").lines() {
                if let Some(name) =
                    line.strip_prefix("Loaded image: ").or_else(|| line.strip_prefix("Loaded image ID: "))
                {
                    loaded.push(name.trim().to_owned());
                }
            }
        }
        if loaded.is_empty() {
            return Err(load_err("the daemon reported no loaded image".into()));
        }
        Ok(loaded)
    }
}

/// `registry:5000/team/app:1` → (`registry:5000/team/app`, `1`); a name without a tag gets `latest`.
fn split_tag(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

async fn try_connect(host: &str) -> Result<(DockerDaemon, DaemonInfo), String> {
    let client = if host.starts_with("unix://") {
        Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else {
        let address = host.replacen("tcp://", "http://", 1);
        Docker::connect_with_http(&address, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    }
    .map_err(|e| e.to_string())?
    .with_request_modifier(url_safe_registry_auth);
    client.ping().await.map_err(|e| e.to_string())?;
    let client = client.negotiate_version().await.map_err(|e| e.to_string())?;
    let version = client.version().await.map_err(|e| e.to_string())?;
    let platform = match (&version.os, &version.arch) {
        (Some(os), Some(arch)) => Some(Platform::from_parts(os, arch, None)),
        _ => None,
    };
    let info = DaemonInfo {
        version: version.version.unwrap_or_else(|| "unknown".into()),
        api_version: client.client_version().to_string(),
        platform,
    };
    Ok((DockerDaemon { client, host: host.to_owned() }, info))
}

/// bollard encodes `X-Registry-Auth` with the standard base64 alphabet, but the daemon decodes
/// it as URL-safe base64 (as the Docker CLI sends it) and silently ignores a header it cannot
/// decode: Docker 20.10 then pulls anonymously whenever the JSON's encoding holds a `+` or `/`.
/// Re-encoded here, on every request.
fn url_safe_registry_auth(mut request: bollard::BollardRequest) -> bollard::BollardRequest {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let headers = request.headers_mut();
    let recoded = headers
        .get("X-Registry-Auth")
        .and_then(|value| STANDARD.decode(value.as_bytes()).ok())
        .and_then(|json| http::HeaderValue::from_str(&URL_SAFE.encode(json)).ok());
    if let Some(mut value) = recoded {
        value.set_sensitive(true);
        headers.insert("X-Registry-Auth", value);
    }
    request
}

/// Credentials as the daemon's pull and distribution endpoints take them (`X-Registry-Auth`).
pub fn registry_auth(lookup: &Lookup) -> Option<bollard::auth::DockerCredentials> {
    let credentials = lookup.credentials()?;
    Some(bollard::auth::DockerCredentials {
        username: credentials.username().map(str::to_owned),
        password: credentials.basic().map(|(_, password)| password.to_owned()),
        identitytoken: credentials.refresh_token().map(str::to_owned),
        registrytoken: credentials.bearer().map(str::to_owned),
        serveraddress: Some(lookup.registry().auth_key().to_owned()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_after_the_registry_port() {
        assert_eq!(split_tag("registry:5000/team/app:1"), ("registry:5000/team/app", "1"));
        assert_eq!(split_tag("registry:5000/team/app"), ("registry:5000/team/app", "latest"));
        assert_eq!(split_tag("app:1.0"), ("app", "1.0"));
    }

    #[test]
    fn registry_auth_header_is_url_safe() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        // The JSON of these credentials has `+` in standard base64.
        let json = r#"{"username":"preloader","password":"pre?load>er~secret"}"#;
        let standard = STANDARD.encode(json);
        assert!(standard.contains('+'));
        let request = http::Request::builder()
            .header("X-Registry-Auth", &standard)
            .body(bollard::body_full(bytes::Bytes::new()))
            .unwrap();
        let fixed = url_safe_registry_auth(request);
        let value = fixed.headers().get("X-Registry-Auth").unwrap();
        assert_eq!(URL_SAFE.decode(value.as_bytes()).unwrap(), json.as_bytes());
        assert!(value.is_sensitive());
        let plain = url_safe_registry_auth(http::Request::new(bollard::body_full(bytes::Bytes::new())));
        assert!(plain.headers().get("X-Registry-Auth").is_none());
    }

    #[test]
    fn hosts() {
        for ok in ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "http://localhost:2375"] {
            assert_eq!(validate_host(ok), Ok(()), "{ok}");
        }
        for bad in
            ["/var/run/docker.sock", "unix://", "ssh://host", "https://h:2376", "npipe:////./pipe/x", ""]
        {
            assert!(validate_host(bad).is_err(), "{bad}");
        }
    }
}

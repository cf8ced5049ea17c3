//! A Docker daemon: waiting for it, connecting, and the calls the `load` side makes (is an image
//! present, stream an archive in). Its use as an image source is [`crate::source::docker`].
//!
//! Every call once connected has a progress deadline (`--stall-timeout`): a stream (pull, export,
//! load) that moves nothing for that long, or any other call left unanswered that long, fails with
//! "the daemon stalled". Time spent waiting on this side (a slow disk under a load) never counts.

pub mod load;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    ImportImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
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
/// The transport's own limit on a request, a backstop only. The real deadline is the progress
/// deadline ([`DockerDaemon::with_stall_timeout`]).
const REQUEST_TIMEOUT_SECS: u64 = 60 * 60;
/// The progress deadline unless configured (`--stall-timeout`). Generous: the classic store stages
/// a large export on the daemon's disk before its first byte.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How a call that made no progress within the deadline begins its message.
const STALLED: &str = "the daemon stalled";

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

    /// Whether the call failed for want of progress within the deadline (`--stall-timeout`).
    pub fn is_stalled(&self) -> bool {
        self.status.is_none() && self.message.starts_with(STALLED)
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
    stall_timeout: Duration,
}

/// The message of a call that made no progress within the deadline (a transient failure: it says
/// "timed out").
pub fn stalled_message(limit: Duration) -> String {
    format!("{STALLED}: no progress for {} (--stall-timeout), timed out", humantime::format_duration(limit))
}

/// When a streaming call last made progress, and whether it is waiting on this side rather than on
/// the daemon (then it cannot stall).
#[derive(Debug, Clone)]
struct Progress(Arc<Mutex<(tokio::time::Instant, bool)>>);

impl Progress {
    /// Progress starting now, waiting on the daemon.
    fn new() -> Progress {
        Progress(Arc::new(Mutex::new((tokio::time::Instant::now(), false))))
    }

    /// Something moved; `ours` says whether the call now waits on this side.
    fn moved(&self, ours: bool) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (tokio::time::Instant::now(), ours);
    }

    /// Resolves once the call waited on the daemon for `limit` without progress.
    async fn stalled(&self, limit: Duration) {
        loop {
            let (last, ours) = *self.0.lock().unwrap_or_else(|e| e.into_inner());
            if ours {
                tokio::time::sleep(limit).await;
            } else if last.elapsed() >= limit {
                return;
            } else {
                tokio::time::sleep_until(last + limit).await;
            }
        }
    }
}

/// An upload body that reports to a [`Progress`]: each chunk it hands over is progress (the
/// transport took the previous one). While its own source has nothing ready (a slow disk), the call
/// waits on this side; once the source wakes up, it waits on the transport, so on the daemon, again.
struct Watched<S> {
    inner: S,
    progress: Progress,
}

impl<S: futures_util::Stream + Unpin> futures_util::Stream for Watched<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        // Waiting on this side until the source either answers now or wakes its waker later (from
        // the reader's thread, maybe before this poll returns: so this comes first).
        self.progress.moved(true);
        let waker = futures_util::task::waker(Arc::new(SourceReady {
            transport: cx.waker().clone(),
            progress: self.progress.clone(),
        }));
        let polled = self.inner.poll_next_unpin(&mut std::task::Context::from_waker(&waker));
        if polled.is_ready() {
            self.progress.moved(false);
        }
        polled
    }
}

/// The waker a [`Watched`] body's source gets: the source has something ready, so the upload waits
/// on the transport again; then the transport is woken as usual.
struct SourceReady {
    transport: std::task::Waker,
    progress: Progress,
}

impl futures_util::task::ArcWake for SourceReady {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.progress.moved(false);
        arc_self.transport.wake_by_ref();
    }
}

/// `stream` with a deadline between items: if nothing arrives for `limit`, it yields `on_stall()`
/// and ends. Time the consumer takes between items does not count.
pub fn with_deadline<T: Send + 'static, E: Send + 'static>(
    stream: BoxStream<'static, Result<T, E>>,
    limit: Duration,
    on_stall: impl Fn() -> E + Send + 'static,
) -> BoxStream<'static, Result<T, E>> {
    futures_util::stream::unfold(Some((stream, on_stall)), move |state| async move {
        let (mut stream, on_stall) = state?;
        match tokio::time::timeout(limit, stream.next()).await {
            Ok(Some(item)) => Some((item, Some((stream, on_stall)))),
            Ok(None) => None,
            Err(_) => Some((Err(on_stall()), None)),
        }
    })
    .boxed()
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

    /// Sets the progress deadline of every call (see [`DEFAULT_STALL_TIMEOUT`]).
    pub fn with_stall_timeout(mut self, limit: Duration) -> DockerDaemon {
        self.stall_timeout = limit;
        self
    }

    /// The progress deadline of every call.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// A call that does not stream: it must answer within the progress deadline, or `on_stall`
    /// makes its error from the message.
    pub async fn answer<T, E>(
        &self,
        call: impl std::future::Future<Output = Result<T, E>>,
        on_stall: impl FnOnce(String) -> E,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.stall_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(on_stall(stalled_message(self.stall_timeout))),
        }
    }

    /// The underlying client, for operations outside [`ImageSource`].
    pub fn client(&self) -> &Docker {
        &self.client
    }

    /// Whether the daemon has every image of an archive, under every tag the archive would apply:
    /// each tag (for an untagged image, one of its IDs) resolves to an ID the image gets when
    /// loaded ([`crate::format::layout::ArchivedImage::loaded_ids`]: the config digest on the classic
    /// image store, a manifest digest on the containerd image store) or to one of `also`, IDs known
    /// to be the same content (the registry digest the archive was built from: the ID of the pulled
    /// image on the containerd store). `tags` is what [`DockerDaemon::tag_ids`] found, so the tags
    /// are not asked for twice.
    pub async fn has_images(
        &self,
        contents: &ArchiveContents,
        also: &[String],
        tags: &[(String, Option<String>)],
    ) -> Result<bool, CallError> {
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
                let now = tags.iter().find(|(t, _)| t == tag).and_then(|(_, id)| id.as_ref());
                if !now.is_some_and(same) {
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
                    let what = format!("tagging {old} as {tag}");
                    let call = async {
                        self.client.tag_image(old, Some(options)).await.map_err(|e| CallError::new(&what, e))
                    };
                    self.answer(call, |message| CallError { what: what.clone(), status: None, message })
                        .await?;
                    done.push(format!("{tag} names {old} again (not the refused {now})"));
                }
                None => {
                    let options = RemoveImageOptionsBuilder::default().build();
                    let what = format!("removing the tag {tag}");
                    let call = async {
                        self.client
                            .remove_image(tag, Some(options), None)
                            .await
                            .map_err(|e| CallError::new(&what, e))
                    };
                    self.answer(call, |message| CallError { what: what.clone(), status: None, message })
                        .await?;
                    done.push(format!("removed {tag} (the refused {now})"));
                }
            }
        }
        Ok(done)
    }

    /// The ID of the image `name` resolves to, or `None` if the daemon has no such image.
    async fn image_id(&self, name: &str) -> Result<Option<String>, CallError> {
        let what = format!("inspecting {name}");
        let stalled = |message| CallError { what: what.clone(), status: None, message };
        match self.answer(async { Ok(self.client.inspect_image(name).await) }, stalled).await? {
            Ok(info) => Ok(info.id),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(CallError::new(what, e)),
        }
    }

    /// Streams an archive to the daemon's load endpoint and returns what it loaded (`name:tag`, or
    /// an image ID for untagged images). If `archive` yields an error, the request is aborted
    /// before its body ends, so the daemon sees a broken upload and loads (and tags) nothing.
    /// A daemon that takes no bytes and sends no answer for the progress deadline fails the load
    /// (time `archive` takes to produce its next chunk does not count).
    pub async fn load<S>(&self, label: &str, archive: S) -> Result<Vec<String>, CallError>
    where
        S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = format!("loading {label}");
        let load_err = |message| CallError { what: what.clone(), status: None, message };
        let progress = Progress::new();
        let body = Watched { inner: Box::pin(archive), progress: progress.clone() };
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut answers = self.client.import_image_stream(options, body, None);
        let mut loaded = Vec::new();
        let transfer = async {
            while let Some(item) = answers.next().await {
                progress.moved(false);
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
            Ok(())
        };
        tokio::select! {
            result = transfer => result?,
            _ = progress.stalled(self.stall_timeout) => {
                return Err(load_err(stalled_message(self.stall_timeout)));
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
    Ok((DockerDaemon { client, host: host.to_owned(), stall_timeout: DEFAULT_STALL_TIMEOUT }, info))
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

    const LIMIT: Duration = Duration::from_secs(10);

    /// A body whose source takes `pause` before each of its `chunks` chunks.
    fn slow_source(chunks: usize, pause: Duration) -> Watched<BoxStream<'static, u8>> {
        let source = futures_util::stream::unfold(0, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(pause).await;
            Some((0u8, i + 1))
        });
        Watched { inner: source.boxed(), progress: Progress::new() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_source_is_not_a_stall() {
        let mut body = slow_source(3, LIMIT * 3);
        let progress = body.progress.clone();
        let taken = async { while body.next().await.is_some() {} };
        tokio::select! {
            biased;
            () = taken => {}
            () = progress.stalled(LIMIT) => panic!("the source's own slowness counted as a stall"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transport_that_stops_taking_is_a_stall() {
        let mut body = slow_source(100, Duration::from_millis(10));
        let progress = body.progress.clone();
        let started = tokio::time::Instant::now();
        // Two chunks taken, a third asked for once (the source has it ready 10 ms later, when the
        // transport is full and no longer asks): the wait is on the transport from then on.
        body.next().await;
        body.next().await;
        assert!(futures_util::poll!(body.next()).is_pending());
        let taken = started.elapsed();
        tokio::time::timeout(LIMIT * 2, progress.stalled(LIMIT)).await.expect("a stall");
        let stalled_after = started.elapsed() - taken;
        assert!(
            stalled_after >= LIMIT && stalled_after < LIMIT + Duration::from_secs(1),
            "{stalled_after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_stops_ends_with_the_stall_error() {
        let stream =
            futures_util::stream::iter([Ok::<u8, String>(1)]).chain(futures_util::stream::pending()).boxed();
        let items: Vec<_> = with_deadline(stream, LIMIT, || "stalled".to_owned()).collect().await;
        assert_eq!(items, vec![Ok(1), Err("stalled".to_owned())]);
    }

    #[test]
    fn stalls_are_told_apart() {
        let stalled =
            CallError { what: "inspecting x".into(), status: None, message: stalled_message(LIMIT) };
        assert!(stalled.is_stalled());
        assert!(stalled.to_string().contains("no progress for 10s (--stall-timeout)"));
        let other = CallError { what: "inspecting x".into(), status: Some(500), message: "boom".into() };
        assert!(!other.is_stalled());
    }

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

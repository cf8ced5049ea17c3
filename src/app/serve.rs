//! The `run` sidecar's HTTP endpoints (`--listen`): `/healthz`, `/readyz` and `/metrics`, read
//! from the status feed, on the same single-threaded runtime as the loop.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::preload::status::StatusFeed;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} (--listen): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    feed: StatusFeed,
    liveness_bound: Duration,
}

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Server {
    /// Binds `addr` (before any other work, so a bad address is reported at once).
    pub async fn bind(
        addr: SocketAddr,
        feed: StatusFeed,
        liveness_bound: Duration,
    ) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        info!(listen = %local, "serving /healthz, /readyz and /metrics");
        Ok(Server { listener, feed, liveness_bound })
    }

    /// Serves until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let Server { listener, feed, liveness_bound } = self;
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        debug!("accept failed: {e}");
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let feed = feed.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&feed, liveness_bound, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => if let Err(e) = result {
                        debug!("connection ended: {e}");
                    },
                    _ = stop.cancelled() => {}
                }
            });
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn respond(
    feed: &StatusFeed,
    liveness_bound: Duration,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
    }
    match request.uri().path() {
        "/healthz" => healthz(feed, liveness_bound),
        "/readyz" => readyz(feed),
        "/metrics" => reply(StatusCode::OK, OPENMETRICS, feed.metrics().encode()),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found: try /healthz, /readyz or /metrics\n".into()),
    }
}

fn healthz(feed: &StatusFeed, bound: Duration) -> Response<Full<Bytes>> {
    let status = feed.snapshot();
    let now = SystemTime::now();
    let quiet = status.heartbeat.map(|beat| now.duration_since(beat).unwrap_or_default());
    if status.alive(now, bound) {
        reply(StatusCode::OK, TEXT, "ok\n".into())
    } else {
        let quiet = quiet.map_or("ever".into(), |q| format!("{} s", q.as_secs()));
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("the loop made no progress for {quiet} (bound {} s)\n", bound.as_secs()),
        )
    }
}

fn readyz(feed: &StatusFeed) -> Response<Full<Bytes>> {
    let status = feed.snapshot();
    if status.images.is_empty() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting: no image list yet\n".into());
    }
    if status.ready() {
        return reply(StatusCode::OK, TEXT, format!("ready: {} images\n", status.images.len()));
    }
    let missing: Vec<_> = status.missing().collect();
    let mut body =
        format!("not ready: {} of {} images have no archive yet\n", missing.len(), status.images.len());
    for image in missing {
        let _ = write!(body, "{}", image.reference);
        match &image.last_failure {
            Some(failure) => {
                let _ = writeln!(
                    body,
                    ": failed at {} ({}): {}",
                    failure.step.as_str(),
                    failure.kind.as_str(),
                    failure.message
                );
            }
            None => body.push_str(": pending\n"),
        }
    }
    reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
}

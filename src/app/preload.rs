//! `warm` and `run`: clean up, wait for the source, then one pass or the supervised loop.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::app::AppError;
use crate::app::reload;
use crate::app::serve::Server;
use crate::config::{Mode, PreloadConfig, RunConfig};
use crate::daemon::{DockerDaemon, DockerError};
use crate::image::list::ImageSpec;
use crate::preload::cycle;
use crate::preload::outcome::{Failure, Outcome, PassReport};
use crate::preload::pass::Preloader;
use crate::preload::status::{StatusFeed, liveness_bound};
use crate::registry::client::{ClientOptions, RegistryClient};
use crate::registry::manifest::host_platform;
use crate::registry::{CredentialSet, CredentialsError, Keyring, RegistryHost, Reloaded};
use crate::source::Source;
use crate::source::registry::RegistrySource;
use crate::store::{ArchiveStore, prune};
use crate::{human, progress};

/// `--prune`: removes recorded archives not in `images`. Failures are logged, not fatal.
async fn prune_unlisted(store: &ArchiveStore, images: &[ImageSpec]) {
    let wanted: HashSet<PathBuf> = images.iter().map(|i| i.archive.clone()).collect();
    let store = store.clone();
    match crate::store::blocking(move || prune::prune(&store, &wanted)).await {
        Ok(removed) if !removed.is_empty() => {
            info!(pruned = removed.len(), "pruned archives no longer listed")
        }
        Ok(_) => {}
        Err(e) => warn!("prune stopped: {e}"),
    }
}

async fn remove_leftovers(store: &ArchiveStore) {
    let walk = store.remove_leftovers().await;
    for path in walk.found {
        info!(path = %path.display(), "removed a temporary file left by an interrupted run");
    }
    for (path, why) in walk.unreadable {
        warn!(path = %path.display(), "could not clean up: {why}");
    }
}

/// The registry credentials in force, shared with the registry client.
type SharedCredentials = Arc<RwLock<CredentialSet>>;

/// Reads the Docker config file again (on a blocking thread) and logs what changed. On error the
/// previous credentials stay in force; the error is returned for the caller to judge.
async fn reload(keyring: &Arc<Mutex<Keyring>>) -> Result<CredentialSet, CredentialsError> {
    let keyring = Arc::clone(keyring);
    let (result, current, location) = tokio::task::spawn_blocking(move || {
        let mut keyring = keyring.lock().unwrap_or_else(|e| e.into_inner());
        let result = keyring.reload();
        (result, keyring.current(), keyring.location().clone())
    })
    .await
    .expect("reading the Docker config file panicked");
    match result? {
        Reloaded::Unchanged => {}
        Reloaded::Removed => {
            let path = location.path().map(|p| p.display().to_string()).unwrap_or_default();
            warn!(docker_config = %path, "the Docker config file is gone: pulling without credentials");
        }
        Reloaded::Changed => {
            if let Some(config) = current.config() {
                info!(
                    docker_config = %config.path().display(),
                    registries = config.credential_count(),
                    "registry credentials read"
                );
                for (registry, helper) in config.unusable_helpers() {
                    warn!(
                        docker_config = %config.path().display(),
                        "credentials for {registry} are held by the credential helper docker-credential-{helper} (credHelpers), which cannot run in this image; pulls from {registry} are anonymous"
                    );
                }
                if let Some(store) = config.creds_store() {
                    warn!(
                        docker_config = %config.path().display(),
                        "credsStore names docker-credential-{store}, which cannot run in this image: only the credentials written in `auths` are used"
                    );
                }
            }
        }
    }
    Ok(current)
}

/// The source ready to use, the keyring to re-read and the credentials the registry client reads.
struct Prepared {
    preloader: Preloader<Source>,
    keyring: Arc<Mutex<Keyring>>,
    shared: SharedCredentials,
}

impl Prepared {
    /// Reads the Docker config file again and puts the result in force; a broken file keeps the
    /// previous credentials.
    async fn refresh_credentials(&self) {
        match reload(&self.keyring).await {
            Ok(credentials) => {
                *self.shared.write().unwrap_or_else(|e| e.into_inner()) = credentials.clone();
                self.preloader.set_credentials(credentials);
            }
            Err(e) => error!("{e}; the previous credentials stay in use"),
        }
    }
}

/// How long `--mode auto` waits for a daemon before reading the registries instead.
const AUTO_DAEMON_WAIT: Duration = Duration::from_secs(2);

/// Reads the credentials, removes leftovers of killed runs, then picks and readies the source:
/// waits for the daemon, or sets up the registry client.
async fn prepare(config: &PreloadConfig, shutdown: &CancellationToken) -> Result<Prepared, AppError> {
    info!(
        images = config.images.len(),
        dir = %config.dir.display(),
        max_image_age = %config.max_age,
        refresh_policy = ?config.refresh,
        min_free = %config.min_free,
        prune = config.prune,
        concurrency = config.concurrency,
        "image-preloader {}",
        env!("CARGO_PKG_VERSION")
    );
    // A broken credentials file is bad input: refused before any work.
    let keyring = Arc::new(Mutex::new(Keyring::new(config.docker_config.clone())));
    let credentials = reload(&keyring).await?;
    let shared: SharedCredentials = Arc::new(RwLock::new(credentials.clone()));
    if let Some(platform) = &config.platform {
        info!(%platform, "images without their own platform are pulled for {platform}");
    }
    let store = ArchiveStore::new(&config.dir);
    remove_leftovers(&store).await;
    let source = match config.source.mode {
        Mode::Daemon => Source::Daemon(connect(config, config.wait_timeout, shutdown).await?),
        Mode::Registry => {
            info!(
                mode = "registry",
                "registry mode (--mode registry): reading the registries directly, no daemon"
            );
            registry_source(config, &shared)?
        }
        Mode::Auto => match connect(config, AUTO_DAEMON_WAIT, shutdown).await {
            Ok(daemon) => {
                info!(
                    mode = "daemon",
                    docker_host = daemon.host(),
                    "daemon mode (--mode auto): the docker daemon answered"
                );
                Source::Daemon(daemon)
            }
            Err(DockerError::Unavailable { host, .. }) => {
                info!(
                    mode = "registry",
                    "registry mode (--mode auto): no docker daemon answered at {host} within {}s; reading the registries directly",
                    AUTO_DAEMON_WAIT.as_secs()
                );
                registry_source(config, &shared)?
            }
            Err(e) => return Err(e.into()),
        },
    };
    let preloader = Preloader::new(source, store, config.settings());
    preloader.set_credentials(credentials);
    Ok(Prepared { preloader, keyring, shared })
}

/// Waits up to `timeout` for the daemon.
async fn connect(
    config: &PreloadConfig,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<DockerDaemon, DockerError> {
    let (daemon, about) = DockerDaemon::wait_until_ready(&config.docker_host, timeout, shutdown).await?;
    let daemon = daemon.with_stall_timeout(config.stall_timeout);
    info!(
        docker_host = daemon.host(),
        version = %about.version,
        api_version = %about.api_version,
        "connected to the docker daemon"
    );
    Ok(daemon)
}

/// The registry source: the client with mirrors, insecure registries, the CA file and the
/// credentials in force (re-read before each pass), for `--platform` or this machine's platform.
fn registry_source(config: &PreloadConfig, shared: &SharedCredentials) -> Result<Source, AppError> {
    let credentials = Arc::clone(shared);
    let options = ClientOptions {
        insecure: config.source.insecure.clone(),
        ca_file: config.source.ca_file.clone(),
        mirrors: config.source.mirrors.clone(),
        credentials: Arc::new(move |host: &str| {
            let credentials = credentials.read().unwrap_or_else(|e| e.into_inner());
            credentials.lookup(&RegistryHost::new(host)).credentials().cloned()
        }),
        ..ClientOptions::default()
    };
    let client = RegistryClient::new(options)?;
    let platform = config.platform.clone().unwrap_or_else(host_platform);
    info!(
        platform = %platform,
        mirrors = config.source.mirrors.len(),
        layers = ?config.source.layers,
        "registry client ready"
    );
    Ok(Source::Registry(Arc::new(RegistrySource::new(client, platform, config.source.layers))))
}

pub(super) async fn warm(config: PreloadConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let preloader = prepare(&config, &shutdown).await?.preloader;
    let report = preloader.pass(&config.images, &shutdown).await;
    cycle::log_pass(1, &report, None);
    if progress::bars() {
        progress::suspend(|| eprint!("{}", summary_table(&report)));
    }
    if report.cancelled() > 0 || shutdown.is_cancelled() {
        return Err(AppError::Interrupted);
    }
    if config.prune {
        prune_unlisted(preloader.store(), &config.images).await;
    }
    match report.failed() {
        0 => Ok(()),
        failed => Err(AppError::ImagesFailed { failed, total: report.outcomes.len() }),
    }
}

/// The sidecar: its tasks live in one [`JoinSet`] under the one shutdown token: the loop, with
/// `--images-file` the watcher that hands it a changed list, and with `--listen` the HTTP server
/// reading the status feed. The server is bound before anything
/// else (a bad address is refused at once), answers while the daemon is awaited, and stops last:
/// when the loop ends, the others are asked to stop and awaited.
pub(super) async fn run(config: RunConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let feed = StatusFeed::new();
    let mut tasks = JoinSet::new();
    let server_stop = CancellationToken::new();
    if let Some(addr) = config.listen {
        let bound = liveness_bound(config.interval, config.preload.wait_timeout);
        let server = Server::bind(addr, feed.clone(), bound).await?;
        tasks.spawn(server.run(server_stop.clone()));
    }
    feed.set_list(&config.preload.images);
    let waiting = std::time::Instant::now();
    let prepared = match prepare(&config.preload, &shutdown).await {
        Ok(prepared) => Arc::new(prepared),
        // Shutdown while waiting for the daemon is a normal end for the sidecar.
        Err(AppError::Docker(DockerError::Interrupted { .. })) => return stop(tasks, server_stop).await,
        Err(e) => {
            let _ = stop(tasks, server_stop).await;
            return Err(e);
        }
    };
    feed.metrics().daemon_waited(waiting.elapsed());
    let (list, images) = watch::channel(config.preload.images.clone());
    if let Some(source) = config.reload.clone() {
        tasks.spawn(reload::watch_list(source, list, feed.clone(), reload::POLL, shutdown.clone()));
    }
    let loop_task = {
        let current = images.clone();
        let (interval, cancel, prune) = (config.interval, shutdown.clone(), config.preload.prune);
        let feed = feed.clone();
        tasks
            .spawn(async move {
                let pass_cancel = cancel.clone();
                let observer = feed.clone();
                let mut first = true;
                cycle::run(images, interval, cancel, feed, |due| {
                    let prepared = Arc::clone(&prepared);
                    let cancel = pass_cancel.clone();
                    let current = current.clone();
                    let observer = observer.clone();
                    // The first pass uses what `prepare` just read.
                    let reread = !std::mem::take(&mut first);
                    async move {
                        if reread {
                            prepared.refresh_credentials().await;
                        }
                        let preloader = &prepared.preloader;
                        let report = preloader
                            .pass_observed(&due, &cancel, |image, outcome| {
                                observer.record_image(image, outcome)
                            })
                            .await;
                        if prune && !cancel.is_cancelled() {
                            let listed = current.borrow().clone();
                            prune_unlisted(preloader.store(), &listed).await;
                        }
                        report
                    }
                })
                .await;
            })
            .id()
    };
    while let Some(ended) = tasks.join_next_with_id().await {
        let id = match ended {
            Ok((id, ())) => id,
            Err(e) => {
                if e.is_panic() {
                    error!("a task panicked: {e}");
                }
                e.id()
            }
        };
        shutdown.cancel();
        // The server stops last: once the loop has ended.
        if id == loop_task {
            server_stop.cancel();
        }
    }
    Ok(())
}

/// Stops the server (and any other task) and waits for them.
async fn stop(mut tasks: JoinSet<()>, server_stop: CancellationToken) -> Result<(), AppError> {
    server_stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The table `warm` prints after its bars: one row per image with its result, archive size, time
/// and why it failed or was kept.
fn summary_table(report: &PassReport) -> String {
    let rows: Vec<[String; 5]> = report
        .outcomes
        .iter()
        .map(|(image, outcome)| {
            let (size, time, detail) = match outcome {
                Outcome::Built(built) => (
                    human::bytes(built.bytes),
                    human::duration(built.pull_time + built.save_time),
                    built.reason.to_string(),
                ),
                Outcome::Kept(reason) => ("-".into(), "-".into(), reason.to_string()),
                Outcome::Unchanged => {
                    ("-".into(), "-".into(), "the registry serves the recorded digest".into())
                }
                Outcome::Unverified(why) | Outcome::Failed(Failure { message: why, .. }) => {
                    ("-".into(), "-".into(), why.clone())
                }
                Outcome::Cancelled => ("-".into(), "-".into(), "interrupted".into()),
            };
            [image.reference.to_string(), outcome.label().to_owned(), size, time, detail]
        })
        .collect();
    let header = ["IMAGE", "RESULT", "SIZE", "TIME", "DETAIL"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row[..4].iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        table.push_str(&format!("{}  {}\n", line.join("  "), row[4]));
    }
    table
}

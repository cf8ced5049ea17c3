//! `warm` and `run`: clean up, wait for the source, then one pass or the supervised loop.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::app::AppError;
use crate::config::{PreloadConfig, RunConfig};
use crate::daemon::{DockerDaemon, DockerError};
use crate::image::list::ImageSpec;
use crate::preload::cycle;
use crate::preload::pass::Preloader;
use crate::preload::status::StatusFeed;
use crate::source::Source;
use crate::store::{ArchiveStore, prune};

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

/// Removes leftovers of killed runs and waits for the source.
async fn prepare(
    config: &PreloadConfig,
    shutdown: &CancellationToken,
) -> Result<Preloader<Source>, DockerError> {
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
    let store = ArchiveStore::new(&config.dir);
    remove_leftovers(&store).await;
    let (daemon, about) =
        DockerDaemon::wait_until_ready(&config.docker_host, config.wait_timeout, shutdown).await?;
    info!(
        docker_host = daemon.host(),
        version = %about.version,
        api_version = %about.api_version,
        "connected to the docker daemon"
    );
    Ok(Preloader::new(Source::Daemon(daemon), store, config.settings()))
}

pub(super) async fn warm(config: PreloadConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let preloader = prepare(&config, &shutdown).await?;
    let report = preloader.pass(&config.images, &shutdown).await;
    cycle::log_pass(1, &report, None);
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

/// The sidecar: its tasks live in one [`JoinSet`] under the one shutdown token. Today the only
/// task is the loop; a server reading the status feed is another. When any task ends, the others
/// are asked to stop and awaited.
pub(super) async fn run(config: RunConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let preloader = match prepare(&config.preload, &shutdown).await {
        Ok(preloader) => Arc::new(preloader),
        // Shutdown while waiting for the daemon is a normal end for the sidecar.
        Err(DockerError::Interrupted { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let (_list, images) = watch::channel(config.preload.images.clone());
    let feed = StatusFeed::new();
    let mut tasks = JoinSet::new();
    {
        let current = images.clone();
        let (interval, cancel, prune) = (config.interval, shutdown.clone(), config.preload.prune);
        let feed = feed.clone();
        tasks.spawn(async move {
            let pass_cancel = cancel.clone();
            cycle::run(images, interval, cancel, feed, |due| {
                let preloader = Arc::clone(&preloader);
                let cancel = pass_cancel.clone();
                let current = current.clone();
                async move {
                    let report = preloader.pass(&due, &cancel).await;
                    if prune && !cancel.is_cancelled() {
                        let listed = current.borrow().clone();
                        prune_unlisted(preloader.store(), &listed).await;
                    }
                    report
                }
            })
            .await;
        });
    }
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended
            && e.is_panic()
        {
            error!("a task panicked: {e}");
        }
        shutdown.cancel();
    }
    Ok(())
}

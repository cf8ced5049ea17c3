//! The commands, wired together: what `main` calls once the configuration is valid.

use std::io::Write;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::ArchiveStore;
use crate::config::{Config, PreloadConfig, RunConfig};
use crate::cycle;
use crate::docker::{DockerDaemon, DockerError};
use crate::images::ImageSpec;
use crate::pass::Preloader;

/// Process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Everything succeeded.
    Success = 0,
    /// At least one image failed.
    ImagesFailed = 1,
    /// Usage or configuration error.
    Usage = 2,
    /// The daemon did not answer in time.
    DaemonUnavailable = 3,
    /// Stopped by a signal where that is not a normal end.
    Interrupted = 130,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("{failed} of {total} images failed")]
    ImagesFailed { failed: usize, total: usize },
    #[error("interrupted; the archives being written were abandoned")]
    Interrupted,
}

impl AppError {
    /// The exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            AppError::Docker(DockerError::UnsupportedHost { .. }) => Exit::Usage,
            AppError::Docker(DockerError::Unavailable { .. }) => Exit::DaemonUnavailable,
            AppError::Docker(DockerError::Interrupted { .. }) | AppError::Interrupted => {
                Exit::Interrupted
            }
            AppError::ImagesFailed { .. } => Exit::ImagesFailed,
        }
    }
}

/// Runs a validated configuration until done or `shutdown` fires.
pub async fn execute(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    match config {
        Config::Path(images) => {
            print_paths(&images);
            Ok(())
        }
        Config::Warm(config) => warm(config, shutdown).await,
        Config::Run(config) => run(config, shutdown).await,
    }
}

fn print_paths(images: &[ImageSpec]) {
    let mut out = std::io::stdout().lock();
    for image in images {
        // A closed pipe (`| head`) is not an error worth reporting.
        if writeln!(out, "{}", image.archive.display()).is_err() {
            return;
        }
    }
}

/// Removes leftovers of killed runs and waits for the daemon.
async fn prepare(
    config: &PreloadConfig,
    shutdown: &CancellationToken,
) -> Result<Preloader<DockerDaemon>, DockerError> {
    info!(
        images = config.images.len(),
        dir = %config.dir.display(),
        max_image_age = %config.max_age,
        concurrency = config.concurrency,
        "image-preloader {}",
        env!("CARGO_PKG_VERSION")
    );
    let store = ArchiveStore::new(&config.dir);
    match store.remove_leftovers() {
        Ok(removed) => {
            for path in removed {
                info!(path = %path.display(), "removed a temporary file left by an interrupted run");
            }
        }
        Err(e) => warn!("could not clean up leftovers: {e}"),
    }
    let (daemon, about) =
        DockerDaemon::wait_until_ready(&config.docker_host, config.wait_timeout, shutdown).await?;
    info!(
        docker_host = daemon.host(),
        version = %about.version,
        api_version = %about.api_version,
        "connected to the docker daemon"
    );
    Ok(Preloader::new(
        daemon,
        store,
        config.max_age,
        config.concurrency,
    ))
}

async fn warm(config: PreloadConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let preloader = prepare(&config, &shutdown).await?;
    let report = preloader.pass(&config.images, &shutdown).await;
    cycle::log_pass(1, &report, None);
    if report.cancelled() > 0 || shutdown.is_cancelled() {
        return Err(AppError::Interrupted);
    }
    match report.failed() {
        0 => Ok(()),
        failed => Err(AppError::ImagesFailed {
            failed,
            total: report.outcomes.len(),
        }),
    }
}

async fn run(config: RunConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let preloader = match prepare(&config.preload, &shutdown).await {
        Ok(preloader) => preloader,
        // Shutdown while waiting for the daemon is a normal end for the sidecar.
        Err(DockerError::Interrupted { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let (_list, images) = watch::channel(config.preload.images.clone());
    let pass_shutdown = shutdown.clone();
    cycle::run(images, config.interval, shutdown, |due| {
        let preloader = &preloader;
        let cancel = pass_shutdown.clone();
        async move { preloader.pass(&due, &cancel).await }
    })
    .await;
    Ok(())
}

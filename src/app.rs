//! The commands, wired together: what `main` calls once the configuration is valid.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::archive::{ArchiveError, ArchiveStore};
use crate::config::{Config, LoadConfig, PreloadConfig, RunConfig};
use crate::cycle;
use crate::docker::{DockerDaemon, DockerError};
use crate::human;
use crate::images::ImageSpec;
use crate::load::{self, LoadOutcome, LoadTarget};
use crate::pass::Preloader;
use crate::prune;
use crate::record::record_path;
use crate::verify;

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
    #[error("{problems} of {total} archives in {dir} need attention")]
    VerifyFailed { problems: usize, total: usize, dir: PathBuf },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{problems} of {total} archives could not be loaded")]
    LoadFailed { problems: usize, total: usize },
}

impl AppError {
    /// The exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            AppError::Docker(DockerError::UnsupportedHost { .. }) => Exit::Usage,
            AppError::Docker(DockerError::Unavailable { .. }) => Exit::DaemonUnavailable,
            AppError::Docker(DockerError::Interrupted { .. }) | AppError::Interrupted => Exit::Interrupted,
            AppError::ImagesFailed { .. }
            | AppError::VerifyFailed { .. }
            | AppError::LoadFailed { .. }
            | AppError::Archive(_) => Exit::ImagesFailed,
        }
    }
}

/// Runs a validated configuration until done or `shutdown` fires.
pub async fn execute(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    match config {
        Config::Path { images, record } => {
            print_paths(&images, record);
            Ok(())
        }
        Config::Verify { dir } => verify(dir).await,
        Config::Load(config) => load(config, shutdown).await,
        Config::Warm(config) => warm(config, shutdown).await,
        Config::Run(config) => run(config, shutdown).await,
    }
}

fn print_paths(images: &[ImageSpec], record: bool) {
    let mut out = std::io::stdout().lock();
    for image in images {
        let path = if record { record_path(&image.archive) } else { image.archive.clone() };
        // A closed pipe (`| head`) is not an error worth reporting.
        if writeln!(out, "{}", path.display()).is_err() {
            return;
        }
    }
}

async fn verify(dir: PathBuf) -> Result<(), AppError> {
    let store = ArchiveStore::new(&dir);
    let report =
        tokio::task::spawn_blocking(move || verify::verify(&store)).await.expect("verify task panicked")?;
    let mut out = std::io::stdout().lock();
    for (path, finding) in &report.findings {
        let _ = writeln!(out, "{:<10} {}: {finding}", finding.label(), path.display());
    }
    let problems = report.problems();
    info!(archives = report.findings.len(), problems, dir = %dir.display(), "verified");
    match problems {
        0 => Ok(()),
        problems => Err(AppError::VerifyFailed { problems, total: report.findings.len(), dir }),
    }
}

/// The archives `load` should load: the given paths, the images' archives, and with `--all`
/// everything in the directory; each once, in that order.
fn load_targets(config: &LoadConfig) -> Result<Vec<LoadTarget>, ArchiveError> {
    let mut targets: Vec<LoadTarget> = Vec::new();
    let mut add = |label: String, path: PathBuf| {
        if !targets.iter().any(|t| t.path == path) {
            targets.push(LoadTarget { label, path });
        }
    };
    for archive in &config.archives {
        add(archive.display().to_string(), config.dir.join(archive));
    }
    for image in &config.images {
        add(image.archive.display().to_string(), config.dir.join(&image.archive));
    }
    if config.all {
        let found = ArchiveStore::new(&config.dir).archives()?;
        if found.is_empty() {
            warn!(dir = %config.dir.display(), "--all: no archives in the directory");
        }
        for relative in found {
            add(relative.display().to_string(), config.dir.join(relative));
        }
    }
    Ok(targets)
}

async fn load(config: LoadConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let targets = load_targets(&config)?;
    let result = match DockerDaemon::wait_until_ready(&config.docker_host, config.wait_timeout, &shutdown)
        .await
    {
        Ok((daemon, about)) => {
            info!(docker_host = daemon.host(), version = %about.version, archives = targets.len(), "connected to the docker daemon");
            let outcomes = load::load_all(&daemon, &targets, config.concurrency, &shutdown).await;
            report_loads(&outcomes, config.strict)
        }
        Err(DockerError::Interrupted { .. }) if config.idle => return Ok(()),
        Err(e) => Err(e.into()),
    };
    if config.idle && !shutdown.is_cancelled() {
        if let Err(e) = &result {
            warn!("{e}");
        }
        info!("idling until SIGTERM (--idle)");
        shutdown.cancelled().await;
        return Ok(());
    }
    result
}

/// Prints one line per archive and a summary; the error says how many need attention.
fn report_loads(outcomes: &[(LoadTarget, LoadOutcome)], strict: bool) -> Result<(), AppError> {
    let mut out = std::io::stdout().lock();
    let (mut loaded, mut bytes) = (0, 0);
    let count = |label: &str| outcomes.iter().filter(|(_, o)| o.label() == label).count();
    for (target, outcome) in outcomes {
        let detail = match outcome {
            LoadOutcome::Loaded { images, bytes: b, elapsed } => {
                loaded += 1;
                bytes += b;
                format!("{} in {}: {}", human::bytes(*b), human::duration(*elapsed), images.join(", "))
            }
            LoadOutcome::Present => "the daemon already has it".to_owned(),
            LoadOutcome::Missing => format!("no file at {}", target.path.display()),
            LoadOutcome::Damaged(why) | LoadOutcome::Failed(why) => why.clone(),
            LoadOutcome::Cancelled => "interrupted".to_owned(),
        };
        let _ = writeln!(out, "{:<9} {}: {detail}", outcome.label(), target.label);
    }
    let (present, missing, damaged, failed, cancelled) =
        (count("present"), count("missing"), count("damaged"), count("failed"), count("cancelled"));
    let summary = format!(
        "{loaded} loaded ({}), {present} already present, {missing} missing, {damaged} damaged, {failed} failed",
        human::bytes(bytes)
    );
    let problems = damaged + failed + cancelled + if strict { missing } else { 0 };
    if problems > 0 {
        warn!(loaded, present, missing, damaged, failed, "{summary}");
        return Err(AppError::LoadFailed { problems, total: outcomes.len() });
    }
    info!(loaded, present, missing, damaged, failed, "{summary}");
    Ok(())
}

/// `--prune`: removes recorded archives not in `images`. Failures are logged, not fatal.
fn prune_unlisted(store: &ArchiveStore, images: &[ImageSpec]) {
    let wanted: HashSet<PathBuf> = images.iter().map(|i| i.archive.clone()).collect();
    match prune::prune(store, &wanted) {
        Ok(removed) if !removed.is_empty() => {
            info!(pruned = removed.len(), "pruned archives no longer listed")
        }
        Ok(_) => {}
        Err(e) => warn!("prune stopped: {e}"),
    }
}

fn log_leftovers(dir: &Path) {
    match ArchiveStore::new(dir).remove_leftovers() {
        Ok(removed) => {
            for path in removed {
                info!(path = %path.display(), "removed a temporary file left by an interrupted run");
            }
        }
        Err(e) => warn!("could not clean up leftovers: {e}"),
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
        refresh_policy = ?config.refresh,
        min_free = %config.min_free,
        prune = config.prune,
        concurrency = config.concurrency,
        "image-preloader {}",
        env!("CARGO_PKG_VERSION")
    );
    log_leftovers(&config.dir);
    let (daemon, about) =
        DockerDaemon::wait_until_ready(&config.docker_host, config.wait_timeout, shutdown).await?;
    info!(
        docker_host = daemon.host(),
        version = %about.version,
        api_version = %about.api_version,
        "connected to the docker daemon"
    );
    Ok(Preloader::new(daemon, ArchiveStore::new(&config.dir), config.settings()))
}

async fn warm(config: PreloadConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let preloader = prepare(&config, &shutdown).await?;
    let report = preloader.pass(&config.images, &shutdown).await;
    cycle::log_pass(1, &report, None);
    if report.cancelled() > 0 || shutdown.is_cancelled() {
        return Err(AppError::Interrupted);
    }
    if config.prune {
        prune_unlisted(preloader.store(), &config.images);
    }
    match report.failed() {
        0 => Ok(()),
        failed => Err(AppError::ImagesFailed { failed, total: report.outcomes.len() }),
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
    let current = images.clone();
    let pass_shutdown = shutdown.clone();
    let prune = config.preload.prune;
    cycle::run(images, config.interval, shutdown, |due| {
        let preloader = &preloader;
        let cancel = pass_shutdown.clone();
        let current = current.clone();
        async move {
            let report = preloader.pass(&due, &cancel).await;
            if prune && !cancel.is_cancelled() {
                let listed = current.borrow().clone();
                prune_unlisted(preloader.store(), &listed);
            }
            report
        }
    })
    .await;
    Ok(())
}

//! `load`: the archives to load, loading them into the runner's daemon, and the report.

use std::io::Write;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::AppError;
use crate::config::LoadConfig;
use crate::daemon::load::{Deadline, LoadOutcome, LoadTarget, load_all};
use crate::daemon::{DockerDaemon, DockerError};
use crate::human;
use crate::store::{ArchiveStore, StoreError};

/// The archives `load` should load: the given paths, the images' archives, and with `--all`
/// everything in the directory; each once, in that order.
async fn load_targets(config: &LoadConfig) -> Result<Vec<LoadTarget>, StoreError> {
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
        let walk = ArchiveStore::new(&config.dir).archives().await;
        if let Some((path, why)) = walk.unreadable.into_iter().next() {
            return Err(StoreError::Stat { path, source: std::io::Error::other(why) });
        }
        let found = walk.found;
        if found.is_empty() {
            warn!(dir = %config.dir.display(), "--all: no archives in the directory");
        }
        for relative in found {
            add(relative.display().to_string(), config.dir.join(relative));
        }
    }
    Ok(targets)
}

pub(super) async fn load(config: LoadConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let started = tokio::time::Instant::now();
    let deadline = config.deadline.map(|after| Deadline { at: started + after, after });
    let targets = load_targets(&config).await?;
    // The deadline bounds the wait for the daemon too.
    let wait = config.deadline.map_or(config.wait_timeout, |d| d.min(config.wait_timeout));
    let result = match DockerDaemon::wait_until_ready(&config.docker_host, wait, &shutdown).await {
        Ok((daemon, about)) => {
            let daemon = daemon.with_stall_timeout(config.stall_timeout);
            info!(docker_host = daemon.host(), version = %about.version, archives = targets.len(), "connected to the docker daemon");
            let outcomes =
                load_all(&daemon, about.platform.as_ref(), &targets, config.concurrency, deadline, &shutdown)
                    .await;
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

/// Prints one line per archive and a summary. Archives not loaded are skipped, not fatal, unless
/// `strict`; an interrupted run is an error either way.
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
            LoadOutcome::Damaged(why) | LoadOutcome::Failed(why) | LoadOutcome::Skipped(why) => why.clone(),
            LoadOutcome::Cancelled => "interrupted".to_owned(),
        };
        let _ = writeln!(out, "{:<9} {}: {detail}", outcome.label(), target.label);
    }
    let (present, missing, damaged, failed, skipped, cancelled) = (
        count("present"),
        count("missing"),
        count("damaged"),
        count("failed"),
        count("skipped"),
        count("cancelled"),
    );
    let summary = format!(
        "{loaded} loaded ({}), {present} already present, {missing} missing, {damaged} damaged, {failed} failed, {skipped} skipped at the deadline",
        human::bytes(bytes)
    );
    let not_loaded = missing + damaged + failed + skipped;
    if cancelled > 0 {
        warn!(loaded, present, missing, damaged, failed, skipped, "{summary}");
        return Err(AppError::Interrupted);
    }
    if not_loaded == 0 {
        info!(loaded, present, missing, damaged, failed, skipped, "{summary}");
        return Ok(());
    }
    warn!(loaded, present, missing, damaged, failed, skipped, "{summary}");
    if strict {
        return Err(AppError::LoadFailed { problems: not_loaded, total: outcomes.len() });
    }
    info!("{not_loaded} archive(s) not loaded: the job pulls what it lacks (--strict makes this an error)");
    Ok(())
}

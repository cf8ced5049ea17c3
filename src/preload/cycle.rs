//! The `run` loop: passes over the image list on a schedule until shutdown.
//!
//! The loop `select!`s between a pass, the timer for the next due image, a new image list and the
//! shutdown token, so tests drive it with a paused clock and a plain pass function.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::human;
use crate::image::list::ImageSpec;
use crate::preload::outcome::{FailureKind, Outcome, PassReport};
use crate::preload::schedule::{FIRST_SLOW_RETRY, Schedule};
use crate::preload::status::StatusFeed;

/// Totals over the whole run, returned at shutdown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Passes started.
    pub passes: u64,
    /// Archives built.
    pub built: u64,
    /// Image failures (each retry that failed counts).
    pub failures: u64,
}

/// Runs passes until `cancel` fires. `images` carries the list; sending a new list replaces it
/// without a restart (images already known keep their schedule, new ones are due at once). What
/// the loop learns is published on `feed`.
pub async fn run<F, Fut>(
    mut images: watch::Receiver<Vec<ImageSpec>>,
    interval: Duration,
    cancel: CancellationToken,
    feed: StatusFeed,
    mut pass: F,
) -> RunSummary
where
    F: FnMut(Vec<ImageSpec>) -> Fut,
    Fut: Future<Output = PassReport>,
{
    let mut list = images.borrow_and_update().clone();
    feed.set_list(&list);
    let mut schedule: Schedule<PathBuf> =
        Schedule::new(list.iter().map(|i| i.archive.clone()), interval, Instant::now());
    let mut summary = RunSummary::default();
    let mut list_open = true;

    loop {
        let due_keys = schedule.due(Instant::now());
        if !due_keys.is_empty() {
            let due: Vec<ImageSpec> =
                list.iter().filter(|i| due_keys.contains(&i.archive)).cloned().collect();
            summary.passes += 1;
            feed.pass_started();
            let report = pass(due).await;
            let now = Instant::now();
            let mut retry: Option<Duration> = None;
            for (image, outcome) in &report.outcomes {
                match outcome {
                    Outcome::Built(_) | Outcome::Kept(_) | Outcome::Unchanged => {
                        schedule.succeeded(&image.archive, now)
                    }
                    // Credentials refused, image or platform missing: not fixed by retrying soon.
                    Outcome::Failed(failure)
                        if matches!(failure.kind, FailureKind::Auth | FailureKind::NotFound) =>
                    {
                        let delay = schedule.failed_after(&image.archive, now, FIRST_SLOW_RETRY);
                        retry = Some(retry.map_or(delay, |r| r.min(delay)));
                    }
                    // Kept, but the registry could not be asked: check again soon.
                    Outcome::Failed(_) | Outcome::Unverified(_) => {
                        let delay = schedule.failed(&image.archive, now);
                        retry = Some(retry.map_or(delay, |r| r.min(delay)));
                    }
                    Outcome::Cancelled => {}
                }
            }
            summary.built += report.built() as u64;
            summary.failures += report.failed() as u64;
            feed.record_pass(summary.passes, &report);
            log_pass(summary.passes, &report, retry);
        }
        if cancel.is_cancelled() {
            break;
        }

        feed.heartbeat();
        let next = schedule.next_due();
        if let Some(next) = next {
            info!("next check in {}", human::duration(next.saturating_duration_since(Instant::now())));
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep_until(next) => {}
            changed = images.changed(), if list_open => match changed {
                Ok(()) => {
                    list = images.borrow_and_update().clone();
                    feed.set_list(&list);
                    schedule.replace(list.iter().map(|i| i.archive.clone()), Instant::now());
                    info!(images = list.len(), "image list replaced");
                }
                Err(_) => list_open = false,
            },
        }
    }
    info!(passes = summary.passes, built = summary.built, failures = summary.failures, "shutting down");
    summary
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Logs the one-line summary of a pass; `retry` is the delay before failed or unverified images
/// are tried again.
pub fn log_pass(number: u64, report: &PassReport, retry: Option<Duration>) {
    let mut line = format!(
        "pass {number} complete in {}: {} built ({}), {} up to date",
        human::duration(report.elapsed),
        report.built(),
        human::bytes(report.bytes_written()),
        report.kept(),
    );
    if report.unchanged() > 0 {
        line.push_str(&format!(" ({} confirmed unchanged by the registry)", report.unchanged()));
    }
    if report.unverified() > 0 {
        line.push_str(&format!(", {} not verifiable (registry unreachable)", report.unverified()));
    }
    line.push_str(&format!(", {} failed", report.failed()));
    if report.cancelled() > 0 {
        line.push_str(&format!(", {} abandoned", report.cancelled()));
    }
    if let Some(delay) = retry {
        line.push_str(&format!("; retrying in {}", human::duration(delay)));
    }
    macro_rules! emit {
        ($level:ident) => {
            $level!(
                pass = number,
                built = report.built(),
                up_to_date = report.kept(),
                unchanged = report.unchanged(),
                unverified = report.unverified(),
                failed = report.failed(),
                bytes = report.bytes_written(),
                "{line}"
            )
        };
    }
    if report.failed() > 0 || report.unverified() > 0 { emit!(warn) } else { emit!(info) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::reference::Reference;
    use crate::preload::outcome::{Failure, FailureKind, Step};
    use crate::preload::policy::KeepReason;
    use std::sync::{Arc, Mutex};

    const HOUR: Duration = Duration::from_secs(3600);

    /// (seconds since start, images in the pass) for each pass.
    type PassLog = Arc<Mutex<Vec<(u64, Vec<String>)>>>;

    fn spec(name: &str) -> ImageSpec {
        ImageSpec::new(Reference::parse(name).unwrap())
    }

    /// A pass that fails `bad` the first `fail_times` times and records (time, names) per call.
    fn recording_pass(
        start: Instant,
        bad: &'static str,
        fail_times: usize,
        log: PassLog,
    ) -> impl FnMut(Vec<ImageSpec>) -> std::future::Ready<PassReport> {
        let mut failures_left = fail_times;
        move |due: Vec<ImageSpec>| {
            let names: Vec<String> = due.iter().map(|i| i.reference.to_string()).collect();
            log.lock().unwrap().push((start.elapsed().as_secs(), names));
            let outcomes = due
                .into_iter()
                .map(|image| {
                    let outcome = if image.reference.to_string() == bad && failures_left > 0 {
                        failures_left -= 1;
                        Outcome::Failed(Failure::new(Step::Pull, FailureKind::Transient, "boom"))
                    } else {
                        Outcome::Kept(KeepReason::RefreshDisabled)
                    };
                    (image, outcome)
                })
                .collect();
            std::future::ready(PassReport { outcomes, elapsed: Duration::ZERO })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passes_every_interval_and_retries_failures_with_backoff() {
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (_tx, rx) = watch::channel(vec![spec("good:1"), spec("bad:1")]);
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOUR * 2 + Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let summary =
            run(rx, HOUR, cancel, StatusFeed::new(), recording_pass(start, "bad:1", 3, log.clone())).await;

        let calls = log.lock().unwrap().clone();
        let expected: Vec<(u64, Vec<String>)> = vec![
            (0, vec!["good:1".into(), "bad:1".into()]),
            (30, vec!["bad:1".into()]),    // first retry after 30 s
            (90, vec!["bad:1".into()]),    // then 60 s
            (210, vec!["bad:1".into()]),   // then 120 s: succeeds
            (3600, vec!["good:1".into()]), // one interval after the first pass
            (3810, vec!["bad:1".into()]),  // one interval after its success
            (7200, vec!["good:1".into()]),
        ];
        assert_eq!(calls, expected);
        assert_eq!(summary, RunSummary { passes: 7, built: 0, failures: 3 });
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_at_once() {
        let (_tx, rx) = watch::channel(vec![spec("a:1")]);
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stopper.cancel();
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let summary = run(rx, HOUR, cancel, StatusFeed::new(), recording_pass(start, "", 0, log)).await;
        assert_eq!(summary.passes, 1);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_list_is_taken_without_a_restart() {
        let start = Instant::now();
        let (tx, rx) = watch::channel(vec![spec("a:1")]);
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.send(vec![spec("a:1"), spec("b:1")]).unwrap();
            tokio::time::sleep(HOUR - Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        run(rx, HOUR, cancel, StatusFeed::new(), recording_pass(start, "", 0, log.clone())).await;
        let calls = log.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                (0, vec!["a:1".to_string()]),
                (10, vec!["b:1".to_string()]),
                (3600, vec!["a:1".to_string()]),
            ]
        );
    }
}

//! Progress for people: what `warm` and `load` are doing to each image, as bars on a terminal
//! (`indicatif`) or as an occasional log line elsewhere. The work reports through [`item`]; what
//! is shown is chosen once, by [`install`], and nothing is shown unless it was called (`run`,
//! tests and the library never show progress).

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

use crate::human;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A bar per image on stderr (a terminal).
    Bars,
    /// A log line per image at most every [`LINE_EVERY`], once it has run that long.
    Lines,
    /// Nothing (`--quiet`).
    Off,
}

/// The least time between two progress lines for one image (and before the first one).
pub const LINE_EVERY: Duration = Duration::from_secs(5);

enum Front {
    Bars(MultiProgress),
    Lines,
}

static FRONT: OnceLock<Front> = OnceLock::new();

/// Chooses how progress is shown for the rest of the process; the first call wins.
pub fn install(display: Display) {
    let front = match display {
        Display::Bars => Front::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4))),
        Display::Lines => Front::Lines,
        Display::Off => return,
    };
    let _ = FRONT.set(front);
}

/// Whether bars are being drawn (then a summary table follows the work).
pub fn bars() -> bool {
    matches!(FRONT.get(), Some(Front::Bars(_)))
}

/// Runs `write` with the bars cleared, so that a log line does not tear them.
pub fn suspend<R>(write: impl FnOnce() -> R) -> R {
    match FRONT.get() {
        Some(Front::Bars(multi)) => multi.suspend(write),
        _ => write(),
    }
}

/// The progress of one image or archive; its bar goes away when it is dropped.
pub struct Item(Shown);

enum Shown {
    Nothing,
    Bar(ProgressBar),
    Lines(Mutex<LineState>),
}

struct LineState {
    label: String,
    phase: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
}

/// Starts showing `label` (an image reference or an archive) in `phase` (`pulling`, `saving`,
/// `loading`), with `total` bytes to go if known.
pub fn item(label: &str, phase: &'static str, total: Option<u64>) -> Item {
    match FRONT.get() {
        None => Item(Shown::Nothing),
        Some(Front::Bars(multi)) => {
            let bar = multi.add(ProgressBar::hidden());
            bar.set_prefix(label.to_owned());
            set_bar(&bar, phase, total);
            bar.enable_steady_tick(Duration::from_millis(250));
            Item(Shown::Bar(bar))
        }
        Some(Front::Lines) => {
            let now = Instant::now();
            Item(Shown::Lines(Mutex::new(LineState {
                label: label.to_owned(),
                phase,
                total,
                done: 0,
                started: now,
                last: now,
            })))
        }
    }
}

fn set_bar(bar: &ProgressBar, phase: &'static str, total: Option<u64>) {
    let template = match total {
        Some(_) => {
            "{prefix:.bold} {msg:8} [{bar:25.cyan/blue}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} ETA {eta}"
        }
        None => "{prefix:.bold} {msg:8} {spinner} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
    };
    let style = ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ");
    match total {
        Some(total) => bar.set_length(total),
        None => bar.unset_length(),
    }
    bar.set_position(0);
    bar.reset_eta();
    bar.set_style(style);
    bar.set_message(phase);
}

impl Item {
    /// Moves on to `phase`, counting bytes from zero again.
    pub fn phase(&self, phase: &'static str, total: Option<u64>) {
        match &self.0 {
            Shown::Nothing => {}
            Shown::Bar(bar) => set_bar(bar, phase, total),
            Shown::Lines(state) => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                (state.phase, state.total, state.done, state.started, state.last) =
                    (phase, total, 0, now, now);
            }
        }
    }

    /// Counts `bytes` more done.
    pub fn inc(&self, bytes: u64) {
        match &self.0 {
            Shown::Nothing => {}
            Shown::Bar(bar) => {
                bar.inc(bytes);
                // An image's size is an estimate of its archive's: never show more than 100%.
                if bar.length().is_some_and(|len| bar.position() > len) {
                    bar.set_length(bar.position());
                }
            }
            Shown::Lines(state) => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.done += bytes;
                let now = Instant::now();
                if now.duration_since(state.last) >= LINE_EVERY {
                    state.last = now;
                    info!("{}", line(&state, now));
                }
            }
        }
    }
}

/// `saving REF: 1.2 GiB of 3.0 GiB (40%), 110 MiB/s, about 17s left`
fn line(state: &LineState, now: Instant) -> String {
    let elapsed = now.duration_since(state.started);
    let rate = state.done as f64 / elapsed.as_secs_f64().max(0.001);
    let mut line = format!("{} {}: {}", state.phase, state.label, human::bytes(state.done));
    if let Some(total) = state.total.filter(|t| *t > 0) {
        let percent = (state.done as f64 * 100.0 / total as f64).min(100.0);
        line.push_str(&format!(" of {} ({percent:.0}%)", human::bytes(total)));
    }
    line.push_str(&format!(", {}/s", human::bytes(rate as u64)));
    if let Some(total) = state.total
        && rate > 0.0
        && total > state.done
    {
        let left = Duration::from_secs_f64((total - state.done) as f64 / rate);
        line.push_str(&format!(", about {} left", human::duration(Duration::from_secs(left.as_secs()))));
    }
    line
}

impl Drop for Item {
    fn drop(&mut self) {
        if let Shown::Bar(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_gives_bytes_share_rate_and_time_left() {
        let start = Instant::now();
        let state = LineState {
            label: "busybox:1".into(),
            phase: "saving",
            total: Some(300 << 20),
            done: 100 << 20,
            started: start,
            last: start,
        };
        let text = line(&state, start + Duration::from_secs(10));
        assert_eq!(text, "saving busybox:1: 100.0 MiB of 300.0 MiB (33%), 10.0 MiB/s, about 20.0s left");
        let unknown = LineState { total: None, ..state };
        assert_eq!(
            line(&unknown, start + Duration::from_secs(10)),
            "saving busybox:1: 100.0 MiB, 10.0 MiB/s"
        );
    }

    #[test]
    fn without_install_an_item_shows_nothing_and_costs_nothing() {
        let item = item("x", "saving", Some(10));
        item.inc(5);
        item.phase("loading", None);
        assert!(matches!(item.0, Shown::Nothing));
    }
}

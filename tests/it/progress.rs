//! Progress for people: bars on a terminal (a pseudo-terminal through `script`, whose screen is
//! read back), nothing drawn elsewhere, `--quiet`, and configuration errors as JSON lines.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, TestImage, run, unique};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the binary with `args` on a pseudo-terminal (`script`), with the environment
/// [`support::preloader`] gives it plus `extra`; returns what the terminal received.
fn on_a_terminal(args: &[&str], extra: &[(&str, &str)]) -> support::Finished {
    let inner = support::preloader(args);
    let mut cmd = Command::new("script");
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.envs(extra.iter().copied()).env("TERM", "xterm").env("COLUMNS", "200");
    let quoted: Vec<String> = std::iter::once(support::BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    cmd.args(["-q", "-e", "-c", &quoted.join(" "), "/dev/null"]);
    run(cmd, TIMEOUT)
}

/// What a terminal shows of `raw`: escape sequences dropped, and every piece of text between
/// carriage returns and line feeds (each redraw of a bar is one).
fn screen(raw: &str) -> Vec<String> {
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters up to the final byte (@ to ~).
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        text.push(c);
    }
    text.split(['\r', '\n']).map(|l| l.trim_end().to_owned()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn warm_and_load_on_a_terminal_draw_bars_then_a_summary() {
    // Large enough that a bar is drawn (4 times a second) while the archive is written.
    let image = TestImage::push_with_data(&unique("ipt/progress"), "1.0", 48 << 20);
    let dir = tempfile::tempdir().unwrap();
    let warmed = on_a_terminal(
        &["warm", "--mode", "daemon", "--dir", dir.path().to_str().unwrap(), &image.reference],
        &[],
    );
    let shown = screen(&warmed.stdout);
    assert_eq!(warmed.status.code(), Some(0), "{}", shown.join("\n"));
    // A bar: the reference, the step, bytes of the total (about 48 MiB), a rate and the time left.
    let bars: Vec<&String> =
        shown.iter().filter(|l| l.contains(&image.reference) && l.contains("saving")).collect();
    assert!(
        bars.iter().any(|l| l.contains('[') && l.contains(" MiB/4") && l.contains("/s ETA")),
        "no saving bar with bytes of the total on the screen:\n{}",
        shown.join("\n")
    );
    // Then the summary table.
    let header =
        shown.iter().position(|l| l.starts_with("IMAGE") && l.contains("RESULT")).unwrap_or_else(|| {
            panic!("no summary table:\n{}", shown.join("\n"));
        });
    let row = &shown[header + 1];
    assert!(row.starts_with(&image.reference) && row.contains("built") && row.contains("MiB"), "{row}");

    // `load` into a daemon without the image: a loading bar, then its report.
    image.remove_local();
    let loaded = on_a_terminal(&["load", "--dir", dir.path().to_str().unwrap(), "--all"], &[]);
    let shown = screen(&loaded.stdout);
    assert_eq!(loaded.status.code(), Some(0), "{}", shown.join("\n"));
    assert!(
        shown.iter().any(|l| l.contains("loading") && l.contains("MiB")),
        "no loading bar:\n{}",
        shown.join("\n")
    );
    assert!(shown.iter().any(|l| l.starts_with("loaded")), "{}", shown.join("\n"));
    assert!(image.is_local());

    // --quiet (here from the environment): the same work with nothing drawn.
    image.remove_local();
    let quiet = on_a_terminal(
        &["load", "--dir", dir.path().to_str().unwrap(), "--all"],
        &[("IMAGE_PRELOADER_QUIET", "true")],
    );
    let shown = screen(&quiet.stdout);
    assert_eq!(quiet.status.code(), Some(0), "{}", shown.join("\n"));
    assert!(!shown.iter().any(|l| l.contains("loading")), "{}", shown.join("\n"));
    assert!(shown.iter().any(|l| l.starts_with("loaded")), "{}", shown.join("\n"));
}

#[test]
fn off_a_terminal_nothing_is_drawn() {
    let image = TestImage::push(&unique("ipt/progress-pipe"), "1.0");
    let dir = tempfile::tempdir().unwrap();
    let finished = run(
        support::preloader(&[
            "warm",
            "--mode",
            "daemon",
            "--dir",
            dir.path().to_str().unwrap(),
            &image.reference,
        ]),
        TIMEOUT,
    );
    finished.assert_code(0);
    assert!(!finished.stderr.contains('\u{1b}'), "escape sequences off a terminal:\n{}", finished.stderr);
    assert!(!finished.stderr.contains("RESULT"), "{}", finished.stderr);
    assert!(finished.stderr.contains("pass 1 complete"), "{}", finished.stderr);
}

#[test]
fn configuration_errors_honour_log_format_json() {
    let json_lines = |stderr: &str| -> Vec<serde_json::Value> {
        stderr
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{stderr}"))
            })
            .collect()
    };
    // A bad reference (found by the configuration), with the flag.
    let bad = run(support::preloader(&["--log-format", "json", "warm", "Not A Reference"]), TIMEOUT);
    bad.assert_code(2);
    let lines = json_lines(&bad.stderr);
    assert_eq!(lines.len(), 1, "{}", bad.stderr);
    assert_eq!(lines[0]["level"], "ERROR");
    assert!(lines[0]["message"].as_str().unwrap().contains("Not A Reference"), "{}", bad.stderr);
    // A bad flag value (found by the parser), with the format from the environment.
    let mut cmd = support::preloader(&["run", "--interval", "soon", "busybox:1"]);
    cmd.env("IMAGE_PRELOADER_LOG_FORMAT", "json");
    let unparsed = run(cmd, TIMEOUT);
    unparsed.assert_code(2);
    let lines = json_lines(&unparsed.stderr);
    assert!(lines[0]["message"].as_str().unwrap().contains("--interval"), "{}", unparsed.stderr);
    // Text stays as it was.
    let text = run(support::preloader(&["warm", "Not A Reference"]), TIMEOUT);
    text.assert_code(2);
    assert!(text.stderr.starts_with("error: "), "{}", text.stderr);
}

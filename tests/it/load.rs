//! `load`: archives into a runner's daemon.

use std::time::Duration;

use crate::support::{ReadOnlyView, Running, TestImage, docker, preloader, run, snapshot, unique};

const TIMEOUT: Duration = Duration::from_secs(120);

struct Warmed {
    images: Vec<TestImage>,
    dir: tempfile::TempDir,
    names: Vec<String>,
}

/// Pushes `count` images, warms them into a new directory and removes them from the daemon.
fn warmed(label: &str, count: usize) -> Warmed {
    let name = unique(label);
    let images: Vec<TestImage> =
        (0..count).map(|i| TestImage::push(&format!("ipt/{name}-{i}"), "1")).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["warm", "--dir", dir.path().to_str().unwrap()];
    args.extend(images.iter().map(|i| i.reference.as_str()));
    run(preloader(&args), TIMEOUT).assert_code(0);
    for image in &images {
        image.remove_local();
    }
    let names = (0..count).map(|i| format!("ipt/{name}-{i}_1.tar")).collect();
    Warmed { images, dir, names }
}

fn load(dir: &std::path::Path, args: &[&str]) -> crate::support::Finished {
    let mut all = vec!["load", "--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    run(preloader(&all), TIMEOUT)
}

#[test]
fn load_all_restores_every_image_and_a_second_load_writes_nothing() {
    let warmed = warmed("load", 3);
    // The runner pod mounts the hostPath read-only: so does this test.
    let view = ReadOnlyView::of(warmed.dir.path());
    let out = load(view.path(), &["--all"]);
    out.assert_code(0);
    for (image, name) in warmed.images.iter().zip(&warmed.names) {
        assert!(out.stdout.lines().any(|l| l.starts_with("loaded") && l.contains(name)), "{}", out.stdout);
        assert!(image.is_local(), "{} is back", image.reference);
        let id = docker(&["image", "inspect", "--format", "{{.Id}}", &image.reference]);
        assert_eq!(id, image.id, "same image ID, same tag");
        assert_eq!(docker(&["run", "--rm", "--network", "none", &image.reference]), image.marker);
    }
    assert!(out.stderr.contains("3 loaded"), "{}", out.stderr);

    let before = snapshot(warmed.dir.path());
    let out = load(view.path(), &["--all"]);
    out.assert_code(0);
    assert_eq!(out.stdout.lines().filter(|l| l.starts_with("present")).count(), 3, "{}", out.stdout);
    assert!(out.stderr.contains("0 loaded (0 B), 3 already present"), "{}", out.stderr);
    assert_eq!(snapshot(warmed.dir.path()), before, "nothing written to the archive directory");
}

#[test]
fn damaged_archives_are_refused_while_the_others_load() {
    let warmed = warmed("loaddamage", 3);
    let dir = warmed.dir.path();
    let truncated = dir.join(&warmed.names[0]);
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(len - 4096).unwrap();
    let flipped = dir.join(&warmed.names[1]);
    let mut bytes = std::fs::read(&flipped).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(&flipped, bytes).unwrap();

    let out = load(dir, &["--all"]);
    out.assert_code(1);
    let line = |name: &str| out.stdout.lines().find(|l| l.contains(name)).unwrap_or_default().to_owned();
    assert!(
        line(&warmed.names[0]).starts_with("damaged")
            && line(&warmed.names[0]).contains("archive ends early"),
        "{}",
        out.stdout
    );
    assert!(
        line(&warmed.names[1]).starts_with("damaged") && line(&warmed.names[1]).contains("sha256"),
        "{}",
        out.stdout
    );
    assert!(line(&warmed.names[2]).starts_with("loaded"), "{}", out.stdout);
    assert!(!warmed.images[0].is_local() && !warmed.images[1].is_local(), "damaged archives are not sent");
    assert!(warmed.images[2].is_local());
    assert!(out.stderr.contains("2 of 3 archives could not be loaded"), "{}", out.stderr);
}

#[test]
fn missing_archives_warn_unless_strict() {
    let warmed = warmed("loadmissing", 1);
    let dir = warmed.dir.path();
    let out = load(dir, &[&warmed.names[0], "ipt/not-there_1.tar"]);
    out.assert_code(0);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("missing") && l.contains("ipt/not-there_1.tar")),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("missing: no archive at this path"), "{}", out.stderr);
    assert!(warmed.images[0].is_local());

    let out = load(dir, &["--strict", &warmed.names[0], "ipt/not-there_1.tar"]);
    out.assert_code(1);
    assert!(out.stdout.lines().any(|l| l.starts_with("present")), "{}", out.stdout);
}

#[test]
fn images_are_chosen_by_reference_with_the_daemonsets_list() {
    let warmed = warmed("loadref", 3);
    let dir = warmed.dir.path();
    let list = dir.join("images.txt");
    std::fs::write(&list, format!("# the DaemonSet's list\n{}\n", warmed.images[0].reference)).unwrap();
    let out = load(dir, &["--images-file", list.to_str().unwrap(), "--image", &warmed.images[1].reference]);
    out.assert_code(0);
    assert!(warmed.images[0].is_local() && warmed.images[1].is_local());
    assert!(!warmed.images[2].is_local(), "only the listed images are loaded");
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
}

#[test]
fn idle_keeps_running_after_loading_until_sigterm() {
    let warmed = warmed("loadidle", 1);
    let mut running =
        Running::spawn(preloader(&["load", "--idle", "--all", "--dir", warmed.dir.path().to_str().unwrap()]));
    running.wait_for_line("idling until SIGTERM", TIMEOUT);
    assert!(warmed.images[0].is_local());
    assert!(!running.has_exited());
    running.signal(libc::SIGTERM);
    assert_eq!(running.wait_for_exit(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn load_usage_errors_and_unreachable_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let nowhere = format!("unix:///tmp/{}.sock", unique("nodaemon"));
    for (args, needle) in [
        (vec!["load", "--dir", d], "nothing to load"),
        (vec!["load", "--dir", d, "../outside_1.tar"], "must stay inside --dir"),
        (vec!["load", "--dir", d, "--image", "Bad Ref"], "invalid image reference"),
    ] {
        let out = run(preloader(&args), TIMEOUT);
        assert_eq!(out.code(), 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    let out = run(
        preloader(&["load", "--all", "--dir", d, "--docker-host", &nowhere, "--wait-timeout", "1"]),
        TIMEOUT,
    );
    out.assert_code(3);
}

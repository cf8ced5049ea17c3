//! Naming, usage errors and exit codes: everything decided before any daemon is contacted.

use std::time::Duration;

use crate::support::{Finished, preloader, run, unique};

const QUICK: Duration = Duration::from_secs(20);
/// A daemon address nothing listens on: if a test reaches the daemon step, it fails with exit 3.
fn nowhere() -> String {
    format!("unix:///tmp/{}.sock", unique("no-daemon"))
}

fn preloader_run(args: &[&str]) -> Finished {
    run(preloader(args), QUICK)
}

#[test]
fn path_prints_the_naming_table() {
    let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let digest_only = format!("ghcr.io/org/tool@sha256:{hex}");
    let tag_and_digest = format!("busybox:1.36@sha256:{hex}");
    let table = [
        (
            "selenium/standalone-firefox:4.23.1-20240820",
            "selenium/standalone-firefox_4.23.1-20240820.tar".to_owned(),
        ),
        (
            "harbor.example.com/hub/selenium/standalone-firefox:4.23.1-20240820",
            "selenium/standalone-firefox_4.23.1-20240820.tar".to_owned(),
        ),
        ("nginx:1.21.0", "nginx_1.21.0.tar".to_owned()),
        ("docker.io/library/nginx:1.21.0", "library/nginx_1.21.0.tar".to_owned()),
        ("registry.local:5000/team/app:2.0", "team/app_2.0.tar".to_owned()),
        ("alpine", "alpine_latest.tar".to_owned()),
        (tag_and_digest.as_str(), "busybox_1.36.tar".to_owned()),
        (digest_only.as_str(), format!("org/tool_sha256-{hex}.tar")),
    ];
    let args: Vec<&str> = std::iter::once("path").chain(table.iter().map(|(r, _)| *r)).collect();
    let out = preloader_run(&args);
    out.assert_code(0);
    let expected: Vec<&str> = table.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn path_reads_an_images_file() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(&list, "# CI images\n\n  nginx:1.27  \nteam/app:2 # pinned\n").unwrap();
    let out = preloader_run(&["path", "--images-file", list.to_str().unwrap(), "extra:1"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "extra_1.tar\nnginx_1.27.tar\nteam/app_2.tar\n");
}

#[test]
fn invalid_references_are_all_reported_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let archives = dir.path().join("archives");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, "ok:1\nbad tag:1\n../escape:1\n").unwrap();
    let host = nowhere();
    let out = preloader_run(&[
        "warm",
        "--dir",
        archives.to_str().unwrap(),
        "--docker-host",
        &host,
        "--images-file",
        list.to_str().unwrap(),
        "Upper:1",
        "fine:2",
        "x//y",
    ]);
    out.assert_code(2);
    for needle in ["argument 1", "\"Upper:1\"", "argument 3", "\"x//y\"", "images.txt:2", "images.txt:3"] {
        assert!(out.stderr.contains(needle), "{needle:?} not in:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("fine:2") && !out.stderr.contains("images.txt:1"), "{}", out.stderr);
    assert!(!archives.exists(), "nothing may be written");
}

#[test]
fn two_references_for_one_archive_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = nowhere();
    let out = preloader_run(&[
        "warm",
        "--dir",
        dir.path().to_str().unwrap(),
        "--docker-host",
        &host,
        "reg.io/team/app:1",
        "other.io/x/team/app:1",
    ]);
    out.assert_code(2);
    assert!(out.stderr.contains("both map to the archive team/app_1.tar"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn configuration_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let host = nowhere();
    let missing_file = dir.path().join("missing.txt");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["warm", "--dir", d, "--docker-host", &host, "--images-file", missing_file.to_str().unwrap()],
            "cannot read images file",
        ),
        (vec!["warm", "--dir", d, "--docker-host", &host], "no images given"),
        (vec!["warm", "--dir", d, "--docker-host", "ssh://host", "a:1"], "unsupported docker host"),
        (vec!["warm", "--dir", d, "--max-image-age", "soon", "a:1"], "invalid value"),
        (vec!["run", "--interval", "0", "a:1"], "greater than zero"),
        (vec!["warm", "--concurrency", "0", "a:1"], "invalid value"),
        (vec!["warm", "--log-level", "info,=x", "a:1"], "invalid --log-level"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let out = preloader_run(&args);
        assert_eq!(out.code(), 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {needle:?} not in {}", out.stderr);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn unreachable_daemon_exits_3_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let host = nowhere();
    let out = preloader_run(&[
        "warm",
        "--dir",
        dir.path().to_str().unwrap(),
        "--docker-host",
        &host,
        "--wait-timeout",
        "2",
        "--mode",
        "daemon",
        "a:1",
    ]);
    out.assert_code(3);
    assert!(out.elapsed >= Duration::from_secs(2), "gave up early: {:?}", out.elapsed);
    assert!(out.elapsed < Duration::from_secs(6), "overran the timeout: {:?}", out.elapsed);
    assert!(out.stderr.contains("did not answer within 2s"), "{}", out.stderr);
    assert!(out.stderr.contains("waiting for the docker daemon"), "{}", out.stderr);
}

#[test]
fn environment_variables_configure_every_option() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "a/b:1\n").unwrap();
    let host = nowhere();
    let mut cmd = preloader(&["warm"]);
    cmd.env("IMAGE_PRELOADER_IMAGES_FILE", &list)
        .env("IMAGE_PRELOADER_DIR", dir.path().join("archives"))
        .env("IMAGE_PRELOADER_DOCKER_HOST", &host)
        .env("IMAGE_PRELOADER_WAIT_TIMEOUT", "1s")
        .env("IMAGE_PRELOADER_MODE", "daemon")
        .env("IMAGE_PRELOADER_MAX_IMAGE_AGE", "-1")
        .env("IMAGE_PRELOADER_CONCURRENCY", "3")
        .env("IMAGE_PRELOADER_REFRESH_POLICY", "rebuild")
        .env("IMAGE_PRELOADER_MIN_FREE", "2Gi")
        .env("IMAGE_PRELOADER_PRUNE", "true")
        .env("IMAGE_PRELOADER_REMOVE_AFTER_SAVE", "false")
        .env("IMAGE_PRELOADER_LOG_FORMAT", "json");
    let out = run(cmd, QUICK);
    out.assert_code(3);
    let start = out
        .events()
        .into_iter()
        .find(|e| e["message"].as_str().is_some_and(|m| m.starts_with("image-preloader")));
    let start = start.unwrap_or_else(|| panic!("no start event in {}", out.stderr));
    assert_eq!(start["images"], 1);
    assert_eq!(start["concurrency"], 3);
    assert_eq!(start["max_image_age"], "never");
    assert_eq!(start["refresh_policy"], "Rebuild");
    assert_eq!(start["min_free"], "2.0 GiB");
    assert_eq!(start["prune"], true);
    assert!(start["dir"].as_str().unwrap().ends_with("/archives"));
}

#[test]
fn version_and_help() {
    let out = preloader_run(&["--version"]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), format!("image-preloader {}", env!("CARGO_PKG_VERSION")));
    for sub in ["run", "warm", "path"] {
        let out = preloader_run(&[sub, "--help"]);
        out.assert_code(0);
        assert!(out.stdout.contains("Usage: image-preloader"), "{}", out.stdout);
    }
}

//! `run`: the sidecar loop.

use std::time::Duration;

use crate::support::{Running, TestImage, parse_events, preloader, registry, temporaries, unique};

on_both_daemons! {
    fn run_repeats_passes_and_sigterm_ends_it_with_exit_0() {
        let name = unique("loop");
        let image = TestImage::push(&format!("ipt/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        let mut running = Running::spawn(preloader(&[
            "run",
            "--dir",
            dir.path().to_str().unwrap(),
            "--interval",
            "1s",
            "--max-image-age",
            "0",
            "--refresh-policy",
            "rebuild",
            "--log-format",
            "json",
            &image.reference,
        ]));
        running.wait_for_line("pass 1 complete", Duration::from_secs(60));
        let first = std::fs::metadata(dir.path().join(format!("ipt/{name}_1.tar"))).unwrap().modified().unwrap();
        running.wait_for_line("pass 2 complete", Duration::from_secs(60));
        running.signal(libc::SIGTERM);
        let status = running.wait_for_exit(Duration::from_secs(5));
        let (_, stderr) = running.collect();
        assert_eq!(status.code(), Some(0), "{stderr}");

        let events = parse_events(&stderr);
        let passes: Vec<_> = events.iter().filter(|e| e["pass"].is_u64()).collect();
        assert!(passes.len() >= 2, "{stderr}");
        for pass in passes {
            assert_eq!(pass["built"], 1, "max image age 0 with the rebuild policy rebuilds every pass: {pass}");
        }
        let second = std::fs::metadata(dir.path().join(format!("ipt/{name}_1.tar"))).unwrap().modified().unwrap();
        assert!(second > first, "the second pass replaced the archive");
        assert!(temporaries(dir.path()).is_empty());
        image.assert_loads_and_runs(&dir.path().join(format!("ipt/{name}_1.tar")));
    }

    fn failures_are_retried_and_never_end_the_loop() {
        let name = unique("retry");
        let good = TestImage::push(&format!("ipt/{name}-good"), "1");
        let missing = format!("{}/ipt/{name}-absent:1", registry());
        let dir = tempfile::tempdir().unwrap();
        let running = Running::spawn(preloader(&[
            "run",
            "--dir",
            dir.path().to_str().unwrap(),
            "--interval",
            "1s",
            &missing,
            &good.reference,
        ]));
        running.wait_for_line("retrying in", Duration::from_secs(60));
        // The retry pass covers only the failed image, and fails again without ending the loop.
        let retry = running.wait_for_line("pass 2 complete", Duration::from_secs(30));
        assert!(retry.contains("0 built") && retry.contains("1 failed"), "{retry}");
        running.wait_for_line("pass 3 complete", Duration::from_secs(30));
        running.signal(libc::SIGTERM);
        let mut running = running;
        assert_eq!(running.wait_for_exit(Duration::from_secs(5)).code(), Some(0));
        good.assert_loads_and_runs(&dir.path().join(format!("ipt/{name}-good_1.tar")));
    }
}

#[test]
fn sigterm_while_waiting_for_the_daemon_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let host = format!("unix://{}/docker.sock", dir.path().display());
    let mut running = Running::spawn(preloader(&[
        "run",
        "--docker-host",
        &host,
        "--dir",
        dir.path().to_str().unwrap(),
        "a:1",
    ]));
    running.wait_for_line("waiting for the docker daemon", Duration::from_secs(10));
    running.signal(libc::SIGTERM);
    let status = running.wait_for_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
}

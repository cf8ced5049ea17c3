//! Builds interrupted mid-save: SIGKILL (nothing can clean up) and SIGTERM (clean abandon).

use std::time::Duration;

use crate::support::{
    DAY, Running, TestImage, files, preloader, temporaries, unique, wait_for_partial, write_aged,
};

/// Large enough that the save takes a while after the first bytes land.
const BIG: usize = 192 << 20;
const OLD: &[u8] = b"the previous archive, byte for byte";

#[test]
fn sigkill_mid_save_keeps_the_old_archive_and_the_rerun_cleans_up() {
    let name = unique("kill");
    let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", BIG);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(format!("ipt/{name}_1.tar"));
    write_aged(&archive, OLD, DAY * 30);
    let d = dir.path().to_str().unwrap();

    let mut running = Running::spawn(preloader(&["warm", "--dir", d, &image.reference]));
    let partial = wait_for_partial(dir.path(), &mut running, 1 << 20, Duration::from_secs(120));
    running.child.kill().unwrap(); // SIGKILL
    running.child.wait().unwrap();

    assert_eq!(std::fs::read(&archive).unwrap(), OLD, "the old archive is intact");
    assert!(partial.exists(), "a killed run leaves its partial file (under its own name only)");
    assert!(std::fs::metadata(&partial).unwrap().len() < (BIG as u64), "killed mid-save");

    let mut rerun = Running::spawn(preloader(&["warm", "--dir", d, &image.reference]));
    let status = rerun.wait_for_exit(Duration::from_secs(120));
    let (_, stderr) = rerun.collect();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("removed a temporary file left by an interrupted run"), "{stderr}");
    assert!(temporaries(dir.path()).is_empty(), "{:?}", files(dir.path()));
    assert!(std::fs::metadata(&archive).unwrap().len() > BIG as u64);
    image.assert_loads_and_runs(&archive);
}

#[test]
fn sigterm_mid_save_in_run_abandons_cleanly_and_exits_0() {
    let name = unique("term");
    let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", BIG);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(format!("ipt/{name}_1.tar"));
    write_aged(&archive, OLD, DAY * 30);

    let mut running =
        Running::spawn(preloader(&["run", "--dir", dir.path().to_str().unwrap(), &image.reference]));
    wait_for_partial(dir.path(), &mut running, 1 << 20, Duration::from_secs(120));
    running.signal(libc::SIGTERM);
    let status = running.wait_for_exit(Duration::from_secs(5));
    let (_, stderr) = running.collect();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("received SIGTERM"), "{stderr}");
    assert!(stderr.contains("abandoned for shutdown"), "{stderr}");
    assert_eq!(std::fs::read(&archive).unwrap(), OLD);
    assert!(temporaries(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[test]
fn sigint_interrupts_warm_with_exit_130() {
    let name = unique("int");
    let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", BIG);
    let dir = tempfile::tempdir().unwrap();
    let mut running =
        Running::spawn(preloader(&["warm", "--dir", dir.path().to_str().unwrap(), &image.reference]));
    wait_for_partial(dir.path(), &mut running, 1 << 20, Duration::from_secs(120));
    running.signal(libc::SIGINT);
    let status = running.wait_for_exit(Duration::from_secs(5));
    let (_, stderr) = running.collect();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

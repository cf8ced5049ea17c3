//! Builds interrupted mid-save: SIGKILL (nothing can clean up) and SIGTERM (clean abandon).

use std::time::Duration;

use crate::support::{
    DAY, Running, TestImage, files, preloader, read_record, run, temporaries, unique, wait_for_partial,
    write_aged,
};

/// Large enough that the save takes a while after the first bytes land (random, so as large on
/// the containerd store, which exports compressed layers).
const BIG: usize = 64 << 20;
const OLD: &[u8] = b"the previous archive, byte for byte";

/// `warm` of `reference` into `dir`, killed (SIGKILL, by fault injection) at `point` of the publish.
fn warm_killed_at(point: &str, dir: &std::path::Path, extra: &[&str], reference: &str) {
    let mut args = vec!["warm", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(reference);
    let mut cmd = preloader(&args);
    cmd.env("IMAGE_PRELOADER_FAULT", point);
    let out = run(cmd, Duration::from_secs(120));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "killed at {point}: {}", out.stderr);
}

on_both_daemons! {
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

    fn killed_before_the_rename_the_next_pass_rebuilds_instead_of_trusting_the_old_archive() {
        let name = unique("prename");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let old = TestImage::push(&format!("ipt/{name}"), "1");
        run(preloader(&["warm", "--dir", d, &old.reference]), Duration::from_secs(120)).assert_code(0);
        let archive = dir.path().join(format!("ipt/{name}_1.tar"));
        let old_bytes = std::fs::read(&archive).unwrap();

        // The tag moves on; the rebuild is killed after the pending record, before the rename.
        let new = TestImage::push(&format!("ipt/{name}"), "1");
        warm_killed_at("publish-before-rename", dir.path(), &["--max-image-age", "0"], &new.reference);
        assert_eq!(std::fs::read(&archive).unwrap(), old_bytes, "the old archive is intact");
        assert_eq!(read_record(&archive)["pending"], true, "the record names the unpublished archive");

        // The old archive is fresh by age: only the checksum shows it is not what the record says.
        let out = run(preloader(&["warm", "--dir", d, &new.reference]), Duration::from_secs(120));
        out.assert_code(0);
        assert!(out.stderr.contains("does not match its record"), "{}", out.stderr);
        assert!(out.stderr.contains("building"), "{}", out.stderr);
        assert!(read_record(&archive).get("pending").is_none());
        new.assert_loads_and_runs(&archive);
        assert!(temporaries(dir.path()).is_empty(), "{:?}", files(dir.path()));
    }

    fn killed_after_the_rename_the_next_pass_confirms_the_new_archive_by_checksum() {
        let name = unique("postname");
        let dir = tempfile::tempdir().unwrap();
        let image = TestImage::push(&format!("ipt/{name}"), "1");
        warm_killed_at("publish-after-rename", dir.path(), &[], &image.reference);
        let archive = dir.path().join(format!("ipt/{name}_1.tar"));
        assert!(archive.is_file(), "renamed into place: {:?}", files(dir.path()));
        assert_eq!(read_record(&archive)["pending"], true);

        let out = run(
            preloader(&["warm", "--dir", dir.path().to_str().unwrap(), &image.reference]),
            Duration::from_secs(120),
        );
        out.assert_code(0);
        assert!(out.stderr.contains("matches its record"), "{}", out.stderr);
        assert!(!out.stderr.contains("building"), "kept, not rebuilt: {}", out.stderr);
        let record = read_record(&archive);
        assert!(record.get("pending").is_none() && record["mtime_ns"].is_u64(), "{record}");
        image.assert_loads_and_runs(&archive);
    }
}

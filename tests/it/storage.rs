//! Storage that can't hurt the node: the disk guard, ENOSPC, prune, verify, one writer per
//! archive, removing images after saving.

use std::path::Path;
use std::time::Duration;

use crate::support::{
    DAY, Running, TestImage, Tmpfs, files, preloader, read_record, run, temporaries, unique, write_aged,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const OLD: &[u8] = b"the previous archive";

fn warm(dir: &Path, extra: &[&str], images: &[&str]) -> crate::support::Finished {
    let mut args = vec!["warm", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(images);
    run(preloader(&args), TIMEOUT)
}

on_both_daemons! {
    fn disk_floor_refuses_the_build_before_writing() {
        let fs = Tmpfs::mount("64m");
        let name = unique("floor");
        let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", 40 << 20);
        let old = fs.path().join(format!("ipt/{name}_1.tar"));
        write_aged(&old, OLD, DAY * 30);

        let out = warm(fs.path(), &["--min-free", "50%", "--log-format", "json"], &[&image.reference]);
        out.assert_code(1);
        let failure = out.events().into_iter().find(|e| e["step"] == "space");
        let failure = failure.unwrap_or_else(|| panic!("no space failure logged:\n{}", out.stderr));
        let message = failure["message"].as_str().unwrap();
        assert!(
            message.contains("not enough disk space") && message.contains("--min-free keeps 32.0 MiB free"),
            "{message}"
        );
        assert_eq!(std::fs::read(&old).unwrap(), OLD);
        assert!(temporaries(fs.path()).is_empty(), "{:?}", files(fs.path()));

        // With room to spare the same build goes through.
        warm(fs.path(), &["--min-free", "1Mi"], &[&image.reference]).assert_code(0);
        image.assert_loads_and_runs(&old);
    }

    fn enospc_mid_write_keeps_the_old_archive_and_no_temporary() {
        let fs = Tmpfs::mount("24m");
        let name = unique("enospc");
        let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", 40 << 20);
        let old = fs.path().join(format!("ipt/{name}_1.tar"));
        write_aged(&old, OLD, DAY * 30);

        // --min-free 0 turns the guard off, so the write runs into the full disk.
        let out = warm(fs.path(), &["--min-free", "0"], &[&image.reference]);
        out.assert_code(1);
        assert!(out.stderr.contains("No space left on device"), "{}", out.stderr);
        assert_eq!(std::fs::read(&old).unwrap(), OLD);
        assert!(temporaries(fs.path()).is_empty(), "{:?}", files(fs.path()));
    }

    fn prune_removes_only_our_unlisted_archives() {
        let name = unique("prune");
        let keep = TestImage::push(&format!("ipt/{name}-keep"), "1");
        let drop = TestImage::push(&format!("ipt/{name}-drop"), "1");
        let dir = tempfile::tempdir().unwrap();
        warm(dir.path(), &[], &[&keep.reference, &drop.reference]).assert_code(0);
        let foreign = [
            format!("ipt/{name}-foreign_1.tar"),
            "seed-made_1.0.tar".to_owned(),
            "notes.txt".to_owned(),
            "bad_1.tar".to_owned(),
            "bad_1.tar.json".to_owned(),
        ];
        for path in &foreign {
            std::fs::write(dir.path().join(path), b"not ours").unwrap();
        }

        let out = warm(dir.path(), &["--prune"], &[&keep.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("pruned: no longer in the image list"), "{}", out.stderr);
        let left: Vec<String> = files(dir.path()).into_keys().collect();
        let mut expected: Vec<String> = foreign.to_vec();
        expected.push(format!("ipt/{name}-keep_1.tar"));
        expected.push(format!("ipt/{name}-keep_1.tar.json"));
        expected.sort();
        assert_eq!(left, expected);
    }

    fn prune_removes_an_emptied_user_directory() {
        let name = unique("prunedir");
        let image = TestImage::push(&format!("ipt/{name}-sub/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        warm(dir.path(), &[], &[&image.reference]).assert_code(0);
        assert!(dir.path().join(format!("{name}-sub")).is_dir());
        let other = TestImage::push(&format!("ipt/{name}-other"), "1");
        warm(dir.path(), &["--prune"], &[&other.reference]).assert_code(0);
        assert!(!dir.path().join(format!("{name}-sub")).exists());
    }

    fn verify_reports_and_marks_damage_and_the_next_pass_repairs_it() {
        let name = unique("verify");
        let first = TestImage::push(&format!("ipt/{name}-a"), "1");
        let second = TestImage::push(&format!("ipt/{name}-b"), "1");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        warm(dir.path(), &[], &[&first.reference, &second.reference]).assert_code(0);
        let out = run(preloader(&["verify", "--dir", d]), TIMEOUT);
        out.assert_code(0);
        assert_eq!(out.stdout.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{}", out.stdout);

        // Same size, one byte flipped in the middle: only a checksum can tell.
        let damaged = dir.path().join(format!("ipt/{name}-a_1.tar"));
        let mut bytes = std::fs::read(&damaged).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&damaged, &bytes).unwrap();
        // A complete archive without a record, garbage without one, a record without its archive.
        std::fs::copy(dir.path().join(format!("ipt/{name}-b_1.tar")), dir.path().join("copied_1.tar")).unwrap();
        std::fs::write(dir.path().join("garbage_1.tar"), b"garbage").unwrap();
        std::fs::copy(dir.path().join(format!("ipt/{name}-b_1.tar.json")), dir.path().join("gone_1.tar.json"))
            .unwrap();

        let out = run(preloader(&["verify", "--dir", d]), TIMEOUT);
        out.assert_code(1);
        let line =
            |prefix: &str, path: &str| out.stdout.lines().any(|l| l.starts_with(prefix) && l.contains(path));
        assert!(line("damaged", &format!("ipt/{name}-a_1.tar: its sha256 is")), "{}", out.stdout);
        assert!(line("ok", &format!("ipt/{name}-b_1.tar")), "{}", out.stdout);
        assert!(line("unrecorded", "copied_1.tar"), "{}", out.stdout);
        assert!(line("invalid", "garbage_1.tar"), "{}", out.stdout);
        assert!(line("missing", "gone_1.tar"), "{}", out.stdout);
        assert!(read_record(&damaged)["damaged"].as_str().unwrap().contains("sha256"));

        // The archive is fresh, but marked: the next pass rebuilds it.
        let out = warm(dir.path(), &[], &[&first.reference, &second.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("the archive is damaged"), "{}", out.stderr);
        first.assert_loads_and_runs(&damaged);
        assert!(read_record(&damaged).get("damaged").is_none());
    }

    fn two_concurrent_warms_build_once() {
        let name = unique("twice");
        let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", 48 << 20);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let mut a = Running::spawn(preloader(&["warm", "--dir", d, &image.reference]));
        let mut b = Running::spawn(preloader(&["warm", "--dir", d, &image.reference]));
        let status_a = a.wait_for_exit(TIMEOUT);
        let status_b = b.wait_for_exit(TIMEOUT);
        let (_, log_a) = a.collect();
        let (_, log_b) = b.collect();
        assert_eq!((status_a.code(), status_b.code()), (Some(0), Some(0)), "{log_a}\n---\n{log_b}");
        let builds = [&log_a, &log_b].iter().filter(|log| log.contains(" saved ")).count();
        assert_eq!(builds, 1, "exactly one process builds:\n{log_a}\n---\n{log_b}");
        let other = if log_a.contains(" saved ") { &log_b } else { &log_a };
        assert!(other.contains("up to date"), "the other one finds the fresh archive:\n{other}");
        assert!(temporaries(dir.path()).is_empty());
        image.assert_loads_and_runs(&dir.path().join(format!("ipt/{name}_1.tar")));
    }

    fn remove_after_save_frees_the_daemon() {
        let name = unique("remove");
        let image = TestImage::push(&format!("ipt/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        let out = warm(dir.path(), &["--remove-after-save"], &[&image.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("removed the image from the daemon"), "{}", out.stderr);
        assert!(!image.is_local());
        image.assert_loads_and_runs(&dir.path().join(format!("ipt/{name}_1.tar")));
    }
}

//! Refresh without waste: the digest policy, damaged archives, an unreachable registry.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::{
    DAY, PrivateRegistry, Running, TestImage, age_file, edit_record, preloader, read_record, run, unique,
};

const TIMEOUT: Duration = Duration::from_secs(120);

fn warm(dir: &Path, extra: &[&str], images: &[&str]) -> crate::support::Finished {
    let mut args = vec!["warm", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(images);
    run(preloader(&args), TIMEOUT)
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn archive(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("ipt/{name}_1.tar"))
}

on_both_daemons! {
    fn unchanged_upstream_refreshes_only_time_and_record() {
        let name = unique("same");
        let image = TestImage::push(&format!("ipt/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        warm(dir.path(), &[], &[&image.reference]).assert_code(0);
        let path = archive(dir.path(), &name);
        let record = read_record(&path);
        assert_eq!(record["reference"], image.reference.as_str());
        assert_eq!(record["repo_digest"], image.digest.as_str(), "the registry digest it was built from");
        assert_eq!(record["image_id"], image.local_id());
        assert_eq!(record["size"], std::fs::metadata(&path).unwrap().len());
        let content = std::fs::read(&path).unwrap();

        image.remove_local();
        age_file(&path, DAY * 8);
        edit_record(&path, "checked", "2000-01-01T00:00:00Z".into());
        let out = warm(dir.path(), &["--log-format", "json"], &[&image.reference]);
        out.assert_code(0);

        assert!(!image.is_local(), "no pull happened");
        assert_eq!(std::fs::read(&path).unwrap(), content, "no write happened");
        let age = SystemTime::now().duration_since(modified(&path)).unwrap();
        assert!(age < Duration::from_secs(120), "the archive's time was refreshed");
        let record = read_record(&path);
        assert_ne!(record["checked"], "2000-01-01T00:00:00Z", "the record notes the check");
        let events = out.events();
        assert!(events.iter().any(|e| e["decision"] == "unchanged"), "{}", out.stderr);
        let summary = events.iter().find(|e| e["pass"] == 1).unwrap();
        assert_eq!(summary["bytes"], 0, "0 bytes of archive data written");
    }

    fn max_age_zero_checks_every_pass_and_rebuilds_only_on_change() {
        let name = unique("zero");
        let first = TestImage::push(&format!("ipt/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), &name);
        warm(dir.path(), &["--max-image-age", "0"], &[&first.reference]).assert_code(0);
        let content = std::fs::read(&path).unwrap();
        let out = warm(dir.path(), &["--max-image-age", "0"], &[&first.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("the registry still serves the archived digest"), "{}", out.stderr);
        assert_eq!(std::fs::read(&path).unwrap(), content);

        let second = TestImage::push(&format!("ipt/{name}"), "1");
        let out = warm(dir.path(), &["--max-image-age", "0"], &[&second.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("the registry now serves"), "{}", out.stderr);
        second.assert_loads_and_runs(&path);
    }

    fn changed_upstream_is_rebuilt() {
        let name = unique("changed");
        let old = TestImage::push(&format!("ipt/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), &name);
        warm(dir.path(), &[], &[&old.reference]).assert_code(0);
        old.assert_loads_and_runs(&path);

        let new = TestImage::push(&format!("ipt/{name}"), "1"); // same tag, new content
        assert_ne!(new.digest, old.digest);
        age_file(&path, DAY * 8);
        let out = warm(dir.path(), &[], &[&new.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains(&format!("the registry now serves {}", new.digest)), "{}", out.stderr);
        new.assert_loads_and_runs(&path);
        assert_eq!(read_record(&path)["repo_digest"], new.digest.as_str());
    }

    fn rebuild_policy_keeps_the_seed_behaviour() {
        let name = unique("rebuild");
        let image = TestImage::push(&format!("ipt/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), &name);
        warm(dir.path(), &[], &[&image.reference]).assert_code(0);
        image.remove_local();
        age_file(&path, DAY * 8);
        let out = warm(dir.path(), &["--refresh-policy", "rebuild"], &[&image.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("1 built"), "{}", out.stderr);
        assert!(image.is_local(), "the rebuild pulled the image");
    }

    fn damaged_archive_is_rebuilt_even_when_fresh() {
        let name = unique("damaged");
        let image = TestImage::push(&format!("ipt/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        let path = archive(dir.path(), &name);
        warm(dir.path(), &[], &[&image.reference]).assert_code(0);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();

        let out = warm(dir.path(), &[], &[&image.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("the archive is damaged"), "{}", out.stderr);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        image.assert_loads_and_runs(&path);
    }

    fn unreachable_registry_keeps_archives_and_fails_only_missing_ones() {
        let mut registry = PrivateRegistry::start();
        let name = unique("offline");
        let kept = TestImage::push_to(&registry.addr, &format!("ipt/{name}-kept"), "1", 0);
        let lost = TestImage::push_to(&registry.addr, &format!("ipt/{name}-lost"), "1", 0);
        let dir = tempfile::tempdir().unwrap();
        warm(dir.path(), &[], &[&kept.reference, &lost.reference]).assert_code(0);
        let kept_path = archive(dir.path(), &format!("{name}-kept"));
        let kept_content = std::fs::read(&kept_path).unwrap();
        std::fs::remove_file(archive(dir.path(), &format!("{name}-lost"))).unwrap();
        age_file(&kept_path, DAY * 8);
        registry.stop();

        // warm: the aged archive is kept with a warning; only the missing one fails the run.
        let out = warm(dir.path(), &[], &[&kept.reference, &lost.reference]);
        out.assert_code(1);
        assert!(out.stderr.contains("keeping the archive, will check again"), "{}", out.stderr);
        assert!(out.stderr.contains("1 of 2 images failed"), "{}", out.stderr);
        let out = warm(dir.path(), &[], &[&kept.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("not verifiable"), "{}", out.stderr);
        assert_eq!(std::fs::read(&kept_path).unwrap(), kept_content);

        // run: keeps going, retries the check, and exits 0 on SIGTERM.
        let mut running = Running::spawn(preloader(&[
            "run",
            "--dir",
            dir.path().to_str().unwrap(),
            "--interval",
            "1s",
            &kept.reference,
        ]));
        running.wait_for_line("keeping the archive, will check again", Duration::from_secs(60));
        running.wait_for_line("pass 2 complete", Duration::from_secs(30));
        running.signal(libc::SIGTERM);
        assert_eq!(running.wait_for_exit(Duration::from_secs(5)).code(), Some(0));
        assert_eq!(std::fs::read(&kept_path).unwrap(), kept_content);
    }

    fn pinned_digest_archives_are_never_stale() {
        let name = unique("pinned");
        let image = TestImage::push(&format!("ipt/{name}"), "1");
        let dir = tempfile::tempdir().unwrap();
        let pinned = format!("{}:1@{}", image.repository, image.digest);
        warm(dir.path(), &[], &[&pinned]).assert_code(0);
        let path = archive(dir.path(), &name);
        age_file(&path, DAY * 30);
        image.remove_local();
        let out = warm(dir.path(), &[], &[&pinned]);
        out.assert_code(0);
        assert!(out.stderr.contains("the reference pins a digest"), "{}", out.stderr);
        assert!(!image.is_local());
    }
}

//! Symbolic links planted in the archive directory (a hostPath others may write) must never make
//! the preloader create, change, time or remove anything outside `--dir`: a link where the tool
//! expects its own file or directory fails that image, is reported with its path, and the pass
//! goes on.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use crate::support::{TestImage, age_file, preloader, run, snapshot, unique};

const TIMEOUT: Duration = Duration::from_secs(180);

fn warm(dir: &Path, images: &[&TestImage], extra: &[&str]) -> crate::support::Finished {
    let mut args = vec!["warm", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(images.iter().map(|i| i.reference.as_str()));
    run(preloader(&args), TIMEOUT)
}

#[test]
fn planted_links_are_refused_and_nothing_outside_the_directory_changes() {
    let user = unique("links");
    let target = TestImage::push(&format!("{user}/target"), "1");
    let good = TestImage::push(&format!("{user}/good"), "1");
    let outside = tempfile::tempdir().unwrap();
    // A victim file named like an archive the attacker wants replaced or re-timed.
    let victim = outside.path().join("target_1.tar");
    std::fs::write(&victim, b"victim").unwrap();
    age_file(&victim, Duration::from_secs(30 * 86400));
    let before = snapshot(outside.path());

    // 1. The lock file is a link to a file that does not exist yet (think /etc/nologin).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(&user)).unwrap();
    let lock = dir.path().join(&user).join(".target_1.tar.lock");
    symlink(outside.path().join("nologin"), &lock).unwrap();
    let out = warm(dir.path(), &[&target, &good], &[]);
    out.assert_code(1);
    assert!(
        out.stderr.contains(&lock.display().to_string()) && out.stderr.contains("symbolic link"),
        "{}",
        out.stderr
    );
    assert!(dir.path().join(&user).join("good_1.tar").is_file(), "the pass went on");
    assert!(std::fs::symlink_metadata(&lock).unwrap().file_type().is_symlink(), "the link is left alone");

    // 2. The `<user>/` directory is a link to another directory.
    let dir = tempfile::tempdir().unwrap();
    symlink(outside.path(), dir.path().join(&user)).unwrap();
    let out = warm(dir.path(), &[&target], &[]);
    out.assert_code(1);
    assert!(out.stderr.contains(&dir.path().join(&user).display().to_string()), "{}", out.stderr);
    assert!(out.stderr.contains("symbolic link"), "{}", out.stderr);

    // 3. The archive is a link (with a record that sends the decision down the "unchanged" path,
    //    which refreshes the archive's time).
    let dir = tempfile::tempdir().unwrap();
    let out = warm(dir.path(), &[&target], &[]);
    out.assert_code(0);
    let archive = dir.path().join(&user).join("target_1.tar");
    std::fs::remove_file(&archive).unwrap();
    symlink(&victim, &archive).unwrap();
    let out = warm(dir.path(), &[&target], &["--max-image-age", "0"]);
    out.assert_code(1);
    assert!(
        out.stderr.contains(&archive.display().to_string()) && out.stderr.contains("symbolic link"),
        "{}",
        out.stderr
    );
    assert!(std::fs::symlink_metadata(&archive).unwrap().file_type().is_symlink(), "the link is left alone");
    let verify = run(preloader(&["verify", "--dir", dir.path().to_str().unwrap()]), TIMEOUT);
    verify.assert_code(1);
    assert!(
        verify.stdout.contains("target_1.tar") && verify.stdout.contains("symbolic link"),
        "{}",
        verify.stdout
    );
    // Prune with an empty list (another image listed) must not remove through the link either.
    let out = warm(dir.path(), &[&good], &["--prune"]);
    out.assert_code(0);
    assert!(std::fs::symlink_metadata(&archive).unwrap().file_type().is_symlink(), "not pruned through");

    assert_eq!(snapshot(outside.path()), before, "nothing outside --dir was created, changed or touched");
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
}

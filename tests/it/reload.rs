//! `run --images-file`: a changed list is applied without a restart, through a symlink swap like a
//! ConfigMap volume's; an invalid one is refused and the previous list stays.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::serve::{get, metric, serve, wait_for_status};
use crate::support::{TestImage, unique};

/// A directory laid out like a ConfigMap volume: `images.txt -> ..data/images.txt`, `..data ->
/// ..<version>`; each update writes a new version and swaps `..data` atomically.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    version: usize,
}

impl ConfigMapDir {
    fn new(content: &str) -> ConfigMapDir {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("..data/images.txt", dir.path().join("images.txt")).unwrap();
        let mut map = ConfigMapDir { dir, version: 0 };
        map.update(content);
        map
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("images.txt")
    }

    fn update(&mut self, content: &str) {
        self.version += 1;
        let version = format!("..2026_11_25_00_00_{:02}.{}", self.version, self.version);
        let root: &Path = self.dir.path();
        std::fs::create_dir(root.join(&version)).unwrap();
        std::fs::write(root.join(&version).join("images.txt"), content).unwrap();
        std::os::unix::fs::symlink(&version, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    }
}

fn wait_for_metric(addr: &str, name: &str, expected: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = metric(addr, name, &[]);
        if got == Some(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got:?}, not {expected}, after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_changed_images_file_is_applied_without_a_restart_and_an_invalid_one_is_refused() {
    let name = unique("reload");
    let first = TestImage::push(&format!("ipt/{name}-a"), "1");
    let second = TestImage::push(&format!("ipt/{name}-b"), "1");
    let archives = tempfile::tempdir().unwrap();
    let mut map = ConfigMapDir::new(&format!("{}\n", first.reference));
    let file = map.file();
    let (mut running, addr) = serve(&[
        "--dir",
        archives.path().to_str().unwrap(),
        "--images-file",
        file.to_str().unwrap(),
        "--interval",
        "1h",
    ]);
    wait_for_status(&addr, "/readyz", 200, Duration::from_secs(120));
    let archive_a = archives.path().join(format!("ipt/{name}-a_1.tar"));
    let archive_b = archives.path().join(format!("ipt/{name}-b_1.tar"));
    assert!(archive_a.is_file());

    // Added: built at once, without waiting for the hour.
    map.update(&format!("# two now\n{}\n{}\n", first.reference, second.reference));
    running.wait_for_line("the images file changed", Duration::from_secs(20));
    wait_for_metric(&addr, "image_preloader_images_listed", 2.0, Duration::from_secs(10));
    wait_for_status(&addr, "/readyz", 200, Duration::from_secs(120));
    assert!(archive_b.is_file(), "the added image was built");

    // Removed: no longer listed, but its archive stays (no --prune).
    map.update(&format!("{}\n", second.reference));
    running.wait_for_line("the images file changed", Duration::from_secs(20));
    wait_for_metric(&addr, "image_preloader_images_listed", 1.0, Duration::from_secs(10));
    assert!(archive_a.is_file(), "without --prune a removed image's archive stays");

    // Invalid: refused with a log line and a metric; the previous list stays in force.
    map.update("not a valid reference!\n");
    let line = running.wait_for_line("refused the changed images file", Duration::from_secs(20));
    assert!(line.contains("not a valid reference!"), "{line}");
    wait_for_metric(&addr, "image_preloader_list_reload_failures_total", 1.0, Duration::from_secs(10));
    assert_eq!(metric(&addr, "image_preloader_images_listed", &[]), Some(1.0));
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");

    running.signal(libc::SIGTERM);
    assert_eq!(running.wait_for_exit(Duration::from_secs(10)).code(), Some(0));
}

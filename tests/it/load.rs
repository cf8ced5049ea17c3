//! `load`: archives into a runner's daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::{
    Daemon, ReadOnlyView, Running, TestImage, docker, preloader, run, snapshot, unique, with_daemon,
};

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

/// The record beside an archive.
fn record_of(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn load(dir: &std::path::Path, args: &[&str]) -> crate::support::Finished {
    let mut all = vec!["load", "--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    run(preloader(&all), TIMEOUT)
}

/// The stdout line about `name`.
fn line_of(out: &crate::support::Finished, name: &str) -> String {
    out.stdout.lines().find(|l| l.contains(name)).unwrap_or_default().to_owned()
}

/// Flips one byte in the middle of a file (in a layer, for these archives).
fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

on_both_daemons! {
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
            assert_eq!(id, image.local_id(), "same image ID, same tag");
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

    fn damaged_missing_and_unloadable_archives_are_reported_and_skipped_while_the_others_load() {
        let warmed = warmed("loadpolicy", 4);
        let dir = warmed.dir.path();
        // Truncated, without a record to compare sizes with: the header walk finds it incomplete
        // before anything is sent.
        let truncated = dir.join(&warmed.names[0]);
        let len = std::fs::metadata(&truncated).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(len - 4096).unwrap();
        std::fs::remove_file(record_of(&truncated)).unwrap();
        // One byte changed, size unchanged: only the record's sha256 tells, at the end of the stream,
        // after the daemon has received nearly everything.
        flip_middle_byte(&dir.join(&warmed.names[1]));
        // One byte changed in a layer of an archive without record: a complete tar that the daemon
        // refuses (the layer no longer matches its digest). The middle of the archive is in the
        // image's one large layer (busybox and the marker), which no other image holds: a layer the
        // daemon already holds is never read on load, so changing one would go unnoticed.
        let refused = dir.join(&warmed.names[2]);
        flip_middle_byte(&refused);
        std::fs::remove_file(record_of(&refused)).unwrap();
        let mut args: Vec<&str> = warmed.names.iter().map(String::as_str).collect();
        args.push("ipt/not-there_1.tar");

        let out = load(dir, &args);
        out.assert_code(0);
        let damaged = line_of(&out, &warmed.names[0]);
        assert!(damaged.starts_with("damaged") && damaged.contains("archive ends early"), "{}", out.stdout);
        let damaged = line_of(&out, &warmed.names[1]);
        assert!(damaged.starts_with("damaged") && damaged.contains("sha256"), "{}", out.stdout);
        assert!(line_of(&out, &warmed.names[2]).starts_with("failed"), "{}\n{}", out.stdout, out.stderr);
        assert!(line_of(&out, &warmed.names[3]).starts_with("loaded"), "{}", out.stdout);
        assert!(line_of(&out, "ipt/not-there_1.tar").starts_with("missing"), "{}", out.stdout);
        assert!(out.stderr.contains("missing: no archive at this path"), "{}", out.stderr);
        for image in &warmed.images[..2] {
            assert!(!image.is_local(), "nothing of an aborted upload stays in the daemon: {}", image.reference);
        }
        // The archive the daemon refused: its tag is not applied. The classic store keeps nothing
        // of it; the containerd store (Docker 26) tags the image before its layer fails to unpack,
        // and `load` puts the tag back as it was (here: none), leaving an untagged record.
        let refused = &warmed.images[2];
        assert!(!refused.is_tagged(), "the refused archive's tag was not applied: {}", refused.reference);
        if crate::support::daemon() == crate::support::Daemon::Classic {
            assert!(!refused.is_local(), "nothing of a refused archive stays in the daemon");
        } else {
            assert!(out.stderr.contains("the daemon tagged the image it could not load"), "{}", out.stderr);
        }
        assert!(warmed.images[3].is_local());
        assert!(
            out.stderr.contains("1 loaded") && out.stderr.contains("1 missing, 2 damaged, 1 failed"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("the job pulls what it lacks"), "{}", out.stderr);

        // --strict (or its variable): any archive not loaded is an error.
        let out = load(dir, &["--strict", args[0], args[3]]);
        out.assert_code(1);
        assert!(out.stderr.contains("1 of 2 archives could not be loaded"), "{}", out.stderr);
        let mut strict = preloader(&["load", "--dir", dir.to_str().unwrap(), "ipt/not-there_1.tar"]);
        strict.env("IMAGE_PRELOADER_STRICT", "true");
        run(strict, TIMEOUT).assert_code(1);
    }

    fn an_archive_changed_after_its_record_is_never_tagged() {
        let warmed = warmed("loadrewrite", 1);
        let image = &warmed.images[0];
        let path = warmed.dir.path().join(&warmed.names[0]);
        // Rewrite the tag in manifest.json in place (same length): still a complete, valid tar whose
        // images the daemon would load under another name; only the record tells.
        let mut bytes = std::fs::read(&path).unwrap();
        let tag = format!("\"{}\"", image.reference).into_bytes();
        let at = bytes.windows(tag.len()).rposition(|w| w == tag.as_slice()).expect("the tag in manifest.json");
        let renamed = format!("{}:9", image.repository);
        assert_eq!(renamed.len(), image.reference.len());
        bytes[at + 1..at + tag.len() - 1].copy_from_slice(renamed.as_bytes());
        std::fs::write(&path, bytes).unwrap();

        let out = load(warmed.dir.path(), &[&warmed.names[0]]);
        out.assert_code(0);
        let line = line_of(&out, &warmed.names[0]);
        assert!(line.starts_with("damaged") && line.contains("sha256"), "{}", out.stdout);
        assert!(out.stderr.contains("the upload was aborted"), "{}", out.stderr);
        assert!(!image.is_local(), "the daemon kept nothing of the changed archive");
        let renamed_there = crate::support::daemon()
            .cli()
            .args(["image", "inspect", &renamed])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!renamed_there, "the rewritten tag was not applied");
    }

    fn a_deadline_skips_a_slow_archive_and_ends_the_wait_on_time() {
        let warmed = warmed("loaddeadline", 2);
        let dir = warmed.dir.path();
        // The first archive arrives at 160 KiB/s from a FIFO: it would take several seconds.
        let slow = dir.join(&warmed.names[0]);
        let data = std::fs::read(&slow).unwrap();
        std::fs::remove_file(&slow).unwrap();
        std::fs::remove_file(record_of(&slow)).unwrap();
        assert!(data.len() > 1 << 20, "the test image is large enough to be slow: {} bytes", data.len());
        let feeder = SlowFeeder::start(&slow, data.clone(), 16 << 10, Duration::from_millis(100));

        let deadline = Duration::from_secs(3);
        let out = load(dir, &["--deadline", "3s", &warmed.names[0], &warmed.names[1]]);
        drop(feeder);
        out.assert_code(0);
        assert!(
            out.elapsed < deadline + Duration::from_secs(10),
            "the wait ended near the deadline: {:?}",
            out.elapsed
        );
        let line = line_of(&out, &warmed.names[0]);
        assert!(line.starts_with("skipped") && line.contains("deadline (3s)"), "{}", out.stdout);
        assert!(out.stderr.contains("skipped: not loaded within the deadline"), "{}", out.stderr);
        assert!(line_of(&out, &warmed.names[1]).starts_with("loaded"), "{}", out.stdout);
        assert!(!warmed.images[0].is_local(), "nothing of the cut upload stays in the daemon");
        assert!(warmed.images[1].is_local());
        assert!(out.stderr.contains("1 skipped at the deadline"), "{}", out.stderr);

        // With --strict (its variable here), a cut archive is an error; IMAGE_PRELOADER_DEADLINE works.
        std::fs::remove_file(&slow).unwrap();
        let feeder = SlowFeeder::start(&slow, data, 16 << 10, Duration::from_millis(100));
        let mut strict = preloader(&["load", "--dir", dir.to_str().unwrap(), &warmed.names[0]]);
        strict.env("IMAGE_PRELOADER_STRICT", "true").env("IMAGE_PRELOADER_DEADLINE", "1s");
        let out = run(strict, TIMEOUT);
        drop(feeder);
        out.assert_code(1);
        assert!(line_of(&out, &warmed.names[0]).starts_with("skipped"), "{}", out.stdout);
    }

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
}

/// Feeds `data` into a FIFO slowly, as a stalled disk or network file system would deliver an
/// archive. Stops when the reader goes away or the feeder is dropped.
struct SlowFeeder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowFeeder {
    fn start(fifo: &Path, data: Vec<u8>, bytes_per_tick: usize, tick: Duration) -> SlowFeeder {
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0, "mkfifo {}", fifo.display());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let fifo = fifo.to_owned();
        let thread = std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            // A non-blocking open succeeds once a reader has the FIFO open.
            let mut file = loop {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo) {
                    Ok(file) => break file,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            // Back to blocking writes.
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
                libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) & !libc::O_NONBLOCK);
            }
            for piece in data.chunks(bytes_per_tick) {
                if flag.load(Ordering::Relaxed) || std::io::Write::write_all(&mut file, piece).is_err() {
                    return;
                }
                std::thread::sleep(tick);
            }
        });
        SlowFeeder { stop, thread: Some(thread) }
    }
}

impl Drop for SlowFeeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An archive made on either image store loads into a daemon of either store, and the next load
/// finds it present and sends nothing; so does a load after a plain pull of the image.
#[test]
fn archives_from_either_store_load_into_either_daemon_and_are_then_present() {
    let label = unique("cross");
    let image = TestImage::push(&format!("ipt/{label}"), "1");
    let name = format!("ipt/{label}_1.tar");
    let stores = [Daemon::Classic, Daemon::Containerd];
    let dirs: Vec<tempfile::TempDir> = stores
        .iter()
        .map(|&store| {
            with_daemon(store, || {
                let dir = tempfile::tempdir().unwrap();
                let d = dir.path().to_str().unwrap();
                run(preloader(&["warm", "--dir", d, &image.reference]), TIMEOUT).assert_code(0);
                image.remove_local();
                dir
            })
        })
        .collect();
    for (from, dir) in stores.iter().zip(&dirs) {
        for into in stores {
            with_daemon(into, || {
                let what = format!("an archive from the {from:?} store into the {into:?} daemon");
                image.remove_local();
                let out = load(dir.path(), &[&name]);
                out.assert_code(0);
                assert!(out.stdout.starts_with("loaded"), "{what}: {}\n{}", out.stdout, out.stderr);
                assert_eq!(docker(&["run", "--rm", "--network", "none", &image.reference]), image.marker);
                let again = load(dir.path(), &[&name]);
                again.assert_code(0);
                assert!(again.stdout.starts_with("present"), "{what}, loaded before: {}", again.stdout);
                assert!(again.stderr.contains("0 loaded (0 B), 1 already present"), "{}", again.stderr);

                // Pulled instead: the same image, so present too.
                image.remove_local();
                docker(&["pull", "-q", &image.reference]);
                let pulled = load(dir.path(), &[&name]);
                pulled.assert_code(0);
                assert!(pulled.stdout.starts_with("present"), "{what}, pulled before: {}", pulled.stdout);
            });
        }
    }
    for store in stores {
        with_daemon(store, || image.remove_local());
    }
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

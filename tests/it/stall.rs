//! Stalled daemons, with fault injectors on Unix sockets (not mocks of the engine: they only
//! withhold answers or bytes). A "daemon" that answers `/_ping` and `/version` and then never
//! answers: `warm` and `load` must fail the image within `--stall-timeout`, and `load` must stop on
//! the first SIGTERM. A proxy in front of a real daemon that stops the bytes of one call midway (the
//! export's answer, the load's upload), on both daemons: the same, and the daemon keeps nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::harden::valid_archive;
use crate::support::{Running, TestImage, daemon, files, preloader, run, temporaries, unique};

/// A socket whose "daemon" answers the ping and the version, then holds every other request open
/// without a byte of answer. Each withheld request line is sent on `withheld`.
struct StallingDaemon {
    path: PathBuf,
    withheld: mpsc::Receiver<String>,
}

impl StallingDaemon {
    fn start() -> StallingDaemon {
        let path = std::env::temp_dir().join(format!("{}.sock", unique("stalling-daemon")));
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, withheld) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || serve(stream, tx));
            }
        });
        StallingDaemon { path, withheld }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for StallingDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, withheld: mpsc::Sender<String>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let target = request.split(' ').nth(1).unwrap_or("");
        let body = if target.ends_with("/_ping") {
            "OK".to_owned()
        } else if target.ends_with("/version") {
            r#"{"Version":"20.10.0-stalling","ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}"#.to_owned()
        } else {
            let _ = withheld.send(request.trim_end().to_owned());
            // Never answer: swallow whatever the client sends until it gives up.
            let mut sink = [0u8; 64 << 10];
            while reader.read(&mut sink).unwrap_or(0) > 0 {}
            return;
        };
        let content_type = if body.starts_with('{') { "application/json" } else { "text/plain" };
        let answer = format!(
            "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn warm_fails_a_stalled_pull_within_the_deadline() {
    let daemon = StallingDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        preloader(&[
            "warm",
            "--dir",
            dir.path().to_str().unwrap(),
            "--docker-host",
            &daemon.host(),
            "--stall-timeout",
            "2s",
            "stalled/app:1",
        ]),
        Duration::from_secs(60),
    );
    out.assert_code(1);
    assert!(out.stderr.contains("stalled: no progress for 2s"), "{}", out.stderr);
    assert!(out.elapsed < Duration::from_secs(20), "failed within the deadline: {:?}", out.elapsed);
    let request = daemon.withheld.try_recv().expect("the pull reached the daemon");
    assert!(request.contains("/images/create"), "{request}");
}

#[test]
fn load_stops_on_the_first_sigterm_while_asking_the_daemon() {
    let daemon = StallingDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    valid_archive(&dir.path().join("app_1.tar"));
    let mut running = Running::spawn(preloader(&[
        "load",
        "--dir",
        dir.path().to_str().unwrap(),
        "--docker-host",
        &daemon.host(),
        "--stall-timeout",
        "1h",
        "app_1.tar",
    ]));
    let request = daemon.withheld.recv_timeout(Duration::from_secs(30)).expect("load asked the daemon");
    assert!(request.contains("/images/") && request.contains("/json"), "an inspect: {request}");
    std::thread::sleep(Duration::from_millis(300));
    running.signal(libc::SIGTERM);
    let status = running.wait_for_exit(Duration::from_secs(10));
    let (stdout, stderr) = running.collect();
    assert!(status.code().is_some(), "exited by itself, not by the second signal: {status:?}\n{stderr}");
    assert!(stdout.contains("cancelled"), "{stdout}\n{stderr}");
}

#[test]
fn load_fails_a_stalled_daemon_within_the_deadline() {
    let daemon = StallingDaemon::start();
    let dir = tempfile::tempdir().unwrap();
    valid_archive(&dir.path().join("app_1.tar"));
    let out = run(
        preloader(&[
            "load",
            "--dir",
            dir.path().to_str().unwrap(),
            "--docker-host",
            &daemon.host(),
            "--stall-timeout",
            "2s",
            "--strict",
            "app_1.tar",
        ]),
        Duration::from_secs(60),
    );
    out.assert_code(1);
    // The presence question stalls: a daemon that answers nothing gets no upload.
    assert!(
        out.stdout.starts_with("failed") && out.stdout.contains("stalled"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.elapsed < Duration::from_secs(20), "{:?}", out.elapsed);
}

/// Which bytes a [`StallingProxy`] stops once its trigger has been seen on a connection.
#[derive(Debug, Clone, Copy)]
enum Hold {
    /// The daemon's answer: `allow` more bytes reach the client, then nothing.
    Answer,
    /// The client's upload: `allow` more bytes reach the daemon, then nothing is read.
    Upload,
}

/// A proxy on a Unix socket in front of the test's real daemon. It passes every connection
/// through until a request line containing `trigger` is sent on it; from then on, that connection
/// passes `allow` more bytes in the held direction and then holds them, answering nothing and
/// reading nothing, until the proxy is dropped (which closes both sides).
struct StallingProxy {
    path: PathBuf,
    triggered: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl StallingProxy {
    fn start(trigger: &'static str, hold: Hold, allow: usize) -> StallingProxy {
        let host = daemon().host();
        let upstream = PathBuf::from(host.strip_prefix("unix://").expect("the test daemon on a Unix socket"));
        let path = std::env::temp_dir().join(format!("{}.sock", unique("stalling-proxy")));
        let listener = UnixListener::bind(&path).unwrap();
        let triggered = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (triggered.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { return };
                let Ok(daemon) = UnixStream::connect(&upstream) else { return };
                let link = Link { trigger, hold, allow, triggered: seen.clone(), stop: stopped.clone() };
                link.run(client, daemon);
            }
        });
        StallingProxy { path, triggered, stop }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Waits until the trigger was seen; fails the test after `timeout`.
    fn wait_triggered(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.triggered.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "no request containing the trigger within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the stop.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One proxied connection.
#[derive(Clone)]
struct Link {
    trigger: &'static str,
    hold: Hold,
    allow: usize,
    triggered: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Link {
    fn run(self, client: UnixStream, daemon: UnixStream) {
        // Set once the trigger went up this connection: how many answer bytes may still pass.
        let answer_budget = Arc::new(std::sync::Mutex::new(None::<usize>));
        let (up_from, up_to) = (client.try_clone().unwrap(), daemon.try_clone().unwrap());
        let up = self.clone();
        let budget = answer_budget.clone();
        std::thread::spawn(move || up.upstream(up_from, up_to, budget));
        std::thread::spawn(move || self.downstream(daemon, client, answer_budget));
    }

    /// Client to daemon: watches for the trigger.
    fn upstream(
        self,
        mut from: UnixStream,
        mut to: UnixStream,
        answer_budget: Arc<std::sync::Mutex<Option<usize>>>,
    ) {
        let mut recent: Vec<u8> = Vec::new();
        let mut upload_budget: Option<usize> = None;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let mut n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if upload_budget.is_none() {
                recent.extend_from_slice(&buf[..n]);
                if find(&recent, self.trigger.as_bytes()) {
                    self.triggered.store(true, Ordering::SeqCst);
                    match self.hold {
                        Hold::Answer => *answer_budget.lock().unwrap() = Some(self.allow),
                        // Counted from the chunk holding the request line.
                        Hold::Upload => upload_budget = Some(self.allow),
                    }
                }
                let keep = recent.len().saturating_sub(self.trigger.len());
                recent.drain(..keep);
            }
            if let Some(budget) = upload_budget.as_mut() {
                n = n.min(*budget);
                *budget -= n;
            }
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
            if upload_budget == Some(0) {
                self.hold_until_stopped();
                return;
            }
        }
    }

    /// Daemon to client: stops once the answer budget is spent.
    fn downstream(
        self,
        mut from: UnixStream,
        mut to: UnixStream,
        answer_budget: Arc<std::sync::Mutex<Option<usize>>>,
    ) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let mut n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut spent = false;
            if let Some(budget) = answer_budget.lock().unwrap().as_mut() {
                n = n.min(*budget);
                *budget -= n;
                spent = *budget == 0;
            }
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
            if spent {
                self.hold_until_stopped();
                return;
            }
        }
    }

    fn hold_until_stopped(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An image of about 4 MiB, warmed into a new directory through the real daemon and then removed
/// from it; returns the image, the directory and the archive's name in it.
fn warmed(label: &str) -> (TestImage, tempfile::TempDir, String) {
    let name = unique(label);
    let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", 4 << 20);
    let dir = tempfile::tempdir().unwrap();
    run(
        preloader(&["warm", "--dir", dir.path().to_str().unwrap(), &image.reference]),
        Duration::from_secs(180),
    )
    .assert_code(0);
    image.remove_local();
    (image, dir, format!("ipt/{name}_1.tar"))
}

fn archives(dir: &Path) -> Vec<String> {
    files(dir).into_keys().filter(|f| f.ends_with(".tar")).collect()
}

on_both_daemons! {
    fn warm_fails_an_export_that_stops_midway_within_the_deadline() {
        let name = unique("stallexport");
        let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", 4 << 20);
        // The export's answer stops after 256 KiB.
        let proxy = StallingProxy::start("/get HTTP/1.1", Hold::Answer, 256 << 10);
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            preloader(&[
                "warm",
                "--dir",
                dir.path().to_str().unwrap(),
                "--docker-host",
                &proxy.host(),
                "--stall-timeout",
                "3s",
                &image.reference,
            ]),
            Duration::from_secs(180),
        );
        out.assert_code(1);
        assert!(proxy.triggered.load(Ordering::SeqCst), "the export went through the proxy");
        assert!(out.stderr.contains("stalled: no progress for 3s"), "{}", out.stderr);
        assert!(out.stderr.contains("export"), "the failing step is named: {}", out.stderr);
        assert!(archives(dir.path()).is_empty(), "nothing published: {:?}", files(dir.path()));
        assert!(temporaries(dir.path()).is_empty(), "no temporary left: {:?}", files(dir.path()));
    }

    fn load_fails_an_upload_the_daemon_stops_taking_and_the_daemon_keeps_nothing() {
        let (image, dir, archive) = warmed("stallload");
        // The daemon takes 256 KiB of the upload, then nothing more, and never answers.
        let proxy = StallingProxy::start("/images/load", Hold::Upload, 256 << 10);
        let started = Instant::now();
        let out = run(
            preloader(&[
                "load",
                "--dir",
                dir.path().to_str().unwrap(),
                "--docker-host",
                &proxy.host(),
                "--stall-timeout",
                "3s",
                "--strict",
                &archive,
            ]),
            Duration::from_secs(60),
        );
        out.assert_code(1);
        assert!(proxy.triggered.load(Ordering::SeqCst), "the upload went through the proxy");
        assert!(
            out.stdout.starts_with("failed") && out.stdout.contains("stalled: no progress for 3s"),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
        drop(proxy);
        assert!(!image.is_tagged(), "the daemon applied no tag of an upload it never finished");
    }

    fn load_stops_on_the_first_sigterm_during_an_upload_the_daemon_stopped_taking() {
        let (image, dir, archive) = warmed("stallterm");
        let proxy = StallingProxy::start("/images/load", Hold::Upload, 256 << 10);
        let mut running = Running::spawn(preloader(&[
            "load",
            "--dir",
            dir.path().to_str().unwrap(),
            "--docker-host",
            &proxy.host(),
            "--stall-timeout",
            "1h",
            &archive,
        ]));
        proxy.wait_triggered(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(500));
        let signalled = Instant::now();
        running.signal(libc::SIGTERM);
        let status = running.wait_for_exit(Duration::from_secs(10));
        let (stdout, stderr) = running.collect();
        assert!(status.code().is_some(), "exited by itself, not by a second signal: {status:?}\n{stderr}");
        assert!(signalled.elapsed() < Duration::from_secs(5), "{:?}", signalled.elapsed());
        assert!(stdout.contains("cancelled"), "{stdout}\n{stderr}");
        drop(proxy);
        assert!(!image.is_tagged(), "the daemon applied no tag of an upload it never finished");
    }
}

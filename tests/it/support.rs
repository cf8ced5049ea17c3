//! Shared helpers: the real daemons and registry, unique test images, running the binary.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub const BIN: &str = env!("CARGO_BIN_EXE_image-preloader");
const START_HINT: &str = "run scripts/test.sh, which installs and starts dockerd and a registry, \
     or start them yourself (`dockerd &`, `docker-registry serve CONFIG` on 127.0.0.1:5000)";
const CONTAINERD_HINT: &str = "run scripts/test.sh, which fetches Debian 13's docker.io and containerd and \
     starts that dockerd with the containerd image store (scripts/env.sh: ensure_containerd_dockerd), \
     or point IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD at such a daemon";

/// Runs each test body once per daemon: `classic::<name>` against the first daemon (Docker 20.10,
/// classic image store) and `containerd::<name>` against the second one (a current engine with the
/// containerd image store, what a fresh `docker:29-dind` runs). Inside the body, the docker CLI of
/// these helpers and every run of the binary talk to that daemon ([`daemon`]).
macro_rules! on_both_daemons {
    ($( $(#[$attr:meta])* fn $name:ident() $body:block )*) => {
        $( $(#[$attr])* fn $name() $body )*
        mod classic {
            $(
                #[test]
                fn $name() {
                    $crate::support::on_daemon($crate::support::Daemon::Classic, super::$name)
                }
            )*
        }
        mod containerd {
            $(
                #[test]
                fn $name() {
                    $crate::support::on_daemon($crate::support::Daemon::Containerd, super::$name)
                }
            )*
        }
    };
}

/// A daemon the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `DOCKER_HOST`, else /var/run/docker.sock: Docker 20.10 with the classic image store. Test
    /// images are built here, and the container image under test lives here (it plays the node's
    /// container runtime in the pod simulations).
    Classic,
    /// `IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD`, else /run/image-preloader-test/docker.sock:
    /// Docker 26 with the containerd image store.
    Containerd,
}

thread_local! {
    /// The daemon chosen with [`on_daemon`] or [`with_daemon`], if any.
    static CURRENT: Cell<Option<Daemon>> = const { Cell::new(None) };
}

/// The daemon the running test talks to (the classic one outside [`on_both_daemons`]).
pub fn daemon() -> Daemon {
    CURRENT.with(Cell::get).unwrap_or(Daemon::Classic)
}

/// Runs `test` against `daemon`; fails it with instructions if that daemon is not there. Runs of
/// the binary in it use `--mode daemon` unless they say otherwise, so that they exercise the daemon
/// (`auto` would fall back to the registries when the daemon is slow to answer).
pub fn on_daemon(daemon: Daemon, test: fn()) {
    CURRENT.with(|c| c.set(Some(daemon)));
    daemon.ensure();
    test();
}

/// Runs `work` with the helpers and the binary talking to `daemon`, as [`on_daemon`] does, then
/// returns to the test's own.
pub fn with_daemon<T>(daemon: Daemon, work: impl FnOnce() -> T) -> T {
    daemon.ensure();
    let before = CURRENT.with(|c| c.replace(Some(daemon)));
    let out = work();
    CURRENT.with(|c| c.set(before));
    out
}

impl Daemon {
    /// The daemon's address, as `DOCKER_HOST` takes it.
    pub fn host(self) -> String {
        let (var, default) = match self {
            Daemon::Classic => ("DOCKER_HOST", "unix:///var/run/docker.sock"),
            Daemon::Containerd => (
                "IMAGE_PRELOADER_TEST_DOCKER_HOST_CONTAINERD",
                "unix:///run/image-preloader-test/docker.sock",
            ),
        };
        std::env::var(var).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| default.to_owned())
    }

    /// A docker CLI command talking to this daemon.
    pub fn cli(self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", self.host()).env("DOCKER_BUILDKIT", "0");
        cmd
    }

    /// Fails the test with instructions if the daemon does not answer or has the wrong image store.
    pub fn ensure(self) {
        static CHECKED: [OnceLock<Result<(), String>>; 2] = [OnceLock::new(), OnceLock::new()];
        let result = CHECKED[self as usize].get_or_init(|| {
            let host = self.host();
            let hint = match self {
                Daemon::Classic => START_HINT,
                Daemon::Containerd => CONTAINERD_HINT,
            };
            let out = self.cli().args(["info", "--format", "{{json .DriverStatus}}"]).output();
            let status = match out {
                Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
                Ok(out) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    return Err(format!("no Docker daemon answers at {host} ({}); {hint}", stderr.trim()));
                }
                Err(e) => return Err(format!("cannot run the docker CLI ({e}); {hint}")),
            };
            let containerd_store = status.contains("io.containerd.snapshotter");
            match (self, containerd_store) {
                (Daemon::Classic, true) => Err(format!(
                    "the daemon at {host} uses the containerd image store; the classic tests need one with \
                     the classic store (Docker 20.10 as scripts/test.sh starts it)"
                )),
                (Daemon::Containerd, false) => {
                    Err(format!("the daemon at {host} does not use the containerd image store; {hint}"))
                }
                _ => Ok(()),
            }
        });
        if let Err(message) = result {
            panic!("{message}");
        }
    }
}

/// The registry address the tests push to; fails the test if none answers.
pub fn registry() -> &'static str {
    static REGISTRY: OnceLock<Result<String, String>> = OnceLock::new();
    let result = REGISTRY.get_or_init(|| {
        let addr = std::env::var("IMAGE_PRELOADER_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
        let answer = http_get(&addr, "/v2/");
        match answer {
            Ok(status) if status.starts_with("HTTP/1.1 200") => Ok(addr),
            Ok(status) => Err(format!("the registry at {addr} answered {status:?}; {START_HINT}")),
            Err(e) => Err(format!("no registry answers at {addr} ({e}); {START_HINT}")),
        }
    });
    match result {
        Ok(addr) => {
            ensure_docker();
            addr
        }
        Err(message) => panic!("{message}"),
    }
}

fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Runs curl (`-fsS`) with `body` as the request body; returns stdout.
fn curl(args: &[&str], body: Option<&Path>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-fsS"]).args(args);
    if let Some(body) = body {
        cmd.arg("--data-binary").arg(format!("@{}", body.display()));
    }
    let out = cmd.output().expect("run curl (scripts/test.sh installs it)");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Uploads a blob to `repo` on `registry` through the registry API (`scratch`: a directory for
/// the request body) and returns its digest.
pub fn upload_blob(registry: &str, repo: &str, bytes: &[u8], scratch: &Path) -> String {
    let digest = sha256_digest(bytes);
    let file = scratch.join(digest.replace(':', "-"));
    std::fs::write(&file, bytes).unwrap();
    let headers = curl(
        &["-X", "POST", "-D", "-", "-o", "/dev/null", &format!("http://{registry}/v2/{repo}/blobs/uploads/")],
        None,
    );
    let location = headers
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim())
        })
        .expect("an upload location");
    let location = if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("http://{registry}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    curl(
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-o",
            "/dev/null",
            &format!("{location}{sep}digest={digest}"),
        ],
        Some(&file),
    );
    digest
}

/// Puts a manifest of `media_type` as `repo:reference` on `registry` through the registry API.
pub fn put_manifest(
    registry: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
    scratch: &Path,
) {
    let file = scratch.join(format!("manifest-{}", sha256_digest(body).replace(':', "-")));
    std::fs::write(&file, body).unwrap();
    curl(
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "-o",
            "/dev/null",
            &format!("http://{registry}/v2/{repo}/manifests/{reference}"),
        ],
        Some(&file),
    );
}

/// Fails the test with instructions if the test's daemon (and the classic one, where test images
/// are built) does not answer.
pub fn ensure_docker() {
    Daemon::Classic.ensure();
    daemon().ensure();
}

/// Runs the docker CLI against the test's daemon and returns stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    docker_on(daemon(), args)
}

/// Runs the docker CLI against `daemon` and returns stdout; panics with stderr on failure.
pub fn docker_on(daemon: Daemon, args: &[&str]) -> String {
    docker_on_with_config(daemon, None, args)
}

fn docker_on_with_config(daemon: Daemon, config: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = daemon.cli();
    if let Some(dir) = config {
        cmd.arg("--config").arg(dir);
    }
    let out = cmd.args(args).output().expect("run docker");
    assert!(
        out.status.success(),
        "docker {} ({daemon:?} daemon) failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs the docker CLI against the test's daemon, ignoring failures (cleanup).
pub fn docker_quiet(args: &[&str]) {
    docker_quiet_on(daemon(), args);
}

/// Runs the docker CLI against `daemon`, ignoring failures (cleanup).
pub fn docker_quiet_on(daemon: Daemon, args: &[&str]) {
    let _ = daemon.cli().args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// An image built `FROM scratch` with a static busybox and a unique marker file, pushed to the
/// test registry and removed from the daemon. Dropping it removes what the test left in the daemon.
///
/// It is built and pushed on the classic daemon, whatever the test's daemon: only the registry
/// copy matters. Its layers are its own (busybox and the marker share one layer, the data is
/// random): no two test images share a layer, so no test depends on what another left in a daemon
/// (on the containerd store a layer shared across differently compressed blobs changes what the
/// daemon can export: moby#49473).
#[derive(Debug)]
pub struct TestImage {
    /// `registry/path:tag`.
    pub reference: String,
    /// `registry/path`.
    pub repository: String,
    /// The config digest: the image ID on the classic store.
    pub id: String,
    /// The registry's manifest digest, `sha256:…`: the image ID on the containerd store.
    pub digest: String,
    /// Content of `/marker` in the image.
    pub marker: String,
}

impl TestImage {
    /// A small image at `<registry>/<path>:<tag>`.
    pub fn push(path: &str, tag: &str) -> TestImage {
        TestImage::push_with_data(path, tag, 0)
    }

    /// An image with an extra `/data` file of `data_bytes` random bytes: its archive has about
    /// that size on both stores (the containerd store exports the registry's compressed layers).
    pub fn push_with_data(path: &str, tag: &str, data_bytes: usize) -> TestImage {
        TestImage::push_to(registry(), path, tag, data_bytes)
    }

    /// Like [`TestImage::push_with_data`], to the registry at `registry`.
    pub fn push_to(registry: &str, path: &str, tag: &str, data_bytes: usize) -> TestImage {
        TestImage::push_with_config(registry, path, tag, data_bytes, None)
    }

    /// Like [`TestImage::push_to`], pushing with the docker CLI's config directory `config` (the
    /// credentials of a password-protected registry).
    pub fn push_with_config(
        registry: &str,
        path: &str,
        tag: &str,
        data_bytes: usize,
        config: Option<&Path>,
    ) -> TestImage {
        ensure_docker();
        let builder = Daemon::Classic;
        let repository = format!("{registry}/{path}");
        let reference = format!("{repository}:{tag}");
        let context = tempfile::tempdir().unwrap();
        let marker = unique("marker");
        let rootfs = context.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("a static busybox at /bin/busybox (Debian busybox-static; scripts/test.sh installs it)");
        std::fs::write(rootfs.join("marker"), &marker).unwrap();
        let mut dockerfile = String::from("FROM scratch\nCOPY rootfs/ /\n");
        if data_bytes > 0 {
            let mut random = std::fs::File::open("/dev/urandom").unwrap().take(data_bytes as u64);
            let mut data = std::fs::File::create(context.path().join("data")).unwrap();
            assert_eq!(std::io::copy(&mut random, &mut data).unwrap(), data_bytes as u64);
            dockerfile.push_str("COPY data /data\n");
        }
        dockerfile.push_str("CMD [\"/bin/busybox\", \"cat\", \"/marker\"]\n");
        std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();

        // No build cache: with the legacy builder, cached steps are untagged parent images shared
        // between test images, and removing one test's image (in parallel) can prune a parent
        // another build is about to use ("unknown parent image ID").
        docker_on(
            builder,
            &["build", "-q", "--no-cache", "-t", &reference, context.path().to_str().unwrap()],
        );
        let id = docker_on(builder, &["image", "inspect", "--format", "{{.Id}}", &reference]);
        docker_on_with_config(builder, config, &["push", "-q", &reference]);
        let repo_digest =
            docker_on(builder, &["image", "inspect", "--format", "{{index .RepoDigests 0}}", &reference]);
        let digest = repo_digest.split_once('@').expect("a repo digest after push").1.to_owned();
        docker_quiet_on(builder, &["image", "rm", "-f", &id]);
        TestImage { reference, repository, id, digest, marker }
    }

    /// `registry/path@sha256:…`.
    pub fn by_digest(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }

    /// The image's ID on the test's daemon once pulled, or loaded from an archive that daemon made.
    pub fn local_id(&self) -> &str {
        match daemon() {
            Daemon::Classic => &self.id,
            Daemon::Containerd => &self.digest,
        }
    }

    /// Removes every local copy of the image from the test's daemon, under any name of its
    /// repository (an archive from the other store loads under another ID on the containerd store).
    pub fn remove_local(&self) {
        let listed = daemon()
            .cli()
            .args(["image", "ls", "--no-trunc", "--format", "{{.ID}}", &self.repository])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let mut ids: Vec<&str> = listed.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        ids.push(self.local_id());
        ids.sort_unstable();
        ids.dedup();
        let mut args = vec!["image", "rm", "-f"];
        args.extend(ids);
        docker_quiet(&args);
    }

    /// Whether the test's daemon has the image.
    pub fn is_local(&self) -> bool {
        daemon()
            .cli()
            .args(["image", "inspect", self.local_id()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Whether the test's daemon has an image tagged [`TestImage::reference`].
    pub fn is_tagged(&self) -> bool {
        daemon()
            .cli()
            .args(["image", "inspect", &self.reference])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Loads `archive` into the test's daemon and checks the image comes back with the same ID and
    /// runs.
    pub fn assert_loads_and_runs(&self, archive: &Path) {
        for attempt in 1.. {
            self.remove_local();
            let loaded = docker(&["load", "-q", "-i", archive.to_str().unwrap()]);
            assert!(
                self.is_local(),
                "loading {} did not restore image {}: {loaded}",
                archive.display(),
                self.local_id()
            );
            let out =
                daemon().cli().args(["run", "--rm", "--network", "none", self.local_id()]).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Docker 26's containerd store can lose a layer's snapshot when the image is removed and
            // loaded again at once: the load finds the snapshot its garbage collection is about to
            // remove. The archive is not at fault; once more, after a pause, settles it.
            if !out.status.success() && stderr.contains("snapshot") && attempt == 1 {
                eprintln!("retrying a load whose snapshot the daemon removed meanwhile: {}", stderr.trim());
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            assert!(out.status.success(), "the loaded image {} does not run: {stderr}", self.local_id());
            let marker = String::from_utf8_lossy(&out.stdout);
            assert_eq!(marker.trim(), self.marker, "the loaded image runs and holds its own marker");
            return;
        }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        self.remove_local();
    }
}

/// The `--min-free` floor every test run of the binary gets unless it sets its own. The default
/// (10% of the file system) depends on the machine: on a host whose disk is over 90% full it would
/// refuse every build. Tests of the guard itself pass their own floor.
pub const TEST_MIN_FREE: &str = "256MiB";

/// A command for the binary, isolated from the caller's `IMAGE_PRELOADER_*` settings, with the
/// [`TEST_MIN_FREE`] floor, talking to the test's [`daemon`].
pub fn preloader(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("IMAGE_PRELOADER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("IMAGE_PRELOADER_MIN_FREE", TEST_MIN_FREE);
    // The test's daemon, unless the test passes --docker-host or IMAGE_PRELOADER_DOCKER_HOST.
    cmd.env("DOCKER_HOST", daemon().host());
    if CURRENT.with(Cell::get).is_some() {
        // Unless the test passes --mode: it is about the daemon (see `on_daemon`).
        cmd.env("IMAGE_PRELOADER_MODE", "daemon");
    }
    cmd.args(args);
    cmd
}

/// The result of a finished run.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }

    /// Asserts the exit code, showing the logs otherwise.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(self.status.code(), Some(expected), "exit status; stderr:\n{}", self.stderr);
        self
    }

    /// JSON log events (with `--log-format json`).
    pub fn events(&self) -> Vec<serde_json::Value> {
        parse_events(&self.stderr)
    }
}

pub fn parse_events(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
        .collect()
}

/// Runs the command to completion, failing the test if it takes longer than `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Finished {
    let start = Instant::now();
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut running = Running::new(child);
    let status = running.wait_for_exit(timeout);
    let (stdout, stderr) = running.collect();
    Finished { status, stdout, stderr, elapsed: start.elapsed() }
}

/// A running binary whose stderr lines are collected as they come.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Mutex<Vec<String>>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Running::new(child)
    }

    fn new(mut child: Child) -> Running {
        let stderr = child.stderr.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        Running { child, lines, seen: Mutex::new(Vec::new()), stdout: Some(stdout) }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until a stderr line contains `needle`; panics with the log so far after `timeout`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.lock().unwrap().push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?} within {timeout:?}; log so far:\n{}",
                    self.seen.lock().unwrap().join("\n")
                ),
            }
        }
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits for exit, killing the process and failing the test after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (_, stderr) = self.collect();
                panic!("still running after {timeout:?}; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Everything written to stdout and stderr (after exit).
    pub fn collect(&mut self) -> (String, String) {
        let mut seen = self.seen.lock().unwrap().clone();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
        let stdout = self.stdout.take().map(|h| h.join().unwrap()).unwrap_or_default();
        (stdout, seen.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every file under `dir`, relative, with its size (directories left out).
pub fn files(dir: &Path) -> BTreeMap<String, u64> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            (rel, e.metadata().unwrap().len())
        })
        .collect()
}

/// The temporary files the tool leaves while writing, anywhere under `dir`.
pub fn temporaries(dir: &Path) -> Vec<String> {
    files(dir).into_keys().filter(|p| p.ends_with(".image-preloader-partial")).collect()
}

/// Polls until a temporary file under `dir` holds at least `min_bytes`; returns its path.
/// Panics if `running` exits first or `timeout` passes.
pub fn wait_for_partial(dir: &Path, running: &mut Running, min_bytes: u64, timeout: Duration) -> PathBuf {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((path, _)) = files(dir)
            .into_iter()
            .find(|(p, size)| p.ends_with(".image-preloader-partial") && *size >= min_bytes)
        {
            return dir.join(path);
        }
        if running.has_exited() {
            let (_, stderr) = running.collect();
            panic!("the process ended before a partial archive of {min_bytes} bytes appeared:\n{stderr}");
        }
        assert!(Instant::now() < deadline, "no partial archive of {min_bytes} bytes within {timeout:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Writes `content` at `path` (creating parents) with a modification time `age` in the past.
pub fn write_aged(path: &Path, content: &[u8], age: Duration) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    age_file(path, age);
}

pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Sets a file's modification time `age` in the past.
pub fn age_file(path: &Path, age: Duration) {
    let mtime = filetime::FileTime::from_system_time(SystemTime::now() - age);
    filetime::set_file_mtime(path, mtime).unwrap();
}

/// The record next to an archive, as JSON.
pub fn read_record(archive: &Path) -> serde_json::Value {
    let mut path = archive.as_os_str().to_owned();
    path.push(".json");
    let text =
        std::fs::read(&path).unwrap_or_else(|e| panic!("no record at {}: {e}", Path::new(&path).display()));
    serde_json::from_slice(&text).unwrap()
}

/// Rewrites one field of an archive's record.
pub fn edit_record(archive: &Path, field: &str, value: serde_json::Value) {
    let mut record = read_record(archive);
    record[field] = value;
    let mut path = archive.as_os_str().to_owned();
    path.push(".json");
    std::fs::write(path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
}

/// The password-protected registry (htpasswd) scripts/test.sh starts, with its fixed user.
pub const AUTH_USER: &str = "preloader";
/// Its password (scripts/env.sh sets the same one).
pub const AUTH_PASSWORD: &str = "pre?load>er~secret";

/// The password-protected registry's address; fails the test if it does not ask for a password.
pub fn auth_registry() -> &'static str {
    static REGISTRY: OnceLock<Result<String, String>> = OnceLock::new();
    let result = REGISTRY.get_or_init(|| {
        let addr =
            std::env::var("IMAGE_PRELOADER_TEST_AUTH_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5001".into());
        let hint = "run scripts/test.sh, which starts a password-protected registry (docker-registry \
                    with htpasswd auth, user preloader) on 127.0.0.1:5001";
        match http_get(&addr, "/v2/") {
            Ok(status) if status.starts_with("HTTP/1.1 401") => Ok(addr),
            Ok(status) => Err(format!("the registry at {addr} answered {status:?}, not 401; {hint}")),
            Err(e) => Err(format!("no registry answers at {addr} ({e}); {hint}")),
        }
    });
    match result {
        Ok(addr) => {
            ensure_docker();
            addr
        }
        Err(message) => panic!("{message}"),
    }
}

/// A registry of the test's own on a free loopback port, so the test can stop it.
pub struct PrivateRegistry {
    pub addr: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PrivateRegistry {
    pub fn start() -> PrivateRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry ({e}); {START_HINT}"));
        let registry = PrivateRegistry { addr, child: Some(child), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(&registry.addr, "/v2/").is_err() {
            assert!(Instant::now() < deadline, "the private registry did not start on {}", registry.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// Stops the registry: nothing answers at its address any more.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small tmpfs mounted on a temporary directory (needs root), unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.path().to_str().unwrap()])
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for a small file system (this test needs root, as scripts/test.sh runs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A read-only bind mount of a directory (needs root), unmounted on drop: what a runner pod gets
/// from a hostPath volume with `readOnly: true`.
pub struct ReadOnlyView {
    dir: tempfile::TempDir,
}

impl ReadOnlyView {
    pub fn of(source: &Path) -> ReadOnlyView {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().to_str().unwrap();
        for args in [vec!["--bind", source.to_str().unwrap(), target], vec!["-o", "remount,bind,ro", target]]
        {
            let out = Command::new("mount").args(&args).output().expect("run mount");
            assert!(
                out.status.success(),
                "cannot make a read-only bind mount (this test needs root, as scripts/test.sh runs): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ReadOnlyView { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Names, sizes and modification times of every file under `dir`: equal snapshots mean nothing
/// was written.
pub fn snapshot(dir: &Path) -> Vec<(String, u64, SystemTime)> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| {
            let meta = e.metadata().unwrap();
            (e.path().strip_prefix(dir).unwrap().display().to_string(), meta.len(), meta.modified().unwrap())
        })
        .collect()
}

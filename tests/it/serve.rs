//! `run --listen`: /healthz, /readyz and /metrics over HTTP against a running sidecar.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Running, TestImage, preloader, registry, temporaries, unique, wait_for_partial};

/// Status code and body of `GET path` on `addr`.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) =
        response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {response:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, body.to_owned())
}

/// Starts `run` with `--listen 127.0.0.1:0` and returns it with the address it serves on.
pub fn serve(args: &[&str]) -> (Running, String) {
    let mut all = vec!["run", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let running = Running::spawn(preloader(&all));
    let line = running.wait_for_line("serving /healthz", Duration::from_secs(10));
    let addr = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no listen= in {line:?}"))
        .to_owned();
    (running, addr)
}

/// Polls until `path` answers `status`, or panics after `timeout`.
pub fn wait_for_status(addr: &str, path: &str, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = get(addr, path);
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} still answers {got} after {timeout:?}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The samples of `/metrics`, parsed as Prometheus text.
fn metrics(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("metrics parse")
}

/// The value of the sample `name` whose labels include every `labels` pair (summed over matches).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is not a plain value: {other:?}"),
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// The value of one metric from a fresh scrape.
pub fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    value(&metrics(addr), name, labels)
}

/// A daemon socket that appears and disappears: a symlink to the real one.
fn link_daemon(link: &Path) {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let socket = host.strip_prefix("unix://").expect("the tests' DOCKER_HOST is a unix socket");
    std::os::unix::fs::symlink(socket, link).unwrap();
}

/// Deletes the image's manifest from the test registry (it runs with deletes enabled).
fn delete_manifest(image: &TestImage) {
    let addr = registry();
    let path = image.repository.strip_prefix(&format!("{addr}/")).unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "DELETE /v2/{path}/manifests/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        image.digest
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "the registry refused the delete: {response}");
}

#[test]
fn readiness_flips_after_the_first_pass_and_survives_a_failed_refresh_counted_in_metrics() {
    let name = unique("ready");
    let image = TestImage::push(&format!("ipt/{name}"), "1");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let archives = dir.path().join("images");
    let host = format!("unix://{}", socket.display());
    let (mut running, addr) = serve(&[
        "--docker-host",
        &host,
        "--dir",
        archives.to_str().unwrap(),
        "--interval",
        "1s",
        "--max-image-age",
        "0",
        "--refresh-policy",
        "rebuild",
        &image.reference,
    ]);

    // No daemon yet: alive, not ready, and the body says what is missing.
    running.wait_for_line("waiting for the docker daemon", Duration::from_secs(10));
    let (status, body) = get(&addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&image.reference), "the missing image is listed: {body}");
    let scrape = metrics(&addr);
    assert_eq!(value(&scrape, "image_preloader_images_listed", &[]), Some(1.0));
    assert_eq!(value(&scrape, "image_preloader_images_ready", &[]), Some(0.0));

    // The daemon appears: the first pass builds the archive and readiness flips.
    link_daemon(&socket);
    wait_for_status(&addr, "/readyz", 200, Duration::from_secs(120));
    assert!(archives.join(format!("ipt/{name}_1.tar")).is_file(), "ready means the archive is there");
    let scrape = metrics(&addr);
    assert_eq!(value(&scrape, "image_preloader_images_ready", &[]), Some(1.0));
    let bytes = value(&scrape, "image_preloader_archive_bytes", &[("image", &image.reference)]).unwrap();
    let size = std::fs::metadata(archives.join(format!("ipt/{name}_1.tar"))).unwrap().len();
    assert_eq!(bytes, size as f64, "archive bytes is the archive's size");
    assert!(value(&scrape, "image_preloader_written_bytes_total", &[]).unwrap() >= size as f64);
    assert!(
        value(&scrape, "image_preloader_build_info", &[("version", env!("CARGO_PKG_VERSION"))]).is_some()
    );
    let failures = |scrape: &prometheus_parse::Scrape| {
        value(scrape, "image_preloader_image_failures_total", &[("image", &image.reference)]).unwrap_or(0.0)
    };
    assert_eq!(failures(&scrape), 0.0);

    // The image vanishes from the registry: every refresh now fails, but the archive remains, so
    // the node stays ready.
    delete_manifest(&image);
    let deadline = Instant::now() + Duration::from_secs(60);
    let scrape = loop {
        let scrape = metrics(&addr);
        if failures(&scrape) >= 1.0 {
            break scrape;
        }
        assert!(Instant::now() < deadline, "no failure counted within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let failed = scrape
        .samples
        .iter()
        .find(|s| s.metric == "image_preloader_image_failures_total")
        .expect("a failure series");
    assert!(failed.labels.get("step").is_some() && failed.labels.get("kind").is_some(), "{failed:?}");
    assert_eq!(
        value(&scrape, "image_preloader_image_outcomes_total", &[("outcome", "failed")]),
        Some(failures(&scrape))
    );
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 200, "a failed refresh keeps the node ready while the archive remains: {body}");
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/nothing-here").0, 404);

    running.signal(libc::SIGTERM);
    let status = running.wait_for_exit(Duration::from_secs(10));
    let (_, stderr) = running.collect();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn readiness_lists_an_image_that_cannot_be_pulled() {
    let missing = format!("{}/ipt/{}-absent:1", registry(), unique("unready"));
    let dir = tempfile::tempdir().unwrap();
    let (mut running, addr) = serve(&["--dir", dir.path().to_str().unwrap(), "--interval", "1s", &missing]);
    running.wait_for_line("pass 1 complete", Duration::from_secs(60));
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&missing) && body.contains("failed at pull (not_found)"), "{body}");
    let scrape = metrics(&addr);
    let failures = value(
        &scrape,
        "image_preloader_image_failures_total",
        &[("image", &missing), ("step", "pull"), ("kind", "not_found")],
    );
    assert!(failures.is_some_and(|f| f >= 1.0), "{:?}", scrape.samples);
    assert!(value(&scrape, "image_preloader_passes_total", &[]).is_some_and(|p| p >= 1.0));
    running.signal(libc::SIGTERM);
    assert_eq!(running.wait_for_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn healthz_answers_within_a_second_while_a_1_gib_archive_is_written() {
    const GIB: usize = 1 << 30;
    let name = unique("healthz");
    let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", GIB);
    let dir = tempfile::tempdir().unwrap();
    let (mut running, addr) = serve(&["--dir", dir.path().to_str().unwrap(), &image.reference]);
    wait_for_partial(dir.path(), &mut running, 1 << 20, Duration::from_secs(300));

    let mut slowest = Duration::ZERO;
    let mut during_write = 0;
    while !temporaries(dir.path()).is_empty() {
        let start = Instant::now();
        let (status, body) = get(&addr, "/healthz");
        let took = start.elapsed();
        assert_eq!(status, 200, "{body}");
        slowest = slowest.max(took);
        during_write += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("healthz during the 1 GiB write: {during_write} requests, slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "slowest /healthz answer during the write: {slowest:?}");
    assert!(during_write >= 5, "the write was too quick to probe: {during_write} requests");
    wait_for_status(&addr, "/readyz", 200, Duration::from_secs(60));
    assert!(std::fs::metadata(dir.path().join(format!("ipt/{name}_1.tar"))).unwrap().len() > GIB as u64);

    running.signal(libc::SIGTERM);
    assert_eq!(running.wait_for_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn listen_on_a_taken_address_is_refused_with_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let finished = crate::support::run(
        preloader(&["run", "--listen", &addr, "--dir", dir.path().to_str().unwrap(), "a:1"]),
        Duration::from_secs(10),
    );
    finished.assert_code(2);
    assert!(finished.stderr.contains("--listen"), "{}", finished.stderr);
}

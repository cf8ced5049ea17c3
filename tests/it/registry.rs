//! Registry mode's client and archive builder against the local registry, directly and through
//! small fault-injecting proxies (a dropped connection mid-blob, a 429, wrong bytes, a token
//! service), plus mirrors with fallback and platform selection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use image_preloader::format::builder::{Decode, Part};
use image_preloader::image::reference::Reference;
use image_preloader::platform::Platform;
use image_preloader::registry::client::{ClientOptions, ErrorKind, RegistryClient, RegistryError, Target};
use image_preloader::registry::manifest::host_platform;
use image_preloader::registry::retry::RetryPolicy;
use image_preloader::registry::{Credentials, Secret};
use image_preloader::source::registry::{self as archive, LayerStorage, Prepared};

use crate::support::{TestImage, read_record, registry, temporaries, unique};

/// Quick retries, so tests of failures stay fast.
fn quick_retries() -> RetryPolicy {
    RetryPolicy { attempts: 4, first_wait: Duration::from_millis(20), max_wait: Duration::from_millis(100) }
}

fn client(options: ClientOptions) -> RegistryClient {
    RegistryClient::new(ClientOptions { retry: quick_retries(), ..options }).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Prepares and streams `reference` into `path` (layers stored the default way); returns the plan
/// or the first error.
fn fetch(
    client: &RegistryClient,
    reference: &str,
    wanted: &Platform,
    path: &Path,
) -> Result<Prepared, RegistryError> {
    fetch_as(client, reference, wanted, path, LayerStorage::default())
}

/// Like [`fetch`], layers stored as `storage` says.
fn fetch_as(
    client: &RegistryClient,
    reference: &str,
    wanted: &Platform,
    path: &Path,
    storage: LayerStorage,
) -> Result<Prepared, RegistryError> {
    runtime().block_on(async {
        let prepared =
            archive::prepare(client, &Reference::parse(reference).unwrap(), wanted, storage).await?;
        let mut file = std::fs::File::create(path).unwrap();
        let mut bytes = archive::stream(client, &prepared);
        while let Some(chunk) = bytes.next().await {
            file.write_all(&chunk?).unwrap();
        }
        Ok(prepared)
    })
}

#[test]
fn registry_archive_loads_to_the_same_image_id_and_runs() {
    let image = TestImage::push_with_data(&format!("ipt/{}", unique("regarchive")), "1", 300_000);
    let dir = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for storage in [LayerStorage::Uncompressed, LayerStorage::Compressed] {
        let path = dir.path().join(format!("app_1-{storage:?}.tar"));
        let prepared =
            fetch_as(&client(ClientOptions::default()), &image.reference, &host_platform(), &path, storage)
                .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            prepared.plan.size(),
            "the planned size is exact"
        );
        assert_eq!(prepared.image_id(), image.id, "the config digest is the image ID");
        assert_eq!(prepared.resolved.digest, image.digest, "the digest a pull reports");
        let gunzipped = prepared
            .plan
            .parts()
            .iter()
            .filter(|p| matches!(p, Part::Blob(layer) if layer.decode == Decode::Gzip))
            .count();
        let expected =
            if storage == LayerStorage::Uncompressed { prepared.resolved.image.layers.len() } else { 0 };
        assert_eq!(gunzipped, expected, "{storage:?}");
        sizes.push(prepared.plan.size());
        image.assert_loads_and_runs(&path);
        // `docker load` restored the tag too.
        let tagged = crate::support::docker(&["image", "inspect", "--format", "{{.Id}}", &image.reference]);
        assert_eq!(tagged, image.id);
    }
    assert!(sizes[0] > sizes[1], "the data layer compresses: {sizes:?}");
}

#[test]
fn uncompressed_layers_are_checked_against_the_diff_ids() {
    // A layer whose gzip trailer states the wrong size: the proxy rewrites the last 4 bytes of the
    // range answer (the trailer) so the plan is wrong; streaming must fail, not write a bad tar.
    let image = TestImage::push_with_data(&format!("ipt/{}", unique("regdiffid")), "1", 200_000);
    let proxy = FaultProxy::start(|seen, _| {
        if is_big_blob(seen) && seen.range.as_deref().is_some_and(|r| r != "bytes=0-") {
            Fault::Corrupt
        } else {
            Fault::None
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let err = fetch_as(
        &client(ClientOptions::default()),
        &via(&proxy, &image),
        &host_platform(),
        &dir.path().join("a.tar"),
        LayerStorage::Uncompressed,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Integrity { .. }), "{err}");
    assert!(err.to_string().contains("its gzip trailer states"), "{err}");
}

#[test]
fn manifest_head_gives_the_pushed_digest() {
    let image = TestImage::push(&format!("ipt/{}", unique("reghead")), "1");
    let target = Target::of(&Reference::parse(&image.reference).unwrap());
    let digest = runtime().block_on(client(ClientOptions::default()).head_digest(&target)).unwrap();
    assert_eq!(digest, image.digest);
    let missing = Target { reference: "no-such-tag".into(), ..target };
    let err = runtime().block_on(client(ClientOptions::default()).head_digest(&missing)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

/// What a proxy does with one request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// Pass it on.
    None,
    /// Pass on the response head and this many body bytes, then drop the connection.
    Cut(usize),
    /// Answer 429 with `Retry-After: 0`.
    TooMany,
    /// Flip one byte in the middle of the body.
    Corrupt,
}

/// A request as the proxy saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

type Rule = dyn Fn(&Seen, usize) -> Fault + Send + Sync;

/// An HTTP proxy in front of the test registry that injects faults decided by `rule` (given the
/// request and how many requests came before it).
struct FaultProxy {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FaultProxy {
    fn start(rule: impl Fn(&Seen, usize) -> Fault + Send + Sync + 'static) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Rule> = Arc::new(rule);
        let upstream = registry().to_owned();
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (rule, log, upstream) = (rule.clone(), log.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &upstream, &*rule, &log);
                });
            }
        });
        FaultProxy { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut client: TcpStream, upstream: &str, rule: &Rule, log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let mut words = head[0].split(' ');
        let (method, path) = (words.next().unwrap_or("").to_owned(), words.next().unwrap_or("").to_owned());
        let header = |name: &str| {
            head.iter().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let seen = Seen { method, path, range: header("range"), authorization: header("authorization") };
        let fault = {
            let mut log = log.lock().unwrap();
            let fault = rule(&seen, log.len());
            log.push(seen.clone());
            fault
        };
        if fault == Fault::TooMany {
            client.write_all(
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n",
            )?;
            continue;
        }
        // Forward with a fresh upstream connection per request, closed after the answer.
        let mut up = TcpStream::connect(upstream)?;
        let mut request = String::new();
        for line in &head {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("connection:") || lower.starts_with("authorization:") {
                continue;
            }
            request.push_str(line);
            request.push_str("\r\n");
        }
        request.push_str("Connection: close\r\n\r\n");
        up.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
        match fault {
            Fault::Cut(n) => {
                let end = (body_at + n).min(answer.len());
                client.write_all(&answer[..end])?;
                return Ok(()); // drops the connection
            }
            Fault::Corrupt if answer.len() > body_at => {
                let middle = body_at + (answer.len() - body_at) / 2;
                answer[middle] ^= 0xff;
            }
            _ => {}
        }
        client.write_all(&answer)?;
        return Ok(()); // the upstream said Connection: close
    }
}

fn is_big_blob(seen: &Seen) -> bool {
    seen.method == "GET" && seen.path.contains("/blobs/sha256:")
}

fn via(proxy: &FaultProxy, image: &TestImage) -> String {
    image.reference.replacen(registry(), &proxy.addr, 1)
}

#[test]
fn a_connection_dropped_mid_blob_resumes_with_a_range_request() {
    let image = TestImage::push_with_data(&format!("ipt/{}", unique("regdrop")), "1", 2_000_000);
    // The first GET of each blob is cut 4 KiB into its body.
    let cut = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let proxy = FaultProxy::start(move |seen, _| {
        if is_big_blob(seen) && seen.range.is_none() && cut.lock().unwrap().insert(seen.path.clone()) {
            Fault::Cut(4096)
        } else {
            Fault::None
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    fetch(&client(ClientOptions::default()), &via(&proxy, &image), &host_platform(), &path).unwrap();
    let ranges: Vec<_> = proxy.seen().into_iter().filter_map(|s| s.range).collect();
    assert!(
        ranges.iter().any(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "resumed with a range: {ranges:?}"
    );
    image.assert_loads_and_runs(&path);
}

#[test]
fn a_429_is_retried() {
    let image = TestImage::push(&format!("ipt/{}", unique("reg429")), "1");
    let once = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let proxy = FaultProxy::start(move |seen, _| {
        let first = once.lock().unwrap().insert(seen.path.clone());
        if first && seen.method == "GET" { Fault::TooMany } else { Fault::None }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar");
    fetch(&client(ClientOptions::default()), &via(&proxy, &image), &host_platform(), &path).unwrap();
    let gets = proxy.seen().iter().filter(|s| s.method == "GET").count();
    assert!(gets >= 6, "manifest, config and layers each asked twice: {:?}", proxy.seen());
    image.assert_loads_and_runs(&path);
}

#[test]
fn wrong_bytes_are_detected() {
    let image = TestImage::push_with_data(&format!("ipt/{}", unique("regcorrupt")), "1", 300_000);
    let proxy = FaultProxy::start(|seen, _| if is_big_blob(seen) { Fault::Corrupt } else { Fault::None });
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(
        &client(ClientOptions::default()),
        &via(&proxy, &image),
        &host_platform(),
        &dir.path().join("a.tar"),
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Integrity { .. }), "{err}");
    assert!(err.to_string().contains("served wrong content for"), "{err}");
}

#[test]
fn a_registry_that_stays_down_is_a_transient_error() {
    let image = TestImage::push(&format!("ipt/{}", unique("regdown")), "1");
    let proxy = FaultProxy::start(|_, _| Fault::TooMany);
    let target = Target::of(&Reference::parse(&via(&proxy, &image)).unwrap());
    let err = runtime().block_on(client(ClientOptions::default()).head_digest(&target)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("after 4 attempts"), "{err}");
    assert_eq!(proxy.seen().len(), 4);
}

#[test]
fn mirrors_are_tried_first_with_fallback_to_the_upstream() {
    let image = TestImage::push(&format!("ipt/{}", unique("regmirror")), "1");
    let mirror = FaultProxy::start(|_, _| Fault::None);
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string(); // closed at once
    let dir = tempfile::tempdir().unwrap();

    // A working mirror serves everything.
    let mut options = ClientOptions::default();
    options.mirrors.insert(registry().to_owned(), vec![format!("http://{}", mirror.addr)]);
    fetch(&client(options), &image.reference, &host_platform(), &dir.path().join("a.tar")).unwrap();
    assert!(mirror.seen().iter().any(|s| s.path.contains("/manifests/")), "{:?}", mirror.seen());

    // A dead mirror falls back to the upstream.
    let mut options = ClientOptions::default();
    options.mirrors.insert(registry().to_owned(), vec![format!("http://{dead}")]);
    fetch(&client(options), &image.reference, &host_platform(), &dir.path().join("b.tar")).unwrap();
    image.assert_loads_and_runs(&dir.path().join("b.tar"));

    // A mirror in front of an upstream that is down.
    let down = image.reference.replacen(registry(), &dead, 1);
    let mut options = ClientOptions::default();
    options.mirrors.insert(dead.clone(), vec![format!("http://{}", registry())]);
    fetch(&client(options), &down, &host_platform(), &dir.path().join("c.tar")).unwrap();
}

/// A registry front that wants a bearer token from its own token service, which wants basic
/// credentials `ci:s3cret`.
struct TokenProxy {
    addr: String,
    inner: FaultProxy,
}

impl TokenProxy {
    fn start() -> TokenProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let inner = FaultProxy::start(|_, _| Fault::None);
        let (front, back) = (addr.clone(), inner.addr.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (front, back) = (front.clone(), back.clone());
                std::thread::spawn(move || {
                    let _ = token_gate(stream, &front, &back);
                });
            }
        });
        TokenProxy { addr, inner }
    }
}

fn token_gate(mut client: TcpStream, front: &str, back: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
    }
    let path = head[0].split(' ').nth(1).unwrap_or("").to_owned();
    let auth = head.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("authorization").then(|| v.trim().to_owned())
    });
    let respond = |client: &mut TcpStream, status: &str, extra: &str, body: &str| {
        let text = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(text.as_bytes())
    };
    if path.starts_with("/token") {
        // base64("ci:s3cret")
        return if auth.as_deref() == Some("Basic Y2k6czNjcmV0") && path.contains("scope=repository") {
            respond(&mut client, "200 OK", "", r#"{"token":"good-token","expires_in":300}"#)
        } else {
            respond(&mut client, "401 Unauthorized", "", r#"{"details":"bad credentials"}"#)
        };
    }
    if auth.as_deref() != Some("Bearer good-token") {
        let challenge =
            format!("WWW-Authenticate: Bearer realm=\"http://{front}/token\",service=\"test-registry\"\r\n");
        return respond(
            &mut client,
            "401 Unauthorized",
            &challenge,
            r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
        );
    }
    let mut up = TcpStream::connect(back)?;
    let mut request = head.join("\r\n");
    request.push_str("\r\n\r\n");
    up.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    client.write_all(&answer)
}

#[test]
fn token_auth_with_credentials_and_refusal_without() {
    let image = TestImage::push(&format!("ipt/{}", unique("regtoken")), "1");
    let gate = TokenProxy::start();
    let reference = image.reference.replacen(registry(), &gate.addr, 1);
    let dir = tempfile::tempdir().unwrap();

    let err =
        fetch(&client(ClientOptions::default()), &reference, &host_platform(), &dir.path().join("a.tar"))
            .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(
        err.to_string().contains(&gate.addr) && err.to_string().contains("no credentials were found"),
        "{err}"
    );

    let wrong = ClientOptions {
        credentials: Arc::new(|_| {
            Some(Credentials::Basic { username: "ci".into(), password: Secret::new("wrong-pw") })
        }),
        ..ClientOptions::default()
    };
    let err = fetch(&client(wrong), &reference, &host_platform(), &dir.path().join("a.tar")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.to_string().contains("were refused") && !err.to_string().contains("wrong-pw"), "{err}");

    let host = gate.addr.clone();
    let right = ClientOptions {
        credentials: Arc::new(move |registry| {
            (registry == host)
                .then(|| Credentials::Basic { username: "ci".into(), password: Secret::new("s3cret") })
        }),
        ..ClientOptions::default()
    };
    fetch(&client(right), &reference, &host_platform(), &dir.path().join("b.tar")).unwrap();
    image.assert_loads_and_runs(&dir.path().join("b.tar"));
    assert!(
        gate.inner.seen().iter().all(|s| s.authorization.is_some()),
        "only authorized requests got through"
    );
}

/// Puts a manifest list at `<repo>:<tag>` whose amd64 entry is `amd64`'s manifest and arm64 entry
/// is `arm64`'s (both images in the same repository).
fn push_index(repository_path: &str, tag: &str, amd64: &TestImage, arm64: &TestImage) -> String {
    let size = |image: &TestImage| {
        let out = std::process::Command::new("curl")
            .args(["-fsSI", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json"])
            .arg(format!("http://{}/v2/{repository_path}/manifests/{}", registry(), image.digest))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        text.lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<u64>().unwrap()))
            .unwrap()
    };
    let entry = |image: &TestImage, arch: &str, variant: &str| {
        format!(
            r#"{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"{variant}}}}}"#,
            image.digest,
            size(image)
        )
    };
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{},{}]}}"#,
        entry(amd64, "amd64", ""),
        entry(arm64, "arm64", r#","variant":"v8""#)
    );
    let out = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.docker.distribution.manifest.list.v2+json",
        ])
        .args(["--data-binary", &list])
        .arg(format!("http://{}/v2/{repository_path}/manifests/{tag}", registry()))
        .output()
        .unwrap();
    assert!(out.status.success(), "pushing the index: {}", String::from_utf8_lossy(&out.stderr));
    format!("{}/{repository_path}:{tag}", registry())
}

#[test]
fn the_platform_picks_the_manifest_of_an_index() {
    let path = format!("ipt/{}", unique("regplatform"));
    let amd64 = TestImage::push(&path, "amd");
    let arm64 = TestImage::push(&path, "arm");
    let multi = push_index(&path, "multi", &amd64, &arm64);
    let dir = tempfile::tempdir().unwrap();
    let pick = |platform: &str| {
        let archive = dir.path().join(format!("{}.tar", platform.replace('/', "-")));
        fetch(&client(ClientOptions::default()), &multi, &Platform::parse(platform).unwrap(), &archive)
            .map(|p| p.image_id().to_owned())
    };
    assert_eq!(pick("linux/amd64").unwrap(), amd64.id);
    assert_eq!(pick("linux/arm64").unwrap(), arm64.id);
    assert_eq!(pick("linux/arm64/v8").unwrap(), arm64.id);
    let err = pick("linux/s390x").unwrap_err();
    assert!(err.to_string().contains("no manifest for platform linux/s390x"), "{err}");
    amd64.assert_loads_and_runs(&dir.path().join("linux-amd64.tar"));
}

// ---- registry mode through the binary ------------------------------------------------------------

fn warm_cli(dir: &Path, extra: &[&str], images: &[&str]) -> crate::support::Finished {
    let mut args = vec!["warm", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(images);
    crate::support::run(crate::support::preloader(&args), Duration::from_secs(120))
}

/// No daemon answers here: registry mode must not need one.
const NO_DAEMON: &str = "unix:///nonexistent/docker.sock";

#[test]
fn registry_mode_archives_load_to_the_same_image_as_daemon_mode() {
    let name = unique("regmode");
    let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", 500_000);
    let (daemon_dir, registry_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let archive = |dir: &Path| dir.join(format!("ipt/{name}_1.tar"));

    warm_cli(daemon_dir.path(), &["--mode", "daemon"], &[&image.reference]).assert_code(0);
    image.remove_local();
    let out = warm_cli(
        registry_dir.path(),
        &["--mode", "registry", "--docker-host", NO_DAEMON],
        &[&image.reference],
    );
    out.assert_code(0);
    assert!(out.stderr.contains("registry mode"), "{}", out.stderr);
    assert!(!image.is_local(), "registry mode pulled nothing into the daemon");

    let (from_daemon, from_registry) =
        (read_record(&archive(daemon_dir.path())), read_record(&archive(registry_dir.path())));
    assert_eq!(from_registry["image_id"], image.id.as_str());
    assert_eq!(from_registry["image_id"], from_daemon["image_id"]);
    assert_eq!(from_registry["repo_digest"], image.digest.as_str());
    assert_eq!(from_registry["repo_digest"], from_daemon["repo_digest"]);
    assert_eq!(from_registry["size"], std::fs::metadata(archive(registry_dir.path())).unwrap().len());
    assert!(temporaries(registry_dir.path()).is_empty());

    image.assert_loads_and_runs(&archive(registry_dir.path()));
    image.assert_loads_and_runs(&archive(daemon_dir.path()));

    // The `load` command checks it like a daemon's export (and finds the image present).
    let load = crate::support::run(
        crate::support::preloader(&[
            "load",
            "--dir",
            registry_dir.path().to_str().unwrap(),
            "--image",
            &image.reference,
        ]),
        Duration::from_secs(60),
    );
    load.assert_code(0);
    assert!(load.stdout.starts_with("present"), "{}", load.stdout);

    // Refresh in registry mode is a manifest HEAD: nothing written.
    crate::support::age_file(&archive(registry_dir.path()), crate::support::DAY * 8);
    let content = std::fs::read(archive(registry_dir.path())).unwrap();
    let out = warm_cli(
        registry_dir.path(),
        &["--mode", "registry", "--docker-host", NO_DAEMON],
        &[&image.reference],
    );
    out.assert_code(0);
    assert!(out.stderr.contains("the registry still serves the archived digest"), "{}", out.stderr);
    assert_eq!(std::fs::read(archive(registry_dir.path())).unwrap(), content);
}

#[test]
fn registry_mode_publishes_nothing_from_wrong_bytes() {
    let name = unique("regbad");
    let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", 300_000);
    let proxy = FaultProxy::start(|seen, _| if is_big_blob(seen) { Fault::Corrupt } else { Fault::None });
    let dir = tempfile::tempdir().unwrap();
    let out = warm_cli(dir.path(), &["--mode", "registry"], &[&via(&proxy, &image)]);
    out.assert_code(1);
    assert!(out.stderr.contains("served wrong content for blob sha256:"), "{}", out.stderr);
    let files = crate::support::files(dir.path());
    assert!(
        files.keys().all(|f| !f.ends_with(".tar") && !f.ends_with(".json")),
        "nothing published: {files:?}"
    );
    assert!(temporaries(dir.path()).is_empty(), "{files:?}");
}

#[test]
fn auto_mode_without_a_daemon_reads_the_registry() {
    let name = unique("regauto");
    let image = TestImage::push(&format!("ipt/{name}"), "1");
    let dir = tempfile::tempdir().unwrap();
    let out = warm_cli(dir.path(), &["--docker-host", NO_DAEMON], &[&image.reference]);
    out.assert_code(0);
    assert!(
        out.stderr.contains("no docker daemon answered") && out.stderr.contains("registry mode"),
        "{}",
        out.stderr
    );
    image.assert_loads_and_runs(&dir.path().join(format!("ipt/{name}_1.tar")));
    // With a daemon, auto picks it and says so.
    let other = tempfile::tempdir().unwrap();
    let out = warm_cli(other.path(), &[], &[&image.reference]);
    out.assert_code(0);
    assert!(out.stderr.contains("daemon mode"), "{}", out.stderr);
}

#[test]
fn registry_mirror_flags_with_fallback() {
    let name = unique("regmirrorcli");
    let image = TestImage::push(&format!("ipt/{name}"), "1");
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    // The upstream is down: the mirror serves.
    let down = image.reference.replacen(registry(), &dead, 1);
    let mirror = format!("{dead}=http://{}", registry());
    warm_cli(dir.path(), &["--mode", "registry", "--registry-mirror", &mirror], &[&down]).assert_code(0);
    // The mirror is down: the upstream serves.
    let other = tempfile::tempdir().unwrap();
    let mirror = format!("{}=http://{dead}", registry());
    let out =
        warm_cli(other.path(), &["--mode", "registry", "--registry-mirror", &mirror], &[&image.reference]);
    out.assert_code(0);
    assert!(out.stderr.contains("mirror"), "the fallback is logged: {}", out.stderr);
    // A bad mirror is a usage error before any work.
    let out =
        warm_cli(other.path(), &["--mode", "registry", "--registry-mirror", "ftp://x"], &[&image.reference]);
    out.assert_code(2);
    assert!(out.stderr.contains("--registry-mirror"), "{}", out.stderr);
}

// ---- a registry over TLS with a private CA (--ca-file) --------------------------------------------

/// Runs `openssl` with `args` in `dir`, failing loudly if it is missing.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl; scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A pull-through registry (distribution's proxy mode, in front of the test registry) served over
/// TLS with a certificate for 127.0.0.1 signed by a CA made for it; stopped on drop.
struct TlsRegistry {
    child: std::process::Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl TlsRegistry {
    fn start() -> TlsRegistry {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=preloader test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
            ],
        );
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
            .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "tls.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "tls.pem",
            ],
        );
        let addr = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().to_string()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
             proxy:\n  remoteurl: http://{upstream}\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {dir}/tls.pem\n    key: {dir}/tls.key\n",
            data = d.join("data").display(),
            upstream = registry(),
            dir = d.display(),
        );
        std::fs::write(d.join("registry.yml"), config).unwrap();
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("registry.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry; scripts/test.sh installs it)");
        let registry = TlsRegistry { child, dir, addr };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&registry.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the TLS registry did not start: {}",
                std::fs::read_to_string(registry.dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_tls_mirror_with_a_private_ca_is_trusted_with_ca_file_only() {
    let name = unique("regtls");
    let image = TestImage::push_with_data(&format!("ipt/{name}"), "1", 100_000);
    let tls = TlsRegistry::start();
    let mirror = format!("{}=https://{}", registry(), tls.addr);
    let ca_file = tls.ca_file();

    // Trusted through --ca-file: the mirror serves the image, no fallback.
    let trusted = tempfile::tempdir().unwrap();
    let out = warm_cli(
        trusted.path(),
        &["--mode", "registry", "--registry-mirror", &mirror, "--ca-file", ca_file.to_str().unwrap()],
        &[&image.reference],
    );
    out.assert_code(0);
    assert!(!out.stderr.contains("trying the next"), "the TLS mirror served: {}", out.stderr);
    let record = read_record(&trusted.path().join(format!("ipt/{name}_1.tar")));
    assert_eq!(record["image_id"], image.id.as_str());
    image.assert_loads_and_runs(&trusted.path().join(format!("ipt/{name}_1.tar")));

    // Without it the private CA is unknown: the mirror fails on the certificate and the upstream
    // serves instead.
    let untrusted = tempfile::tempdir().unwrap();
    let out = warm_cli(
        untrusted.path(),
        &["--mode", "registry", "--registry-mirror", &mirror],
        &[&image.reference],
    );
    out.assert_code(0);
    assert!(out.stderr.contains("trying the next"), "{}", out.stderr);
    assert!(out.stderr.to_ascii_lowercase().contains("certificate"), "{}", out.stderr);
}

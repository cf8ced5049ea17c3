//! Private registries: credentials from a Docker config file, against the password-protected
//! registry scripts/test.sh starts (htpasswd) and a token-auth registry of the test's own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::support::{
    AUTH_PASSWORD, AUTH_USER, DAY, Finished, Running, TestImage, age_file, auth_registry, files, preloader,
    run, unique,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// `user:password` as the `auth` field holds it.
fn auth_field(user: &str, password: &str) -> String {
    STANDARD.encode(format!("{user}:{password}"))
}

/// A docker CLI config directory with the test registry's credentials, for pushing.
fn push_config() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
            auth_registry(),
            auth_field(AUTH_USER, AUTH_PASSWORD)
        );
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    })
    .path()
}

/// A small image on the password-protected registry.
fn private_image(name: &str) -> TestImage {
    TestImage::push_with_config(
        auth_registry(),
        &format!("private/{}", unique(name)),
        "1.0",
        0,
        Some(push_config()),
    )
}

/// The binary, with no Docker config unless the test gives one: `DOCKER_CONFIG` points at an
/// empty directory, so this machine's own `~/.docker/config.json` never leaks in.
fn isolated(args: &[&str], empty: &Path) -> Command {
    let mut cmd = preloader(args);
    cmd.env("DOCKER_CONFIG", empty);
    cmd
}

/// Fails if the password, or any base64 form of the credentials, appears in `text`.
fn assert_no_secret(what: &str, text: &str) {
    let secrets = [
        AUTH_PASSWORD.to_owned(),
        auth_field(AUTH_USER, AUTH_PASSWORD),
        STANDARD.encode(AUTH_PASSWORD),
        "pre?load".to_owned(),
    ];
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{what} contains the secret {secret:?}:\n{text}");
    }
}

/// Every record under `dir`, concatenated.
fn records(dir: &Path) -> String {
    files(dir)
        .into_keys()
        .filter(|p| p.ends_with(".json"))
        .map(|p| std::fs::read_to_string(dir.join(p)).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_clean(out: &Finished, dir: &Path) {
    assert_no_secret("stdout", &out.stdout);
    assert_no_secret("stderr", &out.stderr);
    assert_no_secret("the records", &records(dir));
}

fn archive_of(dir: &Path, image: &TestImage) -> PathBuf {
    let name = image.repository.rsplit('/').next().unwrap();
    dir.join(format!("private/{name}_1.0.tar"))
}

/// The per-image failures of a JSON log.
fn errors(out: &Finished) -> Vec<serde_json::Value> {
    out.events().into_iter().filter(|e| e["level"] == "ERROR" && e["kind"].is_string()).collect()
}

fn warm(dir: &Path, empty: &Path, extra: &[&str], image: &TestImage) -> Finished {
    let mut args = vec!["warm", "--mode", "daemon", "--log-format", "json", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(&image.reference);
    run(isolated(&args, empty), TIMEOUT)
}

#[test]
fn a_pull_without_credentials_fails_as_auth_naming_the_registry() {
    let registry = auth_registry();
    let image = private_image("nocreds");
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let dir = work.path().join("archives");

    // No config file at all.
    let out = warm(&dir, &empty, &[], &image);
    out.assert_code(1);
    let found = errors(&out);
    assert_eq!(found.len(), 1, "{}", out.stderr);
    assert_eq!(found[0]["kind"], "auth", "{}", out.stderr);
    let message = found[0]["message"].as_str().unwrap();
    assert!(message.contains(&image.reference), "{message}");
    assert!(message.contains(&format!("no credentials for {registry}: no Docker config file")), "{message}");
    assert!(files(&dir).keys().all(|p| !p.ends_with(".tar")), "nothing is written");

    // A config file with credentials for another registry only.
    let config = work.path().join("other.json");
    std::fs::write(&config, format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#, auth_field("a", "b")))
        .unwrap();
    let out = warm(&dir, &empty, &["--docker-config", config.to_str().unwrap()], &image);
    out.assert_code(1);
    let message = errors(&out)[0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("no credentials for {registry} in {}", config.display())), "{message}");

    // The wrong password: found, and refused.
    let wrong = work.path().join("wrong.json");
    std::fs::write(
        &wrong,
        format!(r#"{{"auths": {{"{registry}": {{"auth": "{}"}}}}}}"#, auth_field(AUTH_USER, "nope")),
    )
    .unwrap();
    let out = warm(&dir, &empty, &["--docker-config", wrong.to_str().unwrap()], &image);
    out.assert_code(1);
    let error = &errors(&out)[0];
    assert_eq!(error["kind"], "auth");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("credentials for {registry} were found in {} (auths key", wrong.display())),
        "{message}"
    );

    // A credential helper: said to be unusable here, for that registry.
    let helper = work.path().join("helper.json");
    std::fs::write(&helper, format!(r#"{{"credHelpers": {{"{registry}": "ecr-login"}}}}"#)).unwrap();
    let out = warm(&dir, &empty, &["--docker-config", helper.to_str().unwrap()], &image);
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!(
            "credentials for {registry} are held by the credential helper docker-credential-ecr-login"
        )),
        "{}",
        out.stderr
    );
    let message = errors(&out)[0]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("docker-credential-ecr-login (credHelpers) for it, which cannot run"),
        "{message}"
    );
    assert_clean(&out, &dir);
}

#[test]
fn each_credential_form_pulls_and_checks_the_digest() {
    let registry = auth_registry();
    let image = private_image("forms");
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let forms = [
        (
            "auth",
            format!(
                r#"{{"auths": {{"{registry}": {{"auth": "{}"}}}}}}"#,
                auth_field(AUTH_USER, AUTH_PASSWORD)
            ),
        ),
        (
            "username-password",
            format!(
                r#"{{"auths": {{"http://{registry}/v2/": {{"username": "{AUTH_USER}", "password": "{}"}}}}}}"#,
                AUTH_PASSWORD.replace('"', "\\\"")
            ),
        ),
    ];
    for (form, json) in forms {
        let dir = work.path().join(form);
        let config = work.path().join(format!("{form}.json"));
        std::fs::write(&config, &json).unwrap();
        let out = warm(
            &dir,
            &empty,
            &["--docker-config", config.to_str().unwrap(), "--log-level", "trace"],
            &image,
        );
        out.assert_code(0);
        assert_clean(&out, &dir);
        let archive = archive_of(&dir, &image);
        image.assert_loads_and_runs(&archive);

        // The digest check passes the credentials too: unchanged, nothing rebuilt.
        age_file(&archive, 8 * DAY);
        let out = warm(&dir, &empty, &["--docker-config", config.to_str().unwrap()], &image);
        out.assert_code(0);
        assert!(out.stderr.contains("\"decision\":\"unchanged\""), "{form}: {}", out.stderr);
        assert_clean(&out, &dir);
    }

    // The default location: $DOCKER_CONFIG/config.json.
    let default = work.path().join("default");
    std::fs::create_dir(&default).unwrap();
    std::fs::write(default.join("config.json"), std::fs::read(work.path().join("auth.json")).unwrap())
        .unwrap();
    let dir = work.path().join("by-default");
    let out = warm(&dir, &default, &[], &image);
    out.assert_code(0);
    assert!(out.stderr.contains(&default.join("config.json").display().to_string()), "{}", out.stderr);

    // Without credentials the digest check is refused: a failure of kind auth, the archive kept.
    let archive = archive_of(&dir, &image);
    age_file(&archive, 8 * DAY);
    let before = std::fs::read(&archive).unwrap();
    let out = warm(&dir, &empty, &[], &image);
    out.assert_code(1);
    let error = &errors(&out)[0];
    assert_eq!(error["kind"], "auth", "{}", out.stderr);
    assert!(error["message"].as_str().unwrap().ends_with("; the archive is kept"), "{error}");
    assert_eq!(std::fs::read(&archive).unwrap(), before);
}

#[test]
fn a_malformed_config_is_refused_before_any_work() {
    let image = private_image("malformed");
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.json");
    let auth = auth_field(AUTH_USER, AUTH_PASSWORD);
    std::fs::write(&config, format!(r#"{{"auths": {{"{}": {{"auth": "{auth}" "#, auth_registry())).unwrap();
    let dir = work.path().join("archives");
    let out = run(
        isolated(
            &[
                "warm",
                "--dir",
                dir.to_str().unwrap(),
                "--docker-config",
                config.to_str().unwrap(),
                &image.reference,
            ],
            work.path(),
        ),
        TIMEOUT,
    );
    out.assert_code(2);
    assert!(
        out.stderr.contains(&format!("malformed Docker config file {}: not JSON", config.display())),
        "{}",
        out.stderr
    );
    assert!(!dir.exists(), "nothing was done");
    assert_no_secret("stderr", &out.stderr);

    let missing = work.path().join("missing.json");
    let out = run(
        isolated(
            &["warm", "--dir", dir.to_str().unwrap(), "--docker-config", missing.to_str().unwrap(), "a:1"],
            work.path(),
        ),
        TIMEOUT,
    );
    out.assert_code(2);
    assert!(out.stderr.contains(&format!("the Docker config file {} does not exist", missing.display())));
}

#[test]
fn run_reads_the_config_again_at_each_pass() {
    let registry = auth_registry();
    let image = private_image("rotated");
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.json");
    let write = |password: &str| {
        // Written aside and renamed in, as the kubelet updates a mounted Secret.
        let next = work.path().join("config.json.next");
        std::fs::write(
            &next,
            format!(r#"{{"auths": {{"{registry}": {{"auth": "{}"}}}}}}"#, auth_field(AUTH_USER, password)),
        )
        .unwrap();
        std::fs::rename(&next, &config).unwrap();
    };
    write("expired-token");
    let dir = work.path().join("archives");
    let mut running = Running::spawn(isolated(
        &[
            "run",
            "--dir",
            dir.to_str().unwrap(),
            "--docker-config",
            config.to_str().unwrap(),
            "--interval",
            "2s",
            "--log-level",
            "debug",
            &image.reference,
        ],
        work.path(),
    ));
    running.wait_for_line("were found in", TIMEOUT);
    // A broken file: reported, and the previous credentials stay in use.
    std::fs::write(&config, "{ \"auths\": ").unwrap();
    running.wait_for_line("the previous credentials stay in use", TIMEOUT);
    running.wait_for_line("were found in", TIMEOUT);
    // The rotated Secret: picked up without a restart.
    write(AUTH_PASSWORD);
    running.wait_for_line("registry credentials read", TIMEOUT);
    running.wait_for_line("saved", TIMEOUT);
    running.signal(libc::SIGTERM);
    let status = running.wait_for_exit(TIMEOUT);
    let (stdout, stderr) = running.collect();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("malformed Docker config file {}", config.display())), "{stderr}");
    assert!(stderr.contains("kind=\"auth\"") || stderr.contains("kind=auth"), "{stderr}");
    image.assert_loads_and_runs(&archive_of(&dir, &image));
    assert_no_secret("stdout", &stdout);
    assert_no_secret("stderr", &stderr);
    assert_no_secret("the records", &records(&dir));
}

/// The identity token the test's token service accepts (an OAuth2 refresh token).
const IDENTITY_TOKEN: &str = "identity-token-for-tests";

/// A minimal OAuth2 token service in front of a registry in distribution's `silly` auth mode
/// (which lets any bearer token through): the token service is where credentials are checked.
/// It grants a token for the identity token (`grant_type=refresh_token`, what the daemon sends
/// for an `identitytoken`) or for the fixed user and password (basic auth), and refuses the rest.
struct TokenRegistry {
    addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl TokenRegistry {
    fn start() -> TokenRegistry {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                let header = |name: &str| {
                    head.iter().find_map(|h| {
                        h.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                };
                let length: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let body = String::from_utf8_lossy(&body);
                let basic = format!("Basic {}", auth_field(AUTH_USER, AUTH_PASSWORD));
                let granted = body.split('&').any(|p| p == format!("refresh_token={IDENTITY_TOKEN}"))
                    || header("authorization").as_deref() == Some(basic.as_str());
                let (status, json) = if granted {
                    ("200 OK", r#"{"token":"granted","access_token":"granted","expires_in":300}"#)
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"unknown credentials"}]}"#,
                    )
                };
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  silly:\n    realm: {realm}\n    service: token-test\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/test.sh installs it)");
        let registry = TokenRegistry { addr, child, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the token registry did not start on {}",
                registry.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_identity_token_is_exchanged_at_the_token_service() {
    let registry = TokenRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let push = work.path().join("push");
    std::fs::create_dir(&push).unwrap();
    let basic = format!(
        r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#,
        registry.addr,
        auth_field(AUTH_USER, AUTH_PASSWORD)
    );
    std::fs::write(push.join("config.json"), basic).unwrap();
    let image = TestImage::push_with_config(
        &registry.addr,
        &format!("private/{}", unique("identity")),
        "1.0",
        0,
        Some(&push),
    );

    let dir = work.path().join("archives");
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    // Without credentials the token service refuses.
    let out = warm(&dir, &empty, &[], &image);
    out.assert_code(1);
    assert_eq!(errors(&out)[0]["kind"], "auth", "{}", out.stderr);
    // An identity token (with the user name beside it, as `docker login` stores it).
    let config = work.path().join("identity.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{}", "identitytoken": "{IDENTITY_TOKEN}"}}}}}}"#,
            registry.addr,
            STANDARD.encode(format!("{AUTH_USER}:"))
        ),
    )
    .unwrap();
    let out = warm(&dir, &empty, &["--docker-config", config.to_str().unwrap()], &image);
    out.assert_code(0);
    assert!(!out.stderr.contains(IDENTITY_TOKEN), "{}", out.stderr);
    assert!(!records(&dir).contains(IDENTITY_TOKEN));
    image.assert_loads_and_runs(&archive_of(&dir, &image));
}

#[test]
fn the_chart_registry_auth_arguments_pull_from_the_private_registry() {
    use crate::k8s::{self, container, only, render};
    let registry = auth_registry();
    let image = private_image("chart");
    let work = tempfile::tempdir().unwrap();
    let docs =
        render(&["--set", &format!("images={{{}}},registryAuth.existingSecret=pull", image.reference)]);
    let ds = only(&docs, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let mut args: Vec<String> = container(spec, "preloader")["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    // The Secret's key as the kubelet writes it, where the chart mounts it; this machine's paths
    // and daemon in place of the pod's.
    let mounted =
        k8s::mount(container(spec, "preloader"), "registry-auth")["mountPath"].as_str().unwrap().to_owned();
    let config = work.path().join("config.json");
    std::fs::write(
        &config,
        format!(r#"{{"auths": {{"{registry}": {{"auth": "{}"}}}}}}"#, auth_field(AUTH_USER, AUTH_PASSWORD)),
    )
    .unwrap();
    let list = work.path().join("images.txt");
    let cm = only(&docs, "ConfigMap");
    std::fs::write(&list, cm["data"]["images.txt"].as_str().unwrap()).unwrap();
    let dir = work.path().join("archives");
    let docker_host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let replace = |args: &mut Vec<String>, flag: &str, value: &str| {
        let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
        args[i + 1] = value.to_owned();
    };
    let given = args[args.iter().position(|a| a == "--docker-config").unwrap() + 1].clone();
    assert_eq!(given, format!("{mounted}/config.json"));
    replace(&mut args, "--docker-config", config.to_str().unwrap());
    replace(&mut args, "--images-file", list.to_str().unwrap());
    replace(&mut args, "--dir", dir.to_str().unwrap());
    replace(&mut args, "--docker-host", &docker_host);
    replace(&mut args, "--min-free", crate::support::TEST_MIN_FREE);
    // The pod's port is its own; here any free one (another run may hold 9090).
    replace(&mut args, "--listen", "127.0.0.1:0");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut running = Running::spawn(isolated(&refs, work.path()));
    running.wait_for_line("saved", TIMEOUT);
    running.signal(libc::SIGTERM);
    assert_eq!(running.wait_for_exit(TIMEOUT).code(), Some(0));
    let (stdout, stderr) = running.collect();
    assert_no_secret("stdout", &stdout);
    assert_no_secret("stderr", &stderr);
    image.assert_loads_and_runs(&archive_of(&dir, &image));
}

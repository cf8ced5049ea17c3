//! The container image docker/build.sh builds (scripts/test.sh tags it image-preloader:test): its
//! contents and metadata, and the binary running inside it the way the chart runs it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::k8s::{ContainerGuard, docker_socket, test_image};
use crate::support::{Daemon, TEST_MIN_FREE, TestImage, docker, files, run, unique};

const TIMEOUT: Duration = Duration::from_secs(120);
const MAX_SIZE: u64 = 20 * 1024 * 1024;
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The archive directory the image's default `--dir` points at and the chart mounts.
const IMAGES_DIR: &str = "/opt/runner/images";
/// A UID and GID with no entry in any passwd file (distroless `nonroot`).
const NON_ROOT: &str = "65532:65532";

fn inspect(image: &str) -> Value {
    let text = docker(&["image", "inspect", image]);
    let all: Value = serde_json::from_str(&text).expect("docker image inspect prints JSON");
    all[0].clone()
}

/// A `docker run --rm --name <unique>` of the image with `options` before the image and `args`
/// after it; the guard removes the container even if the test fails or times out.
fn run_image(options: &[&str], args: &[&str]) -> (ContainerGuard, crate::support::Finished) {
    let guard = ContainerGuard(unique("ipt-image"));
    let mut cmd = Daemon::Classic.cli();
    cmd.args(["run", "--rm", "--name", &guard.0])
        .args(["--env", &format!("IMAGE_PRELOADER_MIN_FREE={TEST_MIN_FREE}")])
        .args(options)
        .arg(test_image())
        .args(args);
    let finished = run(cmd, TIMEOUT);
    (guard, finished)
}

#[test]
fn image_is_small_labelled_and_holds_only_the_static_binary() {
    let image = test_image();
    let meta = inspect(image);

    let size = meta["Size"].as_u64().expect("image size");
    println!("{image}: {size} bytes ({:.1} MiB)", size as f64 / 1048576.0);
    assert!(size <= MAX_SIZE, "{image} is {size} bytes, over the 20 MiB limit");

    let config = &meta["Config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["/image-preloader"]), "{config}");
    assert_eq!(config["Cmd"], serde_json::json!(["run"]), "{config}");
    let user = config["User"].as_str().unwrap_or_default();
    assert!(user.is_empty() || user == "0" || user == "root", "runs as root by default, not {user:?}");
    assert_eq!(meta["Os"], "linux");

    let labels = &config["Labels"];
    let label = |key: &str| labels[format!("org.opencontainers.image.{key}")].as_str().unwrap_or_default();
    assert_eq!(label("version"), VERSION, "{labels}");
    assert_eq!(label("licenses"), "Apache-2.0", "{labels}");
    assert_eq!(label("title"), "image-preloader", "{labels}");
    assert_eq!(label("source"), "https://github.com/image-preloader/image-preloader", "{labels}");
    assert!(label("description").contains("Docker image archives"), "{labels}");

    // One layer holding one file: the binary, executable, at /image-preloader.
    let layers = meta["RootFS"]["Layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{layers:?}");
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("image.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), image]);
    // manifest.json names the layer files in both the legacy (`<id>/layer.tar`) and the OCI
    // (`blobs/sha256/<hex>`, Docker 25+) save formats.
    sh(&format!("tar -xf {} -C {}", saved.display(), dir.path().display()));
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap())
        .expect("manifest.json of the saved image");
    let layer = dir.path().join(manifest[0]["Layers"][0].as_str().expect("a layer in manifest.json"));
    let listing = sh(&format!("tar -tvf {}", layer.display()));
    let entries: Vec<&str> = listing.lines().collect();
    assert_eq!(entries.len(), 1, "the image holds only the binary:\n{listing}");
    assert!(entries[0].starts_with("-rwxr-xr-x") && entries[0].ends_with(" image-preloader"), "{listing}");
}

#[test]
fn version_runs_in_the_image() {
    let (_c, out) = run_image(&["--network", "none"], &["--version"]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), format!("image-preloader {VERSION}"));
}

#[test]
fn runs_under_a_non_root_uid_with_a_read_only_root() {
    let locked = ["--user", NON_ROOT, "--read-only", "--network", "none", "--cap-drop", "ALL"];
    let (_c, out) = run_image(&locked, &["--version"]);
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), format!("image-preloader {VERSION}"));

    let (_c, out) = run_image(&locked, &["path", "registry.local:5000/team/app:2.0", "nginx"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "team/app_2.0.tar\nnginx_latest.tar\n");
}

#[test]
fn warms_as_a_non_root_uid_given_the_socket_group_and_a_writable_directory() {
    let name = unique("image-nonroot");
    let pushed = TestImage::push(&format!("ipt/{name}"), "1.0");
    let socket = docker_socket();
    let socket_gid = std::fs::metadata(&socket).expect("the daemon's socket").gid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = NON_ROOT.split_once(':').unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid.parse().unwrap()), Some(gid.parse().unwrap()))
        .expect("chown the archive directory (these tests run as root, as scripts/test.sh does)");

    let socket_mount = format!("{}:/var/run/docker.sock", socket.display());
    let dir_mount = format!("{}:{IMAGES_DIR}", dir.path().display());
    let (_c, out) = run_image(
        &[
            "--user",
            NON_ROOT,
            "--group-add",
            &socket_gid,
            "--read-only",
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "-v",
            &socket_mount,
            "-v",
            &dir_mount,
        ],
        &["warm", &pushed.reference],
    );
    out.assert_code(0);

    let archive = dir.path().join(format!("ipt/{name}_1.0.tar"));
    assert_owned_by(&archive, NON_ROOT);
    pushed.assert_loads_and_runs(&archive);
}

#[test]
fn warms_into_the_mounted_directory_with_a_read_only_root_and_no_network() {
    let name = unique("image-warm");
    let pushed = TestImage::push(&format!("ipt/{name}"), "1.0");
    let dir = tempfile::tempdir().unwrap();
    let socket_mount = format!("{}:/var/run/docker.sock", docker_socket().display());
    let dir_mount = format!("{}:{IMAGES_DIR}", dir.path().display());
    // Default user (root), default --dir; the daemon pulls, the container itself has no network.
    let (_c, out) = run_image(
        &["--read-only", "--network", "none", "-v", &socket_mount, "-v", &dir_mount],
        &["warm", &pushed.reference],
    );
    out.assert_code(0);
    assert!(out.stderr.contains("1 built"), "{}", out.stderr);

    let relative = format!("ipt/{name}_1.0.tar");
    let on_disk = files(dir.path());
    let names: Vec<&String> = on_disk.keys().collect();
    assert_eq!(names, [&relative, &format!("{relative}.json")], "archive and record only: {on_disk:?}");
    pushed.assert_loads_and_runs(&dir.path().join(&relative));
}

fn assert_owned_by(path: &Path, owner: &str) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(format!("{}:{}", meta.uid(), meta.gid()), owner, "owner of {}", path.display());
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().expect("run sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

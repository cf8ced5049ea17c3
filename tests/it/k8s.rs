//! Shared helpers for the Kubernetes side: rendering the chart with helm, validating manifests with
//! kubernetes-validate, and the container image built by docker/build.sh. scripts/test.sh installs
//! helm and kubernetes-validate under target/tools and builds the image; a test that needs one and
//! finds none fails with a message saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_yaml_ng::Value;

use crate::support::Daemon;

const TOOLS_HINT: &str = "run scripts/test.sh, which fetches helm and kubernetes-validate into target/tools \
     and builds the container image (docker/build.sh test)";

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The chart directory.
pub fn chart_dir() -> PathBuf {
    root().join("charts/image-preloader")
}

/// Finds a tool on PATH or in target/tools/bin; fails the test with instructions otherwise.
pub fn tool(name: &str) -> PathBuf {
    let local = root().join("target/tools/bin").join(name);
    if local.is_file() {
        return local;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed; {TOOLS_HINT}");
}

/// Runs `helm template` on the chart with the given extra arguments (values files, `--set`, …).
/// Returns the rendered YAML text or helm's error output.
pub fn helm_template(args: &[&str]) -> Result<String, String> {
    helm_template_as("preload", args)
}

/// [`helm_template`] with the given release name.
pub fn helm_template_as(release: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool("helm"))
        .args(["template", release])
        .arg(chart_dir())
        .args(["--namespace", "ci-images"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm output is UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Renders the chart and parses every document; panics with helm's message on failure.
pub fn render(args: &[&str]) -> Vec<Value> {
    let text = helm_template(args).unwrap_or_else(|e| panic!("helm template {args:?} failed: {e}"));
    documents(&text)
}

/// Parses a multi-document YAML stream, dropping empty documents.
pub fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The objects of one kind.
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

/// The one object of a kind; panics when there are none or several.
pub fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// The object of a kind with the given name; panics when there is none.
pub fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

/// A pod spec's volume by name.
pub fn volume<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["volumes"]
        .as_sequence()
        .and_then(|vs| vs.iter().find(|v| v["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no volume {name} in {spec:?}"))
}

/// A container's mount of the named volume.
pub fn mount<'a>(container: &'a Value, volume: &str) -> &'a Value {
    container["volumeMounts"]
        .as_sequence()
        .and_then(|ms| ms.iter().find(|m| m["name"].as_str() == Some(volume)))
        .unwrap_or_else(|| panic!("no mount of {volume} in {container:?}"))
}

/// The references of an image list file's text (comments and blank lines dropped).
pub fn listed(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
}

/// A container (or init container) of a pod spec by name.
pub fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    for list in ["containers", "initContainers"] {
        if let Some(items) = pod_spec[list].as_sequence()
            && let Some(c) = items.iter().find(|c| c["name"].as_str() == Some(name))
        {
            return c;
        }
    }
    panic!("no container named {name} in {pod_spec:?}");
}

/// Kubernetes versions the manifests are validated against: the oldest supported and the newest
/// schema kubernetes-validate ships.
pub fn kubernetes_versions() -> Vec<String> {
    static NEWEST: OnceLock<String> = OnceLock::new();
    let newest = NEWEST.get_or_init(|| {
        let out = Command::new(tool("kubernetes-validate"))
            .arg("--help")
            .output()
            .expect("run kubernetes-validate");
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        // The help text lists the known versions; take the highest 1.x.y it mentions.
        let mut best: Option<(u32, u32, u32)> = None;
        for word in help.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
            let parts: Option<Vec<u32>> = word.split('.').map(|p| p.parse().ok()).collect();
            if let Some(&[1, minor, patch]) = parts.as_deref() {
                best = best.max(Some((1, minor, patch)));
            }
        }
        let (a, b, c) = best.expect("kubernetes-validate --help lists Kubernetes versions");
        format!("{a}.{b}.{c}")
    });
    vec!["1.29.0".to_owned(), newest.clone()]
}

/// Validates a YAML stream with `kubernetes-validate --strict` against every version of
/// [`kubernetes_versions`]; panics with the tool's output (naming `what`) on failure.
pub fn validate(what: &str, yaml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("manifest.yaml");
    std::fs::write(&file, yaml).expect("write manifest");
    for version in kubernetes_versions() {
        let out = Command::new(tool("kubernetes-validate"))
            .args(["--strict", "-k", &version])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{what} is not valid for Kubernetes {version}:\n{text}\n---\n{yaml}");
    }
}

/// The container image built by scripts/test.sh (docker/build.sh); fails with instructions if absent.
pub fn test_image() -> &'static str {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    let result = IMAGE.get_or_init(|| {
        let image =
            std::env::var("IMAGE_PRELOADER_TEST_IMAGE").unwrap_or_else(|_| "image-preloader:test".to_owned());
        crate::support::ensure_docker();
        let ok = Daemon::Classic
            .cli()
            .args(["image", "inspect", "--format", "{{.Id}}", &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok { Ok(image) } else { Err(format!("the container image {image} is not built; {TOOLS_HINT}")) }
    });
    match result {
        Ok(image) => image,
        Err(message) => panic!("{message}"),
    }
}

/// Where a pod volume comes from when a container spec is run with `docker run`.
pub enum HostVolume<'a> {
    /// A host directory (an emptyDir, a hostPath or a rendered ConfigMap written to disk).
    Dir(&'a Path),
    /// The directory that holds the test daemon's socket, standing in for the pod's socket volume
    /// (the container expects `docker.sock` in it).
    DockerSocketDir,
}

/// The unix socket of the test's daemon ([`crate::support::daemon`]).
pub fn docker_socket() -> PathBuf {
    let host = crate::support::daemon().host();
    PathBuf::from(host.strip_prefix("unix://").unwrap_or_else(|| panic!("{host} is not a unix socket")))
}

/// Builds a `docker run` for a rendered container spec the way the kubelet would run it: its
/// command, args and env verbatim (no shell), its volume mounts from `volumes` (by volume name;
/// `readOnly` honoured), its security context (`readOnlyRootFilesystem`, `runAsUser`/`runAsGroup`,
/// dropped capabilities, `allowPrivilegeEscalation: false`), no network. The image is replaced by
/// `image`. Panics on a spec it cannot reproduce faithfully (an unknown volume, `privileged`, an
/// env var from a reference). The container runs on the classic daemon, which plays the node's
/// container runtime (the image under test is built there); the socket volume holds the test's
/// daemon, which plays the pod's dind.
pub fn docker_run(spec: &Value, image: &str, name: &str, volumes: &[(&str, HostVolume)]) -> Command {
    let mut cmd = Daemon::Classic.cli();
    cmd.args(["run", "--name", name, "--network", "none"]);
    for item in spec["env"].as_sequence().into_iter().flatten() {
        let key = item["name"].as_str().expect("env name");
        let value = item["value"].as_str().unwrap_or_else(|| panic!("env {key} has no literal value"));
        cmd.arg("--env").arg(format!("{key}={value}"));
    }
    for mount in spec["volumeMounts"].as_sequence().into_iter().flatten() {
        let volume = mount["name"].as_str().expect("volumeMount name");
        let target = mount["mountPath"].as_str().expect("mountPath");
        let ro = if mount["readOnly"].as_bool() == Some(true) { ",readonly" } else { "" };
        let (_, source) = volumes
            .iter()
            .find(|(n, _)| *n == volume)
            .unwrap_or_else(|| panic!("the test has no stand-in for volume {volume}"));
        match source {
            HostVolume::Dir(dir) => {
                cmd.arg("--mount").arg(format!("type=bind,source={},target={target}{ro}", dir.display()));
            }
            HostVolume::DockerSocketDir => {
                let socket = docker_socket();
                let file = socket.file_name().unwrap().to_string_lossy();
                assert_eq!(file, "docker.sock", "the pod's socket volume holds docker.sock");
                // The whole directory would bring the host's other sockets along; bind only the
                // socket, at the place the volume puts it, over an empty directory.
                cmd.args(["--mount", &format!("type=tmpfs,target={target}")]);
                cmd.arg("--mount")
                    .arg(format!("type=bind,source={},target={target}/docker.sock{ro}", socket.display()));
            }
        }
    }
    let security = &spec["securityContext"];
    assert_ne!(security["privileged"].as_bool(), Some(true), "a privileged container is not simulated");
    if security["readOnlyRootFilesystem"].as_bool() == Some(true) {
        cmd.arg("--read-only");
    }
    if security["allowPrivilegeEscalation"].as_bool() == Some(false) {
        cmd.args(["--security-opt", "no-new-privileges"]);
    }
    for cap in security["capabilities"]["drop"].as_sequence().into_iter().flatten() {
        cmd.args(["--cap-drop", cap.as_str().expect("capability")]);
    }
    match (security["runAsUser"].as_u64(), security["runAsGroup"].as_u64()) {
        (Some(user), Some(group)) => {
            cmd.args(["--user", &format!("{user}:{group}")]);
        }
        (Some(user), None) => {
            cmd.args(["--user", &user.to_string()]);
        }
        _ => {}
    }
    let command: Vec<&str> = spec["command"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("command word"))
        .collect();
    if let Some((entrypoint, _)) = command.split_first() {
        cmd.args(["--entrypoint", entrypoint]);
    }
    cmd.arg(image);
    if command.len() > 1 {
        cmd.args(&command[1..]);
    }
    for arg in spec["args"].as_sequence().into_iter().flatten() {
        cmd.arg(arg.as_str().expect("args are strings"));
    }
    cmd
}

/// Removes the named container (on the classic daemon, where [`docker_run`] runs it) when the test
/// ends (pass or fail).
pub struct ContainerGuard(pub String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        crate::support::docker_quiet_on(Daemon::Classic, &["rm", "-f", &self.0]);
    }
}

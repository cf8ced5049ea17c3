//! The runner-side values in docs/gha-runner-scale-set.md stay valid and do what they say: they are
//! checked against the Kubernetes schema, matched against the chart and the naming rules, and the
//! documented init container is run with the built image the way the pod runs it.

use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::Value;

use crate::k8s::{self, HostVolume, mount, volume};
use crate::support::{BIN, TestImage, docker, preloader, run, snapshot, unique};

const GUIDE: &str = "docs/gha-runner-scale-set.md";
const TIMEOUT: Duration = Duration::from_secs(120);

fn guide() -> String {
    std::fs::read_to_string(k8s::root().join(GUIDE)).expect("read the guide")
}

/// The body of the first fenced code block after the first line containing `marker`.
fn block_after(text: &str, marker: &str) -> String {
    let start = text.find(marker).unwrap_or_else(|| panic!("{GUIDE} has no {marker:?}"));
    let rest = &text[start..];
    let open = rest.find("\n```").expect("a code block after the marker") + 1;
    let body = &rest[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let close = body.find("\n```").expect("a closed code block");
    body[..=close].to_owned()
}

/// The ARC values documented for the runner scale set.
fn runner_values() -> Value {
    serde_yaml_ng::from_str(&block_after(&guide(), "<!-- test: runner-values")).expect("the values are YAML")
}

/// The image list of the documented preloader values (the heredoc in the install step).
fn documented_images() -> Vec<String> {
    let block = block_after(&guide(), "## One image list for both sides");
    let values =
        block.split("<<'EOF'\n").nth(1).and_then(|b| b.split("\nEOF").next()).expect("a values heredoc");
    let values: Value = serde_yaml_ng::from_str(values).expect("the preloader values are YAML");
    values["images"].as_sequence().expect("images").iter().map(|i| i.as_str().unwrap().to_owned()).collect()
}

fn pod_spec(values: &Value) -> &Value {
    &values["template"]["spec"]
}

fn names(list: &Value) -> Vec<&str> {
    list.as_sequence().expect("a list").iter().map(|c| c["name"].as_str().unwrap()).collect()
}

/// The value of `--flag=value` or `--flag value` in the container's args.
fn flag<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    let args: Vec<&str> = container["args"].as_sequence()?.iter().map(|a| a.as_str().unwrap()).collect();
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&prefix) {
            Some(v)
        } else if *a == name {
            args.get(i + 1).copied()
        } else {
            None
        }
    })
}

#[test]
fn runner_values_form_a_valid_pod_with_the_loader_between_dind_and_the_runner() {
    let values = runner_values();
    assert!(values.get("containerMode").is_none(), "containerMode must stay unset with a custom dind layout");
    let spec = pod_spec(&values).clone();

    let mut pod: Value =
        serde_yaml_ng::from_str("apiVersion: v1\nkind: Pod\nmetadata:\n  name: runner\n").unwrap();
    pod["spec"] = spec.clone();
    let pod = serde_yaml_ng::to_string(&pod).unwrap();
    k8s::validate("the runner pod of docs/gha-runner-scale-set.md", &pod);

    let init = names(&spec["initContainers"]);
    let dind = init.iter().position(|n| *n == "dind").expect("a dind init container");
    let load = init.iter().position(|n| *n == "preload-images").expect("a preload-images init container");
    assert!(dind < load, "dind starts before the loader: {init:?}");
    assert_eq!(names(&spec["containers"]), ["runner"]);

    let dind = k8s::container(&spec, "dind");
    assert_eq!(dind["restartPolicy"].as_str(), Some("Always"), "dind is a native sidecar");
    assert!(
        dind["startupProbe"]["exec"]["command"].is_sequence(),
        "the next init container waits for docker"
    );
    assert_eq!(mount(dind, "dind-sock")["mountPath"].as_str(), Some("/var/run"));

    let loader = k8s::container(&spec, "preload-images");
    assert!(loader["restartPolicy"].is_null(), "the loader is an init container that finishes");
    assert!(loader["image"].as_str().unwrap().starts_with("ghcr.io/image-preloader/image-preloader:"));
    assert_eq!(
        loader["image"].as_str().unwrap().rsplit(':').next(),
        Some(env!("CARGO_PKG_VERSION")),
        "the documented image tag is the current release"
    );
    assert_eq!(loader["args"][0].as_str(), Some("load"));
    assert!(loader["command"].is_null(), "no shell: the image's entrypoint runs");
    let security = &loader["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(security["privileged"].as_bool() != Some(true));
    let dir = flag(loader, "--dir").expect("--dir");
    let archives = mount(loader, "preloaded-images");
    assert_eq!(archives["mountPath"].as_str(), Some(dir));
    assert_eq!(archives["readOnly"].as_bool(), Some(true), "the hostPath is mounted read-only");
    let host = volume(&spec, "preloaded-images");
    assert_eq!(host["hostPath"]["path"].as_str(), Some("/opt/runner/images"), "the chart's default hostPath");
    assert_eq!(mount(loader, "dind-sock")["mountPath"].as_str(), Some("/var/run"));
    assert_eq!(flag(loader, "--docker-host"), Some("unix:///var/run/docker.sock"));
    let list = flag(loader, "--images-file").expect("--images-file");
    let list_dir = mount(loader, "preload-list")["mountPath"].as_str().unwrap();
    assert_eq!(Path::new(list).parent(), Some(Path::new(list_dir)));
}

#[test]
fn the_documented_config_map_is_the_one_the_chart_renders_for_that_release() {
    let values = runner_values();
    let spec = pod_spec(&values);
    let name = volume(spec, "preload-list")["configMap"]["name"].as_str().expect("a ConfigMap volume");
    let images = documented_images();
    let mut args = vec![];
    for (i, image) in images.iter().enumerate() {
        args.push("--set".to_owned());
        args.push(format!("images[{i}]={image}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = k8s::helm_template_as("image-preloader", &args).expect("the chart renders");
    let docs = k8s::documents(&text);
    let map = k8s::named(&docs, "ConfigMap", name);
    let loader = k8s::container(spec, "preload-images");
    let file = Path::new(flag(loader, "--images-file").unwrap()).file_name().unwrap().to_str().unwrap();
    let listed = map["data"][file].as_str().unwrap_or_else(|| panic!("ConfigMap {name} has no key {file}"));
    assert_eq!(k8s::listed(listed), images, "the runner side reads the list the DaemonSet saves");
}

#[test]
fn the_seed_file_names_in_the_guide_are_what_path_prints() {
    let text = guide();
    let seed: Value = serde_yaml_ng::from_str(&block_after(&text, "## Charts that carry the seed")).unwrap();
    let documented: Vec<&str> = seed["preloadImages"]["imageTarFiles"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let images = documented_images();
    let mut args = vec!["path"];
    args.extend(images.iter().map(String::as_str));
    let out = run(preloader(&args), TIMEOUT);
    out.assert_code(0);
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(documented, printed, "imageTarFiles in {GUIDE} match `{BIN} path`");
}

#[test]
fn the_documented_init_container_loads_the_node_archives_into_the_pods_daemon() {
    let image = k8s::test_image();
    let label = unique("docs");
    let present = TestImage::push(&format!("ipt/{label}-a"), "1");
    let absent = TestImage::push(&format!("ipt/{label}-b"), "2");

    // The node: the DaemonSet has warmed both images into the hostPath.
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().to_str().unwrap();
    run(preloader(&["warm", "--dir", dir, &present.reference, &absent.reference]), TIMEOUT).assert_code(0);
    absent.remove_local();
    assert!(present.is_local() && !absent.is_local());
    let before = snapshot(host.path());

    // The pod: the rendered list in its ConfigMap volume, the daemon's socket in dind-sock.
    let list = tempfile::tempdir().unwrap();
    std::fs::write(
        list.path().join("images.txt"),
        format!("# from the chart's ConfigMap\n{}\n{}\n", present.reference, absent.reference),
    )
    .unwrap();
    let values = runner_values();
    let loader = k8s::container(pod_spec(&values), "preload-images");
    let name = unique("ipt-docs-loader");
    let _container = k8s::ContainerGuard(name.clone());
    let out = run(
        k8s::docker_run(
            loader,
            image,
            &name,
            &[
                ("dind-sock", HostVolume::DockerSocketDir),
                ("preloaded-images", HostVolume::Dir(host.path())),
                ("preload-list", HostVolume::Dir(list.path())),
            ],
        ),
        TIMEOUT,
    );
    let logs = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    out.assert_code(0);
    assert!(absent.is_local(), "the missing image was loaded: {logs}");
    assert_eq!(docker(&["image", "inspect", "--format", "{{.Id}}", &absent.reference]), absent.id);
    assert_eq!(docker(&["run", "--rm", "--network", "none", &absent.reference]), absent.marker);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("loaded") && l.contains(&format!("{label}-b_2.tar"))),
        "{logs}"
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("present") && l.contains(&format!("{label}-a_1.tar"))),
        "{logs}"
    );
    assert_eq!(snapshot(host.path()), before, "the read-only hostPath is untouched");
}

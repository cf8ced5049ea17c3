//! The runner-side values in docs/gha-runner-scale-set.md stay valid and do what they say: for each
//! runner chart (ARC's classic and experimental charts, the fork with `preloadImages`) the runner
//! pod is built from the documented values the way that chart version builds it and validated
//! against the Kubernetes schema; the values are matched against our chart and the naming rules,
//! and the documented init container is run with the built image the way the pod runs it.

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

/// The documented values in the block after `marker`.
fn values(marker: &str) -> Value {
    serde_yaml_ng::from_str(&block_after(&guide(), marker))
        .unwrap_or_else(|e| panic!("the values after {marker:?} are not YAML: {e}"))
}

/// The values documented for ARC's classic gha-runner-scale-set chart.
fn runner_values() -> Value {
    values("<!-- test: runner-values")
}

/// The values documented for ARC's gha-runner-scale-set-experimental chart.
fn experimental_values() -> Value {
    values("<!-- test: experimental-values")
}

/// The values documented for the fork with `preloadImages`.
fn fork_values() -> Value {
    values("<!-- test: fork-values")
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
    list.as_sequence().map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect()).unwrap_or_default()
}

fn seq(items: Vec<Value>) -> Value {
    Value::Sequence(items)
}

fn items(list: &Value) -> Vec<Value> {
    list.as_sequence().cloned().unwrap_or_default()
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

/// An emptyDir volume.
fn empty_dir(name: &str) -> Value {
    yaml(&format!("name: {name}\nemptyDir: {{}}\n"))
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

/// The controller's service account as the documented install command names it:
/// `<release>-gha-rs-controller` in the release's namespace (gha-runner-scale-set-controller 0.14.2).
fn documented_controller() -> (String, String) {
    let command = block_after(&guide(), "<!-- test: controller-install").replace("\\\n", " ");
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "install").expect("helm install");
    let release = words[at + 1];
    assert!(words[at + 2].ends_with("/gha-runner-scale-set-controller"), "{command}");
    let namespace = words[words.iter().position(|w| *w == "--namespace").expect("--namespace") + 1];
    (format!("{release}-gha-rs-controller"), namespace.to_owned())
}

/// Both names are set (no lookup in the cluster while rendering) and are the documented controller's.
fn assert_controller(values: &Value, what: &str) {
    let (name, namespace) = documented_controller();
    let account = &values["controllerServiceAccount"];
    assert_eq!(account["name"].as_str(), Some(name.as_str()), "{what}: controllerServiceAccount.name");
    assert_eq!(
        account["namespace"].as_str(),
        Some(namespace.as_str()),
        "{what}: controllerServiceAccount.namespace"
    );
}

/// A pod with this spec, validated strictly for every Kubernetes version of the tests.
fn validate_pod(what: &str, spec: &Value) {
    let mut pod = yaml("apiVersion: v1\nkind: Pod\nmetadata:\n  name: runner\n");
    pod["spec"] = spec.clone();
    k8s::validate(what, &serde_yaml_ng::to_string(&pod).unwrap());
}

/// The runner pod of gha-runner-scale-set 0.14.2 with `containerMode` unset: `template.spec` as
/// given, plus the restart policy and service account the chart sets.
fn classic_pod(values: &Value) -> Value {
    let mut spec = pod_spec(values).clone();
    if spec["restartPolicy"].is_null() {
        spec["restartPolicy"] = "Never".into();
    }
    spec["serviceAccountName"] = "arc-runner-set-gha-rs-no-permission".into();
    spec
}

/// The runner pod of gha-runner-scale-set-experimental 0.14.2 with `runner.mode` empty: the user's
/// init containers as given; the `runner` container from `runner.container`, then the user's
/// containers; and, once any volume is listed, the chart's `work` and `dind-sock` emptyDirs (and
/// `dind-externals` while `runner.dind.copyRunnerExternals` is not false) before the user's volumes.
fn experimental_pod(values: &Value) -> Value {
    let runner = &values["runner"];
    let user = &runner["pod"]["spec"];
    let mut spec = yaml("serviceAccountName: arc-runner-set-no-permission\n");
    if let Some(fields) = user.as_mapping() {
        for (key, value) in fields {
            if !["containers", "initContainers", "volumes", "serviceAccountName"]
                .contains(&key.as_str().unwrap())
            {
                spec[key.as_str().unwrap()] = value.clone();
            }
        }
    }
    if !items(&user["initContainers"]).is_empty() {
        spec["initContainers"] = user["initContainers"].clone();
    }
    let mut container = yaml("name: runner\n");
    for (key, value) in runner["container"].as_mapping().expect("runner.container") {
        container[key.as_str().unwrap()] = value.clone();
    }
    let mut containers = vec![container];
    containers.extend(items(&user["containers"]));
    spec["containers"] = seq(containers);
    let listed = items(&user["volumes"]);
    if !listed.is_empty() {
        let mut volumes = vec![empty_dir("work"), empty_dir("dind-sock")];
        if runner["dind"]["copyRunnerExternals"].as_bool() != Some(false) {
            volumes.push(empty_dir("dind-externals"));
        }
        volumes.extend(listed);
        spec["volumes"] = seq(volumes);
    }
    spec
}

/// The runner pod of the fork's gha-runner-scale-set 0.15.12 in `containerMode.type: dind` with
/// `preloadImages` off: ARC's dind layout (its `init-dind-externals` and `dind` sidecar, as the
/// classic values spell them out, with the daemon image from the `dind` entry of
/// `template.spec.containers`; the fork adds a few dockerd flags and a longer probe, which change
/// nothing here), then the user's init containers; the runner with the socket and
/// work mounts the chart adds; ARC's `dind-sock`, `dind-externals` and `work` volumes, then the
/// user's other volumes.
fn fork_pod(values: &Value) -> Value {
    let classic = runner_values();
    let layout = pod_spec(&classic);
    let user = pod_spec(values);
    let mut dind = k8s::container(layout, "dind").clone();
    dind["image"] = k8s::container(user, "dind")["image"].clone();
    let mut init = vec![k8s::container(layout, "init-dind-externals").clone(), dind];
    init.extend(items(&user["initContainers"]));
    let mut runner = k8s::container(user, "runner").clone();
    runner["env"] = yaml(
        "- name: DOCKER_HOST\n  value: unix:///var/run/docker.sock\n\
         - name: RUNNER_WAIT_FOR_DOCKER_IN_SECONDS\n  value: \"120\"\n",
    );
    runner["volumeMounts"] =
        yaml("- name: work\n  mountPath: /home/runner/_work\n- name: dind-sock\n  mountPath: /var/run\n");
    let mut containers = vec![runner];
    containers.extend(
        items(&user["containers"])
            .into_iter()
            .filter(|c| !["runner", "dind"].contains(&c["name"].as_str().unwrap())),
    );
    let mut volumes = vec![empty_dir("dind-sock"), empty_dir("dind-externals"), empty_dir("work")];
    volumes.extend(items(&user["volumes"]).into_iter().filter(|v| v["name"].as_str() != Some("work")));
    let mut spec = yaml("restartPolicy: Never\nserviceAccountName: arc-runner-set-gha-rs-no-permission\n");
    spec["initContainers"] = seq(init);
    spec["containers"] = seq(containers);
    spec["volumes"] = seq(volumes);
    spec
}

/// What every documented runner pod must hold: dind as a native sidecar with a startup probe, then
/// the loader (no shell, no privileges, the hostPath read-only, the socket and the list mounted),
/// then the runner.
fn assert_runner_pod(what: &str, spec: &Value) {
    validate_pod(what, spec);
    let init = names(&spec["initContainers"]);
    let dind = init.iter().position(|n| *n == "dind").expect("a dind init container");
    let load = init.iter().position(|n| *n == "preload-images").expect("a preload-images init container");
    assert!(dind < load, "{what}: dind starts before the loader: {init:?}");
    assert_eq!(names(&spec["containers"]), ["runner"], "{what}");

    let dind = k8s::container(spec, "dind");
    assert_eq!(dind["restartPolicy"].as_str(), Some("Always"), "{what}: dind is a native sidecar");
    assert!(
        dind["startupProbe"]["exec"]["command"].is_sequence(),
        "{what}: the next init container waits for docker"
    );
    assert_eq!(mount(dind, "dind-sock")["mountPath"].as_str(), Some("/var/run"));

    let loader = k8s::container(spec, "preload-images");
    assert!(loader["restartPolicy"].is_null(), "{what}: the loader is an init container that finishes");
    assert!(loader["image"].as_str().unwrap().starts_with("ghcr.io/image-preloader/image-preloader:"));
    assert_eq!(
        loader["image"].as_str().unwrap().rsplit(':').next(),
        Some(env!("CARGO_PKG_VERSION")),
        "{what}: the documented image tag is the current release"
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
    let host = volume(spec, "preloaded-images");
    assert_eq!(host["hostPath"]["path"].as_str(), Some("/opt/runner/images"), "the chart's default hostPath");
    assert_eq!(mount(loader, "dind-sock")["mountPath"].as_str(), Some("/var/run"));
    assert_eq!(flag(loader, "--docker-host"), Some("unix:///var/run/docker.sock"));
    assert!(flag(loader, "--deadline").is_some(), "{what}: the runner's wait is bounded");
    assert!(
        !loader["args"].as_sequence().unwrap().iter().any(|a| a.as_str() == Some("--strict")),
        "{what}: a bad archive must not fail the runner pod"
    );
    let list = flag(loader, "--images-file").expect("--images-file");
    let list_dir = mount(loader, "preload-list")["mountPath"].as_str().unwrap();
    assert_eq!(Path::new(list).parent(), Some(Path::new(list_dir)));

    let runner = k8s::container(spec, "runner");
    assert_eq!(
        mount(runner, "dind-sock")["mountPath"].as_str(),
        Some("/var/run"),
        "{what}: the runner's socket"
    );
}

#[test]
fn classic_chart_values_form_a_valid_pod_with_the_loader_between_dind_and_the_runner() {
    let values = runner_values();
    assert!(
        values.get("containerMode").is_none(),
        "containerMode must stay unset: the chart would add a second dind layout"
    );
    assert_controller(&values, "classic chart");
    assert_runner_pod("the runner pod of the classic chart", &classic_pod(&values));
}

#[test]
fn experimental_chart_values_put_the_loader_after_their_own_dind() {
    let values = experimental_values();
    // runner.mode: dind would place the loader before the chart's dind sidecar.
    assert_eq!(values["runner"]["mode"].as_str().unwrap_or(""), "", "runner.mode stays empty");
    assert!(values["auth"]["url"].as_str().is_some_and(|u| u.starts_with("https://")), "auth.url");
    assert!(
        values["githubConfigUrl"].is_null() && values["template"].is_null(),
        "no keys of the classic chart"
    );
    assert_controller(&values, "experimental chart");
    let user = &values["runner"]["pod"]["spec"];
    for generated in ["work", "dind-sock", "dind-externals"] {
        assert!(
            !names(&user["volumes"]).contains(&generated),
            "the experimental chart adds {generated} itself; listing it duplicates it"
        );
    }
    let spec = experimental_pod(&values);
    assert_runner_pod("the runner pod of the experimental chart", &spec);
    let classic = runner_values();
    assert_eq!(
        k8s::container(&spec, "preload-images"),
        k8s::container(pod_spec(&classic), "preload-images"),
        "one loader for both charts"
    );
    assert_eq!(volume(&spec, "preload-list"), volume(pod_spec(&classic), "preload-list"));
}

#[test]
fn fork_values_replace_its_loop_with_the_loader_after_its_dind() {
    let values = fork_values();
    assert_eq!(values["containerMode"]["type"].as_str(), Some("dind"), "the fork's dind layout");
    assert_eq!(values["preloadImages"]["enabled"].as_bool(), Some(false), "the fork's loop is off");
    assert_controller(&values, "the fork");
    let user = pod_spec(&values);
    assert!(k8s::container(user, "dind")["image"].is_string(), "the fork takes dind's image from this entry");
    for generated in ["init-dind-externals", "dind"] {
        assert!(!names(&user["initContainers"]).contains(&generated), "the fork adds {generated} itself");
    }
    for generated in ["dind-sock", "dind-externals"] {
        assert!(!names(&user["volumes"]).contains(&generated), "the fork adds {generated} itself");
    }
    let spec = fork_pod(&values);
    assert_runner_pod("the runner pod of the fork", &spec);
    let classic = runner_values();
    assert_eq!(
        k8s::container(&spec, "preload-images"),
        k8s::container(pod_spec(&classic), "preload-images"),
        "the same loader as for ARC's charts"
    );
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
fn the_fork_file_names_in_the_guide_are_what_path_prints() {
    let text = guide();
    let seed: Value =
        serde_yaml_ng::from_str(&block_after(&text, "## Coming from a fork with preloadImages")).unwrap();
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

// The runner pod's dind: both image stores (a fresh `docker:29-dind` uses the containerd one).
on_both_daemons! {
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
        assert_eq!(docker(&["image", "inspect", "--format", "{{.Id}}", &absent.reference]), absent.local_id());
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
}

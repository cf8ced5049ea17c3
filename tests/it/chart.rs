//! The Helm chart in charts/image-preloader: lint, render and schema-validate every scenario in ci/,
//! structural checks on the rendered objects, the README's value table against values.yaml, and a
//! contract test feeding the rendered command line and image list to the real binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;

use crate::k8s::{self, container, documents, helm_template, mount, of_kind, only, render, volume};
use crate::support::{self, Running, TestImage, unique};

/// The scenario values files every CI run must cover (more may exist; all are checked).
const SCENARIOS: &[&str] = &[
    "default-values.yaml",
    "seed-example-values.yaml",
    "all-values.yaml",
    "airgapped-values.yaml",
    "pools-only-values.yaml",
    "emptydir-size-values.yaml",
    "registry-auth-values.yaml",
    "registry-mode-values.yaml",
];

fn scenario(name: &str) -> String {
    k8s::chart_dir().join("ci").join(name).to_str().unwrap().to_owned()
}

fn render_scenario(name: &str) -> Vec<Value> {
    render(&["-f", &scenario(name)])
}

fn pod_spec(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, found {value:?}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("expected a string, found {v:?}")).to_owned())
        .collect()
}

/// The value following `flag` in an argument list, if the flag occurs (once at most).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let positions: Vec<usize> = args.iter().enumerate().filter(|(_, a)| *a == name).map(|(i, _)| i).collect();
    assert!(positions.len() <= 1, "{name} occurs {} times in {args:?}", positions.len());
    positions.first().map(|&i| args.get(i + 1).unwrap_or_else(|| panic!("{name} has no value")).as_str())
}

fn preloader_args(ds: &Value) -> Vec<String> {
    strings(&container(pod_spec(ds), "preloader")["args"])
}

fn dind_args(ds: &Value) -> Vec<String> {
    strings(&container(pod_spec(ds), "dind")["args"])
}

fn daemonset<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    k8s::named(docs, "DaemonSet", name)
}

fn config_map<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    k8s::named(docs, "ConfigMap", name)
}

/// The references of a rendered ConfigMap's images.txt.
fn listed(cm: &Value) -> Vec<String> {
    k8s::listed(cm["data"]["images.txt"].as_str().expect("images.txt in the ConfigMap"))
}

fn checksum(ds: &Value) -> String {
    ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .expect("a checksum/config annotation")
        .to_owned()
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new(k8s::tool("helm")).args(args).stdin(Stdio::null()).output().expect("run helm")
}

#[test]
fn every_scenario_lints_renders_and_validates() {
    let dir = k8s::chart_dir().join("ci");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    found.sort();
    for name in SCENARIOS {
        assert!(found.iter().any(|f| f == name), "ci/{name} is missing (found {found:?})");
    }
    let chart = k8s::chart_dir();
    for name in &found {
        let file = scenario(name);
        let lint = helm(&["lint", "--strict", chart.to_str().unwrap(), "-f", &file]);
        assert!(
            lint.status.success(),
            "helm lint --strict -f ci/{name} failed:\n{}{}",
            String::from_utf8_lossy(&lint.stdout),
            String::from_utf8_lossy(&lint.stderr)
        );
        let text = helm_template(&["-f", &file]).unwrap_or_else(|e| panic!("helm template ci/{name}: {e}"));
        let docs = documents(&text);
        assert!(!of_kind(&docs, "DaemonSet").is_empty(), "ci/{name} renders no DaemonSet");
        k8s::validate(&format!("ci/{name}"), &text);
    }
}

#[test]
fn the_pod_is_a_dind_native_sidecar_and_an_unprivileged_preloader() {
    let docs = render_scenario("default-values.yaml");
    let ds = only(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["name"].as_str(), Some("preload-image-preloader"));
    assert_eq!(ds["metadata"]["namespace"].as_str(), Some("ci-images"));
    let spec = pod_spec(ds);

    // dind: the only init container, restarted always (a native sidecar), ready on `docker info`.
    let inits = spec["initContainers"].as_sequence().unwrap();
    assert_eq!(inits.len(), 1);
    let dind = container(spec, "dind");
    assert_eq!(dind["restartPolicy"].as_str(), Some("Always"));
    assert_eq!(dind["image"].as_str(), Some("docker:29-dind"));
    assert_eq!(dind["imagePullPolicy"].as_str(), Some("IfNotPresent"));
    assert!(dind["command"].is_null(), "dind keeps the image's entrypoint");
    assert_eq!(
        dind_args(ds),
        [
            "dockerd",
            "--host=unix:///var/run/docker.sock",
            "--mtu=1450",
            "--group=123",
            "--max-concurrent-downloads=3"
        ]
    );
    let probe = &dind["startupProbe"];
    assert_eq!(strings(&probe["exec"]["command"]), ["docker", "info"]);
    assert_eq!(probe["periodSeconds"].as_u64(), Some(5));
    assert_eq!(probe["failureThreshold"].as_u64(), Some(60));
    assert_eq!(dind["env"], yaml("[{name: DOCKER_TLS_CERTDIR, value: ''}]"));
    assert_eq!(dind["securityContext"], yaml("privileged: true"));
    assert_eq!(mount(dind, "dind-sock")["mountPath"].as_str(), Some("/var/run"));
    assert_eq!(mount(dind, "dind-storage")["mountPath"].as_str(), Some("/var/lib/docker"));
    assert_eq!(
        dind["resources"],
        yaml("{limits: {cpu: 500m, memory: 1Gi}, requests: {cpu: 100m, memory: 256Mi}}")
    );

    // The preloader: the binary's own entrypoint, every option as an argument, no shell.
    let containers = spec["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let pre = container(spec, "preloader");
    assert_eq!(pre["image"].as_str(), Some("ghcr.io/image-preloader/image-preloader:0.1.0"));
    assert!(pre["command"].is_null(), "the image's ENTRYPOINT is the binary");
    #[rustfmt::skip]
    let expected = [
        "run", "--images-file", "/etc/image-preloader/images.txt", "--dir", "/opt/runner/images",
        "--max-image-age", "7", "--interval", "3600", "--concurrency", "2", "--log-format", "text",
        "--refresh-policy", "digest", "--min-free", "10%", "--docker-host", "unix:///var/run/docker.sock",
        "--listen", "0.0.0.0:9090",
    ];
    assert_eq!(preloader_args(ds), expected);
    let sc = &pre["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    assert!(pre["resources"].is_null(), "resources default to none: {:?}", pre["resources"]);
    assert_eq!(mount(pre, "dind-sock")["mountPath"].as_str(), Some("/var/run"));
    let config = mount(pre, "config");
    assert_eq!(config["mountPath"].as_str(), Some("/etc/image-preloader"));
    assert_eq!(config["readOnly"].as_bool(), Some(true));
    assert_eq!(mount(pre, "images")["mountPath"].as_str(), Some("/opt/runner/images"));
    // Only the mounts the preloader needs: never the dind store.
    assert_eq!(pre["volumeMounts"].as_sequence().unwrap().len(), 3);

    // Volumes: the socket and the store are per pod, the archives on the node.
    assert_eq!(volume(spec, "dind-sock")["emptyDir"], yaml("{}"));
    assert_eq!(volume(spec, "dind-storage")["emptyDir"], yaml("{}"));
    assert_eq!(
        volume(spec, "images")["hostPath"],
        yaml("{path: /opt/runner/images, type: DirectoryOrCreate}")
    );
    assert_eq!(volume(spec, "config")["configMap"]["name"].as_str(), Some("preload-image-preloader"));

    // Pod-level settings.
    assert_eq!(spec["serviceAccountName"].as_str(), Some("preload-image-preloader"));
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(false));
    assert_eq!(spec["terminationGracePeriodSeconds"].as_u64(), Some(30));
    assert_eq!(ds["spec"]["updateStrategy"], yaml("type: RollingUpdate"));
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["kubectl.kubernetes.io/default-container"].as_str(), Some("preloader"));
    assert_eq!(checksum(ds).len(), 64);

    // The ConfigMap carries the list as a file; selectors match the pod labels.
    assert_eq!(listed(config_map(&docs, "preload-image-preloader")), ["nginx:1.27"]);
    let selector = ds["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector {
        assert_eq!(&labels[key.as_str().unwrap()], value, "pod label {key:?} matches the selector");
    }
    for key in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version"] {
        assert!(labels[key].is_string(), "pod label {key}");
        assert!(ds["metadata"]["labels"][key].is_string(), "DaemonSet label {key}");
    }
    let sa = only(&docs, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"].as_str(), Some("preload-image-preloader"));
    assert_eq!(sa["automountServiceAccountToken"].as_bool(), Some(false));
}

#[test]
fn the_seed_example_values_land_where_the_seed_put_them() {
    let docs = render_scenario("seed-example-values.yaml");
    let ds = only(&docs, "DaemonSet");
    let spec = pod_spec(ds);
    let args = preloader_args(ds);
    assert_eq!(flag(&args, "--max-image-age"), Some("14"));
    assert_eq!(flag(&args, "--dir"), Some("/opt/runner/images"));
    assert_eq!(flag(&args, "--interval"), Some("3600"));
    assert_eq!(
        listed(config_map(&docs, "preload-image-preloader")),
        ["selenium/standalone-firefox:4.23.1-20240820", "selenium/video:ffmpeg-4.3.1-20230404"]
    );
    assert_eq!(spec["nodeSelector"], yaml("kubernetes.io/os: linux"));
    assert_eq!(
        spec["tolerations"],
        yaml("[{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]")
    );
    assert_eq!(
        container(spec, "preloader")["resources"],
        yaml("{limits: {cpu: 1000m, memory: 2Gi}, requests: {cpu: 500m, memory: 1Gi}}")
    );
    assert_eq!(volume(spec, "images")["hostPath"]["path"].as_str(), Some("/opt/runner/images"));

    // The other seed values, set through --set as a seed user would.
    let docs = render(&[
        "-f",
        &scenario("seed-example-values.yaml"),
        "--set",
        "hostPath=/data/images,checkInterval=600,dockerd.mtu=1400,dockerd.groupGid=1001",
        "--set",
        "image.repository=mirror.local/docker,image.tag=27-dind,image.pullPolicy=Always",
        "--set",
        "podLabels.team=ci,podAnnotations.owner=platform,podSecurityContext.fsGroup=123",
        "--set",
        "securityContext.privileged=true,securityContext.runAsUser=0",
        "--set",
        "dockerd.resources.limits.memory=4Gi,serviceAccount.create=true,serviceAccount.name=preloader-sa",
        "--set",
        "updateStrategy=OnDelete,nameOverride=cache",
    ]);
    let ds = only(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["name"].as_str(), Some("preload-cache"));
    let spec = pod_spec(ds);
    let args = preloader_args(ds);
    assert_eq!(flag(&args, "--dir"), Some("/data/images"));
    assert_eq!(flag(&args, "--interval"), Some("600"));
    assert_eq!(volume(spec, "images")["hostPath"]["path"].as_str(), Some("/data/images"));
    assert_eq!(mount(container(spec, "preloader"), "images")["mountPath"].as_str(), Some("/data/images"));
    let dind = container(spec, "dind");
    assert_eq!(dind["image"].as_str(), Some("mirror.local/docker:27-dind"));
    assert_eq!(dind["imagePullPolicy"].as_str(), Some("Always"));
    let dargs = dind_args(ds);
    assert!(
        dargs.contains(&"--mtu=1400".to_owned()) && dargs.contains(&"--group=1001".to_owned()),
        "{dargs:?}"
    );
    assert_eq!(dind["securityContext"], yaml("{privileged: true, runAsUser: 0}"));
    assert_eq!(dind["resources"]["limits"]["memory"].as_str(), Some("4Gi"));
    let template = &ds["spec"]["template"]["metadata"];
    assert_eq!(template["labels"]["team"].as_str(), Some("ci"));
    assert_eq!(template["annotations"]["owner"].as_str(), Some("platform"));
    assert_eq!(spec["securityContext"], yaml("fsGroup: 123"));
    assert_eq!(spec["serviceAccountName"].as_str(), Some("preloader-sa"));
    assert_eq!(only(&docs, "ServiceAccount")["metadata"]["name"].as_str(), Some("preloader-sa"));
    assert_eq!(ds["spec"]["updateStrategy"], yaml("type: OnDelete"));

    // serviceAccount.create=false: no ServiceAccount, the named one is used.
    let docs = render(&["--set", "images={nginx},serviceAccount.create=false,serviceAccount.name=existing"]);
    assert!(of_kind(&docs, "ServiceAccount").is_empty());
    assert_eq!(pod_spec(only(&docs, "DaemonSet"))["serviceAccountName"].as_str(), Some("existing"));
}

#[test]
fn the_checksum_follows_the_flags_only_and_a_list_edit_reloads_without_a_restart() {
    let sum = |extra: &[&str]| {
        let mut args = vec!["--set", "images={nginx:1.27,busybox:1.36}"];
        args.extend_from_slice(extra);
        checksum(only(&render(&args), "DaemonSet"))
    };
    let base = sum(&[]);
    assert_eq!(base, sum(&[]), "rendering is deterministic");
    // Not part of the configuration: pod metadata, scheduling, resources, probes, the Service.
    for unrelated in [
        "podLabels.a=b",
        "podAnnotations.a=b",
        "nodeSelector.a=b",
        "resources.limits.cpu=1",
        "probes.readiness.periodSeconds=20",
        "metrics.service.enabled=true",
    ] {
        assert_eq!(base, sum(&["--set", unrelated]), "{unrelated} changed the checksum");
    }
    // The list is read again by the running preloader: editing it must not roll every pod (and,
    // with dind's store on an emptyDir, make every node pull everything again).
    let other_list = checksum(only(&render(&["--set", "images={nginx:1.27,busybox:1.37}"]), "DaemonSet"));
    assert_eq!(base, other_list, "a changed list must not roll the pods");
    let longer =
        checksum(only(&render(&["--set", "images={nginx:1.27,busybox:1.36,alpine:3}"]), "DaemonSet"));
    assert_eq!(base, longer);
    // The list reaches the pod through a directory mount (a subPath mount never updates).
    let docs = render(&["--set", "images={nginx:1.27}"]);
    let ds = only(&docs, "DaemonSet");
    assert!(mount(container(pod_spec(ds), "preloader"), "config")["subPath"].is_null());
    for changed in [
        "maxImageAge=3",
        "concurrency=4",
        "refreshPolicy=rebuild",
        "minFree=5Gi",
        "prune=true",
        "hostPath=/x",
        "metrics.port=9100",
    ] {
        assert_ne!(base, sum(&["--set", changed]), "{changed} did not change the checksum");
    }
}

#[test]
fn probes_port_service_and_service_monitor() {
    const MONITORING: &str = "monitoring.coreos.com/v1/ServiceMonitor";
    let docs = render(&["--set", "images={nginx:1.27}"]);
    let ds = only(&docs, "DaemonSet");
    let pre = container(pod_spec(ds), "preloader");
    assert_eq!(flag(&preloader_args(ds), "--listen"), Some("0.0.0.0:9090"));
    assert_eq!(pre["ports"], yaml("[{name: http, containerPort: 9090, protocol: TCP}]"));
    assert_eq!(
        pre["livenessProbe"],
        yaml(
            "{httpGet: {path: /healthz, port: http}, periodSeconds: 30, timeoutSeconds: 5, failureThreshold: 3}"
        )
    );
    assert_eq!(
        pre["readinessProbe"],
        yaml(
            "{httpGet: {path: /readyz, port: http}, periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 3}"
        )
    );
    // Off by default: no Service, no ServiceMonitor, even where the API exists.
    assert!(of_kind(&docs, "Service").is_empty());
    let with_api = render(&["--set", "images={nginx:1.27}", "--api-versions", MONITORING]);
    assert!(of_kind(&with_api, "ServiceMonitor").is_empty());

    // Port and thresholds follow the values; probes can be turned off.
    let docs = render(&[
        "--set",
        "images={nginx:1.27},metrics.port=9100,probes.readiness.failureThreshold=7,probes.liveness.enabled=false",
    ]);
    let ds = only(&docs, "DaemonSet");
    let pre = container(pod_spec(ds), "preloader");
    assert_eq!(flag(&preloader_args(ds), "--listen"), Some("0.0.0.0:9100"));
    assert_eq!(pre["ports"][0]["containerPort"].as_u64(), Some(9100));
    assert!(pre["livenessProbe"].is_null());
    assert_eq!(pre["readinessProbe"]["failureThreshold"].as_u64(), Some(7));

    // The Service: headless, one per DaemonSet, selecting that DaemonSet's pods only.
    let service_values = [
        "--set",
        "images={nginx:1.27},metrics.service.enabled=true,metrics.service.annotations.a=b",
        "--set-json",
        r#"pools=[{"name":"gpu","images":["cuda:12"]}]"#,
    ];
    let text = helm_template(&service_values).unwrap();
    k8s::validate("the metrics Service", &text);
    let docs = documents(&text);
    let services = of_kind(&docs, "Service");
    assert_eq!(services.len(), 2);
    for service in services {
        let name = service["metadata"]["name"].as_str().unwrap();
        let ds = daemonset(&docs, name);
        assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"));
        assert_eq!(service["spec"]["selector"], ds["spec"]["selector"]["matchLabels"], "{name}");
        assert_eq!(
            service["spec"]["ports"],
            yaml("[{name: http, port: 9090, targetPort: http, protocol: TCP}]")
        );
        assert_eq!(service["metadata"]["annotations"]["a"].as_str(), Some("b"));
    }

    // The ServiceMonitor: only with the value and the API; it brings its Service along.
    let monitor = [
        "--set",
        "images={nginx:1.27},metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom",
    ];
    let without_api = render(&monitor);
    assert!(of_kind(&without_api, "ServiceMonitor").is_empty(), "no ServiceMonitor without the API");
    assert_eq!(of_kind(&without_api, "Service").len(), 1);
    let mut args = monitor.to_vec();
    args.extend(["--api-versions", MONITORING]);
    let text = helm_template(&args).unwrap();
    let docs = documents(&text);
    let sm = only(&docs, "ServiceMonitor");
    let service = only(&docs, "Service");
    assert_eq!(sm["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(sm["metadata"]["labels"]["release"].as_str(), Some("prom"));
    assert_eq!(sm["spec"]["endpoints"], yaml("[{port: http, path: /metrics, interval: 60s}]"));
    for (key, value) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &service["metadata"]["labels"][key.as_str().unwrap()],
            value,
            "the ServiceMonitor selects the Service"
        );
    }
    // Kubernetes' own schemas know no ServiceMonitor: validate the rest.
    let rest: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] != "ServiceMonitor")
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect();
    k8s::validate("objects beside the ServiceMonitor", &rest.join("---\n"));

    // The notes show the warm-up commands, and warn when a ServiceMonitor was asked for in vain.
    let notes = helm(&[
        "install",
        "--dry-run=client",
        "preload",
        k8s::chart_dir().to_str().unwrap(),
        "--namespace",
        "ci-images",
        "--set",
        "images={nginx:1.27},metrics.serviceMonitor.enabled=true",
    ]);
    let notes = String::from_utf8_lossy(&notes.stdout).into_owned();
    assert!(
        notes.contains("kubectl --namespace ci-images rollout status ds/preload-image-preloader"),
        "{notes}"
    );
    assert!(notes.contains("kubectl --namespace ci-images get ds/preload-image-preloader"), "{notes}");
    assert!(
        notes.contains("port-forward pod/<pod> 9090") && notes.contains("localhost:9090/metrics"),
        "{notes}"
    );
    assert!(notes.contains("does not serve the\nmonitoring.coreos.com/v1 API"), "{notes}");
}

#[test]
fn the_grafana_dashboard_is_optional_labelled_and_valid() {
    let default = render(&["--set", "images={nginx:1.27}"]);
    assert!(
        of_kind(&default, "ConfigMap").iter().all(|c| c["data"]["image-preloader.json"].is_null()),
        "no dashboard by default"
    );
    let text = helm_template(&[
        "--set",
        "images={nginx:1.27},metrics.grafanaDashboard.enabled=true,metrics.grafanaDashboard.annotations.grafana_folder=CI",
    ])
    .unwrap();
    k8s::validate("the dashboard ConfigMap", &text);
    let docs = documents(&text);
    let dashboards: Vec<&Value> = of_kind(&docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["data"]["image-preloader.json"].is_string())
        .collect();
    assert_eq!(dashboards.len(), 1);
    let cm = dashboards[0];
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"].as_str(), Some("1"));
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"].as_str(), Some("CI"));
    let dashboard: serde_json::Value =
        serde_json::from_str(cm["data"]["image-preloader.json"].as_str().unwrap())
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "image-preloader");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    // That each series is one the preloader serves: a unit test in src/preload/metrics.rs.
    assert!(exprs.len() >= 10, "{exprs:?}");
}

#[test]
fn the_schema_rejects_unknown_keys_wrong_types_and_bad_values() {
    let bad: &[(&[&str], &str)] = &[
        (&["--set", "imagez={nginx}"], "imagez"),
        (&["--set", "maxImageAge=seven"], "maxImageAge"),
        (&["--set-json", "images=\"nginx\""], "images"),
        (&["--set", "refreshPolicy=sometimes"], "refreshPolicy"),
        (&["--set", "logFormat=xml"], "logFormat"),
        (&["--set", "minFree=lots"], "minFree"),
        (&["--set", "minFree=100%"], "minFree"),
        (&["--set", "concurrency=0"], "concurrency"),
        (&["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (&["--set", "dockerd.storage.type=nfs"], "type"),
        (&["--set", "dockerd.bogus=1"], "bogus"),
        (&["--set-json", "images=[\"nginx:1.27\\nbusybox\"]"], "images"),
        (&["--set-json", "pools=[{\"name\":\"gpu\",\"images\":[\"x\"],\"replicas\":2}]"], "replicas"),
        (&["--set-json", "pools=[{\"name\":\"default\",\"images\":[\"x\"]}]"], "name"),
        (&["--set-json", "pools=[{\"name\":\"Bad_Name\",\"images\":[\"x\"]}]"], "name"),
        (&["--set-json", "pools=[{\"name\":\"gpu\",\"images\":[]}]"], "images"),
        (&["--set", "updateStrategy=Sometimes"], "updateStrategy"),
        (&["--set", "metrics.grafanaDashboard.folder=CI"], "folder"),
    ];
    for (args, mention) in bad {
        match helm_template(args) {
            Ok(out) => panic!("helm template {args:?} was accepted:\n{out}"),
            Err(e) => {
                assert!(e.contains(mention), "helm template {args:?} failed without naming {mention}: {e}")
            }
        }
    }
    // The same kinds of values, well-formed, are accepted.
    for args in [
        &["--set", "images={nginx},maxImageAge=-1,minFree=0,checkInterval=1h"][..],
        &["--set", "images={nginx},minFree=500MiB,refreshPolicy=rebuild,logFormat=json"][..],
        &["--set-json", "pools=[{\"name\":\"gpu\",\"images\":[\"x\"]}]"][..],
    ] {
        helm_template(args).unwrap_or_else(|e| panic!("helm template {args:?} was refused: {e}"));
    }
    // Two pools with one name.
    let e =
        helm_template(&["--set-json", r#"pools=[{"name":"a","images":["x"]},{"name":"a","images":["y"]}]"#])
            .unwrap_err();
    assert!(e.contains("used twice"), "{e}");
}

#[test]
fn rendering_refuses_kubernetes_older_than_1_29() {
    let err = helm_template(&["--set", "images={nginx}", "--kube-version", "1.28.0"])
        .expect_err("Kubernetes 1.28 has no native sidecars: the chart must refuse it");
    assert!(err.contains("kubeVersion") || err.contains("Kubernetes version"), "{err}");
    helm_template(&["--set", "images={nginx}", "--kube-version", "1.29.0"]).expect("1.29.0 is supported");
}

#[test]
fn an_empty_list_renders_no_daemonset_and_the_notes_say_so() {
    let docs = render(&[]);
    assert!(of_kind(&docs, "DaemonSet").is_empty());
    assert!(of_kind(&docs, "ConfigMap").is_empty());
    only(&docs, "ServiceAccount");

    let chart = k8s::chart_dir();
    let notes = |extra: &[&str]| {
        let mut args = vec!["install", "preload", chart.to_str().unwrap(), "--dry-run=client"];
        args.extend_from_slice(extra);
        let out = helm(&args);
        assert!(out.status.success(), "helm install --dry-run: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_once("NOTES:").unwrap_or_else(|| panic!("no NOTES in {text}")).1.to_owned()
    };
    let empty = notes(&[]);
    assert!(empty.contains("No DaemonSet was created"), "{empty}");
    let one = notes(&["--set", "images={nginx:1.27}"]);
    assert!(!one.contains("No DaemonSet"), "{one}");
    for needle in [
        "rollout status ds/preload-image-preloader",
        "logs ds/preload-image-preloader -c preloader",
        "/opt/runner/images",
        "<user>/<image>_<tag>.tar",
        "path nginx:1.27",
        "image-preloader load",
    ] {
        assert!(one.contains(needle), "NOTES lack {needle:?}:\n{one}");
    }
    let warned = notes(&["-f", &scenario("pools-only-values.yaml"), "--set", "prune=true"]);
    assert!(warned.contains("WARNING: prune"), "{warned}");
}

#[test]
fn pools_render_their_own_daemonsets_with_overrides() {
    let docs = render_scenario("pools-only-values.yaml");
    let sets = of_kind(&docs, "DaemonSet");
    let names: Vec<&str> = sets.iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["preload-image-preloader-gpu", "preload-image-preloader-cpu"]);
    assert_eq!(of_kind(&docs, "ConfigMap").len(), 2);

    let gpu = daemonset(&docs, "preload-image-preloader-gpu");
    let cpu = daemonset(&docs, "preload-image-preloader-cpu");
    assert_eq!(pod_spec(gpu)["nodeSelector"], yaml("nvidia.com/gpu.present: 'true'"));
    assert_eq!(pod_spec(gpu)["tolerations"][0]["key"].as_str(), Some("nvidia.com/gpu"));
    // The CPU pool sets nothing: it inherits the global nodeSelector (and no tolerations).
    assert_eq!(pod_spec(cpu)["nodeSelector"], yaml("kubernetes.io/os: linux"));
    assert!(pod_spec(cpu)["tolerations"].is_null());
    assert_eq!(
        listed(config_map(&docs, "preload-image-preloader-gpu")),
        ["nvcr.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04"]
    );
    assert_eq!(listed(config_map(&docs, "preload-image-preloader-cpu")).len(), 2);
    assert_eq!(
        volume(pod_spec(gpu), "config")["configMap"]["name"].as_str(),
        Some("preload-image-preloader-gpu")
    );
    // Same flags, different lists: the same checksum (a list edit does not restart pods).
    assert_eq!(checksum(gpu), checksum(cpu));
    // Selectors are disjoint: no DaemonSet selects another's pods.
    let pool = |d: &Value| {
        d["spec"]["selector"]["matchLabels"]["image-preloader.io/pool"].as_str().unwrap().to_owned()
    };
    assert_eq!((pool(gpu), pool(cpu)), ("gpu".to_owned(), "cpu".to_owned()));

    // With top-level images too: the default DaemonSet plus the pools; pool overrides replace.
    let docs = render_scenario("all-values.yaml");
    let names: Vec<&str> =
        of_kind(&docs, "DaemonSet").iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ci-image-cache", "ci-image-cache-gpu", "ci-image-cache-arm"]);
    let main = daemonset(&docs, "ci-image-cache");
    let gpu = daemonset(&docs, "ci-image-cache-gpu");
    let arm = daemonset(&docs, "ci-image-cache-arm");
    assert_eq!(pool(main), "default");
    assert_eq!(pod_spec(gpu)["nodeSelector"], yaml("nvidia.com/gpu.present: 'true'"));
    assert!(
        pod_spec(gpu)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_mapping()
    );
    assert_eq!(
        container(pod_spec(gpu), "preloader")["resources"],
        yaml("requests: {cpu: 100m, memory: 128Mi}")
    );
    assert_eq!(pod_spec(arm)["nodeSelector"], yaml("kubernetes.io/arch: arm64"));
    assert_eq!(pod_spec(arm)["tolerations"], pod_spec(main)["tolerations"], "arm inherits tolerations");
    assert_eq!(pod_spec(arm)["affinity"], pod_spec(main)["affinity"], "arm inherits affinity");
    assert_eq!(
        container(pod_spec(arm), "preloader")["resources"],
        container(pod_spec(main), "preloader")["resources"]
    );
    // Everything else is shared: the same arguments, the same dind.
    assert_eq!(preloader_args(gpu), preloader_args(main));
    assert_eq!(dind_args(gpu), dind_args(main));
    // Each DaemonSet has its own dind store on the node.
    let store =
        |d: &Value| volume(pod_spec(d), "dind-storage")["hostPath"]["path"].as_str().unwrap().to_owned();
    assert_eq!(store(main), "/var/lib/ci-image-cache/ci-image-cache");
    assert_eq!(store(gpu), "/var/lib/ci-image-cache/ci-image-cache-gpu");

    // An empty override clears a global value.
    let docs = render(&[
        "--set",
        "nodeSelector.a=b",
        "--set-json",
        r#"pools=[{"name":"p","images":["x"],"nodeSelector":{}}]"#,
    ]);
    assert!(pod_spec(only(&docs, "DaemonSet"))["nodeSelector"].is_null());
}

#[test]
fn every_new_value_reaches_the_pod() {
    let docs = render_scenario("all-values.yaml");
    let ds = daemonset(&docs, "ci-image-cache");
    let spec = pod_spec(ds);
    let args = preloader_args(ds);
    // Issue 6 values and the other preloader flags.
    assert_eq!(flag(&args, "--refresh-policy"), Some("rebuild"));
    assert_eq!(flag(&args, "--min-free"), Some("20Gi"));
    assert!(
        args.contains(&"--prune".to_owned()) && args.contains(&"--remove-after-save".to_owned()),
        "{args:?}"
    );
    assert_eq!(flag(&args, "--max-image-age"), Some("-1"));
    assert_eq!(flag(&args, "--interval"), Some("30m"));
    assert_eq!(flag(&args, "--concurrency"), Some("4"));
    assert_eq!(flag(&args, "--log-format"), Some("json"));
    assert_eq!(flag(&args, "--dir"), Some("/mnt/cache/images"));
    assert_eq!(flag(&args, "--listen"), Some("0.0.0.0:9100"));
    let probe = &container(spec, "preloader")["livenessProbe"];
    assert_eq!((probe["periodSeconds"].as_u64(), probe["failureThreshold"].as_u64()), (Some(60), Some(5)));
    assert_eq!(container(spec, "preloader")["readinessProbe"]["timeoutSeconds"].as_u64(), Some(3));
    assert_eq!(
        of_kind(&docs, "Service").len(),
        of_kind(&docs, "DaemonSet").len(),
        "one Service per DaemonSet"
    );
    let defaults = preloader_args(only(&render_scenario("default-values.yaml"), "DaemonSet"));
    assert!(
        !defaults.contains(&"--prune".to_owned()) && !defaults.contains(&"--remove-after-save".to_owned())
    );

    let pre = container(spec, "preloader");
    assert_eq!(pre["image"].as_str(), Some("mirror.example.com/image-preloader/image-preloader:0.1.0-rc1"));
    assert_eq!(pre["imagePullPolicy"].as_str(), Some("Always"));
    assert_eq!(pre["env"][0], yaml("{name: IMAGE_PRELOADER_LOG_LEVEL, value: debug}"));
    assert_eq!(pre["securityContext"]["runAsUser"].as_u64(), Some(0));
    let dind = container(spec, "dind");
    assert_eq!(dind["image"].as_str(), Some("mirror.example.com/library/docker:28-dind"));
    assert_eq!(dind["securityContext"]["seccompProfile"]["type"].as_str(), Some("Unconfined"));
    assert_eq!(
        dind_args(ds),
        [
            "dockerd",
            "--host=unix:///var/run/docker.sock",
            "--mtu=1400",
            "--group=1001",
            "--max-concurrent-downloads=6",
            "--feature=containerd-snapshotter=false",
            "--registry-mirror=https://mirror.example.com",
        ]
    );
    assert_eq!(
        volume(spec, "dind-storage")["hostPath"],
        yaml("{path: /var/lib/ci-image-cache/ci-image-cache, type: DirectoryOrCreate}")
    );
    assert_eq!(spec["imagePullSecrets"], yaml("[{name: mirror-pull}, {name: ghcr-pull}]"));
    assert_eq!(spec["priorityClassName"].as_str(), Some("system-node-critical"));
    assert_eq!(spec["terminationGracePeriodSeconds"].as_u64(), Some(60));
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(true));
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"]
            .as_u64(),
        Some(10)
    );
    assert_eq!(
        ds["spec"]["updateStrategy"],
        yaml("{type: RollingUpdate, rollingUpdate: {maxUnavailable: 25%}}")
    );
    let sa = only(&docs, "ServiceAccount");
    assert_eq!(sa["metadata"]["name"].as_str(), Some("image-cache"));
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str(),
        Some("arn:aws:iam::123456789012:role/image-cache")
    );
    // commonLabels on every object and pod, never in selectors; nameOverride in the name label.
    for doc in &docs {
        assert_eq!(doc["metadata"]["labels"]["team"].as_str(), Some("ci-platform"), "{doc:?}");
        assert_eq!(doc["metadata"]["labels"]["cost-center"].as_str(), Some("42"));
        assert_eq!(doc["metadata"]["labels"]["app.kubernetes.io/name"].as_str(), Some("cache"));
    }
    assert_eq!(ds["spec"]["template"]["metadata"]["labels"]["team"].as_str(), Some("ci-platform"));
    assert!(ds["spec"]["selector"]["matchLabels"]["team"].is_null());

    // emptyDir with a size limit; OnDelete as a string; minFree 0.
    let docs = render_scenario("emptydir-size-values.yaml");
    let ds = only(&docs, "DaemonSet");
    assert_eq!(volume(pod_spec(ds), "dind-storage")["emptyDir"], yaml("sizeLimit: 20Gi"));
    assert_eq!(ds["spec"]["updateStrategy"], yaml("type: OnDelete"));
    assert_eq!(flag(&preloader_args(ds), "--min-free"), Some("0"));

    // Default hostPath store location; maxConcurrentDownloads null leaves the daemon's default.
    let docs = render(&[
        "--set",
        "images={nginx},dockerd.storage.type=hostPath,dockerd.maxConcurrentDownloads=null",
    ]);
    let ds = only(&docs, "DaemonSet");
    assert_eq!(
        volume(pod_spec(ds), "dind-storage")["hostPath"]["path"].as_str(),
        Some("/var/lib/image-preloader/preload-image-preloader")
    );
    assert!(!dind_args(ds).iter().any(|a| a.starts_with("--max-concurrent-downloads")));
    // Two daemons must never share a hostPath store: maxSurge is refused with it.
    let err = helm_template(&[
        "--set",
        "images={nginx},dockerd.storage.type=hostPath",
        "--set-json",
        r#"updateStrategy={"type":"RollingUpdate","rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}"#,
    ])
    .unwrap_err();
    assert!(err.contains("maxSurge"), "{err}");
}

/// The dotted paths of values.yaml, each with its value, in file order.
fn value_paths(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    if let Some(map) = value.as_mapping() {
        for (key, child) in map {
            let key = key.as_str().expect("string keys");
            let path = if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
            out.push((path.clone(), child.clone()));
            value_paths(&path, child, out);
        }
    }
}

/// The rows of the README's parameter tables: (parameter, default cell).
fn readme_rows(readme: &str) -> Vec<(String, String)> {
    readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let name = cells[0].strip_prefix('`')?.strip_suffix('`')?;
            (cells.len() == 3).then(|| (name.to_owned(), cells[2].to_owned()))
        })
        .collect()
}

fn shown(value: &Value) -> Option<String> {
    Some(match value {
        Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        Value::Sequence(s) if s.is_empty() => "[]".to_owned(),
        Value::Mapping(m) if m.is_empty() => "{}".to_owned(),
        _ => return None,
    })
}

#[test]
fn the_readme_documents_every_value_with_its_default() {
    let chart = k8s::chart_dir();
    let values_text = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let values: Value = serde_yaml_ng::from_str(&values_text).unwrap();
    let readme = std::fs::read_to_string(chart.join("README.md")).unwrap();
    let rows = readme_rows(&readme);
    assert!(rows.len() > 30, "the README's parameter tables were not found");
    let mut paths = Vec::new();
    value_paths("", &values, &mut paths);
    let known: BTreeSet<&str> = paths.iter().map(|(p, _)| p.as_str()).collect();
    let documented: BTreeSet<&str> = rows.iter().map(|(p, _)| p.as_str()).collect();

    // Every row names a value (the README's other tables hold references, not values).
    let parameter_rows: Vec<&(String, String)> =
        rows.iter().filter(|(p, _)| !p.contains(':') && !p.contains('/')).collect();
    for (name, _) in &parameter_rows {
        assert!(known.contains(name.as_str()), "the README documents `{name}`, which values.yaml lacks");
    }
    // Every value is documented: itself, or a parent documented as a whole.
    let mut missing = Vec::new();
    for (path, value) in &paths {
        let covered = documented.contains(path.as_str())
            || documented.iter().any(|d| path.starts_with(&format!("{d}.")));
        let has_children = value.as_mapping().is_some_and(|m| !m.is_empty());
        if !covered && !has_children {
            missing.push(path.clone());
        }
    }
    assert!(missing.is_empty(), "values missing from the README's table: {missing:?}");
    // Scalars and empty collections show their default.
    for (name, default) in &parameter_rows {
        let value = &paths.iter().find(|(p, _)| p == name).unwrap().1;
        if let Some(expected) = shown(value) {
            assert_eq!(default, &format!("`{expected}`"), "README default of `{name}`");
        }
    }
    // Every documented value has a comment right above it in values.yaml.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut previous = "";
    let mut uncommented = Vec::new();
    for line in values_text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if !trimmed.is_empty()
            && !trimmed.starts_with('#')
            && !trimmed.starts_with('-')
            && let Some((key, _)) = trimmed.split_once(':')
        {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            let path = match stack.last() {
                Some((_, parent)) => format!("{parent}.{key}"),
                None => key.to_owned(),
            };
            if documented.contains(path.as_str()) && !previous.trim_start().starts_with('#') {
                uncommented.push(path.clone());
            }
            stack.push((indent, path));
        }
        if !trimmed.is_empty() {
            previous = line;
        }
    }
    assert!(uncommented.is_empty(), "values without a comment in values.yaml: {uncommented:?}");
    assert!(values_text.starts_with("# yaml-language-server: $schema=values.schema.json\n"));
}

#[test]
fn chart_metadata_matches_the_crate() {
    let chart: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(k8s::chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("image-preloader"));
    assert_eq!(chart["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(chart["kubeVersion"].as_str(), Some(">=1.29.0-0"));
    let ignore = std::fs::read_to_string(k8s::chart_dir().join(".helmignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "ci/"), ".helmignore keeps ci/ out of the package");
}

/// Replaces the value after `name` (which must occur exactly once).
fn replace_flag(args: &mut [String], name: &str, value: &str) {
    let i = args.iter().position(|a| a == name).unwrap_or_else(|| panic!("{name} missing from {args:?}"));
    assert_eq!(args.iter().filter(|a| *a == name).count(), 1, "{name} occurs more than once");
    args[i + 1] = value.to_owned();
}

#[test]
fn the_rendered_command_line_and_list_make_the_promised_archives() {
    let registry = support::registry();
    let one = TestImage::push(&format!("chart/{}", unique("one")), "1.0");
    let two = TestImage::push(&unique("two"), "2.0");
    let work = tempfile::tempdir().unwrap();
    let values = work.path().join("values.yaml");
    std::fs::write(&values, format!("images:\n  - {}\n  - {}\n", one.reference, two.reference)).unwrap();
    assert!(one.reference.starts_with(registry));

    let docs = render(&["-f", values.to_str().unwrap()]);
    let ds = only(&docs, "DaemonSet");
    let cm = config_map(&docs, ds["metadata"]["name"].as_str().unwrap());
    assert_eq!(listed(cm), [one.reference.clone(), two.reference.clone()]);

    // The ConfigMap's file, where the pod would see it; the archive directory and the daemon of
    // this machine in place of the node's.
    let list = work.path().join("config/images.txt");
    std::fs::create_dir_all(list.parent().unwrap()).unwrap();
    std::fs::write(&list, cm["data"]["images.txt"].as_str().unwrap()).unwrap();
    let dir = work.path().join("archives");
    let mut args = preloader_args(ds);
    assert_eq!(args[0], "run");
    assert_eq!(flag(&args, "--images-file"), Some("/etc/image-preloader/images.txt"));
    assert_eq!(
        container(pod_spec(ds), "preloader")["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "config")
            .unwrap()["mountPath"],
        "/etc/image-preloader"
    );
    let host_path = flag(&args, "--dir").unwrap().to_owned();
    assert_eq!(volume(pod_spec(ds), "images")["hostPath"]["path"].as_str(), Some(host_path.as_str()));
    replace_flag(&mut args, "--images-file", list.to_str().unwrap());
    replace_flag(&mut args, "--dir", dir.to_str().unwrap());
    replace_flag(&mut args, "--docker-host", &support::daemon().host());
    // The node's disk is not this machine's: the test floor, not 10% of whatever this disk holds.
    replace_flag(&mut args, "--min-free", support::TEST_MIN_FREE);
    // The pod's port is its own; here any free one.
    replace_flag(&mut args, "--listen", "127.0.0.1:0");

    // The names the chart promises: what `image-preloader path` predicts for the rendered list.
    let predicted = support::run(
        support::preloader(&["path", "--images-file", list.to_str().unwrap()]),
        Duration::from_secs(20),
    );
    predicted.assert_code(0);
    let archives: Vec<PathBuf> = predicted.stdout.lines().map(|l| dir.join(l)).collect();
    assert_eq!(archives.len(), 2, "{}", predicted.stdout);
    assert!(archives[0].ends_with(format!(
        "{}_1.0.tar",
        one.repository.rsplit_once(registry).unwrap().1.trim_start_matches('/')
    )));

    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut running = Running::spawn(support::preloader(&refs));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !archives.iter().all(|a| has_record(a)) {
        if running.has_exited() {
            let (_, stderr) = running.collect();
            panic!("image-preloader {args:?} exited before writing the archives:\n{stderr}");
        }
        assert!(Instant::now() < deadline, "no archives {archives:?} within 180 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    running.signal(libc::SIGTERM);
    let status = running.wait_for_exit(Duration::from_secs(60));
    let (_, stderr) = running.collect();
    assert_eq!(status.code(), Some(0), "run exits 0 on SIGTERM; stderr:\n{stderr}");
    one.assert_loads_and_runs(&archives[0]);
    two.assert_loads_and_runs(&archives[1]);
}

/// An archive is complete once its record is written beside it (right after the rename).
fn has_record(archive: &Path) -> bool {
    let mut record = archive.as_os_str().to_owned();
    record.push(".json");
    archive.is_file() && Path::new(&record).is_file()
}

#[test]
fn registry_auth_mounts_the_secret_read_only_per_pool() {
    let docs = render_scenario("registry-auth-values.yaml");
    let auth_dir = "/etc/image-preloader-registry-auth";
    // The default DaemonSet: the global Secret, its default key, read-only, passed by path.
    let main = daemonset(&docs, "preload-image-preloader");
    assert_eq!(
        flag(&preloader_args(main), "--docker-config"),
        Some(format!("{auth_dir}/config.json").as_str())
    );
    assert_eq!(
        volume(pod_spec(main), "registry-auth")["secret"],
        yaml("{secretName: ghcr-pull, items: [{key: .dockerconfigjson, path: config.json}]}")
    );
    let mounted = mount(container(pod_spec(main), "preloader"), "registry-auth");
    assert_eq!(mounted["mountPath"].as_str(), Some(auth_dir));
    assert_eq!(mounted["readOnly"].as_bool(), Some(true));
    assert!(mounted["subPath"].is_null(), "a subPath mount would never see a rotated Secret");
    let dind = container(pod_spec(main), "dind");
    assert!(
        !dind["volumeMounts"].as_sequence().unwrap().iter().any(|m| m["name"] == "registry-auth"),
        "dind gets no credentials of its own"
    );
    // A pool with its own Secret and key.
    let nvcr = daemonset(&docs, "preload-image-preloader-nvcr");
    assert_eq!(
        volume(pod_spec(nvcr), "registry-auth")["secret"],
        yaml("{secretName: nvcr-pull, items: [{key: config.json, path: config.json}]}")
    );
    assert_eq!(
        flag(&preloader_args(nvcr), "--docker-config"),
        Some(format!("{auth_dir}/config.json").as_str())
    );
    // A pool that turns it off: no flag, no volume, no mount.
    let public = daemonset(&docs, "preload-image-preloader-public");
    assert_eq!(flag(&preloader_args(public), "--docker-config"), None);
    let spec = pod_spec(public);
    assert!(!spec["volumes"].as_sequence().unwrap().iter().any(|v| v["name"] == "registry-auth"));
    assert!(
        !container(spec, "preloader")["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "registry-auth")
    );
    // Without registryAuth (the default) nothing changes.
    let plain = render(&["--set", "images={nginx}"]);
    assert_eq!(flag(&preloader_args(only(&plain, "DaemonSet")), "--docker-config"), None);
    // A pool without its own registryAuth inherits the global one.
    let docs = render(&[
        "--set",
        "registryAuth.existingSecret=shared",
        "--set-json",
        r#"pools=[{"name":"p","images":["x"]}]"#,
    ]);
    let ds = only(&docs, "DaemonSet");
    assert_eq!(volume(pod_spec(ds), "registry-auth")["secret"]["secretName"].as_str(), Some("shared"));
    // Turning it on rolls the pods (the arguments change).
    let base = checksum(only(&render(&["--set", "images={nginx}"]), "DaemonSet"));
    let with =
        checksum(only(&render(&["--set", "images={nginx},registryAuth.existingSecret=s"]), "DaemonSet"));
    assert_ne!(base, with);
}

#[test]
fn images_accept_a_reference_or_image_and_platform() {
    let docs = render_scenario("registry-auth-values.yaml");
    assert_eq!(
        listed(config_map(&docs, "preload-image-preloader")),
        [
            "ghcr.io/example-org/ci-runner:2.4.1",
            "ghcr.io/example-org/ci-runner:2.4.1 platform=linux/arm64",
            "busybox:1.36",
        ]
    );
    assert_eq!(
        listed(config_map(&docs, "preload-image-preloader-public")),
        ["nginx:1.27 platform=linux/arm/v7"]
    );

    let bad: &[(&str, &str)] = &[
        (r#"images=[{"image":"nginx","platform":"arm64"}]"#, "platform"),
        (r#"images=[{"image":"nginx","platform":"linux/arm64 x"}]"#, "platform"),
        (r#"images=[{"platform":"linux/arm64"}]"#, "image"),
        (r#"images=[{"image":"nginx","arch":"arm64"}]"#, "arch"),
        (r#"images=[{"image":"nginx platform=linux/arm64"}]"#, "image"),
        (r#"registryAuth={"secret":"x"}"#, "secret"),
        (r#"registryAuth={"existingSecret":"Bad_Name"}"#, "existingSecret"),
        (r#"pools=[{"name":"p","images":["x"],"registryAuth":{"existingSecret":1}}]"#, "existingSecret"),
    ];
    for (json, mention) in bad {
        match helm_template(&["--set-json", json]) {
            Ok(out) => panic!("helm template --set-json {json} was accepted:\n{out}"),
            Err(e) => assert!(e.contains(mention), "--set-json {json} failed without naming {mention}: {e}"),
        }
    }
    // The install notes show a `path` command that works for the first entry as written.
    let chart = k8s::chart_dir();
    let out = helm(&[
        "install",
        "preload",
        chart.to_str().unwrap(),
        "--dry-run=client",
        "--set-json",
        r#"images=[{"image":"nginx:1.27","platform":"linux/arm64"}]"#,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" path 'nginx:1.27 platform=linux/arm64'"), "{text}");
}

/// The checks of the Pod Security Standards' `restricted` profile (Kubernetes 1.29) that a pod
/// spec fails, as `field: why` lines. hostPath volumes are reported like any other violation.
fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for flag in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[flag].as_bool() == Some(true) {
            out.push(format!("{flag}: must not be true"));
        }
    }
    let allowed = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec["volumes"].as_sequence().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or("?");
        let kinds: Vec<&str> =
            volume.as_mapping().unwrap().keys().filter_map(|k| k.as_str()).filter(|k| *k != "name").collect();
        for kind in kinds {
            if !allowed.contains(&kind) {
                out.push(format!("volumes[{name}]: {kind} is not allowed"));
            }
        }
    }
    let pod_sc = &spec["securityContext"];
    let containers = spec["initContainers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_sequence().into_iter().flatten());
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"].as_bool() == Some(true) {
            out.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            out.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        let list = |v: &Value| if v.is_null() { Vec::new() } else { strings(v) };
        if !list(&sc["capabilities"]["drop"]).iter().any(|d| d == "ALL") {
            out.push(format!("{name}: capabilities must drop ALL"));
        }
        if list(&sc["capabilities"]["add"]).iter().any(|a| a != "NET_BIND_SERVICE") {
            out.push(format!("{name}: only NET_BIND_SERVICE may be added"));
        }
        let non_root = sc["runAsNonRoot"].as_bool().or(pod_sc["runAsNonRoot"].as_bool());
        if non_root != Some(true) {
            out.push(format!("{name}: runAsNonRoot must be true"));
        }
        if sc["runAsUser"].as_u64().or(pod_sc["runAsUser"].as_u64()) == Some(0) {
            out.push(format!("{name}: runAsUser must not be 0"));
        }
        let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_sc["seccompProfile"]["type"].as_str());
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            out.push(format!("{name}: seccompProfile must be RuntimeDefault or Localhost"));
        }
        if c["ports"].as_sequence().into_iter().flatten().any(|p| !p["hostPort"].is_null()) {
            out.push(format!("{name}: hostPort"));
        }
    }
    out
}

#[test]
fn registry_mode_renders_no_dind_and_a_restricted_pod_apart_from_the_host_path() {
    let docs = render_scenario("registry-mode-values.yaml");
    let ds = daemonset(&docs, "preload-image-preloader");
    let spec = pod_spec(ds);
    assert!(spec["initContainers"].is_null(), "no dind sidecar: {:?}", spec["initContainers"]);
    assert_eq!(spec["containers"].as_sequence().unwrap().len(), 1);
    let names: Vec<&str> =
        spec["volumes"].as_sequence().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["config", "images", "registry-auth"], "no dind volumes");
    assert_eq!(restricted_violations(spec), ["volumes[images]: hostPath is not allowed"]);

    let args = preloader_args(ds);
    assert_eq!(flag(&args, "--mode"), Some("registry"));
    assert!(!args.iter().any(|a| a == "--docker-host"), "{args:?}");
    let mirrors: Vec<&String> =
        args.windows(2).filter(|w| w[0] == "--registry-mirror").map(|w| &w[1]).collect();
    assert_eq!(mirrors, ["https://dockerhub-cache.example.com", "ghcr.io=https://ghcr-cache.example.com"]);
    assert_eq!(flag(&args, "--insecure-registry"), Some("registry.internal:5000"));
    assert_eq!(flag(&args, "--layers"), Some("compressed"));
    let default = render(&["--set", "mode=registry,images={nginx}"]);
    assert_eq!(flag(&preloader_args(only(&default, "DaemonSet")), "--layers"), Some("uncompressed"));
    assert!(helm_template(&["--set", "mode=registry,images={nginx},registry.layers=zstd"]).is_err());
    let pre = container(spec, "preloader");
    assert_eq!(pre["securityContext"]["runAsUser"].as_u64(), Some(65532));
    assert!(pre["volumeMounts"].as_sequence().unwrap().iter().all(|m| m["name"] != "dind-sock"));
    // Memory sized from measurement unless set; a pool's own resources win.
    assert_eq!(pre["resources"], yaml("{requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 128Mi}}"));
    let pool = pod_spec(daemonset(&docs, "preload-image-preloader-arm"));
    assert_eq!(container(pool, "preloader")["resources"], yaml("{requests: {cpu: 20m, memory: 48Mi}}"));
    assert_eq!(restricted_violations(pool), ["volumes[images]: hostPath is not allowed"]);

    // Daemon mode, for contrast: dind is privileged, the preloader runs as root.
    let daemon = render_scenario("default-values.yaml");
    let violations = restricted_violations(pod_spec(only(&daemon, "DaemonSet")));
    assert!(violations.iter().any(|v| v == "dind: privileged"), "{violations:?}");

    // runAsUser 0: root, no runAsNonRoot (a working pod, baseline rather than restricted).
    let root = render(&["--set", "mode=registry,images={nginx},registry.runAsUser=0"]);
    let sc = &container(pod_spec(only(&root, "DaemonSet")), "preloader")["securityContext"];
    assert_eq!((sc["runAsUser"].as_u64(), sc["runAsNonRoot"].as_bool()), (Some(0), Some(false)));
    // The schema refuses an unknown mode and a mirror that is not a URL.
    assert!(helm_template(&["--set", "mode=dind,images={nginx}"]).is_err());
    assert!(helm_template(&["--set", "mode=registry,images={nginx},registry.mirrors={ftp://x}"]).is_err());
}

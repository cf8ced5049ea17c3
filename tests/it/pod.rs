//! Pod simulation: the chart rendered with the built image, its preloader container run the way the
//! kubelet would run it (rendered args and env, the rendered ConfigMap mounted where the pod mounts
//! it, a temporary directory at the hostPath mount, the daemon's socket where the socket volume puts
//! it, read-only root file system, no network), then stopped like a pod (SIGTERM).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;

use crate::k8s::{self, HostVolume};
use crate::support::{Daemon, Running, TestImage, preloader, run, unique};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Writes a rendered ConfigMap's files into `dir`, as the kubelet projects them.
fn project(config_map: &Value, dir: &Path) {
    for (key, value) in config_map["data"].as_mapping().expect("ConfigMap data") {
        std::fs::write(dir.join(key.as_str().unwrap()), value.as_str().unwrap()).unwrap();
    }
}

on_both_daemons! {
    fn the_rendered_preloader_container_saves_the_listed_image_and_stops_cleanly_on_sigterm() {
        let image = k8s::test_image();
        let (repository, tag) = image.rsplit_once(':').expect("the test image has a tag");
        let pushed = TestImage::push(&format!("ipt/{}", unique("pod")), "1.0");
        let docs = k8s::render(&[
            "--set",
            &format!("images[0]={}", pushed.reference),
            "--set",
            &format!("preloader.image.repository={repository}"),
            "--set",
            &format!("preloader.image.tag={tag}"),
            // The test floor, not 10% of whatever this machine's disk holds.
            "--set",
            "minFree=256Mi",
        ]);
        let daemonset = k8s::only(&docs, "DaemonSet");
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = k8s::container(pod, "preloader");
        assert_eq!(container["image"].as_str(), Some(image), "preloader.image reaches the pod");
        let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("a termination grace period");

        // Stand-ins for every volume the preloader mounts.
        let host = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        let dind = k8s::container(pod, "dind");
        let mut volumes = vec![];
        for volume in pod["volumes"].as_sequence().unwrap() {
            let name = volume["name"].as_str().unwrap();
            if let Some(map) = volume["configMap"]["name"].as_str() {
                project(k8s::named(&docs, "ConfigMap", map), config.path());
                volumes.push((name, HostVolume::Dir(config.path())));
            } else if volume["hostPath"].is_mapping() {
                volumes.push((name, HostVolume::Dir(host.path())));
            } else if dind["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|m| m["name"].as_str() == Some(name) && m["mountPath"].as_str() == Some("/var/run"))
            {
                volumes.push((name, HostVolume::DockerSocketDir));
            }
        }
        let listed = std::fs::read_to_string(config.path().join("images.txt")).expect("the rendered images.txt");
        assert!(listed.lines().any(|l| l.trim() == pushed.reference), "{listed}");

        let name = unique("ipt-pod");
        let _container = k8s::ContainerGuard(name.clone());
        let mut running = Running::spawn(k8s::docker_run(container, image, &name, &volumes));

        // The archive appears under the name `path` promises.
        let out = run(preloader(&["path", &pushed.reference]), TIMEOUT);
        out.assert_code(0);
        let archive = host.path().join(out.stdout.trim());
        let started = Instant::now();
        while !archive.is_file() {
            assert!(!running.has_exited(), "the container ended early: {:?}", running.collect());
            assert!(started.elapsed() < TIMEOUT, "no archive at {} after {TIMEOUT:?}", archive.display());
            std::thread::sleep(Duration::from_millis(200));
        }
        running.wait_for_line("next check in", TIMEOUT);

        // Stopping the pod: SIGTERM, then SIGKILL after the grace period.
        let stopping = Instant::now();
        let stop = Daemon::Classic.cli().args(["stop", "-t", &grace.to_string(), &name]).output().unwrap();
        assert!(stop.status.success(), "docker stop: {}", String::from_utf8_lossy(&stop.stderr));
        let status = running.wait_for_exit(Duration::from_secs(grace + 10));
        let took = stopping.elapsed();
        let (stdout, stderr) = running.collect();
        assert_eq!(status.code(), Some(0), "exit 0 on SIGTERM:\n{stdout}\n{stderr}");
        assert!(
            took < Duration::from_secs(grace),
            "stopped within the grace period of {grace} s (took {took:?})"
        );
        assert!(stderr.contains("shutting down"), "{stderr}");
        pushed.assert_loads_and_runs(&archive);
    }
}

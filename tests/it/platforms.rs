//! Platforms: a multi-platform image index pushed to the local registry through the registry API;
//! `--platform` and the per-image `platform=` pick the manifest; `load` refuses a foreign archive.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{
    docker, docker_quiet, files, preloader, put_manifest, registry, run, sha256_digest, unique, upload_blob,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// An index (manifest list) with one tiny image per architecture, each with its own marker file.
struct MultiPlatform {
    /// `registry/repo:tag` of the index.
    reference: String,
    /// `registry/repo:armonly`: the arm64 image alone, not in an index.
    arm_only: String,
    /// Architecture → the image's config digest (its ID).
    ids: BTreeMap<&'static str, String>,
}

impl Drop for MultiPlatform {
    fn drop(&mut self) {
        for id in self.ids.values() {
            docker_quiet(&["image", "rm", "-f", id]);
        }
    }
}

const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

impl MultiPlatform {
    fn push(name: &str) -> MultiPlatform {
        let registry = registry();
        let repo = format!("platforms/{}", unique(name));
        let scratch = tempfile::tempdir().unwrap();
        let mut ids = BTreeMap::new();
        let mut entries = Vec::new();
        for arch in ["amd64", "arm64"] {
            let root = scratch.path().join(arch);
            std::fs::create_dir(&root).unwrap();
            std::fs::write(root.join("marker"), format!("{repo} {arch}\n")).unwrap();
            let tar = Command::new("tar")
                .args([
                    "-C",
                    root.to_str().unwrap(),
                    "--owner=0",
                    "--group=0",
                    "--mtime=@0",
                    "-cf",
                    "-",
                    "marker",
                ])
                .output()
                .unwrap()
                .stdout;
            let mut gzip = Command::new("gzip")
                .args(["-n", "-c"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            gzip.stdin.take().unwrap().write_all(&tar).unwrap();
            let layer = gzip.wait_with_output().unwrap().stdout;
            let layer_digest = upload_blob(registry, &repo, &layer, scratch.path());
            let config = format!(
                r#"{{"architecture":"{arch}","os":"linux","config":{{"Cmd":["/marker"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
                sha256_digest(&tar)
            );
            let config_digest = upload_blob(registry, &repo, config.as_bytes(), scratch.path());
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{layer_digest}"}}]}}"#,
                config.len(),
                layer.len()
            );
            let manifest_digest = sha256_digest(manifest.as_bytes());
            put_manifest(registry, &repo, &manifest_digest, MANIFEST, manifest.as_bytes(), scratch.path());
            if arch == "arm64" {
                put_manifest(registry, &repo, "armonly", MANIFEST, manifest.as_bytes(), scratch.path());
            }
            entries.push(format!(
                r#"{{"mediaType":"{MANIFEST}","size":{},"digest":"{manifest_digest}","platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                manifest.len()
            ));
            ids.insert(arch, config_digest);
        }
        let index =
            format!(r#"{{"schemaVersion":2,"mediaType":"{LIST}","manifests":[{}]}}"#, entries.join(","));
        put_manifest(registry, &repo, "1", LIST, index.as_bytes(), scratch.path());
        MultiPlatform {
            reference: format!("{registry}/{repo}:1"),
            arm_only: format!("{registry}/{repo}:armonly"),
            ids,
        }
    }

    /// `platforms/<name>`: the archive path without `_<tag>.tar`.
    fn name(&self) -> String {
        let repo = self.reference.split_once('/').unwrap().1;
        repo.rsplit_once(':').unwrap().0.to_owned()
    }
}

/// The `architecture` of the image config inside a `docker save` archive.
fn archived_architecture(archive: &Path) -> String {
    let extract = |member: &str| {
        let out = Command::new("tar").args(["-xOf", archive.to_str().unwrap(), member]).output().unwrap();
        assert!(
            out.status.success(),
            "{member} in {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let manifest: serde_json::Value = serde_json::from_slice(&extract("manifest.json")).unwrap();
    let config_path = manifest[0]["Config"].as_str().unwrap().to_owned();
    let config: serde_json::Value = serde_json::from_slice(&extract(&config_path)).unwrap();
    config["architecture"].as_str().unwrap().to_owned()
}

#[test]
fn platforms_select_the_manifest_by_architecture() {
    let image = MultiPlatform::push("index");
    let name = image.name();
    let work = tempfile::tempdir().unwrap();
    let warm = |dir: &Path, extra: &[&str], entries: &[&str]| {
        let mut args = vec!["warm", "--mode", "daemon", "--dir", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(entries);
        run(preloader(&args), TIMEOUT)
    };

    // One directory: changing --platform rebuilds the archive, whatever its age.
    let dir = work.path().join("global");
    for arch in ["arm64", "amd64"] {
        let out = warm(&dir, &["--platform", &format!("linux/{arch}")], &[&image.reference]);
        out.assert_code(0);
        assert!(out.stderr.contains("1 built"), "{}", out.stderr);
        let archive = dir.join(format!("{name}_1.tar"));
        assert_eq!(archived_architecture(&archive), arch, "--platform linux/{arch}: no name suffix");
        let record = crate::support::read_record(&archive);
        assert_eq!(record["platform"], format!("linux/{arch}"));
    }
    let out = warm(&dir, &["--platform", "linux/amd64"], &[&image.reference]);
    assert!(out.stderr.contains("1 up to date"), "the same platform again is kept: {}", out.stderr);

    // The same reference for the daemon's platform and, per entry, for arm64: two archives.
    let dir = work.path().join("both");
    let arm_entry = format!("{} platform=linux/arm64", image.reference);
    let out = warm(&dir, &["--concurrency", "2"], &[&image.reference, &arm_entry]);
    out.assert_code(0);
    let tars: Vec<String> = files(&dir).into_keys().filter(|p| p.ends_with(".tar")).collect();
    assert_eq!(tars, [format!("{name}_1+linux-arm64.tar"), format!("{name}_1.tar")]);
    assert_eq!(archived_architecture(&dir.join(format!("{name}_1+linux-arm64.tar"))), "arm64");
    assert_eq!(archived_architecture(&dir.join(format!("{name}_1.tar"))), "amd64");
    // `path` names them the same way, without a daemon.
    let path = run(preloader(&["path", &image.reference, &arm_entry]), TIMEOUT);
    path.assert_code(0);
    assert_eq!(path.stdout, format!("{name}_1.tar\n{name}_1+linux-arm64.tar\n"));

    // A platform the index lacks: a clear per-image error, the other image still archived.
    let dir = work.path().join("missing");
    let s390x = format!("{} platform=linux/s390x", image.reference);
    let out = warm(&dir, &["--log-format", "json"], &[&s390x, &image.arm_only]);
    out.assert_code(1);
    let failure = out.events().into_iter().find(|e| e["level"] == "ERROR" && e["kind"].is_string()).unwrap();
    assert_eq!(failure["kind"], "not_found", "{}", out.stderr);
    assert!(
        failure["message"].as_str().unwrap().contains("no matching manifest for linux/s390x"),
        "{failure}"
    );
    // A single-platform image asked for another platform: the daemon pulls it anyway; refused.
    let out = warm(&work.path().join("single"), &["--platform", "linux/amd64"], &[&image.arm_only]);
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!("{} provides no linux/amd64 image (it is linux/arm64)", image.arm_only)),
        "{}",
        out.stderr
    );
}

#[test]
fn load_refuses_an_archive_the_daemon_cannot_run() {
    let image = MultiPlatform::push("load");
    let name = image.name();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("archives");
    let arm_entry = format!("{} platform=linux/arm64", image.reference);
    run(
        preloader(&[
            "warm",
            "--mode",
            "daemon",
            "--dir",
            dir.to_str().unwrap(),
            &image.reference,
            &arm_entry,
        ]),
        TIMEOUT,
    )
    .assert_code(0);
    for id in image.ids.values() {
        docker_quiet(&["image", "rm", "-f", id]);
    }
    // Reported and skipped (exit 0: the job pulls what it lacks); `--strict` makes it exit 1.
    let load = |strict: bool| {
        let mut args =
            vec!["load", "--dir", dir.to_str().unwrap(), "--image", &image.reference, "--image", &arm_entry];
        if strict {
            args.push("--strict");
        }
        run(preloader(&args), TIMEOUT)
    };
    load(true).assert_code(1);
    for id in image.ids.values() {
        docker_quiet(&["image", "rm", "-f", id]);
    }
    let out = load(false);
    out.assert_code(0);
    assert!(out.stdout.contains(&format!("loaded    {name}_1.tar")), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "failed    {name}_1+linux-arm64.tar: its image is for linux/arm64, which this daemon (linux/amd64) cannot run"
        )),
        "{}",
        out.stdout
    );
    assert_eq!(docker(&["image", "inspect", "--format", "{{.Architecture}}", &image.ids["amd64"]]), "amd64");
    assert!(
        Command::new("docker")
            .args(["image", "inspect", &image.ids["arm64"]])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0),
        "the arm64 image was not loaded"
    );
}

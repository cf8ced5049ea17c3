//! Incomplete daemon exports heal themselves. The reproduction of moby#49473 on the containerd
//! image store: two images whose one layer is identical but compressed differently, pushed by hand
//! through the registry API and pulled one after the other. The second pull skips the layer's blob
//! (the layer is already unpacked), so `docker save` of the second image exits 0 without it; one
//! `warm` of both must still end with both archives built and checked.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{
    DAY, Daemon, docker, docker_quiet, on_daemon, preloader, put_manifest, read_record, registry, run,
    sha256_digest, unique, upload_blob, write_aged,
};

const TIMEOUT: Duration = Duration::from_secs(180);

/// Two images sharing one layer under two different compressed blobs.
struct SharedLayerPair {
    /// `registry/path-<a|b>:1`.
    references: [String; 2],
    /// `registry/path-<a|b>`.
    repositories: [String; 2],
    /// The compressed layer blob of each.
    blobs: [String; 2],
    /// What `/marker` holds (the same layer, so the same for both).
    marker: String,
}

impl SharedLayerPair {
    fn push(path: &str) -> SharedLayerPair {
        let work = tempfile::tempdir().unwrap();
        let rootfs = work.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("a static busybox at /bin/busybox (Debian busybox-static; scripts/test.sh installs it)");
        let marker = unique("shared-layer");
        std::fs::write(rootfs.join("marker"), &marker).unwrap();
        let layer = work.path().join("layer.tar");
        sh(&format!(
            "tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C {} -cf {} bin marker",
            rootfs.display(),
            layer.display()
        ));
        let diff_id = sha256_digest(&std::fs::read(&layer).unwrap());
        // One layer, two gzip streams: fastest and best compression give different bytes.
        let fast = sh_bytes(&format!("gzip -1 -n -c {}", layer.display()));
        let best = sh_bytes(&format!("gzip -9 -n -c {}", layer.display()));
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let mut references = Vec::new();
        let mut repositories = Vec::new();
        let mut blobs = Vec::new();
        for (variant, compressed) in [("a", fast), ("b", best)] {
            let repository = format!("{path}-{variant}");
            let config = format!(
                r#"{{"architecture":"{arch}","os":"linux","config":{{"Cmd":["/bin/busybox","cat","/marker"],"Labels":{{"variant":"{variant}"}}}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}},"history":[{{"created_by":"pushed by hand"}}]}}"#
            );
            let config_digest = upload_blob(registry(), &repository, config.as_bytes(), work.path());
            let blob = upload_blob(registry(), &repository, &compressed, work.path());
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{blob}","size":{}}}]}}"#,
                config.len(),
                compressed.len()
            );
            let media_type = "application/vnd.docker.distribution.manifest.v2+json";
            put_manifest(registry(), &repository, "1", media_type, manifest.as_bytes(), work.path());
            references.push(format!("{}/{repository}:1", registry()));
            repositories.push(format!("{}/{repository}", registry()));
            blobs.push(blob);
        }
        assert_ne!(blobs[0], blobs[1], "the two compressions differ");
        SharedLayerPair {
            references: references.try_into().unwrap(),
            repositories: repositories.try_into().unwrap(),
            blobs: blobs.try_into().unwrap(),
            marker,
        }
    }

    fn remove_local(&self) {
        for repository in &self.repositories {
            let ids = docker(&["image", "ls", "--no-trunc", "--format", "{{.ID}}", repository]);
            let mut args = vec!["image", "rm", "-f"];
            args.extend(ids.lines().filter(|l| !l.is_empty()));
            if args.len() > 3 {
                docker_quiet(&args);
            }
        }
    }
}

impl Drop for SharedLayerPair {
    fn drop(&mut self) {
        self.remove_local();
    }
}

fn sh_bytes(script: &str) -> Vec<u8> {
    let out = Command::new("sh").args(["-c", script]).output().expect("run sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn sh(script: &str) -> String {
    String::from_utf8(sh_bytes(script)).unwrap()
}

/// The names in a tar file.
fn tar_names(path: &Path) -> Vec<String> {
    sh(&format!("tar -tf {}", path.display())).lines().map(str::to_owned).collect()
}

#[test]
fn an_export_lacking_a_shared_layer_is_repaired_and_both_archives_are_built_in_one_warm() {
    on_daemon(Daemon::Containerd, shared_layer_heals);
}

fn shared_layer_heals() {
    let name = unique("heal");
    let pair = SharedLayerPair::push(&format!("ipt/{name}"));
    let [a, b] = &pair.references;

    // The engine bug, reproduced: pulled one after the other, the second image's export lacks its
    // layer blob, and `docker save` still exits 0.
    docker(&["pull", "-q", a]);
    docker(&["pull", "-q", b]);
    let scratch = tempfile::tempdir().unwrap();
    let saved = scratch.path().join("b.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), b]);
    let blob_b = format!("blobs/{}", pair.blobs[1].replace(':', "/"));
    assert!(
        !tar_names(&saved).contains(&blob_b),
        "Docker's containerd image store no longer reproduces moby#49473 (fixed by moby#53615): \
         this test needs an engine that has the bug, as scripts/test.sh installs (26.1.5)"
    );

    // The archive directory also holds an unrelated archive, which must stay as it is.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other/app_1.tar");
    write_aged(&other, b"another image's archive, not to be touched", DAY * 2);
    let other_mtime = std::fs::metadata(&other).unwrap().modified().unwrap();

    let d = dir.path().to_str().unwrap();
    let out =
        run(preloader(&["warm", "--mode", "daemon", "--dir", d, "--log-format", "json", a, b]), TIMEOUT);
    out.assert_code(0);
    let events = out.events();
    let warning = events
        .iter()
        .find(|e| e["level"] == "WARN" && e["message"].as_str().unwrap_or("").contains("moby#49473"))
        .unwrap_or_else(|| panic!("no warning about the incomplete export:\n{}", out.stderr));
    assert!(warning["message"].as_str().unwrap().contains("is missing"), "{warning}");
    let repaired = events
        .iter()
        .find(|e| e["message"].as_str().unwrap_or("").starts_with("repaired: removed"))
        .unwrap_or_else(|| panic!("no repair logged:\n{}", out.stderr));
    let repaired_message = repaired["message"].as_str().unwrap();
    assert!(repaired_message.contains(a) && repaired_message.contains(b), "{repaired}");
    let summary = events.iter().find(|e| e["pass"] == 1).unwrap();
    assert_eq!((summary["built"].as_u64(), summary["failed"].as_u64()), (Some(2), Some(0)), "{summary}");

    // Both archives are whole and recorded; each loads into an empty daemon and runs.
    for (i, reference) in pair.references.iter().enumerate() {
        let repository = reference.rsplit_once(':').unwrap().0;
        let path = dir.path().join(format!("ipt/{name}-{}_1.tar", ["a", "b"][i]));
        assert_eq!(read_record(&path)["size"], std::fs::metadata(&path).unwrap().len());
        let blob = format!("blobs/{}", pair.blobs[i].replace(':', "/"));
        assert!(tar_names(&path).contains(&blob), "{} holds its layer blob", path.display());
        pair.remove_local();
        let loaded = run(preloader(&["load", "--dir", d, path.to_str().unwrap()]), TIMEOUT);
        loaded.assert_code(0);
        assert!(loaded.stdout.starts_with("loaded"), "{}", loaded.stdout);
        assert_eq!(docker(&["run", "--rm", "--network", "none", reference]), pair.marker, "{repository}");
    }
    assert_eq!(std::fs::read(&other).unwrap(), b"another image's archive, not to be touched");
    assert_eq!(std::fs::metadata(&other).unwrap().modified().unwrap(), other_mtime);
}

//! `warm` against the real daemon and registry.

use std::time::Duration;

use crate::support::{DAY, TestImage, files, preloader, registry, run, temporaries, unique, write_aged};

const TIMEOUT: Duration = Duration::from_secs(120);

on_both_daemons! {
    fn warms_nested_and_ported_references_and_the_archives_load_back() {
        let name = unique("warm");
        let flat = TestImage::push(&format!("ipt/{name}-flat"), "1.0");
        let nested = TestImage::push(&format!("ipt/deep/{name}-nested"), "v2");
        let single = TestImage::push(&format!("{name}-single"), "latest");
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("images.txt");
        std::fs::write(&list, format!("# listed in a file\n  {}  \n\n", nested.reference)).unwrap();
        let archives = dir.path().join("archives");

        let single_untagged = single.repository.clone();
        let out = run(
            preloader(&[
                "warm",
                "--dir",
                archives.to_str().unwrap(),
                "--images-file",
                list.to_str().unwrap(),
                &flat.reference,
                &single_untagged,
            ]),
            TIMEOUT,
        );
        out.assert_code(0);

        let expected = [
            (&flat, format!("ipt/{name}-flat_1.0.tar")),
            (&nested, format!("deep/{name}-nested_v2.tar")),
            (&single, format!("{name}-single_latest.tar")),
        ];
        let on_disk = files(&archives);
        assert_eq!(on_disk.keys().filter(|p| p.ends_with(".tar")).count(), 3, "{on_disk:?}");
        assert_eq!(
            on_disk.keys().filter(|p| p.ends_with(".tar.json")).count(),
            3,
            "a record per archive: {on_disk:?}"
        );
        for (image, relative) in &expected {
            assert!(on_disk.contains_key(relative), "{relative} missing from {on_disk:?}");
            image.assert_loads_and_runs(&archives.join(relative));
        }
        assert!(out.stderr.contains("pass 1 complete"), "{}", out.stderr);
        assert!(out.stderr.contains("3 built"), "{}", out.stderr);
    }

    fn digest_references_pull_by_content() {
        let name = unique("digest");
        let image = TestImage::push(&format!("ipt/{name}"), "t1");
        let pinned = TestImage::push(&format!("ipt/{name}-pinned"), "stable");
        let dir = tempfile::tempdir().unwrap();
        let by_digest = image.by_digest();
        // A tag plus a digest: pulled by digest, archived (and loaded) under the tag.
        let tag_and_digest = format!("{}:release@{}", pinned.repository, pinned.digest);
        let out = run(
            preloader(&["warm", "--dir", dir.path().to_str().unwrap(), &by_digest, &tag_and_digest]),
            TIMEOUT,
        );
        out.assert_code(0);

        let digest_archive = dir.path().join(format!("ipt/{name}_{}.tar", image.digest.replace(':', "-")));
        image.assert_loads_and_runs(&digest_archive);

        let tagged_archive = dir.path().join(format!("ipt/{name}-pinned_release.tar"));
        pinned.assert_loads_and_runs(&tagged_archive);
        let tagged = format!("{}:release", pinned.repository);
        let id = crate::support::docker(&["image", "inspect", "--format", "{{.Id}}", &tagged]);
        assert_eq!(id, pinned.local_id(), "the archive restores the tag from the reference");
    }

    fn a_missing_image_fails_alone_and_keeps_its_old_archive() {
        let name = unique("missing");
        let good = TestImage::push(&format!("ipt/{name}-good"), "1");
        let missing = format!("{}/ipt/{name}-absent:1", registry());
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(format!("ipt/{name}-absent_1.tar"));
        let old_content = b"the previous archive, which must survive".to_vec();
        write_aged(&old, &old_content, DAY * 30);
        let old_mtime = std::fs::metadata(&old).unwrap().modified().unwrap();

        let out = run(
            preloader(&[
                "warm",
                "--dir",
                dir.path().to_str().unwrap(),
                "--log-format",
                "json",
                &missing,
                &good.reference,
            ]),
            TIMEOUT,
        );
        out.assert_code(1);
        good.assert_loads_and_runs(&dir.path().join(format!("ipt/{name}-good_1.tar")));
        assert_eq!(std::fs::read(&old).unwrap(), old_content);
        assert_eq!(std::fs::metadata(&old).unwrap().modified().unwrap(), old_mtime);
        assert!(temporaries(dir.path()).is_empty());

        let events = out.events();
        let failure = events
            .iter()
            .find(|e| e["level"] == "ERROR" && e["step"] == "pull")
            .unwrap_or_else(|| panic!("no pull failure logged:\n{}", out.stderr));
        assert_eq!(failure["span"]["image"], missing.as_str(), "the failure names the image");
        assert!(failure["message"].as_str().unwrap().contains("not found"), "{failure}");
        let summary = events.iter().find(|e| e["pass"] == 1).unwrap();
        assert_eq!((summary["built"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(1)));
        assert!(out.stderr.contains("1 of 2 images failed"), "{}", out.stderr);
    }
}

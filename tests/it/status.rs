//! `status`: the directory from its files alone, as a table and as JSON.

use std::time::Duration;

use crate::support::{TestImage, preloader, registry, run, unique};

#[test]
fn status_shows_damaged_unrecorded_missing_and_not_yet_built_archives() {
    let name = unique("status");
    let good = TestImage::push(&format!("ipt/{name}-good"), "1");
    let bad = TestImage::push(&format!("ipt/{name}-bad"), "1");
    let gone = TestImage::push(&format!("ipt/{name}-gone"), "1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run(
        preloader(&["warm", "--dir", d, &good.reference, &bad.reference, &gone.reference]),
        Duration::from_secs(180),
    )
    .assert_code(0);
    let archive = |image: &str| dir.path().join(format!("ipt/{name}-{image}_1.tar"));
    // Damaged: the archive no longer has the size its record promises.
    let mut bytes = std::fs::read(archive("bad")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(archive("bad"), bytes).unwrap();
    // Unrecorded: an archive made by another tool (a copy without a record).
    std::fs::copy(archive("good"), dir.path().join("ipt/other_1.tar")).unwrap();
    // Missing: a record whose archive is gone.
    std::fs::remove_file(archive("gone")).unwrap();
    let unbuilt = format!("{}/ipt/{name}-new:1", registry());
    let before = crate::support::files(dir.path());

    let out = run(
        preloader(&["status", "--dir", d, "--output", "json", &good.reference, &bad.reference, &unbuilt]),
        Duration::from_secs(20),
    );
    out.assert_code(0);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    let entry = |archive: &str| {
        entries
            .iter()
            .find(|e| e["archive"] == archive)
            .unwrap_or_else(|| panic!("no entry for {archive}: {}", out.stdout))
            .clone()
    };
    let good_entry = entry(&format!("ipt/{name}-good_1.tar"));
    assert_eq!(good_entry["reference"], good.reference.as_str());
    assert_eq!(good_entry["listed"], true);
    assert_eq!(good_entry["freshness"], "fresh");
    assert_eq!(good_entry["digest"], good.digest.as_str());
    assert_eq!(good_entry["size"].as_u64(), Some(std::fs::metadata(archive("good")).unwrap().len()));
    assert_eq!(good_entry["problems"], serde_json::json!([]));
    let problems = |e: &serde_json::Value| e["problems"][0].as_str().unwrap_or_default().to_owned();
    assert!(problems(&entry(&format!("ipt/{name}-bad_1.tar"))).starts_with("damaged"), "{}", out.stdout);
    let other = entry("ipt/other_1.tar");
    assert_eq!(problems(&other), "unrecorded");
    assert_eq!(other["listed"], false);
    let gone_entry = entry(&format!("ipt/{name}-gone_1.tar"));
    assert_eq!(problems(&gone_entry), "missing");
    assert_eq!(gone_entry["reference"], gone.reference.as_str(), "the reference comes from the record");
    let new = entry(&format!("ipt/{name}-new_1.tar"));
    assert_eq!(problems(&new), "not yet built");
    assert_eq!(new["freshness"], "absent");

    // The table says the same for people; every 0-day archive is due under --max-image-age 0.
    let out = run(preloader(&["status", "--dir", d, "--max-image-age", "0"]), Duration::from_secs(20));
    out.assert_code(0);
    let line = |archive: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(archive))
            .unwrap_or_else(|| panic!("{archive}:\n{}", out.stdout))
    };
    assert!(out.stdout.starts_with("ARCHIVE"), "{}", out.stdout);
    let row = line(&format!("ipt/{name}-good_1.tar"));
    assert!(row.contains(" due ") && row.contains(&good.digest[7..19]), "{row}");
    assert!(line(&format!("ipt/{name}-bad_1.tar")).contains("damaged"));
    assert!(line("ipt/other_1.tar").contains("unrecorded"));
    assert!(line(&format!("ipt/{name}-gone_1.tar")).contains("missing"));
    assert!(out.stdout.contains("3 archives") && out.stdout.contains("3 with problems"), "{}", out.stdout);

    assert_eq!(crate::support::files(dir.path()), before, "status writes nothing");
}

#[test]
fn status_refuses_an_invalid_list_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        preloader(&["status", "--dir", dir.path().to_str().unwrap(), "Not/Valid!"]),
        Duration::from_secs(20),
    );
    out.assert_code(2);
    assert!(out.stderr.contains("Not/Valid!"), "{}", out.stderr);
}

//! The age rules of `--max-image-age`, driven by archive modification times.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::{DAY, TestImage, preloader, run, unique, write_aged};

const TIMEOUT: Duration = Duration::from_secs(120);
const SENTINEL: &[u8] = b"an existing archive";

struct Case {
    image: TestImage,
    archive: PathBuf,
}

fn case(dir: &Path, label: &str, age: Option<Duration>) -> Case {
    let name = unique(label);
    let image = TestImage::push(&format!("ipt/{name}"), "1");
    let archive = dir.join(format!("ipt/{name}_1.tar"));
    if let Some(age) = age {
        write_aged(&archive, SENTINEL, age);
    }
    Case { image, archive }
}

fn warm(dir: &Path, max_age: &str, cases: &[&Case]) {
    let mut args = vec!["warm", "--dir", dir.to_str().unwrap(), "--max-image-age", max_age];
    args.extend(cases.iter().map(|c| c.image.reference.as_str()));
    run(preloader(&args), TIMEOUT).assert_code(0);
}

fn rebuilt(case: &Case) -> bool {
    let content = std::fs::read(&case.archive).unwrap();
    if content == SENTINEL {
        return false;
    }
    case.image.assert_loads_and_runs(&case.archive);
    let age = SystemTime::now()
        .duration_since(std::fs::metadata(&case.archive).unwrap().modified().unwrap())
        .unwrap();
    assert!(age < Duration::from_secs(120), "a rebuilt archive is new");
    true
}

on_both_daemons! {
    fn positive_age_rebuilds_only_archives_at_least_that_old() {
        let dir = tempfile::tempdir().unwrap();
        let missing = case(dir.path(), "age-missing", None);
        let expired = case(dir.path(), "age-expired", Some(DAY * 8));
        let exactly = case(dir.path(), "age-exact", Some(DAY * 7 + Duration::from_secs(5)));
        let fresh = case(dir.path(), "age-fresh", Some(DAY * 6));
        warm(dir.path(), "7", &[&missing, &expired, &exactly, &fresh]);
        assert!(rebuilt(&missing));
        assert!(rebuilt(&expired));
        assert!(rebuilt(&exactly));
        assert!(!rebuilt(&fresh), "a 6-day-old archive is kept under a 7-day limit");
    }

    fn zero_rebuilds_every_pass() {
        let dir = tempfile::tempdir().unwrap();
        let brand_new = case(dir.path(), "age-zero", Some(Duration::ZERO));
        warm(dir.path(), "0", &[&brand_new]);
        assert!(rebuilt(&brand_new));
    }

    fn negative_never_rebuilds_an_existing_archive() {
        let dir = tempfile::tempdir().unwrap();
        let ancient = case(dir.path(), "age-never", Some(DAY * 1000));
        let missing = case(dir.path(), "age-never-missing", None);
        warm(dir.path(), "-1", &[&ancient, &missing]);
        assert!(!rebuilt(&ancient));
        assert!(rebuilt(&missing), "a missing archive is still built");
    }
}

//! A pass driven by a fake source, without a daemon: build, keep, unchanged, changed, failure,
//! cancellation and the loop's backoff, with the clock paused where time matters.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::format::layout::Lacking;
use crate::format::tar::tests::TarBuilder;
use crate::image::list::ImageSpec;
use crate::image::reference::Reference;
use crate::platform::Platform;
use crate::preload::cycle;
use crate::preload::outcome::{FailureKind, Outcome, Step};
use crate::preload::pass::{Preloader, Settings};
use crate::preload::policy::{BuildReason, KeepReason, MaxAge, RefreshPolicy};
use crate::preload::status::StatusFeed;
use crate::registry::Lookup;
use crate::source::{
    ErrorKind, ImageFacts, ImageSource, Operation, PullOutcome, Pulled, Repaired, SourceError,
};
use crate::store::ArchiveStore;
use crate::store::record::Record;
use crate::store::space::MinFree;

/// What the fake registry serves for one reference.
#[derive(Clone)]
struct Served {
    digest: String,
    marker: u8,
}

/// A fake source: a map of references to content, failures on demand, an export that can hang.
#[derive(Clone, Default)]
struct Fake {
    served: Arc<Mutex<HashMap<String, Served>>>,
    pull_fails: Arc<Mutex<Option<ErrorKind>>>,
    export_hangs: Arc<Mutex<bool>>,
    calls: Arc<Mutex<Vec<String>>>,
    /// Seconds (of the paused clock) since the fake was made, per call.
    times: Arc<Mutex<Vec<u64>>>,
    start: Option<tokio::time::Instant>,
    /// References that are not found for their first N pulls.
    missing_for: Arc<Mutex<HashMap<String, usize>>>,
    /// Cancelled when an export of `bad:1` has been read to its end, if set.
    stop_on_export: Option<CancellationToken>,
    /// Exports that lack their layer (a daemon's incomplete copy) until the source is repaired
    /// this many times.
    lacking_until_repairs: Arc<Mutex<usize>>,
}

impl Fake {
    fn serve(&self, reference: &str, digest: &str, marker: u8) {
        let served = Served { digest: digest.into(), marker };
        self.served.lock().unwrap().insert(reference.into(), served);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, what: &str, image: &Reference) {
        self.calls.lock().unwrap().push(format!("{what} {image}"));
        if let Some(start) = self.start {
            self.times.lock().unwrap().push(start.elapsed().as_secs());
        }
    }

    fn lookup(&self, operation: Operation, image: &Reference) -> Result<Served, SourceError> {
        self.served.lock().unwrap().get(&image.to_string()).cloned().ok_or_else(|| SourceError {
            operation,
            image: image.to_string(),
            kind: ErrorKind::NotFound,
            message: "manifest unknown".into(),
        })
    }
}

fn archive_bytes(marker: u8) -> Vec<u8> {
    archive_with(marker, true)
}

fn archive_with(marker: u8, layer: bool) -> Vec<u8> {
    let config = "ab".repeat(32);
    let manifest = format!(r#"[{{"Config":"{config}.json","RepoTags":["a:1"],"Layers":["l/layer.tar"]}}]"#);
    let mut builder = TarBuilder::default();
    if layer {
        builder.file("l/layer.tar", &[marker; 3000]);
    }
    builder.file(&format!("{config}.json"), b"{}").file("manifest.json", manifest.as_bytes()).end()
}

impl ImageSource for Fake {
    async fn pull(
        &self,
        image: &Reference,
        _platform: Option<&Platform>,
        _auth: &Lookup,
    ) -> Result<Pulled, SourceError> {
        self.call("pull", image);
        if let Some(kind) = *self.pull_fails.lock().unwrap() {
            let message = "unauthorized: authentication required".into();
            return Err(SourceError { operation: Operation::Pull, image: image.to_string(), kind, message });
        }
        if let Some(left) = self.missing_for.lock().unwrap().get_mut(&image.to_string())
            && *left > 0
        {
            *left -= 1;
            let message = "manifest unknown".into();
            let kind = ErrorKind::NotFound;
            return Err(SourceError { operation: Operation::Pull, image: image.to_string(), kind, message });
        }
        let served = self.lookup(Operation::Pull, image)?;
        Ok(Pulled { outcome: PullOutcome::Downloaded, digest: Some(served.digest) })
    }

    async fn inspect(&self, image: &Reference) -> Result<ImageFacts, SourceError> {
        Ok(ImageFacts {
            id: format!("sha256:{}", "cd".repeat(32)),
            size: Some(4096 + image.to_string().len() as u64),
            platform: None,
        })
    }

    async fn remote_digest(&self, image: &Reference, _auth: &Lookup) -> Result<String, SourceError> {
        self.call("digest", image);
        Ok(self.lookup(Operation::Resolve, image)?.digest)
    }

    fn export(&self, image: &Reference) -> BoxStream<'static, Result<Bytes, SourceError>> {
        self.call("export", image);
        let marker = self.served.lock().unwrap().get(&image.to_string()).map_or(0, |s| s.marker);
        let bytes = archive_with(marker, *self.lacking_until_repairs.lock().unwrap() == 0);
        let chunks: Vec<Result<Bytes, SourceError>> =
            bytes.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        if *self.export_hangs.lock().unwrap() {
            // The first chunk, then nothing: a daemon that stalls mid-export.
            return stream::iter(chunks.into_iter().take(1)).chain(stream::pending()).boxed();
        }
        let stop = self.stop_on_export.clone().filter(|_| image.to_string() == "bad:1");
        // Once the whole export was read: stop the loop (after this build is published).
        let end = stream::poll_fn(move |_| {
            if let Some(stop) = &stop {
                stop.cancel();
            }
            std::task::Poll::Ready(None)
        });
        stream::iter(chunks).chain(end).boxed()
    }

    async fn remove(&self, image: &Reference) -> Result<(), SourceError> {
        self.call("remove", image);
        Ok(())
    }

    async fn repair(
        &self,
        image: &Reference,
        _platform: Option<&Platform>,
        _auth: &Lookup,
        lacking: Lacking,
    ) -> Result<Repaired, SourceError> {
        self.call(&format!("repair(layer {:?})", lacking.layer), image);
        let mut left = self.lacking_until_repairs.lock().unwrap();
        *left = left.saturating_sub(1);
        Ok(Repaired { removed: vec![image.to_string(), "other:1".into()], layer: Some("sha256:l".into()) })
    }
}

fn settings(max_age: MaxAge) -> Settings {
    Settings {
        max_age,
        refresh: RefreshPolicy::Digest,
        min_free: MinFree::Bytes(0),
        concurrency: 2,
        remove_after_save: false,
    }
}

fn spec(name: &str) -> ImageSpec {
    ImageSpec::new(Reference::parse(name).unwrap())
}

async fn one(preloader: &Preloader<Fake>, image: &ImageSpec) -> Outcome {
    preloader.preload(image, &CancellationToken::new()).await
}

#[tokio::test]
async fn builds_then_keeps_a_fresh_archive() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.serve("reg.local/team/app:1", "sha256:aaa", 1);
    let preloader = Preloader::new(fake.clone(), ArchiveStore::new(dir.path()), settings(MaxAge::Days(7)));
    let image = spec("reg.local/team/app:1");

    let built = one(&preloader, &image).await;
    let Outcome::Built(built) = built else { panic!("{built:?}") };
    assert_eq!(built.reason, BuildReason::Missing);
    assert_eq!(std::fs::read(&built.path).unwrap(), archive_bytes(1));
    let record = Record::read(&built.path).unwrap().unwrap();
    assert_eq!(record.repo_digest.as_deref(), Some("sha256:aaa"));
    assert_eq!(record.reference, "reg.local/team/app:1");

    let kept = one(&preloader, &image).await;
    assert!(matches!(kept, Outcome::Kept(KeepReason::Fresh { .. })), "{kept:?}");
    assert_eq!(fake.calls(), ["pull reg.local/team/app:1", "export reg.local/team/app:1"]);
}

#[tokio::test]
async fn an_export_lacking_a_layer_is_repaired_and_built_again_in_the_same_pass() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.serve("app:1", "sha256:aaa", 1);
    fake.serve("other:1", "sha256:bbb", 2);
    *fake.lacking_until_repairs.lock().unwrap() = 1;
    let preloader = Preloader::new(fake.clone(), ArchiveStore::new(dir.path()), settings(MaxAge::Days(7)));
    let built = one(&preloader, &spec("app:1")).await;
    let Outcome::Built(built) = built else { panic!("{built:?}") };
    assert_eq!(std::fs::read(&built.path).unwrap(), archive_bytes(1));
    let calls = ["pull app:1", "export app:1", "repair(layer Some(0)) app:1", "pull app:1", "export app:1"];
    assert_eq!(fake.calls(), calls);

    // A copy that stays incomplete: given up after two repairs, nothing published.
    *fake.lacking_until_repairs.lock().unwrap() = 5;
    let failed = one(&preloader, &spec("other:1")).await;
    let Outcome::Failed(failure) = failed else { panic!("{failed:?}") };
    assert_eq!((failure.step, failure.kind), (Step::Check, FailureKind::IncompleteExport));
    assert!(failure.message.contains("still so after 2 repairs"), "{}", failure.message);
    assert_eq!(fake.calls().iter().filter(|c| c.starts_with("repair")).count(), 3);
    assert!(!dir.path().join("other_1.tar").exists());
}

#[tokio::test]
async fn at_expiry_the_registry_decides_unchanged_or_changed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.serve("app:1", "sha256:aaa", 1);
    let preloader = Preloader::new(fake.clone(), ArchiveStore::new(dir.path()), settings(MaxAge::Always));
    let image = spec("app:1");
    assert!(matches!(one(&preloader, &image).await, Outcome::Built(_)));

    let unchanged = one(&preloader, &image).await;
    assert!(matches!(unchanged, Outcome::Unchanged), "{unchanged:?}");

    fake.serve("app:1", "sha256:bbb", 2);
    let changed = one(&preloader, &image).await;
    let Outcome::Built(built) = changed else { panic!("{changed:?}") };
    assert_eq!(
        built.reason,
        BuildReason::Changed { recorded: "sha256:aaa".into(), current: "sha256:bbb".into() }
    );
    assert_eq!(std::fs::read(&built.path).unwrap(), archive_bytes(2));
}

#[tokio::test]
async fn a_refused_pull_fails_with_its_kind_and_keeps_the_old_archive() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.serve("app:1", "sha256:aaa", 1);
    let preloader = Preloader::new(fake.clone(), ArchiveStore::new(dir.path()), settings(MaxAge::Always));
    let image = spec("app:1");
    let Outcome::Built(built) = one(&preloader, &image).await else { panic!() };

    // The registry moved on, and now refuses us.
    fake.serve("app:1", "sha256:bbb", 2);
    *fake.pull_fails.lock().unwrap() = Some(ErrorKind::Auth);
    let failed = one(&preloader, &image).await;
    let Outcome::Failed(failure) = failed else { panic!("{failed:?}") };
    assert_eq!((failure.step, failure.kind), (Step::Pull, FailureKind::Auth));
    assert!(failure.message.contains("app:1"), "{}", failure.message);
    assert_eq!(std::fs::read(&built.path).unwrap(), archive_bytes(1), "the old archive stays");

    let missing = one(&preloader, &spec("other:1")).await;
    let Outcome::Failed(failure) = missing else { panic!("{missing:?}") };
    assert_eq!(failure.kind, FailureKind::Auth);
    *fake.pull_fails.lock().unwrap() = None;
    let missing = one(&preloader, &spec("other:1")).await;
    let Outcome::Failed(failure) = missing else { panic!("{missing:?}") };
    assert_eq!((failure.step, failure.kind), (Step::Pull, FailureKind::NotFound));
}

#[tokio::test]
async fn shutdown_mid_export_abandons_the_write_and_keeps_the_old_archive() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.serve("app:1", "sha256:aaa", 1);
    let preloader = Preloader::new(fake.clone(), ArchiveStore::new(dir.path()), settings(MaxAge::Always));
    let image = spec("app:1");
    let Outcome::Built(built) = one(&preloader, &image).await else { panic!() };

    fake.serve("app:1", "sha256:bbb", 2);
    *fake.export_hangs.lock().unwrap() = true;
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    let (outcome, ()) = tokio::join!(preloader.preload(&image, &cancel), async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stopper.cancel();
    });
    assert!(matches!(outcome, Outcome::Cancelled), "{outcome:?}");
    assert_eq!(std::fs::read(&built.path).unwrap(), archive_bytes(1));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["app_1.tar", "app_1.tar.json"], "no temporary or lock left");
}

/// The clock is paused: while blocking file-system work runs the runtime looks idle and would
/// jump to the next timer, so nothing here is driven by timers except the loop's own schedule.
#[tokio::test(start_paused = true)]
async fn the_loop_backs_off_after_failures_and_feeds_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let fake = Fake {
        start: Some(tokio::time::Instant::now()),
        stop_on_export: Some(cancel.clone()),
        ..Fake::default()
    };
    fake.serve("good:1", "sha256:aaa", 1);
    fake.serve("bad:1", "sha256:ccc", 3);
    fake.missing_for.lock().unwrap().insert("bad:1".into(), 2);
    // One at a time, so the order of calls is the list's.
    let one_at_a_time = Settings { concurrency: 1, ..settings(MaxAge::Days(7)) };
    let preloader = Arc::new(Preloader::new(fake.clone(), ArchiveStore::new(dir.path()), one_at_a_time));
    let (_tx, images) = watch::channel(vec![spec("good:1"), spec("bad:1")]);
    let feed = StatusFeed::new();
    let status = feed.subscribe();
    let pass_cancel = cancel.clone();
    let summary = cycle::run(images, Duration::from_secs(7200), cancel, feed, |due| {
        let preloader = Arc::clone(&preloader);
        let cancel = pass_cancel.clone();
        async move { preloader.pass(&due, &cancel).await }
    })
    .await;

    let calls = fake.calls();
    let times = fake.times.lock().unwrap().clone();
    let pulls: Vec<(u64, &str)> = times
        .iter()
        .zip(&calls)
        .filter(|(_, c)| c.starts_with("pull"))
        .map(|(t, c)| (*t, c.as_str()))
        .collect();
    // A missing image backs off from 5 min (300 s, then 600 s), not from 30 s like an outage.
    assert_eq!(pulls, [(0, "pull good:1"), (0, "pull bad:1"), (300, "pull bad:1"), (900, "pull bad:1")]);
    assert_eq!((summary.passes, summary.built, summary.failures), (3, 2, 2));
    let status = status.borrow().clone();
    assert!(status.ready(), "{status:?}");
    let bad = &status.images["bad:1"];
    assert_eq!((bad.failures, bad.consecutive_failures, bad.last_outcome), (2, 0, Some("built")));
    assert_eq!(bad.last_failure.as_ref().map(|f| f.kind), Some(FailureKind::NotFound));
    assert!(Path::new(dir.path()).join("bad_1.tar").is_file());
}

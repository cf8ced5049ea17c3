//! `load`: the consumer side. Archives go into a runner's own daemon before a CI job starts.
//!
//! Each archive is read once, and the same bytes feed both the check (a complete image archive,
//! matching its record when it has one) and the upload to the daemon's load endpoint. The end of
//! the archive, from its end-of-archive marker on, is held back until the check has passed: a
//! daemon cannot finish a load, let alone tag an image, before it has the whole tar, and when the
//! check fails the upload is aborted instead, so the daemon loads and tags nothing. Before that, a
//! walk over the archive's tar headers (seeking over layer data) finds the images it holds, so that
//! an archive the daemon already has is skipped without being read, and one whose platform (from
//! its image config) the daemon cannot run is refused.
//!
//! Failures stay with their archive: a missing, damaged or unloadable one is reported and skipped
//! while the others load; the caller decides the exit code. An optional deadline bounds the whole
//! run: what is not loaded by then is skipped. Nothing is ever written to the archive directory, so
//! it can be mounted read-only.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::daemon::DockerDaemon;
use crate::format::layout::{self, ArchiveContents};
use crate::format::tar::TarScanner;
use crate::human;
use crate::platform::Platform;
use crate::progress;
use crate::store::check::hex;
use crate::store::record::{Record, RecordError};

/// Bytes read from the archive at a time while streaming it.
const READ_CHUNK: usize = 1 << 20;
/// Chunks read ahead of the upload.
const READ_AHEAD: usize = 4;
/// Bytes read at a time by the header walk (everything else is seeked over).
const WALK_CHUNK: usize = 64 << 10;
/// How long to wait for a pending record (written just before the DaemonSet renames a new archive
/// into place) to be settled, and how often to look.
const PENDING_WAIT: Duration = Duration::from_secs(2);
const PENDING_POLL: Duration = Duration::from_millis(100);
/// Most bytes held back after the end-of-archive marker (Go's tar writer puts exactly 1 KiB there;
/// other tools pad to a 10 KiB record).
const HELD_MAX: usize = 16 << 20;

/// One archive to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadTarget {
    /// How it was named (relative to the directory, or as given).
    pub label: String,
    /// Where it is.
    pub path: PathBuf,
}

/// What happened to one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Sent to the daemon, which loaded these images.
    Loaded { images: Vec<String>, bytes: u64, elapsed: Duration },
    /// The daemon already had every image in it, under every tag.
    Present,
    /// No such file.
    Missing,
    /// Not a complete archive, or not matching its record; the daemon loaded nothing from it.
    Damaged(String),
    /// Unreadable, or the daemon refused it or the transfer failed.
    Failed(String),
    /// Not loaded before the deadline.
    Skipped(String),
    /// Shutdown came first.
    Cancelled,
}

impl LoadOutcome {
    /// The one-word status for reports.
    pub fn label(&self) -> &'static str {
        match self {
            LoadOutcome::Loaded { .. } => "loaded",
            LoadOutcome::Present => "present",
            LoadOutcome::Missing => "missing",
            LoadOutcome::Damaged(_) => "damaged",
            LoadOutcome::Failed(_) => "failed",
            LoadOutcome::Skipped(_) => "skipped",
            LoadOutcome::Cancelled => "cancelled",
        }
    }
}

/// When the whole run must end.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The moment.
    pub at: tokio::time::Instant,
    /// The configured duration, for messages.
    pub after: Duration,
}

/// Why an archive cannot be loaded, found before or while it streams.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ArchiveProblem {
    #[error("no archive at this path")]
    Missing,
    #[error("{0}")]
    Damaged(String),
    #[error("{0}")]
    Unreadable(String),
}

impl From<ArchiveProblem> for LoadOutcome {
    fn from(problem: ArchiveProblem) -> LoadOutcome {
        match problem {
            ArchiveProblem::Missing => LoadOutcome::Missing,
            ArchiveProblem::Damaged(why) => LoadOutcome::Damaged(why),
            ArchiveProblem::Unreadable(why) => LoadOutcome::Failed(why),
        }
    }
}

/// Loads `targets` into the daemon, up to `concurrency` at a time, in the given order; with a
/// deadline, whatever is not done by then is abandoned and reported as skipped.
pub async fn load_all(
    daemon: &DockerDaemon,
    platform: Option<&Platform>,
    targets: &[LoadTarget],
    concurrency: usize,
    deadline: Option<Deadline>,
    cancel: &CancellationToken,
) -> Vec<(LoadTarget, LoadOutcome)> {
    let mut outcomes: Vec<(usize, LoadOutcome)> = stream::iter(targets.iter().enumerate())
        .map(|(i, target)| async move {
            let span = info_span!("archive", archive = %target.label);
            let work = load_one(daemon, platform, target, cancel).instrument(span.clone());
            let outcome = match deadline {
                None => work.await,
                Some(deadline) => tokio::select! {
                    biased;
                    outcome = work => outcome,
                    _ = tokio::time::sleep_until(deadline.at) => {
                        let why = format!("not loaded within the deadline ({})", humantime::format_duration(deadline.after));
                        span.in_scope(|| warn!("skipped: {why}"));
                        LoadOutcome::Skipped(why)
                    }
                },
            };
            (i, outcome)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(i, o)| (targets[i].clone(), o)).collect()
}

async fn load_one(
    daemon: &DockerDaemon,
    platform: Option<&Platform>,
    target: &LoadTarget,
    cancel: &CancellationToken,
) -> LoadOutcome {
    if cancel.is_cancelled() {
        return LoadOutcome::Cancelled;
    }
    let path = target.path.clone();
    let opened = match blocking(move || Opened::open(&path)).await {
        Ok(opened) => opened,
        Err(problem) => return report(problem),
    };

    // Skip what the daemon has: the images are known from the headers, without reading layers.
    let mut walked_tags = None;
    let opened = if opened.regular {
        let (opened, walked) = blocking(move || {
            let walked = opened.walk();
            (opened, walked)
        })
        .await;
        if let Ok(contents) = &walked
            && let Some(why) = platform.and_then(|host| foreign(host, contents))
        {
            error!("not loaded: {why}");
            return LoadOutcome::Failed(why);
        }
        match walked {
            Ok(contents) => {
                // The registry digest the archive was built from is the ID of the pulled image on
                // the containerd image store.
                let also: Vec<String> =
                    opened.record.as_ref().and_then(|r| r.repo_digest.clone()).into_iter().collect();
                // Every tag's image now: for the presence check, and to put tags back if the
                // daemon refuses the load.
                let tags = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return LoadOutcome::Cancelled,
                    tags = daemon.tag_ids(&contents) => tags,
                };
                let present = match &tags {
                    Ok(tags) => tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return LoadOutcome::Cancelled,
                        present = daemon.has_images(&contents, &also, tags) => present,
                    },
                    Err(e) => Err(e.clone()),
                };
                match present {
                    Ok(true) => {
                        info!("already present in the daemon");
                        return LoadOutcome::Present;
                    }
                    Ok(false) => {}
                    Err(e) if e.is_stalled() => return failed(e),
                    Err(e) => warn!("cannot tell whether the daemon has it, loading: {e}"),
                }
                if let Ok(tags) = tags {
                    walked_tags = Some((contents, tags));
                }
            }
            Err(problem) => return report(problem),
        }
        opened
    } else {
        opened
    };

    let started = Instant::now();
    let abandon = CancellationToken::new();
    // Whatever way this returns, the reader stops.
    let _stop_reader = abandon.clone().drop_guard();
    let shown = progress::item(&target.label, "loading", opened.regular.then_some(opened.size));
    let (body, verdict) = opened.stream(abandon.clone());
    let body = body.inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            shown.inc(chunk.len() as u64);
        }
    });
    let loaded = tokio::select! {
        biased;
        _ = cancel.cancelled() => return LoadOutcome::Cancelled,
        loaded = daemon.load(&target.label, body) => loaded,
    };
    // The reader ends as soon as the upload does, whichever way it ended: a failed upload may
    // still hold the body (a stalled daemon's connection stays open), so the reader is told.
    if loaded.is_err() {
        abandon.cancel();
    }
    let verdict = verdict.await.unwrap_or(Verdict::Abandoned);
    match (verdict, loaded) {
        (Verdict::Checked { size }, Ok(images)) => {
            let elapsed = started.elapsed();
            info!(
                bytes = size,
                load_ms = elapsed.as_millis() as u64,
                "loaded {} in {} ({:.0} MiB/s): {}",
                human::bytes(size),
                human::duration(elapsed),
                human::mib_per_s(size, elapsed),
                images.join(", ")
            );
            LoadOutcome::Loaded { images, bytes: size, elapsed }
        }
        (Verdict::Problem(problem), _) => {
            error!("not loaded, the upload was aborted: {problem}");
            problem.into()
        }
        (_, Err(e)) => {
            error!("{e}");
            if let Some((contents, before)) = &walked_tags {
                let untagged = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => {
                        warn!("shutdown: the daemon may have tagged the image it could not load");
                        return LoadOutcome::Cancelled;
                    }
                    untagged = daemon.untag_refused(contents, before) => untagged,
                };
                match untagged {
                    Ok(done) if !done.is_empty() => {
                        warn!("the daemon tagged the image it could not load; {}", done.join(", "))
                    }
                    Ok(_) => {}
                    Err(e) => warn!("the daemon may have tagged the image it could not load: {e}"),
                }
            }
            LoadOutcome::Failed(e.to_string())
        }
        (Verdict::Abandoned, Ok(_)) => {
            LoadOutcome::Failed("the daemon finished the load before the archive was checked".into())
        }
    }
}

/// Why the archive cannot run on a `host` daemon, if it cannot (from its images' configs).
fn foreign(host: &Platform, contents: &ArchiveContents) -> Option<String> {
    let image = contents.images.iter().find_map(|i| i.platform.as_ref().filter(|p| !host.runs(p)))?;
    Some(format!("its image is for {image}, which this daemon ({host}) cannot run"))
}

/// A daemon call that stalled: the archive fails without being sent (the daemon is not taking
/// anything).
fn failed(error: crate::daemon::CallError) -> LoadOutcome {
    error!("not loaded: {error}");
    LoadOutcome::Failed(error.to_string())
}

fn report(problem: ArchiveProblem) -> LoadOutcome {
    match &problem {
        ArchiveProblem::Missing => warn!("missing: {problem}"),
        ArchiveProblem::Damaged(why) => error!("damaged, not loaded: {why}"),
        ArchiveProblem::Unreadable(why) => error!("not loaded: {why}"),
    }
    problem.into()
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("archive reader panicked")
}

/// An open archive and what its record says.
#[derive(Debug)]
struct Opened {
    file: File,
    /// Size at open (0 for a pipe).
    size: u64,
    /// A regular file (seekable, with a size); otherwise a pipe or device, read as it comes.
    regular: bool,
    record: Option<Record>,
}

impl Opened {
    /// Opens the archive and reads its record. A record whose size disagrees is read once more
    /// with the file: the DaemonSet may have replaced both in between.
    fn open(path: &Path) -> Result<Opened, ArchiveProblem> {
        let mut last = None;
        for _ in 0..2 {
            let record = settled_record(path)?;
            let file = match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ArchiveProblem::Missing),
                Err(e) => return Err(ArchiveProblem::Unreadable(format!("cannot open it: {e}"))),
            };
            let meta =
                file.metadata().map_err(|e| ArchiveProblem::Unreadable(format!("cannot stat it: {e}")))?;
            if meta.is_dir() {
                return Err(ArchiveProblem::Unreadable("it is a directory".into()));
            }
            if let Some(record) = &record {
                if let Some(why) = &record.damaged {
                    return Err(ArchiveProblem::Damaged(format!("verify marked it damaged: {why}")));
                }
                if meta.is_file() && record.size != meta.len() {
                    last = Some(format!("it has {} bytes, its record says {}", meta.len(), record.size));
                    continue;
                }
            }
            return Ok(Opened { file, size: meta.len(), regular: meta.is_file(), record });
        }
        Err(ArchiveProblem::Damaged(last.unwrap_or_default()))
    }

    /// What the archive holds, from its tar headers and small metadata files; layer data is
    /// seeked over. Refuses an archive that is not complete (a truncated one, for instance).
    fn walk(&self) -> Result<ArchiveContents, ArchiveProblem> {
        let damaged =
            |e: &dyn std::fmt::Display| ArchiveProblem::Damaged(format!("not a complete image archive: {e}"));
        let mut scanner = TarScanner::new(layout::capture_filter);
        let mut at = 0u64;
        let mut buf = vec![0u8; WALK_CHUNK];
        while at < self.size {
            let skip = scanner.skippable().min(self.size - at);
            if skip > 0 {
                scanner.skip(skip);
                at += skip;
                continue;
            }
            let want = usize::try_from(self.size - at).unwrap_or(usize::MAX).min(WALK_CHUNK);
            let n = match self.file.read_at(&mut buf[..want], at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveProblem::Unreadable(format!("cannot read it: {e}"))),
            };
            scanner.update(&buf[..n]).map_err(|e| damaged(&e))?;
            at += n as u64;
        }
        let listing = scanner.finish().map_err(|e| damaged(&e))?;
        layout::check(&listing).map_err(|e| damaged(&e))
    }

    /// The archive's bytes for the upload, and the check's verdict once the file is read. The bytes
    /// from the end-of-archive marker on are sent only if the check passes; otherwise the stream
    /// ends with an error, which aborts the upload. Once `abandon` fires, the reader stops waiting
    /// for the upload to take more.
    fn stream(
        self,
        abandon: CancellationToken,
    ) -> (
        impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
        oneshot::Receiver<Verdict>,
    ) {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let (verdict_tx, verdict) = oneshot::channel();
        let upload = Upload { tx, abandon, runtime: tokio::runtime::Handle::current() };
        tokio::task::spawn_blocking(move || {
            let verdict = read_and_check(self.file, self.record.as_ref(), &upload);
            if let Verdict::Problem(problem) = &verdict {
                // Abort the upload: the body ends with an error instead of its last bytes.
                upload.send(Err(io::Error::other(problem.to_string())));
            }
            let _ = verdict_tx.send(verdict);
        });
        let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        (body, verdict)
    }
}

/// The archive's record, once settled. A pending record is written just before the DaemonSet
/// renames a new archive into place and made final right after; until then the file may be the old
/// archive or the new one, so the record is waited for briefly and otherwise not used (the archive
/// is then checked for completeness only).
fn settled_record(path: &Path) -> Result<Option<Record>, ArchiveProblem> {
    let started = Instant::now();
    loop {
        let record = match Record::read(path) {
            Ok(record) => record,
            Err(RecordError::Invalid { message, .. }) => {
                return Err(ArchiveProblem::Damaged(format!("its record is unreadable: {message}")));
            }
            Err(e) => return Err(ArchiveProblem::Unreadable(e.to_string())),
        };
        match record {
            Some(record) if record.pending => {
                if started.elapsed() >= PENDING_WAIT {
                    warn!(
                        "its record is still pending (an archive being replaced): checking completeness only"
                    );
                    return Ok(None);
                }
                std::thread::sleep(PENDING_POLL);
            }
            record => return Ok(record),
        }
    }
}

/// How reading and checking an archive ended.
#[derive(Debug)]
enum Verdict {
    /// Read whole, checked, and every byte sent.
    Checked { size: u64 },
    /// Damaged or unreadable: its end was not sent.
    Problem(ArchiveProblem),
    /// The upload ended first (the daemon refused it, or shutdown).
    Abandoned,
}

/// The reader's side of the upload.
struct Upload {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    abandon: CancellationToken,
    runtime: tokio::runtime::Handle,
}

impl Upload {
    /// Hands `item` to the upload, waiting for room (on the reader's blocking thread); false once
    /// the upload is gone or abandoned.
    fn send(&self, item: Result<Bytes, io::Error>) -> bool {
        self.runtime.block_on(async {
            tokio::select! {
                biased;
                _ = self.abandon.cancelled() => false,
                sent = self.tx.send(item) => sent.is_ok(),
            }
        })
    }
}

/// Reads `file` to its end, checking every byte on its way to the upload; holds back the bytes
/// from the end-of-archive marker on until the check has passed.
fn read_and_check(mut file: File, record: Option<&Record>, upload: &Upload) -> Verdict {
    let damaged = |why: String| Verdict::Problem(ArchiveProblem::Damaged(why));
    let mut scanner = TarScanner::new(layout::capture_filter);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut held = BytesMut::new();
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Verdict::Problem(ArchiveProblem::Unreadable(format!("cannot read it: {e}"))),
        };
        buf.truncate(n);
        let chunk = Bytes::from(buf);
        hasher.update(&chunk);
        let start = size;
        size += n as u64;
        if let Err(e) = scanner.update(&chunk) {
            return damaged(format!("not a complete image archive: {e}"));
        }
        let cut = match scanner.end_marker() {
            Some(marker) if held.is_empty() => {
                usize::try_from(marker.saturating_sub(start)).unwrap_or(n).min(n)
            }
            Some(_) => 0,
            None => n,
        };
        held.extend_from_slice(&chunk[cut..]);
        if held.len() > HELD_MAX {
            return damaged(format!(
                "more than {} after its end-of-archive marker",
                human::bytes(HELD_MAX as u64)
            ));
        }
        if cut > 0 && !upload.send(Ok(chunk.slice(..cut))) {
            return Verdict::Abandoned;
        }
    }
    let contents = scanner
        .finish()
        .map_err(|e| e.to_string())
        .and_then(|listing| layout::check(&listing).map_err(|e| e.to_string()));
    if let Err(why) = contents {
        return damaged(format!("not a complete image archive: {why}"));
    }
    if let Some(record) = record {
        if record.size != size {
            return damaged(format!("it has {size} bytes, its record says {}", record.size));
        }
        let sha256 = hex(&hasher.finalize());
        if record.sha256 != sha256 {
            return damaged(format!("its sha256 is {sha256}, its record says {}", record.sha256));
        }
    }
    if !held.is_empty() && !upload.send(Ok(held.freeze())) {
        return Verdict::Abandoned;
    }
    Verdict::Checked { size }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tar::tests::TarBuilder;

    const CONFIG: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    /// A complete classic archive whose layer is `layer_bytes` long.
    fn archive(layer_bytes: usize) -> Vec<u8> {
        let manifest =
            format!(r#"[{{"Config":"{CONFIG}.json","RepoTags":["app:1"],"Layers":["aaa/layer.tar"]}}]"#);
        TarBuilder::default()
            .dir("aaa/")
            .file("aaa/layer.tar", &vec![7u8; layer_bytes])
            .file(&format!("{CONFIG}.json"), b"{}")
            .file("manifest.json", manifest.as_bytes())
            .end()
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app_1.tar");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    fn record_for(bytes: &[u8]) -> Record {
        serde_json::from_value(serde_json::json!({
            "format": 1, "reference": "app:1", "repo_digest": null, "image_id": null,
            "layout": "classic", "size": bytes.len(), "sha256": hex(&Sha256::digest(bytes)),
            "created": "2026-01-01T00:00:00Z", "checked": "2026-01-01T00:00:00Z", "tool": "test",
        }))
        .unwrap()
    }

    /// Runs the reader; returns its verdict, the bytes it sent and whether the stream ended with
    /// an error (as the upload then does).
    fn read(bytes: &[u8], record: Option<&Record>) -> (Verdict, Vec<u8>, bool) {
        let (_dir, path) = file_with(bytes);
        let (tx, mut rx) = mpsc::channel(1024);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let upload = Upload { tx, abandon: CancellationToken::new(), runtime: runtime.handle().clone() };
        let verdict = read_and_check(File::open(&path).unwrap(), record, &upload);
        if let Verdict::Problem(problem) = &verdict {
            assert!(upload.send(Err(io::Error::other(problem.to_string()))));
        }
        drop(upload);
        let (mut sent, mut aborted) = (Vec::new(), false);
        while let Some(item) = rx.blocking_recv() {
            match item {
                Ok(chunk) => sent.extend_from_slice(&chunk),
                Err(_) => aborted = true,
            }
        }
        (verdict, sent, aborted)
    }

    #[test]
    fn a_good_archive_is_sent_whole_after_its_check() {
        // Several read chunks, so the marker arrives in a later chunk than the data.
        let bytes = archive(READ_CHUNK * 2 + 5000);
        let record = record_for(&bytes);
        let (verdict, sent, aborted) = read(&bytes, Some(&record));
        assert!(matches!(verdict, Verdict::Checked { size } if size == bytes.len() as u64), "{verdict:?}");
        assert_eq!(sent, bytes);
        assert!(!aborted);
    }

    #[test]
    fn a_failed_check_never_sends_the_end_of_the_archive() {
        let bytes = archive(READ_CHUNK + 100);
        let marker = bytes.len() - 1024;
        // Changed after the record was written: same size, other checksum.
        let record = record_for(&bytes);
        let mut changed = bytes.clone();
        changed[5000] ^= 1; // in the layer data
        let (verdict, sent, aborted) = read(&changed, Some(&record));
        assert!(matches!(&verdict, Verdict::Problem(ArchiveProblem::Damaged(why)) if why.contains("sha256")));
        assert!(aborted, "the upload ends with an error");
        assert_eq!(sent, changed[..marker], "everything but the end-of-archive marker was sent");

        // Truncated inside the layer: nothing after the last whole chunk, and an abort.
        let (verdict, sent, aborted) = read(&bytes[..READ_CHUNK + 300], None);
        assert!(
            matches!(&verdict, Verdict::Problem(ArchiveProblem::Damaged(why)) if why.contains("ends early"))
        );
        assert!(aborted && sent.len() <= READ_CHUNK + 300);

        // No end-of-archive marker at all: all bytes go, but the upload is aborted, not ended.
        let (verdict, _, aborted) = read(&bytes[..marker], None);
        assert!(matches!(verdict, Verdict::Problem(_)) && aborted);
    }

    #[test]
    fn the_header_walk_finds_the_images_and_refuses_a_truncated_archive() {
        let bytes = archive(3 * WALK_CHUNK);
        let (_dir, path) = file_with(&bytes);
        let opened = Opened::open(&path).unwrap();
        let contents = opened.walk().unwrap();
        assert_eq!(contents.images[0].repo_tags, ["app:1"]);
        assert_eq!(contents.images[0].config_digest.as_deref(), Some(&*format!("sha256:{CONFIG}")));

        let (_dir, path) = file_with(&bytes[..bytes.len() - 2048]);
        let walked = Opened::open(&path).unwrap().walk();
        assert!(matches!(walked, Err(ArchiveProblem::Damaged(why)) if why.contains("ends early")));
    }

    #[test]
    fn open_tells_missing_from_damaged_records() {
        let bytes = archive(10);
        let (dir, path) = file_with(&bytes);
        assert_eq!(Opened::open(&dir.path().join("nope.tar")).unwrap_err(), ArchiveProblem::Missing);
        let mut record = record_for(&bytes);
        record.size += 1;
        std::fs::write(crate::store::names::record_path(&path), serde_json::to_vec(&record).unwrap())
            .unwrap();
        assert!(
            matches!(Opened::open(&path), Err(ArchiveProblem::Damaged(why)) if why.contains("record says"))
        );
        std::fs::write(crate::store::names::record_path(&path), b"{").unwrap();
        assert!(
            matches!(Opened::open(&path), Err(ArchiveProblem::Damaged(why)) if why.contains("unreadable"))
        );
        assert!(matches!(Opened::open(dir.path()), Err(ArchiveProblem::Unreadable(_))));
    }
}

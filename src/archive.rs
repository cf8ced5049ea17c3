//! The archive directory: where archives live, and how a new one is written and published.
//!
//! A new archive is streamed into a temporary file in the archive's own directory, named
//! `.<archive-name>.<random>.image-preloader-partial` and held under an exclusive `flock` while it is
//! written. Every byte passes through the tar scanner on its way to disk. Only when the stream
//! ended, the tar is whole and the image layout is complete is the file fsynced and renamed over the
//! final name, and the directory fsynced. A failed, abandoned or killed build therefore never
//! touches the previous archive; leftovers of killed runs are removed by the next start (files that
//! match the pattern and whose lock nobody holds).

use std::fs::{self, File, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use walkdir::WalkDir;

use crate::layout::{self, ArchiveContents, LayoutError};
use crate::policy::{ArchiveState, RecordState};
use crate::record::{self, Record, RecordError};
use crate::tar::{TarError, TarScanner};

/// Suffix of the temporary files this tool writes (the whole pattern is
/// `.<archive-name>.<random><TEMP_SUFFIX>`).
pub const TEMP_SUFFIX: &str = ".image-preloader-partial";
/// Start asynchronous write-back every this many bytes, so the final fsync has little left to do
/// and a large export does not pile up dirty pages on the node.
const WRITEBACK_STEP: u64 = 16 << 20;
/// Batches buffered between the network and the disk writer.
const CHANNEL_CHUNKS: usize = 8;
/// The export arrives in small HTTP chunks (about 20 KiB); they are gathered into batches of this
/// size before crossing to the writer thread, so a 1 GiB image costs about 4,000 writes and thread
/// wake-ups instead of 50,000. Memory stays bounded: at most `CHANNEL_CHUNKS + 1` batches.
const BATCH_BYTES: usize = 256 << 10;
/// Archive files are readable by the runner pods that load them.
const ARCHIVE_MODE: u32 = 0o644;

/// Errors about the archive directory and the files in it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
    #[error("{path} exists but is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot create a temporary file in {dir}: {source}")]
    CreateTemp { dir: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("the export for {path} is not a valid tar: {source}")]
    Tar { path: PathBuf, source: TarError },
    #[error("the export for {path} is not a complete image archive: {source}")]
    Layout { path: PathBuf, source: LayoutError },
    #[error("cannot publish {path}: {source}")]
    Publish { path: PathBuf, source: io::Error },
    #[error("cannot remove leftover {path}: {source}")]
    Cleanup { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("cannot update the time of {path}: {source}")]
    Touch { path: PathBuf, source: io::Error },
    #[error("the write of {path} was abandoned")]
    Abandoned { path: PathBuf },
}

/// The directory that holds the archives.
#[derive(Debug, Clone)]
pub struct ArchiveStore {
    root: PathBuf,
}

/// A published archive.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its final path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// What it holds.
    pub contents: ArchiveContents,
    /// The record written next to it.
    pub record: Record,
}

/// What the caller knows about an archive being written; the writer adds size, checksum, layout
/// and times to make its [`Record`].
#[derive(Debug, Clone, Default)]
pub struct RecordDraft {
    /// The reference, as given.
    pub reference: String,
    /// The registry digest it resolved to.
    pub repo_digest: Option<String>,
    /// The exporting daemon's image ID.
    pub image_id: Option<String>,
}

impl ArchiveStore {
    /// The store rooted at `root` (created when the first archive is written).
    pub fn new(root: impl Into<PathBuf>) -> ArchiveStore {
        ArchiveStore { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of an archive given relative to the directory.
    pub fn path_of(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// The archive's modification time, or `None` if there is no archive.
    pub fn modified(&self, relative: &Path) -> Result<Option<SystemTime>, ArchiveError> {
        let path = self.path_of(relative);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                meta.modified().map(Some).map_err(|source| ArchiveError::Stat { path, source })
            }
            Ok(_) => Err(ArchiveError::NotAFile { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ArchiveError::Stat { path, source }),
        }
    }

    /// The archive's state on disk and what its record says.
    pub fn state(&self, relative: &Path) -> Result<(Option<ArchiveState>, RecordState), ArchiveError> {
        let path = self.path_of(relative);
        let archive = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Some(ArchiveState {
                modified: meta
                    .modified()
                    .map_err(|source| ArchiveError::Stat { path: path.clone(), source })?,
                size: meta.len(),
            }),
            Ok(_) => return Err(ArchiveError::NotAFile { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(ArchiveError::Stat { path, source }),
        };
        let record = match Record::read(&path) {
            Ok(None) => RecordState::Missing,
            Ok(Some(r)) => {
                RecordState::Present { size: r.size, repo_digest: r.repo_digest, damaged: r.damaged }
            }
            Err(RecordError::Invalid { message, .. }) => RecordState::Unreadable(message),
            Err(e) => return Err(e.into()),
        };
        Ok((archive, record))
    }

    /// Marks an archive as confirmed current: its modification time becomes now (so the age rules
    /// start over) and its record notes the check.
    pub fn touch(&self, relative: &Path) -> Result<(), ArchiveError> {
        let path = self.path_of(relative);
        let now = SystemTime::now();
        filetime::set_file_mtime(&path, filetime::FileTime::from_system_time(now))
            .map_err(|source| ArchiveError::Touch { path: path.clone(), source })?;
        if let Some(mut record) = Record::read(&path)? {
            record.checked = record::timestamp(now);
            record.write(&path)?;
        }
        Ok(())
    }

    /// Every archive under the directory that has a record, as `(relative path, record)`.
    /// Unreadable records are skipped: a file we cannot vouch for is not ours to touch.
    pub fn recorded(&self) -> Result<Vec<(PathBuf, Record)>, ArchiveError> {
        let mut found = Vec::new();
        if !self.root.is_dir() {
            return Ok(found);
        }
        for entry in
            WalkDir::new(&self.root).min_depth(1).max_depth(2).follow_links(false).sort_by_file_name()
        {
            let entry = entry.map_err(|e| ArchiveError::Stat {
                path: e.path().unwrap_or(&self.root).to_owned(),
                source: e.into(),
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let Some(archive) = record::archive_of(entry.path()) else { continue };
            if let Ok(Some(record)) = Record::read(&archive) {
                let relative = archive.strip_prefix(&self.root).unwrap_or(&archive).to_owned();
                found.push((relative, record));
            }
        }
        Ok(found)
    }

    /// Every file named like an archive (`*.tar`) under the directory, relative, sorted.
    pub fn archives(&self) -> Result<Vec<PathBuf>, ArchiveError> {
        let mut found = Vec::new();
        if !self.root.is_dir() {
            return Ok(found);
        }
        for entry in
            WalkDir::new(&self.root).min_depth(1).max_depth(2).follow_links(false).sort_by_file_name()
        {
            let entry = entry.map_err(|e| ArchiveError::Stat {
                path: e.path().unwrap_or(&self.root).to_owned(),
                source: e.into(),
            })?;
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file() && name.ends_with(".tar") && !name.starts_with('.') {
                found.push(entry.path().strip_prefix(&self.root).unwrap_or(entry.path()).to_owned());
            }
        }
        Ok(found)
    }

    /// Removes temporary files and lock files left by killed runs. Files another live process
    /// holds locked are left alone. Returns what was removed.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>, ArchiveError> {
        let mut removed = Vec::new();
        if !self.root.is_dir() {
            return Ok(removed);
        }
        // Archives are at most two levels deep (`<user>/<image>_<tag>.tar`), so are temporaries.
        for entry in WalkDir::new(&self.root).min_depth(1).max_depth(2).follow_links(false) {
            let entry = entry.map_err(|e| ArchiveError::Stat {
                path: e.path().unwrap_or(&self.root).to_owned(),
                source: e.into(),
            })?;
            let name = entry.file_name().to_str().unwrap_or("");
            if !entry.file_type().is_file() || !(is_temporary(name) || crate::lock::is_lock_file(name)) {
                continue;
            }
            let path = entry.path();
            let cleanup = |source| ArchiveError::Cleanup { path: path.to_owned(), source };
            let file = match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(cleanup(e)),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(cleanup(e)),
            }
            match fs::remove_file(path) {
                Ok(()) => removed.push(path.to_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(cleanup(e)),
            }
        }
        Ok(removed)
    }

    /// Starts writing the archive at `relative`: creates its directory and a locked temporary
    /// file next to the final name.
    pub fn create(&self, relative: &Path) -> Result<ArchiveWriter, ArchiveError> {
        let path = self.path_of(relative);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir).map_err(|source| ArchiveError::CreateDir { path: dir.clone(), source })?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{file_name}."))
            .suffix(TEMP_SUFFIX)
            .rand_bytes(6)
            .tempfile_in(&dir)
            .map_err(|source| ArchiveError::CreateTemp { dir: dir.clone(), source })?;
        temp.as_file().lock().map_err(|source| ArchiveError::CreateTemp { dir: dir.clone(), source })?;
        Ok(ArchiveWriter {
            temp,
            path,
            dir,
            scanner: TarScanner::new(layout::capture_filter),
            hasher: Sha256::new(),
            written: 0,
            writeback_from: 0,
        })
    }
}

/// What reading an archive file back found.
#[derive(Debug, Clone)]
pub struct FileCheck {
    /// Bytes read.
    pub size: u64,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// What it holds, or why it is not a complete image archive.
    pub contents: Result<ArchiveContents, String>,
}

/// Reads an archive file once, computing its checksum and checking it is a complete image archive.
pub fn check_file(path: &Path) -> Result<FileCheck, ArchiveError> {
    use std::io::Read;
    let read_err = |source| ArchiveError::Stat { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(read_err)?;
    let mut scanner = TarScanner::new(layout::capture_filter);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut tar_error = None;
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        if tar_error.is_none()
            && let Err(e) = scanner.update(&buf[..n])
        {
            tar_error = Some(e.to_string());
        }
    }
    let contents = match tar_error {
        Some(e) => Err(e),
        None => scanner
            .finish()
            .map_err(|e| e.to_string())
            .and_then(|listing| layout::check(&listing).map_err(|e| e.to_string())),
    };
    Ok(FileCheck { size, sha256: hex(&hasher.finalize()), contents })
}

/// Whether a file name matches this tool's temporary pattern.
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(TEMP_SUFFIX)
}

/// An archive being written. Dropping it removes the temporary file.
#[derive(Debug)]
pub struct ArchiveWriter {
    temp: NamedTempFile,
    path: PathBuf,
    dir: PathBuf,
    scanner: TarScanner,
    hasher: Sha256,
    written: u64,
    writeback_from: u64,
}

impl ArchiveWriter {
    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// Appends the next bytes of the export.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ArchiveError> {
        self.scanner.update(chunk).map_err(|source| ArchiveError::Tar { path: self.path.clone(), source })?;
        self.temp
            .as_file_mut()
            .write_all(chunk)
            .map_err(|source| ArchiveError::Write { path: self.temp.path().to_owned(), source })?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        if self.written - self.writeback_from >= WRITEBACK_STEP {
            start_writeback(self.temp.as_file(), self.writeback_from, self.written - self.writeback_from);
            self.writeback_from = self.written;
        }
        Ok(())
    }

    /// Checks the archive is complete, makes it durable, renames it over the final name, writes
    /// its record next to it and fsyncs the directory.
    pub fn publish(self, draft: RecordDraft) -> Result<Published, ArchiveError> {
        let ArchiveWriter { temp, path, dir, scanner, hasher, written, .. } = self;
        let listing = scanner.finish().map_err(|source| ArchiveError::Tar { path: path.clone(), source })?;
        let contents =
            layout::check(&listing).map_err(|source| ArchiveError::Layout { path: path.clone(), source })?;
        let publish_err = |source| ArchiveError::Publish { path: path.clone(), source };
        let file = temp.as_file();
        file.set_permissions(fs::Permissions::from_mode(ARCHIVE_MODE)).map_err(publish_err)?;
        file.sync_all().map_err(publish_err)?;
        temp.persist(&path).map_err(|e| publish_err(e.error))?;
        let now = record::timestamp(SystemTime::now());
        let record = Record {
            format: record::FORMAT,
            reference: draft.reference,
            repo_digest: draft.repo_digest,
            image_id: draft.image_id,
            layout: contents.layout,
            size: written,
            sha256: hex(&hasher.finalize()),
            created: now.clone(),
            checked: now,
            damaged: None,
            tool: format!("image-preloader {}", env!("CARGO_PKG_VERSION")),
        };
        record.write(&path)?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(publish_err)?;
        Ok(Published { path, bytes: written, contents, record })
    }

    /// Runs this writer on a blocking thread and returns the async end that feeds it.
    pub fn spawn(self) -> ArchiveSink {
        let (tx, mut rx) = mpsc::channel::<Message>(CHANNEL_CHUNKS);
        let task = tokio::task::spawn_blocking(move || {
            let mut writer = self;
            loop {
                match rx.blocking_recv() {
                    Some(Message::Data(chunk)) => writer.write(&chunk)?,
                    Some(Message::Commit(draft)) => return writer.publish(draft),
                    None => {
                        return Err(ArchiveError::Abandoned { path: writer.path.clone() });
                    }
                }
            }
        });
        ArchiveSink { tx, task, pending: BytesMut::new() }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // Best effort: failures only mean the final fsync does all the work.
    // SAFETY: the descriptor is valid for the lifetime of `file`; the call only reads its arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

enum Message {
    Data(Bytes),
    Commit(RecordDraft),
}

/// The async end of an [`ArchiveWriter`] running on a blocking thread.
#[derive(Debug)]
pub struct ArchiveSink {
    tx: mpsc::Sender<Message>,
    task: JoinHandle<Result<Published, ArchiveError>>,
    /// Bytes gathered for the next batch.
    pending: BytesMut,
}

impl ArchiveSink {
    /// Sends the next chunk (batched, see [`BATCH_BYTES`]). On error the writer has stopped: call
    /// [`ArchiveSink::commit`] or [`ArchiveSink::abandon`] to learn why.
    pub async fn send(&mut self, chunk: Bytes) -> Result<(), ()> {
        if self.pending.is_empty() && chunk.len() >= BATCH_BYTES {
            return self.tx.send(Message::Data(chunk)).await.map_err(drop);
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(BATCH_BYTES);
        }
        self.pending.extend_from_slice(&chunk);
        if self.pending.len() >= BATCH_BYTES {
            let batch = self.pending.split().freeze();
            self.tx.send(Message::Data(batch)).await.map_err(drop)?;
        }
        Ok(())
    }

    /// Ends the stream and publishes the archive with its record.
    pub async fn commit(mut self, draft: RecordDraft) -> Result<Published, ArchiveError> {
        // If the writer already stopped, its result says why.
        if !self.pending.is_empty() {
            let batch = self.pending.split().freeze();
            let _ = self.tx.send(Message::Data(batch)).await;
        }
        let _ = self.tx.send(Message::Commit(draft)).await;
        drop(self.tx);
        join(self.task).await
    }

    /// Abandons the archive and waits until its temporary file is gone. Returns the writer's own
    /// error if it had already failed.
    pub async fn abandon(self) -> Option<ArchiveError> {
        drop(self.tx);
        match join(self.task).await {
            Err(ArchiveError::Abandoned { .. }) | Ok(_) => None,
            Err(e) => Some(e),
        }
    }
}

async fn join(task: JoinHandle<Result<Published, ArchiveError>>) -> Result<Published, ArchiveError> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("archive writer task failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::tests::TarBuilder;

    fn image_tar() -> Vec<u8> {
        let config = "ab".repeat(32);
        let manifest =
            format!(r#"[{{"Config":"{config}.json","RepoTags":["a:1"],"Layers":["l/layer.tar"]}}]"#);
        TarBuilder::default()
            .file("l/layer.tar", &[1; 2000])
            .file(&format!("{config}.json"), b"{}")
            .file("manifest.json", manifest.as_bytes())
            .end()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap().path().strip_prefix(dir).unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn publishes_atomically_with_readable_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path());
        let rel = Path::new("user/app_1.tar");
        let bytes = image_tar();
        let mut writer = store.create(rel).unwrap();
        assert!(is_temporary(writer.temp_path().file_name().unwrap().to_str().unwrap()));
        for chunk in bytes.chunks(333) {
            writer.write(chunk).unwrap();
        }
        assert_eq!(store.modified(rel).unwrap(), None, "nothing under the final name before publish");
        let draft = RecordDraft { reference: "reg/user/app:1".into(), ..RecordDraft::default() };
        let published = writer.publish(draft).unwrap();
        assert_eq!(published.bytes, bytes.len() as u64);
        assert_eq!(fs::read(store.path_of(rel)).unwrap(), bytes);
        let mode = fs::metadata(store.path_of(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, ARCHIVE_MODE);
        assert_eq!(entries(dir.path()), ["user", "user/app_1.tar", "user/app_1.tar.json"]);
        let record = Record::read(&store.path_of(rel)).unwrap().unwrap();
        assert_eq!(record, published.record);
        assert_eq!((record.size, record.reference.as_str()), (bytes.len() as u64, "reg/user/app:1"));
        assert_eq!(record.sha256, hex(&Sha256::digest(&bytes)));
        let (state, recorded) = store.state(rel).unwrap();
        assert_eq!(state.unwrap().size, bytes.len() as u64);
        assert_eq!(recorded, RecordState::Present { size: record.size, repo_digest: None, damaged: None });
        assert_eq!(store.recorded().unwrap(), vec![(rel.to_owned(), record)]);
        assert_eq!(store.archives().unwrap(), vec![rel.to_owned()]);
    }

    #[test]
    fn incomplete_export_leaves_the_old_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path());
        let rel = Path::new("app_1.tar");
        fs::write(store.path_of(rel), b"old archive").unwrap();
        let bytes = image_tar();
        let mut writer = store.create(rel).unwrap();
        writer.write(&bytes[..bytes.len() - 1024]).unwrap();
        let err = writer.publish(RecordDraft::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::Tar { .. }), "{err}");
        assert_eq!(fs::read(store.path_of(rel)).unwrap(), b"old archive");
        assert_eq!(entries(dir.path()), ["app_1.tar"]);
    }

    #[test]
    fn leftovers_are_removed_unless_locked() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path());
        let live = store.create(Path::new("u/live_1.tar")).unwrap();
        let dead = store.create(Path::new("u/dead_1.tar")).unwrap();
        let dead_path = dead.temp_path().to_owned();
        // Simulate a killed process: the file stays, its lock goes.
        let (_, kept) = dead.temp.keep().unwrap();
        assert!(kept.exists());
        fs::write(dir.path().join("u/.foreign-dotfile"), b"x").unwrap();
        fs::write(dir.path().join("u/other.tar"), b"x").unwrap();

        let removed = store.remove_leftovers().unwrap();
        assert_eq!(removed, vec![dead_path.clone()]);
        assert!(!dead_path.exists());
        assert!(live.temp_path().exists(), "a file being written is left alone");
        assert!(dir.path().join("u/.foreign-dotfile").exists());
        assert!(dir.path().join("u/other.tar").exists());
    }

    #[tokio::test]
    async fn sink_abandon_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path());
        let mut sink = store.create(Path::new("a_1.tar")).unwrap().spawn();
        sink.send(Bytes::from(image_tar()[..1000].to_vec())).await.unwrap();
        assert!(sink.abandon().await.is_none());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[tokio::test]
    async fn sink_commit_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path());
        let mut sink = store.create(Path::new("a_1.tar")).unwrap().spawn();
        for chunk in image_tar().chunks(100) {
            sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let published = sink.commit(RecordDraft::default()).await.unwrap();
        assert_eq!(published.contents.images[0].repo_tags, ["a:1"]);
        assert_eq!(entries(dir.path()), ["a_1.tar", "a_1.tar.json"]);
    }

    #[test]
    fn touch_refreshes_time_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArchiveStore::new(dir.path());
        let rel = Path::new("a_1.tar");
        let mut writer = store.create(rel).unwrap();
        writer.write(&image_tar()).unwrap();
        let published = writer.publish(RecordDraft::default()).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(30 * 86400);
        filetime::set_file_mtime(&published.path, filetime::FileTime::from_system_time(old)).unwrap();
        let mut stale = published.record.clone();
        stale.checked = record::timestamp(old);
        stale.write(&published.path).unwrap();

        store.touch(rel).unwrap();
        let (state, _) = store.state(rel).unwrap();
        assert!(state.unwrap().modified > old + std::time::Duration::from_secs(29 * 86400));
        let record = Record::read(&published.path).unwrap().unwrap();
        assert_ne!(record.checked, stale.checked);
        assert_eq!(record.sha256, published.record.sha256, "content untouched");
    }
}

//! The archive writer: a temporary file next to the final name, fed on a blocking thread, every
//! byte passing through the tar scanner and the checksum on its way to disk, with early write-back
//! and the disk guard re-checked as it grows.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::format::layout::{self, ArchiveContents};
use crate::format::tar::TarScanner;
use crate::store::beneath::Dir;
use crate::store::check::hex;
use crate::store::error::StoreError;
use crate::store::names::{TEMP_RANDOM, TEMP_SUFFIX, temp_prefix};
use crate::store::space::{self, MinFree};

/// Write-back is started for every this many bytes written and waited for one step later, so the
/// final fsync has at most two steps left to flush and a large export never piles up dirty pages.
const WRITEBACK_STEP: u64 = 8 << 20;
/// The free space is checked again every this many bytes, so an image larger than its estimate
/// (or of unknown size) still stops at the `--min-free` floor.
const SPACE_STEP: u64 = 64 << 20;
/// Batches buffered between the network and the disk writer (with two images streaming, 8 batches
/// of 256 KiB each measured 4 MiB more peak RSS than 4 of 128 KiB, at the same speed).
const CHANNEL_CHUNKS: usize = 4;
/// The export arrives in small HTTP chunks (about 20 KiB); they are gathered into batches of this
/// size before crossing to the writer thread. At most `CHANNEL_CHUNKS + 1` batches are in memory.
const BATCH_BYTES: usize = 128 << 10;

/// The disk guard while writing: the floor to keep on the archive file system.
#[derive(Debug, Clone, Copy)]
pub struct SpaceWatch {
    /// `--min-free` (a disabled guard never checks).
    pub min_free: MinFree,
}

/// A temporary file in an archive's directory, created and removed through the directory's handle.
/// Dropping it removes the file unless it was renamed into place.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    name: String,
    dir: Dir,
    done: bool,
}

impl TempFile {
    /// The open file.
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// Its directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Its path (for messages).
    pub fn path(&self) -> PathBuf {
        self.dir.path_of(&self.name)
    }

    /// Renames it over `name` in its directory (never over a link there).
    pub fn persist(mut self, name: &str) -> Result<File, StoreError> {
        self.dir.rename(&self.name, name)?;
        self.done = true;
        let file =
            self.file.try_clone().map_err(|source| StoreError::Publish { path: self.path(), source })?;
        Ok(file)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            self.dir.unlink(&self.name);
        }
    }
}

/// An archive being written. Dropping it removes the temporary file.
#[derive(Debug)]
pub struct ArchiveWriter {
    temp: TempFile,
    path: PathBuf,
    name: String,
    scanner: TarScanner,
    hasher: Sha256,
    written: u64,
    writeback_from: u64,
    writeback_waited: u64,
    space: SpaceWatch,
    space_checked: u64,
}

/// A written archive whose bytes are complete and checked, not yet published.
#[derive(Debug)]
pub struct Written {
    /// The temporary file (and the directory handle).
    pub temp: TempFile,
    /// The final path.
    pub path: PathBuf,
    /// The final file name in the temporary's directory.
    pub name: String,
    /// What it holds.
    pub contents: ArchiveContents,
    /// Its size.
    pub size: u64,
    /// Its hex sha256.
    pub sha256: String,
}

impl ArchiveWriter {
    /// Creates the archive's directory (by path) and a locked temporary file next to `path`
    /// (blocking).
    pub fn create(path: PathBuf, space: SpaceWatch) -> Result<ArchiveWriter, StoreError> {
        let parent = path.parent().map(Path::to_owned).unwrap_or_default();
        let dir = Dir::open(&parent, Path::new(""), true)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        ArchiveWriter::create_in(dir, name, space)
    }

    /// A locked temporary file in `dir` that will become `name` (blocking).
    pub fn create_in(dir: Dir, name: String, space: SpaceWatch) -> Result<ArchiveWriter, StoreError> {
        let path = dir.path_of(&name);
        let create_err = |source| StoreError::CreateTemp { dir: dir.path().to_owned(), source };
        let (file, temp_name) = dir
            .create_temp(&temp_prefix(&path), TEMP_RANDOM, TEMP_SUFFIX)
            .map_err(|e| create_err(e.into_io()))?;
        let temp = TempFile { file, name: temp_name, dir, done: false };
        // Locked while written, so another start's clean-up leaves it alone.
        temp.file
            .lock()
            .map_err(|source| StoreError::CreateTemp { dir: temp.dir.path().to_owned(), source })?;
        Ok(ArchiveWriter {
            temp,
            path,
            name,
            scanner: TarScanner::new(layout::capture_filter),
            hasher: Sha256::new(),
            written: 0,
            writeback_from: 0,
            writeback_waited: 0,
            space,
            space_checked: 0,
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> PathBuf {
        self.temp.path()
    }

    /// Leaves the temporary file behind without its lock, as a killed process would.
    #[cfg(test)]
    pub fn keep_as_if_killed(mut self) -> PathBuf {
        self.temp.done = true;
        self.temp.path()
    }

    /// Appends the next bytes of the export.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.scanner.update(chunk).map_err(|source| StoreError::Tar { path: self.path.clone(), source })?;
        (&self.temp.file)
            .write_all(chunk)
            .map_err(|source| StoreError::Write { path: self.temp.path(), source })?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        if self.written - self.writeback_from >= WRITEBACK_STEP {
            let file = self.temp.as_file();
            // Wait for the previous step while the kernel starts on this one.
            writeback(file, self.writeback_waited, self.writeback_from - self.writeback_waited, true);
            writeback(file, self.writeback_from, self.written - self.writeback_from, false);
            self.writeback_waited = self.writeback_from;
            self.writeback_from = self.written;
        }
        if self.written - self.space_checked >= SPACE_STEP && !self.space.min_free.is_disabled() {
            self.space_checked = self.written;
            let dir = self.temp.dir.path();
            let free = space::space_of(dir)?;
            space::check(dir, free, 0, self.space.min_free)?;
        }
        Ok(())
    }

    /// Ends the stream: the tar must be whole and the image layout complete.
    pub fn finish(self) -> Result<Written, StoreError> {
        let ArchiveWriter { temp, path, name, scanner, hasher, written, .. } = self;
        let listing = scanner.finish().map_err(|source| StoreError::Tar { path: path.clone(), source })?;
        let contents =
            layout::check(&listing).map_err(|source| StoreError::Layout { path: path.clone(), source })?;
        Ok(Written { temp, path, name, contents, size: written, sha256: hex(&hasher.finalize()) })
    }

    /// Runs this writer on a blocking thread: `then` gets the finished write (and publishes it) on
    /// that same thread. Returns the async end that feeds it.
    pub fn spawn<T, F>(self, then: F) -> ArchiveSink<T>
    where
        T: Send + 'static,
        F: FnOnce(Written) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Message>(CHANNEL_CHUNKS);
        let task = tokio::task::spawn_blocking(move || {
            let mut writer = self;
            loop {
                match rx.blocking_recv() {
                    Some(Message::Data(chunk)) => writer.write(&chunk)?,
                    Some(Message::Commit) => return then(writer.finish()?),
                    None => return Err(StoreError::Abandoned { path: writer.path.clone() }),
                }
            }
        });
        ArchiveSink { tx, task, pending: BytesMut::new() }
    }
}

#[cfg(target_os = "linux")]
fn writeback(file: &File, offset: u64, len: u64, wait: bool) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return;
    }
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // Best effort: failures only mean the final fsync does all the work.
    // SAFETY: the descriptor is valid for the lifetime of `file`; the call only reads its arguments.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags);
    }
}

#[cfg(not(target_os = "linux"))]
fn writeback(_file: &File, _offset: u64, _len: u64, _wait: bool) {}

enum Message {
    Data(Bytes),
    Commit,
}

/// The async end of an [`ArchiveWriter`] running on a blocking thread.
#[derive(Debug)]
pub struct ArchiveSink<T> {
    tx: mpsc::Sender<Message>,
    task: JoinHandle<Result<T, StoreError>>,
    /// Bytes gathered for the next batch.
    pending: BytesMut,
}

impl<T> ArchiveSink<T> {
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

    /// Ends the stream and waits for the writer's result.
    pub async fn commit(mut self) -> Result<T, StoreError> {
        // If the writer already stopped, its result says why.
        if !self.pending.is_empty() {
            let batch = self.pending.split().freeze();
            let _ = self.tx.send(Message::Data(batch)).await;
        }
        let _ = self.tx.send(Message::Commit).await;
        drop(self.tx);
        join(self.task).await
    }

    /// Abandons the archive and waits until its temporary file is gone. Returns the writer's own
    /// error if it had already failed.
    pub async fn abandon(self) -> Option<StoreError> {
        drop(self.tx);
        match join(self.task).await {
            Err(StoreError::Abandoned { .. }) | Ok(_) => None,
            Err(e) => Some(e),
        }
    }
}

async fn join<T>(task: JoinHandle<Result<T, StoreError>>) -> Result<T, StoreError> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("archive writer task failed: {e}"),
    }
}

//! The one publish path every writer goes through: a byte stream (a daemon's export, a registry
//! source's assembled archive, later a peer) becomes a published archive with its record.
//!
//! Under the archive's lock: temporary file in the archive's directory → streamed write with the
//! tar and layout check and the checksum on the fly → fsync → a `pending` record naming the new
//! checksum → rename → the final record with the archive's modification time → directory fsync. A
//! crash at any point leaves either the old pair, or a pending record that the next read settles
//! by checksum ([`crate::store::state`]). Shutdown (the cancellation token) or a source error
//! abandons the temporary file; the previous archive is never touched.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::format::layout::ArchiveContents;
use crate::store::ArchiveGuard;
use crate::store::error::StoreError;
use crate::store::names::FILE_MODE;
use crate::store::record::{self, FORMAT, Record};
use crate::store::writer::{ArchiveWriter, SpaceWatch, Written};

/// Test-only fault injection: `IMAGE_PRELOADER_FAULT=<point>` kills the process (SIGKILL) when it
/// reaches that point of a publish, so tests can show a crash there loses nothing.
const FAULT_ENV: &str = "IMAGE_PRELOADER_FAULT";

/// What the caller knows about an archive being written; the publish path adds size, checksum,
/// layout and times to make its [`Record`].
#[derive(Debug, Clone, Default)]
pub struct RecordDraft {
    /// The reference, as given.
    pub reference: String,
    /// The registry digest it resolved to.
    pub repo_digest: Option<String>,
    /// The exporting source's image ID.
    pub image_id: Option<String>,
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

/// Why a publish did not happen: the source's stream failed, or the store did.
#[derive(Debug, thiserror::Error)]
pub enum PublishError<E> {
    #[error(transparent)]
    Source(E),
    #[error(transparent)]
    Store(StoreError),
}

impl ArchiveGuard {
    /// Streams `bytes` into a new archive and publishes it with its record. `Ok(None)` when
    /// `cancel` fired first; on any error or cancellation the temporary file is gone and the
    /// previous archive, if any, is untouched.
    pub async fn publish<E, S>(
        &self,
        bytes: S,
        draft: RecordDraft,
        space: SpaceWatch,
        cancel: &CancellationToken,
    ) -> Result<Option<Published>, PublishError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let dir = self.dir().try_clone().map_err(|e| PublishError::Store(e.into()))?;
        let name = self.name().to_owned();
        let writer = crate::store::blocking(move || ArchiveWriter::create_in(dir, name, space))
            .await
            .map_err(PublishError::Store)?;
        let mut sink = writer.spawn(move |written| publish_written(written, draft));
        let mut bytes = bytes;
        loop {
            enum Next<E> {
                Sent,
                WriterStopped,
                SourceFailed(E),
                End,
                Cancelled,
            }
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => Next::Cancelled,
                next = async {
                    match bytes.next().await {
                        Some(Ok(chunk)) => if sink.send(chunk).await.is_ok() { Next::Sent } else { Next::WriterStopped },
                        Some(Err(e)) => Next::SourceFailed(e),
                        None => Next::End,
                    }
                } => next,
            };
            match next {
                Next::Sent => {}
                Next::End => break,
                Next::Cancelled => {
                    sink.abandon().await;
                    return Ok(None);
                }
                Next::SourceFailed(e) => {
                    sink.abandon().await;
                    return Err(PublishError::Source(e));
                }
                Next::WriterStopped => {
                    let error = sink.abandon().await;
                    return Err(PublishError::Store(
                        error.unwrap_or_else(|| StoreError::Abandoned { path: self.path().to_owned() }),
                    ));
                }
            }
        }
        sink.commit().await.map(Some).map_err(PublishError::Store)
    }
}

/// Makes a complete, checked write durable and puts it in place with its record (blocking).
pub(crate) fn publish_written(written: Written, draft: RecordDraft) -> Result<Published, StoreError> {
    let Written { temp, path, name, contents, size, sha256 } = written;
    let publish_err = |source| StoreError::Publish { path: path.clone(), source };
    let dir = temp.dir().try_clone()?;
    let file = temp.as_file();
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE)).map_err(publish_err)?;
    file.sync_all().map_err(publish_err)?;
    let now = record::timestamp(SystemTime::now());
    let platform = contents.images.first().and_then(|i| i.platform.as_ref()).map(ToString::to_string);
    let mut record = Record {
        format: FORMAT,
        reference: draft.reference,
        repo_digest: draft.repo_digest,
        image_id: draft.image_id,
        layout: contents.layout,
        size,
        sha256,
        created: now.clone(),
        checked: now,
        damaged: None,
        pending: true,
        mtime_ns: None,
        platform,
        tool: format!("image-preloader {}", env!("CARGO_PKG_VERSION")),
    };
    // The record names the new content before the rename: whatever a crash leaves under the
    // archive's name, the pending record makes the next read compare checksums.
    record.write_in(&dir, &name)?;
    fault("publish-before-rename");
    let file = temp.persist(&name)?;
    fault("publish-after-rename");
    let modified = file.metadata().and_then(|m| m.modified()).map_err(publish_err)?;
    record.pending = false;
    record.mtime_ns = Some(record::nanos(modified));
    record.write_in(&dir, &name)?;
    dir.sync()?;
    Ok(Published { path, bytes: size, contents, record })
}

fn fault(point: &str) {
    if std::env::var_os(FAULT_ENV).is_some_and(|v| v == point) {
        // SAFETY: sending a signal to ourselves has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

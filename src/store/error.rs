//! What can go wrong in the archive directory, with the path it concerns and a kind callers match.

use std::io;
use std::path::PathBuf;

use crate::format::layout::{Lacking, LayoutError};
use crate::format::tar::TarError;
use crate::store::beneath::BeneathError;
use crate::store::lock::LockError;
use crate::store::record::RecordError;
use crate::store::space::SpaceError;

/// Errors about the archive directory and the files in it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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
    #[error("cannot remove {path}: {source}")]
    Cleanup { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Space(#[from] SpaceError),
    #[error("cannot update the time of {path}: {source}")]
    Touch { path: PathBuf, source: io::Error },
    #[error("the write of {path} was abandoned")]
    Abandoned { path: PathBuf },
    #[error(transparent)]
    Unsafe(#[from] BeneathError),
}

/// What kind of problem a [`StoreError`] is, for callers that react differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Reading what is on disk failed (or something unexpected is there).
    Read,
    /// The bytes written are not a complete image archive.
    Incomplete,
    /// The disk is full or the guard refused the build.
    NoSpace,
    /// Writing, publishing or cleaning up failed.
    Write,
    /// The archive's lock could not be taken.
    Lock,
    /// The write was given up (shutdown or the source failed).
    Abandoned,
}

impl StoreError {
    /// For an export that lacks content it references (rather than a malformed one), which layer
    /// first; see [`LayoutError::lacking`].
    pub fn lacking(&self) -> Option<Lacking> {
        match self {
            StoreError::Layout { source, .. } => source.lacking(),
            _ => None,
        }
    }

    /// The kind of problem.
    pub fn kind(&self) -> StoreErrorKind {
        let io_kind = |e: &io::Error| {
            if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
                StoreErrorKind::NoSpace
            } else {
                StoreErrorKind::Write
            }
        };
        match self {
            StoreError::Stat { .. } | StoreError::NotAFile { .. } => StoreErrorKind::Read,
            StoreError::Tar { .. } | StoreError::Layout { .. } => StoreErrorKind::Incomplete,
            StoreError::Space(_) => StoreErrorKind::NoSpace,
            StoreError::Lock(_) => StoreErrorKind::Lock,
            StoreError::Abandoned { .. } => StoreErrorKind::Abandoned,
            StoreError::Write { source, .. }
            | StoreError::Publish { source, .. }
            | StoreError::CreateTemp { source, .. }
            | StoreError::CreateDir { source, .. } => io_kind(source),
            StoreError::Record(RecordError::Write { source, .. }) => io_kind(source),
            StoreError::Record(_) => StoreErrorKind::Read,
            StoreError::Cleanup { .. } | StoreError::Touch { .. } => StoreErrorKind::Write,
            StoreError::Unsafe(BeneathError::Io { source, .. }) => io_kind(source),
            StoreError::Unsafe(_) => StoreErrorKind::Read,
        }
    }
}

//! Unit tests of the store: the publish path, state settling, leftovers, touch.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use walkdir::WalkDir;

use super::*;
use crate::format::tar::tests::TarBuilder;
use crate::store::check::hex;
use crate::store::names::{FILE_MODE, is_temporary};
use crate::store::space::MinFree;
use crate::store::writer::ArchiveWriter;

pub(crate) fn image_tar() -> Vec<u8> {
    let config = "ab".repeat(32);
    let manifest = format!(r#"[{{"Config":"{config}.json","RepoTags":["a:1"],"Layers":["l/layer.tar"]}}]"#);
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

const NO_GUARD: SpaceWatch = SpaceWatch { min_free: MinFree::Bytes(0) };

fn chunks(bytes: &[u8], size: usize) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin {
    let items: Vec<Result<Bytes, String>> =
        bytes.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    stream::iter(items)
}

async fn publish(store: &ArchiveStore, rel: &str, bytes: &[u8]) -> Published {
    let guard = store.lock(Path::new(rel), &CancellationToken::new(), || {}).await.unwrap();
    let draft = RecordDraft { reference: "reg/user/app:1".into(), ..RecordDraft::default() };
    guard.publish(chunks(bytes, 333), draft, NO_GUARD, &CancellationToken::new()).await.unwrap().unwrap()
}

#[tokio::test]
async fn publishes_atomically_with_readable_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    let rel = Path::new("user/app_1.tar");
    let bytes = image_tar();
    let published = publish(&store, "user/app_1.tar", &bytes).await;
    assert_eq!(published.bytes, bytes.len() as u64);
    assert_eq!(fs::read(store.path_of(rel)).unwrap(), bytes);
    let mode = fs::metadata(store.path_of(rel)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, FILE_MODE);
    assert_eq!(entries(dir.path()), ["user", "user/app_1.tar", "user/app_1.tar.json"]);
    let record = Record::read(&store.path_of(rel)).unwrap().unwrap();
    assert_eq!(record, published.record);
    assert_eq!((record.size, record.reference.as_str()), (bytes.len() as u64, "reg/user/app:1"));
    assert_eq!(record.sha256, hex(&Sha256::digest(&bytes)));
    assert!(!record.pending && record.mtime_ns.is_some());
    let guard = store.try_lock(rel).unwrap().unwrap();
    let (state, recorded) = guard.state().await.unwrap();
    assert_eq!(state.unwrap().size, bytes.len() as u64);
    assert_eq!(
        recorded,
        RecordState::Present {
            size: record.size,
            repo_digest: None,
            damaged: None,
            platform: record.platform.clone()
        }
    );
    drop(guard);
    assert_eq!(store.recorded().await.found, vec![(rel.to_owned(), record)]);
    assert_eq!(store.archives().await.found, vec![rel.to_owned()]);
}

#[tokio::test]
async fn incomplete_export_leaves_the_old_archive() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    fs::write(store.path_of(Path::new("app_1.tar")), b"old archive").unwrap();
    let bytes = image_tar();
    let guard = store.lock(Path::new("app_1.tar"), &CancellationToken::new(), || {}).await.unwrap();
    let cut = chunks(&bytes[..bytes.len() - 1024], 500);
    let err =
        guard.publish(cut, RecordDraft::default(), NO_GUARD, &CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, PublishError::Store(StoreError::Tar { .. })), "{err}");
    match err {
        PublishError::Store(e) => assert_eq!(e.kind(), StoreErrorKind::Incomplete),
        PublishError::Source(_) => unreachable!(),
    }
    drop(guard);
    assert_eq!(fs::read(store.path_of(Path::new("app_1.tar"))).unwrap(), b"old archive");
    assert_eq!(entries(dir.path()), ["app_1.tar"]);
}

#[tokio::test]
async fn a_source_error_or_cancellation_abandons_the_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    let guard = store.lock(Path::new("a_1.tar"), &CancellationToken::new(), || {}).await.unwrap();
    let bytes = image_tar();
    let failing =
        stream::iter(vec![Ok(Bytes::copy_from_slice(&bytes[..1000])), Err("daemon went away".to_owned())]);
    let err = guard
        .publish(failing, RecordDraft::default(), NO_GUARD, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(&err, PublishError::Source(m) if m == "daemon went away"), "{err}");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let none = guard.publish(chunks(&bytes, 100), RecordDraft::default(), NO_GUARD, &cancel).await.unwrap();
    assert!(none.is_none());
    drop(guard);
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[tokio::test]
async fn the_disk_guard_holds_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    let guard = store.lock(Path::new("a_1.tar"), &CancellationToken::new(), || {}).await.unwrap();
    // A floor no disk has: the first check (after 64 MiB) refuses.
    let impossible = SpaceWatch { min_free: MinFree::Bytes(u64::MAX / 2) };
    let big = stream::iter((0..80).map(|_| Ok::<_, String>(Bytes::from(vec![0u8; 1 << 20]))));
    let err =
        guard.publish(big, RecordDraft::default(), impossible, &CancellationToken::new()).await.unwrap_err();
    match err {
        PublishError::Store(e) => assert_eq!(e.kind(), StoreErrorKind::NoSpace, "{e}"),
        PublishError::Source(e) => panic!("{e}"),
    }
    drop(guard);
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[tokio::test]
async fn leftovers_are_removed_unless_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    let live = ArchiveWriter::create(dir.path().join("u/live_1.tar"), NO_GUARD).unwrap();
    let dead = ArchiveWriter::create(dir.path().join("u/dead_1.tar"), NO_GUARD).unwrap();
    assert!(is_temporary(dead.temp_path().file_name().unwrap().to_str().unwrap()));
    // Simulate a killed process: the file stays, its lock goes.
    let dead_path = dead.keep_as_if_killed();
    assert!(dead_path.exists());
    fs::write(dir.path().join("u/.foreign-dotfile"), b"x").unwrap();
    fs::write(dir.path().join("u/other.tar"), b"x").unwrap();

    let removed = store.remove_leftovers().await;
    assert_eq!(removed.found, vec![dead_path.clone()]);
    assert!(removed.unreadable.is_empty());
    assert!(!dead_path.exists());
    assert!(live.temp_path().exists(), "a file being written is left alone");
    assert!(dir.path().join("u/.foreign-dotfile").exists());
    assert!(dir.path().join("u/other.tar").exists());
}

#[tokio::test]
async fn touch_refreshes_time_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    let published = publish(&store, "a_1.tar", &image_tar()).await;
    let old = SystemTime::now() - Duration::from_secs(30 * 86400);
    filetime::set_file_mtime(&published.path, filetime::FileTime::from_system_time(old)).unwrap();
    let mut stale = published.record.clone();
    stale.checked = record::timestamp(old);
    stale.mtime_ns = Some(record::nanos(old));
    stale.write(&published.path).unwrap();

    let guard = store.try_lock(Path::new("a_1.tar")).unwrap().unwrap();
    guard.touch().await.unwrap();
    let (state, recorded) = guard.state().await.unwrap();
    assert!(state.unwrap().modified > old + Duration::from_secs(29 * 86400));
    assert_eq!(
        recorded,
        RecordState::Present {
            size: published.bytes,
            repo_digest: None,
            damaged: None,
            platform: published.record.platform.clone()
        }
    );
    let record = Record::read(&published.path).unwrap().unwrap();
    assert_ne!(record.checked, stale.checked);
    assert_eq!(record.sha256, published.record.sha256, "content untouched");
}

/// A crash between the pending record and the rename: the old archive is under the name, the
/// record names the new content. The checksum says so and the archive is rebuilt.
#[tokio::test]
async fn a_pending_record_over_the_old_archive_means_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    let published = publish(&store, "a_1.tar", &image_tar()).await;
    let mut pending = published.record.clone();
    pending.pending = true;
    pending.sha256 = "0".repeat(64);
    pending.write(&published.path).unwrap();
    let guard = store.try_lock(Path::new("a_1.tar")).unwrap().unwrap();
    let (_, recorded) = guard.state().await.unwrap();
    match recorded {
        RecordState::Present { damaged: Some(why), .. } => assert!(why.contains("interrupted"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// A crash between the rename and the final record: the new archive is under the name and the
/// pending record names it. The checksum confirms it and the record becomes final.
#[tokio::test]
async fn a_pending_record_over_the_new_archive_is_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    let published = publish(&store, "a_1.tar", &image_tar()).await;
    let pending = Record { pending: true, mtime_ns: None, ..published.record.clone() };
    pending.write(&published.path).unwrap();
    let guard = store.try_lock(Path::new("a_1.tar")).unwrap().unwrap();
    let (_, recorded) = guard.state().await.unwrap();
    assert_eq!(
        recorded,
        RecordState::Present {
            size: published.bytes,
            repo_digest: None,
            damaged: None,
            platform: published.record.platform.clone()
        }
    );
    let record = Record::read(&published.path).unwrap().unwrap();
    assert!(!record.pending && record.mtime_ns.is_some(), "{record:?}");
}

/// Same size, other bytes, other time: size alone would call it current.
#[tokio::test]
async fn a_file_changed_behind_the_record_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArchiveStore::new(dir.path());
    let published = publish(&store, "a_1.tar", &image_tar()).await;
    let mut bytes = fs::read(&published.path).unwrap();
    bytes[600] ^= 0xff;
    fs::write(&published.path, &bytes).unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    filetime::set_file_mtime(&published.path, filetime::FileTime::from_system_time(later)).unwrap();
    let guard = store.try_lock(Path::new("a_1.tar")).unwrap().unwrap();
    let (_, recorded) = guard.state().await.unwrap();
    assert!(matches!(recorded, RecordState::Present { damaged: Some(_), .. }), "{recorded:?}");
}

//! Adopting a finished blob file: moved into a folder store, streamed into others, refused
//! when it is checkably not what the caller says.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use kiln_oci::Digest;
use kiln_store::{Store, StoreError};

fn folder_store(dir: &std::path::Path) -> Store {
    Store::open(dir.join("store").to_str().unwrap()).unwrap()
}

fn file_with(dir: &std::path::Path, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join("layer.tar.gz");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn a_folder_store_takes_the_file_over_without_copying() {
    let tmp = tempfile::tempdir().unwrap();
    let store = folder_store(tmp.path());
    let bytes = vec![7u8; 9 << 20];
    let digest = Digest::of(&bytes);
    let path = file_with(tmp.path(), &bytes);
    let out = store.adopt_blob_file(&path, &digest, bytes.len() as u64).await.unwrap();
    assert!(out.uploaded);
    assert!(!path.exists(), "the file was moved, not copied");
    assert_eq!(store.get_blob(&digest).await.unwrap().len(), bytes.len());
    let staged: Vec<_> = walk(&tmp.path().join("store/uploads"));
    assert!(staged.is_empty(), "no staging leftovers: {staged:?}");
    let again = file_with(tmp.path(), &bytes);
    let out = store.adopt_blob_file(&again, &digest, bytes.len() as u64).await.unwrap();
    assert!(!out.uploaded);
    assert!(!again.exists());
}

#[tokio::test]
async fn a_file_of_another_size_than_said_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = folder_store(tmp.path());
    let path = file_with(tmp.path(), b"actual bytes");
    let claimed = Digest::of(b"claimed bytes");
    let err = store.adopt_blob_file(&path, &claimed, 13).await.unwrap_err();
    assert!(matches!(err, StoreError::FileSize { found_size: 12, .. }), "{err}");
    assert!(path.exists());
    assert!(!store.has_blob(&claimed).await.unwrap());
}

#[tokio::test]
async fn a_folder_store_trusts_the_callers_digest_but_never_serves_wrong_bytes() {
    // The caller hashed the file as it wrote it, so a folder store does not read it again;
    // a wrong claim is still caught by the next read, which names the key.
    let tmp = tempfile::tempdir().unwrap();
    let store = folder_store(tmp.path());
    let path = file_with(tmp.path(), b"actual bytes");
    let claimed = Digest::of(b"claimed byte");
    store.adopt_blob_file(&path, &claimed, 12).await.unwrap();
    let err = store.get_blob(&claimed).await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&claimed.hex()), "{err}");
}

#[tokio::test]
async fn a_streamed_file_that_is_not_what_was_said_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open("memory://").unwrap();
    let path = file_with(tmp.path(), b"actual bytes");
    let claimed = Digest::of(b"claimed byte");
    let err = store.adopt_blob_file(&path, &claimed, 12).await.unwrap_err();
    assert!(matches!(err, StoreError::FileMismatch { .. }), "{err}");
    assert!(path.exists());
    assert!(!store.has_blob(&claimed).await.unwrap());
}

#[tokio::test]
async fn other_stores_stream_the_file_and_remove_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open("memory://").unwrap();
    let path = file_with(tmp.path(), b"layer");
    let out = store.adopt_blob_file(&path, &Digest::of(b"layer"), 5).await.unwrap();
    assert!(out.uploaded);
    assert!(!path.exists());
    assert_eq!(&store.get_blob(&Digest::of(b"layer")).await.unwrap()[..], b"layer");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] })
        .collect()
}

#[tokio::test]
async fn an_adopted_blob_is_readable_by_all_whatever_mode_its_file_had() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let store = folder_store(tmp.path());
    for (n, mode) in [0o600, 0o640, 0o777].into_iter().enumerate() {
        let bytes = format!("layer {n}").into_bytes();
        let digest = Digest::of(&bytes);
        let path = file_with(tmp.path(), &bytes);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        store.adopt_blob_file(&path, &digest, bytes.len() as u64).await.unwrap();
        let stored = tmp.path().join("store/blobs/sha256").join(digest.hex());
        let stored_mode = std::fs::metadata(&stored).unwrap().permissions().mode() & 0o7777;
        assert_eq!(stored_mode, 0o644, "a file of mode {mode:o}");
    }
}

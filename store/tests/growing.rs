//! A blob uploaded while its file is still being written (`Store::put_growing_file`): on the
//! backends that stage large blobs (memory://, Azure) its parts go up before the file is
//! whole; everywhere, nothing is published under a digest the bytes sent do not hash to,
//! and an upload dropped or cut off leaves nothing that `store check` and gc do not settle.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use kiln_oci::Digest;
use kiln_store::check::NoProgress;
use kiln_store::growing::Growth;
use kiln_store::{GcOptions, Problem, PutOutcome, Store, StoreError};
use object_store::ObjectStore;
use tempfile::TempDir;
use tokio::sync::watch;

/// A store, with raw access to its bucket where it has one.
struct Fixture {
    store: Store,
    raw: Option<Arc<dyn ObjectStore>>,
    tmp: TempDir,
}

/// An upload of a growing file, running.
type Upload = tokio::task::JoinHandle<Result<Option<PutOutcome>, StoreError>>;

impl Fixture {
    fn open(location: &str, server: Option<&'static kiln_test_servers::Server>) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let (store, raw) = match server {
            Some(server) => (
                Store::open_with_options(location, &server.options()).unwrap(),
                Some(server.raw(location)),
            ),
            None => (Store::open(location).unwrap(), None),
        };
        Fixture { store, raw, tmp }
    }

    /// Every backend whose server is available: memory:// and a folder always.
    fn all() -> Vec<Fixture> {
        let mut all = vec![Fixture::open("memory://", None)];
        let folder = tempfile::tempdir().unwrap();
        let mut local = Fixture::open(folder.path().join("store").to_str().unwrap(), None);
        local.tmp = folder;
        all.push(local);
        for server in [kiln_test_servers::azure(), kiln_test_servers::s3()].into_iter().flatten() {
            all.push(Fixture::open(&server.fresh_location(), Some(server)));
        }
        all
    }

    /// A new scratch file and its path.
    fn file(&self, name: &str) -> (std::fs::File, PathBuf) {
        let path = self.tmp.path().join(name);
        (std::fs::File::create(&path).unwrap(), path)
    }

    /// A new scratch file, its path, the sender its writer tells its growth by, and the
    /// upload of it as it grows, begun.
    fn growing(&self, name: &str) -> (std::fs::File, PathBuf, watch::Sender<Growth>, Upload) {
        let (file, path) = self.file(name);
        let (growth, told) = watch::channel(Growth::Written(0));
        let reader = std::fs::File::open(&path).unwrap();
        let (store, at) = (self.store.clone(), path.clone());
        let upload = tokio::spawn(async move { store.put_growing_file(reader, at, told).await });
        (file, path, growth, upload)
    }

    /// The unfinished uploads `store check` reports.
    async fn unfinished(&self) -> Vec<String> {
        let report = self.store.check(&NoProgress).await.unwrap();
        report
            .problems
            .into_iter()
            .filter_map(|p| match p {
                Problem::UnfinishedUpload { marker, .. } => Some(marker),
                _ => None,
            })
            .collect()
    }

    /// Waits until the upload of a growing file is recorded: its parts are on their way.
    /// Bounded, so that a store that never starts fails the test instead of hanging it.
    async fn wait_for_growing_upload(&self) {
        for _ in 0..3000 {
            if self.unfinished().await.iter().any(|m| m.starts_with("uploads/growing-")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{}: no upload began while the file was written", self.store.describe());
    }

    /// Asserts the store holds no blob, no upload and no staging object.
    async fn assert_empty(&self, what: &str) {
        let report = self.store.check(&NoProgress).await.unwrap();
        assert!(report.problems.is_empty(), "{what}: {report:?}");
        if let Some(raw) = &self.raw {
            let keys: Vec<_> = raw.list(None).try_collect().await.unwrap();
            assert!(keys.is_empty(), "{what}: {keys:?}");
        }
    }
}

/// Deterministic, incompressible-looking content.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
}

const MIB: usize = 1024 * 1024;

/// Writes `bytes` to `file` and tells `growth` the file's new length.
fn grow(file: &mut std::fs::File, path: &Path, bytes: &[u8], growth: &watch::Sender<Growth>) {
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
    growth.send_replace(Growth::Written(std::fs::metadata(path).unwrap().len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_file_goes_up_before_it_is_whole_and_is_published_whole() {
    for f in Fixture::all() {
        let bytes = content(20 * MIB + 12345);
        let digest = Digest::of(&bytes);
        let (mut file, path, growth, upload) = f.growing("layer");
        grow(&mut file, &path, &bytes[..9 * MIB], &growth);
        if f.store.stages_blobs() {
            // The rest of the file is not written yet: the upload began before it was whole.
            f.wait_for_growing_upload().await;
        }
        grow(&mut file, &path, &bytes[9 * MIB..], &growth);
        growth.send_replace(Growth::Whole { digest, size: bytes.len() as u64 });
        let out = upload.await.unwrap().unwrap().unwrap();
        assert!(out.uploaded, "{}", f.store.describe());
        assert_eq!((out.digest, out.size), (digest, bytes.len() as u64));
        assert_eq!(f.store.get_blob(&digest).await.unwrap(), bytes);
        let report = f.store.check(&NoProgress).await.unwrap();
        assert!(report.problems.is_empty(), "{}: {report:?}", f.store.describe());
        if let Some(raw) = &f.raw {
            let keys: Vec<_> = raw.list(None).try_collect().await.unwrap();
            let keys: Vec<String> = keys.into_iter().map(|m| m.location.to_string()).collect();
            assert_eq!(keys, vec![format!("blobs/sha256/{}", digest.hex())]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_file_that_is_not_the_blob_named_publishes_nothing() {
    for f in Fixture::all() {
        let bytes = content(10 * MIB + 7);
        let len = bytes.len() as u64;
        let real = Digest::of(&bytes);
        // Another digest; a size one short (what is sent then hashes to something else); a
        // size one long (the file ends before it).
        let wrong = [(Digest::of(b"other"), len), (real, len - 1), (real, len + 1)];
        for (i, (digest, size)) in wrong.into_iter().enumerate() {
            let (mut file, path, growth, upload) = f.growing(&format!("layer-{i}"));
            grow(&mut file, &path, &bytes, &growth);
            if f.store.stages_blobs() {
                f.wait_for_growing_upload().await;
            }
            growth.send_replace(Growth::Whole { digest, size });
            let what = format!("{} case {i}", f.store.describe());
            match upload.await.unwrap() {
                Err(StoreError::FileMismatch { expected, .. }) => assert_eq!(expected, digest),
                // Staged while written: the file ended before the size named.
                Err(StoreError::LocalFile { .. }) if size > len => {}
                other => panic!("{what}: {other:?}"),
            }
            assert!(!f.store.has_blob(&digest).await.unwrap(), "{what}");
            assert!(!f.store.has_blob(&real).await.unwrap(), "{what}");
            f.assert_empty(&what).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_growing_file_is_aborted_and_a_cut_one_is_settled_by_gc() {
    for f in Fixture::all() {
        if !f.store.stages_blobs() {
            continue;
        }
        let bytes = content(9 * MIB);
        // Dropped by its writer; its writer gone without a word; the uploading task cut off
        // as a killed process would be.
        for how in ["dropped", "closed", "cut"] {
            let (mut file, path, growth, upload) = f.growing(how);
            grow(&mut file, &path, &bytes, &growth);
            f.wait_for_growing_upload().await;
            let what = format!("{} {how}", f.store.describe());
            match how {
                "dropped" => {
                    growth.send_replace(Growth::Dropped);
                    assert!(upload.await.unwrap().unwrap().is_none(), "{what}");
                }
                "closed" => {
                    drop(growth);
                    assert!(upload.await.unwrap().unwrap().is_none(), "{what}");
                }
                _ => {
                    upload.abort();
                    assert!(upload.await.unwrap_err().is_cancelled(), "{what}");
                    // What a killed writer leaves: its upload, recorded, and nothing else.
                    assert_eq!(f.unfinished().await.len(), 1, "{what}");
                    let gc = GcOptions { grace: Duration::ZERO, dry_run: false };
                    let report = f.store.gc(gc).await.unwrap();
                    assert_eq!(report.multipart_uploads_aborted, 1, "{what}");
                    assert_eq!(report.blobs_deleted, 0, "{what}");
                }
            }
            assert!(!f.store.has_blob(&Digest::of(&bytes)).await.unwrap(), "{what}");
            f.assert_empty(&what).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_upload_a_gc_without_grace_took_is_sent_again_from_the_file() {
    // The staging key of a growing file names no digest, so no lease keeps it: a gc with no
    // grace aborts the upload (and would delete its staging object). The blob is then sent
    // again from the whole file, verified as every upload is, instead of failing.
    for f in Fixture::all() {
        if !f.store.stages_blobs() {
            continue;
        }
        let bytes = content(17 * MIB + 777);
        let digest = Digest::of(&bytes);
        let (mut file, path, growth, upload) = f.growing("raced");
        grow(&mut file, &path, &bytes[..8 * MIB], &growth);
        f.wait_for_growing_upload().await;
        let what = f.store.describe();
        let gc = GcOptions { grace: Duration::ZERO, dry_run: false };
        let report = f.store.gc(gc).await.unwrap();
        assert_eq!(report.multipart_uploads_aborted, 1, "{what}");
        // A part sent now may find the upload gone before the file is whole.
        grow(&mut file, &path, &bytes[8 * MIB..16 * MIB], &growth);
        grow(&mut file, &path, &bytes[16 * MIB..], &growth);
        growth.send_replace(Growth::Whole { digest, size: bytes.len() as u64 });
        let out = upload.await.unwrap().unwrap().unwrap();
        assert!(out.uploaded, "{what}");
        assert_eq!(f.store.get_blob(&digest).await.unwrap(), bytes, "{what}");
        let report = f.store.check(&NoProgress).await.unwrap();
        assert!(report.problems.is_empty(), "{what}: {report:?}");
        if let Some(raw) = &f.raw {
            let keys: Vec<_> = raw.list(None).try_collect().await.unwrap();
            let keys: Vec<String> = keys.into_iter().map(|m| m.location.to_string()).collect();
            assert_eq!(keys, vec![format!("blobs/sha256/{}", digest.hex())], "{what}");
        }
    }
}

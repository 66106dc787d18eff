//! A build into a store that stages large blobs (memory://, Azure) uploads a layer while it
//! is compressed: the upload of its first parts is recorded in the store while the layer's
//! writer is held before its last bytes, the image is the one a folder build makes, and a
//! build that fails or stops mid-layer leaves no blob and no upload behind.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use kiln_builder::build::{BlobSink, BlobStream, SinkError};
use kiln_builder::image::JsonBlob;
use kiln_builder::layer::{LayerBlob, WriteProgress};
use kiln_builder::{build, LayerRecord, Recipe};
use kiln_oci::{Descriptor, Digest};
use kiln_store::check::NoProgress;
use kiln_store::{CheckReport, Problem, Store};
use kiln_store_sink::StoreSink;
use object_store::ObjectStore;
use tokio::runtime::Runtime;

use support::{opts, Quiet};

const MIB: u64 = 1024 * 1024;
/// Written bytes at which a held layer's writer waits for its upload to be recorded: past
/// the size from which a blob is staged in parts (8 MiB), short of the layer's end.
const HOLD_AT: u64 = 8 * MIB;

/// A store under test, the runtime its sink runs on, and raw access to its bucket.
struct Target {
    store: Store,
    raw: Option<Arc<dyn ObjectStore>>,
    runtime: Runtime,
}

impl Target {
    fn all() -> Vec<Target> {
        let mut all = vec![Target::open("memory://", None)];
        if let Some(server) = kiln_test_servers::azure() {
            all.push(Target::open(&server.fresh_location(), Some(server)));
        }
        all
    }

    fn open(location: &str, server: Option<&'static kiln_test_servers::Server>) -> Target {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (store, raw) = match server {
            Some(server) => (
                Store::open_with_options(location, &server.options()).unwrap(),
                Some(server.raw(location)),
            ),
            None => (Store::open(location).unwrap(), None),
        };
        assert!(store.stages_blobs(), "{location}");
        Target { store, raw, runtime }
    }

    fn check(&self) -> CheckReport {
        self.runtime.block_on(self.store.check(&NoProgress)).unwrap()
    }

    /// The keys in the bucket, where there is one.
    fn keys(&self) -> Option<Vec<String>> {
        let raw = self.raw.as_ref()?;
        let listed: Vec<_> = self.runtime.block_on(raw.list(None).try_collect()).unwrap();
        Some(listed.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// Waits (bounded) until the store records the upload of a growing file.
    fn upload_began(&self) -> bool {
        let handle = self.runtime.handle();
        (0..3000).any(|_| {
            let seen = growing_upload_recorded(&self.store, handle);
            if !seen {
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    }

    /// Asserts the store holds nothing: no blob, no upload, no staging object.
    fn assert_empty(&self, what: &str) {
        let report = self.check();
        assert_eq!((report.blobs, report.problems.clone()), (0, vec![]), "{what}: {report:?}");
        if let Some(keys) = self.keys() {
            assert!(keys.is_empty(), "{what}: {keys:?}");
        }
    }
}

/// Whether the store records a multipart upload of a growing file.
fn growing_upload_recorded(store: &Store, runtime: &tokio::runtime::Handle) -> bool {
    let report = runtime.block_on(store.check(&NoProgress)).unwrap();
    report.problems.iter().any(|p| {
        matches!(p, Problem::UnfinishedUpload { marker, .. } if marker.starts_with("uploads/growing-"))
    })
}

/// Holds a layer's writer, once it has written [`HOLD_AT`] bytes, until the store records
/// the layer's upload (bounded, so a build that does not stream ends, and fails the test);
/// then runs `then`.
struct Hold {
    inner: Arc<dyn WriteProgress>,
    store: Store,
    runtime: tokio::runtime::Handle,
    seen: Arc<AtomicBool>,
    held: AtomicBool,
    then: Box<dyn Fn() + Send + Sync>,
}

impl WriteProgress for Hold {
    fn written(&self, len: u64) {
        self.inner.written(len);
        if len < HOLD_AT || self.held.swap(true, Ordering::Relaxed) {
            return;
        }
        for _ in 0..3000 {
            if growing_upload_recorded(&self.store, &self.runtime) {
                self.seen.store(true, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (self.then)();
    }
}

/// A [`StoreSink`] whose layer writers are held as [`Hold`] says.
struct Held<'a> {
    sink: StoreSink<'a>,
    store: Store,
    runtime: tokio::runtime::Handle,
    /// Set once an upload was seen recorded while its layer's writer was held.
    seen: Arc<AtomicBool>,
    /// Run once the writer was held (a layer made to fail).
    then: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl BlobSink for Held<'_> {
    fn stream_blob(&mut self, path: &Path) -> Result<Option<BlobStream>, SinkError> {
        let Some(stream) = self.sink.stream_blob(path)? else { return Ok(None) };
        let then = self.then.lock().unwrap().take().unwrap_or_else(|| Box::new(|| {}));
        let progress = Arc::new(Hold {
            inner: stream.progress,
            store: self.store.clone(),
            runtime: self.runtime.clone(),
            seen: self.seen.clone(),
            held: AtomicBool::new(false),
            then,
        });
        Ok(Some(BlobStream { id: stream.id, progress }))
    }
    fn start_storing_streamed(
        &mut self,
        stream: BlobStream,
        path: &Path,
        d: &Descriptor,
    ) -> Result<(), SinkError> {
        self.sink.start_storing_streamed(stream, path, d)
    }
    fn start_storing(&mut self, path: &Path, d: &Descriptor) -> Result<(), SinkError> {
        self.sink.start_storing(path, d)
    }
    fn settle(&mut self) -> Result<(), SinkError> {
        self.sink.settle()
    }
    fn cached_layers(&mut self, keys: &[Digest]) -> Result<Vec<Option<LayerRecord>>, SinkError> {
        self.sink.cached_layers(keys)
    }
    fn put_layer(&mut self, key: &Digest, layer: &LayerBlob) -> Result<(), SinkError> {
        self.sink.put_layer(key, layer)
    }
    fn put_json(&mut self, blob: &JsonBlob) -> Result<(), SinkError> {
        self.sink.put_json(blob)
    }
    fn put_file(&mut self, path: &Path, d: &Descriptor) -> Result<(), SinkError> {
        self.sink.put_file(path, d)
    }
    fn cached_disk(&mut self, key: &Digest) -> Result<Option<Descriptor>, SinkError> {
        self.sink.cached_disk(key)
    }
    fn remember_disk(&mut self, key: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        self.sink.remember_disk(key, artifact)
    }
    fn put_referrer(&mut self, subject: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        self.sink.put_referrer(subject, artifact)
    }
    fn copy_blob(&mut self, d: &Descriptor, target: &Path) -> Result<bool, SinkError> {
        self.sink.copy_blob(d, target)
    }
    fn get_document(&mut self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>, SinkError> {
        self.sink.get_document(digest, limit)
    }
}

/// Incompressible bytes, so the layer stays about as large as its content.
fn noise(len: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A recipe of one large layer of `big` incompressible bytes, then a small one; returns it
/// and the large input's path.
/// A scratch layer file of `len` bytes of noise, in a folder of its own, and its bytes.
fn scratch_layer(len: u64) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("layer.partial");
    let bytes = noise(len);
    std::fs::write(&path, &bytes).unwrap();
    (tmp, path, bytes)
}

/// A gzip layer's descriptor.
fn layer_descriptor(digest: Digest, size: u64) -> Descriptor {
    Descriptor::new("application/vnd.oci.image.layer.v1.tar+gzip", digest, size)
}

fn recipe(dir: &Path, big: u64) -> (Recipe, PathBuf) {
    let payload = dir.join("payload");
    std::fs::write(&payload, noise(big)).unwrap();
    let text = "epoch = 1700000000\n[image]\nname = \"big\"\nversion = \"1\"\n\
                platforms = [\"linux/amd64\"]\n\
                [[layer]]\nname = \"payload\"\nfiles = [{ src = \"payload\", dest = \"/payload\" }]\n\
                [[layer]]\nname = \"motd\"\ninline = [{ dest = \"/etc/motd\", content = \"hi\" }]\n";
    std::fs::write(dir.join("r.toml"), text).unwrap();
    (Recipe::load(&dir.join("r.toml")).unwrap(), payload)
}

/// The index a build of `recipe` into a folder store makes.
fn folder_build(recipe: &Recipe, dir: &Path) -> Digest {
    let runtime = Runtime::new().unwrap();
    let store = Store::open(dir.join("folder").to_str().unwrap()).unwrap();
    let mut sink = StoreSink::new(&store, &runtime);
    build(recipe, &opts(&dir.join("work-folder")), &mut sink, &Quiet).unwrap().index.digest
}

#[test]
fn a_cold_build_uploads_a_layer_while_it_is_compressed() {
    for target in Target::all() {
        let tmp = tempfile::tempdir().unwrap();
        let (recipe, _) = recipe(tmp.path(), 12 * MIB);
        let expected = folder_build(&recipe, tmp.path());
        let seen = Arc::new(AtomicBool::new(false));
        let mut sink = Held {
            sink: StoreSink::new(&target.store, &target.runtime),
            store: target.store.clone(),
            runtime: target.runtime.handle().clone(),
            seen: seen.clone(),
            then: Mutex::new(None),
        };
        let out = build(&recipe, &opts(&tmp.path().join("work")), &mut sink, &Quiet).unwrap();
        let what = target.store.describe().to_string();
        assert!(seen.load(Ordering::Relaxed), "{what}: no upload began before the layer ended");
        assert_eq!(out.index.digest, expected, "{what}");
        assert_eq!((sink.sink.uploaded, sink.sink.present), (5, 0), "{what}");
        // Every blob (two layers, config, manifest, index) is whole, and no upload is left.
        let report = target.check();
        assert_eq!((report.blobs, report.problems.clone()), (5, vec![]), "{what}: {report:?}");
        for (_, layer) in &out.layers {
            let stored = target.runtime.block_on(target.store.verify_blob(&layer.digest));
            assert_eq!(stored.unwrap(), layer.size, "{what}");
        }
        if let Some(keys) = target.keys() {
            // The blobs and the two layers' cache entries; no upload or staging object.
            let kept = |k: &String| k.starts_with("blobs/sha256/") || k.starts_with("cache/layer/");
            assert!(keys.len() == 7 && keys.iter().all(kept), "{what}: {keys:?}");
        }
    }
}

#[test]
fn a_build_that_fails_mid_layer_leaves_no_blob_and_no_upload() {
    for target in Target::all() {
        let tmp = tempfile::tempdir().unwrap();
        // Large enough that the writer, held at 8 MiB written, has not read the input's end:
        // behind it wait at most a 4 MiB block, 4 gzip chunks in flight, one ahead and 4 in
        // the pipe, so about 26 MiB of input is read by then.
        let (recipe, payload) = recipe(tmp.path(), 40 * MIB);
        let seen = Arc::new(AtomicBool::new(false));
        // Once the upload is seen, the input shrinks under the layer's writer: it fails.
        let cut: Box<dyn Fn() + Send + Sync> = Box::new(move || {
            std::fs::File::options().write(true).open(&payload).unwrap().set_len(0).unwrap();
        });
        let mut sink = Held {
            sink: StoreSink::new(&target.store, &target.runtime),
            store: target.store.clone(),
            runtime: target.runtime.handle().clone(),
            seen: seen.clone(),
            then: Mutex::new(Some(cut)),
        };
        let built = build(&recipe, &opts(&tmp.path().join("work")), &mut sink, &Quiet);
        let what = target.store.describe().to_string();
        let error = format!("{:?}", built.err().unwrap());
        assert!(error.contains("Shorter"), "{what}: {error}");
        assert!(seen.load(Ordering::Relaxed), "{what}: no upload began before the layer failed");
        target.assert_empty(&what);
    }
}

#[test]
fn a_stream_never_finished_is_aborted_when_the_sink_settles() {
    for target in Target::all() {
        let (_tmp, path, _) = scratch_layer(9 * MIB);
        let mut sink = StoreSink::new(&target.store, &target.runtime);
        let stream = sink.stream_blob(&path).unwrap().unwrap();
        stream.progress.written(9 * MIB);
        let what = target.store.describe().to_string();
        assert!(target.upload_began(), "{what}: the upload never began");
        // The layer's writer stops: the stream is never given back.
        drop(stream);
        sink.settle().unwrap();
        target.assert_empty(&what);
    }
}

#[test]
fn a_streamed_layer_whose_bytes_are_not_its_descriptor_publishes_nothing() {
    for target in Target::all() {
        let (_tmp, path, _) = scratch_layer(12 * MIB);
        let mut sink = StoreSink::new(&target.store, &target.runtime);
        let stream = sink.stream_blob(&path).unwrap().unwrap();
        stream.progress.written(12 * MIB);
        assert!(target.upload_began(), "{}: the upload never began", target.store.describe());
        // What the builder would name if the file changed after it was hashed.
        let claimed = layer_descriptor(Digest::of(b"other"), 12 * MIB);
        sink.start_storing_streamed(stream, &path, &claimed).unwrap();
        let what = target.store.describe().to_string();
        let error = sink.put_file(&path, &claimed).unwrap_err();
        assert!(format!("{error:?}").contains("FileMismatch"), "{what}: {error:?}");
        sink.settle().unwrap();
        let stored = target.runtime.block_on(target.store.has_blob(&claimed.digest)).unwrap();
        assert!(!stored, "{what}");
        target.assert_empty(&what);
    }
}

#[test]
fn a_streamed_layer_already_stored_is_not_published_again() {
    for target in Target::all() {
        let (_tmp, path, bytes) = scratch_layer(9 * MIB);
        let descriptor = layer_descriptor(Digest::of(&bytes), 9 * MIB);
        let put = target.store.put_blob_file(&path, &descriptor.digest, descriptor.size);
        assert!(target.runtime.block_on(put).unwrap().uploaded);
        let mut sink = StoreSink::new(&target.store, &target.runtime);
        let stream = sink.stream_blob(&path).unwrap().unwrap();
        stream.progress.written(9 * MIB);
        let what = target.store.describe().to_string();
        assert!(target.upload_began(), "{what}: the upload never began");
        sink.start_storing_streamed(stream, &path, &descriptor).unwrap();
        sink.put_file(&path, &descriptor).unwrap();
        sink.settle().unwrap();
        assert_eq!((sink.uploaded, sink.present), (0, 1), "{what}");
        // The blob as it was, and no upload left behind.
        let report = target.check();
        assert_eq!((report.blobs, report.problems.clone()), (1, vec![]), "{what}: {report:?}");
    }
}

#[test]
fn a_streamed_layer_whose_upload_a_gc_without_grace_took_is_stored_all_the_same() {
    // The staging key of a layer uploaded while it is compressed names no digest, so the
    // build's lease does not keep it from a gc with no grace: the layer is sent again whole,
    // under its leased digest, and the build goes on.
    for target in Target::all() {
        let (_tmp, path, bytes) = scratch_layer(9 * MIB);
        let descriptor = layer_descriptor(Digest::of(&bytes), 9 * MIB);
        let lease = target.runtime.block_on(target.store.lease()).unwrap();
        let mut sink = StoreSink::new(&target.store, &target.runtime);
        sink.lease = Some(&lease);
        let stream = sink.stream_blob(&path).unwrap().unwrap();
        stream.progress.written(9 * MIB);
        let what = target.store.describe().to_string();
        assert!(target.upload_began(), "{what}: the upload never began");
        let gc = kiln_store::GcOptions { grace: Duration::ZERO, dry_run: false };
        let report = target.runtime.block_on(target.store.gc(gc)).unwrap();
        assert_eq!(report.multipart_uploads_aborted, 1, "{what}: {report:?}");
        sink.start_storing_streamed(stream, &path, &descriptor).unwrap();
        sink.put_file(&path, &descriptor).unwrap();
        sink.settle().unwrap();
        assert_eq!((sink.uploaded, sink.present), (1, 0), "{what}");
        let stored = target.runtime.block_on(target.store.verify_blob(&descriptor.digest));
        assert_eq!(stored.unwrap(), descriptor.size, "{what}");
        target.runtime.block_on(lease.release()).unwrap();
        let report = target.check();
        assert_eq!((report.blobs, report.problems.clone()), (1, vec![]), "{what}: {report:?}");
        if let Some(keys) = target.keys() {
            assert_eq!(keys, vec![format!("blobs/sha256/{}", descriptor.digest.hex())], "{what}");
        }
    }
}

#[test]
fn a_streamed_layer_over_corrupt_bytes_under_its_digest_moves_them_aside_and_is_published() {
    // Bytes of the wrong size under the layer's key are no blob to reuse: found while the
    // last parts go up, they are quarantined and the streamed layer is published in their
    // place. (memory:// gives no raw access to plant them.)
    for target in Target::all() {
        let Some(raw) = target.raw.clone() else { continue };
        let (_tmp, path, bytes) = scratch_layer(9 * MIB);
        let descriptor = layer_descriptor(Digest::of(&bytes), 9 * MIB);
        let key =
            object_store::path::Path::from(format!("blobs/sha256/{}", descriptor.digest.hex()));
        let planted = bytes::Bytes::from_static(b"not the layer");
        target.runtime.block_on(raw.put(&key, planted.into())).unwrap();
        let mut sink = StoreSink::new(&target.store, &target.runtime);
        let stream = sink.stream_blob(&path).unwrap().unwrap();
        stream.progress.written(9 * MIB);
        let what = target.store.describe().to_string();
        assert!(target.upload_began(), "{what}: the upload never began");
        sink.start_storing_streamed(stream, &path, &descriptor).unwrap();
        sink.put_file(&path, &descriptor).unwrap();
        sink.settle().unwrap();
        assert_eq!((sink.uploaded, sink.present, sink.healed.len()), (1, 0, 1), "{what}");
        let stored = target.runtime.block_on(target.store.verify_blob(&descriptor.digest));
        assert_eq!(stored.unwrap(), descriptor.size, "{what}");
        let keys = target.keys().unwrap();
        let staged = keys.iter().filter(|k| k.starts_with("uploads/")).count();
        assert_eq!(staged, 0, "{what}: {keys:?}");
        assert_eq!(keys.iter().filter(|k| k.starts_with("quarantine/")).count(), 1, "{what}");
    }
}

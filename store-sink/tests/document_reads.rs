//! An unchanged build reads its config, manifest and index back at once, not one after
//! another: on a store that holds each read of a document until all of them are asked for,
//! the rebuild goes through without waiting out the hold, and writes nothing.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use kiln_builder::{build, Recipe};
use kiln_store::Store;
use kiln_store_sink::StoreSink;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use support::{opts, Quiet};

/// How long a held read waits for the others before it gives up and the test fails: far
/// beyond what reads sent together take, so only reads sent one after another reach it.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);

/// An in-memory store whose reads of the armed keys are each held until every armed key has
/// been asked for; it counts the writes it serves.
#[derive(Debug)]
struct Gate {
    inner: InMemory,
    armed: Mutex<BTreeSet<Key>>,
    asked: watch::Sender<BTreeSet<Key>>,
    gave_up: AtomicBool,
    writes: AtomicU64,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            inner: InMemory::new(),
            armed: Mutex::default(),
            asked: watch::Sender::new(BTreeSet::new()),
            gave_up: AtomicBool::new(false),
            writes: AtomicU64::new(0),
        }
    }

    fn write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Holds a read of `key`, if armed, until every armed key has been read.
    async fn hold(&self, key: &Key) {
        let armed = self.armed.lock().unwrap().clone();
        if !armed.contains(key) {
            return;
        }
        self.asked.send_modify(|asked| {
            asked.insert(key.clone());
        });
        let mut asked = self.asked.subscribe();
        let all = async { asked.wait_for(|asked| armed.is_subset(asked)).await.is_ok() };
        if !tokio::time::timeout(HOLD_AT_MOST, all).await.unwrap_or(false) {
            self.gave_up.store(true, Ordering::Relaxed);
        }
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gate({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Gate {
    async fn put_opts(&self, l: &Key, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        self.write();
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Key,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.write();
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Key, o: GetOptions) -> Result<GetResult> {
        if !o.head {
            self.hold(l).await;
        }
        self.inner.get_opts(l, o).await
    }
    async fn delete(&self, l: &Key) -> Result<()> {
        self.write();
        self.inner.delete(l).await
    }
    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &Key, to: &Key) -> Result<()> {
        self.write();
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(&self, from: &Key, to: &Key) -> Result<()> {
        self.write();
        self.inner.copy_if_not_exists(from, to).await
    }
}

fn recipe(dir: &Path) -> Recipe {
    let text = "epoch = 1700000000\n[image]\nname = \"docs\"\nversion = \"1\"\n\
                platforms = [\"linux/amd64\"]\n\
                [[layer]]\nname = \"motd\"\ninline = [{ dest = \"/etc/motd\", content = \"hi\" }]\n\
                [[layer]]\nname = \"issue\"\ninline = [{ dest = \"/etc/issue\", content = \"k\" }]\n";
    std::fs::write(dir.join("r.toml"), text).unwrap();
    Recipe::load(&dir.join("r.toml")).unwrap()
}

#[test]
fn an_unchanged_build_reads_its_documents_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = recipe(tmp.path());
    let runtime = Runtime::new().unwrap();
    let gate = Arc::new(Gate::new());
    let store = Store::from_object_store(gate.clone(), "memory://");

    let mut sink = StoreSink::new(&store, &runtime);
    let first = build(&recipe, &opts(&tmp.path().join("work-1")), &mut sink, &Quiet).unwrap();
    assert_eq!(sink.uploaded, 5);
    // The config, manifest and index, as stored by the first build.
    let documents: BTreeSet<Key> =
        sink.documents.keys().map(|d| Key::from(format!("blobs/sha256/{}", d.hex()))).collect();
    assert_eq!(documents.len(), 3, "{documents:?}");
    *gate.armed.lock().unwrap() = documents.clone();
    let writes = gate.writes.load(Ordering::Relaxed);

    // Another sink, as another runner's: nothing of the first is remembered.
    let mut sink = StoreSink::new(&store, &runtime);
    let again = build(&recipe, &opts(&tmp.path().join("work-2")), &mut sink, &Quiet).unwrap();
    assert_eq!(again.index, first.index);
    assert_eq!((sink.uploaded, sink.present), (0, 5));
    assert_eq!(*gate.asked.borrow(), documents, "every document is read back");
    assert!(!gate.gave_up.load(Ordering::Relaxed), "a document was read only after another");
    assert_eq!(gate.writes.load(Ordering::Relaxed), writes, "an unchanged build writes nothing");
}

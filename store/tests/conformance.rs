//! One body per store behaviour, run against every backend (object_store's conformance style).
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use kiln_oci::{media_type, Descriptor, Digest};
use kiln_store::cache::{
    CacheLookup, CacheRecord, CacheSigner, CacheTrust, EntrySignature, Refusal,
};
use kiln_store::{NameError, Reference, RepoName, Store, StoreError, Tag};
use kiln_test_servers::Server;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::ObjectStore;
use tempfile::TempDir;

#[path = "conformance/maintenance.rs"]
mod maintenance;
use maintenance::*;
#[path = "conformance/heal.rs"]
mod heal;
use heal::*;

/// A store plus raw access to its backend, so tests can look behind the API.
struct Fixture {
    store: Store,
    raw: Arc<dyn ObjectStore>,
    /// The server of a cloud backend.
    server: Option<&'static Server>,
    /// Set for the folder backend: the store's root on disk.
    root: Option<std::path::PathBuf>,
    /// Scratch space for local files; also holds the folder store.
    tmp: TempDir,
}

impl Fixture {
    fn memory() -> Fixture {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = Store::from_object_store(raw.clone(), "memory://");
        Fixture { store, raw, server: None, root: None, tmp: tempfile::tempdir().unwrap() }
    }

    fn folder() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let store = Store::open(root.to_str().unwrap()).unwrap();
        let raw: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&root).unwrap());
        Fixture { store, raw, server: None, root: Some(root), tmp }
    }

    /// A fresh prefix in a shared test server's bucket; `None` when it is unavailable
    /// outside CI (the harness says why).
    fn cloud(server: Option<&'static Server>) -> Option<Fixture> {
        let server = server?;
        let location = server.fresh_location();
        let store = Store::open_with_options(&location, &server.options()).unwrap();
        let raw = server.raw(&location);
        Some(Fixture {
            store,
            raw,
            server: Some(server),
            root: None,
            tmp: tempfile::tempdir().unwrap(),
        })
    }

    /// Another, empty store on the same kind of backend.
    fn sibling(&self) -> Store {
        static SIBLINGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        if self.root.is_some() {
            let n = SIBLINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Store::open(self.tmp.path().join(format!("sibling-{n}")).to_str().unwrap())
                .unwrap();
        }
        if let Some(server) = self.server {
            return Store::open_with_options(&server.fresh_location(), &server.options()).unwrap();
        }
        Store::open("memory://").unwrap()
    }

    /// Every key in the backend, sorted.
    async fn keys(&self) -> Vec<String> {
        let metas: Vec<_> = self.raw.list(None).try_collect().await.unwrap();
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        keys
    }

    /// For the folder backend, every regular file under the root, including the `#`-suffixed
    /// multipart part files that `list` hides; for memory, the same as [`Fixture::keys`].
    async fn files(&self) -> Vec<String> {
        let Some(root) = &self.root else { return self.keys().await };
        let mut found = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    found.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    /// Flips one byte of the object at `key`, behind the store's back.
    async fn corrupt(&self, key: &str) {
        match &self.root {
            Some(root) => {
                let path = root.join(key);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[0] ^= 1;
                std::fs::write(&path, bytes).unwrap();
            }
            None => {
                let key = Key::from(key);
                let mut bytes = self.raw.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
                bytes[0] ^= 1;
                self.raw.put(&key, bytes.into()).await.unwrap();
            }
        }
    }

    /// Writes `content` to a scratch file and returns its path.
    fn file(&self, name: &str, content: &[u8]) -> std::path::PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

fn blob_key(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Deterministic, non-repeating-looking content of `len` bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
}

async fn put_get_round_trip(f: Fixture) {
    let out = f.store.put_blob(Bytes::from_static(b"hello kiln")).await.unwrap();
    assert_eq!(out.digest, Digest::of(b"hello kiln"));
    assert_eq!(out.size, 10);
    assert!(out.uploaded);
    assert_eq!(f.store.get_blob(&out.digest).await.unwrap(), Bytes::from_static(b"hello kiln"));
    let missing = Digest::of(b"nope");
    assert!(!f.store.has_blob(&missing).await.unwrap());
    assert_eq!(f.store.has_blobs(&[out.digest, missing]).await.unwrap(), vec![true, false]);
    match f.store.get_blob(&missing).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, blob_key(&missing)),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.keys().await, vec![blob_key(&out.digest)]);
}

async fn second_put_does_not_rewrite(f: Fixture) {
    let bytes = Bytes::from_static(b"once");
    let first = f.store.put_blob(bytes.clone()).await.unwrap();
    let key = Key::from(blob_key(&first.digest));
    let before = f.raw.head(&key).await.unwrap();
    let second = f.store.put_blob(bytes).await.unwrap();
    assert!(first.uploaded);
    assert!(!second.uploaded);
    assert_eq!(second.digest, first.digest);
    let after = f.raw.head(&key).await.unwrap();
    assert_eq!((before.e_tag, before.last_modified), (after.e_tag, after.last_modified));
}

async fn put_file_large_uses_multipart(f: Fixture) {
    let content = pattern(9 * 1024 * 1024 + 17);
    let digest = Digest::of(&content);
    let path = f.file("large", &content);
    let out = f.store.put_blob_file(&path, &digest, content.len() as u64).await.unwrap();
    assert!(out.uploaded);
    assert_eq!(f.store.get_blob(&digest).await.unwrap(), content);
    // The staging key is gone: only the blob remains.
    assert_eq!(f.files().await, vec![blob_key(&digest)]);
    let again = f.store.put_blob_file(&path, &digest, content.len() as u64).await.unwrap();
    assert!(!again.uploaded);
}

async fn put_file_small(f: Fixture) {
    let content = pattern(4096);
    let digest = Digest::of(&content);
    let path = f.file("small", &content);
    let out = f.store.put_blob_file(&path, &digest, 4096).await.unwrap();
    assert!(out.uploaded);
    assert_eq!(out.digest, digest);
    assert_eq!(f.store.get_blob(&digest).await.unwrap(), content);
    assert_eq!(f.keys().await, vec![blob_key(&digest)]);
}

async fn put_file_wrong_digest_publishes_nothing(f: Fixture) {
    let wrong = Digest::of(b"something else");
    for (name, len) in [("small", 1000), ("large", 9 * 1024 * 1024)] {
        let content = pattern(len);
        let path = f.file(name, &content);
        match f.store.put_blob_file(&path, &wrong, len as u64).await {
            Err(StoreError::FileMismatch { found, .. }) => assert_eq!(found, Digest::of(&content)),
            other => panic!("{name}: {other:?}"),
        }
        match f.store.put_blob_file(&path, &Digest::of(&content), len as u64 + 1).await {
            Err(StoreError::FileSize { found_size, .. }) => assert_eq!(found_size, len as u64),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Nothing under blobs/, and no staging object or part file left under uploads/ either.
    assert_eq!(f.files().await, Vec::<String>::new());
}

async fn corrupt_blob_is_refused(f: Fixture) {
    let content = pattern(100_000);
    let out = f.store.put_blob(Bytes::from(content)).await.unwrap();
    let key = blob_key(&out.digest);
    f.corrupt(&key).await;
    let err = f.store.get_blob(&out.digest).await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&key) && msg.contains("corrupt") && msg.contains("delete"), "{msg}");

    let target = f.tmp.path().join("export");
    let err = f.store.copy_blob_to(&out.digest, &target).await.unwrap_err();
    assert!(err.to_string().contains(&key), "{err}");
    assert!(!target.exists(), "a corrupt copy must not be left behind");
}

async fn copy_blob_to_file(f: Fixture) {
    let content = pattern(3 * 1024 * 1024);
    let out = f.store.put_blob(Bytes::from(content.clone())).await.unwrap();
    let target = f.tmp.path().join("export");
    assert_eq!(f.store.copy_blob_to(&out.digest, &target).await.unwrap(), content.len() as u64);
    assert_eq!(std::fs::read(&target).unwrap(), content);
    // A missing blob leaves an existing target alone.
    let missing = Digest::of(b"missing");
    assert!(matches!(
        f.store.copy_blob_to(&missing, &target).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(target.exists());
}

async fn refs_set_get_list_overwrite(f: Fixture) {
    let name: RepoName = "kiln/base".parse().unwrap();
    let other: RepoName = "kiln/app".parse().unwrap();
    let (v1, v2): (Tag, Tag) = ("1.0".parse().unwrap(), "2.0".parse().unwrap());
    let d1 = Descriptor::new(media_type::IMAGE_MANIFEST, Digest::of(b"m1"), 10);
    let d2 = Descriptor::new(media_type::IMAGE_INDEX, Digest::of(b"m2"), 20);

    assert_eq!(f.store.get_ref(&name, &v1).await.unwrap(), None);
    f.store.set_ref(&name, &v2, &d1).await.unwrap();
    f.store.set_ref(&name, &v1, &d1).await.unwrap();
    f.store.set_ref(&other, &v1, &d2).await.unwrap();
    assert_eq!(f.store.get_ref(&name, &v1).await.unwrap(), Some(d1.clone()));

    // A tag moves.
    f.store.set_ref(&name, &v1, &d2).await.unwrap();
    assert_eq!(f.store.get_ref(&name, &v1).await.unwrap(), Some(d2.clone()));

    let listed = f.store.list_refs().await.unwrap();
    assert_eq!(
        listed,
        vec![
            (other.clone(), v1.clone(), d2.clone()),
            (name.clone(), v1.clone(), d2.clone()),
            (name.clone(), v2.clone(), d1.clone()),
        ]
    );
    // The stored bytes are the canonical JSON of the descriptor.
    let raw = f.raw.get(&Key::from("refs/kiln/base/2.0")).await.unwrap().bytes().await.unwrap();
    assert_eq!(raw, kiln_oci::to_canonical_json(&d1).unwrap());

    let tagged: Reference = "kiln/base:2.0".parse().unwrap();
    assert_eq!(f.store.resolve(&tagged).await.unwrap(), d1);
    let absent: Reference = "kiln/base:9".parse().unwrap();
    assert!(matches!(f.store.resolve(&absent).await, Err(StoreError::NotFound { .. })));
}

async fn resolve_digest_reads_the_blob(f: Fixture) {
    let manifest =
        br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}"#;
    let out = f.store.put_blob(Bytes::from_static(manifest)).await.unwrap();
    let want = Descriptor::new(media_type::IMAGE_MANIFEST, out.digest, manifest.len() as u64);
    let bare = Reference::Digest(out.digest);
    assert_eq!(f.store.resolve(&bare).await.unwrap(), want);
    let pinned: Reference = format!("kiln/base@{}", out.digest).parse().unwrap();
    assert_eq!(f.store.resolve(&pinned).await.unwrap(), want);
    let value: serde_json::Value = f.store.get_json(&out.digest).await.unwrap();
    assert_eq!(value["schemaVersion"], 2);

    let plain = f.store.put_blob(Bytes::from_static(b"{}")).await.unwrap();
    assert!(matches!(
        f.store.resolve(&Reference::Digest(plain.digest)).await,
        Err(StoreError::NoMediaType { .. })
    ));
}

async fn empty_store(f: Fixture) {
    assert_eq!(f.store.list_refs().await.unwrap(), vec![]);
    assert_eq!(f.store.has_blobs(&[]).await.unwrap(), Vec::<bool>::new());
    let name: RepoName = "kiln".parse().unwrap();
    assert_eq!(f.store.get_ref(&name, &"latest".parse().unwrap()).await.unwrap(), None);
}

async fn has_blobs_keeps_order(f: Fixture) {
    let mut digests = Vec::new();
    let mut want = Vec::new();
    for i in 0..40u32 {
        let bytes = Bytes::from(i.to_le_bytes().to_vec());
        if i % 3 == 0 {
            f.store.put_blob(bytes.clone()).await.unwrap();
        }
        digests.push(Digest::of(&bytes));
        want.push(i % 3 == 0);
    }
    assert_eq!(f.store.has_blobs(&digests).await.unwrap(), want);
}

/// A stand-in signer: its "signature" is the digest of its name and the payload, which only
/// [`TestTrust`] checks. Real keys are kiln-attest's; the store only carries signatures.
struct TestSigner(&'static str);

impl TestSigner {
    fn id(&self) -> Digest {
        Digest::of(self.0.as_bytes())
    }
    fn sig(&self, payload: &[u8]) -> String {
        Digest::of(&[self.0.as_bytes(), payload].concat()).to_string()
    }
}

impl CacheSigner for TestSigner {
    fn sign_entry(&self, payload: &[u8]) -> EntrySignature {
        EntrySignature { keyid: self.id(), sig: self.sig(payload) }
    }
}

struct TestTrust(TestSigner);

impl CacheTrust for TestTrust {
    fn vouches(&self, signature: &EntrySignature, payload: &[u8]) -> bool {
        signature.keyid == self.0.id() && signature.sig == self.0.sig(payload)
    }
}

fn layer_record(key: &Digest, blob: &kiln_store::PutOutcome) -> CacheRecord {
    CacheRecord {
        kind: "layer".into(),
        key: *key,
        output: Descriptor::new(media_type::LAYER_TAR_GZIP, blob.digest, blob.size),
        diff_id: Some(Digest::of(b"tar")),
    }
}

async fn lookup(f: &Fixture, key: &Digest, trust: Option<&dyn CacheTrust>) -> CacheLookup {
    f.store
        .cache_lookups("layer", std::slice::from_ref(key), trust, None, false)
        .await
        .unwrap()
        .remove(0)
}

async fn cache_entries_are_checked_before_use(f: Fixture) {
    let (k1, k2) = (Digest::of(b"inputs 1"), Digest::of(b"inputs 2"));
    assert_eq!(lookup(&f, &k1, None).await, CacheLookup::Miss);
    let b1 = f.store.put_blob(Bytes::from_static(b"layer one")).await.unwrap();
    let b2 = f.store.put_blob(Bytes::from_static(b"layer two!")).await.unwrap();
    let ours = TestSigner("ours");
    f.store.put_cache_entry(layer_record(&k1, &b1), Some(&ours)).await.unwrap();
    f.store.put_cache_entry(layer_record(&k2, &b2), None).await.unwrap();
    let trust = TestTrust(TestSigner("ours"));

    // Without trusted keys any well-formed entry about its key counts; with them, only signed.
    let hit = |record, vouched_by| CacheLookup::Hit { record: Box::new(record), vouched_by };
    assert_eq!(lookup(&f, &k1, None).await, hit(layer_record(&k1, &b1), None));
    assert_eq!(lookup(&f, &k1, Some(&trust)).await, hit(layer_record(&k1, &b1), Some(ours.id())));
    assert_eq!(
        lookup(&f, &k2, Some(&trust)).await,
        CacheLookup::Refused(Refusal::Untrusted { signatures: 0 })
    );
    let theirs = TestSigner("theirs");
    f.store.put_cache_entry(layer_record(&k2, &b2), Some(&theirs)).await.unwrap();
    assert_eq!(
        lookup(&f, &k2, Some(&trust)).await,
        CacheLookup::Refused(Refusal::Untrusted { signatures: 1 })
    );

    // Swapping two entries' bytes: each now describes the other key.
    let (p1, p2) = (
        Key::from(format!("cache/layer/{}", k1.hex())),
        Key::from(format!("cache/layer/{}", k2.hex())),
    );
    let e1 = f.raw.get(&p1).await.unwrap().bytes().await.unwrap();
    let e2 = f.raw.get(&p2).await.unwrap().bytes().await.unwrap();
    f.raw.put(&p1, e2.into()).await.unwrap();
    f.raw.put(&p2, e1.into()).await.unwrap();
    for (key, other) in [(&k1, k2), (&k2, k1)] {
        let want = Refusal::WrongKey { found_kind: "layer".into(), found: other };
        assert_eq!(lookup(&f, key, None).await, CacheLookup::Refused(want));
    }

    // A wrong size, a missing blob, or bytes that are no entry: refused, trusted or not.
    let mut wrong = layer_record(&k1, &b1);
    wrong.output.size += 1;
    f.store.put_cache_entry(wrong, Some(&ours)).await.unwrap();
    let want = Refusal::WrongSize { digest: b1.digest, recorded: b1.size + 1, stored: b1.size };
    assert_eq!(lookup(&f, &k1, Some(&trust)).await, CacheLookup::Refused(want));
    let mut missing = layer_record(&k1, &b1);
    missing.output.digest = Digest::of(b"never stored");
    f.store.put_cache_entry(missing, Some(&ours)).await.unwrap();
    let want = Refusal::MissingBlob { digest: Digest::of(b"never stored") };
    assert_eq!(lookup(&f, &k1, None).await, CacheLookup::Refused(want));
    f.raw.put(&p1, Bytes::from(format!("{{\"digest\":\"{}\"}}", b1.digest)).into()).await.unwrap();
    assert!(matches!(lookup(&f, &k1, None).await, CacheLookup::Refused(Refusal::Malformed { .. })));

    // A signature covers the whole record: editing its diff_id breaks it.
    f.store.put_cache_entry(layer_record(&k1, &b1), Some(&ours)).await.unwrap();
    let edited = String::from_utf8(f.raw.get(&p1).await.unwrap().bytes().await.unwrap().to_vec())
        .unwrap()
        .replace(&Digest::of(b"tar").to_string(), &Digest::of(b"other tar").to_string());
    f.raw.put(&p1, Bytes::from(edited).into()).await.unwrap();
    assert_eq!(
        lookup(&f, &k1, Some(&trust)).await,
        CacheLookup::Refused(Refusal::Untrusted { signatures: 1 })
    );

    for bad in ["", "Layer", "a/b", "..", "x_y"] {
        assert!(matches!(
            f.store.cache_lookups(bad, &[k1], None, None, false).await,
            Err(StoreError::InvalidCacheKind { .. })
        ));
        let record = CacheRecord { kind: bad.into(), ..layer_record(&k1, &b1) };
        assert!(matches!(
            f.store.put_cache_entry(record, None).await,
            Err(StoreError::InvalidCacheKind { .. })
        ));
    }
}

async fn an_unsigned_cache_entry_never_replaces_a_signed_one(f: Fixture) {
    let (k1, k2) = (Digest::of(b"inputs 1"), Digest::of(b"inputs 2"));
    let b1 = f.store.put_blob(Bytes::from_static(b"layer one")).await.unwrap();
    let b2 = f.store.put_blob(Bytes::from_static(b"layer two!")).await.unwrap();
    let ours = TestSigner("ours");
    let trust = TestTrust(TestSigner("ours"));
    let hit = |record, vouched_by| CacheLookup::Hit { record: Box::new(record), vouched_by };
    let path = |k: &Digest| Key::from(format!("cache/layer/{}", k.hex()));
    let raw = f.raw.clone();
    let stored = |k: Digest| {
        let raw = raw.clone();
        async move { raw.get(&path(&k)).await.unwrap().bytes().await.unwrap() }
    };

    // A signed entry stays, whatever the unsigned writer records (even another blob).
    f.store.put_cache_entry(layer_record(&k1, &b1), Some(&ours)).await.unwrap();
    let signed = stored(k1).await;
    f.store.put_cache_entry(layer_record(&k1, &b1), None).await.unwrap();
    let mut other = layer_record(&k1, &b1);
    other.output = Descriptor::new(media_type::LAYER_TAR_GZIP, b2.digest, b2.size);
    f.store.put_cache_entry(other.clone(), None).await.unwrap();
    assert_eq!(stored(k1).await, signed);
    assert_eq!(lookup(&f, &k1, Some(&trust)).await, hit(layer_record(&k1, &b1), Some(ours.id())));

    // Unsigned replaces unsigned, a signed entry about another key, or bytes that are no
    // entry; and a signed writer replaces anything.
    f.store.put_cache_entry(layer_record(&k2, &b2), None).await.unwrap();
    let mut unsigned_b1 = layer_record(&k2, &b1);
    unsigned_b1.diff_id = Some(Digest::of(b"other tar"));
    f.store.put_cache_entry(unsigned_b1.clone(), None).await.unwrap();
    assert_eq!(lookup(&f, &k2, None).await, hit(unsigned_b1, None));
    f.raw.put(&path(&k2), signed.clone().into()).await.unwrap();
    f.store.put_cache_entry(layer_record(&k2, &b2), None).await.unwrap();
    assert_eq!(lookup(&f, &k2, None).await, hit(layer_record(&k2, &b2), None));
    f.raw.put(&path(&k2), Bytes::from_static(b"{}").into()).await.unwrap();
    f.store.put_cache_entry(layer_record(&k2, &b2), None).await.unwrap();
    assert_eq!(lookup(&f, &k2, None).await, hit(layer_record(&k2, &b2), None));
    f.store.put_cache_entry(other.clone(), Some(&ours)).await.unwrap();
    assert_eq!(lookup(&f, &k1, Some(&trust)).await, hit(other, Some(ours.id())));
}

async fn concurrent_puts_of_same_content(f: Fixture) {
    let content = Bytes::from(pattern(2 * 1024 * 1024));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, content) = (f.store.clone(), content.clone());
            tokio::spawn(async move { store.put_blob(content).await })
        })
        .collect();
    let mut uploaded = 0;
    for task in tasks {
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.digest, Digest::of(&content));
        uploaded += usize::from(out.uploaded);
    }
    assert!(uploaded >= 1, "someone must have written the blob");
    assert_eq!(f.store.get_blob(&Digest::of(&content)).await.unwrap(), content);
    assert_eq!(f.keys().await, vec![blob_key(&Digest::of(&content))]);
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::memory()).await
                }
            )*
        }
        mod folder {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::folder()).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(fixture) = super::Fixture::cloud(kiln_test_servers::s3()) {
                        super::$test(fixture).await
                    }
                }
            )*
        }
        mod azure {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(fixture) = super::Fixture::cloud(kiln_test_servers::azure()) {
                        super::$test(fixture).await
                    }
                }
            )*
        }
    };
}

conformance!(
    put_get_round_trip,
    second_put_does_not_rewrite,
    put_file_large_uses_multipart,
    put_file_small,
    put_file_wrong_digest_publishes_nothing,
    corrupt_blob_is_refused,
    copy_blob_to_file,
    refs_set_get_list_overwrite,
    resolve_digest_reads_the_blob,
    cache_entries_are_checked_before_use,
    an_unsigned_cache_entry_never_replaces_a_signed_one,
    check_reports_bad_cache_entries,
    gc_keeps_what_a_live_lease_names,
    a_lease_records_nothing_the_tag_keeps_until_the_tag_moves,
    a_lease_reading_its_tag_meanwhile_names_nothing_before_it_knows_what_it_keeps,
    a_leased_handle_names_every_blob_it_writes,
    gc_empties_the_quarantine_after_the_grace,
    copy_sends_again_what_a_gc_it_raced_took,
    unfinished_multipart_uploads_are_reported_and_aborted,
    multipart_uploads_no_record_names_are_aborted,
    empty_store,
    has_blobs_keeps_order,
    concurrent_puts_of_same_content,
    check_reports_corrupt_and_missing_blobs,
    gc_deletes_exactly_the_unreachable_past_grace,
    copy_sends_only_what_the_target_lacks,
    copy_from_a_folder_refuses_bytes_that_are_not_their_digest,
    reads_by_descriptor_check_the_size,
    reuse_is_judged_by_size_date_and_on_demand_content,
    a_checked_put_replaces_corrupt_bytes,
    check_reads_descriptor_sizes_and_referrers_and_repair_settles_them,
);

#[test]
fn open_memory_and_describe() {
    let store = Store::open("memory://").unwrap();
    assert_eq!(store.describe(), "memory://");
    let err = Store::open("ftp://host/prefix").unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { ref scheme, .. } if scheme == "ftp"), "{err}");
}

#[test]
fn missing_folder_is_created_and_described_as_a_file_url() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("new/store").to_str().unwrap()).unwrap();
    assert!(tmp.path().join("new/store").is_dir());
    assert!(store.describe().starts_with("file:///"), "{}", store.describe());
}

#[test]
fn invalid_names_are_typed_errors() {
    assert!(matches!("Kiln/Base".parse::<RepoName>(), Err(NameError::InvalidNameComponent { .. })));
    assert!(matches!("kiln/../x".parse::<RepoName>(), Err(NameError::InvalidNameComponent { .. })));
    assert_eq!("".parse::<RepoName>(), Err(NameError::EmptyName));
    assert_eq!("".parse::<Tag>(), Err(NameError::EmptyTag));
    assert!(matches!("t".repeat(129).parse::<Tag>(), Err(NameError::TagTooLong { .. })));
    assert!(matches!("..".parse::<Tag>(), Err(NameError::InvalidTag { .. })));
    assert!(matches!("kiln".parse::<Reference>(), Err(NameError::MissingTagOrDigest { .. })));
    assert!(matches!("kiln@sha256:12".parse::<Reference>(), Err(NameError::Digest { .. })));
    assert!(matches!("Kiln:1".parse::<Reference>(), Err(NameError::InvalidNameComponent { .. })));
}

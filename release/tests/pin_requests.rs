//! Finding a channel's head costs a fixed number of store requests whatever the history's
//! length: `pin` of a channel is counted on a store that counts every request it serves.
#![allow(clippy::unwrap_used)]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use kiln_attest::{KeyType, PrivateKey};
use kiln_oci::{media_type, Digest};
use kiln_release::channel::{self, Action, ChannelRef};
use kiln_release::pin::{self, Target};
use kiln_release::policy::Policy;
use kiln_release::record::{self, Blob, BuiltBy, Release};
use kiln_release::revocation;
use kiln_store::Store;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// An in-memory store that counts the requests it serves.
#[derive(Debug, Default)]
struct Counting {
    inner: InMemory,
    requests: AtomicU64,
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

impl Counting {
    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        self.count();
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.count();
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        self.count();
        self.inner.get_opts(l, o).await
    }
    async fn delete(&self, l: &Path) -> Result<()> {
        self.count();
        self.inner.delete(l).await
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count();
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.count();
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.count();
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.count();
        self.inner.copy_if_not_exists(from, to).await
    }
}

fn blob(seed: &[u8]) -> Blob {
    Blob { media_type: media_type::IMAGE_INDEX.to_string(), digest: Digest::of(seed), size: 1 }
}

#[test]
fn pinning_a_channel_costs_the_same_few_requests_at_any_length() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let counting = Arc::new(Counting::default());
        let store = Store::from_object_store(counting.clone(), "memory://");
        let release = Release {
            schema: record::SCHEMA.to_string(),
            name: "app".to_string(),
            version: "1".to_string(),
            image: blob(b"index"),
            platforms: Vec::new(),
            signatures: Vec::new(),
            provenance: Vec::new(),
            recipe: Digest::of(b"recipe"),
            lock: Digest::of(b"lock"),
            source_date_epoch: 0,
            builder: BuiltBy {
                name: "kiln".to_string(),
                version: "0".to_string(),
                format: "1".to_string(),
            },
        };
        let id = record::publish(&store, &release).await.unwrap().id;
        let key = PrivateKey::generate(KeyType::Ed25519).unwrap();
        let actor = key.public().key_id().unwrap().0;
        let ch: ChannelRef = "prod/app".parse().unwrap();
        let mut requests_at = Vec::new();
        let mut length = 0;
        for target in [10, 2000, 2000] {
            if requests_at.len() == 2 {
                // The last count is with a revocation log (of another release) to consult.
                let other = Release { version: "2".to_string(), ..release.clone() };
                let other = record::publish(&store, &other).await.unwrap();
                let dir = tempfile::tempdir().unwrap();
                key.public().write(&dir.path().join("k.pub")).unwrap();
                let policy = dir.path().join("policy.toml");
                std::fs::write(
                    &policy,
                    "revokers = [\"k.pub\"]\n[channels.prod]\nkeys = [\"k.pub\"]\n",
                )
                .unwrap();
                let policy = Policy::load(&policy).unwrap();
                revocation::revoke(&store, &other, &key, &policy, "test").await.unwrap();
            }
            while length < target {
                channel::append(&store, &ch, &key, &[], |head| {
                    Ok(channel::next_entry(&ch, head, Action::Promote, id, "1", actor, "", id))
                })
                .await
                .unwrap();
                length += 1;
            }
            let before = counting.requests.load(Ordering::Relaxed);
            let loaded =
                pin::resolve(&store, &Target::Channel(ch.clone()), &[key.public()]).await.unwrap();
            assert_eq!(loaded.id, id);
            requests_at.push(counting.requests.load(Ordering::Relaxed) - before);
        }
        // The channel's checkpoint, head entry and one probe past it; the revocation log's
        // checkpoint and a probe (with revocations, the entry its checkpoint names too); the
        // release manifest and record.
        assert_eq!(
            requests_at,
            [7, 7, 8],
            "requests at 10 and 2000 entries, then with a revocation"
        );
    });
}

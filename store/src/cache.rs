//! Build cache under `cache/<kind>/<key-hex>`: input key to output description. Entries are
//! replaceable and safe to delete, so writes overwrite.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kiln_oci::Digest;

use crate::error::{Result, StoreError};
use crate::{key, Store};

/// Accepts `[a-z0-9-]+`, so a kind is always one plain key segment.
fn check_kind(kind: &str) -> Result<()> {
    let ok = !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidCacheKind { kind: kind.to_string() })
    }
}

impl Store {
    /// The cache entry for `key` in `kind`, or `None` on a miss.
    pub async fn get_cache(&self, kind: &str, key: &Digest) -> Result<Option<Bytes>> {
        check_kind(kind)?;
        let path = key::cache(kind, key);
        let got = match self.inner.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(StoreError::backend(&path, source)),
        };
        got.bytes().await.map(Some).map_err(|e| StoreError::backend(&path, e))
    }

    /// The cache entries for `keys` in `kind`, in order, read concurrently (on a remote store
    /// each is a round trip).
    pub async fn get_caches(&self, kind: &str, keys: &[Digest]) -> Result<Vec<Option<Bytes>>> {
        futures::stream::iter(keys)
            .map(|k| self.get_cache(kind, k))
            .buffered(crate::blob::SMALL_REQUESTS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Stores `value` as the cache entry for `key` in `kind`, replacing any previous one.
    pub async fn put_cache(&self, kind: &str, key: &Digest, value: Bytes) -> Result<()> {
        check_kind(kind)?;
        let path = key::cache(kind, key);
        self.inner.put(&path, value.into()).await.map_err(|e| StoreError::backend(&path, e))?;
        Ok(())
    }
}

//! What the store holds under a prefix, listed with sizes and ages, and bulk deletion.

use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;

use crate::error::{Result, StoreError};
use crate::Store;

/// Deletions in flight at once.
const DELETE_CONCURRENCY: usize = 16;

/// One object found by [`Store::list_under`].
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub key: Key,
    pub size: u64,
    /// When the backend last wrote the object (its clock, not ours).
    pub modified: SystemTime,
}

impl Store {
    /// Every object under `prefix`, in no particular order.
    pub(crate) async fn list_under(&self, prefix: &str) -> Result<Vec<Listed>> {
        let prefix = Key::from(prefix);
        self.inner
            .list(Some(&prefix))
            .map_ok(|meta| Listed {
                key: meta.location,
                size: meta.size,
                modified: meta.last_modified.into(),
            })
            .try_collect()
            .await
            .map_err(|e| StoreError::backend(&prefix, e))
    }

    /// Reads a whole object that is not a blob (a ref, cache, log or referrer entry); `None`
    /// when it vanished since it was listed.
    pub(crate) async fn read_object(&self, key: &Key) -> Result<Option<bytes::Bytes>> {
        let got = match self.inner.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(StoreError::backend(key, source)),
        };
        got.bytes().await.map(Some).map_err(|e| StoreError::backend(key, e))
    }

    /// Deletes `keys`, a bounded number at a time; a key already gone is not an error.
    pub(crate) async fn delete_all(&self, keys: Vec<Key>) -> Result<()> {
        futures::stream::iter(keys)
            .map(|key| async move {
                match self.inner.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(source) => Err(StoreError::backend(&key, source)),
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect()
            .await
    }
}

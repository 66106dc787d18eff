//! Records under `log/`: write-once entries (channel history, revocations) whose create-only
//! put is the compare-and-swap that decides which writer wins, and overwritable hints (a
//! channel's `HEAD`) that only ever speed up finding an entry and are never trusted alone.
//!
//! Keys are given relative to `log/`; the caller names them (the store knows nothing of
//! channels). Every read is bounded: an object larger than the caller's limit is refused
//! before it is held in memory.

use bytes::Bytes;
use object_store::path::Path as Key;

use crate::error::{Result, StoreError};
use crate::{key, Store};

/// What a create-only log write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// This writer's bytes are now at the key.
    Written,
    /// Something was already there: another writer won, nothing was changed.
    Taken,
}

/// `log/<rel>`, refusing an empty, `.` or `..` segment so a name never escapes `log/`.
fn log_key(rel: &str) -> Result<Key> {
    let full = format!("{}/{rel}", key::LOG);
    Key::parse(&full).map_err(|e| StoreError::InvalidLocation {
        location: full.clone(),
        reason: format!("not a clean log key: {e}"),
    })
}

impl Store {
    /// Writes `bytes` at `log/<rel>` only if nothing is there (`If-None-Match: *` on S3, a
    /// hard link on a folder): exactly one of any number of concurrent writers gets
    /// [`Created::Written`].
    pub async fn log_create(&self, rel: &str, bytes: Bytes) -> Result<Created> {
        let key = log_key(rel)?;
        Ok(if self.create(&key, bytes).await? { Created::Written } else { Created::Taken })
    }

    /// Overwrites `log/<rel>` with `bytes` (a hint such as a channel's `HEAD`). The write is
    /// whole or absent on every backend.
    pub async fn log_hint(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let key = log_key(rel)?;
        self.inner.put(&key, bytes.into()).await.map_err(|e| StoreError::backend(&key, e))?;
        Ok(())
    }

    /// Reads `log/<rel>`, or `None` when nothing is there. An object larger than `limit`
    /// bytes is refused with [`StoreError::TooLarge`] as soon as the excess arrives.
    pub async fn log_read(&self, rel: &str, limit: u64) -> Result<Option<Bytes>> {
        let key = log_key(rel)?;
        let got = match self.inner.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(StoreError::backend(&key, source)),
        };
        crate::document::read_bounded(&key, got, limit).await.map(Some)
    }

    /// The keys under `log/<rel>/`, relative to `log/`, sorted. For audits that must see
    /// every entry (a gap or a stray entry is evidence); finding a head never lists.
    pub async fn log_list(&self, rel: &str) -> Result<Vec<String>> {
        let prefix = log_key(rel)?;
        let mut keys: Vec<String> = self
            .list_under(prefix.as_ref())
            .await?
            .into_iter()
            .filter_map(|l| {
                l.key.as_ref().strip_prefix(key::LOG)?.strip_prefix('/').map(str::to_string)
            })
            .collect();
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn one_writer_wins_and_reads_are_bounded() {
        rt().block_on(async {
            let store = Store::open("memory://").unwrap();
            assert_eq!(
                store.log_create("dev/app/1", Bytes::from_static(b"a")).await.unwrap(),
                Created::Written
            );
            assert_eq!(
                store.log_create("dev/app/1", Bytes::from_static(b"b")).await.unwrap(),
                Created::Taken
            );
            assert_eq!(store.log_read("dev/app/1", 1).await.unwrap().unwrap(), &b"a"[..]);
            assert!(store.log_read("dev/app/2", 1).await.unwrap().is_none());
            store.log_hint("dev/app/HEAD", Bytes::from_static(b"12")).await.unwrap();
            store.log_hint("dev/app/HEAD", Bytes::from_static(b"123")).await.unwrap();
            assert!(matches!(
                store.log_read("dev/app/HEAD", 2).await,
                Err(StoreError::TooLarge { limit: 2, .. })
            ));
            assert_eq!(store.log_list("dev/app").await.unwrap(), ["dev/app/1", "dev/app/HEAD"]);
            assert!(store.log_create("dev/../x", Bytes::new()).await.is_err());
        });
    }
}

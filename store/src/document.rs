//! Small documents (manifests, records, envelopes) read by digest with a size bound: a digest
//! given on the command line may name a multi-GiB disk image, which must be refused by its
//! size, not read into memory to find out that it is not JSON.

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use kiln_oci::Digest;
use object_store::path::Path as Key;
use object_store::GetResult;

use crate::error::{Result, StoreError};
use crate::{key, Store};

impl Store {
    /// Reads the blob `digest`, refusing it with [`StoreError::TooLarge`] when it has more
    /// than `limit` bytes and with [`StoreError::DigestMismatch`] when it is not what its key
    /// names.
    pub async fn get_blob_bounded(&self, digest: &Digest, limit: u64) -> Result<Bytes> {
        let key = key::blob(digest);
        let got = self.inner.get(&key).await.map_err(|e| StoreError::backend(&key, e))?;
        let out = read_bounded(&key, got, limit).await?;
        let found = Digest::of(&out);
        if found != *digest {
            return Err(StoreError::DigestMismatch {
                key: key.to_string(),
                expected: *digest,
                found,
            });
        }
        Ok(out)
    }
}

/// The whole object `got` (at `key`), refused with [`StoreError::TooLarge`] when its size says
/// it has more than `limit` bytes, or as soon as more than that arrives.
pub(crate) async fn read_bounded(key: &Key, got: GetResult, limit: u64) -> Result<Bytes> {
    let too_large = || StoreError::TooLarge { key: key.to_string(), limit };
    if got.meta.size > limit {
        return Err(too_large());
    }
    let mut stream = got.into_stream();
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.try_next().await.map_err(|e| StoreError::backend(key, e))? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blobs_are_refused_by_size() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = Store::open("memory://").unwrap();
            let put = store.put_blob(Bytes::from_static(b"{\"a\":1}")).await.unwrap();
            assert_eq!(store.get_blob_bounded(&put.digest, 7).await.unwrap(), &b"{\"a\":1}"[..]);
            assert!(matches!(
                store.get_blob_bounded(&put.digest, 6).await,
                Err(StoreError::TooLarge { limit: 6, .. })
            ));
        });
    }
}

//! A blob read as a stream that verifies itself: the bytes flow as they arrive, hashed on the
//! way, and the stream ends with an error instead of its end when they were not the blob.
//! For consumers that work while reading (decompressing a layer) and must still refuse
//! content that turns out wrong, or of another size than its descriptor says.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use kiln_oci::{Descriptor, Digest, Sha256};

use object_store::GetResultPayload;

use crate::error::{Result, StoreError};
use crate::{key, Store};

struct State {
    inner: BoxStream<'static, Result<Bytes>>,
    hasher: Option<Sha256>,
    key: String,
    expected: Digest,
    expected_size: u64,
    read: u64,
}

impl Store {
    /// The blob `descriptor` names as a stream of chunks. A blob stored with another size
    /// than the descriptor's is refused before any byte flows ([`StoreError::SizeMismatch`]).
    /// Each chunk is unverified until the stream ends: its last item is
    /// [`StoreError::SizeMismatch`] or [`StoreError::DigestMismatch`] when the bytes were not
    /// the blob, so a consumer must read to the end and discard what it made from an erroring
    /// stream.
    pub async fn blob_stream(
        &self,
        descriptor: &Descriptor,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let digest = &descriptor.digest;
        let key = key::blob(digest);
        let got = self.inner.get(&key).await.map_err(|e| StoreError::backend(&key, e))?;
        crate::blob::check_size(&key, descriptor.size, got.meta.size)?;
        let inner = match got.payload {
            GetResultPayload::File(file, path) => self.chunk_pool.file_chunks(file, path),
            GetResultPayload::Stream(stream) => {
                let key = key.clone();
                stream.map(move |r| r.map_err(|e| StoreError::backend(&key, e))).boxed()
            }
        };
        let state = State {
            inner,
            hasher: Some(Sha256::new()),
            key: key::blob(digest).to_string(),
            expected: *digest,
            expected_size: descriptor.size,
            read: 0,
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            let hasher = s.hasher.as_mut()?;
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    s.read += chunk.len() as u64;
                    Some((Ok(chunk), s))
                }
                Some(Err(e)) => {
                    s.hasher = None;
                    Some((Err(e), s))
                }
                None => {
                    // The object may have changed since its size was looked at.
                    let found = s.hasher.take()?.finish();
                    let key = s.key.clone();
                    if s.read != s.expected_size {
                        let (expected, found) = (s.expected_size, s.read);
                        Some((Err(StoreError::SizeMismatch { key, expected, found }), s))
                    } else if found == s.expected {
                        None
                    } else {
                        let e = StoreError::DigestMismatch { key, expected: s.expected, found };
                        Some((Err(e), s))
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use futures::TryStreamExt as _;
    use kiln_oci::media_type;

    use super::*;
    use crate::file_chunks::FILE_CHUNK;

    #[tokio::test]
    async fn a_blob_that_shrinks_while_it_streams_ends_in_a_size_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        let bytes = vec![5u8; 3 * FILE_CHUNK];
        let put = store.put_blob(Bytes::from(bytes.clone())).await.unwrap();
        let desc = Descriptor::new(media_type::LAYER_TAR_GZIP, put.digest, put.size);
        let stream = store.blob_stream(&desc).await.unwrap();
        // The size was looked at when the stream opened; the file changes afterwards.
        let path = tmp.path().join("blobs/sha256").join(put.digest.hex());
        std::fs::write(&path, &bytes[..FILE_CHUNK]).unwrap();
        match stream.try_collect::<Vec<Bytes>>().await {
            Err(StoreError::SizeMismatch { expected, found, .. }) => {
                assert_eq!((expected, found), (put.size, FILE_CHUNK as u64));
            }
            other => panic!("{other:?}"),
        }
    }
}

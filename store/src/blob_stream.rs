//! A blob read as a stream that verifies itself: the bytes flow as they arrive, hashed on the
//! way, and the stream ends with an error instead of its end when they were not the blob.
//! For consumers that work while reading (decompressing a layer) and must still refuse
//! content that turns out wrong.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use kiln_oci::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::{key, Store};

struct State {
    inner: BoxStream<'static, Result<Bytes>>,
    hasher: Option<Sha256>,
    key: String,
    expected: Digest,
}

impl Store {
    /// The blob `digest` as a stream of chunks. Each chunk is unverified until the stream
    /// ends: its last item is [`StoreError::DigestMismatch`] when the bytes were not the blob,
    /// so a consumer must read to the end and discard what it made from an erroring stream.
    pub async fn blob_stream(&self, digest: &Digest) -> Result<BoxStream<'static, Result<Bytes>>> {
        let state = State {
            inner: self.blob_chunks(digest).await?,
            hasher: Some(Sha256::new()),
            key: key::blob(digest).to_string(),
            expected: *digest,
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            let hasher = s.hasher.as_mut()?;
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    Some((Ok(chunk), s))
                }
                Some(Err(e)) => {
                    s.hasher = None;
                    Some((Err(e), s))
                }
                None => {
                    let found = s.hasher.take()?.finish();
                    if found == s.expected {
                        None
                    } else {
                        let key = s.key.clone();
                        let e = StoreError::DigestMismatch { key, expected: s.expected, found };
                        Some((Err(e), s))
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

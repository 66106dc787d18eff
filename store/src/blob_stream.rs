//! A blob read as a stream that verifies itself: the bytes flow as they arrive, hashed on the
//! way, and the stream ends with an error instead of its end when they were not the blob.
//! For consumers that work while reading (decompressing a layer) and must still refuse
//! content that turns out wrong.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use kiln_oci::{Digest, Sha256};

use object_store::GetResultPayload;

use crate::error::{Result, StoreError};
use crate::{key, Store};

/// How much of a local blob file one chunk carries: object_store's own file stream reads
/// 8 KiB per blocking task, which cost a layer read more system time than its hashing.
const FILE_CHUNK: usize = 1024 * 1024;

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
        let key = key::blob(digest);
        let got = self.inner.get(&key).await.map_err(|e| StoreError::backend(&key, e))?;
        let inner = match got.payload {
            GetResultPayload::File(file, path) => file_chunks(file, path),
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

/// The local file `file` as a stream of [`FILE_CHUNK`]-byte chunks, each read on a blocking
/// thread.
fn file_chunks(file: std::fs::File, path: std::path::PathBuf) -> BoxStream<'static, Result<Bytes>> {
    let read = move |mut file: std::fs::File| {
        let path = path.clone();
        async move {
            let joined = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; FILE_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    match std::io::Read::read(&mut file, &mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return (file, Err(e)),
                    }
                }
                buf.truncate(filled);
                (file, Ok(buf))
            })
            .await;
            let (file, chunk) = match joined {
                Ok(read) => read,
                Err(e) => {
                    let source = std::io::Error::other(e);
                    return Some((Err(StoreError::LocalFile { path, source }), None));
                }
            };
            match chunk {
                Ok(buf) if buf.is_empty() => None,
                Ok(buf) => Some((Ok(Bytes::from(buf)), Some(file))),
                Err(source) => Some((Err(StoreError::LocalFile { path, source }), None)),
            }
        }
    };
    futures::stream::unfold(Some(file), move |file| {
        let read = read.clone();
        async move { read(file?).await }
    })
    .boxed()
}

//! A local file read as a stream of large chunks, for blobs read from or written to a folder,
//! into buffers that are used again once every part holding them is sent.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;

use crate::error::{Result, StoreError};

/// How much of a local blob file one chunk carries: object_store's own file stream reads
/// 8 KiB per blocking task, which cost a layer read more system time than its hashing.
pub(crate) const FILE_CHUNK: usize = 1024 * 1024;

/// Idle buffers a pool keeps; more are freed. Buffers in use are bounded by the parts in
/// flight, not by this.
const IDLE_LIMIT: usize = 32;

/// Chunk buffers kept for reuse. A fresh buffer costs a page fault and a zeroed page for each
/// page it covers, and the allocator soon hands freed buffers back to the kernel, so reading
/// a large blob into new buffers took more CPU than hashing it (docs/performance.md).
#[derive(Debug, Default)]
pub(crate) struct ChunkPool {
    idle: Mutex<Vec<Vec<u8>>>,
}

/// A chunk's buffer, returned to its pool when the last [`Bytes`] that views it is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<ChunkPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl ChunkPool {
    /// An empty buffer of at least [`FILE_CHUNK`] bytes' capacity.
    fn take(&self) -> Vec<u8> {
        // A poisoned lock only means another thread panicked holding it; a new buffer is
        // always a correct answer.
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(FILE_CHUNK));
        buf.clear();
        buf
    }

    fn give_back(&self, buf: Vec<u8>) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < IDLE_LIMIT {
                idle.push(buf);
            }
        }
    }

    /// Buffers waiting to be used again.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    /// The local file `file` as a stream of [`FILE_CHUNK`]-byte chunks, each read on a
    /// blocking thread into a buffer of this pool.
    pub(crate) fn file_chunks(
        self: &Arc<Self>,
        file: std::fs::File,
        path: std::path::PathBuf,
    ) -> BoxStream<'static, Result<Bytes>> {
        let pool = self.clone();
        let read = move |mut file: std::fs::File| {
            let path = path.clone();
            let pool = pool.clone();
            async move {
                let joined = tokio::task::spawn_blocking(move || {
                    // Read into spare capacity: zeroing the buffer first would touch every
                    // byte once more. At the limit the buffer is full and is not grown.
                    let mut buf = pool.take();
                    let read = std::io::Read::read_to_end(
                        &mut std::io::Read::take(&mut file, FILE_CHUNK as u64),
                        &mut buf,
                    );
                    match read {
                        Ok(_) => (file, Ok(Pooled { buf, pool })),
                        Err(e) => (file, Err(e)),
                    }
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
                    Ok(chunk) if chunk.buf.is_empty() => None,
                    Ok(chunk) => Some((Ok(Bytes::from_owner(chunk)), Some(file))),
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use futures::TryStreamExt as _;

    use super::*;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, std::fs::File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, bytes).unwrap();
        let file = std::fs::File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    #[tokio::test]
    async fn chunks_carry_the_file_and_their_buffers_are_used_again_once_dropped() {
        let bytes: Vec<u8> = (0..3 * FILE_CHUNK + 7).map(|i| (i % 251) as u8).collect();
        let pool = Arc::new(ChunkPool::default());
        let (tmp, file) = file_of(&bytes);
        let chunks: Vec<Bytes> =
            pool.file_chunks(file, tmp.path().to_path_buf()).try_collect().await.unwrap();
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [FILE_CHUNK, FILE_CHUNK, FILE_CHUNK, 7]);
        assert_eq!(chunks.concat(), bytes);
        // Only the buffer of the empty read that ended the stream is back; the others are
        // held by the chunks, and by pieces split off them, until the last view goes.
        assert_eq!(pool.idle(), 1);
        let piece = chunks[0].slice(10..20);
        drop(chunks);
        assert_eq!(pool.idle(), 4);
        assert_eq!(piece, bytes[10..20]);
        drop(piece);
        assert_eq!(pool.idle(), 5);

        // A second file reads into the same buffers, and sees only its own bytes.
        let other = vec![9u8; FILE_CHUNK / 2];
        let (tmp, file) = file_of(&other);
        let chunks: Vec<Bytes> =
            pool.file_chunks(file, tmp.path().to_path_buf()).try_collect().await.unwrap();
        assert_eq!(chunks.concat(), other);
        assert_eq!(pool.idle(), 4);
    }

    #[test]
    fn a_pool_keeps_no_more_than_its_limit_of_idle_buffers() {
        let pool = ChunkPool::default();
        for _ in 0..IDLE_LIMIT + 5 {
            pool.give_back(Vec::with_capacity(FILE_CHUNK));
        }
        assert_eq!(pool.idle(), IDLE_LIMIT);
    }
}

//! A local file read as a stream of large chunks, for blobs read from or written to a folder.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;

use crate::error::{Result, StoreError};

/// How much of a local blob file one chunk carries: object_store's own file stream reads
/// 8 KiB per blocking task, which cost a layer read more system time than its hashing.
pub(crate) const FILE_CHUNK: usize = 1024 * 1024;

/// The local file `file` as a stream of [`FILE_CHUNK`]-byte chunks, each read on a blocking
/// thread.
pub(crate) fn file_chunks(
    file: std::fs::File,
    path: std::path::PathBuf,
) -> BoxStream<'static, Result<Bytes>> {
    let read = move |mut file: std::fs::File| {
        let path = path.clone();
        async move {
            let joined = tokio::task::spawn_blocking(move || {
                // Read into spare capacity: zeroing the buffer first would touch every byte
                // once more. At the limit the buffer is full and is not grown.
                let mut buf = Vec::with_capacity(FILE_CHUNK);
                let read = std::io::Read::read_to_end(
                    &mut std::io::Read::take(&mut file, FILE_CHUNK as u64),
                    &mut buf,
                );
                match read {
                    Ok(_) => (file, Ok(buf)),
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

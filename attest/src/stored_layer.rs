//! A stored layer read in one pass: the blob streams from the store (which hashes it), is
//! decompressed on one thread, and hashed for the diff_id, its tar entries listed and their
//! files hashed on another, so the three run side by side and each byte is read once. The store's verdict on the blob comes last and wins over anything made from it.

use std::io::Read;
use std::sync::mpsc;

use bytes::{Buf as _, Bytes, BytesMut};
use futures::StreamExt as _;
use kiln_oci::{Descriptor, Digest, HashingReader};
use kiln_store::Store;
use tokio::sync::oneshot;

use crate::contents::{self, ContentsError, LayerContents, LayerEntry};
use crate::AttestError;

/// Chunks waiting between two stages; with the store's chunks and [`TAR_CHUNK`] this bounds a
/// layer's buffers to a few tens of MiB.
const CHUNKS_IN_FLIGHT: usize = 8;
/// How much decompressed tar one chunk carries to the listing thread.
const TAR_CHUNK: usize = 1024 * 1024;

/// Reads `layer` from `store`: its blob verified, its diff_id recomputed and its entries listed.
pub async fn read(store: &Store, layer: &Descriptor) -> Result<LayerContents, AttestError> {
    let digest = layer.digest;
    let mut stream = store.blob_stream(layer).await?;
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let (tar_tx, tar_rx) = mpsc::sync_channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let (inflated_tx, inflated) = oneshot::channel();
    let (listed_tx, listed) = oneshot::channel();
    let media = layer.media_type.clone();
    std::thread::spawn(move || {
        let input = Chunks::new(move || raw_rx.blocking_recv());
        // The receiver is gone only when the reading task was dropped: nobody wants the result.
        drop(inflated_tx.send(inflate(&media, digest, input, &tar_tx)));
    });
    std::thread::spawn(move || {
        let mut input = HashingReader::new(Chunks::new(move || tar_rx.recv().ok()));
        let listed = contents::list_entries(digest, &mut input);
        // As above: a send fails only when nobody waits for the listing.
        drop(listed_tx.send(listed.map(|entries| (entries, input.finish().0))));
    });

    // The whole blob is read even when decompressing stopped early, so that a damaged blob is
    // reported as damaged rather than as a bad tar.
    let mut sink = Some(raw_tx);
    let mut damaged = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                if let Some(tx) = &sink {
                    if tx.send(chunk).await.is_err() {
                        sink = None;
                    }
                }
            }
            Err(e) => {
                damaged = Some(e);
                break;
            }
        }
    }
    drop(sink);
    let inflated = inflated.await;
    let listed = listed.await;
    if let Some(e) = damaged {
        return Err(e.into());
    }
    let gone = |what: &str| ContentsError::Tar {
        digest,
        source: std::io::Error::other(format!("the {what} thread stopped")),
    };
    let finished = inflated.map_err(|_| gone("decompressing"))??;
    let (entries, diff_id): (Vec<LayerEntry>, Digest) = listed.map_err(|_| gone("listing"))??;
    if !finished {
        return Err(gone("listing").into());
    }
    Ok(LayerContents { diff_id, entries })
}

/// Recomputes the diff_id of `layer` from the store in one pass, the blob verified on the way,
/// without listing its entries: what a build checks a cached layer with.
pub async fn diff_id(store: &Store, layer: &Descriptor) -> Result<Digest, AttestError> {
    let digest = layer.digest;
    let mut stream = store.blob_stream(layer).await?;
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let (hashed_tx, hashed) = oneshot::channel();
    let media = layer.media_type.clone();
    std::thread::spawn(move || {
        let input = Chunks::new(move || raw_rx.blocking_recv());
        let hash = || {
            let mut tar = HashingReader::new(contents::decompressor(&media, digest, input)?);
            std::io::copy(&mut tar, &mut std::io::sink())
                .map_err(|source| ContentsError::Tar { digest, source })?;
            Ok::<_, ContentsError>(tar.finish().0)
        };
        // The receiver is gone only when the reading task was dropped: nobody wants the result.
        drop(hashed_tx.send(hash()));
    });
    // Read to the end even when decompressing stopped early, so that a damaged blob is
    // reported as damaged rather than as a bad tar.
    let mut sink = Some(raw_tx);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if let Some(tx) = &sink {
            if tx.send(chunk).await.is_err() {
                sink = None;
            }
        }
    }
    drop(sink);
    let hashed = hashed.await.map_err(|_| ContentsError::Tar {
        digest,
        source: std::io::Error::other("the decompressing thread stopped"),
    })?;
    Ok(hashed?)
}

/// Decompresses `input` as `media` says into chunks sent to `tar`; false when the listing
/// thread stopped taking chunks (its error says why).
fn inflate<R: Read>(
    media: &str,
    digest: Digest,
    input: R,
    tar: &mpsc::SyncSender<Bytes>,
) -> Result<bool, ContentsError> {
    let mut raw = contents::decompressor(media, digest, input)?;
    loop {
        let mut buf = BytesMut::zeroed(TAR_CHUNK);
        let mut filled = 0;
        while filled < buf.len() {
            let n = raw
                .read(&mut buf[filled..])
                .map_err(|source| ContentsError::Tar { digest, source })?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(true);
        }
        buf.truncate(filled);
        if tar.send(buf.freeze()).is_err() {
            return Ok(false);
        }
    }
}

/// A reader over chunks handed over by another thread; `next` gives `None` at the end.
struct Chunks<F> {
    next: F,
    current: Bytes,
}

impl<F: FnMut() -> Option<Bytes>> Chunks<F> {
    fn new(next: F) -> Self {
        Chunks { next, current: Bytes::new() }
    }
}

impl<F: FnMut() -> Option<Bytes>> Read for Chunks<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match (self.next)() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write as _;

    use kiln_oci::media_type;

    use super::*;

    /// A gzip tar layer of `files` whose contents are large enough to span several chunks.
    fn layer(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, name, &data[..]).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn files() -> Vec<(&'static str, Vec<u8>)> {
        let big: Vec<u8> = (0..3 * TAR_CHUNK as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        vec![("a/big", big), ("b", b"small".to_vec()), ("c/empty", Vec::new())]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_pass_reads_what_the_plain_reader_reads() {
        let store = Store::open("memory://").unwrap();
        let bytes = layer(&files());
        let put = store.put_blob(Bytes::from(bytes.clone())).await.unwrap();
        let desc = Descriptor::new(media_type::LAYER_TAR_GZIP, put.digest, put.size);
        let got = read(&store, &desc).await.unwrap();
        let want =
            contents::read_layer(media_type::LAYER_TAR_GZIP, put.digest, &bytes[..]).unwrap();
        assert_eq!(got.diff_id, want.diff_id);
        assert_eq!(got.entries, want.entries);
        assert_eq!(got.entries.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_diff_id_alone_is_what_the_full_read_finds() {
        let store = Store::open("memory://").unwrap();
        let bytes = layer(&files());
        let put = store.put_blob(Bytes::from(bytes)).await.unwrap();
        let desc = Descriptor::new(media_type::LAYER_TAR_GZIP, put.digest, put.size);
        let full = read(&store, &desc).await.unwrap();
        assert_eq!(diff_id(&store, &desc).await.unwrap(), full.diff_id);
        let not_gzip = store.put_blob(Bytes::from_static(b"not a gzip stream")).await.unwrap();
        let desc = Descriptor::new(media_type::LAYER_TAR_GZIP, not_gzip.digest, not_gzip.size);
        assert!(matches!(diff_id(&store, &desc).await, Err(AttestError::Contents(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_descriptor_whose_size_lies_is_refused_though_the_bytes_hash_right() {
        let store = Store::open("memory://").unwrap();
        let bytes = layer(&files());
        let put = store.put_blob(Bytes::from(bytes)).await.unwrap();
        for size in [put.size - 1, put.size + 1, 1] {
            let desc = Descriptor::new(media_type::LAYER_TAR_GZIP, put.digest, size);
            match read(&store, &desc).await {
                Err(AttestError::Store(e @ kiln_store::StoreError::SizeMismatch { .. })) => {
                    assert!(e.is_integrity_failure());
                }
                other => panic!("size {size}: {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_blob_is_reported_as_damaged_not_as_a_bad_tar() {
        let folder = tempfile::tempdir().unwrap();
        let store = Store::open(folder.path().to_str().unwrap()).unwrap();
        let bytes = layer(&files());
        let put = store.put_blob(Bytes::from(bytes.clone())).await.unwrap();
        let path = folder.path().join("blobs/sha256").join(put.digest.hex());
        for at in [12, bytes.len() / 2, bytes.len() - 3] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            let desc = Descriptor::new(media_type::LAYER_TAR_GZIP, put.digest, put.size);
            match read(&store, &desc).await {
                Err(AttestError::Store(kiln_store::StoreError::DigestMismatch { .. })) => {}
                other => panic!("byte {at}: {other:?}"),
            }
        }
    }
}

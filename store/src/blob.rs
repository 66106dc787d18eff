//! Write-once blobs under `blobs/sha256/<hex>`: every write is create-only, every read is
//! re-hashed against the digest in the key.

use std::path::Path;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kiln_oci::{Descriptor, Digest, Sha256};
use object_store::path::Path as Key;
use object_store::{GetResultPayload, PutMode, WriteMultipart};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use crate::error::{Result, StoreError};
use crate::{key, Store};

/// Files this size or larger go through a staged multipart upload instead of one put.
pub(crate) const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Multipart part size; above S3's 5 MiB minimum. 16 and 32 MiB parts pushed no faster to
/// SeaweedFS, on loopback or 30 ms away (docs/performance.md), and hold more memory.
pub(crate) const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once across all uploads of one store handle (a pool, so a lone large
/// blob uses every slot): at most this many parts, plus the one each upload is filling, are
/// in memory. 8 to 32 measured alike on loopback and at 30 ms (docs/performance.md).
pub(crate) const PARTS_IN_FLIGHT: usize = 16;
/// Parts in flight per upload through object_store's own writer (folder stores, whose parts
/// are local files).
const FOLDER_PARTS_IN_FLIGHT: usize = 4;
/// Small requests (existence checks, cache reads) in flight at once in [`Store::has_blobs`]
/// and [`Store::get_caches`].
pub(crate) const SMALL_REQUESTS_IN_FLIGHT: usize = 16;

/// What a blob write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// False when the blob was already there and nothing was written.
    pub uploaded: bool,
}

fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::LocalFile { path: path.to_path_buf(), source }
}

fn backend_err(key: &Key) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
    move |source| StoreError::backend(key, source)
}

/// Fails with [`StoreError::DigestMismatch`] unless `found` is what `key` promises.
fn check(key: &Key, expected: &Digest, found: Digest) -> Result<()> {
    if found == *expected {
        Ok(())
    } else {
        Err(StoreError::DigestMismatch { key: key.to_string(), expected: *expected, found })
    }
}

/// Fails with [`StoreError::SizeMismatch`] unless the blob at `key` has the `expected` size
/// its descriptor gives.
pub(crate) fn check_size(key: &Key, expected: u64, found: u64) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(StoreError::SizeMismatch { key: key.to_string(), expected, found })
    }
}

impl Store {
    /// Stores `bytes` under their digest unless already present; never overwrites. Through
    /// a [`Store::leased`] handle, the blob is named in the lease first.
    pub async fn put_blob(&self, bytes: Bytes) -> Result<PutOutcome> {
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        self.lease_blob(&digest).await?;
        let uploaded = self.create(&key::blob(&digest), bytes).await?;
        Ok(PutOutcome { digest, size, uploaded })
    }

    /// Create-only put: `Ok(false)` when something is already at `key` (written by us or a
    /// concurrent writer of the same content), since blob keys are never overwritten.
    pub(crate) async fn create(&self, key: &Key, bytes: Bytes) -> Result<bool> {
        match self.inner.put_opts(key, bytes.into(), PutMode::Create.into()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(source) => Err(StoreError::backend(key, source)),
        }
    }

    /// Streams the file at `path`, which the caller says is `expected` of `size` bytes, into
    /// the store, unless the blob is there already. Refuses, publishing nothing, if the file is
    /// anything else.
    pub async fn put_blob_file(
        &self,
        path: &Path,
        expected: &Digest,
        size: u64,
    ) -> Result<PutOutcome> {
        check_file_size(path, size).await?;
        if self.has_blob(expected).await? {
            return Ok(PutOutcome { digest: *expected, size, uploaded: false });
        }
        self.upload_sized_file(path, expected, size).await
    }

    /// [`Store::put_blob_file`] without first asking whether the blob is there, for a caller
    /// that has just found it missing: every write is create-only, so a blob stored meanwhile
    /// is never overwritten (`uploaded` is then false).
    pub async fn upload_blob_file(
        &self,
        path: &Path,
        expected: &Digest,
        size: u64,
    ) -> Result<PutOutcome> {
        check_file_size(path, size).await?;
        self.upload_sized_file(path, expected, size).await
    }

    /// Uploads the file at `path`, which has `size` bytes, as the blob `expected`.
    async fn upload_sized_file(
        &self,
        path: &Path,
        expected: &Digest,
        size: u64,
    ) -> Result<PutOutcome> {
        let outcome = |uploaded| PutOutcome { digest: *expected, size, uploaded };
        let mismatch = |found, found_size| StoreError::FileMismatch {
            path: path.to_path_buf(),
            expected: *expected,
            expected_size: size,
            found,
            found_size,
        };
        if size < MULTIPART_THRESHOLD {
            let bytes = Bytes::from(tokio::fs::read(path).await.map_err(local_err(path))?);
            let found = Digest::of(&bytes);
            if found != *expected || bytes.len() as u64 != size {
                return Err(mismatch(found, bytes.len() as u64));
            }
            return Ok(outcome(self.create(&key::blob(expected), bytes).await?));
        }

        let file = tokio::fs::File::open(path).await.map_err(local_err(path))?.into_std().await;
        let chunks = self.chunk_pool.file_chunks(file, path.to_path_buf());
        Ok(outcome(self.put_blob_staged(chunks, expected, size, mismatch).await?))
    }

    /// Stores the blob `expected` of `size` bytes arriving as `chunks` from outside the store
    /// (a registry): kept only when the bytes are exactly that blob; otherwise nothing is
    /// stored and `mismatch(found, found_size)` is the error. Memory stays bounded whatever
    /// the size, and a stream longer than `size` is cut off. Returns whether it was written.
    pub async fn put_blob_stream<S>(
        &self,
        chunks: S,
        expected: &Digest,
        size: u64,
        mismatch: impl FnOnce(Digest, u64) -> StoreError,
    ) -> Result<bool>
    where
        S: futures::Stream<Item = Result<Bytes>> + Unpin,
    {
        if size >= MULTIPART_THRESHOLD {
            return self.put_blob_staged(chunks, expected, size, mismatch).await;
        }
        let mut chunks = chunks;
        let mut hasher = Sha256::new();
        let mut bytes = bytes::BytesMut::new();
        let mut read = 0u64;
        while let Some(chunk) = chunks.try_next().await? {
            read += chunk.len() as u64;
            if read > size {
                // Hash no further: the blob is already not what was promised.
                hasher.update(&chunk);
                return Err(mismatch(hasher.finish(), read));
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        let found = hasher.finish();
        if found != *expected || read != size {
            return Err(mismatch(found, read));
        }
        self.create(&key::blob(expected), bytes.freeze()).await
    }

    /// Uploads a large blob from `chunks` without ever exposing a partial or wrong object
    /// under its key. On S3 the parts go to the blob's own key while being hashed, and the
    /// upload is completed, create-only, only when what was sent is exactly `expected` of
    /// `size` bytes. Elsewhere multipart uploads cannot be create-only, so the parts go to a
    /// private staging key, which is then copied create-only to the blob key. Otherwise the
    /// upload is aborted and `mismatch(found, found_size)` reported. Memory stays bounded
    /// whatever the blob's size: the parts in flight take the store's [`PARTS_IN_FLIGHT`]
    /// slots, and one more part is filled meanwhile.
    pub(crate) async fn put_blob_staged<S>(
        &self,
        chunks: S,
        expected: &Digest,
        size: u64,
        mismatch: impl FnOnce(Digest, u64) -> StoreError,
    ) -> Result<bool>
    where
        S: futures::Stream<Item = Result<Bytes>> + Unpin,
    {
        let staging = key::upload(expected);
        let is_expected = |found: &Digest, found_size| found == expected && found_size == size;
        let sent = match &self.multipart {
            Some(multipart) if multipart.writes_in_place() => {
                let blob = key::blob(expected);
                return match self
                    .send_recorded(multipart, chunks, &blob, &staging, is_expected)
                    .await?
                {
                    Ok(created) => Ok(created),
                    Err((found, found_size)) => Err(mismatch(found, found_size)),
                };
            }
            Some(multipart) => self
                .send_recorded(multipart, chunks, &staging, &staging, is_expected)
                .await?
                .map(|_| ()),
            None => self.send_unrecorded(chunks, &staging, expected, size).await?,
        };
        if let Err((found, found_size)) = sent {
            return Err(mismatch(found, found_size));
        }
        self.publish_staged(&staging, expected, size).await
    }

    /// Publishes the completed staging object `staging` as the blob `digest` of `size` bytes
    /// (see [`Store::publish`]), then deletes it: whether the blob was written.
    pub(crate) async fn publish_staged(
        &self,
        staging: &Key,
        digest: &Digest,
        size: u64,
    ) -> Result<bool> {
        let published = self.publish(staging, digest, size).await;
        let cleaned = match self.inner.delete(staging).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::backend(staging, source)),
        };
        let uploaded = published?;
        cleaned?;
        Ok(uploaded)
    }

    /// Sends `chunks` to `staging` through object_store's own multipart writer (a folder store,
    /// whose interrupted uploads are part files that gc finds on disk). Completed only when the
    /// bytes are `expected` of `size`; otherwise aborted and what was sent returned.
    async fn send_unrecorded<S>(
        &self,
        chunks: S,
        staging: &Key,
        expected: &Digest,
        size: u64,
    ) -> Result<std::result::Result<(), (Digest, u64)>>
    where
        S: futures::Stream<Item = Result<Bytes>> + Unpin,
    {
        let upload = self.inner.put_multipart(staging).await.map_err(backend_err(staging))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let (found, found_size) = match send_chunks(chunks, staging, &mut writer).await {
            Ok(sent) => sent,
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    log::warn!("cannot abort the upload to {staging}: {abort}");
                }
                return Err(e);
            }
        };
        // What was hashed is exactly what was sent, so a source changed mid-read is caught here.
        if found != *expected || found_size != size {
            if let Err(abort) = writer.abort().await {
                log::warn!("cannot abort the upload to {staging}: {abort}");
            }
            return Ok(Err((found, found_size)));
        }
        writer.finish().await.map_err(backend_err(staging))?;
        Ok(Ok(()))
    }

    /// Copies a completed staging object to its blob key once its size proves it whole.
    pub(crate) async fn publish(&self, staging: &Key, digest: &Digest, size: u64) -> Result<bool> {
        let meta = self.inner.head(staging).await.map_err(backend_err(staging))?;
        if meta.size != size {
            return Err(StoreError::IncompleteUpload {
                key: staging.to_string(),
                expected: size,
                found: meta.size,
            });
        }
        let blob = key::blob(digest);
        match self.inner.copy_if_not_exists(staging, &blob).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(source) => Err(StoreError::backend(&blob, source)),
        }
    }

    /// Whether the blob is present (not verified; reads verify).
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let key = key::blob(digest);
        match self.inner.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StoreError::backend(&key, source)),
        }
    }

    /// [`Store::has_blob`] for many digests, a bounded number at a time, in input order.
    pub async fn has_blobs(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        futures::stream::iter(digests)
            .map(|d| self.has_blob(d))
            .buffered(SMALL_REQUESTS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Reads a whole blob, refusing it if it does not hash to `digest`.
    pub async fn get_blob(&self, digest: &Digest) -> Result<Bytes> {
        let key = key::blob(digest);
        let got = self.inner.get(&key).await.map_err(backend_err(&key))?;
        let bytes = got.bytes().await.map_err(backend_err(&key))?;
        check(&key, digest, Digest::of(&bytes))?;
        Ok(bytes)
    }

    /// Reads the blob `desc` describes, refusing it unless it has exactly `desc.size` bytes
    /// and hashes to `desc.digest`. The size the backend reports is compared before a byte is
    /// read, so a descriptor cannot make kiln load more than it says.
    pub async fn get_described(&self, desc: &Descriptor) -> Result<Bytes> {
        let key = key::blob(&desc.digest);
        let got = self.inner.get(&key).await.map_err(backend_err(&key))?;
        check_size(&key, desc.size, got.meta.size)?;
        let bytes = got.bytes().await.map_err(backend_err(&key))?;
        check(&key, &desc.digest, Digest::of(&bytes))?;
        check_size(&key, desc.size, bytes.len() as u64)?;
        Ok(bytes)
    }

    /// [`Store::get_described`], decoded as JSON (indexes, manifests, configs).
    pub async fn get_described_json<T: DeserializeOwned>(&self, desc: &Descriptor) -> Result<T> {
        let bytes = self.get_described(desc).await?;
        serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::Json { key: key::blob(&desc.digest).to_string(), source })
    }

    /// Re-reads a blob, hashing it as it streams, and returns its size; fails with
    /// [`StoreError::DigestMismatch`] if the bytes are not what the key names.
    pub async fn verify_blob(&self, digest: &Digest) -> Result<u64> {
        let key = key::blob(digest);
        let got = self.inner.get(&key).await.map_err(backend_err(&key))?;
        let mut stream = got.into_stream();
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(backend_err(&key))? {
            hasher.update(&chunk);
            len += chunk.len() as u64;
        }
        check(&key, digest, hasher.finish())?;
        Ok(len)
    }

    /// The blob's bytes as a stream of chunks, unverified: the consumer hashes them (as
    /// [`Store::put_blob_staged`] does) and must refuse a mismatch.
    pub(crate) async fn blob_chunks(
        &self,
        digest: &Digest,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let key = key::blob(digest);
        let got = self.inner.get(&key).await.map_err(backend_err(&key))?;
        Ok(match got.payload {
            // object_store would read a local file 8 KiB per blocking task.
            GetResultPayload::File(file, path) => self.chunk_pool.file_chunks(file, path),
            GetResultPayload::Stream(stream) => {
                stream.map_err(move |e| StoreError::backend(&key, e)).boxed()
            }
        })
    }

    /// Reads a blob and decodes it as JSON (manifests, configs, indexes).
    pub async fn get_json<T: DeserializeOwned>(&self, digest: &Digest) -> Result<T> {
        let bytes = self.get_blob(digest).await?;
        serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::Json { key: key::blob(digest).to_string(), source })
    }

    /// Streams a blob into the file `target`, hashing as it goes, and returns its size. On any
    /// failure after `target` was created, including a digest mismatch, `target` is removed.
    pub async fn copy_blob_to(&self, digest: &Digest, target: &Path) -> Result<u64> {
        self.copy_to(digest, None, target).await
    }

    /// [`Store::copy_blob_to`] for the blob `desc` describes, refused (before `target` is
    /// created) unless it has `desc.size` bytes.
    pub async fn copy_described_to(&self, desc: &Descriptor, target: &Path) -> Result<u64> {
        self.copy_to(&desc.digest, Some(desc.size), target).await
    }

    async fn copy_to(&self, digest: &Digest, size: Option<u64>, target: &Path) -> Result<u64> {
        let key = key::blob(digest);
        // Fetch first, so a missing blob leaves an existing `target` untouched.
        let got = self.inner.get(&key).await.map_err(backend_err(&key))?;
        if let Some(size) = size {
            check_size(&key, size, got.meta.size)?;
        }
        let file = tokio::fs::File::create(target).await.map_err(local_err(target))?;
        let result = stream_blob(got.into_stream(), &key, file, target).await;
        let result = result.and_then(|(found, len)| {
            check(&key, digest, found)?;
            if let Some(size) = size {
                check_size(&key, size, len)?;
            }
            Ok(len)
        });
        if result.is_err() {
            // Never leave a partial or wrong copy behind; the copy error is the one to report,
            // and a copy that cannot be removed is named beside it.
            match tokio::fs::remove_file(target).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!(
                    "cannot remove the unfinished copy {}: {e}; delete it",
                    target.display()
                ),
            }
        }
        result
    }
}

/// Fails with [`StoreError::FileSize`] unless the file at `path` has `size` bytes.
async fn check_file_size(path: &Path, size: u64) -> Result<()> {
    let meta = tokio::fs::metadata(path).await.map_err(local_err(path))?;
    if meta.len() != size {
        return Err(StoreError::FileSize {
            path: path.to_path_buf(),
            expected_size: size,
            found_size: meta.len(),
        });
    }
    Ok(())
}

/// Sends `chunks` into `writer`, hashing what is sent.
async fn send_chunks<S>(
    mut chunks: S,
    staging: &Key,
    writer: &mut WriteMultipart,
) -> Result<(Digest, u64)>
where
    S: futures::Stream<Item = Result<Bytes>> + Unpin,
{
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = chunks.try_next().await? {
        hasher.update(&chunk);
        len += chunk.len() as u64;
        // Back-pressure: wait for a part slot so a fast source cannot outrun the upload.
        writer.wait_for_capacity(FOLDER_PARTS_IN_FLIGHT).await.map_err(backend_err(staging))?;
        writer.put(chunk);
    }
    Ok((hasher.finish(), len))
}

/// Writes a blob's byte stream to `file`, returning the digest and length of what was written.
async fn stream_blob(
    mut stream: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    key: &Key,
    mut file: tokio::fs::File,
    target: &Path,
) -> Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = stream.try_next().await.map_err(backend_err(key))? {
        hasher.update(&chunk);
        len += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(local_err(target))?;
    }
    // tokio's File finishes writes in the background; flush surfaces their errors here.
    file.flush().await.map_err(local_err(target))?;
    Ok((hasher.finish(), len))
}

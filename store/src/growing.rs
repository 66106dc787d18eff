//! A blob uploaded while its file is still being written (a layer being compressed).
//!
//! A blob's key is its digest, known only once its last byte is written. Where a large blob
//! goes up to a staging key and is then copied create-only to its own key anyway
//! ([`Store::stages_blobs`]: Azure, GCS, memory), the staging key can be chosen before the
//! digest is known: the parts then go up as the file grows, recorded like every multipart
//! upload (see [`crate::upload`]), and are published under the digest the writer names at
//! the end only if what was sent hashes to it with its size. The staging key names no
//! digest, so no lease protects it from gc: only its age does, as for an upload a killed
//! writer left behind. An upload a gc took so is sent again whole once the file is.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use kiln_oci::Digest;
use tokio::sync::watch;

use crate::blob::{PutOutcome, MULTIPART_THRESHOLD};
use crate::error::{Result, StoreError};
use crate::file_chunks::FILE_CHUNK;
use crate::{key, Store};

/// What the writer of a growing file has said so far. `Whole` and `Dropped` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// Its first this many bytes are written and will not change.
    Written(u64),
    /// It is whole, and is to be stored as the blob `digest` of `size` bytes.
    Whole { digest: Digest, size: u64 },
    /// It is not to be stored (its writer failed, or the blob is stored already).
    Dropped,
}

/// What the file's reader learnt from the writer, for the end of the upload.
#[derive(Default)]
struct Told {
    /// The blob the file is, once whole.
    whole: OnceLock<(Digest, u64)>,
    /// The writer dropped the file, or went away without a word.
    dropped: AtomicBool,
}

impl Store {
    /// Whether large blobs go up to a staging key and are copied to their own key (Azure,
    /// GCS, memory): uploading one while its file is written then costs no extra request.
    /// S3 writes them in place, and folder stores adopt them by rename.
    pub fn stages_blobs(&self) -> bool {
        self.multipart.as_ref().is_some_and(|m| !m.writes_in_place())
    }

    /// Stores the blob the local file `file` (at `path`) grows into, as `growth` tells.
    /// Where the store [stages blobs](Store::stages_blobs), once [`MULTIPART_THRESHOLD`]
    /// bytes are written the parts go up as they are written, reading no byte beyond what
    /// `growth` says is written, to a fresh `uploads/growing-…` key; when the file is
    /// `Whole`, the rest is sent and the staging object is published create-only under the
    /// digest, only if what was sent is exactly that blob (otherwise the upload is aborted,
    /// nothing is published, and the error is [`StoreError::FileMismatch`]). An upload the
    /// store lost meanwhile (a gc with a short grace took it) is sent again from the whole
    /// file as [`Store::put_blob_stream`] sends it. A file whole before then, or any file
    /// elsewhere, is stored as [`Store::put_blob_stream`] stores it.
    /// `Ok(None)` when the file is dropped (or the sender goes without a word): whatever was
    /// sent is aborted. Memory stays bounded by the store's part slots; the writer never
    /// waits for the upload.
    pub async fn put_growing_file(
        &self,
        file: File,
        path: PathBuf,
        mut growth: watch::Receiver<Growth>,
    ) -> Result<Option<PutOutcome>> {
        let stages = self.stages_blobs();
        loop {
            let now = *growth.borrow_and_update();
            match now {
                Growth::Written(n) if stages && n >= MULTIPART_THRESHOLD => break,
                Growth::Written(_) => {
                    if growth.changed().await.is_err() {
                        return Ok(None);
                    }
                }
                Growth::Whole { digest, size } => {
                    let chunks = self.chunk_pool.file_chunks(file, path.clone());
                    let mismatch = mismatch(path, digest, size);
                    let uploaded = self.put_blob_stream(chunks, &digest, size, mismatch).await?;
                    return Ok(Some(PutOutcome { digest, size, uploaded }));
                }
                Growth::Dropped => return Ok(None),
            }
        }
        let Some(multipart) = &self.multipart else { return Ok(None) };
        // A handle of its own on the same open file, for sending it again (see below).
        let again = file
            .try_clone()
            .map_err(|source| StoreError::LocalFile { path: path.clone(), source })?;
        // What the writer says after the upload fails, should it be sent again.
        let mut later = growth.clone();
        let staging = key::growing_upload();
        let told = Arc::new(Told::default());
        let chunks = growing_chunks(file, path.clone(), growth, told.clone());
        let is_whole = |found: &Digest, found_size| told.whole.get() == Some(&(*found, found_size));
        let sent = self.send_recorded(multipart, chunks, &staging, &staging, is_whole).await;
        if told.dropped.load(Ordering::Relaxed) {
            // The reading stopped on purpose; send_recorded aborted the upload.
            return Ok(None);
        }
        // The stream ends only once the file is whole, so `whole` is set when it was all sent.
        let whole = told.whole.get().copied();
        let published = match (sent, whole) {
            (Ok(Err((found, found_size))), Some((digest, size))) => {
                return Err(mismatch(path, digest, size)(found, found_size));
            }
            (Ok(_), None) => return Ok(None),
            (Ok(Ok(_)), Some((digest, size))) => self.publish_staged(&staging, &digest, size).await,
            (Err(e), _) => Err(e),
        };
        let (digest, size) = match (published, whole) {
            (Ok(uploaded), Some((digest, size))) => {
                return Ok(Some(PutOutcome { digest, size, uploaded }));
            }
            (Err(e), whole) if lost_upload(&e) => {
                // Lost before the file was whole: sent again once it is, unless dropped.
                let whole = match whole {
                    Some(whole) => whole,
                    None => match whole_at_last(&mut later).await {
                        Some(whole) => whole,
                        None => return Ok(None),
                    },
                };
                log::warn!(
                    "the upload of {} was lost ({}); sending it again",
                    path.display(),
                    crate::one_line(&e)
                );
                whole
            }
            (Err(e), _) => return Err(e),
            (Ok(_), None) => return Ok(None),
        };
        // The staging key names no digest, so no lease kept the upload or its staging object
        // from a gc whose grace is shorter than the file took to write: the whole file is
        // sent again as any blob is, under a staging key that names its digest (leased by a
        // writer that holds a lease) and verified the same way.
        let chunks = self.chunk_pool.file_chunks(again, path.clone());
        let uploaded =
            self.put_blob_stream(chunks, &digest, size, mismatch(path, digest, size)).await?;
        Ok(Some(PutOutcome { digest, size, uploaded }))
    }
}

/// The blob the file is once its writer says it is whole; `None` when it is dropped (or its
/// writer goes without a word).
async fn whole_at_last(growth: &mut watch::Receiver<Growth>) -> Option<(Digest, u64)> {
    loop {
        let now = *growth.borrow_and_update();
        match now {
            Growth::Whole { digest, size } => return Some((digest, size)),
            Growth::Dropped => return None,
            Growth::Written(_) => growth.changed().await.ok()?,
        }
    }
}

/// Whether `e` says the store lost a growing upload or its staging object (a gc took them),
/// rather than that the file or its bytes are wrong.
fn lost_upload(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Backend { .. } | StoreError::NotFound { .. } | StoreError::Complete { .. }
    )
}

/// The error for a file at `path` that is not the blob `expected` of `size` bytes.
fn mismatch(path: PathBuf, expected: Digest, size: u64) -> impl FnOnce(Digest, u64) -> StoreError {
    move |found, found_size| StoreError::FileMismatch {
        path,
        expected,
        expected_size: size,
        found,
        found_size,
    }
}

/// The file as a stream of chunks of at most [`FILE_CHUNK`] bytes, each read on a blocking
/// thread at its offset and never past what `growth` says is written; it ends once the file
/// is whole and its `size` bytes are read. When the file is dropped the stream fails, and
/// `told` says so.
fn growing_chunks(
    file: File,
    path: PathBuf,
    growth: watch::Receiver<Growth>,
    told: Arc<Told>,
) -> BoxStream<'static, Result<Bytes>> {
    let file = Arc::new(file);
    let state = (growth, 0u64);
    futures::stream::unfold(Some(state), move |state| {
        let (file, path, told) = (file.clone(), path.clone(), told.clone());
        async move {
            let (mut growth, offset) = state?;
            let dropped = || {
                told.dropped.store(true, Ordering::Relaxed);
                let source = std::io::Error::other("the file's writer stopped");
                Some((Err(StoreError::LocalFile { path: path.clone(), source }), None))
            };
            // Waits until there is more to read, or the end.
            let limit = loop {
                let now = *growth.borrow_and_update();
                match now {
                    Growth::Written(n) if n > offset => break n,
                    Growth::Written(_) => {
                        if growth.changed().await.is_err() {
                            return dropped();
                        }
                    }
                    Growth::Whole { digest, size } => {
                        told.whole.get_or_init(|| (digest, size));
                        if offset >= size {
                            return None;
                        }
                        break size;
                    }
                    Growth::Dropped => return dropped(),
                }
            };
            let len = (limit - offset).min(FILE_CHUNK as u64) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|read| read);
            match read {
                Ok(buf) => Some((Ok(Bytes::from(buf)), Some((growth, offset + len as u64)))),
                Err(source) => Some((Err(StoreError::LocalFile { path, source }), None)),
            }
        }
    })
    .boxed()
}

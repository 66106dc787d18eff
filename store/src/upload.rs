//! Multipart uploads that are recorded (before any part is sent, where the backend cannot list
//! them), so that nothing a killed writer started stays in the bucket unseen.
//!
//! An incomplete multipart upload is no object: listings do not show it, yet its parts take
//! space until aborted. So a writer creates the upload by id (through object_store's
//! [`MultipartStore`], which S3, GCS, Azure and memory stores implement) and writes a marker
//! `uploads/<staging-name>.multipart` holding that id: before sending parts where the marker
//! is the only trace of them, beside the parts on S3, whose server lists uploads in progress.
//! The marker goes once the upload is completed or aborted (on S3, while it is completed). gc
//! aborts the uploads of markers older than its grace (unless a live lease names the blob),
//! and `store check` reports every marker; on S3 both also read the server's list for the
//! uploads no marker names. Folder stores have no upload ids: their interrupted uploads are
//! part files, which gc finds on disk.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt, TryStreamExt};
use kiln_oci::{Digest, Sha256};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::error::{Result, StoreError};
use crate::holder::Holder;
use crate::s3_multipart::{Completed, InProgress, S3Multipart};
use crate::{key, Store};

/// What marks a key under `uploads/` as a marker rather than a staging object.
pub(crate) const MARKER_SUFFIX: &str = ".multipart";

/// A backend's multipart uploads, addressed by id.
#[derive(Clone)]
pub(crate) struct Multipart {
    store: Arc<dyn MultipartStore>,
    /// The store's key prefix in the bucket, which [`MultipartStore`] does not apply.
    prefix: String,
    /// On S3: create-only completion and the server's own list of uploads in progress.
    s3: Option<S3Multipart>,
    /// Parts in flight across every upload of this store (see [`send_parts`]).
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multipart").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Multipart {
    pub(crate) fn new(store: Arc<dyn MultipartStore>, prefix: &str) -> Multipart {
        let slots = Arc::new(Semaphore::new(crate::blob::PARTS_IN_FLIGHT));
        Multipart { store, prefix: prefix.to_string(), s3: None, slots }
    }

    /// Parts sent one after another: object_store's in-memory store (0.12) indexes past the
    /// end of an upload's parts, and panics, when a later part arrives before an earlier one.
    pub(crate) fn one_part_at_a_time(self) -> Multipart {
        Multipart { slots: Arc::new(Semaphore::new(1)), ..self }
    }

    /// Uploads to S3: blobs are completed create-only in place, and the uploads no marker
    /// records are found through the server's list.
    pub(crate) fn with_s3(self, s3: S3Multipart) -> Multipart {
        Multipart { s3: Some(s3), ..self }
    }

    /// Whether a blob's parts can go straight to its own key (see [`crate::s3_multipart`]).
    pub(crate) fn writes_in_place(&self) -> bool {
        self.s3.is_some()
    }

    /// `key` of the store as the bucket names it.
    fn path(&self, key: &Key) -> Key {
        if self.prefix.is_empty() {
            key.clone()
        } else {
            Key::from(format!("{}/{key}", self.prefix))
        }
    }
}

/// What a marker records.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Marker {
    /// The staging key the upload writes, inside the store.
    key: String,
    /// The backend's id of the upload.
    upload_id: String,
    /// Who started it, when `/proc` could say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<Holder>,
}

/// An upload a marker records: its marker's key and the upload id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnfinishedUpload {
    /// The marker, `uploads/<name>.multipart`.
    pub marker: String,
    /// The upload's id, as the backend names it; empty when the marker does not decode.
    pub upload_id: String,
}

/// A multipart upload in progress that no marker records.
#[derive(Clone, Debug)]
pub(crate) struct Unrecorded {
    /// The key it writes, inside the store.
    pub key: Key,
    /// The blob it writes, or stages.
    pub digest: Digest,
    pub upload: InProgress,
}

/// Exactly `n` bytes from the front of `queue` (which holds at least that many).
fn take(queue: &mut VecDeque<Bytes>, mut n: usize) -> PutPayload {
    let mut part = Vec::new();
    while n > 0 {
        let Some(mut front) = queue.pop_front() else { break };
        if front.len() > n {
            let rest = front.split_off(n);
            queue.push_front(rest);
        }
        n -= front.len();
        part.push(front);
    }
    part.into_iter().collect()
}

impl Store {
    /// Sends `chunks` to `target` as a multipart upload recorded under `uploads/<record>`,
    /// hashing what is sent. It is completed only when `wanted(digest, size)` says the bytes
    /// sent are the blob wanted (asked once they are all sent, so a writer may name the blob
    /// only then); otherwise aborted, and what was sent returned as `Err((digest, size))`.
    /// Where the
    /// backend [writes in place](Multipart::writes_in_place), `target` is the blob's own key
    /// and the completion is create-only: `Ok(Ok(false))` when the blob was already there.
    pub(crate) async fn send_recorded<S>(
        &self,
        multipart: &Multipart,
        chunks: S,
        target: &Key,
        record: &Key,
        wanted: impl FnOnce(&Digest, u64) -> bool,
    ) -> Result<std::result::Result<bool, (Digest, u64)>>
    where
        S: futures::Stream<Item = Result<Bytes>> + Unpin,
    {
        let path = multipart.path(target);
        let upload_id = multipart
            .store
            .create_multipart(&path)
            .await
            .map_err(|e| StoreError::backend(target, e))?;
        let marker_key = Key::from(format!("{record}{MARKER_SUFFIX}"));
        let marker = Marker {
            key: target.to_string(),
            upload_id: upload_id.clone(),
            holder: Holder::current(),
        };
        let recorded = async {
            let bytes = serde_json::to_vec(&marker)
                .map_err(|source| StoreError::Json { key: marker_key.to_string(), source })?;
            self.create(&marker_key, Bytes::from(bytes)).await.map(|_| ())
        };
        let parts = send_parts(multipart, chunks, &path, target, &upload_id);
        // The server's own list finds an S3 upload whose marker is not written yet (as one
        // killed between its creation and its marker), so there the marker goes up beside the
        // parts. Elsewhere it is the only trace of the parts, and is written first.
        let sent = if multipart.writes_in_place() {
            let (recorded, sent) = futures::join!(recorded, parts);
            recorded.and(sent)
        } else {
            match recorded.await {
                Ok(()) => parts.await,
                Err(e) => Err(e),
            }
        };
        let finish = async {
            match sent {
                Ok((found, found_size, parts)) if wanted(&found, found_size) => {
                    self.complete(multipart, target, &upload_id, parts, found_size).await.map(Ok)
                }
                Ok((found, found_size, _)) => {
                    abort(multipart, &path, &upload_id).await;
                    Ok(Err((found, found_size)))
                }
                Err(e) => {
                    abort(multipart, &path, &upload_id).await;
                    Err(e)
                }
            }
        };
        // The upload is finished one way or the other once completed or aborted; a marker left
        // behind only makes gc try an abort that finds nothing. On S3 the marker goes while the
        // upload is completed: should this writer die meanwhile, gc finds the upload in the
        // server's list, as it finds one never recorded.
        let unrecord = async {
            match self.inner.delete(&marker_key).await {
                // A gc with a grace shorter than the upload took removed it already.
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => log::warn!("cannot remove upload marker {marker_key}: {e}"),
            }
        };
        if multipart.writes_in_place() {
            futures::join!(finish, unrecord).0
        } else {
            let outcome = finish.await;
            unrecord.await;
            outcome
        }
    }

    /// Completes an upload of verified bytes: create-only where it writes in place (whether
    /// it created the object), plainly to a staging key.
    async fn complete(
        &self,
        multipart: &Multipart,
        target: &Key,
        upload_id: &str,
        parts: Vec<PartId>,
        size: u64,
    ) -> Result<bool> {
        let path = multipart.path(target);
        let Some(s3) = &multipart.s3 else {
            multipart
                .store
                .complete_multipart(&path, &upload_id.to_string(), parts)
                .await
                .map_err(|e| StoreError::backend(target, e))?;
            return Ok(true);
        };
        match s3.complete_create_only(&path, upload_id, &parts).await? {
            Completed::Created => Ok(true),
            Completed::Exists => {
                abort(multipart, &path, upload_id).await;
                Ok(false)
            }
            // An attempt whose answer was lost completed it, or another writer's object is
            // there: either way the blob is whole if it has the size (reads verify the rest).
            Completed::Unknown => match self.inner.head(target).await {
                Ok(meta) if meta.size == size => Ok(false),
                Ok(meta) => Err(StoreError::IncompleteUpload {
                    key: target.to_string(),
                    expected: size,
                    found: meta.size,
                }),
                Err(source) => Err(StoreError::backend(target, source)),
            },
        }
    }

    /// Every upload marker under `uploads/`, with its upload id.
    pub(crate) async fn unfinished_uploads(&self) -> Result<Vec<UnfinishedUpload>> {
        let mut found = Vec::new();
        for entry in self.list_under(crate::key::UPLOADS).await? {
            if !entry.key.as_ref().ends_with(MARKER_SUFFIX) {
                continue;
            }
            let Some(bytes) = self.read_object(&entry.key).await? else { continue };
            let upload_id =
                serde_json::from_slice::<Marker>(&bytes).map(|m| m.upload_id).unwrap_or_default();
            found.push(UnfinishedUpload { marker: entry.key.to_string(), upload_id });
        }
        found.sort_by(|a, b| a.marker.cmp(&b.marker));
        Ok(found)
    }

    /// The multipart uploads in progress in the store that no marker records, where the
    /// backend can list them (S3; none elsewhere): each with the key it writes inside the
    /// store and the digest that key names. `recorded` are the upload ids markers hold.
    pub(crate) async fn unrecorded_uploads(
        &self,
        recorded: &HashSet<String>,
    ) -> Result<Vec<Unrecorded>> {
        let Some(multipart) = &self.multipart else { return Ok(Vec::new()) };
        let Some(listing) = &multipart.s3 else { return Ok(Vec::new()) };
        let prefix = if multipart.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", multipart.prefix)
        };
        let mut found = Vec::new();
        for upload in listing.list(&prefix).await? {
            if recorded.contains(&upload.upload_id) {
                continue;
            }
            let Some(inside) = upload.key.as_ref().strip_prefix(&prefix).map(Key::from) else {
                continue;
            };
            // Staging objects and published blobs name their digest; anything else under
            // the prefix is not kiln's.
            let digest = key::parse_blob(&inside)
                .or_else(|| inside.as_ref().strip_prefix("uploads/").and_then(key::upload_digest));
            if let Some(digest) = digest {
                found.push(Unrecorded { key: inside, digest, upload });
            }
        }
        Ok(found)
    }

    /// Aborts an upload no marker records.
    pub(crate) async fn abort_unrecorded(&self, upload: &Unrecorded) -> Result<()> {
        let Some(multipart) = &self.multipart else { return Ok(()) };
        let key = &upload.upload.key;
        match multipart.store.abort_multipart(key, &upload.upload.upload_id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::backend(key, source)),
        }
    }

    /// Aborts the upload `marker` records and deletes the marker.
    pub(crate) async fn abort_recorded(&self, marker: &Key) -> Result<()> {
        if let (Some(multipart), Some(bytes)) = (&self.multipart, self.read_object(marker).await?) {
            // A marker that does not decode names no upload that can be aborted.
            if let Ok(m) = serde_json::from_slice::<Marker>(&bytes) {
                let staging = Key::from(m.key.as_str());
                match multipart.store.abort_multipart(&multipart.path(&staging), &m.upload_id).await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(source) => return Err(StoreError::backend(&staging, source)),
                }
            }
        }
        match self.inner.delete(marker).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::backend(marker, source)),
        }
    }
}

/// Aborts an upload after a failure; the failure is the error worth reporting, so a failed
/// abort is only warned about (the marker stays for gc).
async fn abort(multipart: &Multipart, path: &Key, upload_id: &str) {
    if let Err(e) = multipart.store.abort_multipart(path, &upload_id.to_string()).await {
        log::warn!("cannot abort multipart upload {upload_id} of {path}: {e}");
    }
}

/// An upload's parts in flight, each on its own task (so hashing a part for its signature
/// runs beside the reading and hashing of the next); dropping this cancels those still
/// running, so none outlives the upload's abort.
struct InFlight(FuturesUnordered<JoinHandle<object_store::Result<(usize, PartId)>>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        for task in self.0.iter() {
            task.abort();
        }
    }
}

/// A part's task ended: its index and id, or why not.
fn part_done(
    joined: std::result::Result<object_store::Result<(usize, PartId)>, tokio::task::JoinError>,
    staging: &Key,
) -> Result<(usize, PartId)> {
    joined
        .map_err(|source| object_store::Error::JoinError { source })
        .and_then(|sent| sent)
        .map_err(|e| StoreError::backend(staging, e))
}

/// Sends `chunks` as parts of [`crate::blob::PART_SIZE`] bytes, each taking one of the
/// store's [`crate::blob::PARTS_IN_FLIGHT`] part slots until sent, returning the digest and
/// size of what was sent and the parts in order. On failure every part still in flight is
/// cancelled and waited for before the error is returned, so the caller's abort comes last.
async fn send_parts<S>(
    multipart: &Multipart,
    mut chunks: S,
    path: &Key,
    staging: &Key,
    upload_id: &str,
) -> Result<(Digest, u64, Vec<PartId>)>
where
    S: futures::Stream<Item = Result<Bytes>> + Unpin,
{
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut queue = VecDeque::new();
    let mut queued = 0usize;
    let mut parts: Vec<Option<PartId>> = Vec::new();
    let mut in_flight = InFlight(FuturesUnordered::new());
    let sent: Result<()> = async {
        let mut done = false;
        while !done {
            match chunks.try_next().await? {
                Some(chunk) => {
                    hasher.update(&chunk);
                    len += chunk.len() as u64;
                    queued += chunk.len();
                    queue.push_back(chunk);
                }
                None => done = true,
            }
            while queued >= crate::blob::PART_SIZE || (done && queued > 0) {
                let n = queued.min(crate::blob::PART_SIZE);
                queued -= n;
                // Back-pressure: a fast source waits for a part slot, shared by every upload
                // of the store, which bounds the memory all of them hold.
                let slot = multipart.slots.clone().acquire_owned().await.map_err(|_| {
                    StoreError::backend(
                        staging,
                        object_store::Error::Generic {
                            store: "multipart",
                            source: "the part slots were closed".into(),
                        },
                    )
                })?;
                let index = parts.len();
                parts.push(None);
                let (store, path, id) =
                    (multipart.store.clone(), path.clone(), upload_id.to_string());
                let payload = take(&mut queue, n);
                in_flight.0.push(tokio::spawn(async move {
                    let part = store.put_part(&path, &id, index, payload).await;
                    drop(slot);
                    part.map(|part| (index, part))
                }));
                // Parts already sent are recorded now, so a failed one stops the reading early.
                while let Some(Some(joined)) = in_flight.0.next().now_or_never() {
                    let (index, part) = part_done(joined, staging)?;
                    parts[index] = Some(part);
                }
            }
        }
        while let Some(joined) = in_flight.0.next().await {
            let (index, part) = part_done(joined, staging)?;
            parts[index] = Some(part);
        }
        Ok(())
    }
    .await;
    if let Err(e) = sent {
        for task in in_flight.0.iter() {
            task.abort();
        }
        while in_flight.0.next().await.is_some() {}
        return Err(e);
    }
    let parts = parts.into_iter().flatten().collect();
    Ok((hasher.finish(), len, parts))
}

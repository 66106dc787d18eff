//! Uploads of blobs. A small one is sent whole from memory, in a new session each time a
//! registry fails it. A large one streams from the store in one `PATCH`; when that fails (a
//! dropped connection, a 5xx), the upload's status says how much arrived and the rest is sent
//! from there in another `PATCH` (or, where the registry has forgotten the session, the whole
//! blob in a new one). Each attempt re-reads the blob from the store's verifying
//! stream and skips what the registry holds, so every byte is still checked
//! against the blob's digest and size, and a stored blob found corrupt cancels the session.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use kiln_oci::{Descriptor, Digest};
use kiln_store::{Store, StoreError};
use reqwest::Url;

use crate::error::{RegistryError, Result};
use crate::repository::Repository;

/// Upload sessions tried per blob, the wait before the next growing by this much each time.
const UPLOAD_ATTEMPTS: u32 = 3;
const UPLOAD_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);
/// Resumptions allowed per blob.
const RESUMES: u32 = 3;
/// The wait before a resumption, growing by this much each time.
const BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// Sends the blob `desc` from `store` into the upload session at `location` and completes it;
/// the registry checks the digest too.
pub async fn upload_resumable(
    store: &Store,
    repo: &Repository,
    location: Url,
    desc: &Descriptor,
) -> Result<()> {
    let (mut location, mut have, mut resumes) = (location, 0u64, 0);
    while have < desc.size {
        // The store's own error, if its copy turns out corrupt while streaming: that ends
        // the upload, where a failed request would be resumed.
        let corrupt: Arc<Mutex<Option<StoreError>>> = Arc::default();
        let body = skip(store.blob_stream(desc).await?, have, corrupt.clone());
        let sent = repo
            .patch_upload(&location, have, desc.size - have, reqwest::Body::wrap_stream(body))
            .await;
        let stored_error = corrupt.lock().ok().and_then(|mut slot| slot.take());
        match (sent, stored_error) {
            (_, Some(e)) => {
                cancel(repo, &location).await;
                return Err(e.into());
            }
            (Ok(next), None) => {
                location = next;
                have = desc.size;
            }
            (Err(e), None) if e.is_transient() && resumes < RESUMES => {
                resumes += 1;
                tokio::time::sleep(BACKOFF * resumes).await;
                let (next, held) = match repo.upload_status(&location).await {
                    Ok(status) => status,
                    // docker-registry signs the offset into the session's URL: once a PATCH
                    // is cut after some bytes landed, it no longer knows that URL (404) and
                    // drops the session. The blob starts over in a new one.
                    Err(RegistryError::Status { status: 404, .. }) => {
                        (repo.start_upload().await?, 0)
                    }
                    Err(e) => return Err(e),
                };
                if held > desc.size {
                    cancel(repo, &next).await;
                    return Err(RegistryError::Status {
                        method: "GET".to_string(),
                        url: next.to_string(),
                        status: 204,
                        body: format!("the upload holds {held} bytes of a {}-byte blob", desc.size),
                    });
                }
                location = next;
                have = held;
            }
            (Err(e), None) => {
                cancel(repo, &location).await;
                return Err(e);
            }
        }
    }
    complete(repo, &location, &desc.digest).await
}

/// Completes the upload at `location` (all bytes sent) with an empty `PUT ?digest=`, again
/// after a 5xx or a dropped connection. A completion that landed but whose answer was lost
/// leaves the blob in the registry, and the session gone: that counts as done.
async fn complete(repo: &Repository, location: &Url, digest: &Digest) -> Result<()> {
    let mut retries = 0;
    loop {
        let sent = repo.finish_upload(location, digest, 0, reqwest::Body::from(Bytes::new())).await;
        match sent {
            Err(e) if e.is_transient() && retries < RESUMES => {
                retries += 1;
                tokio::time::sleep(BACKOFF * retries).await;
            }
            Err(e) if retries > 0 && repo.has_blob(digest).await? => {
                log::warn!(
                    "the registry completed {digest} but answered: {}",
                    kiln_store::one_line(&e)
                );
                return Ok(());
            }
            done => return done,
        }
    }
}

async fn cancel(repo: &Repository, location: &Url) {
    if let Err(e) = repo.cancel_upload(location).await {
        log::warn!("cannot cancel the upload session {location}: {}", kiln_store::one_line(&e));
    }
}

/// `stream` without its first `offset` bytes; an error it yields is kept in `corrupt` and
/// ends the body.
fn skip(
    stream: futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
    offset: u64,
    corrupt: Arc<Mutex<Option<StoreError>>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let mut skipped = 0u64;
    stream.filter_map(move |item| {
        let out = match item {
            Ok(chunk) => {
                let len = chunk.len() as u64;
                if skipped + len <= offset {
                    skipped += len;
                    None
                } else {
                    let from = (offset.saturating_sub(skipped)) as usize;
                    skipped += len;
                    Some(Ok(chunk.slice(from..)))
                }
            }
            Err(e) => {
                let message = e.to_string();
                if let Ok(mut slot) = corrupt.lock() {
                    *slot = Some(e);
                }
                Some(Err(std::io::Error::other(message)))
            }
        };
        futures::future::ready(out)
    })
}

/// Sends a blob held in memory, in a new upload session each time a registry fails it
/// with a 5xx or a dropped connection.
pub(crate) async fn upload_bytes(repo: &Repository, digest: &Digest, bytes: Bytes) -> Result<()> {
    upload_bytes_in(repo, digest, bytes, None).await
}

/// [`upload_bytes`], first in `session` if the registry already opened one.
pub(crate) async fn upload_bytes_in(
    repo: &Repository,
    digest: &Digest,
    bytes: Bytes,
    mut session: Option<reqwest::Url>,
) -> Result<()> {
    let size = bytes.len() as u64;
    let mut attempt = 1;
    loop {
        let location = match session.take() {
            Some(location) => location,
            None => repo.start_upload().await?,
        };
        let body = reqwest::Body::from(bytes.clone());
        match repo.finish_upload(&location, digest, size, body).await {
            Err(e) if attempt < UPLOAD_ATTEMPTS && e.is_transient() => {
                tokio::time::sleep(UPLOAD_BACKOFF * attempt).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

//! Chunked, resumable blob uploads: a large blob goes up as `PATCH`es of [`CHUNK`] bytes,
//! each held in memory until the registry has taken it. When a `PATCH` fails (a dropped
//! connection, a 5xx), the upload's status says how much arrived, and the rest of the chunk
//! is sent from there, so a dropped connection costs at most one chunk, never the blob.

use bytes::{Bytes, BytesMut};
use futures::{Stream, TryStreamExt};
use kiln_oci::Digest;
use kiln_store::StoreError;
use reqwest::Url;

use crate::error::{RegistryError, Result};
use crate::repository::Repository;

/// The size of each `PATCH`.
pub const CHUNK: usize = 8 * 1024 * 1024;
/// Status-checked resumptions allowed per chunk.
const RESUMES: u32 = 3;
/// The wait before a resumption, growing by this much each time.
const BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// Sends blob `digest` from `chunks` into the upload session at `location`, chunk by chunk,
/// then completes it; the registry checks the digest. If `chunks` ends with an error (the
/// store found its copy corrupt), the session is cancelled and nothing is completed.
pub async fn upload_chunked<S>(
    repo: &Repository,
    location: Url,
    digest: &Digest,
    chunks: S,
) -> Result<()>
where
    S: Stream<Item = Result<Bytes, StoreError>> + Unpin,
{
    let mut chunks = chunks;
    let mut location = location;
    let mut offset = 0u64;
    let mut buffer = BytesMut::new();
    loop {
        let next = match chunks.try_next().await {
            Ok(next) => next,
            Err(e) => {
                if let Err(cancel) = repo.cancel_upload(&location).await {
                    eprintln!("warning: cannot cancel the upload session {location}: {cancel}");
                }
                return Err(e.into());
            }
        };
        let done = next.is_none();
        if let Some(bytes) = next {
            buffer.extend_from_slice(&bytes);
        }
        while buffer.len() >= CHUNK || (done && !buffer.is_empty()) {
            let chunk = buffer.split_to(CHUNK.min(buffer.len())).freeze();
            let len = chunk.len() as u64;
            location = send_chunk(repo, location, offset, chunk).await?;
            offset += len;
        }
        if done {
            break;
        }
    }
    repo.finish_upload(&location, digest, 0, reqwest::Body::from(Bytes::new())).await
}

/// Sends `chunk`, which starts at byte `offset` of the blob; returns where the upload
/// continues.
async fn send_chunk(repo: &Repository, location: Url, offset: u64, chunk: Bytes) -> Result<Url> {
    let end = offset + chunk.len() as u64;
    let (mut location, mut from) = (location, offset);
    let mut resumes = 0;
    loop {
        let rest = chunk.slice((from - offset) as usize..);
        match repo.patch_upload(&location, from, rest).await {
            Ok(next) => return Ok(next),
            Err(e) if e.is_transient() && resumes < RESUMES => {
                resumes += 1;
                tokio::time::sleep(BACKOFF * resumes).await;
                let (next, have) = repo.upload_status(&location).await?;
                if have < offset || have > end {
                    return Err(RegistryError::Status {
                        method: "GET".to_string(),
                        url: location.to_string(),
                        status: 204,
                        body: format!(
                            "the upload holds {have} bytes, but {offset} to {end} were being sent"
                        ),
                    });
                }
                location = next;
                from = have;
                if have == end {
                    return Ok(location);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

//! The two S3 multipart requests kiln needs and object_store does not expose, signed with the
//! credentials object_store resolved.
//!
//! - **Create-only completion** (`CompleteMultipartUpload` with `If-None-Match: *`): a large
//!   blob is uploaded in parts straight to its own key and completed only once kiln has hashed
//!   exactly the expected bytes, and only if no object is there yet. Each part's bytes are
//!   checked by the server against the SHA-256 its signed request names (SigV4 payload
//!   signing). So the bytes cross the wire once and are stored once, with no staging copy.
//! - **ListMultipartUploads**: a writer records its upload under `uploads/` (see
//!   [`crate::upload`]) only after the server has created it and answered with its id, so a
//!   process killed in that window leaves an upload no marker names, whose parts take space
//!   until aborted. The server's own list is the only way to find those.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{
    ClientConfigKey, ClientOptions, HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector,
};
use object_store::multipart::PartId;
use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{BackendError, Result, StoreError};

/// Uploads asked for per request; the most S3 returns.
const PAGE: &str = "1000";
/// The most of an answer kept: a full page of uploads is well under it, and a server that
/// sends more is not followed into unbounded memory.
const ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// How to list one bucket's multipart uploads.
#[derive(Clone)]
pub(crate) struct S3Multipart {
    s3: std::sync::Arc<AmazonS3>,
    client: HttpClient,
    /// The bucket's URL, without a trailing slash.
    bucket_url: Url,
    region: String,
}

impl std::fmt::Debug for S3Multipart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Multipart").field("bucket_url", &self.bucket_url.as_str()).finish()
    }
}

/// One upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InProgress {
    /// The key it writes, as the bucket names it (with the store's prefix).
    pub key: Key,
    pub upload_id: String,
    /// How long before the server listed it the server created it, by the server's clock
    /// (the `Date` of its answer against the upload's `Initiated`; the local clock only if
    /// it sent no date), so a local clock that is off does not age it.
    pub age: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<Upload>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    initiated: String,
}

impl S3Multipart {
    /// The requests for the bucket `builder` connects to, through `s3` (its credentials).
    pub(crate) fn new(
        builder: &AmazonS3Builder,
        s3: std::sync::Arc<AmazonS3>,
        bucket: &str,
    ) -> Result<S3Multipart> {
        let config = |key| builder.get_config_value(&key);
        let region = config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted =
            config(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| is_true(&v));
        // The same addressing object_store uses: a virtual-hosted endpoint already names the
        // bucket; a path-style one is followed by it.
        let bucket_url = match config(AmazonS3ConfigKey::Endpoint) {
            Some(endpoint) if virtual_hosted => endpoint,
            Some(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            None if virtual_hosted => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let bucket_url = Url::parse(bucket_url.trim_end_matches('/')).map_err(|e| {
            StoreError::InvalidOption {
                location: format!("s3://{bucket}"),
                key: "aws_endpoint".into(),
                reason: format!("not a URL: {e}"),
            }
        })?;
        let mut options = ClientOptions::new();
        for key in [ClientConfigKey::AllowHttp, ClientConfigKey::Timeout] {
            if let Some(value) = config(AmazonS3ConfigKey::Client(key)) {
                options = options.with_config(key, value);
            }
        }
        let client = ReqwestConnector::default().connect(&options).map_err(|source| {
            StoreError::Connect {
                location: format!("s3://{bucket}"),
                source: BackendError::new(source),
            }
        })?;
        Ok(S3Multipart { s3, client, bucket_url, region })
    }

    /// Every upload in progress whose key starts with `prefix`.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<InProgress>> {
        let failed = |reason: String| StoreError::ListUploads {
            bucket: self.bucket_url.to_string(),
            reason,
        };
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        let mut seen = HashSet::new();
        loop {
            let mut url = self.bucket_url.clone();
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("max-uploads", PAGE).append_pair("prefix", prefix);
                if let Some((key, id)) = &markers {
                    query.append_pair("key-marker", key).append_pair("upload-id-marker", id);
                }
                query.append_pair("uploads", "");
            }
            let Answer { status, date, body } = self
                .send(http::Method::GET, &url, &[], HttpRequestBody::empty())
                .await
                .map_err(|e| failed(e.to_string()))?;
            let listed_at = date.unwrap_or_else(SystemTime::now);
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                return Err(failed(format!("{status}: {text}")));
            }
            let page: ListResult = quick_xml::de::from_reader(body.as_ref())
                .map_err(|e| failed(format!("unreadable answer: {e}")))?;
            for upload in page.uploads {
                let initiated = chrono::DateTime::parse_from_rfc3339(&upload.initiated)
                    .map_err(|e| failed(format!("initiated {:?}: {e}", upload.initiated)))?;
                let initiated = SystemTime::from(initiated);
                found.push(InProgress {
                    key: Key::from(upload.key),
                    upload_id: upload.upload_id,
                    // `Date` has whole seconds, `Initiated` may have less: never below zero.
                    age: listed_at.duration_since(initiated).unwrap_or_default(),
                });
            }
            if !page.is_truncated {
                return Ok(found);
            }
            markers = Some(
                next_page(&mut seen, page.next_key_marker, page.next_upload_id_marker)
                    .ok_or_else(|| failed("a truncated listing with no way on".into()))?,
            );
        }
    }
}

/// The body of a CompleteMultipartUpload.
#[derive(Serialize)]
#[serde(rename = "CompleteMultipartUpload")]
struct Completion {
    #[serde(rename = "Part")]
    parts: Vec<CompletedPart>,
}

#[derive(Serialize)]
struct CompletedPart {
    #[serde(rename = "PartNumber")]
    number: usize,
    #[serde(rename = "ETag")]
    e_tag: String,
    #[serde(rename = "ChecksumSHA256", skip_serializing_if = "Option::is_none")]
    checksum_sha256: Option<String>,
}

/// What object_store keeps of a part when it asks the server for checksums (with
/// `aws_checksum_algorithm`); otherwise a part's id is its ETag alone.
#[derive(Deserialize)]
struct PartMetadata {
    e_tag: String,
    checksum_sha256: Option<String>,
}

impl Completion {
    fn of(parts: &[PartId]) -> Completion {
        let parts = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let (e_tag, checksum_sha256) =
                    match quick_xml::de::from_str::<PartMetadata>(&part.content_id) {
                        Ok(meta) => (meta.e_tag, meta.checksum_sha256),
                        Err(_) => (part.content_id.clone(), None),
                    };
                CompletedPart { number: i + 1, e_tag, checksum_sha256 }
            })
            .collect();
        Completion { parts }
    }
}

/// How a create-only completion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completed {
    /// The object now exists, made by this upload.
    Created,
    /// An object was already there (another writer's); this upload is left to abort.
    Exists,
    /// The server no longer knows the upload: an earlier attempt whose answer was lost may
    /// have completed it. The caller looks at the key.
    Unknown,
}

/// Attempts at a completion the server failed (5xx, a conflict, a dropped connection).
const COMPLETE_ATTEMPTS: u32 = 4;

impl S3Multipart {
    /// Completes `upload_id` of `key` (as the bucket names it) from `parts`, only if no object
    /// exists at `key`.
    pub(crate) async fn complete_create_only(
        &self,
        key: &Key,
        upload_id: &str,
        parts: &[PartId],
    ) -> Result<Completed> {
        let failed = |reason: String| StoreError::Complete { key: key.to_string(), reason };
        let body = quick_xml::se::to_string(&Completion::of(parts))
            .map_err(|e| failed(format!("cannot write the part list: {e}")))?;
        let mut url = self.bucket_url.clone();
        url.path_segments_mut()
            .map_err(|()| failed("the bucket URL cannot take a key".into()))?
            .extend(key.parts().map(|p| p.as_ref().to_string()));
        url.query_pairs_mut().append_pair("uploadId", upload_id);
        let mut last = String::new();
        for attempt in 0..COMPLETE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            let headers = [("If-None-Match", "*"), ("Content-Type", "application/xml")];
            let body = HttpRequestBody::from(body.clone());
            let (status, answer) = match self.send(http::Method::POST, &url, &headers, body).await {
                Ok(Answer { status, body, .. }) => (status, body),
                Err(Unsent::Transport(e)) => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(failed(e.to_string())),
            };
            let text = String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned();
            match status.as_u16() {
                // S3 may answer 200 and then report an error in the body.
                200 if !text.contains("<Error>") => return Ok(Completed::Created),
                412 => return Ok(Completed::Exists),
                404 if text.contains("NoSuchUpload") => return Ok(Completed::Unknown),
                200 | 409 | 500..=599 => last = format!("{status}: {text}"),
                _ => return Err(failed(format!("{status}: {text}"))),
            }
        }
        Err(failed(last))
    }
}

/// Why a signed request got no answer.
#[derive(Debug, thiserror::Error)]
enum Unsent {
    #[error("no credentials: {0}")]
    Credentials(String),
    #[error("{0}")]
    Request(String),
    /// The connection failed or dropped; worth another attempt.
    #[error("{0}")]
    Transport(String),
    #[error("the answer is larger than {ANSWER_LIMIT} bytes")]
    TooLarge,
}

/// A server's answer to a signed request.
struct Answer {
    status: http::StatusCode,
    /// The server's clock when it answered (its `Date` header), if it said.
    date: Option<SystemTime>,
    body: bytes::Bytes,
}

impl S3Multipart {
    /// Sends one request signed with the current credentials.
    async fn send(
        &self,
        method: http::Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: HttpRequestBody,
    ) -> std::result::Result<Answer, Unsent> {
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| Unsent::Credentials(e.to_string()))?;
        let mut request = http::Request::builder().method(method).uri(url.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(body).map_err(|e| Unsent::Request(e.to_string()))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let response =
            self.client.execute(request).await.map_err(|e| Unsent::Transport(e.to_string()))?;
        let status = response.status();
        let date = response
            .headers()
            .get(http::header::DATE)
            .and_then(|value| value.to_str().ok())
            .and_then(http_date);
        let mut chunks = response.into_body().bytes_stream();
        let mut body = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| Unsent::Transport(e.to_string()))?;
            if body.len() + chunk.len() > ANSWER_LIMIT {
                return Err(Unsent::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, date, body: body.into() })
    }
}

/// Where a truncated listing goes on: its markers, unless one is missing or the listing has
/// been there before (a server that loops would otherwise be listed forever).
fn next_page(
    seen: &mut HashSet<(String, String)>,
    key: Option<String>,
    id: Option<String>,
) -> Option<(String, String)> {
    let markers = (key?, id?);
    seen.insert(markers.clone()).then_some(markers)
}

/// An HTTP date (`Sun, 06 Dec 2026 08:00:00 GMT`).
fn http_date(value: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc2822(value).ok().map(SystemTime::from)
}

fn is_true(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listing() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/uploads/x</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/uploads/a</Key><UploadId>id1</UploadId>
    <Initiator><ID>i</ID></Initiator><StorageClass>STANDARD</StorageClass>
    <Initiated>2026-12-06T08:00:00.000Z</Initiated></Upload>
  <Upload><Key>p/blobs/sha256/ab</Key><UploadId>id2</UploadId>
    <Initiated>2026-12-06T08:00:01Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListResult = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("id2"));
        let keys: Vec<_> = page.uploads.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(keys, ["p/uploads/a", "p/blobs/sha256/ab"]);
        let empty = r#"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#;
        let page: ListResult = quick_xml::de::from_str(empty).unwrap();
        assert!(page.uploads.is_empty() && !page.is_truncated);
    }

    #[test]
    fn a_listing_goes_on_only_to_a_page_it_has_not_been_to() {
        let mut seen = HashSet::new();
        let page = |key: &str, id: &str| (Some(key.to_string()), Some(id.to_string()));
        let (a, b) = (page("k1", "i1"), page("k2", "i2"));
        assert_eq!(
            next_page(&mut seen, a.0.clone(), a.1.clone()),
            Some(("k1".into(), "i1".into()))
        );
        assert!(next_page(&mut seen, b.0.clone(), b.1.clone()).is_some());
        // A server that sends the listing round in a circle is not followed.
        assert_eq!(next_page(&mut seen, a.0, a.1), None);
        assert_eq!(next_page(&mut seen, Some("k3".into()), None), None);
        assert_eq!(next_page(&mut seen, None, Some("i3".into())), None);
    }

    #[test]
    fn reads_an_http_date() {
        let date = http_date("Sun, 06 Dec 2026 08:00:01 GMT").unwrap();
        let initiated = chrono::DateTime::parse_from_rfc3339("2026-12-06T08:00:00.000Z").unwrap();
        assert_eq!(date.duration_since(initiated.into()).unwrap(), Duration::from_secs(1));
        assert_eq!(http_date("yesterday"), None);
    }
}

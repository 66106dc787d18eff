//! One repository on a registry: its blobs and manifests, through the distribution API.

use std::sync::Arc;

use bytes::Bytes;
use kiln_oci::{media_type, Digest, RepoName};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{Method, Response, StatusCode, Url};

use crate::client::{read_limited, unexpected, Client};
use crate::error::{RegistryError, Result};

/// The most kiln reads of a manifest or index, as registries limit them.
pub const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;

/// Docker's schema 2 types, which registries and older tools still serve.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest type kiln reads.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A repository on a registry.
#[derive(Clone, Debug)]
pub struct Repository {
    client: Arc<Client>,
    name: RepoName,
}

/// A manifest as the registry sent it, checked against the digest it was asked for by.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    pub digest: Digest,
    /// The `mediaType` the JSON gives, else the `Content-Type` the registry sent.
    pub media_type: String,
}

impl Repository {
    pub fn new(client: Arc<Client>, name: RepoName) -> Repository {
        Repository { client, name }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The repository's name within its registry.
    pub fn name(&self) -> &RepoName {
        &self.name
    }

    /// `HOST/REPO`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.client.host(), self.name)
    }

    fn url(&self, rest: &str) -> Result<Url> {
        self.client.url(&format!("/v2/{}/{rest}", self.name))
    }

    /// The URL of blob `digest`, for messages.
    pub fn blob_url(&self, digest: &Digest) -> Result<Url> {
        self.url(&format!("blobs/{digest}"))
    }

    /// Whether the registry has blob `digest` in this repository.
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let url = self.blob_url(digest)?;
        let response = self.client.send(Method::HEAD, &url, HeaderMap::new(), None).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(unexpected(&Method::HEAD, &url, response).await),
        }
    }

    /// Opens an upload session; returns where to send the bytes.
    pub async fn start_upload(&self) -> Result<Url> {
        let url = self.url("blobs/uploads/")?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let response = self.client.send(Method::POST, &url, headers, Some(Bytes::new())).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(unexpected(&Method::POST, &url, response).await);
        }
        self.location(&url, &response)
    }

    /// Asks the registry to link blob `digest` from repository `from` on the same registry
    /// (a cross-repository mount), so its bytes need not be sent. Returns `None` when it was
    /// mounted, else the upload session the registry opened instead.
    pub async fn mount(&self, digest: &Digest, from: &RepoName) -> Result<Option<Url>> {
        let mut url = self.url("blobs/uploads/")?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let response = self.client.send(Method::POST, &url, headers, Some(Bytes::new())).await?;
        match response.status() {
            StatusCode::CREATED => Ok(None),
            StatusCode::ACCEPTED => Ok(Some(self.location(&url, &response)?)),
            _ => Err(unexpected(&Method::POST, &url, response).await),
        }
    }

    /// Sends `len` bytes from `body` as the part of the upload at `location` that starts at
    /// byte `start`, once; returns where the upload continues.
    pub async fn patch_upload(
        &self,
        location: &Url,
        start: u64,
        len: u64,
        body: reqwest::Body,
    ) -> Result<Url> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        let last = start + len.saturating_sub(1);
        let range = HeaderValue::from_str(&format!("{start}-{last}")).map_err(|_| {
            RegistryError::InvalidReference {
                reference: location.to_string(),
                reason: "bad content range".to_string(),
            }
        })?;
        headers.insert(CONTENT_RANGE, range);
        let response = self.client.send_stream(Method::PATCH, location, headers, body).await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(unexpected(&Method::PATCH, location, response).await);
        }
        self.location(location, &response)
    }

    /// How many bytes the upload at `location` holds, and where it continues.
    pub async fn upload_status(&self, location: &Url) -> Result<(Url, u64)> {
        let response = self.client.send(Method::GET, location, HeaderMap::new(), None).await?;
        if response.status() != StatusCode::NO_CONTENT {
            return Err(unexpected(&Method::GET, location, response).await);
        }
        // `Range: 0-N` means bytes 0 to N arrived; none, or `0-0` on an empty upload in
        // some registries, is read from the end given.
        let have = response
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('-'))
            .and_then(|(_, last)| last.parse::<u64>().ok())
            .map_or(0, |last| last + 1);
        let next = match response.headers().get(LOCATION) {
            Some(_) => self.location(location, &response)?,
            None => location.clone(),
        };
        Ok((next, have))
    }

    /// Abandons the upload at `location`.
    pub async fn cancel_upload(&self, location: &Url) -> Result<()> {
        let response = self.client.send(Method::DELETE, location, HeaderMap::new(), None).await?;
        if !response.status().is_success() {
            return Err(unexpected(&Method::DELETE, location, response).await);
        }
        Ok(())
    }

    /// Finishes the upload at `location` with the whole blob as one body.
    pub async fn finish_upload(
        &self,
        location: &Url,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let response = self.client.send_stream(Method::PUT, &url, headers, body).await?;
        if response.status() != StatusCode::CREATED {
            return Err(unexpected(&Method::PUT, &url, response).await);
        }
        Ok(())
    }

    fn location(&self, url: &Url, response: &Response) -> Result<Url> {
        let location =
            response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                RegistryError::Status {
                    method: "POST".to_string(),
                    url: url.to_string(),
                    status: response.status().as_u16(),
                    body: "no Location header".to_string(),
                }
            })?;
        url.join(location).map_err(|e| RegistryError::InvalidReference {
            reference: location.to_string(),
            reason: e.to_string(),
        })
    }

    /// Starts reading blob `digest` from byte `offset` on (a range request past 0); the
    /// caller checks what arrives.
    pub async fn get_blob_from(&self, digest: &Digest, offset: u64) -> Result<Response> {
        let url = self.blob_url(digest)?;
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|_| {
                    RegistryError::InvalidReference {
                        reference: url.to_string(),
                        reason: "bad range".to_string(),
                    }
                })?,
            );
        }
        let response = self.client.send(Method::GET, &url, headers, None).await?;
        let status = response.status();
        let resumed = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
        let ok = if offset == 0 {
            status.is_success()
        } else {
            status == StatusCode::PARTIAL_CONTENT && resumed
        };
        if !ok {
            return Err(unexpected(&Method::GET, &url, response).await);
        }
        Ok(response)
    }

    /// The digest `reference` (a tag or digest) names in the registry, or `None` when it is
    /// not there.
    pub async fn manifest_digest(&self, reference: &str) -> Result<Option<Digest>> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS));
        let response = self.client.send(Method::HEAD, &url, headers, None).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let digest = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                match digest {
                    Some(digest) => Ok(Some(digest)),
                    // Without the header, read it: the digest of the bytes is what counts.
                    None => Ok(self.get_manifest(reference, None).await?.map(|m| m.digest)),
                }
            }
            _ => Err(unexpected(&Method::HEAD, &url, response).await),
        }
    }

    /// Reads manifest `reference`, at most [`MANIFEST_LIMIT`] bytes, refusing bytes that do
    /// not hash to `expected` (when reading by digest); `None` when it is not there.
    pub async fn get_manifest(
        &self,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Option<Fetched>> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS));
        let response = self.client.send(Method::GET, &url, headers, None).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(unexpected(&Method::GET, &url, response).await);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = read_limited(response, &url, MANIFEST_LIMIT).await?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = expected {
            if digest != *expected {
                return Err(RegistryError::DigestMismatch {
                    url: url.to_string(),
                    expected: *expected,
                    found: digest,
                });
            }
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct MediaTypeOnly {
            media_type: Option<String>,
        }
        let parsed: MediaTypeOnly = serde_json::from_slice(&bytes)
            .map_err(|source| RegistryError::Json { what: url.to_string(), source })?;
        let media_type = parsed.media_type.unwrap_or(content_type);
        Ok(Some(Fetched { bytes, digest, media_type }))
    }

    /// Stores `bytes` as manifest `reference` (a digest or tag) of `media_type`, exactly.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<()> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let mut headers = HeaderMap::new();
        let content_type =
            HeaderValue::from_str(media_type).map_err(|_| RegistryError::Status {
                method: "PUT".to_string(),
                url: url.to_string(),
                status: 0,
                body: format!("media type {media_type:?} is not a header value"),
            })?;
        headers.insert(CONTENT_TYPE, content_type);
        let response = self.client.send(Method::PUT, &url, headers, Some(bytes)).await?;
        if response.status() != StatusCode::CREATED {
            return Err(unexpected(&Method::PUT, &url, response).await);
        }
        Ok(())
    }

    /// The referrers API's answer for `subject`: the index's bytes, or `None` where the
    /// registry has no referrers API (it answers 404).
    pub async fn referrers_api(&self, subject: &Digest) -> Result<Option<Bytes>> {
        let url = self.url(&format!("referrers/{subject}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(media_type::IMAGE_INDEX));
        let response = self.client.send(Method::GET, &url, headers, None).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(read_limited(response, &url, MANIFEST_LIMIT).await?)),
            _ => Err(unexpected(&Method::GET, &url, response).await),
        }
    }
}

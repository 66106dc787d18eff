//! `kiln pull`: an image from a registry into the store by digest, with every artifact that
//! refers to it. Every manifest is checked against the digest it was asked for by, every
//! blob against its descriptor's digest and size before it is kept; the tag is set last, so
//! a failed pull leaves no ref and no unverified byte (what was kept is verified content,
//! which gc collects once unreferenced).

use std::collections::{BTreeSet, HashSet};

use futures::{StreamExt, TryStreamExt};
use kiln_oci::{media_type, Descriptor, Digest, ImageManifest, RepoName, Tag};
use kiln_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::error::{RegistryError, Result};
use crate::referrers;
use crate::repository::{Fetched, Repository, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST};

/// Blobs fetched at once.
const BLOBS_IN_FLIGHT: usize = 4;
/// Requests per blob: the first, then resumptions after dropped connections.
const FETCH_ATTEMPTS: u32 = 3;

/// What a pull did (`kiln pull --json`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullReport {
    /// `HOST/REPO@sha256:...` pulled from.
    pub source: String,
    /// The pulled image's root digest.
    pub digest: Digest,
    /// Config and layer blobs of the image and its referrers.
    pub blobs: u64,
    /// Of those, the ones fetched (the store lacked them).
    pub blobs_fetched: u64,
    /// Bytes fetched.
    pub bytes_fetched: u64,
    /// Manifests and indexes of the image and its referrers.
    pub manifests: u64,
    /// Artifacts referring to the image brought along.
    pub referrers: u64,
    /// The tag set in the store, if asked for.
    pub tagged: Option<String>,
}

/// The children an index or manifest names.
#[derive(Deserialize)]
struct Children {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

fn is_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        media_type::IMAGE_INDEX
            | media_type::IMAGE_MANIFEST
            | DOCKER_MANIFEST
            | DOCKER_MANIFEST_LIST
    )
}

/// Manifests read so far, kept in memory (each at most [`crate::MANIFEST_LIMIT`]) until
/// every blob below them is stored.
#[derive(Default)]
struct Walk {
    manifests: Vec<Fetched>,
    blobs: Vec<Descriptor>,
    seen: HashSet<Digest>,
}

impl Walk {
    /// Reads the manifest `desc` (or the root, sized by what arrives) and everything below.
    async fn follow(
        &mut self,
        repo: &Repository,
        digest: Digest,
        size: Option<u64>,
    ) -> Result<Descriptor> {
        let root = self.read(repo, digest, size).await?;
        let mut pending = vec![root.clone()];
        while let Some(desc) = pending.pop() {
            let fetched = self.manifests.iter().find(|m| m.digest == desc.digest);
            let Some(fetched) = fetched else { continue };
            let what = format!("{}@{}", repo.describe(), desc.digest);
            let children: Children = serde_json::from_slice(&fetched.bytes)
                .map_err(|source| RegistryError::Json { what, source })?;
            for child in children.manifests {
                if self.seen.contains(&child.digest) {
                    continue;
                }
                pending.push(self.read(repo, child.digest, Some(child.size)).await?);
            }
            for blob in children.config.into_iter().chain(children.layers) {
                if self.seen.insert(blob.digest) {
                    self.blobs.push(blob);
                }
            }
        }
        Ok(root)
    }

    async fn read(
        &mut self,
        repo: &Repository,
        digest: Digest,
        size: Option<u64>,
    ) -> Result<Descriptor> {
        let fetched =
            repo.get_manifest(&digest.to_string(), Some(&digest)).await?.ok_or_else(|| {
                RegistryError::Status {
                    method: "GET".to_string(),
                    url: format!("{}@{digest}", repo.describe()),
                    status: 404,
                    body: "manifest unknown".to_string(),
                }
            })?;
        let found = fetched.bytes.len() as u64;
        if let Some(expected) = size.filter(|s| *s != found) {
            return Err(RegistryError::SizeMismatch {
                url: format!("{}@{digest}", repo.describe()),
                expected,
                found,
            });
        }
        let desc = Descriptor::new(fetched.media_type.clone(), digest, found);
        self.seen.insert(digest);
        self.manifests.push(fetched);
        Ok(desc)
    }
}

/// Pulls the image `digest` from `repo` into `store`, with its referrers, and tags it
/// `tag` in the store if given.
pub async fn pull(
    store: &Store,
    repo: &Repository,
    digest: Digest,
    tag: Option<(&RepoName, &Tag)>,
) -> Result<PullReport> {
    let mut walk = Walk::default();
    let root = walk.follow(repo, digest, None).await?;
    // Every artifact that refers to any manifest, and to those artifacts in turn.
    let mut links: BTreeSet<(Digest, Digest)> = BTreeSet::new();
    let mut artifacts: Vec<Descriptor> = Vec::new();
    let mut subjects: Vec<Digest> = walk.manifests.iter().map(|m| m.digest).collect();
    while let Some(subject) = subjects.pop() {
        for listed in referrers::list(repo, &subject).await? {
            if !is_manifest(&listed.media_type) || !links.insert((subject, listed.digest)) {
                continue;
            }
            if walk.seen.contains(&listed.digest) {
                continue;
            }
            let before = walk.manifests.len();
            walk.follow(repo, listed.digest, Some(listed.size)).await?;
            subjects.extend(walk.manifests[before..].iter().map(|m| m.digest));
            artifacts.push(listed);
        }
    }

    let lease = store.lease().await?;
    let mut digests: Vec<Digest> = walk.blobs.iter().map(|d| d.digest).collect();
    digests.extend(walk.manifests.iter().map(|m| m.digest));
    let stored = async {
        lease.add(&digests).await?;
        store_all(store, repo, &walk, &links, &root, tag).await
    }
    .await;
    // The lease goes either way: after a failure, what was kept is verified content that gc
    // may collect.
    let released = lease.release().await;
    let (fetched, tagged) = match (stored, released) {
        (Ok(done), Ok(())) => done,
        (Err(e), released) => {
            if let Err(release) = released {
                log::warn!("cannot release the pull's lease: {}", kiln_store::one_line(&release));
            }
            return Err(e);
        }
        (Ok(_), Err(e)) => return Err(e.into()),
    };
    Ok(PullReport {
        source: format!("{}@{}", repo.describe(), root.digest),
        digest: root.digest,
        blobs: walk.blobs.len() as u64,
        blobs_fetched: fetched.iter().flatten().count() as u64,
        bytes_fetched: fetched.iter().flatten().sum(),
        manifests: walk.manifests.len() as u64,
        referrers: artifacts.len() as u64,
        tagged,
    })
}

/// Stores every blob, then every manifest (children first), then the referrer entries, then
/// the tag. Returns the size of each blob fetched (None: already stored) and the tag set.
async fn store_all(
    store: &Store,
    repo: &Repository,
    walk: &Walk,
    links: &BTreeSet<(Digest, Digest)>,
    root: &Descriptor,
    tag: Option<(&RepoName, &Tag)>,
) -> Result<(Vec<Option<u64>>, Option<String>)> {
    let fetched: Vec<Option<u64>> = futures::stream::iter(&walk.blobs)
        .map(|desc| fetch_blob(store, repo, desc))
        .buffer_unordered(BLOBS_IN_FLIGHT)
        .try_collect()
        .await?;
    for manifest in walk.manifests.iter().rev() {
        store.put_blob(manifest.bytes.clone()).await?;
    }
    // The store's referrer entry is the artifact's descriptor as kiln writes it: media type,
    // digest and size of the manifest, with its artifact type and annotations.
    for (subject, artifact) in links {
        let Some(fetched) = walk.manifests.iter().find(|m| m.digest == *artifact) else { continue };
        let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes).map_err(|source| {
            RegistryError::Json { what: format!("{}@{artifact}", repo.describe()), source }
        })?;
        let mut desc =
            Descriptor::new(fetched.media_type.clone(), *artifact, fetched.bytes.len() as u64);
        desc.artifact_type = manifest.artifact_type.or(Some(manifest.config.media_type));
        desc.annotations = manifest.annotations;
        store.put_referrer(subject, &desc).await?;
    }
    let mut tagged = None;
    if let Some((name, tag)) = tag {
        store.set_ref(name, tag, root).await?;
        tagged = Some(format!("{name}:{tag}"));
    }
    Ok((fetched, tagged))
}

/// Fetches one blob into the store unless it is there; returns its size when fetched. The
/// store keeps it only if it is exactly `desc`'s bytes.
async fn fetch_blob(store: &Store, repo: &Repository, desc: &Descriptor) -> Result<Option<u64>> {
    if store.has_blob(&desc.digest).await? {
        return Ok(None);
    }
    let url = repo.blob_url(&desc.digest)?.to_string();
    let chunks = resumable(repo.clone(), desc.digest, url.clone());
    let mismatch = |found, found_size| {
        let source = if found_size != desc.size {
            RegistryError::SizeMismatch { url: url.clone(), expected: desc.size, found: found_size }
        } else {
            RegistryError::DigestMismatch { url: url.clone(), expected: desc.digest, found }
        };
        StoreError::Incoming { from: url.clone(), source: Box::new(source) }
    };
    store.put_blob_stream(chunks, &desc.digest, desc.size, mismatch).await?;
    Ok(Some(desc.size))
}

/// Where a blob download stands.
struct Download {
    repo: Repository,
    digest: Digest,
    url: String,
    /// Bytes received so far; a dropped connection resumes from here.
    offset: u64,
    /// Requests made so far.
    requests: u32,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    /// Set once an error was yielded: the stream ends there.
    failed: bool,
}

/// The bytes of blob `digest`, resumed with a range request from where they stopped when the
/// connection drops (up to [`FETCH_ATTEMPTS`] requests in all).
fn resumable(
    repo: Repository,
    digest: Digest,
    url: String,
) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>> {
    let start = Download { repo, digest, url, offset: 0, requests: 0, body: None, failed: false };
    futures::stream::unfold(start, |mut d| async move {
        if d.failed {
            return None;
        }
        loop {
            let body = match d.body.as_mut() {
                Some(body) => body,
                None => {
                    d.requests += 1;
                    match d.repo.get_blob_from(&d.digest, d.offset).await {
                        Ok(response) => d.body.insert(response.bytes_stream().boxed()),
                        Err(e) => {
                            d.failed = true;
                            let from = d.url.clone();
                            return Some((
                                Err(StoreError::Incoming { from, source: Box::new(e) }),
                                d,
                            ));
                        }
                    }
                }
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    d.offset += chunk.len() as u64;
                    return Some((Ok(chunk), d));
                }
                None => return None,
                // A dropped connection resumes; a stall does not (see `Client::send`).
                Some(Err(e)) if d.requests < FETCH_ATTEMPTS && !e.is_timeout() => d.body = None,
                Some(Err(source)) => {
                    d.failed = true;
                    let (from, url) = (d.url.clone(), d.url.clone());
                    let source = RegistryError::transfer("GET".to_string(), url, source);
                    return Some((Err(StoreError::Incoming { from, source: Box::new(source) }), d));
                }
            }
        }
    })
    .boxed()
}

//! `kiln push`: an image from the store into a registry repository, with every artifact
//! that refers to it. Blobs go first, and only those the registry lacks (asked with HEAD,
//! several at a time); then manifests, children before parents, as the exact stored bytes;
//! then the root under its tag; then the referrers indexes. A second push of the same image
//! sends nothing.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use kiln_attest::artifact::{SIGNATURE_ARTIFACT, SIMPLE_SIGNING_LAYER};
use kiln_oci::{media_type, Descriptor, Digest, ImageManifest, RepoName, Tag};
use kiln_store::{image_blobs, image_referrers, Store};
use serde::Serialize;

use crate::error::Result;
use crate::repository::Repository;
use crate::{referrers, upload};

/// Blobs checked and sent at once.
const BLOBS_IN_FLIGHT: usize = 4;
/// Blobs at most this large are read whole from the store before sending; larger ones
/// stream, so memory stays bounded.
const WHOLE_BLOB: u64 = 8 * 1024 * 1024;

/// What a push did (`kiln push --json`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    /// `HOST/REPO[:TAG]` pushed to.
    pub destination: String,
    /// The pushed image's root digest (its manifest or index).
    pub digest: Digest,
    /// Config and layer blobs of the image and its referrers.
    pub blobs: u64,
    /// Of those, the ones sent (the registry lacked them).
    pub blobs_uploaded: u64,
    /// Of those, the ones linked from another repository of the same registry instead.
    pub blobs_mounted: u64,
    /// Bytes of the blobs sent.
    pub bytes_uploaded: u64,
    /// Manifests and indexes of the image and its referrers.
    pub manifests: u64,
    /// Manifests, tags and referrers documents written (none when all were there).
    pub manifests_uploaded: u64,
    /// Artifacts referring to the image (signatures, SBOM, provenance, releases, ...).
    pub referrers: u64,
}

fn is_manifest(desc: &Descriptor) -> bool {
    matches!(desc.media_type.as_str(), media_type::IMAGE_INDEX | media_type::IMAGE_MANIFEST)
}

/// Pushes the image at `root` in `store`, and its referrers, to `repo`, tagging the root
/// `tag` if given.
pub async fn push(
    store: &Store,
    root: &Descriptor,
    repo: &Repository,
    tag: Option<&Tag>,
) -> Result<PushReport> {
    push_mounting(store, root, repo, tag, None).await
}

/// [`push`], asking the registry to mount each missing blob from repository `mount_from`
/// on the same registry before sending it.
pub async fn push_mounting(
    store: &Store,
    root: &Descriptor,
    repo: &Repository,
    tag: Option<&Tag>,
    mount_from: Option<&RepoName>,
) -> Result<PushReport> {
    let image = image_blobs(store, root).await?;
    let (artifacts, added) = image_referrers(store, &image).await?;
    let all: Vec<Descriptor> = image.into_iter().chain(added).collect();
    let (manifests, blobs): (Vec<&Descriptor>, Vec<&Descriptor>) =
        all.iter().partition(|d| is_manifest(d));

    let sent: Vec<Sent> = futures::stream::iter(blobs.iter().copied())
        .map(|desc| push_blob(store, repo, desc, mount_from))
        .buffer_unordered(BLOBS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut report = PushReport {
        destination: match tag {
            Some(tag) => format!("{}:{tag}", repo.describe()),
            None => repo.describe(),
        },
        digest: root.digest,
        blobs: blobs.len() as u64,
        blobs_uploaded: sent.iter().filter(|s| matches!(s, Sent::Uploaded(_))).count() as u64,
        blobs_mounted: sent.iter().filter(|s| matches!(s, Sent::Mounted)).count() as u64,
        bytes_uploaded: sent.iter().map(|s| if let Sent::Uploaded(n) = s { *n } else { 0 }).sum(),
        manifests: manifests.len() as u64,
        manifests_uploaded: 0,
        referrers: artifacts.len() as u64,
    };

    // Parents come before children in the walk: send them in reverse, so whatever a
    // manifest names is in the registry when it arrives.
    for desc in manifests.iter().rev() {
        if repo.manifest_digest(&desc.digest.to_string()).await?.is_none() {
            let bytes = store.get_described(desc).await?;
            repo.put_manifest(&desc.digest.to_string(), &desc.media_type, bytes).await?;
            report.manifests_uploaded += 1;
        }
    }
    if let Some(tag) = tag {
        if repo.manifest_digest(tag.as_str()).await? != Some(root.digest) {
            let bytes = store.get_described(root).await?;
            repo.put_manifest(tag.as_str(), &root.media_type, bytes).await?;
            report.manifests_uploaded += 1;
        }
    }
    report.manifests_uploaded += push_referrers(store, repo, root, &artifacts).await?;
    Ok(report)
}

/// Lists every artifact in its subject's referrers: through the fallback index where the
/// registry has no referrers API (where it has one, it indexed them as they arrived), and
/// signatures also in cosign's signature manifest. Returns the documents written.
async fn push_referrers(
    store: &Store,
    repo: &Repository,
    root: &Descriptor,
    artifacts: &[Descriptor],
) -> Result<u64> {
    let mut by_subject: BTreeMap<Digest, Vec<Descriptor>> = BTreeMap::new();
    let mut signatures: BTreeMap<Digest, Vec<Descriptor>> = BTreeMap::new();
    for artifact in artifacts {
        let manifest: ImageManifest = store.get_described_json(artifact).await?;
        let Some(subject) = manifest.subject else { continue };
        by_subject.entry(subject.digest).or_default().push(artifact.clone());
        if manifest.artifact_type.as_deref() == Some(SIGNATURE_ARTIFACT) {
            let layers =
                manifest.layers.into_iter().filter(|l| l.media_type == SIMPLE_SIGNING_LAYER);
            signatures.entry(subject.digest).or_default().extend(layers);
        }
    }
    let mut written = 0;
    let has_api = repo.referrers_api(&root.digest).await?.is_some();
    if !has_api {
        for (subject, entries) in &by_subject {
            written += u64::from(referrers::add_to_fallback(repo, subject, entries).await?);
        }
    }
    for (subject, layers) in &signatures {
        written += u64::from(referrers::add_signatures(repo, subject, layers).await?);
    }
    Ok(written)
}

/// What became of one blob.
enum Sent {
    /// The registry had it.
    Present,
    /// Linked from another repository.
    Mounted,
    /// Sent: this many bytes.
    Uploaded(u64),
}

/// Sends one blob unless the registry has it or mounts it.
async fn push_blob(
    store: &Store,
    repo: &Repository,
    desc: &Descriptor,
    mount_from: Option<&RepoName>,
) -> Result<Sent> {
    if repo.has_blob(&desc.digest).await? {
        return Ok(Sent::Present);
    }
    let mut session = None;
    if let Some(from) = mount_from {
        match repo.mount(&desc.digest, from).await? {
            None => return Ok(Sent::Mounted),
            Some(location) => session = Some(location),
        }
    }
    if desc.size <= WHOLE_BLOB {
        let bytes = store.get_described(desc).await?;
        upload::upload_bytes_in(repo, &desc.digest, bytes, session).await?;
    } else {
        let location = match session {
            Some(location) => location,
            None => repo.start_upload().await?,
        };
        // The store checks the bytes as they stream; a corrupt stored blob cancels the
        // upload, and the registry verifies the digest too, so it never lands there.
        upload::upload_resumable(store, repo, location, desc).await?;
    }
    Ok(Sent::Uploaded(desc.size))
}

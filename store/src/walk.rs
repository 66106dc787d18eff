//! Following an image's references: index → manifests → config and layers, and the
//! artifacts that refer to them (OCI 1.1 `subject`).

use std::collections::BTreeMap;

use bytes::Bytes;
use kiln_oci::{media_type, Descriptor, Digest, ImageIndex, ImageManifest};
use serde::de::DeserializeOwned;

use crate::{key, Store, StoreError};

/// Every blob of the image at `root`, `root` first, each once, parents before children. Each
/// index and manifest is read through its descriptor, so a wrong size anywhere is refused.
pub async fn image_blobs(store: &Store, root: &Descriptor) -> Result<Vec<Descriptor>, StoreError> {
    image_blobs_with(store, root, &BTreeMap::new()).await
}

/// The document `desc` describes: from `known` when it holds those very bytes (the caller
/// made them), otherwise read through its descriptor.
async fn document<T: DeserializeOwned>(
    store: &Store,
    desc: &Descriptor,
    known: &BTreeMap<Digest, Bytes>,
) -> Result<T, StoreError> {
    match known.get(&desc.digest) {
        Some(bytes) if bytes.len() as u64 == desc.size && Digest::of(bytes) == desc.digest => {
            serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
                key: key::blob(&desc.digest).to_string(),
                source,
            })
        }
        _ => store.get_described_json(desc).await,
    }
}

/// [`image_blobs`], taking the indexes and manifests in `known` (by digest) from there
/// instead of reading them: what they name is the same, but whether they are stored is not
/// looked at.
pub(crate) async fn image_blobs_with(
    store: &Store,
    root: &Descriptor,
    known: &BTreeMap<Digest, Bytes>,
) -> Result<Vec<Descriptor>, StoreError> {
    let mut out: Vec<Descriptor> = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(desc) = pending.pop() {
        if out.iter().any(|d| d.digest == desc.digest) {
            continue;
        }
        let mut children = Vec::new();
        match desc.media_type.as_str() {
            media_type::IMAGE_INDEX => {
                let index: ImageIndex = document(store, &desc, known).await?;
                children.extend(index.manifests);
            }
            media_type::IMAGE_MANIFEST => {
                let manifest: ImageManifest = document(store, &desc, known).await?;
                children.push(manifest.config);
                children.extend(manifest.layers);
            }
            _ => {}
        }
        out.push(desc);
        pending.extend(children.into_iter().rev());
    }
    Ok(out)
}

/// The artifact manifests that refer, directly or through one another, to any index or
/// manifest among `blobs` (signatures, SBOMs, provenance, disks), sorted by digest, and every
/// blob they add (their manifests, configs and layers), each once.
pub async fn image_referrers(
    store: &Store,
    blobs: &[Descriptor],
) -> Result<(Vec<Descriptor>, Vec<Descriptor>), StoreError> {
    let is_manifest = |d: &Descriptor| {
        matches!(d.media_type.as_str(), media_type::IMAGE_INDEX | media_type::IMAGE_MANIFEST)
    };
    let mut seen: std::collections::HashSet<_> = blobs.iter().map(|d| d.digest).collect();
    let mut subjects: Vec<_> = blobs.iter().filter(|d| is_manifest(d)).map(|d| d.digest).collect();
    let (mut artifacts, mut added) = (Vec::new(), Vec::new());
    while let Some(subject) = subjects.pop() {
        for artifact in store.referrers(&subject).await? {
            if artifacts.iter().any(|a: &Descriptor| a.digest == artifact.digest) {
                continue;
            }
            for blob in image_blobs(store, &artifact).await? {
                if seen.insert(blob.digest) {
                    if is_manifest(&blob) {
                        subjects.push(blob.digest);
                    }
                    added.push(blob);
                }
            }
            artifacts.push(artifact);
        }
    }
    artifacts.sort_by_key(|d| d.digest);
    Ok((artifacts, added))
}

//! Following an image's references: index → manifests → config and layers, and the
//! artifacts that refer to them (OCI 1.1 `subject`).

use kiln_oci::{media_type, Descriptor, ImageIndex, ImageManifest};

use crate::{Store, StoreError};

/// Every blob of the image at `root`, `root` first, each once, parents before children. Each
/// index and manifest is read through its descriptor, so a wrong size anywhere is refused.
pub async fn image_blobs(store: &Store, root: &Descriptor) -> Result<Vec<Descriptor>, StoreError> {
    let mut out: Vec<Descriptor> = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(desc) = pending.pop() {
        if out.iter().any(|d| d.digest == desc.digest) {
            continue;
        }
        let mut children = Vec::new();
        match desc.media_type.as_str() {
            media_type::IMAGE_INDEX => {
                let index: ImageIndex = store.get_described_json(&desc).await?;
                children.extend(index.manifests);
            }
            media_type::IMAGE_MANIFEST => {
                let manifest: ImageManifest = store.get_described_json(&desc).await?;
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

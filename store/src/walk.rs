//! Following an image's references: index → manifests → config and layers.

use kiln_oci::{media_type, Descriptor, ImageIndex, ImageManifest};

use crate::{Store, StoreError};

/// Every blob of the image at `root`, `root` first, each once, parents before children.
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
                let index: ImageIndex = store.get_json(&desc.digest).await?;
                children.extend(index.manifests);
            }
            media_type::IMAGE_MANIFEST => {
                let manifest: ImageManifest = store.get_json(&desc.digest).await?;
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

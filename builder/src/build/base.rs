//! The base image's part of a build: its layers read and verified, and which of them lie
//! under each platform's image.

use kiln_oci::Digest;

use crate::base::{BaseImage, BaseLayer};
use crate::build::error::BuildError;
use crate::build::options::BuildOptions;
use crate::build::sink::BlobSink;
use crate::recipe::Recipe;

/// Reads every layer of `base` into the scratch folder, checked against its digest, size and
/// diff_id, after checking that the base's layers and the recipe's `total` fit in one image.
/// Every build reads them: their blobs go into the image as they are, and their files into
/// disks and below the recipe's layers.
pub(super) fn read(
    recipe: &Recipe,
    base: Option<&BaseImage>,
    total: usize,
    opts: &BuildOptions,
    sink: &mut dyn BlobSink,
) -> Result<Vec<BaseLayer>, BuildError> {
    let Some(base) = base else { return Ok(Vec::new()) };
    let most = base.platforms.iter().map(|p| p.layers.len()).max().unwrap_or(0);
    if most + total > crate::recipe_toml::MAX_LAYERS {
        return Err(BuildError::TooManyLayers { base: most, recipe: total });
    }
    debug_assert_eq!(base.platforms.len(), recipe.platforms.len());
    Ok(base.read_layers(Some(sink), &opts.work_dir)?)
}

/// The base layers under platform `index`'s image, bottom first (none without a base).
pub(super) fn under<'a>(
    base: Option<&BaseImage>,
    layers: &'a [BaseLayer],
    index: usize,
) -> Vec<&'a BaseLayer> {
    let Some(platform) = base.and_then(|b| b.platforms.get(index)) else {
        return Vec::new();
    };
    platform
        .layers
        .iter()
        .filter_map(|r| layers.iter().find(|l| l.record.digest == r.digest))
        .collect()
}

/// The blob digests of `layers`: what tells one platform's base from another's.
pub(super) fn digests(layers: &[&BaseLayer]) -> Vec<Digest> {
    layers.iter().map(|l| l.record.digest).collect()
}

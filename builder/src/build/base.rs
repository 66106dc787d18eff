//! The base image's part of a build: its layers read and verified, and which of them lie
//! under each platform's image.

use std::collections::BTreeMap;

use kiln_oci::Digest;
use kiln_tree::tree::{Content, Entry, EntryKind};

use crate::base::{BaseError, BaseImage, BaseLayer, DPKG_STATUS_LIMIT};
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

/// dpkg's status file, as [`kiln_tree::image_path::ImagePath`] spells it (no leading `/`).
const DPKG_STATUS_PATH: &str = "var/lib/dpkg/status";

/// The packages dpkg's `status` records in the base layers `below` (flattened, whiteouts
/// applied), each with its paragraph: a recipe layer that installs packages lists them too,
/// so the image's database names every package it holds.
pub(super) fn dpkg_status(
    base: Option<&BaseImage>,
    below: &[&BaseLayer],
) -> Result<BTreeMap<String, String>, BuildError> {
    let mut out = BTreeMap::new();
    let Some(base) = base else { return Ok(out) };
    let mut rootfs = crate::rootfs::Rootfs::default();
    for layer in below {
        rootfs.push(&layer.tree)?;
    }
    let root = rootfs.finish()?;
    let Some(Entry { kind: EntryKind::File(content), .. }) = root.get(DPKG_STATUS_PATH) else {
        return Ok(out);
    };
    if content.size() > DPKG_STATUS_LIMIT {
        return Err(BaseError::DpkgStatus { base: base.spec.to_string() }.into());
    }
    let bytes = match content {
        Content::Bytes(b) => b.to_vec(),
        Content::Host(file) => std::fs::read(&file.path).map_err(|source| BaseError::Read {
            base: base.spec.to_string(),
            path: file.path.clone(),
            source,
        })?,
    };
    // The paragraphs are written into the image's own status file: bytes that are not
    // UTF-8 are refused rather than replaced, which would change them unseen.
    let text = std::str::from_utf8(&bytes)
        .map_err(|source| BaseError::DpkgStatusNotUtf8 { base: base.spec.to_string(), source })?;
    for paragraph in text.split("\n\n") {
        let paragraph = paragraph.trim_matches('\n');
        let name = paragraph.lines().find_map(|l| l.strip_prefix("Package:")).map(str::trim);
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            out.insert(name.to_string(), format!("{paragraph}\n"));
        }
    }
    Ok(out)
}

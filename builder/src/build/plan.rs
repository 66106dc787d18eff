//! What a build does before it writes anything: the lock checked against the inputs, every
//! layer looked up in the cache, and which layers need their trees made.

use std::path::Path;

use kiln_compress::Compression;
use kiln_disk::gpt::Arch;
use kiln_oci::{Digest, Sha256};
use kiln_tree::Epoch;

use crate::base::BaseLayer;
use crate::build::error::BuildError;
use crate::build::options::LockMode;
use crate::build::sink::BlobSink;
use crate::image::LayerRecord;
use crate::inputs::ResolvedLayer;
use crate::lock::{Lock, LockDifference, FORMAT_VERSION};
use crate::recipe::Recipe;

/// The layers' cache keys, what the cache holds for each, and how many trees must be made.
pub(super) struct Plan {
    /// One per layer (see [`layer_keys`]).
    pub keys: Vec<Digest>,
    /// The layer built before from each key, if its blob is still available.
    pub found: Vec<Option<LayerRecord>>,
    /// For each layer not found, whether the layers of platforms made before these (in the
    /// recipe's order) write it: then it is written once, by them.
    pub earlier: Vec<bool>,
    /// Trees are made for the layers below this index.
    pub trees: usize,
}

/// The lock file beside `recipe`, after checking that the inputs `current` may be built
/// against it: the host tools that decide output bytes always, every input when `mode` is
/// [`LockMode::Locked`].
pub(super) fn check_lock(
    recipe: &Recipe,
    mode: LockMode,
    current: &Lock,
) -> Result<Option<Lock>, BuildError> {
    let lock_path = Lock::path_for(&recipe.file);
    let existing = Lock::read(&lock_path)?;
    if let Some(difference) = existing.as_ref().and_then(|l| l.host_tool_difference(current)) {
        return Err(BuildError::LockMismatch { lock: lock_path, differences: vec![difference] });
    }
    if mode == LockMode::Locked {
        let Some(locked) = &existing else {
            return Err(BuildError::NoLock { recipe: recipe.file.clone(), lock: lock_path });
        };
        let differences = locked.differences(current);
        if !differences.is_empty() {
            return Err(BuildError::LockMismatch { lock: lock_path, differences });
        }
    }
    Ok(existing)
}

/// Looks every layer, made over the base layers `below`, up in the cache, and in `written`
/// (the keys of the layers this build writes for other platforms), and decides which trees
/// are needed.
pub(super) fn plan(
    recipe: &Recipe,
    epoch: Epoch,
    resolved: &[ResolvedLayer],
    below: &[&BaseLayer],
    written: &[Digest],
    sink: &mut dyn BlobSink,
) -> Result<Plan, BuildError> {
    let mut keys = layer_keys(resolved, epoch, &recipe.compression);
    if !below.is_empty() {
        keys = over_base(&keys, below);
    }
    let found = sink.cached_layers(&keys).map_err(BuildError::Sink)?;
    let earlier: Vec<bool> =
        keys.iter().zip(&found).map(|(k, f)| f.is_none() && written.contains(k)).collect();
    if recipe.disk.is_some() && !recipe.platforms.iter().any(|p| Arch::of(p).is_some()) {
        return Err(BuildError::DiskPlatform);
    }
    // Trees are made only for layers to be written and the layers below them (whose
    // directories a written layer's implicit parents take their metadata from), or for every
    // layer when disks are made.
    let trees = if recipe.disk.is_some() {
        resolved.len()
    } else {
        let to_write = found.iter().zip(&earlier).rposition(|(f, e)| f.is_none() && !e);
        to_write.map_or(0, |i| i + 1)
    };
    Ok(Plan { keys, found, earlier, trees })
}

/// Writes the lock file `current` over `existing` when they differ; returns whether it was
/// written and how `existing` differed.
pub(super) fn write_lock(
    path: &Path,
    existing: Option<&Lock>,
    current: &Lock,
) -> Result<(bool, Vec<LockDifference>), BuildError> {
    let written = existing != Some(current);
    let stale = existing.map(|l| l.differences(current)).unwrap_or_default();
    if written {
        current.write(path)?;
    }
    Ok((written, stale))
}

/// The layer keys of a recipe's layers made over base layers `below`: the base's diff_ids
/// decide the metadata of their implicit parent directories.
fn over_base(keys: &[Digest], below: &[&BaseLayer]) -> Vec<Digest> {
    let mut h = Sha256::new();
    h.update(b"kiln-layer-key over base\n");
    for layer in below {
        h.update(layer.record.diff_id.as_bytes());
    }
    keys.iter()
        .map(|key| {
            let mut k = h.clone();
            k.update(key.as_bytes());
            k.finish()
        })
        .collect()
}

/// The cache keys of a build's layers: everything that decides each layer's bytes. A layer's
/// digest names its declaration and every input's content, which make its tree; the digests
/// of the layers below it decide the metadata of its implicit parent directories (see
/// [`kiln_tree::tree::Tree::inherit_implicit`]); the output format, epoch and compressor make
/// the bytes from the tree. Keyed so, an unchanged layer is found without making its tree at
/// all, and a change below a layer rebuilds it, as in any layered build.
pub fn layer_keys(
    layers: &[ResolvedLayer],
    epoch: Epoch,
    compression: &Compression,
) -> Vec<Digest> {
    let mut h = Sha256::new();
    h.update(
        format!(
            "kiln-layer-key 5 format={FORMAT_VERSION} epoch={epoch} compression={}\n",
            compression.describe()
        )
        .as_bytes(),
    );
    layers
        .iter()
        .map(|layer| {
            h.update(layer.digest.as_bytes());
            h.clone().finish()
        })
        .collect()
}

impl Plan {
    /// The keys of the layers this plan writes.
    pub fn to_write(&self) -> impl Iterator<Item = &Digest> {
        let written = self.found.iter().zip(&self.earlier).map(|(f, e)| f.is_none() && !e);
        self.keys.iter().zip(written).filter(|(_, w)| *w).map(|(k, _)| k)
    }
}

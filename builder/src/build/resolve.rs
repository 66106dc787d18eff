//! Inputs hashed into layers and the lock they amount to, with Debian packages taken from the
//! lock or resolved; and the lock file written from them (`kiln lock`).

use kiln_disk::ext4::e2fsprogs_version;
use kiln_disk::RootFs;
use kiln_oci::Platform;
use kiln_tree::Epoch;

use crate::base::{self, BaseImage};
use crate::build::disks::error::DiskError;
use crate::build::error::BuildError;
use crate::build::sink::BlobSink;
use crate::hash_cache::HashCache;
use crate::inputs::{self, InputError, Install, ResolvedLayer};
use crate::lock::{Lock, LockDifference};
use crate::packages::{PackageError, Resolution};
use crate::recipe::{LayerSpec, Recipe};

/// The layers of the platforms that share them: every platform of a recipe without Debian
/// packages, else the platforms of one architecture, whose packages are that
/// architecture's.
#[derive(Debug)]
pub struct PlatformLayers {
    pub platforms: Vec<Platform>,
    pub layers: Vec<ResolvedLayer>,
}

/// Hashes every input and returns the layers plus the lock they amount to; Debian packages
/// come from the lock beside the recipe where it holds them, else are resolved.
pub fn resolve(
    recipe: &Recipe,
    epoch: Epoch,
    cache: &mut HashCache,
) -> Result<(Vec<PlatformLayers>, Lock), BuildError> {
    let (groups, lock, _) = resolve_with(recipe, epoch, cache, Resolution::Reuse, None)?;
    Ok((groups, lock))
}

/// [`resolve`], choosing when Debian packages are resolved again; also returns the base
/// image resolved for each platform (a registry base is read from `store`, where the caller
/// has pulled it).
pub fn resolve_with(
    recipe: &Recipe,
    epoch: Epoch,
    cache: &mut HashCache,
    resolution: Resolution,
    store: Option<&mut dyn BlobSink>,
) -> Result<(Vec<PlatformLayers>, Lock, Option<BaseImage>), BuildError> {
    let base = match &recipe.base {
        Some(spec) => Some(base::resolve(spec, &recipe.platforms, store)?),
        None => None,
    };
    let lock_path = Lock::path_for(&recipe.file);
    let existing = Lock::read(&lock_path)?;
    let (repositories, packages) =
        match crate::packages::plan(recipe, existing.as_ref(), resolution) {
            Ok(planned) => planned,
            // Only a `--locked` build refuses to resolve: it fails as for any input not locked.
            Err(PackageError::NotLocked { layer, architecture }) => {
                return Err(match existing {
                    None => BuildError::NoLock { recipe: recipe.file.clone(), lock: lock_path },
                    Some(_) => BuildError::LockMismatch {
                        lock: lock_path,
                        differences: vec![LockDifference::Packages { layer, architecture }],
                    },
                })
            }
            Err(e) => return Err(InputError::from(e).into()),
        };
    let mut groups = Vec::new();
    for (architecture, platforms) in platform_groups(recipe) {
        let cas = recipe
            .repositories
            .iter()
            .filter_map(|r| r.ca.as_ref().map(|ca| (r.url.clone(), ca.abs().to_path_buf())))
            .collect();
        let debian = inputs::Debian { locked: packages.clone(), architecture, cas };
        // A group has inputs given for one platform only when it is that platform alone.
        let first = &platforms[0];
        let layers = recipe
            .layers
            .iter()
            .map(|l| inputs::resolve_layer_with(&l.for_platform(first), cache, &debian))
            .collect::<Result<Vec<_>, _>>()?;
        groups.push(PlatformLayers { platforms, layers });
    }
    let all_inputs =
        groups.iter().flat_map(|g| &g.layers).flat_map(|l| l.inputs.iter().cloned()).collect();
    let e2fsprogs = match &recipe.disk {
        Some(spec) if spec.root == RootFs::Ext4 => {
            Some(e2fsprogs_version().map_err(DiskError::from)?)
        }
        _ => None,
    };
    let mut lock = Lock::new(recipe.digest, epoch, recipe.compression, e2fsprogs, all_inputs);
    lock.repositories = repositories;
    lock.packages = packages;
    lock.base = base.as_ref().map(BaseImage::locked);
    Ok((groups, lock, base))
}

/// The recipe's platforms grouped by the layers they share, each group with the
/// architecture its packages are for, in the recipe's order: one group per platform when an
/// input is given for one platform only, else one per architecture when a layer has
/// `packages`, else one of every platform.
fn platform_groups(recipe: &Recipe) -> Vec<(String, Vec<Platform>)> {
    let per_platform = recipe.layers.iter().any(LayerSpec::per_platform);
    let per_architecture = recipe.layers.iter().any(|l| !l.packages.is_empty());
    let mut groups: Vec<(String, Vec<Platform>)> = Vec::new();
    for p in &recipe.platforms {
        let shared = |a: &String| !per_platform && (!per_architecture || *a == p.architecture);
        match groups.iter_mut().find(|(a, _)| shared(a)) {
            Some((_, platforms)) => platforms.push(p.clone()),
            None => groups.push((p.architecture.clone(), vec![p.clone()])),
        }
    }
    groups
}

/// Writes (or rewrites) the lock file for `recipe`; returns it and whether it changed.
pub fn lock(
    recipe: &Recipe,
    epoch: Epoch,
    cache: &mut HashCache,
) -> Result<(Lock, bool), BuildError> {
    lock_with(recipe, epoch, cache, Resolution::Reuse, None)
}

/// [`lock`], choosing when Debian packages are resolved again (`kiln lock --update`), and
/// the store a registry base was pulled into.
pub fn lock_with(
    recipe: &Recipe,
    epoch: Epoch,
    cache: &mut HashCache,
    resolution: Resolution,
    store: Option<&mut dyn BlobSink>,
) -> Result<(Lock, bool), BuildError> {
    let (groups, lock, _) = resolve_with(recipe, epoch, cache, resolution, store)?;
    // A build makes a tree only for a layer it writes; a lock is written only for layers
    // that can be made (no path declared twice, no file where a folder must be).
    for mut group in groups {
        let mut status = std::collections::BTreeMap::new();
        for layer in &mut group.layers {
            layer.install(Install::Contents, None, &mut status)?;
            layer.tree()?;
        }
    }
    let path = Lock::path_for(&recipe.file);
    let changed = Lock::read(&path)?.as_ref() != Some(&lock);
    if changed {
        lock.write(&path)?;
    }
    Ok((lock, changed))
}

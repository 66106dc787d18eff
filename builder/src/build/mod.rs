//! A whole build: inputs hashed and checked against the lock, layers written or taken from
//! the cache, then config, manifests and index assembled, and the disks made.
//!
//! [`build()`] reads as the order of the work: `resolve` hashes the inputs, `plan` checks the
//! lock and looks layers up in the cache, `layers` makes, writes and stores the image, and
//! [`disks`] the `[disk]` outputs.

mod base;
pub mod disks;
mod error;
mod layers;
mod observer;
mod options;
mod parallel;
mod plan;
mod resolve;
pub mod sink;

use kiln_oci::{Descriptor, Digest, Platform};

use crate::base::{BaseImage, BaseLayer};
use crate::hash_cache::HashCache;
use crate::image::LayerRecord;
use crate::lock::{Lock, LockDifference};
use crate::packages::Resolution;
use crate::recipe::Recipe;

pub use error::BuildError;
pub use layers::CacheHit;
pub use observer::Observer;
pub use options::{BuildOptions, LockMode};
pub use plan::layer_keys;
pub use resolve::{lock, lock_with, resolve, resolve_with, PlatformLayers};
pub use sink::{BlobSink, BlobStream, SinkError};

/// What a build produced.
#[derive(Debug)]
pub struct BuildOutput {
    pub index: Descriptor,
    /// Per image manifest, the Debian packages installed, layer by layer, with the paths
    /// each one installed: those of written layers, and of every layer with
    /// [`BuildOptions::list_packages`].
    pub installed: Vec<(Digest, Vec<kiln_deb::Installed>)>,
    pub manifests: Vec<(Platform, Descriptor)>,
    /// Every layer, in layer order, of each list of layers that platforms share (see
    /// [`PlatformLayers`]) in turn.
    pub layers: Vec<(String, LayerRecord)>,
    pub layers_built: usize,
    pub layers_reused: usize,
    pub lock: Lock,
    /// True when the lock file was created or changed by this build.
    pub lock_written: bool,
    /// How the lock file found beside the recipe differed from the inputs, when this build
    /// rewrote it (empty when there was no lock, or it matched).
    pub lock_stale: Vec<LockDifference>,
    /// The disk artifact manifests, one per platform disks are made for, when the recipe
    /// has `[disk]`.
    pub disks: Vec<(Platform, Descriptor)>,
    /// How many of `disks` were found in the cache instead of being made.
    pub disks_reused: usize,
    /// The layers taken from the cache, in layer order.
    pub cache_hits: Vec<CacheHit>,
    /// The base image the recipe's layers went on, if it has one.
    pub base: Option<BaseImage>,
}

/// Builds `recipe` into `sink`.
pub fn build(
    recipe: &Recipe,
    opts: &BuildOptions,
    sink: &mut dyn BlobSink,
    observer: &dyn Observer,
) -> Result<BuildOutput, BuildError> {
    observer.hashing();
    let mut cache = match &opts.hash_cache {
        Some(file) => HashCache::load(file),
        None => HashCache::disabled(),
    };
    let resolution = match opts.lock_mode {
        LockMode::Locked => Resolution::LockedOnly,
        LockMode::Update => Resolution::Reuse,
    };
    let (resolved, current, base) =
        resolve_with(recipe, opts.epoch, &mut cache, resolution, Some(&mut *sink))?;
    // Saving the cache overlaps the rest of the build instead of delaying the first layer.
    // Losing the cache only costs time on the next build, so a failure to save it is a warning.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if let Err(e) = cache.save() {
                log::warn!(
                    "cannot save the input digests kiln remembers: {e}; the next \
                     build hashes every input again"
                );
            }
        });
        let built = build_resolved(recipe, opts, &mut *sink, observer, resolved, current, base);
        // Blobs the sink stores in the background are all stored, or have failed, before the
        // build returns: nothing reads the scratch folder after, and no failure goes unsaid.
        match (built, sink.settle()) {
            (Ok(out), Ok(())) => Ok(out),
            (Err(e), Ok(())) => Err(e),
            (Ok(_), Err(e)) => Err(BuildError::Sink(e)),
            (Err(e), Err(also)) => {
                log::warn!("storing a blob in the background failed too: {}", chain(&*also));
                Err(e)
            }
        }
    })
}

/// An error and its causes, on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The part of [`build`] after the inputs are hashed: lock check, layers, image, disks.
fn build_resolved(
    recipe: &Recipe,
    opts: &BuildOptions,
    sink: &mut dyn BlobSink,
    observer: &dyn Observer,
    mut groups: Vec<PlatformLayers>,
    current: Lock,
    base: Option<BaseImage>,
) -> Result<BuildOutput, BuildError> {
    let existing = plan::check_lock(recipe, opts.lock_mode, &current)?;
    let recipe_layers = groups.first().map_or(0, |g| g.layers.len());
    let base_layers = base::read(recipe, base.as_ref(), recipe_layers, opts, sink)?;
    for layer in &base_layers {
        let record = &layer.record;
        let descriptor = Descriptor::new(record.media_type.clone(), record.digest, record.size);
        sink.start_storing(&layer.path, &descriptor).map_err(BuildError::Sink)?;
    }
    let index_of = |p: &Platform| recipe.platforms.iter().position(|q| q == p).unwrap_or(0);
    let installs = recipe.layers.iter().any(|l| !l.packages.is_empty() || !l.debs.is_empty());
    // The cache is looked up for each list of layers that platforms share in turn, in the
    // recipe's order: a layer the same in two lists (one without packages) is written once,
    // by the first.
    let mut work = Vec::with_capacity(groups.len());
    let mut to_write: Vec<Digest> = Vec::new();
    for group in &mut groups {
        let under: Vec<Vec<&BaseLayer>> = group
            .platforms
            .iter()
            .map(|p| base::under(base.as_ref(), &base_layers, index_of(p)))
            .collect();
        // The layers are made over the group's first platform's base: their implicit parent
        // directories take its metadata.
        let below: &[&BaseLayer] = under.first().map_or(&[], Vec::as_slice);
        let plan = plan::plan(recipe, opts.epoch, &group.layers, below, &to_write, sink)?;
        to_write.extend(plan.to_write().copied());
        work.push(parallel::Work { group, plan: (plan, under) });
    }
    let make = |work: parallel::Work<'_, (plan::Plan, Vec<Vec<&BaseLayer>>)>,
                slot: &mut parallel::Slot|
     -> Result<_, parallel::Halt> {
        let (plan, under) = work.plan;
        let group = work.group;
        let below: &[&BaseLayer] = under.first().map_or(&[], Vec::as_slice);
        let base_status = match installs {
            true => base::dpkg_status(base.as_ref(), below)?,
            false => Default::default(),
        };
        layers::install_packages(&mut group.layers, &plan, opts, slot, base_status)?;
        slot.stop.check()?;
        // Every tree to be made, and the disks' inputs, are checked before anything is
        // stored, so that a bad layer or `[disk]` table (a path declared twice, a whiteout
        // escaping the root, a missing ESP file, no disk platform) leaves the store as it was.
        let flat = layers::flatten(recipe, &group.platforms, &group.layers, &plan, &under)?;
        // Everything is made in the scratch folder first, and nothing names a blob before
        // the whole build, disks included, has succeeded: a disk too small for its root, or
        // any other late failure, leaves no manifest, tag or cache entry. A sink storing
        // remotely uploads each finished blob while the next is made (see
        // `BlobSink::start_storing`), so such a failure may leave whole, verified blobs that
        // nothing names, which gc removes; a folder store is left as it was.
        let made = layers::write_layers(
            recipe,
            opts,
            slot,
            &group.platforms,
            observer,
            &plan.keys,
            &flat,
        )?;
        Ok((flat, made))
    };
    let made = parallel::make_all(work, opts.threads, sink, make)?;
    for group in &groups {
        layers::tell_skipped_scripts(&group.layers, observer);
    }
    let mut written: Vec<(Digest, LayerRecord)> = Vec::new();
    let mut built = Vec::with_capacity(made.len());
    for (flat, made) in made {
        written.extend(made.written());
        built.push((flat, made.complete(&written)));
    }
    let per_group: Vec<_> =
        groups.iter().zip(&built).map(|(g, (_, l))| (&g.platforms[..], &l.records[..])).collect();
    let image = layers::image_documents(recipe, opts, base.as_ref(), &per_group)?;
    let disks = match &recipe.disk {
        Some(spec) => {
            // Each manifest's root: its group's layers over its own platform's base.
            let roots: Vec<_> = image
                .manifests
                .iter()
                .map(|(platform, _)| {
                    let g = groups.iter().position(|g| g.platforms.contains(platform))?;
                    let below = base::under(base.as_ref(), &base_layers, index_of(platform));
                    built[g].0.rootfs(&base::digests(&below))
                })
                .collect();
            disks::prepare(
                spec,
                &roots,
                &image.manifests,
                current.e2fsprogs.as_deref(),
                opts,
                sink,
            )?
        }
        None => Vec::new(),
    };
    let (flats, layers): (Vec<_>, Vec<_>) = built.into_iter().unzip();
    layers::store_image(sink, &base_layers, &layers, &image)?;
    let disks = disks::store(sink, disks)?;
    let (lock_written, lock_stale) =
        plan::write_lock(&Lock::path_for(&recipe.file), existing.as_ref(), &current)?;

    let installed = image
        .manifests
        .iter()
        .filter_map(|(platform, manifest)| {
            let group = groups.iter().find(|g| g.platforms.contains(platform))?;
            let packages = group.layers.iter().flat_map(|l| l.installed.iter().cloned());
            Some((manifest.digest, packages.collect()))
        })
        .collect();
    let mut records = Vec::new();
    let mut cache_hits = Vec::new();
    for l in &layers {
        let offset = records.len();
        cache_hits.extend(l.cache_hits.iter().map(|h| CacheHit { layer: h.layer + offset, ..*h }));
        records.extend(l.records.iter().cloned());
    }
    release(groups, flats, base_layers);
    Ok(BuildOutput {
        installed,
        index: image.index.descriptor,
        manifests: image.manifests,
        layers_built: layers.iter().map(|l| l.written.len()).sum(),
        layers_reused: cache_hits.len(),
        layers: records,
        lock: current,
        lock_written,
        lock_stale,
        disks: disks.artifacts,
        disks_reused: disks.reused,
        cache_hits,
        base,
    })
}

/// Removes tarballs' spooled contents now (the process may end before the thread below runs),
/// and frees the rest on a detached thread: freeing what the scan kept and the trees made
/// (allocations per input file) is a visible share of a large rebuild, all of it after the
/// work is done, and nothing needs to wait for it. Should no thread start, the closure and
/// what it holds are dropped here instead, which only takes longer.
fn release(mut groups: Vec<PlatformLayers>, flat: Vec<layers::Flattened>, base: Vec<BaseLayer>) {
    for layer in groups.iter_mut().flat_map(|g| &mut g.layers) {
        layer.remove_spools();
    }
    let spawned = std::thread::Builder::new().spawn(move || drop((groups, flat, base)));
    drop(spawned);
}

//! A whole build: inputs hashed and checked against the lock, layers written or taken from
//! the cache, then config, manifests and index assembled.

use std::path::{Path, PathBuf};

use kiln_oci::{Descriptor, Digest, Platform, Sha256};

use kiln_compress::Compression;
use kiln_tree::tree::{EntryKind, Tree};
use kiln_tree::Epoch;

use kiln_disk::ext4::e2fsprogs_version;
use kiln_disk::gpt::Arch;
use kiln_disk::RootFs;

use crate::build::disks::{esp_tree, make_disks, DiskError, DiskOutput};
use crate::hash_cache::HashCache;
use crate::image::{self, JsonBlob, LayerRecord};
use crate::inputs::{self, InputError, ResolvedLayer};
use crate::layer::{self, LayerBlob, LayerError};
use crate::lock::{Lock, LockDifference, LockError, FORMAT_VERSION};
use crate::packages::{PackageError, Resolution};
use crate::recipe::{DiskSpec, Recipe};
use crate::rootfs::{Rootfs, RootfsError};

pub mod disks;
mod hashed_file;

/// An error from the code that stores blobs, kept opaque to the builder.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where a build puts its blobs and looks up earlier layers. The builder never talks to a
/// store itself; the caller wires one in.
pub trait BlobSink {
    /// For each key, the layer built before from it, if its blob is still available (all keys
    /// at once, so a remote store can look them up concurrently).
    fn cached_layers(&mut self, keys: &[Digest]) -> Result<Vec<Option<LayerRecord>>, SinkError>;
    /// Stores a freshly written layer blob and remembers it under `key`; the blob's scratch
    /// file is the sink's to keep, move or delete.
    fn put_layer(&mut self, key: &Digest, layer: &LayerBlob) -> Result<(), SinkError>;
    /// Stores a JSON document (config, manifest, index).
    fn put_json(&mut self, blob: &JsonBlob) -> Result<(), SinkError>;
    /// Stores the scratch file at `path` (a disk image) as the blob `descriptor` names; the
    /// file is the sink's to keep, move or delete.
    fn put_file(&mut self, path: &Path, descriptor: &Descriptor) -> Result<(), SinkError>;
    /// A disk artifact manifest made before under `key`, if it and every blob it names are
    /// still stored.
    fn cached_disk(&mut self, key: &Digest) -> Result<Option<Descriptor>, SinkError>;
    /// Remembers the disk artifact manifest `artifact` under `key`.
    fn remember_disk(&mut self, key: &Digest, artifact: &Descriptor) -> Result<(), SinkError>;
    /// Records that the artifact manifest `artifact` refers to `subject` (OCI 1.1 referrer).
    fn put_referrer(&mut self, subject: &Digest, artifact: &Descriptor) -> Result<(), SinkError>;
    /// Copies the stored blob `descriptor` names to the new file `target`, verified against
    /// its digest and size; `Ok(false)` when the store does not have it.
    fn copy_blob(&mut self, descriptor: &Descriptor, target: &Path) -> Result<bool, SinkError>;
}

/// Hears about progress; every method defaults to doing nothing.
pub trait Observer {
    /// Inputs of all layers are being hashed.
    fn hashing(&self) {}
    /// Layer `index` of `total` starts; `bytes` is the content size of a layer to be
    /// written, `None` for one found in the cache.
    fn layer_started(&self, _name: &str, _index: usize, _total: usize, _bytes: Option<u64>) {}
    /// A layer finished, either written or reused from the cache.
    fn layer_finished(&self, _name: &str, _reused: bool) {}
    /// A Debian package was installed without running the maintainer scripts it has.
    fn scripts_skipped(&self, _package: &str, _scripts: &[&str]) {}
}

/// How the lock file is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Any difference from the lock (or no lock) is an error.
    Locked,
    /// The lock is written or rewritten to match the inputs.
    Update,
}

/// What a build needs besides the recipe.
pub struct BuildOptions {
    pub epoch: Epoch,
    pub threads: usize,
    /// A scratch folder for layer blobs before they are stored.
    pub work_dir: PathBuf,
    pub lock_mode: LockMode,
    /// Where input file digests are remembered between builds; `None` re-reads every input.
    pub hash_cache: Option<PathBuf>,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildOutput {
    pub index: Descriptor,
    /// The Debian packages installed, layer by layer, with the paths each one installed.
    pub installed: Vec<kiln_deb::Installed>,
    pub manifests: Vec<(Platform, Descriptor)>,
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
}

/// A layer whose blob was found in the cache rather than written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheHit {
    /// Its position in [`BuildOutput::layers`].
    pub layer: usize,
    /// The cache key it was found under (see [`layer_keys`]).
    pub key: Digest,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{recipe}: no lock file at {lock}; run `kiln lock {recipe}` first (or build without --locked)", recipe = .recipe.display(), lock = .lock.display())]
    NoLock { recipe: PathBuf, lock: PathBuf },
    #[error("inputs differ from {}:\n  {}\nrun `kiln lock` to accept the change, or restore the inputs", .lock.display(), .differences.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n  "))]
    LockMismatch { lock: PathBuf, differences: Vec<LockDifference> },
    #[error("layer {name:?}")]
    Layer { name: String, source: Box<LayerError> },
    #[error("storing blobs")]
    Sink(#[source] SinkError),
    #[error("serialising {what}")]
    Json { what: &'static str, source: serde_json::Error },
    #[error(transparent)]
    Layers(#[from] RootfsError),
    #[error("[disk]")]
    Disk(#[from] DiskError),
    #[error(
        "[disk] makes disks for linux/amd64, linux/arm64 and linux/riscv64, and the recipe's \
         platforms include none of them"
    )]
    DiskPlatform,
}

/// Hashes every input and returns the layers plus the lock they amount to; Debian packages
/// come from the lock beside the recipe where it holds them, else are resolved.
pub fn resolve(
    recipe: &Recipe,
    epoch: Epoch,
    cache: &mut HashCache,
) -> Result<(Vec<ResolvedLayer>, Lock), BuildError> {
    resolve_with(recipe, epoch, cache, Resolution::Reuse, None)
}

/// [`resolve`], choosing when Debian packages are resolved again, and where package files
/// are kept between builds (`store`: taken from it when there, put into it when fetched).
pub fn resolve_with(
    recipe: &Recipe,
    epoch: Epoch,
    cache: &mut HashCache,
    resolution: Resolution,
    store: Option<&mut dyn BlobSink>,
) -> Result<(Vec<ResolvedLayer>, Lock), BuildError> {
    let lock_path = Lock::path_for(&recipe.file);
    let existing = Lock::read(&lock_path)?;
    let (repositories, packages) =
        match crate::packages::plan(recipe, existing.as_ref(), resolution) {
            Ok(planned) => planned,
            // Only a `--locked` build refuses to resolve: it fails as for any input not locked.
            Err(PackageError::NotLocked { layer }) => {
                return Err(match existing {
                    None => BuildError::NoLock { recipe: recipe.file.clone(), lock: lock_path },
                    Some(_) => BuildError::LockMismatch {
                        lock: lock_path,
                        differences: vec![LockDifference::Packages { layer }],
                    },
                })
            }
            Err(e) => return Err(InputError::from(e).into()),
        };
    let mut debian = inputs::Debian { locked: packages.clone(), store, ..Default::default() };
    let layers = recipe
        .layers
        .iter()
        .map(|l| inputs::resolve_layer_with(l, cache, &mut debian))
        .collect::<Result<Vec<_>, _>>()?;
    let all_inputs = layers.iter().flat_map(|l| l.inputs.iter().cloned()).collect();
    let e2fsprogs = match &recipe.disk {
        Some(spec) if spec.root == RootFs::Ext4 => {
            Some(e2fsprogs_version().map_err(DiskError::from)?)
        }
        _ => None,
    };
    let mut lock = Lock::new(recipe.digest, epoch, recipe.compression, e2fsprogs, all_inputs);
    lock.repositories = repositories;
    lock.packages = packages;
    Ok((layers, lock))
}

/// Writes (or rewrites) the lock file for `recipe`; returns it and whether it changed.
pub fn lock(
    recipe: &Recipe,
    epoch: Epoch,
    cache: &mut HashCache,
) -> Result<(Lock, bool), BuildError> {
    lock_with(recipe, epoch, cache, Resolution::Reuse)
}

/// [`lock`], choosing when Debian packages are resolved again (`kiln lock --update`).
pub fn lock_with(
    recipe: &Recipe,
    epoch: Epoch,
    cache: &mut HashCache,
    resolution: Resolution,
) -> Result<(Lock, bool), BuildError> {
    let (layers, lock) = resolve_with(recipe, epoch, cache, resolution, None)?;
    // A build makes a tree only for a layer it writes; a lock is written only for layers
    // that can be made (no path declared twice, no file where a folder must be).
    for layer in &layers {
        layer.tree()?;
    }
    let path = Lock::path_for(&recipe.file);
    let changed = Lock::read(&path)?.as_ref() != Some(&lock);
    if changed {
        lock.write(&path)?;
    }
    Ok((lock, changed))
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
    let (resolved, current) =
        resolve_with(recipe, opts.epoch, &mut cache, resolution, Some(&mut *sink))?;
    for layer in &resolved {
        for (package, scripts) in &layer.skipped_scripts {
            observer.scripts_skipped(package, scripts);
        }
    }
    // Saving the cache overlaps the rest of the build instead of delaying the first layer.
    // Losing the cache only costs time on the next build, so a failure to save it is a warning.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if let Err(e) = cache.save() {
                eprintln!(
                    "warning: cannot save the input digests kiln remembers: {e}; the next \
                     build hashes every input again"
                );
            }
        });
        build_resolved(recipe, opts, sink, observer, resolved, current)
    })
}

/// The part of [`build`] after the inputs are hashed: lock check, layers, image, disks.
fn build_resolved(
    recipe: &Recipe,
    opts: &BuildOptions,
    sink: &mut dyn BlobSink,
    observer: &dyn Observer,
    resolved: Vec<ResolvedLayer>,
    current: Lock,
) -> Result<BuildOutput, BuildError> {
    let lock_path = Lock::path_for(&recipe.file);
    let existing = Lock::read(&lock_path)?;
    if let Some(difference) = existing.as_ref().and_then(|l| l.host_tool_difference(&current)) {
        return Err(BuildError::LockMismatch { lock: lock_path, differences: vec![difference] });
    }
    if opts.lock_mode == LockMode::Locked {
        let Some(locked) = &existing else {
            return Err(BuildError::NoLock { recipe: recipe.file.clone(), lock: lock_path });
        };
        let differences = locked.differences(&current);
        if !differences.is_empty() {
            return Err(BuildError::LockMismatch { lock: lock_path, differences });
        }
    }

    let total = resolved.len();
    let keys = layer_keys(&resolved, opts.epoch, &recipe.compression);
    let found = sink.cached_layers(&keys).map_err(BuildError::Sink)?;

    // Trees are made only for layers to be written and the layers below them (whose
    // directories a written layer's implicit parents take their metadata from), or for every
    // layer when disks are made. All of them, and the disks' inputs, are checked before
    // anything is stored, so that a bad layer or `[disk]` table (a path declared twice, a
    // whiteout escaping the root, a missing ESP file, no disk platform) leaves the store as
    // it was.
    if recipe.disk.is_some() && !recipe.platforms.iter().any(|p| Arch::of(p).is_some()) {
        return Err(BuildError::DiskPlatform);
    }
    let needed = if recipe.disk.is_some() {
        total
    } else {
        found.iter().rposition(Option::is_none).map_or(0, |i| i + 1)
    };
    let mut lower = Rootfs::default();
    let mut plans = Vec::with_capacity(total);
    for (i, (layer, found)) in resolved.iter().zip(found).enumerate() {
        let tree = if i < needed {
            let mut tree = layer.tree()?;
            tree.inherit_implicit(|path| lower.dir_meta(path));
            lower.push(&tree)?;
            Some(tree)
        } else {
            None
        };
        let plan = match found {
            Some(record) => Plan::Cached(record),
            // Every layer to write is below `needed`, so its tree was made above.
            None => Plan::Write(tree.map_or_else(|| layer.tree(), Ok)?),
        };
        plans.push((layer.name.clone(), plan));
    }
    let rootfs = match &recipe.disk {
        Some(spec) => {
            let rootfs = lower.finish()?;
            if let Some(esp) = &spec.esp {
                esp_tree(&rootfs, esp)?;
            }
            Some(rootfs)
        }
        None => None,
    };
    // Everything is made in the scratch folder first and stored only once the whole build,
    // disks included, has succeeded: a disk too small for its root, or any other late
    // failure, leaves the store as it was.
    let mut layers: Vec<(String, LayerRecord)> = Vec::with_capacity(total);
    let mut cache_hits = Vec::new();
    let mut written_layers: Vec<(&Digest, LayerBlob)> = Vec::new();
    let (mut built, mut reused) = (0, 0);
    for (i, (key, (name, plan))) in keys.iter().zip(&plans).enumerate() {
        let bytes = match plan {
            Plan::Write(tree) => Some(
                tree.iter()
                    .map(|(_, e)| if let EntryKind::File(c) = &e.kind { c.size() } else { 0 })
                    .sum(),
            ),
            Plan::Cached(_) => None,
        };
        observer.layer_started(name, i, total, bytes);
        let record = match plan {
            Plan::Cached(record) => {
                cache_hits.push(CacheHit { layer: i, key: *key });
                reused += 1;
                record.clone()
            }
            Plan::Write(tree) => {
                let blob = layer::write_layer(
                    tree,
                    opts.epoch,
                    &recipe.compression,
                    opts.threads,
                    &opts.work_dir,
                )
                .map_err(|source| BuildError::Layer {
                    name: name.clone(),
                    source: Box::new(source),
                })?;
                let mut blob = blob;
                if written_layers.iter().any(|(_, b)| b.digest == blob.digest) {
                    // The same bytes as an earlier layer, in the same scratch file: the sink
                    // takes each file it is given, so this one gets a name of its own.
                    let own = opts.work_dir.join(format!("layer-{i}.again"));
                    std::fs::hard_link(&blob.path, &own).map_err(|source| BuildError::Layer {
                        name: name.clone(),
                        source: Box::new(LayerError::Output { dir: opts.work_dir.clone(), source }),
                    })?;
                    blob.path = own;
                }
                built += 1;
                let record = LayerRecord {
                    media_type: blob.media_type.to_string(),
                    digest: blob.digest,
                    diff_id: blob.diff_id,
                    size: blob.size,
                };
                written_layers.push((key, blob));
                record
            }
        };
        observer.layer_finished(name, matches!(plan, Plan::Cached(_)));
        layers.push((name.clone(), record));
    }

    let json_err = |what| move |source| BuildError::Json { what, source };
    let mut documents = Vec::new();
    let mut manifests = Vec::new();
    for platform in &recipe.platforms {
        let config = image::config(recipe, opts.epoch, platform, &layers)
            .map_err(json_err("image config"))?;
        let manifest = image::manifest(recipe, opts.epoch, &config.descriptor, &layers)
            .map_err(json_err("manifest"))?;
        manifests.push((platform.clone(), manifest.descriptor.clone()));
        documents.extend([config, manifest]);
    }
    let index = image::index(recipe, opts.epoch, &manifests).map_err(json_err("image index"))?;

    // Each platform's disks, found in the cache or made in a scratch folder of their own.
    let mut disk_work = Vec::new();
    if let (Some(spec), Some(rootfs)) = (&recipe.disk, &rootfs) {
        let targets = manifests.iter().filter_map(|(p, d)| Arch::of(p).map(|arch| (p, arch, d)));
        for (i, (platform, arch, subject)) in targets.enumerate() {
            let key = disk_key(&subject.digest, arch, spec, current.e2fsprogs.as_deref());
            let made = match sink.cached_disk(&key).map_err(BuildError::Sink)? {
                Some(artifact) => Disks::Cached(artifact),
                None => {
                    let dir = opts.work_dir.join(format!("disk-{i}"));
                    std::fs::create_dir(&dir)
                        .map_err(|source| DiskError::Io { path: dir.clone(), source })?;
                    let out =
                        make_disks(rootfs, spec, arch, opts.epoch, opts.threads, &dir, subject)?;
                    Disks::Made(Box::new(out))
                }
            };
            disk_work.push((platform.clone(), subject.digest, key, made));
        }
    }

    for (key, blob) in &written_layers {
        sink.put_layer(key, blob).map_err(BuildError::Sink)?;
    }
    // Scratch copies are removed once all are stored: two layers with the same bytes share
    // one.
    for (_, blob) in &written_layers {
        crate::scratch::remove(&blob.path);
    }
    for document in &documents {
        sink.put_json(document).map_err(BuildError::Sink)?;
    }
    sink.put_json(&index).map_err(BuildError::Sink)?;
    let mut disks = Vec::new();
    let mut disks_reused = 0;
    for (platform, subject, key, made) in disk_work {
        let artifact = match made {
            Disks::Cached(artifact) => {
                disks_reused += 1;
                artifact
            }
            Disks::Made(out) => {
                for file in &out.files {
                    sink.put_file(&file.path, &file.descriptor).map_err(BuildError::Sink)?;
                }
                sink.put_json(&out.empty_config).map_err(BuildError::Sink)?;
                sink.put_json(&out.manifest).map_err(BuildError::Sink)?;
                sink.remember_disk(&key, &out.manifest.descriptor).map_err(BuildError::Sink)?;
                out.manifest.descriptor
            }
        };
        sink.put_referrer(&subject, &artifact).map_err(BuildError::Sink)?;
        disks.push((platform, artifact));
    }

    let lock_written = existing.as_ref() != Some(&current);
    let lock_stale = existing.as_ref().map(|l| l.differences(&current)).unwrap_or_default();
    if lock_written {
        current.write(&lock_path)?;
    }
    let installed = resolved.iter().flat_map(|l| l.installed.iter().cloned()).collect();
    // Tarballs' spooled contents are removed now: the process may end before that thread.
    let mut resolved = resolved;
    for layer in &mut resolved {
        layer.remove_spools();
    }
    // Freeing what the scan kept and the trees made (allocations per input file) is a visible
    // share of a large rebuild, all of it after the work is done; nothing needs to wait for
    // it: the thread is detached. Should none start, the closure and what it holds are
    // dropped here instead, which only takes longer.
    let spawned = std::thread::Builder::new().spawn(move || drop((resolved, plans, rootfs)));
    drop(spawned);
    Ok(BuildOutput {
        installed,
        index: index.descriptor,
        manifests,
        layers,
        layers_built: built,
        layers_reused: reused,
        lock: current,
        lock_written,
        lock_stale,
        disks,
        disks_reused,
        cache_hits,
    })
}

/// One platform's disks before they are stored.
enum Disks {
    /// Found in the cache: the artifact manifest.
    Cached(Descriptor),
    /// Made now, in the scratch folder.
    Made(Box<DiskOutput>),
}

/// Where a layer's blob comes from.
enum Plan {
    /// The cache: built before from the same key.
    Cached(LayerRecord),
    /// Written now from this tree.
    Write(Tree),
}

/// The cache keys of a build's layers: everything that decides each layer's bytes. A layer's
/// digest names its declaration and every input's content, which make its tree; the digests
/// of the layers below it decide the metadata of its implicit parent directories (see
/// [`Tree::inherit_implicit`]); the output format, epoch and compressor make the bytes from
/// the tree. Keyed so, an unchanged layer is found without making its tree at all, and a
/// change below a layer rebuilds it, as in any layered build.
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

/// The cache key of one platform's disks: the image manifest (which names every layer and the
/// config, and so the epoch), the architecture, the `[disk]` table and, for an ext4 root, the
/// host's e2fsprogs version. The version string changes whenever the disk writers' bytes do.
fn disk_key(subject: &Digest, arch: Arch, spec: &DiskSpec, e2fsprogs: Option<&str>) -> Digest {
    let mut h = Sha256::new();
    h.update(b"kiln disk cache v3\0");
    h.update(subject.to_string().as_bytes());
    // Debug output of these plain types is deterministic (no hash maps); a change in it only
    // costs a cache miss.
    h.update(format!("\0{arch:?}\0{spec:?}\0{e2fsprogs:?}").as_bytes());
    h.finish()
}

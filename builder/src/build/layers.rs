//! The image part of a build: layer trees made and flattened, layers written or taken from
//! the cache, the config, manifest and index assembled, and all of it stored.

use kiln_oci::{Descriptor, Digest, Platform};
use kiln_tree::tree::{EntryKind, Tree};

use crate::base::{BaseImage, BaseLayer};
use crate::build::disks::esp_tree;
use crate::build::error::BuildError;
use crate::build::observer::Observer;
use crate::build::options::BuildOptions;
use crate::build::parallel::{Halt, Slot};
use crate::build::plan::Plan;
use crate::build::sink::{BlobSink, BlobStream};
use crate::image::{self, JsonBlob, LayerRecord};
use crate::inputs::{Install, ResolvedLayer};
use crate::layer::{self, LayerBlob, LayerError};
use crate::recipe::Recipe;
use crate::rootfs::Rootfs;

/// A layer whose blob was found in the cache rather than written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheHit {
    /// Its position in [`BuildOutput::layers`](crate::BuildOutput::layers).
    pub layer: usize,
    /// The cache key it was found under (see [`layer_keys`](crate::build::layer_keys)).
    pub key: Digest,
}

/// Where a layer's blob comes from.
pub(super) enum Source {
    /// The cache: built before from the same key.
    Cached(LayerRecord),
    /// The layers of platforms before these, which write it (see [`Plan::earlier`]).
    Earlier,
    /// Written now from this tree.
    Write(Tree),
}

/// Each layer's source, and the flattened root filesystems when disks are made.
pub(super) struct Flattened {
    pub layers: Vec<(String, Source)>,
    /// One root per distinct list of base layers under the platforms' images (one for all
    /// platforms without a base), keyed by their blob digests.
    roots: Vec<(Vec<Digest>, Tree)>,
}

impl Flattened {
    /// The root filesystem over the base layers `below` (given by their digests).
    pub fn rootfs(&self, below: &[Digest]) -> Option<&Tree> {
        self.roots.iter().find(|(d, _)| d == below).map(|(_, t)| t)
    }
}

/// Fetches and unpacks the Debian packages of the layers whose trees `plan` needs, in layer
/// order (each layer's dpkg status lists the packages of those below, starting with the
/// base's, `base_status`), and, with
/// [`BuildOptions::list_packages`], reads the file lists of the others' packages: a build
/// whose layers are all cached reads no package otherwise. Stops between layers when `slot`
/// says so.
pub(super) fn install_packages(
    resolved: &mut [ResolvedLayer],
    plan: &Plan,
    opts: &BuildOptions,
    slot: &mut Slot,
    base_status: std::collections::BTreeMap<String, String>,
) -> Result<(), Halt> {
    let mut status = base_status;
    for (i, layer) in resolved.iter_mut().enumerate() {
        let what = match (i < plan.trees, opts.list_packages) {
            (true, _) => Install::Contents,
            (false, true) => Install::Listing,
            (false, false) => continue,
        };
        slot.stop.check()?;
        layer.install(what, Some(&mut slot.sink), &mut status)?;
    }
    Ok(())
}

/// Tells `observer` of the maintainer scripts the packages of `resolved` have and that
/// were not run.
pub(super) fn tell_skipped_scripts(resolved: &[ResolvedLayer], observer: &dyn Observer) {
    for (package, scripts) in resolved.iter().flat_map(|l| &l.skipped_scripts) {
        observer.scripts_skipped(package, scripts);
    }
}

/// Makes the trees `plan` needs, each layer's implicit parents taking their metadata from the
/// layers below (the first platform's base layers, `under[0]`, then the recipe's), and, when
/// the recipe has `[disk]`, flattens them over each of `platforms`' base layers (`under`)
/// into root filesystems (checking their ESP files are there).
pub(super) fn flatten(
    recipe: &Recipe,
    platforms: &[Platform],
    resolved: &[ResolvedLayer],
    plan: &Plan,
    under: &[Vec<&BaseLayer>],
) -> Result<Flattened, BuildError> {
    let first: &[&BaseLayer] = under.first().map_or(&[], Vec::as_slice);
    let mut lower = Rootfs::default();
    for layer in first {
        lower.push(&layer.tree)?;
    }
    let mut layers = Vec::with_capacity(resolved.len());
    // With a base whose platforms differ, each other platform's root is flattened anew.
    let keep_trees = recipe.disk.is_some() && under.iter().any(|u| digests(u) != digests(first));
    let mut trees = Vec::new();
    for (i, (layer, found)) in resolved.iter().zip(&plan.found).enumerate() {
        let tree = if i < plan.trees {
            let mut tree = layer.tree()?;
            tree.inherit_implicit(|path| lower.dir_meta(path));
            lower.push(&tree)?;
            if keep_trees {
                trees.push(tree.clone());
            }
            Some(tree)
        } else {
            None
        };
        let source = match found {
            Some(record) => Source::Cached(record.clone()),
            None if plan.earlier[i] => Source::Earlier,
            // Every layer to write is below `plan.trees`, so its tree was made above.
            None => Source::Write(tree.map_or_else(|| layer.tree(), Ok)?),
        };
        layers.push((layer.name.clone(), source));
    }
    let mut roots: Vec<(Vec<Digest>, Tree)> = Vec::new();
    if let Some(spec) = &recipe.disk {
        roots.push((digests(first), lower.finish()?));
        for (platform, below) in platforms.iter().zip(under) {
            if kiln_disk::gpt::Arch::of(platform).is_none()
                || roots.iter().any(|(d, _)| *d == digests(below))
            {
                continue;
            }
            let mut rootfs = Rootfs::default();
            for tree in below.iter().map(|l| &l.tree).chain(&trees) {
                rootfs.push(tree)?;
            }
            roots.push((digests(below), rootfs.finish()?));
        }
        if let Some(esp) = &spec.esp {
            for (_, rootfs) in &roots {
                esp_tree(rootfs, esp)?;
            }
        }
    }
    Ok(Flattened { layers, roots })
}

fn digests(layers: &[&BaseLayer]) -> Vec<Digest> {
    crate::build::base::digests(layers)
}

/// The layers of a build, written to the scratch folder or found in the cache.
pub(super) struct Layers {
    /// Every layer's record, in layer order.
    pub records: Vec<(String, LayerRecord)>,
    pub cache_hits: Vec<CacheHit>,
    /// The blobs written, with their cache keys, not yet stored.
    pub written: Vec<(Digest, LayerBlob)>,
}

/// [`Layers`] whose records of layers written by the layers of platforms before them (see
/// [`Plan::earlier`]) are still to be filled in.
pub(super) struct Made {
    records: Vec<(String, Option<LayerRecord>)>,
    cache_hits: Vec<CacheHit>,
    written: Vec<(Digest, LayerBlob)>,
    keys: Vec<Digest>,
}

impl Made {
    /// Fills in the records of the layers `earlier` (the layers written for platforms before
    /// these, with their keys) holds.
    pub fn complete(self, earlier: &[(Digest, LayerRecord)]) -> Layers {
        let records = self
            .records
            .into_iter()
            .zip(&self.keys)
            .filter_map(|((name, record), key)| {
                let record = record
                    .or_else(|| earlier.iter().find(|(k, _)| k == key).map(|(_, r)| r.clone()))?;
                Some((name, record))
            })
            .collect();
        Layers { records, cache_hits: self.cache_hits, written: self.written }
    }

    /// The blobs written, each with its key and record.
    pub fn written(&self) -> impl Iterator<Item = (Digest, LayerRecord)> + '_ {
        self.written.iter().map(|(key, blob)| (*key, blob.record()))
    }
}

/// Writes each layer `flat` has a tree for into the scratch folder, compressing on the
/// threads of `slot` and telling its sink of each as it is finished, stopping between layers
/// when it says so (what was written goes with the scratch folder). A layer written for
/// platforms before these is neither written again nor a cache hit.
pub(super) fn write_layers(
    recipe: &Recipe,
    opts: &BuildOptions,
    slot: &mut Slot,
    platforms: &[Platform],
    observer: &dyn Observer,
    keys: &[Digest],
    flat: &Flattened,
) -> Result<Made, Halt> {
    let total = flat.layers.len();
    let mut made = Made {
        records: Vec::with_capacity(total),
        cache_hits: Vec::new(),
        written: Vec::new(),
        keys: keys.to_vec(),
    };
    for (i, (key, (name, source))) in keys.iter().zip(&flat.layers).enumerate() {
        slot.stop.check()?;
        let bytes = match source {
            Source::Write(tree) => Some(
                tree.iter()
                    .map(|(_, e)| if let EntryKind::File(c) = &e.kind { c.size() } else { 0 })
                    .sum(),
            ),
            Source::Cached(_) | Source::Earlier => None,
        };
        observer.layer_started(platforms, name, i, total, bytes);
        let record = match source {
            Source::Cached(record) => {
                made.cache_hits.push(CacheHit { layer: i, key: *key });
                Some(record.clone())
            }
            Source::Earlier => None,
            Source::Write(tree) => {
                let (blob, stream) = write_layer(recipe, opts, slot, name, i, tree, &made.written)?;
                let descriptor = Descriptor::new(blob.media_type, blob.digest, blob.size);
                match stream {
                    Some(stream) => {
                        slot.sink.start_storing_streamed(stream, &blob.path, &descriptor)
                    }
                    None => slot.sink.start_storing(&blob.path, &descriptor),
                }
                .map_err(BuildError::Sink)?;
                let record = blob.record();
                made.written.push((*key, blob));
                Some(record)
            }
        };
        observer.layer_finished(platforms, name, !matches!(source, Source::Write(_)));
        made.records.push((name.clone(), record));
    }
    Ok(made)
}

/// Writes layer `i` from `tree`, in a scratch file of its own even when an earlier layer of
/// `written` has the same bytes, on the threads of `slot`, letting its sink read it as it is
/// written if it asks to (the stream it opened is returned beside the blob).
fn write_layer(
    recipe: &Recipe,
    opts: &BuildOptions,
    slot: &mut Slot,
    name: &str,
    i: usize,
    tree: &Tree,
    written: &[(Digest, LayerBlob)],
) -> Result<(LayerBlob, Option<BlobStream>), BuildError> {
    let mut stream = Ok(None);
    let blob = layer::write_layer_told(
        tree,
        opts.epoch,
        &recipe.compression,
        slot.threads,
        &opts.work_dir,
        |path| {
            stream = slot.sink.stream_blob(path);
            let progress = stream.as_ref().ok()?.as_ref()?.progress.clone();
            Some(progress)
        },
    );
    // A stream the sink could not open is the error, once the layer's own work has ended.
    let stream = stream.map_err(BuildError::Sink)?;
    let mut blob = blob
        .map_err(|source| BuildError::Layer { name: name.to_string(), source: Box::new(source) })?;
    if written.iter().any(|(_, b)| b.digest == blob.digest) {
        // The same bytes as an earlier layer, in the same scratch file: the sink takes each
        // file it is given, so this one gets a name of its own.
        let own = opts.work_dir.join(format!("layer-{i}.again"));
        std::fs::hard_link(&blob.path, &own).map_err(|source| BuildError::Layer {
            name: name.to_string(),
            source: Box::new(LayerError::Output { dir: opts.work_dir.clone(), source }),
        })?;
        blob.path = own;
    }
    Ok((blob, stream))
}

/// The JSON documents of the image.
pub(super) struct ImageDocuments {
    /// Each platform's config and manifest.
    pub documents: Vec<JsonBlob>,
    pub manifests: Vec<(Platform, Descriptor)>,
    pub index: JsonBlob,
}

/// Platforms and the layers they share, as the image names them.
pub(super) type PlatformRecords<'a> = (&'a [Platform], &'a [(String, LayerRecord)]);

/// Assembles each platform's config and manifest over its base, if any, and its layers
/// (`layers` names the platforms each list of layers is for), and the index over them in
/// the recipe's order.
pub(super) fn image_documents(
    recipe: &Recipe,
    opts: &BuildOptions,
    base: Option<&BaseImage>,
    layers: &[PlatformRecords],
) -> Result<ImageDocuments, BuildError> {
    let json_err = |what| move |source| BuildError::Json { what, source };
    let mut documents = Vec::new();
    let mut manifests = Vec::new();
    for (i, platform) in recipe.platforms.iter().enumerate() {
        let Some((_, layers)) = layers.iter().find(|(p, _)| p.contains(platform)) else {
            continue;
        };
        let below = base.and_then(|b| b.platforms.get(i));
        let config = image::config(recipe, opts.epoch, platform, below.map(|b| &b.config), layers)
            .map_err(json_err("image config"))?;
        let base_layers = below.map(|b| b.layers.as_slice()).unwrap_or_default();
        let manifest = image::manifest(recipe, opts.epoch, &config.descriptor, base_layers, layers)
            .map_err(json_err("manifest"))?;
        manifests.push((platform.clone(), manifest.descriptor.clone()));
        documents.extend([config, manifest]);
    }
    let index = image::index(recipe, opts.epoch, &manifests).map_err(json_err("image index"))?;
    Ok(ImageDocuments { documents, manifests, index })
}

/// Stores the base's layer blobs and the written layers, then the documents and the index.
pub(super) fn store_image(
    sink: &mut dyn BlobSink,
    base: &[BaseLayer],
    layers: &[Layers],
    image: &ImageDocuments,
) -> Result<(), BuildError> {
    for layer in base {
        let record = &layer.record;
        let descriptor = Descriptor::new(record.media_type.clone(), record.digest, record.size);
        sink.put_file(&layer.path, &descriptor).map_err(BuildError::Sink)?;
        crate::scratch::remove(&layer.path);
    }
    let written = || layers.iter().flat_map(|l| &l.written);
    for (key, blob) in written() {
        sink.put_layer(key, blob).map_err(BuildError::Sink)?;
    }
    // Scratch copies are removed once all are stored: two layers with the same bytes share
    // one.
    for (_, blob) in written() {
        crate::scratch::remove(&blob.path);
    }
    let documents: Vec<&JsonBlob> = image.documents.iter().chain([&image.index]).collect();
    sink.put_documents(&documents).map_err(BuildError::Sink)
}

//! Base images: an existing image, pinned by digest, whose layers come first in the image a
//! recipe builds.
//!
//! A base is read from an OCI image layout in the recipe's folder, or from the store, where
//! the caller has pulled it from its registry (every blob verified on the way in). Nothing
//! from it is trusted: each document is checked against the digest that names it, each layer
//! blob against its descriptor's digest and size, and each layer's uncompressed tar against
//! the config's `diff_ids`, read with the same bounded, refusing tar reader as tarball inputs.
//! The layer blobs are then taken as they are, never recompressed.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use kiln_oci::{media_type, Descriptor, Digest, ImageConfig, Platform, Sha256};
use kiln_tree::tree::{Entry, EntryKind, Tree, TreeError};
use serde::Deserialize;

use crate::build::sink::{BlobSink, SinkError};
use crate::image::LayerRecord;
use crate::lock::{LockedBase, LockedBaseManifest, LockedBaseSource};
use crate::recipe::{BaseSource, BaseSpec};
use crate::tarball::{Spool, TarballError};

/// The largest index, manifest or config read, as registries bound manifests.
pub const DOCUMENT_LIMIT: u64 = 4 * 1024 * 1024;

/// The largest dpkg status file read from a base (a full Debian system's is a few MiB).
pub const DPKG_STATUS_LIMIT: u64 = 64 * 1024 * 1024;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Why a base image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("base {base}: {what} is not in the store; it is pulled from its registry first")]
    NotStored { base: String, what: String },
    #[error("base {base}: {path} is not an OCI image layout (it has no `oci-layout` file)")]
    NotALayout { base: String, path: PathBuf },
    #[error("base {base}: cannot read {path}")]
    Read {
        base: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base {base}: {what} {digest} has {found} bytes, more than the {DOCUMENT_LIMIT} a document may have")]
    TooLarge { base: String, what: String, digest: Digest, found: u64 },
    #[error("base {base}: blob {expected} does not match its digest (its bytes hash to {found}); the base is damaged or not what the recipe names")]
    DigestMismatch { base: String, expected: Digest, found: Digest },
    #[error("base {base}: blob {digest} has {found} bytes, but {expected} were expected")]
    SizeMismatch { base: String, digest: Digest, expected: u64, found: u64 },
    #[error("base {base}: {what} {digest} is not a valid {what}")]
    Json {
        base: String,
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("base {base}: {digest} is a {media_type}, not an image index or manifest")]
    NotAnImage { base: String, digest: Digest, media_type: String },
    #[error("base {base} has no image for platform {platform} (it has: {available})")]
    MissingPlatform { base: String, platform: Platform, available: String },
    #[error("base {base}: manifest {manifest} names {layers} layers, but its config lists {diff_ids} diff_ids")]
    LayerCount { base: String, manifest: Digest, layers: usize, diff_ids: usize },
    #[error("base {base}: layer {digest} has media type {media_type}, which kiln does not take as a base layer")]
    LayerType { base: String, digest: Digest, media_type: String },
    #[error("base {base}: config {digest} has media type {media_type}, not an image config")]
    ConfigType { base: String, digest: Digest, media_type: String },
    #[error("base {base}: layer {digest} unpacks to {found}, but its config's diff_id is {expected}; the base is damaged or its config is not its own")]
    DiffId { base: String, digest: Digest, expected: Digest, found: Digest },
    #[error("base {base}: layer {digest}")]
    Layer {
        base: String,
        digest: Digest,
        #[source]
        source: Box<TarballError>,
    },
    #[error("base {base}: layer {digest}")]
    Tree {
        base: String,
        digest: Digest,
        #[source]
        source: Box<TreeError>,
    },
    #[error("base {base}: cannot write a scratch copy in {}", dir.display())]
    Scratch {
        base: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("base {base}: its dpkg status file is larger than {} MiB", DPKG_STATUS_LIMIT >> 20)]
    DpkgStatus { base: String },
    #[error("base {base}: its dpkg status file is not UTF-8")]
    DpkgStatusNotUtf8 {
        base: String,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("base {base}: reading it from the store")]
    Sink {
        base: String,
        #[source]
        source: SinkError,
    },
}

impl BaseError {
    /// Whether the base's bytes are not what its digests promise (exit code 4), rather than
    /// a base that is missing, malformed or refused.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            BaseError::DigestMismatch { .. }
                | BaseError::SizeMismatch { .. }
                | BaseError::DiffId { .. }
        )
    }
}

/// A base image's documents, resolved for each of the recipe's platforms.
#[derive(Clone, Debug)]
pub struct BaseImage {
    pub spec: BaseSpec,
    /// For each recipe platform, in recipe order, the base's image for it.
    pub platforms: Vec<PlatformBase>,
}

/// The base's image for one platform.
#[derive(Clone, Debug)]
pub struct PlatformBase {
    pub platform: Platform,
    /// The base's manifest for this platform.
    pub manifest: Descriptor,
    /// Its config: the starting point of the new image's.
    pub config: ImageConfig,
    /// Its layers, bottom first, with the media type the new image gives them.
    pub layers: Vec<LayerRecord>,
}

/// A base layer read and verified: its blob in the scratch folder and its files.
#[derive(Debug)]
pub struct BaseLayer {
    pub record: LayerRecord,
    /// The blob, verified, to be stored with the new image.
    pub path: PathBuf,
    pub tree: Tree,
    /// Holds the tree's file contents.
    _spool: Spool,
}

/// The children an index or manifest names (the fields both kinds and Docker's have).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Where the base's blobs are read from.
enum Blobs<'a, 'b> {
    Layout(&'a Path),
    Store(&'a mut (dyn BlobSink + 'b)),
}

impl Blobs<'_, '_> {
    /// The document `digest`, verified, refused above [`DOCUMENT_LIMIT`] bytes.
    fn document(&mut self, base: &str, what: &str, digest: &Digest) -> Result<Vec<u8>, BaseError> {
        let bytes = match self {
            Blobs::Layout(dir) => {
                let path = blob_path(dir, digest);
                let read =
                    |source| BaseError::Read { base: base.into(), path: path.clone(), source };
                let file = File::open(&path).map_err(read)?;
                let size = file.metadata().map_err(read)?.len();
                if size > DOCUMENT_LIMIT {
                    return Err(BaseError::TooLarge {
                        base: base.into(),
                        what: what.into(),
                        digest: *digest,
                        found: size,
                    });
                }
                let mut bytes = Vec::new();
                file.take(DOCUMENT_LIMIT + 1).read_to_end(&mut bytes).map_err(read)?;
                bytes
            }
            Blobs::Store(sink) => sink
                .get_document(digest, DOCUMENT_LIMIT)
                .map_err(|source| BaseError::Sink { base: base.into(), source })?
                .ok_or_else(|| BaseError::NotStored {
                    base: base.into(),
                    what: format!("{what} {digest}"),
                })?,
        };
        let found = Digest::of(&bytes);
        if found != *digest {
            return Err(BaseError::DigestMismatch { base: base.into(), expected: *digest, found });
        }
        Ok(bytes)
    }

    /// Copies the blob `desc` names to the new file `target`, verified against its digest and
    /// size.
    fn copy(&mut self, base: &str, desc: &Descriptor, target: &Path) -> Result<(), BaseError> {
        match self {
            Blobs::Layout(dir) => {
                let path = blob_path(dir, &desc.digest);
                let read =
                    |source| BaseError::Read { base: base.into(), path: path.clone(), source };
                let file = File::open(&path).map_err(read)?;
                let size = file.metadata().map_err(read)?.len();
                if size != desc.size {
                    return Err(BaseError::SizeMismatch {
                        base: base.into(),
                        digest: desc.digest,
                        expected: desc.size,
                        found: size,
                    });
                }
                let scratch = |source| BaseError::Scratch {
                    base: base.into(),
                    dir: target.parent().unwrap_or(target).to_path_buf(),
                    source,
                };
                let mut out = File::create_new(target).map_err(scratch)?;
                let mut reader = kiln_oci::HashingReader::new(file.take(desc.size + 1));
                // A failed copy leaves no partial blob behind either.
                let copied = io::copy(&mut reader, &mut out);
                let (found, len) = reader.finish();
                let result = if let Err(source) = copied {
                    Err(read(source))
                } else if len != desc.size {
                    Err(BaseError::SizeMismatch {
                        base: base.into(),
                        digest: desc.digest,
                        expected: desc.size,
                        found: len,
                    })
                } else if found != desc.digest {
                    Err(BaseError::DigestMismatch {
                        base: base.into(),
                        expected: desc.digest,
                        found,
                    })
                } else {
                    Ok(())
                };
                if result.is_err() {
                    crate::scratch::remove(target);
                }
                result
            }
            Blobs::Store(sink) => {
                let copied = sink
                    .copy_blob(desc, target)
                    .map_err(|source| BaseError::Sink { base: base.into(), source })?;
                if copied {
                    Ok(())
                } else {
                    Err(BaseError::NotStored {
                        base: base.into(),
                        what: format!("layer {}", desc.digest),
                    })
                }
            }
        }
    }
}

fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs").join("sha256").join(digest.hex())
}

/// Whether the index entry `entry` is the image for `platform`. A recipe platform without a
/// variant takes an entry without one, or arm64's only variant, v8.
fn matches(entry: &Platform, platform: &Platform) -> bool {
    entry.os == platform.os
        && entry.architecture == platform.architecture
        && (entry.variant == platform.variant
            || (platform.variant.is_none()
                && entry.architecture == "arm64"
                && entry.variant.as_deref() == Some("v8")))
}

/// The media type the new image gives a base layer: Docker's gzip layers are OCI gzip
/// layers byte for byte.
fn layer_media_type(media_type: &str) -> Option<&'static str> {
    match media_type {
        media_type::LAYER_TAR => Some(media_type::LAYER_TAR),
        media_type::LAYER_TAR_GZIP | DOCKER_LAYER_GZIP => Some(media_type::LAYER_TAR_GZIP),
        media_type::LAYER_TAR_ZSTD => Some(media_type::LAYER_TAR_ZSTD),
        _ => None,
    }
}

/// Reads the base's index or manifest and, for each of `platforms`, its manifest and config.
/// A registry base is read from `store`, where the caller has pulled it.
pub fn resolve(
    spec: &BaseSpec,
    platforms: &[Platform],
    store: Option<&mut dyn BlobSink>,
) -> Result<BaseImage, BaseError> {
    let base = spec.to_string();
    let mut blobs = match (&spec.source, store) {
        (BaseSource::Layout(dir), _) => {
            if !dir.abs().join("oci-layout").is_file() {
                return Err(BaseError::NotALayout { base, path: dir.abs().to_path_buf() });
            }
            Blobs::Layout(dir.abs())
        }
        (BaseSource::Registry { .. }, Some(store)) => Blobs::Store(store),
        (BaseSource::Registry { .. }, None) => {
            return Err(BaseError::NotStored { base, what: "the image".into() })
        }
    };
    let json = |what: &'static str, digest: Digest, bytes: &[u8]| {
        serde_json::from_slice::<Document>(bytes).map_err(|source| BaseError::Json {
            base: base.clone(),
            what,
            digest,
            source,
        })
    };
    let root_bytes = blobs.document(&base, "image", &spec.digest)?;
    let root = json("image", spec.digest, &root_bytes)?;
    let root_type = root.media_type.clone().unwrap_or_default();
    let mut out = Vec::new();
    for platform in platforms {
        let manifest = match &root.manifests {
            Some(entries) => {
                let is_index = matches!(
                    root_type.as_str(),
                    media_type::IMAGE_INDEX | DOCKER_MANIFEST_LIST | ""
                );
                if !is_index {
                    return Err(BaseError::NotAnImage {
                        base,
                        digest: spec.digest,
                        media_type: root_type,
                    });
                }
                let found = entries.iter().find(|e| {
                    matches!(e.media_type.as_str(), media_type::IMAGE_MANIFEST | DOCKER_MANIFEST)
                        && e.platform.as_ref().is_some_and(|p| matches(p, platform))
                });
                let Some(found) = found else {
                    let mut available: Vec<String> = entries
                        .iter()
                        .filter_map(|e| e.platform.as_ref().map(ToString::to_string))
                        .collect();
                    available.dedup();
                    return Err(BaseError::MissingPlatform {
                        base,
                        platform: platform.clone(),
                        available: if available.is_empty() {
                            "no platforms named".into()
                        } else {
                            available.join(", ")
                        },
                    });
                };
                Descriptor::new(found.media_type.clone(), found.digest, found.size)
            }
            None => {
                if !matches!(root_type.as_str(), media_type::IMAGE_MANIFEST | DOCKER_MANIFEST | "")
                {
                    return Err(BaseError::NotAnImage {
                        base,
                        digest: spec.digest,
                        media_type: root_type,
                    });
                }
                Descriptor::new(
                    root.media_type.clone().unwrap_or_else(|| media_type::IMAGE_MANIFEST.into()),
                    spec.digest,
                    root_bytes.len() as u64,
                )
            }
        };
        let bytes = if manifest.digest == spec.digest {
            root_bytes.clone()
        } else {
            blobs.document(&base, "manifest", &manifest.digest)?
        };
        if bytes.len() as u64 != manifest.size {
            return Err(BaseError::SizeMismatch {
                base,
                digest: manifest.digest,
                expected: manifest.size,
                found: bytes.len() as u64,
            });
        }
        let document = json("manifest", manifest.digest, &bytes)?;
        let Some(config_desc) = document.config.filter(|_| document.manifests.is_none()) else {
            return Err(BaseError::NotAnImage {
                base,
                digest: manifest.digest,
                media_type: document.media_type.unwrap_or_default(),
            });
        };
        if !matches!(config_desc.media_type.as_str(), media_type::IMAGE_CONFIG | DOCKER_CONFIG) {
            return Err(BaseError::ConfigType {
                base,
                digest: config_desc.digest,
                media_type: config_desc.media_type,
            });
        }
        let config_bytes = blobs.document(&base, "config", &config_desc.digest)?;
        if config_bytes.len() as u64 != config_desc.size {
            return Err(BaseError::SizeMismatch {
                base,
                digest: config_desc.digest,
                expected: config_desc.size,
                found: config_bytes.len() as u64,
            });
        }
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| BaseError::Json {
                base: base.clone(),
                what: "config",
                digest: config_desc.digest,
                source,
            })?;
        // A single-manifest base names its platform in its config only.
        if root.manifests.is_none() {
            let own = Platform {
                os: config.os.clone(),
                architecture: config.architecture.clone(),
                variant: config.variant.clone(),
            };
            if !matches(&own, platform) {
                return Err(BaseError::MissingPlatform {
                    base,
                    platform: platform.clone(),
                    available: own.to_string(),
                });
            }
        }
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != document.layers.len() {
            return Err(BaseError::LayerCount {
                base,
                manifest: manifest.digest,
                layers: document.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (layer, diff_id) in document.layers.iter().zip(diff_ids) {
            let Some(media_type) = layer_media_type(&layer.media_type) else {
                return Err(BaseError::LayerType {
                    base,
                    digest: layer.digest,
                    media_type: layer.media_type.clone(),
                });
            };
            layers.push(LayerRecord {
                media_type: media_type.to_string(),
                digest: layer.digest,
                diff_id: *diff_id,
                size: layer.size,
            });
        }
        out.push(PlatformBase { platform: platform.clone(), manifest, config, layers });
    }
    Ok(BaseImage { spec: spec.clone(), platforms: out })
}

impl BaseImage {
    /// What the lock records of the base.
    pub fn locked(&self) -> LockedBase {
        let source = match &self.spec.source {
            BaseSource::Registry { host, repository } => {
                LockedBaseSource::Image(format!("{host}/{repository}"))
            }
            BaseSource::Layout(dir) => LockedBaseSource::OciLayout(dir.rel().to_string()),
        };
        LockedBase {
            source,
            digest: self.spec.digest,
            manifests: self
                .platforms
                .iter()
                .map(|p| LockedBaseManifest {
                    platform: p.platform.to_string(),
                    digest: p.manifest.digest,
                })
                .collect(),
        }
    }

    /// Every distinct layer of the base, over all platforms, in first-use order.
    pub fn layers(&self) -> Vec<&LayerRecord> {
        let mut out: Vec<&LayerRecord> = Vec::new();
        for layer in self.platforms.iter().flat_map(|p| &p.layers) {
            if !out.iter().any(|l| l.digest == layer.digest) {
                out.push(layer);
            }
        }
        out
    }

    /// Copies every layer blob into `work_dir`, verified against its digest and size, and
    /// reads it with the bounded tar reader, checking that it unpacks to its diff_id.
    pub fn read_layers(
        &self,
        store: Option<&mut dyn BlobSink>,
        work_dir: &Path,
    ) -> Result<Vec<BaseLayer>, BaseError> {
        let base = self.spec.to_string();
        let mut blobs = match (&self.spec.source, store) {
            (BaseSource::Layout(dir), _) => Blobs::Layout(dir.abs()),
            (BaseSource::Registry { .. }, Some(store)) => Blobs::Store(store),
            (BaseSource::Registry { .. }, None) => {
                return Err(BaseError::NotStored { base, what: "the image".into() })
            }
        };
        let mut out: Vec<BaseLayer> = Vec::new();
        for record in self.layers() {
            let path = work_dir.join(format!("base-{}", record.digest.hex()));
            let desc = Descriptor::new(record.media_type.clone(), record.digest, record.size);
            blobs.copy(&base, &desc, &path)?;
            let read = read_layer(&base, record, &path);
            match read {
                Ok((tree, spool)) => {
                    out.push(BaseLayer { record: record.clone(), path, tree, _spool: spool })
                }
                Err(e) => {
                    crate::scratch::remove(&path);
                    for layer in &out {
                        crate::scratch::remove(&layer.path);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

/// A reader that hashes what passes through into a hasher the caller keeps.
struct Tee<R> {
    inner: R,
    hasher: Rc<RefCell<Sha256>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// Reads the layer blob at `path` as `record` says it is compressed, into a tree, and checks
/// its uncompressed bytes against the diff_id.
fn read_layer(base: &str, record: &LayerRecord, path: &Path) -> Result<(Tree, Spool), BaseError> {
    let read_err = |source| BaseError::Read { base: base.into(), path: path.to_path_buf(), source };
    let file = io::BufReader::new(File::open(path).map_err(read_err)?);
    let decompressed: Box<dyn Read> = match record.media_type.as_str() {
        media_type::LAYER_TAR_GZIP => Box::new(flate2::read::MultiGzDecoder::new(file)),
        media_type::LAYER_TAR_ZSTD => {
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(read_err)?)
        }
        _ => Box::new(file),
    };
    let hasher = Rc::new(RefCell::new(Sha256::new()));
    let tee = Tee { inner: decompressed, hasher: hasher.clone() };
    let name = format!("base layer {}", record.digest);
    let layer_err = |source| BaseError::Layer {
        base: base.into(),
        digest: record.digest,
        source: Box::new(source),
    };
    // A base image holds what it holds: device nodes are taken as any other member.
    let (members, spool) =
        crate::tarball::read_members(Box::new(tee), &name, true).map_err(layer_err)?;
    let found = hasher.borrow().clone().finish();
    if found != record.diff_id {
        return Err(BaseError::DiffId {
            base: base.into(),
            digest: record.digest,
            expected: record.diff_id,
            found,
        });
    }
    let mut tree = Tree::new();
    for m in members {
        // A directory a layer lists twice, or lists after its children, is one directory.
        if m.kind == EntryKind::Dir {
            if let Some(Entry { kind: EntryKind::Dir, .. }) = tree.get(&m.path) {
                if !tree.is_implicit(&m.path) {
                    continue;
                }
            }
        }
        tree.insert(m.path, Entry { kind: m.kind, meta: m.meta }).map_err(|source| {
            BaseError::Tree { base: base.into(), digest: record.digest, source: Box::new(source) }
        })?;
    }
    Ok((tree, spool))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn a_platform_without_a_variant_takes_arm64_v8_and_nothing_else_differs() {
        assert!(matches(&p("linux/arm64/v8"), &p("linux/arm64")));
        assert!(matches(&p("linux/amd64"), &p("linux/amd64")));
        assert!(!matches(&p("linux/arm/v7"), &p("linux/arm")));
        assert!(!matches(&p("linux/arm64"), &p("linux/arm64/v8")));
        assert!(!matches(&p("linux/amd64"), &p("windows/amd64")));
    }

    #[test]
    fn docker_gzip_layers_are_oci_gzip_layers_and_others_are_refused() {
        assert_eq!(layer_media_type(DOCKER_LAYER_GZIP), Some(media_type::LAYER_TAR_GZIP));
        assert_eq!(layer_media_type(media_type::LAYER_TAR_ZSTD), Some(media_type::LAYER_TAR_ZSTD));
        let foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
        assert_eq!(layer_media_type(foreign), None);
    }
}

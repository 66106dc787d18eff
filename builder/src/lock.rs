//! Lock files: every input's digest, the epoch and the output format, pinned beside the recipe.

use std::path::{Path, PathBuf};

use kiln_oci::Digest;
use kiln_tree::Epoch;
use serde::{Deserialize, Serialize};

use kiln_compress::Compression;

/// Version of the lock file's own layout.
pub const LOCK_VERSION: u32 = 1;

/// Version of kiln's output bytes (tar layout, JSON shapes). Bumped whenever a change makes
/// the same inputs give different digests, so that such a change is always deliberate.
pub const FORMAT_VERSION: u32 = 3;

/// The contents of a `.lock` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    pub format: u32,
    /// sha256 of the recipe text with line endings normalised.
    pub recipe: Digest,
    pub epoch: Epoch,
    pub compression: Compression,
    /// The host's e2fsprogs version, for recipes with an ext4 root: mke2fs makes that
    /// filesystem, and its version decides the bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2fsprogs: Option<String>,
    #[serde(default, rename = "input")]
    pub inputs: Vec<Input>,
    /// The Debian repositories packages were resolved from, each with the digest of the
    /// signed release it was resolved against.
    #[serde(default, rename = "repository", skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<LockedRepository>,
    /// Each layer's Debian packages: what it asked for and the closure chosen.
    #[serde(default, rename = "packages", skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<LockedPackages>,
    /// The base image, with the manifest chosen for each platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<LockedBase>,
}

/// The `[base]` image as it was resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LockedBaseFields", into = "LockedBaseFields")]
pub struct LockedBase {
    pub source: LockedBaseSource,
    /// The digest of the base's index or manifest.
    pub digest: Digest,
    /// The manifest taken for each platform, in the recipe's platform order.
    pub manifests: Vec<LockedBaseManifest>,
}

/// Where a locked base comes from: exactly one of the two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockedBaseSource {
    /// `HOST[:PORT]/REPO` of a registry base.
    Image(String),
    /// The layout folder of an `oci-layout` base, relative to the recipe.
    OciLayout(String),
}

/// A [`LockedBase`] as the lock file spells it: the source is whichever of `image` and
/// `oci-layout` is present, which [`LockedBase`] checks is exactly one.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockedBaseFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(default, rename = "oci-layout", skip_serializing_if = "Option::is_none")]
    oci_layout: Option<String>,
    digest: Digest,
    #[serde(rename = "manifest")]
    manifests: Vec<LockedBaseManifest>,
}

impl TryFrom<LockedBaseFields> for LockedBase {
    type Error = &'static str;

    fn try_from(f: LockedBaseFields) -> Result<Self, Self::Error> {
        let source = match (f.image, f.oci_layout) {
            (Some(image), None) => LockedBaseSource::Image(image),
            (None, Some(dir)) => LockedBaseSource::OciLayout(dir),
            _ => return Err("a locked base names exactly one of image and oci-layout"),
        };
        Ok(LockedBase { source, digest: f.digest, manifests: f.manifests })
    }
}

impl From<LockedBase> for LockedBaseFields {
    fn from(b: LockedBase) -> Self {
        let (image, oci_layout) = match b.source {
            LockedBaseSource::Image(image) => (Some(image), None),
            LockedBaseSource::OciLayout(dir) => (None, Some(dir)),
        };
        LockedBaseFields { image, oci_layout, digest: b.digest, manifests: b.manifests }
    }
}

/// The base's manifest for one platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBaseManifest {
    pub platform: String,
    pub digest: Digest,
}

/// A repository as it was when packages were resolved from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedRepository {
    pub url: String,
    pub suite: String,
    /// The signed release file that was verified (`InRelease` or `Release`).
    pub release: String,
    /// sha256 of that file as fetched.
    pub digest: Digest,
}

/// One layer's packages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackages {
    pub layer: String,
    pub architecture: String,
    /// The layer's `packages`, as the recipe gives them.
    pub requested: Vec<String>,
    /// The chosen closure, sorted by name.
    #[serde(rename = "package")]
    pub chosen: Vec<LockedPackage>,
}

/// One chosen package: exactly which file a build fetches and what it must hash to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package and its version.
    pub source: String,
    #[serde(rename = "source-version")]
    pub source_version: String,
    /// The repository's url, as in a `[[repository]]` entry.
    pub repository: String,
    /// The `.deb`'s path under the repository's root.
    pub path: String,
    pub size: u64,
    pub sha256: Digest,
}

/// What kind of input a lock entry pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    File,
    Tree,
    Tarball,
    Deb,
}

impl InputKind {
    /// The name the lock file gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::File => "file",
            InputKind::Tree => "tree",
            InputKind::Tarball => "tarball",
            InputKind::Deb => "deb",
        }
    }
}

/// One pinned input: a path relative to the recipe and the digest of what it holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub kind: InputKind,
    pub src: String,
    pub digest: Digest,
    /// For a single file: whether it is executable on the host, the one host permission that
    /// can reach the image (0755 rather than 0644 where the recipe sets no mode). Trees pin
    /// their modes in their digest. Written only when true, so other entries read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
    /// For a tree: its digest pins each entry's host mode and numeric owner too (the recipe
    /// says `host-metadata = true`). Written only when true.
    #[serde(default, rename = "host-metadata", skip_serializing_if = "std::ops::Not::not")]
    pub host_metadata: bool,
    /// For a tree or tarball: device nodes and FIFOs are imported (the recipe says
    /// `devices = true`). Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub devices: bool,
    /// The one platform whose layer takes this input (the recipe says `platform = …`);
    /// written only then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl Input {
    /// Whether `other` is this input, in this lock or another: the same kind and source,
    /// for the same platform.
    fn same_input(&self, other: &Input) -> bool {
        self.kind == other.kind && self.src == other.src && self.platform == other.platform
    }
}

/// Why a lock file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read lock file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write lock file {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("lock file {path} is malformed: {message}; delete it and run `kiln lock` again")]
    Malformed { path: PathBuf, message: String },
    #[error("cannot serialise the lock: {0}")]
    Serialise(String),
    #[error("lock file {path} has version {found}; this kiln reads version {LOCK_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// One way the current inputs differ from the lock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockDifference {
    #[error("the recipe changed (locked {locked}, now {found})")]
    Recipe { locked: Digest, found: Digest },
    #[error("the epoch changed (locked {locked}, now {found})")]
    Epoch { locked: Epoch, found: Epoch },
    #[error("the output format changed (locked {locked}, this kiln writes {found})")]
    Format { locked: u32, found: u32 },
    #[error("the compression changed (locked {locked}, now {found})")]
    Compression { locked: String, found: String },
    #[error(
        "e2fsprogs changed (locked {locked}, this host has {found}): its mke2fs makes the ext4 \
         root, and its version decides the bytes; install e2fsprogs {locked} to reproduce the \
         locked image"
    )]
    E2fsprogs { locked: String, found: String },
    #[error(
        "the lock records no e2fsprogs version (locks written before kiln recorded it do not), \
         and the ext4 root is made by this host's e2fsprogs {found}, whose version decides its \
         bytes; `kiln lock`, or a build without --locked, records it"
    )]
    E2fsprogsUnrecorded { found: String },
    #[error("input {src} changed (locked {locked}, now {found})")]
    Input { src: String, locked: Digest, found: Digest },
    #[error(
        "input {src} changed (locked {locked}, now {found}): this tree keeps the host's modes \
         and owners, so a chmod or chown, or a copy unpacked by another user or on another \
         machine with other owners, changes it as an edit would"
    )]
    HostTree { src: String, locked: Digest, found: Digest },
    #[error("input {src} is {} now, but was {} when locked (the image gets mode {})", if *.found { "executable" } else { "not executable" }, if *.found { "not" } else { "executable" }, if *.found { "0755" } else { "0644" })]
    Executable { src: String, found: bool },
    #[error("input {src} is not in the lock")]
    Unlocked { src: String },
    #[error("locked input {src} is no longer used by the recipe")]
    Unused { src: String },
    #[error("the Debian packages of layer {layer:?} for {architecture} changed")]
    Packages { layer: String, architecture: String },
    #[error("the Debian repositories changed")]
    Repositories,
    #[error("the base image changed (locked {locked}, now {found})")]
    Base { locked: String, found: String },
}

impl Lock {
    /// The lock file that belongs to `recipe` (`hello.toml` → `hello.lock`).
    pub fn path_for(recipe: &Path) -> PathBuf {
        recipe.with_extension("lock")
    }

    /// Builds a lock from resolved values; inputs are sorted and deduplicated.
    pub fn new(
        recipe: Digest,
        epoch: Epoch,
        compression: Compression,
        e2fsprogs: Option<String>,
        mut inputs: Vec<Input>,
    ) -> Lock {
        inputs.sort();
        inputs.dedup();
        Lock {
            version: LOCK_VERSION,
            format: FORMAT_VERSION,
            recipe,
            epoch,
            compression,
            e2fsprogs,
            inputs,
            repositories: Vec::new(),
            packages: Vec::new(),
            base: None,
        }
    }

    /// Reads a lock file; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Lock>, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LockError::Read { path: path.to_path_buf(), source }),
        };
        let lock: Lock =
            toml::from_str(&text.replace("\r\n", "\n")).map_err(|e| LockError::Malformed {
                path: path.to_path_buf(),
                message: e.message().trim().to_string(),
            })?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Version { path: path.to_path_buf(), found: lock.version });
        }
        Ok(Some(lock))
    }

    /// The file's text: stable field order, inputs sorted, LF line endings.
    pub fn to_text(&self) -> Result<String, LockError> {
        let body = toml::to_string(self).map_err(|e| LockError::Serialise(e.to_string()))?;
        Ok(format!(
            "# Written by `kiln lock`: the digest of every input of the recipe beside it.\n{body}"
        ))
    }

    /// Writes the lock atomically (temp file + rename), so a crash never leaves half a lock.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let err = |source| LockError::Write { path: path.to_path_buf(), source };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        std::io::Write::write_all(&mut tmp, self.to_text()?.as_bytes()).map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }

    /// How the host tools that decide output bytes differ from the locked ones, if they do.
    /// Unlike an input, a host tool is not changed by editing the recipe's folder, so a build
    /// refuses this difference even when it may rewrite the lock: only `kiln lock` accepts it.
    pub fn host_tool_difference(&self, current: &Lock) -> Option<LockDifference> {
        match (&self.e2fsprogs, &current.e2fsprogs) {
            (Some(locked), Some(found)) if locked != found => {
                Some(LockDifference::E2fsprogs { locked: locked.clone(), found: found.clone() })
            }
            _ => None,
        }
    }

    /// Every difference between this lock and `current`, in a stable order.
    pub fn differences(&self, current: &Lock) -> Vec<LockDifference> {
        let mut out = Vec::new();
        if self.format != current.format {
            out.push(LockDifference::Format { locked: self.format, found: current.format });
        }
        if self.recipe != current.recipe {
            out.push(LockDifference::Recipe { locked: self.recipe, found: current.recipe });
        }
        if self.epoch != current.epoch {
            out.push(LockDifference::Epoch { locked: self.epoch, found: current.epoch });
        }
        if self.compression != current.compression {
            out.push(LockDifference::Compression {
                locked: self.compression.describe(),
                found: current.compression.describe(),
            });
        }
        if let Some(difference) = self.host_tool_difference(current) {
            out.push(difference);
        }
        // A lock from before e2fsprogs was recorded: a build without --locked records the
        // host's version (and says so), `--locked` refuses until `kiln lock` has recorded it,
        // since the lock cannot vouch for ext4 bytes made by a version it does not name.
        if let (None, Some(found)) = (&self.e2fsprogs, &current.e2fsprogs) {
            out.push(LockDifference::E2fsprogsUnrecorded { found: found.clone() });
        }
        for input in &current.inputs {
            match self.inputs.iter().find(|l| l.same_input(input)) {
                None => out.push(LockDifference::Unlocked { src: input.src.clone() }),
                Some(l) if l.digest != input.digest && input.host_metadata => {
                    out.push(LockDifference::HostTree {
                        src: input.src.clone(),
                        locked: l.digest,
                        found: input.digest,
                    })
                }
                Some(l) if l.digest != input.digest => out.push(LockDifference::Input {
                    src: input.src.clone(),
                    locked: l.digest,
                    found: input.digest,
                }),
                Some(l) if l.executable != input.executable => {
                    out.push(LockDifference::Executable {
                        src: input.src.clone(),
                        found: input.executable,
                    })
                }
                Some(_) => {}
            }
        }
        for l in &self.inputs {
            if !current.inputs.iter().any(|c| c.same_input(l)) {
                out.push(LockDifference::Unused { src: l.src.clone() });
            }
        }
        if self.base != current.base {
            let describe = |base: &Option<LockedBase>| match base {
                None => "none".to_string(),
                Some(b) => {
                    let manifests: Vec<String> = b
                        .manifests
                        .iter()
                        .map(|m| format!("{} {}", m.platform, m.digest))
                        .collect();
                    format!("{} [{}]", b.digest, manifests.join(", "))
                }
            };
            out.push(LockDifference::Base {
                locked: describe(&self.base),
                found: describe(&current.base),
            });
        }
        if self.repositories != current.repositories {
            out.push(LockDifference::Repositories);
        }
        let layers: std::collections::BTreeSet<(&str, &str)> = self
            .packages
            .iter()
            .chain(&current.packages)
            .map(|p| (p.layer.as_str(), p.architecture.as_str()))
            .collect();
        for (layer, arch) in layers {
            let find = |lock: &Lock| {
                lock.packages.iter().find(|p| p.layer == layer && p.architecture == arch).cloned()
            };
            if find(self) != find(current) {
                out.push(LockDifference::Packages {
                    layer: layer.to_string(),
                    architecture: arch.to_string(),
                });
            }
        }
        out
    }
}

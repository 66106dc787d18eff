//! Recipes: the declarative TOML that says what goes into an image.
//!
//! Parsing is strict (unknown keys are errors) and every error carries the recipe's file
//! name, line and column. This module holds the validated model the rest of the builder
//! uses; the raw TOML shapes, and `Recipe::load` and `Recipe::parse` that read them into this
//! model, live in the `recipe_toml` module, which depends on this one and not the reverse.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use kiln_oci::{Digest, Platform};

use kiln_compress::Compression;
use kiln_disk::{DiskLayout, PartitionLabels, RootFs};
use kiln_tree::image_path::{ImagePath, ImagePathError};
use kiln_tree::Epoch;

use crate::source_path::{SourcePath, SourcePathError};

/// A position in a recipe file (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` in `text`.
    pub fn at(file: &Path, text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = &text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
        Location { file: file.to_path_buf(), line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// What is wrong at a recipe location.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("{0}")]
    Toml(String),
    #[error("image path")]
    ImagePath(#[from] ImagePathError),
    #[error("source path")]
    SourcePath(#[from] SourcePathError),
    #[error("mode {0:#o} has bits outside 0o7777; give permission bits like 0o755")]
    Mode(i64),
    #[error("{what} {value} is out of range (0 to 4294967294)")]
    Id { what: &'static str, value: i64 },
    #[error("platform")]
    Platform(#[from] kiln_oci::descriptor::PlatformError),
    #[error("{0}")]
    Invalid(String),
}

/// A recipe that failed to load: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{location}")]
    At {
        location: Location,
        #[source]
        problem: Problem,
    },
}

/// A validated recipe.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// The recipe file as given.
    pub file: PathBuf,
    /// The folder holding the recipe; sources resolve against it and may not leave it.
    pub dir: PathBuf,
    /// sha256 of the recipe text with CRLF line endings normalised to LF.
    pub digest: Digest,
    pub epoch: Option<Epoch>,
    pub name: String,
    pub version: String,
    pub platforms: Vec<Platform>,
    pub compression: Compression,
    pub layers: Vec<LayerSpec>,
    pub config: ConfigSpec,
    pub annotations: BTreeMap<String, String>,
    /// The optional `[disk]` table: also make disk images from the image's root filesystem.
    pub disk: Option<DiskSpec>,
    /// The Debian repositories layers' `packages` come from.
    pub repositories: Vec<RepositorySpec>,
    /// The optional `[base]` table: the image whose layers come first.
    pub base: Option<BaseSpec>,
}

/// The `[base]` table: an existing image, pinned by digest, that the recipe's layers go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseSpec {
    pub source: BaseSource,
    /// The digest of the base's index or manifest.
    pub digest: Digest,
    pub at: Location,
}

/// Where a base image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseSource {
    /// A registry repository, `HOST[:PORT]/REPO`; the image is pulled into the store.
    Registry { host: String, repository: kiln_oci::RepoName },
    /// An OCI image layout folder in the recipe's folder.
    Layout(SourcePath),
}

impl fmt::Display for BaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            BaseSource::Registry { host, repository } => {
                write!(f, "{host}/{repository}@{}", self.digest)
            }
            BaseSource::Layout(dir) => write!(f, "oci-layout {dir}@{}", self.digest),
        }
    }
}

/// The `[disk]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Disk size in bytes (a multiple of 512).
    pub size: u64,
    /// The root partition's filesystem.
    pub root: RootFs,
    /// Add a dm-verity hash partition for the root.
    pub verity: bool,
    /// Output formats, in recipe order, without repeats (`raw` when none is given).
    pub formats: Vec<DiskFormat>,
    /// GPT partition names (`labels = { root = .., verity = .., esp = .. }`); `None` keeps
    /// the default name.
    pub labels: PartitionLabels,
    /// An EFI System Partition made of files taken from the image.
    pub esp: Option<EspSpec>,
}

impl DiskSpec {
    /// The disk this table describes, as the disk writers take it.
    pub fn layout(&self) -> DiskLayout {
        DiskLayout {
            size: self.size,
            root: self.root,
            verity: self.verity,
            labels: self.labels.clone(),
        }
    }
}

/// The `[disk.esp]` table: a FAT EFI System Partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspSpec {
    /// Partition size in bytes (a multiple of 512).
    pub size: u64,
    /// ESP path -> the image path whose file it holds.
    pub files: BTreeMap<ImagePath, ImagePath>,
}

/// A disk image container format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
    Vhd,
    /// Google Compute Engine: `disk.raw` alone in a gzip-compressed tar.
    Gce,
    /// The root filesystem as a gzip-compressed cpio (newc) initramfs, not a disk.
    Initramfs,
}

/// Owner and permissions declared for an entry; `None` means "normalise".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    pub mode: Option<u32>,
    pub uid: u32,
    pub gid: u32,
}

/// One `[[layer]]`.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub name: String,
    pub dirs: Vec<DirSpec>,
    pub files: Vec<FileSpec>,
    pub inline: Vec<InlineSpec>,
    pub symlinks: Vec<SymlinkSpec>,
    pub hardlinks: Vec<HardlinkSpec>,
    pub trees: Vec<TreeSpec>,
    pub tarballs: Vec<TarballSpec>,
    /// Debian packages from the recipe's repositories, with their dependency closure.
    pub packages: Vec<PackageSpec>,
    /// Local `.deb` files, installed without their dependencies.
    pub debs: Vec<DebSpec>,
}

impl LayerSpec {
    /// Whether an input of the layer is given for one platform only.
    pub fn per_platform(&self) -> bool {
        self.files.iter().any(|f| f.platform.is_some())
            || self.trees.iter().any(|t| t.platform.is_some())
            || self.tarballs.iter().any(|t| t.platform.is_some())
    }

    /// The layer as `platform` gets it: without the inputs given for other platforms.
    pub fn for_platform(&self, platform: &Platform) -> LayerSpec {
        let mine = |p: &Option<Platform>| p.as_ref().is_none_or(|p| p == platform);
        let mut spec = self.clone();
        spec.files.retain(|f| mine(&f.platform));
        spec.trees.retain(|t| mine(&t.platform));
        spec.tarballs.retain(|t| mine(&t.platform));
        spec
    }
}

/// A Debian package a layer asks for: `name` or `name (op version)`.
#[derive(Clone, Debug)]
pub struct PackageSpec {
    pub request: String,
    pub at: Location,
}

/// A local `.deb` file a layer installs.
#[derive(Clone, Debug)]
pub struct DebSpec {
    pub src: SourcePath,
    pub at: Location,
}

/// A `[[repository]]` table: a signed Debian repository and the key that signs it.
#[derive(Clone, Debug)]
pub struct RepositorySpec {
    /// `file:///absolute/path`, `http://` or `https://` URL of the repository's root (the
    /// folder holding `dists/`).
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
    /// The architectures to use; empty means the recipe's platform's.
    pub architectures: Vec<String>,
    /// The OpenPGP public key file (armored or binary) in the recipe's folder.
    pub key: SourcePath,
    /// A PEM file of CA certificates an `https://` repository's certificate may chain to,
    /// besides the system's roots.
    pub ca: Option<SourcePath>,
    pub at: Location,
}

/// A directory to create.
#[derive(Clone, Debug)]
pub struct DirSpec {
    pub dest: ImagePath,
    pub owner: Ownership,
    /// Where the recipe declares it, for errors found when the layer is made.
    pub at: Location,
}

/// A host file copied into the image.
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub src: SourcePath,
    pub dest: ImagePath,
    pub owner: Ownership,
    /// The one platform whose layer gets it (`platform = "linux/arm64"`); `None` for all.
    pub platform: Option<Platform>,
    /// Where the recipe declares it, for errors found when the layer is made.
    pub at: Location,
}

/// A file whose content is written in the recipe.
#[derive(Clone, Debug)]
pub struct InlineSpec {
    pub dest: ImagePath,
    pub content: String,
    pub owner: Ownership,
    /// Where the recipe declares it, for errors found when the layer is made.
    pub at: Location,
}

/// A symbolic link.
#[derive(Clone, Debug)]
pub struct SymlinkSpec {
    pub dest: ImagePath,
    pub target: String,
    pub owner: Ownership,
    /// Where the recipe declares it, for errors found when the layer is made.
    pub at: Location,
}

/// A hard link to a regular file declared in the same layer.
#[derive(Clone, Debug)]
pub struct HardlinkSpec {
    pub dest: ImagePath,
    pub target: ImagePath,
    /// Where the recipe declares it, for errors found when the layer is made.
    pub at: Location,
}

/// A host directory copied recursively.
#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub src: SourcePath,
    pub dest: ImagePath,
    pub uid: u32,
    pub gid: u32,
    /// Keep each entry's permission bits (special bits included) and numeric owner as the
    /// host has them, instead of 0755/0644 and `uid`/`gid`: for a root filesystem.
    pub host_metadata: bool,
    /// Import device nodes and FIFOs (refused otherwise).
    pub devices: bool,
    /// The one platform whose layer gets it (`platform = "linux/arm64"`); `None` for all.
    pub platform: Option<Platform>,
    /// Where the recipe declares it, for errors found when the layer is made.
    pub at: Location,
}

/// An existing tarball (plain, gzip or zstd) unpacked into the layer.
#[derive(Clone, Debug)]
pub struct TarballSpec {
    pub src: SourcePath,
    pub dest: ImagePath,
    /// Import device nodes and FIFOs (refused otherwise).
    pub devices: bool,
    /// The one platform whose layer gets it (`platform = "linux/arm64"`); `None` for all.
    pub platform: Option<Platform>,
    /// Where the recipe declares it, for errors found when the layer is made.
    pub at: Location,
}

/// The `[config]` table: what a runtime reads.
#[derive(Clone, Debug, Default)]
pub struct ConfigSpec {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub stop_signal: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Recipe, RecipeError> {
        Recipe::parse(Path::new("r.toml"), Path::new("."), text)
    }

    const HEAD: &str = "[image]\nname = \"d\"\nversion = \"1\"\n\n";

    #[test]
    fn disk_table_is_parsed_and_checked() {
        let r = parse(&format!(
            "{HEAD}[disk]\nsize = \"64MiB\"\nroot = \"erofs\"\nverity = true\n\
             formats = [\"qcow2\", \"raw\", \"vhd\"]\n"
        ))
        .unwrap();
        let disk = r.disk.unwrap();
        assert_eq!(disk.size, 64 << 20);
        assert!(disk.verity);
        assert_eq!(disk.formats, [DiskFormat::Qcow2, DiskFormat::Raw, DiskFormat::Vhd]);
        let r = parse(&format!("{HEAD}[disk]\nsize = \"1048576\"\n")).unwrap();
        assert_eq!(
            r.disk.unwrap(),
            DiskSpec {
                size: 1 << 20,
                root: RootFs::Erofs,
                verity: false,
                formats: vec![DiskFormat::Raw],
                labels: PartitionLabels::default(),
                esp: None,
            }
        );
        assert!(parse(HEAD).unwrap().disk.is_none());

        let r = parse(&format!(
            "{HEAD}[disk]\nsize = \"1GiB\"\nroot = \"squashfs\"\n\
             labels = {{ root = \"système\", esp = \"boot\" }}\n\
             [disk.esp]\nsize = \"64MiB\"\n\
             files = {{ \"EFI/BOOT/BOOTX64.EFI\" = \"/usr/lib/boot.efi\" }}\n"
        ))
        .unwrap();
        let disk = r.disk.unwrap();
        assert_eq!(disk.root, RootFs::Squashfs);
        assert_eq!(disk.labels.root.as_deref(), Some("système"));
        assert_eq!(disk.labels.verity, None);
        let esp = disk.esp.unwrap();
        assert_eq!(esp.size, 64 << 20);
        let (dest, src) = esp.files.iter().next().unwrap();
        assert_eq!((dest.as_str(), src.as_str()), ("EFI/BOOT/BOOTX64.EFI", "usr/lib/boot.efi"));

        for (body, needle) in [
            ("size = \"1GiB\"\nbogus = 1\n", "r.toml:7:1: unknown field `bogus`"),
            ("size = \"1GB\"\n", "r.toml:6:8: disk size \"1GB\""),
            ("size = \"1000\"\n", "multiple of 512"),
            ("size = \"1GiB\"\nroot = \"btrfs\"\n", "r.toml:7:8: disk root \"btrfs\""),
            ("size = \"1GiB\"\nlabels = { root = \"\" }\n", "r.toml:7:19: partition label \"\""),
            (
                "size = \"1GiB\"\nlabels = { root = \"0123456789012345678901234567890123456\" }\n",
                "36 UTF-16",
            ),
            (
                "size = \"1GiB\"\nlabels = { root = \"a\", esp = \"a\" }\n",
                "r.toml:7:30: partition label \"a\" is used twice",
            ),
            ("size = \"1GiB\"\nlabels = { home = \"a\" }\n", "unknown field `home`"),
            (
                "size = \"1GiB\"\n[disk.esp]\nsize = \"1MiB\"\nfiles = {}\n",
                "r.toml:8:8: [disk.esp] needs files",
            ),
            (
                "size = \"1GiB\"\n[disk.esp]\nsize = \"1MiB\"\nfiles = { \"../x\" = \"/a\" }\n",
                "r.toml:9:20: ESP path: path \"../x\" climbs out",
            ),
            (
                "size = \"1GiB\"\n[disk.esp]\nsize = \"1MiB\"\nfiles = { \"x\" = \"/../a\" }\n",
                "r.toml:9:17:",
            ),
            (
                "size = \"1GiB\"\n[disk.esp]\nsize = \"1MB\"\nfiles = { \"x\" = \"/a\" }\n",
                "r.toml:8:8: ESP size",
            ),
            (
                "size = \"1GiB\"\nformats = [\"raw\", \"vmdk\"]\n",
                "r.toml:7:19: disk format \"vmdk\"",
            ),
            ("size = \"1GiB\"\nformats = [\"raw\", \"raw\"]\n", "listed twice"),
        ] {
            let err = parse(&format!("{HEAD}[disk]\n{body}")).unwrap_err();
            // The message and its causes, as the command line prints them.
            let mut text = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            assert!(text.contains(needle), "{body:?}: {text}");
        }
    }
}

//! The raw TOML shape of a recipe, its validation into [`crate::recipe`] types, and
//! [`Recipe::load`] and [`Recipe::parse`], which read a recipe through them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use kiln_compress::Compression;
use kiln_disk::{PartitionLabels, RootFs};
use kiln_oci::{Digest, Platform};
use kiln_tree::image_path::ImagePath;
use kiln_tree::Epoch;

use crate::recipe::{
    BaseSource, BaseSpec, ConfigSpec, DebSpec, DirSpec, DiskFormat, DiskSpec, EspSpec, FileSpec,
    HardlinkSpec, InlineSpec, LayerSpec, Location, Ownership, PackageSpec, Problem, Recipe,
    RecipeError, RepositorySpec, SymlinkSpec, TarballSpec, TreeSpec,
};
use crate::source_path::SourcePath;

impl Recipe {
    /// Reads and validates the recipe at `file`.
    pub fn load(file: &Path) -> Result<Recipe, RecipeError> {
        let bytes = std::fs::read(file)
            .map_err(|source| RecipeError::Read { path: file.to_path_buf(), source })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            RecipeError::At {
                location: Location::at(file, &text, offset),
                problem: Problem::Invalid("the recipe is not valid UTF-8".into()),
            }
        })?;
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::parse(file, &dir, &text)
    }

    /// Parses recipe `text` as if read from `file`, with sources relative to `dir`.
    pub fn parse(file: &Path, dir: &Path, text: &str) -> Result<Recipe, RecipeError> {
        let normalised = text.replace("\r\n", "\n");
        let at = |offset: usize, problem: Problem| RecipeError::At {
            location: Location::at(file, &normalised, offset),
            problem,
        };
        let raw: RawRecipe = toml::from_str(&normalised).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, Problem::Toml(e.message().trim().to_string()))
        })?;
        let dir = std::fs::canonicalize(dir)
            .map_err(|source| RecipeError::Read { path: dir.to_path_buf(), source })?;
        let locate = |offset: usize| Location::at(file, &normalised, offset);
        let cx = Context { dir: &dir, at: &at, locate: &locate };
        let model = cx.validate(raw)?;
        Ok(Recipe {
            file: file.to_path_buf(),
            dir,
            digest: Digest::of(normalised.as_bytes()),
            epoch: model.epoch,
            name: model.name,
            version: model.version,
            platforms: model.platforms,
            compression: model.compression,
            layers: model.layers,
            config: model.config,
            annotations: model.annotations,
            disk: model.disk,
            repositories: model.repositories,
            base: model.base,
        })
    }
}

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecipe {
    epoch: Option<S<i64>>,
    image: RawImage,
    #[serde(default)]
    layer: Vec<RawLayer>,
    #[serde(default)]
    config: RawConfig,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    disk: Option<RawDisk>,
    #[serde(default)]
    repository: Vec<RawRepository>,
    base: Option<S<RawBase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBase {
    image: Option<S<String>>,
    #[serde(rename = "oci-layout")]
    oci_layout: Option<S<String>>,
    digest: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    url: S<String>,
    suite: S<String>,
    components: Vec<S<String>>,
    #[serde(default)]
    architectures: Vec<S<String>>,
    key: S<String>,
    ca: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeb {
    src: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    size: S<String>,
    root: Option<S<String>>,
    #[serde(default)]
    verity: bool,
    formats: Option<Vec<S<String>>>,
    labels: Option<RawLabels>,
    esp: Option<RawEsp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabels {
    root: Option<S<String>>,
    verity: Option<S<String>>,
    esp: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEsp {
    size: S<String>,
    files: BTreeMap<String, S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: S<String>,
    version: S<String>,
    platforms: Option<Vec<S<String>>>,
    compression: Option<S<String>>,
}

/// The most layers a recipe may have.
pub const MAX_LAYERS: usize = 127;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    name: S<String>,
    #[serde(default)]
    dirs: Vec<RawDir>,
    #[serde(default)]
    files: Vec<RawFile>,
    #[serde(default)]
    inline: Vec<RawInline>,
    #[serde(default)]
    symlinks: Vec<RawSymlink>,
    #[serde(default)]
    hardlinks: Vec<RawHardlink>,
    #[serde(default)]
    trees: Vec<RawTree>,
    #[serde(default)]
    tarballs: Vec<RawTarball>,
    #[serde(default)]
    packages: Vec<S<String>>,
    #[serde(default)]
    debs: Vec<RawDeb>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    dest: S<String>,
    mode: Option<S<i64>>,
    uid: Option<S<i64>>,
    gid: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    src: S<String>,
    dest: S<String>,
    platform: Option<S<String>>,
    mode: Option<S<i64>>,
    uid: Option<S<i64>>,
    gid: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInline {
    dest: S<String>,
    content: String,
    mode: Option<S<i64>>,
    uid: Option<S<i64>>,
    gid: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSymlink {
    dest: S<String>,
    target: S<String>,
    uid: Option<S<i64>>,
    gid: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHardlink {
    dest: S<String>,
    target: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTree {
    src: S<String>,
    dest: S<String>,
    platform: Option<S<String>>,
    uid: Option<S<i64>>,
    gid: Option<S<i64>>,
    #[serde(rename = "host-metadata")]
    host_metadata: Option<S<bool>>,
    #[serde(default)]
    devices: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarball {
    src: S<String>,
    platform: Option<S<String>>,
    #[serde(default = "root_dest")]
    dest: S<String>,
    #[serde(default)]
    devices: bool,
}

/// Bytes in `"64MiB"`, `"1GiB"`, `"512KiB"`, `"1048576"` (binary units only).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

fn root_dest() -> S<String> {
    Spanned::new(0..0, "/".to_string())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<S<String>, String>,
    user: Option<String>,
    workdir: Option<S<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    exposed_ports: Vec<S<String>>,
    #[serde(default)]
    volumes: Vec<S<String>>,
    stop_signal: Option<String>,
}

/// The validated parts of a recipe, before the file-level fields are added.
pub(crate) struct Model {
    pub epoch: Option<Epoch>,
    pub name: String,
    pub version: String,
    pub platforms: Vec<kiln_oci::Platform>,
    pub compression: Compression,
    pub layers: Vec<LayerSpec>,
    pub config: ConfigSpec,
    pub annotations: BTreeMap<String, String>,
    pub disk: Option<DiskSpec>,
    pub repositories: Vec<RepositorySpec>,
    pub base: Option<BaseSpec>,
}

/// What validation needs: the recipe folder and a way to turn a span into an error.
pub(crate) struct Context<'a> {
    pub dir: &'a Path,
    pub at: &'a dyn Fn(usize, Problem) -> RecipeError,
    /// The location of a byte offset, kept with declarations for errors found later.
    pub locate: &'a dyn Fn(usize) -> Location,
}

impl Context<'_> {
    fn err<T>(&self, span: std::ops::Range<usize>, problem: Problem) -> Result<T, RecipeError> {
        Err((self.at)(span.start, problem))
    }

    fn image_path(&self, raw: &S<String>) -> Result<ImagePath, RecipeError> {
        ImagePath::parse(raw.get_ref()).or_else(|e| self.err(raw.span(), e.into()))
    }

    fn source(&self, raw: &S<String>) -> Result<SourcePath, RecipeError> {
        SourcePath::resolve(self.dir, raw.get_ref()).or_else(|e| self.err(raw.span(), e.into()))
    }

    fn mode(&self, raw: &Option<S<i64>>) -> Result<Option<u32>, RecipeError> {
        match raw {
            None => Ok(None),
            Some(m) if (0..=0o7777).contains(m.get_ref()) => Ok(Some(*m.get_ref() as u32)),
            Some(m) => self.err(m.span(), Problem::Mode(*m.get_ref())),
        }
    }

    fn id(&self, what: &'static str, raw: &Option<S<i64>>) -> Result<u32, RecipeError> {
        match raw {
            None => Ok(0),
            Some(v) => match u32::try_from(*v.get_ref()) {
                Ok(id) if id != u32::MAX => Ok(id),
                _ => self.err(v.span(), Problem::Id { what, value: *v.get_ref() }),
            },
        }
    }

    fn owner(
        &self,
        mode: &Option<S<i64>>,
        uid: &Option<S<i64>>,
        gid: &Option<S<i64>>,
    ) -> Result<Ownership, RecipeError> {
        Ok(Ownership {
            mode: self.mode(mode)?,
            uid: self.id("uid", uid)?,
            gid: self.id("gid", gid)?,
        })
    }

    /// Validates a value as `T` (a repository name or tag), keeping its text.
    fn checked<T>(&self, raw: &S<String>) -> Result<String, RecipeError>
    where
        T: std::str::FromStr<Err = kiln_oci::NameError>,
    {
        match raw.get_ref().parse::<T>() {
            Ok(_) => Ok(raw.get_ref().clone()),
            Err(e) => self.err(raw.span(), Problem::Invalid(e.to_string())),
        }
    }

    fn non_empty(&self, what: &str, raw: &S<String>) -> Result<String, RecipeError> {
        let v = raw.get_ref();
        if v.is_empty() || v.contains('\0') {
            return self
                .err(raw.span(), Problem::Invalid(format!("{what} must be non-empty text")));
        }
        Ok(v.clone())
    }

    pub(crate) fn validate(&self, raw: RawRecipe) -> Result<Model, RecipeError> {
        let epoch = match raw.epoch {
            None => None,
            Some(e) => match Epoch::new(*e.get_ref()) {
                Ok(epoch) => Some(epoch),
                Err(_) => {
                    return self.err(
                        e.span(),
                        Problem::Invalid(format!(
                            "epoch must be seconds since 1970 from 0 to {} (the latest time a \
                             tar header holds)",
                            Epoch::MAX
                        )),
                    );
                }
            },
        };
        let platforms = match &raw.image.platforms {
            None => vec![kiln_oci::Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            }],
            Some(list) if list.is_empty() => {
                return self.err(
                    raw.image.name.span(),
                    Problem::Invalid("platforms must list at least one platform".into()),
                );
            }
            Some(list) => {
                let mut out = Vec::new();
                for p in list {
                    let parsed =
                        p.get_ref().parse().or_else(|e| self.err(p.span(), Problem::from(e)))?;
                    if out.contains(&parsed) {
                        return self.err(
                            p.span(),
                            Problem::Invalid(format!(
                                "platform {p} is listed twice",
                                p = p.get_ref()
                            )),
                        );
                    }
                    out.push(parsed);
                }
                out
            }
        };
        let compression = match &raw.image.compression {
            None => Compression::default(),
            Some(c) => match c.get_ref().as_str() {
                "gzip" => Compression::GZIP,
                "zstd" => Compression::ZSTD,
                other => {
                    return self.err(
                        c.span(),
                        Problem::Invalid(format!(
                            "compression {other:?} is not one of \"gzip\", \"zstd\""
                        )),
                    );
                }
            },
        };
        // overlayfs, which container runtimes stack layers with, takes at most 128 lower
        // directories, and runtimes refuse images near that depth ("max depth exceeded"):
        // an image with more layers builds but does not run, so it is refused here.
        if let Some(extra) = raw.layer.get(MAX_LAYERS) {
            return self.err(
                extra.name.span(),
                Problem::Invalid(format!(
                    "a recipe has at most {MAX_LAYERS} layers (container runtimes stack no more); \
                     this is layer {}",
                    MAX_LAYERS + 1
                )),
            );
        }
        let mut layers = Vec::new();
        for layer in &raw.layer {
            layers.push(self.layer(layer, &platforms)?);
        }
        let repositories =
            raw.repository.iter().map(|r| self.repository(r)).collect::<Result<Vec<_>, _>>()?;
        if let Some(first) = raw.layer.iter().find(|l| !l.packages.is_empty()) {
            if repositories.is_empty() {
                return self.err(
                    first.packages[0].span(),
                    Problem::Invalid("packages need a [[repository]] to come from".into()),
                );
            }
        }
        Ok(Model {
            epoch,
            name: self.checked::<kiln_oci::RepoName>(&raw.image.name)?,
            version: self.checked::<kiln_oci::Tag>(&raw.image.version)?,
            platforms,
            compression,
            layers,
            config: self.config(raw.config)?,
            annotations: raw.annotations,
            disk: raw.disk.map(|d| self.disk(d)).transpose()?,
            repositories,
            base: raw.base.map(|b| self.base(b)).transpose()?,
        })
    }

    /// `[base]`: `image = "HOST/REPO@sha256:…"`, or `oci-layout = "DIR"` with `digest`.
    fn base(&self, raw: S<RawBase>) -> Result<BaseSpec, RecipeError> {
        let at = (self.locate)(raw.span().start);
        let span = raw.span();
        let raw = raw.into_inner();
        let digest = |text: &S<String>| -> Result<Digest, RecipeError> {
            text.get_ref()
                .parse::<Digest>()
                .or_else(|e| self.err(text.span(), Problem::Invalid(format!("base digest: {e}"))))
        };
        match (raw.image, raw.oci_layout, raw.digest) {
            (Some(image), None, None) => {
                let (host, repository, found) = self.registry_image(&image)?;
                Ok(BaseSpec {
                    source: BaseSource::Registry { host, repository },
                    digest: digest(&found)?,
                    at,
                })
            }
            (None, Some(dir), Some(found)) => {
                let dir = self.source(&dir)?;
                Ok(BaseSpec { source: BaseSource::Layout(dir), digest: digest(&found)?, at })
            }
            (Some(_), None, Some(extra)) => self.err(
                extra.span(),
                Problem::Invalid(
                    "a registry base names its digest in `image` (HOST/REPO@sha256:…), not in \
                     `digest`"
                        .into(),
                ),
            ),
            (None, Some(dir), None) => self.err(
                dir.span(),
                Problem::Invalid(
                    "an oci-layout base needs `digest = \"sha256:…\"`: the index or manifest \
                     the recipe is built on"
                        .into(),
                ),
            ),
            (Some(_), Some(dir), _) => self.err(
                dir.span(),
                Problem::Invalid("[base] takes `image` or `oci-layout`, not both".into()),
            ),
            (None, None, _) => self.err(
                span,
                Problem::Invalid("[base] needs `image` or `oci-layout` with `digest`".into()),
            ),
        }
    }

    /// Splits `HOST[:PORT]/REPO[:TAG]@sha256:…` into host, repository and digest text. A
    /// tag without a digest is refused: what it names can change under the recipe.
    fn registry_image(
        &self,
        raw: &S<String>,
    ) -> Result<(String, kiln_oci::RepoName, S<String>), RecipeError> {
        let text = raw.get_ref();
        let invalid = |why: String| self.err(raw.span(), Problem::Invalid(why));
        let Some((name, digest)) = text.split_once('@') else {
            return invalid(format!(
                "base image {text:?} has no digest: a tag can be moved to another image, so a \
                 base is named by digest, HOST/REPO@sha256:…; `skopeo inspect \
                 docker://{text}` shows the digest it names now"
            ));
        };
        let Some((host, path)) = name.split_once('/') else {
            return invalid(format!("base image {text:?} is not HOST[:PORT]/REPO@sha256:…"));
        };
        // As a registry host is told from a repository's first component: a dot, a port or
        // localhost. kiln has no default registry.
        if !(host.contains('.') || host.contains(':') || host == "localhost")
            || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return invalid(format!(
                "base image {text:?} names no registry host ({host:?} needs a dot or a port, or \
                 to be localhost)"
            ));
        }
        // A tag beside the digest only tells readers what the digest was; the digest decides.
        let last = path.rfind('/').map_or(0, |i| i + 1);
        let repository = match path[last..].find(':') {
            Some(i) => &path[..last + i],
            None => path,
        };
        let repository = match repository.parse::<kiln_oci::RepoName>() {
            Ok(r) => r,
            Err(e) => return invalid(format!("base image {text:?}: {e}")),
        };
        let digest = S::new(raw.span(), digest.to_string());
        Ok((host.to_string(), repository, digest))
    }

    fn repository(&self, raw: &RawRepository) -> Result<RepositorySpec, RecipeError> {
        let url = raw.url.get_ref();
        let local = url.strip_prefix("file://").filter(|p| p.starts_with('/'));
        let remote = ["http://", "https://"].iter().any(|scheme| {
            url.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        });
        if local.is_none() && !remote {
            return self.err(
                raw.url.span(),
                Problem::Invalid(format!(
                    "repository url {url:?} is neither file:///absolute/path nor \
                     http(s)://host/path"
                )),
            );
        }
        if local.is_some_and(|path| path.split('/').any(|c| c == "..")) {
            return self
                .err(raw.url.span(), Problem::Invalid("repository url climbs with \"..\"".into()));
        }
        let word = |what: &str, v: &S<String>| -> Result<String, RecipeError> {
            let text = v.get_ref();
            if text.is_empty()
                || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
            {
                return self.err(
                    v.span(),
                    Problem::Invalid(format!("{what} {text:?} is not a plain name")),
                );
            }
            Ok(text.clone())
        };
        if raw.components.is_empty() {
            return self
                .err(raw.suite.span(), Problem::Invalid("a repository needs components".into()));
        }
        let key = self.source(&raw.key)?;
        if !key.abs().is_file() {
            return self
                .err(raw.key.span(), Problem::Invalid(format!("key {key} is not a regular file")));
        }
        let ca = match &raw.ca {
            None => None,
            Some(raw_ca) if !url.starts_with("https://") => {
                return self.err(
                    raw_ca.span(),
                    Problem::Invalid("ca is for an https:// repository's certificate".into()),
                );
            }
            Some(raw_ca) => {
                let ca = self.source(raw_ca)?;
                if !ca.abs().is_file() {
                    return self.err(
                        raw_ca.span(),
                        Problem::Invalid(format!("ca {ca} is not a regular file")),
                    );
                }
                Some(ca)
            }
        };
        Ok(RepositorySpec {
            ca,
            url: url.trim_end_matches('/').to_string(),
            suite: word("suite", &raw.suite)?,
            components: raw
                .components
                .iter()
                .map(|c| word("component", c))
                .collect::<Result<_, _>>()?,
            architectures: raw
                .architectures
                .iter()
                .map(|a| word("architecture", a))
                .collect::<Result<_, _>>()?,
            key,
            at: (self.locate)(raw.url.span().start),
        })
    }

    fn size(&self, what: &str, raw: &S<String>) -> Result<u64, RecipeError> {
        match parse_size(raw.get_ref()) {
            Some(size) if size > 0 && size % 512 == 0 => Ok(size),
            _ => self.err(
                raw.span(),
                Problem::Invalid(format!(
                    "{what} {:?} is not a size like \"64MiB\", \"1GiB\" or a byte count \
                     that is a multiple of 512",
                    raw.get_ref()
                )),
            ),
        }
    }

    /// A GPT partition name: 1 to 36 UTF-16 units, no control characters.
    fn label(&self, raw: &Option<S<String>>) -> Result<Option<String>, RecipeError> {
        let Some(raw) = raw else { return Ok(None) };
        let label = raw.get_ref();
        let units = label.encode_utf16().count();
        if units == 0 || units > 36 || label.chars().any(char::is_control) {
            return self.err(
                raw.span(),
                Problem::Invalid(format!(
                    "partition label {label:?} must be 1 to 36 UTF-16 characters without \
                     control characters (a GPT partition name)"
                )),
            );
        }
        Ok(Some(label.clone()))
    }

    fn disk(&self, raw: RawDisk) -> Result<DiskSpec, RecipeError> {
        let size = self.size("disk size", &raw.size)?;
        let root = match &raw.root {
            None => RootFs::default(),
            Some(root) => match root.get_ref().as_str() {
                "erofs" => RootFs::Erofs,
                "squashfs" => RootFs::Squashfs,
                "ext4" => RootFs::Ext4,
                other => {
                    return self.err(
                        root.span(),
                        Problem::Invalid(format!(
                            "disk root {other:?} is not one of \"erofs\", \"squashfs\", \"ext4\""
                        )),
                    );
                }
            },
        };
        let mut labels = PartitionLabels::default();
        if let Some(raw) = &raw.labels {
            labels.root = self.label(&raw.root)?;
            labels.verity = self.label(&raw.verity)?;
            labels.esp = self.label(&raw.esp)?;
            let named =
                [(&raw.root, &labels.root), (&raw.verity, &labels.verity), (&raw.esp, &labels.esp)];
            for (i, (spanned, label)) in named.iter().enumerate() {
                let (Some(spanned), Some(label)) = (spanned, label) else { continue };
                if named[..i].iter().any(|(_, other)| other.as_ref() == Some(label)) {
                    return self.err(
                        spanned.span(),
                        Problem::Invalid(format!(
                            "partition label {label:?} is used twice; each partition needs its own"
                        )),
                    );
                }
            }
        }
        let esp = match &raw.esp {
            None => None,
            Some(esp) => {
                let mut files = BTreeMap::new();
                for (dest, src) in &esp.files {
                    // TOML keys carry no span of their own here; the value's span points at the entry.
                    let dest = ImagePath::parse(dest).or_else(|e| {
                        self.err(src.span(), Problem::Invalid(format!("ESP path: {e}")))
                    })?;
                    files.insert(dest, self.image_path(src)?);
                }
                if files.is_empty() {
                    return self.err(
                        esp.size.span(),
                        Problem::Invalid(
                            "[disk.esp] needs files = { \"EFI/BOOT/BOOTX64.EFI\" = \"/path/in/image\" }"
                                .into(),
                        ),
                    );
                }
                Some(EspSpec { size: self.size("ESP size", &esp.size)?, files })
            }
        };
        let mut formats = Vec::new();
        for f in raw.formats.unwrap_or_default() {
            let format = match f.get_ref().as_str() {
                "raw" => DiskFormat::Raw,
                "qcow2" => DiskFormat::Qcow2,
                "vhd" => DiskFormat::Vhd,
                "gce" => DiskFormat::Gce,
                "initramfs" => DiskFormat::Initramfs,
                other => {
                    return self.err(
                        f.span(),
                        Problem::Invalid(format!(
                        "disk format {other:?} is not one of \"raw\", \"qcow2\", \"vhd\", \"gce\", \"initramfs\""
                    )),
                    )
                }
            };
            if formats.contains(&format) {
                return self.err(
                    f.span(),
                    Problem::Invalid(format!("disk format {:?} is listed twice", f.get_ref())),
                );
            }
            formats.push(format);
        }
        if formats.is_empty() {
            formats.push(DiskFormat::Raw);
        }
        Ok(DiskSpec { size, root, verity: raw.verity, formats, labels, esp })
    }

    /// The platform an input is given for, which must be one of the recipe's `platforms`.
    fn platform(
        &self,
        raw: &Option<S<String>>,
        platforms: &[Platform],
    ) -> Result<Option<Platform>, RecipeError> {
        let Some(raw) = raw else { return Ok(None) };
        let platform: Platform =
            raw.get_ref().parse().or_else(|e| self.err(raw.span(), Problem::from(e)))?;
        if !platforms.contains(&platform) {
            let listed = platforms.iter().map(ToString::to_string).collect::<Vec<_>>();
            return self.err(
                raw.span(),
                Problem::Invalid(format!(
                    "platform {platform} is not one of the recipe's platforms ({})",
                    listed.join(", ")
                )),
            );
        }
        Ok(Some(platform))
    }

    /// Every path given for one platform only must be given for each of the recipe's
    /// platforms: an image whose platforms differ in what they hold is not asked for by
    /// leaving one out.
    fn every_platform(
        &self,
        raw: &RawLayer,
        spec: &LayerSpec,
        platforms: &[Platform],
    ) -> Result<(), RecipeError> {
        let given = spec
            .files
            .iter()
            .map(|f| ("file", &f.dest, &f.platform))
            .chain(spec.trees.iter().map(|t| ("tree", &t.dest, &t.platform)))
            .chain(spec.tarballs.iter().map(|t| ("tarball", &t.dest, &t.platform)));
        let mut per_dest: BTreeMap<(&str, &ImagePath), Vec<&Platform>> = BTreeMap::new();
        for (kind, dest, platform) in given {
            if let Some(p) = platform {
                per_dest.entry((kind, dest)).or_default().push(p);
            }
        }
        for ((kind, dest), given) in per_dest {
            if let Some(missing) = platforms.iter().find(|p| !given.contains(p)) {
                let given = given.iter().map(ToString::to_string).collect::<Vec<_>>();
                return self.err(
                    raw.name.span(),
                    Problem::Invalid(format!(
                        "layer {:?}: the {kind} for {dest} is given for {} but not for {missing}; give it \
                         for every platform, or once without `platform`",
                        raw.name.get_ref(),
                        given.join(", ")
                    )),
                );
            }
        }
        Ok(())
    }

    fn layer(&self, raw: &RawLayer, platforms: &[Platform]) -> Result<LayerSpec, RecipeError> {
        let mut spec = LayerSpec {
            name: self.non_empty("layer name", &raw.name)?,
            dirs: Vec::new(),
            files: Vec::new(),
            inline: Vec::new(),
            symlinks: Vec::new(),
            hardlinks: Vec::new(),
            trees: Vec::new(),
            tarballs: Vec::new(),
            packages: Vec::new(),
            debs: Vec::new(),
        };
        for d in &raw.dirs {
            spec.dirs.push(DirSpec {
                at: (self.locate)(d.dest.span().start),
                dest: self.image_path(&d.dest)?,
                owner: self.owner(&d.mode, &d.uid, &d.gid)?,
            });
        }
        for f in &raw.files {
            let src = self.source(&f.src)?;
            if !src.abs().is_file() {
                return self.err(
                    f.src.span(),
                    Problem::Invalid(format!("file source {src} is not a regular file")),
                );
            }
            spec.files.push(FileSpec {
                platform: self.platform(&f.platform, platforms)?,
                at: (self.locate)(f.dest.span().start),
                src,
                dest: self.image_path(&f.dest)?,
                owner: self.owner(&f.mode, &f.uid, &f.gid)?,
            });
        }
        for i in &raw.inline {
            spec.inline.push(InlineSpec {
                at: (self.locate)(i.dest.span().start),
                dest: self.image_path(&i.dest)?,
                content: i.content.clone(),
                owner: self.owner(&i.mode, &i.uid, &i.gid)?,
            });
        }
        for s in &raw.symlinks {
            spec.symlinks.push(SymlinkSpec {
                at: (self.locate)(s.dest.span().start),
                dest: self.image_path(&s.dest)?,
                target: self.non_empty("symlink target", &s.target)?,
                owner: self.owner(&None, &s.uid, &s.gid)?,
            });
        }
        for h in &raw.hardlinks {
            spec.hardlinks.push(HardlinkSpec {
                at: (self.locate)(h.dest.span().start),
                dest: self.image_path(&h.dest)?,
                target: self.image_path(&h.target)?,
            });
        }
        for t in &raw.trees {
            let src = self.source(&t.src)?;
            if !src.abs().is_dir() {
                return self.err(
                    t.src.span(),
                    Problem::Invalid(format!("tree source {src} is not a directory")),
                );
            }
            let host_metadata = t.host_metadata.as_ref().is_some_and(|h| *h.get_ref());
            if let (true, Some(id)) = (host_metadata, t.uid.as_ref().or(t.gid.as_ref())) {
                return self.err(
                    id.span(),
                    Problem::Invalid(
                        "uid and gid give a whole tree one owner; with host-metadata = true \
                         each entry keeps the owner it has on the host, so give one or the other"
                            .into(),
                    ),
                );
            }
            spec.trees.push(TreeSpec {
                platform: self.platform(&t.platform, platforms)?,
                at: (self.locate)(t.src.span().start),
                src,
                dest: self.image_path(&t.dest)?,
                uid: self.id("uid", &t.uid)?,
                gid: self.id("gid", &t.gid)?,
                host_metadata,
                devices: t.devices,
            });
        }
        for t in &raw.tarballs {
            let src = self.source(&t.src)?;
            if !src.abs().is_file() {
                return self.err(
                    t.src.span(),
                    Problem::Invalid(format!("tarball {src} is not a regular file")),
                );
            }
            spec.tarballs.push(TarballSpec {
                platform: self.platform(&t.platform, platforms)?,
                at: (self.locate)(t.src.span().start),
                src,
                dest: self.image_path(&t.dest)?,
                devices: t.devices,
            });
        }
        for p in &raw.packages {
            if let Err(e) = kiln_deb::relation::parse_relations(p.get_ref())
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.len() == 1 && r[0].0.len() == 1 {
                        Ok(())
                    } else {
                        Err("name one package".into())
                    }
                })
            {
                return self
                    .err(p.span(), Problem::Invalid(format!("package {:?}: {e}", p.get_ref())));
            }
            spec.packages.push(PackageSpec {
                request: p.get_ref().clone(),
                at: (self.locate)(p.span().start),
            });
        }
        for d in &raw.debs {
            let src = self.source(&d.src)?;
            if !src.abs().is_file() {
                return self.err(
                    d.src.span(),
                    Problem::Invalid(format!("deb {src} is not a regular file")),
                );
            }
            spec.debs.push(DebSpec { at: (self.locate)(d.src.span().start), src });
        }
        self.every_platform(raw, &spec, platforms)?;
        Ok(spec)
    }

    fn config(&self, raw: RawConfig) -> Result<ConfigSpec, RecipeError> {
        let mut env = BTreeMap::new();
        for (k, v) in raw.env {
            let key = k.get_ref();
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return self.err(
                    k.span(),
                    Problem::Invalid(format!(
                        "environment variable name {key:?} must be non-empty without '='"
                    )),
                );
            }
            env.insert(key.clone(), v);
        }
        for p in &raw.exposed_ports {
            let (port, proto) = p.get_ref().split_once('/').unwrap_or((p.get_ref(), "tcp"));
            let valid =
                port.parse::<u16>().is_ok_and(|n| n > 0) && matches!(proto, "tcp" | "udp" | "sctp");
            if !valid {
                return self.err(
                    p.span(),
                    Problem::Invalid(format!(
                        "exposed port {:?} is not PORT[/tcp|udp|sctp]",
                        p.get_ref()
                    )),
                );
            }
        }
        let mut volumes = Vec::new();
        for v in &raw.volumes {
            volumes.push(self.image_path(v)?.to_string());
        }
        let workdir = match &raw.workdir {
            Some(w) => Some(self.image_path(w)?.to_string()),
            None => None,
        };
        let exposed_ports = raw
            .exposed_ports
            .iter()
            .map(|p| {
                if p.get_ref().contains('/') {
                    p.get_ref().clone()
                } else {
                    format!("{}/tcp", p.get_ref())
                }
            })
            .collect();
        Ok(ConfigSpec {
            entrypoint: raw.entrypoint,
            cmd: raw.cmd,
            env,
            user: raw.user,
            workdir,
            labels: raw.labels,
            exposed_ports,
            volumes,
            stop_signal: raw.stop_signal,
        })
    }
}

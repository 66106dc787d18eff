//! Debian packages in layers: resolving a layer's `packages` against the recipe's signed
//! repositories into the lock, and installing locked packages and local `.deb` files into a
//! layer's tree without running any maintainer script, with the dpkg database that
//! `dpkg-query` and image scanners read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use kiln_deb::repository::{load_suite, RepositoryError};
use kiln_deb::signature::KEY_FILE_LIMIT;
use kiln_deb::source::{Source, SourceError};
use kiln_deb::{read_deb, Installed, Keyring, Limits, MemberKind, PackageRecord};
use kiln_oci::{Digest, HashingReader};

use crate::lock::{Lock, LockedPackage, LockedPackages, LockedRepository};
use crate::recipe::{Recipe, RepositorySpec};
use crate::tarball::{Member, Spool, Spooled};
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, EntryKind, Meta};

/// When packages are resolved rather than taken from the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Use the lock's packages where the lock has them for the same request; resolve the rest.
    Reuse,
    /// Use only the lock's packages; anything else is an error (`--locked` builds).
    LockedOnly,
    /// Resolve everything again (`kiln lock --update`).
    Update,
}

/// Why packages could not be resolved, fetched or installed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("cannot read key file {path}")]
    KeyFile { path: PathBuf, source: io::Error },
    #[error("key file {path}")]
    Key { path: PathBuf, source: kiln_deb::signature::SignatureError },
    #[error("repository {url} ({suite})")]
    Repository { url: String, suite: String, source: Box<RepositoryError> },
    #[error("layer {layer:?}: resolving its packages for {arch}")]
    Resolve { layer: String, arch: String, source: Box<kiln_deb::ResolveError> },
    #[error(
        "layer {layer:?}: its packages for {architecture} are not in the lock; run `kiln lock`"
    )]
    NotLocked { layer: String, architecture: String },
    #[error("package {name}: the lock names repository {url}, which the recipe no longer has")]
    UnknownRepository { name: String, url: String },
    #[error("repository {url}")]
    Url { url: String, source: SourceError },
    #[error("package {name}: cannot read {path}")]
    Fetch { name: String, path: String, source: io::Error },
    #[error("{path} is {found_size} bytes with sha256 {found}, but the lock says {size} bytes with sha256 {expected}")]
    Digest { path: String, expected: Digest, size: u64, found: Digest, found_size: u64 },
    #[error("package {name} ({path})")]
    Deb { name: String, path: String, source: kiln_deb::DebError },
    #[error("package {name}: member {member}")]
    Member { name: String, member: String, source: kiln_tree::image_path::ImagePathError },
    #[error("packages {a} and {b} both ship {path}, with different content")]
    Clash { a: String, b: String, path: String },
    #[error("package {name}: its control file names it {found:?}, which is not a package name")]
    Name { name: String, found: String },
    #[error("package {name}: keeping its file in the store")]
    Store { name: String, source: crate::build::sink::SinkError },
    #[error("layer {layer:?}: its packages were not unpacked before its tree was made")]
    NotUnpacked { layer: String },
    #[error("spooling package contents")]
    Spool(#[source] io::Error),
}

impl PackageError {
    /// A package file whose bytes are not the ones the lock pins.
    pub fn is_integrity(&self) -> bool {
        matches!(self, PackageError::Digest { .. })
    }
}

/// Where a repository url's files are read from, trusting `ca` for https besides the
/// system's roots.
fn source(url: &str, ca: Option<&std::path::Path>) -> Result<Source, PackageError> {
    Source::parse(url, ca).map_err(|source| PackageError::Url { url: url.to_string(), source })
}

/// The architectures packages are installed for: each of the recipe's platforms', once, in
/// the recipe's order.
pub fn architectures(recipe: &Recipe) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &recipe.platforms {
        if !out.contains(&p.architecture) {
            out.push(p.architecture.clone());
        }
    }
    out
}

/// Whether `repo` serves packages for `arch`.
fn serves(repo: &RepositorySpec, arch: &str) -> bool {
    repo.architectures.is_empty() || repo.architectures.iter().any(|a| a == arch)
}

/// The repositories and packages the lock gets: taken from `existing` where it holds the
/// same request, else resolved from the repositories (fetching and verifying their
/// indexes). Each layer's packages are resolved once per architecture of the recipe's
/// platforms.
pub fn plan(
    recipe: &Recipe,
    existing: Option<&Lock>,
    mode: Resolution,
) -> Result<(Vec<LockedRepository>, Vec<LockedPackages>), PackageError> {
    let arches = architectures(recipe);
    let wanted: Vec<(&str, &str, Vec<String>)> = recipe
        .layers
        .iter()
        .filter(|l| !l.packages.is_empty())
        .flat_map(|l| {
            let requested: Vec<String> = l.packages.iter().map(|p| p.request.clone()).collect();
            arches.iter().map(move |a| (l.name.as_str(), a.as_str(), requested.clone()))
        })
        .collect();
    if wanted.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let serving: Vec<&RepositorySpec> =
        recipe.repositories.iter().filter(|r| arches.iter().any(|a| serves(r, a))).collect();
    let same_repositories = existing.is_some_and(|lock| {
        lock.repositories.len() == serving.len()
            && lock
                .repositories
                .iter()
                .zip(&serving)
                .all(|(l, r)| l.url == r.url && l.suite == r.suite)
    });
    let reusable = |layer: &str, arch: &str, requested: &[String]| {
        existing.and_then(|lock| {
            lock.packages
                .iter()
                .find(|p| p.layer == layer && p.architecture == arch && p.requested == requested)
        })
    };
    if mode != Resolution::Update && same_repositories {
        if let Some(lock) = existing {
            let kept: Option<Vec<LockedPackages>> = wanted
                .iter()
                .map(|(layer, arch, req)| reusable(layer, arch, req).cloned())
                .collect();
            if let Some(kept) = kept {
                return Ok((lock.repositories.clone(), kept));
            }
        }
    }
    if mode == Resolution::LockedOnly {
        let layer = wanted
            .iter()
            .find(|(layer, arch, req)| !same_repositories || reusable(layer, arch, req).is_none())
            .map_or((String::new(), String::new()), |(layer, arch, _)| {
                (layer.to_string(), arch.to_string())
            });
        return Err(PackageError::NotLocked { layer: layer.0, architecture: layer.1 });
    }
    let mut repositories = Vec::new();
    // Per architecture: every repository's records for it, and the url each came from.
    let mut records: BTreeMap<&str, (Vec<PackageRecord>, Vec<&str>)> = BTreeMap::new();
    for repo in &serving {
        let served: Vec<String> = arches.iter().filter(|a| serves(repo, a)).cloned().collect();
        let (locked, mut found) = load(repo, &served)?;
        repositories.push(locked);
        for arch in &arches {
            let (list, origin) = records.entry(arch.as_str()).or_default();
            let from = found.remove(arch.as_str()).unwrap_or_default();
            origin.extend(std::iter::repeat_n(repo.url.as_str(), from.len()));
            list.extend(from);
        }
    }
    let none = (Vec::new(), Vec::new());
    let mut layers = Vec::new();
    for (layer, arch, requested) in wanted {
        let (found, origin) = records.get(arch).unwrap_or(&none);
        let chosen =
            kiln_deb::resolve(found, arch, &requested).map_err(|source| PackageError::Resolve {
                layer: layer.to_string(),
                arch: arch.to_string(),
                source: Box::new(source),
            })?;
        let chosen = chosen
            .into_iter()
            .map(|p| {
                let index = found.iter().position(|r| std::ptr::eq(r, p)).unwrap_or(0);
                LockedPackage {
                    name: p.name.clone(),
                    version: p.version.to_string(),
                    architecture: p.architecture.clone(),
                    source: p.source.clone(),
                    source_version: p.source_version.to_string(),
                    repository: origin[index].to_string(),
                    path: p.filename.clone(),
                    size: p.size,
                    sha256: Digest::from_bytes(p.sha256.0),
                }
            })
            .collect();
        layers.push(LockedPackages {
            layer: layer.to_string(),
            architecture: arch.to_string(),
            requested,
            chosen,
        });
    }
    Ok((repositories, layers))
}

/// Verifies one repository's release and indexes and returns its records for each of
/// `arches`.
fn load(
    repo: &RepositorySpec,
    arches: &[String],
) -> Result<(LockedRepository, BTreeMap<String, Vec<PackageRecord>>), PackageError> {
    let key_path = repo.key.abs().to_path_buf();
    // One byte past the limit, so a larger file is refused by parsing without reading it all.
    let mut bytes = Vec::new();
    File::open(&key_path)
        .and_then(|f| f.take(KEY_FILE_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|source| PackageError::KeyFile { path: key_path.clone(), source })?;
    let keyring =
        Keyring::parse(&bytes).map_err(|source| PackageError::Key { path: key_path, source })?;
    let wrap = |source| PackageError::Repository {
        url: repo.url.clone(),
        suite: repo.suite.clone(),
        source: Box::new(source),
    };
    // Keys, signature and Valid-Until are judged at the moment of resolving; the time is
    // a check and never reaches the lock or an image. A build from the lock never comes
    // here: the lock's sha256s vouch for its packages.
    let now = std::time::SystemTime::now();
    let suite = load_suite(
        &mut source(&repo.url, repo.ca.as_ref().map(|c| c.abs()))?,
        &keyring,
        &repo.suite,
        &repo.components,
        arches,
        now,
    )
    .map_err(wrap)?;
    let locked = LockedRepository {
        url: repo.url.clone(),
        suite: repo.suite.clone(),
        release: suite.release_file.to_string(),
        digest: Digest::from_bytes(suite.release_digest.0),
    };
    Ok((locked, suite.packages.into_iter().collect()))
}

/// One package unpacked for a layer: its members and what dpkg's database says of it.
#[derive(Debug)]
pub struct Unpacked {
    pub name: String,
    /// How messages name it: `name version (arch)`, or the local file.
    pub label: String,
    /// Its members, when its contents were read (none when only its file list was).
    pub members: Vec<Member>,
    /// The path of every member.
    pub files: Vec<ImagePath>,
    /// The maintainer scripts it has, none of which is run.
    pub skipped_scripts: Vec<&'static str>,
    pub(crate) control: String,
    md5sums: Option<String>,
    /// `name` or `name:arch` for a `Multi-Arch: same` package, as dpkg names its files.
    info_name: String,
    pub version: String,
    pub architecture: String,
    /// The source package and its version (the package's own when its control names none).
    pub source: String,
    pub source_version: String,
}

impl Unpacked {
    /// What the SBOM says of it.
    pub fn installed(&self, download_location: String, sha256: Digest) -> Installed {
        Installed {
            name: self.name.clone(),
            version: self.version.clone(),
            architecture: self.architecture.clone(),
            source: self.source.clone(),
            source_version: self.source_version.clone(),
            download_location,
            sha256,
            files: self.files.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The media type package files are stored under.
pub const DEB_MEDIA_TYPE: &str = "application/vnd.debian.binary-package";

/// Fetches a locked package, refusing any byte that differs from the lock, and unpacks it
/// (its contents into `spool`, or only its file list without one). With a `store`, the file
/// is taken from it when there (so a second build or another runner never fetches it
/// again), else fetched from its repository (trusting `ca` for https) and put there once
/// checked.
pub fn unpack_locked<'s>(
    package: &LockedPackage,
    ca: Option<&std::path::Path>,
    spool: Option<&mut Spool>,
    store: Option<&mut (dyn crate::build::sink::BlobSink + 's)>,
) -> Result<Unpacked, PackageError> {
    let descriptor = kiln_oci::Descriptor::new(DEB_MEDIA_TYPE, package.sha256, package.size);
    let expected = (package.sha256, package.size);
    let origin = source(&package.repository, ca)?;
    let shown = origin.location(&package.path);
    let scratch =
        tempfile::Builder::new().prefix("kiln-deb-").tempdir().map_err(PackageError::Spool)?;
    let copy = scratch.path().join("package.deb");
    let fetch =
        |e| PackageError::Fetch { name: package.name.clone(), path: shown.clone(), source: e };
    let Some(store) = store else {
        let local = match origin.local(&package.path) {
            Some(path) => path,
            None => {
                origin.copy_to(&package.path, package.size, &copy).map_err(fetch)?;
                copy
            }
        };
        return unpack_checked(&package.name, &package.path, expected, &local, &shown, spool);
    };
    let stored = store
        .copy_blob(&descriptor, &copy)
        .map_err(|source| PackageError::Store { name: package.name.clone(), source })?;
    if stored {
        let shown = copy.display().to_string();
        return unpack_checked(&package.name, &package.path, expected, &copy, &shown, spool);
    }
    origin.copy_to(&package.path, package.size, &copy).map_err(fetch)?;
    let unpacked = unpack_checked(&package.name, &package.path, expected, &copy, &shown, spool)?;
    store
        .put_file(&copy, &descriptor)
        .map_err(|source| PackageError::Store { name: package.name.clone(), source })?;
    Ok(unpacked)
}

/// Unpacks the package file at `path`, which must have the `expected` sha256 and size;
/// errors name it as `name` (`member` in messages about its members) and `shown` (where it
/// was fetched from).
fn unpack_checked(
    name: &str,
    member: &str,
    expected: (Digest, u64),
    path: &std::path::Path,
    shown: &str,
    spool: Option<&mut Spool>,
) -> Result<Unpacked, PackageError> {
    let (sha256, size) = expected;
    let fetch = |source| PackageError::Fetch {
        name: name.to_string(),
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(fetch)?;
    let mut hashing = HashingReader::new(BufReader::new(file).take(size + 1));
    let unpacked = unpack(&mut hashing, name, member, spool);
    // The rest of the file is read too: the digest covers all of it.
    io::copy(&mut hashing, &mut io::sink()).map_err(fetch)?;
    let (found, found_size) = hashing.finish();
    if found != sha256 || found_size != size {
        return Err(PackageError::Digest {
            path: shown.to_string(),
            expected: sha256,
            size,
            found,
            found_size,
        });
    }
    unpacked
}

/// Unpacks the local `.deb` at `path`, refusing it unless it still has the `digest` and
/// `size` it was hashed with.
pub fn unpack_file(
    path: &std::path::Path,
    src: &str,
    digest: Digest,
    size: u64,
    spool: Option<&mut Spool>,
) -> Result<Unpacked, PackageError> {
    unpack_checked(src, src, (digest, size), path, &path.display().to_string(), spool)
}

fn unpack(
    input: impl Read,
    name: &str,
    shown: &str,
    mut spool: Option<&mut Spool>,
) -> Result<Unpacked, PackageError> {
    let mut members = Vec::new();
    let mut files = Vec::new();
    let mut member_error = None;
    let control = read_deb(input, Limits::default(), |m, data| {
        let path = match ImagePath::root().join(m.path.as_str()) {
            Ok(p) => p,
            Err(e) => {
                member_error = Some((m.path.to_string(), e));
                return Ok(());
            }
        };
        files.push(path.clone());
        let kind = match (&m.kind, spool.as_deref_mut()) {
            (MemberKind::File { size }, None) => {
                let found = io::copy(&mut (&mut *data).take(*size), &mut io::sink())?;
                if found != *size {
                    return Err(short(&m.path, found, *size));
                }
                return Ok(());
            }
            (_, None) => return Ok(()),
            (MemberKind::Dir, _) => EntryKind::Dir,
            (MemberKind::File { size }, Some(spool)) => match spool.take(&mut &mut *data, *size)? {
                Spooled::File(file) => EntryKind::File(Content::Host(file)),
                Spooled::Short { found } => return Err(short(&m.path, found, *size)),
            },
            (MemberKind::Symlink { target }, _) => EntryKind::Symlink(target.clone()),
            (MemberKind::HardLink { target }, _) => match ImagePath::root().join(target.as_str()) {
                Ok(t) => EntryKind::HardLink(t),
                Err(e) => {
                    member_error = Some((target.to_string(), e));
                    return Ok(());
                }
            },
        };
        let meta = Meta { mode: m.mode, uid: m.uid, gid: m.gid, xattrs: BTreeMap::new() };
        members.push(Member { path, kind, meta });
        Ok(())
    })
    .map_err(|source| PackageError::Deb {
        name: name.to_string(),
        path: shown.to_string(),
        source,
    })?;
    if let Some((member, source)) = member_error {
        return Err(PackageError::Member { name: name.to_string(), member, source });
    }
    let package = control.fields.get("Package").unwrap_or("").to_string();
    let valid = package.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && package
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !valid {
        return Err(PackageError::Name { name: name.to_string(), found: package });
    }
    let multi_arch_same = control.fields.get("Multi-Arch") == Some("same");
    let info_name = match control.fields.get("Architecture") {
        Some(arch) if multi_arch_same => format!("{package}:{arch}"),
        _ => package.clone(),
    };
    let label = if name == shown {
        shown.to_string()
    } else {
        format!(
            "{package} {} ({})",
            control.fields.get("Version").unwrap_or("?"),
            control.fields.get("Architecture").unwrap_or("?")
        )
    };
    let version = control.fields.get("Version").unwrap_or("").to_string();
    let (source, source_version) = match control.fields.get("Source") {
        None => (package.clone(), version.clone()),
        Some(text) => match text.split_once('(') {
            None => (text.trim().to_string(), version.clone()),
            Some((s, v)) => {
                (s.trim().to_string(), v.trim().trim_end_matches(')').trim().to_string())
            }
        },
    };
    Ok(Unpacked {
        label,
        version,
        architecture: control.fields.get("Architecture").unwrap_or("").to_string(),
        source,
        source_version,
        name: package,
        members,
        files,
        skipped_scripts: control.scripts.clone(),
        control: control.text,
        md5sums: control.md5sums,
        info_name,
    })
}

/// The error for a member whose data ends before its header's size.
fn short(path: &impl std::fmt::Display, found: u64, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{path} ends after {found} of {size} bytes"),
    )
}

/// One file of dpkg's database: where it goes and its bytes.
pub type DatabaseFile = (ImagePath, Arc<[u8]>);

/// dpkg's record of a package as installed: its control fields with `Status` after
/// `Package`.
pub(crate) fn status_paragraph(control: &str) -> String {
    let mut out = String::new();
    for line in control.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("Package:") {
            out.push_str("Status: install ok installed\n");
        }
    }
    out
}

/// The files of dpkg's database for `installed` (and what earlier layers installed,
/// `earlier`, so the layer's `status` lists every package in the image): `status`,
/// `status.d/<name>` (as distroless writes it, for scanners), and `info/<name>.list` and
/// `.md5sums`.
pub fn database(
    installed: &[Unpacked],
    earlier: &mut BTreeMap<String, String>,
) -> Result<Vec<DatabaseFile>, PackageError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for p in installed {
        let status = status_paragraph(&p.control);
        earlier.insert(p.name.clone(), status.clone());
        files.push((format!("var/lib/dpkg/status.d/{}", p.name), status.into_bytes()));
        let mut list = String::from("/.\n");
        for path in &p.files {
            list.push_str(path.as_str());
            list.push('\n');
        }
        files.push((format!("var/lib/dpkg/info/{}.list", p.info_name), list.into_bytes()));
        if let Some(md5sums) = &p.md5sums {
            files.push((
                format!("var/lib/dpkg/info/{}.md5sums", p.info_name),
                md5sums.clone().into_bytes(),
            ));
            files.push((
                format!("var/lib/dpkg/status.d/{}.md5sums", p.name),
                md5sums.clone().into_bytes(),
            ));
        }
    }
    let status: String = earlier.values().map(|s| format!("{s}\n")).collect();
    files.push(("var/lib/dpkg/status".to_string(), status.into_bytes()));
    files
        .into_iter()
        .map(|(path, bytes)| {
            ImagePath::root().join(&path).map(|p| (p, Arc::from(bytes))).map_err(|source| {
                PackageError::Member { name: "dpkg database".into(), member: path, source }
            })
        })
        .collect()
}

/// A fresh spool for package contents.
pub fn spool() -> Result<Spool, PackageError> {
    Spool::new().map_err(PackageError::Spool)
}

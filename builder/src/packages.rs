//! Debian packages in layers: resolving a layer's `packages` against the recipe's signed
//! repositories into the lock, and installing locked packages and local `.deb` files into a
//! layer's tree without running any maintainer script, with the dpkg database that
//! `dpkg-query` and image scanners read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use kiln_deb::repository::{load_suite, Fetch, RepositoryError};
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
    #[error("layer {layer:?}: its packages are not in the lock; run `kiln lock`")]
    NotLocked { layer: String },
    #[error("package {name}: the lock names repository {url}, which the recipe no longer has")]
    UnknownRepository { name: String, url: String },
    #[error("package {name}: cannot read {path}")]
    Fetch { name: String, path: PathBuf, source: io::Error },
    #[error("{path} is {found_size} bytes with sha256 {found}, but the lock says {size} bytes with sha256 {expected}")]
    Digest { path: PathBuf, expected: Digest, size: u64, found: Digest, found_size: u64 },
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
    #[error("spooling package contents")]
    Spool(#[source] io::Error),
}

impl PackageError {
    /// A package file whose bytes are not the ones the lock pins.
    pub fn is_integrity(&self) -> bool {
        matches!(self, PackageError::Digest { .. })
    }
}

/// A repository's folder, read as [`Fetch`] wants.
struct Folder(PathBuf);

impl Fetch for Folder {
    fn get(&mut self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let file = match File::open(self.0.join(path)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(io::Error::other(format!("it is larger than {limit} bytes")));
        }
        Ok(Some(bytes))
    }
}

/// The folder a `file://` repository url names.
fn folder(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}

/// The architecture packages are installed for: the recipe's one platform's.
pub fn architecture(recipe: &Recipe) -> String {
    recipe.platforms.first().map(|p| p.architecture.clone()).unwrap_or_default()
}

/// The repositories and packages the lock gets: taken from `existing` where it holds the
/// same request, else resolved from the repositories (fetching and verifying their
/// indexes).
pub fn plan(
    recipe: &Recipe,
    existing: Option<&Lock>,
    mode: Resolution,
) -> Result<(Vec<LockedRepository>, Vec<LockedPackages>), PackageError> {
    let arch = architecture(recipe);
    let wanted: Vec<(&str, Vec<String>)> = recipe
        .layers
        .iter()
        .filter(|l| !l.packages.is_empty())
        .map(|l| (l.name.as_str(), l.packages.iter().map(|p| p.request.clone()).collect()))
        .collect();
    if wanted.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let serving: Vec<&RepositorySpec> = recipe
        .repositories
        .iter()
        .filter(|r| r.architectures.is_empty() || r.architectures.contains(&arch))
        .collect();
    let same_repositories = existing.is_some_and(|lock| {
        lock.repositories.len() == serving.len()
            && lock
                .repositories
                .iter()
                .zip(&serving)
                .all(|(l, r)| l.url == r.url && l.suite == r.suite)
    });
    let reusable = |layer: &str, requested: &[String]| {
        existing.and_then(|lock| {
            lock.packages
                .iter()
                .find(|p| p.layer == layer && p.architecture == arch && p.requested == requested)
        })
    };
    if mode != Resolution::Update && same_repositories {
        if let Some(lock) = existing {
            let kept: Option<Vec<LockedPackages>> =
                wanted.iter().map(|(layer, req)| reusable(layer, req).cloned()).collect();
            if let Some(kept) = kept {
                return Ok((lock.repositories.clone(), kept));
            }
        }
    }
    if mode == Resolution::LockedOnly {
        let layer = wanted
            .iter()
            .find(|(layer, req)| !same_repositories || reusable(layer, req).is_none())
            .map_or(String::new(), |(layer, _)| layer.to_string());
        return Err(PackageError::NotLocked { layer });
    }
    let mut repositories = Vec::new();
    let mut records: Vec<PackageRecord> = Vec::new();
    let mut origin: Vec<usize> = Vec::new();
    for (i, repo) in serving.iter().enumerate() {
        let (locked, found) = load(repo, &arch)?;
        repositories.push(locked);
        origin.extend(std::iter::repeat_n(i, found.len()));
        records.extend(found);
    }
    let mut layers = Vec::new();
    for (layer, requested) in wanted {
        let chosen = kiln_deb::resolve(&records, &arch, &requested).map_err(|source| {
            PackageError::Resolve {
                layer: layer.to_string(),
                arch: arch.clone(),
                source: Box::new(source),
            }
        })?;
        let chosen = chosen
            .into_iter()
            .map(|p| {
                let index = records.iter().position(|r| std::ptr::eq(r, p)).unwrap_or(0);
                LockedPackage {
                    name: p.name.clone(),
                    version: p.version.to_string(),
                    architecture: p.architecture.clone(),
                    source: p.source.clone(),
                    source_version: p.source_version.to_string(),
                    repository: serving[origin[index]].url.clone(),
                    path: p.filename.clone(),
                    size: p.size,
                    sha256: Digest::from_bytes(p.sha256.0),
                }
            })
            .collect();
        layers.push(LockedPackages {
            layer: layer.to_string(),
            architecture: arch.clone(),
            requested,
            chosen,
        });
    }
    Ok((repositories, layers))
}

/// Verifies one repository's release and indexes and returns its records for `arch`.
fn load(
    repo: &RepositorySpec,
    arch: &str,
) -> Result<(LockedRepository, Vec<PackageRecord>), PackageError> {
    let key_path = repo.key.abs().to_path_buf();
    let bytes = std::fs::read(&key_path)
        .map_err(|source| PackageError::KeyFile { path: key_path.clone(), source })?;
    let keyring =
        Keyring::parse(&bytes).map_err(|source| PackageError::Key { path: key_path, source })?;
    let wrap = |source| PackageError::Repository {
        url: repo.url.clone(),
        suite: repo.suite.clone(),
        source: Box::new(source),
    };
    let mut suite = load_suite(
        &mut Folder(folder(&repo.url)),
        &keyring,
        &repo.suite,
        &repo.components,
        &[arch.to_string()],
    )
    .map_err(wrap)?;
    let locked = LockedRepository {
        url: repo.url.clone(),
        suite: repo.suite.clone(),
        release: suite.release_file.to_string(),
        digest: Digest::from_bytes(suite.release_digest.0),
    };
    Ok((locked, suite.packages.remove(arch).unwrap_or_default()))
}

/// One package unpacked for a layer: its members and what dpkg's database says of it.
#[derive(Debug)]
pub struct Unpacked {
    pub name: String,
    /// How messages name it: `name version (arch)`, or the local file.
    pub label: String,
    pub members: Vec<Member>,
    /// The maintainer scripts it has, none of which is run.
    pub skipped_scripts: Vec<&'static str>,
    control: String,
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
            files: self.members.iter().map(|m| m.path.to_string()).collect(),
        }
    }
}

/// The media type package files are stored under.
pub const DEB_MEDIA_TYPE: &str = "application/vnd.debian.binary-package";

/// Fetches a locked package, refusing any byte that differs from the lock, and unpacks it.
/// With a `store`, the file is taken from it when there (so a second build or another runner
/// never fetches it again), else fetched from its repository and put there once checked.
pub fn unpack_locked<'s>(
    package: &LockedPackage,
    spool: &mut Spool,
    store: Option<&mut (dyn crate::build::sink::BlobSink + 's)>,
) -> Result<Unpacked, PackageError> {
    let descriptor = kiln_oci::Descriptor::new(DEB_MEDIA_TYPE, package.sha256, package.size);
    let Some(store) = store else {
        let source = folder(&package.repository).join(&package.path);
        return unpack_checked(package, &source, &source, spool);
    };
    let scratch =
        tempfile::Builder::new().prefix("kiln-deb-").tempdir().map_err(PackageError::Spool)?;
    let copy = scratch.path().join("package.deb");
    let stored = store
        .copy_blob(&descriptor, &copy)
        .map_err(|source| PackageError::Store { name: package.name.clone(), source })?;
    if stored {
        return unpack_checked(package, &copy, &copy, spool);
    }
    let source = folder(&package.repository).join(&package.path);
    let fetch =
        |e| PackageError::Fetch { name: package.name.clone(), path: source.clone(), source: e };
    std::fs::copy(&source, &copy).map_err(fetch)?;
    let unpacked = unpack_checked(package, &copy, &source, spool)?;
    store
        .put_file(&copy, &descriptor)
        .map_err(|source| PackageError::Store { name: package.name.clone(), source })?;
    Ok(unpacked)
}

/// Unpacks the package file at `path`, which must have the lock's size and sha256; errors
/// name it as `shown` (where it was fetched from).
fn unpack_checked(
    package: &LockedPackage,
    path: &std::path::Path,
    shown: &std::path::Path,
    spool: &mut Spool,
) -> Result<Unpacked, PackageError> {
    let fetch = |source| PackageError::Fetch {
        name: package.name.clone(),
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(fetch)?;
    let mut hashing = HashingReader::new(BufReader::new(file).take(package.size + 1));
    let unpacked = unpack(&mut hashing, &package.name, &package.path, spool);
    // The rest of the file is read too: the digest covers all of it.
    io::copy(&mut hashing, &mut io::sink()).map_err(fetch)?;
    let (found, found_size) = hashing.finish();
    if found != package.sha256 || found_size != package.size {
        return Err(PackageError::Digest {
            path: shown.to_path_buf(),
            expected: package.sha256,
            size: package.size,
            found,
            found_size,
        });
    }
    unpacked
}

/// Unpacks a local `.deb` whose digest the caller checked.
pub fn unpack_file(
    path: &std::path::Path,
    src: &str,
    spool: &mut Spool,
) -> Result<Unpacked, PackageError> {
    let file = File::open(path).map_err(|source| PackageError::Fetch {
        name: src.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    unpack(BufReader::new(file), src, src, spool)
}

fn unpack(
    input: impl Read,
    name: &str,
    shown: &str,
    spool: &mut Spool,
) -> Result<Unpacked, PackageError> {
    let mut members = Vec::new();
    let mut member_error = None;
    let control = read_deb(input, Limits::default(), |m, data| {
        let path = match ImagePath::root().join(m.path.as_str()) {
            Ok(p) => p,
            Err(e) => {
                member_error = Some((m.path.to_string(), e));
                return Ok(());
            }
        };
        let kind = match &m.kind {
            MemberKind::Dir => EntryKind::Dir,
            MemberKind::File { size } => match spool.take(&mut &mut *data, *size)? {
                Spooled::File(file) => EntryKind::File(Content::Host(file)),
                Spooled::Short { found } => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} ends after {found} of {size} bytes", m.path),
                    ))
                }
            },
            MemberKind::Symlink { target } => EntryKind::Symlink(target.clone()),
            MemberKind::HardLink { target } => match ImagePath::root().join(target.as_str()) {
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
        skipped_scripts: control.scripts.clone(),
        control: control.text,
        md5sums: control.md5sums,
        info_name,
    })
}

/// One file of dpkg's database: where it goes and its bytes.
pub type DatabaseFile = (ImagePath, Arc<[u8]>);

/// dpkg's record of a package as installed: its control fields with `Status` after
/// `Package`.
fn status_paragraph(control: &str) -> String {
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
        for m in &p.members {
            list.push_str(m.path.as_str());
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

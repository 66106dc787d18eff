//! Inputs: host files, trees and tarballs hashed, and a layer's [`Tree`] made from them when
//! the layer is to be written.

mod scan;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_oci::{Digest, Sha256};
use kiln_tree::host_file::HostFile;
use kiln_tree::image_path::{ImagePath, ImagePathError};
use kiln_tree::stamp::FileStamp;
use kiln_tree::tree::{Content, Device, Entry, EntryKind, Meta, Tree, TreeError};

use crate::hash_cache::HashCache;
use crate::lock::{LockedPackage, LockedPackages};
use crate::packages::{self, DatabaseFile, PackageError, Unpacked};
use crate::recipe::{LayerSpec, Location, Ownership, TreeSpec};
use crate::tarball::{Member, Spool, TarballError};
use scan::{Found, HostMeta, Listing, What};

pub use crate::lock::{Input, InputKind};

/// Why an input could not be read or is not allowed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is a {kind}: a tree imports device nodes and FIFOs only when it says `devices = true`")]
    Device { path: PathBuf, kind: &'static str },
    #[error("{path} is a socket, which no image can hold")]
    Socket { path: PathBuf },
    #[error("{path}: relative symlink target {target:?} leaves the tree {tree}; make it absolute, or declare it in `symlinks`")]
    SymlinkEscapes { path: PathBuf, target: String, tree: String },
    #[error("{path}: file name is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Tarball(#[from] TarballError),
    #[error("{at}: layer {layer:?}")]
    Tree { at: Location, layer: String, source: TreeError },
    #[error("{path}")]
    Path { path: String, source: ImagePathError },
    #[error(transparent)]
    Package(Box<PackageError>),
}

impl From<PackageError> for InputError {
    fn from(e: PackageError) -> Self {
        InputError::Package(Box::new(e))
    }
}

/// One layer's inputs, hashed, and what its tree is made from.
#[derive(Debug)]
pub struct ResolvedLayer {
    pub name: String,
    pub inputs: Vec<Input>,
    /// sha256 over the layer's declaration with every input named by its digest: all that
    /// its tree is made from, and nothing of where the inputs lie on this machine.
    pub digest: Digest,
    /// The additions that make the tree, in declaration order, each with where the recipe
    /// declares it.
    steps: Vec<(Location, Step)>,
    /// The Debian packages installed, each with the maintainer scripts it has and that were
    /// not run.
    pub skipped_scripts: Vec<(String, Vec<&'static str>)>,
    /// The Debian packages installed, for the SBOM.
    pub installed: Vec<kiln_deb::Installed>,
}

/// One addition to a layer's tree.
#[derive(Debug)]
enum Step {
    Insert(ImagePath, EntryKind, Meta),
    /// A hard link declared in the recipe, taking the metadata of its target.
    HardLink {
        dest: ImagePath,
        target: ImagePath,
    },
    Tree(ScannedTree),
    Tarball {
        dest: ImagePath,
        members: Vec<Member>,
        /// Holds the members' contents for as long as the layer may be written.
        spool: Option<Spool>,
    },
    /// Debian packages and the dpkg database that records them, once unpacked (see
    /// [`ResolvedLayer::install`]).
    Packages {
        sources: Vec<PackageSource>,
        installation: Option<Installation>,
    },
}

/// Where one of a layer's Debian packages comes from.
#[derive(Debug)]
enum PackageSource {
    /// A repository's package, as the lock pins it, and its repository's CA file.
    Locked(LockedPackage, Option<PathBuf>),
    /// A local `.deb` named by the recipe, hashed when the layer was resolved.
    Local { src: String, path: PathBuf, digest: Digest, size: u64 },
}

/// A layer's packages as unpacked: what its tree is made from.
#[derive(Debug)]
struct Installation {
    unpacked: Vec<Unpacked>,
    database: Vec<DatabaseFile>,
    /// Holds the packages' contents; `None` when only their file lists were read.
    spool: Option<Spool>,
}

/// What resolving layers with Debian packages needs: the lock's packages per layer and
/// architecture, the architecture the layers are for, and the CA file of each repository
/// url that has one.
#[derive(Default)]
pub struct Debian {
    pub locked: Vec<LockedPackages>,
    pub architecture: String,
    pub cas: BTreeMap<String, PathBuf>,
}

/// How much of a layer's packages [`ResolvedLayer::install`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Everything: the layer's tree is to be made.
    Contents,
    /// Control files and file lists only, for the SBOM of a layer taken from the cache.
    Listing,
}

impl ResolvedLayer {
    /// Removes the folders holding tarballs' contents; the layer's tree cannot be made after.
    pub fn remove_spools(&mut self) {
        for (_, step) in &mut self.steps {
            match step {
                Step::Tarball { spool, .. } => drop(spool.take()),
                Step::Packages { installation: Some(i), .. } => drop(i.spool.take()),
                _ => {}
            }
        }
    }

    /// Whether the layer installs Debian packages.
    pub fn has_packages(&self) -> bool {
        self.steps.iter().any(|(_, s)| matches!(s, Step::Packages { .. }))
    }

    /// Fetches the layer's Debian packages (from `store` when it has them, else from their
    /// repository, then kept there), checks each against its digest and unpacks it, with the
    /// dpkg database; `status` holds the status paragraph of every package of the layers
    /// below and gets this layer's. Packages are read only here, so a build whose layers
    /// are all in the cache reads none. Installing again is a no-op unless only listings
    /// were read before and `what` asks for contents.
    pub fn install(
        &mut self,
        what: Install,
        mut store: Option<&mut dyn crate::build::sink::BlobSink>,
        status: &mut BTreeMap<String, String>,
    ) -> Result<(), InputError> {
        for (_, step) in &mut self.steps {
            let Step::Packages { sources, installation } = step else { continue };
            let done = installation
                .as_ref()
                .is_some_and(|i| what == Install::Listing || i.spool.is_some());
            if done {
                for u in installation.iter().flat_map(|i| &i.unpacked) {
                    status.insert(u.name.clone(), packages::status_paragraph(&u.control));
                }
                continue;
            }
            let mut spool = match what {
                Install::Contents => Some(packages::spool()?),
                Install::Listing => None,
            };
            let mut unpacked = Vec::new();
            let mut installed = Vec::new();
            for source in sources.iter() {
                let u = match source {
                    PackageSource::Locked(p, ca) => {
                        let u = packages::unpack_locked(
                            p,
                            ca.as_deref(),
                            spool.as_mut(),
                            store.as_deref_mut(),
                        )?;
                        installed
                            .push(u.installed(format!("{}/{}", p.repository, p.path), p.sha256));
                        u
                    }
                    PackageSource::Local { src, path, digest, size } => {
                        let u = packages::unpack_file(path, src, *digest, *size, spool.as_mut())?;
                        installed.push(u.installed("NOASSERTION".to_string(), *digest));
                        u
                    }
                };
                unpacked.push(u);
            }
            self.skipped_scripts = unpacked
                .iter()
                .filter(|u| !u.skipped_scripts.is_empty())
                .map(|u| (u.name.clone(), u.skipped_scripts.clone()))
                .collect();
            self.installed = installed;
            let database = packages::database(&unpacked, status)?;
            *installation = Some(Installation { unpacked, database, spool });
        }
        Ok(())
    }

    /// Builds the layer's tree from what resolving it kept: nothing is read from disk, and
    /// only a layer that is written (or flattened into disks) needs it.
    pub fn tree(&self) -> Result<Tree, InputError> {
        let mut tree = Tree::new();
        for (at, step) in &self.steps {
            let mut b = LayerBuilder { layer: &self.name, at, tree };
            match step {
                Step::Insert(path, kind, meta) => {
                    b.insert(path.clone(), kind.clone(), meta.clone())?
                }
                Step::HardLink { dest, target } => {
                    let meta = b.tree.get(target).map_or(Meta::root(0o644), |e| e.meta.clone());
                    b.insert(dest.clone(), EntryKind::HardLink(target.clone()), meta)?;
                }
                Step::Tree(scanned) => b.add_scanned(scanned)?,
                Step::Tarball { dest, members, .. } => b.add_members(dest, members)?,
                Step::Packages { installation: Some(i), .. } if i.spool.is_some() => {
                    b.add_packages(&i.unpacked, &i.database)?
                }
                Step::Packages { .. } => {
                    return Err(PackageError::NotUnpacked { layer: self.name.clone() }.into())
                }
            }
            tree = b.tree;
        }
        Ok(tree)
    }
}

/// Hashes every input of `spec` and records how its tree is made.
pub fn resolve_layer(spec: &LayerSpec, cache: &mut HashCache) -> Result<ResolvedLayer, InputError> {
    resolve_layer_with(spec, cache, &Debian::default())
}

/// [`resolve_layer`] for a layer that may install Debian packages: locked ones are named by
/// their locked digests and local `.deb` files hashed; none is read before
/// [`ResolvedLayer::install`].
pub fn resolve_layer_with(
    spec: &LayerSpec,
    cache: &mut HashCache,
    debian: &Debian,
) -> Result<ResolvedLayer, InputError> {
    let mut steps = Vec::new();
    let mut inputs = Vec::new();
    let mut declared = Declaration::default();
    for d in &spec.dirs {
        declared.item(b"dir", &d.dest, Some(&d.owner), &[]);
        let step = Step::Insert(d.dest.clone(), EntryKind::Dir, meta(&d.owner, 0o755));
        steps.push((d.at.clone(), step));
    }
    for t in &spec.trees {
        let (digest, scanned) = scan_tree(t, cache)?;
        let ids = [t.uid.to_le_bytes(), t.gid.to_le_bytes()];
        // Only a tree that keeps host metadata or devices says so, so other declarations hash
        // as before.
        let host: &[&[u8]] = if t.host_metadata { &[b"host-metadata"] } else { &[] };
        let devices: &[&[u8]] = if t.devices { &[b"devices"] } else { &[] };
        let fields: Vec<&[u8]> =
            ids.iter().map(|i| &i[..]).chain(host.iter().chain(devices).copied()).collect();
        declared.item(b"tree", &t.dest, None, &fields);
        declared.digest(&digest);
        inputs.push(Input {
            kind: InputKind::Tree,
            src: t.src.rel().to_string(),
            digest,
            executable: false,
            host_metadata: t.host_metadata,
            devices: t.devices,
            platform: t.platform.as_ref().map(ToString::to_string),
        });
        steps.push((t.at.clone(), Step::Tree(scanned)));
    }
    for t in &spec.tarballs {
        let (content, _) = hash_file(t.src.abs(), cache)?;
        let tarball = t.src.rel().to_string();
        let devices: &[&[u8]] = if t.devices { &[b"devices"] } else { &[] };
        declared.item(b"tarball", &t.dest, None, devices);
        declared.digest(&content.digest());
        inputs.push(Input {
            kind: InputKind::Tarball,
            src: tarball.clone(),
            digest: content.digest(),
            executable: false,
            host_metadata: false,
            devices: t.devices,
            platform: t.platform.as_ref().map(ToString::to_string),
        });
        let reader = crate::tarball::open(t.src.abs())
            .map_err(|source| TarballError::Read { tarball: tarball.clone(), source })?;
        let (members, spool) = crate::tarball::read_members(reader, &tarball, t.devices)?;
        let step = Step::Tarball { dest: t.dest.clone(), members, spool: Some(spool) };
        steps.push((t.at.clone(), step));
    }
    for f in &spec.files {
        let (content, exec) = hash_file(f.src.abs(), cache)?;
        declared.item(b"file", &f.dest, Some(&f.owner), &[&[u8::from(exec)]]);
        declared.digest(&content.digest());
        inputs.push(Input {
            kind: InputKind::File,
            src: f.src.rel().to_string(),
            digest: content.digest(),
            executable: exec,
            host_metadata: false,
            devices: false,
            platform: f.platform.as_ref().map(ToString::to_string),
        });
        let meta = meta(&f.owner, normal_mode(exec));
        steps.push((f.at.clone(), Step::Insert(f.dest.clone(), EntryKind::File(content), meta)));
    }
    for i in &spec.inline {
        declared.item(b"inline", &i.dest, Some(&i.owner), &[i.content.as_bytes()]);
        let content = Content::Bytes(Arc::from(i.content.as_bytes()));
        let step = Step::Insert(i.dest.clone(), EntryKind::File(content), meta(&i.owner, 0o644));
        steps.push((i.at.clone(), step));
    }
    for l in &spec.symlinks {
        declared.item(b"symlink", &l.dest, Some(&l.owner), &[l.target.as_bytes()]);
        let kind = EntryKind::Symlink(l.target.clone());
        steps.push((l.at.clone(), Step::Insert(l.dest.clone(), kind, meta(&l.owner, 0o777))));
    }
    for h in &spec.hardlinks {
        declared.item(b"hardlink", &h.dest, None, &[h.target.as_str().as_bytes()]);
        let step = Step::HardLink { dest: h.dest.clone(), target: h.target.clone() };
        steps.push((h.at.clone(), step));
    }
    if !spec.packages.is_empty() || !spec.debs.is_empty() {
        let mut sources = Vec::new();
        if !spec.packages.is_empty() {
            let locked = debian
                .locked
                .iter()
                .find(|l| l.layer == spec.name && l.architecture == debian.architecture)
                .ok_or_else(|| PackageError::NotLocked {
                    layer: spec.name.clone(),
                    architecture: debian.architecture.clone(),
                })?;
            for p in &locked.chosen {
                let fields = [p.name.as_bytes(), p.version.as_bytes(), p.architecture.as_bytes()];
                declared.item(b"package", &ImagePath::root(), None, &fields);
                declared.digest(&p.sha256);
                sources
                    .push(PackageSource::Locked(p.clone(), debian.cas.get(&p.repository).cloned()));
            }
        }
        for d in &spec.debs {
            let (content, _) = hash_file(d.src.abs(), cache)?;
            declared.item(b"deb", &ImagePath::root(), None, &[]);
            declared.digest(&content.digest());
            let src = d.src.rel().to_string();
            inputs.push(Input {
                kind: InputKind::Deb,
                src: src.clone(),
                digest: content.digest(),
                executable: false,
                host_metadata: false,
                devices: false,
                platform: None,
            });
            sources.push(PackageSource::Local {
                src,
                path: d.src.abs().to_path_buf(),
                digest: content.digest(),
                size: content.size(),
            });
        }
        let at = spec
            .packages
            .first()
            .map(|p| p.at.clone())
            .or_else(|| spec.debs.first().map(|d| d.at.clone()))
            .unwrap_or_else(|| Location::at(Path::new(""), "", 0));
        steps.push((at, Step::Packages { sources, installation: None }));
    }
    Ok(ResolvedLayer {
        name: spec.name.clone(),
        inputs,
        digest: declared.finish(),
        steps,
        skipped_scripts: Vec::new(),
        installed: Vec::new(),
    })
}

/// The bytes [`ResolvedLayer::digest`] hashes: each declaration's kind, destination,
/// ownership and other fields, length-prefixed so that no two declarations read alike, and
/// each input's digest in place of its path.
#[derive(Default)]
struct Declaration(Vec<u8>);

impl Declaration {
    fn field(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn item(&mut self, kind: &[u8], dest: &ImagePath, owner: Option<&Ownership>, rest: &[&[u8]]) {
        self.field(kind);
        self.field(dest.as_str().as_bytes());
        match owner {
            Some(o) => {
                let mode = o.mode.map_or([0; 5], |m| {
                    let [a, b, c, d] = m.to_le_bytes();
                    [1, a, b, c, d]
                });
                self.field(&mode);
                self.field(&o.uid.to_le_bytes());
                self.field(&o.gid.to_le_bytes());
            }
            None => self.field(b""),
        }
        for part in rest {
            self.field(part);
        }
    }

    fn digest(&mut self, digest: &Digest) {
        self.field(digest.as_bytes());
    }

    fn finish(self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"kiln layer declaration 1\n");
        h.update(&self.0);
        h.finish()
    }
}

fn meta(owner: &Ownership, default_mode: u32) -> Meta {
    Meta {
        mode: owner.mode.unwrap_or(default_mode),
        uid: owner.uid,
        gid: owner.gid,
        xattrs: BTreeMap::new(),
    }
}

/// 0755 for anything executable, else 0644: host permissions beyond that never leak in.
fn normal_mode(executable: bool) -> u32 {
    if executable {
        0o755
    } else {
        0o644
    }
}

/// Bytes read from an input file at a time.
const READ_BUF: usize = 256 * 1024;

/// A host file's digest and the number of bytes it had.
#[derive(Debug)]
struct Hashed {
    digest: Digest,
    size: u64,
    /// The file's stamp if it was read and hashed just now, had exactly the stamped size and
    /// was settled: worth remembering, and trusted unread for the rest of this build.
    hashed_as: Option<FileStamp>,
}

impl Hashed {
    /// The file's content as an output will read it back.
    fn host_file(&self, path: PathBuf) -> HostFile {
        HostFile { path, size: self.size, digest: self.digest, hashed_as: self.hashed_as }
    }
}

/// The digest of the file at `path()` stamped `stamp`: remembered by `cache`, else read and
/// hashed with `buf` (at least [`READ_BUF`] bytes, reused across files). The path is only
/// made when the file is read.
fn hash_host(
    path: impl FnOnce() -> PathBuf,
    stamp: &FileStamp,
    cache: &HashCache,
    buf: &mut [u8],
) -> std::io::Result<Hashed> {
    if let Some(digest) = cache.get(stamp) {
        return Ok(Hashed { digest, size: stamp.size(), hashed_as: None });
    }
    // At most one byte past the stamped size: enough to see that the file grew, and no
    // endless read should a device have been put in its place since the scan.
    let mut file = kiln_tree::host_file::open_input(&path())?.take(stamp.size().saturating_add(1));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let whole = size == stamp.size() && cache.settled(stamp);
    Ok(Hashed { digest: hasher.finish(), size, hashed_as: whole.then_some(*stamp) })
}

/// Hashes a single host file (or takes its digest from `cache`); returns its content
/// reference and whether any execute bit is set.
fn hash_file(path: &Path, cache: &mut HashCache) -> Result<(Content, bool), InputError> {
    let io = |source| InputError::Io { path: path.to_path_buf(), source };
    let md = fs::metadata(path).map_err(io)?;
    let exec = md.permissions().mode() & 0o111 != 0;
    let stamp = FileStamp::of(&md);
    let hashed =
        hash_host(|| path.to_path_buf(), &stamp, cache, &mut vec![0; READ_BUF]).map_err(io)?;
    if let Some(stamp) = hashed.hashed_as {
        cache.put(stamp, hashed.digest);
    }
    Ok((Content::Host(hashed.host_file(path.to_path_buf())), exec))
}

/// A host tree as the scan found it, every entry checked: what
/// [`LayerBuilder::add_scanned`] adds to a tree.
#[derive(Debug)]
struct ScannedTree {
    dest: ImagePath,
    uid: u32,
    gid: u32,
    /// The tree folder's own mode and owner, when the tree keeps the host's.
    root: Option<HostMeta>,
    /// Each directory's entries by listing id (0 is the tree's root).
    dirs: HashMap<usize, Scanned>,
}

/// One directory of a [`ScannedTree`], entries sorted bytewise by name.
#[derive(Debug)]
struct Scanned {
    /// The directory's path on the host.
    dir: PathBuf,
    /// Every entry's name, back to back.
    names: Vec<u8>,
    /// Each entry, with its host mode and owner when the tree keeps them.
    entries: Vec<(Range<usize>, Kept, Option<HostMeta>)>,
}

/// A checked directory entry.
#[derive(Debug)]
enum Kept {
    /// A directory, whose entries are under this listing id.
    Dir(usize),
    Symlink(String),
    File {
        exec: bool,
        hashed: Hashed,
    },
    /// A device node or FIFO, from a tree that allows them.
    Device(Device),
    /// A further name of a file met earlier in the walk, whose image path is `first`.
    HardLink {
        exec: bool,
        first: ImagePath,
    },
}

/// Lists and hashes the host tree `src` for a layer that puts it at `dest`: returns the
/// tree's digest (its listing, hashed as [`ListingHasher`] says) and the checked entries.
/// Worker threads list and hash (see [`scan`]); the listings are taken here in sorted
/// depth-first order, so neither directory order on disk nor thread timing matters.
fn scan_tree(spec: &TreeSpec, cache: &mut HashCache) -> Result<(Digest, ScannedTree), InputError> {
    let TreeSpec { src, dest, uid, gid, host_metadata, devices, .. } = spec;
    let root = if *host_metadata {
        let md = fs::symlink_metadata(src.abs())
            .map_err(|source| InputError::Io { path: src.abs().to_path_buf(), source })?;
        Some(HostMeta { mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid() })
    } else {
        None
    };
    let ((digest, dirs), learned) = scan::walk(src.abs(), cache, *host_metadata, |walker| {
        let mut listing = ListingHasher::default();
        // A tree that keeps host metadata hashes its mode and owner beside each entry's
        // path, after a first line no normalised listing can have.
        let meta_text = |host: Option<HostMeta>, normal: &str| match host {
            Some(h) => format!("{:o} {}:{}", h.mode, h.uid, h.gid),
            None => normal.to_string(),
        };
        if let Some(root) = root {
            listing.line(&[b"host metadata\n. ", meta_text(Some(root), "").as_bytes()]);
        }
        let mut dirs = HashMap::new();
        let mut links: HashMap<(u64, u64), ImagePath> = HashMap::new();
        // Directories to take, with their paths relative to the tree and in the image.
        let mut stack: Vec<(usize, String, ImagePath)> = vec![(0, String::new(), dest.clone())];
        // The entry's path relative to the tree, rebuilt in place for each entry.
        let mut rel = String::new();
        while let Some((id, rel_dir, image_dir)) = stack.pop() {
            let mut subdirs = Vec::new();
            let Listing { dir, names, entries } = walker.take(id)?;
            let mut kept = Vec::with_capacity(entries.len());
            for Found { name: range, what, host: meta } in entries {
                let name = Listing::name(&names, &range);
                let host = || dir.join(name);
                let name = name.to_str().ok_or_else(|| InputError::NotUtf8 { path: host() })?;
                rel.clear();
                if !rel_dir.is_empty() {
                    rel.push_str(&rel_dir);
                    rel.push('/');
                }
                rel.push_str(name);
                let image = |image_dir: &ImagePath| {
                    image_dir
                        .child(name)
                        .map_err(|source| InputError::Path { path: rel.clone(), source })
                };
                let entry = match what {
                    What::Dir(sub) => {
                        listing.line(&[
                            b"d ",
                            meta_text(meta, "755").as_bytes(),
                            b" ",
                            rel.as_bytes(),
                        ]);
                        subdirs.push((sub, rel.clone(), image(&image_dir)?));
                        Kept::Dir(sub)
                    }
                    What::Symlink(target) => {
                        let target = target
                            .to_str()
                            .ok_or_else(|| InputError::NotUtf8 { path: host() })?
                            .to_string();
                        let parent = ImagePath::parse(&rel)
                            .ok()
                            .and_then(|p| p.parent())
                            .unwrap_or_else(ImagePath::root);
                        // Links are never followed, so an absolute target is only the link's
                        // content, resolved in the image's root (a distribution root has
                        // dozens). A relative one must stay inside the tree.
                        if !target.starts_with('/') && parent.join(&target).is_err() {
                            return Err(InputError::SymlinkEscapes {
                                path: host(),
                                target,
                                tree: src.rel().to_string(),
                            });
                        }
                        let mode = meta_text(meta.map(|m| HostMeta { mode: 0o777, ..m }), "777");
                        listing.line(&[
                            b"l ",
                            mode.as_bytes(),
                            b" ",
                            rel.as_bytes(),
                            b"\0",
                            target.as_bytes(),
                        ]);
                        Kept::Symlink(target)
                    }
                    What::File { exec, nlink, inode, hashed } => {
                        let mode_text = meta_text(meta, if exec { "755" } else { "644" });
                        let first = if nlink > 1 { links.get(&inode) } else { None };
                        if let Some(first) = first {
                            let first = first.clone();
                            listing.line(&[
                                b"h 0 ",
                                rel.as_bytes(),
                                b"\0",
                                first.as_str().as_bytes(),
                            ]);
                            Kept::HardLink { exec, first }
                        } else {
                            if nlink > 1 {
                                links.insert(inode, image(&image_dir)?);
                            }
                            let hashed =
                                hashed.map_err(|source| InputError::Io { path: host(), source })?;
                            listing.file_line(mode_text.as_bytes(), &rel, &hashed.digest);
                            Kept::File { exec, hashed }
                        }
                    }
                    What::Device(device) if *devices => {
                        let mode = meta_text(meta, "644");
                        let what = device.describe();
                        listing.line(&[
                            b"n ",
                            mode.as_bytes(),
                            b" ",
                            rel.as_bytes(),
                            b"\0",
                            what.as_bytes(),
                        ]);
                        Kept::Device(device)
                    }
                    What::Device(device) => {
                        let kind = if device == Device::Fifo { "FIFO" } else { "device node" };
                        return Err(InputError::Device { path: host(), kind });
                    }
                    What::Socket => return Err(InputError::Socket { path: host() }),
                    What::Failed(source) => return Err(InputError::Io { path: host(), source }),
                };
                kept.push((range, entry, meta));
            }
            // Reverse so the stack pops subdirectories in sorted order.
            stack.extend(subdirs.into_iter().rev());
            dirs.insert(id, Scanned { dir, names, entries: kept });
        }
        Ok((listing.finish(), dirs))
    })?;
    for (stamp, digest) in learned {
        cache.put(stamp, digest);
    }
    Ok((digest, ScannedTree { dest: dest.clone(), uid: *uid, gid: *gid, root, dirs }))
}

/// Makes a layer's tree, step by step.
struct LayerBuilder<'a> {
    layer: &'a str,
    /// Where the recipe declares the step being added.
    at: &'a Location,
    tree: Tree,
}

impl LayerBuilder<'_> {
    fn insert(&mut self, path: ImagePath, kind: EntryKind, meta: Meta) -> Result<(), InputError> {
        self.tree.insert(path, Entry { kind, meta }).map_err(|source| InputError::Tree {
            at: self.at.clone(),
            layer: self.layer.to_string(),
            source,
        })
    }

    /// Directories found in trees and tarballs yield to one declared in the recipe.
    fn insert_found_dir(&mut self, path: ImagePath, meta: Meta) -> Result<(), InputError> {
        if path.is_root()
            || matches!(self.tree.get(&path), Some(Entry { kind: EntryKind::Dir, .. }))
        {
            return Ok(());
        }
        self.insert(path, EntryKind::Dir, meta)
    }

    /// Adds a scanned host tree, in the order it was walked.
    fn add_scanned(&mut self, scanned: &ScannedTree) -> Result<(), InputError> {
        let ScannedTree { dest, uid, gid, root, dirs } = scanned;
        // The host's mode and owner where the tree keeps them, else `mode` and the tree's ids.
        let owner = |host: &Option<HostMeta>, mode| match host {
            Some(h) => Meta { mode: h.mode, uid: h.uid, gid: h.gid, xattrs: BTreeMap::new() },
            None => Meta { mode, uid: *uid, gid: *gid, xattrs: BTreeMap::new() },
        };
        self.insert_found_dir(dest.clone(), owner(root, 0o755))?;
        let mut stack = vec![(0, dest.clone())];
        while let Some((id, image_dir)) = stack.pop() {
            let Some(Scanned { dir, names, entries }) = dirs.get(&id) else { continue };
            let mut subdirs = Vec::new();
            for (range, kept, kept_meta) in entries {
                let name = Listing::name(names, range);
                let host = || dir.join(name);
                let name = name.to_str().ok_or_else(|| InputError::NotUtf8 { path: host() })?;
                let image = image_dir.child(name).map_err(|source| InputError::Path {
                    path: format!("{image_dir}/{name}"),
                    source,
                })?;
                match kept {
                    Kept::Dir(sub) => {
                        self.insert_found_dir(image.clone(), owner(kept_meta, 0o755))?;
                        subdirs.push((*sub, image));
                    }
                    Kept::Symlink(target) => {
                        let meta = owner(&kept_meta.map(|h| HostMeta { mode: 0o777, ..h }), 0o777);
                        self.insert(image, EntryKind::Symlink(target.clone()), meta)?
                    }
                    Kept::File { exec, hashed } => {
                        let content = Content::Host(hashed.host_file(host()));
                        let meta = owner(kept_meta, normal_mode(*exec));
                        self.insert(image, EntryKind::File(content), meta)?;
                    }
                    Kept::HardLink { exec, first } => {
                        let link = EntryKind::HardLink(first.clone());
                        self.insert(image, link, owner(kept_meta, normal_mode(*exec)))?
                    }
                    Kept::Device(device) => {
                        let meta = owner(kept_meta, 0o644);
                        self.insert(image, EntryKind::Device(*device), meta)?
                    }
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }

    /// Adds packages' members, then the dpkg database. A path two packages ship must be the
    /// same directory, or the same link or file with the same metadata; anything else is an
    /// error naming both packages.
    fn add_packages(
        &mut self,
        unpacked: &[Unpacked],
        database: &[DatabaseFile],
    ) -> Result<(), InputError> {
        let mut owner: HashMap<ImagePath, &str> = HashMap::new();
        for p in unpacked {
            for m in &p.members {
                if let Some(first) = owner.get(&m.path) {
                    let same = self.tree.get(&m.path).is_some_and(|e| {
                        e.meta == m.meta
                            && match (&e.kind, &m.kind) {
                                (EntryKind::File(a), EntryKind::File(b)) => {
                                    a.digest() == b.digest()
                                }
                                (a, b) => a == b,
                            }
                    });
                    if same || matches!(m.kind, EntryKind::Dir) {
                        continue;
                    }
                    return Err(PackageError::Clash {
                        a: first.to_string(),
                        b: p.label.clone(),
                        path: m.path.to_string(),
                    }
                    .into());
                }
                owner.insert(m.path.clone(), &p.label);
                match &m.kind {
                    EntryKind::Dir => self.insert_found_dir(m.path.clone(), m.meta.clone())?,
                    kind => self.insert(m.path.clone(), kind.clone(), m.meta.clone())?,
                }
            }
        }
        for (path, bytes) in database {
            let content = EntryKind::File(Content::Bytes(bytes.clone()));
            self.insert(path.clone(), content, Meta::root(0o644))?;
        }
        Ok(())
    }

    /// Adds a tarball's members under `dest`.
    fn add_members(&mut self, dest: &ImagePath, members: &[Member]) -> Result<(), InputError> {
        for m in members {
            let path = dest
                .join(m.path.as_str())
                .map_err(|source| InputError::Path { path: m.path.to_string(), source })?;
            match &m.kind {
                EntryKind::Dir => self.insert_found_dir(path, m.meta.clone())?,
                EntryKind::HardLink(target) => {
                    let target = dest
                        .join(target.as_str())
                        .map_err(|source| InputError::Path { path: target.to_string(), source })?;
                    self.insert(path, EntryKind::HardLink(target), m.meta.clone())?
                }
                kind => self.insert(path, kind.clone(), m.meta.clone())?,
            }
        }
        Ok(())
    }
}

/// The digest of a tree input: sha256 over one line per entry in walk order
/// (`d 755 rel`, `l 777 rel\0target`, `f 644 rel\0sha256:…`, `h 0 rel\0first`), the format
/// lock files have always recorded. Lines are gathered in a buffer and hashed in batches.
#[derive(Default)]
struct ListingHasher {
    hasher: Sha256,
    buf: Vec<u8>,
}

impl ListingHasher {
    /// Batches of about this many bytes go to the hasher at once.
    const BATCH: usize = 64 * 1024;

    /// Adds one line made of `parts` and a newline.
    fn line(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.end_line();
    }

    /// Adds `f MODE rel\0sha256:HEX`, writing the hex without a temporary string.
    fn file_line(&mut self, mode: &[u8], rel: &str, digest: &Digest) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for part in [b"f ", mode, b" ", rel.as_bytes(), b"\0sha256:"] {
            self.buf.extend_from_slice(part);
        }
        for b in digest.as_bytes() {
            self.buf.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        self.end_line();
    }

    fn end_line(&mut self) {
        self.buf.push(b'\n');
        if self.buf.len() >= Self::BATCH {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
    }

    fn finish(mut self) -> Digest {
        self.hasher.update(&self.buf);
        self.hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stamp of a regular file of `len` bytes, standing for what the scan saw.
    fn stamp_of_file(dir: &Path, len: usize) -> FileStamp {
        let path = dir.join("seen");
        fs::write(&path, vec![b'x'; len]).unwrap();
        FileStamp::of(&fs::metadata(&path).unwrap())
    }

    #[test]
    fn a_fifo_or_device_put_where_a_file_was_seen_is_read_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = stamp_of_file(dir.path(), 5);
        let cache = HashCache::disabled();
        let mut buf = vec![0; READ_BUF];
        // Opening a FIFO with no writer would block; reading /dev/zero would never end.
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let hashed = hash_host(|| fifo.clone(), &stamp, &cache, &mut buf).unwrap();
        assert_eq!((hashed.size, hashed.hashed_as), (0, None));
        let zero = PathBuf::from("/dev/zero");
        let hashed = hash_host(|| zero.clone(), &stamp, &cache, &mut buf).unwrap();
        assert_eq!((hashed.size, hashed.hashed_as), (6, None));
    }
}

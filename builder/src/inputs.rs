//! Inputs: host files, trees and tarballs hashed and turned into a layer's [`Tree`].

mod scan;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_oci::{Digest, Sha256};
use serde::{Deserialize, Serialize};

use crate::hash_cache::{FileStamp, HashCache};
use crate::host_file::HostFile;
use crate::image_path::{ImagePath, ImagePathError};
use crate::recipe::{LayerSpec, Ownership};
use crate::source_path::SourcePath;
use crate::tree::{Content, Entry, EntryKind, Meta, Tree, TreeError};
use scan::{Found, Listing, What};

/// What kind of input a lock entry pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    File,
    Tree,
    Tarball,
}

/// One pinned input: a path relative to the recipe and the digest of what it holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Input {
    pub kind: InputKind,
    pub src: String,
    pub digest: Digest,
    /// For a single file: whether it is executable on the host, the one host permission that
    /// can reach the image (0755 rather than 0644 where the recipe sets no mode). Trees pin
    /// their modes in their digest. Written only when true, so other entries read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
}

/// Why an input could not be read or is not allowed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {kind} are not allowed in a tree; declare devices in the recipe instead")]
    SpecialFile { path: PathBuf, kind: &'static str },
    #[error("{path}: symlink target {target:?} leaves the tree {tree}; only relative links inside a tree are kept (use `symlinks` in the recipe for others)")]
    SymlinkEscapes { path: PathBuf, target: String, tree: String },
    #[error("{path}: file name is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("tarball {tarball}: member {member:?} {problem}")]
    TarMember { tarball: String, member: String, problem: String },
    #[error("tarball {tarball}: {source}")]
    Tarball { tarball: String, source: std::io::Error },
    #[error("layer {layer:?}: {source}")]
    Tree { layer: String, source: TreeError },
    #[error("{path}: {source}")]
    Path { path: String, source: ImagePathError },
}

/// The tree of one layer and the inputs it read.
#[derive(Debug)]
pub struct ResolvedLayer {
    pub name: String,
    pub tree: Tree,
    pub inputs: Vec<Input>,
}

/// Hashes every input of `spec` and builds its tree.
pub fn resolve_layer(spec: &LayerSpec, cache: &mut HashCache) -> Result<ResolvedLayer, InputError> {
    let mut b = LayerBuilder { layer: spec.name.clone(), tree: Tree::new(), inputs: Vec::new() };
    for d in &spec.dirs {
        b.insert(d.dest.clone(), EntryKind::Dir, meta(&d.owner, 0o755))?;
    }
    for t in &spec.trees {
        b.add_tree(&t.src, &t.dest, t.uid, t.gid, cache)?;
    }
    for t in &spec.tarballs {
        b.add_tarball(&t.src, &t.dest, cache)?;
    }
    for f in &spec.files {
        let (content, exec) = hash_file(f.src.abs(), cache)?;
        b.inputs.push(Input {
            kind: InputKind::File,
            src: f.src.rel().to_string(),
            digest: content.digest(),
            executable: exec,
        });
        b.insert(f.dest.clone(), EntryKind::File(content), meta(&f.owner, normal_mode(exec)))?;
    }
    for i in &spec.inline {
        let content = Content::Bytes(Arc::from(i.content.as_bytes()));
        b.insert(i.dest.clone(), EntryKind::File(content), meta(&i.owner, 0o644))?;
    }
    for s in &spec.symlinks {
        b.insert(s.dest.clone(), EntryKind::Symlink(s.target.clone()), meta(&s.owner, 0o777))?;
    }
    for h in &spec.hardlinks {
        let target_meta = b.tree.get(&h.target).map_or(Meta::root(0o644), |e| e.meta.clone());
        b.insert(h.dest.clone(), EntryKind::HardLink(h.target.clone()), target_meta)?;
    }
    Ok(ResolvedLayer { name: b.layer, tree: b.tree, inputs: b.inputs })
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
    fn host_file(self, path: PathBuf) -> HostFile {
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
    let mut file = crate::host_file::open_input(&path())?.take(stamp.size().saturating_add(1));
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

struct LayerBuilder {
    layer: String,
    tree: Tree,
    inputs: Vec<Input>,
}

impl LayerBuilder {
    fn insert(&mut self, path: ImagePath, kind: EntryKind, meta: Meta) -> Result<(), InputError> {
        self.tree
            .insert(path, Entry { kind, meta })
            .map_err(|source| InputError::Tree { layer: self.layer.clone(), source })
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

    /// Adds the host tree `src` under `dest`. Worker threads list and hash it (see
    /// [`scan`]); entries are added here in sorted depth-first order, so neither directory
    /// order on disk nor thread timing matters.
    fn add_tree(
        &mut self,
        src: &SourcePath,
        dest: &ImagePath,
        uid: u32,
        gid: u32,
        cache: &mut HashCache,
    ) -> Result<(), InputError> {
        let owner = |mode| Meta { mode, uid, gid, xattrs: BTreeMap::new() };
        self.insert_found_dir(dest.clone(), owner(0o755))?;
        let (digest, learned) = scan::walk(src.abs(), cache, |walker| {
            let mut listing = ListingHasher::default();
            let mut links: HashMap<(u64, u64), ImagePath> = HashMap::new();
            // Directories to take, with their paths relative to the tree and in the image.
            let mut stack: Vec<(usize, String, ImagePath)> = vec![(0, String::new(), dest.clone())];
            // The entry's path relative to the tree, rebuilt in place for each entry.
            let mut rel = String::new();
            while let Some((id, rel_dir, image_dir)) = stack.pop() {
                let mut subdirs = Vec::new();
                let Listing { dir, names, entries } = walker.take(id)?;
                for Found { name, what } in entries {
                    let name = Listing::name(&names, &name);
                    let host = || dir.join(name);
                    let name = name.to_str().ok_or_else(|| InputError::NotUtf8 { path: host() })?;
                    rel.clear();
                    if !rel_dir.is_empty() {
                        rel.push_str(&rel_dir);
                        rel.push('/');
                    }
                    rel.push_str(name);
                    let image = image_dir
                        .child(name)
                        .map_err(|source| InputError::Path { path: rel.clone(), source })?;
                    match what {
                        What::Dir(sub) => {
                            listing.line(&[b"d 755 ", rel.as_bytes()]);
                            self.insert_found_dir(image.clone(), owner(0o755))?;
                            subdirs.push((sub, rel.clone(), image));
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
                            if target.starts_with('/') || parent.join(&target).is_err() {
                                return Err(InputError::SymlinkEscapes {
                                    path: host(),
                                    target,
                                    tree: src.rel().to_string(),
                                });
                            }
                            listing.line(&[b"l 777 ", rel.as_bytes(), b"\0", target.as_bytes()]);
                            self.insert(image, EntryKind::Symlink(target), owner(0o777))?;
                        }
                        What::File { exec, nlink, inode, hashed } => {
                            let mode = normal_mode(exec);
                            let mode_text: &[u8] = if exec { b"755" } else { b"644" };
                            if nlink > 1 {
                                if let Some(first) = links.get(&inode) {
                                    listing.line(&[
                                        b"h 0 ",
                                        rel.as_bytes(),
                                        b"\0",
                                        first.as_str().as_bytes(),
                                    ]);
                                    let link = EntryKind::HardLink(first.clone());
                                    self.insert(image, link, owner(mode))?;
                                    continue;
                                }
                                links.insert(inode, image.clone());
                            }
                            let hashed =
                                hashed.map_err(|source| InputError::Io { path: host(), source })?;
                            listing.file_line(mode_text, &rel, &hashed.digest);
                            let content = Content::Host(hashed.host_file(host()));
                            self.insert(image, EntryKind::File(content), owner(mode))?;
                        }
                        What::Special(kind) => {
                            return Err(InputError::SpecialFile { path: host(), kind })
                        }
                        What::Failed(source) => {
                            return Err(InputError::Io { path: host(), source })
                        }
                    }
                }
                // Reverse so the stack pops subdirectories in sorted order.
                stack.extend(subdirs.into_iter().rev());
            }
            Ok(listing.finish())
        })?;
        for (stamp, digest) in learned {
            cache.put(stamp, digest);
        }
        self.inputs.push(Input {
            kind: InputKind::Tree,
            src: src.rel().to_string(),
            digest,
            executable: false,
        });
        Ok(())
    }

    fn add_tarball(
        &mut self,
        src: &SourcePath,
        dest: &ImagePath,
        cache: &mut HashCache,
    ) -> Result<(), InputError> {
        let tarball = src.rel().to_string();
        let (content, _) = hash_file(src.abs(), cache)?;
        self.inputs.push(Input {
            kind: InputKind::Tarball,
            src: tarball.clone(),
            digest: content.digest(),
            executable: false,
        });
        let reader = crate::tarball::open(src.abs())
            .map_err(|source| InputError::Tarball { tarball: tarball.clone(), source })?;
        let members = crate::tarball::read_members(reader, &tarball)?;
        for m in members {
            let path = dest
                .join(m.path.as_str())
                .map_err(|source| InputError::Path { path: m.path.to_string(), source })?;
            match m.kind {
                EntryKind::Dir => self.insert_found_dir(path, m.meta)?,
                EntryKind::HardLink(target) => {
                    let target = dest
                        .join(target.as_str())
                        .map_err(|source| InputError::Path { path: target.to_string(), source })?;
                    self.insert(path, EntryKind::HardLink(target), m.meta)?
                }
                kind => self.insert(path, kind, m.meta)?,
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

//! Inputs: host files, trees and tarballs hashed and turned into a layer's [`Tree`].

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_oci::{Digest, Sha256};
use serde::{Deserialize, Serialize};

use crate::hash_cache::HashCache;
use crate::image_path::{ImagePath, ImagePathError};
use crate::recipe::{LayerSpec, Ownership};
use crate::source_path::SourcePath;
use crate::tree::{Content, Entry, EntryKind, Meta, Tree, TreeError};

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
    let mut b =
        LayerBuilder { layer: spec.name.clone(), cache, tree: Tree::new(), inputs: Vec::new() };
    for d in &spec.dirs {
        b.insert(d.dest.clone(), EntryKind::Dir, meta(&d.owner, 0o755))?;
    }
    for t in &spec.trees {
        b.add_tree(&t.src, &t.dest, t.uid, t.gid)?;
    }
    for t in &spec.tarballs {
        b.add_tarball(&t.src, &t.dest)?;
    }
    for f in &spec.files {
        let (content, exec) = hash_file(f.src.abs(), &metadata(f.src.abs())?, b.cache)?;
        b.inputs.push(Input {
            kind: InputKind::File,
            src: f.src.rel().to_string(),
            digest: content_digest(&content),
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

fn content_digest(content: &Content) -> Digest {
    match content {
        Content::Host { digest, .. } => *digest,
        Content::Bytes(b) => Digest::of(b),
    }
}

/// Hashes a host file (or takes its digest from `cache`); returns its content reference and
/// whether any execute bit is set. `md` is the file's metadata, already taken by the caller.
fn hash_file(
    path: &Path,
    md: &fs::Metadata,
    cache: &mut HashCache,
) -> Result<(Content, bool), InputError> {
    let exec = md.permissions().mode() & 0o111 != 0;
    if let Some(digest) = cache.get(path, md) {
        return Ok((Content::Host { path: path.to_path_buf(), size: md.len(), digest }, exec));
    }
    let io = |source| InputError::Io { path: path.to_path_buf(), source };
    let mut file = fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let digest = hasher.finish();
    if size == md.len() {
        cache.put(path, md, digest);
    }
    Ok((Content::Host { path: path.to_path_buf(), size, digest }, exec))
}

fn metadata(path: &Path) -> Result<fs::Metadata, InputError> {
    fs::metadata(path).map_err(|source| InputError::Io { path: path.to_path_buf(), source })
}

struct LayerBuilder<'c> {
    layer: String,
    cache: &'c mut HashCache,
    tree: Tree,
    inputs: Vec<Input>,
}

impl LayerBuilder<'_> {
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

    fn add_tree(
        &mut self,
        src: &SourcePath,
        dest: &ImagePath,
        uid: u32,
        gid: u32,
    ) -> Result<(), InputError> {
        let mut listing = Vec::new();
        let mut links: BTreeMap<(u64, u64), ImagePath> = BTreeMap::new();
        let owner = |mode| Meta { mode, uid, gid, xattrs: BTreeMap::new() };
        self.insert_found_dir(dest.clone(), owner(0o755))?;
        // Depth-first with names sorted bytewise, so directory order on disk never matters.
        let mut stack: Vec<(PathBuf, String)> = vec![(src.abs().to_path_buf(), String::new())];
        while let Some((dir, rel_dir)) = stack.pop() {
            let io = |source| InputError::Io { path: dir.clone(), source };
            let mut names = Vec::new();
            for entry in fs::read_dir(&dir).map_err(io)? {
                names.push(entry.map_err(io)?.file_name());
            }
            names.sort();
            let mut subdirs = Vec::new();
            for name in names {
                let host = dir.join(&name);
                let name =
                    name.to_str().ok_or_else(|| InputError::NotUtf8 { path: host.clone() })?;
                let rel =
                    if rel_dir.is_empty() { name.to_string() } else { format!("{rel_dir}/{name}") };
                let image = dest
                    .join(&rel)
                    .map_err(|source| InputError::Path { path: rel.clone(), source })?;
                let md = fs::symlink_metadata(&host)
                    .map_err(|source| InputError::Io { path: host.clone(), source })?;
                let ft = md.file_type();
                if ft.is_dir() {
                    listing.push(format!("d 755 {rel}\n"));
                    self.insert_found_dir(image, owner(0o755))?;
                    subdirs.push((host, rel));
                } else if ft.is_symlink() {
                    let target = fs::read_link(&host)
                        .map_err(|source| InputError::Io { path: host.clone(), source })?;
                    let target = target
                        .to_str()
                        .ok_or_else(|| InputError::NotUtf8 { path: host.clone() })?
                        .to_string();
                    let parent = ImagePath::parse(&rel)
                        .ok()
                        .and_then(|p| p.parent())
                        .unwrap_or_else(ImagePath::root);
                    if target.starts_with('/') || parent.join(&target).is_err() {
                        return Err(InputError::SymlinkEscapes {
                            path: host,
                            target,
                            tree: src.rel().to_string(),
                        });
                    }
                    listing.push(format!("l 777 {rel}\0{target}\n"));
                    self.insert(image, EntryKind::Symlink(target), owner(0o777))?;
                } else if ft.is_file() {
                    let mode = normal_mode(md.mode() & 0o111 != 0);
                    if md.nlink() > 1 {
                        if let Some(first) = links.get(&(md.dev(), md.ino())) {
                            listing.push(format!("h 0 {rel}\0{}\n", first.as_str()));
                            self.insert(image, EntryKind::HardLink(first.clone()), owner(mode))?;
                            continue;
                        }
                        links.insert((md.dev(), md.ino()), image.clone());
                    }
                    let (content, _) = hash_file(&host, &md, self.cache)?;
                    listing.push(format!("f {mode:o} {rel}\0{}\n", content_digest(&content)));
                    self.insert(image, EntryKind::File(content), owner(mode))?;
                } else {
                    let kind = if ft.is_fifo() {
                        "FIFOs"
                    } else if ft.is_socket() {
                        "sockets"
                    } else {
                        "device nodes"
                    };
                    return Err(InputError::SpecialFile { path: host, kind });
                }
            }
            // Reverse so the stack pops subdirectories in sorted order.
            stack.extend(subdirs.into_iter().rev());
        }
        let mut hasher = Sha256::new();
        for line in &listing {
            hasher.update(line.as_bytes());
        }
        self.inputs.push(Input {
            kind: InputKind::Tree,
            src: src.rel().to_string(),
            digest: hasher.finish(),
        });
        Ok(())
    }

    fn add_tarball(&mut self, src: &SourcePath, dest: &ImagePath) -> Result<(), InputError> {
        let tarball = src.rel().to_string();
        let (content, _) = hash_file(src.abs(), &metadata(src.abs())?, self.cache)?;
        self.inputs.push(Input {
            kind: InputKind::Tarball,
            src: tarball.clone(),
            digest: content_digest(&content),
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

//! The file tree of one layer: what the layer writer turns into tar bytes.

use std::collections::btree_map::Entry as Slot;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kiln_oci::Digest;

use crate::host_file::HostFile;
use crate::image_path::ImagePath;

/// Ownership, permission bits and extended attributes of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Declared extended attributes, written as PAX `SCHILY.xattr.*` records.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Meta {
    /// Root-owned with the given mode and no xattrs.
    pub fn root(mode: u32) -> Self {
        Meta { mode, uid: 0, gid: 0, xattrs: BTreeMap::new() }
    }
}

/// Where a regular file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A file on the host, read when the layer is written; the writer refuses a file that
    /// changed since it was hashed.
    Host(HostFile),
    /// Bytes held in memory (inline content, members of input tarballs).
    Bytes(Arc<[u8]>),
}

impl Content {
    /// The number of bytes this content has.
    pub fn size(&self) -> u64 {
        match self {
            Content::Host(file) => file.size,
            Content::Bytes(b) => b.len() as u64,
        }
    }

    /// The sha256 of the content (recorded for a host file, computed for bytes in memory).
    pub fn digest(&self) -> Digest {
        match self {
            Content::Host(file) => file.digest,
            Content::Bytes(b) => Digest::of(b),
        }
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Content),
    /// A symbolic link with its target exactly as it will be stored.
    Symlink(String),
    /// A hard link to an earlier regular file of the same layer.
    HardLink(ImagePath),
    /// A device node or FIFO, taken only from an input that says `devices = true`.
    Device(Device),
}

/// A device node's kind and numbers, or a FIFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
    Fifo,
}

/// Why device numbers were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("device numbers {major}:{minor} are beyond Linux's (major below 4096, minor below 2^20)")]
pub struct DeviceNumbersError {
    pub major: u64,
    pub minor: u64,
}

impl Device {
    /// The largest major number Linux has.
    pub const MAX_MAJOR: u32 = (1 << 12) - 1;
    /// The largest minor number Linux has.
    pub const MAX_MINOR: u32 = (1 << 20) - 1;

    /// Checks numbers read from an input against Linux's limits, which every format
    /// kiln writes can hold.
    pub fn numbers(major: u64, minor: u64) -> Result<(u32, u32), DeviceNumbersError> {
        match (u32::try_from(major), u32::try_from(minor)) {
            (Ok(a), Ok(i)) if a <= Self::MAX_MAJOR && i <= Self::MAX_MINOR => Ok((a, i)),
            _ => Err(DeviceNumbersError { major, minor }),
        }
    }

    /// Major and minor number (0 and 0 for a FIFO).
    pub fn major_minor(self) -> (u32, u32) {
        match self {
            Device::Char { major, minor } | Device::Block { major, minor } => (major, minor),
            Device::Fifo => (0, 0),
        }
    }

    /// The file type bits of `st_mode` (`S_IFCHR`, `S_IFBLK`, `S_IFIFO`).
    pub fn type_bits(self) -> u32 {
        match self {
            Device::Char { .. } => 0o020_000,
            Device::Block { .. } => 0o060_000,
            Device::Fifo => 0o010_000,
        }
    }

    /// The device number in Linux's 32-bit encoding (`new_encode_dev`), as erofs and
    /// squashfs store it.
    pub fn encoded(self) -> u32 {
        let (major, minor) = self.major_minor();
        (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
    }

    /// A short name for messages and digests.
    pub fn describe(self) -> String {
        match self {
            Device::Char { major, minor } => format!("char {major}:{minor}"),
            Device::Block { major, minor } => format!("block {major}:{minor}"),
            Device::Fifo => "fifo".to_string(),
        }
    }
}

/// One path in a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub meta: Meta,
}

/// Why an entry could not be added to a tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("{path} is declared twice in this layer")]
    Duplicate { path: ImagePath },
    #[error("{path} needs {parent} to be a directory, but it is declared as something else")]
    ParentNotDir { path: ImagePath, parent: ImagePath },
    #[error("hard link {path} points at {target}, which is not a regular file in this layer")]
    BadHardLink { path: ImagePath, target: ImagePath },
    #[error("the image root cannot be replaced by anything but a directory")]
    Root,
}

/// A layer's entries keyed by path; iteration is bytewise path order, parents first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<ImagePath, Entry>,
    /// Parent directories created implicitly (0755, root), which an explicit declaration
    /// may still replace.
    implicit: std::collections::BTreeSet<ImagePath>,
    /// Every directory entry's path. A directory stays one (only an implicit directory is
    /// ever replaced, and only by a declared one), so finding an entry's parent here spares
    /// the map search, which compares long shared path prefixes at every level.
    dirs: HashSet<ImagePath>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry, creating missing parent directories as root-owned 0755.
    pub fn insert(&mut self, path: ImagePath, entry: Entry) -> Result<(), TreeError> {
        if path.is_root() {
            return Err(TreeError::Root);
        }
        // Walk up only to the nearest existing ancestor: every entry's ancestors exist and are
        // directories, so a directory there vouches for the rest of the chain. Ancestors are
        // looked up as borrowed strings: no allocation for the common case of an existing one.
        let mut missing = Vec::new();
        let mut cur = ImagePath::parent_str(path.as_str());
        if cur.is_some_and(|p| self.dirs.contains(p)) {
            cur = None;
        }
        while let Some(parent) = cur.filter(|p| !p.is_empty()) {
            match self.entries.get(parent) {
                Some(Entry { kind: EntryKind::Dir, .. }) => break,
                Some(_) => {
                    let parent = ImagePath::from_ancestor(parent);
                    return Err(TreeError::ParentNotDir { path, parent });
                }
                None => {
                    cur = ImagePath::parent_str(parent);
                    missing.push(ImagePath::from_ancestor(parent));
                }
            }
        }
        for parent in missing {
            self.entries
                .insert(parent.clone(), Entry { kind: EntryKind::Dir, meta: Meta::root(0o755) });
            self.dirs.insert(parent.clone());
            self.implicit.insert(parent);
        }
        let mut entry = entry;
        if let EntryKind::HardLink(target) = &entry.kind {
            // A link to a link means a link to the file both share.
            let file = match self.entries.get(target) {
                Some(Entry { kind: EntryKind::HardLink(first), .. }) => first.clone(),
                _ => target.clone(),
            };
            let ok =
                matches!(self.entries.get(&file), Some(Entry { kind: EntryKind::File(_), .. }));
            if !ok || file == path {
                return Err(TreeError::BadHardLink { path, target: target.clone() });
            }
            entry.kind = EntryKind::HardLink(file);
        }
        let later_target = match &entry.kind {
            EntryKind::HardLink(target) if target > &path => Some((target.clone(), path.clone())),
            _ => None,
        };
        let dir = (entry.kind == EntryKind::Dir).then(|| path.clone());
        match self.entries.entry(path) {
            Slot::Vacant(slot) => {
                slot.insert(entry);
            }
            Slot::Occupied(mut slot) => {
                // Only a directory created implicitly may be declared afterwards.
                let replace_implicit =
                    self.implicit.contains(slot.key()) && entry.kind == EntryKind::Dir;
                if !replace_implicit {
                    return Err(TreeError::Duplicate { path: slot.key().clone() });
                }
                self.implicit.remove(slot.key());
                slot.insert(entry);
            }
        }
        if let Some(dir) = dir {
            self.dirs.insert(dir);
        }
        if let Some((target, path)) = later_target {
            self.move_link_content(&target, &path);
        }
        Ok(())
    }

    /// Tar readers need a hard link's target to come first, so when a link sorts before
    /// its file the content moves to the link's path and every link points there.
    fn move_link_content(&mut self, from: &ImagePath, to: &ImagePath) {
        let Some(file) = self.entries.remove(from) else {
            return;
        };
        self.entries.insert(to.clone(), file.clone());
        self.entries
            .insert(from.clone(), Entry { kind: EntryKind::HardLink(to.clone()), meta: file.meta });
        for entry in self.entries.values_mut() {
            if entry.kind == EntryKind::HardLink(from.clone()) {
                entry.kind = EntryKind::HardLink(to.clone());
            }
        }
    }

    /// Entries in bytewise path order (every parent before its children).
    pub fn iter(&self) -> impl Iterator<Item = (&ImagePath, &Entry)> {
        self.entries.iter()
    }

    /// The entry at `path`, if any: an [`ImagePath`], or its normalised text (no leading
    /// `/`), which a path known when kiln is compiled can be given as, with nothing to parse.
    pub fn get<Q>(&self, path: &Q) -> Option<&Entry>
    where
        ImagePath: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.get(path)
    }

    /// True when `path` is a parent directory created implicitly rather than declared.
    pub fn is_implicit(&self, path: &ImagePath) -> bool {
        self.implicit.contains(path)
    }

    /// Gives each implicit parent directory the metadata `lower` has for a directory at its
    /// path. A directory entry in a layer replaces the attributes of the directory below it
    /// (OCI image spec), so a parent this layer only needs must carry what the lower layers
    /// made it, or it would reset their owner and mode (as docker and buildkit avoid too).
    pub fn inherit_implicit<'a>(&mut self, lower: impl Fn(&ImagePath) -> Option<&'a Meta>) {
        for path in &self.implicit {
            if let (Some(meta), Some(entry)) = (lower(path), self.entries.get_mut(path)) {
                entry.meta = meta.clone();
            }
        }
    }

    /// Number of entries, implicit parents included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the tree has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImagePath {
        ImagePath::parse(s).unwrap()
    }

    fn file(bytes: &[u8]) -> Entry {
        Entry { kind: EntryKind::File(Content::Bytes(bytes.into())), meta: Meta::root(0o644) }
    }

    #[test]
    fn parents_are_created_and_may_be_declared_later() {
        let mut t = Tree::new();
        t.insert(p("/a/b/c"), file(b"x")).unwrap();
        t.insert(p("/a"), Entry { kind: EntryKind::Dir, meta: Meta::root(0o700) }).unwrap();
        let paths: Vec<_> = t.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a/b/c"]);
        assert_eq!(t.get(&p("a")).unwrap().meta.mode, 0o700);
        assert!(matches!(
            t.insert(p("/a"), Entry { kind: EntryKind::Dir, meta: Meta::root(0o755) }),
            Err(TreeError::Duplicate { .. })
        ));
        assert!(matches!(t.insert(p("/a/b/c/d"), file(b"y")), Err(TreeError::ParentNotDir { .. })));
    }

    #[test]
    fn a_directory_refused_over_a_file_does_not_become_a_parent() {
        let mut t = Tree::new();
        t.insert(p("/etc/conf"), file(b"x")).unwrap();
        let dir = Entry { kind: EntryKind::Dir, meta: Meta::root(0o755) };
        assert!(matches!(t.insert(p("/etc/conf"), dir), Err(TreeError::Duplicate { .. })));
        assert!(matches!(
            t.insert(p("/etc/conf/x"), file(b"y")),
            Err(TreeError::ParentNotDir { .. })
        ));
        t.insert(p("/etc/more/x"), file(b"z")).unwrap();
        assert!(t.is_implicit(&p("/etc/more")));
    }

    #[test]
    fn hard_links_always_point_backwards() {
        let mut t = Tree::new();
        t.insert(p("/z"), file(b"data")).unwrap();
        t.insert(p("/m"), Entry { kind: EntryKind::HardLink(p("/z")), meta: Meta::root(0o644) })
            .unwrap();
        t.insert(p("/y"), Entry { kind: EntryKind::HardLink(p("/z")), meta: Meta::root(0o644) })
            .unwrap();
        assert!(matches!(t.get(&p("m")).unwrap().kind, EntryKind::File(_)));
        assert_eq!(t.get(&p("z")).unwrap().kind, EntryKind::HardLink(p("m")));
        assert_eq!(t.get(&p("y")).unwrap().kind, EntryKind::HardLink(p("m")));
        t.insert(p("/a"), Entry { kind: EntryKind::HardLink(p("/m")), meta: Meta::root(0o644) })
            .unwrap();
        assert!(matches!(t.get(&p("a")).unwrap().kind, EntryKind::File(_)));
        for other in ["m", "y", "z"] {
            assert_eq!(t.get(&p(other)).unwrap().kind, EntryKind::HardLink(p("a")));
        }
        let dir = Entry { kind: EntryKind::Dir, meta: Meta::root(0o755) };
        t.insert(p("/d"), dir).unwrap();
        assert!(matches!(
            t.insert(
                p("/e"),
                Entry { kind: EntryKind::HardLink(p("/d")), meta: Meta::root(0o644) }
            ),
            Err(TreeError::BadHardLink { .. })
        ));
    }
}

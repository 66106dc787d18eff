//! An uncompressed erofs image written from a [`Tree`], without tools or root.
//!
//! Layout: block 0 holds the superblock at byte 1024; the inode area starts at block 1 (root
//! first, so its nid is 0); file, directory and symlink data follow, block-aligned, in path
//! order. A data tail that fits beside its inode is stored inline (`FLAT_INLINE`), otherwise
//! data is whole blocks (`FLAT_PLAIN`). Extended attributes are stored inline after their
//! inode. Compact 32-byte inodes are used unless an owner, link count or size needs the
//! extended 64-byte form. Every time is the epoch, and the volume UUID is hashed from the
//! tree, so equal trees give equal images.

use std::collections::HashMap;
use std::io::{self, Write};

use kiln_oci::digest::Sha256;

use kiln_tree::host_file::{self, HostFile, HostFileError, StreamError};
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, Device, EntryKind, Tree};
use kiln_tree::Epoch;

use crate::uuid::content_uuid;

mod format;

use format::{
    xattr_ibody_header, DataLayout, Dirent as DirentRecord, Inode, Superblock, XattrEntry, BLOCK,
    COMPACT_INODE_SIZE, DIRENT_SIZE, EXTENDED_INODE_SIZE, FT_BLKDEV, FT_CHRDEV, FT_DIR, FT_FIFO,
    FT_REG, FT_SYMLINK, INODE_SLOT, NAME_MAX, SUPER_OFFSET, S_IFDIR, S_IFLNK, S_IFREG, XATTR_ALIGN,
    XATTR_IBODY_HEADER_SIZE, XATTR_PREFIXES,
};

/// The inode area starts at this block, right after the superblock's.
const META_BLKADDR: u64 = 1;

/// Why an erofs image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("{path}: the name is {len} bytes long; erofs allows at most {NAME_MAX}")]
    NameTooLong { path: ImagePath, len: usize },
    #[error(
        "{path} has extended attribute {name:?}; erofs stores user.*, trusted.*, security.* \
         and POSIX ACL attributes, with names up to 255 bytes and values up to 64 KiB"
    )]
    Xattr { path: ImagePath, name: String },
    #[error("the filesystem needs {blocks} blocks of 4 KiB, more than erofs addresses (2^32)")]
    TooLarge { blocks: u64 },
    #[error("{path}")]
    Host {
        path: ImagePath,
        #[source]
        source: HostFileError,
    },
    #[error("writing the erofs image")]
    Write(#[source] io::Error),
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErofsImage {
    /// Image size in bytes (a whole number of 4 KiB blocks).
    pub size: u64,
    /// The volume UUID stored in the superblock.
    pub uuid: [u8; 16],
    /// Number of inodes.
    pub inodes: u64,
}

/// What an inode holds before it is laid out.
enum Data<'a> {
    Dir(Vec<Dirent>),
    File(&'a Content),
    Symlink(&'a [u8]),
    /// A device node or FIFO: no data, its encoded device number in the inode.
    Device(u32),
}

struct Dirent {
    name: Vec<u8>,
    node: usize,
    file_type: u8,
}

struct Node<'a> {
    path: ImagePath,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    data: Data<'a>,
    size: u64,
    /// The inline extended attribute area (empty when there are none).
    xattrs: Vec<u8>,
    /// Bytes stored inline after the inode and its xattrs.
    inline: u64,
    blocks: u64,
    nid: u64,
    blkaddr: u64,
}

impl Node<'_> {
    fn extended(&self) -> bool {
        self.uid > 0xFFFF
            || self.gid > 0xFFFF
            || self.nlink > 0xFFFF
            || self.size > u64::from(u32::MAX)
    }

    fn inode_size(&self) -> u64 {
        if self.extended() {
            EXTENDED_INODE_SIZE as u64
        } else {
            COMPACT_INODE_SIZE as u64
        }
    }

    /// The inode and its inline xattrs: where inline data starts.
    fn head_size(&self) -> u64 {
        self.inode_size() + self.xattrs.len() as u64
    }
}

/// Writes `tree` as an erofs image to `out`, front to back, and returns what
/// was written. Every mtime is `epoch`.
pub fn write_erofs<W: Write>(
    tree: &Tree,
    epoch: Epoch,
    out: &mut W,
) -> Result<ErofsImage, ErofsError> {
    ErofsPlan::new(tree, epoch)?.write(out)
}

/// An erofs image laid out but not yet written: its size and UUID are known before the
/// first byte, so a disk can be planned around it.
pub struct ErofsPlan<'a> {
    nodes: Vec<Node<'a>>,
    meta_blocks: u64,
    /// Blocks in the image.
    blocks: u64,
    uuid: [u8; 16],
    build_time: u64,
}

impl<'a> ErofsPlan<'a> {
    /// Lays out `tree` with every mtime at `epoch`.
    pub fn new(tree: &'a Tree, epoch: Epoch) -> Result<Self, ErofsError> {
        let build_time = epoch.unsigned_seconds();
        let mut nodes = collect(tree)?;
        for node in &mut nodes {
            if let Data::Dir(entries) = &mut node.data {
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                // Every block but the last is full size.
                let blocks = dir_blocks(entries);
                let last = blocks.last().map_or(0, |b| b.len as u64);
                node.size = (blocks.len() as u64).saturating_sub(1) * BLOCK + last;
            }
        }
        let meta_bytes = place_inodes(&mut nodes);
        let meta_blocks = meta_bytes.div_ceil(BLOCK);
        let mut next = META_BLKADDR + meta_blocks;
        for node in &mut nodes {
            if node.blocks > 0 {
                node.blkaddr = next;
                next += node.blocks;
            }
        }
        if next > u64::from(u32::MAX) {
            return Err(ErofsError::TooLarge { blocks: next });
        }
        let uuid = volume_uuid(tree, epoch);
        Ok(ErofsPlan { nodes, meta_blocks, blocks: next, uuid, build_time })
    }

    /// The image size in bytes.
    pub fn size(&self) -> u64 {
        self.blocks * BLOCK
    }

    /// The volume UUID.
    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// Writes the image to `out`, front to back.
    pub fn write<W: Write>(self, out: &mut W) -> Result<ErofsImage, ErofsError> {
        let ErofsPlan { nodes, meta_blocks, blocks: next, uuid, build_time } = self;
        let mut sink = Sink { out };
        let mut block0 = vec![0u8; BLOCK as usize];
        let sb = Superblock {
            root_nid: 0,
            inodes: nodes.len() as u64,
            build_time,
            blocks: next as u32,
            meta_blkaddr: META_BLKADDR as u32,
            uuid,
        }
        .encode();
        block0[SUPER_OFFSET..SUPER_OFFSET + sb.len()].copy_from_slice(&sb);
        sink.write(&block0)?;

        // The inode area is streamed in nid order (nids grow with the node order), so memory
        // holds one inode at a time, not every inline tail of the image.
        let mut written = 0u64;
        // Digests of the host-file tails read separately, in node order.
        let mut tails = Vec::new();
        for node in &nodes {
            let at = node.nid * INODE_SLOT;
            sink.zeros(at - written)?;
            let inode = inode(node, build_time);
            if node.extended() {
                sink.write(&inode.encode_extended())?;
            } else {
                sink.write(&inode.encode_compact())?;
            }
            sink.write(&node.xattrs)?;
            written = at + node.head_size();
            if node.inline > 0 {
                let tail = match &node.data {
                    // The data pass below streams this file whole and checks its digest; reading
                    // just the tail here (instead of the file twice) is safe because that pass
                    // also checks the tail it sees is the one written here.
                    Data::File(Content::Host(file)) if node.blocks > 0 => {
                        let from = file.size - node.inline;
                        let tail =
                            host_file::read_unchecked(&file.path, from, node.inline as usize)
                                .map_err(|source| ErofsError::Host {
                                    path: node.path.clone(),
                                    source,
                                })?;
                        tails.push(kiln_oci::Digest::of(&tail));
                        tail
                    }
                    _ => tail_bytes(node, &nodes)?,
                };
                sink.write(&tail)?;
                written += tail.len() as u64;
            }
        }
        sink.zeros(meta_blocks * BLOCK - written)?;
        let mut tails = tails.into_iter();

        for node in &nodes {
            if node.blocks == 0 {
                continue;
            }
            let whole = node.size - node.inline;
            match &node.data {
                Data::File(Content::Host(file)) => {
                    let tail = if node.inline > 0 { tails.next() } else { None };
                    copy_host(&mut sink, &node.path, file, 0..whole, tail)?;
                }
                Data::File(Content::Bytes(bytes)) => sink.write(&bytes[..whole as usize])?,
                Data::Symlink(target) => sink.write(&target[..whole as usize])?,
                Data::Dir(entries) => sink.write(&dir_bytes(entries, &nodes, whole))?,
                Data::Device(_) => {}
            }
            sink.pad(whole)?;
        }

        Ok(ErofsImage { size: next * BLOCK, uuid, inodes: nodes.len() as u64 })
    }
}

/// The volume UUID: a version-8 (content-derived) UUID hashed from everything that decides
/// the image's bytes (each entry's path, kind, owner, mode, xattrs, link target or content
/// digest, and the epoch), so it is known before the first byte is written and the image is
/// written front to back.
pub fn volume_uuid(tree: &Tree, epoch: Epoch) -> [u8; 16] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"kiln erofs volume uuid v2");
    field(&epoch.seconds().to_le_bytes());
    for (path, entry) in tree.iter() {
        let m = &entry.meta;
        field(path.as_str().as_bytes());
        field(&[m.mode.to_le_bytes(), m.uid.to_le_bytes(), m.gid.to_le_bytes()].concat());
        field(&(m.xattrs.len() as u64).to_le_bytes());
        for (name, value) in &m.xattrs {
            field(name.as_bytes());
            field(value);
        }
        match &entry.kind {
            EntryKind::Dir => field(b"dir"),
            EntryKind::File(content) => {
                field(b"file");
                field(content.digest().as_bytes());
            }
            EntryKind::Symlink(target) => {
                field(b"symlink");
                field(target.as_bytes());
            }
            EntryKind::HardLink(target) => {
                field(b"hardlink");
                field(target.as_str().as_bytes());
            }
            EntryKind::Device(device) => {
                field(b"device");
                field(device.describe().as_bytes());
            }
        }
    }
    content_uuid(h)
}

/// One node per inode, root first, then in path order; hard links share their file's node.
fn collect(tree: &Tree) -> Result<Vec<Node<'_>>, ErofsError> {
    let dir_node = |path: ImagePath, mode: u32, uid: u32, gid: u32| Node {
        path,
        mode: S_IFDIR | (mode & 0o7777),
        uid,
        gid,
        nlink: 2,
        data: Data::Dir(Vec::new()),
        size: 0,
        xattrs: Vec::new(),
        inline: 0,
        blocks: 0,
        nid: 0,
        blkaddr: 0,
    };
    let mut nodes = vec![dir_node(ImagePath::root(), 0o755, 0, 0)];
    let mut index: HashMap<&ImagePath, usize> = HashMap::new();
    for (path, entry) in tree.iter() {
        let xattrs = xattr_body(path, &entry.meta.xattrs)?;
        let name = path.as_str().rsplit('/').next().unwrap_or_default().as_bytes().to_vec();
        if name.len() > NAME_MAX {
            return Err(ErofsError::NameTooLong { path: path.clone(), len: name.len() });
        }
        let (m, uid, gid) = (entry.meta.mode, entry.meta.uid, entry.meta.gid);
        let (node, file_type) = match &entry.kind {
            EntryKind::Dir => {
                nodes.push(Node { xattrs, ..dir_node(path.clone(), m, uid, gid) });
                (nodes.len() - 1, FT_DIR)
            }
            EntryKind::File(content) => {
                nodes.push(Node {
                    mode: S_IFREG | (m & 0o7777),
                    nlink: 1,
                    size: content.size(),
                    data: Data::File(content),
                    xattrs,
                    ..dir_node(path.clone(), 0, uid, gid)
                });
                (nodes.len() - 1, FT_REG)
            }
            EntryKind::Symlink(target) => {
                nodes.push(Node {
                    mode: S_IFLNK | 0o777,
                    nlink: 1,
                    size: target.len() as u64,
                    data: Data::Symlink(target.as_bytes()),
                    xattrs,
                    ..dir_node(path.clone(), 0, uid, gid)
                });
                (nodes.len() - 1, FT_SYMLINK)
            }
            EntryKind::HardLink(target) => {
                // The tree guarantees the file comes first.
                let Some(&file) = index.get(target) else {
                    continue;
                };
                nodes[file].nlink += 1;
                (file, FT_REG)
            }
            EntryKind::Device(device) => {
                nodes.push(Node {
                    mode: device.type_bits() | (m & 0o7777),
                    nlink: 1,
                    data: Data::Device(device.encoded()),
                    xattrs,
                    ..dir_node(path.clone(), 0, uid, gid)
                });
                let file_type = match device {
                    Device::Char { .. } => FT_CHRDEV,
                    Device::Block { .. } => FT_BLKDEV,
                    Device::Fifo => FT_FIFO,
                };
                (nodes.len() - 1, file_type)
            }
        };
        index.insert(path, node);
        let parent = match path.parent() {
            Some(p) if !p.is_root() => index.get(&p).copied().unwrap_or(0),
            _ => 0,
        };
        if file_type == FT_DIR {
            nodes[parent].nlink += 1;
            if let Data::Dir(entries) = &mut nodes[node].data {
                entries.push(Dirent { name: b".".to_vec(), node, file_type: FT_DIR });
                entries.push(Dirent { name: b"..".to_vec(), node: parent, file_type: FT_DIR });
            }
        }
        if let Data::Dir(entries) = &mut nodes[parent].data {
            entries.push(Dirent { name, node, file_type });
        }
    }
    if let Data::Dir(entries) = &mut nodes[0].data {
        entries.push(Dirent { name: b".".to_vec(), node: 0, file_type: FT_DIR });
        entries.push(Dirent { name: b"..".to_vec(), node: 0, file_type: FT_DIR });
    }
    Ok(nodes)
}

/// A directory block: which entries it holds and how many bytes they use.
struct DirBlock {
    first: usize,
    count: usize,
    len: usize,
}

/// Groups sorted entries into blocks, as many per block as fit.
fn dir_blocks(entries: &[Dirent]) -> Vec<DirBlock> {
    let mut blocks = Vec::new();
    let mut cur = DirBlock { first: 0, count: 0, len: 0 };
    for (i, e) in entries.iter().enumerate() {
        let need = DIRENT_SIZE + e.name.len();
        if cur.len + need > BLOCK as usize {
            blocks.push(cur);
            cur = DirBlock { first: i, count: 0, len: 0 };
        }
        cur.count += 1;
        cur.len += need;
    }
    blocks.push(cur);
    blocks
}

/// All of a directory's bytes: its entries, block by block.
fn dir_bytes_all(entries: &[Dirent], nodes: &[Node<'_>]) -> Vec<u8> {
    let blocks = dir_blocks(entries);
    let mut out = Vec::with_capacity(blocks.len() * BLOCK as usize);
    for (b, block) in blocks.iter().enumerate() {
        let start = out.len();
        let group = &entries[block.first..block.first + block.count];
        let mut nameoff = DIRENT_SIZE * group.len();
        for e in group {
            let nid = nodes[e.node].nid;
            let dirent = DirentRecord { nid, nameoff: nameoff as u16, file_type: e.file_type };
            out.extend_from_slice(&dirent.encode());
            nameoff += e.name.len();
        }
        for e in group {
            out.extend_from_slice(&e.name);
        }
        if b + 1 < blocks.len() {
            out.resize(start + BLOCK as usize, 0);
        }
    }
    out
}

/// The first `len` bytes of a directory's data.
fn dir_bytes(entries: &[Dirent], nodes: &[Node<'_>], len: u64) -> Vec<u8> {
    let mut all = dir_bytes_all(entries, nodes);
    all.truncate(len as usize);
    all
}

/// The inline tail of a node.
fn tail_bytes(node: &Node<'_>, nodes: &[Node<'_>]) -> Result<Vec<u8>, ErofsError> {
    let from = (node.size - node.inline) as usize;
    Ok(match &node.data {
        Data::Dir(entries) => dir_bytes_all(entries, nodes)[from..].to_vec(),
        Data::Symlink(target) => target[from..].to_vec(),
        Data::Device(_) => Vec::new(),
        Data::File(Content::Bytes(bytes)) => bytes[from..].to_vec(),
        Data::File(Content::Host(file)) => {
            let mut buf = Vec::new();
            let mut sink = VecSink(&mut buf);
            copy_host(&mut sink, &node.path, file, from as u64..file.size, None)?;
            buf
        }
    })
}

/// Decides each node's data layout and assigns nids in the inode area; returns its length.
fn place_inodes(nodes: &mut [Node<'_>]) -> u64 {
    let mut at = 0u64;
    for node in nodes.iter_mut() {
        let head = node.head_size();
        let tail = node.size % BLOCK;
        node.inline = if tail > 0 && head + tail <= BLOCK { tail } else { 0 };
        node.blocks = (node.size - node.inline).div_ceil(BLOCK);
        let need = head + node.inline;
        // Inline data may not cross a block; a head larger than a block starts on one.
        if at % BLOCK + need > BLOCK && !at.is_multiple_of(BLOCK) {
            at = at.next_multiple_of(BLOCK);
        }
        node.nid = at / INODE_SLOT;
        at = (at + need).next_multiple_of(INODE_SLOT);
    }
    at
}

/// The inline xattr area of an inode: its header and one entry per attribute.
fn xattr_body(
    path: &ImagePath,
    xattrs: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>, ErofsError> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut body = xattr_ibody_header().to_vec();
    for (name, value) in xattrs {
        let bad = || ErofsError::Xattr { path: path.clone(), name: name.clone() };
        let (suffix, index) = XATTR_PREFIXES
            .iter()
            .find_map(|(prefix, index)| {
                let suffix = name.strip_prefix(prefix)?;
                let whole_name = !prefix.ends_with('.');
                (!whole_name || suffix.is_empty()).then_some((suffix, *index))
            })
            .ok_or_else(bad)?;
        let name_len = u8::try_from(suffix.len()).map_err(|_| bad())?;
        let value_len = u16::try_from(value.len()).map_err(|_| bad())?;
        let entry = XattrEntry { name_len, name_index: index, value_size: value_len };
        body.extend_from_slice(&entry.encode());
        body.extend_from_slice(suffix.as_bytes());
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(XATTR_ALIGN), 0);
    }
    if xattr_icount(body.len()) > usize::from(u16::MAX) {
        return Err(ErofsError::Xattr { path: path.clone(), name: "(all of them)".into() });
    }
    Ok(body)
}

/// `i_xattr_icount` of an inline xattr area of `len` bytes (0: none).
fn xattr_icount(len: usize) -> usize {
    match len {
        0 => 0,
        n => (n - XATTR_IBODY_HEADER_SIZE) / XATTR_ALIGN + 1,
    }
}

/// The inode of a node.
fn inode(node: &Node<'_>, build_time: u64) -> Inode {
    Inode {
        layout: if node.inline > 0 { DataLayout::FlatInline } else { DataLayout::FlatPlain },
        xattr_icount: xattr_icount(node.xattrs.len()) as u16,
        mode: node.mode as u16,
        nlink: node.nlink,
        size: node.size,
        // The inode's union holds the device number of a device node, else the data's block.
        raw_blkaddr: match node.data {
            Data::Device(rdev) => rdev,
            _ => node.blkaddr as u32,
        },
        ino: (node.nid + 1) as u32,
        uid: node.uid,
        gid: node.gid,
        mtime: build_time,
    }
}

/// Where image bytes go: the output, or a buffer for an inline tail.
trait ByteSink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErofsError>;
}

struct Sink<'a, W> {
    out: &'a mut W,
}

impl<W: Write> ByteSink for Sink<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErofsError> {
        self.out.write_all(bytes).map_err(ErofsError::Write)
    }
}

impl<W: Write> Sink<'_, W> {
    /// Zero-fills from `len` to the next block boundary.
    fn pad(&mut self, len: u64) -> Result<(), ErofsError> {
        self.zeros(len.next_multiple_of(BLOCK) - len)
    }

    /// Writes `len` zero bytes.
    fn zeros(&mut self, mut len: u64) -> Result<(), ErofsError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
            len -= n as u64;
        }
        Ok(())
    }
}

struct VecSink<'a>(&'a mut Vec<u8>);

impl ByteSink for VecSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErofsError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Copies the bytes `range` of a host file into `sink`, checking the whole file's size and
/// digest against what was recorded when it was hashed.
fn copy_host(
    sink: &mut dyn ByteSink,
    path: &ImagePath,
    file: &HostFile,
    range: std::ops::Range<u64>,
    tail: Option<kiln_oci::Digest>,
) -> Result<(), ErofsError> {
    let mut done = 0u64;
    let mut rest = Sha256::new();
    host_file::stream(file, |buf| {
        let (lo, hi) = (done, done + buf.len() as u64);
        done = hi;
        let (from, to) = (range.start.clamp(lo, hi), range.end.clamp(lo, hi));
        if from < to {
            sink.write(&buf[(from - lo) as usize..(to - lo) as usize])?;
        }
        let after = range.end.clamp(lo, hi);
        rest.update(&buf[(after - lo) as usize..]);
        Ok(())
    })
    .map_err(|e| match e {
        StreamError::Host(source) => ErofsError::Host { path: path.clone(), source },
        StreamError::Sink(e) => e,
    })?;
    // The bytes after `range` are the inline tail written earlier from a separate read.
    match tail {
        Some(expected) if rest.finish() != expected => Err(ErofsError::Host {
            path: path.clone(),
            source: HostFileError::ChangedWhileWriting { host: file.path.clone() },
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_that_differs_from_the_one_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("f");
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&host, &bytes).unwrap();
        let path = ImagePath::parse("/f").unwrap();
        let file = HostFile::new(host, 5000, kiln_oci::Digest::of(&bytes));
        let good_tail = kiln_oci::Digest::of(&bytes[4096..]);
        let copy = |tail| {
            let mut out = Vec::new();
            let result = copy_host(&mut VecSink(&mut out), &path, &file, 0..4096, tail);
            (result, out)
        };
        let (result, out) = copy(Some(good_tail));
        assert!(result.is_ok());
        assert_eq!(out, bytes[..4096]);
        let (result, _) = copy(Some(kiln_oci::Digest::of(b"another tail")));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("/f"), "{err}");
        assert!(matches!(
            copy(Some(kiln_oci::Digest::of(b"x"))).0,
            Err(ErofsError::Host { source: HostFileError::ChangedWhileWriting { .. }, .. })
        ));
    }
}

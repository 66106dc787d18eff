//! A gzip-compressed squashfs 4.0 image written from a [`Tree`], without tools or root.
//!
//! Layout, as mksquashfs lays it out: the 96-byte superblock, then file data (128 KiB blocks,
//! each a zlib stream or stored raw when deflate does not shrink it; all-zero blocks become
//! holes), with every file tail packed into shared fragment blocks; then the inode table, the
//! directory table, the fragment table, the id table and the xattr tables, each made of 8 KiB
//! metadata blocks; then zero padding to 4 KiB. Files with equal content share their blocks.
//!
//! Data blocks are deflated by `threads` workers but written in a fixed order, each block on its
//! own, so the bytes never depend on the worker count. Inodes are numbered and written depth
//! first (a directory after its contents, the root last), every time is the epoch, and the
//! volume UUID is a sha256 of the image bytes, so equal trees give equal images.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::{mpsc, Mutex};
use std::thread;

use flate2::{Compress, FlushCompress, Status};
use kiln_oci::{Digest, Sha256};

use kiln_compress::incompressible;
use kiln_compress::workers;
use kiln_tree::host_file::{self, HostFileError, StreamError};
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, Device, EntryKind, Meta, Tree};
use kiln_tree::Epoch;

use crate::uuid::content_uuid;

mod format;

use format::{
    data_block_size, id_entry, metadata_header, metadata_reference, table_index_entry, DeviceInode,
    DirEntry, DirHeader, DirIndex, DirInode, FragmentEntry, InodeHeader, LdirInode, LregInode,
    RegInode, Superblock, SymlinkInode, XattrId, XattrIdTable, XattrPair, BLOCK, DIR_COUNT,
    DIR_ENTRY_SIZE, DIR_HEADER_SIZE, DIR_SIZE_EXTRA, FLAG_ALWAYS_FRAGMENTS, FLAG_DUPLICATES,
    FLAG_NO_XATTRS, METADATA, NAME_MAX, NONE32, NONE64, SUPERBLOCK_SIZE, T_BLKDEV, T_CHRDEV, T_DIR,
    T_FIFO, T_FILE, T_LBLKDEV, T_LCHRDEV, T_LDIR, T_LFIFO, T_LFILE, T_LSYMLINK, T_SYMLINK,
    XATTR_PREFIXES,
};

/// The image is padded to a multiple of this, as mksquashfs pads it.
const PAD: u64 = 4096;
/// Deflate level for data and metadata: the knee, where an image only slightly larger than
/// `mksquashfs`'s level 9 costs a fraction of its CPU time (docs/performance.md).
const LEVEL: u32 = 5;
/// Block indexes must fit the kernel's 32-bit signed block numbers.
const MAX_FILE: u64 = (i32::MAX as u64) * BLOCK as u64;

/// Why a squashfs image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error("{path}: the name is {len} bytes long; squashfs allows at most {NAME_MAX}")]
    NameTooLong { path: ImagePath, len: usize },
    #[error("{path} is {size} bytes, more than squashfs can address in a file ({MAX_FILE})")]
    FileTooLarge { path: ImagePath, size: u64 },
    #[error(
        "{path} has extended attribute {name:?}; squashfs stores only user.*, trusted.* and \
         security.* attributes, with names up to 65535 bytes"
    )]
    Xattr { path: ImagePath, name: String },
    #[error("the epoch {0} does not fit squashfs's 32-bit unsigned timestamps")]
    Epoch(Epoch),
    #[error("the tree has {0} distinct owner and group ids; squashfs stores at most 65535")]
    TooManyIds(usize),
    #[error("{path}")]
    Host {
        path: ImagePath,
        #[source]
        source: HostFileError,
    },
    #[error("deflate failed: {0}")]
    Deflate(String),
    #[error("a squashfs compression worker thread stopped unexpectedly")]
    Worker,
    #[error("writing the squashfs image")]
    Write(#[source] io::Error),
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SquashfsImage {
    /// Image size in bytes (padded to a multiple of 4096).
    pub size: u64,
    /// A version-8 UUID derived from the image bytes (squashfs itself has no volume UUID).
    pub uuid: [u8; 16],
    /// Number of inodes.
    pub inodes: u64,
}

/// Writes `tree` as a squashfs image to `out` (from its current position 0), deflating data
/// blocks with `threads` workers (0 counts as 1); the bytes do not depend on `threads`.
pub fn write_squashfs<W: Write + Seek>(
    tree: &Tree,
    epoch: Epoch,
    threads: usize,
    out: &mut W,
) -> Result<SquashfsImage, SquashfsError> {
    let mtime = u32::try_from(epoch.seconds()).map_err(|_| SquashfsError::Epoch(epoch))?;
    let model = collect(tree)?;
    let mut sink = Sink { out, pos: 0, hasher: Sha256::new() };
    sink.hasher.update(b"kiln squashfs volume uuid v1\0");
    sink.write(&[0u8; SUPERBLOCK_SIZE])?;
    let DataArea { files, fragments } = write_data(&mut sink, &model.contents, threads)?;

    let tables = Tables::build(&model, &files, mtime)?;
    let inode_table_start = sink.pos;
    sink.write(&tables.inodes)?;
    let directory_table_start = sink.pos;
    sink.write(&tables.dirs)?;
    let fragment_entries: Vec<u8> = fragments
        .iter()
        .flat_map(|&(start_block, size)| FragmentEntry { start_block, size }.encode())
        .collect();
    let fragment_table_start = write_table(&mut sink, &fragment_entries)?;
    let ids: Vec<u8> = model.ids.iter().flat_map(|&id| id_entry(id)).collect();
    let id_table_start = write_table(&mut sink, &ids)?;
    let xattr_id_table_start = write_xattrs(&mut sink, &model.xattr_sets)?;
    let bytes_used = sink.pos;
    let size = bytes_used.next_multiple_of(PAD);
    sink.write(&vec![0u8; (size - bytes_used) as usize])?;

    let inodes = model.nodes.len() as u64;
    let mut flags = FLAG_DUPLICATES | FLAG_ALWAYS_FRAGMENTS;
    if model.xattr_sets.is_empty() {
        flags |= FLAG_NO_XATTRS;
    }
    let sb = Superblock {
        inodes: inodes as u32,
        mkfs_time: mtime,
        fragments: fragments.len() as u32,
        flags,
        no_ids: model.ids.len() as u16,
        root_inode: tables.root,
        bytes_used,
        id_table_start,
        xattr_id_table_start,
        inode_table_start,
        directory_table_start,
        fragment_table_start,
    }
    .encode();
    sink.hasher.update(&sb);
    let uuid = content_uuid(sink.hasher);
    let out = sink.out;
    out.seek(SeekFrom::Start(0)).map_err(SquashfsError::Write)?;
    out.write_all(&sb).map_err(SquashfsError::Write)?;
    out.seek(SeekFrom::Start(size)).map_err(SquashfsError::Write)?;
    Ok(SquashfsImage { size, uuid, inodes })
}

/// The output, its position and the hash the UUID comes from.
struct Sink<'a, W> {
    out: &'a mut W,
    pos: u64,
    hasher: Sha256,
}

impl<W: Write> Sink<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SquashfsError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).map_err(SquashfsError::Write)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// What an inode is, before it is laid out.
enum Kind<'a> {
    /// Entries as (name, node), sorted by name.
    Dir(Vec<(&'a [u8], usize)>),
    /// The index of the file's content in `Model::contents` and its size.
    File(usize, u64),
    Symlink(&'a [u8]),
    Device(Device),
}

struct Node<'a> {
    kind: Kind<'a>,
    perm: u16,
    uid: u16,
    gid: u16,
    nlink: u32,
    /// Index into the xattr id table, or `NONE32`.
    xattr: u32,
}

/// The tree as squashfs sees it: inodes (root first), distinct contents, ids, xattr sets.
struct Model<'a> {
    nodes: Vec<Node<'a>>,
    contents: Vec<(&'a ImagePath, &'a Content)>,
    ids: Vec<u32>,
    /// Encoded key/value pairs and their count, one per distinct set.
    xattr_sets: Vec<(Vec<u8>, u32)>,
}

/// Interns owner ids and xattr sets in first-seen order.
#[derive(Default)]
struct Interner {
    ids: Vec<u32>,
    id_index: HashMap<u32, u16>,
    sets: Vec<(Vec<u8>, u32)>,
    set_index: HashMap<Vec<u8>, u32>,
}

impl Interner {
    fn id(&mut self, id: u32) -> Result<u16, SquashfsError> {
        if let Some(&i) = self.id_index.get(&id) {
            return Ok(i);
        }
        let i = u16::try_from(self.ids.len())
            .ok()
            .filter(|&i| i < u16::MAX)
            .ok_or(SquashfsError::TooManyIds(self.ids.len() + 1))?;
        self.ids.push(id);
        self.id_index.insert(id, i);
        Ok(i)
    }

    fn xattrs(
        &mut self,
        path: &ImagePath,
        xattrs: &BTreeMap<String, Vec<u8>>,
    ) -> Result<u32, SquashfsError> {
        if xattrs.is_empty() {
            return Ok(NONE32);
        }
        let encoded = encode_xattrs(path, xattrs)?;
        if let Some(&i) = self.set_index.get(&encoded) {
            return Ok(i);
        }
        let i = self.sets.len() as u32;
        self.sets.push((encoded.clone(), xattrs.len() as u32));
        self.set_index.insert(encoded, i);
        Ok(i)
    }

    fn node<'a>(
        &mut self,
        path: &ImagePath,
        meta: &Meta,
        kind: Kind<'a>,
        nlink: u32,
    ) -> Result<Node<'a>, SquashfsError> {
        Ok(Node {
            kind,
            perm: (meta.mode & 0o7777) as u16,
            uid: self.id(meta.uid)?,
            gid: self.id(meta.gid)?,
            nlink,
            xattr: self.xattrs(path, &meta.xattrs)?,
        })
    }
}

/// The key/value pairs of one set.
fn encode_xattrs(
    path: &ImagePath,
    xattrs: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>, SquashfsError> {
    let mut out = Vec::new();
    for (name, value) in xattrs {
        let bad = || SquashfsError::Xattr { path: path.clone(), name: name.clone() };
        let (suffix, kind) = XATTR_PREFIXES
            .iter()
            .find_map(|(prefix, kind)| Some((name.strip_prefix(prefix)?, *kind)))
            .ok_or_else(bad)?;
        u16::try_from(suffix.len()).map_err(|_| bad())?;
        u32::try_from(value.len()).map_err(|_| bad())?;
        XattrPair { kind, name: suffix.as_bytes(), value }.encode_into(&mut out);
    }
    Ok(out)
}

/// One node per inode, root first, then in path order; hard links share their file's node
/// and equal contents share one entry of `contents`.
fn collect(tree: &Tree) -> Result<Model<'_>, SquashfsError> {
    let mut interner = Interner::default();
    let root = ImagePath::root();
    let mut nodes = vec![interner.node(&root, &Meta::root(0o755), Kind::Dir(Vec::new()), 2)?];
    let mut contents = Vec::new();
    let mut by_content: HashMap<(Digest, u64), usize> = HashMap::new();
    let mut index: HashMap<&ImagePath, usize> = HashMap::new();
    for (path, entry) in tree.iter() {
        let name = path.as_str().rsplit('/').next().unwrap_or_default().as_bytes();
        if name.len() > NAME_MAX {
            return Err(SquashfsError::NameTooLong { path: path.clone(), len: name.len() });
        }
        let parent = match path.parent() {
            Some(p) if !p.is_root() => index.get(&p).copied().unwrap_or(0),
            _ => 0,
        };
        let node = match &entry.kind {
            EntryKind::Dir => {
                nodes[parent].nlink += 1;
                nodes.push(interner.node(path, &entry.meta, Kind::Dir(Vec::new()), 2)?);
                nodes.len() - 1
            }
            EntryKind::File(content) => {
                let size = content.size();
                if size > MAX_FILE {
                    return Err(SquashfsError::FileTooLarge { path: path.clone(), size });
                }
                let id = *by_content.entry((content.digest(), size)).or_insert_with(|| {
                    contents.push((path, content));
                    contents.len() - 1
                });
                nodes.push(interner.node(path, &entry.meta, Kind::File(id, size), 1)?);
                nodes.len() - 1
            }
            EntryKind::Symlink(target) => {
                let kind = Kind::Symlink(target.as_bytes());
                nodes.push(interner.node(path, &entry.meta, kind, 1)?);
                nodes.len() - 1
            }
            EntryKind::HardLink(target) => {
                // The tree guarantees the file comes first.
                let Some(&file) = index.get(target) else {
                    continue;
                };
                nodes[file].nlink += 1;
                file
            }
            EntryKind::Device(device) => {
                nodes.push(interner.node(path, &entry.meta, Kind::Device(*device), 1)?);
                nodes.len() - 1
            }
        };
        index.insert(path, node);
        if let Kind::Dir(entries) = &mut nodes[parent].kind {
            entries.push((name, node));
        }
    }
    for node in &mut nodes {
        if let Kind::Dir(entries) = &mut node.kind {
            entries.sort_by(|a, b| a.0.cmp(b.0));
        }
    }
    Ok(Model { nodes, contents, ids: interner.ids, xattr_sets: interner.sets })
}

/// Where one content's data landed.
#[derive(Clone, Debug, Default)]
struct FileData {
    /// Position of the first stored block (0 when there is none).
    start: Option<u64>,
    /// One size word per whole block: compressed length, `DATA_STORED` flag, 0 for a hole.
    sizes: Vec<u32>,
    /// Fragment block index and offset of the tail, if the size is not a multiple of a block.
    fragment: Option<(u32, u32)>,
    /// Bytes stored as holes.
    sparse: u64,
}

/// Where a block that is being deflated belongs.
enum Target {
    File { content: usize, block: usize },
    Fragment(usize),
}

/// A block to deflate, with an output buffer to deflate it into.
struct Job {
    seq: u64,
    data: Vec<u8>,
    spare: Vec<u8>,
}

/// A block ready to write: `bytes` (deflated, or the input when `stored`) and the other
/// buffer, both handed back for reuse.
struct Done {
    seq: u64,
    bytes: Vec<u8>,
    stored: bool,
    spare: Vec<u8>,
}

/// Where the data area's contents landed.
struct DataArea {
    /// One per entry of `Model::contents`.
    files: Vec<FileData>,
    /// Fragment table entries: position and size word of each fragment block.
    fragments: Vec<(u64, u32)>,
}

/// Writes every content's blocks and the fragment blocks.
fn write_data<W: Write>(
    sink: &mut Sink<'_, W>,
    contents: &[(&ImagePath, &Content)],
    threads: usize,
) -> Result<DataArea, SquashfsError> {
    let workers = threads.max(1);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<Result<Done, SquashfsError>>();
    thread::scope(|scope| {
        let init = || Compress::new(flate2::Compression::new(LEVEL), true);
        let panicked = || Err(SquashfsError::Worker);
        workers::start(scope, workers, &job_rx, &done_tx, init, deflate_block, panicked);
        drop(done_tx);
        let mut data = DataWriter {
            sink,
            jobs: Some(job_tx),
            done: done_rx,
            window: 4 * workers as u64,
            sent: 0,
            written: 0,
            ready: BTreeMap::new(),
            targets: VecDeque::new(),
            files: vec![FileData::default(); contents.len()],
            fragments: Vec::new(),
            frag: Vec::with_capacity(BLOCK),
            pool: Vec::new(),
        };
        let result = contents
            .iter()
            .enumerate()
            .try_for_each(|(i, &(path, content))| data.add_file(i, path, content))
            .and_then(|()| data.finish());
        // Closing the job channel lets the workers stop, on success and on error alike.
        data.jobs = None;
        result?;
        Ok(DataArea { files: data.files, fragments: data.fragments })
    })
}

/// Deflates one block as a zlib stream, or keeps it as it is when that is not smaller.
fn deflate_block(deflate: &mut Compress, job: Job) -> Result<Done, SquashfsError> {
    let Job { seq, data, mut spare } = job;
    // Noise (already compressed or encrypted bytes) is stored without trying to deflate it:
    // that saved a third of the CPU time on the bench tree.
    if incompressible(&data) {
        return Ok(Done { seq, bytes: data, stored: true, spare });
    }
    spare.clear();
    spare.reserve(data.len());
    deflate.reset();
    let status = deflate
        .compress_vec(&data, &mut spare, FlushCompress::Finish)
        .map_err(|e| SquashfsError::Deflate(e.to_string()))?;
    // An output buffer too small for the whole stream means deflate gained nothing.
    if status == Status::StreamEnd && spare.len() < data.len() {
        Ok(Done { seq, bytes: spare, stored: false, spare: data })
    } else {
        Ok(Done { seq, bytes: data, stored: true, spare })
    }
}

/// The data area being written: blocks go to the workers and come back in any order, and
/// are written in the order they were sent.
struct DataWriter<'s, 'o, W> {
    sink: &'s mut Sink<'o, W>,
    jobs: Option<mpsc::SyncSender<Job>>,
    done: mpsc::Receiver<Result<Done, SquashfsError>>,
    /// Blocks in flight at most: bounds memory to a few blocks per worker.
    window: u64,
    sent: u64,
    written: u64,
    ready: BTreeMap<u64, Done>,
    /// Targets of the blocks sent but not yet written, oldest first.
    targets: VecDeque<Target>,
    files: Vec<FileData>,
    fragments: Vec<(u64, u32)>,
    /// The fragment block being filled.
    frag: Vec<u8>,
    pool: Vec<Vec<u8>>,
}

impl<W: Write> DataWriter<'_, '_, W> {
    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(BLOCK));
        b.clear();
        b
    }

    /// Streams one content: whole blocks to the workers, the tail into a fragment block.
    fn add_file(
        &mut self,
        content_id: usize,
        path: &ImagePath,
        content: &Content,
    ) -> Result<(), SquashfsError> {
        let size = content.size();
        self.files[content_id].sizes = vec![0; (size / BLOCK as u64) as usize];
        let mut block = self.buffer();
        let mut index = 0;
        let mut feed = |mut bytes: &[u8], this: &mut Self| -> Result<(), SquashfsError> {
            while !bytes.is_empty() {
                let take = (BLOCK - block.len()).min(bytes.len());
                block.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if block.len() == BLOCK {
                    let full = std::mem::replace(&mut block, this.buffer());
                    this.whole_block(content_id, index, full)?;
                    index += 1;
                }
            }
            Ok(())
        };
        match content {
            Content::Bytes(bytes) => feed(bytes, self)?,
            Content::Host(file) => {
                host_file::stream(file, |bytes| feed(bytes, self)).map_err(|e| match e {
                    StreamError::Host(source) => SquashfsError::Host { path: path.clone(), source },
                    StreamError::Sink(e) => e,
                })?
            }
        }
        if !block.is_empty() {
            self.tail(content_id, &block)?;
        }
        self.pool.push(block);
        Ok(())
    }

    fn whole_block(
        &mut self,
        content: usize,
        block: usize,
        data: Vec<u8>,
    ) -> Result<(), SquashfsError> {
        if data.iter().any(|&b| b != 0) {
            return self.send(data, Target::File { content, block });
        }
        // A hole: size word 0, nothing stored.
        self.files[content].sparse += data.len() as u64;
        self.pool.push(data);
        Ok(())
    }

    fn tail(&mut self, content: usize, tail: &[u8]) -> Result<(), SquashfsError> {
        if self.frag.len() + tail.len() > BLOCK {
            self.flush_fragment()?;
        }
        let at = (self.fragments.len() as u32, self.frag.len() as u32);
        self.files[content].fragment = Some(at);
        self.frag.extend_from_slice(tail);
        Ok(())
    }

    fn flush_fragment(&mut self) -> Result<(), SquashfsError> {
        if self.frag.is_empty() {
            return Ok(());
        }
        let index = self.fragments.len();
        self.fragments.push((0, 0));
        let next = self.buffer();
        let full = std::mem::replace(&mut self.frag, next);
        self.send(full, Target::Fragment(index))
    }

    fn send(&mut self, data: Vec<u8>, target: Target) -> Result<(), SquashfsError> {
        while self.sent - self.written >= self.window {
            self.receive()?;
        }
        let spare = self.buffer();
        let jobs = self.jobs.as_ref().ok_or(SquashfsError::Worker)?;
        jobs.send(Job { seq: self.sent, data, spare }).map_err(|_| SquashfsError::Worker)?;
        self.targets.push_back(target);
        self.sent += 1;
        Ok(())
    }

    /// Waits for one deflated block, then writes every block that is next in order.
    fn receive(&mut self) -> Result<(), SquashfsError> {
        let done = self.done.recv().map_err(|_| SquashfsError::Worker)??;
        self.ready.insert(done.seq, done);
        while let Some(done) = self.ready.remove(&self.written) {
            let pos = self.sink.pos;
            self.sink.write(&done.bytes)?;
            let word = data_block_size(done.bytes.len() as u32, done.stored);
            match self.targets.pop_front() {
                Some(Target::File { content, block }) => {
                    let file = &mut self.files[content];
                    file.start.get_or_insert(pos);
                    file.sizes[block] = word;
                }
                Some(Target::Fragment(index)) => self.fragments[index] = (pos, word),
                None => return Err(SquashfsError::Worker),
            }
            self.pool.extend([done.bytes, done.spare]);
            self.written += 1;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SquashfsError> {
        self.flush_fragment()?;
        while self.written < self.sent {
            self.receive()?;
        }
        Ok(())
    }
}

/// A stream of metadata blocks: up to 8 KiB each, deflated when that makes them smaller,
/// each behind a 2-byte length word.
struct MetaWriter {
    deflate: Compress,
    done: Vec<u8>,
    cur: Vec<u8>,
    /// Where each finished block starts within `done`.
    starts: Vec<u64>,
}

impl MetaWriter {
    fn new() -> Self {
        MetaWriter {
            deflate: Compress::new(flate2::Compression::new(LEVEL), true),
            done: Vec::new(),
            cur: Vec::with_capacity(METADATA),
            starts: Vec::new(),
        }
    }

    /// The block (offset of its start in this table) and the offset in it where the next
    /// byte goes. The current block is never full, so the offset is always below 8 KiB.
    fn position(&self) -> (u32, u16) {
        (self.done.len() as u32, self.cur.len() as u16)
    }

    /// The position as a squashfs reference: block start << 16 | offset.
    fn reference(&self) -> u64 {
        let (block, offset) = self.position();
        metadata_reference(block, offset)
    }

    fn put(&mut self, mut bytes: &[u8]) -> Result<(), SquashfsError> {
        while !bytes.is_empty() {
            let take = (METADATA - self.cur.len()).min(bytes.len());
            self.cur.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.cur.len() == METADATA {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SquashfsError> {
        self.starts.push(self.done.len() as u64);
        let mut packed = Vec::with_capacity(METADATA);
        self.deflate.reset();
        let status = self
            .deflate
            .compress_vec(&self.cur, &mut packed, FlushCompress::Finish)
            .map_err(|e| SquashfsError::Deflate(e.to_string()))?;
        if status == Status::StreamEnd && packed.len() < self.cur.len() {
            self.done.extend_from_slice(&metadata_header(packed.len() as u16, false));
            self.done.extend_from_slice(&packed);
        } else {
            self.done.extend_from_slice(&metadata_header(self.cur.len() as u16, true));
            self.done.extend_from_slice(&self.cur);
        }
        self.cur.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<u8>, Vec<u64>), SquashfsError> {
        if !self.cur.is_empty() {
            self.flush()?;
        }
        Ok((self.done, self.starts))
    }
}

/// Writes a lookup table (id, fragment, xattr id): its entries as metadata blocks, then
/// the positions of those blocks. Returns where the positions start, which is what the
/// superblock records.
fn write_table<W: Write>(sink: &mut Sink<'_, W>, entries: &[u8]) -> Result<u64, SquashfsError> {
    let mut table = MetaWriter::new();
    table.put(entries)?;
    let (blocks, starts) = table.finish()?;
    let base = sink.pos;
    sink.write(&blocks)?;
    let index: Vec<u8> = starts.iter().flat_map(|s| table_index_entry(base + s)).collect();
    let at = sink.pos;
    sink.write(&index)?;
    Ok(at)
}

/// Writes the xattr key/value blocks, the xattr id table and its header; returns where the
/// header starts, or `NONE64` when no inode has xattrs.
fn write_xattrs<W: Write>(
    sink: &mut Sink<'_, W>,
    sets: &[(Vec<u8>, u32)],
) -> Result<u64, SquashfsError> {
    if sets.is_empty() {
        return Ok(NONE64);
    }
    let mut kv = MetaWriter::new();
    let mut ids = Vec::with_capacity(sets.len() * 16);
    for (pairs, count) in sets {
        let id = XattrId { xattr: kv.reference(), count: *count, size: pairs.len() as u32 };
        ids.extend_from_slice(&id.encode());
        kv.put(pairs)?;
    }
    let (blocks, _) = kv.finish()?;
    let kv_start = sink.pos;
    sink.write(&blocks)?;
    let mut table = MetaWriter::new();
    table.put(&ids)?;
    let (blocks, starts) = table.finish()?;
    let base = sink.pos;
    sink.write(&blocks)?;
    let header_at = sink.pos;
    let mut header = Vec::with_capacity(16 + starts.len() * 8);
    let table = XattrIdTable { xattr_table_start: kv_start, xattr_ids: sets.len() as u32 };
    header.extend_from_slice(&table.encode());
    for s in starts {
        header.extend_from_slice(&table_index_entry(base + s));
    }
    sink.write(&header)?;
    Ok(header_at)
}

/// The inode and directory tables, built in memory (metadata only).
struct Tables {
    inodes: Vec<u8>,
    dirs: Vec<u8>,
    root: u64,
}

/// Where a directory's listing went.
struct Listing {
    block: u32,
    offset: u16,
    /// Listing bytes plus 3, as squashfs counts a directory's size.
    size: u32,
    index: Vec<DirIndex>,
}

impl Tables {
    fn build(model: &Model<'_>, files: &[FileData], mtime: u32) -> Result<Tables, SquashfsError> {
        let nodes = &model.nodes;
        let order = inode_order(nodes);
        let mut number = vec![0u32; nodes.len()];
        for (n, &node) in (1u32..).zip(&order) {
            number[node] = n;
        }
        let mut parent = vec![nodes.len() as u32 + 1; nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            if let Kind::Dir(entries) = &node.kind {
                for &(_, child) in entries {
                    if matches!(nodes[child].kind, Kind::Dir(_)) {
                        parent[child] = number[i];
                    }
                }
            }
        }
        let mut refs = vec![0u64; nodes.len()];
        let mut inodes = MetaWriter::new();
        let mut dirs = MetaWriter::new();
        let mut b = Vec::new();
        for &i in &order {
            let node = &nodes[i];
            b.clear();
            let header = |b: &mut Vec<u8>, inode_type: u16| {
                let h = InodeHeader {
                    inode_type,
                    mode: node.perm,
                    uid: node.uid,
                    guid: node.gid,
                    mtime,
                    inode_number: number[i],
                };
                b.extend_from_slice(&h.encode());
            };
            let xattr = (node.xattr != NONE32).then_some(node.xattr);
            match &node.kind {
                Kind::Dir(entries) => {
                    let l = listing(&mut dirs, entries, nodes, &refs, &number)?;
                    if l.index.is_empty() && xattr.is_none() && l.size <= u32::from(u16::MAX) {
                        header(&mut b, T_DIR);
                        let dir = DirInode {
                            start_block: l.block,
                            nlink: node.nlink,
                            file_size: l.size as u16,
                            offset: l.offset,
                            parent_inode: parent[i],
                        };
                        b.extend_from_slice(&dir.encode());
                    } else {
                        header(&mut b, T_LDIR);
                        let dir = LdirInode {
                            nlink: node.nlink,
                            file_size: l.size,
                            start_block: l.block,
                            parent_inode: parent[i],
                            offset: l.offset,
                            xattr: node.xattr,
                            index: &l.index,
                        };
                        dir.encode_into(&mut b);
                    }
                }
                Kind::File(content, size) => {
                    let data = &files[*content];
                    let start = data.start.unwrap_or(0);
                    let (fragment, offset) = data.fragment.unwrap_or((NONE32, 0));
                    let basic = node.nlink == 1
                        && xattr.is_none()
                        && data.sparse == 0
                        && *size <= u64::from(u32::MAX)
                        && start <= u64::from(u32::MAX);
                    if basic {
                        header(&mut b, T_FILE);
                        let file = RegInode {
                            start_block: start as u32,
                            fragment,
                            offset,
                            file_size: *size as u32,
                            block_list: &data.sizes,
                        };
                        file.encode_into(&mut b);
                    } else {
                        header(&mut b, T_LFILE);
                        let file = LregInode {
                            start_block: start,
                            file_size: *size,
                            sparse: data.sparse,
                            nlink: node.nlink,
                            fragment,
                            offset,
                            xattr: node.xattr,
                            block_list: &data.sizes,
                        };
                        file.encode_into(&mut b);
                    }
                }
                Kind::Symlink(target) => {
                    header(&mut b, if xattr.is_none() { T_SYMLINK } else { T_LSYMLINK });
                    SymlinkInode { nlink: node.nlink, symlink: target, xattr }.encode_into(&mut b);
                }
                Kind::Device(device) => {
                    let kind = match (device, xattr.is_some()) {
                        (Device::Block { .. }, false) => T_BLKDEV,
                        (Device::Char { .. }, false) => T_CHRDEV,
                        (Device::Fifo, false) => T_FIFO,
                        (Device::Block { .. }, true) => T_LBLKDEV,
                        (Device::Char { .. }, true) => T_LCHRDEV,
                        (Device::Fifo, true) => T_LFIFO,
                    };
                    header(&mut b, kind);
                    let rdev = (*device != Device::Fifo).then(|| device.encoded());
                    DeviceInode { nlink: node.nlink, rdev, xattr }.encode_into(&mut b);
                }
            }
            refs[i] = inodes.reference();
            inodes.put(&b)?;
        }
        let (inodes, _) = inodes.finish()?;
        let (dirs, _) = dirs.finish()?;
        Ok(Tables { inodes, dirs, root: refs[0] })
    }
}

/// Inodes in the order they are written: depth first with entries in name order, each
/// directory after its contents (so its listing can name them), the root last; a file with
/// several names where the first of them is met.
fn inode_order(nodes: &[Node<'_>]) -> Vec<usize> {
    let mut order = Vec::with_capacity(nodes.len());
    let mut seen = vec![false; nodes.len()];
    // Explicit stack of (directory, next entry), so deep trees cannot overflow the call stack.
    let mut stack = vec![(0usize, 0usize)];
    seen[0] = true;
    while let Some((dir, next)) = stack.pop() {
        let Kind::Dir(entries) = &nodes[dir].kind else {
            continue;
        };
        match entries.get(next) {
            None => order.push(dir),
            Some(&(_, child)) => {
                stack.push((dir, next + 1));
                if !seen[child] {
                    seen[child] = true;
                    if matches!(nodes[child].kind, Kind::Dir(_)) {
                        stack.push((child, 0));
                    } else {
                        order.push(child);
                    }
                }
            }
        }
    }
    order
}

/// Basic inode type of an entry, as directory entries record it.
fn entry_type(node: &Node<'_>) -> u16 {
    match node.kind {
        Kind::Dir(_) => T_DIR,
        Kind::File(..) => T_FILE,
        Kind::Symlink(_) => T_SYMLINK,
        Kind::Device(Device::Block { .. }) => T_BLKDEV,
        Kind::Device(Device::Char { .. }) => T_CHRDEV,
        Kind::Device(Device::Fifo) => T_FIFO,
    }
}

/// Appends a directory's listing to the directory table. Entries are grouped under headers
/// naming the inode block they live in and a base inode number; a new header starts when
/// either changes too much, after 256 entries, or when the listing since the last index
/// point would pass 8 KiB, which also adds an index entry so lookups can skip ahead.
fn listing(
    dirs: &mut MetaWriter,
    entries: &[(&[u8], usize)],
    nodes: &[Node<'_>],
    refs: &[u64],
    number: &[u32],
) -> Result<Listing, SquashfsError> {
    let (block, offset) = dirs.position();
    let mut index = Vec::new();
    let mut len: usize = 0;
    let mut indexed_at: usize = 0;
    let mut group: Vec<u8> = Vec::new();
    let mut count = 0usize;
    let (mut base_block, mut base_number) = (0u64, 0u32);
    for &(name, child) in entries {
        let inode_block = refs[child] >> 16;
        let diff = i64::from(number[child]) - i64::from(base_number);
        let entry_len = DIR_ENTRY_SIZE + name.len();
        let past_index = len + group.len() + entry_len - indexed_at > METADATA;
        let new_header = count == 0
            || count == DIR_COUNT
            || inode_block != base_block
            || !(-32768..=32767).contains(&diff)
            || past_index;
        if new_header {
            if count > 0 {
                len += emit(dirs, &group, count, base_block, base_number)?;
                group.clear();
                if past_index {
                    let (at_block, _) = dirs.position();
                    index.push(DirIndex {
                        index: len as u32,
                        start_block: at_block,
                        name: name.to_vec(),
                    });
                    indexed_at = len;
                }
            }
            count = 0;
            base_block = inode_block;
            base_number = number[child];
        }
        let entry = DirEntry {
            offset: (refs[child] & 0xFFFF) as u16,
            inode_number: (i64::from(number[child]) - i64::from(base_number)) as i16,
            inode_type: entry_type(&nodes[child]),
            name,
        };
        entry.encode_into(&mut group);
        count += 1;
    }
    if count > 0 {
        len += emit(dirs, &group, count, base_block, base_number)?;
    }
    Ok(Listing { block, offset, size: len as u32 + DIR_SIZE_EXTRA, index })
}

/// Writes one directory header and its entries; returns the bytes written.
fn emit(
    dirs: &mut MetaWriter,
    group: &[u8],
    count: usize,
    block: u64,
    number: u32,
) -> Result<usize, SquashfsError> {
    let header = DirHeader { count: count as u32, start_block: block as u32, inode_number: number };
    dirs.put(&header.encode())?;
    dirs.put(group)?;
    Ok(DIR_HEADER_SIZE + group.len())
}

#[cfg(test)]
mod tests {
    use super::format::META_STORED;
    use super::*;
    use crate::test_data::noise;
    use flate2::{Decompress, FlushDecompress};

    /// Splits a metadata stream into its blocks' uncompressed bytes.
    fn blocks(mut stream: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !stream.is_empty() {
            let word = u16::from_le_bytes([stream[0], stream[1]]);
            let len = usize::from(word & !META_STORED);
            let body = &stream[2..2 + len];
            if word & META_STORED != 0 {
                out.push(body.to_vec());
            } else {
                let mut plain = Vec::with_capacity(METADATA);
                Decompress::new(true)
                    .decompress_vec(body, &mut plain, FlushDecompress::Finish)
                    .unwrap();
                out.push(plain);
            }
            stream = &stream[2 + len..];
        }
        out
    }

    #[test]
    fn metadata_blocks_are_8k_and_references_point_into_them() {
        let mut m = MetaWriter::new();
        let text: Vec<u8> = (0..20_000u32).map(|i| b"squashfs"[i as usize % 8]).collect();
        m.put(&text[..8191]).unwrap();
        assert_eq!(m.position(), (0, 8191));
        m.put(&text[8191..8192]).unwrap();
        // A full block is finished at once, so a reference never points past its end.
        let (first_end, offset) = m.position();
        assert_eq!(offset, 0);
        assert!(first_end > 2 && (first_end as usize) < 8194, "compressed: {first_end}");
        m.put(&text[8192..]).unwrap();
        let (stream, starts) = m.finish().unwrap();
        assert_eq!(starts, [0, u64::from(first_end), starts[2]]);
        let plain = blocks(&stream);
        assert_eq!(plain.iter().map(Vec::len).collect::<Vec<_>>(), [8192, 8192, 20_000 - 16_384]);
        assert_eq!(plain.concat(), text);
    }

    #[test]
    fn incompressible_metadata_is_stored() {
        let mut m = MetaWriter::new();
        let noise = noise(100, 1);
        m.put(&noise).unwrap();
        let (stream, _) = m.finish().unwrap();
        assert_eq!(u16::from_le_bytes([stream[0], stream[1]]), 100 | META_STORED);
        assert_eq!(&stream[2..], &noise[..]);
    }

    #[test]
    fn data_blocks_are_zlib_or_stored() {
        let mut deflate = Compress::new(flate2::Compression::new(LEVEL), true);
        let text = vec![b'a'; BLOCK];
        let done =
            deflate_block(&mut deflate, Job { seq: 0, data: text.clone(), spare: Vec::new() })
                .unwrap();
        assert!(!done.stored && done.bytes.len() < 1000);
        let mut plain = Vec::with_capacity(BLOCK);
        Decompress::new(true)
            .decompress_vec(&done.bytes, &mut plain, FlushDecompress::Finish)
            .unwrap();
        assert_eq!(plain, text);
        let noise = noise(BLOCK, 1);
        let done =
            deflate_block(&mut deflate, Job { seq: 1, data: noise.clone(), spare: Vec::new() })
                .unwrap();
        assert!(done.stored);
        assert_eq!(done.bytes, noise);
    }
}

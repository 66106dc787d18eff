//! An ext4 root filesystem written from a [`Tree`] with e2fsprogs: the tree is staged into a
//! scratch folder, `mke2fs -d` copies it in, and one `debugfs -w` pass then sets what staging
//! cannot carry or the host would leak (owners, modes, every timestamp, extended attributes).
//!
//! What each step pins, as measured with e2fsprogs 1.47.0:
//! - `mke2fs` reads only a config written here (`MKE2FS_CONFIG`, exact feature list), runs with
//!   an empty environment but `LC_ALL=C` (it sorts directories with `alphasort`, which follows the
//!   locale) and `E2FSPROGS_FAKE_TIME` (superblock times and every new inode's crtime), and gets
//!   `-U`, `-E hash_seed=` derived from the tree, `root_owner=0:0` (else the caller's uid),
//!   `no_copy_xattrs` (else SELinux labels or inherited ACLs of the staged copies) and
//!   `nodiscard,lazy_itable_init=0` (else whether the output's filesystem can punch holes
//!   decides the group descriptors' flags).
//! - Staged copies carry the host's ctime, atime, mtime, uid and mode; `debugfs` overwrites all
//!   of them by inode number. Numbers are known in advance: `mke2fs -d` walks directories
//!   depth first in bytewise name order and hands out inodes 12, 13, … in that order (11 is
//!   lost+found). Reading every directory back with `debugfs ls -p` checks that prediction
//!   and every fix-up before the image is returned.
//!
//! No journal, no reserved GDT blocks and no blocks reserved for root (`-m 0`): the image is a
//! read-only root (often under dm-verity), where a journal is never replayed and the
//! filesystem never grows in place; errors remount it read-only (`-e remount-ro`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_oci::digest::Sha256;
use kiln_oci::Digest;

use kiln_tree::host_file::{self, HostFileError, StreamError};
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, Device, Entry, EntryKind, Tree};
use kiln_tree::Epoch;
use rustix::fs::{FileType, Mode};

use crate::uuid::content_uuid;

const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const BLOCKS_PER_GROUP: u64 = 32_768;
/// Block groups whose bitmaps and inode tables `flex_bg` packs together (mke2fs's default).
const FLEX_GROUPS: u64 = 16;
const ROOT_INO: u64 = 2;
const LOST_FOUND_INO: u64 = 11;
/// Inode numbers up to lost+found are taken before the tree is copied in.
const FIRST_TREE_INO: u64 = 12;
const NAME_MAX: usize = 255;
/// The latest second ext4's 34-bit timestamps (256-byte inodes) can record, in 2446.
const MAX_TIME: i64 = (1 << 34) - (1 << 31) - 1;
// Every epoch fits, so the writer need not check one.
const _: () = assert!(Epoch::MAX.seconds() <= MAX_TIME);
/// Usable bytes of one extended attribute block (32-byte header, 4-byte end marker).
const XATTR_BLOCK_SPACE: usize = BLOCK as usize - 32 - 4;
/// Usable extended attribute bytes inside a 256-byte inode with 32 extra bytes.
const XATTR_INODE_SPACE: usize = INODE_SIZE as usize - 128 - 32 - 4 - 4;
/// Attribute name prefixes ext4 stores by index, as erofs accepts them.
const XATTR_PREFIXES: [&str; 5] =
    ["user.", "trusted.", "security.", "system.posix_acl_access", "system.posix_acl_default"];
/// The whole mke2fs configuration: no host `/etc/mke2fs.conf` setting reaches the image.
const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
[fs_types]
\text4 = {
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tkiln-root = {
\t\tblocksize = 4096
\t}
";

/// Why an ext4 image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("{tool} was not found on PATH, in /usr/sbin or in /sbin; install e2fsprogs")]
    ToolMissing { tool: &'static str },
    #[error(
        "this host's e2fsprogs is of more than one version ({found}): mke2fs and debugfs both \
         write the ext4 root, so the one version the lock records must be theirs and their \
         libext2fs's; install one e2fsprogs, or put one first on PATH"
    )]
    MixedVersions { found: String },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool { tool: &'static str, status: String, stderr: String },
    #[error("{path}: the name is {len} bytes long; ext4 allows at most {NAME_MAX}")]
    NameTooLong { path: ImagePath, len: usize },
    #[error(
        "{path} has extended attribute {name:?}; ext4 stores user.*, trusted.*, security.* \
         and POSIX ACL attributes without newlines or NUL in the name, all of one file's \
         fitting in one 4 KiB block"
    )]
    Xattr { path: ImagePath, name: String },
    #[error("{path}")]
    Host {
        path: ImagePath,
        #[source]
        source: HostFileError,
    },
    #[error("staging {path} at {}", staged.display())]
    Stage {
        path: ImagePath,
        staged: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "reading the image back, debugfs lists an entry of directory {path} as {found:?} where \
         {expected:?} was meant; this e2fsprogs does not build what 1.47 does"
    )]
    Verify { path: ImagePath, expected: String, found: String },
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Image {
    /// Image size in bytes (a whole number of 4 KiB blocks).
    pub size: u64,
    /// The filesystem UUID, derived from the tree and epoch.
    pub uuid: [u8; 16],
    /// Inodes the filesystem has (used and free).
    pub inodes: u64,
}

/// One inode the tree needs, in the order mke2fs allocates them.
struct Node<'a> {
    path: &'a ImagePath,
    entry: &'a Entry,
}

/// One directory as mke2fs will fill it: its entries in the order they are linked (the
/// root's lost+found, then name order) with their inodes.
struct Dir<'a> {
    path: ImagePath,
    ino: u64,
    parent: u64,
    entries: Vec<(&'a str, u64)>,
}

/// What mke2fs is asked to build, inode numbers included.
struct Plan<'a> {
    /// Inodes from [`FIRST_TREE_INO`] up.
    nodes: Vec<Node<'a>>,
    /// Every directory, the root first.
    dirs: Vec<Dir<'a>>,
}

/// Writes `tree` as an ext4 image at `out` (replaced if it exists), staging it in a scratch
/// folder under `work_dir` that is removed afterwards. Every timestamp is `epoch`.
pub fn write_ext4(
    tree: &Tree,
    epoch: Epoch,
    work_dir: &Path,
    out: &Path,
) -> Result<Ext4Image, Ext4Error> {
    let mke2fs = find_tool("mke2fs")?;
    let debugfs = find_tool("debugfs")?;
    let plan = plan(tree)?;
    let out = std::path::absolute(out).map_err(io_err(out))?;
    let scratch = tempfile::Builder::new()
        .prefix(".kiln-ext4-")
        .tempdir_in(work_dir)
        .map_err(io_err(work_dir))?;
    let tools = Tools { mke2fs, debugfs, dir: scratch.path(), fake_time: epoch.seconds().max(1) };
    let result = build(&tools, tree, &plan, epoch, &out);
    let removed = scratch.close().map_err(io_err(work_dir));
    if result.is_err() {
        // A half-written image must not be mistaken for a finished one.
        if let Err(e) = fs::remove_file(&out) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove the half-written image {}: {e}", out.display());
            }
        }
    }
    let image = result?;
    removed?;
    Ok(image)
}

/// The e2fsprogs tools and how they run: in the scratch folder, at the fake time.
struct Tools<'a> {
    mke2fs: PathBuf,
    debugfs: PathBuf,
    dir: &'a Path,
    /// `E2FSPROGS_FAKE_TIME`, which 0 would switch off.
    fake_time: i64,
}

/// Stages the tree, runs mke2fs and the debugfs fix-up, and checks the result.
fn build(
    tools: &Tools<'_>,
    tree: &Tree,
    plan: &Plan<'_>,
    epoch: Epoch,
    out: &Path,
) -> Result<Ext4Image, Ext4Error> {
    let (blocks, inodes) = geometry(plan);
    let listing = listing_digest(tree, epoch);
    let uuid = derive_uuid(&listing, b"uuid");
    let hash_seed = derive_uuid(&listing, b"hash seed");
    stage(tree, &tools.dir.join("root"))?;
    let conf = tools.dir.join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(io_err(&conf))?;
    File::create(out).and_then(|f| f.set_len(blocks * BLOCK)).map_err(io_err(out))?;
    let mut args: Vec<OsString> = [
        "-q",
        "-F",
        "-t",
        "ext4",
        "-T",
        "kiln-root",
        "-b",
        "4096",
        "-I",
        "256",
        "-m",
        "0",
        "-o",
        "Linux",
        "-e",
        "remount-ro",
    ]
    .map(OsString::from)
    .to_vec();
    let ext = format!(
        "hash_seed={},root_owner=0:0,no_copy_xattrs,nodiscard,lazy_itable_init=0",
        format_uuid(&hash_seed)
    );
    let more = ["-N".into(), inodes.to_string(), "-U".into(), format_uuid(&uuid), "-E".into(), ext];
    args.extend(more.map(OsString::from));
    args.extend(["-d".into(), "root".into(), out.into()]);
    tools.mke2fs(&args, &conf)?;

    let script = fixup_script(&plan.nodes, epoch, tools.dir)?;
    tools.debugfs(&["-w".into(), "-f".into(), script.into(), out.into()], false)?;
    verify(tools, out, plan)?;

    // mke2fs drops a last block group too small to be useful; the image ends with the
    // filesystem.
    let sb = read_superblock(out).map_err(io_err(out))?;
    let size = sb.blocks * BLOCK;
    if size < blocks * BLOCK {
        OpenOptions::new()
            .write(true)
            .open(out)
            .and_then(|f| f.set_len(size))
            .map_err(io_err(out))?;
    }
    Ok(Ext4Image { size, uuid, inodes: sb.inodes })
}

/// Maps an I/O error to one naming `file`.
fn io_err(file: &Path) -> impl FnOnce(io::Error) -> Ext4Error {
    let file = file.to_path_buf();
    move |source| Ext4Error::Io { file, source }
}

/// Inodes in the order `mke2fs -d` creates them: depth first, each directory's entries in
/// bytewise name order; a hard-link group takes its inode where the walk first meets it.
fn plan(tree: &Tree) -> Result<Plan<'_>, Ext4Error> {
    let mut children: HashMap<&str, Vec<(&str, &ImagePath)>> = HashMap::new();
    for (path, _) in tree.iter() {
        let (parent, name) = path.as_str().rsplit_once('/').unwrap_or(("", path.as_str()));
        if name.len() > NAME_MAX {
            return Err(Ext4Error::NameTooLong { path: path.clone(), len: name.len() });
        }
        children.entry(parent).or_default().push((name, path));
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }
    let mut nodes = Vec::new();
    let mut inos: HashMap<&ImagePath, u64> = HashMap::new();
    let mut dir_paths = vec![(ImagePath::root(), ROOT_INO, ROOT_INO)];
    let mut stack: Vec<(&ImagePath, u64)> = Vec::new();
    push_children(&mut stack, &children, "", ROOT_INO);
    while let Some((path, parent)) = stack.pop() {
        let Some(entry) = tree.get(path) else {
            continue;
        };
        let file = match &entry.kind {
            EntryKind::HardLink(target) => target,
            _ => path,
        };
        if let Some(&ino) = inos.get(file) {
            inos.insert(path, ino);
            continue;
        }
        let ino = FIRST_TREE_INO + nodes.len() as u64;
        inos.insert(file, ino);
        inos.insert(path, ino);
        nodes.push(Node { path: file, entry: tree.get(file).unwrap_or(entry) });
        if entry.kind == EntryKind::Dir {
            dir_paths.push((path.clone(), ino, parent));
            push_children(&mut stack, &children, path.as_str(), ino);
        }
    }
    let dirs = dir_paths
        .into_iter()
        .map(|(path, ino, parent)| {
            let list = children.get(path.as_str()).map_or(&[][..], |v| &v[..]);
            // mke2fs links lost+found into the root before it copies the tree in.
            let lost_found = path.is_root().then_some(("lost+found", LOST_FOUND_INO));
            let linked = list.iter().map(|(name, p)| (*name, inos.get(p).copied().unwrap_or(0)));
            Dir { path, ino, parent, entries: lost_found.into_iter().chain(linked).collect() }
        })
        .collect();
    for node in &nodes {
        check_xattrs(node)?;
    }
    Ok(Plan { nodes, dirs })
}

/// Queues a directory's entries so that they pop in name order, each with its parent's inode.
fn push_children<'a>(
    stack: &mut Vec<(&'a ImagePath, u64)>,
    children: &HashMap<&str, Vec<(&'a str, &'a ImagePath)>>,
    dir: &str,
    ino: u64,
) {
    let list = children.get(dir).map_or(&[][..], |v| &v[..]);
    stack.extend(list.iter().rev().map(|(_, p)| (*p, ino)));
}

/// Blocks and inodes for the filesystem: what the content needs, the metadata of enough
/// block groups to hold it, and a small margin for allocation that does not pack perfectly.
fn geometry(plan: &Plan<'_>) -> (u64, u64) {
    // lost+found is made with four blocks so that e2fsck can link files into it.
    let mut data: u64 = 4;
    let mut fragmented: u64 = 0;
    for dir in &plan.dirs {
        let blocks = dir_layout(&dir.entries).len() as u64;
        data += blocks;
        // Directory blocks are allocated between their files' data, so each may be an extent.
        if blocks > 4 {
            fragmented += blocks.div_ceil(340);
        }
    }
    for node in &plan.nodes {
        match &node.entry.kind {
            EntryKind::File(content) => {
                let blocks = content.size().div_ceil(BLOCK);
                data += blocks;
                // An extent covers at most 32768 blocks; more than four need an index block.
                if blocks.div_ceil(BLOCKS_PER_GROUP) + 1 > 4 {
                    fragmented += 1 + blocks / (BLOCKS_PER_GROUP * 340);
                }
            }
            EntryKind::Symlink(target) => data += u64::from(target.len() >= 60),
            EntryKind::Dir | EntryKind::HardLink(_) | EntryKind::Device(_) => {}
        }
        let xattrs: usize = node.entry.meta.xattrs.iter().map(|(n, v)| xattr_entry(n, v)).sum();
        if xattrs > XATTR_INODE_SPACE {
            data += 1;
        }
    }
    let used_inodes = FIRST_TREE_INO - 1 + plan.nodes.len() as u64;
    // A few spare inodes for e2fsck or a later writable mount; a read-only root needs none.
    let inodes = used_inodes + 16;
    let mut total = data + fragmented;
    for _ in 0..8 {
        let groups = total.div_ceil(BLOCKS_PER_GROUP).max(inodes.div_ceil(BLOCKS_PER_GROUP));
        let per_group = inodes.div_ceil(groups).next_multiple_of(16);
        let itable = per_group * INODE_SIZE / BLOCK;
        let gdt = (groups * 64).div_ceil(BLOCK);
        let backups = (0..groups).filter(|g| has_super(*g)).count() as u64;
        // flex_bg packs the two bitmaps of 16 groups together, keeping all 16 slots even when
        // fewer groups exist; then each group's inode table; sparse groups hold a superblock
        // and GDT copy; every such metadata run between data may split a file or directory.
        let bitmaps = 2 * FLEX_GROUPS * groups.div_ceil(FLEX_GROUPS);
        let meta = bitmaps + groups * itable + backups * (1 + gdt) + groups * 2;
        let needed = data + fragmented + meta;
        let margin = needed / 100 + 32;
        let mut next = needed + margin;
        // A last group shorter than its own metadata plus 50 blocks would be dropped.
        let rem = next % BLOCKS_PER_GROUP;
        if groups > 1 && rem != 0 && rem < 2 + itable + 1 + gdt + 64 {
            next += 2 + itable + 1 + gdt + 64 - rem;
        }
        if next == total {
            break;
        }
        total = next;
    }
    (total, inodes)
}

/// Whether block group `g` holds a superblock backup (`sparse_super`: 0, 1, powers of 3, 5, 7).
fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// Where libext2fs puts the entries of a linear directory, as indices into `entries` block
/// by block: "." and ".." open the first block, and each entry, in the order it is linked,
/// goes to the first block with room left (a short name may fill an earlier block's tail
/// after a longer one opened a new block). No entry spans blocks; each block ends in a
/// 12-byte checksum.
fn dir_layout(entries: &[(&str, u64)]) -> Vec<Vec<usize>> {
    let space = BLOCK as usize - 12;
    let mut blocks: Vec<(usize, Vec<usize>)> = vec![(24, Vec::new())];
    for (i, (name, _)) in entries.iter().enumerate() {
        let rec = (8 + name.len()).next_multiple_of(4);
        match blocks.iter_mut().find(|(used, _)| used + rec <= space) {
            Some((used, list)) => {
                *used += rec;
                list.push(i);
            }
            None => blocks.push((rec, vec![i])),
        }
    }
    blocks.into_iter().map(|(_, list)| list).collect()
}

/// Bytes one extended attribute takes in an inode or block (entry header, name, value).
fn xattr_entry(name: &str, value: &[u8]) -> usize {
    let suffix = XATTR_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name);
    16 + suffix.len().next_multiple_of(4) + value.len().next_multiple_of(4)
}

/// sha256 over a canonical listing of the tree: every path, kind, owner, mode, extended
/// attribute, content digest and link target, then the epoch. Lengths prefix every field.
fn listing_digest(tree: &Tree, epoch: Epoch) -> Digest {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(&mut h, b"kiln ext4 listing v1");
    field(&mut h, &epoch.seconds().to_le_bytes());
    for (path, entry) in tree.iter() {
        field(&mut h, path.as_str().as_bytes());
        let m = &entry.meta;
        let head = [m.mode.to_le_bytes(), m.uid.to_le_bytes(), m.gid.to_le_bytes()].concat();
        field(&mut h, &head);
        for (name, value) in &m.xattrs {
            field(&mut h, name.as_bytes());
            field(&mut h, value);
        }
        match &entry.kind {
            EntryKind::Dir => field(&mut h, b"dir"),
            EntryKind::File(content) => {
                field(&mut h, b"file");
                field(&mut h, content.digest().as_bytes());
            }
            EntryKind::Symlink(target) => {
                field(&mut h, b"symlink");
                field(&mut h, target.as_bytes());
            }
            EntryKind::HardLink(target) => {
                field(&mut h, b"hardlink");
                field(&mut h, target.as_str().as_bytes());
            }
            EntryKind::Device(device) => {
                field(&mut h, b"device");
                field(&mut h, device.describe().as_bytes());
            }
        }
    }
    h.finish()
}

/// An RFC 9562 version-8 (custom) UUID for one purpose, from the listing digest.
fn derive_uuid(listing: &Digest, purpose: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"kiln ext4 ");
    h.update(purpose);
    h.update(listing.as_bytes());
    content_uuid(h)
}

fn format_uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Copies the tree's structure and content under `root`. Modes, owners and times of the
/// copies do not matter (debugfs sets them), so they are whatever lets us write: 0700/0600.
fn stage(tree: &Tree, root: &Path) -> Result<(), Ext4Error> {
    let fail = |path: &ImagePath, staged: &Path| {
        let (path, staged) = (path.clone(), staged.to_path_buf());
        move |source| Ext4Error::Stage { path, staged, source }
    };
    let mkdir = |dir: &Path| {
        fs::create_dir(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
    };
    mkdir(root).map_err(fail(&ImagePath::root(), root))?;
    for (path, entry) in tree.iter() {
        let staged = root.join(path.as_str());
        match &entry.kind {
            EntryKind::Dir => mkdir(&staged).map_err(fail(path, &staged))?,
            EntryKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &staged).map_err(fail(path, &staged))?;
            }
            EntryKind::HardLink(target) => {
                fs::hard_link(root.join(target.as_str()), &staged).map_err(fail(path, &staged))?;
            }
            EntryKind::Device(device) => {
                // mke2fs copies the node with its numbers (making a device node takes root).
                let (major, minor) = device.major_minor();
                let file_type = match device {
                    Device::Char { .. } => FileType::CharacterDevice,
                    Device::Block { .. } => FileType::BlockDevice,
                    Device::Fifo => FileType::Fifo,
                };
                let dev = rustix::fs::makedev(major, minor);
                rustix::fs::mknodat(rustix::fs::CWD, &staged, file_type, Mode::RUSR, dev)
                    .map_err(|e| fail(path, &staged)(e.into()))?;
            }
            EntryKind::File(content) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&staged)
                    .map_err(fail(path, &staged))?;
                let mut w = BufWriter::with_capacity(256 * 1024, file);
                match content {
                    Content::Bytes(bytes) => w.write_all(bytes).map_err(fail(path, &staged))?,
                    Content::Host(host) => {
                        host_file::stream(host, |buf| w.write_all(buf)).map_err(|e| match e {
                            StreamError::Host(source) => {
                                Ext4Error::Host { path: path.clone(), source }
                            }
                            StreamError::Sink(source) => Ext4Error::Stage {
                                path: path.clone(),
                                staged: staged.clone(),
                                source,
                            },
                        })?;
                    }
                }
                w.into_inner().map_err(|e| e.into_error()).map_err(fail(path, &staged))?;
            }
        }
    }
    Ok(())
}

/// Writes the debugfs script (and one file per extended attribute value) into `dir`:
/// mode, owner and all four times of every inode, then its declared xattrs. Inodes are named
/// by number, so no path is ever quoted.
fn fixup_script(nodes: &[Node<'_>], epoch: Epoch, dir: &Path) -> Result<PathBuf, Ext4Error> {
    let values = dir.join("xattr");
    fs::create_dir(&values).map_err(io_err(&values))?;
    let path = dir.join("fixup.debugfs");
    let mut script = BufWriter::new(File::create(&path).map_err(io_err(&path))?);
    let mut value_files = 0u64;
    // mke2fs marks the directory hash signed or unsigned after the build machine's `char`
    // (signed on x86, unsigned on ARM); pin the x86 value so every machine writes the same
    // superblock. mke2fs -d builds no hashed (htree) directories, so no hash depends on it.
    let mut text = String::from("ssv flags 1\n");
    text.push_str(&inode_lines(ROOT_INO, 0o040_755, 0, 0, epoch));
    text.push_str(&inode_lines(LOST_FOUND_INO, 0o040_700, 0, 0, epoch));
    script.write_all(text.as_bytes()).map_err(io_err(&path))?;
    for (ino, node) in (FIRST_TREE_INO..).zip(nodes) {
        let m = &node.entry.meta;
        let mut text = inode_lines(ino, mode_of(node.entry), m.uid, m.gid, epoch);
        for (name, value) in &m.xattrs {
            let file = values.join(value_files.to_string());
            fs::write(&file, value).map_err(io_err(&file))?;
            let quoted = name.replace('"', "\"\"");
            text.push_str(&format!("ea_set -f xattr/{value_files} <{ino}> \"{quoted}\"\n"));
            value_files += 1;
        }
        script.write_all(text.as_bytes()).map_err(io_err(&path))?;
    }
    script.into_inner().map_err(|e| e.into_error()).map_err(io_err(&path))?;
    Ok(path)
}

/// The full `i_mode` of an entry: type bits and permissions (symlinks are always 0777).
fn mode_of(entry: &Entry) -> u32 {
    match entry.kind {
        EntryKind::Dir => 0o040_000 | (entry.meta.mode & 0o7777),
        EntryKind::Symlink(_) => 0o120_777,
        EntryKind::File(_) | EntryKind::HardLink(_) => 0o100_000 | (entry.meta.mode & 0o7777),
        EntryKind::Device(device) => device.type_bits() | (entry.meta.mode & 0o7777),
    }
}

/// Lists every directory back with `debugfs ls -p` and compares the text with what the plan
/// meant: names, inode numbers, types, modes, owners and sizes. This is what proves that
/// mke2fs numbered the inodes as predicted and that every fix-up landed.
fn verify(tools: &Tools<'_>, image: &Path, plan: &Plan<'_>) -> Result<(), Ext4Error> {
    let mut script = String::new();
    let mut expected = String::new();
    let mut starts: Vec<(usize, &ImagePath)> = Vec::new();
    let line = |text: &mut String, ino: u64, name: &str| {
        let (mode, uid, gid, size) = match ino {
            ROOT_INO => (0o040_755, 0, 0, None),
            LOST_FOUND_INO => (0o040_700, 0, 0, None),
            _ => {
                let index = ino.checked_sub(FIRST_TREE_INO).and_then(|i| usize::try_from(i).ok());
                let node = index.and_then(|i| plan.nodes.get(i));
                let Some(Node { entry, .. }) = node else {
                    return;
                };
                let size = match &entry.kind {
                    EntryKind::File(content) => Some(content.size()),
                    EntryKind::Symlink(target) => Some(target.len() as u64),
                    EntryKind::Device(_) => Some(0),
                    EntryKind::Dir | EntryKind::HardLink(_) => None,
                };
                (mode_of(entry), entry.meta.uid, entry.meta.gid, size)
            }
        };
        // debugfs prints owners with %d.
        let (uid, gid) = (uid as i32, gid as i32);
        text.push_str(&format!("/{ino}/{mode:06o}/{uid}/{gid}/{name}/"));
        match size {
            Some(size) => text.push_str(&format!("{size}/\n")),
            None => text.push_str("/\n"),
        }
    };
    for d in &plan.dirs {
        script.push_str(&format!("ls -p <{}>\n", d.ino));
        starts.push((expected.len(), &d.path));
        expected.push_str(&format!("debugfs: ls -p <{}>\n", d.ino));
        line(&mut expected, d.ino, ".");
        line(&mut expected, d.parent, "..");
        for i in dir_layout(&d.entries).into_iter().flatten() {
            let (name, ino) = d.entries[i];
            line(&mut expected, ino, name);
        }
        expected.push('\n');
    }
    let path = tools.dir.join("verify.debugfs");
    fs::write(&path, script).map_err(|source| Ext4Error::Io { file: path.clone(), source })?;
    let found = tools.debugfs(&["-f".into(), path.into(), image.into()], true)?;
    let Some(at) = found
        .iter()
        .zip(expected.as_bytes())
        .position(|(a, b)| a != b)
        .or((found.len() != expected.len()).then_some(found.len().min(expected.len())))
    else {
        return Ok(());
    };
    let path = starts
        .iter()
        .rev()
        .find(|(start, _)| *start <= at)
        .map_or(ImagePath::root(), |s| s.1.clone());
    let line_at = |text: &[u8]| {
        let from =
            text[..at.min(text.len())].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let to = text[from..].iter().position(|b| *b == b'\n').map_or(text.len(), |i| from + i);
        String::from_utf8_lossy(&text[from..to]).into_owned()
    };
    Err(Ext4Error::Verify { path, expected: line_at(expected.as_bytes()), found: line_at(&found) })
}

/// The debugfs commands that set one inode's mode, owner and four timestamps.
fn inode_lines(ino: u64, mode: u32, uid: u32, gid: u32, epoch: Epoch) -> String {
    let mut text = format!("sif <{ino}> mode 0{mode:o}\nsif <{ino}> uid {uid}\n");
    text.push_str(&format!("sif <{ino}> gid {gid}\n"));
    for field in ["atime", "mtime", "ctime", "crtime"] {
        text.push_str(&format!("sif <{ino}> {field} @{epoch}\n"));
    }
    text
}

/// Refuses attributes debugfs cannot name in a script line or ext4 cannot hold in one block.
fn check_xattrs(node: &Node<'_>) -> Result<(), Ext4Error> {
    let xattrs = &node.entry.meta.xattrs;
    let bad = |name: &str| Ext4Error::Xattr { path: node.path.clone(), name: name.to_string() };
    for name in xattrs.keys() {
        let known = match name.split_once('.') {
            Some(("user" | "trusted" | "security", rest)) => !rest.is_empty(),
            _ => name == "system.posix_acl_access" || name == "system.posix_acl_default",
        };
        if !known || name.contains(['\n', '\r', '\0']) || name.len() > NAME_MAX {
            return Err(bad(name));
        }
    }
    let total: usize = xattrs.iter().map(|(n, v)| xattr_entry(n, v)).sum();
    match xattrs.keys().last() {
        Some(name) if total > XATTR_BLOCK_SPACE => Err(bad(name)),
        _ => Ok(()),
    }
}

/// The version of the host's e2fsprogs, which decides the bytes of an ext4 root: the one
/// `mke2fs -V` and `debugfs -V` both print, with the libext2fs each runs on. Both tools write
/// the image, so a host whose two tools (or their libraries) are of different versions is
/// refused: one version in the lock must name everything that made the bytes.
pub fn e2fsprogs_version() -> Result<String, Ext4Error> {
    let mke2fs = tool_version("mke2fs")?;
    let debugfs = tool_version("debugfs")?;
    let parts = [&mke2fs, &debugfs];
    let agree = parts.iter().all(|part| {
        part.version == mke2fs.version
            && part.library.as_ref().is_none_or(|library| *library == mke2fs.version)
    });
    if agree {
        Ok(mke2fs.version)
    } else {
        Err(Ext4Error::MixedVersions {
            found: parts.iter().map(|part| part.to_string()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// What one e2fsprogs tool says it is.
struct ToolVersion {
    tool: &'static str,
    program: PathBuf,
    version: String,
    /// The libext2fs version it runs on, when it names one.
    library: Option<String>,
}

impl std::fmt::Display for ToolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({}", self.tool, self.version, self.program.display())?;
        if let Some(library) = &self.library {
            write!(f, ", libext2fs {library}")?;
        }
        f.write_str(")")
    }
}

/// Runs `TOOL -V`, which prints `TOOL 1.47.0 (5-Feb-2023)` and `Using EXT2FS Library version
/// 1.47.0` on stderr.
fn tool_version(tool: &'static str) -> Result<ToolVersion, Ext4Error> {
    let program = find_tool(tool)?;
    let mut cmd = Command::new(&program);
    cmd.arg("-V").env_clear().env("LC_ALL", "C").stdin(Stdio::null()).stdout(Stdio::null());
    cmd.stderr(Stdio::piped());
    let output = Tools::output(tool, &program, cmd)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let version = stderr
        .lines()
        .next()
        .and_then(|line| line.strip_prefix(tool))
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|v| output.status.success() && v.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .ok_or_else(|| Ext4Error::Tool {
            tool,
            status: output.status.to_string(),
            stderr: format!("no version in the output of `{tool} -V`: {}", stderr.trim()),
        })?;
    let library = stderr.lines().find_map(|line| {
        line.trim().strip_prefix("Using EXT2FS Library version ").map(|v| v.trim().to_string())
    });
    Ok(ToolVersion { tool, program, version, library })
}

/// Finds an e2fsprogs tool on PATH or in the sbin folders a non-root PATH often lacks.
fn find_tool(tool: &'static str) -> Result<PathBuf, Ext4Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .ok_or(Ext4Error::ToolMissing { tool })
}

impl Tools<'_> {
    /// Runs mke2fs with the configuration at `conf`.
    fn mke2fs(&self, args: &[OsString], conf: &Path) -> Result<(), Ext4Error> {
        let mut cmd = self.command(&self.mke2fs);
        cmd.args(args).env("MKE2FS_CONFIG", conf).stdout(Stdio::null());
        let output = Self::output("mke2fs", &self.mke2fs, cmd)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            let status = output.status.to_string();
            return Err(Ext4Error::Tool { tool: "mke2fs", status, stderr });
        }
        Ok(())
    }

    /// Runs a debugfs script on `image` (read-write with `-w` in `args`) and returns what it
    /// printed when `capture` asks for it. debugfs exits 0 even when commands fail, so any
    /// stderr line besides its version banner is a failure.
    fn debugfs(&self, args: &[OsString], capture: bool) -> Result<Vec<u8>, Ext4Error> {
        let mut cmd = self.command(&self.debugfs);
        cmd.args(args).stdout(if capture { Stdio::piped() } else { Stdio::null() });
        let output = Self::output("debugfs", &self.debugfs, cmd)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let complaints: Vec<&str> =
            stderr.lines().filter(|l| !l.is_empty() && !l.starts_with("debugfs 1.")).collect();
        if !output.status.success() || !complaints.is_empty() {
            return Err(Ext4Error::Tool {
                tool: "debugfs",
                status: output.status.to_string(),
                stderr: complaints.join("\n"),
            });
        }
        Ok(output.stdout)
    }

    /// A command in the scratch folder whose environment holds only what is pinned here.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("E2FSPROGS_FAKE_TIME", self.fake_time.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Waits for `cmd`, telling a missing program apart from other failures to start it.
    fn output(
        tool: &'static str,
        program: &Path,
        mut cmd: Command,
    ) -> Result<std::process::Output, Ext4Error> {
        cmd.output().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Ext4Error::ToolMissing { tool },
            _ => Ext4Error::Io { file: program.to_path_buf(), source },
        })
    }
}

/// The superblock fields the writer checks.
struct Superblock {
    inodes: u64,
    blocks: u64,
}

fn read_superblock(image: &Path) -> io::Result<Superblock> {
    let mut f = File::open(image)?;
    f.seek(SeekFrom::Start(1024))?;
    let mut sb = [0u8; 1024];
    f.read_exact(&mut sb)?;
    let u32_at =
        |at: usize| u64::from(u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]));
    Ok(Superblock {
        inodes: u32_at(0),
        // 64bit feature: the high half of the block count lives at 0x150.
        blocks: u32_at(4) | (u32_at(0x150) << 32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_tree::tree::Meta;

    fn p(s: &str) -> ImagePath {
        ImagePath::parse(s).unwrap()
    }

    fn put(t: &mut Tree, path: &str, kind: EntryKind) {
        t.insert(p(path), Entry { kind, meta: Meta::root(0o644) }).unwrap();
    }

    #[test]
    fn inodes_follow_a_depth_first_walk_in_name_order() {
        let mut t = Tree::new();
        put(&mut t, "/a-c", EntryKind::File(Content::Bytes(b"1".as_slice().into())));
        put(&mut t, "/a/b", EntryKind::File(Content::Bytes(b"2".as_slice().into())));
        put(&mut t, "/0", EntryKind::HardLink(p("/a/b")));
        put(&mut t, "/z", EntryKind::Symlink("a".into()));
        let plan = plan(&t).unwrap();
        let order: Vec<_> = plan.nodes.iter().map(|n| n.path.as_str().to_string()).collect();
        // "/0" sorts first but is a link to "/a/b", whose inode it takes.
        assert_eq!(order, ["0", "a", "a-c", "z"]);
        let root: Vec<_> = plan.dirs[0].entries.iter().map(|(n, i)| (n.to_string(), *i)).collect();
        let expected = [("lost+found", 11), ("0", 12), ("a", 13), ("a-c", 14), ("z", 15)]
            .map(|(n, i)| (n.into(), i));
        assert_eq!(root, expected);
        assert_eq!(plan.dirs[1].entries, [("b", 12)]);
        assert_eq!((plan.dirs[1].ino, plan.dirs[1].parent), (13, ROOT_INO));
    }

    #[test]
    fn directory_blocks_and_sparse_groups() {
        let names = |lens: &[usize]| lens.iter().map(|l| "n".repeat(*l)).collect::<Vec<_>>();
        let layout = |names: &[String]| {
            let entries: Vec<_> = names.iter().map(|n| (n.as_str(), 0)).collect();
            dir_layout(&entries)
        };
        assert_eq!(layout(&[]), [Vec::<usize>::new()]);
        assert_eq!(layout(&names(&[10; 100])).len(), 1);
        assert_eq!(layout(&names(&[255; 16])).len(), 2);
        // 15 names of 255 bytes (264 with their header) leave 100 bytes of block one: an
        // 80-byte name takes 88 of them, the next long one opens block two, and a 4-byte
        // name (12 bytes) goes back into the last 12 bytes of block one.
        let mut lens = vec![255; 15];
        lens.extend([80, 255, 4]);
        assert_eq!(layout(&names(&lens)), [(0..16).chain([17]).collect::<Vec<_>>(), vec![16]]);
        let sparse: Vec<u64> = (0..30).filter(|g| has_super(*g)).collect();
        assert_eq!(sparse, [0, 1, 3, 5, 7, 9, 25, 27]);
        assert_eq!(format_uuid(&[0xab; 16]), "abababab-abab-abab-abab-abababababab");
    }

    #[test]
    fn a_missing_tool_says_what_to_install() {
        let err = find_tool("kiln-no-such-e2fsprogs-tool").unwrap_err().to_string();
        assert!(err.contains("install e2fsprogs"), "{err}");
    }
}

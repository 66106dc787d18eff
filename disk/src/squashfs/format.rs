//! squashfs 4.0's on-disk structures, as the kernel's `squashfs_fs.h` declares them
//! (little-endian), for the subset kiln writes: zlib, no export table.
//!
//! Inodes are a common header followed by a body per type; the bodies that end in a list
//! (block sizes, a symlink target, directory index entries) append it in `encode_into`.

use crate::record::Record;

const MAGIC: u32 = 0x7371_7368;
/// Data block size.
pub(super) const BLOCK: usize = 128 * 1024;
const BLOCK_LOG: u16 = 17;
/// Uncompressed size of a metadata block.
pub(super) const METADATA: usize = 8192;
pub(super) const SUPERBLOCK_SIZE: usize = 96;
const VERSION_MAJOR: u16 = 4;
const VERSION_MINOR: u16 = 0;
const COMPRESSION_ZLIB: u16 = 1;
/// Superblock flags: identical files share data; tails of large files go to fragments too.
pub(super) const FLAG_DUPLICATES: u16 = 0x0040;
pub(super) const FLAG_ALWAYS_FRAGMENTS: u16 = 0x0020;
pub(super) const FLAG_NO_XATTRS: u16 = 0x0200;
/// Marks a data block's size word as stored (not compressed).
const DATA_STORED: u32 = 1 << 24;
/// Marks a metadata block's length word as stored.
pub(super) const META_STORED: u16 = 0x8000;
/// No fragment, no xattrs.
pub(super) const NONE32: u32 = u32::MAX;
/// No table.
pub(super) const NONE64: u64 = u64::MAX;
/// Longest name a directory entry holds.
pub(super) const NAME_MAX: usize = 256;
/// Entries one directory header may cover.
pub(super) const DIR_COUNT: usize = 256;
pub(super) const DIR_HEADER_SIZE: usize = 12;
/// A directory entry without its name.
pub(super) const DIR_ENTRY_SIZE: usize = 8;
/// What squashfs adds to a directory listing's length to give its size.
pub(super) const DIR_SIZE_EXTRA: u32 = 3;

// Inode types: basic, then extended (with xattrs, or fields too large for the basic form).
pub(super) const T_DIR: u16 = 1;
pub(super) const T_FILE: u16 = 2;
pub(super) const T_SYMLINK: u16 = 3;
pub(super) const T_BLKDEV: u16 = 4;
pub(super) const T_CHRDEV: u16 = 5;
pub(super) const T_FIFO: u16 = 6;
pub(super) const T_LDIR: u16 = 8;
pub(super) const T_LFILE: u16 = 9;
pub(super) const T_LSYMLINK: u16 = 10;
pub(super) const T_LBLKDEV: u16 = 11;
pub(super) const T_LCHRDEV: u16 = 12;
pub(super) const T_LFIFO: u16 = 13;

/// Xattr name prefixes stored as a type number.
pub(super) const XATTR_PREFIXES: [(&str, u16); 3] =
    [("user.", 0), ("trusted.", 1), ("security.", 2)];

/// `struct squashfs_super_block`, at offset 0.
pub(super) struct Superblock {
    pub(super) inodes: u32,
    pub(super) mkfs_time: u32,
    pub(super) fragments: u32,
    pub(super) flags: u16,
    pub(super) no_ids: u16,
    /// Reference to the root inode.
    pub(super) root_inode: u64,
    pub(super) bytes_used: u64,
    pub(super) id_table_start: u64,
    pub(super) xattr_id_table_start: u64,
    pub(super) inode_table_start: u64,
    pub(super) directory_table_start: u64,
    pub(super) fragment_table_start: u64,
}

impl Superblock {
    pub(super) fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        Record::new()
            .le32(MAGIC)
            .le32(self.inodes)
            .le32(self.mkfs_time)
            .le32(BLOCK as u32)
            .le32(self.fragments)
            .le16(COMPRESSION_ZLIB)
            .le16(BLOCK_LOG)
            .le16(self.flags)
            .le16(self.no_ids)
            .le16(VERSION_MAJOR)
            .le16(VERSION_MINOR)
            .le64(self.root_inode)
            .le64(self.bytes_used)
            .le64(self.id_table_start)
            .le64(self.xattr_id_table_start)
            .le64(self.inode_table_start)
            .le64(self.directory_table_start)
            .le64(self.fragment_table_start)
            .le64(NONE64) // lookup (export) table
            .finish()
    }
}

/// A reference to metadata (an inode, a directory listing, an xattr set): where its block
/// starts in its table and its offset in the block's uncompressed bytes.
pub(super) fn metadata_reference(block: u32, offset: u16) -> u64 {
    (u64::from(block) << 16) | u64::from(offset)
}

/// An entry of the index after a lookup table (id, fragment, xattr id): where one of its
/// metadata blocks lies in the image.
pub(super) fn table_index_entry(block_position: u64) -> [u8; 8] {
    block_position.to_le_bytes()
}

/// An id table entry: a uid or gid that inodes refer to by index.
pub(super) fn id_entry(id: u32) -> [u8; 4] {
    id.to_le_bytes()
}

/// The length word before a metadata block.
pub(super) fn metadata_header(len: u16, stored: bool) -> [u8; 2] {
    (len | if stored { META_STORED } else { 0 }).to_le_bytes()
}

/// The size word of a data or fragment block: its length on disk, flagged when stored.
pub(super) fn data_block_size(len: u32, stored: bool) -> u32 {
    len | if stored { DATA_STORED } else { 0 }
}

/// `struct squashfs_base_inode`, the header of every inode.
pub(super) struct InodeHeader {
    pub(super) inode_type: u16,
    /// Permission bits (the type comes from `inode_type`).
    pub(super) mode: u16,
    /// Indexes into the id table.
    pub(super) uid: u16,
    pub(super) guid: u16,
    pub(super) mtime: u32,
    pub(super) inode_number: u32,
}

impl InodeHeader {
    pub(super) fn encode(&self) -> [u8; 16] {
        Record::new()
            .le16(self.inode_type)
            .le16(self.mode)
            .le16(self.uid)
            .le16(self.guid)
            .le32(self.mtime)
            .le32(self.inode_number)
            .finish()
    }
}

/// `struct squashfs_dir_inode` (after the header).
pub(super) struct DirInode {
    pub(super) start_block: u32,
    pub(super) nlink: u32,
    pub(super) file_size: u16,
    pub(super) offset: u16,
    pub(super) parent_inode: u32,
}

impl DirInode {
    pub(super) fn encode(&self) -> [u8; 16] {
        Record::new()
            .le32(self.start_block)
            .le32(self.nlink)
            .le16(self.file_size)
            .le16(self.offset)
            .le32(self.parent_inode)
            .finish()
    }
}

/// `struct squashfs_ldir_inode` (after the header), followed by its index entries.
pub(super) struct LdirInode<'a> {
    pub(super) nlink: u32,
    pub(super) file_size: u32,
    pub(super) start_block: u32,
    pub(super) parent_inode: u32,
    pub(super) offset: u16,
    pub(super) xattr: u32,
    pub(super) index: &'a [DirIndex],
}

impl LdirInode<'_> {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let fixed: [u8; 24] = Record::new()
            .le32(self.nlink)
            .le32(self.file_size)
            .le32(self.start_block)
            .le32(self.parent_inode)
            .le16(self.index.len() as u16)
            .le16(self.offset)
            .le32(self.xattr)
            .finish();
        out.extend_from_slice(&fixed);
        for entry in self.index {
            entry.encode_into(out);
        }
    }
}

/// `struct squashfs_dir_index`: where a directory listing can be entered part way, by the
/// first name after that point.
pub(super) struct DirIndex {
    /// Offset in the listing.
    pub(super) index: u32,
    /// The directory table block holding that point.
    pub(super) start_block: u32,
    pub(super) name: Vec<u8>,
}

impl DirIndex {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let fixed: [u8; 12] = Record::new()
            .le32(self.index)
            .le32(self.start_block)
            .le32(self.name.len() as u32 - 1)
            .finish();
        out.extend_from_slice(&fixed);
        out.extend_from_slice(&self.name);
    }
}

/// `struct squashfs_reg_inode` (after the header), followed by a size word per whole block.
pub(super) struct RegInode<'a> {
    pub(super) start_block: u32,
    pub(super) fragment: u32,
    pub(super) offset: u32,
    pub(super) file_size: u32,
    pub(super) block_list: &'a [u32],
}

impl RegInode<'_> {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let fixed: [u8; 16] = Record::new()
            .le32(self.start_block)
            .le32(self.fragment)
            .le32(self.offset)
            .le32(self.file_size)
            .finish();
        out.extend_from_slice(&fixed);
        block_list(out, self.block_list);
    }
}

/// `struct squashfs_lreg_inode` (after the header), followed by a size word per whole block.
pub(super) struct LregInode<'a> {
    pub(super) start_block: u64,
    pub(super) file_size: u64,
    /// Bytes stored as holes.
    pub(super) sparse: u64,
    pub(super) nlink: u32,
    pub(super) fragment: u32,
    pub(super) offset: u32,
    pub(super) xattr: u32,
    pub(super) block_list: &'a [u32],
}

impl LregInode<'_> {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let fixed: [u8; 40] = Record::new()
            .le64(self.start_block)
            .le64(self.file_size)
            .le64(self.sparse)
            .le32(self.nlink)
            .le32(self.fragment)
            .le32(self.offset)
            .le32(self.xattr)
            .finish();
        out.extend_from_slice(&fixed);
        block_list(out, self.block_list);
    }
}

fn block_list(out: &mut Vec<u8>, sizes: &[u32]) {
    for size in sizes {
        out.extend_from_slice(&size.to_le_bytes());
    }
}

/// `struct squashfs_symlink_inode` (after the header): the target follows, then, in the
/// extended form, the xattr index.
pub(super) struct SymlinkInode<'a> {
    pub(super) nlink: u32,
    pub(super) symlink: &'a [u8],
    /// `Some` for the extended form.
    pub(super) xattr: Option<u32>,
}

impl SymlinkInode<'_> {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let fixed: [u8; 8] =
            Record::new().le32(self.nlink).le32(self.symlink.len() as u32).finish();
        out.extend_from_slice(&fixed);
        out.extend_from_slice(self.symlink);
        if let Some(xattr) = self.xattr {
            out.extend_from_slice(&xattr.to_le_bytes());
        }
    }
}

/// `struct squashfs_dev_inode` and `squashfs_ipc_inode` (after the header), basic or
/// extended (`squashfs_ldev_inode`, `squashfs_lipc_inode`).
pub(super) struct DeviceInode {
    pub(super) nlink: u32,
    /// The encoded device number; `None` for a FIFO.
    pub(super) rdev: Option<u32>,
    /// `Some` for the extended form.
    pub(super) xattr: Option<u32>,
}

impl DeviceInode {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nlink.to_le_bytes());
        if let Some(rdev) = self.rdev {
            out.extend_from_slice(&rdev.to_le_bytes());
        }
        if let Some(xattr) = self.xattr {
            out.extend_from_slice(&xattr.to_le_bytes());
        }
    }
}

/// `struct squashfs_dir_header`: the entries that follow share an inode block and a base
/// inode number.
pub(super) struct DirHeader {
    /// Entries that follow, 1 to [`DIR_COUNT`].
    pub(super) count: u32,
    /// The inode table block of their inodes.
    pub(super) start_block: u32,
    pub(super) inode_number: u32,
}

impl DirHeader {
    pub(super) fn encode(&self) -> [u8; DIR_HEADER_SIZE] {
        Record::new().le32(self.count - 1).le32(self.start_block).le32(self.inode_number).finish()
    }
}

/// `struct squashfs_dir_entry`, followed by the name (1 to [`NAME_MAX`] bytes).
pub(super) struct DirEntry<'a> {
    /// The inode's offset in its metadata block.
    pub(super) offset: u16,
    /// Its inode number less the header's.
    pub(super) inode_number: i16,
    /// Its basic inode type.
    pub(super) inode_type: u16,
    pub(super) name: &'a [u8],
}

impl DirEntry<'_> {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        let fixed: [u8; DIR_ENTRY_SIZE] = Record::new()
            .le16(self.offset)
            .bytes(&self.inode_number.to_le_bytes())
            .le16(self.inode_type)
            .le16(self.name.len() as u16 - 1)
            .finish();
        out.extend_from_slice(&fixed);
        out.extend_from_slice(self.name);
    }
}

/// `struct squashfs_fragment_entry`.
pub(super) struct FragmentEntry {
    pub(super) start_block: u64,
    /// As [`data_block_size`] gives it.
    pub(super) size: u32,
}

impl FragmentEntry {
    pub(super) fn encode(&self) -> [u8; 16] {
        Record::new().le64(self.start_block).le32(self.size).le32(0).finish()
    }
}

/// One key/value pair of an xattr set (`struct squashfs_xattr_entry`, the name, then
/// `struct squashfs_xattr_val` and the value). The caller checks that the name fits 16 bits
/// and the value 32.
pub(super) struct XattrPair<'a> {
    /// Prefix type from [`XATTR_PREFIXES`].
    pub(super) kind: u16,
    /// The name without its prefix.
    pub(super) name: &'a [u8],
    pub(super) value: &'a [u8],
}

impl XattrPair<'_> {
    pub(super) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(self.name);
        out.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        out.extend_from_slice(self.value);
    }
}

/// `struct squashfs_xattr_id`: where one inode xattr set lies.
pub(super) struct XattrId {
    /// Reference into the key/value metadata blocks.
    pub(super) xattr: u64,
    pub(super) count: u32,
    /// Bytes of its pairs.
    pub(super) size: u32,
}

impl XattrId {
    pub(super) fn encode(&self) -> [u8; 16] {
        Record::new().le64(self.xattr).le32(self.count).le32(self.size).finish()
    }
}

/// `struct squashfs_xattr_id_table`, followed by the positions of the xattr id blocks.
pub(super) struct XattrIdTable {
    /// Where the key/value metadata blocks start.
    pub(super) xattr_table_start: u64,
    pub(super) xattr_ids: u32,
}

impl XattrIdTable {
    pub(super) fn encode(&self) -> [u8; 16] {
        Record::new().le64(self.xattr_table_start).le32(self.xattr_ids).le32(0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_fields_sit_at_the_kernels_offsets() {
        let sb = Superblock {
            inodes: 1,
            mkfs_time: 2,
            fragments: 3,
            flags: 4,
            no_ids: 5,
            root_inode: 6,
            bytes_used: 7,
            id_table_start: 8,
            xattr_id_table_start: 9,
            inode_table_start: 10,
            directory_table_start: 11,
            fragment_table_start: 12,
        }
        .encode();
        assert_eq!(sb[0..4], *b"hsqs");
        assert_eq!(sb[4..20], [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0]);
        assert_eq!(sb[20..32], [1, 0, 17, 0, 4, 0, 5, 0, 4, 0, 0, 0]);
        for (i, want) in (6u64..=12).enumerate() {
            assert_eq!(sb[32 + 8 * i..40 + 8 * i], want.to_le_bytes(), "field {i}");
        }
        assert_eq!(sb[88..96], [0xFF; 8]);
    }

    #[test]
    fn inode_header_and_bodies_sit_at_the_kernels_offsets() {
        let h = InodeHeader {
            inode_type: T_LFILE,
            mode: 0o644,
            uid: 1,
            guid: 2,
            mtime: 3,
            inode_number: 4,
        };
        assert_eq!(h.encode(), [9, 0, 0xA4, 1, 1, 0, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        let d = DirInode { start_block: 1, nlink: 2, file_size: 3, offset: 4, parent_inode: 5 };
        assert_eq!(d.encode(), [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 4, 0, 5, 0, 0, 0]);

        let index = [DirIndex { index: 7, start_block: 8, name: b"ab".to_vec() }];
        let l = LdirInode {
            nlink: 1,
            file_size: 2,
            start_block: 3,
            parent_inode: 4,
            offset: 5,
            xattr: 6,
            index: &index,
        };
        let mut b = Vec::new();
        l.encode_into(&mut b);
        assert_eq!(
            b[..24],
            [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1, 0, 5, 0, 6, 0, 0, 0]
        );
        assert_eq!(b[24..], [7, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, b'a', b'b']);

        let mut b = Vec::new();
        RegInode { start_block: 1, fragment: 2, offset: 3, file_size: 4, block_list: &[5] }
            .encode_into(&mut b);
        assert_eq!(b, [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]);

        let mut b = Vec::new();
        let l = LregInode {
            start_block: 1,
            file_size: 2,
            sparse: 3,
            nlink: 4,
            fragment: 5,
            offset: 6,
            xattr: 7,
            block_list: &[8],
        };
        l.encode_into(&mut b);
        let want: Vec<u8> = [1u64, 2, 3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain([4u32, 5, 6, 7, 8].iter().flat_map(|v| v.to_le_bytes()))
            .collect();
        assert_eq!(b, want);

        let mut b = Vec::new();
        SymlinkInode { nlink: 1, symlink: b"/x", xattr: Some(9) }.encode_into(&mut b);
        assert_eq!(b, [1, 0, 0, 0, 2, 0, 0, 0, b'/', b'x', 9, 0, 0, 0]);
        let mut b = Vec::new();
        DeviceInode { nlink: 1, rdev: Some(0x0801), xattr: None }.encode_into(&mut b);
        assert_eq!(b, [1, 0, 0, 0, 1, 8, 0, 0]);
        let mut b = Vec::new();
        DeviceInode { nlink: 1, rdev: None, xattr: Some(2) }.encode_into(&mut b);
        assert_eq!(b, [1, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn directory_and_table_entries_sit_at_the_kernels_offsets() {
        let h = DirHeader { count: 3, start_block: 0x2000, inode_number: 7 };
        assert_eq!(h.encode(), [2, 0, 0, 0, 0, 0x20, 0, 0, 7, 0, 0, 0]);
        let mut b = Vec::new();
        DirEntry { offset: 0x10, inode_number: -1, inode_type: T_DIR, name: b"etc" }
            .encode_into(&mut b);
        assert_eq!(b, [0x10, 0, 0xFF, 0xFF, 1, 0, 2, 0, b'e', b't', b'c']);
        let f = FragmentEntry { start_block: 96, size: data_block_size(100, true) };
        assert_eq!(f.encode(), [96, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(metadata_header(100, true), [100, 0x80]);
        assert_eq!(metadata_header(100, false), [100, 0]);
        assert_eq!(metadata_reference(0x0102_0304, 0x0506), 0x0102_0304_0506);
        assert_eq!(table_index_entry(0x0102), [2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(id_entry(70_000), [0x70, 0x11, 1, 0]);
        let x = XattrId { xattr: 0x0001_0002, count: 3, size: 4 };
        assert_eq!(x.encode(), [2, 0, 1, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        let t = XattrIdTable { xattr_table_start: 5, xattr_ids: 6 };
        assert_eq!(t.encode(), [5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
        let mut b = Vec::new();
        XattrPair { kind: 2, name: b"se", value: b"v" }.encode_into(&mut b);
        assert_eq!(b, [2, 0, 2, 0, b's', b'e', 1, 0, 0, 0, b'v']);
    }
}

//! erofs's on-disk structures, as the kernel's `erofs_fs.h` declares them (little-endian),
//! for the subset kiln writes: uncompressed, no shared xattrs, no extra devices.

use crate::record::Record;

/// Block size: kiln writes 4 KiB blocks only.
pub(super) const BLOCK: u64 = 4096;
const BLOCK_BITS: u8 = 12;
/// The superblock's offset in block 0.
pub(super) const SUPER_OFFSET: usize = 1024;
const SUPERBLOCK_SIZE: usize = 128;
const MAGIC: u32 = 0xE0F5_E1E2;
/// Inodes sit on 32-byte slots; an inode's nid is its offset in the inode area over this.
pub(super) const INODE_SLOT: u64 = 32;
pub(super) const COMPACT_INODE_SIZE: usize = 32;
pub(super) const EXTENDED_INODE_SIZE: usize = 64;
/// `i_format` bit 0: the extended (64-byte) inode.
const INODE_EXTENDED: u16 = 1;
/// `i_format` bits 1..3: the data layout.
const LAYOUT_SHIFT: u16 = 1;
pub(super) const DIRENT_SIZE: usize = 12;
pub(super) const NAME_MAX: usize = 255;
pub(super) const XATTR_IBODY_HEADER_SIZE: usize = 12;
/// Entries of the inline xattr area are aligned to this.
pub(super) const XATTR_ALIGN: usize = 4;

/// How an inode's data is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DataLayout {
    /// Whole blocks from `raw_blkaddr`.
    FlatPlain = 0,
    /// Whole blocks from `raw_blkaddr`, then a tail stored right after the inode.
    FlatInline = 2,
}

/// Directory entry file types.
pub(super) const FT_REG: u8 = 1;
pub(super) const FT_DIR: u8 = 2;
pub(super) const FT_CHRDEV: u8 = 3;
pub(super) const FT_BLKDEV: u8 = 4;
pub(super) const FT_FIFO: u8 = 5;
pub(super) const FT_SYMLINK: u8 = 7;

pub(super) const S_IFREG: u32 = 0o100_000;
pub(super) const S_IFDIR: u32 = 0o040_000;
pub(super) const S_IFLNK: u32 = 0o120_000;

/// Xattr name prefixes stored as an index, with the index; the ACL names are whole names.
pub(super) const XATTR_PREFIXES: [(&str, u8); 5] = [
    ("user.", 1),
    ("system.posix_acl_access", 2),
    ("system.posix_acl_default", 3),
    ("trusted.", 4),
    ("security.", 6),
];

/// `struct erofs_super_block`, at byte 1024 of block 0. Fields kiln does not use (checksum,
/// features, compression, extra devices, xattr prefixes, packed inode) are zero.
pub(super) struct Superblock {
    pub(super) root_nid: u16,
    pub(super) inodes: u64,
    /// Every inode's mtime (compact inodes have none of their own).
    pub(super) build_time: u64,
    pub(super) blocks: u32,
    /// The block where the inode area starts.
    pub(super) meta_blkaddr: u32,
    pub(super) uuid: [u8; 16],
}

impl Superblock {
    pub(super) fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        Record::new()
            .le32(MAGIC)
            .le32(0) // checksum
            .le32(0) // compatible features
            .u8(BLOCK_BITS)
            .u8(0) // superblock extension slots
            .le16(self.root_nid)
            .le64(self.inodes)
            .le64(self.build_time)
            .le32(0) // build time nanoseconds
            .le32(self.blocks)
            .le32(self.meta_blkaddr)
            .le32(0) // xattr block address
            .bytes(&self.uuid)
            .zeros(16) // volume name
            .le32(0) // incompatible features
            .zeros(SUPERBLOCK_SIZE - 84)
            .finish()
    }
}

/// An inode, written compact (`struct erofs_inode_compact`) or extended
/// (`struct erofs_inode_extended`).
pub(super) struct Inode {
    pub(super) layout: DataLayout,
    /// Size of the inline xattr area in 4-byte units beyond its 12-byte header (0: none).
    pub(super) xattr_icount: u16,
    pub(super) mode: u16,
    pub(super) nlink: u32,
    pub(super) size: u64,
    /// The first data block, or a device node's encoded device number.
    pub(super) raw_blkaddr: u32,
    pub(super) ino: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Extended only.
    pub(super) mtime: u64,
}

impl Inode {
    /// The compact form; the caller checks that owner, link count and size fit it.
    pub(super) fn encode_compact(&self) -> [u8; COMPACT_INODE_SIZE] {
        Record::new()
            .le16((self.layout as u16) << LAYOUT_SHIFT)
            .le16(self.xattr_icount)
            .le16(self.mode)
            .le16(self.nlink as u16)
            .le32(self.size as u32)
            .le32(0) // reserved
            .le32(self.raw_blkaddr)
            .le32(self.ino)
            .le16(self.uid as u16)
            .le16(self.gid as u16)
            .le32(0) // reserved
            .finish()
    }

    pub(super) fn encode_extended(&self) -> [u8; EXTENDED_INODE_SIZE] {
        Record::new()
            .le16(INODE_EXTENDED | ((self.layout as u16) << LAYOUT_SHIFT))
            .le16(self.xattr_icount)
            .le16(self.mode)
            .le16(0) // reserved
            .le64(self.size)
            .le32(self.raw_blkaddr)
            .le32(self.ino)
            .le32(self.uid)
            .le32(self.gid)
            .le64(self.mtime)
            .le32(0) // mtime nanoseconds
            .le32(self.nlink)
            .zeros(16) // reserved
            .finish()
    }
}

/// `struct erofs_dirent`: the entries of a directory block come first, then their names
/// (not NUL-terminated), each entry pointing at its name's offset in the block.
pub(super) struct Dirent {
    pub(super) nid: u64,
    pub(super) nameoff: u16,
    pub(super) file_type: u8,
}

impl Dirent {
    pub(super) fn encode(&self) -> [u8; DIRENT_SIZE] {
        Record::new().le64(self.nid).le16(self.nameoff).u8(self.file_type).u8(0).finish()
    }
}

/// `struct erofs_xattr_ibody_header`, which starts an inode's inline xattr area: no shared
/// xattrs.
pub(super) fn xattr_ibody_header() -> [u8; XATTR_IBODY_HEADER_SIZE] {
    Record::new()
        .le32(0) // name filter
        .u8(0) // shared xattr count
        .zeros(7)
        .finish()
}

/// `struct erofs_xattr_entry`: followed by the name (without its indexed prefix) and the
/// value, padded to [`XATTR_ALIGN`].
pub(super) struct XattrEntry {
    pub(super) name_len: u8,
    pub(super) name_index: u8,
    pub(super) value_size: u16,
}

impl XattrEntry {
    pub(super) fn encode(&self) -> [u8; 4] {
        Record::new().u8(self.name_len).u8(self.name_index).le16(self.value_size).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode() -> Inode {
        Inode {
            layout: DataLayout::FlatInline,
            xattr_icount: 3,
            mode: 0o100_644,
            nlink: 2,
            size: 5000,
            raw_blkaddr: 9,
            ino: 7,
            uid: 1000,
            gid: 100,
            mtime: 0x0102_0304,
        }
    }

    #[test]
    fn superblock_fields_sit_at_the_kernels_offsets() {
        let sb = Superblock {
            root_nid: 0,
            inodes: 5,
            build_time: 0x0102_0304,
            blocks: 0x20,
            meta_blkaddr: 1,
            uuid: [0xab; 16],
        }
        .encode();
        assert_eq!(sb.len(), 128);
        assert_eq!(sb[0..4], [0xE2, 0xE1, 0xF5, 0xE0]);
        assert_eq!(sb[12], 12);
        assert_eq!(sb[16..24], [5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(sb[24..32], [4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(sb[36..44], [0x20, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(sb[48..64], [0xab; 16]);
        assert_eq!(sb.iter().filter(|b| **b != 0).count(), 4 + 1 + 1 + 4 + 2 + 16);
    }

    #[test]
    fn compact_inode_fields_sit_at_the_kernels_offsets() {
        let i = inode().encode_compact();
        assert_eq!(
            i,
            [
                4, 0, 3, 0, 0xa4, 0x81, 2, 0, 0x88, 0x13, 0, 0, 0, 0, 0, 0, //
                9, 0, 0, 0, 7, 0, 0, 0, 0xe8, 3, 100, 0, 0, 0, 0, 0,
            ]
        );
    }

    #[test]
    fn extended_inode_fields_sit_at_the_kernels_offsets() {
        let i = inode().encode_extended();
        assert_eq!(i.len(), 64);
        assert_eq!(i[0..8], [5, 0, 3, 0, 0xa4, 0x81, 0, 0]);
        assert_eq!(i[8..16], [0x88, 0x13, 0, 0, 0, 0, 0, 0]);
        assert_eq!(i[16..32], [9, 0, 0, 0, 7, 0, 0, 0, 0xe8, 3, 0, 0, 100, 0, 0, 0]);
        assert_eq!(i[32..48], [4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(i[48..], [0; 16]);
    }

    #[test]
    fn dirent_and_xattr_headers_sit_at_the_kernels_offsets() {
        let d = Dirent { nid: 0x0102, nameoff: 36, file_type: FT_DIR }.encode();
        assert_eq!(d, [2, 1, 0, 0, 0, 0, 0, 0, 36, 0, 2, 0]);
        assert_eq!(xattr_ibody_header(), [0; 12]);
        let x = XattrEntry { name_len: 3, name_index: 6, value_size: 0x0102 }.encode();
        assert_eq!(x, [3, 6, 2, 1]);
    }
}

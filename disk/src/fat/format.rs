//! FAT's on-disk structures, as the Microsoft FAT specification (fatgen103) declares them
//! (little-endian): the boot sector with its BPB, the FAT32 FSInfo sector, short and long
//! directory entries, DOS timestamps and FAT entries.

use kiln_tree::Epoch;

use crate::record::Record;

pub(super) const SECTOR: u64 = 512;
/// `BPB_Media` and the low byte of FAT entry 0: a fixed disk.
pub(super) const MEDIA: u8 = 0xF8;
pub(super) const NUM_FATS: u64 = 2;
pub(super) const DIRENT_SIZE: usize = 32;
/// UTF-16 units of a name one long entry holds.
pub(super) const LFN_UNITS: usize = 13;
pub(super) const ATTR_DIR: u8 = 0x10;
pub(super) const ATTR_ARCHIVE: u8 = 0x20;
pub(super) const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;
/// Marks the long entry holding a name's last part (stored first).
const LFN_LAST: u8 = 0x40;
const OEM_NAME: [u8; 8] = *b"MSWIN4.1";
/// `BS_DrvNum`: a hard disk.
const DRIVE_HARD_DISK: u8 = 0x80;
/// `BS_BootSig`: the volume id, label and type name follow.
const EXTENDED_BOOT_SIGNATURE: u8 = 0x29;
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// The FAT32 root directory's first cluster.
pub(super) const FAT32_ROOT_CLUSTER: u32 = 2;
/// Sectors of the FAT32 FSInfo sector and of the boot sector's backup (followed by the
/// backup FSInfo).
pub(super) const FSINFO_SECTOR: u16 = 1;
pub(super) const BACKUP_BOOT_SECTOR: u16 = 6;
const FSINFO_LEAD_SIGNATURE: u32 = 0x4161_5252;
const FSINFO_STRUCT_SIGNATURE: u32 = 0x6141_7272;
const FSINFO_TRAIL_SIGNATURE: u32 = 0xAA55_0000;
/// Seconds since 1970 of 1980-01-01T00:00:00Z and 2107-12-31T23:59:58Z, FAT's time range.
const FAT_EPOCH_MIN: Epoch = Epoch::saturating(315_532_800);
const FAT_EPOCH_MAX: Epoch = Epoch::saturating(4_354_819_198);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    pub(super) fn bits(self) -> u64 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }

    /// The end-of-chain mark, also stored in FAT entry 1 (with the clean-shutdown bits set).
    pub(super) fn eoc(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }

    /// `BS_FilSysType`, informational only.
    fn name(self) -> [u8; 8] {
        match self {
            FatType::Fat12 => *b"FAT12   ",
            FatType::Fat16 => *b"FAT16   ",
            FatType::Fat32 => *b"FAT32   ",
        }
    }
}

/// FAT entry 0: the media byte with the end-of-chain mark's other bits.
pub(super) fn media_entry(fat_type: FatType) -> u32 {
    fat_type.eoc() & !0xFF | u32::from(MEDIA)
}

/// A FAT16 entry.
pub(super) fn fat16_entry(v: u32) -> [u8; 2] {
    (v as u16).to_le_bytes()
}

/// A FAT32 entry (the top four bits are reserved and kept zero).
pub(super) fn fat32_entry(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// Two FAT12 entries, packed into three bytes.
pub(super) fn fat12_pair(a: u32, b: u32) -> [u8; 3] {
    [a as u8, (a >> 8) as u8 | (b << 4) as u8, (b >> 4) as u8]
}

/// The boot sector: jump, BPB, the extended BPB of FAT12/16 or FAT32, boot code, signature.
pub(super) struct BootSector {
    pub(super) fat_type: FatType,
    pub(super) sectors_per_cluster: u8,
    pub(super) reserved_sectors: u16,
    /// Fixed root directory entries (0 on FAT32).
    pub(super) root_entries: u16,
    pub(super) total_sectors: u32,
    pub(super) fat_sectors: u32,
    pub(super) sectors_per_track: u16,
    pub(super) heads: u16,
    pub(super) volume_id: u32,
    pub(super) label: [u8; 11],
}

impl BootSector {
    pub(super) fn encode(&self) -> [u8; SECTOR as usize] {
        let fat32 = self.fat_type == FatType::Fat32;
        // The boot code starts where the extended BPB ends; the jump skips to it.
        let code_at: usize = if fat32 { 0x5A } else { 0x3E };
        // FAT12/16 store a count below 65536 in the 16-bit field, anything else in the 32-bit.
        let small_total = if fat32 { None } else { u16::try_from(self.total_sectors).ok() };
        let bpb = Record::new()
            .bytes(&[0xEB, code_at as u8 - 2, 0x90]) // jmp short code; nop
            .bytes(&OEM_NAME)
            .le16(SECTOR as u16)
            .u8(self.sectors_per_cluster)
            .le16(self.reserved_sectors)
            .u8(NUM_FATS as u8)
            .le16(self.root_entries)
            .le16(small_total.unwrap_or(0))
            .u8(MEDIA)
            .le16(if fat32 { 0 } else { self.fat_sectors as u16 })
            .le16(self.sectors_per_track)
            .le16(self.heads)
            .le32(0) // hidden sectors
            .le32(if small_total.is_some() { 0 } else { self.total_sectors });
        let bpb = if fat32 {
            bpb.le32(self.fat_sectors)
                .le16(0) // extended flags: both FATs mirrored
                .le16(0) // version 0.0
                .le32(FAT32_ROOT_CLUSTER)
                .le16(FSINFO_SECTOR)
                .le16(BACKUP_BOOT_SECTOR)
                .zeros(12)
        } else {
            bpb
        };
        let stub = not_bootable_stub(code_at);
        bpb.u8(DRIVE_HARD_DISK)
            .u8(0) // reserved
            .u8(EXTENDED_BOOT_SIGNATURE)
            .le32(self.volume_id)
            .bytes(&self.label)
            .bytes(&self.fat_type.name())
            .bytes(&stub)
            .zeros(SECTOR as usize - 2 - code_at - stub.len())
            .bytes(&BOOT_SIGNATURE)
            .finish()
    }
}

/// Real-mode code loaded at 0:7C00 that prints a message, waits for a key and asks the BIOS
/// to try the next boot device.
fn not_bootable_stub(code_at: usize) -> Vec<u8> {
    const MESSAGE: &[u8] = b"This is an EFI System Partition, not a bootable disk.\r\n\
                             Press a key to try the next boot device.\r\n\0";
    let mut code = vec![
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xBE, 0x00, 0x00, // mov si, message (patched below)
        0xAC, // next: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x09, // jz done
        0xB4, 0x0E, // mov ah, 0x0E (teletype output)
        0xBB, 0x07, 0x00, // mov bx, 7
        0xCD, 0x10, // int 0x10
        0xEB, 0xF2, // jmp next
        0x31, 0xC0, // done: xor ax, ax
        0xCD, 0x16, // int 0x16 (wait for a key)
        0xCD, 0x19, // int 0x19 (next boot device)
        0xEB, 0xFE, // jmp $
    ];
    let message_at = (0x7C00 + code_at + code.len()) as u16;
    code[5..7].copy_from_slice(&message_at.to_le_bytes());
    code.extend_from_slice(MESSAGE);
    code
}

/// The FAT32 FSInfo sector: hints for the free cluster count and the first free cluster.
pub(super) struct FsInfo {
    pub(super) free_count: u32,
    /// 0xFFFFFFFF: unknown (the volume is full).
    pub(super) next_free: u32,
}

impl FsInfo {
    pub(super) fn encode(&self) -> [u8; SECTOR as usize] {
        Record::new()
            .le32(FSINFO_LEAD_SIGNATURE)
            .zeros(480)
            .le32(FSINFO_STRUCT_SIGNATURE)
            .le32(self.free_count)
            .le32(self.next_free)
            .zeros(12)
            .le32(FSINFO_TRAIL_SIGNATURE)
            .finish()
    }
}

/// A DOS date and time of day (two-second resolution) with the creation time's extra tenths.
#[derive(Clone, Copy)]
pub(super) struct Stamp {
    pub(super) date: u16,
    pub(super) time: u16,
    pub(super) tenths: u8,
}

impl Stamp {
    /// The epoch in UTC, clamped into the years FAT can record.
    pub(super) fn of(epoch: Epoch) -> Stamp {
        let t = epoch.clamp(FAT_EPOCH_MIN, FAT_EPOCH_MAX).utc();
        let (year, month, day) = (t.year, i64::from(t.month), i64::from(t.day));
        let (h, m, s) = (t.hour, t.minute, t.second);
        Stamp {
            date: (((year - 1980) << 9) | (month << 5) | day) as u16,
            time: ((h << 11) | (m << 5) | (s / 2)) as u16,
            tenths: (s % 2 * 100) as u8,
        }
    }
}

/// A short (8.3) directory entry; every time in it is `stamp`.
pub(super) struct ShortEntry<'a> {
    /// Base and extension, space padded.
    pub(super) name: &'a [u8; 11],
    pub(super) attr: u8,
    pub(super) first_cluster: u32,
    pub(super) size: u32,
    pub(super) stamp: Stamp,
}

impl ShortEntry<'_> {
    pub(super) fn encode(&self) -> [u8; DIRENT_SIZE] {
        let s = self.stamp;
        Record::new()
            .bytes(self.name)
            .u8(self.attr)
            .u8(0) // reserved for Windows NT
            .u8(s.tenths) // creation time, tenths
            .le16(s.time) // creation time
            .le16(s.date) // creation date
            .le16(s.date) // last access date
            .le16((self.first_cluster >> 16) as u16)
            .le16(s.time) // write time
            .le16(s.date) // write date
            .le16(self.first_cluster as u16)
            .le32(self.size)
            .finish()
    }
}

/// One part of a long (VFAT) name.
pub(super) struct LongEntry {
    /// 1 for the first part; the last part also has [`LFN_LAST`].
    pub(super) ord: u8,
    pub(super) last: bool,
    /// The part's units: a short last part ends with a NUL unit, then 0xFFFF padding.
    pub(super) units: [u16; LFN_UNITS],
    /// [`checksum`] of the short name the long entries precede.
    pub(super) checksum: u8,
}

impl LongEntry {
    pub(super) fn encode(&self) -> [u8; DIRENT_SIZE] {
        let mut units = [0u8; 2 * LFN_UNITS];
        for (unit, bytes) in self.units.iter().zip(units.chunks_exact_mut(2)) {
            bytes.copy_from_slice(&unit.to_le_bytes());
        }
        Record::new()
            .u8(self.ord | if self.last { LFN_LAST } else { 0 })
            .bytes(&units[..10]) // units 1-5
            .u8(ATTR_LFN)
            .u8(0) // type
            .u8(self.checksum)
            .bytes(&units[10..22]) // units 6-11
            .le16(0) // first cluster
            .bytes(&units[22..]) // units 12-13
            .finish()
    }
}

/// The checksum of a short name that every long entry before it carries.
pub(super) fn checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(fat_type: FatType, total_sectors: u32) -> [u8; 512] {
        BootSector {
            fat_type,
            sectors_per_cluster: 4,
            reserved_sectors: 0x20,
            root_entries: if fat_type == FatType::Fat32 { 0 } else { 512 },
            total_sectors,
            fat_sectors: 0x0102,
            sectors_per_track: 32,
            heads: 64,
            volume_id: 0x1234_5678,
            label: *b"ESP        ",
        }
        .encode()
    }

    #[test]
    fn fat16_boot_sector_fields_sit_at_the_specified_offsets() {
        let b = boot(FatType::Fat16, 40_000);
        assert_eq!(b[0..3], [0xEB, 0x3C, 0x90]);
        assert_eq!(&b[3..11], b"MSWIN4.1");
        assert_eq!(b[11..24], [0, 2, 4, 0x20, 0, 2, 0, 2, 0x40, 0x9C, 0xF8, 0x02, 0x01]);
        assert_eq!(b[24..36], [32, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b[36..43], [0x80, 0, 0x29, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&b[43..54], b"ESP        ");
        assert_eq!(&b[54..62], b"FAT16   ");
        assert_eq!(b[62..64], [0x31, 0xC0]);
        assert_eq!(b[510..], [0x55, 0xAA]);
        // More than 65535 sectors go to the 32-bit field.
        let big = boot(FatType::Fat16, 70_000);
        assert_eq!(big[19..21], [0, 0]);
        assert_eq!(big[32..36], 70_000u32.to_le_bytes());
    }

    #[test]
    fn fat32_boot_sector_fields_sit_at_the_specified_offsets() {
        let b = boot(FatType::Fat32, 40_000);
        assert_eq!(b[0..3], [0xEB, 0x58, 0x90]);
        assert_eq!(b[17..24], [0, 0, 0, 0, 0xF8, 0, 0]);
        assert_eq!(b[32..36], 40_000u32.to_le_bytes());
        assert_eq!(b[36..40], [0x02, 0x01, 0, 0]);
        assert_eq!(b[40..52], [0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 6, 0]);
        assert_eq!(b[52..64], [0; 12]);
        assert_eq!(b[64..71], [0x80, 0, 0x29, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&b[82..90], b"FAT32   ");
        assert_eq!(b[90..92], [0x31, 0xC0]);
        // The stub's message pointer: 0x7C00 + 0x5A + 29 bytes of code.
        assert_eq!(b[95..97], (0x7C00u16 + 0x5A + 29).to_le_bytes());
        assert_eq!(b[510..], [0x55, 0xAA]);
    }

    #[test]
    fn fsinfo_fields_sit_at_the_specified_offsets() {
        let s = FsInfo { free_count: 0x0102, next_free: 0x0304 }.encode();
        assert_eq!(s[0..4], [0x52, 0x52, 0x61, 0x41]);
        assert!(s[4..484].iter().all(|b| *b == 0));
        assert_eq!(s[484..496], [0x72, 0x72, 0x41, 0x61, 2, 1, 0, 0, 4, 3, 0, 0]);
        assert!(s[496..508].iter().all(|b| *b == 0));
        assert_eq!(s[508..], [0, 0, 0x55, 0xAA]);
    }

    #[test]
    fn short_entry_fields_sit_at_the_specified_offsets() {
        let stamp = Stamp { date: 0x5A6E, time: 0xB1AA, tenths: 100 };
        let e = ShortEntry {
            name: b"README  TXT",
            attr: ATTR_ARCHIVE,
            first_cluster: 0x0003_0004,
            size: 0x0102_0304,
            stamp,
        }
        .encode();
        assert_eq!(&e[..11], b"README  TXT");
        assert_eq!(
            e[11..],
            [
                0x20, 0, 100, 0xAA, 0xB1, 0x6E, 0x5A, 0x6E, 0x5A, 3, 0, 0xAA, 0xB1, 0x6E, 0x5A, 4,
                0, 4, 3, 2, 1
            ]
        );
    }

    #[test]
    fn long_entry_units_sit_in_their_three_runs() {
        let mut units = [0xFFFF; LFN_UNITS];
        for (i, u) in units.iter_mut().take(12).enumerate() {
            *u = u16::from(b'a') + i as u16;
        }
        units[12] = 0;
        let e = LongEntry { ord: 2, last: true, units, checksum: 0x5C }.encode();
        assert_eq!(e[0], 0x42);
        assert_eq!(e[1..11], [b'a', 0, b'b', 0, b'c', 0, b'd', 0, b'e', 0]);
        assert_eq!(e[11..14], [0x0F, 0, 0x5C]);
        assert_eq!(e[14..26], [b'f', 0, b'g', 0, b'h', 0, b'i', 0, b'j', 0, b'k', 0]);
        assert_eq!(e[26..28], [0, 0]);
        assert_eq!(e[28..32], [b'l', 0, 0, 0]);
    }

    #[test]
    fn fat_entries_pack_as_specified() {
        assert_eq!(fat12_pair(0xFF8, 0xFFF), [0xF8, 0xFF, 0xFF]);
        assert_eq!(fat12_pair(0x123, 0x456), [0x23, 0x61, 0x45]);
        assert_eq!(fat16_entry(0x1234), [0x34, 0x12]);
        assert_eq!(fat32_entry(0x0FFF_FFF8), [0xF8, 0xFF, 0xFF, 0x0F]);
        assert_eq!(media_entry(FatType::Fat32), 0x0FFF_FFF8);
        assert_eq!(media_entry(FatType::Fat16), 0xFFF8);
    }
}

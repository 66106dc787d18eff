//! A GPT disk image: protective MBR, primary and backup headers and partition arrays with
//! their CRC32s, partitions aligned to 1 MiB and typed with the Discoverable Partitions
//! Specification's GUIDs. Disk and partition GUIDs come from the caller (derive them from
//! the content with [`derive_guid`]), never from a random source.

use std::fmt;
use std::io::{self, Read, Seek, Write};

use kiln_oci::digest::Sha256;
use kiln_oci::Platform;

use crate::record::Record;
use crate::uuid::content_uuid;

/// Sector size.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
const ALIGN: u64 = 1 << 20;
/// Sectors taken by the partition entry array.
const ARRAY_SECTORS: u64 = ENTRIES * ENTRY_SIZE as u64 / SECTOR;

// The on-disk structures (UEFI specification, chapter 5), little-endian.

/// Partition entries in the array, used or not.
const ENTRIES: u64 = 128;
const ENTRY_SIZE: usize = 128;
const HEADER_SIZE: usize = 92;
const SIGNATURE: [u8; 8] = *b"EFI PART";
/// Header revision 1.0.
const REVISION: u32 = 0x0001_0000;
const NAME_UNITS: usize = 36;
const MBR_BOOT_CODE: usize = 446;
const MBR_RECORD: usize = 16;
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// The protective MBR's partition type.
const OS_TYPE_GPT_PROTECTIVE: u8 = 0xEE;
/// CHS of LBA 1, where the protective partition starts.
const CHS_LBA1: [u8; 3] = [0x00, 0x02, 0x00];
/// CHS beyond the addressable range, where it ends.
const CHS_MAX: [u8; 3] = [0xFF, 0xFF, 0xFF];

/// The protective MBR in sector 0: one partition of type 0xEE covering the disk, so MBR tools
/// leave it alone.
struct ProtectiveMbr {
    /// Sectors the partition covers (all but sector 0, at most `u32::MAX`).
    size_in_lba: u32,
}

impl ProtectiveMbr {
    fn encode(&self) -> [u8; SECTOR as usize] {
        Record::new()
            .zeros(MBR_BOOT_CODE)
            .u8(0) // not bootable
            .bytes(&CHS_LBA1)
            .u8(OS_TYPE_GPT_PROTECTIVE)
            .bytes(&CHS_MAX)
            .le32(1) // starting LBA
            .le32(self.size_in_lba)
            .zeros(3 * MBR_RECORD)
            .bytes(&MBR_SIGNATURE)
            .finish()
    }
}

/// A GPT header (primary in LBA 1, backup in the last LBA), padded to its sector.
struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable_lba: u64,
    last_usable_lba: u64,
    disk_guid: Guid,
    partition_entry_lba: u64,
    entries_crc32: u32,
}

impl Header {
    /// The sector, with the header's CRC32 (over its 92 bytes, that field zero) filled in.
    fn encode(&self) -> [u8; SECTOR as usize] {
        let fields = |crc: u32| {
            Record::<{ SECTOR as usize }>::new()
                .bytes(&SIGNATURE)
                .le32(REVISION)
                .le32(HEADER_SIZE as u32)
                .le32(crc)
                .zeros(4)
                .le64(self.my_lba)
                .le64(self.alternate_lba)
                .le64(self.first_usable_lba)
                .le64(self.last_usable_lba)
                .bytes(&self.disk_guid.0)
                .le64(self.partition_entry_lba)
                .le32(ENTRIES as u32)
                .le32(ENTRY_SIZE as u32)
                .le32(self.entries_crc32)
                .zeros(SECTOR as usize - HEADER_SIZE)
                .finish()
        };
        fields(crc32fast::hash(&fields(0)[..HEADER_SIZE]))
    }
}

/// One entry of the partition array.
struct Entry {
    type_guid: Guid,
    unique_guid: Guid,
    starting_lba: u64,
    /// Inclusive.
    ending_lba: u64,
    /// UTF-16 units, at most [`NAME_UNITS`].
    name: Vec<u16>,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut name = [0u8; 2 * NAME_UNITS];
        for (unit, bytes) in self.name.iter().zip(name.chunks_exact_mut(2)) {
            bytes.copy_from_slice(&unit.to_le_bytes());
        }
        Record::new()
            .bytes(&self.type_guid.0)
            .bytes(&self.unique_guid.0)
            .le64(self.starting_lba)
            .le64(self.ending_lba)
            .le64(0) // attributes
            .bytes(&name)
            .finish()
    }
}

/// A GUID as written in GPT: the first three fields little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses the usual `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` text form.
    pub fn parse(text: &str) -> Option<Guid> {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || text.len() != 36 {
            return None;
        }
        let mut be = [0u8; 16];
        for (i, byte) in be.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid::from_be(be))
    }

    /// From the bytes in text order (as a UUID is usually stored).
    pub fn from_be(be: [u8; 16]) -> Guid {
        let mut g = be;
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        Guid(g)
    }

    /// The bytes in text order.
    pub fn to_be(self) -> [u8; 16] {
        let mut b = self.0;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_be();
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// CPU architectures whose root partitions have Discoverable Partitions Specification types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arch {
    X86_64,
    Arm64,
    Riscv64,
}

impl Arch {
    /// The architecture of a `linux/*` OCI platform, if disks can be made for it.
    pub fn of(platform: &Platform) -> Option<Arch> {
        if platform.os != "linux" {
            return None;
        }
        match platform.architecture.as_str() {
            "amd64" => Some(Arch::X86_64),
            "arm64" => Some(Arch::Arm64),
            "riscv64" => Some(Arch::Riscv64),
            _ => None,
        }
    }

    /// The name the specification uses in partition names (`root-x86-64`).
    pub fn dps_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Arm64 => "arm64",
            Arch::Riscv64 => "riscv64",
        }
    }
}

/// Partition types of the Discoverable Partitions Specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionType {
    /// Root file system.
    Root(Arch),
    /// dm-verity hash data of the root.
    RootVerity(Arch),
    /// EFI System Partition.
    Esp,
}

impl PartitionType {
    /// The type GUID.
    pub fn guid(self) -> Guid {
        let text = match self {
            PartitionType::Root(Arch::X86_64) => "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            PartitionType::RootVerity(Arch::X86_64) => "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
            PartitionType::Root(Arch::Arm64) => "b921b045-1df0-41c3-af44-4c6f280d3fae",
            PartitionType::RootVerity(Arch::Arm64) => "df3300ce-d69f-4c92-978c-9bfb0f38d820",
            PartitionType::Root(Arch::Riscv64) => "72ec70a6-cf74-40e6-bd49-4bda08e8f224",
            PartitionType::RootVerity(Arch::Riscv64) => "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
            PartitionType::Esp => "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        };
        Guid::parse(text).unwrap_or(Guid([0; 16]))
    }

    /// The partition name used when the recipe does not choose one (`root-x86-64`,
    /// `root-x86-64-verity`, `esp`), as systemd-repart names them.
    pub fn default_label(self) -> String {
        match self {
            PartitionType::Root(arch) => format!("root-{}", arch.dps_name()),
            PartitionType::RootVerity(arch) => format!("root-{}-verity", arch.dps_name()),
            PartitionType::Esp => "esp".into(),
        }
    }
}

/// A version-8 (content-derived) GUID from a purpose and seed bytes.
pub fn derive_guid(purpose: &str, seed: &[u8]) -> Guid {
    let mut h = Sha256::new();
    h.update(b"kiln gpt guid v1\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(seed);
    Guid::from_be(content_uuid(h))
}

/// One partition to write.
pub struct Partition<'a> {
    pub kind: PartitionType,
    /// Partition GUID (`PARTUUID`).
    pub guid: Guid,
    /// Partition label (`PARTLABEL`), at most 36 UTF-16 units.
    pub label: String,
    /// Content size in bytes; the partition is this rounded up to 4 KiB.
    pub size: u64,
    /// Where the content comes from.
    pub data: PartitionData<'a>,
}

/// Where a partition's content comes from.
pub enum PartitionData<'a> {
    /// Read from here (exactly `size` bytes) and copied in.
    Read(&'a mut dyn Read),
    /// Already written at the partition's offset of the file the sink writes into (see
    /// [`partition_offset`]); the sink steps over it, which only a [`SparseFile`] can do.
    InPlace,
}

/// The offset at which a partition starts when the partitions before it have these content
/// sizes: 1 MiB aligned, as [`write_gpt`] places them.
pub fn partition_offset(before: &[u64]) -> u64 {
    before.iter().fold(ALIGN, |at, size| (at + size.next_multiple_of(4096)).next_multiple_of(ALIGN))
}

/// Why a disk could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error(
        "the disk is {size} bytes but its partitions need at least {needed} bytes; \
         raise [disk] size"
    )]
    TooSmall { size: u64, needed: u64 },
    #[error("disk size {0} is not a whole number of 512-byte sectors")]
    NotSectors(u64),
    #[error("partition label {0:?} is longer than 36 UTF-16 units")]
    LabelTooLong(String),
    #[error("more than {ENTRIES} partitions")]
    TooMany,
    #[error("reading partition {label:?}")]
    Read {
        label: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the disk image")]
    Write(#[source] io::Error),
}

/// Where a partition landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub label: String,
    pub guid: Guid,
    /// First byte on the disk.
    pub offset: u64,
    /// Bytes reserved for it.
    pub size: u64,
}

/// Where a disk image goes. A stream writes runs of zeros out; a [`SparseFile`] leaves them
/// as holes, so a 10 GiB disk with 1 GiB of content costs 1 GiB of writes.
pub trait DiskSink: Write {
    /// Appends `len` zero bytes.
    /// Steps over `len` bytes already written in place; a stream cannot.
    fn skip(&mut self, _len: u64) -> io::Result<()> {
        Err(io::Error::other("this output cannot step over partition data written in place"))
    }

    fn zeros(&mut self, mut len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.write_all(&ZEROS[..n])?;
            len -= n as u64;
        }
        Ok(())
    }
}

impl DiskSink for Vec<u8> {}
impl<W: DiskSink + ?Sized> DiskSink for &mut W {
    fn skip(&mut self, len: u64) -> io::Result<()> {
        (**self).skip(len)
    }
    fn zeros(&mut self, len: u64) -> io::Result<()> {
        (**self).zeros(len)
    }
}

/// A disk file written front to back whose zero runs stay holes.
pub struct SparseFile {
    file: io::BufWriter<std::fs::File>,
}

impl SparseFile {
    /// Writes into `file` from position 0; bytes it already holds stay where the disk steps
    /// over them.
    pub fn new(file: std::fs::File) -> Self {
        SparseFile { file: io::BufWriter::with_capacity(1 << 20, file) }
    }

    /// Flushes and sets the length to `len`, so that trailing zeros are a hole too.
    pub fn finish(self, len: u64) -> io::Result<()> {
        let file = self.file.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.set_len(len)
    }
}

impl Write for SparseFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl DiskSink for SparseFile {
    fn skip(&mut self, len: u64) -> io::Result<()> {
        self.zeros(len)
    }
    fn zeros(&mut self, len: u64) -> io::Result<()> {
        let len = i64::try_from(len).map_err(|_| io::Error::other("zero run too long"))?;
        // BufWriter's seek writes out what it holds first.
        self.file.seek(io::SeekFrom::Current(len)).map(drop)
    }
}

/// Bytes the primary GPT takes at the start of the disk: protective MBR, header, array.
pub const PRIMARY_SIZE: u64 = (2 + ARRAY_SECTORS) * SECTOR;

/// Where the backup GPT (array, then header) starts on a disk of `disk_size` bytes.
pub fn backup_offset(disk_size: u64) -> u64 {
    disk_size.saturating_sub((ARRAY_SECTORS + 1) * SECTOR)
}

/// Where partitions with these content sizes start on a disk of `disk_size` bytes, or why
/// they do not fit.
pub fn place(disk_size: u64, sizes: &[u64]) -> Result<Vec<u64>, GptError> {
    if !disk_size.is_multiple_of(SECTOR) {
        return Err(GptError::NotSectors(disk_size));
    }
    if sizes.len() as u64 > ENTRIES {
        return Err(GptError::TooMany);
    }
    let offsets: Vec<u64> = (0..sizes.len()).map(|i| partition_offset(&sizes[..i])).collect();
    let end = partition_offset(sizes);
    // The backup array and header take the last 33 sectors.
    let needed = end + (ARRAY_SECTORS + 1) * SECTOR;
    if needed > disk_size || disk_size / SECTOR < 2 * (ARRAY_SECTORS + 2) {
        return Err(GptError::TooSmall { size: disk_size, needed });
    }
    Ok(offsets)
}

/// The GPT of a disk: the bytes at its start and end, and where each partition goes.
pub struct GptLayout {
    pub placed: Vec<Placed>,
    /// Protective MBR, primary header and partition array: the first [`PRIMARY_SIZE`] bytes.
    pub primary: Vec<u8>,
    /// Backup partition array and header: the bytes from [`backup_offset`] to the end.
    pub backup: Vec<u8>,
}

/// Lays out a GPT disk of `disk_size` bytes holding `parts` in order (their data is not
/// read).
pub fn gpt_layout(
    disk_size: u64,
    disk_guid: Guid,
    parts: &[Partition<'_>],
) -> Result<GptLayout, GptError> {
    let sizes: Vec<u64> = parts.iter().map(|p| p.size).collect();
    let offsets = place(disk_size, &sizes)?;
    let sectors = disk_size / SECTOR;
    let placed: Vec<Placed> = parts
        .iter()
        .zip(offsets)
        .map(|(p, offset)| Placed {
            label: p.label.clone(),
            guid: p.guid,
            offset,
            size: p.size.next_multiple_of(4096),
        })
        .collect();

    let mut array = vec![0u8; ENTRIES as usize * ENTRY_SIZE];
    for ((p, place), slot) in parts.iter().zip(&placed).zip(array.chunks_exact_mut(ENTRY_SIZE)) {
        let name: Vec<u16> = p.label.encode_utf16().collect();
        if name.len() > NAME_UNITS {
            return Err(GptError::LabelTooLong(p.label.clone()));
        }
        let entry = Entry {
            type_guid: p.kind.guid(),
            unique_guid: p.guid,
            starting_lba: place.offset / SECTOR,
            ending_lba: (place.offset + place.size) / SECTOR - 1,
            name,
        };
        slot.copy_from_slice(&entry.encode());
    }
    let entries_crc32 = crc32fast::hash(&array);
    let last = sectors - 1;
    let header = |my_lba: u64, alternate_lba: u64, partition_entry_lba: u64| Header {
        my_lba,
        alternate_lba,
        first_usable_lba: 2 + ARRAY_SECTORS,
        last_usable_lba: last - 1 - ARRAY_SECTORS,
        disk_guid,
        partition_entry_lba,
        entries_crc32,
    };
    let size_in_lba = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    let mut primary = ProtectiveMbr { size_in_lba }.encode().to_vec();
    primary.extend_from_slice(&header(1, last, 2).encode());
    primary.extend_from_slice(&array);
    let mut backup = array;
    backup.extend_from_slice(&header(last, 1, last - ARRAY_SECTORS).encode());
    Ok(GptLayout { placed, primary, backup })
}

/// Writes a GPT disk of `disk_size` bytes holding `parts` in order; returns where each went.
pub fn write_gpt<W: DiskSink>(
    disk_size: u64,
    disk_guid: Guid,
    parts: &mut [Partition<'_>],
    mut out: W,
) -> Result<Vec<Placed>, GptError> {
    let layout = gpt_layout(disk_size, disk_guid, parts)?;
    let mut w = Counted { out: &mut out, at: 0 };
    w.write(&layout.primary)?;
    for (p, place) in parts.iter_mut().zip(&layout.placed) {
        w.zeros_to(place.offset)?;
        match &mut p.data {
            PartitionData::Read(data) => w.copy_from(*data, p.size, &p.label)?,
            PartitionData::InPlace => {
                w.out.skip(p.size).map_err(GptError::Write)?;
                w.at += p.size;
            }
        }
    }
    w.zeros_to(backup_offset(disk_size))?;
    w.write(&layout.backup)?;
    Ok(layout.placed)
}

/// A writer that knows its position, for zero-filling gaps.
struct Counted<'a, W> {
    out: &'a mut W,
    at: u64,
}

impl<W: DiskSink> Counted<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), GptError> {
        self.out.write_all(bytes).map_err(GptError::Write)?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// Copies exactly `len` bytes of partition `label`'s `data`, passing all-zero runs to the
    /// sink as zeros (holes in a sparse file).
    fn copy_from(&mut self, data: &mut dyn Read, len: u64, label: &str) -> Result<(), GptError> {
        const RUN: usize = 64 * 1024;
        let mut buf = vec![0u8; 16 * RUN];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            data.read_exact(&mut buf[..n])
                .map_err(|source| GptError::Read { label: label.to_string(), source })?;
            for run in buf[..n].chunks(RUN) {
                if run.iter().all(|b| *b == 0) {
                    self.out.zeros(run.len() as u64)
                } else {
                    self.out.write_all(run)
                }
                .map_err(GptError::Write)?;
            }
            self.at += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    fn zeros_to(&mut self, offset: u64) -> Result<(), GptError> {
        if self.at < offset {
            self.out.zeros(offset - self.at).map_err(GptError::Write)?;
            self.at = offset;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protective_mbr_covers_the_disk_from_lba_1() {
        let m = ProtectiveMbr { size_in_lba: 0x0102_0304 }.encode();
        assert_eq!(m.len(), 512);
        assert!(m[..446].iter().all(|b| *b == 0));
        assert_eq!(m[446..462], [0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 4, 3, 2, 1]);
        assert!(m[462..510].iter().all(|b| *b == 0));
        assert_eq!(m[510..], [0x55, 0xAA]);
    }

    #[test]
    fn header_fields_and_crc_sit_at_the_specified_offsets() {
        let h = Header {
            my_lba: 1,
            alternate_lba: 0x1FFF,
            first_usable_lba: 34,
            last_usable_lba: 0x1FDE,
            disk_guid: Guid([0x5a; 16]),
            partition_entry_lba: 2,
            entries_crc32: 0xA1B2_C3D4,
        }
        .encode();
        assert_eq!(h.len(), 512);
        assert_eq!(&h[0..8], b"EFI PART");
        assert_eq!(h[8..16], [0, 0, 1, 0, 92, 0, 0, 0]);
        assert_eq!(h[20..24], [0; 4]);
        assert_eq!(h[24..40], [1, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0x1F, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h[40..56], [34, 0, 0, 0, 0, 0, 0, 0, 0xDE, 0x1F, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h[56..72], [0x5a; 16]);
        assert_eq!(h[72..80], [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h[80..92], [128, 0, 0, 0, 128, 0, 0, 0, 0xD4, 0xC3, 0xB2, 0xA1]);
        assert!(h[92..].iter().all(|b| *b == 0));
        let mut zeroed = h;
        zeroed[16..20].fill(0);
        assert_eq!(h[16..20], crc32fast::hash(&zeroed[..92]).to_le_bytes());
    }

    #[test]
    fn entry_fields_sit_at_the_specified_offsets() {
        let e = Entry {
            type_guid: Guid([1; 16]),
            unique_guid: Guid([2; 16]),
            starting_lba: 2048,
            ending_lba: 4095,
            name: "esp".encode_utf16().collect(),
        }
        .encode();
        assert_eq!(e.len(), 128);
        assert_eq!(e[0..32], [[1; 16], [2; 16]].concat()[..]);
        assert_eq!(
            e[32..56],
            [0, 8, 0, 0, 0, 0, 0, 0, 0xFF, 0x0F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(e[56..62], [b'e', 0, b's', 0, b'p', 0]);
        assert!(e[62..].iter().all(|b| *b == 0));
    }
}

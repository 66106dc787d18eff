//! The fixed VHD format: the raw disk followed by a 512-byte footer. kiln writes the footer
//! itself because qemu-img's carries the wall-clock time and a random UUID; here the time is
//! the build epoch and the UUID comes from the content.

use kiln_tree::Epoch;

use crate::record::Record;

/// Footer size.
pub const FOOTER: usize = 512;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01T00:00:00Z).
const VHD_EPOCH: i64 = 946_684_800;
const COOKIE: [u8; 8] = *b"conectix";
/// The "reserved" feature bit, which the specification says is always set.
const FEATURES_RESERVED: u32 = 2;
/// Format version 1.0.
const VERSION: u32 = 0x0001_0000;
/// Data offset of a fixed disk: there is no dynamic header.
const NO_DATA_OFFSET: u64 = u64::MAX;
const CREATOR_APP: [u8; 4] = *b"kiln";
const CREATOR_VERSION: u32 = 0x0001_0000;
const CREATOR_HOST_OS: [u8; 4] = *b"Wi2k";
const DISK_TYPE_FIXED: u32 = 2;

/// The hard disk footer (VHD specification, "Hard Disk Footer Format"); big-endian.
struct Footer {
    /// Seconds since 2000-01-01T00:00:00Z.
    timestamp: u32,
    original_size: u64,
    current_size: u64,
    cylinders: u16,
    heads: u8,
    sectors_per_track: u8,
    uuid: [u8; 16],
}

impl Footer {
    /// The 512 bytes, with the checksum (the one's complement of the byte sum of the footer
    /// with its checksum field zero) filled in.
    fn encode(&self) -> [u8; FOOTER] {
        let fields = |checksum: u32| {
            Record::<FOOTER>::new()
                .bytes(&COOKIE)
                .be32(FEATURES_RESERVED)
                .be32(VERSION)
                .be64(NO_DATA_OFFSET)
                .be32(self.timestamp)
                .bytes(&CREATOR_APP)
                .be32(CREATOR_VERSION)
                .bytes(&CREATOR_HOST_OS)
                .be64(self.original_size)
                .be64(self.current_size)
                .be16(self.cylinders)
                .u8(self.heads)
                .u8(self.sectors_per_track)
                .be32(DISK_TYPE_FIXED)
                .be32(checksum)
                .bytes(&self.uuid)
                .u8(0) // saved state
                .zeros(427)
                .finish()
        };
        let sum = fields(0).iter().fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)));
        fields(!sum)
    }
}

/// The footer of a fixed VHD whose raw part is `disk_size` bytes (a multiple of 512).
pub fn footer(disk_size: u64, epoch: Epoch, uuid: [u8; 16]) -> [u8; FOOTER] {
    let timestamp = u32::try_from((epoch.seconds() - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    let (cylinders, heads, sectors_per_track) = geometry(disk_size / 512);
    Footer {
        timestamp,
        original_size: disk_size,
        current_size: disk_size,
        cylinders,
        heads,
        sectors_per_track,
        uuid,
    }
    .encode()
}

/// The CHS geometry the VHD specification derives from a sector count.
fn geometry(total: u64) -> (u16, u8, u8) {
    let total = total.min(65_535 * 16 * 255);
    let (mut spt, mut heads, mut cth);
    if total >= 65_535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        spt = 17;
        cth = total / spt;
        heads = cth.div_ceil(1024);
        if heads < 4 {
            heads = 4;
        }
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_fields_sit_at_the_specified_offsets() {
        let epoch = Epoch::new(VHD_EPOCH + 0x0102_0304).unwrap();
        let f = footer(64 << 20, epoch, [0xab; 16]);
        assert_eq!(f.len(), 512);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(f[8..16], [0, 0, 0, 2, 0, 1, 0, 0]);
        assert_eq!(f[16..24], [0xff; 8]);
        assert_eq!(f[24..28], [1, 2, 3, 4]);
        assert_eq!(&f[28..32], b"kiln");
        assert_eq!(&f[36..40], b"Wi2k");
        assert_eq!(f[40..48], (64u64 << 20).to_be_bytes());
        assert_eq!(f[48..56], (64u64 << 20).to_be_bytes());
        // 131072 sectors: 17 per track, 8 heads, 963 cylinders.
        assert_eq!(f[56..60], [0x03, 0xc3, 8, 17]);
        assert_eq!(f[60..64], [0, 0, 0, 2]);
        assert_eq!(f[68..84], [0xab; 16]);
        assert!(f[84..].iter().all(|b| *b == 0));
        let sum = f.iter().enumerate().filter(|(i, _)| !(64..68).contains(i));
        let sum = sum.fold(0u32, |acc, (_, b)| acc.wrapping_add(u32::from(*b)));
        assert_eq!(f[64..68], (!sum).to_be_bytes());
    }
}

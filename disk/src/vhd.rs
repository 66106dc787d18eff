//! The fixed VHD format: the raw disk followed by a 512-byte footer. kiln writes the footer
//! itself because qemu-img's carries the wall-clock time and a random UUID; here the time is
//! the build epoch and the UUID comes from the content.

use kiln_tree::Epoch;

/// Footer size.
pub const FOOTER: usize = 512;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01T00:00:00Z).
const VHD_EPOCH: i64 = 946_684_800;

/// The footer of a fixed VHD whose raw part is `disk_size` bytes (a multiple of 512).
pub fn footer(disk_size: u64, epoch: Epoch, uuid: [u8; 16]) -> [u8; FOOTER] {
    let mut f = [0u8; FOOTER];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // no dynamic header
    let stamp = u32::try_from((epoch.seconds() - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"kiln");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&disk_size.to_be_bytes());
    f[48..56].copy_from_slice(&disk_size.to_be_bytes());
    let (cylinders, heads, sectors) = geometry(disk_size / 512);
    f[56..58].copy_from_slice(&cylinders.to_be_bytes());
    f[58] = heads;
    f[59] = sectors;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // fixed disk
    f[68..84].copy_from_slice(&uuid);
    let sum = f.iter().fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)));
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
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

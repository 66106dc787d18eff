//! Content-derived UUIDs (RFC 9562 version 8, "custom"): the first 16 bytes of a sha256 with
//! the version and variant bits set, so equal content gives equal filesystem, partition and
//! verity UUIDs.

use kiln_oci::digest::Sha256;

/// The UUID, in its text byte order, of everything `hash` was fed.
pub(crate) fn content_uuid(hash: Sha256) -> [u8; 16] {
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&hash.finish().as_bytes()[..16]);
    uuid[6] = (uuid[6] & 0x0F) | 0x80; // version 8
    uuid[8] = (uuid[8] & 0x3F) | 0x80; // variant 0b10
    uuid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_variant_bits_are_set_over_the_hash() {
        let mut h = Sha256::new();
        h.update(b"kiln");
        let mut want = Sha256::new();
        want.update(b"kiln");
        let hash = *want.finish().as_bytes();
        let uuid = content_uuid(h);
        assert_eq!(uuid[6] >> 4, 8);
        assert_eq!(uuid[8] >> 6, 0b10);
        assert_eq!((uuid[6] & 0x0F, uuid[8] & 0x3F), (hash[6] & 0x0F, hash[8] & 0x3F));
        assert_eq!(
            [&uuid[..6], &uuid[7..8], &uuid[9..]].concat(),
            [&hash[..6], &hash[7..8], &hash[9..16]].concat()
        );
    }
}

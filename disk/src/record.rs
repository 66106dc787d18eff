//! A fixed-size on-disk record encoded field by field, in the order the format declares its
//! fields: each format's `encode` methods list a structure's fields top to bottom, so the
//! offsets follow from the widths as in a `#[repr(C, packed)]` declaration, without unsafe
//! code or a layout crate. Every structure has a test pinning its bytes and its size.

/// The bytes of one record of `N` bytes, filled from its first byte on.
pub(crate) struct Record<const N: usize> {
    bytes: [u8; N],
    at: usize,
}

impl<const N: usize> Record<N> {
    pub(crate) fn new() -> Self {
        Record { bytes: [0; N], at: 0 }
    }

    /// The next field, as its bytes.
    pub(crate) fn bytes(mut self, field: &[u8]) -> Self {
        self.bytes[self.at..self.at + field.len()].copy_from_slice(field);
        self.at += field.len();
        self
    }

    /// `len` reserved (zero) bytes.
    pub(crate) fn zeros(mut self, len: usize) -> Self {
        self.at += len;
        self
    }

    pub(crate) fn u8(self, v: u8) -> Self {
        self.bytes(&[v])
    }

    pub(crate) fn le16(self, v: u16) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn le32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn le64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn be16(self, v: u16) -> Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn be32(self, v: u32) -> Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn be64(self, v: u64) -> Self {
        self.bytes(&v.to_be_bytes())
    }

    /// The record, once every field (reserved ones included) is given: a declaration whose
    /// widths do not add up to `N` fails its format's tests here.
    pub(crate) fn finish(self) -> [u8; N] {
        assert_eq!(self.at, N, "fields fill {} of the record's {N} bytes", self.at);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_in_order_with_their_byte_order() {
        let r = Record::<16>::new().u8(1).le16(0x0302).be16(0x0405).zeros(3).le64(0x0d0c).finish();
        assert_eq!(r, [1, 2, 3, 4, 5, 0, 0, 0, 0x0c, 0x0d, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "fields fill 4 of the record's 8 bytes")]
    fn a_record_left_short_is_refused() {
        Record::<8>::new().be32(1).finish();
    }
}

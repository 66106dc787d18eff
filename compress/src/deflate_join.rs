//! Joining complete raw deflate streams into one, as zlib's `gzjoin` does: the last block of
//! a stream is marked final, so to continue after it that mark is cleared and an empty stored
//! block ends the stream on a byte boundary. Finding the last block means walking every block
//! before it (deflate records no block lengths), so each block's Huffman codes are decoded,
//! without producing any output.

/// Why a stream could not be walked; only a deflate encoder bug can cause one.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the deflate stream is malformed: {0}")]
    Malformed(&'static str),
}

use JoinError::Malformed;

/// Makes the complete raw deflate stream in `out[start..]` a non-final part of a longer one:
/// clears the final-block bit of its last block and appends an empty stored block, so that it
/// ends byte-aligned and whatever follows is read as the next block.
pub fn unfinish(out: &mut Vec<u8>, start: usize) -> Result<(), JoinError> {
    let last = last_block(&out[start..])?;
    // A complete stream ends in the byte where its last block does: anything else means the
    // walk went wrong, and cutting the stream there would lose data.
    if last.end_bit.div_ceil(8) != (out.len() - start) as u64 {
        return Err(Malformed("its last block does not end where the stream does"));
    }
    let header = start as u64 * 8 + last.header_bit;
    out[(header / 8) as usize] &= !(1u8 << (header % 8));
    let end = start as u64 * 8 + last.end_bit;
    out.truncate(end.div_ceil(8) as usize);
    let used = (end % 8) as u32;
    if used > 0 {
        // Padding bits after the end-of-block code: zero, as the stored header wants them.
        if let Some(byte) = out.last_mut() {
            *byte &= (1u8 << used) - 1;
        }
    }
    // The stored block's 3 header bits fit in this byte's padding, or need the next byte.
    if used == 0 || used > 5 {
        out.push(0);
    }
    // LEN 0, NLEN !0.
    out.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    Ok(())
}

/// Where a stream's last block starts and ends, in bits from the stream's first byte.
#[derive(Debug, PartialEq, Eq)]
struct LastBlock {
    header_bit: u64,
    end_bit: u64,
}

/// LSB-first bit reader that reads past the end as zero bits; [`Bits::check`] catches that.
#[derive(Clone, Copy)]
struct Bits<'a> {
    data: &'a [u8],
    next: usize,
    buf: u64,
    have: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits { data, next: 0, buf: 0, have: 0 }
    }

    /// Tops the buffer up to at least 56 bits.
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(word) = self.data.get(self.next..self.next + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.buf |= u64::from_le_bytes(w) << self.have;
            self.next += ((63 - self.have) / 8) as usize;
            self.have |= 56;
        } else {
            while self.have <= 56 {
                let byte = self.data.get(self.next).copied().unwrap_or(0);
                self.buf |= u64::from(byte) << self.have;
                self.next += 1;
                self.have += 8;
            }
        }
    }

    #[inline(always)]
    fn take(&mut self, n: u32) -> u64 {
        if self.have < n {
            self.refill();
        }
        let v = self.buf & ((1u64 << n) - 1);
        self.drop_bits(n);
        v
    }

    #[inline(always)]
    fn drop_bits(&mut self, n: u32) {
        self.buf >>= n;
        self.have -= n;
    }

    fn pos(&self) -> u64 {
        self.next as u64 * 8 - u64::from(self.have)
    }

    fn check(&self) -> Result<(), JoinError> {
        if self.pos() > self.data.len() as u64 * 8 {
            return Err(Malformed("it ends inside a block"));
        }
        Ok(())
    }
}

/// A table entry: bits to drop (code length plus extra bits) in the low byte, the kind in the
/// next, and a symbol or subtable index above.
const LITERAL: u32 = 0;
const MATCH: u32 = 1 << 8;
const END: u32 = 2 << 8;
const INVALID: u32 = 3 << 8;
const SUBTABLE: u32 = 4 << 8;
const KIND: u32 = 0xff00;
/// Code bits resolved by the first lookup; longer codes take a second one.
const PRIMARY: u32 = 12;

/// A canonical Huffman code as a two-level lookup table on the next stream bits.
struct Table {
    /// Indexed by the next [`PRIMARY`] bits; a fixed size lets the masked index go unchecked.
    primary: Box<[u32; 1 << PRIMARY]>,
    sub: Vec<u32>,
    sub_bits: u32,
}

impl Table {
    fn new() -> Self {
        Table { primary: Box::new([INVALID; 1 << PRIMARY]), sub: Vec::new(), sub_bits: 0 }
    }

    /// Builds the code whose symbol `i` has length `lengths[i]` (0: unused); `entry(symbol,
    /// length)` gives each symbol's table entry.
    fn build(
        &mut self,
        lengths: &[u8],
        entry: impl Fn(usize, u32) -> u32,
    ) -> Result<(), JoinError> {
        let mut count = [0u32; 16];
        for &l in lengths {
            count[usize::from(l.min(15))] += 1;
        }
        count[0] = 0;
        let mut next = [0u32; 16];
        let (mut code, mut left) = (0u32, 1i64);
        for len in 1..16 {
            left = left * 2 - i64::from(count[len]);
            if left < 0 {
                return Err(Malformed("a Huffman code is oversubscribed"));
            }
            code = (code + count[len - 1]) << 1;
            next[len] = code;
        }
        let longest = (1..16).rev().find(|&l| count[l] > 0).unwrap_or(0) as u32;
        self.primary.fill(INVALID);
        self.sub.clear();
        self.sub_bits = longest.saturating_sub(PRIMARY);
        let sub_size = 1usize << self.sub_bits;
        for (symbol, &len) in lengths.iter().enumerate() {
            if len == 0 {
                continue;
            }
            let len = u32::from(len);
            let c = next[len as usize];
            next[len as usize] += 1;
            let e = entry(symbol, len);
            // Deflate sends codes most significant bit first into an LSB-first stream.
            let reversed = (c.reverse_bits() >> (32 - len)) as usize;
            if len <= PRIMARY {
                let mut i = reversed;
                while i < 1 << PRIMARY {
                    self.primary[i] = e;
                    i += 1 << len;
                }
            } else {
                let head = reversed & ((1 << PRIMARY) - 1);
                let base = if self.primary[head] & KIND == SUBTABLE {
                    (self.primary[head] >> 16) as usize
                } else {
                    let base = self.sub.len();
                    self.sub.resize(base + sub_size, INVALID);
                    self.primary[head] = SUBTABLE | ((base as u32) << 16);
                    base
                };
                let mut i = reversed >> PRIMARY;
                while i < sub_size {
                    self.sub[base + i] = e;
                    i += 1 << (len - PRIMARY);
                }
            }
        }
        Ok(())
    }

    /// Lets one primary lookup step over several symbols: the walk needs only how many bits
    /// symbols take, not which symbols they are. Each primary entry that is a literal becomes
    /// the run of literals whose codes all lie within the [`PRIMARY`] bits it is indexed by,
    /// plus the length or end-of-block code that follows if that fits too (its kind then
    /// becomes the entry's kind). A code that only starts within those bits is left for the
    /// next lookup.
    fn fuse_literal_runs(&mut self) {
        let single = self.primary.clone();
        for (index, entry) in self.primary.iter_mut().enumerate() {
            if *entry & KIND != LITERAL {
                continue;
            }
            let mut used = *entry & 0xff;
            loop {
                // The bits after `used` that this index fixes; the lookup's higher bits are
                // zero here, so its answer counts only if its code fits in the fixed ones.
                let next = single[index >> used];
                let len = next & 0xff;
                if next & KIND == SUBTABLE || next & KIND == INVALID || used + len > PRIMARY {
                    break;
                }
                used += len;
                if next & KIND != LITERAL {
                    *entry = (next & KIND) | used;
                    break;
                }
                *entry = LITERAL | used;
            }
        }
    }

    #[inline(always)]
    fn get(&self, bits: u64) -> u32 {
        let e = self.primary[(bits as usize) & ((1 << PRIMARY) - 1)];
        if e & KIND != SUBTABLE {
            return e;
        }
        let i = (e >> 16) as usize + ((bits >> PRIMARY) as usize & ((1 << self.sub_bits) - 1));
        self.sub.get(i).copied().unwrap_or(INVALID)
    }
}

const LENGTH_EXTRA: [u8; 29] =
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DISTANCE_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
/// The order code length code lengths are sent in.
const CODE_LENGTH_ORDER: [usize; 19] =
    [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

fn litlen_entry(symbol: usize, len: u32) -> u32 {
    match symbol {
        0..=255 => LITERAL | len,
        256 => END | len,
        257..=285 => MATCH | (len + u32::from(LENGTH_EXTRA[symbol - 257])),
        _ => INVALID,
    }
}

fn distance_entry(symbol: usize, len: u32) -> u32 {
    match DISTANCE_EXTRA.get(symbol) {
        Some(extra) => LITERAL | (len + u32::from(*extra)),
        None => INVALID,
    }
}

fn code_length_entry(symbol: usize, len: u32) -> u32 {
    ((symbol as u32) << 16) | len
}

/// Steps over the codes of a Huffman-coded block, up to and including its end-of-block code.
/// The bit reader is taken by value, so that its fields stay in registers in this, the loop
/// where the walk spends its time.
#[inline(never)]
fn skip_codes<'a>(
    mut b: Bits<'a>,
    litlen: &Table,
    distance: &Table,
) -> Result<Bits<'a>, JoinError> {
    let limit = b.data.len() + 8;
    loop {
        // A symbol takes at most 15 + 5 bits and its distance 15 + 13.
        if b.have < 48 {
            b.refill();
            if b.next > limit {
                return Err(Malformed("it ends inside a block"));
            }
        }
        let e = litlen.get(b.buf);
        b.drop_bits(e & 0xff);
        match e & KIND {
            LITERAL => {}
            MATCH => {
                let d = distance.get(b.buf);
                if d & KIND != LITERAL {
                    return Err(Malformed("an invalid distance code"));
                }
                b.drop_bits(d & 0xff);
            }
            END => return Ok(b),
            _ => return Err(Malformed("an invalid literal/length code")),
        }
    }
}

/// Walks the blocks of the complete raw deflate stream `data` to its final one.
fn last_block(data: &[u8]) -> Result<LastBlock, JoinError> {
    let mut b = Bits::new(data);
    let (mut litlen, mut distance, mut lengths_code) = (Table::new(), Table::new(), Table::new());
    loop {
        let header_bit = b.pos();
        let last = b.take(1) == 1;
        match b.take(2) {
            0 => {
                let pad = ((8 - b.pos() % 8) % 8) as u32;
                b.take(pad);
                let len = b.take(16);
                if b.take(16) != !len & 0xffff {
                    return Err(Malformed("a stored block's length check fails"));
                }
                // Step over the stored bytes: empty the buffer and move the byte cursor.
                let to = b.pos() / 8 + len;
                b.buf = 0;
                b.have = 0;
                b.next = usize::try_from(to).map_err(|_| Malformed("a stored block overruns"))?;
            }
            kind @ (1 | 2) => {
                if kind == 1 {
                    let mut fixed = [8u8; 288];
                    fixed[144..256].fill(9);
                    fixed[256..280].fill(7);
                    litlen.build(&fixed, litlen_entry)?;
                    litlen.fuse_literal_runs();
                    distance.build(&[5u8; 30], distance_entry)?;
                } else {
                    let hlit = b.take(5) as usize + 257;
                    let hdist = b.take(5) as usize + 1;
                    let hclen = b.take(4) as usize + 4;
                    let mut code_lengths = [0u8; 19];
                    for &i in &CODE_LENGTH_ORDER[..hclen] {
                        code_lengths[i] = b.take(3) as u8;
                    }
                    lengths_code.build(&code_lengths, code_length_entry)?;
                    let mut lens = [0u8; 320];
                    let mut i = 0;
                    while i < hlit + hdist {
                        if b.have < 16 {
                            b.refill();
                        }
                        let e = lengths_code.get(b.buf);
                        if e & KIND != LITERAL {
                            return Err(Malformed("an invalid code length code"));
                        }
                        b.drop_bits(e & 0xff);
                        let (repeat, value) = match e >> 16 {
                            s @ 0..=15 => (1, s as u8),
                            16 => {
                                let previous = *lens
                                    .get(i.wrapping_sub(1))
                                    .ok_or(Malformed("a repeat at the start"))?;
                                (3 + b.take(2) as usize, previous)
                            }
                            17 => (3 + b.take(3) as usize, 0),
                            _ => (11 + b.take(7) as usize, 0),
                        };
                        if i + repeat > hlit + hdist {
                            return Err(Malformed("code lengths overrun"));
                        }
                        lens[i..i + repeat].fill(value);
                        i += repeat;
                    }
                    if lens[256] == 0 {
                        return Err(Malformed("a block without an end-of-block code"));
                    }
                    litlen.build(&lens[..hlit], litlen_entry)?;
                    litlen.fuse_literal_runs();
                    distance.build(&lens[hlit..hlit + hdist], distance_entry)?;
                }
                b = skip_codes(b, &litlen, &distance)?;
            }
            _ => return Err(Malformed("a block of the reserved type 3")),
        }
        b.check()?;
        if last {
            return Ok(LastBlock { header_bit, end_bit: b.pos() });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Text, runs and noise, so that streams hold fixed, dynamic and stored blocks.
    fn samples() -> Vec<Vec<u8>> {
        let noise = crate::test_data::noise(200_000, 0x9e37_79b9_7f4a_7c15);
        let text: Vec<u8> = (0..40_000)
            .flat_map(|i| format!("{i:06} layer digest {}\n", i * 7919 % 1000).into_bytes())
            .collect();
        let mut mixed = text[..300_000].to_vec();
        mixed.extend_from_slice(&noise[..100_000]);
        mixed.extend(std::iter::repeat_n(b'a', 70_000));
        // Byte value k about half as often as k - 1, for k up to 16: Huffman codes near the
        // 15-bit limit, longer than one table lookup resolves.
        let skewed: Vec<u8> = noise
            .chunks_exact(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]).leading_zeros() as u8)
            .collect();
        vec![Vec::new(), b"x".to_vec(), b"hello hello hello".to_vec(), text, noise, mixed, skewed]
    }

    fn deflate(level: i32, data: &[u8]) -> Vec<u8> {
        let level = libdeflater::CompressionLvl::new(level).unwrap();
        let mut c = libdeflater::Compressor::new(level);
        let mut out = vec![0; c.deflate_compress_bound(data.len())];
        let n = c.deflate_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn the_last_block_ends_where_the_stream_does() {
        for level in [0, 1, 5, 9, 12] {
            for data in samples() {
                let stream = deflate(level, &data);
                let last = last_block(&stream).unwrap();
                assert_eq!(last.end_bit.div_ceil(8), stream.len() as u64, "level {level}");
                assert!(last.header_bit < last.end_bit);
            }
        }
    }

    #[test]
    fn joined_streams_inflate_to_the_joined_inputs() {
        for level in [0, 1, 5, 12] {
            let samples = samples();
            let mut joined = Vec::new();
            for data in &samples {
                let start = joined.len();
                joined.extend_from_slice(&deflate(level, data));
                unfinish(&mut joined, start).unwrap();
            }
            // An empty final block (fixed Huffman) ends the whole stream.
            joined.extend_from_slice(&[0x03, 0x00]);
            let mut back = Vec::new();
            flate2::read::DeflateDecoder::new(&joined[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, samples.concat(), "level {level}");
        }
    }

    #[test]
    fn broken_streams_are_refused() {
        let stream = deflate(5, &samples()[3]);
        assert!(last_block(&stream[..stream.len() / 2]).is_err(), "a truncated stream");
        assert!(last_block(&[0x07]).is_err(), "reserved block type");
        assert!(last_block(&[0x00, 0x05, 0x00, 0x00, 0x00]).is_err(), "bad stored length");
        assert!(last_block(&[]).is_err(), "empty input");
        let mut unfinished = deflate(5, b"abc");
        unfinish(&mut unfinished, 0).unwrap();
        assert!(last_block(&unfinished).is_err(), "a stream with no final block");
        let mut trailing = deflate(5, b"abc");
        trailing.push(0);
        assert!(unfinish(&mut trailing, 0).is_err(), "bytes after the final block");
    }
}

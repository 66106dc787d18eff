//! dm-verity: the sha256 hash tree over a filesystem image, in the on-disk format
//! `veritysetup` reads (format version 1, 4 KiB data and hash blocks, salt before the block).
//!
//! The hash device starts with a 512-byte verity superblock padded to one hash block, then the
//! tree from its top level down to the level that hashes the data. The salt is derived from a
//! caller-given seed (the filesystem's content-derived UUID), never random, and the
//! superblock UUID from the root hash, so equal data gives an equal hash device.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use kiln_oci::digest::Sha256;

use crate::record::Record;
use crate::uuid::content_uuid;

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: u64 = BLOCK / DIGEST as u64;
/// sha256 primed with the salt, cloned for each block.
fn salted(salt: &[u8; 32]) -> Sha256 {
    let mut h = Sha256::new();
    h.update(salt);
    h
}

/// The salted hash of one block.
fn block_hash(salted: &Sha256, block: &[u8]) -> [u8; 32] {
    let mut h = salted.clone();
    h.update(block);
    *h.finish().as_bytes()
}

/// Bytes of data hashed per batch of worker threads.
const BATCH_BYTES: usize = 8 << 20;

/// Why a hash tree could not be written.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("dm-verity data must be whole 4 KiB blocks, but it is {0} bytes")]
    NotBlockAligned(u64),
    #[error("dm-verity needs at least one data block")]
    Empty,
    #[error("reading the data to hash")]
    Read(#[source] io::Error),
    #[error("writing the hash tree")]
    Write(#[source] io::Error),
    #[error("a hashing thread stopped before finishing its blocks")]
    Worker,
    #[error("keeping the lowest level of the hash tree in a scratch file")]
    Scratch(#[source] io::Error),
}

/// What `veritysetup` and the kernel need to check the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityTree {
    /// The root hash (kernel command line `roothash=`, `veritysetup verify … ROOT`).
    pub root_hash: [u8; 32],
    /// The salt every block hash starts with.
    pub salt: [u8; 32],
    /// The UUID in the verity superblock.
    pub uuid: [u8; 16],
    /// Number of 4 KiB data blocks covered.
    pub data_blocks: u64,
    /// Bytes written to the hash device (superblock included).
    pub hash_size: u64,
}

impl VerityTree {
    /// The root hash in lowercase hex, as `veritysetup` and the kernel command line take it.
    pub fn root_hash_hex(&self) -> String {
        self.root_hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The salt for data identified by `seed`.
pub fn salt_from(seed: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kiln dm-verity salt v1\0");
    h.update(seed);
    *h.finish().as_bytes()
}

/// The size of the hash device (superblock and tree) for `data_size` bytes of data, known
/// before the data is hashed so that a disk can be laid out around it.
pub fn hash_size(data_size: u64) -> u64 {
    let mut size = BLOCK;
    let mut hashes = data_size / BLOCK;
    // Each level as [`VerityHasher::finish`] writes it: the level below's hashes, in blocks.
    let mut remaining = hashes.saturating_sub(1);
    while remaining > 0 {
        remaining /= PER_BLOCK;
        let bytes = (hashes * DIGEST as u64).next_multiple_of(BLOCK);
        size += bytes;
        hashes = bytes / BLOCK;
    }
    size
}

/// Reads `data_size` bytes of `data`, writes the superblock and hash tree to `out`.
pub fn write_verity<R: Read, W: Write>(
    mut data: R,
    data_size: u64,
    salt: [u8; 32],
    threads: usize,
    out: W,
) -> Result<VerityTree, VerityError> {
    if !data_size.is_multiple_of(BLOCK) {
        return Err(VerityError::NotBlockAligned(data_size));
    }
    let mut hasher = VerityHasher::new(salt, threads)?;
    let mut buf = vec![0u8; BATCH_BYTES];
    let mut left = data_size;
    while left > 0 {
        let n = left.min(BATCH_BYTES as u64) as usize;
        data.read_exact(&mut buf[..n]).map_err(VerityError::Read)?;
        hasher.update(&buf[..n])?;
        left -= n as u64;
    }
    hasher.finish(out)
}

/// Builds a dm-verity hash tree from data fed to it as it is written, so the data need not
/// be read back. Data blocks are hashed in 8 MiB batches, each by `threads` workers taking a
/// contiguous run of blocks; the hashes are kept in block order, so the thread count never
/// shows in the output. The lowest level (32 bytes per data block) goes to an unnamed scratch
/// file, so memory stays bounded whatever the data size; the levels above it are 128 times
/// smaller and kept in memory.
pub struct VerityHasher {
    salt: [u8; 32],
    workers: usize,
    /// Data not hashed yet (less than one batch).
    pending: Vec<u8>,
    /// Hashes of the data blocks so far (level 0).
    level0: BufWriter<File>,
    level0_len: u64,
    data_size: u64,
}

impl VerityHasher {
    /// A hasher for data salted with `salt`.
    pub fn new(salt: [u8; 32], threads: usize) -> Result<Self, VerityError> {
        let scratch = tempfile::tempfile().map_err(VerityError::Scratch)?;
        Ok(VerityHasher {
            salt,
            workers: threads.max(1),
            pending: Vec::with_capacity(BATCH_BYTES),
            level0: BufWriter::with_capacity(1 << 20, scratch),
            level0_len: 0,
            data_size: 0,
        })
    }

    /// How many bytes of data it has taken.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// Takes the next bytes of the data.
    pub fn update(&mut self, mut bytes: &[u8]) -> Result<(), VerityError> {
        self.data_size += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = bytes.len().min(BATCH_BYTES - self.pending.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() == BATCH_BYTES {
                self.hash_pending()?;
            }
        }
        Ok(())
    }

    /// Hashes the whole blocks of `pending` (all of it: callers keep it block-aligned).
    fn hash_pending(&mut self) -> Result<(), VerityError> {
        let salted = salted(&self.salt);
        let blocks = self.pending.len() / BLOCK as usize;
        let per_worker = blocks.div_ceil(self.workers).max(1) * BLOCK as usize;
        let hash = |block: &[u8]| block_hash(&salted, block);
        let runs: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self.pending[..blocks * BLOCK as usize]
                .chunks(per_worker)
                .map(|run| scope.spawn(move || run.chunks(BLOCK as usize).flat_map(hash).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        for run in runs {
            self.level0.write_all(&run).map_err(VerityError::Scratch)?;
            self.level0_len += run.len() as u64;
        }
        self.pending.clear();
        Ok(())
    }

    /// Writes the superblock and hash tree of all the data taken to `out`.
    pub fn finish<W: Write>(mut self, mut out: W) -> Result<VerityTree, VerityError> {
        if !self.data_size.is_multiple_of(BLOCK) {
            return Err(VerityError::NotBlockAligned(self.data_size));
        }
        self.hash_pending()?;
        let data_blocks = self.data_size / BLOCK;
        if self.level0_len != data_blocks * DIGEST as u64 {
            return Err(VerityError::Worker);
        }
        let mut level0 =
            self.level0.into_inner().map_err(|e| VerityError::Scratch(e.into_error()))?;
        level0.seek(SeekFrom::Start(0)).map_err(VerityError::Scratch)?;
        let mut level0 = BufReader::with_capacity(1 << 20, level0);
        let salt = self.salt;
        let salted = salted(&salt);
        let hash = |block: &[u8]| block_hash(&salted, block);

        // The kernel's level count: the smallest L with (blocks - 1) >> (7 * L) == 0.
        let mut remaining = data_blocks.saturating_sub(1);
        let mut levels: Vec<Vec<u8>> = Vec::new();
        let mut current: Vec<u8> = Vec::new();
        if remaining == 0 {
            // One data block: its hash is the root and there is no tree.
            current.resize(data_blocks as usize * DIGEST, 0);
            level0.read_exact(&mut current).map_err(VerityError::Scratch)?;
        } else {
            // Level 1 from level 0, read back a block at a time (zero-padded at the end).
            remaining /= PER_BLOCK;
            let mut block = vec![0u8; BLOCK as usize];
            let mut left = self.level0_len;
            while left > 0 {
                let n = left.min(BLOCK) as usize;
                block[n..].fill(0);
                level0.read_exact(&mut block[..n]).map_err(VerityError::Scratch)?;
                current.extend_from_slice(&hash(&block));
                left -= n as u64;
            }
        }
        while remaining > 0 {
            remaining /= PER_BLOCK;
            current.resize(current.len().next_multiple_of(BLOCK as usize), 0);
            let next: Vec<u8> = current.chunks(BLOCK as usize).flat_map(hash).collect();
            levels.push(std::mem::replace(&mut current, next));
        }
        // What is left is the hash of the top block (or of the only data block): the root.
        let root_hash: [u8; 32] =
            current.get(..DIGEST).and_then(|d| d.try_into().ok()).ok_or(VerityError::Empty)?;

        let mut h = Sha256::new();
        h.update(b"kiln dm-verity uuid v1\0");
        h.update(&root_hash);
        let uuid = content_uuid(h);

        let mut sb = vec![0u8; BLOCK as usize];
        sb[..SUPERBLOCK].copy_from_slice(&Superblock { uuid, data_blocks, salt }.encode());
        out.write_all(&sb).map_err(VerityError::Write)?;
        let mut hash_size = BLOCK;
        for level in levels.iter().rev() {
            out.write_all(level).map_err(VerityError::Write)?;
            hash_size += level.len() as u64;
        }
        if data_blocks > 1 {
            // Level 0 comes last, padded to a whole block.
            level0.seek(SeekFrom::Start(0)).map_err(VerityError::Scratch)?;
            let copied = io::copy(&mut level0, &mut out).map_err(VerityError::Write)?;
            let padded = copied.next_multiple_of(BLOCK);
            out.write_all(&vec![0u8; (padded - copied) as usize]).map_err(VerityError::Write)?;
            hash_size += padded;
        }
        Ok(VerityTree { root_hash, salt, uuid, data_blocks, hash_size })
    }
}

/// A writer that also feeds what it writes to a [`VerityHasher`], so an image is hashed as it
/// is written instead of read back.
pub struct VerityTee<'h, W> {
    pub out: W,
    pub hasher: &'h mut VerityHasher,
}

impl<W: Write> Write for VerityTee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

// The on-disk superblock: cryptsetup's `struct verity_sb`, little-endian.

const SUPERBLOCK: usize = 512;
const SIGNATURE: [u8; 8] = *b"verity\0\0";
const SUPERBLOCK_VERSION: u32 = 1;
/// Format version 1: the salt goes before the block it salts.
const HASH_TYPE_SALT_FIRST: u32 = 1;
const ALGORITHM: &[u8] = b"sha256";
const ALGORITHM_FIELD: usize = 32;
const SALT_FIELD: usize = 256;

/// The verity superblock at the start of the hash device.
struct Superblock {
    uuid: [u8; 16],
    data_blocks: u64,
    salt: [u8; 32],
}

impl Superblock {
    fn encode(&self) -> [u8; SUPERBLOCK] {
        Record::new()
            .bytes(&SIGNATURE)
            .le32(SUPERBLOCK_VERSION)
            .le32(HASH_TYPE_SALT_FIRST)
            .bytes(&self.uuid)
            .bytes(ALGORITHM)
            .zeros(ALGORITHM_FIELD - ALGORITHM.len())
            .le32(BLOCK as u32) // data block size
            .le32(BLOCK as u32) // hash block size
            .le64(self.data_blocks)
            .le16(self.salt.len() as u16)
            .zeros(6)
            .bytes(&self.salt)
            .zeros(SALT_FIELD - self.salt.len())
            .zeros(168)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_fields_sit_where_cryptsetup_reads_them() {
        let sb = Superblock { uuid: [0x11; 16], data_blocks: 0x0102_0304, salt: [0x22; 32] };
        let sb = sb.encode();
        assert_eq!(sb.len(), 512);
        assert_eq!(&sb[0..8], b"verity\0\0");
        assert_eq!(sb[8..16], [1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(sb[16..32], [0x11; 16]);
        assert_eq!(&sb[32..38], b"sha256");
        assert_eq!(sb[64..72], [0, 0x10, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(sb[72..80], [4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(sb[80..82], [32, 0]);
        assert_eq!(sb[88..120], [0x22; 32]);
        let set = sb.iter().filter(|b| **b != 0).count();
        assert_eq!(set, 6 + 2 + 16 + 6 + 2 + 4 + 1 + 32);
    }

    #[test]
    fn hash_size_is_what_finish_writes() {
        // Sizes around each level boundary: 1 block, one full hash block, one more, and
        // one more than a full second level.
        for blocks in [1u64, 2, 127, 128, 129, 4096, 128 * 128, 128 * 128 + 1] {
            let data = vec![0x5au8; (blocks * BLOCK) as usize];
            let mut out = Vec::new();
            let tree = write_verity(&data[..], blocks * BLOCK, [7; 32], 2, &mut out).unwrap();
            assert_eq!(tree.hash_size, out.len() as u64, "{blocks} blocks");
            assert_eq!(hash_size(blocks * BLOCK), tree.hash_size, "{blocks} blocks");
        }
    }
}

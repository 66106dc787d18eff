//! dm-verity: the sha256 hash tree over a filesystem image, in the on-disk format
//! `veritysetup` reads (format version 1, 4 KiB data and hash blocks, salt before the block).
//!
//! The hash device starts with a 512-byte verity superblock padded to one hash block, then the
//! tree from its top level down to the level that hashes the data. The salt is derived from a
//! caller-given seed (the filesystem's content-derived UUID), never random, and the
//! superblock UUID from the root hash, so equal data gives an equal hash device.

use std::io::{self, Read, Write};

use kiln_oci::digest::Sha256;

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: u64 = BLOCK / DIGEST as u64;
const SUPERBLOCK: usize = 512;

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

/// The salt for data identified by `seed`.
pub fn salt_from(seed: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kiln dm-verity salt v1\0");
    h.update(seed);
    *h.finish().as_bytes()
}

/// Reads `data_size` bytes of `data`, writes the superblock and hash tree to `out`.
pub fn write_verity<R: Read, W: Write>(
    mut data: R,
    data_size: u64,
    salt: [u8; 32],
    threads: usize,
    mut out: W,
) -> Result<VerityTree, VerityError> {
    if data_size % BLOCK != 0 {
        return Err(VerityError::NotBlockAligned(data_size));
    }
    let data_blocks = data_size / BLOCK;
    let mut salted = Sha256::new();
    salted.update(&salt);
    let hash = |block: &[u8]| {
        let mut h = salted.clone();
        h.update(block);
        *h.finish().as_bytes()
    };

    // Level 0 hashes the data; each further level hashes the one below until one block.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::with_capacity((data_blocks as usize) * DIGEST);
    // Data blocks are read in batches and each batch is hashed by `threads` workers, each
    // taking a contiguous run of blocks; the hashes are appended in block order, so the
    // thread count never shows in the output.
    let workers = threads.max(1);
    let batch_blocks = (BATCH_BYTES / BLOCK as usize).max(workers);
    let mut buf = vec![0u8; batch_blocks * BLOCK as usize];
    let mut left = data_blocks as usize;
    while left > 0 {
        let blocks = left.min(batch_blocks);
        let batch = &mut buf[..blocks * BLOCK as usize];
        data.read_exact(batch).map_err(VerityError::Read)?;
        let per_worker = blocks.div_ceil(workers) * BLOCK as usize;
        let hashes: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .chunks(per_worker)
                .map(|run| scope.spawn(|| run.chunks(BLOCK as usize).flat_map(hash).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        for run in hashes {
            current.extend_from_slice(&run);
        }
        left -= blocks;
    }
    if current.len() != data_blocks as usize * DIGEST {
        return Err(VerityError::Worker);
    }
    // The kernel's level count: the smallest L with (blocks - 1) >> (7 * L) == 0.
    let mut remaining = data_blocks.saturating_sub(1);
    while remaining > 0 {
        remaining /= PER_BLOCK;
        current.resize(current.len().next_multiple_of(BLOCK as usize), 0);
        let next: Vec<u8> = current.chunks(BLOCK as usize).flat_map(hash).collect();
        levels.push(std::mem::replace(&mut current, next));
    }
    // What is left is the hash of the top block (or of the only data block): the root.
    let root_hash: [u8; 32] =
        current.get(..DIGEST).and_then(|d| d.try_into().ok()).ok_or(VerityError::Empty)?;

    let mut uuid = [0u8; 16];
    let mut h = Sha256::new();
    h.update(b"kiln dm-verity uuid v1\0");
    h.update(&root_hash);
    uuid.copy_from_slice(&h.finish().as_bytes()[..16]);
    uuid[6] = (uuid[6] & 0x0F) | 0x80;
    uuid[8] = (uuid[8] & 0x3F) | 0x80;

    let mut sb = vec![0u8; BLOCK as usize];
    superblock(&mut sb[..SUPERBLOCK], &uuid, data_blocks, &salt);
    out.write_all(&sb).map_err(VerityError::Write)?;
    let mut hash_size = BLOCK;
    for level in levels.iter().rev() {
        out.write_all(level).map_err(VerityError::Write)?;
        hash_size += level.len() as u64;
    }
    Ok(VerityTree { root_hash, salt, uuid, data_blocks, hash_size })
}

/// The `verity_sb` superblock cryptsetup writes and reads.
fn superblock(sb: &mut [u8], uuid: &[u8; 16], data_blocks: u64, salt: &[u8; 32]) {
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: salt first
    sb[16..32].copy_from_slice(uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[88..88 + salt.len()].copy_from_slice(salt);
}

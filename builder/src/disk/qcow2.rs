//! qcow2 (version 3, 64 KiB clusters, 16-bit refcounts) written from a raw disk.
//!
//! Layout, in this order: header cluster, refcount table, refcount blocks, L1 table, one L2
//! table per L1 entry, then the disk's non-zero clusters in guest order. All-zero clusters
//! are left unallocated (they read as zeros), so the file is as small as the content and
//! depends only on the raw bytes.

use std::io::{self, Read, Seek, SeekFrom, Write};

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const MAGIC: u32 = 0x5146_49fb;
const HEADER_LENGTH: u32 = 104;
/// 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const ENTRIES_PER_TABLE: u64 = CLUSTER / 8;
/// "Refcount is exactly one": no snapshot shares this cluster.
const COPIED: u64 = 1 << 63;

/// Why a qcow2 image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("reading the raw disk")]
    Read(#[source] io::Error),
    #[error("writing the qcow2 image")]
    Write(#[source] io::Error),
}

/// Converts `size` bytes of the raw disk `raw` (read twice: once to find the zero clusters,
/// once to copy) into a qcow2 image on `out`; returns the image size in bytes.
pub fn write_qcow2<R: Read + Seek, W: Write>(
    mut raw: R,
    size: u64,
    mut out: W,
) -> Result<u64, Qcow2Error> {
    let guest_clusters = size.div_ceil(CLUSTER);
    let mut buf = vec![0u8; CLUSTER as usize];
    let mut used = Vec::with_capacity(guest_clusters as usize);
    raw.seek(SeekFrom::Start(0)).map_err(Qcow2Error::Read)?;
    for i in 0..guest_clusters {
        read_cluster(&mut raw, &mut buf, size - i * CLUSTER)?;
        used.push(buf.iter().any(|b| *b != 0));
    }
    let data_clusters = used.iter().filter(|u| **u).count() as u64;

    let l1_size = guest_clusters.div_ceil(ENTRIES_PER_TABLE);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
    // Refcount blocks count every host cluster, themselves and the table included.
    let fixed = 1 + l1_clusters + l1_size + data_clusters;
    let (mut rt_clusters, mut rb_count) = (1u64, 1u64);
    loop {
        let total = fixed + rt_clusters + rb_count;
        let rb = total.div_ceil(REFCOUNTS_PER_BLOCK);
        let rt = (rb * 8).div_ceil(CLUSTER);
        if (rb, rt) == (rb_count, rt_clusters) {
            break;
        }
        (rb_count, rt_clusters) = (rb, rt);
    }
    let total = fixed + rt_clusters + rb_count;
    let rt_at = 1;
    let rb_at = rt_at + rt_clusters;
    let l1_at = rb_at + rb_count;
    let l2_at = l1_at + l1_clusters;
    let data_at = l2_at + l1_size;

    let mut header = vec![0u8; CLUSTER as usize];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &MAGIC.to_be_bytes());
    put(4, &3u32.to_be_bytes());
    put(20, &CLUSTER_BITS.to_be_bytes());
    put(24, &size.to_be_bytes());
    put(36, &(l1_size as u32).to_be_bytes());
    put(40, &(l1_at * CLUSTER).to_be_bytes());
    put(48, &(rt_at * CLUSTER).to_be_bytes());
    put(56, &(rt_clusters as u32).to_be_bytes());
    put(96, &REFCOUNT_ORDER.to_be_bytes());
    put(100, &HEADER_LENGTH.to_be_bytes());
    // Bytes 104..112 stay zero: the end of the (empty) header extension list.
    out.write_all(&header).map_err(Qcow2Error::Write)?;

    let mut table = vec![0u8; (rt_clusters * CLUSTER) as usize];
    for i in 0..rb_count {
        let at = (i * 8) as usize;
        table[at..at + 8].copy_from_slice(&((rb_at + i) * CLUSTER).to_be_bytes());
    }
    out.write_all(&table).map_err(Qcow2Error::Write)?;

    let mut refcounts = vec![0u8; (rb_count * CLUSTER) as usize];
    for i in 0..total as usize {
        refcounts[2 * i..2 * i + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    out.write_all(&refcounts).map_err(Qcow2Error::Write)?;

    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    for i in 0..l1_size {
        let at = (i * 8) as usize;
        l1[at..at + 8].copy_from_slice(&(((l2_at + i) * CLUSTER) | COPIED).to_be_bytes());
    }
    out.write_all(&l1).map_err(Qcow2Error::Write)?;

    let mut l2 = vec![0u8; (l1_size * CLUSTER) as usize];
    let guest = used.iter().enumerate().filter(|(_, u)| **u).map(|(i, _)| i);
    for (host, i) in (data_at..).zip(guest) {
        l2[i * 8..i * 8 + 8].copy_from_slice(&((host * CLUSTER) | COPIED).to_be_bytes());
    }
    out.write_all(&l2).map_err(Qcow2Error::Write)?;

    raw.seek(SeekFrom::Start(0)).map_err(Qcow2Error::Read)?;
    for (i, is_used) in used.iter().enumerate() {
        read_cluster(&mut raw, &mut buf, size - i as u64 * CLUSTER)?;
        if *is_used {
            out.write_all(&buf).map_err(Qcow2Error::Write)?;
        }
    }
    Ok(total * CLUSTER)
}

/// Reads the next cluster into `buf`, zero-padding past the `left` bytes that remain.
fn read_cluster<R: Read>(raw: &mut R, buf: &mut [u8], left: u64) -> Result<(), Qcow2Error> {
    let n = left.min(CLUSTER) as usize;
    raw.read_exact(&mut buf[..n]).map_err(Qcow2Error::Read)?;
    buf[n..].fill(0);
    Ok(())
}

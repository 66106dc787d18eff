//! qcow2 (version 3, 64 KiB clusters, 16-bit refcounts), laid out before any data is written
//! so that it can be written front to back as the disk's content is made.
//!
//! Layout, in this order: header cluster, refcount table, refcount blocks, L1 table, an L2
//! table for each L1 entry that maps any data, then the data clusters. Which guest clusters hold data, and in which
//! order they are stored, is fixed up front by [`Qcow2Layout`] from the byte ranges the disk's
//! content occupies, in the order that content is produced; every other cluster is left
//! unallocated (it reads as zeros). The file thus depends only on the layout and the bytes,
//! and [`Qcow2Stream`] (content written as it is made) and [`write_qcow2`] (content read from
//! a raw disk) give the same file.

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

use crate::record::Record;

const CLUSTER_BITS: u32 = 16;
/// Cluster size: the granularity at which content is stored or left out.
pub const CLUSTER: u64 = 1 << CLUSTER_BITS;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const ENTRIES_PER_TABLE: u64 = CLUSTER / 8;

// The on-disk structures (qemu's docs/interop/qcow2.txt), all big-endian.

const MAGIC: u32 = 0x5146_49fb;
const VERSION: u32 = 3;
const HEADER_LENGTH: usize = 104;
/// 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
/// "Refcount is exactly one" in an L1 or L2 entry: no snapshot shares this cluster.
const COPIED: u64 = 1 << 63;

/// The version 3 header, at offset 0. No backing file, encryption, snapshots or feature bits.
struct Header {
    /// Virtual disk size in bytes.
    size: u64,
    l1_size: u32,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
}

impl Header {
    /// The header, followed by the end of its (empty) list of header extensions.
    fn encode(&self) -> [u8; HEADER_LENGTH + 8] {
        Record::new()
            .be32(MAGIC)
            .be32(VERSION)
            .be64(0) // backing file offset
            .be32(0) // backing file name size
            .be32(CLUSTER_BITS)
            .be64(self.size)
            .be32(0) // encryption method
            .be32(self.l1_size)
            .be64(self.l1_table_offset)
            .be64(self.refcount_table_offset)
            .be32(self.refcount_table_clusters)
            .be32(0) // snapshots
            .be64(0) // snapshots offset
            .be64(0) // incompatible features
            .be64(0) // compatible features
            .be64(0) // autoclear features
            .be32(REFCOUNT_ORDER)
            .be32(HEADER_LENGTH as u32)
            .be32(0) // header extension type: end of the list
            .be32(0) // header extension length
            .finish()
    }
}

/// An L1 entry (the offset of an L2 table) or a standard L2 entry (the offset of a data
/// cluster): the host offset with the "copied" flag.
fn table_entry(host_offset: u64) -> [u8; 8] {
    (host_offset | COPIED).to_be_bytes()
}

/// A refcount table entry: the offset of a refcount block.
fn refcount_table_entry(block_offset: u64) -> [u8; 8] {
    block_offset.to_be_bytes()
}

/// A 16-bit refcount block entry.
fn refcount(count: u16) -> [u8; 2] {
    count.to_be_bytes()
}

/// Why a qcow2 image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("disk content at bytes {start}..{end} lies outside the {size}-byte disk")]
    Outside { start: u64, end: u64, size: u64 },
    #[error(
        "disk content was written to guest cluster {cluster} out of the planned order \
         (cluster {expected:?} was due next)"
    )]
    OutOfOrder { cluster: u64, expected: Option<u64> },
    #[error("the disk's content ended with {missing} planned clusters never written")]
    Unwritten { missing: usize },
    #[error("reading the raw disk")]
    Read(#[source] io::Error),
    #[error("writing the qcow2 image")]
    Write(#[source] io::Error),
}

impl From<Qcow2Error> for io::Error {
    fn from(e: Qcow2Error) -> Self {
        match e {
            Qcow2Error::Write(e) | Qcow2Error::Read(e) => e,
            other => io::Error::other(other),
        }
    }
}

/// Where a qcow2 image stores each guest cluster, and the metadata saying so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qcow2Layout {
    /// Virtual disk size in bytes.
    size: u64,
    /// The allocated guest clusters, in the order their data is stored.
    clusters: Vec<u64>,
    /// The L1 entries that have an L2 table (those covering an allocated cluster), ascending.
    l2_tables: Vec<u64>,
    rt_clusters: u64,
    rb_count: u64,
    l1_size: u64,
    l1_clusters: u64,
}

impl Qcow2Layout {
    /// Lays out a disk of `size` bytes whose content lies in `extents` (guest byte ranges),
    /// stored in that order: each cluster where an extent first touches it.
    pub fn new(size: u64, extents: &[Range<u64>]) -> Result<Self, Qcow2Error> {
        // Memory and metadata grow with the content, not with the disk's (virtual) size.
        let mut taken = HashSet::new();
        let mut clusters = Vec::new();
        for e in extents.iter().filter(|e| !e.is_empty()) {
            if e.start > e.end || e.end > size {
                return Err(Qcow2Error::Outside { start: e.start, end: e.end, size });
            }
            for c in e.start / CLUSTER..e.end.div_ceil(CLUSTER) {
                if taken.insert(c) {
                    clusters.push(c);
                }
            }
        }
        let mut l2_tables: Vec<u64> = clusters.iter().map(|c| c / ENTRIES_PER_TABLE).collect();
        l2_tables.sort_unstable();
        l2_tables.dedup();
        let l1_size = size.div_ceil(CLUSTER).div_ceil(ENTRIES_PER_TABLE);
        let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
        // Refcount blocks count every host cluster, themselves and the table included.
        let fixed = 1 + l1_clusters + l2_tables.len() as u64 + clusters.len() as u64;
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
        Ok(Qcow2Layout { size, clusters, l2_tables, rt_clusters, rb_count, l1_size, l1_clusters })
    }

    /// Host clusters before the first data cluster.
    fn data_at(&self) -> u64 {
        1 + self.rt_clusters + self.rb_count + self.l1_clusters + self.l2_tables.len() as u64
    }

    /// The size of the image file in bytes.
    pub fn file_size(&self) -> u64 {
        (self.data_at() + self.clusters.len() as u64) * CLUSTER
    }

    /// Writes the header, refcounts and mapping tables: everything before the data.
    fn write_metadata<W: Write>(&self, out: &mut W) -> Result<(), Qcow2Error> {
        let total = self.data_at() + self.clusters.len() as u64;
        let rt_at = 1;
        let rb_at = rt_at + self.rt_clusters;
        let l1_at = rb_at + self.rb_count;
        let l2_at = l1_at + self.l1_clusters;
        let write = |out: &mut W, bytes: &[u8]| out.write_all(bytes).map_err(Qcow2Error::Write);

        let mut header = vec![0u8; CLUSTER as usize];
        let fields = Header {
            size: self.size,
            l1_size: self.l1_size as u32,
            l1_table_offset: l1_at * CLUSTER,
            refcount_table_offset: rt_at * CLUSTER,
            refcount_table_clusters: self.rt_clusters as u32,
        }
        .encode();
        header[..fields.len()].copy_from_slice(&fields);
        write(out, &header)?;

        let mut table = vec![0u8; (self.rt_clusters * CLUSTER) as usize];
        for (entry, block) in table.chunks_exact_mut(8).zip(rb_at..rb_at + self.rb_count) {
            entry.copy_from_slice(&refcount_table_entry(block * CLUSTER));
        }
        write(out, &table)?;

        let mut refcounts = vec![0u8; (self.rb_count * CLUSTER) as usize];
        for entry in refcounts.chunks_exact_mut(2).take(total as usize) {
            entry.copy_from_slice(&refcount(1));
        }
        write(out, &refcounts)?;

        let mut l1 = vec![0u8; (self.l1_clusters * CLUSTER) as usize];
        for (host, index) in (l2_at..).zip(&self.l2_tables) {
            let at = (index * 8) as usize;
            l1[at..at + 8].copy_from_slice(&table_entry(host * CLUSTER));
        }
        write(out, &l1)?;

        // The L2 tables one at a time, from the (guest, host) pairs in guest order.
        let mut mapped: Vec<(u64, u64)> =
            self.clusters.iter().copied().zip(self.data_at()..).collect();
        mapped.sort_unstable();
        let mut mapped = mapped.into_iter().peekable();
        let mut l2 = vec![0u8; CLUSTER as usize];
        for &index in &self.l2_tables {
            l2.fill(0);
            while let Some((guest, host)) =
                mapped.next_if(|(guest, _)| guest / ENTRIES_PER_TABLE == index)
            {
                let at = ((guest % ENTRIES_PER_TABLE) * 8) as usize;
                l2[at..at + 8].copy_from_slice(&table_entry(host * CLUSTER));
            }
            write(out, &l2)?;
        }
        Ok(())
    }
}

/// Writes the qcow2 image of `layout` to `out`, reading each allocated cluster from the raw
/// disk `raw`; returns the image size in bytes.
pub fn write_qcow2<R: Read + Seek, W: Write>(
    layout: &Qcow2Layout,
    mut raw: R,
    mut out: W,
) -> Result<u64, Qcow2Error> {
    layout.write_metadata(&mut out)?;
    let mut buf = vec![0u8; CLUSTER as usize];
    for &c in &layout.clusters {
        let n = (layout.size - c * CLUSTER).min(CLUSTER) as usize;
        raw.seek(SeekFrom::Start(c * CLUSTER)).map_err(Qcow2Error::Read)?;
        raw.read_exact(&mut buf[..n]).map_err(Qcow2Error::Read)?;
        buf[n..].fill(0);
        out.write_all(&buf).map_err(Qcow2Error::Write)?;
    }
    Ok(layout.file_size())
}

/// A qcow2 image written front to back while the disk's content is made: [`Self::seek`] to
/// a guest offset, then write. Content must arrive cluster by cluster in the layout's order
/// (a cluster may take several writes, and bytes of it never written read as zeros).
pub struct Qcow2Stream<'l, W: Write> {
    layout: &'l Qcow2Layout,
    out: W,
    /// Index in `layout.clusters` of the next cluster to open.
    next: usize,
    /// The guest cluster being filled, and its bytes.
    open: Option<u64>,
    buf: Vec<u8>,
    /// Guest offset of the next byte written.
    at: u64,
}

impl<'l, W: Write> Qcow2Stream<'l, W> {
    /// Writes the metadata of `layout` to `out` and waits for the content.
    pub fn new(layout: &'l Qcow2Layout, mut out: W) -> Result<Self, Qcow2Error> {
        layout.write_metadata(&mut out)?;
        Ok(Qcow2Stream { layout, out, next: 0, open: None, buf: vec![0; CLUSTER as usize], at: 0 })
    }

    /// Moves to guest offset `at`.
    pub fn seek(&mut self, at: u64) {
        self.at = at;
    }

    fn close(&mut self) -> Result<(), Qcow2Error> {
        if self.open.take().is_some() {
            self.out.write_all(&self.buf).map_err(Qcow2Error::Write)?;
            self.buf.fill(0);
        }
        Ok(())
    }

    /// Writes out the last cluster; fails if the layout planned clusters that never came.
    pub fn finish(mut self) -> Result<W, Qcow2Error> {
        self.close()?;
        let missing = self.layout.clusters.len() - self.next;
        if missing > 0 {
            return Err(Qcow2Error::Unwritten { missing });
        }
        Ok(self.out)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<usize, Qcow2Error> {
        let cluster = self.at / CLUSTER;
        if self.open != Some(cluster) {
            let expected = self.layout.clusters.get(self.next).copied();
            if expected != Some(cluster) {
                return Err(Qcow2Error::OutOfOrder { cluster, expected });
            }
            self.close()?;
            self.open = Some(cluster);
            self.next += 1;
        }
        let within = (self.at % CLUSTER) as usize;
        let n = bytes.len().min(CLUSTER as usize - within);
        if self.at + n as u64 > self.layout.size {
            let (start, end, size) = (self.at, self.at + n as u64, self.layout.size);
            return Err(Qcow2Error::Outside { start, end, size });
        }
        self.buf[within..within + n].copy_from_slice(&bytes[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Qcow2Stream<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        Ok(self.put(bytes)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 MiB + 512 byte disk (the last cluster is partial) with content in three places,
    /// produced in an order unlike the guest order.
    fn disk() -> (Vec<u8>, Vec<Range<u64>>) {
        let size = (1 << 20) + 512;
        let mut raw = vec![0u8; size];
        let extents = vec![300_000..400_000u64, (size as u64 - 600)..size as u64, 0..1000];
        for (i, e) in extents.iter().enumerate() {
            for (j, b) in raw[e.start as usize..e.end as usize].iter_mut().enumerate() {
                *b = (i * 7 + j % 251 + 1) as u8;
            }
        }
        (raw, extents)
    }

    #[test]
    fn header_fields_sit_at_the_specified_offsets() {
        let h = Header {
            size: 0x0102_0304_0506,
            l1_size: 7,
            l1_table_offset: 0x3_0000,
            refcount_table_offset: 0x1_0000,
            refcount_table_clusters: 1,
        }
        .encode();
        assert_eq!(h.len(), 112);
        assert_eq!(h[0..8], [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
        assert_eq!(h[20..24], [0, 0, 0, 16]);
        assert_eq!(h[24..32], [0, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(h[36..40], [0, 0, 0, 7]);
        assert_eq!(h[40..48], 0x3_0000u64.to_be_bytes());
        assert_eq!(h[48..56], 0x1_0000u64.to_be_bytes());
        assert_eq!(h[56..60], [0, 0, 0, 1]);
        assert_eq!(h[96..104], [0, 0, 0, 4, 0, 0, 0, 104]);
        let set: Vec<usize> = (0..h.len()).filter(|i| h[*i] != 0).collect();
        assert_eq!(set, [0, 1, 2, 3, 7, 23, 26, 27, 28, 29, 30, 31, 39, 45, 53, 59, 99, 103]);
        assert_eq!(table_entry(0x5_0000), [0x80, 0, 0, 0, 0, 5, 0, 0]);
    }

    #[test]
    fn streamed_and_converted_images_are_the_same_bytes() {
        let (raw, extents) = disk();
        let layout = Qcow2Layout::new(raw.len() as u64, &extents).unwrap();
        let mut converted = Vec::new();
        let len = write_qcow2(&layout, io::Cursor::new(&raw), &mut converted).unwrap();
        assert_eq!(len, converted.len() as u64);

        let mut stream = Qcow2Stream::new(&layout, Vec::new()).unwrap();
        for e in &extents {
            stream.seek(e.start);
            // Odd-sized writes, so clusters fill in pieces.
            for piece in raw[e.start as usize..e.end as usize].chunks(9_999) {
                stream.write_all(piece).unwrap();
            }
        }
        assert_eq!(stream.finish().unwrap(), converted);
        // Only the touched clusters are stored: 3 + 2 + 1 of 17.
        assert_eq!(layout.file_size(), (layout.data_at() + 6) * CLUSTER);
    }

    #[test]
    fn content_out_of_the_planned_order_or_missing_is_refused() {
        let (raw, extents) = disk();
        let layout = Qcow2Layout::new(raw.len() as u64, &extents).unwrap();
        let mut stream = Qcow2Stream::new(&layout, Vec::new()).unwrap();
        stream.seek(0);
        let err = stream.write_all(&[1]).unwrap_err();
        assert!(err.to_string().contains("out of the planned order"), "{err}");

        let mut stream = Qcow2Stream::new(&layout, Vec::new()).unwrap();
        stream.seek(300_000);
        stream.write_all(&[1; 10]).unwrap();
        let err = stream.finish().unwrap_err();
        assert!(matches!(err, Qcow2Error::Unwritten { missing: 5 }), "{err}");

        let err = Qcow2Layout::new(1000, std::slice::from_ref(&(500..1001))).unwrap_err();
        assert!(err.to_string().contains("outside the 1000-byte disk"), "{err}");
    }

    #[test]
    fn metadata_grows_with_the_content_not_the_disk_size() {
        // A 1 TiB disk with content at its two ends: one L2 table for each end, and four
        // data clusters (the last extent straddles a cluster boundary).
        let size = 1u64 << 40;
        let extents = [0..1000, size - 70_000..size];
        let layout = Qcow2Layout::new(size, &extents).unwrap();
        assert_eq!(layout.l2_tables, [0, size / CLUSTER / ENTRIES_PER_TABLE - 1]);
        assert_eq!(layout.clusters.len(), 3);
        assert!(layout.file_size() < 16 * CLUSTER, "{}", layout.file_size());
    }
}

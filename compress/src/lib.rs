//! Layer compression whose output bytes depend only on the input and the parameters, never
//! on the number of threads.
//!
//! gzip: the input is cut into fixed 1 MiB chunks, each deflated on its own by libdeflate
//! (which compresses better and faster than zlib, but only whole buffers) and made a
//! non-final, byte-aligned part (see [`crate::deflate_join`]), so the pieces concatenate into
//! one deflate stream inside a single gzip member, as pigz's output is.
//! zstd: libzstd's multithreaded mode with at least one worker, whose output is the same for
//! any worker count.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::{mpsc, Mutex};
use std::thread;

use serde::{Deserialize, Serialize};

pub mod deflate_join;
#[cfg(test)]
mod test_data;
pub mod workers;

/// gzip input is deflated in chunks of exactly this many bytes (the last may be shorter).
pub const GZIP_CHUNK: usize = 1 << 20;
/// gzip member header: deflate, no flags, mtime 0, XFL 0, OS 255 ("unknown").
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// A layer compressor and its parameters, as recorded in lock files:
/// `{"algorithm":"gzip","level":5,"chunk":1048576}` or `{"algorithm":"zstd","level":3}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CompressionRecord", into = "CompressionRecord")]
pub enum Compression {
    /// Deflate through libdeflate, level 0 ..= 12.
    Gzip { level: u32 },
    /// libzstd in multithreaded mode, level 1 ..= 22.
    Zstd { level: i32 },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::GZIP
    }
}

impl Compression {
    /// gzip at level 5: the level where libdeflate's layers are still smaller than umoci's
    /// default gzip, and the one after which each level costs far more time than it saves
    /// (docs/performance.md has the figures).
    pub const GZIP: Compression = Compression::Gzip { level: 5 };
    /// zstd at level 3.
    pub const ZSTD: Compression = Compression::Zstd { level: 3 };

    /// Refuses levels the backend does not have.
    pub fn validate(&self) -> Result<(), CompressionError> {
        match *self {
            Compression::Gzip { level } if level > 12 => {
                Err(CompressionError::Level { algorithm: "gzip", level: level.into() })
            }
            Compression::Zstd { level } if !(1..=22).contains(&level) => {
                Err(CompressionError::Level { algorithm: "zstd", level: level.into() })
            }
            _ => Ok(()),
        }
    }

    /// The OCI media type of a tar layer compressed this way.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => kiln_oci::media_type::LAYER_TAR_GZIP,
            Compression::Zstd { .. } => kiln_oci::media_type::LAYER_TAR_ZSTD,
        }
    }

    /// A human description naming implementation and parameters, e.g.
    /// `gzip/libdeflate level 5 chunk 1MiB`.
    pub fn describe(&self) -> String {
        match self {
            Compression::Gzip { level } => {
                format!("gzip/libdeflate level {level} chunk {}MiB", GZIP_CHUNK >> 20)
            }
            Compression::Zstd { level } => format!(
                "zstd/libzstd {} level {level} multithreaded",
                zstd::zstd_safe::version_string()
            ),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why compression parameters were refused or compression failed.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("{algorithm} has no compression level {level}")]
    Level { algorithm: &'static str, level: i64 },
    #[error("gzip chunk size {0} is not supported (only {GZIP_CHUNK} bytes)")]
    Chunk(u64),
    #[error("zstd has no chunk size parameter")]
    ZstdChunk,
    #[error("reading the data to compress")]
    Read(#[source] io::Error),
    #[error("writing compressed data")]
    Write(#[source] io::Error),
    #[error("deflate failed: {0}")]
    Deflate(String),
    #[error("joining deflated chunks")]
    Join(#[from] crate::deflate_join::JoinError),
    #[error("setting up libzstd")]
    Zstd(#[source] io::Error),
    #[error("a compression worker thread stopped unexpectedly")]
    Worker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Algorithm {
    Gzip,
    Zstd,
}

/// The serialised form of [`Compression`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompressionRecord {
    algorithm: Algorithm,
    level: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunk: Option<u64>,
}

impl From<Compression> for CompressionRecord {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Gzip { level } => CompressionRecord {
                algorithm: Algorithm::Gzip,
                level: level.into(),
                chunk: Some(GZIP_CHUNK as u64),
            },
            Compression::Zstd { level } => {
                CompressionRecord { algorithm: Algorithm::Zstd, level: level.into(), chunk: None }
            }
        }
    }
}

impl TryFrom<CompressionRecord> for Compression {
    type Error = CompressionError;
    fn try_from(r: CompressionRecord) -> Result<Self, CompressionError> {
        let c = match r.algorithm {
            Algorithm::Gzip => {
                if let Some(chunk) = r.chunk.filter(|c| *c != GZIP_CHUNK as u64) {
                    return Err(CompressionError::Chunk(chunk));
                }
                let level = u32::try_from(r.level)
                    .map_err(|_| CompressionError::Level { algorithm: "gzip", level: r.level })?;
                Compression::Gzip { level }
            }
            Algorithm::Zstd => {
                if r.chunk.is_some() {
                    return Err(CompressionError::ZstdChunk);
                }
                let level = i32::try_from(r.level)
                    .map_err(|_| CompressionError::Level { algorithm: "zstd", level: r.level })?;
                Compression::Zstd { level }
            }
        };
        c.validate()?;
        Ok(c)
    }
}

/// Compresses all of `input` into `output` using up to `threads` worker threads (0 counts
/// as 1); the bytes written do not depend on `threads`. Returns `output`.
pub fn compress<R: Read, W: Write>(
    compression: &Compression,
    threads: usize,
    mut input: R,
    output: W,
) -> Result<W, CompressionError> {
    let blocks = std::iter::from_fn(move || {
        let mut buf = Vec::with_capacity(GZIP_CHUNK);
        match read_full(&mut input, &mut buf, GZIP_CHUNK) {
            Ok(0) => None,
            Ok(_) => Some(Ok(buf)),
            Err(e) => Some(Err(e)),
        }
    });
    compress_blocks(compression, threads, blocks, output, &drop)
}

/// [`compress`] for input that already comes in owned blocks, of any sizes: blocks of
/// exactly [`GZIP_CHUNK`] bytes become gzip chunks without being copied. The bytes written
/// depend only on the concatenated input, not on how it was cut into blocks. Each block
/// whose bytes are compressed is handed to `spent`, so that its memory can be filled again.
pub fn compress_blocks<I, W>(
    compression: &Compression,
    threads: usize,
    blocks: I,
    output: W,
    spent: &dyn Fn(Vec<u8>),
) -> Result<W, CompressionError>
where
    I: Iterator<Item = io::Result<Vec<u8>>>,
    W: Write,
{
    compression.validate()?;
    let workers = threads.max(1);
    match *compression {
        Compression::Gzip { level } => {
            gzip(level, workers, Rechunk { blocks, pending: Vec::new() }, output, spent)
        }
        Compression::Zstd { level } => zstd(level, workers, blocks, output, spent),
    }
}

fn zstd<I, W>(
    level: i32,
    workers: usize,
    blocks: I,
    output: W,
    spent: &dyn Fn(Vec<u8>),
) -> Result<W, CompressionError>
where
    I: Iterator<Item = io::Result<Vec<u8>>>,
    W: Write,
{
    let mut enc =
        zstd::stream::write::Encoder::new(output, level).map_err(CompressionError::Zstd)?;
    // Never 0 workers: single-threaded mode writes different bytes.
    let workers = u32::try_from(workers).unwrap_or(u32::MAX);
    enc.multithread(workers).map_err(CompressionError::Zstd)?;
    enc.include_checksum(true).map_err(CompressionError::Zstd)?;
    enc.include_contentsize(false).map_err(CompressionError::Zstd)?;
    for block in blocks {
        let block = block.map_err(CompressionError::Read)?;
        // Plain writes only: an explicit flush would end a zstd job early and change bytes.
        enc.write_all(&block).map_err(CompressionError::Write)?;
        spent(block);
    }
    enc.finish().map_err(CompressionError::Write)
}

/// Cuts blocks of any sizes into [`GZIP_CHUNK`]-byte chunks (the last may be shorter),
/// passing a block of exactly that size on as it is.
struct Rechunk<I> {
    blocks: I,
    pending: Vec<u8>,
}

impl<I: Iterator<Item = io::Result<Vec<u8>>>> Iterator for Rechunk<I> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pending.len() >= GZIP_CHUNK {
                let rest = self.pending.split_off(GZIP_CHUNK);
                return Some(Ok(std::mem::replace(&mut self.pending, rest)));
            }
            match self.blocks.next() {
                None if self.pending.is_empty() => return None,
                None => return Some(Ok(std::mem::take(&mut self.pending))),
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(block)) if self.pending.is_empty() => self.pending = block,
                Some(Ok(block)) => self.pending.extend_from_slice(&block),
            }
        }
    }
}

/// One chunk to deflate.
struct Job {
    index: u64,
    buf: Vec<u8>,
    last: bool,
    /// Memory for the deflated bytes, from a chunk written before (faulting in fresh pages
    /// for every chunk showed in profiles).
    out: Vec<u8>,
}

/// A deflated chunk with the crc32 of its input, and the input's memory.
struct Deflated {
    index: u64,
    bytes: Vec<u8>,
    crc: crc32fast::Hasher,
    input: Vec<u8>,
}

fn gzip<I, W>(
    level: u32,
    workers: usize,
    mut chunks: I,
    mut output: W,
    spent: &dyn Fn(Vec<u8>),
) -> Result<W, CompressionError>
where
    I: Iterator<Item = io::Result<Vec<u8>>>,
    W: Write,
{
    let max_in_flight = 2 * workers;
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<Result<Deflated, CompressionError>>();
    thread::scope(|scope| {
        // Each worker keeps one compressor and reuses its match-finder tables.
        let init = move || Deflater::new(level);
        let panicked = || Err(CompressionError::Worker);
        workers::start(scope, workers, &job_rx, &done_tx, init, deflate_chunk, panicked);
        drop(done_tx);

        output.write_all(&GZIP_HEADER).map_err(CompressionError::Write)?;
        let mut crc = crc32fast::Hasher::new();
        let (mut sent, mut written, mut eof) = (0u64, 0u64, false);
        let mut ready: BTreeMap<u64, Deflated> = BTreeMap::new();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        // One chunk of lookahead tells the last chunk (which ends the stream) from the others;
        // empty input is one empty last chunk.
        let mut next = chunks.next().transpose().map_err(CompressionError::Read)?;
        while !eof || written < sent {
            while !eof && sent - written < max_in_flight as u64 {
                let buf = next.take().unwrap_or_default();
                next = chunks.next().transpose().map_err(CompressionError::Read)?;
                eof = next.is_none();
                let out = spare.pop().unwrap_or_default();
                let job = Job { index: sent, buf, last: eof, out };
                job_tx.send(job).map_err(|_| CompressionError::Worker)?;
                sent += 1;
            }
            let done = done_rx.recv().map_err(|_| CompressionError::Worker)??;
            ready.insert(done.index, done);
            while let Some(chunk) = ready.remove(&written) {
                output.write_all(&chunk.bytes).map_err(CompressionError::Write)?;
                crc.combine(&chunk.crc);
                written += 1;
                spare.push(chunk.bytes);
                spent(chunk.input);
            }
        }
        drop(job_tx);
        // ISIZE is the input length modulo 2^32.
        let isize = (crc.total_len() & 0xffff_ffff) as u32;
        output.write_all(&crc.finalize().to_le_bytes()).map_err(CompressionError::Write)?;
        output.write_all(&isize.to_le_bytes()).map_err(CompressionError::Write)?;
        Ok(output)
    })
}

/// Appends up to `want` bytes from `input` to `buf`, stopping early only at end of input.
/// `take` + `read_to_end` fills the spare capacity without zeroing it first.
fn read_full<R: Read>(input: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let start = buf.len();
    buf.reserve(want);
    input.by_ref().take(want as u64).read_to_end(buf)?;
    Ok(buf.len() - start)
}

/// Granule at which a chunk is judged compressible or not: small enough that a file of noise
/// in a tar stream is stored apart from the member headers around it; with larger granules,
/// noise next to a header went through libdeflate, as slow as text, to save almost nothing.
const GRANULE: usize = 4 * 1024;

/// Below this many bytes a verdict is noise itself: such data is compressed.
const MIN_JUDGED: usize = 1024;

/// True when `data` looks like noise (already compressed or encrypted bytes): its byte
/// histogram is so flat that deflate could not gain even 1 %. Integer arithmetic only, so
/// the decision, and thus the output bytes, is the same on every machine.
pub fn incompressible(data: &[u8]) -> bool {
    /// Bytes looked at before the first check of the running sum (even, so that every part
    /// starts on a counted byte).
    const STEP: usize = GRANULE / 2;
    if data.len() < MIN_JUDGED {
        return false;
    }
    // Only the bytes at even offsets are counted: half the work, and still plenty to tell
    // noise from anything deflate can shrink by 1 %; a granule of noise misjudged as
    // compressible (a few in a thousand) is only deflated for nothing.
    let n = data.len().div_ceil(2) as u128;
    // (Σc² − n) / (n(n − 1)) estimates the collision probability Σp² without the bias that
    // small samples have (noise's Σc² exceeds n²/256 by about n). Σp² is 1/256 for uniform
    // bytes; within 3 % of that means a Rényi entropy above ~7.96 bits per byte. Counts only
    // grow, so once a prefix's Σc² reaches the bound the whole is compressible: text is told
    // halfway, with the same verdict as counting everything.
    let bound = n + (n * (n - 1) * 103).div_ceil(256 * 100);
    let mut tables = [[0u32; 256]; 4];
    for part in data.chunks(STEP) {
        count_bytes(part, &mut tables);
        if squared_counts(&tables) >= bound {
            return false;
        }
    }
    true
}

/// Adds the bytes at even offsets of `data` to the histogram, spread over four tables so
/// that runs of one byte value do not wait on the same counter.
fn count_bytes(data: &[u8], tables: &mut [[u32; 256]; 4]) {
    let mut octets = data.chunks_exact(8);
    for o in &mut octets {
        for (table, &b) in tables.iter_mut().zip(o.iter().step_by(2)) {
            table[usize::from(b)] += 1;
        }
    }
    for &b in octets.remainder().iter().step_by(2) {
        tables[0][usize::from(b)] += 1;
    }
}

/// Σ count² over the byte values of the four tables together.
fn squared_counts(tables: &[[u32; 256]; 4]) -> u128 {
    (0..256).map(|i| tables.iter().map(|t| u128::from(t[i])).sum::<u128>()).map(|c| c * c).sum()
}

/// Appends `data` as stored deflate blocks (each at most 65535 bytes, not final). The
/// writer is byte-aligned here because every segment before ended with a sync flush.
fn store_blocks(data: &[u8], out: &mut Vec<u8>) {
    for block in data.chunks(0xffff) {
        let len = block.len() as u16;
        out.push(0);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// A libdeflate compressor at one level, reused from chunk to chunk.
struct Deflater {
    level: u32,
    compressor: Option<libdeflater::Compressor>,
    /// libdeflate's output space, zeroed once and reused: zeroing the compress bound for
    /// every segment cost more than copying the compressed bytes out.
    scratch: Vec<u8>,
}

impl Deflater {
    fn new(level: u32) -> Self {
        Deflater { level, compressor: None, scratch: Vec::new() }
    }

    /// Appends `data` deflated as a non-final, byte-aligned part of a longer stream.
    fn segment(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
        let compressor = match &mut self.compressor {
            Some(c) => c,
            None => {
                let level = i32::try_from(self.level)
                    .ok()
                    .and_then(|l| libdeflater::CompressionLvl::new(l).ok())
                    .ok_or(CompressionError::Level {
                        algorithm: "gzip",
                        level: self.level.into(),
                    })?;
                self.compressor.insert(libdeflater::Compressor::new(level))
            }
        };
        let bound = compressor.deflate_compress_bound(data.len());
        if self.scratch.len() < bound {
            self.scratch.resize(bound, 0);
        }
        let n = compressor
            .deflate_compress(data, &mut self.scratch[..bound])
            .map_err(|e| CompressionError::Deflate(e.to_string()))?;
        let start = out.len();
        out.extend_from_slice(&self.scratch[..n]);
        Ok(crate::deflate_join::unfinish(out, start)?)
    }
}

/// Deflates one chunk as raw deflate. Runs of incompressible granules go out as stored
/// blocks (compressing noise only burns time), the rest through libdeflate; every segment
/// ends byte-aligned, and the last chunk ends with an empty final block. The segmentation
/// depends on the bytes alone, never on threads.
fn deflate_chunk(deflater: &mut Deflater, job: Job) -> Result<Deflated, CompressionError> {
    let data = &job.buf[..];
    let mut out = job.out;
    out.clear();
    out.reserve(data.len() / 2 + 4096);
    // Each granule is judged once; runs of equal verdicts become one segment.
    let verdicts: Vec<bool> = data.chunks(GRANULE).map(incompressible).collect();
    let mut start = 0;
    for run in verdicts.chunk_by(|a, b| a == b) {
        let end = (start + run.len() * GRANULE).min(data.len());
        if run.first() == Some(&true) {
            store_blocks(&data[start..end], &mut out);
        } else {
            deflater.segment(&data[start..end], &mut out)?;
        }
        start = end;
    }
    if job.last {
        // BFINAL=1, BTYPE=01 (fixed Huffman), end-of-block code: an empty final block.
        out.extend_from_slice(&[0x03, 0x00]);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    Ok(Deflated { index: job.index, bytes: out, crc, input: job.buf })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::noise;

    fn text(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut i = 0;
        while out.len() < len {
            out.extend_from_slice(format!("{i:08} INFO layer digest tar gzip\n").as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn noise_is_told_from_text_by_integers_alone() {
        assert!(incompressible(&noise(GRANULE, 7)));
        assert!(!incompressible(&text(GRANULE)));
        assert!(!incompressible(&vec![0u8; GRANULE]));
        assert!(!incompressible(&noise(100, 7)), "too small to judge: compress it");
    }

    /// The verdict from counting every byte at an even offset, with no early answer.
    fn whole_histogram_verdict(data: &[u8]) -> bool {
        let mut counts = [0u128; 256];
        for &b in data.iter().step_by(2) {
            counts[usize::from(b)] += 1;
        }
        let n = data.len().div_ceil(2) as u128;
        let squares: u128 = counts.iter().map(|c| c * c).sum();
        // Σp² estimated without bias, below 1.03 / 256.
        data.len() >= MIN_JUDGED && (squares - n) * 256 * 100 < n * (n - 1) * 103
    }

    #[test]
    fn the_early_answer_is_the_whole_histogram_verdict() {
        let base = noise(3 * GRANULE, 11);
        let mut verdicts = [0usize; 2];
        // Every 1 in `period` bytes set to 'a' moves Σp² across the bound somewhere in this range;
        // text at either end decides early or late; odd lengths leave remainders.
        for period in [2, 8, 16, 24, 28, 32, 40, 48, 64, 1000] {
            for (head, len) in
                [(0, GRANULE), (GRANULE / 2 + 300, GRANULE), (0, GRANULE - 3), (100, 9999)]
            {
                let mut data = base[..len].to_vec();
                for b in data.iter_mut().step_by(period) {
                    *b = b'a';
                }
                data[..head].copy_from_slice(&text(head));
                let mut tail_text = data.clone();
                let tail = head.min(len / 2);
                tail_text[len - tail..].copy_from_slice(&text(tail));
                for sample in [data, tail_text] {
                    let expected = whole_histogram_verdict(&sample);
                    assert_eq!(incompressible(&sample), expected, "period {period} head {head}");
                    verdicts[usize::from(expected)] += 1;
                }
            }
        }
        assert!(verdicts[0] > 0 && verdicts[1] > 0, "both verdicts occur: {verdicts:?}");
    }

    #[test]
    fn blocks_of_any_size_give_the_bytes_of_their_concatenation() {
        let mut input = text(GZIP_CHUNK + 300_000);
        input.extend(noise(GZIP_CHUNK + 5, 9));
        let cuts: [&[usize]; 4] = [
            &[GZIP_CHUNK, GZIP_CHUNK],
            &[1, GZIP_CHUNK, 0, 77_777],
            &[GZIP_CHUNK - 1, 2, 3 * GZIP_CHUNK],
            &[usize::MAX],
        ];
        for compression in [Compression::GZIP, Compression::ZSTD] {
            for data in [&input[..], &[]] {
                let whole = compress(&compression, 2, data, Vec::new()).unwrap();
                for sizes in cuts {
                    let mut rest = data;
                    let mut blocks = Vec::new();
                    for &size in sizes.iter().cycle().take(16) {
                        let (block, tail) = rest.split_at(size.min(rest.len()));
                        blocks.push(Ok(block.to_vec()));
                        rest = tail;
                    }
                    assert!(rest.is_empty());
                    // Every byte comes back in a spent block, for the caller to reuse.
                    let spent = std::cell::Cell::new(0);
                    let give_back = |block: Vec<u8>| spent.set(spent.get() + block.len());
                    let cut = compress_blocks(
                        &compression,
                        2,
                        blocks.into_iter(),
                        Vec::new(),
                        &give_back,
                    );
                    assert_eq!(cut.unwrap(), whole, "{compression} cut as {sizes:?}");
                    assert_eq!(spent.get(), data.len(), "{compression} cut as {sizes:?}");
                }
            }
        }
    }

    #[test]
    fn mixed_input_round_trips_with_noise_stored() {
        let mut input = text(700_000);
        input.extend(noise(1_500_000, 3));
        input.extend(text(900_000));
        let gz = compress(&Compression::GZIP, 2, &input[..], Vec::new()).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, input);
        // Stored noise costs 5 bytes per 64 KiB; the text compresses well.
        assert!(gz.len() < 1_500_000 + 300_000, "{}", gz.len());
        let one = compress(&Compression::GZIP, 1, &input[..], Vec::new()).unwrap();
        assert_eq!(gz, one);
    }
}

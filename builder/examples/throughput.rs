//! Hand-run throughput measurement of layer compression (not a test: timings vary).
//!
//! `cargo run --release -p kiln-builder --example throughput [MiB]` compresses MiB (default
//! 256) of semi-compressible data with gzip and zstd on 1 and 2 threads and prints MB/s,
//! compressed size and the process's peak RSS; then writes a whole layer (tar, hashes,
//! compression, file) from a host file of that size, on 2 threads; then times the walk that
//! finds the last block of each libdeflate-compressed MiB (over the file given as a second
//! argument, e.g. ci/bench's `large/log0.txt`, else over the same generated data).

use std::io::{self, Read};
use std::time::Instant;

use kiln_builder::write_layer;
use kiln_compress::{compress, Compression};
use kiln_oci::HashingWriter;
use kiln_tree::{Content, Entry, EntryKind, Epoch, HostFile, ImagePath, Meta, Tree};

/// Period of the generated data: longer than any compressor window used here.
const PERIOD: usize = 8 << 20;

/// Serves `len` bytes by repeating a buffer of words and noise.
struct Sample {
    pattern: Vec<u8>,
    left: u64,
    pos: usize,
}

impl Sample {
    fn new(len: u64) -> Self {
        const WORDS: [&str; 10] = [
            "usr/lib/",
            "x86_64 ",
            "libc.so ",
            "0000644 ",
            "root ",
            "ELF\x02\x01 ",
            "\0\0\0\0",
            "main ",
            "text\n",
            "data ",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut pattern = Vec::with_capacity(PERIOD + 16);
        while pattern.len() < PERIOD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(4) {
                pattern.extend_from_slice(&x.to_le_bytes()[..5]);
            } else {
                pattern.extend_from_slice(WORDS[(x >> 40) as usize % WORDS.len()].as_bytes());
            }
        }
        pattern.truncate(PERIOD);
        Sample { pattern, left: len, pos: 0 }
    }
}

impl Read for Sample {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n =
            buf.len().min(PERIOD - self.pos).min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.pattern[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % PERIOD;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts bytes written.
struct Count(u64);

impl io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// CPU seconds this process has used (user + system), from /proc/self/stat at 100 Hz.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(") ").next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.to_string()))
        .unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(256);
    let len = mib << 20;
    for compression in [Compression::GZIP, Compression::ZSTD] {
        for threads in [1, 2] {
            let (start, cpu) = (Instant::now(), cpu_seconds());
            let out = compress(&compression, threads, Sample::new(len), Count(0))?;
            let secs = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu;
            println!(
                "{compression}, {threads} thread(s): {:.1} MB/s, {:.1} MB per CPU-second, \
                 {:.2} cores busy, {mib} MiB -> {:.1} MiB ({:.1}%), {}",
                len as f64 / 1e6 / secs,
                len as f64 / 1e6 / cpu,
                cpu / secs,
                out.0 as f64 / (1 << 20) as f64,
                100.0 * out.0 as f64 / len as f64,
                peak_rss(),
            );
        }
    }
    let dir = tempfile::tempdir()?;
    let host = dir.path().join("input");
    let mut file = HashingWriter::new(std::fs::File::create(&host)?);
    io::copy(&mut Sample::new(len), &mut file)?;
    let (_, digest, size) = file.finish();
    let mut tree = Tree::new();
    let content = Content::Host(HostFile::new(host, size, digest));
    tree.insert(
        ImagePath::parse("/data/input")?,
        Entry { kind: EntryKind::File(content), meta: Meta::root(0o644) },
    )?;
    for compression in [Compression::GZIP, Compression::ZSTD] {
        let start = Instant::now();
        let blob = write_layer(&tree, Epoch::ZERO, &compression, 2, dir.path())?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "write_layer {compression}, 2 threads: {:.1} MB/s, {}",
            len as f64 / 1e6 / secs,
            peak_rss()
        );
        std::fs::remove_file(blob.path)?;
    }
    walk(match std::env::args().nth(2) {
        Some(file) => std::fs::read(file)?,
        None => {
            let mut data = Vec::new();
            Sample::new(len).read_to_end(&mut data)?;
            data
        }
    })
}

/// Deflates `data` in 1 MiB chunks at kiln's level and prints how fast
/// `deflate_join::unfinish` walks them (best of 5 passes).
fn walk(data: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
    let mut compressor = libdeflater::Compressor::new(
        libdeflater::CompressionLvl::new(5).map_err(|e| format!("{e:?}"))?,
    );
    let mut streams = Vec::new();
    for chunk in data.chunks(1 << 20) {
        let mut out = vec![0; compressor.deflate_compress_bound(chunk.len())];
        let n = compressor.deflate_compress(chunk, &mut out)?;
        out.truncate(n);
        streams.push(out);
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut copies = streams.clone();
        let start = Instant::now();
        for stream in &mut copies {
            kiln_compress::deflate_join::unfinish(stream, 0)?;
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "last-block walk: {:.1} MiB in, {:.1} MiB deflated, {:.0} MB/s of input",
        data.len() as f64 / (1 << 20) as f64,
        streams.iter().map(Vec::len).sum::<usize>() as f64 / (1 << 20) as f64,
        data.len() as f64 / 1e6 / best,
    );
    Ok(())
}

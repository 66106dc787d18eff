//! Writing a large file that must be on disk before it is published, without passing it
//! through the page cache where the file system allows.
//!
//! Copying a large layer into the page cache costs a noticeable share of a build's CPU time
//! in the kernel, where the same bytes written with `O_DIRECT` from aligned buffers cost
//! almost none (docs/performance.md). A background thread does the writing, so the
//! wait for the disk overlaps compression. Where the file system refuses `O_DIRECT` the
//! thread writes through the page cache instead and flushes every [`STEP`] bytes, so that the
//! final fsync waits only for the last few MiB.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use rustix::fs::OFlags;

/// Told how much of a file is written, as it is written, so that its bytes can be read
/// (a layer uploaded) before the file is finished.
pub trait WriteProgress: Send + Sync {
    /// The file's first `len` bytes are in it and will not change. Called on the thread
    /// writing the file, so it must not block: the writer never waits for a reader.
    fn written(&self, len: u64);
}

/// Alignment of direct writes in memory and in the file: the largest logical block size in
/// common use, so every device's requirement is met.
const ALIGN: usize = 4096;
/// Bytes handed to the writing thread at a time (a multiple of [`ALIGN`]).
const BLOCK: usize = 4 << 20;
/// Bytes written through the page cache between flushes.
const STEP: u64 = 32 << 20;

/// A file written on a background thread; [`Writeback::finish`] makes it durable.
pub(crate) struct Writeback {
    file: File,
    /// The block being filled.
    block: Block,
    /// Full blocks, to the writing thread.
    full: SyncSender<Block>,
    /// Written blocks, back for reuse.
    empty: Receiver<Block>,
    /// Writes on a duplicate of `file` and returns the first error. Its errors are reported
    /// by `finish` (or the next write), not left to the final fsync: the duplicate shares the
    /// open file, and an fsync error is reported to an open file only once.
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl Writeback {
    /// Starts the writing thread for `file`, which must be empty and open for writing; it
    /// tells `progress`, if any, of every block once it is in the file.
    pub(crate) fn new(file: File, progress: Option<Arc<dyn WriteProgress>>) -> io::Result<Self> {
        Self::start(file, true, progress)
    }

    /// As [`Writeback::new`], but always through the page cache, as where `O_DIRECT` is
    /// refused.
    #[cfg(test)]
    fn buffered(file: File) -> io::Result<Self> {
        Self::start(file, false, None)
    }

    fn start(
        file: File,
        try_direct: bool,
        progress: Option<Arc<dyn WriteProgress>>,
    ) -> io::Result<Self> {
        let duplicate = file.try_clone()?;
        let (full, to_write) = sync_channel::<Block>(1);
        let (written, empty) = sync_channel::<Block>(2);
        // Two blocks in all: one filled here while the other is written.
        written.send(Block::new()).map_err(|_| io::Error::other("block queue closed"))?;
        let writer = thread::Builder::new()
            .name("kiln-writeback".into())
            .spawn(move || write_blocks(duplicate, try_direct, to_write, written, progress))?;
        Ok(Writeback { file, block: Block::new(), full, empty, writer: Some(writer) })
    }

    /// Hands the current block to the writing thread and takes an empty one.
    fn send(&mut self) -> io::Result<()> {
        let next = match self.empty.recv() {
            Ok(block) => block,
            Err(_) => return Err(self.writer_error()),
        };
        let block = std::mem::replace(&mut self.block, next);
        if self.full.send(block).is_err() {
            return Err(self.writer_error());
        }
        Ok(())
    }

    /// The error that stopped the writing thread.
    fn writer_error(&mut self) -> io::Error {
        match join(self.writer.take()) {
            Err(e) => e,
            Ok(()) => io::Error::other("the thread writing the file stopped"),
        }
    }

    /// Writes what is left, waits for the writing thread, then syncs the whole file (data and
    /// metadata).
    pub(crate) fn finish(mut self) -> io::Result<File> {
        if self.block.len > 0 {
            self.send()?;
        }
        let Writeback { file, full, writer, .. } = self;
        drop(full);
        join(writer)?;
        file.sync_all()?;
        Ok(file)
    }
}

/// Waits for the writing thread and returns what it returned.
fn join(writer: Option<JoinHandle<io::Result<()>>>) -> io::Result<()> {
    match writer.map(JoinHandle::join) {
        Some(Ok(result)) => result,
        Some(Err(_)) => Err(io::Error::other("the thread writing the file panicked")),
        None => Err(io::Error::other("the thread writing the file stopped")),
    }
}

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.block.fill(buf);
        if self.block.len == BLOCK {
            self.send()?;
        }
        Ok(n)
    }

    /// Bytes reach the file in whole blocks; only [`Writeback::finish`] writes a partial one.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A buffer of [`BLOCK`] bytes starting at an [`ALIGN`]ed address, as direct I/O requires.
struct Block {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Block {
    fn new() -> Self {
        let mem = vec![0u8; BLOCK + ALIGN];
        // Should the offset be unknowable, direct writes fail and the page cache is used.
        let start = mem.as_ptr().align_offset(ALIGN).min(ALIGN);
        Block { mem, start, len: 0 }
    }

    /// Copies as much of `buf` as fits; returns how much that was.
    fn fill(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(BLOCK - self.len);
        let at = self.start + self.len;
        self.mem[at..at + n].copy_from_slice(&buf[..n]);
        self.len += n;
        n
    }

    fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

/// The writing thread: writes each block in order, tells `progress` how much of the file is
/// written, and sends the block back empty.
fn write_blocks(
    mut file: File,
    try_direct: bool,
    to_write: Receiver<Block>,
    written: SyncSender<Block>,
    progress: Option<Arc<dyn WriteProgress>>,
) -> io::Result<()> {
    let mut total = 0u64;
    // A file system without direct I/O refuses the flag (or the first write): then the page
    // cache it is.
    let mut direct = try_direct && set_direct(&file, true).is_ok();
    let mut unflushed = 0u64;
    for mut block in to_write {
        // Only the last block can be partial; its unaligned length needs the page cache.
        if direct && block.len % ALIGN != 0 {
            set_direct(&file, false)?;
            direct = false;
        }
        let mut rest = block.bytes();
        while !rest.is_empty() {
            match file.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if direct
                        && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    set_direct(&file, false)?;
                    direct = false;
                }
                Err(e) => return Err(e),
            }
        }
        if !direct {
            unflushed += block.len as u64;
            if unflushed >= STEP {
                file.sync_data()?;
                unflushed = 0;
            }
        }
        total += block.len as u64;
        if let Some(progress) = &progress {
            progress.written(total);
        }
        block.len = 0;
        // Once the last block is written nobody takes blocks back: the block is then freed
        // with the error.
        drop(written.send(block));
    }
    Ok(())
}

/// Turns `O_DIRECT` on or off for `file`.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on { flags | OFlags::DIRECT } else { flags - OFlags::DIRECT };
    rustix::fs::fcntl_setfl(file, flags)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes a Writeback one way or the other.
    type Start = fn(File) -> io::Result<Writeback>;

    /// Both ways of writing: direct (where this file system allows) and through the cache.
    const MODES: [(&str, Start); 2] =
        [("direct", |file| Writeback::new(file, None)), ("buffered", Writeback::buffered)];

    /// Writes `pieces` through a Writeback made by `start` and returns the file's bytes.
    fn written(start: Start, pieces: &[&[u8]]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = start(File::create(&path).unwrap()).unwrap();
        for piece in pieces {
            w.write_all(piece).unwrap();
        }
        let file = w.finish().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(file.metadata().unwrap().len(), back.len() as u64);
        back
    }

    #[test]
    fn what_is_written_is_in_the_file_after_finish() {
        // Pieces of odd sizes, so blocks fill across piece boundaries, and an unaligned end.
        let data: Vec<u8> = (0..(STEP as usize * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        let mut pieces = Vec::new();
        let mut rest = &data[..];
        for size in [1usize, 4095, 4097, 1 << 20, 3 << 20, 7].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            pieces.push(piece);
            rest = tail;
        }
        for (mode, start) in MODES {
            assert!(written(start, &pieces) == data, "{mode}");
        }
    }

    #[test]
    fn aligned_and_empty_files_keep_their_length() {
        let block = vec![7u8; BLOCK];
        for (mode, start) in MODES {
            assert_eq!(written(start, &[&block, &block]).len(), 2 * BLOCK, "{mode}");
            assert_eq!(written(start, &[&block[..ALIGN]]).len(), ALIGN, "{mode}");
            assert!(written(start, &[]).is_empty(), "{mode}");
        }
    }

    /// Records what a writer is told.
    struct Told(std::sync::Mutex<Vec<u64>>);

    impl WriteProgress for Told {
        fn written(&self, len: u64) {
            self.0.lock().unwrap().push(len);
        }
    }

    #[test]
    fn progress_is_told_of_each_block_once_it_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let told = Arc::new(Told(std::sync::Mutex::new(Vec::new())));
        let mut w = Writeback::new(File::create(&path).unwrap(), Some(told.clone())).unwrap();
        let data = vec![3u8; 2 * BLOCK + 100];
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        let total = data.len() as u64;
        assert_eq!(*told.0.lock().unwrap(), [BLOCK as u64, 2 * BLOCK as u64, total]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), total);
    }

    #[test]
    fn a_failed_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        File::create(&path).unwrap();
        for (mode, start) in MODES {
            // Open for reading only: every write fails.
            let mut w = start(File::open(&path).unwrap()).unwrap();
            let block = vec![1u8; BLOCK];
            let written = (0..4).try_for_each(|_| w.write_all(&block));
            let finished = w.finish();
            assert!(written.is_err() || finished.is_err(), "{mode}");
        }
    }
}

//! One layer blob: a tree's tar stream, compressed, hashed twice and written to a file.
//!
//! The tar writer runs on its own thread and hands blocks through a bounded channel to the
//! compressor, so producing the tar (reading and hashing inputs) overlaps compression and
//! memory stays bounded whatever the layer's size.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;

use kiln_oci::{Digest, HashingWriter};

use kiln_compress::{compress_blocks, Compression, CompressionError, GZIP_CHUNK};
use kiln_tree::tree::Tree;
use kiln_tree::Epoch;

use crate::tar::{write_tar, TarError};
pub use crate::writeback::WriteProgress;
use crate::writeback::Writeback;

/// Size of the blocks handed from the tar writer to the compressor: gzip's chunk, so that
/// each block becomes a chunk without being copied again.
const PIPE_BLOCK: usize = GZIP_CHUNK;
/// Blocks that may wait in the pipe.
const PIPE_DEPTH: usize = 4;

/// A compressed layer written to disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// The file holding the compressed bytes.
    pub path: PathBuf,
    /// sha256 of the compressed bytes (the blob's digest).
    pub digest: Digest,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Size of the compressed bytes.
    pub size: u64,
    /// OCI media type of the blob.
    pub media_type: &'static str,
}

impl LayerBlob {
    /// The layer as the image sees it.
    pub fn record(&self) -> crate::image::LayerRecord {
        crate::image::LayerRecord {
            media_type: self.media_type.to_string(),
            digest: self.digest,
            diff_id: self.diff_id,
            size: self.size,
        }
    }
}

/// Why a layer could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("writing the layer's tar stream")]
    Tar(#[from] TarError),
    #[error("compressing the layer with {compression}")]
    Compress {
        compression: Compression,
        #[source]
        source: CompressionError,
    },
    #[error("writing the layer file in {}", dir.display())]
    Output {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `tree` as a tar layer (every mtime `epoch`) compressed with `compression` on up
/// to `threads` threads, to a new file in `out_dir`. The bytes do not depend on `threads`.
pub fn write_layer(
    tree: &Tree,
    epoch: Epoch,
    compression: &Compression,
    threads: usize,
    out_dir: &Path,
) -> Result<LayerBlob, LayerError> {
    write_layer_told(tree, epoch, compression, threads, out_dir, |_| None)
}

/// [`write_layer`], calling `watch` with the path of the layer's file once it is created,
/// before its first byte, and telling the [`WriteProgress`] it returns, if any, how much of
/// the file is written as it grows. The file is renamed when finished (an open handle still
/// reads it), and deleted if the layer fails.
pub fn write_layer_told(
    tree: &Tree,
    epoch: Epoch,
    compression: &Compression,
    threads: usize,
    out_dir: &Path,
    watch: impl FnOnce(&Path) -> Option<Arc<dyn WriteProgress>>,
) -> Result<LayerBlob, LayerError> {
    let output_err = |source: io::Error| LayerError::Output { dir: out_dir.to_path_buf(), source };
    let compress_err =
        |source: CompressionError| LayerError::Compress { compression: *compression, source };
    compression.validate().map_err(compress_err)?;
    let temp = tempfile::Builder::new()
        .prefix(".layer-")
        .suffix(".partial")
        .tempfile_in(out_dir)
        .map_err(output_err)?;
    let progress = watch(temp.path());
    let file = temp.as_file().try_clone().map_err(output_err)?;
    let file = Writeback::new(file, progress).map_err(output_err)?;
    let out = HashingWriter::new(file);

    let (tx, rx) = sync_channel::<Vec<u8>>(PIPE_DEPTH);
    // Blocks go back to the tar writer once compressed instead of being freed and allocated
    // anew, which saves the allocator's work on every block.
    let (give_back, spare) = channel::<Vec<u8>>();
    let spent = move |mut block: Vec<u8>| {
        block.clear();
        // The tar writer may be done already; the block is then freed with the error.
        drop(give_back.send(block));
    };
    let (compressed, produced) = thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<Digest, TarError> {
            let pipe = PipeWriter::new(tx, spare);
            let hashed = write_tar(tree, epoch, HashingWriter::new(pipe))?;
            let (pipe, diff_id, _) = hashed.finish();
            pipe.close().map_err(TarError::Write)?;
            Ok(diff_id)
        });
        let compressed = compress_blocks(compression, threads, rx.into_iter().map(Ok), out, &spent);
        match producer.join() {
            Ok(produced) => (compressed, produced),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    // A failed compressor closes the pipe, which the tar writer then reports as a write
    // error: the compressor's error is the one that explains what happened.
    let out = compressed.map_err(compress_err)?;
    let diff_id = produced?;

    let (file, digest, size) = out.finish();
    drop(file.finish().map_err(output_err)?);
    let ext = match compression {
        Compression::Gzip { .. } => "tar.gz",
        Compression::Zstd { .. } => "tar.zst",
    };
    let path = out_dir.join(format!("layer-{}.{ext}", digest.hex()));
    // Content-addressed: replacing a file of the same name replaces it with the same bytes.
    temp.persist(&path).map_err(|e| output_err(e.error))?;
    Ok(LayerBlob { path, digest, diff_id, size, media_type: compression.media_type() })
}

/// The tar writer's end of the pipe: collects bytes into blocks and sends them.
struct PipeWriter {
    tx: SyncSender<Vec<u8>>,
    /// Blocks the compressor is done with, empty.
    spare: Receiver<Vec<u8>>,
    block: Vec<u8>,
}

impl PipeWriter {
    fn new(tx: SyncSender<Vec<u8>>, spare: Receiver<Vec<u8>>) -> Self {
        PipeWriter { tx, spare, block: Vec::with_capacity(PIPE_BLOCK) }
    }

    fn send_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(PIPE_BLOCK));
        let block = std::mem::replace(&mut self.block, next);
        self.tx.send(block).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped reading")
        })
    }

    /// Sends what is buffered; dropping the writer then ends the stream.
    fn close(mut self) -> io::Result<()> {
        self.send_block()
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PIPE_BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == PIPE_BLOCK {
            self.send_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_block()
    }
}

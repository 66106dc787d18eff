//! Files whose sha256 and size are taken as they are written (on a second thread, so writing
//! and hashing use both cores) or by reading them once.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use kiln_oci::{Digest, HashingReader, Sha256};

/// A file's sha256 and size.
pub type Hashed = (Digest, u64);

/// Why a file could not be written or hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashedFileError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the thread hashing a disk file stopped unexpectedly")]
    Thread,
}

/// Turns an I/O error on `path` into a [`HashedFileError`].
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HashedFileError {
    let path = path.to_path_buf();
    move |source| HashedFileError::Io { path, source }
}

/// The sha256 and size of a file.
pub fn hash_file(path: &Path) -> Result<Hashed, HashedFileError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = HashingReader::new(BufReader::new(file));
    io::copy(&mut reader, &mut io::sink()).map_err(io_err(path))?;
    Ok(reader.finish())
}

/// Creates the file at `path` and fills it through `write`, hashing every byte written on a
/// second thread (so writing and hashing use both cores): returns what `write` returned and
/// the file's sha256 and size, without reading it back.
pub fn write_hashed<T, E, F>(path: &Path, write: F) -> Result<(T, Hashed), E>
where
    F: FnOnce(&mut dyn Write) -> Result<T, E>,
    E: From<HashedFileError>,
{
    let file = File::create(path).map_err(io_err(path))?;
    let file = BufWriter::with_capacity(HASH_CHUNK, file);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let hasher = scope.spawn(move || {
            let (mut h, mut len) = (Sha256::new(), 0u64);
            for chunk in rx {
                h.update(&chunk);
                len += chunk.len() as u64;
            }
            (h.finish(), len)
        });
        let mut tee = Tee { file, tx, pending: Vec::with_capacity(HASH_CHUNK) };
        let written = write(&mut tee)
            .and_then(|made| Ok(tee.finish().map_err(io_err(path)).map(|()| made)?));
        // Dropping the sender (with `tee`) ends the hashing thread.
        drop(tee);
        let hashed = hasher.join().map_err(|_| HashedFileError::Thread);
        Ok((written?, hashed?))
    })
}

/// Bytes handed to the hashing thread at a time.
const HASH_CHUNK: usize = 1 << 20;

/// Writes to a file and passes the same bytes, in chunks, to a hashing thread.
struct Tee {
    file: BufWriter<File>,
    tx: mpsc::SyncSender<Vec<u8>>,
    pending: Vec<u8>,
}

impl Tee {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(HASH_CHUNK));
        self.tx.send(chunk).map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    /// Hands over what is left and flushes the file.
    fn finish(&mut self) -> io::Result<()> {
        self.send()?;
        self.file.flush()
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= HASH_CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

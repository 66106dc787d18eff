//! Reading an input file back when an output is written: exactly the bytes that were hashed,
//! or an error. Every writer (tar, erofs, cpio) goes through here, so each refuses the same
//! things: a path that now names a symlink or another file, and content whose size or sha256
//! changed since the inputs were hashed.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_oci::{Digest, Sha256};

/// Bytes read from a host file at a time.
const READ_BUF: usize = 256 * 1024;

/// Why a host file could not be used as recorded.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    #[error("reading host file {}", host.display())]
    Read {
        host: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("host file {} is not a regular file (symlinks are never followed)", host.display())]
    NotRegular { host: PathBuf },
    #[error("host file {} has {found} bytes, but had {expected} when it was hashed; the input changed, hash it again", host.display())]
    Shorter { host: PathBuf, expected: u64, found: u64 },
    #[error("host file {} has grown past the {expected} bytes it had when it was hashed; the input changed, hash it again", host.display())]
    Longer { host: PathBuf, expected: u64 },
    #[error("host file {} now hashes to {found}, but was {expected} when it was hashed; the input changed, hash it again", host.display())]
    Changed { host: PathBuf, expected: Digest, found: Digest },
    #[error("host file {} changed while the image was being written; hash the inputs again", host.display())]
    ChangedWhileWriting { host: PathBuf },
}

/// Reads the bytes `from..from + len` of `host` without checking them. Only for a writer that
/// then streams the whole file with [`stream`] and confirms that those bytes were the same.
pub fn read_unchecked(host: &Path, from: u64, len: usize) -> Result<Vec<u8>, HostFileError> {
    use std::io::{Seek, SeekFrom};
    let read_err = |source| HostFileError::Read { host: host.to_path_buf(), source };
    let mut file = File::open(host).map_err(read_err)?;
    file.seek(SeekFrom::Start(from)).map_err(read_err)?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf).map_err(read_err)?;
    Ok(buf)
}

/// A failure while streaming: the host file, or the sink the bytes went to.
#[derive(Debug)]
pub enum StreamError<E> {
    Host(HostFileError),
    Sink(E),
}

/// Streams exactly `size` bytes of `host` into `sink`, then checks that the file ended
/// there and hashed to `digest`. The sink may already have taken bytes when an error is
/// returned, so callers discard what they were writing.
pub fn stream<E>(
    host: &Path,
    size: u64,
    digest: &Digest,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), StreamError<E>> {
    let fail = |e| Err(StreamError::Host(e));
    let read_err = |source| HostFileError::Read { host: host.to_path_buf(), source };
    let not_regular = || HostFileError::NotRegular { host: host.to_path_buf() };
    let linked = std::fs::symlink_metadata(host).map_err(|e| StreamError::Host(read_err(e)))?;
    if !linked.file_type().is_file() {
        return fail(not_regular());
    }
    let mut file = File::open(host).map_err(|e| StreamError::Host(read_err(e)))?;
    let opened = file.metadata().map_err(|e| StreamError::Host(read_err(e)))?;
    // The path must still name the file that lstat saw (no symlink swapped in between).
    if !opened.file_type().is_file() || opened.dev() != linked.dev() || opened.ino() != linked.ino()
    {
        return fail(not_regular());
    }
    let mut hasher = Sha256::new();
    // Sized to the file (plus the byte that checks for its end): zeroing a full buffer for
    // each of tens of thousands of small files cost more than reading them.
    let len = usize::try_from(size).map_or(READ_BUF, |s| s.saturating_add(1).min(READ_BUF));
    let mut buf = vec![0u8; len];
    let mut done: u64 = 0;
    while done < size {
        let want = usize::try_from(size - done).unwrap_or(usize::MAX).min(buf.len());
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return fail(HostFileError::Shorter {
                    host: host.to_path_buf(),
                    expected: size,
                    found: done,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(read_err(e)),
        };
        hasher.update(&buf[..n]);
        sink(&buf[..n]).map_err(StreamError::Sink)?;
        done += n as u64;
    }
    loop {
        match file.read(&mut buf[..1]) {
            Ok(0) => break,
            Ok(_) => {
                return fail(HostFileError::Longer { host: host.to_path_buf(), expected: size })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(read_err(e)),
        }
    }
    let found = hasher.finish();
    if found != *digest {
        return fail(HostFileError::Changed { host: host.to_path_buf(), expected: *digest, found });
    }
    Ok(())
}

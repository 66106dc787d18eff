//! Reading an input file back when an output is written: exactly the bytes that were hashed,
//! or an error. Every writer (tar, erofs, squashfs, ext4, FAT, cpio) goes through here, so
//! each refuses the same things: a path that now names a symlink or another file, and content
//! whose size or sha256 changed since the inputs were hashed.
//!
//! A file that this build has just read and hashed, and whose stamp (inode, size, mtime,
//! ctime) still matches, is not hashed a second time: a settled file's stamp (one last changed
//! seconds before it was hashed) changes with any write, so the stamp is checked before and
//! after reading instead. Digests remembered from earlier builds are always checked by
//! hashing.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kiln_oci::{Digest, Sha256};

use crate::stamp::FileStamp;

/// Bytes read from a host file at a time.
const READ_BUF: usize = 256 * 1024;

/// A regular file on the host whose bytes go into an output, as it was when hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFile {
    /// Where the file is on the host.
    pub path: PathBuf,
    /// Its size in bytes when it was hashed.
    pub size: u64,
    /// Its sha256 when it was hashed.
    pub digest: Digest,
    /// The file's stamp when this build read and hashed it, if the file was settled then;
    /// `None` when the digest was remembered from an earlier build or the file was racy.
    pub hashed_as: Option<FileStamp>,
}

impl HostFile {
    /// A file of `size` bytes hashing to `digest`, checked by hashing when it is read back.
    pub fn new(path: PathBuf, size: u64, digest: Digest) -> HostFile {
        HostFile { path, size, digest, hashed_as: None }
    }
}

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

/// Streams exactly the `size` bytes of `file` into `sink`, then checks that the file ended
/// there and is unchanged: by its stamp when this build hashed it (see the module docs), else
/// by hashing it to `digest`. The sink may already have taken bytes when an error is
/// returned, so callers discard what they were writing.
pub fn stream<E>(
    file: &HostFile,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), StreamError<E>> {
    let HostFile { path: host, size, digest, hashed_as } = file;
    let size = *size;
    let fail = |e| Err(StreamError::Host(e));
    let read_err = |source| HostFileError::Read { host: host.to_path_buf(), source };
    let not_regular = || HostFileError::NotRegular { host: host.to_path_buf() };
    let mut file = open_regular(host).map_err(StreamError::Host)?;
    let opened = file.metadata().map_err(|e| StreamError::Host(read_err(e)))?;
    if !opened.file_type().is_file() {
        return fail(not_regular());
    }
    let mut check = match hashed_as {
        Some(stamp) if *stamp == FileStamp::of(&opened) => Check::Stamp(*stamp),
        _ => Check::Hash(Sha256::new()),
    };
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
        if let Check::Hash(hasher) = &mut check {
            hasher.update(&buf[..n]);
        }
        sink(&buf[..n]).map_err(StreamError::Sink)?;
        done += n as u64;
    }
    match check {
        Check::Hash(hasher) => {
            // The file must end where it did when it was hashed.
            loop {
                match file.read(&mut buf[..1]) {
                    Ok(0) => break,
                    Ok(_) => {
                        return fail(HostFileError::Longer {
                            host: host.to_path_buf(),
                            expected: size,
                        })
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return fail(read_err(e)),
                }
            }
            let found = hasher.finish();
            if found != *digest {
                return fail(HostFileError::Changed {
                    host: host.to_path_buf(),
                    expected: *digest,
                    found,
                });
            }
        }
        Check::Stamp(stamp) => {
            // A write while the bytes were read, growth included, shows in the stamp now.
            let after = file.metadata().map_err(|e| StreamError::Host(read_err(e)))?;
            if FileStamp::of(&after) != stamp {
                return fail(HostFileError::ChangedWhileWriting { host: host.to_path_buf() });
            }
        }
    }
    Ok(())
}

/// Opens the host input `host` for reading as `tar` does: never through a symlink in its last
/// component, and without blocking on a FIFO or making a terminal the controlling one, in
/// case something other than a regular file was put there since the scan. Callers that need
/// a regular file check the type on the open file, so no other path lookup races with this.
pub fn open_input(host: &Path) -> io::Result<File> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
        .open(host)
}

/// [`open_input`] for [`stream`], whose errors say what was found instead of a file.
fn open_regular(host: &Path) -> Result<File, HostFileError> {
    use rustix::io::Errno;
    open_input(host).map_err(|source| match rustix::io::Errno::from_io_error(&source) {
        // ELOOP: the last component is a symlink; ENXIO: a socket or absent device.
        Some(Errno::LOOP | Errno::NXIO) => HostFileError::NotRegular { host: host.to_path_buf() },
        _ => HostFileError::Read { host: host.to_path_buf(), source },
    })
}

/// How [`stream`] confirms that the bytes it read are the ones hashed.
enum Check {
    /// Hash them again and compare with the recorded digest.
    Hash(Sha256),
    /// This build hashed the file and its stamp has not changed: compare the stamp again after
    /// reading.
    Stamp(FileStamp),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `bytes` and the stamp it has now, as the scan would have recorded it.
    fn hashed_file(dir: &Path, bytes: &[u8]) -> HostFile {
        let path = dir.join("input");
        std::fs::write(&path, bytes).unwrap();
        let stamp = FileStamp::of(&std::fs::metadata(&path).unwrap());
        // Later writes must land on a later timestamp tick than the one stamped.
        std::thread::sleep(std::time::Duration::from_millis(50));
        HostFile {
            path,
            size: bytes.len() as u64,
            digest: Digest::of(bytes),
            hashed_as: Some(stamp),
        }
    }

    fn read_back(file: &HostFile) -> Result<Vec<u8>, HostFileError> {
        let mut out = Vec::new();
        stream(file, |b| {
            out.extend_from_slice(b);
            Ok::<_, ()>(())
        })
        .map_err(|e| match e {
            StreamError::Host(e) => e,
            StreamError::Sink(()) => unreachable!("the sink never fails"),
        })?;
        Ok(out)
    }

    #[test]
    fn a_file_hashed_by_this_build_is_checked_by_its_stamp_not_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = hashed_file(dir.path(), b"settled bytes");
        // A digest that cannot match shows that the bytes were not hashed again.
        file.digest = Digest::of(b"other");
        assert_eq!(read_back(&file).unwrap(), b"settled bytes");
        file.hashed_as = None;
        assert!(matches!(read_back(&file), Err(HostFileError::Changed { .. })));
    }

    #[test]
    fn a_file_rewritten_since_it_was_hashed_is_hashed_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = hashed_file(dir.path(), b"before");
        std::fs::write(&file.path, b"after!").unwrap();
        let err = read_back(&file).unwrap_err();
        assert!(matches!(err, HostFileError::Changed { .. }), "{err}");
    }

    #[test]
    fn a_symlink_or_fifo_put_in_the_file_s_place_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let file = hashed_file(dir.path(), b"regular");
        std::fs::remove_file(&file.path).unwrap();
        std::fs::write(dir.path().join("elsewhere"), b"regular").unwrap();
        std::os::unix::fs::symlink("elsewhere", &file.path).unwrap();
        assert!(matches!(read_back(&file), Err(HostFileError::NotRegular { .. })));
        std::fs::remove_file(&file.path).unwrap();
        // With no writer, opening a FIFO for reading would wait forever.
        let made = std::process::Command::new("mkfifo").arg(&file.path).status().unwrap();
        assert!(made.success());
        assert!(matches!(read_back(&file), Err(HostFileError::NotRegular { .. })));
    }

    #[test]
    fn a_file_written_while_it_is_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = hashed_file(dir.path(), &[7u8; 3 * READ_BUF]);
        let mut first = true;
        let result = stream(&file, |_| {
            if std::mem::take(&mut first) {
                // Same size, new bytes at the end: only the stamp can tell.
                let mut f = std::fs::OpenOptions::new().write(true).open(&file.path)?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(2 * READ_BUF as u64))?;
                std::io::Write::write_all(&mut f, &[9u8; READ_BUF])?;
            }
            Ok::<_, io::Error>(())
        });
        assert!(
            matches!(result, Err(StreamError::Host(HostFileError::ChangedWhileWriting { .. }))),
            "{result:?}"
        );
    }
}

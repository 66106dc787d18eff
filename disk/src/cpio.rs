//! The root filesystem as a cpio archive in the "newc" format the kernel unpacks as an
//! initramfs (compress it with `kiln_compress` for `initrd=`).
//!
//! Entries come in path order (parents first), inode numbers count from 1 in that order,
//! every mtime is the epoch, and a hard-link group carries its data on its first entry (the
//! kernel's unpacker links later entries to it and appends nothing).

use std::collections::HashMap;
use std::io::{self, Write};

use kiln_tree::host_file::{self, HostFile, HostFileError, StreamError};
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, EntryKind, Tree};
use kiln_tree::Epoch;

use crate::record::Record;

// The on-disk structure: the "new" (SVR4, no checksum) portable header of cpio(5), every
// number as 8 uppercase hex digits, then the NUL-terminated name, padded to 4 bytes.

const MAGIC: [u8; 6] = *b"070701";
const HEADER_SIZE: usize = 110;
/// The header and name are padded to this, and so is the data after them.
const ALIGN: u64 = 4;
const TRAILER: &str = "TRAILER!!!";

/// One newc header.
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
    /// The name's length including its NUL.
    namesize: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_SIZE] {
        Record::new()
            .bytes(&MAGIC)
            .bytes(&hex(self.ino))
            .bytes(&hex(self.mode))
            .bytes(&hex(self.uid))
            .bytes(&hex(self.gid))
            .bytes(&hex(self.nlink))
            .bytes(&hex(self.mtime))
            .bytes(&hex(self.filesize))
            .bytes(&hex(0)) // major of the device holding the file
            .bytes(&hex(0)) // minor of the device holding the file
            .bytes(&hex(self.rdev_major))
            .bytes(&hex(self.rdev_minor))
            .bytes(&hex(self.namesize))
            .bytes(&hex(0)) // check: unused by this format
            .finish()
    }
}

/// A number as cpio newc writes it.
fn hex(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = b"0123456789ABCDEF"[((v >> (28 - 4 * i)) & 0xF) as usize];
    }
    out
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("{path} is {size} bytes; cpio newc stores at most 4 GiB - 1 per file")]
    TooLarge { path: ImagePath, size: u64 },
    #[error("the epoch {0} does not fit cpio's 32-bit mtime")]
    Epoch(Epoch),
    #[error("{path}")]
    Host {
        path: ImagePath,
        #[source]
        source: HostFileError,
    },
    #[error("writing the cpio archive")]
    Write(#[source] io::Error),
}

struct Out<W> {
    inner: W,
    len: u64,
}

impl<W: Write> Out<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.inner.write_all(bytes).map_err(CpioError::Write)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let pad = (self.len.next_multiple_of(ALIGN) - self.len) as usize;
        self.write(&[0u8; ALIGN as usize - 1][..pad])
    }

    /// One header and its name; the data (if any) follows from the caller.
    fn header(&mut self, name: &str, f: [u32; 8], filesize: u32) -> Result<(), CpioError> {
        let [ino, mode, uid, gid, nlink, mtime, rdev_major, rdev_minor] = f;
        let namesize = name.len() as u32 + 1;
        let header = Header {
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            filesize,
            rdev_major,
            rdev_minor,
            namesize,
        };
        self.write(&header.encode())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }
}

/// Writes `tree` as a newc archive to `out`; returns the bytes written.
pub fn write_cpio<W: Write>(tree: &Tree, epoch: Epoch, out: W) -> Result<u64, CpioError> {
    let mtime = u32::try_from(epoch.seconds()).map_err(|_| CpioError::Epoch(epoch))?;
    // Link counts and inode numbers: a hard link shares its file's.
    let mut nlink: HashMap<&ImagePath, u32> = HashMap::new();
    for (_, entry) in tree.iter() {
        if let EntryKind::HardLink(target) = &entry.kind {
            *nlink.entry(target).or_insert(1) += 1;
        }
    }
    let mut inos: HashMap<&ImagePath, u32> = HashMap::new();
    let mut out = Out { inner: out, len: 0 };
    for (next, (path, entry)) in (1u32..).zip(tree.iter()) {
        let m = &entry.meta;
        let perm = m.mode & 0o7777;
        match &entry.kind {
            EntryKind::Dir => {
                let f = [next, 0o040_000 | perm, m.uid, m.gid, 2, mtime, 0, 0];
                out.header(path.as_str(), f, 0)?;
            }
            EntryKind::Symlink(target) => {
                let f = [next, 0o120_777, m.uid, m.gid, 1, mtime, 0, 0];
                out.header(path.as_str(), f, target.len() as u32)?;
                out.write(target.as_bytes())?;
                out.pad()?;
            }
            EntryKind::File(content) => {
                let size = u32::try_from(content.size()).map_err(|_| CpioError::TooLarge {
                    path: path.clone(),
                    size: content.size(),
                })?;
                let links = nlink.get(path).copied().unwrap_or(1);
                inos.insert(path, next);
                let f = [next, 0o100_000 | perm, m.uid, m.gid, links, mtime, 0, 0];
                out.header(path.as_str(), f, size)?;
                match content {
                    Content::Bytes(bytes) => out.write(bytes)?,
                    Content::Host(file) => copy_host(&mut out, path, file)?,
                }
                out.pad()?;
            }
            EntryKind::Device(device) => {
                let (major, minor) = device.major_minor();
                let f = [next, device.type_bits() | perm, m.uid, m.gid, 1, mtime, major, minor];
                out.header(path.as_str(), f, 0)?;
            }
            EntryKind::HardLink(target) => {
                let ino = inos.get(target).copied().unwrap_or(next);
                let links = nlink.get(target).copied().unwrap_or(1);
                let Some(file) = tree.get(target) else {
                    continue;
                };
                let fm = &file.meta;
                let f = [ino, 0o100_000 | (fm.mode & 0o7777), fm.uid, fm.gid, links, mtime, 0, 0];
                out.header(path.as_str(), f, 0)?;
            }
        }
    }
    out.header(TRAILER, [0, 0, 0, 0, 1, 0, 0, 0], 0)?;
    Ok(out.len)
}

/// Copies a host file, checking it is still what was hashed.
fn copy_host<W: Write>(
    out: &mut Out<W>,
    path: &ImagePath,
    file: &HostFile,
) -> Result<(), CpioError> {
    host_file::stream(file, |bytes| {
        out.inner.write_all(bytes)?;
        out.len += bytes.len() as u64;
        Ok(())
    })
    .map_err(|e| match e {
        StreamError::Host(source) => CpioError::Host { path: path.clone(), source },
        StreamError::Sink(e) => CpioError::Write(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_hex_at_the_specified_offsets() {
        let h = Header {
            ino: 1,
            mode: 0o100_644,
            uid: 0xABCD,
            gid: 2,
            nlink: 3,
            mtime: 0x6553_F100,
            filesize: 0x1234_5678,
            rdev_major: 8,
            rdev_minor: 0xFFFF_FFFF,
            namesize: 6,
        }
        .encode();
        let text = std::str::from_utf8(&h).unwrap();
        assert_eq!(
            text,
            "070701\
             00000001000081A40000ABCD0000000200000003\
             6553F1001234567800000000000000000000000\
             8FFFFFFFF0000000600000000"
        );
        assert_eq!(h.len(), 110);
    }
}

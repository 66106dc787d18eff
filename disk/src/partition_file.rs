//! One partition of a disk file, seen as a file of its own: a filesystem writer writes and
//! seeks from its position 0, and the bytes land at the partition's offset in the disk.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};

/// The disk file from byte `base` on.
pub struct PartitionFile {
    file: BufWriter<File>,
    base: u64,
}

impl PartitionFile {
    /// The partition at `base` of `disk`, buffered; the position moves to its start.
    pub fn new(mut disk: File, base: u64) -> io::Result<PartitionFile> {
        disk.seek(SeekFrom::Start(base))?;
        Ok(PartitionFile { file: BufWriter::with_capacity(1 << 20, disk), base })
    }
}

impl Write for PartitionFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for PartitionFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let at = match pos {
            SeekFrom::Start(n) => self.file.seek(SeekFrom::Start(self.base + n))?,
            SeekFrom::Current(d) => self.file.seek(SeekFrom::Current(d))?,
            SeekFrom::End(_) => {
                return Err(io::Error::other("a partition has no end to seek from"))
            }
        };
        at.checked_sub(self.base).ok_or_else(|| io::Error::other("seek before the partition"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_at_the_partition_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, [0u8; 16]).unwrap();
        let disk = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut part = PartitionFile::new(disk, 8).unwrap();
        part.write_all(b"ab").unwrap();
        assert_eq!(part.seek(SeekFrom::Start(4)).unwrap(), 4);
        part.write_all(b"c").unwrap();
        assert!(part.seek(SeekFrom::End(0)).is_err());
        part.flush().unwrap();
        drop(part);
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0\0\0\0\0\0\0ab\0\0c\0\0\0");
    }
}

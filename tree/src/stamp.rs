//! What `stat` says about a file: enough to tell, without reading it, that it is the same file
//! with the same bytes as when it was stamped (device, inode, size, mtime and ctime).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

/// The length of [`FileStamp::to_bytes`].
pub const STAMP_BYTES: usize = 8 + 8 + 8 + 8 + 4 + 8 + 4;

/// What `stat` says about a file, as far as telling a change goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl FileStamp {
    /// The stamp of a file from its metadata (as taken by `stat`/`lstat`).
    pub fn of(md: &Metadata) -> FileStamp {
        // Nanoseconds are always below 10^9, so the conversions cannot fail in practice;
        // an impossible value only turns into a stamp that never matches.
        let ns = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime: (md.mtime(), ns(md.mtime_nsec())),
            ctime: (md.ctime(), ns(md.ctime_nsec())),
        }
    }

    /// The stamp of a file from `stat` as the kernel gives it; equal to [`FileStamp::of`] of
    /// the same file's metadata.
    // The conversions are needed where the fields are narrower (32-bit targets).
    #[allow(clippy::useless_conversion)]
    pub fn of_stat(st: &rustix::fs::Stat) -> FileStamp {
        // The field types differ between architectures; every value fits where it goes, and
        // one that did not would only give a stamp that never matches.
        let ns = |n| u32::try_from(n).unwrap_or(u32::MAX);
        FileStamp {
            dev: u64::try_from(st.st_dev).unwrap_or(u64::MAX),
            ino: u64::try_from(st.st_ino).unwrap_or(u64::MAX),
            size: u64::try_from(st.st_size).unwrap_or(u64::MAX),
            mtime: (i64::from(st.st_mtime), ns(st.st_mtime_nsec)),
            ctime: (i64::from(st.st_ctime), ns(st.st_ctime_nsec)),
        }
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file's (device, inode) pair, which names it on this machine.
    pub fn inode(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// The second of the file's last change (the later of mtime and ctime).
    pub fn changed_at(&self) -> i64 {
        self.mtime.0.max(self.ctime.0)
    }

    /// The stamp as fixed-size little-endian bytes: dev, ino, size, mtime s, mtime ns,
    /// ctime s, ctime ns (the form a cache file keeps).
    pub fn to_bytes(&self) -> [u8; STAMP_BYTES] {
        let mut out = [0u8; STAMP_BYTES];
        let fields: [&[u8]; 7] = [
            &self.dev.to_le_bytes(),
            &self.ino.to_le_bytes(),
            &self.size.to_le_bytes(),
            &self.mtime.0.to_le_bytes(),
            &self.mtime.1.to_le_bytes(),
            &self.ctime.0.to_le_bytes(),
            &self.ctime.1.to_le_bytes(),
        ];
        let mut at = 0;
        for f in fields {
            out[at..at + f.len()].copy_from_slice(f);
            at += f.len();
        }
        out
    }

    /// The stamp [`FileStamp::to_bytes`] gave these bytes.
    pub fn from_bytes(b: &[u8; STAMP_BYTES]) -> FileStamp {
        let u64_at = |at: usize| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(n)
        };
        let u32_at = |at: usize| {
            let mut n = [0u8; 4];
            n.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(n)
        };
        FileStamp {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mtime: (u64_at(24) as i64, u32_at(32)),
            ctime: (u64_at(36) as i64, u32_at(44)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_from_stat_equals_one_from_metadata() {
        // The scan stamps files from `stat`, the writers from an open file's metadata: were
        // the two ever to differ, every file would be hashed twice.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"some bytes").unwrap();
        let st =
            rustix::fs::statat(rustix::fs::CWD, &f, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let opened = std::fs::File::open(&f).unwrap().metadata().unwrap();
        assert_eq!(FileStamp::of_stat(&st), FileStamp::of(&opened));
        assert_eq!(FileStamp::of_stat(&st), FileStamp::of(&std::fs::metadata(&f).unwrap()));
    }

    #[test]
    fn bytes_give_back_the_same_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let stamp = FileStamp::of(&std::fs::metadata(&f).unwrap());
        assert_eq!(FileStamp::from_bytes(&stamp.to_bytes()), stamp);
    }
}

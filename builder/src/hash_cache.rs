//! A machine-local memory of input file digests, keyed by what `stat` says about the file,
//! so a rebuild of unchanged inputs does not read them again (the approach of git's index).
//!
//! It only saves time: a stale, truncated or damaged cache file is treated as empty, and an
//! entry is trusted only when device, inode, size, mtime and ctime all still match. Files
//! modified within the last seconds before hashing are not remembered, since a same-size
//! rewrite within the timestamp granularity would otherwise go unnoticed.
//!
//! Entries are keyed by (device, inode) rather than by path: an inode whose size, mtime and
//! ctime are unchanged holds the same bytes under any name, and a file replaced by another
//! (rename, delete and create) gets a new ctime. The file is fixed-size binary records
//! ended by the crc32 of everything before it, so loading is a copy and one checksum, not
//! text parsing. A checksum against accidental damage is enough: a wrong digest taken from
//! here cannot reach an image, since writers check remembered digests by hashing and fail.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_oci::Digest;
use kiln_tree::stamp::{FileStamp, STAMP_BYTES};

/// First bytes of a cache file; a file written by an older kiln (text "v1", or "v2" ended by
/// a sha256, whose checking slowed every load) is ignored.
const MAGIC: &[u8] = b"kiln-hash-cache v3\n";
/// One record: the stamp's bytes (dev, ino, size, mtime s, mtime ns, ctime s, ctime ns),
/// then the digest.
const RECORD: usize = STAMP_BYTES + 32;
/// The trailing crc32 (little-endian) of magic and records.
const TRAILER: usize = 4;
/// Files changed this recently (seconds) are not settled: hashed, but neither remembered nor
/// trusted unread later in the build.
const RACY_SECONDS: i64 = 2;

/// Remembered files by (device, inode), digests as raw bytes: the file stores them so,
/// and most are never asked for.
type Entries = HashMap<(u64, u64), (FileStamp, [u8; 32]), BuildHasherDefault<InodeHasher>>;

/// Hashes (device, inode) keys with a multiply and a rotate: the keys come from this
/// machine's own file systems, not an adversary, and SipHash showed in no-op profiles.
#[derive(Default)]
struct InodeHasher(u64);

impl Hasher for InodeHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // An odd constant from the golden ratio spreads consecutive inode numbers apart.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// File digests remembered across builds.
pub struct HashCache {
    file: Option<PathBuf>,
    /// The records of the file as read, sorted by (device, inode), found through `slots`:
    /// loading an unchanged cache costs a read, one hash and an index of integers, not one
    /// map insert per file.
    loaded: Vec<u8>,
    /// Open-addressing index over `loaded`: a slot holds a record number plus one, or 0.
    /// One or two probes find a record, where a binary search of 70k records took 17, each
    /// a cache miss.
    slots: Vec<u32>,
    /// Entries learned by this build, which take precedence over `loaded`.
    added: Entries,
    now: i64,
    dirty: bool,
}

impl HashCache {
    /// A cache that remembers nothing (every input is read and hashed).
    pub fn disabled() -> HashCache {
        HashCache {
            file: None,
            loaded: Vec::new(),
            slots: Vec::new(),
            added: Entries::default(),
            now: unix_now(),
            dirty: false,
        }
    }

    /// Loads the cache kept in `file`; a missing, unreadable or damaged file gives an empty
    /// cache.
    pub fn load(file: &Path) -> HashCache {
        let loaded = std::fs::read(file).ok().and_then(records).unwrap_or_default();
        let slots = index(&loaded);
        HashCache {
            file: Some(file.to_path_buf()),
            loaded,
            slots,
            added: Entries::default(),
            now: unix_now(),
            dirty: false,
        }
    }

    /// The remembered digest of the file stamped `stamp`, if it is unchanged.
    pub fn get(&self, stamp: &FileStamp) -> Option<Digest> {
        match self.find(stamp.inode()) {
            Some((known, raw)) if known == *stamp => Some(Digest::from_bytes(raw)),
            _ => None,
        }
    }

    /// Whether a file stamped `stamp` was last changed long enough before this build began
    /// that any later write would show in its stamp: a write sets ctime to the time of the
    /// write, which no longer equals a ctime from seconds before (timestamps are coarse, so a
    /// write within the same tick as the last one could otherwise leave the stamp unchanged).
    pub fn settled(&self, stamp: &FileStamp) -> bool {
        self.now - stamp.changed_at() >= RACY_SECONDS
    }

    /// Remembers `digest` for the file that had `stamp` when it was hashed.
    pub fn put(&mut self, stamp: FileStamp, digest: Digest) {
        if self.file.is_none() || !self.settled(&stamp) {
            return;
        }
        let entry = (stamp, *digest.as_bytes());
        if self.find(stamp.inode()) != Some(entry) {
            self.added.insert(stamp.inode(), entry);
            self.dirty = true;
        }
    }

    /// Writes the cache back if it changed (atomically; failures only cost time later).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        let mut all = Entries::default();
        for r in self.loaded.chunks_exact(RECORD) {
            let (stamp, digest) = decode(r);
            all.insert(stamp.inode(), (stamp, digest));
        }
        all.extend(self.added.iter().map(|(k, v)| (*k, *v)));
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&encode(&all))?;
        tmp.persist(file).map_err(|e| e.error)?;
        Ok(())
    }

    /// The entry for `inode`: learned by this build, else looked up in `loaded`.
    fn find(&self, inode: (u64, u64)) -> Option<(FileStamp, [u8; 32])> {
        if let Some(entry) = self.added.get(&inode) {
            return Some(*entry);
        }
        let mask = self.slots.len().checked_sub(1)?;
        let mut at = slot_of(inode) & mask;
        loop {
            let record = self.record(self.slots[at])?;
            if key_of(record) == inode {
                return Some(decode(record));
            }
            at = (at + 1) & mask;
        }
    }

    /// The record a slot names; `None` for an empty slot.
    fn record(&self, slot: u32) -> Option<&[u8]> {
        let n = usize::try_from(slot.checked_sub(1)?).ok()?;
        self.loaded.get(n * RECORD..(n + 1) * RECORD)
    }
}

/// The open-addressing index of `records` (see [`HashCache::slots`]): a power of two of at
/// least twice as many slots as records, so probe runs stay short. Empty when there are too
/// many records to number in a u32 (a cache file of hundreds of GB), which only costs time.
fn index(records: &[u8]) -> Vec<u32> {
    let n = records.len() / RECORD;
    if n == 0 || u32::try_from(n).is_err() {
        return Vec::new();
    }
    let mut slots = vec![0u32; (2 * n).next_power_of_two()];
    let mask = slots.len() - 1;
    for (i, record) in records.chunks_exact(RECORD).enumerate() {
        let mut at = slot_of(key_of(record)) & mask;
        while slots[at] != 0 {
            at = (at + 1) & mask;
        }
        // i < n, which fits in a u32 (checked above), and so does i + 1 < 2^32.
        slots[at] = i as u32 + 1;
    }
    slots
}

/// The (device, inode) key of a record.
fn key_of(record: &[u8]) -> (u64, u64) {
    (le_u64(&record[0..8]), le_u64(&record[8..16]))
}

/// Where probing for `inode` starts, before masking to the table size.
fn slot_of(inode: (u64, u64)) -> usize {
    let mut h = InodeHasher::default();
    h.write_u64(inode.0);
    h.write_u64(inode.1);
    h.finish() as usize
}

/// Seconds since 1970 by the wall clock, which only decides what is hashed again, never an
/// output byte. A clock before 1970 makes every file unsettled.
fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The file's bytes: magic, records sorted by (device, inode), crc32 of all that.
fn encode(entries: &Entries) -> Vec<u8> {
    let mut sorted: Vec<_> = entries.values().collect();
    sorted.sort_unstable_by_key(|(s, _)| s.inode());
    let mut out = Vec::with_capacity(MAGIC.len() + sorted.len() * RECORD + TRAILER);
    out.extend_from_slice(MAGIC);
    for (s, d) in sorted {
        out.extend_from_slice(&s.to_bytes());
        out.extend_from_slice(d);
    }
    let sum = crc32fast::hash(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The records of a file [`encode`] wrote; `None` for anything else (truncated, damaged,
/// another version).
fn records(mut bytes: Vec<u8>) -> Option<Vec<u8>> {
    let body_len = bytes.len().checked_sub(TRAILER)?;
    let (body, sum) = bytes.split_at(body_len);
    let records = body.strip_prefix(MAGIC)?;
    if records.len() % RECORD != 0 || crc32fast::hash(body).to_le_bytes()[..] != sum[..] {
        return None;
    }
    bytes.truncate(body_len);
    bytes.drain(..MAGIC.len());
    Some(bytes)
}

/// A little-endian u64 from exactly 8 bytes (callers slice records at fixed offsets).
fn le_u64(b: &[u8]) -> u64 {
    let mut n = [0u8; 8];
    n.copy_from_slice(b);
    u64::from_le_bytes(n)
}

/// One record (exactly [`RECORD`] bytes) as a stamp and raw digest.
fn decode(r: &[u8]) -> (FileStamp, [u8; 32]) {
    let mut stamp = [0u8; STAMP_BYTES];
    stamp.copy_from_slice(&r[..STAMP_BYTES]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&r[STAMP_BYTES..RECORD]);
    (FileStamp::from_bytes(&stamp), digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        let old = std::process::Command::new("touch")
            .args(["-d", "2001-01-01"])
            .arg(&f)
            .status()
            .unwrap();
        assert!(old.success());
        f
    }

    fn stamp(f: &Path) -> FileStamp {
        FileStamp::of(&std::fs::metadata(f).unwrap())
    }

    #[test]
    fn remembers_only_unchanged_settled_files() {
        let tmp = tempfile::tempdir().unwrap();
        let f = settled_file(tmp.path(), "input", b"abc");
        let cache_file = tmp.path().join("cache");
        let mut c = HashCache::load(&cache_file);
        // ctime is "now" right after touch, so the entry is racy and not remembered.
        assert!(!c.settled(&stamp(&f)));
        c.put(stamp(&f), Digest::of(b"abc"));
        assert!(c.get(&stamp(&f)).is_none());
        c.now += 10;
        assert!(c.settled(&stamp(&f)));
        c.put(stamp(&f), Digest::of(b"abc"));
        c.save().unwrap();
        let c = HashCache::load(&cache_file);
        assert_eq!(c.get(&stamp(&f)), Some(Digest::of(b"abc")));
        // A later build adds a file; the saved cache holds what was loaded and what was added.
        let mut c = c;
        let g = settled_file(tmp.path(), "other", b"xyz");
        c.now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 10;
        c.put(stamp(&g), Digest::of(b"xyz"));
        c.save().unwrap();
        let c = HashCache::load(&cache_file);
        assert_eq!(c.get(&stamp(&f)), Some(Digest::of(b"abc")));
        assert_eq!(c.get(&stamp(&g)), Some(Digest::of(b"xyz")));
        std::fs::write(&f, b"abd").unwrap();
        assert!(c.get(&stamp(&f)).is_none(), "a rewrite changes mtime/ctime");
        assert!(HashCache::disabled().get(&stamp(&f)).is_none());
    }

    #[test]
    fn damaged_or_truncated_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let cache_file = tmp.path().join("cache");
        let mut c = HashCache::load(&cache_file);
        c.now += 10;
        let files: Vec<_> = (0..3)
            .map(|i| settled_file(tmp.path(), &format!("f{i}"), format!("{i}").as_bytes()))
            .collect();
        c.now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 10;
        for (i, f) in files.iter().enumerate() {
            c.put(stamp(f), Digest::of(format!("{i}").as_bytes()));
        }
        c.save().unwrap();
        let good = std::fs::read(&cache_file).unwrap();
        assert_eq!(good.len(), MAGIC.len() + 3 * RECORD + TRAILER);
        assert_eq!(HashCache::load(&cache_file).loaded.len(), 3 * RECORD);

        let mut variants: Vec<Vec<u8>> = Vec::new();
        for cut in [1, RECORD, RECORD + 1, TRAILER, good.len() - 1] {
            variants.push(good[..good.len() - cut].to_vec());
        }
        for at in [0, MAGIC.len(), MAGIC.len() + RECORD + 40, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[at] ^= 1;
            variants.push(flipped);
        }
        let mut longer = good.clone();
        longer.push(0);
        variants.push(longer);
        variants.push(b"kiln-hash-cache v1\nabc 1 2 3 4 5 6 7 /x\n".to_vec());
        variants.push(Vec::new());
        for v in variants {
            std::fs::write(&cache_file, &v).unwrap();
            let c = HashCache::load(&cache_file);
            assert!(c.loaded.is_empty(), "a damaged file of {} bytes was trusted", v.len());
            assert!(c.get(&stamp(&files[0])).is_none());
        }
    }
}

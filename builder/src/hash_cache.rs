//! A machine-local memory of input file digests, keyed by what `stat` says about the file,
//! so a rebuild of unchanged inputs does not read them again (the approach of git's index).
//!
//! It only saves time: a stale or damaged cache file is treated as empty, and an entry is
//! trusted only when path, size, mtime, ctime, inode and device all still match. Files
//! modified within the last seconds before hashing are not remembered, since a same-size
//! rewrite within the timestamp granularity would otherwise go unnoticed.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_oci::Digest;

const HEADER: &str = "kiln-hash-cache v1";
/// Files changed this recently (seconds) are hashed but not remembered.
const RACY_SECONDS: i64 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(md: &Metadata) -> Stamp {
        Stamp {
            size: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            ino: md.ino(),
            dev: md.dev(),
        }
    }
}

/// File digests remembered across builds.
pub struct HashCache {
    file: Option<PathBuf>,
    /// Keyed by the path as UTF-8 text: hashing a `str` is much cheaper than a `Path`'s
    /// component-wise hash, which showed in profiles of no-op rebuilds.
    entries: HashMap<String, (Stamp, Digest)>,
    now: i64,
    dirty: bool,
}

impl HashCache {
    /// A cache that remembers nothing (every input is read and hashed).
    pub fn disabled() -> HashCache {
        HashCache { file: None, entries: HashMap::new(), now: 0, dirty: false }
    }

    /// Loads the cache kept in `file`; a missing or unreadable file gives an empty cache.
    pub fn load(file: &Path) -> HashCache {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let entries = std::fs::read_to_string(file).map(|t| parse(&t)).unwrap_or_default();
        HashCache { file: Some(file.to_path_buf()), entries, now, dirty: false }
    }

    /// The remembered digest of `path`, if its metadata is unchanged.
    pub fn get(&self, path: &Path, md: &Metadata) -> Option<Digest> {
        self.file.as_ref()?;
        match self.entries.get(path.to_str()?) {
            Some((stamp, digest)) if *stamp == Stamp::of(md) => Some(*digest),
            _ => None,
        }
    }

    /// Remembers the digest of `path` as hashed with metadata `md`.
    pub fn put(&mut self, path: &Path, md: &Metadata, digest: Digest) {
        let Some(key) = path.to_str().filter(|p| !p.contains('\n')) else { return };
        if self.file.is_none() {
            return;
        }
        let stamp = Stamp::of(md);
        if self.now - stamp.mtime.0.max(stamp.ctime.0) < RACY_SECONDS {
            return;
        }
        self.entries.insert(key.to_string(), (stamp, digest));
        self.dirty = true;
    }

    /// Writes the cache back if it changed (atomically; failures only cost time later).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut out = String::with_capacity(self.entries.len() * 160);
        out.push_str(HEADER);
        out.push('\n');
        for (p, (s, d)) in &self.entries {
            out.push_str(&format!(
                "{} {} {} {} {} {} {} {} {p}\n",
                d.hex(),
                s.size,
                s.mtime.0,
                s.mtime.1,
                s.ctime.0,
                s.ctime.1,
                s.ino,
                s.dev
            ));
        }
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(out.as_bytes())?;
        tmp.persist(file).map_err(|e| e.error)?;
        Ok(())
    }
}

fn parse(text: &str) -> HashMap<String, (Stamp, Digest)> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return HashMap::new();
    }
    let mut out = HashMap::new();
    for line in lines {
        let mut f = line.splitn(9, ' ');
        let mut next = || f.next();
        let parsed = (|| {
            let digest = Digest::from_hex(next()?).ok()?;
            let mut num = || next()?.parse::<i64>().ok();
            let size = num()? as u64;
            let mtime = (num()?, num()?);
            let ctime = (num()?, num()?);
            let ino = num()? as u64;
            let dev = num()? as u64;
            Some((Stamp { size, mtime, ctime, ino, dev }, digest))
        })();
        if let (Some(entry), Some(path)) = (parsed, line.splitn(9, ' ').nth(8)) {
            out.insert(path.to_string(), entry);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_only_unchanged_settled_files() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("input");
        std::fs::write(&f, b"abc").unwrap();
        let old = std::process::Command::new("touch")
            .args(["-d", "2001-01-01"])
            .arg(&f)
            .status()
            .unwrap();
        assert!(old.success());
        let cache_file = tmp.path().join("cache");
        let mut c = HashCache::load(&cache_file);
        // ctime is "now" right after touch, so the entry is racy and not remembered.
        c.put(&f, &std::fs::metadata(&f).unwrap(), Digest::of(b"abc"));
        assert!(c.get(&f, &std::fs::metadata(&f).unwrap()).is_none());
        c.now += 10;
        c.put(&f, &std::fs::metadata(&f).unwrap(), Digest::of(b"abc"));
        c.save().unwrap();
        let c = HashCache::load(&cache_file);
        assert_eq!(c.get(&f, &std::fs::metadata(&f).unwrap()), Some(Digest::of(b"abc")));
        std::fs::write(&f, b"abd").unwrap();
        assert!(
            c.get(&f, &std::fs::metadata(&f).unwrap()).is_none(),
            "a rewrite changes mtime/ctime"
        );
        std::fs::write(&cache_file, "garbage").unwrap();
        assert!(HashCache::load(&cache_file).entries.is_empty());
        assert!(HashCache::disabled().get(&f, &std::fs::metadata(&f).unwrap()).is_none());
    }
}

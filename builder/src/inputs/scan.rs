//! The parallel half of reading an input tree: listing directories, `lstat`, reading link
//! targets and hashing files, spread over worker threads. The caller takes each directory's
//! listing back in its own sorted depth-first order, so thread timing never reaches a result.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use kiln_oci::Digest;
use kiln_tree::stamp::FileStamp;
use kiln_tree::tree::Device;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, Stat};

use super::{hash_host, Hashed, InputError, READ_BUF};
use crate::hash_cache::HashCache;

/// More threads than this only contend for the same directories and disk.
const MAX_WORKERS: usize = 8;

/// One directory entry, inspected.
pub(super) struct Found {
    /// Where its name lies in [`Listing::names`].
    pub name: Range<usize>,
    pub what: What,
    /// Its permission bits and numeric owner, read only for a tree that keeps them.
    pub host: Option<HostMeta>,
}

/// An entry's permission bits (setuid, setgid and sticky included) and numeric owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HostMeta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl HostMeta {
    pub(crate) fn of(st: &Stat) -> HostMeta {
        HostMeta { mode: st.st_mode & 0o7777, uid: st.st_uid, gid: st.st_gid }
    }
}

/// What a directory entry turned out to be.
pub(super) enum What {
    /// A directory, whose own listing is taken with this id.
    Dir(usize),
    /// A symbolic link and its target.
    Symlink(PathBuf),
    /// A regular file; `hashed` is its content or why it could not be read.
    File { exec: bool, nlink: u64, inode: (u64, u64), hashed: io::Result<Hashed> },
    /// A device node or FIFO.
    Device(Device),
    /// A socket, which no image can hold.
    Socket,
    /// `lstat` or `readlink` failed.
    Failed(io::Error),
}

/// A directory's entries, sorted bytewise by name. The names share one buffer and host
/// paths are made only where needed: allocations made on a worker and freed on the caller's
/// thread contend for the allocator's locks, and a tree has tens of thousands of entries.
pub(super) struct Listing {
    /// The directory's path on the host.
    pub dir: PathBuf,
    /// Every entry's name, back to back.
    pub names: Vec<u8>,
    pub entries: Vec<Found>,
}

impl Listing {
    /// The name of the entry that lies at `range` in `names`.
    pub fn name<'a>(names: &'a [u8], range: &Range<usize>) -> &'a OsStr {
        OsStr::from_bytes(&names[range.clone()])
    }
}

/// Hands out listings; given to the caller of [`walk`].
pub(super) struct Walker<'s> {
    shared: &'s Shared<'s>,
    buf: Vec<u8>,
}

impl Walker<'_> {
    /// The listing of directory `id` (0 is the root), waiting for a worker or listing it here.
    pub fn take(&mut self, id: usize) -> Result<Listing, InputError> {
        let mut st = self.shared.lock();
        loop {
            if let Some(listing) = st.done.remove(&id) {
                return listing;
            }
            // Not started yet: list it here rather than wait for a worker to get to it.
            if let Some(pos) = st.todo.iter().rposition(|(j, _)| *j == id) {
                let (_, host) = st.todo.remove(pos);
                drop(st);
                self.shared.run(id, host, &mut self.buf);
                st = self.shared.lock();
                continue;
            }
            st.awaited = Some(id);
            st = self.shared.listed.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.awaited = None;
        }
    }
}

/// Reads the tree at `root` with worker threads while `consume` takes its listings; returns
/// what `consume` returned and the digests hashed afresh (for the cache).
pub(super) fn walk<T>(
    root: &Path,
    cache: &HashCache,
    keep_host_meta: bool,
    consume: impl FnOnce(&mut Walker<'_>) -> Result<T, InputError>,
) -> Result<(T, Vec<(FileStamp, Digest)>), InputError> {
    let shared = Shared {
        cache,
        keep_host_meta,
        state: Mutex::new(State {
            todo: vec![(0, root.to_path_buf())],
            done: HashMap::new(),
            next_id: 1,
            stop: false,
            learned: Vec::new(),
            idle: 0,
            awaited: None,
        }),
        work: Condvar::new(),
        listed: Condvar::new(),
    };
    let workers = thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS);
    let result = thread::scope(|scope| {
        // Workers wait for work until told to stop, also when `consume` fails or panics.
        let _stop = StopOnDrop(&shared);
        for _ in 0..workers {
            // Without a worker the caller lists every directory itself, only slower.
            let spawned = thread::Builder::new().spawn_scoped(scope, || shared.work());
            drop(spawned);
        }
        consume(&mut Walker { shared: &shared, buf: vec![0; READ_BUF] })
    })?;
    let learned = std::mem::take(&mut shared.lock().learned);
    Ok((result, learned))
}

struct Shared<'c> {
    cache: &'c HashCache,
    /// Read every entry's mode and owner too.
    keep_host_meta: bool,
    state: Mutex<State>,
    /// Idle workers wait here for directories to list.
    work: Condvar,
    /// The caller waits here for the listing it needs next.
    listed: Condvar,
}

struct State {
    /// Directories not listed yet, as (id, host path). The last is listed next and
    /// subdirectories are pushed in reverse, so listing runs ahead in the caller's order.
    todo: Vec<(usize, PathBuf)>,
    done: HashMap<usize, Result<Listing, InputError>>,
    next_id: usize,
    stop: bool,
    learned: Vec<(FileStamp, Digest)>,
    /// Workers waiting for work: only they are woken, and only as many as there are new
    /// directories (a wake-up is a system call even when nobody waits).
    idle: usize,
    /// The listing the caller waits for, if it waits.
    awaited: Option<usize>,
}

struct StopOnDrop<'s>(&'s Shared<'s>);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.work.notify_all();
    }
}

impl Shared<'_> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn work(&self) {
        let mut buf = vec![0; READ_BUF];
        loop {
            let (id, host) = {
                let mut st = self.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if let Some(job) = st.todo.pop() {
                        break job;
                    }
                    st.idle += 1;
                    st = self.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                    st.idle -= 1;
                }
            };
            self.run(id, host, &mut buf);
        }
    }

    /// Lists directory `id`, queues its subdirectories and publishes the listing.
    fn run(&self, id: usize, host: PathBuf, buf: &mut [u8]) {
        let mut learned = Vec::new();
        // A panic must still publish a result, or the caller would wait for it forever.
        let listed = panic::catch_unwind(AssertUnwindSafe(|| {
            list(&host, self.cache, self.keep_host_meta, buf, &mut learned)
        }))
        .unwrap_or_else(|_| {
            let source = io::Error::other("a tree-reading worker thread stopped unexpectedly");
            Err(InputError::Io { path: host.clone(), source })
        });
        let mut st = self.lock();
        let first = st.todo.len();
        let listing = listed.map(|(names, mut entries)| {
            for found in &mut entries {
                if let What::Dir(sub) = &mut found.what {
                    *sub = st.next_id;
                    st.next_id += 1;
                    st.todo.push((*sub, host.join(Listing::name(&names, &found.name))));
                }
            }
            st.todo[first..].reverse();
            Listing { dir: host, names, entries }
        });
        st.learned.append(&mut learned);
        st.done.insert(id, listing);
        let wake_workers = st.idle.min(st.todo.len().saturating_sub(first));
        let wake_caller = st.awaited == Some(id);
        drop(st);
        for _ in 0..wake_workers {
            self.work.notify_one();
        }
        if wake_caller {
            self.listed.notify_one();
        }
    }
}

/// Bytes of directory entries read per `getdents` call.
const DIR_BUF: usize = 32 * 1024;

/// The names of the entries of `dir` and the entries sorted bytewise by name, each inspected
/// (files hashed). Entries are read into a buffer and `lstat`ed by name relative to the open
/// directory: no allocation per entry, and no lookup of the whole path.
fn list(
    dir: &Path,
    cache: &HashCache,
    keep_host_meta: bool,
    buf: &mut [u8],
    learned: &mut Vec<(FileStamp, Digest)>,
) -> Result<(Vec<u8>, Vec<Found>), InputError> {
    let io = |source: io::Error| InputError::Io { path: dir.to_path_buf(), source };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| io(e.into()))?;
    let mut names = Vec::new();
    let mut entries = Vec::new();
    let mut space = [MaybeUninit::<u8>::uninit(); DIR_BUF];
    let mut raw = RawDir::new(&fd, &mut space);
    while let Some(entry) = raw.next() {
        let entry = entry.map_err(|e| io(e.into()))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let start = names.len();
        names.extend_from_slice(name);
        entries.push((start..names.len(), entry.file_type()));
    }
    entries.sort_unstable_by(|a, b| names[a.0.clone()].cmp(&names[b.0.clone()]));
    let found = entries
        .into_iter()
        .map(|(name, kind)| {
            let at = Listing::name(&names, &name);
            let host = || dir.join(at);
            let (what, host) = inspect(&fd, at, kind, keep_host_meta, host, cache, buf, learned);
            Found { name, what, host }
        })
        .collect();
    Ok((names, found))
}

// One argument per thing an entry is inspected with; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn inspect(
    dir: &OwnedFd,
    name: &OsStr,
    kind: FileType,
    keep_host_meta: bool,
    host: impl Fn() -> PathBuf,
    cache: &HashCache,
    buf: &mut [u8],
    learned: &mut Vec<(FileStamp, Digest)>,
) -> (What, Option<HostMeta>) {
    // The type from the directory itself spares a stat for folders and links, unless their
    // modes and owners are kept.
    if !keep_host_meta {
        match kind {
            FileType::Directory => return (What::Dir(0), None),
            FileType::Symlink => return (read_link(dir, name), None),
            _ => {}
        }
    }
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => return (What::Failed(e.into()), None),
    };
    let meta = keep_host_meta.then(|| HostMeta::of(&st));
    let what = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let stamp = FileStamp::of_stat(&st);
            let hashed = hash_host(host, &stamp, cache, buf);
            if let Ok(Hashed { digest, hashed_as: Some(stamp), .. }) = &hashed {
                learned.push((*stamp, *digest));
            }
            What::File {
                exec: st.st_mode & 0o111 != 0,
                nlink: link_count(&st),
                inode: stamp.inode(),
                hashed,
            }
        }
        FileType::Directory => What::Dir(0),
        FileType::Symlink => read_link(dir, name),
        FileType::Fifo => What::Device(Device::Fifo),
        FileType::Socket => What::Socket,
        kind @ (FileType::CharacterDevice | FileType::BlockDevice) => {
            let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
            let (major, minor) = match Device::numbers(major.into(), minor.into()) {
                Ok(numbers) => numbers,
                Err(e) => return (What::Failed(io::Error::other(e)), None),
            };
            if kind == FileType::BlockDevice {
                What::Device(Device::Block { major, minor })
            } else {
                What::Device(Device::Char { major, minor })
            }
        }
        FileType::Unknown => What::Failed(io::Error::other("a file type kiln does not know")),
    };
    (what, meta)
}

/// The number of hard links `stat` reports.
// The conversion is needed where the field is narrower (32-bit targets).
#[allow(clippy::useless_conversion)]
fn link_count(st: &Stat) -> u64 {
    u64::try_from(st.st_nlink).unwrap_or(u64::MAX)
}

fn read_link(dir: &OwnedFd, name: &OsStr) -> What {
    match rustix::fs::readlinkat(dir, name, Vec::new()) {
        Ok(target) => What::Symlink(PathBuf::from(OsString::from_vec(target.into_bytes()))),
        Err(e) => What::Failed(e.into()),
    }
}

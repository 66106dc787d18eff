//! The parallel half of reading an input tree: listing directories, `lstat`, reading link
//! targets and hashing files, spread over worker threads. The caller takes each directory's
//! listing back in its own sorted depth-first order, so thread timing never reaches a result.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, DirEntry};
use std::io;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use kiln_oci::Digest;

use super::{hash_host, Hashed, InputError, READ_BUF};
use crate::hash_cache::{FileStamp, HashCache};

/// More threads than this only contend for the same directories and disk.
const MAX_WORKERS: usize = 8;

/// One directory entry, inspected.
pub(super) struct Found {
    /// Where its name lies in [`Listing::names`].
    pub name: Range<usize>,
    pub what: What,
}

/// What a directory entry turned out to be.
pub(super) enum What {
    /// A directory, whose own listing is taken with this id.
    Dir(usize),
    /// A symbolic link and its target.
    Symlink(PathBuf),
    /// A regular file; `hashed` is its content or why it could not be read.
    File { exec: bool, nlink: u64, inode: (u64, u64), hashed: io::Result<Hashed> },
    /// A FIFO, socket or device node (named in the plural, for the error message).
    Special(&'static str),
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
    consume: impl FnOnce(&mut Walker<'_>) -> Result<T, InputError>,
) -> Result<(T, Vec<(FileStamp, Digest)>), InputError> {
    let shared = Shared {
        cache,
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
            let _ = thread::Builder::new().spawn_scoped(scope, || shared.work());
        }
        consume(&mut Walker { shared: &shared, buf: vec![0; READ_BUF] })
    })?;
    let learned = std::mem::take(&mut shared.lock().learned);
    Ok((result, learned))
}

struct Shared<'c> {
    cache: &'c HashCache,
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
        let listed =
            panic::catch_unwind(AssertUnwindSafe(|| list(&host, self.cache, buf, &mut learned)))
                .unwrap_or_else(|_| {
                    let source =
                        io::Error::other("a tree-reading worker thread stopped unexpectedly");
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

/// The names of the entries of `dir` and the entries sorted bytewise by name, each inspected
/// (files hashed).
fn list(
    dir: &Path,
    cache: &HashCache,
    buf: &mut [u8],
    learned: &mut Vec<(FileStamp, Digest)>,
) -> Result<(Vec<u8>, Vec<Found>), InputError> {
    let io = |source| InputError::Io { path: dir.to_path_buf(), source };
    let mut names = Vec::new();
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let start = names.len();
        names.extend_from_slice(entry.file_name().as_bytes());
        entries.push((start..names.len(), entry));
    }
    entries.sort_unstable_by(|a, b| names[a.0.clone()].cmp(&names[b.0.clone()]));
    let found = entries
        .into_iter()
        .map(|(name, entry)| {
            let host = || dir.join(Listing::name(&names, &name));
            let what = inspect(&entry, host, cache, buf, learned);
            Found { name, what }
        })
        .collect();
    Ok((names, found))
}

fn inspect(
    entry: &DirEntry,
    host: impl Fn() -> PathBuf,
    cache: &HashCache,
    buf: &mut [u8],
    learned: &mut Vec<(FileStamp, Digest)>,
) -> What {
    // The type from the directory itself spares a stat for folders and links.
    match entry.file_type() {
        Ok(ft) if ft.is_dir() => return What::Dir(0),
        Ok(ft) if ft.is_symlink() => return read_link(&host()),
        Ok(_) => {}
        Err(e) => return What::Failed(e),
    }
    // lstat relative to the open directory, not a lookup of the whole path.
    let md = match entry.metadata() {
        Ok(md) => md,
        Err(e) => return What::Failed(e),
    };
    let ft = md.file_type();
    if ft.is_file() {
        let stamp = FileStamp::of(&md);
        let hashed = hash_host(host, &stamp, cache, buf);
        if let Ok(Hashed { digest, hashed_as: Some(stamp), .. }) = &hashed {
            learned.push((*stamp, *digest));
        }
        What::File { exec: md.mode() & 0o111 != 0, nlink: md.nlink(), inode: stamp.inode(), hashed }
    } else if ft.is_dir() {
        What::Dir(0)
    } else if ft.is_symlink() {
        read_link(&host())
    } else if ft.is_fifo() {
        What::Special("FIFOs")
    } else if ft.is_socket() {
        What::Special("sockets")
    } else {
        What::Special("device nodes")
    }
}

fn read_link(host: &Path) -> What {
    match fs::read_link(host) {
        Ok(target) => What::Symlink(target),
        Err(e) => What::Failed(e),
    }
}

//! Reading existing tarballs (plain, gzip or zstd) as layer inputs, refusing anything that
//! could write outside the image root, devices unless the recipe allows them, and anything
//! damaged: a member whose
//! data is not its declared size, a size or id that is not a number, a compressed stream that
//! fails its checksum or has no end.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use kiln_tree::host_file::HostFile;
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, Device, EntryKind, Meta};

/// One accepted member of a tarball, with its path relative to where it is unpacked.
#[derive(Debug)]
pub struct Member {
    pub path: ImagePath,
    pub kind: EntryKind,
    pub meta: Meta,
}

/// Opens `path`, choosing the decompressor from the file's magic bytes.
pub fn open(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic)?;
    let file = BufReader::new(File::open(path)?);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(file)?),
        _ => Box::new(file),
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Why a tarball input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    #[error("tarball {tarball}: member {member:?} {problem}")]
    Member { tarball: String, member: String, problem: String },
    #[error("tarball {tarball}")]
    Read {
        tarball: String,
        #[source]
        source: std::io::Error,
    },
}

/// Member names must be relative and must not climb with `..`, even where the result
/// would stay inside the image: a tarball that tries is not one to trust.
fn member_path(raw: &[u8], tarball: &str) -> Result<ImagePath, TarballError> {
    let bad = |problem: &str| TarballError::Member {
        tarball: tarball.to_string(),
        member: String::from_utf8_lossy(raw).into_owned(),
        problem: problem.to_string(),
    };
    let name = std::str::from_utf8(raw).map_err(|_| bad("is not valid UTF-8"))?;
    if name.starts_with('/') {
        return Err(bad("is an absolute path"));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(bad("climbs out with \"..\""));
    }
    ImagePath::parse(name).map_err(|e| bad(&e.to_string()))
}

/// The most bytes the tar reader may take between two members: headers and the extension
/// records (GNU long names, PAX) that it holds in memory. Real ones are a few KiB.
const METADATA_BUDGET: u64 = 16 * 1024 * 1024;

/// Bytes copied from a member to its spool file at a time.
const COPY_BUF: usize = 256 * 1024;

/// The largest id a member may have: `u32::MAX` means "no id" to the kernel.
const MAX_ID: u64 = u32::MAX as u64 - 1;

/// Members' contents, each in its own file in a folder removed when this is dropped: a
/// tarball is read once, in its own order, while a layer is written in path order.
#[derive(Debug)]
pub struct Spool {
    dir: tempfile::TempDir,
    files: usize,
}

impl Spool {
    pub(crate) fn new() -> io::Result<Spool> {
        Ok(Spool { dir: tempfile::Builder::new().prefix("kiln-tarball-").tempdir()?, files: 0 })
    }

    /// Copies the next `declared` bytes of `data` to a new spool file, hashing them; runs of
    /// zeros become holes, so a member of zeros takes no disk. Returns the file, or `Short`
    /// with the bytes found when `data` ends before `declared`.
    pub(crate) fn take(&mut self, data: &mut impl Read, declared: u64) -> io::Result<Spooled> {
        use std::io::{Seek, SeekFrom, Write};
        let path = self.dir.path().join(self.files.to_string());
        self.files += 1;
        let mut file = File::create_new(&path)?;
        let mut hasher = kiln_oci::Sha256::new();
        let mut buf = vec![0u8; COPY_BUF];
        let mut done = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let chunk = &buf[..n];
            hasher.update(chunk);
            if chunk.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(n as i64))?;
            } else {
                file.write_all(chunk)?;
            }
            done += n as u64;
        }
        if done != declared {
            return Ok(Spooled::Short { found: done });
        }
        file.set_len(done)?;
        Ok(Spooled::File(HostFile::new(path, done, hasher.finish())))
    }
}

pub(crate) enum Spooled {
    File(HostFile),
    Short { found: u64 },
}

/// A reader that fails once `left` bytes were read: the tar reader reads headers and
/// extension records through it with a budget, member data without one.
struct Budget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(io::Error::other(format!(
                "a header or extension record (long name, PAX) is larger than {} MiB",
                METADATA_BUDGET >> 20
            )));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

/// Reads and validates every member, with memory bounded whatever the sizes: file contents
/// go to a [`Spool`], and each member's data must have exactly its declared size. The
/// stream is read to its end, so a compressed tarball's checksum and length are checked.
pub fn read_members(
    reader: Box<dyn Read>,
    tarball: &str,
    devices: bool,
) -> Result<(Vec<Member>, Spool), TarballError> {
    let io_err = |source| TarballError::Read { tarball: tarball.to_string(), source };
    let mut spool = Spool::new().map_err(io_err)?;
    let left = Rc::new(Cell::new(METADATA_BUDGET));
    let mut archive = tar::Archive::new(Budget { inner: reader, left: left.clone() });
    let mut out = Vec::new();
    let mut entries = archive.entries().map_err(io_err)?;
    loop {
        left.set(METADATA_BUDGET);
        let Some(entry) = entries.next() else { break };
        let mut entry = entry.map_err(io_err)?;
        left.set(u64::MAX);
        let raw_path = entry.path_bytes().into_owned();
        let refuse = |problem: &str| TarballError::Member {
            tarball: tarball.to_string(),
            member: String::from_utf8_lossy(&raw_path).into_owned(),
            problem: problem.to_string(),
        };
        let path = member_path(&raw_path, tarball)?;
        let (uid, gid) = member_ids(&mut entry).map_err(|problem| refuse(&problem))?;
        let header = entry.header();
        let mode = header.mode().map_err(io_err)? & 0o7777;
        let meta = Meta { mode, uid, gid, xattrs: Default::default() };
        let entry_type = header.entry_type();
        let declared = entry.size();
        let kind = if entry_type.is_dir() {
            EntryKind::Dir
        } else if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
            match spool.take(&mut entry, declared).map_err(io_err)? {
                Spooled::File(file) => EntryKind::File(Content::Host(file)),
                Spooled::Short { found } => {
                    return Err(refuse(&format!(
                        "declares {declared} bytes, but the archive ends after {found}"
                    )))
                }
            }
        } else if entry_type.is_symlink() {
            let target =
                entry.link_name_bytes().ok_or_else(|| refuse("is a symlink without a target"))?;
            let target =
                std::str::from_utf8(&target).map_err(|_| refuse("has a non-UTF-8 link target"))?;
            if target.is_empty() || target.contains('\0') {
                return Err(refuse("has an empty link target"));
            }
            EntryKind::Symlink(target.to_string())
        } else if entry_type.is_hard_link() {
            let target =
                entry.link_name_bytes().ok_or_else(|| refuse("is a hard link without a target"))?;
            EntryKind::HardLink(member_path(&target, tarball)?)
        } else if entry_type.is_character_special()
            || entry_type.is_block_special()
            || entry_type.is_fifo()
        {
            if !devices {
                let kind = if entry_type.is_fifo() { "FIFO" } else { "device node" };
                return Err(refuse(&format!(
                    "is a {kind}: a tarball imports device nodes and FIFOs only when it says \
                     `devices = true`"
                )));
            }
            if entry_type.is_fifo() {
                // A FIFO has no numbers; GNU tar leaves their fields blank.
                EntryKind::Device(Device::Fifo)
            } else {
                let number = |n: io::Result<Option<u32>>| {
                    n.map_err(|e| refuse(&format!("has unreadable device numbers: {e}")))
                        .map(Option::unwrap_or_default)
                };
                let (major, minor) =
                    (number(header.device_major())?, number(header.device_minor())?);
                let (major, minor) = Device::numbers(major.into(), minor.into())
                    .map_err(|e| refuse(&format!("has {e}")))?;
                EntryKind::Device(if entry_type.is_block_special() {
                    Device::Block { major, minor }
                } else {
                    Device::Char { major, minor }
                })
            }
        } else if entry_type.is_gnu_sparse() {
            return Err(refuse("is a sparse file, which kiln does not unpack"));
        } else {
            return Err(refuse("has a member type kiln does not unpack"));
        };
        if !matches!(kind, EntryKind::File(_)) {
            // Any data a directory or link carries is skipped, but must be there.
            let found = io::copy(&mut entry, &mut io::sink()).map_err(io_err)?;
            if found != declared {
                return Err(refuse(&format!(
                    "declares {declared} bytes, but the archive ends after {found}"
                )));
            }
        }
        if path.is_root() {
            continue;
        }
        out.push(Member { path, kind, meta });
    }
    // Whatever follows the end-of-archive blocks is read too: a gzip or zstd stream is
    // checked (CRC, length) only at its end.
    left.set(u64::MAX);
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(io_err)?;
    Ok((out, spool))
}

/// A member's owner ids, checked: a PAX record must be a decimal number and every id must be
/// one Linux can give a file (at most 2^32 - 2), never clamped.
fn member_ids<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(u32, u32), String> {
    if let Some(pax) = entry.pax_extensions().map_err(|e| e.to_string())? {
        for ext in pax {
            let ext = ext.map_err(|e| e.to_string())?;
            let key = ext.key().map_err(|_| "has a PAX record with a non-UTF-8 key".to_string())?;
            if matches!(key, "size" | "uid" | "gid") {
                let value = ext.value().unwrap_or("");
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("has a PAX {key} {value:?} that is not a number"));
                }
            }
        }
    }
    let header = entry.header();
    let id = |what: &str, id: io::Result<u64>| -> Result<u32, String> {
        let id = id.map_err(|e| format!("has an unreadable {what}: {e}"))?;
        if id > MAX_ID {
            return Err(format!("has {what} {id}, above the largest Linux allows ({MAX_ID})"));
        }
        u32::try_from(id).map_err(|_| format!("has {what} {id}"))
    };
    Ok((id("uid", header.uid())?, id("gid", header.gid())?))
}

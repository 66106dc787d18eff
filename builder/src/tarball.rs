//! Reading existing tarballs (plain, gzip or zstd) as layer inputs, refusing anything that
//! could write outside the image root or create devices.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use crate::image_path::ImagePath;
use crate::inputs::InputError;
use crate::tree::{Content, EntryKind, Meta};

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

/// Member names must be relative and must not climb with `..`, even where the result
/// would stay inside the image: a tarball that tries is not one to trust.
fn member_path(raw: &[u8], tarball: &str) -> Result<ImagePath, InputError> {
    let bad = |problem: &str| InputError::TarMember {
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

/// Reads and validates every member.
pub fn read_members(reader: Box<dyn Read>, tarball: &str) -> Result<Vec<Member>, InputError> {
    let io_err = |source| InputError::Tarball { tarball: tarball.to_string(), source };
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let path = member_path(&raw_path, tarball)?;
        let header = entry.header();
        let mode = header.mode().map_err(io_err)? & 0o7777;
        let uid = u32::try_from(header.uid().map_err(io_err)?).unwrap_or(u32::MAX);
        let gid = u32::try_from(header.gid().map_err(io_err)?).unwrap_or(u32::MAX);
        let meta = Meta { mode, uid, gid, xattrs: Default::default() };
        let refuse = |problem: &str| InputError::TarMember {
            tarball: tarball.to_string(),
            member: String::from_utf8_lossy(&raw_path).into_owned(),
            problem: problem.to_string(),
        };
        let entry_type = header.entry_type();
        let kind = if entry_type.is_dir() {
            EntryKind::Dir
        } else if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(io_err)?;
            EntryKind::File(Content::Bytes(Arc::from(data)))
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
        } else if entry_type.is_character_special() || entry_type.is_block_special() {
            return Err(refuse("is a device node; declare devices in the recipe instead"));
        } else if entry_type.is_fifo() {
            return Err(refuse("is a FIFO, which images do not carry"));
        } else if entry_type.is_gnu_sparse() {
            return Err(refuse("is a sparse file, which kiln does not unpack"));
        } else {
            return Err(refuse("has a member type kiln does not unpack"));
        };
        if path.is_root() {
            continue;
        }
        out.push(Member { path, kind, meta });
    }
    Ok(out)
}

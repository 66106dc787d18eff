//! The tar stream of one layer, every header built here so that each byte is chosen.
//!
//! Format: POSIX ustar headers, with a PAX extended header (`x`) before an entry only when
//! ustar cannot hold something: a long path or link target, a size of 8 GiB or more, an
//! id beyond seven octal digits, or declared xattrs (`SCHILY.xattr.<name>`). Every entry
//! has mtime = the epoch, numeric ids, empty user and group names and its declared mode.

use std::io::{self, Write};

use kiln_tree::host_file::{self, HostFileError, StreamError};
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, Device, Entry, EntryKind, Tree};
use kiln_tree::Epoch;

const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// The largest value of an octal field `width` bytes wide (digits plus a NUL).
const fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}
const ID_MAX: u64 = octal_max(8);
const SIZE_MAX: u64 = octal_max(12);
/// Directory part of the name of every PAX extended header.
const PAX_DIR: &str = "PaxHeaders/";

/// Why a tar stream could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{entry}: xattr name {name:?} cannot be written as a PAX record (it holds '=', NUL or newline, or is empty)")]
    XattrName { entry: ImagePath, name: String },
    #[error("{entry}")]
    Host {
        entry: ImagePath,
        #[source]
        source: HostFileError,
    },
    #[error("writing the tar stream")]
    Write(#[source] io::Error),
}

/// Writes the tar stream of `tree` to `out`, entries in tree order, every mtime `epoch`.
pub fn write_tar<W: Write>(tree: &Tree, epoch: Epoch, mut out: W) -> Result<W, TarError> {
    // Epoch::MAX is the largest number the header's mtime field holds.
    let mtime = epoch.unsigned_seconds();
    for (path, entry) in tree.iter() {
        write_entry(&mut out, path, entry, mtime)?;
    }
    out.write_all(&[0u8; 2 * BLOCK]).map_err(TarError::Write)?;
    Ok(out)
}

fn write_entry<W: Write>(
    out: &mut W,
    path: &ImagePath,
    entry: &Entry,
    mtime: u64,
) -> Result<(), TarError> {
    let (typeflag, link, size) = match &entry.kind {
        EntryKind::Dir => (b'5', None, 0),
        EntryKind::File(content) => (b'0', None, content.size()),
        EntryKind::Symlink(target) => (b'2', Some(target.as_str()), 0),
        EntryKind::HardLink(target) => (b'1', Some(target.as_str()), 0),
        EntryKind::Device(Device::Char { .. }) => (b'3', None, 0),
        EntryKind::Device(Device::Block { .. }) => (b'4', None, 0),
        EntryKind::Device(Device::Fifo) => (b'6', None, 0),
    };
    let name = match entry.kind {
        EntryKind::Dir => format!("{}/", path.as_str()),
        _ => path.as_str().to_string(),
    };
    let meta = &entry.meta;

    let mut pax = PaxRecords::default();
    let mut header = Header::new();
    match split_name(&name) {
        Some((prefix, rest)) => {
            header.put_bytes(PREFIX, prefix.as_bytes());
            header.put_bytes(NAME, rest.as_bytes());
        }
        None => {
            pax.add("path", name.as_bytes());
            header.put_bytes(NAME, truncate(&name, NAME_LEN).as_bytes());
        }
    }
    if let Some(link) = link {
        if link.len() > NAME_LEN {
            pax.add("linkpath", link.as_bytes());
        }
        header.put_bytes(LINKNAME, truncate(link, NAME_LEN).as_bytes());
    }
    header.put_octal(SIZE, pax.number_if_over("size", size, SIZE_MAX));
    header.put_octal(UID, pax.number_if_over("uid", meta.uid.into(), ID_MAX));
    header.put_octal(GID, pax.number_if_over("gid", meta.gid.into(), ID_MAX));
    for (key, value) in &meta.xattrs {
        if key.is_empty() || key.contains(['=', '\0', '\n']) {
            return Err(TarError::XattrName { entry: path.clone(), name: key.clone() });
        }
        pax.add(&format!("SCHILY.xattr.{key}"), value);
    }
    header.put_octal(MODE, u64::from(meta.mode & 0o7777));
    header.put_octal(MTIME, mtime);
    header.set_typeflag(typeflag);
    if let EntryKind::Device(device) = &entry.kind {
        // Linux's limits (checked when the device was read) fit the 7 octal digits.
        let (major, minor) = device.major_minor();
        header.put_octal(DEVMAJOR, major.into());
        header.put_octal(DEVMINOR, minor.into());
    }

    if !pax.is_empty() {
        let base = path.as_str().rsplit('/').next().unwrap_or_default();
        let pax_name = format!("{PAX_DIR}{}", truncate(base, NAME_LEN - PAX_DIR.len()));
        let mut ph = Header::new();
        ph.put_bytes(NAME, pax_name.as_bytes());
        ph.put_octal(MODE, 0o644);
        ph.put_octal(UID, 0);
        ph.put_octal(GID, 0);
        ph.put_octal(SIZE, pax.bytes.len() as u64);
        ph.put_octal(MTIME, mtime);
        ph.set_typeflag(b'x');
        out.write_all(&ph.finish()).map_err(TarError::Write)?;
        write_padded(out, &pax.bytes)?;
    }
    out.write_all(&header.finish()).map_err(TarError::Write)?;

    if let EntryKind::File(content) = &entry.kind {
        match content {
            Content::Bytes(bytes) => write_padded(out, bytes)?,
            Content::Host(host) => {
                host_file::stream(host, |bytes| out.write_all(bytes)).map_err(|e| match e {
                    StreamError::Host(source) => TarError::Host { entry: path.clone(), source },
                    StreamError::Sink(e) => TarError::Write(e),
                })?;
                write_padding(out, host.size)?;
            }
        }
    }
    Ok(())
}

/// Splits a name into ustar `prefix` and `name`, choosing the shortest prefix that works;
/// `Some(("", name))` when the whole name fits, `None` when no split fits.
fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.len() <= NAME_LEN {
        return Some(("", name));
    }
    // A trailing '/' (directories) belongs to the last component, never a split point.
    let body = name.strip_suffix('/').unwrap_or(name);
    body.match_indices('/').map(|(i, _)| i).find_map(|i| {
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        (prefix.len() <= PREFIX_LEN && rest.len() <= NAME_LEN).then_some((prefix, rest))
    })
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn write_padded<W: Write>(out: &mut W, bytes: &[u8]) -> Result<(), TarError> {
    out.write_all(bytes).map_err(TarError::Write)?;
    write_padding(out, bytes.len() as u64)
}

/// Zero bytes that round `len` up to a whole block.
fn write_padding<W: Write>(out: &mut W, len: u64) -> Result<(), TarError> {
    let rem = (len % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem]).map_err(TarError::Write)?;
    }
    Ok(())
}

/// The records of one PAX extended header, in the order they were added.
#[derive(Default)]
struct PaxRecords {
    bytes: Vec<u8>,
}

impl PaxRecords {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `"<len> <key>=<value>\n"`, where `len` counts the whole record, its own
    /// digits included.
    fn add(&mut self, key: &str, value: &[u8]) {
        let rest = 1 + key.len() + 1 + value.len() + 1;
        let mut len = rest + decimal_digits(rest);
        while rest + decimal_digits(len) != len {
            len = rest + decimal_digits(len);
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(format!("{len} {key}=").as_bytes());
        self.bytes.extend_from_slice(value);
        self.bytes.push(b'\n');
        debug_assert_eq!(self.bytes.len() - start, len);
    }

    /// The value for a ustar numeric field: `value` when it fits below `max`, else 0 with
    /// the exact value recorded under `key`.
    fn number_if_over(&mut self, key: &str, value: u64, max: u64) -> u64 {
        if value <= max {
            return value;
        }
        self.add(key, value.to_string().as_bytes());
        0
    }
}

fn decimal_digits(n: usize) -> usize {
    n.to_string().len()
}

/// A field of the ustar header: offset and width in bytes.
type Field = (usize, usize);
const NAME: Field = (0, 100);
const MODE: Field = (100, 8);
const UID: Field = (108, 8);
const GID: Field = (116, 8);
const SIZE: Field = (124, 12);
const MTIME: Field = (136, 12);
const CHKSUM: Field = (148, 8);
const TYPEFLAG: usize = 156;
const LINKNAME: Field = (157, 100);
const MAGIC: Field = (257, 6);
const VERSION: Field = (263, 2);
const DEVMAJOR: Field = (329, 8);
const DEVMINOR: Field = (337, 8);
const PREFIX: Field = (345, 155);

/// One 512-byte ustar header under construction.
struct Header([u8; BLOCK]);

impl Header {
    fn new() -> Self {
        let mut h = Header([0u8; BLOCK]);
        h.put_bytes(MAGIC, b"ustar\0");
        h.put_bytes(VERSION, b"00");
        h.put_octal(DEVMAJOR, 0);
        h.put_octal(DEVMINOR, 0);
        h
    }

    /// Copies `bytes` (already known to fit) into a field, NUL-padded.
    fn put_bytes(&mut self, (at, width): Field, bytes: &[u8]) {
        debug_assert!(bytes.len() <= width);
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes `value` as zero-padded octal filling the field but for a final NUL.
    fn put_octal(&mut self, (at, width): Field, value: u64) {
        debug_assert!(value <= octal_max(width));
        let text = format!("{value:0digits$o}", digits = width - 1);
        self.0[at..at + width - 1].copy_from_slice(text.as_bytes());
        self.0[at + width - 1] = 0;
    }

    fn set_typeflag(&mut self, flag: u8) {
        self.0[TYPEFLAG] = flag;
    }

    /// Fills in the checksum: six octal digits, NUL, space.
    fn finish(mut self) -> [u8; BLOCK] {
        let (at, width) = CHKSUM;
        self.0[at..at + width].fill(b' ');
        let sum: u64 = self.0.iter().map(|b| u64::from(*b)).sum();
        let text = format!("{sum:06o}\0 ");
        self.0[at..at + width].copy_from_slice(text.as_bytes());
        self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Parses records the way POSIX describes: length first, then exactly that many bytes.
    fn parse_records(mut bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let space = bytes.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&bytes[..space]).unwrap().parse().unwrap();
            let record = &bytes[space + 1..len];
            assert_eq!(bytes[len - 1], b'\n');
            let eq = record.iter().position(|b| *b == b'=').unwrap();
            out.push((
                String::from_utf8(record[..eq].to_vec()).unwrap(),
                record[eq + 1..record.len() - 1].to_vec(),
            ));
            bytes = &bytes[len..];
        }
        out
    }

    #[test]
    fn pax_record_lengths_count_their_own_digits() {
        // Values chosen so the total crosses 10, 100 and 1000 around the digit count.
        for value_len in (0..20).chain(85..100).chain(985..1000) {
            let value: Vec<u8> = (0..value_len).map(|i| b"a\n= x"[i % 5]).collect();
            let mut pax = PaxRecords::default();
            pax.add("k", &value);
            let text = String::from_utf8(pax.bytes.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), pax.bytes.len(), "{value_len}");
            assert_eq!(parse_records(&pax.bytes), [("k".to_string(), value)]);
        }
    }

    #[test]
    fn numbers_beyond_ustar_go_to_pax() {
        let mut pax = PaxRecords::default();
        assert_eq!(pax.number_if_over("size", SIZE_MAX, SIZE_MAX), SIZE_MAX);
        assert_eq!(pax.number_if_over("uid", ID_MAX, ID_MAX), ID_MAX);
        assert!(pax.is_empty());
        assert_eq!(pax.number_if_over("size", 8 << 30, SIZE_MAX), 0);
        assert_eq!(pax.number_if_over("uid", ID_MAX + 1, ID_MAX), 0);
        assert_eq!(
            parse_records(&pax.bytes),
            [("size".into(), b"8589934592".to_vec()), ("uid".into(), b"2097152".to_vec())]
        );
    }

    #[test]
    fn names_split_on_the_shortest_prefix_that_fits() {
        assert_eq!(split_name("a/b"), Some(("", "a/b")));
        let long = format!("{}/{}/{}", "a".repeat(60), "b".repeat(60), "c".repeat(60));
        assert_eq!(split_name(&long), Some((&long[..121], &long[122..])));
        let dir = format!("{}/{}/", "a".repeat(60), "b".repeat(99));
        assert_eq!(split_name(&dir), Some((&dir[..60], &dir[61..])));
        assert_eq!(split_name(&"x".repeat(101)), None);
        assert_eq!(split_name(&format!("{}/x", "p".repeat(156))), None);
        assert_eq!(truncate("aé", 2), "a");
    }

    #[test]
    fn headers_are_ustar_with_checksums() {
        let mut h = Header::new();
        h.put_bytes(NAME, b"etc/");
        h.put_octal(MODE, 0o4755);
        h.set_typeflag(b'5');
        let block = h.finish();
        assert_eq!(&block[257..265], b"ustar\x0000");
        assert_eq!(&block[100..108], b"0004755\0");
        let stored = u64::from_str_radix(std::str::from_utf8(&block[148..154]).unwrap(), 8);
        let mut blank = block;
        blank[148..156].fill(b' ');
        assert_eq!(stored.unwrap(), blank.iter().map(|b| u64::from(*b)).sum::<u64>());
        assert_eq!(&block[154..156], b"\0 ");
    }

    #[test]
    fn the_latest_epoch_fits_the_mtime_field() {
        let empty = write_tar(&Tree::new(), Epoch::ZERO, Vec::new()).unwrap();
        assert_eq!(empty, vec![0u8; 1024]);
        assert_eq!(Epoch::MAX.unsigned_seconds(), SIZE_MAX);
    }
}

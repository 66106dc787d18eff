//! A minimal ustar writer for crafting hostile tarball inputs (`../` members, absolute names)
//! that well-behaved archivers refuse to produce.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

/// One archive member.
pub enum Member<'a> {
    File {
        name: &'a str,
        content: &'a [u8],
    },
    Dir {
        name: &'a str,
    },
    Symlink {
        name: &'a str,
        target: &'a str,
    },
    HardLink {
        name: &'a str,
        target: &'a str,
    },
    /// Bytes put into the archive as they are (hand-made headers and data).
    Raw(Vec<u8>),
}

fn octal(field: &mut [u8], value: u64) {
    // Zero-padded octal, NUL-terminated, filling the field.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert_eq!(text.len(), digits, "value {value} does not fit a {}-byte field", field.len());
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn put(field: &mut [u8], text: &str) {
    let bytes = text.as_bytes();
    assert!(bytes.len() <= field.len(), "{text:?} is too long for a ustar field");
    field[..bytes.len()].copy_from_slice(bytes);
}

fn header(name: &str, typeflag: u8, mode: u64, size: u64, link: &str) -> [u8; 512] {
    header_with(name, typeflag, mode, size, link, |_| {})
}

/// Sets a header's checksum field from the rest of the header.
pub fn seal(h: &mut [u8; 512]) {
    // The checksum is computed with its own field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
}

/// A ustar header, changed by `edit` (raw field bytes) before it is sealed.
pub fn header_with(
    name: &str,
    typeflag: u8,
    mode: u64,
    size: u64,
    link: &str,
    edit: impl FnOnce(&mut [u8; 512]),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    put(&mut h[0..100], name);
    octal(&mut h[100..108], mode);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = typeflag;
    put(&mut h[157..257], link);
    put(&mut h[257..263], "ustar\0");
    put(&mut h[263..265], "00");
    edit(&mut h);
    seal(&mut h);
    h
}

/// A PAX extended header (`x`) holding `records`, padded, for the member after it.
pub fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        // The length counts its own digits.
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        data.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    let mut out = header("PaxHeaders/x", b'x', 0o644, data.len() as u64, "").to_vec();
    out.extend_from_slice(&data);
    out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    out
}

/// An uncompressed tar archive of `members`, in the given order.
pub fn tar(members: &[Member<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        match m {
            Member::File { name, content } => {
                out.extend_from_slice(&header(name, b'0', 0o644, content.len() as u64, ""));
                out.extend_from_slice(content);
                let pad = (512 - content.len() % 512) % 512;
                out.extend(std::iter::repeat_n(0u8, pad));
            }
            Member::Dir { name } => out.extend_from_slice(&header(name, b'5', 0o755, 0, "")),
            Member::Symlink { name, target } => {
                out.extend_from_slice(&header(name, b'2', 0o777, 0, target))
            }
            Member::HardLink { name, target } => {
                out.extend_from_slice(&header(name, b'1', 0o644, 0, target))
            }
            Member::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// `tar(members)` compressed with gzip.
pub fn tar_gz(members: &[Member<'_>]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(&tar(members)).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

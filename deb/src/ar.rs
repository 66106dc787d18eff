//! The `ar` archive a `.deb` is: a magic line, then members each with a 60-byte text
//! header, their data padded to an even length. Read as a stream, one member at a time.

use std::io::{self, Read};

/// The first bytes of every `ar` archive.
pub const MAGIC: &[u8; 8] = b"!<arch>\n";

/// The fixed header before each member.
const HEADER_LEN: usize = 60;

/// Why an `ar` archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArError {
    #[error("not an ar archive (no `!<arch>` magic)")]
    Magic,
    #[error("the archive ends inside a member header")]
    TruncatedHeader,
    #[error("member {name:?} declares {declared} bytes, but the archive ends after {found}")]
    TruncatedData { name: String, declared: u64, found: u64 },
    #[error("a member header is malformed: {0}")]
    Header(&'static str),
    #[error("reading the archive failed")]
    Io(#[source] io::Error),
}

/// A member's header fields that a `.deb` reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArMember {
    pub name: String,
    pub size: u64,
}

/// Reads members in order; each member's data must be read (or skipped) through
/// [`ArReader::data`] before the next header.
pub struct ArReader<R> {
    inner: R,
    /// Bytes of the current member not yet read, and whether a padding byte follows.
    left: u64,
    pad: bool,
    current: String,
    declared: u64,
}

impl<R: Read> ArReader<R> {
    /// Checks the magic and returns a reader positioned at the first member.
    pub fn new(mut inner: R) -> Result<Self, ArError> {
        let mut magic = [0u8; 8];
        match read_full(&mut inner, &mut magic).map_err(ArError::Io)? {
            8 if &magic == MAGIC => {}
            _ => return Err(ArError::Magic),
        }
        Ok(ArReader { inner, left: 0, pad: false, current: String::new(), declared: 0 })
    }

    /// The next member's header, or `None` at the end of the archive. Whatever the
    /// previous member's data left unread is skipped first.
    pub fn next_member(&mut self) -> Result<Option<ArMember>, ArError> {
        self.skip_rest()?;
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut self.inner, &mut header).map_err(ArError::Io)? {
            0 => return Ok(None),
            HEADER_LEN => {}
            _ => return Err(ArError::TruncatedHeader),
        }
        if &header[58..60] != b"`\n" {
            return Err(ArError::Header("its end marker is not \"`\\n\""));
        }
        let name = std::str::from_utf8(&header[..16])
            .map_err(|_| ArError::Header("its name is not UTF-8"))?
            .trim_end_matches(' ');
        // GNU ar ends short names with '/'; dpkg-deb writes them without.
        let name = name.strip_suffix('/').unwrap_or(name);
        if name.is_empty() || name.contains('/') {
            return Err(ArError::Header("its name is empty or has a '/'"));
        }
        let size = std::str::from_utf8(&header[48..58])
            .ok()
            .map(|s| s.trim_end_matches(' '))
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(ArError::Header("its size is not a decimal number"))?;
        self.left = size;
        self.pad = size % 2 == 1;
        self.current = name.to_string();
        self.declared = size;
        Ok(Some(ArMember { name: name.to_string(), size }))
    }

    /// The current member's data: exactly its declared size, an error if the archive ends
    /// before.
    pub fn data(&mut self) -> MemberData<'_, R> {
        MemberData { ar: self }
    }

    fn skip_rest(&mut self) -> Result<(), ArError> {
        let left = self.left;
        if left > 0 {
            let found = io::copy(&mut (&mut self.inner).take(left), &mut io::sink())
                .map_err(ArError::Io)?;
            if found != left {
                return Err(self.truncated(found));
            }
            self.left = 0;
        }
        if self.pad {
            // The padding byte may be missing after the last member.
            let mut byte = [0u8; 1];
            read_full(&mut self.inner, &mut byte).map_err(ArError::Io)?;
            self.pad = false;
        }
        Ok(())
    }

    fn truncated(&self, found_of_left: u64) -> ArError {
        ArError::TruncatedData {
            name: self.current.clone(),
            declared: self.declared,
            found: self.declared - self.left + found_of_left,
        }
    }
}

/// The data of one member, ending at its declared size.
pub struct MemberData<'a, R> {
    ar: &'a mut ArReader<R>,
}

impl<R: Read> Read for MemberData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ar.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.ar.left).unwrap_or(usize::MAX));
        let n = self.ar.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, self.ar.truncated(0)));
        }
        self.ar.left -= n as u64;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An `ar` archive of the given members, as dpkg-deb writes it.
    pub fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (name, data) in members {
            out.extend(
                format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 100644, data.len())
                    .bytes(),
            );
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    fn names_and_data(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ArError> {
        let mut ar = ArReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(m) = ar.next_member()? {
            let mut data = Vec::new();
            ar.data().read_to_end(&mut data).map_err(ArError::Io)?;
            out.push((m.name, data));
        }
        Ok(out)
    }

    #[test]
    fn members_with_odd_sizes_are_read_in_order() {
        let bytes = archive(&[("debian-binary", b"2.0\n"), ("a/", b"odd"), ("b", b"")]);
        let got = names_and_data(&bytes).unwrap();
        assert_eq!(
            got,
            vec![
                ("debian-binary".to_string(), b"2.0\n".to_vec()),
                ("a".to_string(), b"odd".to_vec()),
                ("b".to_string(), vec![]),
            ]
        );
    }

    #[test]
    fn unread_data_is_skipped() {
        let bytes = archive(&[("x", b"12345"), ("y", b"ab")]);
        let mut ar = ArReader::new(&bytes[..]).unwrap();
        assert_eq!(ar.next_member().unwrap().unwrap().name, "x");
        assert_eq!(ar.next_member().unwrap().unwrap(), ArMember { name: "y".into(), size: 2 });
        assert!(ar.next_member().unwrap().is_none());
    }

    #[test]
    fn a_truncated_archive_is_refused_wherever_it_is_cut() {
        let bytes = archive(&[("debian-binary", b"2.0\n"), ("data", b"0123456789")]);
        // Every cut inside a header or inside data is an error; a cut at a member boundary
        // is a shorter, valid archive.
        let boundaries = [8, 8 + 60 + 4, bytes.len()];
        for cut in 0..bytes.len() {
            let result = names_and_data(&bytes[..cut]);
            if boundaries.contains(&cut) {
                assert!(result.is_ok(), "cut at {cut}: {result:?}");
            } else {
                assert!(result.is_err(), "cut at {cut} was accepted");
            }
        }
        let mut ar = ArReader::new(&bytes[..bytes.len() - 3]).unwrap();
        ar.next_member().unwrap();
        ar.next_member().unwrap();
        let err = ar.next_member().unwrap_err();
        assert_eq!(
            err.to_string(),
            "member \"data\" declares 10 bytes, but the archive ends after 7"
        );
    }

    #[test]
    fn a_bad_size_or_end_marker_is_refused() {
        let mut bytes = archive(&[("x", b"12")]);
        bytes[8 + 48] = b'-';
        assert!(matches!(names_and_data(&bytes), Err(ArError::Header(_))));
        let mut bytes = archive(&[("x", b"12")]);
        bytes[8 + 58] = b'!';
        assert!(matches!(names_and_data(&bytes), Err(ArError::Header(_))));
        assert!(matches!(ArReader::new(&b"!<arch>"[..]), Err(ArError::Magic)));
    }
}

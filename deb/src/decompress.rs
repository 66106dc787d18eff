//! Decompressing the members of a `.deb` and repository indexes, with bounds: a stream may
//! expand to at most a fixed total and at most a fixed ratio of what was read, so a small
//! hostile file (an xz bomb) is refused early instead of filling memory or disk.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

/// How a stream is compressed, from the suffix of its name (`data.tar.xz`, `Packages.gz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

impl Codec {
    /// The codec a file name's suffix names, or `None` for an unknown suffix.
    pub fn from_suffix(suffix: &str) -> Option<Codec> {
        Some(match suffix {
            "" => Codec::None,
            ".gz" => Codec::Gzip,
            ".xz" => Codec::Xz,
            ".zst" => Codec::Zstd,
            ".bz2" => Codec::Bzip2,
            _ => return None,
        })
    }
}

/// The most a decompressed stream may hold, and how much larger than its input it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_total: u64,
    pub max_ratio: u64,
}

impl Bounds {
    /// Streams shorter than this may exceed the ratio: tiny inputs (an empty tar is 10 KiB
    /// of zeros) compress far better than real data.
    const RATIO_SLACK: u64 = 1 << 20;
}

/// Why a decompressed stream was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BombError {
    #[error("decompresses to more than {max} bytes")]
    Total { max: u64 },
    #[error("decompresses to more than {ratio} times its compressed size")]
    Ratio { ratio: u64 },
}

/// Counts the compressed bytes read from the inner reader.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// A decompressing reader that fails with a [`BombError`] (inside an `io::Error` of kind
/// `InvalidData`) once its output breaks the bounds.
pub struct Bounded<'a> {
    inner: Box<dyn Read + 'a>,
    read_in: Rc<Cell<u64>>,
    out: u64,
    bounds: Bounds,
}

impl<'a> Bounded<'a> {
    pub fn new(input: impl Read + 'a, codec: Codec, bounds: Bounds) -> io::Result<Self> {
        let read_in = Rc::new(Cell::new(0));
        let counted = BufReader::new(Counted { inner: input, count: read_in.clone() });
        let inner: Box<dyn Read + 'a> = match codec {
            Codec::None => Box::new(counted),
            Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(counted)),
            Codec::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(counted)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(counted)?),
            Codec::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(counted)),
        };
        Ok(Bounded { inner, read_in, out: 0, bounds })
    }
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        let bomb = if self.out > self.bounds.max_total {
            Some(BombError::Total { max: self.bounds.max_total })
        } else if self.out > Bounds::RATIO_SLACK
            && self.out / self.bounds.max_ratio > self.read_in.get()
        {
            Some(BombError::Ratio { ratio: self.bounds.max_ratio })
        } else {
            None
        };
        match bomb {
            Some(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            None => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LOOSE: Bounds = Bounds { max_total: 1 << 30, max_ratio: 1000 };

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn read_all(bytes: &[u8], codec: Codec, bounds: Bounds) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Bounded::new(bytes, codec, bounds)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let bz = {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        for (bytes, codec) in [
            (data.clone(), Codec::None),
            (gz, Codec::Gzip),
            (xz(&data), Codec::Xz),
            (zst, Codec::Zstd),
            (bz, Codec::Bzip2),
        ] {
            assert_eq!(read_all(&bytes, codec, LOOSE).unwrap(), data, "{codec:?}");
        }
    }

    #[test]
    fn an_xz_bomb_is_refused_by_ratio_and_by_total() {
        let bomb = xz(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 16 << 10, "{} bytes", bomb.len());
        let err = read_all(&bomb, Codec::Xz, LOOSE).unwrap_err();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<BombError>());
        assert!(matches!(inner, Some(BombError::Ratio { ratio: 1000 })), "{err}");
        let small = Bounds { max_total: 4 << 20, max_ratio: u64::MAX };
        let err = read_all(&bomb, Codec::Xz, small).unwrap_err();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<BombError>());
        assert!(matches!(inner, Some(BombError::Total { .. })), "{err}");
    }

    #[test]
    fn a_damaged_stream_is_an_error() {
        let mut bytes = xz(b"hello hello hello");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        assert!(read_all(&bytes, Codec::Xz, LOOSE).is_err());
        let whole = xz(b"hello");
        assert!(read_all(&whole[..whole.len() - 4], Codec::Xz, LOOSE).is_err());
    }
}

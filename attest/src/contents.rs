//! What a layer blob holds: decompressed (gzip or zstd), its diff_id recomputed, and every
//! tar entry listed with its metadata and, for regular files, the sha256 of the content.

use std::collections::BTreeMap;
use std::io::Read;

use kiln_oci::{media_type, Digest, HashingReader, Sha256};
use serde::Serialize;

/// The prefix of an OCI whiteout file name.
const WHITEOUT: &str = ".wh.";
/// The whiteout that hides everything the layers below hold in its directory.
const OPAQUE: &str = ".wh..wh..opq";

/// One tar entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerEntry {
    /// Absolute path inside the image, e.g. `/etc/motd` (`/` for the root).
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink` or `other`.
    pub kind: &'static str,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Content size of a regular file.
    pub size: u64,
    /// sha256 of a regular file's content.
    pub digest: Option<Digest>,
    /// Target of a symlink or hard link.
    pub link: Option<String>,
}

/// A layer read back.
#[derive(Clone, Debug)]
pub struct LayerContents {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Entries in archive order.
    pub entries: Vec<LayerEntry>,
}

/// Why a layer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    /// The layer's media type is not a tar kiln can decompress.
    #[error("layer media type {0} is not a tar, tar+gzip or tar+zstd layer")]
    MediaType(String),
    /// Decompressing or reading the tar failed.
    #[error("layer {digest} cannot be read as a tar")]
    Tar { digest: Digest, source: std::io::Error },
}

/// Reads the layer blob streamed from `bytes` (of `digest`, compressed as `media` says).
pub fn read_layer<'a, R: Read + 'a>(
    media: &str,
    digest: Digest,
    bytes: R,
) -> Result<LayerContents, ContentsError> {
    let mut raw = HashingReader::new(decompressor(media, digest, bytes)?);
    let entries = list_entries(digest, &mut raw)?;
    let (diff_id, _) = raw.finish();
    Ok(LayerContents { diff_id, entries })
}

/// The uncompressed tar stream of a layer blob streamed from `bytes`.
pub fn decompressor<'a, R: Read + 'a>(
    media: &str,
    digest: Digest,
    bytes: R,
) -> Result<Box<dyn Read + 'a>, ContentsError> {
    Ok(match media {
        media_type::LAYER_TAR => Box::new(bytes),
        media_type::LAYER_TAR_GZIP => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        media_type::LAYER_TAR_ZSTD => Box::new(
            zstd::stream::read::Decoder::new(bytes)
                .map_err(|source| ContentsError::Tar { digest, source })?,
        ),
        other => return Err(ContentsError::MediaType(other.to_string())),
    })
}

/// Lists the entries of the uncompressed tar stream `tar` of layer `digest`, hashing each
/// regular file, and reads the stream to its end (the end-of-archive blocks and padding
/// belong to the diff_id too).
pub fn list_entries<R: Read>(digest: Digest, tar: R) -> Result<Vec<LayerEntry>, ContentsError> {
    let err = |source| ContentsError::Tar { digest, source };
    let mut archive = tar::Archive::new(tar);
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let header = entry.header();
        let path = entry.path().map_err(err)?;
        let path =
            format!("/{}", path.to_string_lossy().trim_start_matches("./").trim_end_matches('/'));
        let path = if path == "/." { "/".to_string() } else { path };
        let kind = header.entry_type();
        let (mode, uid, gid) =
            (header.mode().map_err(err)?, header.uid().map_err(err)?, header.gid().map_err(err)?);
        let link = entry.link_name().map_err(err)?.map(|l| l.to_string_lossy().into_owned());
        let (kind, size, digest) = if kind.is_file() {
            let mut h = Sha256::new();
            let mut size = 0u64;
            loop {
                let n = entry.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                size += n as u64;
            }
            ("file", size, Some(h.finish()))
        } else if kind.is_dir() {
            ("dir", 0, None)
        } else if kind.is_symlink() {
            ("symlink", 0, None)
        } else if kind.is_hard_link() {
            ("hardlink", 0, None)
        } else {
            ("other", 0, None)
        };
        entries.push(LayerEntry { path, kind, mode, uid, gid, size, digest, link });
    }
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(err)?;
    Ok(entries)
}

/// The regular files of a stack of layers, bottom first, as `path → sha256`: later layers
/// replace earlier entries, whiteouts remove them (`.wh.NAME` the path, `.wh..wh..opq`
/// everything under its directory), hard links take their target's digest. A layer's
/// whiteouts apply to the layers below it only, wherever they stand in its tar.
pub fn image_files(layers: &[LayerContents]) -> BTreeMap<String, Digest> {
    let mut files: BTreeMap<String, Digest> = BTreeMap::new();
    for layer in layers {
        for e in &layer.entries {
            let (dir, name) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
            let gone = if name == OPAQUE {
                format!("{dir}/")
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                format!("{dir}/{hidden}")
            } else {
                continue;
            };
            files.retain(|p, _| {
                p != &gone && !p.starts_with(&format!("{}/", gone.trim_end_matches('/')))
            });
        }
        for e in &layer.entries {
            let name = e.path.rsplit_once('/').map_or(e.path.as_str(), |(_, n)| n);
            if name.starts_with(WHITEOUT) {
                continue;
            }
            let digest = match (e.kind, &e.link) {
                ("file", _) => e.digest,
                ("hardlink", Some(target)) => {
                    files.get(&format!("/{}", target.trim_start_matches('/'))).copied()
                }
                _ => None,
            };
            match digest {
                Some(d) => {
                    files.insert(e.path.clone(), d);
                }
                None => {
                    files.remove(&e.path);
                }
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, content: Option<&str>) -> LayerEntry {
        LayerEntry {
            path: path.to_string(),
            kind: if content.is_some() { "file" } else { "dir" },
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            digest: content.map(|c| Digest::of(c.as_bytes())),
            link: None,
        }
    }

    fn layer(entries: Vec<LayerEntry>) -> LayerContents {
        LayerContents { diff_id: Digest::of(b""), entries }
    }

    #[test]
    fn whiteouts_hide_the_layers_below_wherever_they_stand_in_the_tar() {
        let lower = layer(vec![
            entry("/d/a", Some("a")),
            entry("/d/sub/b", Some("b")),
            entry("/dx", Some("x")),
            entry("/etc/gone", Some("g")),
            entry("/etc/kept", Some("k")),
        ]);
        // The opaque marker and the whiteout follow entries of their own layer, which stay.
        let upper = layer(vec![
            entry("/d/c", Some("c")),
            entry("/d/.wh..wh..opq", Some("")),
            entry("/etc/gone", Some("new")),
            entry("/etc/.wh.gone", Some("")),
        ]);
        let files = image_files(&[lower, upper]);
        let paths: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(paths, ["/d/c", "/dx", "/etc/gone", "/etc/kept"]);
        assert_eq!(files["/etc/gone"], Digest::of(b"new"));
    }
}

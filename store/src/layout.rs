//! Export to an OCI image layout (a folder or a tar archive of one), as skopeo, umoci and
//! container runtimes read it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_oci::{media_type, to_canonical_json, Descriptor, Digest, ImageIndex};

use crate::walk::{image_blobs, image_referrers};
use crate::{Store, StoreError};

/// The annotation that names a tag inside an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an OCI image layout ({reason}); choose an empty or new folder")]
    NotALayout { path: PathBuf, reason: String },
}

impl LayoutError {
    /// Whether this is stored bytes that are not what their digest or descriptor promises.
    pub fn is_integrity(&self) -> bool {
        matches!(self, LayoutError::Store(e) if e.is_damage())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io { path: path.to_path_buf(), source }
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub blobs: usize,
    pub bytes: u64,
    /// Artifact manifests newly listed in `index.json`.
    pub referrers: usize,
}

/// Writes the image at `root` and every blob it references into the layout folder `dir`,
/// tagged `tag`, with every artifact that refers to it (signatures, SBOMs, provenance, disks):
/// their blobs too, and their manifests listed untagged in `index.json`, so tools that read
/// referrers find them and tools that read a tag see only the image. An existing layout keeps
/// its other entries; blobs already there are re-verified.
pub async fn export_layout(
    store: &Store,
    root: &Descriptor,
    tag: &str,
    dir: &Path,
) -> Result<ExportReport, LayoutError> {
    let blobs_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs_dir).map_err(io_err(&blobs_dir))?;
    let marker = dir.join("oci-layout");
    let index_path = dir.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice::<ImageIndex>(&bytes).map_err(|e| {
            LayoutError::NotALayout { path: dir.to_path_buf(), reason: format!("index.json: {e}") }
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ImageIndex {
            schema_version: 2,
            media_type: media_type::IMAGE_INDEX.into(),
            manifests: Vec::new(),
            subject: None,
            annotations: BTreeMap::new(),
        },
        Err(e) => return Err(io_err(&index_path)(e)),
    };

    let mut report = ExportReport { blobs: 0, bytes: 0, referrers: 0 };
    let mut blobs = image_blobs(store, root).await?;
    let (referrers, added) = image_referrers(store, &blobs).await?;
    blobs.extend(added);
    for desc in blobs {
        let target = blobs_dir.join(desc.digest.hex());
        if file_matches(&target, &desc)? {
            continue;
        }
        report.bytes += store.copy_described_to(&desc, &target).await?;
        report.blobs += 1;
    }

    index.manifests.retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
    let mut entry = root.clone();
    entry.annotations.insert(REF_NAME.into(), tag.to_string());
    index.manifests.push(entry);
    for artifact in referrers {
        let listed = index
            .manifests
            .iter()
            .any(|d| d.digest == artifact.digest && !d.annotations.contains_key(REF_NAME));
        if !listed {
            index.manifests.push(artifact);
            report.referrers += 1;
        }
    }
    write_file(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let bytes = to_canonical_json(&index)
        .map_err(|e| LayoutError::NotALayout { path: dir.to_path_buf(), reason: e.to_string() })?;
    write_file(&index_path, &bytes)?;
    Ok(report)
}

/// Exports into a fresh temporary layout and writes it as one tar file with fixed
/// metadata, so the same image always gives the same archive bytes.
pub async fn export_archive(
    store: &Store,
    root: &Descriptor,
    tag: &str,
    file: &Path,
) -> Result<ExportReport, LayoutError> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let scratch = tempfile::tempdir_in(&parent).map_err(io_err(&parent))?;
    let report = export_layout(store, root, tag, scratch.path()).await?;
    let mut out = tempfile::NamedTempFile::new_in(&parent).map_err(io_err(&parent))?;
    {
        let mut tar = tar::Builder::new(std::io::BufWriter::new(out.as_file_mut()));
        append_dir(&mut tar, "blobs/")?;
        append_dir(&mut tar, "blobs/sha256/")?;
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(scratch.path().join("blobs/sha256"))
            .map_err(io_err(scratch.path()))?
        {
            let entry = entry.map_err(io_err(scratch.path()))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            append_file(&mut tar, scratch.path(), &format!("blobs/sha256/{name}"))?;
        }
        append_file(&mut tar, scratch.path(), "index.json")?;
        append_file(&mut tar, scratch.path(), "oci-layout")?;
        let mut inner = tar.into_inner().map_err(io_err(file))?;
        inner.flush().map_err(io_err(file))?;
    }
    out.persist(file).map_err(|e| io_err(file)(e.error))?;
    Ok(report)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> Result<(), LayoutError> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, name, std::io::empty()).map_err(io_err(Path::new(name)))
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    name: &str,
) -> Result<(), LayoutError> {
    let path = root.join(name);
    let file = std::fs::File::open(&path).map_err(io_err(&path))?;
    let size = file.metadata().map_err(io_err(&path))?.len();
    let mut h = header(tar::EntryType::Regular, 0o644, size);
    tar.append_data(&mut h, name, file).map_err(io_err(&path))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    // Created like the blobs, 0666 less the umask, not a temporary file's private 0600.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

/// Whether the layout already holds exactly the blob `desc` describes at `path`.
fn file_matches(path: &Path, desc: &Descriptor) -> Result<bool, LayoutError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == desc.size => Ok(file_digest(path)? == desc.digest),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn file_digest(path: &Path) -> Result<Digest, LayoutError> {
    let mut reader = kiln_oci::HashingReader::new(std::fs::File::open(path).map_err(io_err(path))?);
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(io_err(path))?;
    Ok(reader.finish().0)
}

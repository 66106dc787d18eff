//! The EFI system partition: files taken from the image, written as FAT.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_disk::fat::write_fat;
use kiln_disk::gpt::derive_guid;
use kiln_disk::layout::{content_ranges, EspImage};
use kiln_oci::Digest;
use kiln_tree::tree::{Entry, EntryKind, Meta, Tree};
use kiln_tree::Epoch;

use crate::build::disks::error::{create, io_err, DiskError};
use crate::recipe::EspSpec;

/// The ESP's files taken from the image, as a tree of ESP paths; refuses sources that are
/// missing or not regular files.
pub fn esp_tree(rootfs: &Tree, spec: &EspSpec) -> Result<Tree, DiskError> {
    let mut tree = Tree::new();
    for (dest, src) in &spec.files {
        let missing = || DiskError::EspSource { dest: dest.clone(), src: src.clone(), found: None };
        let mut entry = rootfs.get(src).ok_or_else(missing)?;
        if let EntryKind::HardLink(target) = &entry.kind {
            entry = rootfs.get(target).ok_or_else(missing)?;
        }
        let EntryKind::File(content) = &entry.kind else {
            let found = match entry.kind {
                EntryKind::Dir => "a directory",
                EntryKind::Symlink(_) => "a symbolic link (name the file it points to)",
                _ => "not a regular file",
            };
            return Err(DiskError::EspSource {
                dest: dest.clone(),
                src: src.clone(),
                found: Some(found),
            });
        };
        let file = Entry { kind: EntryKind::File(content.clone()), meta: Meta::root(0o644) };
        tree.insert(dest.clone(), file)?;
    }
    Ok(tree)
}

/// A seed naming the ESP's content: its paths and the digests of its files.
fn esp_seed(esp: &Tree) -> Digest {
    let mut listing = Vec::new();
    for (path, entry) in esp.iter() {
        listing.extend_from_slice(path.as_str().as_bytes());
        listing.push(0);
        if let EntryKind::File(content) = &entry.kind {
            listing.extend_from_slice(content.digest().as_bytes());
        }
        listing.push(b'\n');
    }
    Digest::of(&listing)
}

/// The ESP, written to a scratch file.
pub(super) struct EspFile {
    pub path: PathBuf,
    pub image: EspImage,
}

/// Writes the ESP `spec` describes, its files taken from `rootfs`, to `esp.fat` in `work_dir`.
pub(super) fn write_esp(
    rootfs: &Tree,
    spec: &EspSpec,
    epoch: Epoch,
    work_dir: &Path,
) -> Result<EspFile, DiskError> {
    let tree = esp_tree(rootfs, spec)?;
    let seed = esp_seed(&tree);
    let path = work_dir.join("esp.fat");
    let mut out = BufWriter::new(create(&path)?);
    let volume_id = u32::from_be_bytes([
        seed.as_bytes()[0],
        seed.as_bytes()[1],
        seed.as_bytes()[2],
        seed.as_bytes()[3],
    ]);
    write_fat(&tree, spec.size, epoch, volume_id, "ESP", &mut out)?;
    out.flush().map_err(io_err(&path))?;
    drop(out);
    let content = content_ranges(&path, spec.size).map_err(io_err(&path))?;
    let guid = derive_guid("esp", seed.as_bytes());
    Ok(EspFile { path, image: EspImage { size: spec.size, guid, content } })
}

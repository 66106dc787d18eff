//! Each requested disk format made from the written disk: qcow2 converted from the raw disk
//! (or written directly), raw, fixed VHD, the GCE tarball, and the initramfs.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_compress::{compress, Compression};
use kiln_disk::cpio::write_cpio;
use kiln_disk::qcow2::{write_qcow2, Qcow2Layout};
use kiln_disk::vhd;
use kiln_tree::host_file::HostFile;
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, Entry, EntryKind, Meta, Tree};
use kiln_tree::Epoch;

use crate::build::disks::error::{create, io_err, open, DiskError};
use crate::build::disks::hashed_file::{hash_file, write_hashed, Hashed};
use crate::build::disks::partitioned::WrittenDisk;
use crate::layer::write_layer;
use crate::recipe::{DiskFormat, DiskSpec};

/// What the disk files are made from.
pub(super) struct Sources<'a> {
    pub rootfs: &'a Tree,
    pub spec: &'a DiskSpec,
    pub epoch: Epoch,
    pub threads: usize,
    pub work_dir: &'a Path,
    /// The disk written, raw or as qcow2, when a format needs one.
    pub disk: Option<&'a WrittenDisk>,
    /// The raw disk file, when it was written.
    pub raw: Option<&'a Path>,
    /// Its digest and size, when taken already.
    pub raw_hashed: Option<Hashed>,
}

impl Sources<'_> {
    fn disk(&self, format: DiskFormat) -> Result<&WrittenDisk, DiskError> {
        self.disk.ok_or(DiskError::Missing(format))
    }

    fn raw_hashed(&self, raw: &Path) -> Result<Hashed, DiskError> {
        Ok(self.raw_hashed.map_or_else(|| hash_file(raw), Ok)?)
    }
}

/// The file of `format`, with its digest and size; `direct_qcow2` is the qcow2 written
/// without a raw disk, taken when that format comes.
pub(super) fn disk_file(
    format: DiskFormat,
    from: &Sources<'_>,
    direct_qcow2: &mut Option<(PathBuf, Hashed)>,
) -> Result<(PathBuf, Hashed), DiskError> {
    match (format, from.raw) {
        (DiskFormat::Qcow2, None) => direct_qcow2.take().ok_or(DiskError::Missing(format)),
        (DiskFormat::Qcow2, Some(raw)) => qcow2_from_raw(from, raw),
        (DiskFormat::Raw, Some(raw)) => Ok((raw.to_path_buf(), from.raw_hashed(raw)?)),
        (DiskFormat::Vhd, Some(raw)) => vhd_from_raw(from, raw),
        (DiskFormat::Gce, Some(raw)) => gce_from_raw(from, raw),
        (DiskFormat::Raw | DiskFormat::Vhd | DiskFormat::Gce, None) => {
            Err(DiskError::Missing(format))
        }
        (DiskFormat::Initramfs, _) => initramfs(from),
    }
}

fn qcow2_from_raw(from: &Sources<'_>, raw: &Path) -> Result<(PathBuf, Hashed), DiskError> {
    let path = from.work_dir.join("disk.qcow2");
    let layout = Qcow2Layout::new(from.spec.size, &from.disk(DiskFormat::Qcow2)?.plan.extents)?;
    let raw_data = BufReader::new(open(raw)?);
    let ((), hashed) = write_hashed::<_, DiskError, _>(&path, |out| {
        Ok(write_qcow2(&layout, raw_data, out).map(drop)?)
    })?;
    Ok((path, hashed))
}

fn vhd_from_raw(from: &Sources<'_>, raw: &Path) -> Result<(PathBuf, Hashed), DiskError> {
    let path = from.work_dir.join("disk.vhd");
    let mut raw_data = open(raw)?;
    let ((), hashed) = write_hashed(&path, |out| {
        io::copy(&mut raw_data, out).map_err(io_err(&path))?;
        let disk_guid = from.disk(DiskFormat::Vhd)?.guids.disk;
        let footer = vhd::footer(from.spec.size, from.epoch, disk_guid.to_be());
        out.write_all(&footer).map_err(io_err(&path))
    })?;
    Ok((path, hashed))
}

fn gce_from_raw(from: &Sources<'_>, raw: &Path) -> Result<(PathBuf, Hashed), DiskError> {
    let (digest, size) = from.raw_hashed(raw)?;
    let mut tree = Tree::new();
    let content = Content::Host(HostFile::new(raw.to_path_buf(), size, digest));
    let entry = Entry { kind: EntryKind::File(content), meta: Meta::root(0o644) };
    tree.insert(ImagePath::parse("disk.raw")?, entry)?;
    let blob = write_layer(&tree, from.epoch, &Compression::GZIP, from.threads, from.work_dir)?;
    let path = from.work_dir.join("disk.tar.gz");
    std::fs::rename(&blob.path, &path).map_err(io_err(&path))?;
    Ok((path, (blob.digest, blob.size)))
}

fn initramfs(from: &Sources<'_>) -> Result<(PathBuf, Hashed), DiskError> {
    let cpio_path = from.work_dir.join("initramfs.cpio");
    let mut cpio = BufWriter::new(create(&cpio_path)?);
    write_cpio(from.rootfs, from.epoch, &mut cpio)?;
    cpio.flush().map_err(io_err(&cpio_path))?;
    drop(cpio);
    let path = from.work_dir.join("initramfs.cpio.gz");
    let input = BufReader::new(open(&cpio_path)?);
    let ((), hashed) = write_hashed::<_, DiskError, _>(&path, |out| {
        Ok(compress(&Compression::GZIP, from.threads, input, out).map(drop)?)
    })?;
    crate::scratch::remove(&cpio_path);
    Ok((path, hashed))
}

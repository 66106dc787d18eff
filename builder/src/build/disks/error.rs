//! Why the disk images could not be made.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use kiln_compress::CompressionError;
use kiln_disk::cpio::CpioError;
use kiln_disk::erofs::ErofsError;
use kiln_disk::ext4::Ext4Error;
use kiln_disk::fat::FatError;
use kiln_disk::gpt::GptError;
use kiln_disk::qcow2::Qcow2Error;
use kiln_disk::squashfs::SquashfsError;
use kiln_disk::verity::VerityError;
use kiln_tree::image_path::{ImagePath, ImagePathError};
use kiln_tree::tree::TreeError;

use crate::build::disks::hashed_file::HashedFileError;
use crate::layer::LayerError;
use crate::recipe::DiskFormat;
use crate::rootfs::RootfsError;

/// Why the disk images could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("flattening the layers")]
    Rootfs(#[from] RootfsError),
    #[error("erofs root")]
    Erofs(#[from] ErofsError),
    #[error("squashfs root")]
    Squashfs(#[from] SquashfsError),
    #[error("ext4 root")]
    Ext4(#[from] Ext4Error),
    #[error("ESP")]
    Fat(#[from] FatError),
    #[error(
        "ESP file {dest} is taken from {src}, which {}",
        match found { None => "is not in the image".to_string(), Some(what) => format!("is {what}") }
    )]
    EspSource { dest: ImagePath, src: ImagePath, found: Option<&'static str> },
    #[error("dm-verity")]
    Verity(#[from] VerityError),
    #[error("GPT disk")]
    Gpt(#[from] GptError),
    #[error("qcow2")]
    Qcow2(#[from] Qcow2Error),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("GCE image")]
    Gce(#[from] LayerError),
    #[error("initramfs")]
    Cpio(#[from] CpioError),
    #[error("initramfs")]
    Compress(#[from] CompressionError),
    #[error("GCE image")]
    GceTree(#[from] TreeError),
    #[error("GCE image")]
    GcePath(#[from] ImagePathError),
    #[error(transparent)]
    File(#[from] HashedFileError),
    #[error("no disk was written for the {0:?} output (a bug in kiln)")]
    Missing(DiskFormat),
    #[error("serialising the disk artifact manifest")]
    Json(#[from] serde_json::Error),
}

/// Turns an I/O error on `path` into a [`DiskError`].
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io { path, source }
}

pub(super) fn create(path: &Path) -> Result<File, DiskError> {
    File::create(path).map_err(io_err(path))
}

pub(super) fn open(path: &Path) -> Result<File, DiskError> {
    File::open(path).map_err(io_err(path))
}

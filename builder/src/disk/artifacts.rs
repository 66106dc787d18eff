//! The `[disk]` outputs of a build: the layers flattened into an erofs root, an optional
//! dm-verity hash partition, a GPT disk, and that disk as raw, qcow2, fixed VHD and GCE files, and an initramfs,
//! described by an OCI 1.1 artifact manifest whose subject is the image manifest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_oci::{media_type, Descriptor, Digest, HashingReader, ImageManifest};

use crate::compress::{compress, Compression, CompressionError};
use crate::disk::cpio::{write_cpio, CpioError};
use crate::disk::erofs::{write_erofs, ErofsError};
use crate::disk::gpt::{derive_guid, write_gpt, GptError, Guid, Partition, PartitionType};
use crate::disk::qcow2::{write_qcow2, Qcow2Error};
use crate::disk::verity::{salt_from, write_verity, VerityError};
use crate::disk::vhd;
use crate::epoch::Epoch;
use crate::image::JsonBlob;
use crate::image_path::{ImagePath, ImagePathError};
use crate::layer::{write_layer, LayerError};
use crate::recipe::{DiskFormat, DiskSpec};
use crate::rootfs::{flatten, RootfsError};
use crate::tree::{Content, Entry, EntryKind, Meta, Tree, TreeError};

/// artifactType of the disk images attached to an image.
pub const DISK_ARTIFACT: &str = "application/vnd.kiln.disk.v1";
/// Media type of the empty config of an artifact manifest.
/// Annotation carrying the dm-verity root hash (hex) on the artifact manifest.
pub const ROOT_HASH_ANNOTATION: &str = "dev.kiln.disk.verity.root-hash";

/// Why the disk images could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("flattening the layers: {0}")]
    Rootfs(#[from] RootfsError),
    #[error("erofs root: {0}")]
    Erofs(#[from] ErofsError),
    #[error("dm-verity: {0}")]
    Verity(#[from] VerityError),
    #[error("GPT disk: {0}")]
    Gpt(#[from] GptError),
    #[error("qcow2: {0}")]
    Qcow2(#[from] Qcow2Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("GCE image: {0}")]
    Gce(#[from] LayerError),
    #[error("initramfs: {0}")]
    Cpio(#[from] CpioError),
    #[error("initramfs: {0}")]
    Compress(#[from] CompressionError),
    #[error("GCE image: {0}")]
    GceTree(#[from] TreeError),
    #[error("GCE image: {0}")]
    GcePath(#[from] ImagePathError),
    #[error("serialising the disk artifact manifest: {0}")]
    Json(#[from] serde_json::Error),
}

/// One disk file ready to store.
#[derive(Clone, Debug)]
pub struct DiskFile {
    pub format: DiskFormat,
    pub path: PathBuf,
    pub descriptor: Descriptor,
}

/// Everything the `[disk]` table produced.
#[derive(Clone, Debug)]
pub struct DiskOutput {
    /// The disk files, in recipe format order.
    pub files: Vec<DiskFile>,
    /// The artifact manifest (subject = the image manifest) and its empty config.
    pub manifest: JsonBlob,
    pub empty_config: JsonBlob,
    /// The dm-verity root hash, when verity is on.
    pub root_hash: Option<[u8; 32]>,
}

/// The media type of a disk file.
pub fn media_type_of(format: DiskFormat) -> &'static str {
    match format {
        DiskFormat::Raw => "application/vnd.kiln.disk.raw.v1",
        DiskFormat::Qcow2 => "application/vnd.kiln.disk.qcow2.v1",
        DiskFormat::Vhd => "application/vnd.kiln.disk.vhd.v1",
        DiskFormat::Gce => "application/vnd.kiln.disk.gce.v1.tar+gzip",
        DiskFormat::Initramfs => "application/vnd.kiln.initramfs.v1.cpio+gzip",
    }
}

/// The sha256 and size of a file.
fn hash_file(path: &Path) -> Result<(Digest, u64), DiskError> {
    let io_err = |source| DiskError::Io { path: path.to_path_buf(), source };
    let mut reader = HashingReader::new(BufReader::new(File::open(path).map_err(io_err)?));
    io::copy(&mut reader, &mut io::sink()).map_err(io_err)?;
    Ok(reader.finish())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes the disks of `spec` from `layers` in `work_dir`, for the image manifest `subject`.
pub fn make_disks(
    layers: &[Tree],
    spec: &DiskSpec,
    epoch: Epoch,
    threads: usize,
    work_dir: &Path,
    subject: &Descriptor,
) -> Result<DiskOutput, DiskError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io { path, source }
    };
    let create = |path: &Path| File::create(path).map_err(io_err(path));
    let open = |path: &Path| File::open(path).map_err(io_err(path));

    let rootfs = flatten(layers)?;
    let erofs_path = work_dir.join("root.erofs");
    let mut erofs_file = BufWriter::new(create(&erofs_path)?);
    let erofs = write_erofs(&rootfs, epoch, &mut erofs_file)?;
    erofs_file.flush().map_err(io_err(&erofs_path))?;
    drop(erofs_file);

    let verity_path = work_dir.join("root.verity");
    let verity = if spec.verity {
        let data = BufReader::new(open(&erofs_path)?);
        let mut out = BufWriter::new(create(&verity_path)?);
        let tree = write_verity(data, erofs.size, salt_from(&erofs.uuid), &mut out)?;
        out.flush().map_err(io_err(&verity_path))?;
        Some(tree)
    } else {
        None
    };

    // Partition GUIDs as the Discoverable Partitions Specification suggests: with verity the
    // root hash names the root (first half) and its hash partition (second half).
    let (root_guid, verity_guid) = match &verity {
        Some(v) => {
            let mut a = [0u8; 16];
            let mut b = [0u8; 16];
            a.copy_from_slice(&v.root_hash[..16]);
            b.copy_from_slice(&v.root_hash[16..]);
            (Guid::from_be(a), Guid::from_be(b))
        }
        None => (derive_guid("root", &erofs.uuid), derive_guid("root-verity", &erofs.uuid)),
    };
    let mut seed = root_guid.0.to_vec();
    seed.extend_from_slice(&verity_guid.0);
    let disk_guid = derive_guid("disk", &seed);

    let raw_path = work_dir.join("disk.raw");
    {
        let mut root_data = BufReader::new(open(&erofs_path)?);
        let mut parts = vec![Partition {
            kind: PartitionType::RootX86_64,
            guid: root_guid,
            label: "root-x86-64".into(),
            size: erofs.size,
            data: &mut root_data,
        }];
        let mut hash_data;
        if let Some(v) = &verity {
            hash_data = BufReader::new(open(&verity_path)?);
            parts.push(Partition {
                kind: PartitionType::RootVerityX86_64,
                guid: verity_guid,
                label: "root-x86-64-verity".into(),
                size: v.hash_size,
                data: &mut hash_data,
            });
        }
        let mut out = BufWriter::new(create(&raw_path)?);
        write_gpt(spec.size, disk_guid, &mut parts, &mut out)?;
        out.flush().map_err(io_err(&raw_path))?;
    }

    let mut files = Vec::new();
    for format in &spec.formats {
        let path = match format {
            DiskFormat::Raw => raw_path.clone(),
            DiskFormat::Qcow2 => {
                let path = work_dir.join("disk.qcow2");
                let mut out = BufWriter::new(create(&path)?);
                write_qcow2(BufReader::new(open(&raw_path)?), spec.size, &mut out)?;
                out.flush().map_err(io_err(&path))?;
                path
            }
            DiskFormat::Vhd => {
                let path = work_dir.join("disk.vhd");
                let mut out = BufWriter::new(create(&path)?);
                io::copy(&mut open(&raw_path)?, &mut out).map_err(io_err(&path))?;
                let footer = vhd::footer(spec.size, epoch, disk_guid.to_be());
                out.write_all(&footer).map_err(io_err(&path))?;
                out.flush().map_err(io_err(&path))?;
                path
            }
            DiskFormat::Gce => {
                let (digest, size) = hash_file(&raw_path)?;
                let mut tree = Tree::new();
                let content = Content::Host { path: raw_path.clone(), size, digest };
                let entry = Entry { kind: EntryKind::File(content), meta: Meta::root(0o644) };
                tree.insert(ImagePath::parse("disk.raw")?, entry)?;
                let blob = write_layer(&tree, epoch.0, &Compression::GZIP, threads, work_dir)?;
                let path = work_dir.join("disk.tar.gz");
                std::fs::rename(&blob.path, &path).map_err(io_err(&path))?;
                path
            }
            DiskFormat::Initramfs => {
                let cpio_path = work_dir.join("initramfs.cpio");
                let mut cpio = BufWriter::new(create(&cpio_path)?);
                write_cpio(&rootfs, epoch, &mut cpio)?;
                cpio.flush().map_err(io_err(&cpio_path))?;
                drop(cpio);
                let path = work_dir.join("initramfs.cpio.gz");
                let input = BufReader::new(open(&cpio_path)?);
                let mut out = compress(&Compression::GZIP, threads, input, create(&path)?)?;
                out.flush().map_err(io_err(&path))?;
                let _ = std::fs::remove_file(&cpio_path);
                path
            }
        };
        let (digest, size) = hash_file(&path)?;
        let mut descriptor = Descriptor::new(media_type_of(*format), digest, size);
        let title = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        descriptor.annotations.insert("org.opencontainers.image.title".into(), title.into());
        files.push(DiskFile { format: *format, path, descriptor });
    }
    // Intermediate files are not outputs; failing to remove them is harmless.
    let _ = std::fs::remove_file(&erofs_path);
    let _ = std::fs::remove_file(&verity_path);
    if !spec.formats.contains(&DiskFormat::Raw) {
        let _ = std::fs::remove_file(&raw_path);
    }

    let empty_config = JsonBlob {
        descriptor: Descriptor::new(
            media_type::EMPTY,
            Digest::of(kiln_oci::image::EMPTY_JSON),
            kiln_oci::image::EMPTY_JSON.len() as u64,
        ),
        bytes: kiln_oci::image::EMPTY_JSON.to_vec(),
    };
    let mut annotations = BTreeMap::new();
    if let Some(v) = &verity {
        annotations.insert(ROOT_HASH_ANNOTATION.to_string(), hex(&v.root_hash));
    }
    let layers = files.iter().map(|f| f.descriptor.clone()).collect();
    let manifest = ImageManifest::artifact(DISK_ARTIFACT, layers, subject, annotations.clone());
    let bytes = kiln_oci::to_canonical_json(&manifest)?;
    let mut descriptor =
        Descriptor::new(media_type::IMAGE_MANIFEST, Digest::of(&bytes), bytes.len() as u64);
    descriptor.artifact_type = Some(DISK_ARTIFACT.to_string());
    descriptor.annotations = annotations;
    Ok(DiskOutput {
        files,
        manifest: JsonBlob { descriptor, bytes },
        empty_config,
        root_hash: verity.map(|v| v.root_hash),
    })
}

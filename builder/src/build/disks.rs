//! The `[disk]` outputs of a build: the flattened root filesystem as erofs, squashfs or ext4, an
//! optional dm-verity hash partition and FAT ESP, a GPT disk, and that disk as raw, qcow2, fixed
//! VHD and GCE files, and an initramfs, described by an OCI 1.1 artifact manifest whose subject
//! is the image manifest.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kiln_compress::{compress, Compression, CompressionError};
use kiln_disk::cpio::{write_cpio, CpioError};
use kiln_disk::erofs::{self, write_erofs, ErofsError, ErofsPlan};
use kiln_disk::ext4::{write_ext4, Ext4Error};
use kiln_disk::fat::{write_fat, FatError};
use kiln_disk::gpt::{
    backup_offset, derive_guid, gpt_layout, partition_offset, write_gpt, Arch, GptError,
    PartitionData, SparseFile,
};
use kiln_disk::layout::{
    content_ranges, partitions, DiskLayout, DiskPlan, EspImage, Guids, RootFs,
};
use kiln_disk::partition_file::PartitionFile;
use kiln_disk::qcow2::{write_qcow2, Qcow2Error, Qcow2Layout, Qcow2Stream};
use kiln_disk::squashfs::{write_squashfs, SquashfsError};
use kiln_disk::verity::{
    self, salt_from, write_verity, VerityError, VerityHasher, VerityTee, VerityTree,
};
use kiln_disk::vhd;
use kiln_oci::{media_type, Descriptor, Digest, ImageManifest};
use kiln_tree::host_file::HostFile;
use kiln_tree::image_path::{ImagePath, ImagePathError};
use kiln_tree::tree::{Content, Entry, EntryKind, Meta, Tree, TreeError};
use kiln_tree::Epoch;

use crate::build::hashed_file::{hash_file, write_hashed, HashedFileError};
use crate::image::JsonBlob;
use crate::layer::{write_layer, LayerError};
use crate::recipe::{DiskFormat, DiskSpec, EspSpec};
use crate::rootfs::RootfsError;

/// artifactType of the disk images attached to an image.
pub const DISK_ARTIFACT: &str = "application/vnd.kiln.disk.v1";
/// Annotation carrying the dm-verity root hash (hex) on the artifact manifest.
pub const ROOT_HASH_ANNOTATION: &str = "dev.kiln.disk.verity.root-hash";

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

/// Turns an I/O error on `path` into a [`DiskError`].
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io { path, source }
}

fn create(path: &Path) -> Result<File, DiskError> {
    File::create(path).map_err(io_err(path))
}

fn open(path: &Path) -> Result<File, DiskError> {
    File::open(path).map_err(io_err(path))
}

/// The root partition's filesystem image.
struct RootImage {
    size: u64,
    uuid: [u8; 16],
    /// A scratch file holding it, or `None` when it was written straight into the raw disk.
    file: Option<PathBuf>,
    /// Its dm-verity hashes, when they were taken as it was written.
    verity: Option<VerityHasher>,
}

/// Writes `rootfs` as the filesystem `kind`: erofs and squashfs straight into the raw disk
/// at `offset`, ext4 (made by mke2fs) into a scratch file in `work_dir`. With `verity`, an
/// erofs root (written front to back, its UUID known first) is hashed as it is written.
fn write_root(
    kind: RootFs,
    rootfs: &Tree,
    epoch: Epoch,
    (threads, verity): (usize, bool),
    work_dir: &Path,
    raw: (&Path, u64),
) -> Result<RootImage, DiskError> {
    let (raw_path, offset) = raw;
    let in_raw = || -> Result<PartitionFile, DiskError> {
        let file = OpenOptions::new().write(true).open(raw_path).map_err(io_err(raw_path))?;
        PartitionFile::new(file, offset).map_err(io_err(raw_path))
    };
    let image = |size, uuid| RootImage { size, uuid, file: None, verity: None };
    match kind {
        RootFs::Erofs if verity => {
            let salt = salt_from(&erofs::volume_uuid(rootfs, epoch));
            let mut hasher = VerityHasher::new(salt, threads)?;
            let mut out = VerityTee { out: in_raw()?, hasher: &mut hasher };
            let root = write_erofs(rootfs, epoch, &mut out)?;
            out.flush().map_err(io_err(raw_path))?;
            // The hashes are used only if they cover exactly the image and its salt.
            let taken = hasher.data_size() == root.size && salt == salt_from(&root.uuid);
            Ok(RootImage { verity: taken.then_some(hasher), ..image(root.size, root.uuid) })
        }
        RootFs::Erofs => {
            let mut out = in_raw()?;
            let root = write_erofs(rootfs, epoch, &mut out)?;
            out.flush().map_err(io_err(raw_path))?;
            Ok(image(root.size, root.uuid))
        }
        RootFs::Squashfs => {
            let mut out = in_raw()?;
            let root = write_squashfs(rootfs, epoch, threads, &mut out)?;
            out.flush().map_err(io_err(raw_path))?;
            Ok(image(root.size, root.uuid))
        }
        RootFs::Ext4 => {
            let path = work_dir.join("root.ext4");
            let root = write_ext4(rootfs, epoch, work_dir, &path)?;
            Ok(RootImage { size: root.size, uuid: root.uuid, file: Some(path), verity: None })
        }
    }
}

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
struct EspFile {
    path: PathBuf,
    image: EspImage,
}

/// What a disk is made of and from.
struct DiskJob<'a> {
    rootfs: &'a Tree,
    layout: &'a DiskLayout,
    arch: Arch,
    epoch: Epoch,
    threads: usize,
    work_dir: &'a Path,
    esp: Option<&'a EspFile>,
}

/// A written disk.
struct WrittenDisk {
    plan: DiskPlan,
    guids: Guids,
    verity: Option<VerityTree>,
    /// The raw disk file, when the raw disk was written.
    raw: Option<PathBuf>,
    /// The qcow2 file with its digest and size, when it was written without a raw disk.
    qcow2: Option<(PathBuf, (Digest, u64))>,
}

/// Writes the raw disk (`disk.raw`, sparse): the root in place at its offset, then the GPT
/// and the other partitions around it.
fn write_raw_disk(job: &DiskJob<'_>) -> Result<WrittenDisk, DiskError> {
    let (disk, work_dir) = (job.layout, job.work_dir);
    let esp = job.esp.map(|e| &e.image);

    let raw_path = work_dir.join("disk.raw");
    create(&raw_path)?;
    let before: Vec<u64> = esp.iter().map(|e| e.size).collect();
    let root_offset = partition_offset(&before);
    let mut root = write_root(
        disk.root,
        job.rootfs,
        job.epoch,
        (job.threads, disk.verity),
        work_dir,
        (&raw_path, root_offset),
    )?;
    let root_data = || -> Result<io::Take<BufReader<File>>, DiskError> {
        let (path, from) = match &root.file {
            Some(path) => (path.as_path(), 0),
            None => (raw_path.as_path(), root_offset),
        };
        let mut file = open(path)?;
        file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
        Ok(BufReader::with_capacity(1 << 20, file).take(root.size))
    };
    let verity_path = work_dir.join("root.verity");
    let verity = if disk.verity {
        let mut out = BufWriter::new(create(&verity_path)?);
        let tree = match root.verity.take() {
            Some(hasher) => hasher.finish(&mut out)?,
            None => {
                write_verity(root_data()?, root.size, salt_from(&root.uuid), job.threads, &mut out)?
            }
        };
        out.flush().map_err(io_err(&verity_path))?;
        Some(tree)
    } else {
        None
    };
    let guids = Guids::new(verity.as_ref(), &root.uuid, esp.map(|e| e.guid));
    let plan = DiskPlan::new(disk.size, esp, root.size, verity.as_ref().map(|v| v.hash_size))?;

    {
        // What is not written in place (the root, for erofs and squashfs) is copied in.
        let mut esp_data = match job.esp {
            Some(esp) => Some(BufReader::new(open(&esp.path)?)),
            None => None,
        };
        let mut root_file = match &root.file {
            Some(_) => Some(root_data()?),
            None => None,
        };
        let mut hash_data = match &verity {
            Some(_) => Some(BufReader::new(open(&verity_path)?)),
            None => None,
        };
        let mut parts = partitions(&disk.labels, job.arch, esp, root.size, verity.as_ref(), &guids);
        let root_at = usize::from(esp.is_some());
        let sources: [(Option<&mut dyn Read>, usize); 3] = [
            (esp_data.as_mut().map(|r| r as &mut dyn Read), 0),
            (root_file.as_mut().map(|r| r as &mut dyn Read), root_at),
            (hash_data.as_mut().map(|r| r as &mut dyn Read), root_at + 1),
        ];
        for (source, at) in sources {
            if let (Some(source), Some(part)) = (source, parts.get_mut(at)) {
                part.data = PartitionData::Read(source);
            }
        }
        let file = OpenOptions::new().write(true).open(&raw_path).map_err(io_err(&raw_path))?;
        let mut out = SparseFile::new(file);
        write_gpt(disk.size, guids.disk, &mut parts, &mut out)?;
        out.finish(disk.size).map_err(io_err(&raw_path))?;
    }
    // Intermediate files are not outputs.
    if let Some(path) = &root.file {
        crate::scratch::remove(path);
    }
    crate::scratch::remove(&verity_path);
    Ok(WrittenDisk { plan, guids, verity, raw: Some(raw_path), qcow2: None })
}

/// The root filesystem to stream into a disk.
enum RootSource<'a> {
    /// Written as the disk is (its size and UUID are known first).
    Erofs(ErofsPlan<'a>),
    /// Already written to a scratch file.
    File { path: PathBuf, size: u64, uuid: [u8; 16] },
}

/// Writes the disk as `disk.qcow2` front to back while its content is made, with no raw disk:
/// the root (hashed for dm-verity on the way), the hash tree, the backup GPT, the ESP and the
/// primary GPT, each where the plan laid out its clusters.
fn write_qcow2_disk(job: &DiskJob<'_>) -> Result<WrittenDisk, DiskError> {
    let (disk, work_dir) = (job.layout, job.work_dir);
    let esp = job.esp.map(|e| &e.image);
    let root = match disk.root {
        RootFs::Erofs => RootSource::Erofs(ErofsPlan::new(job.rootfs, job.epoch)?),
        RootFs::Squashfs => {
            let path = work_dir.join("root.squashfs");
            let mut out =
                BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io_err(&path))?);
            let image = write_squashfs(job.rootfs, job.epoch, job.threads, &mut out)?;
            out.flush().map_err(io_err(&path))?;
            RootSource::File { path, size: image.size, uuid: image.uuid }
        }
        RootFs::Ext4 => {
            let path = work_dir.join("root.ext4");
            let image = write_ext4(job.rootfs, job.epoch, work_dir, &path)?;
            RootSource::File { path, size: image.size, uuid: image.uuid }
        }
    };
    let (root_size, root_uuid) = match &root {
        RootSource::Erofs(plan) => (plan.size(), plan.uuid()),
        RootSource::File { size, uuid, .. } => (*size, *uuid),
    };
    let scratch = match &root {
        RootSource::File { path, .. } => Some(path.clone()),
        RootSource::Erofs(_) => None,
    };
    let hash_size = disk.verity.then(|| verity::hash_size(root_size));
    let plan = DiskPlan::new(disk.size, esp, root_size, hash_size)?;
    let layout = Qcow2Layout::new(disk.size, &plan.extents)?;

    let path = work_dir.join("disk.qcow2");
    let written = write_hashed(&path, |out| {
        let mut q = Qcow2Stream::new(&layout, out)?;
        q.seek(plan.root_offset);
        let salt = salt_from(&root_uuid);
        let mut hasher = disk.verity.then(|| VerityHasher::new(salt, job.threads)).transpose()?;
        {
            let mut sink: Box<dyn Write> = match &mut hasher {
                Some(hasher) => Box::new(VerityTee { out: &mut q, hasher }),
                None => Box::new(&mut q),
            };
            match root {
                RootSource::Erofs(plan) => {
                    plan.write(&mut sink)?;
                }
                RootSource::File { path, size, .. } => {
                    let file = File::open(&path).map_err(io_err(&path))?;
                    let copied = io::copy(
                        &mut BufReader::with_capacity(1 << 20, file).take(size),
                        &mut sink,
                    )
                    .map_err(io_err(&path))?;
                    if copied != size {
                        let short = io::Error::from(io::ErrorKind::UnexpectedEof);
                        return Err(io_err(&path)(short));
                    }
                }
            }
            sink.flush().map_err(io_err(&path))?;
        }
        let verity = match (hasher, plan.verity_offset) {
            (Some(hasher), Some(at)) => {
                q.seek(at);
                Some(hasher.finish(&mut q)?)
            }
            _ => None,
        };
        let guids = Guids::new(verity.as_ref(), &root_uuid, esp.map(|e| e.guid));
        let parts = partitions(&disk.labels, job.arch, esp, root_size, verity.as_ref(), &guids);
        let gpt = gpt_layout(disk.size, guids.disk, &parts)?;
        let write = |q: &mut Qcow2Stream<'_, _>, at, bytes: &[u8]| {
            q.seek(at);
            q.write_all(bytes).map_err(io_err(&path))
        };
        write(&mut q, backup_offset(disk.size), &gpt.backup)?;
        if let (Some(esp), Some(at)) = (job.esp, plan.esp_offset) {
            let mut file = File::open(&esp.path).map_err(io_err(&esp.path))?;
            let mut buf = Vec::new();
            for range in &esp.image.content {
                file.seek(SeekFrom::Start(range.start)).map_err(io_err(&esp.path))?;
                buf.resize((range.end - range.start) as usize, 0);
                file.read_exact(&mut buf).map_err(io_err(&esp.path))?;
                write(&mut q, at + range.start, &buf)?;
            }
        }
        write(&mut q, 0, &gpt.primary)?;
        q.finish()?;
        Ok((guids, verity))
    });
    if let Some(path) = &scratch {
        // An intermediate file, not an output.
        crate::scratch::remove(path);
    }
    let ((guids, verity), hashed) = written?;
    Ok(WrittenDisk { plan, guids, verity, raw: None, qcow2: Some((path, hashed)) })
}

/// Makes the disks of `spec` for `arch` from the flattened root filesystem `rootfs` in
/// `work_dir`, for the image manifest `subject`.
pub fn make_disks(
    rootfs: &Tree,
    spec: &DiskSpec,
    arch: Arch,
    epoch: Epoch,
    threads: usize,
    work_dir: &Path,
    subject: &Descriptor,
) -> Result<DiskOutput, DiskError> {
    // The ESP comes first so that a missing boot file is reported before the long work.
    let esp = match &spec.esp {
        Some(esp_spec) => {
            let tree = esp_tree(rootfs, esp_spec)?;
            let seed = esp_seed(&tree);
            let path = work_dir.join("esp.fat");
            let mut out = BufWriter::new(create(&path)?);
            let volume_id = u32::from_be_bytes([
                seed.as_bytes()[0],
                seed.as_bytes()[1],
                seed.as_bytes()[2],
                seed.as_bytes()[3],
            ]);
            write_fat(&tree, esp_spec.size, epoch, volume_id, "ESP", &mut out)?;
            out.flush().map_err(io_err(&path))?;
            drop(out);
            let content = content_ranges(&path, esp_spec.size).map_err(io_err(&path))?;
            let guid = derive_guid("esp", seed.as_bytes());
            Some(EspFile { path, image: EspImage { size: esp_spec.size, guid, content } })
        }
        None => None,
    };

    // An initramfs alone needs no disk; without a raw output the raw disk is never written
    // (the qcow2 is made directly).
    let raw_wanted = spec
        .formats
        .iter()
        .any(|f| matches!(f, DiskFormat::Raw | DiskFormat::Vhd | DiskFormat::Gce));
    let layout = spec.layout();
    let job =
        DiskJob { rootfs, layout: &layout, arch, epoch, threads, work_dir, esp: esp.as_ref() };
    let mut disk = if raw_wanted {
        Some(write_raw_disk(&job)?)
    } else if spec.formats.contains(&DiskFormat::Qcow2) {
        Some(write_qcow2_disk(&job)?)
    } else {
        None
    };
    if let Some(esp) = &esp {
        // An intermediate file, not an output.
        crate::scratch::remove(&esp.path);
    }
    let raw_path = disk.as_ref().and_then(|d| d.raw.clone());
    let mut direct_qcow2 = disk.as_mut().and_then(|d| d.qcow2.take());
    let written = |format: DiskFormat| disk.as_ref().ok_or(DiskError::Missing(format));
    // The raw disk is hashed only where it is an output itself (raw, or inside the GCE tar).
    let raw_hashed = match &raw_path {
        Some(path)
            if spec.formats.iter().any(|f| matches!(f, DiskFormat::Raw | DiskFormat::Gce)) =>
        {
            Some(hash_file(path)?)
        }
        _ => None,
    };

    let mut files = Vec::new();
    for format in &spec.formats {
        let (path, (digest, size)) = match (format, &raw_path) {
            (DiskFormat::Qcow2, None) => direct_qcow2.take().ok_or(DiskError::Missing(*format))?,
            (DiskFormat::Qcow2, Some(raw_path)) => {
                let path = work_dir.join("disk.qcow2");
                let layout = Qcow2Layout::new(spec.size, &written(*format)?.plan.extents)?;
                let raw_data = BufReader::new(open(raw_path)?);
                let ((), hashed) = write_hashed::<_, DiskError, _>(&path, |out| {
                    Ok(write_qcow2(&layout, raw_data, out).map(drop)?)
                })?;
                (path, hashed)
            }
            (DiskFormat::Raw, Some(raw_path)) => {
                (raw_path.clone(), raw_hashed.map_or_else(|| hash_file(raw_path), Ok)?)
            }
            (DiskFormat::Vhd, Some(raw_path)) => {
                let path = work_dir.join("disk.vhd");
                let mut raw_data = open(raw_path)?;
                let ((), hashed) = write_hashed(&path, |out| {
                    io::copy(&mut raw_data, out).map_err(io_err(&path))?;
                    let footer =
                        vhd::footer(spec.size, epoch, written(*format)?.guids.disk.to_be());
                    out.write_all(&footer).map_err(io_err(&path))
                })?;
                (path, hashed)
            }
            (DiskFormat::Gce, Some(raw_path)) => {
                let (digest, size) = raw_hashed.map_or_else(|| hash_file(raw_path), Ok)?;
                let mut tree = Tree::new();
                let content = Content::Host(HostFile::new(raw_path.clone(), size, digest));
                let entry = Entry { kind: EntryKind::File(content), meta: Meta::root(0o644) };
                tree.insert(ImagePath::parse("disk.raw")?, entry)?;
                let blob = write_layer(&tree, epoch, &Compression::GZIP, threads, work_dir)?;
                let path = work_dir.join("disk.tar.gz");
                std::fs::rename(&blob.path, &path).map_err(io_err(&path))?;
                (path, (blob.digest, blob.size))
            }
            (DiskFormat::Raw | DiskFormat::Vhd | DiskFormat::Gce, None) => {
                return Err(DiskError::Missing(*format))
            }
            (DiskFormat::Initramfs, _) => {
                let cpio_path = work_dir.join("initramfs.cpio");
                let mut cpio = BufWriter::new(create(&cpio_path)?);
                write_cpio(rootfs, epoch, &mut cpio)?;
                cpio.flush().map_err(io_err(&cpio_path))?;
                drop(cpio);
                let path = work_dir.join("initramfs.cpio.gz");
                let input = BufReader::new(open(&cpio_path)?);
                let ((), hashed) = write_hashed::<_, DiskError, _>(&path, |out| {
                    Ok(compress(&Compression::GZIP, threads, input, out).map(drop)?)
                })?;
                crate::scratch::remove(&cpio_path);
                (path, hashed)
            }
        };
        let mut descriptor = Descriptor::new(media_type_of(*format), digest, size);
        let title = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        descriptor.annotations.insert("org.opencontainers.image.title".into(), title.into());
        files.push(DiskFile { format: *format, path, descriptor });
    }
    if let Some(path) = &raw_path {
        if !spec.formats.contains(&DiskFormat::Raw) {
            crate::scratch::remove(path);
        }
    }
    let verity = disk.and_then(|d| d.verity);

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
        annotations.insert(ROOT_HASH_ANNOTATION.to_string(), v.root_hash_hex());
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

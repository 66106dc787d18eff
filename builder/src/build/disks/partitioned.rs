//! The GPT disk: the root filesystem, its dm-verity hashes and the ESP laid out as partitions,
//! written as a sparse raw disk or straight as qcow2.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kiln_disk::erofs::{self, write_erofs, ErofsPlan};
use kiln_disk::ext4::write_ext4;
use kiln_disk::gpt::{
    backup_offset, gpt_layout, partition_offset, write_gpt, Arch, PartitionData, SparseFile,
};
use kiln_disk::layout::{partitions, DiskLayout, DiskPlan, Guids, RootFs};
use kiln_disk::partition_file::PartitionFile;
use kiln_disk::qcow2::{Qcow2Layout, Qcow2Stream};
use kiln_disk::squashfs::write_squashfs;
use kiln_disk::verity::{self, salt_from, write_verity, VerityHasher, VerityTee, VerityTree};
use kiln_tree::tree::Tree;
use kiln_tree::Epoch;

use crate::build::disks::error::{create, io_err, open, DiskError};
use crate::build::disks::esp::EspFile;
use crate::build::disks::hashed_file::{write_hashed, Hashed};

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

/// What a disk is made of and from.
pub(super) struct DiskJob<'a> {
    pub rootfs: &'a Tree,
    pub layout: &'a DiskLayout,
    pub arch: Arch,
    pub epoch: Epoch,
    pub threads: usize,
    pub work_dir: &'a Path,
    pub esp: Option<&'a EspFile>,
}

/// A written disk.
pub(super) struct WrittenDisk {
    pub plan: DiskPlan,
    pub guids: Guids,
    pub verity: Option<VerityTree>,
    /// The raw disk file, when the raw disk was written.
    pub raw: Option<PathBuf>,
    /// The qcow2 file with its digest and size, when it was written without a raw disk.
    pub qcow2: Option<(PathBuf, Hashed)>,
}

/// Writes the raw disk (`disk.raw`, sparse): the root in place at its offset, then the GPT
/// and the other partitions around it.
pub(super) fn write_raw_disk(job: &DiskJob<'_>) -> Result<WrittenDisk, DiskError> {
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
pub(super) fn write_qcow2_disk(job: &DiskJob<'_>) -> Result<WrittenDisk, DiskError> {
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

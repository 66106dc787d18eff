//! The `[disk]` outputs of a build: the flattened root filesystem as erofs, squashfs or ext4, an
//! optional dm-verity hash partition and FAT ESP, a GPT disk, and that disk as raw, qcow2, fixed
//! VHD and GCE files, and an initramfs, described by an OCI 1.1 artifact manifest whose subject
//! is the image manifest.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use kiln_oci::{media_type, Descriptor, Digest, HashingReader, ImageManifest, Sha256};

use crate::compress::{compress, Compression, CompressionError};
use crate::disk::cpio::{write_cpio, CpioError};
use crate::disk::erofs::{self, write_erofs, ErofsError};
use crate::disk::ext4::{write_ext4, Ext4Error};
use crate::disk::fat::{write_fat, FatError};
use crate::disk::gpt::{
    derive_guid, partition_offset, write_gpt, Arch, GptError, Guid, Partition, PartitionData,
    PartitionType, SparseFile,
};
use crate::disk::qcow2::{write_qcow2, Qcow2Error};
use crate::disk::squashfs::{write_squashfs, SquashfsError};
use crate::disk::verity::{salt_from, write_verity, VerityError, VerityHasher};
use crate::disk::vhd;
use crate::epoch::Epoch;
use crate::image::JsonBlob;
use crate::image_path::{ImagePath, ImagePathError};
use crate::layer::{write_layer, LayerError};
use crate::recipe::{DiskFormat, DiskSpec, EspSpec, RootFs};
use crate::rootfs::RootfsError;
use crate::tree::{Content, Entry, EntryKind, Meta, Tree, TreeError};

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
    #[error("the thread hashing a disk file stopped unexpectedly")]
    HashThread,
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

/// The sha256 and size of a file.
fn hash_file(path: &Path) -> Result<(Digest, u64), DiskError> {
    let io_err = |source| DiskError::Io { path: path.to_path_buf(), source };
    let mut reader = HashingReader::new(BufReader::new(File::open(path).map_err(io_err)?));
    io::copy(&mut reader, &mut io::sink()).map_err(io_err)?;
    Ok(reader.finish())
}

/// Creates the file at `path` and fills it through `write`, hashing every byte written on a
/// second thread (so writing and hashing use both cores): returns the file's sha256 and size
/// without reading it back.
fn write_hashed<F>(path: &Path, write: F) -> Result<(Digest, u64), DiskError>
where
    F: FnOnce(&mut dyn Write) -> Result<(), DiskError>,
{
    let io_err = |source| DiskError::Io { path: path.to_path_buf(), source };
    let file = BufWriter::with_capacity(HASH_CHUNK, File::create(path).map_err(io_err)?);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let hasher = scope.spawn(move || {
            let (mut h, mut len) = (Sha256::new(), 0u64);
            for chunk in rx {
                h.update(&chunk);
                len += chunk.len() as u64;
            }
            (h.finish(), len)
        });
        let mut tee = Tee { file, tx, pending: Vec::with_capacity(HASH_CHUNK) };
        let written = write(&mut tee).and_then(|()| tee.finish().map_err(io_err));
        // Dropping the sender (with `tee`) ends the hashing thread.
        drop(tee);
        let hashed = hasher.join().map_err(|_| DiskError::HashThread);
        written.and(hashed)
    })
}

/// Bytes handed to the hashing thread at a time.
const HASH_CHUNK: usize = 1 << 20;

/// Writes to a file and passes the same bytes, in chunks, to a hashing thread.
struct Tee {
    file: BufWriter<File>,
    tx: mpsc::SyncSender<Vec<u8>>,
    pending: Vec<u8>,
}

impl Tee {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(HASH_CHUNK));
        self.tx.send(chunk).map_err(|_| io::Error::other("the hashing thread stopped"))
    }

    /// Hands over what is left and flushes the file.
    fn finish(&mut self) -> io::Result<()> {
        self.send()?;
        self.file.flush()
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= HASH_CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// A writer that also feeds what it writes to a dm-verity hasher.
struct VerityTee<'h, W> {
    out: W,
    hasher: &'h mut VerityHasher,
}

impl<W: Write> Write for VerityTee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A file seen from byte `base` on: what a filesystem writer writes at its position 0 lands at
/// the partition's offset of the raw disk.
struct OffsetFile {
    file: BufWriter<File>,
    base: u64,
}

impl Write for OffsetFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for OffsetFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let at = match pos {
            SeekFrom::Start(n) => self.file.seek(SeekFrom::Start(self.base + n))?,
            SeekFrom::Current(d) => self.file.seek(SeekFrom::Current(d))?,
            SeekFrom::End(_) => {
                return Err(io::Error::other("a partition has no end to seek from"))
            }
        };
        at.checked_sub(self.base).ok_or_else(|| io::Error::other("seek before the partition"))
    }
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
    let io_err = |source| DiskError::Io { path: raw_path.to_path_buf(), source };
    let in_raw = || -> Result<OffsetFile, DiskError> {
        let mut file = OpenOptions::new().write(true).open(raw_path).map_err(io_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        Ok(OffsetFile { file: BufWriter::with_capacity(1 << 20, file), base: offset })
    };
    let image = |size, uuid| RootImage { size, uuid, file: None, verity: None };
    match kind {
        RootFs::Erofs if verity => {
            let salt = salt_from(&erofs::volume_uuid(rootfs, epoch));
            let mut hasher = VerityHasher::new(salt, threads);
            let mut out = VerityTee { out: in_raw()?, hasher: &mut hasher };
            let root = write_erofs(rootfs, epoch, &mut out)?;
            out.flush().map_err(io_err)?;
            // The hashes are used only if they cover exactly the image and its salt.
            let taken = hasher.data_size() == root.size && salt == salt_from(&root.uuid);
            Ok(RootImage { verity: taken.then_some(hasher), ..image(root.size, root.uuid) })
        }
        RootFs::Erofs => {
            let mut out = in_raw()?;
            let root = write_erofs(rootfs, epoch, &mut out)?;
            out.flush().map_err(io_err)?;
            Ok(image(root.size, root.uuid))
        }
        RootFs::Squashfs => {
            let mut out = in_raw()?;
            let root = write_squashfs(rootfs, epoch, threads, &mut out)?;
            out.flush().map_err(io_err)?;
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
            let digest = match content {
                Content::Host { digest, .. } => *digest,
                Content::Bytes(bytes) => Digest::of(bytes),
            };
            listing.extend_from_slice(digest.as_bytes());
        }
        listing.push(b'\n');
    }
    Digest::of(&listing)
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
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io { path, source }
    };
    let create = |path: &Path| File::create(path).map_err(io_err(path));
    let open = |path: &Path| File::open(path).map_err(io_err(path));

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
            Some((path, esp_spec.size, derive_guid("esp", seed.as_bytes())))
        }
        None => None,
    };

    // The root goes straight to its place in the raw disk (after the ESP, if any); the GPT
    // is written around it afterwards.
    let raw_path = work_dir.join("disk.raw");
    create(&raw_path)?;
    let before: Vec<u64> = esp.iter().map(|(_, size, _)| *size).collect();
    let root_offset = partition_offset(&before);
    let mut root = write_root(
        spec.root,
        rootfs,
        epoch,
        (threads, spec.verity),
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
    let verity = if spec.verity {
        let mut out = BufWriter::new(create(&verity_path)?);
        let tree = match root.verity.take() {
            Some(hasher) => hasher.finish(&mut out)?,
            None => {
                write_verity(root_data()?, root.size, salt_from(&root.uuid), threads, &mut out)?
            }
        };
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
        None => (derive_guid("root", &root.uuid), derive_guid("root-verity", &root.uuid)),
    };
    let mut seed = root_guid.0.to_vec();
    seed.extend_from_slice(&verity_guid.0);
    if let Some((_, _, esp_guid)) = &esp {
        seed.extend_from_slice(&esp_guid.0);
    }
    let disk_guid = derive_guid("disk", &seed);

    {
        let label = |kind: PartitionType, chosen: &Option<String>| {
            chosen.clone().unwrap_or_else(|| kind.default_label())
        };
        let mut parts = Vec::new();
        let mut esp_data;
        if let Some((path, size, guid)) = &esp {
            esp_data = BufReader::new(open(path)?);
            parts.push(Partition {
                kind: PartitionType::Esp,
                guid: *guid,
                label: label(PartitionType::Esp, &spec.labels.esp),
                size: *size,
                data: PartitionData::Read(&mut esp_data),
            });
        }
        let mut root_file;
        let root_part = match &root.file {
            Some(_) => {
                root_file = root_data()?;
                PartitionData::Read(&mut root_file)
            }
            None => PartitionData::InPlace,
        };
        parts.push(Partition {
            kind: PartitionType::Root(arch),
            guid: root_guid,
            label: label(PartitionType::Root(arch), &spec.labels.root),
            size: root.size,
            data: root_part,
        });
        let mut hash_data;
        if let Some(v) = &verity {
            hash_data = BufReader::new(open(&verity_path)?);
            parts.push(Partition {
                kind: PartitionType::RootVerity(arch),
                guid: verity_guid,
                label: label(PartitionType::RootVerity(arch), &spec.labels.verity),
                size: v.hash_size,
                data: PartitionData::Read(&mut hash_data),
            });
        }
        let file = OpenOptions::new().write(true).open(&raw_path).map_err(io_err(&raw_path))?;
        let mut out = SparseFile::new(file);
        write_gpt(spec.size, disk_guid, &mut parts, &mut out)?;
        out.finish(spec.size).map_err(io_err(&raw_path))?;
    }
    // The raw disk is hashed only where it is an output itself (raw, or inside the GCE tar).
    let raw_hashed = if spec.formats.iter().any(|f| matches!(f, DiskFormat::Raw | DiskFormat::Gce))
    {
        Some(hash_file(&raw_path)?)
    } else {
        None
    };
    let raw_digest = || raw_hashed.map_or_else(|| hash_file(&raw_path), Ok);

    let mut files = Vec::new();
    for format in &spec.formats {
        let (path, (digest, size)) =
            match format {
                DiskFormat::Raw => (raw_path.clone(), raw_digest()?),
                DiskFormat::Qcow2 => {
                    let path = work_dir.join("disk.qcow2");
                    let raw_data = BufReader::new(open(&raw_path)?);
                    let hashed = write_hashed(&path, |out| {
                        Ok(write_qcow2(raw_data, spec.size, out).map(drop)?)
                    })?;
                    (path, hashed)
                }
                DiskFormat::Vhd => {
                    let path = work_dir.join("disk.vhd");
                    let mut raw_data = open(&raw_path)?;
                    let hashed = write_hashed(&path, |out| {
                        io::copy(&mut raw_data, out).map_err(io_err(&path))?;
                        let footer = vhd::footer(spec.size, epoch, disk_guid.to_be());
                        out.write_all(&footer).map_err(io_err(&path))
                    })?;
                    (path, hashed)
                }
                DiskFormat::Gce => {
                    let (digest, size) = raw_digest()?;
                    let mut tree = Tree::new();
                    let content = Content::Host { path: raw_path.clone(), size, digest };
                    let entry = Entry { kind: EntryKind::File(content), meta: Meta::root(0o644) };
                    tree.insert(ImagePath::parse("disk.raw")?, entry)?;
                    let blob = write_layer(&tree, epoch.0, &Compression::GZIP, threads, work_dir)?;
                    let path = work_dir.join("disk.tar.gz");
                    std::fs::rename(&blob.path, &path).map_err(io_err(&path))?;
                    (path, (blob.digest, blob.size))
                }
                DiskFormat::Initramfs => {
                    let cpio_path = work_dir.join("initramfs.cpio");
                    let mut cpio = BufWriter::new(create(&cpio_path)?);
                    write_cpio(rootfs, epoch, &mut cpio)?;
                    cpio.flush().map_err(io_err(&cpio_path))?;
                    drop(cpio);
                    let path = work_dir.join("initramfs.cpio.gz");
                    let input = BufReader::new(open(&cpio_path)?);
                    let hashed = write_hashed(&path, |out| {
                        Ok(compress(&Compression::GZIP, threads, input, out).map(drop)?)
                    })?;
                    let _ = std::fs::remove_file(&cpio_path);
                    (path, hashed)
                }
            };
        let mut descriptor = Descriptor::new(media_type_of(*format), digest, size);
        let title = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        descriptor.annotations.insert("org.opencontainers.image.title".into(), title.into());
        files.push(DiskFile { format: *format, path, descriptor });
    }
    // Intermediate files are not outputs; failing to remove them is harmless.
    if let Some(path) = &root.file {
        let _ = std::fs::remove_file(path);
    }
    if let Some((path, _, _)) = &esp {
        let _ = std::fs::remove_file(path);
    }
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

//! One platform's disks made from the flattened root filesystem: the ESP, the GPT disk, each
//! requested format, and the artifact manifest describing them.

use std::path::Path;

use kiln_disk::gpt::Arch;
use kiln_oci::Descriptor;
use kiln_tree::tree::Tree;
use kiln_tree::Epoch;

use crate::build::disks::artifact::{artifact_manifest, media_type_of, DiskFile};
use crate::build::disks::error::DiskError;
use crate::build::disks::esp::write_esp;
use crate::build::disks::formats::{disk_file, Sources};
use crate::build::disks::hashed_file::hash_file;
use crate::build::disks::partitioned::{write_qcow2_disk, write_raw_disk, DiskJob};
use crate::image::JsonBlob;
use crate::recipe::{DiskFormat, DiskSpec};

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
        Some(esp_spec) => Some(write_esp(rootfs, esp_spec, epoch, work_dir)?),
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
    // The raw disk is hashed only where it is an output itself (raw, or inside the GCE tar).
    let raw_hashed = match &raw_path {
        Some(path)
            if spec.formats.iter().any(|f| matches!(f, DiskFormat::Raw | DiskFormat::Gce)) =>
        {
            Some(hash_file(path)?)
        }
        _ => None,
    };

    let sources = Sources {
        rootfs,
        spec,
        epoch,
        threads,
        work_dir,
        disk: disk.as_ref(),
        raw: raw_path.as_deref(),
        raw_hashed,
    };
    let mut files = Vec::new();
    for format in &spec.formats {
        let (path, (digest, size)) = disk_file(*format, &sources, &mut direct_qcow2)?;
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
    let (manifest, empty_config) = artifact_manifest(&files, subject, verity.as_ref())?;
    Ok(DiskOutput { files, manifest, empty_config, root_hash: verity.map(|v| v.root_hash) })
}

//! The OCI artifact manifest that describes a platform's disk files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_disk::verity::VerityTree;
use kiln_oci::disk_artifact::{ARTIFACT_TYPE, ROOT_HASH_ANNOTATION};
use kiln_oci::{media_type, Descriptor, Digest, ImageManifest};

use crate::image::JsonBlob;
use crate::recipe::DiskFormat;

/// One disk file ready to store.
#[derive(Clone, Debug)]
pub struct DiskFile {
    pub format: DiskFormat,
    pub path: PathBuf,
    pub descriptor: Descriptor,
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

/// The artifact manifest naming `files`, with `subject` the image manifest and the dm-verity
/// root hash as an annotation when there is one, and its empty config.
pub(super) fn artifact_manifest(
    files: &[DiskFile],
    subject: &Descriptor,
    verity: Option<&VerityTree>,
) -> Result<(JsonBlob, JsonBlob), serde_json::Error> {
    let empty_config = JsonBlob {
        descriptor: Descriptor::new(
            media_type::EMPTY,
            Digest::of(kiln_oci::image::EMPTY_JSON),
            kiln_oci::image::EMPTY_JSON.len() as u64,
        ),
        bytes: kiln_oci::image::EMPTY_JSON.to_vec(),
    };
    let mut annotations = BTreeMap::new();
    if let Some(v) = verity {
        annotations.insert(ROOT_HASH_ANNOTATION.to_string(), v.root_hash_hex());
    }
    let layers = files.iter().map(|f| f.descriptor.clone()).collect();
    let manifest = ImageManifest::artifact(ARTIFACT_TYPE, layers, subject, annotations.clone());
    let bytes = kiln_oci::to_canonical_json(&manifest)?;
    let mut descriptor =
        Descriptor::new(media_type::IMAGE_MANIFEST, Digest::of(&bytes), bytes.len() as u64);
    descriptor.artifact_type = Some(ARTIFACT_TYPE.to_string());
    descriptor.annotations = annotations;
    Ok((JsonBlob { descriptor, bytes }, empty_config))
}

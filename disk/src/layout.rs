//! What a disk is to be ([`DiskLayout`]) and its plan, which every output format shares: where
//! each partition goes, which byte ranges hold content and in which order that content is made,
//! and the partition and disk GUIDs derived from it.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::Path;

use crate::gpt::{
    backup_offset, derive_guid, place, Arch, GptError, Guid, Partition, PartitionData,
    PartitionType, PRIMARY_SIZE,
};
use crate::qcow2::CLUSTER;
use crate::verity::VerityTree;

/// A GPT disk: its size, its root filesystem, whether a dm-verity hash partition follows the
/// root, and the partitions' names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskLayout {
    /// Disk size in bytes (a multiple of 512).
    pub size: u64,
    /// The root partition's filesystem.
    pub root: RootFs,
    /// Add a dm-verity hash partition for the root.
    pub verity: bool,
    /// GPT partition names; `None` keeps the default name.
    pub labels: PartitionLabels,
}

/// The filesystem of a disk's root partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RootFs {
    #[default]
    Erofs,
    Squashfs,
    Ext4,
}

impl RootFs {
    /// The name used in recipes and file names.
    pub fn name(self) -> &'static str {
        match self {
            RootFs::Erofs => "erofs",
            RootFs::Squashfs => "squashfs",
            RootFs::Ext4 => "ext4",
        }
    }
}

/// GPT partition names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionLabels {
    pub root: Option<String>,
    pub verity: Option<String>,
    pub esp: Option<String>,
}

/// The ESP as written to its scratch file.
pub struct EspImage {
    pub size: u64,
    pub guid: Guid,
    /// Byte ranges of the ESP (from its start) that hold anything but zeros.
    pub content: Vec<Range<u64>>,
}

/// The partitions' places and the disk's content ranges.
pub struct DiskPlan {
    /// Offset of the ESP (when there is one), the root and the hash partition (with verity).
    pub esp_offset: Option<u64>,
    pub root_offset: u64,
    pub verity_offset: Option<u64>,
    /// The byte ranges holding content, in the order it is made: root, hash tree, backup
    /// GPT, ESP, primary GPT (the GPTs name partitions by GUIDs hashed from the root).
    pub extents: Vec<Range<u64>>,
}

impl DiskPlan {
    /// Plans a disk of `disk_size` bytes for a root of `root_size` bytes, its hash tree of
    /// `hash_size` bytes (with verity) and the ESP; fails if they do not fit.
    pub fn new(
        disk_size: u64,
        esp: Option<&EspImage>,
        root_size: u64,
        hash_size: Option<u64>,
    ) -> Result<DiskPlan, GptError> {
        let sizes: Vec<u64> =
            esp.map(|e| e.size).into_iter().chain([root_size]).chain(hash_size).collect();
        let offsets = place(disk_size, &sizes)?;
        let esp_offset = esp.and(offsets.first().copied());
        let root_at = usize::from(esp.is_some());
        let root_offset = offsets[root_at];
        let verity_offset = hash_size.and(offsets.get(root_at + 1).copied());

        let mut extents = Vec::with_capacity(5);
        extents.push(root_offset..root_offset + root_size);
        if let (Some(at), Some(size)) = (verity_offset, hash_size) {
            extents.push(at..at + size);
        }
        extents.push(backup_offset(disk_size)..disk_size);
        if let (Some(at), Some(esp)) = (esp_offset, esp) {
            extents.extend(esp.content.iter().map(|r| at + r.start..at + r.end));
        }
        extents.push(0..PRIMARY_SIZE);
        Ok(DiskPlan { esp_offset, root_offset, verity_offset, extents })
    }
}

/// The ranges of the file at `path` (`size` bytes) that hold anything but zeros, in whole
/// qcow2 clusters.
pub fn content_ranges(path: &Path, size: u64) -> io::Result<Vec<Range<u64>>> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; CLUSTER as usize];
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(CLUSTER) as usize;
        file.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|b| *b != 0) {
            match ranges.last_mut() {
                Some(last) if last.end == at => last.end = at + n as u64,
                _ => ranges.push(at..at + n as u64),
            }
        }
        at += n as u64;
    }
    Ok(ranges)
}

/// The GUIDs of a disk's partitions and of the disk.
pub struct Guids {
    pub root: Guid,
    pub verity: Guid,
    pub disk: Guid,
}

impl Guids {
    /// As the Discoverable Partitions Specification suggests: with verity the root hash names
    /// the root (first half) and its hash partition (second half); the disk is named by its
    /// partitions.
    pub fn new(verity: Option<&VerityTree>, root_uuid: &[u8; 16], esp: Option<Guid>) -> Guids {
        let (root, verity) = match verity {
            Some(v) => {
                let mut a = [0u8; 16];
                let mut b = [0u8; 16];
                a.copy_from_slice(&v.root_hash[..16]);
                b.copy_from_slice(&v.root_hash[16..]);
                (Guid::from_be(a), Guid::from_be(b))
            }
            None => (derive_guid("root", root_uuid), derive_guid("root-verity", root_uuid)),
        };
        let mut seed = root.0.to_vec();
        seed.extend_from_slice(&verity.0);
        if let Some(esp) = esp {
            seed.extend_from_slice(&esp.0);
        }
        Guids { root, verity, disk: derive_guid("disk", &seed) }
    }
}

/// The partition table entries: ESP, root, hash partition, each with its content in place
/// (callers that copy content in set [`Partition::data`]).
pub fn partitions<'a>(
    labels: &PartitionLabels,
    arch: Arch,
    esp: Option<&EspImage>,
    root_size: u64,
    verity: Option<&VerityTree>,
    guids: &Guids,
) -> Vec<Partition<'a>> {
    let label = |kind: PartitionType, chosen: &Option<String>| {
        chosen.clone().unwrap_or_else(|| kind.default_label())
    };
    let mut parts = Vec::new();
    if let Some(esp) = esp {
        parts.push(Partition {
            kind: PartitionType::Esp,
            guid: esp.guid,
            label: label(PartitionType::Esp, &labels.esp),
            size: esp.size,
            data: PartitionData::InPlace,
        });
    }
    parts.push(Partition {
        kind: PartitionType::Root(arch),
        guid: guids.root,
        label: label(PartitionType::Root(arch), &labels.root),
        size: root_size,
        data: PartitionData::InPlace,
    });
    if let Some(v) = verity {
        parts.push(Partition {
            kind: PartitionType::RootVerity(arch),
            guid: guids.verity,
            label: label(PartitionType::RootVerity(arch), &labels.verity),
            size: v.hash_size,
            data: PartitionData::InPlace,
        });
    }
    parts
}

//! The filesystem and disk formats kiln writes itself, one module per format, each from a
//! [`kiln_tree::Tree`] and an [`kiln_tree::Epoch`] to the same bytes on every machine:
//! root filesystems ([`erofs`], [`squashfs`], [`ext4`] through mke2fs), the ESP ([`fat`]), the
//! partition table ([`gpt`]), dm-verity hashes ([`verity`]), container formats ([`qcow2`],
//! [`vhd`]) and the initramfs ([`cpio`]). [`layout`] plans a disk from a [`DiskLayout`].
//!
//! Each format declares its on-disk structures once, as structs with an `encode` method that
//! lists their fields in order: in `format.rs` of the larger formats' folders (erofs,
//! squashfs, FAT), at the top of the smaller formats' modules; the writers fill them in.

pub mod cpio;
pub mod erofs;
pub mod ext4;
pub mod fat;
#[cfg(test)]
mod golden;
pub mod gpt;
pub mod layout;
pub mod partition_file;
pub mod qcow2;
mod record;
pub mod squashfs;
#[cfg(test)]
mod test_data;
mod uuid;
pub mod verity;
pub mod vhd;

pub use layout::{DiskLayout, PartitionLabels, RootFs};

//! Disk images built from the root filesystem: filesystem images, dm-verity and partitions.

pub mod artifacts;
pub mod cpio;
pub mod erofs;
pub mod ext4;
pub mod fat;
pub mod gpt;
pub mod plan;
pub mod qcow2;
pub mod squashfs;
pub mod verity;
pub mod vhd;

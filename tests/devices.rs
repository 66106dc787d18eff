#![allow(clippy::unwrap_used)]
//! Device nodes and FIFOs in every format kiln writes, read back by tools kiln did not write:
//! GNU tar, cpio, erofs-utils (`fsck.erofs --extract`), squashfs-tools (`unsquashfs`) and
//! e2fsprogs (`debugfs`). Extracting device nodes takes root.

mod support;

use kiln_builder::write_tar;
use kiln_disk::cpio::write_cpio;
use kiln_disk::erofs::write_erofs;
use kiln_disk::ext4::write_ext4;
use kiln_disk::squashfs::write_squashfs;
use kiln_tree::{Device, EntryKind, Epoch, Tree};
use support::fs_model::{bytes, disk_listing, meta, put};
use support::{is_root, require_tool, sh, Workspace};

const EPOCH: Epoch = Epoch::saturating(1_700_000_000);

fn tree() -> Tree {
    let mut t = Tree::new();
    put(
        &mut t,
        "/dev/null",
        EntryKind::Device(Device::Char { major: 1, minor: 3 }),
        meta(0o666, 0, 0),
    );
    // A minor above 255 takes the high half of Linux's device number encoding.
    put(
        &mut t,
        "/dev/loop300",
        EntryKind::Device(Device::Block { major: 7, minor: 300 }),
        meta(0o660, 0, 6),
    );
    put(&mut t, "/run/initctl", EntryKind::Device(Device::Fifo), meta(0o600, 0, 0));
    put(&mut t, "/etc/motd", bytes(b"hi\n".to_vec()), meta(0o644, 0, 0));
    t
}

/// What every extraction must hold.
fn expected() -> Vec<String> {
    let mut lines: Vec<String> = [
        "dev 755 0:0 dir",
        "dev/loop300 660 0:6 block 7:300",
        "dev/null 666 0:0 char 1:3",
        "etc 755 0:0 dir",
        "etc/motd 644 0:0 file sha256:98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4",
        "run 755 0:0 dir",
        "run/initctl 600 0:0 fifo",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    lines.sort();
    lines
}

fn ready() -> bool {
    if !is_root() {
        eprintln!("SKIP: extracting device nodes takes root");
        return false;
    }
    true
}

#[test]
fn tar_and_cpio_carry_devices_and_fifos() {
    if !ready() || !require_tool("tar") || !require_tool("cpio") {
        return;
    }
    let ws = Workspace::new();
    let tar = ws.write("layer.tar", write_tar(&tree(), EPOCH, Vec::new()).unwrap());
    let out = ws.mkdir("tar");
    sh("tar", &["--numeric-owner", "-xpf", tar.to_str().unwrap(), "-C", out.to_str().unwrap()]);
    assert_eq!(disk_listing(&out, 0o7777), expected());

    let mut cpio = Vec::new();
    write_cpio(&tree(), EPOCH, &mut cpio).unwrap();
    let cpio = ws.write("root.cpio", cpio);
    let out = ws.mkdir("cpio");
    let script = format!("cd {} && cpio -idm --quiet < {}", out.display(), cpio.display());
    sh("sh", &["-c", &script]);
    assert_eq!(disk_listing(&out, 0o7777), expected());
}

#[test]
fn erofs_and_squashfs_carry_devices_and_fifos() {
    if !ready() || !require_tool("fsck.erofs") || !require_tool("unsquashfs") {
        return;
    }
    let ws = Workspace::new();
    let mut erofs = Vec::new();
    write_erofs(&tree(), EPOCH, &mut erofs).unwrap();
    let erofs = ws.write("root.erofs", erofs);
    sh("fsck.erofs", &[erofs.to_str().unwrap()]);
    let out = ws.path("erofs");
    sh("fsck.erofs", &[&format!("--extract={}", out.display()), erofs.to_str().unwrap()]);
    assert_eq!(disk_listing(&out, 0o7777), expected());

    let mut squashfs = std::io::Cursor::new(Vec::new());
    write_squashfs(&tree(), EPOCH, 1, &mut squashfs).unwrap();
    let squashfs = ws.write("root.squashfs", squashfs.into_inner());
    let out = ws.path("squashfs");
    sh("unsquashfs", &["-q", "-n", "-d", out.to_str().unwrap(), squashfs.to_str().unwrap()]);
    assert_eq!(disk_listing(&out, 0o7777), expected());
}

#[test]
fn ext4_carries_devices_and_fifos() {
    if !ready() || !require_tool("mke2fs") || !require_tool("debugfs") {
        return;
    }
    let ws = Workspace::new();
    let image = ws.path("root.ext4");
    write_ext4(&tree(), EPOCH, &ws.mkdir("work"), &image).unwrap();
    sh("e2fsck", &["-fn", image.to_str().unwrap()]);
    let stat =
        |path: &str| sh("debugfs", &["-R", &format!("stat {path}"), image.to_str().unwrap()]);
    let null = stat("/dev/null");
    assert!(null.contains("Type: character special") && null.contains("Mode:  0666"), "{null}");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    let loop300 = stat("/dev/loop300");
    assert!(
        loop300.contains("Type: block special") && loop300.contains("Group:     6"),
        "{loop300}"
    );
    assert!(loop300.contains("Device major/minor number: 07:300"), "{loop300}");
    let fifo = stat("/run/initctl");
    assert!(fifo.contains("Type: FIFO") && fifo.contains("Mode:  0600"), "{fifo}");
}

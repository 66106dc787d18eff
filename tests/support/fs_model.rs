#![allow(clippy::unwrap_used)]
//! A model tree holding every kind of entry the disk writers store, and listings of it and of a
//! filesystem read back (extracted or mounted) in one comparable form.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_oci::Digest;
use kiln_tree::{Content, Entry, EntryKind, HostFile, ImagePath, Meta, Tree};

use super::Workspace;

pub fn meta(mode: u32, uid: u32, gid: u32) -> Meta {
    Meta { mode, uid, gid, xattrs: BTreeMap::new() }
}

pub fn put(t: &mut Tree, path: &str, kind: EntryKind, meta: Meta) {
    t.insert(ImagePath::parse(path).unwrap(), Entry { kind, meta }).unwrap();
}

pub fn bytes(b: Vec<u8>) -> EntryKind {
    EntryKind::File(Content::Bytes(b.into()))
}

/// A tree with every kind of entry the writer handles, host files included.
pub fn fixture(ws: &Workspace) -> Tree {
    let mut t = Tree::new();
    put(&mut t, "/etc", EntryKind::Dir, meta(0o755, 0, 0));
    put(&mut t, "/etc/empty", bytes(Vec::new()), meta(0o644, 0, 0));
    put(&mut t, "/etc/motd", bytes(b"hello\n".to_vec()), meta(0o644, 0, 0));
    put(
        &mut t,
        "/etc/motd.link",
        EntryKind::HardLink(ImagePath::parse("/etc/motd").unwrap()),
        meta(0o644, 0, 0),
    );
    let big: Vec<u8> = (0..3 * 4096 + 123).map(|i| (i * 7 % 251) as u8).collect();
    put(&mut t, "/big", bytes(big), meta(0o600, 0, 0));
    put(&mut t, "/exact", bytes(vec![0x5a; 8192]), meta(0o644, 0, 0));
    let host: Vec<u8> = (0..10_000).map(|i| (i % 13) as u8).collect();
    let host_path = ws.write("host-file", &host);
    let content = Content::Host(HostFile::new(host_path, host.len() as u64, Digest::of(&host)));
    put(&mut t, "/usr/bin/app", EntryKind::File(content), meta(0o755, 0, 0));
    let mut caps = meta(0o755, 0, 0);
    caps.xattrs.insert("user.kiln.origin".into(), b"recipe".to_vec());
    caps.xattrs.insert("trusted.big".into(), vec![0xab; 3000]);
    put(&mut t, "/usr/bin/tagged", bytes(b"#!tagged\n".to_vec()), caps);
    let mut tagged_dir = meta(0o755, 0, 0);
    tagged_dir.xattrs.insert("user.dir".into(), Vec::new());
    put(&mut t, "/srv", EntryKind::Dir, tagged_dir);
    put(&mut t, "/usr/bin/su", bytes(b"#!su\n".to_vec()), meta(0o4755, 0, 0));
    put(&mut t, "/usr/bin/sh", EntryKind::Symlink("busybox".into()), meta(0o777, 0, 0));
    put(&mut t, "/abs", EntryKind::Symlink("/etc/motd".into()), meta(0o777, 0, 0));
    put(&mut t, "/long-target", EntryKind::Symlink("x/".repeat(700)), meta(0o777, 0, 0));
    put(&mut t, "/home/user", EntryKind::Dir, meta(0o700, 1000, 1000));
    put(&mut t, "/home/user/notes", bytes(b"mine".to_vec()), meta(0o640, 1000, 1000));
    put(&mut t, "/home/big-ids", bytes(b"ext".to_vec()), meta(0o644, 70_000, 80_000));
    put(&mut t, &format!("/{}", "n".repeat(255)), bytes(b"long".to_vec()), meta(0o644, 0, 0));
    put(&mut t, "/données/été ☃.txt", bytes(b"unicode".to_vec()), meta(0o644, 0, 0));
    // Enough entries for a directory that spans several blocks.
    for i in 0..400 {
        put(
            &mut t,
            &format!("/many/entry-with-a-longish-name-{i:04}"),
            bytes(vec![i as u8]),
            meta(0o644, 0, 0),
        );
    }
    t
}

/// `path kind mode uid gid what` lines for every entry of the model.
pub fn model_listing(t: &Tree, mask: u32) -> Vec<String> {
    t.iter()
        .map(|(path, e)| {
            let target = match &e.kind {
                EntryKind::HardLink(target) => t.get(target).unwrap(),
                _ => e,
            };
            let what = match &target.kind {
                EntryKind::Dir => "dir".to_string(),
                EntryKind::File(Content::Bytes(b)) => format!("file {}", Digest::of(b)),
                EntryKind::File(Content::Host(host)) => format!("file {}", host.digest),
                EntryKind::Symlink(to) => format!("symlink {to}"),
                EntryKind::HardLink(_) => unreachable!("links point at files"),
                EntryKind::Device(device) => device.describe(),
            };
            let mode = if matches!(target.kind, EntryKind::Symlink(_)) {
                0o777
            } else {
                target.meta.mode & mask
            };
            format!("{} {mode:o} {}:{} {what}", path.as_str(), target.meta.uid, target.meta.gid)
        })
        .collect()
}

/// Asserts two listings are equal, showing only the lines that differ.
pub fn same(disk: &[String], model: &[String]) {
    let missing: Vec<_> = model.iter().filter(|l| !disk.contains(l)).collect();
    let extra: Vec<_> = disk.iter().filter(|l| !model.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "model only: {missing:#?}\nimage only: {extra:#?}"
    );
}

/// The same listing read back from an extracted directory.
pub fn disk_listing(root: &Path, mask: u32) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, mask: u32, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for path in names {
            let md = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let what = if md.is_dir() {
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("symlink {}", fs::read_link(&path).unwrap().to_str().unwrap())
            } else if md.file_type().is_char_device() || md.file_type().is_block_device() {
                // Never read: a device's content is not the node's.
                let kind = if md.file_type().is_char_device() { "char" } else { "block" };
                let dev = md.rdev();
                let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
                let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
                format!("{kind} {major}:{minor}")
            } else if md.file_type().is_fifo() {
                "fifo".to_string()
            } else {
                format!("file {}", Digest::of(&fs::read(&path).unwrap()))
            };
            let mode = md.permissions().mode() & mask;
            out.push(format!("{rel} {mode:o} {}:{} {what}", md.uid(), md.gid()));
            if md.is_dir() {
                walk(root, &path, mask, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, mask, &mut out);
    out.sort();
    out
}

/// The extended attributes of the fixture's three tagged paths under `root`, as
/// (name, length, first bytes in hex), one line a path.
pub fn fixture_xattrs(root: &Path) -> String {
    super::sh(
        "python3",
        &[
            "-c",
            "import os,sys\nfor p in sys.argv[1:]:\n    \
             print(sorted((n, len(os.getxattr(p, n)), os.getxattr(p, n)[:6].hex()) \
             for n in os.listxattr(p, follow_symlinks=False)))",
            &format!("{}/usr/bin/tagged", root.display()),
            &format!("{}/srv", root.display()),
            &format!("{}/usr/bin/su", root.display()),
        ],
    )
}

/// What [`fixture_xattrs`] reads from a faithful copy of [`fixture`].
pub const FIXTURE_XATTRS: &str = "[('trusted.big', 3000, 'abababababab'), \
                                  ('user.kiln.origin', 6, '726563697065')]\n\
                                  [('user.dir', 0, '')]\n[]\n";

/// Mounts the `fs` image read-only on `mnt` through a loop device; false (with a skip
/// message) where the kernel cannot, as on machines without loop devices.
pub fn mount_ro(fs: &str, image: &Path, mnt: &Path) -> bool {
    let mounted = std::process::Command::new("mount")
        .args(["-t", fs, "-o", "loop,ro"])
        .arg(image)
        .arg(mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP: the kernel could not mount the {fs} image (no loop devices here?)");
    }
    mounted
}

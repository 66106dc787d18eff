#![allow(clippy::unwrap_used)]
//! kiln's own squashfs writer checked with squashfs-tools (`unsquashfs -s`, `-lln`, `-d`) and,
//! where loop devices work, the kernel: listings, extracted and mounted trees equal the model,
//! xattrs read back, hard links share an inode, and builds are bit-identical for any number of
//! threads.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_disk::squashfs::{write_squashfs, SquashfsImage};
use kiln_oci::Digest;
use kiln_tree::{Content, EntryKind, Epoch, HostFile, Tree};
use support::fs_model::{
    bytes, disk_listing, fixture, fixture_xattrs, meta, model_listing, mount_ro, put, same,
    FIXTURE_XATTRS,
};
use support::{is_root, noise, require_tool, sh, Workspace};

const EPOCH: Epoch = Epoch::saturating(1_700_000_000);
const BLOCK: usize = 128 * 1024;

fn squashfs(tree: &Tree, threads: usize) -> (Vec<u8>, SquashfsImage) {
    let mut cursor = std::io::Cursor::new(Vec::new());
    let image = write_squashfs(tree, EPOCH, threads, &mut cursor).unwrap();
    let bytes = cursor.into_inner();
    assert_eq!(bytes.len() as u64, image.size);
    assert_eq!(image.size % 4096, 0);
    (bytes, image)
}

fn text(len: usize) -> Vec<u8> {
    (0..).flat_map(|i: u32| format!("line {i} of some log text\n").into_bytes()).take(len).collect()
}

/// The shared model plus what only squashfs has: several data blocks with tails in fragments,
/// equal contents stored once, a hole, a block deflate cannot shrink, a large host file.
fn tree(ws: &Workspace) -> Tree {
    let mut t = fixture(ws);
    put(&mut t, "/data/big.txt", bytes(text(2 * BLOCK + 5000)), meta(0o644, 0, 0));
    put(&mut t, "/data/copy.txt", bytes(text(2 * BLOCK + 5000)), meta(0o600, 1000, 1000));
    let mut sparse = text(BLOCK);
    sparse.extend(vec![0u8; BLOCK]);
    sparse.extend(text(BLOCK + 10));
    put(&mut t, "/data/sparse", bytes(sparse), meta(0o644, 0, 0));
    put(&mut t, "/data/noise", bytes(noise(BLOCK, 7)), meta(0o644, 0, 0));
    let mut host = noise(3 * BLOCK, 11);
    host.extend(text(70_000));
    let path = ws.write("host-big", &host);
    let content = Content::Host(HostFile::new(path, host.len() as u64, Digest::of(&host)));
    put(&mut t, "/data/host-big", EntryKind::File(content), meta(0o755, 0, 0));
    t
}

/// `ls -l` style mode string, as `unsquashfs -lln` prints it.
fn mode_string(kind: char, mode: u32) -> String {
    let mut s = String::from(kind);
    for (shift, special, set, unset) in
        [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')]
    {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `path [target] mode uid/gid` for every entry of the model, root included.
fn model_lls(t: &Tree) -> Vec<String> {
    let mut out = vec!["squashfs-root drwxr-xr-x 0/0".to_string()];
    for (path, e) in t.iter() {
        let target = match &e.kind {
            EntryKind::HardLink(target) => t.get(target).unwrap(),
            _ => e,
        };
        let (m, owner) = (target.meta.mode, format!("{}/{}", target.meta.uid, target.meta.gid));
        let p = format!("squashfs-root/{}", path.as_str());
        out.push(match &target.kind {
            EntryKind::Dir => format!("{p} {} {owner}", mode_string('d', m)),
            EntryKind::Symlink(to) => format!("{p} {to} lrwxrwxrwx {owner}"),
            _ => format!("{p} {} {owner}", mode_string('-', m)),
        });
    }
    out
}

/// The same from `unsquashfs -lln -UTC`, checking every time is the epoch on the way.
fn image_lls(image: &str) -> Vec<String> {
    sh("unsquashfs", &["-lln", "-UTC", image])
        .lines()
        .map(|line| {
            let at = line.find("squashfs-root").unwrap();
            let fields: Vec<&str> = line[..at].split_whitespace().collect();
            assert_eq!(fields[3..], ["2023-11-14", "22:13"], "{line}");
            format!("{} {} {}", &line[at..], fields[0], fields[1]).replacen(" -> ", " ", 1)
        })
        .collect()
}

fn same_inode(root: &Path, a: &str, b: &str) -> bool {
    let ino = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
    ino(a) == ino(b)
}

#[test]
fn squashfs_is_accepted_by_unsquashfs_and_holds_the_model() {
    if !require_tool("unsquashfs") {
        return;
    }
    let ws = Workspace::new();
    let tree = tree(&ws);
    let (bytes, image) = squashfs(&tree, 2);
    let path = ws.write("root.squashfs", &bytes);
    let path = path.to_str().unwrap();

    let stat = sh("unsquashfs", &["-s", "-UTC", path]);
    for needle in [
        "Found a valid SQUASHFS 4:0 superblock",
        "Creation or last append time Tue Nov 14 22:13:20 2023",
        "Compression gzip",
        "Block size 131072",
        &format!("Number of inodes {}", image.inodes),
        "Number of ids 4",
        "Number of xattr ids 2",
    ] {
        assert!(stat.contains(needle), "{needle:?} not in:\n{stat}");
    }
    // The tree's entries plus the root, less the one hard link.
    assert_eq!(image.inodes, tree.len() as u64);

    let mut listed = image_lls(path);
    listed.sort();
    let mut model = model_lls(&tree);
    model.sort();
    same(&listed, &model);

    if !is_root() {
        eprintln!("SKIP: extraction with owners needs root");
        return;
    }
    let mut model = model_listing(&tree, 0o7777);
    model.sort();
    let out = ws.path("extracted");
    sh("unsquashfs", &["-q", "-n", "-xattrs", "-d", out.to_str().unwrap(), path]);
    same(&disk_listing(&out, 0o7777), &model);
    assert_eq!(fixture_xattrs(&out), FIXTURE_XATTRS);
    assert!(same_inode(&out, "etc/motd", "etc/motd.link"));
    assert!(!same_inode(&out, "data/big.txt", "data/copy.txt"));

    let mnt = ws.mkdir("mnt");
    if !mount_ro("squashfs", Path::new(path), &mnt) {
        return;
    }
    let listing = disk_listing(&mnt, 0o7777);
    let read_xattrs = fixture_xattrs(&mnt);
    let linked = same_inode(&mnt, "etc/motd", "etc/motd.link");
    let nlink = fs::metadata(mnt.join("etc/motd")).unwrap().nlink();
    let subdirs = fs::metadata(mnt.join("usr")).unwrap().nlink();
    // A lookup through the directory index of the 400-entry directory, late in the listing.
    let late = fs::read(mnt.join("many/entry-with-a-longish-name-0399")).unwrap();
    sh("umount", &[mnt.to_str().unwrap()]);
    same(&listing, &model);
    assert_eq!(read_xattrs, FIXTURE_XATTRS);
    assert!(linked);
    assert_eq!((nlink, subdirs), (2, 3));
    assert_eq!(late, [143u8]); // 399 as u8
}

#[test]
fn squashfs_of_an_empty_tree_is_valid() {
    if !require_tool("unsquashfs") {
        return;
    }
    let ws = Workspace::new();
    let (bytes, image) = squashfs(&Tree::new(), 1);
    assert_eq!((image.size, image.inodes), (4096, 1));
    let path = ws.write("empty.squashfs", &bytes);
    let listed = sh("unsquashfs", &["-lln", "-UTC", path.to_str().unwrap()]);
    assert!(listed.trim().starts_with("drwxr-xr-x 0/0"), "{listed}");
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

#[test]
fn squashfs_is_reproducible_for_any_thread_count() {
    let ws = Workspace::new();
    let tree = tree(&ws);
    let (one, a) = squashfs(&tree, 1);
    let (again, b) = squashfs(&tree, 1);
    let (four, c) = squashfs(&tree, 4);
    assert!(one == again && one == four, "builds of one tree differ");
    assert!(a == b && a == c);
    assert_eq!(a.uuid[6] >> 4, 8, "a version-8 UUID");

    let mut other = tree.clone();
    put(&mut other, "/data/extra", bytes(b"x".to_vec()), meta(0o644, 0, 0));
    let (changed, d) = squashfs(&other, 4);
    assert_ne!(one, changed);
    assert_ne!(a.uuid, d.uuid, "the UUID follows content");
}

#[test]
fn squashfs_refuses_what_it_cannot_store() {
    let ws = Workspace::new();
    let write = |tree: &Tree| {
        let mut cursor = std::io::Cursor::new(Vec::new());
        support::chain(&write_squashfs(tree, Epoch::new(0).unwrap(), 2, &mut cursor).unwrap_err())
    };

    let mut changed = Tree::new();
    let host = ws.write("later", b"before");
    let content = Content::Host(HostFile::new(host.clone(), 6, Digest::of(b"before")));
    put(&mut changed, "/f", EntryKind::File(content), meta(0o644, 0, 0));
    fs::write(&host, b"after!").unwrap();
    let err = write(&changed);
    assert!(err.contains("/f") && err.contains("when it was hashed"), "{err}");

    // A name squashfs could not store (over 256 bytes) never reaches it: image paths refuse
    // names over 255 bytes, which no Linux filesystem can create.
    let err = kiln_tree::ImagePath::parse(&format!("/d/{}", "n".repeat(257))).unwrap_err();
    assert!(support::chain(&err).contains("at most 255"), "{err}");

    let mut huge = Tree::new();
    let digest = Digest::of(b"");
    let content = Content::Host(HostFile::new(ws.path("absent"), 1 << 50, digest));
    put(&mut huge, "/huge", EntryKind::File(content), meta(0o644, 0, 0));
    let err = write(&huge);
    assert!(err.contains("/huge is 1125899906842624 bytes"), "{err}");

    let mut odd = Tree::new();
    let mut m = meta(0o644, 0, 0);
    m.xattrs.insert("system.nfs4_acl".into(), b"x".to_vec());
    put(&mut odd, "/f", bytes(Vec::new()), m);
    let err = write(&odd);
    assert!(err.contains("\"system.nfs4_acl\""), "{err}");

    let mut cursor = std::io::Cursor::new(Vec::new());
    let err =
        write_squashfs(&Tree::new(), Epoch::new(1 << 32).unwrap(), 1, &mut cursor).unwrap_err();
    assert!(support::chain(&err).contains("32-bit"), "{err}");
}

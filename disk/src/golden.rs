//! Golden digests of the tree formats on a tree that reaches the structures the disk images
//! of `tests/golden.rs` do not: xattrs on directories, files and devices, owners beyond 16
//! bits (erofs extended inodes), a hard link, a long symlink, a sparse file, a directory
//! whose listing needs several blocks (erofs) and an index (squashfs), and ESPs of each FAT
//! type with and without a label. A change to any of these bytes is a new output-format
//! version (see CHANGELOG.md).

use std::io::Cursor;

use kiln_oci::Digest;
use kiln_tree::image_path::ImagePath;
use kiln_tree::tree::{Content, Device, Entry, EntryKind, Meta, Tree};
use kiln_tree::Epoch;

use crate::{cpio, erofs, fat, squashfs};

fn path(p: &str) -> ImagePath {
    ImagePath::parse(p).unwrap()
}

fn file(bytes: Vec<u8>, mode: u32, uid: u32, gid: u32) -> Entry {
    let meta = Meta { mode, uid, gid, xattrs: Default::default() };
    Entry { kind: EntryKind::File(Content::Bytes(bytes.into())), meta }
}

fn with_xattrs(mut entry: Entry, xattrs: &[(&str, &[u8])]) -> Entry {
    for (name, value) in xattrs {
        entry.meta.xattrs.insert(name.to_string(), value.to_vec());
    }
    entry
}

fn root_tree() -> Tree {
    let mut t = Tree::new();
    let mut add = |p: &str, entry| t.insert(path(p), entry).unwrap();
    let dir = Entry { kind: EntryKind::Dir, meta: Meta::root(0o755) };
    add("/etc", with_xattrs(dir, &[("user.dir", b"value")]));
    let suid = file(b"hello world".to_vec(), 0o4755, 70_000, 70_001);
    let selinux: &[u8] = b"system_u:object_r:bin_t:s0";
    add(
        "/etc/x",
        with_xattrs(
            suid,
            &[("security.selinux", selinux), ("trusted.x", &[7; 300]), ("user.a", b"")],
        ),
    );
    add("/etc/tail", file((0..5000u32).map(|i| (i % 251) as u8).collect(), 0o644, 0, 0));
    add("/etc/exact", file(vec![3; 4096], 0o600, 1, 2));
    let mut sparse = vec![0u8; 300 * 1024];
    sparse.extend((0..200_000u32).map(|i| (i * 7 % 253) as u8));
    add("/big", file(sparse, 0o644, 0, 0));
    add("/link", Entry { kind: EntryKind::HardLink(path("/etc/x")), meta: Meta::root(0o644) });
    let target = format!("/etc/{}", "s".repeat(3000));
    add("/sym", Entry { kind: EntryKind::Symlink(target), meta: Meta::root(0o777) });
    let sda = Entry {
        kind: EntryKind::Device(Device::Block { major: 8, minor: 0 }),
        meta: Meta::root(0o660),
    };
    add("/dev/sda", with_xattrs(sda, &[("user.dev", b"1")]));
    let null = Device::Char { major: 1, minor: 3 };
    add("/dev/null", Entry { kind: EntryKind::Device(null), meta: Meta::root(0o666) });
    add("/dev/fifo", Entry { kind: EntryKind::Device(Device::Fifo), meta: Meta::root(0o644) });
    for i in 0..700 {
        let name = format!("/many/{}-{i:04}", "n".repeat(40));
        add(&name, file(vec![i as u8; i % 50], 0o644, i as u32 % 3, 0));
    }
    t
}

fn esp_tree() -> Tree {
    let mut t = Tree::new();
    let mut add =
        |p: &str, bytes: &[u8]| t.insert(path(p), file(bytes.to_vec(), 0o644, 0, 0)).unwrap();
    add("/EFI/BOOT/BOOTX64.EFI", &[0x4d; 70_000]);
    add("/loader/entries/kiln-linux-6.1.conf", b"title kiln");
    add("/loader/entries/kiln-linux-6.2.conf", b"title kiln 2");
    add("/été ☃ a very long name indeed.txt", b"x");
    for i in 0..100 {
        add(&format!("/d/f{i}.txt"), &[1; 10]);
    }
    t
}

fn epoch() -> Epoch {
    Epoch::new(1_700_000_001).unwrap()
}

fn digest(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

#[test]
fn root_filesystems_and_initramfs_are_pinned() {
    let tree = root_tree();
    let mut erofs = Vec::new();
    erofs::write_erofs(&tree, epoch(), &mut erofs).unwrap();
    let mut squashfs = Cursor::new(Vec::new());
    squashfs::write_squashfs(&tree, epoch(), 2, &mut squashfs).unwrap();
    let mut cpio = Vec::new();
    cpio::write_cpio(&tree, epoch(), &mut cpio).unwrap();
    assert_eq!(
        [digest(&erofs), digest(squashfs.get_ref()), digest(&cpio)],
        [
            "sha256:f1b394d05d92ccc6c2917147df7d8626aa1a62811fa9f106d538806fc3fc0ed2",
            "sha256:3065b20fca25a6a882fc80f17320b21540e1a1fb89f32184d7a16ae1b52b61ec",
            "sha256:3c1cf808fc111b8bb9aff3e618bf6a99209bff64dac7fa844489e7e42157745e",
        ]
    );
}

#[test]
fn esps_of_each_fat_type_are_pinned() {
    let tree = esp_tree();
    let mut got = Vec::new();
    // FAT12, FAT16 and FAT32, each with and without a label.
    for (size, name_at, name) in
        [(2u64 << 20, 54, "FAT12"), (20 << 20, 54, "FAT16"), (80 << 20, 82, "FAT32")]
    {
        for label in ["KILN ESP", ""] {
            let mut out = Vec::new();
            fat::write_fat(&tree, size, epoch(), 0x1234_5678, label, &mut out).unwrap();
            assert_eq!(&out[name_at..name_at + 5], name.as_bytes());
            got.push(digest(&out));
        }
    }
    assert_eq!(
        got,
        [
            "sha256:acebdc338e512277ce9a9a88646872d4b80795da6140945ea940c42deea7ce39",
            "sha256:06be1c6ad4a62e3360d8509b4a6dfea95a01cee826573c103e7af6a60304343d",
            "sha256:15b98e5a27dedaac985cd646445feaaf06bb696bbc507797894dcb2f904aba89",
            "sha256:ad524b692db6eb59bb685714c71980f6f6b589fff9bfb2edac7d21c1ecdd9967",
            "sha256:a44cbd5665ac3c631904268043f61ce619a9ac3eea5a5412ec792577215e9bae",
            "sha256:a143b997edefe17e5638b76591047a8bc841d4abd8054f65cf44b33ff8473777",
        ]
    );
}

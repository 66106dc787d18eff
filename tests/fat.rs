#![allow(clippy::unwrap_used)]
//! The ESP's FAT writer checked with dosfstools (`fsck.vfat`) and mtools: FAT12, FAT16 and
//! FAT32 images are accepted, list and extract exactly the model tree with the label and serial
//! given, are bit-identical across writes, and a new epoch moves only timestamps.

mod support;

use std::fs;
use std::io::{BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_disk::fat::{write_fat, FatError};
use kiln_oci::{Digest, HashingWriter};
use kiln_tree::{Content, EntryKind, Epoch, HostFile, ImagePath, Meta, Tree};
use support::fs_model::{bytes, disk_listing, meta, model_listing, put, same};
use support::{require_tool, Workspace};

const MIB: u64 = 1024 * 1024;
const EPOCH: Epoch = Epoch::saturating(1_700_000_000); // 2023-11-14T22:13:20Z
const SERIAL: u32 = 0x1234_ABCD;
const LABEL: &str = "KILN ESP";
const LONG_NAME: &str =
    "a file name far longer than eight point three, spread over several long entries.txt";

/// Owned by whoever runs the test, as mcopy's extraction will be.
fn mine(ws: &Workspace) -> Meta {
    let md = fs::metadata(ws.root()).unwrap();
    meta(0o644, md.uid(), md.gid())
}

/// An ESP-like tree: boot loader, loader entries, a host file over 1 MiB, long, non-ASCII,
/// 8.3 and mixed-case names, a hard link, a 300-entry directory, an empty file and directory.
fn esp_tree(ws: &Workspace) -> Tree {
    let m = mine(ws);
    let mut t = Tree::new();
    let efi: Vec<u8> =
        (0..1_300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let host = ws.write("BOOTX64.EFI", &efi);
    let content = Content::Host(HostFile::new(host, efi.len() as u64, Digest::of(&efi)));
    put(&mut t, "/EFI/BOOT/BOOTX64.EFI", EntryKind::File(content), m.clone());
    let link = EntryKind::HardLink(ImagePath::parse("/EFI/BOOT/BOOTX64.EFI").unwrap());
    put(&mut t, "/EFI/systemd/systemd-bootx64.efi", link, m.clone());
    put(&mut t, "/EFI/Linux", EntryKind::Dir, m.clone());
    put(&mut t, "/EFI/empty.bin", bytes(Vec::new()), m.clone());
    put(&mut t, "/loader/loader.conf", bytes(b"default kiln-*\ntimeout 0\n".to_vec()), m.clone());
    for (i, name) in
        ["kiln-linux-6.1.conf", "kiln-linux-6.2.conf", "kiln-rescue.conf"].iter().enumerate()
    {
        let body = format!("title kiln {i}\nlinux /vmlinuz-{i}\noptions root=PARTLABEL=root\n");
        put(&mut t, &format!("/loader/entries/{name}"), bytes(body.into_bytes()), m.clone());
    }
    put(&mut t, "/README.TXT", bytes(b"8.3 already\n".to_vec()), m.clone());
    put(&mut t, "/Makefile", bytes(b"mixed case\n".to_vec()), m.clone());
    put(&mut t, &format!("/{LONG_NAME}"), bytes(b"long\n".to_vec()), m.clone());
    put(&mut t, "/données/été ☃.txt", bytes("unicode ☃\n".as_bytes().to_vec()), m.clone());
    for i in 0..300 {
        let body = vec![i as u8; i * 7];
        put(
            &mut t,
            &format!("/many/entry-with-a-longish-name-{i:03}.conf"),
            bytes(body),
            m.clone(),
        );
    }
    t
}

/// Runs an mtools or dosfstools command in a UTF-8 locale, asserting success.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout) + &text(&out.stderr)
}

fn fat_bytes(tree: &Tree, size: u64, epoch: Epoch) -> Vec<u8> {
    let mut out = Vec::new();
    write_fat(tree, size, epoch, SERIAL, LABEL, &mut out).unwrap();
    assert_eq!(out.len() as u64, size);
    out
}

/// Writes the image to `path` and returns the digest of a second, independent write.
fn fat_file(tree: &Tree, size: u64, path: &Path) -> Digest {
    let mut file = BufWriter::new(fs::File::create(path).unwrap());
    write_fat(tree, size, EPOCH, SERIAL, LABEL, &mut file).unwrap();
    drop(file);
    let mut again = HashingWriter::new(std::io::sink());
    write_fat(tree, size, EPOCH, SERIAL, LABEL, &mut again).unwrap();
    again.finish().1
}

fn file_digest(path: &Path) -> Digest {
    let mut hashed = HashingWriter::new(std::io::sink());
    let mut file = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut hashed, &buf[..n]).unwrap();
    }
    hashed.finish().1
}

/// The FAT type named in the boot sector.
fn fs_type(image: &[u8]) -> &str {
    let at = if &image[82..87] == b"FAT32" { 82 } else { 54 };
    std::str::from_utf8(&image[at..at + 8]).unwrap().trim_end()
}

/// fsck.vfat accepts the image, minfo shows the label and serial, mdir lists every name and
/// mcopy extracts exactly the tree.
fn check_with_tools(ws: &Workspace, tree: &Tree, image: &Path, name: &str) {
    let img = image.to_str().unwrap();
    let fsck = tool("fsck.vfat", &["-n", "-V", "-v", img]);
    // Past the boot sector dump, a clean volume prints only its passes and the summary.
    let passes = fsck.split("Starting check/repair pass.").nth(1).unwrap();
    for line in passes.lines().filter(|l| !l.is_empty()) {
        let quiet = line.starts_with("Checking") || line.starts_with("Starting");
        assert!(quiet || line.starts_with(img), "{name}: fsck.vfat says {line:?}:\n{fsck}");
    }
    let info = tool("minfo", &["-i", img, "::"]);
    assert!(info.contains("disk label=\"KILN ESP   \""), "{name}: {info}");
    assert!(info.contains("serial number: 1234ABCD"), "{name}: {info}");
    let listing = tool("mdir", &["-i", img, "-/", "-a", "::"]);
    assert!(listing.contains("Volume in drive : is KILN ESP"), "{name}: {listing}");
    assert!(listing.contains("Volume Serial Number is 1234-ABCD"), "{name}: {listing}");
    for expected in [LONG_NAME, "été ☃.txt", "BOOTX64  EFI", "README   TXT", "Makefile"] {
        assert!(listing.contains(expected), "{name}: mdir lacks {expected:?}:\n{listing}");
    }
    let out = ws.mkdir(&format!("{name}-out"));
    tool("mcopy", &["-i", img, "-s", "-n", "::/*", out.to_str().unwrap()]);
    let mut model = model_listing(tree, 0);
    model.sort();
    same(&disk_listing(&out, 0), &model);
}

#[test]
fn fat_images_of_each_type_pass_fsck_and_mtools_reads_back_the_tree() {
    if !require_tool("fsck.vfat") || !require_tool("mdir") {
        return;
    }
    let ws = Workspace::new();
    let tree = esp_tree(&ws);
    for (size, expected) in [(8 * MIB, "FAT16"), (64 * MIB, "FAT32"), (600 * MIB, "FAT32")] {
        let name = format!("esp-{}m", size / MIB);
        let path = ws.path(&format!("{name}.img"));
        let second = fat_file(&tree, size, &path);
        assert_eq!(file_digest(&path), second, "{name}: two writes differ");
        let mut head = vec![0u8; 512];
        fs::File::open(&path).unwrap().read_exact(&mut head).unwrap();
        assert_eq!(fs_type(&head), expected, "{name}");
        check_with_tools(&ws, &tree, &path, &name);
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn small_and_odd_sized_volumes() {
    if !require_tool("fsck.vfat") || !require_tool("mdir") {
        return;
    }
    let ws = Workspace::new();
    let m = mine(&ws);
    let mut tree = Tree::new();
    put(&mut tree, "/EFI/BOOT/BOOTX64.EFI", bytes(vec![0xC3; 300_000]), m.clone());
    put(&mut tree, "/loader/entries/kiln.conf", bytes(b"title kiln\n".to_vec()), m.clone());
    for i in 0..40 {
        put(&mut tree, &format!("/chain/{i:02}"), bytes(vec![i; 700 * usize::from(i)]), m.clone());
    }
    let image = fat_bytes(&tree, 2 * MIB, EPOCH);
    assert_eq!(fs_type(&image), "FAT12");
    let path = ws.write("small.img", &image);
    let img = path.to_str().unwrap();
    let fsck = tool("fsck.vfat", &["-n", "-V", img]);
    assert!(fsck.ends_with(&format!("{img}: 48 files, 1680/4039 clusters\n")), "{fsck}");
    let out = ws.mkdir("small-out");
    tool("mcopy", &["-i", img, "-s", "-n", "::/*", out.to_str().unwrap()]);
    let mut model = model_listing(&tree, 0);
    model.sort();
    same(&disk_listing(&out, 0), &model);

    // Sizes need not be whole tracks or clusters: 3 sectors over 5 MiB is FAT16 with a
    // partial last cluster, 3 sectors over 40 MiB is FAT32.
    for (size, expected) in [(5 * MIB + 1536, "FAT16"), (40 * MIB + 1536, "FAT32")] {
        let image = fat_bytes(&tree, size, EPOCH);
        assert_eq!(fs_type(&image), expected);
        let path = ws.write("odd.img", &image);
        let img = path.to_str().unwrap();
        tool("fsck.vfat", &["-n", "-V", img]);
        let listing = tool("mdir", &["-i", img, "-/", "::"]);
        assert!(
            listing.contains("KILN~1   CON        11 2023-11-14  22:13  kiln.conf"),
            "{listing}"
        );
    }
}

/// The date and time mdir shows for `BOOTX64.EFI`.
fn shown_time(ws: &Workspace, image: &[u8], name: &str) -> String {
    let path = ws.write(name, image);
    let listing = tool("mdir", &["-i", path.to_str().unwrap(), "::/EFI/BOOT"]);
    let line = listing.lines().find(|l| l.starts_with("BOOTX64  EFI")).unwrap().to_string();
    line.split_whitespace().skip(3).collect::<Vec<_>>().join(" ")
}

#[test]
fn fat_is_reproducible_and_the_epoch_moves_only_timestamps() {
    if !require_tool("mdir") {
        return;
    }
    let ws = Workspace::new();
    let tree = esp_tree(&ws);
    let a = fat_bytes(&tree, 64 * MIB, EPOCH);
    assert!(a == fat_bytes(&tree, 64 * MIB, EPOCH), "two writes differ");
    let b = fat_bytes(&tree, 64 * MIB, Epoch::new(EPOCH.seconds() + 86_400 * 400 + 3_661).unwrap());
    assert!(a != b, "a new epoch must show in the timestamps");
    // Directory entries are 32-byte aligned: only their time and date fields may move.
    let timestamp_fields = [13, 14, 15, 16, 17, 18, 19, 22, 23, 24, 25];
    for (at, _) in a.iter().zip(&b).enumerate().filter(|(_, (x, y))| x != y) {
        assert!(timestamp_fields.contains(&(at % 32)), "byte {at} changed with the epoch");
    }
    assert_eq!(shown_time(&ws, &a, "a.img"), "2023-11-14 22:13");
    assert_eq!(shown_time(&ws, &b, "b.img"), "2024-12-18 23:14");
    // FAT records 1980 to 2107 only.
    let early = fat_bytes(&tree, 64 * MIB, Epoch::new(0).unwrap());
    assert_eq!(shown_time(&ws, &early, "early.img"), "1980-01-01 0:00");
    let late = fat_bytes(&tree, 64 * MIB, Epoch::MAX);
    assert_eq!(shown_time(&ws, &late, "late.img"), "2107-12-31 23:59");
}

fn fat_error(tree: &Tree, size: u64, label: &str) -> FatError {
    write_fat(tree, size, EPOCH, SERIAL, label, &mut std::io::sink()).unwrap_err()
}

fn one(path: &str, kind: EntryKind) -> Tree {
    let mut t = Tree::new();
    put(&mut t, path, kind, meta(0o644, 0, 0));
    t
}

#[test]
fn fat_refuses_what_it_cannot_hold() {
    let ws = Workspace::new();
    let symlink = one("/EFI/BOOT/link", EntryKind::Symlink("BOOTX64.EFI".into()));
    let err = fat_error(&symlink, 8 * MIB, LABEL);
    assert!(matches!(err, FatError::Unsupported { .. }), "{err}");
    assert!(support::chain(&err).contains("EFI/BOOT/link is a symbolic link"), "{err}");

    // The size is checked before any byte is read, so the host file need not exist.
    let huge = Content::Host(HostFile::new(ws.path("absent"), 1 << 32, Digest::of(b"")));
    let err = fat_error(&one("/huge.img", EntryKind::File(huge)), 8 * MIB, LABEL);
    assert!(matches!(err, FatError::FileTooLarge { .. }), "{err}");
    assert!(support::chain(&err).contains("huge.img is 4294967296 bytes"), "{err}");

    for name in
        ["a*b", "what?", "a:b", "a<b", "a>b", "a|b", "a\\b", "a\"b", "tab\there", "dot.", "space "]
    {
        let err = fat_error(&one(&format!("/dir/{name}"), bytes(Vec::new())), 8 * MIB, LABEL);
        assert!(matches!(err, FatError::BadName { .. }), "{name:?}: {err}");
        assert!(support::chain(&err).contains(&format!("dir/{name}")), "{err}");
    }
    // FAT's limit is 255 UTF-16 units; image paths stop names at 255 bytes first, so the
    // longest name FAT can be given is 255 ASCII characters, which it stores.
    let at_limit = one(&format!("/{}", "n".repeat(255)), bytes(Vec::new()));
    write_fat(&at_limit, 8 * MIB, EPOCH, SERIAL, LABEL, &mut std::io::sink()).unwrap();
    let err = ImagePath::parse(&format!("/dir/{}", "é".repeat(128))).unwrap_err();
    assert!(support::chain(&err).contains("at most 255"), "{err}");

    let mut clash = Tree::new();
    put(&mut clash, "/EFI/BOOT/BOOTX64.EFI", bytes(vec![1]), meta(0o644, 0, 0));
    put(&mut clash, "/EFI/boot/bootx64.efi", bytes(vec![2]), meta(0o644, 0, 0));
    let err = fat_error(&clash, 8 * MIB, LABEL);
    assert!(matches!(err, FatError::CaseClash { .. }), "{err}");
    assert!(support::chain(&err).contains("/EFI/boot and /EFI/BOOT differ only in case"), "{err}");

    let full = one("/big", bytes(vec![7; 3 * MIB as usize]));
    let err = fat_error(&full, 2 * MIB, LABEL);
    assert!(matches!(err, FatError::NoSpace { .. }), "{err}");
    let text = support::chain(&err);
    assert!(text.contains("needs") && text.contains("the ESP has 2097152"), "{err}");

    let small = one("/a", bytes(vec![1]));
    for size in [8 * MIB + 1, 1024, 16 * 1024, 3 << 40] {
        let err = fat_error(&small, size, LABEL);
        assert!(matches!(err, FatError::BadSize { .. }), "{size}: {err}");
        assert!(support::chain(&err).contains(&size.to_string()), "{err}");
    }

    for label in ["TWELVE CHARS", "été", "A/B", " ESP"] {
        let err = fat_error(&small, 8 * MIB, label);
        assert!(matches!(err, FatError::BadLabel { .. }), "{label:?}: {err}");
    }

    let host = ws.write("later", b"before");
    let content = Content::Host(HostFile::new(host.clone(), 6, Digest::of(b"before")));
    let changed = one("/EFI/BOOT/BOOTX64.EFI", EntryKind::File(content));
    fs::write(&host, b"after!").unwrap();
    let err = fat_error(&changed, 8 * MIB, LABEL);
    assert!(matches!(err, FatError::Host { .. }), "{err}");
    assert!(support::chain(&err).contains("when it was hashed"), "{err}");
}

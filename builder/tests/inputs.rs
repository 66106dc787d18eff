//! Inputs: trees and tarballs become layer trees; hostile ones are refused with the culprit named.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use kiln_builder::hash_cache::HashCache;
use kiln_builder::inputs::{resolve_layer, InputError, InputKind};
use kiln_builder::Recipe;
use kiln_tree::{EntryKind, ImagePath, Tree};

/// An error and its causes, as the command line prints them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

fn recipe(dir: &Path, layer: &str) -> Recipe {
    let text =
        format!("[image]\nname = \"t\"\nversion = \"1\"\n[[layer]]\nname = \"l\"\n{layer}\n");
    fs::write(dir.join("r.toml"), text).unwrap();
    Recipe::load(&dir.join("r.toml")).unwrap()
}

fn p(s: &str) -> ImagePath {
    ImagePath::parse(s).unwrap()
}

#[test]
fn trees_keep_links_and_normalise_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    fs::create_dir_all(t.join("bin")).unwrap();
    fs::create_dir_all(t.join("empty")).unwrap();
    fs::write(t.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(t.join("bin/tool"), fs::Permissions::from_mode(0o4711)).unwrap();
    fs::write(t.join("data"), b"data").unwrap();
    fs::set_permissions(t.join("data"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(t.join("data"), t.join("bin/data-link")).unwrap();
    symlink("../data", t.join("bin/rel")).unwrap();
    let r = recipe(tmp.path(), "trees = [{ src = \"tree\", dest = \"/opt\", uid = 7 }]");
    let layer = resolve_layer(&r.layers[0], &mut HashCache::disabled()).unwrap();
    let tree = &layer.tree().unwrap();
    let tool = tree.get(&p("opt/bin/tool")).unwrap();
    assert_eq!(tool.meta.mode, 0o755, "setuid from the host never leaks in");
    assert_eq!(tool.meta.uid, 7);
    assert_eq!(tree.get(&p("opt/data")).unwrap().meta.mode, 0o644);
    assert_eq!(tree.get(&p("opt/bin/rel")).unwrap().kind, EntryKind::Symlink("../data".into()));
    assert!(matches!(tree.get(&p("opt/empty")).unwrap().kind, EntryKind::Dir));
    // The link sorts first ("bin/…" < "data"), so it carries the content and data links to it.
    assert!(matches!(tree.get(&p("opt/bin/data-link")).unwrap().kind, EntryKind::File(_)));
    assert_eq!(tree.get(&p("opt/data")).unwrap().kind, EntryKind::HardLink(p("opt/bin/data-link")));
    assert_eq!(layer.inputs.len(), 1);
    assert_eq!(layer.inputs[0].kind, InputKind::Tree);
}

#[test]
fn tree_digest_ignores_mtimes_and_creation_order() {
    let digest_of = |order: &[&str], mtime: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("tree");
        fs::create_dir_all(&t).unwrap();
        for name in order {
            fs::write(t.join(name), name.as_bytes()).unwrap();
            std::process::Command::new("touch")
                .args(["-d", mtime])
                .arg(t.join(name))
                .status()
                .unwrap();
        }
        let r = recipe(tmp.path(), "trees = [{ src = \"tree\", dest = \"/\" }]");
        resolve_layer(&r.layers[0], &mut HashCache::disabled()).unwrap().inputs[0].digest
    };
    let a = digest_of(&["a", "b", "c"], "2001-01-01");
    let b = digest_of(&["c", "a", "b"], "2020-06-06");
    assert_eq!(a, b);
}

fn tree_error(setup: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    fs::create_dir_all(&t).unwrap();
    setup(&t);
    let r = recipe(tmp.path(), "trees = [{ src = \"tree\", dest = \"/\" }]");
    let err = resolve_layer(&r.layers[0], &mut HashCache::disabled())
        .and_then(|layer| layer.tree())
        .unwrap_err();
    chain(&err)
}

#[test]
fn tree_symlinks_that_climb_out_are_refused() {
    let msg = tree_error(|t| {
        fs::create_dir(t.join("d")).unwrap();
        symlink("../../outside", t.join("d/up")).unwrap()
    });
    assert!(msg.contains("up") && msg.contains("leaves the tree"), "{msg}");
}

#[test]
fn fifos_and_devices_in_trees_are_refused() {
    let msg = tree_error(|t| {
        let st = std::process::Command::new("mkfifo").arg(t.join("pipe")).status().unwrap();
        assert!(st.success());
    });
    assert!(msg.contains("pipe") && msg.contains("FIFO"), "{msg}");
    let tmp = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("mknod")
        .arg(tmp.path().join("probe"))
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let msg = tree_error(|t| {
            std::process::Command::new("mknod")
                .arg(t.join("null"))
                .args(["c", "1", "3"])
                .status()
                .unwrap();
        });
        assert!(msg.contains("null") && msg.contains("device"), "{msg}");
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mknod must work in CI (run as root)"
        );
        eprintln!("skipping the device-node case: mknod is not permitted here");
    }
}

/// A tar with one member whose name is written raw into the header, bypassing any checks.
fn raw_tar(name: &[u8], kind: u8, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

fn tarball_result(bytes: &[u8]) -> Result<kiln_builder::inputs::ResolvedLayer, InputError> {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("in.tar"), bytes).unwrap();
    let r = recipe(tmp.path(), "tarballs = [{ src = \"in.tar\", dest = \"/srv\" }]");
    // Some members are refused as the tarball is read, others only as its tree is made.
    let layer = resolve_layer(&r.layers[0], &mut HashCache::disabled())?;
    layer.tree()?;
    Ok(layer)
}

#[test]
fn tarball_members_are_unpacked() {
    let mut bytes = raw_tar(b"app/run", b'0', b"", b"hi");
    bytes.truncate(1024);
    bytes.extend(raw_tar(b"app/link", b'2', b"run", b""));
    let layer = tarball_result(&bytes).unwrap();
    let tree = layer.tree().unwrap();
    assert!(matches!(tree.get(&p("srv/app/run")).unwrap().kind, EntryKind::File(_)));
    assert_eq!(tree.get(&p("srv/app/link")).unwrap().kind, EntryKind::Symlink("run".into()));
    assert_eq!(layer.inputs[0].kind, InputKind::Tarball);
}

#[test]
fn tarball_devices_need_the_option_and_linux_numbers() {
    // A character device with the given octal major and minor fields.
    let device = |major: &[u8; 7], minor: &[u8; 7]| {
        let mut bytes = raw_tar(b"dev/x", b'3', b"", b"");
        bytes[329..336].copy_from_slice(major);
        bytes[337..344].copy_from_slice(minor);
        bytes[148..156].copy_from_slice(b"        ");
        let sum: u32 = bytes[..512].iter().map(|&b| u32::from(b)).sum();
        bytes[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        bytes
    };
    let with_devices = |bytes: &[u8]| {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("in.tar"), bytes).unwrap();
        let text = "tarballs = [{ src = \"in.tar\", dest = \"/\", devices = true }]";
        let r = recipe(tmp.path(), text);
        let layer = resolve_layer(&r.layers[0], &mut HashCache::disabled())?;
        assert!(layer.inputs[0].devices, "the lock records devices = true");
        layer.tree()
    };
    let ok = device(b"0000001", b"0000454");
    let err = chain(&tarball_result(&ok).unwrap_err());
    assert!(err.contains("dev/x") && err.contains("devices = true"), "{err}");
    let tree = with_devices(&ok).unwrap();
    let want = EntryKind::Device(kiln_tree::Device::Char { major: 1, minor: 300 });
    assert_eq!(tree.get(&p("dev/x")).unwrap().kind, want);
    // Major 4096 is beyond Linux's 12 bits.
    let err = chain(&with_devices(&device(b"0010000", b"0000001")).unwrap_err());
    assert!(err.contains("dev/x") && err.contains("4096:1"), "{err}");
}

#[test]
fn hostile_tarballs_are_refused() {
    let cases: [(&[u8], u8, &[u8], &str); 6] = [
        (b"../escape", b'0', b"", "climbs out"),
        (b"a/../../escape", b'0', b"", "climbs out"),
        (b"/etc/passwd", b'0', b"", "absolute"),
        (b"dev/null", b'3', b"", "device"),
        (b"pipe", b'6', b"", "FIFO"),
        (b"hl", b'1', b"../../etc/shadow", "climbs out"),
    ];
    for (name, kind, link, needle) in cases {
        let err = chain(&tarball_result(&raw_tar(name, kind, link, b"x")).unwrap_err());
        assert!(
            err.contains(needle) && err.contains("in.tar"),
            "{}: {err}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn a_symlinked_parent_in_a_tarball_is_refused() {
    let mut bytes = raw_tar(b"etc", b'2', b"/etc", b"");
    bytes.truncate(512);
    bytes.extend(raw_tar(b"etc/passwd", b'0', b"", b"root::0:0::/:/bin/sh\n"));
    let err = chain(&tarball_result(&bytes).unwrap_err());
    assert!(err.contains("etc"), "{err}");
}

/// A tree of `dirs` folders (some nested) with a few files each, a symlink and a hard link.
fn wide_tree(t: &Path, dirs: usize) {
    for d in 0..dirs {
        let dir = t.join(format!("d{d:03}/inner{}", d % 3));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..4 {
            fs::write(dir.join(format!("f{f}")), format!("{d}-{f}").repeat(d * 7 + f)).unwrap();
        }
    }
    fs::set_permissions(t.join("d001/inner1/f2"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink("../d000", t.join("d002/up")).unwrap();
    fs::hard_link(t.join("d003/inner0/f1"), t.join("d000/twin")).unwrap();
}

/// The tree digest lock files record, computed here the slow, obvious way: one line per
/// entry, each folder's entries sorted by name, subfolders walked after their parent's lines.
fn expected_tree_digest(root: &Path) -> kiln_oci::Digest {
    fn walk(dir: &Path, rel: &str, out: &mut String, links: &mut Vec<(u64, String)>) {
        use std::os::unix::fs::MetadataExt;
        let mut names: Vec<_> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let name = name.to_str().unwrap().to_string();
            let r = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let md = fs::symlink_metadata(dir.join(&name)).unwrap();
            if md.is_dir() {
                out.push_str(&format!("d 755 {r}\n"));
                subdirs.push((dir.join(&name), r));
            } else if md.file_type().is_symlink() {
                let target = fs::read_link(dir.join(&name)).unwrap();
                out.push_str(&format!("l 777 {r}\0{}\n", target.to_str().unwrap()));
            } else if let Some((_, first)) = links.iter().find(|(ino, _)| *ino == md.ino()) {
                out.push_str(&format!("h 0 {r}\0{first}\n"));
            } else {
                if md.nlink() > 1 {
                    links.push((md.ino(), r.clone()));
                }
                let mode = if md.mode() & 0o111 != 0 { 755 } else { 644 };
                let digest = kiln_oci::Digest::of(&fs::read(dir.join(&name)).unwrap());
                out.push_str(&format!("f {mode} {r}\0{digest}\n"));
            }
        }
        for (d, r) in subdirs {
            walk(&d, &r, out, links);
        }
    }
    let mut text = String::new();
    walk(root, "", &mut text, &mut Vec::new());
    kiln_oci::Digest::of(text.as_bytes())
}

#[test]
fn parallel_tree_reading_keeps_the_locked_digest_and_sorted_order() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    wide_tree(&t, 120);
    let r = recipe(tmp.path(), "trees = [{ src = \"tree\", dest = \"/\" }]");
    let expected = expected_tree_digest(&t);
    let first = resolve_layer(&r.layers[0], &mut HashCache::disabled()).unwrap();
    assert_eq!(first.inputs[0].digest, expected, "the tree digest in lock files changed");
    for _ in 0..5 {
        let again = resolve_layer(&r.layers[0], &mut HashCache::disabled()).unwrap();
        assert_eq!(again.tree().unwrap(), first.tree().unwrap());
        assert_eq!(again.digest, first.digest);
        assert_eq!(again.inputs, first.inputs);
    }
    // The walk meets d000/twin first, so it carries the content.
    assert_eq!(
        first.tree().unwrap().get(&p("d003/inner0/f1")).unwrap().kind,
        EntryKind::HardLink(p("d000/twin"))
    );
    assert_eq!(first.tree().unwrap().get(&p("d001/inner1/f2")).unwrap().meta.mode, 0o755);
}

#[test]
fn the_first_bad_entry_in_sorted_order_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    wide_tree(&t, 60);
    for bad in ["d059/inner2/zz", "d007/inner1/bad", "d031/inner1/aa"] {
        let st = std::process::Command::new("mkfifo").arg(t.join(bad)).status().unwrap();
        assert!(st.success());
    }
    let r = recipe(tmp.path(), "trees = [{ src = \"tree\", dest = \"/\" }]");
    for _ in 0..5 {
        let err = resolve_layer(&r.layers[0], &mut HashCache::disabled()).unwrap_err();
        assert!(chain(&err).contains("d007/inner1/bad"), "{err}");
    }
}

#[test]
fn remembered_digests_give_the_same_layer_and_a_rewrite_is_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("tree");
    wide_tree(&t, 20);
    let r = recipe(tmp.path(), "trees = [{ src = \"tree\", dest = \"/\" }]");
    // Files changed in the last two seconds are never remembered: let them settle.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let cache_file = tmp.path().join("cache/file-digests");
    let mut cache = HashCache::load(&cache_file);
    let fresh = resolve_layer(&r.layers[0], &mut cache).unwrap();
    cache.save().unwrap();
    assert!(cache_file.exists(), "settled files are remembered");
    let remembered = resolve_layer(&r.layers[0], &mut HashCache::load(&cache_file)).unwrap();
    assert_eq!(without_stamps(&remembered.tree().unwrap()), without_stamps(&fresh.tree().unwrap()));
    assert_eq!(remembered.digest, fresh.digest);
    assert_eq!(remembered.inputs, fresh.inputs);
    // Only a file read by this very build is trusted unread later on, by its stamp.
    let hashed_as = |t: &Tree| match &t.get(&p("d005/inner2/f3")).unwrap().kind {
        EntryKind::File(kiln_tree::Content::Host(host)) => host.hashed_as,
        other => panic!("{other:?}"),
    };
    assert!(hashed_as(&fresh.tree().unwrap()).is_some());
    assert!(hashed_as(&remembered.tree().unwrap()).is_none());
    // Same size, new bytes: the stamp (mtime/ctime) changed, so the file is read again.
    let f = t.join("d005/inner2/f3");
    let mut bytes = fs::read(&f).unwrap();
    bytes[0] ^= 1;
    fs::write(&f, &bytes).unwrap();
    let rewritten = resolve_layer(&r.layers[0], &mut HashCache::load(&cache_file)).unwrap();
    let digest = |l: &kiln_builder::inputs::ResolvedLayer| match &l
        .tree()
        .unwrap()
        .get(&p("d005/inner2/f3"))
        .unwrap()
        .kind
    {
        EntryKind::File(kiln_tree::Content::Host(host)) => host.digest,
        other => panic!("{other:?}"),
    };
    assert_eq!(digest(&rewritten), kiln_oci::Digest::of(&bytes));
    assert_ne!(rewritten.inputs, fresh.inputs);
}

/// The entries of `tree` without what this build knew of how its host files were hashed.
fn without_stamps(tree: &Tree) -> Vec<(ImagePath, kiln_tree::Entry)> {
    tree.iter()
        .map(|(path, entry)| {
            let mut entry = entry.clone();
            if let EntryKind::File(kiln_tree::Content::Host(host)) = &mut entry.kind {
                host.hashed_as = None;
            }
            (path.clone(), entry)
        })
        .collect()
}

/// A layer declaring one of everything, over inputs written into `dir`.
fn everything(dir: &Path, name: &str, edit: (&str, &str)) -> kiln_builder::inputs::ResolvedLayer {
    fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
    fs::write(dir.join("rootfs/etc/os-release"), b"ID=kiln\n").unwrap();
    fs::write(dir.join("app"), b"#!/bin/sh\n").unwrap();
    fs::write(dir.join("base.tar"), raw_tar(b"opt/x", b'0', b"", b"x")).unwrap();
    let body = [
        "dirs = [{ dest = \"/var/lib/app\", mode = 0o750, uid = 1000, gid = 1000 }]",
        "files = [{ src = \"app\", dest = \"/usr/bin/app\", mode = 0o755 }]",
        "inline = [{ dest = \"/etc/motd\", content = \"hello\" }]",
        "symlinks = [{ dest = \"/bin/sh\", target = \"busybox\" }]",
        "hardlinks = [{ dest = \"/usr/bin/app2\", target = \"/usr/bin/app\" }]",
        "trees = [{ src = \"rootfs\", dest = \"/\", uid = 0 }]",
        "tarballs = [{ src = \"base.tar\", dest = \"/srv\" }]",
    ]
    .join("\n")
    .replace(edit.0, edit.1);
    let text =
        format!("[image]\nname = \"t\"\nversion = \"1\"\n[[layer]]\nname = \"{name}\"\n{body}\n");
    fs::write(dir.join("r.toml"), text).unwrap();
    let r = Recipe::load(&dir.join("r.toml")).unwrap();
    resolve_layer(&r.layers[0], &mut HashCache::disabled()).unwrap()
}

#[test]
fn a_layer_digest_names_every_declared_field_and_input_but_no_host_path() {
    let tmp = tempfile::tempdir().unwrap();
    let base = everything(&tmp.path().join("one"), "l", ("", ""));
    // Another checkout, another layer name: the same layer.
    let moved = everything(&tmp.path().join("elsewhere/two"), "renamed", ("", ""));
    assert_eq!(moved.digest, base.digest);
    let blob = |layer: &kiln_builder::inputs::ResolvedLayer| {
        let gzip = kiln_compress::Compression::GZIP;
        kiln_builder::write_layer(
            &layer.tree().unwrap(),
            kiln_tree::Epoch::ZERO,
            &gzip,
            1,
            tmp.path(),
        )
        .unwrap()
        .digest
    };
    assert_eq!(blob(&moved), blob(&base));
    let edits = [
        ("mode = 0o750", "mode = 0o751"),
        ("uid = 1000", "uid = 1001"),
        ("gid = 1000 }", "gid = 1002 }"),
        ("/var/lib/app", "/var/lib/ap"),
        ("mode = 0o755", "mode = 0o700"),
        ("\"hello\"", "\"hello!\""),
        ("\"busybox\"", "\"toybox\""),
        ("dest = \"/usr/bin/app2\"", "dest = \"/usr/bin/app3\""),
        ("uid = 0 }", "uid = 5 }"),
        ("dest = \"/srv\"", "dest = \"/opt\""),
        ("src = \"rootfs\", dest = \"/\"", "src = \"rootfs\", dest = \"/r\""),
    ];
    for (i, edit) in edits.into_iter().enumerate() {
        let changed = everything(&tmp.path().join(format!("edit{i}")), "l", edit);
        assert_ne!(changed.digest, base.digest, "{edit:?}");
    }
    // A changed input, with the declaration as it was.
    let dir = tmp.path().join("content");
    everything(&dir, "l", ("", ""));
    fs::write(dir.join("rootfs/etc/os-release"), b"ID=other\n").unwrap();
    let r = Recipe::load(&dir.join("r.toml")).unwrap();
    let changed = resolve_layer(&r.layers[0], &mut HashCache::disabled()).unwrap();
    assert_ne!(changed.digest, base.digest);
}

//! Inputs: trees and tarballs become layer trees; hostile ones are refused with the culprit named.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use kiln_builder::hash_cache::HashCache;
use kiln_builder::inputs::{resolve_layer, InputError, InputKind};
use kiln_builder::{EntryKind, ImagePath, Recipe};

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
    let tree = &layer.tree;
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
    resolve_layer(&r.layers[0], &mut HashCache::disabled()).unwrap_err().to_string()
}

#[test]
fn tree_symlinks_that_escape_are_refused() {
    let msg = tree_error(|t| symlink("/etc/passwd", t.join("evil")).unwrap());
    assert!(msg.contains("evil") && msg.contains("/etc/passwd"), "{msg}");
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
    resolve_layer(&r.layers[0], &mut HashCache::disabled())
}

#[test]
fn tarball_members_are_unpacked() {
    let mut bytes = raw_tar(b"app/run", b'0', b"", b"hi");
    bytes.truncate(1024);
    bytes.extend(raw_tar(b"app/link", b'2', b"run", b""));
    let layer = tarball_result(&bytes).unwrap();
    assert!(matches!(layer.tree.get(&p("srv/app/run")).unwrap().kind, EntryKind::File(_)));
    assert_eq!(layer.tree.get(&p("srv/app/link")).unwrap().kind, EntryKind::Symlink("run".into()));
    assert_eq!(layer.inputs[0].kind, InputKind::Tarball);
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
        let err = tarball_result(&raw_tar(name, kind, link, b"x")).unwrap_err().to_string();
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
    let err = tarball_result(&bytes).unwrap_err().to_string();
    assert!(err.contains("etc"), "{err}");
}

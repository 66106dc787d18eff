#![allow(clippy::unwrap_used)]
//! Root filesystems: a tree imported with `host-metadata = true` keeps every entry's mode
//! (setuid, setgid and sticky bits included) and numeric owner, and the lock pins them, so a
//! chown is a lock change. `umoci unpack` of the image and the initramfs kiln flattens from the
//! same recipe hold exactly the host tree. Device nodes and FIFOs come only from an input that
//! says `devices = true`. A real Debian root made by debootstrap (`ci/debian-root`, cached in
//! `KILN_DEBIAN_ROOT`) imports the same as a tree and as a tarball, and runs bash in a chroot.

mod support;

use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use support::fs_model::disk_listing;
use support::{is_root, require_tool, sh, Kiln, Workspace, EXIT_LOCK_MISMATCH};

/// Builds `recipe` (with `[disk] formats = ["initramfs"]` added) and returns the folder
/// `umoci unpack` made of the image and the folder the initramfs extracts to.
fn unpack_both(ws: &Workspace, kiln: &Kiln, store: &Path, recipe: &Path) -> (PathBuf, PathBuf) {
    let report = kiln.build(recipe, &[]);
    let rootfs = umoci_unpack(ws, kiln, &report);

    let blob = |digest: &str| store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let disk = report["disks"][0]["digest"].as_str().expect("a disk artifact");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(disk)).unwrap()).unwrap();
    let initramfs = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let extracted = ws.mkdir(&format!("initramfs-{}", report["name"].as_str().unwrap()));
    let script = format!(
        "cd {} && gzip -dc {} | cpio -idm --quiet --no-absolute-filenames",
        extracted.display(),
        initramfs.display()
    );
    sh("sh", &["-c", &script]);
    (rootfs, extracted)
}

/// Exports the image a build `report` names and returns the root filesystem `umoci unpack`
/// makes of it.
fn umoci_unpack(ws: &Workspace, kiln: &Kiln, report: &serde_json::Value) -> PathBuf {
    let name = report["name"].as_str().unwrap().to_string();
    let layout = ws.path(&format!("layout-{name}"));
    kiln.run(&["export", &format!("{name}:1"), "--oci-layout", layout.to_str().unwrap()]).ok();
    let bundle = ws.path(&format!("bundle-{name}"));
    let image = format!("{}:1", layout.display());
    sh("umoci", &["unpack", "--image", &image, bundle.to_str().unwrap()]);
    bundle.join("rootfs")
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A small root filesystem with what a normalising import would break: a shadow file
/// readable by group 42 only, a sticky /tmp, a setuid program, a user's private home, a link
/// owned by that user, a hard link and an absolute symlink.
fn small_root(ws: &Workspace) -> PathBuf {
    let root = ws.mkdir("recipe/rootfs");
    let shadow = ws.write("recipe/rootfs/etc/shadow", "root:*:19000:0:99999:7:::\n");
    chmod(&shadow, 0o640);
    lchown(&shadow, Some(0), Some(42)).unwrap();
    let tmp = ws.mkdir("recipe/rootfs/tmp");
    chmod(&tmp, 0o1777);
    let passwd = ws.write("recipe/rootfs/usr/bin/passwd", "#!/bin/sh\n");
    chmod(&passwd, 0o4755);
    fs::hard_link(&passwd, root.join("usr/bin/chfn")).unwrap();
    let home = ws.mkdir("recipe/rootfs/home/u");
    let profile = ws.write("recipe/rootfs/home/u/.profile", "PS1='$ '\n");
    chmod(&profile, 0o600);
    lchown(&profile, Some(1000), Some(1000)).unwrap();
    symlink("/etc/shadow", home.join("link")).unwrap();
    lchown(home.join("link"), Some(1000), Some(1000)).unwrap();
    chmod(&home, 0o700);
    lchown(&home, Some(1000), Some(1000)).unwrap();
    let sbin = ws.mkdir("recipe/rootfs/usr/local/sbin");
    chmod(&sbin, 0o2775);
    lchown(&sbin, Some(0), Some(50)).unwrap();
    root
}

fn recipe(ws: &Workspace, name: &str, tree_options: &str) -> PathBuf {
    ws.write(
        &format!("recipe/{name}.toml"),
        format!(
            "[image]\nname = \"{name}\"\nversion = \"1\"\n\n[[layer]]\nname = \"root\"\n\
             trees = [{{ src = \"rootfs\", dest = \"/\"{tree_options} }}]\n\n\
             [disk]\nsize = \"8MiB\"\nformats = [\"initramfs\"]\n"
        ),
    )
}

#[test]
fn a_tree_with_host_metadata_keeps_modes_and_owners_and_the_lock_pins_them() {
    if !require_tool("umoci") || !require_tool("cpio") || !require_tool("gzip") {
        return;
    }
    if !is_root() {
        eprintln!("SKIP: only root can give files other owners, and keep them unpacking");
        return;
    }
    let ws = Workspace::new();
    let root = small_root(&ws);
    let store = ws.store("store");
    let kiln = Kiln::new(&store);

    let kept = recipe(&ws, "kept", ", host-metadata = true");
    let (oci, disk) = unpack_both(&ws, &kiln, &store, &kept);
    let host = disk_listing(&root, 0o7777);
    assert_eq!(disk_listing(&oci, 0o7777), host, "umoci unpack differs from the host tree");
    assert_eq!(disk_listing(&disk, 0o7777), host, "the initramfs differs from the host tree");
    assert!(host.iter().any(|l| l.starts_with("etc/shadow 640 0:42 file")), "{host:#?}");
    for line in ["tmp 1777 0:0 dir", "home/u 700 1000:1000 dir", "usr/local/sbin 2775 0:50 dir"] {
        assert!(host.contains(&line.to_string()), "{line} not in {host:#?}");
    }
    assert!(host.iter().any(|l| l.starts_with("usr/bin/passwd 4755 0:0 file")), "{host:#?}");
    assert!(host.iter().any(|l| l.starts_with("home/u/link 777 1000:1000 symlink /etc/shadow")));

    // Without the option the same tree is normalised: a plain checkout's import.
    let normal = recipe(&ws, "normal", "");
    let (oci, _) = unpack_both(&ws, &kiln, &store, &normal);
    let listing = disk_listing(&oci, 0o7777);
    for line in ["tmp 755 0:0 dir", "home/u 755 0:0 dir"] {
        assert!(listing.contains(&line.to_string()), "{line} not in {listing:#?}");
    }
    assert!(listing.iter().any(|l| l.starts_with("etc/shadow 644 0:0 file")), "{listing:#?}");

    // The lock pins what was read: a chown or a chmod alone refuses a --locked build.
    let lock = fs::read_to_string(ws.path("recipe/kept.lock")).unwrap();
    assert!(lock.contains("host-metadata = true"), "{lock}");
    let k = kept.to_str().unwrap();
    kiln.run(&["build", "--locked", k]).ok();
    lchown(ws.path("recipe/rootfs/etc/shadow"), Some(0), Some(0)).unwrap();
    kiln.run(&["build", "--locked", k])
        .fails_with(EXIT_LOCK_MISMATCH)
        .stderr_has(&["input rootfs changed", "keeps the host's modes and owners"]);
    lchown(ws.path("recipe/rootfs/etc/shadow"), Some(0), Some(42)).unwrap();
    kiln.run(&["build", "--locked", k]).ok();
    chmod(&ws.path("recipe/rootfs/tmp"), 0o755);
    kiln.run(&["build", "--locked", k]).fails_with(EXIT_LOCK_MISMATCH).stderr_has(&["rootfs"]);
    // A normalised tree does not see owners at all.
    kiln.run(&["build", "--locked", normal.to_str().unwrap()]).ok();
    lchown(ws.path("recipe/rootfs/etc/shadow"), Some(0), Some(7)).unwrap();
    kiln.run(&["build", "--locked", normal.to_str().unwrap()]).ok();
}

/// Makes a device node or FIFO at `path` with `mknod`.
fn mknod(path: &Path, args: &[&str]) {
    let mut all = vec![path.to_str().unwrap()];
    all.extend_from_slice(args);
    sh("mknod", &all);
}

#[test]
fn devices_come_only_from_an_input_that_says_so() {
    if !require_tool("umoci") || !require_tool("cpio") || !require_tool("tar") {
        return;
    }
    if !is_root() {
        eprintln!("SKIP: only root can make device nodes");
        return;
    }
    let ws = Workspace::new();
    let root = ws.mkdir("recipe/rootfs");
    ws.write("recipe/rootfs/etc/motd", "hi\n");
    ws.mkdir("recipe/rootfs/dev");
    ws.mkdir("recipe/rootfs/run");
    mknod(&root.join("dev/null"), &["-m", "666", "c", "1", "3"]);
    mknod(&root.join("dev/loop0"), &["-m", "660", "b", "7", "0"]);
    lchown(root.join("dev/loop0"), Some(0), Some(6)).unwrap();
    mknod(&root.join("run/initctl"), &["-m", "600", "p"]);
    let tarball = ws.path("recipe/root.tar.gz");
    sh(
        "tar",
        &["--numeric-owner", "-czf", tarball.to_str().unwrap(), "-C", root.to_str().unwrap(), "."],
    );
    let host = disk_listing(&root, 0o7777);
    assert!(host.contains(&"dev/null 666 0:0 char 1:3".to_string()), "{host:#?}");

    // Refused by default, naming the path and the option, with nothing stored.
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    let tree = recipe(&ws, "tree", ", host-metadata = true");
    kiln.run(&["build", tree.to_str().unwrap()])
        .fails_with(1)
        .stderr_has(&["rootfs/dev/loop0 is a device node", "devices = true"]);
    let tar_recipe = |name: &str, options: &str| {
        ws.write(
            &format!("recipe/{name}.toml"),
            format!(
                "[image]\nname = \"{name}\"\nversion = \"1\"\n\n[[layer]]\nname = \"root\"\n\
                 tarballs = [{{ src = \"root.tar.gz\", dest = \"/\"{options} }}]\n\n\
                 [disk]\nsize = \"8MiB\"\nformats = [\"initramfs\"]\n"
            ),
        )
    };
    let tar = tar_recipe("tar", "");
    kiln.run(&["build", tar.to_str().unwrap()]).fails_with(1).stderr_has(&[
        "root.tar.gz",
        "\"./dev/loop0\" is a device node",
        "devices = true",
    ]);
    assert!(support::blobs(&store).is_empty(), "a refused build stored blobs");

    // Allowed, they reach the image and the disk as they are on the host.
    let tree = recipe(&ws, "tree-devices", ", host-metadata = true, devices = true");
    let (oci, disk) = unpack_both(&ws, &kiln, &store, &tree);
    assert_eq!(disk_listing(&oci, 0o7777), host, "umoci unpack differs from the host tree");
    assert_eq!(disk_listing(&disk, 0o7777), host, "the initramfs differs from the host tree");
    let lock = fs::read_to_string(ws.path("recipe/tree-devices.lock")).unwrap();
    assert!(lock.contains("devices = true"), "{lock}");
    let tar = tar_recipe("tar-devices", ", devices = true");
    let (oci, disk) = unpack_both(&ws, &kiln, &store, &tar);
    assert_eq!(disk_listing(&oci, 0o7777), host, "umoci unpack differs from the host tree");
    assert_eq!(disk_listing(&disk, 0o7777), host, "the initramfs differs from the host tree");
}

/// The Debian minbase root `ci/debian-root` made, or `None` (a skip locally, a failure in CI).
fn debian_root() -> Option<PathBuf> {
    let root = std::env::var_os("KILN_DEBIAN_ROOT").map(PathBuf::from);
    match root {
        Some(r) if r.join("etc/debian_version").is_file() => Some(r),
        _ => {
            assert!(!support::in_ci(), "KILN_DEBIAN_ROOT is not set up: run ci/debian-root DIR");
            eprintln!("SKIP: set KILN_DEBIAN_ROOT to a folder made by ci/debian-root");
            None
        }
    }
}

#[test]
fn a_debian_root_imports_the_same_as_a_tree_and_as_a_tarball_and_runs_bash() {
    let Some(cached) = debian_root() else {
        return;
    };
    if !require_tool("umoci") || !require_tool("tar") || !require_tool("chroot") {
        return;
    }
    if !is_root() {
        eprintln!("SKIP: a root filesystem's owners and device nodes are copied only by root");
        return;
    }
    let ws = Workspace::new();
    ws.mkdir("recipe");
    let root = ws.path("recipe/rootfs");
    sh("cp", &["-a", cached.to_str().unwrap(), root.to_str().unwrap()]);
    let tarball = ws.path("recipe/root.tar");
    let (tarball, root_str) = (tarball.to_str().unwrap(), root.to_str().unwrap());
    sh("tar", &["--numeric-owner", "-cf", tarball, "-C", root_str, "."]);
    let host = disk_listing(&root, 0o7777);
    for want in ["etc/shadow 640 0:42 file", "tmp 1777 0:0 dir", "usr/bin/passwd 4755 0:0 file"] {
        assert!(host.iter().any(|l| l.starts_with(want)), "{want}: not in the Debian root");
    }
    assert!(host.iter().any(|l| l.starts_with("dev/null 666 0:0 char 1:3")));
    assert!(host.iter().any(|l| l.ends_with("symlink /usr/share/zoneinfo/Etc/UTC")));

    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    for (name, input) in [
        (
            "debian-tree",
            "trees = [{ src = \"rootfs\", dest = \"/\", host-metadata = true, devices = true }]",
        ),
        ("debian-tarball", "tarballs = [{ src = \"root.tar\", dest = \"/\", devices = true }]"),
    ] {
        let recipe = ws.write(
            &format!("recipe/{name}.toml"),
            format!("[image]\nname = \"{name}\"\nversion = \"1\"\n\n[[layer]]\nname = \"root\"\n{input}\n"),
        );
        let report = kiln.build(&recipe, &[]);
        let unpacked = umoci_unpack(&ws, &kiln, &report);
        let listing = disk_listing(&unpacked, 0o7777);
        if listing != host {
            let missing: Vec<_> = host.iter().filter(|l| !listing.contains(l)).take(10).collect();
            let extra: Vec<_> = listing.iter().filter(|l| !host.contains(l)).take(10).collect();
            panic!("{name}: umoci unpack differs from the root\nhost only: {missing:#?}\nimage only: {extra:#?}");
        }
        let ran = sh(
            "chroot",
            &[
                unpacked.to_str().unwrap(),
                "/bin/bash",
                "-c",
                "echo KILN-CHROOT $(id -u) $(stat -c %a /usr/bin/passwd)",
            ],
        );
        assert_eq!(ran.trim(), "KILN-CHROOT 0 4755", "{name}");
    }
}

#![allow(clippy::unwrap_used)]
//! Multi-layer images: what `umoci unpack` makes of the OCI layers is exactly the tree of the
//! disk images kiln flattens from the same recipe (the initramfs, extracted with `cpio`), modes
//! and owners included. An upper layer's implicit parent directories keep what the lower
//! layers made them.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::fs_model::disk_listing;
use support::{is_root, require_tool, sh, Kiln, Workspace};

/// Builds `recipe` (written to `ws/NAME.toml`, with `[disk] formats = ["initramfs"]`), then
/// returns the folder `umoci unpack` made of the image and the folder the initramfs extracts to.
fn unpack_both(ws: &Workspace, name: &str, recipe: &str) -> (PathBuf, PathBuf) {
    let recipe = format!(
        "[image]\nname = \"{name}\"\nversion = \"1\"\n{recipe}\n\
         [disk]\nsize = \"8MiB\"\nformats = [\"initramfs\"]\n"
    );
    let path = ws.write(&format!("{name}.toml"), recipe);
    let store = ws.store(&format!("store-{name}"));
    let kiln = Kiln::new(&store);
    let report = kiln.build(&path, &[]);
    let layout = ws.path(&format!("layout-{name}"));
    kiln.run(&["export", &format!("{name}:1"), "--oci-layout", layout.to_str().unwrap()]).ok();
    let bundle = ws.path(&format!("bundle-{name}"));
    let image = format!("{}:1", layout.display());
    sh("umoci", &["unpack", "--image", &image, bundle.to_str().unwrap()]);

    let blob = |digest: &str| store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let disk = report["disks"][0]["digest"].as_str().expect("a disk artifact");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(disk)).unwrap()).unwrap();
    let initramfs = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let extracted = ws.mkdir(&format!("initramfs-{name}"));
    sh(
        "sh",
        &[
            "-c",
            &format!(
                "cd {} && gzip -dc {} | cpio -idm --quiet --no-absolute-filenames",
                extracted.display(),
                initramfs.display()
            ),
        ],
    );
    (bundle.join("rootfs"), extracted)
}

fn mode_of(root: &Path, rel: &str) -> String {
    let line = disk_listing(root, 0o7777)
        .into_iter()
        .find(|l| l.split(' ').next() == Some(rel))
        .unwrap_or_else(|| panic!("{rel} missing under {}", root.display()));
    line.split(' ').skip(1).take(2).collect::<Vec<_>>().join(" ")
}

/// Paths with the `MODE UID:GID` they must have.
type Modes = &'static [(&'static str, &'static str)];

/// Each case: a recipe's layers, and paths whose mode and owner must come from a lower layer.
const CASES: &[(&str, &str, Modes)] = &[
    (
        "dirs",
        "[[layer]]\nname = \"base\"\n\
         dirs = [{ dest = \"/tmp\", mode = 0o1777 }, \
                 { dest = \"/home/u\", mode = 0o700, uid = 1000, gid = 1000 }]\n\
         [[layer]]\nname = \"app\"\n\
         inline = [{ dest = \"/tmp/x\", content = \"x\" }, \
                   { dest = \"/home/u/.profile\", content = \"\" }]\n",
        &[("tmp", "1777 0:0"), ("home/u", "700 1000:1000")],
    ),
    (
        "trees",
        "[[layer]]\nname = \"base\"\n\
         dirs = [{ dest = \"/srv\", mode = 0o750, uid = 7, gid = 8 }, \
                 { dest = \"/opt/a/b\", mode = 0o711, uid = 5, gid = 5 }]\n\
         [[layer]]\nname = \"middle\"\n\
         symlinks = [{ dest = \"/opt/a/b/c/link\", target = \"../..\" }]\n\
         [[layer]]\nname = \"site\"\n\
         trees = [{ src = \"site\", dest = \"/srv/www\" }]\n\
         inline = [{ dest = \"/opt/a/b/c/d/e\", content = \"e\" }, \
                   { dest = \"/opt/.wh.gone\", content = \"\" }]\n",
        &[("srv", "750 7:8"), ("opt/a/b", "711 5:5"), ("opt/a/b/c", "755 0:0")],
    ),
];

#[test]
fn umoci_unpack_and_the_initramfs_hold_the_same_tree() {
    if !require_tool("umoci") || !require_tool("cpio") || !require_tool("gzip") {
        return;
    }
    if !is_root() {
        eprintln!("SKIP: owners survive `umoci unpack` and `cpio -i` only as root");
        return;
    }
    let ws = Workspace::new();
    ws.write("site/index.html", "<p>hi</p>\n");
    ws.write("site/css/a.css", "p{}\n");
    for (name, recipe, inherited) in CASES {
        let (oci, disk) = unpack_both(&ws, name, recipe);
        let from_oci = disk_listing(&oci, 0o7777);
        let from_disk = disk_listing(&disk, 0o7777);
        assert_eq!(from_oci, from_disk, "{name}: the OCI image and the disk disagree");
        for (path, want) in *inherited {
            assert_eq!(mode_of(&oci, path), *want, "{name}: {path} in the OCI image");
        }
    }
}

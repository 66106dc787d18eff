#![allow(clippy::unwrap_used)]
//! Disk images: kiln's own erofs writer checked with erofs-utils (`fsck.erofs`, `dump.erofs`):
//! the extracted and mounted trees equal the model, hard links share an inode, and two builds are
//! bit-identical.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_compress::{compress, Compression};
use kiln_disk::cpio::write_cpio;
use kiln_disk::erofs::write_erofs;
use kiln_disk::gpt::{
    derive_guid, write_gpt, Arch, GptError, Guid, Partition, PartitionData, PartitionType,
};
use kiln_disk::layout::DiskPlan;
use kiln_disk::qcow2::{write_qcow2, Qcow2Layout};
use kiln_disk::verity::{salt_from, write_verity, VerityTree};
use kiln_disk::vhd;
use kiln_oci::Digest;
use kiln_tree::{Content, EntryKind, Epoch, HostFile, ImagePath, Tree};
use support::fs_model::{
    bytes, disk_listing, fixture, fixture_xattrs, meta, model_listing, mount_ro, put, same,
    FIXTURE_XATTRS,
};
use support::{is_root, require_tool, sh, Kiln, Workspace};

fn erofs_bytes(tree: &Tree) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    let image = write_erofs(tree, Epoch::new(1_700_000_000).unwrap(), &mut cursor).unwrap();
    let bytes = cursor.into_inner();
    assert_eq!(bytes.len() as u64, image.size);
    assert_eq!(&bytes[1024 + 48..1024 + 64], &image.uuid);
    bytes
}

#[test]
fn erofs_is_accepted_by_erofs_utils_and_holds_the_model() {
    if !require_tool("fsck.erofs") || !require_tool("dump.erofs") {
        return;
    }
    let ws = Workspace::new();
    let tree = fixture(&ws);
    let bytes = erofs_bytes(&tree);
    assert_eq!(bytes, erofs_bytes(&tree), "two builds of one tree differ");
    let image = ws.write("root.erofs", &bytes);
    let image = image.to_str().unwrap();
    sh("fsck.erofs", &[image]);

    // Hard links are one inode.
    let nid = |path: &str| {
        let out = sh("dump.erofs", &[&format!("--path={path}"), image]);
        out.lines().find(|l| l.contains("NID")).unwrap_or_default().to_string()
    };
    assert_eq!(nid("/etc/motd"), nid("/etc/motd.link"));
    assert_ne!(nid("/etc/motd"), nid("/etc/empty"));
    assert!(sh("dump.erofs", &["-s", image]).contains("Filesystem UUID"));

    if !is_root() {
        eprintln!("SKIP: extraction with owners needs root");
        return;
    }
    let mut model = model_listing(&tree, 0o7777);
    model.sort();
    // erofs-utils 1.5 extracts by chmod then chown, which drops setuid/setgid; compare the
    // extraction without those bits and the kernel's view (when it can mount) with them.
    let mut model_no_suid = model_listing(&tree, 0o1777);
    model_no_suid.sort();
    let out = ws.path("extracted");
    sh("fsck.erofs", &[&format!("--extract={}", out.display()), image]);
    same(&disk_listing(&out, 0o1777), &model_no_suid);

    let mnt = ws.mkdir("mnt");
    if mount_ro("erofs", Path::new(image), &mnt) {
        let listing = disk_listing(&mnt, 0o7777);
        let xattrs = fixture_xattrs(&mnt);
        sh("umount", &[mnt.to_str().unwrap()]);
        same(&listing, &model);
        assert_eq!(xattrs, FIXTURE_XATTRS);
    }
}

#[test]
fn erofs_changes_with_content_and_refuses_what_it_cannot_store() {
    let ws = Workspace::new();
    let tree = fixture(&ws);
    let a = erofs_bytes(&tree);
    let mut other = fixture(&ws);
    put(&mut other, "/extra", bytes(b"x".to_vec()), meta(0o644, 0, 0));
    let b = erofs_bytes(&other);
    assert_ne!(a[1024 + 48..1024 + 64], b[1024 + 48..1024 + 64], "UUID follows content");

    // A host file that changed since it was hashed.
    let mut changed = Tree::new();
    let host = ws.write("later", b"before");
    let content = Content::Host(HostFile::new(host.clone(), 6, Digest::of(b"before")));
    put(&mut changed, "/f", EntryKind::File(content), meta(0o644, 0, 0));
    fs::write(&host, b"after!").unwrap();
    let err = write_erofs(&changed, Epoch::new(0).unwrap(), &mut std::io::Cursor::new(Vec::new()))
        .unwrap_err();
    assert!(support::chain(&err).contains("when it was hashed"), "{err}");

    let mut odd = Tree::new();
    let mut m = meta(0o644, 0, 0);
    m.xattrs.insert("system.nfs4_acl".into(), b"x".to_vec());
    put(&mut odd, "/f", bytes(Vec::new()), m);
    let err = write_erofs(&odd, Epoch::new(0).unwrap(), &mut std::io::Cursor::new(Vec::new()))
        .unwrap_err();
    assert!(support::chain(&err).contains("\"system.nfs4_acl\""), "{err}");

    // A name erofs could not store never reaches it: image paths refuse it.
    let err = ImagePath::parse(&format!("/{}", "n".repeat(256))).unwrap_err();
    assert!(support::chain(&err).contains("at most 255"), "{err}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the hash device for `data` with 2 threads and returns it with the tree description,
/// after checking that 1 and 3 threads write the same.
fn verity(data: &[u8], seed: &[u8]) -> (Vec<u8>, VerityTree) {
    let write = |threads| {
        let mut hash = Vec::new();
        let tree =
            write_verity(data, data.len() as u64, salt_from(seed), threads, &mut hash).unwrap();
        assert_eq!(hash.len() as u64, tree.hash_size);
        (hash, tree)
    };
    let out = write(2);
    assert!(write(1) == out && write(3) == out, "the thread count changed the hash tree");
    out
}

#[test]
fn verity_hash_tree_is_accepted_by_veritysetup() {
    if !require_tool("veritysetup") {
        return;
    }
    let ws = Workspace::new();
    let erofs = erofs_bytes(&fixture(&ws));
    // One level (the erofs image), two levels (> 128 blocks), several hashing batches of
    // 8 MiB, and a single block (no tree).
    let noise = |blocks: u32| -> Vec<u8> {
        (0..blocks * 4096).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    };
    let cases =
        [("erofs", erofs), ("big", noise(300)), ("batches", noise(4500)), ("one", vec![7u8; 4096])];
    for (name, data) in cases {
        let (hash, tree) = verity(&data, name.as_bytes());
        assert_eq!(
            verity(&data, name.as_bytes()),
            (hash.clone(), tree.clone()),
            "{name}: not reproducible"
        );
        let data_path = ws.write(&format!("{name}.data"), &data);
        let hash_path = ws.write(&format!("{name}.hash"), &hash);
        let (d, h) = (data_path.to_str().unwrap(), hash_path.to_str().unwrap());
        let root = hex(&tree.root_hash);
        sh("veritysetup", &["verify", d, h, &root]);
        let salt = format!("--salt={}", hex(&tree.salt));
        sh("veritysetup", &["verify", "--no-superblock", "--hash-offset=4096", &salt, d, h, &root]);
        let dump = sh("veritysetup", &["dump", h]);
        assert!(dump.contains(&hex(&tree.salt)), "{dump}");

        // A changed data block fails verification.
        let mut bad = data.clone();
        bad[data.len() - 1] ^= 1;
        fs::write(&data_path, &bad).unwrap();
        let status = std::process::Command::new("veritysetup")
            .args(["verify", d, h, &root])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "{name}: corrupted data verified");
    }
    let (_, a) = verity(&[0u8; 8192], b"seed a");
    let (_, b) = verity(&[0u8; 8192], b"seed b");
    assert_ne!(a.salt, b.salt);
    assert!(write_verity(&[0u8; 100][..], 100, [0; 32], 2, Vec::new()).is_err());
}

/// The raw disk, the erofs image and the hash tree in it.
type Disk = (Vec<u8>, Vec<u8>, Vec<u8>);

/// A GPT disk holding an erofs root and its verity hash partition, with the bytes of each.
fn gpt_disk(ws: &Workspace, size: u64) -> Result<Disk, GptError> {
    let erofs = erofs_bytes(&fixture(ws));
    let (hash, tree) = verity(&erofs, b"seed");
    // As the Discoverable Partitions Specification suggests: the root hash names both.
    let root_guid = Guid::from_be(tree.root_hash[..16].try_into().unwrap());
    let verity_guid = Guid::from_be(tree.root_hash[16..].try_into().unwrap());
    let disk_guid = derive_guid("disk", &tree.root_hash);
    let (mut a, mut b) = (&erofs[..], &hash[..]);
    let mut parts = [
        Partition {
            kind: PartitionType::Root(Arch::X86_64),
            guid: root_guid,
            label: "root-x86-64".into(),
            size: erofs.len() as u64,
            data: PartitionData::Read(&mut a),
        },
        Partition {
            kind: PartitionType::RootVerity(Arch::X86_64),
            guid: verity_guid,
            label: "root-x86-64-verity ☃".into(),
            size: hash.len() as u64,
            data: PartitionData::Read(&mut b),
        },
    ];
    let mut raw = Vec::new();
    write_gpt(size, disk_guid, &mut parts, &mut raw)?;
    assert_eq!(raw.len() as u64, size);
    Ok((raw, erofs, hash))
}

#[test]
fn gpt_raw_and_vhd_are_accepted_by_partitioning_tools_and_qemu() {
    if !require_tool("sfdisk") || !require_tool("sgdisk") || !require_tool("qemu-img") {
        return;
    }
    let ws = Workspace::new();
    let size = 8 << 20;
    let (raw, erofs, hash) = gpt_disk(&ws, size).unwrap();
    assert_eq!(gpt_disk(&ws, size).unwrap().0, raw, "two builds differ");
    let raw_path = ws.write("disk.raw", &raw);
    let r = raw_path.to_str().unwrap();

    let dump = sh("sfdisk", &["--dump", r]);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(dump.contains("type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"), "{dump}");
    assert!(dump.contains("type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"), "{dump}");
    assert!(dump.contains("name=\"root-x86-64\""), "{dump}");
    assert!(dump.contains("start=        2048"), "{dump}");
    let verify = sh("sgdisk", &["-v", r]);
    assert!(verify.contains("No problems found"), "{verify}");
    let info = sh("sgdisk", &["-i", "2", r]);
    assert!(info.contains("root-x86-64-verity ☃"), "{info}");

    // The partitions hold exactly the filesystem and the hash tree.
    assert_eq!(&raw[1 << 20..(1 << 20) + erofs.len()], &erofs[..]);
    let verity_at = ((1 << 20) + erofs.len()).next_multiple_of(1 << 20);
    assert_eq!(&raw[verity_at..verity_at + hash.len()], &hash[..]);

    // Fixed VHD: raw + footer; qemu reads it back as the same disk.
    let guid = Guid::parse("0b4c5d2e-0000-4000-8000-000000000001").unwrap();
    let mut vhd = raw.clone();
    vhd.extend_from_slice(&vhd::footer(size, Epoch::new(1_700_000_000).unwrap(), guid.to_be()));
    let vhd_path = ws.write("disk.vhd", &vhd);
    let v = vhd_path.to_str().unwrap();
    let info = sh("qemu-img", &["info", "--output=json", "-f", "vpc", v]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], size, "{info}");
    let back = ws.path("back.raw");
    sh("qemu-img", &["convert", "-f", "vpc", "-O", "raw", v, back.to_str().unwrap()]);
    assert!(fs::read(&back).unwrap() == raw, "the VHD does not read back as the raw disk");

    // Too small a disk for the content is a clear error.
    let err = gpt_disk(&ws, 2 << 20).unwrap_err();
    assert!(support::chain(&err).contains("raise [disk] size"), "{err}");
}

#[test]
fn qcow2_is_accepted_by_qemu_img_and_reads_back_as_the_raw_disk() {
    if !require_tool("qemu-img") {
        return;
    }
    let ws = Workspace::new();
    let (raw, erofs, hash) = gpt_disk(&ws, (8 << 20) + 4096).unwrap();
    // Only the planned content is stored: the GPTs, the root and its hash tree.
    let plan =
        DiskPlan::new(raw.len() as u64, None, erofs.len() as u64, Some(hash.len() as u64)).unwrap();
    let qcow2 = |raw: &[u8]| {
        let layout = Qcow2Layout::new(raw.len() as u64, &plan.extents).unwrap();
        let mut out = Vec::new();
        let len = write_qcow2(&layout, std::io::Cursor::new(raw), &mut out).unwrap();
        assert_eq!(out.len() as u64, len);
        out
    };
    let image = qcow2(&raw);
    assert_eq!(qcow2(&raw), image, "two builds differ");
    assert!(image.len() < raw.len() / 2, "zero clusters are not stored");
    let path = ws.write("disk.qcow2", &image);
    let p = path.to_str().unwrap();
    sh("qemu-img", &["check", "-f", "qcow2", p]);
    let info = sh("qemu-img", &["info", "--output=json", p]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], raw.len(), "{info}");
    let back = ws.path("back.raw");
    sh("qemu-img", &["convert", "-f", "qcow2", "-O", "raw", p, back.to_str().unwrap()]);
    assert!(fs::read(&back).unwrap() == raw, "the qcow2 does not read back as the raw disk");

    // A 64 GiB disk holding the same content (a sparse raw file): the qcow2 stays small, as
    // it maps only the L2 tables that hold content, and qemu reads it back as the raw disk.
    let big = 64u64 << 30;
    let sparse = ws.path("big.raw");
    let file = fs::File::create(&sparse).unwrap();
    file.set_len(big).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &raw[..raw.len() - 17_408], 0).unwrap();
    let tail = raw.len() - 16_896;
    std::os::unix::fs::FileExt::write_all_at(&file, &raw[tail..], big - 16_896).unwrap();
    let mut extents = plan.extents.clone();
    extents.retain(|e| e.end <= (raw.len() - 17_408) as u64);
    extents.push(big - 16_896..big);
    let layout = Qcow2Layout::new(big, &extents).unwrap();
    let image = ws.path("big.qcow2");
    let out = fs::File::create(&image).unwrap();
    write_qcow2(&layout, fs::File::open(&sparse).unwrap(), std::io::BufWriter::new(out)).unwrap();
    assert!(fs::metadata(&image).unwrap().len() < 4 << 20, "empty L2 tables were stored");
    let (i, s) = (image.to_str().unwrap(), sparse.to_str().unwrap());
    sh("qemu-img", &["check", "-f", "qcow2", i]);
    let same = sh("qemu-img", &["compare", "-f", "qcow2", "-F", "raw", i, s]);
    assert!(same.contains("Images are identical"), "{same}");
}

/// A recipe with two layers (the second whites out a file of the first) and a `[disk]` table.
fn disk_recipe(ws: &Workspace, size: &str) -> std::path::PathBuf {
    disk_recipe_with(ws, size, "erofs", "")
}

/// [`disk_recipe`] with the given root filesystem and extra `[disk]` lines.
fn disk_recipe_with(ws: &Workspace, size: &str, root: &str, extra: &str) -> std::path::PathBuf {
    ws.write("recipe/app.txt", "app\n");
    ws.write(
        "recipe/recipe.toml",
        format!(
            "epoch = 1700000000\n[image]\nname = \"vm\"\nversion = \"1\"\n\n\
             [[layer]]\nname = \"base\"\n\
             inline = [{{ dest = \"/etc/motd\", content = \"hi\\n\" }}, {{ dest = \"/etc/old\", content = \"x\" }}]\n\
             dirs = [{{ dest = \"/home/u\", mode = 0o700, uid = 1000, gid = 1000 }}]\n\
             [[layer]]\nname = \"app\"\n\
             files = [{{ src = \"app.txt\", dest = \"/usr/bin/app\", mode = 0o4755 }}]\n\
             inline = [{{ dest = \"/etc/.wh.old\", content = \"\" }}]\n\
             symlinks = [{{ dest = \"/bin/sh\", target = \"/usr/bin/app\" }}]\n\n\
             [disk]\nsize = \"{size}\"\nroot = \"{root}\"\nverity = true\n{ALL_FORMATS}\n\
             {extra}"
        ),
    )
}

/// The `formats` line [`disk_recipe_with`] writes.
const ALL_FORMATS: &str = "formats = [\"raw\", \"qcow2\", \"vhd\", \"gce\", \"initramfs\"]";

/// Replaces `from` with `to` in the recipe file, which must contain it.
fn edit_recipe(recipe: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(recipe).unwrap();
    assert!(text.contains(from), "{from:?} is not in the recipe");
    fs::write(recipe, text.replace(from, to)).unwrap();
}

#[test]
fn kiln_build_attaches_disk_images_that_tools_accept() {
    let tools = ["sgdisk", "qemu-img", "veritysetup", "fsck.erofs"];
    if !tools.iter().all(|t| require_tool(t)) {
        return;
    }
    let ws = Workspace::new();
    let recipe = disk_recipe(&ws, "8MiB");
    let store = ws.store("a");
    let kiln = Kiln::new(&store);
    let report = kiln.build(&recipe, &[]);
    let disk = report["disks"][0]["digest"].as_str().unwrap().to_string();
    let root_hash = report["disks"][0]["annotations"]["dev.kiln.disk.verity.root-hash"]
        .as_str()
        .unwrap()
        .to_string();
    let inspect = kiln.run(&["inspect", "vm:1"]).ok();
    assert!(inspect.stdout.contains(&format!("referrer disk {disk}")), "{}", inspect.stdout);
    assert!(inspect.stdout.contains(&root_hash), "{}", inspect.stdout);

    let blob = |digest: &str| store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&disk)).unwrap()).unwrap();
    assert_eq!(manifest["artifactType"], "application/vnd.kiln.disk.v1");
    assert_eq!(manifest["subject"]["digest"], report["manifests"][0]["digest"]);
    let layers = manifest["layers"].as_array().unwrap();
    let types: Vec<_> = layers.iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "application/vnd.kiln.disk.raw.v1",
            "application/vnd.kiln.disk.qcow2.v1",
            "application/vnd.kiln.disk.vhd.v1",
            "application/vnd.kiln.disk.gce.v1.tar+gzip",
            "application/vnd.kiln.initramfs.v1.cpio+gzip"
        ]
    );
    let path = |i: usize| blob(layers[i]["digest"].as_str().unwrap());
    let raw = path(0);
    let verify = sh("sgdisk", &["-v", raw.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");
    sh("qemu-img", &["check", "-f", "qcow2", path(1).to_str().unwrap()]);
    sh("qemu-img", &["info", "-f", "vpc", path(2).to_str().unwrap()]);
    // GCE: exactly one member, disk.raw, holding the raw disk.
    let gce = path(3);
    let members = sh("tar", &["-tzf", gce.to_str().unwrap()]);
    assert_eq!(members, "disk.raw\n");
    let unpacked = ws.mkdir("gce");
    sh("tar", &["-xzf", gce.to_str().unwrap(), "-C", unpacked.to_str().unwrap()]);
    assert!(fs::read(unpacked.join("disk.raw")).unwrap() == fs::read(&raw).unwrap());
    // The initramfs holds the flattened root filesystem.
    let listing = sh("sh", &["-c", &format!("gzip -dc {} | cpio -t --quiet", path(4).display())]);
    assert_eq!(listing, "bin\nbin/sh\netc\netc/motd\nhome\nhome/u\nusr\nusr/bin\nusr/bin/app\n");

    // The partitions: erofs at 1 MiB (fsck accepts it, the whiteout removed /etc/old), then
    // its hash tree, which veritysetup checks against the recorded root hash.
    let bytes = fs::read(&raw).unwrap();
    let blocks =
        u32::from_le_bytes(bytes[(1 << 20) + 1024 + 36..(1 << 20) + 1024 + 40].try_into().unwrap())
            as usize;
    let erofs = &bytes[1 << 20..(1 << 20) + blocks * 4096];
    let erofs_path = ws.write("root.erofs", erofs);
    sh("fsck.erofs", &[erofs_path.to_str().unwrap()]);
    let listing = sh("dump.erofs", &["--ls", "--path=/etc", erofs_path.to_str().unwrap()]);
    assert!(listing.contains("motd") && !listing.contains("old"), "{listing}");
    let verity_at = ((1 << 20) + erofs.len()).next_multiple_of(1 << 20);
    let hash_path = ws.write("root.verity", &bytes[verity_at..verity_at + (64 << 10)]);
    sh(
        "veritysetup",
        &["verify", erofs_path.to_str().unwrap(), hash_path.to_str().unwrap(), &root_hash],
    );

    // kiln export --disk writes the files under their names.
    let out = ws.path("exported");
    kiln.run(&["export", "vm:1", "--disk", out.to_str().unwrap()]).ok();
    for (i, name) in ["disk.raw", "disk.qcow2", "disk.vhd"].iter().enumerate() {
        assert!(fs::read(out.join(name)).unwrap() == fs::read(path(i)).unwrap(), "{name}");
    }

    // kiln copy carries the disk artifact to another store, where export finds it.
    let copied = ws.store("copied");
    let (from, to) = (store.to_str().unwrap(), copied.to_str().unwrap());
    kiln.run(&["copy", "vm:1", "--from", from, "--to", to]).ok();
    let out2 = ws.path("exported-from-copy");
    Kiln::new(&copied).run(&["export", "vm:1", "--disk", out2.to_str().unwrap()]).ok();
    assert!(fs::read(out2.join("disk.qcow2")).unwrap() == fs::read(path(1)).unwrap());

    // An unchanged rebuild takes the disks from the cache and uploads nothing; with one of
    // its blobs gone from the store, the cache entry no longer counts and the disks are made
    // again, identical.
    assert_eq!(report["disksReused"], 0);
    let noop = kiln.build(&recipe, &[]);
    assert_eq!((&noop["disksReused"], &noop["blobs"]["uploaded"]), (&1.into(), &0.into()));
    assert_eq!(noop["disks"][0]["digest"], report["disks"][0]["digest"]);
    fs::remove_file(path(1)).unwrap();
    let remade = kiln.build(&recipe, &[]);
    assert_eq!(remade["disksReused"], 0);
    assert_eq!(remade["disks"][0]["digest"], report["disks"][0]["digest"]);
    sh("qemu-img", &["check", "-f", "qcow2", path(1).to_str().unwrap()]);

    // Another store, another build: the same disk artifact.
    let again = Kiln::new(&ws.store("b")).build(&recipe, &[]);
    assert_eq!(again["disks"][0]["digest"], report["disks"][0]["digest"]);

    // A disk too small for its content fails with a clear message.
    let small = disk_recipe(&ws, "1MiB");
    kiln.run(&["build", small.to_str().unwrap()]).fails().stderr_has(&["raise [disk] size"]);

    // A layer whose whiteout names the parent directory is refused, not applied.
    let escaping = ws.write(
        "escape/recipe.toml",
        "[image]\nname = \"esc\"\nversion = \"1\"\n[[layer]]\nname = \"l\"\n\
         inline = [{ dest = \"/etc/.wh...\", content = \"\" }]\n[disk]\nsize = \"8MiB\"\n",
    );
    let no_disk = ws.write("plain/recipe.toml", "[image]\nname = \"plain\"\nversion = \"1\"\n");
    kiln.build(&no_disk, &[]);
    kiln.run(&["export", "plain:1", "--disk", out.to_str().unwrap()])
        .fails()
        .stderr_has(&["has no disk images", "[disk]"]);

    kiln.run(&["build", escaping.to_str().unwrap()]).fails().stderr_has(&[
        "whiteout /etc/.wh...",
        "\"..\"",
        "refused",
    ]);
}

#[test]
fn disk_artifacts_do_not_depend_on_the_build_conditions() {
    if !require_tool("mke2fs") || !require_tool("debugfs") {
        return;
    }
    for root in ["erofs", "squashfs", "ext4"] {
        disk_artifacts_do_not_depend_on_the_build_conditions_with(root);
    }
}

fn disk_artifacts_do_not_depend_on_the_build_conditions_with(root: &str) {
    let ws = Workspace::new();
    // With an ESP holding a file of the image, so the FAT is covered too.
    let esp = "[disk.esp]\nsize = \"4MiB\"\nfiles = { \"EFI/BOOT/APP.EFI\" = \"/usr/bin/app\" }\n";
    let recipe = disk_recipe_with(&ws, "24MiB", root, esp);
    let disk =
        |report: serde_json::Value| report["disks"][0]["digest"].as_str().unwrap().to_string();
    let reference = disk(Kiln::new(&ws.store("a")).build(&recipe, &[]));

    // Input mtime and permission bits, umask, time zone, locale, working directory, thread
    // count and store kind all vary at once.
    let app = ws.path("recipe/app.txt");
    support::touch_at(&app, "2030-12-31 23:59:59");
    fs::set_permissions(&app, fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere = ws.mkdir("elsewhere");
    let varied = Kiln::new(Path::new("memory://"))
        .umask("077")
        .env("TZ", "Pacific/Kiritimati")
        .env("LC_ALL", "tr_TR.UTF-8")
        .cwd(&elsewhere)
        .build(&recipe, &["--threads", "1"]);
    assert_eq!(disk(varied), reference, "build conditions changed the {root} disk artifact");

    // The epoch is an input: a different one gives different disks.
    let later = Kiln::new(&ws.store("b")).build(&recipe, &["--source-date-epoch", "1700000001"]);
    assert_ne!(disk(later), reference, "the epoch did not reach the {root} disk images");
}

#[test]
fn a_qcow2_written_without_a_raw_disk_is_the_one_made_from_it() {
    let tools = ["qemu-img", "mke2fs", "debugfs"];
    if !tools.iter().all(|t| require_tool(t)) {
        return;
    }
    let esp = "[disk.esp]\nsize = \"4MiB\"\nfiles = { \"EFI/BOOT/APP.EFI\" = \"/usr/bin/app\" }\n";
    // Each root with an ESP and verity; erofs also bare, on a disk size that is not a whole
    // number of qcow2 clusters.
    let cases = [
        ("erofs", esp, "24MiB", true),
        ("squashfs", esp, "24MiB", true),
        ("ext4", esp, "24MiB", true),
        ("erofs", "", "20000KiB", false),
    ];
    for (root, extra, size, verity) in cases {
        let ws = Workspace::new();
        let recipe = disk_recipe_with(&ws, size, root, extra);
        if !verity {
            edit_recipe(&recipe, "verity = true", "verity = false");
        }
        let store = ws.store("a");
        let with_raw = Kiln::new(&store).build(&recipe, &[]);
        let layers = |report: &serde_json::Value| {
            let digest = report["disks"][0]["digest"].as_str().unwrap();
            let manifest = store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
            let manifest: serde_json::Value =
                serde_json::from_slice(&fs::read(manifest).unwrap()).unwrap();
            manifest["layers"].as_array().unwrap().clone()
        };
        let file = |layer: &serde_json::Value| {
            let digest = layer["digest"].as_str().unwrap().trim_start_matches("sha256:");
            store.join("blobs/sha256").join(digest)
        };
        let (raw, via_raw) = {
            let l = layers(&with_raw);
            (file(&l[0]), l[1]["digest"].clone())
        };

        // The same recipe asking for the qcow2 alone, built on one thread under a tight umask.
        edit_recipe(&recipe, ALL_FORMATS, "formats = [\"qcow2\"]");
        let alone = Kiln::new(&store).umask("077").build(&recipe, &["--threads", "1"]);
        assert_eq!(alone["disksReused"], 0, "{alone}");
        let l = layers(&alone);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0]["mediaType"], "application/vnd.kiln.disk.qcow2.v1");
        assert_eq!(l[0]["digest"], via_raw, "the {root} qcow2 depends on how it was written");
        assert_eq!(
            alone["disks"][0]["annotations"], with_raw["disks"][0]["annotations"],
            "the {root} root hash differs"
        );
        let qcow2 = file(&l[0]);
        sh("qemu-img", &["check", "-f", "qcow2", qcow2.to_str().unwrap()]);
        let same = sh(
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "raw",
                qcow2.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );
        assert!(same.contains("Images are identical"), "{root}: {same}");
    }
}

#[test]
fn an_initramfs_alone_writes_no_disk() {
    let ws = Workspace::new();
    // 2 MiB holds no GPT with this root: a size error would mean a disk was still made.
    let recipe = disk_recipe_with(&ws, "2MiB", "erofs", "");
    edit_recipe(&recipe, ALL_FORMATS, "formats = [\"initramfs\"]");
    let store = ws.store("a");
    let report = Kiln::new(&store).build(&recipe, &[]);
    let disk = &report["disks"][0];
    assert!(disk["annotations"].get("dev.kiln.disk.verity.root-hash").is_none(), "{report}");
    let digest = disk["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("blobs/sha256").join(digest)).unwrap())
            .unwrap();
    let types: Vec<_> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].clone()).collect();
    assert_eq!(types, ["application/vnd.kiln.initramfs.v1.cpio+gzip"]);
}

/// One partition of `sfdisk --json`: (type GUID, name, start sector, sectors).
fn partitions(raw: &Path) -> Vec<(String, String, u64, u64)> {
    let dump: serde_json::Value =
        serde_json::from_str(&sh("sfdisk", &["--json", raw.to_str().unwrap()])).unwrap();
    dump["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["type"].as_str().unwrap().to_lowercase(),
                p["name"].as_str().unwrap_or_default().to_string(),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn squashfs_and_ext4_roots_with_an_esp_labels_and_two_architectures() {
    let tools =
        ["sfdisk", "unsquashfs", "fsck.ext4", "debugfs", "fsck.vfat", "mtype", "veritysetup"];
    if !tools.iter().all(|t| require_tool(t)) {
        return;
    }
    let ws = Workspace::new();
    let recipe = |root: &str, esp_files: &str| {
        ws.write(
            &format!("{root}/recipe.toml"),
            format!(
                "epoch = 1700000000\n[image]\nname = \"vm-{root}\"\nversion = \"1\"\n\
                 platforms = [\"linux/amd64\", \"linux/arm64\"]\n\
                 [[layer]]\nname = \"base\"\n\
                 inline = [{{ dest = \"/usr/lib/boot/loader.efi\", content = \"MZ loader\" }}, \
                 {{ dest = \"/etc/motd\", content = \"hi\\n\" }}]\n\
                 symlinks = [{{ dest = \"/boot.efi\", target = \"usr/lib/boot/loader.efi\" }}]\n\
                 [disk]\nsize = \"40MiB\"\nroot = \"{root}\"\nverity = true\n\
                 labels = {{ root = \"system\", verity = \"system-verity\" }}\n\
                 [disk.esp]\nsize = \"16MiB\"\nfiles = {{ {esp_files} }}\n"
            ),
        )
    };
    let esp_files = "\"EFI/BOOT/BOOTX64.EFI\" = \"/usr/lib/boot/loader.efi\"";
    for root in ["squashfs", "ext4"] {
        let store = ws.store(root);
        let kiln = Kiln::new(&store);
        let report = kiln.build(&recipe(root, esp_files), &[]);
        let disks = report["disks"].as_array().unwrap();
        let platforms: Vec<_> = disks.iter().map(|d| d["platform"].as_str().unwrap()).collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
        let mut raws = Vec::new();
        for (disk, root_type, verity_type) in [
            (
                &disks[0],
                "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
                "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
            ),
            (
                &disks[1],
                "b921b045-1df0-41c3-af44-4c6f280d3fae",
                "df3300ce-d69f-4c92-978c-9bfb0f38d820",
            ),
        ] {
            let blob = |digest: &str| {
                store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
            };
            let manifest: serde_json::Value =
                serde_json::from_slice(&fs::read(blob(disk["digest"].as_str().unwrap())).unwrap())
                    .unwrap();
            let raw = blob(manifest["layers"][0]["digest"].as_str().unwrap());
            raws.push(raw.clone());
            // Zero runs (the disk's free space, the ESP's empty clusters) are holes in the
            // stored raw disk, not written bytes.
            let md = fs::metadata(&raw).unwrap();
            assert!(md.blocks() * 512 < md.len() / 4, "{root}: raw disk not sparse: {md:?}");
            let parts = partitions(&raw);
            let kinds: Vec<_> = parts.iter().map(|p| (p.0.as_str(), p.1.as_str())).collect();
            assert_eq!(
                kinds,
                [
                    ("c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "esp"),
                    (root_type, "system"),
                    (verity_type, "system-verity")
                ],
                "{root}"
            );
            let bytes = fs::read(&raw).unwrap();
            let part = |i: usize| {
                let (_, _, start, sectors) = parts[i];
                &bytes[start as usize * 512..(start + sectors) as usize * 512]
            };
            // The ESP: dosfstools accepts it and mtools reads the file taken from the image.
            let esp = ws.write(&format!("{root}-esp.img"), part(0));
            sh("fsck.vfat", &["-n", esp.to_str().unwrap()]);
            let efi = sh("mtype", &["-i", esp.to_str().unwrap(), "::/EFI/BOOT/BOOTX64.EFI"]);
            assert_eq!(efi, "MZ loader");
            // The root: its own tool accepts it, and veritysetup checks it against the root hash.
            let rootfs = ws.write(&format!("{root}-root.img"), part(1));
            let hash = ws.write(&format!("{root}-root.verity"), part(2));
            let rootfs = rootfs.to_str().unwrap();
            if root == "squashfs" {
                let listing = sh("unsquashfs", &["-lls", rootfs]);
                assert!(listing.contains("squashfs-root/etc/motd"), "{listing}");
            } else {
                sh("fsck.ext4", &["-fn", rootfs]);
                let listing = sh("debugfs", &["-R", "ls -p /etc", rootfs]);
                assert!(listing.contains("/motd/"), "{listing}");
            }
            let root_hash = disk["annotations"]["dev.kiln.disk.verity.root-hash"].as_str().unwrap();
            sh("veritysetup", &["verify", rootfs, hash.to_str().unwrap(), root_hash]);
        }
        // Only the two architectures' partition types differ.
        assert_ne!(fs::read(&raws[0]).unwrap(), fs::read(&raws[1]).unwrap());

        // export --disk needs to be told which platform's disks to write.
        let out = ws.path(&format!("{root}-export"));
        let (reference, out_dir) = (format!("vm-{root}:1"), out.to_str().unwrap());
        kiln.run(&["export", &reference, "--disk", out_dir])
            .fails()
            .stderr_has(&["linux/amd64, linux/arm64", "--platform"]);
        kiln.run(&["export", &reference, "--disk", out_dir, "--platform", "linux/s390x"])
            .fails()
            .stderr_has(&["no disk images for linux/s390x"]);
        kiln.run(&["export", &reference, "--disk", out_dir, "--platform", "linux/arm64"]).ok();
        assert!(fs::read(out.join("disk.raw")).unwrap() == fs::read(&raws[1]).unwrap());
    }

    // An ESP file that is not in the image, or is a symbolic link, is refused by name.
    let kiln = Kiln::new(&ws.store("bad"));
    let missing = recipe("erofs", "\"EFI/BOOT/BOOTX64.EFI\" = \"/usr/lib/boot/nope.efi\"");
    kiln.run(&["build", missing.to_str().unwrap()]).fails().stderr_has(&[
        "ESP file /EFI/BOOT/BOOTX64.EFI",
        "usr/lib/boot/nope.efi",
        "not in the image",
    ]);
    let link = recipe("erofs", "\"EFI/BOOT/BOOTX64.EFI\" = \"/boot.efi\"");
    kiln.run(&["build", link.to_str().unwrap()]).fails().stderr_has(&["symbolic link"]);
    assert!(support::blobs(&ws.store("bad")).is_empty(), "a failed build left blobs behind");
}

#[test]
fn initramfs_cpio_unpacks_to_the_model() {
    if !require_tool("cpio") || !require_tool("gzip") {
        return;
    }
    let ws = Workspace::new();
    let mut tree = fixture(&ws);
    // cpio carries no xattrs; drop them from the model.
    let mut plain = Tree::new();
    for (path, entry) in tree.iter() {
        let mut entry = entry.clone();
        entry.meta.xattrs.clear();
        plain.insert(path.clone(), entry).unwrap();
    }
    tree = plain;
    let archive = |tree: &Tree| {
        let mut raw = Vec::new();
        let len = write_cpio(tree, Epoch::new(1_700_000_000).unwrap(), &mut raw).unwrap();
        assert_eq!(raw.len() as u64, len);
        compress(&Compression::GZIP, 2, &raw[..], Vec::new()).unwrap()
    };
    let gz = archive(&tree);
    assert_eq!(archive(&tree), gz, "two builds differ");
    let gz_path = ws.write("initramfs.cpio.gz", &gz);
    sh("gzip", &["-t", gz_path.to_str().unwrap()]);

    if !is_root() {
        eprintln!("SKIP: unpacking with owners needs root");
        return;
    }
    let out = ws.mkdir("unpacked");
    let script =
        format!("gzip -dc {} | cpio -idm --quiet --no-absolute-filenames", gz_path.display());
    let status =
        std::process::Command::new("sh").args(["-c", &script]).current_dir(&out).status().unwrap();
    assert!(status.success());
    let mut model = model_listing(&tree, 0o7777);
    model.sort();
    same(&disk_listing(&out, 0o7777), &model);
    let ino = |p: &str| fs::metadata(out.join(p)).unwrap().ino();
    assert_eq!(ino("etc/motd"), ino("etc/motd.link"), "hard links were not kept");
}

#![allow(clippy::unwrap_used)]
//! It boots: a Debian kernel under qemu (software emulation) runs the initramfs `kiln build`
//! made, whose init prints a marker on the serial console and powers off (also with busybox
//! from a Debian package of `ci/debian-repo`'s repository); and it boots
//! kiln's qcow2 disk (erofs, squashfs or ext4 root; erofs also through dm-verity) with a kiln
//! cpio initramfs.
//!
//! The tools are not installed system-wide (installing qemu-system-x86 here would replace
//! qemu-img): `ci/boot-deps DIR` downloads qemu, seabios, a kernel and busybox-static and
//! unpacks them into DIR, and the test reads `KILN_BOOT_ROOT=DIR`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_compress::compress;
use kiln_compress::Compression;
use kiln_disk::cpio::write_cpio;
use kiln_tree::{Content, Entry, EntryKind, Epoch, ImagePath, Meta, Tree};
use support::{in_ci, Workspace};

const MARKER: &str = "KILN-INITRAMFS-BOOTED";

/// The unpacked boot tools, or `None` (a skip locally, a failure in CI).
fn boot_root() -> Option<PathBuf> {
    let root = std::env::var_os("KILN_BOOT_ROOT").map(PathBuf::from);
    match root {
        Some(r) if r.join("usr/bin/qemu-system-x86_64").exists() => Some(r),
        _ => {
            assert!(!in_ci(), "KILN_BOOT_ROOT is not set up: run ci/boot-deps DIR");
            eprintln!("SKIP: set KILN_BOOT_ROOT to a folder prepared by ci/boot-deps");
            None
        }
    }
}

fn kernel(root: &Path) -> PathBuf {
    let boot = root.join("boot");
    let mut kernels: Vec<_> = std::fs::read_dir(&boot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz-"))
        .collect();
    kernels.sort();
    kernels.pop().expect("a kernel in KILN_BOOT_ROOT/boot")
}

fn put(t: &mut Tree, path: &str, kind: EntryKind, mode: u32) {
    let meta = Meta { mode, uid: 0, gid: 0, xattrs: BTreeMap::new() };
    t.insert(ImagePath::parse(path).unwrap(), Entry { kind, meta }).unwrap();
}

/// Runs qemu with `args` until it exits or `limit` passes; returns the serial output.
fn qemu(root: &Path, args: &[&str], limit: Duration) -> String {
    let libs = format!("{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu", root.display());
    // Tests run in parallel threads of one process: each run gets its own log file.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = std::env::temp_dir().join(format!("kiln-boot-{}-{run}.log", std::process::id()));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(root.join("usr/bin/qemu-system-x86_64"))
        .env("LD_LIBRARY_PATH", libs)
        .args(["-L", &format!("{}/usr/share/seabios", root.display())])
        .args(["-L", &format!("{}/usr/share/qemu", root.display())])
        .args(["-nodefaults", "-display", "none", "-no-reboot", "-m", "256", "-serial", "stdio"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    log
}

#[test]
fn kernel_boots_kiln_initramfs() {
    let Some(root) = boot_root() else {
        return;
    };
    // The initramfs is a `kiln build` output: [disk] formats = ["initramfs"].
    let ws = Workspace::new();
    ws.write("recipe/busybox", std::fs::read(root.join("bin/busybox")).unwrap());
    let recipe = ws.write(
        "recipe/recipe.toml",
        format!(
            "[image]\nname = \"initrd\"\nversion = \"1\"\n\n[[layer]]\nname = \"root\"\n\
             files = [{{ src = \"busybox\", dest = \"/bin/busybox\", mode = 0o755 }}]\n\
             dirs = [{{ dest = \"/dev\" }}]\n\
             inline = [{{ dest = \"/init\", mode = 0o755, content = \"\"\"#!/bin/busybox sh\n\
             /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
             /bin/busybox echo {MARKER} > /dev/ttyS0\n/bin/busybox poweroff -f\n\"\"\" }}]\n\n\
             [disk]\nsize = \"8MiB\"\nformats = [\"initramfs\"]\n"
        ),
    );
    let store = ws.store("store");
    let report = support::Kiln::new(&store).build(&recipe, &[]);
    let blob = |digest: &str| store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let disk = report["disks"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(disk)).unwrap()).unwrap();
    let initrd = blob(manifest["layers"][0]["digest"].as_str().unwrap());

    let kernel = kernel(&root);
    let log = qemu(
        &root,
        &[
            "-kernel",
            kernel.to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            "console=ttyS0 panic=-1 quiet",
        ],
        Duration::from_secs(120),
    );
    assert!(log.contains(MARKER), "no marker on the serial console:\n{log}");
}

#[test]
fn kernel_boots_kiln_initramfs_of_debian_packages_with_their_busybox_as_init() {
    let Some(root) = boot_root() else {
        return;
    };
    let Some(repo) = support::debian_fixture() else {
        return;
    };
    // Only /init is the recipe's own: busybox comes from the busybox-static package.
    let ws = Workspace::new();
    ws.write("recipe/key.asc", std::fs::read(repo.join("key.asc")).unwrap());
    let recipe = ws.write(
        "recipe/recipe.toml",
        format!(
            "[image]\nname = \"debs\"\nversion = \"1\"\n\n\
             [[repository]]\nurl = \"file://{}\"\nsuite = \"kiln\"\ncomponents = [\"main\"]\n\
             key = \"key.asc\"\n\n\
             [[layer]]\nname = \"root\"\npackages = [\"busybox-static\"]\n\
             dirs = [{{ dest = \"/dev\" }}]\n\
             inline = [{{ dest = \"/init\", mode = 0o755, content = \"\"\"#!/bin/busybox sh\n\
             /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
             /bin/busybox echo {MARKER} $(/bin/busybox | /bin/busybox head -n 1) > /dev/ttyS0\n\
             /bin/busybox poweroff -f\n\"\"\" }}]\n\n\
             [disk]\nsize = \"64MiB\"\nformats = [\"initramfs\"]\n",
            repo.join("repo").display()
        ),
    );
    let store = ws.store("store");
    let report = support::Kiln::new(&store).build(&recipe, &[]);
    let blob = |digest: &str| store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let disk = report["disks"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(disk)).unwrap()).unwrap();
    let initrd = blob(manifest["layers"][0]["digest"].as_str().unwrap());

    let kernel = kernel(&root);
    let log = qemu(
        &root,
        &[
            "-kernel",
            kernel.to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            "console=ttyS0 panic=-1 quiet",
        ],
        Duration::from_secs(120),
    );
    assert!(
        log.contains(&format!("{MARKER} BusyBox v1.")),
        "no marker on the serial console:\n{log}"
    );
}

const DISK_MARKER: &str = "KILN-DISK-ROOT-BOOTED";

/// Modules the cloud kernel needs to read a virtio disk, in load order.
const MODULES: [&str; 6] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "drivers/block/virtio_blk",
];

/// The modules each root filesystem needs on top of [`MODULES`] (ext4 is built into the
/// cloud kernel).
fn fs_modules(fs: &str) -> &'static [&'static str] {
    match fs {
        "erofs" => &["lib/libcrc32c", "fs/erofs/erofs"],
        "squashfs" => &["fs/squashfs/squashfs"],
        _ => &[],
    }
}

/// Modules dm-verity needs on top of [`MODULES`], in load order.
const VERITY_MODULES: [&str; 4] = [
    "drivers/md/dm-mod",
    "drivers/md/dm-bufio",
    "lib/reed_solomon/reed_solomon",
    "drivers/md/dm-verity",
];

#[test]
fn kernel_boots_kiln_disk_image_with_erofs_root() {
    if let Some(root) = boot_root() {
        boot_disk(&root, "erofs", false, false);
    }
}

#[test]
fn kernel_boots_kiln_disk_image_with_squashfs_root() {
    if let Some(root) = boot_root() {
        boot_disk(&root, "squashfs", false, false);
    }
}

#[test]
fn kernel_boots_kiln_disk_image_with_ext4_root() {
    if let Some(root) = boot_root() {
        if support::require_tool("mke2fs") {
            boot_disk(&root, "ext4", false, false);
        }
    }
}

#[test]
fn kernel_boots_kiln_disk_image_through_dm_verity() {
    if let Some(root) = boot_root() {
        if support::require_tool("veritysetup") {
            boot_disk(&root, "erofs", true, false);
        }
    }
}

#[test]
fn dm_verity_stops_a_corrupted_root() {
    if let Some(root) = boot_root() {
        if support::require_tool("veritysetup") {
            boot_disk(&root, "erofs", true, true);
        }
    }
}

/// Host files a dynamically linked program needs: itself, its libraries and the loader.
fn with_libraries(program: &str) -> Vec<PathBuf> {
    let ldd = Command::new("ldd").arg(program).output().unwrap();
    let mut out = vec![PathBuf::from(program)];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line.split_whitespace().find(|w| w.starts_with('/'));
        out.extend(path.map(PathBuf::from));
    }
    out
}

/// Builds a disk with kiln, an initramfs that mounts its root filesystem `fs` (through
/// dm-verity when `verity`), and boots them; the root's own init must print the marker. With
/// `corrupt`, one byte of busybox on the raw disk is flipped first, and dm-verity must refuse
/// it instead. Without `corrupt` only the qcow2 is asked for, so the disk that boots is the
/// one kiln writes directly, with no raw disk behind it.
fn boot_disk(root: &Path, fs: &str, verity: bool, corrupt: bool) {
    // The image: busybox and an init that prints a marker; built by kiln with [disk].
    let ws = Workspace::new();
    let busybox = std::fs::read(root.join("bin/busybox")).unwrap();
    let busybox_head = busybox[..64].to_vec();
    ws.write("recipe/busybox", &busybox);
    let formats = if corrupt { "\"qcow2\", \"raw\"" } else { "\"qcow2\"" };
    let recipe = ws.write(
        "recipe/recipe.toml",
        format!(
            "epoch = 1700000000\n[image]\nname = \"bootme\"\nversion = \"1\"\n\n\
             [[layer]]\nname = \"root\"\n\
             files = [{{ src = \"busybox\", dest = \"/bin/busybox\", mode = 0o755 }}]\n\
             dirs = [{{ dest = \"/dev\" }}, {{ dest = \"/proc\" }}]\n\
             inline = [{{ dest = \"/sbin/init\", mode = 0o755, content = \"\"\"#!/bin/busybox sh\n\
             /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
             /bin/busybox echo {DISK_MARKER} from $(/bin/busybox cat /proc/cmdline 2>/dev/null) > /dev/ttyS0\n\
             /bin/busybox poweroff -f\n\"\"\" }}]\n\n\
             [disk]\nsize = \"16MiB\"\nroot = \"{fs}\"\nverity = true\n\
             formats = [{formats}]\n"
        ),
    );
    let store = ws.store("store");
    let report = support::Kiln::new(&store).build(&recipe, &[]);
    let blob = |digest: &str| store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let disk = report["disks"][0]["digest"].as_str().unwrap();
    let root_hash =
        report["disks"][0]["annotations"]["dev.kiln.disk.verity.root-hash"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(disk)).unwrap()).unwrap();
    let qcow2 = blob(manifest["layers"][0]["digest"].as_str().unwrap());

    // The initramfs: load the modules, find the partition labelled root-x86-64, switch to it.
    let modules = std::fs::read_dir(root.join("lib/modules")).unwrap().next().unwrap().unwrap();
    let mut tree = Tree::new();
    put(&mut tree, "/bin/busybox", EntryKind::File(Content::Bytes(busybox.into())), 0o755);
    let mut names = Vec::new();
    let extra: &[&str] = if verity { &VERITY_MODULES } else { &[] };
    for m in MODULES.iter().chain(fs_modules(fs)).chain(extra) {
        let bytes = std::fs::read(modules.path().join(format!("kernel/{m}.ko"))).unwrap();
        let name = m.rsplit('/').next().unwrap();
        put(
            &mut tree,
            &format!("/lib/modules/{name}.ko"),
            EntryKind::File(Content::Bytes(bytes.into())),
            0o644,
        );
        names.push(name);
    }
    if verity {
        for file in with_libraries("/usr/sbin/veritysetup") {
            let bytes = std::fs::read(&file).unwrap();
            let path = file.to_str().unwrap();
            put(&mut tree, path, EntryKind::File(Content::Bytes(bytes.into())), 0o755);
        }
    }
    // With verity the root is the dm-verity device over the two partitions, keyed by the
    // root hash on the kernel command line.
    let mount_root = if verity {
        "vdev=$(for u in /sys/class/block/*/uevent; do \
           $B grep -q '^PARTNAME=root-x86-64-verity$' $u && $B sed -n 's/^DEVNAME=//p' $u; done)\n\
         rh=$($B sed -n 's/.*roothash=\\([0-9a-f]*\\).*/\\1/p' /proc/cmdline)\n\
         $B mkdir -p /run /tmp\n\
         DM_DISABLE_UDEV=1 /usr/sbin/veritysetup open /dev/$dev root /dev/$vdev $rh > /dev/ttyS0 2>&1\n\
         $B echo \"kiln initramfs: verity root /dev/mapper/root over /dev/$dev and /dev/$vdev\" > /dev/ttyS0\n\
         $B mount -t {fs} -o ro /dev/mapper/root /newroot\n"
    } else {
        "$B mount -t {fs} -o ro /dev/$dev /newroot\n"
    };
    let mount_root = mount_root.replace("{fs}", fs);
    // The partition is waited for up to 90 s: on a loaded machine, with the other boots of
    // this file running in parallel, the virtio disk has taken more than 10 s to appear.
    let init = format!(
        "#!/bin/busybox sh\nB=/bin/busybox\n$B mkdir -p /dev /proc /sys /newroot\n\
         $B mount -t devtmpfs devtmpfs /dev\n$B mount -t sysfs sysfs /sys\n\
         for m in {}; do $B insmod /lib/modules/$m.ko; done\n\
         dev=\nfor i in $($B seq 90); do\n\
           for u in /sys/class/block/*/uevent; do\n\
             if $B grep -q '^PARTNAME=root-x86-64$' $u; then dev=$($B sed -n 's/^DEVNAME=//p' $u); fi\n\
           done\n  [ -n \"$dev\" ] && break\n  $B sleep 1\ndone\n\
         $B echo \"kiln initramfs: root-x86-64 is /dev/$dev\" > /dev/ttyS0\n\
         $B mount -t proc proc /proc\n{mount_root}$B umount /proc\n$B umount /sys\n$B umount /dev\n\
         exec $B switch_root /newroot /sbin/init\n",
        names.join(" ")
    );
    put(&mut tree, "/init", EntryKind::File(Content::Bytes(init.into_bytes().into())), 0o755);
    let mut cpio = Vec::new();
    write_cpio(&tree, Epoch::new(0).unwrap(), &mut cpio).unwrap();
    let gz = compress(&Compression::GZIP, 1, &cpio[..], Vec::new()).unwrap();
    let initrd = ws.write("initramfs.cpio.gz", &gz);

    let mut disk_image = (qcow2, "qcow2");
    if corrupt {
        let mut raw =
            std::fs::read(blob(manifest["layers"][1]["digest"].as_str().unwrap())).unwrap();
        let at = raw.windows(64).position(|w| w == &busybox_head[..]).expect("busybox on the disk");
        raw[at + 100] ^= 0xff;
        disk_image = (ws.write("corrupt.raw", &raw), "raw");
    }
    let kernel = kernel(root);
    let cmdline = format!("console=ttyS0 panic=-1 quiet roothash={root_hash}");
    let drive =
        format!("file={},format={},if=virtio,readonly=on", disk_image.0.display(), disk_image.1);
    let log = qemu(
        root,
        &[
            "-kernel",
            kernel.to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-drive",
            &drive,
            "-append",
            &cmdline,
        ],
        Duration::from_secs(180),
    );
    assert!(log.contains("root-x86-64 is /dev/vda1"), "the partition was not found:\n{log}");
    if corrupt {
        assert!(log.contains("verity") && log.contains("is corrupted"), "{log}");
        assert!(!log.contains(DISK_MARKER), "a corrupted root booted:\n{log}");
        return;
    }
    if verity {
        assert!(log.contains("verity root /dev/mapper/root over /dev/vda1 and /dev/vda2"), "{log}");
    }
    assert!(log.contains(DISK_MARKER), "no marker from the {fs} root's init:\n{log}");
}

const DEBIAN_MARKER: &str = "KILN-DEBIAN-ROOT-BOOTED";

/// The Debian minbase root `ci/debian-root` made, or `None` (a skip locally, a failure in CI).
fn debian_root() -> Option<PathBuf> {
    let root = std::env::var_os("KILN_DEBIAN_ROOT").map(PathBuf::from);
    match root {
        Some(r) if r.join("etc/debian_version").is_file() => Some(r),
        _ => {
            assert!(!in_ci(), "KILN_DEBIAN_ROOT is not set up: run ci/debian-root DIR");
            eprintln!("SKIP: set KILN_DEBIAN_ROOT to a folder made by ci/debian-root");
            None
        }
    }
}

/// A Debian root made by debootstrap, imported as a tree keeping host modes, owners and
/// device nodes, boots from kiln's qcow2 disk (erofs root): the initramfs mounts the root
/// partition and hands over to the root's own bash, which prints a marker with the Debian
/// version and the mode of `passwd`.
#[test]
fn kernel_boots_a_debian_root_kiln_imported() {
    let (Some(root), Some(debian)) = (boot_root(), debian_root()) else {
        return;
    };
    if !support::is_root() {
        eprintln!("SKIP: a root filesystem's owners and device nodes are copied only by root");
        return;
    }
    let ws = Workspace::new();
    ws.mkdir("recipe");
    let rootfs = ws.path("recipe/rootfs");
    support::sh("cp", &["-a", debian.to_str().unwrap(), rootfs.to_str().unwrap()]);
    let recipe = ws.write(
        "recipe/recipe.toml",
        "[image]\nname = \"debian\"\nversion = \"1\"\n\n[[layer]]\nname = \"root\"\n\
         trees = [{ src = \"rootfs\", dest = \"/\", host-metadata = true, devices = true }]\n\n\
         [disk]\nsize = \"512MiB\"\nroot = \"erofs\"\nformats = [\"qcow2\"]\n",
    );
    let store = ws.store("store");
    let report = support::Kiln::new(&store).build(&recipe, &[]);
    let blob = |digest: &str| store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let disk = report["disks"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(disk)).unwrap()).unwrap();
    let qcow2 = blob(manifest["layers"][0]["digest"].as_str().unwrap());

    let modules = std::fs::read_dir(root.join("lib/modules")).unwrap().next().unwrap().unwrap();
    let mut tree = Tree::new();
    let busybox = std::fs::read(root.join("bin/busybox")).unwrap();
    put(&mut tree, "/bin/busybox", EntryKind::File(Content::Bytes(busybox.into())), 0o755);
    let mut names = Vec::new();
    for m in MODULES.iter().chain(fs_modules("erofs")) {
        let bytes = std::fs::read(modules.path().join(format!("kernel/{m}.ko"))).unwrap();
        let name = m.rsplit('/').next().unwrap();
        let path = format!("/lib/modules/{name}.ko");
        put(&mut tree, &path, EntryKind::File(Content::Bytes(bytes.into())), 0o644);
        names.push(name);
    }
    // The root's own bash takes over as pid 1; when it exits the kernel panics and, with
    // panic=-1 and -no-reboot, qemu ends.
    // The partition is waited for up to 90 s: on a loaded machine, with the other boots of
    // this file running in parallel, the virtio disk has taken more than 10 s to appear.
    let init = format!(
        "#!/bin/busybox sh\nB=/bin/busybox\n$B mkdir -p /dev /sys /newroot\n\
         $B mount -t devtmpfs devtmpfs /dev\n$B mount -t sysfs sysfs /sys\n\
         for m in {}; do $B insmod /lib/modules/$m.ko; done\n\
         dev=\nfor i in $($B seq 90); do\n\
           for u in /sys/class/block/*/uevent; do\n\
             if $B grep -q '^PARTNAME=root-x86-64$' $u; then dev=$($B sed -n 's/^DEVNAME=//p' $u); fi\n\
           done\n  [ -n \"$dev\" ] && break\n  $B sleep 1\ndone\n\
         $B echo \"kiln initramfs: root-x86-64 is /dev/$dev\" > /dev/ttyS0\n\
         $B mount -t erofs -o ro /dev/$dev /newroot\n$B umount /sys\n\
         $B mount --move /dev /newroot/dev\n\
         exec $B switch_root /newroot /bin/bash -c \
           'echo {DEBIAN_MARKER} $(cat /etc/debian_version) $(stat -c %a /usr/bin/passwd) > /dev/ttyS0'\n",
        names.join(" ")
    );
    put(&mut tree, "/init", EntryKind::File(Content::Bytes(init.into_bytes().into())), 0o755);
    let mut cpio = Vec::new();
    write_cpio(&tree, Epoch::new(0).unwrap(), &mut cpio).unwrap();
    let gz = compress(&Compression::GZIP, 1, &cpio[..], Vec::new()).unwrap();
    let initrd = ws.write("initramfs.cpio.gz", &gz);

    let kernel = kernel(&root);
    let drive = format!("file={},format=qcow2,if=virtio,readonly=on", qcow2.display());
    let log = qemu(
        &root,
        &[
            "-kernel",
            kernel.to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-drive",
            &drive,
            "-append",
            "console=ttyS0 panic=-1 quiet",
        ],
        Duration::from_secs(240),
    );
    let version = std::fs::read_to_string(debian.join("etc/debian_version")).unwrap();
    let want = format!("{DEBIAN_MARKER} {} 4755", version.trim());
    assert!(log.contains(&want), "no {want:?} from the Debian root's bash:\n{log}");
}

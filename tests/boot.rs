#![allow(clippy::unwrap_used)]
//! It boots: a Debian kernel under qemu (software emulation) runs kiln's initramfs, whose
//! init prints a marker on the serial console and powers off.
//!
//! The tools are not installed system-wide (installing qemu-system-x86 here would replace
//! qemu-img): `ci/boot-deps DIR` downloads qemu, seabios, a kernel and busybox-static and
//! unpacks them into DIR, and the test reads `KILN_BOOT_ROOT=DIR`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_builder::compress::compress;
use kiln_builder::disk::cpio::write_cpio;
use kiln_builder::{Compression, Content, Entry, EntryKind, Epoch, ImagePath, Meta, Tree};
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
    let out_path = std::env::temp_dir().join(format!("kiln-boot-{}.log", std::process::id()));
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
    let busybox = std::fs::read(root.join("bin/busybox")).unwrap();
    let mut tree = Tree::new();
    put(&mut tree, "/bin/busybox", EntryKind::File(Content::Bytes(busybox.into())), 0o755);
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mkdir -p /dev\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         /bin/busybox echo {MARKER} > /dev/ttyS0\n/bin/busybox poweroff -f\n"
    );
    put(&mut tree, "/init", EntryKind::File(Content::Bytes(init.into_bytes().into())), 0o755);
    let mut cpio = Vec::new();
    write_cpio(&tree, Epoch(0), &mut cpio).unwrap();
    let gz = compress(&Compression::GZIP, 1, &cpio[..], Vec::new()).unwrap();
    let ws = Workspace::new();
    let initrd = ws.write("initramfs.cpio.gz", &gz);

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

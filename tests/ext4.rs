#![allow(clippy::unwrap_used)]
//! ext4 root filesystems: the image kiln writes with e2fsprogs passes `fsck.ext4 -fn`, reads
//! back (debugfs, and the kernel when it can mount) as the model tree with owners, modes,
//! times, xattrs and hard links, and is bit-identical across umask, TZ, locale, working
//! directory, wall clock and scratch folder.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_disk::ext4::{write_ext4, Ext4Image};
use kiln_oci::Digest;
use kiln_tree::{Content, EntryKind, Epoch, HostFile, Tree};
use support::fs_model::{
    bytes, disk_listing, fixture, fixture_xattrs, meta, model_listing, mount_ro, put, same,
    FIXTURE_XATTRS,
};
use support::{is_root, noise, require_tool, sh, Kiln, Workspace};

const EPOCH: Epoch = Epoch::saturating(1_700_000_000);
/// Set in a child run of this test binary: where the child writes its image.
const CHILD_OUT: &str = "KILN_EXT4_CHILD_OUT";

fn tools() -> bool {
    require_tool("mke2fs") && require_tool("debugfs") && require_tool("fsck.ext4")
}

/// Writes `tree` to `name` in the workspace, checking what the writer reports against the file.
fn write(ws: &Workspace, tree: &Tree, name: &str) -> (Vec<u8>, Ext4Image) {
    let out = ws.path(name);
    let work = ws.mkdir(&format!("{name}.work"));
    let image = write_ext4(tree, EPOCH, &work, &out).unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(bytes.len() as u64, image.size);
    assert_eq!(image.size % 4096, 0);
    assert_eq!(&bytes[1024 + 0x68..1024 + 0x78], &image.uuid, "superblock UUID");
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0, "the scratch folder is left behind");
    (bytes, image)
}

fn debugfs(image: &Path, request: &str) -> String {
    sh("debugfs", &["-R", request, image.to_str().unwrap()])
}

/// `path mode uid:gid what` for every entry, modes and owners from `debugfs ls -p` (setuid
/// included), content and link targets from `debugfs rdump`; lost+found aside.
fn ext4_listing(ws: &Workspace, image: &Path) -> Vec<String> {
    let dump = ws.mkdir("rdump");
    debugfs(image, &format!("rdump / {}", dump.display()));
    let what = |path: &str| {
        let dumped = dump.join(path);
        let md = fs::symlink_metadata(&dumped).unwrap();
        if md.is_dir() {
            "dir".to_string()
        } else if md.file_type().is_symlink() {
            format!("symlink {}", fs::read_link(&dumped).unwrap().to_str().unwrap())
        } else {
            format!("file {}", Digest::of(&fs::read(&dumped).unwrap()))
        }
    };
    let mut out = Vec::new();
    let mut dirs = vec![(2u64, String::new())];
    while let Some((ino, dir)) = dirs.pop() {
        for line in debugfs(image, &format!("ls -p <{ino}>")).lines().filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split('/').collect();
            let (child, mode, uid, gid, name) = (f[1], f[2], f[3], f[4], f[5]);
            if name == "." || name == ".." || (dir.is_empty() && name == "lost+found") {
                continue;
            }
            let path = if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
            let mode = u32::from_str_radix(mode, 8).unwrap();
            if mode & 0o170_000 == 0o040_000 {
                dirs.push((child.parse().unwrap(), path.clone()));
            }
            out.push(format!("{path} {:o} {uid}:{gid} {}", mode & 0o7777, what(&path)));
        }
    }
    out.sort();
    out
}

fn model(tree: &Tree) -> Vec<String> {
    let mut model = model_listing(tree, 0o7777);
    model.sort();
    model
}

#[test]
fn ext4_passes_fsck_and_reads_back_as_the_model() {
    if !tools() {
        return;
    }
    let ws = Workspace::new();
    let tree = fixture(&ws);
    let (_, image) = write(&ws, &tree, "root.ext4");
    let path = ws.path("root.ext4");
    sh("fsck.ext4", &["-fn", path.to_str().unwrap()]);
    same(&ext4_listing(&ws, &path), &model(&tree));

    let stats = debugfs(&path, "stats");
    assert!(!stats.contains("has_journal"), "{stats}");
    assert!(stats.contains("metadata_csum"), "{stats}");
    assert_eq!(image.inodes, stats_field(&stats, "Inode count:"));
    let free = stats_field(&stats, "Free blocks:");
    let total = stats_field(&stats, "Block count:");
    eprintln!("fixture: {total} blocks of 4 KiB, {free} free; {} inodes", image.inodes);
    assert!(free * 4 < total, "more than a quarter of the image is free: {free} of {total}");

    // Hard links are one inode with two names.
    let stat = |p: &str| debugfs(&path, &format!("stat {p}"));
    let inode = |p: &str| stat(p).split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(inode("/etc/motd"), inode("/etc/motd.link"));
    assert_ne!(inode("/etc/motd"), inode("/etc/empty"));
    assert!(stat("/etc/motd").contains("Links: 2"));

    // Every time of every kind of inode is the epoch, lost+found and the root included.
    for p in ["/", "/lost+found", "/etc", "/usr/bin/app", "/usr/bin/sh", "/long-target"] {
        let s = stat(p);
        for field in [" ctime:", " atime:", " mtime:", "crtime:"] {
            let line = s.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(line.contains("0x6553f100:00000000"), "{p} {line}");
        }
    }
    let ea = debugfs(&path, "ea_list /usr/bin/tagged");
    assert!(ea.contains("trusted.big (3000)") && ea.contains("user.kiln.origin (6) = \"recipe\""));
    assert!(debugfs(&path, "ea_list /srv").contains("user.dir (0)"));
    assert!(!debugfs(&path, "ea_list /usr/bin/su").contains('('));

    mounted_view(&ws, &path, &tree);
}

fn stats_field(stats: &str, name: &str) -> u64 {
    let line = stats.lines().find(|l| l.starts_with(name)).unwrap();
    line[name.len()..].trim().parse().unwrap()
}

/// The kernel's view of the image, when this machine can loop-mount it.
fn mounted_view(ws: &Workspace, image: &Path, tree: &Tree) {
    if !is_root() {
        eprintln!("SKIP: mounting the ext4 image needs root");
        return;
    }
    let mnt = ws.mkdir("mnt");
    if !mount_ro("ext4", image, &mnt) {
        return;
    }
    let listing = disk_listing(&mnt, 0o7777);
    let xattrs = fixture_xattrs(&mnt);
    sh("umount", &[mnt.to_str().unwrap()]);
    let listing: Vec<String> =
        listing.into_iter().filter(|l| !l.starts_with("lost+found ")).collect();
    same(&listing, &model(tree));
    assert_eq!(xattrs, FIXTURE_XATTRS);
}

/// Runs [`ext4_is_reproducible_across_hosts_and_changes_with_content`] in a child process,
/// where it only writes the fixture to `out`, with `umask`, extra environment
/// and working directory; `prefix` runs it through another program (such as `setpriv`).
fn child_write(out: &Path, umask: &str, env: &[(&str, &str)], cwd: &Path, prefix: &[&str]) {
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec {} \"$0\" \"$@\"", prefix.join(" ")))
        .arg(exe)
        .args(["--exact", "ext4_is_reproducible_across_hosts_and_changes_with_content"])
        .env(CHILD_OUT, out)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn ext4_is_reproducible_across_hosts_and_changes_with_content() {
    // A child run (see `child_write`) only writes the fixture, under the umask, environment
    // and working directory its parent chose.
    if let Some(out) = std::env::var_os(CHILD_OUT) {
        let ws = Workspace::new();
        let work = ws.mkdir("deeper/scratch");
        write_ext4(&fixture(&ws), EPOCH, &work, Path::new(&out)).unwrap();
        return;
    }
    if !tools() {
        return;
    }
    let ws = Workspace::new();
    let tree = fixture(&ws);
    let (a, image) = write(&ws, &tree, "a.ext4");
    std::thread::sleep(Duration::from_millis(1100));
    let (b, c) = (ws.path("b.ext4"), ws.path("c.ext4"));
    // Staged on tmpfs when there is one (the parent stages on the workspace's filesystem).
    let tmp = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let env_b = [
        ("TZ", "Pacific/Kiritimati"),
        ("LANG", "de_DE.UTF-8"),
        ("LC_ALL", "en_US.UTF-8"),
        ("TMPDIR", tmp),
    ];
    child_write(&b, "077", &env_b, &ws.mkdir("cwd-b"), &[]);
    std::thread::sleep(Duration::from_millis(1100));
    let env_c = [("TZ", "America/St_Johns"), ("LANG", "C"), ("SOURCE_DATE_EPOCH", "1")];
    child_write(&c, "000", &env_c, Path::new("/"), &[]);
    assert!(a == fs::read(b).unwrap(), "umask 077, TZ, locale, cwd or tmpfs changed the image");
    assert!(a == fs::read(c).unwrap(), "umask 000, another TZ and cwd changed the image");
    // Not being root (no chown, another owner for the staged copies) changes nothing either.
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    let exe = std::env::current_exe().unwrap();
    let reachable = is_root()
        && require_tool("setpriv")
        && Command::new(nobody[0])
            .args(&nobody[1..])
            .args(["test", "-x"])
            .arg(&exe)
            .status()
            .is_ok_and(|s| s.success());
    if reachable {
        fs::set_permissions(ws.root(), fs::Permissions::from_mode(0o755)).unwrap();
        let shared = ws.mkdir("shared");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        child_write(&shared.join("d.ext4"), "022", &[], &shared, &nobody);
        assert!(a == fs::read(shared.join("d.ext4")).unwrap(), "an unprivileged write differs");
    } else {
        eprintln!(
            "SKIP: the unprivileged write needs root, setpriv and a test binary uid 65534 can run"
        );
    }

    let mut other = fixture(&ws);
    put(&mut other, "/extra", bytes(b"x".to_vec()), meta(0o644, 0, 0));
    let (other_bytes, other_image) = write(&ws, &other, "other.ext4");
    assert_ne!(a, other_bytes);
    assert_ne!(image.uuid, other_image.uuid, "the UUID follows the content");
    let mut owner = fixture(&ws);
    put(&mut owner, "/extra", bytes(b"x".to_vec()), meta(0o644, 1, 0));
    assert_ne!(write(&ws, &owner, "e.ext4").1.uuid, other_image.uuid, "an owner is content");
    let later = ws.path("later.ext4");
    let image =
        write_ext4(&tree, Epoch::new(1_700_000_001).unwrap(), &ws.mkdir("later"), &later).unwrap();
    assert_ne!(fs::read(&later).unwrap(), a, "the epoch is in the image");
    assert_ne!(image.uuid[..], a[1024 + 0x68..1024 + 0x78]);
}

#[test]
fn ext4_refuses_changed_inputs_and_unstorable_attributes_and_cleans_up() {
    if !tools() {
        return;
    }
    let ws = Workspace::new();
    let work = ws.mkdir("work");
    let out = ws.path("out.ext4");

    let mut changed = Tree::new();
    let host = ws.write("later", b"before");
    let content = Content::Host(HostFile::new(host.clone(), 6, Digest::of(b"before")));
    put(&mut changed, "/f", EntryKind::File(content), meta(0o644, 0, 0));
    fs::write(&host, b"after!").unwrap();
    let err = support::chain(&write_ext4(&changed, EPOCH, &work, &out).unwrap_err());
    assert!(err.contains("/f") && err.contains("when it was hashed"), "{err}");
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0, "scratch folder left after an error");
    assert!(!out.exists(), "a partial image was left behind");

    for name in ["system.nfs4_acl", "user.", "user.new\nline"] {
        let mut odd = Tree::new();
        let mut m = meta(0o644, 0, 0);
        m.xattrs.insert(name.into(), b"x".to_vec());
        put(&mut odd, "/odd", bytes(Vec::new()), m);
        let err = support::chain(&write_ext4(&odd, EPOCH, &work, &out).unwrap_err());
        assert!(err.contains("/odd") && err.contains(&format!("{name:?}")), "{err}");
    }
    let mut big = Tree::new();
    let mut m = meta(0o644, 0, 0);
    m.xattrs.insert("user.a".into(), vec![1; 3000]);
    m.xattrs.insert("user.b".into(), vec![2; 3000]);
    put(&mut big, "/big", bytes(Vec::new()), m);
    let err = support::chain(&write_ext4(&big, EPOCH, &work, &out).unwrap_err());
    assert!(err.contains("/big") && err.contains("4 KiB"), "{err}");

    // A name ext4 could not store never reaches it: image paths refuse it.
    let err = kiln_tree::ImagePath::parse(&format!("/{}", "n".repeat(256))).unwrap_err();
    assert!(support::chain(&err).contains("at most 255"), "{err}");

    // Names debugfs could not quote are no problem: inodes are fixed up by number.
    let mut names = Tree::new();
    for name in ["/new\nline", "/quote\"d", "/back\\slash", "/<12>", "/-dash", "/ space"] {
        put(&mut names, name, bytes(name.as_bytes().to_vec()), meta(0o600, 7, 8));
    }
    put(&mut names, "/empty-dir", EntryKind::Dir, meta(0o1777, 0, 0));
    // Names of many lengths in a directory of several blocks: short names fill the tails of
    // earlier blocks, which the writer's read-back must expect.
    for i in 0..600 {
        let name = format!("/mixed/{i:03}-{}", "m".repeat(i * 37 % 120));
        put(&mut names, &name, bytes(Vec::new()), meta(0o644, 0, 0));
    }
    write_ext4(&names, EPOCH, &work, &out).unwrap();
    sh("fsck.ext4", &["-fn", out.to_str().unwrap()]);
    let listing = debugfs(&out, "ls -p /");
    assert!(listing.contains("/100600/7/8/new\nline/"), "{listing}");
    assert!(listing.contains("/041777/0/0/empty-dir/"), "{listing}");
    let empty = write_ext4(&Tree::new(), EPOCH, &work, &out).unwrap();
    sh("fsck.ext4", &["-fn", out.to_str().unwrap()]);
    eprintln!("empty tree: {} bytes, {} inodes", empty.size, empty.inodes);
}

/// Trees whose size estimate is hardest: inodes rather than data decide the group count, one
/// file spans several block groups next to a file that is only zeros, and a directory of
/// thousands of entries with names of every length. (The same shapes at 70k files, 300 MiB
/// and 20k entries also fit; they take minutes, mostly in mke2fs, so the suite runs these.)
#[test]
fn ext4_awkward_trees_fit_their_computed_size() {
    if !tools() {
        return;
    }
    let ws = Workspace::new();
    let mut many = Tree::new();
    for i in 0..12_000 {
        put(&mut many, &format!("/d{}/f{i}", i % 7), bytes(Vec::new()), meta(0o644, 0, 0));
    }
    let mut large = Tree::new();
    let data = noise(160 << 20, 1);
    let host = ws.write("large", &data);
    let content = Content::Host(HostFile::new(host, data.len() as u64, Digest::of(&data)));
    put(&mut large, "/large", EntryKind::File(content), meta(0o644, 0, 0));
    put(&mut large, "/zeros", bytes(vec![0; 20 << 20]), meta(0o644, 0, 0));
    let mut wide = Tree::new();
    for i in 0..3_000 {
        let name = format!("/wide/{}-{i}", "n".repeat(i % 200));
        put(&mut wide, &name, bytes(noise(i % 5000, i as u64)), meta(0o644, 0, 0));
    }
    for (name, tree) in [("many", many), ("large", large), ("wide", wide)] {
        let out = ws.path(name);
        let start = Instant::now();
        let image = write_ext4(&tree, EPOCH, &ws.mkdir(&format!("{name}.work")), &out).unwrap();
        let took = start.elapsed();
        sh("fsck.ext4", &["-fn", out.to_str().unwrap()]);
        let stats = debugfs(&out, "stats");
        eprintln!(
            "{name}: {took:.2?}, {} MiB, {} of {} blocks free, {} of {} inodes free",
            image.size >> 20,
            stats_field(&stats, "Free blocks:"),
            stats_field(&stats, "Block count:"),
            stats_field(&stats, "Free inodes:"),
            image.inodes,
        );
    }
}

/// The host's e2fsprogs version as `mke2fs -V` prints it on stderr (`mke2fs 1.47.0 (…)`).
fn host_e2fsprogs() -> String {
    let out = Command::new("mke2fs").arg("-V").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    stderr.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn the_lock_pins_the_e2fsprogs_version_of_an_ext4_root() {
    if !tools() {
        return;
    }
    let ws = Workspace::new();
    ws.write("r/app.txt", "hello\n");
    let head = "[image]\nname = \"e2fs\"\nversion = \"1\"\n[[layer]]\nname = \"a\"\n\
                files = [{ src = \"app.txt\", dest = \"/app.txt\" }]\n";
    let recipe =
        ws.write("r/ext4.toml", format!("{head}[disk]\nsize = \"16MiB\"\nroot = \"ext4\"\n"));
    let erofs = ws.write("r/erofs.toml", format!("{head}[disk]\nsize = \"16MiB\"\n"));
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    let host = host_e2fsprogs();

    kiln.run(&["lock", recipe.to_str().unwrap()]).ok();
    let lock = fs::read_to_string(ws.path("r/ext4.lock")).unwrap();
    assert!(lock.contains(&format!("e2fsprogs = \"{host}\"")), "{lock}");
    kiln.run(&["lock", erofs.to_str().unwrap()]).ok();
    let lock = fs::read_to_string(ws.path("r/erofs.lock")).unwrap();
    assert!(!lock.contains("e2fsprogs"), "only ext4 roots depend on e2fsprogs:\n{lock}");

    // Another e2fsprogs first on PATH: every build refuses, naming both versions, before
    // anything is stored; only `kiln lock` accepts the change.
    let path = fake_e2fsprogs(&ws, "other-e2fsprogs", &["mke2fs", "debugfs"], "1.46.5");
    let other = Kiln::new(&store).env("PATH", &path);
    for extra in [&[][..], &["--locked"][..]] {
        let mut args = vec!["build", recipe.to_str().unwrap()];
        args.extend_from_slice(extra);
        other.run(&args).fails_with(support::EXIT_LOCK_MISMATCH).stderr_has(&[
            "e2fsprogs changed",
            &format!("locked {host}"),
            "host has 1.46.5",
        ]);
    }
    assert!(support::blobs(&store).is_empty(), "a refused build stored blobs");
    other.run(&["lock", recipe.to_str().unwrap()]).ok();
    let lock = fs::read_to_string(ws.path("r/ext4.lock")).unwrap();
    assert!(lock.contains("e2fsprogs = \"1.46.5\""), "{lock}");
}

/// A folder holding `tools` that print e2fsprogs `version` for `-V` (as e2fsprogs does, on
/// stderr), and a PATH that finds them first.
fn fake_e2fsprogs(ws: &Workspace, dir: &str, tools: &[&str], version: &str) -> String {
    let bin = ws.mkdir(dir);
    for tool in tools {
        let fake = ws.write(
            &format!("{dir}/{tool}"),
            format!(
                "#!/bin/sh\necho '{tool} {version} (30-Dec-2021)' >&2\n\
                 printf '\\tUsing EXT2FS Library version {version}\\n' >&2\n"
            ),
        );
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// A lock written before kiln recorded e2fsprogs: a plain build records the host's version
/// and says so; `--locked` refuses (exit 3) until it is recorded.
#[test]
fn a_lock_without_the_e2fsprogs_version_gets_it_recorded() {
    if !tools() {
        return;
    }
    let ws = Workspace::new();
    ws.write("r/app.txt", "hello\n");
    let recipe = ws.write(
        "r/ext4.toml",
        "[image]\nname = \"old\"\nversion = \"1\"\n[[layer]]\nname = \"a\"\n\
         files = [{ src = \"app.txt\", dest = \"/app.txt\" }]\n\
         [disk]\nsize = \"16MiB\"\nroot = \"ext4\"\n",
    );
    let recipe = recipe.to_str().unwrap();
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    let host = host_e2fsprogs();
    kiln.run(&["lock", recipe]).ok();
    let lock_path = ws.path("r/ext4.lock");
    let recorded = fs::read_to_string(&lock_path).unwrap();
    let old: String = recorded
        .lines()
        .filter(|l| !l.starts_with("e2fsprogs"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(old, recorded, "{recorded}");

    fs::write(&lock_path, &old).unwrap();
    kiln.run(&["build", recipe, "--locked"]).fails_with(support::EXIT_LOCK_MISMATCH).stderr_has(&[
        "records no e2fsprogs version",
        &format!("e2fsprogs {host}"),
        "kiln lock",
    ]);
    assert!(support::blobs(&store).is_empty(), "a refused build stored blobs");
    assert_eq!(fs::read_to_string(&lock_path).unwrap(), old, "--locked rewrote the lock");

    let report = kiln.build(Path::new(recipe), &[]);
    assert_eq!(report["lock"]["written"], true, "{report}");
    let stale = report["lock"]["stale"].to_string();
    assert!(stale.contains("records no e2fsprogs version"), "{stale}");
    assert_eq!(fs::read_to_string(&lock_path).unwrap(), recorded, "the version is recorded");
    kiln.run(&["build", recipe, "--locked"]).ok();

    // `kiln lock` records it too.
    fs::write(&lock_path, &old).unwrap();
    kiln.run(&["lock", recipe]).ok();
    assert_eq!(fs::read_to_string(&lock_path).unwrap(), recorded);
}

/// mke2fs and debugfs of different e2fsprogs versions: no version can be recorded, so
/// locking and building refuse (exit 1), naming each tool's version and path.
#[test]
fn mixed_e2fsprogs_versions_are_refused() {
    if !tools() {
        return;
    }
    let ws = Workspace::new();
    ws.write("r/app.txt", "hello\n");
    let recipe = ws.write(
        "r/ext4.toml",
        "[image]\nname = \"mixed\"\nversion = \"1\"\n[[layer]]\nname = \"a\"\n\
         files = [{ src = \"app.txt\", dest = \"/app.txt\" }]\n\
         [disk]\nsize = \"16MiB\"\nroot = \"ext4\"\n",
    );
    let recipe = recipe.to_str().unwrap();
    let store = ws.store("store");
    let host = host_e2fsprogs();
    let path = fake_e2fsprogs(&ws, "other-debugfs", &["debugfs"], "1.46.5");
    let mixed = Kiln::new(&store).env("PATH", &path);
    for args in [&["lock", recipe][..], &["build", recipe][..]] {
        mixed.run(args).fails_with(support::EXIT_ERROR).stderr_has(&[
            "more than one version",
            &format!("mke2fs {host}"),
            "debugfs 1.46.5",
            "other-debugfs/debugfs",
        ]);
    }
    assert!(!ws.path("r/ext4.lock").exists(), "a lock was written");
    assert!(support::blobs(&store).is_empty(), "a refused build stored blobs");
}

//! Hostile and broken input: every case fails with a non-zero exit, a message that names the
//! offending thing, and nothing written to the store.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::tarball::{header_with, pax, tar, tar_gz, Member};
use support::{blobs, is_root, sh, Kiln, Workspace, EXIT_ERROR, EXIT_LOCK_MISMATCH};

/// A recipe with one layer whose body is `layer`, written as `ws/recipe/recipe.toml`.
fn recipe(ws: &Workspace, layer: &str) -> PathBuf {
    let text = format!(
        "[image]\nname = \"hostile\"\nversion = \"1.0.0\"\n\n[[layer]]\nname = \"l\"\n{layer}\n"
    );
    ws.write("recipe/recipe.toml", text)
}

/// Builds `recipe` into a fresh store, asserts failure with `code` (or any non-zero code),
/// that stderr names every `needle`, that the store holds no blob and no cache entry, and
/// that kiln left nothing in its temporary folder.
fn rejects(ws: &Workspace, recipe: &Path, code: Option<i32>, needles: &[&str]) -> String {
    let store = ws.store("store");
    let tmp = ws.mkdir("tmp");
    let run = Kiln::new(&store)
        .env("TMPDIR", tmp.to_str().expect("utf-8"))
        .run(&["build", recipe.to_str().expect("utf-8")]);
    let run = match code {
        Some(c) => run.fails_with(c),
        None => run.fails(),
    };
    let run = run.stderr_has(needles);
    let written = blobs(&store);
    assert!(written.is_empty(), "a failed build wrote blobs: {written:?}\n{run}");
    let cached = store.join("cache");
    assert!(
        fs::read_dir(&cached).map_or(true, |mut d| d.next().is_none()),
        "a failed build left cache entries in {}\n{run}",
        cached.display()
    );
    let left = left_in(&tmp);
    assert!(left.is_empty(), "a failed build left temporary files: {left:?}\n{run}");
    run.stderr
}

/// What is under `tmp`, except the shared `kiln-scratch` folder that holds each process's
/// own scratch folder (removed when it ends).
fn left_in(tmp: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for entry in fs::read_dir(tmp).expect("tmp") {
        let path = entry.expect("entry").path();
        if path.file_name() == Some("kiln-scratch".as_ref()) {
            left.extend(
                fs::read_dir(&path).expect("kiln-scratch").map(|e| e.expect("entry").path()),
            );
        } else {
            left.push(path);
        }
    }
    left
}

#[test]
fn dest_escaping_the_root_is_rejected() {
    for dest in ["../etc/x", "/usr/../../etc/x", "/a/b/../../../etc/x"] {
        let ws = Workspace::new();
        let r = recipe(&ws, &format!("inline = [{{ dest = \"{dest}\", content = \"x\" }}]"));
        rejects(&ws, &r, Some(EXIT_ERROR), &["recipe.toml", dest]);
    }
}

#[test]
fn source_escaping_the_recipe_folder_is_rejected() {
    let ws = Workspace::new();
    // The file exists, so the only thing wrong is where it is.
    ws.write("outside", "secret\n");
    let r = recipe(&ws, "files = [{ src = \"../outside\", dest = \"/x\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["recipe.toml", "../outside"]);

    let ws = Workspace::new();
    ws.write("outside/t/file", "secret\n");
    let r = recipe(&ws, "trees = [{ src = \"sub/../../outside/t\", dest = \"/\" }]");
    ws.mkdir("recipe/sub");
    rejects(&ws, &r, Some(EXIT_ERROR), &["recipe.toml", "outside/t"]);
}

#[test]
fn absolute_source_outside_the_recipe_folder_is_rejected() {
    let ws = Workspace::new();
    let outside = ws.write("outside.txt", "secret\n");
    let abs = outside.to_str().expect("utf-8");
    let r = recipe(&ws, &format!("files = [{{ src = \"{abs}\", dest = \"/x\" }}]"));
    rejects(&ws, &r, Some(EXIT_ERROR), &["recipe.toml", abs]);

    let ws = Workspace::new();
    let r = recipe(&ws, "files = [{ src = \"/etc/passwd\", dest = \"/x\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["recipe.toml", "/etc/passwd"]);
}

#[test]
fn source_reached_through_a_symlink_out_of_the_folder_is_rejected() {
    // `files/link` is inside the recipe folder by name but points outside it.
    let ws = Workspace::new();
    ws.write("outside.txt", "secret\n");
    ws.mkdir("recipe/files");
    std::os::unix::fs::symlink("../../outside.txt", ws.path("recipe/files/link")).expect("ln");
    let r = recipe(&ws, "files = [{ src = \"files/link\", dest = \"/x\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["files/link"]);
}

#[test]
fn symlink_in_tree_climbing_out_of_it_is_rejected_and_an_absolute_one_kept() {
    let ws = Workspace::new();
    ws.write("recipe/tree/ok.txt", "fine\n");
    std::os::unix::fs::symlink("/usr/share/zoneinfo/Etc/UTC", ws.path("recipe/tree/localtime"))
        .expect("ln -s");
    let r = recipe(&ws, "trees = [{ src = \"tree\", dest = \"/etc\" }]");
    let store = ws.store("kept");
    Kiln::new(&store).run(&["build", r.to_str().expect("utf-8")]).ok();
    let layer = blobs(&store)
        .into_iter()
        .find(|b| fs::read(b).expect("blob").starts_with(&[0x1f, 0x8b]))
        .expect("a gzip layer");
    let listing = sh("tar", &["-tvzf", layer.to_str().expect("utf-8")]);
    assert!(listing.contains("etc/localtime -> /usr/share/zoneinfo/Etc/UTC"), "{listing}");

    let ws = Workspace::new();
    ws.write("recipe/tree/sub/ok.txt", "fine\n");
    ws.write("recipe/secret", "secret\n");
    std::os::unix::fs::symlink("../../secret", ws.path("recipe/tree/sub/up")).expect("ln -s");
    let r = recipe(&ws, "trees = [{ src = \"tree\", dest = \"/\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["up", "../../secret"]);
}

#[test]
fn fifo_in_tree_is_rejected() {
    let ws = Workspace::new();
    ws.write("recipe/tree/ok.txt", "fine\n");
    let fifo = ws.path("recipe/tree/pipe");
    sh("mkfifo", &[fifo.to_str().expect("utf-8")]);
    let r = recipe(&ws, "trees = [{ src = \"tree\", dest = \"/\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["tree/pipe is a FIFO", "devices = true"]);
}

#[test]
fn device_node_in_tree_is_rejected() {
    let ws = Workspace::new();
    ws.write("recipe/tree/ok.txt", "fine\n");
    let node = ws.path("recipe/tree/null");
    let made = Command::new("mknod")
        .args([node.to_str().expect("utf-8"), "c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("SKIP: mknod failed (needs root or CAP_MKNOD); device-node case not checked");
        return;
    }
    let r = recipe(&ws, "trees = [{ src = \"tree\", dest = \"/\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["tree/null is a device node", "devices = true"]);
}

fn tarball_recipe(ws: &Workspace, bytes: Vec<u8>, name: &str) -> PathBuf {
    ws.write(&format!("recipe/vendor/{name}"), bytes);
    recipe(ws, &format!("tarballs = [{{ src = \"vendor/{name}\", dest = \"/\" }}]"))
}

#[test]
fn tarball_with_parent_member_is_rejected() {
    let ws = Workspace::new();
    let bytes = tar_gz(&[
        Member::Dir { name: "etc/" },
        Member::File { name: "etc/ok", content: b"fine\n" },
        Member::File { name: "../escape.txt", content: b"evil\n" },
    ]);
    let r = tarball_recipe(&ws, bytes, "evil.tar.gz");
    rejects(&ws, &r, Some(EXIT_ERROR), &["evil.tar.gz", "../escape.txt"]);

    let ws = Workspace::new();
    let bytes = tar_gz(&[Member::File { name: "etc/../../../escape.txt", content: b"evil\n" }]);
    let r = tarball_recipe(&ws, bytes, "deep.tar.gz");
    rejects(&ws, &r, Some(EXIT_ERROR), &["deep.tar.gz", "escape.txt"]);
}

#[test]
fn tarball_with_absolute_member_is_rejected() {
    let ws = Workspace::new();
    let bytes = tar_gz(&[Member::File { name: "/etc/evil", content: b"evil\n" }]);
    let r = tarball_recipe(&ws, bytes, "abs.tar.gz");
    rejects(&ws, &r, Some(EXIT_ERROR), &["abs.tar.gz", "/etc/evil"]);
}

#[test]
fn tarball_with_hard_link_out_of_the_root_is_rejected() {
    let ws = Workspace::new();
    let bytes = tar_gz(&[
        Member::File { name: "ok", content: b"fine\n" },
        Member::HardLink { name: "link", target: "../../etc/shadow" },
    ]);
    let r = tarball_recipe(&ws, bytes, "hl.tar.gz");
    rejects(&ws, &r, Some(EXIT_ERROR), &["hl.tar.gz", "../../etc/shadow"]);
}

#[test]
fn corrupt_tarball_is_rejected() {
    let ws = Workspace::new();
    let mut bytes = tar(&[Member::File { name: "ok", content: b"fine\n" }]);
    bytes[148] = b'9'; // breaks the header checksum
    let r = tarball_recipe(&ws, bytes, "broken.tar");
    rejects(&ws, &r, None, &["broken.tar"]);
}

#[test]
fn locked_build_with_changed_input_names_the_input() {
    let ws = Workspace::new();
    ws.write("recipe/files/app", "#!/bin/sh\necho v1\n");
    let r = recipe(&ws, "files = [{ src = \"files/app\", dest = \"/app\", mode = 0o755 }]");
    let store = ws.store("store");
    Kiln::new(&store).run(&["lock", r.to_str().expect("utf-8")]).ok();
    assert!(ws.path("recipe/recipe.lock").is_file(), "kiln lock wrote no recipe.lock");
    assert!(blobs(&store).is_empty(), "kiln lock must not write blobs");

    ws.write("recipe/files/app", "#!/bin/sh\necho v2\n");
    let run = Kiln::new(&store).run(&["build", "--locked", r.to_str().expect("utf-8")]);
    run.fails_with(EXIT_LOCK_MISMATCH).stderr_has(&["files/app"]);
    assert!(blobs(&store).is_empty(), "a --locked mismatch wrote blobs");
}

#[test]
fn locked_build_after_a_chmod_of_an_input_names_the_input() {
    let ws = Workspace::new();
    let app = ws.write("recipe/files/app", "#!/bin/sh\necho v1\n");
    fs::set_permissions(&app, fs::Permissions::from_mode(0o755)).expect("chmod +x");
    // No mode in the recipe: the host's execute bit makes the image's 0755.
    let r = recipe(&ws, "files = [{ src = \"files/app\", dest = \"/app\" }]");
    let store = ws.store("store");
    Kiln::new(&store).run(&["lock", r.to_str().expect("utf-8")]).ok();

    fs::set_permissions(&app, fs::Permissions::from_mode(0o644)).expect("chmod -x");
    let run = Kiln::new(&store).run(&["build", "--locked", r.to_str().expect("utf-8")]);
    run.fails_with(EXIT_LOCK_MISMATCH).stderr_has(&["files/app", "not executable now"]);
    assert!(blobs(&store).is_empty(), "a --locked mismatch wrote blobs");
}

#[test]
fn locked_build_with_wrong_digest_in_lock_names_the_input() {
    let ws = Workspace::new();
    let app = ws.write("recipe/files/app", "#!/bin/sh\necho v1\n");
    let r = recipe(&ws, "files = [{ src = \"files/app\", dest = \"/app\", mode = 0o755 }]");
    let store = ws.store("store");
    Kiln::new(&store).run(&["lock", r.to_str().expect("utf-8")]).ok();

    // The lock records the file's plain sha256; replace it with another well-formed digest.
    let out = sh("sha256sum", &[app.to_str().expect("utf-8")]);
    let hex = out.split_whitespace().next().expect("sha256sum output");
    let lock_path = ws.path("recipe/recipe.lock");
    let lock = fs::read_to_string(&lock_path).expect("read lock");
    assert!(lock.contains(hex), "lock does not record sha256 {hex} of files/app:\n{lock}");
    fs::write(&lock_path, lock.replace(hex, &"0".repeat(64))).expect("tamper lock");

    let run = Kiln::new(&store).run(&["build", "--locked", r.to_str().expect("utf-8")]);
    run.fails_with(EXIT_LOCK_MISMATCH).stderr_has(&["files/app"]);
    assert!(blobs(&store).is_empty(), "a --locked mismatch wrote blobs");
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let ws = Workspace::new();
    let r = ws.write("recipe/broken.toml", "[image]\nname = \"hello\"\nversion = \"1.0.0\n");
    let stderr = rejects(&ws, &r, Some(EXIT_ERROR), &["broken.toml"]);
    assert!(
        stderr.contains(":3:") || stderr.contains("line 3"),
        "stderr should give line 3 and a column:\n{stderr}"
    );
}

#[test]
fn unknown_key_names_the_key_and_line() {
    let ws = Workspace::new();
    let r = ws.write(
        "recipe/typo.toml",
        "[image]\nname = \"hello\"\nversion = \"1.0.0\"\ncolour = \"red\"\n",
    );
    let stderr = rejects(&ws, &r, Some(EXIT_ERROR), &["typo.toml", "colour"]);
    assert!(stderr.contains(":4:") || stderr.contains("line 4"), "line 4 missing:\n{stderr}");

    let ws = Workspace::new();
    let r = recipe(&ws, "inline = [{ dest = \"/x\", content = \"x\", mdoe = 0o644 }]");
    let stderr = rejects(&ws, &r, Some(EXIT_ERROR), &["recipe.toml", "mdoe"]);
    assert!(stderr.contains(":7:") || stderr.contains("line 7"), "line 7 missing:\n{stderr}");
}

#[test]
fn missing_recipe_and_missing_input_are_named() {
    let ws = Workspace::new();
    let nope = ws.path("recipe/nope.toml");
    let store = ws.store("store");
    Kiln::new(&store)
        .run(&["build", nope.to_str().expect("utf-8")])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["nope.toml"]);
    assert!(blobs(&store).is_empty());

    let ws = Workspace::new();
    let r = recipe(&ws, "files = [{ src = \"files/missing\", dest = \"/x\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["files/missing"]);

    let ws = Workspace::new();
    let r = recipe(&ws, "trees = [{ src = \"no-such-tree\", dest = \"/\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["no-such-tree"]);
}

#[test]
fn unreadable_input_is_named() {
    // As root, chmod 000 does not stop reads, so the always-run case is a source that cannot
    // be read as the file the recipe expects: a folder given as `files.src`.
    let ws = Workspace::new();
    ws.write("recipe/files/dir/inner", "x\n");
    let r = recipe(&ws, "files = [{ src = \"files/dir\", dest = \"/x\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["files/dir"]);

    if is_root() {
        eprintln!("SKIP: running as root; the chmod 000 case cannot make a file unreadable");
        return;
    }
    let ws = Workspace::new();
    let secret = ws.write("recipe/files/secret", "x\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).expect("chmod 000");
    let r = recipe(&ws, "files = [{ src = \"files/secret\", dest = \"/x\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["files/secret"]);
}

#[test]
fn a_path_declared_twice_is_named_and_nothing_is_stored_or_locked() {
    let ws = Workspace::new();
    ws.write("recipe/rootfs/etc/motd", "from the tree\n");
    // The first layer is fine; the second declares /etc/motd twice. Layers are checked
    // before any is stored, so not even the first one's blob is written.
    let text = "[image]\nname = \"hostile\"\nversion = \"1.0.0\"\n\n\
                [[layer]]\nname = \"fine\"\ninline = [{ dest = \"/ok\", content = \"ok\" }]\n\n\
                [[layer]]\nname = \"twice\"\ntrees = [{ src = \"rootfs\", dest = \"/\" }]\n\
                inline = [{ dest = \"/etc/motd\", content = \"again\" }]\n";
    let r = ws.write("recipe/recipe.toml", text);
    // The second declaration of the path is the one named, by line and column.
    rejects(
        &ws,
        &r,
        Some(EXIT_ERROR),
        &["recipe.toml:12:20: layer \"twice\"", "/etc/motd", "declared twice"],
    );
    let store = ws.store("lock-store");
    Kiln::new(&store)
        .run(&["lock", r.to_str().expect("utf-8")])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["/etc/motd", "declared twice"]);
    assert!(!ws.path("recipe/recipe.lock").exists(), "a lock was written for a bad recipe");
}

#[test]
fn layer_level_mistakes_name_the_line_and_column() {
    // Each mistake is found only when the layer's tree is made, yet named where the recipe
    // declares it: a hard link to nothing, a file under a file, a tree or a tarball
    // putting something where the recipe already put something else.
    let ws = Workspace::new();
    ws.write("recipe/rootfs/etc/motd", "from the tree\n");
    ws.write("recipe/vendor/t.tar.gz", tar_gz(&[Member::File { name: "etc", content: b"x" }]));
    for (layer, needle) in [
        (
            "inline = [{ dest = \"/x\", content = \"x\" }]\nhardlinks = [\n  { dest = \"/y\", target = \"/x\" },\n  { dest = \"/z\", target = \"/nope\" },\n]",
            "recipe.toml:10:12: layer \"l\": hard link /z points at /nope",
        ),
        (
            "inline = [{ dest = \"/a\", content = \"x\" }, { dest = \"/a/c\", content = \"y\" }]",
            "recipe.toml:7:52: layer \"l\": /a/c needs /a to be a directory",
        ),
        (
            "dirs = [{ dest = \"/etc/motd\" }]\ntrees = [{ src = \"rootfs\", dest = \"/\" }]",
            "recipe.toml:8:18: layer \"l\": /etc/motd is declared twice",
        ),
        // Mistakes the TOML parser or the recipe's validation sees name their place too.
        (
            "dirs = [{ dest = \"/tmp\", mode = 0o17777 }]",
            "recipe.toml:7:33: mode 0o17777 has bits outside 0o7777",
        ),
        ("dirs = [{ dest = \"/tmp\" }]\nbogus = 1", "recipe.toml:8:1: unknown field `bogus`"),
        (
            "dirs = [{ dest = \"/etc\" }]\ntarballs = [{ src = \"vendor/t.tar.gz\" }]",
            "recipe.toml:8:21: layer \"l\": /etc is declared twice",
        ),
    ] {
        let r = recipe(&ws, layer);
        rejects(&ws, &r, Some(EXIT_ERROR), &[needle]);
        fs::remove_dir_all(ws.path("store")).ok();
        fs::remove_dir_all(ws.path("tmp")).ok();
    }
    // An epoch no tar header can hold is refused where it is written, before any layer.
    let text = "epoch = 8589934592\n[image]\nname = \"e\"\nversion = \"1\"\n";
    let r = ws.write("recipe/recipe.toml", text);
    rejects(&ws, &r, Some(EXIT_ERROR), &["recipe.toml:1:9: epoch must be", "8589934591"]);
}

#[test]
fn a_tree_cannot_both_keep_host_owners_and_set_one() {
    let ws = Workspace::new();
    ws.write("recipe/rootfs/etc/motd", "hi\n");
    let r =
        recipe(&ws, "trees = [{ src = \"rootfs\", dest = \"/\", host-metadata = true, uid = 5 }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["recipe.toml:7:68:", "host-metadata = true"]);
}

/// A 10-byte file member whose header is changed by `edit`, after the records of `pax_records`.
fn lying_member(pax_records: &[(&str, &str)], edit: impl FnOnce(&mut [u8; 512])) -> Vec<u8> {
    let mut raw = if pax_records.is_empty() { Vec::new() } else { pax(pax_records) };
    raw.extend_from_slice(&header_with("liar", b'0', 0o644, 10, "", edit));
    raw.extend_from_slice(b"ten bytes!");
    raw.extend(std::iter::repeat_n(0u8, 502));
    raw
}

#[test]
fn tarball_sizes_that_disagree_with_the_data_are_refused() {
    // GNU base-256: a 0x80 marker, then the size big-endian in the field's other 11 bytes.
    let base256 = |h: &mut [u8; 512]| {
        h[124..136].fill(0);
        h[124] = 0x80;
        h[128..136].copy_from_slice(&(1u64 << 62).to_be_bytes());
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "pax-huge.tar.gz",
            lying_member(&[("size", "1000000000000000000")], |_| {}),
            "declares 1000000000000000000 bytes",
        ),
        ("gnu-huge.tar.gz", lying_member(&[], base256), "declares 4611686018427387904 bytes"),
        ("pax-negative.tar.gz", lying_member(&[("size", "-5")], |_| {}), "PAX size \"-5\""),
        ("pax-uid.tar.gz", lying_member(&[("uid", "4294967295")], |_| {}), "uid 4294967295"),
        ("pax-gid.tar.gz", lying_member(&[("gid", "99999999999")], |_| {}), "gid 99999999999"),
    ];
    for (name, member, needle) in cases {
        let ws = Workspace::new();
        let mut bytes = tar(&[Member::File { name: "ok", content: b"fine" }]);
        bytes.truncate(bytes.len() - 1024);
        bytes.extend_from_slice(&member);
        let r = tarball_recipe(&ws, gzip(&bytes), name);
        rejects(&ws, &r, Some(EXIT_ERROR), &[name, "liar", needle]);
    }
    // A member cut short by the end of the archive.
    let ws = Workspace::new();
    let mut bytes = tar(&[Member::File { name: "liar", content: &[7u8; 5000] }]);
    bytes.truncate(512 + 3000);
    let r = tarball_recipe(&ws, bytes, "cut.tar");
    rejects(&ws, &r, Some(EXIT_ERROR), &["cut.tar", "liar", "declares 5000 bytes"]);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

#[test]
fn damaged_gzip_is_refused() {
    let good = tar_gz(&[Member::File { name: "etc/motd", content: b"hello\n" }]);
    let mut bad_crc = good.clone();
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 0xff;
    let no_trailer = good[..good.len() - 8].to_vec();
    let cut = good[..good.len() / 2].to_vec();
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"not gzip at all");
    for (name, bytes) in [
        ("crc.tar.gz", bad_crc),
        ("trailer.tar.gz", no_trailer),
        ("cut.tar.gz", cut),
        ("trailing.tar.gz", trailing),
    ] {
        let ws = Workspace::new();
        let r = tarball_recipe(&ws, bytes, name);
        rejects(&ws, &r, Some(EXIT_ERROR), &[name]);
    }
}

/// Runs `kiln ARGS` alone under a python3 parent and returns kiln's exit code and peak
/// resident set in KiB (`getrusage(RUSAGE_CHILDREN)` after it was waited for).
fn peak_rss(kiln_args: &[&str], tmp: &Path, store: &Path, cache: &Path) -> (i32, u64, String) {
    let script = "import resource, subprocess, sys\n\
                  p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n\
                  sys.stderr.buffer.write(p.stdout + p.stderr)\n\
                  print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(support::KILN)
        .arg("--store")
        .arg(store)
        .args(kiln_args)
        .env("TMPDIR", tmp)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("KILN_STORE")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut fields = stdout.split_whitespace();
    let code = fields.next().and_then(|c| c.parse().ok()).expect("exit code");
    let rss = fields.next().and_then(|c| c.parse().ok()).expect("max rss");
    (code, rss, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A .tar.gz holding one member, `zeros`, of `gib` GiB of zeros: gzip members of 64 MiB of
/// zeros back to back (one gzip stream to a reader), so it is small and quick to make.
fn zero_bomb(gib: u64) -> Vec<u8> {
    let size = gib << 30;
    let mut out = gzip(&header_with("zeros", b'0', 0o644, 0, "", |h| {
        h[124..136].fill(0);
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }));
    let chunk = gzip(&vec![0u8; 64 << 20]);
    for _ in 0..(size >> 26) {
        out.extend_from_slice(&chunk);
    }
    out.extend_from_slice(&gzip(&[0u8; 1024]));
    out
}

#[test]
fn a_gzip_bomb_streams_with_bounded_memory() {
    const GIB: u64 = 10;
    let ws = Workspace::new();
    let bomb = zero_bomb(GIB);
    assert!(bomb.len() < 16 << 20, "the bomb is {} bytes", bomb.len());
    ws.write("recipe/vendor/bomb.tar.gz", &bomb);
    let text = "[image]\nname = \"bomb\"\nversion = \"1\"\ncompression = \"zstd\"\n\
                [[layer]]\nname = \"l\"\ntarballs = [{ src = \"vendor/bomb.tar.gz\", dest = \"/\" }]\n";
    let r = ws.write("recipe/recipe.toml", text);
    let tmp = ws.mkdir("tmp");
    let store = ws.store("store");
    let (code, rss_kib, stderr) = peak_rss(
        &["--json", "build", r.to_str().expect("utf-8")],
        &tmp,
        &store,
        &ws.mkdir("cache"),
    );
    assert_eq!(code, 0, "{stderr}");
    eprintln!("peak RSS for a {GIB} GiB member: {} MiB", rss_kib >> 10);
    assert!(rss_kib <= 256 << 10, "peak RSS {rss_kib} KiB for a {GIB} GiB member");
    let left = left_in(&tmp);
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn a_disk_too_small_or_an_esp_larger_than_the_disk_stores_nothing() {
    let layer = "inline = [{ dest = \"/boot/efi.bin\", content = \"efi\" }, \
                 { dest = \"/etc/motd\", content = \"hi\" }]\n";
    let ws = Workspace::new();
    let r = recipe(&ws, &format!("{layer}[disk]\nsize = \"1MiB\"\n"));
    rejects(&ws, &r, Some(EXIT_ERROR), &["raise [disk] size"]);
    let ws = Workspace::new();
    let r = recipe(
        &ws,
        &format!(
            "{layer}[disk]\nsize = \"8MiB\"\n[disk.esp]\nsize = \"16MiB\"\n\
             files = {{ \"EFI/BOOT/BOOTX64.EFI\" = \"/boot/efi.bin\" }}\n"
        ),
    );
    rejects(&ws, &r, Some(EXIT_ERROR), &["[disk]"]);
}

#[test]
fn an_unknown_key_in_a_locked_input_is_refused() {
    let ws = Workspace::new();
    ws.write("recipe/motd", "hi\n");
    let r = recipe(&ws, "files = [{ src = \"motd\", dest = \"/etc/motd\" }]");
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    kiln.run(&["lock", r.to_str().expect("utf-8")]).ok();
    let lock = ws.path("recipe/recipe.lock");
    let text = fs::read_to_string(&lock).expect("lock");
    assert!(text.contains("[[input]]\n"), "{text}");
    fs::write(&lock, text.replace("[[input]]\n", "[[input]]\nmode = 420\n")).expect("edit lock");
    kiln.run(&["build", "--locked", r.to_str().expect("utf-8")])
        .fails()
        .stderr_has(&["recipe.lock", "unknown field `mode`"]);
    assert!(blobs(&store).is_empty());
}

#[test]
fn names_linux_cannot_create_are_refused_with_the_path() {
    let long_name = "n".repeat(256);
    let ws = Workspace::new();
    let r = recipe(&ws, &format!("inline = [{{ dest = \"/etc/{long_name}\", content = \"x\" }}]"));
    rejects(&ws, &r, Some(EXIT_ERROR), &[&format!("/etc/{long_name}"), "256 bytes"]);

    let deep: String = (0..17).map(|i| format!("/{}", format!("{i:02}").repeat(120))).collect();
    let ws = Workspace::new();
    let r = recipe(&ws, &format!("inline = [{{ dest = \"{deep}\", content = \"x\" }}]"));
    rejects(&ws, &r, Some(EXIT_ERROR), &["4096", &deep[..40]]);

    // A tarball member named through a PAX `path` record.
    let ws = Workspace::new();
    let member = format!("usr/{long_name}");
    let mut raw = pax(&[("path", &member)]);
    raw.extend_from_slice(&header_with("short", b'0', 0o644, 0, "", |_| {}));
    let r = tarball_recipe(&ws, gzip(&tar(&[Member::Raw(raw)])), "long.tar.gz");
    rejects(&ws, &r, Some(EXIT_ERROR), &["long.tar.gz", &member, "256 bytes"]);
}

#[test]
fn more_layers_than_runtimes_stack_are_refused_with_the_line() {
    let layers: String = (0..128)
        .map(|i| {
            format!(
                "[[layer]]\nname = \"l{i}\"\ninline = [{{ dest = \"/{i}\", content = \"\" }}]\n"
            )
        })
        .collect();
    let ws = Workspace::new();
    let r = ws.write(
        "recipe/recipe.toml",
        format!("[image]\nname = \"deep\"\nversion = \"1\"\n{layers}"),
    );
    // Three lines of [image], 127 layers of three lines, then the 128th layer and its name.
    rejects(&ws, &r, Some(EXIT_ERROR), &["at most 127 layers", "recipe.toml:386:8"]);
    let ok: String = layers.lines().take(127 * 3).map(|l| format!("{l}\n")).collect();
    let r =
        ws.write("recipe/recipe.toml", format!("[image]\nname = \"deep\"\nversion = \"1\"\n{ok}"));
    Kiln::new(&ws.store("ok")).run(&["build", r.to_str().expect("utf-8")]).ok();
}

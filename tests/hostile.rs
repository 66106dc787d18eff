//! Hostile and broken input: every case fails with a non-zero exit, a message that names the
//! offending thing, and nothing written to the store.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::tarball::{tar, tar_gz, Member};
use support::{blobs, is_root, sh, Kiln, Workspace, EXIT_ERROR, EXIT_LOCK_MISMATCH};

/// A recipe with one layer whose body is `layer`, written as `ws/recipe/recipe.toml`.
fn recipe(ws: &Workspace, layer: &str) -> PathBuf {
    let text = format!(
        "[image]\nname = \"hostile\"\nversion = \"1.0.0\"\n\n[[layer]]\nname = \"l\"\n{layer}\n"
    );
    ws.write("recipe/recipe.toml", text)
}

/// Builds `recipe` into a fresh store, asserts failure with `code` (or any non-zero code),
/// that stderr names every `needle`, and that the store holds no blob.
fn rejects(ws: &Workspace, recipe: &Path, code: Option<i32>, needles: &[&str]) -> String {
    let store = ws.store("store");
    let run = Kiln::new(&store).run(&["build", recipe.to_str().expect("utf-8")]);
    let run = match code {
        Some(c) => run.fails_with(c),
        None => run.fails(),
    };
    let run = run.stderr_has(needles);
    let written = blobs(&store);
    assert!(written.is_empty(), "a failed build wrote blobs: {written:?}\n{run}");
    run.stderr
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
fn symlink_in_tree_pointing_outside_it_is_rejected() {
    let ws = Workspace::new();
    ws.write("recipe/tree/ok.txt", "fine\n");
    std::os::unix::fs::symlink("/etc/passwd", ws.path("recipe/tree/evil")).expect("ln -s");
    let r = recipe(&ws, "trees = [{ src = \"tree\", dest = \"/\" }]");
    rejects(&ws, &r, Some(EXIT_ERROR), &["evil", "/etc/passwd"]);

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
    rejects(&ws, &r, Some(EXIT_ERROR), &["pipe"]);
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
    rejects(&ws, &r, Some(EXIT_ERROR), &["null"]);
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
    rejects(&ws, &r, Some(EXIT_ERROR), &["twice", "/etc/motd", "declared twice"]);
    let store = ws.store("lock-store");
    Kiln::new(&store)
        .run(&["lock", r.to_str().expect("utf-8")])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["/etc/motd", "declared twice"]);
    assert!(!ws.path("recipe/recipe.lock").exists(), "a lock was written for a bad recipe");
}

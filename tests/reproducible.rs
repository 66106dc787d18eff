#![allow(clippy::unwrap_used)]
//! The same recipe gives the same digest whatever the conditions of the build: time zone,
//! locale, umask, working directory, store location, how and when the inputs were created,
//! line endings of the recipe, and the number of threads.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::{digest_of, noise, touch_at, Kiln, Workspace};

const RECIPE: &str = r#"epoch = 1700000000

[image]
name = "repro"
version = "1.0.0"

[[layer]]
name = "tree"
trees = [{ src = "rootfs", dest = "/" }]

[[layer]]
name = "extras"
files = [{ src = "files/app", dest = "/usr/local/bin/app", mode = 0o755 }]
inline = [{ dest = "/etc/motd", content = "hello\n" }]
symlinks = [{ dest = "/bin/sh", target = "busybox" }]
hardlinks = [{ dest = "/usr/local/bin/app2", target = "/usr/local/bin/app" }]
dirs = [{ dest = "/var/lib/app", mode = 0o750, uid = 1000, gid = 1000 }]

[config]
entrypoint = ["/usr/local/bin/app"]
env = { PATH = "/usr/bin:/bin", LANG = "C", A = "1", Z = "26" }
labels = { b = "2", a = "1", c = "3", d = "4", e = "5", f = "6" }

[annotations]
"org.example.z" = "z"
"org.example.a" = "a"
"org.example.m" = "m"
"#;

/// Deterministic compressible text: enough of it that a multi-threaded compressor has
/// several blocks to split.
fn text_blob(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 8] =
        ["kiln ", "oven ", "bake ", "layer ", "digest ", "tar ", "\n", "image "];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(WORDS[(state >> 61) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

/// How the inputs of one workspace are laid out on disk; the content is always the same.
struct Layout {
    /// Create the input files in reverse order.
    reverse: bool,
    /// mtime/atime given to every input (through `touch -d`).
    date: &'static str,
    /// Permission bits of non-executable / executable inputs (normalised by kiln).
    modes: (u32, u32),
}

const PLAIN: Layout = Layout { reverse: false, date: "2001-02-03 04:05:06", modes: (0o644, 0o755) };
const SHUFFLED: Layout =
    Layout { reverse: true, date: "2030-12-31 23:59:59", modes: (0o600, 0o700) };

/// Writes the recipe and its inputs into `ws/<sub>/`, returning the recipe path.
fn write_inputs(ws: &Workspace, sub: &str, layout: &Layout) -> PathBuf {
    let mut files: Vec<(String, Vec<u8>, bool)> = vec![
        ("files/app".into(), b"#!/bin/sh\necho app\n".to_vec(), true),
        ("rootfs/etc/hostname".into(), b"repro\n".to_vec(), false),
        ("rootfs/usr/bin/tool".into(), b"#!/bin/sh\nexit 0\n".to_vec(), true),
        ("rootfs/usr/share/doc/big.txt".into(), text_blob(3 << 20, 1), false),
        ("rootfs/usr/share/doc/noise.bin".into(), noise(1 << 20, 2), false),
    ];
    for i in 0..40 {
        files.push((
            format!("rootfs/usr/share/many/f{i:02}.txt"),
            text_blob(100 + i * 37, i as u64),
            false,
        ));
    }
    if layout.reverse {
        files.reverse();
    }
    for (rel, content, exec) in &files {
        let path = ws.write(&format!("{sub}/{rel}"), content);
        let mode = if *exec { layout.modes.1 } else { layout.modes.0 };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod input");
    }
    // A hard link, a symlink and an empty folder inside the tree.
    let root = ws.path(sub);
    fs::hard_link(root.join("rootfs/etc/hostname"), root.join("rootfs/etc/hostname.bak"))
        .expect("hard link in tree");
    std::os::unix::fs::symlink("hostname", root.join("rootfs/etc/name")).expect("symlink in tree");
    fs::create_dir_all(root.join("rootfs/var/empty")).expect("empty folder in tree");

    let recipe = ws.write(&format!("{sub}/repro.toml"), RECIPE);
    for entry in walk(&root) {
        touch_at(&entry, layout.date);
    }
    recipe
}

/// Every path under `dir` (children before their folder, so a folder's time is set last).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> =
        fs::read_dir(dir).expect("read folder").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.symlink_metadata().expect("stat").is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// The digest of a plain build in a fresh workspace, fresh store, default environment.
fn reference() -> String {
    let ws = Workspace::new();
    let recipe = write_inputs(&ws, "src", &PLAIN);
    digest_of(&Kiln::new(&ws.store("store")).build(&recipe, &[]))
}

#[test]
fn rebuild_in_same_store_gives_same_digest() {
    let ws = Workspace::new();
    let recipe = write_inputs(&ws, "src", &PLAIN);
    let kiln = Kiln::new(&ws.store("store"));
    let first = digest_of(&kiln.build(&recipe, &[]));
    let second = digest_of(&kiln.build(&recipe, &[]));
    assert_eq!(first, second);
    assert_eq!(first, reference(), "a second workspace gave a different digest");
}

#[test]
fn time_zone_and_locale_do_not_matter() {
    let ws = Workspace::new();
    let recipe = write_inputs(&ws, "src", &PLAIN);
    let a = Kiln::new(&ws.store("a"))
        .env("TZ", "UTC")
        .env("LANG", "C")
        .env("LC_ALL", "C")
        .build(&recipe, &[]);
    let b = Kiln::new(&ws.store("b"))
        .env("TZ", "Pacific/Kiritimati")
        .env("LANG", "tr_TR.UTF-8")
        .env("LC_ALL", "tr_TR.UTF-8")
        .env("LC_COLLATE", "de_DE.UTF-8")
        .build(&recipe, &[]);
    let c = Kiln::new(&ws.store("c")).env("TZ", "America/St_Johns").build(&recipe, &[]);
    assert_eq!(digest_of(&a), digest_of(&b), "TZ/LANG/LC_ALL changed the digest");
    assert_eq!(digest_of(&a), digest_of(&c), "TZ changed the digest");
}

#[test]
fn umask_does_not_matter() {
    let ws = Workspace::new();
    let recipe = write_inputs(&ws, "src", &PLAIN);
    let a = Kiln::new(&ws.store("a")).umask("022").build(&recipe, &[]);
    let b = Kiln::new(&ws.store("b")).umask("077").build(&recipe, &[]);
    let c = Kiln::new(&ws.store("c")).umask("000").build(&recipe, &[]);
    assert_eq!(digest_of(&a), digest_of(&b), "umask 077 changed the digest");
    assert_eq!(digest_of(&a), digest_of(&c), "umask 000 changed the digest");
}

#[test]
fn working_directory_does_not_matter() {
    let ws = Workspace::new();
    let recipe = write_inputs(&ws, "src", &PLAIN);
    let elsewhere = ws.mkdir("somewhere/else");
    // Absolute recipe path from an unrelated folder, and a relative one from the recipe's
    // folder and from its parent.
    let a = Kiln::new(&ws.store("a")).cwd(&elsewhere).build(&recipe, &[]);
    let b = Kiln::new(&ws.store("b")).cwd(&ws.path("src")).build(Path::new("repro.toml"), &[]);
    let c = Kiln::new(&ws.store("c")).cwd(ws.root()).build(Path::new("src/repro.toml"), &[]);
    assert_eq!(digest_of(&a), digest_of(&b), "working directory changed the digest");
    assert_eq!(digest_of(&a), digest_of(&c), "working directory changed the digest");
}

#[test]
fn store_location_does_not_matter() {
    let ws = Workspace::new();
    let recipe = write_inputs(&ws, "src", &PLAIN);
    let plain = Kiln::new(&ws.store("plain")).build(&recipe, &[]);
    let deep = ws.mkdir("some/much/deeper/store/location");
    let url = format!("file://{}", deep.display());
    let file_url = Kiln::new(Path::new(&url)).build(&recipe, &[]);
    let memory = Kiln::new(Path::new("memory://")).build(&recipe, &[]);
    assert_eq!(digest_of(&plain), digest_of(&file_url), "store path changed the digest");
    assert_eq!(digest_of(&plain), digest_of(&memory), "memory:// store changed the digest");
}

#[test]
fn input_order_times_and_permissions_do_not_matter() {
    let ws = Workspace::new();
    let a_recipe = write_inputs(&ws, "a", &PLAIN);
    let b_recipe = write_inputs(&ws, "b", &SHUFFLED);
    let a = Kiln::new(&ws.store("store-a")).build(&a_recipe, &[]);
    let b = Kiln::new(&ws.store("store-b")).build(&b_recipe, &[]);
    assert_eq!(
        digest_of(&a),
        digest_of(&b),
        "creation order, mtime/atime or permission bits of the inputs changed the digest"
    );
    // The lock records only content, so both workspaces wrote the same one.
    let lock_a = fs::read(ws.path("a/repro.lock")).expect("build wrote a/repro.lock");
    let lock_b = fs::read(ws.path("b/repro.lock")).expect("build wrote b/repro.lock");
    assert!(lock_a == lock_b, "lock files differ between identical inputs");
}

#[test]
fn thread_count_does_not_matter() {
    let ws = Workspace::new();
    let recipe = write_inputs(&ws, "src", &PLAIN);
    let one = Kiln::new(&ws.store("one")).build(&recipe, &["--threads", "1"]);
    let four = Kiln::new(&ws.store("four")).build(&recipe, &["--threads", "4"]);
    let default = Kiln::new(&ws.store("default")).build(&recipe, &[]);
    assert_eq!(digest_of(&one), digest_of(&four), "--threads 1 and --threads 4 differ");
    assert_eq!(digest_of(&one), digest_of(&default), "default thread count differs");
}

#[test]
fn crlf_recipe_gives_same_digest_and_lock() {
    let ws = Workspace::new();
    let lf = write_inputs(&ws, "lf", &PLAIN);
    let crlf = write_inputs(&ws, "crlf", &PLAIN);
    fs::write(&crlf, RECIPE.replace('\n', "\r\n")).expect("write CRLF recipe");
    let a = Kiln::new(&ws.store("a")).build(&lf, &[]);
    let b = Kiln::new(&ws.store("b")).build(&crlf, &[]);
    assert_eq!(digest_of(&a), digest_of(&b), "CRLF line endings changed the digest");
    let lock_lf = fs::read(ws.path("lf/repro.lock")).expect("lf lock");
    let lock_crlf = fs::read(ws.path("crlf/repro.lock")).expect("crlf lock");
    assert!(lock_lf == lock_crlf, "CRLF and LF recipes gave different locks");
}

#[test]
fn epoch_does_change_the_digest() {
    // Guards the tests above against passing trivially: the epoch is an input.
    let ws = Workspace::new();
    let recipe = write_inputs(&ws, "src", &PLAIN);
    let recipe_epoch = Kiln::new(&ws.store("a")).build(&recipe, &[]);
    let same_flag =
        Kiln::new(&ws.store("b")).build(&recipe, &["--source-date-epoch", "1700000000"]);
    let other_flag = Kiln::new(&ws.store("c")).build(&recipe, &["--source-date-epoch", "1"]);
    let other_env = Kiln::new(&ws.store("d")).env("SOURCE_DATE_EPOCH", "1").build(&recipe, &[]);
    assert_eq!(digest_of(&recipe_epoch), digest_of(&same_flag));
    assert_ne!(digest_of(&recipe_epoch), digest_of(&other_flag), "--source-date-epoch ignored");
    assert_eq!(
        digest_of(&other_flag),
        digest_of(&other_env),
        "SOURCE_DATE_EPOCH and --source-date-epoch disagree"
    );
}

/// The JSON blob `digest` of the folder store `store`.
fn blob_json(store: &Path, digest: &str) -> serde_json::Value {
    let path = store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The file `member` of the gzip layer blob `digest` in `store`, read by tar.
fn layer_file(store: &Path, digest: &str, member: &str) -> String {
    let blob = store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let out = std::process::Command::new("tar")
        .args(["-xzOf", blob.to_str().unwrap(), member])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn files_given_per_platform_reach_only_their_platform_and_build_the_same_anywhere() {
    let ws = Workspace::new();
    ws.write("p/bin/amd64/app", "the amd64 app\n");
    ws.write("p/bin/arm64/app", "the arm64 app\n");
    let recipe = ws.write(
        "p/app.toml",
        r#"epoch = 1700000000

[image]
name = "app"
version = "1"
platforms = ["linux/amd64", "linux/arm64"]

[[layer]]
name = "common"
inline = [{ dest = "/etc/motd", content = "hello\n" }]

[[layer]]
name = "app"
files = [
  { src = "bin/amd64/app", dest = "/usr/bin/app", mode = 0o755, platform = "linux/amd64" },
  { src = "bin/arm64/app", dest = "/usr/bin/app", mode = 0o755, platform = "linux/arm64" },
]
"#,
    );
    let store = ws.store("a");
    let a = Kiln::new(&store).build(&recipe, &["--threads", "2"]);
    assert_eq!(a["layers"]["built"], 3, "the common layer is written once: {a}");
    let lock: toml::Value =
        toml::from_str(&fs::read_to_string(recipe.with_extension("lock")).unwrap()).unwrap();
    let inputs: Vec<(&str, &str)> = lock["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["src"].as_str().unwrap(), i["platform"].as_str().unwrap()))
        .collect();
    assert_eq!(inputs, [("bin/amd64/app", "linux/amd64"), ("bin/arm64/app", "linux/arm64")]);

    let index = blob_json(&store, &digest_of(&a));
    let manifests: Vec<serde_json::Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| blob_json(&store, m["digest"].as_str().unwrap()))
        .collect();
    assert_eq!(manifests.len(), 2);
    assert_eq!(manifests[0]["layers"][0], manifests[1]["layers"][0]);
    for (manifest, arch) in manifests.iter().zip(["amd64", "arm64"]) {
        let layer = manifest["layers"][1]["digest"].as_str().unwrap();
        assert_eq!(layer_file(&store, layer, "usr/bin/app"), format!("the {arch} app\n"));
    }

    // The same lock in another store, under another umask and time zone, one thread.
    let b = Kiln::new(&ws.store("b"))
        .umask("077")
        .env("TZ", "Pacific/Kiritimati")
        .build(&recipe, &["--locked", "--threads", "1"]);
    assert_eq!(digest_of(&a), digest_of(&b));

    // A layer's cache key holds only its own platform's inputs: a new arm64 binary rebuilds
    // the arm64 layer alone, and the amd64 manifest stays as it was.
    ws.write("p/bin/arm64/app", "the new arm64 app\n");
    let c = Kiln::new(&store).build(&recipe, &[]);
    assert_eq!(c["layers"]["built"], 1, "{c}");
    let again = blob_json(&store, &digest_of(&c));
    assert_eq!(again["manifests"][0], index["manifests"][0]);
    assert_ne!(again["manifests"][1], index["manifests"][1]);
}

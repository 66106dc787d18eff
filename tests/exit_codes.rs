//! The documented exit codes, each reached by real commands: 0 success, 1 error, 2 usage,
//! 3 an input differs from the lock (or there is none with --locked), 4 integrity failure.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use support::{
    copy_recipes, digest_of, Kiln, Run, Workspace, EXIT_ERROR, EXIT_INTEGRITY, EXIT_LOCK_MISMATCH,
    EXIT_USAGE,
};

/// A store holding golden.toml built once, and the copied recipes folder.
fn built(ws: &Workspace) -> (PathBuf, PathBuf, serde_json::Value) {
    let recipes = copy_recipes(ws.root());
    let store = ws.store("store");
    let report = Kiln::new(&store).build(&recipes.join("golden.toml"), &[]);
    (store, recipes, report)
}

fn blob_path(store: &Path, digest: &str) -> PathBuf {
    store.join("blobs/sha256").join(digest.strip_prefix("sha256:").expect("sha256 digest"))
}

/// The first layer of the image's (only) manifest.
fn first_layer(store: &Path, report: &serde_json::Value) -> String {
    let read = |digest: &str| -> serde_json::Value {
        serde_json::from_slice(&fs::read(blob_path(store, digest)).expect("blob")).expect("JSON")
    };
    let index = read(&digest_of(report));
    let manifest = read(index["manifests"][0]["digest"].as_str().expect("manifest digest"));
    manifest["layers"][0]["digest"].as_str().expect("layer digest").to_string()
}

/// Flips one bit in the middle of a stored blob, keeping its size.
fn corrupt(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("make blob writable");
    let mut bytes = fs::read(path).expect("read blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(path, bytes).expect("write corrupted blob");
}

/// How many times `needle` appears in the run's stderr.
fn count(run: &Run, needle: &str) -> usize {
    run.stderr.matches(needle).count()
}

#[test]
fn success_exits_0() {
    let ws = Workspace::new();
    let (store, recipes, _) = built(&ws);
    let kiln = Kiln::new(&store);
    kiln.run(&["images"]).ok();
    kiln.run(&["inspect", "golden:1.0.0"]).ok();
    kiln.run(&["verify", "golden:1.0.0"]).ok();
    kiln.run(&["store", "check"]).ok();
    kiln.run(&["build", "--locked", recipes.join("golden.toml").to_str().unwrap()]).ok();
}

#[test]
fn errors_exit_1_naming_each_cause_once() {
    let ws = Workspace::new();
    let kiln = Kiln::new(&ws.store("store"));
    let missing = ws.path("missing.toml");
    let run = kiln.run(&["build", missing.to_str().unwrap()]).fails_with(EXIT_ERROR);
    let run = run.stderr_has(&["cannot read recipe", "No such file or directory"]);
    assert_eq!(count(&run, "No such file or directory"), 1, "{run}");

    // An input the recipe names is missing: the chain runs from the recipe to the file.
    let recipe = ws.write(
        "r.toml",
        "epoch = 1\n[image]\nname = \"r\"\nversion = \"1\"\n\
         [[layer]]\nname = \"l\"\nfiles = [{ src = \"absent\", dest = \"/absent\" }]\n",
    );
    let run = kiln.run(&["build", recipe.to_str().unwrap()]).fails_with(EXIT_ERROR);
    assert_eq!(count(&run, "No such file or directory"), 1, "{run}");
    assert_eq!(count(&run, "absent"), 1, "{run}");

    // A ref that is not there is a mistake in the command, not damage in the store.
    kiln.run(&["inspect", "nothing:1"]).fails_with(EXIT_ERROR);
    kiln.run(&["--json", "verify", "nothing:1"]).fails_with(EXIT_ERROR);
}

#[test]
fn usage_errors_exit_2() {
    let ws = Workspace::new();
    let kiln = Kiln::new(&ws.store("store"));
    kiln.run(&["no-such-command"]).fails_with(EXIT_USAGE);
    kiln.run(&["--json", "build"]).fails_with(EXIT_USAGE);
    kiln.run(&["build", "x.toml", "--no-such-flag"]).fails_with(EXIT_USAGE);
    kiln.run(&["build", "x.toml", "--threads", "0"]).fails_with(EXIT_USAGE);
    kiln.run(&["gc"]).fails_with(EXIT_USAGE);
}

#[test]
fn a_lock_mismatch_exits_3() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let golden = recipes.join("golden.toml");
    let golden = golden.to_str().unwrap();
    let kiln = Kiln::new(&ws.store("store"));
    kiln.run(&["build", "--locked", golden])
        .fails_with(EXIT_LOCK_MISMATCH)
        .stderr_has(&["no lock file"]);
    kiln.run(&["--json", "lock", golden]).ok();
    fs::write(recipes.join("golden/app.sh"), "#!/bin/sh\necho changed\n").unwrap();
    kiln.run(&["--json", "build", "--locked", golden])
        .fails_with(EXIT_LOCK_MISMATCH)
        .stderr_has(&["golden/app.sh"]);
}

#[test]
fn a_corrupt_blob_exits_4_from_every_command_that_reads_it() {
    let ws = Workspace::new();
    let (store, _, report) = built(&ws);
    let layer = first_layer(&store, &report);
    corrupt(&blob_path(&store, &layer));
    let key = format!("blobs/sha256/{}", layer.strip_prefix("sha256:").unwrap());
    let kiln = Kiln::new(&store);
    let layout = ws.path("layout");
    let target = format!("file://{}", ws.path("copy").display());
    let from = store.to_str().unwrap();
    let runs = [
        kiln.run(&["verify", "golden:1.0.0"]),
        kiln.run(&["--json", "verify", "golden:1.0.0"]),
        kiln.run(&["copy", "golden:1.0.0", "--from", from, "--to", &target]),
        kiln.run(&["export", "golden:1.0.0", "--oci-layout", layout.to_str().unwrap()]),
        kiln.run(&["--json", "store", "check"]),
    ];
    for run in runs {
        let run = run.fails_with(EXIT_INTEGRITY);
        let said = format!("{}{}", run.stdout, run.stderr);
        assert!(said.contains(&key) || said.contains(&layer), "{run}");
    }
}

#[test]
fn a_blob_missing_under_a_stored_image_exits_4_and_a_name_or_digest_not_there_exits_1() {
    let ws = Workspace::new();
    let (store, _, report) = built(&ws);
    let layer = first_layer(&store, &report);
    fs::remove_file(blob_path(&store, &layer)).expect("remove the layer blob");
    let key = format!("blobs/sha256/{}", layer.strip_prefix("sha256:").unwrap());
    let kiln = Kiln::new(&store);
    let layout = ws.path("layout");
    let target = format!("file://{}", ws.path("copy").display());
    let from = store.to_str().unwrap();
    // The ref and the index and manifest it leads to are there; the store lacks a blob they
    // name, so it is not whole.
    let runs = [
        kiln.run(&["verify", "golden:1.0.0"]),
        kiln.run(&["copy", "golden:1.0.0", "--from", from, "--to", &target]),
        kiln.run(&["export", "golden:1.0.0", "--oci-layout", layout.to_str().unwrap()]),
        kiln.run(&["--json", "store", "check"]),
    ];
    for run in runs {
        let run = run.fails_with(EXIT_INTEGRITY);
        let said = format!("{}{}", run.stdout, run.stderr);
        assert!(said.contains(&key) || said.contains(&layer), "{run}");
    }

    // What the user typed is not there: a mistake in the command, whatever the store holds.
    let absent = kiln_oci::Digest::of(b"absent").to_string();
    for args in [
        vec!["inspect", "golden:9.9.9"],
        vec!["inspect", absent.as_str()],
        vec!["export", absent.as_str(), "--oci-layout", layout.to_str().unwrap()],
        vec!["copy", absent.as_str(), "--from", from, "--to", &target],
        vec!["verify", absent.as_str()],
    ] {
        kiln.run(&args).fails_with(EXIT_ERROR).stderr_has(&["not in the store"]);
    }
}

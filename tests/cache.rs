//! The build cache: an unchanged layer is neither re-tarred nor re-compressed, and a no-op
//! rebuild uploads nothing. The `--json` report says so.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use support::{blobs, digest_of, sh, Kiln, Workspace};

const RECIPE: &str = r#"epoch = 1700000000

[image]
name = "cached"
version = "2.0.0"

[[layer]]
name = "one"
inline = [{ dest = "/etc/one", content = "1\n" }]

[[layer]]
name = "two"
files = [{ src = "files/two", dest = "/etc/two" }]

[[layer]]
name = "three"
trees = [{ src = "tree", dest = "/srv" }]
"#;

fn workspace() -> (Workspace, std::path::PathBuf) {
    let ws = Workspace::new();
    ws.write("r/files/two", "2\n");
    ws.write("r/tree/a.txt", "a\n");
    ws.write("r/tree/sub/b.txt", "b\n");
    let recipe = ws.write("r/cached.toml", RECIPE);
    (ws, recipe)
}

fn counts(report: &Value) -> (Value, Value) {
    (report["layers"].clone(), report["blobs"].clone())
}

#[test]
fn cold_build_builds_every_layer() {
    let (ws, recipe) = workspace();
    let report = Kiln::new(&ws.store("s")).build(&recipe, &[]);
    let (layers, blob_counts) = counts(&report);
    assert_eq!(layers, json!({ "built": 3, "reused": 0 }), "{report:#}");
    assert_eq!(blob_counts["present"], 0, "{report:#}");
    // 3 layers + config + manifest + index.
    assert_eq!(blob_counts["uploaded"], 6, "{report:#}");
    assert_eq!(blobs(&ws.store("s")).len(), 6);
}

#[test]
fn noop_rebuild_is_served_from_the_cache() {
    let (ws, recipe) = workspace();
    let kiln = Kiln::new(&ws.store("s"));
    let first = kiln.build(&recipe, &[]);
    let before = blobs(&ws.store("s"));
    let second = kiln.build(&recipe, &[]);
    assert_eq!(digest_of(&first), digest_of(&second));
    assert_eq!(second["layers"], json!({ "built": 0, "reused": 3 }), "{second:#}");
    assert_eq!(second["blobs"]["uploaded"], 0, "{second:#}");
    assert_eq!(blobs(&ws.store("s")), before, "a no-op rebuild changed the store's blobs");
}

#[test]
fn changing_one_input_rebuilds_only_its_layer() {
    let (ws, recipe) = workspace();
    let kiln = Kiln::new(&ws.store("s"));
    let first = kiln.build(&recipe, &[]);
    ws.write("r/tree/sub/b.txt", "b changed\n");
    let second = kiln.build(&recipe, &[]);
    assert_ne!(digest_of(&first), digest_of(&second), "a changed tree must change the image");
    assert_eq!(second["layers"], json!({ "built": 1, "reused": 2 }), "{second:#}");

    // Going back to the old content reuses everything and restores the old digest.
    ws.write("r/tree/sub/b.txt", "b\n");
    let third = kiln.build(&recipe, &[]);
    assert_eq!(digest_of(&first), digest_of(&third));
    assert_eq!(third["layers"], json!({ "built": 0, "reused": 3 }), "{third:#}");
}

#[test]
fn cache_lives_in_the_store() {
    let (ws, recipe) = workspace();
    let a = Kiln::new(&ws.store("a")).build(&recipe, &[]);
    let b = Kiln::new(&ws.store("b")).build(&recipe, &[]);
    assert_eq!(digest_of(&a), digest_of(&b));
    assert_eq!(b["layers"], json!({ "built": 3, "reused": 0 }), "a fresh store has no cache");
}

#[test]
fn deleting_the_cache_only_costs_time() {
    let (ws, recipe) = workspace();
    let store = ws.store("s");
    let kiln = Kiln::new(&store);
    let first = kiln.build(&recipe, &[]);
    let cache = store.join("cache");
    assert!(cache.is_dir(), "expected the build cache under {}", cache.display());
    std::fs::remove_dir_all(&cache).expect("remove cache");
    let second = kiln.build(&recipe, &[]);
    assert_eq!(digest_of(&first), digest_of(&second));
    assert_eq!(second["layers"], json!({ "built": 3, "reused": 0 }), "{second:#}");
    assert_eq!(second["blobs"]["uploaded"], 0, "every blob was already present: {second:#}");
    assert_eq!(second["blobs"]["present"], 6, "{second:#}");
}

#[test]
fn same_size_edit_with_restored_mtime_is_noticed() {
    // kiln remembers input digests by stat data; an edit that keeps the size and puts the
    // mtime back (as `cp -p` or a careless tool would) must still be seen.
    let (ws, recipe) = workspace();
    let kiln = Kiln::new(&ws.store("s"));
    let first = kiln.build(&recipe, &[]);
    let file = ws.path("r/files/two");
    let reference = ws.path("two.mtime");
    sh("cp", &["-p", file.to_str().expect("utf-8"), reference.to_str().expect("utf-8")]);
    std::fs::write(&file, "3\n").expect("same-size edit");
    sh("touch", &["-r", reference.to_str().expect("utf-8"), file.to_str().expect("utf-8")]);
    let second = kiln.build(&recipe, &[]);
    assert_ne!(digest_of(&first), digest_of(&second), "a same-size edit went unnoticed");
    // The edited layer and the one above it (built on top of it) are rebuilt.
    assert_eq!(second["layers"], json!({ "built": 2, "reused": 1 }), "{second:#}");
}

/// The bytes of every layer cache entry in `store`, by key.
fn cache_entries(store: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut entries: Vec<_> = std::fs::read_dir(store.join("cache/layer"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn a_build_without_a_signing_key_keeps_the_signed_cache_entries() {
    let (ws, recipe) = workspace();
    let kiln = Kiln::new(&ws.store("s"));
    let keygen = |name: &str| {
        let out = ws.path(name);
        kiln.run(&["keygen", "--out", out.to_str().unwrap()]).ok();
        (format!("{}.key", out.display()), format!("{}.pub", out.display()))
    };
    let (key, public) = keygen("runner");
    let (_, other_public) = keygen("other");
    kiln.build(&recipe, &["--cache-key", &key]);
    let signed = cache_entries(&ws.store("s"));
    assert_eq!(signed.len(), 3);

    // Trusting another key, the build refuses every entry and rebuilds every layer, but has
    // no key to sign entries with: the signed ones stay.
    let distrustful = kiln.build(&recipe, &["--trust-cache", &other_public]);
    assert_eq!(distrustful["layers"], json!({ "built": 3, "reused": 0 }), "{distrustful:#}");
    assert_eq!(cache_entries(&ws.store("s")), signed);
    let trusting = kiln.build(&recipe, &["--trust-cache", &public]);
    assert_eq!(trusting["layers"], json!({ "built": 0, "reused": 3 }), "{trusting:#}");
}

#[test]
fn a_cache_entry_with_a_wrong_diff_id_is_rebuilt_not_used() {
    let (ws, recipe) = workspace();
    let store = ws.store("s");
    let runner = Kiln::new(&store);
    let first = runner.build(&recipe, &[]);
    // Without trusted keys, anyone who can write cache/ can edit an entry: here one layer's
    // entry takes another layer's diff_id, which would make a config that lies about it.
    let poison = || {
        let entries = cache_entries(&store);
        let mut entry: Value = serde_json::from_slice(&entries[0].1).unwrap();
        let other: Value = serde_json::from_slice(&entries[1].1).unwrap();
        entry["record"]["diffId"] = other["record"]["diffId"].clone();
        std::fs::write(&entries[0].0, serde_json::to_vec(&entry).unwrap()).unwrap();
    };
    // The runner that built the layer, and one that never saw it, both refuse the entry.
    for kiln in [runner, Kiln::new(&store)] {
        poison();
        let again = kiln.build(&recipe, &[]);
        assert_eq!(digest_of(&again), digest_of(&first), "{again:#}");
        assert_eq!(again["layers"], json!({ "built": 1, "reused": 2 }), "{again:#}");
        let ignored = &again["cache"]["ignored"];
        assert_eq!(ignored.as_array().unwrap().len(), 1, "{again:#}");
        assert_eq!(ignored[0]["refusal"]["reason"], "wrongDiffId", "{again:#}");
        let clean = kiln.build(&recipe, &[]);
        assert_eq!(clean["layers"], json!({ "built": 0, "reused": 3 }), "{clean:#}");
    }
}

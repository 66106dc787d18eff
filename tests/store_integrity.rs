//! Blobs are verified on every read: a flipped byte or a truncated blob in the store makes
//! kiln fail with exit code 4 and name the key, instead of exporting bad data.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{copy_recipes, digest_of, Kiln, Workspace, EXIT_INTEGRITY};

fn blob_path(store: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    store.join("blobs/sha256").join(hex)
}

fn read_json_blob(store: &Path, digest: &str) -> Value {
    let bytes = fs::read(blob_path(store, digest)).expect("blob in store");
    serde_json::from_slice(&bytes).expect("blob is JSON")
}

/// Builds golden.toml and returns (store, manifest JSON of linux/amd64).
fn built(ws: &Workspace) -> (PathBuf, Value) {
    let recipes = copy_recipes(ws.root());
    let store = ws.store("store");
    let report = Kiln::new(&store).build(&recipes.join("golden.toml"), &[]);
    let index = read_json_blob(&store, &digest_of(&report));
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("manifest digest");
    (store.clone(), read_json_blob(&store, manifest_digest))
}

fn flip_byte(path: &Path, offset_from_middle: usize) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("make blob writable");
    let mut bytes = fs::read(path).expect("read blob");
    let i = bytes.len() / 2 + offset_from_middle;
    bytes[i] ^= 0x01;
    fs::write(path, bytes).expect("write corrupted blob");
}

fn export_fails_naming(ws: &Workspace, store: &Path, digest: &str) {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let layout = ws.path("layout");
    Kiln::new(store)
        .run(&["export", "golden:1.0.0", "--oci-layout", layout.to_str().expect("utf-8")])
        .fails_with(EXIT_INTEGRITY)
        .stderr_has(&[&format!("blobs/sha256/{hex}")]);
}

#[test]
fn flipped_byte_in_layer_is_detected_on_export() {
    let ws = Workspace::new();
    let (store, manifest) = built(&ws);
    let layer = manifest["layers"][0]["digest"].as_str().expect("layer digest").to_string();
    flip_byte(&blob_path(&store, &layer), 0);
    export_fails_naming(&ws, &store, &layer);
}

#[test]
fn flipped_byte_in_config_is_detected_on_export() {
    let ws = Workspace::new();
    let (store, manifest) = built(&ws);
    let config = manifest["config"]["digest"].as_str().expect("config digest").to_string();
    // A space somewhere in canonical JSON would still parse; flip a byte of a value.
    flip_byte(&blob_path(&store, &config), 1);
    export_fails_naming(&ws, &store, &config);
}

#[test]
fn truncated_layer_is_detected_on_export() {
    let ws = Workspace::new();
    let (store, manifest) = built(&ws);
    let layer = manifest["layers"][1]["digest"].as_str().expect("layer digest").to_string();
    let path = blob_path(&store, &layer);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("writable");
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() - 1]).expect("truncate");
    export_fails_naming(&ws, &store, &layer);
}

#[test]
fn corrupted_manifest_is_detected_by_inspect() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let store = ws.store("store");
    let report = Kiln::new(&store).build(&recipes.join("golden.toml"), &[]);
    let index = read_json_blob(&store, &digest_of(&report));
    let manifest = index["manifests"][0]["digest"].as_str().expect("manifest digest").to_string();
    flip_byte(&blob_path(&store, &manifest), 1);
    let hex = manifest.strip_prefix("sha256:").expect("sha256");
    Kiln::new(&store)
        .run(&["inspect", "golden:1.0.0"])
        .fails_with(EXIT_INTEGRITY)
        .stderr_has(&[hex]);
}

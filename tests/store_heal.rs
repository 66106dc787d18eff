//! A rebuild heals a damaged store, descriptor sizes are checked on every read, and
//! `store check --repair` sets a damaged store right: each body runs on a folder store, on
//! SeaweedFS (S3) and on Azurite (Azure), through the real binary.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::backend::TestStore;
use support::{copy_recipes, Run, Workspace, EXIT_INTEGRITY};

fn blob_key(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn json_blob(store: &TestStore, digest: &str) -> Value {
    let bytes = store.get(&blob_key(digest)).unwrap_or_else(|| panic!("{digest} is stored"));
    serde_json::from_slice(&bytes).expect("blob is JSON")
}

/// The golden image's blobs as (what, digest): index, manifest, config and its larger layer.
fn golden_blobs(store: &TestStore, index: &str) -> Vec<(&'static str, String)> {
    let manifest = json_blob(store, index)["manifests"][0]["digest"].as_str().unwrap().to_string();
    let m = json_blob(store, &manifest);
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    let layers = m["layers"].as_array().unwrap();
    let largest = layers.iter().max_by_key(|l| l["size"].as_u64().unwrap()).unwrap();
    let layer = largest["digest"].as_str().unwrap().to_string();
    vec![("index", index.to_string()), ("manifest", manifest), ("config", config), ("layer", layer)]
}

/// `bytes` damaged as `how`; `other` is another valid blob's content (of another size).
fn damaged(bytes: &[u8], how: &str, other: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match how {
        "flip" => out[bytes.len() / 2] ^= 1,
        "truncate" => out.truncate(bytes.len() - 1),
        "append" => out.push(b'\n'),
        "replace" => out = other.to_vec(),
        _ => unreachable!(),
    }
    out
}

fn check_json(store: &TestStore, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["--json", "store", "check"];
    all.extend_from_slice(args);
    let run = store.kiln(&all);
    let report = run.json();
    (run.code, report)
}

fn assert_clean(store: &TestStore) {
    let (code, report) = check_json(store, &[]);
    assert_eq!(code, Some(0), "{} is not clean: {report}", store.location);
}

/// On a backend that dates objects to the second, waits for the next second, so what is
/// written next is dated after what was written before.
fn next_second(store: &TestStore) {
    if store.dates_by_the_second() {
        std::thread::sleep(Duration::from_millis(1100));
    }
}

#[test]
fn a_rebuild_heals_every_damage_of_every_blob_kind() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let golden = recipes.join("golden.toml");
    let golden = golden.to_str().unwrap();
    for store in TestStore::every(ws.root()) {
        let built = store.kiln(&["--json", "build", golden]).ok().json();
        let index = built["digest"].as_str().unwrap().to_string();
        let blobs = golden_blobs(&store, &index);
        for (i, (what, digest)) in blobs.iter().enumerate() {
            let key = blob_key(digest);
            let good = store.get(&key).unwrap();
            let other = store.get(&blob_key(&blobs[(i + 1) % blobs.len()].1)).unwrap();
            for how in ["flip", "truncate", "append", "replace"] {
                // A layer's damage must be dated after the cache entry that vouches for it.
                if *what == "layer" {
                    next_second(&store);
                }
                store.put(&key, damaged(&good, how, &other));
                store.kiln(&["store", "check"]).fails_with(EXIT_INTEGRITY).stderr_has(&[&key]);

                let run = store.kiln(&["--json", "build", golden]).ok();
                let rebuilt = run.json();
                let healed = rebuilt["blobs"]["healed"].as_array().unwrap();
                let context = format!("{how} {what} on {}: {rebuilt}", store.location);
                assert_eq!(healed.len(), 1, "{context}");
                assert_eq!(healed[0]["key"], key.as_str(), "{context}");
                assert!(run.stderr.contains(&format!("healed: {key}")), "{context}\n{run}");
                assert_eq!(rebuilt["digest"], built["digest"], "{context}");
                assert_eq!(store.get(&key).as_deref(), Some(&good[..]), "{context}");
                let quarantine = healed[0]["quarantine"].as_str().unwrap();
                assert_eq!(store.get(quarantine), Some(damaged(&good, how, &other)), "{context}");
                assert_clean(&store);
            }
        }
    }
}

#[test]
fn verify_cache_rehashes_what_a_cheap_check_cannot_see() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let golden = recipes.join("golden.toml");
    let golden = golden.to_str().unwrap();
    for store in TestStore::every(ws.root()) {
        let built = store.kiln(&["--json", "build", golden]).ok().json();
        let (_, layer) = golden_blobs(&store, built["digest"].as_str().unwrap()).remove(3);
        let key = blob_key(&layer);
        let good = store.get(&key).unwrap();
        next_second(&store);
        store.put(&key, damaged(&good, "flip", &[]));
        // Every cache entry rewritten after the flip, as a later build would: the flipped blob
        // now has its recorded size and predates the entry, so only its content gives it away.
        next_second(&store);
        for entry in store.list("cache/layer") {
            let bytes = store.get(&entry).unwrap();
            store.put(&entry, bytes);
        }
        let cheap = store.kiln(&["--json", "build", golden]).ok().json();
        assert_eq!(cheap["blobs"]["healed"], Value::Array(vec![]), "{cheap}");
        let deep = store.kiln(&["--json", "build", golden, "--verify-cache"]).ok().json();
        let healed = deep["blobs"]["healed"].as_array().unwrap();
        assert_eq!(healed.len(), 1, "{deep}");
        assert_eq!(healed[0]["key"], key.as_str(), "{deep}");
        assert_eq!(deep["layers"]["built"], 1, "{deep}");
        assert_eq!(store.get(&key), Some(good));
        assert_clean(&store);
        // With nothing damaged, --verify-cache changes nothing.
        let again = store.kiln(&["--json", "build", golden, "--verify-cache"]).ok().json();
        assert_eq!(again["blobs"]["healed"], Value::Array(vec![]), "{again}");
        assert_eq!(again["blobs"]["uploaded"], 0, "{again}");
        assert_eq!(again["layers"]["built"], 0, "{again}");
    }
}

#[test]
fn a_descriptor_with_a_wrong_size_is_an_integrity_failure_everywhere() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let golden = recipes.join("golden.toml");
    let golden = golden.to_str().unwrap();
    for (n, store) in TestStore::every(ws.root()).into_iter().enumerate() {
        let built = store.kiln(&["--json", "build", golden]).ok().json();
        let reference = "refs/golden/1.0.0";
        let mut root: Value = serde_json::from_slice(&store.get(reference).unwrap()).unwrap();
        assert_eq!(root["size"], built["size"]);
        root["size"] = 1.into();
        store.put(reference, serde_json::to_vec(&root).unwrap());

        let (code, report) = check_json(&store, &[]);
        assert_eq!(code, Some(EXIT_INTEGRITY), "{report}");
        assert_eq!(report["problems"].as_array().unwrap().len(), 1, "{report}");
        let problem = &report["problems"][0];
        assert_eq!(problem["kind"], "sizeMismatch", "{report}");
        assert_eq!((&problem["expected"], &problem["found"]), (&1.into(), &built["size"]));
        assert_eq!(problem["referencedBy"], reference);

        let key = blob_key(built["digest"].as_str().unwrap());
        let layout = ws.path(&format!("layout-{n}"));
        let fails = |run: Run| run.fails_with(EXIT_INTEGRITY).stderr_has(&[&key]);
        fails(store.kiln(&["export", "golden:1.0.0", "--oci-layout", layout.to_str().unwrap()]));
        fails(store.kiln(&["inspect", "golden:1.0.0"]));
        let target = ws.path(&format!("copy-{n}"));
        let target = format!("file://{}", target.display());
        let copy = ["copy", "golden:1.0.0", "--from", &store.location, "--to", &target];
        fails(store.kiln(&copy));
        let verify = store.kiln(&["verify", "golden:1.0.0"]).fails_with(EXIT_INTEGRITY);
        assert!(verify.stdout.contains("has 630 bytes but its descriptor says 1"), "{verify}");

        // Repair drops the ref; a rebuild sets it again.
        let (code, repaired) = check_json(&store, &["--repair"]);
        assert_eq!(code, Some(0), "{repaired}");
        assert_eq!(repaired["repair"]["refsDropped"], serde_json::json!([reference]));
        assert_eq!(store.get(reference), None);
        assert_clean(&store);
        store.kiln(&["build", golden]).ok();
        assert_eq!(
            store.get(reference).map(|b| serde_json::from_slice::<Value>(&b).unwrap()),
            Some(serde_json::json!({"digest": built["digest"], "mediaType": built["mediaType"],
                "size": built["size"]}))
        );
        assert_clean(&store);
    }
}

/// Stores `doc` as a blob and returns its digest and size.
fn put_json_blob(store: &TestStore, doc: &Value) -> (String, u64) {
    let bytes = serde_json::to_vec(doc).unwrap();
    let digest = kiln_oci::Digest::of(&bytes).to_string();
    store.put(&blob_key(&digest), bytes.clone());
    (digest, bytes.len() as u64)
}

#[test]
fn verify_refuses_a_layer_whose_descriptor_size_lies_though_its_bytes_hash_right() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let store = TestStore::folder(ws.root(), "store");
    let built = store.kiln(&["--json", "build", recipes.join("golden.toml").to_str().unwrap()]);
    let index_digest = built.ok().json()["digest"].as_str().unwrap().to_string();
    // A manifest naming the real layer bytes with one byte fewer, reached by a new index
    // from the ref: every blob on the way hashes right.
    let mut index = json_blob(&store, &index_digest);
    let mut manifest = json_blob(&store, index["manifests"][0]["digest"].as_str().unwrap());
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    manifest["layers"][0]["size"] = (size - 1).into();
    let (digest, size) = put_json_blob(&store, &manifest);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    let (digest, size) = put_json_blob(&store, &index);
    let mut root: Value = serde_json::from_slice(&store.get("refs/golden/1.0.0").unwrap()).unwrap();
    root["digest"] = digest.into();
    root["size"] = size.into();
    store.put("refs/golden/1.0.0", serde_json::to_vec(&root).unwrap());

    let verify = store.kiln(&["verify", "golden:1.0.0"]).fails_with(EXIT_INTEGRITY);
    let says = format!(
        "has {size_found} bytes but its descriptor says {size_said}",
        size_found = manifest["layers"][0]["size"].as_u64().unwrap() + 1,
        size_said = manifest["layers"][0]["size"]
    );
    assert!(verify.stdout.contains(&says), "{verify}");
}

#[test]
fn repair_quarantines_corrupt_blobs_and_drops_what_leads_to_missing_ones() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let golden = recipes.join("golden.toml");
    let golden = golden.to_str().unwrap();
    for store in TestStore::every(ws.root()) {
        let built = store.kiln(&["--json", "build", golden]).ok().json();
        let blobs = golden_blobs(&store, built["digest"].as_str().unwrap());
        let config = blob_key(&blobs[2].1);
        let layer = blob_key(&blobs[3].1);
        let flipped = damaged(&store.get(&config).unwrap(), "flip", &[]);
        store.put(&config, flipped.clone());
        store.delete(&layer);
        let entries = store.list("cache/layer");
        assert_eq!(entries.len(), 2);

        let (code, report) = check_json(&store, &[]);
        assert_eq!(code, Some(EXIT_INTEGRITY), "{report}");
        let human = store.kiln(&["store", "check", "--repair"]).ok();
        assert!(human.stderr.contains(&format!("repaired: {config} held")), "{human}");
        assert!(human.stderr.contains("repaired: deleted refs/golden/1.0.0"), "{human}");
        // Everything was settled by the human run: a second repair finds nothing to do.
        let (code, again) = check_json(&store, &["--repair"]);
        assert_eq!(code, Some(0), "{again}");
        assert_eq!(again["problems"], Value::Array(vec![]), "{again}");
        assert_eq!(
            again["repair"],
            serde_json::json!({"quarantined": [], "refsDropped": [], "referrersDropped": [],
                "cacheEntriesDropped": [], "changedSince": [], "left": []})
        );
        let quarantine = format!("quarantine/{}", config.trim_start_matches("blobs/"));
        assert_eq!(store.get(&quarantine), Some(flipped));
        assert_eq!(store.get(&config), None);
        assert_eq!(store.list("cache/layer").len(), 1, "the entry of the deleted layer is gone");

        let rebuilt = store.kiln(&["--json", "build", golden]).ok().json();
        assert_eq!(rebuilt["digest"], built["digest"]);
        assert_eq!(rebuilt["layers"], serde_json::json!({"built": 1, "reused": 1}));
        assert_clean(&store);
    }
}

#[test]
fn repair_reports_what_it_did_as_json() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let golden = recipes.join("golden.toml");
    for store in TestStore::every(ws.root()) {
        store.kiln(&["build", golden.to_str().unwrap()]).ok();
        assert_eq!(store.list("refs").len(), 1);
        let blobs = store.list("blobs/sha256");
        let largest =
            blobs.iter().max_by_key(|k| store.get(k).map_or(0, |b| b.len())).unwrap().to_string();
        let bytes = store.get(&largest).unwrap();
        store.put(&largest, damaged(&bytes, "truncate", &[]));
        let (code, report) = check_json(&store, &["--repair"]);
        assert_eq!(code, Some(0), "{report}");
        let repair = &report["repair"];
        assert_eq!(repair["quarantined"][0]["key"], largest.as_str(), "{report}");
        assert_eq!(repair["refsDropped"], serde_json::json!(["refs/golden/1.0.0"]), "{report}");
        assert_eq!(report["clean"], false, "the report is of what was found");
        assert_clean(&store);
    }
}

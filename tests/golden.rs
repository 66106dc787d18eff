//! Golden digests: the fixture recipes in `recipes/` build to pinned digests.
//!
//! A failure here means kiln's output bytes changed (tar layout, compressor backend or
//! version, JSON serialisation, a default). That must be a deliberate, versioned decision:
//! bump the output-format version, note it in CHANGELOG.md, and only then update the pins.

mod support;

use support::{copy_recipes, digest_of, Kiln, Workspace};

// Pinned once the first builds were checked with skopeo and umoci (tests/oci_tools.rs).
// A change here means output bytes changed; that must be deliberate and versioned.

/// recipes/golden.toml (gzip, linux/amd64): the image index digest.
const GOLDEN_GZIP: &str = "sha256:55a70b701315d3cd437d25c1fbf8865045a69395e248a6b0d045409e84f8cb58";
/// recipes/golden.toml: the linux/amd64 image manifest digest.
const GOLDEN_GZIP_AMD64: &str =
    "sha256:3f4b037a0b7c18486d17aa8b58b43a0a9172037c4327a6f89aff9639b407c6b1";
/// recipes/golden-zstd.toml (zstd, linux/amd64 + linux/arm64): the image index digest.
const GOLDEN_ZSTD: &str = "sha256:239fd5bd2d8d8fb85a8e6c267fb738a58a0f9d6813abf476a28f41e92172e05e";
/// recipes/golden-zstd.toml: the per-platform image manifest digests.
const GOLDEN_ZSTD_MANIFESTS: [(&str, &str); 2] = [
    ("linux/amd64", "sha256:291f6a4560192ef7ba8577dd2897f4d74255be430e14caa9fc2e3cdc979d33db"),
    ("linux/arm64", "sha256:a1dac2d02b077542748f2562eff5ba645e0fca60cba3e745aaea4da755450bde"),
];

fn build_fixture(name: &str, extra: &[&str]) -> serde_json::Value {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    Kiln::new(&ws.store("store")).build(&recipes.join(name), extra)
}

#[test]
fn golden_gzip_digest_is_pinned() {
    let report = build_fixture("golden.toml", &[]);
    assert_eq!(digest_of(&report), GOLDEN_GZIP, "golden.toml output bytes changed:\n{report:#}");
    assert_eq!(report["name"], "golden");
    assert_eq!(report["tag"], "1.0.0");
    assert_eq!(report["mediaType"], "application/vnd.oci.image.index.v1+json");
    let manifests = report["manifests"].as_array().expect("manifests array");
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["platform"], "linux/amd64");
    assert_eq!(manifests[0]["digest"], GOLDEN_GZIP_AMD64);
}

#[test]
fn golden_zstd_digest_is_pinned() {
    let report = build_fixture("golden-zstd.toml", &[]);
    assert_eq!(
        digest_of(&report),
        GOLDEN_ZSTD,
        "golden-zstd.toml output bytes changed:\n{report:#}"
    );
    let manifests: Vec<(&str, &str)> = report["manifests"]
        .as_array()
        .expect("manifests array")
        .iter()
        .map(|m| (m["platform"].as_str().expect("platform"), m["digest"].as_str().expect("digest")))
        .collect();
    assert_eq!(manifests, GOLDEN_ZSTD_MANIFESTS);
}

#[test]
fn golden_digest_does_not_depend_on_threads() {
    let one = build_fixture("golden.toml", &["--threads", "1"]);
    let two = build_fixture("golden-zstd.toml", &["--threads", "1"]);
    assert_eq!(digest_of(&one), GOLDEN_GZIP);
    assert_eq!(digest_of(&two), GOLDEN_ZSTD);
}

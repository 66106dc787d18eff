#![allow(clippy::unwrap_used)]
//! Signatures, SBOMs, provenance and `kiln verify`, end to end through the real binary:
//! openssl accepts our signatures, signing is deterministic, each kind of tampering is caught
//! with its own message, `verify --rebuild` reproduces every example recipe, and private keys
//! stay private.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use kiln_oci::Digest;
use serde_json::Value;
use support::{copy_recipes, require_tool, sh, Kiln, Run, Workspace, EXIT_INTEGRITY};

/// Makes `NAME.key` and `NAME.pub` in `dir` and returns their paths.
fn keygen(kiln: &Kiln, dir: &Path, name: &str, kind: &str, log: &mut Vec<Run>) -> (String, String) {
    let out = dir.join(name);
    let run = kiln.run(&["keygen", "--out", out.to_str().unwrap(), "--type", kind]).ok();
    log.push(run);
    (format!("{}.key", out.display()), format!("{}.pub", out.display()))
}

fn blob_path(store: &Path, digest: &str) -> PathBuf {
    store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn blob_json(store: &Path, digest: &str) -> Value {
    serde_json::from_slice(&fs::read(blob_path(store, digest)).unwrap()).unwrap()
}

/// Writes `bytes` as a blob, as an attacker with write access to the store folder would.
fn put_blob(store: &Path, bytes: &[u8]) -> (String, u64) {
    let digest = Digest::of(bytes).to_string();
    fs::write(blob_path(store, &digest), bytes).unwrap();
    (digest, bytes.len() as u64)
}

/// The referrer entries of `subject` as (entry file, descriptor).
fn referrers(store: &Path, subject: &str) -> Vec<(PathBuf, Value)> {
    let dir = store.join("referrers").join(subject.trim_start_matches("sha256:"));
    let Ok(rd) = fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<_> = rd
        .map(|e| {
            let p = e.unwrap().path();
            let v = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn referrer_of(store: &Path, subject: &str, artifact_type: &str) -> (PathBuf, Value) {
    referrers(store, subject)
        .into_iter()
        .find(|(_, d)| d["artifactType"] == artifact_type)
        .unwrap_or_else(|| panic!("no {artifact_type} referrer of {subject}"))
}

/// Replaces the referrer entry `old` of `subject` by the manifest `manifest`.
fn reattach(store: &Path, subject: &str, old: &Path, manifest: &Value) {
    let (digest, size) = put_blob(store, &serde_json::to_vec(manifest).unwrap());
    let desc = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest, "size": size, "artifactType": manifest["artifactType"],
    });
    fs::remove_file(old).unwrap();
    let dir = store.join("referrers").join(subject.trim_start_matches("sha256:"));
    fs::write(dir.join(digest.trim_start_matches("sha256:")), serde_json::to_vec(&desc).unwrap())
        .unwrap();
}

fn copy_store(ws: &Workspace, from: &Path, name: &str) -> PathBuf {
    let to = ws.store(name);
    sh("cp", &["-a", from.to_str().unwrap(), to.to_str().unwrap()]);
    to
}

/// `kiln verify` that must fail with exit 4 and say `needle`.
fn verify_fails(store: &Path, reference: &str, key: &str, needle: &str) {
    let run = Kiln::new(store).run(&["verify", reference, "--key", key]).fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains(needle), "verify should say {needle:?}:\n{run}");
}

/// A second small image to take configs, signatures and provenance from.
fn other_recipe(ws: &Workspace) -> PathBuf {
    ws.write("other/file.txt", "other\n");
    ws.write(
        "other.toml",
        "epoch = 5\n[image]\nname = \"other\"\nversion = \"1\"\nplatforms = [\"linux/amd64\"]\n\
         [[layer]]\nname = \"one\"\nfiles = [{ src = \"other/file.txt\", dest = \"/srv/file.txt\" }]\n",
    )
}

#[test]
fn openssl_accepts_our_signatures_which_are_deterministic_and_keys_stay_private() {
    if !require_tool("openssl") {
        return;
    }
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let hello = recipes.join("hello.toml");
    let mut log = Vec::new();
    for kind in ["p256", "ed25519"] {
        let (store_a, store_b) = (ws.store(&format!("a-{kind}")), ws.store(&format!("b-{kind}")));
        let kiln = Kiln::new(&store_a);
        let (key, public) = keygen(&kiln, ws.root(), kind, kind, &mut log);
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key} must be private");

        log.push(kiln.run(&["build", hello.to_str().unwrap(), "--sign", &key]).ok());
        let first = kiln.run(&["--json", "sign", "hello:1.0.0", "--key", &key]).ok();
        let again = Kiln::new(&store_b);
        log.push(again.run(&["build", hello.to_str().unwrap()]).ok());
        let second = again.run(&["--json", "sign", "hello:1.0.0", "--key", &key]).ok();
        assert_eq!(
            first.json()["signature"],
            second.json()["signature"],
            "signing one image twice with one {kind} key gives the same signature"
        );
        let root = first.json()["digest"].as_str().unwrap().to_string();
        log.push(first);
        log.push(second);

        // Take the stored payload and signature and let openssl judge them.
        let (_, desc) =
            referrer_of(&store_a, &root, "application/vnd.dev.cosign.artifact.sig.v1+json");
        let manifest = blob_json(&store_a, desc["digest"].as_str().unwrap());
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json");
        let payload = blob_path(&store_a, layer["digest"].as_str().unwrap());
        let payload_json: Value = serde_json::from_slice(&fs::read(&payload).unwrap()).unwrap();
        assert_eq!(payload_json["critical"]["image"]["docker-manifest-digest"], root.as_str());
        assert_eq!(payload_json["critical"]["type"], "cosign container image signature");
        let b64 = ws.write(
            &format!("{kind}.sig.b64"),
            layer["annotations"]["dev.cosignproject.cosign/signature"].as_str().unwrap(),
        );
        let sig = ws.path(&format!("{kind}.sig"));
        sh(
            "openssl",
            &["base64", "-d", "-A", "-in", b64.to_str().unwrap(), "-out", sig.to_str().unwrap()],
        );
        let (p, s) = (payload.to_str().unwrap(), sig.to_str().unwrap());
        let said = if kind == "p256" {
            sh("openssl", &["dgst", "-sha256", "-verify", &public, "-signature", s, p])
        } else {
            sh(
                "openssl",
                &[
                    "pkeyutl", "-verify", "-pubin", "-inkey", &public, "-rawin", "-in", p,
                    "-sigfile", s,
                ],
            )
        };
        assert!(
            said.contains("Verified OK") || said.contains("Signature Verified Successfully"),
            "{said}"
        );

        log.push(kiln.run(&["verify", "hello:1.0.0", "--key", &public]).ok());

        // The private key's bytes (PEM body and DER) appear in no output and no store object.
        let pem = fs::read_to_string(&key).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = ws.path(&format!("{kind}.der"));
        sh("openssl", &["pkey", "-in", &key, "-outform", "DER", "-out", der.to_str().unwrap()]);
        let der = fs::read(der).unwrap();
        for run in &log {
            assert!(
                !run.stdout.contains(&body) && !run.stderr.contains(&body),
                "key leaked in {run}"
            );
            assert!(!run.stdout.contains("PRIVATE KEY") && !run.stderr.contains("PRIVATE KEY"));
        }
        for store in [&store_a, &store_b] {
            for file in walk(store) {
                let bytes = fs::read(&file).unwrap();
                let hit = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
                assert!(
                    !hit(body.as_bytes()) && !hit(&der),
                    "private key bytes in {}",
                    file.display()
                );
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                pending.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn every_kind_of_tampering_is_caught_with_its_own_message() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    let mut log = Vec::new();
    let (key, public) = keygen(&kiln, ws.root(), "auditor", "p256", &mut log);
    let (stranger, _) = keygen(&kiln, ws.root(), "stranger", "ed25519", &mut log);
    let hello = support::digest_of(&kiln.build(&recipes.join("hello.toml"), &["--sign", &key]));
    let other = support::digest_of(&kiln.build(&other_recipe(&ws), &["--sign", &key]));
    kiln.run(&["verify", "hello:1.0.0", "--key", &public]).ok();
    let inspect = kiln.run(&["--json", "inspect", "hello:1.0.0"]).ok().json();
    let manifest = &inspect["manifests"][0]["manifest"];
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap();
    let other_inspect = kiln.run(&["--json", "inspect", "other:1"]).ok().json();
    let other_config =
        other_inspect["manifests"][0]["manifest"]["config"]["digest"].as_str().unwrap();
    const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
    const PROV: &str = "application/vnd.in-toto+json";

    // A flipped byte in a layer.
    let s = copy_store(&ws, &store, "flip");
    let path = blob_path(&s, layer);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&path, bytes).unwrap();
    verify_fails(&s, "hello:1.0.0", &public, &format!("layer 1 {layer}: blob"));

    // A swapped config.
    let s = copy_store(&ws, &store, "config");
    fs::copy(blob_path(&s, other_config), blob_path(&s, config)).unwrap();
    verify_fails(&s, "hello:1.0.0", &public, &format!("config {config}: blob"));

    // A signature by another key, and no other.
    let s = copy_store(&ws, &store, "stranger");
    fs::remove_file(referrer_of(&s, &hello, SIG).0).unwrap();
    Kiln::new(&s).run(&["sign", "hello:1.0.0", "--key", &stranger]).ok();
    verify_fails(&s, "hello:1.0.0", &public, "is by a key that was not given");
    verify_fails(&s, "hello:1.0.0", &public, "no signature over");

    // A signature copied from another image.
    let s = copy_store(&ws, &store, "copied");
    fs::remove_file(referrer_of(&s, &hello, SIG).0).unwrap();
    let (entry, _) = referrer_of(&s, &other, SIG);
    let dest = s
        .join("referrers")
        .join(hello.trim_start_matches("sha256:"))
        .join(entry.file_name().unwrap());
    fs::copy(&entry, dest).unwrap();
    verify_fails(&s, "hello:1.0.0", &public, "copied from another image");

    // A DSSE envelope whose payloadType was edited (and re-attached consistently).
    let s = copy_store(&ws, &store, "payload-type");
    let (entry, desc) = referrer_of(&s, &hello, PROV);
    let mut m = blob_json(&s, desc["digest"].as_str().unwrap());
    let mut env = blob_json(&s, m["layers"][0]["digest"].as_str().unwrap());
    env["payloadType"] = "application/json".into();
    let (d, size) = put_blob(&s, &serde_json::to_vec(&env).unwrap());
    m["layers"][0]["digest"] = d.into();
    m["layers"][0]["size"] = size.into();
    reattach(&s, &hello, &entry, &m);
    verify_fails(&s, "hello:1.0.0", &public, "DSSE payloadType is \"application/json\"");
    verify_fails(&s, "hello:1.0.0", &public, "DSSE signature does not verify");

    // Provenance naming a different subject (another image's, validly signed, re-pointed).
    let s = copy_store(&ws, &store, "subject");
    let (entry, _) = referrer_of(&s, &hello, PROV);
    let (_, theirs) = referrer_of(&s, &other, PROV);
    let mut m = blob_json(&s, theirs["digest"].as_str().unwrap());
    m["subject"] = inspect["descriptor"].clone();
    reattach(&s, &hello, &entry, &m);
    verify_fails(
        &s,
        "hello:1.0.0",
        &public,
        &format!("subject names other {other}, not this image"),
    );

    // An SBOM that omits a file.
    let s = copy_store(&ws, &store, "sbom");
    let manifest_digest = inspect["manifests"][0]["descriptor"]["digest"].as_str().unwrap();
    let (entry, desc) = referrer_of(&s, manifest_digest, "application/spdx+json");
    let mut m = blob_json(&s, desc["digest"].as_str().unwrap());
    let mut doc = blob_json(&s, m["layers"][0]["digest"].as_str().unwrap());
    let files = doc["files"].as_array_mut().unwrap();
    let dropped = files.iter().position(|f| f["fileName"] == "./etc/motd").unwrap();
    files.remove(dropped);
    let (d, size) = put_blob(&s, &serde_json::to_vec(&doc).unwrap());
    m["layers"][0]["digest"] = d.into();
    m["layers"][0]["size"] = size.into();
    reattach(&s, manifest_digest, &entry, &m);
    verify_fails(&s, "hello:1.0.0", &public, "omits /etc/motd");

    // The untouched store still verifies.
    kiln.run(&["verify", "hello:1.0.0", "--key", &public]).ok();
}

#[test]
fn rebuild_reproduces_every_example_recipe_and_names_a_changed_path() {
    if !require_tool("git") {
        return;
    }
    let ws = Workspace::new();
    copy_recipes(ws.root());
    // The workspace is a checkout (with no commit yet): provenance names recipes relative to
    // its top level, and a rebuild from inside it finds them there.
    sh("git", &["init", "-q", ws.root().to_str().unwrap()]);
    let store = ws.store("store");
    let kiln = Kiln::new(&store).cwd(ws.root());
    let mut log = Vec::new();
    let (key, public) = keygen(&kiln, ws.root(), "builder", "ed25519", &mut log);
    let mut names = Vec::new();
    for entry in fs::read_dir(ws.path("recipes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            names.push(path.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    for name in &names {
        let report = kiln.build(Path::new(&format!("recipes/{name}")), &["--sign", &key]);
        let digest = support::digest_of(&report);
        let run = kiln.run(&["--json", "verify", &digest, "--key", &public, "--rebuild"]).ok();
        let v = run.json();
        assert_eq!(v["passed"], true, "{name}: {run}");
        assert_eq!(v["rebuild"]["reproduced"], true, "{name}: {run}");
        assert_eq!(v["rebuild"]["digest"], digest.as_str(), "{name}");
    }
    let human = kiln.run(&["verify", "hello:1.0.0", "--key", &public, "--rebuild"]).ok();
    assert!(human.stdout.contains("reproduced: identical digest"), "{human}");

    // Outside the checkout, the rebuild says where to point it.
    let elsewhere = Workspace::new();
    let lost = Kiln::new(&store).cwd(elsewhere.root());
    let run = lost
        .run(&["verify", "hello:1.0.0", "--key", &public, "--rebuild"])
        .fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains("--source-root"), "{run}");
    lost.run(&[
        "verify",
        "hello:1.0.0",
        "--key",
        &public,
        "--rebuild",
        "--source-root",
        ws.root().to_str().unwrap(),
    ])
    .ok();

    // A source file changed after the build: the first differing layer and path are named.
    ws.write("recipes/hello/motd", "changed after the build\n");
    let run = kiln
        .run(&["verify", "hello:1.0.0", "--key", &public, "--rebuild"])
        .fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains("first differing layer 1"), "{run}");
    assert!(run.stdout.contains("first differing path /etc/motd"), "{run}");
}

#[test]
fn every_integrity_failure_in_verify_exits_4_naming_the_blob() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    let (key, public) = keygen(&kiln, ws.root(), "auditor", "p256", &mut Vec::new());
    let root = support::digest_of(&kiln.build(&recipes.join("hello.toml"), &["--sign", &key]));
    let inspect = kiln.run(&["--json", "inspect", "hello:1.0.0"]).ok().json();
    let manifest_digest = inspect["manifests"][0]["descriptor"]["digest"].as_str().unwrap();
    let manifest = blob_json(&store, manifest_digest);
    let mut blobs: Vec<(String, String)> = vec![
        ("index".into(), root.clone()),
        ("manifest".into(), manifest_digest.into()),
        ("config".into(), manifest["config"]["digest"].as_str().unwrap().into()),
        ("layer".into(), manifest["layers"][0]["digest"].as_str().unwrap().into()),
    ];
    let artifacts = [
        (root.as_str(), "application/vnd.dev.cosign.artifact.sig.v1+json"),
        (root.as_str(), "application/vnd.in-toto+json"),
        (manifest_digest, "application/spdx+json"),
    ];
    for (subject, kind) in artifacts {
        let (_, desc) = referrer_of(&store, subject, kind);
        let digest = desc["digest"].as_str().unwrap();
        blobs.push((format!("{kind} manifest"), digest.into()));
        let m = blob_json(&store, digest);
        for layer in m["layers"].as_array().unwrap() {
            let media = layer["mediaType"].as_str().unwrap();
            blobs.push((format!("{kind} layer {media}"), layer["digest"].as_str().unwrap().into()));
        }
        blobs.push(("artifact config".into(), m["config"]["digest"].as_str().unwrap().into()));
    }
    blobs.sort();
    blobs.dedup();
    assert!(blobs.len() >= 12, "{blobs:?}");
    for (n, (what, digest)) in blobs.iter().enumerate() {
        for damage in ["flip", "delete"] {
            let s = copy_store(&ws, &store, &format!("{damage}-{n}"));
            let path = blob_path(&s, digest);
            if damage == "flip" {
                let mut bytes = fs::read(&path).unwrap();
                bytes[0] ^= 1;
                fs::write(&path, bytes).unwrap();
            } else {
                fs::remove_file(&path).unwrap();
            }
            let run = Kiln::new(&s)
                .run(&["verify", "hello:1.0.0", "--key", &public])
                .fails_with(EXIT_INTEGRITY);
            assert!(run.stdout.contains(&format!("{digest}: blob")), "{damage} {what}:\n{run}");
            assert!(run.stdout.contains("FAIL blob"), "{damage} {what}:\n{run}");
            // An integrity audit without keys sees it too.
            Kiln::new(&s).run(&["verify", "hello:1.0.0"]).fails_with(EXIT_INTEGRITY);
            fs::remove_dir_all(&s).unwrap();
        }
    }

    // A referrer entry that is not a descriptor.
    let s = copy_store(&ws, &store, "entry");
    let dir = s.join("referrers").join(root.trim_start_matches("sha256:"));
    fs::write(dir.join("0".repeat(64)), "not json").unwrap();
    let run =
        Kiln::new(&s).run(&["verify", "hello:1.0.0", "--key", &public]).fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains(&format!("the referrers of {root} cannot be read")), "{run}");
}

#[test]
fn verify_checks_what_is_there_and_requires_what_it_is_told() {
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    let (key, public) = keygen(&kiln, ws.root(), "signer", "ed25519", &mut Vec::new());

    // Signed after a build without --sign: the signature verifies, the rest is noted missing.
    kiln.build(&recipes.join("hello.toml"), &[]);
    let run = kiln.run(&["verify", "hello:1.0.0"]).ok();
    assert!(run.stdout.contains("signatures were not checked"), "{run}");
    kiln.run(&["sign", "hello:1.0.0", "--key", &key]).ok();
    let run = kiln.run(&["verify", "hello:1.0.0", "--key", &public]).ok();
    assert!(run.stdout.contains("note provenance no provenance is attached"), "{run}");
    assert!(run.stdout.contains("note sbom       no SBOM is attached"), "{run}");
    assert!(run.stdout.contains("verified: 1 signer(s)"), "{run}");
    let run = kiln
        .run(&["verify", "hello:1.0.0", "--key", &public, "--require", "sbom,provenance"])
        .fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains("FAIL provenance no provenance is attached"), "{run}");
    assert!(run.stdout.contains("FAIL sbom       no SBOM is attached"), "{run}");
    kiln.run(&["verify", "hello:1.0.0", "--require", "sbom"]).fails_with(support::EXIT_USAGE);
    kiln.run(&["verify", "hello:1.0.0", "--key", &public, "--require", "sbomb"])
        .fails_with(support::EXIT_USAGE);

    // Built with --sign: everything required is there and bound.
    let hello = support::digest_of(&kiln.build(&recipes.join("hello.toml"), &["--sign", &key]));
    let args = ["verify", "hello:1.0.0", "--key", &public, "--require", "sbom,provenance"];
    let run = kiln.run(&args).ok();
    assert!(run.stdout.contains("is the one the signed provenance names"), "{run}");

    // An SBOM re-stored with an added package and new creators no longer passes.
    let inspect = kiln.run(&["--json", "inspect", "hello:1.0.0"]).ok().json();
    let manifest_digest = inspect["manifests"][0]["descriptor"]["digest"].as_str().unwrap();
    let (entry, desc) = referrer_of(&store, manifest_digest, "application/spdx+json");
    let mut m = blob_json(&store, desc["digest"].as_str().unwrap());
    let mut doc = blob_json(&store, m["layers"][0]["digest"].as_str().unwrap());
    doc["packages"].as_array_mut().unwrap().push(serde_json::json!({
        "SPDXID": "SPDXRef-Package-extra", "name": "extra", "versionInfo": "1",
        "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
    }));
    doc["creationInfo"]["creators"] = serde_json::json!(["Tool: someone-else"]);
    let (d, size) = put_blob(&store, &serde_json::to_vec(&doc).unwrap());
    m["layers"][0]["digest"] = d.into();
    m["layers"][0]["size"] = size.into();
    reattach(&store, manifest_digest, &entry, &m);
    let run = kiln.run(&["verify", "hello:1.0.0", "--key", &public]).fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains("is not one the signed provenance names"), "{run}");
    assert!(run.stdout.contains(&hello), "{run}");
}

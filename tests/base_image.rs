#![allow(clippy::unwrap_used)]
//! Base images: an image made by tools kiln did not write (umoci, from the files of Debian's
//! busybox-static package, with a second layer whose whiteout deletes a file of the first),
//! pushed by skopeo to Debian's docker-registry or kept as an OCI layout, and used by digest
//! as a recipe's `[base]`. Its layers reach the new image byte for byte, umoci unpacks the
//! result, busybox runs from it, the whiteout holds in disks, and damaged or ambiguous bases
//! are refused with nothing stored.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use kiln_oci::Digest;
use kiln_test_servers::registry;
use serde_json::{json, Value};
use support::{
    debian_fixture, is_root, require_tool, sh, Kiln, Workspace, EXIT_ERROR, EXIT_INTEGRITY,
    EXIT_LOCK_MISMATCH,
};

/// The tools these tests drive, and the Debian fixture; `None` skips (locally).
fn setup() -> Option<PathBuf> {
    if !require_tool("umoci") || !require_tool("skopeo") || !require_tool("dpkg-deb") {
        return None;
    }
    debian_fixture()
}

/// The busybox-static package of `arch` in the fixture.
fn busybox_deb(fixture: &Path, arch: &str) -> PathBuf {
    let pool = fixture.join("repo/pool/main");
    fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("busybox-static_") && name.ends_with(&format!("_{arch}.deb"))
        })
        .unwrap_or_else(|| panic!("no busybox-static for {arch} in {}", pool.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

/// The manifest digest the layout's `index.json` gives `tag`.
fn tagged(layout: &Path, tag: &str) -> String {
    let index = read_json(&layout.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"));
    entry["digest"].as_str().unwrap().to_string()
}

/// Adds to the OCI layout `layout` (made if missing) the image `tag`, made by umoci for
/// `arch`: a first layer with the files of busybox-static plus `/etc/doomed` and
/// `/etc/kept`, a second layer deleting `/etc/doomed` (a whiteout), and a config with an
/// environment and a command. Returns the manifest's digest.
fn umoci_base(ws: &Workspace, fixture: &Path, layout: &Path, tag: &str, arch: &str) -> String {
    let deb = ws.path(&format!("deb-{arch}"));
    sh("dpkg-deb", &["-x", busybox_deb(fixture, arch).to_str().unwrap(), deb.to_str().unwrap()]);
    let l = layout.to_str().unwrap();
    if !layout.exists() {
        sh("umoci", &["init", "--layout", l]);
    }
    let image = format!("{l}:{tag}");
    sh("umoci", &["new", "--image", &image]);
    let bundle = ws.path(&format!("bundle-{tag}"));
    let b = bundle.to_str().unwrap();
    sh("umoci", &["unpack", "--image", &image, b]);
    let rootfs = bundle.join("rootfs");
    sh("cp", &["-a", &format!("{}/.", deb.display()), rootfs.to_str().unwrap()]);
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/doomed"), "deleted by the layer above\n").unwrap();
    fs::write(rootfs.join("etc/kept"), "kept\n").unwrap();
    // The bundle follows the image it made, so the next repack adds a layer on top.
    sh("umoci", &["repack", "--refresh-bundle", "--image", &image, b]);
    fs::remove_file(rootfs.join("etc/doomed")).unwrap();
    sh("umoci", &["repack", "--image", &image, b]);
    sh(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--architecture",
            arch,
            "--config.env",
            "PATH=/bin:/usr/bin",
            "--config.env",
            "BASEVAR=base",
            "--config.cmd",
            "/bin/busybox",
            "--config.cmd",
            "sh",
            "--config.label",
            "org.example.from=base",
        ],
    );
    tagged(layout, tag)
}

/// The layer digests of `manifest` in `layout`.
fn layout_layers(layout: &Path, manifest: &str) -> Vec<String> {
    let m = read_json(&blob(layout, manifest));
    m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().into()).collect()
}

/// The manifests of the image `reference` in kiln's store: (architecture, layer digests).
fn stored_manifests(kiln: &Kiln, reference: &str) -> Vec<(String, Vec<String>)> {
    let out = kiln.run(&["--json", "inspect", reference]).ok().json();
    out["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let arch = m["descriptor"]["platform"]["architecture"].as_str().unwrap().to_string();
            let layers = m["manifest"]["layers"].as_array().unwrap();
            (arch, layers.iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect())
        })
        .collect()
}

/// The first layer of the `artifact_type` artifact attached to `subject` in the folder store.
fn referrer_document(store: &Path, subject: &str, artifact_type: &str) -> Value {
    let dir = store.join("referrers").join(subject.trim_start_matches("sha256:"));
    for entry in fs::read_dir(&dir).unwrap() {
        let desc = read_json(&entry.unwrap().path());
        if desc["artifactType"] == artifact_type {
            let manifest: Value =
                serde_json::from_slice(&store_blob(store, desc["digest"].as_str().unwrap()))
                    .unwrap();
            let layer = manifest["layers"][0]["digest"].as_str().unwrap();
            return serde_json::from_slice(&store_blob(store, layer)).unwrap();
        }
    }
    panic!("no {artifact_type} referrer of {subject}")
}

/// The in-toto statement of the provenance attached to `subject` in the folder store.
fn provenance(store: &Path, subject: &str) -> Value {
    use base64::Engine as _;
    let envelope = referrer_document(store, subject, "application/vnd.in-toto+json");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&payload).unwrap()
}

fn store_blob(store: &Path, digest: &str) -> Vec<u8> {
    fs::read(store.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap()
}

const RECIPE_LAYER: &str = "[[layer]]\nname = \"app\"\n\
     inline = [{ dest = \"/etc/motd\", content = \"on a base\\n\" }, { dest = \"/usr/local/app.conf\", content = \"x\\n\" }]\n\
     [config]\nenv = { APP = \"1\", BASEVAR = \"recipe\" }\n";

#[test]
fn a_base_made_by_umoci_and_pushed_by_skopeo_is_used_by_digest() {
    let Some(fixture) = setup() else { return };
    let Some(reg) = registry::open() else { return };
    let ws = Workspace::new();
    let layout = ws.path("base-layout");
    let manifest = umoci_base(&ws, &fixture, &layout, "base", "amd64");
    let repo = format!("{}/{}", reg.host, reg.fresh_repo());
    sh(
        "skopeo",
        &[
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-no-creds",
            &format!("oci:{}:base", layout.display()),
            &format!("docker://{repo}:base"),
        ],
    );

    let recipe_text = format!(
        "epoch = 1700000000\n[image]\nname = \"onbase\"\nversion = \"1\"\n\
         [base]\nimage = \"{repo}@{manifest}\"\n{RECIPE_LAYER}\
         [disk]\nsize = \"16MiB\"\nformats = [\"initramfs\"]\n"
    );
    let recipe = ws.write("r/onbase.toml", &recipe_text);
    let store = ws.store("store");
    let kiln = Kiln::new(&store).env("DOCKER_CONFIG", ws.mkdir("docker-config").to_str().unwrap());
    let insecure = ["--insecure-registry", reg.host.as_str()];
    let report = kiln.build(&recipe, &insecure);
    let digest = support::digest_of(&report);

    // The base's layers come first, byte for byte: the same digests, the same stored bytes.
    let manifests = stored_manifests(&kiln, "onbase:1");
    let (_, ours) = &manifests[0];
    let base_layers = layout_layers(&layout, &manifest);
    assert_eq!(ours.len(), base_layers.len() + 1, "{manifests:?}");
    for (mine, theirs) in ours.iter().zip(&base_layers) {
        assert_eq!(mine, theirs);
        assert_eq!(store_blob(&store, theirs), fs::read(blob(&layout, theirs)).unwrap());
    }

    // The lock names the base and the manifest taken for the platform.
    let lock = fs::read_to_string(ws.path("r/onbase.lock")).unwrap();
    assert!(lock.contains(&format!("image = \"{repo}\"")), "{lock}");
    assert!(lock.contains(&format!("digest = \"{manifest}\"")), "{lock}");
    assert!(lock.contains("platform = \"linux/amd64\""), "{lock}");

    // umoci, which kiln did not write, unpacks it: the whiteout holds, the config merges,
    // and busybox runs from it.
    let out = ws.path("out");
    kiln.run(&["export", "onbase:1", "--oci-layout", out.to_str().unwrap(), "-q"]).ok();
    let bundle = ws.path("unpacked");
    sh("umoci", &["unpack", "--image", &format!("{}:1", out.display()), bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    assert!(!rootfs.join("etc/doomed").exists());
    assert_eq!(fs::read_to_string(rootfs.join("etc/kept")).unwrap(), "kept\n");
    assert_eq!(fs::read_to_string(rootfs.join("etc/motd")).unwrap(), "on a base\n");
    let config = read_json(&bundle.join("config.json"));
    let env: Vec<&str> =
        config["process"]["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&"BASEVAR=recipe") && env.contains(&"APP=1"), "{env:?}");
    assert!(env.contains(&"PATH=/bin:/usr/bin"), "{env:?}");
    assert_eq!(config["process"]["args"], json!(["/bin/busybox", "sh"]));
    if is_root() {
        let said = sh("chroot", &[rootfs.to_str().unwrap(), "/bin/busybox", "echo", "hi"]);
        assert_eq!(said, "hi\n");
    } else {
        assert!(!support::in_ci(), "running busybox in a chroot needs root");
    }

    // The flattened root, as the disk holds it, has the base's files without the deleted one.
    let disks = ws.path("disks");
    kiln.run(&["export", "onbase:1", "--disk", disks.to_str().unwrap(), "-q"]).ok();
    let cpio = sh(
        "sh",
        &["-c", &format!("zcat {} | cpio -t --quiet", disks.join("initramfs.cpio.gz").display())],
    );
    let listed: Vec<&str> = cpio.lines().collect();
    for present in ["bin/busybox", "etc/kept", "etc/motd", "usr/local/app.conf"] {
        assert!(listed.contains(&present), "{present} missing from {listed:?}");
    }
    assert!(!listed.iter().any(|p| p.contains("doomed")), "{listed:?}");

    // The image reproduces: another umask, time zone, working folder and store, with the
    // base pulled again.
    let again = ws.path("again");
    fs::create_dir_all(&again).unwrap();
    let other = Kiln::new(&ws.store("store2"))
        .env("DOCKER_CONFIG", ws.path("docker-config").to_str().unwrap())
        .env("TZ", "Pacific/Kiritimati")
        .env("LC_ALL", "C.UTF-8")
        .umask("077")
        .cwd(&again);
    let mut args = vec!["--locked"];
    args.extend(insecure);
    assert_eq!(support::digest_of(&other.build(&recipe, &args)), digest);
    other.run(&["store", "check"]).ok();
    kiln.run(&["store", "check"]).ok();

    // `kiln lock` on a store without the base pulls it, and writes the same lock.
    let fresh = Kiln::new(&ws.store("store3"))
        .env("DOCKER_CONFIG", ws.path("docker-config").to_str().unwrap());
    let mut lock_args = vec!["lock", recipe.to_str().unwrap()];
    lock_args.extend(insecure);
    fs::remove_file(ws.path("r/onbase.lock")).unwrap();
    fresh.run(&lock_args).ok();
    assert_eq!(fs::read_to_string(ws.path("r/onbase.lock")).unwrap(), lock);
    fresh.run(&["store", "check"]).ok();

    // A lock naming another base manifest is refused by --locked.
    let lock_path = ws.path("r/onbase.lock");
    let stale = lock.replace(
        &format!("platform = \"linux/amd64\"\ndigest = \"{manifest}\""),
        &format!("platform = \"linux/amd64\"\ndigest = \"sha256:{}\"", "0".repeat(64)),
    );
    assert_ne!(stale, lock);
    fs::write(&lock_path, stale).unwrap();
    let recipe_arg = recipe.to_str().unwrap();
    let mut locked = vec!["build", recipe_arg, "--locked"];
    locked.extend(insecure);
    kiln.run(&locked).fails_with(EXIT_LOCK_MISMATCH).stderr_has(&["the base image changed"]);
}

/// A layout holding an index over an amd64 and an arm64 busybox base; returns the layout
/// and the index's digest, with each platform's manifest.
fn two_platform_layout(ws: &Workspace, fixture: &Path, dir: &str) -> (PathBuf, String, Value) {
    let layout = ws.path(dir);
    let amd64 = umoci_base(ws, fixture, &layout, "amd64", "amd64");
    let arm64 = umoci_base(ws, fixture, &layout, "arm64", "arm64");
    let entry = |digest: &str, arch: &str| {
        let size = fs::metadata(blob(&layout, digest)).unwrap().len();
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": { "os": "linux", "architecture": arch },
        })
    };
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&amd64, "amd64"), entry(&arm64, "arm64")],
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = Digest::of(&bytes).to_string();
    fs::write(blob(&layout, &digest), bytes).unwrap();
    (layout, digest, json!({ "amd64": amd64, "arm64": arm64 }))
}

fn layout_recipe(ws: &Workspace, dir: &str, digest: &str, platforms: &str) -> PathBuf {
    ws.write(
        &format!("r/{dir}.toml"),
        format!(
            "epoch = 1700000000\n[image]\nname = \"fromlayout\"\nversion = \"1\"\n\
             platforms = [{platforms}]\n\
             [base]\noci-layout = \"{dir}\"\ndigest = \"{digest}\"\n{RECIPE_LAYER}"
        ),
    )
}

#[test]
fn a_base_from_an_oci_layout_takes_each_platforms_manifest() {
    let Some(fixture) = setup() else { return };
    let ws = Workspace::new();
    let (layout, index, per_arch) = two_platform_layout(&ws, &fixture, "r/base");
    let recipe = layout_recipe(&ws, "base", &index, "\"linux/arm64\", \"linux/amd64\"");
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    let digest = support::digest_of(&kiln.build(&recipe, &[]));
    let manifests = stored_manifests(&kiln, "fromlayout:1");
    assert_eq!(manifests.len(), 2);
    for (arch, ours) in &manifests {
        let theirs = layout_layers(&layout, per_arch[arch].as_str().unwrap());
        assert_eq!(ours.len(), theirs.len() + 1, "{arch}: {ours:?}");
        assert_eq!(ours[..theirs.len()], theirs[..], "{arch}");
    }
    // The two platforms' bases differ, so do the images' lower layers.
    assert_ne!(manifests[0].1[0], manifests[1].1[0]);
    kiln.run(&["store", "check"]).ok();

    // The lock lists both manifests; the provenance names the base by digest.
    let lock = fs::read_to_string(ws.path("r/base.lock")).unwrap();
    assert!(lock.contains("oci-layout = \"base\""), "{lock}");
    assert!(lock.contains(per_arch["arm64"].as_str().unwrap()), "{lock}");
    let key = ws.path("key");
    kiln.run(&["keygen", "--out", key.to_str().unwrap()]).ok();
    let key = ws.path("key.key");
    let signed = kiln.build(&recipe, &["--sign", key.to_str().unwrap()]);
    assert_eq!(support::digest_of(&signed), digest);
    kiln.run(&["verify", "fromlayout:1", "--key", ws.path("key.pub").to_str().unwrap()]).ok();
    let statement = provenance(&store, &digest);
    let deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"].clone();
    let base = deps.as_array().unwrap().iter().find(|d| d["name"] == "base").unwrap();
    assert_eq!(base["digest"]["sha256"], index.trim_start_matches("sha256:"), "{deps}");
    assert_eq!(base["uri"], format!("oci-layout:base@{index}"), "{deps}");
    let arm64 = deps.as_array().unwrap().iter().find(|d| d["name"] == "base linux/arm64").unwrap();
    assert_eq!(
        arm64["digest"]["sha256"],
        per_arch["arm64"].as_str().unwrap().trim_start_matches("sha256:")
    );

    // Each platform's SBOM lists the base's files, without the one its whiteout deleted.
    let inspected = kiln.run(&["--json", "inspect", "fromlayout:1"]).ok().json();
    for m in inspected["manifests"].as_array().unwrap() {
        let manifest = m["descriptor"]["digest"].as_str().unwrap();
        let sbom = referrer_document(&store, manifest, "application/spdx+json");
        let names: Vec<&str> = sbom["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["fileName"].as_str().unwrap())
            .collect();
        for present in ["./bin/busybox", "./etc/kept", "./etc/motd"] {
            assert!(names.contains(&present), "{present} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("doomed")), "{names:?}");
    }

    // `verify --rebuild` flattens and rebuilds it from the recipe's folder, base included.
    let rebuilt = Kiln::new(&store)
        .cwd(&ws.path("r"))
        .run(&[
            "--json",
            "verify",
            "fromlayout:1",
            "--key",
            ws.path("key.pub").to_str().unwrap(),
            "--rebuild",
        ])
        .ok()
        .json();
    assert_eq!(rebuilt["rebuild"]["reproduced"], true, "{rebuilt}");

    // Moved elsewhere, under another umask and working folder, it builds the same image.
    let moved = ws.path("moved");
    sh("cp", &["-a", ws.path("r").to_str().unwrap(), moved.to_str().unwrap()]);
    let other = Kiln::new(&ws.store("store2")).umask("027").env("TZ", "Asia/Kolkata").cwd(&moved);
    let report = other.build(Path::new("base.toml"), &["--locked"]);
    assert_eq!(support::digest_of(&report), digest);
}

/// Runs a build expected to fail (exit 1) with `needle` in its error, and checks that it left
/// the store without a tag or blob, and checkable.
fn refused(ws: &Workspace, recipe: &Path, extra: &[&str], needle: &str) {
    refused_with(ws, recipe, extra, EXIT_ERROR, needle);
}

/// As [`refused`], for a base whose bytes are not what its digests promise (exit 4).
fn refused_as_damaged(ws: &Workspace, recipe: &Path, needle: &str) {
    refused_with(ws, recipe, &[], EXIT_INTEGRITY, needle);
}

fn refused_with(ws: &Workspace, recipe: &Path, extra: &[&str], code: i32, needle: &str) {
    let store = ws.store(&format!("refused-{}", Digest::of(needle.as_bytes()).hex()));
    let kiln = Kiln::new(&store).env("DOCKER_CONFIG", ws.mkdir("docker-config").to_str().unwrap());
    let mut args = vec!["build", recipe.to_str().unwrap()];
    args.extend(extra);
    kiln.run(&args).fails_with(code).stderr_has(&[needle]);
    assert!(support::blobs(&store).is_empty(), "{:?}", support::blobs(&store));
    if store.exists() {
        kiln.run(&["store", "check"]).ok();
    }
}

#[test]
fn bad_bases_are_refused_and_nothing_is_stored() {
    let Some(fixture) = setup() else { return };
    let ws = Workspace::new();
    let (layout, index, per_arch) = two_platform_layout(&ws, &fixture, "r/base");

    // A tag alone names no particular image.
    let tag_only = ws.write(
        "r/tag.toml",
        "[image]\nname = \"t\"\nversion = \"1\"\n[base]\nimage = \"127.0.0.1:5000/busybox:1\"\n",
    );
    refused(&ws, &tag_only, &[], "has no digest");

    // A platform the base lacks is named.
    let riscv = layout_recipe(&ws, "base", &index, "\"linux/amd64\", \"linux/riscv64\"");
    refused(
        &ws,
        &riscv,
        &[],
        "has no image for platform linux/riscv64 (it has: linux/amd64, linux/arm64)",
    );

    // A layer blob whose bytes are not its digest (same size, one byte changed).
    let amd64 = per_arch["amd64"].as_str().unwrap();
    let first = layout_layers(&layout, amd64)[0].clone();
    sh("cp", &["-a", layout.to_str().unwrap(), ws.path("r/corrupt").to_str().unwrap()]);
    let damaged = blob(&ws.path("r/corrupt"), &first);
    let mut bytes = fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::remove_file(&damaged).unwrap();
    fs::write(&damaged, bytes).unwrap();
    let corrupt = layout_recipe(&ws, "corrupt", amd64, "\"linux/amd64\"");
    refused_as_damaged(&ws, &corrupt, &format!("blob {first} does not match its digest"));

    // A config whose diff_id is not its layer's: a new config and manifest naming it.
    sh("cp", &["-a", layout.to_str().unwrap(), ws.path("r/diffid").to_str().unwrap()]);
    let other = ws.path("r/diffid");
    let mut manifest = read_json(&blob(&other, amd64));
    let mut config = read_json(&blob(&other, manifest["config"]["digest"].as_str().unwrap()));
    let wrong = format!("sha256:{}", "1".repeat(64));
    config["rootfs"]["diff_ids"][1] = wrong.clone().into();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = Digest::of(&config_bytes).to_string();
    fs::write(blob(&other, &config_digest), &config_bytes).unwrap();
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = Digest::of(&manifest_bytes).to_string();
    fs::write(blob(&other, &manifest_digest), &manifest_bytes).unwrap();
    let second = layout_layers(&other, &manifest_digest)[1].clone();
    let diff_id = layout_recipe(&ws, "diffid", &manifest_digest, "\"linux/amd64\"");
    refused_as_damaged(&ws, &diff_id, &format!("layer {second} unpacks to"));
    refused_as_damaged(&ws, &diff_id, &format!("but its config's diff_id is {wrong}"));

    // A digest the layout does not hold, and a folder that is no layout.
    let absent =
        layout_recipe(&ws, "base", &format!("sha256:{}", "2".repeat(64)), "\"linux/amd64\"");
    refused(&ws, &absent, &[], "cannot read");
    ws.mkdir("r/empty");
    let empty = layout_recipe(&ws, "empty", amd64, "\"linux/amd64\"");
    refused(&ws, &empty, &[], "is not an OCI image layout");
}

/// Writes into `layout` (an OCI layout, made if missing) a one-platform image whose one layer
/// is the gzip tarball `layer`, with `diff_id` in its config; returns the manifest's digest.
fn hand_made_layout(layout: &Path, layer: &[u8], diff_id: &str) -> String {
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |bytes: &[u8]| {
        let digest = Digest::of(bytes).to_string();
        fs::write(blob(layout, &digest), bytes).unwrap();
        (digest, bytes.len())
    };
    let (layer_digest, layer_size) = put(layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))
    .unwrap();
    let (config_digest, config_size) = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_size,
        }],
    }))
    .unwrap();
    put(&manifest).0
}

#[test]
fn a_hostile_base_layer_is_read_as_a_hostile_tarball_is() {
    use support::tarball::{tar, tar_gz, Member};
    let ws = Workspace::new();
    let cases: [(&str, Vec<Member>, &str); 3] = [
        (
            "climbs",
            vec![Member::File { name: "../escape", content: b"x" }],
            "climbs out with \"..\"",
        ),
        ("absolute", vec![Member::File { name: "/etc/x", content: b"x" }], "is an absolute path"),
        (
            "whiteout",
            vec![Member::Dir { name: "d/" }, Member::File { name: "d/.wh...", content: b"" }],
            "whiteout",
        ),
    ];
    for (name, members, needle) in cases {
        let plain = tar(&members);
        let diff_id = Digest::of(&plain).to_string();
        let manifest =
            hand_made_layout(&ws.path(&format!("r/{name}")), &tar_gz(&members), &diff_id);
        let recipe = layout_recipe(&ws, name, &manifest, "\"linux/amd64\"");
        refused(&ws, &recipe, &[], needle);
    }
    // A sound hand-made base builds, and its one layer is taken as it is.
    let members =
        [Member::Dir { name: "etc/" }, Member::File { name: "etc/os", content: b"hand\n" }];
    let diff_id = Digest::of(&tar(&members)).to_string();
    let layer = tar_gz(&members);
    let manifest = hand_made_layout(&ws.path("r/sound"), &layer, &diff_id);
    let recipe = layout_recipe(&ws, "sound", &manifest, "\"linux/amd64\"");
    let kiln = Kiln::new(&ws.store("sound"));
    kiln.build(&recipe, &[]);
    let layers = &stored_manifests(&kiln, "fromlayout:1")[0].1;
    assert_eq!(layers[0], Digest::of(&layer).to_string());
    assert_eq!(layers.len(), 2);
}

#[test]
fn packages_on_a_debian_base_keep_its_dpkg_status() {
    use support::tarball::{tar, tar_gz, Member};
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let status = "Package: base-files\nStatus: install ok installed\nVersion: 12.4\n\
                  Architecture: amd64\n\nPackage: busybox-static\nStatus: install ok installed\n\
                  Version: 0.1\nArchitecture: amd64\n";
    let members = [
        Member::Dir { name: "var/" },
        Member::Dir { name: "var/lib/" },
        Member::Dir { name: "var/lib/dpkg/" },
        Member::File { name: "var/lib/dpkg/status", content: status.as_bytes() },
    ];
    let diff_id = Digest::of(&tar(&members)).to_string();
    let manifest = hand_made_layout(&ws.path("r/debian"), &tar_gz(&members), &diff_id);
    fs::copy(fixture.join("key.asc"), ws.path("r/key.asc")).unwrap();
    let recipe = ws.write(
        "r/pkgs.toml",
        format!(
            "[image]\nname = \"pkgs\"\nversion = \"1\"\n\
             [base]\noci-layout = \"debian\"\ndigest = \"{manifest}\"\n\
             [[repository]]\nurl = \"file://{}\"\nsuite = \"kiln\"\ncomponents = [\"main\"]\n\
             key = \"key.asc\"\n\
             [[layer]]\nname = \"tools\"\npackages = [\"busybox-static\"]\n",
            fixture.join("repo").display()
        ),
    );
    let store = ws.store("store");
    let kiln = Kiln::new(&store);
    kiln.build(&recipe, &[]);
    let layers = &stored_manifests(&kiln, "pkgs:1")[0].1;
    assert_eq!(layers.len(), 2);
    let layer = store.join("blobs/sha256").join(layers[1].trim_start_matches("sha256:"));
    let written =
        sh("tar", &["-xzOf", layer.to_str().unwrap(), "--wildcards", "*var/lib/dpkg/status"]);
    // The base's own package stays listed; the one the recipe installs replaces its entry.
    assert!(written.contains("Package: base-files\n"), "{written}");
    assert_eq!(written.matches("Package: busybox-static\n").count(), 1, "{written}");
    assert!(!written.contains("Version: 0.1\n"), "{written}");
    kiln.run(&["store", "check"]).ok();
}

#[test]
fn a_debian_base_whose_dpkg_status_is_not_utf8_is_refused() {
    use support::tarball::{tar, tar_gz, Member};
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    // Latin-1 "é": replacing it would write other bytes into the image's status file.
    let status = b"Package: base-files\nStatus: install ok installed\nMaintainer: Jos\xe9\n";
    let members = [
        Member::Dir { name: "var/" },
        Member::Dir { name: "var/lib/" },
        Member::Dir { name: "var/lib/dpkg/" },
        Member::File { name: "var/lib/dpkg/status", content: status },
    ];
    let diff_id = Digest::of(&tar(&members)).to_string();
    let manifest = hand_made_layout(&ws.path("r/latin1"), &tar_gz(&members), &diff_id);
    fs::copy(fixture.join("key.asc"), ws.path("r/key.asc")).unwrap();
    let recipe = ws.write(
        "r/latin1.toml",
        format!(
            "[image]\nname = \"latin1\"\nversion = \"1\"\n\
             [base]\noci-layout = \"latin1\"\ndigest = \"{manifest}\"\n\
             [[repository]]\nurl = \"file://{}\"\nsuite = \"kiln\"\ncomponents = [\"main\"]\n\
             key = \"key.asc\"\n\
             [[layer]]\nname = \"tools\"\npackages = [\"busybox-static\"]\n",
            fixture.join("repo").display()
        ),
    );
    refused(&ws, &recipe, &[], "its dpkg status file is not UTF-8");
}

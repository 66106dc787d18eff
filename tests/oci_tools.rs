//! Real OCI tools accept what kiln exports: skopeo inspects and copies the layout and the
//! archive, and umoci unpacks exactly the tree recipes/golden.toml declares.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{copy_recipes, is_root, require_tool, sh, Kiln, Workspace};

const EPOCH: i64 = 1_700_000_000;
const TAG: &str = "1.0.0";

/// Builds a fixture recipe from `recipes/` and exports it as an OCI layout in `ws/layout`.
fn export_fixture(ws: &Workspace, recipe: &str, reference: &str) -> PathBuf {
    let recipes = copy_recipes(ws.root());
    let kiln = Kiln::new(&ws.store("store"));
    kiln.build(&recipes.join(recipe), &[]);
    let layout = ws.path("layout");
    kiln.run(&["export", reference, "--oci-layout", layout.to_str().expect("utf-8")]).ok();
    layout
}

fn skopeo_json(args: &[&str]) -> Value {
    let out = sh("skopeo", args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo {args:?}: not JSON ({e}): {out}"))
}

/// Every blob in an exported layout hashes to its own name (checked with sha256sum, not kiln).
fn assert_layout_blobs_verify(layout: &Path) {
    let layout_file = fs::read_to_string(layout.join("oci-layout")).expect("oci-layout file");
    let v: Value = serde_json::from_str(&layout_file).expect("oci-layout is JSON");
    assert_eq!(v["imageLayoutVersion"], "1.0.0");
    let dir = layout.join("blobs/sha256");
    let mut count = 0;
    for entry in fs::read_dir(&dir).expect("layout has blobs/sha256") {
        let path = entry.expect("entry").path();
        let out = sh("sha256sum", &[path.to_str().expect("utf-8")]);
        let hex = out.split_whitespace().next().expect("sha256sum output");
        let name = path.file_name().expect("name").to_str().expect("utf-8");
        assert_eq!(hex, name, "blob {} does not match its name", path.display());
        count += 1;
    }
    assert!(count >= 4, "expected index, manifest, config and layers; found {count} blobs");
}

/// The manifest for `arch` in the layout's (only) image index lists only layers of `media_type`.
/// (skopeo 1.9 on Debian 12 does not report layer media types itself.)
fn assert_layer_media_types(layout: &Path, arch: &str, media_type: &str) {
    let read = |digest: &str| -> Value {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let bytes = fs::read(layout.join("blobs/sha256").join(hex)).expect("blob in layout");
        serde_json::from_slice(&bytes).expect("JSON blob")
    };
    let top: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    let index = read(top["manifests"][0]["digest"].as_str().expect("image index digest"));
    let entry = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap_or_else(|| panic!("no {arch} manifest in {index:#}"));
    let manifest = read(entry["digest"].as_str().expect("manifest digest"));
    for layer in manifest["layers"].as_array().expect("layers") {
        assert_eq!(layer["mediaType"], media_type, "{manifest:#}");
    }
}

#[test]
fn skopeo_inspects_and_copies_the_layout() {
    if !require_tool("skopeo") {
        return;
    }
    let ws = Workspace::new();
    let layout = export_fixture(&ws, "golden.toml", "golden:1.0.0");
    assert_layout_blobs_verify(&layout);
    let src = format!("oci:{}:{TAG}", layout.display());

    let info = skopeo_json(&["inspect", &src]);
    assert_eq!(info["Architecture"], "amd64", "{info:#}");
    assert_eq!(info["Os"], "linux", "{info:#}");
    assert_eq!(info["Layers"].as_array().expect("Layers").len(), 2, "{info:#}");
    assert_eq!(info["Created"], "2023-11-14T22:13:20Z", "created must come from the epoch");
    assert_eq!(info["Labels"]["org.example.tier"], "fixture", "{info:#}");
    assert_layer_media_types(&layout, "amd64", "application/vnd.oci.image.layer.v1.tar+gzip");

    let config = skopeo_json(&["inspect", "--config", &src]);
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/app"]));
    assert_eq!(c["Cmd"], serde_json::json!(["--serve"]));
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["WorkingDir"], "/var/lib/app");
    assert_eq!(c["StopSignal"], "SIGTERM");
    let env: Vec<&str> =
        c["Env"].as_array().expect("Env").iter().map(|e| e.as_str().expect("str")).collect();
    assert!(env.contains(&"PATH=/usr/local/bin:/usr/bin:/bin"), "{env:?}");
    assert!(env.contains(&"APP_HOME=/var/lib/app"), "{env:?}");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object(), "{config:#}");
    assert!(c["ExposedPorts"]["8443/tcp"].is_object(), "{config:#}");
    assert!(c["Volumes"]["/var/lib/app"].is_object(), "{config:#}");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().expect("diff_ids").len(), 2);
    assert_eq!(config["history"].as_array().expect("history").len(), 2, "{config:#}");

    // skopeo copies it (re-verifying every blob digest as it reads) into an archive and back.
    let archive = ws.path("copied.tar");
    sh("skopeo", &["copy", &src, &format!("oci-archive:{}", archive.display())]);
    let copied = skopeo_json(&["inspect", &format!("oci-archive:{}", archive.display())]);
    assert_eq!(copied["Layers"], info["Layers"], "layers changed through skopeo copy");
    // With --all skopeo keeps kiln's index byte for byte; without it, kiln's manifest.
    let relayout = ws.path("relayout");
    sh("skopeo", &["copy", "--all", &src, &format!("oci:{}:all", relayout.display())]);
    let again = skopeo_json(&["inspect", &format!("oci:{}:all", relayout.display())]);
    assert_eq!(again["Digest"], info["Digest"], "index digest changed through skopeo copy --all");
    sh("skopeo", &["copy", &src, &format!("oci:{}:one", relayout.display())]);
    let single = skopeo_json(&["inspect", "--raw", &format!("oci:{}:one", relayout.display())]);
    let raw_index = skopeo_json(&["inspect", "--raw", &src]);
    let manifest = sh("skopeo", &["inspect", "--raw", &format!("oci:{}:one", relayout.display())]);
    let out = sh("sh", &["-c", "printf %s \"$0\" | sha256sum", &manifest]);
    let copied_digest = format!("sha256:{}", out.split_whitespace().next().expect("sha256sum"));
    assert_eq!(single["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        copied_digest, raw_index["manifests"][0]["digest"],
        "skopeo re-encoded kiln's manifest"
    );
}

#[test]
fn skopeo_reads_kiln_oci_archive() {
    if !require_tool("skopeo") {
        return;
    }
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let kiln = Kiln::new(&ws.store("store"));
    kiln.build(&recipes.join("golden.toml"), &[]);
    let archive = ws.path("golden.tar");
    kiln.run(&["export", "golden:1.0.0", "--oci-archive", archive.to_str().expect("utf-8")]).ok();
    let info = skopeo_json(&["inspect", &format!("oci-archive:{}", archive.display())]);
    assert_eq!(info["Architecture"], "amd64", "{info:#}");
    assert_eq!(info["Layers"].as_array().expect("Layers").len(), 2, "{info:#}");
    // The archive is a plain tar whose members form the same layout.
    let listing = sh("tar", &["-tf", archive.to_str().expect("utf-8")]);
    assert!(listing.lines().any(|l| l.trim_start_matches("./") == "oci-layout"), "{listing}");
    assert!(listing.lines().any(|l| l.trim_start_matches("./") == "index.json"), "{listing}");
}

#[test]
fn skopeo_sees_every_platform_and_zstd_layers() {
    if !require_tool("skopeo") {
        return;
    }
    let ws = Workspace::new();
    let layout = export_fixture(&ws, "golden-zstd.toml", "golden-zstd:1.0.0");
    assert_layout_blobs_verify(&layout);
    let src = format!("oci:{}:{TAG}", layout.display());
    for arch in ["amd64", "arm64"] {
        let info =
            skopeo_json(&["inspect", "--override-os", "linux", "--override-arch", arch, &src]);
        assert_eq!(info["Architecture"], arch, "{info:#}");
        assert_eq!(info["Layers"].as_array().expect("Layers").len(), 2, "{info:#}");
        assert_layer_media_types(&layout, arch, "application/vnd.oci.image.layer.v1.tar+zstd");
    }
    let raw = skopeo_json(&["inspect", "--raw", &src]);
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json", "{raw:#}");
    assert_eq!(raw["manifests"].as_array().expect("manifests").len(), 2, "{raw:#}");
    let all = ws.path("all");
    sh("skopeo", &["copy", "--all", &src, &format!("oci:{}:{TAG}", all.display())]);
}

/// What an unpacked path must be.
#[derive(Debug)]
enum Want {
    Dir { mode: u32, owner: (u32, u32) },
    File { mode: u32, content: Vec<u8> },
    Link(&'static str),
}

fn golden_tree() -> Vec<(String, Want)> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/golden");
    let read = |rel: &str| fs::read(fixtures.join(rel)).expect("fixture file");
    let long = "docs/a-rather-long-directory-name-for-testing-ustar-limits/\
                and-a-long-file-name-that-pushes-the-path-past-one-hundred-bytes.txt";
    let dir = |mode| Want::Dir { mode, owner: (0, 0) };
    let file = |mode, content: Vec<u8>| Want::File { mode, content };
    vec![
        ("bin".into(), dir(0o755)),
        ("bin/app".into(), Want::Link("../usr/local/bin/app")),
        ("etc".into(), dir(0o755)),
        ("etc/app".into(), dir(0o755)),
        ("etc/app/app.conf".into(), file(0o644, b"listen = 8080\nlog = \"info\"\n".to_vec())),
        ("etc/motd".into(), file(0o644, b"hello from kiln\n".to_vec())),
        ("srv".into(), dir(0o755)),
        ("srv/www".into(), dir(0o755)),
        ("srv/www/cgi-bin".into(), dir(0o755)),
        ("srv/www/cgi-bin/run.sh".into(), file(0o755, read("rootfs/cgi-bin/run.sh"))),
        ("srv/www/docs".into(), dir(0o755)),
        ("srv/www/docs/a-rather-long-directory-name-for-testing-ustar-limits".into(), dir(0o755)),
        (format!("srv/www/{long}"), file(0o644, read(&format!("rootfs/{long}")))),
        (
            "srv/www/docs/café-naïve-日本語.txt".into(),
            file(0o644, read("rootfs/docs/café-naïve-日本語.txt")),
        ),
        ("srv/www/index.html".into(), file(0o644, read("rootfs/index.html"))),
        ("tmp".into(), dir(0o1777)),
        ("usr".into(), dir(0o755)),
        ("usr/bin".into(), dir(0o755)),
        ("usr/bin/golden".into(), Want::Link("/usr/local/bin/app")),
        ("usr/local".into(), dir(0o755)),
        ("usr/local/bin".into(), dir(0o755)),
        ("usr/local/bin/app".into(), file(0o755, read("app.sh"))),
        ("usr/local/bin/app-hardlink".into(), file(0o755, read("app.sh"))),
        ("usr/local/bin/su-helper".into(), file(0o4755, read("su-helper"))),
        ("var".into(), dir(0o755)),
        ("var/empty".into(), dir(0o755)),
        ("var/lib".into(), dir(0o755)),
        ("var/lib/app".into(), Want::Dir { mode: 0o750, owner: (1000, 1000) }),
    ]
}

/// Every path under `root`, relative, sorted.
fn listing(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).expect("read unpacked folder") {
        let path = entry.expect("entry").path();
        let rel = path.strip_prefix(root).expect("under root").to_str().expect("utf-8 name");
        out.insert(rel.to_string());
        if path.symlink_metadata().expect("lstat").is_dir() {
            listing(root, &path, out);
        }
    }
}

#[test]
fn umoci_unpacks_exactly_the_declared_tree() {
    if !require_tool("umoci") {
        return;
    }
    let ws = Workspace::new();
    let layout = export_fixture(&ws, "golden.toml", "golden:1.0.0");
    let bundle = ws.path("bundle");
    let image = format!("{}:{TAG}", layout.display());
    let root = is_root();
    let mut args = vec!["unpack"];
    if !root {
        eprintln!("not root: unpacking with --rootless, owners are not checked");
        args.push("--rootless");
    }
    args.extend(["--image", &image, bundle.to_str().expect("utf-8")]);
    sh("umoci", &args);

    let rootfs = bundle.join("rootfs");
    let want = golden_tree();
    let mut found = BTreeSet::new();
    listing(&rootfs, &rootfs, &mut found);
    let expected: BTreeSet<String> = want.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(found, expected, "unpacked tree differs from the declared one");

    for (rel, w) in &want {
        let path = rootfs.join(rel);
        let meta = path.symlink_metadata().expect("lstat unpacked path");
        match w {
            Want::Dir { mode, owner } => {
                assert!(meta.is_dir(), "{rel} should be a folder");
                assert_eq!(meta.mode() & 0o7777, *mode, "{rel}: mode {:o}", meta.mode());
                if root {
                    assert_eq!((meta.uid(), meta.gid()), *owner, "{rel}: owner");
                }
            }
            Want::File { mode, content } => {
                assert!(meta.is_file(), "{rel} should be a regular file");
                assert_eq!(meta.mode() & 0o7777, *mode, "{rel}: mode {:o}", meta.mode());
                assert_eq!(&fs::read(&path).expect("read unpacked file"), content, "{rel}");
                assert_eq!(meta.mtime(), EPOCH, "{rel}: mtime must be the recipe's epoch");
                if root {
                    assert_eq!((meta.uid(), meta.gid()), (0, 0), "{rel}: owner");
                }
            }
            Want::Link(target) => {
                assert!(meta.file_type().is_symlink(), "{rel} should be a symlink");
                let got = fs::read_link(&path).expect("readlink");
                assert_eq!(got, Path::new(target), "{rel}: symlink target");
            }
        }
    }

    let app = rootfs.join("usr/local/bin/app").metadata().expect("app");
    let link = rootfs.join("usr/local/bin/app-hardlink").metadata().expect("app-hardlink");
    assert_eq!(app.ino(), link.ino(), "the declared hard link must share the inode");
    assert_eq!(app.nlink(), 2);
    assert_eq!(
        fs::read_dir(rootfs.join("var/empty")).expect("var/empty").count(),
        0,
        "empty folder must stay empty"
    );
}

#[test]
fn every_example_recipe_builds_and_skopeo_reads_it() {
    if !require_tool("skopeo") {
        return;
    }
    let ws = Workspace::new();
    let recipes = copy_recipes(ws.root());
    let mut names: Vec<PathBuf> = fs::read_dir(&recipes)
        .expect("recipes folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "expected at least three example recipes: {names:?}");
    let kiln = Kiln::new(&ws.store("store"));
    for recipe in names {
        // A committed lock must still match its recipe and inputs.
        let locked = recipe.with_extension("lock").is_file();
        let report = kiln.build(&recipe, if locked { &["--locked"] } else { &[] });
        let name = report["name"].as_str().expect("name");
        let tag = report["tag"].as_str().expect("tag");
        let layout = ws.path(&format!("layout-{name}"));
        let reference = format!("{name}:{tag}");
        kiln.run(&["export", &reference, "--oci-layout", layout.to_str().expect("utf-8")]).ok();
        assert_layout_blobs_verify(&layout);
        let info = skopeo_json(&["inspect", &format!("oci:{}:{tag}", layout.display())]);
        assert_eq!(info["Os"], "linux", "{}: {info:#}", recipe.display());
        assert!(!info["Layers"].as_array().expect("Layers").is_empty(), "{}", recipe.display());
    }
}

#[test]
fn export_writes_referrers_that_skopeo_and_umoci_step_over() {
    if !require_tool("skopeo") || !require_tool("umoci") {
        return;
    }
    let ws = Workspace::new();
    ws.write("r/motd", "hello\n");
    let recipe = ws.write(
        "r/r.toml",
        "[image]\nname = \"refs\"\nversion = \"1\"\n[[layer]]\nname = \"a\"\n\
         files = [{ src = \"motd\", dest = \"/etc/motd\" }]\n\
         [disk]\nsize = \"8MiB\"\nformats = [\"initramfs\"]\n",
    );
    let kiln = Kiln::new(&ws.store("store")).umask("022");
    let key = ws.path("k");
    kiln.run(&["keygen", "--out", key.to_str().expect("utf-8")]).ok();
    let key = format!("{}.key", key.display());
    let root = support::digest_of(&kiln.build(&recipe, &["--sign", &key]));
    let layout = ws.path("layout");
    let report = kiln
        .run(&["--json", "export", "refs:1", "--oci-layout", layout.to_str().expect("utf-8")])
        .ok()
        .json();
    assert_layout_blobs_verify(&layout);
    for file in ["index.json", "oci-layout", "blobs/sha256"] {
        let mode = fs::metadata(layout.join(file)).expect("layout file").mode() & 0o777;
        let want = if file.starts_with("blobs") { 0o755 } else { 0o644 };
        assert_eq!(mode, want, "{file} under umask 022: {mode:o}");
    }
    for blob in fs::read_dir(layout.join("blobs/sha256")).expect("blobs") {
        let mode = blob.expect("blob").metadata().expect("blob").mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    // index.json: the image under its tag, then each artifact untagged; every blob of every
    // artifact is in the layout.
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("JSON");
    let entries = index["manifests"].as_array().expect("manifests");
    let tagged: Vec<&Value> = entries
        .iter()
        .filter(|e| e["annotations"]["org.opencontainers.image.ref.name"].is_string())
        .collect();
    assert_eq!(tagged.len(), 1, "{index:#}");
    assert_eq!(tagged[0]["digest"], root.as_str());
    let mut types: Vec<&str> = entries.iter().filter_map(|e| e["artifactType"].as_str()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/spdx+json",
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            "application/vnd.in-toto+json",
            "application/vnd.kiln.disk.v1",
        ],
        "{index:#}"
    );
    assert_eq!(report["referrersListed"], 4, "{report}");
    let blob = |d: &Value| layout.join("blobs/sha256").join(&d.as_str().expect("digest")[7..]);
    for e in entries.iter().filter(|e| e["artifactType"].is_string()) {
        let manifest: Value =
            serde_json::from_slice(&fs::read(blob(&e["digest"])).expect("artifact manifest"))
                .expect("JSON");
        assert!(manifest["subject"]["digest"].is_string(), "{manifest:#}");
        assert!(blob(&manifest["config"]["digest"]).exists());
        for layer in manifest["layers"].as_array().expect("layers") {
            assert!(blob(&layer["digest"]).exists(), "{layer}");
        }
    }

    // A second export into the same layout lists nothing twice.
    let again = kiln
        .run(&["--json", "export", "refs:1", "--oci-layout", layout.to_str().expect("utf-8")])
        .ok()
        .json();
    assert_eq!(again["referrersListed"], 0, "{again}");

    // The tools still read the image by its tag.
    let src = format!("oci:{}:1", layout.display());
    let info = skopeo_json(&["inspect", &src]);
    assert_eq!(info["Digest"].as_str().map(|d| d.len()), Some(71), "{info}");
    let bundle = ws.path("bundle");
    let image = format!("{}:1", layout.display());
    let mut args = vec!["unpack"];
    if !is_root() {
        args.push("--rootless");
    }
    args.extend(["--image", &image, bundle.to_str().expect("utf-8")]);
    sh("umoci", &args);
    assert_eq!(fs::read(bundle.join("rootfs/etc/motd")).expect("motd"), b"hello\n");

    // The archive holds the same files.
    let archive = ws.path("image.tar");
    kiln.run(&["export", "refs:1", "--oci-archive", archive.to_str().expect("utf-8")]).ok();
    let listed = sh("tar", &["-tvf", archive.to_str().expect("utf-8")]);
    let count = listed.lines().filter(|l| l.contains("blobs/sha256/")).count();
    let files = fs::read_dir(layout.join("blobs/sha256")).expect("blobs").count();
    assert_eq!(count, files + 1, "{listed}");
    assert!(listed.lines().all(|l| !l.contains("index.json") || l.starts_with("-rw-r--r--")));
}

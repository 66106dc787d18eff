#![allow(clippy::unwrap_used)]
//! Debian packages from a signed repository of real packages (`ci/debian-repo`, cached in
//! `KILN_DEBIAN_REPO`): locked, built, unpacked by umoci, run in a chroot and listed by
//! dpkg-query; a plain build never resolves again; hostile repositories and package files are
//! refused with nothing stored. No network: the repository is a folder.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use support::{
    blobs, debian_fixture, digest_of, is_root, require_tool, sh, Kiln, Workspace, EXIT_ERROR,
    EXIT_INTEGRITY, EXIT_LOCK_MISMATCH,
};

/// A repository of the test's own: the fixture's indexes copied (so a test may damage
/// them) and its package files linked one by one (so a test may replace one).
fn repo_copy(ws: &Workspace, fixture: &Path) -> PathBuf {
    let repo = ws.mkdir("repo");
    sh("cp", &["-r", fixture.join("repo/dists").to_str().unwrap(), repo.to_str().unwrap()]);
    let pool = ws.mkdir("repo/pool/main");
    for entry in fs::read_dir(fixture.join("repo/pool/main")).unwrap() {
        let entry = entry.unwrap();
        symlink(entry.path(), pool.join(entry.file_name())).unwrap();
    }
    repo
}

/// A recipe in `ws/recipe` asking for `packages` from `repo`, trusting the fixture's key.
fn recipe(ws: &Workspace, fixture: &Path, repo: &Path, platform: &str, layer: &str) -> PathBuf {
    recipe_at(ws, fixture, &format!("file://{}", repo.display()), platform, layer)
}

/// A recipe in `ws/recipe` asking for `packages` from the repository at `url`.
fn recipe_at(ws: &Workspace, fixture: &Path, url: &str, platform: &str, layer: &str) -> PathBuf {
    ws.mkdir("recipe");
    fs::copy(fixture.join("key.asc"), ws.path("recipe/key.asc")).unwrap();
    ws.write(
        "recipe/debs.toml",
        format!(
            r#"[image]
name = "debs"
version = "1"
platforms = ["{platform}"]

[[repository]]
url = "{url}"
suite = "kiln"
components = ["main"]
key = "key.asc"

[[layer]]
name = "base"
{layer}
"#
        ),
    )
}

/// The amd64 recipe of busybox-static from the repository at `url`.
fn busybox_recipe(ws: &Workspace, fixture: &Path, url: &str) -> PathBuf {
    recipe_at(ws, fixture, url, "linux/amd64", r#"packages = ["busybox-static"]"#)
}

/// The fixture, a workspace, and a copy of the fixture's repository there for a test server
/// to serve; `None` when the fixture or python3 is missing (a skip locally, a failure in CI).
fn repository_to_serve() -> Option<(PathBuf, Workspace, PathBuf)> {
    let fixture = debian_fixture()?;
    if !require_tool("python3") {
        return None;
    }
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    Some((fixture, ws, repo))
}

const PACKAGES: &str = r#"packages = ["busybox-static", "ca-certificates"]"#;

fn lock_text(recipe: &Path) -> String {
    fs::read_to_string(recipe.with_extension("lock")).unwrap()
}

#[test]
fn packages_lock_build_run_in_a_chroot_and_are_listed_by_dpkg_query() {
    let Some(fixture) = debian_fixture() else { return };
    if !require_tool("umoci") || !require_tool("dpkg-query") {
        return;
    }
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", PACKAGES);
    let store = ws.store("s");
    let kiln = Kiln::new(&store);
    kiln.run(&["lock", recipe.to_str().unwrap()]).ok();
    let lock = lock_text(&recipe);
    for needed in ["busybox-static", "ca-certificates", "openssl", "libssl3", "libc6", "debconf"] {
        assert!(lock.contains(&format!("name = \"{needed}\"")), "{needed} not locked:\n{lock}");
    }
    assert!(lock.contains("release = \"InRelease\""), "{lock}");
    assert!(!lock.contains("cdebconf"), "the first alternative, debconf, is chosen:\n{lock}");

    let report = kiln
        .run(&["--json", "build", recipe.to_str().unwrap()])
        .ok()
        .stderr_has(&["notice: package libc6: maintainer scripts not run: preinst, postinst"])
        .json();
    let layout = ws.path("layout");
    kiln.run(&["export", "debs:1", "--oci-layout", layout.to_str().unwrap()]).ok();
    let bundle = ws.path("bundle");
    sh(
        "umoci",
        &["unpack", "--image", &format!("{}:1", layout.display()), bundle.to_str().unwrap()],
    );
    let rootfs = bundle.join("rootfs");

    // Every locked package, with its locked version, as dpkg sees it.
    let listed =
        sh("dpkg-query", &[&format!("--admindir={}/var/lib/dpkg", rootfs.display()), "-W"]);
    let locked: toml::Value = toml::from_str(&lock).unwrap();
    let chosen = locked["packages"][0]["package"].as_array().unwrap();
    assert_eq!(listed.lines().count(), chosen.len(), "{listed}");
    for p in chosen {
        let (name, version) = (p["name"].as_str().unwrap(), p["version"].as_str().unwrap());
        assert!(
            listed
                .lines()
                .any(|l| l.split(['\t', ':']).next() == Some(name) && l.ends_with(version)),
            "{name} {version} not in dpkg-query's list:\n{listed}"
        );
        assert!(rootfs.join(format!("var/lib/dpkg/status.d/{name}")).is_file(), "{name}");
    }
    assert!(rootfs.join("var/lib/dpkg/info/ca-certificates.md5sums").is_file());
    // Setuid bits and modes as packaged, times at the epoch.
    let busybox = fs::metadata(rootfs.join("bin/busybox")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&busybox.permissions()) & 0o7777, 0o755);
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&busybox), 0);
    if is_root() {
        let out =
            std::process::Command::new("chroot").arg(&rootfs).arg("/bin/busybox").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("BusyBox v1."), "{text}");
    } else {
        assert!(!support::in_ci(), "CI runs as root, and the chroot needs it");
        eprintln!("SKIP: the chroot needs root");
    }
    assert!(!digest_of(&report).is_empty());
}

#[test]
fn a_plain_build_never_resolves_again_and_lock_update_does() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", r#"packages = ["busybox-static"]"#);
    let kiln = Kiln::new(&ws.store("s"));
    kiln.run(&["lock", recipe.to_str().unwrap()]).ok();
    let locked = lock_text(&recipe);
    // Without its indexes the repository can no longer be resolved against, but the locked
    // package files are still there: build and lock use the lock.
    fs::remove_dir_all(repo.join("dists")).unwrap();
    let first = kiln.build(&recipe, &["--locked"]);
    kiln.run(&["lock", recipe.to_str().unwrap()]).ok();
    assert_eq!(lock_text(&recipe), locked);
    kiln.run(&["lock", "--update", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["neither dists/kiln/InRelease nor dists/kiln/Release"]);
    assert_eq!(lock_text(&recipe), locked, "a failed update leaves the lock");
    // The same lock builds the same image in another store.
    let again = Kiln::new(&ws.store("t")).build(&recipe, &["--locked"]);
    assert_eq!(digest_of(&first), digest_of(&again));
    // The package files are blobs of both stores now: with the repository gone, each still
    // builds, and a new store cannot.
    fs::remove_dir_all(repo.join("pool")).unwrap();
    let cached = kiln.build(&recipe, &["--locked"]);
    assert_eq!(digest_of(&first), digest_of(&cached));
    Kiln::new(&ws.store("u"))
        .run(&["build", "--locked", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["package busybox-static: cannot read"]);
}

#[test]
fn an_unchanged_rebuild_reads_no_package_file() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", PACKAGES);
    let store = ws.store("s");
    let kiln = Kiln::new(&store);
    let first = kiln.build(&recipe, &[]);
    // With every package file gone from the repository and the store, the layer is still
    // found in the cache from the lock alone.
    fs::remove_dir_all(repo.join("pool")).unwrap();
    let locked: toml::Value = toml::from_str(&lock_text(&recipe)).unwrap();
    for p in locked["packages"][0]["package"].as_array().unwrap() {
        let hex = p["sha256"].as_str().unwrap().trim_start_matches("sha256:");
        fs::remove_file(store.join("blobs/sha256").join(hex)).unwrap();
    }
    let again = kiln.run(&["--json", "build", "--locked", recipe.to_str().unwrap()]).ok().json();
    assert_eq!(digest_of(&first), digest_of(&again));
    assert_eq!(again["layers"]["built"], 0, "{again}");
    assert_eq!(again["layers"]["reused"], 1, "{again}");
}

#[test]
fn the_same_lock_gives_the_same_image_under_varied_conditions() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", PACKAGES);
    Kiln::new(&ws.store("lock")).run(&["lock", recipe.to_str().unwrap()]).ok();
    let a = Kiln::new(&ws.store("a")).build(&recipe, &["--locked"]);
    let b = Kiln::new(&ws.store("b"))
        .umask("077")
        .env("TZ", "Pacific/Kiritimati")
        .env("LC_ALL", "C")
        .cwd(&ws.mkdir("elsewhere"))
        .build(&recipe, &["--locked", "--threads", "1"]);
    assert_eq!(digest_of(&a), digest_of(&b));
}

#[test]
fn arm64_resolves_and_installs_arm64_packages() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/arm64", PACKAGES);
    let kiln = Kiln::new(&ws.store("s"));
    kiln.build(&recipe, &[]);
    let lock = lock_text(&recipe);
    assert!(lock.contains("architecture = \"arm64\""), "{lock}");
    assert!(!lock.contains("architecture = \"amd64\""), "{lock}");
}

/// The ELF machine of the file `member` (a path pattern) in the gzip layer blob `layer`.
fn elf_machine(layer: &Path, member: &str) -> u16 {
    let out = std::process::Command::new("tar")
        .args(["-xzOf", layer.to_str().unwrap(), "--wildcards", member])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(&out.stdout[..4], b"\x7fELF", "{member} is not an ELF file");
    u16::from_le_bytes([out.stdout[18], out.stdout[19]])
}

#[test]
fn two_platforms_lock_and_install_each_architecture_s_packages() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64\", \"linux/arm64", PACKAGES);
    let store = ws.store("s");
    let kiln = Kiln::new(&store);
    kiln.run(&["lock", recipe.to_str().unwrap()]).ok();
    let locked: toml::Value = toml::from_str(&lock_text(&recipe)).unwrap();
    let layers = locked["packages"].as_array().unwrap();
    let arches: Vec<&str> = layers.iter().map(|l| l["architecture"].as_str().unwrap()).collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    for layer in layers {
        let arch = layer["architecture"].as_str().unwrap();
        for p in layer["package"].as_array().unwrap() {
            let found = p["architecture"].as_str().unwrap();
            assert!(found == arch || found == "all", "{p} in the {arch} packages");
        }
    }

    // Both platforms' layers made at once, then one after the other in another store: the
    // same image.
    let report = kiln.build(&recipe, &["--locked", "--threads", "2"]);
    let index = blob_json(&store, &digest_of(&report));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2, "{index}");
    // x86-64 and AArch64, as the ELF header names them.
    for (manifest, (arch, machine)) in manifests.iter().zip([("amd64", 62), ("arm64", 183)]) {
        assert_eq!(manifest["platform"]["architecture"], arch);
        let manifest = blob_json(&store, manifest["digest"].as_str().unwrap());
        let layer = manifest["layers"][0]["digest"].as_str().unwrap();
        let blob = store.join("blobs/sha256").join(layer.trim_start_matches("sha256:"));
        assert_eq!(elf_machine(&blob, "*bin/busybox"), machine, "{arch}");
    }
    // The same lock gives the same image in another store.
    let again = Kiln::new(&ws.store("t")).build(&recipe, &["--locked", "--threads", "1"]);
    assert_eq!(digest_of(&report), digest_of(&again));

    // A signed rebuild finds every layer cached, and still lists in each platform's SBOM
    // that platform's packages.
    let key = ws.path("signer");
    kiln.run(&["keygen", "--out", key.to_str().unwrap()]).ok();
    let signed = kiln.build(&recipe, &["--locked", "--sign", &format!("{}.key", key.display())]);
    assert_eq!(signed["layers"]["built"], 0, "{signed}");
    for manifest in signed["manifests"].as_array().unwrap() {
        let arch = manifest["platform"].as_str().unwrap().trim_start_matches("linux/");
        let sbom = referrer_document(
            &store,
            manifest["digest"].as_str().unwrap(),
            "application/spdx+json",
        );
        let busybox: Vec<&str> = sbom["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "busybox-static")
            .map(|p| p["externalRefs"][0]["referenceLocator"].as_str().unwrap())
            .collect();
        assert_eq!(busybox.len(), 1, "{arch}: {busybox:?}");
        assert!(busybox[0].ends_with(&format!("?arch={arch}")), "{arch}: {busybox:?}");
    }
}

/// The regular files under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => out.extend(files_under(&path)),
            false => out.push(path),
        }
    }
    out
}

#[test]
fn two_platforms_made_at_once_stop_at_a_failure_that_names_its_platform_and_store_no_image() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64\", \"linux/arm64", PACKAGES);
    Kiln::new(&ws.store("lock")).run(&["lock", recipe.to_str().unwrap()]).ok();
    let deb = fs::read_dir(repo.join("pool/main"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("busybox-static_") && name.ends_with("_arm64.deb")
        })
        .unwrap();
    let mut bytes = fs::read(&deb).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::remove_file(&deb).unwrap();
    fs::write(&deb, bytes).unwrap();
    let store = ws.store("s");
    let tmp = ws.mkdir("tmp");
    Kiln::new(&store)
        .env("TMPDIR", tmp.to_str().unwrap())
        .run(&["build", "--locked", "--threads", "2", recipe.to_str().unwrap()])
        .fails_with(EXIT_INTEGRITY)
        .stderr_has(&["platform linux/arm64: ", "pool/main/busybox-static_", "but the lock says"]);
    // Package files checked against the lock may be kept for the next build; no layer,
    // config, manifest or index is stored, and no scratch file is left.
    for blob in blobs(&store) {
        let bytes = fs::read(&blob).unwrap();
        assert!(bytes.starts_with(b"!<arch>\n"), "{} is not a package file", blob.display());
    }
    assert_eq!(files_under(&tmp), Vec::<PathBuf>::new());
    Kiln::new(&store).run(&["store", "check"]).ok();
}

#[test]
fn a_release_signed_by_another_key_is_refused_and_nothing_stored() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    fs::copy(fixture.join("other-InRelease"), repo.join("dists/kiln/InRelease")).unwrap();
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", PACKAGES);
    let store = ws.store("s");
    for command in ["lock", "build"] {
        Kiln::new(&store)
            .run(&[command, recipe.to_str().unwrap()])
            .fails_with(EXIT_ERROR)
            .stderr_has(&[
                "dists/kiln/InRelease does not verify",
                "no signature on it was made by a trusted key",
            ]);
    }
    assert!(blobs(&store).is_empty());
    assert!(!recipe.with_extension("lock").exists());
}

#[test]
fn an_index_whose_hash_differs_from_the_release_is_refused() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let index = repo.join("dists/kiln/main/binary-amd64/Packages.xz");
    let mut bytes = fs::read(&index).unwrap();
    let last = bytes.len() - 1;
    bytes[last / 2] ^= 1;
    fs::write(&index, bytes).unwrap();
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", PACKAGES);
    let store = ws.store("s");
    Kiln::new(&store).run(&["lock", recipe.to_str().unwrap()]).fails_with(EXIT_ERROR).stderr_has(
        &["dists/kiln/main/binary-amd64/Packages.xz is", "but the signed release says"],
    );
    assert!(blobs(&store).is_empty());
}

#[test]
fn a_package_file_that_differs_from_the_lock_is_refused_and_nothing_stored() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", r#"packages = ["busybox-static"]"#);
    let store = ws.store("s");
    Kiln::new(&ws.store("lock")).run(&["lock", recipe.to_str().unwrap()]).ok();
    let pool = repo.join("pool/main");
    let deb = fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.to_str().unwrap().contains("busybox-static")
                && p.to_str().unwrap().ends_with("_amd64.deb")
        })
        .unwrap();
    let mut bytes = fs::read(&deb).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::remove_file(&deb).unwrap();
    fs::write(&deb, bytes).unwrap();
    Kiln::new(&store)
        .run(&["build", "--locked", recipe.to_str().unwrap()])
        .fails_with(EXIT_INTEGRITY)
        .stderr_has(&["pool/main/busybox-static_", "but the lock says"]);
    assert!(blobs(&store).is_empty());
}

#[test]
fn a_package_file_kept_in_the_store_found_corrupt_exits_4() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", r#"packages = ["busybox-static"]"#);
    let recipe = recipe.to_str().unwrap();
    let store = ws.store("s");
    let kiln = Kiln::new(&store);
    kiln.run(&["build", recipe]).ok();
    // The package files the build kept are the store's ar archives.
    let mut damaged = Vec::new();
    for path in blobs(&store) {
        let mut bytes = fs::read(&path).unwrap();
        if bytes.starts_with(b"!<arch>\n") {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            fs::remove_file(&path).unwrap();
            fs::write(&path, bytes).unwrap();
            damaged.push(path.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    assert!(!damaged.is_empty(), "no package file in the store");
    // Another epoch makes every layer again, so the build reads the package from the store
    // through its blob sink, and finds it damaged.
    let run = kiln
        .run(&["build", "--source-date-epoch", "7", recipe])
        .fails_with(EXIT_INTEGRITY)
        .stderr_has(&["busybox-static"]);
    assert!(damaged.iter().any(|hex| run.stderr.contains(hex.as_str())), "{run}");
}

#[test]
fn local_debs_install_and_two_shipping_one_path_differently_is_an_error_naming_both() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let pool = fixture.join("repo/pool/main");
    let find = |arch: &str| {
        fs::read_dir(&pool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let name = p.file_name().unwrap().to_str().unwrap();
                name.starts_with("busybox-static_") && name.ends_with(&format!("_{arch}.deb"))
            })
            .unwrap()
    };
    ws.mkdir("recipe");
    fs::copy(find("amd64"), ws.path("recipe/busybox-amd64.deb")).unwrap();
    fs::copy(find("arm64"), ws.path("recipe/busybox-arm64.deb")).unwrap();
    let one = ws.write(
        "recipe/one.toml",
        "[image]\nname = \"one\"\nversion = \"1\"\n\n[[layer]]\nname = \"base\"\ndebs = [{ src = \"busybox-amd64.deb\" }]\n",
    );
    let kiln = Kiln::new(&ws.store("s"));
    kiln.build(&one, &[]);
    assert!(lock_text(&one).contains("kind = \"deb\""));
    let two = ws.write(
        "recipe/two.toml",
        "[image]\nname = \"two\"\nversion = \"1\"\n\n[[layer]]\nname = \"base\"\ndebs = [{ src = \"busybox-amd64.deb\" }, { src = \"busybox-arm64.deb\" }]\n",
    );
    kiln.run(&["build", two.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["packages busybox-amd64.deb and busybox-arm64.deb both ship /bin/busybox"]);
}

#[test]
fn a_locked_build_of_packages_without_a_lock_is_a_lock_error() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", PACKAGES);
    Kiln::new(&ws.store("s"))
        .run(&["build", "--locked", recipe.to_str().unwrap()])
        .fails_with(EXIT_LOCK_MISMATCH);
}

fn blob_json(store: &Path, digest: &str) -> serde_json::Value {
    let path = store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The first layer of the referrer of `subject` with `artifact_type`, as JSON.
fn referrer_document(store: &Path, subject: &str, artifact_type: &str) -> serde_json::Value {
    let dir = store.join("referrers").join(subject.trim_start_matches("sha256:"));
    for entry in fs::read_dir(&dir).unwrap() {
        let desc: serde_json::Value =
            serde_json::from_slice(&fs::read(entry.unwrap().path()).unwrap()).unwrap();
        if desc["artifactType"] == artifact_type {
            let manifest = blob_json(store, desc["digest"].as_str().unwrap());
            return blob_json(store, manifest["layers"][0]["digest"].as_str().unwrap());
        }
    }
    panic!("no {artifact_type} referrer of {subject}")
}

#[test]
fn the_sbom_lists_each_package_and_the_provenance_the_release_and_package_files() {
    use base64::Engine;
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", r#"packages = ["busybox-static"]"#);
    let store = ws.store("s");
    let kiln = Kiln::new(&store);
    let key = ws.path("signer");
    kiln.run(&["keygen", "--out", key.to_str().unwrap()]).ok();
    let report = kiln.build(&recipe, &["--sign", &format!("{}.key", key.display())]);
    let locked: toml::Value = toml::from_str(&lock_text(&recipe)).unwrap();
    let busybox = &locked["packages"][0]["package"][0];
    let (version, sha256) =
        (busybox["version"].as_str().unwrap(), busybox["sha256"].as_str().unwrap());

    let manifest = report["manifests"][0]["digest"].as_str().unwrap();
    let sbom = referrer_document(&store, manifest, "application/spdx+json");
    let packages = sbom["packages"].as_array().unwrap();
    let p = packages
        .iter()
        .find(|p| p["name"] == "busybox-static")
        .expect("busybox-static in the SBOM");
    assert_eq!(p["versionInfo"], version);
    assert_eq!(p["checksums"][0]["checksumValue"], sha256.trim_start_matches("sha256:"));
    assert_eq!(
        p["externalRefs"][0]["referenceLocator"],
        format!(
            "pkg:deb/debian/busybox-static@{}?arch=amd64",
            version.replace(':', "%3A").replace('+', "%2B")
        )
    );
    assert!(p["sourceInfo"].as_str().unwrap().contains("busybox"), "{p}");
    assert!(p["downloadLocation"].as_str().unwrap().ends_with(busybox["path"].as_str().unwrap()));
    let id = p["SPDXID"].as_str().unwrap();
    let file = sbom["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fileName"] == "./bin/busybox")
        .unwrap();
    assert!(
        sbom["relationships"].as_array().unwrap().iter().any(|r| r["spdxElementId"] == id
            && r["relationshipType"] == "CONTAINS"
            && r["relatedSpdxElement"] == file["SPDXID"]),
        "no CONTAINS from {id} to /bin/busybox"
    );

    let envelope = referrer_document(
        &store,
        report["digest"].as_str().unwrap(),
        "application/vnd.in-toto+json",
    );
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let deps =
        statement["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let release = locked["repository"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    assert!(
        deps.iter()
            .any(|d| d["uri"].as_str().is_some_and(|u| u.ends_with("/dists/kiln/InRelease"))
                && d["digest"]["sha256"] == release),
        "{deps:?}"
    );
    assert!(
        deps.iter().any(|d| d["digest"]["sha256"] == sha256.trim_start_matches("sha256:")),
        "{deps:?}"
    );
    kiln.run(&[
        "verify",
        "debs:1",
        "--key",
        &format!("{}.pub", key.display()),
        "--require",
        "sbom,provenance",
    ])
    .ok();
}

/// One tar member of a crafted package: name as written, type, data (or link target).
struct Crafted<'a>(&'a str, tar::EntryType, &'a [u8]);

/// A tar of `members`, names written raw (the tar crate's setters refuse hostile ones); a
/// member's header declares `declared` bytes more than its data has when given.
fn crafted_tar(members: &[Crafted], declared_extra: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for Crafted(name, kind, data) in members {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let link = matches!(kind, tar::EntryType::Symlink);
        if link {
            h.as_old_mut().linkname[..data.len()].copy_from_slice(data);
        }
        h.set_size(if link { 0 } else { data.len() as u64 + declared_extra });
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        if !link {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// An ar archive of `members`, as dpkg writes one.
fn crafted_ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let header =
            format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, "100644", data.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

/// A package named `bad` whose data member is `data` (named `data_name`).
fn crafted_deb(data_name: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let control = b"Package: bad\nVersion: 1\nArchitecture: amd64\nDescription: x\n";
    let control = crafted_tar(&[Crafted("./control", tar::EntryType::Regular, control)], 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&control).unwrap();
    let control = gz.finish().unwrap();
    crafted_ar(&[("debian-binary", b"2.0\n"), ("control.tar.gz", &control), (data_name, data)])
}

#[test]
fn hostile_local_debs_are_refused_through_the_binary_and_nothing_stored() {
    use std::io::Write;
    use tar::EntryType::{Directory, Regular, Symlink};
    let ws = Workspace::new();
    let escape = crafted_tar(&[Crafted("./../etc/passwd", Regular, b"x")], 0);
    let through = crafted_tar(
        &[Crafted("./etc", Symlink, b"/tmp"), Crafted("./etc/passwd", Regular, b"x")],
        0,
    );
    let larger =
        crafted_tar(&[Crafted("./usr/", Directory, b""), Crafted("./usr/a", Regular, b"x")], 4096);
    let mut truncated =
        crafted_deb("data.tar", &crafted_tar(&[Crafted("./a", Regular, &[7; 4000])], 0));
    truncated.truncate(truncated.len() - 1000);
    // 64 MiB of zeros in a tar, a few KiB as xz.
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&crafted_tar(&[Crafted("./zeros", Regular, &vec![0; 64 << 20])], 0)).unwrap();
    let bomb = xz.finish().unwrap();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("escape", crafted_deb("data.tar", &escape), "has an unsafe name"),
        ("through", crafted_deb("data.tar", &through), "would be written through"),
        ("larger", crafted_deb("data.tar", &larger), "the archive ends after"),
        ("truncated", truncated, "the archive ends after"),
        ("bomb", crafted_deb("data.tar.xz", &bomb), "times its compressed size"),
    ];
    for (name, bytes, needle) in cases {
        ws.mkdir(name);
        fs::write(ws.path(&format!("{name}/bad.deb")), bytes).unwrap();
        let recipe = ws.write(
            &format!("{name}/r.toml"),
            "[image]\nname = \"bad\"\nversion = \"1\"\n\n[[layer]]\nname = \"l\"\ndebs = [{ src = \"bad.deb\" }]\n",
        );
        let store = ws.store(&format!("s-{name}"));
        let kiln = Kiln::new(&store);
        kiln.run(&["build", recipe.to_str().unwrap()])
            .fails_with(EXIT_ERROR)
            .stderr_has(&["package bad.deb", needle]);
        assert!(blobs(&store).is_empty(), "{name}: {:?}", blobs(&store));
        kiln.run(&["store", "check"]).ok();
    }
}

/// `python3 -m http.server` serving a folder on a free port of 127.0.0.1, killed when dropped.
struct HttpServer {
    child: Child,
    /// Held open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    url: String,
}

impl HttpServer {
    fn serve(dir: &Path) -> HttpServer {
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // "Serving HTTP on 127.0.0.1 port N (...)", printed once the socket listens: the
        // port is known and connections are accepted from here on.
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port: u16 = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server said {line:?}"));
        HttpServer { child, _stdout: stdout, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("warning: stopping http.server: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("warning: waiting for http.server: {e}");
        }
    }
}

/// The path of the amd64 busybox-static package file in `repo`.
fn busybox_deb(repo: &Path) -> PathBuf {
    fs::read_dir(repo.join("pool/main"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("busybox-static_") && name.ends_with("_amd64.deb")
        })
        .unwrap()
}

#[test]
fn an_http_repository_locks_and_builds_the_same_image_as_its_folder() {
    let Some((fixture, ws, repo)) = repository_to_serve() else { return };
    let server = HttpServer::serve(&repo);
    let from_folder = recipe(&ws, &fixture, &repo, "linux/amd64", PACKAGES);
    let folder_report = Kiln::new(&ws.store("f")).build(&from_folder, &[]);
    let folder_lock = lock_text(&from_folder);
    let from_http = recipe_at(&ws, &fixture, &server.url, "linux/amd64", PACKAGES);
    let store = ws.store("h");
    let kiln = Kiln::new(&store);
    kiln.run(&["lock", from_http.to_str().unwrap()]).ok();
    let http_lock = lock_text(&from_http);
    assert!(http_lock.contains(&format!("repository = \"{}\"", server.url)), "{http_lock}");
    // The same packages, differing only in where they come from (and so in the recipe's
    // digest).
    let packages = |lock: &str, url: &str| -> String {
        lock.lines()
            .filter(|l| !l.starts_with("recipe = "))
            .map(|l| l.replace(url, "URL") + "\n")
            .collect()
    };
    assert_eq!(
        packages(&http_lock, &server.url),
        packages(&folder_lock, &format!("file://{}", repo.display())),
    );
    let http_report = kiln.build(&from_http, &["--locked"]);
    assert_eq!(digest_of(&folder_report), digest_of(&http_report));
    // Every package file was fetched over HTTP into the store: it builds without the server.
    drop(server);
    let again = kiln.build(&from_http, &["--locked"]);
    assert_eq!(digest_of(&folder_report), digest_of(&again));
}

#[test]
fn an_http_package_file_missing_or_longer_than_locked_is_refused_and_nothing_stored() {
    let Some((fixture, ws, repo)) = repository_to_serve() else { return };
    let server = HttpServer::serve(&repo);
    let recipe = busybox_recipe(&ws, &fixture, &server.url);
    Kiln::new(&ws.store("lock")).run(&["lock", recipe.to_str().unwrap()]).ok();
    let deb = busybox_deb(&repo);
    let name = deb.file_name().unwrap().to_str().unwrap().to_string();
    // The file's name has its epoch as `%3a`, which the URL escapes.
    let url = format!("{}/pool/main/{}", server.url, name.replace('%', "%25"));

    // One byte more than the lock says: refused as an integrity failure.
    let mut bytes = fs::read(&deb).unwrap();
    bytes.push(0);
    fs::remove_file(&deb).unwrap();
    fs::write(&deb, bytes).unwrap();
    let store = ws.store("s");
    Kiln::new(&store)
        .run(&["build", "--locked", recipe.to_str().unwrap()])
        .fails_with(EXIT_INTEGRITY)
        .stderr_has(&[&url, "but the lock says"]);
    assert!(blobs(&store).is_empty());

    // Gone from the server: an error naming the URL and the status.
    fs::remove_file(&deb).unwrap();
    Kiln::new(&store)
        .run(&["build", "--locked", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["package busybox-static: cannot read", &url, "HTTP 404 Not Found"]);
    assert!(blobs(&store).is_empty());
}

#[test]
fn an_http_release_file_larger_than_any_release_is_refused_unread_past_its_limit() {
    let Some((fixture, ws, repo)) = repository_to_serve() else { return };
    // A signed release is kilobytes; a server that sends more than the limit is refused
    // after the limit, whatever it goes on to send.
    // kiln_deb::repository::RELEASE_LIMIT, as docs/recipes.md gives it.
    let limit: u64 = 16 << 20;
    fs::write(repo.join("dists/kiln/InRelease"), vec![b'A'; limit as usize + 1]).unwrap();
    let server = HttpServer::serve(&repo);
    let recipe = busybox_recipe(&ws, &fixture, &server.url);
    let store = ws.store("s");
    Kiln::new(&store).run(&["lock", recipe.to_str().unwrap()]).fails_with(EXIT_ERROR).stderr_has(
        &[&format!("{}/dists/kiln/InRelease is larger than {limit} bytes", server.url)],
    );
    assert!(!recipe.with_extension("lock").exists());
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));
}

/// Re-signs `repo`'s release with a new key made ten days ago, and writes that key to
/// `valid` as it was then and to `expired` after it was made to expire a week ago (with
/// `gpg --quick-set-expire` at a faked time). Returns the key's fingerprint.
fn sign_with_a_key_that_expires(repo: &Path, valid: &Path, expired: &Path) -> String {
    // Short: the agent's socket path must fit in a sockaddr_un.
    let home = tempfile::Builder::new().prefix("kg").tempdir_in("/tmp").unwrap();
    let release = repo.join("dists/kiln/Release");
    let script = r#"set -eu
chmod 700 "$GNUPGHOME"
now=$(date +%s)
g() { gpg --batch --quiet --pinentry-mode loopback --passphrase '' "$@"; }
g --faked-system-time $((now - 864000)) --quick-gen-key 'kiln expiring <exp@kiln.invalid>' ed25519 sign never
fpr=$(gpg --batch --with-colons --list-keys exp@kiln.invalid | awk -F: '/^fpr/ {print $10; exit}')
g --faked-system-time $((now - 864000)) --yes --clearsign -o "$2" "$1"
gpg --batch --armor --export "$fpr" >"$3"
g --faked-system-time $((now - 691200)) --quick-set-expire "$fpr" 1d
gpg --batch --armor --export "$fpr" >"$4"
gpgconf --kill gpg-agent
echo "$fpr"
"#;
    let out = Command::new("sh")
        .env("GNUPGHOME", home.path())
        .args(["-c", script, "sh"])
        .arg(&release)
        .arg(repo.join("dists/kiln/InRelease"))
        .args([valid, expired])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_key_expired_since_locking_fails_lock_update_but_not_a_locked_build() {
    let Some(fixture) = debian_fixture() else { return };
    if !require_tool("gpg") {
        return;
    }
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let (valid, expired) = (ws.path("valid.asc"), ws.path("expired.asc"));
    let fpr = sign_with_a_key_that_expires(&repo, &valid, &expired);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", r#"packages = ["busybox-static"]"#);
    let key = recipe.with_file_name("key.asc");

    // Locked while the key was valid (its copy from before the expiry).
    fs::copy(&valid, &key).unwrap();
    let store = ws.store("s");
    Kiln::new(&store).run(&["lock", recipe.to_str().unwrap()]).ok();
    let locked = lock_text(&recipe);

    // The key has expired since: resolving again is refused naming it, and the lock stays.
    fs::copy(&expired, &key).unwrap();
    let fresh = ws.store("fresh");
    Kiln::new(&fresh)
        .run(&["lock", "--update", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["the key file cannot vouch for any release", &fpr, "expired at"]);
    assert_eq!(lock_text(&recipe), locked);
    assert!(blobs(&fresh).is_empty(), "{:?}", blobs(&fresh));

    // A build from the lock never resolves: the lock's sha256s vouch for the packages.
    Kiln::new(&store).build(&recipe, &["--locked"]);
}

/// `ci/repo-server.py` serving a folder over HTTP (or HTTPS with a certificate), breaking the
/// requests its faults name and logging every request as `GET PATH`.
struct RepoServer {
    child: Child,
    log: PathBuf,
    url: String,
}

impl RepoServer {
    fn start(repo: &Path, dir: &Path, tls: Option<(&Path, &Path)>, faults: &[&str]) -> RepoServer {
        RepoServer::redirecting(repo, dir, tls, None, faults)
    }

    /// A server whose `redirect` faults send the client to `redirect` (a base URL).
    fn redirecting(
        repo: &Path,
        dir: &Path,
        tls: Option<(&Path, &Path)>,
        redirect: Option<&str>,
        faults: &[&str],
    ) -> RepoServer {
        fs::create_dir_all(dir).unwrap();
        let (log, port_file) = (dir.join("requests.log"), dir.join("server.port"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/repo-server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(repo).args([&log, &port_file]);
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").args([cert, key]);
        }
        if let Some(url) = redirect {
            cmd.arg("--redirect").arg(url);
        }
        let mut child = cmd.args(faults).stdin(Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let port = loop {
            if let Ok(port) = fs::read_to_string(&port_file) {
                break port;
            }
            if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                child.kill().ok();
                panic!("the repository server did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        RepoServer { child, log, url: format!("{scheme}://127.0.0.1:{}", port.trim()) }
    }

    /// How many requests had a path containing `text`.
    fn count(&self, text: &str) -> usize {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains(text)).count()
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("warning: cannot stop the repository server: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("warning: cannot reap the repository server: {e}");
        }
    }
}

#[test]
fn an_http_repository_that_fails_drops_or_cuts_is_asked_again_but_not_after_404_or_403() {
    let Some((fixture, ws, repo)) = repository_to_serve() else { return };
    let faults =
        ["503:InRelease:1", "drop:InRelease:1", "429:Packages.xz:1", "cut:busybox-static:1"];
    let server = RepoServer::start(&repo, &ws.path("server"), None, &faults);
    let recipe = busybox_recipe(&ws, &fixture, &server.url);
    let store = ws.store("s");
    Kiln::new(&store).run(&["lock", recipe.to_str().unwrap()]).ok();
    assert_eq!(server.count("/dists/kiln/InRelease"), 3);
    assert_eq!(server.count("/dists/kiln/main/binary-amd64/Packages.xz"), 2);
    // The package file's first transfer broke halfway: read again from the start.
    let deb = busybox_deb(&repo);
    let name = deb.file_name().unwrap().to_str().unwrap().replace('%', "%25");
    assert_eq!(server.count(&name), 2);

    // A package file the server does not have: asked for once, refused, nothing stored.
    let before = server.count(&name);
    fs::remove_file(&deb).unwrap();
    Kiln::new(&store)
        .run(&["build", "--locked", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["HTTP 404 Not Found"]);
    assert_eq!(server.count(&name), before + 1);
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));

    // Forbidden is as final as not found.
    let server = RepoServer::start(&repo, &ws.path("server2"), None, &["403:InRelease:1"]);
    let recipe = busybox_recipe(&ws, &fixture, &server.url);
    fs::remove_file(recipe.with_extension("lock")).unwrap();
    Kiln::new(&store)
        .run(&["lock", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["HTTP 403 Forbidden"]);
    assert_eq!(server.count("/dists/kiln/InRelease"), 1);
}

#[test]
fn an_http_server_that_stops_sending_fails_after_the_stall_timeout_and_nothing_is_stored() {
    let Some((fixture, ws, repo)) = repository_to_serve() else { return };
    let server = RepoServer::start(&repo, &ws.path("server"), None, &["stall:busybox-static:1"]);
    let recipe = busybox_recipe(&ws, &fixture, &server.url);
    let store = ws.store("s");
    let kiln = Kiln::new(&store).env("KILN_REPOSITORY_TIMEOUT", "1");
    // `kiln lock` reads the package file it locks (for its file list): that answer stalls.
    kiln.run(&["lock", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["package busybox-static: cannot read", "sent nothing for 1 s"]);
    assert!(!recipe.with_extension("lock").exists());
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));
    // The stall was one answer's: the next lock and build get the file.
    kiln.run(&["lock", recipe.to_str().unwrap()]).ok();
    kiln.build(&recipe, &["--locked"]);
}

/// A CA and a certificate for 127.0.0.1 it signed, made by openssl in `dir`: returns the
/// paths of the CA certificate, the server's certificate and its key.
fn self_signed_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=kiln test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    sh(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    sh(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("server.pem"),
            "-days",
            "2",
            "-extfile",
            &p("ext"),
        ],
    );
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[test]
fn an_https_repository_with_its_own_ca_works_with_the_ca_option_and_is_refused_without() {
    let Some(fixture) = debian_fixture() else { return };
    if !require_tool("python3") || !require_tool("openssl") {
        return;
    }
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let (ca, cert, key) = self_signed_ca(&ws.mkdir("tls"));
    let server = RepoServer::start(&repo, &ws.path("server"), Some((&cert, &key)), &[]);
    let recipe = busybox_recipe(&ws, &fixture, &server.url);

    // Without the CA: the certificate is refused, once (no retry changes it).
    let store = ws.store("s");
    Kiln::new(&store)
        .run(&["lock", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&[&format!("GET {}/dists/kiln/InRelease failed", server.url), "certificate"]);
    assert!(!recipe.with_extension("lock").exists());
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));
    // Once: no retry changes a certificate.
    assert_eq!(server.count("CONNECTION"), 1);

    // With `ca` in the repository's table: locked and built over HTTPS.
    fs::copy(&ca, recipe.with_file_name("ca.pem")).unwrap();
    let text = fs::read_to_string(&recipe)
        .unwrap()
        .replace("key = \"key.asc\"\n", "key = \"key.asc\"\nca = \"ca.pem\"\n");
    fs::write(&recipe, text).unwrap();
    let kiln = Kiln::new(&store);
    kiln.run(&["lock", recipe.to_str().unwrap()]).ok();
    kiln.build(&recipe, &["--locked"]);
}

#[test]
fn a_redirect_is_followed_but_never_from_https_to_http() {
    let Some(fixture) = debian_fixture() else { return };
    if !require_tool("python3") || !require_tool("openssl") {
        return;
    }
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let plain = RepoServer::start(&repo, &ws.path("plain"), None, &[]);
    let (ca, cert, key) = self_signed_ca(&ws.mkdir("tls"));
    let moved = ["redirect:InRelease:1"];
    let tls = Some((cert.as_path(), key.as_path()));
    let https = RepoServer::redirecting(&repo, &ws.path("https"), tls, Some(&plain.url), &moved);
    let recipe = busybox_recipe(&ws, &fixture, &https.url);
    fs::copy(&ca, recipe.with_file_name("ca.pem")).unwrap();
    let text = fs::read_to_string(&recipe)
        .unwrap()
        .replace("key = \"key.asc\"\n", "key = \"key.asc\"\nca = \"ca.pem\"\n");
    fs::write(&recipe, text).unwrap();

    // https to http: refused at once (no retry changes it), nothing asked of the http server.
    let store = ws.store("s");
    Kiln::new(&store)
        .run(&["lock", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["redirect from https://", "to http://", "refused"]);
    assert_eq!(https.count("/dists/kiln/InRelease"), 1);
    assert_eq!(plain.count("GET"), 0);
    assert!(!recipe.with_extension("lock").exists());
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));

    // http to http is followed, as apt follows it: every byte is still checked.
    let hop = RepoServer::redirecting(&repo, &ws.path("hop"), None, Some(&plain.url), &moved);
    let recipe = busybox_recipe(&ws, &fixture, &hop.url);
    Kiln::new(&store).run(&["lock", recipe.to_str().unwrap()]).ok();
    assert_eq!(plain.count("/dists/kiln/InRelease"), 1);
}

#[test]
fn a_transfer_that_breaks_and_then_fails_shares_one_budget_of_four_requests() {
    let Some((fixture, ws, repo)) = repository_to_serve() else { return };
    // The first answer breaks midway, the next three are 503: four requests in all, then
    // kiln gives up, rather than counting each kind of failure on its own.
    let faults = ["cut:InRelease:1", "503:InRelease:3"];
    let server = RepoServer::start(&repo, &ws.path("server"), None, &faults);
    let recipe = busybox_recipe(&ws, &fixture, &server.url);
    let store = ws.store("s");
    Kiln::new(&store)
        .run(&["lock", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["gave up after 4 attempts", "HTTP 503"]);
    assert_eq!(server.count("/dists/kiln/InRelease"), 4);
    assert!(!recipe.with_extension("lock").exists());
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));
}

#[test]
fn a_key_file_larger_than_any_keyring_is_refused_unread_past_its_limit() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    let repo = repo_copy(&ws, &fixture);
    let recipe = recipe(&ws, &fixture, &repo, "linux/amd64", r#"packages = ["busybox-static"]"#);
    // A key named by mistake (an image, a package): sparse, so the test writes nothing.
    let key = fs::OpenOptions::new().write(true).open(recipe.with_file_name("key.asc")).unwrap();
    key.set_len(1 << 40).unwrap();
    let store = ws.store("s");
    Kiln::new(&store)
        .run(&["lock", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["key file", "larger than 8388608 bytes"]);
    assert!(!recipe.with_extension("lock").exists());
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));
}

#[test]
fn a_ca_file_larger_than_any_bundle_is_refused_unread_past_its_limit() {
    let Some(fixture) = debian_fixture() else { return };
    let ws = Workspace::new();
    // Nothing listens there: the CA file is refused before any connection.
    let layer = r#"packages = ["busybox-static"]"#;
    let recipe = recipe_at(&ws, &fixture, "https://127.0.0.1:9", "linux/amd64", layer);
    let ca = fs::File::create(recipe.with_file_name("ca.pem")).unwrap();
    ca.set_len(1 << 40).unwrap();
    let text = fs::read_to_string(&recipe)
        .unwrap()
        .replace("key = \"key.asc\"\n", "key = \"key.asc\"\nca = \"ca.pem\"\n");
    fs::write(&recipe, text).unwrap();
    let store = ws.store("s");
    Kiln::new(&store)
        .run(&["lock", recipe.to_str().unwrap()])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["cannot read the CA certificates", "larger than 8388608 bytes"]);
    assert!(!recipe.with_extension("lock").exists());
    assert!(blobs(&store).is_empty(), "{:?}", blobs(&store));
}

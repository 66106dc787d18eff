#![allow(clippy::unwrap_used)]
//! Attestations are the same on every runner: two checkouts of one commit in different
//! folders, built from different working directories with different HOME and TMPDIR, give
//! byte-identical signatures, SBOMs and provenance; no stored blob or exported file names a
//! host path; and `verify --rebuild` finds the recipe again in a third checkout.

mod support;

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{require_tool, sh, Kiln, Workspace, EXIT_INTEGRITY};

/// git with a fixed identity and dates, so commits do not depend on who runs the test.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.invalid"])
        .args(args)
        .env("GIT_AUTHOR_DATE", "2023-11-14T22:13:20Z")
        .env("GIT_COMMITTER_DATE", "2023-11-14T22:13:20Z")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
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

/// The bytes of `file`, plus their gunzipped form when they are gzip (layers, tarballs).
fn readable(file: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(file).unwrap();
    let mut out = vec![];
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        if flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut plain).is_ok() {
            out.push(plain);
        }
    }
    out.push(bytes);
    out
}

#[test]
fn two_checkouts_sign_identical_attestations_naming_no_host_path() {
    if !require_tool("git") {
        return;
    }
    let ws = Workspace::new();
    let origin = ws.mkdir("origin");
    ws.write("origin/images/app/files/hello.sh", "#!/bin/sh\necho hello\n");
    ws.write("origin/images/app/site/index.html", "<p>hi</p>\n");
    ws.write(
        "origin/images/app/app.toml",
        "epoch = 1700000000\n[image]\nname = \"app\"\nversion = \"1\"\n\
         [[layer]]\nname = \"bin\"\nfiles = [{ src = \"files/hello.sh\", dest = \"/bin/hello\", mode = 0o755 }]\n\
         [[layer]]\nname = \"site\"\ntrees = [{ src = \"site\", dest = \"/srv\" }]\n\
         [disk]\nsize = \"16MiB\"\nformats = [\"raw\", \"initramfs\"]\n",
    );
    let keys = ws.mkdir("keys");
    let key_name = keys.join("builder");
    Kiln::new(&ws.store("scratch")).run(&["keygen", "--out", key_name.to_str().unwrap()]).ok();
    let (key, public) =
        (format!("{}.key", key_name.display()), format!("{}.pub", key_name.display()));
    Kiln::new(&ws.store("scratch")).cwd(&origin).run(&["lock", "images/app/app.toml"]).ok();
    git(&origin, &["init", "-q"]);
    git(&origin, &["add", "."]);
    git(&origin, &["commit", "-q", "-m", "app"]);
    let commit = git(&origin, &["rev-parse", "HEAD"]);

    // Two runners: checkouts at different depths, built from different working directories
    // (one naming the recipe relative, one absolute), each with its own HOME and TMPDIR.
    let mut reports = Vec::new();
    let mut needles: Vec<String> = vec![ws.root().to_str().unwrap().to_string()];
    for (runner, checkout, cwd_in) in
        [("a", "pA/x/checkout", ""), ("b", "pB/y/z/checkout", "images")]
    {
        let dir = ws.path(checkout);
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        git(ws.root(), &["clone", "-q", origin.to_str().unwrap(), dir.to_str().unwrap()]);
        let (home, tmp) = (ws.mkdir(&format!("home-{runner}")), ws.mkdir(&format!("tmp-{runner}")));
        let cwd = dir.join(cwd_in);
        let kiln = Kiln::new(&ws.store(&format!("store-{runner}")))
            .cwd(&cwd)
            .env("HOME", home.to_str().unwrap())
            .env("TMPDIR", tmp.to_str().unwrap());
        let recipe = if runner == "a" {
            "images/app/app.toml".to_string()
        } else {
            dir.join("images/app/app.toml").to_str().unwrap().to_string()
        };
        let report = kiln.build(Path::new(&recipe), &["--sign", &key]);
        assert_eq!(report["lock"]["written"], false, "{report}");
        let source = &report["attestations"]["source"];
        assert_eq!(source["recipe"], "images/app/app.toml", "{report}");
        assert_eq!(source["commit"], commit.as_str(), "{report}");
        let out = ws.mkdir(&format!("out-{runner}"));
        for (flag, target) in [
            ("--oci-layout", out.join("layout")),
            ("--oci-archive", out.join("image.tar")),
            ("--disk", out.join("disk")),
        ] {
            kiln.run(&["export", "app:1", flag, target.to_str().unwrap()]).ok();
        }
        kiln.run(&["verify", "app:1", "--key", &public]).ok();
        needles.extend([dir, home, tmp, cwd].iter().map(|p| p.to_str().unwrap().to_string()));
        reports.push(report);
    }
    let (a, b) = (&reports[0], &reports[1]);
    assert_eq!(a["digest"], b["digest"]);
    for part in ["signature", "sboms", "provenance"] {
        assert_eq!(a["attestations"][part], b["attestations"][part], "{part} differs:\n{a}\n{b}");
    }

    // The provenance names the recipe by its place in the checkout and the commit.
    let store_a = ws.path("store-a");
    let prov = a["attestations"]["provenance"].as_str().unwrap();
    let blob = |d: &str| store_a.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let manifest: Value = serde_json::from_slice(&fs::read(blob(prov)).unwrap()).unwrap();
    let envelope: Value = serde_json::from_slice(
        &fs::read(blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let payload =
        sh("sh", &["-c", &format!("echo {} | base64 -d", envelope["payload"].as_str().unwrap())]);
    let statement: Value = serde_json::from_str(&payload).unwrap();
    let definition = &statement["predicate"]["buildDefinition"];
    assert_eq!(definition["externalParameters"]["recipe"]["path"], "images/app/app.toml");
    let deps = definition["resolvedDependencies"].as_array().unwrap();
    assert!(
        deps.iter().any(|d| d["name"] == "source" && d["digest"]["gitCommit"] == commit.as_str()),
        "{statement}"
    );

    // No stored object and no exported file names a host path, the checkouts' folders, HOME
    // or TMPDIR (layers and gzip files are searched decompressed too).
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hostname = hostname.trim();
    if hostname.len() >= 8 {
        needles.push(hostname.to_string());
    }
    let mut scanned = 0;
    for root in ["store-a", "store-b", "out-a", "out-b"] {
        for file in files(&ws.path(root)) {
            for bytes in readable(&file) {
                for needle in &needles {
                    let n = needle.as_bytes();
                    assert!(
                        !bytes.windows(n.len()).any(|w| w == n),
                        "{} names {needle}",
                        file.display()
                    );
                }
            }
            scanned += 1;
        }
    }
    assert!(scanned > 40, "only {scanned} files scanned");

    // A third checkout rebuilds it: by default the git checkout of the working directory,
    // or one named with --source-root from anywhere.
    let third = ws.path("pC/third");
    fs::create_dir_all(third.parent().unwrap()).unwrap();
    git(ws.root(), &["clone", "-q", origin.to_str().unwrap(), third.to_str().unwrap()]);
    let store = ws.path("store-a");
    let run = Kiln::new(&store)
        .cwd(&third.join("images/app/files"))
        .run(&["--json", "verify", "app:1", "--key", &public, "--rebuild"])
        .ok();
    assert_eq!(run.json()["rebuild"]["reproduced"], true, "{run}");
    let elsewhere = ws.mkdir("elsewhere");
    let lost = Kiln::new(&store).cwd(&elsewhere);
    let run =
        lost.run(&["verify", "app:1", "--key", &public, "--rebuild"]).fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains("--source-root"), "{run}");
    let given = ["verify", "app:1", "--key", &public, "--rebuild", "--source-root"];
    let run = lost.run(&[&given[..], &[third.to_str().unwrap()]].concat()).ok();
    assert!(run.stdout.contains("reproduced: identical digest"), "{run}");

    // The checkout's recipe and lock are checked before anything is built.
    ws.write("pC/third/images/app/app.lock", "# edited\n");
    let run =
        lost.run(&[&given[..], &[third.to_str().unwrap()]].concat()).fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains("app.lock in the checkout is sha256:"), "{run}");
    git(&third, &["checkout", "-q", "--", "."]);
    fs::write(third.join("images/app/app.toml"), "epoch = 1\n").unwrap();
    let run =
        lost.run(&[&given[..], &[third.to_str().unwrap()]].concat()).fails_with(EXIT_INTEGRITY);
    assert!(run.stdout.contains("app.toml in the checkout is sha256:"), "{run}");
}

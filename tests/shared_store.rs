//! A store shared by many CI runners, driven through the real `kiln` binary: one test body per
//! behaviour, run on a `file://` folder and on real servers on 127.0.0.1: SeaweedFS (S3) and
//! Azurite (Azure Blob Storage). GCS has its own tests in tests/gcs.rs: its emulator answers
//! reads but not the uploads kiln makes.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use object_store::path::Path as Key;
use object_store::ObjectStore;
use serde_json::Value;
use tempfile::TempDir;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const EXIT_INTEGRITY: i32 = 4;

/// Where the store under test lives.
enum Backend {
    Folder(PathBuf),
    Cloud(&'static kiln_test_servers::Server),
}

/// One store plus scratch space; `kiln` runs get the store and an isolated environment.
struct Shared {
    backend: Backend,
    location: String,
    tmp: TempDir,
}

impl Shared {
    fn folder() -> Shared {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let location = format!("file://{}", root.display());
        Shared { backend: Backend::Folder(root), location, tmp }
    }

    fn cloud(server: Option<&'static kiln_test_servers::Server>) -> Option<Shared> {
        let server = server?;
        let location = server.fresh_location();
        Some(Shared {
            backend: Backend::Cloud(server),
            location,
            tmp: tempfile::tempdir().unwrap(),
        })
    }

    /// The keys of the multipart uploads in progress under `location` (S3 only).
    fn multipart_uploads(&self, location: &str) -> Option<Vec<String>> {
        let Backend::Cloud(server) = &self.backend else { return None };
        server.multipart_uploads(location)
    }

    /// Another empty store on the same backend.
    fn sibling(&self, name: &str) -> String {
        match &self.backend {
            Backend::Folder(_) => format!("file://{}", self.tmp.path().join(name).display()),
            Backend::Cloud(server) => server.fresh_location(),
        }
    }

    /// `kiln` with `args`, the store, and a private TMPDIR and cache for `runner`.
    fn command(&self, runner: &str, args: &[&str]) -> Command {
        let home = self.tmp.path().join(format!("runner-{runner}"));
        std::fs::create_dir_all(home.join("tmp")).unwrap();
        let mut cmd = Command::new(KILN);
        cmd.args(args)
            .env("KILN_STORE", &self.location)
            .env("TMPDIR", home.join("tmp"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("HOME", &home)
            .env_remove("SOURCE_DATE_EPOCH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (var, _) in std::env::vars() {
            if ["AWS_", "AZURE_", "GOOGLE_"].iter().any(|p| var.starts_with(p)) {
                cmd.env_remove(var);
            }
        }
        if let Backend::Cloud(server) = &self.backend {
            cmd.envs(server.env());
        }
        cmd
    }

    fn run(&self, runner: &str, args: &[&str]) -> Output {
        self.command(runner, args).output().unwrap()
    }

    /// Runs and expects success, returning the JSON it printed.
    fn json(&self, runner: &str, args: &[&str]) -> Value {
        let out = self.run(runner, args);
        assert!(out.status.success(), "kiln {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `kiln store check --json` on `location`: the exit code and the report.
    fn check(&self, location: &str) -> (Option<i32>, Value) {
        let out = self.run("checker", &["--store", location, "store", "check", "--json"]);
        (out.status.code(), serde_json::from_slice(&out.stdout).unwrap())
    }

    fn assert_clean(&self, location: &str) {
        let (code, report) = self.check(location);
        assert_eq!(code, Some(0), "{report}");
        assert_eq!(report["problems"], Value::Array(vec![]), "{report}");
    }

    /// Overwrites the object at `key` behind kiln's back.
    fn overwrite(&self, key: &str, bytes: Vec<u8>) {
        match &self.backend {
            Backend::Folder(root) => std::fs::write(root.join(key), bytes).unwrap(),
            Backend::Cloud(server) => {
                let raw = server.raw(&self.location);
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(raw.put(&Key::from(key), bytes.into())).unwrap();
            }
        }
    }
}

/// Runs `body` on a folder store and, when their servers are available, on S3 and Azure.
fn on_every_backend(body: impl Fn(Shared)) {
    body(Shared::folder());
    for server in [kiln_test_servers::s3(), kiln_test_servers::azure()] {
        if let Some(shared) = Shared::cloud(server) {
            body(shared);
        }
    }
}

/// A checkout of a recipe in its own folder: `hello` (small) or `big` (one layer of
/// incompressible bytes, large enough to go up as a staged multipart upload).
fn checkout(dir: &Path, big: bool) -> PathBuf {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let (name, content) = if big {
        // Incompressible, so the gzip layer stays ~12 MiB.
        ("big", support::noise(12 * 1024 * 1024, 0x9e37_79b9_7f4a_7c15))
    } else {
        ("hello", b"#!/bin/sh\necho hello\n".to_vec())
    };
    std::fs::write(dir.join("files/payload"), content).unwrap();
    let recipe = dir.join(format!("{name}.toml"));
    std::fs::write(
        &recipe,
        format!(
            "epoch = 1700000000\n\n[image]\nname = \"{name}\"\nversion = \"1.0.0\"\n\
             platforms = [\"linux/amd64\"]\n\n[[layer]]\nname = \"payload\"\n\
             files = [{{ src = \"files/payload\", dest = \"/payload\" }}]\n\n[[layer]]\n\
             name = \"motd\"\ninline = [{{ dest = \"/etc/motd\", content = \"hi\\n\" }}]\n"
        ),
    )
    .unwrap();
    recipe
}

#[test]
fn second_runner_uploads_nothing_and_builds_nothing() {
    on_every_backend(|shared| {
        let a = checkout(&shared.tmp.path().join("checkout-a"), false);
        let b = checkout(&shared.tmp.path().join("checkout-b"), false);
        let first = shared.json("a", &["build", a.to_str().unwrap(), "--json"]);
        assert_eq!(first["layers"]["built"], 2, "{first}");
        assert_eq!(first["blobs"]["present"], 0, "{first}");
        let second = shared.json("b", &["build", b.to_str().unwrap(), "--json"]);
        assert_eq!(second["layers"], serde_json::json!({"built": 0, "reused": 2}), "{second}");
        assert_eq!(second["blobs"]["uploaded"], 0, "{second}");
        assert_eq!(second["digest"], first["digest"]);
        shared.assert_clean(&shared.location);
    });
}

#[test]
fn concurrent_builds_both_succeed_and_the_store_checks_clean() {
    on_every_backend(|shared| {
        let recipes: Vec<PathBuf> = ["a", "b"]
            .iter()
            .map(|r| checkout(&shared.tmp.path().join(format!("checkout-{r}")), true))
            .collect();
        let children: Vec<Child> = ["a", "b"]
            .iter()
            .zip(&recipes)
            .map(|(runner, recipe)| {
                shared
                    .command(runner, &["build", recipe.to_str().unwrap(), "--json"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        let digests: Vec<Value> = children
            .into_iter()
            .map(|child| {
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                serde_json::from_slice::<Value>(&out.stdout).unwrap()["digest"].clone()
            })
            .collect();
        assert_eq!(digests[0], digests[1]);
        shared.assert_clean(&shared.location);
    });
}

#[test]
fn corrupt_blob_is_reported_by_check_and_refused_on_read() {
    on_every_backend(|shared| {
        let recipe = checkout(&shared.tmp.path().join("checkout"), false);
        let built = shared.json("a", &["build", recipe.to_str().unwrap(), "--json"]);
        let inspect = shared.json("a", &["inspect", "hello:1.0.0", "--json"]);
        let layer = find_layer_digest(&inspect);
        let key = format!("blobs/sha256/{}", layer.trim_start_matches("sha256:"));
        shared.overwrite(&key, b"not the layer".to_vec());

        let (code, report) = shared.check(&shared.location);
        assert_eq!(code, Some(EXIT_INTEGRITY), "{report}");
        // The blob is corrupt; the layer's cache entry, refused for that blob alone, is not
        // reported again. Nothing else is wrong.
        let problems = report["problems"].as_array().unwrap();
        let kinds: Vec<&str> = problems.iter().map(|p| p["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["corruptBlob"], "{report}");
        assert_eq!(problems[0]["key"], key);
        let human = shared.run("a", &["store", "check"]);
        assert_eq!(human.status.code(), Some(EXIT_INTEGRITY));
        assert!(String::from_utf8_lossy(&human.stderr).contains(&key));

        let out = shared.tmp.path().join("layout");
        let export =
            shared.run("a", &["export", "hello:1.0.0", "--oci-layout", out.to_str().unwrap()]);
        assert_eq!(export.status.code(), Some(EXIT_INTEGRITY));
        assert!(String::from_utf8_lossy(&export.stderr).contains(&key));
        // A copy refuses it too, and the target gets no tag.
        let target = shared.sibling("copy-target");
        let copy =
            shared.run("a", &["copy", "hello:1.0.0", "--from", &shared.location, "--to", &target]);
        assert_eq!(copy.status.code(), Some(EXIT_INTEGRITY));
        assert!(built["digest"].is_string());
    });
}

/// The first layer digest in `kiln inspect --json` output, wherever it is nested.
fn find_layer_digest(value: &Value) -> String {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                let is_layer = map
                    .get("mediaType")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m.contains("image.layer"));
                if let (true, Some(Value::String(d))) = (is_layer, map.get("digest")) {
                    found.push(d.clone());
                }
                map.values().for_each(|v| walk(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(value, &mut found);
    found.into_iter().next().unwrap_or_else(|| panic!("no layer in {value}"))
}

#[test]
fn gc_keeps_what_refs_need_and_in_flight_uploads() {
    on_every_backend(|shared| {
        let recipe = checkout(&shared.tmp.path().join("checkout"), false);
        shared.json("a", &["build", recipe.to_str().unwrap(), "--json"]);
        let young = shared.json("a", &["gc", "--grace", "24h", "--json"]);
        assert_eq!(young["blobsDeleted"], 0, "{young}");
        assert_eq!(young["reachable"], 5, "{young}");
        let now = shared.json("a", &["gc", "--grace", "0s", "--json"]);
        assert_eq!(now["blobsDeleted"], 0, "{now}");
        shared.assert_clean(&shared.location);
        let rebuilt = shared.json("b", &["build", recipe.to_str().unwrap(), "--json"]);
        assert_eq!(rebuilt["blobs"]["uploaded"], 0, "{rebuilt}");
    });
}

#[test]
fn check_reports_an_s3_upload_no_marker_names_and_gc_aborts_it_after_its_grace() {
    // Only S3's server lists uploads in progress; elsewhere a marker is all there is.
    let Some(shared) = Shared::cloud(kiln_test_servers::s3()) else { return };
    let Backend::Cloud(server) = &shared.backend else { unreachable!() };
    let location = &shared.location;
    // What a writer killed just after the server created its upload leaves, and what one
    // killed once it had recorded its upload leaves.
    let unmarked = format!("uploads/{}-1-2-3", "1".repeat(64));
    let marked = format!("uploads/{}-4-5-6", "2".repeat(64));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let unmarked_id = rt.block_on(server.start_multipart(location, &unmarked));
    let marked_id = rt.block_on(server.start_multipart(location, &marked));
    let marker = format!("{marked}.multipart");
    let record = serde_json::json!({"key": marked, "uploadId": marked_id});
    shared.overwrite(&marker, serde_json::to_vec(&record).unwrap());

    let (code, report) = shared.check(location);
    assert_eq!(code, Some(EXIT_INTEGRITY), "{report}");
    let problems = report["problems"].as_array().unwrap();
    let of_kind = |kind: &str| problems.iter().filter(|p| p["kind"] == kind).collect::<Vec<_>>();
    let unrecorded = of_kind("unrecordedUpload");
    let recorded = of_kind("unfinishedUpload");
    assert_eq!((problems.len(), unrecorded.len(), recorded.len()), (2, 1, 1), "{report}");
    assert_eq!(unrecorded[0]["key"], unmarked.as_str(), "{report}");
    assert_eq!(unrecorded[0]["uploadId"], unmarked_id.as_str(), "{report}");
    assert!(unrecorded[0]["ageSeconds"].is_u64(), "{report}");
    assert_eq!(recorded[0]["marker"], marker.as_str(), "{report}");
    assert_eq!(recorded[0]["uploadId"], marked_id.as_str(), "{report}");

    // In words: each upload once, saying what settles it.
    let human = shared.run("checker", &["--store", location, "store", "check"]);
    assert_eq!(human.status.code(), Some(EXIT_INTEGRITY));
    let stderr = String::from_utf8_lossy(&human.stderr);
    let about = |id: &str| stderr.lines().filter(|l| l.contains(id)).collect::<Vec<_>>();
    let lines = about(&unmarked_id);
    assert_eq!(lines.len(), 1, "{stderr}");
    for words in ["problem: ", unmarked.as_str(), "no marker", "`kiln gc` aborts it"] {
        assert!(lines[0].contains(words), "{words:?} in {stderr}");
    }
    assert_eq!(about(&marked_id).len(), 1, "{stderr}");

    // A repair leaves both to gc, and says so.
    let out = shared.run("checker", &["--store", location, "store", "check", "--repair", "--json"]);
    assert_eq!(out.status.code(), Some(EXIT_INTEGRITY));
    let repaired: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The same uploads; their age may have grown meanwhile.
    let uploads = |problems: &Value| {
        let problems = problems.as_array().unwrap().iter();
        problems.map(|p| (p["kind"].clone(), p["uploadId"].clone())).collect::<Vec<_>>()
    };
    assert_eq!(uploads(&repaired["repair"]["left"]), uploads(&report["problems"]), "{repaired}");
    assert_eq!(server.multipart_uploads(location).unwrap().len(), 2);

    // gc aborts neither within its grace, then both, and the store checks clean.
    let young = shared.json("gc", &["gc", "--grace", "1h", "--json"]);
    assert_eq!(young["multipartUploadsAborted"], 0, "{young}");
    assert_eq!(server.multipart_uploads(location).unwrap().len(), 2);
    let now = shared.json("gc", &["gc", "--grace", "0s", "--json"]);
    assert_eq!(now["multipartUploadsAborted"], 2, "{now}");
    assert_eq!(server.multipart_uploads(location).unwrap(), Vec::<String>::new());
    shared.assert_clean(location);
}

#[test]
fn copy_through_a_local_folder_for_an_air_gapped_transfer() {
    on_every_backend(|shared| {
        let recipe = checkout(&shared.tmp.path().join("checkout"), true);
        let built = shared.json("a", &["build", recipe.to_str().unwrap(), "--json"]);
        let usb = format!("file://{}", shared.tmp.path().join("usb").display());
        let target = shared.sibling("other-site");
        let out = shared
            .json("a", &["copy", "big:1.0.0", "--from", &shared.location, "--to", &usb, "--json"]);
        assert_eq!((out["copied"].clone(), out["present"].clone()), (5.into(), 0.into()), "{out}");
        let out =
            shared.json("a", &["copy", "big:1.0.0", "--from", &usb, "--to", &target, "--json"]);
        assert_eq!(out["copied"], 5, "{out}");
        let again =
            shared.json("a", &["copy", "big:1.0.0", "--from", &usb, "--to", &target, "--json"]);
        assert_eq!((again["copied"].clone(), again["present"].clone()), (0.into(), 5.into()));
        shared.assert_clean(&target);
        let images = shared.run("a", &["--store", &target, "images", "--json"]);
        assert!(String::from_utf8_lossy(&images.stdout).contains(built["digest"].as_str().unwrap()));
    });
}

/// A small seeded generator, so the kill points are the same on every run.
struct Points(u64);
impl Points {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound.max(1)
    }
}

/// Starts `cmd`, kills it with SIGKILL after `delay` (if still running), and reaps it;
/// returns whether the kill interrupted it.
fn kill_after(mut cmd: Command, delay: Duration) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(delay);
    // SIGKILL; an error only means the process already exited.
    let _ = child.kill();
    child.wait().unwrap().signal().is_some()
}

#[test]
fn sigkill_at_twenty_points_leaves_no_bad_blob_and_the_rerun_completes() {
    on_every_backend(|shared| {
        let recipe = checkout(&shared.tmp.path().join("checkout"), true);
        let recipe = recipe.to_str().unwrap();
        // Kill points are spread over one uninterrupted cold build and copy, timed here: the
        // timing only chooses where to kill, it is never asserted on.
        let source = shared.sibling("source");
        let start = Instant::now();
        let timed = shared.run("t", &["--store", &source, "build", recipe]);
        assert!(timed.status.success(), "{}", String::from_utf8_lossy(&timed.stderr));
        let build_ms = start.elapsed().as_millis() as u64;
        let start = Instant::now();
        let timed = shared
            .run("t", &["copy", "big:1.0.0", "--from", &source, "--to", &shared.sibling("t2")]);
        assert!(timed.status.success(), "{}", String::from_utf8_lossy(&timed.stderr));
        let copy_ms = start.elapsed().as_millis() as u64;

        // Every kill hits a cold store, as a runner dying on its first push would.
        let mut points = Points(20261126);
        let mut killed = Vec::new();
        let mut interrupted = 0;
        for i in 0..10 {
            let runner = format!("k{i}");
            let store = shared.sibling(&format!("killed-build-{i}"));
            let build = shared.command(&runner, &["--store", &store, "build", recipe, "--rehash"]);
            interrupted +=
                usize::from(kill_after(build, Duration::from_millis(points.next_below(build_ms))));
            killed.push(store);
            let target = shared.sibling(&format!("killed-copy-{i}"));
            let copy =
                shared.command(&runner, &["copy", "big:1.0.0", "--from", &source, "--to", &target]);
            interrupted +=
                usize::from(kill_after(copy, Duration::from_millis(points.next_below(copy_ms))));
            killed.push(target);
        }
        eprintln!("{interrupted} of 20 runs were interrupted by SIGKILL on {}", shared.location);
        // Whatever was left behind, no blob holds anything but the content its key names, and
        // no tag points at an incomplete image; an upload cut short is reported as such.
        let mut recorded = 0;
        for location in &killed {
            // A run killed before it opened its folder store left nothing to check.
            if location.strip_prefix("file://").is_some_and(|p| !Path::new(p).exists()) {
                continue;
            }
            let (_, report) = shared.check(location);
            let problems = report["problems"].as_array().unwrap();
            let unfinished = problems
                .iter()
                .filter(|p| p["kind"] == "unfinishedUpload" || p["kind"] == "unrecordedUpload")
                .count();
            // Markers and uploads in progress need not match: a kill between creating an
            // upload and recording it leaves an upload no marker names (reported on S3, whose
            // server lists it), and one between completing or aborting an upload and deleting
            // its marker leaves a marker whose upload is gone. gc clears both (below).
            assert_eq!(unfinished, problems.len(), "after the kill, {location}: {report}");
            recorded += unfinished;
        }
        eprintln!("{recorded} recorded multipart uploads were left by the kills");
        // A gc killed partway through its own sweep leaves nothing the next one cannot finish.
        // Its kill points are spread over twice a dry run (which marks but deletes nothing).
        let start = Instant::now();
        shared.json("t", &["--store", &killed[0], "gc", "--grace", "0s", "--dry-run", "--json"]);
        let gc_ms = 2 * start.elapsed().as_millis() as u64;
        let mut gcs_interrupted = 0;
        // gc clears what the kills left: staging objects, part files a folder store's listing
        // hides, multipart uploads a bucket keeps unseen, leases of the dead processes and
        // their scratch folders. Nothing unreferenced remains.
        for (i, location) in killed.iter().enumerate() {
            let runner = format!("k{}", i / 2);
            let gc = shared.command(&runner, &["--store", location, "gc", "--grace", "0s"]);
            gcs_interrupted +=
                usize::from(kill_after(gc, Duration::from_millis(points.next_below(gc_ms))));
            shared.json(&runner, &["--store", location, "gc", "--grace", "0s", "--json"]);
            if let Some(path) = location.strip_prefix("file://") {
                let uploads = Path::new(path).join("uploads");
                let left: Vec<_> = std::fs::read_dir(&uploads)
                    .map(|d| d.map(|e| e.unwrap().path()).collect())
                    .unwrap_or_default();
                assert!(left.is_empty(), "{left:?}");
            }
            if let Some(uploads) = shared.multipart_uploads(location) {
                // Including those no marker names: a kill between the server creating an
                // upload and kiln recording it, or during a publishing copy.
                assert!(uploads.is_empty(), "{location}: {uploads:?}");
            }
            let scratch = shared.tmp.path().join(format!("runner-{runner}/tmp/kiln-scratch"));
            let left: Vec<_> = std::fs::read_dir(&scratch)
                .map(|d| d.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "scratch left by a killed run: {left:?}");
            let again = shared.json(
                &runner,
                &["--store", location, "gc", "--grace", "0s", "--dry-run", "--json"],
            );
            for count in [
                "blobsDeleted",
                "uploadsDeleted",
                "multipartUploadsAborted",
                "cacheEntriesDeleted",
                "leaseRecordsDeleted",
                "leasesLive",
            ] {
                assert_eq!(again[count], 0, "{location}: {again}");
            }
            shared.assert_clean(location);
        }
        eprintln!("{gcs_interrupted} of {} gc runs were interrupted by SIGKILL", killed.len());
        // Rerunning on the interrupted stores completes.
        for pair in killed.chunks(2).take(3) {
            let rebuilt = shared.json("final", &["--store", &pair[0], "build", recipe, "--json"]);
            assert!(rebuilt["digest"].is_string());
            shared.json(
                "final",
                &["copy", "big:1.0.0", "--from", &source, "--to", &pair[1], "--json"],
            );
            shared.assert_clean(&pair[0]);
            shared.assert_clean(&pair[1]);
        }
    });
}

#[test]
fn signatures_and_attestations_travel_with_copy_and_survive_gc() {
    on_every_backend(|shared| {
        let recipe = checkout(&shared.tmp.path().join("checkout"), false);
        let key = shared.tmp.path().join("signer");
        shared.json("a", &["keygen", "--out", key.to_str().unwrap(), "--json"]);
        let signing_key = format!("{}.key", key.display());
        let public_key = format!("{}.pub", key.display());
        shared.json("a", &["build", recipe.to_str().unwrap(), "--sign", &signing_key, "--json"]);

        // Nothing a signature, SBOM or provenance needs is collected.
        let gc = shared.json("a", &["gc", "--grace", "0s", "--json"]);
        assert_eq!(gc["blobsDeleted"], 0, "{gc}");

        let target = shared.sibling("promoted");
        let copy = shared.json(
            "a",
            &["copy", "hello:1.0.0", "--from", &shared.location, "--to", &target, "--json"],
        );
        assert_eq!(copy["referrers"], 3, "{copy}");
        assert_eq!(copy["copied"], gc["reachable"], "{copy} {gc}");
        let verify =
            shared.run("a", &["--store", &target, "verify", "--key", &public_key, "hello:1.0.0"]);
        assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
        shared.assert_clean(&target);
    });
}

impl Shared {
    /// The object at `key`, read behind kiln's back.
    fn read(&self, key: &str) -> Vec<u8> {
        match &self.backend {
            Backend::Folder(root) => std::fs::read(root.join(key)).unwrap(),
            Backend::Cloud(server) => {
                let raw = server.raw(&self.location);
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async { raw.get(&Key::from(key)).await.unwrap().bytes().await })
                    .unwrap()
                    .to_vec()
            }
        }
    }

    /// A fresh key pair `NAME.key`, `NAME.pub` in the scratch space.
    fn keygen(&self, name: &str) -> (String, String) {
        let key = self.tmp.path().join(name);
        self.json("keys", &["keygen", "--out", key.to_str().unwrap(), "--json"]);
        (format!("{}.key", key.display()), format!("{}.pub", key.display()))
    }
}

/// Every layer cache entry with its key, ordered by the blob it names.
fn layer_entries(shared: &Shared) -> Vec<(String, Value)> {
    let mut entries: Vec<(String, Value)> = cache_keys(shared)
        .into_iter()
        .map(|key| {
            let entry: Value = serde_json::from_slice(&shared.read(&key)).unwrap();
            (key, entry)
        })
        .collect();
    entries.sort_by_key(|(_, e)| e["record"]["output"]["digest"].as_str().unwrap().to_string());
    entries
}

fn cache_keys(shared: &Shared) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw: std::sync::Arc<dyn ObjectStore> = match &shared.backend {
        Backend::Folder(root) => std::sync::Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(root).unwrap(),
        ),
        Backend::Cloud(server) => server.raw(&shared.location),
    };
    let prefix = Key::from("cache/layer");
    let metas: Vec<_> = rt.block_on(futures_collect(raw.list(Some(&prefix)))).into_iter().collect();
    let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
    keys.sort();
    keys
}

async fn futures_collect(
    stream: futures::stream::BoxStream<'_, object_store::Result<object_store::ObjectMeta>>,
) -> Vec<object_store::ObjectMeta> {
    use futures::TryStreamExt;
    stream.try_collect().await.unwrap()
}

#[test]
fn a_poisoned_cache_never_reaches_a_trusted_build() {
    on_every_backend(|shared| {
        let recipes = support::copy_recipes(shared.tmp.path());
        let golden = recipes.join("golden.toml");
        let golden = golden.to_str().unwrap();
        let (key, public) = shared.keygen("runner");
        let (other_key, _) = shared.keygen("stranger");
        let clean = shared.json("a", &["build", golden, "--sign", &key, "--json"]);
        let trusted = ["--sign", &key, "--trust-cache", &public, "--json"];
        let build_trusted = |runner: &str| {
            let mut args = vec!["build", golden];
            args.extend(trusted);
            shared.json(runner, &args)
        };
        let reused = build_trusted("b");
        assert_eq!(reused["layers"], serde_json::json!({"built": 0, "reused": 2}), "{reused}");
        assert_eq!(reused["digest"], clean["digest"]);
        let key_id = reused["cache"]["layers"][0]["vouchedBy"].clone();
        assert!(key_id.is_string(), "{reused}");

        // The attack of the issue: swap the two entries' bytes. Each now names the other key.
        let entries = layer_entries(&shared);
        assert_eq!(entries.len(), 2);
        let (a, b) = (shared.read(&entries[0].0), shared.read(&entries[1].0));
        shared.overwrite(&entries[0].0, b);
        shared.overwrite(&entries[1].0, a);
        let swapped = build_trusted("c");
        assert_eq!(swapped["digest"], clean["digest"], "{swapped}");
        assert_eq!(swapped["layers"]["built"], 2, "{swapped}");

        // A careful attacker rewrites the records to match their keys, unsigned or signed
        // by a key that is not trusted, or edits the size or diff_id of a signed entry.
        let entries = layer_entries(&shared);
        let forge = |edit: &dyn Fn(&mut Value, &Value)| {
            for (i, (path, entry)) in entries.iter().enumerate() {
                let mut forged = entry.clone();
                edit(&mut forged, &entries[1 - i].1);
                shared.overwrite(path, serde_json::to_vec(&forged).unwrap());
            }
            let rebuilt = build_trusted("d");
            assert_eq!(rebuilt["digest"], clean["digest"], "{rebuilt}");
            assert_eq!(rebuilt["layers"]["built"], 2, "{rebuilt}");
            let ignored = rebuilt["cache"]["ignored"].as_array().unwrap().len();
            assert_eq!(ignored, 2, "{rebuilt}");
        };
        forge(&|e, other| {
            e["record"]["output"] = other["record"]["output"].clone();
            e["record"]["diffId"] = other["record"]["diffId"].clone();
            e["signatures"] = serde_json::json!([]);
        });
        forge(&|e, _| {
            let size = e["record"]["output"]["size"].as_u64().unwrap();
            e["record"]["output"]["size"] = (size + 1).into();
        });
        forge(&|e, other| e["record"]["diffId"] = other["record"]["diffId"].clone());
        // Entries written by a runner with another key are rebuilt, not used.
        for (path, _) in &entries {
            shared.overwrite(path, b"{}".to_vec());
        }
        let stranger = shared.json("e", &["build", golden, "--cache-key", &other_key, "--json"]);
        assert_eq!(stranger["layers"]["built"], 2, "{stranger}");
        for (_, entry) in layer_entries(&shared) {
            assert_ne!(entry["signatures"][0]["keyid"], key_id, "{entry}");
        }
        let rebuilt = build_trusted("f");
        assert_eq!(rebuilt["layers"]["built"], 2, "{rebuilt}");
        assert_eq!(rebuilt["digest"], clean["digest"]);
        shared.assert_clean(&shared.location);
    });
}

/// A recipe of `layers` small layers of distinct noise, in `dir`.
fn layered(dir: &Path, layers: usize) -> PathBuf {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let mut recipe = String::from(
        "epoch = 1700000000\n\n[image]\nname = \"layered\"\nversion = \"1.0.0\"\n\
         platforms = [\"linux/amd64\"]\n",
    );
    for i in 0..layers {
        std::fs::write(dir.join(format!("files/{i}")), support::noise(64 * 1024, i as u64 + 7))
            .unwrap();
        recipe.push_str(&format!(
            "\n[[layer]]\nname = \"l{i}\"\nfiles = [{{ src = \"files/{i}\", dest = \"/{i}\" }}]\n"
        ));
    }
    let path = dir.join("layered.toml");
    std::fs::write(&path, recipe).unwrap();
    path
}

#[test]
fn gc_racing_a_build_never_takes_what_the_build_references() {
    on_every_backend(|shared| {
        let recipe = layered(&shared.tmp.path().join("checkout"), 5);
        let recipe = recipe.to_str().unwrap();
        for trial in 0..30 {
            let store = shared.sibling(&format!("race-{trial}"));
            let mut build = shared
                .command("builder", &["--store", &store, "build", recipe, "--rehash", "--json"])
                .spawn()
                .unwrap();
            // Collect with no grace, over and over, for as long as the build runs.
            let mut collections = 0;
            let status = loop {
                let gc = shared.run("collector", &["--store", &store, "gc", "--grace", "0s"]);
                assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
                collections += 1;
                if let Some(status) = build.try_wait().unwrap() {
                    break status;
                }
            };
            let out = build.wait_with_output().unwrap();
            assert!(status.success(), "trial {trial}: {}", String::from_utf8_lossy(&out.stderr));
            assert!(collections > 0);
            // The tag is set to a complete image.
            shared.assert_clean(&store);
        }
    });
}

/// Whether any lease record under the folder store `root` names `digest`.
fn leased(root: &Path, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    let Ok(leases) = std::fs::read_dir(root.join("leases")) else { return false };
    leases.flatten().any(|lease| {
        std::fs::read_dir(lease.path()).into_iter().flatten().flatten().any(|record| {
            std::fs::read_to_string(record.path()).is_ok_and(|text| text.contains(hex))
        })
    })
}

#[test]
fn a_build_looks_again_after_a_gc_sweep_it_may_have_raced_and_remakes_what_went() {
    // A gc that read the leases before the build leased an old layer may delete that layer
    // after the build found it present. Here a sweep record stands for such a gc in
    // progress, and the layer is deleted while the build waits for the sweep to end. A gc
    // deletes only what no tag references, so the tag of the first build is removed: a build
    // whose tag already points at its image has nothing to confirm.
    let shared = Shared::folder();
    let Backend::Folder(root) = &shared.backend else { unreachable!() };
    let recipe = layered(&shared.tmp.path().join("checkout"), 2);
    let recipe = recipe.to_str().unwrap();
    let first = shared.json("a", &["build", recipe, "--json"]);
    let index = first["digest"].as_str().unwrap().to_string();
    let index_json: Value = serde_json::from_slice(
        &shared.read(&format!("blobs/sha256/{}", index.trim_start_matches("sha256:"))),
    )
    .unwrap();
    let manifest = index_json["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &shared.read(&format!("blobs/sha256/{}", manifest.trim_start_matches("sha256:"))),
    )
    .unwrap();
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let layer = root.join("blobs/sha256").join(layer.trim_start_matches("sha256:"));
    std::fs::remove_file(root.join("refs/layered/1.0.0")).unwrap();

    let expires =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let sweep = root.join("sweeps/a-gc-in-progress");
    std::fs::create_dir_all(sweep.parent().unwrap()).unwrap();
    std::fs::write(&sweep, format!(r#"{{"expires":{expires}}}"#)).unwrap();
    let mut build = shared.command("b", &["build", recipe, "--json"]).spawn().unwrap();
    // The index is leased after every layer was found present, before the build looks again.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !leased(root, &index) {
        if Instant::now() > deadline || build.try_wait().unwrap().is_some() {
            build.kill().unwrap();
            panic!("the build never leased its index: {:?}", build.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&layer).unwrap();
    std::fs::remove_file(&sweep).unwrap();

    let out = build.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("deleted blobs it reused"), "{stderr}");
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["layers"], serde_json::json!({"built": 1, "reused": 1}), "{second}");
    assert!(layer.exists());
    shared.assert_clean(&shared.location);
}

/// `ci/counting-proxy.py` (or `ci/fault-proxy.py`, which also breaks some requests) in front
/// of an S3 server: the requests kiln sends through it.
struct CountingProxy {
    child: Child,
    log: PathBuf,
    endpoint: String,
}

impl CountingProxy {
    fn start(upstream: &str, dir: &Path) -> CountingProxy {
        CountingProxy::with("ci/counting-proxy.py", upstream, dir, &[])
    }

    /// `ci/fault-proxy.py` with `faults` (see that script).
    fn faulty(upstream: &str, dir: &Path, faults: &[&str]) -> CountingProxy {
        CountingProxy::with("ci/fault-proxy.py", upstream, dir, faults)
    }

    fn with(script: &str, upstream: &str, dir: &Path, args: &[&str]) -> CountingProxy {
        let (log, port_file) = (dir.join("requests.log"), dir.join("proxy.port"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let mut child = Command::new("python3")
            .arg(script)
            .args([Path::new(upstream), &log, &port_file])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port;
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                child.kill().ok();
                panic!("the counting proxy did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        CountingProxy { child, log, endpoint: format!("http://127.0.0.1:{}", port.trim()) }
    }

    /// The requests logged since the last call, as `METHOD PATH` lines.
    fn take(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        std::fs::write(&self.log, "").unwrap();
        text.lines().map(str::to_string).collect()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("warning: cannot stop the counting proxy: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("warning: cannot reap the counting proxy: {e}");
        }
    }
}

/// A store on S3 reached through a counting proxy, the `--store-option` that sends kiln
/// through it, and a checkout's recipe with a large layer and a small one.
fn s3_through_counting_proxy() -> Option<(Shared, CountingProxy, String, PathBuf)> {
    let shared = Shared::cloud(kiln_test_servers::s3())?;
    let Backend::Cloud(server) = &shared.backend else { unreachable!() };
    let proxy = CountingProxy::start(&server.endpoint, shared.tmp.path());
    let via_proxy = format!("aws_endpoint={}", proxy.endpoint);
    let recipe = checkout(&shared.tmp.path().join("checkout"), true);
    Some((shared, proxy, via_proxy, recipe))
}

fn writes(requests: &[String]) -> Vec<&String> {
    requests.iter().filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD ")).collect()
}

#[test]
fn unchanged_build_and_push_to_s3_write_nothing() {
    let Some((shared, proxy, via_proxy, recipe)) = s3_through_counting_proxy() else { return };
    let recipe = recipe.to_str().unwrap();
    let build =
        |runner| shared.json(runner, &["--store-option", &via_proxy, "build", recipe, "--json"]);

    let first = build("a");
    assert!(!writes(&proxy.take()).is_empty(), "a cold build writes through the proxy");
    // Another runner, so nothing local (hash cache, known layers) is shared with the first.
    let second = build("b");
    let requests = proxy.take();
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["blobs"]["uploaded"], 0, "{second}");
    assert_eq!(writes(&requests), Vec::<&String>::new(), "{requests:?}");
    // The tag twice, the index and manifest it points at, per layer its cache entry, a HEAD
    // of its blob and (on a runner that has not seen it) a read of it, and the config,
    // manifest and index read back once each.
    assert!(requests.len() <= 13, "{} requests: {requests:#?}", requests.len());

    let local = format!("file://{}", shared.tmp.path().join("local").display());
    shared.json("a", &["--store", &local, "build", recipe, "--json"]);
    let target = shared.sibling("pushed");
    let push = || {
        let args = ["--store-option", &via_proxy, "copy", "big:1.0.0", "--from", &local];
        shared.json("a", &[&args[..], &["--to", &target, "--json"]].concat())
    };
    let pushed = push();
    assert_eq!(pushed["copied"], 5, "{pushed}");
    assert!(!writes(&proxy.take()).is_empty());
    let again = push();
    let requests = proxy.take();
    assert_eq!((again["copied"].clone(), again["present"].clone()), (0.into(), 5.into()));
    assert_eq!(again["tagged"], "big:1.0.0", "{again}");
    assert_eq!(writes(&requests), Vec::<&String>::new(), "{requests:?}");
    shared.assert_clean(&shared.location);
    shared.assert_clean(&target);
}

#[test]
fn a_build_whose_upload_fails_midway_fails_and_leaves_no_bad_blob_nor_scratch_file() {
    let Some(shared) = Shared::cloud(kiln_test_servers::s3()) else { return };
    let Backend::Cloud(server) = &shared.backend else { unreachable!() };
    // The second part of every multipart upload is refused: the large first layer's upload
    // fails after its first part went up, while the layers after it are made.
    let proxy =
        CountingProxy::faulty(&server.endpoint, shared.tmp.path(), &["403:PUT:partNumber=2&:1000"]);
    let via_proxy = format!("aws_endpoint={}", proxy.endpoint);
    let dir = shared.tmp.path().join("checkout");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/big"), support::noise(12 * 1024 * 1024, 0x5eed)).unwrap();
    let mut text = String::from(
        "epoch = 1700000000\n\n[image]\nname = \"cut\"\nversion = \"1.0.0\"\n\
         platforms = [\"linux/amd64\"]\n\n[[layer]]\nname = \"big\"\n\
         files = [{ src = \"files/big\", dest = \"/big\" }]\n",
    );
    for i in 0..3 {
        text.push_str(&format!(
            "\n[[layer]]\nname = \"l{i}\"\ninline = [{{ dest = \"/{i}\", content = \"{i}\\n\" }}]\n"
        ));
    }
    let recipe = dir.join("cut.toml");
    std::fs::write(&recipe, text).unwrap();
    let recipe = recipe.to_str().unwrap();

    let out = shared.run("a", &["--store-option", &via_proxy, "build", recipe]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("storing blobs") && stderr.contains("403"), "{stderr}");
    assert!(proxy.take().iter().any(|r| r.starts_with("PUT ") && r.contains("partNumber=2&")));
    // The refused upload was aborted, nothing is tagged, and whatever blobs went up whole
    // verify: the store checks clean.
    assert_eq!(shared.multipart_uploads(&shared.location), Some(vec![]));
    let raw = server.raw(&shared.location);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refs = rt.block_on(futures_collect(raw.list(Some(&Key::from("refs")))));
    assert!(refs.is_empty(), "a failed build tagged {refs:?}");
    shared.assert_clean(&shared.location);
    // No scratch file is left in the runner's temporary folder.
    let tmp = shared.tmp.path().join("runner-a/tmp");
    let left: Vec<PathBuf> = walkdir(&tmp).into_iter().filter(|p| p.is_file()).collect();
    assert!(left.is_empty(), "a failed build left {left:?}");

    // Built again without the fault, the image is the one a folder store gets.
    let again = shared.json("b", &["build", recipe, "--json"]);
    let local = format!("file://{}", shared.tmp.path().join("local").display());
    let folder = shared.json("c", &["--store", &local, "build", recipe, "--json"]);
    assert_eq!(again["digest"], folder["digest"]);
    shared.assert_clean(&shared.location);
}

/// Every path under `dir`, depth first.
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walkdir(&path));
        }
        found.push(path);
    }
    found
}

/// One request as `ci/counting-proxy.py` logs it: method, path, and the digests its body names.
struct Logged<'a> {
    method: &'a str,
    path: &'a str,
    names: Vec<&'a str>,
}

fn parse_logged(line: &str) -> Logged<'_> {
    let mut words = line.split(' ');
    let method = words.next().unwrap();
    let path = words.next().unwrap();
    let names = words
        .find_map(|w| w.strip_prefix("names="))
        .map(|n| n.split(',').collect())
        .unwrap_or_default();
    Logged { method, path, names }
}

/// The blob a request makes visible, if it does: a plain `PUT` of a blob key, or the `POST`
/// that completes a multipart upload to one.
fn creates_blob<'a>(request: &Logged<'a>) -> Option<&'a str> {
    let (key, query) = request.path.split_once('?').unwrap_or((request.path, ""));
    let hex = key.split_once("/blobs/sha256/")?.1;
    let creates = match request.method {
        "PUT" => query.is_empty(),
        "POST" => query.starts_with("uploadId="),
        _ => false,
    };
    creates.then_some(hex)
}

#[test]
fn a_cold_build_into_s3_leases_each_blob_before_it_is_written_in_few_requests() {
    // A large layer, sent as a multipart upload, and a small one.
    let Some((shared, proxy, via_proxy, recipe)) = s3_through_counting_proxy() else { return };
    let recipe = recipe.to_str().unwrap();
    let built = shared.json("a", &["--store-option", &via_proxy, "build", recipe, "--json"]);
    assert_eq!(built["blobs"]["uploaded"], 5, "{built}");
    let lines = proxy.take();
    let requests: Vec<Logged> = lines.iter().map(|l| parse_logged(l)).collect();

    // Every blob is named by a lease record sent before the request that makes it visible,
    // and every record naming a blob (cache entry, manifest, index, tag) is sent after it.
    let lease_puts: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].method == "PUT" && requests[i].path.contains("/leases/"))
        .collect();
    let mut created = std::collections::BTreeMap::new();
    for (i, request) in requests.iter().enumerate() {
        if let Some(hex) = creates_blob(request) {
            let leased = lease_puts.iter().any(|&j| j < i && requests[j].names.contains(&hex));
            assert!(leased, "blob {hex} was written before a lease named it: {lines:#?}");
            created.insert(hex, i);
        }
    }
    assert_eq!(created.len(), 5, "{lines:#?}");
    for (i, request) in requests.iter().enumerate() {
        if request.path.contains("/leases/") {
            continue;
        }
        for hex in &request.names {
            if let Some(&at) = created.get(hex) {
                assert!(at < i, "request {i} named blob {hex} before it was written: {lines:#?}");
            }
        }
    }

    // Besides the blobs' bytes: a lease record per layer and one for all the documents; one
    // look for each layer's blob (the lease record written meanwhile) and none for the
    // documents, written create-only at once, as are the cache entries; the tag read once
    // before it is set; before tagging, nothing read or looked for, since the build made the
    // documents and created each blob after its lease record; the records deleted without
    // being listed, at once. Before, the same build sent 46 requests: 5 lease records, 14
    // GETs and 9 HEADs.
    let count = |method: &str| requests.iter().filter(|r| r.method == method).count();
    let parts = requests.iter().filter(|r| r.path.contains("partNumber=")).count();
    assert_eq!(parts, 2, "{lines:#?}");
    assert!(lease_puts.len() <= 3, "{lines:#?}");
    assert!(count("HEAD") <= 2, "{lines:#?}");
    assert!(count("GET") <= 4, "{lines:#?}");
    assert!(lines.len() <= 25, "{} requests: {lines:#?}", lines.len());
    let Backend::Cloud(server) = &shared.backend else { unreachable!() };
    let raw = server.raw(&shared.location);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let leases = rt.block_on(futures_collect(raw.list(Some(&Key::from("leases")))));
    assert!(leases.is_empty(), "the lease's records are left: {leases:?}");
    shared.assert_clean(&shared.location);
}

#[test]
fn gc_racing_a_build_that_streams_a_layer_never_fails_it() {
    // Where a layer goes up while it is compressed (Azure here), its staging key names no
    // digest and no lease keeps it: a gc with no grace removes its upload's record (and may
    // take the upload); the build still succeeds, without a warning about the record.
    let Some(shared) = Shared::cloud(kiln_test_servers::azure()) else { return };
    let recipe = checkout(&shared.tmp.path().join("checkout"), true);
    let recipe = recipe.to_str().unwrap();
    for trial in 0..6 {
        let store = shared.sibling(&format!("race-{trial}"));
        let mut build = shared
            .command("builder", &["--store", &store, "build", recipe, "--rehash", "--json"])
            .spawn()
            .unwrap();
        let status = loop {
            let gc = shared.run("collector", &["--store", &store, "gc", "--grace", "0s"]);
            assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
            if let Some(status) = build.try_wait().unwrap() {
                break status;
            }
        };
        let out = build.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(status.success(), "trial {trial}: {stderr}");
        assert!(!stderr.contains("upload marker"), "trial {trial}: {stderr}");
        shared.assert_clean(&store);
    }
}

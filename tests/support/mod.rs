//! Shared harness for the end-to-end tests: runs the real `kiln` binary against a throw-away
//! store, lays out recipe folders in temporary directories, and gates tests on external tools.
//!
//! Each test file includes this module with `mod support;` and uses only part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod backend;
pub mod fs_model;
pub mod tarball;

use serde_json::Value;
use tempfile::TempDir;

/// The binary cargo built for this test run.
pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Exit codes documented by `kiln --help`.
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_LOCK_MISMATCH: i32 = 3;
pub const EXIT_INTEGRITY: i32 = 4;

/// Whether this run is CI, where a missing tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The signed Debian repository `ci/debian-repo` made (`KILN_DEBIAN_REPO`), or `None`: a
/// skip locally, a failure in CI.
pub fn debian_fixture() -> Option<std::path::PathBuf> {
    match std::env::var_os("KILN_DEBIAN_REPO") {
        Some(dir) => Some(std::path::PathBuf::from(dir)),
        None => {
            assert!(!in_ci(), "KILN_DEBIAN_REPO is not set up: run ci/debian-repo DIR");
            eprintln!("SKIP: set KILN_DEBIAN_REPO to a folder made by ci/debian-repo");
            None
        }
    }
}

/// Returns true when `tool` is on PATH. In CI a missing tool is a failure; elsewhere the
/// calling test should return early after the skip message printed here.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if in_ci() {
        panic!("{tool} missing: run ci/install-deps");
    }
    eprintln!("SKIP: {tool} not found on PATH; run ci/install-deps to install it");
    false
}

/// Whether the tests run as root (then chmod 000 does not make a file unreadable, and
/// mknod and chown work).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// An error and its causes, joined by ": " as the command line prints them.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// What one run of kiln produced.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Run {
    fn from_output(args: Vec<String>, out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args,
        }
    }

    /// Panics with the full output unless kiln exited 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "kiln {:?} failed:\n{self}", self.args);
        self
    }

    /// Panics with the full output unless kiln exited with `code`.
    pub fn fails_with(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "kiln {:?}: expected exit code {code}:\n{self}",
            self.args
        );
        self
    }

    /// Panics unless kiln failed (any non-zero exit, not a signal).
    pub fn fails(self) -> Run {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "kiln {:?}: expected a failure:\n{self}",
            self.args
        );
        self
    }

    /// Panics unless stderr contains every one of `needles`.
    pub fn stderr_has(self, needles: &[&str]) -> Run {
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "kiln {:?}: stderr should mention {needle:?}:\n{self}",
                self.args
            );
        }
        self
    }

    /// stdout parsed as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("kiln {:?}: stdout is not JSON ({e}):\n{self}", self.args))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "exit code: {:?}", self.code)?;
        writeln!(f, "--- stdout\n{}", self.stdout)?;
        write!(f, "--- stderr\n{}", self.stderr)
    }
}

/// A kiln invocation: a store, extra environment, a working directory, an optional shell
/// prefix (for umask).
pub struct Kiln {
    store: PathBuf,
    /// XDG_CACHE_HOME for this invocation's runs (kiln remembers input digests there), so
    /// tests never share or touch the caller's cache.
    cache_home: TempDir,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    umask: Option<&'static str>,
}

impl Kiln {
    /// kiln with `--store STORE`, a clean environment (no KILN_STORE or SOURCE_DATE_EPOCH
    /// inherited), its own XDG_CACHE_HOME, and NO_COLOR set. Every run through one `Kiln`
    /// shares that cache folder.
    pub fn new(store: &Path) -> Kiln {
        let cache_home =
            tempfile::Builder::new().prefix("kiln-e2e-cache-").tempdir().expect("tempdir");
        Kiln { store: store.to_path_buf(), cache_home, envs: Vec::new(), cwd: None, umask: None }
    }

    pub fn env(mut self, key: &str, value: &str) -> Kiln {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Kiln {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Runs kiln through `sh -c 'umask MASK; exec kiln …'`.
    pub fn umask(mut self, mask: &'static str) -> Kiln {
        self.umask = Some(mask);
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.umask {
            Some(mask) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("umask {mask}; exec \"$0\" \"$@\"")).arg(KILN);
                c
            }
            None => Command::new(KILN),
        };
        cmd.arg("--store").arg(&self.store);
        cmd.args(args);
        cmd.env_remove("KILN_STORE")
            .env_remove("SOURCE_DATE_EPOCH")
            .env("XDG_CACHE_HOME", self.cache_home.path())
            .env("NO_COLOR", "1");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("kiln binary runs");
        Run::from_output(args.iter().map(|a| a.to_string()).collect(), out)
    }

    /// `kiln --json build RECIPE EXTRA…`, asserted to succeed, returning the JSON report.
    pub fn build(&self, recipe: &Path, extra: &[&str]) -> Value {
        let recipe = recipe.to_str().expect("utf-8 path");
        let mut args = vec!["--json", "build", recipe];
        args.extend_from_slice(extra);
        self.run(&args).ok().json()
    }
}

/// The index digest a `kiln --json build` report names.
pub fn digest_of(report: &Value) -> String {
    report["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("build report has no digest: {report}"))
        .to_string()
}

/// Every blob file in a store's `blobs/sha256/`; empty when the folder does not exist.
pub fn blobs(store: &Path) -> Vec<PathBuf> {
    let dir = store.join("blobs").join("sha256");
    let mut out: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(rd) => rd.map(|e| e.expect("readable store entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    };
    out.sort();
    out
}

/// A temporary folder holding a recipe and its inputs, plus a store beside it.
pub struct Workspace {
    dir: TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace { dir: tempfile::Builder::new().prefix("kiln-e2e-").tempdir().expect("tempdir") }
    }

    /// The workspace root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the workspace root (not created).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `content` to `rel`, creating parent folders.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent folders");
        }
        fs::write(&path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Creates the folder `rel` and its parents.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(&path).expect("create folder");
        path
    }

    /// A fresh, not yet existing store location inside the workspace.
    pub fn store(&self, name: &str) -> PathBuf {
        self.path(name)
    }
}

/// Runs a host command, asserting success, returning stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed with {}:\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sets a path's mtime and atime through the `touch` tool (no extra crate needed).
pub fn touch_at(path: &Path, date: &str) {
    let p = path.to_str().expect("utf-8 path");
    sh("touch", &["-h", "-d", date, p]);
}

/// Copies the repository's `recipes/` folder into `dest` (so tests never write lock files
/// into the checkout), returning the copy's path.
pub fn copy_recipes(dest: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let target = dest.join("recipes");
    sh("cp", &["-a", src.to_str().expect("utf-8"), target.to_str().expect("utf-8")]);
    target
}

/// `len` xorshift64 bytes from `seed`, which deflate cannot shrink.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

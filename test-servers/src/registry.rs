//! Real OCI registries for tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1,
//! started by `ci/registry-server` and stopped by its watchdog when the test process exits.
//! One open registry and one with htpasswd basic auth per process (a test may start more with
//! [`Registry::start`]); each caller takes its own repository with [`Registry::fresh_repo`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The user and password of the registry [`with_auth`] starts.
pub const USER: &str = "kiln-test";
pub const PASSWORD: &str = "kiln-test-password";

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`, plain HTTP.
    pub host: String,
    /// Its storage folder (`docker/registry/v2/...` below it), to look at or tamper with.
    pub storage: PathBuf,
    /// The basic-auth credentials it requires, if any.
    pub credentials: Option<(String, String)>,
    /// For a registry speaking HTTPS: the PEM file of the CA that signed its certificate.
    pub ca: Option<PathBuf>,
}

/// The process-wide open registry.
///
/// # Panics
/// When `CI=true` and the registry cannot be started: in CI a missing server is a failure.
pub fn open() -> Option<&'static Registry> {
    static REGISTRY: OnceLock<Result<Registry, String>> = OnceLock::new();
    available(REGISTRY.get_or_init(|| Registry::start("open", false, false)))
}

/// The process-wide registry requiring basic auth as [`USER`]:[`PASSWORD`].
///
/// # Panics
/// When `CI=true` and the registry cannot be started.
pub fn with_auth() -> Option<&'static Registry> {
    static REGISTRY: OnceLock<Result<Registry, String>> = OnceLock::new();
    available(REGISTRY.get_or_init(|| Registry::start("auth", true, false)))
}

fn available(started: &'static Result<Registry, String>) -> Option<&'static Registry> {
    match started {
        Ok(registry) => Some(registry),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and the test registry is unavailable: {why}")
        }
        Err(why) => {
            eprintln!("skipping the registry tests: {why} (run ci/install-deps)");
            None
        }
    }
}

impl Registry {
    /// Starts another registry for this process, requiring basic auth as [`USER`]:[`PASSWORD`]
    /// with `auth`, speaking HTTPS with `tls`; `name` tells its state folder apart.
    pub fn start(name: &str, auth: bool, tls: bool) -> Result<Registry, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kiln-registry-test-{pid}-{name}-{n}"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/registry-server");
        let mut command = Command::new("bash");
        command.arg(&script).arg("start").arg(&dir).args(["--parent", &pid.to_string()]);
        if auth {
            command.args(["--auth", &format!("{USER}:{PASSWORD}")]);
        }
        if tls {
            command.arg("--tls");
        }
        let out = command.output().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let get = |name: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| format!("{} printed no {name}", script.display()))
        };
        Ok(Registry {
            host: get("KILN_TEST_REGISTRY")?,
            storage: PathBuf::from(get("KILN_TEST_REGISTRY_STORAGE")?),
            credentials: auth.then(|| (USER.to_string(), PASSWORD.to_string())),
            ca: if tls { Some(PathBuf::from(get("KILN_TEST_REGISTRY_CA")?)) } else { None },
        })
    }

    /// A repository name no other caller in this process uses, such as `kiln/t3`.
    pub fn fresh_repo(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        format!("kiln/t{}", COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    /// Where the registry keeps the bytes of blob `hex` (a sha256 digest's hex).
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

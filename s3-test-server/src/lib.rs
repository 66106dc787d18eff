//! A real S3 server for tests: SeaweedFS on 127.0.0.1, started once per test process by
//! `ci/s3-server` on first use and stopped by its watchdog when the process exits.
//!
//! Each caller gets its own key prefix in one shared bucket, so tests never see each other's
//! objects. In CI (`CI=true`) a server that cannot be started fails the test loudly; elsewhere
//! [`server`] returns `None` and the caller skips with the reason printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

/// A running server and the credentials it enforces.
#[derive(Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

/// The process-wide server, started on first call; `None` (after printing why) when it cannot
/// be started outside CI.
///
/// # Panics
/// When `CI=true` and the server cannot be started: in CI a missing server is a failure.
pub fn server() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(server) => Some(server),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and the S3 test server is unavailable: {why}")
        }
        Err(why) => {
            eprintln!("skipping the S3 backend: {why} (run ci/s3-server to check the setup)");
            None
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn start() -> Result<S3Server, String> {
    let dir = std::env::temp_dir().join(format!("kiln-s3-test-{}", std::process::id()));
    let script = workspace_root().join("ci/s3-server");
    let out = Command::new("bash")
        .arg(&script)
        .args(["start"])
        .arg(&dir)
        .args(["kiln-test", "--parent", &std::process::id().to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let env = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
            .ok_or_else(|| format!("{} printed no {name}", script.display()))
    };
    Ok(S3Server {
        endpoint: get("AWS_ENDPOINT")?,
        bucket: get("KILN_TEST_S3_BUCKET")?,
        access_key: get("AWS_ACCESS_KEY_ID")?,
        secret_key: get("AWS_SECRET_ACCESS_KEY")?,
        region: get("AWS_REGION")?,
    })
}

impl S3Server {
    /// A fresh `s3://BUCKET/PREFIX` location no other caller uses. The server and its bucket
    /// belong to this process alone, so a counter is unique; it is kept short because s3s-fs
    /// turns whole keys into file names, which are limited to 255 bytes.
    pub fn fresh_location(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        format!("s3://{}/t{}", self.bucket, COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    /// The object_store options that reach this server (for `Store::open_with_options`).
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_access_key_id", &self.access_key),
            ("aws_secret_access_key", &self.secret_key),
            ("aws_region", &self.region),
            ("aws_allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The same settings as environment variables, for `kiln` child processes.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// Direct access to the objects under `location` (an `s3://` URL from
    /// [`S3Server::fresh_location`]), bypassing kiln, to look at or tamper with them.
    pub fn raw(&self, location: &str) -> Arc<dyn ObjectStore> {
        let prefix = location
            .strip_prefix(&format!("s3://{}/", self.bucket))
            .unwrap_or_default()
            .to_string();
        let s3 = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_region(&self.region)
            .with_allow_http(true)
            .build();
        match s3 {
            Ok(s3) => Arc::new(PrefixStore::new(s3, prefix.as_str())),
            Err(e) => panic!("configuring a raw S3 client: {e}"),
        }
    }
}

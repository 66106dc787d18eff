//! Real object storage servers for tests, on 127.0.0.1: SeaweedFS (S3), Azurite (Azure Blob
//! Storage) and fake-gcs-server (Google Cloud Storage); and OCI registries (see [`registry`]).
//! Each is started once per test process by its `ci/<service>-server` script on first use and
//! stopped by the script's watchdog when the process exits.
//!
//! Each caller gets its own key prefix in one shared bucket (or container), so tests never see
//! each other's objects. In CI (`CI=true`) a server that cannot be started fails the test
//! loudly; elsewhere the accessor returns `None` and the caller skips with the reason printed.

pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::multipart::MultipartStore;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

/// Which service a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    S3,
    Azure,
    Gcs,
}

impl Service {
    /// The store URL scheme kiln uses for it.
    pub fn scheme(self) -> &'static str {
        match self {
            Service::S3 => "s3",
            Service::Azure => "az",
            Service::Gcs => "gs",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::S3 => "s3",
            Service::Azure => "azure",
            Service::Gcs => "gcs",
        }
    }

    /// The variable the start script names the bucket (or container) in.
    fn bucket_var(self) -> &'static str {
        match self {
            Service::S3 => "KILN_TEST_S3_BUCKET",
            Service::Azure => "KILN_TEST_AZURE_CONTAINER",
            Service::Gcs => "KILN_TEST_GCS_BUCKET",
        }
    }

    /// The prefix of the environment variables object_store reads for this service.
    fn env_prefix(self) -> &'static str {
        match self {
            Service::S3 => "AWS_",
            Service::Azure => "AZURE_",
            Service::Gcs => "GOOGLE_",
        }
    }
}

/// A running server: its bucket and the settings (endpoint, credentials) that reach it.
#[derive(Debug)]
pub struct Server {
    pub service: Service,
    /// The bucket (S3, GCS) or container (Azure) the script created.
    pub bucket: String,
    /// The endpoint URL, e.g. `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Every `NAME=value` the start script printed.
    vars: Vec<(String, String)>,
}

/// The process-wide SeaweedFS S3 server.
///
/// # Panics
/// When `CI=true` and the server cannot be started: in CI a missing server is a failure.
pub fn s3() -> Option<&'static Server> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    available(&SERVER, Service::S3)
}

/// The process-wide Azurite server.
///
/// # Panics
/// When `CI=true` and the server cannot be started.
pub fn azure() -> Option<&'static Server> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    available(&SERVER, Service::Azure)
}

/// The process-wide fake-gcs-server. It answers reads and listings of GCS's XML API but not
/// its writes (see docs/commands.md, "Stores"); put objects with [`Server::seed`].
///
/// # Panics
/// When `CI=true` and the server cannot be started.
pub fn gcs() -> Option<&'static Server> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    available(&SERVER, Service::Gcs)
}

fn available(
    cell: &'static OnceLock<Result<Server, String>>,
    service: Service,
) -> Option<&'static Server> {
    match cell.get_or_init(|| start(service)) {
        Ok(server) => Some(server),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and the {} test server is unavailable: {why}", service.name())
        }
        Err(why) => {
            eprintln!(
                "skipping the {} backend: {why} (run ci/{}-server to check the setup)",
                service.name(),
                service.name()
            );
            None
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn start(service: Service) -> Result<Server, String> {
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("kiln-{}-test-{pid}", service.name()));
    let script = workspace_root().join(format!("ci/{}-server", service.name()));
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .args(["kiln-test", "--parent", &pid.to_string()])
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
    let vars: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            // Values with shell metacharacters (JSON) are single-quoted for `source`.
            let value =
                value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let get = |name: &str| {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("{} printed no {name}", script.display()))
    };
    let endpoint_var = match service {
        Service::S3 => "AWS_ENDPOINT",
        Service::Azure => "AZURE_ENDPOINT",
        Service::Gcs => "GCS_BASE_URL",
    };
    Ok(Server { service, bucket: get(service.bucket_var())?, endpoint: get(endpoint_var)?, vars })
}

impl Server {
    /// A fresh `SCHEME://BUCKET/PREFIX` location no other caller uses. The server and its
    /// bucket belong to this process alone, so a counter is unique; it is kept short because
    /// some servers turn whole keys into file names, which are limited to 255 bytes.
    pub fn fresh_location(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("{}://{}/t{n}", self.service.scheme(), self.bucket)
    }

    /// The settings as environment variables, for `kiln` child processes.
    pub fn env(&self) -> Vec<(String, String)> {
        let prefix = self.service.env_prefix();
        self.vars.iter().filter(|(name, _)| name.starts_with(prefix)).cloned().collect()
    }

    /// The same settings as object_store options (for `Store::open_with_options` and
    /// `--store-option`): each variable's name in lower case is its config key.
    pub fn options(&self) -> Vec<(String, String)> {
        self.env().into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect()
    }

    /// The keys of the multipart uploads in progress under `location`, listed through the S3
    /// API (ListMultipartUploads, signed by curl, not by kiln); `None` on other services.
    ///
    /// # Panics
    /// When curl fails or the server's answer is not a listing.
    pub fn multipart_uploads(&self, location: &str) -> Option<Vec<String>> {
        let env: std::collections::HashMap<String, String> = self.env().into_iter().collect();
        let (key, secret) = (env.get("AWS_ACCESS_KEY_ID")?, env.get("AWS_SECRET_ACCESS_KEY")?);
        let region = env.get("AWS_REGION").map_or("us-east-1", String::as_str);
        let prefix = location.strip_prefix(&format!("s3://{}/", self.bucket))?;
        let url = format!("{}/{}?prefix={prefix}%2F&uploads=", self.endpoint, self.bucket);
        let out = std::process::Command::new("curl")
            .args(["-sS", "-f", "--aws-sigv4", &format!("aws:amz:{region}:s3")])
            .args(["--user", &format!("{key}:{secret}"), &url])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
        let xml = String::from_utf8_lossy(&out.stdout);
        assert!(xml.contains("ListMultipartUploadsResult"), "{xml}");
        let uploads = xml
            .split("<Upload>")
            .skip(1)
            .filter_map(|u| Some(u.split_once("<Key>")?.1.split_once("</Key>")?.0.to_string()))
            .collect();
        Some(uploads)
    }

    /// Direct access to the objects under `location` (from [`Server::fresh_location`]),
    /// bypassing kiln, to look at or tamper with them.
    pub fn raw(&self, location: &str) -> Arc<dyn ObjectStore> {
        let base = format!("{}://{}/", self.service.scheme(), self.bucket);
        let prefix = location.strip_prefix(&base).unwrap_or_default().to_string();
        let store: object_store::Result<Arc<dyn ObjectStore>> = match self.service {
            Service::S3 => self.s3_client().map(|s| Arc::new(s) as _),
            Service::Azure => {
                let mut builder = MicrosoftAzureBuilder::new().with_container_name(&self.bucket);
                for (key, value) in self.options() {
                    builder = builder.with_config(parse_key(&key), value);
                }
                builder.build().map(|s| Arc::new(s) as _)
            }
            Service::Gcs => {
                let mut builder = GoogleCloudStorageBuilder::new().with_bucket_name(&self.bucket);
                for (key, value) in self.options() {
                    builder = builder.with_config(parse_key(&key), value);
                }
                builder.build().map(|s| Arc::new(s) as _)
            }
        };
        match store {
            Ok(store) => Arc::new(PrefixStore::new(store, prefix.as_str())),
            Err(e) => panic!("configuring a raw {} client: {e}", self.service.name()),
        }
    }

    fn s3_client(&self) -> object_store::Result<AmazonS3> {
        let mut builder = AmazonS3Builder::new().with_bucket_name(&self.bucket);
        for (key, value) in self.options() {
            builder = builder.with_config(parse_key(&key), value);
        }
        builder.build()
    }

    /// Starts a multipart upload of `key` under `location` (S3) and sends it one part, then
    /// leaves it in progress, with nothing recording it, as a writer killed just after the
    /// server created it would: the upload's id.
    ///
    /// # Panics
    /// On a server other than S3, or when a request fails.
    pub async fn start_multipart(&self, location: &str, key: &str) -> String {
        assert_eq!(self.service, Service::S3, "only S3 lists multipart uploads");
        let client = self.s3_client().unwrap_or_else(|e| panic!("configuring S3: {e}"));
        let base = format!("s3://{}/", self.bucket);
        let prefix = location.strip_prefix(&base).unwrap_or_default();
        let path = object_store::path::Path::from(format!("{prefix}/{key}"));
        let id = client
            .create_multipart(&path)
            .await
            .unwrap_or_else(|e| panic!("starting an upload of {path}: {e}"));
        client
            .put_part(&path, &id, 0, vec![7u8; 64].into())
            .await
            .unwrap_or_else(|e| panic!("sending a part of {path}: {e}"));
        id
    }

    /// Uploads every file under `folder` to `location` through the GCS JSON API, which
    /// fake-gcs-server accepts where it refuses the XML API uploads kiln uses: the way to give
    /// a GCS test something to read.
    ///
    /// # Panics
    /// On a server other than GCS, or when an upload fails.
    pub fn seed(&self, location: &str, folder: &Path) {
        assert_eq!(self.service, Service::Gcs, "seed uploads through the GCS JSON API");
        let base = format!("gs://{}/", self.bucket);
        let prefix = location.strip_prefix(&base).unwrap_or_default();
        let mut dirs = vec![folder.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
            for entry in entries {
                let path =
                    entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let rel = path.strip_prefix(folder).unwrap_or(&path).to_string_lossy().into_owned();
                self.upload(&format!("{prefix}/{rel}"), &path);
            }
        }
    }

    /// Uploads the file at `path` as object `key` through the GCS JSON API (curl).
    ///
    /// # Panics
    /// When the upload fails.
    pub fn upload(&self, key: &str, path: &Path) {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.endpoint,
            self.bucket,
            percent_encode(key)
        );
        let out = Command::new("curl")
            .args(["-sS", "-f", "-o", "/dev/null", "-X", "POST", "--data-binary"])
            .arg(format!("@{}", path.display()))
            .arg(&url)
            .output()
            .unwrap_or_else(|e| panic!("running curl: {e}"));
        assert!(
            out.status.success(),
            "uploading {key} to {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn parse_key<K: std::str::FromStr>(key: &str) -> K
where
    K::Err: std::fmt::Display,
{
    key.parse().unwrap_or_else(|e| panic!("config key {key}: {e}"))
}

/// Percent-encodes everything but unreserved characters, for a query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

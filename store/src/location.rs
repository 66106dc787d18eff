//! Turns a store location string into a backend. Each scheme is one arm of [`Location`]; the
//! cloud schemes are configured the way their users expect: from the standard environment
//! variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and then from explicit `key=value` options
//! (object_store's config keys, e.g. `aws_endpoint`, `aws_allow_http`), which win.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut, S3CopyIfNotExists};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{BackendError, Result, StoreError};
use crate::explain::Explaining;
use crate::s3_multipart::S3Multipart;
pub use crate::service::Service;
use crate::upload::Multipart;

/// A connected backend: its objects, and direct access to its multipart uploads where it has
/// them (so an upload can be recorded by id, and aborted by id after a crash).
pub(crate) struct Connected {
    pub objects: Arc<dyn ObjectStore>,
    pub multipart: Option<Multipart>,
}

/// A cloud store: which service, which bucket (or container), and a key prefix inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub service: Service,
    /// The bucket (S3, GCS) or container (Azure).
    pub name: String,
    /// Every key of the store lives under this prefix; empty for the bucket's root.
    pub prefix: String,
}

/// Where a store lives, parsed from a plain path, `file:///abs/path`, `memory://`,
/// `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local folder, canonicalised.
    Folder(PathBuf),
    /// A process-local store that vanishes on exit (tests, dry runs).
    Memory,
    /// A bucket in object storage.
    Bucket(Bucket),
}

/// Request timeout for S3: long enough for the server-side copy that publishes a multi-GiB
/// blob, short enough that a hung connection is retried within minutes.
const PUBLISH_TIMEOUT: &str = "120s";

/// kiln's own store option (object_store has no config key for it): how often a request that
/// failed with a 5xx answer, a connection error or a timeout is retried.
const MAX_RETRIES: &str = "max_retries";

/// Retries on 5xx answers, connection errors and timeouts: exponential backoff from 100 ms to
/// 15 s, at most `max_retries` (default 10) retries and 3 minutes per request (object_store's
/// own defaults, stated here so that they are a decision rather than an accident).
fn retry_config(max_retries: usize) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries,
        retry_timeout: Duration::from_secs(180),
    }
}

impl Location {
    /// Parses `location`, creating and canonicalising a folder if it names one.
    pub fn parse(location: &str) -> Result<Location> {
        Location::parse_folder_with(location, Location::folder)
    }

    /// [`Location::parse`] for a store that must already exist: a folder that does not is
    /// [`StoreError::NoSuchFolder`], and none is created.
    pub fn parse_existing(location: &str) -> Result<Location> {
        Location::parse_folder_with(location, |path| {
            if path.is_dir() {
                Location::folder(path)
            } else {
                Err(StoreError::NoSuchFolder { path: path.to_path_buf() })
            }
        })
    }

    /// Parses `location`, turning a folder path into a [`Location`] with `folder`.
    fn parse_folder_with(
        location: &str,
        folder: impl FnOnce(&Path) -> Result<Location>,
    ) -> Result<Location> {
        let invalid = |reason: &str| StoreError::InvalidLocation {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        if location.is_empty() {
            return Err(invalid("it is empty"));
        }
        // Only "scheme://" marks a URL: a bare "a:b" is a legal folder name on Unix.
        let Some((scheme, _)) = location.split_once("://") else {
            return folder(Path::new(location));
        };
        let url = Url::parse(location).map_err(|e| invalid(&e.to_string()))?;
        let service = match url.scheme() {
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
                    return Err(invalid("a file URL needs an absolute path: file:///abs/path"));
                }
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid("a file URL needs an absolute path: file:///abs/path"))?;
                return folder(&path);
            }
            "memory" => {
                if url.has_host() || !matches!(url.path(), "" | "/") {
                    return Err(invalid("a memory store takes no path: use memory://"));
                }
                return Ok(Location::Memory);
            }
            "s3" => Service::S3,
            "gs" => Service::Gcs,
            "az" => Service::Azure,
            _ => {
                return Err(StoreError::Unsupported {
                    location: location.to_string(),
                    scheme: scheme.to_string(),
                })
            }
        };
        let name = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
            let noun = service.bucket_noun();
            invalid(&format!(
                "name the {noun}: {}://{}/PREFIX",
                service.scheme(),
                noun.to_ascii_uppercase()
            ))
        })?;
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(invalid("put options in --store-option KEY=VALUE, not in the URL"));
        }
        let prefix = url.path().trim_matches('/').to_string();
        // The prefix must be a clean key path: no empty, "." or ".." segments.
        if !prefix.is_empty() && Key::parse(&prefix).is_err() {
            return Err(invalid("the prefix has an empty, '.' or '..' segment"));
        }
        Ok(Location::Bucket(Bucket { service, name: name.to_string(), prefix }))
    }

    /// Creates the folder if missing and canonicalises it, so the described path is stable.
    fn folder(path: &Path) -> Result<Location> {
        let open_err = |source| StoreError::OpenFolder { path: path.to_path_buf(), source };
        std::fs::create_dir_all(path).map_err(open_err)?;
        let canonical = std::fs::canonicalize(path).map_err(open_err)?;
        Ok(Location::Folder(canonical))
    }

    /// Builds the object store backend for this location, applying `options` (object_store
    /// config keys and values) on top of the environment. Local stores take no options.
    pub(crate) fn connect(&self, options: &[(String, String)]) -> Result<Connected> {
        let bucket = match self {
            Location::Bucket(bucket) => bucket,
            local => {
                if let Some((key, _)) = options.first() {
                    return Err(self.bad_option(key, "local stores take no options"));
                }
                return match local {
                    Location::Folder(path) => {
                        let fs = LocalFileSystem::new_with_prefix(path)
                            .map_err(|source| StoreError::Connect {
                                location: self.to_string(),
                                source: BackendError::new(source),
                            })?
                            // Removes the directories a deleted staging upload leaves behind.
                            .with_automatic_cleanup(true);
                        // Its multipart uploads are part files, found on disk (see gc).
                        Ok(Connected { objects: Arc::new(fs), multipart: None })
                    }
                    _ => {
                        let memory = Arc::new(InMemory::new());
                        let multipart =
                            Some(Multipart::new(memory.clone(), "").one_part_at_a_time());
                        Ok(Connected { objects: memory, multipart })
                    }
                };
            }
        };
        let connect_err = |source| StoreError::Connect {
            location: self.to_string(),
            source: BackendError::new(source),
        };
        let mut max_retries = 10;
        let mut backend_options = Vec::with_capacity(options.len());
        for (key, value) in options {
            if key == MAX_RETRIES {
                max_retries = value.trim().parse().map_err(|_| {
                    self.bad_option(key, "expected a whole number of retries, e.g. 0 or 10")
                })?;
            } else {
                backend_options.push((key.clone(), value.clone()));
            }
        }
        let options = backend_options.as_slice();
        let retry = retry_config(max_retries);
        let mut listing = None;
        let (store, multipart): (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) =
            match bucket.service {
                Service::S3 => {
                    let builder = self.s3(&bucket.name, options)?.with_retry(retry);
                    let s3 = Arc::new(builder.clone().build().map_err(connect_err)?);
                    listing = Some(S3Multipart::new(&builder, s3.clone(), &bucket.name)?);
                    (s3.clone(), s3)
                }
                Service::Gcs => {
                    let mut builder =
                        GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket.name);
                    for (key, value) in options {
                        let key: GoogleConfigKey =
                            key.parse().map_err(|e| self.bad_option(key, &format!("{e}")))?;
                        builder = builder.with_config(key, value);
                    }
                    let gcs = Arc::new(builder.with_retry(retry).build().map_err(connect_err)?);
                    (gcs.clone(), gcs)
                }
                Service::Azure => {
                    let mut builder =
                        MicrosoftAzureBuilder::from_env().with_container_name(&bucket.name);
                    for (key, value) in options {
                        let key: AzureConfigKey =
                            key.parse().map_err(|e| self.bad_option(key, &format!("{e}")))?;
                        builder = builder.with_config(key, value);
                    }
                    let azure = Arc::new(builder.with_retry(retry).build().map_err(connect_err)?);
                    (azure.clone(), azure)
                }
            };
        let store: Arc<dyn ObjectStore> =
            Arc::new(Explaining::new(store, bucket.service, &bucket.name));
        let multipart = Multipart::new(multipart, &bucket.prefix);
        let multipart = Some(match listing {
            Some(s3) => multipart.with_s3(s3),
            None => multipart,
        });
        if bucket.prefix.is_empty() {
            Ok(Connected { objects: store, multipart })
        } else {
            let objects = Arc::new(PrefixStore::new(store, Key::from(bucket.prefix.as_str())));
            Ok(Connected { objects, multipart })
        }
    }

    /// The S3 builder: environment, then options, then what kiln's blob protocol needs.
    ///
    /// - Create-only puts use `If-None-Match: *` ([`S3ConditionalPut::ETagMatch`]).
    /// - Large blobs go up in parts straight to their own key and are completed create-only
    ///   (see [`crate::s3_multipart`]): the key sees either nothing or the whole verified
    ///   object, and the bytes cross the wire and are stored once.
    /// - Server-side copies are create-only through a one-part multipart copy completed with
    ///   `If-None-Match: *` ([`S3CopyIfNotExists::Multipart`]), unless the options or
    ///   `AWS_COPY_IF_NOT_EXISTS` chose another way (e.g. R2's header).
    /// - Requests time out after [`PUBLISH_TIMEOUT`] (and are retried), not 30 s.
    /// - Path-style requests unless `aws_virtual_hosted_style_request` says otherwise (the
    ///   object_store default, and what custom endpoints usually need); plain http only
    ///   with `aws_allow_http=true` / `AWS_ALLOW_HTTP=true`.
    fn s3(&self, bucket: &str, options: &[(String, String)]) -> Result<AmazonS3Builder> {
        // Publishing copies a whole blob server-side in one request, which takes longer than
        // object_store's 30 s default for large blobs; an explicit `timeout` option wins.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), PUBLISH_TIMEOUT);
        for (key, value) in options {
            let key: AmazonS3ConfigKey =
                key.parse().map_err(|e| self.bad_option(key, &format!("{e}")))?;
            if key == AmazonS3ConfigKey::ConditionalPut && value.trim() != "etag" {
                return Err(self.bad_option(
                    "aws_conditional_put",
                    "kiln writes blobs create-only and needs \"etag\" (If-None-Match)",
                ));
            }
            builder = builder.with_config(key, value);
        }
        builder = builder.with_conditional_put(S3ConditionalPut::ETagMatch);
        if builder.get_config_value(&AmazonS3ConfigKey::CopyIfNotExists).is_none() {
            builder = builder.with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
        }
        Ok(builder)
    }

    fn bad_option(&self, key: &str, reason: &str) -> StoreError {
        StoreError::InvalidOption {
            location: self.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Folder(path) => match Url::from_directory_path(path) {
                Ok(url) => write!(f, "{}", url.as_str().trim_end_matches('/')),
                Err(()) => write!(f, "{}", path.display()),
            },
            Location::Memory => f.write_str("memory://"),
            Location::Bucket(Bucket { service, name, prefix }) if prefix.is_empty() => {
                write!(f, "{}://{name}", service.scheme())
            }
            Location::Bucket(Bucket { service, name, prefix }) => {
                write!(f, "{}://{name}/{prefix}", service.scheme())
            }
        }
    }
}

/// Splits a `KEY=VALUE` store option.
pub fn parse_option(option: &str) -> Result<(String, String)> {
    match option.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(StoreError::InvalidOption {
            location: String::new(),
            key: option.to_string(),
            reason: "expected KEY=VALUE".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(Location::parse("memory://").ok(), Some(Location::Memory));
        for (loc, service, name, prefix) in [
            ("s3://b/p/q/", Service::S3, "b", "p/q"),
            ("gs://b", Service::Gcs, "b", ""),
            ("az://c/p", Service::Azure, "c", "p"),
        ] {
            let parsed = Location::parse(loc).unwrap();
            let bucket = Bucket { service, name: name.into(), prefix: prefix.into() };
            assert_eq!(parsed, Location::Bucket(bucket));
            assert_eq!(parsed.to_string(), loc.trim_end_matches('/'));
        }
        for bad in ["file://host/x", "", "memory://x", "s3://", "s3://b/a//c", "s3://b/p?x=1"] {
            assert!(
                matches!(Location::parse(bad), Err(StoreError::InvalidLocation { .. })),
                "{bad}"
            );
        }
        match Location::parse("ftp://x/y") {
            Err(e @ StoreError::Unsupported { .. }) => assert!(e.to_string().contains("ftp://")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options() {
        assert_eq!(parse_option("aws_endpoint=http://a=b").unwrap().1, "http://a=b");
        assert!(parse_option("novalue").is_err());
        let s3 = Location::parse("s3://b").unwrap();
        let opt = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(matches!(
            s3.connect(&opt("no_such_key", "1")),
            Err(StoreError::InvalidOption { .. })
        ));
        assert!(matches!(
            s3.connect(&opt("aws_conditional_put", "disabled")),
            Err(StoreError::InvalidOption { .. })
        ));
        assert!(matches!(
            s3.connect(&opt("max_retries", "many")),
            Err(StoreError::InvalidOption { .. })
        ));
        assert!(s3.connect(&opt("max_retries", "0")).is_ok());
        assert!(matches!(
            Location::Memory.connect(&opt("aws_region", "x")),
            Err(StoreError::InvalidOption { .. })
        ));
    }

    #[test]
    fn folders_are_created_and_canonicalised() -> Result<()> {
        let tmp = tempfile::tempdir()
            .map_err(|source| StoreError::OpenFolder { path: std::env::temp_dir(), source })?;
        let nested = tmp.path().join("a/b/../c");
        let from_path = Location::parse(&nested.to_string_lossy())?;
        let canonical = std::fs::canonicalize(tmp.path().join("a/c")).ok();
        assert_eq!(Some(from_path.clone()), canonical.clone().map(Location::Folder));
        let url = format!("file://{}", tmp.path().join("a/c").display());
        assert_eq!(Location::parse(&url)?, from_path);
        // A relative path (climbing from the working directory to the root) lands there too.
        let cwd = std::env::current_dir()
            .map_err(|source| StoreError::OpenFolder { path: PathBuf::from("."), source })?;
        let up = "../".repeat(cwd.components().count());
        let relative =
            format!("{up}{}", tmp.path().join("a/c").display().to_string().trim_start_matches('/'));
        assert_eq!(Location::parse(&relative)?, from_path);
        let absent = tmp.path().join("absent");
        assert!(matches!(
            Location::parse_existing(&absent.to_string_lossy()),
            Err(StoreError::NoSuchFolder { .. })
        ));
        assert!(!absent.exists());
        assert_eq!(Location::parse_existing(&nested.to_string_lossy())?, from_path);
        let shown = from_path.to_string();
        assert!(shown.starts_with("file:///") && shown.ends_with("/a/c"), "{shown}");
        Ok(())
    }
}

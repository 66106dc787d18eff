//! The one error type of the store: every variant names the key, path or location involved.

use std::path::PathBuf;

use kiln_oci::Digest;

use crate::explain::BackendFailure;
use crate::reference::NameError;

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The location uses a scheme kiln cannot open.
    #[error(
        "store location {location:?} uses the {scheme}:// scheme, which kiln does not know; \
         use a folder path, file:///abs/path, memory://, s3://, gs:// or az://"
    )]
    Unsupported { location: String, scheme: String },

    /// A `--store-option` is malformed or unknown to the store's backend.
    #[error("store option {key:?} for {location} is invalid: {reason}")]
    InvalidOption { location: String, key: String, reason: String },

    /// The backend for a location could not be configured (missing credentials, bad region...).
    #[error(
        "cannot configure the store at {location}; check its credentials and settings (the \
         environment variables and --store-option keys for it)"
    )]
    Connect {
        location: String,
        #[source]
        source: BackendError,
    },

    /// The location string is not a usable path or URL.
    #[error("store location {location:?} is invalid: {reason}")]
    InvalidLocation { location: String, reason: String },

    /// A store that must exist (one being checked) is a folder that does not.
    #[error("store folder {path} does not exist; check the path (a build into it creates it)")]
    NoSuchFolder { path: PathBuf },

    /// The store folder could not be created or canonicalised.
    #[error("cannot open store folder {path}")]
    OpenFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A blob's multipart upload could not be completed.
    #[error("cannot complete the upload of {key}: {reason}; run the command again")]
    Complete { key: String, reason: String },

    /// The bucket's list of multipart uploads in progress could not be read.
    #[error(
        "cannot list the multipart uploads in progress in {bucket}: {reason}; gc needs \
         s3:ListBucketMultipartUploads and s3:AbortMultipartUpload on the bucket"
    )]
    ListUploads { bucket: String, reason: String },

    /// The object store backend failed for `key`; for a cloud store the source is explained
    /// by a [`crate::explain::BackendFailure`].
    #[error("{operation} {key} failed")]
    Backend {
        /// What kiln was doing: "reading", "writing", "listing"...
        operation: &'static str,
        key: String,
        #[source]
        source: BackendError,
    },

    /// A blob arriving from outside the store (a registry) could not be read, or was not
    /// what it was asked for by; nothing of it was stored.
    #[error("storing a blob from {from}")]
    Incoming {
        from: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Nothing is stored under `key`.
    #[error("{key} is not in the store")]
    NotFound { key: String },

    /// The digest a user named (`kiln inspect sha256:…`) is not in the store: a mistake in
    /// the command, not damage in the store.
    #[error("{key} is not in the store")]
    UnknownDigest { key: String },

    /// The bytes under `key` do not hash to the digest the key names.
    #[error(
        "blob {key} is corrupt: expected {expected}, found {found}; delete it from the store \
         and rebuild or re-copy it"
    )]
    DigestMismatch { key: String, expected: Digest, found: Digest },

    /// A blob has another size than the descriptor that names it: the blob or the
    /// descriptor is wrong, and either way the image cannot be trusted.
    #[error(
        "blob {key} has {found} bytes but its descriptor says {expected}; the blob or the \
         descriptor is damaged (`kiln store check` tells which)"
    )]
    SizeMismatch { key: String, expected: u64, found: u64 },

    /// A staged upload did not arrive whole, so it was not published.
    #[error(
        "upload staged at {key} has {found} bytes, expected {expected}; nothing was published, \
         retry the upload"
    )]
    IncompleteUpload { key: String, expected: u64, found: u64 },

    /// A file handed to `put_blob_file` is not the blob the caller said it was.
    #[error(
        "file {path} is {found} ({found_size} bytes) but {expected} ({expected_size} bytes) \
         was expected; nothing was published (was the file changed after it was hashed?)"
    )]
    FileMismatch {
        path: PathBuf,
        expected: Digest,
        expected_size: u64,
        found: Digest,
        found_size: u64,
    },

    /// A file handed to `put_blob_file` or `adopt_blob_file` has another size than the caller
    /// said.
    #[error(
        "file {path} has {found_size} bytes but {expected_size} were expected; nothing was \
         published (was the file changed after it was hashed?)"
    )]
    FileSize { path: PathBuf, expected_size: u64, found_size: u64 },

    /// Reading or writing a local file failed.
    #[error("cannot access local file {path}")]
    LocalFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The JSON stored under `key` could not be decoded or encoded.
    #[error("{key} does not hold the expected JSON")]
    Json {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// A blob resolved by digest alone has no `mediaType` field to describe it with.
    #[error("blob {key} has no mediaType field, so a bare digest cannot be resolved to it")]
    NoMediaType { key: String },

    /// A repository name, tag or reference failed validation.
    #[error(transparent)]
    Name(#[from] NameError),

    /// A key under `refs/` does not spell a valid name and tag.
    #[error("store key {key} is not a valid ref (refs/<name>/<tag>); remove it")]
    InvalidRefKey {
        key: String,
        #[source]
        source: NameError,
    },

    /// A referrer entry's key names another artifact than the descriptor it holds.
    #[error("referrer entry {key} holds a descriptor of {found}, not of the artifact its key names; remove it")]
    ReferrerKey { key: String, found: Digest },

    /// A cache kind is not `[a-z0-9-]+`.
    #[error("cache kind {kind:?} must be non-empty lowercase letters, digits and '-'")]
    InvalidCacheKind { kind: String },

    /// An object is larger than the document or record kiln expected to read there.
    #[error(
        "{key} is larger than {limit} bytes, more than any document or record kiln reads there"
    )]
    TooLarge { key: String, limit: u64 },
}

/// An `object_store` error as a link of kiln's error chain. object_store (and the HTTP
/// errors under it) end their messages with the text of their cause and also chain that
/// cause, so a printed chain would say each cause twice: this link and the links it chains
/// say only their own part. The error itself stays available for matching.
#[derive(Debug)]
pub struct BackendError {
    error: Box<object_store::Error>,
    own: Link,
}

/// One cause of a [`BackendError`], saying only what its own cause does not.
#[derive(Debug)]
struct Link {
    text: String,
    next: Option<Box<Link>>,
}

impl BackendError {
    pub fn new(error: object_store::Error) -> Self {
        let mut texts = vec![error.to_string()];
        let mut cause = std::error::Error::source(&error);
        while let Some(c) = cause {
            texts.push(c.to_string());
            cause = c.source();
        }
        // From the deepest cause up, each link keeps what its cause does not already say.
        let mut next: Option<Box<Link>> = None;
        let mut below = String::new();
        for text in texts.into_iter().rev() {
            let own = match text.strip_suffix(below.as_str()) {
                Some(head) if !below.is_empty() => head.trim_end_matches([':', ' ', '-']),
                _ => text.as_str(),
            };
            if !own.is_empty() && next.as_ref().is_none_or(|n| n.text != own) {
                next = Some(Box::new(Link { text: own.to_string(), next }));
            }
            below = text;
        }
        let own = next.map_or_else(|| Link { text: below, next: None }, |link| *link);
        BackendError { error: Box::new(error), own }
    }

    /// The object_store error.
    pub fn error(&self) -> &object_store::Error {
        &self.error
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.own.text)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.own.next.as_deref().map(|l| l as &(dyn std::error::Error + 'static))
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Link {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.next.as_deref().map(|l| l as &(dyn std::error::Error + 'static))
    }
}

/// An error with its causes on one line, for reports that keep an error as text.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Whether this says that stored content is wrong or missing (an integrity failure, exit
    /// code 4), rather than that the store could not be used. A new variant about bad stored
    /// content belongs here.
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            StoreError::DigestMismatch { .. }
                | StoreError::SizeMismatch { .. }
                | StoreError::NotFound { .. }
                | StoreError::Json { .. }
                | StoreError::ReferrerKey { .. }
        )
    }

    /// Whether this is stored bytes that are not what their digest or a descriptor promises.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. })
    }

    /// Whether the store is not whole (exit code 4): a blob is corrupt, or missing where
    /// something stored (a ref, index, manifest or record) names it. A ref or digest the user
    /// named that is not there ([`StoreError::UnknownDigest`], or a missing `refs/` key) is
    /// not: the command named the wrong thing.
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::NotFound { key } => key.starts_with("blobs/"),
            other => other.is_corrupt(),
        }
    }

    /// Wraps a backend error for `key`, turning a missing object into [`StoreError::NotFound`].
    pub(crate) fn backend(key: &object_store::path::Path, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound { key: key.to_string() },
            source => {
                let operation = std::error::Error::source(&source)
                    .and_then(|cause| cause.downcast_ref::<BackendFailure>())
                    .map_or("accessing", BackendFailure::operation);
                StoreError::Backend {
                    operation,
                    key: key.to_string(),
                    source: BackendError::new(source),
                }
            }
        }
    }

    /// The explained cloud failure behind this error, if it is one.
    pub fn backend_failure(&self) -> Option<&BackendFailure> {
        match self {
            StoreError::Backend { source, .. } | StoreError::Connect { source, .. } => {
                std::error::Error::source(source.error())?.downcast_ref()
            }
            _ => None,
        }
    }
}

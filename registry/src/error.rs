//! The one error type of the registry client: every variant names the registry, URL or file
//! involved.

use std::path::PathBuf;

use kiln_oci::Digest;
use kiln_store::StoreError;

/// How a credential helper failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the host to it")]
    Write(#[source] std::io::Error),
    #[error("waiting for it to exit")]
    Wait(#[source] std::io::Error),
    #[error("it exited with {status}: {said}")]
    Exited { status: std::process::ExitStatus, said: String },
    #[error("its answer is not a credential")]
    Answer(#[source] serde_json::Error),
}

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A registry reference could not be parsed.
    #[error("registry reference {reference:?} is invalid: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// A pull source names a tag, not a digest.
    #[error(
        "{reference} names no digest; pull by digest (HOST/REPO@sha256:...), so that what \
         arrives is what was asked for"
    )]
    NotByDigest { reference: String },

    /// The request could not be sent or its answer not read (connection refused, TLS, ...).
    #[error("{method} {url} failed")]
    Http {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The registry went a whole stall timeout without sending a byte.
    #[error(
        "{method} {url}: the registry sent nothing for too long ({} sets how many seconds kiln \
         waits)",
        crate::STALL_VARIABLE
    )]
    Stalled {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The registry answered with an unexpected status.
    #[error("{method} {url} answered {status}{}", detail(body))]
    Status { method: String, url: String, status: u16, body: String },

    /// The registry wants credentials that kiln does not have or that it refused.
    #[error(
        "{host} refused access ({status}){}; give credentials for {host} in \
         $DOCKER_CONFIG/config.json or ~/.docker/config.json (auths, credHelpers or credsStore)",
        detail(reason)
    )]
    Unauthorized { host: String, status: u16, reason: String },

    /// A token server's answer was not usable.
    #[error("the token server {url} gave no token")]
    Token { url: String },

    /// The Docker config file could not be read or parsed.
    #[error("cannot read the registry credentials in {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} failed for {host}")]
    Helper {
        helper: String,
        host: String,
        #[source]
        source: Box<HelperError>,
    },

    /// The CA file given with `--registry-ca` could not be used.
    #[error("cannot use {path} as a registry CA certificate")]
    Ca {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client")]
    Client {
        #[source]
        source: reqwest::Error,
    },

    /// A manifest or index is larger than kiln reads.
    #[error("{url} is larger than {limit} bytes, more than a manifest may be; refused")]
    TooLarge { url: String, limit: u64 },

    /// Bytes from the registry do not hash to the digest they were asked for by.
    #[error(
        "{url} sent bytes hashing to {found}, not {expected}; the registry is corrupt or \
             tampered with, nothing of it was kept"
    )]
    DigestMismatch { url: String, expected: Digest, found: Digest },

    /// Bytes from the registry are not as long as their descriptor says.
    #[error(
        "{url} sent {found} bytes where its descriptor says {expected}; nothing of it was \
             kept"
    )]
    SizeMismatch { url: String, expected: u64, found: u64 },

    /// A manifest or index from the registry (or the store) is not valid JSON of its kind.
    #[error("{what} is not a valid manifest or index")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// The fallback referrers index kept changing under kiln's writes.
    #[error(
        "the referrers index {url} kept changing while kiln updated it ({attempts} attempts); \
         another writer is updating it: push again"
    )]
    IndexContention { url: String, attempts: u32 },

    /// The scratch store of a registry-to-registry copy could not be made.
    #[error("cannot make a scratch store for the copy in the temporary folder")]
    Scratch {
        #[source]
        source: std::io::Error,
    },

    /// Signing for the destination failed.
    #[error(transparent)]
    Attest(#[from] kiln_attest::AttestError),

    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn detail(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

impl RegistryError {
    /// The error for a request that could not be sent or whose answer could not be read: a
    /// stall when the registry went silent for the whole stall timeout.
    pub(crate) fn transfer(method: String, url: String, source: reqwest::Error) -> RegistryError {
        if source.is_timeout() {
            RegistryError::Stalled { method, url, source }
        } else {
            RegistryError::Http { method, url, source }
        }
    }

    /// Whether trying again may succeed: a failed connection or a 429 or 5xx answer.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Http { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether this is bytes that are not what their digest or descriptor promises.
    pub fn is_integrity(&self) -> bool {
        match self {
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => true,
            RegistryError::Store(e) => e.is_damage(),
            RegistryError::Attest(e) => e.is_integrity(),
            _ => false,
        }
    }
}

/// The result type of the registry client.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

//! The one error type of the release crate: each variant names the release, channel, entry or
//! file involved.

use std::path::PathBuf;

use kiln_oci::Digest;

/// What went wrong with a release, a channel or a policy.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    /// Reading attestations or verifying the image failed.
    #[error(transparent)]
    Attest(#[from] kiln_attest::AttestError),
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] kiln_attest::KeyError),
    /// A DSSE envelope could not be made or opened.
    #[error(transparent)]
    Dsse(#[from] kiln_attest::dsse::DsseError),
    /// A document could not be serialised.
    #[error("cannot serialise a release document")]
    Json(#[from] serde_json::Error),

    /// The digest given as a release names something else.
    #[error("{digest} is not a kiln release: {reason}")]
    NotARelease { digest: Digest, reason: String },
    /// The image has no provenance, so the record could not name its recipe, lock and epoch.
    #[error(
        "image {image} has no provenance attached, so a release cannot name its recipe, lock \
         and epoch; build it with --sign KEY"
    )]
    NoProvenance { image: Digest },
    /// No attached provenance verifies, so nothing in one can be trusted.
    #[error(
        "no provenance of image {image} can be trusted, so a release cannot take its recipe, \
         lock and epoch from one: {detail}"
    )]
    ProvenanceUntrusted { image: Digest, detail: String },
    /// The image is not an index or manifest.
    #[error("{digest} is a {media_type}, not an image index or manifest")]
    NotAnImage { digest: Digest, media_type: String },
    /// A release record disagrees with the store, or the image fails verification.
    #[error("release {release} does not verify: {detail}")]
    Unverified { release: Digest, detail: String },

    /// A channel log was altered: an entry edited, deleted, reordered or signed by another key.
    #[error("channel {channel} is tampered with at entry {seq}: {reason}")]
    Tampered { channel: String, seq: u64, reason: String },
    /// The release was revoked.
    #[error("release {release} was revoked by key {actor} at {time}: {reason}")]
    Revoked { release: Digest, actor: String, time: String, reason: String },
    /// The policy refuses the promotion; nothing was appended.
    #[error("promotion of {release} into {channel} refused: {reason}; nothing was appended")]
    Refused { release: Digest, channel: String, reason: String },
    /// Writers kept taking the next entry first.
    #[error(
        "channel {channel}: {attempts} attempts in a row found the next entry taken by another \
         writer; nothing of ours was appended, retry"
    )]
    Contended { channel: String, attempts: u32 },

    /// A channel name or `CHANNEL/NAME` is malformed.
    #[error("{text:?} is not a valid {what}: {reason}")]
    InvalidName { what: &'static str, text: String, reason: String },
    /// The channel is not in the policy.
    #[error("channel {channel:?} is not in policy {}; it knows {}", path.display(), known.join(", "))]
    UnknownChannel { channel: String, path: PathBuf, known: Vec<String> },
    /// The policy file is not valid TOML of the expected shape (the message has line and column).
    #[error("policy {} is malformed", path.display())]
    PolicySyntax {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The policy parses but says something impossible.
    #[error("policy {}: {detail}", path.display())]
    PolicyInvalid { path: PathBuf, detail: String },
    /// A file could not be read or written.
    #[error("cannot access {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pin format is not one kiln renders.
    #[error("pin format {0:?} does not exist; use json, tfvars, k8s or env")]
    UnknownFormat(String),
}

impl ReleaseError {
    /// Whether this is evidence of corruption or tampering (exit code 4), rather than bad
    /// input or a refusal.
    pub fn is_integrity(&self) -> bool {
        match self {
            ReleaseError::Tampered { .. } | ReleaseError::Unverified { .. } => true,
            ReleaseError::Store(e) => e.is_damage(),
            ReleaseError::Attest(e) => e.is_integrity(),
            _ => false,
        }
    }
}

/// Result with [`ReleaseError`].
pub type Result<T, E = ReleaseError> = std::result::Result<T, E>;

//! Signatures, SBOMs and provenance for images in a kiln store, and the audit that checks
//! them all offline.
//!
//! A crate of its own so that the builder and the store stay free of cryptography: [`key`]
//! makes and reads P-256 and Ed25519 keys, [`cache_trust`] signs and trusts build cache entries, [`simple_signing`] and [`dsse`] are the signed
//! formats, [`sbom`] and [`provenance`] the documents, [`artifact`] attaches them to an image
//! as OCI 1.1 referrers, [`publish`] produces them for a stored image, [`build`] for a fresh
//! build, [`contents`] reads
//! layers back, [`source`] names the recipe without the host's paths, [`verify`] audits an image and [`compare`] explains why a rebuild differs.

pub mod artifact;
pub mod build;
pub mod cache_trust;
pub mod compare;
pub mod contents;
pub mod dsse;
pub mod key;
pub mod known_layers;
pub mod provenance;
pub mod publish;
pub mod sbom;
pub mod simple_signing;
pub mod source;
pub mod stored_layer;
pub mod verify;

pub use key::{KeyError, KeyId, KeyType, PrivateKey, PublicKey};

impl AttestError {
    /// Whether this is stored bytes that are not what their digest or descriptor promises.
    pub fn is_integrity(&self) -> bool {
        matches!(self, AttestError::Store(e) if e.is_damage())
    }
}

/// Why an attestation could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A DSSE envelope could not be made.
    #[error(transparent)]
    Dsse(#[from] dsse::DsseError),
    /// A layer could not be read back.
    #[error(transparent)]
    Contents(#[from] contents::ContentsError),
    /// A document could not be serialised.
    #[error("cannot serialise an attestation")]
    Json(#[from] serde_json::Error),
    /// The descriptor names something that is not an image.
    #[error("{digest} is a {media_type}, not an image index or manifest")]
    NotAnImage { digest: kiln_oci::Digest, media_type: String },
    /// The recipe or lock file of a build could not be read again to keep it.
    #[error("reading {} again to keep it in the provenance", .path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
}

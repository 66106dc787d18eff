//! Signing keys: ECDSA P-256 (cosign's default) and Ed25519, as PKCS#8 private and SPKI
//! public PEM files. A key is named by its key id, the sha256 of its SPKI DER encoding.
//!
//! ECDSA signatures are DER-encoded over sha256 of the message with RFC 6979 nonces, and
//! Ed25519 is deterministic by construction, so signing the same bytes twice gives the same
//! signature.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use kiln_oci::Digest;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::LineEnding;

/// The two supported algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA over NIST P-256 with SHA-256.
    P256,
    /// Ed25519 (pure, over the message bytes).
    Ed25519,
}

impl FromStr for KeyType {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "p256" | "ecdsa-p256" => Ok(KeyType::P256),
            "ed25519" => Ok(KeyType::Ed25519),
            other => Err(KeyError::UnknownType(other.to_string())),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::P256 => "ecdsa-p256",
            KeyType::Ed25519 => "ed25519",
        })
    }
}

/// Why a key could not be made, read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The `--type` is not one kiln knows.
    #[error("key type {0:?} is not supported; use p256 or ed25519")]
    UnknownType(String),
    /// The operating system's random source failed.
    #[error("cannot get random bytes for a new key: {0}")]
    Random(String),
    /// A key file could not be read.
    #[error("cannot read key file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A key file could not be created or written (it is never overwritten).
    #[error("cannot write key file {path}")]
    Write { path: PathBuf, source: std::io::Error },
    /// The file is not a PKCS#8 P-256 or Ed25519 private key in PEM form.
    #[error("{path} is not a PKCS#8 PEM private key of type P-256 or Ed25519")]
    NotPrivateKey { path: PathBuf },
    /// The file is not an SPKI P-256 or Ed25519 public key in PEM form.
    #[error("{path} is not an SPKI PEM public key (\"PUBLIC KEY\") of type P-256 or Ed25519")]
    NotPublicKey { path: PathBuf },
    /// A key could not be encoded.
    #[error("cannot encode the {what}: {message}")]
    Encode { what: &'static str, message: String },
}

/// The sha256 of a public key's SPKI DER encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct KeyId(pub Digest);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A private signing key. Its `Debug` shows only the key id, so it cannot leak into logs.
pub enum PrivateKey {
    /// ECDSA P-256.
    P256(p256::ecdsa::SigningKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.public().key_id() {
            Ok(id) => write!(f, "PrivateKey({} {id})", self.key_type()),
            Err(_) => write!(f, "PrivateKey({})", self.key_type()),
        }
    }
}

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(kind: KeyType) -> Result<PrivateKey, KeyError> {
        loop {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
            let key = match kind {
                KeyType::Ed25519 => {
                    Some(PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)))
                }
                // A scalar of zero or at least the group order (odds about 2^-32) is redrawn.
                KeyType::P256 => {
                    p256::ecdsa::SigningKey::from_slice(&seed).ok().map(PrivateKey::P256)
                }
            };
            if let Some(key) = key {
                return Ok(key);
            }
        }
    }

    /// The algorithm.
    pub fn key_type(&self) -> KeyType {
        match self {
            PrivateKey::P256(_) => KeyType::P256,
            PrivateKey::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
            PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
        }
    }

    /// Signs `message`: DER ECDSA over sha256(message), or Ed25519 over the message.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            PrivateKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                sig.to_der().as_bytes().to_vec()
            }
            PrivateKey::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
        }
    }

    /// Reads a PKCS#8 PEM private key file of either type.
    pub fn read(path: &Path) -> Result<PrivateKey, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(&text) {
            return Ok(PrivateKey::P256(k));
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(&text) {
            return Ok(PrivateKey::Ed25519(k));
        }
        Err(KeyError::NotPrivateKey { path: path.to_path_buf() })
    }

    /// Writes the private key to `path` as PKCS#8 PEM, creating the file with mode 0600 so it
    /// is never readable by others, not even for a moment. An existing file is an error.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        let pem = match self {
            PrivateKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            // PKCS#8 v1 (the private key alone): OpenSSL 3 refuses the v2 form that
            // ed25519-dalek writes with the public key attached.
            PrivateKey::Ed25519(k) => {
                ed25519_dalek::pkcs8::KeypairBytes { secret_key: k.to_bytes(), public_key: None }
                    .to_pkcs8_pem(LineEnding::LF)
            }
        }
        .map_err(|e| KeyError::Encode { what: "private key", message: e.to_string() })?;
        create_file(path, 0o600, pem.as_bytes())
    }
}

/// A public verification key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// ECDSA P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// The algorithm.
    pub fn key_type(&self) -> KeyType {
        match self {
            PublicKey::P256(_) => KeyType::P256,
            PublicKey::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// The SPKI DER encoding.
    pub fn spki_der(&self) -> Result<Vec<u8>, KeyError> {
        match self {
            PublicKey::P256(k) => k.to_public_key_der(),
            PublicKey::Ed25519(k) => k.to_public_key_der(),
        }
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| KeyError::Encode { what: "public key", message: e.to_string() })
    }

    /// The SPKI PEM encoding (`-----BEGIN PUBLIC KEY-----`).
    pub fn spki_pem(&self) -> Result<String, KeyError> {
        match self {
            PublicKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::Ed25519(k) => k.to_public_key_pem(LineEnding::LF),
        }
        .map_err(|e| KeyError::Encode { what: "public key", message: e.to_string() })
    }

    /// sha256 of the SPKI DER encoding.
    pub fn key_id(&self) -> Result<KeyId, KeyError> {
        Ok(KeyId(Digest::of(&self.spki_der()?)))
    }

    /// Whether `signature` is this key's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| k.verify(message, &sig).is_ok()),
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verify_strict(message, &sig).is_ok()),
        }
    }

    /// Reads an SPKI PEM public key file of either type.
    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
        PublicKey::from_pem(&text)
            .ok_or_else(|| KeyError::NotPublicKey { path: path.to_path_buf() })
    }

    /// Parses an SPKI PEM public key of either type, as [`PublicKey::spki_pem`] writes it.
    pub fn from_pem(text: &str) -> Option<PublicKey> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(text) {
            return Some(PublicKey::P256(k));
        }
        ed25519_dalek::VerifyingKey::from_public_key_pem(text).ok().map(PublicKey::Ed25519)
    }

    /// Writes the public key to `path` as SPKI PEM; an existing file is an error.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        create_file(path, 0o644, self.spki_pem()?.as_bytes())
    }
}

/// Creates `path` (never replacing a file) with `mode` from the start, and writes `bytes`.
fn create_file(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), KeyError> {
    let err = |source| KeyError::Write { path: path.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_deterministic_and_verify() {
        for kind in [KeyType::P256, KeyType::Ed25519] {
            let key = PrivateKey::generate(kind).unwrap();
            let a = key.sign(b"payload");
            assert_eq!(a, key.sign(b"payload"), "{kind}");
            assert!(key.public().verify(b"payload", &a));
            assert!(!key.public().verify(b"payloaD", &a));
            let other = PrivateKey::generate(kind).unwrap();
            assert!(!other.public().verify(b"payload", &a));
        }
    }

    #[test]
    fn key_files_round_trip_and_private_is_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        for kind in [KeyType::P256, KeyType::Ed25519] {
            let key = PrivateKey::generate(kind).unwrap();
            let (k, p) =
                (dir.path().join(format!("{kind}.key")), dir.path().join(format!("{kind}.pub")));
            key.write(&k).unwrap();
            key.public().write(&p).unwrap();
            assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
            let back = PrivateKey::read(&k).unwrap();
            assert_eq!(back.public(), key.public());
            assert_eq!(PublicKey::read(&p).unwrap(), key.public());
            assert!(key.write(&k).is_err(), "an existing key is never overwritten");
            assert!(!format!("{key:?}").contains("PRIVATE"));
        }
    }
}

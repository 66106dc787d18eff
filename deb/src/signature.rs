//! OpenPGP checks of a repository's `InRelease` (clearsigned) or `Release` + `Release.gpg`
//! (detached), against the keys a recipe trusts. Only the signed text is ever returned, so
//! nothing outside the signature reaches a parser.

use pgp::composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::Signature;
use pgp::types::KeyDetails;

/// The public keys one repository is trusted under (primary keys and their signing subkeys).
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

/// Why a key file or a signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the key file holds no OpenPGP public key")]
    NoKey,
    #[error("the key file is not an OpenPGP public key (armored or binary)")]
    Key(#[source] pgp::errors::Error),
    #[error("it is not a clearsigned message")]
    Clearsigned(#[source] pgp::errors::Error),
    #[error("it is not an OpenPGP signature")]
    Detached(#[source] pgp::errors::Error),
    #[error("no signature on it was made by a trusted key ({fingerprints})")]
    Untrusted { fingerprints: String },
}

impl Keyring {
    /// Reads every public key of an armored (`.asc`) or binary (`.gpg`) key file.
    pub fn parse(bytes: &[u8]) -> Result<Keyring, SignatureError> {
        let armored = bytes.trim_ascii_start().starts_with(b"-----BEGIN");
        let keys: Vec<SignedPublicKey> = if armored {
            let (keys, _headers) =
                SignedPublicKey::from_armor_many(bytes).map_err(SignatureError::Key)?;
            keys.collect::<Result<_, _>>().map_err(SignatureError::Key)?
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(SignatureError::Key)?
                .collect::<Result<_, _>>()
                .map_err(SignatureError::Key)?
        };
        if keys.is_empty() {
            return Err(SignatureError::NoKey);
        }
        for key in &keys {
            key.verify_bindings().map_err(SignatureError::Key)?;
        }
        Ok(Keyring { keys })
    }

    /// Primary key fingerprints, for messages.
    pub fn fingerprints(&self) -> String {
        self.keys.iter().map(|k| format!("{}", k.fingerprint())).collect::<Vec<_>>().join(", ")
    }

    /// Whether a trusted key or subkey made one of `signatures` over `data`.
    fn verifies<'a>(
        &self,
        signatures: impl Iterator<Item = &'a Signature> + Clone,
        data: &[u8],
    ) -> bool {
        self.keys.iter().any(|key| {
            signatures.clone().any(|sig| {
                sig.verify(&key.primary_key, data).is_ok()
                    || key.public_subkeys.iter().any(|sub| sig.verify(&sub.key, data).is_ok())
            })
        })
    }

    /// Verifies a clearsigned `InRelease` and returns its signed text (with `\n` endings).
    pub fn verify_clearsigned(&self, text: &str) -> Result<String, SignatureError> {
        let (message, _headers) =
            CleartextSignedMessage::from_string(text).map_err(SignatureError::Clearsigned)?;
        let signed = message.signed_text();
        if !self.verifies(message.signatures().iter(), signed.as_bytes()) {
            return Err(SignatureError::Untrusted { fingerprints: self.fingerprints() });
        }
        Ok(signed.replace("\r\n", "\n"))
    }

    /// Verifies a detached signature (`Release.gpg`, armored or binary) over `data`.
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let signatures: Vec<DetachedSignature> =
            if signature.trim_ascii_start().starts_with(b"-----BEGIN") {
                let (sigs, _) = DetachedSignature::from_armor_many(signature)
                    .map_err(SignatureError::Detached)?;
                sigs.collect::<Result<_, _>>().map_err(SignatureError::Detached)?
            } else {
                DetachedSignature::from_bytes_many(signature)
                    .map_err(SignatureError::Detached)?
                    .collect::<Result<_, _>>()
                    .map_err(SignatureError::Detached)?
            };
        if self.verifies(signatures.iter().map(|s| &s.signature), data) {
            Ok(())
        } else {
            Err(SignatureError::Untrusted { fingerprints: self.fingerprints() })
        }
    }
}

//! DSSE envelopes (Dead Simple Signing Envelope v1): a payload, its type, and signatures over
//! the pre-authentication encoding (PAE) of both, so changing the type breaks every signature.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::key::{KeyError, PrivateKey, PublicKey};

/// The media type of a DSSE envelope stored as a blob.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// A signed envelope as JSON: `payload` and `sig` are standard base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// base64 of the payload bytes.
    pub payload: String,
    /// What the payload is, e.g. `application/vnd.in-toto+json`.
    pub payload_type: String,
    /// One signature per signer.
    pub signatures: Vec<Signature>,
}

/// One signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's key id (sha256 of its SPKI DER).
    pub keyid: String,
    /// base64 of the signature over PAE(payloadType, payload).
    pub sig: String,
}

/// Why an envelope could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DsseError {
    /// A base64 field is not valid base64.
    #[error("DSSE envelope field {field} is not valid base64")]
    Base64 { field: &'static str },
    /// The signer's key could not be encoded to compute its id.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// `DSSEv1 <len(type)> <type> <len(body)> <body>`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out =
        format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Signs `payload` of `payload_type` with `key`.
    pub fn sign(
        payload_type: &str,
        payload: &[u8],
        key: &PrivateKey,
    ) -> Result<Envelope, DsseError> {
        let sig = key.sign(&pae(payload_type, payload));
        Ok(Envelope {
            payload: BASE64.encode(payload),
            payload_type: payload_type.to_string(),
            signatures: vec![Signature {
                keyid: key.public().key_id()?.to_string(),
                sig: BASE64.encode(sig),
            }],
        })
    }

    /// The decoded payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DsseError> {
        BASE64.decode(&self.payload).map_err(|_| DsseError::Base64 { field: "payload" })
    }

    /// Whether any signature verifies with `key` over PAE(payloadType, payload).
    pub fn verified_by(&self, key: &PublicKey) -> Result<bool, DsseError> {
        let message = pae(&self.payload_type, &self.payload_bytes()?);
        for s in &self.signatures {
            let sig = BASE64
                .decode(&s.sig)
                .map_err(|_| DsseError::Base64 { field: "signatures[].sig" })?;
            if key.verify(&message, &sig) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyType;

    #[test]
    fn pae_matches_the_spec_example() {
        // The worked example of the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn changing_the_payload_type_breaks_the_signature() {
        let key = PrivateKey::generate(KeyType::Ed25519).unwrap();
        let mut env = Envelope::sign("application/vnd.in-toto+json", b"{}", &key).unwrap();
        assert!(env.verified_by(&key.public()).unwrap());
        env.payload_type = "application/json".into();
        assert!(!env.verified_by(&key.public()).unwrap());
    }
}

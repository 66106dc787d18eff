//! Statements kiln signs for releases (channel entries, approvals, revocations): canonical
//! JSON in a DSSE envelope, stored as the envelope's canonical JSON.

use kiln_attest::dsse::Envelope;
use kiln_attest::{PrivateKey, PublicKey};
use kiln_oci::Digest;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Result;

/// The stored bytes of `statement` signed by `key` as `payload_type`.
pub(crate) fn seal<T: Serialize>(
    payload_type: &str,
    statement: &T,
    key: &PrivateKey,
) -> Result<Vec<u8>> {
    let body = kiln_oci::to_canonical_json(statement)?;
    Ok(kiln_oci::to_canonical_json(&Envelope::sign(payload_type, &body, key)?)?)
}

/// An opened envelope: the statement and the envelope, not yet checked against any key.
pub(crate) struct Opened<T> {
    pub statement: T,
    pub envelope: Envelope,
}

/// Parses stored bytes as an envelope of `payload_type` holding a `T`; the error says what
/// is wrong, for the caller to put in context.
pub(crate) fn open<T: DeserializeOwned>(
    bytes: &[u8],
    payload_type: &str,
) -> std::result::Result<Opened<T>, String> {
    let envelope: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("not a DSSE envelope: {e}"))?;
    if envelope.payload_type != payload_type {
        return Err(format!(
            "payloadType is {:?}, expected {payload_type:?}",
            envelope.payload_type
        ));
    }
    let body = envelope.payload_bytes().map_err(|e| e.to_string())?;
    let statement = serde_json::from_slice(&body).map_err(|e| format!("payload: {e}"))?;
    Ok(Opened { statement, envelope })
}

/// The id of the key among `keys` that signed `envelope`, if any.
pub(crate) fn signer(envelope: &Envelope, keys: &[PublicKey]) -> Option<Digest> {
    keys.iter()
        .find(|k| envelope.verified_by(k).unwrap_or(false))
        .and_then(|k| k.key_id().ok())
        .map(|id| id.0)
}

/// The key id of a public key, as a digest.
pub(crate) fn key_id(key: &PublicKey) -> Result<Digest> {
    Ok(key.key_id()?.0)
}

/// Now, as RFC 3339 UTC seconds: entries record when an action happened (never hashed into
/// an image, only into the signed history).
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

//! Signing and trusting build cache entries with kiln's keys, as DSSE signatures over the
//! entry's canonical record under `application/vnd.kiln.cache-entry.v1+json`. A runner signs
//! what it writes; a build given trusted public keys uses only entries one of them signed.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kiln_store::cache::{CacheSigner, CacheTrust, EntrySignature, PAYLOAD_TYPE};

use crate::dsse::pae;
use crate::key::{KeyError, KeyId, PrivateKey, PublicKey};

/// A private key that signs the cache entries a build writes.
pub struct CacheSigningKey {
    key: PrivateKey,
    id: KeyId,
}

impl CacheSigningKey {
    /// Wraps `key`, computing its id once.
    pub fn new(key: PrivateKey) -> Result<CacheSigningKey, KeyError> {
        let id = key.public().key_id()?;
        Ok(CacheSigningKey { key, id })
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        self.id
    }
}

impl CacheSigner for CacheSigningKey {
    fn sign_entry(&self, payload: &[u8]) -> EntrySignature {
        let sig = self.key.sign(&pae(PAYLOAD_TYPE, payload));
        EntrySignature { keyid: self.id.0, sig: BASE64.encode(sig) }
    }
}

/// The public keys whose cache entries a build believes.
pub struct TrustedCacheKeys {
    keys: Vec<(KeyId, PublicKey)>,
}

impl TrustedCacheKeys {
    /// Trusts exactly `keys`.
    pub fn new(keys: Vec<PublicKey>) -> Result<TrustedCacheKeys, KeyError> {
        let keys = keys.into_iter().map(|k| Ok((k.key_id()?, k))).collect::<Result<_, _>>()?;
        Ok(TrustedCacheKeys { keys })
    }

    /// The trusted keys' ids, in the order given.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }
}

impl CacheTrust for TrustedCacheKeys {
    fn vouches(&self, signature: &EntrySignature, payload: &[u8]) -> bool {
        let Ok(sig) = BASE64.decode(&signature.sig) else { return false };
        let message = pae(PAYLOAD_TYPE, payload);
        self.keys.iter().any(|(id, key)| id.0 == signature.keyid && key.verify(&message, &sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyType;

    #[test]
    fn only_trusted_keys_vouch_and_only_for_what_they_signed() {
        let ours = PrivateKey::generate(KeyType::Ed25519).unwrap();
        let theirs = PrivateKey::generate(KeyType::P256).unwrap();
        let trust = TrustedCacheKeys::new(vec![ours.public()]).unwrap();
        let signed = CacheSigningKey::new(ours).unwrap().sign_entry(b"record");
        assert!(trust.vouches(&signed, b"record"));
        assert!(!trust.vouches(&signed, b"recorD"));
        let other = CacheSigningKey::new(theirs).unwrap().sign_entry(b"record");
        assert!(!trust.vouches(&other, b"record"));
        // A trusted key id on someone else's signature is still refused.
        let forged = EntrySignature { keyid: signed.keyid, sig: other.sig };
        assert!(!trust.vouches(&forged, b"record"));
    }
}

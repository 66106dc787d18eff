//! Referrers under `referrers/<subject-hex>/<artifact-hex>`: what points at a manifest or
//! index through an OCI 1.1 `subject` (signatures, SBOMs, provenance). Each entry holds the
//! canonical JSON descriptor of the artifact manifest and is written once.

use kiln_oci::{to_canonical_json, Descriptor, Digest};
use object_store::path::Path as Key;

use crate::error::{Result, StoreError};
use crate::{key, Store};

impl Store {
    /// Records that the artifact manifest `artifact` refers to `subject`. The manifest blob
    /// must already be stored. Returns false when the entry was already there.
    pub async fn put_referrer(&self, subject: &Digest, artifact: &Descriptor) -> Result<bool> {
        let key = Key::from(format!("{}/{}", key::referrers(subject), artifact.digest.hex()));
        let json = to_canonical_json(artifact)
            .map_err(|source| StoreError::Json { key: key.to_string(), source })?;
        self.create(&key, json.into()).await
    }

    /// The descriptors of every artifact manifest that refers to `subject`, sorted by digest.
    /// An entry whose key and content disagree is refused, never trusted.
    pub async fn referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>> {
        let mut out = Vec::new();
        for entry in self.list_under(key::referrers(subject).as_ref()).await? {
            let Some(bytes) = self.read_object(&entry.key).await? else { continue };
            let desc: Descriptor = serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Json { key: entry.key.to_string(), source })?;
            let named = entry.key.parts().last().map(|p| p.as_ref().to_string());
            if named.as_deref() != Some(desc.digest.hex().as_str()) {
                return Err(StoreError::ReferrerKey {
                    key: entry.key.to_string(),
                    found: desc.digest,
                });
            }
            out.push(desc);
        }
        out.sort_by_key(|d| d.digest);
        Ok(out)
    }
}

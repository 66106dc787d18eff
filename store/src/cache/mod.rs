//! Build cache entries under `cache/<kind>/<key-hex>`: what output was made from an input key.
//!
//! An entry is a hint, never an authority: anyone who can write `cache/` can write one. So an
//! entry names the key it was computed from (a swapped or renamed entry is refused), the full
//! descriptor of its output (its size is checked against the stored blob with one HEAD before
//! use) and, for a layer, its diff_id; and it may carry signatures by the runners that wrote it.
//! A reader given trusted keys ([`CacheTrust`]) uses only entries one of them signed, so a
//! writer of `cache/` without a trusted private key can only cause rebuilds. The signing itself
//! lives outside the store ([`CacheSigner`] and [`CacheTrust`] are implemented by kiln-attest),
//! which keeps the store free of cryptography.
//!
//! Entries are replaceable and safe to delete, so writes overwrite, except that an unsigned
//! entry never replaces a signed one ([`Store::put_cache_entry`]).

pub mod check;

use std::time::SystemTime;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kiln_oci::{Descriptor, Digest};
use object_store::PutMode;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::heal::{Quarantined, Reuse, Wanted};
use crate::lease::Lease;
use crate::{key, Store};

/// The payload type signed entries are signed under (the DSSE pre-authentication encoding
/// binds it, so a signature over anything else never verifies as an entry's).
pub const PAYLOAD_TYPE: &str = "application/vnd.kiln.cache-entry.v1+json";

/// What an entry promises: `output` was made from `key` (and, for a layer, has `diff_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheRecord {
    /// The cache kind (`layer`, `disk`, ...), the entry's folder.
    pub kind: String,
    /// The digest of everything the output was computed from: the entry's name.
    pub key: Digest,
    /// The stored blob the entry stands for.
    pub output: Descriptor,
    /// For a layer: the digest of its uncompressed tar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
}

impl CacheRecord {
    /// The canonical JSON bytes that signatures cover.
    pub fn payload(&self) -> Result<Vec<u8>> {
        kiln_oci::to_canonical_json(self).map_err(|source| StoreError::Json {
            key: key::cache(&self.kind, &self.key).to_string(),
            source,
        })
    }
}

/// One signature over an entry's [`CacheRecord::payload`] under [`PAYLOAD_TYPE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySignature {
    /// The signer's key id (sha256 of its public key's SPKI DER).
    pub keyid: Digest,
    /// The signature, as the signer encodes it (base64 for kiln's keys).
    pub sig: String,
}

/// The stored form of an entry.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEntry {
    record: CacheRecord,
    #[serde(default)]
    signatures: Vec<EntrySignature>,
}

/// Signs entries as they are written.
pub trait CacheSigner: Send + Sync {
    /// A signature over `payload` (a [`CacheRecord::payload`]) under [`PAYLOAD_TYPE`].
    fn sign_entry(&self, payload: &[u8]) -> EntrySignature;
}

/// Decides which signatures to believe.
pub trait CacheTrust: Send + Sync {
    /// Whether `signature` is a trusted key's valid signature over `payload`.
    fn vouches(&self, signature: &EntrySignature, payload: &[u8]) -> bool;
}

/// Why an entry was not used. Every refusal is a miss for the build (the output is made
/// again and the entry replaced); `store check` reports the ones that are damage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Refusal {
    /// Not an entry at all (bad JSON, unknown fields, an older format).
    #[error("not a well-formed cache entry: {error}")]
    Malformed { error: String },
    /// The entry was made from another key or kind than its name says (a swapped entry).
    #[error("the entry describes {found_kind} key {found}, not this one")]
    #[serde(rename_all = "camelCase")]
    WrongKey { found_kind: String, found: Digest },
    /// Trusted keys were given, and no signature on the entry is by one of them.
    #[error("no trusted key signed it ({signatures} signature(s) by other keys or invalid)")]
    Untrusted { signatures: usize },
    /// The blob the entry names is not stored.
    #[error("its blob {digest} is not in the store")]
    MissingBlob { digest: Digest },
    /// The blob is stored with another size than the entry records.
    #[error("it records {recorded} bytes for {digest}, the store holds {stored}")]
    WrongSize { digest: Digest, recorded: u64, stored: u64 },
    /// The layer blob decompresses to another diff_id than the entry records.
    #[error("it records diff_id {recorded} for {digest}, which decompresses to {found}")]
    WrongDiffId { digest: Digest, recorded: Digest, found: Digest },
    /// The blob the entry names cannot be read as a layer of its media type.
    #[error("its blob {digest} is not a readable layer: {error}")]
    UnreadableLayer { digest: Digest, error: String },
    /// The blob did not hash to its digest; it was moved aside (see [`crate::heal`]).
    #[error("its blob was corrupt: {quarantined}")]
    CorruptBlob { quarantined: Quarantined },
}

/// What a cache lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLookup {
    /// No entry.
    Miss,
    /// A usable entry; `vouched_by` is the trusted key that signed it, when trust was asked.
    Hit { record: Box<CacheRecord>, vouched_by: Option<Digest> },
    /// An entry that must not be used.
    Refused(Refusal),
}

/// Whether the stored entry `bytes` is about `record`'s kind and key and carries a signature
/// (whoever made it: the store cannot check signatures, a reader with trusted keys does).
fn signed_entry_about(bytes: &[u8], record: &CacheRecord) -> bool {
    serde_json::from_slice::<StoredEntry>(bytes).is_ok_and(|stored| {
        !stored.signatures.is_empty()
            && stored.record.kind == record.kind
            && stored.record.key == record.key
    })
}

/// Accepts `[a-z0-9-]+`, so a kind is always one plain key segment.
fn check_kind(kind: &str) -> Result<()> {
    let ok = !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidCacheKind { kind: kind.to_string() })
    }
}

/// Decodes the entry stored as `cache/<kind>/<key>` and checks that it is about that key;
/// with `trust`, also that a trusted key signed it (returning that key's id).
pub fn open_entry(
    kind: &str,
    key: &Digest,
    bytes: &[u8],
    trust: Option<&dyn CacheTrust>,
) -> std::result::Result<(CacheRecord, Option<Digest>), Refusal> {
    let entry: StoredEntry =
        serde_json::from_slice(bytes).map_err(|e| Refusal::Malformed { error: e.to_string() })?;
    let record = entry.record;
    if record.kind != kind || record.key != *key {
        return Err(Refusal::WrongKey { found_kind: record.kind, found: record.key });
    }
    let Some(trust) = trust else { return Ok((record, None)) };
    // Signatures cover the canonical form, so re-encoding the decoded record is exact.
    let payload = kiln_oci::to_canonical_json(&record)
        .map_err(|e| Refusal::Malformed { error: e.to_string() })?;
    match entry.signatures.iter().find(|s| trust.vouches(s, &payload)) {
        Some(signature) => Ok((record, Some(signature.keyid))),
        None => Err(Refusal::Untrusted { signatures: entry.signatures.len() }),
    }
}

impl Store {
    /// Looks up `keys` in `kind`, in order, concurrently (on a remote store each is a round
    /// trip). A hit is an entry that is well formed, about its key, signed by a trusted key
    /// when `trust` is given, and whose blob is stored with the size it records and not
    /// written after the entry (one HEAD). A blob failing that, or every blob when `content`
    /// is set, is re-hashed, and quarantined if corrupt ([`Store::check_reuse`]). With a
    /// `lease`, the blobs the entries name are leased beside their HEAD, so a hit's blob is
    /// kept by gc once this returns (one a gc took before is found gone before tagging,
    /// [`Store::confirm_image_except`]).
    pub async fn cache_lookups(
        &self,
        kind: &str,
        keys: &[Digest],
        trust: Option<&dyn CacheTrust>,
        lease: Option<&Lease>,
        content: bool,
    ) -> Result<Vec<CacheLookup>> {
        check_kind(kind)?;
        let opened: Vec<(CacheLookup, Option<SystemTime>)> = futures::stream::iter(keys)
            .map(|k| self.open_cache_entry(kind, k, trust))
            .buffered(crate::blob::SMALL_REQUESTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let named: Vec<Digest> = opened
            .iter()
            .filter_map(|(l, _)| match l {
                CacheLookup::Hit { record, .. } => Some(record.output.digest),
                _ => None,
            })
            .collect();
        let leased = async {
            match lease {
                Some(lease) => lease.add(&named).await,
                None => Ok(()),
            }
        };
        // One judgement over every hit's blob: HEADs concurrently, re-hashes where needed.
        let wanted: Vec<Wanted> = opened
            .iter()
            .filter_map(|(lookup, written)| match lookup {
                CacheLookup::Hit { record, .. } => Some(Wanted {
                    digest: record.output.digest,
                    size: record.output.size,
                    vouched: *written,
                }),
                _ => None,
            })
            .collect();
        // Beside the lease record: a hit is used only once named, and a blob a gc took
        // meanwhile is looked for again before the image is tagged.
        let (leased, verdicts) = futures::join!(leased, self.check_reuse(&wanted, content));
        leased?;
        let mut verdicts = verdicts?.into_iter();
        Ok(opened
            .into_iter()
            .map(|(lookup, _)| {
                let CacheLookup::Hit { record, .. } = &lookup else { return lookup };
                let (digest, recorded) = (record.output.digest, record.output.size);
                let refusal = match verdicts.next() {
                    Some(Reuse::Sound) => return lookup,
                    None | Some(Reuse::Missing) => Refusal::MissingBlob { digest },
                    Some(Reuse::WrongRecord { size }) => {
                        Refusal::WrongSize { digest, recorded, stored: size }
                    }
                    Some(Reuse::Quarantined(quarantined)) => Refusal::CorruptBlob { quarantined },
                };
                CacheLookup::Refused(refusal)
            })
            .collect())
    }

    /// The entry for `key`, opened but its blob not yet checked, with when it was written
    /// (the backend's clock): a blob written after the entry was replaced since.
    async fn open_cache_entry(
        &self,
        kind: &str,
        key: &Digest,
        trust: Option<&dyn CacheTrust>,
    ) -> Result<(CacheLookup, Option<SystemTime>)> {
        let path = key::cache(kind, key);
        let (bytes, written) = match self.inner.get(&path).await {
            Ok(got) => {
                let written = got.meta.last_modified.into();
                (got.bytes().await.map_err(|e| StoreError::backend(&path, e))?, written)
            }
            Err(object_store::Error::NotFound { .. }) => return Ok((CacheLookup::Miss, None)),
            Err(source) => return Err(StoreError::backend(&path, source)),
        };
        let lookup = match open_entry(kind, key, &bytes, trust) {
            Ok((record, vouched_by)) => CacheLookup::Hit { record: Box::new(record), vouched_by },
            Err(refusal) => CacheLookup::Refused(refusal),
        };
        Ok((lookup, Some(written)))
    }

    /// Whether the blob `output` names is stored with its size (one HEAD, no read).
    pub(crate) async fn output_stored(
        &self,
        output: &Descriptor,
    ) -> Result<std::result::Result<(), Refusal>> {
        let blob = key::blob(&output.digest);
        let stored = match self.inner.head(&blob).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Err(Refusal::MissingBlob { digest: output.digest }))
            }
            Err(source) => return Err(StoreError::backend(&blob, source)),
        };
        if stored != output.size {
            return Ok(Err(Refusal::WrongSize {
                digest: output.digest,
                recorded: output.size,
                stored,
            }));
        }
        Ok(Ok(()))
    }

    /// Stores `record` under its kind and key, signed by `signer` if given. A signed entry
    /// replaces any previous one. An unsigned one never replaces a signed entry about the
    /// same key: a build without a signing key must not strip the signatures other builds
    /// trust (a signed entry that went bad is deleted by gc or replaced by a signed build).
    /// It is written create-only first, since a build writes an entry where its lookup found
    /// none (one request); only where one is stored is it read, and replaced unless signed.
    /// An unsigned entry signed while this one was written can still be replaced, and is
    /// written again by the next signed build.
    pub async fn put_cache_entry(
        &self,
        record: CacheRecord,
        signer: Option<&dyn CacheSigner>,
    ) -> Result<()> {
        check_kind(&record.kind)?;
        let path = key::cache(&record.kind, &record.key);
        let signatures = match signer {
            Some(signer) => vec![signer.sign_entry(&record.payload()?)],
            None => Vec::new(),
        };
        let signed = !signatures.is_empty();
        let stored = StoredEntry { record, signatures };
        let bytes = Bytes::from(
            kiln_oci::to_canonical_json(&stored)
                .map_err(|source| StoreError::Json { key: path.to_string(), source })?,
        );
        let put = |mode: PutMode| self.put_entry(&path, bytes.clone(), mode);
        if signed {
            return put(PutMode::Overwrite).await;
        }
        match self.inner.put_opts(&path, bytes.clone().into(), PutMode::Create.into()).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(StoreError::backend(&path, e)),
        }
        match self.read_object(&path).await? {
            Some(found) if signed_entry_about(&found, &stored.record) => Ok(()),
            // Unsigned, or no entry about this key: replaced. One deleted meanwhile is
            // written again.
            _ => put(PutMode::Overwrite).await,
        }
    }

    async fn put_entry(
        &self,
        path: &object_store::path::Path,
        bytes: Bytes,
        mode: PutMode,
    ) -> Result<()> {
        match self.inner.put_opts(path, bytes.into(), mode.into()).await {
            // Another build stored an entry for the key meanwhile: it is kept.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(StoreError::backend(path, e)),
        }
    }
}

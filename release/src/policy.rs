//! The promotion policy: a TOML file the release engineers keep in their own repository (not
//! in the store), saying which keys sign images, and per channel which channel a release must
//! already be in, which keys may promote into it and how many distinct approvals it needs:
//!
//! ```toml
//! signers = ["keys/build.pub"]          # image signatures and provenance trusted by promote
//!
//! [channels.dev]
//! keys = ["keys/ci.pub"]
//!
//! [channels.prod]
//! after = "staging"
//! keys = ["keys/release.pub"]
//! approvals = 2
//! approvers = ["keys/alice.pub", "keys/bob.pub", "keys/carol.pub"]
//! ```
//!
//! Key paths are relative to the policy file. The policy's digest, recorded in every entry,
//! is the sha256 of its document (`kiln.policy/v1`): its canonical JSON with keys resolved to
//! key ids, and each key's SPKI PEM by id, so it changes when a key file's content does, and
//! not when a comment does. Promotion stores that document at `log/_policies/<hex>`, so an
//! audit re-checks every entry against the policy it was written under, whatever policy file
//! the auditor holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kiln_attest::PublicKey;
use kiln_oci::Digest;
use kiln_store::Store;
use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;
use crate::{ReleaseError, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    signers: Vec<String>,
    #[serde(default)]
    revokers: Vec<String>,
    channels: BTreeMap<String, ChannelFile>,
}

/// The document's `schema`.
pub const POLICY_SCHEMA: &str = "kiln.policy/v1";
/// A policy document is a few keys and rules.
const POLICY_LIMIT: u64 = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelFile {
    after: Option<String>,
    keys: Vec<String>,
    #[serde(default)]
    approvals: u32,
    #[serde(default)]
    approvers: Vec<String>,
}

/// One channel's rules.
pub struct ChannelPolicy {
    /// The channel a release must have been promoted into first.
    pub after: Option<ChannelName>,
    /// Who may promote into, roll back or sign entries of this channel.
    pub keys: Vec<PublicKey>,
    /// Distinct approvals needed.
    pub approvals: u32,
    /// Whose approvals count.
    pub approvers: Vec<PublicKey>,
}

/// A loaded policy.
pub struct Policy {
    /// The file it was read from, or where in the store it was recorded.
    pub path: PathBuf,
    /// sha256 of [`Policy::document`].
    pub digest: Digest,
    /// The canonical JSON document (`kiln.policy/v1`) the digest is of.
    pub document: Vec<u8>,
    /// Keys whose image signatures and provenance promotion accepts.
    pub signers: Vec<PublicKey>,
    /// Keys that may revoke a release.
    pub revokers: Vec<PublicKey>,
    pub channels: BTreeMap<ChannelName, ChannelPolicy>,
}

/// The policy as stored and hashed: key ids instead of paths, and each key's PEM by id.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    schema: String,
    signers: Vec<Digest>,
    revokers: Vec<Digest>,
    channels: BTreeMap<String, ResolvedChannel>,
    /// SPKI PEM of every key named above, by key id.
    keys: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResolvedChannel {
    after: Option<String>,
    keys: Vec<Digest>,
    approvals: u32,
    approvers: Vec<Digest>,
}

impl Policy {
    /// Reads and checks the policy at `path`.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ReleaseError::File { path: path.to_path_buf(), source })?;
        Policy::parse(path, &text)
    }

    /// Parses policy `text` read from `path` (key paths are relative to its folder).
    pub fn parse(path: &Path, text: &str) -> Result<Policy> {
        let file: PolicyFile = toml::from_str(text).map_err(|source| {
            ReleaseError::PolicySyntax { path: path.to_path_buf(), source: Box::new(source) }
        })?;
        let invalid =
            |detail: String| ReleaseError::PolicyInvalid { path: path.to_path_buf(), detail };
        let dir = path.parent().unwrap_or(Path::new("."));
        let read_keys = |field: &str, list: &[String]| -> Result<Vec<PublicKey>> {
            list.iter()
                .map(|p| {
                    PublicKey::read(&dir.join(p))
                        .map_err(|e| invalid(format!("{field}: key {p:?}: {e}")))
                })
                .collect()
        };
        let ids = |keys: &[PublicKey]| -> Result<Vec<Digest>> {
            let mut ids = keys.iter().map(crate::signed::key_id).collect::<Result<Vec<_>>>()?;
            ids.sort();
            ids.dedup();
            Ok(ids)
        };
        let mut pems = BTreeMap::new();
        let mut remember = |keys: &[PublicKey]| -> Result<()> {
            for k in keys {
                pems.insert(crate::signed::key_id(k)?.to_string(), k.spki_pem()?);
            }
            Ok(())
        };
        let signers = read_keys("signers", &file.signers)?;
        remember(&signers)?;
        let revokers = read_keys("revokers", &file.revokers)?;
        remember(&revokers)?;
        let mut resolved = Document {
            schema: POLICY_SCHEMA.to_string(),
            signers: ids(&signers)?,
            revokers: ids(&revokers)?,
            channels: BTreeMap::new(),
            keys: BTreeMap::new(),
        };
        let mut channels = BTreeMap::new();
        for (name, c) in &file.channels {
            let channel: ChannelName =
                name.parse().map_err(|e| invalid(format!("[channels.{name}]: {e}")))?;
            let after = match &c.after {
                None => None,
                Some(a) if file.channels.contains_key(a) && a != name => Some(a.parse()?),
                Some(a) => {
                    return Err(invalid(format!(
                        "[channels.{name}] after = {a:?} names no other channel of the policy"
                    )))
                }
            };
            let keys = read_keys(&format!("[channels.{name}] keys"), &c.keys)?;
            if keys.is_empty() {
                return Err(invalid(format!(
                    "[channels.{name}] keys is empty: nobody could promote"
                )));
            }
            let approvers = read_keys(&format!("[channels.{name}] approvers"), &c.approvers)?;
            remember(&keys)?;
            remember(&approvers)?;
            let approver_ids = ids(&approvers)?;
            if approver_ids.len() < c.approvals as usize {
                return Err(invalid(format!(
                    "[channels.{name}] approvals = {} but only {} distinct approver keys are listed",
                    c.approvals,
                    approver_ids.len()
                )));
            }
            resolved.channels.insert(
                name.clone(),
                ResolvedChannel {
                    after: c.after.clone(),
                    keys: ids(&keys)?,
                    approvals: c.approvals,
                    approvers: approver_ids,
                },
            );
            channels
                .insert(channel, ChannelPolicy { after, keys, approvals: c.approvals, approvers });
        }
        resolved.keys = pems;
        let document = kiln_oci::to_canonical_json(&resolved)?;
        let digest = Digest::of(&document);
        Ok(Policy { path: path.to_path_buf(), digest, document, signers, revokers, channels })
    }

    /// The policy whose document is `bytes`; `Err` says why they are not one.
    fn from_document(bytes: &[u8]) -> std::result::Result<Policy, String> {
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|e| format!("not a policy document: {e}"))?;
        if doc.schema != POLICY_SCHEMA {
            return Err(format!("its schema is {:?}, not {POLICY_SCHEMA:?}", doc.schema));
        }
        let digest = Digest::of(bytes);
        let key = |id: &Digest| -> std::result::Result<PublicKey, String> {
            let pem = doc.keys.get(&id.to_string()).ok_or(format!("key {id} is not in it"))?;
            let k = PublicKey::from_pem(pem).ok_or(format!("key {id} is not a public key"))?;
            match crate::signed::key_id(&k) {
                Ok(found) if found == *id => Ok(k),
                _ => Err(format!("the key given as {id} has another id")),
            }
        };
        let keys = |ids: &[Digest]| ids.iter().map(key).collect::<std::result::Result<Vec<_>, _>>();
        let mut channels = BTreeMap::new();
        for (name, c) in &doc.channels {
            let channel: ChannelName =
                name.parse().map_err(|e| format!("channel {name:?}: {e}"))?;
            let after = match &c.after {
                Some(a) => Some(a.parse().map_err(|e| format!("after {a:?}: {e}"))?),
                None => None,
            };
            channels.insert(
                channel,
                ChannelPolicy {
                    after,
                    keys: keys(&c.keys)?,
                    approvals: c.approvals,
                    approvers: keys(&c.approvers)?,
                },
            );
        }
        Ok(Policy {
            path: PathBuf::from(format!("log/{}", key_of(&digest))),
            digest,
            document: bytes.to_vec(),
            signers: keys(&doc.signers)?,
            revokers: keys(&doc.revokers)?,
            channels,
        })
    }

    /// Stores this policy's document in `store` (create-only; it is content-addressed), so
    /// that audits can re-check the entries written under it.
    pub async fn record(&self, store: &Store) -> Result<()> {
        store.log_create(&key_of(&self.digest), Bytes::from(self.document.clone())).await?;
        Ok(())
    }

    /// The policy recorded in `store` under `digest`: `Ok(None)` when it is not there,
    /// `Ok(Err(why))` when what is there is not that policy.
    pub async fn recorded(
        store: &Store,
        digest: &Digest,
    ) -> Result<Option<std::result::Result<Policy, String>>> {
        let bytes = match store.log_read(&key_of(digest), POLICY_LIMIT).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(kiln_store::StoreError::TooLarge { limit, .. }) => {
                return Ok(Some(Err(format!("it is larger than {limit} bytes"))))
            }
            Err(e) => return Err(e.into()),
        };
        if Digest::of(&bytes) != *digest {
            return Ok(Some(Err(format!("its bytes hash to {}", Digest::of(&bytes)))));
        }
        Ok(Some(Policy::from_document(&bytes)))
    }

    /// The rules of `channel`, or [`ReleaseError::UnknownChannel`].
    pub fn channel(&self, channel: &ChannelName) -> Result<&ChannelPolicy> {
        self.channels.get(channel).ok_or_else(|| ReleaseError::UnknownChannel {
            channel: channel.to_string(),
            path: self.path.clone(),
            known: self.channels.keys().map(|c| c.to_string()).collect(),
        })
    }

    /// Whether `key_id` may write entries of `channel`.
    pub fn may_write(&self, channel: &ChannelName, key_id: &Digest) -> bool {
        self.channels.get(channel).is_some_and(|c| {
            c.keys.iter().any(|k| crate::signed::key_id(k).ok().as_ref() == Some(key_id))
        })
    }
}

/// Where a policy document is stored, under `log/`.
fn key_of(digest: &Digest) -> String {
    format!("_policies/{}", digest.hex())
}

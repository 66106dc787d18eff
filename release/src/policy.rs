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
//! is the sha256 of its canonical JSON with keys resolved to key ids, so it changes when a
//! key file's content does, and not when a comment does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_attest::PublicKey;
use kiln_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;
use crate::{ReleaseError, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    signers: Vec<String>,
    channels: BTreeMap<String, ChannelFile>,
}

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
    pub path: PathBuf,
    /// sha256 of the canonical JSON of the resolved policy.
    pub digest: Digest,
    /// Keys whose image signatures and provenance promotion accepts.
    pub signers: Vec<PublicKey>,
    pub channels: BTreeMap<ChannelName, ChannelPolicy>,
}

/// The resolved policy as hashed: key ids instead of paths.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Resolved {
    signers: Vec<Digest>,
    channels: BTreeMap<String, ResolvedChannel>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
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
        let signers = read_keys("signers", &file.signers)?;
        let mut resolved = Resolved { signers: ids(&signers)?, channels: BTreeMap::new() };
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
        let digest = Digest::of(&kiln_oci::to_canonical_json(&resolved)?);
        Ok(Policy { path: path.to_path_buf(), digest, signers, channels })
    }

    /// The rules of `channel`, or [`ReleaseError::UnknownChannel`].
    pub fn channel(&self, channel: &ChannelName) -> Result<&ChannelPolicy> {
        self.channels.get(channel).ok_or_else(|| ReleaseError::UnknownChannel {
            channel: channel.to_string(),
            path: self.path.clone(),
            known: self.channels.keys().map(|c| c.to_string()).collect(),
        })
    }

    /// Every key that may write entries of any channel (for auditing revocations).
    pub fn all_keys(&self) -> Vec<PublicKey> {
        self.channels.values().flat_map(|c| c.keys.iter().cloned()).collect()
    }
}

//! Approvals: a signed statement "key K approves release R for channel C", attached to the
//! release as an OCI 1.1 referrer (`application/vnd.kiln.approval.v1`), so it travels with the
//! release on copy and promotion. The statement holds no time, so one key approving the same
//! release for the same channel twice makes the same artifact: approvals are counted by
//! distinct key, never by artifact.

use std::collections::BTreeMap;

use kiln_attest::artifact::{self, Part};
use kiln_attest::dsse::ENVELOPE_MEDIA_TYPE;
use kiln_attest::{PrivateKey, PublicKey};
use kiln_oci::{Descriptor, Digest};
use kiln_store::Store;
use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;
use crate::record::Loaded;
use crate::signed::{self, Opened};
use crate::Result;

/// artifactType of an approval.
pub const APPROVAL_ARTIFACT: &str = "application/vnd.kiln.approval.v1";
/// payloadType of the approval statement.
pub const APPROVAL_PAYLOAD_TYPE: &str = "application/vnd.kiln.approval.v1+json";
/// The statement's `schema`.
pub const APPROVAL_SCHEMA: &str = "kiln.approval/v1";
/// An approval envelope is well under this.
const APPROVAL_LIMIT: u64 = 64 * 1024;

/// The signed statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approval {
    pub schema: String,
    pub release: Digest,
    pub channel: String,
    pub approver: Digest,
}

/// Attaches `key`'s approval of `release` for `channel`; returns the artifact's descriptor.
pub async fn approve(
    store: &Store,
    release: &Loaded,
    channel: &ChannelName,
    key: &PrivateKey,
) -> Result<Descriptor> {
    let statement = Approval {
        schema: APPROVAL_SCHEMA.to_string(),
        release: release.id,
        channel: channel.to_string(),
        approver: signed::key_id(&key.public())?,
    };
    let part = Part {
        media_type: ENVELOPE_MEDIA_TYPE,
        bytes: signed::seal(APPROVAL_PAYLOAD_TYPE, &statement, key)?,
        annotations: BTreeMap::new(),
    };
    Ok(artifact::attach(store, &release.descriptor, APPROVAL_ARTIFACT, vec![part], BTreeMap::new())
        .await?)
}

/// The approvals of a release for a channel that count, and why the others do not.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    /// Distinct approver key ids whose approval verifies, sorted.
    pub approvers: Vec<Digest>,
    /// One line per attached approval that does not count.
    pub ignored: Vec<String>,
}

/// Counts the approvals attached to `release` that are for `channel` and signed by one of
/// `approvers` (each key once).
pub async fn tally(
    store: &Store,
    release: &Digest,
    channel: &ChannelName,
    approvers: &[PublicKey],
) -> Result<Tally> {
    let mut tally = Tally::default();
    for a in artifact::referrers(store, release).await? {
        if a.artifact_type() != APPROVAL_ARTIFACT {
            continue;
        }
        let at = a.descriptor.digest;
        let Some(layer) = a.manifest.layers.iter().find(|l| l.media_type == ENVELOPE_MEDIA_TYPE)
        else {
            tally.ignored.push(format!("approval {at} has no envelope"));
            continue;
        };
        let bytes = store.get_blob_bounded(&layer.digest, APPROVAL_LIMIT).await?;
        let Opened { statement, envelope } =
            match signed::open::<Approval>(&bytes, APPROVAL_PAYLOAD_TYPE) {
                Ok(opened) => opened,
                Err(why) => {
                    tally.ignored.push(format!("approval {at}: {why}"));
                    continue;
                }
            };
        let statement: Approval = statement;
        if statement.release != *release || a.subject() != Some(*release) {
            tally
                .ignored
                .push(format!("approval {at} is for release {}, not this one", statement.release));
            continue;
        }
        if statement.channel != channel.to_string() {
            tally.ignored.push(format!(
                "approval {at} by {} is for channel {}, not {channel}",
                statement.approver, statement.channel
            ));
            continue;
        }
        match signed::signer(&envelope, approvers) {
            Some(id) if id == statement.approver => {
                if !tally.approvers.contains(&id) {
                    tally.approvers.push(id);
                }
            }
            _ => tally.ignored.push(format!(
                "approval {at} by {} is not signed by an approver key of the policy",
                statement.approver
            )),
        }
    }
    tally.approvers.sort();
    Ok(tally)
}

/// What `kiln approve` did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Approved {
    pub release: Digest,
    pub channel: String,
    pub approver: Digest,
    /// The approval artifact manifest.
    pub artifact: Digest,
}

//! Revocations: entries of one append-only log, `log/_revocations/all/<seq>`, kept exactly like
//! a channel (create-only entries chained by digest, each signed by its actor and naming the
//! policy in force, and a signed checkpoint), so deleting a revocation is detected as deleting
//! a channel entry is. Only a key the policy lists as a `revokers` key may write one, and an
//! audit re-checks that against the policy each entry records.
//!
//! The checkpoint lists every release revoked up to its entry, so whether a release is revoked
//! takes a few reads however long the log: the checkpoint, the entry it names and a probe past
//! it (and, for a revoked release, its entry, to say by whom and why).

use kiln_attest::{PrivateKey, PublicKey};
use kiln_oci::Digest;
use kiln_store::Store;
use serde::Serialize;

use crate::channel::{self, Action, ChannelRef, LogPoint};
use crate::policy::Policy;
use crate::record::Loaded;
use crate::{signed, ReleaseError, Result};

/// What `kiln revoke` appended.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    pub release: Digest,
    pub actor: Digest,
    pub time: String,
    pub reason: String,
    /// The entry's seq in the revocation log.
    pub seq: u64,
    /// Digest of the entry's stored bytes.
    pub entry: Digest,
    pub policy: Digest,
}

/// Revokes `release` with `key`, which `policy` must list among its revokers. A release
/// already revoked is [`ReleaseError::Revoked`], naming the revocation that stands.
pub async fn revoke(
    store: &Store,
    release: &Loaded,
    key: &PrivateKey,
    policy: &Policy,
    reason: &str,
) -> Result<Revoked> {
    let actor = signed::key_id(&key.public())?;
    if !policy.revokers.iter().any(|k| signed::key_id(k).ok() == Some(actor)) {
        return Err(ReleaseError::Refused {
            release: release.id,
            channel: "the revocation log".to_string(),
            reason: format!(
                "key {actor} may not revoke: policy {} lists {} revoker key(s)",
                policy.path.display(),
                policy.revokers.len()
            ),
        });
    }
    revoked(store, &release.id).await?;
    let log = ChannelRef::revocations()?;
    policy.record(store).await?;
    let appended = channel::append(store, &log, key, &policy.revokers, |head| {
        Ok(channel::next_entry(
            &log,
            head,
            Action::Revoke,
            release.id,
            &release.release.version,
            actor,
            reason,
            policy.digest,
        ))
    })
    .await?;
    Ok(Revoked {
        release: release.id,
        actor,
        time: appended.entry.time,
        reason: appended.entry.reason,
        seq: appended.entry.seq,
        entry: appended.digest,
        policy: policy.digest,
    })
}

/// `Ok(())` when the revocation log does not revoke `release`, else [`ReleaseError::Revoked`]
/// saying by whom and why. Signatures are not checked (no keys): an unsigned revocation
/// still revokes here, and [`audited`] is the check that trusts only revokers.
pub async fn revoked(store: &Store, release: &Digest) -> Result<()> {
    let log = ChannelRef::revocations()?;
    let Some(&seq) = channel::revoked(store, &log).await?.get(release) else { return Ok(()) };
    let entry = channel::read_entry(store, &log, seq).await?;
    Err(revoked_by(release, seq, entry.as_ref().map(|e| &e.entry)))
}

/// Audits the whole revocation log with `revokers` (chain, signatures, checkpoint, and each
/// entry against the policy it records) and fails if it revokes `release`; else returns the
/// log's newest entry, for the channel entry about to be written to record.
pub async fn audited(
    store: &Store,
    release: &Digest,
    revokers: &[PublicKey],
) -> Result<Option<LogPoint>> {
    let log = ChannelRef::revocations()?;
    let history = crate::history::history(store, &log, revokers, None, None).await?;
    match history.entries.iter().find(|e| e.release == *release) {
        None => Ok(history.entries.last().map(|e| LogPoint { seq: e.seq, entry: e.digest })),
        Some(e) => Err(ReleaseError::Revoked {
            release: *release,
            actor: e.actor.to_string(),
            time: e.time.clone(),
            reason: e.reason.clone(),
        }),
    }
}

fn revoked_by(release: &Digest, seq: u64, entry: Option<&channel::Entry>) -> ReleaseError {
    match entry {
        Some(e) => ReleaseError::Revoked {
            release: *release,
            actor: e.actor.to_string(),
            time: e.time.clone(),
            reason: e.reason.clone(),
        },
        None => ReleaseError::Revoked {
            release: *release,
            actor: "unknown".to_string(),
            time: "unknown".to_string(),
            reason: format!("revocation log entry {seq} (unreadable)"),
        },
    }
}

//! Promotion and rollback by policy. A promotion refuses (appending nothing) unless the
//! release is not revoked, the actor's key may promote into the channel, the release was
//! already in the channel the policy names as `after`, and enough distinct approvers approved
//! it for this channel; it then verifies the release completely (image, attestations against
//! the policy's signers, the record against the store), copies everything into the target
//! store when there is one (only what that store lacks), and appends the signed entry.

use kiln_attest::{PrivateKey, PublicKey};
use kiln_oci::Digest;
use kiln_store::copy::CopyReport;
use kiln_store::{Reference, Store};
use serde::Serialize;

use crate::channel::{self, Action, ChannelName, ChannelRef};
use crate::policy::Policy;
use crate::record::{self, Loaded};
use crate::{approval, revocation, signed, ReleaseError, Result};

/// What to promote where.
pub struct Request<'a> {
    /// The store holding the release (and the history of the channel it must come `after`).
    pub from: &'a Store,
    /// Where the channel lives, when not in `from`; the release is copied there first.
    pub to: Option<&'a Store>,
    pub release: Digest,
    pub channel: ChannelName,
    pub key: &'a PrivateKey,
    pub policy: &'a Policy,
    pub reason: &'a str,
}

/// What a promotion or rollback did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub action: Action,
    pub release: Digest,
    pub version: String,
    /// `CHANNEL/NAME`.
    pub channel: String,
    /// The store the entry was appended to.
    pub store: String,
    pub seq: u64,
    /// Digest of the new entry's stored bytes.
    pub entry: Digest,
    pub previous: Option<Digest>,
    pub actor: Digest,
    /// Distinct approvers counted (promotion only).
    pub approvals: Vec<Digest>,
    /// Attempts the append took (more than one when racing other writers).
    pub attempts: u32,
    /// What was copied into the target store, when there was one.
    pub copied: Option<CopyReport>,
    /// Why the head hint could not be moved, if it could not (readers still find the entry).
    pub hint_error: Option<String>,
}

fn key_ids(keys: &[PublicKey]) -> String {
    keys.iter()
        .filter_map(|k| k.key_id().ok())
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Promotes as the request says; see the module documentation.
pub async fn promote(req: &Request<'_>) -> Result<Report> {
    let loaded = record::load(req.from, &req.release).await?;
    let refuse = |reason: String| ReleaseError::Refused {
        release: req.release,
        channel: req.channel.to_string(),
        reason,
    };
    let mut revocations = revocation::audited(req.from, &req.release, &req.policy.revokers).await?;
    if let Some(to) = req.to {
        revocations = revocation::audited(to, &req.release, &req.policy.revokers).await?;
    }
    let rules = req.policy.channel(&req.channel)?;
    let actor = signed::key_id(&req.key.public())?;
    if !rules.keys.iter().any(|k| signed::key_id(k).ok() == Some(actor)) {
        return Err(refuse(format!(
            "key {actor} may not promote into {} (the policy lists {})",
            req.channel,
            key_ids(&rules.keys)
        )));
    }
    let ch = channel_of(&loaded, &req.channel)?;
    if let Some(after) = &rules.after {
        let earlier = ChannelRef { channel: after.clone(), name: ch.name.clone() };
        let audit =
            channel::audit(req.from, &earlier, &req.policy.channel(after)?.keys, None).await?;
        if !audit.entries.iter().any(|e| e.entry.release == req.release) {
            return Err(refuse(format!(
                "the policy says {} comes after {after}, and {earlier} never held this release",
                req.channel
            )));
        }
    }
    let tally = approval::tally(req.from, &req.release, &req.channel, &rules.approvers).await?;
    if (tally.approvers.len() as u64) < u64::from(rules.approvals) {
        let mut why = format!(
            "{} approval(s) by distinct approver keys of the policy, {} needed",
            tally.approvers.len(),
            rules.approvals
        );
        if !tally.ignored.is_empty() {
            why.push_str(&format!(" (not counted: {})", tally.ignored.join("; ")));
        }
        return Err(refuse(why));
    }
    verify_image(req.from, &loaded, &req.policy.signers).await?;
    let copied = match req.to {
        Some(to) => Some(
            kiln_store::copy::copy_image(
                req.from,
                to,
                &Reference::Digest(loaded.release.image.digest),
            )
            .await?,
        ),
        None => None,
    };
    let target = req.to.unwrap_or(req.from);
    // Audits re-check each entry against the policy it names: that policy must be there.
    req.policy.record(target).await?;
    let version = loaded.release.version.clone();
    let appended = channel::append(target, &ch, req.key, &rules.keys, |head| {
        let mut entry = channel::next_entry(
            &ch,
            head,
            Action::Promote,
            req.release,
            &version,
            actor,
            req.reason,
            req.policy.digest,
        );
        // The target store's revocation log is the one its channel audits check.
        entry.revocations = revocations;
        Ok(entry)
    })
    .await?;
    Ok(Report {
        action: Action::Promote,
        release: req.release,
        version,
        channel: ch.to_string(),
        store: target.describe().to_string(),
        seq: appended.entry.seq,
        entry: appended.digest,
        previous: appended.entry.previous,
        actor,
        approvals: tally.approvers,
        attempts: appended.attempts,
        copied,
        hint_error: appended.hint_error,
    })
}

/// The channel `channel` of the release's image name.
fn channel_of(loaded: &Loaded, channel: &ChannelName) -> Result<ChannelRef> {
    let name = loaded.release.name.parse().map_err(|e: kiln_store::NameError| {
        ReleaseError::NotARelease { digest: loaded.id, reason: format!("its name: {e}") }
    })?;
    Ok(ChannelRef { channel: channel.clone(), name })
}

/// Verifies the image as `kiln verify --require sbom,provenance` does, with `signers` as the
/// trusted keys, and the record against the store.
pub async fn verify_image(store: &Store, loaded: &Loaded, signers: &[PublicKey]) -> Result<()> {
    use kiln_attest::verify::{Policy, Requirement};
    let r = &loaded.release.image;
    let root = kiln_oci::Descriptor::new(&r.media_type, r.digest, r.size);
    let policy = Policy {
        keys: signers.to_vec(),
        require: [Requirement::Sbom, Requirement::Provenance].into(),
    };
    let report = kiln_attest::verify::verify(store, &root, &policy).await?;
    if !report.passed() {
        let failed: Vec<String> = report
            .findings
            .iter()
            .filter(|f| f.status == kiln_attest::verify::Status::Fail)
            .map(|f| format!("{}: {}", f.check, f.message))
            .collect();
        return Err(ReleaseError::Unverified { release: loaded.id, detail: failed.join("; ") });
    }
    record::check(store, loaded).await?;
    Ok(())
}

/// Rolls `ch` back to `release`, which must have been in it before and not be its head.
pub async fn rollback(
    store: &Store,
    ch: &ChannelRef,
    release: Digest,
    key: &PrivateKey,
    policy: &Policy,
    reason: &str,
) -> Result<Report> {
    let refuse = |why: String| ReleaseError::Refused {
        release,
        channel: ch.channel.to_string(),
        reason: why,
    };
    let rules = policy.channel(&ch.channel)?;
    let actor = signed::key_id(&key.public())?;
    if !rules.keys.iter().any(|k| signed::key_id(k).ok() == Some(actor)) {
        return Err(refuse(format!(
            "key {actor} may not write to {} (the policy lists {})",
            ch.channel,
            key_ids(&rules.keys)
        )));
    }
    let revocations = revocation::audited(store, &release, &policy.revokers).await?;
    let loaded = record::load(store, &release).await?;
    let audit = channel::audit(store, ch, &rules.keys, None).await?;
    if !audit.entries.iter().any(|e| e.entry.release == release) {
        return Err(refuse(format!("{ch} never held this release, so it cannot roll back to it")));
    }
    let version = loaded.release.version.clone();
    policy.record(store).await?;
    let appended = channel::append(store, ch, key, &rules.keys, |head| {
        if head.is_some_and(|h| h.entry.release == release) {
            return Err(refuse(format!("{ch} already points at it")));
        }
        let mut entry = channel::next_entry(
            ch,
            head,
            Action::Rollback,
            release,
            &version,
            actor,
            reason,
            policy.digest,
        );
        entry.revocations = revocations;
        Ok(entry)
    })
    .await?;
    Ok(Report {
        action: Action::Rollback,
        release,
        version,
        channel: ch.to_string(),
        store: store.describe().to_string(),
        seq: appended.entry.seq,
        entry: appended.digest,
        previous: appended.entry.previous,
        actor,
        approvals: Vec::new(),
        attempts: appended.attempts,
        copied: None,
        hint_error: appended.hint_error,
    })
}

//! `kiln verify RELEASE`: the image verified as `kiln verify` does, the release's own
//! signature checked with the auditor's keys, the record checked against the store, the
//! release not revoked and, given a channel, the release is or was in it.

use kiln_attest::verify::{Finding, Policy, Status};
use kiln_attest::{KeyId, PublicKey};
use kiln_oci::{Descriptor, Digest};
use kiln_store::Store;
use serde::Serialize;

use crate::channel::{ChannelRef, Seen};
use crate::history::{self, Standing};
use crate::{record, revocation, Result};

/// What verifying a release found.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    pub release: Digest,
    pub image: Digest,
    /// True when every check holds.
    pub passed: bool,
    /// Keys whose signatures over the image were accepted.
    pub signers: Vec<KeyId>,
    /// Keys whose signatures over the release (its artifact manifest) were accepted.
    pub release_signers: Vec<KeyId>,
    /// The image audit's findings, then the release signature's (check `release`).
    pub findings: Vec<Finding>,
    /// Bytes of configs and disks re-hashed for the record.
    pub record_bytes_rehashed: u64,
    /// Where the release stands in the channel asked about.
    pub channel: Option<Standing>,
}

/// Where an audit checks a release's standing: a channel, the keys its entries must be signed
/// by, and an entry an earlier audit saw.
pub struct ChannelCheck<'a> {
    pub channel: &'a ChannelRef,
    pub keys: &'a [PublicKey],
    pub seen: Option<&'a Seen>,
    /// The auditor's policy file, compared with the policies the entries record.
    pub policy: Option<&'a crate::policy::Policy>,
}

/// Verifies release `id` under the auditor's `policy`, and its standing in `channel`.
pub async fn verify(
    store: &Store,
    id: &Digest,
    policy: &Policy,
    channel: Option<ChannelCheck<'_>>,
) -> Result<Verified> {
    let loaded = record::load(store, id).await?;
    // With the auditor's policy, only revocations by its revokers count, and the whole log
    // must verify; without one, anything in the log revokes.
    match channel.as_ref().and_then(|c| c.policy) {
        Some(p) => {
            revocation::audited(store, id, &p.revokers).await?;
        }
        None => revocation::revoked(store, id).await?,
    }
    let image = &loaded.release.image;
    let root = Descriptor::new(&image.media_type, image.digest, image.size);
    let report = kiln_attest::verify::verify(store, &root, policy).await?;
    let mut findings = report.findings;
    let release_signers = if policy.keys.is_empty() {
        findings.push(Finding {
            status: Status::Note,
            check: "release",
            message: format!("the signature over release {id} was not checked: no --key given"),
        });
        Vec::new()
    } else {
        // The same keys the image's signatures are checked with: whoever may sign the image
        // may sign its release.
        let signed =
            kiln_attest::verify::verify_signatures(store, &loaded.descriptor, &policy.keys).await?;
        findings.extend(signed.findings.into_iter().map(|f| Finding { check: "release", ..f }));
        signed.signers
    };
    let rehashed = record::check(store, &loaded).await?;
    let channel = match channel {
        Some(c) => Some(history::standing(store, c.channel, id, c.keys, c.seen, c.policy).await?),
        None => None,
    };
    Ok(Verified {
        release: *id,
        image: image.digest,
        passed: findings.iter().all(|f| f.status != Status::Fail),
        signers: report.signers,
        release_signers,
        findings,
        record_bytes_rehashed: rehashed,
        channel,
    })
}

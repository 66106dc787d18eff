//! A channel's history for auditors, after verifying the whole chain and every signature and
//! re-checking every entry against the policy it records (read from the store by digest):
//! its signer may write to the channel, a promotion had the approvals and (when that channel's
//! history is in the same store) the earlier channel it needed, a rollback went back to a
//! release the channel held, and the revocation log still holds the entry it saw. And the
//! check `kiln verify RELEASE --channel CHANNEL/NAME` makes: the release is the channel's head
//! or was in it.

use std::collections::BTreeMap;

use kiln_attest::PublicKey;
use kiln_oci::Digest;
use kiln_store::Store;
use serde::Serialize;

use crate::channel::{self, Action, ChannelRef, CheckpointSeen, Seen};
use crate::policy::Policy;
use crate::{approval, signed, ReleaseError, Result};

/// One entry as `kiln history` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub seq: u64,
    pub time: String,
    pub action: Action,
    pub release: Digest,
    pub version: String,
    /// The key id that signed the entry.
    pub actor: Digest,
    pub reason: String,
    /// Digest of the policy in force.
    pub policy: Digest,
    /// Digest of the entry's stored bytes.
    pub digest: Digest,
}

/// A verified channel history.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// `CHANNEL/NAME`.
    pub channel: String,
    /// The release the channel points at now.
    pub head: Option<Digest>,
    /// Every entry, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// How many entries the checkpoint lags (a writer stopped between entry and checkpoint).
    pub hint_behind: u64,
    /// The signed checkpoint found: keep it, and a later audit given it (`--seen SEQ@DIGEST`)
    /// detects a rewind past it.
    pub checkpoint: Option<CheckpointSeen>,
    /// The policies the entries were written under, in the order first used.
    pub policies: Vec<PolicyUse>,
    /// What could not be re-checked here, and why.
    pub notes: Vec<String>,
}

/// The entries written under one policy.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyUse {
    pub digest: Digest,
    /// The seqs of those entries.
    pub entries: Vec<u64>,
    /// Whether it is the auditor's policy file (`None` when none was given).
    pub current: Option<bool>,
}

/// Reads and verifies `ch` against `keys` (and an entry seen before; see [`channel::audit`]
/// for what is detected), then re-checks every entry against the policy it records; `current`
/// is the auditor's policy file, reported on when it differs.
pub async fn history(
    store: &Store,
    ch: &ChannelRef,
    keys: &[PublicKey],
    seen: Option<&Seen>,
    current: Option<&Policy>,
) -> Result<History> {
    let audit = channel::audit(store, ch, keys, seen).await?;
    let (policies, notes) = recheck(store, ch, &audit.entries, current).await?;
    let entries: Vec<HistoryEntry> = audit
        .entries
        .into_iter()
        .map(|s| HistoryEntry {
            seq: s.entry.seq,
            time: s.entry.time,
            action: s.entry.action,
            release: s.entry.release,
            version: s.entry.version,
            actor: s.entry.actor,
            reason: s.entry.reason,
            policy: s.entry.policy,
            digest: s.digest,
        })
        .collect();
    Ok(History {
        channel: ch.to_string(),
        head: entries.last().map(|e| e.release),
        entries,
        hint_behind: audit.hint_behind,
        checkpoint: audit.checkpoint,
        policies,
        notes,
    })
}

/// Re-checks each entry against the policy it records; see the module documentation.
async fn recheck(
    store: &Store,
    ch: &ChannelRef,
    entries: &[channel::Stored],
    current: Option<&Policy>,
) -> Result<(Vec<PolicyUse>, Vec<String>)> {
    let tampered =
        |seq: u64, reason: String| ReleaseError::Tampered { channel: ch.to_string(), seq, reason };
    let mut policies: BTreeMap<Digest, Policy> = BTreeMap::new();
    let mut uses: Vec<PolicyUse> = Vec::new();
    let mut notes = Vec::new();
    // Per release, the distinct approvers of this channel found under a policy's approvers.
    let mut tallies: BTreeMap<(Digest, Digest), usize> = BTreeMap::new();
    // Per earlier channel, the releases it held (None: its history is not in this store).
    let mut earlier: BTreeMap<(Digest, String), Option<Vec<Digest>>> = BTreeMap::new();
    let revocation_log = ChannelRef::revocations()?;
    let revocations = *ch == revocation_log;
    // Points of the revocation log already found still there.
    let mut seen_revocations = Vec::new();
    for (i, stored) in entries.iter().enumerate() {
        let e = &stored.entry;
        let policy = match policies.entry(e.policy) {
            std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                match Policy::recorded(store, &e.policy).await? {
                    Some(Ok(p)) => slot.insert(p),
                    Some(Err(why)) => {
                        return Err(tampered(
                            e.seq,
                            format!("the policy it names, {}, is damaged: {why}", e.policy),
                        ))
                    }
                    None => {
                        return Err(tampered(
                            e.seq,
                            format!(
                                "the policy it names, {}, is not recorded in the store",
                                e.policy
                            ),
                        ))
                    }
                }
            }
        };
        match uses.iter_mut().find(|u| u.digest == e.policy) {
            Some(u) => u.entries.push(e.seq),
            None => uses.push(PolicyUse {
                digest: e.policy,
                entries: vec![e.seq],
                current: current.map(|c| c.digest == e.policy),
            }),
        }
        let under = |why: String| {
            tampered(e.seq, format!("under the policy it names ({}), {why}", e.policy))
        };
        if let Some(point) = e.revocations.filter(|_| !revocations) {
            if !seen_revocations.contains(&point) {
                let found = channel::read_entry(store, &revocation_log, point.seq).await?;
                if found.map(|f| f.digest) != Some(point.entry) {
                    return Err(tampered(
                        e.seq,
                        format!(
                            "when it was written the revocation log's newest entry was {} ({}), \
                             which is no longer there: revocations were deleted",
                            point.seq, point.entry
                        ),
                    ));
                }
                seen_revocations.push(point);
            }
        }
        if revocations {
            let may = policy.revokers.iter().any(|k| signed::key_id(k).ok() == Some(e.actor));
            if e.action != Action::Revoke || !may {
                return Err(under(format!(
                    "it is a {} by key {}, and only its revokers may write revocations",
                    e.action, e.actor
                )));
            }
            continue;
        }
        let Some(rules) = policy.channels.get(&ch.channel) else {
            return Err(under(format!("there is no channel {}", ch.channel)));
        };
        if !policy.may_write(&ch.channel, &e.actor) {
            return Err(under(format!("its signer {} may not write to {}", e.actor, ch.channel)));
        }
        match e.action {
            Action::Revoke => {
                return Err(tampered(e.seq, "a revocation written into a channel".to_string()))
            }
            Action::Rollback => {
                if !entries[..i].iter().any(|p| p.entry.release == e.release) {
                    return Err(tampered(
                        e.seq,
                        format!("it rolls back to {}, which the channel never held", e.release),
                    ));
                }
            }
            Action::Promote => {
                if rules.approvals > 0 {
                    let found = match tallies.get(&(e.release, e.policy)) {
                        Some(n) => *n,
                        None => {
                            let t =
                                approval::tally(store, &e.release, &ch.channel, &rules.approvers)
                                    .await?;
                            tallies.insert((e.release, e.policy), t.approvers.len());
                            t.approvers.len()
                        }
                    };
                    if found < rules.approvals as usize {
                        return Err(under(format!(
                            "a promotion into {} needs {} approvals by distinct approvers, and \
                             the store holds {found} for release {}",
                            ch.channel, rules.approvals, e.release
                        )));
                    }
                }
                if let Some(after) = &rules.after {
                    let held = match earlier.get(&(e.policy, after.to_string())) {
                        Some(held) => held.clone(),
                        None => {
                            let prior =
                                ChannelRef { channel: after.clone(), name: ch.name.clone() };
                            let keys = &policy.channel(after)?.keys;
                            let audit = channel::audit(store, &prior, keys, None).await?;
                            let held = (!audit.entries.is_empty())
                                .then(|| audit.entries.iter().map(|p| p.entry.release).collect());
                            earlier.insert((e.policy, after.to_string()), held.clone());
                            held
                        }
                    };
                    match held {
                        Some(held) if held.contains(&e.release) => {}
                        Some(_) => {
                            return Err(under(format!(
                                "{} comes after {after}, and {after}/{} never held release {}",
                                ch.channel, ch.name, e.release
                            )))
                        }
                        None => notes.push(format!(
                            "entry {}: the policy needs the release in {after} first; \
                             {after}/{} is not in this store, so that was not re-checked",
                            e.seq, ch.name
                        )),
                    }
                }
            }
        }
    }
    Ok((uses, notes))
}

/// Where a release stands in a channel.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Standing {
    /// `CHANNEL/NAME`.
    pub channel: String,
    /// Whether it is the channel's head now.
    pub head: bool,
    /// The seqs of the entries that pointed the channel at it.
    pub entries: Vec<u64>,
    /// The policies the channel's entries were written under.
    pub policies: Vec<PolicyUse>,
    /// What could not be re-checked here.
    pub notes: Vec<String>,
}

/// Fails unless `release` is, or was, in `ch` (whose chain must verify
/// with `keys`, still hold the entry `seen` when given, and re-check under the policies its
/// entries record).
pub async fn standing(
    store: &Store,
    ch: &ChannelRef,
    release: &Digest,
    keys: &[PublicKey],
    seen: Option<&Seen>,
    current: Option<&Policy>,
) -> Result<Standing> {
    let h = history(store, ch, keys, seen, current).await?;
    let entries: Vec<u64> =
        h.entries.iter().filter(|e| e.release == *release).map(|e| e.seq).collect();
    if entries.is_empty() {
        return Err(ReleaseError::Refused {
            release: *release,
            channel: ch.to_string(),
            reason: "the release was never in this channel".to_string(),
        });
    }
    Ok(Standing {
        channel: ch.to_string(),
        head: h.head == Some(*release),
        entries,
        policies: h.policies,
        notes: h.notes,
    })
}

//! A channel's history for auditors, after verifying the whole chain and every signature, and
//! the check `kiln verify RELEASE --channel CHANNEL/NAME` makes: the release is the channel's
//! head or was in it, and is not revoked.

use kiln_attest::PublicKey;
use kiln_oci::Digest;
use kiln_store::Store;
use serde::Serialize;

use crate::channel::{self, Action, ChannelRef, CheckpointSeen, Seen};
use crate::{revocation, ReleaseError, Result};

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
}

/// Reads and verifies `ch` against `keys` (and an entry seen before); see [`channel::audit`]
/// for what is detected.
pub async fn history(
    store: &Store,
    ch: &ChannelRef,
    keys: &[PublicKey],
    seen: Option<&Seen>,
) -> Result<History> {
    let audit = channel::audit(store, ch, keys, seen).await?;
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
    })
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
}

/// Fails unless `release` is not revoked and is, or was, in `ch` (whose chain must verify
/// with `keys`, and still hold the entry `seen` when given).
pub async fn standing(
    store: &Store,
    ch: &ChannelRef,
    release: &Digest,
    keys: &[PublicKey],
    seen: Option<&Seen>,
) -> Result<Standing> {
    revocation::revoked(store, release).await?;
    let h = history(store, ch, keys, seen).await?;
    let entries: Vec<u64> =
        h.entries.iter().filter(|e| e.release == *release).map(|e| e.seq).collect();
    if entries.is_empty() {
        return Err(ReleaseError::Refused {
            release: *release,
            channel: ch.to_string(),
            reason: "the release was never in this channel".to_string(),
        });
    }
    Ok(Standing { channel: ch.to_string(), head: h.head == Some(*release), entries })
}

//! A channel's history for auditors, after verifying the whole chain and every signature, and
//! the check `kiln verify RELEASE --channel CHANNEL/NAME` makes: the release is the channel's
//! head or was in it, and is not revoked.

use kiln_attest::PublicKey;
use kiln_oci::Digest;
use kiln_store::Store;
use serde::Serialize;

use crate::channel::{self, Action, ChannelRef};
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
    /// How many entries the head hint lags (a writer stopped between entry and hint).
    pub hint_behind: u64,
}

/// Reads and verifies `ch` against `keys`; see [`channel::audit`] for what is detected.
pub async fn history(store: &Store, ch: &ChannelRef, keys: &[PublicKey]) -> Result<History> {
    let audit = channel::audit(store, ch, keys).await?;
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
/// with `keys`).
pub async fn standing(
    store: &Store,
    ch: &ChannelRef,
    release: &Digest,
    keys: &[PublicKey],
) -> Result<Standing> {
    revocation::revoked(store, release).await?;
    let h = history(store, ch, keys).await?;
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

//! A channel of an image (`prod/hello`) is a chain of signed entries under
//! `log/<channel>/<name>/<seq>`, seq counting from 1. Each entry is a DSSE envelope, signed by
//! the actor, of a statement naming its channel, name and seq, the release, the previous
//! entry's digest (the sha256 of its stored bytes), the action, the actor's key id, the time,
//! a reason and the digest of the policy in force.
//!
//! Appending entry N+1 is a create-only put: on every backend exactly one writer gets it, and
//! the others re-read the head and try N+2, with no lock service. `HEAD` is an overwritable,
//! signed checkpoint (`{"seq":N,"entry":"sha256:…"}` in a DSSE envelope) so the newest entry is
//! found with a few reads whatever the history's length: read the checkpoint, then probe
//! forward until an entry is missing.
//!
//! The checkpoint is also what makes a deleted tail visible. Kiln never deletes an entry or the
//! checkpoint, writes entry N only after a checkpoint of at least N-1 exists, and writes the
//! checkpoint of N only after entry N exists. So a checkpoint naming a missing entry, or none
//! at all beside two or more entries, is tampering; and someone without a channel key cannot
//! sign a checkpoint that rewinds the channel. What stays invisible is a rewind to a state the
//! bucket really was in: the tail deleted and a checkpoint saved earlier put back (see
//! docs/releases.md); an auditor who kept a checkpoint can check that the chain still holds it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kiln_attest::dsse::Envelope;
use kiln_attest::{PrivateKey, PublicKey};
use kiln_oci::Digest;
use kiln_store::log::Created;
use kiln_store::{RepoName, Store};
use serde::{Deserialize, Serialize};

use crate::signed::{self, Opened};
use crate::{ReleaseError, Result};

/// payloadType of a channel entry.
pub const ENTRY_PAYLOAD_TYPE: &str = "application/vnd.kiln.channel-entry.v1+json";
/// The entry statement's `schema`.
pub const ENTRY_SCHEMA: &str = "kiln.channel-entry/v1";
/// An entry is a few hundred bytes plus the reason.
const ENTRY_LIMIT: u64 = 64 * 1024;
/// payloadType of the signed `HEAD` checkpoint.
pub const CHECKPOINT_PAYLOAD_TYPE: &str = "application/vnd.kiln.channel-head.v1+json";
/// The checkpoint statement's `schema`.
pub const CHECKPOINT_SCHEMA: &str = "kiln.channel-head/v1";
/// The checkpoint is one small statement and a signature.
const CHECKPOINT_LIMIT: u64 = 16 * 1024;
/// Appends re-tried after losing the next seq to another writer.
const APPEND_ATTEMPTS: u32 = 64;
/// Entries read at once by a full audit.
const READ_CONCURRENCY: usize = 32;

/// A channel name: lowercase letters, digits, `.`, `_` and `-`, starting with a letter or
/// digit (names starting with `_` are kiln's own, such as revocations).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChannelName(String);

impl FromStr for ChannelName {
    type Err = ReleaseError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| ReleaseError::InvalidName {
            what: "channel name",
            text: s.to_string(),
            reason: reason.to_string(),
        };
        let first_ok =
            s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !first_ok || s.len() > 64 {
            return Err(bad("use 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
            return Err(bad("use only a-z 0-9 . _ -"));
        }
        Ok(ChannelName(s.to_string()))
    }
}

impl TryFrom<String> for ChannelName {
    type Error = ReleaseError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ChannelName> for String {
    fn from(c: ChannelName) -> String {
        c.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `CHANNEL/NAME`: one channel of one image name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelRef {
    pub channel: ChannelName,
    pub name: RepoName,
}

impl FromStr for ChannelRef {
    type Err = ReleaseError;
    fn from_str(s: &str) -> Result<Self> {
        let (channel, name) = s.split_once('/').ok_or_else(|| ReleaseError::InvalidName {
            what: "CHANNEL/NAME",
            text: s.to_string(),
            reason: "write the channel, a slash and the image name, e.g. prod/hello".to_string(),
        })?;
        let name = name.parse().map_err(|e: kiln_store::NameError| ReleaseError::InvalidName {
            what: "CHANNEL/NAME",
            text: s.to_string(),
            reason: e.to_string(),
        })?;
        Ok(ChannelRef { channel: channel.parse()?, name })
    }
}

impl fmt::Display for ChannelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.channel, self.name)
    }
}

impl ChannelRef {
    /// The revocation log: kept like a channel, under a name no channel can have.
    pub(crate) fn revocations() -> Result<ChannelRef> {
        let name = "all".parse().map_err(|e: kiln_store::NameError| ReleaseError::InvalidName {
            what: "revocation log name",
            text: "all".to_string(),
            reason: e.to_string(),
        })?;
        Ok(ChannelRef { channel: ChannelName("_revocations".to_string()), name })
    }

    fn entry_key(&self, seq: u64) -> String {
        format!("{self}/{seq}")
    }
    fn hint_key(&self) -> String {
        format!("{self}/HEAD")
    }
}

/// What an entry does to the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The release becomes the channel's head.
    Promote,
    /// The channel goes back to a release it held before.
    Rollback,
    /// The release is revoked (entries of the revocation log only).
    Revoke,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Revoke => "revoke",
        })
    }
}

/// The signed statement of one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// [`ENTRY_SCHEMA`].
    pub schema: String,
    pub channel: String,
    pub name: String,
    pub seq: u64,
    /// Digest of entry seq-1's stored bytes; absent for seq 1.
    pub previous: Option<Digest>,
    pub action: Action,
    /// The release id the channel points at from this entry on.
    pub release: Digest,
    /// The release's image version, for people reading the history.
    pub version: String,
    /// The signer's key id.
    pub actor: Digest,
    /// When, RFC 3339 UTC (the actor's clock; a record of when, not a source of order).
    pub time: String,
    pub reason: String,
    /// Digest of the policy in force.
    pub policy: Digest,
    /// The revocation log's newest entry when this entry was written (promotions and
    /// rollbacks, once anything was revoked): an audit of the channel checks it is still
    /// there, so deleting revocations shows even when the log itself is cut back whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocations: Option<LogPoint>,
}

/// An entry of a log, by seq and the digest of its stored bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPoint {
    pub seq: u64,
    pub entry: Digest,
}

/// An entry as read from the store.
#[derive(Clone, Debug)]
pub struct Stored {
    pub entry: Entry,
    /// sha256 of the stored bytes: what the next entry's `previous` names.
    pub digest: Digest,
    pub envelope: Envelope,
}

/// The signed `HEAD` checkpoint: entry `seq` of the channel is `entry`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    /// [`CHECKPOINT_SCHEMA`].
    pub schema: String,
    pub channel: String,
    pub name: String,
    pub seq: u64,
    /// Digest of entry `seq`'s stored bytes.
    pub entry: Digest,
    /// In the revocation log: every release revoked up to entry `seq`, with the entry that
    /// revoked it, so one read tells whether a release is revoked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked: BTreeMap<Digest, u64>,
}

/// What finding the head found.
struct Head {
    newest: Option<Stored>,
    /// The seq the checkpoint names (0 without one).
    checkpointed: u64,
    /// Every release revoked up to the newest entry (see [`Checkpoint::revoked`]).
    revoked: BTreeMap<Digest, u64>,
}

/// A checkpoint as read from the store.
struct ReadCheckpoint {
    checkpoint: Checkpoint,
    envelope: Envelope,
}

/// The checkpoint an audit found, for the auditor to keep: a later audit given it
/// (`--seen SEQ@DIGEST`) detects a rewind past it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSeen {
    pub seq: u64,
    pub entry: Digest,
    /// The key id that signed it.
    pub signer: Digest,
}

fn tampered(ch: &ChannelRef, seq: u64, reason: impl Into<String>) -> ReleaseError {
    ReleaseError::Tampered { channel: ch.to_string(), seq, reason: reason.into() }
}

/// Reads entry `seq`, checking that it is an entry of this channel at this seq. Its signature
/// is not checked here (that needs the auditor's keys; see [`verify_signature`]).
pub async fn read_entry(store: &Store, ch: &ChannelRef, seq: u64) -> Result<Option<Stored>> {
    let bytes = match store.log_read(&ch.entry_key(seq), ENTRY_LIMIT).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(kiln_store::StoreError::TooLarge { limit, .. }) => {
            return Err(tampered(ch, seq, format!("the entry is larger than {limit} bytes")))
        }
        Err(e) => return Err(e.into()),
    };
    let Opened { statement: entry, envelope } =
        signed::open::<Entry>(&bytes, ENTRY_PAYLOAD_TYPE).map_err(|r| tampered(ch, seq, r))?;
    let entry: Entry = entry;
    if entry.schema != ENTRY_SCHEMA
        || entry.channel != ch.channel.to_string()
        || entry.name != ch.name.to_string()
        || entry.seq != seq
    {
        return Err(tampered(
            ch,
            seq,
            format!(
                "the entry stored there says it is {}/{} entry {} ({}): moved or reordered",
                entry.channel, entry.name, entry.seq, entry.schema
            ),
        ));
    }
    Ok(Some(Stored { entry, digest: Digest::of(&bytes), envelope }))
}

/// Fails unless the entry is signed by one of `keys` and that key is the actor it names.
pub fn verify_signature(ch: &ChannelRef, stored: &Stored, keys: &[PublicKey]) -> Result<()> {
    match signed::signer(&stored.envelope, keys) {
        Some(id) if id == stored.entry.actor => Ok(()),
        Some(id) => Err(tampered(
            ch,
            stored.entry.seq,
            format!("signed by key {id} but names actor {}", stored.entry.actor),
        )),
        None => Err(tampered(
            ch,
            stored.entry.seq,
            format!(
                "its signature does not verify with any trusted key (it names actor {}): \
                 edited, or signed by an unknown key",
                stored.entry.actor
            ),
        )),
    }
}

/// Fails unless `next` links to `prev`.
fn check_link(ch: &ChannelRef, prev: Option<&Stored>, next: &Stored) -> Result<()> {
    let want = prev.map(|p| p.digest);
    if next.entry.previous != want {
        return Err(tampered(
            ch,
            next.entry.seq,
            format!(
                "it names previous entry {}, but entry {} is {}",
                next.entry.previous.map_or("none".to_string(), |d| d.to_string()),
                next.entry.seq - 1,
                want.map_or("absent".to_string(), |d| d.to_string())
            ),
        ));
    }
    Ok(())
}

/// Reads the checkpoint. One that is not a checkpoint of this channel is tampering: kiln only
/// ever writes whole, signed checkpoints there.
async fn read_checkpoint(store: &Store, ch: &ChannelRef) -> Result<Option<ReadCheckpoint>> {
    let bytes = match store.log_read(&ch.hint_key(), CHECKPOINT_LIMIT).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(kiln_store::StoreError::TooLarge { limit, .. }) => {
            return Err(tampered(ch, 0, format!("HEAD is larger than {limit} bytes")))
        }
        Err(e) => return Err(e.into()),
    };
    let bad = |why: String| tampered(ch, 0, format!("HEAD is not a signed checkpoint: {why}"));
    let Opened { statement, envelope } =
        signed::open::<Checkpoint>(&bytes, CHECKPOINT_PAYLOAD_TYPE).map_err(bad)?;
    let checkpoint: Checkpoint = statement;
    if checkpoint.schema != CHECKPOINT_SCHEMA
        || checkpoint.channel != ch.channel.to_string()
        || checkpoint.name != ch.name.to_string()
        || checkpoint.seq == 0
    {
        return Err(tampered(
            ch,
            checkpoint.seq,
            format!(
                "HEAD is a checkpoint of {}/{} entry {} ({}), not of this channel",
                checkpoint.channel, checkpoint.name, checkpoint.seq, checkpoint.schema
            ),
        ));
    }
    Ok(Some(ReadCheckpoint { checkpoint, envelope }))
}

/// The key id among `keys` that signed the checkpoint, or tampering.
fn checkpoint_signer(ch: &ChannelRef, cp: &ReadCheckpoint, keys: &[PublicKey]) -> Result<Digest> {
    signed::signer(&cp.envelope, keys).ok_or_else(|| {
        tampered(
            ch,
            cp.checkpoint.seq,
            format!(
                "HEAD (a checkpoint naming entry {}) is not signed by any trusted key: \
                 rewritten, perhaps to hide deleted entries",
                cp.checkpoint.seq
            ),
        )
    })
}

/// Fails unless the entry the checkpoint names is there, with the digest it names.
fn check_checkpointed(ch: &ChannelRef, cp: &Checkpoint, found: Option<&Stored>) -> Result<()> {
    match found {
        None => Err(tampered(
            ch,
            cp.seq,
            format!(
                "HEAD names entry {} as {}, but entry {} is missing: deleted",
                cp.seq, cp.entry, cp.seq
            ),
        )),
        Some(e) if e.digest != cp.entry => Err(tampered(
            ch,
            cp.seq,
            format!("HEAD names entry {} as {}, but it is {}", cp.seq, cp.entry, e.digest),
        )),
        Some(_) => Ok(()),
    }
}

/// The evidence of a missing checkpoint: entry 2 or later exists only after a checkpoint did.
fn no_checkpoint(ch: &ChannelRef, newest: u64) -> ReleaseError {
    tampered(
        ch,
        newest,
        format!(
            "HEAD (the signed checkpoint) is missing although {newest} entries exist: deleted, \
             perhaps with the newest entries"
        ),
    )
}

/// The channel's newest entry, or `None` for an empty channel, and the seq its checkpoint
/// names: from the checkpoint, probing forward, with each probed entry's link to its
/// predecessor checked. A few reads whatever the history's length. With `keys`, the
/// checkpoint and every entry read must be signed by one of them.
async fn find_head(store: &Store, ch: &ChannelRef, keys: &[PublicKey]) -> Result<Head> {
    match find_head_once(store, ch, keys).await? {
        Ok(found) => Ok(found),
        // A checkpoint may have been written between our read of it and our probing (entry 2
        // or later is only ever written after a checkpoint exists): read again.
        Err(_) => {
            find_head_once(store, ch, keys).await?.map_err(|newest| no_checkpoint(ch, newest))
        }
    }
}

/// One try of [`find_head`]; `Err(newest)` when no checkpoint was found beside 2 or more
/// entries.
async fn find_head_once(
    store: &Store,
    ch: &ChannelRef,
    keys: &[PublicKey],
) -> Result<std::result::Result<Head, u64>> {
    let checkpoint = read_checkpoint(store, ch).await?;
    let mut current = match &checkpoint {
        Some(cp) => {
            if !keys.is_empty() {
                checkpoint_signer(ch, cp, keys)?;
            }
            let found = read_entry(store, ch, cp.checkpoint.seq).await?;
            check_checkpointed(ch, &cp.checkpoint, found.as_ref())?;
            found
        }
        None => None,
    };
    let mut revoked = checkpoint.as_ref().map(|c| c.checkpoint.revoked.clone()).unwrap_or_default();
    loop {
        if let (Some(c), false) = (&current, keys.is_empty()) {
            verify_signature(ch, c, keys)?;
        }
        let next_seq = current.as_ref().map_or(1, |c| c.entry.seq + 1);
        let Some(next) = read_entry(store, ch, next_seq).await? else { break };
        check_link(ch, current.as_ref(), &next)?;
        if next.entry.action == Action::Revoke {
            revoked.entry(next.entry.release).or_insert(next.entry.seq);
        }
        current = Some(next);
    }
    let newest = current.as_ref().map_or(0, |c| c.entry.seq);
    Ok(match checkpoint {
        Some(cp) => Ok(Head { newest: current, checkpointed: cp.checkpoint.seq, revoked }),
        None if newest < 2 => Ok(Head { newest: current, checkpointed: 0, revoked }),
        None => Err(newest),
    })
}

/// The channel's newest entry, or `None` for an empty channel (see [`find_head`]).
pub async fn head(store: &Store, ch: &ChannelRef, keys: &[PublicKey]) -> Result<Option<Stored>> {
    Ok(find_head(store, ch, keys).await?.newest)
}

/// Every release the log `ch` revokes, with the entry that revoked it: from the checkpoint
/// and the entries after it, a few reads however long the log (see [`find_head`]).
pub async fn revoked(store: &Store, ch: &ChannelRef) -> Result<BTreeMap<Digest, u64>> {
    Ok(find_head(store, ch, &[]).await?.revoked)
}

/// The entry seqs present, sorted; a key that is neither an entry nor the hint is evidence of
/// tampering.
async fn list(store: &Store, ch: &ChannelRef) -> Result<Vec<u64>> {
    let prefix = ch.to_string();
    let mut seqs = Vec::new();
    for key in store.log_list(&prefix).await? {
        let Some(leaf) = key.strip_prefix(&prefix).and_then(|k| k.strip_prefix('/')) else {
            continue;
        };
        if leaf == "HEAD" {
            continue;
        }
        // Deeper keys belong to a longer image name sharing this prefix (prod/a and prod/a/b).
        if leaf.contains('/') {
            continue;
        }
        match leaf.parse::<u64>() {
            Ok(seq) if seq > 0 && seq.to_string() == leaf => seqs.push(seq),
            _ => return Err(tampered(ch, 0, format!("stray key log/{key} in the channel"))),
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Every entry of the channel, in order, each signature checked against `keys` and each link
/// to its predecessor, and the checkpoint checked against them: a gap, a fork, an edit, a
/// re-signature by an unknown key, a checkpoint not signed by one of `keys`, naming a missing
/// or different entry, or missing beside two or more entries, is [`ReleaseError::Tampered`]
/// naming the entry. A checkpoint behind the head is normal (a writer stopped between its
/// entry and the checkpoint) and is returned as such. With `seen` (a checkpoint the auditor
/// kept from an earlier audit), the chain must still hold that entry.
pub async fn audit(
    store: &Store,
    ch: &ChannelRef,
    keys: &[PublicKey],
    seen: Option<&Seen>,
) -> Result<Audit> {
    // The checkpoint is read before listing: a writer moves it only after its entry exists,
    // so an append racing this audit can never make it look ahead of the listed entries.
    let mut checkpoint = read_checkpoint(store, ch).await?;
    let seqs = list(store, ch).await?;
    if checkpoint.is_none() && seqs.len() >= 2 {
        // Entry 2 or later is only written after a checkpoint exists: one written since our
        // first read is there now.
        checkpoint = read_checkpoint(store, ch).await?;
        if checkpoint.is_none() {
            return Err(no_checkpoint(ch, seqs.len() as u64));
        }
    }
    if let Some((i, &seq)) = seqs.iter().enumerate().find(|(i, s)| **s != *i as u64 + 1) {
        return Err(tampered(
            ch,
            i as u64 + 1,
            format!("entry {} is missing (entry {seq} exists)", i + 1),
        ));
    }
    let mut entries: Vec<Stored> = futures::stream::iter(seqs.iter().copied())
        .map(|seq| async move {
            read_entry(store, ch, seq)
                .await?
                .ok_or_else(|| tampered(ch, seq, "the entry vanished while being read"))
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    if let Some(cp) = &checkpoint {
        // Only a checkpoint re-read after the listing can be ahead of it: the entries it
        // covers were appended since, and are read now.
        let mut next = entries.len() as u64 + 1;
        while next <= cp.checkpoint.seq {
            match read_entry(store, ch, next).await? {
                Some(e) => entries.push(e),
                None => break,
            }
            next += 1;
        }
    }
    verify_signatures(ch, &entries, keys)?;
    let mut prev: Option<&Stored> = None;
    for e in &entries {
        check_link(ch, prev, e)?;
        prev = Some(e);
    }
    let newest = entries.last().map_or(0, |l| l.entry.seq);
    let checkpoint = match &checkpoint {
        Some(cp) => {
            let signer = checkpoint_signer(ch, cp, keys)?;
            let at = cp.checkpoint.seq;
            check_checkpointed(ch, &cp.checkpoint, entries.get((at - 1) as usize))?;
            let mut revoked = BTreeMap::new();
            for e in entries.iter().take(at as usize).filter(|e| e.entry.action == Action::Revoke) {
                revoked.entry(e.entry.release).or_insert(e.entry.seq);
            }
            if revoked != cp.checkpoint.revoked {
                return Err(tampered(
                    ch,
                    at,
                    format!(
                        "HEAD lists {} revoked release(s), the entries up to {at} revoke {}",
                        cp.checkpoint.revoked.len(),
                        revoked.len()
                    ),
                ));
            }
            Some(CheckpointSeen { seq: at, entry: cp.checkpoint.entry, signer })
        }
        None => None,
    };
    if let Some(seen) = seen {
        let found = entries.get((seen.seq.max(1) - 1) as usize);
        if seen.seq == 0 || found.map(|e| e.digest) != Some(seen.entry) {
            return Err(tampered(
                ch,
                seen.seq,
                format!(
                    "an earlier audit saw entry {} as {}, but the channel now {}: rewound",
                    seen.seq,
                    seen.entry,
                    match found {
                        Some(e) => format!("has {} there", e.digest),
                        None => format!("ends at entry {newest}"),
                    }
                ),
            ));
        }
    }
    let hint_behind = newest - checkpoint.as_ref().map_or(0, |c| c.seq);
    Ok(Audit { entries, hint_behind, checkpoint })
}

/// An entry an auditor saw before, `SEQ@sha256:HEX` (a checkpoint `history` reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub seq: u64,
    pub entry: Digest,
}

impl FromStr for Seen {
    type Err = ReleaseError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| ReleaseError::InvalidName {
            what: "SEQ@DIGEST",
            text: s.to_string(),
            reason,
        };
        let (seq, entry) = s
            .split_once('@')
            .ok_or_else(|| bad("write the entry's seq, @ and its digest".to_string()))?;
        let seq = seq.parse::<u64>().map_err(|e| bad(format!("seq: {e}")))?;
        let entry = entry.parse().map_err(|e: kiln_oci::DigestError| bad(e.to_string()))?;
        if seq == 0 {
            return Err(bad("entries count from 1".to_string()));
        }
        Ok(Seen { seq, entry })
    }
}

/// Checks every entry's signature, on all cores (the bulk of an audit's CPU time); the
/// failure reported is the lowest-numbered entry's, as a sequential check would report.
fn verify_signatures(ch: &ChannelRef, entries: &[Stored], keys: &[PublicKey]) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = entries.len().div_ceil(threads).max(1);
    let failures: Vec<ReleaseError> = std::thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().find_map(|e| verify_signature(ch, e, keys).err()))
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(failure) => failure,
                // A worker that panicked checked nothing: never take that as a pass.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    // Chunks are in seq order, so the first failure found is the lowest-numbered one.
    match failures.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A verified channel.
pub struct Audit {
    /// Every entry, seq 1 first.
    pub entries: Vec<Stored>,
    /// How many entries the checkpoint is behind the head (0 when current).
    pub hint_behind: u64,
    /// The signed checkpoint, verified.
    pub checkpoint: Option<CheckpointSeen>,
}

/// What an append did.
#[derive(Clone, Debug)]
pub struct Appended {
    pub entry: Entry,
    pub digest: Digest,
    /// Attempts it took (more than one when other writers took seqs first).
    pub attempts: u32,
    /// Why the hint could not be moved forward (readers still find the entry by probing).
    pub hint_error: Option<String>,
}

/// Appends the entry `make(seq, previous)` signed by `key`, taking the next free seq: if
/// another writer takes it first, re-reads the head and makes the entry again (so `make` can
/// re-check anything that depends on the head). The checkpoint and the entries read to find
/// the head must be signed by one of `trusted`, so that nothing is appended after a rewound
/// or forged tail; a checkpoint behind the head is moved to it before the new entry is
/// written, so that entry 2 or later never exists without a checkpoint.
pub async fn append(
    store: &Store,
    ch: &ChannelRef,
    key: &PrivateKey,
    trusted: &[PublicKey],
    mut make: impl FnMut(Option<&Stored>) -> Result<Entry>,
) -> Result<Appended> {
    for attempt in 1..=APPEND_ATTEMPTS {
        let Head { newest: head, checkpointed, mut revoked } =
            find_head(store, ch, trusted).await?;
        if let Some(h) = head.as_ref().filter(|h| h.entry.seq > checkpointed) {
            store
                .log_hint(
                    &ch.hint_key(),
                    checkpoint_bytes(ch, h.entry.seq, h.digest, &revoked, key)?,
                )
                .await?;
        }
        let entry = make(head.as_ref())?;
        let bytes = signed::seal(ENTRY_PAYLOAD_TYPE, &entry, key)?;
        let digest = Digest::of(&bytes);
        match store.log_create(&ch.entry_key(entry.seq), Bytes::from(bytes)).await? {
            Created::Written => {
                if entry.action == Action::Revoke {
                    revoked.entry(entry.release).or_insert(entry.seq);
                }
                let hint_error = match checkpoint_bytes(ch, entry.seq, digest, &revoked, key) {
                    Ok(cp) => store.log_hint(&ch.hint_key(), cp).await.err().map(|e| chain(&e)),
                    Err(e) => Some(chain(&e)),
                };
                return Ok(Appended { entry, digest, attempts: attempt, hint_error });
            }
            Created::Taken => {
                // Spread retries of racing writers apart a little, differently per process.
                let spread = u64::from(std::process::id() % 7 + attempt % 5);
                tokio::time::sleep(std::time::Duration::from_millis(spread)).await;
            }
        }
    }
    Err(ReleaseError::Contended { channel: ch.to_string(), attempts: APPEND_ATTEMPTS })
}

/// The stored bytes of the checkpoint "entry `seq` of `ch` is `entry`", signed by `key`.
fn checkpoint_bytes(
    ch: &ChannelRef,
    seq: u64,
    entry: Digest,
    revoked: &BTreeMap<Digest, u64>,
    key: &PrivateKey,
) -> Result<Bytes> {
    let checkpoint = Checkpoint {
        schema: CHECKPOINT_SCHEMA.to_string(),
        channel: ch.channel.to_string(),
        name: ch.name.to_string(),
        seq,
        entry,
        revoked: revoked.clone(),
    };
    Ok(Bytes::from(signed::seal(CHECKPOINT_PAYLOAD_TYPE, &checkpoint, key)?))
}

/// The statement for the entry after `head`.
#[allow(clippy::too_many_arguments)]
pub fn next_entry(
    ch: &ChannelRef,
    head: Option<&Stored>,
    action: Action,
    release: Digest,
    version: &str,
    actor: Digest,
    reason: &str,
    policy: Digest,
) -> Entry {
    Entry {
        schema: ENTRY_SCHEMA.to_string(),
        channel: ch.channel.to_string(),
        name: ch.name.to_string(),
        seq: head.map_or(1, |h| h.entry.seq + 1),
        previous: head.map(|h| h.digest),
        action,
        release,
        version: version.to_string(),
        actor,
        time: signed::now(),
        reason: reason.to_string(),
        policy,
        revocations: None,
    }
}

/// An error and its causes, for a warning that must not lose them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

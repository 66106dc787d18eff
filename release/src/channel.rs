//! A channel of an image (`prod/hello`) is a chain of signed entries under
//! `log/<channel>/<name>/<seq>`, seq counting from 1. Each entry is a DSSE envelope, signed by
//! the actor, of a statement naming its channel, name and seq, the release, the previous
//! entry's digest (the sha256 of its stored bytes), the action, the actor's key id, the time,
//! a reason and the digest of the policy in force.
//!
//! Appending entry N+1 is a create-only put: on every backend exactly one writer gets it, and
//! the others re-read the head and try N+2, with no lock service. `HEAD` is an overwritable
//! hint (`{"seq":N,"entry":"sha256:…"}`) so the newest entry is found with a few reads whatever
//! the history's length: read the hint, then probe forward until an entry is missing. The hint
//! is never trusted alone: a hint naming a missing entry sends the reader to the full listing.

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
/// The hint is one small JSON object.
const HINT_LIMIT: u64 = 1024;
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
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Promote => "promote",
            Action::Rollback => "rollback",
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
}

/// An entry as read from the store.
#[derive(Clone, Debug)]
pub struct Stored {
    pub entry: Entry,
    /// sha256 of the stored bytes: what the next entry's `previous` names.
    pub digest: Digest,
    pub envelope: Envelope,
}

/// The `HEAD` hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hint {
    pub seq: u64,
    pub entry: Digest,
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

/// Reads the hint; a missing or malformed one is no hint (it only ever saves reads).
async fn read_hint(store: &Store, ch: &ChannelRef) -> Result<Option<Hint>> {
    Ok(match store.log_read(&ch.hint_key(), HINT_LIMIT).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).ok(),
        Ok(None) | Err(kiln_store::StoreError::TooLarge { .. }) => None,
        Err(e) => return Err(e.into()),
    })
}

/// The channel's newest entry, or `None` for an empty channel: from the hint, probing
/// forward, with each probed entry's link to its predecessor checked. A few reads whatever
/// the history's length; the full listing only when the hint names a missing entry.
pub async fn head(store: &Store, ch: &ChannelRef) -> Result<Option<Stored>> {
    let mut current = match read_hint(store, ch).await? {
        Some(hint) if hint.seq > 0 => match read_entry(store, ch, hint.seq).await? {
            Some(found) => Some(found),
            None => last_listed(store, ch).await?,
        },
        _ => None,
    };
    loop {
        let next_seq = current.as_ref().map_or(1, |c| c.entry.seq + 1);
        let Some(next) = read_entry(store, ch, next_seq).await? else { return Ok(current) };
        check_link(ch, current.as_ref(), &next)?;
        current = Some(next);
    }
}

/// The highest-numbered entry found by listing the channel.
async fn last_listed(store: &Store, ch: &ChannelRef) -> Result<Option<Stored>> {
    let seqs = list(store, ch).await?;
    match seqs.last() {
        Some(&seq) => read_entry(store, ch, seq).await,
        None => Ok(None),
    }
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
/// to its predecessor, and the hint checked against them: a gap, a fork, an edit, a
/// re-signature by an unknown key or a hint naming a missing or different entry is
/// [`ReleaseError::Tampered`] naming the entry. A hint behind the head is normal (a writer
/// stopped between its entry and the hint) and is returned as such.
pub async fn audit(store: &Store, ch: &ChannelRef, keys: &[PublicKey]) -> Result<Audit> {
    // The hint is read before listing: a writer moves it only after its entry exists, so an
    // append racing this audit can never make the hint look ahead of the listed entries.
    let hint = read_hint(store, ch).await?;
    let seqs = list(store, ch).await?;
    if let Some((i, &seq)) = seqs.iter().enumerate().find(|(i, s)| **s != *i as u64 + 1) {
        return Err(tampered(
            ch,
            i as u64 + 1,
            format!("entry {} is missing (entry {seq} exists)", i + 1),
        ));
    }
    let entries: Vec<Stored> = futures::stream::iter(seqs.iter().copied())
        .map(|seq| async move {
            read_entry(store, ch, seq)
                .await?
                .ok_or_else(|| tampered(ch, seq, "the entry vanished while being read"))
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    verify_signatures(ch, &entries, keys)?;
    let mut prev: Option<&Stored> = None;
    for e in &entries {
        check_link(ch, prev, e)?;
        prev = Some(e);
    }
    let hint_behind = match (&hint, entries.last()) {
        (Some(h), Some(last)) if h.seq > last.entry.seq => {
            return Err(tampered(
                ch,
                h.seq,
                format!("HEAD names entry {}, but the newest entry is {}", h.seq, last.entry.seq),
            ))
        }
        (Some(h), None) => {
            return Err(tampered(
                ch,
                h.seq,
                format!("HEAD names entry {}, but the channel is empty", h.seq),
            ))
        }
        (Some(h), Some(last)) => {
            let at = &entries[(h.seq.max(1) - 1) as usize];
            if h.seq == 0 || at.digest != h.entry {
                return Err(tampered(
                    ch,
                    h.seq,
                    format!("HEAD names entry {} as {}, but it is {}", h.seq, h.entry, at.digest),
                ));
            }
            last.entry.seq - h.seq
        }
        (None, last) => last.map_or(0, |l| l.entry.seq),
    };
    Ok(Audit { entries, hint_behind })
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
    /// How many entries the hint is behind the head (0 when current).
    pub hint_behind: u64,
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
/// re-check anything that depends on the head).
pub async fn append(
    store: &Store,
    ch: &ChannelRef,
    key: &PrivateKey,
    mut make: impl FnMut(Option<&Stored>) -> Result<Entry>,
) -> Result<Appended> {
    for attempt in 1..=APPEND_ATTEMPTS {
        let head = head(store, ch).await?;
        let entry = make(head.as_ref())?;
        let bytes = signed::seal(ENTRY_PAYLOAD_TYPE, &entry, key)?;
        let digest = Digest::of(&bytes);
        match store.log_create(&ch.entry_key(entry.seq), Bytes::from(bytes)).await? {
            Created::Written => {
                let hint = serde_json::to_vec(&Hint { seq: entry.seq, entry: digest })?;
                let hint_error = store
                    .log_hint(&ch.hint_key(), Bytes::from(hint))
                    .await
                    .err()
                    .map(|e| chain(&e));
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

//! Leases: what a build or copy is about to reference, so that gc keeps it.
//!
//! A blob a build reuses or uploads is referenced by no ref until the build sets its tag at the
//! end; a gc running meanwhile (with a short grace) would take it. So before a writer uses a
//! blob it writes a create-only record `leases/<id>/<n>` naming it, with an expiry and the
//! [`Holder`] writing it. gc lists blobs *before* it reads leases, so a blob uploaded after a
//! lease record naming it is either not in gc's listing or protected by the record. The lease
//! is renewed in the background while held and deleted once the writer's tag is set.
//!
//! A writer that finds the image it is about to tag already tagged that way needs no lease:
//! the tag keeps those blobs, and a store whose writers all follow this protocol never holds
//! a tag to an incomplete image. So the blobs a tag keeps when the lease is taken
//! ([`Lease::keep_tagged`]) are named without a record, and records are written only for
//! others. Before tagging, [`Lease::before_tagging`] says whether the tag already points at
//! the image (then nothing is written at all: an unchanged build or push makes no `PUT`);
//! if not, it records every blob named so far, before [`Store::confirm_image`] looks for
//! what a gc may have taken, exactly as if nothing had been deferred. A build reads what the
//! tag keeps in the background ([`Lease::keep_tagged_meanwhile`]), beside its own first
//! requests: nothing is named until that is known.
//!
//! A lease is live until its newest expiry, unless its holder is known dead (same machine,
//! process gone): then gc deletes it at once. Expiries use the local clock of writer and gc,
//! which must agree to well within [`TTL`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kiln_oci::{Descriptor, Digest};
use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};

use crate::error::{one_line, Result, StoreError};
use crate::holder::Holder;
use crate::reference::{RepoName, Tag};
use crate::{key, Store};

/// How long a lease record keeps what it names without renewal.
pub const TTL: Duration = Duration::from_secs(120);
/// How often a held lease is renewed; a third of [`TTL`], so two renewals may fail in a row.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(40);
/// Lease records read at once by gc.
const READ_CONCURRENCY: usize = 16;

/// One lease record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// Seconds since 1970 after which this record protects nothing.
    expires: u64,
    /// Who wrote it, when `/proc` could say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<Holder>,
    /// The blobs it protects.
    blobs: Vec<Digest>,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A held lease; [`Lease::release`] it when the tag that references its blobs is set.
/// Dropped without release, it stops being renewed and expires.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
    renewer: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    store: Store,
    id: String,
    next: AtomicU64,
    holder: Option<Holder>,
    /// Whether a record is in the store, so that there is something to renew and delete.
    written: AtomicBool,
    deferral: Mutex<Deferral>,
    /// Held while what the tag keeps is read in the background; then the error of that
    /// read, if any, until a naming takes it.
    tag_read: Arc<tokio::sync::Mutex<Option<StoreError>>>,
}

/// Blobs named without a record because a tag keeps them.
#[derive(Debug, Default)]
struct Deferral {
    /// What the tag kept when the lease began; `None` once everything is recorded as named.
    kept: Option<HashSet<Digest>>,
    /// Named, kept, not recorded.
    named: Vec<Digest>,
}

impl Shared {
    fn deferral(&self) -> std::sync::MutexGuard<'_, Deferral> {
        // The state stays consistent whatever panicked while holding it.
        self.deferral.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Names `blobs`: recorded at once, unless a tag keeps every one of them. True when a
    /// record naming them is in the store now.
    pub(crate) async fn name(&self, blobs: &[Digest]) -> Result<bool> {
        self.tag_known().await?;
        let record = {
            let mut deferral = self.deferral();
            let Deferral { kept, named } = &mut *deferral;
            match kept {
                Some(kept) if blobs.iter().all(|b| kept.contains(b)) => {
                    named.extend_from_slice(blobs);
                    return Ok(false);
                }
                // Recorded along, so that once the lease is in the store it names everything.
                _ => named.drain(..).chain(blobs.iter().copied()).collect(),
            }
        };
        self.write(record).await?;
        Ok(true)
    }

    /// Waits until what the tag keeps is known, if it is being read in the background
    /// ([`Lease::keep_tagged_meanwhile`]); that read's error is returned once.
    async fn tag_known(&self) -> Result<()> {
        match self.tag_read.lock().await.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// See [`Lease::keep_tagged`].
    async fn keep_tagged(&self, name: &RepoName, tag: &Tag) -> Result<()> {
        let Some(root) = self.store.get_ref(name, tag).await? else { return Ok(()) };
        let blobs = match crate::walk::image_blobs(&self.store, &root).await {
            Ok(blobs) => blobs,
            // The image is not whole (a tag moved meanwhile, or a blob is damaged and the
            // writer is about to heal it): nothing is taken as kept, everything is recorded.
            Err(e) if e.is_integrity_failure() => return Ok(()),
            Err(e) => return Err(e),
        };
        self.deferral().kept = Some(blobs.iter().map(|d| d.digest).collect());
        Ok(())
    }

    /// Records what was deferred, and defers nothing from now on.
    async fn record_deferred(&self) -> Result<()> {
        let named = {
            let mut deferral = self.deferral();
            deferral.kept = None;
            std::mem::take(&mut deferral.named)
        };
        if named.is_empty() {
            return Ok(());
        }
        self.write(named).await
    }

    /// The key of the lease's record number `n`.
    fn key(&self, n: u64) -> Key {
        Key::from(format!("{}/{}/{n}", key::LEASES, self.id))
    }

    async fn write(&self, blobs: Vec<Digest>) -> Result<()> {
        self.written.store(true, Ordering::SeqCst);
        let key = self.key(self.next.fetch_add(1, Ordering::SeqCst));
        let record =
            Record { expires: unix_now() + TTL.as_secs(), holder: self.holder.clone(), blobs };
        let bytes = serde_json::to_vec(&record)
            .map_err(|source| StoreError::Json { key: key.to_string(), source })?;
        self.store.create(&key, Bytes::from(bytes)).await?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Lease {
    /// Names `blobs` in the lease before they are used.
    pub async fn add(&self, blobs: &[Digest]) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        self.shared.name(blobs).await.map(|_| ())
    }

    /// Reads what `name:tag` points at now; the blobs of that image are then named without a
    /// record while the tag keeps them (see the module documentation). Call it before
    /// anything is named.
    pub async fn keep_tagged(&self, name: &RepoName, tag: &Tag) -> Result<()> {
        self.shared.keep_tagged(name, tag).await
    }

    /// [`Lease::keep_tagged`] in the background (on the current tokio runtime), so that its
    /// round trips (the tag, then the image it points at) go beside the writer's own first
    /// work: the first blob named, and [`Lease::before_tagging`], wait until it is done, and
    /// the first of them fails with its error. Call it before anything is named.
    pub async fn keep_tagged_meanwhile(&self, name: RepoName, tag: Tag) {
        // Taken here, not in the task, so that no naming can come before it.
        let mut reading = self.shared.tag_read.clone().lock_owned().await;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = shared.keep_tagged(&name, &tag).await {
                *reading = Some(e);
            }
        });
    }

    /// Just before `name:tag` is set to `root`: true when it already points at `root`, so
    /// the tag keeps the image and there is nothing to set or to confirm. Otherwise every
    /// blob named so far is recorded, before [`Store::confirm_image`] is called.
    pub async fn before_tagging(
        &self,
        name: &RepoName,
        tag: &Tag,
        root: &Descriptor,
    ) -> Result<bool> {
        self.shared.tag_known().await?;
        if self.shared.store.get_ref(name, tag).await?.as_ref() == Some(root) {
            return Ok(true);
        }
        self.shared.record_deferred().await?;
        Ok(false)
    }

    /// Whether the lease has written any record (a writer that found everything kept by its
    /// tag writes none).
    pub fn recorded(&self) -> bool {
        self.shared.written.load(Ordering::SeqCst)
    }

    /// Ends the lease: its records are deleted and gc may take what nothing else holds.
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        if !self.recorded() {
            return Ok(());
        }
        // Every record this lease wrote is numbered below `next`: they are deleted without
        // listing them first (one that was never written is not an error).
        let written = self.shared.next.load(Ordering::SeqCst);
        let records = (0..written).map(|n| self.shared.key(n)).collect();
        self.shared.store.delete_all(records).await
    }
}

/// What gc learns from the leases.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    /// How many leases are live.
    pub live: u64,
    /// Blobs named by live leases.
    pub blobs: Vec<Digest>,
    /// Records of expired leases and of leases whose holder died.
    pub dead: Vec<Key>,
}

impl Store {
    /// This store, through a handle whose blob writes ([`Store::put_blob`],
    /// [`Store::put_blob_checked`]) first name the blob in `lease`: for writers that do not
    /// lease themselves (attaching signatures, SBOMs and provenance).
    pub fn leased(&self, lease: &Lease) -> Store {
        Store { lease: Some(lease.shared.clone()), ..self.clone() }
    }

    /// Names `digest` in this handle's lease, if it has one, before it is written.
    pub(crate) async fn lease_blob(&self, digest: &Digest) -> Result<()> {
        self.lease_blobs(std::slice::from_ref(digest)).await.map(|_| ())
    }

    /// Names `blobs` in this handle's lease ([`Store::leased`]), if it has one, before they
    /// are used or written: [`Lease::add`] for a task that holds a store handle only. True
    /// when a record naming them is in the store now (false when none was written, as for
    /// blobs a tag keeps): a blob this caller then creates cannot be taken by any gc while
    /// the lease is held, so [`Store::confirm_image`] need not look for it.
    pub async fn lease_blobs(&self, blobs: &[Digest]) -> Result<bool> {
        match &self.lease {
            Some(lease) if !blobs.is_empty() => lease.name(blobs).await,
            _ => Ok(false),
        }
    }

    /// Takes a new lease, renewed in the background (on the current tokio runtime) until it
    /// is released or dropped. Its first record is written with the first blob it must
    /// record, so a lease that only ever names blobs a tag keeps writes nothing.
    pub async fn lease(&self) -> Result<Lease> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let holder = Holder::current();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{nanos}-{}-{n}", std::process::id());
        let shared = Arc::new(Shared {
            store: self.clone(),
            id,
            next: AtomicU64::new(0),
            holder,
            written: AtomicBool::new(false),
            deferral: Mutex::new(Deferral::default()),
            tag_read: Arc::default(),
        });
        let renewing = shared.clone();
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if !renewing.written.load(Ordering::SeqCst) {
                    continue;
                }
                if let Err(e) = renewing.write(Vec::new()).await {
                    log::warn!("cannot renew store lease {}: {}", renewing.id, one_line(&e));
                }
            }
        });
        Ok(Lease { shared, renewer })
    }

    /// Reads every lease record: the blobs live leases name, and the records of dead ones.
    pub(crate) async fn read_leases(&self) -> Result<Leases> {
        let listed = self.list_under(key::LEASES).await?;
        let records: Vec<(Key, Option<Record>)> = futures::stream::iter(listed)
            .map(|entry| async move {
                let bytes = self.read_object(&entry.key).await?;
                // A record that does not decode protects nothing; it is treated as expired.
                let record = bytes.and_then(|b| serde_json::from_slice::<Record>(&b).ok());
                Ok::<_, StoreError>((entry.key, record))
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let now = unix_now();
        let mut by_lease: std::collections::BTreeMap<String, Vec<(Key, Option<Record>)>> =
            Default::default();
        for (key, record) in records {
            let id = key.parts().nth(1).map(|p| p.as_ref().to_string()).unwrap_or_default();
            by_lease.entry(id).or_default().push((key, record));
        }
        let mut leases = Leases::default();
        for (_, records) in by_lease {
            let valid = || records.iter().filter_map(|(_, r)| r.as_ref());
            let expires = valid().map(|r| r.expires).max().unwrap_or(0);
            let holder_dead = valid().any(|r| r.holder.as_ref().is_some_and(Holder::is_dead));
            if expires > now && !holder_dead {
                leases.live += 1;
                leases.blobs.extend(valid().flat_map(|r| r.blobs.iter().copied()));
            } else {
                leases.dead.extend(records.into_iter().map(|(key, _)| key));
            }
        }
        Ok(leases)
    }
}

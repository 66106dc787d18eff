//! Leases: what a build or copy is about to reference, so that gc keeps it.
//!
//! A blob a build reuses or uploads is referenced by no ref until the build sets its tag at the
//! end; a gc running meanwhile (with a short grace) would take it. So before a writer uses a
//! blob it writes a create-only record `leases/<id>/<n>` naming it, with an expiry and the
//! [`Holder`] writing it. gc lists blobs *before* it reads leases, so a blob uploaded after a
//! lease record naming it is either not in gc's listing or protected by the record. The lease
//! is renewed in the background while held and deleted once the writer's tag is set.
//!
//! A lease is live until its newest expiry, unless its holder is known dead (same machine,
//! process gone): then gc deletes it at once. Expiries use the local clock of writer and gc,
//! which must agree to well within [`TTL`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kiln_oci::Digest;
use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};

use crate::error::{one_line, Result, StoreError};
use crate::holder::Holder;
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
}

impl Shared {
    pub(crate) async fn write(&self, blobs: Vec<Digest>) -> Result<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let key = Key::from(format!("{}/{}/{n}", key::LEASES, self.id));
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
        self.shared.write(blobs.to_vec()).await
    }

    /// Ends the lease: its records are deleted and gc may take what nothing else holds.
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        let prefix = format!("{}/{}", key::LEASES, self.shared.id);
        let records = self.shared.store.list_under(&prefix).await?;
        self.shared.store.delete_all(records.into_iter().map(|r| r.key).collect()).await
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
        match &self.lease {
            Some(lease) => lease.write(vec![*digest]).await,
            None => Ok(()),
        }
    }

    /// Takes a new lease, renewed in the background (on the current tokio runtime) until it
    /// is released or dropped.
    pub async fn lease(&self) -> Result<Lease> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let holder = Holder::current();
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{nanos}-{}-{n}", std::process::id());
        let shared = Arc::new(Shared { store: self.clone(), id, next: AtomicU64::new(0), holder });
        // The first record carries the expiry even before any blob is named.
        shared.write(Vec::new()).await?;
        let renewing = shared.clone();
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if let Err(e) = renewing.write(Vec::new()).await {
                    eprintln!(
                        "warning: cannot renew store lease {}: {}",
                        renewing.id,
                        one_line(&e)
                    );
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

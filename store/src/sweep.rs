//! Sweeps: a gc announces that it is about to delete, so a build can make sure that no blob
//! it leased was deleted by a gc that read the leases before the lease was written.
//!
//! A lease protects a blob from every gc that reads the leases after the lease record is
//! written. A gc that read them just before may still delete the blob, even after the build
//! saw it present. So gc writes a record `sweeps/<id>` before its last read of the leases, and
//! deletes it once it has deleted what it was going to delete. A build, once it has leased
//! everything its image references and before it sets the tag, lists the sweeps in progress,
//! waits for each to end, and only then checks that every blob of the image is present
//! ([`Store::confirm_image`]). Any gc either read the leases after the lease record (and kept
//! the blob), or had written its sweep record before the build leased; then the sweep was
//! seen in progress and waited for, or had ended, and either way its deletions are over when
//! the build looks. What is found missing is built or uploaded again under the same lease.
//! A blob the build created itself after a lease record named it needs no look: a gc that
//! listed it read the leases after the record ([`Store::confirm_image_except`]).
//!
//! A sweep record carries an expiry, renewed while the gc runs, and its [`Holder`], so that
//! one left by a killed gc is not waited for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kiln_oci::{Descriptor, Digest};
use object_store::path::Path as Key;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use crate::error::{one_line, Result, StoreError};
use crate::holder::Holder;
use crate::lease::{unix_now, RENEW_EVERY, TTL};
use crate::{key, Store};

/// How often a build looks again at a sweep it waits for.
const POLL: Duration = Duration::from_millis(100);

/// One sweep record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// Seconds since 1970 after which the sweep is taken as over.
    expires: u64,
    /// The gc process, when `/proc` could say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<Holder>,
}

impl Record {
    fn fresh() -> Record {
        Record { expires: unix_now() + TTL.as_secs(), holder: Holder::current() }
    }

    fn live(&self) -> bool {
        self.expires > unix_now() && !self.holder.as_ref().is_some_and(Holder::is_dead)
    }

    fn payload(&self, key: &Key) -> Result<PutPayload> {
        let bytes = serde_json::to_vec(self)
            .map_err(|source| StoreError::Json { key: key.to_string(), source })?;
        Ok(Bytes::from(bytes).into())
    }
}

/// A sweep in progress, announced by a gc; [`Sweep::end`] it once its deletions are done.
#[derive(Debug)]
pub(crate) struct Sweep {
    store: Store,
    key: Key,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Sweep {
    /// Deletes the record: builds waiting for this sweep go on.
    pub(crate) async fn end(self) -> Result<()> {
        self.renewer.abort();
        match self.store.inner.delete(&self.key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::backend(&self.key, source)),
        }
    }
}

/// A sweep a build saw in progress, to wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepInProgress {
    key: Key,
}

impl Store {
    /// Announces a sweep; the record is renewed in the background until it is ended.
    pub(crate) async fn begin_sweep(&self) -> Result<Sweep> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let key = Key::from(format!("{}/{nanos}-{}-{n}", key::SWEEPS, std::process::id()));
        let record = serde_json::to_vec(&Record::fresh())
            .map_err(|source| StoreError::Json { key: key.to_string(), source })?;
        self.create(&key, Bytes::from(record)).await?;
        let (store, renewed) = (self.clone(), key.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let put = match Record::fresh().payload(&renewed) {
                    Ok(payload) => store
                        .inner
                        .put(&renewed, payload)
                        .await
                        .map_err(|e| StoreError::backend(&renewed, e)),
                    Err(e) => Err(e),
                };
                if let Err(e) = put {
                    log::warn!("cannot renew gc sweep record {renewed}: {}", one_line(&e));
                }
            }
        });
        Ok(Sweep { store: self.clone(), key, renewer })
    }

    /// The live sweep records, and the records of sweeps that are over (expired, or their gc
    /// is known dead), which gc deletes.
    pub(crate) async fn read_sweeps(&self) -> Result<(Vec<SweepInProgress>, Vec<Key>)> {
        let (mut live, mut dead) = (Vec::new(), Vec::new());
        for entry in self.list_under(key::SWEEPS).await? {
            match self.sweep_live(&entry.key).await? {
                Some(true) => live.push(SweepInProgress { key: entry.key }),
                Some(false) => dead.push(entry.key),
                None => {}
            }
        }
        Ok((live, dead))
    }

    /// Whether the sweep at `key` is live; `None` when its record is gone.
    async fn sweep_live(&self, key: &Key) -> Result<Option<bool>> {
        let Some(bytes) = self.read_object(key).await? else { return Ok(None) };
        // A record that does not decode announces nothing.
        Ok(Some(serde_json::from_slice::<Record>(&bytes).is_ok_and(|r| r.live())))
    }

    /// The sweeps in progress now.
    pub async fn sweeps_in_progress(&self) -> Result<Vec<SweepInProgress>> {
        Ok(self.read_sweeps().await?.0)
    }

    /// Returns once each of `sweeps` has ended (or expired, or its gc died).
    pub async fn wait_for_sweeps(&self, sweeps: &[SweepInProgress]) -> Result<()> {
        for sweep in sweeps {
            while self.sweep_live(&sweep.key).await? == Some(true) {
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// Once every blob the image at `root` references is leased: waits for the sweeps in
    /// progress, then returns the image's blobs that are not stored (see the module
    /// documentation). An index or manifest found missing ends the walk; it is returned alone.
    pub async fn confirm_image(&self, root: &Descriptor) -> Result<Vec<Digest>> {
        self.confirm_image_except(root, &BTreeSet::new(), &BTreeMap::new()).await
    }

    /// [`Store::confirm_image`], not looking again for the blobs in `written`: those the
    /// writer created itself, each after a lease record naming it was stored. gc lists blobs
    /// before it reads leases, so no gc can take such a blob while the lease is held: one
    /// that listed it read the record after. The indexes and manifests in `documents` (the
    /// writer's own bytes, by digest) are not read to learn what they name. Where every blob
    /// of the image is such, nothing is asked of the store.
    pub async fn confirm_image_except(
        &self,
        root: &Descriptor,
        written: &BTreeSet<Digest>,
        documents: &BTreeMap<Digest, Bytes>,
    ) -> Result<Vec<Digest>> {
        // The walk reads documents before the sweeps are waited for; a document not written
        // here is looked at again after, as every other blob.
        let blobs = match crate::walk::image_blobs_with(self, root, documents).await {
            Ok(blobs) => blobs,
            Err(StoreError::NotFound { key }) => {
                let digest = key.rsplit('/').next().and_then(|hex| Digest::from_hex(hex).ok());
                return Ok(digest.into_iter().collect());
            }
            Err(e) => return Err(e),
        };
        let looked: Vec<Digest> =
            blobs.iter().map(|b| b.digest).filter(|d| !written.contains(d)).collect();
        if looked.is_empty() {
            return Ok(Vec::new());
        }
        let sweeps = self.sweeps_in_progress().await?;
        self.wait_for_sweeps(&sweeps).await?;
        let missing: Vec<Option<Digest>> = futures::stream::iter(looked)
            .map(|digest| async move {
                Ok::<_, StoreError>((!self.has_blob(&digest).await?).then_some(digest))
            })
            .buffered(crate::blob::SMALL_REQUESTS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(missing.into_iter().flatten().collect())
    }
}

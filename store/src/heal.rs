//! Healing what a build takes from the store. A blob a build reuses (a cached layer, a disk
//! artifact's files) or finds already stored instead of uploading it is checked before it is
//! trusted: cheaply every time (existence, size and date, from one HEAD each, concurrently),
//! and by content when asked to or when the cheap check fails. A blob proven corrupt is moved
//! aside to `quarantine/sha256/<hex>`, which frees its key for a verified, create-only write:
//! damaged bytes are never overwritten by unverified ones, nor trusted again.

use std::time::SystemTime;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kiln_oci::Digest;
use serde::Serialize;

use crate::blob::{PutOutcome, SMALL_REQUESTS_IN_FLIGHT};
use crate::error::{Result, StoreError};
use crate::{key, Store};

/// Blobs re-hashed at once while judging reuse; each streams, so memory stays flat.
const CONTENT_CHECKS_IN_FLIGHT: usize = 4;

/// A blob a build means to take from the store.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    /// The blob's digest.
    pub digest: Digest,
    /// The size the record asking for it gives.
    pub size: u64,
    /// When that record was written (the backend's clock), if it is a stored record: a blob
    /// written after the record that vouches for it was replaced since, and is re-hashed.
    pub vouched: Option<SystemTime>,
}

/// What the check of a wanted blob concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Present with the wanted size (and, when it was read, the right content): use it.
    Sound,
    /// Not in the store.
    Missing,
    /// The blob is sound but has another size than wanted: the record asking for it is
    /// wrong, and the blob is left alone.
    WrongRecord {
        /// The blob's real size.
        size: u64,
    },
    /// The blob was corrupt and has been moved aside; its key is free for a verified write.
    Quarantined(Quarantined),
}

/// A corrupt blob moved out of `blobs/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantined {
    /// The blob key the bytes were under.
    pub key: String,
    /// Where they are now, kept for inspection; safe to delete.
    pub quarantine: String,
    /// What the bytes hash to.
    pub found: Digest,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} held {} and was moved to {}", self.key, self.found, self.quarantine)
    }
}

/// What writing a small blob found under its key.
#[derive(Clone, Debug)]
pub struct CheckedPut {
    /// What the write did.
    pub outcome: PutOutcome,
    /// The corrupt bytes the write replaced, if any.
    pub healed: Option<Quarantined>,
}

impl Store {
    /// The size and write time of the blob, or `None` when it is not stored: one HEAD.
    async fn stat_blob(&self, digest: &Digest) -> Result<Option<(u64, SystemTime)>> {
        let key = key::blob(digest);
        match self.inner.head(&key).await {
            Ok(meta) => Ok(Some((meta.size, meta.last_modified.into()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::backend(&key, source)),
        }
    }

    /// Judges each of `wanted`, in order: one HEAD each, concurrently, and a re-hash of those
    /// whose size or date is off, or of all of them when `content` is set. Corrupt blobs are
    /// quarantined on the way.
    pub async fn check_reuse(&self, wanted: &[Wanted], content: bool) -> Result<Vec<Reuse>> {
        // The requests are made into a list before they are streamed (not mapped lazily), so
        // that this future can be spawned: rustc cannot prove a lazily mapped one `Send`.
        let stats: Vec<_> = wanted.iter().map(|w| self.stat_blob(&w.digest)).collect();
        let stats: Vec<Option<(u64, SystemTime)>> =
            futures::stream::iter(stats).buffered(SMALL_REQUESTS_IN_FLIGHT).try_collect().await?;
        let verdicts: Vec<_> =
            wanted.iter().zip(stats).map(|(w, stat)| self.verdict(w, stat, content)).collect();
        futures::stream::iter(verdicts).buffered(CONTENT_CHECKS_IN_FLIGHT).try_collect().await
    }

    /// Judges `wanted` from its `stat`: sound without a read unless its size or date is off or
    /// `content` is set.
    async fn verdict(
        &self,
        wanted: &Wanted,
        stat: Option<(u64, SystemTime)>,
        content: bool,
    ) -> Result<Reuse> {
        let Some((size, written)) = stat else { return Ok(Reuse::Missing) };
        let replaced = wanted.vouched.is_some_and(|vouched| written > vouched);
        if size == wanted.size && !replaced && !content {
            return Ok(Reuse::Sound);
        }
        self.judge(wanted).await
    }

    /// Re-hashes a wanted blob and quarantines it if it is corrupt.
    async fn judge(&self, wanted: &Wanted) -> Result<Reuse> {
        match self.verify_blob(&wanted.digest).await {
            Ok(size) if size == wanted.size => Ok(Reuse::Sound),
            Ok(size) => Ok(Reuse::WrongRecord { size }),
            Err(StoreError::DigestMismatch { found, .. }) => {
                Ok(Reuse::Quarantined(self.quarantine_blob(&wanted.digest, found).await?))
            }
            Err(StoreError::NotFound { .. }) => Ok(Reuse::Missing),
            Err(e) => Err(e),
        }
    }

    /// Moves the blob `digest`, whose bytes hash to `found`, to `quarantine/sha256/<hex>`
    /// (replacing bytes quarantined there before), where gc deletes it after its grace. A blob already gone was moved by someone
    /// else, which is as good.
    pub async fn quarantine_blob(&self, digest: &Digest, found: Digest) -> Result<Quarantined> {
        let from = key::blob(digest);
        let to = key::quarantine(digest);
        match self.inner.rename(&from, &to).await {
            Ok(()) => {
                // A folder keeps the blob's date through the rename; gc ages quarantined bytes
                // from when they were moved aside, as a bucket's copy does.
                if let Some(folder) = &self.folder {
                    let path = folder.join(to.as_ref());
                    std::fs::File::options()
                        .write(true)
                        .open(&path)
                        .and_then(|file| file.set_modified(SystemTime::now()))
                        .map_err(|source| StoreError::LocalFile { path, source })?;
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(StoreError::backend(&from, source)),
        }
        Ok(Quarantined { key: from.to_string(), quarantine: to.to_string(), found })
    }

    /// Stores a small blob (a config, manifest or index) whose bytes the caller holds. What is
    /// already under its key is read and compared, which costs one request as a HEAD would:
    /// equal bytes are kept, other bytes are corrupt and quarantined, then replaced by these.
    pub async fn put_blob_checked(&self, bytes: Bytes) -> Result<CheckedPut> {
        let digest = Digest::of(&bytes);
        // The lease record goes up while the key is read; nothing is written before both are
        // done. Bytes found there are used only once named (a gc that took them meanwhile is
        // caught by [`Store::confirm_image`], whichever of the two came first).
        let (leased, found) = futures::join!(self.lease_blob(&digest), self.look(&bytes, &digest));
        leased?;
        self.keep_or_replace(bytes, digest, found?).await
    }

    /// [`Store::put_blob_checked`] for bytes the caller expects are not stored yet (the
    /// documents of a build that uploaded new layers): written create-only at once, one
    /// request; only when something is there already is it read and judged as
    /// [`Store::put_blob_checked`] does.
    pub async fn put_new_blob_checked(&self, bytes: Bytes) -> Result<CheckedPut> {
        let digest = Digest::of(&bytes);
        self.lease_blob(&digest).await?;
        self.create_checked(bytes, digest).await
    }

    /// [`Store::put_blob_checked`] for `documents` listed each after those it names (a
    /// config, then manifests, then an index), all named in one lease record. Unless `new`
    /// (the caller expects none stored yet: each is then created at once), every key is read
    /// at once, beside the record: an unchanged build finds them all in one round trip, not
    /// one each. Whatever must be written is written after the record and in the given order,
    /// so that no document is visible before one it names. Also says whether a lease record
    /// naming them is in the store now (see [`Store::lease_blobs`]).
    pub async fn put_documents_checked(
        &self,
        documents: &[Bytes],
        new: bool,
    ) -> Result<(bool, Vec<CheckedPut>)> {
        let digests: Vec<Digest> = documents.iter().map(|d| Digest::of(d)).collect();
        let looks = async {
            if new {
                return Ok(Vec::new());
            }
            let looks =
                documents.iter().zip(&digests).map(|(bytes, digest)| self.look(bytes, digest));
            futures::future::try_join_all(looks).await
        };
        let (recorded, found) = futures::join!(self.lease_blobs(&digests), looks);
        let (recorded, found) = (recorded?, found?);
        let mut puts = Vec::with_capacity(documents.len());
        let mut found = found.into_iter();
        for (bytes, digest) in documents.iter().zip(digests) {
            let put = match found.next() {
                Some(found) => self.keep_or_replace(bytes.clone(), digest, found).await?,
                None => self.create_checked(bytes.clone(), digest).await?,
            };
            puts.push(put);
        }
        Ok((recorded, puts))
    }

    /// Writes `bytes` (of `digest`) create-only; only when something is there already is it
    /// read and judged.
    async fn create_checked(&self, bytes: Bytes, digest: Digest) -> Result<CheckedPut> {
        let key = key::blob(&digest);
        if self.create(&key, bytes.clone()).await? {
            let outcome = PutOutcome { digest, size: bytes.len() as u64, uploaded: true };
            return Ok(CheckedPut { outcome, healed: None });
        }
        let found = self.look(&bytes, &digest).await?;
        self.keep_or_replace(bytes, digest, found).await
    }

    /// Reads what is stored under the key of `bytes` (of `digest`), and compares it with them.
    async fn look(&self, bytes: &Bytes, digest: &Digest) -> Result<Found> {
        let key = key::blob(digest);
        match self.inner.get(&key).await {
            Err(object_store::Error::NotFound { .. }) => Ok(Found::Nothing),
            Err(source) => Err(StoreError::backend(&key, source)),
            Ok(got) if got.meta.size == bytes.len() as u64 => {
                let stored = got.bytes().await.map_err(|e| StoreError::backend(&key, e))?;
                if stored == *bytes {
                    Ok(Found::Equal)
                } else {
                    Ok(Found::Other(Digest::of(&stored)))
                }
            }
            // Another size: never held in memory, only hashed as it streams when judged.
            Ok(_) => Ok(Found::OtherSize),
        }
    }

    /// Keeps what was `found` under the key of `bytes` when it is equal, otherwise
    /// quarantines it and writes `bytes`, create-only.
    async fn keep_or_replace(
        &self,
        bytes: Bytes,
        digest: Digest,
        found: Found,
    ) -> Result<CheckedPut> {
        let size = bytes.len() as u64;
        let key = key::blob(&digest);
        let present = PutOutcome { digest, size, uploaded: false };
        let healed = match found {
            Found::Nothing => None,
            Found::Equal => return Ok(CheckedPut { outcome: present, healed: None }),
            Found::Other(found) => Some(self.quarantine_blob(&digest, found).await?),
            Found::OtherSize => match self.judge(&Wanted { digest, size, vouched: None }).await? {
                Reuse::Quarantined(quarantined) => Some(quarantined),
                Reuse::Missing => None,
                Reuse::Sound | Reuse::WrongRecord { .. } => {
                    return Ok(CheckedPut { outcome: present, healed: None })
                }
            },
        };
        let uploaded = self.create(&key, bytes).await?;
        Ok(CheckedPut { outcome: PutOutcome { uploaded, ..present }, healed })
    }
}

/// What was under a small blob's key, compared with the bytes meant for it.
enum Found {
    Nothing,
    /// The very bytes.
    Equal,
    /// Bytes of the same size hashing to this other digest: corrupt.
    Other(Digest),
    /// Bytes of another size, not read.
    OtherSize,
}

//! The builder's blob sink backed by a kiln store: [`StoreSink`] stores what a build makes,
//! uploading finished blobs in the background, and looks up and writes the build cache.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use kiln_attest::known_layers::{DiffIdCheck, KnownLayers};
use kiln_attest::AttestError;
use kiln_builder::build::{BlobSink, BlobStream, SinkError};
use kiln_builder::image::JsonBlob;
use kiln_builder::layer::LayerBlob;
use kiln_builder::LayerRecord;
use kiln_oci::{Descriptor, Digest, ImageManifest};
use kiln_store::cache::{CacheLookup, CacheRecord, CacheSigner, CacheTrust, Refusal};
use kiln_store::lease::Lease;
use kiln_store::{Quarantined, Reuse, Store, StoreError, Wanted};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

mod streaming;

use streaming::Streams;

/// Cache kind under which layer records are kept.
const LAYER_CACHE: &str = "layer";
/// Cache kind under which disk artifact descriptors are kept.
const DISK_CACHE: &str = "disk";

/// Blobs uploaded at once in the background. Each upload already keeps several parts in
/// flight, and the upload reads its scratch file as it goes, so memory stays bounded by this
/// many uploads' parts whatever the number of layers; a second one lets a small blob go up
/// beside a large one.
const BLOBS_IN_FLIGHT: usize = 2;

/// A scratch file being stored in the background (see [`BlobSink::start_storing`]).
struct Pending {
    path: PathBuf,
    digest: Digest,
    task: JoinHandle<Result<Stored, StoreError>>,
}

/// How storing one scratch file went.
pub(crate) struct Stored {
    /// Whether the blob was written (false: a sound one was already there).
    pub(crate) uploaded: bool,
    /// Whether a lease record named it before it was looked for or written.
    pub(crate) recorded: bool,
    /// Corrupt bytes found under the blob's key and moved aside before it was written.
    pub(crate) healed: Option<Quarantined>,
}

/// Stores the scratch file at `path` as `digest` of `size` bytes, unless a sound blob is
/// already there (judged by content when `content` is set). Through a leased `store`, the
/// blob is named in the lease before it is used or written: the record goes up while the
/// store is asked for the blob, and the upload begins once both are done. A folder store
/// takes the file over (renamed into place); otherwise it is read and left where it is.
async fn store_scratch(
    store: Store,
    path: PathBuf,
    digest: Digest,
    size: u64,
    content: bool,
    permits: Arc<Semaphore>,
) -> Result<Stored, StoreError> {
    let (named, wanted) = ([digest], [Wanted { digest, size, vouched: None }]);
    // A blob found sound is used only once named (a gc that took it meanwhile is caught when
    // the image is confirmed before tagging), and one not found is written after the record.
    let (recorded, verdict) =
        tokio::join!(store.lease_blobs(&named), store.check_reuse(&wanted, content));
    let recorded = recorded?;
    let healed = match verdict?.into_iter().next() {
        Some(Reuse::Sound) => return Ok(Stored { uploaded: false, recorded, healed: None }),
        Some(Reuse::Quarantined(quarantined)) => Some(quarantined),
        Some(Reuse::Missing | Reuse::WrongRecord { .. }) | None => None,
    };
    // The semaphore is never closed, so a permit always comes.
    let _permit = permits.acquire_owned().await.ok();
    let outcome = if store.adopts_by_rename() {
        store.adopt_blob_file(&path, &digest, size).await?
    } else {
        // Just found missing: not asked again.
        store.upload_blob_file(&path, &digest, size).await?
    };
    Ok(Stored { uploaded: outcome.uploaded, recorded, healed })
}

/// Stores blobs and counts what was uploaded versus already present. Whatever it takes from
/// the store is judged first (see `kiln_store::heal`), and corrupt blobs it finds are moved
/// aside and written again from verified bytes.
pub struct StoreSink<'a> {
    pub store: &'a Store,
    pub runtime: &'a Runtime,
    /// Signs the cache entries this build writes.
    pub cache_signer: Option<&'a dyn CacheSigner>,
    /// When set, only cache entries signed by one of these keys are used.
    pub cache_trust: Option<&'a dyn CacheTrust>,
    /// Names every blob before it is used, so a concurrent gc keeps it.
    pub lease: Option<&'a Lease>,
    /// Re-hash every blob taken from the store, not only those whose size or date is off.
    pub verify_cache: bool,
    /// The diff_ids of layer blobs this runner computed, so a cached layer's is checked once.
    pub known_layers: KnownLayers,
    pub uploaded: usize,
    pub present: usize,
    /// For each layer cache key hit: the trusted key that vouched for its entry, if any.
    pub vouchers: BTreeMap<Digest, Option<Digest>>,
    /// Cache entries found but not used, as `cache/<kind>/<hex>` with the reason.
    pub refused: Vec<(String, Refusal)>,
    /// Corrupt blobs found and quarantined; each was then written again, verified.
    pub healed: Vec<Quarantined>,
    /// Blobs this sink created, each after a lease record naming it was stored: no gc can
    /// take them while the lease is held (see [`Store::confirm_image_except`]).
    pub written: BTreeSet<Digest>,
    /// The documents (configs, manifests, indexes) this sink stored or found stored, by
    /// digest: what they name is known without reading them back.
    pub documents: BTreeMap<Digest, Bytes>,
    /// Scratch files being uploaded while the build goes on.
    pending: Vec<Pending>,
    /// Scratch files whose background upload ended, and whether it wrote the blob, not yet
    /// put.
    finished: Vec<(PathBuf, Digest, bool)>,
    /// Layer cache entries whose blobs are stored, not yet written: they are written
    /// together, beside the next document (or when the build settles).
    entries: Vec<CacheRecord>,
    /// Scratch files uploaded while they are written (see [`BlobSink::stream_blob`]).
    streams: Streams,
    permits: Arc<Semaphore>,
}

impl<'a> StoreSink<'a> {
    pub fn new(store: &'a Store, runtime: &'a Runtime) -> StoreSink<'a> {
        StoreSink {
            store,
            runtime,
            cache_signer: None,
            cache_trust: None,
            lease: None,
            verify_cache: false,
            known_layers: KnownLayers::none(),
            uploaded: 0,
            present: 0,
            vouchers: BTreeMap::new(),
            refused: Vec::new(),
            healed: Vec::new(),
            written: BTreeSet::new(),
            documents: BTreeMap::new(),
            pending: Vec::new(),
            finished: Vec::new(),
            entries: Vec::new(),
            streams: Streams::default(),
            permits: Arc::new(Semaphore::new(BLOBS_IN_FLIGHT)),
        }
    }

    /// Forgets what a build that is about to run again counted and found in the cache; what
    /// was healed stays healed.
    pub fn start_over(&mut self) {
        self.uploaded = 0;
        self.present = 0;
        self.vouchers.clear();
        self.refused.clear();
    }

    fn count(&mut self, uploaded: bool) {
        if uploaded {
            self.uploaded += 1;
        } else {
            self.present += 1;
        }
    }

    /// The usable record of one lookup; a refusal is remembered and is a miss.
    fn hit(&mut self, kind: &str, key: &Digest, lookup: CacheLookup) -> Option<CacheRecord> {
        match lookup {
            CacheLookup::Miss => None,
            CacheLookup::Hit { record, vouched_by } => {
                if kind == LAYER_CACHE {
                    self.vouchers.insert(*key, vouched_by);
                }
                Some(*record)
            }
            CacheLookup::Refused(refusal) => {
                if let Refusal::CorruptBlob { quarantined } = &refusal {
                    self.healed.push(quarantined.clone());
                }
                self.refused.push((format!("cache/{kind}/{}", key.hex()), refusal));
                None
            }
        }
    }

    /// This sink's store, through a handle that names what it writes in the sink's lease.
    fn leased_store(&self) -> Store {
        match self.lease {
            Some(lease) => self.store.leased(lease),
            None => self.store.clone(),
        }
    }

    /// Whether a background store wrote the blob `digest`; corrupt bytes it moved aside are
    /// kept.
    fn ended(&mut self, digest: Digest, stored: Stored) -> bool {
        self.healed.extend(stored.healed);
        if stored.uploaded && stored.recorded {
            self.written.insert(digest);
        }
        stored.uploaded
    }

    /// Leases `blobs` before they are looked at or written.
    fn lease(&self, blobs: &[Digest]) -> Result<(), SinkError> {
        if let Some(lease) = self.lease {
            self.runtime.block_on(lease.add(blobs))?;
        }
        Ok(())
    }

    /// Judges `wanted`, keeping the quarantined; true for each blob that can be used.
    fn usable(&mut self, wanted: &[Wanted]) -> Result<Vec<bool>, SinkError> {
        let verdicts = self.runtime.block_on(self.store.check_reuse(wanted, self.verify_cache))?;
        Ok(verdicts
            .into_iter()
            .map(|verdict| match verdict {
                Reuse::Sound => true,
                Reuse::Quarantined(q) => {
                    self.healed.push(q);
                    false
                }
                Reuse::Missing | Reuse::WrongRecord { .. } => false,
            })
            .collect())
    }

    /// Stores the scratch file at `path` as `digest` of `size` bytes, unless a sound blob is
    /// already there, finishing what [`BlobSink::start_storing`] began for it. A folder store
    /// renames the file into place; otherwise the file is deleted once stored (or found
    /// there already), unless another name shares it.
    fn put_scratch(&mut self, path: &Path, digest: &Digest, size: u64) -> Result<(), SinkError> {
        let stored = match self.pending.iter().position(|p| p.path == path) {
            Some(i) => {
                let pending = self.pending.swap_remove(i);
                let stored = join(self.runtime, pending.task)?;
                self.ended(pending.digest, stored)
            }
            None => match self.finished.iter().position(|(p, ..)| p == path) {
                Some(i) => self.finished.swap_remove(i).2,
                None => {
                    let store = store_scratch(
                        self.leased_store(),
                        path.to_path_buf(),
                        *digest,
                        size,
                        self.verify_cache,
                        self.permits.clone(),
                    );
                    let stored = self.runtime.block_on(store)?;
                    self.ended(*digest, stored)
                }
            },
        };
        self.count(stored);
        if !self.store.adopts_by_rename() {
            remove_scratch(path);
        }
        Ok(())
    }

    /// Fails with the error of a background upload that has already failed, so that a build
    /// stops at once instead of compressing on; those that succeeded are kept for their put.
    fn check_finished(&mut self) -> Result<(), SinkError> {
        let (ended, running) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p: &Pending| p.task.is_finished());
        self.pending = running;
        self.join_all(ended)
    }

    /// Waits for `uploads`, keeping what each stored for its put; the first failure is the
    /// error, and any other is warned about.
    fn join_all(&mut self, uploads: Vec<Pending>) -> Result<(), SinkError> {
        let mut failed = None;
        for Pending { path, digest, task } in uploads {
            match join(self.runtime, task) {
                Ok(stored) => {
                    let uploaded = self.ended(digest, stored);
                    self.finished.push((path, digest, uploaded));
                }
                Err(e) if failed.is_none() => failed = Some(e),
                Err(e) => {
                    log::warn!("storing {digest} failed too: {}", kiln_store::one_line(&*e))
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Without trusted keys a layer entry's diff_id is the word of anyone who can write the
    /// cache; with `--verify-cache` it is checked anyway. Each cached layer's blob must
    /// decompress to the recorded diff_id (read once per runner, see
    /// kiln_attest::known_layers); an entry whose does not is refused and its layer built.
    fn check_diff_ids(
        &mut self,
        keys: &[Digest],
        found: &mut [Option<LayerRecord>],
    ) -> Result<(), SinkError> {
        let hits: Vec<(usize, (Descriptor, Digest))> = found
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let r = r.as_ref()?;
                Some((i, (Descriptor::new(r.media_type.clone(), r.digest, r.size), r.diff_id)))
            })
            .collect();
        let layers: Vec<(Descriptor, Digest)> = hits.iter().map(|(_, l)| l.clone()).collect();
        let checks = self.runtime.block_on(self.known_layers.check_all(
            self.store,
            &layers,
            self.verify_cache,
        ));
        for ((i, (layer, recorded)), check) in hits.into_iter().zip(checks) {
            let digest = layer.digest;
            let refusal = match check {
                Ok(DiffIdCheck::Matches) => continue,
                Ok(DiffIdCheck::Differs { found }) => {
                    Refusal::WrongDiffId { digest, recorded, found }
                }
                Err(AttestError::Contents(e)) => {
                    Refusal::UnreadableLayer { digest, error: kiln_store::one_line(&e) }
                }
                Err(AttestError::Store(e)) if e.is_integrity_failure() => {
                    // Its size and date looked right, its bytes are not the blob: judged by
                    // content, so that corrupt bytes are moved aside.
                    let wanted = Wanted { digest, size: layer.size, vouched: None };
                    let verdict = self.runtime.block_on(self.store.check_reuse(&[wanted], true))?;
                    match verdict.into_iter().next() {
                        Some(Reuse::Quarantined(quarantined)) => {
                            self.healed.push(quarantined.clone());
                            Refusal::CorruptBlob { quarantined }
                        }
                        Some(Reuse::WrongRecord { size }) => {
                            Refusal::WrongSize { digest, recorded: layer.size, stored: size }
                        }
                        Some(Reuse::Missing) | None => Refusal::MissingBlob { digest },
                        Some(Reuse::Sound) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            self.vouchers.remove(&keys[i]);
            self.present -= 1;
            self.refused.push((format!("cache/{LAYER_CACHE}/{}", keys[i].hex()), refusal));
            found[i] = None;
        }
        Ok(())
    }

    /// Whether the blob `digest`, a finished scratch file, is already taken care of (see
    /// [`BlobSink::start_storing`]): when a folder store renames it at the end, or when the
    /// same blob is already on its way. Fails first with an earlier background upload's
    /// error.
    fn taken_care_of(&mut self, digest: &Digest) -> Result<bool, SinkError> {
        self.check_finished()?;
        Ok(self.store.adopts_by_rename()
            || self.pending.iter().any(|p| p.digest == *digest)
            || self.finished.iter().any(|(_, d, _)| d == digest))
    }

    fn remember(&mut self, record: CacheRecord) -> Result<(), SinkError> {
        let signer = self.cache_signer;
        self.runtime.block_on(self.store.put_cache_entry(record, signer))?;
        Ok(())
    }

    /// Runs `work` while the layer cache entries not yet written are written, all at once:
    /// each names a blob that is stored by now. The first failure is the error.
    fn beside_entries<T>(
        &mut self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, SinkError> {
        let (store, signer) = (self.store, self.cache_signer);
        let entries = std::mem::take(&mut self.entries);
        let written = futures::future::try_join_all(
            entries.into_iter().map(|record| store.put_cache_entry(record, signer)),
        );
        let (done, written) = self.runtime.block_on(async { tokio::join!(work, written) });
        let done = done?;
        written?;
        Ok(done)
    }
}

/// The end of a background upload; a panic in it goes on here.
fn join(
    runtime: &Runtime,
    task: JoinHandle<Result<Stored, StoreError>>,
) -> Result<Stored, SinkError> {
    match runtime.block_on(task) {
        Ok(stored) => Ok(stored?),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes a scratch file that is stored now. It lies in the build's scratch folder, which
/// goes as a whole when the build ends, so a failure only holds the space longer; a file
/// already gone was shared by two layers with the same bytes.
fn remove_scratch(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!(
                "cannot remove scratch file {}: {e}; it goes with the scratch folder",
                path.display()
            );
        }
    }
}

impl BlobSink for StoreSink<'_> {
    fn start_storing(&mut self, path: &Path, descriptor: &Descriptor) -> Result<(), SinkError> {
        let digest = descriptor.digest;
        if self.taken_care_of(&digest)? {
            return Ok(());
        }
        // Leasing and looking for the blob happen in the background too: the build goes on
        // at once.
        let task = self.runtime.spawn(store_scratch(
            self.leased_store(),
            path.to_path_buf(),
            digest,
            descriptor.size,
            self.verify_cache,
            self.permits.clone(),
        ));
        self.pending.push(Pending { path: path.to_path_buf(), digest, task });
        Ok(())
    }

    fn stream_blob(&mut self, path: &Path) -> Result<Option<BlobStream>, SinkError> {
        // Elsewhere than where blobs are staged anyway, streaming would cost a copy (S3) or
        // gain nothing (a folder store renames the finished file).
        if !self.store.stages_blobs() {
            return Ok(None);
        }
        let (store, permits) = (self.leased_store(), self.permits.clone());
        let stream = self.streams.start(store, self.runtime, path, self.verify_cache, permits)?;
        Ok(Some(stream))
    }

    fn start_storing_streamed(
        &mut self,
        stream: BlobStream,
        path: &Path,
        descriptor: &Descriptor,
    ) -> Result<(), SinkError> {
        let Some(streaming) = self.streams.take(stream.id) else {
            return self.start_storing(path, descriptor);
        };
        let digest = descriptor.digest;
        match self.taken_care_of(&digest) {
            // Leasing and looking for the blob happen on the upload's task: the build goes
            // on at once.
            Ok(false) => {
                let task = streaming.whole(descriptor);
                self.pending.push(Pending { path: path.to_path_buf(), digest, task });
                Ok(())
            }
            Ok(true) => {
                self.streams.drop_upload(streaming);
                Ok(())
            }
            Err(e) => {
                self.streams.drop_upload(streaming);
                Err(e)
            }
        }
    }

    fn settle(&mut self) -> Result<(), SinkError> {
        self.streams.settle(self.runtime);
        let pending = std::mem::take(&mut self.pending);
        let joined = self.join_all(pending);
        // Stored but never put: the build failed before it named them. They are counted, as
        // what is in the store now.
        for (path, _, stored) in std::mem::take(&mut self.finished) {
            self.count(stored);
            remove_scratch(&path);
        }
        let written = self.beside_entries(async { Ok(()) });
        joined.and(written)
    }

    fn cached_layers(&mut self, keys: &[Digest]) -> Result<Vec<Option<LayerRecord>>, SinkError> {
        let lookups = self.runtime.block_on(self.store.cache_lookups(
            LAYER_CACHE,
            keys,
            self.cache_trust,
            self.lease,
            self.verify_cache,
        ))?;
        let mut found = Vec::with_capacity(keys.len());
        for (key, lookup) in keys.iter().zip(lookups) {
            let record = self.hit(LAYER_CACHE, key, lookup);
            let layer = match record {
                Some(CacheRecord { output, diff_id: Some(diff_id), .. }) => {
                    self.present += 1;
                    Some(LayerRecord {
                        media_type: output.media_type,
                        digest: output.digest,
                        diff_id,
                        size: output.size,
                    })
                }
                Some(CacheRecord { diff_id: None, .. }) => {
                    self.vouchers.remove(key);
                    let error = "a layer entry without a diff_id".to_string();
                    self.refused.push((
                        format!("cache/{LAYER_CACHE}/{}", key.hex()),
                        Refusal::Malformed { error },
                    ));
                    None
                }
                None => None,
            };
            found.push(layer);
        }
        if self.cache_trust.is_none() || self.verify_cache {
            self.check_diff_ids(keys, &mut found)?;
        }
        Ok(found)
    }

    fn put_layer(&mut self, key: &Digest, layer: &LayerBlob) -> Result<(), SinkError> {
        self.put_scratch(&layer.path, &layer.digest, layer.size)?;
        if let Err(e) = self.known_layers.remember(&layer.digest, &layer.diff_id) {
            kiln_attest::known_layers::warn_unkept(None, &e);
        }
        // The blob is stored: its entry is written with the others, beside the next document.
        self.entries.push(CacheRecord {
            kind: LAYER_CACHE.to_string(),
            key: *key,
            output: Descriptor::new(layer.media_type, layer.digest, layer.size),
            diff_id: Some(layer.diff_id),
        });
        Ok(())
    }

    fn put_json(&mut self, blob: &JsonBlob) -> Result<(), SinkError> {
        self.put_documents(&[blob])
    }

    fn put_documents(&mut self, blobs: &[&JsonBlob]) -> Result<(), SinkError> {
        // An unchanged rebuild finds its config, manifests and index already stored: one GET
        // each, all at once (they are small, so reading costs what a HEAD would), compared
        // with the bytes just made, and no PUT. A build that wrote a blob makes documents
        // naming it, new ones: each is written create-only at once, and read only if found
        // there.
        let leased = self.leased_store();
        let digests: Vec<Digest> = blobs.iter().map(|b| b.descriptor.digest).collect();
        let bytes: Vec<Bytes> = blobs.iter().map(|b| Bytes::from(b.bytes.clone())).collect();
        self.documents.extend(digests.iter().copied().zip(bytes.iter().cloned()));
        let new = self.uploaded > 0;
        let (recorded, puts) =
            self.beside_entries(async { leased.put_documents_checked(&bytes, new).await })?;
        for (digest, put) in digests.into_iter().zip(puts) {
            self.healed.extend(put.healed);
            self.count(put.outcome.uploaded);
            if put.outcome.uploaded && recorded {
                self.written.insert(digest);
            }
        }
        Ok(())
    }

    fn put_file(&mut self, path: &Path, descriptor: &Descriptor) -> Result<(), SinkError> {
        self.put_scratch(path, &descriptor.digest, descriptor.size)
    }

    fn cached_disk(&mut self, key: &Digest) -> Result<Option<Descriptor>, SinkError> {
        let lookups = self.runtime.block_on(self.store.cache_lookups(
            DISK_CACHE,
            std::slice::from_ref(key),
            self.cache_trust,
            self.lease,
            self.verify_cache,
        ))?;
        let Some(record) = lookups.into_iter().next().and_then(|l| self.hit(DISK_CACHE, key, l))
        else {
            return Ok(None);
        };
        let artifact = record.output;
        // As with layers, the entry counts only if every blob it leads to is still stored,
        // whole. A damaged artifact manifest is a miss, and is healed when it is put again.
        let Ok(manifest) =
            self.runtime.block_on(self.store.get_described_json::<ImageManifest>(&artifact))
        else {
            return Ok(None);
        };
        let wanted: Vec<Wanted> = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .map(|d| Wanted { digest: d.digest, size: d.size, vouched: None })
            .collect();
        self.lease(&wanted.iter().map(|w| w.digest).collect::<Vec<_>>())?;
        if self.usable(&wanted)?.iter().all(|usable| *usable) {
            self.present += 1 + wanted.len();
            Ok(Some(artifact))
        } else {
            Ok(None)
        }
    }

    fn remember_disk(&mut self, key: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        self.remember(CacheRecord {
            kind: DISK_CACHE.to_string(),
            key: *key,
            output: artifact.clone(),
            diff_id: None,
        })
    }

    fn copy_blob(&mut self, descriptor: &Descriptor, target: &Path) -> Result<bool, SinkError> {
        self.lease(&[descriptor.digest])?;
        if !self.runtime.block_on(self.store.has_blob(&descriptor.digest))? {
            return Ok(false);
        }
        self.runtime.block_on(self.store.copy_described_to(descriptor, target))?;
        self.present += 1;
        Ok(true)
    }

    fn get_document(&mut self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>, SinkError> {
        self.lease(&[*digest])?;
        if !self.runtime.block_on(self.store.has_blob(digest))? {
            return Ok(None);
        }
        let bytes = self.runtime.block_on(self.store.get_blob_bounded(digest, limit))?;
        Ok(Some(bytes.to_vec()))
    }

    fn put_referrer(&mut self, subject: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        self.runtime.block_on(self.store.put_referrer(subject, artifact))?;
        Ok(())
    }
}

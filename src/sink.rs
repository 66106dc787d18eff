//! The builder's blob sink backed by a kiln store.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use kiln_builder::build::{BlobSink, SinkError};
use kiln_builder::image::JsonBlob;
use kiln_builder::layer::LayerBlob;
use kiln_builder::LayerRecord;
use kiln_oci::{Descriptor, Digest, ImageManifest};
use kiln_store::cache::{CacheLookup, CacheRecord, CacheSigner, CacheTrust, Refusal};
use kiln_store::lease::Lease;
use kiln_store::Store;
use tokio::runtime::Runtime;

/// Cache kind under which layer records are kept.
const LAYER_CACHE: &str = "layer";
/// Cache kind under which disk artifact descriptors are kept.
const DISK_CACHE: &str = "disk";

/// Stores blobs and counts what was uploaded versus already present.
pub struct StoreSink<'a> {
    pub store: &'a Store,
    pub runtime: &'a Runtime,
    /// Signs the cache entries this build writes.
    pub cache_signer: Option<&'a dyn CacheSigner>,
    /// When set, only cache entries signed by one of these keys are used.
    pub cache_trust: Option<&'a dyn CacheTrust>,
    /// Names every blob before it is used, so a concurrent gc keeps it.
    pub lease: Option<&'a Lease>,
    pub uploaded: usize,
    pub present: usize,
    /// For each layer cache key hit: the trusted key that vouched for its entry, if any.
    pub vouchers: BTreeMap<Digest, Option<Digest>>,
    /// Cache entries found but not used, as `cache/<kind>/<hex>` with the reason.
    pub refused: Vec<(String, Refusal)>,
}

impl<'a> StoreSink<'a> {
    pub fn new(store: &'a Store, runtime: &'a Runtime) -> StoreSink<'a> {
        StoreSink {
            store,
            runtime,
            cache_signer: None,
            cache_trust: None,
            lease: None,
            uploaded: 0,
            present: 0,
            vouchers: BTreeMap::new(),
            refused: Vec::new(),
        }
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
                self.refused.push((format!("cache/{kind}/{}", key.hex()), refusal));
                None
            }
        }
    }

    /// Leases `blobs` before they are looked at or written.
    fn lease(&self, blobs: &[Digest]) -> Result<(), SinkError> {
        if let Some(lease) = self.lease {
            self.runtime.block_on(lease.add(blobs))?;
        }
        Ok(())
    }

    fn remember(&mut self, record: CacheRecord) -> Result<(), SinkError> {
        let signer = self.cache_signer;
        self.runtime.block_on(self.store.put_cache_entry(record, signer))?;
        Ok(())
    }
}

impl BlobSink for StoreSink<'_> {
    fn cached_layers(&mut self, keys: &[Digest]) -> Result<Vec<Option<LayerRecord>>, SinkError> {
        let lookups = self.runtime.block_on(self.store.cache_lookups(
            LAYER_CACHE,
            keys,
            self.cache_trust,
            self.lease,
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
        Ok(found)
    }

    fn put_layer(&mut self, key: &Digest, layer: &LayerBlob) -> Result<(), SinkError> {
        self.lease(&[layer.digest])?;
        // The scratch file is the builder's to give away: a folder store renames it into place.
        let outcome = self.runtime.block_on(self.store.adopt_blob_file(
            &layer.path,
            &layer.digest,
            layer.size,
        ))?;
        self.count(outcome.uploaded);
        self.remember(CacheRecord {
            kind: LAYER_CACHE.to_string(),
            key: *key,
            output: Descriptor::new(layer.media_type, layer.digest, layer.size),
            diff_id: Some(layer.diff_id),
        })
    }

    fn put_json(&mut self, blob: &JsonBlob) -> Result<(), SinkError> {
        // An unchanged rebuild finds its config, manifests and index already stored: one HEAD
        // each, and no PUT (a create-only PUT of a present blob is still a request).
        self.lease(&[blob.descriptor.digest])?;
        if self.runtime.block_on(self.store.has_blob(&blob.descriptor.digest))? {
            self.count(false);
            return Ok(());
        }
        let outcome =
            self.runtime.block_on(self.store.put_blob(Bytes::from(blob.bytes.clone())))?;
        self.count(outcome.uploaded);
        Ok(())
    }

    fn put_file(&mut self, path: &Path, descriptor: &Descriptor) -> Result<(), SinkError> {
        self.lease(&[descriptor.digest])?;
        // Disk files are scratch files too: a folder store renames them into place.
        let outcome = self.runtime.block_on(self.store.adopt_blob_file(
            path,
            &descriptor.digest,
            descriptor.size,
        ))?;
        self.count(outcome.uploaded);
        Ok(())
    }

    fn cached_disk(&mut self, key: &Digest) -> Result<Option<Descriptor>, SinkError> {
        let lookups = self.runtime.block_on(self.store.cache_lookups(
            DISK_CACHE,
            std::slice::from_ref(key),
            self.cache_trust,
            self.lease,
        ))?;
        let Some(record) = lookups.into_iter().next().and_then(|l| self.hit(DISK_CACHE, key, l))
        else {
            return Ok(None);
        };
        let artifact = record.output;
        // As with layers, the entry counts only if every blob it leads to is still stored.
        let Ok(manifest) =
            self.runtime.block_on(self.store.get_json::<ImageManifest>(&artifact.digest))
        else {
            return Ok(None);
        };
        let mut digests = vec![manifest.config.digest];
        digests.extend(manifest.layers.iter().map(|l| l.digest));
        self.lease(&digests)?;
        let present = self.runtime.block_on(self.store.has_blobs(&digests))?;
        if present.iter().all(|p| *p) {
            self.present += 1 + digests.len();
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

    fn put_referrer(&mut self, subject: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        self.runtime.block_on(self.store.put_referrer(subject, artifact))?;
        Ok(())
    }
}

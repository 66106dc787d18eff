//! The builder's blob sink backed by a kiln store.

use std::path::Path;

use bytes::Bytes;
use kiln_builder::build::{BlobSink, SinkError};
use kiln_builder::image::JsonBlob;
use kiln_builder::layer::LayerBlob;
use kiln_builder::LayerRecord;
use kiln_oci::{Descriptor, Digest, ImageManifest};
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
    pub uploaded: usize,
    pub present: usize,
}

impl StoreSink<'_> {
    fn count(&mut self, uploaded: bool) {
        if uploaded {
            self.uploaded += 1;
        } else {
            self.present += 1;
        }
    }
}

impl BlobSink for StoreSink<'_> {
    fn cached_layers(&mut self, keys: &[Digest]) -> Result<Vec<Option<LayerRecord>>, SinkError> {
        let entries = self.runtime.block_on(self.store.get_caches(LAYER_CACHE, keys))?;
        // A cache entry is only a hint: an unreadable one, or one whose blob is gone, is a miss.
        let records: Vec<Option<LayerRecord>> = entries
            .iter()
            .map(|bytes| bytes.as_ref().and_then(|b| serde_json::from_slice(b).ok()))
            .collect();
        let digests: Vec<Digest> = records.iter().flatten().map(|r| r.digest).collect();
        let mut present = self.runtime.block_on(self.store.has_blobs(&digests))?.into_iter();
        let found: Vec<Option<LayerRecord>> = records
            .into_iter()
            .map(|record| record.filter(|_| present.next().unwrap_or(false)))
            .collect();
        self.present += found.iter().flatten().count();
        Ok(found)
    }

    fn put_layer(&mut self, key: &Digest, layer: &LayerBlob) -> Result<(), SinkError> {
        // The scratch file is the builder's to give away: a folder store renames it into place.
        let outcome = self.runtime.block_on(self.store.adopt_blob_file(
            &layer.path,
            &layer.digest,
            layer.size,
        ))?;
        self.count(outcome.uploaded);
        let record = LayerRecord {
            media_type: layer.media_type.to_string(),
            digest: layer.digest,
            diff_id: layer.diff_id,
            size: layer.size,
        };
        let bytes = kiln_oci::to_canonical_json(&record)?;
        self.runtime.block_on(self.store.put_cache(LAYER_CACHE, key, Bytes::from(bytes)))?;
        Ok(())
    }

    fn put_json(&mut self, blob: &JsonBlob) -> Result<(), SinkError> {
        // An unchanged rebuild finds its config, manifests and index already stored: one HEAD
        // each, and no PUT (a create-only PUT of a present blob is still a request).
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
        let Some(bytes) = self.runtime.block_on(self.store.get_cache(DISK_CACHE, key))? else {
            return Ok(None);
        };
        // As with layers, the entry is a hint: it counts only if every blob is still stored.
        let Ok(artifact) = serde_json::from_slice::<Descriptor>(&bytes) else {
            return Ok(None);
        };
        let Ok(manifest) =
            self.runtime.block_on(self.store.get_json::<ImageManifest>(&artifact.digest))
        else {
            return Ok(None);
        };
        let mut digests = vec![manifest.config.digest];
        digests.extend(manifest.layers.iter().map(|l| l.digest));
        let present = self.runtime.block_on(self.store.has_blobs(&digests))?;
        if present.iter().all(|p| *p) {
            self.present += 1 + digests.len();
            Ok(Some(artifact))
        } else {
            Ok(None)
        }
    }

    fn remember_disk(&mut self, key: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        let bytes = kiln_oci::to_canonical_json(artifact)?;
        self.runtime.block_on(self.store.put_cache(DISK_CACHE, key, Bytes::from(bytes)))?;
        Ok(())
    }

    fn put_referrer(&mut self, subject: &Digest, artifact: &Descriptor) -> Result<(), SinkError> {
        self.runtime.block_on(self.store.put_referrer(subject, artifact))?;
        Ok(())
    }
}

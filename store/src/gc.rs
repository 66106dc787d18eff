//! Garbage collection: mark every blob reachable from the store's roots, then sweep the
//! unreachable blobs, quarantined corrupt bytes, stale staging uploads (aborting the multipart uploads recorded under
//! `uploads/`, and on S3 those the bucket lists that no record names) and dangling cache
//! entries older than a grace period.
//!
//! Roots are refs, live leases (see [`crate::lease`]), and every key under `log/` and
//! `referrers/` (channel history, signatures, attestations): any `sha256:<hex>` those documents mention, and the digests their keys
//! name. From a root, any blob that looks like a JSON document (index, manifest, release
//! record, ...) is read (verified) and the digests it mentions are marked in turn, so new
//! document kinds are followed without teaching gc about them.
//!
//! The grace period protects work in flight on other runners: a build uploads layers and
//! manifests well before it sets the ref that makes them reachable, so a blob younger than
//! the grace is never deleted. Ages come from the backend's `last_modified`; the local clock
//! must not be off by anything close to the grace (an S3 upload no marker names is aged by
//! the server's clock alone, as `store check` reports it). Refs are re-read just before the
//! sweep, so a ref set during the mark phase also protects what it points at.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use kiln_oci::Digest;
use object_store::path::Path as Key;
use serde::Serialize;

use crate::cache::open_entry;
use crate::error::{Result, StoreError};
use crate::inventory::Listed;
use crate::upload::MARKER_SUFFIX;
use crate::{key, Store};

/// Blobs up to this size are read during marking when they look like JSON; larger ones are
/// layers or disk images and cannot name other blobs.
const DOCUMENT_LIMIT: u64 = 4 * 1024 * 1024;
/// Documents and cache entries read at once.
const READ_CONCURRENCY: usize = 16;

/// What to collect.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Unreachable objects younger than this are kept.
    pub grace: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

/// What a collection did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub dry_run: bool,
    /// Blobs reachable from the roots (and present).
    pub reachable: u64,
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    /// Unreachable blobs kept because they are younger than the grace period.
    pub blobs_kept_young: u64,
    pub uploads_deleted: u64,
    pub upload_bytes_deleted: u64,
    pub cache_entries_deleted: u64,
    /// Multipart uploads never finished, aborted (their parts freed): those recorded under
    /// `uploads/`, and on S3 those the bucket lists that no record names (a writer killed
    /// before recording it, or while publishing).
    pub multipart_uploads_aborted: u64,
    /// Leases of builds and copies in flight, whose blobs were kept.
    pub leases_live: u64,
    /// Records of expired leases, or of leases whose holder is known dead, deleted.
    pub lease_records_deleted: u64,
    /// Corrupt blobs moved to `quarantine/` more than the grace period ago, deleted.
    pub quarantined_deleted: u64,
    pub quarantined_bytes_deleted: u64,
}

/// Every `sha256:<64 hex>` mentioned in `bytes`, whatever the document's shape.
fn digests_in(bytes: &[u8]) -> Vec<Digest> {
    const TAG: &[u8] = b"sha256:";
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(TAG.len()).position(|w| w == TAG) {
        let start = at + offset + TAG.len();
        if let Some(hex) = bytes.get(start..start + 64) {
            if let Some(digest) =
                std::str::from_utf8(hex).ok().and_then(|h| Digest::from_hex(h).ok())
            {
                found.push(digest);
            }
        }
        at = start;
    }
    found
}

/// The digest a key's last segment names (`referrers/<subject>/<artifact>` names both).
fn digests_in_key(key: &Key) -> Vec<Digest> {
    key.parts().filter_map(|p| Digest::from_hex(p.as_ref()).ok()).collect()
}

impl Store {
    /// Collects garbage; see the module documentation for what is kept.
    pub async fn gc(&self, options: GcOptions) -> Result<GcReport> {
        let now = SystemTime::now();
        let cutoff = now.checked_sub(options.grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let old = |entry: &Listed| entry.modified < cutoff;
        let mut report = GcReport { dry_run: options.dry_run, ..GcReport::default() };

        let blobs: Vec<(Digest, Listed)> = self
            .list_under(key::BLOBS)
            .await?
            .into_iter()
            .filter_map(|entry| key::parse_blob(&entry.key).map(|d| (d, entry)))
            .collect();
        let sizes: std::collections::HashMap<Digest, u64> =
            blobs.iter().map(|(d, e)| (*d, e.size)).collect();
        let uploads = self.list_under(key::UPLOADS).await?;
        let quarantined = self.list_under(key::QUARANTINE).await?;
        let recorded: HashSet<String> =
            self.unfinished_uploads().await?.into_iter().map(|u| u.upload_id).collect();
        let unrecorded = self.unrecorded_uploads(&recorded).await?;
        let parts = self.stale_part_files(cutoff)?;
        // Leases are read after blobs and uploads are listed: what is uploaded later is not in
        // the listings, and what was uploaded earlier was leased before its upload began.
        let leases = self.read_leases().await?;
        let mut leased: HashSet<Digest> = leases.blobs.iter().copied().collect();
        let mut marked = self.mark(&sizes, &leases.blobs).await?;
        // A ref set or a lease taken while marking (a build finishing or starting) protects
        // its blobs too. A lease taken after this last read does not: the sweep record
        // written first tells its build to look again once this gc is done (see
        // [`crate::sweep`]).
        let sweep = if options.dry_run { None } else { Some(self.begin_sweep().await?) };
        let leases = self.read_leases().await?;
        #[cfg(test)]
        tests::pause_after_last_lease_read().await;
        leased.extend(leases.blobs.iter().copied());
        marked.extend(self.mark(&sizes, &leases.blobs).await?);
        report.leases_live = leases.live;
        report.lease_records_deleted = leases.dead.len() as u64;

        let mut doomed = Vec::new();
        let mut gone = HashSet::new();
        for (digest, entry) in blobs {
            if marked.contains(&digest) {
                report.reachable += 1;
            } else if old(&entry) {
                report.blobs_deleted += 1;
                report.bytes_deleted += entry.size;
                gone.insert(digest);
                doomed.push(entry.key);
            } else {
                report.blobs_kept_young += 1;
            }
        }
        // Corrupt bytes are kept for inspection for the grace period, then go.
        for entry in quarantined.into_iter().filter(old) {
            report.quarantined_deleted += 1;
            report.quarantined_bytes_deleted += entry.size;
            doomed.push(entry.key);
        }
        // An upload of a leased blob is in flight: its writer is about to publish it.
        let in_flight = |name: &str| key::upload_digest(name).is_some_and(|d| leased.contains(&d));
        let mut markers = Vec::new();
        for entry in uploads {
            let name = entry.key.filename().unwrap_or_default();
            if !old(&entry) || in_flight(name) {
                continue;
            }
            if name.ends_with(MARKER_SUFFIX) {
                // The recorded multipart upload of a writer that never finished.
                report.multipart_uploads_aborted += 1;
                markers.push(entry.key);
            } else {
                report.uploads_deleted += 1;
                report.upload_bytes_deleted += entry.size;
                doomed.push(entry.key);
            }
        }
        // Uploads a killed writer started but never recorded, or a publishing copy's.
        let unrecorded: Vec<_> = unrecorded
            .into_iter()
            .filter(|u| u.upload.age >= options.grace && !leased.contains(&u.digest))
            .collect();
        report.multipart_uploads_aborted += unrecorded.len() as u64;
        if !options.dry_run {
            for marker in &markers {
                self.abort_recorded(marker).await?;
            }
            for upload in &unrecorded {
                self.abort_unrecorded(upload).await?;
            }
        }
        let parts = parts
            .iter()
            .filter(|(path, _)| !path.file_name().and_then(|n| n.to_str()).is_some_and(&in_flight));
        for (path, size) in parts {
            report.uploads_deleted += 1;
            report.upload_bytes_deleted += size;
            if !options.dry_run {
                std::fs::remove_file(path)
                    .map_err(|source| StoreError::LocalFile { path: path.clone(), source })?;
            }
        }
        if !options.dry_run {
            doomed.extend(leases.dead);
            doomed.extend(self.read_sweeps().await?.1);
            self.delete_all(doomed).await?;
        }

        let dangling = self.dangling_cache_entries(&gone).await?;
        report.cache_entries_deleted = dangling.len() as u64;
        if !options.dry_run {
            self.delete_all(dangling).await?;
        }
        if let Some(sweep) = sweep {
            sweep.end().await?;
        }
        Ok(report)
    }

    /// Every digest reachable from the roots, among blobs of the given sizes.
    async fn mark(
        &self,
        sizes: &std::collections::HashMap<Digest, u64>,
        leased: &[Digest],
    ) -> Result<HashSet<Digest>> {
        let mut pending: Vec<Digest> = leased.to_vec();
        for prefix in [key::REFS, key::LOG, key::REFERRERS] {
            let entries = self.list_under(prefix).await?;
            for entry in &entries {
                pending.extend(digests_in_key(&entry.key));
            }
            let contents: Vec<_> = futures::stream::iter(entries)
                .map(|entry| async move { self.read_object(&entry.key).await })
                .buffer_unordered(READ_CONCURRENCY)
                .try_collect()
                .await?;
            for bytes in contents.into_iter().flatten() {
                pending.extend(digests_in(&bytes));
            }
        }

        let mut marked = HashSet::new();
        while !pending.is_empty() {
            let fresh: Vec<Digest> =
                pending.drain(..).filter(|d| marked.insert(*d)).collect::<Vec<_>>();
            let children: Vec<Vec<Digest>> = futures::stream::iter(fresh)
                .map(|digest| async move {
                    // Only present, document-sized blobs can mention other blobs. One stored
                    // since the listing (the index of a build that set its tag meanwhile) is
                    // looked at too, or its children, which are listed, would be taken.
                    let size = match sizes.get(&digest) {
                        Some(size) => Some(*size),
                        None => self.blob_size(&digest).await?,
                    };
                    if size.is_none_or(|s| s > DOCUMENT_LIMIT) {
                        return Ok(Vec::new());
                    }
                    let bytes = match self.get_blob(&digest).await {
                        Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
                        read => read?,
                    };
                    let looks_like_json =
                        bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
                    Ok::<_, crate::StoreError>(if looks_like_json {
                        digests_in(&bytes)
                    } else {
                        Vec::new()
                    })
                })
                .buffer_unordered(READ_CONCURRENCY)
                .try_collect()
                .await?;
            pending.extend(children.into_iter().flatten());
        }
        Ok(marked)
    }

    /// The size of a stored blob, `None` when it is not stored.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let key = key::blob(digest);
        match self.inner.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::backend(&key, source)),
        }
    }

    /// In a folder store, the `uploads/<key>#<n>` part files of multipart uploads that were
    /// interrupted (a killed process) and are older than `cutoff`. object_store hides them
    /// from listings, so they are found on disk. (A bucket's multipart uploads are recorded
    /// by markers instead, see [`crate::upload`].)
    fn stale_part_files(&self, cutoff: SystemTime) -> Result<Vec<(PathBuf, u64)>> {
        let Some(folder) = &self.folder else { return Ok(Vec::new()) };
        let dir = folder.join(key::UPLOADS);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::LocalFile { path: dir, source }),
        };
        let mut stale = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|source| StoreError::LocalFile { path: dir.clone(), source })?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .map_err(|source| StoreError::LocalFile { path: path.clone(), source })?;
            let is_part = entry.file_name().to_string_lossy().contains('#');
            if is_part && meta.is_file() && meta.modified().is_ok_and(|m| m < cutoff) {
                stale.push((path, meta.len()));
            }
        }
        Ok(stale)
    }

    /// Cache entries no build would use: not well formed (an older format, a stray key), or
    /// naming a blob that is gone (or, in a dry run, about to be) or stored with another size.
    async fn dangling_cache_entries(&self, gone: &HashSet<Digest>) -> Result<Vec<Key>> {
        let entries = self.list_under(key::CACHE).await?;
        let verdicts: Vec<Option<Key>> = futures::stream::iter(entries)
            .map(|entry| async move {
                let Some(bytes) = self.read_object(&entry.key).await? else { return Ok(None) };
                let opened = crate::cache::check::parse_key(&entry.key)
                    .and_then(|(kind, key)| open_entry(&kind, &key, &bytes, None).ok());
                let dangling = match opened {
                    None => true,
                    Some((record, _)) => {
                        gone.contains(&record.output.digest)
                            || self.output_stored(&record.output).await?.is_err()
                    }
                };
                Ok::<_, crate::StoreError>(dangling.then_some(entry.key))
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(verdicts.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use bytes::Bytes;
    use kiln_oci::{media_type, Descriptor, ImageManifest};
    use tokio::sync::{oneshot, Mutex};

    use super::*;

    /// Where a gc run under [`PAUSE`] says it has read the leases for the last time, and what
    /// lets it go on.
    type Pause = Arc<Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>>;

    tokio::task_local! {
        static PAUSE: Pause;
    }

    /// Called by gc after its last read of the leases: in a gc run under [`PAUSE`], says so
    /// and waits to be let go on; elsewhere does nothing.
    pub(super) async fn pause_after_last_lease_read() {
        let Ok(pause) = PAUSE.try_with(Arc::clone) else { return };
        let Some((reached, go)) = pause.lock().await.take() else { return };
        reached.send(()).unwrap();
        go.await.unwrap();
    }

    /// Stores `bytes` in the folder store at `root`, dated two hours back.
    async fn old_blob(store: &Store, root: &std::path::Path, bytes: &[u8]) -> Descriptor {
        let put = store.put_blob(Bytes::copy_from_slice(bytes)).await.unwrap();
        let path = root.join("blobs/sha256").join(put.digest.hex());
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(7200)).unwrap();
        Descriptor::new(media_type::LAYER_TAR_GZIP, put.digest, put.size)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_leased_after_the_last_lease_read_is_kept_or_seen_gone_before_tagging() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
        let config = old_blob(&store, tmp.path(), b"{}").await;
        let layer = old_blob(&store, tmp.path(), b"an old layer nothing references").await;
        let options = GcOptions { grace: Duration::from_secs(3600), dry_run: false };

        // A gc has listed the old layer as unreferenced and read the leases for the last
        // time; only then does a build lease the layer and find it present.
        let (reached_tx, reached) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        let pause: Pause = Arc::new(Mutex::new(Some((reached_tx, go_rx))));
        let collector = store.clone();
        let gc = tokio::spawn(PAUSE.scope(pause, async move { collector.gc(options).await }));
        reached.await.unwrap();
        let lease = store.lease().await.unwrap();
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: media_type::IMAGE_MANIFEST.to_string(),
            artifact_type: None,
            config: config.clone(),
            layers: vec![layer.clone()],
            subject: None,
            annotations: Default::default(),
        };
        let manifest = Bytes::from(kiln_oci::to_canonical_json(&manifest).unwrap());
        let manifest = Descriptor::new(media_type::IMAGE_MANIFEST, Digest::of(&manifest), {
            let size = manifest.len() as u64;
            lease.add(&[config.digest, layer.digest, Digest::of(&manifest)]).await.unwrap();
            store.put_blob(manifest).await.unwrap();
            size
        });
        assert!(store.has_blob(&layer.digest).await.unwrap());

        // Before tagging, the build sees the sweep in progress and looks again once it is
        // over, whenever the gc goes on: the layer is found gone, so it would be made again.
        let sweeps = store.sweeps_in_progress().await.unwrap();
        assert_eq!(sweeps.len(), 1, "the gc announced its sweep");
        let confirming = {
            let store = store.clone();
            let manifest = manifest.clone();
            tokio::spawn(async move {
                store.wait_for_sweeps(&sweeps).await.unwrap();
                store.confirm_image(&manifest).await.unwrap()
            })
        };
        go.send(()).unwrap();
        let report = gc.await.unwrap().unwrap();
        assert_eq!((report.blobs_deleted, report.leases_live), (2, 0), "{report:?}");
        assert_eq!(confirming.await.unwrap(), vec![config.digest, layer.digest]);

        // Written again under the same lease, the blobs are kept by every later gc.
        old_blob(&store, tmp.path(), b"{}").await;
        old_blob(&store, tmp.path(), b"an old layer nothing references").await;
        let report = store.gc(options).await.unwrap();
        assert_eq!((report.blobs_deleted, report.leases_live), (0, 1), "{report:?}");
        assert_eq!(store.confirm_image(&manifest).await.unwrap(), Vec::<Digest>::new());
        assert!(store.sweeps_in_progress().await.unwrap().is_empty());
        lease.release().await.unwrap();
    }

    #[test]
    fn finds_digests_anywhere() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let doc = format!(r#"{{"x":"{a}","y":[{{"digest":"{b}"}}],"z":"sha256:12"}}"#);
        assert_eq!(digests_in(doc.as_bytes()), vec![a, b]);
        assert!(digests_in(b"sha256:").is_empty());
        let key = Key::from(format!("referrers/{}/{}", a.hex(), b.hex()));
        assert_eq!(digests_in_key(&key), vec![a, b]);
    }
}

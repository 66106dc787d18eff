//! `store check`, the store's fsck: every blob re-hashed against its key, and every ref's image
//! walked to prove that everything it references is present and readable.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use futures::StreamExt;
use kiln_oci::{media_type, Descriptor, Digest, ImageIndex, ImageManifest};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::{key, Store};

/// Blobs re-hashed at once.
const VERIFY_CONCURRENCY: usize = 8;

/// Hears how far a check has come; every method defaults to doing nothing.
pub trait CheckProgress: Sync {
    /// The check will re-hash `count` blobs totalling `bytes`.
    fn blobs_found(&self, _count: u64, _bytes: u64) {}
    /// One blob of `bytes` was re-hashed (whatever the outcome).
    fn blob_checked(&self, _bytes: u64) {}
}

/// A progress listener that ignores everything.
pub struct NoProgress;
impl CheckProgress for NoProgress {}

/// One thing wrong with the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Problem {
    /// The bytes under a blob key hash to something else.
    #[serde(rename_all = "camelCase")]
    CorruptBlob { key: String, expected: Digest, found: Digest },
    /// A blob could not be read at all.
    #[serde(rename_all = "camelCase")]
    UnreadableBlob { key: String, error: String },
    /// An object under `blobs/` whose key names no sha256 digest.
    #[serde(rename_all = "camelCase")]
    StrayKey { key: String },
    /// A ref could not be read or decoded.
    #[serde(rename_all = "camelCase")]
    BadRef { key: String, error: String },
    /// Something references a blob the store does not hold.
    #[serde(rename_all = "camelCase")]
    MissingBlob { digest: Digest, referenced_by: String },
    /// An index or manifest is present but does not decode.
    #[serde(rename_all = "camelCase")]
    BadDocument { digest: Digest, error: String },
    /// A multipart upload was started and never completed or aborted (a killed writer, or
    /// one still running); `kiln gc` aborts it once older than its grace.
    #[serde(rename_all = "camelCase")]
    UnfinishedUpload { marker: String, upload_id: String },
    /// A build cache entry that no build would use, or that contradicts a stored image.
    #[serde(rename_all = "camelCase")]
    BadCacheEntry { key: String, problem: crate::cache::check::EntryProblem },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CorruptBlob { key, expected, found } => {
                write!(f, "corrupt blob {key}: content is {found}, not {expected}")
            }
            Problem::UnreadableBlob { key, error } => write!(f, "unreadable blob {key}: {error}"),
            Problem::StrayKey { key } => write!(f, "{key} is not a blobs/sha256/<hex> key"),
            Problem::BadRef { key, error } => write!(f, "bad ref {key}: {error}"),
            Problem::MissingBlob { digest, referenced_by } => {
                write!(f, "missing blob {digest}, referenced by {referenced_by}")
            }
            Problem::BadDocument { digest, error } => {
                write!(f, "blob {digest} is not a valid index or manifest: {error}")
            }
            Problem::UnfinishedUpload { marker, upload_id } => {
                write!(f, "unfinished multipart upload {upload_id:?} recorded by {marker}")
            }
            Problem::BadCacheEntry { key, problem } => {
                write!(f, "bad cache entry {key}: {problem}")
            }
        }
    }
}

/// What a check found.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// Blobs re-hashed.
    pub blobs: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Refs walked.
    pub refs: u64,
    /// Everything wrong, in a stable order.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Renders an error with its causes on one line.
fn chain(err: &StoreError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Store {
    /// Re-hashes every blob and walks every ref. Problems are reported, not returned as
    /// errors; an error means the store could not be listed at all.
    pub async fn check(&self, progress: &dyn CheckProgress) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let listed = self.list_under(key::BLOBS).await?;
        let mut blobs = Vec::with_capacity(listed.len());
        for entry in listed {
            match key::parse_blob(&entry.key) {
                Some(digest) => blobs.push((digest, entry.size)),
                None => report.problems.push(Problem::StrayKey { key: entry.key.to_string() }),
            }
        }
        progress.blobs_found(blobs.len() as u64, blobs.iter().map(|(_, size)| size).sum());

        let mut present = HashSet::new();
        let mut results = futures::stream::iter(&blobs)
            .map(|(digest, size)| async move {
                let result = self.verify_blob(digest).await;
                progress.blob_checked(*size);
                (*digest, *size, result)
            })
            .buffer_unordered(VERIFY_CONCURRENCY);
        while let Some((digest, size, result)) = results.next().await {
            report.blobs += 1;
            report.bytes += size;
            let key = key::blob(&digest).to_string();
            match result {
                Ok(_) => {
                    present.insert(digest);
                }
                Err(StoreError::DigestMismatch { expected, found, .. }) => {
                    report.problems.push(Problem::CorruptBlob { key, expected, found });
                }
                // Deleted since it was listed (gc, or a racing writer's cleanup): not a problem
                // of the blob; the ref walk below says whether anything needed it.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => report.problems.push(Problem::UnreadableBlob { key, error: chain(&e) }),
            }
        }
        drop(results);

        for entry in self.list_under(key::REFS).await? {
            let key = entry.key.to_string();
            let Some(bytes) = self.read_object(&entry.key).await? else { continue };
            match serde_json::from_slice::<Descriptor>(&bytes) {
                Ok(root) => {
                    report.refs += 1;
                    self.check_image(&root, &key, &present, &mut report.problems).await;
                }
                Err(e) => report.problems.push(Problem::BadRef { key, error: e.to_string() }),
            }
        }
        for upload in self.unfinished_uploads().await? {
            report.problems.push(Problem::UnfinishedUpload {
                marker: upload.marker,
                upload_id: upload.upload_id,
            });
        }
        let corrupt: HashSet<Digest> = report
            .problems
            .iter()
            .filter_map(|p| match p {
                Problem::CorruptBlob { expected, .. } => Some(*expected),
                _ => None,
            })
            .collect();
        for bad in self.check_cache().await? {
            // An entry is not at fault for its blob's corruption, reported once above.
            if bad.problem.blob().is_some_and(|d| corrupt.contains(&d)) {
                continue;
            }
            report.problems.push(Problem::BadCacheEntry { key: bad.key, problem: bad.problem });
        }
        report.problems.sort_by_key(|p| format!("{p:?}"));
        report.problems.dedup();
        Ok(report)
    }

    /// Walks the image at `root`, recording what is missing or undecodable. Blobs already
    /// found corrupt (absent from `present`) are reported once, by the hashing pass.
    async fn check_image(
        &self,
        root: &Descriptor,
        label: &str,
        present: &HashSet<Digest>,
        problems: &mut Vec<Problem>,
    ) {
        let mut seen = BTreeSet::new();
        let mut pending = vec![(root.clone(), label.to_string())];
        while let Some((desc, parent)) = pending.pop() {
            if !seen.insert(desc.digest) {
                continue;
            }
            if !present.contains(&desc.digest) {
                let listed_corrupt = problems.iter().any(|p| {
                    matches!(p, Problem::CorruptBlob { expected, .. } if *expected == desc.digest)
                });
                if !listed_corrupt {
                    problems
                        .push(Problem::MissingBlob { digest: desc.digest, referenced_by: parent });
                }
                continue;
            }
            let children = match desc.media_type.as_str() {
                media_type::IMAGE_INDEX => {
                    self.get_json::<ImageIndex>(&desc.digest).await.map(|i| i.manifests)
                }
                media_type::IMAGE_MANIFEST => {
                    self.get_json::<ImageManifest>(&desc.digest).await.map(|m| {
                        let mut children = vec![m.config];
                        children.extend(m.layers);
                        children
                    })
                }
                _ => Ok(Vec::new()),
            };
            match children {
                Ok(children) => {
                    let by = desc.digest.to_string();
                    pending.extend(children.into_iter().rev().map(|c| (c, by.clone())));
                }
                Err(e) => {
                    problems.push(Problem::BadDocument { digest: desc.digest, error: chain(&e) })
                }
            }
        }
    }
}

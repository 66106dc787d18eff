//! `store check`, the store's fsck: every blob re-hashed against its key, every ref's image and
//! every referrer's artifact walked to prove that everything they reference is present,
//! readable and of the size its descriptor gives; and every build cache entry opened as a
//! build would open it (`cache/check.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use futures::StreamExt;
use kiln_oci::{media_type, Descriptor, Digest, ImageIndex, ImageManifest};
use object_store::path::Path as Key;

use crate::cache::check::BadEntry;
pub use crate::check_report::{CheckReport, Problem};
use crate::error::{one_line, Result, StoreError};
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

/// A root (ref or referrer entry) that leads to a problem, with the bytes it held when
/// checked, so a repair drops it only if nobody changed it since.
#[derive(Clone, Debug)]
pub(crate) struct DamagedRoot {
    pub key: Key,
    pub held: Bytes,
}

/// Everything a check learnt, for the report and for a repair.
pub(crate) struct Findings {
    pub report: CheckReport,
    /// Blobs whose bytes hash to something else than their key.
    pub corrupt: Vec<(Digest, Digest)>,
    pub damaged_refs: Vec<DamagedRoot>,
    pub damaged_referrers: Vec<DamagedRoot>,
    /// Build cache entries no build would use, or that contradict a stored image.
    pub bad_cache: Vec<BadEntry>,
}

/// The sound blobs (digest to size) and the corrupt ones, as the hashing pass found them.
struct Blobs {
    sound: HashMap<Digest, u64>,
    corrupt: HashSet<Digest>,
}

impl Store {
    /// Re-hashes every blob and walks every ref and referrer entry, checking every
    /// descriptor's size. Problems are reported, not returned as errors; an error means the
    /// store could not be listed at all.
    pub async fn check(&self, progress: &dyn CheckProgress) -> Result<CheckReport> {
        Ok(self.find_problems(progress).await?.report)
    }

    pub(crate) async fn find_problems(&self, progress: &dyn CheckProgress) -> Result<Findings> {
        let mut findings = Findings {
            report: CheckReport::default(),
            corrupt: Vec::new(),
            damaged_refs: Vec::new(),
            damaged_referrers: Vec::new(),
            bad_cache: Vec::new(),
        };
        let blobs = self.check_blobs(progress, &mut findings).await?;
        self.check_refs(&blobs, &mut findings).await?;
        self.check_referrers(&blobs, &mut findings).await?;
        let recorded = self.unfinished_uploads().await?;
        let ids: HashSet<String> = recorded.iter().map(|u| u.upload_id.clone()).collect();
        for upload in recorded {
            findings.report.problems.push(Problem::UnfinishedUpload {
                marker: upload.marker,
                upload_id: upload.upload_id,
            });
        }
        // Those no marker names, where the server lists uploads in progress (S3). Elsewhere
        // the marker goes up before any part is sent, so no part is there without one.
        for upload in self.unrecorded_uploads(&ids).await? {
            findings.report.problems.push(Problem::UnrecordedUpload {
                key: upload.key.to_string(),
                upload_id: upload.upload.upload_id,
                age_seconds: upload.upload.age.as_secs(),
            });
        }
        findings.bad_cache = self.check_cache().await?;
        for bad in &findings.bad_cache {
            // An entry is not at fault for its blob's corruption, reported once above (a
            // repair still drops the entry).
            if bad.problem.blob().is_some_and(|d| blobs.corrupt.contains(&d)) {
                continue;
            }
            let (key, problem) = (bad.key.clone(), bad.problem.clone());
            findings.report.problems.push(Problem::BadCacheEntry { key, problem });
        }
        let problems = &mut findings.report.problems;
        problems.sort_by_key(|p| format!("{p:?}"));
        problems.dedup();
        Ok(findings)
    }

    /// Re-hashes every blob.
    async fn check_blobs(
        &self,
        progress: &dyn CheckProgress,
        findings: &mut Findings,
    ) -> Result<Blobs> {
        let report = &mut findings.report;
        let listed = self.list_under(key::BLOBS).await?;
        let mut blobs = Vec::with_capacity(listed.len());
        for entry in listed {
            match key::parse_blob(&entry.key) {
                Some(digest) => blobs.push((digest, entry.size)),
                None => report.problems.push(Problem::StrayKey { key: entry.key.to_string() }),
            }
        }
        progress.blobs_found(blobs.len() as u64, blobs.iter().map(|(_, size)| size).sum());

        let mut found = Blobs { sound: HashMap::new(), corrupt: HashSet::new() };
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
                Ok(read) => {
                    found.sound.insert(digest, read);
                }
                Err(StoreError::DigestMismatch { expected, found: hashed, .. }) => {
                    found.corrupt.insert(digest);
                    findings.corrupt.push((digest, hashed));
                    report.problems.push(Problem::CorruptBlob { key, expected, found: hashed });
                }
                // Deleted since it was listed (gc, or a racing writer's cleanup): not a problem
                // of the blob; the walks below say whether anything needed it.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    report.problems.push(Problem::UnreadableBlob { key, error: one_line(&e) })
                }
            }
        }
        Ok(found)
    }

    /// Walks the image of every ref.
    async fn check_refs(&self, blobs: &Blobs, findings: &mut Findings) -> Result<()> {
        for entry in self.list_under(key::REFS).await? {
            let key = entry.key.to_string();
            let Some(held) = self.read_object(&entry.key).await? else { continue };
            let damaged = DamagedRoot { key: entry.key, held };
            let problems = &mut findings.report.problems;
            match serde_json::from_slice::<Descriptor>(&damaged.held) {
                Ok(root) => {
                    findings.report.refs += 1;
                    if !self.check_image(&root, &key, blobs, problems).await {
                        findings.damaged_refs.push(damaged);
                    }
                }
                Err(e) => {
                    problems.push(Problem::BadRef { key, error: one_line(&e) });
                    findings.damaged_refs.push(damaged);
                }
            }
        }
        Ok(())
    }

    /// Checks every `referrers/<subject>/<artifact>` entry: it holds the descriptor of the
    /// artifact its key names, that artifact is whole and names the subject, and the subject
    /// is stored.
    async fn check_referrers(&self, blobs: &Blobs, findings: &mut Findings) -> Result<()> {
        for entry in self.list_under(key::REFERRERS).await? {
            let key = entry.key.to_string();
            let Some(held) = self.read_object(&entry.key).await? else { continue };
            findings.report.referrers += 1;
            let problems = &mut findings.report.problems;
            let whole = match referrer_parts(&entry.key, &held) {
                Ok((subject, artifact)) => {
                    let mut whole = self.check_image(&artifact, &key, blobs, problems).await;
                    if !blobs.sound.contains_key(&subject) {
                        if !blobs.corrupt.contains(&subject) {
                            problems
                                .push(Problem::MissingBlob { digest: subject, referenced_by: key });
                        }
                        whole = false;
                    } else if whole {
                        whole = self.names_subject(&artifact, &subject, &key, problems).await;
                    }
                    whole
                }
                Err(error) => {
                    problems.push(Problem::BadReferrer { key, error });
                    false
                }
            };
            if !whole {
                findings.damaged_referrers.push(DamagedRoot { key: entry.key, held });
            }
        }
        Ok(())
    }

    /// Whether the artifact manifest (already found whole) names `subject` as its subject.
    async fn names_subject(
        &self,
        artifact: &Descriptor,
        subject: &Digest,
        key: &str,
        problems: &mut Vec<Problem>,
    ) -> bool {
        if artifact.media_type != media_type::IMAGE_MANIFEST {
            return true;
        }
        let named = match self.get_described_json::<ImageManifest>(artifact).await {
            Ok(manifest) => manifest.subject.map(|s| s.digest),
            Err(e) => {
                problems
                    .push(Problem::BadDocument { digest: artifact.digest, error: one_line(&e) });
                return false;
            }
        };
        if named.as_ref() == Some(subject) {
            return true;
        }
        let named = named.map_or_else(|| "no subject".to_string(), |d| format!("subject {d}"));
        problems.push(Problem::BadReferrer {
            key: key.to_string(),
            error: format!("its artifact {} names {named}, not {subject}", artifact.digest),
        });
        false
    }

    /// Walks the image at `root`, recording what is missing, of another size than its
    /// descriptor says, or undecodable; true when nothing is. Blobs already found corrupt
    /// are reported once, by the hashing pass.
    async fn check_image(
        &self,
        root: &Descriptor,
        label: &str,
        blobs: &Blobs,
        problems: &mut Vec<Problem>,
    ) -> bool {
        let mut whole = true;
        let mut seen = BTreeSet::new();
        let mut pending = vec![(root.clone(), label.to_string())];
        while let Some((desc, parent)) = pending.pop() {
            if !seen.insert((desc.digest, desc.size)) {
                continue;
            }
            let Some(&size) = blobs.sound.get(&desc.digest) else {
                if !blobs.corrupt.contains(&desc.digest) {
                    problems
                        .push(Problem::MissingBlob { digest: desc.digest, referenced_by: parent });
                }
                whole = false;
                continue;
            };
            if size != desc.size {
                problems.push(Problem::SizeMismatch {
                    digest: desc.digest,
                    expected: desc.size,
                    found: size,
                    referenced_by: parent.clone(),
                });
                whole = false;
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
                    problems
                        .push(Problem::BadDocument { digest: desc.digest, error: one_line(&e) });
                    whole = false;
                }
            }
        }
        whole
    }
}

/// The subject a `referrers/<subject>/<artifact>` key names and the artifact descriptor the
/// entry holds, or why the entry is bad.
fn referrer_parts(key: &Key, held: &[u8]) -> std::result::Result<(Digest, Descriptor), String> {
    let parts: Vec<_> = key.parts().collect();
    let named = |i: usize| parts.get(i).and_then(|p| Digest::from_hex(p.as_ref()).ok());
    let (Some(subject), Some(artifact), 3) = (named(1), named(2), parts.len()) else {
        return Err("the key is not referrers/<subject-hex>/<artifact-hex>".to_string());
    };
    let desc: Descriptor = serde_json::from_slice(held).map_err(|e| e.to_string())?;
    if desc.digest != artifact {
        return Err(format!("it holds a descriptor of {}, not of {artifact}", desc.digest));
    }
    Ok((subject, desc))
}

//! `store check`, the store's fsck: every blob re-hashed against its key, every ref's image and
//! every referrer's artifact walked to prove that everything they reference is present,
//! readable and of the size its descriptor gives; and every build cache entry opened as a
//! build would open it (`cache/check.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use bytes::Bytes;
use futures::StreamExt;
use kiln_oci::{media_type, Descriptor, Digest, ImageIndex, ImageManifest};
use object_store::path::Path as Key;
use serde::Serialize;

use crate::cache::check::BadEntry;
use crate::error::{one_line, Result, StoreError};
use crate::repair::RepairReport;
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
    /// A descriptor gives another size than the (sound) blob it names has.
    #[serde(rename_all = "camelCase")]
    SizeMismatch { digest: Digest, expected: u64, found: u64, referenced_by: String },
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
    /// A referrer entry that does not decode, names another artifact than its key, or whose
    /// artifact names another subject.
    #[serde(rename_all = "camelCase")]
    BadReferrer { key: String, error: String },
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
            Problem::SizeMismatch { digest, expected, found, referenced_by } => {
                write!(f, "{referenced_by} says blob {digest} has {expected} bytes; it has {found}")
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
            Problem::BadReferrer { key, error } => write!(f, "bad referrer entry {key}: {error}"),
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
    /// Referrer entries walked.
    pub referrers: u64,
    /// Everything wrong, in a stable order.
    pub problems: Vec<Problem>,
    /// With `--repair`: what was done about the problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairReport>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// True when nothing is wrong, or every problem was repaired.
    pub fn is_settled(&self) -> bool {
        match &self.repair {
            Some(repair) => repair.left.is_empty(),
            None => self.is_clean(),
        }
    }
}

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
        for upload in self.unfinished_uploads().await? {
            findings.report.problems.push(Problem::UnfinishedUpload {
                marker: upload.marker,
                upload_id: upload.upload_id,
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

//! What `store check` reports: the problems it found and, with `--repair`, what was done
//! about them.

use std::fmt;

use kiln_oci::Digest;
use serde::Serialize;

use crate::heal::Quarantined;

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
    /// A multipart upload in progress that no marker under `uploads/` names, found in the
    /// server's own list (S3 only): a writer killed between the server creating it and its
    /// marker being written, or one just starting. Its parts take space until aborted; `kiln
    /// gc` aborts it once older than its grace (unless a live lease names its blob). `key` is
    /// the key it writes, inside the store; `age_seconds` is by the server's clock.
    #[serde(rename_all = "camelCase")]
    UnrecordedUpload { key: String, upload_id: String, age_seconds: u64 },
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
            Problem::UnfinishedUpload { marker, upload_id } => write!(
                f,
                "unfinished multipart upload {upload_id:?} recorded by {marker}; \
                 `kiln gc` aborts it once older than its grace"
            ),
            Problem::UnrecordedUpload { key, upload_id, age_seconds } => write!(
                f,
                "multipart upload {upload_id:?} of {key}, started {age_seconds} s ago by the \
                 server's clock, is recorded by no marker; `kiln gc` aborts it once older than \
                 its grace"
            ),
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

/// What a repair did.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairReport {
    /// Corrupt blobs moved aside.
    pub quarantined: Vec<Quarantined>,
    /// Ref keys deleted.
    pub refs_dropped: Vec<String>,
    /// Referrer entry keys deleted.
    pub referrers_dropped: Vec<String>,
    /// Build cache entry keys deleted (the next build makes them again).
    pub cache_entries_dropped: Vec<String>,
    /// Damaged refs or referrer entries left alone because they changed since the check
    /// (a build or copy set them anew); the next check judges them.
    pub changed_since: Vec<String>,
    /// Problems repair cannot settle: stray keys, unreadable blobs, and unfinished uploads,
    /// recorded or not (which gc aborts once older than its grace period).
    pub left: Vec<Problem>,
}

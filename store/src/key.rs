//! The store's key layout, in one place (see docs/design.md, "The store").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_oci::Digest;
use object_store::path::Path;

use crate::reference::{RepoName, Tag};

/// Prefix of every ref key.
pub(crate) const REFS: &str = "refs";
/// Prefix of every blob key.
pub(crate) const BLOBS: &str = "blobs/sha256";
/// Prefix of staging uploads.
pub(crate) const UPLOADS: &str = "uploads";
/// Prefix of build cache entries.
pub(crate) const CACHE: &str = "cache";
/// Prefix of channel logs (write-once entries naming digests).
pub(crate) const LOG: &str = "log";
/// Prefix of leases: `leases/<id>/<n>`, what writers in flight are about to reference.
pub(crate) const LEASES: &str = "leases";
/// Prefix of sweeps: `sweeps/<id>`, the deletions of gc runs in progress.
pub(crate) const SWEEPS: &str = "sweeps";
/// Prefix of referrers: `referrers/<subject-hex>/<artifact-hex>`.
pub(crate) const REFERRERS: &str = "referrers";
/// Prefix of corrupt blobs moved aside.
pub(crate) const QUARANTINE: &str = "quarantine/sha256";

/// `blobs/sha256/<hex>`: write-once, verified on read.
pub(crate) fn blob(digest: &Digest) -> Path {
    Path::from(format!("{BLOBS}/{}", digest.hex()))
}

/// `quarantine/sha256/<hex>`: bytes found corrupt under `blobs/sha256/<hex>`, kept for
/// inspection and never read as a blob.
pub(crate) fn quarantine(digest: &Digest) -> Path {
    Path::from(format!("{QUARANTINE}/{}", digest.hex()))
}

/// The digest a `blobs/sha256/<hex>` key names, or `None` for any other key.
pub(crate) fn parse_blob(key: &Path) -> Option<Digest> {
    let hex = key.as_ref().strip_prefix(BLOBS)?.strip_prefix('/')?;
    Digest::from_hex(hex).ok()
}

/// `referrers/<subject-hex>/`: what refers to `subject`.
pub(crate) fn referrers(subject: &Digest) -> Path {
    Path::from(format!("{REFERRERS}/{}", subject.hex()))
}

/// `refs/<name>/<tag>`: the descriptor a tag points at.
pub(crate) fn reference(name: &RepoName, tag: &Tag) -> Path {
    Path::from(format!("{REFS}/{name}/{tag}"))
}

/// `cache/<kind>/<key-hex>`: replaceable build cache entries.
pub(crate) fn cache(kind: &str, key: &Digest) -> Path {
    Path::from(format!("cache/{kind}/{}", key.hex()))
}

/// The digest a staging upload's name (`<hex>-...`, or a part file `<hex>-...#<n>`) is for.
pub(crate) fn upload_digest(name: &str) -> Option<Digest> {
    Digest::from_hex(name.get(..64)?).ok()
}

/// A fresh `uploads/<hex>-<pid>-<nanos>-<n>` staging key, unique across processes and
/// machines sharing the store, so two uploads of one blob never write the same object.
pub(crate) fn upload(digest: &Digest) -> Path {
    Path::from(format!("{UPLOADS}/{}-{}", digest.hex(), unique()))
}

/// A fresh `uploads/growing-<pid>-<nanos>-<n>` staging key for a blob whose digest is not
/// known yet (see [`crate::growing`]). It names no digest, so no lease keeps it from gc:
/// only its age does.
pub(crate) fn growing_upload() -> Path {
    Path::from(format!("{UPLOADS}/growing-{}", unique()))
}

/// `<pid>-<nanos>-<n>`: unique across processes and machines sharing the store.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos}-{n}", std::process::id())
}

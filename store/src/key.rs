//! The store's key layout, in one place (see DESIGN.md, "The store").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_oci::Digest;
use object_store::path::Path;

use crate::reference::{RepoName, Tag};

/// Prefix of every ref key.
pub(crate) const REFS: &str = "refs";

/// `blobs/sha256/<hex>`: write-once, verified on read.
pub(crate) fn blob(digest: &Digest) -> Path {
    Path::from(format!("blobs/sha256/{}", digest.hex()))
}

/// `refs/<name>/<tag>`: the descriptor a tag points at.
pub(crate) fn reference(name: &RepoName, tag: &Tag) -> Path {
    Path::from(format!("{REFS}/{name}/{tag}"))
}

/// `cache/<kind>/<key-hex>`: replaceable build cache entries.
pub(crate) fn cache(kind: &str, key: &Digest) -> Path {
    Path::from(format!("cache/{kind}/{}", key.hex()))
}

/// A fresh `uploads/<hex>-<pid>-<nanos>-<n>` staging key, unique across processes and
/// machines sharing the store, so two uploads of one blob never write the same object.
pub(crate) fn upload(digest: &Digest) -> Path {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Path::from(format!("uploads/{}-{}-{nanos}-{n}", digest.hex(), std::process::id()))
}

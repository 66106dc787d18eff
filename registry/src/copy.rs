//! Copying an image from one registry repository to another (the same registry or
//! another): pulled into a temporary folder store, every byte verified on the way, optionally
//! signed for the destination repository, then pushed with every referrer (on the same
//! registry, blobs are mounted from the source repository instead of sent). Nothing is
//! streamed from registry to registry unverified.

use kiln_attest::PrivateKey;
use kiln_oci::{Digest, Reference, Tag};
use kiln_store::Store;
use serde::Serialize;

use crate::error::{RegistryError, Result};
use crate::pull::{pull, PullReport};
use crate::push::{push_mounting, PushReport};
use crate::repository::Repository;

/// What a registry-to-registry copy did (`kiln copy --json` between registries).
#[derive(Clone, Debug, Serialize)]
pub struct RelayReport {
    pub pulled: PullReport,
    pub pushed: PushReport,
}

/// Copies image `digest` and its referrers from `from` to `to`, tagging it `tag` there; with
/// `sign`, first signs it for `to`'s repository.
pub async fn between_registries(
    from: &Repository,
    digest: Digest,
    to: &Repository,
    tag: Option<&Tag>,
    sign: Option<&PrivateKey>,
) -> Result<RelayReport> {
    let scratch = tempfile::Builder::new()
        .prefix("kiln-relay-")
        .tempdir()
        .map_err(|source| RegistryError::Scratch { source })?;
    let location = scratch.path().to_string_lossy().into_owned();
    let store = Store::open(&location)?;
    let pulled = pull(&store, from, digest, None).await?;
    let root = store.resolve(&Reference::Digest(digest)).await?;
    if let Some(key) = sign {
        kiln_attest::publish::sign_for_repository(&store, &root, &to.describe(), key).await?;
    }
    // On the same registry, blobs are linked from the source repository, not sent again.
    let same_registry = from.client().host() == to.client().host();
    let mount_from = same_registry.then(|| from.name());
    let pushed = push_mounting(&store, &root, to, tag, mount_from).await?;
    if let Err(e) = scratch.close() {
        log::warn!("cannot remove the copy's scratch store {location}: {e}");
    }
    Ok(RelayReport { pulled, pushed })
}

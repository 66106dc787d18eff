//! Refs under `refs/<name>/<tag>`: the canonical JSON descriptor a tag points at. Unlike
//! blobs they are overwritten when a tag moves.

use futures::{StreamExt, TryStreamExt};
use kiln_oci::{to_canonical_json, Descriptor};
use object_store::path::Path as Key;
use serde::Deserialize;

use crate::error::{Result, StoreError};
use crate::reference::{Reference, RepoName, Tag};
use crate::{key, Store};

/// Refs read at once by [`Store::list_refs`].
const LIST_CONCURRENCY: usize = 16;

/// The one field a bare digest needs from its blob to become a descriptor.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaTypeOnly {
    media_type: Option<String>,
}

impl Store {
    /// Points `name:tag` at `descriptor`, replacing whatever it pointed at before. A ref that
    /// already says exactly this is left alone, so an unchanged rebuild or copy writes nothing.
    pub async fn set_ref(&self, name: &RepoName, tag: &Tag, descriptor: &Descriptor) -> Result<()> {
        let key = key::reference(name, tag);
        if self.read_ref(&key).await.ok().flatten().as_ref() == Some(descriptor) {
            return Ok(());
        }
        self.replace_ref(name, tag, descriptor).await
    }

    /// Points `name:tag` at `descriptor` without reading it first: for a writer that has just
    /// found it pointing elsewhere ([`crate::lease::Lease::before_tagging`]).
    pub async fn replace_ref(
        &self,
        name: &RepoName,
        tag: &Tag,
        descriptor: &Descriptor,
    ) -> Result<()> {
        let key = key::reference(name, tag);
        let json = to_canonical_json(descriptor)
            .map_err(|source| StoreError::Json { key: key.to_string(), source })?;
        self.inner.put(&key, json.into()).await.map_err(|e| StoreError::backend(&key, e))?;
        Ok(())
    }

    /// The descriptor `name:tag` points at, or `None` if the tag does not exist.
    pub async fn get_ref(&self, name: &RepoName, tag: &Tag) -> Result<Option<Descriptor>> {
        self.read_ref(&key::reference(name, tag)).await
    }

    async fn read_ref(&self, key: &Key) -> Result<Option<Descriptor>> {
        let got = match self.inner.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(StoreError::backend(key, source)),
        };
        let bytes = got.bytes().await.map_err(|e| StoreError::backend(key, e))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Json { key: key.to_string(), source })
    }

    /// Every ref in the store, sorted by name then tag.
    pub async fn list_refs(&self) -> Result<Vec<(RepoName, Tag, Descriptor)>> {
        let prefix = Key::from(key::REFS);
        let metas: Vec<_> = self
            .inner
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| StoreError::backend(&prefix, e))?;
        let mut refs: Vec<(RepoName, Tag, Descriptor)> = futures::stream::iter(metas)
            .map(|meta| async move {
                let (name, tag) = parse_ref_key(&meta.location)?;
                // A ref deleted between list and read is simply gone, not an error.
                Ok::<_, StoreError>(self.read_ref(&meta.location).await?.map(|d| (name, tag, d)))
            })
            .buffered(LIST_CONCURRENCY)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await?;
        refs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(refs)
    }

    /// The descriptor a reference stands for. A tag's is the ref's, as stored: every read
    /// through it checks the blob's size as well as its digest. A digest (bare or pinned) is
    /// described from its blob: `mediaType` from the JSON, size from the bytes.
    pub async fn resolve(&self, reference: &Reference) -> Result<Descriptor> {
        let digest = match reference {
            Reference::Tagged { name, tag } => {
                let key = key::reference(name, tag);
                return self
                    .read_ref(&key)
                    .await?
                    .ok_or_else(|| StoreError::NotFound { key: key.to_string() });
            }
            Reference::Pinned { digest, .. } | Reference::Digest(digest) => digest,
        };
        let bytes = self.get_blob(digest).await.map_err(|e| match e {
            StoreError::NotFound { key } => StoreError::UnknownDigest { key },
            e => e,
        })?;
        let key = key::blob(digest).to_string();
        let parsed: MediaTypeOnly = serde_json::from_slice(&bytes)
            .map_err(|source| StoreError::Json { key: key.clone(), source })?;
        let media_type = parsed.media_type.ok_or(StoreError::NoMediaType { key })?;
        Ok(Descriptor::new(media_type, *digest, bytes.len() as u64))
    }
}

/// Splits `refs/<name>/<tag>` back into a validated name and tag.
fn parse_ref_key(key: &Key) -> Result<(RepoName, Tag)> {
    let invalid = |source| StoreError::InvalidRefKey { key: key.to_string(), source };
    let text = key.as_ref();
    let rest = text.strip_prefix("refs/").unwrap_or(text);
    let (name, tag) = rest.rsplit_once('/').unwrap_or(("", rest));
    Ok((name.parse().map_err(invalid)?, tag.parse().map_err(invalid)?))
}

//! The cache part of `store check`: every entry under `cache/` is opened as a build would
//! open it (well formed, about the key it is stored under, its blob stored with the recorded
//! size), and a layer entry's diff_id is compared with what the stored images record for the
//! same layer blob.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use kiln_oci::{media_type, Digest, ImageManifest};
use serde::Serialize;

use super::{open_entry, Refusal};
use crate::error::Result;
use crate::walk::image_blobs;
use crate::{key, Store};

/// Entries read at once.
const READ_CONCURRENCY: usize = 16;

/// A cache entry no build would use, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BadEntry {
    /// The entry's key, `cache/<kind>/<hex>`.
    pub key: String,
    /// What is wrong with it.
    pub problem: EntryProblem,
}

/// What is wrong with a cache entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum EntryProblem {
    /// A build would refuse it.
    #[error("{0}")]
    Refused(Refusal),
    /// Its key is not `cache/<kind>/<sha256 hex>`.
    #[error("the key is not cache/<kind>/<sha256 hex>")]
    StrayKey,
    /// It records another diff_id for its layer than an image in the store does.
    #[error(
        "it records diff_id {recorded} for layer {layer}, image config {config} records {found}"
    )]
    #[serde(rename_all = "camelCase")]
    WrongDiffId { layer: Digest, recorded: Digest, config: Digest, found: Digest },
}

/// The one part of an image config this check reads.
#[derive(serde::Deserialize)]
struct ConfigRootFs {
    rootfs: RootFs,
}

#[derive(serde::Deserialize)]
struct RootFs {
    diff_ids: Vec<Digest>,
}

impl EntryProblem {
    /// The blob whose state the problem is about, when it is one of its blob.
    pub fn blob(&self) -> Option<Digest> {
        match self {
            EntryProblem::Refused(Refusal::MissingBlob { digest })
            | EntryProblem::Refused(Refusal::WrongSize { digest, .. }) => Some(*digest),
            _ => None,
        }
    }
}

/// `(kind, key)` of a `cache/<kind>/<hex>` key.
pub(crate) fn parse_key(key: &object_store::path::Path) -> Option<(String, Digest)> {
    let mut parts = key.parts();
    let (prefix, kind, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if prefix.as_ref() != key::CACHE || parts.next().is_some() {
        return None;
    }
    Some((kind.as_ref().to_string(), Digest::from_hex(hex.as_ref()).ok()?))
}

impl Store {
    /// Every cache entry a build would refuse or that contradicts a stored image, in key
    /// order. An error means the store could not be listed or read at all.
    pub async fn check_cache(&self) -> Result<Vec<BadEntry>> {
        let recorded = self.recorded_diff_ids().await?;
        let entries = self.list_under(key::CACHE).await?;
        let mut bad: Vec<BadEntry> = futures::stream::iter(entries)
            .map(|entry| {
                let recorded = &recorded;
                async move {
                    let problem = self.entry_problem(&entry.key, recorded).await?;
                    Ok::<_, crate::StoreError>(
                        problem.map(|problem| BadEntry { key: entry.key.to_string(), problem }),
                    )
                }
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_filter_map(|bad| async move { Ok(bad) })
            .try_collect()
            .await?;
        bad.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(bad)
    }

    /// Deletes the entries `check_cache` found bad (a later build makes them again).
    pub async fn remove_cache_entries(&self, bad: &[BadEntry]) -> Result<()> {
        self.delete_all(
            bad.iter().map(|b| object_store::path::Path::from(b.key.as_str())).collect(),
        )
        .await
    }

    async fn entry_problem(
        &self,
        path: &object_store::path::Path,
        recorded: &HashMap<Digest, (Digest, Digest)>,
    ) -> Result<Option<EntryProblem>> {
        let Some((kind, key)) = parse_key(path) else { return Ok(Some(EntryProblem::StrayKey)) };
        // Gone since it was listed (a build replacing it): nothing to judge.
        let Some(bytes) = self.read_object(path).await? else { return Ok(None) };
        let record = match open_entry(&kind, &key, &bytes, None) {
            Ok((record, _)) => record,
            Err(refusal) => return Ok(Some(EntryProblem::Refused(refusal))),
        };
        if let Err(refusal) = self.output_stored(&record.output).await? {
            return Ok(Some(EntryProblem::Refused(refusal)));
        }
        if let (Some(diff_id), Some((found, config))) =
            (record.diff_id, recorded.get(&record.output.digest))
        {
            if diff_id != *found {
                return Ok(Some(EntryProblem::WrongDiffId {
                    layer: record.output.digest,
                    recorded: diff_id,
                    config: *config,
                    found: *found,
                }));
            }
        }
        Ok(None)
    }

    /// For every layer of every tagged image: its diff_id as the image config records it, and
    /// that config. Images that cannot be walked are left out (the blob check reports them).
    async fn recorded_diff_ids(&self) -> Result<HashMap<Digest, (Digest, Digest)>> {
        let mut recorded = HashMap::new();
        for entry in self.list_under(key::REFS).await? {
            let Some(bytes) = self.read_object(&entry.key).await? else { continue };
            let Ok(root) = serde_json::from_slice::<kiln_oci::Descriptor>(&bytes) else { continue };
            let Ok(blobs) = image_blobs(self, &root).await else { continue };
            for desc in blobs.iter().filter(|d| d.media_type == media_type::IMAGE_MANIFEST) {
                let Ok(manifest) = self.get_json::<ImageManifest>(&desc.digest).await else {
                    continue;
                };
                let Ok(config) = self.get_json::<ConfigRootFs>(&manifest.config.digest).await
                else {
                    continue;
                };
                for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
                    recorded.insert(layer.digest, (*diff_id, manifest.config.digest));
                }
            }
        }
        Ok(recorded)
    }
}

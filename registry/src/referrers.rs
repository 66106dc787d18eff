//! Referrers on registries without the referrers API (distribution 2.8 answers 404 to
//! `/referrers/`): the OCI 1.1 fallback index under the tag `sha256-<hex>` of the subject,
//! and cosign's `sha256-<hex>.sig` signature manifest, which skopeo, podman and policy
//! controllers read. Both are read-modify-written: what is already listed is kept as it is
//! (fields kiln does not know included), entries are only added, and the write is re-read
//! and retried when another writer replaced the tag meanwhile.

use bytes::Bytes;
use kiln_oci::{image::EMPTY_JSON, media_type, to_canonical_json, Descriptor, Digest};
use serde_json::{json, Value};

use crate::error::{RegistryError, Result};
use crate::repository::Repository;

/// Read-modify-write rounds before giving up on a tag other writers keep replacing.
const ROUNDS: u32 = 5;

/// The fallback tag of `subject`'s referrers index.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// cosign's signature tag for `subject`.
pub fn signature_tag(subject: &Digest) -> String {
    format!("sha256-{}.sig", subject.hex())
}

/// The artifacts that refer to `subject` in `repo`: from the referrers API where it exists,
/// else from the fallback index (none when there is neither).
pub async fn list(repo: &Repository, subject: &Digest) -> Result<Vec<Descriptor>> {
    let (what, bytes) = match repo.referrers_api(subject).await? {
        Some(bytes) => (format!("the referrers of {subject} in {}", repo.describe()), bytes),
        None => match repo.get_manifest(&fallback_tag(subject), None).await? {
            Some(fetched) => {
                (format!("{}:{}", repo.describe(), fallback_tag(subject)), fetched.bytes)
            }
            None => return Ok(Vec::new()),
        },
    };
    #[derive(serde::Deserialize)]
    struct Listing {
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let listing: Listing =
        serde_json::from_slice(&bytes).map_err(|source| RegistryError::Json { what, source })?;
    Ok(listing.manifests)
}

/// Adds `entries` to the fallback index of `subject`; returns whether it was written (false
/// when everything was listed already).
pub async fn add_to_fallback(
    repo: &Repository,
    subject: &Digest,
    entries: &[Descriptor],
) -> Result<bool> {
    let tag = fallback_tag(subject);
    let entries: Vec<Value> = entries.iter().map(to_value).collect::<Result<_>>()?;
    update(repo, &tag, media_type::IMAGE_INDEX, "manifests", &entries, |items| {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type::IMAGE_INDEX,
            "manifests": items,
        })
    })
    .await
}

/// Adds the simple-signing `layers` (each carrying its signature annotation) to cosign's
/// signature manifest of `subject`; the layer blobs must already be in `repo`. Returns
/// whether it was written.
pub async fn add_signatures(
    repo: &Repository,
    subject: &Digest,
    layers: &[Descriptor],
) -> Result<bool> {
    let empty = Digest::of(EMPTY_JSON);
    if !repo.has_blob(&empty).await? {
        crate::upload::upload_bytes(repo, &empty, Bytes::from_static(EMPTY_JSON)).await?;
    }
    let layers: Vec<Value> = layers.iter().map(to_value).collect::<Result<_>>()?;
    update(repo, &signature_tag(subject), media_type::IMAGE_MANIFEST, "layers", &layers, |items| {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type::IMAGE_MANIFEST,
            "config": {
                "mediaType": media_type::EMPTY,
                "digest": empty.to_string(),
                "size": EMPTY_JSON.len(),
            },
            "layers": items,
        })
    })
    .await
}

fn to_value(desc: &Descriptor) -> Result<Value> {
    serde_json::to_value(desc).map_err(|source| RegistryError::Json {
        what: format!("the descriptor of {}", desc.digest),
        source,
    })
}

/// Makes the document at `tag` list every one of `entries` in its array `field`, keeping
/// what it holds; `fresh` makes the document when the tag does not exist yet.
async fn update(
    repo: &Repository,
    tag: &str,
    media_type: &str,
    field: &str,
    entries: &[Value],
    fresh: impl Fn(Vec<Value>) -> Value,
) -> Result<bool> {
    let digest_of = |v: &Value| v.get("digest").and_then(Value::as_str).map(str::to_string);
    let mut wrote = false;
    for _ in 0..ROUNDS {
        let current = repo.get_manifest(tag, None).await?;
        let mut document = match &current {
            Some(fetched) => serde_json::from_slice::<Value>(&fetched.bytes).map_err(|source| {
                RegistryError::Json { what: format!("{}:{tag}", repo.describe()), source }
            })?,
            None => fresh(Vec::new()),
        };
        let Some(items) = document.get_mut(field).and_then(Value::as_array_mut) else {
            return Err(RegistryError::Status {
                method: "GET".to_string(),
                url: format!("{}:{tag}", repo.describe()),
                status: 200,
                body: format!("the document has no {field} array"),
            });
        };
        let listed: Vec<String> = items.iter().filter_map(digest_of).collect();
        let missing: Vec<&Value> =
            entries.iter().filter(|e| digest_of(e).is_some_and(|d| !listed.contains(&d))).collect();
        if missing.is_empty() {
            return Ok(wrote);
        }
        items.extend(missing.into_iter().cloned());
        let bytes = to_canonical_json(&document).map_err(|source| RegistryError::Json {
            what: format!("{}:{tag}", repo.describe()),
            source,
        })?;
        // Distribution has no conditional tag write: check the tag right before replacing it,
        // and after, that nothing else replaced it meanwhile (the next round re-reads).
        let before = repo.manifest_digest(tag).await?;
        if before != current.as_ref().map(|c| c.digest) {
            continue;
        }
        repo.put_manifest(tag, media_type, Bytes::from(bytes)).await?;
        wrote = true;
    }
    Err(RegistryError::IndexContention {
        url: format!("{}:{tag}", repo.describe()),
        attempts: ROUNDS,
    })
}

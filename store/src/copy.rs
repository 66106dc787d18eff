//! Copying an image between stores (bucket to bucket, or through a local folder for an
//! air-gapped transfer): its blobs, everything that refers to it under `referrers/`, then its
//! tag. Only what the target lacks is sent; every byte is verified on the way, every write is
//! create-only, and the tag is set last so it never points at an incomplete image.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kiln_oci::{media_type, Descriptor, Digest};
use serde::Serialize;

use crate::blob::MULTIPART_THRESHOLD;
use crate::error::{one_line, Result, StoreError};
use crate::reference::Reference;
use crate::walk::image_blobs;
use crate::{key, Store};

/// Blobs copied at once. Their parts share the target's part slots
/// ([`crate::blob::PARTS_IN_FLIGHT`]); each holds one more part while it fills it.
const COPY_CONCURRENCY: usize = 4;

/// What a copy did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyReport {
    /// The copied image's root digest.
    pub digest: Digest,
    /// Blobs making up the image and its referrers.
    pub blobs: u64,
    /// Blobs sent to the target.
    pub copied: u64,
    /// Blobs the target already had.
    pub present: u64,
    /// Bytes sent.
    pub bytes_copied: u64,
    /// Referrer entries (signatures, attestations, ...) copied along.
    pub referrers: u64,
    /// The tag set in the target, for a tagged reference.
    pub tagged: Option<String>,
}

/// Copies the image `reference` names from `from` into `to`.
pub async fn copy_image(from: &Store, to: &Store, reference: &Reference) -> Result<CopyReport> {
    let root = from.resolve(reference).await?;
    let mut blobs = image_blobs(from, &root).await?;
    let referrers = collect_referrers(from, &mut blobs).await?;

    let digests: Vec<Digest> = blobs.iter().map(|d| d.digest).collect();
    // Leased before they are looked for, so a gc of the target keeps what this copy finds
    // there or sends until the tag references it.
    let lease = to.lease().await?;
    if let Reference::Tagged { name, tag } = reference {
        // What the target's tag holds needs no lease record: an unchanged push writes nothing.
        lease.keep_tagged(name, tag).await?;
    }
    lease.add(&digests).await?;
    let have = to.has_blobs(&digests).await?;
    let missing: Vec<&Descriptor> =
        blobs.iter().zip(&have).filter(|(_, have)| !**have).map(|(d, _)| d).collect();
    // After a failure no new blob starts, but those in flight finish (or abort) their
    // uploads: dropping them midway would leave their upload records behind.
    let failed = AtomicBool::new(false);
    let results: Vec<Result<Option<(bool, u64)>>> = futures::stream::iter(missing)
        .map(|desc| {
            let failed = &failed;
            async move {
                if failed.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let sent = copy_blob(from, to, desc).await;
                failed.fetch_or(sent.is_err(), Ordering::Relaxed);
                sent.map(Some)
            }
        })
        .buffer_unordered(COPY_CONCURRENCY)
        .collect()
        .await;
    let sent: Vec<(bool, u64)> = match results.into_iter().collect::<Result<Vec<_>>>() {
        Ok(sent) => sent.into_iter().flatten().collect(),
        Err(e) => {
            if let Err(release) = lease.release().await {
                log::warn!("cannot release the copy's lease: {}", one_line(&release));
            }
            return Err(e);
        }
    };

    let mut report = CopyReport {
        digest: root.digest,
        blobs: blobs.len() as u64,
        copied: 0,
        present: have.iter().filter(|h| **h).count() as u64,
        bytes_copied: 0,
        referrers: referrers.len() as u64,
        tagged: None,
    };
    for (uploaded, size) in sent {
        if uploaded {
            report.copied += 1;
            report.bytes_copied += size;
        } else {
            // Another writer published it meanwhile.
            report.present += 1;
        }
    }
    for entry in &referrers {
        if to.read_object(entry).await?.is_some() {
            continue;
        }
        let bytes = from
            .read_object(entry)
            .await?
            .ok_or_else(|| StoreError::NotFound { key: entry.to_string() })?;
        to.create(entry, bytes).await?;
    }
    let tagged = match reference {
        Reference::Tagged { name, tag } => {
            let tagged = lease.before_tagging(name, tag, &root).await?;
            tagged.then(|| format!("{name}:{tag}"))
        }
        Reference::Digest(_) | Reference::Pinned { .. } => None,
    };
    if tagged.is_some() {
        // The target's tag already points at the image and keeps it whole.
        report.tagged = tagged;
        lease.release().await?;
        return Ok(report);
    }
    // A gc of the target that read the leases before this copy's lease may have deleted a
    // blob found there: once the sweeps in progress are over no gc can take a leased blob,
    // so what is gone then is sent again (see crate::sweep).
    let sweeps = to.sweeps_in_progress().await?;
    to.wait_for_sweeps(&sweeps).await?;
    let there = to.has_blobs(&digests).await?;
    for desc in blobs.iter().zip(there).filter(|(_, there)| !there).map(|(d, _)| d) {
        let (uploaded, size) = copy_blob(from, to, desc).await?;
        if uploaded {
            report.copied += 1;
            report.present = report.present.saturating_sub(1);
            report.bytes_copied += size;
        }
    }
    if let Reference::Tagged { name, tag } = reference {
        to.set_ref(name, tag, &root).await?;
        report.tagged = Some(format!("{name}:{tag}"));
    }
    lease.release().await?;
    Ok(report)
}

/// Adds to `blobs` every artifact under `referrers/<hex>/` of any index or manifest among
/// them (and, in turn, of those artifacts), and returns the referrer keys found.
async fn collect_referrers(
    from: &Store,
    blobs: &mut Vec<Descriptor>,
) -> Result<Vec<object_store::path::Path>> {
    let mut keys = Vec::new();
    let mut seen: HashSet<Digest> = blobs.iter().map(|d| d.digest).collect();
    let mut subjects: Vec<Digest> = blobs
        .iter()
        .filter(|d| {
            matches!(d.media_type.as_str(), media_type::IMAGE_INDEX | media_type::IMAGE_MANIFEST)
        })
        .map(|d| d.digest)
        .collect();
    while let Some(subject) = subjects.pop() {
        for entry in from.list_under(key::referrers(&subject).as_ref()).await? {
            let Some(artifact) =
                entry.key.parts().last().and_then(|p| Digest::from_hex(p.as_ref()).ok())
            else {
                continue;
            };
            if seen.contains(&artifact) {
                keys.push(entry.key);
                continue;
            }
            // An entry holds the artifact's descriptor; if it does not, describe the blob.
            let held = from.read_object(&entry.key).await?;
            let desc = match held.and_then(|b| serde_json::from_slice::<Descriptor>(&b).ok()) {
                Some(desc) if desc.digest == artifact => desc,
                _ => from.resolve(&Reference::Digest(artifact)).await?,
            };
            keys.push(entry.key);
            for blob in image_blobs(from, &desc).await? {
                if seen.insert(blob.digest) {
                    if matches!(
                        blob.media_type.as_str(),
                        media_type::IMAGE_INDEX | media_type::IMAGE_MANIFEST
                    ) {
                        subjects.push(blob.digest);
                    }
                    blobs.push(blob);
                }
            }
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Copies one blob, verified: small ones whole, large ones streamed through a staged
/// upload in bounded memory. Returns whether it was written, and its size.
async fn copy_blob(from: &Store, to: &Store, desc: &Descriptor) -> Result<(bool, u64)> {
    if desc.size < MULTIPART_THRESHOLD {
        // Read and checked against the descriptor once; hashing again to name it would only
        // find the same digest.
        let bytes = from.get_described(desc).await?;
        let size = bytes.len() as u64;
        to.lease_blob(&desc.digest).await?;
        return Ok((to.create(&key::blob(&desc.digest), bytes).await?, size));
    }
    let chunks = from.blob_chunks(&desc.digest).await?;
    let source = key::blob(&desc.digest).to_string();
    let mismatch = |found, found_size| {
        if found == desc.digest {
            // Right content, wrong descriptor size: the referencing manifest is wrong.
            StoreError::SizeMismatch { key: source, expected: desc.size, found: found_size }
        } else {
            StoreError::DigestMismatch { key: source, expected: desc.digest, found }
        }
    };
    let uploaded = to.put_blob_staged(chunks, &desc.digest, desc.size, mismatch).await?;
    Ok((uploaded, desc.size))
}

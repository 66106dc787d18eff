//! The image itself: manifests, configs and layers re-hashed, diff_ids recomputed.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use kiln_oci::{Descriptor, Digest, ImageConfig, ImageManifest};
use kiln_store::{one_line, Store};

use super::{blob, json, Report};
use crate::{contents, AttestError};

/// Re-hashes a manifest, its config and layers and recomputes every diff_id; returns the
/// image's regular files (`path → sha256`) when every layer could be read.
pub(super) async fn check_manifest(
    store: &Store,
    report: &mut Report,
    desc: &Descriptor,
) -> Result<Option<BTreeMap<String, Digest>>, AttestError> {
    let Some(bytes) = blob(store, report, "manifest", desc).await? else { return Ok(None) };
    let Some(manifest) =
        json::<ImageManifest>(report, "blob", &format!("manifest {}", desc.digest), &bytes)
    else {
        return Ok(None);
    };
    let config_digest = manifest.config.digest;
    let Some(bytes) = blob(store, report, "config", &manifest.config).await? else {
        return Ok(None);
    };
    let Some(config) =
        json::<ImageConfig>(report, "blob", &format!("config {config_digest}"), &bytes)
    else {
        return Ok(None);
    };
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        report.fail(
            "diff_id",
            format!(
                "config {config_digest} lists {} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        );
    }
    for layer in &manifest.layers {
        report.read.insert(layer.digest);
    }
    // Layers are read side by side; their findings are reported in layer order.
    let reads: Vec<_> = futures::stream::iter(&manifest.layers)
        .map(|layer| crate::stored_layer::read(store, layer))
        .buffered(crate::publish::layers_at_once())
        .collect()
        .await;
    let mut layers = Vec::new();
    let mut whole = true;
    for (i, (layer, read)) in manifest.layers.iter().zip(reads).enumerate() {
        let read = match read {
            Ok(read) => read,
            Err(AttestError::Store(e)) if e.is_integrity_failure() => {
                report.fail("blob", format!("layer {i} {}: {}", layer.digest, one_line(&e)));
                whole = false;
                continue;
            }
            Err(AttestError::Contents(e)) => {
                report.fail("diff_id", format!("layer {i}: {}", one_line(&e)));
                whole = false;
                continue;
            }
            Err(e) => return Err(e),
        };
        match config.rootfs.diff_ids.get(i) {
            Some(want) if *want == read.diff_id => {
                report.ok(
                    "diff_id",
                    format!("layer {i} {} decompresses to diff_id {want}", layer.digest),
                );
            }
            Some(want) => report.fail(
                "diff_id",
                format!(
                "layer {i} {} decompresses to {}, but config {config_digest} says diff_id {want}",
                layer.digest, read.diff_id
            ),
            ),
            None => {}
        }
        layers.push(read);
    }
    report.ok("blob", format!("manifest {} and config {config_digest} re-hashed", desc.digest));
    Ok(whole.then(|| contents::image_files(&layers)))
}

//! `kiln export`: an image as an OCI image layout folder or archive.

use std::path::Path;

use anyhow::Context as _;
use kiln_builder::disk::artifacts::DISK_ARTIFACT;
use kiln_oci::{media_type, Descriptor, ImageIndex, ImageManifest};
use kiln_store::layout;
use kiln_store::Reference;
use serde_json::json;

use super::Ctx;
use crate::cli::ExportArgs;

pub fn run(ctx: &Ctx, args: &ExportArgs) -> anyhow::Result<()> {
    let (reference, root) = super::inspect::resolve(ctx, &args.reference)?;
    if let Some(dir) = &args.disk {
        return export_disks(ctx, &reference, &root, args.platform.as_deref(), dir);
    }
    let tag = match (&args.tag, &reference) {
        (Some(t), _) => {
            t.parse::<kiln_store::Tag>().with_context(|| format!("--tag {t:?}"))?.to_string()
        }
        (None, Reference::Tagged { tag, .. }) => tag.to_string(),
        (None, _) => {
            let version = root.annotations.get("org.opencontainers.image.version").cloned();
            let from_index = ctx
                .runtime
                .block_on(ctx.store.get_described_json::<kiln_oci::ImageIndex>(&root))
                .ok()
                .and_then(|i| i.annotations.get("org.opencontainers.image.version").cloned());
            version.or(from_index).unwrap_or_else(|| "latest".to_string())
        }
    };
    let (kind, target, report) = if let Some(dir) = &args.oci_layout {
        let r = ctx
            .runtime
            .block_on(layout::export_layout(&ctx.store, &root, &tag, dir))
            .with_context(|| format!("exporting {reference} to {}", dir.display()))?;
        ("oci-layout", dir, r)
    } else if let Some(file) = &args.oci_archive {
        let r = ctx
            .runtime
            .block_on(layout::export_archive(&ctx.store, &root, &tag, file))
            .with_context(|| format!("exporting {reference} to {}", file.display()))?;
        ("oci-archive", file, r)
    } else {
        anyhow::bail!("give --oci-layout DIR or --oci-archive FILE");
    };
    if ctx.json {
        ctx.print_json(&json!({
            "reference": reference.to_string(),
            "digest": root.digest.to_string(),
            "format": kind,
            "path": target.display().to_string(),
            "tag": tag,
            "blobsWritten": report.blobs,
            "bytesWritten": report.bytes,
            "referrersListed": report.referrers,
        }))?;
    } else {
        ctx.say(format!("exported {reference} to {kind}:{}:{tag}", target.display()));
    }
    Ok(())
}

/// Writes the files of the disk artifact attached to the image (or, for an index, to its
/// manifest for `platform`) into `dir`.
fn export_disks(
    ctx: &Ctx,
    reference: &Reference,
    root: &Descriptor,
    platform: Option<&str>,
    dir: &Path,
) -> anyhow::Result<()> {
    let store = &ctx.store;
    // (platform, disk artifact) for every manifest with disks attached.
    let mut manifests = vec![(None, root.digest)];
    if root.media_type == media_type::IMAGE_INDEX {
        let index: ImageIndex = ctx.runtime.block_on(store.get_described_json(root))?;
        manifests.extend(index.manifests.iter().map(|m| (m.platform.clone(), m.digest)));
    }
    let mut disks = Vec::new();
    for (p, subject) in manifests {
        for r in ctx.runtime.block_on(store.referrers(&subject))? {
            if r.artifact_type.as_deref() == Some(DISK_ARTIFACT) {
                disks.push((p.as_ref().map(|p| p.to_string()), r));
            }
        }
    }
    if disks.is_empty() {
        anyhow::bail!("{reference} has no disk images: build it from a recipe with a [disk] table");
    }
    let names = || disks.iter().filter_map(|(p, _)| p.clone()).collect::<Vec<_>>().join(", ");
    let chosen = match platform {
        Some(wanted) => {
            let found = disks.iter().find(|(p, _)| p.as_deref() == Some(wanted));
            found.with_context(|| {
                format!("{reference} has no disk images for {wanted}; it has them for {}", names())
            })?
        }
        None if disks.len() == 1 => &disks[0],
        None => {
            anyhow::bail!("{reference} has disk images for {}: choose one with --platform", names())
        }
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let artifact: ImageManifest = ctx.runtime.block_on(store.get_described_json(&chosen.1))?;
    for layer in &artifact.layers {
        let title = layer.annotations.get("org.opencontainers.image.title");
        // Only plain file names: a title never chooses where outside `dir` to write.
        let name = title.filter(|t| {
            !t.is_empty() && !t.contains('/') && t.as_str() != "." && t.as_str() != ".."
        });
        let name = name.cloned().unwrap_or_else(|| layer.digest.hex());
        let target = dir.join(&name);
        let size = ctx
            .runtime
            .block_on(store.copy_described_to(layer, &target))
            .with_context(|| format!("writing {}", target.display()))?;
        written.push(json!({
            "path": target.display().to_string(),
            "digest": layer.digest.to_string(),
            "mediaType": layer.media_type,
            "size": size,
        }));
    }
    if ctx.json {
        ctx.print_json(&json!({ "reference": reference.to_string(), "disks": written }))?;
    } else {
        for w in &written {
            ctx.say(format!(
                "wrote {} {}",
                w["path"].as_str().unwrap_or_default(),
                w["digest"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

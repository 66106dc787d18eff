//! `kiln export`: an image as an OCI image layout folder or archive.

use std::path::Path;

use anyhow::Context as _;
use kiln_builder::build::disks::DISK_ARTIFACT;
use kiln_oci::{media_type, Descriptor, ImageIndex, ImageManifest};
use kiln_store::layout;
use kiln_store::Reference;

use super::Ctx;
use crate::cli::ExportArgs;
use crate::report::{self, ExportFormat};

pub fn run(ctx: &Ctx, args: &ExportArgs) -> anyhow::Result<()> {
    let (reference, root) = super::inspect::resolve(ctx, &args.reference)?;
    if let Some(dir) = &args.disk {
        return export_disks(ctx, &reference, &root, args.platform.as_deref(), dir);
    }
    let tag: kiln_store::Tag = match (&args.tag, &reference) {
        (Some(t), _) => t.parse().with_context(|| format!("--tag {t:?}"))?,
        (None, Reference::Tagged { tag, .. }) => tag.clone(),
        (None, _) => {
            let version = root.annotations.get("org.opencontainers.image.version").cloned();
            let from_index = ctx
                .runtime
                .block_on(ctx.store.get_described_json::<kiln_oci::ImageIndex>(&root))
                .ok()
                .and_then(|i| i.annotations.get("org.opencontainers.image.version").cloned());
            let version = version.or(from_index).unwrap_or_else(|| "latest".to_string());
            version.parse().with_context(|| {
                format!("the image's version {version:?} is not a tag; give --tag TAG")
            })?
        }
    };
    let (kind, target, report) = if let Some(dir) = &args.oci_layout {
        let r = ctx
            .runtime
            .block_on(layout::export_layout(&ctx.store, &root, tag.as_str(), dir))
            .with_context(|| format!("exporting {reference} to {}", dir.display()))?;
        (ExportFormat::Layout, dir, r)
    } else if let Some(file) = &args.oci_archive {
        let r = ctx
            .runtime
            .block_on(layout::export_archive(&ctx.store, &root, tag.as_str(), file))
            .with_context(|| format!("exporting {reference} to {}", file.display()))?;
        (ExportFormat::Archive, file, r)
    } else {
        anyhow::bail!("give --oci-layout DIR or --oci-archive FILE");
    };
    if ctx.json {
        ctx.print_json(&report::Export {
            reference,
            digest: root.digest,
            format: kind,
            path: target.clone(),
            tag,
            blobs_written: report.blobs,
            bytes_written: report.bytes,
            referrers_listed: report.referrers,
        })?;
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
        written.push(report::ExportedDisk {
            path: target,
            digest: layer.digest,
            media_type: layer.media_type.clone(),
            size,
        });
    }
    if ctx.json {
        ctx.print_json(&report::DiskExport { reference: reference.clone(), disks: written })?;
    } else {
        for w in &written {
            ctx.say(format!("wrote {} {}", w.path.display(), w.digest));
        }
    }
    Ok(())
}

//! `kiln export`: an image as an OCI image layout folder or archive.

use std::path::Path;

use anyhow::Context as _;
use kiln_oci::Descriptor;
use kiln_store::Reference;
use kiln_store::{disk_export, layout};

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
    let disks = ctx
        .runtime
        .block_on(disk_export::export_disks(&ctx.store, root, platform, dir))
        .with_context(|| format!("exporting the disks of {reference}"))?;
    if ctx.json {
        ctx.print_json(&report::DiskExport { reference: reference.clone(), disks })?;
    } else {
        for w in &disks {
            ctx.say(format!("wrote {} {}", w.path.display(), w.digest));
        }
    }
    Ok(())
}

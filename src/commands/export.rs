//! `kiln export`: an image as an OCI image layout folder or archive.

use anyhow::Context as _;
use kiln_store::layout;
use kiln_store::Reference;
use serde_json::json;

use super::Ctx;
use crate::cli::ExportArgs;

pub fn run(ctx: &Ctx, args: &ExportArgs) -> anyhow::Result<()> {
    let (reference, root) = super::inspect::resolve(ctx, &args.reference)?;
    let tag = match (&args.tag, &reference) {
        (Some(t), _) => {
            t.parse::<kiln_store::Tag>().with_context(|| format!("--tag {t:?}"))?.to_string()
        }
        (None, Reference::Tagged { tag, .. }) => tag.to_string(),
        (None, _) => {
            let version = root.annotations.get("org.opencontainers.image.version").cloned();
            let from_index = ctx
                .runtime
                .block_on(ctx.store.get_json::<kiln_oci::ImageIndex>(&root.digest))
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
        }))?;
    } else {
        ctx.say(format!("exported {reference} to {kind}:{}:{tag}", target.display()));
    }
    Ok(())
}

//! `kiln inspect`: what an image is made of.

use anyhow::Context as _;
use kiln_oci::{media_type, Descriptor, ImageConfig, ImageIndex, ImageManifest};
use kiln_store::Reference;

use super::Ctx;
use crate::cli::InspectArgs;

/// Parses and resolves a reference to the descriptor it names.
pub fn resolve(ctx: &Ctx, raw: &str) -> anyhow::Result<(Reference, Descriptor)> {
    let reference: Reference = raw.parse().with_context(|| format!("reading reference {raw:?}"))?;
    let desc = ctx
        .runtime
        .block_on(ctx.store.resolve(&reference))
        .with_context(|| format!("resolving {reference} in {}", ctx.store.describe()))?;
    Ok((reference, desc))
}

pub fn run(ctx: &Ctx, args: &InspectArgs) -> anyhow::Result<()> {
    let (reference, root) = resolve(ctx, &args.reference)?;
    let store = &ctx.store;
    let mut manifests: Vec<Descriptor> = Vec::new();
    let mut index_doc = None;
    match root.media_type.as_str() {
        media_type::IMAGE_INDEX => {
            let index: ImageIndex = ctx.runtime.block_on(store.get_described_json(&root))?;
            manifests.extend(index.manifests.iter().cloned());
            index_doc = Some(index);
        }
        media_type::IMAGE_MANIFEST => manifests.push(root.clone()),
        other => anyhow::bail!("{reference} is a {other}, not an image"),
    }
    let mut per_platform = Vec::new();
    for m in &manifests {
        let manifest: ImageManifest = ctx.runtime.block_on(store.get_described_json(m))?;
        let config: ImageConfig =
            ctx.runtime.block_on(store.get_described_json(&manifest.config))?;
        per_platform.push((m.clone(), manifest, config));
    }

    let mut subjects = vec![root.digest];
    subjects.extend(manifests.iter().map(|m| m.digest));
    let mut referrers = Vec::new();
    for subject in subjects {
        for r in ctx.runtime.block_on(ctx.store.referrers(&subject))? {
            referrers.push((subject, r));
        }
    }

    if ctx.json {
        return ctx.print_json(&crate::report::Inspect {
            reference,
            descriptor: root,
            index: index_doc,
            manifests: per_platform
                .into_iter()
                .map(|(descriptor, manifest, config)| crate::report::InspectedManifest {
                    descriptor,
                    manifest,
                    config,
                })
                .collect(),
            referrers: referrers
                .into_iter()
                .map(|(subject, descriptor)| crate::report::Referrer { subject, descriptor })
                .collect(),
        });
    }
    ctx.say(format!("{reference}\n  digest     {}\n  mediaType  {}", root.digest, root.media_type));
    for (d, manifest, config) in &per_platform {
        let platform = d
            .platform
            .as_ref()
            .map_or_else(|| format!("{}/{}", config.os, config.architecture), |p| p.to_string());
        ctx.say(format!("  {platform}  manifest {}", d.digest));
        ctx.say(format!(
            "    config {}  created {}",
            manifest.config.digest,
            config.created.as_deref().unwrap_or("-")
        ));
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            ctx.say(format!(
                "    layer  {}  {} bytes  diff_id {}",
                layer.digest, layer.size, diff_id
            ));
        }
        let rc = &config.config;
        if !rc.entrypoint.is_empty() {
            ctx.say(format!("    entrypoint {:?}", rc.entrypoint));
        }
        if !rc.cmd.is_empty() {
            ctx.say(format!("    cmd        {:?}", rc.cmd));
        }
    }
    for (subject, r) in &referrers {
        let kind = match r.artifact_type.as_deref() {
            Some(kiln_attest::artifact::SIGNATURE_ARTIFACT) => "signature",
            Some(kiln_attest::artifact::SBOM_ARTIFACT) => "sbom",
            Some(kiln_attest::artifact::ATTESTATION_ARTIFACT) => "provenance",
            Some(kiln_oci::disk_artifact::ARTIFACT_TYPE) => "disk",
            Some(other) => other,
            None => "artifact",
        };
        let key = r
            .annotations
            .get(kiln_attest::artifact::KEY_ID_ANNOTATION)
            .map(|k| format!("  key {k}"))
            .unwrap_or_default();
        let root_hash = r
            .annotations
            .get(kiln_oci::disk_artifact::ROOT_HASH_ANNOTATION)
            .map(|h| format!("  verity root hash {h}"))
            .unwrap_or_default();
        ctx.say(format!("  referrer {kind} {}  of {subject}{key}{root_hash}", r.digest));
    }
    Ok(())
}

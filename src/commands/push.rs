//! `kiln push`: an image and its referrers from the store to a registry.

use std::sync::Arc;

use anyhow::Context as _;
use kiln_attest::PrivateKey;
use kiln_registry::{Client, PushReport, RegistryRef, Repository};

use super::Ctx;
use crate::cli::PushArgs;

pub fn run(ctx: &Ctx, args: &PushArgs) -> anyhow::Result<()> {
    let (reference, root) = super::inspect::resolve(ctx, &args.reference)?;
    let destination: RegistryRef = args.destination.parse()?;
    if destination.digest.is_some() {
        anyhow::bail!(
            "push destination {destination} names a digest; give HOST[:PORT]/REPO[:TAG] (the \
             digest is the image's own)"
        );
    }
    let tag = destination.tag.clone().or_else(|| match &reference {
        kiln_store::Reference::Tagged { tag, .. } => Some(tag.clone()),
        _ => None,
    });
    if let Some(key) = &args.sign {
        let key = PrivateKey::read(key)?;
        let name = destination.repository_name();
        ctx.runtime
            .block_on(kiln_attest::publish::sign_for_repository(&ctx.store, &root, &name, &key))
            .with_context(|| format!("signing {reference} for {name}"))?;
    }
    let client = Client::new(&destination.host, &args.registry.options())?;
    let repo = Repository::new(Arc::new(client), destination.repository.clone());
    let report = ctx
        .runtime
        .block_on(kiln_registry::push(&ctx.store, &root, &repo, tag.as_ref()))
        .with_context(|| format!("pushing {reference} to {}", repo.describe()))?;
    if ctx.json {
        return ctx.print_json(&report);
    }
    ctx.say(format!("pushed {reference} ({})", text(&report)));
    Ok(())
}

/// A push report as its human line says it (after "pushed REF "); `kiln copy` to a registry
/// says the same.
pub fn text(report: &PushReport) -> String {
    format!(
        "{} to {}: {} of {} blobs sent ({} bytes, {} mounted), {} manifests written, {} referrers",
        report.digest,
        report.destination,
        report.blobs_uploaded,
        report.blobs,
        report.bytes_uploaded,
        report.blobs_mounted,
        report.manifests_uploaded,
        report.referrers,
    )
}

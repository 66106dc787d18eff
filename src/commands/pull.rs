//! `kiln pull`: an image by digest and its referrers from a registry into the store.

use std::sync::Arc;

use anyhow::Context as _;
use kiln_registry::{Client, RegistryError, RegistryRef, Repository};
use kiln_store::Reference;

use super::Ctx;
use crate::cli::PullArgs;

pub fn run(ctx: &Ctx, args: &PullArgs) -> anyhow::Result<()> {
    let source: RegistryRef = args.source.parse()?;
    let digest = source
        .digest
        .ok_or_else(|| RegistryError::NotByDigest { reference: source.to_string() })?;
    let tag = match &args.tag {
        None => None,
        Some(text) => match text.parse::<Reference>() {
            Ok(Reference::Tagged { name, tag }) => Some((name, tag)),
            _ => anyhow::bail!("--tag {text:?} is not NAME:TAG"),
        },
    };
    let client = Client::new(&source.host, &args.registry.options())?;
    let repo = Repository::new(Arc::new(client), source.repository.clone());
    let report = ctx
        .runtime
        .block_on(kiln_registry::pull(
            &ctx.store,
            &repo,
            digest,
            tag.as_ref().map(|(name, tag)| (name, tag)),
        ))
        .with_context(|| format!("pulling {source} into {}", ctx.store.describe()))?;
    if ctx.json {
        return ctx.print_json(&report);
    }
    ctx.say(format!(
        "pulled {}: {} of {} blobs fetched ({} bytes), {} manifests, {} referrers{}",
        report.source,
        report.blobs_fetched,
        report.blobs,
        report.bytes_fetched,
        report.manifests,
        report.referrers,
        report.tagged.as_deref().map(|t| format!(", tagged {t}")).unwrap_or_default(),
    ));
    Ok(())
}

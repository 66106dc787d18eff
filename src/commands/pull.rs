//! `kiln pull`: an image by digest and its referrers from a registry into the store.

use std::sync::Arc;

use anyhow::Context as _;
use kiln_builder::recipe::{BaseSource, Recipe};
use kiln_registry::{Client, PullReport, RegistryError, RegistryRef, Repository};
use kiln_store::{Reference, Store};

use super::Ctx;
use crate::cli::{PullArgs, RegistryArgs};

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
    ctx.say(format!("pulled {}", text(&report)));
    Ok(())
}

/// A pull report as its human line says it (after "pulled "); `kiln copy` from a registry
/// says the same.
pub fn text(report: &PullReport) -> String {
    format!(
        "{}: {} of {} blobs fetched ({} bytes), {} manifests, {} referrers{}",
        report.source,
        report.blobs_fetched,
        report.blobs,
        report.bytes_fetched,
        report.manifests,
        report.referrers,
        report.tagged.as_deref().map(|t| format!(", tagged {t}")).unwrap_or_default(),
    )
}

/// Brings a recipe's registry base into `store` unless it is there: pulled as `kiln pull`
/// does, every blob verified before it is kept; taken from the command's own store when
/// `store` is another (a rebuild's). An `oci-layout` base is read by the build itself.
pub fn base(
    ctx: &Ctx,
    store: &Store,
    recipe: &Recipe,
    registry: &RegistryArgs,
) -> anyhow::Result<()> {
    let Some(spec) = &recipe.base else { return Ok(()) };
    let BaseSource::Registry { host, repository } = &spec.source else { return Ok(()) };
    let has = |store: &Store| ctx.runtime.block_on(store.has_blob(&spec.digest));
    if has(store)? {
        return Ok(());
    }
    if !std::ptr::eq(store, &ctx.store) && has(&ctx.store)? {
        ctx.runtime
            .block_on(kiln_store::copy::copy_image(
                &ctx.store,
                store,
                &Reference::Digest(spec.digest),
            ))
            .with_context(|| format!("copying the base {spec} from {}", ctx.store.describe()))?;
        return Ok(());
    }
    let client = Client::new(host, &registry.options())?;
    let repo = Repository::new(Arc::new(client), repository.clone());
    ctx.runtime
        .block_on(kiln_registry::pull(store, &repo, spec.digest, None))
        .with_context(|| format!("pulling the base {spec} into {}", store.describe()))?;
    Ok(())
}

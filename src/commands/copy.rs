//! `kiln copy`: an image and its referrers from one store or registry to another.

use std::sync::Arc;

use anyhow::Context as _;
use kiln_attest::PrivateKey;
use kiln_registry::{Client, RegistryError, RegistryRef, Repository};
use kiln_store::{Location, Reference, Store};

use super::Session;
use crate::cli::{Cli, CopyArgs};

/// Opens `location`, giving it the `--store-option`s only if it is a bucket, so that one
/// command can copy between a bucket and a local folder.
pub fn open(location: &str, options: &[(String, String)]) -> anyhow::Result<Store> {
    let bucket = matches!(Location::parse(location), Ok(Location::Bucket(_)));
    let options = if bucket { options } else { &[] };
    Store::open_with_options(location, options).with_context(|| format!("opening store {location}"))
}

/// One side of a copy.
enum Side {
    Store(Store),
    Registry(RegistryRef, Repository),
}

fn side(location: &str, cli: &Cli, args: &CopyArgs) -> anyhow::Result<Side> {
    if location.starts_with("docker://") {
        let reference: RegistryRef = location.parse()?;
        let client = Client::new(&reference.host, &args.registry.options())?;
        let repo = Repository::new(Arc::new(client), reference.repository.clone());
        return Ok(Side::Registry(reference, repo));
    }
    Ok(Side::Store(open(location, &super::store_options(cli)?)?))
}

pub fn run(ctx: &Session, cli: &Cli, args: &CopyArgs) -> anyhow::Result<()> {
    let reference: Reference = args
        .reference
        .parse()
        .with_context(|| format!("reading reference {:?}", args.reference))?;
    let from = side(&args.from, cli, args)?;
    let to = side(&args.to, cli, args)?;
    let key = args.sign.as_deref().map(PrivateKey::read).transpose()?;
    if key.is_some() && !matches!(to, Side::Registry(..)) {
        anyhow::bail!("--sign names the repository a copy lands in: it needs --to docker://...");
    }
    let from_registry_digest = || match &reference {
        Reference::Digest(digest) => Ok(*digest),
        _ => Err(RegistryError::NotByDigest { reference: format!("{} {reference}", args.from) }),
    };
    let context = || format!("copying {reference} from {} to {}", args.from, args.to);
    match (&from, &to) {
        (Side::Store(from), Side::Store(to)) => store_to_store(ctx, from, to, &reference),
        (Side::Store(store), Side::Registry(dest, repo)) => {
            let root = ctx.runtime.block_on(store.resolve(&reference)).with_context(context)?;
            if let Some(key) = &key {
                ctx.runtime
                    .block_on(kiln_attest::publish::sign_for_repository(
                        store,
                        &root,
                        &dest.repository_name(),
                        key,
                    ))
                    .with_context(context)?;
            }
            let tag = dest.tag.clone().or_else(|| match &reference {
                Reference::Tagged { tag, .. } => Some(tag.clone()),
                _ => None,
            });
            let report = ctx
                .runtime
                .block_on(kiln_registry::push(store, &root, repo, tag.as_ref()))
                .with_context(context)?;
            print(ctx, &report, format!("pushed {reference} ({})", super::push::text(&report)))
        }
        (Side::Registry(_, repo), Side::Store(store)) => {
            let digest = from_registry_digest()?;
            let report = ctx
                .runtime
                .block_on(kiln_registry::pull(store, repo, digest, None))
                .with_context(context)?;
            print(ctx, &report, format!("pulled {}", super::pull::text(&report)))
        }
        (Side::Registry(_, from_repo), Side::Registry(dest, to_repo)) => {
            let digest = from_registry_digest()?;
            let report = ctx
                .runtime
                .block_on(kiln_registry::copy::between_registries(
                    from_repo,
                    digest,
                    to_repo,
                    dest.tag.as_ref(),
                    key.as_ref(),
                ))
                .with_context(context)?;
            let text = format!(
                "copied {digest}: pulled {}; pushed {}",
                super::pull::text(&report.pulled),
                super::push::text(&report.pushed)
            );
            print(ctx, &report, text)
        }
    }
}

/// `report` as JSON with `--json`, else `text`.
fn print<T: serde::Serialize>(ctx: &Session, report: &T, text: String) -> anyhow::Result<()> {
    if ctx.json {
        return ctx.print_json(report);
    }
    ctx.say(text);
    Ok(())
}

fn store_to_store(
    ctx: &Session,
    from: &Store,
    to: &Store,
    reference: &Reference,
) -> anyhow::Result<()> {
    let report =
        ctx.runtime.block_on(kiln_store::copy::copy_image(from, to, reference)).with_context(
            || format!("copying {reference} from {} to {}", from.describe(), to.describe()),
        )?;
    if ctx.json {
        ctx.print_json(&crate::report::Copy {
            from: from.describe(),
            to: to.describe(),
            report: &report,
        })?;
    } else {
        ctx.say(format!(
            "copied {reference} ({}) from {} to {}: {} blobs sent ({} bytes), {} already there, \
             {} referrers",
            report.digest,
            from.describe(),
            to.describe(),
            report.copied,
            report.bytes_copied,
            report.present,
            report.referrers,
        ));
    }
    Ok(())
}

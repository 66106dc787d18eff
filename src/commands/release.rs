//! `kiln release`: the release record of an image, stored beside it; its digest is the
//! release id.

use anyhow::Context as _;
use kiln_attest::{PrivateKey, PublicKey};

use super::Ctx;
use crate::cli::ReleaseArgs;

pub fn run(ctx: &Ctx, args: &ReleaseArgs) -> anyhow::Result<()> {
    let key = args.sign.as_deref().map(PrivateKey::read).transpose()?;
    let mut trusted = args
        .key
        .iter()
        .map(|p| PublicKey::read(p).context("reading a --key"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if trusted.is_empty() {
        match &key {
            Some(k) => trusted.push(k.public()),
            None => anyhow::bail!(
                "give the key that signed the image's provenance (--key PUB, or --sign KEY when \
                 that key also signs the release): the record takes the recipe, lock and epoch \
                 only from a provenance that verifies"
            ),
        }
    }
    let (reference, root) = super::inspect::resolve(ctx, &args.reference)?;
    let published = ctx
        .runtime
        .block_on(kiln_release::record::release(&ctx.store, &root, &trusted, key.as_ref()))
        .with_context(|| format!("releasing {reference}"))?;
    if ctx.json {
        return ctx.print_json(&published);
    }
    ctx.say(format!(
        "release {} of {} {} (image {})",
        published.release, published.name, published.version, published.image
    ));
    if let (Some(sig), Some(id)) = (published.signature, published.key_id) {
        ctx.say(format!("  signed with key {id}: signature {sig}"));
    }
    Ok(())
}

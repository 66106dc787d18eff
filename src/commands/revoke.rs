//! `kiln revoke`: a signed revocation that pins, promotions and verification honour.

use anyhow::Context as _;
use kiln_attest::PrivateKey;

use super::Ctx;
use crate::cli::RevokeArgs;

pub fn run(ctx: &Ctx, args: &RevokeArgs) -> anyhow::Result<()> {
    let key = PrivateKey::read(&args.key)?;
    let release = super::promote::release_digest(&args.release)?;
    let revocation = ctx
        .runtime
        .block_on(async {
            kiln_release::record::load(&ctx.store, &release).await?;
            kiln_release::revocation::revoke(&ctx.store, &release, &key, &args.reason).await
        })
        .with_context(|| format!("revoking {release}"))?;
    if ctx.json {
        return ctx.print_json(&revocation);
    }
    ctx.say(format!("revoked {release} with key {}: {}", revocation.actor, revocation.reason));
    Ok(())
}

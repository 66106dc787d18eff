//! `kiln revoke`: a signed entry of the revocation log that pins, promotions and verification
//! honour; only a revoker key of the policy may write one.

use anyhow::Context as _;
use kiln_attest::PrivateKey;
use kiln_release::policy::Policy;

use super::Ctx;
use crate::cli::RevokeArgs;

pub fn run(ctx: &Ctx, args: &RevokeArgs) -> anyhow::Result<()> {
    let key = PrivateKey::read(&args.key)?;
    let policy = Policy::load(&args.policy)?;
    let release = super::promote::release_digest(&args.release)?;
    let revoked = ctx
        .runtime
        .block_on(async {
            let loaded = kiln_release::record::load(&ctx.store, &release).await?;
            kiln_release::revocation::revoke(&ctx.store, &loaded, &key, &policy, &args.reason).await
        })
        .with_context(|| format!("revoking {release}"))?;
    if ctx.json {
        return ctx.print_json(&revoked);
    }
    ctx.say(format!(
        "revoked {release} with key {} (revocation log entry {}): {}",
        revoked.actor, revoked.seq, revoked.reason
    ));
    Ok(())
}

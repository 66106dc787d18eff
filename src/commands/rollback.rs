//! `kiln rollback`: a channel back to a release it held before, as a signed entry.

use anyhow::Context as _;
use kiln_attest::PrivateKey;
use kiln_release::channel::ChannelRef;
use kiln_release::policy::Policy;

use super::Ctx;
use crate::cli::RollbackArgs;

pub fn run(ctx: &Ctx, args: &RollbackArgs) -> anyhow::Result<()> {
    let key = PrivateKey::read(&args.key)?;
    let policy = Policy::load(&args.policy)?;
    let channel: ChannelRef = args.channel.parse()?;
    let release = super::promote::release_digest(&args.to)?;
    let report = ctx
        .runtime
        .block_on(kiln_release::promote::rollback(
            &ctx.store,
            &channel,
            release,
            &key,
            &policy,
            &args.reason,
        ))
        .with_context(|| format!("rolling {channel} back to {release}"))?;
    super::promote::print(ctx, &report)
}

//! `kiln approve`: a signed approval of a release for one channel, attached to the release.

use anyhow::Context as _;
use kiln_attest::PrivateKey;
use kiln_release::approval::{self, Approved};
use kiln_release::channel::ChannelName;

use super::Ctx;
use crate::cli::ApproveArgs;

pub fn run(ctx: &Ctx, args: &ApproveArgs) -> anyhow::Result<()> {
    let key = PrivateKey::read(&args.key)?;
    let channel: ChannelName = args.channel.parse()?;
    let release = super::promote::release_digest(&args.release)?;
    let approved = ctx
        .runtime
        .block_on(async {
            let loaded = kiln_release::record::load(&ctx.store, &release).await?;
            let artifact = approval::approve(&ctx.store, &loaded, &channel, &key).await?;
            Ok::<_, kiln_release::ReleaseError>(Approved {
                release,
                channel: channel.to_string(),
                approver: key.public().key_id()?.0,
                artifact: artifact.digest,
            })
        })
        .with_context(|| format!("approving {release} for {channel}"))?;
    if ctx.json {
        return ctx.print_json(&approved);
    }
    ctx.say(format!(
        "approved {release} for {channel} with key {}: approval {}",
        approved.approver, approved.artifact
    ));
    Ok(())
}

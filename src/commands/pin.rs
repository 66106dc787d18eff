//! `kiln pin`: a release, or a channel's head, rendered for a provisioner.

use anyhow::Context as _;
use kiln_attest::PublicKey;
use kiln_release::pin::{self, Target};

use super::Ctx;
use crate::cli::PinArgs;

pub fn run(ctx: &Ctx, args: &PinArgs) -> anyhow::Result<()> {
    let target: Target = args.target.parse()?;
    let keys = args
        .key
        .iter()
        .map(|p| PublicKey::read(p).context("reading a --key"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let loaded = ctx
        .runtime
        .block_on(pin::resolve(&ctx.store, &target, &keys))
        .with_context(|| format!("resolving {} in {}", args.target, ctx.store.describe()))?;
    let repository = args.repository.clone().unwrap_or_else(|| loaded.release.name.clone());
    let bytes = pin::render(args.format, &loaded, &repository, ctx.store.describe())?;
    let Some(path) = &args.output else {
        use std::io::Write as _;
        return std::io::stdout().write_all(&bytes).context("writing the pin to stdout");
    };
    pin::write_atomic(path, &bytes)?;
    let written = pin::Written {
        release: loaded.id,
        format: args.format.to_string(),
        path: path.display().to_string(),
        bytes: bytes.len() as u64,
    };
    if ctx.json {
        return ctx.print_json(&written);
    }
    ctx.say(format!("wrote {} pin of release {} to {}", written.format, loaded.id, written.path));
    Ok(())
}

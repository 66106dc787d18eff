//! `kiln promote`: a release into a channel, by policy, optionally into another store.

use anyhow::Context as _;
use kiln_attest::PrivateKey;
use kiln_oci::Digest;
use kiln_release::policy::Policy;
use kiln_release::promote::{self, Report, Request};

use super::Ctx;
use crate::cli::{Cli, PromoteArgs};

/// Parses a release id given on the command line.
pub fn release_digest(raw: &str) -> anyhow::Result<Digest> {
    raw.parse().with_context(|| format!("{raw:?} is not a release id (sha256:<64 hex>)"))
}

pub fn run(ctx: &Ctx, cli: &Cli, args: &PromoteArgs) -> anyhow::Result<()> {
    let key = PrivateKey::read(&args.key)?;
    let policy = Policy::load(&args.policy)?;
    let release = release_digest(&args.release)?;
    let to = match &args.to_store {
        Some(location) => Some(super::copy::open(location, &super::store_options(cli)?)?),
        None => None,
    };
    let request = Request {
        from: &ctx.store,
        to: to.as_ref(),
        release,
        channel: args.to.parse()?,
        key: &key,
        policy: &policy,
        reason: &args.reason,
    };
    let report = ctx
        .runtime
        .block_on(promote::promote(&request))
        .with_context(|| format!("promoting {release} into {}", args.to))?;
    print(ctx, &report)
}

/// Prints a promotion or rollback report, warning when the head hint was left behind.
pub fn print(ctx: &Ctx, report: &Report) -> anyhow::Result<()> {
    if let Some(why) = &report.hint_error {
        eprintln!(
            "warning: {} entry {} is written, but its HEAD hint could not be moved ({why}); \
             readers still find it",
            report.channel, report.seq
        );
    }
    if ctx.json {
        return ctx.print_json(report);
    }
    ctx.say(format!(
        "{} {} ({}) -> {} entry {} {} in {}",
        report.action,
        report.release,
        report.version,
        report.channel,
        report.seq,
        report.entry,
        report.store
    ));
    if let Some(c) = &report.copied {
        ctx.say(format!(
            "  copied {} blobs ({} bytes), {} already there, {} referrers",
            c.copied, c.bytes_copied, c.present, c.referrers
        ));
    }
    Ok(())
}

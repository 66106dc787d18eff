//! `kiln history`: a channel's entries, after verifying the chain and every signature.

use anyhow::Context as _;
use kiln_attest::PublicKey;
use kiln_release::channel::ChannelRef;
use kiln_release::policy::Policy;

use super::Ctx;
use crate::cli::HistoryArgs;

/// The keys trusted to sign entries of `channel`: `--key`s, else the policy's keys for it.
pub fn entry_keys(
    keys: &[std::path::PathBuf],
    policy: Option<&Policy>,
    channel: &ChannelRef,
) -> anyhow::Result<Vec<PublicKey>> {
    if !keys.is_empty() {
        return keys.iter().map(|p| PublicKey::read(p).context("reading a --key")).collect();
    }
    let Some(policy) = policy else {
        anyhow::bail!(
            "give the keys trusted to sign {channel}: --key PUB (repeatable) or --policy FILE"
        );
    };
    Ok(policy.channel(&channel.channel)?.keys.clone())
}

pub fn run(ctx: &Ctx, args: &HistoryArgs) -> anyhow::Result<()> {
    let channel: ChannelRef = args.channel.parse()?;
    let policy = args.policy.as_deref().map(Policy::load).transpose()?;
    let keys = entry_keys(&args.key, policy.as_ref(), &channel)?;
    let history = ctx
        .runtime
        .block_on(kiln_release::history::history(
            &ctx.store,
            &channel,
            &keys,
            args.seen.as_ref(),
            policy.as_ref(),
        ))
        .with_context(|| format!("reading the history of {channel}"))?;
    if ctx.json {
        return ctx.print_json(&history);
    }
    if history.entries.is_empty() {
        // Not "0 entries, verified": a mistyped channel or image name must not read as an
        // audit that passed.
        ctx.say(format!("{}: no entries (nothing was promoted into it)", history.channel));
        return Ok(());
    }
    ctx.say(format!(
        "{} ({} entries, chain and signatures verified)",
        history.channel,
        history.entries.len()
    ));
    for e in &history.entries {
        ctx.say(format!(
            "{:>5}  {}  {:<8}  {}  {:<12}  key {}  {}",
            e.seq, e.time, e.action, e.release, e.version, e.actor, e.reason
        ));
    }
    if let Some(cp) = &history.checkpoint {
        ctx.say(format!(
            "checkpoint {}@{} signed by key {} (keep it: --seen {}@{} detects a rewind past it)",
            cp.seq, cp.entry, cp.signer, cp.seq, cp.entry
        ));
    }
    for p in &history.policies {
        let entries = match (p.entries.first(), p.entries.last()) {
            (Some(a), Some(b)) if a != b => format!("entries {a}..{b} ({})", p.entries.len()),
            _ => format!("entry {}", p.entries.first().copied().unwrap_or_default()),
        };
        match p.current {
            Some(false) => ctx.say(format!(
                "note: {entries} were written under policy {}, not the policy file given ({}); each was re-checked against its own",
                p.digest,
                policy.as_ref().map_or_else(String::new, |c| c.digest.to_string())
            )),
            _ => ctx.say(format!("{entries} re-checked against policy {}", p.digest)),
        }
    }
    for n in &history.notes {
        ctx.say(format!("note: {n}"));
    }
    if history.hint_behind > 0 {
        ctx.say(format!(
            "note: the HEAD hint is {} entr{} behind (a writer stopped before moving it); the next append moves it",
            history.hint_behind,
            if history.hint_behind == 1 { "y" } else { "ies" }
        ));
    }
    Ok(())
}

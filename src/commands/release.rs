//! `kiln release`: the release record of an image, stored beside it; its digest is the
//! release id.

use anyhow::Context as _;
use kiln_attest::verify::{Policy, Status};
use kiln_attest::{PrivateKey, PublicKey};
use kiln_release::channel::ChannelRef;

use super::Ctx;
use crate::cli::{ReleaseArgs, VerifyArgs};

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

/// `kiln verify` of a release id (the hook of `kiln verify`): returns false, having done
/// nothing, when the reference is not a release and no `--channel` was asked for.
pub fn verify(ctx: &Ctx, args: &VerifyArgs, policy: &Policy) -> anyhow::Result<bool> {
    let digest = args.reference.parse::<kiln_oci::Digest>();
    let loaded = match &digest {
        Ok(d) => ctx.runtime.block_on(kiln_release::record::load(&ctx.store, d)),
        Err(_) if args.channel.is_none() => return Ok(false),
        Err(e) => anyhow::bail!(
            "--channel needs a release id (sha256:HEX), not {:?}: {e}",
            args.reference
        ),
    };
    let id = match loaded {
        Ok(loaded) => loaded.id,
        // Not a release (or unreadable as one): the image audit reports on it.
        Err(_) if args.channel.is_none() => return Ok(false),
        Err(e) => return Err(e).context("verifying the release"),
    };
    let channel = args.channel.as_deref().map(str::parse::<ChannelRef>).transpose()?;
    let channel_policy =
        args.policy.as_deref().map(kiln_release::policy::Policy::load).transpose()?;
    let channel_keys = match &channel {
        Some(ch) => super::history::entry_keys(&[], channel_policy.as_ref(), ch)?,
        None => Vec::new(),
    };
    let verified = ctx
        .runtime
        .block_on(kiln_release::verify::verify(
            &ctx.store,
            &id,
            policy,
            channel.as_ref().map(|c| kiln_release::verify::ChannelCheck {
                channel: c,
                keys: &channel_keys,
                seen: args.seen.as_ref(),
                policy: channel_policy.as_ref(),
            }),
        ))
        .map_err(|e| match e {
            // A revoked release fails verification like any other finding (exit 4).
            e @ kiln_release::ReleaseError::Revoked { .. } => {
                super::verify::VerifyFailed(format!("release {id} ({e})")).into()
            }
            e => anyhow::Error::new(e).context(format!("verifying release {id}")),
        })?;
    if ctx.json {
        ctx.print_json(&verified)?;
    } else {
        ctx.say(format!("verify release {id} of image {}", verified.image));
        for f in &verified.findings {
            let status = match f.status {
                Status::Ok => "ok  ",
                Status::Fail => "FAIL",
                Status::Note => "note",
            };
            ctx.say(format!("  {status} {:<10} {}", f.check, f.message));
        }
        ctx.say(format!(
            "  ok   record     every digest it names is stored ({} bytes of configs and disks re-hashed)",
            verified.record_bytes_rehashed
        ));
        if let Some(s) = &verified.channel {
            let now = if s.head { "its head" } else { "no longer its head" };
            ctx.say(format!(
                "  ok   channel    in {} at entries {:?}, {now}",
                s.channel, s.entries
            ));
            for p in s.policies.iter().filter(|p| p.current == Some(false)) {
                ctx.say(format!(
                    "  note channel    entries {:?} were written under policy {}, not the policy file given; each was re-checked against its own",
                    p.entries, p.digest
                ));
            }
            for n in &s.notes {
                ctx.say(format!("  note channel    {n}"));
            }
        }
    }
    if !verified.passed {
        return Err(super::verify::VerifyFailed(format!("release {id}")).into());
    }
    Ok(true)
}

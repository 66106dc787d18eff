//! `kiln verify`: an auditor's check of one image, from the store alone, and optionally a
//! rebuild from the recorded recipe, lock and epoch into a scratch in-memory store.

use std::path::Path;

use anyhow::Context as _;
use kiln_attest::compare::Difference;
use kiln_attest::source;
use kiln_attest::verify::{Policy, Recorded, Status};
use kiln_attest::PublicKey;
use kiln_builder::{BuildOptions, Lock, LockMode, Recipe};
use kiln_oci::Descriptor;
use kiln_release::channel::ChannelRef;
use kiln_store::Store;
use kiln_tree::Epoch;

use super::Ctx;
use crate::cli::VerifyArgs;
use kiln_store_sink::StoreSink;

/// Verification found a problem; the report says which.
#[derive(Debug, thiserror::Error)]
#[error("verification of {0} failed")]
pub struct VerifyFailed(pub String);

pub fn run(ctx: &Ctx, args: &VerifyArgs) -> anyhow::Result<()> {
    let keys = args
        .key
        .iter()
        .map(|p| PublicKey::read(p).context("reading a --key"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let policy = Policy { keys, require: args.require.iter().copied().collect() };
    if verify_release(ctx, args, &policy)? {
        return Ok(());
    }
    let (reference, root) = super::inspect::resolve(ctx, &args.reference)?;
    let report = ctx
        .runtime
        .block_on(kiln_attest::verify::verify(&ctx.store, &root, &policy))
        .with_context(|| format!("verifying {reference}"))?;

    let rebuild = match (&report.recorded, args.rebuild) {
        (_, false) => None,
        (None, true) => Some(Err(
            "no verified provenance records a recipe and lock to rebuild from".to_string(),
        )),
        (Some(recorded), true) => Some(
            rebuild(ctx, recorded, args.source_root.as_deref(), &root, &args.registry)
                .map_err(|e| format!("{e:#}")),
        ),
    };
    let rebuild_ok = matches!(rebuild, None | Some(Ok((_, None))));
    let passed = report.passed() && rebuild_ok;

    if ctx.json {
        let rebuild = rebuild.as_ref().map(|r| match r {
            Ok((digest, difference)) => crate::report::Rebuild {
                reproduced: difference.is_none(),
                digest: Some(*digest),
                difference: difference.clone(),
                error: None,
            },
            Err(e) => crate::report::Rebuild {
                reproduced: false,
                digest: None,
                difference: None,
                error: Some(e.clone()),
            },
        });
        ctx.print_json(&crate::report::Verify {
            reference: reference.clone(),
            digest: root.digest,
            passed,
            signers: &report.signers,
            signatures_checked: report.signatures_checked,
            findings: &report.findings,
            rebuild,
        })?;
    } else {
        ctx.say(format!("verify {reference} {}", root.digest));
        for f in &report.findings {
            let status = match f.status {
                Status::Ok => "ok  ",
                Status::Fail => "FAIL",
                Status::Note => "note",
            };
            ctx.say(format!("  {status} {:<10} {}", f.check, f.message));
        }
        match &rebuild {
            None => {}
            Some(Ok((digest, None))) => ctx.say(format!("  reproduced: identical digest {digest}")),
            Some(Ok((digest, Some(d)))) => ctx.say(format!(
                "  FAIL rebuild     not reproduced: rebuilt {digest}; {}",
                describe(d)
            )),
            Some(Err(e)) => ctx.say(format!("  FAIL rebuild     {e}")),
        }
        let failed = report.findings.iter().filter(|f| f.status == Status::Fail).count()
            + usize::from(!rebuild_ok);
        if passed && !report.signatures_checked {
            ctx.say("integrity verified; signatures were not checked (give --key)");
        } else if passed {
            ctx.say(format!("verified: {} signer(s), every check holds", report.signers.len()));
        } else {
            ctx.say(format!("NOT verified: {failed} problem(s)"));
        }
    }
    if !passed {
        return Err(VerifyFailed(reference.to_string()).into());
    }
    Ok(())
}

fn describe(d: &Difference) -> String {
    match (d.layer, &d.path) {
        (Some(layer), Some(path)) => format!(
            "first differing layer {layer} of manifest {} ({} became {}), first differing path \
             {path}: {}",
            d.manifest, d.original, d.rebuilt, d.detail
        ),
        (Some(layer), None) => format!(
            "first differing layer {layer} of manifest {} ({} became {}): {}",
            d.manifest, d.original, d.rebuilt, d.detail
        ),
        _ => format!("manifest {}: {}", d.manifest, d.detail),
    }
}

/// Rebuilds from `recorded` into a `memory://` store, with the input files of the checkout
/// at `source_root` (whose recipe and lock must be the recorded ones); returns the rebuilt
/// digest and the first difference from `root`, if any.
fn rebuild(
    ctx: &Ctx,
    recorded: &Recorded,
    source_root: Option<&Path>,
    root: &Descriptor,
    registry: &crate::cli::RegistryArgs,
) -> anyhow::Result<(kiln_oci::Digest, Option<Difference>)> {
    let params = &recorded.statement.predicate.build_definition.external_parameters;
    let checkout = source::checkout(source_root).context("finding the checkout to rebuild from")?;
    let recipe_path = source::find_recorded(
        &checkout,
        &params.recipe.path,
        &params.recipe.normalized_digest,
        &params.lock,
    )
    .context("cannot rebuild")?;
    let dir = match recipe_path.parent() {
        Some(p) => p.to_path_buf(),
        None => checkout.clone(),
    };
    let scratch = kiln_store::scratch::Scratch::create().context("creating a scratch folder")?;
    let name = recipe_path.file_name().map_or_else(|| "recipe.toml".into(), |n| n.to_os_string());
    let file = scratch.path().join(name);
    // The recorded recipe and lock (which the checkout's match, or the checkout has no lock)
    // are written to the scratch folder, so the rebuild uses exactly them and never touches
    // the checkout.
    std::fs::write(&file, &recorded.recipe).context("writing the recorded recipe")?;
    std::fs::write(Lock::path_for(&file), &recorded.lock).context("writing the recorded lock")?;
    let text =
        String::from_utf8(recorded.recipe.to_vec()).context("the recorded recipe is not UTF-8")?;
    let recipe = Recipe::parse(&file, &dir, &text)?;
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).context("creating a scratch folder")?;
    let opts = BuildOptions {
        epoch: Epoch::new(params.epoch).context("the recorded epoch")?,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        work_dir: work,
        lock_mode: LockMode::Update,
        hash_cache: None,
        list_packages: false,
    };
    let memory = Store::open("memory://")?;
    super::pull::base(ctx, &memory, &recipe, registry)?;
    let mut sink = StoreSink::new(&memory, &ctx.runtime);
    let progress = crate::progress::Progress::new(false);
    let out = kiln_builder::build(&recipe, &opts, &mut sink, &progress)
        .with_context(|| format!("rebuilding {}", recipe_path.display()))?;
    let difference = ctx
        .runtime
        .block_on(kiln_attest::compare::first_difference(&ctx.store, root, &memory, &out.index))
        .context("comparing the rebuild with the image")?;
    Ok((out.index.digest, difference))
}

/// `kiln verify` of a release id (the hook of `kiln verify`): returns false, having done
/// nothing, when the reference is not a release and no `--channel` was asked for.
fn verify_release(ctx: &Ctx, args: &VerifyArgs, policy: &Policy) -> anyhow::Result<bool> {
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
        // Not a release, or its manifest unreadable: the image audit reports on it. A
        // release that does not verify is reported as one.
        Err(
            kiln_release::ReleaseError::NotARelease { .. } | kiln_release::ReleaseError::Store(_),
        ) if args.channel.is_none() => return Ok(false),
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
                VerifyFailed(format!("release {id} ({e})")).into()
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
        return Err(VerifyFailed(format!("release {id}")).into());
    }
    Ok(true)
}

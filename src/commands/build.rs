//! `kiln build`: recipe → image in the store, tagged NAME:VERSION.

use anyhow::Context as _;
use kiln_attest::build::{attest_build, Build, BuildAttestations};
use kiln_attest::known_layers::KnownLayers;
use kiln_builder::{BuildOptions, LockMode, Recipe};
use kiln_store::{RepoName, Tag};
use kiln_tree::Epoch;

use super::Ctx;
use crate::cli::BuildArgs;
use crate::progress::Progress;
use crate::report;
use kiln_store_sink::StoreSink;

/// Resolves the epoch from the flag, `SOURCE_DATE_EPOCH` and the recipe.
pub fn epoch(flag: Option<i64>, recipe: &Recipe) -> anyhow::Result<Epoch> {
    let env = std::env::var("SOURCE_DATE_EPOCH").ok();
    Epoch::resolve(flag, env.as_deref(), recipe.epoch).context("choosing the build's epoch")
}

/// The image name and tag a recipe declares, validated as store references.
pub fn image_ref(recipe: &Recipe) -> anyhow::Result<(RepoName, Tag)> {
    let file = recipe.file.display();
    let name = recipe.name.parse().with_context(|| format!("{file}: [image] name"))?;
    let tag = recipe.version.parse().with_context(|| format!("{file}: [image] version"))?;
    Ok((name, tag))
}

/// `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`: what this runner keeps between builds.
fn runner_cache() -> Option<std::path::PathBuf> {
    let non_empty = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let base =
        non_empty("XDG_CACHE_HOME").or_else(|| non_empty("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("kiln"))
}

/// The input file digests this runner remembers.
fn hash_cache_file() -> Option<std::path::PathBuf> {
    Some(runner_cache()?.join("file-digests"))
}

pub fn run(ctx: &Ctx, args: &BuildArgs) -> anyhow::Result<()> {
    let recipe = Recipe::load(&args.recipe)?;
    // Read the key and place the recipe first, so a wrong path fails before a long build.
    let key = args.sign.as_deref().map(kiln_attest::PrivateKey::read).transpose()?;
    let source = match &key {
        Some(_) => Some(
            kiln_attest::source::locate(&args.recipe, args.source_root.as_deref())
                .context("naming the recipe for its provenance")?,
        ),
        None => None,
    };
    let cache_signer = match args.cache_key.as_deref().or(args.sign.as_deref()) {
        Some(path) => Some(kiln_attest::cache_trust::CacheSigningKey::new(
            kiln_attest::PrivateKey::read(path)?,
        )?),
        None => None,
    };
    let cache_trust = if args.trust_cache.is_empty() {
        None
    } else {
        let keys = args
            .trust_cache
            .iter()
            .map(|p| kiln_attest::PublicKey::read(p))
            .collect::<Result<Vec<_>, _>>()
            .context("reading --trust-cache keys")?;
        Some(kiln_attest::cache_trust::TrustedCacheKeys::new(keys)?)
    };
    let (name, tag) = image_ref(&recipe)?;
    let epoch = epoch(args.epoch.source_date_epoch, &recipe)?;
    super::pull::base(ctx, &ctx.store, &recipe, &args.registry)?;
    let threads = match args.threads {
        Some(n) => n.get(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let work = kiln_store::scratch::Scratch::create().context("creating a scratch folder")?;
    let opts = BuildOptions {
        epoch,
        threads,
        work_dir: work.path().to_path_buf(),
        lock_mode: if args.locked { LockMode::Locked } else { LockMode::Update },
        hash_cache: if args.rehash { None } else { hash_cache_file() },
        // The SBOM lists every package, including those of layers found in the cache.
        list_packages: args.sign.is_some(),
    };
    let progress = Progress::new(!ctx.quiet && !ctx.json).with_notices(!ctx.quiet);
    let lease = ctx
        .runtime
        .block_on(ctx.store.lease())
        .with_context(|| format!("taking a lease in {}", ctx.store.describe()))?;
    // What the tag holds now needs no lease record: an unchanged rebuild writes nothing. It
    // is read while the build hashes its inputs and reads the cache (a failure to read it
    // fails the build at the first blob named).
    ctx.runtime.block_on(lease.keep_tagged_meanwhile(name.clone(), tag.clone()));
    let mut sink = StoreSink::new(&ctx.store, &ctx.runtime);
    sink.lease = Some(&lease);
    sink.cache_signer = cache_signer.as_ref().map(|k| k as &dyn kiln_store::cache::CacheSigner);
    sink.cache_trust = cache_trust.as_ref().map(|k| k as &dyn kiln_store::cache::CacheTrust);
    sink.verify_cache = args.verify_cache;
    sink.known_layers = runner_cache()
        .map_or_else(KnownLayers::none, |dir| KnownLayers::at(dir.join("layer-diff-ids")));
    // Every blob of the image is leased by now (its record written once the tag is found not
    // to point at the image already). A gc that read the leases before the lease was written
    // may still have deleted one the build found present: once such gc runs are over, the
    // image's blobs are looked at again, and what is gone is made again (see
    // kiln_store::sweep).
    let mut told = 0;
    let mut again = false;
    let mut tagged;
    let out = loop {
        let built = kiln_builder::build(&recipe, &opts, &mut sink, &progress);
        // Blobs healed before a failure were still replaced: say so either way.
        for healed in &sink.healed[told..] {
            eprintln!("healed: {healed}; rewritten from verified bytes");
        }
        told = sink.healed.len();
        let out = built.with_context(|| format!("building {}", recipe.file.display()))?;
        tagged = ctx
            .runtime
            .block_on(lease.before_tagging(&name, &tag, &out.index))
            .with_context(|| format!("reading {name}:{tag}"))?;
        if tagged {
            break out;
        }
        let missing = ctx
            .runtime
            .block_on(ctx.store.confirm_image_except(&out.index, &sink.written, &sink.documents))
            .with_context(|| {
                format!("checking the blobs of {} before tagging it", out.index.digest)
            })?;
        if missing.is_empty() {
            break out;
        }
        let missing = missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        if again {
            anyhow::bail!(
                "blobs of the image were deleted by a gc running beside the build, twice ({missing}); \
                 nothing was tagged; build again"
            );
        }
        eprintln!(
            "warning: a gc running beside the build deleted blobs it reused ({missing}); building again"
        );
        sink.start_over();
        again = true;
    };
    for (entry, refusal) in &sink.refused {
        if !ctx.quiet {
            eprintln!("warning: ignored build cache entry {entry}: {refusal}");
        }
    }
    let cache_use = cache_use(&out, &sink, cache_trust.as_ref());
    // Just read: a tag already pointing at the image is left alone, another is replaced
    // without reading it again.
    if !tagged {
        ctx.runtime
            .block_on(ctx.store.replace_ref(&name, &tag, &out.index))
            .with_context(|| format!("tagging {name}:{tag}"))?;
    }
    progress.finish();
    let lock_path = kiln_builder::Lock::path_for(&recipe.file);
    // A stale lock is rewritten without --locked; say so even under --json, since a lock
    // that silently moves hides an input change from review.
    if !out.lock_stale.is_empty() && !ctx.quiet {
        eprintln!(
            "notice: {} was stale and is rewritten:\n  {}\n(build with --locked to refuse a stale lock)",
            lock_path.display(),
            out.lock_stale.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n  ")
        );
    }

    let attested = match (&key, &source) {
        (Some(key), Some(source)) => {
            // Placed again now that the build may have written the lock: a commit is recorded
            // only for a checkout that is still clean.
            let source = kiln_attest::source::locate(&args.recipe, Some(&source.root))
                .context("naming the recipe for its provenance")?;
            // Attached through the lease, and checked as the image was, since nothing refers
            // to the new artifacts before their referrer entries are written.
            let leased = ctx.store.leased(&lease);
            let attest = || {
                let cache = cache_use.clone();
                let build = Build { recipe: &recipe, out: &out, epoch, cache };
                ctx.runtime
                    .block_on(attest_build(&leased, key, &source, build))
                    .context("attaching signature, SBOM and provenance")
            };
            let mut attested = attest()?;
            let mut missing = confirm_attestations(ctx, &attested)?;
            if !missing.is_empty() {
                eprintln!(
                    "warning: a gc running beside the build deleted blobs of its attestations \
                     ({}); attaching them again",
                    missing.join(", ")
                );
                attested = attest()?;
                missing = confirm_attestations(ctx, &attested)?;
            }
            if !missing.is_empty() {
                anyhow::bail!(
                    "blobs of the attestations were deleted by a gc running beside the build, \
                     twice ({}); sign the image again with kiln sign",
                    missing.join(", ")
                );
            }
            Some(attested)
        }
        _ => None,
    };
    // --release requires --sign (clap enforces it), so the record can name the provenance.
    let released = match (&key, args.release) {
        (Some(key), true) => Some(
            ctx.runtime
                .block_on(kiln_release::record::release(
                    &ctx.store.leased(&lease),
                    &out.index,
                    &[key.public()],
                    Some(key),
                ))
                .context("writing the release record")?,
        ),
        _ => None,
    };
    if ctx.json {
        ctx.print_json(&report::Build {
            name: name.clone(),
            tag: tag.clone(),
            digest: out.index.digest,
            media_type: out.index.media_type.clone(),
            size: out.index.size,
            epoch,
            manifests: out
                .manifests
                .iter()
                .map(|(p, d)| report::PlatformManifest { platform: p.clone(), digest: d.digest })
                .collect(),
            layers: report::LayerCounts { built: out.layers_built, reused: out.layers_reused },
            blobs: report::BlobCounts {
                uploaded: sink.uploaded,
                present: sink.present,
                healed: sink.healed.clone(),
            },
            cache: report::CacheUse {
                layers: cache_use.as_ref().map(|c| c.cached_layers.clone()).unwrap_or_default(),
                ignored: sink
                    .refused
                    .iter()
                    .map(|(entry, refusal)| report::IgnoredEntry {
                        entry: entry.clone(),
                        refusal: refusal.clone(),
                    })
                    .collect(),
            },
            lock: report::LockState {
                path: lock_path.clone(),
                written: out.lock_written,
                stale: out.lock_stale.iter().map(ToString::to_string).collect(),
            },
            store: ctx.store.describe().to_string(),
            disks_reused: out.disks_reused,
            disks: out
                .disks
                .iter()
                .map(|(p, d)| report::BuiltDisks {
                    platform: p.clone(),
                    digest: d.digest,
                    annotations: d.annotations.clone(),
                })
                .collect(),
            attestations: attested.as_ref().map(|a| report::Attestations {
                key_id: a.key_id,
                signature: a.signature.digest,
                sboms: a.sboms.iter().map(|s| s.artifact.digest).collect(),
                provenance: a.provenance.digest,
                source: report::SourceReport {
                    root: a.source.root.clone(),
                    recipe: a.source.recipe.clone(),
                    commit: a.source.commit.clone(),
                },
            }),
            release: released.clone(),
        })?;
    } else {
        if out.lock_written && out.lock_stale.is_empty() && !ctx.quiet {
            eprintln!("wrote {}", lock_path.display());
        }
        ctx.say(format!(
            "built {name}:{tag} {} ({} layers built, {} reused; {} blobs uploaded, {} already stored)",
            out.index.digest, out.layers_built, out.layers_reused, sink.uploaded, sink.present
        ));
        for (platform, d) in &out.disks {
            ctx.say(format!("{platform} disk images attached as artifact {}", d.digest));
        }
        if let Some(a) = &attested {
            ctx.say(format!(
                "signed with key {}: signature {}, {} SBOM(s), provenance {}",
                a.key_id,
                a.signature.digest,
                a.sboms.len(),
                a.provenance.digest
            ));
        }
        if let Some(r) = &released {
            ctx.say(format!("release {} of {} {}", r.release, r.name, r.version));
        }
    }
    // The tag now holds what the lease held. A lease left behind only keeps blobs a little
    // longer: it expires, and gc drops it at once when this process is gone.
    drop(sink);
    if let Err(e) = ctx.runtime.block_on(lease.release()) {
        eprintln!("warning: cannot release the store lease: {:#}", anyhow::Error::new(e));
    }
    Ok(())
}

/// The blobs of the signature, SBOM and provenance artifacts that are not stored, once the
/// gc sweeps in progress are over (see kiln_store::sweep).
fn confirm_attestations(ctx: &Ctx, attested: &BuildAttestations) -> anyhow::Result<Vec<String>> {
    let artifacts = std::iter::once(&attested.signature)
        .chain(attested.sboms.iter().map(|s| &s.artifact))
        .chain(std::iter::once(&attested.provenance));
    let mut missing = Vec::new();
    for artifact in artifacts {
        let gone = ctx
            .runtime
            .block_on(ctx.store.confirm_image(artifact))
            .with_context(|| format!("checking the blobs of artifact {}", artifact.digest))?;
        missing.extend(gone.iter().map(ToString::to_string));
    }
    Ok(missing)
}

/// What the provenance says about the build cache: the trusted keys, and each layer taken
/// from the cache with the key that vouched for its entry.
fn cache_use(
    out: &kiln_builder::BuildOutput,
    sink: &StoreSink,
    trust: Option<&kiln_attest::cache_trust::TrustedCacheKeys>,
) -> Option<kiln_attest::provenance::InternalParameters> {
    let trusted_cache_keys: Vec<_> =
        trust.map(|t| t.key_ids().into_iter().map(|id| id.0).collect()).unwrap_or_default();
    let cached_layers: Vec<_> = out
        .cache_hits
        .iter()
        .filter_map(|hit| {
            let (name, record) = out.layers.get(hit.layer)?;
            Some(kiln_attest::provenance::CachedLayer {
                name: name.clone(),
                digest: record.digest,
                cache_key: hit.key,
                vouched_by: sink.vouchers.get(&hit.key).copied().flatten(),
            })
        })
        .collect();
    (!trusted_cache_keys.is_empty() || !cached_layers.is_empty()).then_some(
        kiln_attest::provenance::InternalParameters { trusted_cache_keys, cached_layers },
    )
}

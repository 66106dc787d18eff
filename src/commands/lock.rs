//! `kiln lock`: pin every input's digest beside the recipe.

use kiln_builder::hash_cache::HashCache;
use kiln_builder::packages::Resolution;
use kiln_builder::Recipe;

use super::Ctx;
use crate::cli::LockArgs;

pub fn run(ctx: &Ctx, args: &LockArgs) -> anyhow::Result<()> {
    let recipe = Recipe::load(&args.recipe)?;
    super::build::image_ref(&recipe)?;
    let epoch = super::build::epoch(args.epoch.source_date_epoch, &recipe)?;
    let resolution = if args.update { Resolution::Update } else { Resolution::Reuse };
    super::pull::base(ctx, &ctx.store, &recipe, &args.registry)?;
    // The store is read only for a registry base, which was pulled into it.
    let mut sink = kiln_store_sink::StoreSink::new(&ctx.store, &ctx.runtime);
    let store = recipe.base.as_ref().map(|_| &mut sink as &mut dyn kiln_builder::BlobSink);
    let (lock, changed) = kiln_builder::build::lock_with(
        &recipe,
        epoch,
        &mut HashCache::disabled(),
        resolution,
        store,
    )?;
    let path = kiln_builder::Lock::path_for(&recipe.file);
    if ctx.json {
        ctx.print_json(&crate::report::Lock {
            lock: path.clone(),
            written: changed,
            recipe: lock.recipe,
            epoch: lock.epoch,
            inputs: lock.inputs.clone(),
        })?;
    } else if changed {
        ctx.say(format!("wrote {} ({} inputs)", path.display(), lock.inputs.len()));
    } else {
        ctx.say(format!("{} is up to date ({} inputs)", path.display(), lock.inputs.len()));
    }
    Ok(())
}

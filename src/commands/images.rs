//! `kiln images`: the tags in the store.

use super::Ctx;

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let refs = ctx.runtime.block_on(ctx.store.list_refs())?;
    if ctx.json {
        let list: Vec<_> = refs
            .iter()
            .map(|(name, tag, d)| crate::report::Image {
                name: name.clone(),
                tag: tag.clone(),
                digest: d.digest,
                media_type: d.media_type.clone(),
                size: d.size,
            })
            .collect();
        return ctx.print_json(&list);
    }
    for (name, tag, d) in &refs {
        ctx.say(format!("{name}:{tag}\t{}", d.digest));
    }
    Ok(())
}

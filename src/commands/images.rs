//! `kiln images`: the tags in the store.

use serde_json::json;

use super::Ctx;

pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let refs = ctx.runtime.block_on(ctx.store.list_refs())?;
    if ctx.json {
        let list: Vec<_> = refs
            .iter()
            .map(|(name, tag, d)| {
                json!({ "name": name.to_string(), "tag": tag.to_string(), "digest": d.digest.to_string(),
                        "mediaType": d.media_type, "size": d.size })
            })
            .collect();
        return ctx.print_json(&list);
    }
    for (name, tag, d) in &refs {
        ctx.say(format!("{name}:{tag}\t{}", d.digest));
    }
    Ok(())
}

//! `kiln sign`: a cosign signature over an image, attached as a referrer.

use anyhow::Context as _;
use kiln_attest::PrivateKey;
use kiln_oci::{Descriptor, ImageIndex};
use kiln_store::Reference;

use super::Ctx;
use crate::cli::SignArgs;

/// The repository name recorded in the signature: the reference's, else the image's title.
pub fn repository(ctx: &Ctx, reference: &Reference, root: &Descriptor) -> anyhow::Result<String> {
    match reference {
        Reference::Tagged { name, .. } | Reference::Pinned { name, .. } => Ok(name.to_string()),
        Reference::Digest(_) => {
            let index: ImageIndex = ctx.runtime.block_on(ctx.store.get_described_json(root))?;
            Ok(index.annotations.get("org.opencontainers.image.title").cloned().unwrap_or_default())
        }
    }
}

pub fn run(ctx: &Ctx, args: &SignArgs) -> anyhow::Result<()> {
    let key = PrivateKey::read(&args.key)?;
    let (reference, root) = super::inspect::resolve(ctx, &args.reference)?;
    let name = repository(ctx, &reference, &root)?;
    let (artifact, key_id) = ctx
        .runtime
        .block_on(kiln_attest::publish::sign(&ctx.store, &root, &name, &key))
        .with_context(|| format!("signing {reference}"))?;
    if ctx.json {
        return ctx.print_json(&crate::report::Sign {
            reference,
            digest: root.digest,
            key_id,
            signature: artifact.digest,
        });
    }
    ctx.say(format!(
        "signed {reference} {} with key {key_id}\n  signature {}",
        root.digest, artifact.digest
    ));
    Ok(())
}

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

/// What `kiln build --sign` attaches to the image it just built: a signature, an SBOM per
/// platform and signed provenance carrying the recipe and lock bytes.
pub struct BuildAttestations {
    pub signature: Descriptor,
    pub key_id: kiln_attest::KeyId,
    pub sboms: Vec<kiln_attest::publish::AttachedSbom>,
    pub provenance: Descriptor,
    /// Where the provenance says the recipe lives.
    pub source: kiln_attest::source::Source,
}

/// Signs and attests a fresh build of `recipe` (its lock file beside it) into `store`,
/// recording `cache`.
#[allow(clippy::too_many_arguments)]
pub fn attest_build(
    ctx: &Ctx,
    store: &kiln_store::Store,
    key: &PrivateKey,
    source: &kiln_attest::source::Source,
    recipe: &kiln_builder::Recipe,
    out: &kiln_builder::BuildOutput,
    epoch: kiln_tree::Epoch,
    cache: Option<kiln_attest::provenance::InternalParameters>,
) -> anyhow::Result<BuildAttestations> {
    use kiln_attest::provenance::{BuildFacts, Dependency, RecipeParameter};
    let recipe_bytes = std::fs::read(&recipe.file)
        .with_context(|| format!("reading {} again to keep it", recipe.file.display()))?;
    let lock_path = kiln_builder::Lock::path_for(&recipe.file);
    let lock_bytes = std::fs::read(&lock_path)
        .with_context(|| format!("reading {} to keep it", lock_path.display()))?;
    let inputs = out
        .lock
        .inputs
        .iter()
        .map(|i| {
            let kind = serde_json::to_value(i.kind)?.as_str().unwrap_or_default().to_string();
            Ok(Dependency { kind, src: i.src.clone(), digest: i.digest })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let facts = BuildFacts {
        name: recipe.name.clone(),
        recipe: RecipeParameter {
            path: source.recipe.clone(),
            digest: kiln_oci::Digest::of(&recipe_bytes),
            normalized_digest: recipe.digest,
        },
        lock: kiln_oci::Digest::of(&lock_bytes),
        epoch: epoch.seconds(),
        platforms: out.manifests.iter().map(|(p, _)| p.to_string()).collect(),
        inputs,
        debian: debian_dependencies(&out.lock),
        source_commit: source.commit.clone(),
        sboms: Vec::new(),
        format: out.lock.format,
        compressor: recipe.compression.describe(),
        cache,
    };
    let root = &out.index;
    ctx.runtime
        .block_on(async {
            let (signature, key_id) =
                kiln_attest::publish::sign(store, root, &recipe.name, key).await?;
            let sboms = kiln_attest::publish::attach_sboms(
                store,
                root,
                &recipe.name,
                Some(&recipe.version),
                &epoch.rfc3339(),
                &out.installed,
            )
            .await?;
            // The provenance names each SBOM document, so its signature binds them.
            let facts = BuildFacts { sboms: sboms.iter().map(|s| s.document).collect(), ..facts };
            let provenance = kiln_attest::publish::attach_provenance(
                store,
                root,
                &facts,
                recipe_bytes,
                lock_bytes,
                key,
            )
            .await?;
            Ok::<_, kiln_attest::AttestError>(BuildAttestations {
                signature,
                key_id,
                sboms,
                provenance,
                source: source.clone(),
            })
        })
        .context("attaching signature, SBOM and provenance")
}

/// The provenance's record of Debian inputs: each repository's verified release and each
/// package file, by digest.
fn debian_dependencies(
    lock: &kiln_builder::Lock,
) -> Vec<kiln_attest::provenance::ResourceDescriptor> {
    use kiln_attest::provenance::ResourceDescriptor;
    let releases = lock.repositories.iter().map(|r| ResourceDescriptor {
        name: Some(format!("debian-repository:{} {}", r.url, r.suite)),
        uri: Some(format!("{}/dists/{}/{}", r.url, r.suite, r.release)),
        digest: std::collections::BTreeMap::from([("sha256".to_string(), r.digest.hex())]),
    });
    let packages = lock.packages.iter().flat_map(|l| &l.chosen).map(|p| ResourceDescriptor {
        name: Some(format!("{}_{}_{}", p.name, p.version, p.architecture)),
        uri: Some(format!("{}/{}", p.repository, p.path)),
        digest: std::collections::BTreeMap::from([("sha256".to_string(), p.sha256.hex())]),
    });
    releases.chain(packages).collect()
}

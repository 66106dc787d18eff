//! The attestations of a fresh build: a signature, an SBOM per platform and signed provenance
//! carrying the recipe and lock bytes, all attached to the image the build stored.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_builder::lock::LockedBaseSource;
use kiln_builder::{BuildOutput, Lock, Recipe};
use kiln_oci::{Descriptor, Digest};
use kiln_store::Store;
use kiln_tree::Epoch;

use crate::provenance::{
    BuildFacts, Dependency, InternalParameters, RecipeParameter, ResourceDescriptor,
};
use crate::publish::{attach_provenance, attach_sboms, sign, AttachedSbom};
use crate::source::Source;
use crate::{AttestError, KeyId, PrivateKey};

/// What [`attest_build`] attached.
pub struct BuildAttestations {
    pub signature: Descriptor,
    pub key_id: KeyId,
    pub sboms: Vec<AttachedSbom>,
    pub provenance: Descriptor,
    /// Where the provenance says the recipe lives.
    pub source: Source,
}

/// A fresh build of `recipe` (its lock file beside it) that `out` describes, built at
/// `epoch`, and how it used the build cache.
pub struct Build<'a> {
    pub recipe: &'a Recipe,
    pub out: &'a BuildOutput,
    pub epoch: Epoch,
    pub cache: Option<InternalParameters>,
}

/// Signs and attests `build`, whose image is in `store`, with `key`; `source` names the
/// recipe in the provenance.
pub async fn attest_build(
    store: &Store,
    key: &PrivateKey,
    source: &Source,
    build: Build<'_>,
) -> Result<BuildAttestations, AttestError> {
    let Build { recipe, out, epoch, cache } = build;
    let recipe_bytes = read(&recipe.file)?;
    let lock_bytes = read(&Lock::path_for(&recipe.file))?;
    let inputs = out
        .lock
        .inputs
        .iter()
        .map(|i| Dependency {
            kind: i.kind.as_str().to_string(),
            src: i.src.clone(),
            digest: i.digest,
        })
        .collect();
    let facts = BuildFacts {
        name: recipe.name.clone(),
        recipe: RecipeParameter {
            path: source.recipe.clone(),
            digest: Digest::of(&recipe_bytes),
            normalized_digest: recipe.digest,
        },
        lock: Digest::of(&lock_bytes),
        epoch: epoch.seconds(),
        platforms: out.manifests.iter().map(|(p, _)| p.to_string()).collect(),
        inputs,
        debian: debian_dependencies(&out.lock),
        base: base_dependencies(&out.lock),
        source_commit: source.commit.clone(),
        sboms: Vec::new(),
        format: out.lock.format,
        compressor: recipe.compression.describe(),
        cache,
    };
    let root = &out.index;
    let (signature, key_id) = sign(store, root, &recipe.name, key).await?;
    let sboms = attach_sboms(
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
    let provenance = attach_provenance(store, root, &facts, recipe_bytes, lock_bytes, key).await?;
    Ok(BuildAttestations { signature, key_id, sboms, provenance, source: source.clone() })
}

/// The bytes of the recipe or lock file at `path`, kept in the provenance.
fn read(path: &Path) -> Result<Vec<u8>, AttestError> {
    std::fs::read(path).map_err(|source| AttestError::Read { path: path.to_path_buf(), source })
}

/// The provenance's record of the base image by digest: its root as the recipe names it
/// (`oci://HOST/REPO@…` or `oci-layout:DIR@…`), then the manifest taken for each platform.
fn base_dependencies(lock: &Lock) -> Vec<ResourceDescriptor> {
    let Some(base) = &lock.base else { return Vec::new() };
    let sha256 = |d: &Digest| BTreeMap::from([("sha256".to_string(), d.hex())]);
    let location = match &base.source {
        LockedBaseSource::Image(image) => format!("oci://{image}"),
        LockedBaseSource::OciLayout(dir) => format!("oci-layout:{dir}"),
    };
    let root = ResourceDescriptor {
        name: Some("base".to_string()),
        uri: Some(format!("{location}@{}", base.digest)),
        digest: sha256(&base.digest),
    };
    let manifests = base.manifests.iter().map(|m| ResourceDescriptor {
        name: Some(format!("base {}", m.platform)),
        uri: Some(format!("{location}@{}", m.digest)),
        digest: sha256(&m.digest),
    });
    std::iter::once(root).chain(manifests).collect()
}

/// The provenance's record of Debian inputs: each repository's verified release and each
/// package file, by digest.
fn debian_dependencies(lock: &Lock) -> Vec<ResourceDescriptor> {
    let sha256 = |d: &Digest| BTreeMap::from([("sha256".to_string(), d.hex())]);
    let releases = lock.repositories.iter().map(|r| ResourceDescriptor {
        name: Some(format!("debian-repository:{} {}", r.url, r.suite)),
        uri: Some(format!("{}/dists/{}/{}", r.url, r.suite, r.release)),
        digest: sha256(&r.digest),
    });
    let packages = lock.packages.iter().flat_map(|l| &l.chosen).map(|p| ResourceDescriptor {
        name: Some(format!("{}_{}_{}", p.name, p.version, p.architecture)),
        uri: Some(format!("{}/{}", p.repository, p.path)),
        digest: sha256(&p.sha256),
    });
    releases.chain(packages).collect()
}

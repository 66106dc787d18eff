//! Provenance: an in-toto Statement v1 whose predicate is SLSA Provenance v1, saying which
//! recipe, lock, epoch and inputs produced an image and with which builder.

use std::collections::BTreeMap;

use kiln_oci::Digest;
use serde::{Deserialize, Serialize};

/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// kiln's build type: a recipe built with its lock at a fixed epoch.
pub const BUILD_TYPE: &str = "https://kiln.invalid/build-types/recipe/v1";
/// The name of the resolved dependency that records the source checkout's commit.
pub const SOURCE_NAME: &str = "source";
/// The name of a byproduct that is an SBOM document.
pub const SBOM_BYPRODUCT: &str = "sbom";
/// kiln's builder id.
pub const BUILDER_ID: &str = "https://kiln.invalid/builder";

/// An in-toto Statement v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub kind: String,
    /// What was built.
    pub subject: Vec<ResourceDescriptor>,
    /// [`PREDICATE_TYPE`].
    pub predicate_type: String,
    /// How it was built.
    pub predicate: Provenance,
}

/// An in-toto resource descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// A name (the image name, or an input's path in the recipe folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A URI, for inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `{"sha256": hex}`.
    pub digest: BTreeMap<String, String>,
}

impl ResourceDescriptor {
    /// A named resource with a sha256 digest.
    pub fn named(name: &str, digest: &Digest) -> Self {
        ResourceDescriptor {
            name: Some(name.to_string()),
            uri: None,
            digest: BTreeMap::from([("sha256".to_string(), digest.hex())]),
        }
    }

    /// The sha256 digest, when present and well formed.
    pub fn sha256(&self) -> Option<Digest> {
        self.digest.get("sha256").and_then(|h| Digest::from_hex(h).ok())
    }
}

/// SLSA Provenance v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// What was asked for.
    pub build_definition: BuildDefinition,
    /// Who ran it.
    pub run_details: RunDetails,
}

/// `buildDefinition`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`].
    pub build_type: String,
    /// The recipe, lock, epoch and platforms.
    pub external_parameters: ExternalParameters,
    /// Every input with its digest.
    pub resolved_dependencies: Vec<ResourceDescriptor>,
    /// How the builder was set up for this build: which layers it took from the build cache
    /// rather than making them, and on whose word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_parameters: Option<InternalParameters>,
}

/// `buildDefinition.internalParameters`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalParameters {
    /// The keys whose cache entries the build trusted; empty when it trusted any well-formed
    /// entry.
    pub trusted_cache_keys: Vec<Digest>,
    /// Layers whose blobs came from the build cache, in layer order.
    pub cached_layers: Vec<CachedLayer>,
}

/// A layer taken from the build cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedLayer {
    /// The layer's name in the recipe.
    pub name: String,
    /// The layer blob's digest.
    pub digest: Digest,
    /// The cache key the entry was found under.
    pub cache_key: Digest,
    /// The trusted key whose signature on the entry was checked; absent when no keys were
    /// trusted (the entry was only checked for being well formed and its blob's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouched_by: Option<Digest>,
}

/// What the build was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalParameters {
    /// The recipe file.
    pub recipe: RecipeParameter,
    /// sha256 of the lock file's bytes, stored as a blob.
    pub lock: Digest,
    /// The epoch (SOURCE_DATE_EPOCH) used for every timestamp.
    pub epoch: i64,
    /// `os/arch[/variant]` of each manifest.
    pub platforms: Vec<String>,
}

/// The recipe as given to the build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipeParameter {
    /// The recipe's path relative to its source root (see [`crate::source`]), `/`-separated:
    /// never a host path, so every checkout of the same sources records the same path.
    pub path: String,
    /// sha256 of the file's bytes, stored as a blob.
    pub digest: Digest,
    /// sha256 of the text with line endings normalised (what the lock records).
    pub normalized_digest: Digest,
}

/// `runDetails`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    /// The builder.
    pub builder: Builder,
    /// What the build made beside the image: each SBOM document, named
    /// [`SBOM_BYPRODUCT`], so the signature over this statement vouches for them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub byproducts: Vec<ResourceDescriptor>,
}

/// `runDetails.builder`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// [`BUILDER_ID`].
    pub id: String,
    /// `kiln`, `format` and `compressor` versions.
    pub version: BTreeMap<String, String>,
}

/// One input as the lock records it.
#[derive(Clone, Debug)]
pub struct Dependency {
    /// The input kind (`file`, `tree`, `tarball`, ...).
    pub kind: String,
    /// Its path relative to the recipe folder.
    pub src: String,
    /// Its digest.
    pub digest: Digest,
}

/// The facts of one build that its provenance records.
pub struct BuildFacts {
    /// The image name.
    pub name: String,
    /// The recipe parameter.
    pub recipe: RecipeParameter,
    /// sha256 of the lock file bytes.
    pub lock: Digest,
    /// The epoch.
    pub epoch: i64,
    /// The platforms built.
    pub platforms: Vec<String>,
    /// Every locked input.
    pub inputs: Vec<Dependency>,
    /// The Debian repositories' verified releases and the package files fetched from them.
    pub debian: Vec<ResourceDescriptor>,
    /// The base image (its index or manifest) and the manifest taken for each platform.
    pub base: Vec<ResourceDescriptor>,
    /// The commit of the clean git checkout the recipe was built from, if any.
    pub source_commit: Option<String>,
    /// The digests of the SBOM documents made for the image.
    pub sboms: Vec<Digest>,
    /// The output format version.
    pub format: u32,
    /// The compressor with its implementation and parameters.
    pub compressor: String,
    /// How the build cache was used; `None` when nothing came from it and no keys were
    /// trusted.
    pub cache: Option<InternalParameters>,
}

/// The statement for the image `subject` built as `facts` say.
pub fn statement(facts: &BuildFacts, subject: &Digest) -> Statement {
    let mut resolved_dependencies: Vec<ResourceDescriptor> = facts
        .inputs
        .iter()
        .map(|i| ResourceDescriptor {
            name: Some(i.src.clone()),
            uri: Some(format!("kiln+{}:{}", i.kind, i.src)),
            digest: BTreeMap::from([("sha256".to_string(), i.digest.hex())]),
        })
        .collect();
    resolved_dependencies.extend(facts.base.iter().cloned());
    resolved_dependencies.extend(facts.debian.iter().cloned());
    // The checkout by commit alone: its location and remote are the host's business.
    if let Some(commit) = &facts.source_commit {
        resolved_dependencies.push(ResourceDescriptor {
            name: Some(SOURCE_NAME.to_string()),
            uri: None,
            digest: BTreeMap::from([("gitCommit".to_string(), commit.clone())]),
        });
    }
    Statement {
        kind: STATEMENT_TYPE.into(),
        subject: vec![ResourceDescriptor::named(&facts.name, subject)],
        predicate_type: PREDICATE_TYPE.into(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.into(),
                external_parameters: ExternalParameters {
                    recipe: facts.recipe.clone(),
                    lock: facts.lock,
                    epoch: facts.epoch,
                    platforms: facts.platforms.clone(),
                },
                resolved_dependencies,
                internal_parameters: facts.cache.clone(),
            },
            run_details: RunDetails {
                builder: Builder {
                    id: BUILDER_ID.into(),
                    version: BTreeMap::from([
                        ("kiln".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                        ("format".to_string(), facts.format.to_string()),
                        ("compressor".to_string(), facts.compressor.clone()),
                    ]),
                },
                byproducts: facts
                    .sboms
                    .iter()
                    .map(|d| ResourceDescriptor::named(SBOM_BYPRODUCT, d))
                    .collect(),
            },
        },
    }
}

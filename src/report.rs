//! What the commands print under `--json` when the binary assembles the report itself (from
//! the builder, the sink, attestations and the store). Reports a library makes alone are that
//! library's types. Every shape is documented, with an example, in docs/json.md, and
//! tests/json_docs.rs compares those examples with what the commands print.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::PathBuf;

use kiln_attest::compare::Difference;
use kiln_attest::provenance::CachedLayer;
use kiln_attest::verify::Finding;
use kiln_attest::KeyId;
use kiln_builder::inputs::Input;
use kiln_oci::{Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, Platform};
use kiln_release::record::Published;
use kiln_store::cache::Refusal;
use kiln_store::{CheckReport, CopyReport, GcReport, Quarantined, Reference, RepoName, Tag};
use kiln_tree::Epoch;
use serde::{Serialize, Serializer};

/// Serialises a value as its `Display` text (references, names, platforms, lock lines).
fn text<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Serialises a local path as text, lossily where it is not UTF-8: reports only name it.
fn path<S: Serializer>(value: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&value.display())
}

/// `kiln --json build`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    #[serde(serialize_with = "text")]
    pub name: RepoName,
    #[serde(serialize_with = "text")]
    pub tag: Tag,
    /// The image index.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub epoch: Epoch,
    pub manifests: Vec<PlatformManifest>,
    pub layers: LayerCounts,
    pub blobs: BlobCounts,
    pub cache: CacheUse,
    pub lock: LockState,
    /// The store, described without credentials.
    pub store: String,
    pub disks_reused: usize,
    pub disks: Vec<BuiltDisks>,
    pub attestations: Option<Attestations>,
    pub release: Option<Published>,
}

/// One platform's manifest of an index.
#[derive(Serialize)]
pub struct PlatformManifest {
    #[serde(serialize_with = "text")]
    pub platform: Platform,
    pub digest: Digest,
}

/// Layers built now and layers taken from the build cache.
#[derive(Serialize)]
pub struct LayerCounts {
    pub built: usize,
    pub reused: usize,
}

/// Blobs written, blobs found stored, and corrupt blobs moved aside and written again.
#[derive(Serialize)]
pub struct BlobCounts {
    pub uploaded: usize,
    pub present: usize,
    pub healed: Vec<Quarantined>,
}

/// The build cache entries used and the ones refused.
#[derive(Serialize)]
pub struct CacheUse {
    pub layers: Vec<CachedLayer>,
    pub ignored: Vec<IgnoredEntry>,
}

/// A build cache entry the build did not use, and why.
#[derive(Serialize)]
pub struct IgnoredEntry {
    /// Its key in the store, `cache/<kind>/<hex>`.
    pub entry: String,
    pub refusal: Refusal,
}

/// The lock file beside the recipe.
#[derive(Serialize)]
pub struct LockState {
    #[serde(serialize_with = "path")]
    pub path: PathBuf,
    /// Whether it was created or changed.
    pub written: bool,
    /// When a lock no longer matched, each difference, one line each.
    pub stale: Vec<String>,
}

/// The disk images artifact attached to one platform's manifest.
#[derive(Serialize)]
pub struct BuiltDisks {
    #[serde(serialize_with = "text")]
    pub platform: Platform,
    /// The artifact manifest.
    pub digest: Digest,
    pub annotations: BTreeMap<String, String>,
}

/// What `build --sign` attached.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestations {
    pub key_id: KeyId,
    /// The signature artifact's manifest.
    pub signature: Digest,
    /// The SBOM artifacts' manifests, one per platform.
    pub sboms: Vec<Digest>,
    /// The provenance artifact's manifest.
    pub provenance: Digest,
    pub source: SourceReport,
}

/// Where the provenance says the recipe lives.
#[derive(Serialize)]
pub struct SourceReport {
    /// The source root on this machine (never recorded in the provenance).
    #[serde(serialize_with = "path")]
    pub root: PathBuf,
    /// The recipe's path relative to the root.
    pub recipe: String,
    /// The checkout's commit, when it is clean.
    pub commit: Option<String>,
}

/// `kiln --json lock`.
#[derive(Serialize)]
pub struct Lock {
    /// The lock file.
    #[serde(serialize_with = "path")]
    pub lock: PathBuf,
    pub written: bool,
    /// The recipe's normalised digest.
    pub recipe: Digest,
    pub epoch: Epoch,
    pub inputs: Vec<Input>,
}

/// One entry of `kiln --json images`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    #[serde(serialize_with = "text")]
    pub name: RepoName,
    #[serde(serialize_with = "text")]
    pub tag: Tag,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// `kiln --json inspect`.
#[derive(Serialize)]
pub struct Inspect {
    #[serde(serialize_with = "text")]
    pub reference: Reference,
    pub descriptor: Descriptor,
    /// The index, when the reference names one.
    pub index: Option<ImageIndex>,
    pub manifests: Vec<InspectedManifest>,
    pub referrers: Vec<Referrer>,
}

/// One platform's manifest and config.
#[derive(Serialize)]
pub struct InspectedManifest {
    pub descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfig,
}

/// An artifact that refers to the index or one of its manifests.
#[derive(Serialize)]
pub struct Referrer {
    pub subject: Digest,
    pub descriptor: Descriptor,
}

/// What `kiln export` wrote.
#[derive(Clone, Copy, Serialize)]
pub enum ExportFormat {
    #[serde(rename = "oci-layout")]
    Layout,
    #[serde(rename = "oci-archive")]
    Archive,
}

impl Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExportFormat::Layout => "oci-layout",
            ExportFormat::Archive => "oci-archive",
        })
    }
}

/// `kiln --json export --oci-layout` and `--oci-archive`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Export {
    #[serde(serialize_with = "text")]
    pub reference: Reference,
    pub digest: Digest,
    pub format: ExportFormat,
    #[serde(serialize_with = "path")]
    pub path: PathBuf,
    #[serde(serialize_with = "text")]
    pub tag: Tag,
    pub blobs_written: usize,
    pub bytes_written: u64,
    pub referrers_listed: usize,
}

/// `kiln --json export --disk`.
#[derive(Serialize)]
pub struct DiskExport {
    #[serde(serialize_with = "text")]
    pub reference: Reference,
    pub disks: Vec<kiln_store::disk_export::ExportedDisk>,
}

/// `kiln --json store check`.
#[derive(Serialize)]
pub struct Check<'a> {
    pub store: &'a str,
    /// No problem found.
    pub clean: bool,
    #[serde(flatten)]
    pub report: &'a CheckReport,
}

/// `kiln --json gc`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gc<'a> {
    pub store: &'a str,
    pub grace_seconds: u64,
    #[serde(flatten)]
    pub report: &'a GcReport,
}

/// `kiln --json copy` between two stores.
#[derive(Serialize)]
pub struct Copy<'a> {
    pub from: &'a str,
    pub to: &'a str,
    #[serde(flatten)]
    pub report: &'a CopyReport,
}

/// `kiln --json keygen`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keygen {
    #[serde(rename = "type", serialize_with = "text")]
    pub key_type: kiln_attest::KeyType,
    pub key_id: KeyId,
    #[serde(serialize_with = "path")]
    pub private: PathBuf,
    #[serde(serialize_with = "path")]
    pub public: PathBuf,
}

/// `kiln --json sign`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sign {
    #[serde(serialize_with = "text")]
    pub reference: Reference,
    pub digest: Digest,
    pub key_id: KeyId,
    /// The signature artifact's manifest.
    pub signature: Digest,
}

/// `kiln --json verify` of an image.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verify<'a> {
    #[serde(serialize_with = "text")]
    pub reference: Reference,
    pub digest: Digest,
    pub passed: bool,
    pub signers: &'a [KeyId],
    pub signatures_checked: bool,
    pub findings: &'a [Finding],
    pub rebuild: Option<Rebuild>,
}

/// The outcome of `verify --rebuild`.
#[derive(Serialize)]
pub struct Rebuild {
    pub reproduced: bool,
    /// The rebuilt index, when the rebuild ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// The first difference, when the rebuild differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<Difference>,
    /// Why there is no rebuild to compare.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

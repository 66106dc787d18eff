//! The release record (`kiln.release/v1`): one canonical JSON document naming, by digest,
//! everything a deployment needs: the image index, each platform's manifest and config, every
//! disk image per platform and format with its size and dm-verity root hash, the signature,
//! SBOM and provenance artifacts, the recipe and lock, the epoch and the building kiln.
//!
//! It holds no wall clock and no host detail, and every list in it is sorted, so the same
//! image (with the same attestations) always gives the same bytes. It is stored as the one
//! layer of an OCI 1.1 artifact manifest whose `subject` is the image index, so `copy`, `gc`
//! and `export` follow it like any referrer; that manifest's digest is the release id.

use std::collections::BTreeMap;

use kiln_attest::artifact::{self, Part};
use kiln_attest::dsse::{Envelope, ENVELOPE_MEDIA_TYPE};
use kiln_attest::provenance::Statement;
use kiln_attest::PublicKey;
use kiln_oci::disk_artifact::{ARTIFACT_TYPE as DISK_ARTIFACT, ROOT_HASH_ANNOTATION};
use kiln_oci::{media_type, Descriptor, Digest, ImageIndex, ImageManifest};
use kiln_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::{ReleaseError, Result};

/// The record's `schema`.
pub const SCHEMA: &str = "kiln.release/v1";
/// artifactType of the manifest that stores a release record.
pub const RELEASE_ARTIFACT: &str = "application/vnd.kiln.release.v1";
/// Media type of the record layer.
pub const RECORD_MEDIA_TYPE: &str = "application/vnd.kiln.release.v1+json";
/// A release manifest is a few hundred bytes; anything much larger is not one.
const MANIFEST_LIMIT: u64 = 64 * 1024;
/// A record grows with platforms and disks; this bounds what is read for one.
const RECORD_LIMIT: u64 = 1024 * 1024;
/// Provenance envelopes hold one statement listing the inputs.
const ENVELOPE_LIMIT: u64 = 16 * 1024 * 1024;

/// A blob named by media type, digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Blob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Blob {
    fn of(d: &Descriptor) -> Blob {
        Blob { media_type: d.media_type.clone(), digest: d.digest, size: d.size }
    }
}

/// One disk image file of one platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    /// `raw`, `qcow2`, `vhd`, `gce` or `initramfs`.
    pub format: String,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Hex dm-verity root hash of the root partition, when the disk has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity_root_hash: Option<String>,
    /// The disk artifact manifest that lists this file.
    pub artifact: Digest,
}

/// What one platform of the image consists of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformRelease {
    /// `os/arch[/variant]`.
    pub platform: String,
    pub manifest: Blob,
    pub config: Blob,
    /// Disk files, sorted by format then digest.
    pub disks: Vec<Disk>,
    /// SBOM artifact manifests attached to this platform's manifest, sorted.
    pub sboms: Vec<Digest>,
}

/// The kiln that built the image, as its provenance records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuiltBy {
    pub name: String,
    pub version: String,
    /// kiln's output-format version.
    pub format: String,
}

/// A release record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Release {
    /// [`SCHEMA`].
    pub schema: String,
    /// The image name.
    pub name: String,
    /// The image version.
    pub version: String,
    /// The image index (or manifest, for a single-platform image without an index).
    pub image: Blob,
    /// One entry per platform, in the index's order.
    pub platforms: Vec<PlatformRelease>,
    /// Signature artifact manifests over the image, sorted.
    pub signatures: Vec<Digest>,
    /// Provenance artifact manifests of the image, sorted.
    pub provenance: Vec<Digest>,
    /// sha256 of the recipe file's bytes (attached beside the provenance).
    pub recipe: Digest,
    /// sha256 of the lock file's bytes (attached beside the provenance).
    pub lock: Digest,
    /// The SOURCE_DATE_EPOCH of the build.
    pub source_date_epoch: i64,
    pub builder: BuiltBy,
}

/// A release read back from the store: its id, manifest descriptor and record.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The release id: the digest of the artifact manifest.
    pub id: Digest,
    /// That manifest's descriptor (subject of approvals and release signatures).
    pub descriptor: Descriptor,
    /// The record.
    pub release: Release,
}

/// The one field that says what a document is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaTypeOnly {
    media_type: Option<String>,
}

/// The disk format a disk file's media type names.
fn disk_format(media: &str) -> Option<&'static str> {
    Some(match media {
        "application/vnd.kiln.disk.raw.v1" => "raw",
        "application/vnd.kiln.disk.qcow2.v1" => "qcow2",
        "application/vnd.kiln.disk.vhd.v1" => "vhd",
        "application/vnd.kiln.disk.gce.v1.tar+gzip" => "gce",
        "application/vnd.kiln.initramfs.v1.cpio+gzip" => "initramfs",
        _ => return None,
    })
}

/// Which provenance a record may take its recipe, lock, epoch and builder from: never one
/// merely found attached, since anyone who can write to the store can attach one.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// A provenance whose DSSE envelope verifies with one of these keys and whose statement's
    /// subject is the image.
    Keys(&'a [PublicKey]),
    /// One of these provenance artifacts: those a record names, when the record is checked
    /// against the store (their signatures are the image audit's to check).
    Named(&'a [Digest]),
}

/// Describes the stored image at `root` as a release record, reading (and verifying) its
/// index, manifests and referrers, and taking the build's facts from the first provenance
/// (by digest) that `trust` admits.
pub async fn describe(store: &Store, root: &Descriptor, trust: Trust<'_>) -> Result<Release> {
    let annotations = match root.media_type.as_str() {
        media_type::IMAGE_INDEX => store.get_json::<ImageIndex>(&root.digest).await?.annotations,
        media_type::IMAGE_MANIFEST => {
            store.get_json::<ImageManifest>(&root.digest).await?.annotations
        }
        other => {
            return Err(ReleaseError::NotAnImage {
                digest: root.digest,
                media_type: other.to_string(),
            })
        }
    };
    let mut platforms = Vec::new();
    for desc in kiln_attest::publish::manifests(store, root).await? {
        let manifest: ImageManifest = store.get_json(&desc.digest).await?;
        let mut disks = Vec::new();
        let mut sboms = Vec::new();
        for a in artifact::referrers(store, &desc.digest).await? {
            match a.artifact_type() {
                DISK_ARTIFACT => {
                    let root_hash = a.manifest.annotations.get(ROOT_HASH_ANNOTATION);
                    for layer in &a.manifest.layers {
                        let Some(format) = disk_format(&layer.media_type) else { continue };
                        disks.push(Disk {
                            format: format.to_string(),
                            media_type: layer.media_type.clone(),
                            digest: layer.digest,
                            size: layer.size,
                            verity_root_hash: root_hash.cloned(),
                            artifact: a.descriptor.digest,
                        });
                    }
                }
                artifact::SBOM_ARTIFACT => sboms.push(a.descriptor.digest),
                _ => {}
            }
        }
        disks.sort_by(|a, b| (&a.format, a.digest).cmp(&(&b.format, b.digest)));
        sboms.sort();
        let platform = match &desc.platform {
            Some(p) => p.to_string(),
            None => {
                let config: kiln_oci::ImageConfig = store.get_json(&manifest.config.digest).await?;
                format!("{}/{}", config.os, config.architecture)
            }
        };
        platforms.push(PlatformRelease {
            platform,
            manifest: Blob::of(&desc),
            config: Blob::of(&manifest.config),
            disks,
            sboms,
        });
    }

    let mut signatures = Vec::new();
    let mut provenance = Vec::new();
    let mut statement = None;
    let mut refused = Vec::new();
    for a in artifact::referrers(store, &root.digest).await? {
        match a.artifact_type() {
            artifact::SIGNATURE_ARTIFACT => signatures.push(a.descriptor.digest),
            artifact::ATTESTATION_ARTIFACT => {
                provenance.push(a.descriptor.digest);
                // Referrers come sorted by digest, so the first statement is always the same.
                if statement.is_none() {
                    match read_statement(store, &a, root, trust).await? {
                        Ok(s) => statement = Some(s),
                        Err(why) => refused.push(format!("{}: {why}", a.descriptor.digest)),
                    }
                }
            }
            _ => {}
        }
    }
    let statement: Statement = match statement {
        Some(s) => s,
        None if provenance.is_empty() => {
            return Err(ReleaseError::NoProvenance { image: root.digest })
        }
        None => {
            return Err(ReleaseError::ProvenanceUntrusted {
                image: root.digest,
                detail: refused.join("; "),
            })
        }
    };
    let params = &statement.predicate.build_definition.external_parameters;
    let versions = &statement.predicate.run_details.builder.version;
    let get = |k: &str| versions.get(k).cloned().unwrap_or_default();
    let name = annotations
        .get("org.opencontainers.image.title")
        .cloned()
        .or_else(|| statement.subject.first().and_then(|s| s.name.clone()))
        .unwrap_or_default();
    Ok(Release {
        schema: SCHEMA.to_string(),
        name,
        version: annotations.get("org.opencontainers.image.version").cloned().unwrap_or_default(),
        image: Blob::of(root),
        platforms,
        signatures,
        provenance,
        recipe: params.recipe.digest,
        lock: params.lock,
        source_date_epoch: params.epoch,
        builder: BuiltBy { name: "kiln".to_string(), version: get("kiln"), format: get("format") },
    })
}

/// The statement of provenance artifact `a` of `root`, if `trust` admits it; else why not.
async fn read_statement(
    store: &Store,
    a: &artifact::Attached,
    root: &Descriptor,
    trust: Trust<'_>,
) -> Result<std::result::Result<Statement, String>> {
    if let Trust::Named(named) = trust {
        if !named.contains(&a.descriptor.digest) {
            return Ok(Err("not a provenance the record names".to_string()));
        }
    }
    if a.subject() != Some(root.digest) {
        return Ok(Err("its manifest's subject is another image".to_string()));
    }
    let Some(layer) = a.manifest.layers.iter().find(|l| l.media_type == ENVELOPE_MEDIA_TYPE) else {
        return Ok(Err("it has no DSSE envelope".to_string()));
    };
    if layer.size > ENVELOPE_LIMIT {
        return Ok(Err(format!("its envelope is larger than {ENVELOPE_LIMIT} bytes")));
    }
    let bytes = store.get_described(layer).await?;
    let Ok(envelope) = serde_json::from_slice::<Envelope>(&bytes) else {
        return Ok(Err("its envelope is not a DSSE envelope".to_string()));
    };
    if envelope.payload_type != kiln_attest::provenance::PAYLOAD_TYPE {
        return Ok(Err(format!("its payloadType is {:?}", envelope.payload_type)));
    }
    if let Trust::Keys(keys) = trust {
        if !keys.iter().any(|k| envelope.verified_by(k).unwrap_or(false)) {
            return Ok(Err(format!(
                "its signature does not verify with any given key ({})",
                key_ids(keys)
            )));
        }
    }
    let Ok(statement) = serde_json::from_slice::<Statement>(&envelope.payload_bytes()?) else {
        return Ok(Err("its statement is malformed".to_string()));
    };
    if !statement.subject.iter().any(|s| s.sha256() == Some(root.digest)) {
        return Ok(Err(format!("its statement's subject is not image {}", root.digest)));
    }
    Ok(Ok(statement))
}

/// Key ids for a message.
fn key_ids(keys: &[PublicKey]) -> String {
    if keys.is_empty() {
        return "none was given".to_string();
    }
    keys.iter()
        .map(|k| k.key_id().map_or_else(|e| e.to_string(), |id| id.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The record's canonical bytes.
pub fn to_bytes(release: &Release) -> Result<Vec<u8>> {
    Ok(kiln_oci::to_canonical_json(release)?)
}

/// Stores `release` as an artifact whose subject is its image; returns it loaded, with its
/// id. Publishing the same record again writes nothing new and gives the same id.
pub async fn publish(store: &Store, release: &Release) -> Result<Loaded> {
    let subject =
        Descriptor::new(&release.image.media_type, release.image.digest, release.image.size);
    let part = Part {
        media_type: RECORD_MEDIA_TYPE,
        bytes: to_bytes(release)?,
        annotations: BTreeMap::new(),
    };
    let descriptor =
        artifact::attach(store, &subject, RELEASE_ARTIFACT, vec![part], BTreeMap::new()).await?;
    Ok(Loaded { id: descriptor.digest, descriptor, release: release.clone() })
}

/// Reads the release `id`, refusing anything that is not a release artifact holding a
/// well-formed record of its own subject.
pub async fn load(store: &Store, id: &Digest) -> Result<Loaded> {
    let not = |reason: String| ReleaseError::NotARelease { digest: *id, reason };
    let bytes = match store.get_blob_bounded(id, MANIFEST_LIMIT).await {
        Ok(bytes) => bytes,
        Err(StoreError::TooLarge { .. }) => {
            return Err(not(format!("it is larger than {MANIFEST_LIMIT} bytes")))
        }
        // An id the user typed that is not there is a mistake in the command (exit 1), not
        // a store missing a blob something names.
        Err(StoreError::NotFound { .. }) => return Err(not("it is not in the store".into())),
        Err(e) => return Err(e.into()),
    };
    let kind: MediaTypeOnly = serde_json::from_slice(&bytes)
        .map_err(|e| not(format!("it is not a JSON document ({e})")))?;
    if kind.media_type.as_deref() != Some(media_type::IMAGE_MANIFEST) {
        return Err(not(format!(
            "it is a {}, not a release artifact manifest",
            kind.media_type.as_deref().unwrap_or("document without mediaType")
        )));
    }
    let manifest: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| not(format!("it is not an OCI manifest ({e})")))?;
    if manifest.artifact_type.as_deref() != Some(RELEASE_ARTIFACT) {
        return Err(not(format!(
            "its artifactType is {}, not {RELEASE_ARTIFACT}",
            manifest.artifact_type.as_deref().unwrap_or("absent")
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(not(format!("it has {} layers, not one record", manifest.layers.len())));
    };
    if layer.media_type != RECORD_MEDIA_TYPE || layer.size > RECORD_LIMIT {
        return Err(not(format!(
            "its layer is a {} of {} bytes, not a record",
            layer.media_type, layer.size
        )));
    }
    let record = store.get_blob_bounded(&layer.digest, RECORD_LIMIT).await?;
    let release: Release = serde_json::from_slice(&record)
        .map_err(|e| not(format!("its record is malformed ({e})")))?;
    if release.schema != SCHEMA {
        return Err(not(format!("its record's schema is {:?}, not {SCHEMA:?}", release.schema)));
    }
    let subject = manifest.subject.as_ref().map(|s| s.digest);
    if subject != Some(release.image.digest) {
        return Err(ReleaseError::Unverified {
            release: *id,
            detail: format!(
                "its manifest's subject is {}, but the record names image {}",
                subject.map_or("absent".to_string(), |d| d.to_string()),
                release.image.digest
            ),
        });
    }
    let mut descriptor = Descriptor::new(media_type::IMAGE_MANIFEST, *id, bytes.len() as u64);
    descriptor.artifact_type = Some(RELEASE_ARTIFACT.to_string());
    Ok(Loaded { id: *id, descriptor, release })
}

/// Checks the record against the store: the image is described the same way now (index,
/// manifests, configs, disks, recipe, lock, epoch, builder), every attestation the record
/// names is still attached, and every config and disk file is present and re-hashes to the
/// size the record gives. Returns the number of bytes re-hashed.
pub async fn check(store: &Store, loaded: &Loaded) -> Result<u64> {
    let r = &loaded.release;
    let fail = |detail: String| ReleaseError::Unverified { release: loaded.id, detail };
    let root = Descriptor::new(&r.image.media_type, r.image.digest, r.image.size);
    let now = match describe(store, &root, Trust::Named(&r.provenance)).await {
        Ok(now) => now,
        Err(ReleaseError::Store(
            e @ (StoreError::DigestMismatch { .. } | StoreError::NotFound { .. }),
        )) => return Err(fail(e.to_string())),
        Err(e) => return Err(e),
    };
    let subset = |what: &str, named: &[Digest], attached: &[Digest]| match named
        .iter()
        .find(|d| !attached.contains(d))
    {
        Some(d) => Err(fail(format!("the {what} {d} it names is no longer attached"))),
        None => Ok(()),
    };
    subset("signature", &r.signatures, &now.signatures)?;
    subset("provenance", &r.provenance, &now.provenance)?;
    if r.platforms.len() != now.platforms.len() {
        return Err(fail(format!(
            "it names {} platforms, the image has {}",
            r.platforms.len(),
            now.platforms.len()
        )));
    }
    for (want, have) in r.platforms.iter().zip(&now.platforms) {
        subset("SBOM", &want.sboms, &have.sboms)?;
        let same = want.platform == have.platform
            && want.manifest == have.manifest
            && want.config == have.config
            && want.disks == have.disks;
        if !same {
            return Err(fail(format!(
                "platform {} differs from the stored image (manifest, config or disks)",
                want.platform
            )));
        }
    }
    let head = (&r.name, &r.version, &r.image, r.recipe, r.lock, r.source_date_epoch, &r.builder);
    let now_head = (
        &now.name,
        &now.version,
        &now.image,
        now.recipe,
        now.lock,
        now.source_date_epoch,
        &now.builder,
    );
    if head != now_head {
        return Err(fail("its name, version, image, recipe, lock, epoch or builder differ from the stored image's provenance".to_string()));
    }
    let mut hashed = 0;
    let files = r.platforms.iter().flat_map(|p| {
        std::iter::once(("config", p.config.digest, p.config.size))
            .chain(p.disks.iter().map(|d| ("disk", d.digest, d.size)))
    });
    for (what, digest, size) in files {
        match store.verify_blob(&digest).await {
            Ok(found) if found == size => hashed += found,
            Ok(found) => {
                return Err(fail(format!(
                    "{what} {digest} has {found} bytes, the record says {size}"
                )))
            }
            Err(e @ (StoreError::DigestMismatch { .. } | StoreError::NotFound { .. })) => {
                return Err(fail(format!("{what} {digest}: {e}")))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(hashed)
}

/// What `kiln release` made.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The release id.
    pub release: Digest,
    pub name: String,
    pub version: String,
    /// The image index.
    pub image: Digest,
    /// The signature over the release manifest, with `--sign`.
    pub signature: Option<Digest>,
    /// The signing key's id, with `--sign`.
    pub key_id: Option<Digest>,
    pub record: Release,
}

/// Describes the image at `root`, taking the build's facts only from a provenance that
/// verifies with one of `provenance_keys`, stores its record and, with `key`, signs the
/// release (a cosign signature over the release manifest, attached as its referrer).
pub async fn release(
    store: &Store,
    root: &Descriptor,
    provenance_keys: &[PublicKey],
    key: Option<&kiln_attest::PrivateKey>,
) -> Result<Published> {
    let loaded =
        publish(store, &describe(store, root, Trust::Keys(provenance_keys)).await?).await?;
    let (signature, key_id) = match key {
        Some(key) => {
            let (sig, id) =
                kiln_attest::publish::sign(store, &loaded.descriptor, &loaded.release.name, key)
                    .await?;
            (Some(sig.digest), Some(id.0))
        }
        None => (None, None),
    };
    Ok(Published {
        release: loaded.id,
        name: loaded.release.name.clone(),
        version: loaded.release.version.clone(),
        image: loaded.release.image.digest,
        signature,
        key_id,
        record: loaded.release,
    })
}

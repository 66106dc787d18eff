//! The audit of one stored image, offline: every blob re-hashed, every layer's diff_id
//! recomputed, every signature and DSSE envelope checked against the auditor's keys, the
//! provenance's subject and the SBOMs' files compared with the image itself.
//!
//! Problems are findings, not errors: the audit goes on and reports all it sees. Only a
//! failing store (not a wrong blob) ends it early.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use kiln_oci::{Descriptor, Digest, ImageConfig, ImageManifest};
use kiln_store::{Store, StoreError};
use serde::Serialize;

use crate::artifact::{self, Attached};
use crate::contents::{self, LayerContents};
use crate::dsse::{Envelope, ENVELOPE_MEDIA_TYPE};
use crate::provenance::{self, Statement};
use crate::sbom::Document;
use crate::simple_signing::Payload;
use crate::{publish, AttestError, KeyId, PublicKey};

/// How a finding bears on the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Checked and holds.
    Ok,
    /// Checked and does not hold: the image fails verification.
    Fail,
    /// Seen but not relied on (a signature by a key the auditor did not give).
    Note,
}

/// One thing the audit checked.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// The verdict.
    pub status: Status,
    /// What was checked: `blob`, `diff_id`, `signature`, `provenance`, `sbom`.
    pub check: &'static str,
    /// What was found, naming digests and paths.
    pub message: String,
}

/// What a verified provenance records, for a rebuild.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The statement.
    pub statement: Statement,
    /// The recipe file's bytes.
    pub recipe: Bytes,
    /// The lock file's bytes.
    pub lock: Bytes,
}

/// The audit's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The audited image.
    pub image: Digest,
    /// Every finding, in the order checked.
    pub findings: Vec<Finding>,
    /// Keys whose signatures over the image were accepted.
    pub signers: Vec<KeyId>,
    /// The provenance, when one verified with a given key.
    #[serde(skip)]
    pub recorded: Option<Recorded>,
}

impl Report {
    /// True when no finding failed.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.status != Status::Fail)
    }

    fn add(&mut self, status: Status, check: &'static str, message: String) {
        self.findings.push(Finding { status, check, message });
    }
    fn ok(&mut self, check: &'static str, message: String) {
        self.add(Status::Ok, check, message);
    }
    fn fail(&mut self, check: &'static str, message: String) {
        self.add(Status::Fail, check, message);
    }
}

/// Reads a blob; a missing or corrupt one becomes a failed finding and `None`.
async fn blob(
    store: &Store,
    report: &mut Report,
    what: &str,
    digest: &Digest,
) -> Result<Option<Bytes>, AttestError> {
    match store.get_blob(digest).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e @ (StoreError::DigestMismatch { .. } | StoreError::NotFound { .. })) => {
            report.fail("blob", format!("{what} {digest}: {e}"));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Decodes JSON read by [`blob`]; malformed JSON becomes a failed finding.
fn json<T: serde::de::DeserializeOwned>(
    report: &mut Report,
    check: &'static str,
    what: &str,
    bytes: &[u8],
) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            report.fail(check, format!("{what} is not valid JSON of the expected shape: {e}"));
            None
        }
    }
}

/// The key among `keys` that made `signature` over `message`.
fn signer(keys: &[PublicKey], message: &[u8], signature: &[u8]) -> Option<KeyId> {
    keys.iter().find(|k| k.verify(message, signature)).and_then(|k| k.key_id().ok())
}

/// Audits the image at `root` against the auditor's `keys`.
pub async fn verify(
    store: &Store,
    root: &Descriptor,
    keys: &[PublicKey],
) -> Result<Report, AttestError> {
    let mut report =
        Report { image: root.digest, findings: Vec::new(), signers: Vec::new(), recorded: None };
    if blob(store, &mut report, "image", &root.digest).await?.is_none() {
        return Ok(report);
    }
    report.ok("blob", format!("image {} re-hashed", root.digest));
    let manifests = publish::manifests(store, root).await?;
    for desc in &manifests {
        let Some(layers) = check_manifest(store, &mut report, desc).await? else { continue };
        check_sboms(store, &mut report, desc, &contents::image_files(&layers)).await?;
    }
    check_signatures(store, &mut report, root, keys).await?;
    check_provenance(store, &mut report, root, keys).await?;
    Ok(report)
}

/// Re-hashes a manifest, its config and layers and recomputes every diff_id; returns the
/// layers read back when all of them could be.
async fn check_manifest(
    store: &Store,
    report: &mut Report,
    desc: &Descriptor,
) -> Result<Option<Vec<LayerContents>>, AttestError> {
    let Some(bytes) = blob(store, report, "manifest", &desc.digest).await? else { return Ok(None) };
    let Some(manifest) =
        json::<ImageManifest>(report, "blob", &format!("manifest {}", desc.digest), &bytes)
    else {
        return Ok(None);
    };
    let config_digest = manifest.config.digest;
    let Some(bytes) = blob(store, report, "config", &config_digest).await? else { return Ok(None) };
    let Some(config) =
        json::<ImageConfig>(report, "blob", &format!("config {config_digest}"), &bytes)
    else {
        return Ok(None);
    };
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        report.fail(
            "diff_id",
            format!(
                "config {config_digest} lists {} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        );
    }
    let mut layers = Vec::new();
    let mut whole = true;
    for (i, layer) in manifest.layers.iter().enumerate() {
        let read = match crate::publish::fetch_layer(store, layer).await {
            Ok(read) => read,
            Err(AttestError::Store(
                e @ (StoreError::DigestMismatch { .. } | StoreError::NotFound { .. }),
            )) => {
                report.fail("blob", format!("layer {i} {}: {e}", layer.digest));
                whole = false;
                continue;
            }
            Err(AttestError::Contents(e)) => {
                report.fail("diff_id", format!("layer {i}: {e}"));
                whole = false;
                continue;
            }
            Err(e) => return Err(e),
        };
        match config.rootfs.diff_ids.get(i) {
            Some(want) if *want == read.diff_id => {
                report.ok(
                    "diff_id",
                    format!("layer {i} {} decompresses to diff_id {want}", layer.digest),
                );
            }
            Some(want) => report.fail(
                "diff_id",
                format!(
                "layer {i} {} decompresses to {}, but config {config_digest} says diff_id {want}",
                layer.digest, read.diff_id
            ),
            ),
            None => {}
        }
        layers.push(read);
    }
    report.ok("blob", format!("manifest {} and config {config_digest} re-hashed", desc.digest));
    Ok(whole.then_some(layers))
}

/// Reads the referrers of `subject`, failing any whose manifest names another subject
/// (an artifact copied from another image).
async fn attached(
    store: &Store,
    report: &mut Report,
    subject: &Digest,
    artifact_type: &str,
) -> Result<Vec<Attached>, AttestError> {
    let mut out = Vec::new();
    for a in artifact::referrers(store, subject).await? {
        if a.artifact_type() != artifact_type {
            continue;
        }
        match a.subject() {
            Some(s) if s == *subject => out.push(a),
            other => report.fail(check_of(artifact_type), format!(
                "{} artifact {} is listed for {subject} but its subject is {}: copied from another image?",
                check_of(artifact_type),
                a.descriptor.digest,
                other.map_or_else(|| "missing".to_string(), |d| d.to_string())
            )),
        }
    }
    Ok(out)
}

fn check_of(artifact_type: &str) -> &'static str {
    match artifact_type {
        artifact::SIGNATURE_ARTIFACT => "signature",
        artifact::SBOM_ARTIFACT => "sbom",
        _ => "provenance",
    }
}

async fn check_signatures(
    store: &Store,
    report: &mut Report,
    root: &Descriptor,
    keys: &[PublicKey],
) -> Result<(), AttestError> {
    let given: Vec<KeyId> = keys.iter().filter_map(|k| k.key_id().ok()).collect();
    for sig in attached(store, report, &root.digest, artifact::SIGNATURE_ARTIFACT).await? {
        let at = sig.descriptor.digest;
        let Some(layer) = sig.manifest.layers.first() else {
            report.fail("signature", format!("signature {at} has no payload layer"));
            continue;
        };
        let Some(payload) = blob(store, report, "signature payload", &layer.digest).await? else {
            continue;
        };
        let Some(claims) =
            json::<Payload>(report, "signature", &format!("signature {at} payload"), &payload)
        else {
            continue;
        };
        let signed = claims.critical.image.docker_manifest_digest;
        if signed != root.digest {
            report.fail(
                "signature",
                format!(
                    "signature {at} signs {signed}, not this image {}: copied from another image?",
                    root.digest
                ),
            );
            continue;
        }
        let raw = layer
            .annotations
            .get(artifact::SIGNATURE_ANNOTATION)
            .and_then(|s| BASE64.decode(s).ok());
        let Some(raw) = raw else {
            report.fail(
                "signature",
                format!(
                    "signature {at} has no valid {} annotation",
                    artifact::SIGNATURE_ANNOTATION
                ),
            );
            continue;
        };
        let claimed = sig
            .descriptor
            .annotations
            .get(artifact::KEY_ID_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        match signer(keys, &payload, &raw) {
            Some(id) => {
                report.ok("signature", format!("signature {at} by key {id} verifies"));
                report.signers.push(id);
            }
            None if given.iter().any(|g| g.to_string() == claimed) => report.fail("signature", format!(
                "signature {at} claims key {claimed} but does not verify with it: the signature or payload was altered"
            )),
            None => report.add(Status::Note, "signature", format!(
                "signature {at} is by a key that was not given ({}); not accepted",
                if claimed.is_empty() { "unnamed" } else { &claimed }
            )),
        }
    }
    if report.signers.is_empty() {
        let ids: Vec<String> = given.iter().map(|g| g.to_string()).collect();
        report.fail(
            "signature",
            format!("no signature over {} by any given key ({})", root.digest, ids.join(", ")),
        );
    }
    Ok(())
}

async fn check_provenance(
    store: &Store,
    report: &mut Report,
    root: &Descriptor,
    keys: &[PublicKey],
) -> Result<(), AttestError> {
    let all = attached(store, report, &root.digest, artifact::ATTESTATION_ARTIFACT).await?;
    if all.is_empty() {
        report.fail("provenance", format!("no provenance is attached to {}", root.digest));
    }
    for att in all {
        let at = att.descriptor.digest;
        let layer = |media: &str| {
            att.manifest.layers.iter().find(|l| l.media_type == media).map(|l| l.digest)
        };
        let Some(env_digest) = layer(ENVELOPE_MEDIA_TYPE) else {
            report.fail("provenance", format!("provenance {at} has no DSSE envelope layer"));
            continue;
        };
        let Some(bytes) = blob(store, report, "provenance envelope", &env_digest).await? else {
            continue;
        };
        let Some(envelope) =
            json::<Envelope>(report, "provenance", &format!("provenance {at} envelope"), &bytes)
        else {
            continue;
        };
        if envelope.payload_type != provenance::PAYLOAD_TYPE {
            report.fail(
                "provenance",
                format!(
                    "provenance {at}: DSSE payloadType is {:?}, expected {:?}",
                    envelope.payload_type,
                    provenance::PAYLOAD_TYPE
                ),
            );
        }
        let mut verified = None;
        for key in keys {
            if envelope.verified_by(key).unwrap_or(false) {
                verified = key.key_id().ok();
                break;
            }
        }
        let Some(id) = verified else {
            report.fail("provenance", format!(
                "provenance {at}: the DSSE signature does not verify with any given key over PAE(payloadType, payload); \
                 the envelope was altered or signed by another key"
            ));
            continue;
        };
        let Ok(body) = envelope.payload_bytes() else {
            report.fail("provenance", format!("provenance {at}: payload is not base64"));
            continue;
        };
        let Some(statement) =
            json::<Statement>(report, "provenance", &format!("provenance {at} statement"), &body)
        else {
            continue;
        };
        let subjects: Vec<Option<Digest>> = statement.subject.iter().map(|s| s.sha256()).collect();
        if !subjects.contains(&Some(root.digest)) {
            let named: Vec<String> = statement
                .subject
                .iter()
                .map(|s| {
                    format!(
                        "{} {}",
                        s.name.as_deref().unwrap_or("-"),
                        s.sha256().map_or("-".into(), |d| d.to_string())
                    )
                })
                .collect();
            report.fail(
                "provenance",
                format!(
                    "provenance {at} subject names {}, not this image {}",
                    named.join(", "),
                    root.digest
                ),
            );
            continue;
        }
        let params = &statement.predicate.build_definition.external_parameters;
        let recipe = match layer(artifact::RECIPE_LAYER) {
            Some(d) if d == params.recipe.digest => {
                blob(store, report, "recorded recipe", &d).await?
            }
            _ => {
                report.fail(
                    "provenance",
                    format!(
                        "provenance {at}: the recipe {} it names is not attached",
                        params.recipe.digest
                    ),
                );
                None
            }
        };
        let lock = match layer(artifact::LOCK_LAYER) {
            Some(d) if d == params.lock => blob(store, report, "recorded lock", &d).await?,
            _ => {
                report.fail(
                    "provenance",
                    format!("provenance {at}: the lock {} it names is not attached", params.lock),
                );
                None
            }
        };
        report.ok(
            "provenance",
            format!(
                "provenance {at} signed by key {id}: recipe {} ({}), epoch {}",
                params.recipe.path, params.recipe.digest, params.epoch
            ),
        );
        if let (Some(recipe), Some(lock)) = (recipe, lock) {
            report.recorded.get_or_insert(Recorded { statement, recipe, lock });
        }
    }
    Ok(())
}

async fn check_sboms(
    store: &Store,
    report: &mut Report,
    manifest: &Descriptor,
    files: &BTreeMap<String, Digest>,
) -> Result<(), AttestError> {
    let all = attached(store, report, &manifest.digest, artifact::SBOM_ARTIFACT).await?;
    if all.is_empty() {
        report.fail("sbom", format!("no SBOM is attached to manifest {}", manifest.digest));
    }
    for sbom in all {
        let at = sbom.descriptor.digest;
        let Some(layer) = sbom.manifest.layers.first() else {
            report.fail("sbom", format!("SBOM {at} has no document layer"));
            continue;
        };
        let Some(bytes) = blob(store, report, "SBOM document", &layer.digest).await? else {
            continue;
        };
        let Some(doc) = json::<Document>(report, "sbom", &format!("SBOM {at}"), &bytes) else {
            continue;
        };
        let listed = doc.file_digests();
        let before = report.findings.len();
        for (path, digest) in files {
            match listed.get(path) {
                None => report.fail("sbom", format!("SBOM {at} omits {path} ({digest})")),
                Some(Some(d)) if d == digest => {}
                Some(other) => report.fail(
                    "sbom",
                    format!(
                        "SBOM {at} gives {path} as {}, but the image has {digest}",
                        other.map_or_else(|| "no sha256".to_string(), |d| d.to_string())
                    ),
                ),
            }
        }
        for path in listed.keys().filter(|p| !files.contains_key(*p)) {
            report
                .fail("sbom", format!("SBOM {at} lists {path}, which is not a file of the image"));
        }
        if report.findings.len() == before {
            report.ok(
                "sbom",
                format!(
                    "SBOM {at} lists exactly the {} files of manifest {}",
                    files.len(),
                    manifest.digest
                ),
            );
        }
    }
    Ok(())
}

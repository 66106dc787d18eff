//! What refers to the image: signatures, provenance and SBOMs checked against the auditor's
//! keys, and every other referrer blob re-hashed.

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kiln_oci::{Descriptor, Digest, ImageManifest};
use kiln_store::{one_line, Store};

use super::{blob, json, Policy, Recorded, Report, Requirement};
use crate::artifact::{self, Attached};
use crate::dsse::{Envelope, ENVELOPE_MEDIA_TYPE};
use crate::provenance::{self, Statement};
use crate::sbom::Document;
use crate::simple_signing::Payload;
use crate::{AttestError, KeyId, PublicKey};

/// Every artifact that refers to `subject`, its manifest read once; a listing or manifest
/// that cannot be read is a failed finding.
pub(super) async fn referrers(
    store: &Store,
    report: &mut Report,
    subject: &Digest,
) -> Result<Vec<Attached>, AttestError> {
    let listed = match store.referrers(subject).await {
        Ok(listed) => listed,
        Err(e) if e.is_integrity_failure() => {
            report.fail(
                "blob",
                format!("the referrers of {subject} cannot be read: {}", one_line(&e)),
            );
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for descriptor in listed {
        let what = "referrer manifest";
        let Some(bytes) = blob(store, report, what, &descriptor).await? else { continue };
        let Some(manifest) =
            json::<ImageManifest>(report, "blob", &format!("{what} {}", descriptor.digest), &bytes)
        else {
            continue;
        };
        out.push(Attached { descriptor, manifest });
    }
    Ok(out)
}

/// The artifacts of `artifact_type` among `all`, failing any whose manifest names another
/// subject than `subject` (an artifact copied from another image).
fn of_type<'a>(
    report: &mut Report,
    all: &'a [Attached],
    subject: &Digest,
    artifact_type: &str,
) -> Vec<&'a Attached> {
    let check = check_of(artifact_type);
    let mut out = Vec::new();
    for a in all.iter().filter(|a| a.artifact_type() == artifact_type) {
        match a.subject() {
            Some(s) if s == *subject => out.push(a),
            other => report.fail(check, format!(
                "{check} artifact {} is listed for {subject} but its subject is {}: copied from another image?",
                a.descriptor.digest,
                other.map_or_else(|| "missing".to_string(), |d| d.to_string())
            )),
        }
    }
    out
}

/// Re-hashes every config and layer of `artifacts` that no other check read (disk images,
/// and whatever else refers to the image).
pub(super) async fn check_remaining_blobs(
    store: &Store,
    report: &mut Report,
    artifacts: &[Attached],
) -> Result<(), AttestError> {
    let mut count = 0usize;
    for a in artifacts {
        let parts = std::iter::once(&a.manifest.config).chain(&a.manifest.layers);
        for part in parts {
            if !report.read.insert(part.digest) {
                continue;
            }
            match store.verify_blob(&part.digest).await {
                Ok(_) => count += 1,
                Err(e) if e.is_integrity_failure() => report.fail(
                    "blob",
                    format!(
                        "referrer {} {} {}: {}",
                        a.descriptor.digest,
                        part.media_type,
                        part.digest,
                        one_line(&e)
                    ),
                ),
                Err(e) => return Err(e.into()),
            }
        }
    }
    if count > 0 {
        report.ok("blob", format!("{count} more referrer blob(s) re-hashed"));
    }
    Ok(())
}

/// The key among `keys` that made `signature` over `message`.
fn signer(keys: &[PublicKey], message: &[u8], signature: &[u8]) -> Option<KeyId> {
    keys.iter().find(|k| k.verify(message, signature)).and_then(|k| k.key_id().ok())
}

fn check_of(artifact_type: &str) -> &'static str {
    match artifact_type {
        artifact::SIGNATURE_ARTIFACT => "signature",
        artifact::SBOM_ARTIFACT => "sbom",
        _ => "provenance",
    }
}

pub(super) async fn check_signatures(
    store: &Store,
    report: &mut Report,
    root: &Descriptor,
    artifacts: &[Attached],
    policy: &Policy,
) -> Result<(), AttestError> {
    let signatures = of_type(report, artifacts, &root.digest, artifact::SIGNATURE_ARTIFACT);
    let keys = &policy.keys;
    if keys.is_empty() {
        report
            .note("signature", format!("{} signature(s) attached, not checked", signatures.len()));
        return Ok(());
    }
    let given: Vec<KeyId> = keys.iter().filter_map(|k| k.key_id().ok()).collect();
    for sig in signatures {
        let at = sig.descriptor.digest;
        let Some(layer) = sig.manifest.layers.first() else {
            report.fail("signature", format!("signature {at} has no payload layer"));
            continue;
        };
        let Some(payload) = blob(store, report, "signature payload", layer).await? else {
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
                // A simple-signing payload vouches for the digest under one repository name;
                // containers/image policies compare it with where the image is pulled from.
                let repository = &claims.critical.identity.docker_reference;
                report.ok(
                    "signature",
                    format!("signature {at} by key {id} verifies, for repository {repository:?}"),
                );
                report.signers.push(id);
            }
            None if given.iter().any(|g| g.to_string() == claimed) => report.fail("signature", format!(
                "signature {at} claims key {claimed} but does not verify with it: the signature or payload was altered"
            )),
            None => report.note("signature", format!(
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

/// Checks the provenance attached to `root`; returns the SBOM documents that a verified
/// provenance names, when one names any.
pub(super) async fn check_provenance(
    store: &Store,
    report: &mut Report,
    root: &Descriptor,
    artifacts: &[Attached],
    policy: &Policy,
) -> Result<Option<BTreeSet<Digest>>, AttestError> {
    let all = of_type(report, artifacts, &root.digest, artifact::ATTESTATION_ARTIFACT);
    let required = policy.requires(Requirement::Provenance);
    if all.is_empty() {
        report.missing(
            required,
            "provenance",
            format!("no provenance is attached to {}", root.digest),
        );
    }
    let keys = &policy.keys;
    if keys.is_empty() {
        if !all.is_empty() {
            report.note(
                "provenance",
                format!("{} provenance document(s) attached, not checked", all.len()),
            );
        }
        return Ok(None);
    }
    let mut named: Option<BTreeSet<Digest>> = None;
    for att in all {
        let at = att.descriptor.digest;
        let layer = |media: &str| att.manifest.layers.iter().find(|l| l.media_type == media);
        let Some(envelope) = layer(ENVELOPE_MEDIA_TYPE) else {
            report.fail("provenance", format!("provenance {at} has no DSSE envelope layer"));
            continue;
        };
        let Some(bytes) = blob(store, report, "provenance envelope", envelope).await? else {
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
            Some(d) if d.digest == params.recipe.digest => {
                blob(store, report, "recorded recipe", d).await?
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
            Some(d) if d.digest == params.lock => blob(store, report, "recorded lock", d).await?,
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
        let sboms = statement
            .predicate
            .run_details
            .byproducts
            .iter()
            .filter(|b| b.name.as_deref() == Some(provenance::SBOM_BYPRODUCT));
        for sbom in sboms.filter_map(|b| b.sha256()) {
            named.get_or_insert_with(BTreeSet::new).insert(sbom);
        }
        if let (Some(recipe), Some(lock)) = (recipe, lock) {
            report.recorded.get_or_insert(Recorded { statement, recipe, lock });
        }
    }
    if required && report.recorded.is_none() {
        report.fail(
            "provenance",
            format!("no provenance of {} verifies with a given key", root.digest),
        );
    }
    Ok(named)
}

/// Checks the SBOMs attached to `manifest`: the files they list against `files` (the image's,
/// when all its layers could be read), and each document against the SBOMs a verified
/// provenance names (`named`).
pub(super) async fn check_sboms(
    store: &Store,
    report: &mut Report,
    manifest: &Descriptor,
    files: Option<&BTreeMap<String, Digest>>,
    artifacts: &[Attached],
    named: Option<&BTreeSet<Digest>>,
    policy: &Policy,
) -> Result<(), AttestError> {
    let all = of_type(report, artifacts, &manifest.digest, artifact::SBOM_ARTIFACT);
    let required = policy.requires(Requirement::Sbom);
    if all.is_empty() {
        report.missing(
            required,
            "sbom",
            format!("no SBOM is attached to manifest {}", manifest.digest),
        );
    }
    for sbom in all {
        let at = sbom.descriptor.digest;
        let Some(layer) = sbom.manifest.layers.first() else {
            report.fail("sbom", format!("SBOM {at} has no document layer"));
            continue;
        };
        let Some(bytes) = blob(store, report, "SBOM document", layer).await? else {
            continue;
        };
        let Some(doc) = json::<Document>(report, "sbom", &format!("SBOM {at}"), &bytes) else {
            continue;
        };
        bound(report, at, layer.digest, named, required && !policy.keys.is_empty());
        let Some(files) = files else { continue };
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

/// Judges whether the SBOM document `document` (of artifact `at`) is the one a signed
/// provenance names: a document re-stored with another package list is not.
fn bound(
    report: &mut Report,
    at: Digest,
    document: Digest,
    named: Option<&BTreeSet<Digest>>,
    required: bool,
) {
    match named {
        Some(n) if n.contains(&document) => report.ok(
            "sbom",
            format!("SBOM {at} document {document} is the one the signed provenance names"),
        ),
        Some(_) => report.fail(
            "sbom",
            format!(
                "SBOM {at} document {document} is not one the signed provenance names: it was \
                 altered or replaced"
            ),
        ),
        None if required => report.fail(
            "sbom",
            format!("SBOM {at} is bound to no signed provenance, so nothing vouches for it"),
        ),
        None if report.signatures_checked => report.note(
            "sbom",
            format!("SBOM {at} is bound to no signed provenance, so nothing vouches for it"),
        ),
        None => {}
    }
}

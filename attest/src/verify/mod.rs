//! The audit of one stored image, offline: every blob re-hashed (referrers' too), every
//! layer's diff_id recomputed, and, with the auditor's keys, every signature and DSSE envelope
//! checked, the provenance's subject and the SBOMs' files compared with the image itself and
//! each SBOM matched with the signed provenance that names it.
//!
//! Problems are findings, not errors: the audit goes on and reports all it sees. Only a
//! failing store (not a wrong or missing blob) ends it early.

mod attestations;
mod image;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use bytes::Bytes;
use kiln_oci::{media_type, Descriptor, Digest, ImageIndex};
use kiln_store::{one_line, Store};
use serde::Serialize;

use crate::provenance::Statement;
use crate::{AttestError, KeyId, PublicKey};

/// How a finding bears on the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Checked and holds.
    Ok,
    /// Checked and does not hold: the image fails verification.
    Fail,
    /// Seen but not relied on (a signature by a key the auditor did not give), or not there
    /// and not required.
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

/// An attestation whose absence fails the audit (`--require`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    /// An SBOM for every platform manifest, named by a signed provenance.
    Sbom,
    /// A provenance signed by a given key.
    Provenance,
}

/// A `--require` value kiln does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown requirement {0:?}: expected sbom or provenance")]
pub struct UnknownRequirement(String);

impl FromStr for Requirement {
    type Err = UnknownRequirement;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sbom" => Ok(Requirement::Sbom),
            "provenance" => Ok(Requirement::Provenance),
            other => Err(UnknownRequirement(other.to_string())),
        }
    }
}

/// What the auditor trusts and demands.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Keys whose signatures are accepted; none means an integrity audit only.
    pub keys: Vec<PublicKey>,
    /// Attestations that must be there (and, with keys, verify).
    pub require: BTreeSet<Requirement>,
}

impl Policy {
    fn requires(&self, r: Requirement) -> bool {
        self.require.contains(&r)
    }
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
    /// Whether signatures and attestations were checked (keys were given).
    pub signatures_checked: bool,
    /// The provenance, when one verified with a given key.
    #[serde(skip)]
    pub recorded: Option<Recorded>,
    /// Blobs already read (and re-hashed), so that none is read twice.
    #[serde(skip)]
    read: BTreeSet<Digest>,
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
    fn note(&mut self, check: &'static str, message: String) {
        self.add(Status::Note, check, message);
    }
    /// A failure when `required`, else a note.
    fn missing(&mut self, required: bool, check: &'static str, message: String) {
        if required {
            self.fail(check, message);
        } else {
            self.note(check, format!("{message} (--require {check} makes this fatal)"));
        }
    }
}

/// Reads the blob a descriptor names, checking its size as well as its digest; a missing,
/// corrupt or wrongly sized one becomes a failed finding and `None`.
async fn blob(
    store: &Store,
    report: &mut Report,
    what: &str,
    desc: &Descriptor,
) -> Result<Option<Bytes>, AttestError> {
    let digest = &desc.digest;
    report.read.insert(*digest);
    match store.get_described(desc).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_integrity_failure() => {
            report.fail("blob", format!("{what} {digest}: {}", one_line(&e)));
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

/// Checks only the signatures attached to `subject` (any manifest, such as a release's)
/// against `keys`: the findings are the signature checks alone, and with no key a note says
/// they were not checked.
pub async fn verify_signatures(
    store: &Store,
    subject: &Descriptor,
    keys: &[PublicKey],
) -> Result<Report, AttestError> {
    let mut report = Report {
        image: subject.digest,
        findings: Vec::new(),
        signers: Vec::new(),
        signatures_checked: !keys.is_empty(),
        recorded: None,
        read: BTreeSet::new(),
    };
    let policy = Policy { keys: keys.to_vec(), require: BTreeSet::new() };
    let artifacts = attestations::referrers(store, &mut report, &subject.digest).await?;
    attestations::check_signatures(store, &mut report, subject, &artifacts, &policy).await?;
    Ok(report)
}

/// Audits the image at `root` under `policy`.
pub async fn verify(
    store: &Store,
    root: &Descriptor,
    policy: &Policy,
) -> Result<Report, AttestError> {
    let mut report = Report {
        image: root.digest,
        findings: Vec::new(),
        signers: Vec::new(),
        signatures_checked: !policy.keys.is_empty(),
        recorded: None,
        read: BTreeSet::new(),
    };
    let Some(bytes) = blob(store, &mut report, "image", root).await? else {
        return Ok(report);
    };
    let manifests = match root.media_type.as_str() {
        media_type::IMAGE_INDEX => {
            let what = format!("image index {}", root.digest);
            let Some(index) = json::<ImageIndex>(&mut report, "blob", &what, &bytes) else {
                return Ok(report);
            };
            index.manifests
        }
        media_type::IMAGE_MANIFEST => vec![root.clone()],
        other => {
            return Err(AttestError::NotAnImage { digest: root.digest, media_type: other.into() })
        }
    };
    report.ok("blob", format!("image {} re-hashed", root.digest));
    let mut files: Vec<(Descriptor, Option<BTreeMap<String, Digest>>)> = Vec::new();
    for desc in manifests {
        let listed = image::check_manifest(store, &mut report, &desc).await?;
        files.push((desc, listed));
    }

    let mut artifacts = attestations::referrers(store, &mut report, &root.digest).await?;
    attestations::check_signatures(store, &mut report, root, &artifacts, policy).await?;
    let named_sboms =
        attestations::check_provenance(store, &mut report, root, &artifacts, policy).await?;
    for (desc, listed) in &files {
        let attached = attestations::referrers(store, &mut report, &desc.digest).await?;
        attestations::check_sboms(
            store,
            &mut report,
            desc,
            listed.as_ref(),
            &attached,
            named_sboms.as_ref(),
            policy,
        )
        .await?;
        artifacts.extend(attached);
    }
    attestations::check_remaining_blobs(store, &mut report, &artifacts).await?;
    if policy.keys.is_empty() {
        report.note(
            "signature",
            "signatures, provenance and SBOM bindings were not checked: no --key given".into(),
        );
    }
    Ok(report)
}

//! OCI 1.1 artifact manifests that refer to an image through `subject`, and their entries
//! under the store's `referrers/` keys.

use std::collections::BTreeMap;

use bytes::Bytes;
use kiln_oci::{media_type, to_canonical_json, Descriptor, Digest, ImageManifest};
use kiln_store::Store;

use crate::AttestError;

/// artifactType of a cosign signature.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// Media type of the simple-signing payload layer.
pub const SIMPLE_SIGNING_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature over the payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Manifest annotation naming the signer's key id; informational, never trusted.
pub const KEY_ID_ANNOTATION: &str = "dev.kiln.key-id";
/// artifactType and layer media type of an SPDX SBOM.
pub const SBOM_ARTIFACT: &str = "application/spdx+json";
/// artifactType of an in-toto attestation.
pub const ATTESTATION_ARTIFACT: &str = "application/vnd.in-toto+json";
/// Layer annotation naming an attestation's predicate type (as cosign writes it).
pub const PREDICATE_ANNOTATION: &str = "predicateType";
/// Media type of the recipe text kept beside the provenance.
pub const RECIPE_LAYER: &str = "application/vnd.kiln.recipe.v1+toml";
/// Media type of the lock file kept beside the provenance.
pub const LOCK_LAYER: &str = "application/vnd.kiln.lock.v1+toml";

/// One blob of an artifact and how it is described.
#[derive(Clone, Debug)]
pub struct Part {
    /// The layer's media type.
    pub media_type: &'static str,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Annotations on its descriptor.
    pub annotations: BTreeMap<String, String>,
}

/// Stores `parts` as the layers of an artifact manifest of `artifact_type` whose subject is
/// `subject`, and records it under `referrers/`. Returns the manifest's descriptor, carrying
/// the artifact type and manifest annotations as a referrers listing shows them.
pub async fn attach(
    store: &Store,
    subject: &Descriptor,
    artifact_type: &str,
    parts: Vec<Part>,
    annotations: BTreeMap<String, String>,
) -> Result<Descriptor, AttestError> {
    // The manifest's config is the empty blob; it must be stored like any other.
    store.put_blob(Bytes::from_static(kiln_oci::image::EMPTY_JSON)).await?;
    let mut layers = Vec::with_capacity(parts.len());
    for part in parts {
        let put = store.put_blob(Bytes::from(part.bytes)).await?;
        let mut desc = Descriptor::new(part.media_type, put.digest, put.size);
        desc.annotations = part.annotations;
        layers.push(desc);
    }
    let manifest = ImageManifest::artifact(artifact_type, layers, subject, annotations.clone());
    let bytes = to_canonical_json(&manifest)?;
    let put = store.put_blob(Bytes::from(bytes)).await?;
    let mut desc = Descriptor::new(media_type::IMAGE_MANIFEST, put.digest, put.size);
    desc.artifact_type = Some(artifact_type.to_string());
    desc.annotations = annotations;
    store.put_referrer(&subject.digest, &desc).await?;
    Ok(desc)
}

/// An artifact read back: its descriptor from the referrers listing and its manifest.
#[derive(Clone, Debug)]
pub struct Attached {
    /// The artifact manifest's descriptor.
    pub descriptor: Descriptor,
    /// The manifest itself, verified against its digest.
    pub manifest: ImageManifest,
}

impl Attached {
    /// The artifact type the manifest itself declares.
    pub fn artifact_type(&self) -> &str {
        self.manifest.artifact_type.as_deref().unwrap_or("")
    }

    /// The subject digest the manifest itself declares.
    pub fn subject(&self) -> Option<Digest> {
        self.manifest.subject.as_ref().map(|s| s.digest)
    }
}

/// Every artifact that refers to `subject`, with its manifest read and verified.
pub async fn referrers(store: &Store, subject: &Digest) -> Result<Vec<Attached>, AttestError> {
    let mut out = Vec::new();
    for descriptor in store.referrers(subject).await? {
        let manifest: ImageManifest = store.get_described_json(&descriptor).await?;
        out.push(Attached { descriptor, manifest });
    }
    Ok(out)
}

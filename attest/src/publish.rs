//! Producing attestations for a stored image: a cosign signature over its root digest, one
//! SPDX SBOM per platform manifest, and signed SLSA provenance.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kiln_oci::{media_type, Descriptor, Digest, ImageIndex, ImageManifest};
use kiln_store::Store;

use crate::artifact::{self, Part};
use crate::contents::{self, LayerContents};
use crate::dsse::{Envelope, ENVELOPE_MEDIA_TYPE};
use crate::provenance::{self, BuildFacts};
use crate::sbom::{self, SbomInput};
use crate::simple_signing::Payload;
use crate::stored_layer;
use crate::{AttestError, KeyId, PrivateKey};
use futures::{StreamExt as _, TryStreamExt as _};

/// The platform manifests of an image: the root itself, or every manifest of an index.
pub async fn manifests(store: &Store, root: &Descriptor) -> Result<Vec<Descriptor>, AttestError> {
    match root.media_type.as_str() {
        media_type::IMAGE_INDEX => {
            let index: ImageIndex = store.get_described_json(root).await?;
            Ok(index.manifests)
        }
        media_type::IMAGE_MANIFEST => Ok(vec![root.clone()]),
        other => Err(AttestError::NotAnImage { digest: root.digest, media_type: other.into() }),
    }
}

/// Reads every layer of `manifest` back from the store, bottom first, as many at once as
/// there are cores.
pub async fn read_layers(
    store: &Store,
    manifest: &ImageManifest,
) -> Result<Vec<LayerContents>, AttestError> {
    futures::stream::iter(&manifest.layers)
        .map(|layer| stored_layer::read(store, layer))
        .buffered(layers_at_once())
        .try_collect()
        .await
}

/// How many layers to read at once: each keeps about two cores busy, but layers of
/// different sizes finish at different times.
pub fn layers_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Signs `root` as `reference` (the repository name cosign records) and attaches the
/// signature. Returns the artifact's descriptor and the signer's key id.
pub async fn sign(
    store: &Store,
    root: &Descriptor,
    reference: &str,
    key: &PrivateKey,
) -> Result<(Descriptor, KeyId), AttestError> {
    let payload = Payload::new(reference, root.digest).to_bytes()?;
    let signature = key.sign(&payload);
    let key_id = key.public().key_id()?;
    let part = Part {
        media_type: artifact::SIMPLE_SIGNING_LAYER,
        bytes: payload,
        annotations: BTreeMap::from([(
            artifact::SIGNATURE_ANNOTATION.to_string(),
            BASE64.encode(signature),
        )]),
    };
    let annotations =
        BTreeMap::from([(artifact::KEY_ID_ANNOTATION.to_string(), key_id.to_string())]);
    let desc = artifact::attach(store, root, artifact::SIGNATURE_ARTIFACT, vec![part], annotations)
        .await?;
    Ok((desc, key_id))
}

/// Signs `root` and, when it is an index, each of its platform manifests as `reference` (a
/// registry repository such as `registry.example/team/app`). containers/image policies
/// (skopeo, podman, CRI-O) check the signature of every manifest they copy or run, not only
/// the index's. Returns each signature's descriptor, the root's first.
pub async fn sign_for_repository(
    store: &Store,
    root: &Descriptor,
    reference: &str,
    key: &PrivateKey,
) -> Result<Vec<Descriptor>, AttestError> {
    let mut signed = vec![sign(store, root, reference, key).await?.0];
    if root.media_type == media_type::IMAGE_INDEX {
        for manifest in manifests(store, root).await? {
            signed.push(sign(store, &manifest, reference, key).await?.0);
        }
    }
    Ok(signed)
}

/// An SBOM attached to a platform manifest.
#[derive(Clone, Debug)]
pub struct AttachedSbom {
    /// The SBOM artifact's manifest.
    pub artifact: Descriptor,
    /// The SPDX document's digest, which the provenance names to bind it.
    pub document: kiln_oci::Digest,
}

/// Attaches an SPDX SBOM to every platform manifest of `root`, listing the files read back
/// from its layers and the Debian packages `packages` names for that manifest. `created` is
/// the build's epoch as RFC 3339.
pub async fn attach_sboms(
    store: &Store,
    root: &Descriptor,
    name: &str,
    version: Option<&str>,
    created: &str,
    packages: &[(Digest, Vec<kiln_deb::Installed>)],
) -> Result<Vec<AttachedSbom>, AttestError> {
    let mut out = Vec::new();
    for desc in manifests(store, root).await? {
        let packages = packages
            .iter()
            .find(|(manifest, _)| *manifest == desc.digest)
            .map_or(&[][..], |(_, installed)| &installed[..]);
        let manifest: ImageManifest = store.get_described_json(&desc).await?;
        let files = contents::image_files(&read_layers(store, &manifest).await?);
        let doc = sbom::document(&SbomInput {
            name,
            version,
            image: desc.digest,
            created,
            files: &files,
            packages,
        });
        let bytes = kiln_oci::to_canonical_json(&doc)?;
        let document = kiln_oci::Digest::of(&bytes);
        let part =
            Part { media_type: artifact::SBOM_ARTIFACT, bytes, annotations: BTreeMap::new() };
        let artifact =
            artifact::attach(store, &desc, artifact::SBOM_ARTIFACT, vec![part], BTreeMap::new())
                .await?;
        out.push(AttachedSbom { artifact, document });
    }
    Ok(out)
}

/// Attaches provenance for `root`: the statement in a DSSE envelope signed with `key`, plus
/// the recipe and lock bytes, so that the image can be rebuilt from the store alone.
pub async fn attach_provenance(
    store: &Store,
    root: &Descriptor,
    facts: &BuildFacts,
    recipe: Vec<u8>,
    lock: Vec<u8>,
    key: &PrivateKey,
) -> Result<Descriptor, AttestError> {
    let statement = provenance::statement(facts, &root.digest);
    let body = kiln_oci::to_canonical_json(&statement)?;
    let envelope = Envelope::sign(provenance::PAYLOAD_TYPE, &body, key)?;
    let parts = vec![
        Part {
            media_type: ENVELOPE_MEDIA_TYPE,
            bytes: kiln_oci::to_canonical_json(&envelope)?,
            annotations: BTreeMap::from([(
                artifact::PREDICATE_ANNOTATION.to_string(),
                provenance::PREDICATE_TYPE.to_string(),
            )]),
        },
        Part { media_type: artifact::RECIPE_LAYER, bytes: recipe, annotations: BTreeMap::new() },
        Part { media_type: artifact::LOCK_LAYER, bytes: lock, annotations: BTreeMap::new() },
    ];
    let annotations = BTreeMap::from([(
        artifact::KEY_ID_ANNOTATION.to_string(),
        key.public().key_id()?.to_string(),
    )]);
    artifact::attach(store, root, artifact::ATTESTATION_ARTIFACT, parts, annotations).await
}

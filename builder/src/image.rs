//! OCI assembly: image config, one manifest per platform, and the image index.

use std::collections::BTreeMap;

use kiln_oci::{
    media_type, to_canonical_json, Descriptor, Digest, EmptyObject, History, ImageConfig,
    ImageIndex, ImageManifest, Platform, RootFs, RuntimeConfig,
};

use kiln_tree::Epoch;

use crate::recipe::Recipe;

/// A layer as the image sees it: its compressed blob and its uncompressed digest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    pub media_type: String,
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

/// A JSON document ready to store: its canonical bytes and descriptor.
#[derive(Clone, Debug)]
pub struct JsonBlob {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
}

impl JsonBlob {
    fn new<T: serde::Serialize>(media_type: &str, value: &T) -> Result<Self, serde_json::Error> {
        let bytes = to_canonical_json(value)?;
        let descriptor = Descriptor::new(media_type, Digest::of(&bytes), bytes.len() as u64);
        Ok(JsonBlob { descriptor, bytes })
    }
}

/// The standard annotations every manifest and the index carry, plus the recipe's own.
fn annotations(recipe: &Recipe, epoch: Epoch) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert("org.opencontainers.image.created".into(), epoch.rfc3339());
    a.insert("org.opencontainers.image.title".into(), recipe.name.clone());
    a.insert("org.opencontainers.image.version".into(), recipe.version.clone());
    if let Some(source) = recipe.config.labels.get("org.opencontainers.image.source") {
        a.insert("org.opencontainers.image.source".into(), source.clone());
    }
    a.extend(recipe.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    a
}

/// The config blob for one platform.
pub fn config(
    recipe: &Recipe,
    epoch: Epoch,
    platform: &Platform,
    layers: &[(String, LayerRecord)],
) -> Result<JsonBlob, serde_json::Error> {
    let c = &recipe.config;
    let mut labels = c.labels.clone();
    labels
        .entry("org.opencontainers.image.version".into())
        .or_insert_with(|| recipe.version.clone());
    let runtime = RuntimeConfig {
        user: c.user.clone(),
        exposed_ports: c.exposed_ports.iter().map(|p| (p.clone(), EmptyObject {})).collect(),
        env: c.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        volumes: c.volumes.iter().map(|v| (v.clone(), EmptyObject {})).collect(),
        working_dir: c.workdir.clone(),
        labels,
        stop_signal: c.stop_signal.clone(),
    };
    let created = epoch.rfc3339();
    let config = ImageConfig {
        created: Some(created.clone()),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: runtime,
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|(_, l)| l.diff_id).collect(),
        },
        history: layers
            .iter()
            .map(|(name, _)| History {
                created: Some(created.clone()),
                created_by: Some(format!("kiln layer {name}")),
                comment: None,
                empty_layer: false,
            })
            .collect(),
    };
    JsonBlob::new(media_type::IMAGE_CONFIG, &config)
}

/// The manifest for one platform.
pub fn manifest(
    recipe: &Recipe,
    epoch: Epoch,
    config: &Descriptor,
    layers: &[(String, LayerRecord)],
) -> Result<JsonBlob, serde_json::Error> {
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_type::IMAGE_MANIFEST.into(),
        artifact_type: None,
        config: config.clone(),
        layers: layers
            .iter()
            .map(|(_, l)| Descriptor::new(l.media_type.clone(), l.digest, l.size))
            .collect(),
        subject: None,
        annotations: annotations(recipe, epoch),
    };
    JsonBlob::new(media_type::IMAGE_MANIFEST, &manifest)
}

/// The index over every platform's manifest, in recipe order.
pub fn index(
    recipe: &Recipe,
    epoch: Epoch,
    manifests: &[(Platform, Descriptor)],
) -> Result<JsonBlob, serde_json::Error> {
    let index = ImageIndex {
        schema_version: 2,
        media_type: media_type::IMAGE_INDEX.into(),
        manifests: manifests
            .iter()
            .map(|(p, d)| Descriptor { platform: Some(p.clone()), ..d.clone() })
            .collect(),
        subject: None,
        annotations: annotations(recipe, epoch),
    };
    JsonBlob::new(media_type::IMAGE_INDEX, &index)
}

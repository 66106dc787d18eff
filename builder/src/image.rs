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

/// The config blob for one platform: the base's config, if there is one, with the recipe's
/// `[config]` over it. Environment variables and labels are merged by name (the recipe's
/// value wins); exposed ports and volumes are the union; entrypoint, cmd, user, working
/// folder and stop signal are the recipe's where it sets them, else the base's. The base's
/// layers and history come first.
pub fn config(
    recipe: &Recipe,
    epoch: Epoch,
    platform: &Platform,
    base: Option<&ImageConfig>,
    layers: &[(String, LayerRecord)],
) -> Result<JsonBlob, serde_json::Error> {
    let c = &recipe.config;
    let below = base.map(|b| b.config.clone()).unwrap_or_default();
    let mut labels = below.labels;
    labels.extend(c.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.insert("org.opencontainers.image.version".into(), recipe.version.clone());
    if let Some(version) = c.labels.get("org.opencontainers.image.version") {
        labels.insert("org.opencontainers.image.version".into(), version.clone());
    }
    let mut exposed_ports = below.exposed_ports;
    exposed_ports.extend(c.exposed_ports.iter().map(|p| (p.clone(), EmptyObject {})));
    let mut volumes = below.volumes;
    volumes.extend(c.volumes.iter().map(|v| (v.clone(), EmptyObject {})));
    let runtime = RuntimeConfig {
        user: c.user.clone().or(below.user),
        exposed_ports,
        env: merge_env(&below.env, &c.env),
        entrypoint: if c.entrypoint.is_empty() { below.entrypoint } else { c.entrypoint.clone() },
        cmd: if c.cmd.is_empty() { below.cmd } else { c.cmd.clone() },
        volumes,
        working_dir: c.workdir.clone().or(below.working_dir),
        labels,
        stop_signal: c.stop_signal.clone().or(below.stop_signal),
    };
    let created = epoch.rfc3339();
    let mut diff_ids = base.map(|b| b.rootfs.diff_ids.clone()).unwrap_or_default();
    diff_ids.extend(layers.iter().map(|(_, l)| l.diff_id));
    let mut history = base.map(|b| b.history.clone()).unwrap_or_default();
    history.extend(layers.iter().map(|(name, _)| History {
        created: Some(created.clone()),
        created_by: Some(format!("kiln layer {name}")),
        comment: None,
        empty_layer: false,
    }));
    let config = ImageConfig {
        created: Some(created.clone()),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: runtime,
        rootfs: RootFs { kind: "layers".into(), diff_ids },
        history,
    };
    JsonBlob::new(media_type::IMAGE_CONFIG, &config)
}

/// The base's `KEY=VALUE` environment with the recipe's variables set over it: a variable
/// keeps its place in the base's order, new ones follow in name order.
fn merge_env(base: &[String], recipe: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = base
        .iter()
        .map(|entry| {
            let name = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            match recipe.get(name) {
                Some(value) => format!("{name}={value}"),
                None => entry.clone(),
            }
        })
        .collect();
    let named =
        |k: &str| base.iter().any(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == k);
    out.extend(recipe.iter().filter(|(k, _)| !named(k)).map(|(k, v)| format!("{k}={v}")));
    out
}

/// The manifest for one platform.
pub fn manifest(
    recipe: &Recipe,
    epoch: Epoch,
    config: &Descriptor,
    base: &[LayerRecord],
    layers: &[(String, LayerRecord)],
) -> Result<JsonBlob, serde_json::Error> {
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_type::IMAGE_MANIFEST.into(),
        artifact_type: None,
        config: config.clone(),
        layers: base
            .iter()
            .chain(layers.iter().map(|(_, l)| l))
            .map(|l| Descriptor::new(l.media_type.clone(), l.digest, l.size))
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

#[cfg(test)]
mod tests {
    use super::merge_env;
    use std::collections::BTreeMap;

    #[test]
    fn the_recipe_environment_goes_over_the_base_by_name() {
        let base = ["PATH=/bin".to_string(), "LANG=C".to_string(), "EMPTY".to_string()];
        let recipe = BTreeMap::from([
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("APP".to_string(), "1".to_string()),
            ("EMPTY".to_string(), "set".to_string()),
        ]);
        assert_eq!(merge_env(&base, &recipe), ["PATH=/bin", "LANG=C.UTF-8", "EMPTY=set", "APP=1"]);
        assert_eq!(merge_env(&[], &recipe), ["APP=1", "EMPTY=set", "LANG=C.UTF-8"]);
    }
}

//! Whole builds against an in-memory sink: stable digests, platforms, cache reuse.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kiln_builder::build::{BlobSink, SinkError};
use kiln_builder::image::JsonBlob;
use kiln_builder::layer::LayerBlob;
use kiln_builder::{build, BuildOptions, LayerRecord, LockMode, Observer, Recipe};
use kiln_oci::{Descriptor, Digest, ImageIndex, ImageManifest};
use kiln_tree::Epoch;

#[derive(Default)]
struct MemSink {
    blobs: BTreeMap<Digest, Vec<u8>>,
    cache: BTreeMap<Digest, LayerRecord>,
}

impl BlobSink for MemSink {
    fn cached_layers(&mut self, keys: &[Digest]) -> Result<Vec<Option<LayerRecord>>, SinkError> {
        Ok(keys.iter().map(|key| self.cache.get(key).cloned()).collect())
    }
    fn put_layer(&mut self, key: &Digest, layer: &LayerBlob) -> Result<(), SinkError> {
        self.blobs.insert(layer.digest, fs::read(&layer.path)?);
        let record = LayerRecord {
            media_type: layer.media_type.into(),
            digest: layer.digest,
            diff_id: layer.diff_id,
            size: layer.size,
        };
        self.cache.insert(*key, record);
        Ok(())
    }
    fn put_json(&mut self, blob: &JsonBlob) -> Result<(), SinkError> {
        self.blobs.insert(blob.descriptor.digest, blob.bytes.clone());
        Ok(())
    }
    fn put_file(&mut self, path: &Path, descriptor: &Descriptor) -> Result<(), SinkError> {
        self.blobs.insert(descriptor.digest, fs::read(path)?);
        Ok(())
    }
    fn cached_disk(&mut self, _key: &Digest) -> Result<Option<Descriptor>, SinkError> {
        Ok(None)
    }
    fn remember_disk(&mut self, _key: &Digest, _artifact: &Descriptor) -> Result<(), SinkError> {
        Ok(())
    }
    fn put_referrer(&mut self, _subject: &Digest, _artifact: &Descriptor) -> Result<(), SinkError> {
        Ok(())
    }
    fn copy_blob(&mut self, descriptor: &Descriptor, target: &Path) -> Result<bool, SinkError> {
        match self.blobs.get(&descriptor.digest) {
            Some(bytes) => {
                fs::write(target, bytes)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn get_document(&mut self, digest: &Digest, limit: u64) -> Result<Option<Vec<u8>>, SinkError> {
        match self.blobs.get(digest) {
            Some(bytes) if bytes.len() as u64 > limit => Err("document too large".into()),
            found => Ok(found.cloned()),
        }
    }
}

struct Quiet;
impl Observer for Quiet {}

fn recipe(dir: &Path, platforms: &str) -> Recipe {
    fs::write(dir.join("app"), b"#!/bin/sh\necho hi\n").unwrap();
    let text = format!(
        "epoch = 1700000000\n[image]\nname = \"b\"\nversion = \"1\"\nplatforms = [{platforms}]\n\
         [[layer]]\nname = \"one\"\nfiles = [{{ src = \"app\", dest = \"/app\", mode = 0o755 }}]\n\
         [[layer]]\nname = \"two\"\ninline = [{{ dest = \"/etc/motd\", content = \"hi\" }}]\n\
         [config]\nenv = {{ Z = \"1\", A = \"2\", M = \"3\" }}\nlabels = {{ b = \"1\", a = \"2\", c = \"3\" }}\n\
         [annotations]\nz = \"1\"\ny = \"2\"\nx = \"3\"\n"
    );
    fs::write(dir.join("r.toml"), text).unwrap();
    Recipe::load(&dir.join("r.toml")).unwrap()
}

fn opts(work: &Path, threads: usize) -> BuildOptions {
    BuildOptions {
        epoch: Epoch::new(1_700_000_000).unwrap(),
        threads,
        work_dir: work.to_path_buf(),
        lock_mode: LockMode::Update,
        hash_cache: None,
        list_packages: false,
    }
}

#[test]
fn the_same_image_many_times_in_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "\"linux/amd64\"");
    let mut first = None;
    for i in 0..16 {
        let mut sink = MemSink::default();
        let out = build(&r, &opts(tmp.path(), 1 + i % 3), &mut sink, &Quiet).unwrap();
        assert_eq!(out.layers_built, 2);
        match first {
            None => first = Some(out.index.digest),
            Some(d) => assert_eq!(d, out.index.digest, "build {i} differs"),
        }
    }
}

#[test]
fn one_manifest_per_platform_sharing_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "\"linux/amd64\", \"linux/arm64/v8\"");
    let mut sink = MemSink::default();
    let out = build(&r, &opts(tmp.path(), 2), &mut sink, &Quiet).unwrap();
    let index: ImageIndex = serde_json::from_slice(&sink.blobs[&out.index.digest]).unwrap();
    assert_eq!(index.manifests.len(), 2);
    let platforms: Vec<_> =
        index.manifests.iter().map(|m| m.platform.clone().unwrap().to_string()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    let layers: Vec<Vec<Digest>> = index
        .manifests
        .iter()
        .map(|m| {
            let manifest: ImageManifest = serde_json::from_slice(&sink.blobs[&m.digest]).unwrap();
            manifest.layers.iter().map(|l| l.digest).collect()
        })
        .collect();
    assert_eq!(layers[0], layers[1]);
    assert_ne!(index.manifests[0].digest, index.manifests[1].digest);
    let stored = String::from_utf8(sink.blobs[&out.index.digest].clone()).unwrap();
    assert!(
        stored.contains(r#""org.opencontainers.image.created":"2023-11-14T22:13:20Z""#),
        "{stored}"
    );
}

#[test]
fn unchanged_layers_come_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "\"linux/amd64\"");
    let mut sink = MemSink::default();
    let a = build(&r, &opts(tmp.path(), 2), &mut sink, &Quiet).unwrap();
    let b = build(&r, &opts(tmp.path(), 2), &mut sink, &Quiet).unwrap();
    assert_eq!((b.layers_built, b.layers_reused), (0, 2));
    assert_eq!(a.index.digest, b.index.digest);
    // A change in the top layer rebuilds it alone; one below rebuilds every layer above it
    // too, whose implicit parent directories take their metadata from the layers below.
    let top = r.file.with_file_name("top.toml");
    fs::write(&top, fs::read_to_string(&r.file).unwrap().replace("\"hi\"", "\"ho\"")).unwrap();
    let top = Recipe::load(&top).unwrap();
    let c = build(&top, &opts(tmp.path(), 2), &mut sink, &Quiet).unwrap();
    assert_eq!((c.layers_built, c.layers_reused), (1, 1));
    assert_ne!(a.index.digest, c.index.digest);
    fs::write(tmp.path().join("app"), b"#!/bin/sh\necho changed\n").unwrap();
    let d = build(&r, &opts(tmp.path(), 2), &mut sink, &Quiet).unwrap();
    assert_eq!((d.layers_built, d.layers_reused), (2, 0));
}

#[test]
fn a_layer_repeated_in_one_recipe_is_one_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let layer =
        "[[layer]]\nname = \"{n}\"\ninline = [{ dest = \"/etc/motd\", content = \"hi\" }]\n";
    let text = format!(
        "epoch = 1700000000\n[image]\nname = \"b\"\nversion = \"1\"\n{}{}",
        layer.replace("{n}", "first"),
        layer.replace("{n}", "again"),
    );
    fs::write(tmp.path().join("r.toml"), text).unwrap();
    let r = Recipe::load(&tmp.path().join("r.toml")).unwrap();
    let mut sink = MemSink::default();
    let out = build(&r, &opts(tmp.path(), 2), &mut sink, &Quiet).unwrap();
    assert_eq!(out.layers[0].1, out.layers[1].1);
    assert_eq!(sink.blobs.len(), 4, "one layer blob, config, manifest and index");
}

#[test]
fn locked_builds_refuse_changed_inputs_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let r = recipe(tmp.path(), "\"linux/amd64\"");
    let mut sink = MemSink::default();
    let mut locked = opts(tmp.path(), 1);
    locked.lock_mode = LockMode::Locked;
    let err = build(&r, &locked, &mut sink, &Quiet).unwrap_err();
    assert!(err.to_string().contains("no lock file"), "{err}");
    build(&r, &opts(tmp.path(), 1), &mut MemSink::default(), &Quiet).unwrap();
    fs::write(tmp.path().join("app"), b"tampered").unwrap();
    let err = build(&r, &locked, &mut sink, &Quiet).unwrap_err().to_string();
    assert!(err.contains("input app changed"), "{err}");
    assert!(sink.blobs.is_empty());
}

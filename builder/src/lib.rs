//! Turns kiln recipes into reproducible OCI image blobs.
//!
//! The flow: [`recipe`] parses TOML, [`inputs`] hashes files into a [`kiln_tree::Tree`] per layer,
//! [`lock`] pins those digests, [`layer`] writes each tree as a compressed tarball, and
//! [`image`] assembles configs, manifests and the index. [`build`] ties them together over a
//! [`build::BlobSink`] that the caller backs with a store.

pub mod base;
pub mod build;
pub mod hash_cache;
pub mod image;
pub mod inputs;
pub mod layer;
pub mod lock;
pub mod packages;
pub mod recipe;
mod recipe_toml;
pub mod rootfs;
mod scratch;
pub mod source_path;
pub mod tar;
pub mod tarball;
mod writeback;

pub use build::{
    build, BlobSink, BuildError, BuildOptions, BuildOutput, CacheHit, LockMode, Observer,
};
pub use image::LayerRecord;
pub use layer::{write_layer, LayerBlob, LayerError};
pub use lock::Lock;
pub use recipe::{Recipe, RecipeError};
pub use tar::{write_tar, TarError};

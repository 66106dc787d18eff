//! Why a build failed.

use std::path::PathBuf;

use kiln_oci::Platform;

use crate::base::BaseError;
use crate::build::disks::error::DiskError;
use crate::build::sink::SinkError;
use crate::inputs::InputError;
use crate::layer::LayerError;
use crate::lock::{LockDifference, LockError};
use crate::rootfs::RootfsError;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// A failure in the layers of some of a recipe's platforms, made beside the others'.
    #[error("platform {}", .platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Platforms { platforms: Vec<Platform>, source: Box<BuildError> },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("[base]")]
    Base(#[source] Box<BaseError>),
    #[error(
        "the base's {base} layers and the recipe's {recipe} make {} layers; an image has at most \
         {} (container runtimes stack no more)", .base + .recipe, crate::recipe_toml::MAX_LAYERS
    )]
    TooManyLayers { base: usize, recipe: usize },
    #[error("{recipe}: no lock file at {lock}; run `kiln lock {recipe}` first (or build without --locked)", recipe = .recipe.display(), lock = .lock.display())]
    NoLock { recipe: PathBuf, lock: PathBuf },
    #[error("inputs differ from {}:\n  {}\nrun `kiln lock` to accept the change, or restore the inputs", .lock.display(), .differences.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n  "))]
    LockMismatch { lock: PathBuf, differences: Vec<LockDifference> },
    #[error("layer {name:?}")]
    Layer { name: String, source: Box<LayerError> },
    #[error("storing blobs")]
    Sink(#[source] SinkError),
    #[error("serialising {what}")]
    Json { what: &'static str, source: serde_json::Error },
    #[error(transparent)]
    Layers(#[from] RootfsError),
    #[error("[disk]")]
    Disk(#[from] DiskError),
    #[error(
        "[disk] makes disks for linux/amd64, linux/arm64 and linux/riscv64, and the recipe's \
         platforms include none of them"
    )]
    DiskPlatform,
}

impl From<BaseError> for BuildError {
    fn from(e: BaseError) -> Self {
        BuildError::Base(Box::new(e))
    }
}

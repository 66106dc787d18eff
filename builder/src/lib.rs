//! Turns kiln recipes into reproducible OCI image blobs.

pub mod image_path;
pub mod tree;

pub use image_path::{ImagePath, ImagePathError};
pub use tree::{Content, Entry, EntryKind, Meta, Tree, TreeError};

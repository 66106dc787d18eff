//! OCI image-spec types, sha256 digests and the canonical JSON form kiln hashes.

pub mod canonical;
pub mod descriptor;
pub mod digest;
pub mod disk_artifact;
pub mod image;
pub mod media_type;
pub mod reference;

pub use canonical::to_canonical_json;
pub use descriptor::{Descriptor, Platform};
pub use digest::{Digest, DigestError, HashingReader, HashingWriter, Sha256};
pub use image::{
    EmptyObject, History, ImageConfig, ImageIndex, ImageManifest, RootFs, RuntimeConfig,
};
pub use reference::{NameError, Reference, RepoName, Tag};

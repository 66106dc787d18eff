//! The OCI 1.1 artifact manifest kiln attaches to an image manifest (its subject) to carry that
//! image's disk images: written by the builder, read by export, inspect and releases.

/// The artifactType of the disk images attached to an image.
pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.disk.v1";
/// Annotation carrying the dm-verity root hash (hex) on the artifact manifest.
pub const ROOT_HASH_ANNOTATION: &str = "dev.kiln.disk.verity.root-hash";

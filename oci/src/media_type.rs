//! Media types kiln writes and reads.

/// OCI image manifest.
pub const IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed layer tarball.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip-compressed layer tarball.
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd-compressed layer tarball.
pub const LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// The empty JSON object `{}` used as the config of an artifact manifest (OCI 1.1).
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";

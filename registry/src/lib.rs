//! kiln's OCI distribution client: push images from the store to a registry, pull them back
//! by digest, each with every artifact that refers to it (signatures, SBOM, provenance,
//! release records), through the referrers API or, where a registry lacks it, the OCI 1.1
//! fallback index and cosign's signature tag.
//!
//! Written on reqwest rather than a client crate: see docs/design.md, "Registries".

pub mod client;
pub mod copy;
pub mod credentials;
pub mod error;
pub mod pull;
pub mod push;
pub mod reference;
pub mod referrers;
pub mod repository;
pub mod upload;

pub use client::{Client, Options};

/// The variable that sets how many seconds a registry may go without sending a byte
/// ([`Options::stall_timeout`]).
pub const STALL_VARIABLE: &str = "KILN_REGISTRY_TIMEOUT";
pub use error::{RegistryError, Result};
pub use pull::{pull, PullReport};
pub use push::{push, PushReport};
pub use reference::RegistryRef;
pub use repository::{Repository, MANIFEST_LIMIT};

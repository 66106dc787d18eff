//! Releases and their way to production, over a kiln store.
//!
//! - [`record`]: the release record (`kiln.release/v1`), one canonical JSON document naming by
//!   digest everything a deployment needs, stored as an OCI 1.1 artifact whose subject is the
//!   image index; the artifact manifest's digest is the release id;
//! - [`pin`]: a release rendered for its consumer (JSON, Terraform, kustomize, shell env);
//! - [`channel`]: a channel of an image as a signed, append-only log under `log/`;
//! - [`policy`]: who may promote into which channel, after which channel, with how many
//!   approvals;
//! - [`approval`]: signed approvals attached to a release;
//! - [`revocation`]: the revocation log, signed by the policy's revokers, that pins,
//!   promotions and verification honour;
//! - [`promote`]: promotion and rollback by policy;
//! - [`history`]: a channel's verified history for auditors;
//! - [`verify`]: a release verified end to end, optionally against a channel.

pub mod approval;
pub mod channel;
mod error;
pub mod history;
pub mod pin;
pub mod policy;
pub mod promote;
pub mod record;
pub mod revocation;
mod signed;
pub mod verify;

pub use error::{ReleaseError, Result};

//! kiln's content-addressed store over any `object_store` backend.
//!
//! Keys (see docs/design.md, "The store"):
//!
//! - `blobs/sha256/<hex>`: write-once blobs, re-hashed on every read;
//! - `refs/<name>/<tag>`: the canonical JSON descriptor a tag points at (tags move);
//! - `cache/<kind>/<key-hex>`: build cache entries, replaceable and safe to delete;
//! - `uploads/...`: staging for large uploads, published to `blobs/` only once verified;
//! - `log/...` and `referrers/...`: write-once records that gc treats as roots;
//! - `leases/<id>/<n>`: what builds and copies in flight are about to reference (see [`lease`]);
//! - `quarantine/sha256/<hex>`: bytes found corrupt under a blob key, moved aside so a
//!   verified write can take the key (see [`heal`]).
//!
//! Open one with [`Store::open`] on a folder path, `file:///abs/path`, `memory://`,
//! `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`.

mod adopt;
mod blob;
mod blob_stream;
pub mod cache;
pub mod check;
pub mod check_report;
pub mod copy;
pub mod disk_export;
mod document;
pub mod error;
pub mod explain;
mod file_chunks;
pub mod gc;
pub mod growing;
pub mod heal;
pub mod holder;
mod inventory;
mod key;
pub mod layout;
pub mod lease;
pub mod location;
pub mod log;
mod referrers;
mod refs;
pub mod repair;
mod s3_multipart;
pub mod scratch;
pub mod service;
pub mod sweep;
mod upload;
mod walk;

use std::sync::Arc;

use object_store::ObjectStore;

pub use blob::PutOutcome;
pub use check::CheckProgress;
pub use check_report::{CheckReport, Problem, RepairReport};
pub use copy::CopyReport;
pub use error::{one_line, BackendError, Result, StoreError};
pub use gc::{GcOptions, GcReport};
pub use heal::{CheckedPut, Quarantined, Reuse, Wanted};
pub use kiln_oci::reference::{self, NameError, Reference, RepoName, Tag};
pub use location::{parse_option, Location};
pub use walk::{image_blobs, image_referrers};

/// A handle on one store; cheap to clone and share between tasks.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    description: String,
    /// The folder of a local store: gc also removes the part files an interrupted multipart
    /// upload leaves there, which the object listing does not show.
    folder: Option<std::path::PathBuf>,
    /// The backend's multipart uploads, driven by id (buckets and memory).
    multipart: Option<upload::Multipart>,
    /// The lease that names every blob this handle writes ([`Store::leased`]).
    lease: Option<Arc<lease::Shared>>,
    /// Buffers for local files read in chunks, shared by the handle's clones.
    chunk_pool: Arc<file_chunks::ChunkPool>,
}

impl Store {
    /// Opens the store at `location`: a folder path (created if missing), `file:///abs/path`,
    /// `memory://` or a bucket URL configured from the environment.
    pub fn open(location: &str) -> Result<Store> {
        Store::open_with_options(location, &[])
    }

    /// [`Store::open`] with backend options (object_store config keys such as
    /// `aws_endpoint`), which override the environment.
    pub fn open_with_options(location: &str, options: &[(String, String)]) -> Result<Store> {
        Store::connect(Location::parse(location)?, options)
    }

    fn connect(location: Location, options: &[(String, String)]) -> Result<Store> {
        let folder = match &location {
            Location::Folder(path) => Some(path.clone()),
            _ => None,
        };
        let connected = location.connect(options)?;
        Ok(Store {
            inner: connected.objects,
            description: location.to_string(),
            folder,
            multipart: connected.multipart,
            lease: None,
            chunk_pool: Arc::default(),
        })
    }

    /// [`Store::open_with_options`] for a store that must already exist, such as one being
    /// checked: a folder that does not exist is an error instead of being created. (A missing
    /// bucket or container shows on the first request.)
    pub fn open_existing(location: &str, options: &[(String, String)]) -> Result<Store> {
        let location = Location::parse_existing(location)?;
        Store::connect(location, options)
    }

    /// Wraps an already built backend; `description` is what [`Store::describe`] shows.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, description: impl Into<String>) -> Store {
        Store {
            inner,
            description: description.into(),
            folder: None,
            multipart: None,
            lease: None,
            chunk_pool: Arc::default(),
        }
    }

    /// Where this store lives, for messages (`file:///...`, `memory://`, `s3://...`).
    pub fn describe(&self) -> &str {
        &self.description
    }
}

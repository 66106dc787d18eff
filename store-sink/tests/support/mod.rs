//! What the store sink's tests share: build options and an observer that watches nothing.

use std::path::Path;

use kiln_builder::{BuildOptions, LockMode, Observer};
use kiln_tree::Epoch;

/// An observer of nothing: these tests look at the store, not at progress.
pub struct Quiet;
impl Observer for Quiet {}

/// Options for a build working in `work` (created), at a fixed epoch, updating its lock.
///
/// # Panics
/// When `work` cannot be created.
pub fn opts(work: &Path) -> BuildOptions {
    std::fs::create_dir_all(work).unwrap_or_else(|e| panic!("creating {}: {e}", work.display()));
    BuildOptions {
        epoch: Epoch::new(1_700_000_000).unwrap_or_else(|e| panic!("a fixed epoch: {e}")),
        threads: 2,
        work_dir: work.to_path_buf(),
        lock_mode: LockMode::Update,
        hash_cache: None,
        list_packages: false,
    }
}

//! What a build needs besides the recipe.

use std::path::PathBuf;

use kiln_tree::Epoch;

/// How the lock file is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Any difference from the lock (or no lock) is an error.
    Locked,
    /// The lock is written or rewritten to match the inputs.
    Update,
}

/// What a build needs besides the recipe.
pub struct BuildOptions {
    pub epoch: Epoch,
    pub threads: usize,
    /// A scratch folder for layer blobs before they are stored.
    pub work_dir: PathBuf,
    pub lock_mode: LockMode,
    /// Where input file digests are remembered between builds; `None` re-reads every input.
    pub hash_cache: Option<PathBuf>,
    /// Whether [`BuildOutput::installed`](crate::BuildOutput::installed) lists the Debian
    /// packages of layers taken from the cache too (for an SBOM), which reads those packages'
    /// file lists; otherwise a layer found in the cache reads none of its packages.
    pub list_packages: bool,
}

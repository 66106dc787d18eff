//! What a build tells about its progress.

use kiln_oci::Platform;

/// Hears about progress; every method defaults to doing nothing. The layers of several
/// platforms may be made at once, so it is called from several threads, and each layer's
/// calls name the platforms it is made for.
pub trait Observer: Sync {
    /// Inputs of all layers are being hashed.
    fn hashing(&self) {}
    /// Layer `index` of `total` of `platforms` starts; `bytes` is the content size of a layer
    /// to be written, `None` for one found in the cache or written for other platforms.
    fn layer_started(
        &self,
        _platforms: &[Platform],
        _name: &str,
        _index: usize,
        _total: usize,
        _bytes: Option<u64>,
    ) {
    }
    /// A layer of `platforms` finished, either written or reused.
    fn layer_finished(&self, _platforms: &[Platform], _name: &str, _reused: bool) {}
    /// A Debian package was installed without running the maintainer scripts it has.
    fn scripts_skipped(&self, _package: &str, _scripts: &[&str]) {}
}

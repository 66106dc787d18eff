//! What a build tells about its progress.

/// Hears about progress; every method defaults to doing nothing.
pub trait Observer {
    /// Inputs of all layers are being hashed.
    fn hashing(&self) {}
    /// Layer `index` of `total` starts; `bytes` is the content size of a layer to be
    /// written, `None` for one found in the cache.
    fn layer_started(&self, _name: &str, _index: usize, _total: usize, _bytes: Option<u64>) {}
    /// A layer finished, either written or reused from the cache.
    fn layer_finished(&self, _name: &str, _reused: bool) {}
    /// A Debian package was installed without running the maintainer scripts it has.
    fn scripts_skipped(&self, _package: &str, _scripts: &[&str]) {}
}

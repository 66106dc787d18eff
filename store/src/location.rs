//! Turns a store location string into a backend. Each scheme is one arm of [`Location`], so
//! cloud schemes slot in here without touching the rest of the store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use url::Url;

use crate::error::{Result, StoreError};

/// Where a store lives, parsed from `file:///abs/path`, a plain path or `memory://`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local folder, canonicalised.
    Folder(PathBuf),
    /// A process-local store that vanishes on exit (tests, dry runs).
    Memory,
}

impl Location {
    /// Parses `location`, creating and canonicalising a folder if it names one.
    pub fn parse(location: &str) -> Result<Location> {
        let invalid = |reason: &str| StoreError::InvalidLocation {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        if location.is_empty() {
            return Err(invalid("it is empty"));
        }
        // Only "scheme://" marks a URL: a bare "a:b" is a legal folder name on Unix.
        let Some((scheme, _)) = location.split_once("://") else {
            return Location::folder(Path::new(location));
        };
        let url = Url::parse(location).map_err(|e| invalid(&e.to_string()))?;
        match url.scheme() {
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
                    return Err(invalid("a file URL needs an absolute path: file:///abs/path"));
                }
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid("a file URL needs an absolute path: file:///abs/path"))?;
                Location::folder(&path)
            }
            "memory" => {
                if url.has_host() || !matches!(url.path(), "" | "/") {
                    return Err(invalid("a memory store takes no path: use memory://"));
                }
                Ok(Location::Memory)
            }
            _ => Err(StoreError::Unsupported {
                location: location.to_string(),
                scheme: scheme.to_string(),
            }),
        }
    }

    /// Creates the folder if missing and canonicalises it, so the described path is stable.
    fn folder(path: &Path) -> Result<Location> {
        let open_err = |source| StoreError::OpenFolder { path: path.to_path_buf(), source };
        std::fs::create_dir_all(path).map_err(open_err)?;
        let canonical = std::fs::canonicalize(path).map_err(open_err)?;
        Ok(Location::Folder(canonical))
    }

    /// Builds the object store backend for this location.
    pub(crate) fn connect(&self) -> Result<Arc<dyn ObjectStore>> {
        match self {
            Location::Folder(path) => {
                let fs = LocalFileSystem::new_with_prefix(path)
                    .map_err(|source| StoreError::Backend { key: self.to_string(), source })?
                    // Removes the directories a deleted staging upload leaves behind.
                    .with_automatic_cleanup(true);
                Ok(Arc::new(fs))
            }
            Location::Memory => Ok(Arc::new(InMemory::new())),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Folder(path) => match Url::from_directory_path(path) {
                Ok(url) => write!(f, "{}", url.as_str().trim_end_matches('/')),
                Err(()) => write!(f, "{}", path.display()),
            },
            Location::Memory => f.write_str("memory://"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(Location::parse("memory://").ok(), Some(Location::Memory));
        for (loc, scheme) in [("s3://b/p", "s3"), ("gs://b", "gs"), ("az://c/p", "az")] {
            match Location::parse(loc) {
                Err(e @ StoreError::Unsupported { .. }) => {
                    assert!(e.to_string().contains(&format!("{scheme}://")), "{e}");
                }
                other => panic!("{loc}: {other:?}"),
            }
        }
        assert!(matches!(
            Location::parse("file://host/x"),
            Err(StoreError::InvalidLocation { .. })
        ));
        assert!(matches!(Location::parse(""), Err(StoreError::InvalidLocation { .. })));
        assert!(matches!(Location::parse("memory://x"), Err(StoreError::InvalidLocation { .. })));
    }

    #[test]
    fn folders_are_created_and_canonicalised() -> Result<()> {
        let tmp = tempfile::tempdir()
            .map_err(|source| StoreError::OpenFolder { path: std::env::temp_dir(), source })?;
        let nested = tmp.path().join("a/b/../c");
        let from_path = Location::parse(&nested.to_string_lossy())?;
        let canonical = std::fs::canonicalize(tmp.path().join("a/c")).ok();
        assert_eq!(Some(from_path.clone()), canonical.clone().map(Location::Folder));
        let url = format!("file://{}", tmp.path().join("a/c").display());
        assert_eq!(Location::parse(&url)?, from_path);
        // A relative path (climbing from the working directory to the root) lands there too.
        let cwd = std::env::current_dir()
            .map_err(|source| StoreError::OpenFolder { path: PathBuf::from("."), source })?;
        let up = "../".repeat(cwd.components().count());
        let relative =
            format!("{up}{}", tmp.path().join("a/c").display().to_string().trim_start_matches('/'));
        assert_eq!(Location::parse(&relative)?, from_path);
        let shown = from_path.to_string();
        assert!(shown.starts_with("file:///") && shown.ends_with("/a/c"), "{shown}");
        Ok(())
    }
}

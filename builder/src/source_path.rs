//! Source paths: host files a recipe reads, confined to the recipe's folder.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A host path validated to exist inside the recipe's folder, symlinks resolved.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePath {
    /// The path as written in the recipe, relative to its folder (`/`-separated).
    rel: String,
    /// The resolved absolute path on this host.
    abs: PathBuf,
}

/// Why a source path was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourcePathError {
    #[error("{0:?} is absolute; source paths are relative to the recipe's folder")]
    Absolute(String),
    #[error("{0:?} leaves the recipe's folder; keep inputs beside the recipe")]
    Escapes(String),
    #[error("{path:?} cannot be read")]
    Missing { path: String, source: std::io::Error },
}

impl SourcePath {
    /// Resolves `raw` against the canonical recipe folder `dir`.
    pub fn resolve(dir: &Path, raw: &str) -> Result<Self, SourcePathError> {
        let rel_path = Path::new(raw);
        if rel_path.is_absolute() {
            return Err(SourcePathError::Absolute(raw.to_string()));
        }
        let mut depth = 0i32;
        for comp in rel_path.components() {
            match comp {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            if depth < 0 {
                return Err(SourcePathError::Escapes(raw.to_string()));
            }
        }
        let abs = std::fs::canonicalize(dir.join(rel_path))
            .map_err(|source| SourcePathError::Missing { path: raw.to_string(), source })?;
        if !abs.starts_with(dir) {
            return Err(SourcePathError::Escapes(raw.to_string()));
        }
        let rel = abs
            .strip_prefix(dir)
            .map_err(|_| SourcePathError::Escapes(raw.to_string()))?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        Ok(SourcePath { rel, abs })
    }

    /// The path relative to the recipe's folder, as recorded in lock files.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The absolute host path.
    pub fn abs(&self) -> &Path {
        &self.abs
    }
}

impl fmt::Display for SourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rel)
    }
}

impl fmt::Debug for SourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confines_sources_to_the_recipe_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let dir = root.join("recipe");
        std::fs::create_dir_all(dir.join("files")).unwrap();
        std::fs::write(dir.join("files/a"), b"a").unwrap();
        std::fs::write(root.join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink("../../outside", dir.join("files/link")).unwrap();

        assert_eq!(SourcePath::resolve(&dir, "files/./a").unwrap().rel(), "files/a");
        assert!(matches!(
            SourcePath::resolve(&dir, "../outside"),
            Err(SourcePathError::Escapes(_))
        ));
        assert!(matches!(
            SourcePath::resolve(&dir, "/etc/passwd"),
            Err(SourcePathError::Absolute(_))
        ));
        assert!(matches!(
            SourcePath::resolve(&dir, "files/link"),
            Err(SourcePathError::Escapes(_))
        ));
        assert!(matches!(
            SourcePath::resolve(&dir, "files/nope"),
            Err(SourcePathError::Missing { .. })
        ));
    }
}

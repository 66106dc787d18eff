//! Where a recipe lives, said without naming the host: its path relative to a source root
//! (the git checkout that holds it, else its own folder) and, for a clean checkout, the
//! commit. Provenance records only this, so two runners with their checkouts in different
//! folders sign the same bytes, and a rebuild finds the recipe again in any checkout.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_oci::Digest;

/// Why a recipe could not be placed in, or found again in, a source root.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A path could not be resolved.
    #[error("cannot resolve {path}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The recipe is not inside the source root.
    #[error("the recipe {recipe} is not inside the source root {root}")]
    Outside { recipe: PathBuf, root: PathBuf },
    /// A path is not UTF-8, so it cannot be recorded portably.
    #[error("{path} is not UTF-8")]
    NotUtf8 { path: PathBuf },
    /// The recorded recipe path is not a plain relative path.
    #[error(
        "the provenance names the recipe {recorded:?}, which is not a path relative to a source root"
    )]
    RecordedPath { recorded: String },
    /// The recipe the provenance names is not in the checkout.
    #[error("{path} is not here: is {root} a checkout of the recipe's sources? (--source-root)")]
    Missing {
        path: PathBuf,
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file in the checkout differs from what the provenance records.
    #[error("{path} in the checkout is {found}, but the provenance records {expected}")]
    Differs { path: PathBuf, expected: Digest, found: Digest },
}

/// A recipe placed in its source root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The root, resolved (a local path: for reports only, never recorded).
    pub root: PathBuf,
    /// The recipe's path relative to the root, `/`-separated.
    pub recipe: String,
    /// The checkout's commit, when the root is a git checkout whose tree is clean.
    pub commit: Option<String>,
}

/// Places `recipe` in `root` when given, else in the git checkout that holds it, else in
/// its own folder.
pub fn locate(recipe: &Path, root: Option<&Path>) -> Result<Source, SourceError> {
    let recipe = resolve(recipe)?;
    let folder = recipe.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let root = match root {
        Some(r) => resolve(r)?,
        None => git_top_level(&folder).unwrap_or(folder),
    };
    let relative = recipe
        .strip_prefix(&root)
        .map_err(|_| SourceError::Outside { recipe: recipe.clone(), root: root.clone() })?;
    let mut parts = Vec::new();
    for c in relative.components() {
        let part = c.as_os_str().to_str().ok_or(SourceError::NotUtf8 { path: recipe.clone() })?;
        parts.push(part);
    }
    let commit = if root.join(".git").exists() { clean_commit(&root) } else { None };
    Ok(Source { root, recipe: parts.join("/"), commit })
}

/// The checkout a rebuild reads: `given`, else the git checkout holding the current folder,
/// else the current folder.
pub fn checkout(given: Option<&Path>) -> Result<PathBuf, SourceError> {
    match given {
        Some(root) => resolve(root),
        None => {
            let here = resolve(Path::new("."))?;
            Ok(git_top_level(&here).unwrap_or(here))
        }
    }
}

/// The recipe a rebuild uses: the file `recorded` names inside `root`, checked against the
/// recorded digest of its normalised text, and its lock when the checkout has one, checked
/// against the recorded lock digest (a checkout without the lock uses the recorded one).
/// Returns the recipe's path.
pub fn find_recorded(
    root: &Path,
    recorded: &str,
    recipe_digest: &Digest,
    lock_digest: &Digest,
) -> Result<PathBuf, SourceError> {
    let relative = Path::new(recorded);
    let plain =
        !recorded.is_empty() && relative.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(SourceError::RecordedPath { recorded: recorded.to_string() });
    }
    let recipe = root.join(relative);
    let text = std::fs::read(&recipe).map_err(|source| SourceError::Missing {
        path: recipe.clone(),
        root: root.to_path_buf(),
        source,
    })?;
    // Line endings are normalised as the lock does, so a CRLF checkout still matches.
    let found = Digest::of(String::from_utf8_lossy(&text).replace("\r\n", "\n").as_bytes());
    if found != *recipe_digest {
        return Err(SourceError::Differs { path: recipe, expected: *recipe_digest, found });
    }
    let lock = recipe.with_extension("lock");
    match std::fs::read(&lock) {
        Ok(bytes) => {
            let found = Digest::of(&bytes);
            if found != *lock_digest {
                return Err(SourceError::Differs { path: lock, expected: *lock_digest, found });
            }
            Ok(recipe)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(recipe),
        Err(source) => Err(SourceError::Missing { path: lock, root: root.to_path_buf(), source }),
    }
}

fn resolve(path: &Path) -> Result<PathBuf, SourceError> {
    std::fs::canonicalize(path)
        .map_err(|source| SourceError::Resolve { path: path.to_path_buf(), source })
}

/// The nearest folder at or above `dir` that holds `.git` (a folder, or a file for
/// worktrees and submodules); found without running git, so the root does not depend on
/// whether git is installed.
fn git_top_level(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join(".git").exists()).map(Path::to_path_buf)
}

/// HEAD of the checkout at `root` when git answers and nothing tracked or untracked differs
/// from it; otherwise no commit is recorded, since it would not describe what was built.
fn clean_commit(root: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--verify", "HEAD"])?;
    let status = git(&["status", "--porcelain", "--untracked-files=normal"])?;
    let hex = head.len() >= 40 && head.bytes().all(|b| b.is_ascii_hexdigit());
    (status.is_empty() && hex).then_some(head)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_recipe_outside_git_is_named_relative_to_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("a/b/r.toml");
        std::fs::create_dir_all(recipe.parent().unwrap()).unwrap();
        std::fs::write(&recipe, "x").unwrap();
        let s = locate(&recipe, None).unwrap();
        assert_eq!((s.recipe.as_str(), s.commit), ("r.toml", None));
        let s = locate(&recipe, Some(dir.path())).unwrap();
        assert_eq!(s.recipe, "a/b/r.toml");
        std::fs::create_dir(dir.path().join("a/.git")).unwrap();
        assert_eq!(locate(&recipe, None).unwrap().recipe, "b/r.toml");
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(locate(&recipe, Some(other.path())), Err(SourceError::Outside { .. })));
    }

    #[test]
    fn recorded_paths_stay_inside_the_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"");
        for bad in ["", "/etc/passwd", "../r.toml", "a/../r.toml", "./r.toml"] {
            assert!(
                matches!(
                    find_recorded(dir.path(), bad, &d, &d),
                    Err(SourceError::RecordedPath { .. })
                ),
                "{bad}"
            );
        }
        std::fs::write(dir.path().join("r.toml"), "a\r\nb\n").unwrap();
        let want = Digest::of(b"a\nb\n");
        assert_eq!(
            find_recorded(dir.path(), "r.toml", &want, &d).unwrap(),
            dir.path().join("r.toml")
        );
        std::fs::write(dir.path().join("r.lock"), "lock").unwrap();
        assert!(matches!(
            find_recorded(dir.path(), "r.toml", &want, &d),
            Err(SourceError::Differs { .. })
        ));
        assert!(find_recorded(dir.path(), "r.toml", &want, &Digest::of(b"lock")).is_ok());
        assert!(matches!(
            find_recorded(dir.path(), "r.toml", &d, &d),
            Err(SourceError::Differs { .. })
        ));
    }
}

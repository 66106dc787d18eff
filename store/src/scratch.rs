//! Scratch space for files on their way into a store (layers and disk images before they are
//! stored): one folder per process under `$TMPDIR/kiln-scratch/`, named after its
//! [`Holder`]. Each new one first removes the folders of processes on this machine that are
//! gone, so a killed build leaves its partial layer behind only until the next run.

use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::holder::Holder;

/// The folder under the temporary directory that holds every process's scratch folder.
const SCRATCH: &str = "kiln-scratch";

/// This process's scratch folder (one per process); removed, with what is left in it, when
/// dropped.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates a fresh scratch folder, after removing those of dead processes.
    pub fn create() -> Result<Scratch> {
        Scratch::create_in(&std::env::temp_dir().join(SCRATCH))
    }

    fn create_in(base: &Path) -> Result<Scratch> {
        let local = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::LocalFile { path, source }
        };
        std::fs::create_dir_all(base).map_err(local(base))?;
        remove_dead(base);
        let name = match Holder::current() {
            Some(holder) => holder.file_name(),
            // Without /proc no one can tell this folder's owner is gone; the pid at least keeps
            // live processes apart.
            None => format!("unknown-{}", std::process::id()),
        };
        let path = base.join(name);
        std::fs::create_dir_all(&path).map_err(local(&path))?;
        Ok(Scratch { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            log::warn!("cannot remove scratch folder {}: {e}", self.path.display());
        }
    }
}

/// Removes the scratch folders of dead processes under `$TMPDIR` (as `kiln gc` does, besides
/// every new scratch folder).
pub fn remove_dead_folders() {
    remove_dead(&std::env::temp_dir().join(SCRATCH));
}

/// Removes the scratch folders in `base` whose process is known dead. Folders of live
/// processes, of other machines sharing the folder, and of other users are left alone.
fn remove_dead(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(holder) = name.to_str().and_then(Holder::from_file_name) else { continue };
        if holder.is_dead() {
            let path = entry.path();
            if let Err(e) = std::fs::remove_dir_all(&path) {
                log::warn!("cannot remove dead scratch folder {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_process_folder_is_removed_and_a_live_one_kept() {
        let base = tempfile::tempdir().unwrap();
        let me = Holder::current().unwrap();
        let dead = Holder { start: me.start + 1, ..me.clone() };
        let stale = base.path().join(dead.file_name());
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("layer"), b"partial").unwrap();
        let alien = base.path().join("not-a-holder");
        std::fs::create_dir_all(&alien).unwrap();
        let scratch = Scratch::create_in(base.path()).unwrap();
        assert!(!stale.exists());
        assert!(alien.exists());
        let other = Scratch::create_in(base.path()).unwrap();
        assert!(scratch.path().exists(), "a live process's folder is kept");
        assert_eq!(scratch.path(), other.path());
        drop(other);
        assert!(!scratch.path().exists());
    }
}

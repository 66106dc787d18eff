//! Which layer blobs this runner knows the diff_id of: a cached layer's recorded diff_id is
//! checked against its blob before a build uses it, and what a check (or the build that wrote
//! the layer) established is kept so the next build on this runner needs no second read.
//!
//! A blob's diff_id follows from its bytes, so a fact kept here never goes stale; the folder
//! is the runner's own (like its input file digests), never the shared store. Each fact is a
//! file named after the blob holding the diff_id's hex, written whole by a rename.

use std::path::{Path, PathBuf};

use futures::StreamExt as _;
use kiln_oci::{Descriptor, Digest};
use kiln_store::Store;

use crate::AttestError;

/// The diff_ids this runner has computed itself, kept in a folder.
#[derive(Clone, Debug)]
pub struct KnownLayers {
    dir: Option<PathBuf>,
}

/// What checking a cached layer's diff_id found.
#[derive(Debug)]
pub enum DiffIdCheck {
    /// The blob decompresses to the recorded diff_id.
    Matches,
    /// It decompresses to another one.
    Differs { found: Digest },
}

impl KnownLayers {
    /// Facts kept in `dir` (created when the first is written).
    pub fn at(dir: PathBuf) -> KnownLayers {
        KnownLayers { dir: Some(dir) }
    }

    /// Nothing kept: every check reads the blob.
    pub fn none() -> KnownLayers {
        KnownLayers { dir: None }
    }

    fn file(&self, blob: &Digest) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(blob.hex()))
    }

    /// Whether this runner found that `blob` decompresses to `diff_id`.
    pub fn knows(&self, blob: &Digest, diff_id: &Digest) -> bool {
        self.file(blob)
            .and_then(|file| std::fs::read_to_string(file).ok())
            .is_some_and(|known| known == diff_id.hex())
    }

    /// Keeps that `blob` decompresses to `diff_id`.
    pub fn remember(&self, blob: &Digest, diff_id: &Digest) -> std::io::Result<()> {
        let (Some(dir), Some(file)) = (&self.dir, self.file(blob)) else { return Ok(()) };
        std::fs::create_dir_all(dir)?;
        let mut staged = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut staged, diff_id.hex().as_bytes())?;
        staged.persist(&file).map_err(|e| e.error)?;
        Ok(())
    }

    /// Checks that the stored `layer` decompresses to `diff_id`: at once when this runner
    /// knows it (unless `reread`), else by reading the blob, keeping what it finds.
    pub async fn check(
        &self,
        store: &Store,
        layer: &Descriptor,
        diff_id: &Digest,
        reread: bool,
    ) -> Result<DiffIdCheck, AttestError> {
        if !reread && self.knows(&layer.digest, diff_id) {
            return Ok(DiffIdCheck::Matches);
        }
        let found = crate::stored_layer::diff_id(store, layer).await?;
        if let Err(e) = self.remember(&layer.digest, &found) {
            warn_unkept(self.dir.as_deref(), &e);
        }
        Ok(if found == *diff_id { DiffIdCheck::Matches } else { DiffIdCheck::Differs { found } })
    }

    /// [`KnownLayers::check`] of each `(layer, diff_id)`, in order, several layers at once.
    pub async fn check_all(
        &self,
        store: &Store,
        layers: &[(Descriptor, Digest)],
        reread: bool,
    ) -> Vec<Result<DiffIdCheck, AttestError>> {
        futures::stream::iter(layers)
            .map(|(layer, diff_id)| self.check(store, layer, diff_id, reread))
            .buffered(crate::publish::layers_at_once())
            .collect()
            .await
    }
}

/// A fact that could not be kept only costs a read next time: said, not fatal.
pub fn warn_unkept(dir: Option<&Path>, e: &std::io::Error) {
    let dir = dir.map_or_else(String::new, |d| format!(" in {}", d.display()));
    log::warn!("cannot keep a layer's diff_id{dir}: {e}");
}

//! Taking over a finished blob file: in a folder store it is renamed into place instead of
//! copied, so a freshly built 1 GiB layer is written to disk once, not twice, and read back
//! not at all.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use kiln_oci::Digest;

use crate::blob::PutOutcome;
use crate::error::{Result, StoreError};
use crate::{key, Store};

/// The mode of a blob file adopted into a folder store.
const BLOB_MODE: u32 = 0o644;

impl Store {
    /// Whether [`Store::adopt_blob_file`] moves a file into place (a folder store) rather
    /// than sending its bytes: then there is no upload to start early.
    pub fn adopts_by_rename(&self) -> bool {
        self.folder.is_some()
    }

    /// Stores the file at `path`, which the caller hashed as it wrote it and says is
    /// `expected` of `size` bytes, and takes it over: on success nothing is left at `path`.
    ///
    /// A folder store renames the file into place after checking its size; it does not read
    /// the file again, since the caller has just hashed those bytes, and every read of the
    /// blob re-hashes it anyway. Where a rename cannot move it (another store kind or another
    /// filesystem) it is streamed, and hashed on the way, like [`Store::put_blob_file`].
    pub async fn adopt_blob_file(
        &self,
        path: &Path,
        expected: &Digest,
        size: u64,
    ) -> Result<PutOutcome> {
        let local = |source| StoreError::LocalFile { path: path.to_path_buf(), source };
        let Some(folder) = &self.folder else {
            let outcome = self.put_blob_file(path, expected, size).await?;
            std::fs::remove_file(path).map_err(local)?;
            return Ok(outcome);
        };
        let found_size = std::fs::metadata(path).map_err(local)?.len();
        if found_size != size {
            return Err(StoreError::FileSize {
                path: path.to_path_buf(),
                expected_size: size,
                found_size,
            });
        }
        if self.has_blob(expected).await? {
            std::fs::remove_file(path).map_err(local)?;
            return Ok(PutOutcome { digest: *expected, size, uploaded: false });
        }
        // A scratch file is private to its writer (0600); a stored blob is readable by all,
        // whatever the umask, like the files of an OCI layout.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(BLOB_MODE))
            .map_err(local)?;
        let staging = key::upload(expected);
        let staged = folder.join(staging.as_ref());
        if let Some(dir) = staged.parent() {
            std::fs::create_dir_all(dir).map_err(local)?;
        }
        if std::fs::rename(path, &staged).is_err() {
            // Most likely another filesystem: fall back to streaming the bytes.
            let outcome = self.put_blob_file(path, expected, size).await?;
            std::fs::remove_file(path).map_err(local)?;
            return Ok(outcome);
        }
        let published = self.publish(&staging, expected, size).await;
        // The staging name only ever held the caller's finished file; leaving it would cost
        // space, not correctness (gc removes stale uploads), so a failed delete is a warning.
        match self.inner.delete(&staging).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                log::warn!("cannot remove the staged upload {staging} ({e}); gc removes it")
            }
        }
        Ok(PutOutcome { digest: *expected, size, uploaded: published? })
    }
}

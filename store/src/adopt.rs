//! Taking over a finished blob file: in a folder store it is renamed into place instead of
//! copied, so a freshly built 1 GiB layer is written to disk once, not twice.

use std::io::Read;
use std::path::Path;

use kiln_oci::{Digest, Sha256};

use crate::blob::PutOutcome;
use crate::error::{Result, StoreError};
use crate::{key, Store};

impl Store {
    /// Stores the file at `path`, which the caller says is `expected` of `size` bytes, and
    /// takes it over: on success nothing is left at `path`. The file is re-hashed first and
    /// refused, publishing nothing and leaving it in place, if it is not what the caller said. Where a rename cannot move it (another store kind or another
    /// filesystem) it is streamed like [`Store::put_blob_file`].
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
        if self.has_blob(expected).await? {
            std::fs::remove_file(path).map_err(local)?;
            return Ok(PutOutcome { digest: *expected, size, uploaded: false });
        }
        let owned = path.to_path_buf();
        let (found, found_size) = tokio::task::spawn_blocking(move || hash_file(&owned))
            .await
            .map_err(|e| local(std::io::Error::other(e)))?
            .map_err(local)?;
        if found != *expected || found_size != size {
            return Err(StoreError::FileMismatch {
                path: path.to_path_buf(),
                expected: *expected,
                expected_size: size,
                found,
                found_size,
            });
        }
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
        // The staging name only ever held a verified copy; leaving it would cost space, not
        // correctness (gc removes stale uploads), so a failed delete is not an error.
        let _ = self.inner.delete(&staging).await;
        Ok(PutOutcome { digest: *expected, size, uploaded: published? })
    }
}

fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher.finish(), size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

//! `store check --repair`: what a check found damaged is set right from the store alone,
//! without a recipe. Refs and referrer entries that lead to a missing, corrupt, wrongly sized
//! or undecodable blob are dropped (their images are unusable; rebuilding or copying them
//! again sets them anew), so are build cache entries no build would use, and corrupt blobs
//! are moved to `quarantine/`, freeing their keys for a verified write. Problems only a
//! person can judge (stray keys, unreadable blobs) and unfinished uploads (gc's to abort) are
//! left and listed.

use crate::check::{CheckProgress, DamagedRoot};
use crate::check_report::{CheckReport, Problem, RepairReport};
use crate::error::{Result, StoreError};
use crate::Store;

impl Store {
    /// Checks the store like [`Store::check`], then repairs what it found. The report lists
    /// the problems found and, under `repair`, what was done.
    pub async fn repair(&self, progress: &dyn CheckProgress) -> Result<CheckReport> {
        let findings = self.find_problems(progress).await?;
        let mut repair = RepairReport::default();
        // Roots first, so nothing points at a blob while it is moved aside.
        for root in &findings.damaged_refs {
            self.drop_root(root, &mut repair.refs_dropped, &mut repair.changed_since).await?;
        }
        for root in &findings.damaged_referrers {
            self.drop_root(root, &mut repair.referrers_dropped, &mut repair.changed_since).await?;
        }
        self.remove_cache_entries(&findings.bad_cache).await?;
        repair.cache_entries_dropped = findings.bad_cache.iter().map(|b| b.key.clone()).collect();
        for (digest, found) in &findings.corrupt {
            repair.quarantined.push(self.quarantine_blob(digest, *found).await?);
        }
        repair.left = findings
            .report
            .problems
            .iter()
            .filter(|p| {
                matches!(
                    p,
                    Problem::StrayKey { .. }
                        | Problem::UnreadableBlob { .. }
                        | Problem::UnfinishedUpload { .. }
                        | Problem::UnrecordedUpload { .. }
                )
            })
            .cloned()
            .collect();
        Ok(CheckReport { repair: Some(repair), ..findings.report })
    }

    /// Deletes a damaged root unless it holds other bytes than when it was checked.
    async fn drop_root(
        &self,
        root: &DamagedRoot,
        dropped: &mut Vec<String>,
        changed: &mut Vec<String>,
    ) -> Result<()> {
        let key = root.key.to_string();
        match self.read_object(&root.key).await? {
            None => return Ok(()),
            Some(now) if now != root.held => {
                changed.push(key);
                return Ok(());
            }
            Some(_) => {}
        }
        match self.inner.delete(&root.key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(StoreError::backend(&root.key, source)),
        }
        dropped.push(key);
        Ok(())
    }
}

//! Scratch files: what a build writes into its scratch folder before the sink stores it or a
//! later step consumes it.

use std::path::Path;

/// Removes a scratch file that is no longer needed. It lies in the build's scratch folder,
/// which goes as a whole when the build ends, so a failure only holds the space longer: it is
/// warned about, not an error. A file already gone (layers with the same bytes share one) is
/// what was wanted.
pub(crate) fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!(
                "cannot remove scratch file {}: {e}; it goes with the scratch folder",
                path.display()
            );
        }
    }
}

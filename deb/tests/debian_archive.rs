#![allow(clippy::unwrap_used)]
//! Debian's own archive keyring (package debian-archive-keyring) reads as a key file, and
//! the InRelease files apt fetched for this machine verify against it: the case every recipe
//! that names a Debian mirror depends on.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kiln_deb::Keyring;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const APT_LISTS: &str = "/var/lib/apt/lists";

/// The InRelease files apt keeps for Debian's own archives (not third-party ones).
fn debian_releases() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = match std::fs::read_dir(APT_LISTS) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.ends_with("_InRelease") && name.contains("debian.org_debian")
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    found
}

#[test]
fn debian_archive_keyring_verifies_debian_releases() {
    let releases = debian_releases();
    if !Path::new(KEYRING).exists() || releases.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{KEYRING} or Debian InRelease files in {APT_LISTS} are missing: run ci/install-deps"
        );
        eprintln!("SKIP: no Debian archive keyring or no Debian InRelease in {APT_LISTS}");
        return;
    }
    let keyring = Keyring::parse(&std::fs::read(KEYRING).unwrap()).unwrap();
    keyring.check_usable(SystemTime::now()).unwrap();
    for release in releases {
        let text = std::fs::read_to_string(&release).unwrap();
        let signed = keyring.verify_clearsigned(&text, SystemTime::now());
        let signed = signed.unwrap_or_else(|e| panic!("{}: {e}", release.display()));
        assert!(signed.contains("\nSHA256:\n"), "{}: no SHA256 list", release.display());
    }
}

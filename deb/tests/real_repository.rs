#![allow(clippy::unwrap_used)]
//! The whole chain on real Debian packages: the signed repository `ci/debian-repo` makes
//! (`KILN_DEBIAN_REPO`) is verified, resolved for amd64 and arm64, and every chosen `.deb`
//! is checked against its index and read member by member.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kiln_deb::repository::{load_suite, Fetch, RepositoryError};
use kiln_deb::signature::SignatureError;
use kiln_deb::{read_deb, resolve, Keyring, Limits, MemberKind, Sha256};

/// The repository folder, or `None` (a skip locally, a failure in CI).
fn repo() -> Option<PathBuf> {
    match std::env::var_os("KILN_DEBIAN_REPO") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "KILN_DEBIAN_REPO is not set up: run ci/debian-repo DIR"
            );
            eprintln!("SKIP: set KILN_DEBIAN_REPO to a folder made by ci/debian-repo");
            None
        }
    }
}

struct Folder(PathBuf);

impl Fetch for Folder {
    fn get(&mut self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let file = match std::fs::File::open(self.0.join(path)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(io::Error::other(format!("{path} is larger than {limit} bytes")));
        }
        Ok(Some(bytes))
    }
}

fn keyring(dir: &Path, name: &str) -> Keyring {
    Keyring::parse(&std::fs::read(dir.join(name)).unwrap()).unwrap()
}

#[test]
fn real_packages_verify_resolve_and_read_for_both_architectures() {
    let Some(dir) = repo() else { return };
    let archs = ["amd64".to_string(), "arm64".to_string()];
    let suite = load_suite(
        &mut Folder(dir.join("repo")),
        &keyring(&dir, "key.asc"),
        "kiln",
        &["main".to_string()],
        &archs,
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert_eq!(suite.release_file, "InRelease");
    for arch in &archs {
        let records = &suite.packages[arch];
        let wanted = ["busybox-static".to_string(), "ca-certificates".to_string()];
        let chosen = resolve(records, arch, &wanted).unwrap();
        let names: BTreeSet<&str> = chosen.iter().map(|p| p.name.as_str()).collect();
        for needed in
            ["busybox-static", "ca-certificates", "openssl", "libssl3", "libc6", "debconf"]
        {
            assert!(names.contains(needed), "{arch}: {needed} missing from {names:?}");
        }
        // `debconf (>= 0.5) | debconf-2.0`: the first alternative, not cdebconf.
        assert!(!names.contains("cdebconf"), "{arch}: {names:?}");
        for p in &chosen {
            assert!(p.architecture == *arch || p.architecture == "all", "{}", p.name);
            let bytes = std::fs::read(dir.join("repo").join(&p.filename)).unwrap();
            assert_eq!((Sha256::of(&bytes), bytes.len() as u64), (p.sha256, p.size), "{}", p.name);
            let mut files = 0u64;
            let control = read_deb(&bytes[..], Limits::default(), |m, r| {
                if let MemberKind::File { size } = m.kind {
                    assert_eq!(io::copy(r, &mut io::sink())?, size);
                    files += 1;
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", p.filename));
            assert_eq!(control.fields.get("Package"), Some(p.name.as_str()));
            assert_eq!(control.fields.get("Version"), Some(p.version.as_str()));
            assert!(files > 0, "{} has no files", p.name);
        }
        let busybox = chosen.iter().find(|p| p.name == "busybox-static").unwrap();
        assert!(busybox.version.as_str().contains("1."), "{}", busybox.version);
    }
}

#[test]
fn the_real_release_signed_by_another_key_is_refused() {
    let Some(dir) = repo() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("dists/kiln");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(dir.join("other-InRelease"), copy.join("InRelease")).unwrap();
    let err = load_suite(
        &mut Folder(scratch.path().to_path_buf()),
        &keyring(&dir, "key.asc"),
        "kiln",
        &["main".to_string()],
        &["amd64".to_string()],
        std::time::SystemTime::now(),
    )
    .unwrap_err();
    assert!(
        matches!(err, RepositoryError::Signature { source: SignatureError::Untrusted { .. }, .. }),
        "{err}"
    );
}

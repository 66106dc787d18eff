use std::collections::BTreeMap;

use super::*;

/// A repository in memory, laid out as on a mirror.
struct Files(BTreeMap<String, Vec<u8>>);

impl Fetch for Files {
    fn get(&mut self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        match self.0.get(path) {
            Some(b) if b.len() as u64 > limit => Err(io::Error::other("larger than the limit")),
            other => Ok(other.cloned()),
        }
    }
}

const IN_RELEASE: &str = include_str!("../../testdata/InRelease");
const PACKAGES: &str = "Package: hello\n";

fn keyring_a() -> Keyring {
    Keyring::parse(include_bytes!("../../testdata/a.asc")).unwrap()
}

fn repo(release_files: &[(&str, &[u8])]) -> Files {
    let mut files = BTreeMap::new();
    for (name, bytes) in release_files {
        files.insert(format!("dists/test/{name}"), bytes.to_vec());
    }
    files.insert("dists/test/main/binary-amd64/Packages".into(), PACKAGES.as_bytes().to_vec());
    Files(files)
}

fn load(files: &mut Files, keyring: &Keyring) -> Result<Suite, RepositoryError> {
    load_suite(files, keyring, "test", &["main".into()], &["amd64".into()], SystemTime::now())
}

#[test]
fn a_clearsigned_release_verifies_and_its_index_is_checked() {
    let mut files = repo(&[("InRelease", IN_RELEASE.as_bytes())]);
    // The index is a single record missing its fields: reaching the parser proves the
    // signature and the hash were accepted.
    let err = load(&mut files, &keyring_a()).unwrap_err();
    assert!(matches!(err, RepositoryError::Records { .. }), "{err}");
}

#[test]
fn release_with_a_detached_signature_verifies() {
    let mut files = repo(&[
        ("Release", include_bytes!("../../testdata/Release")),
        ("Release.gpg", include_bytes!("../../testdata/Release.gpg")),
    ]);
    let err = load(&mut files, &keyring_a()).unwrap_err();
    assert!(matches!(err, RepositoryError::Records { .. }), "{err}");
}

#[test]
fn a_release_signed_by_another_key_is_refused() {
    let other = include_str!("../../testdata/InRelease.other-key");
    let mut files = repo(&[("InRelease", other.as_bytes())]);
    let err = load(&mut files, &keyring_a()).unwrap_err();
    assert!(
        matches!(&err, RepositoryError::Signature { source: SignatureError::Untrusted { .. }, .. }),
        "{err}"
    );
    // And the other key, given as a binary key file, accepts it.
    let b = Keyring::parse(include_bytes!("../../testdata/b.gpg")).unwrap();
    assert!(matches!(load(&mut files, &b), Err(RepositoryError::Records { .. })));
}

#[test]
fn an_edited_signed_text_is_refused() {
    let edited = IN_RELEASE.replace("Suite: test", "Suite: tesT");
    let mut files = repo(&[("InRelease", edited.as_bytes())]);
    let err = load(&mut files, &keyring_a()).unwrap_err();
    assert!(matches!(err, RepositoryError::Signature { .. }), "{err}");
    let mut files = repo(&[
        ("Release", b"Suite: test\nSHA256:\n"),
        ("Release.gpg", include_bytes!("../../testdata/Release.gpg")),
    ]);
    assert!(matches!(load(&mut files, &keyring_a()), Err(RepositoryError::Signature { .. })));
}

#[test]
fn an_unsigned_or_missing_release_is_refused() {
    let mut files = repo(&[("Release", include_bytes!("../../testdata/Release"))]);
    assert!(matches!(load(&mut files, &keyring_a()), Err(RepositoryError::Unsigned { .. })));
    let mut files = repo(&[]);
    assert!(matches!(load(&mut files, &keyring_a()), Err(RepositoryError::NoRelease { .. })));
}

#[test]
fn an_index_whose_hash_differs_from_the_release_is_refused() {
    let mut files = repo(&[("InRelease", IN_RELEASE.as_bytes())]);
    files.0.insert("dists/test/main/binary-amd64/Packages".into(), b"Package: hellO\n".to_vec());
    let err = load(&mut files, &keyring_a()).unwrap_err();
    assert!(matches!(err, RepositoryError::IndexDigest { .. }), "{err}");
    assert!(
        err.to_string().contains("but the signed release says 15 bytes with sha256 b0504db6"),
        "{err}"
    );
}

#[test]
fn a_suite_or_architecture_the_release_does_not_list_is_refused() {
    let mut files = repo(&[("InRelease", IN_RELEASE.as_bytes())]);
    let err = load_suite(
        &mut files,
        &keyring_a(),
        "test",
        &["main".into()],
        &["arm64".into()],
        SystemTime::now(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the release of test lists no main/binary-arm64/Packages index (its architectures: amd64; components: main)"
    );
    let mut files = Files(BTreeMap::from([(
        "dists/other/InRelease".to_string(),
        IN_RELEASE.as_bytes().to_vec(),
    )]));
    let err = load_suite(
        &mut files,
        &keyring_a(),
        "other",
        &["main".into()],
        &["amd64".into()],
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, RepositoryError::WrongSuite { .. }), "{err}");
}

#[test]
fn a_key_file_that_is_not_a_key_is_refused() {
    assert!(Keyring::parse(b"not a key").is_err());
    assert!(Keyring::parse(IN_RELEASE.as_bytes()).is_err());
}

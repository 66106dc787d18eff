//! The chain of trust of one repository: `InRelease` (or `Release` + `Release.gpg`)
//! verified against the trusted keys, then each `Packages` index checked against the
//! sha256 and size the signed release gives before it is decompressed and parsed. How the
//! bytes are fetched is the caller's ([`Fetch`]).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::date::utc;
use crate::decompress::{Bounded, Bounds, Codec};
use crate::packages::{parse_index, PackageRecord, RecordError, Sha256};
use crate::release::{Release, ReleaseError};
use crate::signature::{Keyring, SignatureError, CLOCK_SKEW};

/// Reads files of a repository by their path under its root URL.
pub trait Fetch {
    /// The file's bytes, `Ok(None)` when the repository has no such file; an error when it
    /// is larger than `limit` bytes.
    fn get(&mut self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>>;
}

/// The most bytes a release file may have.
pub const RELEASE_LIMIT: u64 = 16 << 20;
/// The most bytes a compressed `Packages` index may have.
pub const INDEX_LIMIT: u64 = 256 << 20;
/// How far a `Packages` index may expand (Debian's largest is about 100 MiB).
const INDEX_BOUNDS: Bounds = Bounds { max_total: 1 << 30, max_ratio: 100 };

/// One suite of a repository: what its signed release says and every package record of
/// the requested components, per architecture.
#[derive(Debug)]
pub struct Suite {
    /// sha256 of the signed release file as fetched (`InRelease`, else `Release`).
    pub release_digest: Sha256,
    /// Which file that digest is of.
    pub release_file: &'static str,
    pub release: Release,
    pub packages: BTreeMap<String, Vec<PackageRecord>>,
}

/// Why a repository's indexes were refused.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("fetching {path} failed")]
    Fetch { path: String, source: io::Error },
    #[error("the repository has neither dists/{suite}/InRelease nor dists/{suite}/Release")]
    NoRelease { suite: String },
    #[error(
        "dists/{suite}/Release has no signature (Release.gpg); kiln uses only signed repositories"
    )]
    Unsigned { suite: String },
    #[error("the key file cannot vouch for any release")]
    Keys(#[source] SignatureError),
    #[error("the signature of {path} does not verify")]
    Signature { path: String, source: SignatureError },
    #[error("{path} is not text")]
    NotText { path: String },
    #[error("{path} is malformed")]
    Release { path: String, source: ReleaseError },
    #[error("{path} was valid until {until}; the repository (or a mirror replaying an old release) is stale")]
    Expired { path: String, until: String },
    #[error("{path} is dated {date}, ahead of this machine's clock; check the clock (the release is not valid yet)")]
    NotYetValid { path: String, date: String },
    #[error("{path} describes suite {found:?}, not {suite:?}")]
    WrongSuite { path: String, suite: String, found: String },
    #[error("the release of {suite} lists no {component}/binary-{arch}/Packages index (its architectures: {archs}; components: {components})")]
    NoIndex { suite: String, component: String, arch: String, archs: String, components: String },
    #[error("{path} is listed in the release but missing from the repository")]
    MissingIndex { path: String },
    #[error("{path} is {found_size} bytes with sha256 {found}, but the signed release says {size} bytes with sha256 {expected}")]
    IndexDigest { path: String, expected: Sha256, size: u64, found: Sha256, found_size: u64 },
    #[error("{path} does not decompress")]
    Decompress { path: String, source: io::Error },
    #[error("{path} is malformed")]
    Records { path: String, source: Box<RecordError> },
}

/// Fetches and checks one suite: its signed release and the `Packages` index of every
/// component for every architecture. The keys, the signature and the release's
/// `Valid-Until` must all be valid at `at`, the moment the suite is resolved.
pub fn load_suite(
    fetch: &mut dyn Fetch,
    keyring: &Keyring,
    suite: &str,
    components: &[String],
    architectures: &[String],
    at: SystemTime,
) -> Result<Suite, RepositoryError> {
    keyring.check_usable(at).map_err(RepositoryError::Keys)?;
    let get = |fetch: &mut dyn Fetch, path: &str, limit| {
        fetch
            .get(path, limit)
            .map_err(|source| RepositoryError::Fetch { path: path.to_string(), source })
    };
    let base = format!("dists/{suite}");
    let in_release = format!("{base}/InRelease");
    let (path, text, digest, file) = match get(fetch, &in_release, RELEASE_LIMIT)? {
        Some(bytes) => {
            let text = utf8(&bytes, &in_release)?;
            let signed = keyring.verify_clearsigned(text, at).map_err(|source| {
                RepositoryError::Signature { path: in_release.clone(), source }
            })?;
            (in_release, signed, Sha256::of(&bytes), "InRelease")
        }
        None => {
            let release = format!("{base}/Release");
            let bytes = get(fetch, &release, RELEASE_LIMIT)?
                .ok_or_else(|| RepositoryError::NoRelease { suite: suite.to_string() })?;
            let signature = get(fetch, &format!("{release}.gpg"), RELEASE_LIMIT)?
                .ok_or_else(|| RepositoryError::Unsigned { suite: suite.to_string() })?;
            keyring
                .verify_detached(&bytes, &signature, at)
                .map_err(|source| RepositoryError::Signature { path: release.clone(), source })?;
            let text = utf8(&bytes, &release)?.to_string();
            (release, text, Sha256::of(&bytes), "Release")
        }
    };
    let release = Release::parse(&text)
        .map_err(|source| RepositoryError::Release { path: path.clone(), source })?;
    let now = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Some(until) = release.valid_until.filter(|&until| until <= now) {
        return Err(RepositoryError::Expired { path, until: utc(until) });
    }
    if let Some(date) = release.date.filter(|&date| date > now + CLOCK_SKEW) {
        return Err(RepositoryError::NotYetValid { path, date: utc(date) });
    }
    if !release.is_suite(suite) {
        let found = release.suite.clone().or(release.codename.clone()).unwrap_or_default();
        return Err(RepositoryError::WrongSuite { path, suite: suite.to_string(), found });
    }
    let mut packages = BTreeMap::new();
    for arch in architectures {
        let mut records = Vec::new();
        for component in components {
            records.extend(load_index(fetch, &release, suite, component, arch)?);
        }
        packages.insert(arch.clone(), records);
    }
    Ok(Suite { release_digest: digest, release_file: file, release, packages })
}

fn utf8<'a>(bytes: &'a [u8], path: &str) -> Result<&'a str, RepositoryError> {
    std::str::from_utf8(bytes).map_err(|_| RepositoryError::NotText { path: path.to_string() })
}

/// One component's index for one architecture: the best-compressed form the release lists,
/// checked against its signed sha256 and size before anything reads it.
fn load_index(
    fetch: &mut dyn Fetch,
    release: &Release,
    suite: &str,
    component: &str,
    arch: &str,
) -> Result<Vec<PackageRecord>, RepositoryError> {
    let stem = format!("{component}/binary-{arch}/Packages");
    let (suffix, (expected, size)) = [".xz", ".gz", ".zst", ".bz2", ""]
        .into_iter()
        .find_map(|suffix| release.file(&format!("{stem}{suffix}")).map(|f| (suffix, f)))
        .ok_or_else(|| RepositoryError::NoIndex {
            suite: suite.to_string(),
            component: component.to_string(),
            arch: arch.to_string(),
            archs: release.architectures.join(" "),
            components: release.components.join(" "),
        })?;
    let path = format!("dists/{suite}/{stem}{suffix}");
    let bytes = fetch
        .get(&path, size.min(INDEX_LIMIT))
        .map_err(|source| RepositoryError::Fetch { path: path.clone(), source })?
        .ok_or_else(|| RepositoryError::MissingIndex { path: path.clone() })?;
    let found = Sha256::of(&bytes);
    if found != expected || bytes.len() as u64 != size {
        return Err(RepositoryError::IndexDigest {
            path,
            expected,
            size,
            found,
            found_size: bytes.len() as u64,
        });
    }
    let codec = Codec::from_suffix(suffix).unwrap_or(Codec::None);
    let mut text = String::new();
    Bounded::new(&bytes[..], codec, INDEX_BOUNDS)
        .and_then(|mut r| r.read_to_string(&mut text))
        .map_err(|source| RepositoryError::Decompress { path: path.clone(), source })?;
    parse_index(&text).map_err(|source| RepositoryError::Records { path, source: Box::new(source) })
}

#[cfg(test)]
mod tests;

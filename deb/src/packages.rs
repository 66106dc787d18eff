//! Records of a `Packages` index: one binary package each, with where to fetch it, its
//! size and sha256, and its relationships.

use std::fmt;

use crate::deb822::{self, Deb822Error, Paragraph};
use crate::relation::{parse_relations, Relation, RelationError};
use crate::version::{Version, VersionError};

/// A sha256 digest as an index or a lock gives it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn of(bytes: &[u8]) -> Sha256 {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    pub fn parse(hex_text: &str) -> Option<Sha256> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut out).ok()?;
        // Lower-case only, so one digest has one spelling.
        (hex::encode(out) == hex_text).then_some(Sha256(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

/// One binary package of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRecord {
    pub name: String,
    pub version: Version,
    pub architecture: String,
    /// Path of the `.deb` relative to the repository's root URL.
    pub filename: String,
    pub size: u64,
    pub sha256: Sha256,
    /// The source package's name and version (the binary's own when the index names none).
    pub source: String,
    pub source_version: Version,
    pub depends: Vec<Relation>,
    pub pre_depends: Vec<Relation>,
    pub provides: Vec<Relation>,
    pub conflicts: Vec<Relation>,
}

/// Why a package record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the index is malformed")]
    Syntax(#[source] Deb822Error),
    #[error("the record on line {line} has no {field} field")]
    Missing { line: usize, field: &'static str },
    #[error("package {package}'s {field} field is malformed: {problem}")]
    Field { package: String, field: &'static str, problem: String },
    #[error("package {package}'s {field} field is malformed")]
    Relation { package: String, field: &'static str, source: RelationError },
    #[error("package {package}'s version is malformed")]
    Version { package: String, source: VersionError },
}

/// Parses a whole `Packages` index.
pub fn parse_index(text: &str) -> Result<Vec<PackageRecord>, RecordError> {
    deb822::parse(text)
        .map_err(RecordError::Syntax)?
        .iter()
        .map(PackageRecord::from_paragraph)
        .collect()
}

impl PackageRecord {
    pub fn from_paragraph(p: &Paragraph) -> Result<PackageRecord, RecordError> {
        let need =
            |field: &'static str| p.get(field).ok_or(RecordError::Missing { line: p.line, field });
        let name = need("Package")?.to_string();
        let bad = |field: &'static str, problem: &str| RecordError::Field {
            package: name.clone(),
            field,
            problem: problem.to_string(),
        };
        let version = Version::parse(need("Version")?)
            .map_err(|source| RecordError::Version { package: name.clone(), source })?;
        let filename = need("Filename")?.to_string();
        if filename.starts_with('/') || filename.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(bad("Filename", "it is absolute or climbs with \"..\""));
        }
        let size = need("Size")?.parse::<u64>().map_err(|_| bad("Size", "not a number"))?;
        let sha256 = Sha256::parse(need("SHA256")?)
            .ok_or_else(|| bad("SHA256", "not 64 lower-case hex digits"))?;
        let relations =
            |field: &'static str| {
                parse_relations(p.get(field).unwrap_or("")).map_err(|source| {
                    RecordError::Relation { package: name.clone(), field, source }
                })
            };
        let (source, source_version) = match p.get("Source") {
            None => (name.clone(), version.clone()),
            Some(text) => match text.split_once('(') {
                None => (text.trim().to_string(), version.clone()),
                Some((s, v)) => {
                    let v = v
                        .trim()
                        .strip_suffix(')')
                        .ok_or_else(|| bad("Source", "a '(' is not closed"))?;
                    let v = Version::parse(v.trim())
                        .map_err(|source| RecordError::Version { package: name.clone(), source })?;
                    (s.trim().to_string(), v)
                }
            },
        };
        Ok(PackageRecord {
            version,
            architecture: need("Architecture")?.to_string(),
            filename,
            size,
            sha256,
            source,
            source_version,
            depends: relations("Depends")?,
            pre_depends: relations("Pre-Depends")?,
            provides: relations("Provides")?,
            conflicts: relations("Conflicts")?,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = "Package: ca-certificates\nVersion: 20230311+deb12u1\nArchitecture: all\nSource: ca-certificates (20230311)\nDepends: openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0\nFilename: pool/main/c/ca-certificates/ca-certificates_20230311+deb12u1_all.deb\nSize: 162420\nSHA256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";

    #[test]
    fn a_record_is_read_whole() {
        let r = &parse_index(RECORD).unwrap()[0];
        assert_eq!(r.name, "ca-certificates");
        assert_eq!(r.architecture, "all");
        assert_eq!(r.size, 162420);
        assert_eq!(r.source, "ca-certificates");
        assert_eq!(r.source_version.as_str(), "20230311");
        assert_eq!(r.depends.len(), 2);
        assert_eq!(
            r.sha256.to_string(),
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn bad_records_name_the_package_and_field() {
        let no_hash = RECORD.replace("SHA256: 0123", "SHA256: 0123X");
        let err = parse_index(&no_hash).unwrap_err();
        assert_eq!(
            err.to_string(),
            "package ca-certificates's SHA256 field is malformed: not 64 lower-case hex digits"
        );
        let climbing = RECORD.replace("Filename: pool", "Filename: ../pool");
        assert!(parse_index(&climbing).is_err());
        let missing = RECORD.replace("Size: 162420\n", "");
        assert!(matches!(parse_index(&missing), Err(RecordError::Missing { field: "Size", .. })));
    }
}

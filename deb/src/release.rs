//! A repository's `Release` file (the signed text of `InRelease`): which suite it is and
//! the sha256 and size of every index it lists.

use std::collections::BTreeMap;

use crate::date::parse_release_date;
use crate::deb822::{self, Deb822Error};
use crate::packages::Sha256;

/// The parts of a `Release` file kiln uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    /// `Valid-Until`, seconds since the Unix epoch: after it the release is stale (a
    /// mirror may be replaying an old one), and apt refuses it.
    pub valid_until: Option<u64>,
    /// `Date`, seconds since the Unix epoch: when the release was made. One dated ahead of
    /// the clock is refused, as apt refuses it.
    pub date: Option<u64>,
    files: BTreeMap<String, (Sha256, u64)>,
}

/// Why a `Release` file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("it is malformed")]
    Syntax(#[source] Deb822Error),
    #[error("it has {0} paragraphs, not 1")]
    Paragraphs(usize),
    #[error("it has no SHA256 field")]
    NoSha256,
    #[error("its SHA256 line {0:?} is not `HASH SIZE PATH`")]
    Line(String),
    #[error("its Valid-Until {0:?} is not a date")]
    ValidUntil(String),
    #[error("its Date {0:?} is not a date")]
    Date(String),
}

impl Release {
    pub fn parse(text: &str) -> Result<Release, ReleaseError> {
        let paragraphs = deb822::parse(text).map_err(ReleaseError::Syntax)?;
        let [p] = paragraphs.as_slice() else {
            return Err(ReleaseError::Paragraphs(paragraphs.len()));
        };
        let list = |field: &str| -> Vec<String> {
            p.get(field).unwrap_or("").split_whitespace().map(str::to_string).collect()
        };
        let mut files = BTreeMap::new();
        for line in p.get("SHA256").ok_or(ReleaseError::NoSha256)?.lines().filter(|l| !l.is_empty())
        {
            let bad = || ReleaseError::Line(line.to_string());
            let mut parts = line.split_whitespace();
            let (Some(hash), Some(size), Some(path), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let hash = Sha256::parse(hash).ok_or_else(bad)?;
            let size = size.parse::<u64>().map_err(|_| bad())?;
            files.insert(path.to_string(), (hash, size));
        }
        let date_of = |field: &str, bad: fn(String) -> ReleaseError| match p.get(field) {
            None => Ok(None),
            Some(text) => parse_release_date(text).map(Some).ok_or_else(|| bad(text.to_string())),
        };
        Ok(Release {
            valid_until: date_of("Valid-Until", ReleaseError::ValidUntil)?,
            date: date_of("Date", ReleaseError::Date)?,
            suite: p.get("Suite").map(str::to_string),
            codename: p.get("Codename").map(str::to_string),
            architectures: list("Architectures"),
            components: list("Components"),
            files,
        })
    }

    /// The sha256 and size the release gives for an index path (`main/binary-amd64/Packages.xz`).
    pub fn file(&self, path: &str) -> Option<(Sha256, u64)> {
        self.files.get(path).copied()
    }

    /// Whether the release calls itself `suite`, by suite or by codename (apt accepts either).
    pub fn is_suite(&self, suite: &str) -> bool {
        self.suite.as_deref() == Some(suite) || self.codename.as_deref() == Some(suite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_names_are_read() {
        let h = "ab".repeat(32);
        let text = format!(
            "Origin: Debian\nSuite: stable\nCodename: bookworm\nArchitectures: amd64 arm64\nComponents: main\nMD5Sum:\n 00 1 main/binary-amd64/Packages\nSHA256:\n {h} 1234 main/binary-amd64/Packages\n {h}   99 main/binary-amd64/Packages.xz\n"
        );
        let r = Release::parse(&text).unwrap();
        assert!(r.is_suite("bookworm") && r.is_suite("stable") && !r.is_suite("trixie"));
        assert_eq!(r.architectures, ["amd64", "arm64"]);
        assert_eq!(r.file("main/binary-amd64/Packages.xz").map(|f| f.1), Some(99));
        assert_eq!(r.file("main/binary-arm64/Packages"), None);
        assert!(matches!(Release::parse("Suite: x\n"), Err(ReleaseError::NoSha256)));
        assert!(matches!(Release::parse("SHA256:\n zz 1 x\n"), Err(ReleaseError::Line(_))));
        assert_eq!(r.valid_until, None);
        let dated = format!("Valid-Until: Thu, 01 Jan 1970 00:01:00 UTC\n{text}");
        assert_eq!(Release::parse(&dated).unwrap().valid_until, Some(60));
        let bad = format!("Valid-Until: soon\n{text}");
        assert!(matches!(Release::parse(&bad), Err(ReleaseError::ValidUntil(_))));
        assert_eq!(r.date, None);
        let made = format!("Date: Thu, 01 Jan 1970 00:02:00 UTC\n{text}");
        assert_eq!(Release::parse(&made).unwrap().date, Some(120));
        let bad = format!("Date: today\n{text}");
        assert!(matches!(Release::parse(&bad), Err(ReleaseError::Date(_))));
    }
}

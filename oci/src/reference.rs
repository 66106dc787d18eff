//! Repository names, tags and references, validated once when parsed.

use std::fmt;
use std::str::FromStr;

use crate::{Digest, DigestError};

/// Longest repository name the OCI distribution spec allows.
const MAX_NAME_LEN: usize = 255;
/// Longest tag the OCI distribution spec allows.
const MAX_TAG_LEN: usize = 128;

/// Why a name, tag or reference was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The repository name is empty.
    #[error("repository name is empty")]
    EmptyName,
    /// The repository name is longer than 255 characters.
    #[error("repository name {name:?} is {len} characters long; the limit is 255")]
    NameTooLong { name: String, len: usize },
    /// A `/`-separated part of the name breaks the grammar.
    #[error(
        "repository name {name:?} has invalid component {component:?}: use lowercase letters \
         and digits, separated by '.', '_', '__' or dashes"
    )]
    InvalidNameComponent { name: String, component: String },
    /// The tag is empty.
    #[error("tag is empty")]
    EmptyTag,
    /// The tag is longer than 128 characters.
    #[error("tag {tag:?} is {len} characters long; the limit is 128")]
    TagTooLong { tag: String, len: usize },
    /// The tag uses a character outside `[A-Za-z0-9._-]` or starts with `.` or `-`.
    #[error(
        "tag {tag:?} is invalid: use letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    InvalidTag { tag: String },
    /// A reference names a repository but neither a tag nor a digest.
    #[error("reference {reference:?} needs a tag (name:tag) or a digest (name@sha256:...)")]
    MissingTagOrDigest { reference: String },
    /// The digest part of a reference is malformed.
    #[error("reference {reference:?} has an invalid digest")]
    Digest {
        reference: String,
        #[source]
        source: DigestError,
    },
}

/// A repository name such as `kiln/base` (OCI distribution grammar, lowercase).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(String);

impl RepoName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// True for the distribution spec's `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_name_component(c: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let mut i = 0;
    loop {
        let run = bytes[i..].iter().take_while(|b| alnum(b)).count();
        if run == 0 {
            return false;
        }
        i += run;
        if i == bytes.len() {
            return true;
        }
        let sep = bytes[i..].iter().take_while(|b| !alnum(b)).count();
        let ok = match &bytes[i..i + sep] {
            b"." | b"_" | b"__" => true,
            dashes => dashes.iter().all(|&b| b == b'-'),
        };
        if !ok {
            return false;
        }
        i += sep;
    }
}

impl FromStr for RepoName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::EmptyName);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong { name: s.to_string(), len: s.len() });
        }
        if let Some(bad) = s.split('/').find(|c| !is_name_component(c)) {
            return Err(NameError::InvalidNameComponent {
                name: s.to_string(),
                component: bad.to_string(),
            });
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag such as `2026.11` or `latest`: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let Some(&first) = bytes.first() else {
            return Err(NameError::EmptyTag);
        };
        if s.len() > MAX_TAG_LEN {
            return Err(NameError::TagTooLong { tag: s.to_string(), len: s.len() });
        }
        let first_ok = first.is_ascii_alphanumeric() || first == b'_';
        let rest_ok = bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !(first_ok && rest_ok) {
            return Err(NameError::InvalidTag { tag: s.to_string() });
        }
        Ok(Tag(s.to_string()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a user may point at: `name:tag`, `name@sha256:<hex>` or a bare `sha256:<hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag in a repository; it may move.
    Tagged { name: RepoName, tag: Tag },
    /// A digest, with the repository it was named in.
    Pinned { name: RepoName, digest: Digest },
    /// A digest alone.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad_digest = |source| NameError::Digest { reference: s.to_string(), source };
        if let Some((name, digest)) = s.split_once('@') {
            let digest = digest.parse().map_err(bad_digest)?;
            return Ok(Reference::Pinned { name: name.parse()?, digest });
        }
        // A digest alone starts with the algorithm; "sha256" is also a valid repository name,
        // so only a well-formed digest is taken as one.
        if s.starts_with("sha256:") {
            if let Ok(digest) = s.parse() {
                return Ok(Reference::Digest(digest));
            }
        }
        match s.rsplit_once(':') {
            // A ':' inside the name part would belong to a registry host:port, which kiln
            // references never carry, so the last ':' separates the tag.
            Some((name, tag)) if !tag.contains('/') => {
                Ok(Reference::Tagged { name: name.parse()?, tag: tag.parse()? })
            }
            _ => Err(NameError::MissingTagOrDigest { reference: s.to_string() }),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tagged { name, tag } => write!(f, "{name}:{tag}"),
            Reference::Pinned { name, digest } => write!(f, "{name}@{digest}"),
            Reference::Digest(digest) => write!(f, "{digest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_grammar() {
        for ok in ["a", "kiln/base", "a.b_c-d/e2", "0/1"] {
            assert_eq!(ok.parse::<RepoName>().map(|n| n.to_string()), Ok(ok.to_string()));
        }
        for ok in ["x__y", "a--b", "a---b", "a.b_c"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in ["Kiln", "a//b", "/a", "a/", "-a", "a-", "a..b", "x___y", "a_-b", "..", "a/../b"]
        {
            assert!(
                matches!(bad.parse::<RepoName>(), Err(NameError::InvalidNameComponent { .. })),
                "{bad}"
            );
        }
        assert_eq!("".parse::<RepoName>(), Err(NameError::EmptyName));
        let long = "a".repeat(256);
        assert!(matches!(long.parse::<RepoName>(), Err(NameError::NameTooLong { len: 256, .. })));
    }

    #[test]
    fn tag_grammar() {
        for ok in ["latest", "_x", "2026.11-rc_1", "A"] {
            assert_eq!(ok.parse::<Tag>().map(|t| t.to_string()), Ok(ok.to_string()));
        }
        assert_eq!("".parse::<Tag>(), Err(NameError::EmptyTag));
        for bad in [".x", "-x", "a/b", "a:b", "ü"] {
            assert!(matches!(bad.parse::<Tag>(), Err(NameError::InvalidTag { .. })), "{bad}");
        }
        assert!("a".repeat(128).parse::<Tag>().is_ok());
        assert!(matches!("a".repeat(129).parse::<Tag>(), Err(NameError::TagTooLong { .. })));
    }

    #[test]
    fn references_round_trip() {
        let d = Digest::of(b"x");
        for s in ["kiln/base:1.0", &format!("kiln/base@{d}"), &d.to_string(), "sha256:latest"] {
            let r: Reference = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.to_string(), s);
        }
        assert_eq!(d.to_string().parse::<Reference>(), Ok(Reference::Digest(d)));
        assert!(matches!(
            "kiln/base".parse::<Reference>(),
            Err(NameError::MissingTagOrDigest { .. })
        ));
        assert!(matches!("kiln@sha256:abc".parse::<Reference>(), Err(NameError::Digest { .. })));
        assert!(matches!(
            "Kiln:1".parse::<Reference>(),
            Err(NameError::InvalidNameComponent { .. })
        ));
        assert!(matches!("kiln:.1".parse::<Reference>(), Err(NameError::InvalidTag { .. })));
    }
}

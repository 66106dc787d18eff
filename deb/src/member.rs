//! What a `.deb` holds, in terms that know nothing of images: paths checked once, kinds,
//! modes and owners as packaged.

use std::fmt;

/// A member's path relative to the root it is unpacked into: `/`-separated, no empty, `.`
/// or `..` component, never the root itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberPath(String);

/// Why a member name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is not valid UTF-8")]
    Utf8,
    #[error("is an absolute path")]
    Absolute,
    #[error("climbs out with \"..\"")]
    Climbs,
    #[error("has a NUL byte")]
    Nul,
}

impl MemberPath {
    /// Parses a tar member name as dpkg-deb writes it (`./usr/bin/x`, `./etc/`); `None` for
    /// the root (`./`).
    pub fn parse(raw: &[u8]) -> Result<Option<MemberPath>, PathError> {
        let name = std::str::from_utf8(raw).map_err(|_| PathError::Utf8)?;
        if name.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if name.contains('\0') {
            return Err(PathError::Nul);
        }
        let mut parts = Vec::new();
        for part in name.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(PathError::Climbs),
                p => parts.push(p),
            }
        }
        Ok((!parts.is_empty()).then(|| MemberPath(parts.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Every proper ancestor, nearest the root first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(i, _)| &self.0[..i])
    }
}

impl std::borrow::Borrow<str> for MemberPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKind {
    Dir,
    /// A regular file of this many bytes; its content is handed to the visitor.
    File {
        size: u64,
    },
    /// A symbolic link with its target exactly as packaged.
    Symlink {
        target: String,
    },
    /// A hard link to an earlier regular file of the same package.
    HardLink {
        target: MemberPath,
    },
}

/// One member of a package's `data.tar`, as packaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub path: MemberPath,
    pub kind: MemberKind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_escapes_refused() {
        let p = |s: &str| MemberPath::parse(s.as_bytes());
        assert_eq!(p("./usr/bin/x").unwrap().unwrap().as_str(), "usr/bin/x");
        assert_eq!(p("./etc/").unwrap().unwrap().as_str(), "etc");
        assert_eq!(p("./").unwrap(), None);
        assert_eq!(p("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(p("./usr/../../etc"), Err(PathError::Climbs));
        assert_eq!(p(".."), Err(PathError::Climbs));
        assert_eq!(MemberPath::parse(b"\xff"), Err(PathError::Utf8));
        let deep = p("a/b/c").unwrap().unwrap();
        assert_eq!(deep.ancestors().collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(deep.to_string(), "/a/b/c");
    }
}

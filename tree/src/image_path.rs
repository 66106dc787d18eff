//! Paths inside an image: normalised, relative to the image root, never escaping it.

use std::borrow::Borrow;
use std::fmt;

/// A validated path inside the image, stored without a leading `/` (the root is empty).
///
/// Components are never empty, `.` or `..`, and never contain NUL. Ordering is bytewise,
/// which puts every parent before its children.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImagePath(String);

/// Why a string is not a valid image path.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ImagePathError {
    #[error("path {0:?} climbs out of the image root with \"..\"")]
    Escapes(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} is empty; use \"/\" for the root")]
    Empty(String),
    #[error("path {0:?} has a name of {1} bytes; Linux allows at most {NAME_MAX}")]
    NameTooLong(String, usize),
    #[error("path {0:?} is {1} bytes long; Linux allows at most {PATH_MAX} with its final NUL")]
    PathTooLong(String, usize),
}

/// The longest file name Linux file systems take, in bytes.
pub const NAME_MAX: usize = 255;
/// The longest path Linux system calls take, in bytes, counting its final NUL.
pub const PATH_MAX: usize = 4096;

/// Refuses a path (without its leading `/`) that Linux could not create when the image is
/// unpacked: a name longer than [`NAME_MAX`] or the whole longer than [`PATH_MAX`].
fn check_lengths(path: &str, last_only: bool) -> Result<(), ImagePathError> {
    let absolute = path.len() + 2;
    if absolute > PATH_MAX {
        return Err(ImagePathError::PathTooLong(format!("/{path}"), absolute - 1));
    }
    let mut names = path.rsplit('/');
    let long = if last_only {
        names.next().filter(|n| n.len() > NAME_MAX)
    } else {
        names.find(|n| n.len() > NAME_MAX)
    };
    match long {
        Some(name) => Err(ImagePathError::NameTooLong(format!("/{path}"), name.len())),
        None => Ok(()),
    }
}

impl ImagePath {
    /// The image root.
    pub fn root() -> Self {
        ImagePath(String::new())
    }

    /// Parses and normalises a path; a leading `/` is optional, `.` and repeated `/` are
    /// dropped, and `..` that would leave the root is an error (`a/../b` is `b`).
    pub fn parse(raw: &str) -> Result<Self, ImagePathError> {
        if raw.is_empty() {
            return Err(ImagePathError::Empty(raw.to_string()));
        }
        if raw.contains('\0') {
            return Err(ImagePathError::Nul(raw.to_string()));
        }
        let mut parts: Vec<&str> = Vec::new();
        for comp in raw.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(ImagePathError::Escapes(raw.to_string()));
                    }
                }
                c => parts.push(c),
            }
        }
        let path = parts.join("/");
        check_lengths(&path, false)?;
        Ok(ImagePath(path))
    }

    /// Parses a path that is relative to a directory inside the image (such as a symlink
    /// target or a tar member name) and joins it onto `base`.
    pub fn join(&self, rel: &str) -> Result<Self, ImagePathError> {
        if self.0.is_empty() {
            return ImagePath::parse(rel);
        }
        ImagePath::parse(&format!("{}/{}", self.0, rel))
    }

    /// `self` with the one component `name` appended: a directory entry's name needs no
    /// parsing. Anything but a plain name (empty, `.`, `..`, or with a `/` or NUL) goes
    /// through [`ImagePath::join`].
    pub fn child(&self, name: &str) -> Result<Self, ImagePathError> {
        if matches!(name, "" | "." | "..") || name.contains(['/', '\0']) {
            return self.join(name);
        }
        let mut path = String::with_capacity(self.0.len() + 1 + name.len());
        if !self.0.is_empty() {
            path.push_str(&self.0);
            path.push('/');
        }
        path.push_str(name);
        check_lengths(&path, true)?;
        Ok(ImagePath(path))
    }

    /// True for the image root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path without a leading `/` (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent of the valid path `path` (as [`ImagePath::as_str`] gives it), borrowed;
    /// `None` for the root.
    pub(crate) fn parent_str(path: &str) -> Option<&str> {
        if path.is_empty() {
            return None;
        }
        Some(path.rfind('/').map_or("", |i| &path[..i]))
    }

    /// An ancestor of a valid path, as [`ImagePath::parent_str`] gave it: valid too.
    pub(crate) fn from_ancestor(path: &str) -> ImagePath {
        ImagePath(path.to_string())
    }

    /// The parent directory; `None` for the root.
    pub fn parent(&self) -> Option<ImagePath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => ImagePath(self.0[..i].to_string()),
            None => ImagePath::root(),
        })
    }
}

/// Maps keyed by image path can be searched with a `&str` (as `as_str` gives it): the derived
/// order and hash are those of the inner string.
impl Borrow<str> for ImagePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl fmt::Debug for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", format!("/{}", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(ImagePath::parse("/usr//bin/./x").unwrap().as_str(), "usr/bin/x");
        assert_eq!(ImagePath::parse("a/../b").unwrap().as_str(), "b");
        assert!(ImagePath::parse("/").unwrap().is_root());
    }

    #[test]
    fn refuses_escapes() {
        for bad in ["..", "/../etc/passwd", "a/../../b", "../x"] {
            assert!(matches!(ImagePath::parse(bad), Err(ImagePathError::Escapes(_))), "{bad}");
        }
        assert!(ImagePath::parse("a\0b").is_err());
        assert!(ImagePath::parse("").is_err());
    }

    #[test]
    fn a_child_is_what_join_gives() {
        let root = ImagePath::root();
        let dir = ImagePath::parse("/usr/lib").unwrap();
        for base in [&root, &dir] {
            for name in ["x", "a b", "é.so", ".hidden", "..x", "", ".", "..", "a/../b", "a\0b"] {
                let (child, joined) = (base.child(name), base.join(name));
                match (&child, &joined) {
                    (Ok(c), Ok(j)) => assert_eq!(c, j, "{base} {name:?}"),
                    (Err(c), Err(j)) => assert_eq!(c.to_string(), j.to_string()),
                    _ => panic!("{base} {name:?}: {child:?} against {joined:?}"),
                }
            }
        }
        assert_eq!(dir.child("x").unwrap().as_str(), "usr/lib/x");
        assert_eq!(root.child("x").unwrap().as_str(), "x");
    }

    #[test]
    fn parents_and_order() {
        let p = ImagePath::parse("/a/b/c").unwrap();
        let parent = p.parent().unwrap();
        assert_eq!(parent.as_str(), "a/b");
        assert!(parent.parent().unwrap().parent().unwrap().is_root());
        // parents sort before children even when a sibling has a smaller byte after the prefix
        let mut v = [
            ImagePath::parse("a/b").unwrap(),
            ImagePath::parse("a-c").unwrap(),
            ImagePath::parse("a").unwrap(),
        ];
        v.sort();
        assert_eq!(v[0].as_str(), "a");
    }
}

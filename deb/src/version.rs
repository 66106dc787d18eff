//! Debian version numbers (`[epoch:]upstream[-revision]`) and their ordering, as dpkg
//! compares them: `~` sorts before anything, even the end; letters before other symbols.

use std::cmp::Ordering;
use std::fmt;

/// A parsed Debian version. Equality is dpkg's (`1.0` equals `1.00`), not the text's.
#[derive(Debug, Clone)]
pub struct Version {
    epoch: u32,
    upstream: String,
    revision: String,
    text: String,
}

/// Why a version string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a Debian version: {problem}")]
pub struct VersionError {
    pub text: String,
    pub problem: &'static str,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let bad = |problem| VersionError { text: text.to_string(), problem };
        let (epoch, rest) = match text.split_once(':') {
            Some((e, rest)) => {
                let epoch = (!e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| e.parse::<u32>().ok())
                    .flatten()
                    .ok_or_else(|| bad("its epoch is not a number"))?;
                (epoch, rest)
            }
            None => (0, text),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() {
            return Err(bad("it has no upstream version"));
        }
        if !upstream.as_bytes()[0].is_ascii_digit() {
            return Err(bad("its upstream version does not start with a digit"));
        }
        let allowed = |c: char, extra: &str| c.is_ascii_alphanumeric() || extra.contains(c);
        if !upstream.chars().all(|c| allowed(c, ".+~-:")) {
            return Err(bad("its upstream version has a character outside [A-Za-z0-9.+~-:]"));
        }
        if rest.contains('-') && revision.is_empty() {
            return Err(bad("it ends with '-' but has no revision"));
        }
        if !revision.chars().all(|c| allowed(c, ".+~")) {
            return Err(bad("its revision has a character outside [A-Za-z0-9.+~]"));
        }
        Ok(Version {
            epoch,
            upstream: upstream.to_string(),
            revision: revision.to_string(),
            text: text.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(&self.upstream, &other.upstream))
            .then_with(|| compare_part(&self.revision, &other.revision))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The weight of a character in the non-digit runs: `~` lowest, then the end of the
/// string, then letters, then everything else.
fn weight(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`: alternate non-digit runs (compared by [`weight`]) and digit runs
/// (compared as numbers).
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let start = (i, j);
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[start.0..i], &b[start.1..j]);
        let by_number = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if by_number != Ordering::Equal {
            return by_number;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(a: &str, b: &str) -> Ordering {
        Version::parse(a).unwrap().cmp(&Version::parse(b).unwrap())
    }

    #[test]
    fn ordering_follows_dpkg() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.00", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0a", "1.0+", Less),
            ("1.0", "1.0a", Less),
            ("1.10", "1.9", Greater),
            ("1:0.1", "2.0", Greater),
            ("2.0-1", "2.0-10", Less),
            ("2.0-1", "2.0", Greater),
            ("1.36.1-9", "1.36.1-9+deb12u1", Less),
            ("20230311", "20230311+deb12u1", Less),
            ("1.2.3-4ubuntu1", "1.2.3-4", Greater),
            ("0:1.0", "1.0", Equal),
            ("1.0-1~bpo1", "1.0-1", Less),
            ("1:2-3-4", "1:2-3-5", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(cmp(a, b), want, "{a} vs {b}");
            assert_eq!(cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn malformed_versions_are_refused() {
        for bad in ["", "a1.0", "x:1.0", "1.0-", "1.0 2", "1:", "1.0-a_b"] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Version::parse("1:2-3-4").unwrap().revision, "4");
    }
}

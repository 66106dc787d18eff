//! Package relationship fields (`Depends`, `Pre-Depends`, `Provides`, `Conflicts`):
//! comma-separated relations, each a `|`-separated list of alternatives, each a name with
//! an optional architecture qualifier and version constraint.

use std::fmt;

use crate::version::{Version, VersionError};

/// A version comparison in a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Less,
    LessEq,
    Eq,
    GreaterEq,
    Greater,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "<<" => Op::Less,
            // `<` and `>` are the obsolete spellings of `<=` and `>=`.
            "<=" | "<" => Op::LessEq,
            "=" => Op::Eq,
            ">=" | ">" => Op::GreaterEq,
            ">>" => Op::Greater,
            _ => return None,
        })
    }

    pub fn holds(self, have: &Version, want: &Version) -> bool {
        let o = have.cmp(want);
        match self {
            Op::Less => o.is_lt(),
            Op::LessEq => o.is_le(),
            Op::Eq => o.is_eq(),
            Op::GreaterEq => o.is_ge(),
            Op::Greater => o.is_gt(),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Less => "<<",
            Op::LessEq => "<=",
            Op::Eq => "=",
            Op::GreaterEq => ">=",
            Op::Greater => ">>",
        })
    }
}

/// One alternative: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// `any`, `native` or an architecture, as written after `:`.
    pub arch: Option<String>,
    pub constraint: Option<(Op, Version)>,
}

impl Target {
    /// Whether a package (or a `Provides` entry) of this name and version satisfies it;
    /// an unversioned provide (`version` = `None`) satisfies only unversioned targets.
    pub fn accepts(&self, version: Option<&Version>) -> bool {
        match (&self.constraint, version) {
            (None, _) => true,
            (Some((op, want)), Some(have)) => op.holds(have, want),
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(arch) = &self.arch {
            write!(f, ":{arch}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

/// One relation: alternatives of which one must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation(pub Vec<Target>);

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

/// Why a relationship field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    #[error("{text:?} is not a relation: {problem}")]
    Syntax { text: String, problem: &'static str },
    #[error("{text:?} has a bad version")]
    Version { text: String, source: VersionError },
}

/// Parses a relationship field; an empty field has no relations.
pub fn parse_relations(field: &str) -> Result<Vec<Relation>, RelationError> {
    let field = field.trim();
    if field.is_empty() {
        return Ok(Vec::new());
    }
    field
        .split(',')
        .map(|rel| {
            rel.split('|')
                .map(|alt| parse_target(alt.trim()))
                .collect::<Result<_, _>>()
                .map(Relation)
        })
        .collect()
}

fn parse_target(text: &str) -> Result<Target, RelationError> {
    let syntax = |problem| RelationError::Syntax { text: text.to_string(), problem };
    let (head, constraint) = match text.split_once('(') {
        Some((head, rest)) => {
            let inner = rest.strip_suffix(')').ok_or_else(|| syntax("a '(' is not closed"))?;
            let inner = inner.trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .ok_or_else(|| syntax("the version constraint has no version"))?;
            let op = Op::parse(&inner[..split]).ok_or_else(|| syntax("unknown comparison"))?;
            let version = Version::parse(inner[split..].trim())
                .map_err(|source| RelationError::Version { text: text.to_string(), source })?;
            (head.trim(), Some((op, version)))
        }
        None => (text, None),
    };
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n, Some(a.to_string())),
        None => (head, None),
    };
    let valid = name.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !valid {
        return Err(syntax("the package name is not [a-z0-9][a-z0-9+.-]*"));
    }
    Ok(Target { name: name.to_string(), arch, constraint })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_alternatives_and_constraints() {
        let rels =
            parse_relations("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, perl:any, a (<< 2)")
                .unwrap();
        assert_eq!(rels.len(), 4);
        assert_eq!(rels[1].0.len(), 2);
        assert_eq!(rels[1].to_string(), "debconf (>= 0.5) | debconf-2.0");
        assert_eq!(rels[2].0[0].arch.as_deref(), Some("any"));
        let v = |s| Version::parse(s).unwrap();
        assert!(rels[0].0[0].accepts(Some(&v("2.36-9"))));
        assert!(!rels[0].0[0].accepts(Some(&v("2.31"))));
        assert!(!rels[0].0[0].accepts(None));
        assert!(rels[1].0[1].accepts(None));
        assert!(!rels[3].0[0].accepts(Some(&v("2"))));
        assert_eq!(parse_relations("  ").unwrap(), vec![]);
        assert_eq!(
            parse_relations("a (>2)").unwrap()[0].0[0].constraint.as_ref().unwrap().0,
            Op::GreaterEq
        );
    }

    #[test]
    fn malformed_relations_are_refused() {
        for bad in
            ["a (>= 1", "Libc6", "-x", "a (~ 1)", "a (>=)", "a [amd64]", "a, , b", "a (>= z)"]
        {
            assert!(parse_relations(bad).is_err(), "{bad:?} accepted");
        }
    }
}

//! The closure of `Depends` and `Pre-Depends` for one architecture: requested packages plus
//! everything they need, choosing deterministically (the first alternative that can be had,
//! a real package before a provider, the highest version), and refusing a missing
//! dependency, a version no candidate has, or two chosen packages that conflict.

use std::collections::{BTreeMap, VecDeque};

use crate::packages::PackageRecord;
use crate::relation::{parse_relations, Relation, RelationError, Target};
use crate::version::Version;

/// Why a closure could not be resolved. Each names the package and who needed it.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{wanted:?} is not a package name with an optional version constraint")]
    Request { wanted: String, source: RelationError },
    #[error("{needed_by} needs {relation}, but no {arch} package in the repositories is or provides {names}")]
    Missing { needed_by: String, relation: String, arch: String, names: String },
    #[error("{needed_by} needs {relation}, but {chosen} was already chosen for {arch} ({why})")]
    Conflict { needed_by: String, relation: String, arch: String, chosen: String, why: String },
    #[error("{needed_by} needs {relation}, but the {arch} repositories have only {have}")]
    NoVersion { needed_by: String, relation: String, arch: String, have: String },
    #[error("{a} conflicts with {b} ({relation}), and both are needed for {arch}")]
    Conflicts { a: String, b: String, relation: String, arch: String },
}

/// Resolves `requested` (`name` or `name (op version)`) against `records` for `arch`
/// (records of that architecture or `all`). Returns the chosen packages sorted by name.
pub fn resolve<'a>(
    records: &'a [PackageRecord],
    arch: &'a str,
    requested: &[String],
) -> Result<Vec<&'a PackageRecord>, ResolveError> {
    let universe = Universe::new(records, arch);
    let mut chosen: BTreeMap<&str, &PackageRecord> = BTreeMap::new();
    let mut queue: VecDeque<(Relation, String)> = VecDeque::new();
    for wanted in requested {
        let mut rels = parse_relations(wanted)
            .map_err(|source| ResolveError::Request { wanted: wanted.clone(), source })?;
        if rels.len() != 1 {
            return Err(ResolveError::Request {
                wanted: wanted.clone(),
                source: RelationError::Syntax { text: wanted.clone(), problem: "one package only" },
            });
        }
        queue.push_back((rels.remove(0), "the recipe".to_string()));
    }
    while let Some((relation, needed_by)) = queue.pop_front() {
        if relation.0.iter().any(|t| universe.satisfied_by_chosen(t, &chosen)) {
            continue;
        }
        let mut picked = None;
        for target in &relation.0 {
            if let Some(p) = universe.candidate(target, &chosen) {
                picked = Some(p);
                break;
            }
        }
        let Some(package) = picked else {
            return Err(universe.why_unsatisfied(&relation, &needed_by, &chosen));
        };
        chosen.insert(&package.name, package);
        let who = format!("{} {} ({})", package.name, package.version, package.architecture);
        for rel in package.pre_depends.iter().chain(&package.depends) {
            queue.push_back((rel.clone(), who.clone()));
        }
    }
    check_conflicts(&chosen, arch)?;
    Ok(chosen.into_values().collect())
}

/// The packages one architecture can install, by name and by what they provide.
struct Universe<'a> {
    arch: &'a str,
    by_name: BTreeMap<&'a str, Vec<&'a PackageRecord>>,
    providers: BTreeMap<&'a str, Vec<(&'a PackageRecord, Option<&'a Version>)>>,
}

impl<'a> Universe<'a> {
    fn new(records: &'a [PackageRecord], arch: &'a str) -> Self {
        let mut by_name: BTreeMap<&str, Vec<&PackageRecord>> = BTreeMap::new();
        let mut providers: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for r in records.iter().filter(|r| r.architecture == arch || r.architecture == "all") {
            by_name.entry(&r.name).or_default().push(r);
            for provided in r.provides.iter().flat_map(|rel| &rel.0) {
                let version = provided.constraint.as_ref().map(|(_, v)| v);
                providers.entry(provided.name.as_str()).or_default().push((r, version));
            }
        }
        for list in by_name.values_mut() {
            // Highest version first; among equal versions the first listed wins.
            list.sort_by(|a, b| b.version.cmp(&a.version));
        }
        for list in providers.values_mut() {
            list.sort_by(|a, b| {
                a.0.name.cmp(&b.0.name).then_with(|| b.0.version.cmp(&a.0.version))
            });
        }
        Universe { arch, by_name, providers }
    }

    /// Whether the target names another architecture than this one (`:any` and `:native`
    /// are this one).
    fn foreign(&self, t: &Target) -> bool {
        matches!(t.arch.as_deref(), Some(a) if a != "any" && a != "native" && a != self.arch)
    }

    fn satisfied_by_chosen(&self, t: &Target, chosen: &BTreeMap<&str, &PackageRecord>) -> bool {
        if self.foreign(t) {
            return false;
        }
        if chosen.get(t.name.as_str()).is_some_and(|p| t.accepts(Some(&p.version))) {
            return true;
        }
        self.providers.get(t.name.as_str()).is_some_and(|list| {
            list.iter().any(|(p, v)| chosen.contains_key(p.name.as_str()) && t.accepts(*v))
        })
    }

    /// The package to choose for a target not yet satisfied: one that does not replace
    /// a package already chosen.
    fn candidate(
        &self,
        t: &Target,
        chosen: &BTreeMap<&str, &PackageRecord>,
    ) -> Option<&'a PackageRecord> {
        if self.foreign(t) {
            return None;
        }
        let fresh = |p: &PackageRecord| !chosen.contains_key(p.name.as_str());
        if let Some(p) = self
            .by_name
            .get(t.name.as_str())
            .and_then(|list| list.iter().find(|p| fresh(p) && t.accepts(Some(&p.version))))
        {
            return Some(p);
        }
        self.providers
            .get(t.name.as_str())?
            .iter()
            .find(|(p, v)| fresh(p) && t.accepts(*v))
            .map(|(p, _)| *p)
    }

    fn why_unsatisfied(
        &self,
        relation: &Relation,
        needed_by: &str,
        chosen: &BTreeMap<&str, &PackageRecord>,
    ) -> ResolveError {
        let (relation_text, arch) = (relation.to_string(), self.arch.to_string());
        for t in &relation.0 {
            if let Some(p) = chosen.get(t.name.as_str()) {
                return ResolveError::Conflict {
                    needed_by: needed_by.to_string(),
                    relation: relation_text,
                    arch,
                    chosen: format!("{} {}", p.name, p.version),
                    why: "one version of a package per image".to_string(),
                };
            }
        }
        let have: Vec<String> = relation
            .0
            .iter()
            .filter(|t| !self.foreign(t))
            .flat_map(|t| self.by_name.get(t.name.as_str()).into_iter().flatten())
            .map(|p| format!("{} {}", p.name, p.version))
            .collect();
        if !have.is_empty() {
            return ResolveError::NoVersion {
                needed_by: needed_by.to_string(),
                relation: relation_text,
                arch,
                have: have.join(", "),
            };
        }
        let names: Vec<String> = relation.0.iter().map(|t| t.to_string()).collect();
        ResolveError::Missing {
            needed_by: needed_by.to_string(),
            relation: relation_text,
            arch,
            names: names.join(" or "),
        }
    }
}

fn check_conflicts(
    chosen: &BTreeMap<&str, &PackageRecord>,
    arch: &str,
) -> Result<(), ResolveError> {
    for p in chosen.values() {
        for t in p.conflicts.iter().flat_map(|r| &r.0) {
            for q in chosen.values().filter(|q| q.name != p.name) {
                let by_name = q.name == t.name && t.accepts(Some(&q.version));
                let by_provide = q.provides.iter().flat_map(|r| &r.0).any(|pr| {
                    pr.name == t.name && t.accepts(pr.constraint.as_ref().map(|(_, v)| v))
                });
                if by_name || by_provide {
                    return Err(ResolveError::Conflicts {
                        a: format!("{} {}", p.name, p.version),
                        b: format!("{} {}", q.name, q.version),
                        relation: t.to_string(),
                        arch: arch.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

use super::*;
use crate::packages::parse_index;

/// An index from `(name, version, arch, fields)` shorthand.
fn index(entries: &[(&str, &str, &str, &str)]) -> Vec<PackageRecord> {
    let mut text = String::new();
    for (i, (name, version, arch, fields)) in entries.iter().enumerate() {
        text.push_str(&format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nFilename: pool/{name}_{i}.deb\nSize: 1\nSHA256: {}\n{fields}\n",
            "00".repeat(32)
        ));
    }
    parse_index(&text).unwrap()
}

fn names(chosen: &[&PackageRecord]) -> Vec<String> {
    chosen.iter().map(|p| format!("{}={}", p.name, p.version)).collect()
}

fn want(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_closure_follows_depends_and_pre_depends() {
    let idx = index(&[
        ("app", "1.0", "amd64", "Pre-Depends: libc6 (>= 2.30)\nDepends: libfoo, tzdata\n"),
        ("libc6", "2.36", "amd64", ""),
        ("libc6", "2.28", "amd64", ""),
        ("libfoo", "1", "amd64", "Depends: libc6\n"),
        ("tzdata", "2024a", "all", ""),
        ("unrelated", "1", "amd64", ""),
    ]);
    let got = resolve(&idx, "amd64", &want(&["app"])).unwrap();
    assert_eq!(names(&got), ["app=1.0", "libc6=2.36", "libfoo=1", "tzdata=2024a"]);
}

#[test]
fn the_first_alternative_that_exists_is_chosen_and_a_chosen_one_is_kept() {
    let idx = index(&[
        ("a", "1", "amd64", "Depends: missing | b, c | b\n"),
        ("b", "1", "amd64", ""),
        ("c", "1", "amd64", ""),
    ]);
    // `c | b` is already satisfied by b, so c is not pulled in.
    assert_eq!(names(&resolve(&idx, "amd64", &want(&["a"])).unwrap()), ["a=1", "b=1"]);
}

#[test]
fn virtual_packages_come_from_providers_and_versioned_provides() {
    let idx = index(&[
        ("a", "1", "amd64", "Depends: debconf-2.0, awk (>= 2)\n"),
        ("cdebconf", "1", "amd64", "Provides: debconf-2.0\n"),
        ("debconf", "1.5", "all", "Provides: debconf-2.0\n"),
        ("mawk", "1.3", "amd64", "Provides: awk\n"),
        ("gawk", "5", "amd64", "Provides: awk (= 5)\n"),
    ]);
    let got = resolve(&idx, "amd64", &want(&["a"])).unwrap();
    // Providers are tried by name; an unversioned provide cannot satisfy `awk (>= 2)`.
    assert_eq!(names(&got), ["a=1", "cdebconf=1", "gawk=5"]);
}

#[test]
fn a_missing_dependency_names_it_and_who_needs_it() {
    let idx = index(&[
        ("a", "1", "amd64", "Depends: b\n"),
        ("b", "1", "amd64", "Depends: nothere | gone (>= 1)\n"),
    ]);
    let err = resolve(&idx, "amd64", &want(&["a"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "b 1 (amd64) needs nothere | gone (>= 1), but no amd64 package in the repositories is or provides nothere or gone (>= 1)"
    );
    let err = resolve(&idx, "amd64", &want(&["zzz"])).unwrap_err();
    assert!(err.to_string().starts_with("the recipe needs zzz,"), "{err}");
}

#[test]
fn a_version_conflict_names_both_sides() {
    let idx = index(&[
        ("a", "1", "amd64", "Depends: lib (= 1), b\n"),
        ("b", "1", "amd64", "Depends: lib (>= 2)\n"),
        ("lib", "1", "amd64", ""),
        ("lib", "2", "amd64", ""),
    ]);
    let err = resolve(&idx, "amd64", &want(&["a"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "b 1 (amd64) needs lib (>= 2), but lib 1 was already chosen for amd64 (one version of a package per image)"
    );
    let err = resolve(&idx, "amd64", &want(&["lib (>= 3)"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the recipe needs lib (>= 3), but the amd64 repositories have only lib 2, lib 1"
    );
}

#[test]
fn declared_conflicts_are_refused_but_not_with_oneself() {
    let idx = index(&[
        ("mta", "1", "amd64", "Provides: mail-transport-agent\nConflicts: mail-transport-agent\n"),
        ("a", "1", "amd64", "Depends: mta, other\n"),
        ("other", "1", "amd64", "Conflicts: mta (<< 2)\n"),
    ]);
    assert_eq!(names(&resolve(&idx, "amd64", &want(&["mta"])).unwrap()), ["mta=1"]);
    let err = resolve(&idx, "amd64", &want(&["a"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "other 1 conflicts with mta 1 (mta (<< 2)), and both are needed for amd64"
    );
}

#[test]
fn each_architecture_resolves_against_its_own_packages() {
    let idx = index(&[
        ("app", "1", "amd64", "Depends: libx86 | libgeneric\n"),
        ("app", "1", "arm64", "Depends: libx86 | libgeneric\n"),
        ("libx86", "1", "amd64", ""),
        ("libgeneric", "1", "arm64", ""),
        ("tool", "1", "arm64", "Depends: helper:amd64\n"),
        ("helper", "1", "amd64", ""),
    ]);
    assert_eq!(names(&resolve(&idx, "amd64", &want(&["app"])).unwrap()), ["app=1", "libx86=1"]);
    assert_eq!(names(&resolve(&idx, "arm64", &want(&["app"])).unwrap()), ["app=1", "libgeneric=1"]);
    let err = resolve(&idx, "arm64", &want(&["tool"])).unwrap_err();
    assert!(matches!(err, ResolveError::Missing { .. }), "{err}");
}

//! Recipes with Debian packages: what `[[repository]]`, `packages` and `debs` accept and what
//! they refuse, each refusal naming its line.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;

use kiln_builder::Recipe;

/// Loads a recipe of `body` after an `[image]` table (with `platforms`), in a folder that has
/// `key.asc` and `local.deb`.
fn load(platforms: &str, body: &str) -> Result<Recipe, String> {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("key.asc"), "not checked until lock").unwrap();
    fs::write(dir.path().join("local.deb"), "!<arch>\n").unwrap();
    let text = format!("[image]\nname = \"t\"\nversion = \"1\"\nplatforms = [{platforms}]\n{body}");
    fs::write(dir.path().join("r.toml"), text).unwrap();
    Recipe::load(&dir.path().join("r.toml")).map_err(|e| chain(&e))
}

/// An error and its causes, as the command line prints them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

const REPO: &str = "[[repository]]\nurl = \"file:///srv/debian\"\nsuite = \"bookworm\"\ncomponents = [\"main\"]\nkey = \"key.asc\"\n";

#[test]
fn repositories_packages_and_debs_are_read() {
    let body = format!("{REPO}[[layer]]\nname = \"l\"\npackages = [\"busybox-static\", \"libc6 (>= 2.36)\"]\ndebs = [{{ src = \"local.deb\" }}]\n");
    let r = load("\"linux/amd64\"", &body).unwrap();
    assert_eq!(r.repositories.len(), 1);
    assert_eq!(r.repositories[0].url, "file:///srv/debian");
    assert_eq!(r.repositories[0].components, ["main"]);
    let requests: Vec<&str> = r.layers[0].packages.iter().map(|p| p.request.as_str()).collect();
    assert_eq!(requests, ["busybox-static", "libc6 (>= 2.36)"]);
    assert_eq!(r.layers[0].debs.len(), 1);
    assert!(r.repositories[0].ca.is_none());
    let https = REPO.replace("file:///srv/debian", "https://mirror.invalid/debian");
    let body = format!("{https}ca = \"key.asc\"\n[[layer]]\nname = \"l\"\npackages = [\"a\"]\n");
    let r = load("\"linux/amd64\"", &body).unwrap();
    assert!(r.repositories[0].ca.as_ref().unwrap().abs().ends_with("key.asc"));
}

#[test]
fn bad_package_declarations_name_their_line() {
    let layer = "[[layer]]\nname = \"l\"\npackages = [\"busybox-static\"]\n";
    let cases = [
        ("\"linux/amd64\"", layer.to_string(), ":7:", "packages need a [[repository]]"),
        (
            "\"linux/amd64\"",
            format!("{}{layer}", REPO.replace("file:///srv/debian", "ftp://mirror.invalid/debian")),
            ":6:",
            "is neither file:///absolute/path nor http(s)://host/path",
        ),
        (
            "\"linux/amd64\"",
            format!("{}{layer}", REPO.replace("key.asc", "missing.asc")),
            ":9:",
            "missing.asc",
        ),
        (
            "\"linux/amd64\"",
            format!("{REPO}ca = \"key.asc\"\n{layer}"),
            ":10:",
            "ca is for an https:// repository's certificate",
        ),
        (
            "\"linux/amd64\"",
            format!(
                "{}ca = \"missing.pem\"\n{layer}",
                REPO.replace("file:///srv/debian", "https://mirror.invalid/debian")
            ),
            ":10:",
            "missing.pem",
        ),
        (
            "\"linux/amd64\"",
            format!("{REPO}[[layer]]\nname = \"l\"\npackages = [\"a | b\"]\n"),
            ":12:",
            "name one package",
        ),
        (
            "\"linux/amd64\"",
            format!("{REPO}[[layer]]\nname = \"l\"\npackages = [\"Busybox\"]\n"),
            ":12:",
            "is not a relation",
        ),
    ];
    for (platforms, body, line, needle) in cases {
        let err = load(platforms, &body).unwrap_err();
        assert!(err.contains(line) && err.contains(needle), "{needle:?} at {line}: {err}");
    }
}

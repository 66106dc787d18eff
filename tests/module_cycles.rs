//! No two modules of a crate import each other, directly or through others: each concept
//! depends on the ones below it, so a reader (or a change) never has to hold a circle in mind.
//!
//! Every crate's `src/` is read; each file's imports of other modules of its crate are
//! collected (`use crate::…`, `super::…`, `self::…`, a child module's name, and the same paths
//! written inline), each resolved to the file that declares the module, and any circle among
//! the files fails the test naming its files and the names that tie them. A submodule is part
//! of its parent (Rust shows it the parent's private items), so a module's use of its own
//! ancestors is not counted; the crate root (`lib.rs`, `main.rs`) is the crate's front door
//! that declares and re-exports the modules, so edges into and out of it are not counted
//! either.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its path in the crate's `src/` (`a/b.rs`) and its text.
struct Source {
    path: String,
    text: String,
}

/// The module path of a file under `src/` (`a/b.rs` and `a/b/mod.rs` are `["a", "b"]`), or
/// `None` for the crate root.
fn module_of(path: &str) -> Option<Vec<String>> {
    let stem = path.strip_suffix(".rs")?;
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    Some(parts)
}

/// `text` with comments, string and character literals blanked out, so that only code is
/// searched for paths.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident_before(&chars, i) {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            'raw: while j < chars.len() {
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break 'raw;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The paths one `use` tree names: `a::{b, c::{d, self}}` is `a::b`, `a::c::d` and `a::c`.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let head = tree[..open].trim().trim_end_matches("::");
            let mut base = prefix.to_vec();
            base.extend(segments(head));
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            for part in split_top(inner) {
                expand(&base, part, out);
            }
        } else if !tree.is_empty() {
            let tree = tree.split(" as ").next().unwrap_or(tree);
            let mut path = prefix.to_vec();
            for s in segments(tree) {
                if s != "self" || path.is_empty() {
                    path.push(s);
                }
            }
            out.push(path);
        }
    }
    let mut out = Vec::new();
    expand(&[], tree, &mut out);
    out
}

fn segments(path: &str) -> Vec<String> {
    path.split("::").map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// `text` split at the commas outside braces.
fn split_top(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Every path in `code` that starts at `crate`, `super`, `self` or one of `children`, with
/// the inline modules (`mod tests { … }`) open where it appears.
fn paths_in(code: &str, children: &BTreeSet<String>) -> Vec<(Vec<String>, Vec<String>)> {
    let bytes: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    // Inline modules: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let word_at = |i: usize| -> String {
        bytes[i..].iter().take_while(|c| c.is_alphanumeric() || **c == '_').collect()
    };
    while i < bytes.len() {
        let c = bytes[i];
        if c == '{' {
            depth += 1;
            i += 1;
            continue;
        }
        if c == '}' {
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
            i += 1;
            continue;
        }
        if !(c.is_alphabetic() || c == '_') || ident_before(&bytes, i) {
            i += 1;
            continue;
        }
        let word = word_at(i);
        let after = i + word.chars().count();
        let rest: String = bytes[after..].iter().take(200).collect();
        let inner = || inline.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        if word == "mod" {
            let rest_trim = rest.trim_start();
            let name: String =
                rest_trim.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if rest_trim[name.len()..].trim_start().starts_with('{') {
                inline.push((name, depth + 1));
            }
            i = after;
        } else if word == "use" {
            let end =
                bytes[after..].iter().position(|c| *c == ';').map_or(bytes.len(), |p| after + p);
            let tree: String = bytes[after..end].iter().collect();
            for path in expand_use(&tree) {
                if path.first().is_some_and(|s| is_start(s, children)) {
                    found.push((inner(), path));
                }
            }
            i = end;
        } else if is_start(&word, children) && rest.starts_with("::") && !in_visibility(&bytes, i) {
            let mut end = after;
            let mut path = vec![word.clone()];
            while bytes[end..].starts_with(&[':', ':']) {
                let next = word_at(end + 2);
                if next.is_empty() {
                    break;
                }
                end += 2 + next.chars().count();
                path.push(next);
            }
            found.push((inner(), path));
            i = end;
        } else {
            i = after;
        }
    }
    found
}

/// Whether the path at `i` names where an item is visible (`pub(in crate::a)`), not a use.
fn in_visibility(chars: &[char], i: usize) -> bool {
    let before: String = chars[i.saturating_sub(8)..i].iter().collect();
    before.split_whitespace().collect::<Vec<_>>().ends_with(&["(in"])
}

fn is_start(segment: &str, children: &BTreeSet<String>) -> bool {
    matches!(segment, "crate" | "super" | "self") || children.contains(segment)
}

/// The modules `code` declares in files of their own (`mod name;`).
fn child_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for statement in code.split(';') {
        let words: Vec<&str> = statement.split_whitespace().collect();
        if let [.., "mod", name] = words.as_slice() {
            out.insert(name.to_string());
        }
    }
    out
}

/// Each circle among `files` (one crate's `src/`): its files, sorted, with the imports that
/// tie them (`from -> to: path`).
fn module_cycles(files: &[Source]) -> Vec<(Vec<String>, Vec<String>)> {
    let modules: BTreeMap<Vec<String>, &str> =
        files.iter().filter_map(|f| Some((module_of(&f.path)?, f.path.as_str()))).collect();
    let mut edges: BTreeMap<&str, BTreeMap<&str, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let Some(own) = module_of(&file.path) else { continue };
        let code = code_only(&file.text);
        let children = child_modules(&code);
        for (inline, path) in paths_in(&code, &children) {
            // Where the path starts, as a module path.
            let mut at: Vec<String> = match path[0].as_str() {
                "crate" => Vec::new(),
                _ => own.iter().chain(&inline).cloned().collect(),
            };
            let mut rest = &path[..];
            if rest[0] == "crate" || rest[0] == "self" {
                rest = &rest[1..];
            }
            while rest.first().is_some_and(|s| s == "super") {
                at.pop();
                rest = &rest[1..];
            }
            let mut target = at;
            let mut file_target = modules.get(&target).map(|f| (target.clone(), *f));
            for segment in rest {
                target.push(segment.clone());
                match modules.get(&target) {
                    Some(found) => file_target = Some((target.clone(), *found)),
                    None => break,
                }
            }
            // A submodule is part of its parent and may use what the parent defines.
            let ancestor = |m: &Vec<String>| m.len() < own.len() && own.starts_with(m);
            if let Some((_, to)) = file_target.filter(|(m, _)| !ancestor(m)) {
                if to != file.path {
                    let entry = edges.entry(file.path.as_str()).or_default();
                    entry.entry(to).or_default().insert(path.join("::"));
                }
            }
        }
    }
    strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|circle| {
            let mut ties = Vec::new();
            for from in &circle {
                for (to, names) in edges.get(from.as_str()).into_iter().flatten() {
                    if circle.iter().any(|c| c == to) {
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        ties.push(format!("{from} -> {to}: {}", names.join(", ")));
                    }
                }
            }
            (circle, ties)
        })
        .collect()
}

/// The strongly connected components of `edges` (Tarjan), each sorted.
fn strongly_connected(
    edges: &BTreeMap<&str, BTreeMap<&str, BTreeSet<String>>>,
) -> Vec<Vec<String>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(
        v: &'a str,
        edges: &BTreeMap<&'a str, BTreeMap<&'a str, BTreeSet<String>>>,
        s: &mut State<'a>,
    ) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in edges.get(v).into_iter().flat_map(|m| m.keys().copied()) {
            if !s.index.contains_key(w) {
                visit(w, edges, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(v, edges, &mut state);
        }
    }
    state.out
}

/// The `.rs` files under `dir`, with paths relative to `root`.
fn read_sources(root: &Path, dir: &Path, out: &mut Vec<Source>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let relative = path.strip_prefix(root).unwrap_or(&path);
            out.push(Source { path: relative.to_string_lossy().replace('\\', "/"), text });
        }
    }
}

/// The `src/` folder of the binary and of every crate beside it.
fn crate_sources() -> Vec<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![workspace.join("src")];
    let mut members: Vec<PathBuf> = std::fs::read_dir(workspace)
        .expect("reading the workspace folder")
        .map(|e| e.expect("reading the workspace folder").path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .map(|p| p.join("src"))
        .collect();
    members.sort();
    dirs.extend(members);
    dirs
}

#[test]
fn no_module_imports_itself_through_others() {
    let crates = crate_sources();
    assert!(crates.len() > 5, "found only {crates:?}");
    let mut report = Vec::new();
    let mut files_read = 0;
    for src in &crates {
        let mut files = Vec::new();
        read_sources(src, src, &mut files);
        files_read += files.len();
        for (circle, ties) in module_cycles(&files) {
            report.push(format!(
                "{}: {}\n    {}",
                src.display(),
                circle.join(", "),
                ties.join("\n    ")
            ));
        }
    }
    assert!(files_read > 100, "read only {files_read} files");
    assert!(
        report.is_empty(),
        "modules import each other in a circle; put what they share where both can use it:\n{}",
        report.join("\n")
    );
}

fn sources(files: &[(&str, &str)]) -> Vec<Source> {
    files.iter().map(|(p, t)| Source { path: p.to_string(), text: t.to_string() }).collect()
}

#[test]
fn a_circle_through_crate_paths_is_found_and_named() {
    let files = sources(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\npub use a::A;\n"),
        ("a.rs", "use crate::b::{B, other::{self, X as Y}};\npub struct A;\n"),
        ("b.rs", "pub struct B;\nfn f() { crate::c::run(); }\n"),
        (
            "c.rs",
            "// use crate::b::B; is only a comment\nconst S: &str = \"crate::b::B\";\n\
                  pub fn run() { let _ = super::a::A; }\n",
        ),
    ]);
    let cycles = module_cycles(&files);
    assert_eq!(cycles.len(), 1, "{:?}", cycles.iter().map(|c| &c.0).collect::<Vec<_>>());
    assert_eq!(cycles[0].0, ["a.rs", "b.rs", "c.rs"]);
    assert!(
        cycles[0].1.contains(
            &"a.rs -> b.rs: crate::b::B, crate::b::other, crate::b::other::X".to_string()
        ),
        "{:?}",
        cycles[0].1
    );
    assert!(cycles[0].1.contains(&"c.rs -> a.rs: super::a::A".to_string()), "{:?}", cycles[0].1);
}

#[test]
fn siblings_tied_through_their_parent_are_a_circle_and_a_child_using_its_parent_is_not() {
    let files = sources(&[
        ("lib.rs", "pub mod build;\n"),
        ("build/mod.rs", "mod disks;\nmod plan;\npub use plan::Plan;\npub struct Error;\n"),
        ("build/plan.rs", "use super::{disks::Disk, Error};\npub struct Plan;\n"),
        ("build/disks.rs", "pub struct Disk(super::plan::Plan);\n"),
    ]);
    let cycles = module_cycles(&files);
    assert_eq!(cycles.len(), 1, "{:?}", cycles.iter().map(|c| &c.0).collect::<Vec<_>>());
    assert_eq!(cycles[0].0, ["build/disks.rs", "build/plan.rs"]);
}

#[test]
fn the_crate_root_tests_inside_a_file_and_one_way_imports_are_no_circle() {
    let files = sources(&[
        ("lib.rs", "mod a;\nmod b;\npub use a::A;\npub struct Root;\n"),
        (
            "a.rs",
            "use crate::{b::B, Root};\npub struct A;\n\
                  #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::A;\n}\n",
        ),
        (
            "b.rs",
            "pub struct B;\nfn f(_: &crate::Root) { let c = 'x'; let s = r#\"crate::a::A\"#; }\n",
        ),
    ]);
    assert!(module_cycles(&files).is_empty());
}

//! kiln's library crates print nothing themselves: what they have to say is a result, an
//! error or a `log` record, and the `kiln` binary decides what reaches stdout and stderr
//! (src/warnings.rs prints their warnings). Every member's `src/` but the binary's own and
//! the test servers' (which tell a developer why a test is skipped) is searched.

use std::path::{Path, PathBuf};

/// What writes to stdout or stderr directly (`print!` also finds `eprint!`, `println!` also
/// `eprintln!`).
const PRINTING: [&str; 5] = ["print!", "println!", "dbg!", "io::stdout", "io::stderr"];

/// Members that may print: the binary, and the servers only tests start.
const MAY_PRINT: [&str; 2] = [".", "test-servers"];

fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace manifest");
    let line = manifest.lines().find(|l| l.starts_with("members = [")).expect("members line");
    let list = line.trim_start_matches("members = [").trim_end_matches(']');
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src folder") {
        let path = entry.expect("folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn library_crates_never_print() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libraries: Vec<String> =
        members(root).into_iter().filter(|m| !MAY_PRINT.contains(&m.as_str())).collect();
    assert!(libraries.len() >= 10, "too few members found: {libraries:?}");
    let mut found = Vec::new();
    for library in &libraries {
        let mut files = Vec::new();
        rust_files(&root.join(library).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("utf-8 source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or(line);
                if PRINTING.iter().any(|p| code.contains(p)) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "library code prints (use log::warn! or return it):\n{}",
        found.join("\n")
    );
}

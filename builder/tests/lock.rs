//! Lock files: written from the inputs, stable across checkouts, and strict with --locked.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;
use std::path::Path;

use kiln_builder::build;
use kiln_builder::hash_cache::HashCache;
use kiln_builder::lock::LockDifference;
use kiln_builder::{Lock, Recipe};
use kiln_tree::Epoch;

fn setup(dir: &Path, newline: &str) -> Recipe {
    fs::create_dir_all(dir.join("t")).unwrap();
    fs::write(dir.join("f"), b"one").unwrap();
    fs::write(dir.join("t/x"), b"x").unwrap();
    let text = "[image]\nname = \"l\"\nversion = \"1\"\n[[layer]]\nname = \"a\"\n\
                files = [{ src = \"f\", dest = \"/f\" }]\ntrees = [{ src = \"t\", dest = \"/t\" }]\n";
    fs::write(dir.join("r.toml"), text.replace('\n', newline)).unwrap();
    Recipe::load(&dir.join("r.toml")).unwrap()
}

#[test]
fn lock_is_written_beside_the_recipe_and_is_the_same_for_crlf() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (lock_a, written) =
        build::lock(&setup(a.path(), "\n"), Epoch::new(9).unwrap(), &mut HashCache::disabled())
            .unwrap();
    assert!(written);
    let (lock_b, _) =
        build::lock(&setup(b.path(), "\r\n"), Epoch::new(9).unwrap(), &mut HashCache::disabled())
            .unwrap();
    assert_eq!(lock_a, lock_b);
    let text_a = fs::read_to_string(a.path().join("r.lock")).unwrap();
    assert_eq!(text_a, fs::read_to_string(b.path().join("r.lock")).unwrap());
    assert!(text_a.contains("src = \"f\"") && text_a.contains("kind = \"tree\""), "{text_a}");
    assert_eq!(Lock::read(&a.path().join("r.lock")).unwrap(), Some(lock_a));
    let (_, again) =
        build::lock(&setup(a.path(), "\n"), Epoch::new(9).unwrap(), &mut HashCache::disabled())
            .unwrap();
    assert!(!again, "an unchanged lock is not rewritten");
}

#[test]
fn every_difference_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), "\n");
    let (locked, _) =
        build::lock(&recipe, Epoch::new(1).unwrap(), &mut HashCache::disabled()).unwrap();
    fs::write(tmp.path().join("f"), b"two").unwrap();
    fs::write(tmp.path().join("t/y"), b"new").unwrap();
    let (_, current) =
        build::resolve(&recipe, Epoch::new(2).unwrap(), &mut HashCache::disabled()).unwrap();
    let diffs = locked.differences(&current);
    assert!(
        diffs.iter().any(|d| matches!(d, LockDifference::Input { src, .. } if src == "f")),
        "{diffs:?}"
    );
    assert!(
        diffs.iter().any(|d| matches!(d, LockDifference::Input { src, .. } if src == "t")),
        "{diffs:?}"
    );
    assert!(
        diffs.iter().any(|d| matches!(d, LockDifference::Epoch { locked, found } if locked.seconds() == 1 && found.seconds() == 2)),
        "{diffs:?}"
    );
}

#[test]
fn the_execute_bit_of_a_file_input_is_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    // The execute bit decides the mode of a file input whose recipe sets none.
    fs::write(tmp.path().join("g"), b"same bytes").unwrap();
    let recipe = with_second_file(tmp.path(), &setup(tmp.path(), "\n"));
    let (locked, _) =
        build::lock(&recipe, Epoch::new(1).unwrap(), &mut HashCache::disabled()).unwrap();
    let text = fs::read_to_string(tmp.path().join("r.lock")).unwrap();
    assert!(!text.contains("executable"), "written only when true:\n{text}");

    set_executable(&tmp.path().join("g"));
    let (_, current) =
        build::resolve(&recipe, Epoch::new(1).unwrap(), &mut HashCache::disabled()).unwrap();
    let diffs = locked.differences(&current);
    assert_eq!(diffs, [LockDifference::Executable { src: "g".into(), found: true }]);
    let message = diffs[0].to_string();
    assert!(message.contains("input g is executable now") && message.contains("0755"), "{message}");

    let (relocked, _) =
        build::lock(&recipe, Epoch::new(1).unwrap(), &mut HashCache::disabled()).unwrap();
    let text = fs::read_to_string(tmp.path().join("r.lock")).unwrap();
    assert!(
        text.contains("src = \"g\"\ndigest = ") && text.contains("executable = true"),
        "{text}"
    );
    assert_eq!(Lock::read(&tmp.path().join("r.lock")).unwrap(), Some(relocked));
}

/// `recipe` with a second file input, `g`, whose mode is left to the host.
fn with_second_file(dir: &Path, recipe: &Recipe) -> Recipe {
    let text = fs::read_to_string(&recipe.file).unwrap().replace(
        "files = [{ src = \"f\", dest = \"/f\" }]",
        "files = [{ src = \"f\", dest = \"/f\" }, { src = \"g\", dest = \"/g\" }]",
    );
    fs::write(dir.join("r.toml"), text).unwrap();
    Recipe::load(&dir.join("r.toml")).unwrap()
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn malformed_and_future_locks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x.lock");
    fs::write(&path, "version = \n").unwrap();
    assert!(Lock::read(&path).unwrap_err().to_string().contains("malformed"));
    let recipe = setup(tmp.path(), "\n");
    let (lock, _) =
        build::lock(&recipe, Epoch::new(0).unwrap(), &mut HashCache::disabled()).unwrap();
    let future = lock.to_text().unwrap().replace("version = 1", "version = 99");
    fs::write(&path, future).unwrap();
    assert!(Lock::read(&path).unwrap_err().to_string().contains("version 99"));
    assert!(Lock::read(&tmp.path().join("absent.lock")).unwrap().is_none());
}

#[test]
fn e2fsprogs_differences_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("r.lock");
    let text = format!(
        "version = 1\nformat = {}\nrecipe = \"sha256:{}\"\nepoch = 0\n\
         [compression]\nalgorithm = \"gzip\"\nlevel = 5\nchunk = 1048576\n",
        kiln_builder::lock::FORMAT_VERSION,
        "0".repeat(64)
    );
    fs::write(&path, text).unwrap();
    // A lock written before kiln recorded e2fsprogs reads as one that names none.
    let old = Lock::read(&path).unwrap().unwrap();
    assert_eq!(old.e2fsprogs, None);
    let host = Lock { e2fsprogs: Some("1.47.0".into()), ..old.clone() };
    let other = Lock { e2fsprogs: Some("1.46.5".into()), ..old.clone() };

    // Recorded by a build that may rewrite the lock, refused by --locked.
    assert_eq!(old.host_tool_difference(&host), None);
    assert_eq!(
        old.differences(&host),
        [LockDifference::E2fsprogsUnrecorded { found: "1.47.0".into() }]
    );
    // Another version is refused by every build, naming both.
    let changed = LockDifference::E2fsprogs { locked: "1.47.0".into(), found: "1.46.5".into() };
    assert_eq!(host.host_tool_difference(&other), Some(changed.clone()));
    assert_eq!(host.differences(&other), [changed]);
    assert!(host.differences(&host).is_empty());
    // Only an ext4 root depends on e2fsprogs.
    assert!(old.differences(&old).is_empty());
}

#[test]
fn a_locked_base_names_exactly_one_source_and_reads_back_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), "\n");
    let (lock, _) =
        build::lock(&recipe, Epoch::new(0).unwrap(), &mut HashCache::disabled()).unwrap();
    let digest = format!("sha256:{}", "a".repeat(64));
    let base = |source: &str| {
        format!(
            "{}\n[base]\n{source}digest = \"{digest}\"\n\n[[base.manifest]]\n\
             platform = \"linux/amd64\"\ndigest = \"{digest}\"\n",
            lock.to_text().unwrap()
        )
    };
    let path = tmp.path().join("base.lock");
    for source in ["image = \"reg.example/app\"\n", "oci-layout = \"layout\"\n"] {
        fs::write(&path, base(source)).unwrap();
        let read = Lock::read(&path).unwrap().unwrap();
        assert!(read.base.is_some());
        assert_eq!(read.to_text().unwrap(), base(source));
    }
    for source in ["", "image = \"reg.example/app\"\noci-layout = \"layout\"\n"] {
        fs::write(&path, base(source)).unwrap();
        let err = Lock::read(&path).unwrap_err().to_string();
        assert!(err.contains("exactly one of image and oci-layout"), "{err}");
    }
}

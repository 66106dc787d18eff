//! Recipe parsing: valid recipes load, every broken one names file, line and column.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};

use kiln_builder::recipe::{Problem, RecipeError};
use kiln_builder::Recipe;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn error_of(text: &str) -> (RecipeError, String) {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("a.txt"), b"a").unwrap();
    let path = write(tmp.path(), "r.toml", text);
    let err = Recipe::load(&path).unwrap_err();
    // The message and its causes, as the command line prints them.
    let mut msg = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        msg = format!("{msg}: {c}");
        cause = c.source();
    }
    (err, msg)
}

fn at(err: &RecipeError) -> (usize, usize) {
    match err {
        RecipeError::At { location, .. } => (location.line, location.column),
        other => panic!("expected a located error, got {other}"),
    }
}

const HEAD: &str = "[image]\nname = \"x\"\nversion = \"1\"\n";

#[test]
fn full_recipe_loads() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("tree/sub")).unwrap();
    fs::write(tmp.path().join("f"), b"file").unwrap();
    let text = r#"
epoch = 5
[image]
name = "full"
version = "2.0"
platforms = ["linux/amd64", "linux/arm64/v8"]
compression = "zstd"
[[layer]]
name = "l"
dirs = [{ dest = "/d", mode = 0o1777, uid = 3, gid = 4 }]
files = [{ src = "f", dest = "/usr/bin/f", mode = 0o4755 }]
inline = [{ dest = "etc/x", content = "x" }]
symlinks = [{ dest = "/s", target = "/usr/bin/f" }]
hardlinks = [{ dest = "/h", target = "/usr/bin/f" }]
trees = [{ src = "tree", dest = "/opt" }]
[config]
entrypoint = ["/usr/bin/f"]
cmd = ["-h"]
env = { A = "1", B = "2" }
user = "1:1"
workdir = "/d"
labels = { k = "v" }
exposed-ports = ["80", "53/udp"]
volumes = ["/data"]
stop-signal = "SIGINT"
[annotations]
"org.example" = "yes"
"#;
    let r = Recipe::load(&write(tmp.path(), "full.toml", text)).unwrap();
    assert_eq!(r.epoch.map(kiln_tree::Epoch::seconds), Some(5));
    assert_eq!(r.platforms.len(), 2);
    assert_eq!(r.platforms[1].to_string(), "linux/arm64/v8");
    assert_eq!(r.layers[0].dirs[0].owner.mode, Some(0o1777));
    assert_eq!(r.layers[0].files[0].dest.as_str(), "usr/bin/f");
    assert_eq!(r.config.exposed_ports, ["80/tcp", "53/udp"]);
    assert_eq!(r.annotations["org.example"], "yes");
}

#[test]
fn crlf_and_lf_give_the_same_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let lf =
        format!("{HEAD}[[layer]]\nname = \"l\"\ninline = [{{ dest = \"/a\", content = \"x\" }}]\n");
    let a = Recipe::load(&write(tmp.path(), "lf.toml", &lf)).unwrap();
    let b = Recipe::load(&write(tmp.path(), "crlf.toml", &lf.replace('\n', "\r\n"))).unwrap();
    assert_eq!(a.digest, b.digest);
}

#[test]
fn malformed_toml_names_line_and_column() {
    let (err, msg) = error_of("[image]\nname = \"x\"\nversion = \n");
    assert_eq!(at(&err).0, 3, "{msg}");
    assert!(msg.contains("r.toml:3:"), "{msg}");
}

#[test]
fn unknown_keys_are_errors_with_their_position() {
    let (err, msg) = error_of(&format!("{HEAD}colour = \"red\"\n"));
    assert_eq!(at(&err), (4, 1), "{msg}");
    assert!(msg.contains("colour"), "{msg}");
    let (err, msg) = error_of(&format!("{HEAD}[[layer]]\nname = \"l\"\nfiels = []\n"));
    assert_eq!(at(&err).0, 6, "{msg}");
    assert!(msg.contains("fiels"), "{msg}");
}

#[test]
fn image_paths_may_not_escape_the_root() {
    let text = format!("{HEAD}[[layer]]\nname = \"l\"\ninline = [{{ dest = \"/../../etc/shadow\", content = \"x\" }}]\n");
    let (err, msg) = error_of(&text);
    assert_eq!(at(&err), (6, 20), "{msg}");
    assert!(matches!(err, RecipeError::At { problem: Problem::ImagePath(_), .. }));
}

#[test]
fn sources_may_not_leave_the_recipe_folder() {
    for src in ["../outside", "/etc/passwd", "a.txt/../../x"] {
        let text = format!(
            "{HEAD}[[layer]]\nname = \"l\"\nfiles = [{{ src = \"{src}\", dest = \"/x\" }}]\n"
        );
        let (err, msg) = error_of(&text);
        assert!(
            matches!(err, RecipeError::At { problem: Problem::SourcePath(_), .. }),
            "{src}: {msg}"
        );
        assert_eq!(at(&err).0, 6, "{msg}");
    }
}

#[test]
fn missing_sources_and_bad_values_are_located() {
    let cases = [
        ("files = [{ src = \"nope\", dest = \"/x\" }]", "nope"),
        ("files = [{ src = \"a.txt\", dest = \"/x\", mode = 0o17777 }]", "mode"),
        ("dirs = [{ dest = \"/x\", uid = -1 }]", "uid"),
        ("trees = [{ src = \"a.txt\", dest = \"/x\" }]", "not a directory"),
    ];
    for (line, needle) in cases {
        let (err, msg) = error_of(&format!("{HEAD}[[layer]]\nname = \"l\"\n{line}\n"));
        assert_eq!(at(&err).0, 6, "{msg}");
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    let (err, msg) = error_of("[image]\nname = \"x\"\nversion = \"1\"\nplatforms = [\"linux\"]\n");
    assert_eq!(at(&err), (4, 14), "{msg}");
    let (_, msg) = error_of("[image]\nname = \"x\"\nversion = \"1\"\ncompression = \"brotli\"\n");
    assert!(msg.contains("brotli"), "{msg}");
}

#[test]
fn image_name_and_version_follow_the_distribution_grammar() {
    let (err, msg) = error_of("[image]\nname = \"Hello\"\nversion = \"1\"\n");
    assert_eq!(at(&err), (2, 8), "{msg}");
    assert!(msg.contains("Hello"), "{msg}");
    let (err, msg) = error_of("[image]\nname = \"hello\"\nversion = \"-1\"\n");
    assert_eq!(at(&err), (3, 11), "{msg}");
}

#[test]
fn an_input_for_one_platform_names_one_of_the_recipe_s_and_each_platform_gets_its_own() {
    let head =
        "[image]\nname = \"x\"\nversion = \"1\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n\
                [[layer]]\nname = \"app\"\n";
    // A typo'd platform is refused where it is written.
    let (err, msg) = error_of(&format!(
        "{head}files = [{{ src = \"a.txt\", dest = \"/a\", platform = \"linux/amd46\" }}]\n"
    ));
    assert_eq!(at(&err).0, 7, "{msg}");
    assert!(msg.contains("platform linux/amd46 is not one of the recipe's platforms"), "{msg}");
    assert!(msg.contains("linux/amd64, linux/arm64"), "{msg}");
    let (_, msg) = error_of(&format!(
        "{head}files = [{{ src = \"a.txt\", dest = \"/a\", platform = \"amd64\" }}]\n"
    ));
    assert!(msg.contains("\"amd64\" is not of the form os/architecture"), "{msg}");
    // A platform left without the input the others have is named.
    let (_, msg) = error_of(&format!(
        "{head}files = [{{ src = \"a.txt\", dest = \"/usr/bin/app\", platform = \"linux/amd64\" }}]\n"
    ));
    assert!(
        msg.contains("the file for /usr/bin/app is given for linux/amd64 but not for linux/arm64"),
        "{msg}"
    );
    let (_, msg) = error_of(&format!(
        "{head}trees = [{{ src = \".\", dest = \"/opt\", platform = \"linux/arm64\" }}]\n"
    ));
    assert!(
        msg.contains("the tree for /opt is given for linux/arm64 but not for linux/amd64"),
        "{msg}"
    );

    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("b.txt"), b"b").unwrap();
    fs::write(tmp.path().join("a.txt"), b"a").unwrap();
    let path = write(
        tmp.path(),
        "r.toml",
        &format!(
            "{head}files = [{{ src = \"a.txt\", dest = \"/app\", platform = \"linux/amd64\" }},\n\
             {{ src = \"b.txt\", dest = \"/app\", platform = \"linux/arm64\" }},\n\
             {{ src = \"a.txt\", dest = \"/common\" }}]\n"
        ),
    );
    let recipe = Recipe::load(&path).unwrap();
    let layer = &recipe.layers[0];
    assert!(layer.per_platform());
    for (platform, src) in [("linux/amd64", "a.txt"), ("linux/arm64", "b.txt")] {
        let mine = layer.for_platform(&platform.parse().unwrap());
        let files: Vec<(String, String)> =
            mine.files.iter().map(|f| (f.src.rel().to_string(), f.dest.to_string())).collect();
        assert_eq!(
            files,
            [(src.to_string(), "/app".to_string()), ("a.txt".into(), "/common".into())]
        );
    }
}

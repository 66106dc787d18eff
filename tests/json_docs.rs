//! docs/json.md shows, for every command, what `--json` prints. This runs each of those
//! commands and compares the shape of what it prints (the keys of every object and the type
//! of every value, recursively) with the documented example, so the two cannot drift apart.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use kiln_test_servers::registry;
use serde_json::Value;
use support::{require_tool, Kiln, Workspace};

/// The examples of docs/json.md: a fenced `json` block right after `<!-- example: NAME -->`.
fn documented() -> BTreeMap<String, Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/json.md");
    let text = std::fs::read_to_string(&path).expect("docs/json.md is readable");
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("<!-- example: ").and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lines.next(), Some("```json"), "example {name}: a ```json block must follow");
        let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let value = serde_json::from_str(&block.join("\n"))
            .unwrap_or_else(|e| panic!("example {name} in docs/json.md is not JSON: {e}"));
        assert!(out.insert(name.to_string(), value).is_none(), "example {name} twice");
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every place where `printed` does not have the shape of `doc`: other keys, other types.
/// Each element of a printed array must have the shape of one of the example's elements (an
/// example lists one element of each shape); an empty array says nothing about its elements.
fn differences(at: &str, doc: &Value, printed: &Value, out: &mut Vec<String>) {
    match (doc, printed) {
        (Value::Object(d), Value::Object(p)) => {
            for key in d.keys().filter(|k| !p.contains_key(*k)) {
                out.push(format!("{at}.{key}: documented, not printed"));
            }
            for key in p.keys().filter(|k| !d.contains_key(*k)) {
                out.push(format!("{at}.{key}: printed, not documented"));
            }
            for (key, d) in d {
                if let Some(p) = p.get(key) {
                    differences(&format!("{at}.{key}"), d, p, out);
                }
            }
        }
        (Value::Array(d), Value::Array(p)) if !d.is_empty() => {
            for (i, p) in p.iter().enumerate() {
                let at = format!("{at}[{i}]");
                let closest = d
                    .iter()
                    .map(|d| {
                        let mut found = Vec::new();
                        differences(&at, d, p, &mut found);
                        found
                    })
                    .min_by_key(Vec::len)
                    .unwrap_or_default();
                out.extend(closest);
            }
        }
        (d, p) if kind(d) != kind(p) => {
            out.push(format!("{at}: documented as {}, printed as {}", kind(d), kind(p)));
        }
        _ => {}
    }
}

/// The outputs, run in one workspace so that each command has something to work on.
struct Outputs {
    kiln: Kiln,
    printed: BTreeMap<String, Value>,
    /// Each output as printed, for the failure message.
    raw: Vec<String>,
}

impl Outputs {
    fn run(&mut self, name: &str, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = self.kiln.run(&all).ok();
        let value = run.json();
        self.raw.push(format!("<!-- example: {name} -->\n{}", run.stdout.trim_end()));
        assert!(self.printed.insert(name.to_string(), value.clone()).is_none(), "{name} twice");
        value
    }
}

#[test]
fn every_json_output_has_its_documented_shape() {
    let ws = Workspace::new();
    ws.write("vm/app.txt", "app\n");
    let recipe = ws.write(
        "vm/vm.toml",
        "epoch = 1700000000\n[image]\nname = \"vm\"\nversion = \"1\"\n\n\
         [[layer]]\nname = \"base\"\ninline = [{ dest = \"/etc/motd\", content = \"hi\\n\" }]\n\n\
         [[layer]]\nname = \"app\"\nfiles = [{ src = \"app.txt\", dest = \"/usr/bin/app\" }]\n\n\
         [disk]\nsize = \"16MiB\"\nroot = \"erofs\"\nverity = true\nformats = [\"raw\"]\n",
    );
    let recipe = recipe.to_str().unwrap();
    let keys = ws.mkdir("keys");
    let key = keys.join("build.key").display().to_string();
    let public = keys.join("build.pub").display().to_string();
    let policy = ws.write(
        "policy.toml",
        "signers = [\"keys/build.pub\"]\nrevokers = [\"keys/build.pub\"]\n\n\
         [channels.dev]\nkeys = [\"keys/build.pub\"]\n",
    );
    let policy = policy.to_str().unwrap();
    let store = ws.store("store");
    let mut out = Outputs { kiln: Kiln::new(&store), printed: BTreeMap::new(), raw: Vec::new() };
    let path = |rel: &str| ws.path(rel).display().to_string();

    out.run("keygen", &["keygen", "--out", &keys.join("build").display().to_string()]);
    // Built once before, with another app.txt: the base layer comes from the build cache
    // and the lock is stale.
    out.kiln.run(&["build", recipe]).ok();
    ws.write("vm/app.txt", "app 1\n");
    let built = out.run("build", &["build", recipe, "--sign", &key, "--release"]);
    let release = built["release"]["release"].as_str().expect("release id").to_string();
    out.run("lock", &["lock", recipe]);
    out.run("images", &["images"]);
    out.run("inspect", &["inspect", "vm:1"]);
    out.run("export", &["export", "vm:1", "--oci-layout", &path("layout")]);
    out.run("export --disk", &["export", "vm:1", "--disk", &path("disks")]);
    out.run("sign", &["sign", "vm:1", "--key", &key]);
    // Outside a git checkout, the source root is the recipe's folder.
    let root = path("vm");
    out.run("verify", &["verify", "vm:1", "--key", &public, "--rebuild", "--source-root", &root]);
    out.run("release", &["release", "vm:1", "--sign", &key]);
    out.run("verify release", &["verify", &release, "--key", &public]);
    out.run("approve", &["approve", &release, "--for", "dev", "--key", &key]);
    let promote = ["promote", &release, "--to", "dev", "--key", &key, "--policy", policy];
    out.run("promote", &promote);
    // A second release in the channel, so that it can be rolled back to the first.
    ws.write("vm/app.txt", "app 2\n");
    let text = std::fs::read_to_string(recipe).unwrap().replace("\"1\"", "\"2\"");
    std::fs::write(recipe, text).unwrap();
    let second = out.kiln.run(&["--json", "build", recipe, "--sign", &key, "--release"]);
    let second = second.ok().json()["release"]["release"].as_str().unwrap().to_string();
    let promote = ["promote", &second, "--to", "dev", "--key", &key, "--policy", policy];
    out.kiln.run(&promote).ok();
    out.run(
        "rollback",
        &["rollback", "dev/vm", "--to", &release, "--key", &key, "--policy", policy],
    );
    out.run("pin", &["pin", "dev/vm", "--format", "env", "-o", &path("vm.env")]);
    out.run("history", &["history", "dev/vm", "--policy", policy]);
    let revoke = ["revoke", &release, "--key", &key, "--policy", policy, "--reason", "CVE-1"];
    out.run("revoke", &revoke);
    let other = path("other");
    out.run("copy", &["copy", "vm:1", "--from", store.to_str().unwrap(), "--to", &other]);
    out.run("store check", &["store", "check"]);
    out.run("store check --repair", &["store", "check", "--repair"]);
    out.run("gc", &["gc", "--grace", "24h"]);

    if require_tool("docker-registry") {
        if let Some(reg) = registry::open() {
            let repo = format!("{}/{}", reg.host, reg.fresh_repo());
            let kiln = Kiln::new(&store).env("DOCKER_CONFIG", &path("docker"));
            let insecure = ["--insecure-registry", reg.host.as_str()];
            let printed = std::mem::take(&mut out.printed);
            let mut out_reg = Outputs { kiln, printed, raw: std::mem::take(&mut out.raw) };
            let pushed = out_reg.run("push", &[&["push", "vm:1", &repo][..], &insecure].concat());
            let digest = pushed["digest"].as_str().expect("digest").to_string();
            let source = format!("{repo}@{digest}");
            let pulled = path("pulled");
            out_reg.kiln = Kiln::new(Path::new(&pulled)).env("DOCKER_CONFIG", &path("docker"));
            out_reg.run("pull", &[&["pull", &source][..], &insecure].concat());
            let to = format!("docker://{}/{}", reg.host, reg.fresh_repo());
            let from = format!("docker://{source}");
            let copy = ["copy", &digest, "--from", &from, "--to", &to];
            out_reg.run("copy between registries", &[&copy[..], &insecure].concat());
            let store_arg = store.to_str().unwrap();
            let copy = ["copy", "vm:1", "--from", store_arg, "--to", &to];
            out_reg.run("copy to a registry", &[&copy[..], &insecure].concat());
            let copied = path("copied");
            let copy = ["copy", &digest, "--from", &from, "--to", &copied];
            out_reg.run("copy from a registry", &[&copy[..], &insecure].concat());
            out.printed = out_reg.printed;
            out.raw = out_reg.raw;
        }
    }

    let documented = documented();
    let mut problems = Vec::new();
    for (name, printed) in &out.printed {
        match documented.get(name) {
            Some(doc) => differences(name, doc, printed, &mut problems),
            None => problems.push(format!("{name}: no example in docs/json.md")),
        }
    }
    assert!(
        problems.is_empty(),
        "docs/json.md and the printed JSON differ:\n  {}\n\nprinted:\n{}",
        problems.join("\n  "),
        out.raw.join("\n")
    );
}

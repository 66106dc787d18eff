//! Releases, pins, channels and promotion, end to end through the real `kiln` binary: the
//! record is reproducible, pins feed terraform, kustomize and bash, a release goes dev →
//! staging → prod from a folder store to SeaweedFS with nothing rebuilt, the policy refuses
//! what it should with nothing appended, racing and killed promoters leave a chain that
//! verifies, and tampering with a channel is detected.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{require_tool, EXIT_INTEGRITY};
use tempfile::TempDir;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A finished kiln run.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    args: Vec<String>,
}

impl Out {
    fn ok(self) -> Out {
        assert_eq!(self.code, Some(0), "kiln {:?}:\n{}\n{}", self.args, self.stdout, self.stderr);
        self
    }
    fn fails_with(self, code: i32, needles: &[&str]) -> Out {
        assert_eq!(
            self.code,
            Some(code),
            "kiln {:?}:\n{}\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "kiln {:?}: stderr lacks {n:?}:\n{}",
                self.args,
                self.stderr
            );
        }
        self
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("kiln {:?}: not JSON ({e}):\n{}", self.args, self.stdout))
    }
}

/// A workspace: keys, a recipe with disks, a policy, a folder store, and the S3 server when
/// there is one.
struct Lab {
    tmp: TempDir,
    store: String,
    s3: Option<&'static kiln_test_servers::Server>,
}

/// The keys of the lab: name → (private, public) paths.
const KEYS: &[&str] = &["build", "ci", "qa", "release", "alice", "bob", "carol", "mallory"];

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::Builder::new().prefix("kiln-release-").tempdir().unwrap();
        let store = format!("file://{}", tmp.path().join("store").display());
        let lab = Lab { tmp, store, s3: None };
        std::fs::create_dir_all(lab.path("keys")).unwrap();
        for k in KEYS {
            let out = lab.path(&format!("keys/{k}"));
            lab.run(&["keygen", "--out", out.to_str().unwrap(), "--type", "ed25519"]).ok();
        }
        lab.write_policy("policy.toml", "ci", 2);
        lab
    }

    fn with_s3(mut self) -> Lab {
        self.s3 = kiln_test_servers::s3();
        self
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn key(&self, name: &str) -> String {
        self.path(&format!("keys/{name}.key")).display().to_string()
    }

    fn public(&self, name: &str) -> String {
        self.path(&format!("keys/{name}.pub")).display().to_string()
    }

    /// A policy: dev by `dev_key`, staging after dev by qa, prod after staging by release
    /// with `approvals` of alice, bob and carol.
    fn write_policy(&self, file: &str, dev_key: &str, approvals: u32) -> String {
        let text = format!(
            "# who may move releases where\nsigners = [\"keys/build.pub\"]\n\
             revokers = [\"keys/release.pub\"]\n\n\
             [channels.dev]\nkeys = [\"keys/{dev_key}.pub\"]\n\n\
             [channels.staging]\nafter = \"dev\"\nkeys = [\"keys/qa.pub\"]\n\n\
             [channels.prod]\nafter = \"staging\"\nkeys = [\"keys/release.pub\"]\n\
             approvals = {approvals}\napprovers = [\"keys/alice.pub\", \"keys/bob.pub\", \"keys/carol.pub\"]\n"
        );
        let path = self.path(file);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn command(&self, store: &str, args: &[&str]) -> Command {
        let home = self.path("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut cmd = Command::new(KILN);
        cmd.arg("--store").arg(store).args(args);
        cmd.env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env_remove("KILN_STORE")
            .env_remove("SOURCE_DATE_EPOCH")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in ["AWS_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
            cmd.env_remove(var);
        }
        if let Some(s3) = self.s3 {
            cmd.envs(s3.env());
        }
        cmd
    }

    fn run_at(&self, store: &str, args: &[&str]) -> Out {
        let out = self.command(store, args).output().unwrap();
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_at(&self.store, args)
    }

    /// Writes a recipe with a small verity disk (raw and qcow2) whose motd says `motd`.
    fn recipe(&self, motd: &str) -> String {
        let dir = self.path(&format!("recipe-{motd}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app.txt"), format!("app {motd}\n")).unwrap();
        let recipe = dir.join("vm.toml");
        std::fs::write(
            &recipe,
            format!(
                "epoch = 1700000000\n[image]\nname = \"vm\"\nversion = \"{motd}\"\n\n\
                 [[layer]]\nname = \"app\"\n\
                 files = [{{ src = \"app.txt\", dest = \"/usr/bin/app\", mode = 0o755 }}]\n\
                 inline = [{{ dest = \"/etc/motd\", content = \"{motd}\\n\" }}]\n\n\
                 [disk]\nsize = \"8MiB\"\nroot = \"erofs\"\nverity = true\nformats = [\"raw\", \"qcow2\"]\n"
            ),
        )
        .unwrap();
        recipe.display().to_string()
    }

    /// Builds, signs and releases `motd`'s recipe into `store`; returns the build report.
    fn build_release(&self, store: &str, motd: &str) -> Value {
        let recipe = self.recipe(motd);
        self.run_at(store, &["--json", "build", &recipe, "--sign", &self.key("build"), "--release"])
            .ok()
            .json()
    }

    fn promote(&self, store: &str, release: &str, to: &str, key: &str, extra: &[&str]) -> Out {
        let policy = self.path("policy.toml").display().to_string();
        let key = self.key(key);
        let mut args =
            vec!["--json", "promote", release, "--to", to, "--key", &key, "--policy", &policy];
        args.extend_from_slice(extra);
        self.run_at(store, &args)
    }

    fn approve(&self, store: &str, release: &str, channel: &str, key: &str) {
        self.run_at(store, &["approve", release, "--for", channel, "--key", &self.key(key)]).ok();
    }

    /// `kiln history --json` with the policy's keys.
    fn history(&self, store: &str, channel: &str) -> Out {
        let policy = self.path("policy.toml").display().to_string();
        self.run_at(store, &["--json", "history", channel, "--policy", &policy])
    }

    fn entries(&self, store: &str, channel: &str) -> usize {
        self.history(store, channel).ok().json()["entries"].as_array().unwrap().len()
    }

    /// The folder behind a `file://` store.
    fn folder(&self, store: &str) -> PathBuf {
        PathBuf::from(store.strip_prefix("file://").unwrap())
    }
}

fn release_of(build: &Value) -> String {
    build["release"]["release"].as_str().unwrap().to_string()
}

#[test]
fn the_release_record_names_everything_by_digest_and_is_reproducible() {
    let lab = Lab::new();
    let build = lab.build_release(&lab.store, "one");
    let published = &build["release"];
    let record = &published["record"];
    assert_eq!(record["schema"], "kiln.release/v1");
    assert_eq!(record["name"], "vm");
    assert_eq!(record["version"], "one");
    assert_eq!(record["image"]["digest"], build["digest"]);
    assert_eq!(record["sourceDateEpoch"], 1700000000);
    assert_eq!(record["builder"]["name"], "kiln");
    assert!(record["builder"]["format"].as_str().is_some_and(|f| !f.is_empty()));
    let platform = &record["platforms"][0];
    assert_eq!(platform["platform"], "linux/amd64");
    assert_eq!(platform["manifest"]["digest"], build["manifests"][0]["digest"]);
    let disks = platform["disks"].as_array().unwrap();
    let formats: Vec<&str> = disks.iter().map(|d| d["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["qcow2", "raw"]);
    for d in disks {
        assert_eq!(d["verityRootHash"].as_str().unwrap().len(), 64, "{d}");
        let blob =
            lab.folder(&lab.store).join("blobs/sha256").join(&d["digest"].as_str().unwrap()[7..]);
        assert_eq!(std::fs::metadata(blob).unwrap().len(), d["size"].as_u64().unwrap());
    }
    assert_eq!(platform["sboms"].as_array().unwrap().len(), 1);
    assert_eq!(record["signatures"].as_array().unwrap().len(), 1);
    assert_eq!(record["provenance"].as_array().unwrap().len(), 1);
    assert!(record["recipe"].as_str().unwrap().starts_with("sha256:"));
    assert!(record["lock"].as_str().unwrap().starts_with("sha256:"));
    assert!(published["signature"].as_str().unwrap().starts_with("sha256:"));

    // `kiln release` on the same image gives the same id; so does a build into another store.
    let again =
        lab.run(&["--json", "release", "vm:one", "--key", &lab.public("build")]).ok().json();
    assert_eq!(again["release"], published["release"]);
    let other = format!("file://{}", lab.path("other").display());
    let rebuilt = lab.build_release(&other, "one");
    assert_eq!(rebuilt["release"]["release"], published["release"]);

    // An image without provenance cannot name its recipe, lock and epoch.
    let plain = lab.path("plain.toml");
    std::fs::write(&plain, "[image]\nname = \"plain\"\nversion = \"1\"\n").unwrap();
    lab.run(&["build", plain.to_str().unwrap()]).ok();
    lab.run(&["release", "plain:1", "--key", &lab.public("build")])
        .fails_with(1, &["has no provenance", "--sign"]);
}

#[test]
fn a_release_trusts_only_a_verified_provenance_and_verify_checks_its_signature() {
    let lab = Lab::new();
    let build = lab.build_release(&lab.store, "one");
    let release = release_of(&build);
    let build_pub = lab.public("build");

    // The record takes recipe, lock and epoch only from a provenance that verifies: with no
    // key to check it by, or with a key that did not sign it, `kiln release` refuses.
    let other = format!("file://{}", lab.path("other").display());
    let recipe = lab.recipe("one");
    lab.run_at(&other, &["build", &recipe, "--sign", &lab.key("mallory")]).ok();
    lab.run_at(&other, &["release", "vm:one", "--key", &build_pub]).fails_with(
        1,
        &["no provenance of image", "can be trusted", "does not verify with any given key"],
    );
    lab.run_at(&other, &["release", "vm:one"]).fails_with(1, &["give the key that signed"]);
    lab.run_at(&other, &["release", "vm:one", "--key", &lab.public("mallory")]).ok();

    // verify checks the release's own signature with the keys given, and says so when none is.
    let verified = lab.run(&["--json", "verify", &release, "--key", &build_pub]).ok().json();
    assert_eq!(verified["releaseSigners"].as_array().unwrap().len(), 1, "{verified}");
    let unkeyed = lab.run(&["verify", &release]).ok();
    assert!(unkeyed.stdout.contains("was not checked: no --key given"), "{}", unkeyed.stdout);
    // Without its signature the release no longer verifies with a key, though the image does.
    let referrers = lab.folder(&lab.store).join("referrers").join(&release[7..]);
    for e in std::fs::read_dir(&referrers).unwrap() {
        let path = e.unwrap().path();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if v["artifactType"] == "application/vnd.dev.cosign.artifact.sig.v1+json" {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let unsigned =
        lab.run(&["verify", &release, "--key", &build_pub]).fails_with(EXIT_INTEGRITY, &[]);
    assert!(
        unsigned.stdout.contains(&format!("no signature over {release}")),
        "{}",
        unsigned.stdout
    );
    lab.run(&["verify", build["digest"].as_str().unwrap(), "--key", &build_pub]).ok();

    // A forged release: the same record under a manifest whose subject is another image. It
    // is a release that does not verify (exit 4), not something else to audit as an image.
    let blobs = lab.folder(&lab.store).join("blobs/sha256");
    let mut forged: Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&release[7..])).unwrap()).unwrap();
    forged["subject"]["digest"] = kiln_oci::Digest::of(b"another image").to_string().into();
    let bytes = serde_json::to_vec(&forged).unwrap();
    let forged_id = kiln_oci::Digest::of(&bytes).to_string();
    std::fs::write(blobs.join(&forged_id[7..]), &bytes).unwrap();
    lab.run(&["verify", &forged_id, "--key", &build_pub])
        .fails_with(EXIT_INTEGRITY, &[&format!("release {forged_id} does not verify")]);
}

/// Promotes a fresh release of `motd` into dev, staging and (with alice's and bob's
/// approvals) prod, all in the lab's folder store; returns the build report.
fn through_prod(lab: &Lab, motd: &str) -> Value {
    let build = lab.build_release(&lab.store, motd);
    let release = release_of(&build);
    lab.promote(&lab.store, &release, "dev", "ci", &[]).ok();
    lab.promote(&lab.store, &release, "staging", "qa", &[]).ok();
    lab.approve(&lab.store, &release, "prod", "alice");
    lab.approve(&lab.store, &release, "prod", "bob");
    lab.promote(&lab.store, &release, "prod", "release", &["--reason", "CHG-1"]).ok();
    build
}

#[test]
fn pins_feed_terraform_kustomize_and_bash() {
    let lab = Lab::new();
    let build = through_prod(&lab, "one");
    let release = release_of(&build);
    let index = build["digest"].as_str().unwrap();
    let repo = "registry.example.com/team/vm";

    // json: the record, the image reference and each disk's object, which hashes to its digest.
    let json = lab.run(&["pin", "prod/vm", "--format", "json", "--repository", repo]).ok().json();
    assert_eq!(json["release"], release.as_str());
    assert_eq!(json["imageRef"], format!("{repo}@{index}"));
    for disk in json["disks"].as_array().unwrap() {
        let url = disk["url"].as_str().unwrap();
        let path = url.strip_prefix("file://").unwrap();
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(kiln_oci::Digest::of(&bytes).to_string(), disk["digest"].as_str().unwrap());
    }
    // Pinning the release id gives the same pin as the channel.
    let by_id = lab.run(&["pin", &release, "--format", "json", "--repository", repo]).ok();
    assert_eq!(by_id.json(), json);

    // tfvars: terraform applies a configuration with no providers fed by the pin.
    if require_tool("terraform") {
        let tf = lab.path("tf");
        std::fs::create_dir_all(&tf).unwrap();
        std::fs::write(tf.join("main.tf"), TERRAFORM_CONFIG).unwrap();
        let pin = tf.join("release.auto.tfvars.json");
        lab.run(&[
            "pin",
            "prod/vm",
            "--format",
            "tfvars",
            "--repository",
            repo,
            "-o",
            pin.to_str().unwrap(),
        ])
        .ok();
        let leftovers: Vec<_> =
            std::fs::read_dir(&tf).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 2, "the atomic write left {leftovers:?}");
        let terraform = |args: &[&str]| {
            let out = Command::new("terraform")
                .args(args)
                .current_dir(&tf)
                .env("HOME", &tf)
                .env("TF_IN_AUTOMATION", "1")
                .env("TF_CLI_CONFIG_FILE", tf.join("none.tfrc"))
                .env("TF_DATA_DIR", tf.join(".terraform"))
                .env("CHECKPOINT_DISABLE", "1")
                .env_remove("TF_CLI_ARGS")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "terraform {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        std::fs::write(tf.join("none.tfrc"), "").unwrap();
        terraform(&["init", "-input=false", "-backend=false"]);
        terraform(&["apply", "-auto-approve", "-input=false", "-lock=false"]);
        let outputs: Value = serde_json::from_str(&terraform(&["output", "-json"])).unwrap();
        assert_eq!(outputs["image_ref"]["value"], format!("{repo}@{index}"));
        assert_eq!(outputs["release"]["value"], release.as_str());
        let disk =
            &json["disks"].as_array().unwrap().iter().find(|d| d["format"] == "raw").unwrap();
        assert_eq!(outputs["raw_disk"]["value"], disk["digest"]);
        assert_eq!(outputs["manifest"]["value"], build["manifests"][0]["digest"]);
    }

    // k8s: kustomize renders the Deployment's image by digest.
    if require_tool("kubectl") {
        let k = lab.path("k8s");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("deployment.yaml"), DEPLOYMENT).unwrap();
        let pin = lab.run(&["pin", "prod/vm", "--format", "k8s", "--repository", repo]).ok().stdout;
        std::fs::write(
            k.join("kustomization.yaml"),
            format!("resources:\n- deployment.yaml\n{pin}"),
        )
        .unwrap();
        let out = Command::new("kubectl").args(["kustomize"]).arg(&k).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rendered = String::from_utf8_lossy(&out.stdout);
        assert!(rendered.contains(&format!("image: {repo}@{index}")), "{rendered}");
    }

    // env: bash sources it.
    let env = lab.path("release.env");
    lab.run(&["pin", "prod/vm", "--format", "env", "-o", env.to_str().unwrap()]).ok();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". '{}' && echo \"$KILN_IMAGE_DIGEST $KILN_IMAGE_REF $KILN_RELEASE\"",
            env.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{index} vm@{index} {release}")
    );

    // Bad input: a format that does not exist, a bad repository, a digest that is no release.
    // An unknown format is a usage error, like any bad flag value.
    lab.run(&["pin", "prod/vm", "--format", "yaml"])
        .fails_with(2, &["pin format \"yaml\" does not exist"]);
    lab.run(&["pin", "prod/vm", "--format", "env", "--repository", "a b"])
        .fails_with(1, &["repository"]);
    lab.run(&["pin", index, "--format", "env"]).fails_with(1, &["is not a kiln release"]);
    lab.run(&["pin", "nosuch/vm", "--format", "env"]).fails_with(1, &["no entries"]);
    let policy = lab.path("policy.toml").display().to_string();
    let empty = lab.run(&["history", "prod/nothing", "--policy", &policy]).ok();
    assert!(empty.stdout.contains("prod/nothing: no entries"), "{}", empty.stdout);

    // A revoked release is never rendered, by id or through a channel.
    let policy = lab.path("policy.toml").display().to_string();
    lab.run(&[
        "revoke",
        &release,
        "--key",
        &lab.key("release"),
        "--policy",
        &policy,
        "--reason",
        "CVE-1",
    ])
    .ok();
    lab.run(&["pin", "prod/vm", "--format", "env"]).fails_with(1, &["revoked", "CVE-1"]);
    lab.run(&["pin", &release, "--format", "json"]).fails_with(1, &["revoked"]);
}

const TERRAFORM_CONFIG: &str = r#"
variable "kiln_release" {
  type = object({
    release      = string
    name         = string
    version      = string
    image_digest = string
    image_ref    = string
    platforms    = map(object({ manifest = string, config = string }))
    disks = list(object({
      platform         = string
      format           = string
      digest           = string
      size             = number
      url              = string
      verity_root_hash = string
    }))
  })
}
output "release" { value = var.kiln_release.release }
output "image_ref" { value = var.kiln_release.image_ref }
output "manifest" { value = var.kiln_release.platforms["linux/amd64"].manifest }
output "raw_disk" { value = one([for d in var.kiln_release.disks : d.digest if d.format == "raw"]) }
"#;

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: vm\nspec:\n  \
selector:\n    matchLabels: {app: vm}\n  template:\n    metadata:\n      labels: {app: vm}\n    \
spec:\n      containers:\n      - name: vm\n        image: vm\n";

#[test]
fn dev_staging_prod_across_a_folder_and_seaweedfs_with_nothing_rebuilt() {
    let lab = Lab::new().with_s3();
    let Some(s3) = lab.s3 else { return };
    let build = lab.build_release(&lab.store, "one");
    let release = release_of(&build);
    let index = build["digest"].as_str().unwrap();
    lab.promote(&lab.store, &release, "dev", "ci", &[]).ok();
    // staging lives in a second folder store, prod on SeaweedFS.
    let staging = format!("file://{}", lab.path("staging").display());
    let copied =
        lab.promote(&lab.store, &release, "staging", "qa", &["--to-store", &staging]).ok().json();
    assert!(copied["copied"]["copied"].as_u64().unwrap() > 0, "{copied}");
    lab.approve(&staging, &release, "prod", "alice");
    lab.approve(&staging, &release, "prod", "carol");
    // The staging store has the staging channel; dev history stays where it was.
    let staging_policy = lab.path("policy.toml").display().to_string();
    lab.run_at(&staging, &["history", "staging/vm", "--policy", &staging_policy]).ok();
    // prod is checked against staging's history in the staging store, then lands on S3.
    let prod = s3.fresh_location();
    let report = lab.promote(&staging, &release, "prod", "release", &["--to-store", &prod]);
    // staging's store lacks dev's history, but prod only needs staging.
    let report = report.ok().json();
    assert_eq!(report["channel"], "prod/vm");
    assert_eq!(report["seq"], 1);
    assert_eq!(report["approvals"].as_array().unwrap().len(), 2);

    // On S3 the prod pin names the dev build's digests byte for byte.
    let pin = lab.run_at(&prod, &["pin", "prod/vm", "--format", "json"]).ok().json();
    let dev_pin = lab.run(&["pin", &release, "--format", "json"]).ok().json();
    assert_eq!(pin["record"], dev_pin["record"]);
    assert_eq!(pin["release"], release.as_str());
    assert_eq!(pin["record"]["image"]["digest"], index);
    for disk in pin["disks"].as_array().unwrap() {
        assert!(disk["url"].as_str().unwrap().starts_with(&prod), "{disk}");
    }
    // Signatures, SBOM, provenance, approvals and disks are all there: verify passes on S3,
    // the release verifies against the prod channel, the store checks clean.
    lab.run_at(&prod, &["verify", index, "--key", &lab.public("build")]).ok();
    let verified = lab
        .run_at(
            &prod,
            &[
                "--json",
                "verify",
                &release,
                "--key",
                &lab.public("build"),
                "--channel",
                "prod/vm",
                "--policy",
                &staging_policy,
            ],
        )
        .ok()
        .json();
    assert_eq!(verified["passed"], true, "{verified}");
    lab.run_at(&prod, &["store", "check"]).ok();
    let history = lab.history(&prod, "prod/vm").ok().json();
    assert_eq!(history["entries"][0]["release"], release.as_str());
    assert_eq!(history["entries"][0]["reason"], "");

    // Promoting again into a store that already has everything uploads no blob.
    let again =
        lab.promote(&staging, &release, "prod", "release", &["--to-store", &prod]).ok().json();
    assert_eq!(again["copied"]["copied"], 0, "{again}");
    assert_eq!(again["seq"], 2);
    assert_eq!(again["previous"], report["entry"]);
}

#[test]
fn the_policy_refuses_with_a_clear_message_and_appends_nothing() {
    let lab = Lab::new();
    let one_build = through_prod(&lab, "one");
    let two = lab.build_release(&lab.store, "two");
    let (one, two) = (release_of(&one_build), release_of(&two));
    let store = lab.store.clone();
    let counts = || ["dev/vm", "staging/vm", "prod/vm"].map(|c| lab.entries(&store, c));
    let before = counts();
    assert_eq!(before, [1, 1, 1]);

    // Skipping staging.
    lab.promote(&store, &two, "dev", "ci", &[]).ok();
    lab.approve(&store, &two, "prod", "alice");
    lab.approve(&store, &two, "prod", "bob");
    lab.promote(&store, &two, "prod", "release", &[]).fails_with(
        1,
        &["refused", "prod comes after staging", "never held this release", "nothing was appended"],
    );
    lab.promote(&store, &two, "staging", "qa", &[]).ok();
    // A promoter key the policy does not list.
    lab.promote(&store, &two, "prod", "mallory", &[]).fails_with(1, &["may not promote into prod"]);
    lab.promote(&store, &two, "staging", "ci", &[])
        .fails_with(1, &["may not promote into staging"]);
    // Too few approvals: a fresh release with one approval, a duplicate of it, an approval
    // for another channel, one for another release, one by a key that is no approver.
    let three = release_of(&lab.build_release(&store, "three"));
    lab.promote(&store, &three, "dev", "ci", &[]).ok();
    lab.promote(&store, &three, "staging", "qa", &[]).ok();
    lab.approve(&store, &three, "prod", "alice");
    lab.approve(&store, &three, "prod", "alice");
    lab.approve(&store, &three, "staging", "bob");
    lab.approve(&store, &three, "prod", "mallory");
    lab.promote(&store, &three, "prod", "release", &[]).fails_with(
        1,
        &[
            "1 approval(s) by distinct approver keys of the policy, 2 needed",
            "is for channel staging, not prod",
            "not signed by an approver key",
        ],
    );
    // An approval copied from another release does not count for this one.
    let approval_of_one = std::fs::read_dir(lab.folder(&store).join("referrers").join(&one[7..]))
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            v["artifactType"] == "application/vnd.kiln.approval.v1"
        })
        .unwrap();
    std::fs::copy(
        approval_of_one.path(),
        lab.folder(&store).join("referrers").join(&three[7..]).join(approval_of_one.file_name()),
    )
    .unwrap();
    lab.promote(&store, &three, "prod", "release", &[])
        .fails_with(1, &["not this one", "2 needed"]);
    // A revoked release is refused everywhere, even with everything else in order.
    lab.promote(&store, &two, "prod", "release", &[]).ok();
    let policy = lab.path("policy.toml").display().to_string();
    let revoke = |release: &str, key: &str, reason: &str| {
        lab.run(&[
            "revoke",
            release,
            "--key",
            &lab.key(key),
            "--policy",
            &policy,
            "--reason",
            reason,
        ])
    };
    revoke(&two, "release", "bad build").ok();
    revoke(&two, "release", "again").fails_with(1, &["bad build"]);
    lab.promote(&store, &two, "dev", "ci", &[]).fails_with(1, &["revoked", "bad build"]);
    let build_pub = lab.public("build");
    lab.run(&["verify", &two, "--key", &build_pub])
        .fails_with(EXIT_INTEGRITY, &["revoked", "bad build"]);
    let policy = lab.path("policy.toml").display().to_string();
    lab.run(&[
        "rollback",
        "prod/vm",
        "--to",
        &two,
        "--key",
        &lab.key("release"),
        "--policy",
        &policy,
    ])
    .fails_with(1, &["revoked"]);
    // Rolling back to a release the channel never held is refused; to one it held works.
    lab.run(&[
        "rollback",
        "prod/vm",
        "--to",
        &three,
        "--key",
        &lab.key("release"),
        "--policy",
        &policy,
    ])
    .fails_with(1, &["never held this release"]);
    lab.run(&[
        "rollback",
        "prod/vm",
        "--to",
        &one,
        "--key",
        &lab.key("release"),
        "--policy",
        &policy,
        "--reason",
        "revert",
    ])
    .ok();
    let pin = lab.run(&["pin", "prod/vm", "--format", "json"]).ok().json();
    assert_eq!(pin["release"], one.as_str());
    assert_eq!(counts(), [3, 3, 3]);

    // Bad input: an unknown channel, a malformed policy (line and column), a digest that is
    // not a release, a malformed channel name.
    lab.promote(&store, &one, "qa", "ci", &[])
        .fails_with(1, &["channel \"qa\" is not in policy", "dev, prod, staging"]);
    let broken = lab.path("broken.toml");
    std::fs::write(&broken, "[channels.dev]\nkeys = [\"keys/ci.pub\"\n").unwrap();
    let broken = broken.display().to_string();
    lab.run(&["promote", &one, "--to", "dev", "--key", &lab.key("ci"), "--policy", &broken])
        .fails_with(1, &["is malformed", "line 2, column"]);
    let index = one_build["digest"].as_str().unwrap();
    lab.promote(&store, index, "dev", "ci", &[])
        .fails_with(1, &["is not a kiln release", "image.index.v1+json, not a release"]);
    lab.promote(&store, &one, "Dev!", "ci", &[]).fails_with(1, &["not a valid channel name"]);
    assert_eq!(counts(), [3, 3, 3]);
}

#[test]
fn an_audit_rechecks_each_entry_against_the_policy_it_records() {
    let lab = Lab::new();
    let one = release_of(&through_prod(&lab, "one"));
    let strict = lab.path("policy.toml").display().to_string();
    let history = lab.history(&lab.store, "prod/vm").ok().json();
    assert_eq!(history["policies"][0]["current"], true, "{history}");
    assert_eq!(history["notes"].as_array().unwrap().len(), 0, "{history}");
    // An auditor holding a laxer policy (no approvals for prod) is told the entries were
    // written under another one, and each is re-checked against its own.
    let lax = lab.write_policy("lax.toml", "ci", 0);
    let audit = |store: &str, needles: &[&str]| {
        let history = lab.run_at(store, &["history", "prod/vm", "--policy", &lax]);
        let verify = lab.run_at(
            store,
            &[
                "verify",
                &one,
                "--key",
                &lab.public("build"),
                "--channel",
                "prod/vm",
                "--policy",
                &lax,
            ],
        );
        if needles.is_empty() {
            return history.ok().stdout + &verify.ok().stdout;
        }
        history.fails_with(EXIT_INTEGRITY, needles);
        verify.fails_with(EXIT_INTEGRITY, needles);
        String::new()
    };
    let said = audit(&lab.store, &[]);
    assert!(said.contains("not the policy file given"), "{said}");
    let json = lab.run(&["--json", "history", "prod/vm", "--policy", &lax]).ok().json();
    assert_eq!(json["policies"][0]["current"], false, "{json}");
    let copy = |name: &str| {
        let dir = lab.path(name);
        assert!(Command::new("cp")
            .arg("-a")
            .arg(lab.folder(&lab.store))
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        dir
    };
    // One of the two approvals prod needed under the recorded policy is gone: the laxer file
    // would not need it, the audit still does.
    let unapproved = copy("unapproved");
    let referrers = unapproved.join("referrers").join(&one[7..]);
    let approval = std::fs::read_dir(&referrers)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["artifactType"] == "application/vnd.kiln.approval.v1"
        })
        .unwrap();
    std::fs::remove_file(approval).unwrap();
    audit(
        &format!("file://{}", unapproved.display()),
        &["at entry 1", "needs 2 approvals by distinct approvers", "holds 1"],
    );
    // The recorded policy itself gone: nothing to re-check against.
    let unrecorded = copy("unrecorded");
    let digest = json["entries"][0]["policy"].as_str().unwrap();
    std::fs::remove_file(unrecorded.join("log/_policies").join(&digest[7..])).unwrap();
    audit(
        &format!("file://{}", unrecorded.display()),
        &["at entry 1", "is not recorded in the store"],
    );
    lab.run_at(&lab.store, &["history", "prod/vm", "--policy", &strict]).ok();
}

#[test]
fn revocations_need_a_revoker_key_and_deleting_one_is_detected() {
    let lab = Lab::new();
    let one = release_of(&lab.build_release(&lab.store, "one"));
    let two = release_of(&lab.build_release(&lab.store, "two"));
    let policy = lab.path("policy.toml").display().to_string();
    let revoke = |store: &str, release: &str, key: &str, policy: &str, reason: &str| {
        lab.run_at(
            store,
            &["revoke", release, "--key", &lab.key(key), "--policy", policy, "--reason", reason],
        )
    };
    let copy = |name: &str| {
        let dir = lab.path(name);
        assert!(Command::new("cp")
            .arg("-a")
            .arg(lab.folder(&lab.store))
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        format!("file://{}", dir.display())
    };
    // A key the policy does not list as a revoker cannot revoke.
    revoke(&lab.store, &one, "mallory", &policy, "no").fails_with(1, &["may not revoke"]);
    lab.run(&["pin", &one, "--format", "json"]).ok();
    // With a policy file of its own it can write one; an audit under the real policy refuses
    // it (pins, which check no key, still treat the release as revoked).
    let forged = copy("forged-revocation");
    let mallory_policy = lab.path("mallory-revokes.toml");
    std::fs::write(
        &mallory_policy,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("revokers = [\"keys/release.pub\"]", "revokers = [\"keys/mallory.pub\"]"),
    )
    .unwrap();
    revoke(&forged, &one, "mallory", mallory_policy.to_str().unwrap(), "forged").ok();
    lab.promote(&forged, &one, "dev", "ci", &[])
        .fails_with(EXIT_INTEGRITY, &["at entry 1", "does not verify with any trusted key"]);
    lab.run_at(&forged, &["pin", &one, "--format", "json"]).fails_with(1, &["revoked", "forged"]);

    revoke(&lab.store, &one, "release", &policy, "CVE-1").ok();
    // A promotion records the revocation log's newest entry it saw.
    lab.promote(&lab.store, &two, "dev", "ci", &[]).ok();
    revoke(&lab.store, &two, "release", &policy, "CVE-2").ok();
    lab.promote(&lab.store, &two, "dev", "ci", &[]).fails_with(1, &["revoked", "CVE-2"]);
    // The whole revocation log deleted: it looks like nothing was ever revoked, and a pin,
    // which reads only the log, renders the release again; but the channel's entry saw a
    // revocation the log no longer has.
    let wiped = copy("wiped-revocations");
    std::fs::remove_dir_all(lab.folder(&wiped).join("log/_revocations")).unwrap();
    lab.run_at(&wiped, &["pin", &one, "--format", "json"]).ok();
    lab.history(&wiped, "dev/vm")
        .fails_with(EXIT_INTEGRITY, &["at entry 1", "revocations were deleted"]);
    lab.run_at(
        &wiped,
        &[
            "verify",
            &two,
            "--key",
            &lab.public("build"),
            "--channel",
            "dev/vm",
            "--policy",
            &policy,
        ],
    )
    .fails_with(EXIT_INTEGRITY, &["revocations were deleted"]);
    // The newest revocation deleted: pin, promote and verify see the log was cut.
    let cut = copy("cut-revocation");
    std::fs::remove_file(lab.folder(&cut).join("log/_revocations/all/2")).unwrap();
    lab.run_at(&cut, &["pin", &two, "--format", "json"])
        .fails_with(EXIT_INTEGRITY, &["entry 2 is missing: deleted"]);
    lab.promote(&cut, &two, "dev", "ci", &[])
        .fails_with(EXIT_INTEGRITY, &["entry 2 is missing: deleted"]);
    // The oldest deleted: a gap for an audit, and the checkpoint still lists it for a pin.
    let gap = copy("gap-revocation");
    std::fs::remove_file(lab.folder(&gap).join("log/_revocations/all/1")).unwrap();
    lab.run_at(&gap, &["pin", &one, "--format", "json"]).fails_with(1, &["revoked"]);
    lab.promote(&gap, &one, "dev", "ci", &[])
        .fails_with(EXIT_INTEGRITY, &["entry 1 is missing (entry 2 exists)"]);
}

/// The entries of `history --json` as (seq, release).
fn chain(history: &Value) -> Vec<(u64, String)> {
    history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["release"].as_str().unwrap().to_string()))
        .collect()
}

/// One racing promotion: the release, and its seq and attempts when it landed.
type Attempt = (String, Option<(u64, u64)>);

/// Two processes promote different releases into one channel 50 times each: every attempt
/// lands as exactly one entry or fails cleanly, and the chain verifies with no gap or fork.
fn race(lab: &Lab, store: &str) {
    let one = release_of(&lab.build_release(store, "one"));
    let two = release_of(&lab.build_release(store, "two"));
    let outcomes: Vec<Vec<Attempt>> = std::thread::scope(|s| {
        let racers: Vec<_> = [&one, &two]
            .into_iter()
            .map(|release| {
                s.spawn(move || {
                    (0..50)
                        .map(|_| {
                            let out = lab.promote(store, release, "dev", "ci", &[]);
                            match out.code {
                                Some(0) => {
                                    let report = out.json();
                                    let seq = report["seq"].as_u64().unwrap();
                                    (
                                        release.clone(),
                                        Some((seq, report["attempts"].as_u64().unwrap())),
                                    )
                                }
                                _ => {
                                    // A clean failure says what happened and that a retry helps.
                                    assert!(out.stderr.contains("retry"), "{}", out.stderr);
                                    (release.clone(), None)
                                }
                            }
                        })
                        .collect()
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let history = lab.history(store, "dev/vm").ok().json();
    let entries = chain(&history);
    let mut landed: Vec<(u64, String)> = outcomes
        .iter()
        .flatten()
        .filter_map(|(release, seq)| seq.map(|(s, _)| (s, release.clone())))
        .collect();
    landed.sort();
    assert_eq!(entries, landed, "every success is exactly one entry, and nothing else is");
    let n = entries.len() as u64;
    assert!(entries.iter().map(|e| e.0).eq(1..=n), "no gap, no fork");
    let retries: u64 = outcomes.iter().flatten().filter_map(|(_, s)| s.map(|(_, a)| a - 1)).sum();
    eprintln!("{store}: {n} of 100 racing promotions landed, {retries} seqs lost to the other writer and retried");
}

#[test]
fn racing_promoters_each_land_one_entry_or_fail_cleanly() {
    let lab = Lab::new().with_s3();
    race(&lab, &lab.store);
    if let Some(s3) = lab.s3 {
        race(&lab, &s3.fresh_location());
    }
}

/// Starts `cmd`, SIGKILLs it after `delay` if it still runs; returns whether it was killed.
fn kill_after(mut cmd: Command, delay: Duration) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(delay);
    // An error only means the process already exited.
    if child.kill().is_err() {
        eprintln!("promote finished before its kill point");
    }
    child.wait().unwrap().signal().is_some()
}

#[test]
fn sigkill_during_promote_leaves_a_chain_that_verifies_and_a_rerun_completes() {
    let lab = Lab::new();
    let release = release_of(&lab.build_release(&lab.store, "one"));
    let policy = lab.path("policy.toml").display().to_string();
    let key = lab.key("ci");
    let promote = |target: &str| {
        lab.command(
            &lab.store,
            &[
                "promote",
                &release,
                "--to",
                "dev",
                "--key",
                &key,
                "--policy",
                &policy,
                "--to-store",
                target,
            ],
        )
    };
    // Kill points spread over one uninterrupted promotion into an empty store; the timing
    // only chooses where to kill and is never asserted on.
    let start = Instant::now();
    let timed = format!("file://{}", lab.path("timed").display());
    assert!(promote(&timed).status().unwrap().success());
    let span = start.elapsed().as_millis() as u64;
    let shared = format!("file://{}", lab.path("shared").display());
    let mut interrupted = 0;
    for i in 0..20u64 {
        // Half the kills hit a cold store (mostly the copy), half one that already has the
        // release and a growing chain (mostly verification and the append).
        let target = if i % 2 == 0 {
            format!("file://{}", lab.path(&format!("cold-{i}")).display())
        } else {
            shared.clone()
        };
        interrupted +=
            usize::from(kill_after(promote(&target), Duration::from_millis(span * i / 20)));
        lab.history(&target, "dev/vm").ok();
        let check = lab.run_at(&target, &["store", "check"]);
        assert_eq!(check.code, Some(0), "{}{}", check.stdout, check.stderr);
        // The rerun completes and the chain still verifies.
        lab.promote(&lab.store, &release, "dev", "ci", &["--to-store", &target]).ok();
        let history = lab.history(&target, "dev/vm").ok().json();
        assert!(chain(&history).iter().all(|(_, r)| *r == release));
    }
    eprintln!("{interrupted} of 20 promotions were interrupted by SIGKILL");
    let pin = lab.run_at(&shared, &["pin", "dev/vm", "--format", "json"]).ok().json();
    assert_eq!(pin["release"], release.as_str());
}

#[test]
fn tampering_with_a_channel_is_detected_and_names_the_entry() {
    let lab = Lab::new();
    let one = release_of(&through_prod(&lab, "one"));
    // The signed checkpoint of dev/vm when it had one entry, as someone reading the bucket
    // then could have kept it.
    let first_checkpoint = std::fs::read(lab.folder(&lab.store).join("log/dev/vm/HEAD")).unwrap();
    let two = release_of(&lab.build_release(&lab.store, "two"));
    lab.promote(&lab.store, &two, "dev", "ci", &[]).ok();
    let second_checkpoint = std::fs::read(lab.folder(&lab.store).join("log/dev/vm/HEAD")).unwrap();
    lab.promote(&lab.store, &one, "dev", "ci", &["--reason", "back"]).ok();
    let policy = lab.path("policy.toml").display().to_string();
    let build_pub = lab.public("build");
    // Each case works on its own copy of the store; `edit` changes the copy's dev/vm channel.
    let case = |name: &str, edit: &dyn Fn(&PathBuf), needles: &[&str]| {
        let copy = lab.path(&format!("tampered-{name}"));
        let out =
            Command::new("cp").arg("-a").arg(lab.folder(&lab.store)).arg(&copy).status().unwrap();
        assert!(out.success());
        edit(&copy.join("log/dev/vm"));
        let store = format!("file://{}", copy.display());
        lab.history(&store, "dev/vm").fails_with(EXIT_INTEGRITY, needles);
        lab.run_at(
            &store,
            &["verify", &one, "--key", &build_pub, "--channel", "dev/vm", "--policy", &policy],
        )
        .fails_with(EXIT_INTEGRITY, needles);
        store
    };
    let read = |p: &PathBuf| std::fs::read(p).unwrap();
    // An entry edited: its reason changed inside the signed payload.
    case(
        "edited",
        &|log| {
            let entry = log.join("3");
            let mut envelope: Value = serde_json::from_slice(&read(&entry)).unwrap();
            let payload = base64_decode(envelope["payload"].as_str().unwrap());
            let payload = String::from_utf8(payload).unwrap().replace("\"back\"", "\"ok\"");
            envelope["payload"] = base64_encode(payload.as_bytes()).into();
            std::fs::write(&entry, serde_json::to_vec(&envelope).unwrap()).unwrap();
        },
        &["at entry 3", "signature does not verify"],
    );
    // An entry replaced by something far larger than any entry, which is never read whole.
    case(
        "oversized",
        &|log| std::fs::write(log.join("2"), vec![b' '; 1 << 20]).unwrap(),
        &["at entry 2", "larger than"],
    );
    // An entry deleted.
    case("deleted", &|log| std::fs::remove_file(log.join("2")).unwrap(), &["entry 2 is missing"]);
    // Two entries swapped.
    case(
        "reordered",
        &|log| {
            let (a, b) = (read(&log.join("2")), read(&log.join("3")));
            std::fs::write(log.join("2"), b).unwrap();
            std::fs::write(log.join("3"), a).unwrap();
        },
        &["at entry 2", "moved or reordered"],
    );
    // The checkpoint replaced by hand: pointing forwards, or backwards.
    let entry_digest =
        |log: &PathBuf, seq: u32| kiln_oci::Digest::of(&read(&log.join(seq.to_string())));
    case(
        "hint-forward",
        &|log| {
            std::fs::write(log.join("HEAD"), format!("{{\"seq\":9,\"entry\":\"{one}\"}}")).unwrap()
        },
        &["HEAD is not a signed checkpoint"],
    );
    let stale = case(
        "hint-backward",
        &|log| {
            std::fs::write(log.join("HEAD"), format!("{{\"seq\":1,\"entry\":\"{one}\"}}")).unwrap()
        },
        &["HEAD is not a signed checkpoint"],
    );
    // pin refuses it too, rather than trusting it; so does an append, which would hide it.
    lab.run_at(&stale, &["pin", "dev/vm", "--format", "json"])
        .fails_with(EXIT_INTEGRITY, &["HEAD is not a signed checkpoint"]);
    lab.promote(&stale, &two, "dev", "ci", &[])
        .fails_with(EXIT_INTEGRITY, &["HEAD is not a signed checkpoint"]);
    // The newest entry deleted: with the checkpoint left, rewound by hand, or deleted too.
    case(
        "tail-deleted",
        &|log| std::fs::remove_file(log.join("3")).unwrap(),
        &["at entry 3", "entry 3 is missing: deleted"],
    );
    let rewound = case(
        "tail-deleted-head-rewound",
        &|log| {
            std::fs::remove_file(log.join("3")).unwrap();
            let second = entry_digest(log, 2);
            std::fs::write(log.join("HEAD"), format!("{{\"seq\":2,\"entry\":\"{second}\"}}"))
                .unwrap();
        },
        &["HEAD is not a signed checkpoint"],
    );
    lab.promote(&rewound, &two, "dev", "ci", &[])
        .fails_with(EXIT_INTEGRITY, &["HEAD is not a signed checkpoint"]);
    case(
        "tail-and-head-deleted",
        &|log| {
            std::fs::remove_file(log.join("3")).unwrap();
            std::fs::remove_file(log.join("HEAD")).unwrap();
        },
        &["at entry 2", "HEAD (the signed checkpoint) is missing although 2 entries exist"],
    );
    // The one rewind a store alone cannot show: the tail deleted and a checkpoint kept from
    // back then put back. An auditor who kept the checkpoint of an earlier audit sees it.
    let replayed = lab.path("tampered-replayed");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(lab.folder(&lab.store))
        .arg(&replayed)
        .status()
        .unwrap()
        .success());
    let before = lab.history(&lab.store, "dev/vm").ok().json();
    let kept = format!(
        "{}@{}",
        before["checkpoint"]["seq"].as_u64().unwrap(),
        before["checkpoint"]["entry"].as_str().unwrap()
    );
    assert_eq!(before["checkpoint"]["seq"], 3);
    for f in ["2", "3"] {
        std::fs::remove_file(replayed.join("log/dev/vm").join(f)).unwrap();
    }
    std::fs::write(replayed.join("log/dev/vm/HEAD"), &first_checkpoint).unwrap();
    let replayed = format!("file://{}", replayed.display());
    assert_eq!(chain(&lab.history(&replayed, "dev/vm").ok().json()).len(), 1);
    lab.run_at(&replayed, &["history", "dev/vm", "--policy", &policy, "--seen", &kept]).fails_with(
        EXIT_INTEGRITY,
        &["at entry 3", "but the channel now ends at entry 1: rewound"],
    );
    lab.run_at(
        &replayed,
        &[
            "verify",
            &one,
            "--key",
            &build_pub,
            "--channel",
            "dev/vm",
            "--policy",
            &policy,
            "--seen",
            &kept,
        ],
    )
    .fails_with(EXIT_INTEGRITY, &["rewound"]);
    // An entry re-signed by a key the policy does not list: the tail of the chain is replaced
    // by a promotion under a policy where mallory may promote.
    let forged = lab.path("tampered-forged");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(lab.folder(&lab.store))
        .arg(&forged)
        .status()
        .unwrap()
        .success());
    std::fs::remove_file(forged.join("log/dev/vm/3")).unwrap();
    std::fs::write(forged.join("log/dev/vm/HEAD"), &second_checkpoint).unwrap();
    let forged = format!("file://{}", forged.display());
    // mallory's policy trusts the entries so far, and mallory.
    let text = std::fs::read_to_string(&policy).unwrap().replacen(
        "keys = [\"keys/ci.pub\"]",
        "keys = [\"keys/ci.pub\", \"keys/mallory.pub\"]",
        1,
    );
    let mallory_policy = lab.path("mallory.toml");
    std::fs::write(&mallory_policy, text).unwrap();
    let mallory_policy = mallory_policy.display().to_string();
    let key = lab.key("mallory");
    lab.run_at(
        &forged,
        &["promote", &two, "--to", "dev", "--key", &key, "--policy", &mallory_policy],
    )
    .ok();
    lab.history(&forged, "dev/vm")
        .fails_with(EXIT_INTEGRITY, &["at entry 3", "does not verify with any trusted key"]);
    // A checkpoint that is merely behind (a writer killed before moving it) is not tampering.
    let behind = lab.path("behind");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(lab.folder(&lab.store))
        .arg(&behind)
        .status()
        .unwrap()
        .success());
    std::fs::write(behind.join("log/dev/vm/HEAD"), &first_checkpoint).unwrap();
    let behind = format!("file://{}", behind.display());
    assert_eq!(lab.history(&behind, "dev/vm").ok().json()["hintBehind"], 2);
    // The next append moves it.
    lab.promote(&behind, &two, "dev", "ci", &[]).ok();
    assert_eq!(lab.history(&behind, "dev/vm").ok().json()["hintBehind"], 0);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn gc_keeps_a_release_its_approvals_and_its_image_even_untagged() {
    let lab = Lab::new();
    let build = lab.build_release(&lab.store, "one");
    let release = release_of(&build);
    lab.approve(&lab.store, &release, "prod", "alice");
    // Without its tag, the image is kept by its release alone.
    std::fs::remove_file(lab.folder(&lab.store).join("refs/vm/one")).unwrap();
    let gc = lab.run(&["--json", "gc", "--grace", "0s"]).ok().json();
    assert_eq!(gc["blobsDeleted"], 0, "{gc}");
    lab.run(&["verify", &release, "--key", &lab.public("build"), "--require", "sbom,provenance"])
        .ok();
    lab.run(&["pin", &release, "--format", "json"]).ok();
    lab.run(&["store", "check"]).ok();
    // The release's signature and the approval.
    let referrers = std::fs::read_dir(lab.folder(&lab.store).join("referrers").join(&release[7..]))
        .unwrap()
        .count();
    assert_eq!(referrers, 2);
}

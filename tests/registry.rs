#![allow(clippy::unwrap_used)]
//! Registries: kiln pushes to and pulls from Debian's docker-registry (distribution 2.8, no
//! referrers API) on 127.0.0.1, and skopeo, curl and openssl, which kiln did not write,
//! check what landed there.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use kiln_test_servers::registry::{self, Registry};
use serde_json::Value;
use support::{require_tool, sh, Kiln, Workspace, EXIT_ERROR, EXIT_INTEGRITY};

/// A signed image `app:1` whose one layer holds `content`, built into `ws`'s store `s`.
/// Returns kiln on that store and the image's digest.
fn signed_image(ws: &Workspace, content: &str) -> (Kiln, String) {
    ws.write("app/files/hello.sh", format!("#!/bin/sh\necho {content}\n"));
    let recipe = ws.write(
        "app/app.toml",
        "epoch = 1700000000\n[image]\nname = \"app\"\nversion = \"1\"\n\
         [[layer]]\nname = \"bin\"\nfiles = [{ src = \"files/hello.sh\", dest = \"/bin/hello\", mode = 0o755 }]\n",
    );
    let kiln = kiln_at(ws, &ws.store("s"));
    kiln.run(&["keygen", "--out", ws.path("key").to_str().unwrap()]).ok();
    let report = kiln.build(&recipe, &["--sign", ws.path("key.key").to_str().unwrap()]);
    (kiln, support::digest_of(&report))
}

/// kiln on `store` with a Docker config folder of its own (empty unless a test writes one).
fn kiln_at(ws: &Workspace, store: &Path) -> Kiln {
    let config = ws.mkdir("docker-config");
    Kiln::new(store).env("DOCKER_CONFIG", config.to_str().unwrap())
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn skopeo_creds(reg: &Registry) -> Vec<String> {
    match &reg.credentials {
        Some((user, password)) => vec!["--creds".to_string(), format!("{user}:{password}")],
        None => vec!["--no-creds".to_string()],
    }
}

/// Push, check with skopeo, push again (nothing sent), pull into a new store (the same
/// blobs and referrers, verified), on `reg`.
fn push_pull_round_trip(reg: &Registry, ws: &Workspace, kiln: &Kiln, digest: &str) {
    let repo = format!("{}/{}", reg.host, reg.fresh_repo());
    let insecure = ["--insecure-registry", reg.host.as_str()];
    let dest = format!("{repo}:1");
    let mut args = vec!["--json", "push", "app:1", dest.as_str()];
    args.extend(insecure);
    let first = kiln.run(&args).ok().json();
    assert_eq!(first["digest"], digest);
    assert!(first["blobsUploaded"].as_u64().unwrap() > 0, "{first}");
    // The image, its signature, SBOM and provenance.
    assert_eq!(first["referrers"], 3, "{first}");

    let creds = skopeo_creds(reg);
    let creds: Vec<&str> = creds.iter().map(String::as_str).collect();
    let mut inspect = vec!["inspect", "--raw", "--tls-verify=false"];
    inspect.extend(&creds);
    let docker_ref = format!("docker://{dest}");
    inspect.push(&docker_ref);
    let raw = sh("skopeo", &inspect);
    assert_eq!(kiln_oci::Digest::of(raw.as_bytes()).to_string(), digest);
    let layout = ws.path("skopeo-layout");
    let target = format!("oci:{}:x", layout.display());
    let mut copy = vec!["copy", "--all", "-q", "--src-tls-verify=false"];
    copy.extend(creds.iter().map(|c| if *c == "--creds" { "--src-creds" } else { c }));
    copy.retain(|a| *a != "--no-creds");
    copy.extend([docker_ref.as_str(), target.as_str()]);
    sh("skopeo", &copy);
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest);

    let second = kiln.run(&args).ok().json();
    assert_eq!(second["blobsUploaded"], 0, "{second}");
    assert_eq!(second["bytesUploaded"], 0, "{second}");
    assert_eq!(second["manifestsUploaded"], 0, "{second}");

    let pulled_store = ws.store("pulled");
    let pulled = kiln_at(ws, &pulled_store);
    let config = ws.path("docker-config");
    let pulled = pulled.env("DOCKER_CONFIG", config.to_str().unwrap());
    let source = format!("{repo}@{digest}");
    let mut pull = vec!["--json", "pull", source.as_str(), "--tag", "app:1"];
    pull.extend(insecure);
    let report = pulled.run(&pull).ok().json();
    assert_eq!(report["referrers"], 3, "{report}");
    let original = ws.store("s");
    assert_eq!(tree(&original.join("blobs")), tree(&pulled_store.join("blobs")));
    assert_eq!(tree(&original.join("referrers")), tree(&pulled_store.join("referrers")));
    for blob in tree(&pulled_store.join("blobs")) {
        assert_eq!(
            fs::read(original.join("blobs").join(&blob)).unwrap(),
            fs::read(pulled_store.join("blobs").join(&blob)).unwrap()
        );
    }
    pulled.run(&["store", "check"]).ok();
    let key = ws.path("key.pub");
    pulled.run(&["verify", "app:1", "--key", key.to_str().unwrap()]).ok();
}

#[test]
fn push_is_what_skopeo_reads_a_second_push_sends_nothing_and_pull_brings_it_all_back() {
    if !require_tool("skopeo") {
        return;
    }
    let Some(reg) = registry::open() else { return };
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "open");
    push_pull_round_trip(reg, &ws, &kiln, &digest);
}

#[test]
fn basic_auth_from_the_docker_config_and_a_clear_refusal_without_it() {
    if !require_tool("skopeo") {
        return;
    }
    let Some(reg) = registry::with_auth() else { return };
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "auth");
    let repo = format!("{}/{}", reg.host, reg.fresh_repo());

    // No credentials: a 401 that says what to do, and nothing lands.
    let refused = kiln
        .run(&["push", "app:1", &repo, "--insecure-registry", &reg.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&[&reg.host, "401", "config.json"]);
    assert!(!refused.stderr.contains(registry::PASSWORD));
    let repository =
        reg.storage.join("docker/registry/v2/repositories").join(repo.split_once('/').unwrap().1);
    assert!(!repository.exists(), "a refused push left {}", repository.display());

    // Wrong credentials are refused too, and the password is never printed.
    let (user, password) = reg.credentials.clone().unwrap();
    let auth = |user: &str, password: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    };
    let config = ws.path("docker-config/config.json");
    fs::write(
        &config,
        format!(r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#, reg.host, auth(&user, "wrong")),
    )
    .unwrap();
    kiln.run(&["push", "app:1", &repo, "--insecure-registry", &reg.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["refused", "401"]);

    fs::write(
        &config,
        format!(r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#, reg.host, auth(&user, &password)),
    )
    .unwrap();
    push_pull_round_trip(reg, &ws, &kiln, &digest);
}

#[test]
fn credentials_come_from_the_creds_store_for_a_registry_auths_does_not_name() {
    let Some(reg) = registry::with_auth() else { return };
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "creds-store");
    let bin = ws.mkdir("bin");
    let asked = ws.path("asked");
    // The store every registry's credentials live in (as docker-credential-pass or
    // -secretservice are): it logs each host it is asked for and knows only the test's.
    let (user, password) = reg.credentials.clone().unwrap();
    let helper = ws.write(
        "bin/docker-credential-kilnstore",
        format!(
            "#!/bin/sh
[ \"$1\" = get ] || exit 1
read host
echo \"$host\" >> {asked}
\
             [ \"$host\" = {host} ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$host\"\n",
            asked = asked.display(),
            host = reg.host,
        ),
    );
    sh("chmod", &["+x", helper.to_str().unwrap()]);
    let config = ws.path("docker-config/config.json");
    let other = base64::engine::general_purpose::STANDARD.encode("someone:else");
    fs::write(
        &config,
        format!(
            r#"{{"auths": {{"other.example": {{"auth": "{other}"}}}}, "credsStore": "kilnstore"}}"#
        ),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let kiln = kiln.env("PATH", &path);
    let dest = format!("{}/{}:1", reg.host, reg.fresh_repo());
    let report =
        kiln.run(&["--json", "push", "app:1", &dest, "--insecure-registry", &reg.host]).ok().json();
    assert_eq!(report["digest"], digest);
    let log = fs::read_to_string(&asked).unwrap();
    assert!(log.lines().all(|h| h == reg.host), "{log}");

    // A store that knows no credential for the registry is no credential: the 401 says
    // where credentials are looked for.
    let empty = ws.write(
        "bin/docker-credential-kilnempty",
        "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n",
    );
    sh("chmod", &["+x", empty.to_str().unwrap()]);
    fs::write(&config, r#"{"credsStore": "kilnempty"}"#).unwrap();
    let dest = format!("{}/{}:1", reg.host, reg.fresh_repo());
    let refused = kiln
        .run(&["push", "app:1", &dest, "--insecure-registry", &reg.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&[&reg.host, "401", "credsStore"]);
    assert!(!refused.stderr.contains(registry::PASSWORD), "{refused}");
}

#[test]
fn a_registry_blob_that_is_not_its_digest_is_refused_and_nothing_is_kept() {
    let reg = match Registry::start("corrupt", false, false) {
        Ok(reg) => reg,
        Err(why) if support::in_ci() => panic!("{why}"),
        Err(why) => return eprintln!("SKIP: {why}"),
    };
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "corrupt");
    let repo = format!("{}/{}", reg.host, reg.fresh_repo());
    kiln.run(&["push", "app:1", &repo, "--insecure-registry", &reg.host]).ok();

    // Flip one byte of the layer in the registry's storage: same size, other digest.
    let manifests = sh("sh", &["-c", &format!("ls {}/blobs/sha256", ws.store("s").display())]);
    let layer = manifests
        .lines()
        .find(|hex| {
            let bytes = fs::read(ws.store("s").join("blobs/sha256").join(hex)).unwrap();
            bytes.starts_with(&[0x1f, 0x8b])
        })
        .unwrap()
        .to_string();
    let data = reg.blob_data(&layer);
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, bytes).unwrap();

    let pulled_store = ws.store("pulled");
    let pulled = kiln_at(&ws, &pulled_store);
    let source = format!("{repo}@{digest}");
    pulled
        .run(&["pull", &source, "--tag", "app:1", "--insecure-registry", &reg.host])
        .fails_with(EXIT_INTEGRITY)
        .stderr_has(&[&layer, "nothing of it was kept"]);
    assert!(!pulled_store.join("blobs/sha256").join(&layer).exists());
    assert!(!pulled_store.join("refs").exists(), "a failed pull set a tag");
    pulled.run(&["store", "check"]).ok();
    let leftovers = tree(&pulled_store);
    assert!(leftovers.iter().all(|p| p.starts_with("blobs")), "{leftovers:?}");
}

#[test]
fn pull_refuses_a_tag_and_a_reference_naming_no_registry() {
    let ws = Workspace::new();
    let kiln = kiln_at(&ws, &ws.store("s"));
    kiln.run(&["pull", "127.0.0.1:1/app:1"]).fails_with(EXIT_ERROR).stderr_has(&["by digest"]);
    let unhosted = format!("team/app@sha256:{}", "0".repeat(64));
    kiln.run(&["pull", &unhosted]).fails_with(EXIT_ERROR).stderr_has(&["not a registry host"]);
}

/// The repositories that signatures in cosign's `sha256-<hex>.sig` manifest of `digest` at
/// `repo` vouch for, each signature checked by openssl with `key` (a PEM public key) over
/// its payload, and the payload checked to name `digest`: what cosign verify does.
fn cosign_signed_repositories(reg: &Registry, repo: &str, digest: &str, key: &Path) -> Vec<String> {
    let tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let raw = sh(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &format!("docker://{}/{repo}:{tag}", reg.host)],
    );
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    let ws = Workspace::new();
    let mut out = Vec::new();
    for (i, layer) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(layer["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json");
        let blob = layer["digest"].as_str().unwrap();
        let payload = ws.path(&format!("payload-{i}"));
        sh(
            "curl",
            &[
                "-sSf",
                "-o",
                payload.to_str().unwrap(),
                &format!("http://{}/v2/{repo}/blobs/{blob}", reg.host),
            ],
        );
        let signature =
            layer["annotations"]["dev.cosignproject.cosign/signature"].as_str().unwrap();
        let signature = base64::engine::general_purpose::STANDARD.decode(signature).unwrap();
        let signature_file = ws.write(&format!("signature-{i}"), signature);
        let verified = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-verify", key.to_str().unwrap(), "-signature"])
            .arg(&signature_file)
            .arg(&payload)
            .output()
            .unwrap();
        if !verified.status.success() {
            continue;
        }
        let claims: Value = serde_json::from_slice(&fs::read(&payload).unwrap()).unwrap();
        assert_eq!(claims["critical"]["image"]["docker-manifest-digest"], digest);
        out.push(claims["critical"]["identity"]["docker-reference"].as_str().unwrap().to_string());
    }
    out.sort();
    out
}

#[test]
fn registry_to_registry_copy_keeps_every_referrer_and_signs_for_the_new_repository() {
    if !(require_tool("skopeo") && require_tool("openssl") && require_tool("curl")) {
        return;
    }
    let Some(first) = registry::open() else { return };
    let second = match Registry::start("second", false, false) {
        Ok(reg) => reg,
        Err(why) if support::in_ci() => panic!("{why}"),
        Err(why) => return eprintln!("SKIP: {why}"),
    };
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "relay");
    let from_repo = first.fresh_repo();
    let to_repo = second.fresh_repo();
    let key = ws.path("key.pub");
    kiln.run(&["push", "app:1", &format!("{}/{from_repo}", first.host)])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["https://", &first.host]);
    kiln.run(&[
        "push",
        "app:1",
        &format!("{}/{from_repo}", first.host),
        "--insecure-registry",
        &first.host,
    ])
    .ok();
    // The build's signature names the image by its name only.
    assert_eq!(cosign_signed_repositories(first, &from_repo, &digest, &key), ["app"]);

    let report = kiln
        .run(&[
            "--json",
            "copy",
            &digest,
            "--from",
            &format!("docker://{}/{from_repo}", first.host),
            "--to",
            &format!("docker://{}/{to_repo}:1", second.host),
            "--sign",
            ws.path("key.key").to_str().unwrap(),
            "--insecure-registry",
            &first.host,
            "--insecure-registry",
            &second.host,
        ])
        .ok()
        .json();
    assert_eq!(report["pulled"]["referrers"], 3, "{report}");
    // The three it had, plus the new repository's signatures of the index and its manifest.
    assert_eq!(report["pushed"]["referrers"], 5, "{report}");
    let new_name = format!("{}/{to_repo}", second.host);
    assert_eq!(
        cosign_signed_repositories(&second, &to_repo, &digest, &key),
        [new_name.clone(), "app".to_string()]
    );

    let pulled = kiln_at(&ws, &ws.store("from-second"));
    let report = pulled
        .run(&[
            "--json",
            "pull",
            &format!("{new_name}@{digest}"),
            "--tag",
            "app:1",
            "--insecure-registry",
            &second.host,
        ])
        .ok()
        .json();
    assert_eq!(report["referrers"], 5, "{report}");
    // verify says which repository each signature vouches for.
    let verified = pulled
        .run(&["verify", "app:1", "--key", key.to_str().unwrap(), "--require", "sbom,provenance"])
        .ok();
    assert!(
        verified.stdout.contains(&format!("for repository {new_name:?}")),
        "{}",
        verified.stdout
    );
    assert!(verified.stdout.contains("for repository \"app\""), "{}", verified.stdout);
    pulled.run(&["store", "check"]).ok();

    // Without --json, a copy says what it did in words, as push and pull do: here, again,
    // with nothing left to send.
    let again = kiln
        .run(&[
            "copy",
            &digest,
            "--from",
            &format!("docker://{}/{from_repo}", first.host),
            "--to",
            &format!("docker://{new_name}:1"),
            "--insecure-registry",
            &first.host,
            "--insecure-registry",
            &second.host,
        ])
        .ok();
    let said = format!("copied {digest}: pulled {}/{from_repo}@{digest}: ", first.host);
    assert!(again.stdout.starts_with(&said), "{}", again.stdout);
    assert!(
        again.stdout.contains(&format!("pushed {digest} to {new_name}:1: 0 of ")),
        "{}",
        again.stdout
    );
    assert!(!again.stdout.contains('{'), "{}", again.stdout);
}

/// A registry as `--insecure-registry` never names it: HTTPS, with a certificate from a CA
/// only `--registry-ca` makes kiln trust; and credentials from a credential helper.
#[test]
fn https_with_registry_ca_and_credentials_from_a_helper() {
    if !(require_tool("openssl") && require_tool("curl")) {
        return;
    }
    let reg = match Registry::start("tls", true, true) {
        Ok(reg) => reg,
        Err(why) if support::in_ci() => panic!("{why}"),
        Err(why) => return eprintln!("SKIP: {why}"),
    };
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "tls");
    let bin = ws.mkdir("bin");
    // A credential helper as docker-credential-pass or -secretservice are: given the host on
    // stdin, it prints the credential as JSON.
    let (user, password) = reg.credentials.clone().unwrap();
    let helper = ws.write(
        "bin/docker-credential-kilntest",
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread host\n[ \"$host\" = {} ] || \
             {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$host\"\n",
            reg.host
        ),
    );
    sh("chmod", &["+x", helper.to_str().unwrap()]);
    ws.write(
        "docker-config/config.json",
        format!(r#"{{"credHelpers": {{"{}": "kilntest"}}}}"#, reg.host),
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let kiln = kiln.env("PATH", &path);
    let dest = format!("{}/{}:1", reg.host, reg.fresh_repo());

    kiln.run(&["push", "app:1", &dest])
        .fails_with(EXIT_ERROR)
        .stderr_has(&[&reg.host, "invalid peer certificate: UnknownIssuer"]);
    let ca = reg.ca.clone().unwrap();
    let report = kiln
        .run(&["--json", "push", "app:1", &dest, "--registry-ca", ca.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(report["digest"], digest);
    let raw = sh(
        "curl",
        &[
            "-sSf",
            "--cacert",
            ca.to_str().unwrap(),
            "-u",
            &format!("{user}:{password}"),
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json",
            &format!(
                "https://{}/v2/{}/manifests/1",
                reg.host,
                dest.split_once('/').unwrap().1.trim_end_matches(":1")
            ),
        ],
    );
    assert_eq!(kiln_oci::Digest::of(raw.as_bytes()).to_string(), digest);
}

mod fake_registry;

use fake_registry::{Answer, Fake};

/// A blob's digest and bytes.
type Blob = (String, Vec<u8>);

/// An image the fake serves: manifest bytes, its digest, and the config and layer blobs.
fn fake_image() -> (Vec<u8>, String, Vec<Blob>) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = support::noise(200_000, 17);
    let digest = |b: &[u8]| kiln_oci::Digest::of(b).to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(&layer), "size": layer.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = digest(&manifest);
    (manifest, manifest_digest, vec![(digest(&config), config), (digest(&layer), layer)])
}

/// A fake serving `fake_image()` as repository `r`; `layer(request, n, bytes)` answers the
/// layer's n-th GET.
fn image_server(
    layer: impl Fn(&fake_registry::Request, usize, &[u8]) -> Answer + Send + Sync + 'static,
) -> (Fake, String) {
    let (manifest, digest, blobs) = fake_image();
    let layer_digest = blobs[1].0.clone();
    let root = digest.clone();
    let fake = Fake::start(move |request, n| {
        let target = request.target.as_str();
        if request.method != "GET" && request.method != "HEAD" {
            return Answer::status(405);
        }
        if target == "/v2/" {
            return Answer::status(200);
        }
        if target == format!("/v2/r/manifests/{root}") {
            return Answer::body(200, manifest.clone())
                .with("Content-Type", "application/vnd.oci.image.manifest.v1+json");
        }
        if target == format!("/v2/r/blobs/{layer_digest}") {
            return layer(request, n, &blobs[1].1);
        }
        match blobs.iter().find(|(d, _)| target == format!("/v2/r/blobs/{d}")) {
            Some((_, bytes)) => Answer::body(200, bytes.clone()),
            None => Answer::status(404),
        }
    });
    (fake, digest)
}

#[test]
fn a_connection_cut_mid_blob_resumes_where_it_stopped_and_one_always_cut_fails_keeping_nothing() {
    let ws = Workspace::new();
    let (fake, digest) = image_server(|request, n, bytes| {
        let answer = Answer::range(request, bytes);
        if n == 0 {
            answer.cut()
        } else {
            answer
        }
    });
    let store = ws.store("once");
    let kiln = kiln_at(&ws, &store);
    let source = format!("{}/r@{digest}", fake.host);
    kiln.run(&["pull", &source, "--tag", "app:1", "--insecure-registry", &fake.host]).ok();
    let layer = &fake_image().2[1];
    let layer_path = format!("/v2/r/blobs/{}", layer.0);
    let gets: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.target == layer_path)
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    // The second asks for the rest only: the first half is not fetched again.
    assert_eq!(gets[1].header("range"), Some(format!("bytes={}-", layer.1.len() / 2).as_str()));
    let stored = store.join("blobs/sha256").join(layer.0.trim_start_matches("sha256:"));
    assert_eq!(fs::read(stored).unwrap(), layer.1);
    kiln.run(&["store", "check"]).ok();

    let (fake, digest) = image_server(|request, _, bytes| Answer::range(request, bytes).cut());
    let store = ws.store("always");
    let kiln = kiln_at(&ws, &store);
    let source = format!("{}/r@{digest}", fake.host);
    kiln.run(&["pull", &source, "--tag", "app:1", "--insecure-registry", &fake.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&[&layer_path]);
    assert_eq!(fake.count("GET", &layer_path), 3);
    assert!(!store.join("blobs/sha256").join(layer.0.trim_start_matches("sha256:")).exists());
    assert!(!store.join("refs").exists());
    kiln.run(&["store", "check"]).ok();
}

#[test]
fn a_registry_that_stops_sending_fails_the_pull_after_the_stall_timeout_keeping_nothing() {
    let ws = Workspace::new();
    // Silent before the manifest's answer: one request, not made again.
    let (manifest, digest, _) = fake_image();
    let fake = Fake::start(move |request, _| match request.target.as_str() {
        "/v2/" => Answer::status(200),
        _ if request.target.contains("/manifests/") => Answer::silent(),
        _ => Answer::body(200, manifest.clone()),
    });
    let store = ws.store("silent");
    let kiln = kiln_at(&ws, &store).env("KILN_REGISTRY_TIMEOUT", "1");
    let source = format!("{}/r@{digest}", fake.host);
    kiln.run(&["pull", &source, "--tag", "app:1", "--insecure-registry", &fake.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["/v2/r/manifests/", "sent nothing for too long", "KILN_REGISTRY_TIMEOUT"]);
    assert_eq!(fake.count("GET", "/v2/r/manifests/"), 1);
    assert!(support::blobs(&store).is_empty());
    kiln.run(&["store", "check"]).ok();

    // Silent halfway through the layer: the pull fails without resuming, storing no blob of
    // it and no tag.
    let (fake, digest) = image_server(|request, _, bytes| Answer::range(request, bytes).stalled());
    let store = ws.store("stalled");
    let kiln = kiln_at(&ws, &store);
    let source = format!("{}/r@{digest}", fake.host);
    let layer = &fake_image().2[1];
    let layer_path = format!("/v2/r/blobs/{}", layer.0);
    kiln.run(&[
        "pull",
        &source,
        "--tag",
        "app:1",
        "--insecure-registry",
        &fake.host,
        "--registry-timeout",
        "1",
    ])
    .fails_with(EXIT_ERROR)
    .stderr_has(&[&layer_path, "sent nothing for too long"]);
    assert_eq!(fake.count("GET", &layer_path), 1);
    assert!(!store.join("blobs/sha256").join(layer.0.trim_start_matches("sha256:")).exists());
    assert!(!store.join("refs").exists());
    kiln.run(&["store", "check"]).ok();

    kiln.run(&["pull", &source, "--insecure-registry", &fake.host, "--registry-timeout", "0"])
        .fails_with(2)
        .stderr_has(&["--registry-timeout"]);
}

#[test]
fn a_manifest_over_4_mib_is_refused_before_it_is_read() {
    let ws = Workspace::new();
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let digest = kiln_oci::Digest::of(&big).to_string();
    let fake = Fake::start(move |request, _| match request.target.as_str() {
        "/v2/" => Answer::status(200),
        _ => Answer::body(200, big.clone()),
    });
    let kiln = kiln_at(&ws, &ws.store("s"));
    let source = format!("{}/r@{digest}", fake.host);
    kiln.run(&["pull", &source, "--insecure-registry", &fake.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["larger than 4194304 bytes"]);
    assert!(support::blobs(&ws.store("s")).is_empty());
    kiln.run(&["store", "check"]).ok();
}

#[test]
fn a_500_on_upload_is_retried_then_reported() {
    let ws = Workspace::new();
    ws.write("app/files/hello.sh", "#!/bin/sh\necho 500\n");
    let recipe = ws.write(
        "app/app.toml",
        "epoch = 1700000000\n[image]\nname = \"app\"\nversion = \"1\"\n\
         [[layer]]\nname = \"bin\"\nfiles = [{ src = \"files/hello.sh\", dest = \"/bin/hello\" }]\n",
    );
    let kiln = kiln_at(&ws, &ws.store("s"));
    kiln.build(&recipe, &[]);
    let fake = Fake::start(|request, _| match (request.method.as_str(), request.target.as_str()) {
        (_, "/v2/") => Answer::status(200),
        ("POST", "/v2/r/blobs/uploads/") => {
            Answer::status(202).with("Location", "/v2/r/blobs/uploads/session")
        }
        ("PUT", t) if t.starts_with("/v2/r/blobs/uploads/session") => {
            Answer::body(500, "storage down")
        }
        _ => Answer::status(404),
    });
    let dest = format!("{}/r:1", fake.host);
    kiln.run(&["push", "app:1", &dest, "--insecure-registry", &fake.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&["answered 500", "storage down"]);
    assert_eq!(fake.most_repeats("PUT"), 3, "{:?}", fake.requests());
    assert_eq!(fake.count("PUT", "/v2/r/manifests/"), 0, "a manifest went up before its blobs");
}

/// An upload session's `Location` may name another server (a registry fronting object
/// storage sends one, and so can a hostile registry): the blob goes there, the credential
/// never does.
#[test]
fn credentials_go_to_the_registry_only_never_to_an_upload_location_elsewhere() {
    let ws = Workspace::new();
    ws.write("app/files/hello.sh", "#!/bin/sh\necho elsewhere\n");
    let recipe = ws.write(
        "app/app.toml",
        "epoch = 1700000000\n[image]\nname = \"app\"\nversion = \"1\"\n\
         [[layer]]\nname = \"bin\"\nfiles = [{ src = \"files/hello.sh\", dest = \"/bin/hello\" }]\n",
    );
    let kiln = kiln_at(&ws, &ws.store("s"));
    kiln.build(&recipe, &[]);
    let elsewhere = Fake::start(|request, _| match request.method.as_str() {
        "PUT" => Answer::status(201),
        _ => Answer::status(401).with("WWW-Authenticate", r#"Basic realm="elsewhere""#),
    });
    let upload = format!("http://{}/upload", elsewhere.host);
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("user:secret"));
    let registry = Fake::start(move |request, _| {
        if request.header("authorization") != Some(expected.as_str()) {
            return Answer::status(401).with("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        match (request.method.as_str(), request.target.as_str()) {
            (_, "/v2/") => Answer::status(200),
            ("POST", "/v2/r/blobs/uploads/") => Answer::status(202).with("Location", &upload),
            ("PUT", t) if t.starts_with("/v2/r/manifests/") => Answer::status(201),
            _ => Answer::status(404),
        }
    });
    let auth = base64::engine::general_purpose::STANDARD.encode("user:secret");
    ws.write(
        "docker-config/config.json",
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.host),
    );
    let dest = format!("{}/r:1", registry.host);
    let report = kiln
        .run(&["--json", "push", "app:1", &dest, "--insecure-registry", &registry.host])
        .ok()
        .json();
    let uploaded = report["blobsUploaded"].as_u64().unwrap() as usize;
    assert!(uploaded > 0, "{report}");
    assert_eq!(elsewhere.count("PUT", "/upload"), uploaded, "{:?}", elsewhere.requests());
    let leaked: Vec<_> =
        elsewhere.requests().into_iter().filter(|r| r.header("authorization").is_some()).collect();
    assert!(leaked.is_empty(), "the credential went elsewhere: {leaked:?}");
}

#[test]
fn bearer_tokens_come_from_the_realm_with_the_docker_config_credentials() {
    let ws = Workspace::new();
    let (inner, digest) = image_server(|_, _, bytes| Answer::body(200, bytes.to_vec()));
    let inner = Arc::new(inner);
    let realm_host = Arc::new(Mutex::new(String::new()));
    let (proxy_inner, realm) = (inner.clone(), realm_host.clone());
    // A gate in front of the image server: a bearer token for every /v2/ request, handed
    // out by /token to basic auth as user:secret.
    let gate = Fake::start(move |request, _| {
        let realm = realm.lock().unwrap().clone();
        if request.target.starts_with("/token") {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("user:secret")
            );
            if request.header("authorization") != Some(expected.as_str()) {
                return Answer::status(401);
            }
            assert!(request.target.contains("scope=repository%3Ar%3Apull"), "{}", request.target);
            return Answer::body(200, r#"{"token": "t0k3n"}"#);
        }
        if request.header("authorization") != Some("Bearer t0k3n") {
            let challenge = format!(
                r#"Bearer realm="http://{realm}/token",service="fake",scope="repository:r:pull""#
            );
            return Answer::status(401).with("WWW-Authenticate", &challenge);
        }
        proxy(&proxy_inner, request)
    });
    *realm_host.lock().unwrap() = gate.host.clone();

    let kiln = kiln_at(&ws, &ws.store("anonymous"));
    let source = format!("{}/r@{digest}", gate.host);
    kiln.run(&["pull", &source, "--insecure-registry", &gate.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&[&gate.host, "requires credentials and kiln has none"]);

    let auth = base64::engine::general_purpose::STANDARD.encode("user:secret");
    ws.write(
        "docker-config/config.json",
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, gate.host),
    );
    let kiln = kiln_at(&ws, &ws.store("authorised"));
    kiln.run(&["pull", &source, "--tag", "app:1", "--insecure-registry", &gate.host]).ok();
    // The anonymous run's refused request, then one token reused for every later request.
    assert_eq!(gate.count("GET", "/token"), 2, "{:?}", gate.requests());
    kiln.run(&["store", "check"]).ok();
}

#[test]
fn an_identity_token_is_exchanged_at_the_realm_for_an_access_token() {
    let ws = Workspace::new();
    let (inner, digest) = image_server(|_, _, bytes| Answer::body(200, bytes.to_vec()));
    let inner = Arc::new(inner);
    let realm_host = Arc::new(Mutex::new(String::new()));
    let (proxy_inner, realm) = (inner.clone(), realm_host.clone());
    // A gate as token registries are: the realm takes the refresh token `docker login` kept
    // (OAuth2, grant_type=refresh_token) and answers an access token.
    let gate = Fake::start(move |request, _| {
        let realm = realm.lock().unwrap().clone();
        if request.target.starts_with("/token") {
            let form = String::from_utf8_lossy(&request.body).into_owned();
            let fields: Vec<&str> = form.split('&').collect();
            let good = request.method == "POST"
                && request.header("authorization").is_none()
                && fields.contains(&"grant_type=refresh_token")
                && fields.contains(&"refresh_token=r3fr3sh")
                && fields.contains(&"service=fake")
                && fields.contains(&"scope=repository%3Ar%3Apull");
            if !good {
                return Answer::status(401);
            }
            return Answer::body(200, r#"{"access_token": "4cc3ss"}"#);
        }
        if request.header("authorization") != Some("Bearer 4cc3ss") {
            let challenge = format!(
                r#"Bearer realm="http://{realm}/token",service="fake",scope="repository:r:pull""#
            );
            return Answer::status(401).with("WWW-Authenticate", &challenge);
        }
        proxy(&proxy_inner, request)
    });
    *realm_host.lock().unwrap() = gate.host.clone();
    let source = format!("{}/r@{digest}", gate.host);
    let config = |token: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode("user:unused");
        ws.write(
            "docker-config/config.json",
            format!(
                r#"{{"auths": {{"{}": {{"auth": "{auth}", "identitytoken": "{token}"}}}}}}"#,
                gate.host
            ),
        );
    };

    config("expired");
    let kiln = kiln_at(&ws, &ws.store("refused"));
    let refused = kiln
        .run(&["pull", &source, "--insecure-registry", &gate.host])
        .fails_with(EXIT_ERROR)
        .stderr_has(&[&gate.host, "refused"]);
    assert!(!refused.stderr.contains("expired"), "{refused}");
    assert!(support::blobs(&ws.store("refused")).is_empty());

    config("r3fr3sh");
    let kiln = kiln_at(&ws, &ws.store("authorised"));
    kiln.run(&["pull", &source, "--tag", "app:1", "--insecure-registry", &gate.host]).ok();
    assert_eq!(gate.count("POST", "/token"), 2, "{:?}", gate.requests());
    assert_eq!(gate.count("GET", "/token"), 0, "{:?}", gate.requests());
    kiln.run(&["store", "check"]).ok();
}

#[test]
fn a_large_upload_resumes_from_what_the_registry_holds_after_a_dropped_connection() {
    let ws = Workspace::new();
    ws.write("big/files/noise.bin", support::noise(20 * 1024 * 1024, 5));
    let recipe = ws.write(
        "big/big.toml",
        "epoch = 1700000000\n[image]\nname = \"big\"\nversion = \"1\"\n\
         [[layer]]\nname = \"noise\"\nfiles = [{ src = \"files/noise.bin\", dest = \"/noise.bin\" }]\n",
    );
    let kiln = kiln_at(&ws, &ws.store("s"));
    kiln.build(&recipe, &[]);
    // Every upload session's bytes, by session; the big layer's first PATCH keeps only half
    // of what it carried and drops the connection without an answer.
    let sessions: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let patches = Arc::new(Mutex::new(0usize));
    let state = (sessions.clone(), patches.clone());
    let fake = Fake::start(move |request, _| {
        let (sessions, patches) = (&state.0, &state.1);
        let target = request.target.as_str();
        let session = |t: &str| -> Option<usize> {
            t.strip_prefix("/v2/r/blobs/uploads/s")?.split('?').next()?.parse().ok()
        };
        match (request.method.as_str(), target) {
            (_, "/v2/") => Answer::status(200),
            ("POST", "/v2/r/blobs/uploads/") => {
                let mut sessions = sessions.lock().unwrap();
                sessions.push(Vec::new());
                Answer::status(202)
                    .with("Location", &format!("/v2/r/blobs/uploads/s{}", sessions.len() - 1))
            }
            ("PATCH", t) => {
                let id = session(t).unwrap();
                let mut sessions = sessions.lock().unwrap();
                let start: usize = request
                    .header("content-range")
                    .unwrap()
                    .split('-')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                if start != sessions[id].len() {
                    return Answer::status(416);
                }
                let mut patches = patches.lock().unwrap();
                *patches += 1;
                if *patches == 1 {
                    let half = request.body.len() / 2;
                    sessions[id].extend_from_slice(&request.body[..half]);
                    return Answer::Drop;
                }
                sessions[id].extend_from_slice(&request.body);
                let held = sessions[id].len();
                Answer::status(202)
                    .with("Location", &format!("/v2/r/blobs/uploads/s{id}"))
                    .with("Range", &format!("0-{}", held - 1))
            }
            ("GET", t) if session(t).is_some() => {
                let held = sessions.lock().unwrap()[session(t).unwrap()].len();
                Answer::status(204)
                    .with("Location", t)
                    .with("Range", &format!("0-{}", held.saturating_sub(1)))
            }
            ("PUT", t) if session(t).is_some() => {
                let held = &sessions.lock().unwrap()[session(t).unwrap()];
                let mut whole = held.clone();
                whole.extend_from_slice(&request.body);
                let digest = kiln_oci::Digest::of(&whole).to_string();
                if t.contains(&format!("digest={}", digest.replace(':', "%3A"))) {
                    Answer::status(201)
                } else {
                    Answer::body(400, format!("digest invalid: got {digest}"))
                }
            }
            ("PUT", t) if t.starts_with("/v2/r/manifests/") => Answer::status(201),
            _ => Answer::status(404),
        }
    });
    let dest = format!("{}/r:1", fake.host);
    let report = kiln
        .run(&["--json", "push", "big:1", &dest, "--insecure-registry", &fake.host])
        .ok()
        .json();
    assert!(report["bytesUploaded"].as_u64().unwrap() > 20 * 1024 * 1024, "{report}");
    // One PATCH dropped halfway, one status query, and the rest in a second PATCH starting
    // where the status said the upload stood.
    let patches: Vec<_> = fake.requests().into_iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 2, "{:?}", patches.iter().map(|p| &p.headers).collect::<Vec<_>>());
    let half = patches[0].body.len() / 2;
    let range = patches[1].header("content-range").unwrap();
    assert!(range.starts_with(&format!("{half}-")), "{range}");
    assert_eq!(patches[1].body.len(), patches[0].body.len() - half);
    let statuses = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.target.contains("/uploads/"))
        .count();
    assert_eq!(statuses, 1);
}

/// Forwards a GET or HEAD to `to` with curl and relays its answer.
fn proxy(to: &Fake, request: &fake_registry::Request) -> Answer {
    let url = format!("http://{}{}", to.host, request.target);
    let mut args = vec!["-s", "-o", "-", "-w", "\n%{http_code}"];
    if request.method == "HEAD" {
        args.push("-I");
    }
    args.push(&url);
    let out = std::process::Command::new("curl").args(&args).output().unwrap();
    let mut body = out.stdout;
    let split = body.iter().rposition(|b| *b == b'\n').unwrap();
    let status: u16 = String::from_utf8_lossy(&body[split + 1..]).parse().unwrap();
    body.truncate(split);
    if request.method == "HEAD" {
        return Answer::status(status);
    }
    Answer::body(status, body)
}

#[test]
fn pull_uses_the_referrers_api_where_the_registry_has_one() {
    let ws = Workspace::new();
    let (manifest, root, mut blobs) = fake_image();
    let note = b"a note about the image".to_vec();
    let empty = b"{}".to_vec();
    let digest = |b: &[u8]| kiln_oci::Digest::of(b).to_string();
    let artifact = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.note",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(&empty), "size": 2},
        "layers": [{"mediaType": "text/plain", "digest": digest(&note), "size": note.len()}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": root, "size": manifest.len()},
        "annotations": {"org.example.kind": "note"},
    }))
    .unwrap();
    let artifact_digest = digest(&artifact);
    let listing = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": artifact_digest, "size": artifact.len(),
                       "artifactType": "application/vnd.example.note",
                       "annotations": {"org.example.kind": "note"}}],
    }))
    .unwrap();
    blobs.push((digest(&note), note));
    blobs.push((digest(&empty), empty));
    let manifests = [(root.clone(), manifest), (artifact_digest.clone(), artifact)];
    let subject = root.clone();
    let fake = Fake::start(move |request, _| {
        let target = request.target.as_str();
        if target == "/v2/" {
            return Answer::status(200);
        }
        if target == format!("/v2/r/referrers/{subject}") {
            return Answer::body(200, listing.clone());
        }
        if target.starts_with("/v2/r/referrers/") {
            return Answer::body(200, r#"{"schemaVersion":2,"manifests":[]}"#);
        }
        for (d, bytes) in &manifests {
            if target == format!("/v2/r/manifests/{d}") {
                return Answer::body(200, bytes.clone());
            }
        }
        match blobs.iter().find(|(d, _)| target == format!("/v2/r/blobs/{d}")) {
            Some((_, bytes)) => Answer::body(200, bytes.clone()),
            None => Answer::status(404),
        }
    });
    let store = ws.store("s");
    let kiln = kiln_at(&ws, &store);
    let source = format!("{}/r@{root}", fake.host);
    let report =
        kiln.run(&["--json", "pull", &source, "--insecure-registry", &fake.host]).ok().json();
    assert_eq!(report["referrers"], 1, "{report}");
    assert_eq!(fake.count("GET", "/v2/r/manifests/sha256-"), 0, "the fallback tag was read");
    let entry = store
        .join("referrers")
        .join(root.trim_start_matches("sha256:"))
        .join(artifact_digest.trim_start_matches("sha256:"));
    let entry: Value = serde_json::from_slice(&fs::read(entry).unwrap()).unwrap();
    assert_eq!(entry["artifactType"], "application/vnd.example.note");
    assert_eq!(entry["annotations"]["org.example.kind"], "note");
    kiln.run(&["store", "check"]).ok();
}

/// A registry in memory with the OCI 1.1 referrers API (unless `without_api`), for one
/// repository `r`: blobs, manifests by digest and tag, and `/referrers/` listing the stored
/// manifests whose subject is the digest asked for.
#[derive(Default)]
struct MemoryRegistry {
    blobs: std::collections::HashMap<String, Vec<u8>>,
    /// Digest or tag → (media type, bytes).
    manifests: std::collections::HashMap<String, (String, Vec<u8>)>,
    uploads: usize,
    /// Answer 404 to `/referrers/`, as distribution 2.8 does.
    without_api: bool,
    /// Another writer's fallback index, which replaces the tag it names (`sha256-<hex>`) the
    /// first time a client checks that tag with HEAD: it won the race to write it.
    rival: Option<(String, Vec<u8>)>,
}

impl MemoryRegistry {
    fn answer(&mut self, request: &fake_registry::Request) -> Answer {
        let target = request.target.split('?').next().unwrap_or_default();
        let method = request.method.as_str();
        let digest_of = |b: &[u8]| kiln_oci::Digest::of(b).to_string();
        if target == "/v2/" {
            return Answer::status(200);
        }
        if self.without_api && target.starts_with("/v2/r/referrers/") {
            return Answer::status(404);
        }
        if method == "HEAD"
            && self.rival.as_ref().is_some_and(|(tag, _)| target.ends_with(tag.as_str()))
        {
            let (tag, bytes) = self.rival.take().unwrap();
            let media_type = "application/vnd.oci.image.index.v1+json".to_string();
            self.manifests.insert(digest_of(&bytes), (media_type.clone(), bytes.clone()));
            self.manifests.insert(tag, (media_type, bytes));
        }
        if let Some(subject) = target.strip_prefix("/v2/r/referrers/") {
            let mut listed: Vec<Value> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (media_type, bytes) in self.manifests.values() {
                let m: Value = serde_json::from_slice(bytes).unwrap();
                if m["subject"]["digest"] == subject && seen.insert(digest_of(bytes)) {
                    let mut entry = serde_json::json!({
                        "mediaType": media_type,
                        "digest": digest_of(bytes),
                        "size": bytes.len(),
                        "artifactType": m["artifactType"],
                    });
                    if m["annotations"].is_object() {
                        entry["annotations"] = m["annotations"].clone();
                    }
                    listed.push(entry);
                }
            }
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": listed,
            });
            return Answer::body(200, serde_json::to_vec(&index).unwrap())
                .with("Content-Type", "application/vnd.oci.image.index.v1+json");
        }
        if method == "POST" && target == "/v2/r/blobs/uploads/" {
            self.uploads += 1;
            let location = format!("/v2/r/blobs/uploads/s{}", self.uploads);
            return Answer::status(202).with("Location", &location);
        }
        if method == "PUT" && target.starts_with("/v2/r/blobs/uploads/") {
            let digest = request.target.split("digest=").nth(1).unwrap().replace("%3A", ":");
            assert_eq!(digest_of(&request.body), digest);
            self.blobs.insert(digest, request.body.clone());
            return Answer::status(201);
        }
        if let Some(digest) = target.strip_prefix("/v2/r/blobs/") {
            return match self.blobs.get(digest) {
                Some(_) if method == "HEAD" => {
                    Answer::status(200).with("Docker-Content-Digest", digest)
                }
                Some(bytes) => Answer::range(request, bytes),
                None => Answer::status(404),
            };
        }
        if let Some(reference) = target.strip_prefix("/v2/r/manifests/") {
            if method == "PUT" {
                let media_type = request.header("content-type").unwrap().to_string();
                let digest = digest_of(&request.body);
                self.manifests.insert(digest.clone(), (media_type.clone(), request.body.clone()));
                self.manifests.insert(reference.to_string(), (media_type, request.body.clone()));
                return Answer::status(201).with("Docker-Content-Digest", &digest);
            }
            return match self.manifests.get(reference) {
                Some((media_type, bytes)) => {
                    let answer = if method == "HEAD" {
                        Answer::status(200)
                    } else {
                        Answer::body(200, bytes.clone())
                    };
                    answer
                        .with("Content-Type", media_type)
                        .with("Docker-Content-Digest", &digest_of(bytes))
                }
                None => Answer::status(404),
            };
        }
        Answer::status(404)
    }
}

/// Two writers adding to one fallback index: the tag another writer replaced between kiln's
/// read and its write is read again, and its entries (artifact type and annotations as they
/// were) stay beside kiln's.
#[test]
fn a_fallback_index_replaced_meanwhile_is_read_again_and_keeps_the_other_writers_entries() {
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "rival");
    let tag = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    let theirs = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "ab".repeat(32)),
        "size": 321,
        "artifactType": "application/vnd.example.scan",
        "annotations": {"org.example.tool": "scanner", "org.example.verdict": "clean"},
    });
    let rival = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [theirs.clone()],
    });
    let registry = Arc::new(Mutex::new(MemoryRegistry {
        without_api: true,
        rival: Some((tag.clone(), serde_json::to_vec(&rival).unwrap())),
        ..MemoryRegistry::default()
    }));
    let state = registry.clone();
    let fake = Fake::start(move |request, _| state.lock().unwrap().answer(request));
    let dest = format!("{}/r:1", fake.host);
    let report = kiln
        .run(&["--json", "push", "app:1", &dest, "--insecure-registry", &fake.host])
        .ok()
        .json();
    assert_eq!(report["referrers"], 3, "{report}");
    // Read, found replaced, read again, written once.
    let fallback = format!("/v2/r/manifests/{tag}");
    let asked: Vec<String> =
        fake.requests().into_iter().filter(|r| r.target == fallback).map(|r| r.method).collect();
    assert_eq!(asked, ["GET", "HEAD", "GET", "HEAD", "PUT", "GET"]);

    let held = registry.lock().unwrap();
    let index: Value = serde_json::from_slice(&held.manifests[&tag].1).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    // Theirs, then kiln's signature and provenance of the index (the SBOM's subject is the
    // platform manifest, which has a fallback index of its own).
    assert_eq!(entries.len(), 3, "{index}");
    assert_eq!(entries[0], theirs, "the other writer's entry changed: {index}");
    let ours: Vec<&Value> = entries[1..].iter().collect();
    assert!(ours.iter().all(|e| e["artifactType"].is_string()), "{index}");
}

#[test]
fn push_leaves_the_referrers_to_a_registry_with_the_referrers_api() {
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "referrers-api");
    let registry = Arc::new(Mutex::new(MemoryRegistry::default()));
    let state = registry.clone();
    let fake = Fake::start(move |request, _| state.lock().unwrap().answer(request));
    let dest = format!("{}/r:1", fake.host);
    let report = kiln
        .run(&["--json", "push", "app:1", &dest, "--insecure-registry", &fake.host])
        .ok()
        .json();
    assert_eq!(report["digest"], digest);
    assert_eq!(report["referrers"], 3, "{report}");
    // No fallback index: the registry indexed each artifact by its subject as it arrived.
    // cosign's signature tag is still written, for the tools that read only it.
    assert_eq!(fake.count("PUT", "/v2/r/manifests/sha256-"), 1, "{:?}", fake.requests());
    let held = registry.lock().unwrap();
    let tags: Vec<&String> = held.manifests.keys().filter(|k| k.starts_with("sha256-")).collect();
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert!(tags[0].ends_with(".sig"), "{tags:?}");
    drop(held);

    // A pull finds every referrer through the API, and verifies.
    let pulled = ws.store("pulled");
    let kiln = kiln_at(&ws, &pulled);
    let source = format!("{}/r@{digest}", fake.host);
    let report = kiln
        .run(&["--json", "pull", &source, "--tag", "app:1", "--insecure-registry", &fake.host])
        .ok()
        .json();
    assert_eq!(report["referrers"], 3, "{report}");
    kiln.run(&["store", "check"]).ok();
    let key = ws.path("key.pub");
    kiln.run(&["verify", "app:1", "--key", key.to_str().unwrap()]).ok();
}

#[test]
fn a_copy_within_one_registry_mounts_the_blobs_instead_of_sending_them() {
    if !require_tool("skopeo") {
        return;
    }
    let Some(reg) = registry::open() else { return };
    let ws = Workspace::new();
    let (kiln, digest) = signed_image(&ws, "mount");
    let (from, to) = (reg.fresh_repo(), reg.fresh_repo());
    kiln.run(&["push", "app:1", &format!("{}/{from}", reg.host), "--insecure-registry", &reg.host])
        .ok();
    let report = kiln
        .run(&[
            "--json",
            "copy",
            &digest,
            "--from",
            &format!("docker://{}/{from}", reg.host),
            "--to",
            &format!("docker://{}/{to}:1", reg.host),
            "--insecure-registry",
            &reg.host,
        ])
        .ok()
        .json();
    let pushed = &report["pushed"];
    assert_eq!(pushed["blobsUploaded"], 0, "{report}");
    assert_eq!(pushed["blobsMounted"], pushed["blobs"], "{report}");
    let raw = sh(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &format!("docker://{}/{to}:1", reg.host)],
    );
    assert_eq!(kiln_oci::Digest::of(raw.as_bytes()).to_string(), digest);
    let pulled = kiln_at(&ws, &ws.store("pulled"));
    let source = format!("{}/{to}@{digest}", reg.host);
    let report =
        pulled.run(&["--json", "pull", &source, "--insecure-registry", &reg.host]).ok().json();
    assert_eq!(report["referrers"], 3, "{report}");
}

#[test]
fn blobs_larger_than_a_part_stream_both_ways_unchanged() {
    let Some(reg) = registry::open() else { return };
    let ws = Workspace::new();
    // Noise does not compress: the layer is over the 8 MiB kiln streams instead of holding.
    ws.write("big/files/noise.bin", support::noise(9 * 1024 * 1024, 3));
    let recipe = ws.write(
        "big/big.toml",
        "epoch = 1700000000\n[image]\nname = \"big\"\nversion = \"1\"\n\
         [[layer]]\nname = \"noise\"\nfiles = [{ src = \"files/noise.bin\", dest = \"/noise.bin\" }]\n",
    );
    let kiln = kiln_at(&ws, &ws.store("s"));
    let digest = support::digest_of(&kiln.build(&recipe, &[]));
    let repo = format!("{}/{}", reg.host, reg.fresh_repo());
    let pushed =
        kiln.run(&["--json", "push", "big:1", &repo, "--insecure-registry", &reg.host]).ok().json();
    assert!(pushed["bytesUploaded"].as_u64().unwrap() > 9 * 1024 * 1024, "{pushed}");
    let pulled_store = ws.store("pulled");
    let pulled = kiln_at(&ws, &pulled_store);
    let source = format!("{repo}@{digest}");
    pulled.run(&["pull", &source, "--tag", "big:1", "--insecure-registry", &reg.host]).ok();
    let original = ws.store("s");
    for blob in tree(&original.join("blobs")) {
        assert_eq!(
            fs::read(original.join("blobs").join(&blob)).unwrap(),
            fs::read(pulled_store.join("blobs").join(&blob)).unwrap()
        );
    }
    pulled.run(&["store", "check"]).ok();
    assert!(tree(&pulled_store).iter().all(|p| !p.starts_with("uploads")));
}

#[test]
fn the_independent_check_refuses_another_key_and_finds_nothing_on_an_unsigned_image() {
    if !(require_tool("skopeo") && require_tool("openssl") && require_tool("curl")) {
        return;
    }
    let Some(reg) = registry::open() else { return };
    let ws = Workspace::new();
    ws.write("app/files/hello.sh", "#!/bin/sh\necho unsigned\n");
    let recipe = ws.write(
        "app/app.toml",
        "epoch = 1700000000\n[image]\nname = \"app\"\nversion = \"1\"\n\
         [[layer]]\nname = \"bin\"\nfiles = [{ src = \"files/hello.sh\", dest = \"/bin/hello\" }]\n",
    );
    let kiln = kiln_at(&ws, &ws.store("s"));
    let digest = support::digest_of(&kiln.build(&recipe, &[]));
    kiln.run(&["keygen", "--out", ws.path("ours").to_str().unwrap()]).ok();
    kiln.run(&["keygen", "--out", ws.path("theirs").to_str().unwrap()]).ok();

    let unsigned = reg.fresh_repo();
    kiln.run(&[
        "push",
        "app:1",
        &format!("{}/{unsigned}", reg.host),
        "--insecure-registry",
        &reg.host,
    ])
    .ok();
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let status = sh(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{}/v2/{unsigned}/manifests/{sig_tag}", reg.host),
        ],
    );
    assert_eq!(status, "404", "an unsigned image has a signature manifest");

    let signed = reg.fresh_repo();
    let theirs = ws.path("theirs.key");
    kiln.run(&[
        "push",
        "app:1",
        &format!("{}/{signed}", reg.host),
        "--sign",
        theirs.to_str().unwrap(),
        "--insecure-registry",
        &reg.host,
    ])
    .ok();
    assert!(cosign_signed_repositories(reg, &signed, &digest, &ws.path("ours.pub")).is_empty());
    assert_eq!(
        cosign_signed_repositories(reg, &signed, &digest, &ws.path("theirs.pub")),
        [format!("{}/{signed}", reg.host)]
    );
}

/// `ci/fault-proxy.py` in front of a real registry: it breaks the requests its faults name
/// and logs every request as `METHOD PATH`.
struct FaultProxy {
    child: std::process::Child,
    log: PathBuf,
    host: String,
}

impl FaultProxy {
    fn start(reg: &Registry, dir: &Path, faults: &[&str]) -> FaultProxy {
        let (log, port_file) = (dir.join("requests.log"), dir.join("proxy.port"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/fault-proxy.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(format!("http://{}", reg.host))
            .args([&log, &port_file])
            .args(faults)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let port = loop {
            if let Ok(port) = fs::read_to_string(&port_file) {
                break port;
            }
            if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                child.kill().ok();
                panic!("the fault proxy did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        FaultProxy { child, log, host: format!("127.0.0.1:{}", port.trim()) }
    }

    /// How many requests had `method` and a path containing `text`.
    fn count(&self, method: &str, text: &str) -> usize {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.split_once(' ').is_some_and(|(m, p)| m == method && p.contains(text)))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("warning: cannot stop the fault proxy: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("warning: cannot reap the fault proxy: {e}");
        }
    }
}

/// The faults of the fakes above, in front of docker-registry itself: what it holds after a
/// cut upload is what the resumed push relies on.
#[test]
fn a_real_registry_behind_a_faulty_link_push_and_pull_resume_or_fail_keeping_nothing() {
    if !require_tool("python3") {
        return;
    }
    let Some(reg) = registry::open() else { return };
    let ws = Workspace::new();
    // A layer larger than what goes up in one request, so that it streams in a PATCH.
    ws.write("big/files/noise.bin", support::noise(10 * 1024 * 1024, 11));
    let recipe = ws.write(
        "big/big.toml",
        "epoch = 1700000000\n[image]\nname = \"big\"\nversion = \"1\"\n\
         [[layer]]\nname = \"noise\"\nfiles = [{ src = \"files/noise.bin\", dest = \"/noise.bin\" }]\n",
    );
    let store = ws.store("s");
    let kiln = kiln_at(&ws, &store);
    let digest = support::digest_of(&kiln.build(&recipe, &[]));
    let layer =
        support::blobs(&store).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let layer_hex = layer.file_name().unwrap().to_str().unwrap().to_string();

    // The layer's PATCH is cut halfway (the registry keeps the half it got), its upload's
    // completion answers 500 twice and then lands without an answer, two other upload
    // completions answer 500, and the first two blob checks 429 (too many requests): the push resumes and retries, and lands whole. The pull's first manifest request is
    // answered 429 too.
    let proxy = FaultProxy::start(
        reg,
        &ws.mkdir("faulty"),
        &[
            "cut:PATCH:/blobs/uploads/:1",
            &format!("500:PUT:digest=sha256%3A{layer_hex}:2"),
            &format!("lost:PUT:digest=sha256%3A{layer_hex}:1"),
            "500:PUT:/blobs/uploads/:2",
            "429:HEAD:/blobs/sha256:2",
            "429:GET:/manifests/sha256::1",
            &format!("cut:GET:/blobs/sha256:{layer_hex}:1"),
        ],
    );
    let repo = format!("{}/{}", proxy.host, reg.fresh_repo());
    let insecure = ["--insecure-registry", proxy.host.as_str()];
    let run = kiln
        .run(&[&["--json", "push", "big:1", &format!("{repo}:1")][..], &insecure].concat())
        .ok();
    // The completion whose answer was lost: the retry finds the session gone, the blob there.
    assert!(run.stderr.contains("the registry completed"), "{}", run.stderr);
    let pushed = run.json();
    assert_eq!(pushed["digest"], digest, "{pushed}");
    assert_eq!(proxy.count("PATCH", "/blobs/uploads/"), 2);
    assert!(proxy.count("PUT", &format!("digest=sha256%3A{layer_hex}")) >= 4);
    assert!(proxy.count("GET", "/blobs/uploads/") >= 1, "the upload's status was not asked");

    // The pull's layer download is cut halfway: resumed, verified, kept.
    let pulled_store = ws.store("pulled");
    let pulled = kiln_at(&ws, &pulled_store);
    let source = format!("{repo}@{digest}");
    pulled.run(&[&["pull", &source, "--tag", "big:1"][..], &insecure].concat()).ok();
    assert_eq!(proxy.count("GET", &format!("/blobs/sha256:{layer_hex}")), 2);
    assert_eq!(proxy.count("GET", &format!("/manifests/{digest}")), 2);
    assert_eq!(
        fs::read(&layer).unwrap(),
        fs::read(pulled_store.join("blobs/sha256").join(&layer_hex)).unwrap()
    );
    pulled.run(&["store", "check"]).ok();

    // A registry failing every upload: retried, then a clear error, and no manifest there.
    let proxy = FaultProxy::start(reg, &ws.mkdir("broken"), &["500:PUT:/blobs/uploads/:1000"]);
    let repo = format!("{}/{}", proxy.host, reg.fresh_repo());
    let insecure = ["--insecure-registry", proxy.host.as_str()];
    kiln.run(&[&["push", "big:1", &format!("{repo}:1")][..], &insecure].concat())
        .fails_with(EXIT_ERROR)
        .stderr_has(&["500", "injected failure"]);
    assert_eq!(proxy.count("PUT", "/manifests/"), 0, "a manifest went up before its blobs");
    let nothing = ws.store("nothing");
    kiln_at(&ws, &nothing)
        .run(&[&["pull", &format!("{repo}@{digest}")][..], &insecure].concat())
        .fails_with(EXIT_ERROR);
    assert!(support::blobs(&nothing).is_empty());
    kiln.run(&["store", "check"]).ok();
}

//! Backend failures say what failed and why, in the user's terms, on every cloud backend's real
//! server (SeaweedFS, Azurite, fake-gcs-server on 127.0.0.1): a missing bucket or container,
//! wrong credentials, an unreachable endpoint.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use kiln_test_servers::{Server, Service};
use support::{Run, Workspace, KILN};

/// A small recipe in `ws`.
fn recipe(ws: &Workspace) -> PathBuf {
    ws.write("files/hello", "hello\n");
    ws.write(
        "hello.toml",
        "epoch = 1700000000\n\n[image]\nname = \"hello\"\nversion = \"1.0.0\"\n\
         platforms = [\"linux/amd64\"]\n\n[[layer]]\nname = \"hello\"\n\
         files = [{ src = \"files/hello\", dest = \"/hello\" }]\n",
    )
}

/// `kiln --store LOCATION ARGS` with exactly `env` for the cloud settings, and
/// `--store-option max_retries=0` so a refused connection fails at once.
fn kiln(ws: &Workspace, location: &str, env: &[(String, String)], args: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(KILN);
    cmd.args(["--store", location, "--store-option", "max_retries=0"]).args(args);
    for (var, _) in std::env::vars() {
        if ["AWS_", "AZURE_", "GOOGLE_", "KILN_"].iter().any(|p| var.starts_with(p)) {
            cmd.env_remove(var);
        }
    }
    cmd.envs(env.iter().cloned())
        .env("XDG_CACHE_HOME", ws.path("cache"))
        .env("NO_COLOR", "1")
        .current_dir(ws.root())
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// `env` with `var` set to `value`.
fn with(env: &[(String, String)], var: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<_> = env.iter().filter(|(v, _)| v != var).cloned().collect();
    env.push((var.to_string(), value.to_string()));
    env
}

/// A loopback port nothing listens on.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What to try on a bucket (or container) that does not exist.
struct Missing<'a> {
    /// The server's error code for it, if it sends one.
    code: Option<&'a str>,
    /// What `store check` says instead, when the server answers its listing otherwise.
    check: Option<&'a [&'a str]>,
    /// Whether a build is expected to fail: SeaweedFS creates a missing bucket on the first
    /// write (AWS S3 does not), so there a build succeeds.
    build: bool,
    /// Whether a read names the missing bucket: fake-gcs-server answers reads of a missing
    /// bucket with a bare 404, the same as for a missing object.
    read: bool,
}

/// `store check`, a read and a build on a bucket (or container) that does not exist fail with
/// exit 1, name the operation, the key, the bucket, the server's error code and what to do,
/// and never call it a missing blob.
fn missing_bucket(server: &Server, missing: Missing) {
    let ws = Workspace::new();
    let recipe = recipe(&ws);
    let (noun, bucket) = match server.service {
        Service::Azure => ("container", "kiln-no-such-container"),
        _ => ("bucket", "kiln-no-such-bucket"),
    };
    let location = format!("{}://{bucket}/ci", server.service.scheme());
    let env = server.env();
    let mut needles = vec![
        format!("the {noun} {bucket} does not exist on the"),
        server.endpoint.clone(),
        format!("create the {noun} {bucket}"),
    ];
    needles.extend(missing.code.map(str::to_string));
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    let check = kiln(&ws, &location, &env, &["store", "check"])
        .fails_with(support::EXIT_ERROR)
        .stderr_has(missing.check.unwrap_or(&needles))
        .stderr_has(&["listing blobs/sha256 failed"]);
    assert!(!check.stderr.contains("not in the store"), "{check}");
    if missing.read {
        let read = kiln(&ws, &location, &env, &["inspect", "hello:1.0.0"])
            .fails_with(support::EXIT_ERROR)
            .stderr_has(&needles)
            .stderr_has(&["reading refs/hello/1.0.0 failed"]);
        assert!(!read.stderr.contains("not in the store"), "{read}");
    }
    if missing.build {
        let build = kiln(&ws, &location, &env, &["build", recipe.to_str().unwrap()])
            .fails_with(support::EXIT_ERROR)
            .stderr_has(&needles);
        // A build reads the tag it will set beside its cache entries, then writes: whichever
        // request fails first is named (a server may answer the read of a missing bucket as
        // a missing object).
        let named = ["reading refs/hello/1.0.0 failed", "reading cache/layer/", "writing "];
        assert!(named.iter().any(|n| build.stderr.contains(n)), "{build}");
        assert!(!build.stderr.contains("not in the store"), "{build}");
    }
}

/// A refused connection names the endpoint and says to check it.
fn unreachable(server: &Server, env: Vec<(String, String)>, endpoint: &str) {
    let ws = Workspace::new();
    let recipe = recipe(&ws);
    let location = server.fresh_location();
    kiln(&ws, &location, &env, &["build", recipe.to_str().unwrap()])
        .fails_with(support::EXIT_ERROR)
        .stderr_has(&[
            &format!("cannot connect to the {} server at {endpoint}", service_name(server)),
            "check that the server runs and that the endpoint is right",
            "Connection refused",
        ]);
}

fn service_name(server: &Server) -> &'static str {
    match server.service {
        Service::S3 => "S3",
        Service::Azure => "Azure",
        Service::Gcs => "GCS",
    }
}

#[test]
fn s3_failures_say_what_failed_and_what_to_do() {
    let Some(server) = kiln_test_servers::s3() else { return };
    missing_bucket(
        server,
        Missing { code: Some("NoSuchBucket"), check: None, build: false, read: true },
    );

    let ws = Workspace::new();
    let recipe = recipe(&ws);
    let wrong = with(&server.env(), "AWS_SECRET_ACCESS_KEY", "not-the-secret");
    kiln(&ws, &server.fresh_location(), &wrong, &["build", recipe.to_str().unwrap()])
        .fails_with(support::EXIT_ERROR)
        .stderr_has(&["403 Forbidden", "SignatureDoesNotMatch", "check the AWS_* credentials"]);

    let endpoint = format!("http://127.0.0.1:{}", refused_port());
    unreachable(server, with(&server.env(), "AWS_ENDPOINT", &endpoint), &endpoint);
}

#[test]
fn azure_failures_say_what_failed_and_what_to_do() {
    let Some(server) = kiln_test_servers::azure() else { return };
    missing_bucket(
        server,
        Missing { code: Some("ContainerNotFound"), check: None, build: true, read: true },
    );

    let ws = Workspace::new();
    let recipe = recipe(&ws);
    // A well-formed key that is not the account's.
    let wrong = with(&server.env(), "AZURE_STORAGE_ACCOUNT_KEY", "bm90LXRoZS1rZXk=");
    kiln(&ws, &server.fresh_location(), &wrong, &["build", recipe.to_str().unwrap()])
        .fails_with(support::EXIT_ERROR)
        .stderr_has(&["403", "check the AZURE_* credentials"]);

    let port = refused_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = with(&server.env(), "AZURE_ENDPOINT", &format!("{endpoint}/devstoreaccount1"));
    unreachable(server, env, &endpoint);
}

#[test]
fn gcs_failures_say_what_failed_and_what_to_do() {
    let Some(server) = kiln_test_servers::gcs() else { return };
    // fake-gcs-server answers a missing bucket with a bare 404 and no error code, which reads
    // as a missing object until the first (create-only) write; a listing of it gets a bare 500
    // (GCS itself answers 404 NoSuchBucket, as S3 does).
    let listing =
        format!("the GCS server at {} answered 500 Internal Server Error", server.endpoint);
    missing_bucket(
        server,
        Missing { code: None, check: Some(&[&listing]), build: true, read: false },
    );

    // It does not implement the XML API upload kiln's GCS client makes (docs/commands.md,
    // "Stores"): the refusal is reported with the request, status and server message.
    let ws = Workspace::new();
    let recipe = recipe(&ws);
    kiln(&ws, &server.fresh_location(), &server.env(), &["build", recipe.to_str().unwrap()])
        .fails_with(support::EXIT_ERROR)
        .stderr_has(&[
            "writing ",
            &format!("the GCS server at {} answered 400 Bad Request", server.endpoint),
            "invalid uploadType",
        ]);

    // The emulator checks no credentials; a key that is not one is refused before any request.
    let bad_key = r#"{"disable_oauth":false,"client_email":"kiln@example.invalid","private_key":"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n","private_key_id":"1"}"#;
    kiln(
        &ws,
        &server.fresh_location(),
        &with(&server.env(), "GOOGLE_SERVICE_ACCOUNT_KEY", bad_key),
        &["build", recipe.to_str().unwrap()],
    )
    .fails_with(support::EXIT_ERROR)
    .stderr_has(&[
        "cannot configure the store at gs://",
        "check its credentials and settings",
        "Invalid RSA key",
    ]);

    let endpoint = format!("http://127.0.0.1:{}", refused_port());
    let key = format!(
        r#"{{"gcs_base_url":"{endpoint}","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}}"#
    );
    unreachable(server, with(&server.env(), "GOOGLE_SERVICE_ACCOUNT_KEY", &key), &endpoint);
}

#[test]
fn checking_a_store_folder_that_does_not_exist_says_so_and_creates_nothing() {
    let ws = Workspace::new();
    let missing = ws.path("no/such/store");
    let location = missing.to_str().unwrap();
    let run = kiln(&ws, location, &[], &["store", "check"]).fails_with(support::EXIT_ERROR);
    run.stderr_has(&[&format!("store folder {location} does not exist"), "check the path"]);
    assert!(!ws.path("no").exists(), "store check created {}", missing.display());
    let url = format!("file://{location}");
    kiln(&ws, &url, &[], &["--json", "store", "check"])
        .fails_with(support::EXIT_ERROR)
        .stderr_has(&["does not exist"]);
}

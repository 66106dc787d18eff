//! kiln reading a GCS store from fake-gcs-server on 127.0.0.1. The emulator refuses the XML API
//! uploads kiln's GCS client makes (docs/commands.md, "Stores"), so the store is built
//! in a folder and uploaded through the emulator's JSON API; everything kiln does from there
//! goes through its GCS client.
// A failed unwrap in a test is the failure report we want.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::{Kiln, Workspace, EXIT_INTEGRITY};

/// kiln on `location` with the emulator's settings.
fn on(location: &str, server: &kiln_test_servers::Server) -> Kiln {
    server.env().iter().fold(Kiln::new(Path::new(location)), |k, (var, value)| k.env(var, value))
}

#[test]
fn a_store_uploaded_to_gcs_reads_back_and_a_corrupt_blob_is_refused() {
    let Some(server) = kiln_test_servers::gcs() else { return };
    let ws = Workspace::new();
    ws.write("files/payload", support::noise(64 * 1024, 7));
    let recipe = ws.write(
        "hello.toml",
        "epoch = 1700000000\n\n[image]\nname = \"hello\"\nversion = \"1.0.0\"\n\
         platforms = [\"linux/amd64\"]\n\n[[layer]]\nname = \"payload\"\n\
         files = [{ src = \"files/payload\", dest = \"/payload\" }]\n",
    );
    let folder = ws.store("local");
    let local = Kiln::new(&folder);
    let digest = support::digest_of(&local.build(&recipe, &[]));
    let location = server.fresh_location();
    server.seed(&location, &folder);
    let gcs = on(&location, server);

    let report = gcs.run(&["--json", "store", "check"]).ok().json();
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["blobs"].as_u64(), Some(support::blobs(&folder).len() as u64), "{report}");
    let inspect = gcs.run(&["--json", "inspect", "hello:1.0.0"]).ok();
    assert!(inspect.stdout.contains(&digest), "{inspect}");
    // An export read through GCS is the export read from the folder.
    let (from_gcs, from_folder) = (ws.path("from-gcs"), ws.path("from-folder"));
    gcs.run(&["export", "hello:1.0.0", "--oci-layout", from_gcs.to_str().unwrap()]).ok();
    local.run(&["export", "hello:1.0.0", "--oci-layout", from_folder.to_str().unwrap()]).ok();
    let listing = |dir: &Path| support::sh("find", &[dir.to_str().unwrap(), "-type", "f"]);
    assert_eq!(
        listing(&from_gcs).replace(from_gcs.to_str().unwrap(), ""),
        listing(&from_folder).replace(from_folder.to_str().unwrap(), "")
    );
    for blob in support::blobs(&folder) {
        let name = blob.file_name().unwrap();
        let exported = std::fs::read(from_gcs.join("blobs/sha256").join(name)).unwrap();
        assert_eq!(exported, std::fs::read(&blob).unwrap(), "{}", blob.display());
    }

    // The biggest blob is the layer: replaced behind kiln's back, it is refused on every read.
    let layer = support::blobs(&folder)
        .into_iter()
        .max_by_key(|b| std::fs::metadata(b).unwrap().len())
        .unwrap();
    let key = format!("blobs/sha256/{}", layer.file_name().unwrap().to_string_lossy());
    let prefix = location.strip_prefix(&format!("gs://{}/", server.bucket)).unwrap();
    server.upload(&format!("{prefix}/{key}"), &ws.write("not-the-layer", "not the layer"));
    gcs.run(&["store", "check"]).fails_with(EXIT_INTEGRITY).stderr_has(&[&key]);
    let out = ws.path("corrupt-export");
    gcs.run(&["export", "hello:1.0.0", "--oci-layout", out.to_str().unwrap()])
        .fails_with(EXIT_INTEGRITY)
        .stderr_has(&[&key]);
}

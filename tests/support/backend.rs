//! A store under test on each backend the end-to-end tests cover: a folder, or a prefix of a
//! test server's bucket (SeaweedFS for S3, Azurite for Azure). `kiln` runs against it through the real binary, and the
//! test reads and damages its objects behind kiln's back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::ObjectStore;
use tempfile::TempDir;

use super::{Run, KILN};

/// Where the objects live.
enum Place {
    Folder(PathBuf),
    Cloud(Arc<dyn ObjectStore>),
}

/// One store plus the settings `kiln` needs to reach it.
pub struct TestStore {
    pub location: String,
    place: Place,
    env: Vec<(String, String)>,
    /// XDG_CACHE_HOME and TMPDIR of every run, so tests never share them.
    home: TempDir,
}

impl TestStore {
    /// A folder store at `dir/name`.
    pub fn folder(dir: &Path, name: &str) -> TestStore {
        let root = dir.join(name);
        TestStore {
            location: format!("file://{}", root.display()),
            place: Place::Folder(root),
            env: Vec::new(),
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A fresh prefix on a test server; `None` when it is unavailable outside CI (the
    /// harness says why).
    pub fn cloud(server: Option<&'static kiln_test_servers::Server>) -> Option<TestStore> {
        let server = server?;
        let location = server.fresh_location();
        let raw = server.raw(&location);
        Some(TestStore {
            location,
            place: Place::Cloud(raw),
            env: server.env(),
            home: tempfile::tempdir().expect("tempdir"),
        })
    }

    /// A folder store in `dir` and, where their servers are available, S3 and Azure stores.
    pub fn every(dir: &Path) -> Vec<TestStore> {
        let mut stores = vec![TestStore::folder(dir, "store")];
        stores.extend(TestStore::cloud(kiln_test_servers::s3()));
        stores.extend(TestStore::cloud(kiln_test_servers::azure()));
        stores
    }

    /// Whether this store's backend dates objects to the second only (HTTP's Last-Modified).
    pub fn dates_by_the_second(&self) -> bool {
        matches!(self.place, Place::Cloud(_))
    }

    /// `kiln --store LOCATION ARGS…` in an isolated environment.
    pub fn kiln(&self, args: &[&str]) -> Run {
        let tmp = self.home.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("create TMPDIR");
        let mut cmd = Command::new(KILN);
        cmd.arg("--store").arg(&self.location).args(args);
        cmd.env_remove("KILN_STORE")
            .env_remove("SOURCE_DATE_EPOCH")
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("TMPDIR", tmp)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") || key.starts_with("AZURE_") || key.starts_with("GOOGLE_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().expect("kiln binary runs");
        Run::from_output(args.iter().map(|a| a.to_string()).collect(), out)
    }

    /// The object at `key`, `None` when absent.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match &self.place {
            Place::Folder(root) => match std::fs::read(root.join(key)) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("reading {key}: {e}"),
            },
            Place::Cloud(raw) => runtime().block_on(async {
                match raw.get(&Key::from(key)).await {
                    Ok(got) => Some(got.bytes().await.expect("read object").to_vec()),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => panic!("reading {key}: {e}"),
                }
            }),
        }
    }

    /// Writes `bytes` at `key`, replacing what is there.
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        match &self.place {
            Place::Folder(root) => {
                let path = root.join(key);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).expect("create folder");
                }
                std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {key}: {e}"));
            }
            Place::Cloud(raw) => runtime()
                .block_on(raw.put(&Key::from(key), bytes.into()))
                .map(drop)
                .unwrap_or_else(|e| panic!("writing {key}: {e}")),
        }
    }
}

impl TestStore {
    /// Deletes the object at `key`.
    pub fn delete(&self, key: &str) {
        match &self.place {
            Place::Folder(root) => std::fs::remove_file(root.join(key))
                .unwrap_or_else(|e| panic!("deleting {key}: {e}")),
            Place::Cloud(raw) => runtime()
                .block_on(raw.delete(&Key::from(key)))
                .unwrap_or_else(|e| panic!("deleting {key}: {e}")),
        }
    }

    /// Every key under `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = match &self.place {
            Place::Folder(root) => {
                let mut found = Vec::new();
                let mut dirs = vec![root.join(prefix)];
                while let Some(dir) = dirs.pop() {
                    let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                    for entry in entries {
                        let path = entry.expect("readable folder").path();
                        if path.is_dir() {
                            dirs.push(path);
                        } else if let Ok(rel) = path.strip_prefix(root) {
                            found.push(rel.to_string_lossy().into_owned());
                        }
                    }
                }
                found
            }
            Place::Cloud(raw) => runtime().block_on(async {
                use futures::TryStreamExt;
                let metas: Vec<_> =
                    raw.list(Some(&Key::from(prefix))).try_collect().await.expect("list");
                metas.into_iter().map(|m| m.location.to_string()).collect()
            }),
        };
        keys.sort();
        keys
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

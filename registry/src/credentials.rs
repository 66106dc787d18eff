//! Registry credentials the way Docker, podman and skopeo users keep them: `config.json` in
//! `$DOCKER_CONFIG` or `~/.docker`, with `auths` entries and credential helpers
//! (`credHelpers` per registry, `credsStore` for all), which kiln runs as
//! `docker-credential-<name> get` with the registry host on stdin.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{RegistryError, Result};

/// A user name and password (or token) for HTTP basic auth and token requests.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl Credential {
    /// The user name Docker gives a credential whose secret is an identity token (an OAuth2
    /// refresh token, as `docker login` keeps for registries that hand them out).
    pub const IDENTITY_TOKEN_USER: &'static str = "<token>";

    /// The identity token this credential carries, if it is one: it is exchanged at the
    /// realm for an access token, never sent to the registry itself.
    pub fn identity_token(&self) -> Option<&str> {
        (self.username == Self::IDENTITY_TOKEN_USER).then_some(self.password.as_str())
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Credential").field("username", &self.username).finish_non_exhaustive()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// The Docker config file kiln reads: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`; `None` when neither variable gives a place.
pub fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
}

/// The credential for `host` in the Docker config at `path` (a missing file has none).
pub fn lookup(path: &Path, host: &str) -> Result<Option<Credential>> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| RegistryError::Config {
        path: path.to_path_buf(),
        source,
    };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(Box::new(e))),
    };
    let config: ConfigFile = serde_json::from_slice(&text).map_err(|e| bad(Box::new(e)))?;
    if let Some(helper) = config.cred_helpers.get(host) {
        return run_helper(helper, host);
    }
    // Docker writes keys as `host` or as a URL (`https://host`, `https://host/v1/`).
    let entry = config.auths.iter().find(|(key, _)| {
        let key = key.trim_start_matches("https://").trim_start_matches("http://");
        key.split('/').next() == Some(host)
    });
    if let Some((_, entry)) = entry {
        if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credential {
                username: Credential::IDENTITY_TOKEN_USER.to_string(),
                password: token.clone(),
            }));
        }
        if let Some(auth) = &entry.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(Box::new(e)))?;
            let decoded = String::from_utf8(decoded).map_err(|e| bad(Box::new(e)))?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                bad(format!("the auth entry for {host} is not user:password").into())
            })?;
            return Ok(Some(Credential {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Some(Credential { username: username.clone(), password: password.clone() }));
        }
    }
    match &config.creds_store {
        Some(store) => run_helper(store, host),
        None => Ok(None),
    }
}

/// Asks `docker-credential-<helper>` for `host`'s credential; a helper that knows none
/// answers with an error saying so, which is no credential, not a failure.
fn run_helper(helper: &str, host: &str) -> Result<Option<Credential>> {
    let failed = |reason: String| RegistryError::Helper {
        helper: helper.to_string(),
        host: host.to_string(),
        reason,
    };
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper may answer without reading the host (one that knows no credential at
        // all): its answer decides, not the pipe it closed.
        match stdin.write_all(host.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(failed(format!("writing to it: {e}")))
            }
            _ => {}
        }
    }
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if said.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!("{}: {} {}", out.status, said, stderr.trim())));
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("its answer: {e}")))?;
    Ok(Some(Credential { username: answer.username, password: answer.secret }))
}

#[cfg(test)]
mod tests {
    use super::{lookup, Credential};

    #[test]
    fn reads_auths_by_host_or_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"https://reg.example/v1/": {"auth": "dTpwOng="},
                          "127.0.0.1:5000": {"username": "a", "password": "b"}}}"#,
        )
        .unwrap();
        let found = lookup(&path, "reg.example").unwrap();
        assert_eq!(found, Some(Credential { username: "u".into(), password: "p:x".into() }));
        let found = lookup(&path, "127.0.0.1:5000").unwrap();
        assert_eq!(found, Some(Credential { username: "a".into(), password: "b".into() }));
        assert_eq!(lookup(&path, "other.example").unwrap(), None);
        assert_eq!(lookup(&dir.path().join("missing.json"), "reg.example").unwrap(), None);
    }

    #[test]
    fn an_identity_token_goes_before_the_auth_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"reg.example": {"auth": "dTpwOng=", "identitytoken": "r3fr3sh"},
                          "plain.example": {"auth": "dTpwOng="}}}"#,
        )
        .unwrap();
        let found = lookup(&path, "reg.example").unwrap().unwrap();
        assert_eq!(found.identity_token(), Some("r3fr3sh"));
        assert_eq!(lookup(&path, "plain.example").unwrap().unwrap().identity_token(), None);
    }
}

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

use crate::error::{HelperError, RegistryError, Result};

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
    let mut command = Command::new(format!("docker-credential-{helper}"));
    command.arg("get");
    ask_helper(command, host).map_err(|source| RegistryError::Helper {
        helper: helper.to_string(),
        host: host.to_string(),
        source: Box::new(source),
    })
}

/// Runs `command` (a helper's `get`) with `host` on its stdin and reads its answer. The
/// helper is waited for whatever happens, so that none is left behind unreaped.
fn ask_helper(
    mut command: Command,
    host: &str,
) -> std::result::Result<Option<Credential>, HelperError> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HelperError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    // A helper may answer without reading the host (one that knows no credential at all):
    // its answer decides, not the pipe it closed. The pipe is closed before waiting, so
    // that a helper still reading sees its end.
    let written = match child.stdin.take() {
        Some(mut stdin) => match stdin.write_all(host.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
            _ => Ok(()),
        },
        None => Ok(()),
    };
    let out = child.wait_with_output().map_err(HelperError::Wait)?;
    written.map_err(HelperError::Write)?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if said.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = format!("{said} {}", stderr.trim()).trim().to_string();
        return Err(HelperError::Exited { status: out.status, said });
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(HelperError::Answer)?;
    Ok(Some(Credential { username: answer.username, password: answer.secret }))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::process::Command;

    use super::{ask_helper, lookup, Credential, HelperError};

    /// A helper made of the shell script `script`, run by `sh` (no file to execute).
    fn helper(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn a_failing_helper_is_reported_with_its_cause_chained() {
        let found = ask_helper(
            helper("read h; printf '{\"Username\":\"u\",\"Secret\":\"%s\"}' \"$h\""),
            "reg.example",
        );
        assert_eq!(
            found.unwrap(),
            Some(Credential { username: "u".into(), password: "reg.example".into() })
        );
        let none =
            ask_helper(helper("echo 'credentials not found in native keychain'; exit 1"), "h");
        assert_eq!(none.unwrap(), None);
        let err = ask_helper(helper("echo locked >&2; exit 3"), "h").unwrap_err();
        assert!(matches!(&err, HelperError::Exited { said, .. } if said == "locked"), "{err}");
        let err = ask_helper(helper("echo not json"), "h").unwrap_err();
        assert!(matches!(err, HelperError::Answer(_)), "{err}");
        assert!(err.source().is_some());
        let err = ask_helper(Command::new("/nonexistent/docker-credential-x"), "h").unwrap_err();
        assert!(matches!(&err, HelperError::Spawn { program, .. } if program.ends_with("-x")));
        assert!(err.source().is_some());
    }

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

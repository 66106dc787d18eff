//! The HTTP side of the distribution API: one client per registry host, which picks HTTPS
//! (plain HTTP only for hosts named insecure), answers 401 challenges (basic, or a bearer
//! token fetched from the realm the registry names) and retries 429 and 5xx answers and
//! failed connections with backoff.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode, Url};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::credentials::{self, Credential};
use crate::error::{RegistryError, Result};

/// Attempts per request when the registry answers 429 or 5xx or the connection fails.
const ATTEMPTS: u32 = 4;
/// The wait before the first retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long a registry may go without sending a byte, by default.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach registries: which hosts speak plain HTTP, which extra CA to trust, and where
/// credentials are kept.
#[derive(Clone, Debug)]
pub struct Options {
    /// Hosts (`HOST` or `HOST:PORT`) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// A PEM file of CA certificates trusted besides the system's.
    pub ca: Option<PathBuf>,
    /// The Docker config file [default: [`credentials::config_path`]].
    pub docker_config: Option<PathBuf>,
    /// How long the registry may go without sending a byte, waiting for an answer or within
    /// its body, before the request fails; a transfer that keeps coming is never cut.
    pub stall_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            insecure: Vec::new(),
            ca: None,
            docker_config: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// A client for one registry host.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    host: String,
    base: Url,
    credential: Option<Credential>,
    /// The `Authorization` value that last worked (basic or bearer), sent with every request.
    auth: Mutex<Option<HeaderValue>>,
}

impl Client {
    /// A client for `host`, with the credential the Docker config holds for it.
    pub fn new(host: &str, options: &Options) -> Result<Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(options.stall_timeout)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca {
            let bad = |source: Box<dyn std::error::Error + Send + Sync>| RegistryError::Ca {
                path: path.clone(),
                source,
            };
            let pem = std::fs::read(path).map_err(|e| bad(Box::new(e)))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(Box::new(e)))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|source| RegistryError::Client { source })?;
        let scheme = if options.insecure.iter().any(|h| h == host) { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{host}/")).map_err(|e| {
            RegistryError::InvalidReference { reference: host.to_string(), reason: e.to_string() }
        })?;
        let config = options.docker_config.clone().or_else(credentials::config_path);
        let credential = match config {
            Some(path) => credentials::lookup(&path, host)?,
            None => None,
        };
        Ok(Client { http, host: host.to_string(), base, credential, auth: Mutex::new(None) })
    }

    /// Whether `url` is on this registry (same scheme, host and port). A `Location` the
    /// registry sends may name another server (or plain HTTP): that one never gets the
    /// credential or a token for it.
    fn is_own(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    /// The `Authorization` value to send to `url`: the one that last worked, on this registry
    /// only.
    async fn auth_for(&self, url: &Url) -> Option<HeaderValue> {
        if !self.is_own(url) {
            return None;
        }
        self.auth.lock().await.clone()
    }

    /// The registry host this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The URL of `path` (`/v2/...`) on this registry, or of a `Location` the registry sent.
    pub(crate) fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| RegistryError::InvalidReference {
            reference: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// Sends a request whose body can be sent again, answering an auth challenge once and
    /// retrying 429, 5xx and failed connections. Returns any other answer for the caller to
    /// judge, except a 401 that the credentials could not get past.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response> {
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request =
                self.http.request(method.clone(), url.clone()).headers(headers.clone());
            if let Some(auth) = self.auth_for(url).await {
                request = request.header(AUTHORIZATION, auth);
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = match request.send().await {
                Ok(response) => response,
                // A stall is not tried again: the longest a command waits on a registry that
                // has stopped answering is one stall timeout.
                Err(source)
                    if attempt < ATTEMPTS && !source.is_builder() && !source.is_timeout() =>
                {
                    backoff(attempt).await;
                    continue;
                }
                Err(source) => return Err(http_error(&method, url, source)),
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !challenged && self.is_own(url) {
                challenged = true;
                self.answer_challenge(&response).await?;
                attempt -= 1;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(self.refused(response).await);
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < ATTEMPTS
            {
                backoff(attempt).await;
                continue;
            }
            return Ok(response);
        }
    }

    /// Sends a request with a streamed body once, with the auth that last worked (a streamed
    /// upload follows requests that already passed the challenge). The caller retries by
    /// streaming again.
    pub(crate) async fn send_stream(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<Response> {
        let mut request =
            self.http.request(method.clone(), url.clone()).headers(headers).body(body);
        if let Some(auth) = self.auth_for(url).await {
            request = request.header(AUTHORIZATION, auth);
        }
        let response = request.send().await.map_err(|source| http_error(&method, url, source))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.refused(response).await);
        }
        Ok(response)
    }

    /// Sets the `Authorization` value a 401's `WWW-Authenticate` asks for.
    async fn answer_challenge(&self, response: &Response) -> Result<()> {
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (scheme, params) = challenge.split_once(' ').unwrap_or((&challenge, ""));
        let value = if scheme.eq_ignore_ascii_case("basic") {
            let Some(credential) = &self.credential else {
                return Err(self.no_credential(response.status()));
            };
            if credential.identity_token().is_some() {
                return Err(RegistryError::Unauthorized {
                    host: self.host.clone(),
                    status: response.status().as_u16(),
                    reason: "it asks for basic auth, and the Docker config holds an identity \
                             token for it, which only a token realm takes"
                        .to_string(),
                });
            }
            basic(credential)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let token = self.fetch_token(&parse_params(params)).await?;
            format!("Bearer {token}")
        } else {
            return Err(RegistryError::Unauthorized {
                host: self.host.clone(),
                status: response.status().as_u16(),
                reason: format!("it asks for unknown authentication {challenge:?}"),
            });
        };
        let value = HeaderValue::from_str(&value).map_err(|_| RegistryError::Unauthorized {
            host: self.host.clone(),
            status: response.status().as_u16(),
            reason: "the credential is not a valid header value".to_string(),
        })?;
        *self.auth.lock().await = Some(value);
        Ok(())
    }

    /// Gets a bearer token from the realm a challenge names, with the credential if any
    /// (anonymous tokens are how public repositories are read).
    async fn fetch_token(&self, params: &[(String, String)]) -> Result<String> {
        let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let realm = get("realm").ok_or_else(|| RegistryError::Unauthorized {
            host: self.host.clone(),
            status: 401,
            reason: "its bearer challenge names no realm".to_string(),
        })?;
        let mut url = Url::parse(realm).map_err(|e| RegistryError::InvalidReference {
            reference: realm.to_string(),
            reason: e.to_string(),
        })?;
        {
            let mut query = url.query_pairs_mut();
            for name in ["service", "scope"] {
                if let Some(value) = get(name) {
                    query.append_pair(name, value);
                }
            }
        }
        let identity = self.credential.as_ref().and_then(Credential::identity_token);
        let (method, request) = match identity {
            // An identity token is a refresh token: exchanged at the realm (OAuth2, as
            // Docker does) for an access token.
            Some(token) => {
                let mut form = url.clone();
                form.set_query(None);
                form.query_pairs_mut()
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", token)
                    .append_pair("client_id", "kiln");
                for name in ["service", "scope"] {
                    if let Some(value) = get(name) {
                        form.query_pairs_mut().append_pair(name, value);
                    }
                }
                url.set_query(None);
                let body = form.query().unwrap_or_default().to_string();
                let request = self
                    .http
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body);
                (Method::POST, request)
            }
            None => {
                let mut request = self.http.get(url.clone());
                if let Some(credential) = &self.credential {
                    request = request.header(AUTHORIZATION, basic(credential));
                }
                (Method::GET, request)
            }
        };
        let response = request.send().await.map_err(|source| http_error(&method, &url, source))?;
        if !response.status().is_success() {
            if self.credential.is_none() {
                return Err(self.no_credential(response.status()));
            }
            return Err(self.refused(response).await);
        }
        #[derive(Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_limited(response, &url, 1 << 20).await?;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| RegistryError::Token { url: url.to_string() })?;
        answer.token.or(answer.access_token).ok_or(RegistryError::Token { url: url.to_string() })
    }

    fn no_credential(&self, status: StatusCode) -> RegistryError {
        RegistryError::Unauthorized {
            host: self.host.clone(),
            status: status.as_u16(),
            reason: "it requires credentials and kiln has none for it".to_string(),
        }
    }

    async fn refused(&self, response: Response) -> RegistryError {
        let status = response.status().as_u16();
        let reason = if self.credential.is_some() {
            "the credentials given for it were refused"
        } else {
            "it requires credentials and kiln has none for it"
        };
        RegistryError::Unauthorized { host: self.host.clone(), status, reason: reason.to_string() }
    }
}

fn basic(credential: &Credential) -> String {
    let pair = format!("{}:{}", credential.username, credential.password);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(attempt - 1)).await;
}

pub(crate) fn http_error(method: &Method, url: &Url, source: reqwest::Error) -> RegistryError {
    RegistryError::transfer(method.to_string(), url.to_string(), source)
}

/// The error for an answer the caller did not expect, with the start of its body (registries
/// explain themselves there).
pub(crate) async fn unexpected(method: &Method, url: &Url, response: Response) -> RegistryError {
    let status = response.status().as_u16();
    let body = read_limited(response, url, 4096).await.unwrap_or_default();
    let body = String::from_utf8_lossy(&body).trim().chars().take(300).collect();
    RegistryError::Status { method: method.to_string(), url: url.to_string(), status, body }
}

/// Reads a whole answer, refusing it once it is longer than `limit` (by its
/// `Content-Length` before reading, or as it arrives).
pub(crate) async fn read_limited(response: Response, url: &Url, limit: u64) -> Result<Bytes> {
    let too_large = || RegistryError::TooLarge { url: url.to_string(), limit };
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut out = BytesMut::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| http_error(&Method::GET, url, source))?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// `realm="...",service="...",scope="..."` as name/value pairs (values may hold commas).
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some((name, after)) = rest.split_once('=') {
        let name = name.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.push((name, value.to_string()));
        rest = remaining.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_params;

    #[test]
    fn parses_a_bearer_challenge() {
        let params = parse_params(
            r#"realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push""#,
        );
        let names: Vec<_> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            names,
            [
                ("realm", "https://auth.example/token"),
                ("service", "reg.example"),
                ("scope", "repository:a/b:pull,push")
            ]
        );
    }
}

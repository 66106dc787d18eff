//! Where a repository's files are read from: a folder (`file://`) or a web server
//! (`http://`, `https://`). Nothing here is trusted: the caller checks every byte against
//! the signed release or the lock, so plain HTTP is as safe as a folder. Every read is
//! bounded by a limit the caller gives.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::repository::Fetch;

/// A repository's root.
#[derive(Debug, Clone)]
pub enum Source {
    /// The folder holding `dists/` and `pool/`.
    Folder(PathBuf),
    /// The URL of that folder on a web server, ending in `/`, and the client that reads it.
    Http { base: String, client: reqwest::blocking::Client, stall: Duration },
}

/// Why a repository URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("repository url {url:?} is neither file://, http:// nor https://")]
    Scheme { url: String },
    #[error("cannot set up an HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot read the CA certificates of {path}")]
    Ca { path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("{STALL_VARIABLE}={value:?} is not a whole number of seconds from 1 to {}", MAX_STALL.as_secs())]
    Stall { value: String },
}

/// How many times a request is made before its failure is final.
const ATTEMPTS: u32 = 4;
/// The wait before the second attempt; it doubles before each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The largest CA file read: all of a system's roots fit in a few hundred KiB, so a file
/// named by mistake is refused without reading it whole.
const CA_FILE_LIMIT: u64 = 8 << 20;
/// The longest `Retry-After` a server gets honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long a server may go without sending a byte, by default.
const DEFAULT_STALL: Duration = Duration::from_secs(60);
/// The longest that time may be set to: a day is already no stall detection at all, and
/// a far larger one would overflow the HTTP client's deadline arithmetic (a panic).
const MAX_STALL: Duration = Duration::from_secs(24 * 60 * 60);
/// The variable that sets that time, in seconds.
pub const STALL_VARIABLE: &str = "KILN_REPOSITORY_TIMEOUT";

fn stall_timeout() -> Result<Duration, SourceError> {
    parse_stall(std::env::var(STALL_VARIABLE).ok())
}

/// The stall timeout `value` of [`STALL_VARIABLE`] sets (unset: the default).
fn parse_stall(value: Option<String>) -> Result<Duration, SourceError> {
    let Some(value) = value else { return Ok(DEFAULT_STALL) };
    match value.trim().parse::<u64>() {
        Ok(secs) if secs > 0 && secs <= MAX_STALL.as_secs() => Ok(Duration::from_secs(secs)),
        _ => Err(SourceError::Stall { value }),
    }
}

/// One client per CA file (none: the system's roots only) and stall timeout, made once:
/// rustls with the system's roots (and the CA's certificates), a connect timeout, kiln's user
/// agent, and the stall timeout. reqwest's blocking client applies its `timeout` to the wait
/// for an answer's head and then to each read of its body on its own (not to the transfer as
/// a whole), so it is the longest a server may go without sending anything: a slow download
/// that keeps coming is never cut, a stalled one fails.
fn client(ca: Option<&Path>, stall: Duration) -> Result<reqwest::blocking::Client, SourceError> {
    type Clients = BTreeMap<(Option<PathBuf>, Duration), reqwest::blocking::Client>;
    static CLIENTS: Mutex<Clients> = Mutex::new(BTreeMap::new());
    let key = (ca.map(Path::to_path_buf), stall);
    let mut clients = CLIENTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let mut builder = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::custom(redirect))
        .connect_timeout(Duration::from_secs(30))
        .timeout(stall)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca {
        let bad = |source| SourceError::Ca { path: path.to_path_buf(), source };
        let mut pem = Vec::new();
        File::open(path)
            .and_then(|f| f.take(CA_FILE_LIMIT + 1).read_to_end(&mut pem))
            .map_err(|e| bad(Box::new(e)))?;
        if pem.len() as u64 > CA_FILE_LIMIT {
            return Err(bad(format!("it is larger than {CA_FILE_LIMIT} bytes").into()));
        }
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(Box::new(e)))?;
        if certs.is_empty() {
            return Err(bad("it holds no PEM certificate".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    let built = builder.build().map_err(SourceError::Client)?;
    clients.insert(key, built.clone());
    Ok(built)
}

/// How many redirects one request follows, as reqwest does by default.
const MAX_REDIRECTS: usize = 10;

/// Follows a redirect (mirrors move, as apt follows them) unless it leaves https for plain
/// http: a repository named by https is read over TLS to the end, as apt insists, so no
/// server can hand its readers to whoever sits on the plain-text path.
fn redirect(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    let from = attempt.previous().last().map(|u| u.scheme());
    if from == Some("https") && attempt.url().scheme() != "https" {
        let refused = Downgrade {
            from: attempt.previous().last().map(ToString::to_string).unwrap_or_default(),
            to: attempt.url().to_string(),
        };
        return attempt.error(refused);
    }
    if attempt.previous().len() > MAX_REDIRECTS {
        return attempt.error(TooManyRedirects { max: MAX_REDIRECTS });
    }
    attempt.follow()
}

/// A redirect from an https URL to one that is not.
#[derive(Debug, thiserror::Error)]
#[error("redirect from {from} to {to} refused: a repository read over https stays on https")]
pub struct Downgrade {
    pub from: String,
    pub to: String,
}

/// A chain of redirects longer than kiln follows.
#[derive(Debug, thiserror::Error)]
#[error("more than {max} redirects")]
pub struct TooManyRedirects {
    pub max: usize,
}

impl Source {
    /// The source a `[[repository]]` url names; `ca` is a PEM file of CA certificates an
    /// `https://` server's certificate may chain to besides the system's.
    pub fn parse(url: &str, ca: Option<&Path>) -> Result<Source, SourceError> {
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(Source::Folder(PathBuf::from(path)));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            let base = if url.ends_with('/') { url.to_string() } else { format!("{url}/") };
            let stall = stall_timeout()?;
            return Ok(Source::Http { base, client: client(ca, stall)?, stall });
        }
        Err(SourceError::Scheme { url: url.to_string() })
    }

    /// Where `path` (relative to the root) is, as messages show it.
    pub fn location(&self, path: &str) -> String {
        match self {
            Source::Folder(dir) => dir.join(path).display().to_string(),
            Source::Http { base, .. } => format!("{base}{}", escape(path)),
        }
    }

    /// The file on this machine `path` is, for a folder.
    pub fn local(&self, path: &str) -> Option<PathBuf> {
        match self {
            Source::Folder(dir) => Some(dir.join(path)),
            Source::Http { .. } => None,
        }
    }

    /// A reader of `path`, `Ok(None)` when the repository has no such file.
    fn open(&self, path: &str, retry: &mut Retry) -> io::Result<Option<Box<dyn Read>>> {
        match self {
            Source::Folder(dir) => match File::open(dir.join(path)) {
                Ok(f) => Ok(Some(Box::new(f))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Source::Http { base, client, stall } => {
                let url = format!("{base}{}", escape(path));
                let response = get(client, &url, retry).map_err(io::Error::other)?;
                Ok(response
                    .map(|inner| Box::new(Body { inner, url, stall: *stall }) as Box<dyn Read>))
            }
        }
    }

    /// Copies `path` into the new file `dest`, reading at most `limit + 1` bytes, so a file
    /// larger than `limit` arrives one byte too long for the caller's size check to refuse.
    pub fn copy_to(&self, path: &str, limit: u64, dest: &Path) -> io::Result<()> {
        let restart = |out: &mut File| {
            out.set_len(0)?;
            out.rewind()
        };
        let Some(out) = self.transfer(path, limit, || File::create_new(dest), restart)? else {
            return Err(match self {
                Source::Folder(_) => io::Error::from(io::ErrorKind::NotFound),
                Source::Http { .. } => io::Error::other(HttpError::Status {
                    url: self.location(path),
                    status: reqwest::StatusCode::NOT_FOUND,
                }),
            });
        };
        out.sync_all()
    }

    /// Reads `path` into the writer `make` gives once the file is found (at most
    /// `limit + 1` bytes), `Ok(None)` when there is no such file. A transfer that breaks
    /// after its answer began (the connection reset or closed early) starts over, after
    /// `restart` empties the writer, as a failed request is made again; a stall does not.
    /// Both share one budget of [`ATTEMPTS`] requests, so failures of both kinds cannot
    /// multiply into a long wait.
    fn transfer<W: Write>(
        &self,
        path: &str,
        limit: u64,
        make: impl FnOnce() -> io::Result<W>,
        restart: impl Fn(&mut W) -> io::Result<()>,
    ) -> io::Result<Option<W>> {
        let mut retry = Retry::new();
        let Some(mut reader) = self.open(path, &mut retry)? else { return Ok(None) };
        let mut out = make()?;
        loop {
            match io::copy(&mut (&mut reader).take(limit.saturating_add(1)), &mut out) {
                Ok(_) => return Ok(Some(out)),
                Err(e) if !retry.exhausted() && broken(&e) => {}
                Err(e) => return Err(e),
            }
            restart(&mut out)?;
            retry.wait(None);
            reader = match self.open(path, &mut retry)? {
                Some(r) => r,
                None => return Ok(None),
            };
        }
    }
}

/// Whether reading an answer's body failed because the transfer broke (reqwest's body
/// error: a reset, a close before the promised length), which reading it again may mend;
/// not a stall, and not a failure to write what was read.
fn broken(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
        .is_some_and(|r| (r.is_body() || r.is_decode()) && !r.is_timeout())
}

/// Whether a failed request may succeed if made again: the connection failed or timed
/// out, or the server said it is unwell (5xx) or busy (429). Any other answer is final.
fn transient(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// Whether a failed request was refused rather than lost: TLS reports a certificate it
/// does not trust (and any other handshake refusal) as invalid data, which no retry
/// changes.
fn refused(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        cause = match c.downcast_ref::<io::Error>() {
            Some(io) if io.kind() == io::ErrorKind::InvalidData => return true,
            // An io::Error's `source` skips the error it wraps: look into it.
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

/// GETs `url`, making the request again after a transient failure (waiting longer each
/// time, or as long as the server's `Retry-After` asks, within a bound). `Ok(None)` for 404.
fn get(
    client: &reqwest::blocking::Client,
    url: &str,
    retry: &mut Retry,
) -> Result<Option<reqwest::blocking::Response>, HttpError> {
    loop {
        let (failure, wait) = match client.get(url).send() {
            Ok(response) if response.status().is_success() => return Ok(Some(response)),
            Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => return Ok(None),
            Ok(response) => {
                let status = response.status();
                let failure = HttpError::Status { url: url.to_string(), status };
                if !transient(status) {
                    return Err(failure);
                }
                let asked = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
                (failure, asked)
            }
            Err(e) if (e.is_connect() || e.is_timeout() || e.is_request()) && !refused(&e) => {
                (HttpError::Request { url: url.to_string(), source: e }, None)
            }
            Err(e) => return Err(HttpError::Request { url: url.to_string(), source: e }),
        };
        if retry.exhausted() {
            return Err(HttpError::GaveUp { attempts: retry.attempt, last: Box::new(failure) });
        }
        retry.wait(wait);
    }
}

/// The requests one file's read has made and the wait before the next.
struct Retry {
    attempt: u32,
    backoff: Duration,
}

impl Retry {
    fn new() -> Retry {
        Retry { attempt: 1, backoff: FIRST_BACKOFF }
    }

    fn exhausted(&self) -> bool {
        self.attempt >= ATTEMPTS
    }

    /// Waits before the next request: the backoff, or longer when the server `asked`.
    fn wait(&mut self, asked: Option<Duration>) {
        std::thread::sleep(asked.unwrap_or(self.backoff).max(self.backoff));
        self.backoff *= 2;
        self.attempt += 1;
    }
}

/// An answer's body, whose stall (no byte for the stall timeout) is an error saying so.
struct Body {
    inner: reqwest::blocking::Response,
    url: String,
    stall: Duration,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let timed_out = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                .is_some_and(reqwest::Error::is_timeout);
            if timed_out {
                let stalled =
                    HttpError::Stalled { url: self.url.clone(), secs: self.stall.as_secs() };
                io::Error::new(io::ErrorKind::TimedOut, stalled)
            } else {
                e
            }
        })
    }
}

/// `path` as a URL path: a file name's `%` (as in `1%3a2.0`, an epoch kept in a file name)
/// and every other byte outside the unreserved set escaped, so the server finds the file
/// by its own name.
fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/+".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why an HTTP read failed: the URL and what the server answered.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("GET {url} failed")]
    Request { url: String, source: reqwest::Error },
    #[error("GET {url} answered HTTP {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("gave up after {attempts} attempts")]
    GaveUp {
        attempts: u32,
        #[source]
        last: Box<HttpError>,
    },
    #[error("{url} sent nothing for {secs} s ({STALL_VARIABLE} sets how long kiln waits)")]
    Stalled { url: String, secs: u64 },
}

impl Fetch for Source {
    fn get(&mut self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let clear = |bytes: &mut Vec<u8>| {
            bytes.clear();
            Ok(())
        };
        let Some(bytes) = self.transfer(path, limit, || Ok(Vec::new()), clear)? else {
            return Ok(None);
        };
        if bytes.len() as u64 > limit {
            return Err(io::Error::other(format!(
                "{} is larger than {limit} bytes",
                self.location(path)
            )));
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_folder_or_a_server_and_nothing_else() {
        assert!(
            matches!(Source::parse("file:///srv/d", None), Ok(Source::Folder(p)) if p == Path::new("/srv/d"))
        );
        let base = |url| match Source::parse(url, None) {
            Ok(Source::Http { base, .. }) => base,
            other => panic!("{other:?}"),
        };
        assert_eq!(base("http://h/d"), "http://h/d/");
        assert_eq!(base("https://h/d/"), "https://h/d/");
        assert!(matches!(Source::parse("ftp://h/d", None), Err(SourceError::Scheme { .. })));
    }

    #[test]
    fn a_stall_timeout_is_whole_seconds_from_one_to_a_day() {
        let parse = |v: &str| parse_stall(Some(v.to_string())).map_err(|e| e.to_string());
        assert_eq!(parse_stall(None).unwrap(), DEFAULT_STALL);
        assert_eq!(parse(" 5 ").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("86400").unwrap(), MAX_STALL);
        for bad in ["0", "-1", "1.5", "", "86401", "18446744073709551615", "99999999999999999999"] {
            let message = parse(bad).unwrap_err();
            assert!(message.contains("from 1 to 86400"), "{bad:?}: {message}");
        }
    }

    #[test]
    fn file_names_are_escaped_so_the_server_finds_them() {
        let source = Source::parse("http://h/", None).unwrap();
        assert_eq!(
            source.location("pool/main/b_1%3a1.0+b1~x_amd64.deb"),
            "http://h/pool/main/b_1%253a1.0+b1~x_amd64.deb"
        );
        assert_eq!(source.location("a b#?"), "http://h/a%20b%23%3F");
    }
}

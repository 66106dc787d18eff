//! Where a repository's files are read from: a folder (`file://`) or a web server
//! (`http://`, `https://`). Nothing here is trusted: the caller checks every byte against
//! the signed release or the lock, so plain HTTP is as safe as a folder. Every read is
//! bounded by a limit the caller gives.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::repository::Fetch;

/// A repository's root.
#[derive(Debug, Clone)]
pub enum Source {
    /// The folder holding `dists/` and `pool/`.
    Folder(PathBuf),
    /// The URL of that folder on a web server, ending in `/`.
    Http(String),
}

/// Why a repository URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("repository url {url:?} is neither file://, http:// nor https://")]
    Scheme { url: String },
    #[error("cannot set up an HTTP client")]
    Client(#[source] reqwest::Error),
}

/// One client for every repository, as the registry's: rustls with the system's roots, a
/// connect timeout, kiln's user agent.
fn client() -> Result<&'static reqwest::blocking::Client, SourceError> {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let built = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(None)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(SourceError::Client)?;
    Ok(CLIENT.get_or_init(|| built))
}

impl Source {
    /// The source a `[[repository]]` url names.
    pub fn parse(url: &str) -> Result<Source, SourceError> {
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(Source::Folder(PathBuf::from(path)));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            let base = if url.ends_with('/') { url.to_string() } else { format!("{url}/") };
            return Ok(Source::Http(base));
        }
        Err(SourceError::Scheme { url: url.to_string() })
    }

    /// Where `path` (relative to the root) is, as messages show it.
    pub fn location(&self, path: &str) -> String {
        match self {
            Source::Folder(dir) => dir.join(path).display().to_string(),
            Source::Http(base) => format!("{base}{}", escape(path)),
        }
    }

    /// The file on this machine `path` is, for a folder.
    pub fn local(&self, path: &str) -> Option<PathBuf> {
        match self {
            Source::Folder(dir) => Some(dir.join(path)),
            Source::Http(_) => None,
        }
    }

    /// A reader of `path`, `Ok(None)` when the repository has no such file.
    fn open(&self, path: &str) -> io::Result<Option<Box<dyn Read>>> {
        match self {
            Source::Folder(dir) => match File::open(dir.join(path)) {
                Ok(f) => Ok(Some(Box::new(f))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Source::Http(base) => {
                let url = format!("{base}{}", escape(path));
                let client = client().map_err(io::Error::other)?;
                let response = client.get(&url).send().map_err(|e| {
                    io::Error::other(HttpError::Request { url: url.clone(), source: e })
                })?;
                let status = response.status();
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !status.is_success() {
                    return Err(io::Error::other(HttpError::Status { url, status }));
                }
                Ok(Some(Box::new(response)))
            }
        }
    }

    /// Copies `path` into the new file `dest`, reading at most `limit + 1` bytes, so a file
    /// larger than `limit` arrives one byte too long for the caller's size check to refuse.
    pub fn copy_to(&self, path: &str, limit: u64, dest: &Path) -> io::Result<()> {
        let Some(reader) = self.open(path)? else {
            return Err(match self {
                Source::Folder(_) => io::Error::from(io::ErrorKind::NotFound),
                Source::Http(_) => io::Error::other(HttpError::Status {
                    url: self.location(path),
                    status: reqwest::StatusCode::NOT_FOUND,
                }),
            });
        };
        let mut out = File::create_new(dest)?;
        io::copy(&mut reader.take(limit.saturating_add(1)), &mut out)?;
        out.sync_all()
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
}

impl Fetch for Source {
    fn get(&mut self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(reader) = self.open(path)? else { return Ok(None) };
        let mut bytes = Vec::new();
        reader.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
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
            matches!(Source::parse("file:///srv/d"), Ok(Source::Folder(p)) if p == Path::new("/srv/d"))
        );
        assert!(matches!(Source::parse("http://h/d"), Ok(Source::Http(u)) if u == "http://h/d/"));
        assert!(
            matches!(Source::parse("https://h/d/"), Ok(Source::Http(u)) if u == "https://h/d/")
        );
        assert!(matches!(Source::parse("ftp://h/d"), Err(SourceError::Scheme { .. })));
    }

    #[test]
    fn file_names_are_escaped_so_the_server_finds_them() {
        let source = Source::Http("http://h/".into());
        assert_eq!(
            source.location("pool/main/b_1%3a1.0+b1~x_amd64.deb"),
            "http://h/pool/main/b_1%253a1.0+b1~x_amd64.deb"
        );
        assert_eq!(source.location("a b#?"), "http://h/a%20b%23%3F");
    }
}

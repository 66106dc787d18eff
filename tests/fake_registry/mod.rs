//! A registry that misbehaves on purpose, for what a real one will not do on demand (a
//! manifest over the size limit, 500s, a connection cut mid-blob, a bearer token server).
//! It listens on 127.0.0.1 on a port the kernel picks, answers each request on a connection
//! of its own (`Connection: close`) from a handler, and logs every request. Its thread ends
//! with the test process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, e.g. `/v2/r/blobs/sha256:...`.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What to answer.
pub enum Answer {
    /// A whole answer.
    Full { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Headers announcing `body.len()` bytes, then only the first `sent` of them, then the
    /// connection closes.
    Cut { status: u16, headers: Vec<(String, String)>, body: Vec<u8>, sent: usize },
    /// No answer: the connection closes.
    Drop,
    /// Headers announcing `body.len()` bytes and the first `sent` of them, then nothing, the
    /// connection held open until the client hangs up; `None`: not even the headers.
    Stall { status: u16, headers: Vec<(String, String)>, body: Vec<u8>, sent: Option<usize> },
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer::Full { status, headers: Vec::new(), body: Vec::new() }
    }

    pub fn body(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer::Full { status, headers: Vec::new(), body: body.into() }
    }

    pub fn with(mut self, name: &str, value: &str) -> Answer {
        match &mut self {
            Answer::Full { headers, .. }
            | Answer::Cut { headers, .. }
            | Answer::Stall { headers, .. } => headers.push((name.to_string(), value.to_string())),
            Answer::Drop => {}
        }
        self
    }

    /// No answer at all, the connection held open until the client hangs up.
    pub fn silent() -> Answer {
        Answer::Stall { status: 200, headers: Vec::new(), body: Vec::new(), sent: None }
    }

    /// `bytes` from the offset a `Range: bytes=N-` header asks for (206), else whole (200).
    pub fn range(request: &Request, bytes: &[u8]) -> Answer {
        let from = request
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        match from {
            Some(from) => Answer::body(206, bytes[from..].to_vec()).with(
                "Content-Range",
                &format!("bytes {from}-{}/{}", bytes.len() - 1, bytes.len()),
            ),
            None => Answer::body(200, bytes.to_vec()),
        }
    }

    /// This answer, cut off after half its body.
    pub fn cut(self) -> Answer {
        match self {
            Answer::Full { status, headers, body } => {
                let sent = body.len() / 2;
                Answer::Cut { status, headers, body, sent }
            }
            cut => cut,
        }
    }

    /// This answer, stalled after half its body.
    pub fn stalled(self) -> Answer {
        match self {
            Answer::Full { status, headers, body } => {
                let sent = Some(body.len() / 2);
                Answer::Stall { status, headers, body, sent }
            }
            stalled => stalled,
        }
    }
}

type Handler = dyn Fn(&Request, usize) -> Answer + Send + Sync;

/// A running fake: its address and the requests it has answered.
pub struct Fake {
    pub host: String,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    /// Starts a fake answering each request with `handler(request, n)`, where `n` counts the
    /// earlier requests with the same method and target.
    pub fn start(handler: impl Fn(&Request, usize) -> Answer + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let shared = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, handler) = (shared.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, &log, &*handler));
            }
        });
        Fake { host, log }
    }

    /// The most times one target was asked for with `method`.
    pub fn most_repeats(&self, method: &str) -> usize {
        let log = self.log.lock().unwrap();
        let targets: Vec<&str> =
            log.iter().filter(|r| r.method == method).map(|r| r.target.as_str()).collect();
        targets.iter().map(|t| targets.iter().filter(|u| *u == t).count()).max().unwrap_or(0)
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// How many requests had this method and a target starting with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|r| r.method == method && r.target.starts_with(prefix)).count()
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<Request>>, handler: &Handler) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.trim_end().split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut request = Request { method, target, headers, body: Vec::new() };
    // The body, if any, is read whole, so the client is never cut off while sending.
    let length = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0u64);
    let mut body = Vec::new();
    if let Err(e) = (&mut reader).take(length).read_to_end(&mut body) {
        eprintln!("fake registry: reading the body of {line:?}: {e}");
    }
    request.body = body;
    let n = {
        let mut log = log.lock().unwrap();
        let n = log.iter().filter(|r| r.method == request.method && r.target == request.target);
        let n = n.count();
        log.push(request.clone());
        n
    };
    let mut stream = stream;
    let answer = handler(&request, n);
    let (status, headers, body, sent, stall) = match answer {
        Answer::Full { status, headers, body } => {
            let sent = body.len();
            (status, headers, body, sent, false)
        }
        Answer::Cut { status, headers, body, sent } => (status, headers, body, sent, false),
        Answer::Stall { sent: None, .. } => return wait_for_hang_up(reader),
        Answer::Stall { status, headers, body, sent: Some(sent) } => {
            (status, headers, body, sent, true)
        }
        Answer::Drop => return,
    };
    let mut head =
        format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // The client may hang up first (it refuses a manifest by its length): said, not failed.
    let mut written = stream.write_all(head.as_bytes());
    if written.is_ok() && request_has_body(&line) {
        written = stream.write_all(&body[..sent]).and_then(|()| stream.flush());
    }
    if let Err(e) = written {
        eprintln!("fake registry: the client hung up on {line:?}: {e}");
    }
    if stall {
        wait_for_hang_up(reader);
    }
}

/// Holds the connection open, sending nothing, until the client closes it (or, should it
/// never, for a few minutes, so that no thread outlives a test by long).
fn wait_for_hang_up(mut reader: BufReader<TcpStream>) {
    if let Err(e) = reader.get_ref().set_read_timeout(Some(std::time::Duration::from_secs(300))) {
        eprintln!("fake registry: cannot set a read timeout: {e}");
        return;
    }
    let mut sink = [0u8; 4096];
    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
}

/// HEAD answers carry no body.
fn request_has_body(request_line: &str) -> bool {
    !request_line.starts_with("HEAD ")
}

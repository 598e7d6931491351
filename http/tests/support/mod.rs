//! A canned-response HTTP/1.1 server on 127.0.0.1 for the integration tests: each connection
//! gets one scripted answer (then the connection closes), and every request is recorded. It is
//! a fixture that says exactly what the test tells it to, not a model of TradingView.
//!
//! Bounded: at most `MAX_CONNECTIONS` connections, requests of at most 1 MiB, a hanging answer
//! holds its connection for at most `HANG_FOR`, and the server stops when dropped.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tickwire_http::{Bases, HttpConfig};

const MAX_CONNECTIONS: usize = 200;
const MAX_REQUEST: usize = 1024 * 1024;
const HANG_FOR: Duration = Duration::from_secs(20);

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The raw (still encoded) query.
    pub fn raw_query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, query)| query)
    }

    /// A query parameter, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        pairs(self.raw_query())
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// A form field, decoded.
    pub fn form(&self, name: &str) -> Option<String> {
        pairs(std::str::from_utf8(&self.body).ok()?)
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The value of one cookie in the Cookie header.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header("cookie")?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_owned())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON request body")
    }
}

/// `a=1&b=x+y%26` decoded as application/x-www-form-urlencoded.
pub fn pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(key), form_decode(value))
        })
        .collect()
}

/// `+` is a space, `%XX` a byte; the bytes must be UTF-8.
pub fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).expect("UTF-8 after decoding")
}

/// What the server answers one request with.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A whole response with a Content-Length.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A close-delimited body of `total` bytes (no Content-Length), written in pieces.
    Stream { status: u16, total: usize },
    /// Headers with a Content-Length of `declared`, then nothing.
    Declared { status: u16, declared: u64 },
    /// Reads the request and never answers.
    Hang,
}

impl Answer {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::Full {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "application/json", body)
    }

    pub fn html(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "text/html; charset=utf-8", body)
    }

    pub fn redirect(status: u16, location: &str) -> Self {
        Self::Full {
            status,
            headers: vec![("Location".into(), location.into())],
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Self::Full { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

type Handler = dyn Fn(&Recorded, usize) -> Answer + Send + Sync;

/// The running server; stops when dropped.
pub struct Server {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// Serves `handler(request, index)` (index counts requests from 0) until dropped.
pub fn serve(handler: impl Fn(&Recorded, usize) -> Answer + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let handler: Arc<Handler> = Arc::new(handler);
    let counter = Arc::new(AtomicUsize::new(0));
    let accept = {
        let (requests, stop) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(MAX_CONNECTIONS) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (requests, stop, handler, counter) = (
                    requests.clone(),
                    stop.clone(),
                    handler.clone(),
                    counter.clone(),
                );
                std::thread::spawn(move || {
                    handle(stream, &requests, &stop, &*handler, &counter);
                });
            }
        })
    };
    Server {
        address,
        requests,
        stop,
        accept: Some(accept),
    }
}

/// Always answers `answer`.
pub fn serve_always(answer: Answer) -> Server {
    serve(move |_, _| answer.clone())
}

impl Server {
    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A config with all three bases here and short timeouts.
    pub fn config(&self) -> HttpConfig {
        HttpConfig {
            bases: Bases::single(&self.base()),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            ..HttpConfig::default()
        }
    }

    pub fn client(&self) -> tickwire_http::HttpClient {
        tickwire_http::HttpClient::new(self.config())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn handle(
    mut stream: TcpStream,
    requests: &Mutex<Vec<Recorded>>,
    stop: &AtomicBool,
    handler: &Handler,
    counter: &AtomicUsize,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    let index = counter.fetch_add(1, Ordering::SeqCst);
    requests
        .lock()
        .expect("requests lock")
        .push(request.clone());
    match handler(&request, index) {
        Answer::Full {
            status,
            headers,
            body,
        } => {
            let mut head = format!("HTTP/1.1 {status} Canned\r\nConnection: close\r\n");
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
        Answer::Stream { status, total } => {
            let head = format!(
                "HTTP/1.1 {status} Canned\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let piece = vec![b'x'; 64 * 1024];
            let mut left = total;
            while left > 0 {
                let size = left.min(piece.len());
                // The client hanging up once it has read enough ends the stream.
                if stream.write_all(&piece[..size]).is_err() {
                    return;
                }
                left -= size;
            }
        }
        Answer::Declared { status, declared } => {
            let head = format!(
                "HTTP/1.1 {status} Canned\r\nConnection: close\r\nContent-Length: {declared}\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            hold(stop, Duration::from_secs(5));
        }
        Answer::Hang => hold(stop, HANG_FOR),
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Let the client read the answer before the socket goes away.
    let mut sink = [0u8; 1024];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Keeps the connection open, silent, until the server stops or `limit` passes.
fn hold(stop: &AtomicBool, limit: Duration) {
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_REQUEST {
            return None;
        }
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Fails when any of `secrets` occurs in `text`.
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "a secret ({} chars) leaked into: {text}",
            secret.len()
        );
    }
}

/// `error`'s Display and Debug hold none of `secrets`.
pub fn assert_error_is_clean(error: &(impl std::fmt::Display + std::fmt::Debug), secrets: &[&str]) {
    assert_no_secret(&error.to_string(), secrets);
    assert_no_secret(&format!("{error:?}"), secrets);
}

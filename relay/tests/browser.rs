//! The relay's web page in real headless Chromium, driven over the Chrome DevTools Protocol.
//!
//! Two scenarios:
//! - `page_speaks_the_protocol`: the page served by a scripted server in this file, which plays
//!   the relay's side message by message (snapshots, deltas that clear fields, malformed frames,
//!   a slow-consumer warning, an upstream rejection, the add form and remove button, a dropped
//!   socket) and checks what the page sends back.
//! - `page_follows_the_relay_through_a_restart`: the real relay in front of the emulator; the
//!   relay is shut down and started again on the same port while the page is open.
//!
//! Chromium is `$TICKWIRE_CHROMIUM` or `/usr/bin/chromium`. When it is missing the tests print
//! a loud "skipped" line and pass, unless `TICKWIRE_REQUIRE_BROWSER` is set (as CI does), in
//! which case they fail. Every wait polls the page with a deadline and, on timeout, panics with
//! what was expected and what the page showed.
#![cfg(unix)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tickwire_emulator::EmulatorConfig;
use tickwire_relay::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use tickwire_emulator::BackgroundEmulator as Server;

/// How long any one expectation may take to come true.
const DEADLINE: Duration = Duration::from_secs(20);

/// The page, as the relay serves it.
const PAGE: &str = include_str!("../../relay/src/page.html");

// ---- Chromium ---------------------------------------------------------------------------------

/// The Chromium executable, or `None` (after saying so loudly) when the browser tests are to be
/// skipped. Panics when it is missing and `TICKWIRE_REQUIRE_BROWSER` is set.
fn chromium_or_skip() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("TICKWIRE_CHROMIUM") {
        Some(path) if !path.is_empty() => vec![PathBuf::from(path)],
        _ => ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .map(PathBuf::from)
            .collect(),
    };
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Some(found.clone());
    }
    let required = std::env::var("TICKWIRE_REQUIRE_BROWSER")
        .is_ok_and(|value| !value.is_empty() && value != "0");
    assert!(
        !required,
        "TICKWIRE_REQUIRE_BROWSER is set but no Chromium was found at {candidates:?}: \
         install it (apt-get install -y chromium) or point TICKWIRE_CHROMIUM at it"
    );
    eprintln!(
        "\n**********************************************************************\n\
         *** browser test skipped: chromium not found at {candidates:?}\n\
         *** (apt-get install -y chromium, or set TICKWIRE_CHROMIUM; set\n\
         ***  TICKWIRE_REQUIRE_BROWSER=1 to make this a failure)\n\
         **********************************************************************\n"
    );
    None
}

/// A Chromium process with a profile directory of its own. Dropping it (also while a test
/// panics) kills the browser's whole process group and removes the directory.
struct ChromiumProcess {
    child: Child,
    dir: PathBuf,
}

impl ChromiumProcess {
    fn spawn(exe: &Path, url: &str) -> ChromiumProcess {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("tickwire-chromium-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create Chromium's profile directory");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("create Chromium's log");
        let log_err = log.try_clone().expect("clone the log handle");
        let child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--mute-audio",
                "--password-store=basic",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // A group of its own, so the renderer and helper processes go with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", exe.display()));
        ChromiumProcess { child, dir }
    }

    /// The last lines Chromium printed, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for Chromium to write the DevTools port into its profile directory.
    async fn devtools_port(&mut self) -> u16 {
        let path = self.dir.join("DevToolsActivePort");
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let mut lines = text.lines();
                if let (Some(port), Some(_browser)) = (lines.next(), lines.next()) {
                    if let Ok(port) = port.trim().parse() {
                        return port;
                    }
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "Chromium exited ({status}) before opening DevTools; its log:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "Chromium wrote no {} within {DEADLINE:?}; its log:\n{}",
                path.display(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChromiumProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Chromium's log (last lines) ---\n{}", self.log_tail());
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helper processes may still be letting go of files for a moment.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// One HTTP/1.1 GET on loopback (DevTools refuses HTTP/1.0); the body, when the status is 200.
async fn http_get(port: u16, path: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|error| error.to_string())?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|error| error.to_string())?;
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                });
                if n == 0 || length.is_some_and(|length| body.len() >= length) {
                    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
                        return Err(format!("unexpected response: {head}"));
                    }
                    return Ok(body.to_owned());
                }
            }
            if n == 0 {
                return Err(format!("incomplete response: {text:?}"));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("no complete response to GET {path} within 5 s"))?
}

type CdpSocket = WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Headless Chromium showing one page, and a DevTools connection to that page.
struct Browser {
    cdp: CdpSocket,
    next_id: u64,
    // Declared last: dropped after the DevTools socket.
    _process: ChromiumProcess,
}

/// What the page shows, as one JSON object: the connection indicator, the rows, the stats.
const VIEW: &str = r#"(() => {
  const text = (el) => el ? el.textContent : null;
  const conn = document.getElementById('connection');
  return {
    href: location.href,
    ready: document.readyState,
    state: conn ? conn.getAttribute('data-state') : null,
    label: conn ? text(conn.querySelector('.label')) : null,
    upstream: text(document.getElementById('upstream')),
    notice: text(document.getElementById('notice')),
    stats: window.tickwireStats || null,
    pace: (document.getElementById('interval') || {}).value,
    pace_effect: text(document.getElementById('interval-effect')),
    rows: Array.from(document.querySelectorAll('tr[data-symbol]')).map((row) => {
      const price = row.querySelector('.price');
      const svg = row.querySelector('.spark svg');
      const line = row.querySelector('.spark polyline');
      const value = price ? price.getAttribute('data-value') : null;
      return {
        symbol: row.getAttribute('data-symbol'),
        price: text(price),
        value: value === null ? null : Number(value),
        change: text(row.querySelector('.change')),
        change_pct: text(row.querySelector('.change-pct')),
        change_class: (row.querySelector('.change-pct') || {}).className || null,
        points: line ? (line.getAttribute('points') || '').split(' ').filter(Boolean).length : 0,
        count: svg ? Number(svg.getAttribute('data-count')) : 0,
        updates: Number(row.getAttribute('data-updates') || 0),
        interval: row.getAttribute('data-interval'),
      };
    }),
  };
})()"#;

impl Browser {
    /// Starts Chromium on `url` and connects to the page over DevTools.
    async fn launch(exe: &Path, url: &str) -> Browser {
        let mut process = ChromiumProcess::spawn(exe, url);
        let port = process.devtools_port().await;
        let start = Instant::now();
        let debugger_url = loop {
            let targets = http_get(port, "/json/list").await;
            let found = targets.as_ref().ok().and_then(|body| {
                let list: Value = serde_json::from_str(body).ok()?;
                list.as_array()?
                    .iter()
                    .find(|target| target["type"] == "page")
                    .and_then(|target| target["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            });
            if let Some(found) = found {
                break found;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no page target in DevTools' /json/list within {DEADLINE:?}; last answer: \
                 {targets:?}; Chromium's log:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (cdp, _) = tokio_tungstenite::connect_async(debugger_url.as_str())
            .await
            .unwrap_or_else(|error| panic!("cannot open DevTools at {debugger_url}: {error}"));
        Browser {
            cdp,
            next_id: 1,
            _process: process,
        }
    }

    /// One DevTools command; its result, or the protocol's error.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.cdp
            .send(Message::text(request.to_string()))
            .await
            .map_err(|error| format!("DevTools send: {error}"))?;
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(message) = self.cdp.next().await {
                let message = message.map_err(|error| format!("DevTools socket: {error}"))?;
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                // Anything else is an event; none are enabled, but skip them all the same.
                if value["id"] == id {
                    return Ok(value);
                }
            }
            Err("DevTools socket closed".to_owned())
        })
        .await
        .map_err(|_| format!("no reply to {method} within 10 s"))??;
        if let Some(error) = reply.get("error") {
            return Err(format!("{method}: {error}"));
        }
        Ok(reply["result"].clone())
    }

    /// Evaluates a JavaScript expression in the page (promises awaited); its JSON value.
    async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("the page threw: {exception}"));
        }
        Ok(result["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Evaluates an expression that must succeed.
    async fn run(&mut self, expression: &str) -> Value {
        self.eval(expression)
            .await
            .unwrap_or_else(|error| panic!("evaluating `{expression}`: {error}"))
    }

    /// Polls the page's [`VIEW`] until `check` holds; that view. Panics after [`DEADLINE`] with
    /// `what` and the last view.
    async fn wait_until(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let view = match self.eval(VIEW).await {
                Ok(view) if check(&view) => {
                    eprintln!(
                        "browser: after {:>5} ms: {what}",
                        start.elapsed().as_millis()
                    );
                    return view;
                }
                Ok(view) => view,
                Err(error) => json!({ "error": error }),
            };
            if start.elapsed() > DEADLINE {
                panic!(
                    "waited {DEADLINE:?} for: {what}\nthe page showed:\n{}",
                    serde_json::to_string_pretty(&view).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---- reading a view ---------------------------------------------------------------------------

fn state(view: &Value) -> &str {
    view["state"].as_str().unwrap_or("")
}

fn row<'a>(view: &'a Value, symbol: &str) -> Option<&'a Value> {
    view["rows"]
        .as_array()?
        .iter()
        .find(|row| row["symbol"] == symbol)
}

/// The numeric price a row shows, if it shows one.
fn price(view: &Value, symbol: &str) -> Option<f64> {
    row(view, symbol).and_then(|row| row["value"].as_f64())
}

fn symbols(view: &Value) -> Vec<String> {
    view["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|row| row["symbol"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn stat(view: &Value, name: &str) -> u64 {
    view["stats"][name].as_u64().unwrap_or(0)
}

/// The update interval the relay confirmed for a row ("" for every change, null before any).
fn interval<'a>(view: &'a Value, symbol: &str) -> Option<&'a str> {
    row(view, symbol).and_then(|row| row["interval"].as_str())
}

/// Data messages a row has received.
fn updates(view: &Value, symbol: &str) -> u64 {
    row(view, symbol)
        .and_then(|row| row["updates"].as_u64())
        .unwrap_or(0)
}

/// Picks an entry of the page's update-interval menu, as a viewer would.
const PICK_INTERVAL: &str = "(value) => { const select = document.getElementById('interval'); \
     select.value = value; select.dispatchEvent(new Event('change')); return select.value; }";

// ---- scripted server --------------------------------------------------------------------------

/// Serves the page (and `/symbols`) over HTTP and hands every `/ws` connection to the test.
struct ScriptedServer {
    addr: SocketAddr,
    sockets: mpsc::UnboundedReceiver<WebSocketStream<TcpStream>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    async fn start(symbols: &'static str) -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, sockets) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, symbols, sender).await;
                });
            }
        });
        ScriptedServer {
            addr,
            sockets,
            task,
        }
    }

    /// The next WebSocket the page opens.
    async fn next_socket(&mut self) -> WebSocketStream<TcpStream> {
        tokio::time::timeout(DEADLINE, self.sockets.recv())
            .await
            .unwrap_or_else(|_| panic!("the page opened no WebSocket within {DEADLINE:?}"))
            .unwrap()
    }
}

async fn serve(
    mut stream: TcpStream,
    symbols: &str,
    sockets: mpsc::UnboundedSender<WebSocketStream<TcpStream>>,
) -> std::io::Result<()> {
    // Look at the request line without consuming it, so a WebSocket upgrade can be handed to
    // tungstenite whole.
    let mut buffer = [0u8; 1024];
    let line = loop {
        let n = stream.peek(&mut buffer).await?;
        let seen = &buffer[..n];
        if let Some(end) = seen.windows(2).position(|pair| pair == b"\r\n") {
            break String::from_utf8_lossy(&seen[..end]).into_owned();
        }
        if n == 0 || n == buffer.len() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let path = line.split(' ').nth(1).unwrap_or("");
    if path == "/ws" {
        if let Ok(socket) = tokio_tungstenite::accept_async(stream).await {
            let _ = sockets.send(socket);
        }
        return Ok(());
    }
    // Read the rest of the request head.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let (status, kind, body) = if path == "/" || path.starts_with("/?") {
        ("200 OK", "text/html; charset=utf-8", PAGE.to_owned())
    } else if path == "/symbols" {
        ("200 OK", "application/json", symbols.to_owned())
    } else {
        ("404 Not Found", "text/plain", "not found".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The next JSON text message from the page (pings and control frames skipped).
async fn receive(socket: &mut WebSocketStream<TcpStream>, what: &str) -> Value {
    let received = tokio::time::timeout(DEADLINE, async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|error| panic!("the page sent non-JSON {text:?}: {error}"));
                    if value["action"] != "ping" {
                        return Some(value);
                    }
                }
                Ok(_) => {}
                Err(error) => panic!("the page's socket failed while waiting for {what}: {error}"),
            }
        }
        None
    })
    .await;
    match received {
        Ok(Some(value)) => value,
        Ok(None) => panic!("the page closed its socket while the test waited for {what}"),
        Err(_) => panic!("the page sent no {what} within {DEADLINE:?}"),
    }
}

async fn send(socket: &mut WebSocketStream<TcpStream>, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_speaks_the_protocol() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    // No `?symbols=`: the page takes its list from /symbols.
    let mut server = ScriptedServer::start(r#"["AAA:ONE","BBB:TWO","CCC:THREE"]"#).await;
    let mut browser = Browser::launch(&exe, &format!("http://{}/", server.addr)).await;

    let mut socket = server.next_socket().await;
    let subscribe = receive(&mut socket, "a subscribe").await;
    assert_eq!(
        subscribe,
        json!({ "action": "subscribe", "symbols": ["AAA:ONE", "BBB:TWO", "CCC:THREE"] }),
        "the page subscribes to what /symbols lists"
    );

    send(&mut socket, json!({ "type": "status", "upstream": "live" })).await;
    send(
        &mut socket,
        json!({ "type": "snapshot", "symbol": "AAA:ONE", "bar": null, "quote": {
            "lp": 100.5, "ch": 1.5, "chp": 1.52, "description": "Company One", "currency_code": "USD" } }),
    )
    .await;
    send(
        &mut socket,
        json!({ "type": "snapshot", "symbol": "BBB:TWO", "quote": null,
                "bar": { "time": 1_700_000_000, "open": 1, "high": 2, "low": 0.5, "close": 1.5, "volume": 10 } }),
    )
    .await;
    send(
        &mut socket,
        json!({ "type": "snapshot", "symbol": "CCC:THREE", "quote": { "lp": 3, "ch": -0.25, "chp": -7.69 }, "bar": null }),
    )
    .await;
    // Frames the page must shrug off: four malformed, three well-formed but meaningless.
    for junk in ["not json", "[1,2]", r#"{"no":"type"}"#] {
        socket.send(Message::text(junk)).await.unwrap();
    }
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    send(
        &mut socket,
        json!({ "type": "mystery", "symbol": "AAA:ONE" }),
    )
    .await;
    send(
        &mut socket,
        json!({ "type": "quote", "symbol": "ZZZ:NONE", "data": { "lp": 1 } }),
    )
    .await;
    send(
        &mut socket,
        json!({ "type": "quote", "symbol": "AAA:ONE", "data": "nonsense" }),
    )
    .await;
    // Deltas: a new price and a cleared change; a first price for a row that had none.
    send(
        &mut socket,
        json!({ "type": "quote", "symbol": "AAA:ONE", "data": { "lp": 101.25, "ch": null } }),
    )
    .await;
    send(
        &mut socket,
        json!({ "type": "quote", "symbol": "BBB:TWO", "data": { "lp": 7 } }),
    )
    .await;
    send(
        &mut socket,
        json!({ "type": "bar", "symbol": "BBB:TWO", "timeframe": "1", "closed": false,
                "bar": { "time": 1_700_000_060, "open": 1.5, "high": 7, "low": 1.5, "close": 7, "volume": 3 } }),
    )
    .await;

    let view = browser
        .wait_until(
            "connected, upstream live, every message handled, AAA:ONE at 101.25 with its change \
             cleared, BBB:TWO at 7, CCC:THREE at 3",
            |view| {
                state(view) == "connected"
                    && view["upstream"] == "live"
                    && stat(view, "messages") >= 10
                    && stat(view, "malformed") >= 4
                    && price(view, "AAA:ONE") == Some(101.25)
                    && price(view, "BBB:TWO") == Some(7.0)
                    && price(view, "CCC:THREE") == Some(3.0)
            },
        )
        .await;
    let one = row(&view, "AAA:ONE").unwrap();
    assert_eq!(one["price"], "101.25", "{view:#}");
    assert_eq!(one["change"], "", "a null clears the change: {view:#}");
    assert_eq!(one["change_pct"], "+1.52%", "{view:#}");
    assert!(
        one["change_class"].as_str().unwrap().contains("up"),
        "{view:#}"
    );
    assert_eq!(one["count"], 2, "two prices in the sparkline: {view:#}");
    assert_eq!(one["points"], 2, "{view:#}");
    let three = row(&view, "CCC:THREE").unwrap();
    assert_eq!(three["change_pct"], "-7.69%", "{view:#}");
    assert!(
        three["change_class"].as_str().unwrap().contains("down"),
        "{view:#}"
    );
    assert_eq!(
        (stat(&view, "messages"), stat(&view, "malformed")),
        (10, 4),
        "{view:#}"
    );
    assert_eq!(symbols(&view), ["AAA:ONE", "BBB:TWO", "CCC:THREE"]);
    assert_eq!(
        stat(&view, "updates"),
        6,
        "three snapshots and three deltas: {view:#}"
    );
    assert_eq!(
        interval(&view, "AAA:ONE"),
        Some(""),
        "every change: {view:#}"
    );

    // The viewer picks "every 1 s": every row is subscribed again with it, and the answers
    // (snapshots) confirm it.
    assert_eq!(
        browser.run(&format!("({PICK_INTERVAL})('1')")).await,
        json!("1")
    );
    assert_eq!(
        receive(&mut socket, "a subscribe with the interval").await,
        json!({ "action": "subscribe", "symbols": ["AAA:ONE", "BBB:TWO", "CCC:THREE"], "update_interval": 1 })
    );
    for (symbol, quote) in [
        (
            "AAA:ONE",
            json!({ "lp": 101.25, "chp": 1.52, "description": "Company One", "currency_code": "USD" }),
        ),
        ("BBB:TWO", json!({ "lp": 7 })),
        ("CCC:THREE", json!({ "lp": 3, "ch": -0.25, "chp": -7.69 })),
    ] {
        send(
            &mut socket,
            json!({ "type": "snapshot", "symbol": symbol, "quote": quote, "bar": null, "update_interval": 1 }),
        )
        .await;
    }
    let view = browser
        .wait_until("every row confirmed at 1 s, the URL saying so", |view| {
            ["AAA:ONE", "BBB:TWO", "CCC:THREE"]
                .iter()
                .all(|symbol| interval(view, symbol) == Some("1"))
                && view["href"].as_str().unwrap_or("").contains("interval=1")
        })
        .await;
    assert_eq!(view["pace"], "1", "{view:#}");
    assert_eq!(
        view["pace_effect"], "",
        "the relay confirmed what was asked: {view:#}"
    );
    assert_eq!(stat(&view, "interval"), 1, "{view:#}");
    // A later snapshot without the key (a catch-up, not an answer) keeps the pace.
    send(
        &mut socket,
        json!({ "type": "snapshot", "symbol": "AAA:ONE", "quote": { "lp": 101.25, "chp": 1.52 }, "bar": null }),
    )
    .await;
    let view = browser
        .wait_until("the catch-up snapshot counted", |view| {
            updates(view, "AAA:ONE") == 4
        })
        .await;
    assert_eq!(interval(&view, "AAA:ONE"), Some("1"), "{view:#}");

    // A slow-consumer warning shows as "slow" for about ten seconds.
    let warned = Instant::now();
    send(
        &mut socket,
        json!({ "type": "warning", "code": "SLOW_CONSUMER", "message": "conflating" }),
    )
    .await;
    browser
        .wait_until("the indicator to say slow", |view| state(view) == "slow")
        .await;

    // The upstream rejects a symbol: its row goes.
    send(
        &mut socket,
        json!({ "type": "error", "code": "UNKNOWN_SYMBOL", "message": "no such symbol", "symbol": "CCC:THREE" }),
    )
    .await;
    let view = browser
        .wait_until("CCC:THREE's row to be removed", |view| {
            row(view, "CCC:THREE").is_none()
        })
        .await;
    assert!(
        view["notice"].as_str().unwrap().contains("UNKNOWN_SYMBOL"),
        "{view:#}"
    );

    // The remove button unsubscribes.
    browser
        .run(
            r#"document.querySelector('tr[data-symbol="BBB:TWO"] td.remove button').click(), true"#,
        )
        .await;
    assert_eq!(
        receive(&mut socket, "an unsubscribe").await,
        json!({ "action": "unsubscribe", "symbols": ["BBB:TWO"] })
    );
    send(
        &mut socket,
        json!({ "type": "unsubscribed", "symbol": "BBB:TWO" }),
    )
    .await;

    // The form subscribes (upper-casing what was typed).
    browser
        .run(
            "document.getElementById('add-symbol').value = ' ddd:four ', \
             document.getElementById('add-form').requestSubmit(), true",
        )
        .await;
    assert_eq!(
        receive(&mut socket, "a subscribe from the form").await,
        json!({ "action": "subscribe", "symbols": ["DDD:FOUR"], "update_interval": 1 })
    );
    // A rate-limited (ignored) subscribe is asked again for rows still without a snapshot.
    send(
        &mut socket,
        json!({ "type": "error", "code": "RATE_LIMITED", "message": "slow down" }),
    )
    .await;
    assert_eq!(
        receive(&mut socket, "the subscribe again after RATE_LIMITED").await,
        json!({ "action": "subscribe", "symbols": ["DDD:FOUR"], "update_interval": 1 })
    );
    send(
        &mut socket,
        json!({ "type": "snapshot", "symbol": "DDD:FOUR", "quote": { "lp": 0.000_123_4 }, "bar": null }),
    )
    .await;
    let view = browser
        .wait_until("DDD:FOUR at 0.0001234, BBB:TWO gone", |view| {
            price(view, "DDD:FOUR") == Some(0.000_123_4) && row(view, "BBB:TWO").is_none()
        })
        .await;
    assert_eq!(symbols(&view), ["AAA:ONE", "DDD:FOUR"]);
    assert!(
        view["href"]
            .as_str()
            .unwrap()
            .ends_with("?interval=1&symbols=AAA:ONE,DDD:FOUR"),
        "the URL follows the edited list: {view:#}"
    );

    // "slow" clears by itself after about ten seconds without another warning.
    browser
        .wait_until("the indicator back to connected", |view| {
            state(view) == "connected"
        })
        .await;
    assert!(
        warned.elapsed() >= Duration::from_secs(9),
        "slow cleared after only {:?}",
        warned.elapsed()
    );

    // The socket drops: the page reconnects and subscribes to what it shows now.
    socket.close(None).await.unwrap();
    drop(socket);
    browser
        .wait_until("the indicator to say reconnecting", |view| {
            state(view) == "reconnecting"
        })
        .await;
    let mut socket = server.next_socket().await;
    assert_eq!(
        receive(&mut socket, "a subscribe after reconnecting").await,
        json!({ "action": "subscribe", "symbols": ["AAA:ONE", "DDD:FOUR"], "update_interval": 1 })
    );
    send(
        &mut socket,
        json!({ "type": "status", "upstream": "backing_off" }),
    )
    .await;
    send(
        &mut socket,
        json!({ "type": "snapshot", "symbol": "AAA:ONE", "quote": { "lp": 99 }, "bar": null }),
    )
    .await;
    let view = browser
        .wait_until(
            "connected again, one reconnect, AAA:ONE at 99 from its new snapshot",
            |view| {
                state(view) == "connected"
                    && stat(view, "reconnects") == 1
                    && view["upstream"] == "backing_off"
                    && price(view, "AAA:ONE") == Some(99.0)
            },
        )
        .await;
    let one = row(&view, "AAA:ONE").unwrap();
    assert_eq!(one["change"], "", "a snapshot replaces the state: {view:#}");
    assert_eq!(one["count"], 5, "{view:#}");
    // The answer named no interval (a relay that does not pace): the page says so.
    assert_eq!(interval(&view, "AAA:ONE"), Some(""), "{view:#}");
    assert_eq!(view["pace_effect"], "(relay: every change)", "{view:#}");
}

// ---- the real relay ---------------------------------------------------------------------------

const RELAY_SYMBOLS: [&str; 3] = ["BINANCE:BTCUSDT", "NASDAQ:AAPL", "FX:EURUSD"];

/// The emulator the relay reads, on a runtime of its own.
fn market() -> Server {
    Server::start(EmulatorConfig {
        rate_hz: 50.0,
        symbols: 10,
        ..EmulatorConfig::default()
    })
}

/// A relay on `listen` in front of `upstream`, retrying for a while if the port is still taken
/// (as it may be right after the previous relay on it shut down).
async fn start_relay(listen: SocketAddr, upstream: &str) -> Relay {
    let start = Instant::now();
    loop {
        let config = RelayConfig {
            listen,
            upstream: tickwire_tokio::Config {
                url: upstream.to_owned(),
                ..tickwire_tokio::Config::default()
            },
            page_symbols: RELAY_SYMBOLS
                .iter()
                .map(|&symbol| symbol.to_owned())
                .collect(),
            ..RelayConfig::default()
        };
        match Relay::start(config).await {
            Ok(relay) => return relay,
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && start.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("cannot start the relay on {listen}: {error}"),
        }
    }
}

/// The price every row shows, in row order.
fn prices(view: &Value) -> Vec<Option<f64>> {
    RELAY_SYMBOLS
        .iter()
        .map(|symbol| price(view, symbol))
        .collect()
}

fn all_priced(view: &Value) -> bool {
    prices(view).iter().all(Option::is_some)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_follows_the_relay_through_a_restart() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let market = market();
    let relay = start_relay(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &market.emulator().url(),
    )
    .await;
    let addr = relay.local_addr();
    let url = format!("http://{addr}/?symbols={}", RELAY_SYMBOLS.join(","));
    let mut browser = Browser::launch(&exe, &url).await;

    let view = browser
        .wait_until(
            "connected, with a numeric price in all three rows",
            |view| state(view) == "connected" && all_priced(view),
        )
        .await;
    assert_eq!(symbols(&view), RELAY_SYMBOLS, "{view:#}");
    let first = prices(&view);
    browser
        .wait_until(
            &format!("a price to move from {first:?} (live data)"),
            |view| all_priced(view) && prices(view) != first,
        )
        .await;

    // On a phone (390 px) the table fits: nothing is cut off at the right edge.
    browser
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true}),
        )
        .await
        .unwrap();
    let fits = "(() => { const table = document.getElementById('quotes'); \
                 return document.documentElement.scrollWidth <= window.innerWidth \
                     && table.getBoundingClientRect().right <= window.innerWidth; })()";
    let deadline = Instant::now() + DEADLINE;
    while browser.run(fits).await != json!(true) {
        assert!(
            Instant::now() < deadline,
            "the table does not fit 390 px: {}",
            browser
                .run("JSON.stringify([window.innerWidth, document.documentElement.scrollWidth, document.getElementById('quotes').getBoundingClientRect().right])")
                .await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .call("Emulation.clearDeviceMetricsOverride", json!({}))
        .await
        .unwrap();

    // Every change: three more updates of every row come quickly (5 a second each).
    let started = Instant::now();
    let base = browser.run(VIEW).await;
    browser
        .wait_until("three more updates in every row", |view| {
            RELAY_SYMBOLS
                .iter()
                .all(|symbol| updates(view, symbol) >= updates(&base, symbol) + 3)
        })
        .await;
    let unpaced = started.elapsed();
    // The viewer picks "every 1 s": the relay confirms it for every row, and from then on
    // three updates of a row take at least two seconds (each at least 1 s after the last).
    browser.run(&format!("({PICK_INTERVAL})('1')")).await;
    browser
        .wait_until("the relay to confirm 1 s for every row", |view| {
            RELAY_SYMBOLS
                .iter()
                .all(|symbol| interval(view, symbol) == Some("1"))
        })
        .await;
    let started = Instant::now();
    let base = browser.run(VIEW).await;
    let view = browser
        .wait_until("three more updates in every row, paced", |view| {
            RELAY_SYMBOLS
                .iter()
                .all(|symbol| updates(view, symbol) >= updates(&base, symbol) + 3)
        })
        .await;
    let paced = started.elapsed();
    eprintln!("browser: three updates per row took {unpaced:?} unpaced, {paced:?} at 1 s");
    assert!(
        paced >= Duration::from_millis(1800),
        "three paced updates per row within {paced:?}: {view:#}"
    );
    assert!(all_priced(&view), "{view:#}");

    relay.shutdown().await;
    let view = browser
        .wait_until(
            "the indicator to say reconnecting, and the upstream no longer live, once the relay \
             is gone",
            |view| state(view) == "reconnecting" && view["upstream"] != "live",
        )
        .await;
    let reconnects = stat(&view, "reconnects");

    let relay = start_relay(addr, &market.emulator().url()).await;
    let view = browser
        .wait_until(
            "connected again to the new relay on the same port, with prices in all three rows \
             and the 1 s interval confirmed again",
            |view| {
                state(view) == "connected"
                    && stat(view, "reconnects") > reconnects
                    && all_priced(view)
                    && RELAY_SYMBOLS
                        .iter()
                        .all(|symbol| interval(view, symbol) == Some("1"))
            },
        )
        .await;
    assert!(stat(&view, "reconnects") >= 1, "{view:#}");
    let (messages, again) = (stat(&view, "messages"), prices(&view));
    let view = browser
        .wait_until(
            &format!(
                "data to flow after the restart: more than {messages} messages and a price \
                 moving from {again:?}"
            ),
            |view| {
                stat(view, "messages") > messages
                    && all_priced(view)
                    && prices(view) != again
                    && view["upstream"] == "live"
            },
        )
        .await;
    for symbol in RELAY_SYMBOLS {
        let row = row(&view, symbol).unwrap();
        assert!(
            row["points"].as_u64().unwrap_or(0) >= 2,
            "{symbol}'s sparkline has fewer than two points: {view:#}"
        );
    }
    let age = browser
        .run("Date.now() - window.tickwireStats.lastMessageAt")
        .await;
    assert!(
        age.as_f64()
            .is_some_and(|age| (0.0..10_000.0).contains(&age)),
        "lastMessageAt is {age} ms old: {view:#}"
    );
    relay.shutdown().await;
}

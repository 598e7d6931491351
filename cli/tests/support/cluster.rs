//! The cluster scenarios' harness, shared by `tests/cluster.rs` and the failover benchmark
//! (`benches/cluster_failover.rs`): `tickwire relay` children linked through a real
//! `redis-server`, the emulator as their feed, and WebSocket clients that record what they get.
//! Both crates declare `support` and `redis_support` at their root, which this module uses.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tickwire_emulator::EmulatorConfig;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

use crate::redis_support::RedisServer;
use crate::support::{self, Server, http_get, tickwire};

/// Polling period of every wait.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// How long a relay may take to print the address it listens on.
pub(crate) const STARTUP: Duration = Duration::from_secs(20);

pub(crate) fn unix_ns() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

/// Polls `check` until it succeeds or `within` passes; then panics with `what` and the last
/// reason it gave.
pub(crate) fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) if start.elapsed() >= within => {
                panic!("{what}: not within {within:?}: {why}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

// ----- relays --------------------------------------------------------------------------------

/// A `tickwire relay` child, killed (SIGKILL) when dropped. Its stderr is kept, and printed
/// when a test fails.
pub(crate) struct RelayProcess {
    pub(crate) id: String,
    pub(crate) addr: String,
    pub(crate) child: Child,
    pub(crate) log: Arc<Mutex<Vec<String>>>,
    /// The rest of its stdout, drained.
    pub(crate) _stdout: std::sync::mpsc::Receiver<String>,
    pub(crate) killed: bool,
}

impl RelayProcess {
    pub(crate) fn start(id: &str, upstream: &str, redis: &str) -> RelayProcess {
        let mut command = tickwire();
        command
            .args(["relay", "--upstream", upstream])
            .args(["--relay-id", id, "--linger", "2s"])
            .env("TICKWIRE_RELAY_REDIS", redis);
        RelayProcess::spawn(id, command)
    }

    /// `tickwire relay` as `command` has it (its arguments after `relay`, its environment),
    /// listening on a free loopback port.
    pub(crate) fn spawn(id: &str, mut command: Command) -> RelayProcess {
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tickwire relay");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let kept = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        // Read on a thread that drains the rest too, so the relay never blocks on the pipe.
        let stdout = support::line_channel(child.stdout.take().unwrap());
        let first = stdout.recv_timeout(STARTUP).unwrap_or_default();
        let mut relay = RelayProcess {
            id: id.to_owned(),
            addr: String::new(),
            child,
            log,
            _stdout: stdout,
            killed: false,
        };
        match first.trim().strip_prefix("listening on http://") {
            Some(addr) => relay.addr = addr.to_owned(),
            None => {
                // Give stderr a moment to arrive before showing it.
                let _ = support::exit_within(&mut relay.child, Duration::from_secs(2));
                panic!(
                    "relay {id}: first line {first:?}; stderr:\n{}",
                    relay.log_tail(30)
                );
            }
        }
        relay
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}: {status}", self.pid());
    }

    /// SIGKILL (`Child::kill`), and reaped.
    pub(crate) fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(crate) fn health(&self) -> Result<Health, String> {
        let (code, body) = http_get(&self.addr, "/healthz")
            .ok_or_else(|| format!("{}: /healthz did not answer", self.id))?;
        let body: Value = serde_json::from_str(&body)
            .map_err(|error| format!("{}: /healthz is not JSON ({error}): {body}", self.id))?;
        Ok(Health { code, body })
    }

    pub(crate) fn metrics(&self) -> Result<String, String> {
        match http_get(&self.addr, "/metrics") {
            Some((200, text)) => Ok(text),
            other => Err(format!("{}: /metrics answered {other:?}", self.id)),
        }
    }

    /// The value of the metric line `series` (a name with its labels, if any).
    pub(crate) fn metric(&self, series: &str) -> Result<f64, String> {
        let text = self.metrics()?;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| format!("{}: no {series} in /metrics", self.id))
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log[log.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (SIGSTOP) process too.
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- relay {} ({}): its log (last lines) ---\n{}",
                self.id,
                self.addr,
                self.log_tail(40)
            );
        }
    }
}

/// A relay's `/healthz`.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    pub(crate) code: u16,
    pub(crate) body: Value,
}

impl Health {
    pub(crate) fn role(&self) -> &str {
        self.body["cluster"]["role"].as_str().unwrap_or("?")
    }

    pub(crate) fn carries_upstream(&self) -> bool {
        self.body["cluster"]["carries_upstream"] == true
    }

    pub(crate) fn redis(&self) -> &str {
        self.body["cluster"]["redis"].as_str().unwrap_or("?")
    }

    pub(crate) fn upstream(&self) -> &str {
        self.body["upstream"].as_str().unwrap_or("?")
    }
}

// ----- clients -------------------------------------------------------------------------------

/// A message a client got, with when it got it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) at: Instant,
    pub(crate) unix_ns: u64,
    pub(crate) value: Value,
}

#[derive(Debug, Default)]
pub(crate) struct ClientLog {
    pub(crate) messages: Vec<Received>,
    /// How the connection ended, once it did.
    pub(crate) ended: Option<String>,
}

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of one relay, recording everything it gets.
pub(crate) struct Client {
    pub(crate) name: String,
    pub(crate) log: Arc<Mutex<ClientLog>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub(crate) fn connect(runtime: &Runtime, name: &str, addr: &str, symbols: &[&str]) -> Client {
        let url = format!("ws://{addr}/ws");
        let subscribe = json!({"action": "subscribe", "symbols": symbols}).to_string();
        let ws = runtime.block_on(async {
            let (mut ws, _) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async(url.as_str()),
            )
            .await
            .unwrap_or_else(|_| panic!("{name}: no WebSocket handshake with {url}"))
            .unwrap_or_else(|error| panic!("{name}: cannot connect to {url}: {error}"));
            ws.send(Message::Text(subscribe.into())).await.unwrap();
            ws
        });
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let task = runtime.spawn(read_messages(ws, Arc::clone(&log)));
        Client {
            name: name.to_owned(),
            log,
            task,
        }
    }

    pub(crate) fn messages(&self) -> Vec<Received> {
        self.lock().messages.clone()
    }

    /// How many messages it got so far: a mark to look at what came after.
    pub(crate) fn mark(&self) -> usize {
        self.lock().messages.len()
    }

    pub(crate) fn since(&self, mark: usize) -> Vec<Received> {
        self.lock()
            .messages
            .get(mark..)
            .unwrap_or_default()
            .to_vec()
    }

    pub(crate) fn ended(&self) -> Option<String> {
        self.lock().ended.clone()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ClientLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last few messages, for failure messages.
    pub(crate) fn tail(&self, count: usize) -> String {
        let log = self.lock();
        let shown: Vec<String> = log.messages[log.messages.len().saturating_sub(count)..]
            .iter()
            .map(|received| received.value.to_string())
            .collect();
        format!(
            "{} ({} messages, ended: {:?}), last: {}",
            self.name,
            log.messages.len(),
            log.ended,
            shown.join(" ")
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn read_messages(mut ws: Socket, log: Arc<Mutex<ClientLog>>) {
    // Well inside the relay's keepalive (90 s), however long a scenario runs.
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    let ended = loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(value) => log
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .messages
                        .push(Received { at: Instant::now(), unix_ns: unix_ns(), value }),
                    Err(error) => break format!("not JSON ({error}): {}", text.as_str()),
                },
                Some(Ok(Message::Close(frame))) => break format!("closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(error)) => break format!("failed: {error}"),
                None => break "ended".to_owned(),
            },
            _ = ping.tick() => {
                if let Err(error) = ws.send(Message::Text(r#"{"action":"ping"}"#.into())).await {
                    break format!("ping failed: {error}");
                }
            }
        }
    };
    log.lock().unwrap_or_else(PoisonError::into_inner).ended = Some(ended);
}

// ----- what clients got ----------------------------------------------------------------------

pub(crate) fn kind(value: &Value) -> &str {
    value["type"].as_str().unwrap_or_default()
}

pub(crate) fn is_status(value: &Value, upstream: &str) -> bool {
    kind(value) == "status" && value["upstream"] == upstream
}

/// The price of a `snapshot` of `symbol`, if it has one.
pub(crate) fn snapshot_price(value: &Value, symbol: &str) -> Option<f64> {
    (kind(value) == "snapshot" && value["symbol"] == symbol)
        .then(|| value["quote"]["lp"].as_f64())
        .flatten()
}

pub(crate) fn is_quote(value: &Value, symbol: &str) -> bool {
    kind(value) == "quote" && value["symbol"] == symbol
}

/// The emulator's send stamp of a quote or snapshot.
pub(crate) fn stamp(value: &Value) -> Option<u64> {
    let fields = match kind(value) {
        "quote" => &value["data"],
        "snapshot" => &value["quote"],
        _ => return None,
    };
    fields["emu_ns"].as_str()?.parse().ok()
}

// ----- the cluster ---------------------------------------------------------------------------

/// Redis, the emulator, relays and their clients. Dropped in this order: clients, relays
/// (killed), the runtime, the emulator, Redis.
pub(crate) struct Cluster {
    pub(crate) clients: Vec<Client>,
    pub(crate) relays: Vec<RelayProcess>,
    pub(crate) runtime: Runtime,
    pub(crate) emulator: Server,
    pub(crate) redis: RedisServer,
}

impl Cluster {
    /// Redis, an emulator of 40 symbols ticking `rate_hz` times a second in all (stamped), and
    /// relays `ids`; `None` when redis-server is missing (and CI does not require it).
    pub(crate) fn start(ids: &[&str], rate_hz: f64) -> Option<Cluster> {
        let redis = RedisServer::start()?;
        let emulator = Server::start_with(EmulatorConfig {
            rate_hz,
            symbols: 40,
            stamp_quotes: true,
            ..EmulatorConfig::default()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut cluster = Cluster {
            clients: Vec::new(),
            relays: Vec::new(),
            runtime,
            emulator,
            redis,
        };
        for id in ids {
            cluster.add_relay(id);
        }
        Some(cluster)
    }

    /// Starts another relay; its index.
    pub(crate) fn add_relay(&mut self, id: &str) -> usize {
        let relay = RelayProcess::start(id, &self.emulator.url(), &self.redis.url());
        self.relays.push(relay);
        self.relays.len() - 1
    }

    /// A client of relay `relay` subscribed to `symbols`; its index.
    pub(crate) fn add_client(&mut self, relay: usize, symbols: &[&str]) -> usize {
        let name = format!("client {} of {}", self.clients.len(), self.relays[relay].id);
        let client = Client::connect(&self.runtime, &name, &self.relays[relay].addr, symbols);
        self.clients.push(client);
        self.clients.len() - 1
    }

    /// Exactly one of `among` leads and carries the upstream; the others follow without it,
    /// all linked to Redis and live. The leader's index.
    pub(crate) fn one_leader(&self, among: &[usize]) -> Result<usize, String> {
        let mut leaders = Vec::new();
        let mut states = Vec::new();
        for &index in among {
            let relay = &self.relays[index];
            let health = relay.health()?;
            states.push(format!("{}: {} {}", relay.id, health.code, health.body));
            match (health.role(), health.carries_upstream()) {
                ("leader", true) => leaders.push(index),
                ("follower", false) => {}
                _ => return Err(format!("not settled: {}", states.join("; "))),
            }
            if health.redis() != "up" || health.code != 200 {
                return Err(format!("not healthy: {}", states.join("; ")));
            }
        }
        match leaders.as_slice() {
            [leader] => Ok(*leader),
            _ => Err(format!("{} leaders: {}", leaders.len(), states.join("; "))),
        }
    }

    pub(crate) fn wait_one_leader(&self, among: &[usize], within: Duration) -> usize {
        eventually("exactly one leader", within, || self.one_leader(among))
    }

    /// Upstream WebSocket connections open now, and the most ever open at once.
    pub(crate) fn upstream_connections(&self) -> (u64, u64) {
        let stats = self.emulator.emulator().stats();
        (
            stats.open.load(Ordering::Relaxed),
            stats.peak_open.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn client(&self, index: usize) -> &Client {
        &self.clients[index]
    }

    /// Asserts that none of `clients` was disconnected.
    pub(crate) fn assert_connected(&self, clients: &[usize]) {
        for &index in clients {
            let client = &self.clients[index];
            assert_eq!(client.ended(), None, "{} was disconnected", client.name);
        }
    }
}

//! Load benchmark of the relay: many loopback WebSocket clients on one relay process.
//!
//! Run: `cargo bench -p tickwire-relay --bench relay_load`
//!
//! The bench process runs the feed emulator (stamping every quote delta with its write time as
//! `emu_ns`) and the clients; the relay is a child process, restarted for every connection
//! count so its memory (VmRSS) and CPU time are its own. The child is this bench binary run
//! again in relay mode (`TICKWIRE_LOAD_CHILD=relay`): [`tickwire_relay::Relay::start`] with
//! [`RelayConfig`] defaults except the listen address, the upstream URL and the connection
//! limit, on a two-worker multi-thread runtime as `tickwire relay` uses. With
//! `TICKWIRE_LOAD_COMPARE=/path/to/old/tickwire`, every connection count is also run against
//! that older build (`tickwire relay …`, as this bench ran it before it moved here), the old
//! relay first, then this one, and both rows are printed. For each connection count N:
//!
//! 1. start the relay, read its baseline VmRSS;
//! 2. open N clients (at most 200 handshakes at once, a failed one retried) and wait for each
//!    one's first `status` message: VmRSS then gives the memory per idle connection;
//! 3. subscribe every client (symbols assigned round-robin over the 100 symbols), wait for all
//!    snapshots, warm up, then measure: messages delivered per second, quote latency (client
//!    receipt time minus `emu_ns`) p50/p99/max, `SLOW_CONSUMER` warnings, unexpected closes,
//!    VmRSS and CPU time of the relay, and that CPU time divided by the messages the clients
//!    (probe included) received in the window: the relay's CPU per delivery;
//! 4. print a markdown row.
//!
//! Cross-checks printed with every row: the updates/s the emulator really sent (the expected
//! deliveries are that times the subscribers per symbol); the relay's own `/metrics` counters
//! and its broadcast-latency histogram (update reaching the relay to socket write) over the
//! same window; a probe client on its own thread, subscribed to every symbol, whose latency is
//! not inflated by queueing behind thousands of clients on the bench's runtime; and the CPU
//! used by the relay, by the bench process and by the rest of the machine.
//!
//! Environment (all optional):
//! - `TICKWIRE_LOAD_CONNECTIONS`: comma-separated connection counts, default `1000,10000`;
//! - `TICKWIRE_LOAD_SECONDS`: measurement length, default 10;
//! - `TICKWIRE_LOAD_SUBSCRIPTIONS`: symbols per client, default 1 (at most 100);
//! - `TICKWIRE_LOAD_RATE`: updates per second over the 100 subscribed symbols, default 1000;
//! - `TICKWIRE_LOAD_WARMUP_SECONDS`: warm-up once every symbol's quotes flow, default 2;
//! - `TICKWIRE_LOAD_RELAY_ARGS`: extra `tickwire relay` flags for the compared old build,
//!   default none (see [`DEFAULT_RELAY_ARGS`]);
//! - `TICKWIRE_LOAD_COMPARE`: path of an older `tickwire` binary to run beside this build.
//! - `TICKWIRE_LOAD_RELAYS`: comma-separated relay counts, default `1`. With more than one, a
//!   `redis-server` (from `PATH`) is started for the row and that many relays join one
//!   cluster through it: one leader carries the upstream, clients are spread round-robin
//!   over the relays, CPU and memory are summed over them, Redis's own CPU and memory are
//!   printed, and latency is split between clients of the leader and of the followers (the
//!   Redis hop). The old build (`TICKWIRE_LOAD_COMPARE`) runs in rows of one relay only.
//! - `TICKWIRE_LOAD_FLOOR=1`: before the relays, a floor row for each connection count: the
//!   same clients served by a child with no relay in it, one non-blocking `write` per delivery
//!   (the [`floor`] module). Its CPU per delivery is what the `send`s alone cost.
//!
//! Everything (emulator, relay, clients) shares the machine's cores.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "relay_load/floor.rs"]
mod floor;

use futures::{SinkExt, StreamExt};
use tickwire_emulator::{Emulator, EmulatorConfig};
use tickwire_relay::{ClusterConfig, RedisUrl, Relay as RelayServer, RelayConfig};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Symbols the clients subscribe to: `EMU:S10`..`EMU:S109` (the emulator names its first ten
/// after real markets).
const SYMBOLS: usize = 100;
/// The emulator's market: the ten well-known names plus the 100 synthetic ones. Its ticks are
/// spread uniformly over all of them, so the rate is scaled by 110 / 100.
const MARKET_SYMBOLS: usize = 10 + SYMBOLS;
/// Extra relay flags: none. The relay runs with its defaults, including the upstream command
/// rate limit of the real feed (60 a minute, bursts of 10); its hub batches new symbols, so
/// the 100 go live in a few commands.
const DEFAULT_RELAY_ARGS: &str = "";
/// Handshakes in flight at once.
const CONNECT_CONCURRENCY: usize = 200;
/// Attempts per client before it counts as a connect failure.
const CONNECT_ATTEMPTS: u32 = 4;
/// Time allowed for one attempt: TCP, upgrade and the first `status` message.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Latency samples kept over all clients.
const SAMPLE_BUDGET: usize = 4_000_000;
/// Clients ping this often so the relay's keepalive (90 s by default) never closes them.
const PING_INTERVAL: Duration = Duration::from_secs(30);

const PHASE_IDLE: u8 = 0;
const PHASE_WARMUP: u8 = 1;
const PHASE_MEASURE: u8 = 2;
const PHASE_AFTER: u8 = 3;

fn phase_name(phase: u8) -> &'static str {
    match phase {
        PHASE_IDLE => "idle",
        PHASE_WARMUP => "warm-up",
        PHASE_MEASURE => "measuring",
        PHASE_AFTER => "after",
        _ => "?",
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone)]
struct Params {
    connections: Vec<usize>,
    seconds: u64,
    subscriptions: usize,
    rate: f64,
    warmup: u64,
    relay_args: Vec<String>,
    compare: Option<PathBuf>,
    relays: Vec<usize>,
    floor: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Params {
    fn from_env() -> Params {
        let connections = std::env::var("TICKWIRE_LOAD_CONNECTIONS")
            .unwrap_or_else(|_| "1000,10000".to_owned())
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(|part| {
                part.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("TICKWIRE_LOAD_CONNECTIONS: bad count {part:?}"))
            })
            .collect();
        Params {
            connections,
            seconds: env_or("TICKWIRE_LOAD_SECONDS", 10u64).max(1),
            subscriptions: env_or("TICKWIRE_LOAD_SUBSCRIPTIONS", 1usize).clamp(1, SYMBOLS),
            rate: env_or("TICKWIRE_LOAD_RATE", 1_000.0f64),
            warmup: env_or("TICKWIRE_LOAD_WARMUP_SECONDS", 2u64),
            relay_args: std::env::var("TICKWIRE_LOAD_RELAY_ARGS")
                .unwrap_or_else(|_| DEFAULT_RELAY_ARGS.to_owned())
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            compare: std::env::var_os("TICKWIRE_LOAD_COMPARE")
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            relays: std::env::var("TICKWIRE_LOAD_RELAYS")
                .unwrap_or_else(|_| "1".to_owned())
                .split(',')
                .filter(|part| !part.trim().is_empty())
                .map(|part| {
                    part.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|count| *count >= 1)
                        .unwrap_or_else(|| panic!("TICKWIRE_LOAD_RELAYS: bad count {part:?}"))
                })
                .collect(),
            floor: env_or("TICKWIRE_LOAD_FLOOR", 0u8) == 1,
        }
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

// ---------------------------------------------------------------------------------------------
// The relay child process.

/// The last lines of one of the relay's output streams, and how many there were.
#[derive(Debug, Default)]
struct Tail {
    lines: Mutex<VecDeque<String>>,
    count: AtomicU64,
}

impl Tail {
    fn push(&self, line: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == 12 {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn drain_from(self: &Arc<Self>, source: impl Read + Send + 'static) {
        let tail = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(source).lines() {
                let Ok(line) = line else { break };
                tail.push(line);
            }
        });
    }

    fn print(&self, name: &str) {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return;
        }
        println!("  relay {name}: {count} lines, the last ones:");
        for line in self
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            println!("    | {line}");
        }
    }
}

/// Which relay a row measures.
#[derive(Debug, Clone)]
enum Build {
    /// This build: the bench binary itself in relay mode.
    Current,
    /// An older `tickwire` binary, run as `tickwire relay …`.
    Old(PathBuf),
    /// No relay: the bench binary in floor mode (see the `floor` module), writing every
    /// delivery with one `send` at this many updates/s and symbols per client.
    Floor { rate: f64, subscriptions: usize },
}

impl Build {
    fn label(&self) -> &'static str {
        match self {
            Build::Current => "new",
            Build::Old(_) => "old",
            Build::Floor { .. } => "floor",
        }
    }
}

/// The environment variable that puts this binary in relay mode, and its settings.
const CHILD_MODE: &str = "TICKWIRE_LOAD_CHILD";
const CHILD_UPSTREAM: &str = "TICKWIRE_LOAD_CHILD_UPSTREAM";
const CHILD_MAX_CONNECTIONS: &str = "TICKWIRE_LOAD_CHILD_MAX_CONNECTIONS";
/// The cluster's Redis and the relay's id in it, for a relay of a cluster row.
const CHILD_REDIS: &str = "TICKWIRE_LOAD_CHILD_REDIS";
const CHILD_RELAY_ID: &str = "TICKWIRE_LOAD_CHILD_RELAY_ID";

/// A `redis-server` for a cluster row, on a free loopback port, without persistence; killed
/// when dropped.
#[derive(Debug)]
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(std::env::temp_dir())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (apt install redis-server) for a cluster row");
            let mut redis = Redis { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if redis.pong() {
                    return redis;
                }
                if !matches!(redis.child.try_wait(), Ok(None)) {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start");
    }

    fn pong(&self) -> bool {
        use std::io::Write;
        let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        tcp.write_all(b"PING\r\n").is_ok()
            && std::io::Read::read_exact(&mut tcp, &mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running relay; killed when dropped (also on panic).
#[derive(Debug)]
struct Relay {
    child: Child,
    /// Held open: the relay child ends itself when it reads end-of-file, so it cannot outlive
    /// a bench that died without killing it.
    _stdin: Option<ChildStdin>,
    addr: SocketAddr,
    stdout: Arc<Tail>,
    stderr: Arc<Tail>,
}

impl Relay {
    /// `max_connections` covers the clients and the probe, and no more, so the relay's
    /// open-file check speaks only when this machine really cannot hold the run.
    fn start(
        build: &Build,
        upstream: &str,
        max_connections: usize,
        extra_args: &[String],
        cluster: Option<(&str, usize)>,
    ) -> Relay {
        let max_connections = max_connections.to_string();
        let mut command = match build {
            Build::Current => {
                let mut command =
                    Command::new(std::env::current_exe().expect("the bench binary's path"));
                command
                    .env(CHILD_MODE, "relay")
                    .env(CHILD_UPSTREAM, upstream)
                    .env(CHILD_MAX_CONNECTIONS, &max_connections);
                if let Some((redis, index)) = cluster {
                    command
                        .env(CHILD_REDIS, redis)
                        .env(CHILD_RELAY_ID, format!("load-{index}"));
                }
                command
            }
            Build::Floor {
                rate,
                subscriptions,
            } => {
                let mut command =
                    Command::new(std::env::current_exe().expect("the bench binary's path"));
                command
                    .env(CHILD_MODE, floor::FLOOR_MODE)
                    .env(floor::FLOOR_RATE, rate.to_string())
                    .env(floor::FLOOR_SUBSCRIPTIONS, subscriptions.to_string());
                command
            }
            Build::Old(path) => {
                let mut command = Command::new(path);
                command
                    .args([
                        "relay",
                        "--listen",
                        "127.0.0.1:0",
                        "--upstream",
                        upstream,
                        "--bars",
                        "none",
                        "--max-connections",
                        &max_connections,
                        "--max-subscriptions",
                        "200",
                    ])
                    .args(extra_args);
                command
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the relay");
        let stderr = Arc::new(Tail::default());
        stderr.drain_from(child.stderr.take().expect("piped stderr"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (sender, receiver) = std::sync::mpsc::channel();
        let stdout_tail = Arc::new(Tail::default());
        let tail = Arc::clone(&stdout_tail);
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = stdout.read_line(&mut first);
            let _ = sender.send(first);
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                tail.push(line);
            }
        });
        let stdin = child.stdin.take();
        let mut relay = Relay {
            child,
            _stdin: stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout: stdout_tail,
            stderr,
        };
        let first = receiver.recv_timeout(Duration::from_secs(20));
        let addr = first.as_deref().ok().and_then(|line| {
            line.trim()
                .strip_prefix("listening on http://")?
                .trim_end_matches('/')
                .parse()
                .ok()
        });
        match addr {
            Some(addr) => relay.addr = addr,
            None => {
                relay.stderr.print("stderr");
                panic!("the relay did not announce its address; first stdout line: {first:?}");
            }
        }
        relay
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`) or as a count (`Threads`).
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Pages the kernel holds for TCP buffers, machine-wide (`mem` in `/proc/net/sockstat`).
fn tcp_memory_pages() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().find(|line| line.starts_with("TCP:"))?;
            let mut words = line.split_whitespace();
            words.find(|word| *word == "mem")?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in clock ticks (USER_HZ, 100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces: fields are counted after its closing paren.
            let rest = stat.get(stat.rfind(')')? + 2..)?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

const USER_HZ: f64 = 100.0;

/// Busy and total jiffies of the whole machine, from the first line of `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU time of the relays, of Redis (in a cluster row), of the bench process (emulator and
/// clients) and of the machine.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    relay: u64,
    redis: u64,
    bench: u64,
    machine_busy: u64,
    machine_total: u64,
}

impl CpuSample {
    fn take(relay_pids: &[u32], redis_pid: Option<u32>) -> CpuSample {
        let (machine_busy, machine_total) = machine_ticks();
        CpuSample {
            relay: relay_pids.iter().map(|pid| cpu_ticks(*pid)).sum(),
            redis: redis_pid.map_or(0, cpu_ticks),
            bench: cpu_ticks(std::process::id()),
            machine_busy,
            machine_total,
        }
    }

    /// Redis in percent of one core between `self` and `later`.
    fn redis_percent_until(&self, later: &CpuSample, seconds: f64) -> f64 {
        later.redis.saturating_sub(self.redis) as f64 / USER_HZ / seconds * 100.0
    }

    /// Relay and bench in percent of one core, machine busy in percent of all cores, between
    /// `self` and `later`.
    fn percent_until(&self, later: &CpuSample, seconds: f64) -> (f64, f64, f64) {
        let per_core = |ticks: u64| ticks as f64 / USER_HZ / seconds * 100.0;
        let busy = later.machine_busy.saturating_sub(self.machine_busy) as f64;
        let total = later
            .machine_total
            .saturating_sub(self.machine_total)
            .max(1) as f64;
        (
            per_core(later.relay.saturating_sub(self.relay)),
            per_core(later.bench.saturating_sub(self.bench)),
            busy / total * 100.0,
        )
    }
}

/// The relay's `/metrics` page, or an empty string.
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut page = Vec::new();
        tcp.read_to_end(&mut page).await.ok()?;
        Some(String::from_utf8_lossy(&page).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// A sample's value, by its full name with labels (`name{le="0.1"}`); 0 when absent.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The relay's broadcast-latency histogram (update reaching the relay to written to a client
/// socket): cumulative counts per upper bound in seconds.
fn histogram(page: &str) -> Vec<(f64, f64)> {
    const PREFIX: &str = "tickwire_relay_broadcast_latency_seconds_bucket{le=\"";
    page.lines()
        .filter_map(|line| {
            let (bound, count) = line.strip_prefix(PREFIX)?.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound (in ms) under which a fraction `q` of the window's observations fell.
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(other, _)| other == bound)
                .map_or(0.0, |(_, count)| *count);
            (*bound, count - earlier)
        })
        .collect();
    let total = deltas.last().map_or(0.0, |(_, count)| *count);
    if total <= 0.0 {
        return f64::NAN;
    }
    deltas
        .iter()
        .find(|(_, count)| *count >= total * q)
        .map_or(f64::INFINITY, |(bound, _)| bound * 1e3)
}

/// The relay's own counters over the measurement window, from `/metrics`.
#[derive(Debug, Default)]
struct RelayView {
    updates_per_second: f64,
    messages_per_second: f64,
    conflated: f64,
    unchanged_per_second: f64,
    slow_consumers: f64,
    broadcast_p50_ms: f64,
    broadcast_p99_ms: f64,
    broadcast_mean_ms: f64,
    disconnects: Vec<String>,
}

fn relay_view(before: &str, after: &str, seconds: f64) -> RelayView {
    let delta = |name: &str| metric(after, name) - metric(before, name);
    let (hist_before, hist_after) = (histogram(before), histogram(after));
    let count = delta("tickwire_relay_broadcast_latency_seconds_count");
    RelayView {
        updates_per_second: delta("tickwire_relay_updates_received_total") / seconds,
        messages_per_second: delta("tickwire_relay_messages_sent_total") / seconds,
        conflated: delta("tickwire_relay_deliveries_conflated_total"),
        unchanged_per_second: delta("tickwire_relay_updates_unchanged_total") / seconds,
        slow_consumers: delta("tickwire_relay_slow_consumers_total"),
        broadcast_p50_ms: histogram_quantile(&hist_before, &hist_after, 0.50),
        broadcast_p99_ms: histogram_quantile(&hist_before, &hist_after, 0.99),
        broadcast_mean_ms: delta("tickwire_relay_broadcast_latency_seconds_sum") / count.max(1.0)
            * 1e3,
        disconnects: after
            .lines()
            .filter(|line| line.starts_with("tickwire_relay_disconnects_total{"))
            .filter(|line| !line.ends_with(" 0"))
            .map(str::to_owned)
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// What the controller tells every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Hold,
    Subscribe,
    Stop,
}

/// Counters every client updates as it goes, read by the controller between phases.
#[derive(Debug)]
struct Progress {
    /// The current phase (`PHASE_*`), read on every message.
    phase: AtomicU8,
    /// Clients that got their first `status`.
    ready: AtomicUsize,
    /// Clients that gave up connecting.
    failed: AtomicUsize,
    /// Clients connected now.
    open: AtomicUsize,
    /// Clients that got a snapshot of every symbol they asked for.
    subscribed: AtomicUsize,
    /// Per symbol (`EMU:S10` first): whether a quote of it reached a client during warm-up,
    /// i.e. the relay carries it upstream.
    live: [AtomicBool; SYMBOLS],
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phase: AtomicU8::new(PHASE_IDLE),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            subscribed: AtomicUsize::new(0),
            live: std::array::from_fn(|_| AtomicBool::new(false)),
        }
    }
}

impl Progress {
    fn live_symbols(&self) -> usize {
        self.live
            .iter()
            .filter(|live| live.load(Ordering::Relaxed))
            .count()
    }
}

/// What one client saw, returned when it stops.
#[derive(Debug, Default)]
struct ClientReport {
    connected: bool,
    retries: u32,
    connect_error: Option<String>,
    /// Messages of every type received in the measurement window.
    window_messages: u64,
    /// `quote` messages received in the measurement window.
    window_quotes: u64,
    /// `snapshot` messages received in the window (conflation of a slow consumer).
    window_snapshots: u64,
    /// Quote messages without a readable `emu_ns`.
    unstamped: u64,
    total_messages: u64,
    slow_consumer_warnings: u64,
    errors: u64,
    first_error: Option<String>,
    /// The connection ended before it was told to stop: the phase and why.
    closed_early: Option<(u8, String)>,
    latencies: Vec<u64>,
    dropped_samples: u64,
}

/// The value of `"type"`, which the relay always writes first.
fn message_type(text: &str) -> &str {
    text.strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
}

/// The `emu_ns` stamp of a message, found by substring search rather than a JSON parse.
fn emu_ns(text: &str) -> Option<u64> {
    const KEY: &str = "\"emu_ns\":\"";
    let start = text.find(KEY)? + KEY.len();
    let digits = text.get(start..)?.split('"').next()?;
    digits.parse().ok()
}

/// The index of an `EMU:S<n>` symbol among the subscribed ones (`EMU:S10` is 0).
fn symbol_index(text: &str) -> Option<usize> {
    const KEY: &str = "\"symbol\":\"EMU:S";
    let start = text.find(KEY)? + KEY.len();
    let number: usize = text.get(start..)?.split('"').next()?.parse().ok()?;
    number.checked_sub(10)
}

/// Connects and waits for the first `status`; the messages before it are returned counted.
async fn connect_once(url: &str) -> Result<(Ws, u64), String> {
    // tungstenite zero-fills `read_buffer_size` bytes (128 KiB by default) before every socket
    // read: with 100 000 small messages a second that memset alone took ~40% of a core, which
    // the relay then lacked. Relay messages are ~200 bytes; larger frames still grow the buffer.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let mut before = 0u64;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                before += 1;
                match message_type(text.as_str()) {
                    "status" => return Ok((ws, before)),
                    "error" => return Err(format!("refused: {}", text.as_str())),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(format!("before status: {error}")),
            None => return Err("closed before status".to_owned()),
        }
    }
}

async fn connect(url: &str, gate: &Semaphore, report: &mut ClientReport) -> Option<(Ws, u64)> {
    let _permit = gate.acquire().await.ok()?;
    for attempt in 1..=CONNECT_ATTEMPTS {
        let outcome = tokio::time::timeout(CONNECT_TIMEOUT, connect_once(url))
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()));
        match outcome {
            Ok(connected) => return Some(connected),
            Err(error) => {
                report.connect_error = Some(error);
                if attempt < CONNECT_ATTEMPTS {
                    report.retries += 1;
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                }
            }
        }
    }
    None
}

/// Everything one client task needs.
#[derive(Debug)]
struct ClientSetup {
    index: usize,
    url: Arc<str>,
    subscribe: String,
    expected_snapshots: u64,
    sample_cap: usize,
    gate: Arc<Semaphore>,
    progress: Arc<Progress>,
    orders: watch::Receiver<Order>,
}

async fn client(setup: ClientSetup) -> ClientReport {
    let ClientSetup {
        index,
        url,
        subscribe,
        expected_snapshots,
        sample_cap,
        gate,
        progress,
        orders,
    } = setup;
    let mut report = ClientReport::default();
    let Some((mut ws, before)) = connect(&url, &gate, &mut report).await else {
        progress.failed.fetch_add(1, Ordering::Relaxed);
        return report;
    };
    report.connected = true;
    report.total_messages = before;
    progress.open.fetch_add(1, Ordering::Relaxed);
    progress.ready.fetch_add(1, Ordering::Relaxed);
    // Staggered so thousands of clients do not ping in the same millisecond.
    let first_ping =
        tokio::time::Instant::now() + PING_INTERVAL + Duration::from_millis((index % 5_000) as u64);
    let mut ping = tokio::time::interval_at(first_ping, PING_INTERVAL);
    // One long-lived future for the orders: a fresh `changed()` per received message would
    // register and unregister a waiter on the channel every time (~5% of the clients' CPU).
    let mut orders = futures::stream::unfold(orders, |mut orders| async move {
        orders.changed().await.ok()?;
        let order = *orders.borrow_and_update();
        Some((order, orders))
    })
    .boxed();
    let mut snapshots = 0u64;
    let mut subscribed = false;
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        let phase = progress.phase.load(Ordering::Relaxed);
                        report.closed_early = Some((phase, format!("close frame {frame:?}")));
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => {
                        let phase = progress.phase.load(Ordering::Relaxed);
                        report.closed_early = Some((phase, format!("error: {error}")));
                        break;
                    }
                    None => {
                        let phase = progress.phase.load(Ordering::Relaxed);
                        report.closed_early = Some((phase, "stream ended".to_owned()));
                        break;
                    }
                };
                let text = text.as_str();
                report.total_messages += 1;
                let measuring = progress.phase.load(Ordering::Relaxed) == PHASE_MEASURE;
                if measuring {
                    report.window_messages += 1;
                }
                match message_type(text) {
                    "quote" => {
                        if !measuring {
                            if let Some(index) = symbol_index(text)
                                && let Some(live) = progress.live.get(index)
                            {
                                live.store(true, Ordering::Relaxed);
                            }
                            continue;
                        }
                        report.window_quotes += 1;
                        match emu_ns(text) {
                            Some(stamp) => {
                                if report.latencies.len() < sample_cap {
                                    report.latencies.push(unix_ns().saturating_sub(stamp));
                                } else {
                                    report.dropped_samples += 1;
                                }
                            }
                            None => report.unstamped += 1,
                        }
                    }
                    "snapshot" => {
                        snapshots += 1;
                        if measuring {
                            report.window_snapshots += 1;
                        }
                        if !subscribed && snapshots >= expected_snapshots {
                            subscribed = true;
                            progress.subscribed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    "warning" if text.contains("SLOW_CONSUMER") => {
                        report.slow_consumer_warnings += 1;
                    }
                    "error" => {
                        report.errors += 1;
                        if report.first_error.is_none() {
                            report.first_error = Some(text.to_owned());
                        }
                    }
                    _ => {}
                }
            }
            order = orders.next() => {
                let Some(order) = order else { break };
                match order {
                    Order::Hold => {}
                    Order::Subscribe => {
                        if let Err(error) = ws.send(Message::text(subscribe.as_str())).await {
                            let phase = progress.phase.load(Ordering::Relaxed);
                            report.closed_early = Some((phase, format!("subscribe: {error}")));
                            break;
                        }
                    }
                    Order::Stop => {
                        progress.open.fetch_sub(1, Ordering::Relaxed);
                        return report;
                    }
                }
            }
            _ = ping.tick() => {
                if let Err(error) = ws.send(Message::text("{\"action\":\"ping\"}")).await {
                    let phase = progress.phase.load(Ordering::Relaxed);
                    report.closed_early = Some((phase, format!("ping: {error}")));
                    break;
                }
            }
        }
    }
    progress.open.fetch_sub(1, Ordering::Relaxed);
    // Gone early: wait for the stop order so the controller's join does not race the phases.
    while let Some(order) = orders.next().await {
        if order == Order::Stop {
            break;
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------
// One connection count.

#[derive(Debug, Default)]
struct Row {
    build: &'static str,
    connections: usize,
    /// Relays in the row (more than one: a cluster through Redis).
    relays: usize,
    redis_cpu_percent: f64,
    redis_rss_kib: u64,
    /// Latency of the clients of the leader and of the followers (cluster rows).
    leader_p50_ms: f64,
    leader_p99_ms: f64,
    follower_p50_ms: f64,
    follower_p99_ms: f64,
    connected: usize,
    connect_failures: usize,
    retries: u64,
    held: usize,
    connect_seconds: f64,
    baseline_kib: u64,
    idle_kib: u64,
    tcp_pages_idle: u64,
    tcp_pages_active: u64,
    active_kib: u64,
    after_kib: u64,
    peak_kib: u64,
    threads: u64,
    relay_cpu_percent: f64,
    bench_cpu_percent: f64,
    machine_busy_percent: f64,
    /// Relay CPU time over the window divided by the messages the clients and the probe
    /// received in it, in µs.
    relay_cpu_us_per_delivery: f64,
    /// Messages the clients and the probe received in the window.
    deliveries: u64,
    relay: RelayView,
    probe_p50_ms: f64,
    probe_p99_ms: f64,
    probe_max_ms: f64,
    probe_samples: usize,
    produced_per_second: f64,
    expected_quotes_per_second: f64,
    messages_per_second: f64,
    quotes_per_second: f64,
    window_snapshots: u64,
    unstamped: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    samples: usize,
    dropped_samples: u64,
    slow_consumer_warnings: u64,
    errors: u64,
    unexpected_closes: usize,
    closes_by_phase: [usize; 4],
    not_subscribed: usize,
}

impl Row {
    fn idle_per_connection_kib(&self) -> f64 {
        per_connection(self.idle_kib, self.baseline_kib, self.connected)
    }

    fn active_per_connection_kib(&self) -> f64 {
        per_connection(self.active_kib, self.baseline_kib, self.held)
    }
}

fn per_connection(kib: u64, baseline: u64, connections: usize) -> f64 {
    kib.saturating_sub(baseline) as f64 / connections.max(1) as f64
}

fn subscribe_message(index: usize, subscriptions: usize) -> String {
    let symbols: Vec<String> = (0..subscriptions)
        .map(|k| format!("\"EMU:S{}\"", 10 + (index * subscriptions + k) % SYMBOLS))
        .collect();
    format!(
        "{{\"action\":\"subscribe\",\"symbols\":[{}]}}",
        symbols.join(",")
    )
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            println!("  gave up waiting for {what} after {limit:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or(0) as f64 / 1e6
}

/// The relays' summed VmRSS (or VmHWM…).
fn summed_status(relays: &[Relay], field: &str) -> u64 {
    relays
        .iter()
        .map(|relay| proc_status(relay.pid(), field))
        .sum()
}

/// The `/healthz` body of a relay, or an empty string.
async fn health(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = b"GET /healthz HTTP/1.0\r\nHost: relay\r\n\r\n";
    if tcp.write_all(request).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response)).await;
    response
}

async fn run_one(
    emulator: &Emulator,
    params: &Params,
    build: &Build,
    connections: usize,
    relay_count: usize,
    probe_runtime: &tokio::runtime::Handle,
) -> Row {
    let mut row = Row {
        build: build.label(),
        connections,
        relays: relay_count,
        ..Row::default()
    };
    let redis = (relay_count > 1).then(Redis::start);
    let per_relay = connections.div_ceil(relay_count) + 16;
    let relays: Vec<Relay> = (0..relay_count)
        .map(|index| {
            let cluster = redis.as_ref().map(|redis| (redis.url(), index));
            Relay::start(
                build,
                &emulator.url(),
                per_relay,
                &params.relay_args,
                cluster.as_ref().map(|(url, index)| (url.as_str(), *index)),
            )
        })
        .collect();
    let pids: Vec<u32> = relays.iter().map(Relay::pid).collect();
    let pid = pids[0];
    println!(
        "N = {connections}, {} relay x {relay_count}: pids {pids:?} listening on {:?}{}",
        build.label(),
        relays.iter().map(|relay| relay.addr).collect::<Vec<_>>(),
        redis
            .as_ref()
            .map_or_else(String::new, |redis| format!(", Redis pid {}", redis.pid()))
    );
    // In a cluster, the leader is whichever relay took the lease.
    let mut leader = 0;
    if relay_count > 1 {
        let deadline = Instant::now() + Duration::from_secs(30);
        'found: loop {
            for (index, relay) in relays.iter().enumerate() {
                let page = health(relay.addr).await;
                if page.contains("\"role\":\"leader\"") && page.contains("\"upstream\":\"live\"") {
                    leader = index;
                    break 'found;
                }
            }
            assert!(Instant::now() < deadline, "no relay of the cluster leads");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("  relay {leader} leads the cluster");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    row.baseline_kib = summed_status(&relays, "VmRSS");

    // Connect.
    let urls: Vec<Arc<str>> = relays
        .iter()
        .map(|relay| Arc::from(format!("ws://{}/ws", relay.addr)))
        .collect();
    // The probe reads from a follower when there is one: it then shows the Redis hop.
    let probe_relay = if relay_count > 1 {
        (leader + 1) % relay_count
    } else {
        0
    };
    let url: Arc<str> = match build {
        Build::Floor { .. } => Arc::from(format!("{}?{}", urls[probe_relay], floor::PROBE_QUERY)),
        _ => Arc::clone(&urls[probe_relay]),
    };
    let progress = Arc::new(Progress::default());
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (orders, receiver) = watch::channel(Order::Hold);
    let sample_cap = (SAMPLE_BUDGET / connections.max(1)).max(64);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|index| {
            tokio::spawn(client(ClientSetup {
                index,
                url: Arc::clone(&urls[index % relay_count]),
                subscribe: subscribe_message(index, params.subscriptions),
                expected_snapshots: params.subscriptions as u64,
                sample_cap,
                gate: Arc::clone(&gate),
                progress: Arc::clone(&progress),
                orders: receiver.clone(),
            }))
        })
        .collect();
    drop(receiver);
    wait_until("connections", Duration::from_secs(600), || {
        progress.ready.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed)
            >= connections
    })
    .await;
    row.connect_seconds = started.elapsed().as_secs_f64();
    row.connected = progress.ready.load(Ordering::Relaxed);
    row.connect_failures = progress.failed.load(Ordering::Relaxed);
    println!(
        "  {} connected, {} failed in {:.1} s",
        row.connected, row.connect_failures, row.connect_seconds
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    row.idle_kib = summed_status(&relays, "VmRSS");
    row.tcp_pages_idle = tcp_memory_pages();

    // The probe: one more client, on its own thread, subscribed to every symbol. Its reads are
    // not queued behind thousands of other clients' on the same runtime, so its latency is
    // close to the relay's own delivery time even when the client runtime falls behind.
    let probe_progress = Arc::new(Progress::default());
    let all_symbols = format!(
        "{{\"action\":\"subscribe\",\"symbols\":[{}]}}",
        (10..10 + SYMBOLS)
            .map(|index| format!("\"EMU:S{index}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let probe = probe_runtime.spawn(client(ClientSetup {
        index: 0,
        url: Arc::clone(&url),
        subscribe: all_symbols,
        expected_snapshots: SYMBOLS as u64,
        sample_cap: SAMPLE_BUDGET / 4,
        gate: Arc::new(Semaphore::new(1)),
        progress: Arc::clone(&probe_progress),
        orders: orders.subscribe(),
    }));
    wait_until("the probe", Duration::from_secs(60), || {
        probe_progress.ready.load(Ordering::Relaxed) + probe_progress.failed.load(Ordering::Relaxed)
            > 0
    })
    .await;
    probe_progress.phase.store(PHASE_WARMUP, Ordering::Relaxed);

    // Subscribe, wait for every snapshot, warm up.
    progress.phase.store(PHASE_WARMUP, Ordering::Relaxed);
    let subscribing = Instant::now();
    let _ = orders.send(Order::Subscribe);
    let open_now = progress.open.load(Ordering::Relaxed);
    wait_until("snapshots", Duration::from_secs(120), || {
        progress.subscribed.load(Ordering::Relaxed) >= open_now.min(row.connected)
            && probe_progress.subscribed.load(Ordering::Relaxed)
                >= probe_progress.open.load(Ordering::Relaxed)
    })
    .await;
    println!(
        "  {} clients had all their snapshots after {:.1} s",
        progress.subscribed.load(Ordering::Relaxed),
        subscribing.elapsed().as_secs_f64()
    );
    let wanted = (connections * params.subscriptions).min(SYMBOLS);
    wait_until("quotes of every symbol", Duration::from_secs(180), || {
        progress.live_symbols() >= wanted
    })
    .await;
    println!(
        "  quotes of {} of {wanted} symbols flowing after {:.1} s",
        progress.live_symbols(),
        subscribing.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(params.warmup)).await;

    // Measure.
    let window = Duration::from_secs(params.seconds);
    let metrics_before = scrape(relays[probe_relay].addr).await;
    // The leader's publishes (a cluster row): how much of the stream went through Redis.
    let leader_before = scrape(relays[leader].addr).await;
    let quotes_before = emulator.stats().quotes_sent.load(Ordering::Relaxed);
    let redis_pid = redis.as_ref().map(Redis::pid);
    let cpu_before = CpuSample::take(&pids, redis_pid);
    let measure_start = Instant::now();
    progress.phase.store(PHASE_MEASURE, Ordering::Relaxed);
    probe_progress.phase.store(PHASE_MEASURE, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    progress.phase.store(PHASE_AFTER, Ordering::Relaxed);
    probe_progress.phase.store(PHASE_AFTER, Ordering::Relaxed);
    let elapsed = measure_start.elapsed().as_secs_f64();
    let quotes_after = emulator.stats().quotes_sent.load(Ordering::Relaxed);
    let cpu_after = CpuSample::take(&pids, redis_pid);
    let metrics_after = scrape(relays[probe_relay].addr).await;
    let leader_after = scrape(relays[leader].addr).await;
    let leader_rate = |name: &str| {
        (metric(&leader_after, name) - metric(&leader_before, name)).max(0.0) / elapsed
    };
    let published_per_second = leader_rate("tickwire_relay_cluster_published_total");
    let coalesced_per_second = leader_rate("tickwire_relay_cluster_publishes_coalesced_total");
    row.relay = relay_view(&metrics_before, &metrics_after, elapsed);
    row.active_kib = summed_status(&relays, "VmRSS");
    row.tcp_pages_active = tcp_memory_pages();
    row.peak_kib = summed_status(&relays, "VmHWM");
    row.threads = summed_status(&relays, "Threads");
    row.redis_cpu_percent = cpu_before.redis_percent_until(&cpu_after, elapsed);
    row.redis_rss_kib = redis_pid.map_or(0, |pid| proc_status(pid, "VmRSS"));
    row.held = progress.open.load(Ordering::Relaxed);
    row.produced_per_second = match build {
        // The floor writes its own updates, at the requested rate.
        Build::Floor { rate, .. } => *rate,
        _ => quotes_after.saturating_sub(quotes_before) as f64 / elapsed,
    };
    (
        row.relay_cpu_percent,
        row.bench_cpu_percent,
        row.machine_busy_percent,
    ) = cpu_before.percent_until(&cpu_after, elapsed);
    let mut relays = relays;
    let alive = relays.iter_mut().all(Relay::alive);

    // Stop and collect.
    let _ = orders.send(Order::Stop);
    let mut latencies = Vec::new();
    let (mut leader_latencies, mut follower_latencies) = (Vec::new(), Vec::new());
    let mut window_messages = 0u64;
    let mut window_quotes = 0u64;
    let mut connect_errors = Vec::new();
    let mut close_reasons = Vec::new();
    let mut first_error = None;
    let probe_report = probe.await.expect("the probe panicked");
    let probe_window_messages = probe_report.window_messages;
    let mut probe_latencies = probe_report.latencies;
    probe_latencies.sort_unstable();
    row.probe_samples = probe_latencies.len();
    row.probe_p50_ms = quantile(&probe_latencies, 0.50);
    row.probe_p99_ms = quantile(&probe_latencies, 0.99);
    row.probe_max_ms = probe_latencies.last().copied().unwrap_or(0) as f64 / 1e6;
    for (index, task) in tasks.into_iter().enumerate() {
        let report = task.await.expect("a client task panicked");
        if relay_count > 1 {
            if index % relay_count == leader {
                leader_latencies.extend_from_slice(&report.latencies);
            } else {
                follower_latencies.extend_from_slice(&report.latencies);
            }
        }
        row.retries += u64::from(report.retries);
        if !report.connected {
            if connect_errors.len() < 5 {
                connect_errors.extend(report.connect_error);
            }
            continue;
        }
        window_messages += report.window_messages;
        window_quotes += report.window_quotes;
        row.window_snapshots += report.window_snapshots;
        row.unstamped += report.unstamped;
        row.slow_consumer_warnings += report.slow_consumer_warnings;
        row.errors += report.errors;
        row.dropped_samples += report.dropped_samples;
        if first_error.is_none() {
            first_error = report.first_error;
        }
        if let Some((phase, reason)) = report.closed_early {
            row.unexpected_closes += 1;
            if let Some(count) = row.closes_by_phase.get_mut(usize::from(phase)) {
                *count += 1;
            }
            if close_reasons.len() < 5 {
                close_reasons.push(format!("{}: {reason}", phase_name(phase)));
            }
        }
        latencies.extend(report.latencies);
    }
    row.not_subscribed = row
        .connected
        .saturating_sub(progress.subscribed.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(1)).await;
    row.after_kib = summed_status(&relays, "VmRSS");
    let _ = pid;
    row.messages_per_second = window_messages as f64 / elapsed;
    row.deliveries = window_messages + probe_window_messages;
    row.relay_cpu_us_per_delivery =
        row.relay_cpu_percent / 100.0 * elapsed / row.deliveries.max(1) as f64 * 1e6;
    row.quotes_per_second = window_quotes as f64 / elapsed;
    // Each update of a symbol goes to every subscriber of that symbol; the emulator spreads its
    // ticks uniformly over the 100 symbols.
    row.expected_quotes_per_second =
        row.produced_per_second / SYMBOLS as f64 * (row.held * params.subscriptions) as f64;
    latencies.sort_unstable();
    row.samples = latencies.len();
    row.p50_ms = quantile(&latencies, 0.50);
    row.p99_ms = quantile(&latencies, 0.99);
    row.max_ms = latencies.last().copied().unwrap_or(0) as f64 / 1e6;
    leader_latencies.sort_unstable();
    follower_latencies.sort_unstable();
    row.leader_p50_ms = quantile(&leader_latencies, 0.50);
    row.leader_p99_ms = quantile(&leader_latencies, 0.99);
    row.follower_p50_ms = quantile(&follower_latencies, 0.50);
    row.follower_p99_ms = quantile(&follower_latencies, 0.99);

    println!(
        "  relay: {} RSS baseline {} KiB, idle {} KiB, active {} KiB, after disconnect {} KiB, \
         peak {} KiB; {} threads",
        if alive { "alive," } else { "EXITED," },
        row.baseline_kib,
        row.idle_kib,
        row.active_kib,
        row.after_kib,
        row.peak_kib,
        row.threads,
    );
    println!(
        "  kernel TCP buffer memory (whole machine, both ends of every socket; not in RSS): \
         {} KiB idle, {} KiB active",
        row.tcp_pages_idle * 4,
        row.tcp_pages_active * 4
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    println!(
        "  CPU while measuring (% of one core): relay {:.0}%, bench process (emulator + clients) \
         {:.0}%, other processes {:.0}%; machine {:.0}% busy over its {cores} cores",
        row.relay_cpu_percent,
        row.bench_cpu_percent,
        (row.machine_busy_percent * cores - row.relay_cpu_percent - row.bench_cpu_percent).max(0.0),
        row.machine_busy_percent
    );
    println!(
        "  relay CPU per delivery: {:.2} µs ({:.2} CPU s over {} messages received by the \
         clients and the probe)",
        row.relay_cpu_us_per_delivery,
        row.relay_cpu_percent / 100.0 * elapsed,
        row.deliveries
    );
    println!(
        "  delivered {:.0} msgs/s, {:.0} quotes/s (expected {:.0} = {:.0} updates/s / {SYMBOLS} \
         symbols x {} subscriptions); {} conflated snapshots, {} unstamped quotes",
        row.messages_per_second,
        row.quotes_per_second,
        row.expected_quotes_per_second,
        row.produced_per_second,
        row.held * params.subscriptions,
        row.window_snapshots,
        row.unstamped
    );
    println!(
        "  latency over {} samples ({} dropped): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        row.samples, row.dropped_samples, row.p50_ms, row.p99_ms, row.max_ms
    );
    println!(
        "  probe (own thread, all {SYMBOLS} symbols), {} samples: p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms",
        row.probe_samples, row.probe_p50_ms, row.probe_p99_ms, row.probe_max_ms
    );
    let floor = matches!(build, Build::Floor { .. });
    println!(
        "  {}relay /metrics over the window: {:.0} updates/s in, {:.0} msgs/s out (probe \
         included), {:.1} updates/s unchanged (not sent), {} conflated deliveries, {} \
         SLOW_CONSUMER; broadcast latency (hub to \
         socket write) p50 <= {} ms, p99 <= {} ms, mean {:.2} ms",
        if floor {
            "(none: the floor has no /metrics) "
        } else {
            ""
        },
        row.relay.updates_per_second,
        row.relay.messages_per_second,
        row.relay.unchanged_per_second,
        row.relay.conflated,
        row.relay.slow_consumers,
        row.relay.broadcast_p50_ms,
        row.relay.broadcast_p99_ms,
        row.relay.broadcast_mean_ms
    );
    for line in &row.relay.disconnects {
        println!("    relay {line}");
    }
    println!(
        "  connect retries {}, clients without every snapshot {}, SLOW_CONSUMER warnings {}, \
         error messages {}, unexpected closes {} (idle/warm-up/measuring/after: {:?})",
        row.retries,
        row.not_subscribed,
        row.slow_consumer_warnings,
        row.errors,
        row.unexpected_closes,
        row.closes_by_phase
    );
    for error in &connect_errors {
        println!("    connect error: {error}");
    }
    for reason in &close_reasons {
        println!("    close: {reason}");
    }
    if let Some(error) = first_error {
        println!("    first error message: {error}");
    }
    if relay_count > 1 {
        println!(
            "  cluster of {relay_count}: clients of the leader p50 {:.2} ms, p99 {:.2} ms; of the \
             followers p50 {:.2} ms, p99 {:.2} ms (the Redis hop); Redis {:.0}% of a core, RSS \
             {} KiB; the leader published {:.0} messages/s and coalesced {:.0} changes/s",
            row.leader_p50_ms,
            row.leader_p99_ms,
            row.follower_p50_ms,
            row.follower_p99_ms,
            row.redis_cpu_percent,
            row.redis_rss_kib,
            published_per_second,
            coalesced_per_second
        );
    }
    for relay in &relays {
        relay.stdout.print("stdout");
        relay.stderr.print("stderr");
    }
    drop(relays);
    drop(redis);
    row
}

/// Relay mode: serve until standard input ends (the bench holds it open) or the process is
/// killed. Its first stdout line is the address, as `tickwire relay` prints it.
fn relay_child() {
    let upstream = std::env::var(CHILD_UPSTREAM).expect("the upstream URL");
    let max_connections: usize = env_or(CHILD_MAX_CONNECTIONS, 1024);
    let mut config = RelayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..RelayConfig::default()
    };
    config.upstream.url = upstream;
    config.hub.max_connections = max_connections;
    if let Ok(redis) = std::env::var(CHILD_REDIS) {
        let url = RedisUrl::parse(&redis).expect("the cluster's Redis URL");
        let mut cluster = ClusterConfig::new(url, "load").expect("a valid cluster name");
        if let Ok(id) = std::env::var(CHILD_RELAY_ID) {
            cluster.node.lease.relay_id = id;
        }
        config.cluster = Some(cluster);
    }
    let needed = (max_connections + config.max_http_connections + 64) as u64;
    let limit = rlimit::increase_nofile_limit(needed).unwrap_or(0);
    if limit < needed {
        eprintln!("open-file limit {limit} is below the {needed} this run needs");
    }
    // As `tickwire relay` runs it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("relay runtime");
    runtime.block_on(async {
        let relay = RelayServer::start(config).await.expect("relay start");
        println!("listening on http://{}", relay.local_addr());
        let (ended, stdin_closed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = ended.send(());
        });
        let _ = stdin_closed.await;
        relay.shutdown().await;
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
}

/// A cell of the cluster columns: `-` for a row of one relay.
fn cluster_cell(relays: usize, p50: f64, p99: f64, unit: &str) -> String {
    if relays > 1 {
        format!("{p50:.2}{unit} / {p99:.2}{unit}")
    } else {
        "-".to_owned()
    }
}

fn main() {
    match std::env::var(CHILD_MODE).as_deref() {
        Ok("relay") => return relay_child(),
        Ok(floor::FLOOR_MODE) => return floor::floor_child(),
        _ => {}
    }
    // `cargo test --benches` runs bench binaries without --bench: keep that cheap.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("relay_load: run with `cargo bench -p tickwire-relay --bench relay_load`");
        return;
    }
    let params = Params::from_env();
    // The emulator gets its own thread so the clients cannot starve its market timer.
    let emulator_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("emulator runtime");
    let emulator = emulator_runtime
        .block_on(Emulator::start(EmulatorConfig {
            symbols: MARKET_SYMBOLS,
            rate_hz: params.rate * MARKET_SYMBOLS as f64 / SYMBOLS as f64,
            stamp_quotes: true,
            ..EmulatorConfig::default()
        }))
        .expect("emulator");
    let probe_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("probe runtime");
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    println!(
        "relay_load: {SYMBOLS} symbols, {} updates/s requested over them, {} subscription(s) per \
         client, {} s warm-up, {} s measured, connections {:?}",
        params.rate, params.subscriptions, params.warmup, params.seconds, params.connections
    );
    let mut builds = Vec::new();
    if params.floor {
        builds.push(Build::Floor {
            rate: params.rate,
            subscriptions: params.subscriptions,
        });
    }
    if let Some(old) = &params.compare {
        builds.push(Build::Old(old.clone()));
    }
    builds.push(Build::Current);
    let mut rows = Vec::new();
    for &connections in &params.connections {
        for &relay_count in &params.relays {
            for build in &builds {
                if relay_count > 1 && !matches!(build, Build::Current) {
                    continue; // neither the old build nor the floor has a cluster mode
                }
                rows.push(clients.block_on(run_one(
                    &emulator,
                    &params,
                    build,
                    connections,
                    relay_count,
                    probe_runtime.handle(),
                )));
            }
        }
    }
    clients.shutdown_timeout(Duration::from_secs(2));

    let produced = rows
        .iter()
        .map(|row| format!("{:.0}", row.produced_per_second))
        .collect::<Vec<_>>()
        .join(" / ");
    println!();
    println!(
        "Parameters: {SYMBOLS} symbols, upstream updates/s measured at the emulator: {produced}; \
         {} subscription(s) per client (round-robin); {} s measured after {} s warm-up; \
         new relay: `RelayConfig` defaults; old relay: {}; emulator, relay and clients on the \
         same machine.",
        params.subscriptions,
        params.seconds,
        params.warmup,
        params.compare.as_ref().map_or_else(
            || "none".to_owned(),
            |path| format!(
                "`{} relay --bars none {}`",
                path.display(),
                params.relay_args.join(" ")
            )
        ),
    );
    println!();
    println!(
        "| build | relays | connections | held | connect failures | relay RSS/idle conn | relay RSS/active conn | \
         msgs/s delivered | quotes/s (expected) | p50 | p99 | max | probe p99 | SLOW_CONSUMER | \
         unexpected closes | CPU relay / bench / machine | relay CPU per delivery | p50 / p99 leader's clients | p50 / p99 followers' clients | Redis CPU / RSS |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} KiB | {:.1} KiB | {:.0} | {:.0} ({:.0}) | {:.2} ms | \
             {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {:.0}% / {:.0}% / {:.0}% | {:.2} µs | {} | {} | {} |",
            row.build,
            row.relays,
            row.connections,
            row.held,
            row.connect_failures,
            row.idle_per_connection_kib(),
            row.active_per_connection_kib(),
            row.messages_per_second,
            row.quotes_per_second,
            row.expected_quotes_per_second,
            row.p50_ms,
            row.p99_ms,
            row.max_ms,
            row.probe_p99_ms,
            row.slow_consumer_warnings,
            row.unexpected_closes,
            row.relay_cpu_percent,
            row.bench_cpu_percent,
            row.machine_busy_percent,
            row.relay_cpu_us_per_delivery,
            cluster_cell(row.relays, row.leader_p50_ms, row.leader_p99_ms, " ms"),
            cluster_cell(row.relays, row.follower_p50_ms, row.follower_p99_ms, " ms"),
            if row.relays > 1 {
                format!("{:.0}% / {} KiB", row.redis_cpu_percent, row.redis_rss_kib)
            } else {
                "-".to_owned()
            }
        );
    }
    emulator_runtime.block_on(emulator.shutdown());
}

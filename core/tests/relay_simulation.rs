//! Deterministic simulation of the relay's upstream side with no sockets: a real `Client` under
//! a `Fanout`, a simulated TradingView server that misbehaves on purpose (rejected symbols,
//! refused series, dropped connections, stalls, heartbeat-only spells, refused connects), and
//! hundreds of simulated downstream clients that subscribe, unsubscribe, stall, resume, go
//! silent and leave. Faults come from a seeded generator and time is virtual; the invariants
//! are checked after every step.
//!
//! The oracle: for every symbol the hub holds, the "tape" of changes the hub must broadcast
//! (each quote whose price differs from the last one, each bar that differs from the latest),
//! built from what the upstream client reported while the hub held the symbol. A downstream
//! client that was never conflated must receive exactly the tape from its snapshot on; one
//! that was conflated only values from the tape, never going back; every client that has
//! nothing waiting holds the latest price of each of its symbols.
//!
//! `TICKWIRE_RELAY_SIM_SEEDS` seeds (default: `TICKWIRE_SIM_SEEDS` if set, else 8) of
//! `TICKWIRE_RELAY_SIM_STEPS` steps each (default 4 000, fewer when there are more than 16
//! seeds, so CI's 24 stay within twice the default run); `TICKWIRE_RELAY_SIM_SEED=N` replays
//! one seed. Seeds run in parallel; a failure prints its seed and step.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tickwire_core::client::{
    Client, Config, ConnectionId, Event, Input, Output, Source, State, TransportError,
    TransportErrorKind,
};
use tickwire_core::codec::{Decoder, Packet, frame};
use tickwire_core::hub::{
    CloseReason, ConnId, Fanout, FanoutOutput, Frame, HubConfig, UpstreamPlan,
};

/// Symbols downstream clients ask for. `BAD:` ones the server rejects (`no_such_symbol`, and
/// `symbol_error` for their series), `NOBARS:` ones have their series refused, `WL:DENIED` is
/// left out of the whitelist when there is one, and `bad symbol` is not a valid symbol.
const UNIVERSE: &[&str] = &[
    "NASDAQ:AAPL",
    "NASDAQ:MSFT",
    "NASDAQ:NVDA",
    "NYSE:IBM",
    "NYSE:KO",
    "BINANCE:BTCUSDT",
    "BINANCE:ETHUSDT",
    "FX:EURUSD",
    "FX:GBPUSD",
    "FX:USDJPY",
    "TVC:GOLD",
    "AMEX:SPY",
    "BAD:NOPE",
    "BAD:GONE",
    "NOBARS:ONE",
    "WL:DENIED",
    "bad symbol",
];
/// Symbols the hub can hold at once (every valid one).
const VALID_SYMBOLS: usize = 16;
const INVALID: &str = "bad symbol";
const DENIED: &str = "WL:DENIED";
/// The hub's sweep granularity: deadlines are checked at most this often.
const SWEEP: Duration = Duration::from_millis(100);
const SLACK: Duration = Duration::from_millis(1);
/// Control frames a connection may hold beyond its queue capacity.
const CONTROL_HEADROOM: usize = 64;

type BarKey = (u64, u64, bool);

fn bar_key(time: f64, close: f64, closed: bool) -> BarKey {
    (time.to_bits(), close.to_bits(), closed)
}

/// The changes the hub must broadcast for one symbol, while it holds the symbol.
#[derive(Debug, Default)]
struct Tape {
    prices: Vec<f64>,
    bars: Vec<BarKey>,
    bar_set: HashSet<BarKey>,
    /// The latest bar (a closed bar older than it never replaces it): time and key.
    latest_bar: Option<(f64, BarKey)>,
}

type TapeRef = Rc<RefCell<Tape>>;

/// What a downstream client is owed for one symbol, in the order the hub queues it.
#[derive(Debug)]
enum Expect {
    Snapshot {
        tape: TapeRef,
        q_start: usize,
        b_start: usize,
        lp: Option<f64>,
        bar: Option<BarKey>,
        epoch: u64,
    },
    Refusal {
        code: &'static str,
        epoch: u64,
    },
    Unsubscribed {
        epoch: u64,
    },
}

impl Expect {
    fn epoch(&self) -> u64 {
        match self {
            Expect::Snapshot { epoch, .. }
            | Expect::Refusal { epoch, .. }
            | Expect::Unsubscribed { epoch } => *epoch,
        }
    }
}

/// A symbol a downstream client has received the snapshot of, and where it is on the tape.
#[derive(Debug)]
struct View {
    tape: TapeRef,
    q_next: usize,
    b_next: usize,
    last_lp: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Reports every frame written as soon as it is sent.
    Healthy,
    /// Reports some frames now and then.
    Slow,
    /// Reports nothing.
    Stalled,
}

#[derive(Debug)]
struct Down {
    pace: Pace,
    /// Has ever been slow or stalled (only those may fall behind).
    ever_slow: bool,
    /// Sends nothing (no message, no ping): the keepalive must close it.
    silent: bool,
    lossy: bool,
    conflated: bool,
    in_flight: usize,
    /// The status the first frame must carry, until it arrives.
    first_status: Option<&'static str>,
    /// What the hub should hold as its subscriptions.
    subs: BTreeSet<&'static str>,
    views: BTreeMap<&'static str, View>,
    expect: BTreeMap<&'static str, VecDeque<Expect>>,
    /// Rejections (their epochs) whose `UNKNOWN_SYMBOL` error is on its way.
    rejects: BTreeMap<&'static str, VecDeque<u64>>,
    pongs: usize,
    bad_requests: usize,
    last_heard: Instant,
    last_message: Option<Instant>,
    ping_every: Duration,
    behind_since: Option<Instant>,
}

/// How the network answers the upstream connection attempt in flight.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Accept(Instant),
    Refuse(Instant),
    Hang,
}

#[derive(Debug, Default)]
struct Server {
    open: bool,
    quote_session: Option<String>,
    chart_session: Option<String>,
    symbols: BTreeSet<String>,
    /// Messages to send with the next data batch (rejections, chart answers).
    queued: Vec<String>,
    resolved: HashMap<String, String>,
    /// Open series: id to symbol.
    series: BTreeMap<String, String>,
    stalled_until: Option<Instant>,
    heartbeat_only_until: Option<Instant>,
    heartbeats: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    clients: u64,
    max_live: usize,
    refused: u64,
    quotes: u64,
    frames: u64,
    conflated: u64,
    slow_cuts: u64,
    keepalive_cuts: u64,
    rejections: u64,
    series_refused: u64,
    upstream_connects: u64,
    upstream_drops: u64,
    lossy: u64,
    strict_checks: u64,
    settled_checks: u64,
}

struct Sim {
    seed: u64,
    rng: fastrand::Rng,
    step: u64,
    /// The time of the step.
    now: Instant,
    /// The time of the latest input (timers run at their due times, before `now`).
    clock: Instant,
    hub_config: HubConfig,
    timeframe: Option<String>,
    /// No lingering symbol can be evicted for a new one, so linger is exact.
    no_eviction: bool,
    client: Client,
    fanout: Fanout,
    // ----- upstream
    link: Option<(ConnectionId, Pending)>,
    server: Server,
    server_down_until: Option<Instant>,
    decoder: Decoder,
    next_value: u64,
    market_bars: HashMap<String, (f64, f64)>,
    token_wanted: bool,
    upstream_state: State,
    // ----- oracle
    tapes: BTreeMap<&'static str, TapeRef>,
    epochs: HashMap<&'static str, u64>,
    refused_series: BTreeSet<&'static str>,
    wanted: BTreeMap<&'static str, usize>,
    wanted_at: BTreeMap<&'static str, Instant>,
    /// Symbols nobody wants: since when, and whether upstream carried them then.
    unwanted: BTreeMap<&'static str, (Instant, bool)>,
    quiet_since: Instant,
    dropped_seen: u64,
    // ----- downstream
    downs: BTreeMap<ConnId, Box<Down>>,
    gone: HashSet<ConnId>,
    /// Connections that got frames since the last written reports.
    touched: BTreeSet<ConnId>,
    /// Connections that had an input or a frame this step, and symbols whose tape moved.
    dirty: BTreeSet<ConnId>,
    changed: BTreeSet<&'static str>,
    held_signature: (u64, u64, u64),
    target: usize,
    shut_down: bool,
    parsed: BTreeMap<usize, (Bytes, Rc<Parsed>)>,
    stats: Stats,
}

#[derive(Debug)]
enum Parsed {
    Status(String),
    Pong,
    Snapshot {
        symbol: String,
        lp: Option<f64>,
        bar: Option<(BarKey, String)>,
    },
    Quote {
        symbol: String,
        lp: Option<f64>,
    },
    Bar {
        symbol: String,
        key: BarKey,
        timeframe: String,
    },
    Unsubscribed(String),
    Error {
        code: String,
        symbol: Option<String>,
    },
    Warning(String),
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

fn parse_bar(value: &Value) -> Option<BarKey> {
    Some(bar_key(
        number(&value["bar"]["time"])?,
        number(&value["bar"]["close"])?,
        value["closed"].as_bool()?,
    ))
}

fn parse_frame(text: &str) -> Option<Parsed> {
    let value: Value = serde_json::from_str(text).ok()?;
    let symbol = || value["symbol"].as_str().map(str::to_owned);
    Some(match value["type"].as_str()? {
        "status" => Parsed::Status(value["upstream"].as_str()?.to_owned()),
        "pong" => Parsed::Pong,
        "snapshot" => Parsed::Snapshot {
            symbol: symbol()?,
            lp: number(&value["quote"]["lp"]),
            bar: match &value["bar"] {
                Value::Null => None,
                bar => Some((parse_bar(bar)?, bar["timeframe"].as_str()?.to_owned())),
            },
        },
        "quote" => Parsed::Quote {
            symbol: symbol()?,
            lp: number(&value["data"]["lp"]),
        },
        "bar" => Parsed::Bar {
            symbol: symbol()?,
            key: parse_bar(&value)?,
            timeframe: value["timeframe"].as_str()?.to_owned(),
        },
        "unsubscribed" => Parsed::Unsubscribed(symbol()?),
        "error" => Parsed::Error {
            code: value["code"].as_str()?.to_owned(),
            symbol: symbol(),
        },
        "warning" => Parsed::Warning(value["code"].as_str()?.to_owned()),
        _ => return None,
    })
}

fn universe(symbol: &str) -> Option<&'static str> {
    UNIVERSE.iter().copied().find(|known| *known == symbol)
}

macro_rules! check {
    ($sim:expr, $condition:expr, $($message:tt)+) => {
        if !$condition {
            panic!("seed {} step {}: {}", $sim.seed, $sim.step, format!($($message)+));
        }
    };
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let start = Instant::now();
        let no_eviction = rng.bool();
        let hub_config = HubConfig {
            max_connections: rng.usize(60..450),
            max_subscriptions_per_connection: rng.usize(2..7),
            max_upstream_symbols: if no_eviction {
                rng.usize(VALID_SYMBOLS..VALID_SYMBOLS + 8)
            } else {
                rng.usize(5..VALID_SYMBOLS)
            },
            messages_per_second: rng.u32(5..20),
            message_burst: rng.u32(3..20),
            queue_capacity: rng.usize(8..40),
            send_window: rng.usize(1..8),
            slow_consumer_deadline: Duration::from_millis(rng.u64(1_000..8_000)),
            keepalive_timeout: Duration::from_millis(rng.u64(5_000..30_000)),
            linger: if rng.bool() {
                Duration::from_millis(rng.u64(500..20_000))
            } else {
                Duration::ZERO
            },
            upstream_batch_delay: if rng.bool() {
                Duration::from_millis(rng.u64(10..300))
            } else {
                Duration::ZERO
            },
            whitelist: rng.bool().then(|| {
                UNIVERSE
                    .iter()
                    .filter(|symbol| **symbol != DENIED)
                    .map(|symbol| Arc::from(*symbol))
                    .collect()
            }),
            ..HubConfig::default()
        };
        let timeframe = [None, Some("1"), Some("5m"), Some("1h")][rng.usize(0..4)];
        let plan = UpstreamPlan {
            bars: timeframe.map(str::to_owned),
            bar_history: rng.u32(1..300),
        };
        let config = Config {
            seed: Some(seed),
            burst: rng.u32(10..40),
            rate_limit_per_minute: rng.u32(120..1_200),
            max_queued_commands: 10_000,
            max_attempts: rng.u32(2..5),
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(8),
            data_silence: Duration::from_secs(15),
            health_interval: Duration::from_secs(4),
            grace: Duration::from_secs(1),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            breaker_recovery: Duration::from_secs(rng.u64(5..30)),
            max_subscriptions: rng.usize(hub_config.max_upstream_symbols..200),
            ..Config::default()
        };
        assert!(config.jitter > 0.0, "jitter stays on");
        let client = Client::new(config.clone(), start);
        let fanout = Fanout::new(hub_config.clone(), plan, &config).expect("a usable fanout");
        let timeframe = fanout.timeframe().map(str::to_owned);
        let target = rng.usize(80..320);
        Sim {
            seed,
            rng,
            step: 0,
            now: start,
            clock: start,
            hub_config,
            timeframe,
            no_eviction,
            client,
            fanout,
            link: None,
            server: Server::default(),
            server_down_until: None,
            decoder: Decoder::new(),
            next_value: 4,
            market_bars: HashMap::new(),
            token_wanted: false,
            upstream_state: State::Idle,
            tapes: BTreeMap::new(),
            epochs: HashMap::new(),
            refused_series: BTreeSet::new(),
            wanted: BTreeMap::new(),
            wanted_at: BTreeMap::new(),
            unwanted: BTreeMap::new(),
            quiet_since: start,
            dropped_seen: 0,
            downs: BTreeMap::new(),
            gone: HashSet::new(),
            touched: BTreeSet::new(),
            dirty: BTreeSet::new(),
            changed: BTreeSet::new(),
            held_signature: (u64::MAX, 0, 0),
            target,
            shut_down: false,
            parsed: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    fn run(&mut self, steps: u64) {
        // The first subscribers arrive before the upstream connects.
        self.client.handle_timeout(self.clock);
        self.settle();
        let shutdown_at = steps.saturating_sub(steps / 10).max(1);
        for step in 0..steps {
            self.step = step;
            // Now and then a longer quiet spell, yet short enough for live clients to ping.
            let spell = self.hub_config.keepalive_timeout.as_millis() as u64 / 3;
            self.now += if self.rng.u8(0..50) == 0 {
                Duration::from_millis(self.rng.u64(1_000..spell))
            } else {
                Duration::from_millis(self.rng.u64(0..400))
            };
            self.run_timers();
            self.upstream_acts();
            if step == shutdown_at {
                self.shutdown();
            }
            self.downstream_acts();
            self.check_invariants();
            self.parsed.clear();
        }
        // Past the linger and the batch delay, the upstream carries nothing.
        let end = self.now + self.hub_config.linger + self.hub_config.upstream_batch_delay;
        while self.now <= end + SWEEP + Duration::from_secs(1) {
            self.step += 1;
            self.now += Duration::from_millis(200);
            self.run_timers();
            self.upstream_acts();
            self.check_invariants();
            self.parsed.clear();
        }
        check!(
            self,
            self.client.quote_symbols().is_empty() && self.client.bar_subscriptions().is_empty(),
            "after shutdown and linger the upstream still carries {:?} and {:?}",
            self.client.quote_symbols(),
            self.client.bar_subscriptions()
        );
        check!(
            self,
            self.fanout.series_count() == 0 && self.fanout.hub().symbols().count() == 0,
            "the fanout still holds {} series",
            self.fanout.series_count()
        );
        check!(
            self,
            self.stats.quotes > 100
                && self.stats.clients >= 100
                && self.stats.upstream_connects > 0,
            "too little happened: {:?}",
            self.stats
        );
    }

    // ----- time ------------------------------------------------------------------------------

    /// Runs every timer due by `now`, each at its own due time, in order.
    fn run_timers(&mut self) {
        for _ in 0..100_000 {
            let fanout_due = self.fanout.poll_timeout();
            let client_due = self.client.poll_timeout();
            let Some(due) = [fanout_due, client_due]
                .into_iter()
                .flatten()
                .min()
                .filter(|due| *due <= self.now)
            else {
                self.clock = self.now;
                return;
            };
            self.clock = due.max(self.clock);
            if fanout_due.is_some_and(|due| due <= self.clock) {
                self.fanout.handle_timeout(self.clock);
                self.settle();
                let next = self.fanout.poll_timeout();
                check!(
                    self,
                    next.is_none_or(|next| next > self.clock),
                    "fanout deadline {next:?} not after the timeout just handled"
                );
            }
            if client_due.is_some_and(|due| due <= self.clock) {
                self.client.handle_timeout(self.clock);
                self.settle();
            }
        }
        panic!("seed {} step {}: timers never settle", self.seed, self.step);
    }

    // ----- the upstream server -----------------------------------------------------------------

    fn value(&mut self) -> f64 {
        self.next_value += 1;
        self.next_value as f64 / 4.0
    }

    fn upstream_acts(&mut self) {
        if self.token_wanted && self.rng.u8(0..3) == 0 {
            self.token_wanted = false;
            self.client.handle_input(self.clock, Input::AuthToken(None));
            self.settle();
        }
        match self.link {
            Some((id, Pending::Accept(at))) if self.now >= at && !self.server.open => {
                self.server.open = true;
                self.stats.upstream_connects += 1;
                self.client.handle_input(self.clock, Input::Connected(id));
                self.settle();
                self.send(vec![frame(r#"{"session_id":"sim","protocol":"json"}"#)]);
            }
            Some((id, Pending::Refuse(at))) if self.now >= at => {
                self.link = None;
                self.client.handle_input(
                    self.clock,
                    Input::ConnectFailed {
                        id,
                        error: TransportError::new(TransportErrorKind::Refused, "refused"),
                    },
                );
                self.settle();
            }
            _ => {}
        }
        let Some((id, _)) = self.link.filter(|_| self.server.open) else {
            return;
        };
        if self
            .server
            .stalled_until
            .is_some_and(|until| self.now < until)
        {
            return;
        }
        match self.rng.u16(0..1_000) {
            0..=2 => {
                self.stats.upstream_drops += 1;
                self.link = None;
                self.server = Server::default();
                if self.rng.u8(0..3) == 0 {
                    self.server_down_until =
                        Some(self.now + Duration::from_secs(self.rng.u64(5..30)));
                }
                self.client.handle_input(
                    self.clock,
                    Input::Disconnected {
                        id,
                        error: TransportError::new(TransportErrorKind::Reset, "reset"),
                    },
                );
                self.settle();
            }
            3..=4 => {
                self.server.stalled_until =
                    Some(self.now + Duration::from_secs(self.rng.u64(3..30)));
            }
            5..=6 => {
                self.server.heartbeat_only_until =
                    Some(self.now + Duration::from_secs(self.rng.u64(3..40)));
            }
            7 => self.send(vec![frame(r#"{"m":"protocol_error","p":["wrong data"]}"#)]),
            8..=600 => {
                let quiet = self
                    .server
                    .heartbeat_only_until
                    .is_some_and(|until| self.now < until);
                let packets = if quiet {
                    vec![self.heartbeat()]
                } else {
                    self.data_batch()
                };
                self.send(packets);
            }
            _ => {}
        }
    }

    fn heartbeat(&mut self) -> String {
        self.server.heartbeats += 1;
        frame(&format!("~h~{}", self.server.heartbeats))
    }

    fn data_batch(&mut self) -> Vec<String> {
        let mut packets = std::mem::take(&mut self.server.queued);
        let Some(session) = self.server.quote_session.clone() else {
            packets.push(self.heartbeat());
            return packets;
        };
        let symbols: Vec<String> = self.server.symbols.iter().cloned().collect();
        for _ in 0..self.rng.usize(0..4) {
            if self.rng.u8(0..8) == 0 {
                packets.push(self.heartbeat());
            }
            if symbols.is_empty() {
                continue;
            }
            let symbol = &symbols[self.rng.usize(0..symbols.len())];
            let price = self.value();
            let payload = format!(
                r#"{{"m":"qsd","p":["{session}",{{"n":"{symbol}","s":"ok","v":{{"lp":{price},"volume":7}}}}]}}"#
            );
            packets.push(frame(&payload));
            if self.rng.u8(0..15) == 0 {
                packets.push(frame(&payload)); // a repeated update changes nothing
            }
        }
        if let Some(chart) = self.server.chart_session.clone()
            && !self.server.series.is_empty()
            && self.rng.bool()
        {
            let all: Vec<(String, String)> = self
                .server
                .series
                .iter()
                .map(|(id, symbol)| (id.clone(), symbol.clone()))
                .collect();
            let (series, symbol) = &all[self.rng.usize(0..all.len())];
            let (time, _) = self.market_bar(symbol);
            let close = self.value();
            let time = if self.rng.u8(0..3) == 0 {
                time + 60.0
            } else {
                time
            };
            self.market_bars.insert(symbol.clone(), (time, close));
            packets.push(frame(&format!(
                r#"{{"m":"du","p":["{chart}",{{"{series}":{{"s":[{{"i":9,"v":[{time:.1},{close},{close},{close},{close},3]}}],"t":"s1"}}}}]}}"#
            )));
        }
        if packets.is_empty() {
            packets.push(self.heartbeat());
        }
        packets
    }

    fn market_bar(&mut self, symbol: &str) -> (f64, f64) {
        if let Some(bar) = self.market_bars.get(symbol) {
            return *bar;
        }
        let bar = (1_700_000_040.0, self.value());
        self.market_bars.insert(symbol.to_owned(), bar);
        bar
    }

    /// One WebSocket message of framed packets to the upstream client.
    fn send(&mut self, packets: Vec<String>) {
        let Some((id, _)) = self.link.filter(|_| self.server.open) else {
            return;
        };
        self.client.handle_input(
            self.clock,
            Input::Message {
                id,
                text: Bytes::from(packets.concat()),
            },
        );
        self.settle();
    }

    fn on_command(&mut self, command: &Value) {
        let params: Vec<&str> = command["p"]
            .as_array()
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let chart = self.server.chart_session.clone().unwrap_or_default();
        match command["m"].as_str().unwrap_or_default() {
            "quote_create_session" => {
                self.server.quote_session = params.first().map(|s| (*s).to_owned())
            }
            "chart_create_session" => {
                self.server.chart_session = params.first().map(|s| (*s).to_owned())
            }
            "quote_add_symbols" => {
                let session = params.first().copied().unwrap_or_default().to_owned();
                for symbol in params.iter().skip(1) {
                    if symbol.starts_with("BAD:") {
                        self.server.queued.push(frame(&format!(
                            r#"{{"m":"qsd","p":["{session}",{{"n":"{symbol}","s":"error","errmsg":"no_such_symbol","v":{{}}}}]}}"#
                        )));
                    } else {
                        self.server.symbols.insert((*symbol).to_owned());
                    }
                }
            }
            "quote_remove_symbols" => {
                for symbol in params.iter().skip(1) {
                    self.server.symbols.remove(*symbol);
                }
            }
            "resolve_symbol" => {
                let (Some(id), Some(spec)) = (params.get(1), params.get(2)) else {
                    return;
                };
                let symbol = serde_json::from_str::<Value>(spec.trim_start_matches('='))
                    .ok()
                    .and_then(|spec| spec["symbol"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| (*spec).to_owned());
                if symbol.starts_with("BAD:") {
                    self.server.queued.push(frame(&format!(
                        r#"{{"m":"symbol_error","p":["{chart}","{id}","invalid symbol"]}}"#
                    )));
                }
                self.server.resolved.insert((*id).to_owned(), symbol);
            }
            "create_series" => {
                let (Some(series), Some(symbol_id)) = (params.get(1), params.get(3)) else {
                    return;
                };
                let Some(symbol) = self.server.resolved.get(*symbol_id).cloned() else {
                    return;
                };
                if symbol.starts_with("BAD:") {
                    return;
                }
                if symbol.starts_with("NOBARS:") || self.rng.u8(0..25) == 0 {
                    self.server.queued.push(frame(&format!(
                        r#"{{"m":"series_error","p":["{chart}","{series}","s1","seconds_not_entitled"]}}"#
                    )));
                    return;
                }
                // The history: the last closed bar and the forming one.
                let (time, close) = self.market_bar(&symbol);
                let earlier = close - 0.125;
                let before = time - 60.0;
                self.server.queued.push(frame(&format!(
                    r#"{{"m":"timescale_update","p":["{chart}",{{"{series}":{{"s":[{{"i":0,"v":[{before:.1},{earlier},{earlier},{earlier},{earlier},3]}},{{"i":1,"v":[{time:.1},{close},{close},{close},{close},3]}}],"t":"s1"}}}}]}}"#
                )));
                self.server
                    .series
                    .insert((*series).to_owned(), symbol.clone());
            }
            "remove_series" => {
                if let Some(series) = params.get(1) {
                    self.server.series.remove(*series);
                }
            }
            _ => {}
        }
    }

    // ----- the upstream client's outputs ------------------------------------------------------

    /// Drains the client and the fanout until neither has anything left.
    fn settle(&mut self) {
        self.after_input();
        while let Some(output) = self.client.poll_output() {
            match output {
                Output::Connect(request) => {
                    check!(
                        self,
                        self.link.is_none(),
                        "a second upstream connection while {:?} exists",
                        self.link
                    );
                    let delay = Duration::from_millis(self.rng.u64(0..2_000));
                    let down = self.server_down_until.is_some_and(|until| self.now < until);
                    let pending = match self.rng.u8(0..20) {
                        _ if down => Pending::Refuse(self.now + delay),
                        0..=1 => Pending::Refuse(self.now + delay),
                        2 => Pending::Hang,
                        _ => Pending::Accept(self.now + delay),
                    };
                    self.link = Some((request.id, pending));
                    self.server = Server::default();
                }
                Output::Close { id, .. } => {
                    if self.link.is_some_and(|(current, _)| current == id) {
                        self.link = None;
                        self.server = Server::default();
                    }
                }
                Output::Transmit { id, text } => {
                    check!(
                        self,
                        self.link.is_some_and(|(current, _)| current == id),
                        "upstream transmit on a dead connection"
                    );
                    let message = Bytes::from(text);
                    let packets: Vec<_> = self.decoder.decode(&message).collect();
                    for packet in packets {
                        if let Ok(Packet::Json(payload)) = packet {
                            let command: Value =
                                serde_json::from_slice(&payload).expect("the client sends JSON");
                            self.on_command(&command);
                        }
                    }
                }
                Output::RequestAuthToken => self.token_wanted = true,
                Output::Poll(_) => check!(self, false, "a poll request without polling"),
                Output::Event(event) => self.on_upstream_event(&event),
            }
        }
    }

    /// Records what the hub must broadcast for an upstream event, then hands it over.
    fn on_upstream_event(&mut self, event: &Event) {
        match event {
            Event::Quote(quote) if quote.source == Source::Stream => {
                let symbol = quote.quote.symbol.as_ref();
                if let (Some(tape), Some(lp)) = (
                    universe(symbol).and_then(|s| self.tapes.get(s)),
                    quote.quote.last_price,
                ) {
                    let mut tape = tape.borrow_mut();
                    let last = tape.prices.last().copied();
                    if last != Some(lp) {
                        check!(
                            self,
                            last.is_none_or(|last| lp > last),
                            "upstream price {lp} of {symbol} after {last:?}"
                        );
                        tape.prices.push(lp);
                        self.stats.quotes += 1;
                        self.changed.extend(universe(symbol));
                    }
                }
            }
            Event::Bar(bar) => {
                let held = self.fanout.series_of(&bar.symbol) == Some(bar.series);
                if let Some(tape) = universe(&bar.symbol)
                    .and_then(|s| self.tapes.get(s))
                    .filter(|_| held)
                {
                    let mut tape = tape.borrow_mut();
                    let key = bar_key(bar.bar.time, bar.bar.close, bar.closed);
                    if tape.latest_bar.map(|(_, latest)| latest) != Some(key) {
                        self.changed.extend(universe(&bar.symbol));
                        tape.bars.push(key);
                        tape.bar_set.insert(key);
                        if tape.latest_bar.is_none_or(|(time, _)| time <= bar.bar.time) {
                            tape.latest_bar = Some((bar.bar.time, key));
                        }
                    }
                }
            }
            Event::SeriesError { series, symbol, .. } => {
                if self.fanout.series_of(symbol) == Some(*series)
                    && let Some(symbol) = universe(symbol)
                {
                    self.stats.series_refused += 1;
                    self.refused_series.insert(symbol);
                    self.changed.insert(symbol);
                    if let Some(tape) = self.tapes.get(symbol) {
                        tape.borrow_mut().latest_bar = None;
                    }
                }
            }
            Event::QuoteError { symbol, .. } => {
                if let Some(symbol) = universe(symbol) {
                    self.stats.rejections += 1;
                    let epoch = self.epochs.entry(symbol).or_insert(0);
                    *epoch += 1;
                    let epoch = *epoch;
                    let subscribed: Vec<ConnId> = self
                        .downs
                        .iter()
                        .filter(|(_, down)| down.subs.contains(symbol))
                        .map(|(conn, _)| *conn)
                        .collect();
                    for conn in subscribed {
                        self.dirty.insert(conn);
                        if let Some(down) = self.downs.get_mut(&conn) {
                            down.subs.remove(symbol);
                            down.rejects.entry(symbol).or_default().push_back(epoch);
                        }
                        self.model_sub(symbol, false);
                    }
                    // Upstream has dropped it: it no longer lingers there.
                    if let Some((_, carried)) = self.unwanted.get_mut(symbol) {
                        *carried = false;
                    }
                    self.quiet_since = self.clock;
                }
            }
            Event::State(change) => self.upstream_state = change.state,
            _ => {}
        }
        self.fanout.handle_event(self.clock, event);
        self.after_input();
    }

    // ----- the fanout's outputs ---------------------------------------------------------------

    /// After any fanout input: drains its outputs, brings the tapes in line with what the hub
    /// holds, and has healthy clients report their frames written (which may send more).
    fn after_input(&mut self) {
        loop {
            self.detect_lossy();
            while let Some(output) = self.fanout.poll_output(self.clock, &mut self.client) {
                check!(
                    self,
                    !self.shut_down || matches!(output, FanoutOutput::Close { .. }),
                    "{output:?} after shutdown"
                );
                match output {
                    FanoutOutput::Transmit { conn, frame } => self.on_frame(conn, &frame),
                    FanoutOutput::Close { conn, reason } => self.on_close(conn, reason),
                }
            }
            self.sync_tapes();
            let acks: Vec<(ConnId, usize)> = std::mem::take(&mut self.touched)
                .into_iter()
                .filter_map(|conn| {
                    let down = self.downs.get(&conn)?;
                    (down.pace == Pace::Healthy && down.in_flight > 0)
                        .then_some((conn, down.in_flight))
                })
                .collect();
            if acks.is_empty() {
                return;
            }
            for (conn, frames) in acks {
                self.written(conn, frames);
            }
        }
    }

    fn written(&mut self, conn: ConnId, frames: usize) {
        self.dirty.insert(conn);
        if let Some(down) = self.downs.get_mut(&conn) {
            down.in_flight -= frames;
            self.fanout.handle_written(self.clock, conn, frames);
        }
    }

    /// A control frame dropped at a full queue makes its connection's replies unaccountable.
    fn detect_lossy(&mut self) {
        let dropped = self.fanout.hub().counters().control_frames_dropped;
        if dropped == self.dropped_seen {
            return;
        }
        self.dropped_seen = dropped;
        let bound = self.hub_config.queue_capacity + CONTROL_HEADROOM;
        for (conn, down) in &mut self.downs {
            let backlog = self.fanout.backlog(*conn).expect("a live connection");
            if !down.lossy && backlog.queued + backlog.in_flight >= bound {
                down.lossy = true;
                self.stats.lossy += 1;
            }
        }
    }

    /// The hub's symbol states come and go; a tape lives exactly as long as one of them.
    fn sync_tapes(&mut self) {
        // A symbol upstream stopped carrying gets a new series when it comes back.
        if !self.refused_series.is_empty() {
            let client = &self.client;
            self.refused_series
                .retain(|symbol| client.quote(symbol).is_some());
        }
        // Symbol states come with an upstream subscribe decision and go with an unsubscribe
        // one or a rejection: while those counts stand still, so does the set.
        let counters = self.fanout.hub().counters();
        let signature = (
            counters.upstream_subscribes,
            counters.upstream_unsubscribes,
            self.stats.rejections,
        );
        if signature == self.held_signature {
            return;
        }
        self.held_signature = signature;
        let held: BTreeSet<&'static str> = self
            .fanout
            .hub()
            .symbols()
            .map(|(symbol, _, _)| universe(symbol).expect("only universe symbols are held"))
            .collect();
        self.tapes.retain(|symbol, _| held.contains(symbol));
        for symbol in held {
            self.tapes.entry(symbol).or_default();
        }
    }

    fn on_close(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(down) = self.downs.remove(&conn) else {
            panic!(
                "seed {} step {}: close {reason:?} of {conn}, which is not open",
                self.seed, self.step
            );
        };
        self.gone.insert(conn);
        match reason {
            CloseReason::Shutdown => check!(self, self.shut_down, "{conn} closed for shutdown"),
            CloseReason::KeepaliveTimeout => {
                self.stats.keepalive_cuts += 1;
                check!(
                    self,
                    self.clock >= down.last_heard + self.hub_config.keepalive_timeout,
                    "{conn} cut for keepalive {:?} after it was last heard",
                    self.clock - down.last_heard
                );
            }
            CloseReason::SlowConsumer => {
                self.stats.slow_cuts += 1;
                let deadline = self.hub_config.slow_consumer_deadline;
                check!(
                    self,
                    down.behind_since
                        .is_some_and(|since| self.clock >= since + deadline),
                    "{conn} cut as a slow consumer, behind since {:?}",
                    down.behind_since.map(|since| self.clock - since)
                );
            }
            other => check!(self, false, "{conn} closed for {other:?}"),
        }
        for symbol in down.subs {
            self.model_sub(symbol, false);
        }
    }

    fn parsed(&mut self, frame: &Frame) -> Rc<Parsed> {
        let key = frame.bytes().as_ptr() as usize;
        if let Some((bytes, parsed)) = self.parsed.get(&key)
            && bytes.len() == frame.bytes().len()
        {
            return parsed.clone();
        }
        check!(self, frame.as_str().is_ascii(), "a frame that is not ASCII");
        let Some(parsed) = parse_frame(frame.as_str()) else {
            panic!(
                "seed {} step {}: unexpected frame {}",
                self.seed,
                self.step,
                frame.as_str()
            );
        };
        let parsed = Rc::new(parsed);
        // Holding the bytes keeps the address from being reused within the step.
        self.parsed
            .insert(key, (frame.bytes().clone(), parsed.clone()));
        parsed
    }

    fn on_frame(&mut self, conn: ConnId, frame: &Frame) {
        let parsed = self.parsed(frame);
        let send_window = self.hub_config.send_window;
        let timeframe = self.timeframe.clone();
        let seed = self.seed;
        let step = self.step;
        self.stats.frames += 1;
        let Some(down) = self.downs.get_mut(&conn) else {
            panic!(
                "seed {seed} step {step}: {} to {conn}, which is not open (gone: {})",
                frame.as_str(),
                self.gone.contains(&conn)
            );
        };
        self.touched.insert(conn);
        self.dirty.insert(conn);
        down.in_flight += 1;
        let fail = |message: String| -> ! {
            panic!(
                "seed {seed} step {step}: {conn} got {}: {message}",
                frame.as_str()
            )
        };
        if down.in_flight > send_window {
            fail(format!("{} frames unwritten", down.in_flight));
        }
        if let Some(status) = down.first_status.take() {
            match &*parsed {
                Parsed::Status(upstream) if upstream == status => {}
                _ => fail(format!("the first frame must be the status ({status})")),
            }
            return;
        }
        let strict = !down.conflated && !down.lossy;
        let lossy = down.lossy;
        if strict {
            self.stats.strict_checks += 1;
        }
        let known =
            |symbol: &str| universe(symbol).unwrap_or_else(|| fail("unknown symbol".into()));
        match &*parsed {
            Parsed::Status(_) => {}
            Parsed::Pong => {
                if down.pongs == 0 && !lossy {
                    fail("a pong for no ping".into());
                }
                down.pongs = down.pongs.saturating_sub(1);
            }
            Parsed::Snapshot { symbol, lp, bar } => {
                let symbol = known(symbol);
                if let Some((_, tf)) = bar
                    && Some(tf) != timeframe.as_ref()
                {
                    fail(format!("a bar at {tf}, the plan says {timeframe:?}"));
                }
                let bar = bar.as_ref().map(|(key, _)| *key);
                let queue = down.expect.entry(symbol).or_default();
                if strict {
                    match queue.pop_front() {
                        Some(Expect::Snapshot {
                            tape,
                            q_start,
                            b_start,
                            lp: want_lp,
                            bar: want_bar,
                            ..
                        }) => {
                            if *lp != want_lp || bar != want_bar {
                                fail(format!(
                                    "snapshot should show price {want_lp:?} and bar {want_bar:?}"
                                ));
                            }
                            down.views.insert(
                                symbol,
                                View {
                                    tape,
                                    q_next: q_start,
                                    b_next: b_start,
                                    last_lp: *lp,
                                },
                            );
                        }
                        other => fail(format!("a snapshot where {other:?} was due")),
                    }
                    return;
                }
                // Conflated: a subscribe's snapshot, or the latest state it was owed.
                let unsubscribed = queue
                    .iter()
                    .position(|expect| matches!(expect, Expect::Unsubscribed { .. }))
                    .unwrap_or(queue.len());
                let due = queue
                    .iter()
                    .position(|expect| matches!(expect, Expect::Snapshot { .. }))
                    .filter(|at| lossy || *at < unsubscribed);
                let tape = match due {
                    Some(at) => {
                        let Some(Expect::Snapshot { tape, epoch, .. }) = queue.remove(at) else {
                            unreachable!()
                        };
                        if lossy {
                            queue.drain(..at);
                        } else {
                            // Subscribes made while behind share the one snapshot it is owed,
                            // until it leaves the symbol or upstream rejects it.
                            let mut index = 0;
                            queue.retain(|expect| {
                                index += 1;
                                index > unsubscribed - 1
                                    || !matches!(expect, Expect::Snapshot { epoch: e, .. } if *e == epoch)
                            });
                        }
                        tape
                    }
                    None => match down.views.get(symbol) {
                        Some(view) => view.tape.clone(),
                        None => fail(format!(
                            "a snapshot of a symbol it is not subscribed to (owed {queue:?}, \
                             rejections {:?}, conflated {}, lossy {lossy})",
                            down.rejects.get(symbol),
                            down.conflated
                        )),
                    },
                };
                if let Some(lp) = lp
                    && tape
                        .borrow()
                        .prices
                        .binary_search_by(|p| p.total_cmp(lp))
                        .is_err()
                {
                    fail("a price that was never broadcast".into());
                }
                let previous = down
                    .views
                    .get(symbol)
                    .filter(|view| Rc::ptr_eq(&view.tape, &tape))
                    .and_then(|view| view.last_lp);
                if previous.is_some_and(|previous| lp.is_none_or(|lp| lp < previous)) {
                    fail(format!(
                        "a snapshot older than the price {previous:?} it had"
                    ));
                }
                down.views.insert(
                    symbol,
                    View {
                        tape,
                        q_next: 0,
                        b_next: 0,
                        last_lp: *lp,
                    },
                );
            }
            Parsed::Quote { symbol, lp } => {
                let symbol = known(symbol);
                let Some(view) = down.views.get_mut(symbol) else {
                    fail("a quote of a symbol without its snapshot".into());
                };
                let Some(lp) = lp else {
                    fail("a quote whose price did not change".into());
                };
                let tape = view.tape.borrow();
                if strict {
                    let want = tape.prices.get(view.q_next).copied();
                    if want != Some(*lp) {
                        fail(format!(
                            "expected price {want:?} (#{} of the tape), after {:?}",
                            view.q_next, view.last_lp
                        ));
                    }
                    view.q_next += 1;
                } else {
                    if tape.prices.binary_search_by(|p| p.total_cmp(lp)).is_err() {
                        fail("a price that was never broadcast".into());
                    }
                    if view.last_lp.is_some_and(|last| *lp <= last) {
                        fail(format!("a price older than {:?}", view.last_lp));
                    }
                }
                drop(tape);
                view.last_lp = Some(*lp);
            }
            Parsed::Bar {
                symbol,
                key,
                timeframe: tf,
            } => {
                let symbol = known(symbol);
                if Some(tf) != timeframe.as_ref() {
                    fail(format!("a bar at {tf}, the plan says {timeframe:?}"));
                }
                let Some(view) = down.views.get_mut(symbol) else {
                    fail("a bar of a symbol without its snapshot".into());
                };
                let tape = view.tape.borrow();
                if strict {
                    let want = tape.bars.get(view.b_next).copied();
                    if want != Some(*key) {
                        fail(format!("expected bar {want:?} (#{})", view.b_next));
                    }
                    view.b_next += 1;
                } else if !tape.bar_set.contains(key) {
                    fail("a bar that was never broadcast".into());
                }
            }
            Parsed::Unsubscribed(symbol) => {
                let symbol = known(symbol);
                let queue = down.expect.entry(symbol).or_default();
                if strict {
                    match queue.pop_front() {
                        Some(Expect::Unsubscribed { .. }) => {}
                        other => fail(format!("an unsubscribed reply where {other:?} was due")),
                    }
                } else {
                    match queue
                        .iter()
                        .position(|expect| matches!(expect, Expect::Unsubscribed { .. }))
                    {
                        Some(at) => {
                            queue.drain(..=at);
                        }
                        None if lossy => {}
                        None => fail("an unsubscribed reply nobody asked for".into()),
                    }
                }
                down.views.remove(symbol);
            }
            Parsed::Error {
                code,
                symbol: Some(symbol),
            } => {
                let symbol = known(symbol);
                match code.as_str() {
                    "UNKNOWN_SYMBOL" => {
                        let epoch = down.rejects.entry(symbol).or_default().pop_front();
                        let Some(epoch) = epoch.or(lossy.then_some(u64::MAX)) else {
                            fail("a rejection of a symbol it was not subscribed to".into());
                        };
                        let queue = down.expect.entry(symbol).or_default();
                        if strict && queue.iter().any(|expect| expect.epoch() < epoch) {
                            fail(format!("a rejection before {:?}", queue.front()));
                        }
                        queue.retain(|expect| expect.epoch() >= epoch);
                        down.views.remove(symbol);
                    }
                    "BARS_UNAVAILABLE" => {
                        if timeframe.is_none() {
                            fail("no bars were planned".into());
                        }
                        let pending = down.expect.get(symbol).is_some_and(|queue| {
                            queue
                                .iter()
                                .any(|expect| matches!(expect, Expect::Snapshot { .. }))
                        });
                        let followed = down.views.contains_key(symbol) || (pending && !strict);
                        if !followed && !lossy {
                            fail("bars refused for a symbol it is not subscribed to".into());
                        }
                    }
                    "SUBSCRIPTION_LIMIT" | "SYMBOL_LIMIT" | "INVALID_SYMBOL"
                    | "SYMBOL_NOT_ALLOWED" => {
                        let queue = down.expect.entry(symbol).or_default();
                        let at = if strict {
                            Some(0)
                        } else {
                            queue.iter().position(
                                |expect| matches!(expect, Expect::Refusal { code: want, .. } if want == code),
                            )
                        };
                        match at.and_then(|at| queue.remove(at)) {
                            Some(Expect::Refusal { code: want, .. }) if want == code => {}
                            None if lossy => {}
                            other => fail(format!("a refusal where {other:?} was due")),
                        }
                    }
                    _ => fail("an error the simulation never provokes".into()),
                }
            }
            Parsed::Error { code, symbol: None } => {
                let provoked = code == "BAD_REQUEST" || code == "UNKNOWN_ACTION";
                if !provoked || (down.bad_requests == 0 && !lossy) {
                    fail("an error the simulation never provokes".into());
                }
                down.bad_requests = down.bad_requests.saturating_sub(1);
            }
            Parsed::Warning(code) => {
                if code != "SLOW_CONSUMER" || !down.ever_slow {
                    fail("a warning for a client that always read at once".into());
                }
                if !down.conflated {
                    down.conflated = true;
                    self.stats.conflated += 1;
                }
            }
        }
    }

    // ----- the downstream clients -------------------------------------------------------------

    /// Someone subscribes to `symbol` or leaves it (the set of symbols the upstream must carry).
    fn model_sub(&mut self, symbol: &'static str, add: bool) {
        let count = self.wanted.entry(symbol).or_insert(0);
        if add {
            *count += 1;
            if *count == 1 {
                self.wanted_at.insert(symbol, self.clock);
                self.unwanted.remove(symbol);
                self.quiet_since = self.clock;
            }
        } else {
            *count -= 1;
            if *count == 0 {
                self.wanted.remove(symbol);
                self.wanted_at.remove(symbol);
                let carried = self.client.quote(symbol).is_some();
                self.unwanted.insert(symbol, (self.clock, carried));
                self.quiet_since = self.clock;
            }
        }
    }

    fn connect(&mut self) {
        let live = self.downs.len();
        match self.fanout.connect(self.clock) {
            Ok(conn) => {
                check!(
                    self,
                    !self.shut_down && live < self.hub_config.max_connections,
                    "a connection accepted with {live} open (shut down: {})",
                    self.shut_down
                );
                self.stats.clients += 1;
                let keepalive = self.hub_config.keepalive_timeout;
                let ping_every =
                    Duration::from_millis(self.rng.u64(500..(keepalive.as_millis() as u64 / 3)));
                let pace = match self.rng.u8(0..10) {
                    0 => Pace::Stalled,
                    1..=2 => Pace::Slow,
                    _ => Pace::Healthy,
                };
                self.downs.insert(
                    conn,
                    Box::new(Down {
                        pace,
                        ever_slow: pace != Pace::Healthy,
                        silent: self.rng.u8(0..30) == 0,
                        lossy: false,
                        conflated: false,
                        in_flight: 0,
                        first_status: Some(self.upstream_state.as_str()),
                        subs: BTreeSet::new(),
                        views: BTreeMap::new(),
                        expect: BTreeMap::new(),
                        rejects: BTreeMap::new(),
                        pongs: 0,
                        bad_requests: 0,
                        last_heard: self.clock,
                        last_message: None,
                        ping_every,
                        behind_since: None,
                    }),
                );
                self.stats.max_live = self.stats.max_live.max(self.downs.len());
                self.settle();
            }
            Err(refused) => {
                self.stats.refused += 1;
                check!(
                    self,
                    self.shut_down || live >= self.hub_config.max_connections,
                    "a connection refused with {live} open"
                );
                check!(
                    self,
                    refused.frame.as_str().contains("CONNECTION_LIMIT"),
                    "refused with {}",
                    refused.frame.as_str()
                );
            }
        }
    }

    /// Whether `conn` may send a message now without passing the hub's rate limit.
    fn may_send(&self, conn: ConnId) -> bool {
        let period = Duration::from_secs(1) / self.hub_config.messages_per_second;
        self.downs[&conn]
            .last_message
            .is_none_or(|last| self.clock >= last + period + period / 2)
    }

    fn text(&mut self, conn: ConnId, text: &str) {
        self.dirty.insert(conn);
        let down = self.downs.get_mut(&conn).expect("a live connection");
        down.last_message = Some(self.clock);
        down.last_heard = self.clock;
        self.fanout.handle_text(self.clock, conn, text);
    }

    fn epoch(&self, symbol: &str) -> u64 {
        self.epochs.get(symbol).copied().unwrap_or(0)
    }

    fn subscribe(&mut self, conn: ConnId, again: bool) {
        let held: BTreeSet<&str> = self.tapes.keys().copied().collect();
        let mut symbols: Vec<&'static str> = if again {
            self.downs[&conn].subs.iter().copied().collect()
        } else {
            let mut chosen = Vec::new();
            for _ in 0..self.rng.usize(1..4) {
                let symbol = UNIVERSE[self.rng.usize(0..UNIVERSE.len())];
                if !chosen.contains(&symbol) {
                    chosen.push(symbol);
                }
            }
            chosen
        };
        if symbols.is_empty() {
            return;
        }
        // Held symbols first: then no symbol of the message is evicted by a later one of it.
        symbols.sort_by_key(|symbol| !held.contains(symbol));
        let text = serde_json::json!({"action": "subscribe", "symbols": symbols}).to_string();
        self.text(conn, &text);
        self.sync_tapes();
        let limit = self.hub_config.max_subscriptions_per_connection;
        let now_held: BTreeSet<&'static str> = self
            .fanout
            .hub()
            .subscriptions(conn)
            .filter_map(|s| universe(s))
            .collect();
        let mut symbol_limit = false;
        for symbol in symbols {
            let epoch = self.epoch(symbol);
            let down = &self.downs[&conn];
            let already = down.subs.contains(symbol);
            let accepted = now_held.contains(symbol);
            let hard = if symbol == INVALID {
                Some("INVALID_SYMBOL")
            } else if symbol == DENIED && self.hub_config.whitelist.is_some() {
                Some("SYMBOL_NOT_ALLOWED")
            } else if !already && down.subs.len() >= limit {
                Some("SUBSCRIPTION_LIMIT")
            } else {
                None
            };
            let expect = match (hard, accepted) {
                (Some(code), false) => Expect::Refusal { code, epoch },
                (None, false) => {
                    check!(self, !already, "a repeated subscribe to {symbol} refused");
                    symbol_limit = true;
                    Expect::Refusal {
                        code: "SYMBOL_LIMIT",
                        epoch,
                    }
                }
                (None, true) => {
                    let tape = self.tapes.get(symbol).expect("a held symbol has a tape");
                    let t = tape.borrow();
                    let expect = Expect::Snapshot {
                        tape: tape.clone(),
                        q_start: t.prices.len(),
                        b_start: t.bars.len(),
                        lp: t.prices.last().copied(),
                        bar: t.latest_bar.map(|(_, key)| key),
                        epoch,
                    };
                    drop(t);
                    if !already {
                        self.downs.get_mut(&conn).unwrap().subs.insert(symbol);
                        self.model_sub(symbol, true);
                    }
                    expect
                }
                (Some(code), true) => {
                    panic!(
                        "seed {} step {}: {symbol} accepted, expected {code}",
                        self.seed, self.step
                    )
                }
            };
            let down = self.downs.get_mut(&conn).unwrap();
            down.expect.entry(symbol).or_default().push_back(expect);
        }
        if symbol_limit {
            let full = self.fanout.hub().symbols().count() >= self.hub_config.max_upstream_symbols;
            let lingering = self
                .fanout
                .hub()
                .symbols()
                .any(|(_, subscribers, _)| subscribers == 0);
            check!(
                self,
                full && !lingering,
                "SYMBOL_LIMIT with room upstream (full: {full}, a lingering symbol: {lingering})"
            );
        }
        self.settle();
    }

    fn unsubscribe(&mut self, conn: ConnId) {
        let subs: Vec<&'static str> = self.downs[&conn].subs.iter().copied().collect();
        let mut symbols = Vec::new();
        for _ in 0..self.rng.usize(1..3) {
            let symbol = if !subs.is_empty() && self.rng.u8(0..4) > 0 {
                subs[self.rng.usize(0..subs.len())]
            } else {
                UNIVERSE[self.rng.usize(0..UNIVERSE.len())]
            };
            if !symbols.contains(&symbol) {
                symbols.push(symbol);
            }
        }
        let text = serde_json::json!({"action": "unsubscribe", "symbols": symbols}).to_string();
        self.text(conn, &text);
        for symbol in symbols {
            let epoch = self.epoch(symbol);
            let down = self.downs.get_mut(&conn).unwrap();
            down.expect
                .entry(symbol)
                .or_default()
                .push_back(Expect::Unsubscribed { epoch });
            if down.subs.remove(symbol) {
                self.model_sub(symbol, false);
            }
        }
        self.settle();
    }

    fn leave(&mut self, conn: ConnId) {
        let down = self.downs.remove(&conn).expect("a live connection");
        self.gone.insert(conn);
        let reason = if self.rng.bool() {
            CloseReason::ClientClosed
        } else {
            CloseReason::SocketError
        };
        self.fanout.disconnect(self.clock, conn, reason);
        for symbol in down.subs {
            self.model_sub(symbol, false);
        }
        self.settle();
    }

    fn shutdown(&mut self) {
        let open: Vec<ConnId> = self.downs.keys().copied().collect();
        self.shut_down = true;
        self.fanout.shutdown(self.clock);
        self.settle();
        check!(
            self,
            self.downs.is_empty() && open.iter().all(|conn| self.gone.contains(conn)),
            "{} connections still open after shutdown",
            self.downs.len()
        );
    }

    fn downstream_acts(&mut self) {
        // Arrivals, towards a target that wanders (and sometimes past the connection limit).
        if self.rng.u8(0..20) == 0 {
            self.target = self.rng.usize(80..360);
        }
        if self.shut_down {
            if self.rng.u8(0..10) == 0 {
                self.connect();
            }
            return;
        }
        for _ in 0..self.rng.usize(0..6) {
            if self.downs.len() < self.target {
                self.connect();
            }
        }
        let live: Vec<ConnId> = self.downs.keys().copied().collect();
        if live.is_empty() {
            return;
        }
        for _ in 0..self.rng.usize(0..16) {
            let conn = live[self.rng.usize(0..live.len())];
            if !self.downs.contains_key(&conn) {
                continue;
            }
            let talks = !self.downs[&conn].silent && self.may_send(conn);
            match self.rng.u8(0..100) {
                0..=29 if talks => self.subscribe(conn, false),
                30..=34 if talks => self.subscribe(conn, true),
                35..=49 if talks => self.unsubscribe(conn),
                50 if talks => {
                    self.downs.get_mut(&conn).unwrap().bad_requests += 1;
                    let text = [
                        r#"{"action":"dance"}"#,
                        "not json",
                        r#"{"action":"subscribe"}"#,
                    ][self.rng.usize(0..3)];
                    self.text(conn, text);
                    self.settle();
                }
                51..=53 => self.leave(conn),
                54..=59 => {
                    let pace = [Pace::Healthy, Pace::Slow, Pace::Stalled][self.rng.usize(0..3)];
                    let down = self.downs.get_mut(&conn).unwrap();
                    down.pace = pace;
                    down.ever_slow |= pace != Pace::Healthy;
                    // A client that resumes reports what it wrote meanwhile.
                    self.touched.insert(conn);
                    self.dirty.insert(conn);
                    self.after_input();
                }
                60 => {
                    let down = self.downs.get_mut(&conn).unwrap();
                    down.silent = !down.silent;
                }
                _ => {}
            }
        }
        // Slow clients report some of their frames written.
        let slow: Vec<(ConnId, usize)> = self
            .downs
            .iter()
            .filter(|(_, down)| down.pace == Pace::Slow && down.in_flight > 0)
            .map(|(conn, down)| (*conn, down.in_flight))
            .collect();
        for (conn, in_flight) in slow {
            if self.rng.u8(0..3) == 0 && self.downs.contains_key(&conn) {
                let frames = self.rng.usize(1..=in_flight);
                self.written(conn, frames);
                self.after_input();
            }
        }
        // Keepalive: a ping message or a WebSocket ping, whichever the client uses.
        let due: Vec<ConnId> = self
            .downs
            .iter()
            .filter(|(_, down)| !down.silent && self.clock >= down.last_heard + down.ping_every)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in due {
            if !self.downs.contains_key(&conn) {
                continue;
            }
            if conn.get() % 2 == 0 && self.may_send(conn) {
                self.downs.get_mut(&conn).unwrap().pongs += 1;
                self.text(conn, r#"{"action":"ping"}"#);
            } else {
                self.downs.get_mut(&conn).unwrap().last_heard = self.clock;
                self.dirty.insert(conn);
                self.fanout.handle_activity(self.clock, conn);
            }
            self.settle();
        }
    }

    // ----- invariants ------------------------------------------------------------------------

    fn check_invariants(&mut self) {
        let config = &self.hub_config;
        let now = self.now;
        let bound = config.queue_capacity + CONTROL_HEADROOM;
        // Every open connection: its bounds, its deadlines, and (with nothing waiting) its state.
        let dirty = std::mem::take(&mut self.dirty);
        let changed = std::mem::take(&mut self.changed);
        let mut moved = Vec::new();
        for (conn, down) in &self.downs {
            check!(
                self,
                now < down.last_heard + config.keepalive_timeout + SWEEP + SLACK,
                "{conn} silent for {:?} and still open",
                now - down.last_heard
            );
            if let Some(since) = down.behind_since {
                check!(
                    self,
                    now < since + config.slow_consumer_deadline + SWEEP + SLACK,
                    "{conn} behind for {:?} and still open",
                    now - since
                );
            }
            // The rest only changes with what reached the connection or its symbols (each
            // connection is still checked every sixteenth step).
            if dirty.contains(conn)
                || (conn.get() + self.step) % 16 == 0
                || down.subs.iter().any(|symbol| changed.contains(symbol))
            {
                moved.push(*conn);
            }
        }
        for conn in moved {
            let backlog = self.fanout.backlog(conn).expect("a live connection");
            let tapes = &self.tapes;
            let down = self.downs.get_mut(&conn).unwrap();
            check!(
                self,
                backlog.queued + backlog.in_flight <= bound,
                "{conn} has {} frames waiting, the bound is {bound}: {backlog:?}",
                backlog.queued + backlog.in_flight
            );
            check!(
                self,
                backlog.in_flight == down.in_flight && down.in_flight <= config.send_window,
                "{conn}: {} in flight, the hub says {}",
                down.in_flight,
                backlog.in_flight
            );
            down.behind_since = backlog.behind_since;
            if let Some(since) = backlog.behind_since {
                check!(
                    self,
                    down.ever_slow,
                    "{conn} fell behind, yet it always reads at once"
                );
                check!(
                    self,
                    now < since + config.slow_consumer_deadline + SWEEP + SLACK,
                    "{conn} behind for {:?} and still open",
                    now - since
                );
                if !down.conflated {
                    down.conflated = true;
                    self.stats.conflated += 1;
                }
            }
            let same = self
                .fanout
                .hub()
                .subscriptions(conn)
                .map(|s| s.as_ref())
                .eq(down.subs.iter().copied());
            check!(
                self,
                same,
                "{conn} is subscribed to {:?}, expected {:?}",
                self.fanout.hub().subscriptions(conn).collect::<Vec<_>>(),
                down.subs
            );
            let settled = backlog.queued == 0
                && backlog.in_flight == 0
                && backlog.owed == 0
                && backlog.behind_since.is_none();
            if !down.ever_slow {
                check!(self, settled, "{conn} reads at once, yet has {backlog:?}");
            }
            if !settled {
                continue;
            }
            // Nothing waiting: it holds the latest of every symbol it is subscribed to.
            self.stats.settled_checks += 1;
            for symbol in &down.subs {
                let tape = &tapes[symbol];
                let Some(view) = down.views.get(symbol) else {
                    panic!(
                        "seed {} step {}: {conn} never got the snapshot of {symbol}",
                        self.seed, self.step
                    );
                };
                let latest = tape.borrow().prices.last().copied();
                check!(
                    self,
                    Rc::ptr_eq(&view.tape, tape) && view.last_lp == latest,
                    "{conn} holds {symbol} at {:?}, the latest is {latest:?}",
                    view.last_lp
                );
                if !down.conflated && !down.lossy {
                    let t = tape.borrow();
                    check!(
                        self,
                        view.q_next == t.prices.len() && view.b_next == t.bars.len(),
                        "{conn} is behind the tape of {symbol}"
                    );
                }
            }
            if !down.lossy {
                let stale: Vec<&&str> = down
                    .views
                    .keys()
                    .filter(|symbol| !down.subs.contains(**symbol))
                    .collect();
                check!(self, stale.is_empty(), "{conn} still follows {stale:?}");
                let owed = down.expect.values().any(|queue| !queue.is_empty())
                    || down.rejects.values().any(|queue| !queue.is_empty())
                    || down.pongs > 0
                    || down.bad_requests > 0;
                check!(
                    self,
                    !owed,
                    "{conn} settled but still owed {:?} {:?} (pongs {}, errors {})",
                    down.expect,
                    down.rejects,
                    down.pongs,
                    down.bad_requests
                );
            }
        }
        check!(
            self,
            self.fanout.counters().symbols_refused == 0,
            "upstream refused a symbol although the limits were reconciled"
        );
        self.check_upstream();
    }

    /// The upstream carries what downstream wants, give or take the batch delay and linger.
    fn check_upstream(&mut self) {
        let config = &self.hub_config;
        let now = self.now;
        let carried: BTreeSet<Arc<str>> = self.client.quote_symbols().into_iter().collect();
        let series = self.client.bar_subscriptions();
        let mut series_symbols = BTreeSet::new();
        for (id, symbol, timeframe) in &series {
            check!(
                self,
                series_symbols.insert(symbol.clone()),
                "two series of {symbol} upstream: {series:?}"
            );
            check!(
                self,
                Some(timeframe.as_ref()) == self.timeframe.as_deref(),
                "a series at {timeframe}, the plan says {:?}",
                self.timeframe
            );
            check!(
                self,
                self.fanout.series_of(symbol) == Some(*id),
                "upstream series {id:?} of {symbol}, the fanout holds {:?}",
                self.fanout.series_of(symbol)
            );
            check!(
                self,
                carried.contains(symbol),
                "a series of {symbol} without its quotes"
            );
        }
        check!(
            self,
            self.fanout.series_count() == series.len(),
            "the fanout holds {} series, upstream {}",
            self.fanout.series_count(),
            series.len()
        );
        let bars = self.timeframe.is_some();
        let batch = config.upstream_batch_delay;
        for (symbol, since) in &self.wanted_at {
            // Timers run at their due times: the batch has gone out by then (at once without
            // a batch delay).
            if now >= *since + batch {
                check!(
                    self,
                    carried.contains(*symbol),
                    "{symbol} wanted for {:?}, not carried",
                    now - *since
                );
                if bars && !self.refused_series.contains(symbol) {
                    check!(
                        self,
                        series_symbols.contains(*symbol),
                        "{symbol} wanted for {:?}, no series",
                        now - *since
                    );
                }
            }
        }
        for (symbol, (since, was_carried)) in &self.unwanted {
            if now >= *since + config.linger + batch + SWEEP + SLACK {
                check!(
                    self,
                    !carried.contains(*symbol) && !series_symbols.contains(*symbol),
                    "{symbol} unwanted for {:?}, still carried",
                    now - *since
                );
            } else if self.no_eviction && *was_carried && now < *since + config.linger {
                check!(
                    self,
                    carried.contains(*symbol),
                    "{symbol} left upstream {:?} after its last subscriber, linger is {:?}",
                    now - *since,
                    config.linger
                );
            }
        }
        // Once nothing has changed for the batch delay and the linger: exactly the wanted set.
        if now >= self.quiet_since + config.linger + batch + SWEEP + SLACK {
            let wanted: Vec<&str> = self.wanted.keys().copied().collect();
            check!(
                self,
                carried
                    .iter()
                    .map(|s| s.as_ref())
                    .eq(wanted.iter().copied()),
                "upstream carries {carried:?}, downstream wants {wanted:?}"
            );
            if bars {
                let expected: Vec<&str> = wanted
                    .iter()
                    .filter(|symbol| !self.refused_series.contains(*symbol))
                    .copied()
                    .collect();
                check!(
                    self,
                    series_symbols
                        .iter()
                        .map(|s| s.as_ref())
                        .eq(expected.iter().copied()),
                    "upstream series {series_symbols:?}, expected {expected:?}"
                );
            }
        }
    }
}

/// Steps per seed by default, and the steps all seeds share when there are many of them.
const DEFAULT_STEPS: u64 = 4_000;
const STEP_BUDGET: u64 = 16 * DEFAULT_STEPS;

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

#[test]
fn relay_keeps_its_invariants_under_random_faults() {
    let seeds: Vec<u64> = match env_number("TICKWIRE_RELAY_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let count = env_number("TICKWIRE_RELAY_SIM_SEEDS")
                .or_else(|| env_number("TICKWIRE_SIM_SEEDS"))
                .unwrap_or(8);
            (1..=count).collect()
        }
    };
    // Many seeds (CI asks for 24) share twice the default run's steps: more configurations,
    // each a little shorter, in bounded time.
    let steps = env_number("TICKWIRE_RELAY_SIM_STEPS")
        .unwrap_or_else(|| (STEP_BUDGET / seeds.len().max(1) as u64).clamp(1_500, DEFAULT_STEPS));
    // Seeds are independent: they run on every core, each failure naming its seed.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<(u64, Stats)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&seed) = seeds.get(index) else {
                            return Ok(done);
                        };
                        let started = std::time::Instant::now();
                        let result = std::panic::catch_unwind(|| {
                            let mut sim = Sim::new(seed);
                            sim.run(steps);
                            sim.stats
                        });
                        match result {
                            Ok(stats) => {
                                eprintln!(
                                    "seed {seed}: {steps} steps ok in {:?}, {stats:?}",
                                    started.elapsed()
                                );
                                done.push((seed, stats));
                            }
                            Err(panic) => {
                                eprintln!(
                                    "relay simulation failed with seed {seed}; replay: \
                                     TICKWIRE_RELAY_SIM_SEED={seed} cargo test -p tickwire-core \
                                     --test relay_simulation"
                                );
                                // The others stop at their next seed.
                                next.store(seeds.len(), std::sync::atomic::Ordering::Relaxed);
                                return Err(panic);
                            }
                        }
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            match worker.join().expect("a worker thread") {
                Ok(done) => all.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    let mut total = Stats::default();
    for (_, stats) in &results {
        total.slow_cuts += stats.slow_cuts;
        total.keepalive_cuts += stats.keepalive_cuts;
        total.conflated += stats.conflated;
        total.rejections += stats.rejections;
        total.series_refused += stats.series_refused;
        total.refused += stats.refused;
        total.upstream_drops += stats.upstream_drops;
    }
    // Over a few seeds, every fault the simulation exists for happened.
    if seeds.len() >= 4 {
        assert!(
            total.slow_cuts > 0
                && total.keepalive_cuts > 0
                && total.conflated > 0
                && total.rejections > 0
                && total.series_refused > 0
                && total.refused > 0
                && total.upstream_drops > 0,
            "a fault never happened: {total:?}"
        );
    }
}

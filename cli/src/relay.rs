//! `tickwire relay`: one resilient upstream connection fanned out to many WebSocket clients.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tickwire_core::client::parse_duration;
use tickwire_core::hub::{
    HubConfig, MAX_BAR_HISTORY, MAX_UPDATE_INTERVAL, MIN_UPDATE_INTERVAL, UpstreamPlan,
};
use tickwire_core::timeframe::Timeframe;
use tickwire_emulator::{Emulator, EmulatorConfig};
use tickwire_relay::{ClusterConfig, RedisUrl, Relay, RelayConfig};

use crate::Failure;
use crate::access::{Access, FallbackArgs};
use crate::feed_args::TuningArgs;

/// What the page shows when the relay runs on its embedded emulator.
const EMULATOR_PAGE_SYMBOLS: &[&str] = &[
    "BINANCE:BTCUSDT",
    "BINANCE:ETHUSDT",
    "NASDAQ:AAPL",
    "NASDAQ:MSFT",
    "FX:EURUSD",
    "FX:GBPUSD",
    "SP:SPX",
    "TVC:GOLD",
];

/// Relay live data to many WebSocket clients: `/ws` (JSON protocol), `/` (live page),
/// `/metrics` (Prometheus), `/healthz`. Without --upstream it runs on the embedded emulator, so
/// it works with no network. Ctrl-C (or SIGTERM) closes every client cleanly.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Address to serve HTTP and WebSocket clients on: IP:PORT or HOST:PORT (`localhost:0`
    /// picks a free port on loopback).
    #[arg(long, env = "TICKWIRE_RELAY_LISTEN", default_value = "127.0.0.1:8080", value_parser = listen_address)]
    listen: SocketAddr,
    /// WebSocket URL of the upstream feed; the embedded emulator when omitted.
    #[arg(long, env = "TICKWIRE_RELAY_UPSTREAM")]
    upstream: Option<String>,
    /// Symbols clients may subscribe to: a comma-separated list, or a file with one symbol per
    /// line (# starts a comment). Any symbol when omitted.
    #[arg(long, env = "TICKWIRE_RELAY_WHITELIST")]
    whitelist: Option<String>,
    /// Symbols the live page shows by default (comma-separated).
    #[arg(long, env = "TICKWIRE_RELAY_SYMBOLS", value_delimiter = ',')]
    symbols: Vec<String>,
    /// Also relay bars of this timeframe (e.g. 1, 5, 1D), loading HISTORY bars when a series
    /// opens (TF:HISTORY; 2 by default: the forming bar and the last closed one); "none"
    /// relays quotes only.
    #[arg(long, env = "TICKWIRE_RELAY_BARS", default_value = "none")]
    bars: String,
    /// Downstream connections held at once.
    #[arg(long, env = "TICKWIRE_RELAY_MAX_CONNECTIONS", default_value_t = HubConfig::default().max_connections)]
    max_connections: usize,
    /// Subscriptions per connection.
    #[arg(long, env = "TICKWIRE_RELAY_MAX_SUBSCRIPTIONS", default_value_t = HubConfig::default().max_subscriptions_per_connection)]
    max_subscriptions: usize,
    /// Distinct symbols carried upstream at once.
    #[arg(long, env = "TICKWIRE_RELAY_MAX_UPSTREAM_SYMBOLS", default_value_t = HubConfig::default().max_upstream_symbols)]
    max_upstream_symbols: usize,
    /// Largest client message, in bytes.
    #[arg(long, env = "TICKWIRE_RELAY_MAX_MESSAGE_BYTES", default_value_t = HubConfig::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Client messages per second per connection.
    #[arg(long, env = "TICKWIRE_RELAY_MESSAGES_PER_SECOND", default_value_t = HubConfig::default().messages_per_second)]
    messages_per_second: u32,
    /// Client messages allowed in one burst.
    #[arg(long, env = "TICKWIRE_RELAY_MESSAGE_BURST", default_value_t = HubConfig::default().message_burst)]
    message_burst: u32,
    /// Messages a client may have waiting before it is conflated and warned.
    #[arg(long, env = "TICKWIRE_RELAY_QUEUE", default_value_t = HubConfig::default().queue_capacity)]
    queue: usize,
    /// A client still behind this long after falling behind is disconnected.
    #[arg(long, env = "TICKWIRE_RELAY_SLOW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    slow_deadline: Duration,
    /// A client silent (no message, no ping) this long is disconnected.
    #[arg(long, env = "TICKWIRE_RELAY_KEEPALIVE", default_value = "90s", value_parser = parse_duration)]
    keepalive: Duration,
    /// How long a symbol stays subscribed upstream after its last subscriber left.
    #[arg(long, env = "TICKWIRE_RELAY_LINGER", default_value = "30s", value_parser = parse_duration)]
    linger: Duration,
    /// At most one update per symbol per this many seconds (0.1 to 3600, fractions allowed;
    /// the latest value, change-only) for subscriptions that ask for no `update_interval` of
    /// their own; "0" or "none" sends every change.
    #[arg(long, env = "TICKWIRE_RELAY_UPDATE_INTERVAL", default_value = "none", value_name = "SECONDS", value_parser = update_interval)]
    update_interval: UpdateInterval,
    /// Log level on stderr: error, warn, info (upstream state changes, clients cut off) or
    /// debug (also refusals and upstream subscription batches).
    #[arg(long, env = "TICKWIRE_LOG_LEVEL", default_value = "info")]
    log_level: tracing::Level,
    /// Embedded emulator only: number of symbols in its market.
    #[arg(long, env = "TICKWIRE_RELAY_EMULATOR_SYMBOLS", default_value_t = 50)]
    emulator_symbols: usize,
    /// Embedded emulator only: market ticks per second over all symbols.
    #[arg(long, env = "TICKWIRE_RELAY_EMULATOR_RATE", default_value_t = 20.0)]
    emulator_rate: f64,
    /// Join a cluster of relays through this Redis: redis://HOST:PORT[/DB] (rediss:// for
    /// TLS). Only one relay of the cluster connects upstream; all serve clients. A password
    /// belongs in the environment variable, never on the command line (others can read it).
    #[arg(long, env = "TICKWIRE_RELAY_REDIS", hide_env_values = true, value_name = "URL", value_parser = redis_url)]
    redis: Option<RedisUrl>,
    /// The cluster's name (with --redis): it prefixes every Redis key and channel, so several
    /// clusters can share one Redis.
    #[arg(long, env = "TICKWIRE_RELAY_CLUSTER", default_value = "tickwire")]
    cluster: String,
    /// This relay's id in the cluster (with --redis; letters, digits, '-', '_', '.'); drawn
    /// from the host name, the process id and the time when omitted.
    #[arg(long, env = "TICKWIRE_RELAY_ID")]
    relay_id: Option<String>,
    /// Record everything relayed into this DuckDB file (quotes, bars, gaps, as `tickwire
    /// record` does) and, at start, answer each symbol's first subscribers with its last
    /// recorded state at once, marked "stale":true until the upstream confirms it. Needs a
    /// build with the `store` feature.
    #[arg(
        long,
        env = "TICKWIRE_RELAY_STORE",
        value_name = "FILE",
        conflicts_with = "redis"
    )]
    store: Option<PathBuf>,
    /// With --store: commit at least this often (after `kill -9` at most this much is lost).
    #[arg(long, env = "TICKWIRE_RELAY_COMMIT_EVERY", default_value = "1s", value_parser = parse_duration)]
    commit_every: Duration,
    /// Serve the rows of a periodic query instead of an upstream feed: duckdb:FILE, with
    /// --query and --interval. No upstream connection is opened. Needs a build with the
    /// `store` feature.
    #[arg(
        long,
        env = "TICKWIRE_RELAY_SOURCE",
        value_name = "duckdb:FILE",
        value_parser = source_file,
        requires = "query",
        conflicts_with_all = ["upstream", "redis", "store", "bars"]
    )]
    source: Option<PathBuf>,
    /// With --source: the SQL run every interval on a read-only connection (or @FILE to read
    /// it from a file). It returns a `symbol` column and any others; each row is that
    /// symbol's state, sent to its subscribers when it changed since the last run. SQL that
    /// holds a credential goes in @FILE or the environment, not on the command line.
    #[arg(
        long,
        env = "TICKWIRE_RELAY_QUERY",
        hide_env_values = true,
        value_name = "SQL",
        requires = "source"
    )]
    query: Option<String>,
    /// With --source: how often the query runs (100ms to 24h), from the start of one run
    /// to the next; after a failure the next attempt backs off from this.
    #[arg(long, env = "TICKWIRE_RELAY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    /// With --source: a run unanswered this long counts as failed.
    #[arg(long, env = "TICKWIRE_RELAY_QUERY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    query_timeout: Duration,
    #[command(flatten)]
    fallback: FallbackArgs,
    #[command(flatten)]
    tuning: TuningArgs,
}

/// `duckdb:FILE`: the only kind of source so far.
fn source_file(text: &str) -> Result<PathBuf, String> {
    match text.split_once(':') {
        Some(("duckdb", file)) if !file.is_empty() => Ok(PathBuf::from(file)),
        _ => Err(format!("{text:?}: expected duckdb:FILE")),
    }
}

/// The SQL of `--query`: as given, or read from the file `@FILE` names.
fn query_text(value: &str) -> Result<String, Failure> {
    let Some(file) = value.strip_prefix('@') else {
        return Ok(value.to_owned());
    };
    let cannot = |error: std::io::Error| Failure::Message(format!("--query {value}: {error}"));
    let metadata = std::fs::metadata(file).map_err(cannot)?;
    if metadata.len() > MAX_QUERY_BYTES {
        return Err(Failure::Message(format!(
            "--query {value}: larger than {} KiB",
            MAX_QUERY_BYTES / 1024
        )));
    }
    std::fs::read_to_string(file).map_err(cannot)
}

/// Largest `--query @FILE` read: SQL, not data.
const MAX_QUERY_BYTES: u64 = 1024 * 1024;

#[cfg(not(feature = "store"))]
fn without_store(flag: &str) -> Failure {
    Failure::Message(format!(
        "{flag} needs DuckDB, and this tickwire was built without it: build with \
         `--features store` (see the README's \"Recording into DuckDB\")"
    ))
}

fn redis_url(text: &str) -> Result<RedisUrl, String> {
    RedisUrl::parse(text)
}

/// The cluster settings, or why they cannot work.
fn cluster_config(args: &RelayArgs) -> Result<Option<ClusterConfig>, Failure> {
    let Some(redis) = &args.redis else {
        return Ok(None);
    };
    // The environment is private to the process; the command line is not.
    let on_command_line = std::env::args().skip(1).any(|arg| {
        let value = arg.strip_prefix("--redis=").unwrap_or(&arg);
        RedisUrl::parse(value).is_ok_and(|url| url.has_password())
    });
    if on_command_line {
        return Err(Failure::Message(
            "--redis: the URL carries a password; pass it in TICKWIRE_RELAY_REDIS instead of \
             on the command line, where other users can read it"
                .to_owned(),
        ));
    }
    let mut cluster = ClusterConfig::new(redis.clone(), &args.cluster)
        .map_err(|error| Failure::Message(format!("--cluster: {error}")))?;
    if let Some(id) = &args.relay_id {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
        if !valid {
            return Err(Failure::Message(format!(
                "--relay-id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        cluster.node.lease.relay_id.clone_from(id);
    }
    Ok(Some(cluster))
}

/// `--update-interval`: none, or the pace of subscriptions that name none.
#[derive(Debug, Clone, Copy, PartialEq)]
struct UpdateInterval(Option<Duration>);

/// Seconds (`1`, `0.5`), a duration (`500ms`), or `0` / `none` for every change.
fn update_interval(text: &str) -> Result<UpdateInterval, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(UpdateInterval(None));
    }
    let interval = match text.parse::<f64>() {
        Ok(0.0) => return Ok(UpdateInterval(None)),
        // Checked before any conversion: from_secs_f64 panics on what it cannot hold.
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= 1e6 => {
            Duration::from_millis((seconds * 1000.0).round() as u64)
        }
        Ok(_) => Duration::MAX,
        Err(_) => parse_duration(text)
            .map_err(|error| format!("expected seconds, a duration or \"none\": {error}"))?,
    };
    if interval.is_zero() {
        return Ok(UpdateInterval(None));
    }
    if !(MIN_UPDATE_INTERVAL..=MAX_UPDATE_INTERVAL).contains(&interval) {
        return Err(format!(
            "the update interval must be from {} to {} seconds (or 0 / none for every change)",
            MIN_UPDATE_INTERVAL.as_secs_f64(),
            MAX_UPDATE_INTERVAL.as_secs_f64()
        ));
    }
    Ok(UpdateInterval(Some(interval)))
}

/// `IP:PORT`, or `HOST:PORT` resolved (its first address, IPv4 preferred).
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|error| format!("{text:?} is not IP:PORT or HOST:PORT ({error})"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// What the page shows: `--symbols` when given, else the defaults the whitelist allows (or,
/// when it allows none of them, its first symbols), so the page never opens on refusals.
fn page_symbols(defaults: Vec<String>, hub: &HubConfig, chosen: &[String]) -> Vec<String> {
    if !chosen.is_empty() {
        return chosen.to_vec();
    }
    let Some(allowed) = &hub.whitelist else {
        return defaults;
    };
    let kept: Vec<String> = defaults
        .into_iter()
        .filter(|symbol| allowed.contains(symbol.as_str()))
        .collect();
    if kept.is_empty() {
        allowed
            .iter()
            .take(EMULATOR_PAGE_SYMBOLS.len())
            .map(|symbol| symbol.to_string())
            .collect()
    } else {
        kept
    }
}

/// Largest whitelist file read: far more symbols than any feed carries.
const MAX_WHITELIST_BYTES: u64 = 8 * 1024 * 1024;

/// A comma-separated list, or a file of symbols when `value` names one.
fn whitelist(value: &str, rules: &HubConfig) -> Result<BTreeSet<Arc<str>>, Failure> {
    use std::io::Read;
    let path = Path::new(value);
    let text = if path.is_file() {
        let cannot = |error: std::io::Error| {
            Failure::Message(format!("cannot read --whitelist {value}: {error}"))
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(cannot)?
            .take(MAX_WHITELIST_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(cannot)?;
        if text.len() as u64 > MAX_WHITELIST_BYTES {
            return Err(Failure::Message(format!(
                "--whitelist {value}: larger than {} MiB",
                MAX_WHITELIST_BYTES / 1024 / 1024
            )));
        }
        text
    } else if value.contains('/') || value.ends_with(".txt") {
        return Err(Failure::Message(format!(
            "--whitelist {value}: no such file (give a file or a comma-separated list)"
        )));
    } else {
        value.replace(',', "\n")
    };
    let mut symbols = BTreeSet::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        for symbol in line.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            // The hub refuses such symbols from clients, so the entry could never match.
            if !rules.accepts_symbol(symbol) {
                let shown: String = symbol.chars().take(40).collect();
                return Err(Failure::Message(format!(
                    "--whitelist {value}: line {}: \"{shown}\" is not a symbol (1 to {} bytes, no spaces)",
                    number + 1,
                    rules.max_symbol_bytes
                )));
            }
            symbols.insert(Arc::from(symbol));
        }
    }
    if symbols.is_empty() {
        return Err(Failure::Message(format!(
            "--whitelist {value}: no symbols in it"
        )));
    }
    Ok(symbols)
}

fn hub_config(args: &RelayArgs) -> Result<HubConfig, Failure> {
    let hub = HubConfig {
        max_connections: args.max_connections,
        max_subscriptions_per_connection: args.max_subscriptions,
        max_upstream_symbols: args.max_upstream_symbols,
        max_message_bytes: args.max_message_bytes,
        messages_per_second: args.messages_per_second,
        message_burst: args.message_burst,
        queue_capacity: args.queue,
        slow_consumer_deadline: args.slow_deadline,
        keepalive_timeout: args.keepalive,
        linger: args.linger,
        default_update_interval: args.update_interval.0,
        whitelist: args
            .whitelist
            .as_deref()
            .map(|value| whitelist(value, &HubConfig::default()))
            .transpose()?,
        ..HubConfig::default()
    };
    hub.validate()
        .map_err(|error| Failure::Message(format!("relay limits: {error}")))?;
    Ok(hub)
}

/// `none`, `TF` or `TF:HISTORY`, as the upstream plan; the fanout checks it again with the
/// hub and upstream limits when the relay starts.
fn upstream_plan(value: &str) -> Result<UpstreamPlan, Failure> {
    let invalid = |error: String| Failure::Message(format!("--bars {value}: {error}"));
    if value.eq_ignore_ascii_case("none") {
        return Ok(UpstreamPlan::default());
    }
    let (timeframe, history) = match value.split_once(':') {
        Some((timeframe, history)) => {
            let history = history
                .parse::<u32>()
                .ok()
                .filter(|history| (1..=MAX_BAR_HISTORY).contains(history))
                .ok_or_else(|| {
                    invalid(format!(
                        "the history {history:?} must be a number of bars from 1 to {MAX_BAR_HISTORY}"
                    ))
                })?;
            (timeframe, history)
        }
        None => (value, UpstreamPlan::default().bar_history),
    };
    let timeframe = Timeframe::parse(timeframe).map_err(|error| invalid(error.to_string()))?;
    Ok(UpstreamPlan {
        bars: Some(timeframe.as_str().to_owned()),
        bar_history: history,
    })
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Files the relay keeps open besides client sockets: upstream, embedded emulator, standard
/// streams, runtime internals, with room to spare.
const RESERVED_FILES: u64 = 64;

/// Every client is a socket, and common soft limits (1 024) are far below the default
/// `--max-connections`: raise the soft limit to what the limits need (as far as the hard limit
/// allows; asking for more than needed could fail where the hard limit is "unlimited"), and
/// say so if that is still short.
fn raise_open_file_limit(config: &RelayConfig) {
    let needed = u64::try_from(
        config
            .hub
            .max_connections
            .saturating_add(config.max_http_connections),
    )
    .unwrap_or(u64::MAX)
    .saturating_add(RESERVED_FILES);
    match rlimit::increase_nofile_limit(needed) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below --max-connections plus HTTP and internal files; \
             clients past it cannot connect (raise `ulimit -n` or lower --max-connections)"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
}

pub(crate) async fn run(args: RelayArgs) -> Result<(), Failure> {
    let hub = hub_config(&args)?;
    // Only fails if a logger is already installed, which this process never does twice.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(args.log_level)
        .with_target(false)
        .try_init();
    if let Some(file) = &args.source {
        return run_query_relay(&args, hub, file).await;
    }
    let upstream_plan = upstream_plan(&args.bars)?;
    let cluster = cluster_config(&args)?;
    if !(args.emulator_rate >= 0.0 && args.emulator_rate.is_finite()) {
        return Err(Failure::Message(format!(
            "--emulator-rate {}: expected ticks per second, 0 or more",
            args.emulator_rate
        )));
    }
    let (emulator, url, default_symbols) = match &args.upstream {
        Some(url) => (None, url.clone(), Vec::new()),
        None => {
            let emulator = Emulator::start(EmulatorConfig {
                symbols: args.emulator_symbols.max(1),
                rate_hz: args.emulator_rate,
                ..EmulatorConfig::default()
            })
            .await
            .map_err(|error| Failure::Message(format!("cannot start the emulator: {error}")))?;
            let url = emulator.url();
            let symbols = EMULATOR_PAGE_SYMBOLS
                .iter()
                .take(args.emulator_symbols.max(1))
                .map(|symbol| (*symbol).to_owned())
                .collect();
            (Some(emulator), url, symbols)
        }
    };
    let page_symbols = page_symbols(default_symbols, &hub, &args.symbols);
    // The embedded emulator gets no stored session unless one is named, and serves the HTTP
    // side (the polling fallback's scanner) itself.
    let mut tuning = args.tuning.clone();
    if let Some(emulator) = &emulator {
        tuning
            .access
            .http
            .http_base
            .get_or_insert_with(|| emulator.http_base());
    }
    let (upstream, access) = tuning
        .prepare(&url, "--upstream", Some(&args.fallback), emulator.is_none())
        .await?;
    tracing::info!("{}", access.describe(&upstream));
    let upstream_options = access.options(&upstream);
    let mut config = RelayConfig {
        listen: args.listen,
        upstream,
        upstream_options,
        hub,
        upstream_plan,
        page_symbols,
        cluster,
        ..RelayConfig::default()
    };
    let mut recording = open_store(&args, &mut config).await?;
    raise_open_file_limit(&config);
    let relay = start(config, args.listen).await?;
    let source = if emulator.is_some() {
        " (embedded emulator)"
    } else {
        ""
    };
    announce(&relay, &format!("upstream: {url}{source}"));
    let result = tokio::select! {
        () = stop_signal() => Ok(()),
        failure = token_rejected(relay.feed(), &access) => Err(failure),
        failure = store_failed(recording.as_mut()) => {
            recording = None;
            Err(failure)
        }
    };
    relay.shutdown().await;
    if let Some(emulator) = emulator {
        emulator.shutdown().await;
    }
    // Everything the relay received before it closed is in the recorder by now.
    let finished = finish_store(recording).await;
    result.and(finished)
}

async fn start(config: RelayConfig, listen: SocketAddr) -> Result<Relay, Failure> {
    Relay::start(config)
        .await
        .map_err(|error| match error.kind() {
            // The hub, the plan and the upstream client's limits, checked together.
            std::io::ErrorKind::InvalidInput => {
                Failure::Message(format!("relay settings: {error}"))
            }
            _ => Failure::Message(format!("cannot listen on {listen}: {error}")),
        })
}

/// What stdout says once the relay listens; the first line is the address, for scripts and
/// benchmarks that start the relay on port 0.
fn announce(relay: &Relay, source: &str) {
    let addr = relay.local_addr();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on http://{addr}");
    let _ = writeln!(stdout, "{source}");
    let _ = writeln!(
        stdout,
        "live page: http://{addr}/   websocket: ws://{addr}/ws   metrics: http://{addr}/metrics"
    );
    let _ = stdout.flush();
}

#[cfg(feature = "store")]
type StoreRecording = crate::relay_store::Recording;
#[cfg(not(feature = "store"))]
type StoreRecording = std::convert::Infallible;

/// `--store`: the last recorded states into the relay's preload, its events into the store.
#[cfg(feature = "store")]
async fn open_store(
    args: &RelayArgs,
    config: &mut RelayConfig,
) -> Result<Option<StoreRecording>, Failure> {
    let Some(path) = &args.store else {
        return Ok(None);
    };
    let recorder = crate::record::recorder_config(
        args.commit_every,
        tickwire_core::record::RecorderConfig::default().batch_rows,
        tickwire_core::record::RecorderConfig::default().max_pending_quotes,
    )?;
    let (recording, tap, preload) = crate::relay_store::open(
        path,
        config.upstream_plan.bars.as_deref(),
        config.hub.max_upstream_symbols,
        recorder,
    )
    .await?;
    tracing::info!(
        store = %path.display(),
        symbols = preload.len(),
        "recording what is relayed; stored states are served stale until confirmed"
    );
    config.tap = Some(tap);
    config.preload = preload;
    Ok(Some(recording))
}

#[cfg(not(feature = "store"))]
async fn open_store(
    args: &RelayArgs,
    _config: &mut RelayConfig,
) -> Result<Option<StoreRecording>, Failure> {
    match args.store {
        Some(_) => Err(without_store("--store")),
        None => Ok(None),
    }
}

/// Completes when the store fails; never without one.
async fn store_failed(recording: Option<&mut StoreRecording>) -> Failure {
    match recording {
        #[cfg(feature = "store")]
        Some(recording) => recording.failed().await,
        #[cfg(not(feature = "store"))]
        Some(never) => match *never {},
        None => std::future::pending().await,
    }
}

/// Writes what the store still has to, and says on stderr what was recorded.
async fn finish_store(recording: Option<StoreRecording>) -> Result<(), Failure> {
    match recording {
        #[cfg(feature = "store")]
        Some(recording) => {
            let summary = recording.finish().await?;
            eprintln!("{summary}");
            Ok(())
        }
        #[cfg(not(feature = "store"))]
        Some(never) => match never {},
        None => Ok(()),
    }
}

/// `--source duckdb:FILE --query SQL`: the relay serves the query's rows; no upstream.
#[cfg(feature = "store")]
async fn run_query_relay(args: &RelayArgs, hub: HubConfig, file: &Path) -> Result<(), Failure> {
    use tickwire_core::query::QueryConfig;
    let sql = query_text(args.query.as_deref().unwrap_or_default())?;
    let runner = crate::relay_store::DuckDbSource::new(file, &sql)?;
    // The page shows what the query returns when nothing else says what to show.
    let mut shown = args.symbols.clone();
    if shown.is_empty() && hub.whitelist.is_none() {
        shown = runner.first_symbols(EMULATOR_PAGE_SYMBOLS.len()).await;
    }
    let query = QueryConfig {
        interval: args.interval,
        timeout: args.query_timeout,
        max_rows: hub.max_upstream_symbols.max(1),
        // Relays started together must not retry a failing query in step.
        seed: tickwire_driver::os_seed(),
        ..QueryConfig::default()
    };
    query
        .validate()
        .map_err(|error| Failure::Message(format!("--interval / --query-timeout: {error}")))?;
    let config = RelayConfig {
        listen: args.listen,
        page_symbols: page_symbols(Vec::new(), &hub, &shown),
        hub,
        query: Some(tickwire_relay::RelayQuery {
            config: query,
            runner: Arc::new(runner),
        }),
        ..RelayConfig::default()
    };
    raise_open_file_limit(&config);
    let relay = start(config, args.listen).await?;
    announce(
        &relay,
        &format!(
            "source: duckdb:{} every {:?} (no upstream feed)",
            file.display(),
            args.interval
        ),
    );
    stop_signal().await;
    relay.shutdown().await;
    Ok(())
}

#[cfg(not(feature = "store"))]
async fn run_query_relay(args: &RelayArgs, _hub: HubConfig, _file: &Path) -> Result<(), Failure> {
    // Read anyway, so a bad --query @FILE is reported the same with or without the feature.
    query_text(args.query.as_deref().unwrap_or_default())?;
    Err(without_store("--source duckdb:"))
}

/// Completes when the upstream rejected the relay's token for good (a fixed token, or a signed
/// out session): serving on would only mean retrying a token that will never work. A cluster
/// relay has no feed of its own to watch (the leader's comes and goes with the lease; one
/// whose upstream stays unhealthy gives the lease up to another relay).
async fn token_rejected(feed: Option<&tickwire_driver::Feed>, access: &Access) -> Failure {
    let Some(feed) = feed else {
        return std::future::pending().await;
    };
    loop {
        if let Some(failure) = access.rejected(feed) {
            return failure;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &BTreeSet<Arc<str>>) -> Vec<&str> {
        set.iter().map(|symbol| symbol.as_ref()).collect()
    }

    #[test]
    fn update_interval_takes_seconds_durations_or_none_within_bounds() {
        let secs = |s: f64| Ok(UpdateInterval(Some(Duration::from_secs_f64(s))));
        assert_eq!(update_interval("1"), secs(1.0));
        assert_eq!(update_interval("0.5"), secs(0.5));
        assert_eq!(update_interval(" 2.25 "), secs(2.25));
        assert_eq!(update_interval("250ms"), secs(0.25));
        assert_eq!(update_interval("1h"), secs(3600.0));
        for none in ["none", "NONE", "0", "0.0", "0s"] {
            assert_eq!(update_interval(none), Ok(UpdateInterval(None)), "{none}");
        }
        for bad in [
            "0.05", "50ms", "3601", "-1", "nan", "inf", "1e300", "often", "",
        ] {
            assert!(update_interval(bad).is_err(), "{bad}");
        }
        assert!(
            update_interval("0.05")
                .unwrap_err()
                .contains("from 0.1 to 3600")
        );
    }

    #[test]
    fn listen_takes_host_names() {
        assert_eq!(
            listen_address("localhost:0").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 0))
        );
        assert_eq!(
            listen_address("0.0.0.0:8080").unwrap(),
            SocketAddr::from(([0, 0, 0, 0], 8080))
        );
        assert!(listen_address("localhost").is_err());
        assert!(listen_address("nope nope:1").is_err());
    }

    #[test]
    fn the_page_shows_only_symbols_the_whitelist_allows() {
        let defaults = || vec!["BINANCE:BTCUSDT".to_owned(), "NASDAQ:AAPL".to_owned()];
        let mut hub = HubConfig::default();
        assert_eq!(page_symbols(defaults(), &hub, &[]), defaults());
        hub.whitelist = Some(whitelist("NASDAQ:AAPL,FX:EURUSD", &hub).unwrap());
        assert_eq!(page_symbols(defaults(), &hub, &[]), ["NASDAQ:AAPL"]);
        hub.whitelist = Some(whitelist("FX:EURUSD", &hub).unwrap());
        assert_eq!(page_symbols(defaults(), &hub, &[]), ["FX:EURUSD"]);
        let chosen = ["X:Y".to_owned()];
        assert_eq!(page_symbols(defaults(), &hub, &chosen), chosen);
    }

    #[test]
    fn whitelist_reads_a_list_or_a_file_with_comments() {
        let listed = whitelist("NASDAQ:AAPL, FX:EURUSD,,", &HubConfig::default()).unwrap();
        assert_eq!(names(&listed), ["FX:EURUSD", "NASDAQ:AAPL"]);
        let path = std::env::temp_dir().join(format!("tickwire-whitelist-{}", std::process::id()));
        std::fs::write(
            &path,
            "# majors\nFX:EURUSD\n  NASDAQ:AAPL # tech\n\nA:B,C:D\n",
        )
        .unwrap();
        let from_file = whitelist(path.to_str().unwrap(), &HubConfig::default()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            names(&from_file),
            ["A:B", "C:D", "FX:EURUSD", "NASDAQ:AAPL"]
        );
    }

    #[test]
    fn whitelist_refuses_entries_no_client_could_send_and_oversized_files() {
        let path = std::env::temp_dir().join(format!("tickwire-badlist-{}", std::process::id()));
        std::fs::write(&path, "FX:EURUSD\nNASDAQ: AAPL\n").unwrap();
        let Err(Failure::Message(error)) = whitelist(path.to_str().unwrap(), &HubConfig::default())
        else {
            panic!("an entry with a space was accepted");
        };
        assert!(
            error.contains("line 2") && error.contains("NASDAQ: AAPL"),
            "{error}"
        );
        std::fs::write(&path, "A:B,".repeat(3 * 1024 * 1024)).unwrap();
        let Err(Failure::Message(error)) = whitelist(path.to_str().unwrap(), &HubConfig::default())
        else {
            panic!("a 12 MiB whitelist was read");
        };
        std::fs::remove_file(&path).unwrap();
        assert!(error.contains("larger than 8 MiB"), "{error}");
        let Err(Failure::Message(error)) = whitelist(&"X".repeat(200), &HubConfig::default())
        else {
            panic!("an overlong symbol was accepted");
        };
        assert!(error.contains("1 to 128 bytes"), "{error}");
    }
}

//! # tickwire-relay
//!
//! The relay: one resilient upstream feed fanned out to many downstream WebSocket clients. The
//! server runs on tokio (axum and hyper); the upstream feed is a `tickwire-tokio` client.
//!
//! Every decision (who gets what, conflation, limits, deadlines, which symbols and bar series
//! the upstream carries, with what history, and what an upstream rejection means downstream)
//! is the core's [`Fanout`] (the [`tickwire_core::hub::Hub`] composed with the upstream feed);
//! this crate moves bytes between sockets and the fanout, tells it the time, and serves:
//!
//! - `/ws`: the downstream protocol (see [`tickwire_core::hub`]),
//! - `/`: a live page (table, sparklines, connection indicator),
//! - `/symbols`: the symbols the page shows by default (JSON array),
//! - `/metrics`: Prometheus text format,
//! - `/healthz`: the upstream state (200 when live, 503 otherwise), whether its data is
//!   real-time or delayed, polling failures and the auth token's expiry.
//!
//! With [`RelayConfig::cluster`] it joins a cluster of relays through Redis: only the relay
//! holding the cluster's lease connects upstream, and every relay serves its own clients from
//! what that one publishes (the decisions are [`tickwire_core::cluster::Node`]'s; the README's
//! "Scaling out" documents the keys and messages).
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use tickwire_relay::{Relay, RelayConfig};
//!
//! let mut config = RelayConfig::default();
//! config.upstream.url = "ws://127.0.0.1:8765/socket.io/websocket".to_owned();
//! let relay = Relay::start(config).await?;
//! println!("open http://{}/", relay.local_addr());
//! tokio::signal::ctrl_c().await?;
//! relay.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod cluster;
mod connection;
mod http;
mod metrics;
mod process;
mod query;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
pub use cluster::link::RedisUrl;
use cluster::link::{Link, LinkCounters, LinkEvent};
use futures::{FutureExt, StreamExt};
pub use query::{QueryRunner, RelayQuery};
use tickwire_core::client::Quote;
use tickwire_core::cluster::{ClusterNameError, Keys, Node, NodeConfig, NodeOutput};
use tickwire_core::hub::{
    CloseReason, ConnId, Fanout, FanoutOutput, HubConfig, Refused, UpstreamFeed, UpstreamPlan,
};
use tickwire_core::message::Bar;
use tickwire_core::query::{QueryFanout, QueryOutput};
use tickwire_driver::{Config, Event, Feed, Options};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use metrics::LatencyHistogram;
use query::QueryEngine;

/// Relay settings. `RelayConfig::default()` listens on 127.0.0.1:8080 and relays the real feed.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to listen for HTTP and WebSocket clients.
    pub listen: SocketAddr,
    /// The upstream feed client's settings (URL, timeouts, backoff…).
    pub upstream: Config,
    /// The upstream feed's driver options: the token provider that refreshes a session's
    /// token, the fallback poller.
    pub upstream_options: Options,
    /// Downstream limits.
    pub hub: HubConfig,
    /// What the upstream carries per symbol: quotes, and optionally one bar series with its
    /// history.
    pub upstream_plan: UpstreamPlan,
    /// What `GET /symbols` returns: the page's default symbols.
    pub page_symbols: Vec<String>,
    /// Kernel send buffer of each client socket (`SO_SNDBUF`). Small buffers bound memory per
    /// connection and let a stalled reader show up as backpressure quickly.
    pub send_buffer_bytes: Option<u32>,
    /// Largest WebSocket message read at all; bigger ones end the connection (close code
    /// 1009). Messages between the hub's `max_message_bytes` and this get an error reply.
    pub max_websocket_message_bytes: usize,
    /// Time a client gets to take a close frame before its socket is dropped.
    pub close_timeout: Duration,
    /// Time an HTTP client gets to send its request headers (the WebSocket handshake
    /// included, and the wait between keep-alive requests); a silent or trickling socket is
    /// closed after it.
    pub http_header_timeout: Duration,
    /// Connections served at the HTTP stage (page, metrics, health, WebSocket handshakes) at
    /// once; more wait in the accept backlog. Upgraded WebSockets count against the hub's
    /// `max_connections` instead.
    pub max_http_connections: usize,
    /// Join a cluster of relays through Redis (see [`ClusterConfig`]); `None` runs alone.
    pub cluster: Option<ClusterConfig>,
    /// Serve the rows of a periodic query instead of an upstream feed (see
    /// [`tickwire_core::query`]): no upstream connection is opened, and `upstream`,
    /// `upstream_options` and `upstream_plan` are not used. Not with `cluster`.
    pub query: Option<RelayQuery>,
    /// Sees every event of the upstream feed, in order, before the relay acts on it (a
    /// recorder). It runs on the relay's one hub task: it must be quick and never block. In a
    /// cluster it sees the feed only while this relay leads.
    pub tap: Option<EventTap>,
    /// Last known states, served at once marked `"stale":true` until the upstream confirms
    /// each symbol (see [`tickwire_core::hub::Hub::preload`]); at most
    /// `hub.max_upstream_symbols` of them are kept. Only for a relay that runs alone on its
    /// own feed.
    pub preload: Vec<Preloaded>,
}

/// A callback that sees every upstream event ([`RelayConfig::tap`]).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tickwire_relay::EventTap;
///
/// let seen = Arc::new(AtomicU64::new(0));
/// let counter = seen.clone();
/// let tap = EventTap::new(move |_event| {
///     counter.fetch_add(1, Ordering::Relaxed);
/// });
/// # let _ = tap;
/// ```
#[derive(Clone)]
pub struct EventTap(Arc<dyn Fn(&Event) + Send + Sync>);

impl EventTap {
    /// A tap calling `see` with each event.
    pub fn new(see: impl Fn(&Event) + Send + Sync + 'static) -> EventTap {
        EventTap(Arc::new(see))
    }
}

impl std::fmt::Debug for EventTap {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("EventTap")
    }
}

/// A symbol's last known state, from a store ([`RelayConfig::preload`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Preloaded {
    /// The last quote.
    pub quote: Quote,
    /// The last bar: its timeframe (the relay's `upstream_plan.bars`; another is dropped),
    /// the bar and whether it had closed.
    pub bar: Option<(Arc<str>, Bar, bool)>,
}

/// A relay's part in a cluster: the Redis that links the relays, and its settings.
///
/// Only the relay holding the cluster's lease connects upstream; every relay fans out to its
/// own clients (see [`tickwire_core::cluster`] for the decisions and the README's "Scaling
/// out" for the keys and messages).
///
/// ```
/// use tickwire_relay::{ClusterConfig, RedisUrl};
///
/// let redis = RedisUrl::parse("redis://user:secret@127.0.0.1:6379/0").unwrap();
/// let cluster = ClusterConfig::new(redis, "prod-eu").unwrap();
/// assert!(!format!("{cluster:?}").contains("secret"));
/// ```
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where Redis is; its password never appears in logs or `Debug` output.
    pub redis: RedisUrl,
    /// The cluster's settings in the core: its keys (named by the cluster), this relay's id
    /// and the lease and demand timings.
    pub node: NodeConfig,
    /// A Redis command (or connection attempt) unanswered this long fails the link.
    pub redis_timeout: Duration,
}

impl ClusterConfig {
    /// Cluster `name` over `redis`, with a relay id drawn from the host name, the process id
    /// and the time (unique in practice), and the core's default timings.
    ///
    /// # Errors
    /// The name cannot prefix keys (see [`tickwire_core::cluster::Keys::new`]).
    pub fn new(redis: RedisUrl, name: &str) -> Result<ClusterConfig, ClusterNameError> {
        let keys = Keys::new(name)?;
        let mut node = NodeConfig::new(keys, &default_relay_id());
        // Relays that fail together (a Redis restart) must not retry in step.
        node.lease.seed = tickwire_driver::os_seed();
        Ok(ClusterConfig {
            redis,
            redis_timeout: node.lease.request_timeout,
            node,
        })
    }
}

/// `<host>-<pid>-<hex>`: unique across the relays of a cluster without configuration.
fn default_relay_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| {
            name.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(32)
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "relay".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: Config::default(),
            upstream_options: Options::default(),
            hub: HubConfig::default(),
            upstream_plan: UpstreamPlan::default(),
            page_symbols: Vec::new(),
            send_buffer_bytes: Some(64 * 1024),
            max_websocket_message_bytes: 256 * 1024,
            close_timeout: Duration::from_secs(2),
            http_header_timeout: Duration::from_secs(10),
            max_http_connections: 1024,
            cluster: None,
            query: None,
            tap: None,
            preload: Vec::new(),
        }
    }
}

/// What connection tasks and HTTP handlers ask of the hub task.
enum Command {
    Connect {
        writer: Arc<connection::Writer>,
        task: AbortHandle,
        reply: oneshot::Sender<Result<ConnId, Refused>>,
    },
    Text {
        conn: ConnId,
        text: tungstenite::Utf8Bytes,
    },
    Binary {
        conn: ConnId,
        bytes: usize,
    },
    Activity {
        conn: ConnId,
    },
    Written {
        conn: ConnId,
        frames: usize,
    },
    Disconnected {
        conn: ConnId,
        reason: CloseReason,
    },
    Metrics {
        reply: oneshot::Sender<String>,
    },
    Health {
        reply: oneshot::Sender<(bool, String)>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// State shared by the HTTP handlers.
struct AppState {
    commands: mpsc::Sender<Command>,
    symbols_json: String,
    latency: Arc<LatencyHistogram>,
    max_websocket_message_bytes: usize,
    /// Written frames a writer reports at once (half the hub's send window).
    report_every: usize,
    /// The tasks that write the hub's frames into the sockets.
    write_pool: Arc<connection::WritePool>,
}

/// A running relay. Dropping it leaves it running until the runtime ends; call
/// [`Relay::shutdown`] to close every client cleanly.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    hub_task: JoinHandle<()>,
    /// The upstream feed of a relay that runs alone (in a cluster it comes and goes with the
    /// lease, inside the hub task).
    feed: Option<Feed>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Command")
    }
}

fn listener(config: &RelayConfig) -> std::io::Result<TcpListener> {
    let socket = match config.listen {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted relay must get its port back while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if let Some(bytes) = config.send_buffer_bytes {
        // Accepted sockets inherit it.
        socket.set_send_buffer_size(bytes)?;
    }
    socket.bind(config.listen)?;
    socket.listen(4096)
}

impl Relay {
    /// Binds, connects upstream and starts serving.
    ///
    /// # Errors
    /// The address cannot be bound, or the hub configuration, the upstream plan or their
    /// pairing with the upstream client's limits is invalid ([`std::io::ErrorKind::InvalidInput`],
    /// with the reason).
    pub async fn start(config: RelayConfig) -> std::io::Result<Relay> {
        let invalid = |error: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, error);
        let (query_results, query_rx) = mpsc::channel(2);
        if !config.preload.is_empty() && (config.cluster.is_some() || config.query.is_some()) {
            return Err(invalid(
                "stored states can only be preloaded by a relay that runs alone on its own feed"
                    .to_owned(),
            ));
        }
        let engine = match (&config.cluster, &config.query) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "a relay fed by a query runs alone: it cannot join a cluster".to_owned(),
                ));
            }
            (None, Some(query)) => {
                let relay =
                    QueryFanout::new(config.hub.clone(), query.config.clone(), Instant::now())
                        .map_err(|error| invalid(error.to_string()))?;
                tracing::info!(
                    source = %query.runner.describe(),
                    every = ?query.config.interval,
                    "serving the rows of a periodic query; no upstream feed"
                );
                Engine::Query(Box::new(QueryEngine {
                    relay,
                    runner: query.runner.clone(),
                    results: query_results,
                }))
            }
            (None, None) => {
                let fanout = Fanout::new(
                    config.hub.clone(),
                    config.upstream_plan.clone(),
                    &config.upstream,
                )
                .map_err(|error| invalid(error.to_string()))?;
                let mut fanout = Box::new(fanout);
                preload(&mut fanout, &config);
                Engine::Single { fanout, feed: None }
            }
            (Some(cluster), None) => {
                let node = Node::new(
                    cluster.node.clone(),
                    config.hub.clone(),
                    config.upstream_plan.clone(),
                    &config.upstream,
                    Instant::now(),
                )
                .map_err(|error| invalid(error.to_string()))?;
                tracing::info!(
                    cluster = %cluster.node.keys,
                    relay = %cluster.node.lease.relay_id,
                    redis = %cluster.redis,
                    "joining the cluster"
                );
                Engine::Cluster(Box::new(ClusterEngine {
                    node,
                    feed: None,
                    link: None,
                    redis: cluster.redis.clone(),
                    keys: cluster.node.keys.clone(),
                    redis_timeout: cluster.redis_timeout,
                    upstream: config.upstream.clone(),
                    options: config.upstream_options.clone(),
                    retired: LinkCounters::default(),
                }))
            }
        };
        let listener = listener(&config)?;
        let addr = listener.local_addr()?;
        let mut engine = engine;
        let feed = match &mut engine {
            Engine::Single { feed, .. } => {
                let started = tickwire_tokio::connect_with(
                    config.upstream.clone(),
                    config.upstream_options.clone(),
                );
                *feed = Some(started.clone());
                Some(started)
            }
            Engine::Cluster(_) | Engine::Query(_) => None,
        };
        let (commands, command_rx) = mpsc::channel(8192);
        let connections = Arc::new(AtomicUsize::new(0));
        let latency = Arc::new(LatencyHistogram::default());
        let http_stats = Arc::new(http::HttpStats::default());
        let mut page_symbols = config.page_symbols.clone();
        if page_symbols.is_empty()
            && let Some(whitelist) = &config.hub.whitelist
        {
            page_symbols = whitelist.iter().take(20).map(|s| s.to_string()).collect();
        }
        let state = Arc::new(AppState {
            commands: commands.clone(),
            symbols_json: serde_json::to_string(&page_symbols).unwrap_or_else(|_| "[]".into()),
            latency: latency.clone(),
            max_websocket_message_bytes: config.max_websocket_message_bytes,
            report_every: config.hub.written_report_every(),
            write_pool: connection::WritePool::start(commands.clone()),
        });
        let hub_task = tokio::spawn(
            HubTask {
                engine,
                connections: HashMap::new(),
                close_timeout: config.close_timeout,
                open: connections,
                latency,
                http: http_stats.clone(),
                feed_swap: None,
                new_link_events: None,
                tap: config.tap.clone(),
            }
            .run(command_rx, query_rx),
        );
        let router = Router::new()
            .route("/", get(page))
            .route("/ws", get(websocket))
            .route("/symbols", get(symbols))
            .route("/metrics", get(metrics_page))
            .route("/healthz", get(health))
            .with_state(state);
        let (stop_server, stopped) = oneshot::channel::<()>();
        let limits = http::HttpLimits {
            header_timeout: config.http_header_timeout,
            max_connections: config.max_http_connections,
            drain_timeout: config.close_timeout,
        };
        let server = tokio::spawn(http::serve(listener, router, limits, http_stats, stopped));
        Ok(Relay {
            addr,
            commands,
            stop_server: Some(stop_server),
            server,
            hub_task,
            feed,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream feed (for its status) of a relay that runs alone; `None` in a cluster,
    /// where the feed comes and goes with the lease.
    pub fn feed(&self) -> Option<&Feed> {
        self.feed.as_ref()
    }

    /// Closes every client with a close frame (1001, going away), stops listening and closes
    /// the upstream connection. Returns when the port is free.
    pub async fn shutdown(mut self) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        // In a cluster the hub task ends once Redis has the lease released and the demand
        // removed (or the close timeout passed).
        if tokio::time::timeout(Duration::from_secs(5), &mut self.hub_task)
            .await
            .is_err()
        {
            self.hub_task.abort();
        }
        if let Some(feed) = &self.feed {
            feed.close().await;
        }
    }
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
}

async fn symbols(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.symbols_json.clone(),
    )
}

async fn metrics_page(State(state): State<Arc<AppState>>) -> Response {
    let (reply, rendered) = oneshot::channel();
    if state
        .commands
        .send(Command::Metrics { reply })
        .await
        .is_err()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    match rendered.await {
        Ok(mut text) => {
            // Read here, not in the hub's task: /proc reads are the only blocking part.
            process::ProcessStats::read().render(&mut text);
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response()
        }
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (reply, report) = oneshot::channel();
    if state
        .commands
        .send(Command::Health { reply })
        .await
        .is_err()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Ok((healthy, body)) = report.await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn websocket(State(state): State<Arc<AppState>>, request: Request) -> Response {
    connection::upgrade(request, state)
}

/// What decides: a fanout over the relay's own feed, or a cluster node.
enum Engine {
    Single {
        fanout: Box<Fanout>,
        /// Set once at start.
        feed: Option<Feed>,
    },
    Cluster(Box<ClusterEngine>),
    /// Fed by a periodic query, with no upstream feed.
    Query(Box<QueryEngine>),
}

/// A cluster relay's moving parts: the node decides, these carry it out.
struct ClusterEngine {
    node: Node,
    /// Open while the node carries the upstream (it leads).
    feed: Option<Feed>,
    link: Option<Link>,
    redis: RedisUrl,
    keys: Keys,
    redis_timeout: Duration,
    upstream: Config,
    options: Options,
    /// What earlier links did not forward.
    retired: LinkCounters,
}

impl ClusterEngine {
    /// Ends the current link (if any), keeping its counters.
    fn retire_link(&mut self) {
        if let Some(link) = self.link.take() {
            let counters = link.counters();
            self.retired.messages_dropped = self
                .retired
                .messages_dropped
                .saturating_add(counters.messages_dropped);
            self.retired.messages_oversized = self
                .retired
                .messages_oversized
                .saturating_add(counters.messages_oversized);
            link.close();
        }
    }

    /// Messages the links did not forward, over all links.
    fn link_counters(&self) -> LinkCounters {
        let current = self.link.as_ref().map(Link::counters).unwrap_or_default();
        LinkCounters {
            messages_dropped: self
                .retired
                .messages_dropped
                .saturating_add(current.messages_dropped),
            messages_oversized: self
                .retired
                .messages_oversized
                .saturating_add(current.messages_oversized),
        }
    }
}

/// Link events waiting for the hub task: a burst of stream messages is drained in one
/// wake-up; past this the link waits (and Redis buffers), never the hub.
const LINK_EVENTS: usize = 4096;

impl Engine {
    fn fanout(&self) -> &Fanout {
        match self {
            Engine::Single { fanout, .. } => fanout,
            Engine::Cluster(cluster) => cluster.node.fanout(),
            Engine::Query(query) => query.relay.fanout(),
        }
    }

    fn feed(&self) -> Option<&Feed> {
        match self {
            Engine::Single { feed, .. } => feed.as_ref(),
            Engine::Cluster(cluster) => cluster.feed.as_ref(),
            Engine::Query(_) => None,
        }
    }

    fn connect(&mut self, now: Instant) -> Result<ConnId, Refused> {
        match self {
            Engine::Single { fanout, .. } => fanout.connect(now),
            Engine::Cluster(cluster) => cluster.node.connect(now),
            Engine::Query(query) => query.relay.fanout_mut().connect(now),
        }
    }

    fn disconnect(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        match self {
            Engine::Single { fanout, .. } => fanout.disconnect(now, conn, reason),
            Engine::Cluster(cluster) => cluster.node.disconnect(now, conn, reason),
            Engine::Query(query) => query.relay.fanout_mut().disconnect(now, conn, reason),
        }
    }

    fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        match self {
            Engine::Single { fanout, .. } => fanout.handle_text(now, conn, text),
            Engine::Cluster(cluster) => cluster.node.handle_text(now, conn, text),
            Engine::Query(query) => query.relay.fanout_mut().handle_text(now, conn, text),
        }
    }

    fn handle_binary(&mut self, now: Instant, conn: ConnId, bytes: usize) {
        match self {
            Engine::Single { fanout, .. } => fanout.handle_binary(now, conn, bytes),
            Engine::Cluster(cluster) => cluster.node.handle_binary(now, conn, bytes),
            Engine::Query(query) => query.relay.fanout_mut().handle_binary(now, conn, bytes),
        }
    }

    fn handle_activity(&mut self, now: Instant, conn: ConnId) {
        match self {
            Engine::Single { fanout, .. } => fanout.handle_activity(now, conn),
            Engine::Cluster(cluster) => cluster.node.handle_activity(now, conn),
            Engine::Query(query) => query.relay.fanout_mut().handle_activity(now, conn),
        }
    }

    fn handle_written(&mut self, now: Instant, conn: ConnId, frames: usize) {
        match self {
            Engine::Single { fanout, .. } => fanout.handle_written(now, conn, frames),
            Engine::Cluster(cluster) => cluster.node.handle_written(now, conn, frames),
            Engine::Query(query) => query.relay.fanout_mut().handle_written(now, conn, frames),
        }
    }

    fn shutdown(&mut self, now: Instant) {
        match self {
            Engine::Single { fanout, .. } => fanout.shutdown(now),
            Engine::Cluster(cluster) => cluster.node.shutdown(now),
            Engine::Query(query) => query.relay.fanout_mut().shutdown(now),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Engine::Single { fanout, .. } => fanout.poll_timeout(),
            Engine::Cluster(cluster) => cluster.node.poll_timeout(),
            Engine::Query(query) => query.relay.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Engine::Single { fanout, .. } => fanout.handle_timeout(now),
            Engine::Cluster(cluster) => cluster.node.handle_timeout(now),
            Engine::Query(query) => query.handle_timeout(now),
        }
    }

    fn handle_feed_event(&mut self, now: Instant, event: &Event) {
        match self {
            Engine::Single { fanout, .. } => fanout.handle_event(now, event),
            Engine::Cluster(cluster) => cluster.node.handle_feed_event(now, event),
            // No feed stands behind it.
            Engine::Query(_) => {}
        }
    }

    fn handle_link_event(&mut self, now: Instant, event: Option<LinkEvent>) {
        let Engine::Cluster(cluster) = self else {
            return;
        };
        let node = &mut cluster.node;
        match event {
            Some(LinkEvent::Connected) => {
                tracing::info!(redis = %cluster.redis, "linked to Redis");
                node.handle_store_connected(now);
            }
            Some(LinkEvent::Reply(reply)) => node.handle_store_reply(now, reply),
            Some(LinkEvent::Stream(message)) => node.handle_stream_message(now, &message),
            Some(LinkEvent::DemandChange(entry)) => node.handle_demand_message(now, &entry),
            Some(LinkEvent::Down(reason)) => {
                tracing::warn!(redis = %cluster.redis, %reason, "the Redis link failed");
                cluster.retire_link();
                cluster.node.handle_store_failed(now, &reason);
            }
            None => {
                cluster.retire_link();
                cluster
                    .node
                    .handle_store_failed(now, "the Redis link ended");
            }
        }
    }
}

/// The one task that owns the hub and its upstream side: everything they decide is carried
/// out here.
struct HubTask {
    engine: Engine,
    connections: HashMap<ConnId, ConnectionHandle>,
    close_timeout: Duration,
    open: Arc<AtomicUsize>,
    latency: Arc<LatencyHistogram>,
    http: Arc<http::HttpStats>,
    /// A feed opened (its events) or closed (`None`) during the last flush.
    feed_swap: Option<Option<tickwire_driver::Events>>,
    /// A Redis link opened during the last flush: its events.
    new_link_events: Option<mpsc::Receiver<LinkEvent>>,
    tap: Option<EventTap>,
}

struct ConnectionHandle {
    /// The hub task writes the connection's frames itself, through this.
    writer: Arc<connection::Writer>,
    task: AbortHandle,
}

/// Commands handled per wake-up before outputs are flushed, so one busy moment cannot starve
/// the timers and upstream events.
const COMMAND_BATCH: usize = 1024;

async fn next_feed_event(events: &mut Option<tickwire_driver::Events>) -> Option<Event> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

async fn next_query_result(
    results: &mut Option<mpsc::Receiver<query::QueryResult>>,
) -> Option<query::QueryResult> {
    match results {
        Some(results) => results.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_link_event(events: &mut Option<mpsc::Receiver<LinkEvent>>) -> Option<LinkEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

impl HubTask {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        query_results: mpsc::Receiver<query::QueryResult>,
    ) {
        // Only a query-fed relay has results coming.
        let mut query_results = matches!(self.engine, Engine::Query(_)).then_some(query_results);
        let mut events = self.engine.feed().map(Feed::events);
        let mut link_events: Option<mpsc::Receiver<LinkEvent>> = None;
        // A cluster node's first outputs (its Redis link) go out before anything happens.
        self.flush();
        loop {
            if let Some(swap) = self.feed_swap.take() {
                events = swap;
            }
            if let Some(new) = self.new_link_events.take() {
                link_events = Some(new);
            }
            let deadline = self.engine.poll_timeout();
            let sleep = async move {
                match deadline {
                    Some(deadline) => {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    let mut stop = self.handle(command);
                    for _ in 1..COMMAND_BATCH {
                        if stop {
                            break;
                        }
                        let Ok(command) = commands.try_recv() else { break };
                        stop = self.handle(command);
                    }
                    if stop {
                        self.flush();
                        self.finish_cluster(link_events.take()).await;
                        return;
                    }
                }
                event = next_feed_event(&mut events) => {
                    let Some(event) = event else {
                        if matches!(self.engine, Engine::Single { .. }) {
                            break;
                        }
                        events = None;
                        continue;
                    };
                    self.handle_event(event);
                    while let Some(Some(event)) = events.as_mut().and_then(|e| e.next().now_or_never()) {
                        self.handle_event(event);
                    }
                }
                link = next_link_event(&mut link_events) => {
                    let ended = link.is_none() || matches!(link, Some(LinkEvent::Down(_)));
                    self.engine.handle_link_event(Instant::now(), link);
                    if ended {
                        link_events = None;
                    } else if let Some(receiver) = link_events.as_mut() {
                        for _ in 1..COMMAND_BATCH {
                            let Ok(event) = receiver.try_recv() else { break };
                            let down = matches!(event, LinkEvent::Down(_));
                            self.engine.handle_link_event(Instant::now(), Some(event));
                            if down {
                                link_events = None;
                                break;
                            }
                        }
                    }
                }
                result = next_query_result(&mut query_results) => match result {
                    Some((id, result)) => {
                        if let Engine::Query(query) = &mut self.engine {
                            query.handle_result(Instant::now(), id, result);
                        }
                    }
                    // The engine holds the sender, so this cannot end while it runs.
                    None => query_results = None,
                },
                () = sleep => self.engine.handle_timeout(Instant::now()),
            }
            self.flush();
        }
    }

    /// After shutdown: a cluster relay waits (a bounded time) for Redis to answer the release
    /// of the lease and the removal of its demand, so others need not wait for them to expire.
    async fn finish_cluster(&mut self, link_events: Option<mpsc::Receiver<LinkEvent>>) {
        let (Some(mut link_events), Engine::Cluster(_)) = (link_events, &self.engine) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + self.close_timeout;
        while let Engine::Cluster(cluster) = &mut self.engine
            && !cluster.node.store_idle()
        {
            match tokio::time::timeout_at(deadline, link_events.recv()).await {
                Ok(Some(LinkEvent::Reply(reply))) => {
                    cluster.node.handle_store_reply(Instant::now(), reply);
                }
                Ok(Some(LinkEvent::Stream(_) | LinkEvent::DemandChange(_))) => {}
                _ => return,
            }
        }
    }

    /// Handles one command; true when the relay has shut down.
    fn handle(&mut self, command: Command) -> bool {
        let now = Instant::now();
        match command {
            Command::Connect {
                writer,
                task,
                reply,
            } => {
                let result = self.engine.connect(now);
                if result.is_err() {
                    tracing::debug!("refused a client at the connection limit");
                }
                if let Ok(conn) = result {
                    self.connections
                        .insert(conn, ConnectionHandle { writer, task });
                }
                let _ = reply.send(result);
            }
            Command::Text { conn, text } => self.engine.handle_text(now, conn, text.as_str()),
            Command::Binary { conn, bytes } => self.engine.handle_binary(now, conn, bytes),
            Command::Activity { conn } => self.engine.handle_activity(now, conn),
            Command::Written { conn, frames } => self.engine.handle_written(now, conn, frames),
            Command::Disconnected { conn, reason } => {
                self.engine.disconnect(now, conn, reason);
                self.connections.remove(&conn);
            }
            Command::Metrics { reply } => {
                let feed = self.engine.feed().map(Feed::status);
                let node = match &self.engine {
                    Engine::Cluster(cluster) => Some((&cluster.node, cluster.link_counters())),
                    Engine::Single { .. } | Engine::Query(_) => None,
                };
                let mut text = metrics::render(
                    self.engine.fanout(),
                    &self.latency,
                    &self.http,
                    feed.as_ref(),
                    node,
                );
                if let Engine::Query(query) = &self.engine {
                    query::metrics(&mut text, query.relay.source());
                }
                let _ = reply.send(text);
            }
            Command::Health { reply } => {
                let _ = reply.send(self.health());
            }
            Command::Shutdown { reply } => {
                tracing::info!(
                    clients = self.engine.fanout().hub().connection_count(),
                    "shutting down: closing every client"
                );
                self.engine.shutdown(now);
                self.flush();
                let tasks: Vec<AbortHandle> = self
                    .connections
                    .drain()
                    .map(|(_, handle)| handle.task)
                    .collect();
                let close_timeout = self.close_timeout;
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + close_timeout;
                    while tasks.iter().any(|task| !task.is_finished())
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    for task in &tasks {
                        task.abort();
                    }
                    let _ = reply.send(());
                });
                return true;
            }
        }
        false
    }

    /// `/healthz`: 200 while the data flows (the upstream is live and, in a cluster, Redis is
    /// reachable), 503 otherwise, with what a probe or an operator wants to see.
    fn health(&self) -> (bool, String) {
        let hub = self.engine.fanout().hub();
        let degraded = hub.is_degraded();
        let state = hub.upstream_state();
        let live = state == tickwire_driver::State::Live && !degraded;
        let mut body = serde_json::json!({
            "status": if live { "ok" } else { "degraded" },
            "upstream": if degraded { "degraded" } else { state.as_str() },
            "connections": self.open.load(Ordering::Relaxed),
        });
        if let Some(status) = self.engine.feed().map(Feed::status) {
            body["mode"] = format!("{:?}", status.client.mode).to_lowercase().into();
            body["consecutive_failures"] = status.client.consecutive_failures.into();
            body["last_failure"] = serde_json::json!(status.client.last_failure);
            // Real-time or delayed, from the quotes' update_mode (anonymous access is delayed
            // on many exchanges).
            body["data"] = status.client.data.summary().into();
            body["realtime_symbols"] = status.client.data.realtime.into();
            body["delayed_symbols"] = status.client.data.delayed.into();
            body["poll_failures"] = status.client.polling.failures.into();
            body["token_expires_in_s"] = serde_json::json!(
                status
                    .client
                    .auth
                    .expires_at
                    .map(|at| at.saturating_duration_since(Instant::now()).as_secs())
            );
        }
        if let Engine::Query(query) = &self.engine {
            body["query"] = query::health(query, Instant::now());
        }
        if let Engine::Cluster(cluster) = &self.engine {
            let node = &cluster.node;
            let role = match node.role() {
                tickwire_core::cluster::Role::Leader { .. } => "leader",
                tickwire_core::cluster::Role::Follower => "follower",
            };
            body["cluster"] = serde_json::json!({
                "name": cluster.keys.to_string(),
                "relay": node.lease().config().relay_id,
                "role": role,
                "epoch": node.epoch(),
                "redis": node.store_state().as_str(),
                "carries_upstream": node.carries_upstream(),
            });
        }
        (live, body.to_string())
    }

    fn handle_event(&mut self, event: Event) {
        if let Some(tap) = &self.tap {
            (tap.0)(&event);
        }
        let now = Instant::now();
        match &event {
            Event::QuoteError { symbol, reason } => {
                tracing::warn!(%symbol, %reason, "upstream rejected a symbol");
            }
            Event::SeriesError { symbol, reason, .. } => {
                tracing::warn!(%symbol, %reason, "upstream rejected a bar series");
            }
            Event::State(change) => {
                let retry_in = change.next_attempt.map_or_else(
                    || "-".to_owned(),
                    |at| format!("{}ms", at.saturating_duration_since(now).as_millis()),
                );
                tracing::info!(
                    state = %change.state.as_str(),
                    cause = %change.cause.map_or("-", |cause| cause.as_str()),
                    failures = change.consecutive_failures,
                    retry_in = %retry_in,
                    "upstream"
                );
            }
            _ => {}
        }
        self.engine.handle_feed_event(now, &event);
    }

    /// Carries out everything the hub (or the cluster node) decided; upstream changes go to
    /// the feed during the drain.
    fn flush(&mut self) {
        let now = Instant::now();
        let (upstream_before, series_before) = (
            self.engine.fanout().counters().quotes_subscribed,
            self.engine.fanout().counters().series_opened,
        );
        match &mut self.engine {
            Engine::Single { fanout, feed } => {
                let Some(feed) = feed.as_mut() else {
                    return;
                };
                while let Some(output) = fanout.poll_output(now, feed) {
                    downstream(&mut self.connections, self.close_timeout, output);
                }
            }
            Engine::Query(query) => {
                while let Some(output) = query.relay.poll_output(now) {
                    match output {
                        QueryOutput::Downstream(output) => {
                            downstream(&mut self.connections, self.close_timeout, output);
                        }
                        QueryOutput::Run { id } => query.start_run(id),
                    }
                }
            }
            Engine::Cluster(cluster) => loop {
                let upstream = cluster
                    .feed
                    .as_mut()
                    .map(|feed| feed as &mut dyn UpstreamFeed);
                let Some(output) = cluster.node.poll_output(now, upstream) else {
                    break;
                };
                match output {
                    NodeOutput::Downstream(output) => {
                        downstream(&mut self.connections, self.close_timeout, output);
                    }
                    NodeOutput::Store(request) => {
                        let sent = cluster
                            .link
                            .as_ref()
                            .is_some_and(|link| link.send(request).is_ok());
                        if !sent {
                            // The node backs off and reconnects; this link is done.
                            cluster.retire_link();
                            cluster
                                .node
                                .handle_store_failed(now, "the Redis link is gone or full");
                        }
                    }
                    NodeOutput::ConnectStore => {
                        let (sender, receiver) = mpsc::channel(LINK_EVENTS);
                        cluster.retire_link();
                        cluster.link = Some(cluster::link::connect(
                            &cluster.redis,
                            cluster.keys.clone(),
                            sender,
                            cluster.redis_timeout,
                        ));
                        self.new_link_events = Some(receiver);
                    }
                    NodeOutput::OpenUpstream => {
                        tracing::info!("leading the cluster: connecting upstream");
                        let feed = tickwire_tokio::connect_with(
                            cluster.upstream.clone(),
                            cluster.options.clone(),
                        );
                        self.feed_swap = Some(Some(feed.events()));
                        cluster.feed = Some(feed);
                    }
                    NodeOutput::CloseUpstream => {
                        tracing::info!("no longer leading the cluster: closing the upstream feed");
                        if let Some(feed) = cluster.feed.take() {
                            tokio::spawn(async move { feed.close().await });
                        }
                        self.feed_swap = Some(None);
                    }
                }
            },
        }
        let counters = self.engine.fanout().counters();
        if counters.quotes_subscribed != upstream_before || counters.series_opened != series_before
        {
            tracing::debug!(
                symbols = counters.quotes_subscribed.saturating_sub(upstream_before),
                series = counters.series_opened.saturating_sub(series_before),
                "subscribed upstream"
            );
        }
        self.open.store(
            self.engine.fanout().hub().connection_count(),
            Ordering::Relaxed,
        );
    }
}

/// Hands the fanout the stored states of `config.preload` (bars of the timeframe it carries).
fn preload(fanout: &mut Fanout, config: &RelayConfig) {
    let now = Instant::now();
    let timeframe = fanout.timeframe().map(str::to_owned);
    let mut kept = 0usize;
    for state in &config.preload {
        let bar = state
            .bar
            .clone()
            .filter(|(series, ..)| timeframe.as_deref() == Some(series.as_ref()));
        if fanout.preload(now, state.quote.clone(), bar) {
            kept = kept.saturating_add(1);
        }
    }
    if !config.preload.is_empty() {
        tracing::info!(
            symbols = kept,
            refused = config.preload.len().saturating_sub(kept),
            "stored states loaded: served marked stale until the upstream confirms them"
        );
    }
}

/// Carries out one downstream output.
fn downstream(
    connections: &mut HashMap<ConnId, ConnectionHandle>,
    close_timeout: Duration,
    output: FanoutOutput,
) {
    match output {
        FanoutOutput::Transmit { conn, frame } => {
            if let Some(handle) = connections.get(&conn) {
                handle.writer.transmit(conn, frame);
            }
        }
        FanoutOutput::Close { conn, reason } => {
            if reason != CloseReason::Shutdown {
                tracing::info!(%conn, reason = %reason.as_str(), "closing a client");
            }
            if let Some(handle) = connections.remove(&conn) {
                handle.writer.close(conn, reason);
                // A client that cannot take the close frame in time is dropped.
                let task = handle.task;
                tokio::spawn(async move {
                    tokio::time::sleep(close_timeout).await;
                    task.abort();
                });
            }
        }
    }
}

/// The README's Rust examples, compiled (and run, unless marked `no_run`) as doctests here,
/// where every crate they use is a dependency, so they cannot drift.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

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

#[expect(
    dead_code,
    reason = "the relay's cluster mode uses the link in the next step of issue 14"
)]
mod cluster;
mod connection;
mod http;
mod metrics;
mod process;

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
use futures::{FutureExt, StreamExt};
use tickwire_core::hub::{
    CloseReason, ConnId, Fanout, FanoutOutput, HubConfig, Refused, UpstreamPlan,
};
use tickwire_driver::{Config, Event, Feed, Options};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use metrics::LatencyHistogram;

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
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// State shared by the HTTP handlers.
struct AppState {
    commands: mpsc::Sender<Command>,
    feed: Feed,
    symbols_json: String,
    connections: Arc<AtomicUsize>,
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
    feed: Feed,
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
        let fanout = Fanout::new(
            config.hub.clone(),
            config.upstream_plan.clone(),
            &config.upstream,
        )
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
        let listener = listener(&config)?;
        let addr = listener.local_addr()?;
        let feed =
            tickwire_tokio::connect_with(config.upstream.clone(), config.upstream_options.clone());
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
            feed: feed.clone(),
            symbols_json: serde_json::to_string(&page_symbols).unwrap_or_else(|_| "[]".into()),
            connections: connections.clone(),
            latency: latency.clone(),
            max_websocket_message_bytes: config.max_websocket_message_bytes,
            report_every: config.hub.written_report_every(),
            write_pool: connection::WritePool::start(commands.clone()),
        });
        let hub_task = tokio::spawn(
            HubTask {
                fanout,
                feed: feed.clone(),
                connections: HashMap::new(),
                close_timeout: config.close_timeout,
                open: connections,
                latency,
                http: http_stats.clone(),
            }
            .run(command_rx),
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

    /// The upstream feed (for its status).
    pub fn feed(&self) -> &Feed {
        &self.feed
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
        self.hub_task.abort();
        self.feed.close().await;
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
    let status = state.feed.status();
    let upstream = status.client.state;
    let live = upstream == tickwire_driver::State::Live;
    let body = serde_json::json!({
        "status": if live { "ok" } else { "degraded" },
        "upstream": upstream.as_str(),
        "mode": format!("{:?}", status.client.mode).to_lowercase(),
        "consecutive_failures": status.client.consecutive_failures,
        "last_failure": status.client.last_failure,
        "connections": state.connections.load(Ordering::Relaxed),
        // Real-time or delayed, from the quotes' update_mode (anonymous access is delayed on
        // many exchanges).
        "data": status.client.data.summary(),
        "realtime_symbols": status.client.data.realtime,
        "delayed_symbols": status.client.data.delayed,
        "poll_failures": status.client.polling.failures,
        "token_expires_in_s": status
            .client
            .auth
            .expires_at
            .map(|at| at.saturating_duration_since(std::time::Instant::now()).as_secs()),
    });
    let code = if live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn websocket(State(state): State<Arc<AppState>>, request: Request) -> Response {
    connection::upgrade(request, state)
}

/// The one task that owns the hub and its upstream side: everything they decide is carried
/// out here.
struct HubTask {
    fanout: Fanout,
    feed: Feed,
    connections: HashMap<ConnId, ConnectionHandle>,
    close_timeout: Duration,
    open: Arc<AtomicUsize>,
    latency: Arc<LatencyHistogram>,
    http: Arc<http::HttpStats>,
}

struct ConnectionHandle {
    /// The hub task writes the connection's frames itself, through this.
    writer: Arc<connection::Writer>,
    task: AbortHandle,
}

/// Commands handled per wake-up before outputs are flushed, so one busy moment cannot starve
/// the timers and upstream events.
const COMMAND_BATCH: usize = 1024;

impl HubTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut events = self.feed.events();
        loop {
            let deadline = self.fanout.poll_timeout();
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
                    if self.handle(command) {
                        return;
                    }
                    for _ in 1..COMMAND_BATCH {
                        let Ok(command) = commands.try_recv() else { break };
                        if self.handle(command) {
                            return;
                        }
                    }
                }
                event = events.next() => {
                    let Some(event) = event else { break };
                    self.handle_event(event);
                    while let Some(Some(event)) = events.next().now_or_never() {
                        self.handle_event(event);
                    }
                }
                () = sleep => self.fanout.handle_timeout(Instant::now()),
            }
            self.flush();
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
                let result = self.fanout.connect(now);
                if result.is_err() {
                    tracing::debug!("refused a client at the connection limit");
                }
                if let Ok(conn) = result {
                    self.connections
                        .insert(conn, ConnectionHandle { writer, task });
                }
                let _ = reply.send(result);
            }
            Command::Text { conn, text } => self.fanout.handle_text(now, conn, text.as_str()),
            Command::Binary { conn, bytes } => self.fanout.handle_binary(now, conn, bytes),
            Command::Activity { conn } => self.fanout.handle_activity(now, conn),
            Command::Written { conn, frames } => self.fanout.handle_written(now, conn, frames),
            Command::Disconnected { conn, reason } => {
                self.fanout.disconnect(now, conn, reason);
                self.connections.remove(&conn);
            }
            Command::Metrics { reply } => {
                let _ = reply.send(metrics::render(
                    &self.fanout,
                    &self.latency,
                    &self.http,
                    &self.feed.status(),
                ));
            }
            Command::Shutdown { reply } => {
                tracing::info!(
                    clients = self.fanout.hub().connection_count(),
                    "shutting down: closing every client"
                );
                self.fanout.shutdown(now);
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

    fn handle_event(&mut self, event: Event) {
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
        self.fanout.handle_event(now, &event);
    }

    /// Carries out everything the hub decided; its upstream changes go to the feed during the
    /// drain.
    fn flush(&mut self) {
        let now = Instant::now();
        let (upstream_before, series_before) = (
            self.fanout.counters().quotes_subscribed,
            self.fanout.counters().series_opened,
        );
        while let Some(output) = self.fanout.poll_output(now, &mut self.feed) {
            match output {
                FanoutOutput::Transmit { conn, frame } => {
                    if let Some(handle) = self.connections.get(&conn) {
                        handle.writer.transmit(conn, frame);
                    }
                }
                FanoutOutput::Close { conn, reason } => {
                    if reason != CloseReason::Shutdown {
                        tracing::info!(%conn, reason = %reason.as_str(), "closing a client");
                    }
                    if let Some(handle) = self.connections.remove(&conn) {
                        handle.writer.close(conn, reason);
                        // A client that cannot take the close frame in time is dropped.
                        let task = handle.task;
                        let close_timeout = self.close_timeout;
                        tokio::spawn(async move {
                            tokio::time::sleep(close_timeout).await;
                            task.abort();
                        });
                    }
                }
            }
        }
        let counters = self.fanout.counters();
        if counters.quotes_subscribed != upstream_before || counters.series_opened != series_before
        {
            tracing::debug!(
                symbols = counters.quotes_subscribed.saturating_sub(upstream_before),
                series = counters.series_opened.saturating_sub(series_before),
                "subscribed upstream"
            );
        }
        self.open
            .store(self.fanout.hub().connection_count(), Ordering::Relaxed);
    }
}

/// The README's Rust examples, compiled (and run, unless marked `no_run`) as doctests here,
/// where every crate they use is a dependency, so they cannot drift.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

//! The emulator's tokio server: TCP accept, HTTP/1.1 on every connection (hyper), the
//! WebSocket upgrade handed to one task per WebSocket connection, every other request answered
//! by the HTTP endpoints ([`crate::web`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::auth::{Account, AuthStore, SigninMode};
use crate::fault::{Fault, FaultAction};
use crate::market::{EmulatorBar, Market, Tick, timeframe_seconds};
use crate::session::{self, RevokedTokens, Session};
use crate::web::{self, HttpFault, WebControls};
use tickwire_core::codec::{Decoder, Packet, encode_into};

/// The longest request head (request line and headers) read, in bytes.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a client may take to send a request head.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// The default [`EmulatorConfig::token_lifetime`]: 4 hours.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(4 * 3_600);

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// How many symbols the market has.
    pub symbols: usize,
    /// Market ticks per second, over all symbols.
    pub rate_hz: f64,
    /// Seed of the market.
    pub seed: u64,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Close a connection whose heartbeats went unanswered this many intervals in a row.
    pub missed_heartbeats_allowed: u32,
    /// Send every packet due at once in one WebSocket message (as the real server does), or one
    /// packet per message.
    pub batch: bool,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Add the send time to every quote delta as `emu_ns` (for latency benchmarks).
    pub stamp_quotes: bool,
    /// Market hours: open and closed in turn from the start (open first). `None`: always open.
    /// Crypto symbols trade around the clock whatever the hours.
    pub market_hours: Option<MarketHours>,
    /// Start with the market closed; it stays closed (the schedule is ignored) until
    /// [`Emulator::set_market_open`].
    pub start_closed: bool,
    /// Auth tokens refused from the start (as if expired).
    pub revoked_tokens: Vec<String>,
    /// The accounts the HTTP sign-in accepts ([`Account::defaults`]: `demo` and `demo2fa`).
    pub accounts: Vec<Account>,
    /// How long the JWTs the HTTP side issues live (their `exp` is this after issue); changed
    /// at run time with [`Emulator::set_token_lifetime`].
    pub token_lifetime: Duration,
    /// How fast the market's clock runs against real time: quote and bar times advance this
    /// many seconds per real second from the start (60: a 1-minute bar closes every real
    /// second), so a test sees bars close, and a reconnect's backfill fall short, without
    /// waiting minutes. Heartbeats, faults and token lifetimes keep real time. Default 1.
    pub market_speed: f64,
}

/// A market-hours cycle: open for `open`, then closed for `closed`, and again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketHours {
    /// How long the market stays open each cycle.
    pub open: Duration,
    /// How long it then stays closed.
    pub closed: Duration,
}

impl MarketHours {
    /// Whether the market is open `elapsed` after the start of the first cycle.
    pub fn is_open_at(&self, elapsed: Duration) -> bool {
        let cycle = self.open.saturating_add(self.closed).as_nanos();
        if cycle == 0 || self.closed.is_zero() {
            return true;
        }
        elapsed.as_nanos() % cycle < self.open.as_nanos()
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            symbols: 50,
            rate_hz: 50.0,
            seed: 1,
            heartbeat_interval: Duration::from_secs(10),
            missed_heartbeats_allowed: 6,
            batch: true,
            faults: Vec::new(),
            stamp_quotes: false,
            market_hours: None,
            start_closed: false,
            revoked_tokens: Vec::new(),
            accounts: Account::defaults(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            market_speed: 1.0,
        }
    }
}

/// How many quote session ids [`Stats::quote_sessions`] keeps.
pub const QUOTE_SESSIONS_KEPT: usize = 1_000;

/// Counters of what the emulator did.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections accepted (refused ones included).
    pub accepted: AtomicU64,
    /// WebSocket sessions established.
    pub sessions: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// The most WebSocket connections that were open at once, so a test can tell that a
    /// client (or a cluster of relays) never held two upstream connections at the same time.
    pub peak_open: AtomicU64,
    /// `qsd` packets handed to the socket (snapshots, deltas and errors).
    pub quotes_sent: AtomicU64,
    /// WebSocket messages sent.
    pub messages_sent: AtomicU64,
    /// Faults carried out.
    pub faults: AtomicU64,
    /// Auth tokens refused at `set_auth_token` or expired on a live connection (each one a
    /// `protocol_error` "bad auth token" and a close).
    pub token_rejections: AtomicU64,
    /// JWTs the HTTP side issued (sign-ins and home pages).
    pub tokens_issued: AtomicU64,
    /// Successful sign-ins (password, or password then second factor).
    pub sign_ins: AtomicU64,
    /// WebSocket upgrades answered with an HTTP error instead ([`Emulator::refuse_upgrades`]
    /// and the `http-429` fault).
    pub upgrades_refused: AtomicU64,
    quote_session_ids: Mutex<VecDeque<String>>,
}

impl Stats {
    /// Every `quote_create_session` id seen, oldest first (the last [`QUOTE_SESSIONS_KEPT`]).
    pub fn quote_sessions(&self) -> Vec<String> {
        self.quote_session_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    fn record_quote_session(&self, id: &str) {
        let mut ids = self
            .quote_session_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ids.len() >= QUOTE_SESSIONS_KEPT {
            ids.pop_front();
        }
        ids.push_back(id.to_owned());
    }
}

/// Something that happened to a connection, for logs (`tickwire emulate --verbose`). Token
/// values are never part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The WebSocket upgrade succeeded.
    Open {
        /// Connection number (1-based accept order).
        connection: u64,
    },
    /// The client created a quote session.
    QuoteSession {
        /// Connection number.
        connection: u64,
        /// The client-chosen session id.
        id: String,
    },
    /// The connection's auth token was refused or expired.
    TokenRejected {
        /// Connection number.
        connection: u64,
    },
    /// The connection ended.
    Closed {
        /// Connection number.
        connection: u64,
    },
}

impl fmt::Display for ConnectionEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionEvent::Open { connection } => write!(formatter, "conn #{connection} open"),
            ConnectionEvent::QuoteSession { connection, id } => write!(
                formatter,
                "conn #{connection} quote session {}",
                id.escape_debug()
            ),
            ConnectionEvent::TokenRejected { connection } => {
                write!(formatter, "conn #{connection} token rejected")
            }
            ConnectionEvent::Closed { connection } => {
                write!(formatter, "conn #{connection} closed")
            }
        }
    }
}

/// Whether the market is open: the schedule, unless a start-closed config or
/// [`Emulator::set_market_open`] forced it.
#[derive(Debug)]
struct MarketClock {
    hours: Option<MarketHours>,
    start: Instant,
    forced: Option<bool>,
}

impl MarketClock {
    fn open_now(&self) -> bool {
        self.forced.unwrap_or_else(|| {
            self.hours
                .is_none_or(|hours| hours.is_open_at(self.start.elapsed()))
        })
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) market: Mutex<Market>,
    config: EmulatorConfig,
    faults: Mutex<Vec<Fault>>,
    pub(crate) stats: Arc<Stats>,
    ticks: broadcast::Sender<Arc<Vec<Tick>>>,
    control: broadcast::Sender<FaultAction>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Accounts, sessions and issued tokens.
    pub(crate) auth: Arc<AuthStore>,
    /// The HTTP side's run-time controls and counters.
    pub(crate) web: WebControls,
    paused: Arc<AtomicBool>,
    clock: Mutex<MarketClock>,
    /// Bumped when the market opens or closes; connections then tell their quote sessions.
    market_changes: watch::Sender<u64>,
    revoked: Arc<RevokedTokens>,
    events: broadcast::Sender<ConnectionEvent>,
}

impl Shared {
    /// Brings the market's open state in line with the clock (both locked, so a forced state
    /// and the schedule cannot race).
    fn update_market_session(&self, force: Option<bool>) {
        let mut clock = self.clock.lock().unwrap_or_else(PoisonError::into_inner);
        if force.is_some() {
            clock.forced = force;
        }
        let open = clock.open_now();
        let changed = self
            .market
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_open(open);
        drop(clock);
        if changed {
            self.market_changes.send_modify(|changes| *changes += 1);
        }
    }

    fn event(&self, event: ConnectionEvent) {
        let _ = self.events.send(event);
    }
}

/// A running emulator. Dropping it stops accepting; [`Emulator::shutdown`] also closes every
/// connection with a close frame and waits for the tasks.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    control: broadcast::Sender<FaultAction>,
    faults: Arc<Mutex<Vec<Fault>>>,
    paused: Arc<AtomicBool>,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
    market_task: JoinHandle<()>,
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

impl Emulator {
    /// Binds and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// When the listen address cannot be bound.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let (ticks, _) = broadcast::channel(1_024);
        let (control, _) = broadcast::channel(64);
        let faults = Arc::new(Mutex::new(Vec::new()));
        let paused = Arc::new(AtomicBool::new(false));
        let mut market = Market::new(config.symbols, config.seed);
        market.set_open(!config.start_closed);
        market.set_speed(unix_now(), config.market_speed);
        let (market_changes, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1_024);
        let shared = Arc::new(Shared {
            market: Mutex::new(market),
            clock: Mutex::new(MarketClock {
                hours: config.market_hours,
                start: Instant::now(),
                forced: config.start_closed.then_some(false),
            }),
            market_changes,
            revoked: Arc::new(RevokedTokens::new(config.revoked_tokens.iter().cloned())),
            auth: Arc::new(AuthStore::new(
                config.accounts.clone(),
                config.token_lifetime,
            )),
            web: WebControls::default(),
            events,
            config: config.clone(),
            faults: Mutex::new(config.faults.clone()),
            stats: Arc::clone(&stats),
            ticks: ticks.clone(),
            control: control.clone(),
            shutdown: shutdown_receiver,
            paused: Arc::clone(&paused),
        });
        let market_task = tokio::spawn(run_market(Arc::clone(&shared)));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            Arc::clone(&faults),
        ));
        Ok(Emulator {
            addr,
            stats,
            shutdown,
            control,
            faults,
            paused,
            shared,
            accept_task,
            market_task,
        })
    }

    /// Opens or closes the market now; the schedule ([`EmulatorConfig::market_hours`]) is
    /// ignored from then on. Quote sessions get a `current_session` delta for every symbol
    /// that changed; closed symbols stop ticking (crypto never closes).
    pub fn set_market_open(&self, open: bool) {
        self.shared.update_market_session(Some(open));
    }

    /// Whether the market is open now.
    pub fn is_market_open(&self) -> bool {
        self.shared
            .market
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_open()
    }

    /// From now on, every connection presenting `token` at `set_auth_token` is refused
    /// (`protocol_error` "bad auth token", then a close). Connections already using it go on.
    pub fn revoke_token(&self, token: &str) {
        self.shared.revoked.revoke(token);
    }

    /// Connection events from now on (open, quote session, token rejected, closed).
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.shared.events.subscribe()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A WebSocket URL for clients (any path and query are accepted).
    pub fn url(&self) -> String {
        format!("ws://{}/socket.io/websocket?type=chart", self.addr)
    }

    /// The base of the HTTP endpoints, on the WebSocket's port: `http://ADDR` (sign-in at
    /// `/accounts/signin/`, the second factor at `/accounts/two-factor/signin/totp/`, the home
    /// page at `/`, symbol search at `/symbol_search/v3/`, the scanner at `/{market}/scan`).
    pub fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How `POST /accounts/signin/` answers from now on ([`SigninMode::Normal`] checks the
    /// credentials; the others answer the same whatever they are).
    pub fn set_signin_mode(&self, mode: SigninMode) {
        self.shared.web.set_signin_mode(mode);
    }

    /// From now on, HTTP requests whose path starts with `path_prefix` get `fault` instead of
    /// their answer (WebSocket upgrades excepted: see [`Emulator::refuse_upgrades`]). The
    /// longest matching prefix wins; `"/"` covers every path. Setting a prefix again replaces
    /// its fault.
    pub fn set_http_fault(&self, path_prefix: &str, fault: HttpFault) {
        self.shared.web.set_fault(path_prefix, fault);
    }

    /// Removes every [`HttpFault`].
    pub fn clear_http_faults(&self) {
        self.shared.web.clear_faults();
    }

    /// While `Some(code)`, WebSocket upgrade requests are answered with that HTTP status (e.g.
    /// 503; a 1xx or invalid code means 503) and no WebSocket; `None` accepts them again. Open connections go on; HTTP requests
    /// are served either way.
    pub fn refuse_upgrades(&self, code: Option<u16>) {
        self.shared.web.refuse_upgrades(code);
    }

    /// HTTP requests so far (upgrade requests included) whose path starts with `path_prefix`,
    /// e.g. `http_requests("/accounts/signin/")`.
    pub fn http_requests(&self, path_prefix: &str) -> u64 {
        self.shared.web.requests(path_prefix)
    }

    /// Signs every HTTP session out: their cookies no longer yield a token (the home page turns
    /// anonymous, the scanner delayed), pending second factors are forgotten, and the JWTs
    /// they were issued are refused at `set_auth_token` from now on. Open WebSocket
    /// connections go on until their token's `exp`.
    pub fn expire_sessions(&self) {
        self.shared.auth.expire_sessions();
    }

    /// JWTs issued from now on live `lifetime` (tokens already issued keep their `exp`).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.auth.set_lifetime(lifetime);
    }

    /// The market's bars of `symbol` at `timeframe` (as the protocol spells it: `1`, `5`,
    /// `60`, `1D`, `W`, ...), oldest first, the last one still forming: every bar a chart
    /// session was streamed or served for that series, whichever connection it was. The book
    /// holds a series from the first time a session asks for it, up to the newest
    /// [`crate::session::MAX_BARS`] bars; the result is empty for a series never asked for, an
    /// unknown symbol or a timeframe the protocol does not know.
    ///
    /// A test checks what a client recorded against it:
    ///
    /// ```no_run
    /// # async fn example() -> std::io::Result<()> {
    /// use tickwire_emulator::{Emulator, EmulatorConfig};
    ///
    /// let emulator = Emulator::start(EmulatorConfig::default()).await?;
    /// // ... a client streams BINANCE:BTCUSDT 1-minute bars from emulator.url() ...
    /// let bars = emulator.bar_history("BINANCE:BTCUSDT", "1");
    /// if let [.., closed, _forming] = bars.as_slice() {
    ///     println!("{} closed at {}", closed.time, closed.close);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn bar_history(&self, symbol: &str, timeframe: &str) -> Vec<EmulatorBar> {
        let Some(timeframe_secs) = timeframe_seconds(timeframe) else {
            return Vec::new();
        };
        let market = self
            .shared
            .market
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        market
            .lookup(symbol)
            .and_then(|index| market.bars(index, timeframe_secs))
            .map(|bars| bars.iter().map(EmulatorBar::from_row).collect())
            .unwrap_or_default()
    }

    /// Live counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Schedules one more fault for connections accepted from now on.
    pub fn add_fault(&self, fault: Fault) {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    /// Stops (or restarts) market ticks; heartbeats and replies go on.
    pub fn pause_market(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Carries out `action` on every open connection right now.
    pub fn inject(&self, action: FaultAction) {
        let _ = self.control.send(action);
    }

    /// Closes every connection with a close frame and stops.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_task.await;
        self.market_task.abort();
        let _ = self.market_task.await;
        // Connection tasks see the shutdown flag and close; give them a moment to flush.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.stats.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn run_market(shared: Arc<Shared>) {
    // Short enough that batching adds little latency, long enough to batch at high rates.
    let period = Duration::from_millis(1);
    let mut ticker = interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut owed = 0.0f64;
    let mut last = Instant::now();
    let scheduled = shared.config.market_hours.is_some();
    loop {
        ticker.tick().await;
        if scheduled {
            shared.update_market_session(None);
        }
        // Ticks owed for the time that really passed, so a late timer does not lower the rate.
        let now = Instant::now();
        owed += shared.config.rate_hz * now.duration_since(last).as_secs_f64();
        last = now;
        // A stalled market does not burst its whole backlog at once.
        owed = owed.min(shared.config.rate_hz.max(1.0));
        let due = owed.floor();
        owed -= due;
        // The market moves whether or not a socket listens: the scanner reads it too.
        if due < 1.0 || shared.paused.load(Ordering::Relaxed) {
            continue;
        }
        let batch: Vec<Tick> = {
            let mut market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
            let now = market.time_at(unix_now());
            (0..due as usize).filter_map(|_| market.tick(now)).collect()
        };
        let _ = shared.ticks.send(Arc::new(batch));
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    runtime_faults: Arc<Mutex<Vec<Fault>>>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let number = shared.stats.accepted.fetch_add(1, Ordering::Relaxed) + 1;
                let faults: Vec<Fault> = runtime_faults
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .chain(shared.faults.lock().unwrap_or_else(PoisonError::into_inner).iter())
                    .filter(|fault| fault.applies_to(number))
                    .copied()
                    .collect();
                tokio::spawn(serve(tcp, number, faults, Arc::clone(&shared)));
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Resets the TCP connection instead of closing it.
fn reset(tcp: &TcpStream) {
    #[allow(deprecated)] // SO_LINGER 0 is exactly the reset we want
    let _ = tcp.set_linger(Some(Duration::ZERO));
}

/// One accepted TCP connection, as its requests see it.
struct Accepted {
    number: u64,
    faults: Vec<Fault>,
    /// The `http-429` fault: upgrades get 429.
    reject_upgrade: bool,
    shared: Arc<Shared>,
}

/// `code` as a final (non-1xx) status, else `fallback`.
pub(crate) fn final_status(code: u16, fallback: StatusCode) -> StatusCode {
    StatusCode::from_u16(code)
        .ok()
        .filter(|status| !status.is_informational())
        .unwrap_or(fallback)
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
fn wants_websocket(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| {
            value
                .split(',')
                .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"))
        })
}

impl Accepted {
    async fn answer(self: Arc<Self>, request: Request<Incoming>) -> Response<web::Body> {
        if wants_websocket(&request) {
            self.upgrade(request)
        } else {
            web::respond(&self.shared, request).await
        }
    }

    /// The WebSocket handshake (or its refusal); the connection itself runs in its own task
    /// once hyper hands the socket over.
    fn upgrade(&self, mut request: Request<Incoming>) -> Response<web::Body> {
        let shared = &self.shared;
        shared.web.count(request.uri().path());
        let refusal = if self.reject_upgrade {
            Some(StatusCode::TOO_MANY_REQUESTS)
        } else {
            shared
                .web
                .refused_upgrades()
                .map(|code| final_status(code, StatusCode::SERVICE_UNAVAILABLE))
        };
        if let Some(status) = refusal {
            shared
                .stats
                .upgrades_refused
                .fetch_add(1, Ordering::Relaxed);
            return web::plain(status);
        }
        let headers = request.headers();
        let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        let version_13 = headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|version| version.as_bytes() == b"13");
        let (Some(key), true, true) = (key, version_13, request.method() == Method::GET) else {
            return web::plain(StatusCode::BAD_REQUEST);
        };
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(run_websocket(
            on_upgrade,
            self.number,
            self.faults.clone(),
            Arc::clone(shared),
        ));
        let mut response = Response::new(web::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

async fn serve(tcp: TcpStream, number: u64, faults: Vec<Fault>, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let mut reject_upgrade = false;
    for fault in faults.iter().filter(|fault| fault.action.at_accept()) {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        match fault.action {
            FaultAction::Refuse => {
                reset(&tcp);
                return;
            }
            FaultAction::Delay(pause) => sleep(pause).await,
            FaultAction::Http429 => reject_upgrade = true,
            _ => {}
        }
    }
    let mut shutdown = shared.shutdown.clone();
    let accepted = Arc::new(Accepted {
        number,
        faults,
        reject_upgrade,
        shared,
    });
    let service = service_fn(move |request| {
        let accepted = Arc::clone(&accepted);
        async move { Ok::<_, Infallible>(accepted.answer(request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .max_header_size(MAX_REQUEST_HEAD);
    let connection = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::select! {
        _ = connection => {}
        _ = shutdown.wait_for(|&stopping| stopping) => {}
    }
}

/// The WebSocket connection, once hyper has sent the 101 and handed the socket over.
async fn run_websocket(
    on_upgrade: OnUpgrade,
    number: u64,
    faults: Vec<Fault>,
    shared: Arc<Shared>,
) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    // The plain TCP stream back, so faults can still reset it and write half frames.
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        return;
    };
    let ws = WebSocketStream::from_partially_read(
        parts.io.into_inner(),
        parts.read_buf.to_vec(),
        Role::Server,
        None,
    )
    .await;
    shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
    let open = shared
        .stats
        .open
        .fetch_add(1, Ordering::Relaxed)
        .saturating_add(1);
    shared.stats.peak_open.fetch_max(open, Ordering::Relaxed);
    shared.event(ConnectionEvent::Open { connection: number });
    let mut connection = Connection::new(ws, number, faults, &shared);
    connection.run(&shared).await;
    shared.stats.open.fetch_sub(1, Ordering::Relaxed);
    shared.event(ConnectionEvent::Closed { connection: number });
}

/// How long a heartbeat that falls due while data flows may wait to share a message with it.
const HEARTBEAT_HOLD: Duration = Duration::from_millis(50);

/// Data sent this recently counts as flowing, for [`HEARTBEAT_HOLD`].
const DATA_FLOWING: Duration = Duration::from_secs(1);

/// How a connection ends.
enum Ending {
    /// Send what is queued, then a close frame.
    CloseFrame,
    /// The client sent a close frame: answer it.
    PeerClosed,
    Reset,
    ResetMidMessage,
    Gone,
}

struct Connection {
    ws: WebSocketStream<TcpStream>,
    number: u64,
    session: Session,
    decoder: Decoder,
    opened: Instant,
    pending_faults: Vec<Fault>,
    slow: Option<Duration>,
    stalled_until: Option<Instant>,
    heartbeats_only_until: Option<Instant>,
    heartbeat_counter: u64,
    unanswered_heartbeats: u32,
    outbox: Vec<String>,
    /// A heartbeat waiting (until the instant) to go out with the next data.
    held_heartbeat: Option<(String, Instant)>,
    /// When market data last went into the outbox.
    last_data: Option<Instant>,
}

impl Connection {
    fn new(
        ws: WebSocketStream<TcpStream>,
        number: u64,
        faults: Vec<Fault>,
        shared: &Shared,
    ) -> Connection {
        let mut pending_faults: Vec<Fault> = faults
            .into_iter()
            .filter(|fault| !fault.action.at_accept())
            .collect();
        let mut session = Session::with_auth(Arc::clone(&shared.revoked), Arc::clone(&shared.auth));
        // A token refusal from the start must be in place before the first client packet.
        pending_faults.retain(|fault| {
            let at_once = fault.action == FaultAction::BadToken && fault.at.is_zero();
            if at_once {
                shared.stats.faults.fetch_add(1, Ordering::Relaxed);
                session.reject_every_token();
            }
            !at_once
        });
        pending_faults.sort_by_key(|fault| std::cmp::Reverse(fault.at));
        Connection {
            ws,
            number,
            session,
            decoder: Decoder::new(),
            opened: Instant::now(),
            pending_faults,
            slow: None,
            stalled_until: None,
            heartbeats_only_until: None,
            heartbeat_counter: 0,
            unanswered_heartbeats: 0,
            outbox: Vec::new(),
            held_heartbeat: None,
            last_data: None,
        }
    }

    async fn run(&mut self, shared: &Shared) {
        let mut ticks = shared.ticks.subscribe();
        let mut control = shared.control.subscribe();
        let mut shutdown = shared.shutdown.clone();
        let mut market_changes = shared.market_changes.subscribe();
        let mut heartbeat = interval(shared.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await;
        self.outbox.push(session::hello(unix_now(), self.number));
        let ending = loop {
            if let Some(ending) = self.flush(shared).await {
                break ending;
            }
            let next_fault = self
                .pending_faults
                .last()
                .map(|fault| self.opened + fault.at);
            let fault_timer = async {
                match next_fault {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // The connection's JWT runs out at its exp, unless a newer one replaced it.
            let token_expires = self.session.token_expires_at();
            let token_timer = async {
                match token_expires {
                    Some(exp) => {
                        let left = (exp as f64 - unix_now()).max(0.0);
                        sleep(Duration::from_secs_f64(left)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let held_until = self.held_heartbeat.as_ref().map(|(_, until)| *until);
            let hold_timer = async {
                match held_until {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                incoming = self.ws.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(ending) = self.on_client_text(Bytes::from(text), shared) {
                            let _ = self.flush(shared).await;
                            break ending;
                        }
                    }
                    Some(Ok(Message::Close(_))) => break Ending::PeerClosed,
                    None | Some(Err(_)) => break Ending::Gone,
                    Some(Ok(_)) => {}
                },
                batch = ticks.recv() => match batch {
                    Ok(batch) => self.on_ticks(&batch, shared),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break Ending::CloseFrame,
                },
                _ = heartbeat.tick() => {
                    if self.unanswered_heartbeats >= shared.config.missed_heartbeats_allowed {
                        break Ending::CloseFrame;
                    }
                    self.heartbeat_counter += 1;
                    self.unanswered_heartbeats += 1;
                    self.on_heartbeat_due(shared);
                }
                () = token_timer => {
                    let lapsed = token_expires.is_some_and(|exp| exp as f64 <= unix_now());
                    if lapsed && self.session.expire_token(&mut self.outbox).is_err() {
                        self.token_rejected(shared);
                        break Ending::CloseFrame;
                    }
                }
                () = hold_timer => {
                    if let Some((beat, _)) = self.held_heartbeat.take() {
                        self.outbox.push(beat);
                    }
                }
                Ok(()) = market_changes.changed() => {
                    let market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
                    self.session.on_market_session(&market, &mut self.outbox);
                }
                () = fault_timer => {
                    if let Some(fault) = self.pending_faults.pop() {
                        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
                        if let Some(ending) = self.apply(fault.action, shared) {
                            break ending;
                        }
                    }
                }
                action = control.recv() => {
                    if let Ok(action) = action {
                        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
                        if let Some(ending) = self.apply(action, shared) {
                            break ending;
                        }
                    }
                }
                _ = shutdown.changed() => break Ending::CloseFrame,
            }
        };
        self.end(ending, shared).await;
    }

    /// A heartbeat falls due: in batch mode, while data flows, it waits up to
    /// [`HEARTBEAT_HOLD`] to share a message with the next data (as the real server's
    /// batching does); otherwise it goes out at once.
    fn on_heartbeat_due(&mut self, shared: &Shared) {
        let beat = format!("~h~{}", self.heartbeat_counter);
        let now = Instant::now();
        let flowing = self
            .last_data
            .is_some_and(|at| now.duration_since(at) < DATA_FLOWING);
        if let Some((earlier, _)) = self.held_heartbeat.take() {
            self.outbox.push(earlier);
        }
        if shared.config.batch && flowing {
            self.held_heartbeat = Some((beat, now + HEARTBEAT_HOLD));
        } else {
            self.outbox.push(beat);
        }
    }

    /// Counts and reports a refused or expired token.
    fn token_rejected(&self, shared: &Shared) {
        shared
            .stats
            .token_rejections
            .fetch_add(1, Ordering::Relaxed);
        shared.event(ConnectionEvent::TokenRejected {
            connection: self.number,
        });
    }

    fn on_client_text(&mut self, text: Bytes, shared: &Shared) -> Option<Ending> {
        let now = unix_now();
        let mut market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
        for packet in self.decoder.decode(&text) {
            match packet {
                Ok(Packet::Heartbeat(_)) => self.unanswered_heartbeats = 0,
                Ok(Packet::Json(payload) | Packet::LegacyJson(payload)) => {
                    let payload = String::from_utf8_lossy(&payload);
                    let result = self
                        .session
                        .handle(&payload, &mut market, now, &mut self.outbox);
                    for id in self.session.take_created_quote_sessions() {
                        shared.stats.record_quote_session(&id);
                        shared.event(ConnectionEvent::QuoteSession {
                            connection: self.number,
                            id,
                        });
                    }
                    if let Err(fatal) = result {
                        if fatal.is_bad_token() {
                            self.token_rejected(shared);
                        }
                        return Some(Ending::CloseFrame);
                    }
                }
                Err(_) => self
                    .outbox
                    .push(r#"{"m":"protocol_error","p":["wrong data"]}"#.to_owned()),
            }
        }
        None
    }

    fn on_ticks(&mut self, batch: &[Tick], shared: &Shared) {
        if !self.session.has_sessions() {
            return;
        }
        let market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.outbox.len();
        for tick in batch {
            self.session
                .on_tick(tick, &market, shared.config.stamp_quotes, &mut self.outbox);
        }
        if self.outbox.len() > before {
            self.last_data = Some(Instant::now());
        }
    }

    /// Carries out a fault; `Some` when it ends the connection.
    fn apply(&mut self, action: FaultAction, shared: &Shared) -> Option<Ending> {
        let now = Instant::now();
        match action {
            FaultAction::Drop | FaultAction::Refuse => return Some(Ending::Reset),
            FaultAction::Close => return Some(Ending::CloseFrame),
            FaultAction::DropMidMessage => return Some(Ending::ResetMidMessage),
            FaultAction::Stall(length) => self.stalled_until = Some(now + length),
            FaultAction::HeartbeatsOnly(length) => self.heartbeats_only_until = Some(now + length),
            FaultAction::Garbage => self.outbox.push("\u{0}garbage~m~~m~".to_owned()),
            FaultAction::BadLength => self.outbox.push(String::new()),
            FaultAction::ProtocolError => {
                self.outbox
                    .push(r#"{"m":"protocol_error","p":["wrong data"]}"#.to_owned());
                return Some(Ending::CloseFrame);
            }
            FaultAction::BadToken => self.session.reject_every_token(),
            FaultAction::ExpireToken => {
                if self.session.expire_token(&mut self.outbox).is_err() {
                    self.token_rejected(shared);
                    return Some(Ending::CloseFrame);
                }
            }
            FaultAction::Slow(pause) => self.slow = Some(pause),
            FaultAction::Delay(_) | FaultAction::Http429 => {}
        }
        None
    }

    /// Sends what is due, honouring stalls, heartbeat-only stretches and slow writes.
    async fn flush(&mut self, shared: &Shared) -> Option<Ending> {
        if self.outbox.is_empty() {
            return None;
        }
        // A held heartbeat rides along with whatever goes out first.
        if let Some((beat, _)) = self.held_heartbeat.take() {
            self.outbox.insert(0, beat);
        }
        let now = Instant::now();
        if self.stalled_until.is_some_and(|until| now < until) {
            self.outbox.clear();
            self.session.bars_discarded();
            return None;
        }
        if self.heartbeats_only_until.is_some_and(|until| now < until) {
            self.outbox.retain(|payload| payload.starts_with("~h~"));
            self.session.bars_discarded();
        }
        let quotes = self
            .outbox
            .iter()
            .filter(|payload| payload.starts_with(r#"{"m":"qsd""#))
            .count();
        shared
            .stats
            .quotes_sent
            .fetch_add(quotes as u64, Ordering::Relaxed);
        let mut messages = Vec::new();
        let mut current = String::new();
        let stamp = shared.config.stamp_quotes.then(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            format!("{nanos:019}")
        });
        for mut payload in self.outbox.drain(..) {
            if let Some(stamp) = &stamp {
                payload = payload.replacen(session::STAMP_PLACEHOLDER, stamp, 1);
            }
            if payload.starts_with('\u{0}') {
                // Garbage goes out as its own message, unframed.
                messages.push(payload);
                continue;
            }
            if payload.is_empty() {
                // A packet whose prefix claims more than it holds.
                messages.push(r#"~m~999~m~{"m":"qsd"}"#.to_owned());
                continue;
            }
            encode_into(&payload, &mut current);
            if !shared.config.batch {
                messages.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            messages.push(current);
        }
        for text in messages {
            if let Some(pause) = self.slow {
                sleep(pause).await;
            }
            if self
                .ws
                .feed(Message::Text(Utf8Bytes::from(text)))
                .await
                .is_err()
            {
                return Some(Ending::Gone);
            }
            shared.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        }
        if self.ws.flush().await.is_err() {
            return Some(Ending::Gone);
        }
        self.session.bars_delivered();
        None
    }

    async fn end(&mut self, ending: Ending, shared: &Shared) {
        match ending {
            Ending::CloseFrame => {
                // What the ending itself queued (protocol_error) goes out before the close.
                if self.flush(shared).await.is_some() {
                    return;
                }
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: Utf8Bytes::from_static("bye"),
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
            }
            Ending::PeerClosed => {
                // tungstenite queued the reply to the client's close frame; the sink's close
                // (not the stream's inherent `close`, which would send a second frame and fail)
                // writes it out.
                let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::close(&mut self.ws))
                    .await;
            }
            Ending::Reset => reset(self.ws.get_ref()),
            Ending::ResetMidMessage => {
                // A text frame header announcing 100 bytes, then only 10 of them.
                let mut partial = vec![0x81, 100];
                partial.extend_from_slice(b"~m~95~m~{\"");
                let _ = self.ws.get_mut().write_all(&partial).await;
                let _ = self.ws.get_mut().flush().await;
                reset(self.ws.get_ref());
            }
            Ending::Gone => {}
        }
    }
}

//! The vocabulary of the client: what goes in, what comes out, and what status reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::liveness::MarketStatus;
use super::quote::{Quote, QuoteFields};
use super::transport::TransportError;
use crate::message::Bar;

/// Identifies one physical connection. Every input names the connection it is about, so events
/// from a connection the client has already given up on are ignored instead of misapplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Identifies a bar subscription made with [`super::Client::subscribe_bars`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u64);

/// Identifies a history request made with [`super::Client::request_history`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistoryId(pub u64);

/// What the driver reports to the client.
#[derive(Clone, PartialEq)]
pub enum Input {
    /// The WebSocket of connection `id` is open.
    Connected(ConnectionId),
    /// Connection `id` could not be opened (refused, DNS, TLS, HTTP 429 on upgrade…).
    ConnectFailed {
        /// The attempt.
        id: ConnectionId,
        /// What went wrong: a kind the policy acts on, and the transport's words.
        error: TransportError,
    },
    /// One WebSocket text message arrived on connection `id`.
    Message {
        /// The connection.
        id: ConnectionId,
        /// The message text, as received.
        text: Bytes,
    },
    /// Connection `id` closed or failed (close frame, reset, send timeout…).
    Disconnected {
        /// The connection.
        id: ConnectionId,
        /// What happened: a kind the policy acts on, and the transport's words.
        error: TransportError,
    },
    /// The answer to the poll request numbered `round`: one quote per symbol the poller could
    /// fetch (symbols left out are reported once with [`Event::PollMissing`]), or why the poll
    /// failed (the next one then waits for the backoff).
    PollResult {
        /// [`PollRequest::round`] of the request answered.
        round: u64,
        /// The quotes, or the failure.
        result: Result<Vec<PolledQuote>, PollError>,
    },
    /// The application's answer to [`Output::RequestAuthToken`]: a fresh token (with how long
    /// it stays valid, when known), or `None` when it has none (the current one is kept).
    AuthToken(Option<AuthToken>),
}

/// A fresh auth token and how long it stays valid from the moment it is handed to the client.
///
/// With a lifetime the client asks for the next token ([`Output::RequestAuthToken`]) before
/// this one expires and hands it to the open connection, so the stream never sees a rejection.
/// The token is a secret: `Debug` shows its length only.
///
/// ```
/// use std::time::Duration;
/// use tickwire_core::client::AuthToken;
///
/// let token = AuthToken::new("eyJ...").valid_for(Duration::from_secs(4 * 3600));
/// assert_eq!(token.lifetime, Some(Duration::from_secs(14_400)));
/// assert!(!format!("{token:?}").contains("eyJ"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken {
    /// The token, as `set_auth_token` sends it.
    pub token: String,
    /// How long it stays valid; `None` when unknown (then only a rejection asks for another).
    pub lifetime: Option<Duration>,
}

impl AuthToken {
    /// A token of unknown lifetime.
    pub fn new(token: impl Into<String>) -> AuthToken {
        AuthToken {
            token: token.into(),
            lifetime: None,
        }
    }

    /// The same token, valid for `lifetime` from now.
    pub fn valid_for(mut self, lifetime: Duration) -> AuthToken {
        self.lifetime = Some(lifetime);
        self
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AuthToken")
            .field("token", &super::config::Redacted(&self.token))
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Why a fallback poll failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollError {
    /// What the poll policy acts on.
    pub kind: PollErrorKind,
    /// The poller's words (for logs and the status), never a secret.
    pub detail: String,
}

impl PollError {
    /// A failure of `kind`, described by `detail`.
    pub fn new(kind: PollErrorKind, detail: impl Into<String>) -> PollError {
        PollError {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for PollError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.detail)
    }
}

/// The kinds of poll failure the policy tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollErrorKind {
    /// HTTP 429: the next poll waits at least `retry_after` when the server gave one.
    RateLimited {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Another HTTP status (403 without the right Origin, 5xx…).
    Status(u16),
    /// No answer in time (the poller's own timeout, or the client's poll timeout).
    Timeout,
    /// Connect, DNS, TLS or I/O failure.
    Network,
    /// An answer that is not what a scanner sends (HTML, bad JSON, too large).
    BadResponse,
}

/// A fresh auth token is a secret: `Debug` shows its length only.
impl std::fmt::Debug for Input {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Connected(id) => formatter.debug_tuple("Connected").field(id).finish(),
            Input::ConnectFailed { id, error } => formatter
                .debug_struct("ConnectFailed")
                .field("id", id)
                .field("error", error)
                .finish(),
            Input::Message { id, text } => formatter
                .debug_struct("Message")
                .field("id", id)
                .field("text", text)
                .finish(),
            Input::Disconnected { id, error } => formatter
                .debug_struct("Disconnected")
                .field("id", id)
                .field("error", error)
                .finish(),
            Input::PollResult { round, result } => formatter
                .debug_struct("PollResult")
                .field("round", round)
                .field("result", result)
                .finish(),
            Input::AuthToken(token) => formatter.debug_tuple("AuthToken").field(token).finish(),
        }
    }
}

/// A quote fetched by the fallback poller.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolledQuote {
    /// The quote key, as subscribed.
    pub symbol: String,
    /// Last price.
    pub last_price: Option<f64>,
    /// Time of the last price, Unix seconds.
    pub last_price_time: Option<i64>,
    /// Change since the previous close.
    pub change: Option<f64>,
    /// Change in percent.
    pub change_percent: Option<f64>,
    /// Volume.
    pub volume: Option<f64>,
    /// Best bid.
    pub bid: Option<f64>,
    /// Best ask.
    pub ask: Option<f64>,
    /// `streaming`, or a delayed mode such as `delayed_streaming_900`.
    pub update_mode: Option<String>,
    /// The symbol's description.
    pub description: Option<String>,
}

/// What the client asks the driver to do, drained with [`super::Client::poll_output`].
// Quote events dominate and are large; boxing them would cost an allocation per quote.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a WebSocket.
    Connect(ConnectRequest),
    /// Send this text message on connection `id`.
    Transmit {
        /// The connection.
        id: ConnectionId,
        /// One framed packet.
        text: String,
    },
    /// Close connection `id` (or abandon the attempt) now.
    Close {
        /// The connection.
        id: ConnectionId,
        /// Why.
        cause: DisconnectCause,
    },
    /// Ask the application for a fresh auth token; answer with [`Input::AuthToken`].
    RequestAuthToken,
    /// Fetch quotes for these symbols with the fallback poller; answer with [`Input::PollResult`].
    Poll(PollRequest),
    /// Something for the application.
    Event(Event),
}

/// How to open a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The id every input about this connection must carry.
    pub id: ConnectionId,
    /// WebSocket URL.
    pub url: String,
    /// `Origin` header value.
    pub origin: String,
    /// Give up (and report [`Input::ConnectFailed`]) after this long.
    pub timeout: Duration,
    /// A blocked send longer than this means the link is dead: report [`Input::Disconnected`].
    pub send_timeout: Duration,
}

/// A poll the driver should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    /// Echo this in [`Input::PollResult`]; results of older rounds are ignored.
    pub round: u64,
    /// The subscribed quote symbols.
    pub symbols: Vec<Arc<str>>,
}

/// Where a quote came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The WebSocket stream.
    Stream,
    /// The fallback poller.
    Poll,
}

/// A quote update.
#[derive(Debug, Clone, PartialEq)]
pub struct QuoteEvent {
    /// The whole merged quote after this update.
    pub quote: Quote,
    /// The fields whose value this update changed (may be empty).
    pub changed: QuoteFields,
    /// Stream or poll.
    pub source: Source,
}

/// A bar of a subscribed series.
#[derive(Debug, Clone, PartialEq)]
pub struct BarEvent {
    /// The subscription.
    pub series: SeriesId,
    /// Its symbol.
    pub symbol: Arc<str>,
    /// Its timeframe.
    pub timeframe: Arc<str>,
    /// The bar.
    pub bar: Bar,
    /// `false` while the bar is still forming (it may change); `true` once a newer bar started.
    pub closed: bool,
}

/// Bars a subscription may be missing: after a reconnect, the feed's backfill did not reach
/// back to the last bar whose final state the subscription knew, so bars that opened in
/// between were never seen (the feed sends a series' most recent `count` bars, and the link
/// was down for longer than that). Bars opening strictly between `after` and `before` may be
/// missing. A bar that was still forming when the link went, and that the backfill does not
/// include, lies inside the gap: it is never emitted as closed, since its final values were
/// never seen. When the backfill reaches back far enough, no gap is reported.
#[derive(Debug, Clone, PartialEq)]
pub struct BarGap {
    /// The subscription.
    pub series: SeriesId,
    /// Its symbol.
    pub symbol: Arc<str>,
    /// Its timeframe.
    pub timeframe: Arc<str>,
    /// Open time (Unix seconds) of the last bar emitted closed before the gap (or just before
    /// the forming bar, when none closed).
    pub after: f64,
    /// Open time (Unix seconds) of the first bar after it.
    pub before: f64,
}

/// Why a history request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The server does not know the symbol.
    #[error("symbol error: {0}")]
    Symbol(String),
    /// The server refused the series (e.g. `seconds_not_entitled`).
    #[error("series error: {0}")]
    Series(String),
    /// The server answered the request with `critical_error` (e.g. `invalid parameters` for a
    /// timeframe it does not know); the text is the server's.
    #[error("rejected by the server: {0}")]
    Rejected(String),
    /// The timeframe was refused before anything was sent.
    #[error("{0}")]
    InvalidTimeframe(String),
    /// No answer within the configured history timeout.
    #[error("timed out")]
    Timeout,
    /// More bars arrived than the configured maximum.
    #[error("more than {0} bars")]
    TooManyBars(usize),
    /// The client was closed first.
    #[error("client closed")]
    Closed,
}

/// Why a bar subscription was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BarsError {
    /// The timeframe is not one the server accepts; the text lists the valid forms.
    #[error("{0}")]
    InvalidTimeframe(String),
    /// [`super::Config::max_subscriptions`] series are subscribed already.
    #[error("at most {0} bar series can be subscribed")]
    TooMany(usize),
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

/// A finished history request.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    /// The request.
    pub id: HistoryId,
    /// Its symbol.
    pub symbol: Arc<str>,
    /// Its timeframe.
    pub timeframe: Arc<str>,
    /// The bars, oldest first, one per bar time; or why there are none.
    pub result: Result<Vec<Bar>, HistoryError>,
}

/// Something the application should know.
#[allow(clippy::large_enum_variant)] // see `Output`
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A quote update, from the stream or the poller.
    Quote(QuoteEvent),
    /// The server rejected a quote symbol (e.g. `no_such_symbol`); it is unsubscribed and will
    /// not be re-added on reconnect.
    QuoteError {
        /// The quote key.
        symbol: Arc<str>,
        /// The server's reason.
        reason: String,
    },
    /// A bar of a subscribed series.
    Bar(BarEvent),
    /// A reconnect's backfill did not reach back to the last bar emitted: bars may be
    /// missing in between (the bars that follow are emitted as usual).
    BarGap(BarGap),
    /// The server rejected a bar subscription (`symbol_error` or `series_error`); it is removed.
    SeriesError {
        /// The subscription.
        series: SeriesId,
        /// Its symbol.
        symbol: Arc<str>,
        /// The server's reason.
        reason: String,
    },
    /// A history request finished.
    History(HistoryEvent),
    /// The connection state or mode changed.
    State(StateChange),
    /// A session-level `critical_error`; the connection stays up.
    CriticalError {
        /// The session.
        session: String,
        /// The error name.
        name: String,
        /// Detail, when sent.
        detail: Option<String>,
    },
    /// A `protocol_error`; the client reconnects.
    ProtocolError {
        /// The server's text.
        text: String,
    },
    /// The server rejected the auth token (`bad auth token`). The client asked the application
    /// for a fresh one ([`Output::RequestAuthToken`]); `refreshed` says whether it got one. A
    /// rejected token with no fresh one is retried only after the backoff, counted as a failure,
    /// so an application with a fixed token should stop here.
    AuthTokenRejected {
        /// A different token arrived and the next attempt uses it.
        refreshed: bool,
    },
    /// A fresh token arrived before the current one expired (see [`AuthToken`]): the open
    /// connection got it with `set_auth_token`, and every later connection uses it.
    AuthTokenRefreshed {
        /// How long it stays valid, when known.
        lifetime: Option<Duration>,
    },
    /// Asking for the next token failed (no answer, or none in time); the client asks again at
    /// `retry_at`, after a backoff that grows with `failures`.
    AuthTokenRefreshFailed {
        /// Failed refreshes in a row.
        failures: u32,
        /// When the client asks again.
        retry_at: Instant,
    },
    /// A fallback poll failed; the next one goes at `next_poll` (backoff with jitter, at least
    /// the server's `Retry-After`).
    PollFailed {
        /// What the poller reported.
        error: PollError,
        /// Failed polls in a row.
        failures: u32,
        /// When the next poll goes.
        next_poll: Instant,
    },
    /// A poll answered without these symbols (unknown to the poller). Reported once per symbol
    /// until it comes back or is unsubscribed.
    PollMissing {
        /// The symbols, in subscription order.
        symbols: Vec<Arc<str>>,
    },
    /// The market went quiet (acknowledged, no ticks), closed (every symbol out of session), or
    /// active again after one of those.
    Market(MarketStatus),
    /// The command queue was full: these commands were not sent on this connection. The
    /// desired state still has them, so the next connection replays them.
    CommandsDropped {
        /// Commands dropped this time.
        count: u64,
        /// The queue's bound.
        bound: usize,
    },
}

/// A change of connection state or mode.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// The new state.
    pub state: State,
    /// Streaming or polling.
    pub mode: Mode,
    /// Why the last connection ended, when this change follows one.
    pub cause: Option<DisconnectCause>,
    /// Consecutive failed attempts so far.
    pub consecutive_failures: u32,
    /// When the next connection attempt is due, when one is scheduled. This is the time the
    /// attempt happens: whenever it moves (a token arrived, the breaker opened), a new change
    /// is reported.
    pub next_attempt: Option<Instant>,
}

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Created; nothing attempted yet.
    Idle,
    /// An attempt is in flight, or the socket is open and the server has not spoken yet.
    Connecting,
    /// Data is flowing.
    Live,
    /// Waiting before the next attempt.
    BackingOff,
    /// Too many failures: no attempt until the breaker's recovery time.
    CircuitOpen,
    /// Closed by the application; final.
    Closed,
}

impl State {
    /// Every state.
    pub const ALL: [State; 6] = [
        State::Idle,
        State::Connecting,
        State::Live,
        State::BackingOff,
        State::CircuitOpen,
        State::Closed,
    ];

    /// The state with this [`State::as_str`] name.
    ///
    /// ```
    /// use tickwire_core::client::State;
    ///
    /// assert_eq!(State::from_name("backing_off"), Some(State::BackingOff));
    /// assert_eq!(State::from_name("dancing"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == name)
    }

    /// Lower-case name, as shown in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting => "connecting",
            State::Live => "live",
            State::BackingOff => "backing_off",
            State::CircuitOpen => "circuit_open",
            State::Closed => "closed",
        }
    }
}

/// Where quotes come from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The WebSocket stream (also while reconnecting, until polling takes over).
    Streaming,
    /// The fallback poller; the stream is being retried.
    Polling,
}

impl Mode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Streaming => "streaming",
            Mode::Polling => "polling",
        }
    }
}

/// The circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Breaker {
    /// Attempts go ahead.
    Closed,
    /// No attempts until the recovery time.
    Open,
    /// One probe attempt is in flight.
    HalfOpen,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DisconnectCause {
    /// The driver could not open it.
    ConnectFailed,
    /// It did not open within the connect timeout.
    ConnectTimeout,
    /// The server did not speak within the handshake timeout.
    HandshakeTimeout,
    /// No packet at all within the read timeout.
    ReadTimeout,
    /// Only heartbeats, for the configured number in a row.
    Zombie,
    /// No tick for the data-silence threshold despite live subscriptions.
    DataSilence,
    /// The server sent `protocol_error`.
    ProtocolError,
    /// The session never acknowledged a subscription although the socket was alive.
    DeadSession,
    /// The server rejected the auth token.
    BadAuthToken,
    /// The peer or the network closed it.
    RemoteClosed,
    /// Rotated after the configured maximum age.
    MaxAge,
    /// The application closed the client.
    ClientClosed,
}

impl DisconnectCause {
    /// Every cause, in counter order.
    pub const ALL: [DisconnectCause; 12] = [
        DisconnectCause::ConnectFailed,
        DisconnectCause::ConnectTimeout,
        DisconnectCause::HandshakeTimeout,
        DisconnectCause::ReadTimeout,
        DisconnectCause::Zombie,
        DisconnectCause::DataSilence,
        DisconnectCause::ProtocolError,
        DisconnectCause::DeadSession,
        DisconnectCause::BadAuthToken,
        DisconnectCause::RemoteClosed,
        DisconnectCause::MaxAge,
        DisconnectCause::ClientClosed,
    ];

    /// Snake-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectCause::ConnectFailed => "connect_failed",
            DisconnectCause::ConnectTimeout => "connect_timeout",
            DisconnectCause::HandshakeTimeout => "handshake_timeout",
            DisconnectCause::ReadTimeout => "read_timeout",
            DisconnectCause::Zombie => "zombie",
            DisconnectCause::DataSilence => "data_silence",
            DisconnectCause::ProtocolError => "protocol_error",
            DisconnectCause::DeadSession => "dead_session",
            DisconnectCause::BadAuthToken => "bad_auth_token",
            DisconnectCause::RemoteClosed => "remote_closed",
            DisconnectCause::MaxAge => "max_age",
            DisconnectCause::ClientClosed => "client_closed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Disconnections counted by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CauseCounts([u64; DisconnectCause::ALL.len()]);

impl CauseCounts {
    /// How many connections ended for `cause`.
    pub fn get(&self, cause: DisconnectCause) -> u64 {
        self.0.get(cause.index()).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, cause: DisconnectCause) {
        if let Some(count) = self.0.get_mut(cause.index()) {
            *count = count.saturating_add(1);
        }
    }

    /// Total over every cause.
    pub fn total(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, count| sum.saturating_add(*count))
    }
}

/// Running totals since the client was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connection attempts made.
    pub connection_attempts: u64,
    /// Connections that opened.
    pub connections: u64,
    /// Connections (and attempts) that ended, by cause.
    pub disconnects: CauseCounts,
    /// Packets received.
    pub packets: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Heartbeats received (and echoed).
    pub heartbeats: u64,
    /// Packets that could not be framed or parsed.
    pub decode_errors: u64,
    /// Packets whose length prefix did not match and were recovered.
    pub resyncs: u64,
    /// Commands sent (heartbeat echoes excluded).
    pub commands_sent: u64,
    /// Commands waiting for the rate limit now.
    pub commands_queued: u64,
    /// Commands dropped because the queue was full.
    pub commands_dropped: u64,
    /// Quote events emitted.
    pub quotes: u64,
    /// Bar events emitted.
    pub bars: u64,
    /// Poll requests emitted.
    pub polls: u64,
}

/// A snapshot of the client, from [`super::Client::status`].
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Connection state.
    pub state: State,
    /// Streaming or polling.
    pub mode: Mode,
    /// The circuit breaker.
    pub breaker: Breaker,
    /// Time since the last quote or bar, if any arrived.
    pub last_tick_age: Option<Duration>,
    /// Consecutive failed attempts.
    pub consecutive_failures: u32,
    /// When the next attempt is due, if one is scheduled.
    pub next_attempt: Option<Instant>,
    /// The current connection, if one is in flight or open.
    pub connection: Option<ConnectionId>,
    /// What the driver reported when the last attempt or connection failed.
    pub last_failure: Option<String>,
    /// Whether the open connection's session acknowledged a subscription.
    pub session_proven: bool,
    /// Active, quiet or closed market, and how far quiet verdicts have escalated.
    pub market: MarketStatus,
    /// Real-time or delayed data, from the quotes' `update_mode`.
    pub data: DataDelay,
    /// The fallback poller's schedule and failures.
    pub polling: PollStatus,
    /// The auth token's expiry and refresh schedule.
    pub auth: TokenStatus,
    /// Running totals.
    pub counters: Counters,
}

/// How many subscribed symbols stream in real time and how many are delayed, from each quote's
/// `update_mode` (`streaming` is real time; `delayed_streaming_900` and other `delayed…` modes
/// are delayed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataDelay {
    /// Symbols whose `update_mode` is `streaming` (or another mode that is not delayed).
    pub realtime: usize,
    /// Symbols whose `update_mode` starts with `delayed`.
    pub delayed: usize,
    /// Symbols with no `update_mode` yet.
    pub unknown: usize,
}

impl DataDelay {
    /// `realtime`, `delayed`, `mixed` (some of each) or `unknown`.
    pub fn summary(&self) -> &'static str {
        match (self.realtime > 0, self.delayed > 0) {
            (true, true) => "mixed",
            (true, false) => "realtime",
            (false, true) => "delayed",
            (false, false) => "unknown",
        }
    }
}

/// The fallback poller as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollStatus {
    /// When the next poll goes, when one is scheduled. This is the time it goes.
    pub next_poll: Option<Instant>,
    /// Whether a poll is waiting for its answer.
    pub in_flight: bool,
    /// Failed polls in a row.
    pub failures: u32,
    /// The last failure, if the last poll failed.
    pub last_error: Option<String>,
}

/// The auth token's lifetime as the status shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenStatus {
    /// When the current token expires, when its lifetime is known.
    pub expires_at: Option<Instant>,
    /// When the client next asks for a fresh one (or gives up waiting for the answer).
    pub next_refresh: Option<Instant>,
    /// Failed refreshes in a row.
    pub refresh_failures: u32,
}

/// The client's timers. [`super::Client::poll_timeout`] is the earliest of their deadlines and
/// [`super::Client::handle_timeout`] fires every one that is due, both through the same
/// [`super::Client::deadline`], so a driver can log which one woke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// A history request times out.
    History,
    /// The next connection attempt: after the grace delay, the backoff, a fresh token or the
    /// open circuit's recovery time.
    Attempt,
    /// The attempt in flight gives up (connect timeout).
    Connect,
    /// The open socket has been silent too long: no first packet within the handshake timeout,
    /// or no packet at all within the read timeout.
    Read,
    /// The data-silence and dead-session check.
    Health,
    /// The connection reaches its maximum age and is rotated.
    MaxAge,
    /// The acknowledged connection has lasted long enough: the failure count resets.
    Stable,
    /// The rate limit lets the next queued command go.
    RateLimit,
    /// The next poll, the moment polling takes over from an unavailable stream, or the poll in
    /// flight giving up.
    Poll,
    /// Ask for the next auth token before the current one expires, or give up waiting for it.
    TokenRefresh,
}

impl Timer {
    /// Every timer, in the order `handle_timeout` fires them.
    pub const ALL: [Timer; 10] = [
        Timer::History,
        Timer::Attempt,
        Timer::Connect,
        Timer::Read,
        Timer::Health,
        Timer::MaxAge,
        Timer::Stable,
        Timer::RateLimit,
        Timer::Poll,
        Timer::TokenRefresh,
    ];

    /// Snake-case name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Timer::History => "history",
            Timer::Attempt => "attempt",
            Timer::Connect => "connect",
            Timer::Read => "read",
            Timer::Health => "health",
            Timer::MaxAge => "max_age",
            Timer::Stable => "stable",
            Timer::RateLimit => "rate_limit",
            Timer::Poll => "poll",
            Timer::TokenRefresh => "token_refresh",
        }
    }
}

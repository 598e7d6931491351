//! The client state machine: one logical feed over any number of physical connections.
//!
//! [`Client`] owns no socket and no clock. The driver feeds it what happened
//! ([`Client::handle_input`], [`Client::handle_timeout`]) and what the application wants
//! ([`Client::subscribe_quotes`], [`Client::subscribe_bars`], [`Client::request_history`],
//! [`Client::close`]), each with the current `Instant`; then drains every decision with
//! [`Client::poll_output`] and sleeps until [`Client::poll_timeout`].
//!
//! # Driving contract
//!
//! - **Inputs.** After anything happens — a socket event ([`Input`]), an application command, or
//!   the time returned by [`Client::poll_timeout`] passing ([`Client::handle_timeout`]) — call the
//!   matching method with the current time, then call [`Client::poll_output`] until it returns
//!   `None`, executing each [`Output`] in order. Every input names the [`ConnectionId`] it is
//!   about; inputs for a connection the client has already left are ignored.
//! - **Order of outputs.** Outputs come out in the order they were decided: a `Close` always
//!   precedes the `Connect` that replaces it, a connection's `Transmit`s follow its `Connect` in
//!   the order they must be sent (the session set-up first, then the desired subscriptions), a
//!   heartbeat echo follows the heartbeat's message at once, and `Event`s sit between them where
//!   they happened. There is never more than one connection in flight or open.
//! - **Time.** `now` must not go backwards. If it does, the client treats it as the latest time
//!   it has seen: nothing fires early and no deadline moves back. `handle_timeout` may be called
//!   at any time and more often than needed (it fires only what is due).
//! - **Timers.** [`Client::poll_timeout`] is the earliest deadline of the [`Timer`]s;
//!   [`Client::deadline`] gives each one and [`Client::next_timer`] says which is next, so a log
//!   can say why the machine woke. The deadline changes only when the client handles an input,
//!   a timeout or an application command, so read it again after each of those.
//! - **Requests.** [`Output::RequestAuthToken`] and [`Output::Poll`] are answered with
//!   [`Input::AuthToken`] and [`Input::PollResult`] whenever the answer is ready, with the time of
//!   the answer. One of each is in flight at most; an unanswered one fails at its deadline
//!   ([`Config::token_timeout`], [`PollingConfig::timeout`]) and a late answer is then ignored
//!   (a token is still kept for the next connection). Failures are retried after a backoff with
//!   jitter that the status and the events report before it happens.
//! - **Bounds.** Outputs grow only in proportion to the input just handled; drain them every time.
//!
//! What the client decides on its own — liveness (see [`liveness`]), reconnect backoff and the
//! breaker (see [`policy`]), rate limit, restoration, backfill, polling — follows the crate's
//! design table; each rule has a [`Config`] field.
//!
//! # Driving loop
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use tickwire_core::client::{Client, Config, Event, Input, Output};
//!
//! let start = Instant::now();
//! let mut client = Client::new(Config::default(), start);
//! client.subscribe_quotes(start, ["NASDAQ:AAPL"]);
//!
//! // A toy transport: every connection opens at once and the server says hello.
//! let mut now = start;
//! let mut sent = Vec::new();
//! for _ in 0..3 {
//!     client.handle_timeout(now);
//!     while let Some(output) = client.poll_output() {
//!         match output {
//!             Output::Connect(request) => {
//!                 client.handle_input(now, Input::Connected(request.id));
//!                 let hello = Bytes::from_static(b"~m~15~m~{\"protocol\":1}");
//!                 client.handle_input(now, Input::Message { id: request.id, text: hello });
//!             }
//!             Output::Transmit { text, .. } => sent.push(text),
//!             Output::Close { .. } => {}
//!             Output::RequestAuthToken => client.handle_input(now, Input::AuthToken(None)),
//!             Output::Poll(_) => {}
//!             Output::Event(Event::State(change)) => println!("now {:?}", change.state),
//!             Output::Event(_) => {}
//!         }
//!     }
//!     // Sleep until the client wants to be woken (a real driver also wakes on socket input).
//!     if let Some((timer, at)) = client.next_timer() {
//!         println!("next: {} at {at:?}", timer.as_str());
//!     }
//!     now = client.poll_timeout().unwrap_or(now + Duration::from_secs(1)).max(now);
//! }
//! assert!(sent[0].contains("set_auth_token"));
//! assert!(sent.iter().any(|text| text.contains("quote_add_symbols")));
//! ```

mod config;
pub mod liveness;
pub mod policy;
mod polling;
mod quote;
mod token;
mod transport;
mod types;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use config::{
    ANONYMOUS_TOKEN, Config, ConfigError, DEFAULT_QUOTE_FIELDS, DEFAULT_URL, FALLBACK_SEED,
    PollingConfig, parse_duration,
};
pub use liveness::{Market, MarketStatus};
pub use quote::{Quote, QuoteFields};
pub use transport::{TransportError, TransportErrorKind};
pub use types::{
    AuthToken, BarEvent, BarGap, BarsError, Breaker, CauseCounts, ConnectRequest, ConnectionId,
    Counters, DataDelay, DisconnectCause, Event, HistoryError, HistoryEvent, HistoryId, Input,
    Mode, Output, PollError, PollErrorKind, PollRequest, PollStatus, PolledQuote, QuoteEvent,
    SeriesId, Source, State, StateChange, Status, Timer, TokenStatus,
};

use crate::codec::{Decoder, Packet};
use crate::command::{Adjustment, Command, SymbolSpec};
use crate::hash::FastMap;
use crate::message::{self, Bar, ChartUpdate, QuoteValues, ServerMessage};
use crate::timeframe::Timeframe;
use policy::{CommandQueue, TokenBucket, retry_delay};

/// Quote symbols per `quote_add_symbols` command.
const SYMBOLS_PER_COMMAND: usize = 50;
/// Prefix of the series ids tickwire chooses; the rest is the request's key.
const SERIES_PREFIX: &str = "sds_";
/// Prefix of the symbol ids tickwire chooses.
const SYMBOL_PREFIX: &str = "sds_sym_";
/// Turnaround tag of every series (one per connection and series id).
const TURNAROUND: &str = "s1";

/// Where the physical link stands.
#[derive(Debug)]
enum Link {
    /// Waiting until `at` before the next attempt (at creation: the first attempt, right away).
    Waiting { at: Instant, after_failure: bool },
    /// Circuit open: no attempt until `until`, then one probe.
    CircuitOpen { until: Instant },
    /// An attempt is in flight.
    Connecting {
        id: ConnectionId,
        deadline: Instant,
        probe: bool,
    },
    /// The socket is open.
    Open(OpenLink),
    /// Closed by the application.
    Closed,
}

#[derive(Debug)]
struct OpenLink {
    id: ConnectionId,
    opened_at: Instant,
    probe: bool,
    /// Any packet, heartbeats included: proves the socket.
    last_packet: Option<Instant>,
    /// Last data packet (anything but a heartbeat), or the open time.
    last_data: Instant,
    /// Last quote or bar (or the open time): proves the market.
    last_tick: Instant,
    /// A data packet arrived: the socket and the server work (state `Live`).
    live: bool,
    /// When the server first acknowledged one of this connection's subscriptions (or found
    /// nothing to acknowledge): proves the session.
    proven_at: Option<Instant>,
    /// Acknowledged for `stable_after`: the failure count was reset.
    stable: bool,
    /// Heartbeats since the last data packet.
    idle_heartbeats: u32,
    /// Heartbeats since the last command went out (or the open): a session is dead only when
    /// nothing it was asked is still waiting for the rate limit.
    heartbeats: u32,
    /// When the last command went out (or the open).
    last_sent: Instant,
    /// A tick arrived on this connection.
    ticked: bool,
    /// A tick arrived since the last heartbeat.
    ticked_since_heartbeat: bool,
    /// Heartbeat intervals in a row that each held a tick.
    active_intervals: u32,
    next_health_check: Instant,
    quote_session: String,
    chart_session: String,
}

/// A bar subscription or history request, replayed on every connection.
#[derive(Debug)]
struct ChartRequest {
    symbol: Arc<str>,
    timeframe: Arc<str>,
    count: u32,
    kind: ChartKind,
    /// The server answered this request on the current connection.
    answered: bool,
}

#[derive(Debug)]
enum ChartKind {
    Subscription(SeriesState),
    History {
        deadline: Instant,
        bars: BTreeMap<i64, Bar>,
    },
}

/// What a subscription has emitted so far, to close bars and drop the duplicates a reconnect
/// backfill sends again.
#[derive(Debug, Default)]
struct SeriesState {
    forming: Option<Bar>,
    last_closed_time: Option<f64>,
}

/// The sans-IO client. See the [module docs](self) for the driving loop.
#[derive(Debug)]
pub struct Client {
    config: Config,
    rng: fastrand::Rng,
    /// Shared so a message can be decoded while the client changes.
    decoder: Arc<Decoder>,
    auth_token: Secret,
    /// Desired quote symbols and their merged quotes.
    quotes: FastMap<Arc<str>, Quote>,
    /// Desired chart series and history requests, by key.
    charts: BTreeMap<u64, ChartRequest>,
    next_key: u64,
    link: Link,
    next_connection: u64,
    consecutive_failures: u32,
    breaker: Breaker,
    /// Set after `bad auth token`: hold the next attempt until the token arrives or this passes.
    awaiting_token_until: Option<Instant>,
    /// A fresh token already got its immediate retry since the last acknowledged session.
    token_retry_used: bool,
    /// Why the previous connection ended, to spot a rejection that repeats.
    last_ending: Option<DisconnectCause>,
    /// Times the breaker opened since the last stable connection: its wait doubles each time.
    breaker_trips: u32,
    /// The market may have changed during the message being handled: report it at the end.
    market_dirty: bool,
    /// Zombie and data-silence verdicts in a row on acknowledged, quiet links.
    quiet_verdicts: u32,
    /// Desired quote symbols whose `current_session` says they are out of session.
    out_of_session: usize,
    /// The market last reported with [`Event::Market`] (starting from `Active`: only quiet and
    /// closed stretches, and their end, are news).
    reported_market: Market,
    /// The latest time seen: time never runs backwards inside the client.
    now: Instant,
    bucket: TokenBucket,
    queue: CommandQueue,
    mode: Mode,
    /// When the stream stopped being live (or the client started).
    unavailable_since: Option<Instant>,
    next_poll: Option<Instant>,
    poll_round: u64,
    /// The fallback poller's in-flight request, failures and missing symbols.
    poll: polling::PollState,
    /// The auth token's expiry and refresh schedule.
    token: token::TokenSchedule,
    last_tick: Option<Instant>,
    outputs: VecDeque<Output>,
    counters: Counters,
    last_failure: Option<String>,
    /// The last state reported, so a step that changes nothing reports nothing.
    reported: Option<(State, Mode, Option<Instant>)>,
}

impl Client {
    /// A client that will connect as soon as it is first driven.
    ///
    /// An invalid `config` (see [`Config::validate`]) is used as given; validate it first when
    /// it comes from a user.
    pub fn new(config: Config, now: Instant) -> Client {
        Client {
            rng: fastrand::Rng::with_seed(config.seed.unwrap_or(FALLBACK_SEED)),
            decoder: Arc::new(Decoder::with_max_packet_size(config.max_packet_size)),
            auth_token: Secret(config.auth_token.clone()),
            quotes: FastMap::default(),
            charts: BTreeMap::new(),
            next_key: 1,
            link: Link::Waiting {
                at: now,
                after_failure: false,
            },
            next_connection: 1,
            consecutive_failures: 0,
            breaker: Breaker::Closed,
            awaiting_token_until: None,
            token_retry_used: false,
            last_ending: None,
            breaker_trips: 0,
            market_dirty: false,
            quiet_verdicts: 0,
            out_of_session: 0,
            reported_market: Market::Active,
            now,
            bucket: TokenBucket::per_minute(config.rate_limit_per_minute, config.burst, now),
            queue: CommandQueue::new(config.max_queued_commands),
            mode: Mode::Streaming,
            unavailable_since: Some(now),
            next_poll: None,
            poll_round: 0,
            poll: polling::PollState::default(),
            token: token::TokenSchedule::starting(now, config.auth_token_lifetime),
            last_tick: None,
            outputs: VecDeque::new(),
            counters: Counters::default(),
            last_failure: None,
            reported: None,
            config,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- application commands ------------------------------------------------------------

    /// Adds quote symbols (`EXCH:TICKER` or `=`+JSON specs) to the desired set and returns how
    /// many were new. Symbols already subscribed, empty ones, and any past
    /// [`Config::max_subscriptions`] are not added (so the count tells the caller).
    pub fn subscribe_quotes<I, S>(&mut self, now: Instant, symbols: I) -> usize
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let now = self.clock(now);
        if self.is_closed() {
            return 0;
        }
        let mut added = Vec::new();
        for symbol in symbols {
            let symbol = symbol.as_ref();
            if symbol.is_empty()
                || self.quotes.contains_key(symbol)
                || self.quotes.len() >= self.config.max_subscriptions
            {
                continue;
            }
            let key: Arc<str> = Arc::from(symbol);
            self.quotes
                .insert(Arc::clone(&key), Quote::new(Arc::clone(&key)));
            added.push(key);
        }
        if let Some(session) = self.open_link().map(|link| link.quote_session.clone()) {
            for chunk in added.chunks(SYMBOLS_PER_COMMAND) {
                let symbols = chunk.iter().map(|symbol| symbol.to_string());
                self.send(now, Command::quote_add_symbols(session.clone(), symbols));
            }
        }
        self.after_step(now);
        added.len()
    }

    /// Removes quote symbols from the desired set.
    pub fn unsubscribe_quotes<I, S>(&mut self, now: Instant, symbols: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let now = self.clock(now);
        let removed: Vec<String> = symbols
            .into_iter()
            .filter_map(|symbol| {
                self.forget_quote(symbol.as_ref())
                    .map(|(symbol, _)| symbol.to_string())
            })
            .collect();
        if let Some(session) = self.open_link().map(|link| link.quote_session.clone()) {
            for chunk in removed.chunks(SYMBOLS_PER_COMMAND) {
                self.send(
                    now,
                    Command::quote_remove_symbols(session.clone(), chunk.iter().cloned()),
                );
            }
        }
        self.after_step(now);
    }

    /// Subscribes to the bars of `symbol` at `timeframe`, loading `count` bars of history first.
    /// The timeframe is any form [`Timeframe::parse`] accepts (`1`, `60`, `1D`, `1h`, `5m`…) and
    /// is sent in the server's form; an invalid one is refused before anything is sent.
    ///
    /// # Errors
    /// [`BarsError`]: an invalid timeframe, [`Config::max_subscriptions`] reached, or closed.
    pub fn subscribe_bars(
        &mut self,
        now: Instant,
        symbol: &str,
        timeframe: &str,
        count: u32,
    ) -> Result<SeriesId, BarsError> {
        let now = self.clock(now);
        if self.is_closed() {
            return Err(BarsError::Closed);
        }
        let timeframe = Timeframe::parse(timeframe)
            .map_err(|error| BarsError::InvalidTimeframe(error.to_string()))?;
        if self.series_count() >= self.config.max_subscriptions {
            return Err(BarsError::TooMany(self.config.max_subscriptions));
        }
        let key = self.add_chart(
            symbol,
            timeframe.as_str(),
            count,
            ChartKind::Subscription(SeriesState::default()),
        );
        self.send_chart_request(now, key);
        self.after_step(now);
        Ok(SeriesId(key))
    }

    /// Stops a bar subscription.
    pub fn unsubscribe_bars(&mut self, now: Instant, series: SeriesId) {
        let now = self.clock(now);
        let is_subscription = matches!(
            self.charts.get(&series.0),
            Some(ChartRequest {
                kind: ChartKind::Subscription(_),
                ..
            })
        );
        if is_subscription {
            self.charts.remove(&series.0);
            self.send_remove_series(now, series.0);
        }
        self.after_step(now);
    }

    /// Fetches `count` bars of `symbol` at `timeframe` (any form [`Timeframe::parse`] accepts;
    /// an invalid one fails at once with [`HistoryError::InvalidTimeframe`]). The answer is one
    /// [`Event::History`] with this id: the bars, or a typed error — never silence, since the
    /// request times out after [`Config::history_timeout`]. Survives reconnects.
    pub fn request_history(
        &mut self,
        now: Instant,
        symbol: &str,
        timeframe: &str,
        count: u32,
    ) -> HistoryId {
        let now = self.clock(now);
        let deadline = now.checked_add(self.config.history_timeout).unwrap_or(now);
        let parsed = Timeframe::parse(timeframe);
        let key = self.add_chart(
            symbol,
            parsed.as_ref().map_or(timeframe, Timeframe::as_str),
            count,
            ChartKind::History {
                deadline,
                bars: BTreeMap::new(),
            },
        );
        if self.is_closed() {
            self.finish_history(key, Err(HistoryError::Closed));
        } else if let Err(error) = parsed {
            self.finish_history(key, Err(HistoryError::InvalidTimeframe(error.to_string())));
        } else {
            self.send_chart_request(now, key);
        }
        self.after_step(now);
        HistoryId(key)
    }

    /// Replaces the auth token; used from the next connection on.
    pub fn set_auth_token(&mut self, token: impl Into<String>) {
        self.auth_token = Secret(token.into());
    }

    /// Ends everything: closes the connection, fails pending history requests with
    /// [`HistoryError::Closed`], and from then on asks for nothing and wants no timer. The
    /// outputs already queued (the close among them) are still drained with `poll_output`.
    pub fn close(&mut self) {
        if self.is_closed() {
            return;
        }
        // Requests the driver has not collected yet are withdrawn: after close the client asks
        // for nothing. Events already decided stay, so the application still sees them.
        let undrained_connect = self
            .outputs
            .iter()
            .any(|output| matches!(output, Output::Connect(_)));
        self.outputs
            .retain(|output| matches!(output, Output::Event(_)));
        if let Some(id) = self.current_connection().filter(|_| !undrained_connect) {
            self.outputs.push_back(Output::Close {
                id,
                cause: DisconnectCause::ClientClosed,
            });
            self.counters.disconnects.add(DisconnectCause::ClientClosed);
        }
        self.link = Link::Closed;
        self.queue.clear();
        self.counters.commands_queued = 0;
        let pending: Vec<u64> = self
            .charts
            .iter()
            .filter(|(_, chart)| chart.is_history())
            .map(|(key, _)| *key)
            .collect();
        for key in pending {
            self.finish_history(key, Err(HistoryError::Closed));
        }
        self.next_poll = None;
        self.emit_state(Some(DisconnectCause::ClientClosed));
    }

    // ----- driver interface ----------------------------------------------------------------

    /// Feeds one transport event.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        let now = self.clock(now);
        if self.is_closed() {
            return;
        }
        match input {
            Input::Connected(id) => self.on_connected(now, id),
            Input::ConnectFailed { id, error } => {
                if matches!(self.link, Link::Connecting { id: current, .. } if current == id) {
                    self.last_failure = Some(error.to_string());
                    self.fail_connection(
                        now,
                        DisconnectCause::ConnectFailed,
                        false,
                        Some(error.kind),
                    );
                }
            }
            Input::Message { id, text } => {
                if self.open_link().is_some_and(|link| link.id == id) {
                    self.on_message(now, &text);
                }
            }
            Input::Disconnected { id, error } => {
                if self.current_connection() == Some(id) {
                    self.last_failure = Some(error.to_string());
                    let cause = if matches!(self.link, Link::Connecting { .. }) {
                        DisconnectCause::ConnectFailed
                    } else {
                        DisconnectCause::RemoteClosed
                    };
                    // The driver already knows the socket is gone: no Close output needed.
                    self.fail_connection(now, cause, false, Some(error.kind));
                }
            }
            Input::PollResult { round, result } => self.on_poll_result(now, round, result),
            Input::AuthToken(token) => self.on_auth_token(now, token),
        }
        self.after_step(now);
    }

    /// Runs everything that is due at `now`. Call it when [`Client::poll_timeout`] passes (calling
    /// it more often is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        if self.is_closed() {
            return;
        }
        for timer in Timer::ALL {
            if self.deadline(timer).is_some_and(|at| now >= at) {
                self.fire(now, timer);
            }
        }
        self.after_step(now);
    }

    /// When `timer` next fires, if it is armed. [`Client::poll_timeout`] is the earliest of these.
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::History => self
                .charts
                .values()
                .filter_map(|chart| match chart.kind {
                    ChartKind::History { deadline, .. } => Some(deadline),
                    ChartKind::Subscription(_) => None,
                })
                .min(),
            Timer::Attempt => self.next_attempt(),
            Timer::Connect => match &self.link {
                Link::Connecting { deadline, .. } => Some(*deadline),
                _ => None,
            },
            Timer::Read => self.open_link().map(|link| match link.last_packet {
                None => add(link.opened_at, self.config.handshake_timeout),
                Some(last) => add(last, self.config.read_timeout),
            }),
            Timer::Health => self.open_link().map(|link| link.next_health_check),
            Timer::MaxAge => {
                let age = self.config.max_age?;
                self.open_link().map(|link| add(link.opened_at, age))
            }
            Timer::Stable => self
                .open_link()
                .filter(|link| !link.stable)
                .and_then(|link| link.proven_at)
                .map(|proven| add(proven, self.config.stable_after)),
            Timer::RateLimit => (self.open_link().is_some() && !self.queue.is_empty())
                .then(|| self.bucket.next_token_at()),
            Timer::Poll => {
                if self.is_closed() {
                    return None;
                }
                let polling_start = match (self.config.polling, self.unavailable_since, self.mode) {
                    (Some(polling), Some(since), Mode::Streaming) if !self.quotes.is_empty() => {
                        Some(add(since, polling.unavailable_after))
                    }
                    _ => None,
                };
                [self.next_poll, polling_start, self.poll.in_flight_until()]
                    .into_iter()
                    .flatten()
                    .min()
            }
            Timer::TokenRefresh => self.token_refresh_deadline(),
        }
    }

    /// The timer that fires next, and when.
    pub fn next_timer(&self) -> Option<(Timer, Instant)> {
        Timer::ALL
            .into_iter()
            .filter_map(|timer| self.deadline(timer).map(|at| (timer, at)))
            .min_by_key(|(_, at)| *at)
    }

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::History => self.expire_histories(now),
            Timer::Attempt => {
                if self.awaiting_token_until.take().is_some() {
                    // No answer within the token timeout: go on with the token we have.
                    self.push_event(Event::AuthTokenRejected { refreshed: false });
                }
                match self.link {
                    Link::Waiting { .. } => self.start_attempt(now, false),
                    Link::CircuitOpen { .. } => {
                        self.breaker = Breaker::HalfOpen;
                        self.start_attempt(now, true);
                    }
                    _ => {}
                }
            }
            Timer::Connect => {
                self.fail_connection(now, DisconnectCause::ConnectTimeout, true, None)
            }
            Timer::Read => {
                let cause = match self.open_link().map(|link| link.last_packet) {
                    Some(None) => DisconnectCause::HandshakeTimeout,
                    _ => DisconnectCause::ReadTimeout,
                };
                self.fail_connection(now, cause, true, None);
            }
            Timer::Health => self.health_check(now),
            Timer::MaxAge => self.fail_connection(now, DisconnectCause::MaxAge, true, None),
            Timer::Stable => {
                if let Link::Open(link) = &mut self.link {
                    link.stable = true;
                }
                self.consecutive_failures = 0;
                self.breaker_trips = 0;
                self.emit_state(None);
            }
            Timer::TokenRefresh => self.fire_token_refresh(now),
            Timer::Poll => self.expire_poll(now),
            // Runs in `after_step`, which every entry point ends with.
            Timer::RateLimit => {}
        }
    }

    /// The next decision, or `None` when there is nothing to do until more input or a timeout.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Client::handle_timeout`] should next be called; `None` after close.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(_, at)| at)
    }

    /// A snapshot of state, mode, breaker and counters.
    pub fn status(&self, now: Instant) -> Status {
        let now = now.max(self.now);
        Status {
            state: self.state(),
            mode: self.mode,
            breaker: self.breaker,
            last_tick_age: self
                .last_tick
                .map(|tick| now.saturating_duration_since(tick)),
            consecutive_failures: self.consecutive_failures,
            next_attempt: self.next_attempt(),
            connection: self.current_connection(),
            counters: self.counters.clone(),
            last_failure: self.last_failure.clone(),
            session_proven: self
                .open_link()
                .is_some_and(|link| link.proven_at.is_some()),
            market: self.market_status(now),
            data: self.data_delay(),
            polling: self.poll_status(),
            auth: TokenStatus {
                expires_at: self.token.expires_at,
                next_refresh: self.token_refresh_deadline(),
                refresh_failures: self.token.failures,
            },
        }
    }

    /// Counts the subscribed symbols by their quotes' `update_mode`.
    fn data_delay(&self) -> DataDelay {
        let mut delay = DataDelay::default();
        for quote in self.quotes.values() {
            match quote.update_mode.as_deref() {
                None => delay.unknown = delay.unknown.saturating_add(1),
                Some(mode) if mode.starts_with("delayed") => {
                    delay.delayed = delay.delayed.saturating_add(1)
                }
                Some(_) => delay.realtime = delay.realtime.saturating_add(1),
            }
        }
        delay
    }

    /// The quote symbols currently desired (rejected ones are gone), sorted.
    pub fn quote_symbols(&self) -> Vec<Arc<str>> {
        let mut symbols: Vec<Arc<str>> = self.quotes.keys().cloned().collect();
        symbols.sort();
        symbols
    }

    /// The latest merged quote of a subscribed symbol.
    pub fn quote(&self, symbol: &str) -> Option<&Quote> {
        self.quotes.get(symbol)
    }

    /// Bar subscriptions currently desired: id, symbol, timeframe.
    pub fn bar_subscriptions(&self) -> Vec<(SeriesId, Arc<str>, Arc<str>)> {
        self.charts
            .iter()
            .filter(|(_, chart)| !chart.is_history())
            .map(|(key, chart)| {
                (
                    SeriesId(*key),
                    Arc::clone(&chart.symbol),
                    Arc::clone(&chart.timeframe),
                )
            })
            .collect()
    }

    /// History requests still pending.
    pub fn pending_history(&self) -> Vec<HistoryId> {
        self.charts
            .iter()
            .filter(|(_, chart)| chart.is_history())
            .map(|(key, _)| HistoryId(*key))
            .collect()
    }

    // ----- connection lifecycle --------------------------------------------------------------

    fn start_attempt(&mut self, now: Instant, probe: bool) {
        let id = ConnectionId(self.next_connection);
        self.next_connection = self.next_connection.saturating_add(1);
        self.counters.connection_attempts = self.counters.connection_attempts.saturating_add(1);
        self.link = Link::Connecting {
            id,
            deadline: add(now, self.config.connect_timeout),
            probe,
        };
        self.outputs.push_back(Output::Connect(ConnectRequest {
            id,
            url: self.config.url.clone(),
            origin: self.config.origin.clone(),
            timeout: self.config.connect_timeout,
            send_timeout: self.config.send_timeout,
        }));
        self.emit_state(None);
    }

    fn on_connected(&mut self, now: Instant, id: ConnectionId) {
        let probe = match self.link {
            Link::Connecting {
                id: current, probe, ..
            } if current == id => probe,
            _ => return,
        };
        self.counters.connections = self.counters.connections.saturating_add(1);
        let quote_session = self.session_id("qs_");
        let chart_session = self.session_id("cs_");
        self.link = Link::Open(OpenLink {
            id,
            opened_at: now,
            probe,
            last_packet: None,
            last_data: now,
            last_tick: now,
            live: false,
            proven_at: None,
            stable: false,
            idle_heartbeats: 0,
            heartbeats: 0,
            last_sent: now,
            ticked: false,
            ticked_since_heartbeat: false,
            active_intervals: 0,
            next_health_check: add(now, self.config.health_interval),
            quote_session: quote_session.clone(),
            chart_session: chart_session.clone(),
        });
        self.queue.clear();
        // Session set-up, pipelined before the server speaks, then every desired subscription.
        self.send(now, Command::set_auth_token(self.auth_token.0.clone()));
        if let Some((language, country)) = self.config.locale.clone() {
            self.send(now, Command::set_locale(language, country));
        }
        self.send(now, Command::quote_create_session(quote_session.clone()));
        self.send(
            now,
            Command::quote_set_fields(quote_session.clone(), self.config.quote_fields.clone()),
        );
        self.send(now, Command::chart_create_session(chart_session));
        let symbols = self.quote_symbols();
        for chunk in symbols.chunks(SYMBOLS_PER_COMMAND) {
            let symbols = chunk.iter().map(|symbol| symbol.to_string());
            self.send(
                now,
                Command::quote_add_symbols(quote_session.clone(), symbols),
            );
        }
        let keys: Vec<u64> = self.charts.keys().copied().collect();
        for key in keys {
            if let Some(chart) = self.charts.get_mut(&key) {
                chart.answered = false;
                if let ChartKind::History { bars, .. } = &mut chart.kind {
                    // A new connection sends the whole history again.
                    bars.clear();
                }
            }
            self.send_chart_request(now, key);
        }
        self.emit_state(None);
    }

    /// The data-silence and dead-session rules, on the health interval.
    fn health_check(&mut self, now: Instant) {
        let interval = self.config.health_interval.max(Duration::from_millis(1));
        let Some(link) = self.open_link() else {
            return;
        };
        let unproven_too_long = link.proven_at.is_none()
            && self.queue.is_empty()
            && now >= add(link.last_sent, self.config.data_silence);
        let silent = link.proven_at.is_some()
            && now >= add(link.last_tick, self.config.data_silence)
            && now >= add(link.last_tick, self.quiet_wait());
        if self.has_subscriptions() && unproven_too_long {
            self.fail_connection(now, DisconnectCause::DeadSession, true, None);
            return;
        }
        if self.has_subscriptions() && silent && !self.market_closed() {
            self.quiet_verdict(now, DisconnectCause::DataSilence);
            return;
        }
        if let Link::Open(link) = &mut self.link {
            while link.next_health_check <= now {
                link.next_health_check = add(link.next_health_check, interval);
            }
        }
        self.report_market(now);
    }

    /// Ends a proven link whose market went quiet, and escalates the wait for the next verdict.
    fn quiet_verdict(&mut self, now: Instant, cause: DisconnectCause) {
        self.quiet_verdicts = self.quiet_verdicts.saturating_add(1);
        self.fail_connection(now, cause, true, None);
    }

    /// How long a proven link must be silent before the next zombie or data-silence verdict.
    fn quiet_wait(&self) -> Duration {
        liveness::quiet_wait(
            self.quiet_verdicts,
            self.config.quiet_recheck,
            self.config.quiet_recheck_max,
        )
    }

    /// Whether anything was asked of the server that it should acknowledge.
    fn has_subscriptions(&self) -> bool {
        !self.quotes.is_empty() || self.charts.values().any(|chart| !chart.is_history())
    }

    /// Every desired symbol is out of its session: silence is expected.
    fn market_closed(&self) -> bool {
        if self.quotes.is_empty() || self.out_of_session < self.quotes.len() {
            return false;
        }
        // A bar series says nothing of its session unless its symbol is also a quote.
        self.charts.values().all(|chart| {
            chart.is_history()
                || self
                    .quotes
                    .get(chart.symbol.as_ref())
                    .is_some_and(|quote| liveness::out_of_session(quote.current_session.as_deref()))
        })
    }

    fn market_status(&self, now: Instant) -> MarketStatus {
        let market = match self.open_link() {
            _ if !self.has_subscriptions() => Market::Unknown,
            Some(link) if link.proven_at.is_some() => {
                if self.market_closed() {
                    Market::Closed
                } else if link.idle_heartbeats >= self.config.idle_heartbeats
                    || now >= add(link.last_tick, self.config.data_silence)
                {
                    Market::Quiet
                } else if link.ticked {
                    Market::Active
                } else {
                    Market::Unknown
                }
            }
            _ => Market::Unknown,
        };
        MarketStatus {
            market,
            symbols: self.quotes.len(),
            out_of_session: self.out_of_session,
            quiet_verdicts: self.quiet_verdicts,
            next_verdict_after: self.quiet_wait(),
        }
    }

    /// Reports the market when it changed since the last report. `Unknown` (no acknowledged
    /// connection) is not news: what matters is a quiet or closed stretch and its end.
    fn report_market(&mut self, now: Instant) {
        let status = self.market_status(now);
        if status.market != Market::Unknown && status.market != self.reported_market {
            self.reported_market = status.market;
            self.push_event(Event::Market(status));
        }
    }

    /// Ends the current attempt or connection and schedules the next one.
    ///
    /// `send_close`: whether the driver still has to be told to close the socket. `transport`:
    /// what the driver reported, when it reported the failure.
    fn fail_connection(
        &mut self,
        now: Instant,
        cause: DisconnectCause,
        send_close: bool,
        transport: Option<TransportErrorKind>,
    ) {
        let (id, was_live, proven, stable, probe) = match &self.link {
            Link::Connecting { id, probe, .. } => (*id, false, false, false, *probe),
            Link::Open(link) => (
                link.id,
                link.live,
                link.proven_at.is_some(),
                link.stable,
                link.probe,
            ),
            _ => return,
        };
        if send_close {
            self.outputs.push_back(Output::Close { id, cause });
        }
        if transport.is_none() {
            // The driver's words are kept when it reported; the others are the client's finding.
            self.last_failure = Some(cause.as_str().replace('_', " "));
        }
        self.counters.disconnects.add(cause);
        self.queue.clear();
        self.counters.commands_queued = 0;
        if was_live {
            self.unavailable_since = Some(now);
        }
        let repeated = self.last_ending == Some(cause);
        self.last_ending = Some(cause);
        let failure = match cause {
            DisconnectCause::MaxAge | DisconnectCause::ClientClosed => false,
            // Verdicts on a proven session escalate by themselves (see `liveness`).
            DisconnectCause::Zombie | DisconnectCause::DataSilence => !proven,
            DisconnectCause::ConnectFailed
            | DisconnectCause::ConnectTimeout
            | DisconnectCause::HandshakeTimeout
            | DisconnectCause::DeadSession
            | DisconnectCause::BadAuthToken => true,
            // A rejection that repeats on consecutive connections is never retried at a fixed rate.
            DisconnectCause::ProtocolError => !stable || repeated,
            DisconnectCause::ReadTimeout | DisconnectCause::RemoteClosed => !stable,
        };
        let retry_after = transport.and_then(TransportErrorKind::retry_after);
        let refused_for_rate = transport.is_some_and(TransportErrorKind::is_rate_limited);
        if !failure {
            self.link = Link::Waiting {
                at: add(now, self.jittered(self.config.grace)),
                after_failure: false,
            };
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            // The server's own wait is a floor: jitter only ever adds to it.
            let floor = retry_after.map(|after| {
                let spread = after.mul_f64(self.config.jitter.clamp(0.0, 1.0) * self.rng.f64());
                after.saturating_add(spread)
            });
            let open_breaker = probe
                || self.consecutive_failures >= self.config.max_attempts
                || (refused_for_rate && retry_after.is_none());
            if open_breaker {
                self.breaker = Breaker::Open;
                self.breaker_trips = self.breaker_trips.saturating_add(1);
                let recovery = self.breaker_wait(self.breaker_trips);
                self.link = Link::CircuitOpen {
                    until: add(now, recovery.max(floor.unwrap_or_default())),
                };
            } else {
                let delay = retry_delay(
                    self.consecutive_failures,
                    self.config.grace,
                    self.config.backoff_initial,
                    self.config.backoff_max,
                    self.config.jitter,
                    self.unit_jitter(),
                );
                self.link = Link::Waiting {
                    at: add(now, delay.max(floor.unwrap_or_default())),
                    after_failure: true,
                };
            }
        }
        self.emit_state(Some(cause));
        self.report_market(now);
    }

    /// The open circuit's wait after its `trips`-th opening in a row: the recovery time,
    /// doubling per trip up to the maximum, with jitter.
    fn breaker_wait(&mut self, trips: u32) -> Duration {
        let doublings = trips.saturating_sub(1).min(31);
        let recovery = self
            .config
            .breaker_recovery
            .saturating_mul(1u32 << doublings)
            .min(
                self.config
                    .breaker_recovery_max
                    .max(self.config.breaker_recovery),
            );
        self.jittered(recovery)
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        let unit = self.unit_jitter();
        policy::apply_jitter(base, self.config.jitter, unit)
    }

    fn unit_jitter(&mut self) -> f64 {
        self.rng.f64().mul_add(2.0, -1.0)
    }

    fn session_id(&mut self, prefix: &str) -> String {
        let mut id = String::with_capacity(prefix.len().saturating_add(12));
        id.push_str(prefix);
        for _ in 0..12 {
            id.push(self.rng.alphanumeric());
        }
        id
    }

    // ----- inbound -----------------------------------------------------------------------------

    fn on_message(&mut self, now: Instant, text: &Bytes) {
        self.counters.bytes = self.counters.bytes.saturating_add(text.len() as u64);
        let decoder = Arc::clone(&self.decoder);
        let mut packets = decoder.decode(text);
        for packet in packets.by_ref() {
            if !matches!(self.link, Link::Open(_)) {
                // A packet above closed the connection; the rest of this message is moot.
                break;
            }
            self.counters.packets = self.counters.packets.saturating_add(1);
            if let Link::Open(link) = &mut self.link {
                link.last_packet = Some(now);
            }
            match packet {
                Ok(Packet::Heartbeat(beat)) => self.on_heartbeat(now, &beat),
                Ok(Packet::Json(payload) | Packet::LegacyJson(payload)) => {
                    self.on_data_packet(now);
                    self.on_payload(now, &payload);
                }
                Err(_) => {
                    self.counters.decode_errors = self.counters.decode_errors.saturating_add(1)
                }
            }
        }
        self.counters.resyncs = self
            .counters
            .resyncs
            .saturating_add(u64::from(packets.resyncs()));
        if std::mem::take(&mut self.market_dirty) {
            self.report_market(now);
        }
    }

    /// One JSON payload. A plain quote delta is read in place and applied from there (the
    /// hot path: no message is built or moved); everything else is parsed into a message.
    fn on_payload(&mut self, now: Instant, payload: &[u8]) {
        let parsed = match std::str::from_utf8(payload) {
            Ok(text) => {
                let mut values = QuoteValues::default();
                if let Some((session, symbol)) = message::parse_quote_into(text, &mut values) {
                    self.prove_if_ours(now, session);
                    self.on_quote_data(now, session, symbol, &values);
                    return;
                }
                message::parse_general(text)
            }
            // Not text: the general parser says why.
            Err(_) => message::parse(payload),
        };
        match parsed {
            Ok(parsed) => self.on_server_message(now, parsed),
            Err(_) => self.counters.decode_errors = self.counters.decode_errors.saturating_add(1),
        }
    }

    fn on_heartbeat(&mut self, now: Instant, beat: &crate::codec::Heartbeat) {
        self.counters.heartbeats = self.counters.heartbeats.saturating_add(1);
        let Link::Open(link) = &mut self.link else {
            return;
        };
        // Echo at once, outside the rate limit.
        self.outputs.push_back(Output::Transmit {
            id: link.id,
            text: beat.echo(),
        });
        link.idle_heartbeats = link.idle_heartbeats.saturating_add(1);
        link.heartbeats = link.heartbeats.saturating_add(1);
        link.active_intervals = if link.ticked_since_heartbeat {
            link.active_intervals.saturating_add(1)
        } else {
            0
        };
        link.ticked_since_heartbeat = false;
        let threshold = self.config.idle_heartbeats;
        if link.active_intervals >= threshold {
            // Ticks between heartbeats in a row: the market is active, escalation starts over.
            self.quiet_verdicts = 0;
        }
        let (proven, idle, heartbeats, last_data) = (
            link.proven_at.is_some(),
            link.idle_heartbeats,
            link.heartbeats,
            link.last_data,
        );
        if self.has_subscriptions() {
            if !proven && heartbeats >= threshold && self.queue.is_empty() {
                self.fail_connection(now, DisconnectCause::DeadSession, true, None);
                return;
            }
            if proven
                && idle >= threshold
                && !self.market_closed()
                && now >= add(last_data, self.quiet_wait())
            {
                self.quiet_verdict(now, DisconnectCause::Zombie);
                return;
            }
        }
        self.report_market(now);
    }

    fn on_data_packet(&mut self, now: Instant) {
        let Link::Open(link) = &mut self.link else {
            return;
        };
        link.idle_heartbeats = 0;
        link.last_data = now;
        if link.live {
            return;
        }
        link.live = true;
        link.last_tick = now;
        self.unavailable_since = None;
        if self.mode == Mode::Polling {
            // The stream is back: polling stops in the same step.
            self.mode = Mode::Streaming;
            self.next_poll = None;
            self.poll.stop();
        }
        // Nothing asked, nothing to acknowledge: the first data packet is all the proof there is.
        if !self.has_subscriptions() {
            self.prove(now);
        }
        self.emit_state(None);
    }

    /// The server answered on this connection's sessions: the session works.
    fn prove(&mut self, now: Instant) {
        let Link::Open(link) = &mut self.link else {
            return;
        };
        if link.proven_at.is_some() {
            return;
        }
        link.proven_at = Some(now);
        self.market_dirty = true;
        self.breaker = Breaker::Closed;
        self.token_retry_used = false;
        self.emit_state(None);
    }

    /// Whether `session` is this connection's quote or chart session.
    fn is_our_session(&self, session: &str) -> bool {
        self.open_link()
            .is_some_and(|link| link.quote_session == session || link.chart_session == session)
    }

    /// A message from `session` acknowledges it: proves the connection if the session is ours.
    fn prove_if_ours(&mut self, now: Instant, session: &str) {
        // Only until the first acknowledgement: the hot path pays one check after that.
        if self
            .open_link()
            .is_some_and(|link| link.proven_at.is_none())
            && self.is_our_session(session)
        {
            self.prove(now);
        }
    }

    /// A quote delta (already acknowledged): applied when it is for this quote session.
    fn on_quote_data(
        &mut self,
        now: Instant,
        session: &str,
        symbol: &str,
        values: &QuoteValues<'_>,
    ) {
        if self
            .open_link()
            .is_some_and(|link| link.quote_session == session)
        {
            self.apply_quote(now, symbol, values, Source::Stream);
        }
    }

    fn on_server_message(&mut self, now: Instant, parsed: ServerMessage<'_>) {
        if let Some(session) = acknowledging_session(&parsed) {
            self.prove_if_ours(now, session);
        }
        match parsed {
            ServerMessage::QuoteData(quote) => {
                self.on_quote_data(now, &quote.session, &quote.symbol, &quote.values);
            }
            ServerMessage::QuoteError(error) => {
                if let Some((symbol, _)) = self.forget_quote(error.symbol.as_ref()) {
                    self.push_event(Event::QuoteError {
                        symbol,
                        reason: error.message.into_owned(),
                    });
                }
            }
            ServerMessage::TimescaleUpdate(update) | ServerMessage::DataUpdate(update) => {
                self.on_chart_update(now, &update);
            }
            ServerMessage::SeriesCompleted(completed) => {
                if let Some(key) =
                    self.chart_key(&completed.session, &completed.series_id, SERIES_PREFIX)
                {
                    if let Some(chart) = self.charts.get_mut(&key) {
                        chart.answered = true;
                    }
                    if self.charts.get(&key).is_some_and(ChartRequest::is_history) {
                        let bars = match self.charts.get_mut(&key).map(|chart| &mut chart.kind) {
                            Some(ChartKind::History { bars, .. }) => {
                                std::mem::take(bars).into_values().collect()
                            }
                            _ => Vec::new(),
                        };
                        self.finish_history(key, Ok(bars));
                        self.send_remove_series(now, key);
                    }
                }
            }
            ServerMessage::SymbolError {
                session,
                symbol_id,
                reason,
            } => {
                if let Some(key) = self.chart_key(&session, &symbol_id, SYMBOL_PREFIX) {
                    self.fail_chart(key, ChartFailure::Symbol(reason.into_owned()));
                }
            }
            ServerMessage::SeriesError {
                session,
                series_id,
                reason,
                ..
            } => {
                if let Some(key) = self.chart_key(&session, &series_id, SERIES_PREFIX) {
                    self.fail_chart(key, ChartFailure::Series(reason.into_owned()));
                    self.send_remove_series(now, key);
                }
            }
            ServerMessage::CriticalError {
                session,
                name,
                detail,
            } => {
                self.on_critical_error(&session, &name, detail.as_deref());
                self.push_event(Event::CriticalError {
                    session: session.into_owned(),
                    name: name.into_owned(),
                    detail: detail.map(|detail| detail.into_owned()),
                });
            }
            ServerMessage::ProtocolError { text } => {
                let bad_token = text.contains("bad auth token");
                self.push_event(Event::ProtocolError {
                    text: text.into_owned(),
                });
                if bad_token {
                    self.fail_connection(now, DisconnectCause::BadAuthToken, true, None);
                    // The next attempt waits for the application's answer (or the token timeout).
                    self.outputs.push_back(Output::RequestAuthToken);
                    self.awaiting_token_until = Some(add(now, self.config.token_timeout));
                    self.emit_state(None);
                } else {
                    self.fail_connection(now, DisconnectCause::ProtocolError, true, None);
                }
            }
            ServerMessage::Hello(_)
            | ServerMessage::QuoteCompleted { .. }
            | ServerMessage::SymbolResolved(_)
            | ServerMessage::SeriesLoading { .. }
            | ServerMessage::SeriesTimeframe(_)
            | ServerMessage::StudyLoading { .. }
            | ServerMessage::StudyCompleted { .. }
            | ServerMessage::StudyError { .. }
            | ServerMessage::Unknown { .. } => {}
        }
    }

    /// A `critical_error` on the chart session that names a chart command fails the requests it
    /// names at once (the server will never complete them), or, when it names none, every chart
    /// request the server has not answered on this connection.
    fn on_critical_error(&mut self, session: &str, name: &str, detail: Option<&str>) {
        let Some(link) = self.open_link() else {
            return;
        };
        if link.chart_session != session {
            return;
        }
        let detail = detail.unwrap_or_default();
        let names_chart_command = ["create_series", "modify_series", "resolve_symbol"]
            .iter()
            .any(|method| detail.contains(method) || name.contains(method));
        if !names_chart_command {
            return;
        }
        let reason = if detail.is_empty() {
            name.to_owned()
        } else {
            format!("{name}: {detail}")
        };
        let mut keys: Vec<u64> = chart_keys_named(detail)
            .filter(|key| self.charts.contains_key(key))
            .collect();
        if keys.is_empty() {
            keys = self
                .charts
                .iter()
                .filter(|(_, chart)| !chart.answered)
                .map(|(key, _)| *key)
                .collect();
        }
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            self.fail_chart(key, ChartFailure::Rejected(reason.clone()));
        }
    }

    fn on_auth_token(&mut self, now: Instant, token: Option<AuthToken>) {
        let fresh = self.take_token_answer(now, token);
        if self.awaiting_token_until.take().is_none() {
            // Not after a rejection: a refresh (handled above), or an unasked token to use
            // from the next connection on.
            return;
        }
        let refreshed = fresh.is_some();
        self.push_event(Event::AuthTokenRejected { refreshed });
        // One immediate retry with a fresh token; another rejection waits for the backoff.
        // An attempt that was only held for this answer goes now, and is reported as now.
        let immediate = refreshed && !self.token_retry_used;
        self.token_retry_used |= immediate;
        if let Link::Waiting { at, .. } | Link::CircuitOpen { until: at } = &mut self.link {
            if immediate || *at < now {
                *at = now;
            }
        }
        self.emit_state(None);
        // The attempt may be due now: run it in this step.
        self.handle_timeout(now);
    }

    /// Removes a desired quote, keeping the out-of-session count right.
    fn forget_quote(&mut self, symbol: &str) -> Option<(Arc<str>, Quote)> {
        let (symbol, quote) = self.quotes.remove_entry(symbol)?;
        if liveness::out_of_session(quote.current_session.as_deref()) {
            self.out_of_session = self.out_of_session.saturating_sub(1);
        }
        Some((symbol, quote))
    }

    fn apply_quote(
        &mut self,
        now: Instant,
        symbol: &str,
        values: &QuoteValues<'_>,
        source: Source,
    ) {
        let Some(quote) = self.quotes.get_mut(symbol) else {
            return;
        };
        let was_out = liveness::out_of_session(quote.current_session.as_deref());
        let changed = quote.apply(values);
        let session_changed = changed.contains(QuoteFields::CURRENT_SESSION);
        let is_out = liveness::out_of_session(quote.current_session.as_deref());
        let event = QuoteEvent {
            quote: quote.clone(),
            changed,
            source,
        };
        if session_changed {
            match (was_out, is_out) {
                (false, true) => self.out_of_session = self.out_of_session.saturating_add(1),
                (true, false) => self.out_of_session = self.out_of_session.saturating_sub(1),
                _ => {}
            }
        }
        self.mark_tick(now);
        self.counters.quotes = self.counters.quotes.saturating_add(1);
        self.push_event(Event::Quote(event));
        if changed.contains(QuoteFields::CURRENT_SESSION) {
            self.market_dirty = true;
        }
    }

    fn mark_tick(&mut self, now: Instant) {
        self.last_tick = Some(now);
        if let Link::Open(link) = &mut self.link {
            link.last_tick = now;
            self.market_dirty |= !link.ticked;
            link.ticked = true;
            link.ticked_since_heartbeat = true;
        }
    }

    /// The client's clock: the latest `now` seen, so time never runs backwards inside.
    fn clock(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn on_chart_update(&mut self, now: Instant, update: &ChartUpdate<'_>) {
        let mut ticked = false;
        for series in &update.series {
            let Some(key) = self.chart_key(&update.session, &series.series_id, SERIES_PREFIX)
            else {
                continue;
            };
            let limit = self.config.max_history_bars;
            let Some(chart) = self.charts.get_mut(&key) else {
                continue;
            };
            ticked = true;
            let first_on_this_connection = !chart.answered;
            chart.answered = true;
            match &mut chart.kind {
                ChartKind::History { bars, .. } => {
                    for bar in &series.bars {
                        bars.insert(bar_time_key(bar.time), *bar);
                    }
                    if bars.len() > limit {
                        self.fail_history_too_many(now, key, limit);
                    }
                }
                ChartKind::Subscription(state) => {
                    let (symbol, timeframe) =
                        (Arc::clone(&chart.symbol), Arc::clone(&chart.timeframe));
                    let gap = if first_on_this_connection {
                        state.backfill_gap(&timeframe, &series.bars)
                    } else {
                        None
                    };
                    let mut emitted = Vec::new();
                    state.apply(&series.bars, &mut emitted);
                    // The gap comes before the bars that follow it.
                    if let Some((after, before)) = gap {
                        self.push_event(Event::BarGap(BarGap {
                            series: SeriesId(key),
                            symbol: Arc::clone(&symbol),
                            timeframe: Arc::clone(&timeframe),
                            after,
                            before,
                        }));
                    }
                    for (bar, closed) in emitted {
                        self.counters.bars = self.counters.bars.saturating_add(1);
                        let event = BarEvent {
                            series: SeriesId(key),
                            symbol: Arc::clone(&symbol),
                            timeframe: Arc::clone(&timeframe),
                            bar,
                            closed,
                        };
                        self.push_event(Event::Bar(event));
                    }
                }
            }
        }
        if ticked {
            self.mark_tick(now);
        }
    }

    fn fail_history_too_many(&mut self, now: Instant, key: u64, limit: usize) {
        self.finish_history(key, Err(HistoryError::TooManyBars(limit)));
        self.send_remove_series(now, key);
    }

    // ----- outbound ----------------------------------------------------------------------------

    /// Sends a command through the rate limit, or queues it; a full queue drops and reports it.
    fn send(&mut self, now: Instant, command: Command) {
        let Some(id) = self.open_link().map(|link| link.id) else {
            return;
        };
        let frame = command.to_frame();
        if self.queue.is_empty() && self.bucket.try_take(now) {
            self.counters.commands_sent = self.counters.commands_sent.saturating_add(1);
            self.outputs.push_back(Output::Transmit { id, text: frame });
            self.mark_sent(now);
            return;
        }
        if self.queue.push(frame).is_err() {
            self.counters.commands_dropped = self.counters.commands_dropped.saturating_add(1);
            let bound = self.queue.bound();
            match self.outputs.back_mut() {
                // One report per burst of drops.
                Some(Output::Event(Event::CommandsDropped { count, .. })) => {
                    *count = count.saturating_add(1)
                }
                _ => self.push_event(Event::CommandsDropped { count: 1, bound }),
            }
        }
        self.counters.commands_queued = self.queue.len() as u64;
    }

    fn flush_queue(&mut self, now: Instant) {
        let Some(id) = self.open_link().map(|link| link.id) else {
            return;
        };
        while !self.queue.is_empty() && self.bucket.try_take(now) {
            if let Some(frame) = self.queue.pop() {
                self.counters.commands_sent = self.counters.commands_sent.saturating_add(1);
                self.outputs.push_back(Output::Transmit { id, text: frame });
                self.mark_sent(now);
            }
        }
        self.counters.commands_queued = self.queue.len() as u64;
    }

    /// A command went out: an unacknowledged session gets its full allowance again.
    fn mark_sent(&mut self, now: Instant) {
        if let Link::Open(link) = &mut self.link {
            if link.proven_at.is_none() {
                link.heartbeats = 0;
                link.last_sent = now;
            }
        }
    }

    fn send_chart_request(&mut self, now: Instant, key: u64) {
        let Some(session) = self.open_link().map(|link| link.chart_session.clone()) else {
            return;
        };
        let Some(chart) = self.charts.get(&key) else {
            return;
        };
        let spec = SymbolSpec::new(chart.symbol.as_ref()).adjustment(Adjustment::Splits);
        let symbol_id = format!("{SYMBOL_PREFIX}{key}");
        let series_id = format!("{SERIES_PREFIX}{key}");
        let create = Command::create_series(
            session.clone(),
            series_id,
            TURNAROUND,
            symbol_id.clone(),
            chart.timeframe.as_ref(),
            chart.count,
        );
        self.send(now, Command::resolve_symbol(session, symbol_id, spec));
        self.send(now, create);
    }

    fn send_remove_series(&mut self, now: Instant, key: u64) {
        if let Some(session) = self.open_link().map(|link| link.chart_session.clone()) {
            self.send(
                now,
                Command::remove_series(session, format!("{SERIES_PREFIX}{key}")),
            );
        }
    }

    fn push_event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    // ----- timers ------------------------------------------------------------------------------

    /// Work every step ends with: queued commands, polling.
    fn after_step(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        self.flush_queue(now);
        self.update_polling(now);
    }

    fn expire_histories(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .charts
            .iter()
            .filter(|(_, chart)| matches!(chart.kind, ChartKind::History { deadline, .. } if now >= deadline))
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            self.finish_history(key, Err(HistoryError::Timeout));
            self.send_remove_series(now, key);
        }
    }

    // ----- bookkeeping -------------------------------------------------------------------------

    fn add_chart(&mut self, symbol: &str, timeframe: &str, count: u32, kind: ChartKind) -> u64 {
        let key = self.next_key;
        self.next_key = self.next_key.saturating_add(1);
        self.charts.insert(
            key,
            ChartRequest {
                symbol: Arc::from(symbol),
                timeframe: Arc::from(timeframe),
                count,
                kind,
                answered: false,
            },
        );
        key
    }

    /// The request key named by a server id (`sds_7`, `sds_sym_7`) in the current chart session.
    fn chart_key(&self, session: &str, id: &str, prefix: &str) -> Option<u64> {
        if self.open_link()?.chart_session != session {
            return None;
        }
        let key: u64 = id.strip_prefix(prefix)?.parse().ok()?;
        self.charts.contains_key(&key).then_some(key)
    }

    fn fail_chart(&mut self, key: u64, failure: ChartFailure) {
        let Some(chart) = self.charts.get(&key) else {
            return;
        };
        if chart.is_history() {
            let error = match failure {
                ChartFailure::Symbol(reason) => HistoryError::Symbol(reason),
                ChartFailure::Series(reason) => HistoryError::Series(reason),
                ChartFailure::Rejected(reason) => HistoryError::Rejected(reason),
            };
            self.finish_history(key, Err(error));
        } else if let Some(chart) = self.charts.remove(&key) {
            let reason = match failure {
                ChartFailure::Symbol(reason) | ChartFailure::Series(reason) => reason,
                ChartFailure::Rejected(reason) => format!("rejected by the server: {reason}"),
            };
            self.push_event(Event::SeriesError {
                series: SeriesId(key),
                symbol: chart.symbol,
                reason,
            });
        }
    }

    fn finish_history(&mut self, key: u64, result: Result<Vec<Bar>, HistoryError>) {
        if let Some(chart) = self.charts.remove(&key) {
            self.push_event(Event::History(HistoryEvent {
                id: HistoryId(key),
                symbol: chart.symbol,
                timeframe: chart.timeframe,
                result,
            }));
        }
    }

    fn series_count(&self) -> usize {
        self.charts
            .values()
            .filter(|chart| !chart.is_history())
            .count()
    }

    fn open_link(&self) -> Option<&OpenLink> {
        match &self.link {
            Link::Open(link) => Some(link),
            _ => None,
        }
    }

    fn current_connection(&self) -> Option<ConnectionId> {
        match &self.link {
            Link::Connecting { id, .. } => Some(*id),
            Link::Open(link) => Some(link.id),
            _ => None,
        }
    }

    fn is_closed(&self) -> bool {
        matches!(self.link, Link::Closed)
    }

    fn next_attempt(&self) -> Option<Instant> {
        match &self.link {
            Link::Waiting { at, .. } => Some(
                self.awaiting_token_until
                    .map_or(*at, |until| until.max(*at)),
            ),
            Link::CircuitOpen { until } => Some(
                self.awaiting_token_until
                    .map_or(*until, |token| token.max(*until)),
            ),
            _ => None,
        }
    }

    fn state(&self) -> State {
        match &self.link {
            Link::Waiting {
                after_failure: false,
                ..
            } if self.counters.connection_attempts == 0 => State::Idle,
            Link::Waiting { .. } => State::BackingOff,
            Link::CircuitOpen { .. } => State::CircuitOpen,
            Link::Connecting { .. } => State::Connecting,
            Link::Open(link) if link.live => State::Live,
            Link::Open(_) => State::Connecting,
            Link::Closed => State::Closed,
        }
    }

    fn emit_state(&mut self, cause: Option<DisconnectCause>) {
        let current = (self.state(), self.mode, self.next_attempt());
        if cause.is_none() && self.reported == Some(current) {
            return;
        }
        self.reported = Some(current);
        let change = StateChange {
            state: self.state(),
            mode: self.mode,
            cause,
            consecutive_failures: self.consecutive_failures,
            next_attempt: self.next_attempt(),
        };
        self.push_event(Event::State(change));
    }
}

/// The auth token: a secret, so `Debug` (of the whole client, say) shows its length only.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        config::Redacted(&self.0).fmt(formatter)
    }
}

/// Why the server will never complete a chart request.
#[derive(Debug)]
enum ChartFailure {
    /// `symbol_error`.
    Symbol(String),
    /// `series_error`.
    Series(String),
    /// `critical_error` naming the request's command.
    Rejected(String),
}

/// The session a server message answers, when the message acknowledges a subscription.
fn acknowledging_session<'a>(message: &'a ServerMessage<'_>) -> Option<&'a str> {
    Some(match message {
        ServerMessage::QuoteData(quote) => &quote.session,
        ServerMessage::QuoteError(error) => &error.session,
        ServerMessage::QuoteCompleted { session, .. }
        | ServerMessage::SymbolError { session, .. }
        | ServerMessage::SeriesError { session, .. }
        | ServerMessage::SeriesLoading { session, .. } => session,
        ServerMessage::SymbolResolved(resolved) => &resolved.session,
        ServerMessage::SeriesCompleted(completed) => &completed.session,
        ServerMessage::TimescaleUpdate(update) | ServerMessage::DataUpdate(update) => {
            &update.session
        }
        _ => return None,
    })
}

/// The request keys a server text names by our ids (`sds_7`, `sds_sym_7`), in order.
fn chart_keys_named(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.match_indices(SERIES_PREFIX)
        .filter_map(move |(at, _)| {
            let rest = text.get(at.saturating_add(SERIES_PREFIX.len())..)?;
            let rest = rest.strip_prefix("sym_").unwrap_or(rest);
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            rest.get(..digits)?.parse().ok()
        })
}

impl ChartRequest {
    fn is_history(&self) -> bool {
        matches!(self.kind, ChartKind::History { .. })
    }
}

impl SeriesState {
    /// The gap a connection's first bars leave after what was emitted on earlier ones: the
    /// open time of the last bar whose final state is known and of the earliest new one, when
    /// bars opening strictly between them may be missing. `None` for a first connection, an
    /// overlapping backfill, or a timeframe or time that cannot be read.
    ///
    /// A bar still forming when the last connection ended, and older than the whole backfill,
    /// never gets its final state: it is dropped here rather than closed with stale values,
    /// and falls inside the gap.
    fn backfill_gap(&mut self, timeframe: &str, bars: &[Bar]) -> Option<(f64, f64)> {
        let earliest = bars
            .iter()
            .map(|bar| bar.time)
            .filter(|time| time.is_finite())
            .min_by(f64::total_cmp)?;
        let period = Timeframe::parse(timeframe).ok()?;
        // Bar times are whole seconds; a saturating cast of anything else only makes the
        // comparisons below conservative.
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let period_end = |time: f64| period.period_end(time.floor() as i64).map(|end| end as f64);
        let known = match (self.forming, self.last_closed_time) {
            (Some(forming), closed) if earliest > forming.time => {
                self.forming = None;
                // Bar times are whole seconds: no bar opens in (forming - 1 s, forming).
                closed.unwrap_or(forming.time - 1.0)
            }
            (Some(forming), _) => forming.time,
            (None, Some(closed)) => closed,
            (None, None) => return None,
        };
        let next_open = period_end(known)?;
        (earliest > next_open).then_some((known, earliest))
    }

    /// Turns incoming bars into (bar, closed) events: every bar but the last of a batch is
    /// closed, a newer bar closes the forming one, and bars already emitted as closed (a
    /// reconnect's backfill) are dropped.
    fn apply(&mut self, bars: &[Bar], out: &mut Vec<(Bar, bool)>) {
        let last_index = bars.len().saturating_sub(1);
        for (index, bar) in bars.iter().enumerate() {
            if self
                .last_closed_time
                .is_some_and(|closed| bar.time <= closed)
            {
                continue;
            }
            if let Some(forming) = self.forming {
                if bar.time > forming.time {
                    out.push((forming, true));
                    self.last_closed_time = Some(forming.time);
                    self.forming = None;
                } else if bar.time < forming.time {
                    // Older than the forming bar yet never emitted as closed: out of order; skip.
                    continue;
                }
            }
            if index == last_index {
                if self.forming != Some(*bar) {
                    self.forming = Some(*bar);
                    out.push((*bar, false));
                }
            } else {
                self.forming = None;
                self.last_closed_time = Some(bar.time);
                out.push((*bar, true));
            }
        }
    }
}

/// A bar time as a map key: whole milliseconds (bar times are whole seconds in practice).
fn bar_time_key(time: f64) -> i64 {
    #[allow(clippy::cast_possible_truncation)] // saturating float-to-int cast is the intent
    let millis = (time * 1000.0).round() as i64;
    millis
}

/// `at + duration`, saturating far in the future rather than wrapping or panicking.
fn add(at: Instant, duration: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(duration.min(FAR)).unwrap_or(at)
}

#[cfg(test)]
mod tests;

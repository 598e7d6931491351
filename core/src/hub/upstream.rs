//! The relay's upstream side: the [`Hub`] composed with the upstream feed ([`Fanout`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use super::{CloseReason, ConnId, Frame, Hub, HubConfig, HubConfigError, HubOutput, Refused};
use crate::client::{BarsError, Client, Config, Event, SeriesId};
use crate::timeframe::Timeframe;

/// The most bars of history a relayed series may load when it opens.
pub const MAX_BAR_HISTORY: u32 = 5_000;

/// What the upstream carries for each symbol the hub wants.
///
/// ```
/// use tickwire_core::hub::UpstreamPlan;
///
/// let plan = UpstreamPlan::default();
/// assert_eq!(plan.bars, None); // quotes only
/// assert_eq!(plan.bar_history, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPlan {
    /// The bar timeframe carried per symbol (any form [`Timeframe::parse`] accepts: `1`, `5m`,
    /// `1h`, `1D`…); `None` carries quotes only. Each series costs rate-limited upstream
    /// commands.
    pub bars: Option<String>,
    /// Bars loaded when a series opens: 2 gives the forming bar and the last closed one, all a
    /// live view needs; a chart wants more.
    pub bar_history: u32,
}

impl Default for UpstreamPlan {
    fn default() -> Self {
        UpstreamPlan {
            bars: None,
            bar_history: 2,
        }
    }
}

/// A hub and upstream pairing that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FanoutError {
    /// A hub limit is unusable.
    #[error(transparent)]
    Hub(#[from] HubConfigError),
    /// The plan's bar timeframe is not one the server accepts.
    #[error("bars timeframe: {0}")]
    Timeframe(String),
    /// The plan's history is 0 or over [`MAX_BAR_HISTORY`].
    #[error("bar history of {0} bars: it must be 1 to {MAX_BAR_HISTORY}")]
    BarHistory(u32),
    /// The hub may carry more symbols than the upstream client accepts.
    #[error(
        "the hub may carry {hub} symbols upstream (max_upstream_symbols) but the upstream client \
         accepts at most {client} subscriptions (max_subscriptions): lower the first or raise \
         the second"
    )]
    UpstreamCap {
        /// [`HubConfig::max_upstream_symbols`].
        hub: usize,
        /// The client's [`Config::max_subscriptions`].
        client: usize,
    },
}

/// The upstream feed as the fanout uses it: the core [`Client`], or a driver's handle to one.
pub trait UpstreamFeed {
    /// Adds quote symbols; returns how many were new.
    fn subscribe_quotes(&mut self, now: Instant, symbols: &[Arc<str>]) -> usize;
    /// Removes quote symbols.
    fn unsubscribe_quotes(&mut self, now: Instant, symbols: &[Arc<str>]);
    /// Whether the quotes of `symbol` are subscribed.
    fn carries_quote(&self, symbol: &str) -> bool;
    /// Opens a bar series of `symbol` at `timeframe`, loading `history` bars first.
    ///
    /// # Errors
    /// The feed refuses it ([`BarsError`]).
    fn subscribe_bars(
        &mut self,
        now: Instant,
        symbol: &str,
        timeframe: &str,
        history: u32,
    ) -> Result<SeriesId, BarsError>;
    /// Closes a bar series.
    fn unsubscribe_bars(&mut self, now: Instant, series: SeriesId);
}

impl UpstreamFeed for Client {
    fn subscribe_quotes(&mut self, now: Instant, symbols: &[Arc<str>]) -> usize {
        Client::subscribe_quotes(self, now, symbols)
    }

    fn unsubscribe_quotes(&mut self, now: Instant, symbols: &[Arc<str>]) {
        Client::unsubscribe_quotes(self, now, symbols);
    }

    fn carries_quote(&self, symbol: &str) -> bool {
        self.quote(symbol).is_some()
    }

    fn subscribe_bars(
        &mut self,
        now: Instant,
        symbol: &str,
        timeframe: &str,
        history: u32,
    ) -> Result<SeriesId, BarsError> {
        Client::subscribe_bars(self, now, symbol, timeframe, history)
    }

    fn unsubscribe_bars(&mut self, now: Instant, series: SeriesId) {
        Client::unsubscribe_bars(self, now, series);
    }
}

/// What the server must do downstream.
#[derive(Debug, Clone, PartialEq)]
pub enum FanoutOutput {
    /// Send `frame` to `conn`, then report it with [`Fanout::handle_written`] once written.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// The text.
        frame: Frame,
    },
    /// Close `conn` with [`CloseReason::close_code`] (or drop it if the socket takes no more).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// What the fanout did upstream, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanoutCounters {
    /// Quote symbols subscribed upstream.
    pub quotes_subscribed: u64,
    /// Quote symbols unsubscribed upstream.
    pub quotes_unsubscribed: u64,
    /// Symbols the upstream feed had no room for (refused downstream with `UPSTREAM_LIMIT`).
    pub symbols_refused: u64,
    /// Bar series opened.
    pub series_opened: u64,
    /// Bar series closed (the symbol left, or upstream rejected its quotes).
    pub series_closed: u64,
    /// Bar series refused, by the feed or by the server (downstream `BARS_UNAVAILABLE`).
    pub series_refused: u64,
    /// Bars of a series the fanout no longer holds, ignored.
    pub stale_bars: u64,
}

/// How far behind one downstream connection is (see [`Fanout::backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBacklog {
    /// Frames waiting in the hub for the socket writer.
    pub queued: usize,
    /// Frames handed to the socket writer and not yet reported written.
    pub in_flight: usize,
    /// Symbols whose latest state the connection is owed as a snapshot while conflated.
    pub owed: usize,
    /// Since when the connection has been behind (conflated), if it is.
    pub behind_since: Option<Instant>,
}

/// The relay's upstream side: the [`Hub`] composed with the upstream feed.
///
/// [`Fanout`] owns the hub and decides what the upstream feed carries for it: the quotes of
/// every symbol the hub wants, and, when an [`UpstreamPlan`] names a timeframe, one bar series
/// per symbol with a set history. It turns what the upstream reports (quotes, bars, rejected
/// symbols and series, connection states) into hub inputs, and upstream refusals into
/// downstream errors. Limits are reconciled once, at construction: a hub that may carry more
/// symbols than the upstream client accepts is refused with a clear error instead of dropping
/// symbols without a word later.
///
/// The upstream feed is anything that implements [`UpstreamFeed`]: the core [`Client`] itself
/// (as the deterministic simulation drives it) or a driver's feed handle (as the relay server
/// does). A server built on `Fanout` only moves bytes and time.
///
/// # Driving contract
///
/// - **Inputs.** Downstream socket events go to the matching method ([`Fanout::connect`],
///   [`Fanout::handle_text`], [`Fanout::handle_written`], [`Fanout::disconnect`]…), upstream
///   events to [`Fanout::handle_event`], and the time returned by [`Fanout::poll_timeout`]
///   passing to [`Fanout::handle_timeout`]; each with the current time, which must not go
///   backwards.
/// - **Outputs.** After every input, call [`Fanout::poll_output`] until it returns `None`,
///   passing the upstream feed: upstream commands (subscribe, unsubscribe, open or close a bar
///   series) are carried out on it during the drain, in the order the hub decided them, and
///   only the downstream outputs ([`FanoutOutput`]) come back, in order, for the server to
///   execute.
/// - **Bounds.** The series map holds at most one series per carried symbol, so it is bounded
///   by [`HubConfig::max_upstream_symbols`].
///
/// ```
/// use std::time::Instant;
/// use tickwire_core::client::{Client, Config};
/// use tickwire_core::hub::{Fanout, FanoutOutput, HubConfig, UpstreamPlan};
///
/// let now = Instant::now();
/// let upstream_config = Config::default();
/// let mut upstream = Client::new(upstream_config.clone(), now);
/// let hub = HubConfig { upstream_batch_delay: std::time::Duration::ZERO, ..HubConfig::default() };
/// let plan = UpstreamPlan { bars: Some("1".to_owned()), ..UpstreamPlan::default() };
/// let mut fanout = Fanout::new(hub, plan, &upstream_config).unwrap();
///
/// let conn = fanout.connect(now).unwrap();
/// fanout.handle_text(now, conn, r#"{"action":"subscribe","symbols":["FX:EURUSD"]}"#);
/// let mut frames = 0;
/// while let Some(output) = fanout.poll_output(now, &mut upstream) {
///     if let FanoutOutput::Transmit { .. } = output {
///         frames += 1;
///     }
/// }
/// assert_eq!(frames, 2); // the status, then the snapshot
/// // The upstream client now carries the quotes and one 1-minute bar series.
/// assert_eq!(upstream.quote_symbols().len(), 1);
/// assert_eq!(upstream.bar_subscriptions().len(), 1);
///
/// // A hub that may want more symbols than the client accepts is refused up front.
/// let greedy = HubConfig { max_upstream_symbols: 20_000, ..HubConfig::default() };
/// assert!(Fanout::new(greedy, UpstreamPlan::default(), &upstream_config).is_err());
/// ```
#[derive(Debug)]
pub struct Fanout {
    hub: Hub,
    timeframe: Option<Timeframe>,
    bar_history: u32,
    /// The open bar series of each carried symbol.
    series: HashMap<Arc<str>, SeriesId>,
    /// Series to close upstream at the next drain (their symbol's quotes were rejected).
    series_to_close: Vec<SeriesId>,
    counters: FanoutCounters,
}

impl Fanout {
    /// A fanout over a new hub, for an upstream client configured as `upstream`.
    ///
    /// # Errors
    /// [`FanoutError`]: an unusable hub limit, bar timeframe or history, or a hub that may
    /// carry more symbols than the client accepts.
    pub fn new(
        hub: HubConfig,
        plan: UpstreamPlan,
        upstream: &Config,
    ) -> Result<Fanout, FanoutError> {
        if hub.max_upstream_symbols > upstream.max_subscriptions {
            return Err(FanoutError::UpstreamCap {
                hub: hub.max_upstream_symbols,
                client: upstream.max_subscriptions,
            });
        }
        let timeframe = plan
            .bars
            .as_deref()
            .map(Timeframe::parse)
            .transpose()
            .map_err(|error| FanoutError::Timeframe(error.to_string()))?;
        if plan.bar_history == 0 || plan.bar_history > MAX_BAR_HISTORY {
            return Err(FanoutError::BarHistory(plan.bar_history));
        }
        Ok(Fanout {
            hub: Hub::new(hub)?,
            timeframe,
            bar_history: plan.bar_history,
            series: HashMap::new(),
            series_to_close: Vec::new(),
            counters: FanoutCounters::default(),
        })
    }

    /// The hub (its counters, symbols and connections, for metrics).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// What the fanout did upstream.
    pub fn counters(&self) -> &FanoutCounters {
        &self.counters
    }

    /// The bar timeframe carried per symbol, in the server's form.
    pub fn timeframe(&self) -> Option<&str> {
        self.timeframe.as_ref().map(Timeframe::as_str)
    }

    /// The open bar series of `symbol`.
    pub fn series_of(&self, symbol: &str) -> Option<SeriesId> {
        self.series.get(symbol).copied()
    }

    /// Bar series open upstream.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// How far behind `conn` is: its queue, its unwritten frames, what it is owed (for metrics
    /// and for checking the queue bounds from outside); `None` for an unknown connection.
    pub fn backlog(&self, conn: ConnId) -> Option<ConnectionBacklog> {
        self.hub
            .connections
            .get(&conn)
            .map(|connection| ConnectionBacklog {
                queued: connection.backlog.len(),
                in_flight: connection.in_flight,
                owed: connection.owed.len(),
                behind_since: connection.behind_since,
            })
    }

    // ----- downstream inputs ---------------------------------------------------------------

    /// A new downstream connection (see [`Hub::connect`]).
    ///
    /// # Errors
    /// [`Refused`] at the connection limit or after shutdown.
    pub fn connect(&mut self, now: Instant) -> Result<ConnId, Refused> {
        self.hub.connect(now)
    }

    /// The socket of `conn` ended (see [`Hub::disconnect`]).
    pub fn disconnect(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        self.hub.disconnect(now, conn, reason);
    }

    /// A text message from `conn` (see [`Hub::handle_text`]).
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        self.hub.handle_text(now, conn, text);
    }

    /// A binary message of `bytes` bytes from `conn` (see [`Hub::handle_binary`]).
    pub fn handle_binary(&mut self, now: Instant, conn: ConnId, bytes: usize) {
        self.hub.handle_binary(now, conn, bytes);
    }

    /// A ping or pong from `conn` (see [`Hub::handle_activity`]).
    pub fn handle_activity(&mut self, now: Instant, conn: ConnId) {
        self.hub.handle_activity(now, conn);
    }

    /// `frames` frames of `conn` were written (see [`Hub::handle_written`]).
    pub fn handle_written(&mut self, now: Instant, conn: ConnId, frames: usize) {
        self.hub.handle_written(now, conn, frames);
    }

    /// Closes every connection and refuses new ones; the symbols then linger and leave the
    /// upstream as usual.
    pub fn shutdown(&mut self, now: Instant) {
        self.hub.shutdown(now);
    }

    // ----- upstream inputs and time --------------------------------------------------------

    /// Something the upstream feed reported.
    pub fn handle_event(&mut self, now: Instant, event: &Event) {
        match event {
            Event::Quote(quote) => self.hub.handle_quote(now, &quote.quote),
            Event::Bar(bar) => {
                if self.series.get(&bar.symbol) == Some(&bar.series) {
                    self.hub
                        .handle_bar(now, &bar.symbol, &bar.timeframe, &bar.bar, bar.closed);
                } else {
                    self.counters.stale_bars = self.counters.stale_bars.saturating_add(1);
                }
            }
            Event::QuoteError { symbol, reason } => {
                // The client has dropped the quotes; the symbol's series goes with them.
                if let Some(series) = self.series.remove(symbol) {
                    self.series_to_close.push(series);
                }
                self.hub.handle_symbol_error(now, symbol, reason);
            }
            // The client has removed the series already; a stale one says nothing.
            Event::SeriesError {
                series,
                symbol,
                reason,
            } if self.series.get(symbol) == Some(series) => {
                self.series.remove(symbol);
                self.counters.series_refused = self.counters.series_refused.saturating_add(1);
                self.hub.handle_series_error(now, symbol, reason);
            }
            Event::State(change) => self.hub.handle_upstream_state(now, change.state),
            _ => {}
        }
    }

    /// A merged quote from a source other than the feed's events (a cluster's stream): the
    /// same as an [`Event::Quote`].
    pub fn handle_quote(&mut self, now: Instant, quote: &crate::client::Quote) {
        self.hub.handle_quote(now, quote);
    }

    /// A bar of `symbol`'s carried series from a source other than the feed's events (a
    /// cluster's stream, which only carries the series the fanout asked for): the same as an
    /// [`Event::Bar`] of the held series.
    pub fn handle_bar(
        &mut self,
        now: Instant,
        symbol: &str,
        timeframe: &Arc<str>,
        bar: &crate::message::Bar,
        closed: bool,
    ) {
        if self.series.contains_key(symbol) {
            self.hub.handle_bar(now, symbol, timeframe, bar, closed);
        } else {
            self.counters.stale_bars = self.counters.stale_bars.saturating_add(1);
        }
    }

    /// The source rejected `symbol` (a cluster's stream): the same as an
    /// [`Event::QuoteError`].
    pub fn handle_symbol_error(&mut self, now: Instant, symbol: &str, reason: &str) {
        if let Some(series) = self.series.remove(symbol) {
            self.series_to_close.push(series);
        }
        self.hub.handle_symbol_error(now, symbol, reason);
    }

    /// The source refused `symbol`'s bar series (a cluster's stream): the same as an
    /// [`Event::SeriesError`] of the held series.
    pub fn handle_series_error(&mut self, now: Instant, symbol: &str, reason: &str) {
        if self.series.remove(symbol).is_some() {
            self.counters.series_refused = self.counters.series_refused.saturating_add(1);
            self.hub.handle_series_error(now, symbol, reason);
        }
    }

    /// The upstream state as another source reports it (a cluster's leader): the same as an
    /// [`Event::State`].
    pub fn handle_upstream_state(&mut self, now: Instant, state: crate::client::State) {
        self.hub.handle_upstream_state(now, state);
    }

    /// The cluster store was lost or is back (see [`Hub::set_degraded`]).
    pub fn set_degraded(&mut self, now: Instant, degraded: bool) {
        self.hub.set_degraded(now, degraded);
    }

    /// `quote` is the symbol's whole state from another source: it replaces the hub's and
    /// subscribers get a fresh snapshot (see [`Hub::resync`]).
    pub fn resync(&mut self, now: Instant, quote: &crate::client::Quote) {
        self.hub.resync(now, quote);
    }

    /// The last known state of `quote.symbol` (its quote and optionally its last bar: the
    /// timeframe, the bar, whether it had closed), loaded from a store before upstream has said
    /// anything: the first subscriber gets it in a snapshot marked `"stale":true` until
    /// upstream's first quote confirms the symbol. False if nothing was kept (see
    /// [`Hub::preload`]).
    pub fn preload(
        &mut self,
        now: Instant,
        quote: crate::client::Quote,
        bar: Option<(Arc<str>, crate::message::Bar, bool)>,
    ) -> bool {
        self.hub.preload(now, quote, bar)
    }

    /// `symbol` was resynchronised: its subscribers get a fresh snapshot (see
    /// [`Hub::refresh`]).
    pub fn refresh(&mut self, now: Instant, symbol: &str) {
        self.hub.refresh(now, symbol);
    }

    /// When to call [`Fanout::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.hub.poll_timeout()
    }

    /// Time passed (see [`Hub::handle_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.hub.handle_timeout(now);
    }

    // ----- outputs -------------------------------------------------------------------------

    /// The next downstream output, after carrying out on `upstream` every upstream change
    /// decided before it. Drain after every input.
    pub fn poll_output(
        &mut self,
        now: Instant,
        upstream: &mut impl UpstreamFeed,
    ) -> Option<FanoutOutput> {
        loop {
            for series in self.series_to_close.drain(..) {
                upstream.unsubscribe_bars(now, series);
                self.counters.series_closed = self.counters.series_closed.saturating_add(1);
            }
            match self.hub.poll_output()? {
                HubOutput::Transmit { conn, frame } => {
                    return Some(FanoutOutput::Transmit { conn, frame });
                }
                HubOutput::Close { conn, reason } => {
                    return Some(FanoutOutput::Close { conn, reason });
                }
                HubOutput::UnsubscribeUpstream(symbols) => {
                    self.unsubscribe(now, &symbols, upstream);
                }
                HubOutput::SubscribeUpstream(symbols) => self.subscribe(now, &symbols, upstream),
            }
        }
    }

    fn unsubscribe(
        &mut self,
        now: Instant,
        symbols: &[Arc<str>],
        upstream: &mut impl UpstreamFeed,
    ) {
        upstream.unsubscribe_quotes(now, symbols);
        self.counters.quotes_unsubscribed = self
            .counters
            .quotes_unsubscribed
            .saturating_add(symbols.len() as u64);
        for symbol in symbols {
            if let Some(series) = self.series.remove(symbol) {
                upstream.unsubscribe_bars(now, series);
                self.counters.series_closed = self.counters.series_closed.saturating_add(1);
            }
        }
    }

    fn subscribe(&mut self, now: Instant, symbols: &[Arc<str>], upstream: &mut impl UpstreamFeed) {
        let added = upstream.subscribe_quotes(now, symbols);
        self.counters.quotes_subscribed =
            self.counters.quotes_subscribed.saturating_add(added as u64);
        let mut carried: Vec<&Arc<str>> = symbols.iter().collect();
        if added < symbols.len() {
            // Limits are reconciled at construction, so this only happens when something else
            // shares the feed: whatever did not fit is refused downstream, never dropped.
            carried.retain(|symbol| {
                let fits = upstream.carries_quote(symbol);
                if !fits {
                    self.counters.symbols_refused = self.counters.symbols_refused.saturating_add(1);
                    self.hub.reject_symbol(
                        now,
                        symbol,
                        "UPSTREAM_LIMIT",
                        "the upstream feed has no room for more symbols; try again later",
                    );
                }
                fits
            });
        }
        let Some(timeframe) = self.timeframe.as_ref().map(|t| t.as_str().to_owned()) else {
            return;
        };
        for symbol in carried {
            if let Some(old) = self.series.remove(symbol) {
                upstream.unsubscribe_bars(now, old);
                self.counters.series_closed = self.counters.series_closed.saturating_add(1);
            }
            match upstream.subscribe_bars(now, symbol, &timeframe, self.bar_history) {
                Ok(series) => {
                    self.series.insert(symbol.clone(), series);
                    self.counters.series_opened = self.counters.series_opened.saturating_add(1);
                }
                Err(error) => {
                    self.counters.series_refused = self.counters.series_refused.saturating_add(1);
                    self.hub
                        .handle_series_error(now, symbol, &error.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::client::{BarEvent, StateChange};
    use crate::message::Bar;

    /// An upstream feed that records what it is asked and accepts up to `room` symbols.
    #[derive(Default)]
    struct Recorder {
        quotes: BTreeSet<String>,
        room: usize,
        next_series: u64,
        series: HashMap<SeriesId, String>,
        refuse_bars: bool,
        closed_series: Vec<SeriesId>,
    }

    impl UpstreamFeed for Recorder {
        fn subscribe_quotes(&mut self, _: Instant, symbols: &[Arc<str>]) -> usize {
            let mut added = 0;
            for symbol in symbols {
                if self.quotes.len() < self.room && self.quotes.insert(symbol.to_string()) {
                    added += 1;
                }
            }
            added
        }
        fn unsubscribe_quotes(&mut self, _: Instant, symbols: &[Arc<str>]) {
            for symbol in symbols {
                self.quotes.remove(symbol.as_ref());
            }
        }
        fn carries_quote(&self, symbol: &str) -> bool {
            self.quotes.contains(symbol)
        }
        fn subscribe_bars(
            &mut self,
            _: Instant,
            symbol: &str,
            timeframe: &str,
            history: u32,
        ) -> Result<SeriesId, BarsError> {
            assert_eq!((timeframe, history), ("5", 3));
            if self.refuse_bars {
                return Err(BarsError::TooMany(0));
            }
            self.next_series += 1;
            let series = SeriesId(self.next_series);
            self.series.insert(series, symbol.to_owned());
            Ok(series)
        }
        fn unsubscribe_bars(&mut self, _: Instant, series: SeriesId) {
            assert!(self.series.remove(&series).is_some(), "closed twice");
            self.closed_series.push(series);
        }
    }

    fn fanout(room: usize) -> (Fanout, Recorder, Instant) {
        let hub = HubConfig {
            upstream_batch_delay: Duration::ZERO,
            linger: Duration::ZERO,
            ..HubConfig::default()
        };
        let plan = UpstreamPlan {
            bars: Some("5m".to_owned()),
            bar_history: 3,
        };
        let fanout = Fanout::new(hub, plan, &Config::default()).unwrap();
        let recorder = Recorder {
            room,
            ..Recorder::default()
        };
        (fanout, recorder, Instant::now())
    }

    fn drain(fanout: &mut Fanout, upstream: &mut Recorder, now: Instant) -> Vec<String> {
        let mut frames = Vec::new();
        while let Some(output) = fanout.poll_output(now, upstream) {
            if let FanoutOutput::Transmit { frame, .. } = output {
                frames.push(frame.as_str().to_owned());
            }
        }
        frames
    }

    #[test]
    fn limits_are_reconciled_at_construction() {
        let client = Config {
            max_subscriptions: 100,
            ..Config::default()
        };
        let hub = HubConfig {
            max_upstream_symbols: 101,
            ..HubConfig::default()
        };
        let error = Fanout::new(hub.clone(), UpstreamPlan::default(), &client).unwrap_err();
        assert_eq!(
            error,
            FanoutError::UpstreamCap {
                hub: 101,
                client: 100
            }
        );
        assert!(error.to_string().contains("max_upstream_symbols"));
        let fits = HubConfig {
            max_upstream_symbols: 100,
            ..hub
        };
        assert!(Fanout::new(fits.clone(), UpstreamPlan::default(), &client).is_ok());
        let bad_bars = UpstreamPlan {
            bars: Some("7X".to_owned()),
            ..UpstreamPlan::default()
        };
        let error = Fanout::new(fits.clone(), bad_bars, &client).unwrap_err();
        assert!(matches!(error, FanoutError::Timeframe(_)), "{error}");
        for history in [0, MAX_BAR_HISTORY + 1] {
            let plan = UpstreamPlan {
                bar_history: history,
                ..UpstreamPlan::default()
            };
            assert_eq!(
                Fanout::new(fits.clone(), plan, &client).unwrap_err(),
                FanoutError::BarHistory(history)
            );
        }
        let zero = HubConfig {
            send_window: 0,
            ..fits
        };
        assert!(matches!(
            Fanout::new(zero, UpstreamPlan::default(), &client),
            Err(FanoutError::Hub(_))
        ));
    }

    #[test]
    fn each_wanted_symbol_gets_quotes_and_one_series_until_nobody_wants_it() {
        let (mut fanout, mut upstream, now) = fanout(10);
        let a = fanout.connect(now).unwrap();
        fanout.handle_text(now, a, r#"{"action":"subscribe","symbols":["X:A","X:B"]}"#);
        drain(&mut fanout, &mut upstream, now);
        assert_eq!(
            upstream.quotes,
            BTreeSet::from(["X:A".into(), "X:B".into()])
        );
        assert_eq!(upstream.series.len(), 2);
        assert_eq!(fanout.series_count(), 2);
        let series_b = fanout.series_of("X:B").unwrap();
        fanout.handle_text(now, a, r#"{"action":"unsubscribe","symbols":["X:B"]}"#);
        drain(&mut fanout, &mut upstream, now);
        assert_eq!(upstream.quotes, BTreeSet::from(["X:A".into()]));
        assert_eq!(upstream.closed_series, [series_b]);
        assert_eq!(fanout.series_of("X:B"), None);
        fanout.disconnect(now, a, CloseReason::ClientClosed);
        drain(&mut fanout, &mut upstream, now);
        assert!(upstream.quotes.is_empty() && upstream.series.is_empty());
        assert_eq!(fanout.counters().series_opened, 2);
        assert_eq!(fanout.counters().series_closed, 2);
    }

    #[test]
    fn bars_of_the_held_series_reach_subscribers_and_stale_ones_do_not() {
        let (mut fanout, mut upstream, now) = fanout(10);
        let a = fanout.connect(now).unwrap();
        fanout.handle_text(now, a, r#"{"action":"subscribe","symbols":["X:A"]}"#);
        drain(&mut fanout, &mut upstream, now);
        let held = fanout.series_of("X:A").unwrap();
        let bar = |series, time: f64| {
            Event::Bar(BarEvent {
                series,
                symbol: Arc::from("X:A"),
                timeframe: Arc::from("5"),
                bar: Bar {
                    index: 0,
                    time,
                    open: 1.0,
                    high: 2.0,
                    low: 0.5,
                    close: 1.5,
                    volume: Some(3.0),
                },
                closed: false,
            })
        };
        fanout.handle_event(now, &bar(held, 60.0));
        let frames = drain(&mut fanout, &mut upstream, now);
        assert_eq!(frames.len(), 1);
        assert!(
            frames[0].starts_with(r#"{"type":"bar","symbol":"X:A""#),
            "{}",
            frames[0]
        );
        fanout.handle_event(now, &bar(SeriesId(held.0 + 100), 120.0));
        assert!(drain(&mut fanout, &mut upstream, now).is_empty());
        assert_eq!(fanout.counters().stale_bars, 1);
    }

    #[test]
    fn upstream_rejections_become_downstream_errors() {
        let (mut fanout, mut upstream, now) = fanout(10);
        let a = fanout.connect(now).unwrap();
        fanout.handle_text(
            now,
            a,
            r#"{"action":"subscribe","symbols":["X:A","BAD:NOPE"]}"#,
        );
        drain(&mut fanout, &mut upstream, now);
        let bad_series = fanout.series_of("BAD:NOPE").unwrap();
        // The quotes of BAD:NOPE are rejected: its subscriber is told, its series goes too.
        fanout.handle_event(
            now,
            &Event::QuoteError {
                symbol: Arc::from("BAD:NOPE"),
                reason: "no_such_symbol".to_owned(),
            },
        );
        let frames = drain(&mut fanout, &mut upstream, now);
        assert_eq!(frames.len(), 1);
        assert!(
            frames[0].contains(r#""code":"UNKNOWN_SYMBOL""#),
            "{}",
            frames[0]
        );
        assert!(frames[0].contains(r#""symbol":"BAD:NOPE""#));
        assert_eq!(upstream.closed_series, [bad_series]);
        assert_eq!(fanout.hub().subscriptions(a).count(), 1);
        // X:A's series is refused by the server: its subscriber keeps the quotes.
        let series = fanout.series_of("X:A").unwrap();
        fanout.handle_event(
            now,
            &Event::SeriesError {
                series,
                symbol: Arc::from("X:A"),
                reason: "invalid parameters".to_owned(),
            },
        );
        let frames = drain(&mut fanout, &mut upstream, now);
        assert_eq!(frames.len(), 1);
        assert!(
            frames[0].contains(r#""code":"BARS_UNAVAILABLE""#),
            "{}",
            frames[0]
        );
        assert_eq!(fanout.series_of("X:A"), None);
        assert_eq!(fanout.hub().subscriptions(a).count(), 1);
        // A stale series error (not the series held) changes nothing.
        fanout.handle_event(
            now,
            &Event::SeriesError {
                series,
                symbol: Arc::from("X:A"),
                reason: "again".to_owned(),
            },
        );
        assert!(drain(&mut fanout, &mut upstream, now).is_empty());
    }

    #[test]
    fn what_the_feed_has_no_room_for_is_refused_downstream_and_bars_errors_are_reported() {
        let (mut fanout, mut upstream, now) = fanout(1);
        upstream.refuse_bars = true;
        let a = fanout.connect(now).unwrap();
        fanout.handle_text(now, a, r#"{"action":"subscribe","symbols":["X:A","X:B"]}"#);
        let frames = drain(&mut fanout, &mut upstream, now);
        let limit: Vec<&String> = frames
            .iter()
            .filter(|frame| frame.contains(r#""code":"UPSTREAM_LIMIT""#))
            .collect();
        assert_eq!(limit.len(), 1, "{frames:?}");
        assert!(limit[0].contains(r#""symbol":"X:B""#));
        assert!(
            frames
                .iter()
                .any(|frame| frame.contains("BARS_UNAVAILABLE"))
        );
        assert_eq!(upstream.quotes, BTreeSet::from(["X:A".into()]));
        assert_eq!(
            fanout
                .hub()
                .subscriptions(a)
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            ["X:A"]
        );
        assert_eq!(fanout.counters().symbols_refused, 1);
    }

    #[test]
    fn a_connection_full_of_control_frames_stays_within_its_bound_when_it_falls_behind() {
        // Found by the relay simulation: the SLOW_CONSUMER warning went in beyond the control
        // headroom, one frame over the documented bound.
        let (mut fanout, mut upstream, now) = fanout(10);
        let capacity = fanout.hub().config().queue_capacity;
        let bound = capacity + super::super::CONTROL_HEADROOM;
        let a = fanout.connect(now).unwrap();
        fanout.handle_text(now, a, r#"{"action":"subscribe","symbols":["X:A"]}"#);
        drain(&mut fanout, &mut upstream, now);
        // It reads nothing; its replies pile up to the control bound.
        for _ in 0..bound {
            fanout.handle_activity(now, a);
            fanout
                .hub
                .handle_upstream_state(now, crate::client::State::Live);
            fanout
                .hub
                .handle_upstream_state(now, crate::client::State::Connecting);
        }
        drain(&mut fanout, &mut upstream, now);
        let backlog = fanout.backlog(a).unwrap();
        assert_eq!(backlog.queued + backlog.in_flight, bound);
        assert_eq!(backlog.behind_since, None);
        // A quote now finds it full: it falls behind, and the warning is dropped, not queued.
        let dropped = fanout.hub().counters().control_frames_dropped;
        let quote = crate::client::Quote {
            last_price: Some(1.0),
            ..crate::client::Quote::new(Arc::from("X:A"))
        };
        fanout.hub.handle_quote(now, &quote);
        drain(&mut fanout, &mut upstream, now);
        let backlog = fanout.backlog(a).unwrap();
        assert_eq!(backlog.queued + backlog.in_flight, bound);
        assert_eq!(backlog.behind_since, Some(now));
        assert_eq!(backlog.owed, 1);
        assert_eq!(fanout.hub().counters().control_frames_dropped, dropped + 1);
        assert_eq!(fanout.hub().counters().slow_consumer_warnings, 0);
    }

    #[test]
    fn upstream_states_reach_every_connection() {
        let (mut fanout, mut upstream, now) = fanout(10);
        let a = fanout.connect(now).unwrap();
        drain(&mut fanout, &mut upstream, now);
        let change = StateChange {
            state: crate::client::State::Live,
            mode: crate::client::Mode::Streaming,
            cause: None,
            consecutive_failures: 0,
            next_attempt: None,
        };
        fanout.handle_event(now, &Event::State(change));
        let frames = drain(&mut fanout, &mut upstream, now);
        assert_eq!(frames, [r#"{"type":"status","upstream":"live"}"#]);
        let _ = a;
    }
}

//! A relay fed by a query instead of an upstream feed: every interval the server runs a query
//! (for example SQL against a DuckDB history table), and each row it returns becomes that
//! symbol's state, broadcast through the [`Hub`](crate::hub::Hub) only when it changed since
//! the last run.
//!
//! [`QueryFanout`] is the [`Fanout`] composed with a [`QuerySource`]: the source decides when
//! the query runs, what a result or a failure means, and which symbols' states changed; the
//! fanout turns those states into snapshots and change-only deltas for each subscriber, with
//! every limit of the hub (update intervals, slow consumers, the whitelist). The server only
//! runs the query when told to, hands back its rows, and moves bytes and time.
//!
//! - **Rows.** A row is a symbol and its columns ([`QueryRow`]); its state is the quote whose
//!   free-form fields are those columns, so a subscriber's `snapshot` carries every column and
//!   a `quote` delta carries the columns whose values changed (a column that became absent
//!   goes out as `null`). A row equal to the symbol's last one changes nothing and sends
//!   nothing. (The design this follows compared hashes of the rows; the source keeps each
//!   row anyway, to answer a new subscriber at once, and comparing rows cannot collide.) A
//!   symbol missing from a later result keeps its last state.
//! - **Failures.** A failed or timed-out query changes no state: subscribers keep the last
//!   good one and the upstream state they see becomes `backing_off` (then `circuit_open` after
//!   [`QueryConfig::breaker_threshold`] failures in a row). The next attempt comes after the
//!   interval, then after doubling delays with jitter up to [`QueryConfig::max_backoff`], so a
//!   query that keeps failing never runs at a fixed rate; the first good result makes the
//!   state `live` again and restores the interval.
//! - **Bounds.** One query runs at a time (a run that timed out still has to return before the
//!   next starts, so slow queries cannot pile up); at most [`QueryConfig::max_rows`] symbols
//!   are held, each row at most [`QueryConfig::max_row_bytes`] of JSON; what is over is
//!   dropped and counted ([`QueryCounters`]).
//!
//! # Driving contract
//!
//! - **Inputs.** Downstream socket events go to the fanout ([`QueryFanout::fanout_mut`]), as
//!   for any [`Fanout`]. The result of the run the fanout asked for goes to
//!   [`QueryFanout::handle_result`], with the run's id. When [`QueryFanout::poll_timeout`]
//!   passes, call [`QueryFanout::handle_timeout`]. `now` must not go backwards.
//! - **Outputs.** After every input, drain [`QueryFanout::poll_output`]: downstream outputs in
//!   the order the hub decided them, and [`QueryOutput::Run`] when the query is due. Run it
//!   (off the thread that drives this, since a query blocks) and report its result; until
//!   then no other run is asked for.
//! - **Time.** The first run is due at construction; the next one an interval after a good
//!   run started (at once if the run took longer), or a backoff after a failure ends it.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use tickwire_core::hub::{FanoutOutput, HubConfig};
//! use tickwire_core::query::{QueryConfig, QueryFanout, QueryOutput, QueryRow};
//!
//! let start = Instant::now();
//! let hub = HubConfig { upstream_batch_delay: Duration::ZERO, ..HubConfig::default() };
//! let mut relay = QueryFanout::new(hub, QueryConfig::default(), start).unwrap();
//! let conn = relay.fanout_mut().connect(start).unwrap();
//! relay
//!     .fanout_mut()
//!     .handle_text(start, conn, r#"{"action":"subscribe","symbols":["BINANCE:BTCUSDT"]}"#);
//! let row = |close: f64| QueryRow {
//!     symbol: Arc::from("BINANCE:BTCUSDT"),
//!     columns: BTreeMap::from([("close".to_owned(), close.into())]),
//! };
//! // Drain: the status and the (still empty) snapshot go out, and the first run is due.
//! let mut frames = Vec::new();
//! let mut run = None;
//! while let Some(output) = relay.poll_output(start) {
//!     match output {
//!         QueryOutput::Downstream(FanoutOutput::Transmit { frame, .. }) => {
//!             frames.push(frame.as_str().to_owned())
//!         }
//!         QueryOutput::Run { id } => run = Some(id),
//!         QueryOutput::Downstream(_) => {}
//!     }
//! }
//! assert_eq!(frames.len(), 2);
//! relay.fanout_mut().handle_written(start, conn, 2);
//! // The server ran the query: the state is live, and the row is the symbol's state, sent
//! // to its subscriber.
//! relay.handle_result(start, run.unwrap(), Ok(vec![row(97_000.5)]));
//! let sent: Vec<String> = std::iter::from_fn(|| relay.poll_output(start))
//!     .filter_map(|output| match output {
//!         QueryOutput::Downstream(FanoutOutput::Transmit { frame, .. }) => {
//!             Some(frame.as_str().to_owned())
//!         }
//!         _ => None,
//!     })
//!     .collect();
//! assert_eq!(sent[0], r#"{"type":"status","upstream":"live"}"#);
//! assert!(sent[1].contains(r#""close":97000.5"#));
//! relay.fanout_mut().handle_written(start, conn, 2);
//! // Five seconds later the same row again: nothing is sent.
//! let later = start + Duration::from_secs(5);
//! assert_eq!(relay.poll_timeout(), Some(later));
//! relay.handle_timeout(later);
//! let Some(QueryOutput::Run { id }) = relay.poll_output(later) else { panic!() };
//! relay.handle_result(later, id, Ok(vec![row(97_000.5)]));
//! assert!(relay.poll_output(later).is_none());
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use crate::client::policy::retry_delay;
use crate::client::{BarsError, Config, Quote, SeriesId, State};
use crate::hub::{Fanout, FanoutError, FanoutOutput, HubConfig, UpstreamFeed, UpstreamPlan};
use crate::instant::later;

/// The shortest [`QueryConfig::interval`].
pub const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(100);
/// The longest [`QueryConfig::interval`].
pub const MAX_QUERY_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// How a [`QuerySource`] runs its query. `QueryConfig::default()` runs it every 5 seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryConfig {
    /// From the start of one good run to the start of the next.
    pub interval: Duration,
    /// A run unanswered this long counts as failed (its late result is discarded).
    pub timeout: Duration,
    /// Symbols held at once (over all runs); rows of further symbols are dropped and counted.
    pub max_rows: usize,
    /// Largest row, as the JSON of its columns; bigger rows are dropped and counted.
    pub max_row_bytes: usize,
    /// The longest delay between attempts while the query keeps failing (at least the
    /// interval, whatever this says).
    pub max_backoff: Duration,
    /// Spread of the retry delays: ±this fraction.
    pub jitter: f64,
    /// Failures in a row after which the state reported is `circuit_open`.
    pub breaker_threshold: u32,
    /// Seed of the jitter (a fixed seed makes a simulation repeatable; a server gives each
    /// process its own so that many of them retry apart).
    pub seed: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_rows: 10_000,
            max_row_bytes: 16 * 1024,
            max_backoff: Duration::from_secs(300),
            jitter: 0.2,
            breaker_threshold: 5,
            seed: 0x7ab1_e5ee_d000_0001,
        }
    }
}

/// A [`QueryConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QueryConfigError {
    /// The interval is out of range.
    #[error(
        "query interval {0:?}: it must be from {MIN_QUERY_INTERVAL:?} to {MAX_QUERY_INTERVAL:?}"
    )]
    Interval(Duration),
    /// A limit is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// The jitter is not a fraction.
    #[error("jitter {0}: it must be from 0 to 1")]
    Jitter(f64),
    /// The hub's own limits.
    #[error(transparent)]
    Fanout(#[from] FanoutError),
}

impl QueryConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), QueryConfigError> {
        if !(MIN_QUERY_INTERVAL..=MAX_QUERY_INTERVAL).contains(&self.interval) {
            return Err(QueryConfigError::Interval(self.interval));
        }
        if self.timeout.is_zero() {
            return Err(QueryConfigError::Zero("the query timeout"));
        }
        if self.max_rows == 0 {
            return Err(QueryConfigError::Zero("max_rows"));
        }
        if self.max_row_bytes == 0 {
            return Err(QueryConfigError::Zero("max_row_bytes"));
        }
        if self.breaker_threshold == 0 {
            return Err(QueryConfigError::Zero("breaker_threshold"));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(QueryConfigError::Jitter(self.jitter));
        }
        Ok(())
    }
}

/// One row of a result: the symbol it is the state of, and its other columns by name.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRow {
    /// The `symbol` column.
    pub symbol: Arc<str>,
    /// Every other column.
    pub columns: BTreeMap<String, Value>,
}

/// What a [`QuerySource`] has done, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryCounters {
    /// Runs asked for.
    pub runs: u64,
    /// Runs that failed or timed out.
    pub failures: u64,
    /// Of those, runs that timed out.
    pub timeouts: u64,
    /// Rows received in good results.
    pub rows: u64,
    /// Rows that changed their symbol's state (a new symbol included).
    pub rows_changed: u64,
    /// Rows equal to their symbol's last state.
    pub rows_unchanged: u64,
    /// Rows dropped: an empty or overlong symbol, a symbol repeated within one result.
    pub rows_invalid: u64,
    /// Rows dropped: past [`QueryConfig::max_rows`] symbols or [`QueryConfig::max_row_bytes`].
    pub rows_over_limit: u64,
}

/// A run in flight.
#[derive(Debug, Clone, Copy)]
struct Run {
    id: u64,
    started: Instant,
    /// Counted as failed already; its result will be discarded.
    timed_out: bool,
}

/// The query side of a [`QueryFanout`]: when to run, what results and failures mean, and the
/// latest state of every symbol. It is also the fanout's upstream: the symbols the hub wants
/// are the ones whose changes it passes on.
#[derive(Debug)]
pub struct QuerySource {
    config: QueryConfig,
    rng: fastrand::Rng,
    /// When the next run is due (while none is in flight).
    next_run: Instant,
    running: Option<Run>,
    /// Asked for by [`QuerySource::due_run`] and not yet handed out.
    run_to_announce: Option<u64>,
    next_id: u64,
    states: HashMap<Arc<str>, Quote>,
    wanted: HashSet<Arc<str>>,
    /// Symbols the hub started wanting in the last drain: they get their state at once.
    newly_wanted: Vec<Arc<str>>,
    max_symbol_bytes: usize,
    consecutive_failures: u32,
    state: State,
    last_error: Option<String>,
    counters: QueryCounters,
}

impl QuerySource {
    fn new(config: QueryConfig, max_symbol_bytes: usize, now: Instant) -> QuerySource {
        QuerySource {
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            next_run: now,
            running: None,
            run_to_announce: None,
            next_id: 0,
            states: HashMap::new(),
            wanted: HashSet::new(),
            newly_wanted: Vec::new(),
            max_symbol_bytes,
            consecutive_failures: 0,
            state: State::Connecting,
            last_error: None,
            counters: QueryCounters::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// `connecting` until the first result, `live` after a good one, `backing_off` or
    /// `circuit_open` after a failure.
    pub fn state(&self) -> State {
        self.state
    }

    /// What was done so far.
    pub fn counters(&self) -> &QueryCounters {
        &self.counters
    }

    /// Why the last failed run failed (cleared by a good one).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Failed runs since the last good one.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When the next run starts; `None` while one is in flight.
    pub fn next_run(&self) -> Option<Instant> {
        self.running.is_none().then_some(self.next_run)
    }

    /// Symbols whose state is held.
    pub fn symbol_count(&self) -> usize {
        self.states.len()
    }

    /// The state of `symbol`: its last row as a quote.
    pub fn state_of(&self, symbol: &str) -> Option<&Quote> {
        self.states.get(symbol)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.running {
            Some(run) if !run.timed_out => Some(later(run.started, self.config.timeout)),
            Some(_) => None,
            None => Some(self.next_run),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match &mut self.running {
            None if now >= self.next_run => {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                self.running = Some(Run {
                    id,
                    started: now,
                    timed_out: false,
                });
                self.run_to_announce = Some(id);
                self.counters.runs = self.counters.runs.saturating_add(1);
            }
            Some(run) if !run.timed_out && now >= later(run.started, self.config.timeout) => {
                run.timed_out = true;
                self.counters.timeouts = self.counters.timeouts.saturating_add(1);
                let reason = format!("the query did not answer in {:?}", self.config.timeout);
                self.fail(now, reason);
            }
            _ => {}
        }
    }

    /// A failure ends a run: the next attempt after a growing delay, the state says so.
    fn fail(&mut self, now: Instant, reason: String) {
        self.counters.failures = self.counters.failures.saturating_add(1);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_error = Some(reason);
        let cap = self.config.max_backoff.max(self.config.interval);
        let unit = self.rng.f64().mul_add(2.0, -1.0);
        let delay = retry_delay(
            self.consecutive_failures,
            self.config.interval,
            self.config.interval,
            cap,
            self.config.jitter,
            unit,
        );
        self.next_run = later(now, delay);
        self.state = if self.consecutive_failures >= self.config.breaker_threshold {
            State::CircuitOpen
        } else {
            State::BackingOff
        };
    }

    /// Takes a good result's rows into the held states; returns the wanted symbols whose state
    /// changed, in the order of the rows.
    fn take_rows(&mut self, rows: Vec<QueryRow>) -> Vec<Arc<str>> {
        let mut changed = Vec::new();
        let mut seen: HashSet<Arc<str>> =
            HashSet::with_capacity(rows.len().min(self.config.max_rows));
        for row in rows {
            self.counters.rows = self.counters.rows.saturating_add(1);
            if row.symbol.is_empty()
                || row.symbol.len() > self.max_symbol_bytes
                || !seen.insert(row.symbol.clone())
            {
                self.counters.rows_invalid = self.counters.rows_invalid.saturating_add(1);
                continue;
            }
            // Most rows of a periodic query are the same as last time: compared first, so
            // an unchanged row costs one lookup and one comparison.
            match self.states.get(&row.symbol) {
                Some(state) if *state.other == row.columns => {
                    self.counters.rows_unchanged = self.counters.rows_unchanged.saturating_add(1);
                    continue;
                }
                None if self.states.len() >= self.config.max_rows => {
                    self.counters.rows_over_limit = self.counters.rows_over_limit.saturating_add(1);
                    continue;
                }
                _ => {}
            }
            if json_len(&row.columns) > self.config.max_row_bytes {
                self.counters.rows_over_limit = self.counters.rows_over_limit.saturating_add(1);
                continue;
            }
            self.counters.rows_changed = self.counters.rows_changed.saturating_add(1);
            if self.wanted.contains(&row.symbol) {
                changed.push(row.symbol.clone());
            }
            let quote = Quote {
                other: Arc::new(row.columns),
                ..Quote::new(row.symbol.clone())
            };
            self.states.insert(row.symbol, quote);
        }
        changed
    }
}

/// The length of `columns` as JSON, counted without building it.
fn json_len(columns: &BTreeMap<String, Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, columns) {
        Ok(()) => counter.0,
        // Columns that cannot be JSON never fit.
        Err(_) => usize::MAX,
    }
}

/// The hub's demand, as the fanout's upstream: which symbols it wants changes of.
impl UpstreamFeed for QuerySource {
    fn subscribe_quotes(&mut self, _now: Instant, symbols: &[Arc<str>]) -> usize {
        let mut added: usize = 0;
        for symbol in symbols {
            if self.wanted.insert(symbol.clone()) {
                added = added.saturating_add(1);
                self.newly_wanted.push(symbol.clone());
            }
        }
        added
    }

    fn unsubscribe_quotes(&mut self, _now: Instant, symbols: &[Arc<str>]) {
        for symbol in symbols {
            self.wanted.remove(symbol);
        }
    }

    fn carries_quote(&self, symbol: &str) -> bool {
        self.wanted.contains(symbol)
    }

    /// A query carries no bar series (the fanout's plan has none, so this is never asked).
    fn subscribe_bars(
        &mut self,
        _now: Instant,
        _symbol: &str,
        _timeframe: &str,
        _history: u32,
    ) -> Result<SeriesId, BarsError> {
        Err(BarsError::TooMany(0))
    }

    fn unsubscribe_bars(&mut self, _now: Instant, _series: SeriesId) {}
}

/// What the server must do.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutput {
    /// Something for a downstream connection (see [`FanoutOutput`]).
    Downstream(FanoutOutput),
    /// Run the query and report its result with [`QueryFanout::handle_result`] and this id.
    Run {
        /// The run's id.
        id: u64,
    },
}

/// A relay whose data comes from a periodic query: the [`Fanout`] composed with a
/// [`QuerySource`] (see the [module documentation](self) for the behaviour and the driving
/// contract).
#[derive(Debug)]
pub struct QueryFanout {
    fanout: Fanout,
    source: QuerySource,
}

impl QueryFanout {
    /// A relay over a new hub, running its query as `query` says; the first run is due at
    /// `now`.
    ///
    /// # Errors
    /// [`QueryConfigError`]: a setting of the query or the hub is unusable.
    pub fn new(
        hub: HubConfig,
        query: QueryConfig,
        now: Instant,
    ) -> Result<QueryFanout, QueryConfigError> {
        query.validate()?;
        // No feed client stands behind the fanout, so the only cap is the hub's own.
        let upstream = Config {
            max_subscriptions: hub.max_upstream_symbols,
            ..Config::default()
        };
        let max_symbol_bytes = hub.max_symbol_bytes;
        let mut fanout = Fanout::new(hub, UpstreamPlan::default(), &upstream)?;
        fanout.handle_upstream_state(now, State::Connecting);
        let mut source = QuerySource::new(query, max_symbol_bytes, now);
        // The first run is due at once.
        source.handle_timeout(now);
        Ok(QueryFanout { fanout, source })
    }

    /// The fanout (its hub, counters and connections).
    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// The fanout, for downstream inputs (connect, text, written, disconnect…).
    pub fn fanout_mut(&mut self) -> &mut Fanout {
        &mut self.fanout
    }

    /// The query side (state, counters, the next run).
    pub fn source(&self) -> &QuerySource {
        &self.source
    }

    /// The result of run `id`: its rows, or why it failed. A result for any other run (one
    /// that timed out, say) is discarded.
    pub fn handle_result(&mut self, now: Instant, id: u64, result: Result<Vec<QueryRow>, String>) {
        let Some(run) = self.source.running.filter(|run| run.id == id) else {
            return;
        };
        self.source.running = None;
        if run.timed_out {
            // Counted as failed when it timed out; the backoff it got then still holds, or is
            // over already if the run took that long to return.
            self.source.next_run = self.source.next_run.max(now);
            return;
        }
        match result {
            Ok(rows) => {
                self.source.consecutive_failures = 0;
                self.source.last_error = None;
                self.source.next_run = later(run.started, self.source.config.interval).max(now);
                // Subscribers learn the source works before they get what it returned.
                self.set_state(now, State::Live);
                for symbol in self.source.take_rows(rows) {
                    if let Some(quote) = self.source.states.get(&symbol) {
                        self.fanout.handle_quote(now, quote);
                    }
                }
            }
            Err(reason) => {
                self.source.fail(now, reason);
                let state = self.source.state;
                self.set_state(now, state);
            }
        }
    }

    fn set_state(&mut self, now: Instant, state: State) {
        self.source.state = state;
        if self.fanout.hub().upstream_state() != state {
            self.fanout.handle_upstream_state(now, state);
        }
    }

    /// When to call [`QueryFanout::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.fanout.poll_timeout(), self.source.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: the hub's timers, and the query's (a run due, a run timed out).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fanout.handle_timeout(now);
        let failures = self.source.counters.failures;
        self.source.handle_timeout(now);
        if self.source.counters.failures != failures {
            let state = self.source.state;
            self.set_state(now, state);
        }
    }

    /// The next thing to do. Drain after every input.
    pub fn poll_output(&mut self, now: Instant) -> Option<QueryOutput> {
        loop {
            if let Some(output) = self.fanout.poll_output(now, &mut self.source) {
                return Some(QueryOutput::Downstream(output));
            }
            // A symbol the hub just started wanting gets its held state whole, as a snapshot
            // that replaces the empty one its first subscribers got.
            if let Some(symbol) = self.source.newly_wanted.pop() {
                if let Some(quote) = self.source.states.get(&symbol) {
                    self.fanout.resync(now, quote);
                }
                continue;
            }
            return self
                .source
                .run_to_announce
                .take()
                .map(|id| QueryOutput::Run { id });
        }
    }
}

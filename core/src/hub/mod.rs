//! The relay's fan-out hub: one upstream feed, many downstream consumers, no I/O.
//!
//! The hub maps downstream connections to symbol subscriptions and decides, for every update
//! from upstream, what each connection is sent. It owns each connection's bounded queue, so
//! backpressure, conflation and the slow-consumer deadline are decided here; the server only
//! moves frames between sockets and the hub and reports when frames were written.
//!
//! - Downstream protocol (JSON text): `{"action":"subscribe","symbols":[…]}` (optionally with
//!   `"update_interval":seconds`, below), `{"action":"unsubscribe","symbols":[…]}`,
//!   `{"action":"ping"}`; the hub answers with `snapshot`, `quote`, `bar`, `unsubscribed`,
//!   `status`, `pong`, `warning` and `error` messages.
//! - Only changes go out: an update equal to the last one broadcast for its symbol is dropped.
//! - `update_interval` (seconds, fractions allowed, [`MIN_UPDATE_INTERVAL`] 0.1 to
//!   [`MAX_UPDATE_INTERVAL`] 3600; anything else, a non-number included, is a `BAD_REQUEST`
//!   naming the field and subscribes nothing) paces each symbol of that subscribe: the
//!   connection gets at most one data message (`quote`, `bar` or `snapshot`) of the symbol per
//!   interval. The `snapshot` answering the subscribe goes at once and confirms the interval
//!   with an `"update_interval":N` key (absent when the subscription gets every change). A
//!   change within the interval is held; when the interval ends the connection gets the
//!   symbol's latest state as one `snapshot` (the one shared by every recipient, rendered once
//!   per state), and later `quote` deltas are relative to it. If nothing changed, nothing is
//!   sent at the interval's end (still change-only), and the first change after a quiet
//!   interval goes at once as the usual shared delta. A symbol new upstream (an empty snapshot)
//!   does not hold back its first price. Subscribing again to a symbol sets its interval anew
//!   (no `update_interval`: [`HubConfig::default_update_interval`], by default every change)
//!   and answers with the current state. The interval is counted from when the hub releases a
//!   message; a connection that reads slowly is conflated as below, and its catch-up snapshot
//!   also starts a new interval.
//! - Upstream follows demand: the first subscriber of a symbol yields
//!   [`HubOutput::SubscribeUpstream`], the last one leaving yields
//!   [`HubOutput::UnsubscribeUpstream`] once the linger delay passes with nobody back. Changes
//!   are gathered for `upstream_batch_delay` so a burst of new symbols costs one upstream
//!   command, not one each (upstream commands are rate limited).
//! - A connection with `queue_capacity` frames waiting is conflated: it owes only the latest
//!   state per symbol (sent as a `snapshot`), gets one `SLOW_CONSUMER` warning, and is closed if
//!   still behind after `slow_consumer_deadline`. Other connections are never held up.
//! - Stored state: a relay restarted with a store hands the hub each symbol's last quote and
//!   bar with [`Hub::preload`] (at most [`HubConfig::max_upstream_symbols`] symbols kept) before
//!   upstream has said anything. The first subscriber of such a symbol gets that state at once,
//!   its `snapshot` marked `"stale":true` (after `"bar"`, before any `"update_interval"`); a
//!   symbol without stored state answers with an empty snapshot as before. The symbol's first
//!   upstream quote confirms it: every subscriber gets a fresh full `snapshot` without the
//!   `stale` key (not a `quote` delta), and later quotes are deltas as usual. An upstream bar
//!   replaces the stored bar (a `bar` message) but does not confirm: the quote is what says
//!   the symbol is live. A snapshot without `stale` is exactly what it was before.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use tickwire_core::client::Quote;
//! use tickwire_core::hub::{Hub, HubConfig, HubOutput};
//!
//! let now = Instant::now();
//! let config = HubConfig { upstream_batch_delay: Duration::ZERO, ..HubConfig::default() };
//! let mut hub = Hub::new(config).unwrap();
//! let conn = hub.connect(now).unwrap();
//! hub.handle_text(now, conn, r#"{"action":"subscribe","symbols":["FX:EURUSD"]}"#);
//! let mut upstream = Vec::new();
//! let mut frames = Vec::new();
//! while let Some(output) = hub.poll_output() {
//!     match output {
//!         HubOutput::SubscribeUpstream(symbols) => upstream.extend(symbols),
//!         HubOutput::Transmit { frame, .. } => frames.push(frame.as_str().to_owned()),
//!         _ => {}
//!     }
//! }
//! assert_eq!(upstream, [Arc::from("FX:EURUSD")]);
//! // The status, then the (still empty) snapshot.
//! assert!(frames[1].starts_with(r#"{"type":"snapshot","symbol":"FX:EURUSD""#));
//!
//! let quote = Quote { last_price: Some(1.08), ..Quote::new(Arc::from("FX:EURUSD")) };
//! hub.handle_quote(now, &quote);
//! let Some(HubOutput::Transmit { frame, .. }) = hub.poll_output() else { panic!() };
//! assert_eq!(frame.as_str(), r#"{"type":"quote","symbol":"FX:EURUSD","data":{"lp":1.08}}"#);
//! // The same quote again changes nothing, so nothing is sent.
//! hub.handle_quote(now, &quote);
//! assert!(hub.poll_output().is_none());
//!
//! // Another client wants at most one update of the symbol every 5 seconds.
//! let paced = hub.connect(now).unwrap();
//! hub.handle_text(
//!     now,
//!     paced,
//!     r#"{"action":"subscribe","symbols":["FX:EURUSD"],"update_interval":5}"#,
//! );
//! let answer: Vec<String> = std::iter::from_fn(|| hub.poll_output())
//!     .filter_map(|output| match output {
//!         HubOutput::Transmit { frame, .. } => Some(frame.as_str().to_owned()),
//!         _ => None,
//!     })
//!     .collect();
//! assert_eq!(
//!     answer[1],
//!     r#"{"type":"snapshot","symbol":"FX:EURUSD","quote":{"lp":1.08},"bar":null,"update_interval":5}"#
//! );
//! // A change a second later reaches the first client at once; the paced one's is held...
//! let later = now + Duration::from_secs(1);
//! let quote = Quote { last_price: Some(1.09), ..quote };
//! hub.handle_quote(later, &quote);
//! let Some(HubOutput::Transmit { conn: to, .. }) = hub.poll_output() else { panic!() };
//! assert_eq!(to, conn);
//! assert!(hub.poll_output().is_none());
//! // ...until its interval ends: then it gets the latest state whole.
//! assert_eq!(hub.poll_timeout(), Some(now + Duration::from_secs(5)));
//! hub.handle_timeout(now + Duration::from_secs(5));
//! let Some(HubOutput::Transmit { conn: to, frame }) = hub.poll_output() else { panic!() };
//! assert_eq!(to, paced);
//! assert!(frame.as_str().starts_with(r#"{"type":"snapshot","symbol":"FX:EURUSD","quote":{"lp":1.09}"#));
//! ```

mod close;
mod config;
pub(crate) mod render;
mod request;
#[cfg(test)]
mod tests;
mod upstream;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::policy::TokenBucket;
use crate::client::{Quote, State};
use crate::hash::FastMap;
use crate::message::Bar;

pub use close::{CloseCode, CloseReason};
pub use config::{HubConfig, HubConfigError, MAX_UPDATE_INTERVAL, MIN_UPDATE_INTERVAL};
use render::BarState;
use request::Request;
pub use upstream::{
    ConnectionBacklog, Fanout, FanoutCounters, FanoutError, FanoutOutput, MAX_BAR_HISTORY,
    UpstreamFeed, UpstreamPlan,
};

/// Control frames (replies, warnings, status) a connection may have waiting beyond its data
/// capacity before further ones are dropped.
const CONTROL_HEADROOM: usize = 64;
/// Deadline checks run at most this often, however many connections move their deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A downstream connection, numbered by the hub in order of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "#{}", self.0)
    }
}

/// What a frame carries: market data (its latency matters) or a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// `snapshot`, `quote` or `bar`.
    Data,
    /// `status`, `pong`, `unsubscribed`, `warning` or `error`.
    Control,
}

/// One JSON text message for a downstream connection. Cheap to clone: every recipient of an
/// update shares the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    text: Bytes,
    origin: Instant,
    /// A data frame's symbol (whose counters it adds to when handed out), or
    /// [`SymbolTag::CONTROL`]: the kind and the tag in one word, so frames stay as small as
    /// they were before there were per-symbol counters.
    tag: SymbolTag,
}

impl Frame {
    /// A control frame.
    fn new(text: Vec<u8>, origin: Instant) -> Frame {
        Frame {
            text: Bytes::from(text),
            origin,
            tag: SymbolTag::CONTROL,
        }
    }

    fn data(text: Vec<u8>, tag: SymbolTag, origin: Instant) -> Frame {
        Frame {
            text: Bytes::from(text),
            origin,
            tag,
        }
    }

    /// The JSON text (always ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// The JSON text as shared bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.text
    }

    /// Data or control.
    pub fn kind(&self) -> FrameKind {
        if self.tag == SymbolTag::CONTROL {
            FrameKind::Control
        } else {
            FrameKind::Data
        }
    }

    /// When the update behind this frame reached the hub (for latency measurements).
    pub fn origin(&self) -> Instant {
        self.origin
    }
}

/// What the hub asks of the server.
#[derive(Debug, Clone, PartialEq)]
pub enum HubOutput {
    /// Send `frame` to `conn`, then report it with [`Hub::handle_written`] once written.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// The text.
        frame: Frame,
    },
    /// Close `conn` (a close frame with [`CloseReason::close_code`] if the socket takes it,
    /// else drop it). The hub has already forgotten the connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Subscribe upstream to quotes (and bars, if configured) of these symbols.
    SubscribeUpstream(Vec<Arc<str>>),
    /// Nobody wants these symbols any more: unsubscribe upstream.
    UnsubscribeUpstream(Vec<Arc<str>>),
}

/// A refused connection: send `frame`, then close with [`CloseCode::TryAgainLater`] (1013).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The `CONNECTION_LIMIT` error message.
    pub frame: Frame,
}

/// Counters of everything the hub did, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubCounters {
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections refused at the connection limit.
    pub connections_refused: u64,
    /// Frames handed to sockets.
    pub frames_sent: u64,
    /// Bytes of those frames.
    pub bytes_sent: u64,
    /// Frames the server reported written.
    pub frames_written: u64,
    /// Quote and bar updates received from upstream.
    pub updates_received: u64,
    /// Updates dropped because nothing changed.
    pub updates_unchanged: u64,
    /// Per-connection deliveries replaced by a later value (conflation).
    pub deliveries_conflated: u64,
    /// SLOW_CONSUMER warnings sent.
    pub slow_consumer_warnings: u64,
    /// Control frames dropped because the connection's queue was full.
    pub control_frames_dropped: u64,
    /// Client messages received.
    pub requests: u64,
    /// Error replies sent.
    pub errors_sent: u64,
    /// Upstream subscribe decisions.
    pub upstream_subscribes: u64,
    /// Upstream unsubscribe decisions.
    pub upstream_unsubscribes: u64,
    /// Snapshots carrying `"stale":true` (stored state, see [`Hub::preload`]) queued for a
    /// connection: one per recipient, not per render. A delivery conflated away is counted when
    /// the snapshot it is owed goes out, if that is still stale.
    pub stale_snapshots_sent: u64,
    /// Connections ended, by [`CloseReason`] (see [`HubCounters::disconnects`]).
    disconnects: [u64; CloseReason::ALL.len()],
}

impl HubCounters {
    /// Connections ended for `reason`.
    pub fn disconnects(&self, reason: CloseReason) -> u64 {
        self.disconnects.get(reason.index()).copied().unwrap_or(0)
    }

    fn count_disconnect(&mut self, reason: CloseReason) {
        if let Some(count) = self.disconnects.get_mut(reason.index()) {
            *count = count.saturating_add(1);
        }
    }
}

/// What the hub counted for one symbol it carries (see [`Hub::symbol_counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SymbolCounters {
    /// Data frames (`snapshot`, `quote`, `bar`) of this symbol handed to sockets.
    pub messages_sent: u64,
    /// Connections that fell behind (a `SLOW_CONSUMER` warning) while subscribed to it.
    pub slow_consumers: u64,
}

/// Where a symbol's counters live: a slot reused once the symbol is gone, and the generation
/// that tells a frame of the old symbol (still queued somewhere) from one of the new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SymbolTag {
    slot: u32,
    generation: u32,
}

impl SymbolTag {
    /// Not a symbol's: a control frame. No slot has this index (at most `u32::MAX - 1`).
    const CONTROL: SymbolTag = SymbolTag {
        slot: u32::MAX,
        generation: u32::MAX,
    };
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    counters: SymbolCounters,
}

/// The pace of a subscription with an `update_interval`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    interval: Duration,
    /// The next data frame of this subscription may go out at this instant or later.
    next_allowed: Instant,
    /// A change arrived before `next_allowed`: the state at that instant is owed, and a timer
    /// `(next_allowed, conn, symbol)` is set for it.
    held: bool,
}

/// One symbol's subscribers and latest broadcast state.
#[derive(Debug)]
struct SymbolState {
    subscribers: BTreeSet<ConnId>,
    /// The subscribers with an update interval (a subset of `subscribers`).
    paced: BTreeMap<ConnId, Pace>,
    tag: SymbolTag,
    /// Subscribed upstream (a subscribe went out and no unsubscribe since).
    upstream: bool,
    /// Without subscribers: when the upstream subscription ends.
    linger_until: Option<Instant>,
    quote: Option<Quote>,
    bar: Option<BarState>,
    /// `quote` and `bar` came from the store ([`Hub::preload`]) and upstream has not sent a
    /// quote since: snapshots say `"stale":true`. The first upstream quote (or a resync) clears
    /// it; a bar does not, a consumer needs the quote to trust the symbol.
    stale: bool,
    /// `bar` is the stored one: the first upstream bar replaces it whatever its time, since a
    /// stored bar may be from a later session than the history upstream replays.
    stored_bar: bool,
    /// The snapshot of the current state, rendered once for however many need it.
    snapshot: Option<Frame>,
}

/// A symbol's last known state from the store, waiting for the symbol's first subscriber.
#[derive(Debug)]
struct Preloaded {
    quote: Quote,
    bar: Option<BarState>,
}

#[derive(Debug)]
struct Connection {
    symbols: BTreeSet<Arc<str>>,
    /// Frames waiting for the socket, oldest first.
    backlog: VecDeque<Frame>,
    /// Frames handed to the socket writer and not yet reported written.
    in_flight: usize,
    /// While behind: symbols whose latest state is owed, as a snapshot, after the backlog.
    owed: BTreeSet<Arc<str>>,
    behind_since: Option<Instant>,
    last_warning: Option<Instant>,
    last_heard: Instant,
    requests: TokenBucket,
    last_rate_error: Option<Instant>,
}

impl Connection {
    fn waiting(&self) -> usize {
        self.backlog.len().saturating_add(self.in_flight)
    }
}

/// The fan-out state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    connections: FastMap<ConnId, Connection>,
    symbols: BTreeMap<Arc<str>, SymbolState>,
    next_id: u64,
    upstream_state: State,
    /// The relay cannot reach its cluster's store: reported as `degraded` whatever the
    /// upstream state is.
    degraded: bool,
    status_frame: Bytes,
    outputs: VecDeque<HubOutput>,
    /// The earliest deadline known (keepalive, slow consumer, linger); may be early.
    next_check: Option<Instant>,
    last_sweep: Option<Instant>,
    /// Upstream changes decided but not yet output, and when they go out.
    upstream_adds: Vec<Arc<str>>,
    upstream_removes: Vec<Arc<str>>,
    upstream_due: Option<Instant>,
    counters: HubCounters,
    /// Held paced updates, by due time: one at most per paced subscription.
    pace_timers: BTreeSet<(Instant, ConnId, Arc<str>)>,
    /// Per-symbol counters, indexed by [`SymbolTag::slot`]; as many as symbols carried at once.
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    /// Stored state of symbols not carried yet ([`Hub::preload`]), taken by the first
    /// subscriber; at most [`HubConfig::max_upstream_symbols`].
    preloaded: BTreeMap<Arc<str>, Preloaded>,
    shut_down: bool,
}

impl Hub {
    /// A hub with no connections.
    pub fn new(config: HubConfig) -> Result<Hub, HubConfigError> {
        config.validate()?;
        let upstream_state = State::Idle;
        Ok(Hub {
            config,
            connections: FastMap::default(),
            symbols: BTreeMap::new(),
            next_id: 0,
            upstream_state,
            degraded: false,
            status_frame: Bytes::from(render::status(upstream_state.as_str())),
            outputs: VecDeque::new(),
            next_check: None,
            last_sweep: None,
            upstream_adds: Vec::new(),
            upstream_removes: Vec::new(),
            upstream_due: None,
            counters: HubCounters::default(),
            pace_timers: BTreeSet::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            preloaded: BTreeMap::new(),
            shut_down: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Counters since the start.
    pub fn counters(&self) -> &HubCounters {
        &self.counters
    }

    /// Connections held.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Every symbol the hub carries: its subscriber count and whether it is subscribed upstream.
    pub fn symbols(&self) -> impl Iterator<Item = (&Arc<str>, usize, bool)> {
        self.symbols
            .iter()
            .map(|(symbol, state)| (symbol, state.subscribers.len(), state.upstream))
    }

    /// Per-symbol counters of every symbol the hub carries. A symbol it stops carrying (its
    /// linger over, or rejected upstream) is no longer listed, and starts again from zero if it
    /// comes back, so the list never holds more than [`HubConfig::max_upstream_symbols`].
    pub fn symbol_counters(&self) -> impl Iterator<Item = (&Arc<str>, SymbolCounters)> {
        self.symbols.iter().map(|(symbol, state)| {
            let counters = self
                .slots
                .get(state.tag.slot as usize)
                .filter(|slot| slot.generation == state.tag.generation)
                .map(|slot| slot.counters)
                .unwrap_or_default();
            (symbol, counters)
        })
    }

    /// The update interval of `conn`'s subscription to `symbol`; `None` when it gets every
    /// change (or holds no such subscription).
    pub fn update_interval(&self, conn: ConnId, symbol: &str) -> Option<Duration> {
        let state = self.symbols.get(symbol)?;
        state.paced.get(&conn).map(|pace| pace.interval)
    }

    /// The symbols `conn` is subscribed to (empty for an unknown connection).
    pub fn subscriptions(&self, conn: ConnId) -> impl Iterator<Item = &Arc<str>> {
        self.connections
            .get(&conn)
            .into_iter()
            .flat_map(|connection| connection.symbols.iter())
    }

    /// The upstream state last reported.
    pub fn upstream_state(&self) -> State {
        self.upstream_state
    }

    /// The next thing the server must do, if any. Drain after every call.
    pub fn poll_output(&mut self) -> Option<HubOutput> {
        self.outputs.pop_front()
    }

    /// When to call [`Hub::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let paced = self.pace_timers.first().map(|(due, _, _)| *due);
        [self.sweep_due(), self.upstream_due, paced]
            .into_iter()
            .flatten()
            .min()
    }

    fn sweep_due(&self) -> Option<Instant> {
        let check = self.next_check?;
        Some(match self.last_sweep {
            Some(last) => check.max(last.checked_add(SWEEP_INTERVAL).unwrap_or(last)),
            None => check,
        })
    }

    /// The symbol is wanted upstream again (or for the first time).
    fn add_upstream(&mut self, now: Instant, symbol: &Arc<str>) {
        self.counters.upstream_subscribes = self.counters.upstream_subscribes.saturating_add(1);
        self.pend_upstream(now, symbol, true);
    }

    /// Nobody wants the symbol upstream any more.
    fn remove_upstream(&mut self, now: Instant, symbol: &Arc<str>) {
        self.counters.upstream_unsubscribes = self.counters.upstream_unsubscribes.saturating_add(1);
        self.pend_upstream(now, symbol, false);
    }

    /// Records an upstream change for the next batch; one that undoes a change still waiting
    /// in the batch cancels it instead (upstream never hears of either).
    fn pend_upstream(&mut self, now: Instant, symbol: &Arc<str>, subscribe: bool) {
        let (opposite, same) = if subscribe {
            (&mut self.upstream_removes, &mut self.upstream_adds)
        } else {
            (&mut self.upstream_adds, &mut self.upstream_removes)
        };
        match opposite.iter().position(|pending| pending == symbol) {
            Some(index) => {
                opposite.swap_remove(index);
            }
            None => same.push(symbol.clone()),
        }
        self.upstream_changed(now);
    }

    fn upstream_changed(&mut self, now: Instant) {
        if self.upstream_due.is_none() {
            self.upstream_due = Some(Self::later(now, self.config.upstream_batch_delay));
        }
    }

    /// Outputs the gathered upstream changes, removals first (they free upstream slots).
    fn flush_upstream(&mut self) {
        self.upstream_due = None;
        if !self.upstream_removes.is_empty() {
            let symbols = std::mem::take(&mut self.upstream_removes);
            self.outputs
                .push_back(HubOutput::UnsubscribeUpstream(symbols));
        }
        if !self.upstream_adds.is_empty() {
            let symbols = std::mem::take(&mut self.upstream_adds);
            self.outputs
                .push_back(HubOutput::SubscribeUpstream(symbols));
        }
    }

    /// Ends a step that may have changed the upstream set: without a batch delay the changes
    /// go out now.
    fn finish_step(&mut self) {
        if self.config.upstream_batch_delay.is_zero() && self.upstream_due.is_some() {
            self.flush_upstream();
        }
    }

    fn schedule(&mut self, deadline: Instant) {
        self.next_check = Some(self.next_check.map_or(deadline, |next| next.min(deadline)));
    }

    fn later(now: Instant, delay: Duration) -> Instant {
        now.checked_add(delay).unwrap_or(now)
    }

    /// A counter slot for a symbol the hub starts carrying.
    fn allocate_slot(&mut self) -> SymbolTag {
        if let Some(slot) = self.free_slots.pop()
            && let Some(entry) = self.slots.get(slot as usize)
        {
            return SymbolTag {
                slot,
                generation: entry.generation,
            };
        }
        match u32::try_from(self.slots.len()) {
            Ok(slot) if slot < u32::MAX => {
                self.slots.push(Slot::default());
                SymbolTag {
                    slot,
                    generation: 0,
                }
            }
            // Beyond four billion symbols at once the symbol is simply not counted.
            _ => SymbolTag {
                slot: u32::MAX,
                generation: 0,
            },
        }
    }

    /// The hub no longer carries a symbol: its pending paced updates and its counters go.
    fn forget_symbol(&mut self, symbol: &Arc<str>, state: &SymbolState) {
        for (conn, pace) in &state.paced {
            if pace.held {
                self.pace_timers
                    .remove(&(pace.next_allowed, *conn, symbol.clone()));
            }
        }
        if let Some(slot) = self.slots.get_mut(state.tag.slot as usize)
            && slot.generation == state.tag.generation
        {
            slot.generation = slot.generation.wrapping_add(1);
            slot.counters = SymbolCounters::default();
            self.free_slots.push(state.tag.slot);
        }
    }

    /// A new downstream connection, or a refusal at the connection limit.
    pub fn connect(&mut self, now: Instant) -> Result<ConnId, Refused> {
        if self.shut_down || self.connections.len() >= self.config.max_connections {
            self.counters.connections_refused = self.counters.connections_refused.saturating_add(1);
            let message = format!(
                "the relay holds its limit of {} connections; try again later",
                self.config.max_connections
            );
            return Err(Refused {
                frame: Frame::new(render::error("CONNECTION_LIMIT", &message, None), now),
            });
        }
        let conn = ConnId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        let period = Duration::from_secs(1)
            .checked_div(self.config.messages_per_second)
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_nanos(1));
        self.connections.insert(
            conn,
            Connection {
                symbols: BTreeSet::new(),
                backlog: VecDeque::new(),
                in_flight: 0,
                owed: BTreeSet::new(),
                behind_since: None,
                last_warning: None,
                last_heard: now,
                requests: TokenBucket::new(self.config.message_burst, period, now),
                last_rate_error: None,
            },
        );
        self.counters.connections_accepted = self.counters.connections_accepted.saturating_add(1);
        self.schedule(Self::later(now, self.config.keepalive_timeout));
        let status = Frame {
            text: self.status_frame.clone(),
            origin: now,
            tag: SymbolTag::CONTROL,
        };
        self.send_control(conn, status);
        Ok(conn)
    }

    /// The socket of `conn` ended (the client closed it, or it failed).
    pub fn disconnect(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        if self.remove(now, conn) {
            self.counters.count_disconnect(reason);
        }
        self.finish_step();
    }

    /// A control frame or ping from the client: it is alive.
    pub fn handle_activity(&mut self, now: Instant, conn: ConnId) {
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.last_heard = connection.last_heard.max(now);
        }
    }

    /// `frames` frames of `conn` were written to its socket.
    pub fn handle_written(&mut self, now: Instant, conn: ConnId, frames: usize) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        let written = frames.min(connection.in_flight);
        connection.in_flight = connection.in_flight.saturating_sub(written);
        self.counters.frames_written = self.counters.frames_written.saturating_add(written as u64);
        self.pump(now, conn);
    }

    /// Counts a client message against the rate and size limits; false (after an error reply
    /// where one is due) if it must be ignored.
    fn admit(&mut self, now: Instant, conn: ConnId, bytes: usize) -> bool {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return false;
        };
        connection.last_heard = connection.last_heard.max(now);
        self.counters.requests = self.counters.requests.saturating_add(1);
        if !connection.requests.try_take(now) {
            // One error per second at most: a flood must not turn into a flood of replies.
            let due = connection
                .last_rate_error
                .is_none_or(|last| now.saturating_duration_since(last) >= Duration::from_secs(1));
            if due {
                connection.last_rate_error = Some(now);
                let message = format!(
                    "more than {} messages per second; this one was ignored",
                    self.config.messages_per_second
                );
                self.send_error(now, conn, "RATE_LIMITED", &message, None);
            }
            return false;
        }
        if bytes > self.config.max_message_bytes {
            let message = format!(
                "message of {bytes} bytes; the limit is {}",
                self.config.max_message_bytes
            );
            self.send_error(now, conn, "MESSAGE_TOO_LARGE", &message, None);
            return false;
        }
        true
    }

    /// A text message from `conn`.
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        if !self.admit(now, conn, text.len()) {
            return;
        }
        match request::parse(text) {
            Ok(Request::Subscribe(symbols, interval)) => {
                self.subscribe(now, conn, symbols, interval);
            }
            Ok(Request::Unsubscribe(symbols)) => self.unsubscribe(now, conn, symbols),
            Ok(Request::Ping) => {
                let pong = Frame {
                    text: Bytes::from_static(b"{\"type\":\"pong\"}"),
                    origin: now,
                    tag: SymbolTag::CONTROL,
                };
                self.send_control(conn, pong);
            }
            Err(rejection) => self.send_error(now, conn, rejection.code, &rejection.message, None),
        }
        self.finish_step();
    }

    /// A binary message of `bytes` bytes from `conn`: not part of the protocol.
    pub fn handle_binary(&mut self, now: Instant, conn: ConnId, bytes: usize) {
        if self.admit(now, conn, bytes) {
            let message = "binary messages are not supported; send JSON text";
            self.send_error(now, conn, "BAD_REQUEST", message, None);
        }
    }

    fn check_symbol(&self, symbol: &str) -> Result<(), (&'static str, String)> {
        if !self.config.accepts_symbol(symbol) {
            return Err((
                "INVALID_SYMBOL",
                format!(
                    "a symbol is 1 to {} bytes without spaces or control characters",
                    self.config.max_symbol_bytes
                ),
            ));
        }
        if let Some(whitelist) = &self.config.whitelist
            && !whitelist.contains(symbol)
        {
            return Err((
                "SYMBOL_NOT_ALLOWED",
                "this relay does not carry that symbol".to_owned(),
            ));
        }
        Ok(())
    }

    fn subscribe(
        &mut self,
        now: Instant,
        conn: ConnId,
        symbols: Vec<String>,
        interval: Option<Duration>,
    ) {
        let interval = interval.or(self.config.default_update_interval);
        for symbol in symbols {
            if let Err((code, message)) = self.check_symbol(&symbol) {
                let shown: String = symbol.chars().take(self.config.max_symbol_bytes).collect();
                self.send_error(now, conn, code, &message, Some(&shown));
                continue;
            }
            let Some(connection) = self.connections.get(&conn) else {
                return;
            };
            let symbol: Arc<str> = match self.symbols.get_key_value(symbol.as_str()) {
                Some((shared, _)) => shared.clone(),
                None => match self.preloaded.get_key_value(symbol.as_str()) {
                    Some((shared, _)) => shared.clone(),
                    None => Arc::from(symbol),
                },
            };
            let already = connection.symbols.contains(&symbol);
            if !already && connection.symbols.len() >= self.config.max_subscriptions_per_connection
            {
                let message = format!(
                    "a connection may hold {} subscriptions",
                    self.config.max_subscriptions_per_connection
                );
                self.send_error(now, conn, "SUBSCRIPTION_LIMIT", &message, Some(&symbol));
                continue;
            }
            if !self.symbols.contains_key(&symbol) && !self.make_room_upstream(now) {
                let message = format!(
                    "the relay carries at most {} symbols",
                    self.config.max_upstream_symbols
                );
                self.send_error(now, conn, "SYMBOL_LIMIT", &message, Some(&symbol));
                continue;
            }
            if !self.symbols.contains_key(&symbol) {
                let tag = self.allocate_slot();
                // Stored state is used once: from here on the symbol's own state holds it.
                let (quote, bar) = match self.preloaded.remove(&symbol) {
                    Some(stored) => (Some(stored.quote), stored.bar),
                    None => (None, None),
                };
                self.symbols.insert(
                    symbol.clone(),
                    SymbolState {
                        subscribers: BTreeSet::new(),
                        paced: BTreeMap::new(),
                        tag,
                        upstream: false,
                        linger_until: None,
                        stale: quote.is_some(),
                        stored_bar: bar.is_some(),
                        quote,
                        bar,
                        snapshot: None,
                    },
                );
            }
            let Some(state) = self.symbols.get_mut(&symbol) else {
                continue;
            };
            state.subscribers.insert(conn);
            state.linger_until = None;
            // The snapshot below is this subscription's first update: the interval runs from
            // it, unless it is empty (a symbol new upstream), so the first price is not held.
            let previous = match interval {
                Some(interval) => {
                    let has_data = state.quote.is_some() || state.bar.is_some();
                    let next_allowed = if has_data {
                        Self::later(now, interval)
                    } else {
                        now
                    };
                    let pace = Pace {
                        interval,
                        next_allowed,
                        held: false,
                    };
                    state.paced.insert(conn, pace)
                }
                None => state.paced.remove(&conn),
            };
            // A re-subscribe: the snapshot carries whatever was held.
            if let Some(previous) = previous
                && previous.held
            {
                self.pace_timers
                    .remove(&(previous.next_allowed, conn, symbol.clone()));
            }
            if !state.upstream {
                state.upstream = true;
                self.add_upstream(now, &symbol);
            }
            if let Some(connection) = self.connections.get_mut(&conn) {
                connection.symbols.insert(symbol.clone());
            }
            // Also on a repeated subscribe: the client asked for the current state.
            self.send_subscribe_snapshot(now, conn, &symbol, interval);
        }
    }

    /// Frees a slot for a new symbol by ending the lingering subscription that would end
    /// first; false if every carried symbol has subscribers.
    fn make_room_upstream(&mut self, now: Instant) -> bool {
        if self.symbols.len() < self.config.max_upstream_symbols {
            return true;
        }
        let victim = self
            .symbols
            .iter()
            .filter(|(_, state)| state.subscribers.is_empty())
            .min_by_key(|(_, state)| state.linger_until)
            .map(|(symbol, _)| symbol.clone());
        match victim {
            Some(symbol) => {
                self.drop_symbol(now, &symbol);
                true
            }
            None => false,
        }
    }

    fn drop_symbol(&mut self, now: Instant, symbol: &Arc<str>) {
        if let Some(state) = self.symbols.remove(symbol) {
            self.forget_symbol(symbol, &state);
            if state.upstream {
                self.remove_upstream(now, symbol);
            }
        }
    }

    fn unsubscribe(&mut self, now: Instant, conn: ConnId, symbols: Vec<String>) {
        for symbol in symbols {
            let Some(connection) = self.connections.get_mut(&conn) else {
                return;
            };
            if let Some(shared) = connection.symbols.take(symbol.as_str()) {
                connection.owed.remove(&shared);
                self.release(now, conn, &shared);
            }
            if symbol.len() <= self.config.max_symbol_bytes {
                let frame = Frame::new(render::unsubscribed(&symbol), now);
                self.send_control(conn, frame);
            }
        }
    }

    /// `conn` no longer wants `symbol`: the symbol lingers if it was the last subscriber.
    fn release(&mut self, now: Instant, conn: ConnId, symbol: &Arc<str>) {
        let Some(state) = self.symbols.get_mut(symbol) else {
            return;
        };
        state.subscribers.remove(&conn);
        if let Some(pace) = state.paced.remove(&conn)
            && pace.held
        {
            self.pace_timers
                .remove(&(pace.next_allowed, conn, symbol.clone()));
        }
        if state.subscribers.is_empty() {
            if self.config.linger.is_zero() {
                self.drop_symbol(now, symbol);
            } else {
                let until = Self::later(now, self.config.linger);
                state.linger_until = Some(until);
                self.schedule(until);
            }
        }
    }

    fn remove(&mut self, now: Instant, conn: ConnId) -> bool {
        let Some(connection) = self.connections.remove(&conn) else {
            return false;
        };
        for symbol in &connection.symbols {
            self.release(now, conn, symbol);
        }
        true
    }

    fn close(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        if self.remove(now, conn) {
            self.counters.count_disconnect(reason);
            self.outputs.push_back(HubOutput::Close { conn, reason });
        }
    }

    /// Closes every connection and refuses new ones.
    pub fn shutdown(&mut self, now: Instant) {
        self.shut_down = true;
        let mut all: Vec<ConnId> = self.connections.keys().copied().collect();
        all.sort_unstable();
        for conn in all {
            self.close(now, conn, CloseReason::Shutdown);
        }
        self.finish_step();
    }

    fn send_error(
        &mut self,
        now: Instant,
        conn: ConnId,
        code: &str,
        message: &str,
        symbol: Option<&str>,
    ) {
        self.counters.errors_sent = self.counters.errors_sent.saturating_add(1);
        let frame = Frame::new(render::error(code, message, symbol), now);
        self.send_control(conn, frame);
    }

    fn send_control(&mut self, conn: ConnId, frame: Frame) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        let bound = self.config.queue_capacity.saturating_add(CONTROL_HEADROOM);
        if connection.waiting() >= bound {
            self.counters.control_frames_dropped =
                self.counters.control_frames_dropped.saturating_add(1);
            return;
        }
        connection.backlog.push_back(frame);
        self.pump_connection(conn);
    }

    fn snapshot_frame(&mut self, now: Instant, symbol: &Arc<str>) -> Option<Frame> {
        let state = self.symbols.get_mut(symbol)?;
        if let Some(frame) = &state.snapshot {
            return Some(frame.clone());
        }
        let frame = Frame::data(
            render::snapshot_marked(
                symbol,
                state.quote.as_ref(),
                state.bar.as_ref(),
                state.stale,
            ),
            state.tag,
            now,
        );
        state.snapshot = Some(frame.clone());
        Some(frame)
    }

    /// Queues a snapshot of `symbol` for `conn` (see [`Hub::deliver`]), counting it if stale.
    /// Snapshots of the current state only: staleness is read from the symbol, not the frame,
    /// which keeps frames as small as they are.
    fn deliver_snapshot(&mut self, now: Instant, conn: ConnId, symbol: &Arc<str>, frame: Frame) {
        let stale = self.symbols.get(symbol).is_some_and(|state| state.stale);
        if self.deliver(now, conn, symbol, frame) && stale {
            self.counters.stale_snapshots_sent =
                self.counters.stale_snapshots_sent.saturating_add(1);
        }
    }

    /// The answer to a subscribe: the shared snapshot, naming the interval when there is one.
    fn send_subscribe_snapshot(
        &mut self,
        now: Instant,
        conn: ConnId,
        symbol: &Arc<str>,
        interval: Option<Duration>,
    ) {
        let Some(mut frame) = self.snapshot_frame(now, symbol) else {
            return;
        };
        if let Some(interval) = interval {
            frame.text = Bytes::from(render::with_update_interval(&frame.text, interval));
        }
        self.deliver_snapshot(now, conn, symbol, frame);
    }

    /// A data frame of a paced subscription goes out other than through [`Hub::broadcast`] (a
    /// catch-up snapshot): it carries the current state, so nothing is held any more, and the
    /// interval starts again.
    fn paced_sent(&mut self, now: Instant, conn: ConnId, symbol: &Arc<str>) {
        let Some(state) = self.symbols.get_mut(symbol) else {
            return;
        };
        let Some(pace) = state.paced.get_mut(&conn) else {
            return;
        };
        if pace.held {
            pace.held = false;
            self.pace_timers
                .remove(&(pace.next_allowed, conn, symbol.clone()));
        }
        pace.next_allowed = Self::later(now, pace.interval);
    }

    /// Sends the current state (a snapshot) for every held paced update now due.
    fn release_held(&mut self, now: Instant) {
        while self
            .pace_timers
            .first()
            .is_some_and(|(due, _, _)| *due <= now)
        {
            let Some((_, conn, symbol)) = self.pace_timers.pop_first() else {
                return;
            };
            let Some(pace) = self
                .symbols
                .get_mut(&symbol)
                .and_then(|state| state.paced.get_mut(&conn))
            else {
                continue;
            };
            if !pace.held {
                continue;
            }
            pace.held = false;
            pace.next_allowed = Self::later(now, pace.interval);
            if let Some(frame) = self.snapshot_frame(now, &symbol) {
                self.deliver_snapshot(now, conn, &symbol, frame);
            }
        }
    }

    /// Queues a data frame for `conn` (true), or, if it is behind, records that it owes the
    /// latest state of `symbol` (false).
    fn deliver(&mut self, now: Instant, conn: ConnId, symbol: &Arc<str>, frame: Frame) -> bool {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return false;
        };
        if connection.behind_since.is_some() {
            connection.owed.insert(symbol.clone());
            self.counters.deliveries_conflated =
                self.counters.deliveries_conflated.saturating_add(1);
            return false;
        }
        if connection.waiting() < self.config.queue_capacity {
            connection.backlog.push_back(frame);
            self.pump_connection(conn);
            return true;
        }
        self.fall_behind(now, conn, symbol);
        false
    }

    /// `conn`'s queue is full: from now on it is owed the latest state per symbol, not every
    /// update. Out of line: the fan-out path stays as small as it can be.
    #[cold]
    fn fall_behind(&mut self, now: Instant, conn: ConnId, symbol: &Arc<str>) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        connection.behind_since = Some(now);
        connection.owed.insert(symbol.clone());
        self.counters.deliveries_conflated = self.counters.deliveries_conflated.saturating_add(1);
        let warn = connection.last_warning.is_none_or(|last| {
            now.saturating_duration_since(last) >= self.config.slow_consumer_deadline
        });
        // The warning is a control frame like the others: at the control bound it is dropped
        // (and counted), so the queue never holds more than its bound.
        let room =
            connection.waiting() < self.config.queue_capacity.saturating_add(CONTROL_HEADROOM);
        if warn && !room {
            self.counters.control_frames_dropped =
                self.counters.control_frames_dropped.saturating_add(1);
        }
        if warn && room {
            connection.last_warning = Some(now);
            self.counters.slow_consumer_warnings =
                self.counters.slow_consumer_warnings.saturating_add(1);
            // Counted for each symbol it holds: which symbols' readers fall behind.
            for subscribed in &connection.symbols {
                if let Some(state) = self.symbols.get(subscribed)
                    && let Some(slot) = self.slots.get_mut(state.tag.slot as usize)
                    && slot.generation == state.tag.generation
                {
                    slot.counters.slow_consumers = slot.counters.slow_consumers.saturating_add(1);
                }
            }
            let message = format!(
                "this connection reads too slowly: updates are conflated to the latest value per \
                 symbol, and it is closed if still behind in {} ms",
                self.config.slow_consumer_deadline.as_millis()
            );
            // Ahead of the queued data: the warning is news, the backlog is already stale.
            connection
                .backlog
                .push_front(Frame::new(render::warning("SLOW_CONSUMER", &message), now));
        }
        self.schedule(Self::later(now, self.config.slow_consumer_deadline));
        self.pump_connection(conn);
    }

    fn pump(&mut self, now: Instant, conn: ConnId) {
        self.pump_connection(conn);
        self.flush_owed(now, conn);
    }

    /// Hands queued frames to the socket writer, up to the send window.
    // Inlined into the fan-out path, as it was before it counted per symbol.
    #[inline(always)]
    fn pump_connection(&mut self, conn: ConnId) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        while connection.in_flight < self.config.send_window {
            let Some(frame) = connection.backlog.pop_front() else {
                break;
            };
            connection.in_flight = connection.in_flight.saturating_add(1);
            self.counters.frames_sent = self.counters.frames_sent.saturating_add(1);
            // A control frame's slot index is out of range: no separate test for it.
            if let Some(slot) = self.slots.get_mut(frame.tag.slot as usize)
                && slot.generation == frame.tag.generation
            {
                slot.counters.messages_sent = slot.counters.messages_sent.saturating_add(1);
            }
            self.counters.bytes_sent = self
                .counters
                .bytes_sent
                .saturating_add(frame.text.len() as u64);
            self.outputs.push_back(HubOutput::Transmit { conn, frame });
        }
    }

    /// Once a lagging connection's backlog is out, sends the latest state of each symbol it is
    /// owed; when nothing is owed any more it has caught up.
    fn flush_owed(&mut self, now: Instant, conn: ConnId) {
        loop {
            let Some(connection) = self.connections.get_mut(&conn) else {
                return;
            };
            if connection.behind_since.is_none()
                || !connection.backlog.is_empty()
                || connection.in_flight >= self.config.send_window
            {
                return;
            }
            let Some(symbol) = connection.owed.pop_first() else {
                connection.behind_since = None;
                return;
            };
            if !connection.symbols.contains(&symbol) {
                continue;
            }
            self.paced_sent(now, conn, &symbol);
            if let Some(frame) = self.snapshot_frame(now, &symbol)
                && let Some(connection) = self.connections.get_mut(&conn)
            {
                connection.backlog.push_back(frame);
                if self.symbols.get(&symbol).is_some_and(|state| state.stale) {
                    self.counters.stale_snapshots_sent =
                        self.counters.stale_snapshots_sent.saturating_add(1);
                }
                self.pump_connection(conn);
            }
        }
    }

    /// The latest merged quote of a symbol from upstream. Subscribers get the fields that
    /// differ from what was last broadcast; nothing is sent if none does. The first quote of
    /// a symbol showing stored state ([`Hub::preload`]) confirms it instead: it replaces the
    /// stored quote and every subscriber gets a fresh `snapshot` without `"stale"`, even if no
    /// field changed, as [`Hub::resync`] does.
    pub fn handle_quote(&mut self, now: Instant, quote: &Quote) {
        self.counters.updates_received = self.counters.updates_received.saturating_add(1);
        let Some(state) = self.symbols.get_mut(quote.symbol.as_ref()) else {
            return;
        };
        if state.stale {
            // A delta would be against stored values the consumer cannot tell from live ones.
            state.stale = false;
            state.quote = Some(quote.clone());
            state.snapshot = None;
            self.refresh(now, &quote.symbol);
            return;
        }
        let symbol = &quote.symbol;
        let fields = render::changed_fields(state.quote.as_ref(), quote);
        if fields.is_empty() {
            self.counters.updates_unchanged = self.counters.updates_unchanged.saturating_add(1);
            return;
        }
        let frame = Frame::data(
            render::quote_update(symbol, quote, fields, state.quote.as_ref()),
            state.tag,
            now,
        );
        state.quote = Some(quote.clone());
        state.snapshot = None;
        self.broadcast(now, &quote.symbol, frame);
    }

    /// A bar of `symbol`'s series (the configured timeframe), forming or closed. The first
    /// upstream bar replaces a stored one ([`Hub::preload`]) whatever the two bars' times, but
    /// leaves the symbol stale: only its first upstream quote confirms it.
    pub fn handle_bar(
        &mut self,
        now: Instant,
        symbol: &str,
        timeframe: &Arc<str>,
        bar: &Bar,
        closed: bool,
    ) {
        self.counters.updates_received = self.counters.updates_received.saturating_add(1);
        let Some((symbol, _)) = self.symbols.get_key_value(symbol) else {
            return;
        };
        let symbol = symbol.clone();
        let Some(state) = self.symbols.get_mut(&symbol) else {
            return;
        };
        let new = BarState {
            timeframe: timeframe.clone(),
            bar: *bar,
            closed,
        };
        let stored = std::mem::take(&mut state.stored_bar);
        // The bar's position in the series moves on every reload; it says nothing new.
        let unchanged = state.bar.as_ref().is_some_and(|old| {
            old.timeframe == new.timeframe
                && old.closed == new.closed
                && Bar {
                    index: 0,
                    ..old.bar
                } == Bar {
                    index: 0,
                    ..new.bar
                }
        });
        if unchanged {
            self.counters.updates_unchanged = self.counters.updates_unchanged.saturating_add(1);
            return;
        }
        // A closed bar never replaces a newer one as "the latest bar".
        // A stored bar is no measure: upstream's series is the truth from its first bar on.
        let older = !stored
            && state
                .bar
                .as_ref()
                .is_some_and(|old| old.bar.time > new.bar.time);
        let frame = Frame::data(render::bar_update(&symbol, &new), state.tag, now);
        if !older {
            state.bar = Some(new);
            state.snapshot = None;
        }
        self.broadcast(now, &symbol, frame);
    }

    fn broadcast(&mut self, now: Instant, symbol: &Arc<str>, frame: Frame) {
        let Some(state) = self.symbols.get_mut(symbol) else {
            return;
        };
        if state.paced.is_empty() {
            let subscribers: Vec<ConnId> = state.subscribers.iter().copied().collect();
            for conn in subscribers {
                self.deliver(now, conn, symbol, frame.clone());
            }
            return;
        }
        // Paced subscribers get the change only once their interval has passed; earlier, it is
        // held (once: later changes only make the held state newer) until the interval ends.
        let mut changed = Vec::with_capacity(state.subscribers.len());
        let mut overdue = Vec::new();
        for conn in &state.subscribers {
            let Some(pace) = state.paced.get_mut(conn) else {
                changed.push(*conn);
                continue;
            };
            if now < pace.next_allowed {
                if !pace.held {
                    pace.held = true;
                    self.pace_timers
                        .insert((pace.next_allowed, *conn, symbol.clone()));
                }
                continue;
            }
            if pace.held {
                // Its timer is due but has not run yet: it missed changes, so the diff would
                // not apply; the whole current state goes instead.
                pace.held = false;
                self.pace_timers
                    .remove(&(pace.next_allowed, *conn, symbol.clone()));
                overdue.push(*conn);
            } else {
                changed.push(*conn);
            }
            pace.next_allowed = Self::later(now, pace.interval);
        }
        for conn in changed {
            self.deliver(now, conn, symbol, frame.clone());
        }
        if !overdue.is_empty()
            && let Some(snapshot) = self.snapshot_frame(now, symbol)
        {
            for conn in overdue {
                self.deliver_snapshot(now, conn, symbol, snapshot.clone());
            }
        }
    }

    /// Upstream rejected `symbol` (e.g. no such symbol): its subscribers get an
    /// `UNKNOWN_SYMBOL` error and lose the subscription. Upstream has already dropped it.
    pub fn handle_symbol_error(&mut self, now: Instant, symbol: &str, reason: &str) {
        let message = format!("upstream rejected the symbol: {reason}");
        self.reject_symbol(now, symbol, "UNKNOWN_SYMBOL", &message);
    }

    /// Upstream does not carry `symbol` (it rejected it, or has no room for it): its
    /// subscribers get an error with `code` and lose the subscription, and no upstream change
    /// about it is pending any more.
    pub fn reject_symbol(&mut self, now: Instant, symbol: &str, code: &str, message: &str) {
        // Upstream has already forgotten it: no pending change about it may go out, even when
        // the hub itself had already let it go.
        self.upstream_adds
            .retain(|pending| pending.as_ref() != symbol);
        self.upstream_removes
            .retain(|pending| pending.as_ref() != symbol);
        let Some((symbol, state)) = self.symbols.remove_entry(symbol) else {
            return;
        };
        self.forget_symbol(&symbol, &state);
        let symbol = symbol.as_ref();
        for conn in state.subscribers {
            if let Some(connection) = self.connections.get_mut(&conn) {
                connection.symbols.remove(symbol);
                connection.owed.remove(symbol);
            }
            self.send_error(now, conn, code, message, Some(symbol));
        }
    }

    /// Upstream refused the bar series of `symbol`: its subscribers get a `BARS_UNAVAILABLE`
    /// error naming the symbol and keep their quote subscription; the symbol's last bar is
    /// forgotten so snapshots stop carrying it.
    pub fn handle_series_error(&mut self, now: Instant, symbol: &str, reason: &str) {
        let Some(state) = self.symbols.get_mut(symbol) else {
            return;
        };
        state.bar = None;
        state.stored_bar = false;
        state.snapshot = None;
        let subscribers: Vec<ConnId> = state.subscribers.iter().copied().collect();
        let message = format!("no bars for this symbol (its quotes continue): {reason}");
        for conn in subscribers {
            self.send_error(now, conn, "BARS_UNAVAILABLE", &message, Some(symbol));
        }
    }

    /// The upstream connection's state changed: every connection is told.
    pub fn handle_upstream_state(&mut self, now: Instant, state: State) {
        if state == self.upstream_state {
            return;
        }
        self.upstream_state = state;
        self.announce_status(now);
    }

    /// The relay lost (true) or regained (false) its cluster's store: while it is lost,
    /// every connection's status says `"upstream":"degraded"` (the data may be stale or
    /// stop); then the upstream state again.
    ///
    /// ```
    /// use std::time::Instant;
    /// use tickwire_core::hub::{Hub, HubConfig, HubOutput};
    ///
    /// let now = Instant::now();
    /// let mut hub = Hub::new(HubConfig::default()).unwrap();
    /// let conn = hub.connect(now).unwrap();
    /// while hub.poll_output().is_some() {}
    /// hub.set_degraded(now, true);
    /// let Some(HubOutput::Transmit { frame, .. }) = hub.poll_output() else { panic!() };
    /// assert_eq!(frame.as_str(), r#"{"type":"status","upstream":"degraded"}"#);
    /// assert!(hub.is_degraded());
    /// ```
    pub fn set_degraded(&mut self, now: Instant, degraded: bool) {
        if degraded == self.degraded {
            return;
        }
        self.degraded = degraded;
        self.announce_status(now);
    }

    /// Whether the status reports `degraded` (see [`Hub::set_degraded`]).
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    fn announce_status(&mut self, now: Instant) {
        let name = if self.degraded {
            "degraded"
        } else {
            self.upstream_state.as_str()
        };
        self.status_frame = Bytes::from(render::status(name));
        let mut all: Vec<ConnId> = self.connections.keys().copied().collect();
        all.sort_unstable();
        for conn in all {
            let frame = Frame {
                text: self.status_frame.clone(),
                origin: now,
                tag: SymbolTag::CONTROL,
            };
            self.send_control(conn, frame);
        }
    }

    /// `quote` is the symbol's whole state from elsewhere (a cluster snapshot, a new leader's
    /// first quote): it replaces the hub's without a delta, and every subscriber gets a fresh
    /// `snapshot` of it (see [`Hub::refresh`]). It is live state, so it confirms a symbol
    /// showing stored state ([`Hub::preload`]).
    pub fn resync(&mut self, now: Instant, quote: &Quote) {
        self.counters.updates_received = self.counters.updates_received.saturating_add(1);
        let Some(state) = self.symbols.get_mut(quote.symbol.as_ref()) else {
            return;
        };
        state.stale = false;
        state.quote = Some(quote.clone());
        state.snapshot = None;
        self.refresh(now, &quote.symbol);
    }

    /// Remembers `quote`, and optionally the symbol's last bar (its timeframe, the bar, whether
    /// it had closed), as the last known state of `quote.symbol`: state a restarted relay loads
    /// from its store before upstream has said anything. The symbol's first subscriber then
    /// gets it at once, in a `snapshot` marked `"stale":true`, instead of an empty one; the
    /// stored state is used once, and later the symbol's state is whatever upstream sends.
    ///
    /// The symbol's first upstream quote confirms it (see [`Hub::handle_quote`]): every
    /// subscriber gets a fresh snapshot without `"stale"`. An upstream bar replaces the stored
    /// bar but does not confirm.
    ///
    /// Returns false, keeping nothing, when the hub could never use the state: the symbol is
    /// one a subscribe would be refused (its shape, the whitelist), the hub already holds
    /// stored state of [`HubConfig::max_upstream_symbols`] other symbols, or the symbol is
    /// carried and already has a quote or bar (upstream's data is newer than any store's, and
    /// stored state already shown stays as it is). A carried symbol without data takes the
    /// state at once and its subscribers get the stale snapshot. Preloading a symbol still
    /// waiting replaces its stored state.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Instant;
    /// use tickwire_core::client::Quote;
    /// use tickwire_core::hub::{Hub, HubConfig, HubOutput};
    ///
    /// let now = Instant::now();
    /// let mut hub = Hub::new(HubConfig::default()).unwrap();
    /// let stored = Quote { last_price: Some(1.08), ..Quote::new(Arc::from("FX:EURUSD")) };
    /// assert!(hub.preload(now, stored, None));
    /// assert_eq!(hub.preloaded_count(), 1);
    ///
    /// let conn = hub.connect(now).unwrap();
    /// hub.handle_text(now, conn, r#"{"action":"subscribe","symbols":["FX:EURUSD"]}"#);
    /// let frames = |hub: &mut Hub| -> Vec<String> {
    ///     std::iter::from_fn(|| hub.poll_output())
    ///         .filter_map(|output| match output {
    ///             HubOutput::Transmit { frame, .. } => Some(frame.as_str().to_owned()),
    ///             _ => None,
    ///         })
    ///         .collect()
    /// };
    /// // The status, then the stored state, marked stale.
    /// assert_eq!(
    ///     frames(&mut hub)[1],
    ///     r#"{"type":"snapshot","symbol":"FX:EURUSD","quote":{"lp":1.08},"bar":null,"stale":true}"#
    /// );
    /// assert_eq!(hub.preloaded_count(), 0);
    ///
    /// // Upstream's first quote confirms the symbol: the whole state again, live.
    /// let live = Quote { last_price: Some(1.09), ..Quote::new(Arc::from("FX:EURUSD")) };
    /// hub.handle_quote(now, &live);
    /// assert_eq!(
    ///     frames(&mut hub),
    ///     [r#"{"type":"snapshot","symbol":"FX:EURUSD","quote":{"lp":1.09},"bar":null}"#]
    /// );
    /// ```
    pub fn preload(
        &mut self,
        now: Instant,
        quote: Quote,
        bar: Option<(Arc<str>, Bar, bool)>,
    ) -> bool {
        // No subscribe could take it: it must not hold a place another symbol could use.
        if self.check_symbol(&quote.symbol).is_err() {
            return false;
        }
        let bar = bar.map(|(timeframe, bar, closed)| BarState {
            timeframe,
            bar,
            closed,
        });
        if let Some((symbol, state)) = self.symbols.get_key_value(quote.symbol.as_ref()) {
            if state.quote.is_some() || state.bar.is_some() {
                return false;
            }
            let symbol = symbol.clone();
            let Some(state) = self.symbols.get_mut(&symbol) else {
                return false;
            };
            state.stale = true;
            state.stored_bar = bar.is_some();
            state.quote = Some(quote);
            state.bar = bar;
            state.snapshot = None;
            self.refresh(now, &symbol);
            return true;
        }
        if self.preloaded.len() >= self.config.max_upstream_symbols
            && !self.preloaded.contains_key(quote.symbol.as_ref())
        {
            return false;
        }
        self.preloaded
            .insert(quote.symbol.clone(), Preloaded { quote, bar });
        true
    }

    /// Symbols whose stored state ([`Hub::preload`]) waits for a first subscriber.
    pub fn preloaded_count(&self) -> usize {
        self.preloaded.len()
    }

    /// The symbol's state was resynchronised from elsewhere (a cluster snapshot): every
    /// subscriber gets a fresh `snapshot` of it, so none keeps a stale value silently. A
    /// subscriber that is behind is owed it like any other update.
    pub fn refresh(&mut self, now: Instant, symbol: &str) {
        let Some((symbol, state)) = self.symbols.get_key_value(symbol) else {
            return;
        };
        let symbol = symbol.clone();
        let subscribers: Vec<ConnId> = state.subscribers.iter().copied().collect();
        let Some(frame) = self.snapshot_frame(now, &symbol) else {
            return;
        };
        for conn in subscribers {
            self.deliver_snapshot(now, conn, &symbol, frame.clone());
            self.paced_sent(now, conn, &symbol);
        }
    }

    /// Time passed: sends held updates whose interval ended, closes connections past their
    /// keepalive or slow-consumer deadline and ends lingering upstream subscriptions.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.upstream_due.is_some_and(|due| due <= now) {
            self.flush_upstream();
        }
        self.release_held(now);
        if self.sweep_due().is_none_or(|due| due > now) {
            return;
        }
        self.last_sweep = Some(now);
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        let keepalive = self.config.keepalive_timeout;
        let deadline = self.config.slow_consumer_deadline;
        for (conn, connection) in &self.connections {
            let silent_until = Self::later(connection.last_heard, keepalive);
            if silent_until <= now {
                expired.push((*conn, CloseReason::KeepaliveTimeout));
                continue;
            }
            let mut earliest = silent_until;
            if let Some(since) = connection.behind_since {
                let cut_at = Self::later(since, deadline);
                if cut_at <= now {
                    expired.push((*conn, CloseReason::SlowConsumer));
                    continue;
                }
                earliest = earliest.min(cut_at);
            }
            next = Some(next.map_or(earliest, |next| next.min(earliest)));
        }
        let mut ended = Vec::new();
        for (symbol, state) in &self.symbols {
            if let Some(until) = state.linger_until
                && state.subscribers.is_empty()
            {
                if until <= now {
                    ended.push(symbol.clone());
                } else {
                    next = Some(next.map_or(until, |next| next.min(until)));
                }
            }
        }
        // Set before closing: a closed connection's symbols start lingering and schedule that.
        self.next_check = next;
        expired.sort_unstable();
        for (conn, reason) in expired {
            self.close(now, conn, reason);
        }
        for symbol in ended {
            self.drop_symbol(now, &symbol);
        }
        self.finish_step();
    }
}

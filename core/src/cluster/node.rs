//! One relay of a cluster: its hub, its part in the lease, the cluster-wide demand, and, while
//! it leads, the upstream feed it carries for everyone, all composed without I/O.
//!
//! Every relay fans out to its own clients through its own [`Fanout`], whose upstream is the
//! cluster's stream ([`Follower`]); what its hub wants becomes its demand entry in the store.
//! The relay that holds the lease also runs the *carrier*: it asks the driver to open the
//! upstream feed, carries the union of every relay's demand on it (lingering symbols that
//! nobody wants any more, like a single relay), publishes each change through the store
//! ([`Publisher`], fenced by its epoch), and feeds its own hub straight from the feed, so its
//! clients keep their data when the store is away.
//!
//! # Driving contract
//!
//! - **Inputs.** Downstream socket events to [`Node::connect`], [`Node::handle_text`],
//!   [`Node::handle_written`], [`Node::disconnect`]…; the upstream feed's events (only while
//!   the node has asked for one to be open) to [`Node::handle_feed_event`]; the store link's
//!   reports to [`Node::handle_store_connected`], [`Node::handle_store_failed`],
//!   [`Node::handle_store_reply`] (one per [`StoreRequest`], in order),
//!   [`Node::handle_stream_message`] and [`Node::handle_demand_message`]; and the time
//!   returned by [`Node::poll_timeout`] passing to [`Node::handle_timeout`]. Each with the
//!   current time; an earlier time than one already seen counts as that one.
//! - **Outputs.** After every input drain [`Node::poll_output`] until it returns `None`,
//!   passing the upstream feed when one is open: upstream commands are carried out on it
//!   during the drain. [`NodeOutput::OpenUpstream`] asks the driver to open a feed (pass it
//!   from the next call on); [`NodeOutput::CloseUpstream`] to close it at once (pass `None`
//!   from then on). [`NodeOutput::ConnectStore`] asks for a new store link; the link answers
//!   with `handle_store_connected` or `handle_store_failed`, and any failure later ends it.
//! - **Time.** A failed store link is retried after the core's backoff with jitter
//!   ([`policy::retry_delay`]), never at a fixed rate, and its failure count is reset only
//!   after a request succeeded, so a store that accepts and then fails at once still backs
//!   off. Lease timing is [`Lease`]'s.
//! - **Bounds.** At most [`NodeConfig::max_publishes_in_flight`] publishes are outstanding;
//!   past that a symbol's changes are coalesced into one `snapshot` message sent when the
//!   store catches up. Other requests are bounded by the symbol cap (one snapshot read per
//!   wanted symbol) and are at most one each otherwise.
//!
//! ```
//! use std::time::Instant;
//! use tickwire_core::client::Config;
//! use tickwire_core::cluster::{Keys, Node, NodeConfig, NodeOutput, StoreReply, StoreRequest};
//! use tickwire_core::hub::{HubConfig, UpstreamPlan};
//!
//! let now = Instant::now();
//! let config = NodeConfig::new(Keys::new("demo").unwrap(), "relay-a");
//! let mut node =
//!     Node::new(config, HubConfig::default(), UpstreamPlan::default(), &Config::default(), now)
//!         .unwrap();
//! // First the node asks for its store link.
//! assert_eq!(node.poll_output(now, None), Some(NodeOutput::ConnectStore));
//! node.handle_store_connected(now);
//! node.handle_timeout(now);
//! let mut asked = Vec::new();
//! while let Some(output) = node.poll_output(now, None) {
//!     if let NodeOutput::Store(request) = output {
//!         asked.push(request);
//!     }
//! }
//! // It announces its (empty) demand and asks for the lease.
//! assert!(matches!(asked[0], StoreRequest::WriteDemand { .. }));
//! assert!(asked.iter().any(|request| matches!(request, StoreRequest::AcquireLease { .. })));
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::demand::DemandEntry;
use super::{
    Demand, Follower, FollowerOutput, Keys, Lease, LeaseConfig, LeaseEvent, LeaseReply,
    LeaseRequest, Published, Publisher, Role, SnapshotWrite, StoreReply, StoreRequest,
};
use crate::client::{BarsError, Config, Event, SeriesId, State, policy};
use crate::hub::{
    CloseReason, ConnId, Fanout, FanoutError, FanoutOutput, HubConfig, Refused, UpstreamFeed,
    UpstreamPlan,
};
use crate::instant::later;

/// Cluster settings of one relay. [`NodeConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// The cluster's keys.
    pub keys: Keys,
    /// The lease (this relay's id is its `relay_id`).
    pub lease: LeaseConfig,
    /// How long a demand entry lives without a rewrite; it is rewritten every third of it.
    pub demand_ttl: Duration,
    /// How often the leader repeats its upstream state on the stream, so followers can tell
    /// a quiet market from a dead leader.
    pub heartbeat: Duration,
    /// A follower that hears nothing from a leader this long reports the upstream as
    /// `connecting` until it does.
    pub leader_silence: Duration,
    /// First wait before reconnecting to a failed store (doubling, with jitter).
    pub store_backoff_initial: Duration,
    /// Longest wait before reconnecting to a failed store.
    pub store_backoff_max: Duration,
    /// Jitter fraction of every store reconnect wait (0.0–1.0).
    pub store_jitter: f64,
    /// Publishes outstanding at most; past it changes are coalesced per symbol.
    pub max_publishes_in_flight: usize,
}

impl NodeConfig {
    /// The defaults for relay `relay_id` of cluster `keys`: a 15 s demand TTL, a 1 s
    /// heartbeat, 4 s of leader silence, store reconnects after 0.25 s doubling to 10 s with
    /// 50 % jitter, 1024 publishes in flight; the lease's defaults are [`LeaseConfig::new`]'s.
    pub fn new(keys: Keys, relay_id: &str) -> NodeConfig {
        NodeConfig {
            keys,
            lease: LeaseConfig::new(relay_id),
            demand_ttl: Duration::from_secs(15),
            heartbeat: Duration::from_secs(1),
            leader_silence: Duration::from_secs(4),
            store_backoff_initial: Duration::from_millis(250),
            store_backoff_max: Duration::from_secs(10),
            store_jitter: 0.5,
            max_publishes_in_flight: 1024,
        }
    }
}

/// What the relay must do.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeOutput {
    /// A downstream output of the hub.
    Downstream(FanoutOutput),
    /// Send this to the store link.
    Store(StoreRequest),
    /// Open a new store link (the last one ended).
    ConnectStore,
    /// Open the upstream feed and pass it to [`Node::poll_output`] from now on.
    OpenUpstream,
    /// Close the upstream feed now; pass `None` from now on.
    CloseUpstream,
}

/// The state of the link to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    /// No link; the next attempt is at `retry_at`.
    Down {
        /// When [`NodeOutput::ConnectStore`] is output.
        retry_at: Instant,
    },
    /// A link is being opened.
    Connecting,
    /// Linked.
    Up,
}

impl StoreState {
    /// Lower-case name, as metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Down { .. } => "down",
            StoreState::Connecting => "connecting",
            StoreState::Up => "up",
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Stream messages sent to the store.
    pub published: u64,
    /// Publishes the store refused: a newer leader's epoch was stored.
    pub publishes_fenced: u64,
    /// Changes not published one by one while the store was behind (sent later as one
    /// `snapshot` message per symbol).
    pub publishes_coalesced: u64,
    /// Store links opened.
    pub store_connects: u64,
    /// Store links that failed.
    pub store_failures: u64,
    /// Demand entries that could not be read.
    pub demand_entries_bad: u64,
    /// Symbols the upstream feed had no room for.
    pub symbols_refused: u64,
}

/// A request sent to the store and not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Lease,
    WriteDemand,
    RemoveDemand,
    ReadDemand,
    Publish,
    Snapshot(Arc<str>),
    Prune,
}

/// The hub's upstream: the cluster stream, followed for what the hub wants.
#[derive(Debug)]
struct StreamSide {
    follower: Follower,
    /// The symbols the hub carries (its demand).
    local: BTreeSet<Arc<str>>,
    series: HashMap<SeriesId, Arc<str>>,
    next_series: u64,
    changed: bool,
}

impl UpstreamFeed for StreamSide {
    fn subscribe_quotes(&mut self, _now: Instant, symbols: &[Arc<str>]) -> usize {
        let mut added: usize = 0;
        for symbol in symbols {
            if !self.local.contains(symbol) && self.follower.want(symbol) {
                self.local.insert(symbol.clone());
                self.changed = true;
                added = added.saturating_add(1);
            }
        }
        added
    }

    fn unsubscribe_quotes(&mut self, _now: Instant, symbols: &[Arc<str>]) {
        for symbol in symbols {
            if self.local.remove(symbol) {
                self.follower.unwant(symbol);
                self.changed = true;
            }
        }
    }

    fn carries_quote(&self, symbol: &str) -> bool {
        self.local.contains(symbol)
    }

    fn subscribe_bars(
        &mut self,
        _now: Instant,
        symbol: &str,
        _timeframe: &str,
        _history: u32,
    ) -> Result<SeriesId, BarsError> {
        // The leader's plan decides what the stream carries; this only names the series.
        self.next_series = self.next_series.saturating_add(1);
        let series = SeriesId(self.next_series);
        self.series.insert(series, Arc::from(symbol));
        Ok(series)
    }

    fn unsubscribe_bars(&mut self, _now: Instant, series: SeriesId) {
        self.series.remove(&series);
    }
}

/// A symbol's stored snapshot still to be deleted because the publish window was full when it
/// went (it left demand, or the upstream rejected it).
#[derive(Debug)]
struct PendingDelete {
    /// The epoch `message` was rendered for.
    epoch: u64,
    /// The upstream's reason, when it rejected the symbol (the message says it to followers).
    rejection: Option<String>,
    message: String,
}

#[derive(Debug)]
struct Carried {
    series: Option<SeriesId>,
    /// Nobody wants it any more: it leaves the feed at this time.
    leaving: Option<Instant>,
}

/// The upstream feed this relay carries while it leads (and, while the store is away, for
/// its own clients only).
#[derive(Debug)]
struct Carrier {
    publisher: Publisher,
    /// Publishing to the store (holding the lease); false while carrying for its own clients
    /// only.
    leading: bool,
    /// The hub's symbols when this feed opened: their first quote from it is taken whole and
    /// sent to subscribers as a fresh snapshot.
    fresh: BTreeSet<Arc<str>>,
    /// The lease ran out while the store is reachable: until the store says who leads, the
    /// feed's data reaches neither the store nor the hub (another relay may lead by now).
    suspended: bool,
    carried: BTreeMap<Arc<str>, Carried>,
    /// Rejected upstream: not asked again while still wanted.
    rejected: BTreeSet<Arc<str>>,
    to_add: BTreeSet<Arc<str>>,
    to_remove: Vec<(Arc<str>, Option<SeriesId>)>,
    state: State,
    /// The demand was read since this relay took the lease (then old snapshots are pruned).
    pruned: bool,
    next_heartbeat: Option<Instant>,
}

/// One relay of a cluster. See the [module docs](self).
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    relay_id: String,
    fanout: Fanout,
    stream: StreamSide,
    timeframe: Option<String>,
    bar_history: u32,
    linger: Duration,
    lease: Lease,
    demand: Demand,
    /// The upstream symbol cap: the feed carries at most this many, lingering ones included.
    cap: usize,
    carrier: Option<Carrier>,
    store: StoreState,
    store_failures: u32,
    in_flight: VecDeque<Pending>,
    publishes_in_flight: usize,
    /// Symbols whose changes were not published while the store was behind.
    dirty: BTreeSet<Arc<str>>,
    /// The dirty symbols whose snapshot is to be deleted rather than published.
    deletes: BTreeMap<Arc<str>, PendingDelete>,
    /// Snapshot reads waiting for the store.
    reads_waiting: BTreeSet<Arc<str>>,
    demand_dirty: bool,
    next_demand_write: Instant,
    next_demand_read: Option<Instant>,
    /// The leader's last reported state, and when a leader was last heard.
    leader_state: State,
    last_heard: Instant,
    leader_silent: bool,
    /// The highest epoch seen (followed, held or published with): the floor of the next one.
    highest_epoch: u64,
    outputs: VecDeque<NodeOutput>,
    rng: fastrand::Rng,
    counters: NodeCounters,
    latest: Instant,
    closing: bool,
}

fn earliest(due: &mut Option<Instant>, at: Instant) {
    *due = Some(due.map_or(at, |due| due.min(at)));
}

impl Node {
    /// A relay of the cluster, with a hub of `hub` limits whose symbols the cluster's upstream
    /// client (configured as `upstream`) carries per `plan` while this relay leads.
    ///
    /// # Errors
    /// [`FanoutError`], as for a single relay's [`Fanout::new`].
    pub fn new(
        config: NodeConfig,
        hub: HubConfig,
        plan: UpstreamPlan,
        upstream: &Config,
        now: Instant,
    ) -> Result<Node, FanoutError> {
        let cap = hub.max_upstream_symbols;
        let linger = hub.linger;
        let bar_history = plan.bar_history;
        let mut fanout = Fanout::new(hub, plan, upstream)?;
        let timeframe = fanout.timeframe().map(str::to_owned);
        fanout.handle_upstream_state(now, State::Connecting);
        let relay_id = config.lease.relay_id.clone();
        let rng = fastrand::Rng::with_seed(config.lease.seed ^ 0x5707_e5ee);
        Ok(Node {
            lease: Lease::new(config.lease.clone(), now),
            demand: Demand::new(cap),
            cap,
            relay_id,
            fanout,
            stream: StreamSide {
                follower: Follower::new(cap),
                local: BTreeSet::new(),
                series: HashMap::new(),
                next_series: 0,
                changed: false,
            },
            timeframe,
            bar_history,
            linger,
            carrier: None,
            store: StoreState::Connecting,
            store_failures: 0,
            in_flight: VecDeque::new(),
            publishes_in_flight: 0,
            dirty: BTreeSet::new(),
            deletes: BTreeMap::new(),
            reads_waiting: BTreeSet::new(),
            demand_dirty: true,
            next_demand_write: now,
            next_demand_read: None,
            leader_state: State::Connecting,
            last_heard: now,
            leader_silent: true,
            highest_epoch: 0,
            outputs: VecDeque::from([NodeOutput::ConnectStore]),
            rng,
            counters: NodeCounters::default(),
            latest: now,
            closing: false,
            config,
        })
    }

    // ----- state, for metrics ---------------------------------------------------------------

    /// The fanout (hub, counters).
    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// This relay's role in the lease.
    pub fn role(&self) -> Role {
        self.lease.role()
    }

    /// The epoch held while leading, else the highest one seen (0 before any).
    pub fn epoch(&self) -> u64 {
        match self.lease.role() {
            Role::Leader { epoch } => epoch,
            Role::Follower => self.highest_epoch.max(self.stream.follower.epoch()),
        }
    }

    /// The lease (its counters: takeovers, step-downs, failures).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The stream follower (its counters: received, gaps, resyncs…).
    pub fn follower(&self) -> &Follower {
        &self.stream.follower
    }

    /// The store link's state.
    pub fn store_state(&self) -> StoreState {
        self.store
    }

    /// Whether this relay carries the upstream feed (leading, or for its own clients while
    /// the store is away).
    pub fn carries_upstream(&self) -> bool {
        self.carrier.is_some()
    }

    /// The symbols the upstream feed carries, when this relay carries it.
    pub fn carried_symbols(&self) -> Vec<Arc<str>> {
        self.carrier
            .as_ref()
            .map(|carrier| carrier.carried.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The cluster-wide demand as this relay knows it.
    pub fn demand(&self) -> &Demand {
        &self.demand
    }

    /// Counters.
    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// No store request is outstanding (a clean shutdown waits for this).
    pub fn store_idle(&self) -> bool {
        self.in_flight.is_empty()
            && !self
                .outputs
                .iter()
                .any(|output| matches!(output, NodeOutput::Store(_)))
    }

    fn clock(&mut self, now: Instant) -> Instant {
        self.latest = self.latest.max(now);
        self.latest
    }

    // ----- downstream inputs ----------------------------------------------------------------

    /// A new downstream connection (see [`Fanout::connect`]).
    ///
    /// # Errors
    /// [`Refused`] at the connection limit or after shutdown.
    pub fn connect(&mut self, now: Instant) -> Result<ConnId, Refused> {
        let now = self.clock(now);
        self.fanout.connect(now)
    }

    /// The socket of `conn` ended.
    pub fn disconnect(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        let now = self.clock(now);
        self.fanout.disconnect(now, conn, reason);
    }

    /// A text message from `conn`.
    pub fn handle_text(&mut self, now: Instant, conn: ConnId, text: &str) {
        let now = self.clock(now);
        self.fanout.handle_text(now, conn, text);
    }

    /// A binary message of `bytes` bytes from `conn`.
    pub fn handle_binary(&mut self, now: Instant, conn: ConnId, bytes: usize) {
        let now = self.clock(now);
        self.fanout.handle_binary(now, conn, bytes);
    }

    /// A ping or pong from `conn`.
    pub fn handle_activity(&mut self, now: Instant, conn: ConnId) {
        let now = self.clock(now);
        self.fanout.handle_activity(now, conn);
    }

    /// `frames` frames of `conn` were written.
    pub fn handle_written(&mut self, now: Instant, conn: ConnId, frames: usize) {
        let now = self.clock(now);
        self.fanout.handle_written(now, conn, frames);
    }

    /// Clean shutdown: every client is closed, the lease released, this relay's demand
    /// removed and the upstream feed closed. Drain the outputs, then wait (a bounded time)
    /// for [`Node::store_idle`].
    pub fn shutdown(&mut self, now: Instant) {
        let now = self.clock(now);
        if self.closing {
            return;
        }
        self.fanout.shutdown(now);
        self.lease.close();
        self.drive_lease(now);
        if self.store == StoreState::Up {
            let entry = self.demand_entry(Vec::new());
            self.send(
                Pending::RemoveDemand,
                StoreRequest::RemoveDemand {
                    relay: self.relay_id.clone(),
                    entry,
                },
            );
        }
        if self.carrier.take().is_some() {
            self.outputs.push_back(NodeOutput::CloseUpstream);
        }
        self.closing = true;
    }

    // ----- the store ------------------------------------------------------------------------

    fn send(&mut self, pending: Pending, request: StoreRequest) {
        if pending == Pending::Publish {
            self.publishes_in_flight = self.publishes_in_flight.saturating_add(1);
        }
        self.in_flight.push_back(pending);
        self.outputs.push_back(NodeOutput::Store(request));
    }

    /// The store link is open.
    pub fn handle_store_connected(&mut self, now: Instant) {
        let now = self.clock(now);
        if self.store != StoreState::Connecting {
            return;
        }
        self.store = StoreState::Up;
        self.counters.store_connects = self.counters.store_connects.saturating_add(1);
        self.fanout.set_degraded(now, false);
        self.demand_dirty = true;
        self.next_demand_write = now;
        // Whatever the store holds may be older than what happened while it was away (or it
        // restarted empty): every symbol is read again, or published again by the carrier.
        if let Some(carrier) = &mut self.carrier {
            if carrier.leading {
                self.dirty.extend(carrier.publisher.symbols().cloned());
            }
            self.next_demand_read = Some(now);
        } else {
            // A store restarted empty may hand out lower epochs than before (the floor only
            // helps when the next leader saw the highest): the stored fence decides from now.
            self.stream.follower.forget_epochs();
            self.stream.follower.resync_all();
        }
        let waiting: Vec<Arc<str>> = std::mem::take(&mut self.reads_waiting)
            .into_iter()
            .collect();
        for symbol in waiting {
            self.read_snapshot(symbol);
        }
        self.drive_lease(now);
        self.write_demand_if_due(now);
        self.flush_dirty();
    }

    /// The store link failed (or could not be opened): everything outstanding is lost.
    pub fn handle_store_failed(&mut self, now: Instant, reason: &str) {
        let now = self.clock(now);
        let _ = reason;
        if matches!(self.store, StoreState::Down { .. }) {
            return;
        }
        self.counters.store_failures = self.counters.store_failures.saturating_add(1);
        self.store_failures = self.store_failures.saturating_add(1);
        let unit = self.rng.f64().mul_add(2.0, -1.0);
        let wait = policy::retry_delay(
            self.store_failures,
            Duration::ZERO,
            self.config.store_backoff_initial,
            self.config.store_backoff_max,
            self.config.store_jitter,
            unit,
        );
        self.store = StoreState::Down {
            retry_at: later(now, wait),
        };
        // Requests still queued for the link are lost with it.
        self.outputs
            .retain(|output| !matches!(output, NodeOutput::Store(_)));
        let lost: Vec<Pending> = self.in_flight.drain(..).collect();
        self.publishes_in_flight = 0;
        for pending in lost {
            match pending {
                Pending::Lease => self
                    .lease
                    .handle_reply(now, LeaseReply::Failed("the store link failed".to_owned())),
                Pending::Snapshot(symbol) => {
                    self.reads_waiting.insert(symbol);
                }
                _ => {}
            }
        }
        self.fanout.set_degraded(now, true);
        // Nobody can say who leads now: our own clients get our feed meanwhile.
        self.resume_carrier(now);
        self.drive_lease(now);
    }

    /// A suspended carrier serves the hub again, starting from the feed's latest state.
    fn resume_carrier(&mut self, now: Instant) {
        let Some(carrier) = &mut self.carrier else {
            return;
        };
        if !carrier.suspended {
            return;
        }
        carrier.suspended = false;
        for quote in carrier.publisher.quotes() {
            self.fanout.resync(now, quote);
        }
        self.fanout.handle_upstream_state(now, carrier.state);
    }

    /// The store's answer to the oldest outstanding request.
    pub fn handle_store_reply(&mut self, now: Instant, reply: StoreReply) {
        let now = self.clock(now);
        let Some(pending) = self.in_flight.pop_front() else {
            self.handle_store_failed(now, "an answer to no request");
            return;
        };
        if pending == Pending::Publish {
            self.publishes_in_flight = self.publishes_in_flight.saturating_sub(1);
        }
        // A request went through: the link works, so its backoff starts again.
        self.store_failures = 0;
        match (pending, reply) {
            (Pending::Lease, StoreReply::Lease(reply)) => {
                if matches!(reply, LeaseReply::Held { .. })
                    && self
                        .carrier
                        .as_ref()
                        .is_some_and(|carrier| !carrier.leading)
                {
                    // Another relay leads: stop carrying for our own clients only.
                    self.drop_carrier(now);
                }
                self.lease.handle_reply(now, reply);
                self.drive_lease(now);
            }
            (Pending::Publish, StoreReply::Published { accepted }) => {
                if accepted {
                    self.flush_dirty_when_caught_up();
                } else {
                    self.counters.publishes_fenced =
                        self.counters.publishes_fenced.saturating_add(1);
                    if self.carrier.as_ref().is_some_and(|carrier| carrier.leading) {
                        self.lease.deposed(now);
                        self.drive_lease(now);
                        self.drop_carrier(now);
                    }
                }
            }
            (Pending::Snapshot(asked), StoreReply::Snapshot { symbol, text })
                if asked == symbol =>
            {
                if self.carrier.is_none() {
                    self.stream
                        .follower
                        .handle_snapshot(&symbol, text.as_deref());
                }
            }
            (Pending::ReadDemand, StoreReply::Demand(entries)) => self.read_demand(now, &entries),
            (Pending::WriteDemand, StoreReply::Done) => self.write_demand_if_due(now),
            (Pending::RemoveDemand | Pending::Prune, StoreReply::Done) => {}
            (_, _) => self.handle_store_failed(now, "an answer that does not fit the request"),
        }
    }

    fn read_demand(&mut self, now: Instant, entries: &[String]) {
        let mut seen = BTreeSet::new();
        for text in entries {
            match DemandEntry::parse(text.as_bytes()) {
                Ok(entry) if entry.relay == self.relay_id => {}
                Ok(entry) => {
                    seen.insert(entry.relay.clone());
                    self.demand
                        .update(now, &entry.relay, &entry.symbols, entry.ttl);
                }
                Err(_) => {
                    self.counters.demand_entries_bad =
                        self.counters.demand_entries_bad.saturating_add(1);
                }
            }
        }
        let gone: Vec<String> = self
            .demand
            .relays()
            .filter(|relay| *relay != self.relay_id && !seen.contains(*relay))
            .map(str::to_owned)
            .collect();
        for relay in gone {
            self.demand.remove(&relay);
        }
        self.reconcile(now);
        let union = self.demand.union();
        if let Some(carrier) = &mut self.carrier
            && carrier.leading
            && !carrier.pruned
        {
            carrier.pruned = true;
            // Earlier leaders may have left snapshots of symbols nobody carries now.
            let keep: Vec<Arc<str>> = union
                .into_iter()
                .chain(carrier.carried.keys().cloned())
                .collect();
            self.send(Pending::Prune, StoreRequest::PruneSnapshots { keep });
        }
    }

    /// A message of the cluster's update stream.
    pub fn handle_stream_message(&mut self, now: Instant, text: &[u8]) {
        let now = self.clock(now);
        if let Some(carrier) = &self.carrier {
            // Our own messages come back; one of a newer epoch means another relay leads.
            let newer = super::stream::peek_epoch(text)
                .is_some_and(|epoch| epoch > carrier.publisher.epoch());
            if newer && carrier.leading {
                self.lease.deposed(now);
                self.drive_lease(now);
                self.drop_carrier(now);
            } else if newer {
                self.drop_carrier(now);
            } else {
                return;
            }
        }
        let received = self.stream.follower.counters().received;
        // A malformed message is counted by the follower and changes nothing.
        let _ = self.stream.follower.handle_message(text);
        self.highest_epoch = self.highest_epoch.max(self.stream.follower.epoch());
        if self.stream.follower.counters().received != received {
            self.last_heard = now;
            if self.leader_silent {
                self.leader_silent = false;
                self.fanout.handle_upstream_state(now, self.leader_state);
            }
        }
    }

    /// A demand entry announced on the store.
    pub fn handle_demand_message(&mut self, now: Instant, text: &[u8]) {
        let now = self.clock(now);
        match DemandEntry::parse(text) {
            Ok(entry) if entry.relay == self.relay_id => {}
            Ok(entry) if entry.symbols.is_empty() => {
                self.demand.remove(&entry.relay);
                self.reconcile(now);
            }
            Ok(entry) => {
                self.demand
                    .update(now, &entry.relay, &entry.symbols, entry.ttl);
                self.reconcile(now);
            }
            Err(_) => {
                self.counters.demand_entries_bad =
                    self.counters.demand_entries_bad.saturating_add(1);
            }
        }
    }

    fn demand_entry(&self, symbols: Vec<String>) -> String {
        DemandEntry {
            relay: self.relay_id.clone(),
            symbols,
            ttl: self.config.demand_ttl,
        }
        .render()
    }

    fn write_demand_if_due(&mut self, now: Instant) {
        if self.closing || self.store != StoreState::Up {
            return;
        }
        if !self.demand_dirty && now < self.next_demand_write {
            return;
        }
        if self.in_flight.contains(&Pending::WriteDemand) {
            return; // written again when that is answered, if it changed meanwhile
        }
        self.demand_dirty = false;
        let base = self.config.demand_ttl.checked_div(3).unwrap_or_default();
        let unit = self.rng.f64().mul_add(2.0, -1.0);
        self.next_demand_write = later(now, policy::apply_jitter(base, 0.2, unit));
        let symbols: Vec<String> = self.stream.local.iter().map(|s| s.to_string()).collect();
        let entry = self.demand_entry(symbols);
        self.send(
            Pending::WriteDemand,
            StoreRequest::WriteDemand {
                relay: self.relay_id.clone(),
                entry,
                ttl: self.config.demand_ttl,
            },
        );
    }

    fn read_snapshot(&mut self, symbol: Arc<str>) {
        if self.store == StoreState::Up {
            self.send(
                Pending::Snapshot(symbol.clone()),
                StoreRequest::ReadSnapshot { symbol },
            );
        } else {
            self.reads_waiting.insert(symbol);
        }
    }

    // ----- the lease ------------------------------------------------------------------------

    fn drive_lease(&mut self, now: Instant) {
        loop {
            let mut acted = false;
            while let Some(request) = self.lease.poll_request() {
                acted = true;
                if self.store != StoreState::Up {
                    self.lease.handle_reply(
                        now,
                        LeaseReply::Failed("the store is unreachable".to_owned()),
                    );
                    continue;
                }
                let request = match request {
                    LeaseRequest::Acquire => StoreRequest::AcquireLease {
                        relay: self.relay_id.clone(),
                        ttl: self.config.lease.ttl,
                        floor: self.highest_epoch,
                    },
                    LeaseRequest::Renew { epoch } => StoreRequest::RenewLease {
                        value: self.lease.value(epoch),
                        ttl: self.config.lease.ttl,
                    },
                    LeaseRequest::Release { epoch } => StoreRequest::ReleaseLease {
                        value: self.lease.value(epoch),
                    },
                };
                self.send(Pending::Lease, request);
            }
            while let Some(LeaseEvent::Role(role)) = self.lease.poll_event() {
                acted = true;
                self.on_role(now, role);
            }
            if !acted {
                return;
            }
        }
    }

    fn on_role(&mut self, now: Instant, role: Role) {
        if self.closing {
            return;
        }
        match role {
            Role::Leader { epoch } => {
                self.highest_epoch = self.highest_epoch.max(epoch);
                match &mut self.carrier {
                    Some(carrier) => {
                        // Carrying already (for our own clients while the store was away):
                        // the same feed goes on under the new epoch.
                        carrier.publisher.restart(epoch);
                        carrier.leading = true;
                        self.resume_carrier(now);
                        let Some(carrier) = &mut self.carrier else {
                            return;
                        };
                        carrier.pruned = false;
                        carrier.next_heartbeat = Some(now);
                        self.dirty.extend(carrier.publisher.symbols().cloned());
                    }
                    None => {
                        self.carrier = Some(Carrier {
                            publisher: Publisher::new(epoch),
                            leading: true,
                            fresh: self.stream.local.clone(),
                            suspended: false,
                            carried: BTreeMap::new(),
                            rejected: BTreeSet::new(),
                            to_add: BTreeSet::new(),
                            to_remove: Vec::new(),
                            state: State::Connecting,
                            pruned: false,
                            next_heartbeat: Some(now),
                        });
                        self.outputs.push_back(NodeOutput::OpenUpstream);
                        self.fanout.handle_upstream_state(now, State::Connecting);
                        // Messages held for snapshot reads are the old leader's: the feed
                        // replaces them.
                        self.answer_reads_locally();
                    }
                }
                self.next_demand_read = Some(now);
                self.reconcile(now);
                self.flush_dirty();
            }
            Role::Follower => {
                // A live feed is kept until the store says someone else leads: the lease may
                // be gone only because the store is away or restarted empty, and this relay
                // may well take it again with the same feed. A feed that is not live (the
                // lease was given up for that) goes now.
                let keep = self
                    .carrier
                    .as_ref()
                    .is_some_and(|carrier| carrier.state == State::Live);
                if keep {
                    // Publish nothing; while the store can say who leads, wait for it before
                    // serving even our own clients from the feed.
                    let store_up = self.store == StoreState::Up;
                    if let Some(carrier) = &mut self.carrier {
                        carrier.leading = false;
                        carrier.suspended = store_up;
                    }
                    self.dirty.clear();
                    self.deletes.clear();
                } else {
                    self.drop_carrier(now);
                }
            }
        }
    }

    fn drop_carrier(&mut self, now: Instant) {
        if self.carrier.take().is_none() {
            return;
        }
        self.outputs.push_back(NodeOutput::CloseUpstream);
        self.dirty.clear();
        self.deletes.clear();
        self.next_demand_read = None;
        // From now on the stream is the source: read every symbol from the store.
        self.stream.follower.resync_all();
        self.leader_silent = true;
        self.last_heard = now;
        self.leader_state = State::Connecting;
        self.fanout.handle_upstream_state(now, State::Connecting);
    }

    /// While carrying, the hub is fed by the feed: a wanted symbol's snapshot read is answered
    /// at once (nothing stored) and what the follower says is not used.
    fn answer_reads_locally(&mut self) {
        let waiting: Vec<Arc<str>> = std::mem::take(&mut self.reads_waiting)
            .into_iter()
            .collect();
        for symbol in waiting {
            self.stream.follower.handle_snapshot(&symbol, None);
        }
        for pending in &mut self.in_flight {
            if let Pending::Snapshot(symbol) = pending {
                let symbol = symbol.clone();
                self.stream.follower.handle_snapshot(&symbol, None);
            }
        }
        while self.stream.follower.poll_output().is_some() {}
    }

    // ----- the carrier ----------------------------------------------------------------------

    /// What the carrier should carry: the union of demand, lingering what left it.
    fn reconcile(&mut self, now: Instant) {
        let Some(carrier) = &mut self.carrier else {
            return;
        };
        let desired = self.demand.union();
        let leave_at = later(now, self.linger);
        for (symbol, carried) in &mut carrier.carried {
            if desired.contains(symbol) {
                carried.leaving = None;
            } else if carried.leaving.is_none() {
                carried.leaving = Some(leave_at);
            }
        }
        carrier.rejected.retain(|symbol| desired.contains(symbol));
        carrier.to_add.retain(|symbol| desired.contains(symbol));
        for symbol in &desired {
            if !carrier.carried.contains_key(symbol) && !carrier.rejected.contains(symbol) {
                carrier.to_add.insert(symbol.clone());
            }
        }
        // Lingering symbols count against the cap, as on a single relay: a wanted symbol
        // takes the place of the one whose linger ends soonest.
        let room = self.cap;
        while carrier.carried.len().saturating_add(carrier.to_add.len()) > room {
            let soonest = carrier
                .carried
                .iter()
                .filter_map(|(symbol, carried)| carried.leaving.map(|at| (at, symbol.clone())))
                .min();
            let Some((_, symbol)) = soonest else {
                break; // everything carried is wanted: the union is within the cap
            };
            if let Some(carried) = carrier.carried.remove(&symbol) {
                carrier.to_remove.push((symbol, carried.series));
            }
        }
    }

    fn end_lingering(&mut self, now: Instant) {
        let Some(carrier) = &mut self.carrier else {
            return;
        };
        let ended: Vec<Arc<str>> = carrier
            .carried
            .iter()
            .filter(|(_, carried)| carried.leaving.is_some_and(|at| at <= now))
            .map(|(symbol, _)| symbol.clone())
            .collect();
        for symbol in ended {
            if let Some(carried) = carrier.carried.remove(&symbol) {
                carrier.to_remove.push((symbol, carried.series));
            }
        }
    }

    /// Carries out the carrier's upstream changes on the feed.
    fn drive_feed(&mut self, now: Instant, upstream: &mut dyn UpstreamFeed) -> bool {
        let Some(carrier) = &mut self.carrier else {
            return false;
        };
        let mut acted = false;
        let mut deleted = Vec::new();
        if !carrier.to_remove.is_empty() {
            acted = true;
            let removed: Vec<(Arc<str>, Option<SeriesId>)> = carrier.to_remove.drain(..).collect();
            let symbols: Vec<Arc<str>> = removed.iter().map(|(symbol, _)| symbol.clone()).collect();
            upstream.unsubscribe_quotes(now, &symbols);
            for (symbol, series) in removed {
                if let Some(series) = series {
                    upstream.unsubscribe_bars(now, series);
                }
                carrier.publisher.forget(&symbol);
                deleted.push(symbol);
            }
        }
        let mut series_errors = Vec::new();
        if !carrier.to_add.is_empty() {
            acted = true;
            let symbols: Vec<Arc<str>> = std::mem::take(&mut carrier.to_add).into_iter().collect();
            upstream.subscribe_quotes(now, &symbols);
            for symbol in symbols {
                if !upstream.carries_quote(&symbol) {
                    // No room on the feed (something else shares it): asked again at the next
                    // change of demand, not in a loop.
                    self.counters.symbols_refused = self.counters.symbols_refused.saturating_add(1);
                    continue;
                }
                let series = match &self.timeframe {
                    Some(timeframe) => {
                        match upstream.subscribe_bars(now, &symbol, timeframe, self.bar_history) {
                            Ok(series) => Some(series),
                            Err(error) => {
                                series_errors.push((symbol.clone(), error.to_string()));
                                None
                            }
                        }
                    }
                    None => None,
                };
                carrier.carried.insert(
                    symbol,
                    Carried {
                        series,
                        leaving: None,
                    },
                );
            }
        }
        for symbol in deleted {
            self.publish_to_store(Published {
                symbol: Some(symbol),
                message: String::new(),
                snapshot: None,
            });
        }
        for (symbol, reason) in series_errors {
            self.series_error(now, &symbol, &reason);
        }
        acted
    }

    fn series_error(&mut self, now: Instant, symbol: &Arc<str>, reason: &str) {
        let Some(carrier) = &mut self.carrier else {
            return;
        };
        let published = carrier.publisher.series_error(symbol, reason);
        self.fanout.handle_series_error(now, symbol, reason);
        self.publish_to_store(published);
    }

    /// Something the upstream feed reported (only while this relay carries it).
    pub fn handle_feed_event(&mut self, now: Instant, event: &Event) {
        let now = self.clock(now);
        // A relay that was paused must see that its lease ran out before it publishes again.
        self.lease.handle_timeout(now);
        self.drive_lease(now);
        let Some(carrier) = &mut self.carrier else {
            return; // a closed feed's last words
        };
        match event {
            Event::Quote(quote) => {
                let quote = &quote.quote;
                if !carrier.carried.contains_key(&quote.symbol) {
                    return;
                }
                let published = carrier.publisher.quote(quote);
                if carrier.suspended {
                    return;
                }
                if carrier.fresh.remove(&quote.symbol) {
                    self.fanout.resync(now, quote);
                } else {
                    self.fanout.handle_quote(now, quote);
                }
                if let Some(published) = published {
                    self.publish_to_store(published);
                }
            }
            Event::Bar(bar) => {
                let held = carrier
                    .carried
                    .get(&bar.symbol)
                    .and_then(|carried| carried.series);
                if held != Some(bar.series) {
                    return;
                }
                let published =
                    carrier
                        .publisher
                        .bar(&bar.symbol, &bar.timeframe, &bar.bar, bar.closed);
                if carrier.suspended {
                    return;
                }
                self.fanout
                    .handle_bar(now, &bar.symbol, &bar.timeframe, &bar.bar, bar.closed);
                self.publish_to_store(published);
            }
            Event::QuoteError { symbol, reason } => {
                let Some(carried) = carrier.carried.remove(symbol) else {
                    return;
                };
                if let Some(series) = carried.series {
                    // The client dropped the quotes; the series goes with them.
                    carrier.to_remove.push((symbol.clone(), Some(series)));
                }
                carrier.rejected.insert(symbol.clone());
                let published = carrier.publisher.symbol_error(symbol, reason);
                self.forget_local(symbol);
                self.fanout.handle_symbol_error(now, symbol, reason);
                self.delete_in_store(symbol.clone(), published.message, Some(reason));
            }
            Event::SeriesError {
                series,
                symbol,
                reason,
            } => {
                let Some(carried) = carrier.carried.get_mut(symbol) else {
                    return;
                };
                if carried.series != Some(*series) {
                    return;
                }
                carried.series = None;
                self.series_error(now, symbol, reason);
            }
            Event::State(change) => {
                carrier.state = change.state;
                let message = carrier.publisher.status(change.state);
                let suspended = carrier.suspended;
                self.lease
                    .set_upstream_healthy(now, change.state == State::Live);
                if suspended {
                    return;
                }
                self.fanout.handle_upstream_state(now, change.state);
                self.publish_status(message);
            }
            _ => {}
        }
    }

    /// A rejected symbol leaves the hub's demand (the hub forgets it without an unsubscribe).
    fn forget_local(&mut self, symbol: &str) {
        if self.stream.local.remove(symbol) {
            self.stream.follower.unwant(symbol);
            self.stream.changed = true;
        }
        self.stream.series.retain(|_, of| of.as_ref() != symbol);
    }

    fn publishing(&self) -> Option<u64> {
        let carrier = self.carrier.as_ref()?;
        (carrier.leading && self.store == StoreState::Up && !self.closing)
            .then(|| carrier.publisher.epoch())
    }

    fn publish_to_store(&mut self, published: Published) {
        let Some(epoch) = self.publishing() else {
            return; // published again as snapshots when the store is back
        };
        let Some(symbol) = published.symbol else {
            return;
        };
        let Some(snapshot) = published.snapshot else {
            self.delete_in_store(symbol, published.message, None);
            return;
        };
        // A symbol that comes back is published whole: its pending delete is superseded.
        self.deletes.remove(&symbol);
        if self.publishes_in_flight >= self.config.max_publishes_in_flight
            || self.dirty.contains(&symbol)
        {
            self.counters.publishes_coalesced = self.counters.publishes_coalesced.saturating_add(1);
            self.dirty.insert(symbol);
            return;
        }
        self.send_publish(
            epoch,
            symbol,
            SnapshotWrite::Set(snapshot),
            published.message,
        );
    }

    /// Deletes the symbol's stored snapshot, telling followers `message`; past the window it
    /// waits, like a change, so a feed that keeps rejecting or dropping symbols cannot grow the
    /// requests outstanding.
    fn delete_in_store(&mut self, symbol: Arc<str>, message: String, rejection: Option<&str>) {
        let Some(epoch) = self.publishing() else {
            return;
        };
        if self.publishes_in_flight >= self.config.max_publishes_in_flight
            || self.dirty.contains(&symbol)
        {
            self.counters.publishes_coalesced = self.counters.publishes_coalesced.saturating_add(1);
            self.deletes.insert(
                symbol.clone(),
                PendingDelete {
                    epoch,
                    rejection: rejection.map(str::to_owned),
                    message,
                },
            );
            self.dirty.insert(symbol);
            return;
        }
        self.send_publish(epoch, symbol, SnapshotWrite::Delete, message);
    }

    fn send_publish(
        &mut self,
        epoch: u64,
        symbol: Arc<str>,
        snapshot: SnapshotWrite,
        message: String,
    ) {
        self.dirty.remove(&symbol);
        self.deletes.remove(&symbol);
        let message = (!message.is_empty()).then_some(message);
        if message.is_some() {
            self.counters.published = self.counters.published.saturating_add(1);
        }
        self.send(
            Pending::Publish,
            StoreRequest::Publish {
                epoch,
                symbol: Some(symbol),
                snapshot,
                message,
            },
        );
    }

    fn publish_status(&mut self, message: String) {
        let Some(epoch) = self.publishing() else {
            return;
        };
        if self.publishes_in_flight >= self.config.max_publishes_in_flight {
            return; // the next heartbeat says it again
        }
        self.counters.published = self.counters.published.saturating_add(1);
        self.send(
            Pending::Publish,
            StoreRequest::Publish {
                epoch,
                symbol: None,
                snapshot: SnapshotWrite::Keep,
                message: Some(message),
            },
        );
    }

    fn flush_dirty_when_caught_up(&mut self) {
        if self.publishes_in_flight <= self.config.max_publishes_in_flight / 2 {
            self.flush_dirty();
        }
    }

    /// Symbols whose changes were skipped go out as one self-contained `snapshot` message
    /// each (or the delete of their snapshot), as far as the window allows.
    fn flush_dirty(&mut self) {
        let Some(epoch) = self.publishing() else {
            return;
        };
        while self.publishes_in_flight < self.config.max_publishes_in_flight {
            let Some(symbol) = self.dirty.pop_first() else {
                return;
            };
            let pending_delete = self.deletes.remove(&symbol);
            let Some(carrier) = self.carrier.as_mut() else {
                return;
            };
            if let Some(published) = carrier.publisher.snapshot_message(&symbol) {
                self.publish_to_store(published);
            } else if let Some(delete) = pending_delete {
                let message = match delete.rejection {
                    // Followers fence older epochs: a new leader says it again as its own.
                    Some(reason) if delete.epoch != epoch => {
                        carrier.publisher.symbol_error(&symbol, &reason).message
                    }
                    None if delete.epoch != epoch => String::new(),
                    _ => delete.message,
                };
                self.send_publish(epoch, symbol, SnapshotWrite::Delete, message);
            }
        }
    }

    // ----- time -----------------------------------------------------------------------------

    /// When to call [`Node::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut due = self.fanout.poll_timeout();
        if let Some(at) = self.lease.poll_timeout() {
            earliest(&mut due, at);
        }
        if let Some(at) = self.demand.next_expiry() {
            earliest(&mut due, at);
        }
        match self.store {
            StoreState::Down { retry_at } if !self.closing => earliest(&mut due, retry_at),
            StoreState::Up if !self.closing => {
                if !self.in_flight.contains(&Pending::WriteDemand) {
                    earliest(&mut due, self.next_demand_write);
                }
                // A read in flight is answered first (the next one is timed from then).
                if let Some(at) = self.next_demand_read
                    && !self.in_flight.contains(&Pending::ReadDemand)
                {
                    earliest(&mut due, at);
                }
            }
            _ => {}
        }
        match &self.carrier {
            Some(carrier) => {
                for carried in carrier.carried.values() {
                    if let Some(at) = carried.leaving {
                        earliest(&mut due, at);
                    }
                }
                if let (Some(at), Some(_)) = (carrier.next_heartbeat, self.publishing()) {
                    earliest(&mut due, at);
                }
            }
            None if !self.leader_silent => {
                earliest(&mut due, later(self.last_heard, self.config.leader_silence));
            }
            None => {}
        }
        due
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        self.fanout.handle_timeout(now);
        self.lease.handle_timeout(now);
        self.drive_lease(now);
        if !self.demand.expire(now).is_empty() {
            self.reconcile(now);
        }
        if let StoreState::Down { retry_at } = self.store
            && now >= retry_at
            && !self.closing
        {
            self.store = StoreState::Connecting;
            self.outputs.push_back(NodeOutput::ConnectStore);
        }
        if now >= self.next_demand_write {
            // Our own entry never expires locally.
            let local: Vec<Arc<str>> = self.stream.local.iter().cloned().collect();
            self.demand
                .update(now, &self.relay_id, &local, self.config.demand_ttl);
        }
        self.write_demand_if_due(now);
        if self.store == StoreState::Up
            && self.next_demand_read.is_some_and(|at| now >= at)
            && !self.in_flight.contains(&Pending::ReadDemand)
        {
            let base = self.config.demand_ttl.checked_div(2).unwrap_or_default();
            let unit = self.rng.f64().mul_add(2.0, -1.0);
            self.next_demand_read = Some(later(now, policy::apply_jitter(base, 0.2, unit)));
            self.send(Pending::ReadDemand, StoreRequest::ReadDemand);
        }
        self.end_lingering(now);
        let heartbeat = self.carrier.as_ref().and_then(|carrier| {
            carrier
                .next_heartbeat
                .filter(|at| now >= *at)
                .map(|_| carrier.publisher.status(carrier.state))
        });
        if let Some(message) = heartbeat
            && self.publishing().is_some()
        {
            if let Some(carrier) = &mut self.carrier {
                carrier.next_heartbeat = Some(later(now, self.config.heartbeat));
            }
            self.publish_status(message);
        }
        if self.carrier.is_none()
            && !self.leader_silent
            && now >= later(self.last_heard, self.config.leader_silence)
        {
            self.leader_silent = true;
            // Whatever the silent leader last said no longer holds: the next leader says.
            self.leader_state = State::Connecting;
            self.fanout.handle_upstream_state(now, State::Connecting);
        }
    }

    // ----- outputs --------------------------------------------------------------------------

    /// The next output, after carrying out on `upstream` (the open feed, if any) every
    /// upstream change decided before it. Drain after every input.
    pub fn poll_output(
        &mut self,
        now: Instant,
        mut upstream: Option<&mut dyn UpstreamFeed>,
    ) -> Option<NodeOutput> {
        let now = self.clock(now);
        loop {
            if let Some(output) = self.outputs.pop_front() {
                return Some(output);
            }
            if let Some(output) = self.fanout.poll_output(now, &mut self.stream) {
                return Some(NodeOutput::Downstream(output));
            }
            let mut acted = self.follow(now);
            if self.stream.changed {
                self.stream.changed = false;
                acted = true;
                self.demand_dirty = true;
                let local: Vec<Arc<str>> = self.stream.local.iter().cloned().collect();
                self.demand
                    .update(now, &self.relay_id, &local, self.config.demand_ttl);
                self.reconcile(now);
                self.write_demand_if_due(now);
            }
            if let Some(feed) = upstream.as_deref_mut()
                && !self
                    .outputs
                    .iter()
                    .any(|output| matches!(output, NodeOutput::OpenUpstream))
            {
                acted |= self.drive_feed(now, feed);
            }
            if !acted && self.outputs.is_empty() {
                return None;
            }
        }
    }

    /// Hands what the follower says to the hub (or, while carrying, answers it locally).
    fn follow(&mut self, now: Instant) -> bool {
        let mut acted = false;
        while let Some(output) = self.stream.follower.poll_output() {
            acted = true;
            if self.carrier.is_some() {
                if let FollowerOutput::ReadSnapshot(symbol) = output {
                    self.stream.follower.handle_snapshot(&symbol, None);
                }
                continue;
            }
            match output {
                FollowerOutput::Quote(quote) => self.fanout.handle_quote(now, &quote),
                FollowerOutput::Bar {
                    symbol,
                    timeframe,
                    bar,
                    closed,
                } => self
                    .fanout
                    .handle_bar(now, &symbol, &timeframe, &bar, closed),
                FollowerOutput::SymbolError { symbol, reason } => {
                    self.forget_local(&symbol);
                    self.fanout.handle_symbol_error(now, &symbol, &reason);
                }
                FollowerOutput::SeriesError { symbol, reason } => {
                    self.stream.series.retain(|_, of| *of != symbol);
                    self.fanout.handle_series_error(now, &symbol, &reason);
                }
                FollowerOutput::Upstream(state) => {
                    self.leader_state = state;
                    if !self.leader_silent {
                        self.fanout.handle_upstream_state(now, state);
                    }
                }
                FollowerOutput::ReadSnapshot(symbol) => self.read_snapshot(symbol),
                FollowerOutput::Snapshot(quote) => self.fanout.resync(now, &quote),
            }
        }
        acted
    }
}

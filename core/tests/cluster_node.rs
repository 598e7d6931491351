//! Deterministic simulation of a relay cluster with no sockets and no clock: several
//! `cluster::Node`s over a model of the store (Redis: string keys with expiry times, sets, the
//! lease script, the fenced publish, pub/sub of `NAME:updates` and `NAME:demand-changes`), a
//! recording upstream feed for whichever node asks for one, and downstream clients whose
//! frames are kept. Time is virtual: the loop jumps to the earliest of every live node's
//! `poll_timeout` and every pending delivery. Nodes can be killed (never stepped again: their
//! lease and demand expire in the store by TTL), paused and resumed (what reached them
//! meanwhile is delivered on waking), and the store can go down, restart empty, or hold its
//! requests for a while (a slow store).
//!
//! Each scenario runs over `TICKWIRE_CLUSTER_SIM_SEEDS` seeds (default: `TICKWIRE_SIM_SEEDS`
//! if set, else 8); the seed sets the
//! nodes' jitter and each node's latency to the store (so which node wins the first lease
//! varies). `TICKWIRE_CLUSTER_SIM_SEED=N` replays one seed. A failure names its seed and the
//! simulated time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tickwire_core::client::{
    BarsError, Config, Event, Mode, Quote, QuoteEvent, QuoteFields, SeriesId, Source, State,
    StateChange,
};
use tickwire_core::cluster::{
    Keys, LeaseReply, Node, NodeConfig, NodeOutput, Role, SnapshotWrite, StoreReply, StoreRequest,
    StoreState,
};
use tickwire_core::hub::{
    CloseReason, ConnId, FanoutOutput, HubConfig, UpstreamFeed, UpstreamPlan,
};

const CLUSTER: &str = "sim";
/// The hub's linger (shorter than the default so scenarios stay short in simulated time).
const LINGER: Duration = Duration::from_secs(10);
/// How long an opened feed takes to report `live`.
const FEED_CONNECT: Duration = Duration::from_millis(200);
/// A step of the scenarios' "run until" loops.
const SLICE: Duration = Duration::from_millis(10);

macro_rules! check {
    ($sim:expr, $condition:expr, $($message:tt)+) => {
        if !$condition {
            panic!(
                "seed {} at {:?}: {}",
                $sim.seed,
                $sim.elapsed(),
                format!($($message)+)
            );
        }
    };
}

// ----- the store ------------------------------------------------------------------------------

#[derive(Debug)]
struct Stored {
    value: String,
    expires: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Updates,
    DemandChanges,
}

/// Redis as the node's requests use it, with expiry against the simulated time.
#[derive(Debug)]
struct Store {
    keys: Keys,
    up: bool,
    strings: BTreeMap<String, Stored>,
    sets: BTreeMap<String, BTreeSet<String>>,
    /// Requests are held (not executed) while the store is slow.
    holding: bool,
    /// Held requests: the member, its link, the request.
    held: VecDeque<(usize, u64, StoreRequest)>,
    /// Every message published on `NAME:updates`.
    updates: Vec<(Instant, String)>,
    /// The last `WriteDemand` of each relay.
    demand_writes: BTreeMap<String, Instant>,
    /// Publishes refused by the fence.
    fenced: Vec<(Instant, StoreRequest)>,
}

impl Store {
    fn new() -> Store {
        Store {
            keys: Keys::new(CLUSTER).expect("a valid cluster name"),
            up: true,
            strings: BTreeMap::new(),
            sets: BTreeMap::new(),
            holding: false,
            held: VecDeque::new(),
            updates: Vec::new(),
            demand_writes: BTreeMap::new(),
            fenced: Vec::new(),
        }
    }

    /// `GET`, with a key past its expiry gone.
    fn get(&mut self, now: Instant, key: &str) -> Option<String> {
        let expired = self
            .strings
            .get(key)
            .is_some_and(|stored| stored.expires.is_some_and(|at| at <= now));
        if expired {
            self.strings.remove(key);
        }
        self.strings.get(key).map(|stored| stored.value.clone())
    }

    /// `SET key value [PX ttl]`.
    fn set(&mut self, now: Instant, key: String, value: String, ttl: Option<Duration>) {
        let expires = ttl.map(|ttl| now + ttl);
        self.strings.insert(key, Stored { value, expires });
    }

    /// `PTTL` of a live key (`None`: no expiry).
    fn pttl(&self, now: Instant, key: &str) -> Option<Duration> {
        self.strings
            .get(key)
            .and_then(|stored| stored.expires)
            .map(|at| at.saturating_duration_since(now))
    }

    fn incr(&mut self, now: Instant, key: &str) -> u64 {
        let value = self
            .get(now, key)
            .map(|text| text.parse::<u64>().expect("a counter holds a number"))
            .unwrap_or(0)
            + 1;
        let expires = self.strings.get(key).and_then(|stored| stored.expires);
        self.strings.insert(
            key.to_owned(),
            Stored {
                value: value.to_string(),
                expires,
            },
        );
        value
    }

    fn restart_empty(&mut self) {
        self.strings.clear();
        self.sets.clear();
        self.held.clear();
    }

    /// Carries out one request with the semantics its docs give; returns the reply and the
    /// messages it published, in order.
    fn execute(
        &mut self,
        now: Instant,
        request: StoreRequest,
    ) -> (StoreReply, Vec<(Channel, String)>) {
        let leader = self.keys.leader();
        match request {
            StoreRequest::AcquireLease { relay, ttl, floor } => {
                if self.get(now, &leader).is_some() {
                    let remaining = self.pttl(now, &leader);
                    (
                        StoreReply::Lease(LeaseReply::Held { remaining }),
                        Vec::new(),
                    )
                } else {
                    let mut epoch = self.incr(now, &self.keys.epoch());
                    if epoch <= floor {
                        epoch = floor + 1;
                        self.set(now, self.keys.epoch(), epoch.to_string(), None);
                    }
                    self.set(now, leader, format!("{relay} {epoch}"), Some(ttl));
                    (
                        StoreReply::Lease(LeaseReply::Acquired { epoch }),
                        Vec::new(),
                    )
                }
            }
            StoreRequest::RenewLease { value, ttl } => {
                if self.get(now, &leader).as_deref() == Some(value.as_str()) {
                    self.set(now, leader, value, Some(ttl));
                    (StoreReply::Lease(LeaseReply::Renewed), Vec::new())
                } else {
                    (StoreReply::Lease(LeaseReply::Lost), Vec::new())
                }
            }
            StoreRequest::ReleaseLease { value } => {
                if self.get(now, &leader).as_deref() == Some(value.as_str()) {
                    self.strings.remove(&leader);
                    (StoreReply::Lease(LeaseReply::Released), Vec::new())
                } else {
                    (StoreReply::Lease(LeaseReply::Lost), Vec::new())
                }
            }
            StoreRequest::WriteDemand { relay, entry, ttl } => {
                self.set(now, self.keys.demand(&relay), entry.clone(), Some(ttl));
                self.sets
                    .entry(self.keys.relays())
                    .or_default()
                    .insert(relay.clone());
                self.demand_writes.insert(relay, now);
                (StoreReply::Done, vec![(Channel::DemandChanges, entry)])
            }
            StoreRequest::RemoveDemand { relay, entry } => {
                self.strings.remove(&self.keys.demand(&relay));
                if let Some(set) = self.sets.get_mut(&self.keys.relays()) {
                    set.remove(&relay);
                }
                (StoreReply::Done, vec![(Channel::DemandChanges, entry)])
            }
            StoreRequest::ReadDemand => {
                let members: Vec<String> = self
                    .sets
                    .get(&self.keys.relays())
                    .map(|set| set.iter().cloned().collect())
                    .unwrap_or_default();
                let mut entries = Vec::new();
                for relay in members {
                    match self.get(now, &self.keys.demand(&relay)) {
                        Some(entry) => entries.push(entry),
                        None => {
                            if let Some(set) = self.sets.get_mut(&self.keys.relays()) {
                                set.remove(&relay);
                            }
                        }
                    }
                }
                (StoreReply::Demand(entries), Vec::new())
            }
            StoreRequest::Publish {
                epoch,
                symbol,
                snapshot,
                message,
            } => {
                let stored = self
                    .get(now, &self.keys.epoch())
                    .map(|text| text.parse::<u64>().expect("the epoch is a number"));
                if stored != Some(epoch) {
                    self.fenced.push((
                        now,
                        StoreRequest::Publish {
                            epoch,
                            symbol,
                            snapshot,
                            message,
                        },
                    ));
                    return (StoreReply::Published { accepted: false }, Vec::new());
                }
                match (snapshot, &symbol) {
                    (SnapshotWrite::Keep, _) => {}
                    (SnapshotWrite::Set(text), Some(symbol)) => {
                        self.set(now, self.keys.snapshot(symbol), text, None);
                    }
                    (SnapshotWrite::Delete, Some(symbol)) => {
                        self.strings.remove(&self.keys.snapshot(symbol));
                    }
                    (write, None) => panic!("a snapshot write {write:?} without a symbol"),
                }
                let mut published = Vec::new();
                if let Some(message) = message {
                    self.updates.push((now, message.clone()));
                    published.push((Channel::Updates, message));
                }
                (StoreReply::Published { accepted: true }, published)
            }
            StoreRequest::ReadSnapshot { symbol } => {
                let text = self
                    .get(now, &self.keys.snapshot(&symbol))
                    .map(String::into_bytes);
                (StoreReply::Snapshot { symbol, text }, Vec::new())
            }
            StoreRequest::PruneSnapshots { keep } => {
                let prefix = self.keys.snapshot("");
                let keep: BTreeSet<String> = keep
                    .iter()
                    .map(|symbol| self.keys.snapshot(symbol))
                    .collect();
                self.strings
                    .retain(|key, _| !key.starts_with(&prefix) || keep.contains(key));
                (StoreReply::Done, Vec::new())
            }
        }
    }
}

// ----- the upstream feed ----------------------------------------------------------------------

/// The feed a leader carries: what it is subscribed to, and when that changed.
#[derive(Debug)]
struct Feed {
    id: u64,
    quotes: BTreeSet<String>,
    series: BTreeMap<SeriesId, String>,
    next_series: u64,
    /// Every quote subscription change: when, the symbol, and whether it was added.
    log: Vec<(Instant, String, bool)>,
    /// It has reported `live`.
    live: bool,
}

impl Feed {
    fn new(id: u64) -> Feed {
        Feed {
            id,
            live: false,
            quotes: BTreeSet::new(),
            series: BTreeMap::new(),
            next_series: 0,
            log: Vec::new(),
        }
    }

    /// When `symbol` last left the feed.
    fn left_at(&self, symbol: &str) -> Option<Instant> {
        self.log
            .iter()
            .rev()
            .find(|(_, which, added)| which == symbol && !added)
            .map(|(at, _, _)| *at)
    }
}

impl UpstreamFeed for Feed {
    fn subscribe_quotes(&mut self, now: Instant, symbols: &[Arc<str>]) -> usize {
        let mut added = 0;
        for symbol in symbols {
            if self.quotes.insert(symbol.to_string()) {
                added += 1;
                self.log.push((now, symbol.to_string(), true));
            }
        }
        added
    }

    fn unsubscribe_quotes(&mut self, now: Instant, symbols: &[Arc<str>]) {
        for symbol in symbols {
            if self.quotes.remove(symbol.as_ref()) {
                self.log.push((now, symbol.to_string(), false));
            }
        }
    }

    fn carries_quote(&self, symbol: &str) -> bool {
        self.quotes.contains(symbol)
    }

    fn subscribe_bars(
        &mut self,
        _now: Instant,
        symbol: &str,
        _timeframe: &str,
        _history: u32,
    ) -> Result<SeriesId, BarsError> {
        self.next_series += 1;
        let series = SeriesId(self.next_series);
        self.series.insert(series, symbol.to_owned());
        Ok(series)
    }

    fn unsubscribe_bars(&mut self, _now: Instant, series: SeriesId) {
        self.series.remove(&series);
    }
}

// ----- the cluster ----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Running,
    Paused,
    Killed,
}

/// What reaches a node from outside.
#[derive(Debug, Clone)]
enum Delivery {
    Connected,
    Failed(&'static str),
    Reply(StoreReply),
    Update(String),
    Demand(String),
    /// The feed with this id reports `live`.
    FeedLive(u64),
}

#[derive(Debug, Default)]
struct Downstream {
    /// Every frame received, with when.
    frames: Vec<(Instant, String)>,
}

#[derive(Debug)]
struct Member {
    name: String,
    node: Node,
    feed: Option<Feed>,
    life: Life,
    /// The store link's generation: every connection attempt and every loss starts a new one,
    /// and a delivery of another generation is dropped.
    link: u64,
    /// Subscribed to the store's channels (its link is up).
    linked: bool,
    latency: Duration,
    /// What reached it while paused.
    parked: VecDeque<(u64, Delivery)>,
    /// When it asked for a store link.
    connects: Vec<Instant>,
    clients: BTreeMap<ConnId, Downstream>,
}

#[derive(Debug)]
struct Cluster {
    seed: u64,
    rng: fastrand::Rng,
    start: Instant,
    now: Instant,
    store: Store,
    members: Vec<Member>,
    /// Pending deliveries, by time then order of scheduling: member, link, what.
    events: BTreeMap<(Instant, u64), (usize, u64, Delivery)>,
    order: u64,
    max_publishes: usize,
    /// The hubs' upstream symbol cap for members added from now on.
    max_upstream_symbols: usize,
    feeds_open: usize,
    max_feeds_open: usize,
    feeds_opened: u64,
}

fn hub_config() -> HubConfig {
    HubConfig {
        // The clients here never ping; keepalive is not what this simulation is about.
        keepalive_timeout: Duration::from_secs(3600),
        linger: LINGER,
        ..HubConfig::default()
    }
}

fn defaults() -> NodeConfig {
    NodeConfig::new(Keys::new(CLUSTER).expect("a valid cluster name"), "any")
}

impl Cluster {
    fn new(seed: u64, nodes: usize) -> Cluster {
        Cluster::with_window(seed, nodes, defaults().max_publishes_in_flight)
    }

    fn with_window(seed: u64, nodes: usize, max_publishes: usize) -> Cluster {
        let start = Instant::now();
        let mut cluster = Cluster {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            start,
            now: start,
            store: Store::new(),
            members: Vec::new(),
            events: BTreeMap::new(),
            order: 0,
            max_publishes,
            max_upstream_symbols: HubConfig::default().max_upstream_symbols,
            feeds_open: 0,
            max_feeds_open: 0,
            feeds_opened: 0,
        };
        for _ in 0..nodes {
            cluster.add_member();
        }
        cluster
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// A new relay, started now.
    fn add_member(&mut self) -> usize {
        let index = self.members.len();
        let name = format!("relay-{index}");
        let mut config = NodeConfig::new(Keys::new(CLUSTER).expect("a valid cluster name"), &name);
        config.lease.seed = self
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(index as u64 + 1);
        config.max_publishes_in_flight = self.max_publishes;
        let node = Node::new(
            config,
            HubConfig {
                max_upstream_symbols: self.max_upstream_symbols,
                ..hub_config()
            },
            UpstreamPlan::default(),
            &Config::default(),
            self.now,
        )
        .expect("a valid node configuration");
        let latency = Duration::from_micros(self.rng.u64(500..5_000));
        self.members.push(Member {
            name,
            node,
            feed: None,
            life: Life::Running,
            link: 0,
            linked: false,
            latency,
            parked: VecDeque::new(),
            connects: Vec::new(),
            clients: BTreeMap::new(),
        });
        self.drain(index);
        index
    }

    fn schedule(&mut self, at: Instant, member: usize, link: u64, what: Delivery) {
        self.order += 1;
        self.events.insert((at, self.order), (member, link, what));
    }

    // ----- stepping ---------------------------------------------------------------------------

    fn earliest_timer(&self) -> Option<Instant> {
        self.members
            .iter()
            .filter(|member| member.life == Life::Running)
            .filter_map(|member| member.node.poll_timeout())
            .min()
    }

    /// Runs the cluster until `target`: deliveries due, then every running node whose
    /// timeout is due, at the earliest time either happens.
    fn run_until(&mut self, target: Instant) {
        let mut spins = 0u32;
        loop {
            let event_at = self.events.keys().next().map(|(at, _)| *at);
            let timer_at = self.earliest_timer();
            let Some(next) = event_at.into_iter().chain(timer_at).min() else {
                break;
            };
            if next > target {
                break;
            }
            if next > self.now {
                self.now = next;
                spins = 0;
            } else {
                spins += 1;
                check!(
                    self,
                    spins < 10_000,
                    "no progress: a node's poll_timeout stays at {next:?} ({:?} ago)",
                    self.now - next
                );
            }
            if event_at.is_some_and(|at| at <= self.now) {
                let Some((_, (member, link, what))) = self.events.pop_first() else {
                    unreachable!("an event was just seen");
                };
                self.deliver(member, link, what);
                self.check_one_leader();
                continue;
            }
            for index in 0..self.members.len() {
                let due = self.members[index]
                    .node
                    .poll_timeout()
                    .is_some_and(|at| at <= self.now);
                if self.members[index].life == Life::Running && due {
                    let now = self.now;
                    self.members[index].node.handle_timeout(now);
                    self.drain(index);
                }
            }
            self.check_one_leader();
        }
        self.now = self.now.max(target);
    }

    /// At most one running node leads with the epoch the store holds (a woken or cut-off
    /// node may still believe in an older one until it learns otherwise).
    fn check_one_leader(&mut self) {
        let now = self.now;
        let Some(stored) = self.store.get(now, &self.store.keys.epoch()) else {
            return;
        };
        let current: Vec<usize> = self
            .running()
            .filter(|index| {
                matches!(self.members[*index].node.role(),
                    Role::Leader { epoch } if epoch.to_string() == stored)
            })
            .collect();
        check!(
            self,
            current.len() <= 1,
            "relays {current:?} all lead with epoch {stored}"
        );
    }

    fn run_for(&mut self, duration: Duration) {
        let target = self.now + duration;
        self.run_until(target);
    }

    /// Runs in small slices until `condition` holds; its time. Fails past `limit`.
    fn run_until_true(
        &mut self,
        limit: Duration,
        what: &str,
        condition: impl Fn(&Cluster) -> bool,
    ) -> Instant {
        let end = self.now + limit;
        while !condition(self) {
            check!(self, self.now < end, "{what}: not within {limit:?}");
            self.run_for(SLICE);
        }
        self.now
    }

    fn deliver(&mut self, index: usize, link: u64, what: Delivery) {
        let now = self.now;
        let member = &mut self.members[index];
        match member.life {
            Life::Killed => return,
            Life::Paused => {
                member.parked.push_back((link, what));
                return;
            }
            Life::Running => {}
        }
        if let Delivery::FeedLive(id) = what {
            if let Some(feed) = member.feed.as_mut().filter(|feed| feed.id == id) {
                feed.live = true;
                let change = StateChange {
                    state: State::Live,
                    mode: Mode::Streaming,
                    cause: None,
                    consecutive_failures: 0,
                    next_attempt: None,
                };
                member.node.handle_feed_event(now, &Event::State(change));
                self.drain(index);
            }
            return;
        }
        if link != member.link {
            return; // an earlier link's
        }
        match what {
            Delivery::Connected => {
                member.linked = true;
                member.node.handle_store_connected(now);
            }
            Delivery::Failed(reason) => {
                member.linked = false;
                member.node.handle_store_failed(now, reason);
            }
            Delivery::Reply(reply) => member.node.handle_store_reply(now, reply),
            Delivery::Update(text) => member.node.handle_stream_message(now, text.as_bytes()),
            Delivery::Demand(text) => member.node.handle_demand_message(now, text.as_bytes()),
            Delivery::FeedLive(_) => unreachable!("handled above"),
        }
        self.drain(index);
    }

    /// Drains the node's outputs, carrying each out.
    fn drain(&mut self, index: usize) {
        for _ in 0..1_000_000 {
            let now = self.now;
            let member = &mut self.members[index];
            let feed = member
                .feed
                .as_mut()
                .map(|feed| feed as &mut dyn UpstreamFeed);
            let Some(output) = member.node.poll_output(now, feed) else {
                return;
            };
            self.carry_out(index, output);
        }
        check!(self, false, "relay-{index} never stops producing outputs");
    }

    fn carry_out(&mut self, index: usize, output: NodeOutput) {
        let now = self.now;
        match output {
            NodeOutput::Downstream(FanoutOutput::Transmit { conn, frame }) => {
                let text = frame.as_str().to_owned();
                check!(
                    self,
                    serde_json::from_str::<Value>(&text).is_ok(),
                    "a frame that is not JSON: {text}"
                );
                check!(
                    self,
                    self.members[index].clients.contains_key(&conn),
                    "relay-{index} sent {text} to {conn}, which it never connected"
                );
                if let Some(client) = self.members[index].clients.get_mut(&conn) {
                    client.frames.push((now, text));
                }
                self.members[index].node.handle_written(now, conn, 1);
            }
            NodeOutput::Downstream(FanoutOutput::Close { conn, reason }) => {
                // No scenario here expects a client to be closed.
                check!(
                    self,
                    false,
                    "relay-{index} closed {conn} ({reason:?}): {:#?}",
                    self.members[index].clients.get(&conn)
                );
            }
            NodeOutput::Store(request) => self.request(index, request),
            NodeOutput::ConnectStore => {
                let member = &mut self.members[index];
                member.link += 1;
                member.linked = false;
                member.connects.push(now);
                let (link, at) = (member.link, now + member.latency);
                let what = if self.store.up {
                    Delivery::Connected
                } else {
                    Delivery::Failed("connection refused")
                };
                self.schedule(at, index, link, what);
            }
            NodeOutput::OpenUpstream => {
                check!(
                    self,
                    self.members[index].feed.is_none(),
                    "relay-{index} asked for a second feed while one is open"
                );
                self.feeds_opened += 1;
                let id = self.feeds_opened;
                self.members[index].feed = Some(Feed::new(id));
                self.feeds_open += 1;
                self.max_feeds_open = self.max_feeds_open.max(self.feeds_open);
                self.schedule(now + FEED_CONNECT, index, 0, Delivery::FeedLive(id));
            }
            NodeOutput::CloseUpstream => {
                let closed = self.members[index].feed.take();
                check!(
                    self,
                    closed.is_some(),
                    "relay-{index} closed a feed it never opened"
                );
                self.feeds_open -= 1;
            }
        }
    }

    /// A request on the member's link: executed now, or held while the store is slow.
    fn request(&mut self, index: usize, request: StoreRequest) {
        let member = &self.members[index];
        check!(
            self,
            member.linked && self.store.up,
            "{} sent {request:?} with no store link",
            member.name
        );
        if self.store.holding {
            self.store.held.push_back((index, member.link, request));
        } else {
            let link = member.link;
            self.execute(index, link, request);
        }
    }

    /// Executes a request; its reply reaches the member after its latency, and what it
    /// published reaches every linked member after that member's latency (so, for each
    /// member, after the replies scheduled before, in publish order).
    fn execute(&mut self, index: usize, link: u64, request: StoreRequest) {
        let now = self.now;
        let (reply, published) = self.store.execute(now, request);
        let at = now + self.members[index].latency;
        self.schedule(at, index, link, Delivery::Reply(reply));
        for (channel, text) in published {
            for to in 0..self.members.len() {
                let member = &self.members[to];
                if !member.linked {
                    continue;
                }
                let what = match channel {
                    Channel::Updates => Delivery::Update(text.clone()),
                    Channel::DemandChanges => Delivery::Demand(text.clone()),
                };
                let (link, at) = (member.link, now + member.latency);
                self.schedule(at, to, link, what);
            }
        }
    }

    // ----- faults -----------------------------------------------------------------------------

    /// The store goes away: every link fails, and every connection attempt until it is back.
    fn store_down(&mut self) {
        self.store.up = false;
        self.store.held.clear();
        for index in 0..self.members.len() {
            let member = &mut self.members[index];
            if matches!(member.node.store_state(), StoreState::Down { .. })
                || member.life == Life::Killed
            {
                continue;
            }
            member.link += 1;
            member.linked = false;
            let link = member.link;
            self.deliver(index, link, Delivery::Failed("the store went away"));
        }
    }

    /// The store is back, with nothing in it.
    fn store_restart_empty(&mut self) {
        if self.store.up {
            self.store_down();
        }
        self.store.restart_empty();
        self.store.up = true;
    }

    /// The store answers nothing until `release_store`.
    fn hold_store(&mut self) {
        self.store.holding = true;
    }

    fn release_store(&mut self) {
        self.store.holding = false;
        while let Some((index, link, request)) = self.store.held.pop_front() {
            self.execute(index, link, request);
        }
    }

    fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        member.life = Life::Killed;
        member.parked.clear();
        if member.feed.take().is_some() {
            self.feeds_open -= 1;
        }
    }

    fn pause(&mut self, index: usize) {
        self.members[index].life = Life::Paused;
    }

    /// The member runs again; what reached it meanwhile is delivered first, in order.
    fn resume(&mut self, index: usize) {
        let member = &mut self.members[index];
        member.life = Life::Running;
        let parked: Vec<(u64, Delivery)> = member.parked.drain(..).collect();
        let now = self.now;
        for (link, what) in parked {
            self.schedule(now, index, link, what);
        }
    }

    // ----- clients and feeds ------------------------------------------------------------------

    /// A client of `index` subscribed to `symbols`.
    fn client(&mut self, index: usize, symbols: &[&str]) -> ConnId {
        let now = self.now;
        let member = &mut self.members[index];
        let conn = member
            .node
            .connect(now)
            .unwrap_or_else(|refused| panic!("a connection refused: {refused:?}"));
        member.clients.insert(conn, Downstream::default());
        let list: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
        let text = format!(r#"{{"action":"subscribe","symbols":[{}]}}"#, list.join(","));
        member.node.handle_text(now, conn, &text);
        self.drain(index);
        conn
    }

    /// A quote of `symbol` at `price` from the member's feed.
    fn quote(&mut self, index: usize, symbol: &str, price: f64) {
        let now = self.now;
        let member = &mut self.members[index];
        let carried = member
            .feed
            .as_ref()
            .is_some_and(|feed| feed.carries_quote(symbol));
        check!(
            self,
            carried,
            "relay-{index} has no feed carrying {symbol} to quote"
        );
        let event = Event::Quote(QuoteEvent {
            quote: Quote {
                last_price: Some(price),
                ..Quote::new(Arc::from(symbol))
            },
            changed: QuoteFields::default(),
            source: Source::Stream,
        });
        self.members[index].node.handle_feed_event(now, &event);
        self.drain(index);
    }

    /// The member's feed rejects `symbol` (the client drops its quotes).
    fn reject(&mut self, index: usize, symbol: &str) {
        let now = self.now;
        let member = &mut self.members[index];
        if let Some(feed) = member.feed.as_mut() {
            feed.quotes.remove(symbol);
        }
        let event = Event::QuoteError {
            symbol: Arc::from(symbol),
            reason: "invalid symbol".to_owned(),
        };
        member.node.handle_feed_event(now, &event);
        self.drain(index);
    }

    /// The member's feed reports `state` (not live: it lost the upstream, is backing off, or
    /// its breaker is open).
    fn feed_down(&mut self, index: usize, state: State) {
        let now = self.now;
        let member = &mut self.members[index];
        check!(
            self,
            member.feed.is_some(),
            "relay-{index} has no feed to lose"
        );
        if let Some(feed) = member.feed.as_mut() {
            feed.live = false;
        }
        let change = StateChange {
            state,
            mode: Mode::Streaming,
            cause: None,
            consecutive_failures: 5,
            next_attempt: None,
        };
        self.members[index]
            .node
            .handle_feed_event(now, &Event::State(change));
        self.drain(index);
    }

    // ----- looking ----------------------------------------------------------------------------

    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|index| self.members[*index].life == Life::Running)
    }

    /// The running members that hold the lease.
    fn leaders(&self) -> Vec<usize> {
        self.running()
            .filter(|index| matches!(self.members[*index].node.role(), Role::Leader { .. }))
            .collect()
    }

    fn the_leader(&self) -> usize {
        let leaders = self.leaders();
        check!(self, leaders.len() == 1, "leaders: {leaders:?}");
        leaders[0]
    }

    fn carries(&self, index: usize, symbol: &str) -> bool {
        self.members[index]
            .feed
            .as_ref()
            .is_some_and(|feed| feed.carries_quote(symbol))
    }

    fn frames(&self, index: usize, conn: ConnId) -> Vec<String> {
        self.frames_since(index, conn, self.start)
    }

    /// The frames `conn` of `index` received at or after `since`.
    fn frames_since(&self, index: usize, conn: ConnId, since: Instant) -> Vec<String> {
        self.members[index].clients[&conn]
            .frames
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, text)| text.clone())
            .collect()
    }
}

// ----- frames ---------------------------------------------------------------------------------

fn json(frame: &str) -> Value {
    serde_json::from_str(frame).unwrap_or_else(|error| panic!("not JSON ({error}): {frame}"))
}

fn kind(frame: &str) -> String {
    json(frame)["type"].as_str().unwrap_or_default().to_owned()
}

fn status(frame: &str) -> Option<String> {
    let value = json(frame);
    (value["type"] == "status").then(|| value["upstream"].as_str().unwrap_or_default().to_owned())
}

fn statuses(frames: &[String]) -> Vec<String> {
    frames.iter().filter_map(|frame| status(frame)).collect()
}

/// The last price a `quote` or `snapshot` frame of `symbol` carries.
fn price(frame: &str, symbol: &str) -> Option<f64> {
    let value = json(frame);
    if value["symbol"] != symbol {
        return None;
    }
    match value["type"].as_str() {
        Some("quote") => value["data"]["lp"].as_f64(),
        Some("snapshot") => value["quote"]["lp"].as_f64(),
        _ => None,
    }
}

fn prices(frames: &[String], symbol: &str) -> Vec<f64> {
    frames
        .iter()
        .filter_map(|frame| price(frame, symbol))
        .collect()
}

/// A price as the hub renders it (`300.0`, not `300`).
fn number(price: f64) -> String {
    Value::from(price).to_string()
}

fn quote_frame(symbol: &str, price: f64) -> String {
    let price = number(price);
    format!(r#"{{"type":"quote","symbol":"{symbol}","data":{{"lp":{price}}}}}"#)
}

fn snapshot_frame(symbol: &str, price: Option<f64>) -> String {
    match price {
        Some(price) => format!(
            r#"{{"type":"snapshot","symbol":"{symbol}","quote":{{"lp":{}}},"bar":null}}"#,
            number(price)
        ),
        None => format!(r#"{{"type":"snapshot","symbol":"{symbol}","quote":null,"bar":null}}"#),
    }
}

fn status_frame(upstream: &str) -> String {
    format!(r#"{{"type":"status","upstream":"{upstream}"}}"#)
}

// ----- seeds and shared set-ups ---------------------------------------------------------------

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn seeds() -> Vec<u64> {
    match env_number("TICKWIRE_CLUSTER_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let count = env_number("TICKWIRE_CLUSTER_SIM_SEEDS")
                .or_else(|| env_number("TICKWIRE_SIM_SEEDS"))
                .unwrap_or(8);
            (1..=count).collect()
        }
    }
}

fn lease_ttl() -> Duration {
    defaults().lease.ttl
}

/// A cluster of `nodes` whose leader's feed is live, one client subscribed to `X:A` on
/// every node, and a first quote of `X:A` (100.5) that every client received.
struct Settled {
    cluster: Cluster,
    leader: usize,
    clients: Vec<(usize, ConnId)>,
}

const FIRST_PRICE: f64 = 100.5;

fn settled(seed: u64, nodes: usize, max_publishes: usize) -> Settled {
    let mut cluster = Cluster::with_window(seed, nodes, max_publishes);
    cluster.run_for(Duration::from_secs(2));
    let leader = cluster.the_leader();
    cluster.run_until_true(Duration::from_secs(1), "the feed live", |cluster| {
        cluster.members[leader]
            .feed
            .as_ref()
            .is_some_and(|feed| feed.live)
    });
    let clients: Vec<(usize, ConnId)> = (0..nodes)
        .map(|index| (index, cluster.client(index, &["X:A"])))
        .collect();
    cluster.run_until_true(Duration::from_secs(2), "the feed carrying X:A", |cluster| {
        cluster.carries(leader, "X:A")
    });
    cluster.run_for(Duration::from_millis(500));
    cluster.quote(leader, "X:A", FIRST_PRICE);
    cluster.run_for(Duration::from_millis(500));
    for &(index, conn) in &clients {
        let frames = cluster.frames(index, conn);
        check!(
            cluster,
            prices(&frames, "X:A").last() == Some(&FIRST_PRICE),
            "relay-{index}'s client has not got the first price: {frames:#?}"
        );
    }
    Settled {
        cluster,
        leader,
        clients,
    }
}

// ----- scenarios ------------------------------------------------------------------------------

/// 1. Exactly one of three nodes leads and opens one feed; a follower's client's symbol comes
///    to be carried by it, and a quote on the leader's feed reaches that client (a snapshot,
///    then the quote) and the leader's own client.
fn one_leader_carries_for_everyone(seed: u64) {
    let mut cluster = Cluster::new(seed, 3);
    cluster.run_for(Duration::from_secs(3));
    let leader = cluster.the_leader();
    check!(
        cluster,
        cluster.feeds_opened == 1,
        "feeds opened: {}",
        cluster.feeds_opened
    );
    check!(
        cluster,
        cluster.feeds_open == 1,
        "feeds open: {}",
        cluster.feeds_open
    );
    for index in 0..3 {
        let carries = cluster.members[index].node.carries_upstream();
        check!(
            cluster,
            carries == (index == leader),
            "relay-{index} carries upstream: {carries} (leader relay-{leader})"
        );
    }
    let follower = (leader + 1) % 3;
    let on_follower = cluster.client(follower, &["X:A"]);
    cluster.run_until_true(Duration::from_secs(2), "the feed carrying X:A", |cluster| {
        cluster.carries(leader, "X:A")
    });
    let on_leader = cluster.client(leader, &["X:A"]);
    cluster.run_for(Duration::from_millis(500));
    cluster.quote(leader, "X:A", 101.25);
    cluster.run_for(Duration::from_millis(500));

    let frames = cluster.frames(follower, on_follower);
    let expected = [
        status_frame("live"),
        snapshot_frame("X:A", None),
        // The store had no snapshot yet; the leader's first message of its epoch is the
        // symbol's whole state, taken as such and sent as a snapshot.
        snapshot_frame("X:A", Some(101.25)),
    ];
    check!(
        cluster,
        frames == expected,
        "the follower's client got {frames:#?}"
    );
    let frames = cluster.frames(leader, on_leader);
    let expected = [
        status_frame("live"),
        snapshot_frame("X:A", None),
        quote_frame("X:A", 101.25),
    ];
    check!(
        cluster,
        frames == expected,
        "the leader's client got {frames:#?}"
    );
    // The third node's hub wants nothing and got nothing.
    let third = (leader + 2) % 3;
    check!(
        cluster,
        cluster.members[third].clients.is_empty(),
        "no client on relay-{third}"
    );
    check!(
        cluster,
        cluster.max_feeds_open == 1,
        "at most one feed open"
    );
}

#[test]
fn scenario_1_one_leader_carries_for_everyone() {
    for seed in seeds() {
        one_leader_carries_for_everyone(seed);
    }
}

/// 2. The leader is killed: another takes the lease within its TTL and a few seconds, opens
///    the feed and carries X:A; at most one feed is ever open; the surviving clients stay
///    connected, see `connecting` then `live`, and get the new feed's quotes.
fn a_killed_leader_is_replaced(seed: u64) {
    let Settled {
        mut cluster,
        leader,
        clients,
    } = settled(seed, 3, defaults().max_publishes_in_flight);
    let killed_at = cluster.now;
    cluster.kill(leader);
    let taken_at = cluster.run_until_true(
        lease_ttl() + Duration::from_secs(4),
        "another node taking the lease",
        |cluster| !cluster.leaders().is_empty(),
    );
    let successor = cluster.the_leader();
    check!(cluster, successor != leader, "the dead leader leads");
    check!(
        cluster,
        taken_at - killed_at >= lease_ttl() - defaults().lease.renew_every,
        "the lease was taken {:?} after the kill, before it could have expired",
        taken_at - killed_at
    );
    cluster.run_until_true(
        Duration::from_secs(3),
        "the new feed carrying X:A",
        |cluster| cluster.carries(successor, "X:A"),
    );
    cluster.run_for(Duration::from_secs(1));
    let new_price = 102.75;
    cluster.quote(successor, "X:A", new_price);
    cluster.run_for(Duration::from_secs(1));
    check!(
        cluster,
        cluster.feeds_opened == 2,
        "feeds opened: {}",
        cluster.feeds_opened
    );
    check!(
        cluster,
        cluster.max_feeds_open == 1,
        "{} feeds were open at once",
        cluster.max_feeds_open
    );
    for &(index, conn) in clients.iter().filter(|(index, _)| *index != leader) {
        check!(
            cluster,
            cluster.members[index].node.fanout().backlog(conn).is_some(),
            "relay-{index}'s client is gone"
        );
        let after = cluster.frames_since(index, conn, killed_at);
        let seen = statuses(&after);
        check!(
            cluster,
            seen.first().map(String::as_str) == Some("connecting")
                && seen.last().map(String::as_str) == Some("live"),
            "relay-{index}'s client saw statuses {seen:?} after the kill"
        );
        // The new leader's first message of X:A (seq 1 of its epoch) is its whole state:
        // every surviving client, the new leader's own included, gets a fresh snapshot.
        let data: Vec<&String> = after
            .iter()
            .filter(|frame| status(frame).is_none())
            .collect();
        check!(
            cluster,
            data == [&snapshot_frame("X:A", Some(new_price))],
            "relay-{index}'s client got {after:#?} after the kill"
        );
    }
}

#[test]
fn scenario_2_a_killed_leader_is_replaced() {
    for seed in seeds() {
        a_killed_leader_is_replaced(seed);
    }
}

/// 2b. The statuses a follower's client sees across the failover are exactly `connecting`
///     (the leader fell silent) and `live` (the new leader's feed): nothing claims `live`
///     while no feed is.
fn failover_statuses_are_exact(seed: u64) {
    let Settled {
        mut cluster,
        leader,
        clients,
    } = settled(seed, 3, defaults().max_publishes_in_flight);
    let killed_at = cluster.now;
    cluster.kill(leader);
    cluster.run_for(lease_ttl() + Duration::from_secs(6));
    let successor = cluster.the_leader();
    for &(index, conn) in clients
        .iter()
        .filter(|(index, _)| *index != leader && *index != successor)
    {
        let seen = statuses(&cluster.frames_since(index, conn, killed_at));
        check!(
            cluster,
            seen == ["connecting", "live"],
            "relay-{index}'s client saw statuses {seen:?} after the kill"
        );
    }
}

/// Fails (a bug in `Node`): when the leader falls silent, `handle_timeout` reports
/// `connecting` to the hub but leaves `leader_state` at the dead leader's `Live`. The next
/// leader's first message (its `status` `connecting`) makes `handle_stream_message` end the
/// silence with that stale state, so every client is told `live`, and only then does the
/// follower's `Upstream(Connecting)` output say `connecting` again: the clients of a pure
/// follower see `connecting`, `live`, `connecting`, `live` across a failover, a `live` while no
/// feed is. The successor's own clients see `connecting`, `live`.
#[test]
fn scenario_2b_failover_statuses_are_exact() {
    for seed in seeds() {
        failover_statuses_are_exact(seed);
    }
}

/// 3. The leader is paused past its lease, another takes over, then it wakes: what it
///    publishes on waking is fenced by the stored epoch, followers ignore older epochs, and it
///    closes its feed and follows. With `strict`, its own clients do not get what its feed
///    said on waking either.
fn a_paused_leader_is_fenced(seed: u64, strict: bool) {
    let Settled {
        mut cluster,
        leader,
        clients,
    } = settled(seed, 3, defaults().max_publishes_in_flight);
    cluster.pause(leader);
    cluster.run_until_true(
        lease_ttl() + Duration::from_secs(4),
        "another node taking the lease",
        |cluster| !cluster.leaders().is_empty(),
    );
    let successor = cluster.the_leader();
    cluster.run_until_true(
        Duration::from_secs(3),
        "the new feed carrying X:A",
        |cluster| cluster.carries(successor, "X:A"),
    );
    cluster.run_for(Duration::from_secs(1));
    cluster.quote(successor, "X:A", 103.0);
    cluster.run_for(Duration::from_secs(2));

    // The old leader wakes with its feed still open, and its feed speaks first.
    let woke_at = cluster.now;
    cluster.resume(leader);
    let stale = 666.0;
    cluster.quote(leader, "X:A", stale);
    cluster.run_for(Duration::from_secs(3));
    // It steps down before acting on its feed (its lease ran out while it slept); had it
    // published anyway, the stored epoch would refuse it. Either way nothing stale is stored.
    let snapshot_key = cluster.store.keys.snapshot("X:A");
    let accepted_stale = cluster
        .store
        .strings
        .get(&snapshot_key)
        .is_some_and(|stored| stored.value.contains("666"));
    check!(
        cluster,
        !accepted_stale,
        "the woken leader's stale quote reached the store"
    );
    let stale_published = cluster
        .store
        .updates
        .iter()
        .any(|(at, text)| *at >= woke_at && price(text, "X:A") == Some(stale));
    check!(
        cluster,
        !stale_published,
        "the woken leader's quote was published"
    );
    check!(
        cluster,
        cluster.members[leader].feed.is_none(),
        "the woken leader kept its feed"
    );
    check!(
        cluster,
        cluster.members[leader].node.role() == Role::Follower,
        "the woken leader is {:?}",
        cluster.members[leader].node.role()
    );
    check!(
        cluster,
        cluster.the_leader() == successor,
        "the lease moved again"
    );

    // A message of the old epoch that reached the stream anyway is ignored everywhere.
    let old_epoch = cluster
        .store
        .updates
        .first()
        .and_then(|(_, text)| json(text)["epoch"].as_u64())
        .expect("the first leader published");
    let slipped = format!(
        r#"{{"type":"quote","symbol":"X:A","data":{{"lp":777.0}},"epoch":{old_epoch},"seq":999}}"#
    );
    let followers: Vec<usize> = cluster.running().filter(|i| *i != successor).collect();
    let stale_before: Vec<u64> = followers
        .iter()
        .map(|i| cluster.members[*i].node.follower().counters().stale)
        .collect();
    for index in cluster.running().collect::<Vec<_>>() {
        let now = cluster.now;
        cluster.members[index]
            .node
            .handle_stream_message(now, slipped.as_bytes());
        cluster.drain(index);
    }
    for (index, before) in followers.iter().zip(stale_before) {
        let after = cluster.members[*index].node.follower().counters().stale;
        check!(
            cluster,
            after == before + 1,
            "relay-{index} did not count the old epoch's message as stale"
        );
    }
    cluster.run_for(Duration::from_secs(1));
    cluster.quote(successor, "X:A", 104.0);
    cluster.run_for(Duration::from_secs(1));
    for &(index, conn) in &clients {
        let after = cluster.frames_since(index, conn, woke_at);
        let seen = prices(&after, "X:A");
        check!(
            cluster,
            !seen.contains(&777.0),
            "relay-{index}'s client got a deposed epoch's quote: {after:#?}"
        );
        if index != leader || strict {
            check!(
                cluster,
                !seen.contains(&stale),
                "relay-{index}'s client got the woken leader's quote: {after:#?}"
            );
        }
        check!(
            cluster,
            seen.last() == Some(&104.0),
            "relay-{index}'s client does not follow the new leader: {after:#?}"
        );
    }
}

#[test]
fn scenario_3_a_paused_leader_is_fenced() {
    for seed in seeds() {
        a_paused_leader_is_fenced(seed, false);
    }
}

/// Fails (a gap in `Node`): `handle_feed_event` publishes whenever the carrier is leading and
/// the store link is up; only `handle_timeout` steps a lease down at its local `valid_until`.
/// A leader woken from a pause whose feed speaks before its timer is handled publishes with
/// its old epoch (the store's fence refuses it, so no other node is affected) and hands the
/// quote to its own clients, although the lease docs promise a paused relay "has stepped down
/// before it can publish again".
#[test]
fn scenario_3b_a_woken_leaders_own_clients_get_nothing_from_its_feed() {
    for seed in seeds() {
        a_paused_leader_is_fenced(seed, true);
    }
}

/// The gaps between a member's store connection attempts while the store is down: each
/// within the jittered backoff of its failure count, not all equal, and growing.
fn check_backoff(cluster: &Cluster, index: usize, since: Instant, until: Instant) {
    let config = defaults();
    let attempts: Vec<Instant> = cluster.members[index]
        .connects
        .iter()
        .copied()
        .filter(|at| *at > since && *at <= until)
        .collect();
    check!(
        cluster,
        attempts.len() >= 5,
        "relay-{index} tried the store {} times",
        attempts.len()
    );
    // The first wait follows the link's failure, every later one a refused attempt (answered
    // after the member's latency).
    let mut gaps = vec![attempts[0] - since];
    gaps.extend(attempts.windows(2).map(|pair| pair[1] - pair[0]));
    let latency = cluster.members[index].latency;
    for (failures, gap) in (1u32..).zip(&gaps) {
        let base = config
            .store_backoff_initial
            .saturating_mul(1 << (failures - 1).min(20))
            .min(config.store_backoff_max);
        let low = base.mul_f64(1.0 - config.store_jitter);
        let high = base.mul_f64(1.0 + config.store_jitter) + latency;
        check!(
            cluster,
            *gap >= low && *gap <= high + Duration::from_millis(1),
            "relay-{index}'s wait after {failures} failures was {gap:?}, not {low:?}..{high:?}: {gaps:?}"
        );
    }
    check!(
        cluster,
        gaps.windows(2).any(|pair| pair[0] != pair[1]),
        "relay-{index}'s waits are all equal: {gaps:?}"
    );
    for (i, pair) in gaps.windows(3).enumerate() {
        // Two doublings outgrow the jitter, until the longest wait.
        let base = config
            .store_backoff_initial
            .saturating_mul(1 << (i + 2).min(20));
        if base < config.store_backoff_max {
            check!(
                cluster,
                pair[2] > pair[0],
                "relay-{index}'s waits do not grow: {gaps:?}"
            );
        }
    }
}

/// Runs until every running node is linked to the store again, one leads and one feed is
/// open, and then a few lease periods more for everyone to resynchronise.
fn settle_after_the_store_returned(cluster: &mut Cluster) {
    cluster.run_until_true(
        defaults().store_backoff_max * 2 + lease_ttl() * 2,
        "every node linked, one leader and one feed after the store returned",
        |cluster| {
            cluster
                .running()
                .all(|index| cluster.members[index].node.store_state() == StoreState::Up)
                && cluster.leaders().len() == 1
                && cluster.feeds_open == 1
        },
    );
    cluster.run_for(lease_ttl() * 2);
}

/// 4. The store is down longer than the lease: every client is told `degraded`, the leader
///    keeps feeding its own clients, reconnects back off with jitter; when the store returns
///    empty, everyone resynchronises and one feed remains.
fn the_store_goes_away_and_returns_empty(seed: u64) {
    let Settled {
        mut cluster,
        leader,
        clients,
    } = settled(seed, 3, defaults().max_publishes_in_flight);
    let down_at = cluster.now;
    cluster.store_down();
    cluster.run_for(Duration::from_millis(100));
    for &(index, conn) in &clients {
        let after = cluster.frames_since(index, conn, down_at);
        check!(
            cluster,
            after == [status_frame("degraded")],
            "relay-{index}'s client got {after:#?} when the store went away"
        );
    }
    // The leader's lease runs out while the store is away; it keeps its own clients fed.
    let down_for = lease_ttl() * 5;
    let mut price = 110.0;
    while cluster.now < down_at + down_for {
        cluster.run_for(Duration::from_secs(2));
        if cluster.members[leader].feed.is_some() {
            price += 1.0;
            cluster.quote(leader, "X:A", price);
        }
    }
    check!(
        cluster,
        cluster.members[leader].feed.is_some(),
        "the leader dropped its feed while the store was away"
    );
    check!(
        cluster,
        cluster.leaders().is_empty(),
        "someone believes it leads with no store: {:?}",
        cluster.leaders()
    );
    for &(index, conn) in &clients {
        let after = cluster.frames_since(index, conn, down_at);
        let got = prices(&after, "X:A");
        if index == leader {
            let expected: Vec<f64> = (1..=(price - 110.0) as u32)
                .map(|step| 110.0 + f64::from(step))
                .collect();
            check!(
                cluster,
                got == expected,
                "the leader's client got {got:?} while the store was away"
            );
        } else {
            check!(
                cluster,
                got.is_empty(),
                "relay-{index}'s client got {got:?} from nowhere"
            );
        }
        // Repeats are allowed: the hub announces `degraded` again whenever the upstream
        // state under it changes (see the report).
        let mut seen = statuses(&after);
        seen.dedup();
        check!(
            cluster,
            seen == ["degraded"],
            "relay-{index}'s client saw {:?} while the store was away",
            statuses(&after)
        );
    }
    let back_at = cluster.now;
    for index in 0..3 {
        check_backoff(&cluster, index, down_at, back_at);
    }

    cluster.store_restart_empty();
    settle_after_the_store_returned(&mut cluster);
    let settled_leader = cluster.the_leader();
    check!(
        cluster,
        cluster.feeds_open == 1,
        "{} feeds open",
        cluster.feeds_open
    );
    check!(
        cluster,
        cluster.carries(settled_leader, "X:A"),
        "the leader's feed does not carry X:A"
    );
    let resynced_at = cluster.now;
    cluster.quote(settled_leader, "X:A", 150.0);
    cluster.run_for(Duration::from_secs(1));
    for &(index, conn) in &clients {
        check!(
            cluster,
            cluster.members[index].node.fanout().backlog(conn).is_some(),
            "relay-{index}'s client is gone"
        );
        let after = cluster.frames_since(index, conn, back_at);
        check!(
            cluster,
            statuses(&after).last().map(String::as_str) == Some("live"),
            "relay-{index}'s client ends with statuses {:?}",
            statuses(&after)
        );
        if index != settled_leader {
            let refreshed = after
                .iter()
                .position(|frame| kind(frame) == "snapshot")
                .is_some();
            check!(
                cluster,
                refreshed,
                "relay-{index}'s client got no fresh snapshot after the store returned: {after:#?}"
            );
        }
        let last = cluster.frames_since(index, conn, resynced_at);
        check!(
            cluster,
            prices(&last, "X:A") == [150.0],
            "relay-{index}'s client got {last:#?} after resynchronising"
        );
    }
}

#[test]
fn scenario_4_the_store_goes_away_and_returns_empty() {
    for seed in seeds() {
        the_store_goes_away_and_returns_empty(seed);
    }
}

/// 4b. A failover first (the epoch is 2), then the store restarts empty: its epoch counter
///     starts again, and the followers must still follow the new leader. (Four nodes, so at
///     least one node that followed epoch 2 still follows after the restart.)
fn an_emptied_store_restarts_the_epoch(seed: u64) {
    let Settled {
        mut cluster,
        leader,
        clients,
    } = settled(seed, 4, defaults().max_publishes_in_flight);
    cluster.kill(leader);
    cluster.run_until_true(lease_ttl() * 3, "a successor", |cluster| {
        cluster.leaders().len() == 1
    });
    let successor = cluster.the_leader();
    cluster.run_until_true(
        Duration::from_secs(3),
        "the new feed carrying X:A",
        |cluster| cluster.carries(successor, "X:A"),
    );
    cluster.run_for(Duration::from_secs(1));
    cluster.quote(successor, "X:A", 120.0);
    cluster.run_for(Duration::from_secs(1));
    cluster.store_down();
    cluster.run_for(Duration::from_secs(1));
    cluster.store_restart_empty();
    settle_after_the_store_returned(&mut cluster);
    let now_leader = cluster.the_leader();
    let resynced_at = cluster.now;
    cluster.quote(now_leader, "X:A", 130.0);
    cluster.run_for(Duration::from_secs(1));
    cluster.quote(now_leader, "X:A", 131.0);
    cluster.run_for(Duration::from_secs(1));
    for &(index, conn) in clients.iter().filter(|(index, _)| *index != leader) {
        let last = cluster.frames_since(index, conn, resynced_at);
        check!(
            cluster,
            prices(&last, "X:A") == [130.0, 131.0],
            "relay-{index}'s client got {last:#?} from the new leader (stored epoch {:?}, \
             the follower's {}, {:?})",
            cluster
                .store
                .strings
                .get(&cluster.store.keys.epoch())
                .map(|s| &s.value),
            cluster.members[index].node.follower().epoch(),
            cluster.members[index].node.follower().counters()
        );
    }
}

/// Fails (a bug in `Node`/`Follower`): the fencing epoch lives in the store (`INCR
/// NAME:epoch`), so a store restarted empty starts it again at 1. `Follower` keeps the highest
/// epoch it ever saw (not reset by `resync_all` when the store link comes back) and drops
/// every message of a lower epoch as stale. After a failover (epoch 2) and a store restart,
/// the new leader publishes with epoch 1: a follower adopts the stored snapshot (snapshots are
/// not epoch-checked), then ignores every quote and heartbeat, and its clients get
/// `connecting` once `leader_silence` passes, and nothing more.
#[test]
fn scenario_4b_an_emptied_store_restarts_the_epoch() {
    for seed in seeds() {
        an_emptied_store_restarts_the_epoch(seed);
    }
}

/// 5. A node whose client wanted X:B dies: X:B leaves the leader's feed once its demand
///    entry's TTL and the hub's linger have passed, not before.
fn a_dead_nodes_demand_expires(seed: u64) {
    let mut cluster = Cluster::new(seed, 3);
    cluster.run_for(Duration::from_secs(3));
    let leader = cluster.the_leader();
    let wants_a = (leader + 1) % 3;
    let wants_b = (leader + 2) % 3;
    cluster.client(wants_a, &["X:A"]);
    cluster.client(wants_b, &["X:B"]);
    cluster.run_until_true(
        Duration::from_secs(2),
        "the feed carrying both",
        |cluster| cluster.carries(leader, "X:A") && cluster.carries(leader, "X:B"),
    );
    cluster.run_for(Duration::from_secs(7));
    cluster.kill(wants_b);
    let name = cluster.members[wants_b].name.clone();
    let last_write = *cluster
        .store
        .demand_writes
        .get(&name)
        .expect("the node wrote its demand");
    let config = defaults();
    // The leader learns of the expiry by its own entry timer or by its next demand read (every
    // half TTL, ±20 %).
    let earliest = last_write + config.demand_ttl + LINGER;
    let latest = earliest + config.demand_ttl.mul_f64(0.5 * 1.2) + Duration::from_millis(200);
    let left = cluster.run_until_true(
        latest - cluster.now + Duration::from_secs(1),
        "X:B leaving the feed",
        |cluster| !cluster.carries(leader, "X:B"),
    );
    let left = cluster.members[leader]
        .feed
        .as_ref()
        .and_then(|feed| feed.left_at("X:B"))
        .unwrap_or(left);
    check!(
        cluster,
        left >= earliest,
        "X:B left {:?} after the dead node's last demand write, before its TTL and the linger \
         ({:?})",
        left - last_write,
        earliest - last_write
    );
    check!(
        cluster,
        left <= latest,
        "X:B left {:?} after the dead node's last demand write, later than {:?}",
        left - last_write,
        latest - last_write
    );
    check!(
        cluster,
        cluster.carries(leader, "X:A"),
        "X:A left the feed too"
    );
    check!(cluster, cluster.feeds_opened == 1, "the feed was reopened");
    check!(
        cluster,
        cluster.max_feeds_open == 1,
        "more than one feed was open"
    );
}

#[test]
fn scenario_5_a_dead_nodes_demand_expires() {
    for seed in seeds() {
        a_dead_nodes_demand_expires(seed);
    }
}

/// 6. A node joining late gets X:A's state from the store: its client's first snapshot with a
///    quote carries the last price, before any quote frame, and the leader publishes nothing
///    for it.
fn a_late_node_reads_the_snapshot(seed: u64) {
    let Settled {
        mut cluster,
        leader,
        ..
    } = settled(seed, 2, defaults().max_publishes_in_flight);
    cluster.quote(leader, "X:A", 101.5);
    cluster.run_for(Duration::from_secs(5));
    let joined_at = cluster.now;
    let late = cluster.add_member();
    cluster.run_for(Duration::from_secs(2));
    check!(
        cluster,
        cluster.the_leader() == leader,
        "the late node took the lease"
    );
    let conn = cluster.client(late, &["X:A"]);
    cluster.run_for(Duration::from_secs(1));
    let frames = cluster.frames(late, conn);
    let data: Vec<&String> = frames
        .iter()
        .filter(|frame| kind(frame) != "status")
        .collect();
    // The hub answered the subscribe at once (with what it had: nothing); the store's
    // snapshot then refreshed it.
    let with_quote: Vec<&&String> = data
        .iter()
        .filter(|frame| kind(frame) == "snapshot" && json(frame)["quote"].is_object())
        .collect();
    check!(
        cluster,
        with_quote.first().map(|frame| frame.as_str()) == Some(&snapshot_frame("X:A", Some(101.5))),
        "the late node's client got {frames:#?}"
    );
    check!(
        cluster,
        prices(&frames, "X:A").iter().all(|price| *price == 101.5)
            && data.last().map(|frame| frame.as_str()) == Some(&snapshot_frame("X:A", Some(101.5))),
        "the late node's client got {frames:#?}"
    );
    let for_symbols = cluster
        .store
        .updates
        .iter()
        .filter(|(at, text)| *at >= joined_at && kind(text) != "status")
        .count();
    check!(
        cluster,
        for_symbols == 0,
        "the leader published {for_symbols} symbol messages for the late node"
    );
    check!(
        cluster,
        cluster.feeds_opened == 1 && cluster.max_feeds_open == 1,
        "feeds opened: {}",
        cluster.feeds_opened
    );
}

#[test]
fn scenario_6_a_late_node_reads_the_snapshot() {
    for seed in seeds() {
        a_late_node_reads_the_snapshot(seed);
    }
}

/// 8. The leader's lingering symbols count against the upstream cap: when another relay's
///    clients move to new symbols, the lingering ones make room (the soonest to end first) and
///    the feed never carries more than the cap, nor leaves the new symbols out.
fn lingering_symbols_make_room_under_the_cap(seed: u64) {
    let mut cluster = Cluster::with_window(seed, 0, defaults().max_publishes_in_flight);
    cluster.max_upstream_symbols = 3;
    let first = cluster.add_member();
    let second = cluster.add_member();
    cluster.run_for(Duration::from_secs(3));
    let leader = cluster.the_leader();
    let follower = if leader == first { second } else { first };
    let early = cluster.client(follower, &["X:A", "X:B", "X:C"]);
    cluster.run_until_true(
        Duration::from_secs(2),
        "the feed carrying X:A-C",
        |cluster| {
            ["X:A", "X:B", "X:C"]
                .iter()
                .all(|symbol| cluster.carries(leader, symbol))
        },
    );
    let now = cluster.now;
    cluster.members[follower].node.handle_text(
        now,
        early,
        r#"{"action":"unsubscribe","symbols":["X:B","X:C"]}"#,
    );
    cluster.drain(follower);
    let _late = cluster.client(follower, &["X:D", "X:E"]);
    let deadline = cluster.now + Duration::from_secs(3);
    let mut most = 0;
    while cluster.now < deadline
        && !(cluster.carries(leader, "X:D") && cluster.carries(leader, "X:E"))
    {
        cluster.run_for(SLICE);
        let carried = cluster.members[leader]
            .feed
            .as_ref()
            .map_or(0, |feed| feed.quotes.len());
        most = most.max(carried);
    }
    check!(
        cluster,
        cluster.carries(leader, "X:D") && cluster.carries(leader, "X:E"),
        "the new symbols were left out: the feed carries {:?}",
        cluster.members[leader]
            .feed
            .as_ref()
            .map(|feed| &feed.quotes)
    );
    check!(
        cluster,
        most <= 3 && cluster.carries(leader, "X:A"),
        "the feed carried {most} symbols at once (cap 3), or dropped the wanted X:A"
    );
}

#[test]
fn scenario_8_lingering_symbols_make_room_under_the_cap() {
    for seed in seeds() {
        lingering_symbols_make_room_under_the_cap(seed);
    }
}

/// 7. With the store slow, changes past the publish window coalesce into `snapshot`
///    messages, and the followers still converge to the latest price.
fn a_slow_store_coalesces_publishes(seed: u64) {
    let window = 4;
    let Settled {
        mut cluster,
        leader,
        clients,
    } = settled(seed, 3, window);
    let held_at = cluster.now;
    cluster.hold_store();
    let changes = 12;
    for step in 1..=changes {
        cluster.quote(leader, "X:A", 200.0 + f64::from(step));
        cluster.run_for(Duration::from_millis(20));
    }
    let latest = 200.0 + f64::from(changes);
    cluster.run_until(held_at + Duration::from_millis(400));
    cluster.release_store();
    cluster.run_for(Duration::from_secs(2));
    let counters = cluster.members[leader].node.counters().clone();
    check!(
        cluster,
        counters.publishes_coalesced > 0,
        "nothing was coalesced: {counters:?}"
    );
    let published: Vec<&String> = cluster
        .store
        .updates
        .iter()
        .filter(|(at, text)| *at >= held_at && json(text)["symbol"] == "X:A")
        .map(|(_, text)| text)
        .collect();
    check!(
        cluster,
        published.len() < changes as usize,
        "every change was published on its own: {published:#?}"
    );
    check!(
        cluster,
        published.iter().any(|text| kind(text) == "snapshot"),
        "no snapshot message: {published:#?}"
    );
    check!(
        cluster,
        published
            .last()
            .is_some_and(|text| price(text, "X:A") == Some(latest)),
        "the last message is not the latest state: {published:#?}"
    );
    for &(index, conn) in &clients {
        let after = cluster.frames_since(index, conn, held_at);
        let got = prices(&after, "X:A");
        check!(
            cluster,
            got.last() == Some(&latest),
            "relay-{index}'s client ends at {:?}: {after:#?}",
            got.last()
        );
        check!(
            cluster,
            got.windows(2).all(|pair| pair[0] <= pair[1]),
            "relay-{index}'s client went back in time: {got:?}"
        );
    }
    check!(
        cluster,
        cluster.feeds_opened == 1 && cluster.the_leader() == leader,
        "the slow store moved the lease"
    );
    // And it goes on one by one once the store keeps up.
    cluster.quote(leader, "X:A", 300.0);
    cluster.run_for(Duration::from_secs(1));
    for &(index, conn) in &clients {
        let frames = cluster.frames(index, conn);
        check!(
            cluster,
            frames.last() == Some(&quote_frame("X:A", 300.0)),
            "relay-{index}'s client: {frames:#?}"
        );
    }
}

#[test]
fn scenario_7_a_slow_store_coalesces_publishes() {
    for seed in seeds() {
        a_slow_store_coalesces_publishes(seed);
    }
}

/// 9. A leader whose upstream stays unhealthy (its breaker open) keeps the lease through a
///    short outage, gives it up after `abdicate_after`, and closes its feed; another node
///    takes the lease, carries the demand, and every client gets the new feed's data.
fn an_unhealthy_leader_gives_the_lease_up(seed: u64) {
    let Settled {
        mut cluster,
        leader,
        clients,
    } = settled(seed, 3, defaults().max_publishes_in_flight);
    let abdicate_after = defaults().lease.abdicate_after;
    let failed_at = cluster.now;
    cluster.feed_down(leader, State::CircuitOpen);
    cluster.run_for(abdicate_after - Duration::from_secs(1));
    check!(
        cluster,
        cluster.leaders() == [leader] && cluster.members[leader].feed.is_some(),
        "a leader gave up before its upstream was unhealthy for {abdicate_after:?}: leaders {:?}",
        cluster.leaders()
    );
    let taken_at = cluster.run_until_true(
        lease_ttl() * 2 + Duration::from_secs(5),
        "another node taking the lease",
        |cluster| cluster.leaders().iter().any(|&index| index != leader),
    );
    check!(
        cluster,
        taken_at - failed_at >= abdicate_after,
        "the lease moved {:?} after the upstream failed",
        taken_at - failed_at
    );
    let successor = cluster.the_leader();
    check!(
        cluster,
        cluster.members[leader].feed.is_none(),
        "the leader that gave up kept its feed open"
    );
    cluster.run_until_true(
        Duration::from_secs(3),
        "the new feed carrying X:A",
        |cluster| cluster.carries(successor, "X:A"),
    );
    cluster.run_for(Duration::from_secs(1));
    let new_price = 104.25;
    cluster.quote(successor, "X:A", new_price);
    cluster.run_for(Duration::from_secs(1));
    check!(
        cluster,
        cluster.max_feeds_open == 1 && cluster.feeds_opened == 2,
        "feeds opened {}, at most {} at once",
        cluster.feeds_opened,
        cluster.max_feeds_open
    );
    for &(index, conn) in &clients {
        check!(
            cluster,
            cluster.members[index].node.fanout().backlog(conn).is_some(),
            "relay-{index}'s client is gone"
        );
        let after = cluster.frames_since(index, conn, failed_at);
        let seen = statuses(&after);
        check!(
            cluster,
            seen.first().map(String::as_str) == Some("circuit_open")
                && seen.last().map(String::as_str) == Some("live"),
            "relay-{index}'s client saw statuses {seen:?} after the upstream failed"
        );
        check!(
            cluster,
            prices(&after, "X:A").last() == Some(&new_price),
            "relay-{index}'s client did not get the new feed's price: {after:#?}"
        );
    }
}

#[test]
fn scenario_9_an_unhealthy_leader_gives_the_lease_up() {
    for seed in seeds() {
        an_unhealthy_leader_gives_the_lease_up(seed);
    }
}

/// 10. With the store stalled, a feed that keeps rejecting a symbol its clients ask for again
///     cannot grow the publishes outstanding past the window: the delete waits like a change,
///     and once the store answers the rejected symbol's snapshot is gone and the followers are
///     told why.
fn rejections_wait_in_the_window(seed: u64) {
    let window = 1;
    let Settled {
        mut cluster,
        leader,
        ..
    } = settled(seed, 2, window);
    let first = cluster.client(leader, &["X:R"]);
    cluster.run_until_true(Duration::from_secs(2), "the feed carrying X:R", |cluster| {
        cluster.carries(leader, "X:R")
    });
    cluster.quote(leader, "X:R", 7.0);
    cluster.run_for(Duration::from_millis(200));
    let snapshot_key = cluster.store.keys.snapshot("X:R");
    let now = cluster.now;
    check!(
        cluster,
        cluster.store.get(now, &snapshot_key).is_some(),
        "X:R's snapshot was never stored"
    );
    cluster.members[leader]
        .node
        .disconnect(now, first, CloseReason::ClientClosed);
    cluster.drain(leader);
    let held_at = cluster.now;
    cluster.hold_store();
    let rounds = 12;
    for _ in 0..rounds {
        let conn = cluster.client(leader, &["X:R"]);
        cluster.run_until_true(Duration::from_secs(1), "X:R carried again", |cluster| {
            cluster.carries(leader, "X:R")
        });
        cluster.quote(leader, "X:R", 8.0);
        cluster.reject(leader, "X:R");
        let now = cluster.now;
        cluster.members[leader]
            .node
            .disconnect(now, conn, CloseReason::ClientClosed);
        cluster.drain(leader);
        let publishes = cluster
            .store
            .held
            .iter()
            .filter(|(index, _, request)| {
                *index == leader && matches!(request, StoreRequest::Publish { .. })
            })
            .count();
        check!(
            cluster,
            publishes <= window,
            "{publishes} publishes outstanding (window {window})"
        );
        cluster.run_for(Duration::from_millis(20));
    }
    check!(
        cluster,
        cluster.the_leader() == leader && cluster.now < held_at + lease_ttl() / 2,
        "the scenario outlived the lease it needs"
    );
    cluster.release_store();
    cluster.run_for(Duration::from_secs(2));
    let now = cluster.now;
    check!(
        cluster,
        cluster.store.get(now, &snapshot_key).is_none(),
        "X:R's snapshot outlived its rejection: {:?}",
        cluster.store.get(now, &snapshot_key)
    );
    let last = cluster
        .store
        .updates
        .iter()
        .filter(|(at, text)| *at >= held_at && json(text)["symbol"] == "X:R")
        .map(|(_, text)| text.clone())
        .next_back();
    check!(
        cluster,
        last.as_deref()
            .is_some_and(|text| json(text)["code"] == "UNKNOWN_SYMBOL"),
        "the followers were not told X:R was rejected: {last:?}"
    );
}

#[test]
fn scenario_10_rejections_wait_in_the_window() {
    for seed in seeds() {
        rejections_wait_in_the_window(seed);
    }
}

/// 11. A store that answers nothing for longer than the demand read interval: the leader's
///     next read waits for the one in flight instead of coming due again at once (a
///     `poll_timeout` stuck in the past spins the driver), and everything goes on once the
///     store answers.
fn a_stalled_store_does_not_spin_the_demand_read(seed: u64) {
    let Settled {
        mut cluster,
        leader,
        clients,
    } = settled(seed, 2, defaults().max_publishes_in_flight);
    let read_interval = defaults().demand_ttl / 2;
    cluster.hold_store();
    // The harness fails the run if a node's poll_timeout stays in the past.
    cluster.run_for(read_interval * 2);
    cluster.release_store();
    cluster.run_for(lease_ttl() * 2);
    let leader = if cluster.leaders().len() == 1 {
        cluster.the_leader()
    } else {
        leader
    };
    cluster.quote(leader, "X:A", 321.0);
    cluster.run_for(Duration::from_secs(1));
    for &(index, conn) in &clients {
        let frames = cluster.frames(index, conn);
        check!(
            cluster,
            prices(&frames, "X:A").last() == Some(&321.0),
            "relay-{index}'s client missed the price after the stall: {frames:#?}"
        );
    }
}

#[test]
fn scenario_11_a_stalled_store_does_not_spin_the_demand_read() {
    for seed in seeds() {
        a_stalled_store_does_not_spin_the_demand_read(seed);
    }
}

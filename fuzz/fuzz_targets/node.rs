//! One cluster `Node` driven by an arbitrary schedule of everything that reaches a relay from
//! the network, with small limits: time steps (its own deadlines and arbitrary jumps), the store
//! link opening, failing and answering the oldest outstanding request (with the answer that
//! fits it, built from a model of the store, or with anything else), stream messages (from
//! publishers of a few epochs, mutated, the node's own coming back, and raw bytes), demand
//! entries (well formed and raw), feed events for what the feed carries (only while the node
//! has a feed open), downstream clients connecting, subscribing, sending anything and leaving,
//! and shutdown.
//!
//! The driver follows the node's contract like the relay does: outputs drained after every
//! input, the feed passed only while open, a link that fails a request unanswered within the
//! lease's request timeout (the relay's `redis_timeout`). What must hold whatever the network
//! says: nothing panics; a handled deadline does not stay due without progress; at most one
//! feed is open and only while the node carries one; store requests go out only on a link that
//! is up and stay bounded in number; every publish carries the epoch of the node's last
//! leadership; downstream frames are JSON for live connections within their window; the feed
//! carries a bounded number of symbols and series.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tickwire_core::client::{
    BarEvent, BarsError, Config, Event, Mode, Quote, QuoteEvent, QuoteFields, SeriesId, Source,
    State, StateChange,
};
use tickwire_core::cluster::demand::DemandEntry;
use tickwire_core::cluster::{
    Keys, LeaseReply, Node, NodeConfig, NodeOutput, Publisher, Role, SnapshotWrite, StoreReply,
    StoreRequest, StoreState,
};
use tickwire_core::hub::{
    CloseReason, ConnId, FanoutOutput, HubConfig, UpstreamFeed, UpstreamPlan,
};
use tickwire_core::message::Bar;

const SYMBOLS: &[&str] = &[
    "X:A",
    "X:B",
    "X:C",
    "X:D",
    "X:E",
    "",
    "a b",
    "N\u{e9}:\u{1F600}",
];
const RELAY: &str = "fuzz-a";
const OTHERS: &[&str] = &[RELAY, "r1", "r2", ""];
const CAP: usize = 3;
const MAX_CONNECTIONS: usize = 3;
const WINDOW: usize = 2;
const LEADERS: usize = 3;
/// Requests outstanding besides publishes and snapshot reads: a lease request, a demand write,
/// a demand read, a demand removal, a prune, and some slack.
const OTHER_REQUESTS: usize = 6;

#[derive(Arbitrary, Debug)]
enum Demand {
    Entry {
        relay: u8,
        symbols: Vec<u8>,
        ttl_ms: u16,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum StreamMsg {
    Quote {
        symbol: u8,
        price: i16,
        volume: Option<u8>,
    },
    Bar {
        symbol: u8,
        time: u8,
        close: i16,
        closed: bool,
    },
    Status(u8),
    SymbolError(u8),
    SeriesError(u8),
    Snapshot(u8),
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Flip {
        at: u16,
        byte: u8,
    },
    Truncate(u16),
    Insert {
        at: u16,
        byte: u8,
    },
    /// The epoch field rewritten.
    Epoch(u16),
}

#[derive(Arbitrary, Debug)]
enum Snapshot {
    /// What the model store holds (the node's own publishes).
    Stored,
    /// A publisher's current snapshot of the symbol.
    FromLeader(u8),
    None,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum AnyReply {
    Lease(u8, u16),
    Done,
    Demand(Vec<Demand>),
    Published(bool),
    Snapshot { symbol: u8, text: Option<Vec<u8>> },
}

#[derive(Arbitrary, Debug)]
enum Op {
    // ----- time
    /// Jump to the node's deadline (if later) and handle it, as a driver's timer does.
    Timeout,
    /// Time passes; the driver may or may not wake the node then.
    Advance {
        ms: u16,
        wake: bool,
    },
    // ----- the store link
    StoreConnected,
    /// `handle_store_connected` when no link was asked for or one is up already.
    StoreConnectedStray,
    StoreFailed,
    /// The oldest outstanding request's answer, as the store would give it.
    Reply {
        choice: u8,
        value: u16,
        echo: bool,
        entries: Vec<Demand>,
        snapshot: Snapshot,
    },
    /// Any answer to the oldest request (or to none).
    WrongReply(AnyReply),
    /// A healthy store catches up: the link asked for opens, and every outstanding request
    /// (and those the answers and due deadlines bring) gets its fitting answer, own publishes
    /// coming back on the stream.
    Settle {
        choice: u8,
    },
    // ----- the stream and demand channels
    Stream {
        leader: u8,
        msg: StreamMsg,
        mutation: Option<Mutation>,
    },
    RawStream(Vec<u8>),
    /// A publisher takes a new epoch (a fresh one, or the same state restarted).
    NewEpoch {
        leader: u8,
        epoch: u8,
        fresh: bool,
    },
    Demand(Demand),
    /// A well-formed demand entry of another relay (or this one), its symbols as a bit mask.
    Want {
        relay: u8,
        mask: u8,
        ttl_ms: u16,
    },
    // ----- the upstream feed (ignored while none is open)
    FeedQuote {
        symbol: u8,
        any: bool,
        price: Option<i16>,
        volume: Option<u8>,
    },
    FeedBar {
        symbol: u8,
        stale: bool,
        time: u8,
        close: i16,
        closed: bool,
    },
    FeedQuoteError(u8),
    FeedSeriesError {
        symbol: u8,
        stale: bool,
    },
    FeedState(u8),
    FeedRefuseBars(bool),
    // ----- downstream
    Connect,
    Disconnect(u8, bool),
    Request {
        conn: u8,
        action: u8,
        symbols: Vec<u8>,
    },
    /// One symbol subscribed or unsubscribed.
    Subscribe {
        conn: u8,
        symbol: u8,
        unsubscribe: bool,
    },
    Text(u8, String),
    Written(u8, u8),
    Activity(u8),
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Schedule {
    max_publishes: u8,
    linger: bool,
    batched: bool,
    bars: bool,
    /// Symbols the feed has room for (`None`: any number).
    room: Option<u8>,
    ops: Vec<Op>,
}

/// The upstream feed as the `Client` behaves: it carries quotes and series and forgets what the
/// server rejected; misuse that would break a real client panics.
#[derive(Debug, Default)]
struct Feed {
    quotes: BTreeSet<Arc<str>>,
    room: Option<usize>,
    refuse_bars: bool,
    next_series: u64,
    series: BTreeMap<SeriesId, Arc<str>>,
}

impl UpstreamFeed for Feed {
    fn subscribe_quotes(&mut self, _: Instant, symbols: &[Arc<str>]) -> usize {
        let mut added = 0;
        for symbol in symbols {
            if symbol.is_empty() || self.quotes.contains(symbol) {
                continue;
            }
            if self.room.is_none_or(|room| self.quotes.len() < room) {
                self.quotes.insert(symbol.clone());
                added += 1;
            }
        }
        added
    }

    fn unsubscribe_quotes(&mut self, _: Instant, symbols: &[Arc<str>]) {
        for symbol in symbols {
            self.quotes.remove(symbol);
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
        assert_eq!((timeframe, history), ("1", 2), "an unplanned series");
        if self.refuse_bars {
            return Err(BarsError::TooMany(0));
        }
        self.next_series += 1;
        let series = SeriesId(self.next_series);
        self.series.insert(series, Arc::from(symbol));
        Ok(series)
    }

    fn unsubscribe_bars(&mut self, _: Instant, series: SeriesId) {
        // The client ignores a series it no longer has (it removed a refused one itself).
        self.series.remove(&series);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No link and none asked for.
    Idle,
    /// `ConnectStore` was output; the link has not answered.
    Opening,
    Up,
}

#[derive(Debug)]
struct Model {
    now: Instant,
    link: Link,
    /// Requests sent on the link and not answered, with when.
    outstanding: VecDeque<(Instant, StoreRequest)>,
    /// What the store holds of the node's own writes.
    snapshots: BTreeMap<Arc<str>, String>,
    own_demand: Option<String>,
    feed: Option<Feed>,
    room: Option<usize>,
    /// The epoch of the last `Role::Leader` seen.
    leader_epoch: Option<u64>,
    conns: BTreeMap<ConnId, usize>,
    closed: BTreeSet<ConnId>,
    shut_down: bool,
    max_publishes: usize,
    request_timeout: Duration,
}

fn symbol(index: u8) -> &'static str {
    SYMBOLS[usize::from(index) % SYMBOLS.len()]
}

fn pick<T: Copy>(set: impl ExactSizeIterator<Item = T>, index: u8) -> Option<T> {
    let mut set = set;
    let len = set.len();
    if len == 0 {
        return None;
    }
    set.nth(usize::from(index) % len)
}

fn demand_text(demand: &Demand) -> Vec<u8> {
    match demand {
        Demand::Entry {
            relay,
            symbols,
            ttl_ms,
        } => DemandEntry {
            relay: OTHERS[usize::from(*relay) % OTHERS.len()].to_owned(),
            symbols: symbols
                .iter()
                .take(8)
                .map(|index| symbol(*index).to_owned())
                .collect(),
            ttl: Duration::from_millis(u64::from(*ttl_ms)),
        }
        .render()
        .into_bytes(),
        Demand::Raw(bytes) => bytes.clone(),
    }
}

fn mutate(mut bytes: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    match *mutation {
        Mutation::Flip { at, byte } => {
            if !bytes.is_empty() {
                let at = usize::from(at) % bytes.len();
                bytes[at] ^= byte;
            }
        }
        Mutation::Truncate(at) => bytes.truncate(usize::from(at)),
        Mutation::Insert { at, byte } => {
            let at = usize::from(at) % (bytes.len() + 1);
            bytes.insert(at, byte);
        }
        Mutation::Epoch(epoch) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if let Some(start) = text.find("\"epoch\":") {
                let digits = start + "\"epoch\":".len();
                let end = text[digits..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(text.len(), |offset| digits + offset);
                bytes = format!("{}{epoch}{}", &text[..digits], &text[end..]).into_bytes();
            }
        }
    }
    bytes
}

fn lease_reply(kind: u8, value: u16) -> LeaseReply {
    match kind % 6 {
        0 => LeaseReply::Acquired {
            epoch: u64::from(value),
        },
        1 => LeaseReply::Held {
            remaining: (value % 2 == 0).then(|| Duration::from_millis(u64::from(value))),
        },
        2 => LeaseReply::Renewed,
        3 => LeaseReply::Lost,
        4 => LeaseReply::Released,
        _ => LeaseReply::Failed("fuzz".to_owned()),
    }
}

fn state(index: u8) -> State {
    State::ALL[usize::from(index) % State::ALL.len()]
}

fn request(action: u8, symbols: &[u8]) -> String {
    let names: Vec<&str> = symbols.iter().take(6).map(|index| symbol(*index)).collect();
    let action = ["subscribe", "unsubscribe", "ping", "other"][usize::from(action) % 4];
    serde_json::json!({"action": action, "symbols": names}).to_string()
}

impl Model {
    fn bound(&self) -> usize {
        self.max_publishes + CAP + OTHER_REQUESTS
    }

    /// Takes in what the node did to its link on its own (an answer that fit no request ends
    /// it): the relay then drops the link too.
    fn sync_link(&mut self, node: &Node) {
        match node.store_state() {
            StoreState::Down { .. } => {
                self.link = Link::Idle;
                self.outstanding.clear();
            }
            StoreState::Connecting => {
                assert_ne!(self.link, Link::Up, "a link up, the node connecting")
            }
            StoreState::Up => assert_eq!(self.link, Link::Up, "the node up without a link"),
        }
    }

    fn observe_role(&mut self, node: &Node) {
        if let Role::Leader { epoch } = node.role() {
            self.leader_epoch = Some(epoch);
        }
    }

    /// Drains the node, carrying out and checking every output; returns how many.
    fn drain(&mut self, node: &mut Node) -> usize {
        self.sync_link(node);
        self.observe_role(node);
        let now = self.now;
        let mut count = 0;
        loop {
            assert!(count < 100_000, "the node never stops producing outputs");
            let feed = self.feed.as_mut().map(|feed| feed as &mut dyn UpstreamFeed);
            let Some(output) = node.poll_output(now, feed) else {
                break;
            };
            count += 1;
            self.observe_role(node);
            match output {
                NodeOutput::Downstream(FanoutOutput::Transmit { conn, frame }) => {
                    assert!(
                        !self.closed.contains(&conn),
                        "{conn} sent to after its close"
                    );
                    let unwritten = self
                        .conns
                        .get_mut(&conn)
                        .unwrap_or_else(|| panic!("a frame for unknown {conn}"));
                    *unwritten += 1;
                    assert!(*unwritten <= WINDOW, "{conn}: {unwritten} frames unwritten");
                    let text = frame.as_str();
                    assert!(text.is_ascii(), "a frame that is not ASCII: {text}");
                    let value: serde_json::Value =
                        serde_json::from_str(text).unwrap_or_else(|error| {
                            panic!("a frame that is not JSON ({error}): {text}")
                        });
                    assert!(value["type"].is_string(), "an untyped frame: {text}");
                }
                NodeOutput::Downstream(FanoutOutput::Close { conn, .. }) => {
                    assert!(
                        self.conns.remove(&conn).is_some(),
                        "close of unknown {conn}"
                    );
                    self.closed.insert(conn);
                }
                NodeOutput::Store(request) => {
                    assert_eq!(self.link, Link::Up, "{request:?} with no link up");
                    assert_eq!(
                        node.store_state(),
                        StoreState::Up,
                        "{request:?} while not up"
                    );
                    if let StoreRequest::Publish { epoch, .. } = &request {
                        assert!(!self.shut_down, "a publish after shutdown: {request:?}");
                        assert_eq!(
                            Some(*epoch),
                            self.leader_epoch,
                            "a publish of another epoch than the last leadership's"
                        );
                    }
                    if let StoreRequest::WriteDemand { entry, .. } = &request {
                        self.own_demand = Some(entry.clone());
                    }
                    self.outstanding.push_back((now, request));
                    assert!(
                        self.outstanding.len() <= self.bound(),
                        "{} store requests outstanding (bound {}): {:?}",
                        self.outstanding.len(),
                        self.bound(),
                        self.outstanding
                            .iter()
                            .map(|(_, request)| kind(request))
                            .collect::<Vec<_>>()
                    );
                }
                NodeOutput::ConnectStore => {
                    assert!(!self.shut_down, "a store link asked for after shutdown");
                    assert_eq!(self.link, Link::Idle, "a second store link asked for");
                    self.link = Link::Opening;
                }
                NodeOutput::OpenUpstream => {
                    assert!(!self.shut_down, "a feed opened after shutdown");
                    assert!(self.feed.is_none(), "a second upstream feed opened");
                    self.feed = Some(Feed {
                        room: self.room,
                        ..Feed::default()
                    });
                }
                NodeOutput::CloseUpstream => {
                    assert!(self.feed.is_some(), "a feed closed that is not open");
                    self.feed = None;
                }
            }
        }
        self.check(node);
        count
    }

    fn check(&self, node: &Node) {
        assert_eq!(
            node.carries_upstream(),
            self.feed.is_some(),
            "the node carries a feed that is not open, or the other way round"
        );
        if let Some(feed) = &self.feed {
            assert!(
                feed.quotes.len() <= 2 * CAP,
                "the feed carries {} symbols: {:?}",
                feed.quotes.len(),
                feed.quotes
            );
            assert!(
                feed.series.len() <= 2 * CAP,
                "the feed holds {} series: {:?}",
                feed.series.len(),
                feed.series
            );
            let with_series: BTreeSet<&Arc<str>> = feed.series.values().collect();
            assert_eq!(
                with_series.len(),
                feed.series.len(),
                "two series of one symbol: {:?}",
                feed.series
            );
            assert!(node.carried_symbols().len() <= 2 * CAP);
        }
        assert!(node.fanout().hub().connection_count() <= MAX_CONNECTIONS);
        assert_eq!(node.fanout().hub().connection_count(), self.conns.len());
        for (conn, unwritten) in &self.conns {
            let backlog = node.fanout().backlog(*conn).expect("an open connection");
            assert_eq!(backlog.in_flight, *unwritten);
        }
    }

    /// The link fails a request that was not answered within the timeout, as the relay's does.
    fn expire_link(&mut self, node: &mut Node) {
        let overdue = self
            .outstanding
            .front()
            .is_some_and(|(sent, _)| self.now >= *sent + self.request_timeout);
        if overdue && self.link == Link::Up {
            node.handle_store_failed(self.now, "timed out");
            self.link = Link::Idle;
            self.outstanding.clear();
            self.drain(node);
        }
    }

    /// The answer that fits `request`.
    fn fitting(
        &mut self,
        request: &StoreRequest,
        choice: u8,
        value: u16,
        echo: bool,
        entries: &[Demand],
        snapshot: &Snapshot,
        leaders: &[Publisher],
    ) -> (StoreReply, Option<String>) {
        match request {
            StoreRequest::AcquireLease { floor, .. } => {
                let reply = match choice % 5 {
                    0 | 1 => LeaseReply::Acquired {
                        epoch: floor.saturating_add(1),
                    },
                    2 => LeaseReply::Acquired {
                        epoch: floor.saturating_add(1).saturating_add(u64::from(value % 4)),
                    },
                    3 => LeaseReply::Held {
                        remaining: (value % 3 != 0)
                            .then(|| Duration::from_millis(u64::from(value))),
                    },
                    _ => LeaseReply::Failed("fuzz".to_owned()),
                };
                (StoreReply::Lease(reply), None)
            }
            StoreRequest::RenewLease { .. } => {
                let reply = match choice % 4 {
                    0 | 1 => LeaseReply::Renewed,
                    2 => LeaseReply::Lost,
                    _ => LeaseReply::Failed("fuzz".to_owned()),
                };
                (StoreReply::Lease(reply), None)
            }
            StoreRequest::ReleaseLease { .. } => {
                let reply = if choice % 2 == 0 {
                    LeaseReply::Released
                } else {
                    LeaseReply::Lost
                };
                (StoreReply::Lease(reply), None)
            }
            StoreRequest::WriteDemand { .. }
            | StoreRequest::RemoveDemand { .. }
            | StoreRequest::PruneSnapshots { .. } => (StoreReply::Done, None),
            StoreRequest::ReadDemand => {
                let mut texts: Vec<String> = entries
                    .iter()
                    .take(4)
                    .map(|demand| String::from_utf8_lossy(&demand_text(demand)).into_owned())
                    .collect();
                if choice % 2 == 0
                    && let Some(own) = &self.own_demand
                {
                    texts.push(own.clone());
                }
                (StoreReply::Demand(texts), None)
            }
            StoreRequest::Publish {
                symbol,
                snapshot,
                message,
                ..
            } => {
                let accepted = choice % 4 != 3;
                if accepted && let Some(symbol) = symbol {
                    match snapshot {
                        SnapshotWrite::Keep => {}
                        SnapshotWrite::Set(text) => {
                            self.snapshots.insert(symbol.clone(), text.clone());
                        }
                        SnapshotWrite::Delete => {
                            self.snapshots.remove(symbol);
                        }
                    }
                }
                let echoed = message.clone().filter(|_| accepted && echo);
                (StoreReply::Published { accepted }, echoed)
            }
            StoreRequest::ReadSnapshot { symbol } => {
                let text = match snapshot {
                    Snapshot::Stored => self
                        .snapshots
                        .get(symbol)
                        .map(|text| text.clone().into_bytes()),
                    Snapshot::FromLeader(which) => leaders[usize::from(*which) % leaders.len()]
                        .snapshot_text(symbol)
                        .map(String::into_bytes),
                    Snapshot::None => None,
                    Snapshot::Raw(bytes) => Some(bytes.clone()),
                };
                (
                    StoreReply::Snapshot {
                        symbol: symbol.clone(),
                        text,
                    },
                    None,
                )
            }
        }
    }
}

fn kind(request: &StoreRequest) -> &'static str {
    match request {
        StoreRequest::AcquireLease { .. } => "acquire",
        StoreRequest::RenewLease { .. } => "renew",
        StoreRequest::ReleaseLease { .. } => "release",
        StoreRequest::WriteDemand { .. } => "write-demand",
        StoreRequest::RemoveDemand { .. } => "remove-demand",
        StoreRequest::ReadDemand => "read-demand",
        StoreRequest::Publish { .. } => "publish",
        StoreRequest::ReadSnapshot { .. } => "read-snapshot",
        StoreRequest::PruneSnapshots { .. } => "prune",
    }
}

fn any_reply(reply: &AnyReply) -> StoreReply {
    match reply {
        AnyReply::Lease(kind, value) => StoreReply::Lease(lease_reply(*kind, *value)),
        AnyReply::Done => StoreReply::Done,
        AnyReply::Demand(entries) => StoreReply::Demand(
            entries
                .iter()
                .take(4)
                .map(|demand| String::from_utf8_lossy(&demand_text(demand)).into_owned())
                .collect(),
        ),
        AnyReply::Published(accepted) => StoreReply::Published {
            accepted: *accepted,
        },
        AnyReply::Snapshot {
            symbol: index,
            text,
        } => StoreReply::Snapshot {
            symbol: Arc::from(symbol(*index)),
            text: text.clone(),
        },
    }
}

/// See [`Op::Settle`].
fn settle(node: &mut Node, model: &mut Model, choice: u8, leaders: &[Publisher]) {
    if model.link == Link::Opening {
        model.link = Link::Up;
        node.handle_store_connected(model.now);
        model.drain(node);
    }
    let now = model.now;
    let mut answered = 0;
    for _ in 0..4 {
        if node.poll_timeout().is_some_and(|due| due <= now) {
            node.handle_timeout(now);
            model.drain(node);
        }
        while answered < 64 {
            let Some((_, request)) = model.outstanding.pop_front() else {
                break;
            };
            answered += 1;
            let value = u16::from(choice) * 16;
            let (reply, echoed) = model.fitting(
                &request,
                choice,
                value,
                true,
                &[],
                &Snapshot::Stored,
                leaders,
            );
            node.handle_store_reply(now, reply);
            model.drain(node);
            if let Some(message) = echoed {
                node.handle_stream_message(now, message.as_bytes());
                model.drain(node);
            }
        }
    }
}

fn stream_message(leader: &mut Publisher, msg: &StreamMsg) -> Option<String> {
    match *msg {
        StreamMsg::Quote {
            symbol: index,
            price,
            volume,
        } => {
            let quote = Quote {
                last_price: Some(f64::from(price)),
                volume: volume.map(f64::from),
                ..Quote::new(Arc::from(symbol(index)))
            };
            leader.quote(&quote).map(|published| published.message)
        }
        StreamMsg::Bar {
            symbol: index,
            time,
            close,
            closed,
        } => {
            let bar = Bar {
                index: 0,
                time: f64::from(time) * 60.0,
                open: 1.0,
                high: f64::from(close).max(1.0),
                low: f64::from(close).min(1.0),
                close: f64::from(close),
                volume: None,
            };
            Some(
                leader
                    .bar(&Arc::from(symbol(index)), &Arc::from("1"), &bar, closed)
                    .message,
            )
        }
        StreamMsg::Status(index) => Some(leader.status(state(index))),
        StreamMsg::SymbolError(index) => Some(
            leader
                .symbol_error(&Arc::from(symbol(index)), "no_such_symbol")
                .message,
        ),
        StreamMsg::SeriesError(index) => Some(
            leader
                .series_error(&Arc::from(symbol(index)), "seconds_not_entitled")
                .message,
        ),
        StreamMsg::Snapshot(index) => leader
            .snapshot_message(symbol(index))
            .map(|published| published.message),
    }
}

fuzz_target!(|schedule: Schedule| {
    let start = Instant::now();
    let max_publishes = usize::from(schedule.max_publishes % 4) + 1;
    let mut config = NodeConfig::new(Keys::new("fz").unwrap(), RELAY);
    config.max_publishes_in_flight = max_publishes;
    let request_timeout = config.lease.request_timeout;
    let hub = HubConfig {
        max_connections: MAX_CONNECTIONS,
        max_subscriptions_per_connection: 3,
        max_upstream_symbols: CAP,
        max_message_bytes: 256,
        max_symbol_bytes: 16,
        messages_per_second: 5,
        message_burst: 5,
        queue_capacity: 4,
        send_window: WINDOW,
        slow_consumer_deadline: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(3),
        linger: if schedule.linger {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        },
        upstream_batch_delay: if schedule.batched {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        },
        whitelist: None,
        default_update_interval: None,
    };
    let plan = UpstreamPlan {
        bars: schedule.bars.then(|| "1".to_owned()),
        bar_history: 2,
    };
    let mut node = Node::new(config, hub, plan, &Config::default(), start).unwrap();
    let mut leaders: Vec<Publisher> = (1..=LEADERS as u64).map(Publisher::new).collect();
    let mut model = Model {
        now: start,
        link: Link::Idle,
        outstanding: VecDeque::new(),
        snapshots: BTreeMap::new(),
        own_demand: None,
        feed: None,
        room: schedule.room.map(|room| usize::from(room % 6)),
        leader_epoch: None,
        conns: BTreeMap::new(),
        closed: BTreeSet::new(),
        shut_down: false,
        max_publishes,
        request_timeout,
    };
    model.drain(&mut node);
    for op in schedule.ops.into_iter().take(400) {
        let now = model.now;
        match op {
            Op::Timeout => {
                let Some(due) = node.poll_timeout() else {
                    continue;
                };
                model.now = model.now.max(due);
                model.expire_link(&mut node);
                let now = model.now;
                let mut idle = 0;
                for _ in 0..64 {
                    node.handle_timeout(now);
                    if model.drain(&mut node) == 0 {
                        idle += 1;
                    } else {
                        idle = 0;
                    }
                    match node.poll_timeout() {
                        Some(next) if next <= now => assert!(
                            idle < 3,
                            "poll_timeout stays at {:?} (now {:?}) after handling it 3 times \
                             with no output",
                            next - start,
                            now - start
                        ),
                        _ => break,
                    }
                }
                assert!(
                    node.poll_timeout().is_none_or(|next| next > now),
                    "poll_timeout still due after 64 timeouts at {:?}",
                    now - start
                );
                continue;
            }
            Op::Advance { ms, wake } => {
                model.now += Duration::from_millis(u64::from(ms));
                model.expire_link(&mut node);
                if wake {
                    node.handle_timeout(model.now);
                } else {
                    continue;
                }
            }
            Op::StoreConnected => {
                if model.link != Link::Opening {
                    continue;
                }
                model.link = Link::Up;
                node.handle_store_connected(now);
            }
            Op::StoreConnectedStray => {
                if model.link == Link::Opening {
                    continue;
                }
                node.handle_store_connected(now);
            }
            Op::StoreFailed => {
                if model.link == Link::Idle {
                    // Nothing asked or open: a late report of an earlier link, which the relay
                    // drops (it retired that link).
                    continue;
                }
                model.link = Link::Idle;
                model.outstanding.clear();
                node.handle_store_failed(now, "fuzz");
            }
            Op::Reply {
                choice,
                value,
                echo,
                entries,
                snapshot,
            } => {
                let Some((_, request)) = model.outstanding.pop_front() else {
                    continue;
                };
                let (reply, echoed) =
                    model.fitting(&request, choice, value, echo, &entries, &snapshot, &leaders);
                node.handle_store_reply(now, reply);
                if let Some(message) = echoed {
                    model.drain(&mut node);
                    node.handle_stream_message(now, message.as_bytes());
                }
            }
            Op::WrongReply(reply) => {
                if model.link != Link::Up {
                    continue;
                }
                model.outstanding.pop_front();
                node.handle_store_reply(now, any_reply(&reply));
            }
            Op::Settle { choice } => {
                settle(&mut node, &mut model, choice, &leaders);
                continue;
            }
            Op::Stream {
                leader,
                msg,
                mutation,
            } => {
                let publisher = &mut leaders[usize::from(leader) % LEADERS];
                let Some(message) = stream_message(publisher, &msg) else {
                    continue;
                };
                let bytes = match &mutation {
                    Some(mutation) => mutate(message.into_bytes(), mutation),
                    None => message.into_bytes(),
                };
                node.handle_stream_message(now, &bytes);
            }
            Op::RawStream(bytes) => node.handle_stream_message(now, &bytes),
            Op::NewEpoch {
                leader,
                epoch,
                fresh,
            } => {
                let publisher = &mut leaders[usize::from(leader) % LEADERS];
                if fresh {
                    *publisher = Publisher::new(u64::from(epoch));
                } else {
                    publisher.restart(u64::from(epoch));
                }
                continue;
            }
            Op::Demand(demand) => node.handle_demand_message(now, &demand_text(&demand)),
            Op::Want {
                relay,
                mask,
                ttl_ms,
            } => {
                let entry = DemandEntry {
                    relay: OTHERS[usize::from(relay) % OTHERS.len()].to_owned(),
                    symbols: (0..8u8)
                        .filter(|bit| mask & (1 << bit) != 0)
                        .map(|bit| symbol(bit).to_owned())
                        .collect(),
                    ttl: Duration::from_millis(u64::from(ttl_ms)),
                };
                node.handle_demand_message(now, entry.render().as_bytes());
            }
            Op::FeedQuote {
                symbol: index,
                any,
                price,
                volume,
            } => {
                let Some(feed) = &model.feed else { continue };
                let name: Arc<str> = if any {
                    Arc::from(symbol(index))
                } else {
                    match pick(feed.quotes.iter(), index) {
                        Some(name) => name.clone(),
                        None => continue,
                    }
                };
                let quote = Quote {
                    last_price: price.map(f64::from),
                    volume: volume.map(f64::from),
                    ..Quote::new(name)
                };
                let event = Event::Quote(QuoteEvent {
                    quote,
                    changed: QuoteFields::NONE,
                    source: Source::Stream,
                });
                node.handle_feed_event(now, &event);
            }
            Op::FeedBar {
                symbol: index,
                stale,
                time,
                close,
                closed,
            } => {
                let Some(feed) = &model.feed else { continue };
                let held =
                    pick(feed.series.iter(), index).map(|(series, name)| (*series, name.clone()));
                let (series, name) = match held {
                    Some((series, name)) if !stale => (series, name),
                    _ => (
                        SeriesId(feed.next_series + 1_000 + u64::from(time)),
                        Arc::from(symbol(index)),
                    ),
                };
                let bar = Bar {
                    index: 0,
                    time: f64::from(time) * 60.0,
                    open: 1.0,
                    high: f64::from(close).max(1.0),
                    low: f64::from(close).min(1.0),
                    close: f64::from(close),
                    volume: None,
                };
                let event = Event::Bar(BarEvent {
                    series,
                    symbol: name,
                    timeframe: Arc::from("1"),
                    bar,
                    closed,
                });
                node.handle_feed_event(now, &event);
            }
            Op::FeedQuoteError(index) => {
                let Some(feed) = &mut model.feed else {
                    continue;
                };
                // The client rejects only what it carries, and forgets it first.
                let Some(name) = pick(feed.quotes.iter(), index).cloned() else {
                    continue;
                };
                feed.quotes.remove(&name);
                let event = Event::QuoteError {
                    symbol: name,
                    reason: "no_such_symbol".to_owned(),
                };
                node.handle_feed_event(now, &event);
            }
            Op::FeedSeriesError {
                symbol: index,
                stale,
            } => {
                let Some(feed) = &mut model.feed else {
                    continue;
                };
                let held =
                    pick(feed.series.iter(), index).map(|(series, name)| (*series, name.clone()));
                let (series, name) = match held {
                    // The client removes a refused series before it reports it.
                    Some((series, name)) if !stale => {
                        feed.series.remove(&series);
                        (series, name)
                    }
                    _ => (SeriesId(feed.next_series + 5_000), Arc::from(symbol(index))),
                };
                let event = Event::SeriesError {
                    series,
                    symbol: name,
                    reason: "seconds_not_entitled".to_owned(),
                };
                node.handle_feed_event(now, &event);
            }
            Op::FeedState(index) => {
                if model.feed.is_none() {
                    continue;
                }
                let change = StateChange {
                    state: state(index),
                    mode: Mode::Streaming,
                    cause: None,
                    consecutive_failures: 0,
                    next_attempt: None,
                };
                node.handle_feed_event(now, &Event::State(change));
            }
            Op::FeedRefuseBars(refuse) => {
                if let Some(feed) = &mut model.feed {
                    feed.refuse_bars = refuse;
                }
                continue;
            }
            Op::Connect => match node.connect(now) {
                Ok(conn) => {
                    assert!(!model.shut_down, "{conn} accepted after shutdown");
                    assert!(model.conns.insert(conn, 0).is_none(), "{conn} reused");
                }
                Err(refused) => assert!(refused.frame.as_str().is_ascii()),
            },
            Op::Disconnect(index, failed) => {
                let Some(conn) = pick(model.conns.keys(), index).copied() else {
                    continue;
                };
                let reason = if failed {
                    CloseReason::SocketError
                } else {
                    CloseReason::ClientClosed
                };
                node.disconnect(now, conn, reason);
                model.conns.remove(&conn);
                model.closed.insert(conn);
            }
            Op::Request {
                conn,
                action,
                symbols,
            } => {
                let Some(conn) = pick(model.conns.keys(), conn).copied() else {
                    continue;
                };
                node.handle_text(now, conn, &request(action, &symbols));
            }
            Op::Subscribe {
                conn,
                symbol: index,
                unsubscribe,
            } => {
                let Some(conn) = pick(model.conns.keys(), conn).copied() else {
                    continue;
                };
                let action = if unsubscribe { 1 } else { 0 };
                node.handle_text(now, conn, &request(action, &[index]));
            }
            Op::Text(conn, text) => {
                let Some(conn) = pick(model.conns.keys(), conn).copied() else {
                    continue;
                };
                node.handle_text(now, conn, &text);
            }
            Op::Written(conn, count) => {
                let Some(conn) = pick(model.conns.keys(), conn).copied() else {
                    continue;
                };
                let unwritten = model.conns.get_mut(&conn).expect("a picked connection");
                let count = usize::from(count).min(*unwritten);
                *unwritten -= count;
                node.handle_written(now, conn, count);
            }
            Op::Activity(conn) => {
                let Some(conn) = pick(model.conns.keys(), conn).copied() else {
                    continue;
                };
                node.handle_activity(now, conn);
            }
            Op::Shutdown => {
                if model.shut_down {
                    // The relay shuts its node down once (each call would remove its demand
                    // again).
                    continue;
                }
                node.shutdown(now);
                model.drain(&mut node);
                assert!(model.feed.is_none(), "a feed open after shutdown");
                assert!(model.conns.is_empty(), "a connection open after shutdown");
                model.shut_down = true;
                continue;
            }
        }
        model.drain(&mut node);
    }
});

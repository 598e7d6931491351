//! The relay's upstream composition driven by an arbitrary schedule: a `Fanout` (the hub
//! inside) over a recording upstream feed that behaves like the `Client` (it forgets rejected
//! quotes and refused series, and may have no room or refuse bar series). Connections arrive
//! and leave, send well-formed requests, raw text and binary frames, report written batches;
//! upstream events arrive (quotes, bars of the held series and of stale ones, quote and series
//! rejections, state changes); time steps and shutdown. After every step it checks what must
//! hold whatever clients and upstream do: every frame is ASCII JSON for a live connection, the
//! status comes first, quotes and bars only for symbols whose snapshot came and were not left
//! or rejected since, no connection has more than its window unwritten, nothing is sent after a
//! close or a shutdown, upstream subscribes and unsubscribes alternate per symbol and (once any
//! batch delay and linger have passed) are exactly the subscribed symbols, with at most one bar
//! series per symbol, and one for each subscribed symbol whose series was not refused; stale
//! bars reach nobody; limits hold; and the next deadline is never in the past.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tickwire_core::client::{
    BarEvent, BarsError, Config, Event, Mode, Quote, QuoteEvent, QuoteFields, SeriesId, Source,
    State, StateChange,
};
use tickwire_core::hub::{
    CloseReason, ConnId, Fanout, FanoutOutput, HubConfig, UpstreamFeed, UpstreamPlan,
};
use tickwire_core::message::Bar;

const SYMBOLS: &[&str] = &[
    "A:X",
    "B:Y",
    "C:Z",
    "D:W",
    "E:V",
    "",
    "bad symbol",
    "N\u{e9}:\u{1F600}",
];
const STATES: [State; 6] = State::ALL;
const MAX_CONNECTIONS: usize = 4;
const WINDOW: usize = 2;
const LINGER: Duration = Duration::from_millis(500);
const BATCH: Duration = Duration::from_millis(50);

#[derive(Arbitrary, Debug)]
enum Op {
    Connect,
    Disconnect(u8, bool),
    Request {
        conn: u8,
        action: u8,
        symbols: Vec<u8>,
    },
    Text(u8, String),
    Binary(u8, u16),
    Activity(u8),
    Written(u8, u8),
    Quote {
        symbol: u8,
        price: Option<i16>,
        volume: Option<u8>,
        extra: Option<u8>,
    },
    Bar {
        symbol: u8,
        stale: bool,
        time: u8,
        close: i16,
        closed: bool,
    },
    /// Upstream rejects the quotes of a symbol it carries (`no_such_symbol`).
    QuoteError(u8),
    /// Upstream refuses the held series of a symbol, or a stale one.
    SeriesError(u8, bool),
    /// The feed starts or stops refusing new bar series.
    RefuseBars(bool),
    Upstream(u8),
    Advance(u16),
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Schedule {
    linger: bool,
    batched: bool,
    bars: bool,
    /// Symbols the feed has room for (`None`: any number).
    room: Option<u8>,
    ops: Vec<Op>,
}

/// The upstream feed as the `Client` behaves: it carries quotes and series, forgets what the
/// server rejected, and reports every misuse by the fanout as a panic.
#[derive(Default)]
struct Feed {
    quotes: BTreeSet<Arc<str>>,
    room: Option<usize>,
    refuse_bars: bool,
    next_series: u64,
    series: BTreeMap<SeriesId, Arc<str>>,
}

impl UpstreamFeed for Feed {
    fn subscribe_quotes(&mut self, _: Instant, symbols: &[Arc<str>]) -> usize {
        assert!(!symbols.is_empty(), "an empty upstream batch");
        let mut added = 0;
        for symbol in symbols {
            assert!(!self.quotes.contains(symbol), "{symbol} subscribed twice");
            if self.room.is_none_or(|room| self.quotes.len() < room) {
                self.quotes.insert(symbol.clone());
                added += 1;
            }
        }
        added
    }

    fn unsubscribe_quotes(&mut self, _: Instant, symbols: &[Arc<str>]) {
        assert!(!symbols.is_empty(), "an empty upstream batch");
        for symbol in symbols {
            assert!(
                self.quotes.remove(symbol),
                "{symbol} unsubscribed, never subscribed"
            );
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
        assert_eq!((timeframe, history), ("1", 2));
        assert!(
            self.quotes.contains(symbol),
            "bars of {symbol} without quotes"
        );
        assert!(
            self.series.values().all(|held| held.as_ref() != symbol),
            "a second series of {symbol}"
        );
        if self.refuse_bars {
            return Err(BarsError::TooMany(0));
        }
        self.next_series += 1;
        let series = SeriesId(self.next_series);
        self.series.insert(series, Arc::from(symbol));
        Ok(series)
    }

    fn unsubscribe_bars(&mut self, _: Instant, series: SeriesId) {
        assert!(
            self.series.remove(&series).is_some(),
            "{series:?} closed twice or never opened"
        );
    }
}

#[derive(Default)]
struct Conn {
    /// Frames handed over and not yet reported written.
    unwritten: usize,
    got_status: bool,
    /// Symbols whose snapshot came and that were not left or rejected since.
    open: BTreeSet<String>,
}

#[derive(Default)]
struct Model {
    conns: BTreeMap<ConnId, Conn>,
    closed: BTreeSet<ConnId>,
    shut_down: bool,
    /// Symbols whose series was refused since they were last subscribed upstream.
    refused: BTreeSet<Arc<str>>,
}

fn pick(conns: &BTreeMap<ConnId, Conn>, index: u8) -> Option<ConnId> {
    if conns.is_empty() {
        return None;
    }
    conns.keys().nth(usize::from(index) % conns.len()).copied()
}

fn symbol(index: u8) -> &'static str {
    SYMBOLS[usize::from(index) % SYMBOLS.len()]
}

fn request(action: u8, symbols: &[u8]) -> String {
    let names: Vec<&str> = symbols.iter().map(|index| symbol(*index)).collect();
    let action = ["subscribe", "unsubscribe", "ping", "other"][usize::from(action) % 4];
    serde_json::json!({"action": action, "symbols": names}).to_string()
}

fuzz_target!(|schedule: Schedule| {
    let config = HubConfig {
        max_connections: MAX_CONNECTIONS,
        max_subscriptions_per_connection: 3,
        max_upstream_symbols: 4,
        max_message_bytes: 256,
        max_symbol_bytes: 16,
        messages_per_second: 5,
        message_burst: 5,
        queue_capacity: 4,
        send_window: WINDOW,
        slow_consumer_deadline: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(3),
        linger: if schedule.linger {
            LINGER
        } else {
            Duration::ZERO
        },
        upstream_batch_delay: if schedule.batched {
            BATCH
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
    let mut fanout = Fanout::new(config, plan, &Config::default()).unwrap();
    let mut feed = Feed {
        room: schedule.room.map(|room| usize::from(room % 6)),
        ..Feed::default()
    };
    let mut now = Instant::now();
    let mut model = Model::default();
    // Whether the batch delay and the linger have passed by the end of every step: they have
    // when they are zero.
    let passed = (!schedule.batched, !schedule.linger);
    for op in schedule.ops.into_iter().take(400) {
        let mut silent = false;
        match op {
            Op::Connect => match fanout.connect(now) {
                Ok(conn) => {
                    assert!(!model.shut_down, "{conn} accepted after shutdown");
                    assert!(
                        model.conns.insert(conn, Conn::default()).is_none(),
                        "{conn} reused"
                    );
                }
                Err(refused) => assert!(refused.frame.as_str().is_ascii()),
            },
            Op::Disconnect(index, failed) => {
                if let Some(conn) = pick(&model.conns, index) {
                    let reason = if failed {
                        CloseReason::SocketError
                    } else {
                        CloseReason::ClientClosed
                    };
                    fanout.disconnect(now, conn, reason);
                    model.conns.remove(&conn);
                    model.closed.insert(conn);
                }
            }
            Op::Request {
                conn,
                action,
                symbols,
            } => {
                if let Some(conn) = pick(&model.conns, conn) {
                    fanout.handle_text(now, conn, &request(action, &symbols));
                }
            }
            Op::Text(conn, text) => {
                if let Some(conn) = pick(&model.conns, conn) {
                    fanout.handle_text(now, conn, &text);
                }
            }
            Op::Binary(conn, bytes) => {
                if let Some(conn) = pick(&model.conns, conn) {
                    fanout.handle_binary(now, conn, usize::from(bytes));
                }
            }
            Op::Activity(conn) => {
                if let Some(conn) = pick(&model.conns, conn) {
                    fanout.handle_activity(now, conn);
                }
            }
            Op::Written(conn, count) => {
                if let Some(conn) = pick(&model.conns, conn) {
                    let unwritten = &mut model.conns.get_mut(&conn).unwrap().unwritten;
                    let count = usize::from(count).min(*unwritten);
                    *unwritten -= count;
                    fanout.handle_written(now, conn, count);
                }
            }
            Op::Quote {
                symbol: index,
                price,
                volume,
                extra,
            } => {
                let mut quote = Quote::new(Arc::from(symbol(index)));
                quote.last_price = price.map(f64::from);
                quote.volume = volume.map(f64::from);
                if let Some(extra) = extra {
                    Arc::make_mut(&mut quote.other)
                        .insert("x".into(), serde_json::Value::from(extra));
                }
                let event = Event::Quote(QuoteEvent {
                    quote,
                    changed: QuoteFields::NONE,
                    source: Source::Stream,
                });
                fanout.handle_event(now, &event);
            }
            Op::Bar {
                symbol: index,
                stale,
                time,
                close,
                closed,
            } => {
                let name = symbol(index);
                let held = fanout.series_of(name);
                let series = match held {
                    Some(series) if !stale => series,
                    // A series the fanout closed, or never opened.
                    _ => SeriesId(feed.next_series + 1_000 + u64::from(time)),
                };
                silent = held != Some(series);
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
                    symbol: Arc::from(name),
                    timeframe: Arc::from("1"),
                    bar,
                    closed,
                });
                let stale_before = fanout.counters().stale_bars;
                fanout.handle_event(now, &event);
                assert_eq!(
                    fanout.counters().stale_bars,
                    stale_before + u64::from(silent),
                    "a stale bar not counted as one, or a held one counted"
                );
            }
            Op::QuoteError(index) => {
                let name = symbol(index);
                // The client rejects only what it carries, and forgets it first.
                if feed.quotes.remove(name) {
                    let event = Event::QuoteError {
                        symbol: Arc::from(name),
                        reason: "no_such_symbol".to_owned(),
                    };
                    fanout.handle_event(now, &event);
                }
            }
            Op::SeriesError(index, stale) => {
                let name = symbol(index);
                let held = fanout.series_of(name).filter(|_| !stale);
                let series = match held {
                    // The client removes a refused series before it reports it.
                    Some(series) => {
                        assert!(feed.series.remove(&series).is_some(), "{series:?} not open");
                        model.refused.insert(Arc::from(name));
                        series
                    }
                    None => SeriesId(feed.next_series + 5_000),
                };
                silent = held.is_none();
                let event = Event::SeriesError {
                    series,
                    symbol: Arc::from(name),
                    reason: "seconds_not_entitled".to_owned(),
                };
                fanout.handle_event(now, &event);
            }
            Op::RefuseBars(refuse) => feed.refuse_bars = refuse,
            Op::Upstream(state) => {
                let change = StateChange {
                    state: STATES[usize::from(state) % STATES.len()],
                    mode: Mode::Streaming,
                    cause: None,
                    consecutive_failures: 0,
                    next_attempt: None,
                };
                fanout.handle_event(now, &Event::State(change));
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms));
            }
            Op::Shutdown => {
                fanout.shutdown(now);
                let frames = settle(&mut fanout, &mut feed, &mut model, now, passed);
                assert_eq!(frames, 0, "frames sent at shutdown");
                assert!(model.conns.is_empty(), "open after shutdown");
                model.shut_down = true;
            }
        }
        fanout.handle_timeout(now);
        let frames = settle(&mut fanout, &mut feed, &mut model, now, passed);
        if silent {
            assert_eq!(
                frames, 0,
                "a stale bar or series error reached a connection"
            );
        }
    }
    // Everyone still connected reads everything and stays alive; past the linger and the batch
    // delay (a linger expiry then starts one more batch), the upstream carries exactly what is
    // subscribed.
    for _ in 0..3 {
        loop {
            let unwritten: Vec<(ConnId, usize)> = model
                .conns
                .iter()
                .map(|(conn, state)| (*conn, state.unwritten))
                .collect();
            if unwritten.iter().all(|(_, count)| *count == 0) {
                break;
            }
            for (conn, count) in unwritten {
                model.conns.get_mut(&conn).unwrap().unwritten = 0;
                fanout.handle_written(now, conn, count);
            }
            settle(&mut fanout, &mut feed, &mut model, now, passed);
        }
        now += LINGER + BATCH + Duration::from_millis(200);
        for conn in model.conns.keys() {
            fanout.handle_activity(now, *conn);
        }
        fanout.handle_timeout(now);
        settle(&mut fanout, &mut feed, &mut model, now, passed);
    }
    settle(&mut fanout, &mut feed, &mut model, now, (true, true));
});

/// Drains the fanout into the model and checks every invariant. Once the batch delay has
/// passed, every symbol the hub holds is carried upstream; once the linger has passed too, the
/// upstream carries exactly the subscribed symbols and their series. Returns how many frames
/// were sent.
fn settle(
    fanout: &mut Fanout,
    feed: &mut Feed,
    model: &mut Model,
    now: Instant,
    (batch_passed, linger_passed): (bool, bool),
) -> usize {
    let mut frames = 0;
    let carried_before = feed.quotes.clone();
    while let Some(output) = fanout.poll_output(now, feed) {
        match output {
            FanoutOutput::Transmit { conn, frame } => {
                frames += 1;
                assert!(!model.shut_down, "{conn} sent to after shutdown");
                assert!(!model.closed.contains(&conn), "{conn} sent to after close");
                let state = model
                    .conns
                    .get_mut(&conn)
                    .expect("frame for an unknown connection");
                state.unwritten += 1;
                assert!(
                    state.unwritten <= WINDOW,
                    "{conn}: {} frames unwritten",
                    state.unwritten
                );
                assert!(frame.as_str().is_ascii());
                assert!(
                    frame.as_str().len() < 4096,
                    "frame of {} bytes",
                    frame.as_str().len()
                );
                let value: serde_json::Value =
                    serde_json::from_str(frame.as_str()).expect("frame is JSON");
                let kind = value["type"].as_str().expect("a typed frame");
                let symbol = value["symbol"].as_str().map(str::to_owned);
                if !state.got_status {
                    assert_eq!(kind, "status", "{conn}: the first frame is the status");
                    state.got_status = true;
                }
                match (kind, symbol) {
                    ("snapshot", Some(symbol)) => {
                        state.open.insert(symbol);
                    }
                    ("quote" | "bar", Some(symbol)) => assert!(
                        state.open.contains(&symbol),
                        "{conn}: {kind} of {symbol} without its snapshot or after it left"
                    ),
                    ("unsubscribed", Some(symbol)) => {
                        state.open.remove(&symbol);
                    }
                    ("error", Some(symbol)) => {
                        let code = value["code"].as_str().unwrap_or_default();
                        if code == "UNKNOWN_SYMBOL" || code == "UPSTREAM_LIMIT" {
                            state.open.remove(&symbol);
                        }
                        if code == "BARS_UNAVAILABLE" {
                            assert!(fanout.timeframe().is_some(), "bars refused, none planned");
                        }
                    }
                    (_, _) => {}
                }
            }
            FanoutOutput::Close { conn, .. } => {
                assert!(
                    model.conns.remove(&conn).is_some(),
                    "close of an unknown {conn}"
                );
                model.closed.insert(conn);
            }
        }
    }
    // A symbol that left the feed gets a fresh series when it comes back.
    model.refused.retain(|symbol| feed.quotes.contains(symbol));
    for symbol in carried_before.difference(&feed.quotes) {
        model.refused.remove(symbol);
    }
    if feed.refuse_bars {
        // What the feed refused while it refused is refused for good (until it leaves).
        for symbol in &feed.quotes {
            if fanout.series_of(symbol).is_none() {
                model.refused.insert(symbol.clone());
            }
        }
    }
    assert!(fanout.hub().connection_count() <= MAX_CONNECTIONS);
    assert_eq!(fanout.hub().connection_count(), model.conns.len());
    assert!(
        fanout.poll_timeout().is_none_or(|due| due > now),
        "a deadline in the past"
    );
    let mut subscriptions = 0;
    for (conn, state) in &model.conns {
        let held = fanout.hub().subscriptions(*conn).count();
        assert!(held <= 3);
        subscriptions += held;
        let backlog = fanout.backlog(*conn).expect("an open connection");
        assert_eq!(backlog.in_flight, state.unwritten);
        assert!(backlog.queued + backlog.in_flight <= 4 + 64);
    }
    let mut counted = 0;
    let mut wanted = BTreeSet::new();
    for (symbol, subscribers, upstream) in fanout.hub().symbols() {
        counted += subscribers;
        assert!(upstream);
        if subscribers > 0 {
            wanted.insert(symbol.clone());
        }
        if batch_passed {
            assert!(
                feed.quotes.contains(symbol),
                "{symbol} wanted, not upstream"
            );
        }
    }
    assert_eq!(counted, subscriptions);
    assert!(feed.quotes.len() <= 4);
    // The fanout's series are the feed's: one per symbol, each with its quotes.
    assert_eq!(fanout.series_count(), feed.series.len());
    for (series, symbol) in &feed.series {
        assert_eq!(
            fanout.series_of(symbol),
            Some(*series),
            "{series:?} of {symbol}"
        );
        assert!(
            feed.quotes.contains(symbol),
            "a series of {symbol} without quotes"
        );
    }
    if batch_passed && linger_passed {
        assert_eq!(
            feed.quotes, wanted,
            "upstream carries other than the wanted symbols"
        );
        if fanout.timeframe().is_some() {
            let with_series: BTreeSet<Arc<str>> = feed.series.values().cloned().collect();
            let expected: BTreeSet<Arc<str>> = wanted.difference(&model.refused).cloned().collect();
            assert_eq!(
                with_series, expected,
                "series other than one per wanted symbol"
            );
        } else {
            assert!(feed.series.is_empty(), "series without a bar plan");
        }
    }
    frames
}

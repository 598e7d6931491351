use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// A hub, a clock, and everything each connection was sent.
struct Harness {
    hub: Hub,
    now: Instant,
    received: BTreeMap<ConnId, Vec<Value>>,
    /// The same frames as sent, for checking bytes (key order); see [`Harness::texts`].
    texts: BTreeMap<ConnId, Vec<String>>,
    /// Frames handed to each connection's socket and not yet reported written.
    unwritten: BTreeMap<ConnId, usize>,
    /// Connections whose socket writes everything at once.
    reading: BTreeSet<ConnId>,
    upstream: BTreeSet<Arc<str>>,
    upstream_log: Vec<HubOutput>,
    closed: BTreeMap<ConnId, CloseReason>,
}

impl Harness {
    fn new(config: HubConfig) -> Harness {
        Harness {
            hub: Hub::new(config).unwrap(),
            now: Instant::now(),
            received: BTreeMap::new(),
            texts: BTreeMap::new(),
            unwritten: BTreeMap::new(),
            reading: BTreeSet::new(),
            upstream: BTreeSet::new(),
            upstream_log: Vec::new(),
            closed: BTreeMap::new(),
        }
    }

    fn connect(&mut self) -> ConnId {
        let conn = self.hub.connect(self.now).unwrap();
        self.reading.insert(conn);
        self.drain();
        conn
    }

    /// Collects outputs; reading connections write (and report) everything at once.
    fn drain(&mut self) {
        loop {
            while let Some(output) = self.hub.poll_output() {
                match output {
                    HubOutput::Transmit { conn, frame } => {
                        assert!(!self.closed.contains_key(&conn), "{conn} sent after close");
                        let value: Value = serde_json::from_str(frame.as_str())
                            .unwrap_or_else(|error| panic!("{error}: {}", frame.as_str()));
                        self.received.entry(conn).or_default().push(value);
                        let text = frame.as_str().to_owned();
                        self.texts.entry(conn).or_default().push(text);
                        *self.unwritten.entry(conn).or_default() += 1;
                    }
                    HubOutput::Close { conn, reason } => {
                        self.closed.insert(conn, reason);
                        self.unwritten.remove(&conn);
                    }
                    HubOutput::SubscribeUpstream(symbols) => {
                        assert!(!symbols.is_empty());
                        for symbol in &symbols {
                            assert!(self.upstream.insert(symbol.clone()), "{symbol} twice");
                        }
                        self.upstream_log
                            .push(HubOutput::SubscribeUpstream(symbols));
                    }
                    HubOutput::UnsubscribeUpstream(symbols) => {
                        assert!(!symbols.is_empty());
                        for symbol in &symbols {
                            assert!(self.upstream.remove(symbol), "{symbol} not subscribed");
                        }
                        self.upstream_log
                            .push(HubOutput::UnsubscribeUpstream(symbols));
                    }
                }
            }
            let ready: Vec<(ConnId, usize)> = self
                .unwritten
                .iter()
                .filter(|(conn, count)| **count > 0 && self.reading.contains(conn))
                .map(|(conn, count)| (*conn, *count))
                .collect();
            if ready.is_empty() {
                return;
            }
            for (conn, count) in ready {
                self.unwritten.insert(conn, 0);
                self.hub.handle_written(self.now, conn, count);
            }
        }
    }

    fn send(&mut self, conn: ConnId, text: &str) {
        self.hub.handle_text(self.now, conn, text);
        self.drain();
    }

    fn subscribe(&mut self, conn: ConnId, symbols: &[&str]) {
        self.send(
            conn,
            &json!({"action": "subscribe", "symbols": symbols}).to_string(),
        );
    }

    /// Subscribes with `"update_interval": seconds`.
    fn subscribe_every(&mut self, conn: ConnId, symbols: &[&str], seconds: f64) {
        self.send(
            conn,
            &json!({"action": "subscribe", "symbols": symbols, "update_interval": seconds})
                .to_string(),
        );
    }

    /// The prices of `symbol` in the data messages `conn` was sent, with their types (everything
    /// else `conn` was sent is taken too).
    fn prices(&mut self, conn: ConnId, symbol: &str) -> Vec<(String, Option<f64>)> {
        self.take(conn)
            .iter()
            .filter(|value| value["symbol"] == symbol)
            .map(|value| {
                let kind = value["type"].as_str().unwrap().to_owned();
                let price = match kind.as_str() {
                    "snapshot" => value["quote"]["lp"].as_f64(),
                    _ => value["data"]["lp"].as_f64(),
                };
                (kind, price)
            })
            .collect()
    }

    /// Internal consistency of the pacing state: one timer per held paced subscription of a
    /// live subscriber, nothing else, and the earliest of them is a deadline the hub reports.
    fn check_pacing(&self) {
        let mut held = BTreeSet::new();
        for (symbol, state) in &self.hub.symbols {
            for (conn, pace) in &state.paced {
                assert!(
                    state.subscribers.contains(conn),
                    "{conn} paced on {symbol}, not subscribed"
                );
                assert!(self.hub.connections[conn].symbols.contains(symbol));
                if pace.held {
                    held.insert((pace.next_allowed, *conn, symbol.clone()));
                }
            }
        }
        assert_eq!(
            held, self.hub.pace_timers,
            "timers match held subscriptions"
        );
        if let Some((due, _, _)) = self.hub.pace_timers.first() {
            assert!(self.hub.poll_timeout().is_some_and(|next| next <= *due));
        }
    }

    fn quote(&mut self, symbol: &str, price: f64) {
        let quote = Quote {
            last_price: Some(price),
            ..Quote::new(Arc::from(symbol))
        };
        self.hub.handle_quote(self.now, &quote);
        self.drain();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.hub.handle_timeout(self.now);
        self.drain();
    }

    fn take(&mut self, conn: ConnId) -> Vec<Value> {
        std::mem::take(self.received.entry(conn).or_default())
    }

    /// The exact text of every frame `conn` was sent since the last call (independent of
    /// [`Harness::take`]).
    fn texts(&mut self, conn: ConnId) -> Vec<String> {
        std::mem::take(self.texts.entry(conn).or_default())
    }

    fn types(&mut self, conn: ConnId) -> Vec<String> {
        self.take(conn)
            .iter()
            .map(|value| value["type"].as_str().unwrap().to_owned())
            .collect()
    }

    fn errors(&mut self, conn: ConnId) -> Vec<String> {
        self.take(conn)
            .iter()
            .filter(|value| value["type"] == "error")
            .map(|value| value["code"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn config() -> HubConfig {
    HubConfig {
        linger: 5 * SECOND,
        upstream_batch_delay: Duration::ZERO,
        ..HubConfig::default()
    }
}

#[test]
fn a_new_connection_hears_the_upstream_status_and_a_snapshot_per_subscription() {
    let mut h = Harness::new(config());
    h.hub.handle_upstream_state(h.now, State::Live);
    let first = h.connect();
    assert_eq!(
        h.take(first),
        [json!({"type": "status", "upstream": "live"})]
    );
    h.subscribe(first, &["A"]);
    assert_eq!(
        h.take(first),
        [json!({"type": "snapshot", "symbol": "A", "quote": null, "bar": null})]
    );
    h.quote("A", 1.5);
    assert_eq!(
        h.take(first),
        [json!({"type": "quote", "symbol": "A", "data": {"lp": 1.5}})]
    );
    // A later subscriber sees the state at once.
    let second = h.connect();
    h.take(second);
    h.subscribe(second, &["A"]);
    assert_eq!(
        h.take(second),
        [json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 1.5}, "bar": null})]
    );
    assert_eq!(
        h.upstream_log,
        [HubOutput::SubscribeUpstream(vec![Arc::from("A")])]
    );
}

#[test]
fn only_changes_are_broadcast() {
    let mut h = Harness::new(config());
    let conn = h.connect();
    h.subscribe(conn, &["A"]);
    h.quote("A", 1.0);
    h.quote("A", 1.0);
    h.quote("A", 1.0);
    let mut quote = Quote {
        last_price: Some(1.0),
        volume: Some(7.0),
        ..Quote::new(Arc::from("A"))
    };
    h.hub.handle_quote(h.now, &quote);
    quote.volume = None;
    h.hub.handle_quote(h.now, &quote);
    h.drain();
    let quotes: Vec<Value> = h
        .take(conn)
        .into_iter()
        .filter(|value| value["type"] == "quote")
        .map(|value| value["data"].clone())
        .collect();
    assert_eq!(
        quotes,
        [
            json!({"lp": 1.0}),
            json!({"volume": 7.0}),
            json!({"volume": null})
        ]
    );
    assert_eq!(h.hub.counters().updates_unchanged, 2);
    // Bars too: the same bar again is not news, a moved close is.
    h.hub.symbols.get_mut("A").unwrap();
    let timeframe: Arc<str> = Arc::from("1");
    let bar = Bar {
        index: 5,
        time: 60.0,
        open: 1.0,
        high: 1.0,
        low: 1.0,
        close: 1.0,
        volume: None,
    };
    h.hub.handle_bar(h.now, "A", &timeframe, &bar, false);
    h.hub
        .handle_bar(h.now, "A", &timeframe, &Bar { index: 9, ..bar }, false);
    h.hub.handle_bar(
        h.now,
        "A",
        &timeframe,
        &Bar {
            close: 1.5,
            high: 1.5,
            ..bar
        },
        false,
    );
    h.drain();
    assert_eq!(h.types(conn), ["bar", "bar"]);
}

#[test]
fn upstream_follows_demand_with_a_linger() {
    let mut h = Harness::new(config());
    let first = h.connect();
    let second = h.connect();
    h.subscribe(first, &["A", "B"]);
    h.subscribe(second, &["A"]);
    let subscribed: BTreeSet<Arc<str>> = [Arc::from("A"), Arc::from("B")].into();
    assert_eq!(h.upstream, subscribed);
    assert_eq!(
        h.upstream_log,
        [HubOutput::SubscribeUpstream(vec![
            Arc::from("A"),
            Arc::from("B")
        ])],
        "one upstream subscribe for the request, none for the second subscriber"
    );

    h.send(first, r#"{"action":"unsubscribe","symbols":["A","B"]}"#);
    assert_eq!(
        h.take(first)
            .into_iter()
            .filter(|value| value["type"] == "unsubscribed")
            .count(),
        2
    );
    // B has nobody left, but lingers; A still has a subscriber.
    assert_eq!(h.upstream, subscribed);
    assert_eq!(h.hub.poll_timeout(), Some(h.now + 5 * SECOND));
    h.advance(4 * SECOND);
    assert!(h.upstream.contains("B"));
    // Coming back within the linger keeps the upstream subscription: no new subscribe.
    h.subscribe(first, &["B"]);
    h.advance(2 * SECOND);
    assert_eq!(h.upstream, subscribed);
    assert_eq!(h.upstream_log.len(), 1);

    h.hub.disconnect(h.now, first, CloseReason::ClientClosed);
    h.hub.disconnect(h.now, second, CloseReason::ClientClosed);
    h.drain();
    h.advance(4 * SECOND);
    assert_eq!(h.upstream, subscribed);
    h.advance(SECOND);
    assert!(h.upstream.is_empty());
    assert_eq!(h.hub.symbols().count(), 0);
    assert_eq!(h.hub.counters().disconnects(CloseReason::ClientClosed), 2);
}

#[test]
fn upstream_changes_are_batched_over_the_delay() {
    let mut h = Harness::new(HubConfig {
        upstream_batch_delay: Duration::from_millis(100),
        linger: Duration::ZERO,
        ..config()
    });
    let clients: Vec<ConnId> = (0..5).map(|_| h.connect()).collect();
    for (index, conn) in clients.iter().enumerate() {
        h.subscribe(*conn, &[["A", "B", "C", "D", "E"][index]]);
    }
    // Subscribed and gone again within the batch: upstream never hears of E.
    h.send(clients[4], r#"{"action":"unsubscribe","symbols":["E"]}"#);
    assert!(h.upstream_log.is_empty());
    assert_eq!(
        h.hub.poll_timeout(),
        Some(h.now + Duration::from_millis(100))
    );
    h.advance(Duration::from_millis(99));
    assert!(h.upstream_log.is_empty());
    h.advance(Duration::from_millis(1));
    let expected: Vec<Arc<str>> = ["A", "B", "C", "D"].map(Arc::from).to_vec();
    assert_eq!(h.upstream_log, [HubOutput::SubscribeUpstream(expected)]);
    // A leave and a return within one batch cancel out too.
    h.hub
        .disconnect(h.now, clients[0], CloseReason::ClientClosed);
    h.subscribe(clients[1], &["A"]);
    h.hub
        .disconnect(h.now, clients[2], CloseReason::ClientClosed);
    h.advance(Duration::from_millis(100));
    assert_eq!(
        h.upstream_log[1..],
        [HubOutput::UnsubscribeUpstream(vec![Arc::from("C")])]
    );
    assert_eq!(h.hub.poll_timeout().map(|due| due > h.now), Some(true));
}

#[test]
fn zero_linger_unsubscribes_at_once() {
    let mut h = Harness::new(HubConfig {
        linger: Duration::ZERO,
        ..config()
    });
    let conn = h.connect();
    h.subscribe(conn, &["A"]);
    h.send(conn, r#"{"action":"unsubscribe","symbols":["A"]}"#);
    assert!(h.upstream.is_empty());
}

#[test]
fn whitelist_and_symbol_shape_are_enforced() {
    let mut h = Harness::new(HubConfig {
        whitelist: Some([Arc::from("A"), Arc::from("B")].into()),
        ..config()
    });
    let conn = h.connect();
    h.take(conn);
    h.subscribe(conn, &["A", "Z", "", "has space", &"x".repeat(500)]);
    let replies = h.take(conn);
    assert_eq!(replies[0]["type"], "snapshot");
    assert_eq!(replies[1]["code"], "SYMBOL_NOT_ALLOWED");
    assert_eq!(replies[1]["symbol"], "Z");
    assert_eq!(replies[2]["code"], "INVALID_SYMBOL");
    assert_eq!(replies[3]["code"], "INVALID_SYMBOL");
    assert_eq!(replies[4]["code"], "INVALID_SYMBOL");
    assert!(replies[4]["symbol"].as_str().unwrap().len() <= 128);
    assert_eq!(replies.len(), 5);
    assert_eq!(h.upstream.len(), 1);
}

#[test]
fn malformed_requests_get_errors_and_the_connection_stays() {
    let mut h = Harness::new(config());
    let conn = h.connect();
    h.take(conn);
    for text in [
        "not json",
        "{\"action\":\"dance\"}",
        "[]",
        "{\"action\":\"subscribe\"}",
    ] {
        h.send(conn, text);
    }
    h.hub.handle_binary(h.now, conn, 10);
    h.drain();
    assert_eq!(
        h.errors(conn),
        [
            "BAD_REQUEST",
            "UNKNOWN_ACTION",
            "BAD_REQUEST",
            "BAD_REQUEST",
            "BAD_REQUEST"
        ]
    );
    h.send(conn, r#"{"action":"ping"}"#);
    assert_eq!(h.take(conn), [json!({"type": "pong"})]);
    assert!(h.closed.is_empty());
}

#[test]
fn limits_on_connections_subscriptions_size_and_rate() {
    let mut h = Harness::new(HubConfig {
        max_connections: 2,
        max_subscriptions_per_connection: 2,
        max_message_bytes: 100,
        messages_per_second: 2,
        message_burst: 3,
        ..config()
    });
    let conn = h.connect();
    h.connect();
    let refused = h.hub.connect(h.now).unwrap_err();
    let error: Value = serde_json::from_str(refused.frame.as_str()).unwrap();
    assert_eq!(error["code"], "CONNECTION_LIMIT");
    assert_eq!(h.hub.counters().connections_refused, 1);
    h.take(conn);

    h.subscribe(conn, &["A", "B", "C"]);
    assert_eq!(h.errors(conn), ["SUBSCRIPTION_LIMIT"]);
    assert_eq!(h.hub.subscriptions(conn).count(), 2);

    h.send(
        conn,
        &format!(r#"{{"action":"ping","pad":"{}"}}"#, "x".repeat(200)),
    );
    assert_eq!(h.errors(conn), ["MESSAGE_TOO_LARGE"]);

    // Two messages so far, a burst of three: one more passes, the rest are refused with one
    // error a second.
    for _ in 0..5 {
        h.send(conn, r#"{"action":"ping"}"#);
    }
    assert_eq!(h.types(conn), ["pong", "error"]);
    h.now += SECOND;
    h.send(conn, r#"{"action":"ping"}"#);
    h.send(conn, r#"{"action":"ping"}"#);
    h.send(conn, r#"{"action":"ping"}"#);
    assert_eq!(h.types(conn), ["pong", "pong", "error"]);
}

#[test]
fn upstream_symbol_limit_evicts_lingering_symbols_first() {
    let mut h = Harness::new(HubConfig {
        max_upstream_symbols: 2,
        ..config()
    });
    let conn = h.connect();
    h.take(conn);
    h.subscribe(conn, &["A", "B"]);
    h.subscribe(conn, &["C"]);
    assert_eq!(h.errors(conn), ["SYMBOL_LIMIT"]);
    h.send(conn, r#"{"action":"unsubscribe","symbols":["A"]}"#);
    h.subscribe(conn, &["C"]);
    assert_eq!(h.errors(conn), Vec::<String>::new());
    let expected: BTreeSet<Arc<str>> = [Arc::from("B"), Arc::from("C")].into();
    assert_eq!(h.upstream, expected);
}

#[test]
fn a_slow_consumer_is_conflated_warned_once_and_cut_off_while_others_get_everything() {
    let mut h = Harness::new(HubConfig {
        queue_capacity: 8,
        send_window: 2,
        slow_consumer_deadline: 3 * SECOND,
        ..config()
    });
    let slow = h.connect();
    let fast = h.connect();
    h.subscribe(slow, &["A", "B"]);
    h.subscribe(fast, &["A", "B"]);
    h.take(slow);
    h.take(fast);
    h.reading.remove(&slow);
    for step in 1..=100 {
        h.quote("A", f64::from(step));
        h.quote("B", f64::from(step) + 1000.0);
        h.advance(Duration::from_millis(10));
    }
    // The reader got every update, in order.
    let fast_prices: Vec<f64> = h
        .take(fast)
        .iter()
        .filter(|value| value["symbol"] == "A")
        .map(|value| value["data"]["lp"].as_f64().unwrap())
        .collect();
    assert_eq!(fast_prices, (1..=100).map(f64::from).collect::<Vec<_>>());
    // The stalled one holds at most its window; the rest waits, bounded.
    let connection = &h.hub.connections[&slow];
    assert!(connection.waiting() <= 8 + CONTROL_HEADROOM);
    assert_eq!(connection.owed.len(), 2, "owes the latest A and B only");
    assert_eq!(h.hub.counters().slow_consumer_warnings, 1);
    // It got its window's worth; the warning is first in line for the socket.
    assert_eq!(h.take(slow).len(), 2);
    h.reading.insert(slow);
    h.hub.handle_written(h.now, slow, 0);
    h.reading.remove(&slow);
    // Nothing written yet: still stalled. Past the deadline it is closed; the reader is not.
    h.advance(2 * SECOND);
    assert!(h.closed.is_empty());
    h.advance(SECOND);
    assert_eq!(h.closed.get(&slow), Some(&CloseReason::SlowConsumer));
    assert!(!h.closed.contains_key(&fast));
    assert_eq!(h.hub.counters().disconnects(CloseReason::SlowConsumer), 1);
    // Its subscriptions went with it; the reader's remain.
    assert_eq!(h.hub.symbols().map(|(_, count, _)| count).sum::<usize>(), 2);
}

/// Under load the relay's writers run behind and report written frames in batches; a reader
/// that keeps up must not be conflated for that. 100 symbols at 10 updates a second each
/// (1 000 frames/s) through a writer 80 ms behind (what `relay_load` measured at 10 000
/// clients on 2 cores) that reports every `written_report_every()` frames: with the default
/// window every update arrives, in order, and nothing is conflated.
#[test]
fn a_fast_reader_behind_a_lagging_writer_gets_every_update_with_the_default_window() {
    let config = config();
    let report_every = config.written_report_every();
    let mut h = Harness::new(config);
    let conn = h.connect();
    let symbols: Vec<String> = (0..100).map(|index| format!("S{index}")).collect();
    let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
    h.subscribe(conn, &names);
    h.take(conn);
    h.reading.remove(&conn);
    let lag = Duration::from_millis(80);
    // When each frame handed to the writer was handed over; written `lag` later.
    let mut handed = VecDeque::new();
    let mut unreported = 0;
    let mut last_price: BTreeMap<String, f64> = BTreeMap::new();
    let mut data_frames = 0u32;
    let mut collect = |h: &mut Harness, handed: &mut VecDeque<Instant>| {
        for value in h.take(conn) {
            handed.push_back(h.now);
            let price = match value["type"].as_str() {
                Some("snapshot") => value["quote"]["lp"].as_f64(),
                Some("quote") => value["data"]["lp"].as_f64(),
                _ => None,
            };
            if let (Some(price), Some(symbol)) = (price, value["symbol"].as_str()) {
                data_frames += 1;
                let before = last_price.insert(symbol.to_owned(), price);
                assert!(
                    before.is_none_or(|before| before < price),
                    "{symbol} out of order"
                );
            }
        }
    };
    let steps = 5_000u32;
    for step in 0..steps {
        h.quote(&symbols[(step % 100) as usize], f64::from(step) + 1.0);
        collect(&mut h, &mut handed);
        while handed.front().is_some_and(|at| *at + lag <= h.now) {
            handed.pop_front();
            unreported += 1;
        }
        if unreported >= report_every {
            h.hub
                .handle_written(h.now, conn, std::mem::take(&mut unreported));
            h.drain();
            collect(&mut h, &mut handed);
        }
        h.advance(Duration::from_millis(1));
        collect(&mut h, &mut handed);
    }
    assert_eq!(h.hub.counters().deliveries_conflated, 0);
    assert_eq!(h.hub.counters().slow_consumer_warnings, 0);
    // Every update was handed over by the end (the last `lag` of them not yet written).
    assert_eq!(data_frames, steps);
    assert_eq!(last_price[&symbols[99]], f64::from(steps));
}

#[test]
fn a_consumer_that_catches_up_gets_the_latest_state_and_stays() {
    let mut h = Harness::new(HubConfig {
        queue_capacity: 4,
        send_window: 1,
        slow_consumer_deadline: 3 * SECOND,
        ..config()
    });
    let conn = h.connect();
    h.subscribe(conn, &["A", "B"]);
    h.take(conn);
    h.reading.remove(&conn);
    for step in 1..=20 {
        h.quote("A", f64::from(step));
    }
    h.quote("B", 7.0);
    h.advance(SECOND);
    // It reads again: the backlog, the warning, then one snapshot per owed symbol.
    h.reading.insert(conn);
    let pending = h.unwritten.insert(conn, 0).unwrap();
    h.hub.handle_written(h.now, conn, pending);
    h.drain();
    let received = h.take(conn);
    let types: Vec<&str> = received
        .iter()
        .map(|value| value["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "quote", "warning", "quote", "quote", "quote", "snapshot", "snapshot"
        ]
    );
    assert_eq!(received[1]["code"], "SLOW_CONSUMER");
    assert_eq!(received[5]["quote"], json!({"lp": 20.0}));
    assert_eq!(received[6]["quote"], json!({"lp": 7.0}));
    // Caught up: past the deadline nothing happens, and updates flow one by one again.
    h.advance(5 * SECOND);
    assert!(h.closed.is_empty());
    h.quote("A", 21.0);
    assert_eq!(h.types(conn), ["quote"]);
}

#[test]
fn silent_connections_are_closed_at_the_keepalive_deadline() {
    let mut h = Harness::new(HubConfig {
        keepalive_timeout: 10 * SECOND,
        ..config()
    });
    let silent = h.connect();
    let pinging = h.connect();
    let active = h.connect();
    h.subscribe(silent, &["A"]);
    for _ in 0..4 {
        h.advance(3 * SECOND);
        h.send(pinging, r#"{"action":"ping"}"#);
        h.hub.handle_activity(h.now, active);
    }
    assert_eq!(h.closed.get(&silent), Some(&CloseReason::KeepaliveTimeout));
    assert_eq!(h.closed.len(), 1);
    assert_eq!(h.hub.connection_count(), 2);
    // Its subscription lingers, then goes.
    h.advance(5 * SECOND);
    assert!(h.upstream.is_empty());
}

#[test]
fn deadline_checks_are_spaced_however_often_they_move() {
    let mut h = Harness::new(HubConfig {
        keepalive_timeout: 10 * SECOND,
        ..config()
    });
    h.connect();
    assert_eq!(h.hub.poll_timeout(), Some(h.now + 10 * SECOND));
    h.advance(10 * SECOND);
    // Closed; nothing else is due.
    assert_eq!(h.hub.poll_timeout(), None);
    let conn = h.connect();
    h.advance(5 * SECOND);
    h.hub.handle_activity(h.now, conn);
    // The known deadline is early (the ping moved it): a check then finds the real one.
    assert_eq!(h.hub.poll_timeout(), Some(h.now + 5 * SECOND));
    h.advance(5 * SECOND);
    assert!(h.closed.len() == 1);
    assert_eq!(h.hub.poll_timeout(), Some(h.now + 5 * SECOND));
}

#[test]
fn an_upstream_symbol_error_reaches_its_subscribers_and_ends_their_subscription() {
    let mut h = Harness::new(config());
    let conn = h.connect();
    h.subscribe(conn, &["BAD", "A"]);
    h.take(conn);
    h.hub.handle_symbol_error(h.now, "BAD", "no_such_symbol");
    h.drain();
    let replies = h.take(conn);
    assert_eq!(replies[0]["code"], "UNKNOWN_SYMBOL");
    assert_eq!(replies[0]["symbol"], "BAD");
    assert_eq!(
        h.hub.subscriptions(conn).cloned().collect::<Vec<_>>(),
        [Arc::from("A")]
    );
    // Upstream already dropped it: no unsubscribe goes out, now or after a linger.
    h.advance(60 * SECOND);
    assert!(
        !h.upstream_log
            .iter()
            .any(|output| matches!(output, HubOutput::UnsubscribeUpstream(_)))
    );
}

#[test]
fn a_symbol_rejected_while_its_unsubscribe_waits_is_not_unsubscribed() {
    let mut h = Harness::new(HubConfig {
        upstream_batch_delay: Duration::from_millis(100),
        linger: Duration::ZERO,
        ..config()
    });
    let conn = h.connect();
    h.subscribe(conn, &["A"]);
    h.advance(Duration::from_millis(100));
    h.send(conn, r#"{"action":"unsubscribe","symbols":["A"]}"#);
    // Upstream rejects A before the batch with its unsubscribe goes out: it has forgotten A.
    h.hub.handle_symbol_error(h.now, "A", "no_such_symbol");
    h.upstream.remove("A");
    h.advance(Duration::from_millis(100));
    assert_eq!(h.upstream_log.len(), 1, "{:?}", h.upstream_log);
}

#[test]
fn status_changes_reach_everyone_once() {
    let mut h = Harness::new(config());
    let first = h.connect();
    let second = h.connect();
    h.take(first);
    h.take(second);
    h.hub.handle_upstream_state(h.now, State::Live);
    h.hub.handle_upstream_state(h.now, State::Live);
    h.hub.handle_upstream_state(h.now, State::BackingOff);
    h.drain();
    for conn in [first, second] {
        let states: Vec<Value> = h.take(conn).iter().map(|v| v["upstream"].clone()).collect();
        assert_eq!(states, [json!("live"), json!("backing_off")]);
    }
}

#[test]
fn shutdown_closes_everyone_and_refuses_newcomers() {
    let mut h = Harness::new(config());
    let first = h.connect();
    let second = h.connect();
    h.hub.shutdown(h.now);
    h.drain();
    assert_eq!(h.closed.get(&first), Some(&CloseReason::Shutdown));
    assert_eq!(h.closed.get(&second), Some(&CloseReason::Shutdown));
    assert!(h.hub.connect(h.now).is_err());
    assert_eq!(CloseReason::Shutdown.close_code(), CloseCode::GoingAway);
}

#[test]
fn inputs_for_unknown_connections_are_ignored() {
    let mut h = Harness::new(config());
    let conn = h.connect();
    h.hub.disconnect(h.now, conn, CloseReason::SocketError);
    h.hub.disconnect(h.now, conn, CloseReason::SocketError);
    h.hub.handle_text(h.now, conn, r#"{"action":"ping"}"#);
    h.hub.handle_written(h.now, conn, 5);
    h.hub.handle_activity(h.now, conn);
    assert!(h.hub.poll_output().is_none());
    assert_eq!(h.hub.counters().disconnects(CloseReason::SocketError), 1);
}

#[test]
fn an_update_interval_out_of_bounds_or_not_a_number_is_a_bad_request_naming_the_field() {
    let mut h = Harness::new(config());
    let conn = h.connect();
    h.take(conn);
    for interval in [
        json!(0),
        json!(0.05),
        json!(3601),
        json!(-2),
        json!("1"),
        json!(null),
    ] {
        h.send(
            conn,
            &json!({"action": "subscribe", "symbols": ["A"], "update_interval": interval})
                .to_string(),
        );
        let replies = h.take(conn);
        assert_eq!(replies.len(), 1, "{interval}: {replies:?}");
        assert_eq!(replies[0]["code"], "BAD_REQUEST", "{interval}");
        let message = replies[0]["message"].as_str().unwrap();
        assert!(message.contains("update_interval"), "{interval}: {message}");
    }
    // Nothing was subscribed by the refused requests.
    assert_eq!(h.hub.subscriptions(conn).count(), 0);
    assert!(h.upstream.is_empty());
    // The bounds themselves are fine.
    h.subscribe_every(conn, &["A"], 0.1);
    h.subscribe_every(conn, &["B"], 3600.0);
    assert_eq!(
        h.hub.update_interval(conn, "A"),
        Some(Duration::from_millis(100))
    );
    assert_eq!(h.hub.update_interval(conn, "B"), Some(3600 * SECOND));
    assert_eq!(h.errors(conn), Vec::<String>::new());

    // The relay-wide default has the same bounds.
    for (interval, valid) in [
        (None, true),
        (Some(Duration::from_millis(100)), true),
        (Some(3600 * SECOND), true),
        (Some(Duration::from_millis(99)), false),
        (Some(Duration::ZERO), false),
        (Some(3601 * SECOND), false),
    ] {
        let result = HubConfig {
            default_update_interval: interval,
            ..config()
        }
        .validate();
        assert_eq!(result.is_ok(), valid, "{interval:?}");
        if let Err(error) = result {
            assert!(
                error.to_string().contains("default_update_interval"),
                "{error}"
            );
        }
    }
}

#[test]
fn a_paced_subscription_gets_the_snapshot_at_once_then_at_most_one_update_per_interval_with_the_latest()
 {
    let mut h = Harness::new(config());
    let paced = h.connect();
    let every = h.connect();
    h.subscribe(every, &["A"]);
    h.quote("A", 1.0);
    h.take(every);
    let start = h.now;
    h.subscribe_every(paced, &["A"], 1.0);
    let answer = h.take(paced);
    assert_eq!(
        answer.last().unwrap(),
        &json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 1.0}, "bar": null, "update_interval": 1})
    );
    // Ten changes over 0.9 s: the unpaced subscriber gets each, the paced one none yet.
    for step in 1..=9 {
        h.now = start + step * Duration::from_millis(100);
        h.quote("A", 1.0 + f64::from(step));
    }
    assert_eq!(h.prices(every, "A").len(), 9);
    assert!(h.take(paced).is_empty());
    // Due exactly when the interval ends, and not a moment before.
    assert_eq!(h.hub.poll_timeout(), Some(start + SECOND));
    h.check_pacing();
    h.advance(start + SECOND - Duration::from_nanos(1) - h.now);
    assert!(h.take(paced).is_empty());
    h.advance(Duration::from_nanos(1));
    // One message: the latest state, whole.
    assert_eq!(h.prices(paced, "A"), [("snapshot".to_owned(), Some(10.0))]);
    assert!(h.hub.pace_timers.is_empty());
    // The next change is held for a full interval from that update.
    h.now += Duration::from_millis(500);
    h.quote("A", 11.0);
    h.now += Duration::from_millis(100);
    h.quote("A", 12.0);
    assert!(h.take(paced).is_empty());
    assert_eq!(h.hub.poll_timeout(), Some(start + 2 * SECOND));
    h.advance(start + 2 * SECOND - h.now);
    assert_eq!(h.prices(paced, "A"), [("snapshot".to_owned(), Some(12.0))]);
    // Every change reached the unpaced subscriber, one by one.
    assert_eq!(h.prices(every, "A").len(), 2);
    h.check_pacing();
}

#[test]
fn a_paced_subscription_is_change_only_and_later_changes_apply_to_what_it_was_sent() {
    let mut h = Harness::new(config());
    let conn = h.connect();
    // A symbol new upstream: its first price is not held behind the (empty) snapshot.
    h.subscribe_every(conn, &["A"], 2.0);
    assert_eq!(
        h.take(conn).last().unwrap(),
        &json!({"type": "snapshot", "symbol": "A", "quote": null, "bar": null, "update_interval": 2})
    );
    h.now += Duration::from_millis(10);
    h.quote("A", 1.0);
    assert_eq!(h.prices(conn, "A"), [("quote".to_owned(), Some(1.0))]);
    // Unchanged updates are not changes: nothing is held, nothing is due.
    h.now += Duration::from_millis(10);
    h.quote("A", 1.0);
    assert!(h.hub.pace_timers.is_empty());
    assert!(h.take(conn).is_empty());
    // Quiet for longer than the interval: nothing at its end.
    h.advance(5 * SECOND);
    assert!(h.take(conn).is_empty());
    // A change after the quiet goes at once, as the shared delta from what it was last sent.
    let mut quote = Quote {
        last_price: Some(1.0),
        volume: Some(5.0),
        ..Quote::new(Arc::from("A"))
    };
    h.hub.handle_quote(h.now, &quote);
    h.drain();
    assert_eq!(
        h.take(conn),
        [json!({"type": "quote", "symbol": "A", "data": {"volume": 5.0}})]
    );
    // Held changes, then the snapshot; the next delta after it is relative to the snapshot.
    h.now += Duration::from_millis(100);
    quote.volume = Some(6.0);
    h.hub.handle_quote(h.now, &quote);
    quote.last_price = Some(2.0);
    h.hub.handle_quote(h.now, &quote);
    h.drain();
    assert!(h.take(conn).is_empty());
    h.advance(2 * SECOND);
    assert_eq!(
        h.take(conn),
        [
            json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 2.0, "volume": 6.0}, "bar": null})
        ]
    );
    h.advance(3 * SECOND);
    quote.volume = None;
    h.hub.handle_quote(h.now, &quote);
    h.drain();
    assert_eq!(
        h.take(conn),
        [json!({"type": "quote", "symbol": "A", "data": {"volume": null}})]
    );
}

#[test]
fn a_change_arriving_after_an_overdue_timer_sends_the_whole_state_not_a_delta() {
    let mut h = Harness::new(config());
    let conn = h.connect();
    h.subscribe_every(conn, &["A"], 1.0);
    h.quote("A", 0.0);
    h.take(conn);
    h.now += Duration::from_millis(100);
    h.quote("A", 1.0);
    // The driver is late: the next change arrives after the due time, before any timeout.
    h.now += 2 * SECOND;
    h.quote("A", 2.0);
    assert_eq!(h.prices(conn, "A"), [("snapshot".to_owned(), Some(2.0))]);
    assert!(h.hub.pace_timers.is_empty());
    h.advance(SECOND / 2);
    assert!(h.take(conn).is_empty());
}

#[test]
fn a_resubscribe_changes_the_interval_and_without_one_means_the_relay_default() {
    let mut h = Harness::new(HubConfig {
        default_update_interval: Some(2 * SECOND),
        ..config()
    });
    let conn = h.connect();
    h.subscribe_every(conn, &["A"], 5.0);
    h.quote("A", 0.0);
    h.take(conn);
    h.now += Duration::from_millis(100);
    h.quote("A", 1.0);
    assert_eq!(h.hub.pace_timers.len(), 1);
    // Re-subscribing answers with the current state, so the held update is dropped with it.
    h.subscribe_every(conn, &["A"], 1.0);
    let answer = h.take(conn);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0]["quote"]["lp"], 1.0);
    assert_eq!(answer[0]["update_interval"], 1);
    assert!(h.hub.pace_timers.is_empty());
    assert_eq!(h.hub.update_interval(conn, "A"), Some(SECOND));
    h.now += Duration::from_millis(100);
    h.quote("A", 2.0);
    assert_eq!(
        h.hub.poll_timeout(),
        Some(h.now + Duration::from_millis(900))
    );
    h.advance(Duration::from_millis(900));
    assert_eq!(h.prices(conn, "A"), [("snapshot".to_owned(), Some(2.0))]);
    // No interval named: the relay's default.
    h.subscribe(conn, &["A"]);
    assert_eq!(h.take(conn)[0]["update_interval"], 2);
    assert_eq!(h.hub.update_interval(conn, "A"), Some(2 * SECOND));

    // Without a default, a re-subscribe without an interval gets every change again.
    let mut h = Harness::new(config());
    let conn = h.connect();
    h.subscribe_every(conn, &["A"], 5.0);
    h.quote("A", 1.0);
    h.quote("A", 2.0);
    h.take(conn);
    assert_eq!(h.hub.pace_timers.len(), 1);
    h.subscribe(conn, &["A"]);
    let answer = h.take(conn);
    assert_eq!(
        answer,
        [json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 2.0}, "bar": null})]
    );
    assert!(h.hub.pace_timers.is_empty());
    h.quote("A", 3.0);
    h.quote("A", 4.0);
    assert_eq!(h.prices(conn, "A").len(), 2);
}

#[test]
fn unsubscribing_or_disconnecting_cancels_held_updates() {
    let mut h = Harness::new(config());
    let first = h.connect();
    let second = h.connect();
    h.subscribe_every(first, &["A", "B"], 1.0);
    h.subscribe_every(second, &["A"], 1.0);
    h.quote("A", 1.0);
    h.quote("B", 1.0);
    h.quote("A", 2.0);
    h.take(first);
    h.take(second);
    // Neither had data yet: their first prices went at once; A's second is held for both.
    assert_eq!(h.hub.pace_timers.len(), 2);
    h.check_pacing();
    h.send(first, r#"{"action":"unsubscribe","symbols":["A"]}"#);
    assert_eq!(h.hub.pace_timers.len(), 1);
    h.hub.disconnect(h.now, second, CloseReason::ClientClosed);
    h.drain();
    assert!(h.hub.pace_timers.is_empty());
    h.check_pacing();
    h.advance(2 * SECOND);
    assert_eq!(h.types(first), ["unsubscribed"]);
    // An upstream rejection takes the held update with the symbol.
    h.quote("B", 2.0);
    h.quote("B", 3.0);
    assert_eq!(h.prices(first, "B"), [("quote".to_owned(), Some(2.0))]);
    assert_eq!(h.hub.pace_timers.len(), 1);
    h.hub.handle_symbol_error(h.now, "B", "no_such_symbol");
    assert!(h.hub.pace_timers.is_empty());
    h.check_pacing();
}

#[test]
fn a_paced_subscription_of_a_stalled_connection_is_conflated_once_and_not_sent_twice() {
    let mut h = Harness::new(HubConfig {
        queue_capacity: 2,
        send_window: 1,
        slow_consumer_deadline: 10 * SECOND,
        ..config()
    });
    let conn = h.connect();
    let reader = h.connect();
    for symbol in ["A", "B", "C"] {
        // One at a time: three snapshots at once would overflow even a reader's queue of 2.
        h.subscribe(reader, &[symbol]);
        h.quote(symbol, 0.0);
    }
    h.subscribe_every(conn, &["A", "B", "C"], 1.0);
    h.take(conn);
    h.reading.remove(&conn);
    // Held changes on all three; their timers fire while the socket takes nothing.
    for step in 1..=5 {
        h.now += Duration::from_millis(100);
        for symbol in ["A", "B", "C"] {
            h.quote(symbol, f64::from(step));
        }
    }
    h.advance(SECOND);
    let connection = &h.hub.connections[&conn];
    assert!(connection.behind_since.is_some(), "fell behind");
    assert!(connection.waiting() <= 2 + CONTROL_HEADROOM);
    assert!(h.hub.pace_timers.is_empty(), "owed now, not held");
    assert_eq!(h.hub.counters().slow_consumer_warnings, 1);
    // One slow consumer, counted once for each symbol it holds; not for the reader.
    for (symbol, counters) in h.hub.symbol_counters() {
        assert_eq!(counters.slow_consumers, 1, "{symbol}");
    }
    // The timers' snapshots: A in flight, B queued, C owed (the queue was full).
    assert_eq!(
        h.hub.connections[&conn]
            .owed
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>(),
        ["C"]
    );
    // More changes while behind, within the new interval: held again, once each.
    h.now += Duration::from_millis(100);
    for symbol in ["A", "B", "C"] {
        h.quote(symbol, 9.0);
    }
    h.check_pacing();
    assert_eq!(h.hub.pace_timers.len(), 3);
    // It reads again: the backlog, then C's latest state; C's catch-up snapshot carries the
    // held change, so C's timer goes and its interval starts again.
    h.reading.insert(conn);
    let pending = h.unwritten.insert(conn, 0).unwrap_or(0);
    h.hub.handle_written(h.now, conn, pending);
    h.drain();
    let snapshots = |h: &mut Harness| -> Vec<(String, f64)> {
        h.take(conn)
            .iter()
            .filter(|value| value["type"] == "snapshot")
            .map(|value| {
                let symbol = value["symbol"].as_str().unwrap().to_owned();
                (symbol, value["quote"]["lp"].as_f64().unwrap())
            })
            .collect()
    };
    assert_eq!(
        snapshots(&mut h),
        [
            ("A".to_owned(), 5.0),
            ("B".to_owned(), 5.0),
            ("C".to_owned(), 9.0)
        ]
    );
    assert!(h.hub.connections[&conn].behind_since.is_none());
    assert_eq!(h.hub.pace_timers.len(), 2);
    h.check_pacing();
    // A and B get theirs when their interval ends; C, already up to date, nothing.
    h.advance(SECOND);
    assert_eq!(
        snapshots(&mut h),
        [("A".to_owned(), 9.0), ("B".to_owned(), 9.0)]
    );
    h.advance(2 * SECOND);
    assert!(h.take(conn).is_empty());
    h.now += Duration::from_millis(10);
    h.quote("A", 10.0);
    assert_eq!(h.prices(conn, "A"), [("quote".to_owned(), Some(10.0))]);
    assert!(h.closed.is_empty());
}

#[test]
fn per_symbol_counters_count_data_frames_handed_out_and_go_with_the_symbol() {
    let mut h = Harness::new(HubConfig {
        linger: SECOND,
        send_window: 1,
        ..config()
    });
    let first = h.connect();
    let second = h.connect();
    h.subscribe(first, &["A", "B"]);
    h.subscribe(second, &["A"]);
    h.quote("A", 1.0);
    h.quote("A", 2.0);
    h.quote("B", 1.0);
    h.send(first, r#"{"action":"ping"}"#);
    let counters: BTreeMap<String, SymbolCounters> = h
        .hub
        .symbol_counters()
        .map(|(symbol, counters)| (symbol.to_string(), counters))
        .collect();
    // A: two snapshots and two quotes to each of two; B: a snapshot and a quote. No control.
    assert_eq!(counters["A"].messages_sent, 6);
    assert_eq!(counters["B"].messages_sent, 2);
    assert_eq!(counters["A"].slow_consumers, 0);
    let data = h.hub.counters().frames_sent - 2 /* status */ - 1 /* pong */;
    assert_eq!(data, 8);
    // B's last subscriber leaves: after the linger its counters are gone with it.
    h.send(first, r#"{"action":"unsubscribe","symbols":["B"]}"#);
    h.advance(SECOND);
    let symbols: Vec<String> = h
        .hub
        .symbol_counters()
        .map(|(s, _)| s.to_string())
        .collect();
    assert_eq!(symbols, ["A"]);
    // Back again: from zero, in the freed slot; a frame of the old B still queued somewhere
    // would not count for the new one.
    h.reading.remove(&first);
    h.quote("A", 3.0);
    h.subscribe(first, &["B"]);
    assert_eq!(h.hub.slots.len(), 2, "the freed slot is reused");
    let b = h
        .hub
        .symbol_counters()
        .find(|(s, _)| s.as_ref() == "B")
        .unwrap()
        .1;
    assert_eq!(
        b.messages_sent, 0,
        "queued behind A's quote, not handed out yet"
    );
    h.reading.insert(first);
    let pending = h.unwritten.insert(first, 0).unwrap_or(0);
    h.hub.handle_written(h.now, first, pending);
    h.drain();
    let b = h
        .hub
        .symbol_counters()
        .find(|(s, _)| s.as_ref() == "B")
        .unwrap()
        .1;
    assert_eq!(b.messages_sent, 1);
}

fn stored_quote(symbol: &str, price: f64) -> Quote {
    Quote {
        last_price: Some(price),
        ..Quote::new(Arc::from(symbol))
    }
}

/// A one-minute bar at `time` whose prices are all `price`.
fn flat_bar(time: f64, price: f64) -> Bar {
    Bar {
        index: 0,
        time,
        open: price,
        high: price,
        low: price,
        close: price,
        volume: None,
    }
}

fn bar_json(time: f64, price: f64, closed: bool) -> Value {
    json!({"timeframe": "1", "bar": {"time": time, "open": price, "high": price, "low": price,
        "close": price, "volume": null}, "closed": closed})
}

#[test]
fn a_subscriber_of_a_preloaded_symbol_gets_the_stored_state_marked_stale() {
    let mut h = Harness::new(config());
    let stored_bar = (Arc::from("1"), flat_bar(120.0, 1.5), false);
    assert!(
        h.hub
            .preload(h.now, stored_quote("A", 1.5), Some(stored_bar))
    );
    assert_eq!(h.hub.preloaded_count(), 1);
    let first = h.connect();
    h.take(first);
    h.texts(first);
    h.subscribe(first, &["A", "B"]);
    assert_eq!(
        h.take(first),
        [
            json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 1.5},
                "bar": bar_json(120.0, 1.5, false), "stale": true}),
            // Nothing stored: the empty snapshot, without a stale key.
            json!({"type": "snapshot", "symbol": "B", "quote": null, "bar": null}),
        ]
    );
    // The key goes right after the bar.
    assert_eq!(
        h.texts(first),
        [
            r#"{"type":"snapshot","symbol":"A","quote":{"lp":1.5},"bar":{"timeframe":"1","bar":{"time":120.0,"open":1.5,"high":1.5,"low":1.5,"close":1.5,"volume":null},"closed":false},"stale":true}"#,
            r#"{"type":"snapshot","symbol":"B","quote":null,"bar":null}"#,
        ]
    );
    // Taken out by the first subscriber; the next one sees the symbol's own (still stale) state.
    assert_eq!(h.hub.preloaded_count(), 0);
    let second = h.connect();
    h.take(second);
    h.subscribe(second, &["A"]);
    assert_eq!(h.take(second)[0]["stale"], true);
    assert_eq!(h.hub.counters().stale_snapshots_sent, 2);
    // Upstream is asked for it like any other symbol.
    assert!(h.upstream.contains("A"));
}

#[test]
fn the_first_upstream_quote_confirms_a_stale_symbol_with_a_fresh_snapshot_to_every_subscriber() {
    let mut h = Harness::new(config());
    assert!(h.hub.preload(h.now, stored_quote("A", 1.0), None));
    let first = h.connect();
    let second = h.connect();
    h.subscribe(first, &["A"]);
    h.subscribe(second, &["A"]);
    h.take(first);
    h.take(second);
    h.texts(first);
    // The same price as stored: no field changed, yet the confirmation goes out.
    h.quote("A", 1.0);
    for conn in [first, second] {
        assert_eq!(
            h.take(conn),
            [json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 1.0}, "bar": null})]
        );
    }
    assert_eq!(
        h.texts(first),
        [r#"{"type":"snapshot","symbol":"A","quote":{"lp":1.0},"bar":null}"#]
    );
    // Live from now on: deltas, and a newcomer's snapshot has no stale key.
    h.quote("A", 2.0);
    for conn in [first, second] {
        assert_eq!(h.prices(conn, "A"), [("quote".to_owned(), Some(2.0))]);
    }
    let third = h.connect();
    h.take(third);
    h.subscribe(third, &["A"]);
    assert_eq!(
        h.take(third),
        [json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 2.0}, "bar": null})]
    );
    assert_eq!(h.hub.counters().stale_snapshots_sent, 2);
    // A resync is live state too.
    assert!(h.hub.preload(h.now, stored_quote("B", 5.0), None));
    h.subscribe(first, &["B"]);
    assert_eq!(h.take(first)[0]["stale"], true);
    h.hub.resync(h.now, &stored_quote("B", 6.0));
    h.drain();
    assert_eq!(
        h.take(first),
        [json!({"type": "snapshot", "symbol": "B", "quote": {"lp": 6.0}, "bar": null})]
    );
}

#[test]
fn an_upstream_bar_replaces_the_stored_bar_but_only_a_quote_confirms() {
    let mut h = Harness::new(config());
    let timeframe: Arc<str> = Arc::from("1");
    // Stored from a later time than the history upstream replays first.
    let stored_bar = (timeframe.clone(), flat_bar(600.0, 9.0), false);
    assert!(
        h.hub
            .preload(h.now, stored_quote("A", 1.0), Some(stored_bar))
    );
    let conn = h.connect();
    h.subscribe(conn, &["A"]);
    h.take(conn);
    h.hub
        .handle_bar(h.now, "A", &timeframe, &flat_bar(60.0, 2.0), true);
    h.drain();
    assert_eq!(
        h.take(conn),
        [json!({"type": "bar", "symbol": "A", "timeframe": "1",
            "bar": {"time": 60.0, "open": 2.0, "high": 2.0, "low": 2.0, "close": 2.0, "volume": null},
            "closed": true})]
    );
    // From upstream's first bar on, an older bar does not replace a newer one again.
    h.hub
        .handle_bar(h.now, "A", &timeframe, &flat_bar(0.0, 3.0), true);
    h.drain();
    assert_eq!(h.types(conn), ["bar"]);
    let late = h.connect();
    h.take(late);
    h.subscribe(late, &["A"]);
    assert_eq!(
        h.take(late),
        [
            json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 1.0},
            "bar": bar_json(60.0, 2.0, true), "stale": true})
        ]
    );
    h.quote("A", 1.5);
    assert_eq!(
        h.take(conn),
        [
            json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 1.5},
            "bar": bar_json(60.0, 2.0, true)})
        ]
    );
}

#[test]
fn preloading_is_bounded_and_never_overwrites_what_a_carried_symbol_has() {
    let mut h = Harness::new(HubConfig {
        max_upstream_symbols: 2,
        ..config()
    });
    assert!(h.hub.preload(h.now, stored_quote("A", 1.0), None));
    assert!(h.hub.preload(h.now, stored_quote("B", 1.0), None));
    assert!(!h.hub.preload(h.now, stored_quote("C", 1.0), None));
    assert!(
        !h.hub.preload(h.now, stored_quote("bad symbol", 1.0), None),
        "a symbol no subscribe could take"
    );
    // Again for a waiting symbol: replaced, not added.
    assert!(h.hub.preload(h.now, stored_quote("A", 2.0), None));
    assert_eq!(h.hub.preloaded_count(), 2);
    let conn = h.connect();
    h.take(conn);
    h.subscribe(conn, &["C", "A"]);
    assert_eq!(
        h.take(conn),
        [
            json!({"type": "snapshot", "symbol": "C", "quote": null, "bar": null}),
            json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 2.0}, "bar": null, "stale": true}),
        ]
    );
    // C is carried without data: stored state for it applies at once, outside the map.
    assert!(h.hub.preload(h.now, stored_quote("C", 3.0), None));
    h.drain();
    assert_eq!(h.hub.preloaded_count(), 1);
    assert_eq!(
        h.take(conn),
        [
            json!({"type": "snapshot", "symbol": "C", "quote": {"lp": 3.0}, "bar": null, "stale": true})
        ]
    );
    // Carried with data, stored or live: left alone, nothing sent.
    assert!(!h.hub.preload(h.now, stored_quote("C", 4.0), None));
    h.quote("A", 5.0);
    h.take(conn);
    assert!(!h.hub.preload(h.now, stored_quote("A", 4.0), None));
    h.drain();
    assert!(h.take(conn).is_empty());
    h.subscribe(conn, &["A", "C"]);
    assert_eq!(
        h.take(conn),
        [
            json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 5.0}, "bar": null}),
            json!({"type": "snapshot", "symbol": "C", "quote": {"lp": 3.0}, "bar": null, "stale": true}),
        ]
    );
}

#[test]
fn a_paced_subscriber_gets_the_stale_snapshot_at_once_with_its_interval_last() {
    let mut h = Harness::new(config());
    assert!(h.hub.preload(h.now, stored_quote("A", 1.0), None));
    let conn = h.connect();
    h.texts(conn);
    h.subscribe_every(conn, &["A"], 2.0);
    assert_eq!(
        h.texts(conn),
        [
            r#"{"type":"snapshot","symbol":"A","quote":{"lp":1.0},"bar":null,"stale":true,"update_interval":2}"#
        ]
    );
    h.take(conn);
    // The confirmation is not held behind the interval the stale snapshot started...
    h.now += Duration::from_millis(100);
    h.quote("A", 1.5);
    assert_eq!(
        h.take(conn),
        [json!({"type": "snapshot", "symbol": "A", "quote": {"lp": 1.5}, "bar": null})]
    );
    // ...which starts again from it: the next change waits for the interval's end.
    h.now += Duration::from_millis(100);
    h.quote("A", 1.6);
    assert!(h.take(conn).is_empty());
    h.check_pacing();
    h.advance(2 * SECOND);
    assert_eq!(h.prices(conn, "A"), [("snapshot".to_owned(), Some(1.6))]);
    h.check_pacing();
}

/// What a consumer knows: snapshots replace, quotes merge.
fn apply(view: &mut BTreeMap<String, Value>, message: &Value) {
    let Some(symbol) = message["symbol"].as_str() else {
        return;
    };
    match message["type"].as_str() {
        Some("snapshot") => {
            view.insert(symbol.to_owned(), message["quote"].clone());
        }
        Some("quote") => {
            let entry = view.entry(symbol.to_owned()).or_insert(Value::Null);
            if entry.is_null() {
                *entry = json!({});
            }
            for (key, value) in message["data"].as_object().unwrap() {
                entry[key] = value.clone();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Step {
    Update(usize),
    Write(usize, usize),
    Tick(u64),
    /// Subscribe connection `.0` again to every symbol, with an interval of `.1` tenths of a
    /// second (0: none).
    Resubscribe(usize, u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..3usize).prop_map(Step::Update),
        4 => (0..3usize, 0..6usize).prop_map(|(conn, count)| Step::Write(conn, count)),
        2 => (0..400u64).prop_map(Step::Tick),
        1 => (0..4usize, 0..30u64).prop_map(|(conn, tenths)| Step::Resubscribe(conn, tenths)),
    ]
}

/// A random update interval: none, or 0.1 s to 3 s.
fn interval() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 2 => 1..30u64]
}

fn subscribe_paced(h: &mut Harness, conn: ConnId, symbols: &[&str], tenths: u64) {
    if tenths == 0 {
        h.subscribe(conn, symbols);
    } else {
        h.subscribe_every(conn, symbols, tenths as f64 / 10.0);
    }
}

proptest! {
    /// Whatever the consumers' pace and update intervals, each sees every symbol's prices only
    /// rise (no reordering), holds a bounded queue, and once it drains (and its intervals end)
    /// knows the latest price of every symbol. A paced reader never gets two data updates of a
    /// symbol within its interval, and the pacing state stays consistent throughout.
    #[test]
    fn conflation_never_reorders_or_loses_the_latest_value(
        steps in proptest::collection::vec(step(), 1..300),
        capacity in 1usize..6,
        window in 1usize..4,
        intervals in proptest::collection::vec(interval(), 4),
    ) {
        let mut h = Harness::new(HubConfig {
            queue_capacity: capacity,
            send_window: window,
            slow_consumer_deadline: Duration::from_secs(3600),
            ..config()
        });
        let symbols = ["A", "B", "C"];
        // Three connections whose sockets write only when told to, and a reader (the fourth)
        // whose socket writes everything at once.
        let conns: Vec<ConnId> = (0..4).map(|_| h.connect()).collect();
        for (conn, tenths) in conns.iter().zip(&intervals) {
            for symbol in symbols {
                subscribe_paced(&mut h, *conn, &[symbol], *tenths);
            }
        }
        for conn in &conns[..3] {
            h.reading.remove(conn);
        }
        let reader = 3;
        let mut reader_interval = Duration::from_millis(intervals[reader] * 100);
        // When the reader was last sent a data update carrying data, per symbol.
        let mut reader_last: BTreeMap<String, Instant> = BTreeMap::new();
        let mut latest = [0.0f64; 3];
        let mut views: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new(); 4];
        let mut last_seen: Vec<BTreeMap<String, f64>> = vec![BTreeMap::new(); 4];
        let check = |h: &mut Harness,
                     views: &mut Vec<BTreeMap<String, Value>>,
                     last_seen: &mut Vec<BTreeMap<String, f64>>,
                     reader_last: &mut BTreeMap<String, Instant>,
                     reader_interval: Duration,
                     resubscribed: bool|
         -> Result<(), TestCaseError> {
            for (index, conn) in conns.iter().enumerate() {
                for message in h.take(*conn) {
                    apply(&mut views[index], &message);
                    if let Some(symbol) = message["symbol"].as_str()
                        && let Some(price) = views[index][symbol]["lp"].as_f64()
                    {
                        let before = last_seen[index].insert(symbol.to_owned(), price);
                        prop_assert!(before.is_none_or(|before| before <= price),
                            "{symbol}: {before:?} then {price}");
                    }
                    let carries_data = (message["type"] == "snapshot" && !message["quote"].is_null())
                        || message["type"] == "quote";
                    if index == reader && carries_data && let Some(symbol) = message["symbol"].as_str() {
                        // A re-subscribe's answer may come early: the client asked for it.
                        let answer = resubscribed && message["type"] == "snapshot";
                        if let Some(last) = reader_last.insert(symbol.to_owned(), h.now)
                            && !reader_interval.is_zero()
                            && !answer
                        {
                            prop_assert!(h.now - last >= reader_interval,
                                "{symbol}: updates {:?} apart, interval {reader_interval:?}",
                                h.now - last);
                        }
                    }
                }
                let connection = &h.hub.connections[conn];
                prop_assert!(connection.waiting() <= capacity + CONTROL_HEADROOM);
                prop_assert!(connection.in_flight <= window);
            }
            h.check_pacing();
            Ok(())
        };
        for step in steps {
            let mut resubscribed = false;
            match step {
                Step::Update(symbol) => {
                    latest[symbol] += 1.0;
                    h.quote(symbols[symbol], latest[symbol]);
                }
                Step::Write(conn, count) => {
                    let unwritten = h.unwritten.entry(conns[conn]).or_default();
                    let count = count.min(*unwritten);
                    *unwritten -= count;
                    h.hub.handle_written(h.now, conns[conn], count);
                    h.drain();
                }
                Step::Tick(ms) => h.advance(Duration::from_millis(ms)),
                Step::Resubscribe(conn, tenths) => {
                    subscribe_paced(&mut h, conns[conn], &symbols, tenths);
                    if conn == reader {
                        reader_interval = Duration::from_millis(tenths * 100);
                        resubscribed = true;
                    }
                }
            }
            check(&mut h, &mut views, &mut last_seen, &mut reader_last, reader_interval, resubscribed)?;
        }
        for conn in &conns {
            h.reading.insert(*conn);
            let unwritten = h.unwritten.insert(*conn, 0).unwrap_or(0);
            h.hub.handle_written(h.now, *conn, unwritten);
            h.drain();
        }
        check(&mut h, &mut views, &mut last_seen, &mut reader_last, reader_interval, false)?;
        // Every interval ends: whatever was held goes out.
        h.advance(Duration::from_secs(3));
        check(&mut h, &mut views, &mut last_seen, &mut reader_last, reader_interval, false)?;
        prop_assert!(h.hub.pace_timers.is_empty());
        for view in &views {
            for (index, symbol) in symbols.iter().enumerate() {
                let expected = (latest[index] > 0.0).then_some(latest[index]);
                prop_assert_eq!(view.get(*symbol).and_then(|quote| quote["lp"].as_f64()), expected);
            }
        }
        prop_assert!(h.closed.is_empty());
    }

    /// Subscriptions (and their update intervals) match a plain model after any sequence of
    /// subscribes, unsubscribes, disconnects and updates, no held update outlives its
    /// subscription, and the upstream set is exactly the symbols someone wants once lingers end.
    #[test]
    fn subscription_bookkeeping_matches_a_model(
        ops in proptest::collection::vec((0..4usize, 0..4u8, 0..5usize, interval()), 1..200),
        batched in any::<bool>(),
    ) {
        let mut h = Harness::new(HubConfig {
            upstream_batch_delay: if batched { Duration::from_millis(300) } else { Duration::ZERO },
            ..config()
        });
        let symbols = ["A", "B", "C", "D", "E"];
        let mut conns: Vec<ConnId> = (0..4).map(|_| h.connect()).collect();
        let mut model: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
        let mut paces: BTreeMap<(usize, &str), Duration> = BTreeMap::new();
        let mut price = 0.0;
        for (slot, op, symbol, tenths) in ops {
            let name = symbols[symbol];
            match op {
                0 => {
                    subscribe_paced(&mut h, conns[slot], &[name], tenths);
                    model.entry(slot).or_default().insert(name);
                    paces.insert((slot, name), Duration::from_millis(tenths * 100));
                }
                1 => {
                    h.send(conns[slot], &json!({"action":"unsubscribe","symbols":[name]}).to_string());
                    model.entry(slot).or_default().remove(name);
                }
                2 => {
                    h.hub.disconnect(h.now, conns[slot], CloseReason::ClientClosed);
                    conns[slot] = h.connect();
                    model.remove(&slot);
                }
                _ => {
                    // Two changes at once: a paced subscriber gets the first and holds the second.
                    price += 1.0;
                    h.quote(name, price);
                    price += 1.0;
                    h.quote(name, price);
                }
            }
            h.check_pacing();
            // Part of an interval, then past the upstream batch delay.
            h.advance(Duration::from_millis(tenths * 37));
            h.check_pacing();
            h.advance(Duration::from_millis(700));
            h.check_pacing();
            for (slot, conn) in conns.iter().enumerate() {
                let held: BTreeSet<&str> = h.hub.subscriptions(*conn).map(|s| s.as_ref()).collect();
                prop_assert_eq!(&held, &model.get(&slot).cloned().unwrap_or_default());
                for symbol in &held {
                    let expected = paces.get(&(slot, *symbol)).filter(|pace| !pace.is_zero()).copied();
                    prop_assert_eq!(h.hub.update_interval(*conn, symbol), expected);
                }
            }
            for (symbol, count, upstream) in h.hub.symbols() {
                let wanted = model.values().filter(|set| set.contains(symbol.as_ref())).count();
                prop_assert_eq!(count, wanted);
                prop_assert!(upstream);
                prop_assert!(h.upstream.contains(symbol));
            }
            // Everything wanted is subscribed upstream.
            for set in model.values() {
                for symbol in set {
                    prop_assert!(h.upstream.contains(*symbol));
                }
            }
        }
        h.advance(6 * SECOND);
        // A linger that just ended is told upstream with the next batch.
        h.advance(SECOND);
        let wanted: BTreeSet<Arc<str>> = model.values().flatten().map(|s| Arc::from(*s)).collect();
        prop_assert_eq!(&h.upstream, &wanted);
    }
}

#[derive(Debug, Clone)]
enum Request {
    Connect,
    Disconnect(usize),
    /// Slot, symbols, padding, and which `update_interval` (see [`interval_value`]).
    Subscribe(usize, Vec<usize>, usize, usize),
    Unsubscribe(usize, Vec<usize>),
    Wait(u64),
}

/// `update_interval` values a client might send: absent, valid, out of bounds, not numbers.
const INTERVAL_VALUES: [&str; 8] = ["", "0.5", "3600", "0.1", "0.01", "7200", "\"1\"", "null"];

/// The subscribe field for [`INTERVAL_VALUES`]`[index]`, and whether it is acceptable.
fn interval_value(index: usize) -> (Option<Value>, bool) {
    let text = INTERVAL_VALUES[index];
    if text.is_empty() {
        return (None, true);
    }
    (Some(serde_json::from_str(text).unwrap()), index <= 3)
}

fn request() -> impl Strategy<Value = Request> {
    let symbols = proptest::collection::vec(0..6usize, 0..4);
    prop_oneof![
        1 => Just(Request::Connect),
        1 => (0..4usize).prop_map(Request::Disconnect),
        5 => (0..4usize, symbols.clone(), 0..80usize, 0..INTERVAL_VALUES.len())
            .prop_map(|(slot, symbols, pad, interval)| Request::Subscribe(slot, symbols, pad, interval)),
        2 => (0..4usize, symbols).prop_map(|(slot, symbols)| Request::Unsubscribe(slot, symbols)),
        1 => (0..3_000u64).prop_map(Request::Wait),
    ]
}

proptest! {
    /// Under any sequence of connects, disconnects and (possibly oversized) requests, every
    /// answer is the one the whitelist and the limits call for, in request order, and nothing
    /// outside the whitelist or beyond a limit is ever held, here or upstream.
    #[test]
    fn whitelist_and_limits_decide_every_answer(
        requests in proptest::collection::vec(request(), 1..120),
        allowed in proptest::collection::vec(any::<bool>(), 6),
        max_connections in 1usize..4,
        max_subscriptions in 1usize..4,
        max_upstream in 1usize..5,
        max_message_bytes in 40usize..120,
    ) {
        let universe = ["A", "B", "C", "D", "E", "F"];
        let whitelist: BTreeSet<Arc<str>> = universe
            .iter()
            .zip(&allowed)
            .filter(|(_, allowed)| **allowed)
            .map(|(symbol, _)| Arc::from(*symbol))
            .collect();
        let mut h = Harness::new(HubConfig {
            max_connections,
            max_subscriptions_per_connection: max_subscriptions,
            max_upstream_symbols: max_upstream,
            max_message_bytes,
            messages_per_second: 1_000,
            message_burst: 1_000,
            whitelist: Some(whitelist.clone()),
            ..config()
        });
        let mut slots: Vec<Option<ConnId>> = vec![None; 4];
        // The model: what each slot's connection holds.
        let mut held: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); 4];
        for request in requests {
            match request {
                Request::Connect => {
                    let open = slots.iter().flatten().count();
                    let Some(free) = slots.iter().position(Option::is_none) else { continue };
                    match h.hub.connect(h.now) {
                        Ok(conn) => {
                            prop_assert!(open < max_connections);
                            h.reading.insert(conn);
                            h.drain();
                            h.take(conn);
                            slots[free] = Some(conn);
                        }
                        Err(refused) => {
                            prop_assert_eq!(open, max_connections);
                            prop_assert!(refused.frame.as_str().contains("CONNECTION_LIMIT"));
                        }
                    }
                }
                Request::Disconnect(slot) => {
                    if let Some(conn) = slots[slot].take() {
                        h.hub.disconnect(h.now, conn, CloseReason::ClientClosed);
                        h.drain();
                        held[slot].clear();
                    }
                }
                Request::Subscribe(slot, symbols, pad, interval) => {
                    let Some(conn) = slots[slot] else { continue };
                    let names: Vec<&str> = symbols.iter().map(|index| universe[*index]).collect();
                    let mut request = json!({"action": "subscribe", "symbols": names, "pad": "x".repeat(pad)});
                    let (interval, acceptable) = interval_value(interval);
                    if let Some(interval) = interval {
                        request["update_interval"] = interval;
                    }
                    let text = request.to_string();
                    let mut expected: Vec<(String, String)> = Vec::new();
                    if text.len() > max_message_bytes {
                        expected.push(("error".into(), "MESSAGE_TOO_LARGE".into()));
                    } else if names.is_empty() || !acceptable {
                        expected.push(("error".into(), "BAD_REQUEST".into()));
                    } else {
                        for name in &names {
                            let wanted: BTreeSet<&str> = held.iter().flatten().copied().collect();
                            let answer = if !whitelist.contains(*name) {
                                "SYMBOL_NOT_ALLOWED"
                            } else if !held[slot].contains(name) && held[slot].len() >= max_subscriptions {
                                "SUBSCRIPTION_LIMIT"
                            } else if !wanted.contains(name) && wanted.len() >= max_upstream {
                                // Lingering symbols make room; wanted ones never do.
                                "SYMBOL_LIMIT"
                            } else {
                                held[slot].insert(name);
                                "snapshot"
                            };
                            let kind = if answer == "snapshot" { "snapshot" } else { "error" };
                            expected.push((kind.into(), answer.into()));
                        }
                    }
                    h.send(conn, &text);
                    let got: Vec<(String, String)> = h
                        .take(conn)
                        .iter()
                        .map(|message| {
                            let kind = message["type"].as_str().unwrap_or_default().to_owned();
                            let detail = if kind == "error" { &message["code"] } else { &message["type"] };
                            (kind, detail.as_str().unwrap_or_default().to_owned())
                        })
                        .collect();
                    prop_assert_eq!(got, expected, "{}", text);
                }
                Request::Unsubscribe(slot, symbols) => {
                    let Some(conn) = slots[slot] else { continue };
                    let names: Vec<&str> = symbols.iter().map(|index| universe[*index]).collect();
                    let text = json!({"action": "unsubscribe", "symbols": names}).to_string();
                    h.send(conn, &text);
                    let replies = h.take(conn);
                    if text.len() > max_message_bytes {
                        prop_assert_eq!(replies.len(), 1);
                        prop_assert_eq!(&replies[0]["code"], "MESSAGE_TOO_LARGE");
                    } else if names.is_empty() {
                        prop_assert_eq!(replies.len(), 1);
                        prop_assert_eq!(&replies[0]["code"], "BAD_REQUEST");
                    } else {
                        for name in &names {
                            held[slot].remove(name);
                        }
                        prop_assert_eq!(replies.len(), names.len());
                        prop_assert!(replies.iter().all(|reply| reply["type"] == "unsubscribed"));
                    }
                }
                Request::Wait(ms) => h.advance(Duration::from_millis(ms)),
            }
            prop_assert_eq!(h.hub.connection_count(), slots.iter().flatten().count());
            for (slot, conn) in slots.iter().enumerate() {
                let Some(conn) = conn else { continue };
                let holds: BTreeSet<&str> = h.hub.subscriptions(*conn).map(|s| s.as_ref()).collect();
                prop_assert_eq!(&holds, &held[slot]);
                prop_assert!(holds.len() <= max_subscriptions);
            }
            prop_assert!(h.hub.symbols().count() <= max_upstream);
            prop_assert!(h.upstream.len() <= max_upstream);
            prop_assert!(h.upstream.is_subset(&whitelist));
            prop_assert!(h.closed.is_empty());
        }
    }
}

//! The query-driven relay: which rows reach which subscribers, what a failure leaves in
//! place, and when the query runs, all with the time passed in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tickwire_core::hub::{ConnId, FanoutOutput, HubConfig};
use tickwire_core::query::{QueryConfig, QueryFanout, QueryOutput, QueryRow};

struct Harness {
    relay: QueryFanout,
    now: Instant,
    /// The run asked for and not yet answered.
    run: Option<u64>,
    /// Frames received per connection, parsed.
    frames: BTreeMap<ConnId, Vec<Value>>,
}

fn row(symbol: &str, columns: Value) -> QueryRow {
    let Value::Object(map) = columns else {
        panic!("columns must be an object")
    };
    QueryRow {
        symbol: Arc::from(symbol),
        columns: map.into_iter().collect(),
    }
}

impl Harness {
    fn new(query: QueryConfig) -> Harness {
        Harness::with_hub(query, HubConfig::default())
    }

    fn with_hub(query: QueryConfig, hub: HubConfig) -> Harness {
        let now = Instant::now();
        let hub = HubConfig {
            upstream_batch_delay: Duration::ZERO,
            ..hub
        };
        let mut harness = Harness {
            relay: QueryFanout::new(hub, query, now).unwrap(),
            now,
            run: None,
            frames: BTreeMap::new(),
        };
        harness.drain();
        harness
    }

    fn drain(&mut self) {
        while let Some(output) = self.relay.poll_output(self.now) {
            match output {
                QueryOutput::Run { id } => {
                    assert!(self.run.is_none(), "a second run while one is in flight");
                    self.run = Some(id);
                }
                QueryOutput::Downstream(FanoutOutput::Transmit { conn, frame }) => {
                    self.relay.fanout_mut().handle_written(self.now, conn, 1);
                    let value: Value = serde_json::from_str(frame.as_str()).unwrap();
                    self.frames.entry(conn).or_default().push(value);
                }
                QueryOutput::Downstream(FanoutOutput::Close { .. }) => {}
            }
        }
    }

    fn subscribe(&mut self, symbols: &[&str]) -> ConnId {
        let conn = self.relay.fanout_mut().connect(self.now).unwrap();
        let request = json!({"action": "subscribe", "symbols": symbols}).to_string();
        self.relay
            .fanout_mut()
            .handle_text(self.now, conn, &request);
        self.drain();
        conn
    }

    /// Answers the run in flight.
    fn answer(&mut self, result: Result<Vec<QueryRow>, String>) {
        let id = self.run.take().expect("no run in flight");
        self.relay.handle_result(self.now, id, result);
        self.drain();
    }

    /// Moves time to the next deadline and handles it.
    fn advance(&mut self) -> Duration {
        let next = self.relay.poll_timeout().expect("nothing is due");
        let waited = next.saturating_duration_since(self.now);
        self.now = next.max(self.now);
        self.relay.handle_timeout(self.now);
        self.drain();
        waited
    }

    /// Moves time until a run is asked for; returns how long that took.
    fn until_run(&mut self) -> Duration {
        let mut waited = Duration::ZERO;
        while self.run.is_none() {
            waited += self.advance();
        }
        waited
    }

    /// Takes the frames other than status a connection received since the last call (the
    /// status frames stay, for [`Harness::statuses`]).
    fn take(&mut self, conn: ConnId) -> Vec<Value> {
        let frames = self.frames.remove(&conn).unwrap_or_default();
        let (statuses, others): (Vec<Value>, Vec<Value>) = frames
            .into_iter()
            .partition(|frame| frame["type"] == "status");
        self.frames.insert(conn, statuses);
        others
    }

    fn statuses(&mut self, conn: ConnId) -> Vec<String> {
        self.frames
            .get(&conn)
            .into_iter()
            .flatten()
            .filter(|frame| frame["type"] == "status")
            .map(|frame| frame["upstream"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
}

#[test]
fn only_the_symbols_whose_rows_changed_are_broadcast_and_only_to_their_subscribers() {
    let mut h = Harness::new(QueryConfig::default());
    let btc = h.subscribe(&["BINANCE:BTCUSDT"]);
    let both = h.subscribe(&["BINANCE:BTCUSDT", "BINANCE:ETHUSDT"]);
    h.take(btc);
    h.take(both);
    h.answer(Ok(vec![
        row("BINANCE:BTCUSDT", json!({"close": 97000.5, "volume": 12})),
        row("BINANCE:ETHUSDT", json!({"close": 3500.0, "volume": 40})),
        row("BINANCE:SOLUSDT", json!({"close": 180.0})),
    ]));
    let first = h.take(btc);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["type"], "quote");
    assert_eq!(first[0]["data"], json!({"close": 97000.5, "volume": 12}));
    assert_eq!(h.take(both).len(), 2);

    // Next run: ETH changed its close only, BTC and SOL did not change.
    h.until_run();
    h.answer(Ok(vec![
        row("BINANCE:BTCUSDT", json!({"close": 97000.5, "volume": 12})),
        row("BINANCE:ETHUSDT", json!({"close": 3501.0, "volume": 40})),
        row("BINANCE:SOLUSDT", json!({"close": 180.0})),
    ]));
    assert!(
        h.take(btc).is_empty(),
        "an unchanged row reached a subscriber"
    );
    let changed = h.take(both);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["symbol"], "BINANCE:ETHUSDT");
    assert_eq!(changed[0]["data"], json!({"close": 3501.0}));

    // A column gone from a row is cleared; a symbol gone from the result keeps its state.
    h.until_run();
    h.answer(Ok(vec![row("BINANCE:ETHUSDT", json!({"close": 3501.0}))]));
    assert!(h.take(btc).is_empty());
    let cleared = h.take(both);
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0]["data"], json!({"volume": null}));
    let counters = h.relay.source().counters().clone();
    assert_eq!(counters.runs, 3);
    assert_eq!(counters.rows, 7);
    assert_eq!(counters.rows_changed, 5);
    assert_eq!(counters.rows_unchanged, 2);
    assert_eq!(
        h.relay
            .source()
            .state_of("BINANCE:BTCUSDT")
            .map(|quote| quote.other.get("volume").cloned()),
        Some(Some(json!(12)))
    );
}

#[test]
fn a_new_subscriber_gets_the_held_state_at_once_as_a_snapshot() {
    let mut h = Harness::new(QueryConfig::default());
    h.answer(Ok(vec![row("NASDAQ:AAPL", json!({"close": 230.1}))]));
    let late = h.subscribe(&["NASDAQ:AAPL"]);
    let frames = h.take(late);
    // The hub's immediate (empty) snapshot, then the held state replacing it.
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0]["quote"], Value::Null);
    assert_eq!(frames[1]["type"], "snapshot");
    assert_eq!(frames[1]["quote"], json!({"close": 230.1}));
    assert!(h.run.is_none(), "no run was due yet");
    // A second subscriber of a symbol already wanted gets the state in its first snapshot.
    let second = h.subscribe(&["NASDAQ:AAPL"]);
    let frames = h.take(second);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["quote"], json!({"close": 230.1}));
}

#[test]
fn good_runs_come_every_interval_measured_from_their_start() {
    let config = QueryConfig {
        interval: Duration::from_secs(5),
        ..QueryConfig::default()
    };
    let mut h = Harness::new(config);
    // The first run is asked for at once.
    assert!(h.run.is_some());
    h.answer(Ok(Vec::new()));
    assert_eq!(h.until_run(), Duration::from_secs(5));
    // A run that takes 2 s: the next starts 5 s after this one started.
    h.now += Duration::from_secs(2);
    h.answer(Ok(Vec::new()));
    assert_eq!(h.until_run(), Duration::from_secs(3));
    // A run slower than the interval: the next starts as soon as it ends.
    h.now += Duration::from_secs(7);
    h.answer(Ok(Vec::new()));
    assert_eq!(h.relay.poll_timeout(), Some(h.now));
    assert_eq!(h.until_run(), Duration::ZERO);
}

#[test]
fn a_failing_query_keeps_the_last_state_and_backs_off_with_jitter_never_at_a_fixed_rate() {
    let config = QueryConfig {
        interval: Duration::from_secs(5),
        max_backoff: Duration::from_secs(60),
        breaker_threshold: 4,
        ..QueryConfig::default()
    };
    // The backoff outlasts the default keepalive; the clients here stay.
    let hub = HubConfig {
        keepalive_timeout: Duration::from_secs(3600),
        ..HubConfig::default()
    };
    let mut h = Harness::with_hub(config, hub);
    let conn = h.subscribe(&["FX:EURUSD"]);
    h.answer(Ok(vec![row("FX:EURUSD", json!({"close": 1.08}))]));
    h.take(conn);
    h.frames.clear();

    let mut delays = Vec::new();
    for attempt in 0..8 {
        let waited = h.until_run();
        if attempt > 0 {
            delays.push(waited);
        }
        h.answer(Err("Conflicting lock is held".to_owned()));
        assert!(
            h.take(conn).is_empty(),
            "a failure must not touch the state"
        );
    }
    // The first retry comes after about one interval, then each waits about twice as long,
    // up to the cap: base 5, 10, 20, 40, 60, 60, 60 s, each ±20 %.
    let bases = [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0];
    for (delay, base) in delays.iter().zip(bases) {
        let seconds = delay.as_secs_f64();
        assert!(
            (base * 0.8..=base * 1.2).contains(&seconds),
            "{delays:?} against the bases {bases:?}"
        );
    }
    let capped: Vec<Duration> = delays[4..].to_vec();
    assert!(
        capped.windows(2).any(|pair| pair[0] != pair[1]),
        "the capped retries came at a fixed rate: {capped:?}"
    );
    assert_eq!(h.relay.source().counters().failures, 8);
    assert_eq!(h.relay.source().consecutive_failures(), 8);
    assert_eq!(
        h.relay.source().last_error(),
        Some("Conflicting lock is held")
    );
    assert_eq!(
        h.relay
            .source()
            .state_of("FX:EURUSD")
            .map(|quote| quote.other.clone()),
        Some(Arc::new(BTreeMap::from([(
            "close".to_owned(),
            json!(1.08)
        )])))
    );
    // Subscribers were told: backing off, then the breaker open from the 4th failure.
    assert_eq!(h.statuses(conn), ["backing_off", "circuit_open"]);
    // A new subscriber meanwhile gets the last good state.
    let newcomer = h.subscribe(&["FX:EURUSD"]);
    assert_eq!(h.take(newcomer)[0]["quote"], json!({"close": 1.08}));

    // One good run: live again, the interval restored, the change sent.
    h.frames.clear();
    h.until_run();
    h.answer(Ok(vec![row("FX:EURUSD", json!({"close": 1.09}))]));
    assert_eq!(h.statuses(conn), ["live"]);
    assert_eq!(h.take(conn)[0]["data"], json!({"close": 1.09}));
    assert_eq!(h.relay.source().consecutive_failures(), 0);
    assert_eq!(h.relay.source().last_error(), None);
    assert_eq!(h.until_run(), Duration::from_secs(5));
}

#[test]
fn a_run_that_times_out_counts_as_failed_and_the_next_waits_for_it_to_return() {
    let config = QueryConfig {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        ..QueryConfig::default()
    };
    let mut h = Harness::new(config);
    let conn = h.subscribe(&["FX:EURUSD"]);
    h.take(conn);
    let hung = h.run.take().unwrap();
    assert_eq!(h.advance(), Duration::from_secs(10));
    assert_eq!(h.relay.source().counters().timeouts, 1);
    assert_eq!(h.relay.source().counters().failures, 1);
    assert_eq!(h.statuses(conn), ["connecting", "backing_off"]);
    // Still running: no run is due, however long it takes.
    assert_eq!(h.relay.source().next_run(), None);
    h.now += Duration::from_secs(60);
    h.relay.handle_timeout(h.now);
    h.drain();
    assert!(
        h.run.is_none(),
        "a second run started while the first still ran"
    );
    // Its late rows are discarded; the backoff it earned still applies.
    h.relay.handle_result(
        h.now,
        hung,
        Ok(vec![row("FX:EURUSD", json!({"close": 1.0}))]),
    );
    h.drain();
    assert!(h.take(conn).is_empty());
    assert_eq!(h.relay.source().symbol_count(), 0);
    // Its backoff passed while it hung: the next run is due now, not in the past.
    assert_eq!(h.relay.source().next_run(), Some(h.now));
    assert!(h.relay.poll_timeout().is_some());
    h.until_run();
    h.answer(Ok(vec![row("FX:EURUSD", json!({"close": 1.1}))]));
    assert_eq!(h.take(conn)[0]["data"], json!({"close": 1.1}));
}

#[test]
fn results_for_other_runs_are_ignored() {
    let mut h = Harness::new(QueryConfig::default());
    let conn = h.subscribe(&["FX:EURUSD"]);
    h.take(conn);
    let id = h.run.unwrap();
    h.relay.handle_result(
        h.now,
        id.wrapping_add(7),
        Ok(vec![row("FX:EURUSD", json!({"close": 1.0}))]),
    );
    h.drain();
    assert!(h.take(conn).is_empty());
    assert_eq!(h.run, Some(id));
}

#[test]
fn rows_past_the_limits_are_dropped_and_counted() {
    let config = QueryConfig {
        max_rows: 2,
        max_row_bytes: 64,
        ..QueryConfig::default()
    };
    let hub = HubConfig {
        max_symbol_bytes: 16,
        ..HubConfig::default()
    };
    let mut h = Harness::with_hub(config, hub);
    let conn = h.subscribe(&["A:ONE", "A:TWO", "A:THREE", "A:FOUR"]);
    h.take(conn);
    h.answer(Ok(vec![
        row("A:FOUR", json!({"note": "x".repeat(100)})),
        row("A:ONE", json!({"close": 1})),
        row("A:ONE", json!({"close": 99})),
        row("", json!({"close": 1})),
        row("A:MUCH-TOO-LONG-SYMBOL", json!({"close": 1})),
        row("A:TWO", json!({"close": 2})),
        row("A:THREE", json!({"close": 3})),
    ]));
    let counters = h.relay.source().counters().clone();
    assert_eq!(counters.rows, 7);
    // The repeated A:ONE, the empty and the overlong symbol.
    assert_eq!(counters.rows_invalid, 3);
    // A:FOUR's row is too big, A:THREE comes when max_rows symbols are held.
    assert_eq!(counters.rows_over_limit, 2);
    assert_eq!(h.relay.source().symbol_count(), 2);
    let frames = h.take(conn);
    let sent: Vec<(&str, &Value)> = frames
        .iter()
        .map(|frame| (frame["symbol"].as_str().unwrap_or("?"), &frame["data"]))
        .collect();
    assert_eq!(
        sent,
        [
            ("A:ONE", &json!({"close": 1})),
            ("A:TWO", &json!({"close": 2}))
        ]
    );
    // A symbol already held still changes when the limit is reached.
    h.until_run();
    h.answer(Ok(vec![row("A:TWO", json!({"close": 2.5}))]));
    assert_eq!(h.take(conn)[0]["data"], json!({"close": 2.5}));
}

#[test]
fn symbols_the_whitelist_refuses_are_never_sent() {
    let hub = HubConfig {
        whitelist: Some([Arc::from("FX:EURUSD")].into_iter().collect()),
        ..HubConfig::default()
    };
    let mut h = Harness::with_hub(QueryConfig::default(), hub);
    let conn = h.subscribe(&["FX:EURUSD", "FX:GBPUSD"]);
    let answer = h.take(conn);
    assert!(
        answer
            .iter()
            .any(|frame| frame["type"] == "error" && frame["symbol"] == "FX:GBPUSD"),
        "{answer:?}"
    );
    h.answer(Ok(vec![
        row("FX:EURUSD", json!({"close": 1.08})),
        row("FX:GBPUSD", json!({"close": 1.27})),
    ]));
    let frames = h.take(conn);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["symbol"], "FX:EURUSD");
}

#[test]
fn a_symbol_nobody_wants_any_more_is_no_longer_sent() {
    let hub = HubConfig {
        linger: Duration::from_secs(1),
        ..HubConfig::default()
    };
    let mut h = Harness::with_hub(QueryConfig::default(), hub);
    let conn = h.subscribe(&["FX:EURUSD"]);
    h.answer(Ok(vec![row("FX:EURUSD", json!({"close": 1.08}))]));
    h.relay.fanout_mut().handle_text(
        h.now,
        conn,
        r#"{"action":"unsubscribe","symbols":["FX:EURUSD"]}"#,
    );
    h.drain();
    h.take(conn);
    h.until_run();
    assert!(
        !h.relay
            .fanout()
            .hub()
            .symbols()
            .any(|(symbol, ..)| &**symbol == "FX:EURUSD")
    );
    h.answer(Ok(vec![row("FX:EURUSD", json!({"close": 1.09}))]));
    assert!(h.take(conn).is_empty());
    // Its state is still held for whoever comes next.
    let next = h.subscribe(&["FX:EURUSD"]);
    assert_eq!(h.take(next)[1]["quote"], json!({"close": 1.09}));
}

#[test]
fn unusable_settings_are_refused_with_the_field_named() {
    let now = Instant::now();
    let bad = |query: QueryConfig| {
        QueryFanout::new(HubConfig::default(), query, now)
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad(QueryConfig {
            interval: Duration::from_millis(10),
            ..QueryConfig::default()
        })
        .contains("interval")
    );
    assert!(
        bad(QueryConfig {
            max_rows: 0,
            ..QueryConfig::default()
        })
        .contains("max_rows")
    );
    assert!(
        bad(QueryConfig {
            jitter: 2.0,
            ..QueryConfig::default()
        })
        .contains("jitter")
    );
}

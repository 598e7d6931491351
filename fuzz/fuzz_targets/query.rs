//! The query-fed relay (`QueryFanout`) driven by an arbitrary schedule: connections arrive,
//! subscribe, unsubscribe, report written batches and leave; the query's runs answer with
//! arbitrary rows (repeated symbols, invalid ones, oversized rows, rows equal to the last),
//! fail, answer late or for another run; time steps. After every step it checks what must hold
//! whatever the query returns: at most one run is in flight, a data message goes out only for a
//! symbol whose row changed (or to a subscriber just answered), a failure changes no state and
//! the next attempt is never sooner than the interval less its jitter, the held symbols stay
//! within `max_rows`, and the next deadline is never in the past.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tickwire_core::hub::{ConnId, FanoutOutput, HubConfig};
use tickwire_core::query::{QueryConfig, QueryFanout, QueryOutput, QueryRow};

const SYMBOLS: &[&str] = &["A:X", "B:Y", "C:Z", "D:W", "", "bad symbol"];
const COLUMNS: &[&str] = &["close", "volume", "lp", "note"];
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(2);
const JITTER: f64 = 0.2;
const MAX_ROWS: usize = 3;
const MAX_SYMBOL_BYTES: usize = 8;

#[derive(Arbitrary, Debug)]
enum Op {
    Connect,
    Disconnect(u8),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    Written(u8, u8),
    /// The run in flight answers with these rows: (symbol, columns as (name, value)).
    Rows(Vec<(u8, Vec<(u8, i8)>)>),
    /// The run in flight fails.
    Fail,
    /// A result for a run that is not the one in flight.
    Stray(u8),
    /// A row too big to hold.
    Oversized(u8),
    Advance(u16),
}

struct Harness {
    relay: QueryFanout,
    now: Instant,
    conns: Vec<ConnId>,
    running: Option<u64>,
    /// What each connection still owes the hub as written.
    unwritten: BTreeMap<ConnId, usize>,
    /// The run in flight timed out (its result will be discarded).
    running_timed_out: bool,
    /// The source's states as the schedule made them: symbol → columns.
    model: BTreeMap<String, BTreeMap<String, Value>>,
}

fn mask(bits: u8) -> Vec<&'static str> {
    SYMBOLS
        .iter()
        .enumerate()
        .filter(|(index, _)| bits & (1 << index) != 0)
        .map(|(_, symbol)| *symbol)
        .collect()
}

impl Harness {
    /// Drains; returns the symbols data messages were sent for.
    fn drain(&mut self) -> BTreeSet<String> {
        let mut data = BTreeSet::new();
        while let Some(output) = self.relay.poll_output(self.now) {
            match output {
                QueryOutput::Run { id } => {
                    assert!(
                        self.running.is_none(),
                        "a second run while one is in flight"
                    );
                    self.running = Some(id);
                }
                QueryOutput::Downstream(FanoutOutput::Transmit { conn, frame }) => {
                    *self.unwritten.entry(conn).or_default() += 1;
                    let value: Value = serde_json::from_str(frame.as_str()).expect("JSON frame");
                    if matches!(value["type"].as_str(), Some("quote" | "snapshot")) {
                        if let Some(symbol) = value["symbol"].as_str() {
                            data.insert(symbol.to_owned());
                        }
                    }
                }
                QueryOutput::Downstream(FanoutOutput::Close { conn, .. }) => {
                    self.unwritten.remove(&conn);
                    self.conns.retain(|held| *held != conn);
                }
            }
        }
        data
    }

    fn check_bounds(&self) {
        let source = self.relay.source();
        assert!(
            source.symbol_count() <= MAX_ROWS,
            "{} symbols held",
            source.symbol_count()
        );
        for (symbol, columns) in &self.model {
            let held = source.state_of(symbol).map(|quote| quote.other.as_ref());
            assert_eq!(held, Some(columns), "{symbol}: the source's state drifted");
        }
        if let Some(deadline) = self.relay.poll_timeout() {
            assert!(deadline >= self.now, "a deadline in the past");
        }
    }

    /// The model's states after `rows`, by the source's rules (a symbol's first row in a
    /// result counts, an empty or overlong symbol is dropped, so is an oversized row, and a new
    /// symbol past `max_rows`), and the symbols whose state they change.
    fn apply(
        &self,
        rows: &[QueryRow],
    ) -> (BTreeMap<String, BTreeMap<String, Value>>, BTreeSet<String>) {
        let mut model = self.model.clone();
        let mut changed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for row in rows {
            let symbol = row.symbol.to_string();
            if symbol.is_empty() || symbol.len() > MAX_SYMBOL_BYTES || !seen.insert(symbol.clone())
            {
                continue;
            }
            let size = serde_json::to_vec(&row.columns).map_or(usize::MAX, |json| json.len());
            if size > QueryConfig::default().max_row_bytes
                || (!model.contains_key(&symbol) && model.len() >= MAX_ROWS)
            {
                continue;
            }
            if model.get(&symbol) != Some(&row.columns) {
                changed.insert(symbol.clone());
                model.insert(symbol, row.columns.clone());
            }
        }
        (model, changed)
    }

    /// The run in flight answers with `result`.
    fn answer(&mut self, result: Result<Vec<QueryRow>, String>) {
        let Some(id) = self.running.take() else {
            return;
        };
        let timed_out = std::mem::take(&mut self.running_timed_out);
        let failed = result.is_err();
        let after_rows = result.as_ref().ok().map(|rows| self.apply(rows));
        let failures = self.relay.source().counters().failures;
        self.relay.handle_result(self.now, id, result);
        let sent = self.drain();
        match after_rows {
            _ if timed_out => {
                assert!(
                    sent.is_empty(),
                    "the late result of a timed-out run sent {sent:?}"
                );
            }
            Some((model, changed)) => {
                self.model = model;
                for symbol in &sent {
                    assert!(
                        changed.contains(symbol),
                        "{symbol} was sent but its row did not change"
                    );
                }
            }
            None => {
                assert!(sent.is_empty(), "a failed run sent {sent:?}");
            }
        }
        if failed && !timed_out {
            assert_eq!(self.relay.source().counters().failures, failures + 1);
            let next = self.relay.source().next_run().expect("a next attempt");
            let wait = next.saturating_duration_since(self.now);
            assert!(
                wait.as_secs_f64() >= INTERVAL.as_secs_f64() * (1.0 - JITTER) - 1e-6,
                "retry after {wait:?}, sooner than the interval less its jitter"
            );
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Instant::now();
    let hub = HubConfig {
        upstream_batch_delay: Duration::ZERO,
        linger: Duration::from_millis(300),
        max_symbol_bytes: MAX_SYMBOL_BYTES,
        send_window: 4,
        ..HubConfig::default()
    };
    let query = QueryConfig {
        interval: INTERVAL,
        timeout: TIMEOUT,
        max_rows: MAX_ROWS,
        jitter: JITTER,
        max_backoff: Duration::from_secs(2),
        seed: 7,
        ..QueryConfig::default()
    };
    let Ok(relay) = QueryFanout::new(hub, query, start) else {
        return;
    };
    let mut h = Harness {
        relay,
        now: start,
        conns: Vec::new(),
        running: None,
        unwritten: BTreeMap::new(),
        running_timed_out: false,
        model: BTreeMap::new(),
    };
    h.drain();
    for op in ops.into_iter().take(400) {
        match op {
            Op::Connect => {
                if let Ok(conn) = h.relay.fanout_mut().connect(h.now) {
                    h.conns.push(conn);
                }
                h.drain();
            }
            Op::Disconnect(which) => {
                if let Some(&conn) = h.conns.get(usize::from(which) % h.conns.len().max(1)) {
                    h.relay.fanout_mut().disconnect(
                        h.now,
                        conn,
                        tickwire_core::hub::CloseReason::ClientClosed,
                    );
                    h.conns.retain(|held| *held != conn);
                    h.unwritten.remove(&conn);
                }
                h.drain();
            }
            Op::Subscribe(which, bits) | Op::Unsubscribe(which, bits) if !h.conns.is_empty() => {
                let conn = h.conns[usize::from(which) % h.conns.len()];
                let action = if matches!(op, Op::Subscribe(..)) {
                    "subscribe"
                } else {
                    "unsubscribe"
                };
                let request =
                    serde_json::json!({"action": action, "symbols": mask(bits)}).to_string();
                h.relay.fanout_mut().handle_text(h.now, conn, &request);
                h.drain();
            }
            Op::Subscribe(..) | Op::Unsubscribe(..) => {}
            Op::Written(which, frames) => {
                if let Some(&conn) = h.conns.get(usize::from(which) % h.conns.len().max(1)) {
                    let owed = h.unwritten.get(&conn).copied().unwrap_or(0);
                    let frames = usize::from(frames).min(owed);
                    if frames > 0 {
                        h.relay.fanout_mut().handle_written(h.now, conn, frames);
                        *h.unwritten.entry(conn).or_default() -= frames;
                    }
                }
                h.drain();
            }
            Op::Rows(rows) => {
                let rows = rows
                    .into_iter()
                    .take(8)
                    .map(|(symbol, columns)| QueryRow {
                        symbol: Arc::from(SYMBOLS[usize::from(symbol) % SYMBOLS.len()]),
                        columns: columns
                            .into_iter()
                            .take(4)
                            .map(|(name, value)| {
                                (
                                    COLUMNS[usize::from(name) % COLUMNS.len()].to_owned(),
                                    Value::from(value),
                                )
                            })
                            .collect(),
                    })
                    .collect();
                h.answer(Ok(rows));
            }
            Op::Fail => h.answer(Err("the query failed".to_owned())),
            Op::Stray(offset) => {
                let id = h.running.map_or(u64::from(offset), |id| {
                    id.wrapping_add(u64::from(offset).max(1))
                });
                let before = h.relay.source().counters().clone();
                h.relay.handle_result(h.now, id, Ok(Vec::new()));
                assert_eq!(
                    &before,
                    h.relay.source().counters(),
                    "a stray result was taken"
                );
                h.drain();
            }
            Op::Oversized(symbol) => {
                let row = QueryRow {
                    symbol: Arc::from(SYMBOLS[usize::from(symbol) % SYMBOLS.len()]),
                    columns: BTreeMap::from([("note".to_owned(), Value::from("x".repeat(20_000)))]),
                };
                h.answer(Ok(vec![row]));
            }
            Op::Advance(ms) => {
                let target = h.now + Duration::from_millis(u64::from(ms));
                loop {
                    let due = h.relay.poll_timeout().filter(|at| *at <= target);
                    h.now = due.unwrap_or(target).max(h.now);
                    let timeouts = h.relay.source().counters().timeouts;
                    h.relay.handle_timeout(h.now);
                    if h.relay.source().counters().timeouts > timeouts {
                        h.running_timed_out = true;
                    }
                    h.drain();
                    if let Some(next) = h.relay.source().next_run() {
                        assert!(next > h.now, "a run due now was not started");
                    }
                    if due.is_none() {
                        break;
                    }
                }
            }
        }
        h.check_bounds();
    }
});

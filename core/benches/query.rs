//! What one run of a query-fed relay costs the core: taking the rows, comparing each with the
//! symbol's last one, and sending the changed ones to their subscribers.
//!
//! Run: `cargo bench -p tickwire-core --bench query`
//!
//! 10 000 symbols held, 1 000 connections each subscribed to 10 of the first 1 000 symbols.
//! Each iteration answers one run with all 10 000 rows (five columns each): "unchanged" repeats
//! the last result (nothing is sent), "10 % changed" gives 1 000 rows a new close (100 of
//! them subscribed, 10 recipients each). Elements are rows taken.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use tickwire_core::hub::{FanoutOutput, HubConfig};
use tickwire_core::query::{QueryConfig, QueryFanout, QueryOutput, QueryRow};

const ROWS: usize = 10_000;
const CONNECTIONS: usize = 1_000;
const PER_CONNECTION: usize = 10;
const SUBSCRIBED: usize = 1_000;

fn symbol(index: usize) -> Arc<str> {
    Arc::from(format!("EX:S{index}"))
}

fn rows(symbols: &[Arc<str>], round: u64, changed_every: usize) -> Vec<QueryRow> {
    symbols
        .iter()
        .enumerate()
        .map(|(index, symbol)| {
            let moved = changed_every != 0 && index % changed_every == 0;
            let close = 100.0 + index as f64 + if moved { round as f64 } else { 0.0 };
            let columns: BTreeMap<String, Value> = [
                ("lp", json!(close)),
                ("open", json!(99.5)),
                ("high", json!(close + 1.0)),
                ("low", json!(98.0)),
                ("volume", json!(1_000 + index)),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
            QueryRow {
                symbol: symbol.clone(),
                columns,
            }
        })
        .collect()
}

struct Fixture {
    relay: QueryFanout,
    now: Instant,
    run: Option<u64>,
    symbols: Vec<Arc<str>>,
    round: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let now = Instant::now();
        let hub = HubConfig {
            upstream_batch_delay: Duration::ZERO,
            max_upstream_symbols: ROWS,
            max_connections: CONNECTIONS,
            queue_capacity: 1 << 16,
            ..HubConfig::default()
        };
        let query = QueryConfig {
            max_rows: ROWS,
            ..QueryConfig::default()
        };
        let mut fixture = Fixture {
            relay: QueryFanout::new(hub, query, now).unwrap(),
            now,
            run: None,
            symbols: (0..ROWS).map(symbol).collect(),
            round: 0,
        };
        for index in 0..CONNECTIONS {
            let conn = fixture.relay.fanout_mut().connect(now).unwrap();
            let wanted: Vec<String> = (0..PER_CONNECTION)
                .map(|k| symbol((index + k * 97) % SUBSCRIBED).to_string())
                .collect();
            let request = json!({"action": "subscribe", "symbols": wanted}).to_string();
            fixture.relay.fanout_mut().handle_text(now, conn, &request);
        }
        fixture.drain();
        let first = rows(&fixture.symbols, 0, 0);
        fixture.answer(first);
        fixture
    }

    /// Drains every output, reporting each frame written at once; returns the frames.
    fn drain(&mut self) -> u64 {
        let mut frames = 0;
        while let Some(output) = self.relay.poll_output(self.now) {
            match output {
                QueryOutput::Run { id } => self.run = Some(id),
                QueryOutput::Downstream(FanoutOutput::Transmit { conn, .. }) => {
                    self.relay.fanout_mut().handle_written(self.now, conn, 1);
                    frames += 1;
                }
                QueryOutput::Downstream(FanoutOutput::Close { .. }) => {}
            }
        }
        frames
    }

    fn answer(&mut self, rows: Vec<QueryRow>) -> u64 {
        // The next run is due an interval later.
        if self.run.is_none() {
            self.now += Duration::from_secs(5);
            self.relay.handle_timeout(self.now);
            self.drain();
        }
        let id = self.run.take().expect("a run in flight");
        self.relay.handle_result(self.now, id, Ok(rows));
        self.drain()
    }

    fn round(&mut self, changed_every: usize) -> u64 {
        self.round += 1;
        let rows = rows(&self.symbols, self.round, changed_every);
        self.answer(rows)
    }
}

fn query(c: &mut Criterion) {
    let mut group = c.benchmark_group("query");
    group.throughput(Throughput::Elements(ROWS as u64));
    let mut unchanged = Fixture::new();
    assert_eq!(unchanged.round(0), 0, "an unchanged run sent frames");
    group.bench_function("run of 10 000 rows, unchanged", |b| {
        let symbols = unchanged.symbols.clone();
        let last = unchanged.round;
        b.iter_batched(
            || rows(&symbols, last, 0),
            |rows| unchanged.answer(rows),
            BatchSize::LargeInput,
        )
    });
    let mut moving = Fixture::new();
    let sent = moving.round(10);
    assert_eq!(
        sent,
        (SUBSCRIBED / 10 * CONNECTIONS * PER_CONNECTION / SUBSCRIBED) as u64
    );
    let symbols = moving.symbols.clone();
    let mut round = moving.round;
    group.bench_function("run of 10 000 rows, 10 % changed", |b| {
        b.iter_batched(
            || {
                round += 1;
                rows(&symbols, round, 10)
            },
            |rows| moving.answer(rows),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, query);
criterion_main!(benches);

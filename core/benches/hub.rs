//! Deliveries per second through the hub alone: diff, render once, fan out, flow control.
//!
//! Run: `cargo bench -p tickwire-core --bench hub`
//!
//! 1 000 connections each subscribed to 10 of 100 symbols (so every update has 100 recipients);
//! each iteration applies 100 quote updates (one per symbol, a new price each) and drains every
//! output, reporting each frame written at once as a fast socket would. Elements are frames
//! delivered. A second case shows the cost when every recipient is a stalled consumer being
//! conflated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire_core::client::Quote;
use tickwire_core::hub::{ConnId, Hub, HubConfig, HubOutput};

const CONNECTIONS: usize = 1_000;
const SYMBOLS: usize = 100;
const PER_CONNECTION: usize = 10;

struct Fixture {
    hub: Hub,
    now: Instant,
    quotes: Vec<Quote>,
    step: f64,
}

impl Fixture {
    fn new() -> Fixture {
        let now = Instant::now();
        let mut hub = Hub::new(HubConfig {
            slow_consumer_deadline: Duration::from_secs(3600),
            keepalive_timeout: Duration::from_secs(3600),
            ..HubConfig::default()
        })
        .unwrap();
        let names: Vec<String> = (0..SYMBOLS).map(|index| format!("EMU:S{index}")).collect();
        for index in 0..CONNECTIONS {
            let conn = hub.connect(now).unwrap();
            let mine: Vec<&String> = (0..PER_CONNECTION)
                .map(|offset| &names[(index + offset * 7) % SYMBOLS])
                .collect();
            let request = serde_json::json!({"action": "subscribe", "symbols": mine});
            hub.handle_text(now, conn, &request.to_string());
        }
        let quotes = names
            .iter()
            .map(|name| Quote {
                last_price: Some(100.0),
                volume: Some(1_000.0),
                bid: Some(99.9),
                ask: Some(100.1),
                ..Quote::new(Arc::from(name.as_str()))
            })
            .collect();
        let mut fixture = Fixture {
            hub,
            now,
            quotes,
            step: 0.0,
        };
        fixture.drain(true);
        fixture
    }

    /// Drains outputs; with `written`, reports every frame written (a fast reader).
    fn drain(&mut self, written: bool) -> u64 {
        let mut frames = 0u64;
        let mut sent: Vec<(ConnId, usize)> = Vec::new();
        loop {
            while let Some(output) = self.hub.poll_output() {
                if let HubOutput::Transmit { conn, frame } = output {
                    std::hint::black_box(frame);
                    frames += 1;
                    match sent.last_mut() {
                        Some((last, count)) if *last == conn => *count += 1,
                        _ => sent.push((conn, 1)),
                    }
                }
            }
            if !written || sent.is_empty() {
                return frames;
            }
            for (conn, count) in sent.drain(..) {
                self.hub.handle_written(self.now, conn, count);
            }
        }
    }

    fn round(&mut self, written: bool) -> u64 {
        self.step += 0.01;
        for quote in &mut self.quotes {
            quote.last_price = Some(100.0 + self.step);
            self.hub.handle_quote(self.now, quote);
        }
        self.drain(written)
    }
}

fn hub(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub");
    let mut fast = Fixture::new();
    let delivered = fast.round(true);
    assert_eq!(
        delivered,
        (SYMBOLS * CONNECTIONS * PER_CONNECTION / SYMBOLS) as u64
    );
    group.throughput(Throughput::Elements(delivered));
    group.bench_function("fan-out to readers", |b| b.iter(|| fast.round(true)));

    // Nobody reports anything written: every connection falls behind and is conflated.
    let mut stalled = Fixture::new();
    for _ in 0..200 {
        stalled.round(false);
    }
    group.throughput(Throughput::Elements(delivered));
    group.bench_function("conflating stalled consumers", |b| {
        b.iter(|| stalled.round(false))
    });
    group.finish();
}

criterion_group!(benches, hub);
criterion_main!(benches);

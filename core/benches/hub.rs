//! Deliveries per second through the hub alone: diff, render once, fan out, flow control.
//!
//! Run: `cargo bench -p tickwire-core --bench hub`
//!
//! 1 000 connections each subscribed to 10 of 100 symbols (so every update has 100 recipients);
//! each iteration applies 100 quote updates (one per symbol, a new price each) and drains every
//! output, reporting each frame written at once as a fast socket would. Elements are frames
//! delivered. A second case shows the cost when every recipient is a stalled consumer being
//! conflated.

#[path = "fixtures/hub.rs"]
mod fixture;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fixture::{CONNECTIONS, Fixture, PER_CONNECTION, SYMBOLS};

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

//! Quotes per second through the whole client: decode, parse, merge, event.
//!
//! Run: `cargo bench -p tickwire-core --bench client`
//!
//! The synthetic live-quote corpus (`../shared/testdata/qsd-burst-synthetic.txt`, 4 000
//! messages, 62 562 qsd packets) is fed as WebSocket messages to a live `Client` subscribed to
//! every symbol, and every output is drained. Elements are qsd packets.

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn client(c: &mut Criterion) {
    let mut corpus = support::live_corpus();
    let bytes: u64 = corpus
        .messages
        .iter()
        .map(|message| message.len() as u64)
        .sum();
    assert_eq!(
        support::feed(&mut corpus),
        corpus.qsd_packets,
        "every qsd becomes one quote event"
    );
    let mut group = c.benchmark_group("client");
    group.throughput(Throughput::ElementsAndBytes {
        elements: corpus.qsd_packets as u64,
        bytes,
    });
    group.bench_function("qsd corpus", |b| b.iter(|| support::feed(&mut corpus)));
    group.finish();
}

criterion_group!(benches, client);
criterion_main!(benches);

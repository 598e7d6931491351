//! Codec and parser throughput over the shared test data.
//!
//! Run: `cargo bench -p tickwire-core --bench codec`
//!
//! - `capture/*`: the real 2023 capture (1.46 MB, 42 packets, big chart batches), fed as one
//!   WebSocket message.
//! - `qsd/*`: the synthetic live-quote corpus (9.3 MB, 4 000 messages, 64 442 packets: 62 562
//!   qsd and 1 880 heartbeats), one WebSocket message per line.
//!
//! `framing` only splits packets; `framing+parse` also parses every JSON payload into a typed
//! `ServerMessage`. Criterion reports bytes/s and elements/s: all packets for `framing`, JSON
//! packets (heartbeats excluded) for `framing+parse`.

#[path = "fixtures/corpus.rs"]
mod corpus;

use std::hint::black_box;
use std::path::PathBuf;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire_core::codec::Decoder;

fn testdata(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(name);
    let data = std::fs::read(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    Bytes::from(data)
}

fn bench_corpus(c: &mut Criterion, name: &str, messages: &[Bytes]) {
    let decoder = Decoder::new();
    let bytes: u64 = messages.iter().map(|message| message.len() as u64).sum();
    let packets = corpus::frame_all(&decoder, messages);
    let json_packets = corpus::frame_and_parse_all(&decoder, messages);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::ElementsAndBytes {
        elements: packets,
        bytes,
    });
    group.bench_function("framing", |b| {
        b.iter(|| corpus::frame_all(&decoder, black_box(messages)))
    });
    // Elements here are the JSON packets parsed, not every packet framed.
    group.throughput(Throughput::ElementsAndBytes {
        elements: json_packets,
        bytes,
    });
    group.bench_function("framing+parse", |b| {
        b.iter(|| corpus::frame_and_parse_all(&decoder, black_box(messages)))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let capture = testdata("tradingview-rs-socket-messages-2023.txt");
    bench_corpus(c, "capture", std::slice::from_ref(&capture));
    let qsd = testdata("qsd-burst-synthetic.txt");
    bench_corpus(c, "qsd", &corpus::lines(&qsd));
}

criterion_group!(benches, codec);
criterion_main!(benches);

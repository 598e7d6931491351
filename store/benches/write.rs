//! Rows per second into DuckDB: the qsd corpus's quotes, as the recorder batches them.
//!
//! Run: `store/fetch-libduckdb.sh && cargo bench -p tickwire-store --bench write`
//!
//! The synthetic live-quote corpus (`../shared/testdata/qsd-burst-synthetic.txt`, 62 562 qsd
//! packets) goes through a live `Client`; its quote events are turned into rows by the core's
//! `Recorder` in batches of 10 000 (the default `--commit-rows`). Two measurements, elements
//! being quote rows:
//!
//! - `write batches`: only `Store::write` of those batches, one transaction each, into a
//!   DuckDB file on disk (the file grows across iterations, as a recorder's does);
//! - `client + recorder + write`: the corpus's WebSocket messages in, rows committed out, on
//!   one thread: the whole recorder minus the socket.

#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire_core::record::{Batch, Recorder, RecorderConfig};
use tickwire_store::Store;

/// Feeds the corpus once; every batch the recorder lets out goes to `write`.
fn record_corpus(
    corpus: &mut support::LiveCorpus,
    recorder: &mut Recorder,
    mut write: impl FnMut(&Batch),
) {
    let now = Instant::now();
    let recorder = std::cell::RefCell::new(recorder);
    support::feed_with(
        corpus,
        |event| {
            recorder
                .borrow_mut()
                .handle_event(now, 1_700_000_000_000_000, &event)
        },
        || {
            let mut recorder = recorder.borrow_mut();
            while let Some(batch) = recorder.poll_batch(now) {
                write(&batch);
                recorder.handle_written(now, batch.id).unwrap();
            }
        },
    );
}

/// A store file of its own under the temporary directory, removed first.
fn scratch_store(name: &str) -> (Store, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "tickwire-bench-{name}-{}.duckdb",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("duckdb.wal"));
    (Store::open(&path).unwrap(), path)
}

fn remove(store: Store, path: &std::path::Path) {
    drop(store);
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("duckdb.wal"));
}

fn write(c: &mut Criterion) {
    let mut corpus = support::live_corpus();
    let mut recorder = Recorder::new(RecorderConfig::default());
    let mut batches = Vec::new();
    record_corpus(&mut corpus, &mut recorder, |batch| {
        batches.push(batch.clone())
    });
    recorder.finish();
    while let Some(batch) = recorder.poll_batch(Instant::now()) {
        recorder.handle_written(Instant::now(), batch.id).unwrap();
        batches.push(batch);
    }
    let rows: usize = batches.iter().map(|batch| batch.quotes.len()).sum();
    assert_eq!(rows, corpus.qsd_packets, "every qsd becomes one quote row");

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(rows as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));

    let (mut store, path) = scratch_store("write");
    group.bench_function("write batches", |b| {
        b.iter(|| {
            for batch in &batches {
                store.write(batch).unwrap();
            }
        })
    });
    remove(store, &path);

    // Rows still pending at the end of one pass go out in the next: the throughput holds.
    let (mut store, path) = scratch_store("pipeline");
    let mut recorder = Recorder::new(RecorderConfig::default());
    group.bench_function("client + recorder + write", |b| {
        b.iter(|| {
            record_corpus(&mut corpus, &mut recorder, |batch| {
                store.write(batch).unwrap();
            })
        })
    });
    remove(store, &path);
    group.finish();
}

criterion_group!(benches, write);
criterion_main!(benches);

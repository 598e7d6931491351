//! Properties of the recorder's batching (`tickwire_core::record`) over arbitrary mixes of
//! quotes, bars, slow writes and time: no row is invented, every closed bar and every gap
//! reaches the store, a symbol's quotes are written in order and its newest one always, the
//! pending quotes stay within their bound, one batch is in flight at a time, and finishing
//! drains everything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tickwire_core::client::{
    BarEvent, BarGap, Event, Quote, QuoteEvent, QuoteFields, SeriesId, Source,
};
use tickwire_core::message::Bar;
use tickwire_core::record::{Batch, Recorder, RecorderConfig};

#[derive(Debug, Clone)]
enum Step {
    /// A quote of symbol N (of 4).
    Quote(u8),
    /// A bar of series N (of 2) at minute M, closed or not.
    Bar(u8, u8, bool),
    Gap(u8),
    /// Time passes, in milliseconds.
    Wait(u16),
    /// The batch in flight, if any, is written.
    Written,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..4u8).prop_map(Step::Quote),
        3 => (0..2u8, 0..20u8, any::<bool>()).prop_map(|(s, m, c)| Step::Bar(s, m, c)),
        1 => (0..2u8).prop_map(Step::Gap),
        2 => (0..3_000u16).prop_map(Step::Wait),
        2 => Just(Step::Written),
    ]
}

fn quote(symbol: u8, price: f64) -> Event {
    Event::Quote(QuoteEvent {
        quote: Quote {
            last_price: Some(price),
            ..Quote::new(Arc::from(format!("S{symbol}")))
        },
        changed: QuoteFields::default(),
        source: Source::Stream,
    })
}

fn bar(series: u8, minute: u8, close: f64, closed: bool) -> Event {
    Event::Bar(BarEvent {
        series: SeriesId(u64::from(series)),
        symbol: Arc::from(format!("S{series}")),
        timeframe: Arc::from("1"),
        bar: Bar {
            index: 0,
            time: f64::from(minute) * 60.0,
            open: close,
            high: close,
            low: close,
            close,
            volume: None,
        },
        closed,
    })
}

proptest! {
    #[test]
    fn batches_lose_nothing_that_must_be_kept(steps in prop::collection::vec(step(), 1..300)) {
        let config = RecorderConfig {
            commit_every: Duration::from_secs(1),
            batch_rows: 16,
            max_pending_quotes: 8,
        };
        let start = Instant::now();
        let mut now = start;
        let mut recorder = Recorder::new(config.clone());
        let mut in_flight: Option<Batch> = None;
        let mut written: Vec<Batch> = Vec::new();
        // What went in: each symbol's quote prices in order, closed bars, gaps.
        let mut sent_quotes: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut closed_bars: BTreeSet<(String, u64)> = BTreeSet::new();
        let mut final_close: BTreeMap<(String, u64), f64> = BTreeMap::new();
        let mut gaps_sent = 0usize;
        let mut counter = 0.0;
        for step in steps {
            counter += 1.0;
            match step {
                Step::Quote(symbol) => {
                    sent_quotes.entry(format!("S{symbol}")).or_default().push(counter);
                    recorder.handle_event(now, 0, &quote(symbol, counter));
                }
                Step::Bar(series, minute, closed) => {
                    let key = (format!("S{series}"), u64::from(minute) * 60);
                    if !closed && closed_bars.contains(&key) {
                        continue; // the client never reopens a closed bar
                    }
                    if closed {
                        closed_bars.insert(key.clone());
                    }
                    final_close.insert(key, counter);
                    recorder.handle_event(now, 0, &bar(series, minute, counter, closed));
                }
                Step::Gap(series) => {
                    gaps_sent += 1;
                    let gap = Event::BarGap(BarGap {
                        series: SeriesId(u64::from(series)),
                        symbol: Arc::from(format!("S{series}")),
                        timeframe: Arc::from("1"),
                        after: 0.0,
                        before: 600.0,
                    });
                    recorder.handle_event(now, 0, &gap);
                }
                Step::Wait(millis) => now += Duration::from_millis(u64::from(millis)),
                Step::Written => {
                    if let Some(batch) = in_flight.take() {
                        recorder.handle_written(now, batch.id).unwrap();
                        written.push(batch);
                    }
                }
            }
            if let Some(due) = recorder.poll_timeout() {
                prop_assert!(in_flight.is_none(), "a timeout while a batch is in flight");
                prop_assert!(due >= start);
            }
            if let Some(batch) = recorder.poll_batch(now) {
                prop_assert!(in_flight.is_none(), "two batches in flight");
                prop_assert!(batch.quotes.len() <= config.max_pending_quotes + 4);
                in_flight = Some(batch);
            }
            prop_assert!(recorder.poll_batch(now).is_none(), "a second batch at once");
        }
        recorder.finish();
        for _ in 0..10 {
            if let Some(batch) = in_flight.take() {
                recorder.handle_written(now, batch.id).unwrap();
                written.push(batch);
            }
            in_flight = recorder.poll_batch(now);
        }
        prop_assert!(in_flight.is_none() && recorder.is_idle(), "finishing did not drain");

        // Quotes: per symbol, a subsequence of what was sent, in order, ending at the newest.
        let mut got: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for row in written.iter().flat_map(|batch| &batch.quotes) {
            got.entry(row.symbol.to_string()).or_default().push(row.price.unwrap());
        }
        for (symbol, sent) in &sent_quotes {
            let kept = got.get(symbol).cloned().unwrap_or_default();
            prop_assert_eq!(kept.last(), sent.last(), "{}: the newest quote", symbol);
            prop_assert!(kept.windows(2).all(|pair| pair[0] < pair[1]), "{}: out of order", symbol);
            prop_assert!(kept.iter().all(|price| sent.contains(price)), "{}: invented", symbol);
        }
        prop_assert_eq!(got.len(), sent_quotes.len());
        let conflated = recorder.counters().quotes_conflated as usize;
        let sent_total: usize = sent_quotes.values().map(Vec::len).sum();
        let kept_total: usize = got.values().map(Vec::len).sum();
        prop_assert_eq!(sent_total, kept_total + conflated, "every quote written or counted");

        // Bars: the last write of every bar wins; every closed bar is written closed.
        let mut last: BTreeMap<(String, u64), (f64, bool)> = BTreeMap::new();
        for row in written.iter().flat_map(|batch| &batch.bars) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let key = (row.symbol.to_string(), row.bar.time as u64);
            last.insert(key, (row.bar.close, row.closed));
        }
        prop_assert_eq!(last.len(), final_close.len());
        for (key, close) in &final_close {
            let (got_close, got_closed) = last[key];
            prop_assert_eq!(got_close, *close);
            prop_assert_eq!(got_closed, closed_bars.contains(key));
        }
        let gaps_written: usize = written.iter().map(|batch| batch.gaps.len()).sum();
        prop_assert_eq!(gaps_written, gaps_sent);
    }
}

//! What a recorder writes to its store, and when: the client's quotes, bars and bar gaps
//! turned into rows, gathered into batches for one bulk write each, with one batch in flight
//! at a time and a commit at least every [`RecorderConfig::commit_every`].
//!
//! The store is slower than the feed at times (a busy disk, a long checkpoint). While a batch
//! is being written, rows keep gathering for the next one; past
//! [`RecorderConfig::max_pending_quotes`] a symbol's new quote replaces its latest pending one
//! (counted in [`RecorderCounters::quotes_conflated`]), so memory stays flat however slow the
//! store is. Bars are never conflated away: a bar row is keyed by its series and open time,
//! so a forming bar's updates replace each other (the store upserts the same way) and every
//! closed bar is kept. Their number is bounded by the feed itself: one new bar per series per
//! period, plus a reconnect's backfill of at most the series' history count.
//!
//! # Driving contract
//!
//! - Feed every client [`Event`] to [`Recorder::handle_event`], with `now` and the wall-clock
//!   time it was received (`received_at_us`, Unix microseconds: the core has no clock). Events
//!   other than quotes, bars and bar gaps are ignored.
//! - After every input, and when [`Recorder::poll_timeout`] passes, call
//!   [`Recorder::poll_batch`] until it returns `None`; write each batch in one transaction and
//!   report it with [`Recorder::handle_written`]. No second batch comes out while one is in
//!   flight.
//! - To stop, call [`Recorder::finish`]: from then on everything pending comes out at once;
//!   [`Recorder::is_idle`] says when all of it has been written.
//! - `now` must not go backwards; a batch is due when the oldest row in it has waited
//!   `commit_every`, or at once when `batch_rows` rows are pending.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use tickwire_core::client::{Event, Quote, QuoteEvent, QuoteFields, Source};
//! use tickwire_core::record::{Recorder, RecorderConfig};
//!
//! let start = Instant::now();
//! let mut recorder = Recorder::new(RecorderConfig::default());
//! let quote = Quote { last_price: Some(1.08), ..Quote::new(Arc::from("FX:EURUSD")) };
//! let event = Event::Quote(QuoteEvent { quote, changed: QuoteFields::default(), source: Source::Stream });
//! recorder.handle_event(start, 1_700_000_000_000_000, &event);
//! assert!(recorder.poll_batch(start).is_none(), "not due yet");
//! let due = recorder.poll_timeout().unwrap();
//! assert_eq!(due, start + Duration::from_secs(1));
//! let batch = recorder.poll_batch(due).unwrap();
//! assert_eq!(batch.quotes[0].price, Some(1.08));
//! recorder.handle_written(due, batch.id).unwrap();
//! assert!(recorder.is_idle());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{BarEvent, BarGap, Event, Quote, QuoteEvent, Source};
use crate::instant::later;
use crate::message::Bar;

/// How a [`Recorder`] batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderConfig {
    /// The longest a row waits before its batch goes out (the commit interval: after a crash
    /// at most this much is lost).
    pub commit_every: Duration,
    /// A batch goes out at once when this many rows are pending (and none is in flight).
    pub batch_rows: usize,
    /// Past this many pending quotes, a symbol's new quote replaces its latest pending one
    /// (a symbol with none pending still gets its row, so at most this plus one per symbol
    /// are held).
    pub max_pending_quotes: usize,
}

impl Default for RecorderConfig {
    /// A commit every second, batches of up to 10 000 rows, conflation past 100 000 pending
    /// quotes.
    fn default() -> Self {
        RecorderConfig {
            commit_every: Duration::from_secs(1),
            batch_rows: 10_000,
            max_pending_quotes: 100_000,
        }
    }
}

/// One quote event, as a row of the `quotes` table.
#[derive(Debug, Clone, PartialEq)]
pub struct QuoteRow {
    /// The quote key.
    pub symbol: Arc<str>,
    /// Time of the last price (Unix seconds), as the feed gave it.
    pub time: Option<i64>,
    /// Last price.
    pub price: Option<f64>,
    /// Best bid.
    pub bid: Option<f64>,
    /// Best ask.
    pub ask: Option<f64>,
    /// Volume.
    pub volume: Option<f64>,
    /// Change since the previous close.
    pub change: Option<f64>,
    /// Change in percent.
    pub change_pct: Option<f64>,
    /// Stream or poll.
    pub source: Source,
    /// When it was received, Unix microseconds.
    pub received_at_us: i64,
}

/// A bar, as a row of the `bars` table (its key: symbol, timeframe, open time).
#[derive(Debug, Clone, PartialEq)]
pub struct BarRow {
    /// The symbol.
    pub symbol: Arc<str>,
    /// The timeframe as subscribed.
    pub timeframe: Arc<str>,
    /// The bar.
    pub bar: Bar,
    /// `false` while it is forming.
    pub closed: bool,
}

/// Bars that may be missing, as a row of the `gaps` table.
#[derive(Debug, Clone, PartialEq)]
pub struct GapRow {
    /// The symbol.
    pub symbol: Arc<str>,
    /// The timeframe.
    pub timeframe: Arc<str>,
    /// Open time (Unix seconds) of the last bar before the gap.
    pub after: f64,
    /// Open time (Unix seconds) of the first bar after it.
    pub before: f64,
    /// When the gap was seen, Unix microseconds.
    pub detected_at_us: i64,
}

/// Rows to write in one transaction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// Hand it back to [`Recorder::handle_written`].
    pub id: u64,
    /// Quote rows, in the order received (a conflated symbol's row holds its latest quote).
    pub quotes: Vec<QuoteRow>,
    /// Bar rows to upsert, ordered by symbol, timeframe and time.
    pub bars: Vec<BarRow>,
    /// Gap rows, in the order seen.
    pub gaps: Vec<GapRow>,
}

impl QuoteRow {
    /// The quote the row was made from, as far as the row keeps it (a stored state): the
    /// fields the row has no column for are empty.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tickwire_core::client::Source;
    /// use tickwire_core::record::QuoteRow;
    ///
    /// let row = QuoteRow {
    ///     symbol: Arc::from("FX:EURUSD"),
    ///     time: Some(1_700_000_000),
    ///     price: Some(1.08),
    ///     bid: None,
    ///     ask: None,
    ///     volume: None,
    ///     change: Some(0.01),
    ///     change_pct: None,
    ///     source: Source::Stream,
    ///     received_at_us: 1_700_000_000_250_000,
    /// };
    /// let quote = row.to_quote();
    /// assert_eq!((quote.last_price, quote.change), (Some(1.08), Some(0.01)));
    /// ```
    pub fn to_quote(&self) -> Quote {
        Quote {
            last_price: self.price,
            last_price_time: self.time,
            bid: self.bid,
            ask: self.ask,
            volume: self.volume,
            change: self.change,
            change_percent: self.change_pct,
            ..Quote::new(self.symbol.clone())
        }
    }
}

impl Batch {
    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.quotes
            .len()
            .saturating_add(self.bars.len())
            .saturating_add(self.gaps.len())
    }
}

/// What a [`Recorder`] has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecorderCounters {
    /// Batches reported written.
    pub batches_written: u64,
    /// Rows in them.
    pub rows_written: u64,
    /// Quotes replaced by a newer one of the same symbol before they were written.
    pub quotes_conflated: u64,
}

/// [`Recorder::handle_written`] was given a batch that is not in flight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch {0} is not the one in flight")]
pub struct UnknownBatch(pub u64);

/// A bar's key among pending rows: series and open time in whole milliseconds.
type BarKey = (Arc<str>, Arc<str>, i64);

/// The recorder's batching policy. See the [module docs](self) for the driving contract.
#[derive(Debug)]
pub struct Recorder {
    config: RecorderConfig,
    quotes: Vec<QuoteRow>,
    /// Where each symbol's latest pending quote is in `quotes`.
    latest_quote: HashMap<Arc<str>, usize>,
    bars: BTreeMap<BarKey, BarRow>,
    gaps: Vec<GapRow>,
    /// When the oldest pending row arrived.
    oldest_pending: Option<Instant>,
    /// The batch being written, and when its oldest row arrived.
    in_flight: Option<(u64, Instant)>,
    next_id: u64,
    finishing: bool,
    counters: RecorderCounters,
}

impl Recorder {
    /// An empty recorder.
    pub fn new(config: RecorderConfig) -> Recorder {
        Recorder {
            config,
            quotes: Vec::new(),
            latest_quote: HashMap::new(),
            bars: BTreeMap::new(),
            gaps: Vec::new(),
            oldest_pending: None,
            in_flight: None,
            next_id: 1,
            finishing: false,
            counters: RecorderCounters::default(),
        }
    }

    /// Takes in a client event received at `received_at_us` (Unix microseconds).
    pub fn handle_event(&mut self, now: Instant, received_at_us: i64, event: &Event) {
        match event {
            Event::Quote(quote) => self.add_quote(quote_row(quote, received_at_us)),
            Event::Bar(bar) => self.add_bar(bar),
            Event::BarGap(gap) => self.gaps.push(gap_row(gap, received_at_us)),
            _ => return,
        }
        self.oldest_pending.get_or_insert(now);
    }

    fn add_quote(&mut self, row: QuoteRow) {
        if self.quotes.len() >= self.config.max_pending_quotes
            && let Some(&at) = self.latest_quote.get(&row.symbol)
            && let Some(slot) = self.quotes.get_mut(at)
        {
            *slot = row;
            self.counters.quotes_conflated = self.counters.quotes_conflated.saturating_add(1);
            return;
        }
        self.latest_quote
            .insert(Arc::clone(&row.symbol), self.quotes.len());
        self.quotes.push(row);
    }

    fn add_bar(&mut self, event: &BarEvent) {
        let key = (
            Arc::clone(&event.symbol),
            Arc::clone(&event.timeframe),
            time_key(event.bar.time),
        );
        let closed = event.closed || self.bars.get(&key).is_some_and(|row| row.closed);
        self.bars.insert(
            key,
            BarRow {
                symbol: Arc::clone(&event.symbol),
                timeframe: Arc::clone(&event.timeframe),
                bar: event.bar,
                closed,
            },
        );
    }

    fn pending_rows(&self) -> usize {
        self.quotes
            .len()
            .saturating_add(self.bars.len())
            .saturating_add(self.gaps.len())
    }

    /// The next batch to write, when one is due and none is in flight.
    pub fn poll_batch(&mut self, now: Instant) -> Option<Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        let oldest = self.oldest_pending?;
        let due = self.finishing
            || self.pending_rows() >= self.config.batch_rows
            || now >= later(oldest, self.config.commit_every);
        if !due {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        self.in_flight = Some((id, oldest));
        self.oldest_pending = None;
        self.latest_quote.clear();
        Some(Batch {
            id,
            quotes: std::mem::take(&mut self.quotes),
            bars: std::mem::take(&mut self.bars).into_values().collect(),
            gaps: std::mem::take(&mut self.gaps),
        })
    }

    /// The batch `id` was written and committed.
    ///
    /// # Errors
    /// [`UnknownBatch`] when `id` is not the batch in flight (nothing changes).
    pub fn handle_written(&mut self, _now: Instant, id: u64) -> Result<(), UnknownBatch> {
        match self.in_flight {
            Some((in_flight, _)) if in_flight == id => {}
            _ => return Err(UnknownBatch(id)),
        }
        self.in_flight = None;
        self.counters.batches_written = self.counters.batches_written.saturating_add(1);
        Ok(())
    }

    /// Counts a written batch's rows (kept apart from [`Recorder::handle_written`] so the
    /// application need not keep the batch).
    pub fn count_rows(&mut self, rows: usize) {
        let rows = u64::try_from(rows).unwrap_or(u64::MAX);
        self.counters.rows_written = self.counters.rows_written.saturating_add(rows);
    }

    /// When [`Recorder::poll_batch`] will next have a batch, if nothing else comes in.
    /// `None` while a batch is in flight (its report comes first) or nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        let oldest = self.oldest_pending?;
        if self.finishing || self.pending_rows() >= self.config.batch_rows {
            return Some(oldest);
        }
        Some(later(oldest, self.config.commit_every))
    }

    /// From now on every pending row goes out at once.
    pub fn finish(&mut self) {
        self.finishing = true;
    }

    /// Nothing is pending or in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.oldest_pending.is_none()
    }

    /// How long the oldest row not yet written has waited.
    pub fn lag(&self, now: Instant) -> Duration {
        self.in_flight
            .map(|(_, oldest)| oldest)
            .or(self.oldest_pending)
            .map_or(Duration::ZERO, |oldest| {
                now.saturating_duration_since(oldest)
            })
    }

    /// What it has done so far.
    pub fn counters(&self) -> RecorderCounters {
        self.counters
    }
}

fn quote_row(event: &QuoteEvent, received_at_us: i64) -> QuoteRow {
    let quote = &event.quote;
    QuoteRow {
        symbol: Arc::clone(&quote.symbol),
        time: quote.last_price_time,
        price: quote.last_price,
        bid: quote.bid,
        ask: quote.ask,
        volume: quote.volume,
        change: quote.change,
        change_pct: quote.change_percent,
        source: event.source,
        received_at_us,
    }
}

fn gap_row(gap: &BarGap, detected_at_us: i64) -> GapRow {
    GapRow {
        symbol: Arc::clone(&gap.symbol),
        timeframe: Arc::clone(&gap.timeframe),
        after: gap.after,
        before: gap.before,
        detected_at_us,
    }
}

/// A bar time as a key: whole milliseconds (bar times are whole seconds in practice).
fn time_key(time: f64) -> i64 {
    #[allow(clippy::cast_possible_truncation)] // saturating float-to-int cast is the intent
    let millis = (time * 1000.0).round() as i64;
    millis
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Quote, QuoteFields, SeriesId};

    const SECOND: Duration = Duration::from_secs(1);

    fn quote(symbol: &str, price: f64) -> Event {
        Event::Quote(QuoteEvent {
            quote: Quote {
                last_price: Some(price),
                ..Quote::new(Arc::from(symbol))
            },
            changed: QuoteFields::default(),
            source: Source::Stream,
        })
    }

    fn bar(time: f64, close: f64, closed: bool) -> Event {
        Event::Bar(BarEvent {
            series: SeriesId(1),
            symbol: Arc::from("A"),
            timeframe: Arc::from("1"),
            bar: Bar {
                index: 0,
                time,
                open: close,
                high: close,
                low: close,
                close,
                volume: None,
            },
            closed,
        })
    }

    fn prices(batch: &Batch) -> Vec<(String, f64)> {
        batch
            .quotes
            .iter()
            .map(|row| (row.symbol.to_string(), row.price.unwrap_or(f64::NAN)))
            .collect()
    }

    #[test]
    fn a_batch_goes_out_once_its_oldest_row_has_waited_the_commit_interval() {
        let start = Instant::now();
        let mut recorder = Recorder::new(RecorderConfig::default());
        assert_eq!(recorder.poll_timeout(), None, "nothing pending");
        recorder.handle_event(start, 1, &quote("A", 1.0));
        recorder.handle_event(start + SECOND / 2, 2, &quote("B", 2.0));
        assert_eq!(recorder.poll_timeout(), Some(start + SECOND));
        assert!(recorder.poll_batch(start + SECOND / 2).is_none());
        let batch = recorder.poll_batch(start + SECOND).unwrap();
        assert_eq!(prices(&batch), [("A".into(), 1.0), ("B".into(), 2.0)]);
        assert_eq!(batch.quotes[1].received_at_us, 2);
        // Nothing else while it is in flight, however long it takes.
        recorder.handle_event(start + 2 * SECOND, 3, &quote("A", 1.5));
        assert_eq!(recorder.poll_timeout(), None);
        assert!(recorder.poll_batch(start + 10 * SECOND).is_none());
        assert!(recorder.lag(start + 10 * SECOND) >= 10 * SECOND);
        recorder
            .handle_written(start + 10 * SECOND, batch.id)
            .unwrap();
        // The row that waited behind it is overdue: out at once.
        assert_eq!(recorder.poll_timeout(), Some(start + 3 * SECOND));
        let next = recorder.poll_batch(start + 10 * SECOND).unwrap();
        assert_eq!(prices(&next), [("A".into(), 1.5)]);
        assert_eq!(
            recorder.handle_written(start, batch.id),
            Err(UnknownBatch(batch.id)),
            "a batch reported twice"
        );
    }

    #[test]
    fn a_full_batch_goes_out_without_waiting() {
        let start = Instant::now();
        let mut recorder = Recorder::new(RecorderConfig {
            batch_rows: 3,
            ..RecorderConfig::default()
        });
        recorder.handle_event(start, 0, &quote("A", 1.0));
        recorder.handle_event(start, 0, &quote("A", 2.0));
        assert!(recorder.poll_batch(start).is_none());
        recorder.handle_event(start, 0, &bar(60.0, 1.0, false));
        assert_eq!(recorder.poll_timeout(), Some(start));
        let batch = recorder.poll_batch(start).unwrap();
        assert_eq!(batch.rows(), 3);
    }

    #[test]
    fn a_slow_store_conflates_quotes_per_symbol_and_keeps_every_closed_bar() {
        let start = Instant::now();
        let mut recorder = Recorder::new(RecorderConfig {
            max_pending_quotes: 4,
            ..RecorderConfig::default()
        });
        recorder.handle_event(start, 0, &quote("X", 0.0));
        let stuck = recorder.poll_batch(start + SECOND).unwrap();
        // While the store is stuck: 1 000 quotes of two symbols, and 300 bars.
        for step in 0..1_000_u32 {
            let price = f64::from(step);
            let symbol = if step % 2 == 0 { "A" } else { "B" };
            recorder.handle_event(start + SECOND, 0, &quote(symbol, price));
        }
        for minute in 0..300_u32 {
            let time = f64::from(minute) * 60.0;
            recorder.handle_event(start + SECOND, 0, &bar(time, 1.0, false));
            recorder.handle_event(start + SECOND, 0, &bar(time, 2.0, false));
            recorder.handle_event(start + SECOND, 0, &bar(time, 3.0, true));
        }
        assert_eq!(recorder.counters().quotes_conflated, 996);
        recorder
            .handle_written(start + 2 * SECOND, stuck.id)
            .unwrap();
        let batch = recorder.poll_batch(start + 2 * SECOND).unwrap();
        // The first four kept their place; each symbol's latest row holds its newest quote.
        assert_eq!(
            prices(&batch),
            [
                ("A".into(), 0.0),
                ("B".into(), 1.0),
                ("A".into(), 998.0),
                ("B".into(), 999.0)
            ]
        );
        assert_eq!(batch.bars.len(), 300, "one row per bar, every one kept");
        assert!(
            batch
                .bars
                .iter()
                .all(|row| row.closed && row.bar.close == 3.0)
        );
        assert!(
            batch
                .bars
                .windows(2)
                .all(|pair| pair[0].bar.time < pair[1].bar.time)
        );
    }

    #[test]
    fn a_forming_bar_is_upserted_and_stays_closed_once_closed() {
        let start = Instant::now();
        let mut recorder = Recorder::new(RecorderConfig::default());
        recorder.handle_event(start, 0, &bar(60.0, 1.0, false));
        recorder.handle_event(start, 0, &bar(60.0, 1.5, true));
        // A late forming copy (the client never sends one) does not reopen it.
        recorder.handle_event(start, 0, &bar(60.0, 1.5, false));
        recorder.handle_event(start, 0, &bar(120.0, 2.0, false));
        let batch = recorder.poll_batch(start + SECOND).unwrap();
        let rows: Vec<(f64, f64, bool)> = batch
            .bars
            .iter()
            .map(|row| (row.bar.time, row.bar.close, row.closed))
            .collect();
        assert_eq!(rows, [(60.0, 1.5, true), (120.0, 2.0, false)]);
    }

    #[test]
    fn gaps_become_rows_and_other_events_are_ignored() {
        let start = Instant::now();
        let mut recorder = Recorder::new(RecorderConfig::default());
        recorder.handle_event(
            start,
            0,
            &Event::ProtocolError {
                text: "nope".into(),
            },
        );
        assert!(recorder.is_idle());
        let gap = Event::BarGap(BarGap {
            series: SeriesId(1),
            symbol: Arc::from("A"),
            timeframe: Arc::from("1"),
            after: 300.0,
            before: 600.0,
        });
        recorder.handle_event(start, 42, &gap);
        let batch = recorder.poll_batch(start + SECOND).unwrap();
        assert_eq!(batch.gaps.len(), 1);
        assert_eq!(
            (
                batch.gaps[0].after,
                batch.gaps[0].before,
                batch.gaps[0].detected_at_us
            ),
            (300.0, 600.0, 42)
        );
    }

    #[test]
    fn finishing_sends_everything_at_once_until_idle() {
        let start = Instant::now();
        let mut recorder = Recorder::new(RecorderConfig::default());
        recorder.handle_event(start, 0, &quote("A", 1.0));
        recorder.finish();
        assert_eq!(recorder.poll_timeout(), Some(start));
        let batch = recorder.poll_batch(start).unwrap();
        assert!(!recorder.is_idle(), "in flight");
        recorder.handle_written(start, batch.id).unwrap();
        recorder.count_rows(batch.rows());
        assert!(recorder.is_idle());
        assert_eq!(
            recorder.counters(),
            RecorderCounters {
                batches_written: 1,
                rows_written: 1,
                quotes_conflated: 0
            }
        );
    }
}

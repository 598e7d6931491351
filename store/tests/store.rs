//! The store's schema, upsert, gap rows and batches, on in-memory databases and temporary
//! files.

use std::path::PathBuf;
use std::sync::Arc;

use tickwire_core::client::Source;
use tickwire_core::message::Bar;
use tickwire_core::record::{BarRow, Batch, GapRow, QuoteRow};
use tickwire_store::{Store, StoreError, StoredBar};

/// A fresh path under the system's temporary directory, removed (with DuckDB's WAL) on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "tickwire-store-{}-{name}.duckdb",
            std::process::id()
        ));
        let file = TempFile(path);
        file.remove();
        file
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("duckdb.wal"));
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.remove();
    }
}

fn quote(symbol: &str, price: f64, received_at_us: i64) -> QuoteRow {
    QuoteRow {
        symbol: Arc::from(symbol),
        time: Some(received_at_us / 1_000_000),
        price: Some(price),
        bid: Some(price - 0.5),
        ask: None,
        volume: Some(10.0),
        change: None,
        change_pct: Some(-1.25),
        source: Source::Stream,
        received_at_us,
    }
}

fn bar_row(time: f64, close: f64, closed: bool) -> BarRow {
    BarRow {
        symbol: Arc::from("X:A"),
        timeframe: Arc::from("1"),
        bar: Bar {
            index: 0,
            time,
            open: 1.0,
            high: close.max(1.0),
            low: close.min(1.0),
            close,
            volume: Some(5.0),
        },
        closed,
    }
}

fn batch(id: u64, quotes: Vec<QuoteRow>, bars: Vec<BarRow>, gaps: Vec<GapRow>) -> Batch {
    Batch {
        id,
        quotes,
        bars,
        gaps,
    }
}

fn closes(bars: &[StoredBar]) -> Vec<(f64, f64, bool)> {
    bars.iter()
        .map(|bar| (bar.time, bar.close, bar.closed))
        .collect()
}

#[test]
fn the_schema_has_the_issues_columns_and_types() {
    let store = Store::open_in_memory().unwrap();
    let mut statement = store
        .connection()
        .prepare(
            "SELECT table_name, column_name, data_type FROM information_schema.columns \
             ORDER BY table_name, ordinal_position",
        )
        .unwrap();
    let columns: Vec<String> = statement
        .query_map([], |row| {
            Ok(format!(
                "{}.{} {}",
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected = [
        "bars.symbol VARCHAR",
        "bars.timeframe VARCHAR",
        "bars.time TIMESTAMP WITH TIME ZONE",
        "bars.open DOUBLE",
        "bars.high DOUBLE",
        "bars.low DOUBLE",
        "bars.close DOUBLE",
        "bars.volume DOUBLE",
        "bars.closed BOOLEAN",
        "gaps.symbol VARCHAR",
        "gaps.timeframe VARCHAR",
        "gaps.from TIMESTAMP WITH TIME ZONE",
        "gaps.to TIMESTAMP WITH TIME ZONE",
        "gaps.detected_at TIMESTAMP WITH TIME ZONE",
        "quotes.symbol VARCHAR",
        "quotes.time TIMESTAMP WITH TIME ZONE",
        "quotes.price DOUBLE",
        "quotes.bid DOUBLE",
        "quotes.ask DOUBLE",
        "quotes.volume DOUBLE",
        "quotes.change DOUBLE",
        "quotes.change_pct DOUBLE",
        "quotes.source VARCHAR",
        "quotes.received_at TIMESTAMP WITH TIME ZONE",
    ];
    assert_eq!(columns, expected);
}

/// A quote row read back: symbol, feed time, price, ask, source, received at (µs and as text).
type QuoteRead = (String, Option<i64>, f64, Option<f64>, String, i64, String);

#[test]
fn quotes_are_appended_in_order_with_utc_times() {
    let mut store = Store::open_in_memory().unwrap();
    let first = quote("X:A", 10.0, 1_700_000_000_123_456);
    let mut second = quote("X:B", 11.0, 1_700_000_001_000_000);
    second.source = Source::Poll;
    second.time = None;
    let written = store
        .write(&batch(1, vec![first, second], Vec::new(), Vec::new()))
        .unwrap();
    assert_eq!(written.quotes, 2);
    let rows: Vec<QuoteRead> = store
        .connection()
        .prepare(
            "SELECT symbol, epoch(time)::BIGINT, price, ask, source, epoch_us(received_at), \
             strftime(received_at, '%Y-%m-%d %H:%M:%S') FROM quotes ORDER BY received_at",
        )
        .unwrap()
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            (
                "X:A".to_owned(),
                Some(1_700_000_000),
                10.0,
                None,
                "stream".to_owned(),
                1_700_000_000_123_456,
                "2023-11-14 22:13:20".to_owned()
            ),
            (
                "X:B".to_owned(),
                None,
                11.0,
                None,
                "poll".to_owned(),
                1_700_000_001_000_000,
                "2023-11-14 22:13:21".to_owned()
            ),
        ]
    );
}

#[test]
fn a_forming_bar_is_updated_in_place_until_it_closes_and_stays_closed() {
    let mut store = Store::open_in_memory().unwrap();
    let minute = 1_700_000_040.0;
    store
        .write(&batch(
            1,
            Vec::new(),
            vec![bar_row(minute, 2.0, false)],
            Vec::new(),
        ))
        .unwrap();
    store
        .write(&batch(
            2,
            Vec::new(),
            vec![bar_row(minute, 3.0, false)],
            Vec::new(),
        ))
        .unwrap();
    assert_eq!(
        closes(&store.bars("X:A", "1", None, None).unwrap()),
        [(minute, 3.0, false)]
    );
    store
        .write(&batch(
            3,
            Vec::new(),
            vec![bar_row(minute, 4.0, true)],
            Vec::new(),
        ))
        .unwrap();
    // A late forming update (a replay) does not reopen it or change its values.
    store
        .write(&batch(
            4,
            Vec::new(),
            vec![bar_row(minute, 9.0, false)],
            Vec::new(),
        ))
        .unwrap();
    assert_eq!(
        closes(&store.bars("X:A", "1", None, None).unwrap()),
        [(minute, 4.0, true)]
    );
    // A backfill's closed bar is final: it replaces the values the stream closed it with.
    store
        .write(&batch(
            5,
            Vec::new(),
            vec![bar_row(minute, 4.5, true)],
            Vec::new(),
        ))
        .unwrap();
    assert_eq!(
        closes(&store.bars("X:A", "1", None, None).unwrap()),
        [(minute, 4.5, true)]
    );
    assert_eq!(store.count("bars").unwrap(), 1);
}

#[test]
fn a_backfill_overlapping_what_is_stored_adds_no_duplicate() {
    let mut store = Store::open_in_memory().unwrap();
    let bars: Vec<BarRow> = (0..5)
        .map(|step| {
            bar_row(
                1_700_000_000.0 + 60.0 * f64::from(step),
                f64::from(step),
                true,
            )
        })
        .collect();
    store
        .write(&batch(1, Vec::new(), bars[..3].to_vec(), Vec::new()))
        .unwrap();
    store
        .write(&batch(2, Vec::new(), bars[1..].to_vec(), Vec::new()))
        .unwrap();
    let stored = store.bars("X:A", "1", None, None).unwrap();
    assert_eq!(
        stored.iter().map(|bar| bar.time).collect::<Vec<_>>(),
        bars.iter().map(|row| row.bar.time).collect::<Vec<_>>()
    );
    let duplicates: i64 = store
        .connection()
        .query_row(
            "SELECT count(*) FROM (SELECT symbol, timeframe, time FROM bars \
             GROUP BY ALL HAVING count(*) > 1)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(duplicates, 0);
    // Ranges are inclusive at both ends, and either end may be open.
    let middle = store
        .bars("X:A", "1", Some(1_700_000_060.0), Some(1_700_000_180.0))
        .unwrap();
    assert_eq!(middle.len(), 3);
    let tail = store.bars("X:A", "1", Some(1_700_000_180.0), None).unwrap();
    assert_eq!(tail.len(), 2);
    assert!(store.bars("X:A", "5", None, None).unwrap().is_empty());
}

#[test]
fn gap_rows_say_between_which_bars_and_when() {
    let mut store = Store::open_in_memory().unwrap();
    let gap = GapRow {
        symbol: Arc::from("X:A"),
        timeframe: Arc::from("1"),
        after: 1_700_000_000.0,
        before: 1_700_000_600.0,
        detected_at_us: 1_700_000_630_000_000,
    };
    let written = store
        .write(&batch(1, Vec::new(), Vec::new(), vec![gap]))
        .unwrap();
    assert_eq!(written.gaps, 1);
    let row: (String, String, i64, i64, i64) = store
        .connection()
        .query_row(
            "SELECT symbol, timeframe, epoch(\"from\")::BIGINT, epoch(\"to\")::BIGINT, \
             epoch(detected_at)::BIGINT FROM gaps",
            [],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(
        row,
        (
            "X:A".to_owned(),
            "1".to_owned(),
            1_700_000_000,
            1_700_000_600,
            1_700_000_630
        )
    );
}

#[test]
fn times_that_no_timestamp_can_hold_are_skipped_and_counted_not_fatal() {
    let mut store = Store::open_in_memory().unwrap();
    let mut far = quote("X:A", 1.0, i64::MAX);
    far.time = Some(i64::MAX);
    let mut odd_time = quote("X:A", 2.0, 1_700_000_000_000_000);
    odd_time.time = Some(i64::MIN);
    let bars = vec![
        bar_row(f64::NAN, 1.0, true),
        bar_row(f64::INFINITY, 1.0, true),
        bar_row(1e300, 1.0, true),
        bar_row(1_700_000_000.0, 1.0, true),
    ];
    let gap = GapRow {
        symbol: Arc::from("X:A"),
        timeframe: Arc::from("1"),
        after: f64::NEG_INFINITY,
        before: 0.0,
        detected_at_us: 0,
    };
    let written = store
        .write(&batch(1, vec![far, odd_time], bars, vec![gap]))
        .unwrap();
    assert_eq!(
        (written.quotes, written.bars, written.gaps, written.skipped),
        (1, 1, 0, 5)
    );
    assert_eq!(written.rows(), 7);
    // The quote whose own time was out of range keeps its row, with no time.
    let time: Option<i64> = store
        .connection()
        .query_row("SELECT epoch(time)::BIGINT FROM quotes", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(time, None);
}

#[test]
fn a_file_keeps_what_was_committed_across_reopening() {
    let file = TempFile::new("reopen");
    {
        let mut store = Store::open(&file.0).unwrap();
        let quotes = (0..1000)
            .map(|step| {
                quote(
                    "X:A",
                    f64::from(step),
                    1_700_000_000_000_000 + i64::from(step),
                )
            })
            .collect();
        store
            .write(&batch(
                1,
                quotes,
                vec![bar_row(1_700_000_000.0, 1.0, false)],
                Vec::new(),
            ))
            .unwrap();
    }
    let mut store = Store::open(&file.0).unwrap();
    assert_eq!(store.count("quotes").unwrap(), 1000);
    store
        .write(&batch(
            2,
            Vec::new(),
            vec![bar_row(1_700_000_000.0, 2.0, true)],
            Vec::new(),
        ))
        .unwrap();
    drop(store);
    let reader = Store::open_read_only(&file.0).unwrap();
    assert_eq!(
        closes(&reader.bars("X:A", "1", None, None).unwrap()),
        [(1_700_000_000.0, 2.0, true)]
    );
    let mut reader = reader;
    let refused = reader.write(&batch(
        3,
        vec![quote("X:A", 1.0, 1)],
        Vec::new(),
        Vec::new(),
    ));
    assert!(
        matches!(refused, Err(StoreError::Write(_))),
        "a read-only store wrote: {refused:?}"
    );
}

#[test]
fn an_unopenable_file_is_a_clear_error_naming_it() {
    let missing = std::env::temp_dir().join("tickwire-no-such-directory/inner/x.duckdb");
    let error = Store::open(&missing).unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, StoreError::Open { .. }) && text.contains("tickwire-no-such-directory"),
        "{text}"
    );
    let file = TempFile::new("not-duckdb");
    std::fs::write(&file.0, b"this is not a database file, it is text").unwrap();
    let error = Store::open(&file.0).unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error}");
    assert!(Store::open_read_only(&missing).is_err());
}

#[test]
fn unknown_tables_are_not_counted() {
    let store = Store::open_in_memory().unwrap();
    assert!(store.count("quotes; DROP TABLE bars").is_err());
    assert_eq!(store.count("bars").unwrap(), 0);
}

#[test]
fn last_states_are_each_symbols_newest_quote_with_its_series_newest_bar() {
    let mut store = Store::open_in_memory().unwrap();
    let mut other_series = bar_row(240.0, 9.0, false);
    other_series.timeframe = Arc::from("5");
    store
        .write(&batch(
            1,
            vec![
                quote("X:A", 1.0, 1_700_000_000_000_000),
                quote("X:B", 50.0, 1_700_000_001_000_000),
                quote("X:A", 2.0, 1_700_000_002_000_000),
            ],
            vec![
                bar_row(60.0, 1.5, true),
                bar_row(120.0, 2.0, false),
                other_series,
            ],
            Vec::new(),
        ))
        .unwrap();
    let states = store.last_states(Some("1"), 10).unwrap();
    type Summary<'a> = (&'a str, Option<f64>, Option<(f64, f64, bool)>);
    let summary: Vec<Summary<'_>> = states
        .iter()
        .map(|state| {
            (
                state.quote.symbol.as_ref(),
                state.quote.price,
                state
                    .bar
                    .as_ref()
                    .map(|bar| (bar.time, bar.close, bar.closed)),
            )
        })
        .collect();
    // Newest first; X:B has no bar of that series.
    assert_eq!(
        summary,
        [
            ("X:A", Some(2.0), Some((120.0, 2.0, false))),
            ("X:B", Some(50.0), None)
        ]
    );
    let quote = states[0].quote.to_quote();
    assert_eq!(quote.last_price, Some(2.0));
    assert_eq!(quote.bid, Some(1.5));
    assert_eq!(quote.change_percent, Some(-1.25));
    assert_eq!(quote.last_price_time, Some(1_700_000_002));
    // The limit keeps the newest symbols; without a timeframe no bar comes.
    let newest = store.last_states(None, 1).unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].quote.symbol.as_ref(), "X:A");
    assert!(newest[0].bar.is_none());
    assert_eq!(
        store.last_states(Some("5"), 10).unwrap()[0]
            .bar
            .as_ref()
            .map(|bar| bar.time),
        Some(240.0)
    );
}

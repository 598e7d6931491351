//! The tickwire store: what the client received, recorded into a DuckDB file, and read back.
//!
//! Three tables, created on open if missing:
//!
//! - `quotes(symbol, time, price, bid, ask, volume, change, change_pct, source, received_at)`:
//!   one row per quote event, appended; `time` is the feed's time of the last price, `source`
//!   is `stream` or `poll`.
//! - `bars(symbol, timeframe, time, open, high, low, close, volume, closed)`, keyed by
//!   `(symbol, timeframe, time)`: a forming bar is updated in place until it closes, a closed
//!   bar stays closed, and a reconnect's backfill never duplicates a bar.
//! - `gaps(symbol, timeframe, "from", "to", detected_at)`: bars strictly between `from` and
//!   `to` may be missing, because the feed's backfill after a reconnect did not reach back.
//!
//! Times are `TIMESTAMPTZ` in UTC. The store does not decide when to write: that is
//! [`tickwire_core::record::Recorder`]'s policy; [`Store::write`] writes one of its batches in
//! one transaction, so a crash loses at most the batch being written and the file stays
//! readable.
//!
//! ```
//! use std::sync::Arc;
//! use tickwire_core::client::Source;
//! use tickwire_core::record::{Batch, QuoteRow};
//! use tickwire_store::Store;
//!
//! let mut store = Store::open_in_memory().unwrap();
//! let quote = QuoteRow {
//!     symbol: Arc::from("FX:EURUSD"),
//!     time: Some(1_700_000_000),
//!     price: Some(1.08),
//!     bid: None,
//!     ask: None,
//!     volume: None,
//!     change: None,
//!     change_pct: None,
//!     source: Source::Stream,
//!     received_at_us: 1_700_000_000_250_000,
//! };
//! let batch = Batch { id: 1, quotes: vec![quote], bars: Vec::new(), gaps: Vec::new() };
//! let written = store.write(&batch).unwrap();
//! assert_eq!(written.quotes, 1);
//! assert_eq!(store.count("quotes").unwrap(), 1);
//! ```

pub mod query;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use duckdb::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use duckdb::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit as ArrowTimeUnit};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::types::{TimeUnit, Value};
use duckdb::{AccessMode, Config, Connection, params};
use tickwire_core::client::Source;
use tickwire_core::message::Bar;
use tickwire_core::record::{BarRow, Batch, GapRow, QuoteRow};

/// The tables, created if missing. `TimeZone` is pinned to UTC for the session so that times
/// are written and read as UTC whatever the machine's zone.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS quotes (
    symbol VARCHAR NOT NULL,
    time TIMESTAMPTZ,
    price DOUBLE,
    bid DOUBLE,
    ask DOUBLE,
    volume DOUBLE,
    change DOUBLE,
    change_pct DOUBLE,
    source VARCHAR NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS bars (
    symbol VARCHAR NOT NULL,
    timeframe VARCHAR NOT NULL,
    time TIMESTAMPTZ NOT NULL,
    open DOUBLE NOT NULL,
    high DOUBLE NOT NULL,
    low DOUBLE NOT NULL,
    close DOUBLE NOT NULL,
    volume DOUBLE,
    closed BOOLEAN NOT NULL,
    PRIMARY KEY (symbol, timeframe, time)
);
CREATE TABLE IF NOT EXISTS gaps (
    symbol VARCHAR NOT NULL,
    timeframe VARCHAR NOT NULL,
    "from" TIMESTAMPTZ NOT NULL,
    "to" TIMESTAMPTZ NOT NULL,
    detected_at TIMESTAMPTZ NOT NULL
);
"#;

/// A bar is updated until it closes; once closed, only a closed bar (a backfill's final values)
/// replaces it, and `closed` never goes back.
const UPSERT_BAR: &str = "INSERT INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (symbol, timeframe, time) DO UPDATE SET \
     open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close, \
     volume = excluded.volume, closed = excluded.closed \
     WHERE excluded.closed OR NOT bars.closed";

/// Why the store failed. The path is named; no row data is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or created (missing directory, permissions, not a DuckDB
    /// file, locked by another process).
    #[error("cannot open the store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// DuckDB's reason.
        source: duckdb::Error,
    },
    /// The tables could not be created or do not have the expected shape.
    #[error("the store's tables: {0}")]
    Schema(duckdb::Error),
    /// A batch could not be written (a full disk, an I/O error); nothing of it was committed.
    #[error("writing to the store: {0}")]
    Write(duckdb::Error),
    /// A query failed.
    #[error("reading the store: {0}")]
    Read(duckdb::Error),
}

/// What one [`Store::write`] put in, by table, and what it could not represent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Quote rows appended.
    pub quotes: usize,
    /// Bar rows inserted or updated (an update of a closed bar by a forming one is skipped
    /// by the database but still counted here).
    pub bars: usize,
    /// Gap rows appended.
    pub gaps: usize,
    /// Rows left out because a time was not finite or outside what a timestamp can hold.
    pub skipped: usize,
}

impl Written {
    /// Every row the batch held, written or skipped.
    pub fn rows(&self) -> usize {
        self.quotes
            .saturating_add(self.bars)
            .saturating_add(self.gaps)
            .saturating_add(self.skipped)
    }

    /// The sum of both, table by table: totals over many batches.
    #[must_use]
    pub fn plus(self, other: Written) -> Written {
        Written {
            quotes: self.quotes.saturating_add(other.quotes),
            bars: self.bars.saturating_add(other.bars),
            gaps: self.gaps.saturating_add(other.gaps),
            skipped: self.skipped.saturating_add(other.skipped),
        }
    }
}

/// A bar as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBar {
    /// Open time, Unix seconds.
    pub time: f64,
    /// Open.
    pub open: f64,
    /// High.
    pub high: f64,
    /// Low.
    pub low: f64,
    /// Close.
    pub close: f64,
    /// Volume, when the instrument has one.
    pub volume: Option<f64>,
    /// `false` while it was still forming when last written.
    pub closed: bool,
}

/// What [`Store::last_states`] returns per symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct LastState {
    /// The last quote row ([`QuoteRow::to_quote`] makes it a quote again).
    pub quote: QuoteRow,
    /// The newest bar of the series asked for, if the store has one.
    pub bar: Option<StoredBar>,
}

/// A DuckDB file (or an in-memory database) with the recorder's tables.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
    quote_schema: SchemaRef,
}

impl Store {
    /// Opens the file, creating it and its tables if missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let connection = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Store::with_schema(connection)
    }

    /// Opens an existing file for reading only (another process may be writing it only if
    /// it is not DuckDB: DuckDB allows one writing process per file).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let open = |path: &Path| {
            let config = Config::default().access_mode(AccessMode::ReadOnly)?;
            Connection::open_with_flags(path, config)
        };
        let connection = open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        connection
            .execute_batch("SET TimeZone = 'UTC'")
            .map_err(StoreError::Schema)?;
        Ok(Store {
            connection,
            quote_schema: quote_schema(),
        })
    }

    /// A database that lives in memory only (tests, trials).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let connection = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Store::with_schema(connection)
    }

    fn with_schema(connection: Connection) -> Result<Store, StoreError> {
        connection
            .execute_batch("SET TimeZone = 'UTC'")
            .and_then(|()| connection.execute_batch(SCHEMA))
            .map_err(StoreError::Schema)?;
        Ok(Store {
            connection,
            quote_schema: quote_schema(),
        })
    }

    /// The connection, for queries of one's own.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Writes one batch in one transaction: quotes and gaps through the appender, bars
    /// upserted. On an error nothing of the batch is committed and the store stays usable.
    pub fn write(&mut self, batch: &Batch) -> Result<Written, StoreError> {
        let transaction = self.connection.transaction().map_err(StoreError::Write)?;
        let mut written = Written::default();
        if !batch.quotes.is_empty() {
            let (columns, skipped) = quote_columns(&batch.quotes, &self.quote_schema)?;
            written.skipped = written.skipped.saturating_add(skipped);
            written.quotes = written.quotes.saturating_add(columns.num_rows());
            let mut appender = transaction.appender("quotes").map_err(StoreError::Write)?;
            appender
                .append_record_batch(columns)
                .map_err(StoreError::Write)?;
            appender.flush().map_err(StoreError::Write)?;
        }
        if !batch.gaps.is_empty() {
            let mut appender = transaction.appender("gaps").map_err(StoreError::Write)?;
            for gap in &batch.gaps {
                append_gap(&mut appender, gap, &mut written)?;
            }
            appender.flush().map_err(StoreError::Write)?;
        }
        if !batch.bars.is_empty() {
            let mut upsert = transaction
                .prepare_cached(UPSERT_BAR)
                .map_err(StoreError::Write)?;
            for row in &batch.bars {
                let Some(time) = seconds_to_timestamp(row.bar.time) else {
                    written.skipped = written.skipped.saturating_add(1);
                    continue;
                };
                let BarRow {
                    symbol,
                    timeframe,
                    bar,
                    closed,
                } = row;
                upsert
                    .execute(params![
                        symbol.as_ref(),
                        timeframe.as_ref(),
                        time,
                        bar.open,
                        bar.high,
                        bar.low,
                        bar.close,
                        bar.volume,
                        closed
                    ])
                    .map_err(StoreError::Write)?;
                written.bars = written.bars.saturating_add(1);
            }
        }
        transaction.commit().map_err(StoreError::Write)?;
        Ok(written)
    }

    /// The stored bars of one series with open times in `from..=to` (either end open), oldest
    /// first.
    pub fn bars(
        &self,
        symbol: &str,
        timeframe: &str,
        from: Option<f64>,
        to: Option<f64>,
    ) -> Result<Vec<StoredBar>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT epoch_us(time), open, high, low, close, volume, closed FROM bars \
                 WHERE symbol = ? AND timeframe = ? \
                 AND (?::BIGINT IS NULL OR epoch_us(time) >= ?) \
                 AND (?::BIGINT IS NULL OR epoch_us(time) <= ?) ORDER BY time",
            )
            .map_err(StoreError::Read)?;
        let from_us = from.and_then(seconds_to_micros);
        let to_us = to.and_then(seconds_to_micros);
        let rows = statement
            .query_map(
                params![symbol, timeframe, from_us, from_us, to_us, to_us],
                stored_bar,
            )
            .map_err(StoreError::Read)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Read)
    }

    /// The newest `limit` closed bars of one series, oldest first.
    pub fn latest_closed_bars(
        &self,
        symbol: &str,
        timeframe: &str,
        limit: usize,
    ) -> Result<Vec<StoredBar>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT epoch_us(time), open, high, low, close, volume, closed FROM bars \
                 WHERE symbol = ? AND timeframe = ? AND closed ORDER BY time DESC LIMIT ?",
            )
            .map_err(StoreError::Read)?;
        let mut bars = statement
            .query_map(params![symbol, timeframe, limit], stored_bar)
            .map_err(StoreError::Read)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Read)?;
        bars.reverse();
        Ok(bars)
    }

    /// The last quote row of each symbol (by reception), newest symbols first, at most
    /// `limit` of them: what a restarted relay answers with before its upstream says anything.
    /// With a `timeframe`, each also has that series' newest bar, if the store has one.
    pub fn last_states(
        &self,
        timeframe: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LastState>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut statement = self
            .connection
            .prepare_cached(
                "WITH last_quotes AS (SELECT * FROM quotes QUALIFY row_number() \
                 OVER (PARTITION BY symbol ORDER BY received_at DESC) = 1), \
                 last_bars AS (SELECT * FROM bars WHERE timeframe = ? QUALIFY row_number() \
                 OVER (PARTITION BY symbol ORDER BY time DESC) = 1) \
                 SELECT epoch_us(b.time), b.open, b.high, b.low, b.close, b.volume, b.closed, \
                 q.symbol, epoch_us(q.time), q.price, q.bid, q.ask, q.volume, q.change, \
                 q.change_pct, q.source, epoch_us(q.received_at) \
                 FROM last_quotes q LEFT JOIN last_bars b ON b.symbol = q.symbol \
                 ORDER BY q.received_at DESC LIMIT ?",
            )
            .map_err(StoreError::Read)?;
        let rows = statement
            .query_map(params![timeframe.unwrap_or(""), limit], |row| {
                // The bar's columns come first, so that `stored_bar` reads them.
                let bar = match row.get::<_, Option<i64>>(0)? {
                    Some(_) => Some(stored_bar(row)?),
                    None => None,
                };
                let time: Option<i64> = row.get(8)?;
                let source: String = row.get(15)?;
                Ok(LastState {
                    quote: QuoteRow {
                        symbol: Arc::from(row.get::<_, String>(7)?),
                        time: time.map(|micros| micros.div_euclid(1_000_000)),
                        price: row.get(9)?,
                        bid: row.get(10)?,
                        ask: row.get(11)?,
                        volume: row.get(12)?,
                        change: row.get(13)?,
                        change_pct: row.get(14)?,
                        source: if source == source_name(Source::Poll) {
                            Source::Poll
                        } else {
                            Source::Stream
                        },
                        received_at_us: row.get(16)?,
                    },
                    bar,
                })
            })
            .map_err(StoreError::Read)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Read)
    }

    /// The gap rows of one series that overlap `from..=to` (Unix seconds), as `(from, to)`.
    pub fn gaps_overlapping(
        &self,
        symbol: &str,
        timeframe: &str,
        from: f64,
        to: f64,
    ) -> Result<Vec<(f64, f64)>, StoreError> {
        let (Some(from), Some(to)) = (seconds_to_micros(from), seconds_to_micros(to)) else {
            return Ok(Vec::new());
        };
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT epoch_us(\"from\"), epoch_us(\"to\") FROM gaps \
                 WHERE symbol = ? AND timeframe = ? AND epoch_us(\"to\") > ? \
                 AND epoch_us(\"from\") < ? ORDER BY \"from\"",
            )
            .map_err(StoreError::Read)?;
        statement
            .query_map(params![symbol, timeframe, from, to], |row| {
                Ok((
                    micros_to_seconds(row.get(0)?),
                    micros_to_seconds(row.get(1)?),
                ))
            })
            .map_err(StoreError::Read)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Read)
    }

    /// How many rows `table` holds (`quotes`, `bars` or `gaps`).
    pub fn count(&self, table: &str) -> Result<u64, StoreError> {
        let table = match table {
            "quotes" | "bars" | "gaps" => table,
            _ => {
                return Err(StoreError::Read(duckdb::Error::InvalidParameterName(
                    table.to_owned(),
                )));
            }
        };
        self.connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|count| u64::try_from(count).unwrap_or(0))
            .map_err(StoreError::Read)
    }

    /// Forces what is committed into the database file (DuckDB otherwise checkpoints its
    /// write-ahead log on its own schedule; both are crash-safe).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.connection
            .execute_batch("CHECKPOINT")
            .map_err(StoreError::Write)
    }
}

/// The quotes as one Arrow chunk in the table's column order (DuckDB takes it in whole, which
/// is several times faster than a row at a time), and how many rows were left out.
fn quote_columns(
    quotes: &[QuoteRow],
    schema: &SchemaRef,
) -> Result<(RecordBatch, usize), StoreError> {
    let usable: Vec<(&QuoteRow, i64)> = quotes
        .iter()
        .filter_map(|quote| in_range(quote.received_at_us).map(|received| (quote, received)))
        .collect();
    let skipped = quotes.len().saturating_sub(usable.len());
    let doubles = |field: fn(&QuoteRow) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from_iter(
            usable.iter().map(|(quote, _)| field(quote)),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            usable.iter().map(|(quote, _)| quote.symbol.as_ref()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter(usable.iter().map(|(quote, _)| {
                quote
                    .time
                    .and_then(|seconds| seconds.checked_mul(1_000_000))
                    .and_then(in_range)
            }))
            .with_timezone("UTC"),
        ),
        doubles(|quote| quote.price),
        doubles(|quote| quote.bid),
        doubles(|quote| quote.ask),
        doubles(|quote| quote.volume),
        doubles(|quote| quote.change),
        doubles(|quote| quote.change_pct),
        Arc::new(StringArray::from_iter_values(
            usable.iter().map(|(quote, _)| source_name(quote.source)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                usable.iter().map(|(_, received)| *received),
            )
            .with_timezone("UTC"),
        ),
    ];
    let batch = RecordBatch::try_new(Arc::clone(schema), columns).map_err(|error| {
        StoreError::Write(duckdb::Error::ToSqlConversionFailure(Box::new(error)))
    })?;
    Ok((batch, skipped))
}

/// The `quotes` table's columns as Arrow types.
fn quote_schema() -> SchemaRef {
    let time = || DataType::Timestamp(ArrowTimeUnit::Microsecond, Some("UTC".into()));
    let double = |name: &str| Field::new(name, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("time", time(), true),
        double("price"),
        double("bid"),
        double("ask"),
        double("volume"),
        double("change"),
        double("change_pct"),
        Field::new("source", DataType::Utf8, false),
        Field::new("received_at", time(), false),
    ]))
}

/// A `bars` row selected as `epoch_us(time), open, high, low, close, volume, closed`.
fn stored_bar(row: &duckdb::Row<'_>) -> duckdb::Result<StoredBar> {
    Ok(StoredBar {
        time: micros_to_seconds(row.get(0)?),
        open: row.get(1)?,
        high: row.get(2)?,
        low: row.get(3)?,
        close: row.get(4)?,
        volume: row.get(5)?,
        closed: row.get(6)?,
    })
}

fn append_gap(
    appender: &mut duckdb::Appender<'_>,
    gap: &GapRow,
    written: &mut Written,
) -> Result<(), StoreError> {
    let times = (
        seconds_to_timestamp(gap.after),
        seconds_to_timestamp(gap.before),
        micros_timestamp(gap.detected_at_us),
    );
    let (Some(from), Some(to), Some(detected_at)) = times else {
        written.skipped = written.skipped.saturating_add(1);
        return Ok(());
    };
    appender
        .append_row(params![
            gap.symbol.as_ref(),
            gap.timeframe.as_ref(),
            from,
            to,
            detected_at
        ])
        .map_err(StoreError::Write)?;
    written.gaps = written.gaps.saturating_add(1);
    Ok(())
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Stream => "stream",
        Source::Poll => "poll",
    }
}

/// DuckDB's timestamps span years 290 309 BC to 294 247 AD; this keeps well inside that (and
/// inside what `f64` seconds hold to the microsecond): years 1677 to 2262.
const MAX_MICROS: i64 = 9_223_372_036_854_775;

fn in_range(micros: i64) -> Option<i64> {
    (-MAX_MICROS..=MAX_MICROS)
        .contains(&micros)
        .then_some(micros)
}

fn micros_timestamp(micros: i64) -> Option<Value> {
    in_range(micros).map(|micros| Value::Timestamp(TimeUnit::Microsecond, micros))
}

fn seconds_to_micros(seconds: f64) -> Option<i64> {
    let micros = (seconds * 1e6).round();
    // The range check also turns NaN and the infinities away.
    #[allow(clippy::cast_possible_truncation)]
    (micros.abs() <= MAX_MICROS as f64).then_some(micros as i64)
}

fn seconds_to_timestamp(seconds: f64) -> Option<Value> {
    seconds_to_micros(seconds).and_then(micros_timestamp)
}

fn micros_to_seconds(micros: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let seconds = micros as f64 / 1e6;
    seconds
}

/// Stored bars as the core's [`Bar`]s (each one's index is its position in `bars`).
pub fn to_bars(stored: &[StoredBar]) -> Vec<Bar> {
    stored
        .iter()
        .zip(0_i64..)
        .map(|(bar, index)| bar.to_bar(index))
        .collect()
}

impl StoredBar {
    /// As the core's [`Bar`], at position `index` of its series.
    pub fn to_bar(&self, index: i64) -> Bar {
        Bar {
            index,
            time: self.time,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume,
        }
    }
}

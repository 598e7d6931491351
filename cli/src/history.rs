//! `tickwire history`: fetch bars and exit.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use tickwire_core::message::Bar;
use tickwire_core::timeframe::Timeframe;
use tickwire_driver::State;

use crate::Failure;
use crate::feed_args::FeedArgs;
use crate::output::{bar_object, number_text, unix_now};
use crate::stream::unreachable;

/// Fetch bars of one symbol and exit.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Symbol such as BINANCE:BTCUSDT.
    symbol: String,
    /// Bar timeframe: seconds 5S; minutes 1, 5, 15, 60, 240 (or 1m, 1h, 4h); days 1D (1d);
    /// weeks 1W (1w); months 1M. Sent in the server's form (1h as 60).
    #[arg(long, short, value_parser = Timeframe::parse)]
    timeframe: Timeframe,
    /// How many bars.
    #[arg(long, short, default_value_t = 300)]
    count: u32,
    /// CSV with a header line.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// One JSON object per bar.
    #[arg(long)]
    json: bool,
    /// A DuckDB store (as `tickwire record` writes): the bars it already holds closed are
    /// read from it, only the newer ones are asked of the feed, and those are recorded.
    #[cfg(feature = "store")]
    #[arg(long, env = "TICKWIRE_DB")]
    db: Option<std::path::PathBuf>,
    #[command(flatten)]
    feed: FeedArgs,
}

pub(crate) async fn run(args: HistoryArgs) -> Result<(), Failure> {
    #[cfg(feature = "store")]
    if let Some(db) = args.db.clone() {
        return stored::run(args, db).await;
    }
    let bars = fetch(&args, args.count).await?;
    print(&args, &bars, unix_now())
}

/// The last `count` bars from the feed.
async fn fetch(args: &HistoryArgs, count: u32) -> Result<Vec<Bar>, Failure> {
    let (config, access) = args.feed.prepare(None).await?;
    let options = access.options(&config);
    let feed = args.feed.connect(config, options);
    let request = feed.history(&args.symbol, args.timeframe.as_str(), count);
    tokio::pin!(request);
    let mut ever_live = false;
    let result = loop {
        tokio::select! {
            result = &mut request => break result.map_err(|error| Failure::Message(format!("{} {}: {error}", args.symbol, args.timeframe))),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                ever_live |= feed.status().client.state == State::Live;
                if let Some(failure) = unreachable(&feed, ever_live)
                    .or_else(|| access.rejected(&feed))
                {
                    break Err(failure);
                }
            }
        }
    };
    feed.close().await;
    result
}

/// Whether the bar at `position` of `count` bars has closed at Unix second `now`: every bar
/// but the last has; the last is still forming while its period has not ended.
fn is_closed(timeframe: &Timeframe, bar: &Bar, position: usize, count: usize, now: i64) -> bool {
    if position.saturating_add(1) < count || !bar.time.is_finite() {
        return true;
    }
    // A float time: the bar's second (the cast saturates far outside i64).
    let start = bar.time.floor() as i64;
    timeframe.period_end(start).is_none_or(|end| end <= now)
}

fn print(args: &HistoryArgs, bars: &[Bar], now: i64) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write = |line: String| writeln!(out, "{line}");
    let timeframe = args.timeframe.as_str();
    let written: std::io::Result<()> = (|| {
        if args.csv {
            write("time,open,high,low,close,volume,closed".to_owned())?;
        }
        for (position, bar) in bars.iter().enumerate() {
            let closed = is_closed(&args.timeframe, bar, position, bars.len(), now);
            let time = number_text(bar.time);
            let volume = bar.volume.map_or_else(String::new, number_text);
            let line = if args.csv {
                format!(
                    "{time},{},{},{},{},{volume},{closed}",
                    bar.open, bar.high, bar.low, bar.close
                )
            } else if args.json {
                bar_object(&args.symbol, timeframe, bar, closed).to_string()
            } else {
                format!(
                    "{time:>14} o {:>12} h {:>12} l {:>12} c {:>12} v {volume}{}",
                    bar.open,
                    bar.high,
                    bar.low,
                    bar.close,
                    if closed { "" } else { " forming" }
                )
            };
            write(line)?;
        }
        Ok(())
    })();
    written
        .and_then(|()| out.flush())
        .map_err(|_| Failure::OutputClosed)
}

/// `history --db`: the store first, the feed for the rest.
#[cfg(feature = "store")]
mod stored {
    use std::path::PathBuf;

    use tickwire_core::message::Bar;
    use tickwire_core::record::{BarRow, Batch};
    use tickwire_core::timeframe::Timeframe;
    use tickwire_store::{Store, to_bars};

    use super::{HistoryArgs, fetch, is_closed, print};
    use crate::Failure;
    use crate::output::unix_now;

    pub(super) async fn run(args: HistoryArgs, db: PathBuf) -> Result<(), Failure> {
        let count = usize::try_from(args.count).unwrap_or(usize::MAX);
        let symbol = args.symbol.clone();
        let timeframe = args.timeframe.as_str().to_owned();
        let (store, stored, gaps) = blocking(move || {
            let store = Store::open(&db)?;
            let stored = to_bars(&store.latest_closed_bars(&symbol, &timeframe, count)?);
            let gaps = match stored.first() {
                Some(first) => store.gaps_overlapping(&symbol, &timeframe, first.time, f64::MAX)?,
                None => Vec::new(),
            };
            Ok((store, stored, gaps))
        })
        .await?;
        let now = unix_now();
        // Bars the store says may be missing are not trusted: the whole range is asked for.
        let need = if gaps.is_empty() {
            bars_to_ask(&args.timeframe, &stored, args.count, now)
        } else {
            args.count
        };
        let mut fetched = fetch(&args, need).await?;
        let (bars, from_store) = match combine(&stored, &fetched, count) {
            Some(combined) => combined,
            None => {
                if need < args.count {
                    // The store and the feed did not meet: everything from the feed.
                    fetched = fetch(&args, args.count).await?;
                }
                (fetched.clone(), 0)
            }
        };
        let rows: Vec<BarRow> = fetched
            .iter()
            .enumerate()
            .map(|(position, bar)| BarRow {
                symbol: args.symbol.as_str().into(),
                timeframe: args.timeframe.as_str().into(),
                bar: *bar,
                closed: is_closed(&args.timeframe, bar, position, fetched.len(), now),
            })
            .collect();
        let from_feed = bars.len().saturating_sub(from_store);
        let db = args.db.clone().unwrap_or_default();
        blocking(move || {
            let mut store = store;
            let batch = Batch {
                id: 1,
                quotes: Vec::new(),
                bars: rows,
                gaps: Vec::new(),
            };
            store.write(&batch).map(|_| ())
        })
        .await?;
        eprintln!(
            "tickwire: {from_store} bars from {}, {from_feed} from the feed",
            db.display()
        );
        print(&args, &bars, now)
    }

    async fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T, tickwire_store::StoreError> + Send + 'static,
    ) -> Result<T, Failure> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| Failure::Message("the store's thread failed".to_owned()))?
            .map_err(|error| Failure::Message(error.to_string()))
    }

    /// How many bars to ask the feed for: from the newest closed bar stored (asked again, to
    /// overlap) to the one forming now, at most `count`; `count` when nothing is stored.
    pub(super) fn bars_to_ask(timeframe: &Timeframe, stored: &[Bar], count: u32, now: i64) -> u32 {
        let Some(newest) = stored.last() else {
            return count;
        };
        // Periods that began after the newest stored bar, up to now (a market that was closed
        // for some of them has fewer bars: asking for more than exist is harmless).
        #[allow(clippy::cast_possible_truncation)] // saturating, and bar times are whole seconds
        let mut start = newest.time.floor() as i64;
        let mut periods = 0_u32;
        while periods < count {
            match timeframe.period_end(start) {
                Some(end) if end <= now => {
                    start = end;
                    periods = periods.saturating_add(1);
                }
                _ => break,
            }
        }
        periods.saturating_add(1).min(count)
    }

    /// The stored bars older than what the feed sent, then the feed's, the last `count` of
    /// them, and how many came from the store; `None` when the two do not meet (the feed's
    /// earliest bar is newer than the newest stored) or do not make `count`.
    pub(super) fn combine(
        stored: &[Bar],
        fetched: &[Bar],
        count: usize,
    ) -> Option<(Vec<Bar>, usize)> {
        let earliest = fetched.first()?.time;
        let newest = stored.last()?.time;
        if earliest > newest {
            return None;
        }
        let older: Vec<Bar> = stored
            .iter()
            .filter(|bar| bar.time < earliest)
            .copied()
            .collect();
        if older.len().saturating_add(fetched.len()) < count {
            return None;
        }
        let skip = older
            .len()
            .saturating_add(fetched.len())
            .saturating_sub(count);
        let from_store = older.len().saturating_sub(skip);
        let bars: Vec<Bar> = older
            .into_iter()
            .chain(fetched.iter().copied())
            .skip(skip)
            .zip(0_i64..)
            .map(|(bar, index)| Bar { index, ..bar })
            .collect();
        Some((bars, from_store))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn bars(times: &[f64]) -> Vec<Bar> {
            times
                .iter()
                .zip(0_i64..)
                .map(|(time, index)| Bar {
                    index,
                    time: *time,
                    open: *time,
                    high: *time,
                    low: *time,
                    close: *time,
                    volume: None,
                })
                .collect()
        }

        fn times(bars: &[Bar]) -> Vec<f64> {
            bars.iter().map(|bar| bar.time).collect()
        }

        #[test]
        fn the_feed_is_asked_from_the_newest_stored_bar_to_now() {
            let minute = Timeframe::parse("1").unwrap();
            let stored = bars(&[60.0, 120.0, 180.0]);
            // At 250 s the bar at 240 is forming: 180 again, then 240.
            assert_eq!(bars_to_ask(&minute, &stored, 100, 250), 2);
            // Long after: never more than asked for.
            assert_eq!(bars_to_ask(&minute, &stored, 100, 1_000_000), 100);
            assert_eq!(bars_to_ask(&minute, &[], 100, 250), 100);
        }

        #[test]
        fn stored_and_fetched_bars_join_where_they_meet() {
            let stored = bars(&[60.0, 120.0, 180.0]);
            let fetched = bars(&[180.0, 240.0]);
            let (joined, from_store) = combine(&stored, &fetched, 4).unwrap();
            assert_eq!(times(&joined), [60.0, 120.0, 180.0, 240.0]);
            assert_eq!(from_store, 2, "180 comes from the feed (its newer state)");
            assert_eq!(
                joined.iter().map(|bar| bar.index).collect::<Vec<_>>(),
                [0, 1, 2, 3]
            );
            // Only the newest `count`.
            let (joined, from_store) = combine(&stored, &fetched, 3).unwrap();
            assert_eq!(times(&joined), [120.0, 180.0, 240.0]);
            assert_eq!(from_store, 1);
            // Not enough together, or not meeting: the feed must be asked for all.
            assert!(combine(&stored, &fetched, 5).is_none());
            assert!(combine(&stored, &bars(&[300.0, 360.0]), 2).is_none());
            assert!(combine(&[], &fetched, 2).is_none());
        }
    }
}

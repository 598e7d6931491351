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
    #[command(flatten)]
    feed: FeedArgs,
}

pub(crate) async fn run(args: HistoryArgs) -> Result<(), Failure> {
    let (config, access) = args.feed.prepare(None).await?;
    let options = access.options(&config);
    let feed = args.feed.connect(config, options);
    let request = feed.history(&args.symbol, args.timeframe.as_str(), args.count);
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
    print(&args, &result?, unix_now())
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

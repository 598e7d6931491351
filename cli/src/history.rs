//! `tickwire history`: fetch bars and exit.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use tickwire_core::message::Bar;
use tickwire_driver::{Options, State};

use crate::Failure;
use crate::feed_args::FeedArgs;
use crate::output::bar_object;
use crate::stream::unreachable;

/// Fetch bars of one symbol and exit.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Symbol such as BINANCE:BTCUSDT.
    symbol: String,
    /// Bar timeframe: 1, 5, 15, 60, 240, 1D, 1W, 1M…
    #[arg(long, short)]
    timeframe: String,
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
    let config = args.feed.config()?;
    let feed = args.feed.connect(config, Options::default());
    let request = feed.history(&args.symbol, &args.timeframe, args.count);
    tokio::pin!(request);
    let mut ever_live = false;
    let result = loop {
        tokio::select! {
            result = &mut request => break result.map_err(|error| Failure::Message(format!("{} {}: {error}", args.symbol, args.timeframe))),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                ever_live |= feed.status().client.state == State::Live;
                if let Some(failure) = unreachable(&feed, ever_live) {
                    break Err(failure);
                }
            }
        }
    };
    feed.close().await;
    print(&args, &result?)
}

fn print(args: &HistoryArgs, bars: &[Bar]) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write = |line: String| writeln!(out, "{line}");
    let written: std::io::Result<()> = (|| {
        if args.csv {
            write("time,open,high,low,close,volume".to_owned())?;
        }
        for bar in bars {
            let volume = bar
                .volume
                .map_or_else(String::new, |volume| volume.to_string());
            let line = if args.csv {
                format!(
                    "{},{},{},{},{},{volume}",
                    bar.time, bar.open, bar.high, bar.low, bar.close
                )
            } else if args.json {
                bar_object(&args.symbol, &args.timeframe, bar, true).to_string()
            } else {
                format!(
                    "{:>14} o {:>12} h {:>12} l {:>12} c {:>12} v {}",
                    bar.time, bar.open, bar.high, bar.low, bar.close, volume
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

//! `tickwire stream`: live quotes (and bars) until Ctrl-C.

use std::io::Write;

use clap::Args;
use futures::StreamExt;
use tickwire_driver::{Event, Feed, Options, State};

use crate::Failure;
use crate::feed_args::FeedArgs;
use crate::output;

/// Stream live quotes (and bars) until Ctrl-C.
#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// Symbols such as BINANCE:BTCUSDT or NASDAQ:AAPL.
    #[arg(required = true)]
    symbols: Vec<String>,
    /// Also stream bars: TIMEFRAME[:COUNT], e.g. 1, 5:100, 1D:30 (COUNT bars of history first).
    #[arg(long, value_parser = parse_bars)]
    bars: Option<(String, u32)>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    feed: FeedArgs,
}

/// `TF[:COUNT]`, COUNT defaulting to 100.
pub(crate) fn parse_bars(text: &str) -> Result<(String, u32), String> {
    let (timeframe, count) = match text.split_once(':') {
        Some((timeframe, count)) => (
            timeframe,
            count
                .parse::<u32>()
                .map_err(|_| format!("bar count {count:?} is not a number"))?,
        ),
        None => (text, 100),
    };
    if timeframe.is_empty() || !timeframe.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "timeframe {timeframe:?}: expected e.g. 1, 5, 60, 1D, 1W"
        ));
    }
    Ok((timeframe.to_owned(), count.max(1)))
}

/// Whether the feed has given up before ever working: the breaker opened without one live
/// connection. Then the host is unreachable (or refuses us) and waiting longer will not help.
pub(crate) fn unreachable(feed: &Feed, ever_live: bool) -> Option<Failure> {
    let status = feed.status().client;
    if ever_live || status.state != State::CircuitOpen {
        return None;
    }
    let reason = status
        .last_failure
        .unwrap_or_else(|| "no connection".to_owned());
    Some(Failure::Message(format!(
        "cannot connect to {}: {reason}",
        feed_url(feed)
    )))
}

fn feed_url(feed: &Feed) -> String {
    feed.url()
}

pub(crate) async fn run(args: StreamArgs) -> Result<(), Failure> {
    let config = args.feed.config()?;
    let feed = args.feed.connect(config, Options::default());
    feed.subscribe(&args.symbols);
    let mut wanted = args.symbols.len();
    if let Some((timeframe, count)) = &args.bars {
        for symbol in &args.symbols {
            if feed.subscribe_bars(symbol, timeframe, *count).is_some() {
                wanted += 1;
            }
        }
    }
    let result = print_events(&feed, &args, wanted).await;
    feed.close().await;
    result
}

async fn print_events(feed: &Feed, args: &StreamArgs, wanted: usize) -> Result<(), Failure> {
    let mut events = feed.events();
    let mut ever_live = false;
    let mut rejected = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let stdout = std::io::stdout();
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            event = events.next() => match event {
                Some(event) => event,
                None => return Ok(()),
            },
        };
        match &event {
            Event::State(change) if change.state == State::Live => ever_live = true,
            Event::State(_) => {
                if let Some(failure) = unreachable(feed, ever_live) {
                    return Err(failure);
                }
            }
            Event::QuoteError { symbol, reason } | Event::SeriesError { symbol, reason, .. } => {
                rejected.push(format!("{symbol} ({reason})"));
            }
            _ => {}
        }
        let line = if args.json {
            output::event_json(&event).map(|object| object.to_string())
        } else {
            output::event_text(&event)
        };
        if let Some(line) = line {
            let mut out = stdout.lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Err(Failure::OutputClosed);
            }
        }
        if !rejected.is_empty() && rejected.len() >= wanted {
            return Err(Failure::Message(format!(
                "no valid symbol: {}",
                rejected.join(", ")
            )));
        }
    }
}

//! `tickwire stream`: live quotes (and bars) until Ctrl-C or SIGTERM.

use std::io::Write;

use clap::Args;
use futures::StreamExt;
use tickwire_core::timeframe::Timeframe;
use tickwire_driver::{Event, Feed, State};

use crate::Failure;
use crate::access::{Access, FallbackArgs};
use crate::feed_args::FeedArgs;
use crate::output;

/// Stream live quotes (and bars) until Ctrl-C or SIGTERM.
#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// Symbols such as BINANCE:BTCUSDT or NASDAQ:AAPL.
    #[arg(required = true)]
    symbols: Vec<String>,
    /// Also stream bars: TIMEFRAME[:COUNT], e.g. 1, 5:100, 1h, 1D:30 (COUNT bars of history
    /// first). Timeframes: seconds 5S, minutes 1, 5, 15, 60 (or 1m, 1h, 4h), days 1D, weeks 1W,
    /// months 1M.
    #[arg(long, value_parser = parse_bar_spec)]
    bars: Option<(Timeframe, u32)>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    fallback: FallbackArgs,
    #[command(flatten)]
    feed: FeedArgs,
}

/// `TF[:COUNT]`, COUNT defaulting to 100; the timeframe checked and in the server's form.
pub(crate) fn parse_bar_spec(text: &str) -> Result<(Timeframe, u32), String> {
    let (timeframe, count) = match text.split_once(':') {
        Some((timeframe, count)) => (
            timeframe,
            count
                .parse::<u32>()
                .map_err(|_| format!("bar count {count:?} is not a number"))?,
        ),
        None => (text, 100),
    };
    let timeframe = Timeframe::parse(timeframe).map_err(|error| error.to_string())?;
    Ok((timeframe, count.max(1)))
}

/// Subscribes the quotes of `symbols` and each of their `bars` series; returns how many
/// subscriptions were made (when every one is rejected, nothing is left to wait for).
pub(crate) fn subscribe(feed: &Feed, symbols: &[String], bars: &[(Timeframe, u32)]) -> usize {
    feed.subscribe(symbols);
    let mut wanted = symbols.len();
    for (timeframe, count) in bars {
        for symbol in symbols {
            if feed
                .subscribe_bars(symbol, timeframe.as_str(), *count)
                .is_ok()
            {
                wanted += 1;
            }
        }
    }
    wanted
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
    let (config, access) = args.feed.prepare(Some(&args.fallback)).await?;
    if !args.json {
        // The first line says what data this identity gets (JSON quotes carry update_mode).
        println!("{} -- {}", output::clock(), access.describe(&config));
    }
    // Polling serves quotes while the stream cannot connect: no reason to give up then.
    let give_up_unreachable = config.polling.is_none();
    // Before connecting, so SIGTERM during the handshake also ends us cleanly.
    let stop = crate::signals::stop();
    let options = access.options(&config);
    let feed = args.feed.connect(config, options);
    let wanted = subscribe(&feed, &args.symbols, args.bars.as_slice());
    let result = print_events(&feed, &args, wanted, &access, give_up_unreachable, stop).await;
    feed.close().await;
    result
}

/// Prints events until `stop` completes (Ctrl-C, SIGTERM), the feed ends or fails for good.
async fn print_events(
    feed: &Feed,
    args: &StreamArgs,
    wanted: usize,
    access: &Access,
    give_up_unreachable: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let mut events = feed.events();
    let mut ever_live = false;
    let mut rejected = Vec::new();
    let mut warned_signed_out = false;
    tokio::pin!(stop);
    let stdout = std::io::stdout();
    loop {
        let event = tokio::select! {
            () = &mut stop => return Ok(()),
            event = events.next() => match event {
                Some(event) => event,
                None => return Ok(()),
            },
        };
        match &event {
            Event::State(change) if change.state == State::Live => ever_live = true,
            Event::State(_) if give_up_unreachable => {
                if let Some(failure) = unreachable(feed, ever_live) {
                    return Err(failure);
                }
            }
            Event::QuoteError { symbol, reason } | Event::SeriesError { symbol, reason, .. } => {
                rejected.push(format!("{symbol} ({reason})"));
            }
            Event::AuthTokenRejected { refreshed: false } => {
                if let Some(failure) = access.rejected(feed) {
                    return Err(failure);
                }
            }
            Event::AuthTokenRefreshFailed { .. } if !warned_signed_out => {
                if let Some(warning) = access.signed_out_warning() {
                    eprintln!("tickwire: {warning}");
                    warned_signed_out = true;
                }
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

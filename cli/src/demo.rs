//! `tickwire demo`: the emulator misbehaves on a schedule while the real client streams
//! through it over loopback; every recovery is shown live, then a summary.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use tickwire_core::client::{Config, DisconnectCause, Mode, PollingConfig, Source, parse_duration};
use tickwire_driver::{Event, Options, State};
use tickwire_emulator::{Emulator, EmulatorConfig, Fault};
use tickwire_http::feed::ScannerPoller;
use tickwire_http::scanner::Scanner;
use tickwire_http::{Bases, HttpClient, HttpConfig};

use crate::Failure;
use crate::feed_args::RuntimeChoice;
use crate::output::{self, human_duration};

/// `println!` that ends the demo quietly (exit 0) once the reader has gone (`| head`), instead
/// of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*).map_err(|_| Failure::OutputClosed)?
    };
}

const SYMBOLS: [&str; 4] = ["BINANCE:BTCUSDT", "NASDAQ:AAPL", "FX:EURUSD", "SP:SPX"];

/// What goes wrong, connection by connection (see `tickwire emulate --help` for the syntax).
const SCHEDULE: [(&str, &str); 5] = [
    (
        "#1:drop@4s",
        "connection 1 is reset without a close frame after 4 s",
    ),
    (
        "#2:stall@4s/60s",
        "connection 2 stalls after 4 s: the socket stays open, nothing arrives",
    ),
    (
        "#3:heartbeats-only@4s/60s",
        "connection 3 sends only heartbeats after 4 s (a zombie link)",
    ),
    ("#4:refuse", "connection 4 is refused"),
    (
        "#5:refuse",
        "connection 5 is refused too; connection 6 streams to the end",
    ),
];

/// Run the emulator with a fault schedule and stream through it, showing every recovery.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long to run: the faults take the first half, then a quiet market, then a stretch
    /// of refused upgrades that the polling fallback bridges.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    duration: Duration,
    /// Which async runtime drives the client.
    #[arg(long, value_enum, default_value = "tokio")]
    runtime: RuntimeChoice,
    /// Print every quote (by default one line per second per symbol).
    #[arg(long)]
    verbose: bool,
}

/// What happened, for the summary.
#[derive(Default)]
struct Tally {
    quotes: u64,
    bars: u64,
    closed_bar_times: Vec<f64>,
    /// Time and cause of the disconnect being recovered from.
    down_since: Option<(Instant, DisconnectCause)>,
    recoveries: Vec<(DisconnectCause, Duration)>,
    /// Symbols quoted on the current connection, and whether every connection got them all.
    quoted_since_live: BTreeSet<String>,
    live_periods: u32,
    fully_restored_periods: u32,
    /// Connection attempts when the quiet stretch began and ended.
    quiet_attempts: Option<(u64, u64)>,
    /// Quotes the scanner delivered while the stream was refused.
    polled_quotes: u64,
    /// When polling took over, and how long it lasted once the stream was back.
    polling_since: Option<Instant>,
    polling_stretches: Vec<Duration>,
}

pub(crate) async fn run(args: DemoArgs) -> Result<(), Failure> {
    let faults: Vec<Fault> = SCHEDULE
        .iter()
        .map(|(spec, _)| spec.parse())
        .collect::<Result<_, _>>()
        .map_err(|error| Failure::Message(format!("{error}")))?;
    let emulator = Emulator::start(EmulatorConfig {
        symbols: 20,
        rate_hz: 60.0,
        heartbeat_interval: Duration::from_millis(400),
        faults,
        ..EmulatorConfig::default()
    })
    .await
    .map_err(|error| Failure::Message(format!("cannot start the emulator: {error}")))?;
    let config = Config {
        url: emulator.url(),
        read_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        idle_heartbeats: 5,
        data_silence: Duration::from_secs(5),
        health_interval: Duration::from_secs(1),
        grace: Duration::from_millis(300),
        backoff_initial: Duration::from_millis(300),
        backoff_max: Duration::from_secs(2),
        max_attempts: 4,
        breaker_recovery: Duration::from_secs(3),
        stable_after: Duration::from_secs(2),
        // Two probes at most in the refused stretch, so the stream is back soon after it.
        breaker_recovery_max: Duration::from_secs(3),
        seed: Some(7),
        polling: Some(PollingConfig {
            interval: Duration::from_secs(1),
            unavailable_after: Duration::from_secs(3),
            timeout: Duration::from_secs(5),
        }),
        ..Config::default()
    };
    // The polling fallback asks the emulator's scanner, over HTTP on the same port.
    let poller = ScannerPoller::new(Scanner::new(HttpClient::new(HttpConfig {
        bases: Bases::single(&emulator.http_base()),
        timeout: Duration::from_secs(3),
        ..HttpConfig::default()
    })));
    let options = Options {
        poller: Some(std::sync::Arc::new(poller)),
        ..Options::default()
    };
    say!(
        "tickwire demo: the embedded emulator at {} misbehaves on schedule:",
        emulator.url()
    );
    for (spec, what) in SCHEDULE {
        say!("  {spec:<28} {what}");
    }
    say!("  then a quiet market, then refused WebSocket upgrades that polling bridges");
    say!(
        "client: read timeout 2s, zombie after 5 idle heartbeats (every 400 ms), grace 300 ms, backoff from 300 ms, polls the scanner after 3 s without the stream; runtime {:?}\n",
        args.runtime
    );
    let feed = match args.runtime {
        RuntimeChoice::Tokio => tickwire_tokio::connect_with(config, options),
        RuntimeChoice::AsyncStd => tickwire_async_std::connect_with(config, options),
    };
    feed.subscribe(SYMBOLS);
    let series = feed.subscribe_bars("BINANCE:BTCUSDT", "1", 20);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut last_printed: BTreeMap<String, Instant> = BTreeMap::new();
    let mut events = feed.events();
    let deadline = tokio::time::sleep(args.duration);
    tokio::pin!(deadline);
    // The market goes quiet for a while: a client that mistakes silence for a dead link churns.
    let (quiet_from, quiet_for) = (args.duration.mul_f64(0.5), args.duration.mul_f64(0.175));
    // Then the server refuses upgrades: polling bridges the gap until the stream is back.
    let (refuse_from, refuse_for) = (args.duration.mul_f64(0.7), args.duration.mul_f64(0.125));
    let refuse_start = tokio::time::sleep(refuse_from);
    tokio::pin!(refuse_start);
    let refuse_end = tokio::time::sleep(refuse_from + refuse_for);
    tokio::pin!(refuse_end);
    let (mut refusing, mut refused) = (false, false);
    let quiet_start = tokio::time::sleep(quiet_from);
    tokio::pin!(quiet_start);
    let quiet_end = tokio::time::sleep(quiet_from + quiet_for);
    tokio::pin!(quiet_end);
    let (mut quiet_started, mut quiet_ended) = (false, false);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            () = &mut deadline => break,
            () = &mut quiet_start, if !quiet_started => {
                quiet_started = true;
                emulator.set_market_open(false);
                emulator.pause_market(true);
                let attempts = feed.status().client.counters.connection_attempts;
                tally.quiet_attempts = Some((attempts, attempts));
                say!(
                    "{} ~~ the market closes and goes silent for {}: heartbeats only ({} zombie windows)",
                    output::clock(),
                    human_duration(quiet_for),
                    (quiet_for.as_millis() / 2_000).max(1)
                );
                continue;
            }
            () = &mut quiet_end, if quiet_started && !quiet_ended => {
                quiet_ended = true;
                emulator.pause_market(false);
                emulator.set_market_open(true);
                let attempts = feed.status().client.counters.connection_attempts;
                if let Some((from, _)) = tally.quiet_attempts {
                    tally.quiet_attempts = Some((from, attempts));
                }
                say!("{} ~~ the market opens again", output::clock());
                continue;
            }
            () = &mut refuse_start, if !refusing => {
                refusing = true;
                emulator.refuse_upgrades(Some(503));
                emulator.inject(tickwire_emulator::FaultAction::Drop);
                say!(
                    "{} ~~ the server drops the link and refuses WebSocket upgrades (HTTP 503) for {}: the scanner over HTTP serves quotes meanwhile",
                    output::clock(),
                    human_duration(refuse_for)
                );
                continue;
            }
            () = &mut refuse_end, if refusing && !refused => {
                refused = true;
                emulator.refuse_upgrades(None);
                say!("{} ~~ upgrades are accepted again: the stream takes over at the next attempt", output::clock());
                continue;
            }
            _ = &mut ctrl_c => break,
            event = events.next() => match event { Some(event) => event, None => break },
        };
        let elapsed = started.elapsed();
        match &event {
            Event::Quote(quote) => {
                tally.quotes += 1;
                let symbol = quote.quote.symbol.to_string();
                if quote.source == Source::Poll {
                    tally.polled_quotes += 1;
                } else {
                    tally.quoted_since_live.insert(symbol.clone());
                }
                let due = last_printed
                    .get(&symbol)
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
                if !(args.verbose || due) {
                    continue;
                }
                last_printed.insert(symbol, Instant::now());
            }
            Event::Bar(bar) => {
                tally.bars += 1;
                if bar.closed {
                    tally.closed_bar_times.push(bar.bar.time);
                }
                if !args.verbose && !bar.closed {
                    continue;
                }
            }
            Event::State(change) => {
                match (change.mode, tally.polling_since) {
                    (Mode::Polling, None) => tally.polling_since = Some(Instant::now()),
                    (Mode::Streaming, Some(since)) => {
                        tally.polling_stretches.push(since.elapsed());
                        tally.polling_since = None;
                    }
                    _ => {}
                }
                if let Some(cause) = change.cause {
                    if tally.down_since.is_none() && cause != DisconnectCause::ClientClosed {
                        tally.down_since = Some((Instant::now(), cause));
                    }
                }
                if change.state == State::Live {
                    tally.live_periods += 1;
                    tally.quoted_since_live.clear();
                    if let Some((since, cause)) = tally.down_since.take() {
                        let took = since.elapsed();
                        tally.recoveries.push((cause, took));
                        say!(
                            "{} ++ recovered from {} in {}; {} quote symbols and {} bar series replayed",
                            output::clock(),
                            cause.as_str().replace('_', " "),
                            human_duration(took),
                            SYMBOLS.len(),
                            usize::from(series.is_ok())
                        );
                    }
                } else if tally.quoted_since_live.len() == SYMBOLS.len() {
                    tally.fully_restored_periods += 1;
                    tally.quoted_since_live.clear();
                }
            }
            _ => {}
        }
        if let Some(line) = output::event_text(&event) {
            say!("[{:>5.1}s] {line}", elapsed.as_secs_f64());
        }
    }
    if tally.quoted_since_live.len() == SYMBOLS.len() {
        tally.fully_restored_periods += 1;
    }
    emulator.pause_market(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(Some(event)) = futures::FutureExt::now_or_never(events.next()) {
        if matches!(event, Event::Quote(_)) {
            tally.quotes += 1;
        }
    }
    let status = feed.status();
    feed.close().await;
    let sent = emulator.stats().quotes_sent.load(Ordering::Relaxed);
    emulator.shutdown().await;
    summary(&tally, &status, sent, started.elapsed())
}

fn summary(
    tally: &Tally,
    status: &tickwire_driver::FeedStatus,
    sent: u64,
    elapsed: Duration,
) -> Result<(), Failure> {
    let counters = &status.client.counters;
    say!("\n== summary after {}", human_duration(elapsed));
    let streamed = counters.quotes.saturating_sub(tally.polled_quotes);
    say!(
        "quotes received        {} ({streamed} streamed, the emulator handed {sent} to its sockets; {} polled)",
        tally.quotes,
        tally.polled_quotes
    );
    if streamed == sent {
        say!("                       every quote the server sent arrived: nothing lost");
    } else {
        say!(
            "                       {} were in flight on sockets the server reset",
            sent.saturating_sub(streamed)
        );
    }
    say!(
        "bars received          {} ({} closed)",
        tally.bars,
        tally.closed_bar_times.len()
    );
    let gap_free = tally
        .closed_bar_times
        .windows(2)
        .all(|pair| pair[1] > pair[0]);
    say!(
        "closed bars            {}",
        if gap_free {
            "strictly increasing, no duplicates"
        } else {
            "OUT OF ORDER"
        }
    );
    say!(
        "connection attempts    {} ({} opened)",
        counters.connection_attempts,
        counters.connections
    );
    say!("reconnects by cause");
    for cause in DisconnectCause::ALL {
        let count = counters.disconnects.get(cause);
        if count > 0 && cause != DisconnectCause::ClientClosed {
            say!("  {:<22} {count}", cause.as_str());
        }
    }
    say!("recoveries");
    for (cause, took) in &tally.recoveries {
        say!(
            "  {:<22} back live in {}",
            cause.as_str(),
            human_duration(*took)
        );
    }
    say!(
        "subscriptions          all {} symbols quoted on {} of {} connections that went live",
        SYMBOLS.len(),
        tally.fully_restored_periods,
        tally.live_periods
    );
    if let Some((from, to)) = tally.quiet_attempts {
        let reconnects = to.saturating_sub(from);
        let why = if reconnects == 0 {
            "the session was known to be alive"
        } else {
            "the first verdict re-checks the session, later ones wait hours"
        };
        say!(
            "quiet market           {reconnects} reconnect(s) while it was silent: {why} \
             (a client that mistakes silence for a dead link reconnects every zombie window)"
        );
    }
    match tally.polling_stretches.as_slice() {
        [] if counters.polls == 0 => say!("polling fallback       not needed"),
        stretches => say!(
            "polling fallback       {} stretch(es) ({}), {} polls, {} quotes from the scanner; the stream took over each time",
            stretches.len().max(1),
            stretches
                .iter()
                .map(|took| human_duration(*took))
                .collect::<Vec<_>>()
                .join(", "),
            counters.polls,
            tally.polled_quotes
        ),
    }
    say!("heartbeats echoed      {}", counters.heartbeats);
    say!("events conflated       {}", status.events_conflated);
    Ok(())
}

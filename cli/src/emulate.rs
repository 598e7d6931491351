//! `tickwire emulate`: run the feed emulator until Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tickwire_core::client::parse_duration;
use tickwire_emulator::{Emulator, EmulatorConfig, Fault, MarketHours};
use tokio::sync::broadcast::error::RecvError;

use crate::Failure;

/// Run a TradingView-protocol feed emulator on loopback until Ctrl-C (or SIGTERM).
#[derive(Debug, Args)]
pub(crate) struct EmulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// Number of symbols in the synthetic market.
    #[arg(long, default_value_t = 50)]
    symbols: usize,
    /// Market ticks per second (over all symbols).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seed of the market's random walk.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Time between heartbeats.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Send one packet per WebSocket message instead of batching.
    #[arg(long)]
    per_packet: bool,
    /// Fault to inject, repeatable: [#N:]ACTION[@AT][/FOR], e.g. "#1:drop@5s", "stall@10s/20s",
    /// "#2:refuse", "slow/5ms", "#1:bad-token", "expire-token@30s". Actions: drop, close,
    /// drop-mid, stall, heartbeats-only, garbage, bad-length, protocol-error, slow, bad-token
    /// (set_auth_token refused whatever the token), expire-token (the connection's token expires
    /// at AT: "bad auth token", close, and that token is refused from then on), refuse, delay,
    /// http-429.
    #[arg(long = "fault", value_parser = clap::value_parser!(Fault))]
    faults: Vec<Fault>,
    /// Market hours as OPEN/CLOSED, e.g. "20s/40s": open for OPEN, then closed (symbols out of
    /// session, no ticks) for CLOSED, repeating from the start. Crypto trades around the clock.
    #[arg(long, value_name = "OPEN/CLOSED", value_parser = parse_market_hours)]
    market_hours: Option<MarketHours>,
    /// Start with the market closed, and keep it closed (crypto still trades).
    #[arg(long, conflicts_with = "market_hours")]
    closed: bool,
    /// Print one line per connection event to stderr (open, quote session, token rejected,
    /// closed). Token values are never printed.
    #[arg(long, short)]
    verbose: bool,
}

/// `OPEN/CLOSED`, each a duration such as `20s` or `1m`.
fn parse_market_hours(text: &str) -> Result<MarketHours, String> {
    let (open, closed) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected OPEN/CLOSED, e.g. 20s/40s"))?;
    let part = |name: &str, value: &str| {
        let duration =
            parse_duration(value).map_err(|error| format!("{name} {value:?}: {error}"))?;
        if duration.is_zero() {
            return Err(format!("{name} {value:?}: must be more than zero"));
        }
        Ok(duration)
    };
    Ok(MarketHours {
        open: part("open", open)?,
        closed: part("closed", closed)?,
    })
}

/// The SIGTERM handler (unix), installed before the server starts so that a SIGTERM sent as
/// soon as it is listening stops it cleanly instead of killing it.
#[cfg(unix)]
type Terminate = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Terminate = ();

fn on_terminate() -> Terminate {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).ok()
    }
}

/// Ctrl-C, or SIGTERM on unix (how service managers and `kill` stop it).
async fn stop_signal(terminate: Terminate) {
    #[cfg(unix)]
    if let Some(mut terminate) = terminate {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        return;
    }
    #[cfg(not(unix))]
    let () = terminate;
    let _ = tokio::signal::ctrl_c().await;
}

pub(crate) async fn run(args: EmulateArgs) -> Result<(), Failure> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(Failure::Message(format!(
            "--rate {}: expected ticks per second, 0 or more",
            args.rate
        )));
    }
    let config = EmulatorConfig {
        listen: args.listen,
        symbols: args.symbols.max(1),
        rate_hz: args.rate,
        seed: args.seed,
        heartbeat_interval: args.heartbeat.max(Duration::from_millis(10)),
        batch: !args.per_packet,
        faults: args.faults,
        market_hours: args.market_hours,
        start_closed: args.closed,
        ..EmulatorConfig::default()
    };
    let terminate = on_terminate();
    let emulator = Emulator::start(config)
        .await
        .map_err(|error| Failure::Message(format!("cannot listen on {}: {error}", args.listen)))?;
    if args.verbose {
        let mut events = emulator.events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    // Like stdout, a closed stderr must not stop the server.
                    Ok(event) => {
                        let _ = writeln!(std::io::stderr(), "{event}");
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let _ =
                            writeln!(std::io::stderr(), "({missed} connection events not shown)");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    // A reader that went away (`| head -1`) must not stop the server: write errors are ignored.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "tickwire emulator listening on {}", emulator.url());
    let _ = writeln!(
        stdout,
        "symbols: {} (e.g. BINANCE:BTCUSDT, NASDAQ:AAPL, FX:EURUSD, EMU:S10); Ctrl-C to stop",
        args.symbols
    );
    if args.closed {
        let _ = writeln!(stdout, "market closed (crypto still trades)");
    } else if let Some(hours) = args.market_hours {
        let _ = writeln!(
            stdout,
            "market hours: open {:?}, closed {:?}, repeating (crypto always trades)",
            hours.open, hours.closed
        );
    }
    let _ = stdout.flush();
    drop(stdout);
    stop_signal(terminate).await;
    emulator.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn market_hours_parse_or_say_why() {
        assert_eq!(
            parse_market_hours("20s/40s"),
            Ok(MarketHours {
                open: Duration::from_secs(20),
                closed: Duration::from_secs(40)
            })
        );
        assert_eq!(
            parse_market_hours("1m/500ms").map(|hours| hours.closed),
            Ok(Duration::from_millis(500))
        );
        assert!(
            parse_market_hours("20s")
                .unwrap_err()
                .contains("expected OPEN/CLOSED")
        );
        assert!(
            parse_market_hours("soon/40s")
                .unwrap_err()
                .starts_with("open \"soon\"")
        );
        assert!(
            parse_market_hours("20s/")
                .unwrap_err()
                .starts_with("closed")
        );
        assert!(
            parse_market_hours("0s/40s")
                .unwrap_err()
                .contains("more than zero")
        );
    }
}

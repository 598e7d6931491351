//! `tickwire emulate`: run the feed emulator until Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tickwire_core::client::parse_duration;
use tickwire_emulator::{Emulator, EmulatorConfig, Fault};

use crate::Failure;

/// Run a TradingView-protocol feed emulator on loopback until Ctrl-C.
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
    /// "#2:refuse", "slow/5ms". Actions: drop, close, drop-mid, stall, heartbeats-only, garbage,
    /// bad-length, protocol-error, slow, refuse, delay, http-429.
    #[arg(long = "fault", value_parser = clap::value_parser!(Fault))]
    faults: Vec<Fault>,
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
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config)
        .await
        .map_err(|error| Failure::Message(format!("cannot listen on {}: {error}", args.listen)))?;
    // A reader that went away (`| head -1`) must not stop the server: write errors are ignored.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "tickwire emulator listening on {}", emulator.url());
    let _ = writeln!(
        stdout,
        "symbols: {} (e.g. BINANCE:BTCUSDT, NASDAQ:AAPL, FX:EURUSD, EMU:S10); Ctrl-C to stop",
        args.symbols
    );
    let _ = stdout.flush();
    drop(stdout);
    let _ = tokio::signal::ctrl_c().await;
    emulator.shutdown().await;
    Ok(())
}

//! `tickwire emulate`: run the feed emulator until Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tickwire_core::client::parse_duration;
use tickwire_emulator::{Account, Emulator, EmulatorConfig, Fault, MarketHours, SigninMode};
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
    /// Print the market's symbols (as many as --symbols makes) with their kind and name, one
    /// per line, and exit.
    #[arg(long)]
    list_symbols: bool,
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
    /// An account the HTTP sign-in accepts, repeatable: NAME:PASSWORD[:TOTP_BASE32] (the
    /// password cannot hold a ':'; with a TOTP secret, sign-in asks for the second factor).
    /// Given once or more, it replaces the default accounts (demo / demo-password, and
    /// demo2fa / demo-password with TOTP secret GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ).
    #[arg(long = "account", value_name = "NAME:PASSWORD[:TOTP_BASE32]", value_parser = clap::value_parser!(Account))]
    accounts: Vec<Account>,
    /// How long the auth tokens (JWTs) the HTTP side issues live, e.g. "4h", "90s".
    #[arg(long, default_value = "4h", value_parser = parse_duration)]
    token_lifetime: Duration,
    /// How sign-in answers: normal (checks the password), captcha, lockout, try-later, html
    /// (a 400 HTML page), rate-limited (429) or rate-limited:SECS (429 with Retry-After).
    #[arg(long, default_value = "normal", value_name = "MODE", value_parser = clap::value_parser!(SigninMode))]
    signin_mode: SigninMode,
    /// Answer every WebSocket upgrade with this HTTP status (e.g. 503) and no WebSocket, while
    /// HTTP (sign-in, search, scanner) goes on being served.
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u16).range(200..=599))]
    refuse_upgrades: Option<u16>,
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

/// `--list-symbols`: the instruments the market would have, one line each.
fn list_symbols(args: &EmulateArgs) -> Result<(), Failure> {
    let market = tickwire_emulator::market::Market::new(args.symbols.max(1), args.seed);
    let mut stdout = std::io::stdout().lock();
    for instrument in market.instruments() {
        writeln!(
            stdout,
            "{:<18} {:<8} {}",
            instrument.name,
            format!("{:?}", instrument.kind).to_lowercase(),
            instrument.description
        )
        .map_err(|_| Failure::OutputClosed)?;
    }
    Ok(())
}

pub(crate) async fn run(args: EmulateArgs) -> Result<(), Failure> {
    if args.list_symbols {
        return list_symbols(&args);
    }
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
        accounts: if args.accounts.is_empty() {
            Account::defaults()
        } else {
            args.accounts.clone()
        },
        token_lifetime: args.token_lifetime,
        ..EmulatorConfig::default()
    };
    let terminate = on_terminate();
    let emulator = Emulator::start(config)
        .await
        .map_err(|error| Failure::Message(format!("cannot listen on {}: {error}", args.listen)))?;
    // In place before the address is printed, so no client sees the defaults.
    emulator.set_signin_mode(args.signin_mode);
    emulator.refuse_upgrades(args.refuse_upgrades);
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
        "HTTP (sign-in, home page, symbol search, scanner) on {}",
        emulator.http_base()
    );
    let accounts: Vec<String> = emulator_accounts(&args.accounts);
    let _ = writeln!(stdout, "accounts: {}", accounts.join(", "));
    if args.signin_mode != SigninMode::Normal {
        let _ = writeln!(stdout, "sign-in mode: {:?}", args.signin_mode);
    }
    if let Some(code) = args.refuse_upgrades {
        let _ = writeln!(stdout, "WebSocket upgrades refused with HTTP {code}");
    }
    let _ = writeln!(
        stdout,
        "symbols: {} (e.g. BINANCE:BTCUSDT, NASDAQ:AAPL, FX:EURUSD; --list-symbols names them all); Ctrl-C to stop",
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

/// The account names to show (never the passwords), marking those with a second factor.
fn emulator_accounts(given: &[Account]) -> Vec<String> {
    let defaults;
    let accounts = if given.is_empty() {
        defaults = Account::defaults();
        &defaults
    } else {
        given
    };
    accounts
        .iter()
        .map(|account| {
            let second_factor = if account.totp_secret.is_some() {
                " (TOTP)"
            } else {
                ""
            };
            format!("{}{second_factor}", account.username)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_flags_parse() {
        use clap::Parser;

        #[derive(Debug, Parser)]
        struct Command {
            #[command(flatten)]
            args: EmulateArgs,
        }
        let parse = |extra: &[&str]| {
            Command::try_parse_from(["emulate"].iter().chain(extra)).map(|command| command.args)
        };
        let defaults = parse(&[]).unwrap();
        assert!(defaults.accounts.is_empty());
        assert_eq!(defaults.token_lifetime, Duration::from_secs(4 * 3_600));
        assert_eq!(defaults.signin_mode, SigninMode::Normal);
        assert_eq!(defaults.refuse_upgrades, None);
        assert_eq!(
            emulator_accounts(&defaults.accounts),
            ["demo", "demo2fa (TOTP)"]
        );
        let args = parse(&[
            "--account",
            "alice:pw1",
            "--account",
            "bob:pw2:GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            "--token-lifetime",
            "90s",
            "--signin-mode",
            "rate-limited:30",
            "--refuse-upgrades",
            "503",
        ])
        .unwrap();
        assert_eq!(args.accounts.len(), 2);
        assert_eq!(args.accounts[0], Account::new("alice", "pw1"));
        assert_eq!(
            args.accounts[1].totp_secret.as_deref(),
            Some(&b"12345678901234567890"[..])
        );
        assert_eq!(emulator_accounts(&args.accounts), ["alice", "bob (TOTP)"]);
        assert_eq!(args.token_lifetime, Duration::from_secs(90));
        assert_eq!(
            args.signin_mode,
            SigninMode::RateLimited {
                retry_after: Some(30)
            }
        );
        assert_eq!(args.refuse_upgrades, Some(503));
        for bad in [
            ["--account", "nocolon"].as_slice(),
            &["--account", "bob:pw:not-base32!"],
            &["--signin-mode", "sometimes"],
            &["--refuse-upgrades", "42"],
            &["--token-lifetime", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

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

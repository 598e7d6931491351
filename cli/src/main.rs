//! The `tickwire` command line.

mod access;
mod decode;
mod demo;
mod emulate;
mod feed_args;
mod history;
mod login;
mod output;
#[cfg(feature = "store")]
mod record;
mod relay;
#[cfg(feature = "store")]
mod relay_store;
mod search;
mod signals;
mod stream;
mod token;

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tickwire_core::codec::{DEFAULT_MAX_PACKET_SIZE, Decoder};

/// Resilient real-time market data over the TradingView-style WebSocket protocol.
#[derive(Debug, Parser)]
#[command(name = "tickwire", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode raw WebSocket message texts (one message per line) into one JSON object per packet.
    ///
    /// Each output line has at least "kind" (hello, heartbeat, the method such as qsd or
    /// timescale_update, unknown, or error) and "line" (the input line). A bad packet prints an
    /// error object and decoding goes on; the exit status is non-zero only when the input could
    /// not be read.
    Decode {
        /// File to read; standard input when omitted or "-".
        file: Option<PathBuf>,
        /// Largest packet accepted, in UTF-16 code units.
        #[arg(long, default_value_t = DEFAULT_MAX_PACKET_SIZE)]
        max_packet_size: usize,
    },
    /// Stream live quotes (and bars) until Ctrl-C.
    Stream(stream::StreamArgs),
    /// Record live quotes (and bars) into a DuckDB file until Ctrl-C or SIGTERM.
    ///
    /// Tables quotes, bars (one row per bar, updated until it closes) and gaps (where a
    /// reconnect's backfill could not reach back). Commits at least every --commit-every; on
    /// Ctrl-C or SIGTERM everything received is committed before exit.
    #[cfg(feature = "store")]
    Record(Box<record::RecordArgs>),
    /// Fetch bars of one symbol and exit.
    History(history::HistoryArgs),
    /// Run the feed emulator on loopback until Ctrl-C.
    Emulate(emulate::EmulateArgs),
    /// The emulator misbehaves on a schedule while the client streams through it: every
    /// recovery live, then a summary. No network needed; under a minute.
    Demo(demo::DemoArgs),
    /// Fan live data out to many WebSocket clients, with a live page, metrics and health.
    Relay(Box<relay::RelayArgs>),
    /// Sign in to TradingView once and store the session (mode 0600) for every other command.
    ///
    /// The password comes from a no-echo prompt, TICKWIRE_PASSWORD or standard input, never
    /// from the command line; the second factor from a prompt or TICKWIRE_TOTP_SECRET. Signing
    /// in is never retried: TradingView answers repeated sign-ins with a captcha and a block.
    Login(login::LoginArgs),
    /// Remove the stored session.
    Logout(login::LogoutArgs),
    /// Show the stored session: user, plan, and the auth token's expiry.
    Session(login::SessionShowArgs),
    /// Find symbol ids to stream: `tickwire search apple --type stock`.
    Search(search::SearchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Decode {
            file,
            max_packet_size,
        } => return finish(decode(file, max_packet_size)),
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return finish(Err(Failure::Message(format!(
                "cannot start the async runtime: {error}"
            ))));
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Stream(args) => stream::run(args).await,
            Command::History(args) => history::run(args).await,
            #[cfg(feature = "store")]
            Command::Record(args) => record::run(*args).await,
            Command::Emulate(args) => emulate::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Relay(args) => relay::run(*args).await,
            Command::Login(args) => login::login(args).await,
            Command::Logout(args) => login::logout(args),
            Command::Session(args) => login::show(args).await,
            Command::Search(args) => search::run(args).await,
            Command::Decode { .. } => Ok(()),
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    finish(result)
}

/// Why a command failed; printed as one line on stderr.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The reader of our output went away (e.g. `| head`): not an error of ours.
    OutputClosed,
    Message(String),
}

fn decode(file: Option<PathBuf>, max_packet_size: usize) -> Result<(), Failure> {
    let decoder = Decoder::with_max_packet_size(max_packet_size);
    let stdout = io::stdout();
    let mut output = BufWriter::new(stdout.lock());
    let (source, result) = match file.filter(|path| path.as_os_str() != "-") {
        Some(path) => {
            let file = File::open(&path).map_err(|error| {
                Failure::Message(format!("cannot open {}: {error}", path.display()))
            })?;
            let result = decode::run(&mut BufReader::new(file), &mut output, &decoder);
            (path.display().to_string(), result)
        }
        None => {
            let result = decode::run(&mut io::stdin().lock(), &mut output, &decoder);
            ("standard input".to_owned(), result)
        }
    };
    match result.and_then(|()| output.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Err(Failure::OutputClosed),
        Err(error) => Err(Failure::Message(format!("cannot decode {source}: {error}"))),
    }
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) | Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(Failure::Message(message)) => {
            eprintln!("tickwire: {message}");
            ExitCode::FAILURE
        }
    }
}

//! `tickwire record` as a user runs it: the real binary recording from the emulator over
//! loopback into a real DuckDB file, through drops, stalls and zombie links on both runtimes,
//! stopped by SIGTERM or killed with SIGKILL; then the file is opened and read back.
#![cfg(feature = "store")]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tickwire_emulator::{EmulatorBar, EmulatorConfig, FaultAction};
use tickwire_store::{Store, StoredBar};

mod support;

use support::{Server, exit_within, scratch_dir, tickwire};

const SYMBOLS: [&str; 2] = ["BINANCE:BTCUSDT", "BINANCE:ETHUSDT"];

/// Waits for `condition` up to `within`; false if it never held.
fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

fn quotes_sent(server: &Server) -> u64 {
    server
        .emulator()
        .stats()
        .quotes_sent
        .load(Ordering::Relaxed)
}

fn sessions(server: &Server) -> u64 {
    server.emulator().stats().sessions.load(Ordering::Relaxed)
}

/// Starts `tickwire record` on `server` into `db` with short timeouts, so the faults are seen
/// and recovered from within seconds.
fn start_recorder(
    server: &Server,
    db: &Path,
    runtime: &str,
    commit_every: &str,
    extra: &[&str],
) -> Child {
    let mut command = tickwire();
    command
        .args(["record", "--url", &server.url(), "--db"])
        .arg(db)
        .args([
            "--runtime",
            runtime,
            "--read-timeout",
            "1s",
            "--data-silence",
            "1500ms",
            "--health-interval",
            "250ms",
            "--backoff-initial",
            "100ms",
            "--grace",
            "100ms",
            "--commit-every",
            commit_every,
            "--seed",
            "7",
            // Frequent, so a progress line printed where it should not be shows up.
            "--progress-every",
            "200ms",
            // Four connections' worth of commands (sessions, symbols, four series) within
            // seconds: more than the default budget, which would delay the last series' restore.
            "--rate-limit",
            "600",
            "--burst",
            "60",
        ])
        .args(extra)
        .args(SYMBOLS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command.spawn().unwrap()
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    exit_within(child, Duration::from_secs(20)).expect("record still running after SIGTERM")
}

/// The lines a child that has exited wrote on stderr.
fn stderr_of(child: &mut Child) -> Vec<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn db_path(name: &str) -> PathBuf {
    scratch_dir(name).join("market.duckdb")
}

/// One row per closed bar of a series: (time, close).
fn closed_bars(store: &Store, symbol: &str, timeframe: &str) -> Vec<f64> {
    store
        .bars(symbol, timeframe, None, None)
        .unwrap()
        .into_iter()
        .filter(|bar| bar.closed)
        .map(|bar| bar.time)
        .collect()
}

fn gaps(store: &Store, symbol: &str, timeframe: &str) -> Vec<(f64, f64)> {
    store
        .connection()
        .prepare(
            "SELECT epoch(\"from\"), epoch(\"to\") FROM gaps \
             WHERE symbol = ? AND timeframe = ? ORDER BY \"from\"",
        )
        .unwrap()
        .query_map([symbol, timeframe], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The recorded bars of a series against the emulator's own history: every closed bar stored
/// equals the emulator's bar of that time, and every emulator bar that closed between the
/// first and the last closed bar stored is there, unless it lies strictly inside a gap row.
/// Returns how many emulator bars were missing (all inside gaps).
fn matches_the_emulator(server: &Server, store: &Store, symbol: &str, timeframe: &str) -> usize {
    let stored: Vec<StoredBar> = store
        .bars(symbol, timeframe, None, None)
        .unwrap()
        .into_iter()
        .filter(|bar| bar.closed)
        .collect();
    assert!(
        !stored.is_empty(),
        "{symbol} {timeframe}: no closed bar stored"
    );
    // From the oldest bar stored (a first bar dropped while forming is one) up to the newest
    // (the one forming at the end, not itself checked).
    let every = store.bars(symbol, timeframe, None, None).unwrap();
    let (Some(first), Some(newest)) = (every.first(), every.last().map(|bar| bar.time)) else {
        unreachable!("closed bars were stored");
    };
    let history = server.emulator().bar_history(symbol, timeframe);
    let by_time: std::collections::BTreeMap<i64, &EmulatorBar> =
        history.iter().map(|bar| (bar.time as i64, bar)).collect();
    for bar in &stored {
        let Some(expected) = by_time.get(&(bar.time as i64)) else {
            panic!(
                "{symbol} {timeframe}: a stored bar at {} the emulator never had",
                bar.time
            );
        };
        let got = (bar.open, bar.high, bar.low, bar.close, bar.volume);
        let want = (
            expected.open,
            expected.high,
            expected.low,
            expected.close,
            expected.volume,
        );
        assert_eq!(got, want, "{symbol} {timeframe} bar at {}", bar.time);
    }
    let gaps = gaps(store, symbol, timeframe);
    let stored_times: std::collections::BTreeSet<i64> =
        stored.iter().map(|bar| bar.time as i64).collect();
    let mut missing = 0;
    for time in by_time
        .range(first.time as i64..newest as i64)
        .map(|(time, _)| *time)
    {
        if stored_times.contains(&time) {
            continue;
        }
        let explained = gaps
            .iter()
            .any(|(from, to)| *from < time as f64 && (time as f64) < *to);
        assert!(
            explained,
            "{symbol} {timeframe}: the emulator's bar at {time} is missing, with no gap row \
             around it: {gaps:?}"
        );
        missing += 1;
    }
    missing
}

/// Every quote row of `symbol` in the order it was appended: (feed time, received at µs).
fn quote_times(store: &Store, symbol: &str) -> Vec<(Option<i64>, i64)> {
    store
        .connection()
        .prepare(
            "SELECT epoch(time)::BIGINT, epoch_us(received_at) FROM quotes \
             WHERE symbol = ? ORDER BY rowid",
        )
        .unwrap()
        .query_map([symbol], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Records through a drop, a stall and a zombie link, then SIGTERM. Three-minute bars with 60
/// bars of backfill stay gap-free (the market runs 180 times real time, so each backfill
/// reaches back a minute of real time, past every outage); one-minute bars with one bar of
/// backfill cannot, and the gaps table says where.
fn records_through_faults(runtime: &str) {
    // 100 ticks a second per symbol: about 33 in every one-minute bar, so no bar is missing
    // for want of trades.
    let server = Server::start_with(EmulatorConfig {
        rate_hz: 1000.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(250),
        market_speed: 180.0,
        ..EmulatorConfig::default()
    });
    let db = db_path(&format!("record-faults-{runtime}"));
    let mut recorder = start_recorder(
        &server,
        &db,
        runtime,
        "200ms",
        &["--bars", "3:60", "--bars", "1:1"],
    );
    let flowing = |server: &Server, sessions_at_least: u64| {
        let sent = quotes_sent(server);
        wait_until(Duration::from_secs(15), || {
            sessions(server) >= sessions_at_least && quotes_sent(server) >= sent + 40
        })
    };
    assert!(flowing(&server, 1), "no quotes reached the recorder");
    let faults = [
        FaultAction::Drop,
        FaultAction::Stall(Duration::from_secs(30)),
        FaultAction::HeartbeatsOnly(Duration::from_secs(30)),
    ];
    for (number, fault) in faults.into_iter().enumerate() {
        server.emulator().inject(fault);
        let reconnected = flowing(&server, number as u64 + 2);
        assert!(reconnected, "no recovery from {fault:?}");
    }
    // A few more bars close after the last recovery, so every gap has bars after it.
    let bars_now = server.emulator().bar_history(SYMBOLS[0], "1").len();
    assert!(wait_until(Duration::from_secs(10), || {
        server.emulator().bar_history(SYMBOLS[0], "1").len() >= bars_now + 3
    }));
    let status = terminate(&mut recorder);
    let log = stderr_of(&mut recorder);
    assert!(status.success(), "record exited with {status}: {log:#?}");
    let summary = log
        .iter()
        .find(|line| line.starts_with("tickwire record:"))
        .unwrap_or_else(|| panic!("no summary line: {log:#?}"));

    let store = Store::open_read_only(&db).unwrap();
    let quotes = store.count("quotes").unwrap();
    assert!(
        quotes > 100 && quotes <= quotes_sent(&server),
        "{quotes} quote rows, {} quotes sent; {summary}",
        quotes_sent(&server)
    );
    assert!(summary.contains(&format!("{quotes} quotes")), "{summary}");
    for symbol in SYMBOLS {
        let times = quote_times(&store, symbol);
        assert!(times.len() > 20, "{symbol}: {} quotes", times.len());
        assert!(
            times.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "{symbol}'s quotes are not in the order they came"
        );
        // Three-minute bars with 60 of backfill: the emulator's bars, every one of them.
        assert!(
            closed_bars(&store, symbol, "3").len() >= 60,
            "{symbol}: too few closed 3-minute bars"
        );
        assert_eq!(
            matches_the_emulator(&server, &store, symbol, "3"),
            0,
            "{symbol}: 3-minute bars missing"
        );
        assert!(
            gaps(&store, symbol, "3").is_empty(),
            "{symbol}: a gap row for a series whose backfill covered every outage"
        );
        // One-minute bars with one bar of backfill: the emulator's bars, and the ones the
        // backfill could not supply inside gap rows.
        assert!(
            !gaps(&store, symbol, "1").is_empty(),
            "{symbol}: no gap row for the 1-minute series with one bar of backfill"
        );
        let missing = matches_the_emulator(&server, &store, symbol, "1");
        assert!(
            missing > 0,
            "{symbol}: gap rows, but no 1-minute bar missing"
        );
    }
    let duplicates: i64 = store
        .connection()
        .query_row(
            "SELECT count(*) FROM (SELECT 1 FROM bars GROUP BY symbol, timeframe, time \
             HAVING count(*) > 1)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(duplicates, 0);
}

#[test]
fn records_through_drops_stalls_and_zombies_on_tokio() {
    records_through_faults("tokio");
}

#[test]
fn records_through_drops_stalls_and_zombies_on_async_std() {
    records_through_faults("async-std");
}

/// SIGTERM loses nothing: with the market paused, every quote the emulator sent is in the
/// file after the recorder exits.
#[test]
fn sigterm_commits_everything_received() {
    let server = Server::start_with(EmulatorConfig {
        rate_hz: 400.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(250),
        ..EmulatorConfig::default()
    });
    let db = db_path("record-sigterm");
    // A long commit interval: without the final commit, most rows would be missing.
    let mut recorder = start_recorder(&server, &db, "tokio", "1h", &[]);
    assert!(
        wait_until(Duration::from_secs(15), || quotes_sent(&server) >= 300),
        "no quotes reached the recorder: {} sent",
        quotes_sent(&server)
    );
    server.emulator().pause_market(true);
    // Settled: nothing more is being sent (and loopback delivers what was within moments).
    let mut last = quotes_sent(&server);
    let mut stable_since = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || {
        let now = quotes_sent(&server);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        stable_since.elapsed() >= Duration::from_millis(500)
    }));
    let status = terminate(&mut recorder);
    let log = stderr_of(&mut recorder);
    assert!(status.success(), "record exited with {status}: {log:#?}");
    assert!(
        !log.iter().any(|line| line.contains("rows written")),
        "progress lines on a stderr that is not a terminal: {log:#?}"
    );
    let store = Store::open_read_only(&db).unwrap();
    assert_eq!(
        store.count("quotes").unwrap(),
        quotes_sent(&server),
        "quote rows against quotes sent; {log:#?}"
    );
}

/// `kill -9` mid-stream: the file opens cleanly and misses at most about the last commit
/// interval.
#[test]
fn kill_9_leaves_a_readable_file_missing_at_most_the_last_interval() {
    let server = Server::start_with(EmulatorConfig {
        rate_hz: 400.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(250),
        ..EmulatorConfig::default()
    });
    let db = db_path("record-kill");
    let mut recorder = start_recorder(&server, &db, "tokio", "300ms", &[]);
    let sent = quotes_sent(&server);
    assert!(
        wait_until(Duration::from_secs(15), || quotes_sent(&server)
            >= sent + 1000),
        "no quotes reached the recorder"
    );
    recorder.kill().unwrap();
    let killed_at_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    recorder.wait().unwrap();
    // Read-write: DuckDB replays its write-ahead log on open.
    let store = Store::open(&db).unwrap();
    let quotes = store.count("quotes").unwrap();
    assert!(quotes > 500, "{quotes} quote rows after 1000 sent");
    let newest: i64 = store
        .connection()
        .query_row("SELECT max(epoch_us(received_at)) FROM quotes", [], |row| {
            row.get(0)
        })
        .unwrap();
    let missing = Duration::from_micros((killed_at_us - newest).max(0) as u64);
    // The interval, plus a batch being written and the scheduling of a loaded machine.
    assert!(
        missing <= Duration::from_millis(300) + Duration::from_millis(1500),
        "the newest committed quote is {missing:?} older than the kill"
    );
}

/// An unwritable file is a clear error and a failure before anything connects.
#[test]
fn an_unwritable_database_is_one_line_and_a_failure() {
    let output = tickwire()
        .args([
            "record",
            "--url",
            "ws://127.0.0.1:9",
            "--db",
            "/nonexistent-dir/x.duckdb",
            "BINANCE:BTCUSDT",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("tickwire: cannot open the store /nonexistent-dir/x.duckdb"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let bad = tickwire()
        .args(["record", "--db", "x.duckdb", "--commit-every", "0s", "X:Y"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--commit-every"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `history --db`: the first call fills the store from the feed; the next one takes the bars
/// it holds from the store and asks the feed only for the newest, and both agree with the
/// emulator's own bars.
#[test]
fn history_with_a_store_asks_the_feed_only_for_what_is_missing() {
    let server = Server::start_with(EmulatorConfig {
        rate_hz: 200.0,
        symbols: 10,
        ..EmulatorConfig::default()
    });
    let db = db_path("history-db");
    let history = || {
        let output = tickwire()
            .args([
                "history",
                "--url",
                &server.url(),
                "--db",
                db.to_str().unwrap(),
                "--timeframe",
                "1",
                "--count",
                "50",
                "--csv",
                SYMBOLS[0],
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let rows: Vec<Vec<f64>> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .skip(1)
            .map(|line| {
                line.split(',')
                    .take(5)
                    .map(|field| field.parse().unwrap())
                    .collect()
            })
            .collect();
        (rows, stderr)
    };
    let (first, told) = history();
    assert_eq!(first.len(), 50);
    assert!(
        told.contains("0 bars from") && told.contains("50 from the feed"),
        "{told}"
    );
    let (second, told) = history();
    assert_eq!(second.len(), 50);
    let from_feed: usize = told
        .split(", ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("{told}"));
    assert!(
        (1..=3).contains(&from_feed),
        "the second call asked the feed for {from_feed} bars: {told}"
    );
    // Both agree with the emulator's bars (the forming one aside).
    let emulator: std::collections::BTreeMap<i64, EmulatorBar> = server
        .emulator()
        .bar_history(SYMBOLS[0], "1")
        .into_iter()
        .map(|bar| (bar.time as i64, bar))
        .collect();
    for row in first.iter().chain(&second).filter(|row| {
        // The newest bar of either call may have been forming.
        row[0] < second.last().unwrap()[0] - 60.0
    }) {
        let bar = &emulator[&(row[0] as i64)];
        assert_eq!(
            row[1..],
            [bar.open, bar.high, bar.low, bar.close],
            "the bar at {}",
            row[0]
        );
    }
    let store = Store::open_read_only(&db).unwrap();
    assert!(store.count("bars").unwrap() >= 50);
}

/// A full disk (here the file-size limit, with SIGXFSZ ignored so writes fail with EFBIG as on
/// a full file system): one clear line, a non-zero exit, and every committed row readable.
#[test]
fn a_full_disk_is_a_clear_error_and_what_was_committed_stays_readable() {
    let server = Server::start_with(EmulatorConfig {
        rate_hz: 5000.0,
        symbols: 10,
        ..EmulatorConfig::default()
    });
    let symbols: Vec<String> = tickwire_emulator::market::Market::new(10, 1)
        .instruments()
        .iter()
        .map(|instrument| instrument.name.clone())
        .collect();
    let db = db_path("record-full");
    let mut recorder = std::process::Command::new("sh")
        .arg("-c")
        // 2 MiB at most per file; ignored signals stay ignored across exec.
        .arg("ulimit -f 2048; trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_tickwire"))
        .args(["record", "--url", &server.url(), "--db"])
        .arg(&db)
        .args(["--commit-every", "200ms"])
        .args(&symbols)
        .env("XDG_CONFIG_HOME", scratch_dir("record-full-config"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(&mut recorder, Duration::from_secs(60))
        .expect("record still running with its file at the size limit");
    let log = stderr_of(&mut recorder);
    assert!(!status.success(), "{log:#?}");
    let last = log.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.starts_with("tickwire: writing to the store:") && last.contains("File too large"),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|line| line.contains("panicked")),
        "{log:#?}"
    );
    let store = Store::open_read_only(&db).unwrap();
    let quotes = store.count("quotes").unwrap();
    assert!(quotes > 0, "nothing was committed before the disk filled");
    let summary = log
        .iter()
        .find(|line| line.starts_with("tickwire record:"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(
        summary.contains(&format!("{quotes} quotes")),
        "{summary} vs {quotes}"
    );
}

/// On a terminal (a pseudo-terminal from `script`), progress lines come every
/// `--progress-every`: rows written, their rate, the lag and the quotes conflated.
#[test]
fn progress_is_printed_on_a_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no `script` (util-linux) to give the recorder a terminal");
        return;
    }
    let server = Server::start_with(EmulatorConfig {
        rate_hz: 400.0,
        symbols: 10,
        ..EmulatorConfig::default()
    });
    let db = db_path("record-progress");
    let command = format!(
        "timeout -s TERM 3 {} record --url {} --db {} --progress-every 500ms {}",
        env!("CARGO_BIN_EXE_tickwire"),
        server.url(),
        db.display(),
        SYMBOLS.join(" ")
    );
    let output = std::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("XDG_CONFIG_HOME", scratch_dir("record-progress-config"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let progress: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("rows written ("))
        .collect();
    assert!(progress.len() >= 2, "{text}");
    assert!(
        progress
            .iter()
            .all(|line| line.contains("rows/s), lag ") && line.contains("quotes conflated")),
        "{progress:#?}"
    );
    assert!(text.contains("tickwire record: "), "{text}");
}

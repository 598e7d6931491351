//! The end-to-end recorder rate over loopback: `tickwire record` (the release binary) against
//! the emulator in this process, every symbol subscribed, until SIGTERM; then the rows in the
//! file are counted.
//!
//! Run: `store/fetch-libduckdb.sh && cargo bench -p tickwire --features store --bench record_rate`
//!
//! Environment: `TICKWIRE_RECORD_RATE_HZ`, the emulator's ticks per second over all symbols
//! (default 20 000); `TICKWIRE_RECORD_SECONDS`, how long to record (default 15);
//! `TICKWIRE_RECORD_SYMBOLS` (default 50).
//!
//! It prints the quotes the emulator sent per second, the rows committed per second, and the
//! recorder's own summary (conflated quotes say the database fell behind).

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tickwire_emulator::EmulatorConfig;
use tickwire_emulator::market::Market;
use tickwire_store::Store;

#[path = "../tests/support/mod.rs"]
mod support;

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (a filter) is not ours.
    let rate_hz = env_number("TICKWIRE_RECORD_RATE_HZ", 20_000.0);
    let seconds = env_number("TICKWIRE_RECORD_SECONDS", 15.0);
    let symbols = env_number("TICKWIRE_RECORD_SYMBOLS", 50.0) as usize;
    let config = EmulatorConfig {
        rate_hz,
        symbols,
        ..EmulatorConfig::default()
    };
    let names: Vec<String> = Market::new(config.symbols, config.seed)
        .instruments()
        .iter()
        .map(|instrument| instrument.name.clone())
        .collect();
    let server = support::Server::start_with(config);
    let db = support::scratch_dir("record-rate").join("rate.duckdb");
    let mut recorder = support::tickwire()
        .args(["record", "--url", &server.url(), "--db"])
        .arg(&db)
        .args(["--rate-limit", "6000", "--burst", "200"])
        .args(&names)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tickwire binary");
    let sent = || {
        server
            .emulator()
            .stats()
            .quotes_sent
            .load(Ordering::Relaxed)
    };
    // Timed from the first quote, so connecting is not counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent() == 0 {
        assert!(
            Instant::now() < deadline,
            "no quote was sent to the recorder"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let sent_at_start = sent();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let sent_total = sent() - sent_at_start;
    let elapsed = started.elapsed().as_secs_f64();
    server.emulator().pause_market(true);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &recorder.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = support::exit_within(&mut recorder, Duration::from_secs(120))
        .expect("the recorder exits after SIGTERM");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut recorder.stderr.take().expect("stderr"), &mut log)
        .expect("stderr");
    assert!(status.success(), "record failed: {log}");
    let store = Store::open_read_only(&db).expect("the file");
    let rows = store.count("quotes").expect("a count");
    println!(
        "record_rate: {symbols} symbols at {rate_hz} ticks/s for {elapsed:.1} s: \
         {:.0} quotes/s sent, {:.0} quote rows/s committed ({rows} rows in all)",
        sent_total as f64 / elapsed,
        rows as f64 / elapsed,
    );
    for line in log.lines() {
        println!("  {line}");
    }
}

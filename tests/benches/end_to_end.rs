//! End to end over loopback: server → WebSocket → driver → core → application, on each runtime.
//!
//! Run: `cargo bench -p tickwire-tests --bench end_to_end`
//!
//! - throughput: a minimal server blasts pre-rendered batches of 50 `qsd` packets (100 symbols)
//!   as fast as the socket takes them; the application counts quote events. The emulator's
//!   per-tick JSON rendering cannot produce a million quotes a second on this machine, so this
//!   stand-in measures the client side alone.
//! - latency: the real emulator sends 100 000 quotes/s over 100 subscribed symbols and stamps
//!   each with the time of its write; the application computes receive time minus stamp.
//!
//! Both processes share the machine's 2 cores.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use tickwire_driver::{Config, Event, Feed, Options};
use tickwire_emulator::{Emulator, EmulatorConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const SYMBOLS: usize = 100;
const PER_MESSAGE: usize = 50;
const TOTAL_QUOTES: u64 = 2_000_000;

/// 100 synthetic symbols; the emulator names its first ten after real markets, so start at 10.
fn symbols() -> Vec<String> {
    (10..10 + SYMBOLS)
        .map(|index| format!("EMU:S{index}"))
        .collect()
}

fn frame(payload: &str) -> String {
    tickwire_core::codec::frame(payload)
}

/// Accepts one client, waits for its quote session, then sends `total` quotes as fast as it can.
async fn blast(listener: tokio::net::TcpListener, total: u64) {
    let (tcp, _) = listener.accept().await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    ws.send(Message::Text(
        frame(r#"{"session_id":"blast","protocol":"json"}"#).into(),
    ))
    .await
    .unwrap();
    let mut session = None;
    while session.is_none() {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            return;
        };
        if let Some(rest) = text
            .as_str()
            .split(r#"{"m":"quote_create_session","p":[""#)
            .nth(1)
        {
            session = rest.split('"').next().map(str::to_owned);
        }
    }
    let session = session.unwrap();
    // Give the client time to send its quote_add_symbols.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let symbols = symbols();
    let messages: Vec<Utf8Bytes> = (0..64)
        .map(|round| {
            let mut text = String::new();
            for index in 0..PER_MESSAGE {
                let symbol = &symbols[(round * PER_MESSAGE + index) % SYMBOLS];
                let price = 100.0 + ((round * PER_MESSAGE + index) % 997) as f64 / 100.0;
                let volume = 1_000 + round * PER_MESSAGE + index;
                let payload = format!(
                    r#"{{"m":"qsd","p":["{session}",{{"n":"{symbol}","s":"ok","v":{{"lp":{price},"volume":{volume},"ch":0.5,"chp":0.1}}}}]}}"#
                );
                tickwire_core::codec::encode_into(&payload, &mut text);
            }
            Utf8Bytes::from(text)
        })
        .collect();
    let count = total / PER_MESSAGE as u64;
    for index in 0..count {
        ws.feed(Message::Text(messages[(index % 64) as usize].clone()))
            .await
            .unwrap();
        if index % 16 == 15 {
            ws.flush().await.unwrap();
        }
    }
    ws.flush().await.unwrap();
    // Stay open until the client leaves.
    while let Some(Ok(_)) = ws.next().await {}
}

fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

async fn consume(feed: Feed, total: u64) -> Duration {
    feed.subscribe(symbols());
    let mut events = feed.events();
    let mut received = 0u64;
    let mut first = None;
    while received < total {
        match events.next().await {
            Some(Event::Quote(_)) => {
                first.get_or_insert_with(Instant::now);
                received += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |first| first.elapsed());
    feed.close().await;
    elapsed
}

fn throughput(
    name: &str,
    connect: fn(Config, Options) -> Feed,
    run: fn(std::pin::Pin<Box<dyn std::future::Future<Output = Duration>>>) -> Duration,
) {
    let server = server_runtime();
    let listener = server
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    server.spawn(blast(listener, TOTAL_QUOTES));
    let config = Config {
        url: format!("ws://{addr}/"),
        rate_limit_per_minute: 6_000,
        burst: 100,
        ..Config::default()
    };
    let options = Options {
        event_capacity: 1 << 20,
        ..Options::default()
    };
    let elapsed = run(Box::pin(async move {
        let feed = connect(config, options);
        consume(feed, TOTAL_QUOTES).await
    }));
    let rate = TOTAL_QUOTES as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<10} throughput  {:>6.2} M quotes/s  ({TOTAL_QUOTES} quotes in {elapsed:.2?})",
        rate / 1e6
    );
    server.shutdown_background();
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

fn latency(
    name: &str,
    connect: fn(Config, Options) -> Feed,
    run: fn(std::pin::Pin<Box<dyn std::future::Future<Output = Duration>>>) -> Duration,
) {
    let server = server_runtime();
    let emulator = server
        .block_on(Emulator::start(EmulatorConfig {
            // 110 symbols, 100 of them subscribed: 100 000 of the 110 000 ticks/s reach the client.
            symbols: 10 + SYMBOLS,
            rate_hz: 110_000.0,
            stamp_quotes: true,
            ..EmulatorConfig::default()
        }))
        .unwrap();
    let config = Config {
        url: emulator.url(),
        rate_limit_per_minute: 6_000,
        burst: 100,
        ..Config::default()
    };
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(1_000_000)));
    let collected = std::sync::Arc::clone(&samples);
    let measure = Duration::from_secs(5);
    run(Box::pin(async move {
        let feed = connect(config, Options::default());
        feed.subscribe(symbols());
        let mut events = feed.events();
        let start = Instant::now();
        while start.elapsed() < measure + Duration::from_secs(1) {
            let Some(Event::Quote(quote)) = events.next().await else {
                continue;
            };
            let stamp = quote
                .quote
                .other
                .get("emu_ns")
                .and_then(serde_json::Value::as_str)
                .and_then(|text| text.parse::<u64>().ok());
            let Some(stamp) = stamp else { continue };
            // The first second warms up (connection, snapshots).
            if start.elapsed() >= Duration::from_secs(1) {
                collected
                    .lock()
                    .unwrap()
                    .push(unix_ns().saturating_sub(stamp));
            }
        }
        feed.close().await;
        Duration::ZERO
    }));
    let mut samples = std::mem::take(&mut *samples.lock().unwrap());
    samples.sort_unstable();
    let at = |quantile: f64| {
        samples
            .get(((samples.len() as f64 * quantile) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let micros = |nanos: u64| nanos as f64 / 1_000.0;
    println!(
        "{name:<10} latency     {:>7} quotes/s  p50 {:>7.1} µs  p99 {:>7.1} µs  max {:>8.1} µs",
        samples.len() as u64 / measure.as_secs(),
        micros(at(0.50)),
        micros(at(0.99)),
        micros(samples.last().copied().unwrap_or(0)),
    );
    server.block_on(emulator.shutdown());
}

fn on_tokio(future: std::pin::Pin<Box<dyn std::future::Future<Output = Duration>>>) -> Duration {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn on_async_std(
    future: std::pin::Pin<Box<dyn std::future::Future<Output = Duration>>>,
) -> Duration {
    async_std::task::block_on(future)
}

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent: keep that cheap.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("end_to_end: run with `cargo bench -p tickwire-tests --bench end_to_end`");
        return;
    }
    throughput("tokio", tickwire_tokio::connect_with, on_tokio);
    throughput("async-std", tickwire_async_std::connect_with, on_async_std);
    latency("tokio", tickwire_tokio::connect_with, on_tokio);
    latency("async-std", tickwire_async_std::connect_with, on_async_std);
}

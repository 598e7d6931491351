//! The same scenarios on both runtimes, over real loopback sockets, against the emulator.
//!
//! The emulator runs on its own tokio runtime; each scenario is runtime-agnostic async code
//! (timers from async-io) run once under tokio and once under async-std, and the steady one
//! also under smol. Durations are short so the suite takes seconds, and every wait has a bound.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tickwire_core::client::{Breaker, DisconnectCause};
use tickwire_driver::{Config, Event, Events, Feed, HistoryError, Options, SeriesId, State};
use tickwire_emulator::{EmulatorConfig, Fault, FaultAction};

const SYMBOLS: [&str; 3] = ["BINANCE:BTCUSDT", "NASDAQ:AAPL", "FX:EURUSD"];

mod support;

use support::{Server, eventually, on_async_std, on_both_runtimes, on_tokio, sleep};

fn quick_server(rate_hz: f64) -> Server {
    Server::start(EmulatorConfig {
        rate_hz,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(300),
        ..EmulatorConfig::default()
    })
}

fn server_with_faults(faults: &[&str]) -> Server {
    Server::start(EmulatorConfig {
        rate_hz: 200.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(300),
        faults: faults
            .iter()
            .map(|spec| spec.parse::<Fault>().unwrap())
            .collect(),
        ..EmulatorConfig::default()
    })
}

fn config(server: &Server) -> Config {
    support::quick_config(server)
}

/// Reads events until every symbol has had a quote, failing after `limit`.
async fn quotes_for_every_symbol(
    feed: &Feed,
    events: &mut tickwire_driver::Events,
    limit: Duration,
) {
    let mut seen = std::collections::BTreeSet::new();
    let reading = async {
        while seen.len() < SYMBOLS.len() {
            match events.next().await {
                Some(Event::Quote(quote)) => {
                    seen.insert(quote.quote.symbol.to_string());
                }
                Some(_) => {}
                None => panic!("event stream ended"),
            }
        }
    };
    let timer = sleep(limit);
    futures::pin_mut!(reading, timer);
    if let futures::future::Either::Right(_) = futures::future::select(reading, timer).await {
        panic!(
            "no quote for every symbol within {limit:?}: saw {seen:?}; status {:?}",
            feed.status()
        );
    }
}

/// Waits for the server to see the socket gone, then for the event stream to end.
async fn socket_gone_and_stream_ends(
    server: &Server,
    events: &mut tickwire_driver::Events,
    limit: Duration,
    what: &str,
) {
    eventually(limit, what, || {
        server
            .emulator()
            .stats()
            .open
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
    let drained = async { while events.next().await.is_some() {} };
    let timer = sleep(Duration::from_secs(2));
    futures::pin_mut!(drained, timer);
    assert!(
        matches!(
            futures::future::select(drained, timer).await,
            futures::future::Either::Left(_)
        ),
        "stream ends"
    );
}

// ----- scenarios --------------------------------------------------------------------------------

async fn steady_streaming_loses_nothing(connect: impl Fn(Config, Options) -> Feed) {
    let server = quick_server(300.0);
    let feed = connect(config(&server), Options::default());
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    sleep(Duration::from_millis(500)).await;
    server.emulator().pause_market(true);
    sleep(Duration::from_millis(300)).await;
    let mut received = 0u64;
    while let Some(Some(event)) = futures::FutureExt::now_or_never(events.next()) {
        if matches!(event, Event::Quote(_)) {
            received += 1;
        }
    }
    let status = feed.status();
    let sent = server
        .emulator()
        .stats()
        .quotes_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        status.client.counters.quotes, sent,
        "every qsd sent became one quote event"
    );
    assert!(
        received + SYMBOLS.len() as u64 <= sent,
        "{received} read of {sent}"
    );
    assert_eq!(status.client.counters.decode_errors, 0);
    assert_eq!(status.client.counters.connections, 1);
    assert_eq!(status.client.state, State::Live);
    feed.close().await;
}

async fn recovers_from(
    action: FaultAction,
    cause: Option<DisconnectCause>,
    connect: impl Fn(Config, Options) -> Feed,
) {
    let server = quick_server(300.0);
    let feed = connect(config(&server), Options::default());
    feed.subscribe(SYMBOLS);
    let series = feed
        .subscribe_bars("BINANCE:BTCUSDT", "1", 10)
        .expect("series");
    let mut events = feed.events();
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    server.emulator().inject(action);
    match cause {
        Some(cause) => {
            eventually(Duration::from_secs(6), "the fault to be detected", || {
                feed.status().client.counters.disconnects.get(cause) >= 1
            })
            .await;
            eventually(Duration::from_secs(6), "a new live connection", || {
                let status = feed.status().client;
                status.counters.connections >= 2 && status.state == State::Live
            })
            .await;
        }
        None => {
            eventually(
                Duration::from_secs(3),
                "the bad packet to be counted",
                || {
                    feed.status().client.counters.decode_errors
                        + feed.status().client.counters.resyncs
                        >= 1
                },
            )
            .await;
        }
    }
    // Every subscription is restored: quotes for every symbol, and bars for the series.
    while futures::FutureExt::now_or_never(events.next())
        .flatten()
        .is_some()
    {}
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    let bars = async {
        loop {
            if let Some(Event::Bar(bar)) = events.next().await {
                if bar.series == series {
                    return;
                }
            }
        }
    };
    let timer = sleep(Duration::from_secs(5));
    futures::pin_mut!(bars, timer);
    assert!(
        matches!(
            futures::future::select(bars, timer).await,
            futures::future::Either::Left(_)
        ),
        "bars resume"
    );
    if cause.is_none() {
        assert_eq!(
            feed.status().client.counters.connections,
            1,
            "a bad packet is not a reason to reconnect"
        );
    }
    feed.close().await;
}

/// A reconnect after a stall: a series whose backfill (its history count) reaches back past
/// the outage resumes without a gap; one whose backfill is a single bar reports the bars it
/// may have missed (`Event::BarGap`) before going on. The market clock runs 120 times real
/// time, so the 1.5 s stall spans minutes of 1-minute bars.
async fn a_backfill_short_of_the_outage_reports_a_gap(connect: impl Fn(Config, Options) -> Feed) {
    let server = Server::start(EmulatorConfig {
        rate_hz: 300.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(300),
        market_speed: 120.0,
        ..EmulatorConfig::default()
    });
    let feed = connect(config(&server), Options::default());
    // 100 one-minute bars of backfill: 50 s of real time at this speed.
    let covered = feed
        .subscribe_bars("BINANCE:BTCUSDT", "1", 100)
        .expect("series");
    let short = feed
        .subscribe_bars("BINANCE:ETHUSDT", "1", 1)
        .expect("series");
    let mut events = feed.events();
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        wait_for(&mut events, Duration::from_secs(10), |event| {
            if let Event::Bar(bar) = event {
                seen.insert(bar.series);
            }
            seen.len() == 2
        })
        .await,
        "bars of both series"
    );
    server
        .emulator()
        .inject(FaultAction::Stall(Duration::from_secs(30)));
    let mut gaps = Vec::new();
    let mut bars_after = std::collections::BTreeSet::new();
    let reconnected = wait_for(&mut events, Duration::from_secs(15), |event| {
        match event {
            Event::BarGap(gap) => gaps.push(gap.clone()),
            Event::Bar(bar) if feed.status().client.counters.connections >= 2 => {
                bars_after.insert(bar.series);
            }
            _ => {}
        }
        bars_after.len() == 2
    })
    .await;
    assert!(reconnected, "bars of both series after the reconnect");
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let gap = &gaps[0];
    assert_eq!(gap.series, short);
    assert_ne!(gap.series, covered);
    assert!(
        gap.before - gap.after >= 120.0,
        "the gap spans more than one bar: {gap:?}"
    );
    feed.close().await;
}

/// A reconnect's backfill is the bars the emulator streamed: with the market clock at 120
/// times real time a 1-minute bar closes every half second. The emulator drops the connection
/// and refuses upgrades until bars have closed with nobody holding the series, then the client
/// reconnects and backfills; every closed bar it reported (its last state per bar time) is
/// the emulator's own bar history for that time, and none of the history is missing.
async fn backfilled_bars_are_the_bars_streamed(connect: impl Fn(Config, Options) -> Feed) {
    const SYMBOL: &str = "BINANCE:BTCUSDT";
    const MINUTE: f64 = 60.0;
    let server = Server::start(EmulatorConfig {
        rate_hz: 300.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(300),
        market_speed: 120.0,
        ..EmulatorConfig::default()
    });
    let emulator = server.emulator();
    let feed = connect(config(&server), Options::default());
    // 50 bars of backfill: 25 s of real time at this speed, far more than the outage.
    let series = feed.subscribe_bars(SYMBOL, "1", 50).expect("series");
    let mut events = feed.events();
    let mut bars = ClosedBars::new(series);
    let newest_before_drop = bars.until_closed_live(&mut events, 3.0 * MINUTE).await;
    emulator.refuse_upgrades(Some(503));
    emulator.inject(FaultAction::Drop);
    eventually(
        Duration::from_secs(10),
        "bars to close while the series has no session",
        || {
            let book = emulator.bar_history(SYMBOL, "1");
            emulator
                .stats()
                .open
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
                && book
                    .last()
                    .is_some_and(|bar| bar.time >= newest_before_drop + 3.0 * MINUTE)
        },
    )
    .await;
    let newest_in_outage = emulator
        .bar_history(SYMBOL, "1")
        .last()
        .map_or(f64::MAX, |bar| bar.time);
    emulator.refuse_upgrades(None);
    // Closed bars first reported now, older than the bar forming at the reconnect: only the
    // backfill can bring them (the first connection is long gone, the client drops bars it
    // already closed).
    let mut backfilled = 0;
    assert!(
        wait_for(&mut events, Duration::from_secs(10), |event| {
            let Some((time, closed)) = bars.record(event) else {
                return false;
            };
            if closed && time < newest_in_outage {
                backfilled += 1;
            }
            time >= newest_in_outage + 2.0 * MINUTE
                && feed.status().client.counters.connections >= 2
        })
        .await,
        "bars close after the reconnect; status {:?}",
        feed.status()
    );
    assert!(
        backfilled >= 2,
        "the backfill brought the bars that closed during the outage"
    );
    feed.close().await;
    closed_bars_are_the_emulators(emulator, &bars.closed);
}

/// The bars one series reported, keyed by bar time (as bits, for an exact key) with the
/// last state reported closed.
struct ClosedBars {
    series: SeriesId,
    closed: std::collections::BTreeMap<u64, tickwire_core::message::Bar>,
}

impl ClosedBars {
    fn new(series: SeriesId) -> ClosedBars {
        ClosedBars {
            series,
            closed: std::collections::BTreeMap::new(),
        }
    }

    /// Records a bar of the series: its time and whether it closed.
    fn record(&mut self, event: &Event) -> Option<(f64, bool)> {
        match event {
            Event::Bar(bar) if bar.series == self.series => {
                if bar.closed {
                    self.closed.insert(bar.bar.time.to_bits(), bar.bar);
                }
                Some((bar.bar.time, bar.closed))
            }
            _ => None,
        }
    }

    /// Waits until bars have closed live for `span` of market time after the history's
    /// forming bar; returns the newest bar time seen.
    async fn until_closed_live(&mut self, events: &mut Events, span: f64) -> f64 {
        let mut history_end = None;
        let mut newest = f64::MAX;
        assert!(
            wait_for(events, Duration::from_secs(10), |event| {
                let Some((time, closed)) = self.record(event) else {
                    return false;
                };
                if !closed {
                    history_end.get_or_insert(time);
                }
                newest = time;
                history_end.is_some_and(|end| time >= end + span)
            })
            .await,
            "bars close live"
        );
        newest
    }
}

/// Every bar in `closed` (bar time as bits → the last state the client reported closed) is
/// BTC's 1-minute bar in the emulator's history, and every bar of the history between the
/// oldest and the newest of them is there.
fn closed_bars_are_the_emulators(
    emulator: &tickwire_emulator::Emulator,
    closed: &std::collections::BTreeMap<u64, tickwire_core::message::Bar>,
) {
    let book: std::collections::BTreeMap<u64, _> = emulator
        .bar_history("BINANCE:BTCUSDT", "1")
        .into_iter()
        .map(|bar| (bar.time.to_bits(), bar))
        .collect();
    for bar in closed.values() {
        let emulated = book
            .get(&bar.time.to_bits())
            .unwrap_or_else(|| panic!("bar {} is in the emulator's history", bar.time));
        assert_eq!(
            (bar.open, bar.high, bar.low, bar.close, bar.volume),
            (
                emulated.open,
                emulated.high,
                emulated.low,
                emulated.close,
                emulated.volume
            ),
            "bar {}",
            bar.time
        );
    }
    let (Some(oldest), Some(newest)) = (
        closed.values().next().map(|bar| bar.time),
        closed.values().last().map(|bar| bar.time),
    ) else {
        panic!("no closed bars");
    };
    let missing: Vec<f64> = book
        .values()
        .map(|bar| bar.time)
        .filter(|time| (oldest..=newest).contains(time) && !closed.contains_key(&time.to_bits()))
        .collect();
    assert!(
        missing.is_empty(),
        "every bar of the history was reported closed: {missing:?} missing"
    );
}

/// A stall shorter than the read timeout, while bars close (the market clock at 240 times
/// real time: a 1-minute bar every 250 ms): the client keeps its connection, and the bars it
/// missed during the stall still reach it in their final state, as the emulator's history has
/// them.
async fn bars_missed_in_a_short_stall_arrive_afterwards(connect: impl Fn(Config, Options) -> Feed) {
    const MINUTE: f64 = 60.0;
    let server = Server::start(EmulatorConfig {
        rate_hz: 300.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(300),
        market_speed: 240.0,
        ..EmulatorConfig::default()
    });
    let emulator = server.emulator();
    let feed = connect(config(&server), Options::default());
    let series = feed
        .subscribe_bars("BINANCE:BTCUSDT", "1", 10)
        .expect("series");
    let mut events = feed.events();
    let mut bars = ClosedBars::new(series);
    let newest_before_stall = bars.until_closed_live(&mut events, 2.0 * MINUTE).await;
    // 700 ms: about three bars, and well inside the client's 1.5 s read timeout.
    emulator.inject(FaultAction::Stall(Duration::from_millis(700)));
    assert!(
        wait_for(&mut events, Duration::from_secs(10), |event| {
            bars.record(event)
                .is_some_and(|(time, _)| time >= newest_before_stall + 6.0 * MINUTE)
        })
        .await,
        "bars after the stall; status {:?}",
        feed.status()
    );
    assert_eq!(
        feed.status().client.counters.connections,
        1,
        "a stall shorter than the read timeout keeps the connection"
    );
    feed.close().await;
    closed_bars_are_the_emulators(emulator, &bars.closed);
}

async fn backs_off_against_refused_connects(connect: impl Fn(Config, Options) -> Feed) {
    let server = server_with_faults(&["#1:refuse", "#2:refuse"]);
    let start = Instant::now();
    let feed = connect(config(&server), Options::default());
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    let status = feed.status().client;
    assert_eq!(status.counters.connection_attempts, 3);
    assert_eq!(
        status
            .counters
            .disconnects
            .get(DisconnectCause::ConnectFailed),
        2
    );
    // Backoff 100 ms then 200 ms: the third attempt cannot come sooner.
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    feed.close().await;
}

async fn breaker_opens_then_half_open_probe_recovers(connect: impl Fn(Config, Options) -> Feed) {
    let server = server_with_faults(&["#1:refuse", "#2:refuse", "#3:refuse"]);
    let feed = connect(config(&server), Options::default());
    feed.subscribe(SYMBOLS);
    eventually(Duration::from_secs(3), "the breaker to open", || {
        let status = feed.status().client;
        status.breaker == Breaker::Open && status.state == State::CircuitOpen
    })
    .await;
    let opened = Instant::now();
    let mut events = feed.events();
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    assert!(
        opened.elapsed() >= Duration::from_millis(800),
        "the probe waited for the recovery time"
    );
    let status = feed.status().client;
    assert_eq!(status.breaker, Breaker::Closed, "the probe worked");
    // The failures reset once the connection has lasted `stable_after`.
    eventually(Duration::from_secs(3), "the failure count to reset", || {
        feed.status().client.consecutive_failures == 0
    })
    .await;
    assert_eq!(feed.status().client.counters.connection_attempts, 4);
    feed.close().await;
}

async fn history_with_and_without_faults(connect: impl Fn(Config, Options) -> Feed) {
    let server = quick_server(50.0);
    let feed = connect(config(&server), Options::default());
    let bars = feed
        .history("BINANCE:BTCUSDT", "1", 50)
        .await
        .expect("bars");
    assert_eq!(bars.len(), 50);
    assert!(
        bars.windows(2)
            .all(|pair| pair[1].time - pair[0].time == 60.0)
    );
    assert!(matches!(
        feed.history("NOPE:NOPE", "1", 5).await,
        Err(HistoryError::Symbol(_))
    ));
    assert!(matches!(
        feed.history("BINANCE:BTCUSDT", "1S", 5).await,
        Err(HistoryError::Series(_))
    ));
    feed.close().await;

    // The first connection is reset at once: the request survives and completes on the next.
    let server = server_with_faults(&["#1:drop"]);
    let feed = connect(config(&server), Options::default());
    let bars = feed
        .history("NASDAQ:AAPL", "1D", 20)
        .await
        .expect("bars after a reconnect");
    assert_eq!(bars.len(), 20);
    assert!(feed.status().client.counters.connection_attempts >= 2);
    feed.close().await;
}

async fn slow_consumer_is_conflated_with_bounded_memory(connect: impl Fn(Config, Options) -> Feed) {
    let server = quick_server(3_000.0);
    let options = Options {
        event_capacity: 16,
        ..Options::default()
    };
    let feed = connect(config(&server), options);
    feed.subscribe(SYMBOLS);
    // Read nothing for a second.
    sleep(Duration::from_secs(1)).await;
    let status = feed.status();
    assert!(status.events_conflated > 0, "{status:?}");
    assert!(
        status.events_pending <= 16 + SYMBOLS.len() + 8,
        "{status:?}"
    );
    // Whatever is read last per symbol is the client's latest quote.
    server.emulator().pause_market(true);
    sleep(Duration::from_millis(300)).await;
    let mut events = feed.events();
    let mut latest = std::collections::BTreeMap::new();
    while let Some(Some(event)) = futures::FutureExt::now_or_never(events.next()) {
        if let Event::Quote(quote) = event {
            latest.insert(quote.quote.symbol.to_string(), quote.quote.last_price);
        }
    }
    assert_eq!(latest.len(), SYMBOLS.len());
    feed.close().await;
}

async fn close_leaves_nothing_behind(connect: impl Fn(Config, Options) -> Feed) {
    let server = quick_server(100.0);
    let feed = connect(config(&server), Options::default());
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    let handle = feed.clone();
    feed.close().await;
    assert_eq!(handle.status().client.state, State::Closed);
    socket_gone_and_stream_ends(
        &server,
        &mut events,
        Duration::from_secs(2),
        "the server to see the socket gone",
    )
    .await;
    handle.subscribe(["NASDAQ:MSFT"]);
    handle.close().await;
}

async fn upgrade_refusals_and_slow_servers_are_survived(connect: impl Fn(Config, Options) -> Feed) {
    // HTTP 429 on the first upgrade, a 300 ms delay on the second, then every write slowed.
    let server = server_with_faults(&["#1:http-429", "#2:delay/300ms", "#2:slow/2ms"]);
    let feed = connect(config(&server), Options::default());
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    let status = feed.status().client;
    assert_eq!(status.counters.connection_attempts, 2);
    assert_eq!(
        status
            .counters
            .disconnects
            .get(DisconnectCause::ConnectFailed),
        1
    );
    let failure = status.last_failure.unwrap_or_default();
    assert!(
        failure.starts_with("HTTP 429"),
        "the refusal reaches the core typed, with its reason: {failure}"
    );
    feed.close().await;
}

async fn a_rejected_token_is_replaced_by_the_provider(connect: impl Fn(Config, Options) -> Feed) {
    let server = quick_server(200.0);
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = std::sync::Arc::clone(&asked);
    let provider: tickwire_driver::TokenProvider = std::sync::Arc::new(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async { Some(tickwire_driver::AuthToken::new("fresh-token")) })
    });
    // The emulator rejects tokens starting with "bad".
    let config = Config {
        auth_token: "bad-expired".to_owned(),
        ..config(&server)
    };
    let feed = connect(
        config,
        Options {
            token_provider: Some(provider),
            ..Options::default()
        },
    );
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        feed.status()
            .client
            .counters
            .disconnects
            .get(DisconnectCause::BadAuthToken),
        1
    );
    feed.close().await;
}

/// A market that is closed: heartbeats only, every symbol out of session. The client must not
/// churn, and must stream again on the same connection when the market opens.
async fn a_closed_market_is_not_a_dead_link(connect: impl Fn(Config, Options) -> Feed) {
    let server = Server::start(EmulatorConfig {
        rate_hz: 200.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(100),
        start_closed: true,
        ..EmulatorConfig::default()
    });
    let feed = connect(config(&server), Options::default());
    // Not crypto: crypto trades around the clock.
    feed.subscribe(["NASDAQ:AAPL", "FX:EURUSD"]);
    let mut events = feed.events();
    let closed = wait_for(&mut events, Duration::from_secs(5), |event| {
        matches!(event, Event::Market(status) if status.market == tickwire_core::client::Market::Closed)
    })
    .await;
    assert!(closed, "the client saw the market close");
    // Forty heartbeats, eight zombie windows: a churning client would reconnect eight times.
    sleep(Duration::from_secs(4)).await;
    let status = feed.status().client;
    assert_eq!(
        status.counters.connections, 1,
        "{:?}",
        status.counters.disconnects
    );
    server.emulator().set_market_open(true);
    let quoted = wait_for(&mut events, Duration::from_secs(5), |event| {
        matches!(event, Event::Quote(quote) if quote.changed.names().any(|name| name == "lp"))
    })
    .await;
    assert!(quoted, "ticks again once the market opens");
    assert_eq!(feed.status().client.counters.connections, 1);
    feed.close().await;
}

/// A market in session with no ticks at all: the first verdict re-checks the session once,
/// after that the acknowledged, quiet session is left alone.
async fn a_quiet_market_is_checked_once_not_churned(connect: impl Fn(Config, Options) -> Feed) {
    let server = Server::start(EmulatorConfig {
        rate_hz: 0.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(100),
        ..EmulatorConfig::default()
    });
    let feed = connect(config(&server), Options::default());
    feed.subscribe(["NASDAQ:AAPL"]);
    let mut events = feed.events();
    let quiet = wait_for(&mut events, Duration::from_secs(5), |event| {
        matches!(event, Event::Market(status) if status.market == tickwire_core::client::Market::Quiet)
    })
    .await;
    assert!(quiet, "the client saw the market go quiet");
    sleep(Duration::from_secs(4)).await;
    let status = feed.status().client;
    assert!(
        status.counters.connections <= 2,
        "{} connections: {:?}",
        status.counters.connections,
        status.counters.disconnects
    );
    assert!(status.market.quiet_verdicts <= 1 && status.session_proven);
    feed.close().await;
}

/// A token the server rejects, with nothing to replace it: the application is told, and the
/// attempts back off instead of repeating at a fixed rate.
async fn a_rejected_token_without_a_provider_backs_off(connect: impl Fn(Config, Options) -> Feed) {
    let server = quick_server(200.0);
    let config = Config {
        auth_token: "bad-forever".to_owned(),
        ..config(&server)
    };
    let feed = connect(config, Options::default());
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    let told = wait_for(&mut events, Duration::from_secs(5), |event| {
        matches!(event, Event::AuthTokenRejected { refreshed: false })
    })
    .await;
    assert!(told, "the rejection reached the application");
    eventually(Duration::from_secs(5), "the breaker to open", || {
        feed.status().client.breaker == Breaker::Open
    })
    .await;
    let status = feed.status().client;
    assert!(status.consecutive_failures >= 3, "{status:?}");
    assert_eq!(
        status
            .counters
            .disconnects
            .get(DisconnectCause::BadAuthToken),
        status.counters.connections,
        "{:?} {:?}",
        status.counters.disconnects,
        status.last_failure
    );
    feed.close().await;
}

/// A token that expires mid-session: the provider's fresh one takes over.
async fn an_expired_token_is_refreshed(connect: impl Fn(Config, Options) -> Feed) {
    let server = server_with_faults(&["#1:expire-token@500ms"]);
    let provider: tickwire_driver::TokenProvider = std::sync::Arc::new(|| {
        Box::pin(async { Some(tickwire_driver::AuthToken::new("fresh-token")) })
    });
    let config = Config {
        auth_token: "short-lived".to_owned(),
        ..config(&server)
    };
    let feed = connect(
        config,
        Options {
            token_provider: Some(provider),
            ..Options::default()
        },
    );
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    let refreshed = wait_for(&mut events, Duration::from_secs(5), |event| {
        matches!(event, Event::AuthTokenRejected { refreshed: true })
    })
    .await;
    assert!(refreshed);
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    assert_eq!(feed.status().client.counters.connections, 2);
    feed.close().await;
}

/// Timeframes the server would reject are refused before anything is sent.
async fn invalid_timeframes_are_refused_at_once(connect: impl Fn(Config, Options) -> Feed) {
    let server = quick_server(50.0);
    let feed = connect(config(&server), Options::default());
    let started = Instant::now();
    let result = feed.history("NASDAQ:AAPL", "7X", 10).await;
    assert!(
        matches!(&result, Err(HistoryError::InvalidTimeframe(text)) if text.contains("1D")),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered without the server"
    );
    assert!(feed.subscribe_bars("NASDAQ:AAPL", "15min", 10).is_err());
    // The forms people type are mapped to the server's.
    let bars = feed
        .history("NASDAQ:AAPL", "1h", 5)
        .await
        .expect("1h is 60");
    assert_eq!(bars.len(), 5);
    feed.close().await;
}

/// Waits until an event matches, for at most `limit`.
async fn wait_for(
    events: &mut tickwire_driver::Events,
    limit: Duration,
    mut matches: impl FnMut(&Event) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = futures::future::select(events.next(), Box::pin(sleep(left))).await;
        match next {
            futures::future::Either::Left((Some(event), _)) if matches(&event) => return true,
            futures::future::Either::Left((Some(_), _)) => {}
            _ => return false,
        }
    }
}

struct FixedPoller;

impl tickwire_driver::Poller for FixedPoller {
    fn poll(
        &self,
        symbols: Vec<std::sync::Arc<str>>,
    ) -> futures::future::BoxFuture<
        'static,
        Result<Vec<tickwire_driver::PolledQuote>, tickwire_driver::PollError>,
    > {
        let quotes = symbols
            .iter()
            .map(|symbol| tickwire_driver::PolledQuote {
                symbol: symbol.to_string(),
                last_price: Some(42.0),
                ..Default::default()
            })
            .collect();
        Box::pin(async move { Ok(quotes) })
    }
}

async fn polling_fallback_serves_quotes_while_the_stream_is_down(
    connect: impl Fn(Config, Options) -> Feed,
) {
    let polling = tickwire_core::client::PollingConfig {
        interval: Duration::from_millis(200),
        unavailable_after: Duration::from_secs(60),
        ..Default::default()
    };
    let config = Config {
        url: "ws://127.0.0.1:1/".to_owned(),
        polling: Some(polling),
        max_attempts: 2,
        ..Config::default()
    };
    let config = Config {
        backoff_initial: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(1),
        ..config
    };
    let feed = connect(
        config,
        Options {
            poller: Some(std::sync::Arc::new(FixedPoller)),
            ..Options::default()
        },
    );
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    let mut polled = std::collections::BTreeSet::new();
    let reading = async {
        while polled.len() < SYMBOLS.len() {
            if let Some(Event::Quote(quote)) = events.next().await {
                assert_eq!(quote.source, tickwire_core::client::Source::Poll);
                assert_eq!(quote.quote.last_price, Some(42.0));
                polled.insert(quote.quote.symbol.to_string());
            }
        }
    };
    let timer = sleep(Duration::from_secs(5));
    futures::pin_mut!(reading, timer);
    assert!(
        matches!(
            futures::future::select(reading, timer).await,
            futures::future::Either::Left(_)
        ),
        "polled quotes"
    );
    assert_eq!(
        feed.status().client.mode,
        tickwire_core::client::Mode::Polling
    );
    feed.close().await;
}

async fn dropping_every_handle_closes_the_feed(connect: impl Fn(Config, Options) -> Feed) {
    let server = quick_server(100.0);
    let feed = connect(config(&server), Options::default());
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
    let clone = feed.clone();
    drop(feed);
    sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server
            .emulator()
            .stats()
            .open
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "a clone keeps it open"
    );
    drop(clone);
    socket_gone_and_stream_ends(
        &server,
        &mut events,
        Duration::from_secs(3),
        "the socket to close once every handle is gone",
    )
    .await;
}

#[test]
fn the_feed_handle_is_clone_send_and_sync() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<Feed>();
    assert_handle::<tickwire_driver::Events>();
}

on_both_runtimes! {
    steady_streaming => steady_streaming_loses_nothing;
    drop_without_close_frame => |connect| recovers_from(FaultAction::Drop, Some(DisconnectCause::RemoteClosed), connect);
    close_frame => |connect| recovers_from(FaultAction::Close, Some(DisconnectCause::RemoteClosed), connect);
    drop_mid_message => |connect| recovers_from(FaultAction::DropMidMessage, Some(DisconnectCause::RemoteClosed), connect);
    stall => |connect| recovers_from(FaultAction::Stall(Duration::from_secs(30)), Some(DisconnectCause::ReadTimeout), connect);
    heartbeats_only => |connect| recovers_from(FaultAction::HeartbeatsOnly(Duration::from_secs(30)), Some(DisconnectCause::Zombie), connect);
    protocol_error => |connect| recovers_from(FaultAction::ProtocolError, Some(DisconnectCause::ProtocolError), connect);
    garbage => |connect| recovers_from(FaultAction::Garbage, None, connect);
    bad_length => |connect| recovers_from(FaultAction::BadLength, None, connect);
    backoff_against_refused_connects => backs_off_against_refused_connects;
    breaker_open_and_half_open => breaker_opens_then_half_open_probe_recovers;
    history => history_with_and_without_faults;
    slow_consumer => slow_consumer_is_conflated_with_bounded_memory;
    clean_close => close_leaves_nothing_behind;
    upgrade_refusal_delay_and_slow_writes => upgrade_refusals_and_slow_servers_are_survived;
    token_provider => a_rejected_token_is_replaced_by_the_provider;
    polling_fallback => polling_fallback_serves_quotes_while_the_stream_is_down;
    dropped_handles => dropping_every_handle_closes_the_feed;
    closed_market => a_closed_market_is_not_a_dead_link;
    quiet_market => a_quiet_market_is_checked_once_not_churned;
    rejected_token => a_rejected_token_without_a_provider_backs_off;
    expired_token => an_expired_token_is_refreshed;
    invalid_timeframe => invalid_timeframes_are_refused_at_once;
    bar_gap => a_backfill_short_of_the_outage_reports_a_gap;
    backfill_equals_the_stream => backfilled_bars_are_the_bars_streamed;
    short_stall_bars => bars_missed_in_a_short_stall_arrive_afterwards;
}

#[test]
fn the_async_std_driver_runs_under_smol() {
    smol::block_on(async {
        let server = quick_server(300.0);
        let (feed, driver) = tickwire_async_std::start(config(&server), Options::default());
        let task = smol::spawn(driver);
        feed.subscribe(SYMBOLS);
        let mut events = feed.events();
        quotes_for_every_symbol(&feed, &mut events, Duration::from_secs(5)).await;
        feed.close().await;
        task.await;
    });
}

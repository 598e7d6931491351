//! The HTTP side on both runtimes, against the emulator's HTTP endpoints on loopback: a
//! session's token refreshed before it expires (and after a rejection), the polling fallback
//! taking over while WebSocket upgrades are refused and handing back, and every hostile HTTP
//! answer turned into a typed failure that backs off.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tickwire_core::client::{DisconnectCause, Mode, PollingConfig, Source};
use tickwire_driver::{Config, Event, Events, Feed, Options, PollErrorKind, State};
use tickwire_emulator::{EmulatorConfig, HttpFault};
use tickwire_http::feed::{ScannerPoller, SessionTokens};
use tickwire_http::scanner::Scanner;
use tickwire_http::signin::{self, SignIn};
use tickwire_http::{Bases, HttpClient, HttpConfig, Secret};

mod support;

use support::{Server, on_async_std, on_both_runtimes, on_tokio, sleep};

const SYMBOLS: [&str; 3] = ["BINANCE:BTCUSDT", "NASDAQ:AAPL", "FX:EURUSD"];

fn server(token_lifetime: Duration) -> Server {
    Server::start(EmulatorConfig {
        rate_hz: 200.0,
        symbols: 10,
        heartbeat_interval: Duration::from_millis(300),
        token_lifetime,
        ..EmulatorConfig::default()
    })
}

fn http(server: &Server, timeout: Duration) -> HttpClient {
    HttpClient::new(HttpConfig {
        bases: Bases::single(&server.emulator().http_base()),
        connect_timeout: Duration::from_secs(2),
        timeout,
        ..HttpConfig::default()
    })
}

/// The feed suite's short timings; the open circuit waits a second at most.
fn config(server: &Server) -> Config {
    Config {
        breaker_recovery_max: Duration::from_secs(1),
        ..support::quick_config(server)
    }
}

/// Signs in as the emulator's `demo` user: the session tokens come from its cookies.
fn signed_in(client: &HttpClient) -> SessionTokens {
    let outcome = signin::sign_in(client, "demo", &Secret::new("demo-password")).unwrap();
    let SignIn::Done(session) = outcome else {
        panic!("demo has no second factor")
    };
    SessionTokens::new(client.clone(), session, None)
}

/// Reads events until `done` says so, failing after `limit`; returns every event read.
async fn read_until(
    events: &mut Events,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {limit:?} waiting for {what}"
        );
        let next = events.next();
        let timer = sleep(left);
        futures::pin_mut!(next, timer);
        match futures::future::select(next, timer).await {
            futures::future::Either::Left((Some(event), _)) => {
                let finished = done(&event);
                seen.push(event);
                if finished {
                    return seen;
                }
            }
            futures::future::Either::Left((None, _)) => panic!("event stream ended"),
            futures::future::Either::Right(_) => {}
        }
    }
}

/// The emulator's tokens live 3 s; the session refreshes each one before it expires and hands
/// it to the open socket: one connection throughout, no rejection, every quote delivered.
async fn a_session_token_is_refreshed_before_it_expires(connect: impl Fn(Config, Options) -> Feed) {
    let server = server(Duration::from_secs(3));
    let client = http(&server, Duration::from_secs(5));
    let tokens = signed_in(&client);
    let start = tokens.fetch_now().unwrap();
    let lifetime = start.token.lifetime.expect("the JWT has an exp");
    assert!(lifetime <= Duration::from_secs(3), "{lifetime:?}");
    let config = Config {
        auth_token: start.token.token.clone(),
        auth_token_lifetime: start.token.lifetime,
        ..config(&server)
    };
    let feed = connect(
        config,
        Options {
            token_provider: Some(tokens.provider()),
            ..Options::default()
        },
    );
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    // Three lifetimes: at least three refreshes, each on the live socket.
    let mut refreshed = 0;
    let seen = read_until(
        &mut events,
        Duration::from_secs(15),
        "three refreshes",
        |event| {
            if matches!(event, Event::AuthTokenRefreshed { .. }) {
                refreshed += 1;
            }
            refreshed >= 3
        },
    )
    .await;
    let last_quote = seen
        .iter()
        .rev()
        .position(|event| matches!(event, Event::Quote(_)));
    assert!(last_quote.is_some(), "quotes flowed throughout");
    server.emulator().pause_market(true);
    sleep(Duration::from_millis(300)).await;
    let status = feed.status().client;
    let stats = server.emulator().stats();
    assert_eq!(stats.token_rejections.load(Ordering::Relaxed), 0);
    assert_eq!(status.counters.connections, 1, "{status:?}");
    assert_eq!(
        status
            .counters
            .disconnects
            .get(DisconnectCause::BadAuthToken),
        0
    );
    assert_eq!(
        status.counters.quotes,
        stats.quotes_sent.load(Ordering::Relaxed),
        "every qsd sent became one quote event"
    );
    assert!(status.auth.expires_at.is_some_and(|at| at > Instant::now()));
    // Real-time data for the signed-in connection (the emulator delays anonymous stocks).
    let aapl = seen.iter().rev().find_map(|event| match event {
        Event::Quote(quote) if &*quote.quote.symbol == "NASDAQ:AAPL" => {
            quote.quote.update_mode.clone()
        }
        _ => None,
    });
    assert_eq!(aapl.as_deref(), Some("streaming"));
    feed.close().await;
}

/// A token whose lifetime the client does not know expires on the socket: `bad auth token`,
/// the core asks the session for a fresh one and reconnects with it at once.
async fn a_rejected_token_is_replaced_from_the_cookies(connect: impl Fn(Config, Options) -> Feed) {
    let server = server(Duration::from_secs(2));
    let client = http(&server, Duration::from_secs(5));
    let tokens = signed_in(&client);
    let start = tokens.fetch_now().unwrap();
    let feed = connect(
        Config {
            auth_token: start.token.token.clone(),
            auth_token_lifetime: None,
            ..config(&server)
        },
        Options {
            token_provider: Some(tokens.provider()),
            ..Options::default()
        },
    );
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    read_until(
        &mut events,
        Duration::from_secs(8),
        "the rejection",
        |event| matches!(event, Event::AuthTokenRejected { refreshed: true }),
    )
    .await;
    // Quotes resume on the new connection, without waiting for a backoff.
    let rejected_at = Instant::now();
    read_until(
        &mut events,
        Duration::from_secs(3),
        "quotes again",
        |event| matches!(event, Event::Quote(_)),
    )
    .await;
    assert!(rejected_at.elapsed() < Duration::from_secs(2));
    let status = feed.status().client;
    assert!(status.counters.connections >= 2);
    assert!(
        status.auth.expires_at.is_some(),
        "the fresh token's exp is known"
    );
    feed.close().await;
}

fn polling_config(server: &Server, timeout: Duration) -> Config {
    Config {
        polling: Some(PollingConfig {
            interval: Duration::from_millis(300),
            unavailable_after: Duration::from_millis(500),
            timeout,
        }),
        max_attempts: 100,
        ..config(server)
    }
}

fn poller(server: &Server, timeout: Duration) -> Arc<dyn tickwire_driver::Poller> {
    Arc::new(ScannerPoller::new(Scanner::new(http(server, timeout))))
}

/// Streaming, then the server refuses every upgrade: the scanner serves quotes (`source:
/// poll`) until upgrades work again, and the stream takes over.
async fn polling_takes_over_while_upgrades_are_refused(connect: impl Fn(Config, Options) -> Feed) {
    let server = server(Duration::from_secs(4 * 3600));
    let feed = connect(
        polling_config(&server, Duration::from_secs(5)),
        Options {
            poller: Some(poller(&server, Duration::from_secs(5))),
            ..Options::default()
        },
    );
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    read_until(
        &mut events,
        Duration::from_secs(5),
        "a streamed quote",
        |event| matches!(event, Event::Quote(quote) if quote.source == Source::Stream),
    )
    .await;
    let emulator = server.emulator();
    emulator.refuse_upgrades(Some(503));
    emulator.inject(tickwire_emulator::FaultAction::Drop);
    let mut polled = std::collections::BTreeSet::new();
    read_until(
        &mut events,
        Duration::from_secs(8),
        "polled quotes for every symbol",
        |event| {
            if let Event::Quote(quote) = event {
                if quote.source == Source::Poll {
                    assert!(quote.quote.last_price.is_some());
                    polled.insert(quote.quote.symbol.to_string());
                }
            }
            polled.len() == SYMBOLS.len()
        },
    )
    .await;
    assert_eq!(feed.status().client.mode, Mode::Polling);
    assert!(emulator.stats().upgrades_refused.load(Ordering::Relaxed) > 0);
    emulator.refuse_upgrades(None);
    read_until(
        &mut events,
        Duration::from_secs(8),
        "the stream back",
        |event| matches!(event, Event::Quote(quote) if quote.source == Source::Stream),
    )
    .await;
    assert_eq!(feed.status().client.mode, Mode::Streaming);
    assert_eq!(feed.status().client.state, State::Live);
    // Once the stream is back, nobody polls.
    let scans = emulator.http_requests("/global/scan");
    let after = read_until(
        &mut events,
        Duration::from_secs(3),
        "a second of streaming",
        {
            let since = Instant::now();
            move |_| since.elapsed() > Duration::from_secs(1)
        },
    )
    .await;
    assert!(
        after
            .iter()
            .all(|event| !matches!(event, Event::Quote(quote) if quote.source == Source::Poll))
    );
    assert!(emulator.http_requests("/global/scan") <= scans + 1);
    feed.close().await;
}

/// A scanner fault, the poll failure kind it must give, and its name.
type ScannerCase = (HttpFault, fn(PollErrorKind) -> bool, &'static str);

/// Every hostile scanner answer is one typed poll failure whose next poll goes when it says;
/// once the scanner behaves, polled quotes flow.
async fn hostile_scanner_answers_are_typed_and_back_off(connect: impl Fn(Config, Options) -> Feed) {
    let server = server(Duration::from_secs(4 * 3600));
    let emulator = server.emulator();
    emulator.refuse_upgrades(Some(503));
    let cases: Vec<ScannerCase> = vec![
        (
            HttpFault::Status {
                code: 429,
                retry_after: Some(2),
                html: false,
            },
            |kind| {
                kind == PollErrorKind::RateLimited {
                    retry_after: Some(Duration::from_secs(2)),
                }
            },
            "429 with Retry-After",
        ),
        (
            HttpFault::Status {
                code: 429,
                retry_after: None,
                html: true,
            },
            |kind| kind == PollErrorKind::RateLimited { retry_after: None },
            "429 without Retry-After",
        ),
        (
            HttpFault::Status {
                code: 403,
                retry_after: None,
                html: true,
            },
            |kind| kind == PollErrorKind::Status(403),
            "403",
        ),
        (
            HttpFault::Status {
                code: 503,
                retry_after: None,
                html: false,
            },
            |kind| kind == PollErrorKind::Status(503),
            "503",
        ),
        (
            HttpFault::HtmlInsteadOfJson,
            |kind| kind == PollErrorKind::BadResponse,
            "HTML",
        ),
        (
            HttpFault::Oversized,
            |kind| kind == PollErrorKind::BadResponse,
            "9 MiB body",
        ),
        (
            HttpFault::RedirectLoop,
            |kind| kind == PollErrorKind::BadResponse,
            "redirect loop",
        ),
        (
            HttpFault::RedirectWithoutLocation,
            |kind| kind == PollErrorKind::BadResponse,
            "redirect without Location",
        ),
        (
            HttpFault::Hang,
            |kind| kind == PollErrorKind::Timeout,
            "no answer",
        ),
    ];
    emulator.set_http_fault("/global/scan", cases[0].0);
    let feed = connect(
        polling_config(&server, Duration::from_secs(5)),
        Options {
            poller: Some(poller(&server, Duration::from_secs(1))),
            ..Options::default()
        },
    );
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    for (index, (_, expected, name)) in cases.iter().enumerate() {
        let mut failure = None;
        read_until(&mut events, Duration::from_secs(10), name, |event| {
            if let Event::PollFailed {
                error, next_poll, ..
            } = event
            {
                failure = Some((error.clone(), *next_poll, Instant::now()));
                return true;
            }
            assert!(
                !matches!(event, Event::Quote(_)),
                "{name}: a quote from a failing scanner"
            );
            false
        })
        .await;
        let (error, next_poll, at) = failure.unwrap();
        assert!(expected(error.kind), "{name}: {error:?}");
        assert!(!error.detail.is_empty());
        if index == 0 {
            assert!(
                next_poll >= at + Duration::from_millis(1_900),
                "{name}: Retry-After honoured"
            );
        }
        // The status reports the same next poll the event did.
        assert_eq!(feed.status().client.polling.next_poll, Some(next_poll));
        match cases.get(index + 1) {
            Some((fault, _, _)) => emulator.set_http_fault("/global/scan", *fault),
            None => emulator.clear_http_faults(),
        }
    }
    read_until(
        &mut events,
        Duration::from_secs(10),
        "polled quotes",
        |event| matches!(event, Event::Quote(quote) if quote.source == Source::Poll),
    )
    .await;
    assert_eq!(feed.status().client.polling.failures, 0);
    feed.close().await;
}

/// The home page fails while a refresh is due: refreshes back off (a handful of requests, not
/// a loop), the expired token is rejected on the socket, and once the page answers again a
/// fresh token brings the stream back.
async fn a_failing_token_source_backs_off(connect: impl Fn(Config, Options) -> Feed) {
    let server = server(Duration::from_secs(2));
    let client = http(&server, Duration::from_secs(2));
    let tokens = signed_in(&client);
    let start = tokens.fetch_now().unwrap();
    let emulator = server.emulator();
    emulator.set_http_fault(
        "/",
        HttpFault::Status {
            code: 503,
            retry_after: None,
            html: true,
        },
    );
    // Count the core's token requests (the socket's reconnects hit the same port).
    let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let provider = {
        let inner = tokens.provider();
        let asked = Arc::clone(&asked);
        Arc::new(move || {
            asked.fetch_add(1, Ordering::Relaxed);
            inner()
        }) as tickwire_driver::TokenProvider
    };
    let feed = connect(
        Config {
            auth_token: start.token.token.clone(),
            auth_token_lifetime: start.token.lifetime,
            ..config(&server)
        },
        Options {
            token_provider: Some(provider),
            ..Options::default()
        },
    );
    feed.subscribe(SYMBOLS);
    let mut events = feed.events();
    // Every token request ends in one event (a failed refresh, a rejection answered, or a
    // refresh); the requests are counted against them, so none goes unreported. The failed
    // refreshes' reported waits grow to the cap: a backoff, never a loop.
    let (mut waits, mut answered) = (Vec::new(), 0u64);
    read_until(
        &mut events,
        Duration::from_secs(15),
        "five failed refreshes",
        |event| {
            match event {
                Event::AuthTokenRefreshFailed { retry_at, .. } => {
                    answered += 1;
                    waits.push(retry_at.saturating_duration_since(Instant::now()));
                }
                Event::AuthTokenRejected { .. } | Event::AuthTokenRefreshed { .. } => answered += 1,
                _ => {}
            }
            waits.len() >= 5
        },
    )
    .await;
    assert!(tokens.last_error().is_some() && !tokens.signed_out());
    let requests = asked.load(Ordering::Relaxed);
    assert!(
        requests <= answered + 1,
        "{requests} token requests for {answered} answers"
    );
    // 100 ms doubling, then the breaker's 1 s: never shorter than the one before (a little
    // slack for the time between the decision and this test reading the event).
    assert!(
        waits
            .windows(2)
            .all(|pair| pair[1] + Duration::from_millis(50) >= pair[0]),
        "{waits:?}"
    );
    assert!(waits[4] >= Duration::from_millis(700), "{waits:?}");
    emulator.clear_http_faults();
    read_until(
        &mut events,
        Duration::from_secs(8),
        "quotes with a fresh token",
        {
            let cleared = Instant::now();
            move |event| {
                matches!(event, Event::Quote(_)) && cleared.elapsed() > Duration::from_millis(200)
            }
        },
    )
    .await;
    let status = feed.status().client;
    assert!(
        status.auth.expires_at.is_some_and(|at| at > Instant::now()),
        "{status:?}"
    );
    feed.close().await;
}

on_both_runtimes! {
    session_token_refreshed_before_expiry => a_session_token_is_refreshed_before_it_expires;
    rejected_token_replaced_from_cookies => a_rejected_token_is_replaced_from_the_cookies;
    polling_while_upgrades_are_refused => polling_takes_over_while_upgrades_are_refused;
    hostile_scanner_answers => hostile_scanner_answers_are_typed_and_back_off;
    failing_token_source_backs_off => a_failing_token_source_backs_off;
}

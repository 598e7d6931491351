//! The whole `Client` driven by an arbitrary schedule: connection results, messages built from
//! fuzzed packets (and raw bytes), disconnects, stale inputs, time steps, subscriptions, history,
//! poll results, tokens and close. After every step it checks what the simulation test checks
//! that needs no model of the server: never two connections, `poll_timeout` never in the past,
//! heartbeats echoed, bounded queues and outputs, and nothing after close.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tickwire_core::client::{
    AuthToken, Client, Config, ConnectionId, Event, HistoryError, Input, Output, PollError,
    PollErrorKind, PolledQuote, PollingConfig, TransportError, TransportErrorKind,
};
use tickwire_core::codec::frame;

const SYMBOLS: &[&str] = &[
    "NASDAQ:AAPL",
    "BINANCE:BTCUSDT",
    "FX:EURUSD",
    "={\"symbol\":\"X\"}",
    "BAD:NOPE",
];

#[derive(Arbitrary, Debug)]
enum Op {
    Advance(u16),
    Connected,
    ConnectFailed(u8),
    Disconnected,
    Stale,
    Message(Vec<PacketSpec>),
    Raw(Vec<u8>),
    Subscribe(u8),
    Unsubscribe(u8),
    SubscribeBars(u8),
    UnsubscribeBars,
    History(u8),
    PollResult(u8, u8),
    AuthToken(bool, u16),
    Close,
}

#[derive(Arbitrary, Debug)]
enum PacketSpec {
    Hello,
    Heartbeat(u16),
    Quote {
        symbol: u8,
        price: f64,
        session_matches: bool,
    },
    QuoteError(u8),
    Bars {
        key: u8,
        time: u8,
        count: u8,
        live: bool,
    },
    SeriesCompleted(u8),
    SymbolError(u8),
    SeriesError(u8),
    ProtocolError(bool),
    CriticalError,
    Garbage(Vec<u8>),
    BadLength,
}

#[derive(Default)]
struct World {
    current: Option<ConnectionId>,
    open: bool,
    quote_session: String,
    chart_session: String,
    closed: bool,
    poll_round: Option<u64>,
    /// When each command (not heartbeat echo) was sent, for the rate-limit window.
    command_times: std::collections::VecDeque<Instant>,
    /// The `Retry-After` of the last refused attempt, which the next delay must honour.
    retry_after: Option<Duration>,
}

fn session_of(text: &str, method: &str) -> Option<String> {
    let rest = text
        .split(&format!("{{\"m\":\"{method}\",\"p\":[\""))
        .nth(1)?;
    rest.split('"').next().map(str::to_owned)
}

fn packet(spec: &PacketSpec, world: &World) -> String {
    let (qs, cs) = (&world.quote_session, &world.chart_session);
    match spec {
        PacketSpec::Hello => frame(r#"{"session_id":"x","protocol":"json"}"#),
        PacketSpec::Heartbeat(number) => frame(&format!("~h~{number}")),
        PacketSpec::Quote {
            symbol,
            price,
            session_matches,
        } => {
            let symbol = serde_json::to_string(SYMBOLS[usize::from(*symbol) % SYMBOLS.len()])
                .unwrap_or_default();
            let session = if *session_matches {
                qs.as_str()
            } else {
                "qs_other"
            };
            let price = if price.is_finite() { *price } else { 1.0 };
            frame(&format!(
                r#"{{"m":"qsd","p":["{session}",{{"n":{symbol},"s":"ok","v":{{"lp":{price},"volume":1e100}}}}]}}"#
            ))
        }
        PacketSpec::QuoteError(symbol) => {
            let symbol = serde_json::to_string(SYMBOLS[usize::from(*symbol) % SYMBOLS.len()])
                .unwrap_or_default();
            frame(&format!(
                r#"{{"m":"qsd","p":["{qs}",{{"n":{symbol},"s":"error","errmsg":"no_such_symbol","v":{{}}}}]}}"#
            ))
        }
        PacketSpec::Bars {
            key,
            time,
            count,
            live,
        } => {
            let bars: Vec<String> = (0..u32::from(*count % 8))
                .map(|index| {
                    format!(
                        r#"{{"i":{index},"v":[{}.0,1,2,0.5,1.5]}}"#,
                        (u32::from(*time) + index) * 60
                    )
                })
                .collect();
            let method = if *live { "du" } else { "timescale_update" };
            frame(&format!(
                r#"{{"m":"{method}","p":["{cs}",{{"sds_{}":{{"s":[{}],"t":"s1"}}}}]}}"#,
                key % 8,
                bars.join(",")
            ))
        }
        PacketSpec::SeriesCompleted(key) => frame(&format!(
            r#"{{"m":"series_completed","p":["{cs}","sds_{}","streaming","s1",{{}}]}}"#,
            key % 8
        )),
        PacketSpec::SymbolError(key) => frame(&format!(
            r#"{{"m":"symbol_error","p":["{cs}","sds_sym_{}","invalid symbol"]}}"#,
            key % 8
        )),
        PacketSpec::SeriesError(key) => frame(&format!(
            r#"{{"m":"series_error","p":["{cs}","sds_{}","s1","seconds_not_entitled"]}}"#,
            key % 8
        )),
        PacketSpec::ProtocolError(bad_token) => {
            let text = if *bad_token {
                "bad auth token"
            } else {
                "wrong data"
            };
            frame(&format!(r#"{{"m":"protocol_error","p":["{text}"]}}"#))
        }
        PacketSpec::CriticalError => frame(&format!(
            r#"{{"m":"critical_error","p":["{cs}","invalid_parameters","x"]}}"#
        )),
        PacketSpec::Garbage(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        PacketSpec::BadLength => "~m~999~m~{}".to_owned(),
    }
}

fn config(polling: bool) -> Config {
    Config {
        max_queued_commands: 16,
        max_subscriptions: 4,
        max_history_bars: 16,
        polling: polling.then_some(PollingConfig {
            interval: Duration::from_secs(1),
            unavailable_after: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
        }),
        ..Config::default()
    }
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (polling, ops) = input;
    let config = config(polling);
    let queue_bound = config.max_queued_commands as u64;
    let start = Instant::now();
    let mut now = start;
    let mut client = Client::new(config, now);
    let mut world = World::default();
    // History requests are the application's own and each ends in an answer; they may add
    // outputs beyond what the network caused.
    let mut history_requests = 0usize;
    for op in ops.into_iter().take(256) {
        let mut expected_echoes = Vec::new();
        let mut echo_check = false;
        let mut sent_bytes = 0usize;
        // A driver wakes the client when its timer is due.
        if client.poll_timeout().is_some_and(|due| due <= now) {
            client.handle_timeout(now);
        }
        let described = format!("{op:?}");
        // Only the refusal this very step can explain a longer delay.
        world.retry_after = None;
        match op {
            Op::Advance(millis) => {
                now += Duration::from_millis(u64::from(millis) * 10);
                client.handle_timeout(now);
            }
            Op::Connected => {
                if let Some(id) = world.current {
                    client.handle_input(now, Input::Connected(id));
                    world.open = true;
                }
            }
            Op::ConnectFailed(kind) => {
                // Only an attempt still in flight can fail to connect.
                if let (Some(id), false) = (world.current, world.open) {
                    world.current = None;
                    let kind = match kind % 4 {
                        0 => TransportErrorKind::Refused,
                        1 => TransportErrorKind::HttpStatus {
                            code: 429,
                            retry_after: None,
                        },
                        2 => TransportErrorKind::HttpStatus {
                            code: 429,
                            retry_after: Some(Duration::from_secs(u64::from(kind))),
                        },
                        _ => TransportErrorKind::Dns,
                    };
                    world.retry_after = kind.retry_after();
                    client.handle_input(
                        now,
                        Input::ConnectFailed {
                            id,
                            error: TransportError::new(kind, "refused"),
                        },
                    );
                }
            }
            Op::Disconnected => {
                if let Some(id) = world.current.take() {
                    client.handle_input(
                        now,
                        Input::Disconnected {
                            id,
                            error: TransportError::new(TransportErrorKind::Reset, "reset"),
                        },
                    );
                    world.open = false;
                }
            }
            Op::Stale => {
                let stale = ConnectionId(world.current.map_or(0, |id| id.0.wrapping_add(1000)));
                client.handle_input(
                    now,
                    Input::Disconnected {
                        id: stale,
                        error: TransportError::new(TransportErrorKind::Reset, "late"),
                    },
                );
                client.handle_input(
                    now,
                    Input::Message {
                        id: stale,
                        text: Bytes::from_static(b"~m~4~m~~h~1"),
                    },
                );
            }
            Op::Message(specs) => {
                if let (Some(id), true) = (world.current, world.open) {
                    let specs: Vec<PacketSpec> = specs.into_iter().take(32).collect();
                    let text: String = specs.iter().map(|spec| packet(spec, &world)).collect();
                    // Garbage may hold heartbeats of its own, and a wrong length prefix may span the
                    // packets after it (if it happens to end at a header, it is taken as exact):
                    // check echoes only for messages without either.
                    echo_check = !specs
                        .iter()
                        .any(|spec| matches!(spec, PacketSpec::Garbage(_) | PacketSpec::BadLength));
                    for spec in &specs {
                        match spec {
                            PacketSpec::Heartbeat(number) => {
                                expected_echoes.push(frame(&format!("~h~{number}")))
                            }
                            // A connection-level error ends the message's processing.
                            PacketSpec::ProtocolError(_) => break,
                            _ => {}
                        }
                    }
                    sent_bytes = text.len();
                    client.handle_input(
                        now,
                        Input::Message {
                            id,
                            text: Bytes::from(text),
                        },
                    );
                }
            }
            Op::Raw(bytes) => {
                if let (Some(id), true) = (world.current, world.open) {
                    sent_bytes = bytes.len();
                    client.handle_input(
                        now,
                        Input::Message {
                            id,
                            text: Bytes::from(bytes),
                        },
                    );
                }
            }
            Op::Subscribe(symbol) => {
                let _ =
                    client.subscribe_quotes(now, [SYMBOLS[usize::from(symbol) % SYMBOLS.len()]]);
            }
            Op::Unsubscribe(symbol) => {
                client.unsubscribe_quotes(now, [SYMBOLS[usize::from(symbol) % SYMBOLS.len()]])
            }
            Op::SubscribeBars(symbol) => {
                let _ = client.subscribe_bars(
                    now,
                    SYMBOLS[usize::from(symbol) % SYMBOLS.len()],
                    "1",
                    10,
                );
            }
            Op::UnsubscribeBars => {
                if let Some((series, _, _)) = client.bar_subscriptions().first() {
                    client.unsubscribe_bars(now, *series);
                }
            }
            Op::History(symbol) => {
                history_requests += 1;
                let _ = client.request_history(
                    now,
                    SYMBOLS[usize::from(symbol) % SYMBOLS.len()],
                    "1D",
                    5,
                );
            }
            Op::PollResult(symbol, price) => {
                let round = world.poll_round.unwrap_or(0);
                let quote = PolledQuote {
                    symbol: SYMBOLS[usize::from(symbol) % SYMBOLS.len()].to_owned(),
                    last_price: Some(f64::from(price)),
                    ..PolledQuote::default()
                };
                // A zero price stands for a failed poll.
                let result = if price == 0 {
                    Err(PollError::new(PollErrorKind::Status(503), "HTTP 503"))
                } else {
                    Ok(vec![quote])
                };
                client.handle_input(now, Input::PollResult { round, result });
            }
            Op::AuthToken(fresh, lifetime_secs) => {
                let token = fresh.then(|| {
                    let token = AuthToken::new(format!("fresh-{lifetime_secs}"));
                    match lifetime_secs {
                        0 => token,
                        secs => token.valid_for(Duration::from_secs(u64::from(secs))),
                    }
                });
                client.handle_input(now, Input::AuthToken(token))
            }
            Op::Close => {
                client.close();
                world.closed = true;
            }
        }
        // Drain, checking every output.
        let mut outputs = 0usize;
        let mut echoes = Vec::new();
        while let Some(output) = client.poll_output() {
            outputs += 1;
            if world.closed {
                let closing = matches!(
                    &output,
                    Output::Close { .. } | Output::Event(Event::State(_))
                ) || matches!(&output, Output::Event(Event::History(history)) if history.result == Err(HistoryError::Closed));
                assert!(closing, "after close: {output:?}");
            }
            match output {
                Output::Connect(request) => {
                    assert!(
                        world.current.is_none(),
                        "a second connection while {:?} exists",
                        world.current
                    );
                    world.current = Some(request.id);
                    world.open = false;
                }
                Output::Close { id, .. } => {
                    if world.current == Some(id) {
                        world.current = None;
                        world.open = false;
                    }
                }
                Output::Transmit { id, text } => {
                    assert_eq!(
                        Some(id),
                        world.current,
                        "transmit on a connection that is gone"
                    );
                    if !text.contains("~h~") {
                        world.command_times.push_back(now);
                    }
                    if text.contains("~h~") {
                        echoes.push(text);
                    } else {
                        if let Some(session) = session_of(&text, "quote_create_session") {
                            world.quote_session = session;
                        }
                        if let Some(session) = session_of(&text, "chart_create_session") {
                            world.chart_session = session;
                        }
                    }
                }
                Output::Poll(request) => world.poll_round = Some(request.round),
                Output::Event(Event::State(change)) => {
                    // Backoff within bounds (default config: grace 2 s, 1 s doubling to 60 s, ±20 %).
                    if let (Some(next), Some(_), false) =
                        (change.next_attempt, change.cause, world.closed)
                    {
                        if change.state == tickwire_core::client::State::BackingOff {
                            use tickwire_core::client::DisconnectCause::{
                                DataSilence, MaxAge, Zombie,
                            };
                            let delay = next.saturating_duration_since(now);
                            // Verdicts on a proven session retry after the grace delay.
                            let verdict =
                                matches!(change.cause, Some(Zombie | DataSilence | MaxAge));
                            let base = if change.consecutive_failures == 0 || verdict {
                                Duration::from_secs(2)
                            } else {
                                Duration::from_secs(
                                    1u64 << (change.consecutive_failures - 1).min(6),
                                )
                                .min(Duration::from_secs(60))
                            };
                            // A bad token also waits for the token timeout (10 s); a refusal
                            // with Retry-After waits at least that long.
                            let retry_after = world.retry_after.filter(|_| {
                                change.cause
                                    == Some(tickwire_core::client::DisconnectCause::ConnectFailed)
                            });
                            let floor = retry_after.unwrap_or_default();
                            let high = base
                                .mul_f64(1.2)
                                .max(Duration::from_secs(10))
                                .max(floor.mul_f64(1.2))
                                + Duration::from_millis(1);
                            assert!(
                                delay >= base.mul_f64(0.8).max(floor) && delay <= high,
                                "delay {delay:?} for base {base:?}, retry after {retry_after:?}"
                            );
                        }
                    }
                }
                Output::RequestAuthToken | Output::Event(_) => {}
            }
        }
        // Every heartbeat of a fully processed message is echoed, identically and in order.
        if echo_check {
            // A zombie close or a protocol error may end processing early: a prefix, in order.
            assert!(
                expected_echoes.starts_with(&echoes),
                "echoes {echoes:?} vs {expected_echoes:?}"
            );
        }
        // Outputs are bounded by what came in: a few per packet, plus set-up, timers and the
        // answers (and their commands) to the application's history requests.
        assert!(
            outputs <= 64 + 8 * sent_bytes + 4 * history_requests,
            "{outputs} outputs for {sent_bytes} bytes and {history_requests} history requests"
        );
        let status = client.status(now);
        // No more than burst + rate commands in any 60 s window (defaults: 10 + 60).
        while world
            .command_times
            .front()
            .is_some_and(|&at| at + Duration::from_secs(60) <= now)
        {
            world.command_times.pop_front();
        }
        assert!(
            world.command_times.len() <= 70,
            "{} commands within 60 s",
            world.command_times.len()
        );
        // Polling and a live stream never at once.
        assert!(
            !(status.mode == tickwire_core::client::Mode::Polling
                && status.state == tickwire_core::client::State::Live),
            "polling while live"
        );
        assert!(
            status.counters.commands_queued <= queue_bound,
            "queue over its bound"
        );
        assert!(
            client.quote_symbols().len() <= 4 && client.bar_subscriptions().len() <= 4,
            "subscriptions over the bound"
        );
        match client.poll_timeout() {
            Some(due) => assert!(
                !world.closed && due >= now,
                "poll_timeout {:?} before now after {described}: {status:?}",
                now.checked_duration_since(due)
            ),
            None => assert!(world.closed, "no timer although not closed"),
        }
    }
});

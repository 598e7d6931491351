//! The relay hub driven by an arbitrary schedule: connections arriving and leaving, client
//! messages (well-formed requests and raw text), binary frames, written-batch reports,
//! upstream quotes, bars, symbol errors and state changes, time steps and shutdown. After every
//! step it checks what must hold whatever clients and upstream do: every frame is ASCII JSON
//! for a live connection, no connection has more than its window unwritten, nothing is sent
//! after a close, upstream subscribes and unsubscribes alternate per symbol and (once any batch
//! delay has passed) cover every subscribed symbol, limits hold, and the next deadline is never
//! in the past.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tickwire_core::client::{Quote, State};
use tickwire_core::hub::{CloseReason, ConnId, Hub, HubConfig, HubOutput};
use tickwire_core::message::Bar;

const SYMBOLS: &[&str] = &[
    "A:X",
    "B:Y",
    "C:Z",
    "D:W",
    "E:V",
    "",
    "bad symbol",
    "N\u{e9}:\u{1F600}",
];
const STATES: [State; 6] = [
    State::Idle,
    State::Connecting,
    State::Live,
    State::BackingOff,
    State::CircuitOpen,
    State::Closed,
];
const MAX_CONNECTIONS: usize = 4;
const WINDOW: usize = 2;

#[derive(Arbitrary, Debug)]
enum Op {
    Connect,
    Disconnect(u8, bool),
    Request {
        conn: u8,
        action: u8,
        symbols: Vec<u8>,
    },
    Text(u8, String),
    Binary(u8, u16),
    Activity(u8),
    Written(u8, u8),
    Quote {
        symbol: u8,
        price: Option<i16>,
        volume: Option<u8>,
        extra: Option<u8>,
    },
    Bar {
        symbol: u8,
        time: u8,
        close: i16,
        closed: bool,
    },
    SymbolError(u8),
    Upstream(u8),
    Advance(u16),
    Shutdown,
}

#[derive(Arbitrary, Debug)]
struct Schedule {
    linger: bool,
    batched: bool,
    ops: Vec<Op>,
}

#[derive(Default)]
struct Model {
    /// Frames handed to each open connection and not yet reported written.
    unwritten: BTreeMap<ConnId, usize>,
    closed: BTreeSet<ConnId>,
    upstream: BTreeSet<Arc<str>>,
}

fn pick(open: &BTreeMap<ConnId, usize>, index: u8) -> Option<ConnId> {
    if open.is_empty() {
        return None;
    }
    open.keys().nth(usize::from(index) % open.len()).copied()
}

fn request(action: u8, symbols: &[u8]) -> String {
    let names: Vec<&str> = symbols
        .iter()
        .map(|index| SYMBOLS[usize::from(*index) % SYMBOLS.len()])
        .collect();
    let action = ["subscribe", "unsubscribe", "ping", "other"][usize::from(action) % 4];
    serde_json::json!({"action": action, "symbols": names}).to_string()
}

fuzz_target!(|schedule: Schedule| {
    let config = HubConfig {
        max_connections: MAX_CONNECTIONS,
        max_subscriptions_per_connection: 3,
        max_upstream_symbols: 4,
        max_message_bytes: 256,
        max_symbol_bytes: 16,
        messages_per_second: 5,
        message_burst: 5,
        queue_capacity: 4,
        send_window: WINDOW,
        slow_consumer_deadline: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(3),
        linger: if schedule.linger {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        },
        upstream_batch_delay: if schedule.batched {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        },
        whitelist: None,
        default_update_interval: None,
    };
    let mut hub = Hub::new(config).unwrap();
    let mut now = Instant::now();
    let mut model = Model::default();
    for op in schedule.ops.into_iter().take(400) {
        match op {
            Op::Connect => {
                if let Ok(conn) = hub.connect(now) {
                    assert!(model.unwritten.insert(conn, 0).is_none(), "{conn} reused");
                }
            }
            Op::Disconnect(index, failed) => {
                if let Some(conn) = pick(&model.unwritten, index) {
                    let reason = if failed {
                        CloseReason::SocketError
                    } else {
                        CloseReason::ClientClosed
                    };
                    hub.disconnect(now, conn, reason);
                    model.unwritten.remove(&conn);
                    model.closed.insert(conn);
                }
            }
            Op::Request {
                conn,
                action,
                symbols,
            } => {
                if let Some(conn) = pick(&model.unwritten, conn) {
                    hub.handle_text(now, conn, &request(action, &symbols));
                }
            }
            Op::Text(conn, text) => {
                if let Some(conn) = pick(&model.unwritten, conn) {
                    hub.handle_text(now, conn, &text);
                }
            }
            Op::Binary(conn, bytes) => {
                if let Some(conn) = pick(&model.unwritten, conn) {
                    hub.handle_binary(now, conn, usize::from(bytes));
                }
            }
            Op::Activity(conn) => {
                if let Some(conn) = pick(&model.unwritten, conn) {
                    hub.handle_activity(now, conn);
                }
            }
            Op::Written(conn, count) => {
                if let Some(conn) = pick(&model.unwritten, conn) {
                    let unwritten = model.unwritten.get_mut(&conn).unwrap();
                    let count = usize::from(count).min(*unwritten);
                    *unwritten -= count;
                    hub.handle_written(now, conn, count);
                }
            }
            Op::Quote {
                symbol,
                price,
                volume,
                extra,
            } => {
                let mut quote = Quote::new(Arc::from(SYMBOLS[usize::from(symbol) % SYMBOLS.len()]));
                quote.last_price = price.map(f64::from);
                quote.volume = volume.map(f64::from);
                if let Some(extra) = extra {
                    Arc::make_mut(&mut quote.other)
                        .insert("x".into(), serde_json::Value::from(extra));
                }
                hub.handle_quote(now, &quote);
            }
            Op::Bar {
                symbol,
                time,
                close,
                closed,
            } => {
                let bar = Bar {
                    index: 0,
                    time: f64::from(time) * 60.0,
                    open: 1.0,
                    high: f64::from(close).max(1.0),
                    low: f64::from(close).min(1.0),
                    close: f64::from(close),
                    volume: None,
                };
                let timeframe: Arc<str> = Arc::from("1");
                hub.handle_bar(
                    now,
                    SYMBOLS[usize::from(symbol) % SYMBOLS.len()],
                    &timeframe,
                    &bar,
                    closed,
                );
            }
            Op::SymbolError(symbol) => {
                let symbol = SYMBOLS[usize::from(symbol) % SYMBOLS.len()];
                // Upstream only rejects what it was asked for, and forgets it.
                if model.upstream.remove(symbol) {
                    hub.handle_symbol_error(now, symbol, "no_such_symbol");
                }
            }
            Op::Upstream(state) => {
                hub.handle_upstream_state(now, STATES[usize::from(state) % STATES.len()])
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms));
            }
            Op::Shutdown => hub.shutdown(now),
        }
        hub.handle_timeout(now);
        settle(&mut hub, &mut model, now, !schedule.batched);
    }
    // Past the batch delay every decided upstream change has gone out.
    now += Duration::from_secs(1);
    hub.handle_timeout(now);
    settle(&mut hub, &mut model, now, true);
});

/// Drains the hub's outputs into the model and checks every invariant; with
/// `upstream_settled`, also that every wanted symbol is subscribed upstream.
fn settle(hub: &mut Hub, model: &mut Model, now: Instant, upstream_settled: bool) {
    while let Some(output) = hub.poll_output() {
        match output {
            HubOutput::Transmit { conn, frame } => {
                assert!(!model.closed.contains(&conn), "{conn} sent to after close");
                let unwritten = model
                    .unwritten
                    .get_mut(&conn)
                    .expect("frame for an unknown connection");
                *unwritten += 1;
                assert!(*unwritten <= WINDOW, "{conn}: {unwritten} frames unwritten");
                assert!(frame.as_str().is_ascii());
                let value: serde_json::Value =
                    serde_json::from_str(frame.as_str()).expect("frame is JSON");
                assert!(value["type"].is_string());
                assert!(
                    frame.as_str().len() < 4096,
                    "frame of {} bytes",
                    frame.as_str().len()
                );
            }
            HubOutput::Close { conn, .. } => {
                assert!(
                    model.unwritten.remove(&conn).is_some(),
                    "close of an unknown {conn}"
                );
                model.closed.insert(conn);
            }
            HubOutput::SubscribeUpstream(symbols) => {
                assert!(!symbols.is_empty(), "an empty upstream batch");
                for symbol in symbols {
                    assert!(
                        model.upstream.insert(symbol.clone()),
                        "{symbol} subscribed twice"
                    );
                }
            }
            HubOutput::UnsubscribeUpstream(symbols) => {
                assert!(!symbols.is_empty(), "an empty upstream batch");
                for symbol in symbols {
                    assert!(
                        model.upstream.remove(&symbol),
                        "{symbol} unsubscribed, never subscribed"
                    );
                }
            }
        }
    }
    assert!(hub.connection_count() <= MAX_CONNECTIONS);
    assert_eq!(hub.connection_count(), model.unwritten.len());
    assert!(
        hub.poll_timeout().is_none_or(|due| due > now),
        "a deadline in the past"
    );
    let mut subscriptions = 0;
    for conn in model.unwritten.keys() {
        let held = hub.subscriptions(*conn).count();
        assert!(held <= 3);
        subscriptions += held;
    }
    let mut counted = 0;
    for (symbol, subscribers, upstream) in hub.symbols() {
        counted += subscribers;
        assert!(upstream);
        if upstream_settled {
            assert!(
                model.upstream.contains(symbol),
                "{symbol} wanted, not upstream"
            );
        }
    }
    assert_eq!(counted, subscriptions);
    assert!(model.upstream.len() <= 4);
}

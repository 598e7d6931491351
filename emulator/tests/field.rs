//! The emulator's field conditions over loopback, with a raw WebSocket client: market hours,
//! token rejection and expiry, the close handshake, heartbeats batched with data, and the
//! count of connections open at once.
//!
//! Every wait has a deadline; nothing sleeps for a fixed time.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use support::{Client, Received, config};
use tickwire_emulator::{ConnectionEvent, Emulator, EmulatorConfig, Fault, MarketHours};
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

// The client itself is in `support`; what only these tests ask of it.
impl Client {
    async fn subscribe(&mut self, token: &str, session: &str, symbols: &[&str]) {
        self.send(&format!(r#"{{"m":"set_auth_token","p":["{token}"]}}"#))
            .await;
        self.send(&format!(
            r#"{{"m":"quote_create_session","p":["{session}"]}}"#
        ))
        .await;
        if !symbols.is_empty() {
            let list: Vec<String> = symbols
                .iter()
                .map(|symbol| format!("\"{symbol}\""))
                .collect();
            self.send(&format!(
                r#"{{"m":"quote_add_symbols","p":["{session}",{}]}}"#,
                list.join(",")
            ))
            .await;
        }
    }
}

fn is_heartbeat(packet: &str) -> bool {
    packet.starts_with("~h~")
}

fn is_price_tick(packet: &str) -> bool {
    packet.starts_with(r#"{"m":"qsd""#) && packet.contains(r#""lp":"#)
}

fn session_delta(session: &str, key: &str, state: &str) -> String {
    format!(
        r#"{{"m":"qsd","p":["{session}",{{"n":"{key}","s":"ok","v":{{"current_session":"{state}"}}}}]}}"#
    )
}

#[tokio::test]
async fn a_closing_market_says_out_of_session_stops_ticking_keeps_heartbeats_then_reopens() {
    let emulator = Emulator::start(config()).await.unwrap();
    let mut client = Client::connect(&emulator).await;
    // Only the stock: crypto would go on ticking while the market is closed.
    client
        .subscribe("unauthorized_user_token", "qs_field", &["NASDAQ:AAPL"])
        .await;
    let (snapshot, _) = client.until(|packet| packet.contains("NASDAQ:AAPL")).await;
    // An anonymous token gets delayed stock quotes (only a JWT the HTTP side issued streams).
    assert!(
        snapshot.contains(r#""current_session":"market""#)
            && snapshot.contains(r#""update_mode":"delayed_streaming_900""#),
        "{snapshot}"
    );
    client
        .until(|packet| packet.contains("quote_completed"))
        .await;
    client.until(is_price_tick).await;
    assert_eq!(emulator.stats().quote_sessions(), ["qs_field"]);

    emulator.set_market_open(false);
    assert!(!emulator.is_market_open());
    let closed = session_delta("qs_field", "NASDAQ:AAPL", "out_of_session");
    client.until(|packet| packet == closed).await;
    // Heartbeats go on while closed, and no price moves in between.
    let mut heartbeats = 0;
    while heartbeats < 3 {
        let (_, between) = client.until(is_heartbeat).await;
        assert!(
            between.is_empty(),
            "nothing but heartbeats while closed: {between:?}"
        );
        heartbeats += 1;
    }
    // Commands are still answered.
    client
        .send(r#"{"m":"quote_add_symbols","p":["qs_field","FX:EURUSD"]}"#)
        .await;
    let (snapshot, _) = client.until(|packet| packet.contains("FX:EURUSD")).await;
    assert!(
        snapshot.contains(r#""current_session":"out_of_session""#),
        "{snapshot}"
    );

    emulator.set_market_open(true);
    let (opened, _) = client
        .until(|packet| packet.contains(r#""current_session":"market""#))
        .await;
    assert!(
        opened == session_delta("qs_field", "NASDAQ:AAPL", "market")
            || opened == session_delta("qs_field", "FX:EURUSD", "market"),
        "{opened}"
    );
    client.until(is_price_tick).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn market_hours_cycle_and_crypto_never_closes() {
    let emulator = Emulator::start(EmulatorConfig {
        market_hours: Some(MarketHours {
            open: Duration::from_millis(300),
            closed: Duration::from_millis(300),
        }),
        ..config()
    })
    .await
    .unwrap();
    let mut client = Client::connect(&emulator).await;
    client
        .subscribe(
            "unauthorized_user_token",
            "qs_hours",
            &["NASDAQ:MSFT", "BINANCE:BTCUSDT"],
        )
        .await;
    let closed = session_delta("qs_hours", "NASDAQ:MSFT", "out_of_session");
    let (_, before) = client.until(|packet| packet == closed).await;
    assert!(
        before
            .iter()
            .all(|packet| !packet
                .contains(r#""n":"BINANCE:BTCUSDT","s":"ok","v":{"current_session""#)),
        "crypto gets no session change"
    );
    // While closed, crypto still ticks and the stock does not.
    let (tick, between) = client
        .until(|packet| is_price_tick(packet) && packet.contains("BINANCE:BTCUSDT"))
        .await;
    assert!(!tick.contains("out_of_session"));
    assert!(
        between.iter().all(|packet| !packet.contains("NASDAQ:MSFT")),
        "{between:?}"
    );
    let reopened = session_delta("qs_hours", "NASDAQ:MSFT", "market");
    client.until(|packet| packet == reopened).await;
    client
        .until(|packet| is_price_tick(packet) && packet.contains("NASDAQ:MSFT"))
        .await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn starting_closed_snapshots_out_of_session_until_set_open() {
    let emulator = Emulator::start(EmulatorConfig {
        start_closed: true,
        market_hours: Some(MarketHours {
            open: Duration::from_secs(3_600),
            closed: Duration::from_secs(1),
        }),
        ..config()
    })
    .await
    .unwrap();
    assert!(
        !emulator.is_market_open(),
        "closed although the schedule says open"
    );
    let mut client = Client::connect(&emulator).await;
    client
        .subscribe("unauthorized_user_token", "qs_c", &["SP:SPX"])
        .await;
    let (snapshot, _) = client.until(|packet| packet.contains("SP:SPX")).await;
    assert!(
        snapshot.contains(r#""current_session":"out_of_session""#),
        "{snapshot}"
    );
    let (_, between) = client.until(is_heartbeat).await;
    assert!(
        between.iter().all(|packet| !is_price_tick(packet)),
        "{between:?}"
    );
    emulator.set_market_open(true);
    client
        .until(|packet| packet == session_delta("qs_c", "SP:SPX", "market"))
        .await;
    client.until(is_price_tick).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_closes_its_connection_and_is_refused_later_others_work() {
    let emulator = Emulator::start(EmulatorConfig {
        faults: vec!["#1:expire-token@150ms".parse::<Fault>().unwrap()],
        ..config()
    })
    .await
    .unwrap();
    let mut events = emulator.events();
    let refusal = r#"{"m":"protocol_error","p":["bad auth token"]}"#;

    let mut first = Client::connect(&emulator).await;
    first.subscribe("jwt-a", "qs_one", &["NASDAQ:AAPL"]).await;
    let before = first.until_close_frame().await;
    assert_eq!(
        before.last().map(String::as_str),
        Some(refusal),
        "{before:?}"
    );

    let mut second = Client::connect(&emulator).await;
    second.subscribe("jwt-a", "qs_two", &[]).await;
    let before = second.until_close_frame().await;
    assert_eq!(
        before.last().map(String::as_str),
        Some(refusal),
        "{before:?}"
    );

    let mut third = Client::connect(&emulator).await;
    third.subscribe("jwt-b", "qs_three", &["NASDAQ:AAPL"]).await;
    let (_, before) = third
        .until(|packet| packet.contains("quote_completed"))
        .await;
    assert!(
        before
            .iter()
            .all(|packet| !packet.contains("protocol_error"))
    );

    emulator.revoke_token("jwt-b");
    let mut fourth = Client::connect(&emulator).await;
    fourth.subscribe("jwt-b", "qs_four", &[]).await;
    assert!(
        fourth
            .until_close_frame()
            .await
            .iter()
            .any(|packet| packet == refusal)
    );
    // The connection already using the revoked token goes on.
    third.until(is_heartbeat).await;

    let stats = emulator.stats();
    assert_eq!(
        stats
            .token_rejections
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    for expected in [
        ConnectionEvent::Open { connection: 1 },
        ConnectionEvent::QuoteSession {
            connection: 1,
            id: "qs_one".into(),
        },
        ConnectionEvent::TokenRejected { connection: 1 },
        ConnectionEvent::Closed { connection: 1 },
        ConnectionEvent::TokenRejected { connection: 2 },
        ConnectionEvent::TokenRejected { connection: 4 },
    ] {
        assert!(seen.contains(&expected), "{expected} in {seen:?}");
    }
    assert_eq!(
        ConnectionEvent::QuoteSession {
            connection: 3,
            id: "qs_three".into()
        }
        .to_string(),
        "conn #3 quote session qs_three"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn bad_token_fault_and_configured_revocations_refuse_at_set_auth_token() {
    let emulator = Emulator::start(EmulatorConfig {
        faults: vec!["#1:bad-token".parse::<Fault>().unwrap()],
        revoked_tokens: vec!["stale".into()],
        ..config()
    })
    .await
    .unwrap();
    let mut first = Client::connect(&emulator).await;
    first.subscribe("fine", "qs_a", &[]).await;
    assert!(
        first
            .until_close_frame()
            .await
            .iter()
            .any(|packet| packet.contains("bad auth token"))
    );
    let mut second = Client::connect(&emulator).await;
    second.subscribe("stale", "qs_b", &[]).await;
    assert!(
        second
            .until_close_frame()
            .await
            .iter()
            .any(|packet| packet.contains("bad auth token"))
    );
    let mut third = Client::connect(&emulator).await;
    third.subscribe("fine", "qs_c", &["NASDAQ:AAPL"]).await;
    third
        .until(|packet| packet.contains("quote_completed"))
        .await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_client_close_frame_is_answered_with_one() {
    let emulator = Emulator::start(config()).await.unwrap();
    let mut client = Client::connect(&emulator).await;
    client.until(|packet| packet.contains("session_id")).await;
    client
        .ws
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        })))
        .await
        .unwrap();
    loop {
        match client.receive().await {
            Received::Packets(_) => {}
            Received::Close => break,
            other => panic!("the close frame was not answered: {other:?}"),
        }
    }
    // After the answer the stream ends cleanly.
    assert!(
        timeout_at(client.deadline, client.ws.next())
            .await
            .unwrap()
            .is_none_or(|end| end.is_err())
    );
}

#[tokio::test]
async fn the_protocol_error_fault_sends_wrong_data_then_a_close_frame() {
    let emulator = Emulator::start(EmulatorConfig {
        faults: vec!["protocol-error@100ms".parse::<Fault>().unwrap()],
        ..config()
    })
    .await
    .unwrap();
    let mut client = Client::connect(&emulator).await;
    client
        .subscribe("unauthorized_user_token", "qs_p", &["NASDAQ:AAPL"])
        .await;
    let before = client.until_close_frame().await;
    assert_eq!(
        before.last().map(String::as_str),
        Some(r#"{"m":"protocol_error","p":["wrong data"]}"#),
        "{before:?}"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_heartbeat_shares_a_message_with_data_while_ticks_flow() {
    let emulator = Emulator::start(EmulatorConfig {
        rate_hz: 2_000.0,
        heartbeat_interval: Duration::from_millis(50),
        ..config()
    })
    .await
    .unwrap();
    let mut client = Client::connect(&emulator).await;
    client
        .subscribe(
            "unauthorized_user_token",
            "qs_batch",
            &[
                "BINANCE:BTCUSDT",
                "BINANCE:ETHUSDT",
                "NASDAQ:AAPL",
                "NASDAQ:MSFT",
                "NYSE:IBM",
            ],
        )
        .await;
    loop {
        match client.receive().await {
            Received::Packets(packets) => {
                if packets.iter().any(|packet| is_heartbeat(packet))
                    && packets.iter().any(|packet| is_price_tick(packet))
                {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    emulator.shutdown().await;
}

/// A client whose session has started: the emulator counts a connection as open before it
/// sends the session id.
async fn open_client(emulator: &Emulator) -> Client {
    let mut client = Client::connect(emulator).await;
    client.until(|packet| packet.contains("session_id")).await;
    client
}

/// Waits until the emulator counts no connection as open.
async fn until_all_closed(emulator: &Emulator) {
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    while emulator.stats().open.load(Ordering::Relaxed) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn peak_open_counts_the_most_connections_open_at_once() {
    let emulator = Emulator::start(config()).await.unwrap();
    let stats = emulator.stats();

    // One after another: never two at once.
    for _ in 0..3 {
        let client = open_client(&emulator).await;
        assert_eq!(stats.open.load(Ordering::Relaxed), 1);
        drop(client);
        until_all_closed(&emulator).await;
    }
    assert_eq!(stats.peak_open.load(Ordering::Relaxed), 1);
    assert_eq!(stats.sessions.load(Ordering::Relaxed), 3);

    // Two overlapping: the peak says so, and keeps saying so after they close.
    let first = open_client(&emulator).await;
    let second = open_client(&emulator).await;
    assert_eq!(stats.peak_open.load(Ordering::Relaxed), 2);
    drop((first, second));
    until_all_closed(&emulator).await;
    let _third = open_client(&emulator).await;
    assert_eq!(stats.open.load(Ordering::Relaxed), 1);
    assert_eq!(stats.peak_open.load(Ordering::Relaxed), 2);
}

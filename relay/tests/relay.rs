//! The relay over real loopback sockets: an emulator upstream, the relay, and many WebSocket
//! clients. Every wait is bounded; limits are set small so each scenario takes a few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tickwire_core::hub::{HubConfig, UpstreamPlan};
use tickwire_emulator::{Emulator, EmulatorConfig};
use tickwire_relay::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(15);

async fn emulator(rate_hz: f64, stamp: bool) -> Emulator {
    Emulator::start(EmulatorConfig {
        rate_hz,
        symbols: 40,
        heartbeat_interval: Duration::from_millis(500),
        stamp_quotes: stamp,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

fn relay_config(emulator: &Emulator, hub: HubConfig) -> RelayConfig {
    let mut config = RelayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        hub,
        ..RelayConfig::default()
    };
    config.upstream.url = emulator.url();
    config
}

/// Symbols of the emulator's market: `EMU:S10` and up.
fn symbols(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|index| format!("EMU:S{index}")).collect()
}

fn unix_ns() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the socket did instead of delivering a message.
#[derive(Debug, PartialEq)]
enum Ended {
    Closed(Option<u16>),
    Failed,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        Client { ws }
    }

    /// A client whose kernel receive buffer is tiny, so that not reading pushes back at once.
    async fn connect_small_buffer(addr: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let (ws, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
                .await
                .unwrap();
        Client { ws }
    }

    async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    async fn subscribe(&mut self, symbols: &[String]) {
        self.send(json!({"action": "subscribe", "symbols": symbols}))
            .await;
    }

    /// The next JSON message, or how the connection ended.
    async fn next(&mut self) -> Result<Value, Ended> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("no message within {WAIT:?}"),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Ok(serde_json::from_str(text.as_str()).unwrap());
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(Ended::Closed(frame.map(|frame| u16::from(frame.code))));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Err(Ended::Failed),
            }
        }
    }

    /// Reads until `wanted` matches a message; panics on the end of the connection or after
    /// the bound.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.next().await {
                Ok(value) if wanted(&value) => return value,
                Ok(_) => {}
                Err(ended) => panic!("waiting for {what}, the connection ended: {ended:?}"),
            }
        }
        panic!("no {what} within {WAIT:?}");
    }

    /// Reads until the connection ends, returning every message seen before.
    async fn until_end(&mut self) -> (Vec<Value>, Ended) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Ok(value) => seen.push(value),
                Err(ended) => return (seen, ended),
            }
        }
    }
}

fn is_type(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |value| value["type"] == kind
}

/// A plain HTTP/1.0 GET: status code and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// One metric's value from `/metrics` (the first line starting with `name`).
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_get_snapshots_and_live_quotes_and_upstream_follows_demand() {
    let emulator = emulator(400.0, false).await;
    let relay = Relay::start(relay_config(
        &emulator,
        HubConfig {
            linger: Duration::from_millis(300),
            ..HubConfig::default()
        },
    ))
    .await
    .unwrap();
    let addr = relay.local_addr();
    let wanted = symbols(10..20);
    let mut clients = Vec::new();
    for index in 0..50 {
        let mut client = Client::connect(addr).await;
        // Each client takes three of the ten symbols.
        let mine: Vec<String> = (0..3)
            .map(|offset| wanted[(index + offset) % wanted.len()].clone())
            .collect();
        client.subscribe(&mine).await;
        clients.push((client, mine));
    }
    for (client, mine) in &mut clients {
        let status = client.until("status", is_type("status")).await;
        assert!(status["upstream"].is_string());
        let mut snapshots = BTreeSet::new();
        let mut quoted = BTreeSet::new();
        while quoted.len() < mine.len() {
            let message = client.until("a quote", |_| true).await;
            let symbol = message["symbol"].as_str().unwrap_or_default().to_owned();
            match message["type"].as_str() {
                Some("snapshot") => {
                    snapshots.insert(symbol);
                }
                Some("quote") => {
                    assert!(snapshots.contains(&symbol), "quote before snapshot");
                    assert!(message["data"].is_object());
                    quoted.insert(symbol);
                }
                _ => {}
            }
        }
        let mine: BTreeSet<String> = mine.iter().cloned().collect();
        assert_eq!(snapshots, mine);
        assert_eq!(quoted, mine);
    }
    assert_eq!(metric(addr, "tickwire_relay_connections ").await, 50.0);
    // 50 client sockets are open in this process, and the process metrics see them.
    assert!(metric(addr, "process_open_fds ").await >= 50.0);
    assert!(metric(addr, "process_max_fds ").await >= metric(addr, "process_open_fds ").await);
    assert!(metric(addr, "process_resident_memory_bytes ").await > 0.0);
    assert!(metric(addr, "process_start_time_seconds ").await > 1.7e9);
    assert!(metric(addr, "process_cpu_seconds_total ").await >= 0.0);
    assert_eq!(metric(addr, "tickwire_relay_upstream_symbols").await, 10.0);
    assert!(
        get(addr, "/metrics")
            .await
            .1
            .contains("tickwire_relay_subscribers{symbol=\"EMU:S10\"} 15")
    );
    // Each of its 15 subscribers read a snapshot and a quote of it at least.
    assert!(
        metric(
            addr,
            "tickwire_relay_symbol_messages_sent_total{symbol=\"EMU:S10\"}"
        )
        .await
            >= 30.0
    );
    let (status, health) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["upstream"], "live");
    // Anonymous upstream: the emulator delays its (non-crypto) symbols as the real feed does.
    assert_eq!(health["data"], "delayed", "{health}");
    assert_eq!(health["delayed_symbols"], 10, "{health}");

    // Everyone leaves: after the linger nothing is carried upstream.
    drop(clients);
    eventually("upstream empties after the linger", async || {
        metric(addr, "tickwire_relay_upstream_symbols").await == 0.0
    })
    .await;
    relay.shutdown().await;
    emulator.shutdown().await;
}

/// Latency of a stamped quote message, emulator write to now.
fn latency(message: &Value) -> Option<Duration> {
    let stamp: u64 = message["data"]["emu_ns"].as_str()?.parse().ok()?;
    Some(Duration::from_nanos(unix_ns().saturating_sub(stamp)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_warned_conflated_and_cut_off_while_the_others_keep_their_latency() {
    let emulator = emulator(2000.0, true).await;
    let mut config = relay_config(
        &emulator,
        HubConfig {
            queue_capacity: 64,
            send_window: 8,
            slow_consumer_deadline: Duration::from_secs(2),
            ..HubConfig::default()
        },
    );
    config.send_buffer_bytes = Some(4096);
    let relay = Relay::start(config).await.unwrap();
    let addr = relay.local_addr();
    let wanted = symbols(10..50);

    let mut slow = Client::connect_small_buffer(addr).await;
    slow.subscribe(&wanted).await;
    let mut readers = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connect(addr).await;
        client.subscribe(&wanted).await;
        readers.push(client);
    }
    // The readers keep reading for four seconds while the slow client reads nothing.
    let reading = readers.into_iter().map(|mut client| {
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(4) {
                match client.next().await {
                    Ok(message) => latencies.extend(latency(&message)),
                    Err(ended) => panic!("a reading client was disconnected: {ended:?}"),
                }
            }
            (client, latencies)
        })
    });
    let mut latencies = Vec::new();
    let mut clients = Vec::new();
    for task in reading.collect::<Vec<_>>() {
        let (client, seen) = task.await.unwrap();
        latencies.extend(seen);
        clients.push(client);
    }
    latencies.sort_unstable();
    assert!(latencies.len() > 1000, "only {} quotes", latencies.len());
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(250),
        "readers' p99 latency {p99:?} while one client stalls"
    );
    // A reader may lag for a moment on a loaded machine and be warned too, but only the
    // stalled client stays behind long enough to be cut off.
    assert!(metric(addr, "tickwire_relay_slow_consumers_total").await >= 1.0);
    // The stalled client held every symbol the market has (EMU:S10 to EMU:S39; upstream
    // rejected the rest): each counts it.
    for symbol in [&wanted[0], &wanted[29]] {
        let name = format!("tickwire_relay_symbol_slow_consumers_total{{symbol=\"{symbol}\"}}");
        assert!(metric(addr, &name).await >= 1.0, "{name}");
    }
    assert_eq!(
        metric(
            addr,
            "tickwire_relay_disconnects_total{cause=\"slow_consumer\"}"
        )
        .await,
        1.0
    );
    assert!(metric(addr, "tickwire_relay_deliveries_conflated_total").await > 0.0);
    // The stalled client finds what fitted in its buffers, then the end.
    let (_, ended) = slow.until_end().await;
    assert!(
        matches!(ended, Ended::Failed | Ended::Closed(Some(4001))),
        "{ended:?}"
    );
    assert_eq!(metric(addr, "tickwire_relay_connections ").await, 5.0);
    relay.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_too_slowly_hears_slow_consumer_then_is_closed() {
    let emulator = emulator(1000.0, false).await;
    let mut config = relay_config(
        &emulator,
        HubConfig {
            queue_capacity: 32,
            send_window: 4,
            slow_consumer_deadline: Duration::from_secs(2),
            ..HubConfig::default()
        },
    );
    config.send_buffer_bytes = Some(4096);
    let relay = Relay::start(config).await.unwrap();
    let mut client = Client::connect_small_buffer(relay.local_addr()).await;
    client.subscribe(&symbols(10..50)).await;
    // About 40 messages a second against about a thousand updates.
    let mut seen = Vec::new();
    let ended = loop {
        match client.next().await {
            Ok(message) => seen.push(message),
            Err(ended) => break ended,
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let warning = seen
        .iter()
        .position(|message| message["type"] == "warning")
        .expect("a SLOW_CONSUMER warning before the end");
    assert_eq!(seen[warning]["code"], "SLOW_CONSUMER");
    assert_eq!(
        seen.iter()
            .filter(|message| message["type"] == "warning")
            .count(),
        1
    );
    // After the warning it was owed the latest state per symbol: snapshots.
    assert!(
        seen[warning..]
            .iter()
            .any(|message| message["type"] == "snapshot"),
        "no conflated snapshot after the warning"
    );
    assert!(
        matches!(ended, Ended::Failed | Ended::Closed(Some(4001))),
        "{ended:?}"
    );
    relay.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_get_errors_and_never_hurt_the_relay() {
    let emulator = emulator(50.0, false).await;
    let mut config = relay_config(&emulator, HubConfig::default());
    config.max_websocket_message_bytes = 64 * 1024;
    let relay = Relay::start(config).await.unwrap();
    let addr = relay.local_addr();
    let mut client = Client::connect(addr).await;
    client.until("status", is_type("status")).await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("not json".into()), "BAD_REQUEST"),
        (
            Message::Text("{\"action\":\"dance\"}".into()),
            "UNKNOWN_ACTION",
        ),
        (Message::Text("[1,2]".into()), "BAD_REQUEST"),
        (
            Message::Text("{\"action\":\"subscribe\",\"symbols\":\"x\"}".into()),
            "BAD_REQUEST",
        ),
        (Message::Binary(vec![0xff, 0, 1].into()), "BAD_REQUEST"),
        (
            Message::Text(
                format!("{{\"action\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(20_000)).into(),
            ),
            "MESSAGE_TOO_LARGE",
        ),
        (
            Message::Text("{\"action\":\"subscribe\",\"symbols\":[\"bad symbol\"]}".into()),
            "INVALID_SYMBOL",
        ),
    ];
    for (message, code) in cases {
        client.ws.send(message).await.unwrap();
        let error = client.until("an error", is_type("error")).await;
        assert_eq!(error["code"], code, "{error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|text| !text.is_empty())
        );
    }
    client.send(json!({"action": "ping"})).await;
    client.until("pong", is_type("pong")).await;

    // Beyond the WebSocket layer's limit the connection ends with 1009; others are unaffected.
    let mut bystander = Client::connect(addr).await;
    bystander.subscribe(&symbols(10..12)).await;
    client.send_text("x".repeat(100_000)).await;
    let (_, ended) = client.until_end().await;
    assert!(
        matches!(ended, Ended::Closed(Some(1009)) | Ended::Failed),
        "{ended:?}"
    );
    bystander.until("a quote", is_type("quote")).await;

    // Raw garbage instead of a WebSocket handshake.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut sink)).await;
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, 200);
    bystander.send(json!({"action": "ping"})).await;
    bystander.until("pong", is_type("pong")).await;
    relay.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_connections_and_the_whitelist_are_enforced_over_the_wire() {
    let emulator = emulator(50.0, false).await;
    let relay = Relay::start(relay_config(
        &emulator,
        HubConfig {
            max_connections: 2,
            max_subscriptions_per_connection: 3,
            whitelist: Some(symbols(10..20).into_iter().map(Into::into).collect()),
            ..HubConfig::default()
        },
    ))
    .await
    .unwrap();
    let addr = relay.local_addr();
    let mut first = Client::connect(addr).await;
    let mut second = Client::connect(addr).await;
    // Both hold their places in the hub (each has its status) before the third arrives;
    // otherwise the third may register before the second and take its place.
    first.until("status", is_type("status")).await;
    second.until("status", is_type("status")).await;
    let mut third = Client::connect(addr).await;
    let refusal = third.next().await.unwrap();
    assert_eq!(refusal["code"], "CONNECTION_LIMIT");
    assert_eq!(third.next().await, Err(Ended::Closed(Some(1013))));

    first
        .subscribe(&["EMU:S30".to_owned(), "EMU:S10".to_owned()])
        .await;
    let refused = first.until("an error", is_type("error")).await;
    assert_eq!(refused["code"], "SYMBOL_NOT_ALLOWED");
    assert_eq!(refused["symbol"], "EMU:S30");
    first.subscribe(&symbols(11..14)).await;
    let limit = first.until("an error", is_type("error")).await;
    assert_eq!(limit["code"], "SUBSCRIPTION_LIMIT");
    assert_eq!(limit["symbol"], "EMU:S13");
    // A client that says goodbye gets the closing handshake answered.
    first.ws.close(None).await.unwrap();
    assert!(
        matches!(first.next().await, Err(Ended::Closed(_))),
        "no close frame back"
    );
    eventually("the close is counted", async || {
        metric(
            addr,
            "tickwire_relay_disconnects_total{cause=\"client_closed\"}",
        )
        .await
            == 1.0
    })
    .await;
    relay.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_and_pinging_ones_stay() {
    let emulator = emulator(50.0, false).await;
    let relay = Relay::start(relay_config(
        &emulator,
        HubConfig {
            keepalive_timeout: Duration::from_millis(800),
            ..HubConfig::default()
        },
    ))
    .await
    .unwrap();
    let addr = relay.local_addr();
    let mut silent = Client::connect(addr).await;
    let mut pinging = Client::connect(addr).await;
    let started = Instant::now();
    let pinger = tokio::spawn(async move {
        while started.elapsed() < Duration::from_secs(2) {
            pinging.send(json!({"action": "ping"})).await;
            pinging.until("pong", is_type("pong")).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pinging
    });
    let (_, ended) = silent.until_end().await;
    assert_eq!(ended, Ended::Closed(Some(4002)));
    let mut pinging = pinger.await.unwrap();
    pinging.send(json!({"action": "ping"})).await;
    pinging.until("pong", is_type("pong")).await;
    relay.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_closes_clients_cleanly_and_they_reconnect_on_the_same_port() {
    let emulator = emulator(200.0, false).await;
    let relay = Relay::start(relay_config(&emulator, HubConfig::default()))
        .await
        .unwrap();
    let addr = relay.local_addr();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = Client::connect(addr).await;
        client.subscribe(&symbols(10..13)).await;
        client.until("a quote", is_type("quote")).await;
        clients.push(client);
    }
    relay.shutdown().await;
    for client in &mut clients {
        let (_, ended) = client.until_end().await;
        assert_eq!(ended, Ended::Closed(Some(u16::from(CloseCode::Away))));
    }
    // The port is free at once: a new relay takes it and the clients come back.
    let mut config = relay_config(&emulator, HubConfig::default());
    config.listen = addr;
    let relay = Relay::start(config).await.unwrap();
    let mut prices: BTreeMap<usize, usize> = BTreeMap::new();
    for (index, _) in clients.iter().enumerate() {
        let mut client = Client::connect(addr).await;
        client.subscribe(&symbols(10..13)).await;
        client.until("a snapshot", is_type("snapshot")).await;
        client.until("a quote", is_type("quote")).await;
        *prices.entry(index).or_default() += 1;
    }
    assert_eq!(prices.len(), 20);
    relay.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_an_unreachable_upstream_and_the_page_is_served() {
    let mut config = RelayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        page_symbols: vec!["A:B".into()],
        ..RelayConfig::default()
    };
    // Nothing listens on port 9 of loopback (discard is not run here).
    config.upstream.url = "ws://127.0.0.1:9/socket.io/websocket".into();
    let relay = Relay::start(config).await.unwrap();
    let addr = relay.local_addr();
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded");
    let (status, page) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"));
    assert_eq!(get(addr, "/symbols").await, (200, "[\"A:B\"]".to_owned()));
    assert_eq!(get(addr, "/nothing-here").await.0, 404);
    // Clients still connect and hear that the upstream is down.
    let mut client = Client::connect(addr).await;
    let status = client.until("status", is_type("status")).await;
    assert_ne!(status["upstream"], "live");
    relay.shutdown().await;
}

/// Reads until the server ends the connection; false if it is still open after `WAIT`.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 256];
    let ended = async {
        loop {
            match tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, ended).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_sockets_are_closed_and_cannot_crowd_out_clients() {
    let header_timeout = Duration::from_millis(500);
    let mut config = RelayConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_header_timeout: header_timeout,
        max_http_connections: 2,
        ..RelayConfig::default()
    };
    config.upstream.url = "ws://127.0.0.1:9/socket.io/websocket".into();
    let relay = Relay::start(config).await.unwrap();
    let addr = relay.local_addr();

    // Upgraded WebSockets leave the HTTP stage: more of them than its limit all work, and
    // stay open well past the header deadline.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(addr).await;
        client.until("status", is_type("status")).await;
        clients.push(client);
    }
    tokio::time::sleep(header_timeout * 3).await;
    for client in &mut clients {
        client.send(json!({"action": "ping"})).await;
        client.until("pong", is_type("pong")).await;
    }

    // Two sockets hold both HTTP slots: one silent, one trickling headers that never end.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut trickling = TcpStream::connect(addr).await.unwrap();
    trickling
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    // A real request waits for a slot, which the header deadline frees.
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() >= header_timeout / 2,
        "served while both slots were held: the HTTP connection limit did not hold"
    );
    assert!(
        closed_by_server(&mut silent).await,
        "silent socket kept open"
    );
    assert!(
        closed_by_server(&mut trickling).await,
        "trickling socket kept open"
    );
    assert_eq!(
        metric(addr, "tickwire_relay_http_header_timeouts_total").await,
        2.0
    );
    // Three WebSocket handshakes, two idle sockets, /healthz, and two /metrics requests.
    assert_eq!(
        metric(addr, "tickwire_relay_http_accepted_total").await,
        8.0
    );
    // Once the last request's task has ended, only the reading request is at the HTTP stage.
    eventually("one HTTP connection", async || {
        metric(addr, "tickwire_relay_http_connections ").await == 1.0
    })
    .await;
    relay.shutdown().await;
}

/// The relay's upstream falls back to polling while the upstream refuses upgrades: its
/// clients keep getting quotes (from the scanner), and the stream takes over again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_clients_get_polled_quotes_while_the_upstream_refuses_upgrades() {
    let emulator = emulator(200.0, false).await;
    emulator.refuse_upgrades(Some(503));
    let mut config = relay_config(&emulator, HubConfig::default());
    config.upstream.polling = Some(tickwire_core::client::PollingConfig {
        interval: Duration::from_millis(300),
        unavailable_after: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
    });
    config.upstream.backoff_initial = Duration::from_millis(100);
    config.upstream.backoff_max = Duration::from_millis(500);
    config.upstream.breaker_recovery = Duration::from_millis(500);
    config.upstream.breaker_recovery_max = Duration::from_secs(1);
    let http = tickwire_http::HttpClient::new(tickwire_http::HttpConfig {
        bases: tickwire_http::Bases::single(&emulator.http_base()),
        ..tickwire_http::HttpConfig::default()
    });
    config.upstream_options.poller = Some(std::sync::Arc::new(
        tickwire_http::feed::ScannerPoller::new(tickwire_http::scanner::Scanner::new(http)),
    ));
    let relay = Relay::start(config).await.unwrap();
    let mut client = Client::connect(relay.local_addr()).await;
    let wanted = symbols(10..12);
    client.subscribe(&wanted).await;
    let polled = client
        .until("a polled quote", |message| {
            is_type("quote")(message) && message["data"]["lp"].is_number()
        })
        .await;
    assert!(wanted.contains(&polled["symbol"].as_str().unwrap().to_owned()));
    assert_eq!(
        relay
            .feed()
            .expect("a relay alone has its feed")
            .status()
            .client
            .mode,
        tickwire_core::client::Mode::Polling
    );
    emulator.refuse_upgrades(None);
    let deadline = Instant::now() + WAIT;
    while relay
        .feed()
        .expect("a relay alone has its feed")
        .status()
        .client
        .mode
        != tickwire_core::client::Mode::Streaming
    {
        assert!(Instant::now() < deadline, "the stream never took over");
        client.until("quotes", |_| true).await;
    }
    client.until("a streamed quote", is_type("quote")).await;
    relay.shutdown().await;
    emulator.shutdown().await;
}

/// Every metric the shipped Grafana dashboard (relay/dashboards/relay.json) queries is one the
/// relay really exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_the_relay_exports() {
    let emulator = emulator(200.0, false).await;
    let relay = Relay::start(relay_config(&emulator, HubConfig::default()))
        .await
        .unwrap();
    let addr = relay.local_addr();
    let mut client = Client::connect(addr).await;
    client.subscribe(&symbols(10..11)).await;
    client.until("a quote", is_type("quote")).await;
    let (_, body) = get(addr, "/metrics").await;
    let exported: BTreeSet<String> = body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let dashboard: Value =
        serde_json::from_str(include_str!("../../relay/dashboards/relay.json")).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("tickwire_") || word.starts_with("process_") {
                    queried.insert(word.to_owned());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries {unknown:?}, not in /metrics"
    );
    relay.shutdown().await;
    emulator.shutdown().await;
}

/// The upstream plan over the wire: each subscribed symbol gets one bar series with its
/// history, an unknown symbol is refused with its name, and a series the server refuses
/// (the emulator refuses seconds bars, `seconds_not_entitled`) is reported while the
/// symbol's quotes continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bars_are_relayed_per_symbol_and_refused_series_and_symbols_are_reported() {
    let emulator = emulator(200.0, false).await;
    let mut config = relay_config(&emulator, HubConfig::default());
    config.upstream_plan = UpstreamPlan {
        bars: Some("1".to_owned()),
        bar_history: 5,
    };
    let relay = Relay::start(config).await.unwrap();
    let mut client = Client::connect(relay.local_addr()).await;
    client.subscribe(&symbols(10..11)).await;
    let bar = client.until("a bar", is_type("bar")).await;
    assert_eq!(bar["symbol"], "EMU:S10", "{bar}");
    client.subscribe(&["EMU:NOPE".to_owned()]).await;
    let refused = client
        .until("the unknown symbol refused", is_type("error"))
        .await;
    assert_eq!(refused["code"], "UNKNOWN_SYMBOL", "{refused}");
    assert_eq!(refused["symbol"], "EMU:NOPE", "{refused}");
    // The refused symbol's series is gone again: one series, for the one symbol carried.
    let addr = relay.local_addr();
    eventually("one bar series upstream", async || {
        metric(addr, "tickwire_relay_upstream_series").await == 1.0
    })
    .await;
    relay.shutdown().await;

    let mut config = relay_config(&emulator, HubConfig::default());
    config.upstream_plan = UpstreamPlan {
        bars: Some("1S".to_owned()),
        bar_history: 2,
    };
    let relay = Relay::start(config).await.unwrap();
    let mut client = Client::connect(relay.local_addr()).await;
    client.subscribe(&symbols(11..12)).await;
    let refused = client.until("the series refused", is_type("error")).await;
    assert_eq!(refused["code"], "BARS_UNAVAILABLE", "{refused}");
    assert_eq!(refused["symbol"], "EMU:S11", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|message| message.contains("seconds_not_entitled")),
        "{refused}"
    );
    let addr = relay.local_addr();
    assert_eq!(
        metric(
            addr,
            "tickwire_relay_upstream_refusals_total{kind=\"series\"}"
        )
        .await,
        1.0
    );
    assert_eq!(metric(addr, "tickwire_relay_upstream_series").await, 0.0);
    // Still subscribed: quotes keep coming, and no bar ever does.
    for _ in 0..5 {
        let quote = client
            .until("a quote after the refusal", |value| {
                assert_ne!(value["type"], "bar", "{value}");
                value["type"] == "quote"
            })
            .await;
        assert_eq!(quote["symbol"], "EMU:S11");
    }
    relay.shutdown().await;

    // A plan the upstream client cannot hold is refused before anything starts.
    let mut config = relay_config(&emulator, HubConfig::default());
    config.upstream.max_subscriptions = 10;
    let error = Relay::start(config).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        error.to_string().contains("max_upstream_symbols"),
        "{error}"
    );
    emulator.shutdown().await;
}

/// What a client saw of one symbol: when each data message arrived, and the state it left.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    kind: String,
    price: f64,
    /// The emulator's send time of the tick the state comes from: one per tick.
    stamp: u64,
}

/// Applies a data message to `view` (snapshots replace, quotes merge); the state it leaves.
fn seen(view: &mut serde_json::Map<String, Value>, message: &Value, at: Instant) -> Option<Seen> {
    match message["type"].as_str()? {
        "snapshot" => *view = message["quote"].as_object().cloned().unwrap_or_default(),
        "quote" => {
            for (key, value) in message["data"].as_object()? {
                view.insert(key.clone(), value.clone());
            }
        }
        _ => return None,
    }
    Some(Seen {
        at,
        kind: message["type"].as_str()?.to_owned(),
        price: view.get("lp")?.as_f64()?,
        stamp: view.get("emu_ns")?.as_str()?.parse().ok()?,
    })
}

/// A one-symbol market ticking 20 times a second: a client with `update_interval: 1` gets
/// about one update a second, each with the latest price the unpaced client had, while the
/// unpaced one gets every change; the per-symbol message counter matches what both read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_interval_paces_a_client_to_the_latest_value_while_another_gets_every_change() {
    const RATE: f64 = 20.0;
    const WINDOW: Duration = Duration::from_millis(4500);
    let emulator = Emulator::start(EmulatorConfig {
        rate_hz: RATE,
        // One symbol, so the whole rate is on it: the market's first, BINANCE:BTCUSDT.
        symbols: 1,
        heartbeat_interval: Duration::from_millis(500),
        stamp_quotes: true,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let relay = Relay::start(relay_config(&emulator, HubConfig::default()))
        .await
        .unwrap();
    let addr = relay.local_addr();
    let symbol = "BINANCE:BTCUSDT";
    let is_data = |message: &Value| {
        message["symbol"] == symbol
            && ["snapshot", "quote", "bar"].contains(&message["type"].as_str().unwrap_or(""))
    };

    let mut every = Client::connect(addr).await;
    every.subscribe(&[symbol.to_owned()]).await;
    let mut every_data = 0usize;
    let mut every_view = serde_json::Map::new();
    // Live data first, so the paced client's snapshot has a price.
    loop {
        let message = every.until("a quote", is_data).await;
        every_data += 1;
        if seen(&mut every_view, &message, Instant::now()).is_some() {
            break;
        }
    }
    let mut paced = Client::connect(addr).await;
    paced
        .send(json!({"action": "subscribe", "symbols": [symbol], "update_interval": 1}))
        .await;
    let answer = paced.until("the snapshot", is_type("snapshot")).await;
    let answered = Instant::now();
    assert_eq!(answer["update_interval"], 1, "{answer}");
    let mut paced_view = serde_json::Map::new();
    let first = seen(&mut paced_view, &answer, answered).expect("a price in the snapshot");
    let mut paced_seen = vec![first];
    let mut paced_data = 1usize;
    let mut every_seen: Vec<Seen> = Vec::new();

    // Both read at once until the window ends; `biased` records the unpaced client's messages
    // first when both are ready.
    let end = tokio::time::Instant::now() + WINDOW;
    loop {
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(end) => break,
            message = every.next() => {
                let message = message.expect("the unpaced client stays connected");
                if is_data(&message) {
                    every_data += 1;
                    every_seen.extend(seen(&mut every_view, &message, Instant::now()));
                }
            }
            message = paced.next() => {
                let message = message.expect("the paced client stays connected");
                if is_data(&message) {
                    paced_data += 1;
                    paced_seen.extend(seen(&mut paced_view, &message, Instant::now()));
                }
            }
        }
    }
    let seconds = WINDOW.as_secs_f64();
    let updates = &paced_seen[1..];
    let gaps: Vec<Duration> = paced_seen
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .collect();
    let every_rate = every_seen.len() as f64 / seconds;
    eprintln!(
        "update_interval 1 s: {} updates in {seconds} s ({:.2}/s; {:?}), gaps {gaps:?}; \
         without interval: {} updates ({every_rate:.1}/s)",
        updates.len(),
        updates.len() as f64 / seconds,
        updates
            .iter()
            .map(|seen| seen.kind.as_str())
            .collect::<Vec<_>>(),
        every_seen.len(),
    );
    // At most one per second after the snapshot, and about that many.
    assert!(
        (3..=5).contains(&updates.len()),
        "{} paced updates in {seconds} s",
        updates.len()
    );
    assert!(
        gaps.iter().all(|gap| *gap >= Duration::from_millis(900)),
        "paced updates closer than the interval: {gaps:?}"
    );
    // The unpaced client got every change: about 20 a second.
    assert!(
        (RATE * 0.6..=RATE * 1.5).contains(&every_rate),
        "{every_rate:.1} updates/s without interval"
    );
    // Each paced update carries the latest state: the one the unpaced client had last when it
    // arrived. The two sockets race, so the unpaced client may already hold the next tick if it
    // arrived just before (within 25 ms); never an older one, and never more than one tick.
    let mut races = 0;
    for update in updates {
        let before: Vec<&Seen> = every_seen
            .iter()
            .filter(|seen| seen.at <= update.at)
            .collect();
        let Some(latest) = before.last() else {
            panic!(
                "no unpaced update before the paced one at {:?}",
                update.at - answered
            );
        };
        if update.stamp == latest.stamp {
            assert_eq!(update.price, latest.price, "same tick, same price");
            continue;
        }
        if update.stamp > latest.stamp {
            // Newer than what the unpaced client had read: its copy must follow.
            let copy = every_seen.iter().find(|seen| seen.stamp == update.stamp);
            assert!(
                copy.is_some_and(|copy| copy.price == update.price),
                "the paced update's tick never reached the unpaced client: {update:?}"
            );
            races += 1;
            continue;
        }
        let previous = before.iter().rev().nth(1);
        assert!(
            previous.is_some_and(
                |previous| previous.stamp == update.stamp && previous.price == update.price
            ) && update.at - latest.at < Duration::from_millis(25),
            "stale paced update {update:?}: the unpaced client had {latest:?} by then"
        );
        races += 1;
    }
    eprintln!(
        "latest-value check: {races} of {} decided by the sockets' race",
        updates.len()
    );

    // Per-symbol counter: once both have unsubscribed (and read everything sent before), the
    // relay handed out exactly the data messages they read.
    for (client, count) in [(&mut every, &mut every_data), (&mut paced, &mut paced_data)] {
        client
            .send(json!({"action": "unsubscribe", "symbols": [symbol]}))
            .await;
        loop {
            let message = client.next().await.expect("connected");
            if message["type"] == "unsubscribed" {
                break;
            }
            if is_data(&message) {
                *count += 1;
            }
        }
    }
    let name = format!("tickwire_relay_symbol_messages_sent_total{{symbol=\"{symbol}\"}}");
    assert_eq!(
        metric(addr, &name).await,
        (every_data + paced_data) as f64,
        "{name}"
    );
    relay.shutdown().await;
    emulator.shutdown().await;
}

//! The emulator's tokio server: TCP accept, WebSocket upgrade, one task per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep, sleep_until};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, accept_hdr_async};

use crate::fault::{Fault, FaultAction};
use crate::market::{Market, Tick};
use crate::session::{self, Session};
use tickwire_core::codec::{Decoder, Packet, encode_into};

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// How many symbols the market has.
    pub symbols: usize,
    /// Market ticks per second, over all symbols.
    pub rate_hz: f64,
    /// Seed of the market.
    pub seed: u64,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Close a connection whose heartbeats went unanswered this many intervals in a row.
    pub missed_heartbeats_allowed: u32,
    /// Send every packet due at once in one WebSocket message (as the real server does), or one
    /// packet per message.
    pub batch: bool,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Add the send time to every quote delta as `emu_ns` (for latency benchmarks).
    pub stamp_quotes: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            symbols: 50,
            rate_hz: 50.0,
            seed: 1,
            heartbeat_interval: Duration::from_secs(10),
            missed_heartbeats_allowed: 6,
            batch: true,
            faults: Vec::new(),
            stamp_quotes: false,
        }
    }
}

/// Counters of what the emulator did.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections accepted (refused ones included).
    pub accepted: AtomicU64,
    /// WebSocket sessions established.
    pub sessions: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// `qsd` packets handed to the socket (snapshots, deltas and errors).
    pub quotes_sent: AtomicU64,
    /// WebSocket messages sent.
    pub messages_sent: AtomicU64,
    /// Faults carried out.
    pub faults: AtomicU64,
}

struct Shared {
    market: Mutex<Market>,
    config: EmulatorConfig,
    faults: Mutex<Vec<Fault>>,
    stats: Arc<Stats>,
    ticks: broadcast::Sender<Arc<Vec<Tick>>>,
    control: broadcast::Sender<FaultAction>,
    shutdown: watch::Receiver<bool>,
    paused: Arc<AtomicBool>,
}

/// A running emulator. Dropping it stops accepting; [`Emulator::shutdown`] also closes every
/// connection with a close frame and waits for the tasks.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    control: broadcast::Sender<FaultAction>,
    faults: Arc<Mutex<Vec<Fault>>>,
    paused: Arc<AtomicBool>,
    accept_task: JoinHandle<()>,
    market_task: JoinHandle<()>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

impl Emulator {
    /// Binds and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// When the listen address cannot be bound.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let (ticks, _) = broadcast::channel(1_024);
        let (control, _) = broadcast::channel(64);
        let faults = Arc::new(Mutex::new(Vec::new()));
        let paused = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            market: Mutex::new(Market::new(config.symbols, config.seed)),
            config: config.clone(),
            faults: Mutex::new(config.faults.clone()),
            stats: Arc::clone(&stats),
            ticks: ticks.clone(),
            control: control.clone(),
            shutdown: shutdown_receiver,
            paused: Arc::clone(&paused),
        });
        let market_task = tokio::spawn(run_market(Arc::clone(&shared)));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            Arc::clone(&faults),
        ));
        Ok(Emulator {
            addr,
            stats,
            shutdown,
            control,
            faults,
            paused,
            accept_task,
            market_task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A WebSocket URL for clients (any path and query are accepted).
    pub fn url(&self) -> String {
        format!("ws://{}/socket.io/websocket?type=chart", self.addr)
    }

    /// Live counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Schedules one more fault for connections accepted from now on.
    pub fn add_fault(&self, fault: Fault) {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    /// Stops (or restarts) market ticks; heartbeats and replies go on.
    pub fn pause_market(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Carries out `action` on every open connection right now.
    pub fn inject(&self, action: FaultAction) {
        let _ = self.control.send(action);
    }

    /// Closes every connection with a close frame and stops.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_task.await;
        self.market_task.abort();
        let _ = self.market_task.await;
        // Connection tasks see the shutdown flag and close; give them a moment to flush.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.stats.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn run_market(shared: Arc<Shared>) {
    // Short enough that batching adds little latency, long enough to batch at high rates.
    let period = Duration::from_millis(1);
    let mut ticker = interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut owed = 0.0f64;
    let mut last = Instant::now();
    loop {
        ticker.tick().await;
        // Ticks owed for the time that really passed, so a late timer does not lower the rate.
        let now = Instant::now();
        owed += shared.config.rate_hz * now.duration_since(last).as_secs_f64();
        last = now;
        // A stalled market does not burst its whole backlog at once.
        owed = owed.min(shared.config.rate_hz.max(1.0));
        let due = owed.floor();
        owed -= due;
        if due < 1.0 || shared.ticks.receiver_count() == 0 || shared.paused.load(Ordering::Relaxed)
        {
            continue;
        }
        let now = unix_now();
        let batch: Vec<Tick> = {
            let mut market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
            (0..due as usize).filter_map(|_| market.tick(now)).collect()
        };
        let _ = shared.ticks.send(Arc::new(batch));
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    runtime_faults: Arc<Mutex<Vec<Fault>>>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let number = shared.stats.accepted.fetch_add(1, Ordering::Relaxed) + 1;
                let faults: Vec<Fault> = runtime_faults
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .chain(shared.faults.lock().unwrap_or_else(PoisonError::into_inner).iter())
                    .filter(|fault| fault.applies_to(number))
                    .copied()
                    .collect();
                tokio::spawn(serve(tcp, number, faults, Arc::clone(&shared)));
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Resets the TCP connection instead of closing it.
fn reset(tcp: &TcpStream) {
    #[allow(deprecated)] // SO_LINGER 0 is exactly the reset we want
    let _ = tcp.set_linger(Some(Duration::ZERO));
}

async fn serve(tcp: TcpStream, number: u64, faults: Vec<Fault>, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let mut reject_upgrade = false;
    for fault in faults.iter().filter(|fault| fault.action.at_accept()) {
        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
        match fault.action {
            FaultAction::Refuse => {
                reset(&tcp);
                return;
            }
            FaultAction::Delay(pause) => sleep(pause).await,
            FaultAction::Http429 => reject_upgrade = true,
            _ => {}
        }
    }
    // The error type is tungstenite's own; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let callback = move |_: &Request, response: Response| {
        if reject_upgrade {
            let mut refusal = ErrorResponse::new(Some("Too Many Requests".to_owned()));
            *refusal.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            return Err(refusal);
        }
        Ok(response)
    };
    let Ok(ws) = accept_hdr_async(tcp, callback).await else {
        return;
    };
    shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
    shared.stats.open.fetch_add(1, Ordering::Relaxed);
    let mut connection = Connection::new(ws, number, faults, &shared);
    connection.run(&shared).await;
    shared.stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// How a connection ends.
enum Ending {
    CloseFrame,
    Reset,
    ResetMidMessage,
    Gone,
}

struct Connection {
    ws: WebSocketStream<TcpStream>,
    number: u64,
    session: Session,
    decoder: Decoder,
    opened: Instant,
    pending_faults: Vec<Fault>,
    slow: Option<Duration>,
    stalled_until: Option<Instant>,
    heartbeats_only_until: Option<Instant>,
    heartbeat_counter: u64,
    unanswered_heartbeats: u32,
    outbox: Vec<String>,
}

impl Connection {
    fn new(
        ws: WebSocketStream<TcpStream>,
        number: u64,
        faults: Vec<Fault>,
        shared: &Shared,
    ) -> Connection {
        let mut pending_faults: Vec<Fault> = faults
            .into_iter()
            .filter(|fault| !fault.action.at_accept())
            .collect();
        pending_faults.sort_by_key(|fault| std::cmp::Reverse(fault.at));
        let _ = shared;
        Connection {
            ws,
            number,
            session: Session::new(),
            decoder: Decoder::new(),
            opened: Instant::now(),
            pending_faults,
            slow: None,
            stalled_until: None,
            heartbeats_only_until: None,
            heartbeat_counter: 0,
            unanswered_heartbeats: 0,
            outbox: Vec::new(),
        }
    }

    async fn run(&mut self, shared: &Shared) {
        let mut ticks = shared.ticks.subscribe();
        let mut control = shared.control.subscribe();
        let mut shutdown = shared.shutdown.clone();
        let mut heartbeat = interval(shared.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await;
        self.outbox.push(session::hello(unix_now(), self.number));
        let ending = loop {
            if let Some(ending) = self.flush(shared).await {
                break ending;
            }
            let next_fault = self
                .pending_faults
                .last()
                .map(|fault| self.opened + fault.at);
            let fault_timer = async {
                match next_fault {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                incoming = self.ws.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(ending) = self.on_client_text(Bytes::from(text), shared) {
                            let _ = self.flush(shared).await;
                            break ending;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Ending::Gone,
                    Some(Ok(_)) => {}
                },
                batch = ticks.recv() => match batch {
                    Ok(batch) => self.on_ticks(&batch, shared),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break Ending::CloseFrame,
                },
                _ = heartbeat.tick() => {
                    if self.unanswered_heartbeats >= shared.config.missed_heartbeats_allowed {
                        break Ending::CloseFrame;
                    }
                    self.heartbeat_counter += 1;
                    self.unanswered_heartbeats += 1;
                    self.outbox.push(format!("~h~{}", self.heartbeat_counter));
                }
                () = fault_timer => {
                    if let Some(fault) = self.pending_faults.pop() {
                        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
                        if let Some(ending) = self.apply(fault.action) {
                            break ending;
                        }
                    }
                }
                action = control.recv() => {
                    if let Ok(action) = action {
                        shared.stats.faults.fetch_add(1, Ordering::Relaxed);
                        if let Some(ending) = self.apply(action) {
                            break ending;
                        }
                    }
                }
                _ = shutdown.changed() => break Ending::CloseFrame,
            }
        };
        self.end(ending).await;
    }

    fn on_client_text(&mut self, text: Bytes, shared: &Shared) -> Option<Ending> {
        let now = unix_now();
        let market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
        for packet in self.decoder.decode(&text) {
            match packet {
                Ok(Packet::Heartbeat(_)) => self.unanswered_heartbeats = 0,
                Ok(Packet::Json(payload) | Packet::LegacyJson(payload)) => {
                    let payload = String::from_utf8_lossy(&payload);
                    if self
                        .session
                        .handle(&payload, &market, now, &mut self.outbox)
                        .is_err()
                    {
                        return Some(Ending::CloseFrame);
                    }
                }
                Err(_) => self
                    .outbox
                    .push(r#"{"m":"protocol_error","p":["wrong data"]}"#.to_owned()),
            }
        }
        None
    }

    fn on_ticks(&mut self, batch: &[Tick], shared: &Shared) {
        if !self.session.has_sessions() {
            return;
        }
        let market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
        for tick in batch {
            self.session
                .on_tick(tick, &market, shared.config.stamp_quotes, &mut self.outbox);
        }
    }

    /// Carries out a fault; `Some` when it ends the connection.
    fn apply(&mut self, action: FaultAction) -> Option<Ending> {
        let now = Instant::now();
        match action {
            FaultAction::Drop | FaultAction::Refuse => return Some(Ending::Reset),
            FaultAction::Close => return Some(Ending::CloseFrame),
            FaultAction::DropMidMessage => return Some(Ending::ResetMidMessage),
            FaultAction::Stall(length) => self.stalled_until = Some(now + length),
            FaultAction::HeartbeatsOnly(length) => self.heartbeats_only_until = Some(now + length),
            FaultAction::Garbage => self.outbox.push("\u{0}garbage~m~~m~".to_owned()),
            FaultAction::BadLength => self.outbox.push(String::new()),
            FaultAction::ProtocolError => {
                self.outbox
                    .push(r#"{"m":"protocol_error","p":["wrong data"]}"#.to_owned());
            }
            FaultAction::Slow(pause) => self.slow = Some(pause),
            FaultAction::Delay(_) | FaultAction::Http429 => {}
        }
        None
    }

    /// Sends what is due, honouring stalls, heartbeat-only stretches and slow writes.
    async fn flush(&mut self, shared: &Shared) -> Option<Ending> {
        if self.outbox.is_empty() {
            return None;
        }
        let now = Instant::now();
        if self.stalled_until.is_some_and(|until| now < until) {
            self.outbox.clear();
            return None;
        }
        if self.heartbeats_only_until.is_some_and(|until| now < until) {
            self.outbox.retain(|payload| payload.starts_with("~h~"));
        }
        let quotes = self
            .outbox
            .iter()
            .filter(|payload| payload.starts_with(r#"{"m":"qsd""#))
            .count();
        shared
            .stats
            .quotes_sent
            .fetch_add(quotes as u64, Ordering::Relaxed);
        let mut messages = Vec::new();
        let mut current = String::new();
        let stamp = shared.config.stamp_quotes.then(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            format!("{nanos:019}")
        });
        for mut payload in self.outbox.drain(..) {
            if let Some(stamp) = &stamp {
                payload = payload.replacen(session::STAMP_PLACEHOLDER, stamp, 1);
            }
            if payload.starts_with('\u{0}') {
                // Garbage goes out as its own message, unframed.
                messages.push(payload);
                continue;
            }
            if payload.is_empty() {
                // A packet whose prefix claims more than it holds.
                messages.push(r#"~m~999~m~{"m":"qsd"}"#.to_owned());
                continue;
            }
            encode_into(&payload, &mut current);
            if !shared.config.batch {
                messages.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            messages.push(current);
        }
        for text in messages {
            if let Some(pause) = self.slow {
                sleep(pause).await;
            }
            if self
                .ws
                .feed(Message::Text(Utf8Bytes::from(text)))
                .await
                .is_err()
            {
                return Some(Ending::Gone);
            }
            shared.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        }
        if self.ws.flush().await.is_err() {
            return Some(Ending::Gone);
        }
        None
    }

    async fn end(&mut self, ending: Ending) {
        match ending {
            Ending::CloseFrame => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: Utf8Bytes::from_static("bye"),
                };
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
            }
            Ending::Reset => reset(self.ws.get_ref()),
            Ending::ResetMidMessage => {
                // A text frame header announcing 100 bytes, then only 10 of them.
                let mut partial = vec![0x81, 100];
                partial.extend_from_slice(b"~m~95~m~{\"");
                let _ = self.ws.get_mut().write_all(&partial).await;
                let _ = self.ws.get_mut().flush().await;
                reset(self.ws.get_ref());
            }
            Ending::Gone => {}
        }
    }
}

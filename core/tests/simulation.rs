//! Deterministic simulation: the `Client` against a simulated server and network with faults
//! drawn from a seeded generator, checking the client's invariants after every step.
//!
//! `TICKWIRE_SIM_SEEDS` (default 8) seeds of `TICKWIRE_SIM_STEPS` (default 100 000) steps each;
//! `TICKWIRE_SIM_SEED=N` replays one seed. A failure prints its seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tickwire_core::client::{
    AuthToken, Client, Config, ConnectionId, DisconnectCause, Event, Input, Mode, Output,
    PollError, PollErrorKind, PolledQuote, PollingConfig, Source, State, TransportError,
    TransportErrorKind,
};
use tickwire_core::codec::{Decoder, Packet, frame};

const UNIVERSE: &[&str] = &[
    "NASDAQ:AAPL",
    "NASDAQ:MSFT",
    "NYSE:IBM",
    "BINANCE:BTCUSDT",
    "BINANCE:ETHUSDT",
    "FX:EURUSD",
    "FX:GBPUSD",
    "TVC:GOLD",
    "AMEX:SPY",
    "BAD:NOPE",
    "BAD:GONE",
];

/// How the network answers the connection attempt in flight.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Accept(Instant),
    Refuse(Instant),
    /// Never answers: the client's connect timeout must fire.
    Hang,
}

#[derive(Debug, Default)]
struct ServerConn {
    open: bool,
    quote_session: Option<String>,
    chart_session: Option<String>,
    symbols: BTreeSet<String>,
    /// Symbols the server will reject in its next data message.
    rejections: Vec<String>,
    series: BTreeMap<String, f64>,
    idle_heartbeats: u32,
    heartbeats: u32,
    heartbeat_counter: u64,
    unechoed: VecDeque<String>,
    stalled_until: Option<Instant>,
    heartbeat_only_until: Option<Instant>,
}

struct Sim {
    seed: u64,
    rng: fastrand::Rng,
    config: Config,
    client: Client,
    start: Instant,
    now: Instant,
    /// The one connection the network knows: in flight or open.
    connection: Option<(ConnectionId, Pending)>,
    server: ServerConn,
    decoder: Decoder,
    next_price: u64,
    expected_quotes: VecDeque<(String, f64)>,
    command_times: VecDeque<Instant>,
    closed_series_times: BTreeMap<u64, f64>,
    pending_token: bool,
    /// The poll in flight: its round and when it was asked.
    poll_round: Option<(u64, Instant)>,
    /// The next attempt the client last reported, and the time of the step before this one.
    reported_attempt: Option<Instant>,
    previous_now: Instant,
    closed: bool,
    step: u64,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    connects: u64,
    quotes: u64,
    zombie: u64,
    polls: u64,
}

macro_rules! check {
    ($sim:expr, $condition:expr, $($message:tt)+) => {
        if !$condition {
            panic!("seed {} step {}: {}", $sim.seed, $sim.step, format!($($message)+));
        }
    };
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let polling = rng.bool().then_some(PollingConfig {
            interval: Duration::from_secs(3),
            unavailable_after: Duration::from_secs(rng.u64(5..40)),
            timeout: Duration::from_secs(rng.u64(5..60)),
        });
        let config = Config {
            seed: Some(seed),
            burst: rng.u32(5..20),
            rate_limit_per_minute: rng.u32(30..240),
            max_queued_commands: 10_000,
            max_attempts: rng.u32(2..5),
            breaker_recovery: Duration::from_secs(rng.u64(5..60)),
            polling,
            ..Config::default()
        };
        let start = Instant::now();
        let client = Client::new(config.clone(), start);
        Sim {
            seed,
            rng,
            config,
            client,
            start,
            now: start,
            connection: None,
            server: ServerConn::default(),
            decoder: Decoder::new(),
            next_price: 1,
            expected_quotes: VecDeque::new(),
            command_times: VecDeque::new(),
            closed_series_times: BTreeMap::new(),
            pending_token: false,
            poll_round: None,
            reported_attempt: None,
            previous_now: start,
            closed: false,
            step: 0,
            stats: Stats::default(),
        }
    }

    fn run(&mut self, steps: u64) {
        for step in 0..steps {
            self.step = step;
            if step == steps.saturating_sub(500) {
                self.client.close();
                self.drain();
                self.closed = true;
            }
            self.act();
            self.drain();
            self.check_invariants();
        }
        check!(
            self,
            self.stats.connects > 10 && self.stats.quotes > 100,
            "too little happened: {:?}",
            self.stats
        );
    }

    // ----- the world acts ------------------------------------------------------------------

    fn act(&mut self) {
        self.previous_now = self.now;
        self.now += Duration::from_millis(self.rng.u64(0..1_500));
        if let Some(due) = self.client.poll_timeout() {
            if due <= self.now {
                self.client.handle_timeout(self.now);
                self.drain();
            }
        }
        if self.pending_token && self.rng.u8(0..4) == 0 {
            self.pending_token = false;
            self.client.handle_input(
                self.now,
                Input::AuthToken(Some(match self.rng.u8(0..3) {
                    0 => AuthToken::new(format!("token-{}", self.step)),
                    _ => AuthToken::new(format!("token-{}", self.step))
                        .valid_for(Duration::from_secs(self.rng.u64(1..7_200))),
                })),
            );
            self.drain();
        }
        // The poller answers most polls at once, fails some, and leaves a few unanswered (the
        // client's poll timeout then fails them).
        let answer = self.rng.u8(0..10);
        if let Some((round, _)) = self.poll_round.filter(|_| answer < 9) {
            self.poll_round = None;
            let result = match answer {
                0 => Err(PollError::new(PollErrorKind::Status(503), "HTTP 503")),
                1 => Err(PollError::new(
                    PollErrorKind::RateLimited {
                        retry_after: Some(Duration::from_secs(self.rng.u64(0..120))),
                    },
                    "HTTP 429",
                )),
                _ => Ok(self
                    .client
                    .quote_symbols()
                    .iter()
                    .filter(|_| self.rng.u8(0..10) > 0)
                    .map(|symbol| PolledQuote {
                        symbol: symbol.to_string(),
                        last_price: Some(-1.0),
                        ..PolledQuote::default()
                    })
                    .collect()),
            };
            self.client
                .handle_input(self.now, Input::PollResult { round, result });
            self.drain();
        }
        match self.connection {
            Some((id, Pending::Accept(at))) if self.now >= at && !self.server.open => {
                self.server.open = true;
                self.client.handle_input(self.now, Input::Connected(id));
                self.drain();
                if self.connection.is_some() {
                    self.send_message(&[frame(r#"{"session_id":"sim","protocol":"json"}"#)]);
                }
            }
            Some((id, Pending::Refuse(at))) if self.now >= at => {
                self.connection = None;
                self.client.handle_input(
                    self.now,
                    Input::ConnectFailed {
                        id,
                        error: TransportError::new(TransportErrorKind::Refused, "refused"),
                    },
                );
            }
            _ => {}
        }
        if self.server.open {
            self.server_acts();
        }
        match self.rng.u16(0..200) {
            0..=3 => {
                let symbol = UNIVERSE[self.rng.usize(0..UNIVERSE.len())];
                self.client.subscribe_quotes(self.now, [symbol]);
            }
            4..=5 => {
                let symbol = UNIVERSE[self.rng.usize(0..UNIVERSE.len())];
                self.client.unsubscribe_quotes(self.now, [symbol]);
            }
            6 if self.client.bar_subscriptions().len() < 3 => {
                let _ = self
                    .client
                    .subscribe_bars(self.now, "BINANCE:BTCUSDT", "1", 5);
            }
            7 => {
                if let Some((series, _, _)) = self.client.bar_subscriptions().first() {
                    self.client.unsubscribe_bars(self.now, *series);
                    self.closed_series_times.remove(&series.0);
                }
            }
            8 => {
                let _ = self
                    .client
                    .request_history(self.now, "NASDAQ:AAPL", "1D", 3);
            }
            _ => {}
        }
    }

    fn server_acts(&mut self) {
        let Some((id, _)) = self.connection else {
            return;
        };
        if self
            .server
            .stalled_until
            .is_some_and(|until| self.now < until)
        {
            return;
        }
        match self.rng.u16(0..1_000) {
            0..=4 => {
                // Drop: reset, no close frame.
                self.connection = None;
                self.server = ServerConn::default();
                self.client.handle_input(
                    self.now,
                    Input::Disconnected {
                        id,
                        error: TransportError::new(TransportErrorKind::Reset, "reset"),
                    },
                );
            }
            5..=7 => {
                self.server.stalled_until =
                    Some(self.now + Duration::from_secs(self.rng.u64(5..40)))
            }
            8..=10 => {
                self.server.heartbeat_only_until =
                    Some(self.now + Duration::from_secs(self.rng.u64(5..60)))
            }
            11..=12 => self.send_message(&["~m~5~m~garbage~m~x~m~".to_owned()]),
            13 => {
                // A protocol error always travels alone: it ends the connection.
                self.send_message(&[frame(r#"{"m":"protocol_error","p":["wrong data"]}"#)]);
            }
            14 => self.send_message(&[frame(r#"{"m":"protocol_error","p":["bad auth token"]}"#)]),
            15..=500 => {
                let heartbeat_only = self
                    .server
                    .heartbeat_only_until
                    .is_some_and(|until| self.now < until);
                let packets = if heartbeat_only {
                    vec![self.heartbeat()]
                } else {
                    self.data_batch()
                };
                self.send_message(&packets);
            }
            _ => {}
        }
    }

    fn heartbeat(&mut self) -> String {
        self.server.heartbeat_counter += 1;
        frame(&format!("~h~{}", self.server.heartbeat_counter))
    }

    fn data_batch(&mut self) -> Vec<String> {
        let mut packets = Vec::new();
        let Some(session) = self.server.quote_session.clone() else {
            return vec![self.heartbeat()];
        };
        for symbol in std::mem::take(&mut self.server.rejections) {
            packets.push(frame(&format!(
                r#"{{"m":"qsd","p":["{session}",{{"n":"{symbol}","s":"error","errmsg":"no_such_symbol","v":{{}}}}]}}"#
            )));
        }
        let symbols: Vec<String> = self.server.symbols.iter().cloned().collect();
        for _ in 0..self.rng.usize(1..6) {
            if self.rng.u8(0..6) == 0 {
                packets.push(self.heartbeat());
            }
            if symbols.is_empty() {
                continue;
            }
            let symbol = &symbols[self.rng.usize(0..symbols.len())];
            let price = self.next_price as f64 / 4.0;
            self.next_price += 1;
            let payload = format!(
                r#"{{"m":"qsd","p":["{session}",{{"n":"{symbol}","s":"ok","v":{{"lp":{price},"volume":7}}}}]}}"#
            );
            packets.push(frame(&payload));
            if self.rng.u8(0..20) == 0 {
                packets.push(frame(&payload)); // a duplicated packet is a packet too
            }
        }
        if let (Some(chart), false) = (
            self.server.chart_session.clone(),
            self.server.series.is_empty(),
        ) {
            let series: Vec<(String, f64)> = self
                .server
                .series
                .iter()
                .map(|(id, time)| (id.clone(), *time))
                .collect();
            let (series_id, time) = &series[self.rng.usize(0..series.len())];
            let time = time + if self.rng.bool() { 60.0 } else { 0.0 };
            self.server.series.insert(series_id.clone(), time);
            packets.push(frame(&format!(
                r#"{{"m":"du","p":["{chart}",{{"{series_id}":{{"s":[{{"i":1,"v":[{time:.1},1,2,0.5,1.5,3]}}],"t":"s1"}}}}]}}"#
            )));
        }
        if packets.is_empty() {
            packets.push(self.heartbeat());
        }
        packets
    }

    /// Sends one WebSocket message of framed packets, and records what the client must do with it.
    fn send_message(&mut self, packets: &[String]) {
        let Some((id, _)) = self.connection else {
            return;
        };
        let before = self.client.status(self.now);
        let subscribed =
            !self.client.quote_symbols().is_empty() || !self.client.bar_subscriptions().is_empty();
        let mut proven = before.session_proven;
        let mut zombie_expected = false;
        let mut dead_expected = false;
        let mut fatal = false;
        for packet in packets {
            if fatal || zombie_expected || dead_expected {
                break;
            }
            if packet.contains("~h~") {
                let payload = packet
                    .splitn(3, "~m~")
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned();
                self.server.unechoed.push_back(payload);
                self.server.idle_heartbeats += 1;
                self.server.heartbeats += 1;
                let limit = self.config.idle_heartbeats;
                // The client's rules (see `liveness`): an unproven session is dead after `limit`
                // heartbeats since its last command (none queued); a proven one is a zombie after `limit` idle ones, unless its quiet
                // wait has grown (which takes hours of silence, never reached here).
                dead_expected = subscribed
                    && !proven
                    && before.counters.commands_queued == 0
                    && self.server.heartbeats >= limit;
                zombie_expected = subscribed
                    && proven
                    && before.market.next_verdict_after.is_zero()
                    && self.server.idle_heartbeats >= limit;
                continue;
            }
            self.server.idle_heartbeats = 0;
            // Every qsd and du the simulated server sends answers one of the client's sessions.
            proven |= packet.contains("\"m\":\"qsd\"") || packet.contains("\"m\":\"du\"");
            fatal = packet.contains("protocol_error");
            if let Some(rest) = packet.split("\"n\":\"").nth(1) {
                let symbol = rest.split('"').next().unwrap_or_default().to_owned();
                let desired = self.client.quote(&symbol).is_some();
                if let (true, Some(price)) = (desired, packet.split("\"lp\":").nth(1)) {
                    let price: f64 = price
                        .split(',')
                        .next()
                        .and_then(|text| text.parse().ok())
                        .expect("price");
                    self.expected_quotes.push_back((symbol, price));
                }
            }
        }
        let text: String = packets.concat();
        self.client.handle_input(
            self.now,
            Input::Message {
                id,
                text: Bytes::from(text),
            },
        );
        let outputs = self.drain();
        let closed_for = |cause: DisconnectCause| {
            outputs
                .iter()
                .any(|output| matches!(output, Output::Close { cause: c, .. } if *c == cause))
        };
        let zombie_closed = closed_for(DisconnectCause::Zombie);
        let dead_closed = closed_for(DisconnectCause::DeadSession);
        check!(
            self,
            dead_closed == (dead_expected && !self.closed),
            "dead session closed: {dead_closed}, expected: {dead_expected}"
        );
        if zombie_expected {
            self.stats.zombie += 1;
            let limit = self.config.idle_heartbeats;
            // A proven session with nothing to wait for is judged at once; an unproven one is a
            // dead session, and a quiet one waits longer (checked by the scenarios below).
            check!(
                self,
                zombie_closed || self.closed,
                "no zombie close on idle heartbeat {limit}"
            );
        } else {
            let limit = self.config.idle_heartbeats;
            check!(
                self,
                !zombie_closed,
                "zombie close before {limit} idle heartbeats"
            );
        }
    }

    // ----- the client acts -----------------------------------------------------------------

    fn drain(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        while let Some(output) = self.client.poll_output() {
            // After close, only the answer to a new history request (Closed) may come out.
            let closed_answer = matches!(
                &output,
                Output::Event(Event::History(history)) if history.result == Err(tickwire_core::client::HistoryError::Closed)
            );
            check!(
                self,
                !self.closed || closed_answer,
                "output after close: {output:?}"
            );
            self.handle_output(&output);
            outputs.push(output);
        }
        outputs
    }

    fn handle_output(&mut self, output: &Output) {
        match output {
            Output::Connect(request) => {
                check!(
                    self,
                    self.connection.is_none(),
                    "a second connection while {:?} exists",
                    self.connection
                );
                // A delay the status reports is the delay that happens: the attempt comes at the
                // first step at or after the reported time, never before it.
                if let Some(reported) = self.reported_attempt {
                    check!(
                        self,
                        reported <= self.now
                            && (reported > self.previous_now || reported == self.now),
                        "attempt at {:?}, but the status said {:?}",
                        self.now - self.start,
                        reported - self.start
                    );
                }
                self.stats.connects += 1;
                let delay = Duration::from_millis(self.rng.u64(0..3_000));
                let pending = match self.rng.u8(0..10) {
                    0..=2 => Pending::Refuse(self.now + delay),
                    3 => Pending::Hang,
                    _ => Pending::Accept(self.now + delay),
                };
                self.connection = Some((request.id, pending));
                self.server = ServerConn::default();
            }
            Output::Close { id, .. } => {
                if self.connection.is_some_and(|(current, _)| current == *id) {
                    self.connection = None;
                    self.server = ServerConn::default();
                }
            }
            Output::Transmit { id, text } => {
                check!(
                    self,
                    self.connection.is_some_and(|(current, _)| current == *id),
                    "transmit on a dead connection"
                );
                self.on_transmit(text);
            }
            Output::RequestAuthToken => self.pending_token = true,
            Output::Poll(request) => {
                let status = self.client.status(self.now);
                check!(
                    self,
                    status.mode == Mode::Polling,
                    "poll request while {:?}",
                    status.mode
                );
                // One poll in flight at most: another only once the last one's timeout passed.
                if let Some((_, sent)) = self.poll_round {
                    let timeout = self.client.config().polling.map(|p| p.timeout);
                    check!(
                        self,
                        timeout.is_some_and(|timeout| self.now >= sent + timeout),
                        "a second poll while one is in flight"
                    );
                }
                self.stats.polls += 1;
                self.poll_round = Some((request.round, self.now));
            }
            Output::Event(event) => self.on_event(event),
        }
    }

    fn on_transmit(&mut self, text: &str) {
        let message = Bytes::copy_from_slice(text.as_bytes());
        let packets: Vec<_> = self.decoder.decode(&message).collect();
        for packet in packets {
            match packet.expect("the client frames correctly") {
                Packet::Heartbeat(beat) => {
                    let echoed = String::from_utf8_lossy(beat.payload()).into_owned();
                    let expected = self.server.unechoed.pop_front();
                    check!(
                        self,
                        expected.as_deref() == Some(echoed.as_str()),
                        "echo {echoed} but expected {expected:?}"
                    );
                }
                Packet::Json(payload) => {
                    self.command_times.push_back(self.now);
                    // A command the server has yet to answer restarts the dead-session count.
                    self.server.heartbeats = 0;
                    let command: Value =
                        serde_json::from_slice(&payload).expect("the client sends JSON");
                    self.on_command(&command);
                }
                Packet::LegacyJson(_) => panic!("the client never sends ~j~"),
            }
        }
    }

    fn on_command(&mut self, command: &Value) {
        let params: Vec<&str> = command["p"]
            .as_array()
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match command["m"].as_str().unwrap_or_default() {
            "quote_create_session" => {
                self.server.quote_session = params.first().map(|s| (*s).to_owned())
            }
            "chart_create_session" => {
                self.server.chart_session = params.first().map(|s| (*s).to_owned())
            }
            "quote_add_symbols" => {
                for symbol in params.iter().skip(1) {
                    if symbol.starts_with("BAD:") {
                        self.server.rejections.push((*symbol).to_owned());
                    } else {
                        self.server.symbols.insert((*symbol).to_owned());
                    }
                }
            }
            "quote_remove_symbols" => {
                for symbol in params.iter().skip(1) {
                    self.server.symbols.remove(*symbol);
                    self.server.rejections.retain(|rejected| rejected != symbol);
                }
            }
            "create_series" => {
                if let Some(series) = params.get(1) {
                    self.server.series.insert((*series).to_owned(), 60_000.0);
                }
            }
            "remove_series" => {
                if let Some(series) = params.get(1) {
                    self.server.series.remove(*series);
                }
            }
            _ => {}
        }
    }

    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Quote(quote) if quote.source == Source::Stream => {
                self.stats.quotes += 1;
                let expected = self.expected_quotes.pop_front();
                let got = (
                    quote.quote.symbol.to_string(),
                    quote.quote.last_price.unwrap_or(f64::NAN),
                );
                check!(
                    self,
                    expected.as_ref() == Some(&got),
                    "quote {got:?} but expected {expected:?}"
                );
            }
            Event::Quote(_) => {
                let status = self.client.status(self.now);
                check!(
                    self,
                    status.mode == Mode::Polling,
                    "a polled quote while {:?}",
                    status.mode
                );
            }
            Event::Bar(bar) if bar.closed => {
                let last = self.closed_series_times.insert(bar.series.0, bar.bar.time);
                check!(
                    self,
                    last.is_none_or(|last| bar.bar.time > last),
                    "closed bar {} after {last:?}",
                    bar.bar.time
                );
            }
            Event::State(change) => {
                self.reported_attempt = change.next_attempt;
                // After a rejected token the attempt also waits for the fresh token (or its timeout).
                let awaiting_token =
                    self.pending_token || change.cause == Some(DisconnectCause::BadAuthToken);
                if change.state == State::BackingOff && change.cause.is_some() && !awaiting_token {
                    let delay = change
                        .next_attempt
                        .expect("a scheduled attempt")
                        .saturating_duration_since(self.now);
                    // Verdicts on a proven session retry after the grace delay whatever the
                    // failure count; everything else backs off by the count.
                    let verdict = matches!(
                        change.cause,
                        Some(
                            DisconnectCause::Zombie
                                | DisconnectCause::DataSilence
                                | DisconnectCause::MaxAge
                        )
                    );
                    let base = if change.consecutive_failures == 0 || verdict {
                        self.config.grace
                    } else {
                        let doublings = (change.consecutive_failures - 1).min(31);
                        (self.config.backoff_initial * (1u32 << doublings))
                            .min(self.config.backoff_max)
                    };
                    let (low, high) = (
                        base.mul_f64(0.8),
                        base.mul_f64(1.2) + Duration::from_millis(1),
                    );
                    check!(
                        self,
                        delay >= low && delay <= high,
                        "delay {delay:?} outside {low:?}..{high:?}"
                    );
                }
            }
            _ => {}
        }
    }

    // ----- invariants ------------------------------------------------------------------------

    fn check_invariants(&mut self) {
        if self.closed {
            check!(
                self,
                self.client.poll_timeout().is_none(),
                "a timer after close"
            );
            check!(
                self,
                self.client.poll_output().is_none(),
                "output after close"
            );
            return;
        }
        let status = self.client.status(self.now);
        check!(
            self,
            !(status.mode == Mode::Polling && status.state == State::Live),
            "polling while live"
        );
        check!(
            self,
            status.counters.commands_queued <= self.config.max_queued_commands as u64,
            "queue over its bound"
        );
        if let Some(next) = self.client.poll_timeout() {
            let due_now = next <= self.now;
            if due_now {
                // Allowed only for work that became due this very step; run it and re-check.
                self.client.handle_timeout(self.now);
                self.drain();
                let after = self.client.poll_timeout();
                check!(
                    self,
                    after.is_none_or(|after| after > self.now),
                    "poll_timeout {after:?} in the past at {:?}",
                    self.now - self.start
                );
            }
        }
        // Rate limit: no more than burst + rate commands in any 60 s window.
        let window = Duration::from_secs(60);
        while self
            .command_times
            .front()
            .is_some_and(|&at| at + window <= self.now)
        {
            self.command_times.pop_front();
        }
        let allowed = (self.config.burst + self.config.rate_limit_per_minute) as usize;
        check!(
            self,
            self.command_times.len() <= allowed,
            "{} commands in 60 s > {allowed}",
            self.command_times.len()
        );
        // The server's subscriptions equal the desired set once the queue is empty.
        if self.server.open
            && self.server.quote_session.is_some()
            && status.counters.commands_queued == 0
        {
            let desired: BTreeSet<String> = self
                .client
                .quote_symbols()
                .iter()
                .map(|s| s.to_string())
                .collect();
            let mut on_server = self.server.symbols.clone();
            on_server.extend(self.server.rejections.iter().cloned());
            check!(
                self,
                on_server == desired,
                "server has {on_server:?}, client wants {desired:?}"
            );
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[test]
fn client_keeps_its_invariants_under_random_faults() {
    let steps = env_number("TICKWIRE_SIM_STEPS", 100_000);
    let seeds: Vec<u64> = match std::env::var("TICKWIRE_SIM_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (1..=env_number("TICKWIRE_SIM_SEEDS", 8)).collect(),
    };
    for seed in seeds {
        let result = std::panic::catch_unwind(|| {
            let mut sim = Sim::new(seed);
            sim.run(steps);
            sim.stats
        });
        match result {
            Ok(stats) => eprintln!("seed {seed}: {steps} steps ok, {stats:?}"),
            Err(panic) => {
                eprintln!(
                    "simulation failed with seed {seed}; replay: TICKWIRE_SIM_SEED={seed} cargo test -p tickwire-core --test simulation"
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
}

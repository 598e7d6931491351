//! The field, in virtual time: a scripted server that behaves like the real feed does on a bad
//! day — quiet for a whole weekend, out of session, never acknowledging, dropping every
//! connection, rejecting the token, refusing with HTTP 429 — and the `Client` against it for
//! days of simulated time in milliseconds of real time.
//!
//! Every scenario also checks, at every attempt, that the attempt comes exactly when the last
//! status change said it would.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tickwire_core::client::{
    AuthToken, Client, Config, ConnectionId, DisconnectCause, Event, HistoryError, Input, Market,
    Output, TransportError, TransportErrorKind,
};
use tickwire_core::codec::{Decoder, Packet, frame};

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// How the scripted server behaves; a test may change it between stretches of time.
#[derive(Debug, Clone)]
struct Script {
    /// Answer `quote_add_symbols` with a snapshot (the acknowledgement).
    ack: bool,
    /// `current_session` the quotes carry; `None` sends none.
    session: Option<&'static str>,
    /// A tick for every symbol this often.
    ticks: Option<Duration>,
    /// Heartbeats this often.
    heartbeat: Duration,
    /// Close every connection this long after it opened.
    drop_after: Option<Duration>,
    /// Answer `set_auth_token` with `protocol_error "bad auth token"` unless the token is this.
    accepted_token: Option<&'static str>,
    /// Send this `protocol_error` right after the snapshot.
    protocol_error: Option<&'static str>,
    /// Refuse attempts with HTTP 429 (and this `Retry-After`).
    refuse_429: Option<Option<Duration>>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            ack: true,
            session: None,
            ticks: None,
            heartbeat: 10 * SECOND,
            drop_after: None,
            accepted_token: None,
            protocol_error: None,
            refuse_429: None,
        }
    }
}

struct World {
    client: Client,
    start: Instant,
    now: Instant,
    script: Script,
    open: Option<Open>,
    decoder: Decoder,
    /// When each attempt was made.
    attempts: Vec<Instant>,
    closes: Vec<DisconnectCause>,
    events: Vec<Event>,
    /// Quote events with a price, and ticks the server sent.
    quotes_seen: u64,
    ticks_sent: u64,
    reported_attempt: Option<Instant>,
    /// The client asked for a fresh token; the test answers with `fresh_token`.
    fresh_token: Option<&'static str>,
    price: f64,
}

struct Open {
    id: ConnectionId,
    opened: Instant,
    quote_session: Option<String>,
    symbols: BTreeSet<String>,
    next_heartbeat: Instant,
    next_tick: Option<Instant>,
    heartbeat_counter: u64,
    last_session: Option<&'static str>,
}

impl World {
    fn new(config: Config, script: Script) -> World {
        let start = Instant::now();
        World {
            client: Client::new(config, start),
            start,
            now: start,
            script,
            open: None,
            decoder: Decoder::new(),
            attempts: Vec::new(),
            closes: Vec::new(),
            events: Vec::new(),
            quotes_seen: 0,
            ticks_sent: 0,
            reported_attempt: None,
            fresh_token: None,
            price: 100.0,
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn reconnects(&self) -> usize {
        self.attempts.len().saturating_sub(1)
    }

    /// Runs the world for `length` of virtual time.
    fn run_for(&mut self, length: Duration) {
        let end = self.now + length;
        self.client.handle_timeout(self.now);
        self.drain();
        loop {
            let timer = self.client.poll_timeout();
            let beat = self.open.as_ref().map(|open| open.next_heartbeat);
            let tick = self.open.as_ref().and_then(|open| open.next_tick);
            let drop_at = self
                .open
                .as_ref()
                .and_then(|open| self.script.drop_after.map(|after| open.opened + after));
            let next = [timer, beat, tick, drop_at, Some(end)]
                .into_iter()
                .flatten()
                .min()
                .expect("the end");
            if next > end {
                break;
            }
            assert!(next >= self.now, "time runs forward");
            self.now = next;
            if drop_at == Some(next) {
                if let Some(open) = self.open.take() {
                    let error =
                        TransportError::new(TransportErrorKind::Closed { code: Some(1000) }, "bye");
                    self.client
                        .handle_input(self.now, Input::Disconnected { id: open.id, error });
                    self.drain();
                }
            }
            if beat == Some(next) {
                self.heartbeat();
            }
            if tick == Some(next) {
                self.tick();
            }
            if timer == Some(next) {
                self.client.handle_timeout(self.now);
                self.drain();
            }
            if next == end {
                break;
            }
        }
    }

    fn heartbeat(&mut self) {
        let interval = self.script.heartbeat;
        let Some(open) = self.open.as_mut() else {
            return;
        };
        open.heartbeat_counter += 1;
        open.next_heartbeat = self.now + interval;
        let text = frame(&format!("~h~{}", open.heartbeat_counter));
        self.send(text);
    }

    fn tick(&mut self) {
        let every = self.script.ticks;
        let Some(open) = self.open.as_mut() else {
            return;
        };
        open.next_tick = every.map(|every| self.now + every);
        let Some(session) = open.quote_session.clone() else {
            return;
        };
        let symbols: Vec<String> = open.symbols.iter().cloned().collect();
        let mut text = String::new();
        for symbol in symbols {
            self.price += 0.25;
            self.ticks_sent += 1;
            text.push_str(&frame(&format!(
                r#"{{"m":"qsd","p":["{session}",{{"n":"{symbol}","s":"ok","v":{{"lp":{}}}}}]}}"#,
                self.price
            )));
        }
        if !text.is_empty() {
            self.send(text);
        }
    }

    /// Tells every subscribed quote that its session changed (as the real server does at the
    /// open and the close), and starts or stops the ticks as the script now says.
    fn announce_session(&mut self) {
        let session = self.script.session;
        let ticks = self.script.ticks;
        let now = self.now;
        let Some(open) = self.open.as_mut() else {
            return;
        };
        open.next_tick = ticks.map(|every| now + every);
        if open.last_session == session {
            return;
        }
        open.last_session = session;
        let (Some(quote_session), Some(name)) = (open.quote_session.clone(), session) else {
            return;
        };
        let text: String = open
            .symbols
            .iter()
            .map(|symbol| {
                frame(&format!(
                    r#"{{"m":"qsd","p":["{quote_session}",{{"n":"{symbol}","s":"ok","v":{{"current_session":"{name}"}}}}]}}"#
                ))
            })
            .collect();
        if !text.is_empty() {
            self.send(text);
        }
    }

    fn send(&mut self, text: String) {
        let Some(id) = self.open.as_ref().map(|open| open.id) else {
            return;
        };
        self.client.handle_input(
            self.now,
            Input::Message {
                id,
                text: Bytes::from(text),
            },
        );
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                Output::Connect(request) => self.on_connect(request.id),
                Output::Transmit { text, .. } => self.on_transmit(&text),
                Output::Close { id, cause } => {
                    self.closes.push(cause);
                    if self.open.as_ref().is_some_and(|open| open.id == id) {
                        self.open = None;
                    }
                }
                Output::RequestAuthToken => {
                    let token = self.fresh_token.take().map(AuthToken::new);
                    self.client.handle_input(self.now, Input::AuthToken(token));
                }
                Output::Poll(_) => {}
                Output::Event(event) => {
                    match &event {
                        Event::State(change) => self.reported_attempt = change.next_attempt,
                        Event::Quote(quote) if quote.changed.names().any(|name| name == "lp") => {
                            self.quotes_seen += 1
                        }
                        _ => {}
                    }
                    self.events.push(event);
                }
            }
        }
    }

    fn on_connect(&mut self, id: ConnectionId) {
        if let Some(reported) = self.reported_attempt {
            assert_eq!(
                reported,
                self.now,
                "the status said the attempt comes at {:?}; it came at {:?}",
                reported - self.start,
                self.elapsed()
            );
        }
        self.attempts.push(self.now);
        if let Some(retry_after) = self.script.refuse_429 {
            let error = TransportError::new(
                TransportErrorKind::HttpStatus {
                    code: 429,
                    retry_after,
                },
                "Too Many Requests",
            );
            self.client
                .handle_input(self.now, Input::ConnectFailed { id, error });
            return;
        }
        self.open = Some(Open {
            id,
            opened: self.now,
            quote_session: None,
            symbols: BTreeSet::new(),
            next_heartbeat: self.now + self.script.heartbeat,
            next_tick: None,
            heartbeat_counter: 0,
            last_session: self.script.session,
        });
        self.client.handle_input(self.now, Input::Connected(id));
        self.send(frame(r#"{"session_id":"<0.1.2>_field","protocol":"json"}"#));
    }

    fn on_transmit(&mut self, text: &str) {
        let message = Bytes::copy_from_slice(text.as_bytes());
        let payloads: Vec<Vec<u8>> = self
            .decoder
            .decode(&message)
            .filter_map(|packet| match packet {
                Ok(Packet::Json(payload)) => Some(payload.to_vec()),
                _ => None,
            })
            .collect();
        for payload in payloads {
            let command: Value = serde_json::from_slice(&payload).expect("JSON");
            let params: Vec<String> = command["p"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            match command["m"].as_str().unwrap_or_default() {
                "set_auth_token" => {
                    let token = params.first().cloned().unwrap_or_default();
                    if self
                        .script
                        .accepted_token
                        .is_some_and(|accepted| accepted != token)
                    {
                        let rejected = self.open.as_ref().map(|open| open.id);
                        self.send(frame(r#"{"m":"protocol_error","p":["bad auth token"]}"#));
                        // The client may already be on its next connection: close only this one.
                        if let Some(open) = self.open.take_if(|open| Some(open.id) == rejected) {
                            let error = TransportError::new(
                                TransportErrorKind::Closed { code: Some(1000) },
                                "",
                            );
                            self.client
                                .handle_input(self.now, Input::Disconnected { id: open.id, error });
                        }
                    }
                }
                "quote_create_session" => {
                    if let Some(open) = self.open.as_mut() {
                        open.quote_session = params.first().cloned();
                    }
                }
                "quote_add_symbols" => self.on_add_symbols(&params),
                _ => {}
            }
        }
    }

    fn on_add_symbols(&mut self, params: &[String]) {
        let ticks = self.script.ticks;
        let now = self.now;
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(session) = open.quote_session.clone() else {
            return;
        };
        let mut text = String::new();
        for symbol in params.iter().skip(1) {
            open.symbols.insert(symbol.clone());
            if self.script.ack {
                let current = self.script.session.map_or(String::new(), |name| {
                    format!(r#","current_session":"{name}""#)
                });
                text.push_str(&frame(&format!(
                    r#"{{"m":"qsd","p":["{session}",{{"n":"{symbol}","s":"ok","v":{{"lp":{}{current}}}}}]}}"#,
                    self.price
                )));
                text.push_str(&frame(&format!(
                    r#"{{"m":"quote_completed","p":["{session}","{symbol}"]}}"#
                )));
            }
        }
        open.next_tick = ticks.map(|every| now + every);
        if let Some(error) = self.script.protocol_error {
            text.push_str(&frame(&format!(
                r#"{{"m":"protocol_error","p":["{error}"]}}"#
            )));
        }
        if !text.is_empty() {
            self.send(text);
        }
    }

    fn market_events(&self) -> Vec<Market> {
        self.events
            .iter()
            .filter_map(|event| match event {
                Event::Market(status) => Some(status.market),
                _ => None,
            })
            .collect()
    }
}

fn subscribed(config: Config, script: Script) -> World {
    let mut world = World::new(config, script);
    world
        .client
        .subscribe_quotes(world.now, ["NASDAQ:AAPL", "NYSE:IBM"]);
    world
}

#[test]
fn a_closed_weekend_takes_no_verdict_and_monday_gets_every_tick() {
    let mut world = subscribed(
        Config::default(),
        Script {
            session: Some("out_of_session"),
            ..Script::default()
        },
    );
    world.run_for(48 * HOUR);
    assert_eq!(world.reconnects(), 0, "closes: {:?}", world.closes);
    assert_eq!(world.market_events(), [Market::Closed]);
    assert!(world.client.status(world.now).session_proven);
    // Monday: the session opens and ticks flow.
    world.script.session = Some("market");
    world.script.ticks = Some(SECOND);
    world.announce_session();
    let before = world.quotes_seen;
    world.ticks_sent = 0;
    world.run_for(HOUR);
    assert_eq!(world.reconnects(), 0);
    assert_eq!(world.quotes_seen - before, world.ticks_sent, "every tick");
    assert_eq!(world.market_events().last(), Some(&Market::Active));
}

#[test]
fn a_quiet_weekend_without_session_info_reconnects_at_most_twice() {
    for ticking_first in [false, true] {
        let mut world = subscribed(
            Config::default(),
            Script {
                ticks: ticking_first.then_some(SECOND),
                ..Script::default()
            },
        );
        if ticking_first {
            // Friday: an active market, then the ticks stop.
            world.run_for(HOUR);
            world.script.ticks = None;
            world.announce_session();
        }
        let weekend = world.now;
        world.run_for(48 * HOUR);
        let reconnects = world.attempts.iter().filter(|at| **at > weekend).count();
        assert!(
            reconnects <= 2,
            "{reconnects} reconnects over the weekend (ticking first: {ticking_first}): {:?}",
            world.closes
        );
        // The gaps between verdicts grow: no fixed-rate loop.
        let gaps: Vec<Duration> = world.attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.windows(2).all(|pair| pair[1] > pair[0]),
            "gaps {gaps:?}"
        );
        assert!(world.market_events().contains(&Market::Quiet));
        // Monday: ticks again, every one delivered, and the escalation starts over.
        world.script.ticks = Some(SECOND);
        world.announce_session();
        let before = world.quotes_seen;
        world.ticks_sent = 0;
        world.run_for(HOUR);
        assert_eq!(world.quotes_seen - before, world.ticks_sent, "every tick");
        assert_eq!(world.client.status(world.now).market.quiet_verdicts, 0);
        assert_eq!(world.client.status(world.now).market.market, Market::Active);
    }
}

#[test]
fn a_session_that_never_acknowledges_is_a_failure_with_growing_delays() {
    let mut world = subscribed(
        Config::default(),
        Script {
            ack: false,
            ..Script::default()
        },
    );
    world.run_for(HOUR);
    assert!(
        world
            .closes
            .iter()
            .all(|cause| *cause == DisconnectCause::DeadSession),
        "{:?}",
        world.closes
    );
    // Failures accumulate: the breaker opens and the attempts thin out (a fixed 50 s loop would
    // make 72 in an hour).
    assert!(world.reconnects() < 40, "{} attempts", world.attempts.len());
    let status = world.client.status(world.now);
    assert!(status.consecutive_failures >= 3, "{status:?}");
    assert!(
        world.events.iter().any(|event| matches!(
            event,
            Event::State(change) if change.state == tickwire_core::client::State::CircuitOpen
        )),
        "the breaker opened"
    );
}

#[test]
fn a_server_that_accepts_and_drops_every_connection_is_backed_off() {
    let config = Config {
        max_attempts: 1_000,
        ..Config::default()
    };
    let mut world = subscribed(
        config.clone(),
        Script {
            drop_after: Some(SECOND),
            ..Script::default()
        },
    );
    world.run_for(30 * 60 * SECOND);
    let gaps: Vec<Duration> = world.attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.last()
            .is_some_and(|gap| *gap >= config.backoff_max.mul_f64(0.8)),
        "the backoff reaches its cap: {gaps:?}"
    );
    assert!(world.reconnects() < 50, "{} attempts", world.attempts.len());
    // Once the server keeps a connection, it is stable and the failures reset.
    world.script.drop_after = None;
    world.run_for(5 * 60 * SECOND);
    assert_eq!(world.client.status(world.now).consecutive_failures, 0);
}

#[test]
fn a_protocol_error_that_repeats_on_every_connection_backs_off() {
    let mut world = subscribed(
        Config::default(),
        Script {
            protocol_error: Some("banned"),
            ..Script::default()
        },
    );
    world.run_for(HOUR);
    assert!(world.reconnects() < 40, "{} attempts", world.attempts.len());
    assert!(world.client.status(world.now).consecutive_failures >= 3);
}

#[test]
fn a_rejected_token_without_a_fresh_one_is_a_failure_and_says_so() {
    let mut world = subscribed(
        Config::default(),
        Script {
            accepted_token: Some("good"),
            ..Script::default()
        },
    );
    world.run_for(HOUR);
    let rejections: Vec<bool> = world
        .events
        .iter()
        .filter_map(|event| match event {
            Event::AuthTokenRejected { refreshed } => Some(*refreshed),
            _ => None,
        })
        .collect();
    assert!(!rejections.is_empty() && rejections.iter().all(|refreshed| !refreshed));
    assert!(world.reconnects() < 40, "{} attempts", world.attempts.len());
    assert!(
        world
            .closes
            .iter()
            .all(|cause| *cause == DisconnectCause::BadAuthToken)
    );
}

#[test]
fn a_rejected_token_is_retried_at_once_with_a_fresh_one() {
    let mut world = subscribed(
        Config::default(),
        Script {
            accepted_token: Some("fresh"),
            ticks: Some(SECOND),
            ..Script::default()
        },
    );
    world.fresh_token = Some("fresh");
    world.run_for(60 * SECOND);
    assert_eq!(world.attempts.len(), 2, "{:?}", world.closes);
    assert_eq!(
        world.attempts[0], world.attempts[1],
        "the retry is immediate"
    );
    assert!(
        world
            .events
            .contains(&Event::AuthTokenRejected { refreshed: true })
    );
    assert!(world.client.status(world.now).session_proven);
}

#[test]
fn http_429_honours_retry_after_or_opens_the_breaker() {
    let mut world = subscribed(
        Config::default(),
        Script {
            refuse_429: Some(Some(120 * SECOND)),
            ..Script::default()
        },
    );
    world.run_for(10 * 60 * SECOND);
    let gaps: Vec<Duration> = world.attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        !gaps.is_empty() && gaps.iter().all(|gap| *gap >= 120 * SECOND),
        "{gaps:?}"
    );

    let mut world = subscribed(
        Config::default(),
        Script {
            refuse_429: Some(None),
            ..Script::default()
        },
    );
    world.run_for(SECOND);
    let status = world.client.status(world.now);
    assert_eq!(status.state, tickwire_core::client::State::CircuitOpen);
    assert!(
        status
            .next_attempt
            .is_some_and(|at| at - world.now >= 40 * SECOND)
    );
}

#[test]
fn an_invalid_timeframe_fails_the_history_request_before_anything_is_sent() {
    let mut world = World::new(Config::default(), Script::default());
    world.run_for(SECOND);
    let invalid = world
        .client
        .request_history(world.now, "NASDAQ:AAPL", "7X", 10);
    world.run_for(SECOND);
    let result = world.events.iter().find_map(|event| match event {
        Event::History(history) if history.id == invalid => Some(history.result.clone()),
        _ => None,
    });
    assert!(
        matches!(&result, Some(Err(HistoryError::InvalidTimeframe(text))) if text.contains("1D")),
        "{result:?}"
    );
}

//! One test per rule, driven with explicit `Instant`s: no sleeping, no real time.

use super::*;
use crate::codec::frame;

const SECOND: Duration = Duration::from_secs(1);

/// A client with a clock the test moves by hand, and everything it asked for.
struct Harness {
    client: Client,
    start: Instant,
    now: Instant,
    outputs: Vec<Output>,
}

fn no_jitter() -> Config {
    Config {
        jitter: 0.0,
        ..Config::default()
    }
}

impl Harness {
    fn new(config: Config) -> Harness {
        let start = Instant::now();
        Harness {
            client: Client::new(config, start),
            start,
            now: start,
            outputs: Vec::new(),
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut drained = Vec::new();
        while let Some(output) = self.client.poll_output() {
            drained.push(output);
        }
        self.outputs.extend(drained.iter().cloned());
        drained
    }

    /// Moves the clock to `at` (relative to the start) and fires the timer.
    fn at(&mut self, at: Duration) -> Vec<Output> {
        self.now = self.start + at;
        self.client.handle_timeout(self.now);
        self.drain()
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.client.handle_input(self.now, input);
        self.drain()
    }

    /// Fires the timer and expects a connection attempt.
    fn expect_connect(&mut self) -> ConnectionId {
        self.client.handle_timeout(self.now);
        let outputs = self.drain();
        connect_id(&outputs).unwrap_or_else(|| panic!("no connect in {outputs:?}"))
    }

    /// Opens a connection and has the server say hello, making it live.
    fn go_live(&mut self) -> ConnectionId {
        let id = self.expect_connect();
        self.input(Input::Connected(id));
        self.server(id, r#"{"session_id":"x","protocol":"json"}"#);
        id
    }

    /// Heartbeats every `every` until `until` (relative to the start), firing timers on the way;
    /// returns everything that came out.
    fn heartbeats_until(
        &mut self,
        id: ConnectionId,
        every: Duration,
        until: Duration,
    ) -> Vec<Output> {
        let mut outputs = Vec::new();
        let mut beat = 0u64;
        while self.now - self.start + every <= until {
            outputs.extend(self.at(self.now - self.start + every));
            beat += 1;
            outputs.extend(self.raw(id, &frame(&format!("~h~{beat}"))));
        }
        outputs.extend(self.at(until));
        outputs
    }

    fn server(&mut self, id: ConnectionId, payload: &str) -> Vec<Output> {
        self.raw(id, &frame(payload))
    }

    fn raw(&mut self, id: ConnectionId, text: &str) -> Vec<Output> {
        self.input(Input::Message {
            id,
            text: Bytes::copy_from_slice(text.as_bytes()),
        })
    }

    /// Sends bars for the series or history request `key` in the current chart session.
    fn bars(
        &mut self,
        id: ConnectionId,
        method: &str,
        key: u64,
        bars: &[(f64, f64)],
    ) -> Vec<Output> {
        let chart = self.chart_session();
        self.server(
            id,
            &bars_payload(method, &chart, &format!("sds_{key}"), bars),
        )
    }

    /// Sends `series_completed` for the series or history request `key`.
    fn complete(&mut self, id: ConnectionId, key: u64) -> Vec<Output> {
        let chart = self.chart_session();
        self.server(id, &format!(r#"{{"m":"series_completed","p":["{chart}","sds_{key}","streaming","s1",{{"rt_update_period":5}}]}}"#))
    }

    fn quote_session(&self) -> String {
        self.client
            .open_link()
            .map(|link| link.quote_session.clone())
            .expect("open")
    }

    fn chart_session(&self) -> String {
        self.client
            .open_link()
            .map(|link| link.chart_session.clone())
            .expect("open")
    }
}

fn connect_id(outputs: &[Output]) -> Option<ConnectionId> {
    outputs.iter().find_map(|output| match output {
        Output::Connect(request) => Some(request.id),
        _ => None,
    })
}

fn transmits(outputs: &[Output]) -> Vec<&str> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Transmit { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn methods(outputs: &[Output]) -> Vec<String> {
    transmits(outputs)
        .iter()
        .filter(|text| !text.contains("~h~"))
        .map(|text| {
            let start = text.find("\"m\":\"").expect("a command") + 5;
            text[start..]
                .split('"')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn closes(outputs: &[Output]) -> Vec<DisconnectCause> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Close { cause, .. } => Some(*cause),
            _ => None,
        })
        .collect()
}

fn events(outputs: &[Output]) -> Vec<&Event> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Event(event) => Some(event),
            _ => None,
        })
        .collect()
}

fn quote_events(outputs: &[Output]) -> Vec<&QuoteEvent> {
    events(outputs)
        .into_iter()
        .filter_map(|event| match event {
            Event::Quote(quote) => Some(quote),
            _ => None,
        })
        .collect()
}

fn bar_events(outputs: &[Output]) -> Vec<(f64, f64, bool)> {
    events(outputs)
        .into_iter()
        .filter_map(|event| match event {
            Event::Bar(bar) => Some((bar.bar.time, bar.bar.close, bar.closed)),
            _ => None,
        })
        .collect()
}

fn qsd(session: &str, symbol: &str, values: &str) -> String {
    format!(r#"{{"m":"qsd","p":["{session}",{{"n":"{symbol}","s":"ok","v":{{{values}}}}}]}}"#)
}

fn bars_payload(method: &str, session: &str, series: &str, bars: &[(f64, f64)]) -> String {
    let bars: Vec<String> = bars
        .iter()
        .enumerate()
        .map(|(index, (time, close))| {
            format!(r#"{{"i":{index},"v":[{time:.1},1,2,0.5,{close},10]}}"#)
        })
        .collect();
    format!(
        r#"{{"m":"{method}","p":["{session}",{{"{series}":{{"s":[{}],"t":"s1"}}}}]}}"#,
        bars.join(",")
    )
}

#[test]
fn first_attempt_is_immediate_and_setup_is_pipelined_in_order() {
    let mut h = Harness::new(no_jitter());
    h.client
        .subscribe_quotes(h.now, ["NASDAQ:AAPL", "BINANCE:BTCUSDT"]);
    let series = h
        .client
        .subscribe_bars(h.now, "BINANCE:BTCUSDT", "1", 300)
        .unwrap();
    assert_eq!(h.client.status(h.now).state, State::Idle);
    assert_eq!(h.client.poll_timeout(), Some(h.now));
    let id = h.expect_connect();
    let outputs = h.input(Input::Connected(id));
    assert_eq!(
        methods(&outputs),
        [
            "set_auth_token",
            "quote_create_session",
            "quote_set_fields",
            "chart_create_session",
            "quote_add_symbols",
            "resolve_symbol",
            "create_series"
        ]
    );
    let sent = transmits(&outputs);
    assert!(sent[0].ends_with(r#"{"m":"set_auth_token","p":["unauthorized_user_token"]}"#));
    assert!(
        sent[4].contains(r#""BINANCE:BTCUSDT","NASDAQ:AAPL"]"#),
        "{}",
        sent[4]
    );
    assert!(
        sent[6].contains(&format!(
            r#""sds_{}","s1","sds_sym_{}","1",300]"#,
            series.0, series.0
        )),
        "{}",
        sent[6]
    );
    assert_eq!(h.client.status(h.now).state, State::Connecting);
    h.server(id, r#"{"protocol":"json"}"#);
    assert_eq!(h.client.status(h.now).state, State::Live);
}

#[test]
fn heartbeats_are_echoed_at_once_even_when_rate_limited_and_never_become_events() {
    let mut h = Harness::new(Config {
        burst: 1,
        ..no_jitter()
    });
    let id = h.go_live();
    h.client.subscribe_quotes(h.now, ["A", "B", "C"]);
    h.drain();
    assert!(
        h.client.status(h.now).counters.commands_queued > 0,
        "the bucket is empty"
    );
    let outputs = h.raw(id, "~m~5~m~~h~17");
    assert_eq!(transmits(&outputs), ["~m~5~m~~h~17"]);
    assert!(events(&outputs).is_empty());
    assert_eq!(h.client.status(h.now).counters.heartbeats, 1);
}

#[test]
fn zombie_link_is_dropped_exactly_on_the_fifth_idle_heartbeat() {
    let mut h = Harness::new(no_jitter());
    h.client.subscribe_quotes(h.now, ["A"]);
    let id = h.go_live();
    let session = h.quote_session();
    h.server(id, &qsd(&session, "A", r#""lp":1"#));
    for beat in 1..=4 {
        h.now += SECOND;
        let outputs = h.raw(id, &frame(&format!("~h~{beat}")));
        assert!(closes(&outputs).is_empty(), "closed after {beat}");
    }
    // A data packet resets the count.
    h.server(id, r#"{"m":"quote_completed","p":["qs_x","A"]}"#);
    for beat in 5..=8 {
        let outputs = h.raw(id, &frame(&format!("~h~{beat}")));
        assert!(closes(&outputs).is_empty(), "{beat}: {outputs:?}");
    }
    let outputs = h.raw(id, "~m~4~m~~h~9");
    assert_eq!(
        transmits(&outputs),
        ["~m~4~m~~h~9"],
        "the fifth is still echoed"
    );
    assert_eq!(closes(&outputs), [DisconnectCause::Zombie]);
    assert_eq!(
        h.client
            .status(h.now)
            .counters
            .disconnects
            .get(DisconnectCause::Zombie),
        1
    );
}

#[test]
fn read_timeout_and_handshake_timeout_are_separate() {
    let mut h = Harness::new(no_jitter());
    let id = h.expect_connect();
    h.input(Input::Connected(id));
    // No first packet within the handshake timeout (10 s).
    assert!(closes(&h.at(Duration::from_millis(9_999))).is_empty());
    assert_eq!(
        closes(&h.at(10 * SECOND)),
        [DisconnectCause::HandshakeTimeout]
    );

    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    assert_eq!(
        h.client.poll_timeout(),
        Some(h.start + 10 * SECOND),
        "the health check comes first"
    );
    h.at(10 * SECOND);
    assert_eq!(h.client.poll_timeout(), Some(h.start + 15 * SECOND));
    assert!(closes(&h.at(Duration::from_millis(14_999))).is_empty());
    let outputs = h.at(15 * SECOND);
    assert_eq!(closes(&outputs), [DisconnectCause::ReadTimeout]);
    assert!(matches!(outputs.first(), Some(Output::Close { id: closed, .. }) if *closed == id));
}

#[test]
fn data_silence_with_live_subscriptions_is_checked_on_the_health_interval() {
    let mut h = Harness::new(no_jitter());
    h.client.subscribe_quotes(h.now, ["A"]);
    let id = h.go_live();
    let session = h.quote_session();
    h.server(id, &qsd(&session, "A", r#""lp":1"#));
    // Keep the socket busy with non-tick packets so only the silence rule can fire.
    let mut fired_at = None;
    for second in (5..=60).step_by(5) {
        h.now = h.start + Duration::from_secs(second);
        h.server(id, r#"{"m":"quote_completed","p":["qs","A"]}"#);
        if !closes(&h.at(Duration::from_secs(second))).is_empty() {
            fired_at = Some(second);
            break;
        }
    }
    // Last tick at 0 s; health checks at 10, 20, 30 s: the 30 s check sees 30 s of silence.
    assert_eq!(fired_at, Some(30));
    assert_eq!(
        h.client
            .status(h.now)
            .counters
            .disconnects
            .get(DisconnectCause::DataSilence),
        1
    );
}

#[test]
fn no_subscriptions_means_no_data_silence() {
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    for second in (5..=120).step_by(5) {
        h.now = h.start + Duration::from_secs(second);
        h.server(id, r#"{"m":"quote_completed","p":["qs","A"]}"#);
        assert!(closes(&h.at(Duration::from_secs(second))).is_empty());
    }
}

#[test]
fn failed_attempts_back_off_then_open_the_breaker_then_probe() {
    let mut h = Harness::new(no_jitter());
    let mut attempts = Vec::new();
    let id = h.expect_connect();
    attempts.push(h.now - h.start);
    h.input(Input::ConnectFailed {
        id,
        error: TransportError::new(TransportErrorKind::Refused, "refused"),
    });
    // 1 s, then 2 s, then the breaker opens after the third failure.
    for _ in 0..2 {
        let next = h.client.poll_timeout().unwrap();
        assert_eq!(h.client.status(h.now).state, State::BackingOff);
        h.now = next;
        let id = h.expect_connect();
        attempts.push(h.now - h.start);
        h.input(Input::ConnectFailed {
            id,
            error: TransportError::new(TransportErrorKind::Refused, "refused"),
        });
    }
    assert_eq!(attempts, [Duration::ZERO, SECOND, 3 * SECOND]);
    let status = h.client.status(h.now);
    assert_eq!(
        (status.state, status.breaker, status.consecutive_failures),
        (State::CircuitOpen, Breaker::Open, 3)
    );
    assert_eq!(status.next_attempt, Some(h.now + 60 * SECOND));
    // Nothing before the recovery time.
    assert!(connect_id(&h.at(62 * SECOND)).is_none());
    // The half-open probe fails: the breaker re-opens for twice the recovery period.
    let probe_at = 63 * SECOND;
    let probe = connect_id(&h.at(probe_at)).expect("probe");
    assert_eq!(h.client.status(h.now).breaker, Breaker::HalfOpen);
    h.input(Input::ConnectFailed {
        id: probe,
        error: TransportError::new(TransportErrorKind::Refused, "refused"),
    });
    assert_eq!(h.client.status(h.now).breaker, Breaker::Open);
    assert!(connect_id(&h.at(probe_at + 119 * SECOND)).is_none());
    // The next probe succeeds: the breaker closes and failures reset on the first data packet.
    let probe = connect_id(&h.at(probe_at + 120 * SECOND)).expect("second probe");
    h.input(Input::Connected(probe));
    assert_eq!(
        h.client.status(h.now).breaker,
        Breaker::HalfOpen,
        "open socket is not success yet"
    );
    h.server(probe, r#"{"protocol":"json"}"#);
    let status = h.client.status(h.now);
    assert_eq!(
        (status.breaker, status.consecutive_failures, status.state),
        (Breaker::Closed, 4, State::Live),
        "the breaker closes at once; failures reset once the connection is stable"
    );
    let stable_at = h.now - h.start + Config::default().stable_after;
    h.heartbeats_until(probe, 10 * SECOND, stable_at - Duration::from_millis(1));
    assert_eq!(h.client.status(h.now).consecutive_failures, 4);
    h.at(stable_at);
    assert_eq!(h.client.status(h.now).consecutive_failures, 0);
}

#[test]
fn a_working_connection_that_drops_is_retried_after_the_grace_delay() {
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    h.heartbeats_until(id, 10 * SECOND, 100 * SECOND);
    h.input(Input::Disconnected {
        id,
        error: TransportError::new(TransportErrorKind::Reset, "reset"),
    });
    assert_eq!(
        h.client.status(h.now).next_attempt,
        Some(h.now + 2 * SECOND)
    );
    let dropped_at = h.now;
    assert!(connect_id(&h.at(dropped_at - h.start + Duration::from_millis(1_999))).is_none());
    let id = connect_id(&h.at(dropped_at - h.start + 2 * SECOND)).expect("retry after grace");
    // That attempt fails: backoff starts at 1 s.
    h.input(Input::ConnectFailed {
        id,
        error: TransportError::new(TransportErrorKind::Refused, "refused"),
    });
    assert_eq!(h.client.status(h.now).next_attempt, Some(h.now + SECOND));
}

#[test]
fn jitter_is_seeded_and_within_twenty_percent() {
    let delays = |seed| {
        let mut h = Harness::new(Config {
            seed: Some(seed),
            max_attempts: 50,
            ..Config::default()
        });
        let mut delays = Vec::new();
        for _ in 0..8 {
            let id = h.expect_connect();
            h.input(Input::ConnectFailed {
                id,
                error: TransportError::new(TransportErrorKind::Refused, "refused"),
            });
            let next = h.client.poll_timeout().unwrap();
            delays.push(next - h.now);
            h.now = next;
        }
        delays
    };
    let first = delays(7);
    assert_eq!(first, delays(7), "same seed, same delays");
    assert_ne!(first, delays(8));
    for (failures, delay) in (1u32..).zip(&first) {
        let base = SECOND * 2u32.pow(failures - 1).min(60);
        let base = base.min(60 * SECOND);
        assert!(
            *delay >= base.mul_f64(0.8) && *delay <= base.mul_f64(1.2),
            "{failures}: {delay:?} vs {base:?}"
        );
    }
}

#[test]
fn only_one_connection_attempt_exists_at_a_time() {
    let mut h = Harness::new(no_jitter());
    let id = h.expect_connect();
    for millis in (0..9_000).step_by(500) {
        assert!(connect_id(&h.at(Duration::from_millis(millis))).is_none());
    }
    assert_eq!(h.client.status(h.now).connection, Some(id));
    // The connect timeout abandons the attempt before the next one starts.
    let outputs = h.at(10 * SECOND);
    assert_eq!(closes(&outputs), [DisconnectCause::ConnectTimeout]);
    assert!(connect_id(&outputs).is_none());
    // A late success of the abandoned attempt is ignored.
    h.input(Input::Connected(id));
    assert_eq!(h.client.status(h.now).state, State::BackingOff);
    let next = connect_id(&h.at(11 * SECOND)).expect("the next attempt");
    assert_ne!(next, id);
}

#[test]
fn protocol_error_reconnects_and_critical_error_keeps_the_socket() {
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    let outputs = h.server(
        id,
        r#"{"m":"critical_error","p":["cs_x","invalid_parameters","quote_add_symbols"]}"#,
    );
    assert!(closes(&outputs).is_empty());
    assert!(
        matches!(events(&outputs)[..], [Event::CriticalError { name, .. }] if name == "invalid_parameters")
    );
    let outputs = h.server(id, r#"{"m":"protocol_error","p":["wrong data"]}"#);
    assert_eq!(closes(&outputs), [DisconnectCause::ProtocolError]);
    assert!(
        events(&outputs)
            .iter()
            .any(|event| matches!(event, Event::ProtocolError { text } if text == "wrong data"))
    );
    assert_eq!(h.client.status(h.now).state, State::BackingOff);
}

#[test]
fn bad_auth_token_asks_for_a_fresh_one_before_the_next_attempt() {
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    let outputs = h.server(id, r#"{"m":"protocol_error","p":["bad auth token"]}"#);
    assert!(outputs.contains(&Output::RequestAuthToken));
    assert_eq!(closes(&outputs), [DisconnectCause::BadAuthToken]);
    // The grace delay passes, but the client waits for the token.
    assert!(connect_id(&h.at(5 * SECOND)).is_none());
    // The attempt that waited for the token starts in the same step.
    let outputs = h.input(Input::AuthToken(Some(AuthToken::new("fresh.jwt"))));
    let id = connect_id(&outputs).expect("the attempt starts with the token");
    assert!(
        h.client.poll_timeout().is_some_and(|due| due >= h.now),
        "found by the client fuzz target"
    );
    let outputs = h.input(Input::Connected(id));
    assert!(transmits(&outputs)[0].contains(r#"["fresh.jwt"]"#));

    // Without an answer, the old token is retried after the token timeout.
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    h.server(id, r#"{"m":"protocol_error","p":["bad auth token"]}"#);
    assert!(connect_id(&h.at(9 * SECOND)).is_none());
    assert!(connect_id(&h.at(10 * SECOND)).is_some());
}

#[test]
fn desired_state_is_restored_on_every_connection() {
    let mut h = Harness::new(Config {
        burst: 100,
        ..no_jitter()
    });
    // Changes while disconnected only change the desired state.
    h.client.subscribe_quotes(h.now, ["A", "B", "C"]);
    h.client.unsubscribe_quotes(h.now, ["B"]);
    let kept = h.client.subscribe_bars(h.now, "A", "5", 10).unwrap();
    let dropped = h.client.subscribe_bars(h.now, "C", "1D", 10).unwrap();
    h.client.unsubscribe_bars(h.now, dropped);
    assert!(h.drain().is_empty());
    let id = h.expect_connect();
    let first = h.input(Input::Connected(id));
    h.server(id, r#"{"protocol":"json"}"#);
    // Changes while live are sent at once and kept for the next connection.
    h.client.subscribe_quotes(h.now, ["D"]);
    h.drain();
    h.input(Input::Disconnected {
        id,
        error: TransportError::new(TransportErrorKind::Reset, "reset"),
    });
    let id = connect_id(&h.at(3 * SECOND)).unwrap();
    let second = h.input(Input::Connected(id));
    let sent = transmits(&second);
    assert!(
        sent.iter().any(|text| text.contains(r#""A","C","D"]"#)),
        "{sent:?}"
    );
    assert!(sent.iter().all(|text| !text.contains("\"B\"")));
    assert!(
        sent.iter()
            .any(|text| text.contains(&format!("\"sds_{}\"", kept.0)))
    );
    assert!(
        sent.iter()
            .all(|text| !text.contains(&format!("\"sds_{}\"", dropped.0)))
    );
    assert_eq!(methods(&first).len(), 7);
    assert_eq!(methods(&second).len(), 7);
}

#[test]
fn commands_beyond_the_rate_limit_wait_in_order_and_overflow_is_reported() {
    let mut h = Harness::new(Config {
        max_queued_commands: 3,
        ..no_jitter()
    });
    h.go_live();
    // Set-up took 4 of the 10 tokens.
    for index in 0..12 {
        h.client.subscribe_quotes(h.now, [format!("S{index}")]);
    }
    let outputs = h.drain();
    assert_eq!(
        methods(&outputs).len(),
        6,
        "burst of 10 minus 4 set-up commands"
    );
    let dropped: u64 = events(&outputs)
        .iter()
        .map(|event| match event {
            Event::CommandsDropped { count, bound } => {
                assert_eq!(*bound, 3);
                *count
            }
            _ => 0,
        })
        .sum();
    assert_eq!(dropped, 3);
    let status = h.client.status(h.now);
    assert_eq!(
        (
            status.counters.commands_queued,
            status.counters.commands_dropped
        ),
        (3, 3)
    );
    // One token a second: the queue drains in order, and poll_timeout says when.
    assert_eq!(h.client.poll_timeout(), Some(h.start + SECOND));
    let outputs = h.at(SECOND);
    assert_eq!(transmits(&outputs).len(), 1);
    assert!(transmits(&outputs)[0].contains("\"S6\""));
    assert!(transmits(&h.at(2 * SECOND))[0].contains("\"S7\""));
    assert!(transmits(&h.at(3 * SECOND))[0].contains("\"S8\""));
    assert_eq!(h.client.status(h.now).counters.commands_queued, 0);
}

#[test]
fn quotes_are_merged_and_carry_changes_and_source() {
    let mut h = Harness::new(no_jitter());
    h.client.subscribe_quotes(h.now, ["A"]);
    let id = h.go_live();
    let session = h.quote_session();
    let outputs = h.server(
        id,
        &qsd(
            &session,
            "A",
            r#""lp":10.5,"volume":100,"description":"Alpha""#,
        ),
    );
    let events = quote_events(&outputs);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, Source::Stream);
    assert_eq!(events[0].quote.last_price, Some(10.5));
    assert!(
        events[0].changed.contains(QuoteFields::LAST_PRICE)
            && events[0].changed.contains(QuoteFields::DESCRIPTION)
    );
    let outputs = h.server(id, &qsd(&session, "A", r#""lp":10.5,"bid":10.4"#));
    let events = quote_events(&outputs);
    assert_eq!(events[0].changed, QuoteFields::BID, "lp did not change");
    assert_eq!(events[0].quote.volume, Some(100.0));
    assert_eq!(events[0].quote.description.as_deref(), Some("Alpha"));
    // A quote for another session or an unknown symbol is not emitted.
    assert!(quote_events(&h.server(id, &qsd("qs_other", "A", r#""lp":1"#))).is_empty());
    assert!(quote_events(&h.server(id, &qsd(&session, "Z", r#""lp":1"#))).is_empty());
    assert_eq!(h.client.quote("A").and_then(|quote| quote.bid), Some(10.4));
}

#[test]
fn no_such_symbol_is_reported_and_not_re_added() {
    let mut h = Harness::new(no_jitter());
    h.client.subscribe_quotes(h.now, ["A", "NOPE"]);
    let id = h.go_live();
    let session = h.quote_session();
    let outputs = h.server(
        id,
        &format!(r#"{{"m":"qsd","p":["{session}",{{"n":"NOPE","s":"error","errmsg":"no_such_symbol","v":{{}}}}]}}"#),
    );
    assert!(
        matches!(events(&outputs)[..], [Event::QuoteError { symbol, reason }] if &**symbol == "NOPE" && reason == "no_such_symbol")
    );
    h.input(Input::Disconnected {
        id,
        error: TransportError::new(TransportErrorKind::Reset, "reset"),
    });
    let id = connect_id(&h.at(3 * SECOND)).unwrap();
    let sent = h.input(Input::Connected(id));
    let add = transmits(&sent)
        .into_iter()
        .find(|text| text.contains("quote_add_symbols"))
        .unwrap()
        .to_owned();
    assert!(add.ends_with(r#","A"]}"#), "{add}");
}

#[test]
fn bars_mark_forming_and_closed_and_reconnect_backfill_is_deduplicated() {
    let mut h = Harness::new(no_jitter());
    let series = h.client.subscribe_bars(h.now, "A", "1", 3).unwrap();
    let id = h.go_live();
    let chart = h.chart_session();
    let name = format!("sds_{}", series.0);
    let history = h.server(
        id,
        &bars_payload(
            "timescale_update",
            &chart,
            &name,
            &[(60.0, 1.0), (120.0, 2.0), (180.0, 3.0)],
        ),
    );
    assert_eq!(
        bar_events(&history),
        [(60.0, 1.0, true), (120.0, 2.0, true), (180.0, 3.0, false)]
    );
    // The forming bar changes, then a new bar closes it.
    assert_eq!(
        bar_events(&h.server(id, &bars_payload("du", &chart, &name, &[(180.0, 3.5)]))),
        [(180.0, 3.5, false)]
    );
    assert!(
        bar_events(&h.server(id, &bars_payload("du", &chart, &name, &[(180.0, 3.5)]))).is_empty(),
        "unchanged"
    );
    assert_eq!(
        bar_events(&h.server(id, &bars_payload("du", &chart, &name, &[(240.0, 4.0)]))),
        [(180.0, 3.5, true), (240.0, 4.0, false)]
    );
    // Reconnect: the new history overlaps what was emitted; only what is new comes out.
    h.input(Input::Disconnected {
        id,
        error: TransportError::new(TransportErrorKind::Reset, "reset"),
    });
    let id = connect_id(&h.at(3 * SECOND)).unwrap();
    h.input(Input::Connected(id));
    let chart = h.chart_session();
    let backfill = h.server(
        id,
        &bars_payload(
            "timescale_update",
            &chart,
            &name,
            &[(180.0, 3.5), (240.0, 4.2), (300.0, 5.0), (360.0, 6.0)],
        ),
    );
    assert_eq!(
        bar_events(&backfill),
        [(240.0, 4.2, true), (300.0, 5.0, true), (360.0, 6.0, false)]
    );
}

fn bar_gaps(outputs: &[Output]) -> Vec<(f64, f64)> {
    events(outputs)
        .into_iter()
        .filter_map(|event| match event {
            Event::BarGap(gap) => Some((gap.after, gap.before)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_backfill_that_does_not_reach_back_reports_the_gap_and_an_overlapping_one_does_not() {
    let mut h = Harness::new(no_jitter());
    let series = h.client.subscribe_bars(h.now, "A", "1", 2).unwrap();
    let name = format!("sds_{}", series.0);
    let id = h.go_live();
    let chart = h.chart_session();
    let first = h.server(
        id,
        &bars_payload(
            "timescale_update",
            &chart,
            &name,
            &[(60.0, 1.0), (120.0, 2.0)],
        ),
    );
    assert!(bar_gaps(&first).is_empty(), "a first connection has no gap");
    let reconnect = |h: &mut Harness, id, bars: &[(f64, f64)]| {
        h.input(Input::Disconnected {
            id,
            error: TransportError::new(TransportErrorKind::Reset, "reset"),
        });
        h.now = h.client.poll_timeout().expect("a reconnect is timed");
        let id = h.go_live();
        let chart = h.chart_session();
        (
            id,
            h.server(id, &bars_payload("timescale_update", &chart, &name, bars)),
        )
    };
    // The backfill starts at the forming bar: nothing can be missing.
    let (id, overlapping) = reconnect(&mut h, id, &[(120.0, 2.5), (180.0, 3.0)]);
    assert!(bar_gaps(&overlapping).is_empty(), "{overlapping:?}");
    // It starts right after the forming bar: no bar is missing, but the forming one (180)
    // never got its final state. It is not closed with stale values; the gap says so.
    let (id, adjacent) = reconnect(&mut h, id, &[(240.0, 4.0), (300.0, 5.0)]);
    assert_eq!(bar_gaps(&adjacent), [(120.0, 240.0)]);
    assert_eq!(
        bar_events(&adjacent),
        [(240.0, 4.0, true), (300.0, 5.0, false)]
    );
    // The link was down for longer than the backfill covers: 360 … 540 were never seen, and
    // 300 never closed.
    let (_, late) = reconnect(&mut h, id, &[(600.0, 6.0), (660.0, 7.0)]);
    assert_eq!(bar_gaps(&late), [(240.0, 600.0)]);
    let gap_at = events(&late)
        .iter()
        .position(|event| matches!(event, Event::BarGap(_)))
        .unwrap();
    let first_bar_at = events(&late)
        .iter()
        .position(|event| matches!(event, Event::Bar(_)))
        .unwrap();
    assert!(
        gap_at < first_bar_at,
        "the gap comes before the bars after it"
    );
    assert_eq!(bar_events(&late), [(600.0, 6.0, true), (660.0, 7.0, false)]);
}

#[test]
fn history_completes_with_bars_or_a_typed_error_and_never_hangs() {
    let mut h = Harness::new(Config {
        burst: 100,
        ..no_jitter()
    });
    let ok = h.client.request_history(h.now, "A", "1D", 2);
    let bad_symbol = h.client.request_history(h.now, "NOPE", "1D", 2);
    let bad_series = h.client.request_history(h.now, "A", "1S", 2);
    let slow = h.client.request_history(h.now, "A", "1W", 2);
    let id = h.go_live();
    let chart = h.chart_session();
    h.bars(id, "timescale_update", ok.0, &[(1.0, 1.0), (2.0, 2.0)]);
    let outputs = h.complete(id, ok.0);
    let history = events(&outputs)
        .into_iter()
        .find_map(|event| match event {
            Event::History(history) => Some(history.clone()),
            _ => None,
        })
        .expect("history event");
    assert_eq!(history.id, ok);
    let bars = history.result.expect("bars");
    assert_eq!(
        bars.iter().map(|bar| bar.time).collect::<Vec<_>>(),
        [1.0, 2.0]
    );
    assert!(methods(&outputs).contains(&"remove_series".to_owned()));

    let outputs = h.server(
        id,
        &format!(
            r#"{{"m":"symbol_error","p":["{chart}","sds_sym_{}","invalid symbol"]}}"#,
            bad_symbol.0
        ),
    );
    assert!(
        matches!(events(&outputs)[..], [Event::History(HistoryEvent { id, result: Err(HistoryError::Symbol(_)), .. })] if *id == bad_symbol)
    );
    let outputs = h.server(
        id,
        &format!(
            r#"{{"m":"series_error","p":["{chart}","sds_{}","s1","seconds_not_entitled"]}}"#,
            bad_series.0
        ),
    );
    assert!(
        matches!(events(&outputs)[..], [Event::History(HistoryEvent { result: Err(HistoryError::Series(reason)), .. })] if reason == "seconds_not_entitled")
    );

    assert_eq!(h.client.pending_history(), [slow]);
    let outputs = h.at(30 * SECOND);
    assert!(events(&outputs).iter().any(|event| matches!(event, Event::History(HistoryEvent { id, result: Err(HistoryError::Timeout), .. }) if *id == slow)));
    assert!(h.client.pending_history().is_empty());
}

#[test]
fn history_survives_a_reconnect() {
    let mut h = Harness::new(no_jitter());
    let request = h.client.request_history(h.now, "A", "1D", 2);
    let id = h.go_live();
    let chart = h.chart_session();
    h.server(
        id,
        &bars_payload(
            "timescale_update",
            &chart,
            &format!("sds_{}", request.0),
            &[(1.0, 1.0)],
        ),
    );
    h.input(Input::Disconnected {
        id,
        error: TransportError::new(TransportErrorKind::Reset, "reset"),
    });
    let id = connect_id(&h.at(3 * SECOND)).unwrap();
    let sent = h.input(Input::Connected(id));
    assert!(
        transmits(&sent)
            .iter()
            .any(|text| text.contains(&format!("\"sds_{}\"", request.0)))
    );
    h.server(id, r#"{"protocol":"json"}"#);
    h.bars(id, "timescale_update", request.0, &[(1.0, 1.0), (2.0, 2.0)]);
    let outputs = h.complete(id, request.0);
    let Some(Event::History(history)) = events(&outputs)
        .into_iter()
        .find(|event| matches!(event, Event::History(_)))
    else {
        panic!("{outputs:?}")
    };
    assert_eq!(history.result.as_ref().map(Vec::len), Ok(2));
}

#[test]
fn polling_takes_over_when_the_circuit_opens_and_stops_when_the_stream_returns() {
    let polling = PollingConfig {
        interval: 5 * SECOND,
        unavailable_after: 1_000 * SECOND,
        ..PollingConfig::default()
    };
    let mut h = Harness::new(Config {
        polling: Some(polling),
        ..no_jitter()
    });
    h.client.subscribe_quotes(h.now, ["A"]);
    for _ in 0..3 {
        let id = h.expect_connect();
        let outputs = h.input(Input::ConnectFailed {
            id,
            error: TransportError::new(TransportErrorKind::Refused, "refused"),
        });
        assert!(
            !outputs
                .iter()
                .any(|output| matches!(output, Output::Poll(_)))
                || h.client.status(h.now).breaker == Breaker::Open
        );
        if let Some(next) = h.client.poll_timeout() {
            if h.client.status(h.now).breaker != Breaker::Open {
                h.now = next;
            }
        }
    }
    let status = h.client.status(h.now);
    assert_eq!(
        (status.breaker, status.mode),
        (Breaker::Open, Mode::Polling)
    );
    let round = h
        .outputs
        .iter()
        .find_map(|output| match output {
            Output::Poll(request) => Some(request.clone()),
            _ => None,
        })
        .expect("a poll request");
    assert_eq!(round.symbols, [Arc::from("A")]);
    let outputs = h.input(Input::PollResult {
        round: round.round,
        result: Ok(vec![PolledQuote {
            symbol: "A".into(),
            last_price: Some(9.0),
            ..PolledQuote::default()
        }]),
    });
    let quotes = quote_events(&outputs);
    assert_eq!(
        (quotes[0].source, quotes[0].quote.last_price),
        (Source::Poll, Some(9.0))
    );
    // Polls repeat on the interval.
    let base = h.now - h.start;
    assert!(
        h.at(base + 5 * SECOND)
            .iter()
            .any(|output| matches!(output, Output::Poll(_)))
    );
    // The probe brings the stream back: polling stops at once, and stale results are ignored.
    let probe = connect_id(&h.at(base + 60 * SECOND)).expect("probe");
    h.input(Input::Connected(probe));
    h.server(probe, r#"{"protocol":"json"}"#);
    assert_eq!(h.client.status(h.now).mode, Mode::Streaming);
    let session = h.quote_session();
    h.server(probe, &qsd(&session, "A", r#""lp":2"#));
    let late = h.input(Input::PollResult {
        round: round.round,
        result: Ok(vec![PolledQuote {
            symbol: "A".into(),
            last_price: Some(1.0),
            ..PolledQuote::default()
        }]),
    });
    assert!(quote_events(&late).is_empty());
    assert!(
        !h.heartbeats_until(probe, 10 * SECOND, base + 100 * SECOND)
            .iter()
            .any(|output| matches!(output, Output::Poll(_)))
    );
}

#[test]
fn polling_also_starts_after_the_unavailability_threshold() {
    let polling = PollingConfig {
        interval: 5 * SECOND,
        unavailable_after: 20 * SECOND,
        ..PollingConfig::default()
    };
    let mut h = Harness::new(Config {
        polling: Some(polling),
        max_attempts: 100,
        ..no_jitter()
    });
    h.client.subscribe_quotes(h.now, ["A"]);
    let id = h.expect_connect();
    h.input(Input::Connected(id));
    // Open but never live: unavailable since the start.
    assert_eq!(h.client.status(h.now).mode, Mode::Streaming);
    let outputs = h.at(10 * SECOND);
    assert!(
        !outputs
            .iter()
            .any(|output| matches!(output, Output::Poll(_)))
    );
    let mut polled = false;
    for second in 11..=20 {
        polled |= h
            .at(Duration::from_secs(second))
            .iter()
            .any(|output| matches!(output, Output::Poll(_)));
    }
    assert!(polled);
    assert_eq!(h.client.status(h.now).mode, Mode::Polling);
}

#[test]
fn close_ends_everything() {
    let mut h = Harness::new(no_jitter());
    let pending = h.client.request_history(h.now, "A", "1D", 1);
    let id = h.go_live();
    h.client.close();
    let outputs = h.drain();
    assert_eq!(closes(&outputs), [DisconnectCause::ClientClosed]);
    assert!(events(&outputs).iter().any(|event| matches!(event, Event::History(HistoryEvent { id, result: Err(HistoryError::Closed), .. }) if *id == pending)));
    assert_eq!(h.client.poll_timeout(), None);
    assert_eq!(h.client.status(h.now).state, State::Closed);
    // Nothing more, whatever happens.
    h.raw(id, "~m~4~m~~h~1");
    h.input(Input::Disconnected {
        id,
        error: TransportError::new(TransportErrorKind::Reset, "x"),
    });
    h.client.subscribe_quotes(h.now, ["A"]);
    assert_eq!(
        h.client.subscribe_bars(h.now, "A", "1", 1),
        Err(BarsError::Closed)
    );
    assert!(h.at(1_000 * SECOND).is_empty());
    assert!(h.drain().is_empty());
}

#[test]
fn inputs_for_other_connections_are_ignored() {
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    let stale = ConnectionId(id.0 + 100);
    assert!(h.raw(stale, "~m~4~m~~h~1").is_empty());
    assert!(
        h.input(Input::Disconnected {
            id: stale,
            error: TransportError::new(TransportErrorKind::Reset, "x")
        })
        .is_empty()
    );
    assert_eq!(h.client.status(h.now).state, State::Live);
}

#[test]
fn garbage_is_counted_not_fatal() {
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    let outputs = h.raw(id, "~m~9999~m~{}garbage~m~x~m~");
    assert!(closes(&outputs).is_empty());
    let counters = h.client.status(h.now).counters;
    assert!(counters.decode_errors >= 1, "{counters:?}");
    h.server(id, "{not json");
    assert!(h.client.status(h.now).counters.decode_errors > counters.decode_errors);
}

#[test]
fn max_age_rotates_the_connection() {
    let mut h = Harness::new(Config {
        max_age: Some(60 * SECOND),
        read_timeout: 1_000 * SECOND,
        ..no_jitter()
    });
    let id = h.go_live();
    for second in (5..60).step_by(5) {
        h.now = h.start + Duration::from_secs(second);
        h.server(id, r#"{"m":"quote_completed","p":["qs","A"]}"#);
        assert!(closes(&h.at(Duration::from_secs(second))).is_empty());
    }
    assert_eq!(closes(&h.at(60 * SECOND)), [DisconnectCause::MaxAge]);
    assert!(connect_id(&h.at(62 * SECOND)).is_some());
}

/// Found by the `client` fuzz target: a connect decided but not yet collected by the driver
/// came out after `close()`.
#[test]
fn close_withdraws_requests_the_driver_has_not_collected() {
    let mut h = Harness::new(no_jitter());
    h.client.handle_timeout(h.now);
    h.client.close();
    let outputs = h.drain();
    assert!(connect_id(&outputs).is_none(), "{outputs:?}");
    assert!(
        closes(&outputs).is_empty(),
        "nothing was opened, so nothing to close"
    );

    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    h.client.subscribe_quotes(h.now, ["A"]);
    h.client.close();
    let outputs = h.drain();
    assert!(
        transmits(&outputs).is_empty(),
        "queued sends are withdrawn: {outputs:?}"
    );
    assert!(matches!(outputs.first(), Some(Output::Close { id: closed, .. }) if *closed == id));
}

/// Found by the `client` fuzz target: a subscription made after the polling threshold had
/// passed left `poll_timeout` in the past until the next timer call.
#[test]
fn app_commands_leave_no_timer_in_the_past() {
    let polling = PollingConfig {
        interval: SECOND,
        unavailable_after: 5 * SECOND,
        ..PollingConfig::default()
    };
    let mut h = Harness::new(Config {
        polling: Some(polling),
        ..no_jitter()
    });
    let id = h.expect_connect();
    h.input(Input::ConnectFailed {
        id,
        error: TransportError::new(TransportErrorKind::Refused, "refused"),
    });
    // The driver runs what is due (the next attempt), then the application subscribes.
    h.at(30 * SECOND);
    h.client.subscribe_quotes(h.now, ["A"]);
    assert!(h.client.poll_timeout().is_some_and(|due| due >= h.now));
    assert_eq!(h.client.status(h.now).mode, Mode::Polling);
    assert!(
        h.drain()
            .iter()
            .any(|output| matches!(output, Output::Poll(_)))
    );
}

#[test]
fn subscriptions_and_history_have_bounds_with_clear_outcomes() {
    let mut h = Harness::new(Config {
        max_subscriptions: 2,
        max_history_bars: 3,
        burst: 100,
        ..no_jitter()
    });
    assert_eq!(
        h.client.subscribe_quotes(h.now, ["A", "B", "C"]),
        2,
        "the third is refused"
    );
    assert_eq!(
        h.client.subscribe_quotes(h.now, ["A"]),
        0,
        "already subscribed"
    );
    assert!(h.client.subscribe_bars(h.now, "A", "1", 5).is_ok());
    assert!(h.client.subscribe_bars(h.now, "B", "1", 5).is_ok());
    assert!(
        h.client.subscribe_bars(h.now, "C", "1", 5).is_err(),
        "past the bound"
    );
    let request = h.client.request_history(h.now, "A", "1D", 10);
    let id = h.go_live();
    let outputs = h.bars(
        id,
        "timescale_update",
        request.0,
        &[(1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (4.0, 4.0)],
    );
    assert!(events(&outputs).iter().any(|event| matches!(
        event,
        Event::History(HistoryEvent { id, result: Err(HistoryError::TooManyBars(3)), .. }) if *id == request
    )));
    assert!(methods(&outputs).contains(&"remove_series".to_owned()));
}

#[test]
fn critical_error_naming_a_chart_command_fails_that_request_at_once() {
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    let history = h.client.request_history(h.now, "A", "60", 10);
    let series = h.client.subscribe_bars(h.now, "B", "1D", 10).unwrap();
    h.drain();
    let chart = h.chart_session();
    let detail = format!(
        r#"method: create_series. args: \"[sds_{}, s1, sds_sym_{}, 60, 10, ]\""#,
        history.0, history.0
    );
    let outputs = h.server(
        id,
        &format!(r#"{{"m":"critical_error","p":["{chart}","invalid parameters","{detail}"]}}"#),
    );
    let answered: Vec<&Event> = events(&outputs);
    assert!(
        answered.iter().any(|event| matches!(event,
            Event::History(HistoryEvent { id, result: Err(HistoryError::Rejected(reason)), .. })
                if *id == history && reason.contains("invalid parameters") && reason.contains("create_series"))),
        "{answered:?}"
    );
    assert!(h.client.pending_history().is_empty());
    assert_eq!(
        h.client.bar_subscriptions().len(),
        1,
        "the other request stands"
    );
    assert!(closes(&outputs).is_empty(), "the socket stays");
    // Naming no id, it fails what the server has not answered yet: here the bar series.
    let outputs = h.server(
        id,
        &format!(
            r#"{{"m":"critical_error","p":["{chart}","invalid parameters","create_series"]}}"#
        ),
    );
    assert!(events(&outputs).iter().any(|event| matches!(event,
        Event::SeriesError { series: failed, reason, .. } if *failed == series && reason.contains("rejected"))));
    assert!(h.client.bar_subscriptions().is_empty());
    // On the quote session it is only reported.
    let quote = h.quote_session();
    let outputs = h.server(
        id,
        &format!(
            r#"{{"m":"critical_error","p":["{quote}","invalid_parameters","quote_add_symbols"]}}"#
        ),
    );
    assert!(matches!(
        events(&outputs)[..],
        [Event::CriticalError { .. }]
    ));
}

#[test]
fn time_that_runs_backwards_is_read_as_the_latest_time_seen() {
    let mut h = Harness::new(no_jitter());
    let id = h.expect_connect();
    h.input(Input::ConnectFailed {
        id,
        error: TransportError::new(TransportErrorKind::Refused, "refused"),
    });
    let due = h.client.poll_timeout().unwrap();
    h.now = due;
    assert!(connect_id(&h.at(due - h.start)).is_some());
    // A clock that jumps back fires nothing early and moves no deadline back.
    let deadline = h.client.deadline(Timer::Connect).unwrap();
    h.client.handle_timeout(h.start);
    assert!(h.drain().is_empty());
    assert_eq!(h.client.deadline(Timer::Connect), Some(deadline));
    assert_eq!(h.client.next_timer(), Some((Timer::Connect, deadline)));
}

#[test]
fn a_young_connection_that_drops_is_a_failure_and_a_stable_one_is_not() {
    let mut h = Harness::new(no_jitter());
    h.client.subscribe_quotes(h.now, ["A"]);
    let id = h.go_live();
    let session = h.quote_session();
    h.server(id, &qsd(&session, "A", r#""lp":1"#));
    assert_eq!(
        h.client.deadline(Timer::Stable),
        Some(h.start + 30 * SECOND)
    );
    h.input(Input::Disconnected {
        id,
        error: TransportError::new(TransportErrorKind::Reset, "reset"),
    });
    let status = h.client.status(h.now);
    assert_eq!(status.consecutive_failures, 1);
    assert_eq!(
        status.next_attempt,
        Some(h.now + SECOND),
        "backoff, not grace"
    );
}

#[test]
fn the_first_protocol_error_on_a_stable_connection_is_not_a_failure_but_a_repeat_is() {
    let mut h = Harness::new(no_jitter());
    let id = h.go_live();
    h.heartbeats_until(id, 10 * SECOND, 40 * SECOND);
    h.server(id, r#"{"m":"protocol_error","p":["wrong data"]}"#);
    assert_eq!(h.client.status(h.now).consecutive_failures, 0);
    let at = h.client.poll_timeout().unwrap() - h.start;
    let id = connect_id(&h.at(at)).unwrap();
    h.input(Input::Connected(id));
    h.server(id, r#"{"protocol":"json"}"#);
    h.heartbeats_until(id, 10 * SECOND, at + 40 * SECOND);
    h.server(id, r#"{"m":"protocol_error","p":["wrong data"]}"#);
    assert_eq!(h.client.status(h.now).consecutive_failures, 1);
}

#[test]
fn out_of_session_symbols_are_counted_through_subscribe_changes() {
    let mut h = Harness::new(no_jitter());
    h.client.subscribe_quotes(h.now, ["A", "B"]);
    let id = h.go_live();
    let session = h.quote_session();
    h.server(
        id,
        &qsd(&session, "A", r#""current_session":"out_of_session""#),
    );
    assert_eq!(h.client.status(h.now).market.out_of_session, 1);
    let outputs = h.server(
        id,
        &qsd(&session, "B", r#""current_session":"out_of_session""#),
    );
    assert!(
        events(&outputs)
            .iter()
            .any(|event| matches!(event, Event::Market(status) if status.market == Market::Closed))
    );
    h.client.unsubscribe_quotes(h.now, ["A"]);
    assert_eq!(h.client.status(h.now).market.out_of_session, 1);
    // Closed: heartbeats for an hour take no verdict; only the read timeout still applies.
    let outputs = h.heartbeats_until(id, 10 * SECOND, 3_600 * SECOND);
    assert!(closes(&outputs).is_empty(), "{:?}", closes(&outputs));
    let outputs = h.at(3_600 * SECOND + 16 * SECOND);
    assert_eq!(closes(&outputs), [DisconnectCause::ReadTimeout]);
}

#[test]
fn the_token_never_appears_in_debug_output() {
    let mut h = Harness::new(Config {
        auth_token: "eyJtopsecret".to_owned(),
        ..no_jitter()
    });
    h.client.set_auth_token("eyJalsosecret");
    let shown = format!(
        "{:?} {:?}",
        h.client,
        Input::AuthToken(Some(AuthToken::new("eyJnewone")))
    );
    assert!(
        !shown.contains("secret") && !shown.contains("newone"),
        "{shown}"
    );
    assert!(shown.contains("<redacted, 13 chars>") && shown.contains("<redacted, 9 chars>"));
}

// ----- token lifetime ----------------------------------------------------------------------------

fn token_requests(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|output| matches!(output, Output::RequestAuthToken))
        .count()
}

#[test]
fn a_token_is_refreshed_before_it_expires_and_handed_to_the_open_connection() {
    let mut h = Harness::new(Config {
        auth_token: "eyJfirst".to_owned(),
        auth_token_lifetime: Some(100 * SECOND),
        ..no_jitter()
    });
    assert_eq!(
        h.client.status(h.now).auth.expires_at,
        Some(h.start + 100 * SECOND)
    );
    let id = h.go_live();
    assert_eq!(
        token_requests(&h.heartbeats_until(id, 10 * SECOND, 79 * SECOND)),
        0
    );
    assert_eq!(token_requests(&h.at(80 * SECOND)), 1);
    // Nothing more is asked while the answer is on its way.
    assert_eq!(
        token_requests(&h.heartbeats_until(id, 4 * SECOND, 85 * SECOND)),
        0
    );
    let outputs = h.input(Input::AuthToken(Some(
        AuthToken::new("eyJsecond").valid_for(100 * SECOND),
    )));
    let sent = transmits(&outputs);
    assert_eq!(sent.len(), 1, "{outputs:?} {:?}", h.client.status(h.now));
    assert!(
        sent[0].contains(r#"{"m":"set_auth_token","p":["eyJsecond"]}"#),
        "{sent:?}"
    );
    assert!(
        outputs
            .iter()
            .all(|output| !matches!(output, Output::Close { .. }))
    );
    assert!(events(&outputs).iter().any(|event| matches!(
        event,
        Event::AuthTokenRefreshed { lifetime: Some(lifetime) } if *lifetime == 100 * SECOND
    )));
    let status = h.client.status(h.now);
    assert_eq!(status.connection, Some(id));
    assert_eq!(status.auth.expires_at, Some(h.now + 100 * SECOND));
    assert_eq!(status.auth.next_refresh, Some(h.now + 80 * SECOND));
    assert_eq!(
        h.client.deadline(Timer::TokenRefresh),
        Some(h.now + 80 * SECOND)
    );
}

#[test]
fn a_refresh_that_brings_no_fresh_token_backs_off_and_never_loops() {
    let mut h = Harness::new(Config {
        auth_token: "eyJfirst".to_owned(),
        auth_token_lifetime: Some(100 * SECOND),
        ..no_jitter()
    });
    h.go_live();
    let mut delays = Vec::new();
    let mut t = 80 * SECOND;
    for round in 0..9 {
        let outputs = h.at(t);
        assert_eq!(token_requests(&outputs), 1, "round {round} at {t:?}");
        // No token, the same token, or no answer at all: each is a failed refresh.
        let outputs = match round % 3 {
            0 => h.input(Input::AuthToken(None)),
            1 => h.input(Input::AuthToken(Some(
                AuthToken::new("eyJfirst").valid_for(100 * SECOND),
            ))),
            _ => h.at(t + 10 * SECOND),
        };
        let retry_at = events(&outputs)
            .into_iter()
            .find_map(|event| match event {
                Event::AuthTokenRefreshFailed { retry_at, .. } => Some(*retry_at),
                _ => None,
            })
            .unwrap_or_else(|| panic!("round {round}: {outputs:?}"));
        assert_eq!(h.client.status(h.now).auth.next_refresh, Some(retry_at));
        delays.push((retry_at - h.now).as_secs());
        // Nothing is asked before the reported time.
        assert_eq!(token_requests(&h.at(retry_at - h.start - SECOND / 2)), 0);
        t = retry_at - h.start;
    }
    // The reconnect backoff (1, 2 s), then from max_attempts (3) failures on the breaker's
    // wait: 60 s doubling to its 600 s cap.
    assert_eq!(delays, [1, 2, 60, 120, 240, 480, 600, 600, 600]);
    assert_eq!(h.client.status(h.now).auth.refresh_failures, 9);
}

#[test]
fn a_rejection_during_a_refresh_asks_once_and_the_answer_serves_both() {
    let mut h = Harness::new(Config {
        auth_token: "eyJfirst".to_owned(),
        auth_token_lifetime: Some(100 * SECOND),
        ..no_jitter()
    });
    let id = h.go_live();
    assert_eq!(
        token_requests(&h.heartbeats_until(id, 10 * SECOND, 80 * SECOND)),
        1
    );
    let outputs = h.server(id, r#"{"m":"protocol_error","p":["bad auth token"]}"#);
    assert_eq!(closes(&outputs), [DisconnectCause::BadAuthToken]);
    // The rejection asks too; one answer serves both and the attempt goes at once.
    let outputs = h.input(Input::AuthToken(Some(
        AuthToken::new("eyJsecond").valid_for(100 * SECOND),
    )));
    assert!(connect_id(&outputs).is_some(), "{outputs:?}");
    assert_eq!(
        h.client.deadline(Timer::TokenRefresh),
        Some(h.now + 80 * SECOND)
    );
}

// ----- polling --------------------------------------------------------------------------------

/// A client polling `symbols` after its first attempt failed; returns the first poll request.
fn polling_harness(symbols: &[&str]) -> (Harness, PollRequest) {
    let mut h = Harness::new(Config {
        polling: Some(PollingConfig {
            interval: 10 * SECOND,
            unavailable_after: SECOND,
            timeout: 30 * SECOND,
        }),
        max_attempts: 1_000,
        backoff_max: 3_600 * SECOND,
        ..no_jitter()
    });
    h.client.subscribe_quotes(h.now, symbols);
    let id = h.expect_connect();
    h.input(Input::ConnectFailed {
        id,
        error: TransportError::new(TransportErrorKind::Refused, "refused"),
    });
    let outputs = h.at(SECOND);
    let request = polls(&outputs)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no poll in {outputs:?}"));
    (h, request)
}

fn polls(outputs: &[Output]) -> Vec<PollRequest> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Poll(request) => Some(request.clone()),
            _ => None,
        })
        .collect()
}

/// Moves time forward step by step until the next poll request, failing past `limit`.
fn next_poll(h: &mut Harness, limit: Duration) -> (Duration, PollRequest) {
    loop {
        let due = h.client.poll_timeout().expect("a timer");
        assert!(due - h.start <= limit, "no poll before {limit:?}");
        let outputs = h.at(due - h.start);
        // Connection attempts fail as they come, so only the poller's schedule matters.
        if let Some(id) = connect_id(&outputs) {
            h.input(Input::ConnectFailed {
                id,
                error: TransportError::new(TransportErrorKind::Refused, "refused"),
            });
        }
        if let Some(request) = polls(&outputs).into_iter().next() {
            return (due - h.start, request);
        }
    }
}

#[test]
fn one_poll_is_in_flight_at_most_and_a_silent_poller_times_out() {
    let (mut h, first) = polling_harness(&["A"]);
    assert!(h.client.status(h.now).polling.in_flight);
    // The interval passes without an answer: no second poll until the timeout fails the first.
    let (at, second) = next_poll(&mut h, 3_600 * SECOND);
    assert!(at >= 31 * SECOND, "second poll at {at:?}");
    assert!(second.round > first.round);
    let status = h.client.status(h.now);
    assert_eq!(status.polling.failures, 1);
    assert!(
        status
            .polling
            .last_error
            .is_some_and(|error| error.contains("30s"))
    );
    // The first poll's late answer is ignored.
    let late = h.input(Input::PollResult {
        round: first.round,
        result: Ok(vec![PolledQuote {
            symbol: "A".into(),
            last_price: Some(1.0),
            ..PolledQuote::default()
        }]),
    });
    assert!(quote_events(&late).is_empty());
}

#[test]
fn failed_polls_back_off_growing_and_honour_retry_after() {
    let (mut h, mut request) = polling_harness(&["A"]);
    let mut gaps = Vec::new();
    let mut at = SECOND;
    for round in 0..8 {
        let error = if round == 2 {
            PollError::new(
                PollErrorKind::RateLimited {
                    retry_after: Some(600 * SECOND),
                },
                "HTTP 429",
            )
        } else {
            PollError::new(PollErrorKind::Status(503), "HTTP 503")
        };
        let outputs = h.input(Input::PollResult {
            round: request.round,
            result: Err(error),
        });
        let reported = events(&outputs)
            .into_iter()
            .find_map(|event| match event {
                Event::PollFailed { next_poll, .. } => Some(*next_poll),
                _ => None,
            })
            .expect("PollFailed");
        assert_eq!(h.client.status(h.now).polling.next_poll, Some(reported));
        let (next_at, next) = next_poll(&mut h, 100_000 * SECOND);
        // The delay the status reported is the delay that happened.
        assert_eq!(h.start + next_at, reported, "round {round}");
        gaps.push(next_at - at);
        at = next_at;
        request = next;
    }
    assert!(gaps[2] >= 600 * SECOND, "{gaps:?}");
    assert!(
        gaps[7] > gaps[1] && gaps.iter().all(|gap| *gap >= 10 * SECOND),
        "{gaps:?}"
    );
    // A success resets the backoff: the next poll is one interval away.
    let outputs = h.input(Input::PollResult {
        round: request.round,
        result: Ok(vec![PolledQuote {
            symbol: "A".into(),
            last_price: Some(3.0),
            ..PolledQuote::default()
        }]),
    });
    assert_eq!(quote_events(&outputs).len(), 1);
    assert_eq!(h.client.status(h.now).polling.failures, 0);
    assert_eq!(
        h.client.status(h.now).polling.next_poll,
        Some(h.now + 10 * SECOND)
    );
}

#[test]
fn past_max_attempts_failed_polls_wait_for_the_breaker_recovery() {
    let (mut h, mut request) = polling_harness(&["A"]);
    h.client.config.max_attempts = 3;
    let mut last_gap = Duration::ZERO;
    for _ in 0..4 {
        let before = h.now;
        h.input(Input::PollResult {
            round: request.round,
            result: Err(PollError::new(PollErrorKind::Network, "connection refused")),
        });
        let (_, next) = next_poll(&mut h, 100_000 * SECOND);
        last_gap = h.now - before;
        request = next;
    }
    assert!(last_gap >= 60 * SECOND, "{last_gap:?}");
}

#[test]
fn symbols_a_poll_leaves_out_are_reported_once_until_they_return() {
    let (mut h, first) = polling_harness(&["A", "B", "C"]);
    let answer = |symbols: &[&str]| {
        Ok(symbols
            .iter()
            .map(|symbol| PolledQuote {
                symbol: (*symbol).into(),
                last_price: Some(1.0),
                update_mode: Some("delayed_streaming_900".into()),
                ..PolledQuote::default()
            })
            .collect())
    };
    let missing = |outputs: &[Output]| -> Vec<Vec<Arc<str>>> {
        events(outputs)
            .into_iter()
            .filter_map(|event| match event {
                Event::PollMissing { symbols } => Some(symbols.clone()),
                _ => None,
            })
            .collect()
    };
    let outputs = h.input(Input::PollResult {
        round: first.round,
        result: answer(&["A"]),
    });
    assert_eq!(missing(&outputs), [vec![Arc::from("B"), Arc::from("C")]]);
    let (_, second) = next_poll(&mut h, 3_600 * SECOND);
    let outputs = h.input(Input::PollResult {
        round: second.round,
        result: answer(&["A", "C"]),
    });
    assert!(missing(&outputs).is_empty(), "{outputs:?}");
    let (_, third) = next_poll(&mut h, 3_600 * SECOND);
    let outputs = h.input(Input::PollResult {
        round: third.round,
        result: answer(&["A"]),
    });
    // C came back and went again: news; B is still missing: not news.
    assert_eq!(missing(&outputs), [vec![Arc::from("C")]]);
    let data = h.client.status(h.now).data;
    // B never answered: its mode is unknown.
    assert_eq!((data.delayed, data.realtime, data.unknown), (2, 0, 1));
    assert_eq!(data.summary(), "delayed");
}

#[test]
fn the_status_tells_real_time_from_delayed_quotes() {
    let mut h = Harness::new(no_jitter());
    h.client.subscribe_quotes(h.now, ["A", "B", "C"]);
    let id = h.go_live();
    let session = h.quote_session();
    h.server(id, &qsd(&session, "A", r#""update_mode":"streaming""#));
    h.server(
        id,
        &qsd(&session, "B", r#""update_mode":"delayed_streaming_900""#),
    );
    let data = h.client.status(h.now).data;
    assert_eq!((data.realtime, data.delayed, data.unknown), (1, 1, 1));
    assert_eq!(data.summary(), "mixed");
}

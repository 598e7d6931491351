//! The server side of one connection, without I/O: client packets and market ticks in, server
//! payloads out. Faithful to PROTOCOL.md: client-chosen ids and quote keys are echoed exactly,
//! quotes start with a full snapshot then deltas, charts load history then stream `du`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};
use tickwire_core::json::to_ascii_string;

use crate::auth::{AuthStore, TokenVerdict};
use crate::market::{Instrument, Kind, Market, Tick, timeframe_seconds};

/// Stands for the send time in stamped quotes: 19 digits, the width of Unix nanoseconds.
pub const STAMP_PLACEHOLDER: &str = "0000000000000000000";

/// Bars an anonymous user may load per series.
pub const MAX_BARS: usize = 5_000;

/// The `protocol_error` text of a refused or expired auth token.
pub const BAD_AUTH_TOKEN: &str = "bad auth token";

/// A client command that ends the connection after the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal(pub String);

impl Fatal {
    /// Whether the connection ends because its auth token was refused or expired.
    pub fn is_bad_token(&self) -> bool {
        self.0 == BAD_AUTH_TOKEN
    }
}

/// Auth tokens no connection may use any more (expired or revoked), shared by every connection
/// of an emulator.
#[derive(Debug, Default)]
pub struct RevokedTokens(Mutex<HashSet<String>>);

impl RevokedTokens {
    /// A list holding `tokens`.
    pub fn new<I: IntoIterator<Item = String>>(tokens: I) -> RevokedTokens {
        RevokedTokens(Mutex::new(tokens.into_iter().collect()))
    }

    /// From now on, `set_auth_token` with `token` is refused.
    pub fn revoke(&self, token: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned());
    }

    /// Whether `token` was revoked.
    pub fn is_revoked(&self, token: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(token)
    }
}

#[derive(Debug)]
struct QuoteSymbol {
    index: usize,
    /// The `current_session` this session was last told for the symbol.
    current_session: &'static str,
}

#[derive(Debug, Default)]
struct QuoteSession {
    fields: Option<Vec<String>>,
    /// Quote key as added → symbol.
    symbols: BTreeMap<String, QuoteSymbol>,
}

impl QuoteSession {
    fn wants(&self, field: &str) -> bool {
        wants(self.fields.as_deref(), field)
    }
}

fn wants(fields: Option<&[String]>, field: &str) -> bool {
    fields.is_none_or(|fields| fields.iter().any(|wanted| wanted == field))
}

/// A bar of a session's series: its time and its `i` (the position in that series).
#[derive(Debug, Clone, Copy)]
struct BarMark {
    time: f64,
    index: i64,
}

/// A chart series as this session streams it; the bars themselves are the market's book.
#[derive(Debug)]
struct Series {
    symbol: usize,
    timeframe_secs: u64,
    turnaround: String,
    /// The newest bar this session queued a `du` of.
    sent: BarMark,
    /// The newest bar that reached the socket: a stall or a heartbeats-only stretch that
    /// throws queued `du` away rewinds `sent` to it, so the bars go out again afterwards.
    delivered: BarMark,
}

#[derive(Debug, Default)]
struct ChartSession {
    /// Symbol id → symbol index (`None`: the symbol did not resolve).
    symbols: HashMap<String, Option<usize>>,
    series: BTreeMap<String, Series>,
}

/// The `update_mode` of an instrument's quotes: `streaming` for a connection authenticated
/// with a valid JWT and for crypto, `delayed_streaming_900` otherwise.
pub(crate) fn update_mode(kind: Kind, authenticated: bool) -> &'static str {
    if authenticated || kind == Kind::Crypto {
        "streaming"
    } else {
        "delayed_streaming_900"
    }
}

/// One connection's protocol state.
#[derive(Debug, Default)]
pub struct Session {
    token: Option<String>,
    /// The `exp` (Unix seconds) of the current token when it is a valid JWT the emulator
    /// issued: the connection is authenticated until then.
    token_expires: Option<u64>,
    /// Who issued which JWTs; without it every JWT is refused.
    auth: Option<Arc<AuthStore>>,
    /// Refuse every `set_auth_token`, whatever the token (the `bad-token` fault).
    reject_tokens: bool,
    revoked: Arc<RevokedTokens>,
    quote_sessions: BTreeMap<String, QuoteSession>,
    chart_sessions: BTreeMap<String, ChartSession>,
    /// `quote_create_session` ids not yet taken by [`Session::take_created_quote_sessions`].
    created_quote_sessions: Vec<String>,
}

/// The hello the server sends first, its fields in the real server's order (`session_id`
/// first), compact ASCII JSON.
pub fn hello(now: f64, connection: u64) -> String {
    let session_id = to_ascii_string(&format!(
        "<0.{connection}.1>_emu-charts-1@tickwire-emulator"
    ))
    .unwrap_or_default();
    let seconds = now.floor() as u64;
    let millis = (now * 1000.0).round() as u64;
    format!(
        concat!(
            r#"{{"session_id":{},"timestamp":{},"timestampMs":{},"#,
            r#""release":"tickwire-emulator","#,
            r#""studies_metadata_hash":"0000000000000000000000000000000000000000","#,
            r#""auth_scheme_vsn":2,"protocol":"json","via":"127.0.0.1:443","javastudies":["3.66"]}}"#
        ),
        session_id, seconds, millis
    )
}

fn message(method: &str, params: Value) -> String {
    to_ascii_string(&json!({ "m": method, "p": params })).unwrap_or_default()
}

/// Chart-session packets carry the server time.
fn timed_message(method: &str, params: Value, now: f64) -> String {
    to_ascii_string(&json!({ "m": method, "p": params, "t": now.floor() as u64, "t_ms": (now * 1000.0).round() as u64 }))
        .unwrap_or_default()
}

fn text(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str)
}

/// The symbol a quote key or resolve spec names: the key itself, or the `symbol` of an
/// `=`+JSON spec (possibly nested, as replay and custom bar types send it).
fn symbol_name(key: &str) -> Option<String> {
    let Some(spec) = key.strip_prefix('=') else {
        return Some(key.to_owned());
    };
    let spec: Value = serde_json::from_str(spec).ok()?;
    match spec.get("symbol")? {
        Value::String(name) => Some(name.clone()),
        nested => nested
            .get("symbol")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

/// A `qsd` delta written straight into a string: it runs for every tick and subscriber, so it
/// skips building a JSON tree. Numbers use Rust's shortest round-trip formatting, which is
/// valid JSON for every finite value.
fn quote_delta(
    session: &str,
    key: &str,
    instrument: &Instrument,
    fields: Option<&[String]>,
    time: f64,
    stamp: bool,
) -> String {
    use std::fmt::Write as _;
    let wanted = |name: &str| wants(fields, name);
    let mut values = String::with_capacity(160);
    let mut put = |name: &str, value: &dyn std::fmt::Display| {
        if wanted(name) {
            let separator = if values.is_empty() { "" } else { "," };
            let _ = write!(values, "{separator}\"{name}\":{value}");
        }
    };
    let (bid, ask) = instrument.bid_ask();
    put("lp", &instrument.price);
    put("ch", &instrument.change());
    put("chp", &instrument.change_percent());
    put("lp_time", &(time.floor() as u64));
    match instrument.kind {
        crate::market::Kind::Index => put("volume", &"1e100"),
        crate::market::Kind::Forex => {}
        _ => put("volume", &instrument.volume),
    }
    put("bid", &bid);
    put("ask", &ask);
    if stamp {
        let separator = if values.is_empty() { "" } else { "," };
        let _ = write!(values, "{separator}\"emu_ns\":\"{STAMP_PLACEHOLDER}\"");
    }
    let session = to_ascii_string(session).unwrap_or_default();
    let key = to_ascii_string(key).unwrap_or_default();
    format!(r#"{{"m":"qsd","p":[{session},{{"n":{key},"s":"ok","v":{{{values}}}}}]}}"#)
}

/// A `qsd` delta of just `current_session`, as the real server sends when a symbol's session
/// opens or closes.
fn session_delta(session: &str, key: &str, current_session: &str) -> String {
    message(
        "qsd",
        json!([session, {"n": key, "s": "ok", "v": {"current_session": current_session}}]),
    )
}

/// The `critical_error` the real server sends for a series command with bad parameters: every
/// parameter after the session, in order, strings bare, joined by ", " (so an empty last range
/// string ends it in ", ]").
fn invalid_parameters(session: &str, method: &str, params: &[Value]) -> String {
    let args: Vec<String> = params
        .iter()
        .skip(1)
        .map(|param| match param {
            Value::String(text) => text.clone(),
            other => to_ascii_string(other).unwrap_or_default(),
        })
        .collect();
    let detail = format!("method: {method}. args: \"[{}]\"", args.join(", "));
    message(
        "critical_error",
        json!([session, "invalid parameters", detail]),
    )
}

fn quote_values(
    instrument: &Instrument,
    fields: Option<&[String]>,
    full: bool,
    current_session: &str,
    authenticated: bool,
    now: f64,
) -> Value {
    let (bid, ask) = instrument.bid_ask();
    let mut values = serde_json::Map::new();
    let mut put = |name: &str, value: Value| {
        if wants(fields, name) {
            values.insert(name.to_owned(), value);
        }
    };
    put("lp", json!(instrument.price));
    put("ch", json!(instrument.change()));
    put("chp", json!(instrument.change_percent()));
    put("lp_time", json!(now.floor() as u64));
    match instrument.kind {
        crate::market::Kind::Index => put("volume", json!(1e100)),
        crate::market::Kind::Forex => {}
        _ => put("volume", json!(instrument.volume)),
    }
    put("bid", json!(bid));
    put("ask", json!(ask));
    if full {
        put("prev_close_price", json!(instrument.prev_close));
        put("description", json!(instrument.description));
        put(
            "short_name",
            json!(
                instrument
                    .name
                    .split(':')
                    .nth(1)
                    .unwrap_or(&instrument.name)
            ),
        );
        put("pro_name", json!(instrument.name));
        put(
            "exchange",
            json!(instrument.name.split(':').next().unwrap_or_default()),
        );
        put("currency_code", json!("USD"));
        put(
            "update_mode",
            json!(update_mode(instrument.kind, authenticated)),
        );
        put("current_session", json!(current_session));
        put(
            "type",
            json!(format!("{:?}", instrument.kind).to_lowercase()),
        );
    }
    Value::Object(values)
}

fn bar_values(bar: &[f64; 6], with_volume: bool) -> Value {
    if with_volume {
        json!(bar)
    } else {
        json!(&bar[..5])
    }
}

impl Session {
    /// A fresh connection.
    pub fn new() -> Session {
        Session::default()
    }

    /// A fresh connection that refuses the tokens in `revoked` (a list shared with other
    /// connections).
    pub fn with_revoked_tokens(revoked: Arc<RevokedTokens>) -> Session {
        Session {
            revoked,
            ..Session::default()
        }
    }

    /// A fresh connection that refuses the tokens in `revoked` and judges JWTs by `auth`: those
    /// it issued are good until their `exp` or until their session is signed out, every other
    /// JWT is refused.
    pub(crate) fn with_auth(revoked: Arc<RevokedTokens>, auth: Arc<AuthStore>) -> Session {
        Session {
            revoked,
            auth: Some(auth),
            ..Session::default()
        }
    }

    /// When the connection's token, a JWT the emulator issued, expires (Unix seconds); `None`
    /// for other tokens and without one.
    pub fn token_expires_at(&self) -> Option<u64> {
        self.token_expires
    }

    /// From now on every `set_auth_token` is refused, whatever the token.
    pub fn reject_every_token(&mut self) {
        self.reject_tokens = true;
    }

    /// The auth token the connection was accepted with, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The connection's token expires now: it is revoked for every connection, and this one
    /// gets `protocol_error` "bad auth token" in `out`.
    ///
    /// # Errors
    /// [`Fatal`] (the connection must close after `out` is sent) when the connection had a
    /// token; without one nothing happens.
    pub fn expire_token(&mut self, out: &mut Vec<String>) -> Result<(), Fatal> {
        let Some(token) = self.token.take() else {
            return Ok(());
        };
        self.token_expires = None;
        self.revoked.revoke(&token);
        out.push(message("protocol_error", json!([BAD_AUTH_TOKEN])));
        Err(Fatal(BAD_AUTH_TOKEN.into()))
    }

    /// The ids of the `quote_create_session` commands handled since the last call, in order.
    pub fn take_created_quote_sessions(&mut self) -> Vec<String> {
        std::mem::take(&mut self.created_quote_sessions)
    }

    /// Whether any quote or chart session exists (the client has set up).
    pub fn has_sessions(&self) -> bool {
        !self.quote_sessions.is_empty() || !self.chart_sessions.is_empty()
    }

    /// Handles one client JSON payload, appending reply payloads to `out`.
    ///
    /// # Errors
    /// [`Fatal`] when the connection must close after `out` is sent (a rejected token).
    ///
    /// The market is mutable because a chart series starts the market's bar book for its
    /// symbol and timeframe ([`Market::track_bars`]).
    pub fn handle(
        &mut self,
        payload: &str,
        market: &mut Market,
        now: f64,
        out: &mut Vec<String>,
    ) -> Result<(), Fatal> {
        let Ok(command) = serde_json::from_str::<Value>(payload) else {
            out.push(message("protocol_error", json!(["wrong data"])));
            return Ok(());
        };
        let method = text(command.get("m")).unwrap_or_default();
        let empty = Vec::new();
        let params = command.get("p").and_then(Value::as_array).unwrap_or(&empty);
        let session = text(params.first()).unwrap_or_default().to_owned();
        let strings = || {
            params
                .iter()
                .skip(1)
                .filter_map(Value::as_str)
                .map(str::to_owned)
        };
        match method {
            "set_auth_token" => {
                let token = text(params.first()).unwrap_or_default();
                let verdict = match &self.auth {
                    Some(auth) => auth.check_token(token, now),
                    None if crate::auth::jwt_claims(token).is_some() => TokenVerdict::Refused,
                    None => TokenVerdict::NotJwt,
                };
                if self.reject_tokens
                    || token.is_empty()
                    || token.starts_with("bad")
                    || self.revoked.is_revoked(token)
                    || verdict == TokenVerdict::Refused
                {
                    out.push(message("protocol_error", json!([BAD_AUTH_TOKEN])));
                    return Err(Fatal(BAD_AUTH_TOKEN.into()));
                }
                // A later token replaces the earlier one (and its expiry) without an answer.
                self.token = Some(token.to_owned());
                self.token_expires = match verdict {
                    TokenVerdict::Valid { expires_at } => Some(expires_at),
                    TokenVerdict::NotJwt | TokenVerdict::Refused => None,
                };
            }
            "quote_create_session" => {
                self.created_quote_sessions.push(session.clone());
                self.quote_sessions.entry(session).or_default();
            }
            "quote_delete_session" => {
                self.quote_sessions.remove(&session);
            }
            "quote_set_fields" => {
                if let Some(quotes) = self.quote_sessions.get_mut(&session) {
                    quotes.fields = Some(strings().collect());
                }
            }
            "quote_add_symbols" => {
                let Some(quotes) = self.quote_sessions.get_mut(&session) else {
                    out.push(message(
                        "critical_error",
                        json!([session, "invalid_parameters", "quote_add_symbols"]),
                    ));
                    return Ok(());
                };
                for key in strings() {
                    match symbol_name(&key).and_then(|name| market.lookup(&name)) {
                        Some(index) => {
                            let Some(instrument) = market.instrument(index) else {
                                continue;
                            };
                            let current_session = market.current_session(index);
                            let values = quote_values(
                                instrument,
                                quotes.fields.as_deref(),
                                true,
                                current_session,
                                self.token_expires.is_some(),
                                market.time_at(now),
                            );
                            out.push(message(
                                "qsd",
                                json!([session, {"n": key, "s": "ok", "v": values}]),
                            ));
                            out.push(message("quote_completed", json!([session, key])));
                            quotes.symbols.insert(
                                key,
                                QuoteSymbol {
                                    index,
                                    current_session,
                                },
                            );
                        }
                        None => {
                            out.push(message(
                                "qsd",
                                json!([session, {"n": key, "s": "error", "errmsg": "no_such_symbol", "v": {}}]),
                            ));
                        }
                    }
                }
            }
            "quote_remove_symbols" => {
                if let Some(quotes) = self.quote_sessions.get_mut(&session) {
                    for key in strings() {
                        quotes.symbols.remove(&key);
                    }
                }
            }
            "chart_create_session" => {
                self.chart_sessions.entry(session).or_default();
            }
            "chart_delete_session" => {
                self.chart_sessions.remove(&session);
            }
            "resolve_symbol" => self.resolve_symbol(&session, params, market, now, out),
            "create_series" | "modify_series" => {
                self.create_series(method, &session, params, market, now, out)
            }
            "remove_series" => {
                if let (Some(chart), Some(series)) =
                    (self.chart_sessions.get_mut(&session), text(params.get(1)))
                {
                    chart.series.remove(series);
                }
            }
            // Accepted and ignored, as the real server does for these from anonymous users.
            _ => {}
        }
        Ok(())
    }

    fn resolve_symbol(
        &mut self,
        session: &str,
        params: &[Value],
        market: &Market,
        now: f64,
        out: &mut Vec<String>,
    ) {
        let Some(chart) = self.chart_sessions.get_mut(session) else {
            return;
        };
        let (Some(symbol_id), Some(spec)) = (text(params.get(1)), text(params.get(2))) else {
            return;
        };
        let resolved = symbol_name(spec).and_then(|name| market.lookup(&name));
        chart.symbols.insert(symbol_id.to_owned(), resolved);
        match resolved.and_then(|index| market.instrument(index)) {
            Some(instrument) => {
                let exchange = instrument.name.split(':').next().unwrap_or_default();
                let info = json!({
                    "name": instrument.name.split(':').nth(1).unwrap_or(&instrument.name),
                    "full_name": instrument.name,
                    "pro_name": instrument.name,
                    "description": instrument.description,
                    "exchange": exchange,
                    "listed_exchange": exchange,
                    "type": format!("{:?}", instrument.kind).to_lowercase(),
                    "currency_code": "USD",
                    "pricescale": 100_000,
                    "minmov": 1,
                    "timezone": "Etc/UTC",
                    "session": "24x7",
                    "has_intraday": true,
                    "delay": 0,
                });
                out.push(timed_message(
                    "symbol_resolved",
                    json!([session, symbol_id, info]),
                    now,
                ));
            }
            None => out.push(timed_message(
                "symbol_error",
                json!([session, symbol_id, "invalid symbol"]),
                now,
            )),
        }
    }

    fn create_series(
        &mut self,
        method: &str,
        session: &str,
        params: &[Value],
        market: &mut Market,
        now: f64,
        out: &mut Vec<String>,
    ) {
        let Some(chart) = self.chart_sessions.get_mut(session) else {
            return;
        };
        let (Some(series_id), Some(turnaround), Some(symbol_id), Some(timeframe)) = (
            text(params.get(1)),
            text(params.get(2)),
            text(params.get(3)),
            text(params.get(4)),
        ) else {
            out.push(invalid_parameters(session, method, params));
            return;
        };
        let Some(timeframe_secs) = timeframe_seconds(timeframe) else {
            out.push(invalid_parameters(session, method, params));
            return;
        };
        // A symbol that failed to resolve already had its symbol_error: the series never completes.
        let Some(Some(symbol)) = chart.symbols.get(symbol_id).copied() else {
            return;
        };
        if timeframe.ends_with('S') {
            out.push(timed_message(
                "series_error",
                json!([session, series_id, turnaround, "seconds_not_entitled"]),
                now,
            ));
            return;
        }
        let requested = params.get(5).and_then(Value::as_u64).unwrap_or(300) as usize;
        let count = requested.clamp(1, MAX_BARS);
        if market.instrument(symbol).is_none() {
            return;
        }
        let market_now = market.time_at(now);
        // The only refusal left: the book holds as many series as it may.
        if !market.track_bars(symbol, timeframe_secs, count, market_now) {
            out.push(timed_message(
                "series_error",
                json!([session, series_id, turnaround, "too_many_series"]),
                now,
            ));
            return;
        }
        let (Some(instrument), Some(book)) = (
            market.instrument(symbol),
            market.bars(symbol, timeframe_secs),
        ) else {
            return;
        };
        // The newest `count` bars of the book: what any other session streamed or was served.
        let bars: Vec<[f64; 6]> = book
            .range(book.len().saturating_sub(count)..)
            .copied()
            .collect();
        out.push(timed_message(
            "series_loading",
            json!([session, series_id, turnaround]),
            now,
        ));
        let rows: Vec<Value> = bars
            .iter()
            .enumerate()
            .map(|(index, bar)| json!({"i": index, "v": bar_values(bar, instrument.has_volume())}))
            .collect();
        let last = bars.last().copied();
        let close_time = last.map_or(market_now, |bar| bar[0] + timeframe_secs as f64);
        let entry = json!({
            "node": "emu-series-1",
            "s": rows,
            "ns": {"d": "", "indexes": []},
            "t": turnaround,
            "lbs": {"bar_close_time": close_time as u64},
        });
        let timescale = json!({"index": bars.len().saturating_sub(1), "zoffset": 0, "changes": [], "marks": [], "index_diff": []});
        out.push(timed_message(
            "timescale_update",
            json!([session, {series_id: entry}, timescale]),
            now,
        ));
        let mut completion = json!({"rt_update_period": 5});
        if requested > count {
            completion["data_completed"] = json!("limit");
        }
        out.push(timed_message(
            "series_completed",
            json!([session, series_id, "streaming", turnaround, completion]),
            now,
        ));
        let newest = BarMark {
            time: last.map_or(f64::NEG_INFINITY, |bar| bar[0]),
            index: bars.len().saturating_sub(1) as i64,
        };
        chart.series.insert(
            series_id.to_owned(),
            Series {
                symbol,
                timeframe_secs,
                turnaround: turnaround.to_owned(),
                sent: newest,
                delivered: newest,
            },
        );
    }

    /// A market tick: a `qsd` delta for every quote session that has the symbol, a `du` for
    /// every series of it. The `du` carries the market's bar book as it is now (the tick is
    /// already in it: [`Market::tick`] put it there), from the bar this session sent last on.
    ///
    /// With `stamp`, each quote gets an `emu_ns` field holding [`STAMP_PLACEHOLDER`], which the
    /// server replaces with the Unix nanoseconds of the write, so a benchmark can measure
    /// latency from the emulator's send to the application.
    ///
    /// A symbol out of session gets nothing (a tick made before it closed may still arrive).
    pub fn on_tick(&mut self, tick: &Tick, market: &Market, stamp: bool, out: &mut Vec<String>) {
        let Some(instrument) = market.instrument(tick.symbol) else {
            return;
        };
        if !market.is_trading(tick.symbol) {
            return;
        }
        for (session, quotes) in &self.quote_sessions {
            for (key, _) in quotes
                .symbols
                .iter()
                .filter(|(_, symbol)| symbol.index == tick.symbol)
            {
                out.push(quote_delta(
                    session,
                    key,
                    instrument,
                    quotes.fields.as_deref(),
                    tick.time,
                    stamp,
                ));
            }
        }
        for (session, chart) in &mut self.chart_sessions {
            for (series_id, series) in chart
                .series
                .iter_mut()
                .filter(|(_, series)| series.symbol == tick.symbol)
            {
                let Some(book) = market.bars(series.symbol, series.timeframe_secs) else {
                    continue;
                };
                // From the bar this session sent last: its state now (it may have closed since,
                // in ticks this session has not seen yet), then every newer bar, so each bar's
                // final state is streamed whatever this session's lag.
                let unsent = book
                    .iter()
                    .rev()
                    .take_while(|bar| bar[0] >= series.sent.time)
                    .count();
                let mut rows = Vec::with_capacity(unsent);
                let mut close_time = None;
                for bar in book.range(book.len().saturating_sub(unsent)..) {
                    if bar[0] > series.sent.time {
                        series.sent = BarMark {
                            time: bar[0],
                            index: series.sent.index + 1,
                        };
                    }
                    rows.push(
                        json!({"i": series.sent.index, "v": bar_values(bar, instrument.has_volume())}),
                    );
                    close_time = Some(bar[0] + series.timeframe_secs as f64);
                }
                let Some(close_time) = close_time else {
                    continue;
                };
                let entry = json!({
                    "s": rows,
                    "ns": {"d": "", "indexes": "nochange"},
                    "t": series.turnaround,
                    "lbs": {"bar_close_time": close_time as u64},
                });
                out.push(message("du", json!([session, {series_id.as_str(): entry}])));
            }
        }
    }

    /// Every `du` handed out so far reached the socket.
    pub fn bars_delivered(&mut self) {
        for series in self.all_series() {
            series.delivered = series.sent;
        }
    }

    /// The `du` handed out since the last [`Session::bars_delivered`] were thrown away (a
    /// stall, a heartbeats-only stretch): the next `du` of each series starts again from the
    /// newest bar the client has, so it still gets the final state of every bar.
    pub fn bars_discarded(&mut self) {
        for series in self.all_series() {
            series.sent = series.delivered;
        }
    }

    fn all_series(&mut self) -> impl Iterator<Item = &mut Series> {
        self.chart_sessions
            .values_mut()
            .flat_map(|chart| chart.series.values_mut())
    }

    /// The market opened or closed: every quote session gets a `qsd` delta of just the new
    /// `current_session` for each of its symbols whose session changed since it was last told
    /// (sessions whose field list leaves out `current_session` are told nothing).
    pub fn on_market_session(&mut self, market: &Market, out: &mut Vec<String>) {
        for (session, quotes) in &mut self.quote_sessions {
            let told = quotes.wants("current_session");
            for (key, symbol) in &mut quotes.symbols {
                let now = market.current_session(symbol.index);
                if now != symbol.current_session {
                    symbol.current_session = now;
                    if told {
                        out.push(session_delta(session, key, now));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickwire_core::message::{self, ServerMessage};

    fn run(session: &mut Session, market: &mut Market, payload: &str) -> Vec<String> {
        let mut out = Vec::new();
        session
            .handle(payload, market, 1_700_000_030.0, &mut out)
            .unwrap();
        out
    }

    /// The bars of a `timescale_update` or `du` payload.
    fn bars_in(payload: &str) -> Vec<message::Bar> {
        match message::parse(payload.as_bytes()) {
            Ok(ServerMessage::TimescaleUpdate(update) | ServerMessage::DataUpdate(update)) => {
                update
                    .series
                    .iter()
                    .flat_map(|series| series.bars.iter().copied())
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// A chart session `chart` with a series of BTC 1-minute bars, `count` of history; the
    /// history it was served.
    fn btc_minutes(
        session: &mut Session,
        market: &mut Market,
        chart: &str,
        count: usize,
    ) -> Vec<message::Bar> {
        run(
            session,
            market,
            &format!(r#"{{"m":"chart_create_session","p":["{chart}",""]}}"#),
        );
        run(
            session,
            market,
            &format!(r#"{{"m":"resolve_symbol","p":["{chart}","sym","BINANCE:BTCUSDT"]}}"#),
        );
        let out = run(
            session,
            market,
            &format!(r#"{{"m":"create_series","p":["{chart}","s1","s1","sym","1",{count},""]}}"#),
        );
        out.iter().flat_map(|payload| bars_in(payload)).collect()
    }

    /// A bar without its index: time, open, high, low, close, volume.
    fn values(bar: &message::Bar) -> (f64, f64, f64, f64, f64, Option<f64>) {
        (bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume)
    }

    /// Bars by time, the last state seen of each.
    fn latest_by_time(bars: &[message::Bar]) -> BTreeMap<i64, message::Bar> {
        bars.iter().map(|bar| (bar.time as i64, *bar)).collect()
    }

    /// A BTC-only market ticking `count` times, one tick every `every` seconds of market time
    /// from the session tests' clock on; every tick goes to each session in `live`.
    fn tick_btc(
        market: &mut Market,
        live: &mut [&mut Session],
        from: usize,
        count: usize,
        every: f64,
    ) -> Vec<message::Bar> {
        let mut streamed = Vec::new();
        for step in from..from + count {
            let tick = market
                .tick(1_700_000_030.0 + step as f64 * every)
                .expect("a one-symbol open market always ticks");
            for session in live.iter_mut() {
                let mut out = Vec::new();
                session.on_tick(&tick, market, false, &mut out);
                streamed.extend(out.iter().flat_map(|payload| bars_in(payload)));
            }
        }
        streamed
    }

    #[test]
    fn history_served_after_ticks_is_the_bars_streamed_live() {
        let mut market = Market::new(1, 1);
        let mut first = Session::new();
        let served = btc_minutes(&mut first, &mut market, "cs_a", 10);
        assert_eq!(served.len(), 10);
        // 40 ticks 7 s apart span 280 s: bars close while the session streams.
        let streamed = tick_btc(&mut market, &mut [&mut first], 0, 40, 7.0);
        let live = latest_by_time(&streamed);
        assert!(live.len() >= 5, "several bars streamed: {live:?}");
        let mut indexes: Vec<(i64, i64)> = streamed
            .iter()
            .map(|bar| (bar.time as i64, bar.index))
            .collect();
        indexes.dedup();
        assert!(
            indexes
                .windows(2)
                .all(|pair| pair[1].0 > pair[0].0 && pair[1].1 == pair[0].1 + 1),
            "each new bar time takes the next index after the history's: {indexes:?}"
        );
        assert_eq!(indexes[0].1, 9, "the history's last bar goes on forming");

        let mut second = Session::new();
        let backfill = btc_minutes(&mut second, &mut market, "cs_b", 10);
        let book = latest_by_time(&backfill);
        for (time, bar) in &live {
            let served = book
                .get(time)
                .expect("the backfill covers the streamed bars");
            assert_eq!(values(served), values(bar), "bar {time}");
        }
        let history = latest_by_time(&served);
        for (time, bar) in book.iter().filter(|(time, _)| !live.contains_key(time)) {
            assert_eq!(
                history.get(time).map(values),
                Some(values(bar)),
                "older bars are the first history's"
            );
        }
    }

    #[test]
    fn a_session_that_asks_later_streams_the_same_bars() {
        let mut market = Market::new(1, 1);
        let mut early = Session::new();
        btc_minutes(&mut early, &mut market, "cs_a", 5);
        tick_btc(&mut market, &mut [&mut early], 0, 20, 7.0);
        let mut late = Session::new();
        btc_minutes(&mut late, &mut market, "cs_b", 300);
        let mut early_bars = Vec::new();
        let mut late_bars = Vec::new();
        for step in 20..60 {
            let tick = market
                .tick(1_700_000_030.0 + f64::from(step) * 7.0)
                .unwrap();
            for (session, bars) in [(&mut early, &mut early_bars), (&mut late, &mut late_bars)] {
                let mut out = Vec::new();
                session.on_tick(&tick, &market, false, &mut out);
                bars.extend(out.iter().flat_map(|payload| bars_in(payload)));
            }
        }
        let all_values = |bars: &[message::Bar]| bars.iter().map(values).collect::<Vec<_>>();
        assert!(!early_bars.is_empty());
        assert_eq!(
            all_values(&early_bars),
            all_values(&late_bars),
            "same times, same values"
        );
        let shift = late_bars[0].index - early_bars[0].index;
        assert!(
            early_bars
                .iter()
                .zip(&late_bars)
                .all(|(early, late)| late.index - early.index == shift),
            "each numbers them in its own series"
        );
    }

    #[test]
    fn a_lagging_session_still_streams_each_bars_final_state() {
        let mut market = Market::new(1, 1);
        let mut session = Session::new();
        btc_minutes(&mut session, &mut market, "cs_a", 3);
        // The market moves on for three minutes while this session reads none of its ticks.
        tick_btc(&mut market, &mut [], 0, 30, 6.0);
        let streamed = tick_btc(&mut market, &mut [&mut session], 30, 1, 6.0);
        let book = market.bars(0, 60).unwrap();
        let caught_up: Vec<[f64; 6]> = book.range(book.len() - streamed.len()..).copied().collect();
        assert!(
            streamed.len() >= 4,
            "its forming bar, closed since, and every newer one: {streamed:?}"
        );
        for (bar, row) in streamed.iter().zip(&caught_up) {
            assert_eq!(
                [
                    bar.time,
                    bar.open,
                    bar.high,
                    bar.low,
                    bar.close,
                    bar.volume.unwrap_or(f64::NAN)
                ],
                *row
            );
        }
        let indexes: Vec<i64> = streamed.iter().map(|bar| bar.index).collect();
        assert_eq!(indexes, (2..2 + streamed.len() as i64).collect::<Vec<_>>());
    }

    #[test]
    fn bars_thrown_away_go_out_again_from_the_last_delivered_one() {
        let mut market = Market::new(1, 1);
        let mut session = Session::new();
        btc_minutes(&mut session, &mut market, "cs_a", 3);
        let delivered = tick_btc(&mut market, &mut [&mut session], 0, 5, 7.0);
        session.bars_delivered();
        let last_delivered = *delivered.last().unwrap();
        // Two minutes of du that a stall throws away.
        let thrown_away = tick_btc(&mut market, &mut [&mut session], 5, 20, 7.0);
        assert!(thrown_away.last().unwrap().index >= last_delivered.index + 2);
        session.bars_discarded();
        let again = tick_btc(&mut market, &mut [&mut session], 25, 1, 7.0);
        assert_eq!(
            (again[0].time, again[0].index),
            (last_delivered.time, last_delivered.index),
            "from the newest bar the client has: {again:?}"
        );
        let book = market.bars(0, 60).unwrap();
        let newest: Vec<[f64; 6]> = book.range(book.len() - again.len()..).copied().collect();
        let rows: Vec<[f64; 6]> = again
            .iter()
            .map(|bar| {
                [
                    bar.time,
                    bar.open,
                    bar.high,
                    bar.low,
                    bar.close,
                    bar.volume.unwrap_or(f64::NAN),
                ]
            })
            .collect();
        assert_eq!(rows, newest, "every bar since, in its state now");
        assert!(
            again
                .windows(2)
                .all(|pair| pair[1].index == pair[0].index + 1)
        );
        session.bars_delivered();
        session.bars_discarded();
        let next = tick_btc(&mut market, &mut [&mut session], 26, 1, 7.0);
        assert_eq!(
            next[0].index,
            again.last().unwrap().index,
            "delivered ones are not resent"
        );
    }

    #[test]
    fn a_full_bar_book_answers_a_new_series_with_series_error() {
        use crate::market::MAX_BAR_SERIES;

        let mut market = Market::new(1, 1);
        let mut session = Session::new();
        btc_minutes(&mut session, &mut market, "cs_a", 1);
        let create = |days: usize| {
            format!(r#"{{"m":"create_series","p":["cs_a","s1","s1","sym","{days}D",1,""]}}"#)
        };
        for days in 1..MAX_BAR_SERIES {
            let out = run(&mut session, &mut market, &create(days));
            assert!(out.last().unwrap().contains("series_completed"), "{out:?}");
        }
        let out = run(&mut session, &mut market, &create(MAX_BAR_SERIES));
        assert_eq!(out.len(), 1);
        assert!(
            out[0].contains(r#""series_error","p":["cs_a","s1","s1","too_many_series"]"#),
            "{out:?}"
        );
        let out = run(&mut session, &mut market, &create(1));
        assert!(
            out.last().unwrap().contains("series_completed"),
            "a series the book has still loads"
        );
    }

    #[test]
    fn quotes_echo_keys_exactly_with_a_snapshot_then_deltas() {
        let mut market = Market::new(12, 1);
        let mut session = Session::new();
        run(
            &mut session,
            &mut market,
            r#"{"m":"set_auth_token","p":["unauthorized_user_token"]}"#,
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"quote_create_session","p":["qs_abc"]}"#,
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"quote_set_fields","p":["qs_abc","lp","ch","volume"]}"#,
        );
        let spec = r#"={\"session\":\"regular\",\"symbol\":\"NASDAQ:AAPL\"}"#;
        let out = run(
            &mut session,
            &mut market,
            &format!(r#"{{"m":"quote_add_symbols","p":["qs_abc","{spec}","NOPE:X"]}}"#),
        );
        assert_eq!(out.len(), 3, "{out:?}");
        let ServerMessage::QuoteData(quote) = message::parse(out[0].as_bytes()).unwrap() else {
            panic!("{}", out[0])
        };
        assert_eq!(
            quote.symbol,
            r#"={"session":"regular","symbol":"NASDAQ:AAPL"}"#
        );
        assert!(quote.values.last_price.value().is_some());
        assert!(
            quote.values.description.is_unchanged(),
            "only the requested fields"
        );
        assert!(matches!(
            message::parse(out[1].as_bytes()).unwrap(),
            ServerMessage::QuoteCompleted { .. }
        ));
        assert!(
            matches!(message::parse(out[2].as_bytes()).unwrap(), ServerMessage::QuoteError(error) if error.message == "no_such_symbol")
        );
        let mut ticks = Vec::new();
        session.on_tick(
            &Tick {
                symbol: 2,
                price: 191.0,
                size: 5.0,
                time: 1.0,
            },
            &market,
            false,
            &mut ticks,
        );
        assert_eq!(ticks.len(), 1);
        assert!(
            ticks
                .iter()
                .all(|payload| payload.is_ascii() && !payload.contains(' '))
        );
        let ServerMessage::QuoteData(delta) = message::parse(ticks[0].as_bytes()).unwrap() else {
            panic!("{}", ticks[0])
        };
        assert_eq!(
            delta.symbol, r#"={"session":"regular","symbol":"NASDAQ:AAPL"}"#,
            "spec keys are echoed exactly"
        );
        assert_eq!(
            delta.values.last_price.value(),
            market
                .instrument(2)
                .map(|instrument| instrument.price)
                .as_ref()
        );
        assert!(delta.values.change.value().is_some() && delta.values.volume.value().is_some());
        assert!(
            delta.values.bid.is_unchanged(),
            "bid was not among the requested fields"
        );
    }

    #[test]
    fn charts_resolve_load_history_complete_and_stream() {
        let mut market = Market::new(12, 1);
        let mut session = Session::new();
        run(
            &mut session,
            &mut market,
            r#"{"m":"chart_create_session","p":["cs_x",""]}"#,
        );
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"resolve_symbol","p":["cs_x","sds_sym_1","={\"adjustment\":\"splits\",\"symbol\":\"BINANCE:BTCUSDT\"}"]}"#,
        );
        assert!(out[0].contains("symbol_resolved"));
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"create_series","p":["cs_x","sds_1","s1","sds_sym_1","1",10,""]}"#,
        );
        let methods: Vec<String> = out
            .iter()
            .map(|payload| {
                message::parse(payload.as_bytes())
                    .unwrap()
                    .method()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            methods,
            ["series_loading", "timescale_update", "series_completed"]
        );
        let ServerMessage::TimescaleUpdate(update) = message::parse(out[1].as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(update.series[0].bars.len(), 10);
        let mut ticks = Vec::new();
        session.on_tick(
            &Tick {
                symbol: 0,
                price: 64_100.0,
                size: 1.0,
                time: 1_700_000_031.0,
            },
            &market,
            false,
            &mut ticks,
        );
        assert!(matches!(
            message::parse(ticks[0].as_bytes()).unwrap(),
            ServerMessage::DataUpdate(_)
        ));
        // Errors: unknown symbol, seconds, bad timeframe.
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"resolve_symbol","p":["cs_x","sds_sym_2","=NOPE:X"]}"#,
        );
        assert!(out[0].contains("symbol_error") && out[0].contains("invalid symbol"));
        assert!(
            run(
                &mut session,
                &mut market,
                r#"{"m":"create_series","p":["cs_x","sds_2","s1","sds_sym_2","1",10]}"#
            )
            .is_empty()
        );
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"create_series","p":["cs_x","sds_3","s1","sds_sym_1","1S",10]}"#,
        );
        assert!(out[0].contains("seconds_not_entitled"));
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"create_series","p":["cs_x","sds_4","s1","sds_sym_1","15m",10]}"#,
        );
        assert!(out[0].contains("critical_error"));
    }

    #[test]
    fn bad_token_is_fatal_and_garbage_is_wrong_data() {
        let mut market = Market::new(2, 1);
        let mut session = Session::new();
        let mut out = Vec::new();
        let result = session.handle(
            r#"{"m":"set_auth_token","p":["bad-token"]}"#,
            &mut market,
            1.0,
            &mut out,
        );
        assert_eq!(result, Err(Fatal("bad auth token".into())));
        assert!(out[0].contains("bad auth token"));
        assert!(run(&mut session, &mut market, "not json")[0].contains("wrong data"));
        assert!(hello(1.5, 3).contains("\"protocol\":\"json\""));
    }

    #[test]
    fn closed_symbols_snapshot_out_of_session_get_no_ticks_and_a_delta_when_they_open() {
        let mut market = Market::new(12, 1);
        market.set_open(false);
        let mut session = Session::new();
        run(
            &mut session,
            &mut market,
            r#"{"m":"quote_create_session","p":["qs_a"]}"#,
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"quote_create_session","p":["qs_lp"]}"#,
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"quote_set_fields","p":["qs_lp","lp"]}"#,
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"chart_create_session","p":["cs_a"]}"#,
        );
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"quote_add_symbols","p":["qs_a","NASDAQ:AAPL","BINANCE:BTCUSDT"]}"#,
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"quote_add_symbols","p":["qs_lp","NASDAQ:AAPL"]}"#,
        );
        let snapshot = |index: usize| {
            let ServerMessage::QuoteData(quote) = message::parse(out[index].as_bytes()).unwrap()
            else {
                panic!("{}", out[index])
            };
            (
                quote.values.current_session.value().map(|s| s.to_string()),
                quote.values.update_mode.value().map(|s| s.to_string()),
            )
        };
        assert_eq!(
            snapshot(0),
            (
                Some("out_of_session".into()),
                Some("delayed_streaming_900".into())
            ),
            "anonymous stock quotes are delayed"
        );
        assert_eq!(
            snapshot(2),
            (Some("market".into()), Some("streaming".into())),
            "crypto trades 24x7"
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"resolve_symbol","p":["cs_a","sym","NASDAQ:AAPL"]}"#,
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"create_series","p":["cs_a","s1","s1","sym","1",5,""]}"#,
        );
        let tick = |symbol: usize| Tick {
            symbol,
            price: 100.0,
            size: 1.0,
            time: 1_700_000_031.0,
        };
        let mut ticks = Vec::new();
        session.on_tick(&tick(2), &market, false, &mut ticks);
        assert!(ticks.is_empty(), "no qsd nor du while closed: {ticks:?}");
        session.on_tick(&tick(0), &market, false, &mut ticks);
        assert_eq!(ticks.len(), 1, "crypto still ticks");
        let mut deltas = Vec::new();
        session.on_market_session(&market, &mut deltas);
        assert!(deltas.is_empty(), "nothing changed since the snapshot");
        market.set_open(true);
        session.on_market_session(&market, &mut deltas);
        assert_eq!(
            deltas,
            [
                r#"{"m":"qsd","p":["qs_a",{"n":"NASDAQ:AAPL","s":"ok","v":{"current_session":"market"}}]}"#
            ],
            "one delta of just current_session, not to qs_lp (no such field) nor for crypto"
        );
        deltas.clear();
        session.on_market_session(&market, &mut deltas);
        assert!(deltas.is_empty(), "told once");
        let mut ticks = Vec::new();
        session.on_tick(&tick(2), &market, false, &mut ticks);
        assert_eq!(ticks.len(), 3, "two qsd and a du once open: {ticks:?}");
        market.set_open(false);
        session.on_market_session(&market, &mut deltas);
        assert_eq!(
            deltas,
            [
                r#"{"m":"qsd","p":["qs_a",{"n":"NASDAQ:AAPL","s":"ok","v":{"current_session":"out_of_session"}}]}"#
            ]
        );
    }

    #[test]
    fn bad_series_parameters_get_the_real_critical_error() {
        let mut market = Market::new(12, 1);
        let mut session = Session::new();
        run(
            &mut session,
            &mut market,
            r#"{"m":"chart_create_session","p":["cs_x",""]}"#,
        );
        run(
            &mut session,
            &mut market,
            r#"{"m":"resolve_symbol","p":["cs_x","sds_sym_1","NASDAQ:AAPL"]}"#,
        );
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"create_series","p":["cs_x","sds_1","s1","sds_sym_1","1h",300,""]}"#,
        );
        assert_eq!(
            out,
            [
                r#"{"m":"critical_error","p":["cs_x","invalid parameters","method: create_series. args: \"[sds_1, s1, sds_sym_1, 1h, 300, ]\""]}"#
            ]
        );
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"modify_series","p":["cs_x","sds_1","s2","sds_sym_1","15m",""]}"#,
        );
        assert_eq!(
            out,
            [
                r#"{"m":"critical_error","p":["cs_x","invalid parameters","method: modify_series. args: \"[sds_1, s2, sds_sym_1, 15m, ]\""]}"#
            ]
        );
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"create_series","p":["cs_x","sds_1","s1","sds_sym_1","4H",["bar_count",1700000000,10]]}"#,
        );
        assert_eq!(
            out,
            [
                r#"{"m":"critical_error","p":["cs_x","invalid parameters","method: create_series. args: \"[sds_1, s1, sds_sym_1, 4H, [\"bar_count\",1700000000,10]]\""]}"#
            ]
        );
        let out = run(
            &mut session,
            &mut market,
            r#"{"m":"create_series","p":["cs_x","sds_1","s1","sds_sym_1",60,10]}"#,
        );
        assert!(
            out[0].contains("method: create_series. args: \\\"[sds_1, s1, sds_sym_1, 60, 10]\\\""),
            "{out:?}"
        );
        for good in ["1", "1440", "D", "2D", "W", "1W", "M", "3M"] {
            let out = run(
                &mut session,
                &mut market,
                &format!(
                    r#"{{"m":"create_series","p":["cs_x","sds_1","s1","sds_sym_1","{good}",3,""]}}"#
                ),
            );
            assert!(
                out.last().unwrap().contains("series_completed"),
                "{good}: {out:?}"
            );
        }
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused_everywhere_others_work() {
        let market = Market::new(2, 1);
        let revoked = Arc::new(RevokedTokens::new(["old".to_owned()]));
        let set = |session: &mut Session, token: &str| {
            let mut out = Vec::new();
            let result = session.handle(
                &format!(r#"{{"m":"set_auth_token","p":["{token}"]}}"#),
                &mut market.clone(),
                1.0,
                &mut out,
            );
            (result, out)
        };
        let refused = (
            Err(Fatal(BAD_AUTH_TOKEN.into())),
            vec![r#"{"m":"protocol_error","p":["bad auth token"]}"#.to_owned()],
        );
        let mut first = Session::with_revoked_tokens(Arc::clone(&revoked));
        assert_eq!(set(&mut first, "old"), refused, "configured as revoked");
        assert_eq!(set(&mut first, "jwt-1"), (Ok(()), vec![]));
        assert_eq!(first.token(), Some("jwt-1"));
        let mut out = Vec::new();
        assert!(first.expire_token(&mut out).unwrap_err().is_bad_token());
        assert_eq!(out, refused.1);
        assert!(revoked.is_revoked("jwt-1"));
        let mut second = Session::with_revoked_tokens(Arc::clone(&revoked));
        assert_eq!(set(&mut second, "jwt-1"), refused, "the expired token");
        assert_eq!(set(&mut second, "jwt-2"), (Ok(()), vec![]), "another one");
        revoked.revoke("jwt-3");
        assert_eq!(set(&mut second, "jwt-3"), refused);
        let mut anonymous = Session::new();
        let mut out = Vec::new();
        assert_eq!(
            anonymous.expire_token(&mut out),
            Ok(()),
            "no token, nothing to expire"
        );
        assert!(out.is_empty());
        anonymous.reject_every_token();
        assert_eq!(set(&mut anonymous, "unauthorized_user_token"), refused);
    }

    #[test]
    fn issued_jwts_stream_until_refused_others_are_delayed() {
        use crate::auth::{Account, AuthStore, build_jwt};
        use std::time::Duration;

        let market = Market::new(12, 1);
        let auth = Arc::new(AuthStore::new(
            Account::defaults(),
            Duration::from_secs(100),
        ));
        let account = auth.find("demo", "demo-password").unwrap();
        let cookies = auth.sign_in(account);
        let jar = [
            ("sessionid".to_owned(), cookies.sessionid.clone()),
            ("sessionid_sign".to_owned(), cookies.sessionid_sign.clone()),
        ];
        let now = 1_700_000_030.0;
        let issue = || {
            auth.issue(&jar, now).unwrap()["auth_token"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let set = |session: &mut Session, token: &str, at: f64| {
            let mut out = Vec::new();
            let result = session.handle(
                &format!(r#"{{"m":"set_auth_token","p":["{token}"]}}"#),
                &mut market.clone(),
                at,
                &mut out,
            );
            (result, out)
        };
        let mode = |session: &mut Session, id: &str, symbol: &str| {
            run(
                session,
                &mut market.clone(),
                &format!(r#"{{"m":"quote_create_session","p":["{id}"]}}"#),
            );
            let out = run(
                session,
                &mut market.clone(),
                &format!(r#"{{"m":"quote_add_symbols","p":["{id}","{symbol}"]}}"#),
            );
            let ServerMessage::QuoteData(quote) = message::parse(out[0].as_bytes()).unwrap() else {
                panic!("{}", out[0])
            };
            quote
                .values
                .update_mode
                .value()
                .map(|mode| mode.to_string())
        };

        let first = issue();
        let mut signed_in = Session::with_auth(Arc::default(), Arc::clone(&auth));
        assert_eq!(set(&mut signed_in, &first, now), (Ok(()), vec![]));
        assert_eq!(signed_in.token_expires_at(), Some(1_700_000_130));
        assert_eq!(
            mode(&mut signed_in, "qs_a", "NASDAQ:AAPL").as_deref(),
            Some("streaming")
        );
        // A replacement replaces the expiry, silently.
        let second = auth.issue(&jar, now + 10.0).unwrap()["auth_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(set(&mut signed_in, &second, now + 10.0), (Ok(()), vec![]));
        assert_eq!(signed_in.token_expires_at(), Some(1_700_000_140));

        let mut anonymous = Session::with_auth(Arc::default(), Arc::clone(&auth));
        assert_eq!(
            set(&mut anonymous, "unauthorized_user_token", now),
            (Ok(()), vec![])
        );
        assert_eq!(anonymous.token_expires_at(), None);
        assert_eq!(
            mode(&mut anonymous, "qs_b", "NASDAQ:AAPL").as_deref(),
            Some("delayed_streaming_900")
        );
        assert_eq!(
            mode(&mut anonymous, "qs_c", "BINANCE:BTCUSDT").as_deref(),
            Some("streaming"),
            "crypto always streams"
        );

        let refused = (
            Err(Fatal(BAD_AUTH_TOKEN.into())),
            vec![r#"{"m":"protocol_error","p":["bad auth token"]}"#.to_owned()],
        );
        let fresh = || Session::with_auth(Arc::default(), Arc::clone(&auth));
        assert_eq!(set(&mut fresh(), &first, now + 100.0), refused, "expired");
        let forged = build_jwt(10_000_001, "pro_premium", 1_700_000_000, 1_800_000_000);
        assert_eq!(set(&mut fresh(), &forged, now), refused, "not issued here");
        assert_eq!(
            set(&mut Session::new(), &first, now),
            refused,
            "no issuer at all"
        );
        auth.expire_sessions();
        assert_eq!(set(&mut fresh(), &second, now), refused, "signed out");
    }

    #[test]
    fn quote_session_ids_are_reported_once_in_order() {
        let mut market = Market::new(2, 1);
        let mut session = Session::new();
        for id in ["qs_b", "qs_a", "qs_b"] {
            run(
                &mut session,
                &mut market,
                &format!(r#"{{"m":"quote_create_session","p":["{id}"]}}"#),
            );
        }
        assert_eq!(
            session.take_created_quote_sessions(),
            ["qs_b", "qs_a", "qs_b"]
        );
        assert!(session.take_created_quote_sessions().is_empty());
    }

    #[test]
    fn the_hello_lists_session_id_first_in_the_real_order() {
        let hello = hello(1_700_000_000.25, 7);
        assert!(hello.is_ascii() && !hello.contains(' '), "{hello}");
        let parsed: Value = serde_json::from_str(&hello).unwrap();
        assert_eq!(parsed["timestampMs"], 1_700_000_000_250u64);
        assert_eq!(
            parsed["session_id"],
            "<0.7.1>_emu-charts-1@tickwire-emulator"
        );
        let order = [
            "session_id",
            "timestamp",
            "timestampMs",
            "release",
            "studies_metadata_hash",
            "auth_scheme_vsn",
            "protocol",
            "via",
            "javastudies",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|key| hello.find(&format!("\"{key}\":")).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|pair| pair[0] < pair[1]),
            "{hello}"
        );
        assert!(hello.starts_with(r#"{"session_id":"#));
        assert_eq!(parsed.as_object().unwrap().len(), order.len());
        assert!(matches!(
            message::parse(hello.as_bytes()).unwrap(),
            ServerMessage::Hello(_)
        ));
    }
}

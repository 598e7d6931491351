//! How events are printed: one JSON object per line, or a line for people.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use tickwire_core::client::{BarEvent, Market, MarketStatus, QuoteEvent, Source, StateChange};
use tickwire_driver::Event;

/// A JSON object that keeps its keys in insertion order, so `type`/`kind` come first.
#[derive(Debug, Default)]
pub(crate) struct Object(Vec<(String, Value)>);

impl Object {
    pub(crate) fn new(kind_key: &str, kind: &str) -> Object {
        let mut object = Object::default();
        object.insert(kind_key, kind);
        object
    }

    pub(crate) fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.0.push((key.into(), value.into()));
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        formatter.write_str(&text)
    }
}

/// Largest magnitude below which every integer is exactly an `f64` (2^53).
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// The one rule for times and volumes in JSON: an integer when the value is integral and
/// exact (|v| < 2^53), otherwise a float (`null` when not finite).
pub(crate) fn json_number(value: f64) -> Value {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < EXACT_INTEGER_LIMIT {
        Value::from(value as i64)
    } else {
        Value::from(value)
    }
}

/// [`json_number`] of an optional value (`null` when absent).
pub(crate) fn json_optional_number(value: Option<f64>) -> Value {
    value.map_or(Value::Null, json_number)
}

/// A time or volume as text, by the same rule as [`json_number`]: `1700000000`, `12.5`
/// (`NaN`, `inf` as Rust prints them).
pub(crate) fn number_text(value: f64) -> String {
    match json_number(value) {
        Value::Null => value.to_string(),
        number => number.to_string(),
    }
}

/// Unix seconds of now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// `HH:MM:SS.mmm` UTC of now.
pub(crate) fn clock() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let millis = since_epoch.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1_000 % 60,
        millis % 1_000
    )
}

fn source(source: Source) -> &'static str {
    match source {
        Source::Stream => "stream",
        Source::Poll => "poll",
    }
}

pub(crate) fn quote_json(event: &QuoteEvent) -> Object {
    let quote = &event.quote;
    let mut object = Object::new("type", "quote");
    object.insert("symbol", quote.symbol.as_ref());
    object.insert("price", quote.last_price);
    object.insert("bid", quote.bid);
    object.insert("ask", quote.ask);
    object.insert("volume", json_optional_number(quote.volume));
    object.insert("change", quote.change);
    object.insert("change_pct", quote.change_percent);
    object.insert("time", quote.last_price_time);
    object.insert("source", source(event.source));
    if let Some(mode) = quote.update_mode.as_deref() {
        object.insert("update_mode", mode);
    }
    object.insert("changed", event.changed.names().collect::<Vec<_>>());
    object
}

/// Milliseconds from now until `at` (0 when it has passed).
fn millis_until(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn bar_json(event: &BarEvent) -> Object {
    bar_object(&event.symbol, &event.timeframe, &event.bar, event.closed)
}

/// `{"type":"bar","symbol","timeframe","time","open","high","low","close","volume","closed"}`.
pub(crate) fn bar_object(
    symbol: &str,
    timeframe: &str,
    bar: &tickwire_core::message::Bar,
    closed: bool,
) -> Object {
    let mut object = Object::new("type", "bar");
    object.insert("symbol", symbol);
    object.insert("timeframe", timeframe);
    object.insert("time", json_number(bar.time));
    object.insert("open", bar.open);
    object.insert("high", bar.high);
    object.insert("low", bar.low);
    object.insert("close", bar.close);
    object.insert("volume", json_optional_number(bar.volume));
    object.insert("closed", closed);
    object
}

pub(crate) fn status_json(change: &StateChange) -> Object {
    let mut object = Object::new("type", "status");
    object.insert("state", change.state.as_str());
    object.insert("mode", change.mode.as_str());
    object.insert("attempt", change.consecutive_failures);
    object.insert("cause", change.cause.map(|cause| cause.as_str()));
    let retry_in = change
        .next_attempt
        .map(|at| at.saturating_duration_since(Instant::now()).as_millis() as u64);
    object.insert("retry_in_ms", retry_in);
    object
}

pub(crate) fn market_json(status: &MarketStatus) -> Object {
    let mut object = Object::new("type", "market");
    object.insert("market", status.market.as_str());
    object.insert("symbols", status.symbols);
    object.insert("out_of_session", status.out_of_session);
    object.insert("quiet_verdicts", status.quiet_verdicts);
    object.insert(
        "next_verdict_after_ms",
        u64::try_from(status.next_verdict_after.as_millis()).unwrap_or(u64::MAX),
    );
    object
}

/// The line a person reads when the market changes: why the client is (not) reconnecting.
fn market_text(status: &MarketStatus) -> String {
    let sessions = format!(
        "{}/{} symbols out of session",
        status.out_of_session, status.symbols
    );
    match status.market {
        Market::Closed => format!("market closed ({sessions}): no reconnect while it is"),
        Market::Quiet if status.next_verdict_after.is_zero() => {
            format!("market quiet ({sessions}): heartbeats only")
        }
        Market::Quiet => format!(
            "market quiet ({sessions}): the session is alive, next check after {} of silence",
            human_duration(status.next_verdict_after)
        ),
        Market::Active => format!("market active ({sessions})"),
        Market::Unknown => format!("market unknown ({sessions})"),
    }
}

fn error_json(code: &str, symbol: Option<&str>, message: String) -> Object {
    let mut object = Object::new("type", "error");
    object.insert("code", code);
    if let Some(symbol) = symbol {
        object.insert("symbol", symbol);
    }
    object.insert("message", message);
    object
}

/// The JSON line for an event, or `None` for events the stream does not show.
pub(crate) fn event_json(event: &Event) -> Option<Object> {
    Some(match event {
        Event::Quote(quote) => quote_json(quote),
        Event::Bar(bar) => bar_json(bar),
        Event::BarGap(gap) => {
            let mut object = Object::new("type", "gap");
            object.insert("symbol", gap.symbol.as_ref());
            object.insert("timeframe", gap.timeframe.as_ref());
            object.insert("after", json_number(gap.after));
            object.insert("before", json_number(gap.before));
            object
        }
        Event::State(change) => status_json(change),
        Event::QuoteError { symbol, reason } => error_json("symbol", Some(symbol), reason.clone()),
        Event::SeriesError { symbol, reason, .. } => {
            error_json("series", Some(symbol), reason.clone())
        }
        Event::CriticalError {
            session,
            name,
            detail,
        } => error_json(
            "critical",
            None,
            format!(
                "{name} ({session}){}",
                detail.as_ref().map_or(String::new(), |d| format!(": {d}"))
            ),
        ),
        Event::ProtocolError { text } => error_json("protocol", None, text.clone()),
        Event::AuthTokenRejected { refreshed } => error_json(
            "auth_token",
            None,
            if *refreshed {
                "the server rejected the auth token; retrying with a fresh one".to_owned()
            } else {
                "the server rejected the auth token and no fresh one is available".to_owned()
            },
        ),
        Event::AuthTokenRefreshed { lifetime } => {
            let mut object = Object::new("type", "auth_token");
            object.insert("refreshed", true);
            if let Some(lifetime) = lifetime {
                object.insert("valid_for_s", lifetime.as_secs());
            }
            object
        }
        Event::AuthTokenRefreshFailed { failures, retry_at } => {
            let mut object = error_json(
                "auth_token_refresh",
                None,
                "no fresh auth token could be fetched; asking again after a backoff".to_owned(),
            );
            object.insert("failures", *failures);
            object.insert("retry_in_ms", millis_until(*retry_at));
            object
        }
        Event::PollFailed {
            error,
            failures,
            next_poll,
        } => {
            let mut object = error_json("poll", None, error.detail.clone());
            object.insert("failures", *failures);
            object.insert("retry_in_ms", millis_until(*next_poll));
            object
        }
        Event::PollMissing { symbols } => error_json(
            "poll_missing",
            None,
            format!(
                "the poller does not know {}",
                symbols
                    .iter()
                    .map(|symbol| symbol.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Event::Market(market) => market_json(market),
        Event::CommandsDropped { count, bound } => error_json(
            "commands_dropped",
            None,
            format!("{count} commands dropped: the queue of {bound} was full"),
        ),
        Event::History(_) => return None,
    })
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value}"))
}

/// A time or volume for people: [`number_text`], `-` when absent.
fn optional_number_text(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), number_text)
}

/// The line a person reads for an event.
pub(crate) fn event_text(event: &Event) -> Option<String> {
    let time = clock();
    Some(match event {
        Event::Quote(event) => {
            let quote = &event.quote;
            let change = quote
                .change_percent
                .map_or_else(String::new, |pct| format!(" ({pct:+.2}%)"));
            let poll = if event.source == Source::Poll {
                " [poll]"
            } else {
                ""
            };
            let delayed = if quote
                .update_mode
                .as_deref()
                .is_some_and(|mode| mode.starts_with("delayed"))
            {
                " [delayed]"
            } else {
                ""
            };
            format!(
                "{time} {:<18} {:>12}{change}  bid {} ask {} vol {}{poll}{delayed}",
                quote.symbol,
                number(quote.last_price),
                number(quote.bid),
                number(quote.ask),
                optional_number_text(quote.volume)
            )
        }
        Event::Bar(bar) => format!(
            "{time} {:<18} bar {} @{} o {} h {} l {} c {} v {} {}",
            bar.symbol,
            bar.timeframe,
            number_text(bar.bar.time),
            bar.bar.open,
            bar.bar.high,
            bar.bar.low,
            bar.bar.close,
            optional_number_text(bar.bar.volume),
            if bar.closed { "closed" } else { "forming" }
        ),
        Event::BarGap(gap) => format!(
            "{time} {:<18} gap {}: bars between @{} and @{} may be missing",
            gap.symbol,
            gap.timeframe,
            number_text(gap.after),
            number_text(gap.before)
        ),
        Event::State(change) => {
            let cause = change.cause.map_or_else(String::new, |cause| {
                format!(" after {}", cause.as_str().replace('_', " "))
            });
            let retry = change
                .next_attempt
                .map(|at| at.saturating_duration_since(Instant::now()))
                .map_or_else(String::new, |wait| {
                    format!(", retry in {}", human_duration(wait))
                });
            format!(
                "{time} -- {}{cause}{retry} [{} failures, {}]",
                change.state.as_str().replace('_', " "),
                change.consecutive_failures,
                change.mode.as_str()
            )
        }
        Event::Market(status) => format!("{time} -- {}", market_text(status)),
        other => {
            let object = event_json(other)?;
            format!(
                "{time} !! {}",
                object
                    .0
                    .iter()
                    .skip(1)
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
    })
}

/// `1.25s`, `340ms`, `5m30s`, `6h00m`.
pub(crate) fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds >= 3600 {
        format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60)
    } else if seconds >= 120 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else if duration >= Duration::from_secs(1) {
        format!("{:.2}s", duration.as_secs_f64())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_are_integers_when_integral_and_exact() {
        let text = |value: f64| json_number(value).to_string();
        assert_eq!(text(1_700_000_000.0), "1700000000");
        assert_eq!(text(0.0), "0");
        assert_eq!(text(-0.0), "0");
        assert_eq!(text(-42.0), "-42");
        assert_eq!(text(1.5), "1.5");
        assert_eq!(text(9_007_199_254_740_991.0), "9007199254740991");
        assert_eq!(text(-9_007_199_254_740_991.0), "-9007199254740991");
        assert_eq!(text(9_007_199_254_740_992.0), "9007199254740992.0");
        assert_eq!(text(1e300), "1e+300");
        assert_eq!(text(f64::NAN), "null");
        assert_eq!(text(f64::INFINITY), "null");
        assert_eq!(json_optional_number(None), Value::Null);
        assert_eq!(number_text(1_700_000_000.0), "1700000000");
        assert_eq!(number_text(f64::NAN), "NaN");
    }
}

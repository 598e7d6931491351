//! What a downstream client may ask, parsed from its JSON text with a typed reason for every
//! way it can be wrong.

use std::time::Duration;

use serde_json::Value;

use super::config::{MAX_UPDATE_INTERVAL, MIN_UPDATE_INTERVAL};

/// A well-formed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// The symbols, and the `update_interval` asked for (`None`: the relay's default).
    Subscribe(Vec<String>, Option<Duration>),
    Unsubscribe(Vec<String>),
    Ping,
}

/// Why a message is not a request: the error code sent back and a readable reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn bad_request(message: impl Into<String>) -> Rejection {
    Rejection {
        code: "BAD_REQUEST",
        message: message.into(),
    }
}

fn symbols(
    request: &serde_json::Map<String, Value>,
    action: &str,
) -> Result<Vec<String>, Rejection> {
    let Some(Value::Array(list)) = request.get("symbols") else {
        return Err(bad_request(format!(
            "\"{action}\" needs \"symbols\": an array of strings"
        )));
    };
    if list.is_empty() {
        // A request that does nothing gets an answer all the same, never silence.
        return Err(bad_request(format!(
            "\"{action}\" with no symbols: name at least one"
        )));
    }
    list.iter()
        .map(|symbol| match symbol {
            Value::String(symbol) => Ok(symbol.clone()),
            other => Err(bad_request(format!(
                "\"symbols\" must hold strings, found {other}"
            ))),
        })
        .collect()
}

/// The optional `update_interval` of a subscribe: seconds (fractions allowed, kept to the
/// millisecond) within the hub's bounds. Checked before any conversion, so no client number can
/// reach a panicking `Duration` constructor.
fn update_interval(
    request: &serde_json::Map<String, Value>,
) -> Result<Option<Duration>, Rejection> {
    let Some(value) = request.get("update_interval") else {
        return Ok(None);
    };
    let bounds = format!(
        "\"update_interval\" must be a number of seconds from {} to {}",
        MIN_UPDATE_INTERVAL.as_secs_f64(),
        MAX_UPDATE_INTERVAL.as_secs_f64()
    );
    let Some(seconds) = value.as_f64() else {
        return Err(bad_request(format!("{bounds}, not {}", json_type(value))));
    };
    // Also false for NaN (which JSON cannot carry anyway).
    let within =
        (MIN_UPDATE_INTERVAL.as_secs_f64()..=MAX_UPDATE_INTERVAL.as_secs_f64()).contains(&seconds);
    if !within {
        // The number as the client wrote it, clipped: a reply never grows with the request.
        let shown: String = value.to_string().chars().take(24).collect();
        return Err(bad_request(format!("{bounds}, not {shown}")));
    }
    // Within 100..=3_600_000 here: the cast is exact.
    let millis = (seconds * 1000.0).round();
    Ok(Some(Duration::from_millis(millis as u64)))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one client message (its size already checked).
pub(crate) fn parse(text: &str) -> Result<Request, Rejection> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| bad_request(format!("malformed JSON: {error}")))?;
    let Value::Object(request) = value else {
        return Err(bad_request("expected a JSON object with an \"action\""));
    };
    let Some(action) = request.get("action") else {
        return Err(bad_request("missing \"action\""));
    };
    let Value::String(action) = action else {
        return Err(bad_request("\"action\" must be a string"));
    };
    match action.as_str() {
        "subscribe" => {
            let symbols = symbols(&request, action)?;
            Ok(Request::Subscribe(symbols, update_interval(&request)?))
        }
        "unsubscribe" => symbols(&request, action).map(Request::Unsubscribe),
        "ping" => Ok(Request::Ping),
        other => {
            // The echoed name is clipped so an enormous action cannot inflate the reply.
            let shown: String = other.chars().take(40).collect();
            Err(Rejection {
                code: "UNKNOWN_ACTION",
                message: format!(
                    "unknown action \"{shown}\" (expected subscribe, unsubscribe or ping)"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_actions_and_ignores_extra_keys() {
        assert_eq!(
            parse(r#"{"action":"subscribe","symbols":["A","B"],"id":7}"#),
            Ok(Request::Subscribe(vec!["A".into(), "B".into()], None))
        );
        assert_eq!(
            parse(r#"{"action":"unsubscribe","symbols":["A"]}"#),
            Ok(Request::Unsubscribe(vec!["A".into()]))
        );
        assert_eq!(parse(r#"{"action":"ping"}"#), Ok(Request::Ping));
    }

    #[test]
    fn update_interval_is_seconds_within_bounds_kept_to_the_millisecond() {
        for (interval, expected) in [
            ("5", Duration::from_secs(5)),
            ("0.1", Duration::from_millis(100)),
            ("0.3", Duration::from_millis(300)),
            ("0.1004", Duration::from_millis(100)),
            ("2.5e0", Duration::from_millis(2500)),
            ("3600", Duration::from_secs(3600)),
        ] {
            let text =
                format!(r#"{{"action":"subscribe","symbols":["A"],"update_interval":{interval}}}"#);
            assert_eq!(
                parse(&text),
                Ok(Request::Subscribe(vec!["A".into()], Some(expected))),
                "{text}"
            );
        }
        // Checked only once the symbols are: a subscribe without symbols says so first.
        let rejection = parse(r#"{"action":"subscribe","update_interval":"x"}"#).unwrap_err();
        assert!(
            rejection.message.contains("\"symbols\""),
            "{}",
            rejection.message
        );
    }

    #[test]
    fn every_malformed_shape_has_a_code() {
        for (text, code) in [
            ("", "BAD_REQUEST"),
            ("{", "BAD_REQUEST"),
            ("[1]", "BAD_REQUEST"),
            ("{}", "BAD_REQUEST"),
            (r#"{"action":3}"#, "BAD_REQUEST"),
            (r#"{"action":"subscribe"}"#, "BAD_REQUEST"),
            (r#"{"action":"subscribe","symbols":"A"}"#, "BAD_REQUEST"),
            (r#"{"action":"subscribe","symbols":[]}"#, "BAD_REQUEST"),
            (r#"{"action":"unsubscribe","symbols":[]}"#, "BAD_REQUEST"),
            (r#"{"action":"subscribe","symbols":["A",1]}"#, "BAD_REQUEST"),
            (r#"{"action":"dance"}"#, "UNKNOWN_ACTION"),
        ] {
            let rejection = parse(text).unwrap_err();
            assert_eq!(rejection.code, code, "{text}: {}", rejection.message);
        }
        for interval in [
            "0", "0.09", "0.0999", "-1", "3600.1", "1e300", "null", "\"5\"", "[1]", "true",
        ] {
            let text =
                format!(r#"{{"action":"subscribe","symbols":["A"],"update_interval":{interval}}}"#);
            let rejection = parse(&text).unwrap_err();
            assert_eq!(rejection.code, "BAD_REQUEST", "{text}");
            assert!(
                rejection.message.contains("\"update_interval\"")
                    && rejection.message.contains("from 0.1 to 3600"),
                "{text}: {}",
                rejection.message
            );
        }
        let long = format!(r#"{{"action":"{}"}}"#, "x".repeat(5000));
        assert!(parse(&long).unwrap_err().message.len() < 200);
    }
}

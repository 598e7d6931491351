//! What a downstream client may ask, parsed from its JSON text with a typed reason for every
//! way it can be wrong.

use serde_json::Value;

/// A well-formed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Subscribe(Vec<String>),
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
        "subscribe" => symbols(&request, action).map(Request::Subscribe),
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
            Ok(Request::Subscribe(vec!["A".into(), "B".into()]))
        );
        assert_eq!(
            parse(r#"{"action":"unsubscribe","symbols":["A"]}"#),
            Ok(Request::Unsubscribe(vec!["A".into()]))
        );
        assert_eq!(parse(r#"{"action":"ping"}"#), Ok(Request::Ping));
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
        let long = format!(r#"{{"action":"{}"}}"#, "x".repeat(5000));
        assert!(parse(&long).unwrap_err().message.len() < 200);
    }
}

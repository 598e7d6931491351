//! What can go wrong with one HTTP exchange.

use std::time::Duration;

use crate::{Secret, text};

/// A failed HTTP exchange. Messages quote at most a short, cleaned snippet of what the server
/// sent and never a password, cookie or token.
///
/// ```
/// use std::time::Duration;
/// use tickwire_http::HttpError;
///
/// let error = HttpError::RateLimited { retry_after: Some(Duration::from_secs(60)) };
/// assert!(error.is_transient());
/// assert_eq!(error.retry_after(), Some(Duration::from_secs(60)));
/// assert_eq!(error.to_string(), "rate limited (HTTP 429), retry after 60 s");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// HTTP 429. `retry_after` is the `Retry-After` header when it gave seconds.
    #[error("rate limited (HTTP 429){}", retry_text(*.retry_after))]
    RateLimited {
        /// How long the server asked to wait, when it said so in seconds.
        retry_after: Option<Duration>,
    },
    /// HTTP 403: the front end refused the request.
    #[error("{what} answered 403 Forbidden: missing Origin/Referer or blocked (this client or IP)")]
    Forbidden {
        /// Which request was refused (`"symbol search"`, `"scanner"`, ...).
        what: String,
    },
    /// Any other status outside 2xx.
    #[error("{}", status_text(*.code, .api_code.as_deref(), .message.as_deref()))]
    Status {
        /// The HTTP status.
        code: u16,
        /// The JSON body's `code`, when there was one.
        api_code: Option<String>,
        /// The JSON body's `error` text, when there was one.
        message: Option<String>,
    },
    /// The body is not the JSON the endpoint should send (an HTML error page, truncated JSON).
    #[error("expected JSON, got something else (HTTP {status}): {snippet:?}")]
    NotJson {
        /// The HTTP status.
        status: u16,
        /// The first characters of the body, control characters removed.
        snippet: String,
    },
    /// The body is longer than the configured bound; reading stopped there.
    #[error("the response body is larger than {limit} bytes")]
    TooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// More redirects than the configured bound.
    #[error("more than {limit} redirects (a WAF, a geo-restriction or a loop)")]
    TooManyRedirects {
        /// The bound.
        limit: u32,
    },
    /// A redirect without a usable `Location` (missing, not http(s), unparsable).
    #[error("a redirect without a usable Location")]
    BadRedirect,
    /// The whole request (or its connect) took longer than configured.
    #[error("the request timed out")]
    Timeout,
    /// The connection could not be made.
    #[error("could not connect: {0}")]
    Connect(String),
    /// TLS failed (a certificate that does not verify, a handshake error).
    #[error("TLS error: {0}")]
    Tls(String),
    /// The connection failed while talking (reset, closed early, malformed HTTP).
    #[error("I/O error: {0}")]
    Io(String),
    /// A URL (or a request built from it) that cannot be sent.
    #[error("bad URL: {0}")]
    BadUrl(String),
}

fn retry_text(retry_after: Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |wait| {
        format!(", retry after {} s", wait.as_secs())
    })
}

fn status_text(code: u16, api_code: Option<&str>, message: Option<&str>) -> String {
    let mut out = format!("HTTP {code}");
    if let Some(api_code) = api_code {
        out.push_str(&format!(" ({api_code})"));
    }
    if let Some(message) = message {
        out.push_str(&format!(": {message}"));
    }
    out
}

impl HttpError {
    /// How long the server asked to wait (429 with `Retry-After` in seconds).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again later may work: timeouts, connect and I/O errors, 5xx and 429.
    /// A 4xx, a 403, a body that is not JSON or too large will most likely come back the same
    /// (a poller backs off on every error anyway).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout | Self::Connect(_) | Self::Io(_) | Self::RateLimited { .. } => true,
            Self::Status { code, .. } => (500..600).contains(code),
            _ => false,
        }
    }

    /// The error for a finished exchange whose status is not 2xx: 429, 403, or `Status` with
    /// the JSON body's `code` and `error` when the body has them.
    pub(crate) fn from_status(
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
        what: &str,
        secrets: &[Secret],
    ) -> Self {
        match status {
            429 => Self::RateLimited { retry_after },
            403 => Self::Forbidden {
                what: what.to_owned(),
            },
            code => {
                let json = serde_json::from_slice::<serde_json::Value>(body).ok();
                let field = |name: &str| {
                    json.as_ref()
                        .and_then(|value| value.get(name))
                        .and_then(scalar_text)
                        .map(|text| text::clean(&text::redact(&text, secrets), MESSAGE_CHARS))
                        .filter(|text| !text.is_empty())
                };
                Self::Status {
                    code,
                    api_code: field("code"),
                    message: field("error").or_else(|| field("message")),
                }
            }
        }
    }

    /// The error for a body that should have been JSON; `secrets` (what the request sent) are
    /// blanked in the snippet.
    pub(crate) fn not_json(status: u16, body: &[u8], secrets: &[Secret]) -> Self {
        Self::NotJson {
            status,
            snippet: text::snippet(body, secrets),
        }
    }
}

/// How many characters of a server's message an error keeps.
pub(crate) const MESSAGE_CHARS: usize = 200;

/// A JSON string as is, a number or boolean as text; anything else is not a message.
pub(crate) fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        serde_json::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// `Retry-After` in seconds; an HTTP-date or anything else is `None`.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-5"), None);
        assert_eq!(parse_retry_after("1.5"), None);
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(parse_retry_after("99999999999999999999999999"), None);
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        assert_eq!(
            HttpError::from_status(429, Some(Duration::from_secs(3)), b"", "x", &[]),
            HttpError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            HttpError::from_status(403, None, b"<html>", "scanner", &[]),
            HttpError::Forbidden {
                what: "scanner".into()
            }
        );
        assert_eq!(
            HttpError::from_status(
                400,
                None,
                br#"{"error":"too many tickers"}"#,
                "scanner",
                &[]
            ),
            HttpError::Status {
                code: 400,
                api_code: None,
                message: Some("too many tickers".into())
            }
        );
        assert_eq!(
            HttpError::from_status(400, None, br#"{"error":"Bad\ncode","code":7}"#, "x", &[]),
            HttpError::Status {
                code: 400,
                api_code: Some("7".into()),
                message: Some("Badcode".into())
            }
        );
        assert_eq!(
            HttpError::from_status(502, None, b"<html>bad gateway", "x", &[]),
            HttpError::Status {
                code: 502,
                api_code: None,
                message: None
            }
        );
        // Wrong types and empty strings are no message.
        assert_eq!(
            HttpError::from_status(404, None, br#"{"error":{"a":1},"code":""}"#, "x", &[]),
            HttpError::Status {
                code: 404,
                api_code: None,
                message: None
            }
        );
    }

    #[test]
    fn long_server_messages_are_cut() {
        let body = format!(r#"{{"error":"{}"}}"#, "x".repeat(10_000));
        let error = HttpError::from_status(400, None, body.as_bytes(), "x", &[]);
        assert!(error.to_string().len() < 300, "{error}");
    }

    #[test]
    fn transient_errors() {
        assert!(HttpError::Timeout.is_transient());
        assert!(HttpError::Connect("refused".into()).is_transient());
        assert!(HttpError::Io("reset".into()).is_transient());
        assert!(HttpError::RateLimited { retry_after: None }.is_transient());
        let status = |code| HttpError::Status {
            code,
            api_code: None,
            message: None,
        };
        assert!(status(503).is_transient());
        assert!(!status(404).is_transient());
        assert!(!HttpError::Forbidden { what: "x".into() }.is_transient());
        assert!(!HttpError::not_json(200, b"<html>", &[]).is_transient());
        assert!(!HttpError::TooLarge { limit: 1 }.is_transient());
        assert_eq!(HttpError::Timeout.retry_after(), None);
    }

    #[test]
    fn displays_are_one_line() {
        let error = HttpError::Status {
            code: 400,
            api_code: Some("x".into()),
            message: Some("bad".into()),
        };
        assert_eq!(error.to_string(), "HTTP 400 (x): bad");
        let error = HttpError::not_json(400, b"<HTML>\n<HEAD>400 ERROR</HEAD>\n</HTML>", &[]);
        assert_eq!(
            error.to_string(),
            r#"expected JSON, got something else (HTTP 400): "<HTML><HEAD>400 ERROR</HEAD></HTML>""#
        );
        assert_eq!(
            HttpError::RateLimited { retry_after: None }.to_string(),
            "rate limited (HTTP 429)"
        );
    }
}

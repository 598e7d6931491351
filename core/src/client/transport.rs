//! What the transport tells the client when a connection fails: a typed kind the policy can act
//! on, and a detail string for people.

use std::fmt;
use std::time::Duration;

/// Why an attempt or an open connection failed, as the driver saw it.
///
/// The kind drives the reconnect policy (an HTTP 429 is not a reset); the detail is what the
/// transport library said, for status and logs.
///
/// ```
/// use std::time::Duration;
/// use tickwire_core::client::{TransportError, TransportErrorKind};
///
/// let error = TransportError::new(
///     TransportErrorKind::HttpStatus { code: 429, retry_after: Some(Duration::from_secs(30)) },
///     "Too Many Requests",
/// );
/// assert_eq!(error.to_string(), "HTTP 429 (retry after 30s): Too Many Requests");
/// assert_eq!(error.kind.retry_after(), Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// What kind of failure.
    pub kind: TransportErrorKind,
    /// The transport's own words.
    pub detail: String,
}

/// The kinds of transport failure the policy tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The peer refused the TCP connection.
    Refused,
    /// The host name did not resolve.
    Dns,
    /// The TLS handshake or a TLS record failed.
    Tls,
    /// The WebSocket upgrade was answered with this HTTP status instead of 101.
    HttpStatus {
        /// The status code, e.g. 429 or 403.
        code: u16,
        /// The `Retry-After` the server asked for, when it sent one (seconds form).
        retry_after: Option<Duration>,
    },
    /// The connection was reset or broke (no close frame).
    Reset,
    /// The peer closed the WebSocket, with the close code it sent, if any.
    Closed {
        /// The close frame's code.
        code: Option<u16>,
    },
    /// The operating system gave up connecting (the client's own connect timeout is separate:
    /// it ends the attempt itself and never needs the driver to report it).
    ConnectTimeout,
    /// A send blocked longer than [`super::ConnectRequest::send_timeout`]: the peer is not reading.
    SendTimeout,
    /// The URL could not be used.
    BadUrl,
    /// Anything else.
    Other,
}

impl TransportErrorKind {
    /// Snake-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Refused => "refused",
            TransportErrorKind::Dns => "dns",
            TransportErrorKind::Tls => "tls",
            TransportErrorKind::HttpStatus { .. } => "http_status",
            TransportErrorKind::Reset => "reset",
            TransportErrorKind::Closed { .. } => "closed",
            TransportErrorKind::ConnectTimeout => "connect_timeout",
            TransportErrorKind::SendTimeout => "send_timeout",
            TransportErrorKind::BadUrl => "bad_url",
            TransportErrorKind::Other => "other",
        }
    }

    /// The server's `Retry-After`, for an HTTP refusal that carried one.
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            TransportErrorKind::HttpStatus { retry_after, .. } => retry_after,
            _ => None,
        }
    }

    /// Whether the server refused us on purpose (HTTP 429 Too Many Requests): the policy then
    /// waits as long as it asked, or opens the breaker.
    pub fn is_rate_limited(self) -> bool {
        matches!(self, TransportErrorKind::HttpStatus { code: 429, .. })
    }
}

impl TransportError {
    /// An error of `kind` with the transport's `detail`.
    pub fn new(kind: TransportErrorKind, detail: impl Into<String>) -> TransportError {
        TransportError {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportErrorKind::Refused => formatter.write_str("refused"),
            TransportErrorKind::Dns => formatter.write_str("DNS"),
            TransportErrorKind::Tls => formatter.write_str("TLS"),
            TransportErrorKind::HttpStatus {
                code,
                retry_after: Some(after),
            } => write!(
                formatter,
                "HTTP {code} (retry after {}s)",
                after.as_secs_f64()
            ),
            TransportErrorKind::HttpStatus { code, .. } => write!(formatter, "HTTP {code}"),
            TransportErrorKind::Reset => formatter.write_str("reset"),
            TransportErrorKind::Closed { code: Some(code) } => write!(formatter, "closed {code}"),
            TransportErrorKind::Closed { code: None } => formatter.write_str("closed"),
            TransportErrorKind::ConnectTimeout => formatter.write_str("connect timeout"),
            TransportErrorKind::SendTimeout => formatter.write_str("send timeout"),
            TransportErrorKind::BadUrl => formatter.write_str("bad URL"),
            TransportErrorKind::Other => formatter.write_str("failed"),
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(formatter, "{}", self.kind)
        } else {
            write!(formatter, "{}: {}", self.kind, self.detail)
        }
    }
}

impl std::error::Error for TransportError {}

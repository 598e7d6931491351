//! Any tungstenite WebSocket stream (tokio-tungstenite, async-tungstenite) as a [`Socket`], and
//! the one mapping from transport failures to the core's [`TransportError`].
//!
//! [`Socket`]: crate::Socket

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tickwire_core::client::{TransportError, TransportErrorKind};
use tungstenite::error::ProtocolError;
use tungstenite::http::HeaderMap;
use tungstenite::{Error, Message, Utf8Bytes};

use crate::SocketEvent;

/// Where a failure happened: the same I/O error means different things while connecting and on
/// an open socket (a `TimedOut` connect is the OS giving up on the handshake, a `TimedOut` read
/// is a dead link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the TCP connection, the TLS session or the WebSocket upgrade.
    Connect,
    /// Reading from or writing to an open WebSocket.
    Open,
}

/// Maps a tungstenite error to the kind the core's reconnect policy acts on; the detail is
/// tungstenite's own message.
///
/// * `Http(response)`: [`TransportErrorKind::HttpStatus`] with the status code and the
///   `Retry-After` delta-seconds (see [`retry_after`]).
/// * `Io`: see [`io_error_kind`].
/// * `Tls`: [`TransportErrorKind::Tls`]; `Url`: [`TransportErrorKind::BadUrl`].
/// * `ConnectionClosed`, `AlreadyClosed`: [`TransportErrorKind::Closed`] without a code.
/// * `Protocol(ResetWithoutClosingHandshake)` (the TCP stream ended with no close frame):
///   [`TransportErrorKind::Reset`].
/// * Anything else (protocol violations, capacity, UTF-8…): [`TransportErrorKind::Other`].
pub fn transport_error(error: &Error, phase: Phase) -> TransportError {
    let kind = match error {
        Error::Http(response) => TransportErrorKind::HttpStatus {
            code: response.status().as_u16(),
            retry_after: retry_after(response.headers()),
        },
        Error::Io(error) => io_error_kind(error, phase),
        Error::Tls(_) => TransportErrorKind::Tls,
        Error::Url(_) => TransportErrorKind::BadUrl,
        Error::ConnectionClosed | Error::AlreadyClosed => TransportErrorKind::Closed { code: None },
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => TransportErrorKind::Reset,
        _ => TransportErrorKind::Other,
    };
    TransportError::new(kind, error.to_string())
}

/// Maps an I/O error of `phase` to a kind.
///
/// * A [`rustls::Error`] inside the I/O error (how tokio-rustls and futures-rustls report a
///   failed handshake or a bad record): [`TransportErrorKind::Tls`].
/// * `ConnectionRefused`: [`TransportErrorKind::Refused`].
/// * `ConnectionReset`, `BrokenPipe`, `UnexpectedEof`, `ConnectionAborted`:
///   [`TransportErrorKind::Reset`].
/// * `TimedOut`: [`TransportErrorKind::ConnectTimeout`] while connecting, `Reset` on an open
///   socket (the kernel gave up retransmitting).
/// * A failed name lookup (see [`is_dns_failure`]): [`TransportErrorKind::Dns`].
/// * Anything else: [`TransportErrorKind::Other`].
pub fn io_error_kind(error: &io::Error, phase: Phase) -> TransportErrorKind {
    if error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        return TransportErrorKind::Tls;
    }
    match error.kind() {
        io::ErrorKind::ConnectionRefused => TransportErrorKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionAborted => TransportErrorKind::Reset,
        io::ErrorKind::TimedOut => match phase {
            Phase::Connect => TransportErrorKind::ConnectTimeout,
            Phase::Open => TransportErrorKind::Reset,
        },
        _ if phase == Phase::Connect && is_dns_failure(error) => TransportErrorKind::Dns,
        _ => TransportErrorKind::Other,
    }
}

/// Whether an I/O error is a failed name lookup that reached this far.
///
/// Both runtime crates resolve the host themselves before connecting and report any failure of
/// that step with [`resolve_error`], so this is only the fallback for errors from elsewhere. The
/// standard library (which tokio's `lookup_host` and async-net's `resolve` call on a blocking
/// thread) gives a `getaddrinfo` failure no error kind of its own (`Uncategorized`, which cannot
/// be matched on stable Rust), so it is recognised by its fixed message; a lookup that yields
/// no address is recognised by the messages std and tokio use for it.
pub fn is_dns_failure(error: &io::Error) -> bool {
    let message = error.to_string();
    [
        "failed to lookup address information",
        "could not resolve to any address",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// The error for a failed name lookup of `host`: always [`TransportErrorKind::Dns`].
pub fn resolve_error(host: &str, error: &io::Error) -> TransportError {
    TransportError::new(
        TransportErrorKind::Dns,
        format!("resolving {host}: {error}"),
    )
}

/// The `Retry-After` of an HTTP refusal, in its delta-seconds form (`Retry-After: 120`).
///
/// The HTTP-date form (`Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`) is ignored (`None`): turning
/// it into a wait means trusting that this machine's wall clock agrees with the server's, the
/// core schedules on a monotonic clock only, and rate limiters in practice send seconds. The
/// core then falls back to its own backoff.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(tungstenite::http::header::RETRY_AFTER)?;
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().map(Duration::from_secs)
}

/// The host and port a WebSocket request connects to (IPv6 literals without their brackets,
/// the scheme's default port when the URL names none).
///
/// # Errors
/// [`TransportErrorKind::BadUrl`] for a URL without a host or with a scheme other than `ws` or
/// `wss`.
pub fn host_and_port(
    request: &tungstenite::handshake::client::Request,
) -> Result<(String, u16), TransportError> {
    let uri = request.uri();
    let default_port = match uri.scheme_str() {
        Some("wss") => 443,
        Some("ws") => 80,
        _ => {
            return Err(TransportError::new(
                TransportErrorKind::BadUrl,
                format!("{uri} is not a ws:// or wss:// URL"),
            ));
        }
    };
    let host = uri.host().filter(|host| !host.is_empty()).ok_or_else(|| {
        TransportError::new(TransportErrorKind::BadUrl, format!("no host in {uri}"))
    })?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri.port_u16().unwrap_or(default_port);
    Ok((host.to_owned(), port))
}

/// Connects to the first of `addresses` that accepts, in order (as `TcpStream::connect` does
/// with a host name), with `connect` (the runtime's TCP connect, which also sets its options).
///
/// # Errors
/// [`TransportErrorKind::Dns`] for no address at all; otherwise the last address's failure,
/// mapped with [`io_error_kind`].
pub async fn connect_first<S, F, Fut>(
    host: &str,
    addresses: Vec<SocketAddr>,
    mut connect: F,
) -> Result<S, TransportError>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let mut last = None;
    for address in addresses {
        match connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some((address, error)),
        }
    }
    Err(match last {
        Some((address, error)) => TransportError::new(
            io_error_kind(&error, Phase::Connect),
            format!("connecting to {address}: {error}"),
        ),
        None => TransportError::new(
            TransportErrorKind::Dns,
            format!("{host} resolved to no address"),
        ),
    })
}

/// Wraps a tungstenite WebSocket stream: text messages become [`SocketEvent::Text`] (the
/// received bytes, not copied), a close frame or error becomes [`SocketEvent::Closed`] (with
/// [`transport_error`]), and pings, pongs and binary frames are skipped (tungstenite answers
/// pings itself).
#[derive(Debug)]
pub struct TungsteniteSocket<W>(pub W);

impl<W> Stream for TungsteniteSocket<W>
where
    W: Stream<Item = Result<Message, Error>> + Unpin,
{
    type Item = SocketEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SocketEvent>> {
        loop {
            return match self.0.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(Message::Text(text)))) => {
                    Poll::Ready(Some(SocketEvent::Text(Bytes::from(text))))
                }
                Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                    let error = match frame {
                        Some(frame) => TransportError::new(
                            TransportErrorKind::Closed {
                                code: Some(u16::from(frame.code)),
                            },
                            frame.reason.as_str(),
                        ),
                        None => TransportError::new(
                            TransportErrorKind::Closed { code: None },
                            "close frame without a code",
                        ),
                    };
                    Poll::Ready(Some(SocketEvent::Closed(error)))
                }
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(SocketEvent::Closed(
                    transport_error(&error, Phase::Open),
                ))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl<W> Sink<String> for TungsteniteSocket<W>
where
    W: Sink<Message, Error = Error> + Unpin,
{
    type Error = TransportError;

    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), TransportError>> {
        self.0.poll_ready_unpin(cx).map_err(open_error)
    }

    fn start_send(mut self: Pin<&mut Self>, text: String) -> Result<(), TransportError> {
        self.0
            .start_send_unpin(Message::Text(Utf8Bytes::from(text)))
            .map_err(open_error)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), TransportError>> {
        self.0.poll_flush_unpin(cx).map_err(open_error)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), TransportError>> {
        self.0.poll_close_unpin(cx).map_err(open_error)
    }
}

fn open_error(error: Error) -> TransportError {
    transport_error(&error, Phase::Open)
}

/// The WebSocket settings both runtimes connect with. tungstenite zero-fills its whole read
/// buffer before every socket read, so the 128 KiB default costs more per read than the larger
/// reads save; 16 KiB measured about 7 % more quotes/s end to end on tokio.
pub fn websocket_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// The HTTP upgrade request for a connection: the URL, plus the `Origin` header the core asks for.
///
/// # Errors
/// [`TransportErrorKind::BadUrl`] for a URL that is not a valid WebSocket URL.
pub fn upgrade_request(
    request: &crate::ConnectRequest,
) -> Result<tungstenite::handshake::client::Request, TransportError> {
    use tungstenite::client::IntoClientRequest;
    let mut http = request
        .url
        .as_str()
        .into_client_request()
        .map_err(|error| {
            TransportError::new(
                TransportErrorKind::BadUrl,
                format!("bad URL {}: {error}", request.url),
            )
        })?;
    if let Ok(origin) = tungstenite::http::HeaderValue::from_str(&request.origin) {
        http.headers_mut().insert("Origin", origin);
    }
    Ok(http)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::error::UrlError;
    use tungstenite::http::Response;
    use tungstenite::protocol::CloseFrame;
    use tungstenite::protocol::frame::coding::CloseCode;

    fn connect_kind(error: Error) -> TransportErrorKind {
        transport_error(&error, Phase::Connect).kind
    }

    fn http(status: u16, retry_after: Option<&str>) -> Error {
        let mut builder = Response::builder().status(status);
        if let Some(value) = retry_after {
            builder = builder.header("Retry-After", value);
        }
        Error::Http(Box::new(builder.body(None).expect("a valid response")))
    }

    fn io(kind: io::ErrorKind) -> Error {
        Error::Io(io::Error::new(kind, "test"))
    }

    #[test]
    fn http_refusals_keep_the_status_and_a_seconds_retry_after() {
        assert_eq!(
            connect_kind(http(429, Some("30"))),
            TransportErrorKind::HttpStatus {
                code: 429,
                retry_after: Some(Duration::from_secs(30)),
            }
        );
        assert_eq!(
            connect_kind(http(503, Some(" 5 "))),
            TransportErrorKind::HttpStatus {
                code: 503,
                retry_after: Some(Duration::from_secs(5)),
            }
        );
        assert_eq!(
            connect_kind(http(403, None)),
            TransportErrorKind::HttpStatus {
                code: 403,
                retry_after: None,
            }
        );
        let error = transport_error(&http(429, Some("1")), Phase::Connect);
        assert!(error.to_string().contains("429"), "{error}");
    }

    #[test]
    fn retry_after_ignores_dates_and_garbage() {
        for value in [
            "Fri, 31 Dec 1999 23:59:59 GMT",
            "-5",
            "1.5",
            "",
            "99999999999999999999999",
        ] {
            assert_eq!(
                connect_kind(http(429, Some(value))),
                TransportErrorKind::HttpStatus {
                    code: 429,
                    retry_after: None,
                },
                "{value:?}"
            );
        }
    }

    #[test]
    fn io_errors_map_to_their_kinds() {
        let cases = [
            (
                io::ErrorKind::ConnectionRefused,
                TransportErrorKind::Refused,
            ),
            (io::ErrorKind::ConnectionReset, TransportErrorKind::Reset),
            (io::ErrorKind::BrokenPipe, TransportErrorKind::Reset),
            (io::ErrorKind::UnexpectedEof, TransportErrorKind::Reset),
            (io::ErrorKind::ConnectionAborted, TransportErrorKind::Reset),
            (io::ErrorKind::TimedOut, TransportErrorKind::ConnectTimeout),
            (io::ErrorKind::PermissionDenied, TransportErrorKind::Other),
        ];
        for (kind, expected) in cases {
            assert_eq!(connect_kind(io(kind)), expected, "{kind:?}");
        }
        assert_eq!(
            transport_error(&io(io::ErrorKind::TimedOut), Phase::Open).kind,
            TransportErrorKind::Reset,
            "a timed-out read is a dead link, not a connect timeout"
        );
    }

    #[test]
    fn failed_lookups_are_dns() {
        // What std returns for a getaddrinfo failure (kind `Uncategorized` on stable).
        let lookup =
            io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(connect_kind(Error::Io(lookup)), TransportErrorKind::Dns);
        let none = io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        );
        assert_eq!(connect_kind(Error::Io(none)), TransportErrorKind::Dns);
        let error = resolve_error("nowhere.invalid", &io::Error::other("no such host"));
        assert_eq!(error.kind, TransportErrorKind::Dns);
        assert!(error.detail.contains("nowhere.invalid"));
    }

    #[test]
    fn tls_failures_are_tls_however_they_arrive() {
        // `Error::Tls` has variants only with a TLS feature of tungstenite, which this crate
        // does not enable (the runtime crates do); its arm is a plain match. What tokio-rustls
        // and futures-rustls return for a failed handshake is an I/O error:
        // tokio-rustls and futures-rustls wrap rustls errors in InvalidData I/O errors.
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(connect_kind(Error::Io(wrapped)), TransportErrorKind::Tls);
        let plain = io::Error::new(io::ErrorKind::InvalidData, "not rustls");
        assert_eq!(connect_kind(Error::Io(plain)), TransportErrorKind::Other);
    }

    #[test]
    fn urls_protocol_and_closed_errors() {
        assert_eq!(
            connect_kind(Error::Url(UrlError::NoHostName)),
            TransportErrorKind::BadUrl
        );
        assert_eq!(
            connect_kind(Error::Url(UrlError::UnsupportedUrlScheme)),
            TransportErrorKind::BadUrl
        );
        assert_eq!(
            connect_kind(Error::Protocol(ProtocolError::WrongHttpVersion)),
            TransportErrorKind::Other
        );
        assert_eq!(
            connect_kind(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)),
            TransportErrorKind::Reset
        );
        assert_eq!(
            connect_kind(Error::ConnectionClosed),
            TransportErrorKind::Closed { code: None }
        );
        assert_eq!(
            connect_kind(Error::AttackAttempt),
            TransportErrorKind::Other
        );
    }

    #[test]
    fn close_frames_and_stream_errors_become_closed_events() {
        let frames: Vec<Result<Message, Error>> = vec![
            Ok(Message::Ping(Bytes::new())),
            Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::Library(4001),
                reason: "bye".into(),
            }))),
            Ok(Message::Close(None)),
            Err(io(io::ErrorKind::ConnectionReset)),
        ];
        let events: Vec<SocketEvent> =
            futures::executor::block_on(TungsteniteSocket(futures::stream::iter(frames)).collect());
        assert_eq!(
            events,
            [
                SocketEvent::Closed(TransportError::new(
                    TransportErrorKind::Closed { code: Some(4001) },
                    "bye"
                )),
                SocketEvent::Closed(TransportError::new(
                    TransportErrorKind::Closed { code: None },
                    "close frame without a code"
                )),
                SocketEvent::Closed(TransportError::new(
                    TransportErrorKind::Reset,
                    "IO error: test"
                )),
            ]
        );
    }

    #[test]
    fn hosts_and_ports_come_from_the_url() {
        let request = |url: &str| {
            upgrade_request(&crate::ConnectRequest {
                id: tickwire_core::client::ConnectionId(1),
                url: url.to_owned(),
                origin: "https://example.com".to_owned(),
                timeout: Duration::from_secs(1),
                send_timeout: Duration::from_secs(1),
            })
        };
        let host = |url: &str| request(url).and_then(|request| host_and_port(&request));
        assert_eq!(
            host("ws://[::1]:8080/x").ok(),
            Some(("::1".to_owned(), 8080))
        );
        assert_eq!(
            host("wss://example.com/").ok(),
            Some(("example.com".to_owned(), 443))
        );
        assert_eq!(
            host("ws://127.0.0.1/").ok(),
            Some(("127.0.0.1".to_owned(), 80))
        );
        assert_eq!(
            request("not a url").err().map(|error| error.kind),
            Some(TransportErrorKind::BadUrl)
        );
        assert_eq!(
            host("http://127.0.0.1:80/").err().map(|error| error.kind),
            Some(TransportErrorKind::BadUrl)
        );
    }
}

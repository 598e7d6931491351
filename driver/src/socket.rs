//! Any tungstenite WebSocket stream (tokio-tungstenite, async-tungstenite) as a [`Socket`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tungstenite::{Error, Message, Utf8Bytes};

use crate::SocketEvent;

/// Wraps a tungstenite WebSocket stream: text messages become [`SocketEvent::Text`] (the
/// received bytes, not copied), a close frame or error becomes [`SocketEvent::Closed`], and
/// pings, pongs and binary frames are skipped (tungstenite answers pings itself).
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
                    let reason = frame.map_or_else(
                        || "closed".to_owned(),
                        |frame| format!("closed: {} {}", frame.code, frame.reason),
                    );
                    Poll::Ready(Some(SocketEvent::Closed(reason)))
                }
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(error))) => {
                    Poll::Ready(Some(SocketEvent::Closed(error.to_string())))
                }
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
    type Error = String;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.0
            .poll_ready_unpin(cx)
            .map_err(|error| error.to_string())
    }

    fn start_send(mut self: Pin<&mut Self>, text: String) -> Result<(), String> {
        self.0
            .start_send_unpin(Message::Text(Utf8Bytes::from(text)))
            .map_err(|error| error.to_string())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.0
            .poll_flush_unpin(cx)
            .map_err(|error| error.to_string())
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.0
            .poll_close_unpin(cx)
            .map_err(|error| error.to_string())
    }
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
/// A URL that is not a valid WebSocket URL.
pub fn upgrade_request(
    request: &crate::ConnectRequest,
) -> Result<tungstenite::handshake::client::Request, String> {
    use tungstenite::client::IntoClientRequest;
    let mut http = request
        .url
        .as_str()
        .into_client_request()
        .map_err(|error| format!("bad URL {}: {error}", request.url))?;
    if let Ok(origin) = tungstenite::http::HeaderValue::from_str(&request.origin) {
        http.headers_mut().insert("Origin", origin);
    }
    Ok(http)
}

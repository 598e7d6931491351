//! # tickwire-tokio
//!
//! Resilient market data on tokio. The driver owns the WebSocket (tokio-tungstenite, `ws://`
//! and `wss://` with the webpki root certificates), a timer and the core client; every
//! protocol, timing and retry decision is the core's.
//!
//! ```no_run
//! # async fn example() {
//! use futures::StreamExt;
//! use tickwire_tokio::{Config, Event};
//!
//! let feed = tickwire_tokio::connect(Config::default());
//! feed.subscribe(["BINANCE:BTCUSDT", "NASDAQ:AAPL"]);
//! let mut events = feed.events();
//! while let Some(event) = events.next().await {
//!     if let Event::Quote(quote) = event {
//!         println!("{} {:?}", quote.quote.symbol, quote.quote.last_price);
//!     }
//! }
//! feed.close().await;
//! # }
//! ```

use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use tickwire_core as core;
pub use tickwire_driver::{
    Bar, Config, Event, Events, Feed, FeedStatus, HistoryError, Options, PolledQuote, Poller,
    SeriesId, State, TokenProvider,
};
use tickwire_driver::{ConnectRequest, Runtime, SocketEvent};

/// Opens sockets and sleeps on tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    type Socket = TokioSocket;

    fn connect(&self, request: &ConnectRequest) -> BoxFuture<'static, Result<TokioSocket, String>> {
        let url = request.url.clone();
        let origin = request.origin.clone();
        async move {
            let mut http = url
                .as_str()
                .into_client_request()
                .map_err(|error| format!("bad URL {url}: {error}"))?;
            if let Ok(origin) = HeaderValue::from_str(&origin) {
                http.headers_mut().insert("Origin", origin);
            }
            let (ws, _) = tokio_tungstenite::connect_async(http)
                .await
                .map_err(|error| error.to_string())?;
            if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                let _ = tcp.set_nodelay(true);
            }
            Ok(TokioSocket { ws })
        }
        .boxed()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).boxed()
    }
}

/// A tokio-tungstenite WebSocket as the driver sees it.
#[derive(Debug)]
pub struct TokioSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Stream for TokioSocket {
    type Item = SocketEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SocketEvent>> {
        loop {
            return match self.ws.poll_next_unpin(cx) {
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
                // Pings are answered by tungstenite; pongs and binary frames carry nothing for us.
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

impl Sink<String> for TokioSocket {
    type Error = String;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.ws
            .poll_ready_unpin(cx)
            .map_err(|error| error.to_string())
    }

    fn start_send(mut self: Pin<&mut Self>, text: String) -> Result<(), String> {
        self.ws
            .start_send_unpin(Message::Text(Utf8Bytes::from(text)))
            .map_err(|error| error.to_string())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.ws
            .poll_flush_unpin(cx)
            .map_err(|error| error.to_string())
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.ws
            .poll_close_unpin(cx)
            .map_err(|error| error.to_string())
    }
}

/// Starts a feed on the current tokio runtime with default [`Options`].
///
/// # Panics
/// Outside a tokio runtime (as `tokio::spawn` does).
pub fn connect(config: Config) -> Feed {
    connect_with(config, Options::default())
}

/// Starts a feed on the current tokio runtime.
///
/// # Panics
/// Outside a tokio runtime (as `tokio::spawn` does).
pub fn connect_with(config: Config, options: Options) -> Feed {
    let (feed, driver) = tickwire_driver::start(TokioRuntime, config, options);
    tokio::spawn(driver);
    feed
}

/// The README's Rust examples, compiled (and run, unless marked `no_run`) as doctests here,
/// where every crate they use is a dependency, so they cannot drift.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

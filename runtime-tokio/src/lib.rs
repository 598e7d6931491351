//! # tickwire-tokio
//!
//! Resilient market data on tokio. The driver owns the WebSocket (tokio-tungstenite, `ws://`
//! and `wss://` with the webpki root certificates), a timer and the core client; every
//! protocol, timing and retry decision is the core's.
//!
//! A [`Config`] without a `seed` gets one drawn from the operating system for each feed (see
//! [`tickwire_driver::start`]), so two feeds never share session ids; set `seed` (or
//! `TICKWIRE_SEED`) to make session ids and reconnect jitter reproducible.
//!
//! Connection failures reach the core typed ([`core::client::TransportErrorKind`]): the host is
//! resolved first, so a failed lookup is reported as `Dns`; a refused TCP connect as `Refused`;
//! an HTTP answer to the upgrade as `HttpStatus` with its `Retry-After` seconds; TLS failures as
//! `Tls`.
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

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use tickwire_core as core;
pub use tickwire_driver::{
    Bar, Config, Event, Events, Feed, FeedStatus, HistoryError, Options, PolledQuote, Poller,
    SeriesId, State, TokenProvider,
};
use tickwire_driver::{ConnectRequest, Phase, Runtime, TransportError, TungsteniteSocket};

/// Opens sockets and sleeps on tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    type Socket = TokioSocket;

    fn connect(
        &self,
        request: &ConnectRequest,
    ) -> BoxFuture<'static, Result<TokioSocket, TransportError>> {
        let http = tickwire_driver::upgrade_request(request);
        async move {
            let http = http?;
            let (host, port) = tickwire_driver::host_and_port(&http)?;
            // Resolved apart from connecting, so a failed lookup is known to be one.
            let addresses: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|error| tickwire_driver::resolve_error(&host, &error))?
                .collect();
            let stream = tickwire_driver::connect_first(&host, addresses, |address| async move {
                let stream = TcpStream::connect(address).await?;
                // No Nagle delay on what the client sends.
                stream.set_nodelay(true)?;
                Ok(stream)
            })
            .await?;
            let config = Some(tickwire_driver::websocket_config());
            let (ws, _) =
                tokio_tungstenite::client_async_tls_with_config(http, stream, config, None)
                    .await
                    .map_err(|error| tickwire_driver::transport_error(&error, Phase::Connect))?;
            Ok(TungsteniteSocket(ws))
        }
        .boxed()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).boxed()
    }
}

/// The driver's view of this runtime's WebSocket.
pub type TokioSocket = TungsteniteSocket<WebSocketStream<MaybeTlsStream<TcpStream>>>;

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

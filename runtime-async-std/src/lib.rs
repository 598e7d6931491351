//! # tickwire-async-std
//!
//! Resilient market data on async-std or smol. The driver is written over futures-io and
//! async-io (async-tungstenite's smol integration, futures-rustls with the webpki roots), so the
//! same code runs on either executor; [`connect`] spawns on async-std, [`start`] hands the
//! driver future to any executor. Every protocol, timing and retry decision is the core's.
//!
//! Sockets are opened as on tokio: the host is resolved with async-net (a failed lookup is
//! reported to the core as `Dns`), the TCP stream is connected with `TCP_NODELAY` set, and the
//! TLS (`wss://`) and WebSocket handshakes run over it. A [`Config`] without a `seed` gets one
//! drawn from the operating system for each feed (see [`tickwire_driver::start`]); set `seed`
//! (or `TICKWIRE_SEED`) to make session ids and reconnect jitter reproducible.
//!
//! ```no_run
//! # async fn example() {
//! use futures::StreamExt;
//! use tickwire_async_std::{Config, Event};
//!
//! let feed = tickwire_async_std::connect(Config::default());
//! feed.subscribe(["BINANCE:BTCUSDT"]);
//! if let Some(Event::Quote(quote)) = feed.events().next().await {
//!     println!("{:?}", quote.quote.last_price);
//! }
//! feed.close().await;
//! # }
//! ```
//!
//! Under smol:
//!
//! ```no_run
//! smol::block_on(async {
//!     let (feed, driver) = tickwire_async_std::start(tickwire_async_std::Config::default(), Default::default());
//!     let task = smol::spawn(driver);
//!     feed.subscribe(["NASDAQ:AAPL"]);
//!     feed.close().await;
//!     task.await;
//! });
//! ```

use std::future::Future;
use std::time::Instant;

use async_tungstenite::WebSocketStream;
use futures::FutureExt;
use futures::future::BoxFuture;

pub use tickwire_core as core;
pub use tickwire_driver::{
    Bar, Config, Event, Events, Feed, FeedStatus, HistoryError, Options, PolledQuote, Poller,
    SeriesId, State, TokenProvider,
};
use tickwire_driver::{ConnectRequest, Phase, Runtime, TransportError, TungsteniteSocket};

type Transport = async_tungstenite::smol::ConnectStream;

/// Opens sockets with async-net and sleeps with async-io timers: executor-agnostic.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncIoRuntime;

impl Runtime for AsyncIoRuntime {
    type Socket = AsyncIoSocket;

    fn connect(
        &self,
        request: &ConnectRequest,
    ) -> BoxFuture<'static, Result<AsyncIoSocket, TransportError>> {
        let http = tickwire_driver::upgrade_request(request);
        async move {
            let http = http?;
            let (host, port) = tickwire_driver::host_and_port(&http)?;
            // Resolved apart from connecting, so a failed lookup is known to be one.
            let addresses = async_net::resolve((host.as_str(), port))
                .await
                .map_err(|error| tickwire_driver::resolve_error(&host, &error))?;
            let stream = tickwire_driver::connect_first(&host, addresses, |address| async move {
                let stream = async_net::TcpStream::connect(address).await?;
                // No Nagle delay on what the client sends (tokio's runtime does the same).
                stream.set_nodelay(true)?;
                Ok(stream)
            })
            .await?;
            let config = Some(tickwire_driver::websocket_config());
            let (ws, _) =
                async_tungstenite::smol::client_async_tls_with_config(http, stream, config)
                    .await
                    .map_err(|error| tickwire_driver::transport_error(&error, Phase::Connect))?;
            Ok(TungsteniteSocket(ws))
        }
        .boxed()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        async move {
            async_io::Timer::at(deadline).await;
        }
        .boxed()
    }
}

/// The driver's view of this runtime's WebSocket.
pub type AsyncIoSocket = TungsteniteSocket<WebSocketStream<Transport>>;

/// Creates a feed and its driver future for any executor (smol, async-std, …).
pub fn start(
    config: Config,
    options: Options,
) -> (Feed, impl Future<Output = ()> + Send + 'static) {
    tickwire_driver::start(AsyncIoRuntime, config, options)
}

/// Starts a feed on async-std's executor with default [`Options`].
pub fn connect(config: Config) -> Feed {
    connect_with(config, Options::default())
}

/// Starts a feed on async-std's executor.
pub fn connect_with(config: Config, options: Options) -> Feed {
    let (feed, driver) = start(config, options);
    async_std::task::spawn(driver);
    feed
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::stream::Stream as Switch;
    use async_tungstenite::tungstenite;
    use std::net::TcpListener;
    use std::time::Duration;
    use tickwire_driver::TransportErrorKind;

    fn request(url: String) -> ConnectRequest {
        ConnectRequest {
            id: tickwire_core::client::ConnectionId(1),
            url,
            origin: "https://www.tradingview.com".to_owned(),
            timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(5),
        }
    }

    /// A loopback WebSocket server for one connection, read until it ends.
    fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                if let Ok(mut ws) = tungstenite::accept(stream) {
                    while ws.read().is_ok() {}
                }
            }
        });
        address
    }

    #[test]
    fn sockets_have_nodelay_like_tokio() {
        let address = server();
        smol::block_on(async {
            let socket = AsyncIoRuntime
                .connect(&request(format!("ws://{address}/")))
                .await
                .expect("connects");
            match socket.0.get_ref() {
                Switch::Plain(stream) => assert!(stream.nodelay().expect("nodelay")),
                Switch::Tls(_) => panic!("a ws:// socket is plain TCP"),
            }
        });
    }

    #[test]
    fn wss_to_a_plain_tcp_port_fails_typed() {
        // The peer hangs up on the TLS client hello.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        std::thread::spawn(move || drop(listener.accept()));
        let error = smol::block_on(AsyncIoRuntime.connect(&request(format!("wss://{address}/"))))
            .expect_err("fails");
        assert!(
            matches!(
                error.kind,
                TransportErrorKind::Tls | TransportErrorKind::Reset
            ),
            "{error}"
        );
    }
}

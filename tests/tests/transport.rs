//! Transport behaviour of both runtimes against tiny loopback servers written here: the typed
//! errors connects and open sockets report, seeds, and closes that never hold up the driver.
//!
//! The servers are plain threads over std sockets (tungstenite's blocking server handshake), so
//! one server serves a test on any runtime. Every wait has a deadline; nothing asserts on how
//! long something took.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{Sink, Stream, StreamExt};
use tickwire_driver::{
    Config, ConnectRequest, Feed, Options, Runtime, SocketEvent, TransportError, TransportErrorKind,
};
use tokio_tungstenite::tungstenite;

mod support;

use support::{eventually, on_both_runtimes, sleep};

// ----- servers ----------------------------------------------------------------------------------

/// A listener on a free loopback port, serving each connection on its own thread with `serve`.
fn serve(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let serve = Arc::clone(&serve);
            std::thread::spawn(move || serve(stream));
        }
    });
    address
}

/// Reads an HTTP request head (up to the blank line).
fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// Answers every upgrade with 429 and `Retry-After: 7`.
fn rate_limiting_server() -> SocketAddr {
    serve(|mut stream| {
        read_head(&mut stream);
        let _ = stream.write_all(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
        );
    })
}

/// Speaks plain HTTP where a `wss://` client expects TLS.
fn plain_http_server() -> SocketAddr {
    serve(|mut stream| {
        let mut buffer = [0u8; 512];
        let _ = stream.read(&mut buffer);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    })
}

/// Accepts the WebSocket upgrade, then sends a close frame with code 4001.
fn closing_server() -> SocketAddr {
    serve(|stream| {
        if let Ok(mut ws) = tungstenite::accept(stream) {
            let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Library(4001),
                reason: "go away".into(),
            }));
            // Drive the close handshake until the client answers or goes.
            while ws.read().is_ok() {}
        }
    })
}

/// Accepts the WebSocket upgrade, then drops the TCP connection without a close frame.
fn resetting_server() -> SocketAddr {
    serve(|stream| {
        let _ = tungstenite::accept(stream);
    })
}

/// Accepts the WebSocket upgrade and then never reads or writes again; counts connections.
fn silent_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let held = Arc::new(Mutex::new(Vec::new()));
    let address = serve(move |stream| {
        if let Ok(ws) = tungstenite::accept(stream) {
            counter.fetch_add(1, Ordering::SeqCst);
            // Kept open, never read: the peer never answers a close handshake.
            held.lock()
                .unwrap_or_else(|error| error.into_inner())
                .push(ws);
        }
    });
    (address, accepted)
}

/// Accepts upgrades and reports the quote session id each connection creates.
fn session_recording_server() -> (SocketAddr, mpsc::Receiver<String>) {
    let (sender, receiver) = mpsc::channel();
    let sender = Mutex::new(sender);
    let address = serve(move |stream| {
        let Ok(mut ws) = tungstenite::accept(stream) else {
            return;
        };
        let mut reported = false;
        while let Ok(message) = ws.read() {
            let Ok(text) = message.to_text() else {
                continue;
            };
            if reported || !text.contains("quote_create_session") {
                continue;
            }
            if let Some(at) = text.find("qs_") {
                let id: String = text[at..].chars().take(3 + 12).collect();
                let _ = sender
                    .lock()
                    .unwrap_or_else(|error| error.into_inner())
                    .send(id);
                reported = true;
            }
        }
    });
    (address, receiver)
}

// ----- helpers ----------------------------------------------------------------------------------

fn request(url: &str) -> ConnectRequest {
    ConnectRequest {
        id: tickwire_core::client::ConnectionId(1),
        url: url.to_owned(),
        origin: "https://www.tradingview.com".to_owned(),
        timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(5),
    }
}

/// Runs `future` or fails after `limit`.
async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    let timer = sleep(limit);
    futures::pin_mut!(future, timer);
    match futures::future::select(future, timer).await {
        futures::future::Either::Left((value, _)) => value,
        futures::future::Either::Right(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

async fn connect_error<R: Runtime>(runtime: &R, url: &str) -> TransportError {
    match within(Duration::from_secs(10), url, runtime.connect(&request(url))).await {
        Ok(_) => panic!("{url} connected"),
        Err(error) => error,
    }
}

// ----- scenarios --------------------------------------------------------------------------------

async fn connect_failures_are_typed<R: Runtime>(runtime: R) {
    let refused = connect_error(&runtime, &format!("ws://{}/", closed_port())).await;
    assert_eq!(refused.kind, TransportErrorKind::Refused, "{refused}");

    let limited = connect_error(&runtime, &format!("ws://{}/", rate_limiting_server())).await;
    assert_eq!(
        limited.kind,
        TransportErrorKind::HttpStatus {
            code: 429,
            retry_after: Some(Duration::from_secs(7)),
        },
        "{limited}"
    );

    let not_tls = connect_error(&runtime, &format!("wss://{}/", plain_http_server())).await;
    assert!(
        matches!(
            not_tls.kind,
            TransportErrorKind::Tls | TransportErrorKind::Reset
        ),
        "{not_tls}"
    );

    for url in ["not a url", "http://127.0.0.1:1/", "ws:///path"] {
        let bad = connect_error(&runtime, url).await;
        assert_eq!(bad.kind, TransportErrorKind::BadUrl, "{url}: {bad}");
    }
}

async fn open_socket_endings_are_typed<R: Runtime>(runtime: R) {
    let url = format!("ws://{}/", closing_server());
    let mut socket = within(
        Duration::from_secs(10),
        "connect",
        runtime.connect(&request(&url)),
    )
    .await
    .expect("connects");
    let event = within(Duration::from_secs(10), "the close frame", socket.next()).await;
    match event {
        Some(SocketEvent::Closed(error)) => {
            assert_eq!(error.kind, TransportErrorKind::Closed { code: Some(4001) });
            assert_eq!(error.detail, "go away");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    let url = format!("ws://{}/", resetting_server());
    let mut socket = within(
        Duration::from_secs(10),
        "connect",
        runtime.connect(&request(&url)),
    )
    .await
    .expect("connects");
    // The driver reports a stream that just ends as a reset too.
    match within(Duration::from_secs(10), "the reset", socket.next()).await {
        Some(SocketEvent::Closed(error)) => {
            assert_eq!(error.kind, TransportErrorKind::Reset, "{error}");
        }
        None => {}
        Some(other) => panic!("expected a reset, got {other:?}"),
    }
}

/// The first connection's quote session id of a feed with `seed`.
async fn session_id(
    connect: fn(Config, Options) -> Feed,
    seed: Option<u64>,
    address: SocketAddr,
    ids: &mpsc::Receiver<String>,
) -> String {
    let feed = connect(
        Config {
            url: format!("ws://{address}/"),
            seed,
            ..Config::default()
        },
        Options::default(),
    );
    let start = Instant::now();
    let id = loop {
        match ids.try_recv() {
            Ok(id) => break id,
            Err(mpsc::TryRecvError::Empty) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no quote session within 10 s; status {:?}",
                    feed.status()
                );
                sleep(Duration::from_millis(10)).await;
            }
            Err(mpsc::TryRecvError::Disconnected) => panic!("server gone"),
        }
    };
    within(Duration::from_secs(10), "the feed to close", feed.close()).await;
    id
}

async fn seeds_from_the_os_differ_and_fixed_seeds_repeat(connect: fn(Config, Options) -> Feed) {
    let (address, ids) = session_recording_server();
    let first = session_id(connect, None, address, &ids).await;
    let second = session_id(connect, None, address, &ids).await;
    assert!(first.starts_with("qs_") && first.len() == 15, "{first}");
    assert_ne!(first, second, "two feeds without a seed share a session id");

    let fixed = session_id(connect, Some(42), address, &ids).await;
    let again = session_id(connect, Some(42), address, &ids).await;
    assert_eq!(fixed, again, "the same seed gives the same session ids");
    assert_ne!(fixed, first);
}

/// Short handshake timeout and backoff, and a close timeout far longer than the test's deadline.
fn impatient(url: String) -> (Config, Options) {
    let config = Config {
        url,
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_millis(300),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        jitter: 0.0,
        ..Config::default()
    };
    let options = Options {
        close_timeout: Duration::from_secs(60),
        ..Options::default()
    };
    (config, options)
}

/// Over real sockets. tungstenite's close completes once the close frame is written (it does
/// not wait for the peer's reply), so against this peer a close only blocks once the kernel's
/// buffers are full; [`a_close_that_never_finishes_does_not_hold_up_the_next_connect`] pins the
/// driver's side of it down with a close that never finishes.
async fn a_peer_that_never_reads_does_not_delay_the_reconnect(
    connect: fn(Config, Options) -> Feed,
) {
    let (address, accepted) = silent_server();
    let (config, options) = impatient(format!("ws://{address}/"));
    let feed = connect(config, options);
    // The peer never answers the handshake: the core gives up on it, closes it and reconnects.
    eventually(Duration::from_secs(10), "a second connection", || {
        accepted.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(feed.status().client.counters.connection_attempts >= 2);
    within(Duration::from_secs(10), "the feed to close", feed.close()).await;
}

// ----- a runtime whose closes never finish --------------------------------------------------------

/// Sockets that accept every send, never receive, and whose close completes only once the test
/// releases it: the strictest peer that "never answers the close handshake".
#[derive(Clone)]
struct StuckRuntime {
    connects: Arc<AtomicUsize>,
    closes_started: Arc<AtomicUsize>,
    closes_finished: Arc<AtomicUsize>,
    release: Shared<futures::channel::oneshot::Receiver<()>>,
    /// Sends never complete either (the peer takes nothing).
    blocked_sends: bool,
}

struct StuckSocket {
    runtime: StuckRuntime,
    closing: bool,
}

impl Stream for StuckSocket {
    type Item = SocketEvent;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<SocketEvent>> {
        Poll::Pending
    }
}

impl Sink<String> for StuckSocket {
    type Error = TransportError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        if self.runtime.blocked_sends {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
    fn start_send(self: Pin<&mut Self>, _: String) -> Result<(), TransportError> {
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), TransportError>> {
        if !self.closing {
            self.closing = true;
            self.runtime.closes_started.fetch_add(1, Ordering::SeqCst);
        }
        match self.runtime.release.poll_unpin(cx) {
            Poll::Ready(_) => {
                self.runtime.closes_finished.fetch_add(1, Ordering::SeqCst);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Runtime for StuckRuntime {
    type Socket = StuckSocket;

    fn connect(
        &self,
        _: &ConnectRequest,
    ) -> BoxFuture<'static, Result<StuckSocket, TransportError>> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        let socket = StuckSocket {
            runtime: self.clone(),
            closing: false,
        };
        async move { Ok(socket) }.boxed()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        async move {
            async_io::Timer::at(deadline).await;
        }
        .boxed()
    }
}

#[test]
fn a_close_that_never_finishes_does_not_hold_up_the_next_connect() {
    let (release, released) = futures::channel::oneshot::channel();
    let runtime = StuckRuntime {
        connects: Arc::default(),
        closes_started: Arc::default(),
        closes_finished: Arc::default(),
        release: released.shared(),
        blocked_sends: false,
    };
    let (config, options) = impatient("ws://127.0.0.1:1/".to_owned());
    let (feed, driver) = tickwire_driver::start(runtime.clone(), config, options);
    let driver = std::thread::spawn(move || futures::executor::block_on(driver));
    futures::executor::block_on(async {
        eventually(Duration::from_secs(10), "a second connect", || {
            runtime.connects.load(Ordering::SeqCst) >= 2
        })
        .await;
    });
    assert!(
        runtime.closes_started.load(Ordering::SeqCst) >= 1,
        "the first socket was being closed"
    );
    assert_eq!(
        runtime.closes_finished.load(Ordering::SeqCst),
        0,
        "the next connect came while the first close was still pending"
    );
    // Shutdown waits for the closes still pending; let them finish.
    let _ = release.send(());
    futures::executor::block_on(within(
        Duration::from_secs(10),
        "the feed to close",
        feed.close(),
    ));
    assert!(driver.join().is_ok());
    assert_eq!(
        runtime.closes_finished.load(Ordering::SeqCst),
        runtime.closes_started.load(Ordering::SeqCst),
        "every close ran to its end before the feed reported itself closed"
    );
}

/// A runtime whose connects never finish; counts the attempts started and dropped.
#[derive(Clone, Default)]
struct HangingRuntime {
    connects: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

/// Counts its drop.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Runtime for HangingRuntime {
    type Socket = StuckSocket;

    fn connect(
        &self,
        _: &ConnectRequest,
    ) -> BoxFuture<'static, Result<StuckSocket, TransportError>> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        let counter = DropCounter(Arc::clone(&self.dropped));
        async move {
            let _counter = counter;
            futures::future::pending().await
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

#[test]
fn the_core_times_out_a_hanging_connect_and_the_driver_drops_it() {
    let runtime = HangingRuntime::default();
    let (config, options) = impatient("ws://127.0.0.1:1/".to_owned());
    let config = Config {
        connect_timeout: Duration::from_millis(200),
        ..config
    };
    let (feed, driver) = tickwire_driver::start(runtime.clone(), config, options);
    let driver = std::thread::spawn(move || futures::executor::block_on(driver));
    futures::executor::block_on(async {
        eventually(Duration::from_secs(10), "a second attempt", || {
            runtime.connects.load(Ordering::SeqCst) >= 2
        })
        .await;
    });
    assert!(
        runtime.dropped.load(Ordering::SeqCst) >= 1,
        "the timed-out attempt was dropped"
    );
    assert!(
        feed.status()
            .client
            .counters
            .disconnects
            .get(tickwire_core::client::DisconnectCause::ConnectTimeout)
            >= 1
    );
    futures::executor::block_on(within(
        Duration::from_secs(10),
        "the feed to close",
        feed.close(),
    ));
    assert!(driver.join().is_ok());
    assert_eq!(
        runtime.dropped.load(Ordering::SeqCst),
        runtime.connects.load(Ordering::SeqCst),
        "no attempt outlives the feed"
    );
}

#[test]
fn a_send_the_peer_never_takes_ends_in_a_send_timeout() {
    let (release, released) = futures::channel::oneshot::channel::<()>();
    let runtime = StuckRuntime {
        connects: Arc::default(),
        closes_started: Arc::default(),
        closes_finished: Arc::default(),
        release: released.shared(),
        blocked_sends: false,
    };
    let blocked = StuckRuntime {
        blocked_sends: true,
        ..runtime.clone()
    };
    let (config, options) = impatient("ws://127.0.0.1:1/".to_owned());
    let config = Config {
        send_timeout: Duration::from_millis(200),
        handshake_timeout: Duration::from_secs(30),
        ..config
    };
    let (feed, driver) = tickwire_driver::start(blocked, config, options);
    let driver = std::thread::spawn(move || futures::executor::block_on(driver));
    futures::executor::block_on(async {
        eventually(Duration::from_secs(10), "a send timeout", || {
            feed.status()
                .client
                .last_failure
                .is_some_and(|failure| failure.starts_with("send timeout"))
        })
        .await;
    });
    let _ = release.send(());
    futures::executor::block_on(within(
        Duration::from_secs(10),
        "the feed to close",
        feed.close(),
    ));
    assert!(driver.join().is_ok());
}

// ----- runtimes ---------------------------------------------------------------------------------

fn on_tokio<F: Future<Output = ()>>(
    scenario: impl FnOnce(tickwire_tokio::TokioRuntime, fn(Config, Options) -> Feed) -> F,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(scenario(
        tickwire_tokio::TokioRuntime,
        tickwire_tokio::connect_with,
    ));
}

fn on_async_std<F: Future<Output = ()>>(
    scenario: impl FnOnce(tickwire_async_std::AsyncIoRuntime, fn(Config, Options) -> Feed) -> F,
) {
    async_std::task::block_on(scenario(
        tickwire_async_std::AsyncIoRuntime,
        tickwire_async_std::connect_with,
    ));
}

on_both_runtimes! {
    connect_failures => |runtime, _| connect_failures_are_typed(runtime);
    open_socket_endings => |runtime, _| open_socket_endings_are_typed(runtime);
    seeds => |_, connect| seeds_from_the_os_differ_and_fixed_seeds_repeat(connect);
    reconnect_past_a_silent_peer => |_, connect| a_peer_that_never_reads_does_not_delay_the_reconnect(connect);
}

#[test]
fn the_async_io_runtime_connects_under_smol() {
    smol::block_on(connect_failures_are_typed(
        tickwire_async_std::AsyncIoRuntime,
    ));
}

#[test]
fn tokio_sockets_have_nodelay() {
    let address = serve(|stream| {
        if let Ok(mut ws) = tungstenite::accept(stream) {
            while ws.read().is_ok() {}
        }
    });
    on_tokio(|runtime, _| async move {
        let url = format!("ws://{address}/");
        let socket = runtime.connect(&request(&url)).await.expect("connects");
        match socket.0.get_ref() {
            tokio_tungstenite::MaybeTlsStream::Plain(stream) => {
                assert!(stream.nodelay().expect("nodelay"));
            }
            _ => panic!("a ws:// socket is plain TCP"),
        }
    });
}

//! # tickwire-driver
//!
//! The one async driver loop behind both runtime crates. It owns nothing but the socket of the
//! moment and a timer; every protocol, timing and retry decision is the core [`Client`]'s. A
//! runtime crate supplies a [`Runtime`] (how to open a WebSocket, how to sleep) and spawns the
//! future [`start`] returns; the application gets a [`Feed`] handle.
//!
//! Applications use `tickwire-tokio` or `tickwire-async-std`; this crate is what they share.

mod events;
mod socket;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::{Sink, SinkExt, Stream};

pub use events::{EventQueue, Events};
pub use socket::{
    Phase, TungsteniteSocket, connect_first, host_and_port, io_error_kind, is_dns_failure,
    resolve_error, retry_after, transport_error, upgrade_request, websocket_config,
};
pub use tickwire_core::client::{
    AuthToken, BarsError, Config, ConnectRequest, Event, HistoryError, HistoryId, Input, PollError,
    PollErrorKind, PolledQuote, SeriesId, State, Status, TransportError, TransportErrorKind,
};
use tickwire_core::client::{Client, ConnectionId, Output};
pub use tickwire_core::message::Bar;

/// What arrives on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// One text message.
    Text(Bytes),
    /// The socket closed (a close frame: [`TransportErrorKind::Closed`] with its code) or failed
    /// (a reset, a TLS error…). The stream simply ending is reported as a reset by the driver.
    Closed(TransportError),
}

/// An open WebSocket as the driver sees it: text messages in, text messages out; a failed send
/// says why with a typed [`TransportError`].
pub trait Socket:
    Stream<Item = SocketEvent> + Sink<String, Error = TransportError> + Send + Unpin + 'static
{
}

impl<T> Socket for T where
    T: Stream<Item = SocketEvent> + Sink<String, Error = TransportError> + Send + Unpin + 'static
{
}

/// What a runtime provides: opening sockets and sleeping.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Its socket type.
    type Socket: Socket;

    /// Opens a WebSocket as `request` says (URL, `Origin`), or says why it could not with a
    /// typed [`TransportError`] (see [`transport_error`]).
    ///
    /// Neither the runtime nor the driver times the attempt: the core owns the connect timeout
    /// and, when it passes, asks for the attempt to be closed; the driver then drops this future.
    fn connect(
        &self,
        request: &ConnectRequest,
    ) -> BoxFuture<'static, Result<Self::Socket, TransportError>>;

    /// Completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;
}

/// Answers the core's requests for a fresh auth token: the token and its lifetime, or `None`
/// when there is none to be had right now (the core backs off and asks again).
pub type TokenProvider = Arc<dyn Fn() -> BoxFuture<'static, Option<AuthToken>> + Send + Sync>;

/// Performs fallback polls (see `Config::polling`). The core sends one poll at a time and decides
/// when the next goes; a poller only fetches.
pub trait Poller: Send + Sync + 'static {
    /// Fetches quotes for `symbols`: one per symbol found (left-out symbols are reported by the
    /// core), or why the poll failed.
    fn poll(
        &self,
        symbols: Vec<Arc<str>>,
    ) -> BoxFuture<'static, Result<Vec<PolledQuote>, PollError>>;
}

/// Driver options beyond the core's [`Config`].
#[derive(Clone)]
pub struct Options {
    /// Events that may wait for the application before quotes are conflated.
    pub event_capacity: usize,
    /// Answers requests for a fresh auth token; without one the current token is retried.
    pub token_provider: Option<TokenProvider>,
    /// Runs fallback polls; without one, poll requests are ignored.
    pub poller: Option<Arc<dyn Poller>>,
    /// How long closing a socket may take (sending the close frame). Closes run beside the
    /// driver loop, which keeps serving the client meanwhile; on shutdown the driver waits for
    /// the last ones, this long at most, before the feed reports itself closed.
    pub close_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            event_capacity: 10_000,
            token_provider: None,
            poller: None,
            close_timeout: Duration::from_secs(2),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Options")
            .field("event_capacity", &self.event_capacity)
            .field("token_provider", &self.token_provider.is_some())
            .field("poller", &self.poller.is_some())
            .field("close_timeout", &self.close_timeout)
            .finish()
    }
}

/// Status of the client and of the event queue.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedStatus {
    /// The core client's status.
    pub client: Status,
    /// Events waiting for the application.
    pub events_pending: usize,
    /// Quote and forming-bar updates replaced by newer ones because the application was behind.
    pub events_conflated: u64,
}

/// Where the answer to one `Feed::history` call goes.
type HistoryWaiter = oneshot::Sender<Result<Vec<Bar>, HistoryError>>;

struct Shared {
    client: Mutex<Client>,
    wake: mpsc::Sender<()>,
    events: EventQueue,
    history: Mutex<HashMap<HistoryId, HistoryWaiter>>,
    finished: Mutex<Option<futures::future::Shared<oneshot::Receiver<()>>>>,
}

impl Shared {
    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the driver the client changed outside it.
    fn wake(&self) {
        // A full channel already holds a wake-up: nothing is lost.
        let _ = self.wake.clone().try_send(());
    }
}

/// The relay's fanout drives a feed through this: each call goes to the client with the time
/// of the call (the `now` passed in is the caller's reading of the same clock).
impl tickwire_core::hub::UpstreamFeed for Feed {
    fn subscribe_quotes(&mut self, _now: Instant, symbols: &[Arc<str>]) -> usize {
        self.subscribe(symbols)
    }

    fn unsubscribe_quotes(&mut self, _now: Instant, symbols: &[Arc<str>]) {
        self.unsubscribe(symbols);
    }

    fn carries_quote(&self, symbol: &str) -> bool {
        self.shared.client().quote(symbol).is_some()
    }

    fn subscribe_bars(
        &mut self,
        _now: Instant,
        symbol: &str,
        timeframe: &str,
        history: u32,
    ) -> Result<SeriesId, BarsError> {
        Feed::subscribe_bars(self, symbol, timeframe, history)
    }

    fn unsubscribe_bars(&mut self, _now: Instant, series: SeriesId) {
        Feed::unsubscribe_bars(self, series);
    }
}

/// The application's handle: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
    /// Shared by every clone; when the last one is dropped, the feed closes itself.
    _owner: Arc<Owner>,
}

/// Closes the client when the application drops its last [`Feed`] without calling
/// [`Feed::close`], so the driver task and its socket never outlive every handle.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.client().close();
        self.0.wake();
    }
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Feed")
            .field("status", &self.status())
            .finish()
    }
}

impl Feed {
    /// Adds quote symbols; returns how many were new (see `Config::max_subscriptions`).
    pub fn subscribe<I, S>(&self, symbols: I) -> usize
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let added = self
            .shared
            .client()
            .subscribe_quotes(Instant::now(), symbols);
        self.shared.wake();
        added
    }

    /// Removes quote symbols.
    pub fn unsubscribe<I, S>(&self, symbols: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.shared
            .client()
            .unsubscribe_quotes(Instant::now(), symbols);
        self.shared.wake();
    }

    /// Subscribes to bars, loading `count` bars of history first.
    ///
    /// # Errors
    /// An invalid timeframe (the text lists the valid forms), too many series, or closed.
    pub fn subscribe_bars(
        &self,
        symbol: &str,
        timeframe: &str,
        count: u32,
    ) -> Result<SeriesId, BarsError> {
        let series = self
            .shared
            .client()
            .subscribe_bars(Instant::now(), symbol, timeframe, count);
        self.shared.wake();
        series
    }

    /// Stops a bar subscription.
    pub fn unsubscribe_bars(&self, series: SeriesId) {
        self.shared
            .client()
            .unsubscribe_bars(Instant::now(), series);
        self.shared.wake();
    }

    /// Fetches `count` bars; completes with the bars or a typed error (it times out per the
    /// config, survives reconnects, and fails with `Closed` if the feed closes first).
    pub async fn history(
        &self,
        symbol: &str,
        timeframe: &str,
        count: u32,
    ) -> Result<Vec<Bar>, HistoryError> {
        let (sender, receiver) = oneshot::channel();
        {
            // Register before the request can complete: both happen under the client lock.
            let mut client = self.shared.client();
            let id = client.request_history(Instant::now(), symbol, timeframe, count);
            self.shared
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, sender);
        }
        self.shared.wake();
        receiver.await.unwrap_or(Err(HistoryError::Closed))
    }

    /// The stream of events. Each event goes to one reader: use one stream per feed.
    pub fn events(&self) -> Events {
        Events::new(self.shared.events.clone())
    }

    /// A snapshot of the client and the event queue.
    pub fn status(&self) -> FeedStatus {
        FeedStatus {
            client: self.shared.client().status(Instant::now()),
            events_pending: self.shared.events.len(),
            events_conflated: self.shared.events.conflated(),
        }
    }

    /// The URL the feed connects to.
    pub fn url(&self) -> String {
        self.shared.client().config().url.clone()
    }

    /// Closes the feed and returns once the socket and the driver task are gone.
    pub async fn close(&self) {
        self.shared.client().close();
        self.shared.wake();
        let finished = self
            .shared
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(finished) = finished {
            let _ = finished.await;
        }
    }
}

/// Creates the feed and the driver future; the runtime crate spawns the future.
///
/// A `config` without a [`Config::seed`] gets one drawn from the operating system for this
/// client (through the standard library's randomly keyed hasher, see [`os_seed`]), so every feed
/// has its own session ids and reconnect jitter; set a seed to make both reproducible.
pub fn start<R: Runtime>(
    runtime: R,
    mut config: Config,
    options: Options,
) -> (Feed, impl Future<Output = ()> + Send + 'static) {
    if config.seed.is_none() {
        config.seed = Some(os_seed());
    }
    let (wake, wakeups) = mpsc::channel(1);
    let (done, finished) = oneshot::channel();
    let shared = Arc::new(Shared {
        client: Mutex::new(Client::new(config, Instant::now())),
        wake,
        events: EventQueue::new(options.event_capacity),
        history: Mutex::new(HashMap::new()),
        finished: Mutex::new(Some(finished.shared())),
    });
    let driver = Driver {
        runtime,
        shared: Arc::clone(&shared),
        options,
        socket: None,
        connecting: None,
        tasks: FuturesUnordered::new(),
        closing: FuturesUnordered::new(),
    };
    let future = async move {
        driver.run(wakeups).await;
        let _ = done.send(());
    };
    let owner = Arc::new(Owner(Arc::clone(&shared)));
    (
        Feed {
            shared,
            _owner: owner,
        },
        future,
    )
}

/// A seed for one client from the operating system's randomness, with no dependency: each
/// [`RandomState`](std::collections::hash_map::RandomState) is keyed from OS randomness (drawn
/// once per thread, then varied per instance), and a process-wide counter hashed in keeps two
/// clients created in one process apart even if keys ever repeat.
pub fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// The open connection, with the send timeout its [`ConnectRequest`] set.
struct Open<S> {
    id: ConnectionId,
    socket: S,
    send_timeout: Duration,
    /// A send failed: nothing more is sent, but what the peer sent before it closed (a
    /// `protocol_error` saying why, typically) is still read and handed to the core.
    send_failed: bool,
}

/// The connection attempt in flight.
struct Attempt<S> {
    id: ConnectionId,
    send_timeout: Duration,
    connect: BoxFuture<'static, Result<S, TransportError>>,
}

struct Driver<R: Runtime> {
    runtime: R,
    shared: Arc<Shared>,
    options: Options,
    socket: Option<Open<R::Socket>>,
    connecting: Option<Attempt<R::Socket>>,
    /// Token requests and polls in flight; each ends as an input for the client.
    tasks: FuturesUnordered<BoxFuture<'static, Input>>,
    /// Sockets being closed, each within the close timeout, beside the loop.
    closing: FuturesUnordered<BoxFuture<'static, ()>>,
}

/// What woke the driver.
enum Wakeup<S> {
    Socket(Option<SocketEvent>),
    Connected(Result<S, TransportError>),
    Task(Input),
    Changed,
    Timer,
}

impl<R: Runtime> Driver<R> {
    async fn run(mut self, mut wakeups: mpsc::Receiver<()>) {
        loop {
            self.execute_outputs().await;
            let (closed, deadline) = {
                let client = self.shared.client();
                (
                    client.status(Instant::now()).state == State::Closed,
                    client.poll_timeout(),
                )
            };
            if closed {
                break;
            }
            let wakeup = self.wait(&mut wakeups, deadline).await;
            self.handle(wakeup);
        }
        self.connecting = None;
        if let Some(open) = self.socket.take() {
            self.close_socket(open.socket);
        }
        // Every close started at most `close_timeout` ago and ends by then.
        while self.closing.next().await.is_some() {}
        self.shared.events.close();
        // Pending history waiters were answered with Closed by the client; drop any leftovers.
        self.shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    async fn wait(
        &mut self,
        wakeups: &mut mpsc::Receiver<()>,
        deadline: Option<Instant>,
    ) -> Wakeup<R::Socket> {
        let Driver {
            runtime,
            socket,
            connecting,
            tasks,
            closing,
            ..
        } = self;
        let timer = match deadline {
            Some(deadline) => runtime.sleep_until(deadline).fuse(),
            None => futures::future::pending().boxed().fuse(),
        };
        futures::pin_mut!(timer);
        let socket_next = async {
            match socket.as_mut() {
                Some(open) => open.socket.next().await,
                None => futures::future::pending().await,
            }
        }
        .fuse();
        futures::pin_mut!(socket_next);
        let connecting = async {
            match connecting.as_mut() {
                Some(attempt) => (&mut attempt.connect).await,
                None => futures::future::pending().await,
            }
        }
        .fuse();
        futures::pin_mut!(connecting);
        let task = async {
            if tasks.is_empty() {
                futures::future::pending::<Option<Input>>().await
            } else {
                tasks.next().await
            }
        }
        .fuse();
        futures::pin_mut!(task);
        let closed = async {
            if closing.is_empty() {
                futures::future::pending::<Option<()>>().await
            } else {
                closing.next().await
            }
        }
        .fuse();
        futures::pin_mut!(closed);
        futures::select_biased! {
            event = socket_next => Wakeup::Socket(event),
            result = connecting => Wakeup::Connected(result),
            input = task => input.map_or(Wakeup::Changed, Wakeup::Task),
            _ = closed => Wakeup::Changed,
            _ = wakeups.next() => Wakeup::Changed,
            () = timer => Wakeup::Timer,
        }
    }

    fn handle(&mut self, wakeup: Wakeup<R::Socket>) {
        let now = Instant::now();
        let shared = Arc::clone(&self.shared);
        let mut client = shared.client();
        match wakeup {
            Wakeup::Socket(Some(SocketEvent::Text(text))) => {
                if let Some(open) = &self.socket {
                    client.handle_input(now, Input::Message { id: open.id, text });
                }
            }
            Wakeup::Socket(Some(SocketEvent::Closed(error))) => {
                if let Some(open) = self.socket.take() {
                    client.handle_input(now, Input::Disconnected { id: open.id, error });
                    // After a close frame this sends the reply tungstenite queued; after a
                    // failure it ends at once. Either way, beside the loop.
                    self.close_socket(open.socket);
                }
            }
            Wakeup::Socket(None) => {
                if let Some(open) = self.socket.take() {
                    client.handle_input(
                        now,
                        Input::Disconnected {
                            id: open.id,
                            error: TransportError::new(TransportErrorKind::Reset, "socket ended"),
                        },
                    );
                }
            }
            Wakeup::Connected(result) => {
                let Some(attempt) = self.connecting.take() else {
                    return;
                };
                let id = attempt.id;
                match result {
                    Ok(socket) => {
                        self.socket = Some(Open {
                            id,
                            socket,
                            send_timeout: attempt.send_timeout,
                            send_failed: false,
                        });
                        client.handle_input(now, Input::Connected(id));
                    }
                    Err(error) => client.handle_input(now, Input::ConnectFailed { id, error }),
                }
            }
            Wakeup::Task(input) => client.handle_input(now, input),
            Wakeup::Changed => {}
            Wakeup::Timer => client.handle_timeout(now),
        }
    }

    /// Carries out everything the client decided, feeding back what that causes.
    async fn execute_outputs(&mut self) {
        loop {
            let outputs: Vec<Output> = {
                let mut client = self.shared.client();
                client.handle_timeout(Instant::now());
                std::iter::from_fn(|| client.poll_output()).collect()
            };
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                self.execute(output).await;
            }
        }
    }

    async fn execute(&mut self, output: Output) {
        match output {
            Output::Connect(request) => {
                if let Some(open) = self.socket.take() {
                    self.close_socket(open.socket);
                }
                // No timer here: the core owns the connect timeout and sends `Close` for this
                // attempt when it passes, which drops the future below.
                self.connecting = Some(Attempt {
                    id: request.id,
                    send_timeout: request.send_timeout,
                    connect: self.runtime.connect(&request),
                });
            }
            Output::Transmit { id, text } => {
                let Some(open) = self
                    .socket
                    .as_mut()
                    .filter(|open| open.id == id && !open.send_failed)
                else {
                    return;
                };
                let timer = self.runtime.sleep_until(Instant::now() + open.send_timeout);
                let sent = futures::select_biased! {
                    result = open.socket.send(text).fuse() => result,
                    () = timer.fuse() => Err(TransportError::new(
                        TransportErrorKind::SendTimeout,
                        format!("send blocked for {:?}: the peer is not reading", open.send_timeout),
                    )),
                };
                match sent {
                    Ok(()) => {}
                    Err(error) if error.kind == TransportErrorKind::SendTimeout => {
                        // Dropped, not closed: a close frame would queue behind the stuck send.
                        self.socket = None;
                        self.shared
                            .client()
                            .handle_input(Instant::now(), Input::Disconnected { id, error });
                    }
                    // The peer closed while we were sending (it rejected our token, say): keep
                    // reading, so its last words reach the core before the close does. The
                    // core's read timeout bounds a read side that never ends.
                    Err(_) => open.send_failed = true,
                }
            }
            Output::Close { id, .. } => {
                if self.socket.as_ref().is_some_and(|open| open.id == id) {
                    if let Some(open) = self.socket.take() {
                        self.close_socket(open.socket);
                    }
                }
                if self
                    .connecting
                    .as_ref()
                    .is_some_and(|attempt| attempt.id == id)
                {
                    // The attempt timed out or was abandoned: dropping it cancels the connect.
                    self.connecting = None;
                }
            }
            Output::RequestAuthToken => match &self.options.token_provider {
                Some(provider) => {
                    let request = provider();
                    self.tasks
                        .push(async move { Input::AuthToken(request.await) }.boxed());
                }
                None => self
                    .shared
                    .client()
                    .handle_input(Instant::now(), Input::AuthToken(None)),
            },
            Output::Poll(request) => {
                if let Some(poller) = &self.options.poller {
                    let poll = poller.poll(request.symbols);
                    let round = request.round;
                    self.tasks.push(
                        async move {
                            Input::PollResult {
                                round,
                                result: poll.await,
                            }
                        }
                        .boxed(),
                    );
                }
            }
            Output::Event(Event::History(history)) => {
                let waiter = self
                    .shared
                    .history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&history.id);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(history.result);
                    }
                    None => self.shared.events.push(Event::History(history)),
                }
            }
            Output::Event(event) => self.shared.events.push(event),
        }
    }

    /// Starts closing `socket` within the close timeout, beside the loop.
    fn close_socket(&mut self, socket: R::Socket) {
        let close = close_socket(self.runtime.clone(), self.options.close_timeout, socket);
        self.closing.push(close.boxed());
    }
}

/// Sends a close frame if the peer takes it within `timeout`, then drops the socket.
async fn close_socket<R: Runtime>(runtime: R, timeout: Duration, mut socket: R::Socket) {
    {
        let timer = runtime.sleep_until(Instant::now() + timeout);
        futures::select_biased! {
            _ = socket.close().fuse() => {},
            () = timer.fuse() => {},
        }
    }
}

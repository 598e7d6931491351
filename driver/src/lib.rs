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
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::{BoxFuture, Fuse, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::{Sink, SinkExt, Stream};

pub use events::{EventQueue, Events};
pub use socket::{TungsteniteSocket, upgrade_request, websocket_config};
pub use tickwire_core::client::{
    BarsError, Config, ConnectRequest, Event, HistoryError, HistoryId, Input, PolledQuote,
    SeriesId, State, Status,
};
use tickwire_core::client::{Client, Output, TransportError, TransportErrorKind};
pub use tickwire_core::message::Bar;

/// What arrives on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// One text message.
    Text(Bytes),
    /// The socket closed or failed.
    Closed(String),
}

/// An open WebSocket as the driver sees it: text messages in, text messages out.
pub trait Socket:
    Stream<Item = SocketEvent> + Sink<String, Error = String> + Send + Unpin + 'static
{
}

impl<T> Socket for T where
    T: Stream<Item = SocketEvent> + Sink<String, Error = String> + Send + Unpin + 'static
{
}

/// What a runtime provides: opening sockets and sleeping.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Its socket type.
    type Socket: Socket;

    /// Opens a WebSocket as `request` says (URL, `Origin`). The driver applies the timeout.
    fn connect(&self, request: &ConnectRequest)
    -> BoxFuture<'static, Result<Self::Socket, String>>;

    /// Completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;
}

/// Answers the core's requests for a fresh auth token.
pub type TokenProvider = Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// Performs fallback polls (see `Config::polling`).
pub trait Poller: Send + Sync + 'static {
    /// Fetches quotes for `symbols`.
    fn poll(&self, symbols: Vec<Arc<str>>) -> BoxFuture<'static, Vec<PolledQuote>>;
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
    /// How long a close frame may take on shutdown.
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
pub fn start<R: Runtime>(
    runtime: R,
    config: Config,
    options: Options,
) -> (Feed, impl Future<Output = ()> + Send + 'static) {
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

type Connecting<S> =
    Pin<Box<Fuse<BoxFuture<'static, (tickwire_core::client::ConnectionId, Result<S, String>)>>>>;

struct Driver<R: Runtime> {
    runtime: R,
    shared: Arc<Shared>,
    options: Options,
    socket: Option<(tickwire_core::client::ConnectionId, R::Socket)>,
    connecting: Option<Connecting<R::Socket>>,
    /// Token requests and polls in flight; each ends as an input for the client.
    tasks: FuturesUnordered<BoxFuture<'static, Input>>,
}

/// What woke the driver.
enum Wakeup<S> {
    Socket(Option<SocketEvent>),
    Connected(tickwire_core::client::ConnectionId, Result<S, String>),
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
        if let Some((_, socket)) = self.socket.take() {
            self.close_socket(socket).await;
        }
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
            ..
        } = self;
        let timer = match deadline {
            Some(deadline) => runtime.sleep_until(deadline).fuse(),
            None => futures::future::pending().boxed().fuse(),
        };
        futures::pin_mut!(timer);
        let socket_next = async {
            match socket.as_mut() {
                Some((_, socket)) => socket.next().await,
                None => futures::future::pending().await,
            }
        }
        .fuse();
        futures::pin_mut!(socket_next);
        let connecting = async {
            match connecting.as_mut() {
                Some(connecting) => connecting.await,
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
        futures::select_biased! {
            event = socket_next => Wakeup::Socket(event),
            (id, result) = connecting => Wakeup::Connected(id, result),
            input = task => input.map_or(Wakeup::Changed, Wakeup::Task),
            _ = wakeups.next() => Wakeup::Changed,
            () = timer => Wakeup::Timer,
        }
    }

    fn handle(&mut self, wakeup: Wakeup<R::Socket>) {
        let now = Instant::now();
        let mut client = self.shared.client();
        match wakeup {
            Wakeup::Socket(Some(SocketEvent::Text(text))) => {
                if let Some((id, _)) = &self.socket {
                    client.handle_input(now, Input::Message { id: *id, text });
                }
            }
            Wakeup::Socket(Some(SocketEvent::Closed(reason))) => {
                if let Some((id, _)) = self.socket.take() {
                    let error = TransportError::new(TransportErrorKind::Other, reason);
                    client.handle_input(now, Input::Disconnected { id, error });
                }
            }
            Wakeup::Socket(None) => {
                if let Some((id, _)) = self.socket.take() {
                    client.handle_input(
                        now,
                        Input::Disconnected {
                            id,
                            error: TransportError::new(TransportErrorKind::Reset, "socket ended"),
                        },
                    );
                }
            }
            Wakeup::Connected(id, result) => {
                self.connecting = None;
                match result {
                    Ok(socket) => {
                        self.socket = Some((id, socket));
                        client.handle_input(now, Input::Connected(id));
                    }
                    Err(reason) => {
                        let error = TransportError::new(TransportErrorKind::Other, reason);
                        client.handle_input(now, Input::ConnectFailed { id, error });
                    }
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
                if let Some((_, socket)) = self.socket.take() {
                    self.close_socket(socket).await;
                }
                let connect = self.runtime.connect(&request);
                let timer = self.runtime.sleep_until(Instant::now() + request.timeout);
                let id = request.id;
                let attempt = async move {
                    futures::select_biased! {
                        result = connect.fuse() => (id, result),
                        () = timer.fuse() => (id, Err("connect timed out".to_owned())),
                    }
                }
                .boxed()
                .fuse();
                self.connecting = Some(Box::pin(attempt));
            }
            Output::Transmit { id, text } => {
                let Some((current, socket)) = self.socket.as_mut() else {
                    return;
                };
                if *current != id {
                    return;
                }
                let send_timeout = self.shared.client().config().send_timeout;
                let timer = self.runtime.sleep_until(Instant::now() + send_timeout);
                let sent = futures::select_biased! {
                    result = socket.send(text).fuse() => result,
                    () = timer.fuse() => Err("send timed out: the peer is not reading".to_owned()),
                };
                if let Err(reason) = sent {
                    self.socket = None;
                    let error = TransportError::new(TransportErrorKind::Other, reason);
                    self.shared
                        .client()
                        .handle_input(Instant::now(), Input::Disconnected { id, error });
                }
            }
            Output::Close { id, .. } => {
                if self
                    .socket
                    .as_ref()
                    .is_some_and(|(current, _)| *current == id)
                {
                    if let Some((_, socket)) = self.socket.take() {
                        self.close_socket(socket).await;
                    }
                }
                self.connecting = None;
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
                                quotes: poll.await,
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

    /// Closes `socket` within the close timeout.
    fn close_socket(&self, socket: R::Socket) -> impl Future<Output = ()> + Send + 'static {
        close_socket(self.runtime.clone(), self.options.close_timeout, socket)
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

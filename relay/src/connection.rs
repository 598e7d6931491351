//! One downstream WebSocket.
//!
//! The hub task hands every frame to a small pool of writer tasks ([`WritePool`], one per
//! core): one queue push per frame, and one wake-up of each writer per hub flush, not one per
//! frame and connection. A writer puts each frame straight into its client's socket without
//! blocking (one `send` per frame) and counts it written at once. Only what a socket cannot
//! take at once is queued, for the connection's own task to write when the socket drains. That
//! task also reads the client and answers its pings and its close frame.
//!
//! tungstenite does the WebSocket protocol on both paths: its frame header encoding for the
//! hub's data frames, and its `WebSocketContext` for reading, limits, pongs and the close
//! handshake, driven here over the socket's non-blocking calls.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tickwire_core::hub::{CloseCode, CloseReason, ConnId, Frame, FrameKind, Refused};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tungstenite::error::{CapacityError, Error as WsError};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{FrameHeader, Utf8Bytes};
use tungstenite::protocol::{CloseFrame, Message, Role, WebSocketConfig, WebSocketContext};

use super::metrics::LatencyHistogram;
use super::{AppState, Command};

/// Time a departing or refused client gets to take its last frames.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// Encoded bytes a connection may have queued. The hub hands a connection at most its send
/// window of frames before they are reported written, so only control replies to a client
/// that sends but never reads can reach this: such a client is dropped.
const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Largest WebSocket frame header (a server's frames are never masked: 10 bytes).
const MAX_HEADER: usize = 14;

/// A frame in the queue: where its last byte is, and what writing it means.
#[derive(Debug)]
struct Queued {
    /// Offset in `WriteState::buffer` just past the frame.
    end: usize,
    /// A hub frame (counted in written reports); control replies are not.
    counted: bool,
    /// For data frames, when their update reached the hub.
    origin: Option<Instant>,
}

#[derive(Debug, Default)]
struct WriteState {
    /// Encoded bytes not yet written, from `start` on.
    buffer: Vec<u8>,
    start: usize,
    /// The frames whose bytes are in `buffer`, in order.
    frames: VecDeque<Queued>,
    /// Hub frames written and not yet reported to the hub.
    unreported: usize,
    /// A close frame is queued, or the socket failed: the hub's frames are dropped.
    closed: bool,
    /// A write failed: the connection task ends the connection.
    failed: bool,
    /// The hub closes the connection with this reason (the task sends the close frame).
    close_request: Option<CloseReason>,
    /// A pool writer has staged frames here and owes a flush.
    staged: bool,
    /// The socket would block: the connection task is told, and writes the rest.
    waiting: bool,
}

impl WriteState {
    fn queued(&self) -> bool {
        self.start < self.buffer.len()
    }
}

/// The write side of one connection, shared by the hub task (which writes) and the connection
/// task (which reads, and writes what the socket could not take at once).
#[derive(Debug)]
pub(crate) struct Writer {
    pool: Arc<WritePool>,
    /// The pool writer that writes this connection's frames.
    shard: usize,
    socket: TcpStream,
    state: Mutex<WriteState>,
    /// Wakes the connection task: bytes queued, a close requested, a write failed.
    wake: Notify,
    latency: Arc<LatencyHistogram>,
    report_every: usize,
}

/// Encodes one unmasked, final frame header for `length` payload bytes.
fn header(opcode: OpCode, length: usize) -> ([u8; MAX_HEADER], usize) {
    let mut out = [0u8; MAX_HEADER];
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut cursor = io::Cursor::new(&mut out[..]);
    // 14 bytes always hold an unmasked header.
    let _ = header.format(length as u64, &mut cursor);
    let used = usize::try_from(cursor.position()).unwrap_or(0);
    (out, used)
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a hub frame to this connection's pool writer.
    pub(crate) fn transmit(self: &Arc<Self>, conn: ConnId, frame: Frame) {
        self.pool
            .push(self.shard, conn, self.clone(), Item::Frame(frame));
    }

    /// The hub closes the connection. The close goes the frames' way, so the frames handed
    /// over before it (a last warning, say) are written first; then the connection task sends
    /// the close frame and ends.
    pub(crate) fn close(self: &Arc<Self>, conn: ConnId, reason: CloseReason) {
        self.pool
            .push(self.shard, conn, self.clone(), Item::Close(reason));
    }

    /// Encodes a hub frame behind whatever this connection has queued. True for the first
    /// frame staged since the last [`Writer::flush_staged`]: the caller then owes that call.
    fn stage(&self, frame: &Frame) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        let payload: &[u8] = frame.bytes();
        let (head, used) = header(OpCode::Data(Data::Text), payload.len());
        let head = head.get(..used).unwrap_or_default();
        let origin = (frame.kind() == FrameKind::Data).then(|| frame.origin());
        self.queue(&mut state, &[head, payload], 0, true, origin);
        !std::mem::replace(&mut state.staged, true)
    }

    /// Writes what is staged (and anything queued before it) in one `send` where the socket
    /// takes it all; what it does not take waits for the connection task. Returns the hub
    /// frames written since the last report once they reach `report_every`, for the caller
    /// to report (0 otherwise).
    ///
    /// Reports are batched as before: once the hub has a full window handed over, at least
    /// `report_every` of its frames are unreported or still queued, and writing the queued
    /// ones reports. So the hub never waits on a report that is not coming.
    fn flush_staged(&self) -> usize {
        let mut state = self.lock();
        state.staged = false;
        let was_waiting = state.waiting;
        if let Ok(false) = self.write_queued(&mut state) {
            state.waiting = true;
            if !was_waiting {
                self.wake.notify_one();
            }
        }
        if state.unreported >= self.report_every {
            std::mem::take(&mut state.unreported)
        } else {
            0
        }
    }

    /// Passes the hub's close to the connection task, once the frames before it are out.
    fn request_close(&self, reason: CloseReason) {
        self.lock().close_request = Some(reason);
        self.wake.notify_one();
    }

    fn fail(&self, state: &mut WriteState) {
        state.failed = true;
        state.closed = true;
        self.wake.notify_one();
    }

    /// Appends `parts` (minus the first `skip` bytes, already written) as one frame.
    fn queue(
        &self,
        state: &mut WriteState,
        parts: &[&[u8]],
        mut skip: usize,
        counted: bool,
        origin: Option<Instant>,
    ) {
        let size: usize = parts.iter().map(|part| part.len()).sum();
        if state
            .buffer
            .len()
            .saturating_sub(state.start)
            .saturating_add(size)
            > MAX_QUEUED_BYTES
        {
            self.fail(state);
            return;
        }
        for part in parts {
            let kept = part.get(skip.min(part.len())..).unwrap_or_default();
            skip = skip.saturating_sub(part.len());
            state.buffer.extend_from_slice(kept);
        }
        let end = state.buffer.len();
        state.frames.push_back(Queued {
            end,
            counted,
            origin,
        });
    }

    /// Queues control bytes of the connection task (pongs, close frames, a refusal), then
    /// writes what the socket takes. A close frame stops the hub's frames.
    fn queue_control(&self, bytes: &[u8], closing: bool) {
        if bytes.is_empty() && !closing {
            return;
        }
        let mut state = self.lock();
        if closing {
            state.closed = true;
        }
        if !bytes.is_empty() && !state.failed {
            self.queue(&mut state, &[bytes], 0, false, None);
        }
        let _ = self.write_queued(&mut state);
    }

    /// Writes queued bytes until the socket would block. Ok(true) once nothing is queued.
    fn write_queued(&self, state: &mut WriteState) -> io::Result<bool> {
        if state.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        while state.queued() {
            let pending = state.buffer.get(state.start..).unwrap_or_default();
            match self.socket.try_write(pending) {
                Ok(0) => {
                    self.fail(state);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(written) => {
                    state.start = state.start.saturating_add(written).min(state.buffer.len());
                    let now = Instant::now();
                    while let Some(front) = state.frames.front() {
                        if front.end > state.start {
                            break;
                        }
                        if front.counted {
                            state.unreported += 1;
                        }
                        if let Some(origin) = front.origin {
                            self.latency.observe(now.saturating_duration_since(origin));
                        }
                        state.frames.pop_front();
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => {
                    self.fail(state);
                    return Err(error);
                }
            }
        }
        state.buffer.clear();
        state.start = 0;
        state.frames.clear();
        state.waiting = false;
        // A burst's buffer is not kept by an idle connection.
        if state.buffer.capacity() > 64 * 1024 {
            state.buffer = Vec::new();
        }
        Ok(true)
    }

    fn has_queued(&self) -> bool {
        self.lock().queued()
    }

    /// Writes what is queued as the socket drains; returns once nothing is queued (or the
    /// socket failed).
    async fn drain(&self) -> io::Result<()> {
        loop {
            if self.write_queued(&mut self.lock())? {
                return Ok(());
            }
            self.socket.writable().await?;
        }
    }
}

/// Frames handed over by the hub task and not yet taken by a pool writer.
type Batch = Vec<(ConnId, Arc<Writer>, Item)>;

/// What the hub task hands a pool writer.
#[derive(Debug)]
enum Item {
    Frame(Frame),
    Close(CloseReason),
}

#[derive(Debug, Default)]
struct Shard {
    queue: Mutex<Batch>,
    wake: Notify,
}

impl Shard {
    /// Swaps the queue into the empty `batch`; false when there was nothing.
    fn take(&self, batch: &mut Batch) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *queue, batch);
        !batch.is_empty()
    }
}

/// The writers that put the hub's frames into sockets, one task per shard; connections are
/// spread over the shards as they arrive.
#[derive(Debug)]
pub(crate) struct WritePool {
    shards: Vec<Shard>,
    next: AtomicUsize,
}

impl WritePool {
    /// Starts one writer per core (at most 4); their written reports go to `commands`.
    pub(crate) fn start(commands: mpsc::Sender<Command>) -> Arc<WritePool> {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let pool = Arc::new(WritePool {
            shards: (0..count).map(|_| Shard::default()).collect(),
            next: AtomicUsize::new(0),
        });
        for index in 0..count {
            tokio::spawn(write_loop(pool.clone(), index, commands.clone()));
        }
        pool
    }

    fn assign(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len().max(1)
    }

    fn push(&self, shard: usize, conn: ConnId, writer: Arc<Writer>, item: Item) {
        let Some(shard) = self.shards.get(shard) else {
            return;
        };
        let mut queue = shard.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let was_empty = queue.is_empty();
        // Bounded: the hub hands each connection at most its send window before reports.
        queue.push((conn, writer, item));
        drop(queue);
        if was_empty {
            shard.wake.notify_one();
        }
    }
}

/// One pool writer: takes everything queued for its shard at once and writes it. Ends once
/// the hub task has ended (its command channel closed) and nothing is left queued: the closes
/// the hub decided last, at shutdown, still go out, and no queued writer keeps a socket open.
async fn write_loop(pool: Arc<WritePool>, index: usize, commands: mpsc::Sender<Command>) {
    let Some(shard) = pool.shards.get(index) else {
        return;
    };
    let mut batch: Batch = Vec::new();
    let mut staged = Vec::new();
    let mut reports = Vec::new();
    let mut hub_gone = false;
    loop {
        let notified = shard.wake.notified();
        if !shard.take(&mut batch) {
            if hub_gone {
                return;
            }
            tokio::select! {
                // Queued work first: the hub may have handed over its last closes and ended.
                biased;
                () = notified => continue,
                () = commands.closed() => {
                    hub_gone = true;
                    continue;
                }
            }
        }
        // Every frame a connection has in the batch goes out in one system call.
        for (conn, writer, item) in batch.drain(..) {
            match item {
                Item::Frame(frame) => {
                    if writer.stage(&frame) {
                        staged.push((conn, writer));
                    }
                }
                Item::Close(reason) => {
                    let written = writer.flush_staged();
                    if written > 0 {
                        reports.push((conn, written));
                    }
                    writer.request_close(reason);
                }
            }
        }
        for (conn, writer) in staged.drain(..) {
            let written = writer.flush_staged();
            if written > 0 {
                reports.push((conn, written));
            }
        }
        for (conn, frames) in reports.drain(..) {
            if hub_gone
                || commands
                    .send(Command::Written { conn, frames })
                    .await
                    .is_err()
            {
                hub_gone = true;
            }
        }
    }
}

/// The socket as tungstenite's protocol code sees it: reads are the socket's non-blocking
/// reads (`WouldBlock` when it has nothing), writes (pongs, close replies) are collected for
/// the writer's queue.
struct Io<'a> {
    socket: &'a TcpStream,
    replies: &'a mut Vec<u8>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.try_read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Bounded by the writer's queue limit once handed over.
        if self.replies.len() + buf.len() > MAX_QUEUED_BYTES {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        self.replies.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn bad_request(why: &'static str) -> Response {
    (StatusCode::BAD_REQUEST, why).into_response()
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Answers a WebSocket upgrade request (RFC 6455 handshake) and serves the socket once hyper
/// hands it over.
pub(crate) fn upgrade(mut request: Request, state: Arc<AppState>) -> Response {
    let headers = request.headers();
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return bad_request("Connection: upgrade expected");
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return bad_request("Upgrade: websocket expected");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|version| version.as_bytes() != b"13")
    {
        return bad_request("Sec-WebSocket-Version: 13 expected");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return bad_request("Sec-WebSocket-Key missing");
    };
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Ok(accept_key) = HeaderValue::from_str(&accept_key) else {
        return bad_request("bad Sec-WebSocket-Key");
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "a WebSocket upgrade failed");
                return;
            }
        };
        // The relay's accept loop serves hyper plain TCP streams, so this always succeeds.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => accept(parts.io.into_inner(), parts.read_buf, state).await,
            Err(_) => tracing::warn!("an upgraded connection is not a TCP stream"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept_key),
        ],
    )
        .into_response()
}

/// Runs one upgraded socket: registers it with the hub, then serves it until either side ends.
async fn accept(socket: TcpStream, read_already: Bytes, state: Arc<AppState>) {
    let writer = Arc::new(Writer {
        pool: state.write_pool.clone(),
        shard: state.write_pool.assign(),
        socket,
        state: Mutex::new(WriteState::default()),
        wake: Notify::new(),
        latency: state.latency.clone(),
        report_every: state.report_every,
    });
    let limit = state.max_websocket_message_bytes;
    let config = WebSocketConfig::default()
        // Client messages are small; a large eager read buffer would cost every idle client.
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let protocol =
        WebSocketContext::from_partially_read(read_already.to_vec(), Role::Server, Some(config));
    let (started, start) = oneshot::channel::<Result<ConnId, Refused>>();
    let commands = state.commands.clone();
    // The serving task is spawned first so the hub can hold its abort handle from the start.
    let serving = writer.clone();
    let task = tokio::spawn(async move {
        let Ok(registered) = start.await else { return };
        serve(serving, protocol, registered, commands).await;
    });
    let connect = Command::Connect {
        writer,
        task: task.abort_handle(),
        reply: started,
    };
    if state.commands.send(connect).await.is_err() {
        task.abort();
    }
}

fn close_frame(code: CloseCode) -> CloseFrame {
    CloseFrame {
        code: code.code().into(),
        reason: Utf8Bytes::from_static(code.reason()),
    }
}

/// Queues a close frame through the protocol state (so a client's close reply is not answered
/// again) and writes what the socket takes.
fn send_close(writer: &Writer, protocol: &mut WebSocketContext, code: CloseCode) {
    let mut replies = Vec::new();
    let mut io = Io {
        socket: &writer.socket,
        replies: &mut replies,
    };
    let _ = protocol.close(&mut io, Some(close_frame(code)));
    writer.queue_control(&replies, true);
}

async fn serve(
    writer: Arc<Writer>,
    mut protocol: WebSocketContext,
    registered: Result<ConnId, Refused>,
    commands: mpsc::Sender<Command>,
) {
    let conn = match registered {
        Ok(conn) => conn,
        Err(refused) => {
            let text = refused.frame.bytes();
            let (head, used) = header(OpCode::Data(Data::Text), text.len());
            let mut bytes = head.get(..used).unwrap_or_default().to_vec();
            bytes.extend_from_slice(text);
            writer.queue_control(&bytes, false);
            send_close(&writer, &mut protocol, CloseCode::TryAgainLater);
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, writer.drain()).await;
            return;
        }
    };
    let ended = run(&writer, &mut protocol, conn, &commands).await;
    let Some(reason) = ended else {
        // The hub closed it (the close frame is out, or the socket is gone).
        return;
    };
    let _ = commands.send(Command::Disconnected { conn, reason }).await;
    if reason == CloseReason::MessageTooBig {
        send_close(&writer, &mut protocol, reason.close_code());
    } else {
        // tungstenite queued the answer to a client's close frame as it read it: flushed here.
        let mut replies = Vec::new();
        let mut io = Io {
            socket: &writer.socket,
            replies: &mut replies,
        };
        let _ = protocol.flush(&mut io);
        writer.queue_control(&replies, true);
    }
    // A client that reads nothing gets a bounded wait, not a task that never ends.
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, writer.drain()).await;
}

/// What one read of the socket came to.
enum Read1 {
    /// Nothing more to read now.
    Drained,
    /// The client said something.
    Said(Command),
    /// The connection ends, for this reason.
    Ended(CloseReason),
}

fn read_one(
    writer: &Writer,
    protocol: &mut WebSocketContext,
    conn: ConnId,
    replies: &mut Vec<u8>,
) -> Read1 {
    let mut io = Io {
        socket: &writer.socket,
        replies,
    };
    match protocol.read(&mut io) {
        Ok(Message::Text(text)) => Read1::Said(Command::Text { conn, text }),
        Ok(Message::Binary(bytes)) => Read1::Said(Command::Binary {
            conn,
            bytes: bytes.len(),
        }),
        Ok(Message::Ping(_) | Message::Pong(_)) => Read1::Said(Command::Activity { conn }),
        Ok(Message::Close(_)) => Read1::Ended(CloseReason::ClientClosed),
        Ok(Message::Frame(_)) => Read1::Drained,
        Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Read1::Drained,
        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
            Read1::Ended(CloseReason::ClientClosed)
        }
        Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
            Read1::Ended(CloseReason::MessageTooBig)
        }
        Err(_) => Read1::Ended(CloseReason::SocketError),
    }
}

/// Serves a registered connection: forwards what the client says, writes what the socket
/// could not take at once, carries out the hub's close. `Some(reason)` when the client side
/// ended it, `None` when the hub did.
async fn run(
    writer: &Writer,
    protocol: &mut WebSocketContext,
    conn: ConnId,
    commands: &mpsc::Sender<Command>,
) -> Option<CloseReason> {
    let mut replies = Vec::new();
    loop {
        let queued = writer.has_queued();
        tokio::select! {
            ready = writer.socket.readable() => {
                if ready.is_err() {
                    return Some(CloseReason::SocketError);
                }
                loop {
                    let read = read_one(writer, protocol, conn, &mut replies);
                    writer.queue_control(&replies, false);
                    replies.clear();
                    match read {
                        Read1::Drained => break,
                        Read1::Ended(reason) => return Some(reason),
                        // Waiting here when the hub is busy stops this client's reads: TCP
                        // pushes back on it.
                        Read1::Said(command) => {
                            if commands.send(command).await.is_err() {
                                return Some(CloseReason::SocketError);
                            }
                        }
                    }
                }
            }
            ready = writer.socket.writable(), if queued => {
                if ready.is_err() {
                    return Some(CloseReason::SocketError);
                }
            }
            () = writer.wake.notified() => {}
        }
        let (written, failed, close) = {
            let mut state = writer.lock();
            let _ = writer.write_queued(&mut state);
            let written = if state.unreported >= writer.report_every {
                std::mem::take(&mut state.unreported)
            } else {
                0
            };
            (written, state.failed, state.close_request.take())
        };
        if let Some(reason) = close {
            send_close(writer, protocol, reason.close_code());
            let _ = writer.drain().await;
            return None;
        }
        if failed {
            return Some(CloseReason::SocketError);
        }
        if written > 0
            && commands
                .send(Command::Written {
                    conn,
                    frames: written,
                })
                .await
                .is_err()
        {
            return None;
        }
    }
}

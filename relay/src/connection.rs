//! One downstream WebSocket: its reader forwards what the client says to the hub task, its
//! writer sends what the hub hands it and reports each written batch.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tickwire_core::hub::{CloseCode, CloseReason, ConnId, Frame, FrameKind};
use tokio::sync::{mpsc, oneshot};

use super::metrics::LatencyHistogram;
use super::{AppState, Command};

/// What the hub task hands a connection's writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    Frame(Frame),
    Close(CloseReason),
}

/// Frames written per flush at most, so a written batch is reported while the next fills.
const WRITE_BATCH: usize = 256;
/// Time a departing or refused client gets to take its last frames.
const GOODBYE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn text(frame: &Frame) -> Utf8Bytes {
    // Frames are ASCII JSON, so this check never fails; it only costs a scan.
    Utf8Bytes::try_from(frame.bytes().clone()).unwrap_or_else(|_| Utf8Bytes::from(frame.as_str()))
}

async fn close_with(sink: &mut SplitSink<WebSocket, Message>, code: CloseCode) {
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from_static(code.reason()),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// Runs one upgraded socket: registers it with the hub, then serves it until either side ends.
pub(crate) async fn accept(socket: WebSocket, state: Arc<AppState>) {
    let (outbound, outbound_rx) = mpsc::unbounded_channel();
    let (started, start) = oneshot::channel::<Result<ConnId, tickwire_core::hub::Refused>>();
    let commands = state.commands.clone();
    let latency = state.latency.clone();
    let report_every = state.report_every;
    // The serving task is spawned first so the hub can hold its abort handle from the start.
    let task = tokio::spawn(async move {
        let Ok(registered) = start.await else { return };
        serve(
            socket,
            registered,
            outbound_rx,
            commands,
            latency,
            report_every,
        )
        .await;
    });
    let connect = Command::Connect {
        outbound,
        task: task.abort_handle(),
        reply: started,
    };
    if state.commands.send(connect).await.is_err() {
        task.abort();
    }
}

async fn serve(
    socket: WebSocket,
    registered: Result<ConnId, tickwire_core::hub::Refused>,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
    commands: mpsc::Sender<Command>,
    latency: Arc<LatencyHistogram>,
    report_every: usize,
) {
    let (mut sink, stream) = socket.split();
    let conn = match registered {
        Ok(conn) => conn,
        Err(refused) => {
            let goodbye = async {
                let _ = sink.send(Message::Text(text(&refused.frame))).await;
                close_with(&mut sink, CloseCode::TryAgainLater).await;
            };
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
            return;
        }
    };
    let ended = {
        let reading = read(stream, conn, &commands);
        let writing = write(
            &mut sink,
            conn,
            &mut outbound,
            &commands,
            &latency,
            report_every,
        );
        tokio::select! {
            ended = reading => Some(ended),
            () = writing => None,
        }
    };
    if let Some(reason) = ended {
        let _ = commands.send(Command::Disconnected { conn, reason }).await;
        // tungstenite answered a client's close frame as it read it; flushing sends the answer.
        // A client that reads nothing gets a bounded wait, not a task that never ends.
        let goodbye = async {
            if reason == CloseReason::MessageTooBig {
                close_with(&mut sink, reason.close_code()).await;
            } else {
                let _ = sink.close().await;
            }
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
    }
}

/// Forwards client messages until the client leaves; says why.
async fn read(
    mut stream: SplitStream<WebSocket>,
    conn: ConnId,
    commands: &mpsc::Sender<Command>,
) -> CloseReason {
    loop {
        let command = match stream.next().await {
            Some(Ok(Message::Text(text))) => Command::Text { conn, text },
            Some(Ok(Message::Binary(bytes))) => Command::Binary {
                conn,
                bytes: bytes.len(),
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Command::Activity { conn },
            Some(Ok(Message::Close(_))) | None => return CloseReason::ClientClosed,
            Some(Err(error)) => {
                // axum hides tungstenite's error type; its text names the capacity error.
                let described = format!("{error} {:?}", std::error::Error::source(&error));
                let too_big = described.contains("too long") || described.contains("Capacity");
                return if too_big {
                    CloseReason::MessageTooBig
                } else {
                    CloseReason::SocketError
                };
            }
        };
        // Waiting here when the hub is busy stops this client's reads: TCP pushes back on it.
        if commands.send(command).await.is_err() {
            return CloseReason::SocketError;
        }
    }
}

async fn report_failure(conn: ConnId, commands: &mpsc::Sender<Command>) {
    let failed = Command::Disconnected {
        conn,
        reason: CloseReason::SocketError,
    };
    let _ = commands.send(failed).await;
}

/// Sends what the hub hands over, in batches; returns when the hub closes the connection or
/// the socket fails.
///
/// Written frames are reported once `report_every` (half the hub's send window) have gone
/// out, not after every batch: with thousands of clients a report per write would double the
/// hub task's work. The hub cannot stall on it: once it has a full window handed over, at
/// least `report_every` of those frames are still to be written, and writing them reports.
async fn write(
    sink: &mut SplitSink<WebSocket, Message>,
    conn: ConnId,
    outbound: &mut mpsc::UnboundedReceiver<Outbound>,
    commands: &mpsc::Sender<Command>,
    latency: &LatencyHistogram,
    report_every: usize,
) {
    let mut origins: Vec<Instant> = Vec::new();
    let mut unreported = 0usize;
    loop {
        let Some(first) = outbound.recv().await else {
            return;
        };
        let mut next = Some(first);
        let mut frames = 0usize;
        let mut close = None;
        origins.clear();
        while let Some(item) = next.take() {
            match item {
                Outbound::Frame(frame) => {
                    if frame.kind() == FrameKind::Data {
                        origins.push(frame.origin());
                    }
                    if sink.feed(Message::Text(text(&frame))).await.is_err() {
                        return report_failure(conn, commands).await;
                    }
                    frames += 1;
                }
                Outbound::Close(reason) => {
                    close = Some(reason);
                    break;
                }
            }
            if frames < WRITE_BATCH {
                next = outbound.try_recv().ok();
            }
        }
        if sink.flush().await.is_err() {
            return report_failure(conn, commands).await;
        }
        let now = Instant::now();
        for origin in &origins {
            latency.observe(now.saturating_duration_since(*origin));
        }
        if let Some(reason) = close {
            close_with(sink, reason.close_code()).await;
            return;
        }
        unreported += frames;
        if unreported >= report_every {
            let written = Command::Written {
                conn,
                frames: std::mem::take(&mut unreported),
            };
            if commands.send(written).await.is_err() {
                return;
            }
        }
    }
}

//! What the emulator's test binaries share: their emulator configuration, and a raw WebSocket
//! client that decodes the packets of each message, echoes heartbeats, and gives up at a deadline.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tickwire_core::codec::{Decoder, Packet, encode_into};
use tickwire_emulator::{Emulator, EmulatorConfig};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Twelve symbols ticking 500 times a second in all, a heartbeat every 100 ms.
pub(crate) fn config() -> EmulatorConfig {
    EmulatorConfig {
        symbols: 12,
        rate_hz: 500.0,
        heartbeat_interval: Duration::from_millis(100),
        ..EmulatorConfig::default()
    }
}

/// What one server WebSocket message held.
#[derive(Debug)]
pub(crate) enum Received {
    /// The packets of a text message (heartbeats as `~h~<n>`), heartbeats already echoed.
    Packets(Vec<String>),
    /// A close frame.
    Close,
    /// The stream ended or failed without a close frame.
    Gone(String),
    /// Nothing came before the deadline.
    TimedOut,
}

pub(crate) struct Client {
    pub(crate) ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    decoder: Decoder,
    pub(crate) deadline: Instant,
    /// Packets read but not yet looked at by [`Client::until`].
    pending: VecDeque<String>,
}

impl Client {
    pub(crate) async fn connect(emulator: &Emulator) -> Client {
        let (ws, _) = connect_async(emulator.url()).await.expect("connects");
        Client {
            ws,
            decoder: Decoder::new(),
            deadline: Instant::now() + PATIENCE,
            pending: VecDeque::new(),
        }
    }

    pub(crate) async fn send(&mut self, payload: &str) {
        let mut text = String::new();
        encode_into(payload, &mut text);
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("sends");
    }

    /// The next message, or [`Received::TimedOut`] at the deadline.
    pub(crate) async fn receive(&mut self) -> Received {
        loop {
            let Ok(next) = timeout_at(self.deadline, self.ws.next()).await else {
                return Received::TimedOut;
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) => return Received::Close,
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Received::Gone(error.to_string()),
                None => return Received::Gone("end of stream".into()),
            };
            let mut packets = Vec::new();
            let mut echoes = Vec::new();
            for packet in self.decoder.decode(&Bytes::from(text.as_str().to_owned())) {
                match packet.expect("well-formed packets") {
                    Packet::Heartbeat(beat) => {
                        echoes.push(beat.echo());
                        packets.push(String::from_utf8_lossy(beat.payload()).into_owned());
                    }
                    Packet::Json(json) | Packet::LegacyJson(json) => {
                        packets.push(String::from_utf8_lossy(&json).into_owned());
                    }
                }
            }
            for echo in echoes {
                let _ = self.ws.send(Message::Text(echo.into())).await;
            }
            return Received::Packets(packets);
        }
    }

    /// Reads until a packet satisfies `wanted`; returns it and every packet read before it.
    /// Packets after it in the same message are kept for the next call.
    pub(crate) async fn until(&mut self, wanted: impl Fn(&str) -> bool) -> (String, Vec<String>) {
        let mut before = Vec::new();
        loop {
            while let Some(packet) = self.pending.pop_front() {
                if wanted(&packet) {
                    return (packet, before);
                }
                before.push(packet);
            }
            match self.receive().await {
                Received::Packets(packets) => self.pending.extend(packets),
                other => panic!("{other:?} while waiting; read {before:?}"),
            }
        }
    }

    /// Reads until a close frame; returns the packets before it. Panics on a stream that ends
    /// without one.
    pub(crate) async fn until_close_frame(&mut self) -> Vec<String> {
        let mut before: Vec<String> = self.pending.drain(..).collect();
        loop {
            match self.receive().await {
                Received::Packets(packets) => before.extend(packets),
                Received::Close => return before,
                Received::Gone(why) => panic!("no close frame ({why}); read {before:?}"),
                Received::TimedOut => panic!("no close frame in time; read {before:?}"),
            }
        }
    }
}

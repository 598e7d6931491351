//! # tickwire-core
//!
//! The sans-IO core of tickwire: bytes and time in; packets, typed messages and decisions out.
//! No sockets, no clocks, no async runtime.
//!
//! This crate currently provides the protocol layer:
//!
//! - [`codec`]: splits WebSocket text messages into `~m~<len>~m~<payload>` packets (zero-copy,
//!   UTF-16 length counting with resynchronisation, typed errors for hostile input) and frames
//!   outgoing payloads.
//! - [`message`]: parses packet payloads into typed [`message::ServerMessage`]s, borrowing from
//!   the payload.
//! - [`command`]: builds the client commands a streaming client sends, encoded byte-for-byte as
//!   the real clients send them.
//! - [`json`]: the compact, ASCII-only JSON writer behind every payload tickwire emits.
//!
//! ```
//! use bytes::Bytes;
//! use tickwire_core::codec::{Decoder, Packet};
//! use tickwire_core::message::{self, ServerMessage};
//!
//! let text = Bytes::from_static(
//!     b"~m~4~m~~h~3~m~67~m~{\"m\":\"qsd\",\"p\":[\"qs_a\",{\"n\":\"FX:EURUSD\",\"s\":\"ok\",\"v\":{\"lp\":1.08}}]}",
//! );
//! let decoder = Decoder::new();
//! for packet in decoder.decode(&text) {
//!     match packet {
//!         Ok(Packet::Heartbeat(beat)) => assert_eq!(beat.echo(), "~m~4~m~~h~3"),
//!         Ok(Packet::Json(payload)) => {
//!             let ServerMessage::QuoteData(quote) = message::parse(&payload).unwrap() else { panic!() };
//!             assert_eq!(quote.symbol, "FX:EURUSD");
//!         }
//!         other => panic!("{other:?}"),
//!     }
//! }
//! ```
#![cfg_attr(
    not(test),
    warn(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod command;
pub mod json;
pub mod message;

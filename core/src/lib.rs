//! # tickwire-core
//!
//! The sans-IO core of tickwire: bytes and time in; packets, typed messages and decisions out.
//! No sockets, no clocks, no async runtime.
//!
//! This crate provides:
//!
//! - [`codec`]: splits WebSocket text messages into `~m~<len>~m~<payload>` packets (zero-copy,
//!   UTF-16 length counting with resynchronisation, typed errors for hostile input) and frames
//!   outgoing payloads.
//! - [`message`]: parses packet payloads into typed [`message::ServerMessage`]s, borrowing from
//!   the payload.
//! - [`command`]: builds the client commands a streaming client sends, encoded byte-for-byte as
//!   the real clients send them.
//! - [`timeframe`]: bar timeframes checked and mapped to the server's form (`1h` → `60`), with
//!   when a bar of each closes.
//! - [`json`]: the compact, ASCII-only JSON writer behind every payload tickwire emits.
//! - [`client`]: the resilient streaming client as a state machine (time in, decisions out).
//! - [`record`]: what a recorder writes to its store and when: rows, batches, commit
//!   interval, conflation while the store lags.
//! - [`hub`]: the relay's fan-out: downstream subscriptions, change-only broadcast, per-connection
//!   bounded queues with conflation, limits and deadlines; stored states served stale until the
//!   upstream confirms them.
//! - [`query`]: a relay fed by a periodic query instead of a feed: when it runs, which rows
//!   changed, what a failure leaves in place.
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
//!
//! # Resource bounds
//!
//! Nothing that arrives from the network can make the core allocate without a bound. Every
//! limit, its default and what happens at it:
//!
//! | what | bound (default) | at the limit |
//! | --- | --- | --- |
//! | packet | `Config::max_packet_size` (32 MiB, UTF-16 units) | `FrameError::TooLarge` for that packet, counted in `decode_errors`; decoding goes on at the next header. Resynchronised spans obey it too. |
//! | message | the WebSocket layer's limit (tungstenite: 64 MiB message, 16 MiB frame) | the driver reports the socket failed: reconnect |
//! | packets per message | the message's length (at least 7 bytes each) | — |
//! | quote symbols, bar series | `Config::max_subscriptions` (10 000 each) | `subscribe_quotes` returns how many it added; `subscribe_bars` returns `None` |
//! | bars per history request | `Config::max_history_bars` (100 000) | `HistoryError::TooManyBars`, the series is removed |
//! | history requests | each ends within `Config::history_timeout` (30 s) | `HistoryError::Timeout` |
//! | commands waiting for the rate limit | `Config::max_queued_commands` (1 024) | dropped and reported (`Event::CommandsDropped`, `commands_dropped`); the desired state keeps them, the next connection replays them |
//! | client outputs | drained by the driver after every input | proportional to the input just handled |
//! | events waiting for the application (driver) | `Options::event_capacity` (10 000) | quotes conflate per symbol, forming bars per series (`events_conflated`); closed bars and errors are kept |
//! | relay: downstream connections | `HubConfig::max_connections` (16 384) | refused with a `CONNECTION_LIMIT` error, close code 1013 |
//! | relay: subscriptions per connection | `HubConfig::max_subscriptions_per_connection` (200) | `SUBSCRIPTION_LIMIT` error for each symbol past it |
//! | relay: symbols carried upstream | `HubConfig::max_upstream_symbols` (2 000), lingering ones included | the lingering symbol due first is dropped early; if none lingers, `SYMBOL_LIMIT` |
//! | relay: client message size | `HubConfig::max_message_bytes` (16 KiB); the relay's WebSocket limit (256 KiB) | `MESSAGE_TOO_LARGE` error; past the WebSocket limit the connection ends (1009) |
//! | relay: client message rate | `HubConfig::messages_per_second` (20, bursts of 40) | the message is ignored; one `RATE_LIMITED` error per second |
//! | relay: frames waiting per connection | `HubConfig::queue_capacity` (512), plus 64 control frames | conflated to the latest state per symbol, one `SLOW_CONSUMER` warning, closed (4001) if still behind after `slow_consumer_deadline` (10 s); control frames past it are dropped and counted |
//! | relay: frames handed to one socket writer | `HubConfig::send_window` (256) | the rest waits in the hub's queue |
//! | relay: silent connection | `HubConfig::keepalive_timeout` (90 s) | closed (4002) |
//! | relay: commands to the hub task | 8 192 | the connection's reader waits, so TCP pushes back on that client alone |
//! | relay: stored states waiting for a subscriber | `HubConfig::max_upstream_symbols` | `Hub::preload` returns false and keeps nothing |
//! | query relay: symbols held, row size | `QueryConfig::max_rows` (10 000), `max_row_bytes` (16 KiB) | the row is dropped and counted (`rows_over_limit`) |
//! | query relay: runs in flight | one; a timed-out run still has to return before the next | counted as failed (`timeouts`), the next run waits |
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
pub mod cluster;
pub mod codec;
pub mod command;
mod hash;
pub mod hub;
mod instant;
pub mod json;
pub mod message;
pub mod query;
pub mod record;
pub mod timeframe;

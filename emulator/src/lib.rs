//! # tickwire-emulator
//!
//! A TradingView-protocol feed server for tests and demos, faithful to the protocol notes
//! (hello first, compact ASCII JSON, pipelined commands accepted, client ids and quote keys
//! echoed exactly, quote snapshots then deltas, chart history then live `du`, the real error
//! messages, heartbeats with a lenient liveness rule) and able to misbehave on demand
//! ([`fault`]). A seeded random-walk [`market`] feeds it.
//!
//! It can also show the real feed's field conditions: market hours (symbols go
//! `out_of_session` and stop ticking, crypto trades on; [`EmulatorConfig::market_hours`],
//! [`Emulator::set_market_open`]), refused and expiring auth tokens (the `bad-token` and
//! `expire-token` faults, [`Emulator::revoke_token`]), the real `critical_error` for bad series
//! parameters, heartbeats batched with data, and a proper close handshake.
//!
//! The protocol logic ([`session::Session`]) is plain code without I/O; [`Emulator`] serves it
//! over loopback on tokio.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use tickwire_emulator::{Emulator, EmulatorConfig};
//!
//! let emulator = Emulator::start(EmulatorConfig { symbols: 20, rate_hz: 100.0, ..EmulatorConfig::default() }).await?;
//! println!("connect to {}", emulator.url());
//! emulator.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod fault;
pub mod market;
mod server;
pub mod session;

pub use fault::{Fault, FaultAction};
pub use server::{
    ConnectionEvent, Emulator, EmulatorConfig, MarketHours, QUOTE_SESSIONS_KEPT, Stats,
};

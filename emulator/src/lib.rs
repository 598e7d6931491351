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
//! Chart history and live `du` come from one bar book per symbol and timeframe, built from the
//! market's ticks whether or not a session listens, so a reconnect's backfill is the bars that
//! were streamed, and a test can read the emulator's own bars ([`Emulator::bar_history`]).
//!
//! The protocol logic ([`session::Session`]) is plain code without I/O; [`Emulator`] serves it
//! over loopback on tokio.
//!
//! The same port serves HTTP beside the WebSocket ([`Emulator::http_base`]): a request with
//! `Upgrade: websocket` becomes a WebSocket connection, any other is answered by the HTTP side
//! the real site has, as tickwire's HTTP contract fixes it: password sign-in
//! (`POST /accounts/signin/`) with a TOTP second factor
//! (`POST /accounts/two-factor/signin/totp/`) for [`EmulatorConfig::accounts`], the home page
//! (`GET /`) whose `var user = {...}` carries a fresh JWT for a valid session cookie, symbol
//! search (`GET /symbol_search/v3/`) and the scanner (`POST /{market}/scan`) over the live
//! market. The JWTs it issues are what `set_auth_token` accepts as authenticated (real-time
//! `update_mode`) until their `exp` ([`EmulatorConfig::token_lifetime`]); expired, foreign and
//! signed-out ones get `protocol_error` "bad auth token". At run time the sign-in can answer
//! captcha, lockout and the like ([`Emulator::set_signin_mode`]), any path can get a hostile
//! answer ([`Emulator::set_http_fault`], [`HttpFault`]), and upgrades can be refused while HTTP
//! still works ([`Emulator::refuse_upgrades`]).
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

mod auth;
mod background;
pub mod fault;
pub mod market;
mod server;
pub mod session;
mod web;

pub use auth::{Account, AccountSpecError, DEFAULT_PLAN, SigninMode, SigninModeError};
pub use background::BackgroundEmulator;
pub use fault::{Fault, FaultAction};
pub use market::EmulatorBar;
pub use server::{
    ConnectionEvent, DEFAULT_TOKEN_LIFETIME, Emulator, EmulatorConfig, HEADER_DEADLINE,
    MAX_REQUEST_HEAD, MarketHours, QUOTE_SESSIONS_KEPT, Stats,
};
pub use web::{HttpFault, MAX_SCAN_TICKERS, OVERSIZED_BODY, SEARCH_PAGE, TRUSTED_ORIGIN};

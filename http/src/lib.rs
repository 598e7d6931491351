//! # tickwire-http
//!
//! The HTTP side of the TradingView feed: password sign-in with a second factor, the session
//! cookies and the auth token they yield, symbol search and the scanner that serves the polling
//! fallback. Every response is untrusted: bodies are bounded, redirects are followed by hand and
//! counted, and nothing from the network is indexed or added without a check.
//!
//! The client is blocking (on `ureq`), so one [`HttpClient`] serves both async runtimes: callers
//! run it on a thread of their own (`spawn_blocking`, `unblock`).
//!
//! - [`HttpClient`], [`HttpConfig`], [`Bases`]: one agent with TradingView's headers, timeouts,
//!   a body bound and TLS always verified; [`HttpError`] for everything that can go wrong.
//! - [`signin`]: username and password, then the TOTP second factor ([`totp`]) when asked.
//! - [`session`]: the cookies a sign-in yields, kept in a file only its owner can read.
//! - [`token`]: the cookies exchanged for the WebSocket auth token; [`jwt`] reads its expiry.
//! - [`search`]: symbol search; [`scanner`]: quotes by polling.
//! - [`Secret`]: passwords, cookies and tokens, never shown in `Debug`, `Display` or errors.
//!
//! ```no_run
//! use tickwire_http::search::{self, SearchQuery};
//! use tickwire_http::{HttpClient, HttpConfig};
//!
//! let client = HttpClient::new(HttpConfig::default());
//! for found in search::search(&client, &SearchQuery::new("NASDAQ:AAPL"))? {
//!     println!("{} {}", found.id, found.description.unwrap_or_default());
//! }
//! # Ok::<(), tickwire_http::HttpError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
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

mod client;
mod cookie;
mod error;
pub mod feed;
#[doc(hidden)]
pub mod fuzzing;
pub mod jwt;
pub mod scanner;
pub mod search;
mod secret;
pub mod session;
pub mod signin;
mod text;
pub mod token;
pub mod totp;

pub use client::{Bases, DEFAULT_USER_AGENT, HttpClient, HttpConfig, ORIGIN, REFERER};
pub use error::HttpError;
pub use secret::Secret;

//! # tickwire-http
//!
//! The HTTP side of the TradingView feed: password sign-in with a second factor, the session
//! cookies and the auth token they yield, symbol search and the scanner that serves the polling
//! fallback. Every response is untrusted.

pub mod totp;

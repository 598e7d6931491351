//! # tickwire-async-std
//!
//! The async-std (and smol) driver for [`tickwire_core`]: it will own the WebSocket
//! (async-tungstenite over futures-io), the timer and the core client.
//!
//! **Not implemented yet.** This crate holds no functionality until the core client state
//! machine exists; it is part of the workspace so that its place and name are fixed. It
//! re-exports the core so that depending on it already gives the protocol layer.

pub use tickwire_core as core;

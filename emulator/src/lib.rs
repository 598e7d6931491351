//! # tickwire-emulator
//!
//! A TradingView-protocol feed server on loopback that misbehaves on purpose, for tests and
//! `tickwire demo`.
//!
//! **Not implemented yet.** This crate holds no functionality yet; it is part of the workspace
//! so that its place and name are fixed.

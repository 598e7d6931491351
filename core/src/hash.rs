//! The hasher of the hot maps: fast, and fixed, because the core has no entropy of its own.
//!
//! std's SipHash with a random key is the safe default for a map whose keys an attacker
//! chooses, but it was a large share of the hot path: about 5 % of the client's instructions
//! per quote (the symbol lookup) and 45 % of the hub's per delivery (the connection lookups).
//! [`FastMap`] uses foldhash with a fixed seed instead. A fixed seed lets anyone who can choose
//! keys compute colliding ones, so this map type is only for maps that the network cannot fill:
//!
//! - the client's quotes by symbol hold the symbols the application subscribed to, at most
//!   [`Config::max_subscriptions`](crate::client::Config::max_subscriptions); the server only
//!   looks symbols up (and an unknown or colliding one costs at most a probe of that bounded
//!   table, never an insertion). Behind a relay, downstream clients do choose these symbols,
//!   but only through the hub's cap (`HubConfig::max_upstream_symbols`, checked against
//!   `max_subscriptions`): colliding names can make a lookup walk a table of that size, no
//!   more;
//! - the hub's connections are keyed by the [`ConnId`](crate::hub::ConnId)s the hub itself
//!   hands out in order, at most
//!   [`HubConfig::max_connections`](crate::hub::HubConfig::max_connections).
//!
//! A map keyed by strings from the network that the network can also insert must not use it.

use std::collections::HashMap;

/// A `HashMap` with foldhash's fast hasher and its fixed default seed.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

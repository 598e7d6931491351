//! Cluster-wide demand: the union of the symbols every live relay's clients want.
//!
//! Each relay publishes its own wanted set (what its hub carries, lingering symbols included)
//! with a time to live; the leader carries the union upstream. A relay that dies stops
//! refreshing, its entry expires, and its symbols leave the union (then the upstream, after
//! the leader's own linger). The union is capped: past the cap the symbols wanted by the most
//! relays win, ties broken by name, so every relay computes the same set from the same
//! entries.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tickwire_core::cluster::Demand;
//!
//! let now = Instant::now();
//! let ttl = Duration::from_secs(15);
//! let mut demand = Demand::new(100);
//! demand.update(now, "relay-a", ["X:A", "X:B"], ttl);
//! demand.update(now, "relay-b", ["X:B", "X:C"], ttl);
//! assert_eq!(demand.union().len(), 3);
//! // relay-b stops refreshing: its symbols leave once its entry expires.
//! demand.update(now + ttl, "relay-a", ["X:A", "X:B"], ttl);
//! demand.expire(now + ttl);
//! assert_eq!(demand.union().iter().map(|s| s.as_ref()).collect::<Vec<_>>(), ["X:A", "X:B"]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Relay ids kept at most; entries from more relays are ignored (and counted).
pub const MAX_RELAYS: usize = 1_024;

#[derive(Debug)]
struct Entry {
    symbols: BTreeSet<Arc<str>>,
    expires: Instant,
}

/// The demand of every relay of a cluster. See the [module docs](self).
#[derive(Debug)]
pub struct Demand {
    cap: usize,
    relays: BTreeMap<String, Entry>,
    ignored: u64,
}

impl Demand {
    /// No demand yet; the union holds at most `cap` symbols (the upstream symbol cap).
    pub fn new(cap: usize) -> Demand {
        Demand {
            cap,
            relays: BTreeMap::new(),
            ignored: 0,
        }
    }

    /// `relay` wants `symbols` (its whole set, replacing the last one) until `now + ttl`.
    /// A relay's set is cut at the cap; a relay past [`MAX_RELAYS`] is ignored.
    pub fn update<I, S>(&mut self, now: Instant, relay: &str, symbols: I, ttl: Duration)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if !self.relays.contains_key(relay) && self.relays.len() >= MAX_RELAYS {
            self.ignored = self.ignored.saturating_add(1);
            return;
        }
        let symbols = symbols
            .into_iter()
            .filter(|symbol| !symbol.as_ref().is_empty())
            .take(self.cap)
            .map(|symbol| Arc::from(symbol.as_ref()))
            .collect();
        let expires = now.checked_add(ttl).unwrap_or(now);
        self.relays
            .insert(relay.to_owned(), Entry { symbols, expires });
    }

    /// `relay` left cleanly: its demand ends now.
    pub fn remove(&mut self, relay: &str) {
        self.relays.remove(relay);
    }

    /// Drops the entries whose time to live has passed; returns the relays dropped.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .relays
            .iter()
            .filter(|(_, entry)| entry.expires <= now)
            .map(|(relay, _)| relay.clone())
            .collect();
        for relay in &expired {
            self.relays.remove(relay);
        }
        expired
    }

    /// When the next entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.relays.values().map(|entry| entry.expires).min()
    }

    /// The relays with live entries.
    pub fn relays(&self) -> impl Iterator<Item = &str> {
        self.relays.keys().map(String::as_str)
    }

    /// Entries ignored because [`MAX_RELAYS`] relays were known.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The symbols to carry: every symbol some relay wants, at most the cap of them (the
    /// most wanted first, then by name).
    pub fn union(&self) -> BTreeSet<Arc<str>> {
        let mut wanted: BTreeMap<&Arc<str>, usize> = BTreeMap::new();
        for entry in self.relays.values() {
            for symbol in &entry.symbols {
                let count = wanted.entry(symbol).or_insert(0);
                *count = count.saturating_add(1);
            }
        }
        if wanted.len() <= self.cap {
            return wanted.into_keys().cloned().collect();
        }
        let mut ranked: Vec<(&Arc<str>, usize)> = wanted.into_iter().collect();
        ranked.sort_by(|(a, a_count), (b, b_count)| b_count.cmp(a_count).then_with(|| a.cmp(b)));
        ranked
            .into_iter()
            .take(self.cap)
            .map(|(symbol, _)| symbol.clone())
            .collect()
    }
}

/// Longest demand entry accepted, in bytes.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// One relay's demand as stored (`NAME:demand:<relay>`) and announced
/// (`NAME:demand-changes`): `{"relay":"<id>","symbols":["X:A",…],"ttl_ms":15000}`.
///
/// ```
/// use std::time::Duration;
/// use tickwire_core::cluster::demand::DemandEntry;
///
/// let entry = DemandEntry {
///     relay: "relay-a".to_owned(),
///     symbols: vec!["X:A".to_owned()],
///     ttl: Duration::from_secs(15),
/// };
/// let text = entry.render();
/// assert_eq!(text, r#"{"relay":"relay-a","symbols":["X:A"],"ttl_ms":15000}"#);
/// assert_eq!(DemandEntry::parse(text.as_bytes()).unwrap(), entry);
/// assert!(DemandEntry::parse(b"{}").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemandEntry {
    /// The relay's id.
    pub relay: String,
    /// The symbols its hub carries (lingering ones included).
    pub symbols: Vec<String>,
    /// How long the entry lives without a rewrite.
    pub ttl: Duration,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireEntry {
    relay: String,
    symbols: Vec<String>,
    ttl_ms: u64,
}

/// A demand entry that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("demand entry: {0}")]
pub struct DemandEntryError(String);

impl DemandEntry {
    /// The stored form.
    pub fn render(&self) -> String {
        let wire = WireEntry {
            relay: self.relay.clone(),
            symbols: self.symbols.clone(),
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Reads the stored form.
    ///
    /// # Errors
    /// [`DemandEntryError`] for text over [`MAX_ENTRY_BYTES`], not of this form, or with an
    /// empty relay id.
    pub fn parse(text: &[u8]) -> Result<DemandEntry, DemandEntryError> {
        if text.len() > MAX_ENTRY_BYTES {
            return Err(DemandEntryError(format!(
                "{} bytes is over the limit",
                text.len()
            )));
        }
        let wire: WireEntry =
            serde_json::from_slice(text).map_err(|error| DemandEntryError(error.to_string()))?;
        if wire.relay.is_empty() {
            return Err(DemandEntryError("no relay id".to_owned()));
        }
        Ok(DemandEntry {
            relay: wire.relay,
            symbols: wire.symbols,
            ttl: Duration::from_millis(wire.ttl_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &BTreeSet<Arc<str>>) -> Vec<&str> {
        set.iter().map(|symbol| symbol.as_ref()).collect()
    }

    #[test]
    fn the_union_follows_updates_removals_and_expiry() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut demand = Demand::new(10);
        demand.update(now, "a", ["X:A", "X:B"], ttl);
        demand.update(now, "b", ["X:C"], Duration::from_secs(5));
        assert_eq!(names(&demand.union()), ["X:A", "X:B", "X:C"]);
        demand.update(now, "a", ["X:B"], ttl);
        assert_eq!(names(&demand.union()), ["X:B", "X:C"]);
        assert_eq!(demand.next_expiry(), Some(now + Duration::from_secs(5)));
        assert!(demand.expire(now + Duration::from_millis(4_999)).is_empty());
        assert_eq!(demand.expire(now + Duration::from_secs(5)), ["b"]);
        assert_eq!(names(&demand.union()), ["X:B"]);
        demand.remove("a");
        assert!(demand.union().is_empty());
        assert_eq!(demand.next_expiry(), None);
    }

    #[test]
    fn past_the_cap_the_most_wanted_symbols_win_the_same_way_everywhere() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut demand = Demand::new(2);
        demand.update(now, "a", ["X:A", "X:Z"], ttl);
        demand.update(now, "b", ["X:Z", "X:B"], ttl);
        demand.update(now, "c", ["X:Z", "X:B", "X:C", "X:D"], ttl);
        assert_eq!(names(&demand.union()), ["X:B", "X:Z"]);
        // One relay's own list is cut at the cap too.
        let mut one = Demand::new(2);
        one.update(now, "a", ["X:1", "X:2", "X:3", ""], ttl);
        assert_eq!(one.union().len(), 2);
    }

    #[test]
    fn relays_past_the_bound_are_ignored_and_counted() {
        let now = Instant::now();
        let mut demand = Demand::new(10);
        for relay in 0..MAX_RELAYS + 3 {
            demand.update(now, &format!("r{relay}"), ["X:A"], Duration::from_secs(1));
        }
        assert_eq!(demand.relays().count(), MAX_RELAYS);
        assert_eq!(demand.ignored(), 3);
        // A known relay still refreshes.
        demand.update(now, "r0", ["X:B"], Duration::from_secs(1));
        assert_eq!(demand.union().len(), 2);
    }
}

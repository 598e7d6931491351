//! The cluster's update stream: what the leader publishes, and how every relay follows it.
//!
//! Each message is a relay downstream frame (the same JSON a WebSocket client of the relay
//! gets) with the leader's fencing `epoch` and, for a symbol's messages, a per-symbol `seq`
//! added at the end:
//!
//! | message | when |
//! | --- | --- |
//! | `{"type":"quote","symbol":S,"data":{…},"epoch":E,"seq":N}` | the fields that changed (`null` clears one); `seq` 1 carries every field |
//! | `{"type":"bar","symbol":S,"timeframe":T,"bar":{…},"closed":B,"epoch":E,"seq":N}` | a bar of the symbol's series |
//! | `{"type":"snapshot","symbol":S,"quote":{…},"bar":{…},"epoch":E,"seq":N}` | the symbol's whole state, replacing what came before (a new leader's first message per symbol, or after messages were skipped while the store was slow) |
//! | `{"type":"error","code":"UNKNOWN_SYMBOL","message":…,"symbol":S,"epoch":E,"seq":N}` | the upstream rejected the symbol |
//! | `{"type":"error","code":"BARS_UNAVAILABLE","message":…,"symbol":S,"epoch":E,"seq":N}` | the upstream refused the symbol's bar series (its quotes continue) |
//! | `{"type":"status","upstream":…,"epoch":E}` | the leader's upstream state, also repeated as the leader's heartbeat |
//!
//! Beside the stream, the leader keeps each symbol's latest state as a `snapshot` frame with the
//! epoch and seq of the last message folded into it, so a relay that starts, falls behind or
//! sees a gap reads that instead of asking the leader.
//!
//! [`Publisher`] (the leader) numbers and renders the messages. [`Follower`] (every relay)
//! checks them: a message of an older epoch is a deposed leader's and is ignored; a gap in a
//! symbol's sequence, or a new epoch whose first message for a symbol is not its `seq` 1,
//! makes it read the symbol's snapshot ([`FollowerOutput::ReadSnapshot`]) and hold that
//! symbol's messages (a bounded number) until the snapshot is in; then the relay's hub takes
//! the symbol's whole state and sends its subscribers a fresh snapshot
//! ([`FollowerOutput::Snapshot`]), so no client keeps a stale value silently. A new leader's
//! first quote of a symbol is taken the same way.
//!
//! ```
//! use std::sync::Arc;
//! use tickwire_core::client::Quote;
//! use tickwire_core::cluster::{Follower, FollowerOutput, Publisher};
//!
//! let mut leader = Publisher::new(3);
//! let quote = Quote { last_price: Some(1.5), ..Quote::new(Arc::from("X:A")) };
//! let published = leader.quote(&quote).unwrap();
//! assert_eq!(
//!     published.message,
//!     r#"{"type":"quote","symbol":"X:A","data":{"lp":1.5},"epoch":3,"seq":1}"#
//! );
//!
//! let mut follower = Follower::new(100);
//! follower.want("X:A");
//! // A newly wanted symbol's stored snapshot is read first (here the store has none).
//! assert_eq!(follower.poll_output(), Some(FollowerOutput::ReadSnapshot(Arc::from("X:A"))));
//! follower.handle_snapshot("X:A", None);
//! assert_eq!(follower.poll_output(), None);
//! // The leader's first message of its epoch carries every field: the whole state.
//! follower.handle_message(published.message.as_bytes()).unwrap();
//! let Some(FollowerOutput::Snapshot(state)) = follower.poll_output() else { panic!() };
//! assert_eq!(state.last_price, Some(1.5));
//! let next = leader.quote(&Quote { last_price: Some(1.75), ..quote }).unwrap();
//! follower.handle_message(next.message.as_bytes()).unwrap();
//! let Some(FollowerOutput::Quote(merged)) = follower.poll_output() else { panic!() };
//! assert_eq!(merged.last_price, Some(1.75));
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::client::{Quote, State};
use crate::hub::render::{self, BarState};
use crate::message::{Bar, QuoteValues};

/// Messages of one symbol held while its snapshot is read; past this the oldest go (the
/// snapshot read after them covers them).
pub const HELD_PER_SYMBOL: usize = 256;
/// Longest stream message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// One message for the stream, and the symbol's snapshot to store beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The symbol, when the message is about one.
    pub symbol: Option<Arc<str>>,
    /// The message to publish.
    pub message: String,
    /// The symbol's snapshot with this message folded in (store it before publishing);
    /// `None` when the symbol's snapshot is to be deleted (it was rejected).
    pub snapshot: Option<String>,
}

#[derive(Debug, Default)]
struct Published1 {
    seq: u64,
    quote: Option<Quote>,
    bar: Option<BarState>,
}

/// The leader's side: numbers each symbol's messages and renders them with its epoch.
#[derive(Debug)]
pub struct Publisher {
    epoch: u64,
    symbols: HashMap<Arc<str>, Published1>,
}

fn with_tail(mut frame: Vec<u8>, epoch: u64, seq: Option<u64>) -> String {
    // Every frame the hub renders is a JSON object: its closing brace makes room for the tail.
    if frame.last() == Some(&b'}') {
        frame.pop();
    }
    let tail = match seq {
        Some(seq) => format!(",\"epoch\":{epoch},\"seq\":{seq}}}"),
        None => format!(",\"epoch\":{epoch}}}"),
    };
    frame.extend_from_slice(tail.as_bytes());
    // Frames are ASCII JSON (the hub's writer escapes the rest).
    String::from_utf8(frame).unwrap_or_default()
}

impl Publisher {
    /// A publisher for the leader of `epoch`; every symbol starts again at `seq` 1.
    pub fn new(epoch: u64) -> Publisher {
        Publisher {
            epoch,
            symbols: HashMap::new(),
        }
    }

    /// The epoch it publishes with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Symbols it has published about.
    pub fn symbol_count(&self) -> usize {
        self.symbols.len()
    }

    fn snapshot(&self, symbol: &str, state: &Published1) -> String {
        with_tail(
            render::snapshot(symbol, state.quote.as_ref(), state.bar.as_ref()),
            self.epoch,
            Some(state.seq),
        )
    }

    /// The merged quote of a symbol: the fields that changed since the last one published,
    /// or `None` if none did.
    pub fn quote(&mut self, quote: &Quote) -> Option<Published> {
        let epoch = self.epoch;
        let state = self.symbols.entry(quote.symbol.clone()).or_default();
        let fields = render::changed_fields(state.quote.as_ref(), quote);
        if fields.is_empty() {
            return None;
        }
        let frame = render::quote_update(&quote.symbol, quote, fields, state.quote.as_ref());
        state.seq = state.seq.saturating_add(1);
        state.quote = Some(quote.clone());
        let message = with_tail(frame, epoch, Some(state.seq));
        let state = self.symbols.get(quote.symbol.as_ref())?;
        Some(Published {
            symbol: Some(quote.symbol.clone()),
            snapshot: Some(self.snapshot(&quote.symbol, state)),
            message,
        })
    }

    /// A bar of the symbol's series.
    pub fn bar(
        &mut self,
        symbol: &Arc<str>,
        timeframe: &Arc<str>,
        bar: &Bar,
        closed: bool,
    ) -> Published {
        let epoch = self.epoch;
        let state = self.symbols.entry(symbol.clone()).or_default();
        let new = BarState {
            timeframe: timeframe.clone(),
            bar: *bar,
            closed,
        };
        let frame = render::bar_update(symbol, &new);
        state.seq = state.seq.saturating_add(1);
        // A closed bar never replaces a newer one as the latest.
        if state
            .bar
            .as_ref()
            .is_none_or(|old| old.bar.time <= bar.time)
        {
            state.bar = Some(new);
        }
        let message = with_tail(frame, epoch, Some(state.seq));
        let snapshot = self
            .symbols
            .get(symbol)
            .map(|state| self.snapshot(symbol, state));
        Published {
            symbol: Some(symbol.clone()),
            message,
            snapshot,
        }
    }

    /// A new epoch for the same state (this relay took the lease again): every symbol's
    /// sequence starts again, and its first message of the epoch must be
    /// [`Publisher::snapshot_message`].
    pub fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        for state in self.symbols.values_mut() {
            state.seq = 0;
        }
    }

    /// The symbol's stored snapshot as it stands, if it has published about it.
    pub fn snapshot_text(&self, symbol: &str) -> Option<String> {
        self.symbols
            .get(symbol)
            .map(|state| self.snapshot(symbol, state))
    }

    /// The symbols it has published about.
    pub fn symbols(&self) -> impl Iterator<Item = &Arc<str>> {
        self.symbols.keys()
    }

    /// The latest quote of every symbol it has published about.
    pub fn quotes(&self) -> impl Iterator<Item = &Quote> {
        self.symbols
            .values()
            .filter_map(|state| state.quote.as_ref())
    }

    /// The symbol's whole state as a stream message of its own (`"type":"snapshot"`), which a
    /// follower takes in place of everything before it; `None` for a symbol it has not
    /// published about.
    pub fn snapshot_message(&mut self, symbol: &str) -> Option<Published> {
        let (symbol, state) = self.symbols.get_key_value(symbol)?;
        let symbol = symbol.clone();
        let seq = state.seq.saturating_add(1);
        let quote = state.quote.clone();
        let bar = state.bar.clone();
        if let Some(state) = self.symbols.get_mut(&symbol) {
            state.seq = seq;
        }
        let text = with_tail(
            render::snapshot(&symbol, quote.as_ref(), bar.as_ref()),
            self.epoch,
            Some(seq),
        );
        Some(Published {
            symbol: Some(symbol),
            message: text.clone(),
            snapshot: Some(text),
        })
    }

    /// The upstream refused the symbol's bar series: its bar is forgotten, its quotes go on.
    pub fn series_error(&mut self, symbol: &Arc<str>, reason: &str) -> Published {
        let state = self.symbols.entry(symbol.clone()).or_default();
        state.seq = state.seq.saturating_add(1);
        state.bar = None;
        let seq = state.seq;
        let message = format!("no bars for this symbol (its quotes continue): {reason}");
        let frame = render::error("BARS_UNAVAILABLE", &message, Some(symbol));
        Published {
            symbol: Some(symbol.clone()),
            message: with_tail(frame, self.epoch, Some(seq)),
            snapshot: self.snapshot_text(symbol),
        }
    }

    /// The upstream rejected `symbol`; it is forgotten (its snapshot is to be deleted).
    pub fn symbol_error(&mut self, symbol: &Arc<str>, reason: &str) -> Published {
        let seq = self
            .symbols
            .remove(symbol)
            .map_or(1, |state| state.seq.saturating_add(1));
        let message = format!("upstream rejected the symbol: {reason}");
        let frame = render::error("UNKNOWN_SYMBOL", &message, Some(symbol));
        Published {
            symbol: Some(symbol.clone()),
            message: with_tail(frame, self.epoch, Some(seq)),
            snapshot: None,
        }
    }

    /// The symbol left the upstream: forget it (delete its snapshot too).
    pub fn forget(&mut self, symbol: &str) {
        self.symbols.remove(symbol);
    }

    /// The leader's upstream state.
    pub fn status(&self, state: State) -> String {
        with_tail(render::status(state.as_str()), self.epoch, None)
    }
}

// ----- the follower ------------------------------------------------------------------------

/// A stream message that cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Longer than [`MAX_MESSAGE_BYTES`].
    #[error("stream message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not a message of this format.
    #[error("malformed stream message: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct WireBar {
    time: f64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: Option<f64>,
}

#[derive(Deserialize)]
struct WireBarState {
    timeframe: String,
    bar: WireBar,
    closed: bool,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: String,
    symbol: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    quote: Option<&'a RawValue>,
    bar: Option<serde_json::Value>,
    timeframe: Option<String>,
    closed: Option<bool>,
    upstream: Option<String>,
    code: Option<String>,
    message: Option<String>,
    epoch: u64,
    seq: Option<u64>,
}

impl WireBar {
    fn bar(&self) -> Bar {
        Bar {
            index: 0,
            time: self.time,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: self.volume,
        }
    }
}

/// What the relay does with the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowerOutput {
    /// The symbol's merged quote changed: hand it to the hub (`Hub::handle_quote`).
    Quote(Quote),
    /// A bar: hand it to the hub (`Hub::handle_bar`).
    Bar {
        /// The symbol.
        symbol: Arc<str>,
        /// Its timeframe.
        timeframe: Arc<str>,
        /// The bar.
        bar: Bar,
        /// Whether it has closed.
        closed: bool,
    },
    /// The upstream refused the symbol's bar series; its quotes go on
    /// (`Fanout::handle_series_error`).
    SeriesError {
        /// The symbol.
        symbol: Arc<str>,
        /// Why.
        reason: String,
    },
    /// The upstream rejected the symbol (`Hub::handle_symbol_error`).
    SymbolError {
        /// The symbol.
        symbol: Arc<str>,
        /// Why.
        reason: String,
    },
    /// The leader's upstream state (`Hub::handle_upstream_state`).
    Upstream(State),
    /// Read the symbol's snapshot and hand it to [`Follower::handle_snapshot`].
    ReadSnapshot(Arc<str>),
    /// The symbol was resynchronised (a stored snapshot, a `snapshot` message, or a new
    /// leader's first quote): this is its whole quote state; the hub takes it in place of its
    /// own and sends every subscriber a fresh snapshot (`Fanout::resync`).
    Snapshot(Quote),
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowerCounters {
    /// Messages followed.
    pub received: u64,
    /// Messages of a deposed leader (an older epoch), ignored.
    pub stale: u64,
    /// Gaps in a symbol's sequence.
    pub gaps: u64,
    /// Snapshots read to resynchronise.
    pub resyncs: u64,
    /// Messages that could not be read.
    pub malformed: u64,
    /// Held messages dropped past [`HELD_PER_SYMBOL`].
    pub held_dropped: u64,
}

#[derive(Debug)]
struct Followed {
    epoch: u64,
    /// The last seq folded in; 0 before anything.
    seq: u64,
    quote: Quote,
    /// While a snapshot read is in flight: the messages that came meanwhile.
    held: Option<VecDeque<Vec<u8>>>,
}

/// A relay's side: follows the stream for the symbols its hub wants. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Follower {
    cap: usize,
    epoch: u64,
    symbols: BTreeMap<Arc<str>, Followed>,
    outputs: VecDeque<FollowerOutput>,
    counters: FollowerCounters,
}

/// A quote object's fields; `null` (no quote yet) and malformed ones give none.
fn quote_values(raw: &RawValue) -> Option<QuoteValues<'_>> {
    serde_json::from_str(raw.get()).ok()
}

fn parse(text: &[u8]) -> Result<Wire<'_>, StreamError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(StreamError::TooLarge(text.len()));
    }
    serde_json::from_slice(text).map_err(|error| StreamError::Malformed(error.to_string()))
}

/// The epoch of a stream message, read without the rest.
pub(crate) fn peek_epoch(text: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Epoch {
        epoch: u64,
    }
    if text.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    serde_json::from_slice::<Epoch>(text)
        .ok()
        .map(|message| message.epoch)
}

impl Follower {
    /// A follower of at most `cap` symbols (the hub's upstream symbol cap).
    pub fn new(cap: usize) -> Follower {
        Follower {
            cap,
            epoch: 0,
            symbols: BTreeMap::new(),
            outputs: VecDeque::new(),
            counters: FollowerCounters::default(),
        }
    }

    /// Counters since the start.
    pub fn counters(&self) -> &FollowerCounters {
        &self.counters
    }

    /// The newest epoch seen.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The hub wants `symbol`: its snapshot is read first. False past the cap.
    pub fn want(&mut self, symbol: &str) -> bool {
        if self.symbols.contains_key(symbol) {
            return true;
        }
        if self.symbols.len() >= self.cap {
            return false;
        }
        let symbol: Arc<str> = Arc::from(symbol);
        self.symbols.insert(
            symbol.clone(),
            Followed {
                epoch: 0,
                seq: 0,
                quote: Quote::new(symbol.clone()),
                held: None,
            },
        );
        self.resync(&symbol);
        true
    }

    /// The hub no longer wants `symbol`.
    pub fn unwant(&mut self, symbol: &str) {
        self.symbols.remove(symbol);
    }

    /// The next output, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<FollowerOutput> {
        self.outputs.pop_front()
    }

    fn resync(&mut self, symbol: &Arc<str>) {
        if let Some(followed) = self.symbols.get_mut(symbol)
            && followed.held.is_none()
        {
            followed.held = Some(VecDeque::new());
            self.counters.resyncs = self.counters.resyncs.saturating_add(1);
            self.outputs
                .push_back(FollowerOutput::ReadSnapshot(symbol.clone()));
        }
    }

    /// Forgets every epoch seen, so messages of any epoch are followed again (the store came
    /// back, possibly emptied, and its fence now decides who publishes); call before
    /// [`Follower::resync_all`].
    pub fn forget_epochs(&mut self) {
        self.epoch = 0;
        for followed in self.symbols.values_mut() {
            followed.epoch = 0;
            followed.seq = 0;
        }
    }

    /// The store lost its state (it restarted empty) or the link to it came back: every
    /// symbol is read again.
    pub fn resync_all(&mut self) {
        let symbols: Vec<Arc<str>> = self.symbols.keys().cloned().collect();
        for symbol in &symbols {
            self.resync(symbol);
        }
    }

    /// One message from the stream.
    ///
    /// # Errors
    /// [`StreamError`] for a message that is too long or not of the stream's format; it is
    /// counted and changes nothing.
    pub fn handle_message(&mut self, text: &[u8]) -> Result<(), StreamError> {
        let wire = match parse(text) {
            Ok(wire) => wire,
            Err(error) => {
                self.counters.malformed = self.counters.malformed.saturating_add(1);
                return Err(error);
            }
        };
        if wire.epoch < self.epoch {
            self.counters.stale = self.counters.stale.saturating_add(1);
            return Ok(());
        }
        self.epoch = wire.epoch;
        self.counters.received = self.counters.received.saturating_add(1);
        if wire.kind == "status" {
            if let Some(state) = wire.upstream.as_deref().and_then(State::from_name) {
                self.outputs.push_back(FollowerOutput::Upstream(state));
            }
            return Ok(());
        }
        let (Some(symbol), Some(seq)) = (wire.symbol.as_deref(), wire.seq) else {
            self.counters.malformed = self.counters.malformed.saturating_add(1);
            return Err(StreamError::Malformed("no symbol or seq".to_owned()));
        };
        let Some(symbol) = self
            .symbols
            .get_key_value(symbol)
            .map(|(key, _)| key.clone())
        else {
            return Ok(()); // not wanted here
        };
        let Some(followed) = self.symbols.get_mut(&symbol) else {
            return Ok(());
        };
        if let Some(held) = &mut followed.held {
            if held.len() >= HELD_PER_SYMBOL {
                held.pop_front();
                self.counters.held_dropped = self.counters.held_dropped.saturating_add(1);
            }
            held.push_back(text.to_vec());
            return Ok(());
        }
        self.fold(&symbol, text, wire, seq);
        Ok(())
    }

    /// Folds one message of a synchronised symbol in, or starts a resync at a gap.
    fn fold(&mut self, symbol: &Arc<str>, text: &[u8], wire: Wire<'_>, seq: u64) {
        let Some(followed) = self.symbols.get_mut(symbol) else {
            return;
        };
        if wire.epoch < followed.epoch || (wire.epoch == followed.epoch && seq <= followed.seq) {
            return; // already folded in (a replay after a snapshot)
        }
        if wire.kind == "snapshot" {
            // Self-contained: it replaces whatever came before, so no gap can hide behind it.
            self.adopt(symbol, wire);
            return;
        }
        let first_of_epoch = wire.epoch > followed.epoch;
        let in_order = if first_of_epoch {
            seq == 1
        } else {
            seq == followed.seq.saturating_add(1)
        };
        if !in_order {
            self.counters.gaps = self.counters.gaps.saturating_add(1);
            self.resync(symbol);
            // Kept: a snapshot older than this message still lets it be folded in after.
            if let Some(held) = self
                .symbols
                .get_mut(symbol)
                .and_then(|followed| followed.held.as_mut())
            {
                held.push_back(text.to_vec());
            }
            return;
        }
        followed.epoch = wire.epoch;
        followed.seq = seq;
        match wire.kind.as_str() {
            "quote" => {
                if let Some(data) = wire.data.and_then(quote_values) {
                    if first_of_epoch {
                        // A new leader's first message carries every field: the whole state.
                        followed.quote = Quote::new(symbol.clone());
                        followed.quote.apply(&data);
                        self.outputs
                            .push_back(FollowerOutput::Snapshot(followed.quote.clone()));
                    } else {
                        followed.quote.apply(&data);
                        self.outputs
                            .push_back(FollowerOutput::Quote(followed.quote.clone()));
                    }
                }
            }
            "bar" => {
                let bar = wire
                    .bar
                    .and_then(|bar| serde_json::from_value::<WireBar>(bar).ok());
                if let (Some(bar), Some(timeframe), Some(closed)) =
                    (bar, wire.timeframe, wire.closed)
                {
                    self.outputs.push_back(FollowerOutput::Bar {
                        symbol: symbol.clone(),
                        timeframe: Arc::from(timeframe),
                        bar: bar.bar(),
                        closed,
                    });
                }
            }
            "error" if wire.code.as_deref() == Some("BARS_UNAVAILABLE") => {
                self.outputs.push_back(FollowerOutput::SeriesError {
                    symbol: symbol.clone(),
                    reason: wire.message.unwrap_or_default(),
                });
            }
            "error" => {
                let reason = wire.message.unwrap_or_default();
                self.symbols.remove(symbol);
                self.outputs.push_back(FollowerOutput::SymbolError {
                    symbol: symbol.clone(),
                    reason,
                });
            }
            _ => self.counters.malformed = self.counters.malformed.saturating_add(1),
        }
    }

    /// Takes a snapshot's state (stored, or a `snapshot` message of the stream) as the
    /// symbol's whole state.
    fn adopt(&mut self, symbol: &Arc<str>, wire: Wire<'_>) {
        let Some(followed) = self.symbols.get_mut(symbol) else {
            return;
        };
        followed.epoch = wire.epoch;
        followed.seq = wire.seq.unwrap_or(0);
        self.epoch = self.epoch.max(wire.epoch);
        followed.quote = Quote::new(symbol.clone());
        if let Some(values) = wire.quote.and_then(quote_values) {
            followed.quote.apply(&values);
        }
        let quote = followed.quote.clone();
        // The bar first: the snapshot sent for the quote then carries it too.
        let bar = wire
            .bar
            .and_then(|bar| serde_json::from_value::<WireBarState>(bar).ok());
        if let Some(state) = bar {
            self.outputs.push_back(FollowerOutput::Bar {
                symbol: symbol.clone(),
                timeframe: Arc::from(state.timeframe),
                bar: state.bar.bar(),
                closed: state.closed,
            });
        }
        self.outputs.push_back(FollowerOutput::Snapshot(quote));
    }

    /// The snapshot read for `symbol`: its stored text, or `None` when the store has none
    /// (nobody carries it yet). The messages held meanwhile are folded in after it.
    pub fn handle_snapshot(&mut self, symbol: &str, text: Option<&[u8]>) {
        let Some(symbol) = self
            .symbols
            .get_key_value(symbol)
            .map(|(key, _)| key.clone())
        else {
            return;
        };
        let Some(followed) = self.symbols.get_mut(&symbol) else {
            return;
        };
        let Some(held) = followed.held.take() else {
            return;
        };
        let snapshot = text
            .and_then(|text| parse(text).ok())
            .filter(|wire| wire.kind == "snapshot");
        match snapshot {
            Some(wire) => self.adopt(&symbol, wire),
            None => {
                // Nothing stored: follow from whatever comes next (a first message of an
                // epoch, seq 1, carries every field).
                if let Some(followed) = self.symbols.get_mut(&symbol) {
                    followed.epoch = 0;
                    followed.seq = 0;
                }
            }
        }
        let mut held = held;
        while let Some(text) = held.pop_front() {
            if let Ok(wire) = parse(&text)
                && let Some(seq) = wire.seq
            {
                let epoch_now = self.symbols.get(&symbol).map(|followed| followed.epoch);
                if epoch_now.is_some_and(|epoch| wire.epoch >= epoch) {
                    self.fold(&symbol, &text, wire, seq);
                }
            }
            match self.symbols.get_mut(&symbol) {
                // The symbol went (rejected): nothing more to fold.
                None => break,
                // A new gap: the rest waits, after the message that showed it, for the next
                // snapshot.
                Some(Followed {
                    held: Some(waiting),
                    ..
                }) => {
                    waiting.extend(held.drain(..));
                    waiting.truncate(HELD_PER_SYMBOL);
                    break;
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(symbol: &str, price: f64) -> Quote {
        Quote {
            last_price: Some(price),
            volume: Some(10.0),
            ..Quote::new(Arc::from(symbol))
        }
    }

    fn drain(follower: &mut Follower) -> Vec<FollowerOutput> {
        std::iter::from_fn(|| follower.poll_output()).collect()
    }

    fn prices(outputs: &[FollowerOutput]) -> Vec<f64> {
        outputs
            .iter()
            .filter_map(|output| match output {
                FollowerOutput::Quote(quote) | FollowerOutput::Snapshot(quote) => quote.last_price,
                _ => None,
            })
            .collect()
    }

    /// A follower of X:A already synchronised from an empty store.
    fn synced() -> Follower {
        let mut follower = Follower::new(10);
        assert!(follower.want("X:A"));
        assert_eq!(
            drain(&mut follower),
            [FollowerOutput::ReadSnapshot(Arc::from("X:A"))]
        );
        follower.handle_snapshot("X:A", None);
        // Nothing stored, nothing to take: the first message of an epoch will be.
        assert_eq!(drain(&mut follower), []);
        follower
    }

    #[test]
    fn in_order_messages_are_merged_and_a_gap_resynchronises_from_the_snapshot() {
        let mut leader = Publisher::new(1);
        let mut follower = synced();
        let first = leader.quote(&quote("X:A", 1.0)).unwrap();
        let second = leader.quote(&quote("X:A", 2.0)).unwrap();
        assert!(
            leader.quote(&quote("X:A", 2.0)).is_none(),
            "unchanged: nothing published"
        );
        let third = leader.quote(&quote("X:A", 3.0)).unwrap();
        let fourth = leader.quote(&quote("X:A", 4.0)).unwrap();
        follower.handle_message(first.message.as_bytes()).unwrap();
        follower.handle_message(second.message.as_bytes()).unwrap();
        let outputs = drain(&mut follower);
        assert_eq!(prices(&outputs), [1.0, 2.0]);
        match &outputs[1] {
            // The delta carried only lp; the merged quote keeps the volume of the first.
            FollowerOutput::Quote(quote) => assert_eq!(quote.volume, Some(10.0)),
            other => panic!("{other:?}"),
        }
        // The third is lost: the fourth is a gap.
        follower.handle_message(fourth.message.as_bytes()).unwrap();
        assert_eq!(
            drain(&mut follower),
            [FollowerOutput::ReadSnapshot(Arc::from("X:A"))]
        );
        assert_eq!(follower.counters().gaps, 1);
        // While the read is out, later messages are held; the snapshot (as of the third)
        // comes, then the held fourth is folded in after it.
        let fifth = leader.quote(&quote("X:A", 5.0)).unwrap();
        follower.handle_message(fifth.message.as_bytes()).unwrap();
        assert!(drain(&mut follower).is_empty());
        let snapshot_after_third = third.snapshot.unwrap();
        follower.handle_snapshot("X:A", Some(snapshot_after_third.as_bytes()));
        let outputs = drain(&mut follower);
        // The fourth, kept when it showed the gap, and the fifth follow the snapshot.
        assert_eq!(prices(&outputs), [3.0, 4.0, 5.0], "{outputs:?}");
        assert!(
            matches!(&outputs[0], FollowerOutput::Snapshot(state) if state.last_price == Some(3.0)),
            "the stored state is taken whole first: {outputs:?}"
        );
        assert_eq!(follower.counters().resyncs, 2);
    }

    #[test]
    fn a_snapshot_older_than_the_held_messages_is_read_again_and_nothing_held_is_lost() {
        let mut leader = Publisher::new(1);
        let mut follower = synced();
        let published: Vec<Published> = (1..=5)
            .map(|price| leader.quote(&quote("X:A", f64::from(price))).unwrap())
            .collect();
        follower
            .handle_message(published[0].message.as_bytes())
            .unwrap();
        // 2 and 3 are lost; 4 shows the gap, 5 is held.
        follower
            .handle_message(published[3].message.as_bytes())
            .unwrap();
        follower
            .handle_message(published[4].message.as_bytes())
            .unwrap();
        let _ = drain(&mut follower);
        // A stale snapshot (as of 1): 4 is still a gap, so it is read again, 4 and 5 kept.
        let stale = published[0].snapshot.clone().unwrap();
        follower.handle_snapshot("X:A", Some(stale.as_bytes()));
        let outputs = drain(&mut follower);
        assert_eq!(
            outputs.last(),
            Some(&FollowerOutput::ReadSnapshot(Arc::from("X:A")))
        );
        let fresh = published[2].snapshot.clone().unwrap();
        follower.handle_snapshot("X:A", Some(fresh.as_bytes()));
        assert_eq!(prices(&drain(&mut follower)), [3.0, 4.0, 5.0]);
    }

    #[test]
    fn a_deposed_leaders_messages_are_ignored_and_a_new_leader_starts_at_seq_one() {
        let mut old = Publisher::new(1);
        let mut new = Publisher::new(2);
        let mut follower = synced();
        follower
            .handle_message(old.quote(&quote("X:A", 1.0)).unwrap().message.as_bytes())
            .unwrap();
        follower
            .handle_message(new.quote(&quote("X:A", 7.0)).unwrap().message.as_bytes())
            .unwrap();
        // The old leader wakes up and publishes: ignored.
        follower
            .handle_message(old.quote(&quote("X:A", 1.5)).unwrap().message.as_bytes())
            .unwrap();
        follower
            .handle_message(old.status(State::Live).as_bytes())
            .unwrap();
        assert_eq!(prices(&drain(&mut follower)), [1.0, 7.0]);
        assert_eq!(follower.counters().stale, 2);
        assert_eq!(follower.epoch(), 2);
        // A new epoch seen mid-sequence (its seq 1 was missed) resynchronises.
        let mut newer = Publisher::new(3);
        let _missed = newer.quote(&quote("X:A", 8.0));
        follower
            .handle_message(newer.quote(&quote("X:A", 9.0)).unwrap().message.as_bytes())
            .unwrap();
        assert_eq!(
            drain(&mut follower),
            [FollowerOutput::ReadSnapshot(Arc::from("X:A"))]
        );
    }

    #[test]
    fn bars_errors_and_status_reach_the_hub_and_unwanted_symbols_do_not() {
        let mut leader = Publisher::new(4);
        let mut follower = synced();
        let bar = Bar {
            index: 3,
            time: 60.0,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: None,
        };
        let published = leader.bar(&Arc::from("X:A"), &Arc::from("1"), &bar, false);
        follower
            .handle_message(published.message.as_bytes())
            .unwrap();
        follower
            .handle_message(leader.status(State::BackingOff).as_bytes())
            .unwrap();
        let other = leader.quote(&quote("X:OTHER", 1.0)).unwrap();
        follower.handle_message(other.message.as_bytes()).unwrap();
        let error = leader.symbol_error(&Arc::from("X:A"), "no_such_symbol");
        assert_eq!(error.snapshot, None);
        follower.handle_message(error.message.as_bytes()).unwrap();
        let outputs = drain(&mut follower);
        assert_eq!(
            outputs,
            [
                FollowerOutput::Bar {
                    symbol: Arc::from("X:A"),
                    timeframe: Arc::from("1"),
                    bar: Bar { index: 0, ..bar },
                    closed: false,
                },
                FollowerOutput::Upstream(State::BackingOff),
                FollowerOutput::SymbolError {
                    symbol: Arc::from("X:A"),
                    reason: "upstream rejected the symbol: no_such_symbol".to_owned(),
                },
            ]
        );
        // The rejected symbol is no longer followed.
        assert!(follower.want("X:A"));
    }

    #[test]
    fn hostile_messages_are_refused_and_counted_and_bounds_hold() {
        let mut follower = synced();
        for text in [
            &b"{"[..],
            b"[]",
            br#"{"type":"quote"}"#,
            br#"{"type":"quote","symbol":"X:A","epoch":1}"#,
            br#"{"type":"quote","symbol":"X:A","epoch":-1,"seq":1}"#,
        ] {
            assert!(
                follower.handle_message(text).is_err(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let long = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            follower.handle_message(&long),
            Err(StreamError::TooLarge(MAX_MESSAGE_BYTES + 1))
        );
        assert_eq!(follower.counters().malformed, 6);
        // Held messages are bounded while a snapshot read is out.
        follower.resync_all();
        let mut leader = Publisher::new(1);
        for step in 0..HELD_PER_SYMBOL + 10 {
            let published = leader.quote(&quote("X:A", step as f64)).unwrap();
            follower
                .handle_message(published.message.as_bytes())
                .unwrap();
        }
        assert_eq!(follower.counters().held_dropped, 10);
        // The cap on followed symbols.
        let mut small = Follower::new(1);
        assert!(small.want("X:A"));
        assert!(!small.want("X:B"));
    }

    #[test]
    fn the_published_snapshot_gives_a_late_relay_the_whole_state() {
        let mut leader = Publisher::new(5);
        let _ = leader.quote(&quote("X:A", 1.0));
        let last = leader
            .quote(&Quote {
                bid: Some(0.9),
                ..quote("X:A", 1.1)
            })
            .unwrap();
        let snapshot = last.snapshot.unwrap();
        assert!(
            snapshot.starts_with(r#"{"type":"snapshot","symbol":"X:A","quote":{"#),
            "{snapshot}"
        );
        assert!(snapshot.ends_with(r#","epoch":5,"seq":2}"#), "{snapshot}");
        let mut late = Follower::new(10);
        late.want("X:A");
        let _ = drain(&mut late);
        late.handle_snapshot("X:A", Some(snapshot.as_bytes()));
        let outputs = drain(&mut late);
        let FollowerOutput::Snapshot(merged) = &outputs[0] else {
            panic!("{outputs:?}")
        };
        assert_eq!(
            (merged.last_price, merged.bid, merged.volume),
            (Some(1.1), Some(0.9), Some(10.0))
        );
        // The next message follows on from the snapshot's seq.
        let next = leader.quote(&quote("X:A", 1.2)).unwrap();
        late.handle_message(next.message.as_bytes()).unwrap();
        assert_eq!(prices(&drain(&mut late)), [1.2]);
    }
}

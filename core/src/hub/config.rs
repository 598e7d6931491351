//! Every limit of the hub, with defaults sized for thousands of browser and bot consumers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

/// The shortest `update_interval` a client (or [`HubConfig::default_update_interval`]) may ask
/// for.
pub const MIN_UPDATE_INTERVAL: Duration = Duration::from_millis(100);
/// The longest `update_interval` a client (or [`HubConfig::default_update_interval`]) may ask
/// for.
pub const MAX_UPDATE_INTERVAL: Duration = Duration::from_secs(3600);

/// Hub configuration. `HubConfig::default()` is ready to use.
///
/// ```
/// use std::time::Duration;
/// use tickwire_core::hub::HubConfig;
///
/// let config = HubConfig { linger: Duration::from_secs(5), ..HubConfig::default() };
/// assert!(config.validate().is_ok());
///
/// // Dashboards that redraw once a second need no more than one update per symbol a second;
/// // a client may still ask for another interval in its subscribe.
/// let paced = HubConfig {
///     default_update_interval: Some(Duration::from_secs(1)),
///     ..HubConfig::default()
/// };
/// assert!(paced.validate().is_ok());
/// let too_fast = HubConfig {
///     default_update_interval: Some(Duration::from_millis(10)),
///     ..HubConfig::default()
/// };
/// assert!(too_fast.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// Downstream connections held at once; one more is refused with `CONNECTION_LIMIT`.
    pub max_connections: usize,
    /// Symbols one connection may subscribe to.
    pub max_subscriptions_per_connection: usize,
    /// Distinct symbols the hub carries upstream at once (subscribed or lingering).
    pub max_upstream_symbols: usize,
    /// Largest client message, in bytes.
    pub max_message_bytes: usize,
    /// Longest symbol accepted, in bytes.
    pub max_symbol_bytes: usize,
    /// Client messages per second per connection (sustained).
    pub messages_per_second: u32,
    /// Client messages a connection may send in one burst.
    pub message_burst: u32,
    /// Frames a connection may have waiting (queued plus handed to the socket) before it is
    /// conflated to the latest value per symbol.
    pub queue_capacity: usize,
    /// Frames handed to one connection's socket writer at a time, before it reports them
    /// written. It must cover what a fast reader receives while a loaded writer catches up: a
    /// client of 100 symbols takes 1 000 frames a second, and a relay whose writers run 50 to
    /// 80 ms behind (10 000 clients on 2 cores) needs more than 100 of its frames in flight, or
    /// it conflates a reader that keeps up. A stalled reader holds at most this many encoded
    /// frames in its writer, past what its kernel socket buffer took.
    pub send_window: usize,
    /// A connection still behind this long after it fell behind is disconnected.
    pub slow_consumer_deadline: Duration,
    /// A connection that sends nothing (no message, no ping) for this long is closed.
    pub keepalive_timeout: Duration,
    /// How long a symbol stays subscribed upstream after its last subscriber left.
    pub linger: Duration,
    /// How long upstream changes are gathered into one batch; zero sends each step's at once.
    pub upstream_batch_delay: Duration,
    /// Only these symbols may be subscribed; `None` allows any.
    pub whitelist: Option<BTreeSet<Arc<str>>>,
    /// The `update_interval` of a subscription whose subscribe names none: at most one data
    /// update per symbol per interval, carrying the latest state. `None` (the default) sends
    /// every change. From [`MIN_UPDATE_INTERVAL`] to [`MAX_UPDATE_INTERVAL`].
    pub default_update_interval: Option<Duration>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections: 16_384,
            max_subscriptions_per_connection: 200,
            max_upstream_symbols: 2_000,
            max_message_bytes: 16 * 1024,
            max_symbol_bytes: 128,
            messages_per_second: 20,
            message_burst: 40,
            queue_capacity: 512,
            send_window: 256,
            slow_consumer_deadline: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(90),
            linger: Duration::from_secs(30),
            upstream_batch_delay: Duration::from_millis(100),
            whitelist: None,
            default_update_interval: None,
        }
    }
}

/// A setting the hub cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HubConfigError {
    /// A count that must be at least 1 is 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A duration that must be positive is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// A duration outside the range it must be in.
    #[error("{name} must be from {min:?} to {max:?}")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// The shortest allowed.
        min: Duration,
        /// The longest allowed.
        max: Duration,
    },
}

impl HubConfig {
    /// Whether the hub accepts `symbol` from a client: 1 to `max_symbol_bytes` bytes, with no
    /// whitespace or control characters.
    ///
    /// ```
    /// use tickwire_core::hub::HubConfig;
    ///
    /// let config = HubConfig::default();
    /// assert!(config.accepts_symbol("NASDAQ:AAPL"));
    /// assert!(!config.accepts_symbol("NASDAQ: AAPL"));
    /// assert!(!config.accepts_symbol(""));
    /// ```
    pub fn accepts_symbol(&self, symbol: &str) -> bool {
        !symbol.is_empty()
            && symbol.len() <= self.max_symbol_bytes
            && !symbol.chars().any(|c| c.is_control() || c.is_whitespace())
    }

    /// Frames a socket writer may write before it reports them with `Hub::handle_written`:
    /// half the send window. The hub never stalls on batched reports: once it has handed over
    /// a full window, at least this many of those frames are still to be written, and
    /// writing them sends a report.
    ///
    /// ```
    /// use tickwire_core::hub::HubConfig;
    ///
    /// let config = HubConfig { send_window: 32, ..HubConfig::default() };
    /// assert_eq!(config.written_report_every(), 16);
    /// ```
    pub fn written_report_every(&self) -> usize {
        (self.send_window / 2).max(1)
    }

    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), HubConfigError> {
        let counts = [
            ("max_connections", self.max_connections),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
            ),
            ("max_upstream_symbols", self.max_upstream_symbols),
            ("max_message_bytes", self.max_message_bytes),
            ("max_symbol_bytes", self.max_symbol_bytes),
            ("messages_per_second", self.messages_per_second as usize),
            ("message_burst", self.message_burst as usize),
            ("queue_capacity", self.queue_capacity),
            ("send_window", self.send_window),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(HubConfigError::Zero(name));
        }
        let durations = [
            ("slow_consumer_deadline", self.slow_consumer_deadline),
            ("keepalive_timeout", self.keepalive_timeout),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, value)| value.is_zero()) {
            return Err(HubConfigError::ZeroDuration(name));
        }
        if let Some(interval) = self.default_update_interval
            && !(MIN_UPDATE_INTERVAL..=MAX_UPDATE_INTERVAL).contains(&interval)
        {
            return Err(HubConfigError::OutOfRange {
                name: "default_update_interval",
                min: MIN_UPDATE_INTERVAL,
                max: MAX_UPDATE_INTERVAL,
            });
        }
        Ok(())
    }
}

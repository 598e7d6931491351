//! What proves what. Heartbeats prove the socket, acknowledgements prove the session, ticks
//! prove the market; a quiet market is not a dead link.
//!
//! The rules the [`Client`](super::Client) applies, with the [`Config`](super::Config) fields
//! that tune them:
//!
//! | what the link shows | verdict |
//! | --- | --- |
//! | no packet at all for `read_timeout` | broken socket: reconnect (a failure unless the connection was stable) |
//! | heartbeats, but the session acknowledged none of its subscriptions within `idle_heartbeats` heartbeats (or `data_silence`) of the last command sent, with nothing left waiting for the rate limit | dead session: reconnect, counted as a failure so the backoff grows and the breaker opens |
//! | acknowledged, every subscribed symbol out of its session (`current_session`) | none: the market is closed; only the read timeout still applies |
//! | acknowledged, `idle_heartbeats` heartbeats without data, or no tick for `data_silence` | zombie / data silence: reconnect after the grace delay — the first time at once, each further verdict in a row only after the link has been quiet for [`quiet_wait`] |
//! | ticks between `idle_heartbeats` heartbeats in a row | the market is active: the escalation starts over |

use std::time::Duration;

/// Each further verdict on a quiet market waits this many times longer than the last.
pub const QUIET_GROWTH: u32 = 8;

/// How long a proven, quiet link must have been silent before verdict number `verdicts + 1` in a
/// row: nothing extra for the first, then `initial`, growing [`QUIET_GROWTH`]-fold up to `max`.
///
/// ```
/// use std::time::Duration;
/// use tickwire_core::client::liveness::quiet_wait;
///
/// let hour = Duration::from_secs(3600);
/// assert_eq!(quiet_wait(0, 6 * hour, 48 * hour), Duration::ZERO);
/// assert_eq!(quiet_wait(1, 6 * hour, 48 * hour), 6 * hour);
/// assert_eq!(quiet_wait(2, 6 * hour, 48 * hour), 48 * hour);
/// assert_eq!(quiet_wait(9, 6 * hour, 48 * hour), 48 * hour);
/// ```
pub fn quiet_wait(verdicts: u32, initial: Duration, max: Duration) -> Duration {
    if verdicts == 0 {
        return Duration::ZERO;
    }
    let growth = QUIET_GROWTH.saturating_pow(verdicts.saturating_sub(1).min(16));
    initial.saturating_mul(growth).min(max.max(initial))
}

/// Whether a quote's `current_session` says its market is closed: `out_of_session`, and the
/// extended-hours sessions (`pre_market`, `post_market`), where silence is normal. `market` and
/// anything unknown count as open, so an unexpected value never switches the checks off.
///
/// ```
/// use tickwire_core::client::liveness::out_of_session;
///
/// assert!(out_of_session(Some("out_of_session")));
/// assert!(!out_of_session(Some("market")));
/// assert!(!out_of_session(None));
/// ```
pub fn out_of_session(current_session: Option<&str>) -> bool {
    matches!(
        current_session,
        Some("out_of_session" | "pre_market" | "post_market")
    )
}

/// What the client knows of the market behind its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Market {
    /// No open, acknowledged connection with subscriptions: nothing to say yet.
    Unknown,
    /// Ticks are arriving.
    Active,
    /// The session is acknowledged and alive, but no tick has come for the zombie window:
    /// verdicts on it escalate.
    Quiet,
    /// Every subscribed symbol is out of its session: no zombie or data-silence verdict at all.
    Closed,
}

impl Market {
    /// Lower-case name, as shown in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Unknown => "unknown",
            Market::Active => "active",
            Market::Quiet => "quiet",
            Market::Closed => "closed",
        }
    }
}

/// The market as the client sees it, in [`Status`](super::Status) and in
/// [`Event::Market`](super::Event::Market).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketStatus {
    /// Active, quiet, closed or unknown.
    pub market: Market,
    /// Subscribed quote symbols.
    pub symbols: usize,
    /// How many of them are out of session.
    pub out_of_session: usize,
    /// Verdicts taken in a row on a quiet market (the escalation level).
    pub quiet_verdicts: u32,
    /// How long a quiet link must now stay silent before the next verdict.
    pub next_verdict_after: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn quiet_waits_never_shrink_and_stay_capped(
            verdicts in 0u32..1_000,
            initial_s in 1u64..100_000,
            extra_s in 0u64..1_000_000,
        ) {
            let initial = Duration::from_secs(initial_s);
            let max = initial + Duration::from_secs(extra_s);
            let wait = quiet_wait(verdicts, initial, max);
            prop_assert!(wait <= max);
            prop_assert!(quiet_wait(verdicts + 1, initial, max) >= wait);
            if verdicts >= 1 {
                prop_assert!(wait >= initial);
            }
        }
    }
}

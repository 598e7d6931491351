//! Arithmetic on [`Instant`]s that never panics: deadlines computed from configured or
//! received durations.

use std::time::{Duration, Instant};

/// `at + by`; `at` itself when that does not fit an `Instant` (a duration so long it means
/// "never" for any caller, which re-arms and checks again).
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or(at)
}

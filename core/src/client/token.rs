//! The auth token's lifetime: asking for the next token before the current one expires, and
//! handing it to the open connection.
//!
//! Two things make the client ask the application for a token ([`Output::RequestAuthToken`]):
//! a rejection (`bad auth token`, handled with the connection's failure), and the schedule kept
//! here when the token's lifetime is known ([`AuthToken::lifetime`],
//! [`Config::auth_token_lifetime`](super::Config::auth_token_lifetime)). One request is in flight
//! at most; an answer serves whichever asked. A refresh that gets no fresh token is asked again
//! after the reconnect backoff (with jitter), and past `max_attempts` failures after the
//! breaker's growing wait, so a broken token source is never polled at a fixed rate.

use std::time::{Duration, Instant};

use super::policy::retry_delay;
use super::types::{AuthToken, Event, Output};
use super::{Client, Link, Secret, add};
use crate::command::Command;

/// The refresh goes a fifth of the lifetime before expiry, but no earlier than this before it.
const MAX_REFRESH_LEAD: Duration = Duration::from_secs(5 * 60);
/// However short the lifetime, a refresh is never scheduled sooner than this after the last.
const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);

/// When to ask for the token after one valid for `lifetime` arrived at `now`.
pub(super) fn refresh_time(now: Instant, lifetime: Duration) -> Instant {
    let lead = lifetime
        .checked_div(5)
        .unwrap_or_default()
        .min(MAX_REFRESH_LEAD);
    add(now, lifetime.saturating_sub(lead).max(MIN_REFRESH_GAP))
}

impl Client {
    /// The token refresh timer: the in-flight request's deadline, else the next refresh.
    pub(super) fn token_refresh_deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        self.token.refresh_until.or(self.token.refresh_at)
    }

    pub(super) fn fire_token_refresh(&mut self, now: Instant) {
        if let Some(until) = self.token.refresh_until {
            if now >= until {
                self.token.refresh_until = None;
                self.token_refresh_failed(now);
            }
            return;
        }
        if self.token.refresh_at.is_none_or(|at| now < at) {
            return;
        }
        self.token.refresh_at = None;
        match self.awaiting_token_until {
            // A rejection already asked: its answer serves the refresh too.
            Some(until) => self.token.refresh_until = Some(until),
            None => {
                self.outputs.push_back(Output::RequestAuthToken);
                self.token.refresh_until = Some(add(now, self.config.token_timeout));
            }
        }
    }

    /// The application answered a token request (either kind). Returns the fresh token, if the
    /// answer holds one different from the current.
    pub(super) fn take_token_answer(
        &mut self,
        now: Instant,
        answer: Option<AuthToken>,
    ) -> Option<AuthToken> {
        let refreshing = self.token.refresh_until.take().is_some();
        let fresh = answer.filter(|fresh| {
            !fresh.token.is_empty()
                && fresh.token != self.auth_token.0
                && fresh.lifetime.is_none_or(|lifetime| !lifetime.is_zero())
        });
        match &fresh {
            Some(fresh) => {
                self.auth_token = Secret(fresh.token.clone());
                self.token.failures = 0;
                self.token.expires_at = fresh.lifetime.map(|lifetime| add(now, lifetime));
                self.token.refresh_at = fresh.lifetime.map(|lifetime| refresh_time(now, lifetime));
                if refreshing && self.awaiting_token_until.is_none() {
                    self.hand_token_to_open_link(now);
                    self.push_event(Event::AuthTokenRefreshed {
                        lifetime: fresh.lifetime,
                    });
                }
            }
            None if refreshing => self.token_refresh_failed(now),
            None => {}
        }
        fresh
    }

    /// The open connection authenticated with the old token: give it the new one in place, so
    /// the stream goes on. (Should the server refuse it, the rejection path reconnects with it.)
    fn hand_token_to_open_link(&mut self, now: Instant) {
        if matches!(self.link, Link::Open(_)) {
            self.send(now, Command::set_auth_token(self.auth_token.0.clone()));
        }
    }

    fn token_refresh_failed(&mut self, now: Instant) {
        self.token.failures = self.token.failures.saturating_add(1);
        let mut delay = retry_delay(
            self.token.failures,
            self.config.backoff_initial,
            self.config.backoff_initial,
            self.config.backoff_max,
            self.config.jitter,
            self.unit_jitter(),
        );
        if self.token.failures >= self.config.max_attempts {
            // Past max_attempts the breaker's wait, doubling per failure, as for the stream:
            // a token source that keeps failing is asked ever more rarely, not every minute.
            let trips = self
                .token
                .failures
                .saturating_sub(self.config.max_attempts)
                .saturating_add(1);
            delay = delay.max(self.breaker_wait(trips));
        }
        let retry_at = add(now, delay);
        self.token.refresh_at = Some(retry_at);
        self.push_event(Event::AuthTokenRefreshFailed {
            failures: self.token.failures,
            retry_at,
        });
    }
}

/// The token schedule inside the client.
#[derive(Debug, Default)]
pub(super) struct TokenSchedule {
    /// When the current token expires, when known.
    pub(super) expires_at: Option<Instant>,
    /// When to ask for the next one.
    pub(super) refresh_at: Option<Instant>,
    /// A refresh request is in flight until its answer or this deadline.
    pub(super) refresh_until: Option<Instant>,
    /// Refreshes in a row that brought no fresh token.
    pub(super) failures: u32,
}

impl TokenSchedule {
    /// The schedule of the configured token, valid for `lifetime` from `now`.
    pub(super) fn starting(now: Instant, lifetime: Option<Duration>) -> TokenSchedule {
        TokenSchedule {
            expires_at: lifetime.map(|lifetime| add(now, lifetime)),
            refresh_at: lifetime.map(|lifetime| refresh_time(now, lifetime)),
            ..TokenSchedule::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_goes_a_fifth_of_the_lifetime_early_at_most_five_minutes() {
        let now = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(refresh_time(now, s(4 * 3600)), now + s(4 * 3600 - 300));
        assert_eq!(refresh_time(now, s(600)), now + s(480));
        assert_eq!(refresh_time(now, s(5)), now + s(4));
        // Never a refresh loop, however short the lifetime.
        assert_eq!(refresh_time(now, Duration::from_millis(10)), now + s(1));
    }
}

//! Leadership of a relay cluster as a lease in a shared store (Redis), with a fencing epoch.
//!
//! At most one relay holds the lease; only the holder connects upstream. The store does the
//! mutual exclusion (`SET key value NX PX ttl`, renewal and release compare the value first);
//! this machine decides when to ask, what a reply means, and when to stop believing it holds
//! the lease. It never trusts an answer longer than the store does: a lease is held locally
//! only until `ttl − safety` after the *request* that last won or renewed it was sent, so a
//! relay that was paused (SIGSTOP, a long GC, a partition) has stepped down before it can
//! publish again, and the epoch in everything it publishes lets followers ignore it if it
//! ever does.
//!
//! # Driving contract
//!
//! - **Inputs.** [`Lease::handle_timeout`] when [`Lease::poll_timeout`] passes,
//!   [`Lease::handle_reply`] with the answer to the request in flight, and
//!   [`Lease::set_upstream_healthy`] when the upstream feed's health changes; each with the
//!   current time (which must not go backwards; an earlier one counts as the latest seen).
//! - **Outputs.** After every input drain [`Lease::poll_request`] (at most one request is in
//!   flight: nothing more is asked until it is answered or times out after
//!   [`LeaseConfig::request_timeout`]) and [`Lease::poll_event`] (role changes, in order).
//! - **Time.** Every attempt after a failure waits the backoff with jitter; a follower asks
//!   again only when the holder's lease may have expired. No path asks at a fixed rate.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tickwire_core::cluster::{Lease, LeaseConfig, LeaseEvent, LeaseReply, LeaseRequest, Role};
//!
//! let start = Instant::now();
//! let mut lease = Lease::new(LeaseConfig::new("relay-a"), start);
//! lease.handle_timeout(start);
//! assert_eq!(lease.poll_request(), Some(LeaseRequest::Acquire));
//! lease.handle_reply(start, LeaseReply::Acquired { epoch: 7 });
//! assert_eq!(lease.poll_event(), Some(LeaseEvent::Role(Role::Leader { epoch: 7 })));
//! // It renews well before the lease could expire.
//! let renew_at = lease.poll_timeout().unwrap();
//! assert!(renew_at < start + LeaseConfig::new("relay-a").ttl / 2);
//! ```

use std::time::{Duration, Instant};

use crate::client::policy;
use crate::instant::later;

/// Lease settings. [`LeaseConfig::new`] gives the defaults for a relay id.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    /// This relay's id, unique in the cluster: the lease's value while it holds it.
    pub relay_id: String,
    /// How long the store keeps the lease without a renewal; a dead leader is replaced about
    /// this long after its last renewal.
    pub ttl: Duration,
    /// How often the holder renews (a third of the TTL leaves two attempts before expiry).
    pub renew_every: Duration,
    /// Time before the TTL at which the holder stops believing it holds the lease without a
    /// confirmed renewal (clock drift and delivery delay between relay and store).
    pub safety: Duration,
    /// A request unanswered this long has failed.
    pub request_timeout: Duration,
    /// First and longest wait after failed requests (doubling, with jitter).
    pub backoff_initial: Duration,
    /// See `backoff_initial`.
    pub backoff_max: Duration,
    /// Jitter fraction applied to every wait (0.0–1.0).
    pub jitter: f64,
    /// A holder whose upstream has been unhealthy this long gives the lease up so another
    /// relay can try (it then waits two TTLs before asking again).
    pub abdicate_after: Duration,
    /// Seed of the jitter.
    pub seed: u64,
}

impl LeaseConfig {
    /// The defaults: 5 s lease renewed every 1.67 s, 1 s safety, 1 s request timeout, backoff
    /// 0.25 s doubling to 5 s with 50 % jitter, abdication after 60 s of an unhealthy upstream.
    pub fn new(relay_id: impl Into<String>) -> LeaseConfig {
        let ttl = Duration::from_secs(5);
        LeaseConfig {
            relay_id: relay_id.into(),
            ttl,
            renew_every: ttl.checked_div(3).unwrap_or(ttl),
            safety: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            jitter: 0.5,
            abdicate_after: Duration::from_secs(60),
            seed: 0x7105_e11e,
        }
    }
}

/// What this relay is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another relay (or none, for now) holds the lease.
    Follower,
    /// This relay holds the lease; everything it publishes carries `epoch`.
    Leader {
        /// The fencing epoch: larger than every earlier holder's.
        epoch: u64,
    },
}

/// A request for the store. The value compared is `relay_id` and the epoch, as
/// [`Lease::value`] renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRequest {
    /// Take the lease if nobody holds it, and on success increment the epoch counter,
    /// atomically (one script): answered with `Acquired` or `Held`.
    Acquire,
    /// Extend the lease if it still holds this value: `Renewed` or `Lost`.
    Renew {
        /// The epoch held.
        epoch: u64,
    },
    /// Delete the lease if it still holds this value: `Released` (or `Lost`).
    Release {
        /// The epoch held.
        epoch: u64,
    },
}

/// The store's answer to the request in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseReply {
    /// The lease is ours with this epoch.
    Acquired {
        /// The new epoch.
        epoch: u64,
    },
    /// Someone else holds it, for `remaining` more (the key's PTTL, when known).
    Held {
        /// Time left on the holder's lease.
        remaining: Option<Duration>,
    },
    /// Extended.
    Renewed,
    /// The lease no longer holds our value (it expired and someone took it, or the store was
    /// emptied).
    Lost,
    /// Deleted.
    Released,
    /// The store could not be asked or answered with an error.
    Failed(String),
}

/// Something the relay must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The role changed: a leader connects upstream and publishes; a follower closes its
    /// upstream connection (if any) at once and publishes nothing.
    Role(Role),
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseCounters {
    /// Times this relay took the lease.
    pub acquired: u64,
    /// Times it stopped holding it (lost, expired locally, released).
    pub stepped_down: u64,
    /// Requests that failed or timed out.
    pub failures: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    No,
    /// Held until `valid_until` unless renewed; `renew_at` is the next renewal.
    Yes {
        epoch: u64,
        valid_until: Instant,
        renew_at: Instant,
    },
}

/// The lease state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Lease {
    config: LeaseConfig,
    held: Held,
    /// The request in flight: what, when sent.
    in_flight: Option<(LeaseRequest, Instant)>,
    /// Ready to go out.
    queued: Option<LeaseRequest>,
    /// When a follower asks next (or a failed request is retried).
    next_attempt: Option<Instant>,
    failures: u32,
    unhealthy_since: Option<Instant>,
    events: Vec<LeaseEvent>,
    rng: fastrand::Rng,
    counters: LeaseCounters,
    latest: Instant,
    closed: bool,
}

impl Lease {
    /// A follower that asks for the lease at the first timeout.
    pub fn new(config: LeaseConfig, now: Instant) -> Lease {
        let rng = fastrand::Rng::with_seed(config.seed);
        Lease {
            config,
            held: Held::No,
            in_flight: None,
            queued: None,
            next_attempt: Some(now),
            failures: 0,
            unhealthy_since: None,
            events: Vec::new(),
            rng,
            counters: LeaseCounters::default(),
            latest: now,
            closed: false,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match self.held {
            Held::Yes { epoch, .. } => Role::Leader { epoch },
            Held::No => Role::Follower,
        }
    }

    /// Counters since the start.
    pub fn counters(&self) -> &LeaseCounters {
        &self.counters
    }

    /// The lease's value for `epoch`: `"<relay_id> <epoch>"`.
    pub fn value(&self, epoch: u64) -> String {
        format!("{} {epoch}", self.config.relay_id)
    }

    /// The next request to send, if any.
    pub fn poll_request(&mut self) -> Option<LeaseRequest> {
        let request = self.queued.take()?;
        self.in_flight = Some((request, self.latest));
        Some(request)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<LeaseEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// When to call [`Lease::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            // Closed: nothing is timed any more (the release's answer is not waited for).
            return None;
        }
        // A new attempt waits for the request out (its timeout below wakes the driver).
        let mut due = self
            .next_attempt
            .filter(|_| self.in_flight.is_none() && self.queued.is_none());
        let mut earliest = |at: Instant| due = Some(due.map_or(at, |due| due.min(at)));
        if let Some((_, sent)) = self.in_flight {
            earliest(later(sent, self.config.request_timeout));
        }
        if let Held::Yes {
            valid_until,
            renew_at,
            ..
        } = self.held
        {
            earliest(valid_until);
            // Renewal and abdication wait for the request in flight (or queued) to finish:
            // a deadline they cannot act on yet must not wake the driver in a loop.
            if self.in_flight.is_none() && self.queued.is_none() {
                earliest(renew_at);
                if let Some(since) = self.unhealthy_since {
                    earliest(later(since, self.config.abdicate_after));
                }
            }
        }
        due
    }

    fn clock(&mut self, now: Instant) -> Instant {
        self.latest = self.latest.max(now);
        self.latest
    }

    /// Time passed: expires a lease not renewed in time, times out the request in flight,
    /// and sends what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        if self.closed {
            return;
        }
        if let Held::Yes { valid_until, .. } = self.held
            && now >= valid_until
        {
            // The store may have given the lease to someone else by now.
            self.step_down();
            self.next_attempt.get_or_insert(now);
        }
        if let Some((_, sent)) = self.in_flight
            && now >= later(sent, self.config.request_timeout)
        {
            self.in_flight = None;
            self.failed(now);
        }
        if let (Some(since), Held::Yes { epoch, .. }) = (self.unhealthy_since, self.held)
            && now >= later(since, self.config.abdicate_after)
            && self.in_flight.is_none()
        {
            self.unhealthy_since = None;
            self.step_down();
            self.queued = Some(LeaseRequest::Release { epoch });
            // Leave room for another relay before asking again.
            let wait = self.jittered(self.config.ttl.saturating_mul(2));
            self.next_attempt = Some(later(now, wait));
            return;
        }
        if self.in_flight.is_some() || self.queued.is_some() {
            return;
        }
        match self.held {
            Held::Yes {
                epoch, renew_at, ..
            } if now >= renew_at => {
                self.queued = Some(LeaseRequest::Renew { epoch });
            }
            Held::Yes { .. } => {}
            Held::No => {
                if self.next_attempt.is_some_and(|at| now >= at) {
                    self.next_attempt = None;
                    self.queued = Some(LeaseRequest::Acquire);
                }
            }
        }
    }

    /// The store answered the request in flight (an answer with none in flight is ignored).
    pub fn handle_reply(&mut self, now: Instant, reply: LeaseReply) {
        let now = self.clock(now);
        let Some((request, sent)) = self.in_flight.take() else {
            return;
        };
        if self.closed && !matches!(request, LeaseRequest::Release { .. }) {
            return;
        }
        match (request, reply) {
            (LeaseRequest::Acquire, LeaseReply::Acquired { epoch }) => {
                self.failures = 0;
                self.counters.acquired = self.counters.acquired.saturating_add(1);
                self.hold(epoch, sent);
                self.events.push(LeaseEvent::Role(Role::Leader { epoch }));
            }
            (LeaseRequest::Acquire, LeaseReply::Held { remaining }) => {
                self.failures = 0;
                // Ask again when the holder's lease could have run out, never at a fixed rate.
                let base = remaining
                    .unwrap_or(self.config.ttl)
                    .max(self.config.renew_every);
                let wait = self.jittered(base);
                self.next_attempt = Some(later(now, wait.max(base)));
            }
            (LeaseRequest::Renew { epoch }, LeaseReply::Renewed) => {
                self.failures = 0;
                if matches!(self.held, Held::Yes { epoch: held, .. } if held == epoch) {
                    self.hold(epoch, sent);
                }
            }
            (LeaseRequest::Renew { .. }, LeaseReply::Lost) => {
                self.step_down();
                self.next_attempt = Some(later(now, self.jittered(self.config.renew_every)));
            }
            (LeaseRequest::Release { .. }, _) => {}
            (_, LeaseReply::Failed(_)) => self.failed(now),
            // An answer that does not fit the question: the store is not what we think.
            (_, _) => self.failed(now),
        }
    }

    /// The upstream feed became healthy (live) or not. A holder that stays unhealthy for
    /// [`LeaseConfig::abdicate_after`] releases the lease.
    pub fn set_upstream_healthy(&mut self, now: Instant, healthy: bool) {
        let now = self.clock(now);
        if healthy {
            self.unhealthy_since = None;
        } else if self.unhealthy_since.is_none() {
            self.unhealthy_since = Some(now);
        }
    }

    /// The store refused a publish fenced with this relay's epoch: another relay has taken
    /// the lease since. A holder steps down at once and asks again only after a jittered
    /// renewal period.
    pub fn deposed(&mut self, now: Instant) {
        let now = self.clock(now);
        if let Held::Yes { .. } = self.held {
            self.step_down();
            let wait = self.jittered(self.config.renew_every);
            self.next_attempt = Some(later(now, wait));
        }
    }

    /// Clean shutdown: a holder steps down and releases the lease so a follower need not wait
    /// for it to expire; nothing else is asked afterwards.
    pub fn close(&mut self) {
        if let Held::Yes { epoch, .. } = self.held {
            self.step_down();
            self.queued = Some(LeaseRequest::Release { epoch });
        } else {
            self.queued = None;
        }
        self.next_attempt = None;
        self.closed = true;
    }

    fn hold(&mut self, epoch: u64, sent: Instant) {
        // Counted from when the request left: the store's TTL started no earlier than that.
        let valid = self.config.ttl.saturating_sub(self.config.safety);
        let renew = self.config.renew_every.min(valid);
        self.held = Held::Yes {
            epoch,
            valid_until: later(sent, valid),
            renew_at: later(sent, renew),
        };
        self.next_attempt = None;
    }

    fn step_down(&mut self) {
        if let Held::Yes { .. } = self.held {
            self.held = Held::No;
            self.counters.stepped_down = self.counters.stepped_down.saturating_add(1);
            self.events.push(LeaseEvent::Role(Role::Follower));
        }
    }

    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.counters.failures = self.counters.failures.saturating_add(1);
        let unit = self.rng.f64().mul_add(2.0, -1.0);
        let wait = policy::retry_delay(
            self.failures,
            Duration::ZERO,
            self.config.backoff_initial,
            self.config.backoff_max,
            self.config.jitter,
            unit,
        );
        match self.held {
            // A holder keeps renewing on its backoff until its lease runs out locally.
            Held::Yes {
                epoch, valid_until, ..
            } => {
                self.held = Held::Yes {
                    epoch,
                    valid_until,
                    renew_at: later(now, wait),
                };
            }
            Held::No => self.next_attempt = Some(later(now, wait)),
        }
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        let unit = self.rng.f64().mul_add(2.0, -1.0);
        policy::apply_jitter(base, self.config.jitter, unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> (Lease, Instant) {
        let start = Instant::now();
        (Lease::new(LeaseConfig::new("a"), start), start)
    }

    /// Runs timeouts until a request comes out or `limit` passes; returns it and its time.
    fn next_request(
        lease: &mut Lease,
        mut now: Instant,
        limit: Duration,
    ) -> (LeaseRequest, Instant) {
        let end = now + limit;
        loop {
            lease.handle_timeout(now);
            if let Some(request) = lease.poll_request() {
                return (request, now);
            }
            let due = lease
                .poll_timeout()
                .expect("a timer while nothing is in flight");
            assert!(due >= now, "a deadline in the past");
            now = due;
            assert!(now <= end, "no request within {limit:?}");
        }
    }

    fn take_leadership(lease: &mut Lease, now: Instant, epoch: u64) {
        let (request, at) = next_request(lease, now, Duration::from_secs(1));
        assert_eq!(request, LeaseRequest::Acquire);
        lease.handle_reply(at, LeaseReply::Acquired { epoch });
        assert_eq!(
            lease.poll_event(),
            Some(LeaseEvent::Role(Role::Leader { epoch }))
        );
    }

    #[test]
    fn a_holder_renews_before_expiry_and_keeps_the_lease() {
        let (mut lease, start) = lease();
        take_leadership(&mut lease, start, 3);
        let mut now = start;
        for _ in 0..100 {
            let (request, at) = next_request(&mut lease, now, Duration::from_secs(5));
            assert_eq!(request, LeaseRequest::Renew { epoch: 3 });
            // Renewals come a third of the TTL apart: two chances before the lease could go.
            assert!(at - now <= Duration::from_millis(1_700), "{:?}", at - now);
            lease.handle_reply(at, LeaseReply::Renewed);
            now = at;
        }
        assert_eq!(lease.role(), Role::Leader { epoch: 3 });
        assert_eq!(lease.poll_event(), None);
    }

    #[test]
    fn a_paused_holder_has_stepped_down_when_it_wakes() {
        let (mut lease, start) = lease();
        take_leadership(&mut lease, start, 1);
        // Paused past the TTL: the first thing it does on waking is give up the role.
        let woke = start + Duration::from_secs(30);
        lease.handle_timeout(woke);
        assert_eq!(lease.poll_event(), Some(LeaseEvent::Role(Role::Follower)));
        assert_eq!(lease.role(), Role::Follower);
        // It then asks like any follower.
        assert_eq!(lease.poll_request(), Some(LeaseRequest::Acquire));
    }

    #[test]
    fn validity_counts_from_the_request_not_the_reply() {
        let (mut lease, start) = lease();
        lease.handle_timeout(start);
        assert_eq!(lease.poll_request(), Some(LeaseRequest::Acquire));
        // The reply took 900 ms: the store's TTL ran during that time too.
        lease.handle_reply(
            start + Duration::from_millis(900),
            LeaseReply::Acquired { epoch: 1 },
        );
        let _ = lease.poll_event();
        // Renewals fail from now on: it must step down at sent + ttl - safety = 4 s.
        let mut now = start + Duration::from_millis(900);
        loop {
            lease.handle_timeout(now);
            if lease.poll_request().is_some() {
                lease.handle_reply(now, LeaseReply::Failed("down".into()));
            }
            if lease.role() == Role::Follower {
                break;
            }
            now = lease.poll_timeout().unwrap();
        }
        assert_eq!(now, start + Duration::from_secs(4));
    }

    #[test]
    fn a_follower_waits_for_the_holders_lease_and_failures_back_off() {
        let (mut lease, start) = lease();
        let (_, at) = next_request(&mut lease, start, Duration::from_secs(1));
        lease.handle_reply(
            at,
            LeaseReply::Held {
                remaining: Some(Duration::from_secs(4)),
            },
        );
        let (request, again) = next_request(&mut lease, at, Duration::from_secs(10));
        assert_eq!(request, LeaseRequest::Acquire);
        assert!(again - at >= Duration::from_secs(4), "{:?}", again - at);
        // The store fails repeatedly: the waits grow and never settle into one period.
        let mut waits = Vec::new();
        let mut now = again;
        lease.handle_reply(now, LeaseReply::Failed("refused".into()));
        for _ in 0..8 {
            let (_, at) = next_request(&mut lease, now, Duration::from_secs(30));
            waits.push(at - now);
            lease.handle_reply(at, LeaseReply::Failed("refused".into()));
            now = at;
        }
        assert!(waits[3] > waits[0], "{waits:?}");
        assert!(
            waits
                .iter()
                .all(|wait| *wait <= Duration::from_millis(7_500))
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 4, "jitter spreads them: {waits:?}");
        assert_eq!(lease.counters().failures, 9);
    }

    #[test]
    fn an_unanswered_request_times_out_as_a_failure() {
        let (mut lease, start) = lease();
        lease.handle_timeout(start);
        assert_eq!(lease.poll_request(), Some(LeaseRequest::Acquire));
        assert_eq!(lease.poll_timeout(), Some(start + Duration::from_secs(1)));
        lease.handle_timeout(start + Duration::from_secs(1));
        assert_eq!(lease.counters().failures, 1);
        // A late answer to the abandoned request changes nothing.
        lease.handle_reply(
            start + Duration::from_secs(2),
            LeaseReply::Acquired { epoch: 9 },
        );
        assert_eq!(lease.role(), Role::Follower);
    }

    #[test]
    fn a_lost_renewal_steps_down_at_once() {
        let (mut lease, start) = lease();
        take_leadership(&mut lease, start, 4);
        let (request, at) = next_request(&mut lease, start, Duration::from_secs(5));
        assert_eq!(request, LeaseRequest::Renew { epoch: 4 });
        lease.handle_reply(at, LeaseReply::Lost);
        assert_eq!(lease.poll_event(), Some(LeaseEvent::Role(Role::Follower)));
        assert_eq!(lease.counters().stepped_down, 1);
    }

    #[test]
    fn an_unhealthy_holder_abdicates_and_waits_before_asking_again() {
        let (mut lease, start) = lease();
        take_leadership(&mut lease, start, 2);
        lease.set_upstream_healthy(start, false);
        let mut now = start;
        let released_at = loop {
            let (request, at) = next_request(&mut lease, now, Duration::from_secs(120));
            if let LeaseRequest::Release { epoch } = request {
                assert_eq!(epoch, 2);
                break at;
            }
            lease.handle_reply(at, LeaseReply::Renewed);
            now = at;
        };
        assert!(released_at >= start + Duration::from_secs(60));
        assert_eq!(lease.poll_event(), Some(LeaseEvent::Role(Role::Follower)));
        lease.handle_reply(released_at, LeaseReply::Released);
        let (request, at) = next_request(&mut lease, released_at, Duration::from_secs(30));
        assert_eq!(request, LeaseRequest::Acquire);
        assert!(
            at - released_at >= Duration::from_secs(5),
            "{:?}",
            at - released_at
        );
    }

    #[test]
    fn no_deadline_is_in_the_past_while_a_request_is_out() {
        let start = Instant::now();
        let config = LeaseConfig {
            abdicate_after: Duration::from_secs(2),
            ..LeaseConfig::new("a")
        };
        let mut lease = Lease::new(config, start);
        take_leadership(&mut lease, start, 1);
        lease.set_upstream_healthy(start, false);
        // The renewal goes out at 1.67 s and stays unanswered past the abdication (2 s).
        let (request, at) = next_request(&mut lease, start, Duration::from_secs(5));
        assert_eq!(request, LeaseRequest::Renew { epoch: 1 });
        let late = start + Duration::from_millis(2_100);
        assert!(at < late);
        lease.handle_timeout(late);
        let due = lease.poll_timeout().unwrap();
        assert!(due > late, "a deadline {:?} before now", late - due);
        // Once the request has timed out the abdication goes ahead.
        let (request, _) = next_request(&mut lease, due, Duration::from_secs(5));
        assert_eq!(request, LeaseRequest::Release { epoch: 1 });
    }

    #[test]
    fn a_holder_that_expires_with_a_renewal_out_asks_again_after_it() {
        let start = Instant::now();
        let config = LeaseConfig {
            request_timeout: Duration::from_secs(5),
            ..LeaseConfig::new("a")
        };
        let mut lease = Lease::new(config, start);
        take_leadership(&mut lease, start, 1);
        let (request, at) = next_request(&mut lease, start, Duration::from_secs(5));
        assert_eq!(request, LeaseRequest::Renew { epoch: 1 });
        // Just past the lease's local validity, the renewal still out.
        let woke = start + Duration::from_millis(4_100);
        lease.handle_timeout(woke);
        assert_eq!(lease.role(), Role::Follower);
        let due = lease.poll_timeout().unwrap();
        assert_eq!(
            due,
            at + Duration::from_secs(5),
            "the renewal's timeout, not now"
        );
        let (request, _) = next_request(&mut lease, due, Duration::from_secs(5));
        assert_eq!(request, LeaseRequest::Acquire);
    }

    #[test]
    fn close_releases_a_held_lease_and_asks_nothing_more() {
        let (mut lease, start) = lease();
        take_leadership(&mut lease, start, 5);
        lease.close();
        assert_eq!(lease.poll_event(), Some(LeaseEvent::Role(Role::Follower)));
        assert_eq!(
            lease.poll_request(),
            Some(LeaseRequest::Release { epoch: 5 })
        );
        lease.handle_reply(start, LeaseReply::Released);
        lease.handle_timeout(start + Duration::from_secs(600));
        assert_eq!(lease.poll_request(), None);
        assert_eq!(lease.value(5), "a 5");
    }
}

//! The polling fallback: when it takes over from an unavailable stream, when each poll goes,
//! and what a failed or partial answer changes.
//!
//! Rules: polling starts only when the stream has been unavailable for
//! [`PollingConfig::unavailable_after`](super::PollingConfig::unavailable_after) or the circuit
//! opened, and stops in the step the stream delivers again (the stream is retried throughout).
//! One poll is in flight at most; it fails when its answer does not come within
//! [`PollingConfig::timeout`](super::PollingConfig::timeout). After a success the next poll waits
//! the interval; after a failure it waits the reconnect backoff (with jitter, never less than
//! the interval), past `max_attempts` failures the breaker's recovery wait, and at least the
//! server's `Retry-After`. That wait survives a return to streaming, so flapping between stream
//! and poll never shortens it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy::retry_delay;
use super::types::{
    Event, Mode, Output, PollError, PollErrorKind, PollRequest, PollStatus, PolledQuote,
    QuoteEvent, Source,
};
use super::{Breaker, Client, add};
use crate::message::{FieldUpdate, QuoteValues, Text};

/// The poller's side of the client.
#[derive(Debug, Default)]
pub(super) struct PollState {
    in_flight: Option<InFlight>,
    failures: u32,
    last_error: Option<String>,
    /// No poll before this (the last backoff), even in a later polling stretch.
    not_before: Option<Instant>,
    /// Symbols reported missing and not seen since.
    missing: HashSet<Arc<str>>,
}

#[derive(Debug)]
struct InFlight {
    round: u64,
    until: Instant,
    requested: Vec<Arc<str>>,
}

impl PollState {
    pub(super) fn in_flight_until(&self) -> Option<Instant> {
        self.in_flight.as_ref().map(|poll| poll.until)
    }

    /// The stream took over: an answer still on its way is moot.
    pub(super) fn stop(&mut self) {
        self.in_flight = None;
    }
}

impl Client {
    /// Enters polling when the stream has been unavailable long enough, and sends the poll that
    /// is due. Runs at the end of every step.
    pub(super) fn update_polling(&mut self, now: Instant) {
        let Some(polling) = self.config.polling else {
            return;
        };
        let stream_live = self.open_link().is_some_and(|link| link.live);
        if self.mode == Mode::Streaming && !stream_live && !self.quotes.is_empty() {
            let unavailable_long = self
                .unavailable_since
                .is_some_and(|since| now >= add(since, polling.unavailable_after));
            if self.breaker == Breaker::Open || unavailable_long {
                self.mode = Mode::Polling;
                self.next_poll = Some(self.poll.not_before.map_or(now, |at| at.max(now)));
                self.emit_state(None);
            }
        }
        if self.mode != Mode::Polling || self.poll.in_flight.is_some() {
            return;
        }
        if self.next_poll.is_some_and(|at| now >= at) {
            self.poll_round = self.poll_round.saturating_add(1);
            self.counters.polls = self.counters.polls.saturating_add(1);
            let symbols = self.quote_symbols();
            self.poll.in_flight = Some(InFlight {
                round: self.poll_round,
                until: add(now, polling.timeout),
                requested: symbols.clone(),
            });
            self.next_poll = None;
            self.outputs.push_back(Output::Poll(PollRequest {
                round: self.poll_round,
                symbols,
            }));
        }
    }

    /// The poll in flight got no answer in time.
    pub(super) fn expire_poll(&mut self, now: Instant) {
        if self
            .poll
            .in_flight_until()
            .is_some_and(|until| now >= until)
        {
            self.poll.in_flight = None;
            let timeout = self.config.polling.map(|polling| polling.timeout);
            let detail = format!("no poll answer within {:?}", timeout.unwrap_or_default());
            self.poll_failed(now, PollError::new(PollErrorKind::Timeout, detail));
        }
    }

    pub(super) fn on_poll_result(
        &mut self,
        now: Instant,
        round: u64,
        result: Result<Vec<PolledQuote>, PollError>,
    ) {
        let current = self
            .poll
            .in_flight
            .as_ref()
            .is_some_and(|poll| poll.round == round);
        if self.mode != Mode::Polling || !current {
            return;
        }
        let Some(poll) = self.poll.in_flight.take() else {
            return;
        };
        let quotes = match result {
            Ok(quotes) => quotes,
            Err(error) => return self.poll_failed(now, error),
        };
        self.poll.failures = 0;
        self.poll.last_error = None;
        let interval = self
            .config
            .polling
            .map_or(Duration::from_secs(10), |polling| polling.interval);
        let next = add(now, interval);
        self.next_poll = Some(next);
        self.poll.not_before = Some(next);
        let mut answered: HashSet<&str> = HashSet::with_capacity(quotes.len());
        for polled in &quotes {
            let Some(quote) = self.quotes.get_mut(polled.symbol.as_str()) else {
                continue;
            };
            answered.insert(polled.symbol.as_str());
            let changed = quote.apply(&polled_values(polled));
            let event = QuoteEvent {
                quote: quote.clone(),
                changed,
                source: Source::Poll,
            };
            self.last_tick = Some(now);
            self.counters.quotes = self.counters.quotes.saturating_add(1);
            self.push_event(Event::Quote(event));
        }
        let quotes_wanted = &self.quotes;
        self.poll
            .missing
            .retain(|symbol| quotes_wanted.contains_key(symbol) && !answered.contains(&**symbol));
        let newly_missing: Vec<Arc<str>> = poll
            .requested
            .into_iter()
            .filter(|symbol| self.quotes.contains_key(symbol) && !answered.contains(&**symbol))
            .filter(|symbol| self.poll.missing.insert(Arc::clone(symbol)))
            .collect();
        if !newly_missing.is_empty() {
            self.push_event(Event::PollMissing {
                symbols: newly_missing,
            });
        }
    }

    fn poll_failed(&mut self, now: Instant, error: PollError) {
        self.poll.failures = self.poll.failures.saturating_add(1);
        let interval = self
            .config
            .polling
            .map_or(Duration::from_secs(10), |polling| polling.interval);
        let mut delay = retry_delay(
            self.poll.failures,
            interval,
            self.config.backoff_initial,
            self.config.backoff_max,
            self.config.jitter,
            self.unit_jitter(),
        )
        .max(interval);
        if self.poll.failures >= self.config.max_attempts {
            // The breaker's wait, doubling per further failure, as the stream's open circuit.
            let trips = self
                .poll
                .failures
                .saturating_sub(self.config.max_attempts)
                .saturating_add(1);
            delay = delay.max(self.breaker_wait(trips));
        }
        if let PollErrorKind::RateLimited {
            retry_after: Some(after),
        } = error.kind
        {
            // The server's wait is a floor: jitter only adds to it.
            let spread = after.mul_f64(self.config.jitter.clamp(0.0, 1.0) * self.rng.f64());
            delay = delay.max(after.saturating_add(spread));
        }
        let next = add(now, delay);
        self.next_poll = Some(next);
        self.poll.not_before = Some(next);
        self.poll.last_error = Some(error.detail.clone());
        self.push_event(Event::PollFailed {
            error,
            failures: self.poll.failures,
            next_poll: next,
        });
    }

    pub(super) fn poll_status(&self) -> PollStatus {
        PollStatus {
            next_poll: self.next_poll,
            in_flight: self.poll.in_flight.is_some(),
            failures: self.poll.failures,
            last_error: self.poll.last_error.clone(),
        }
    }
}

/// A polled quote as the fields of a streamed delta.
fn polled_values(polled: &PolledQuote) -> QuoteValues<'_> {
    let set = |value: Option<f64>| value.map_or(FieldUpdate::Unchanged, FieldUpdate::Set);
    fn text(value: &Option<String>) -> FieldUpdate<Text<'_>> {
        value
            .as_deref()
            .map_or(FieldUpdate::Unchanged, |text| FieldUpdate::Set(text.into()))
    }
    QuoteValues {
        last_price: set(polled.last_price),
        last_price_time: polled
            .last_price_time
            .map_or(FieldUpdate::Unchanged, FieldUpdate::Set),
        change: set(polled.change),
        change_percent: set(polled.change_percent),
        volume: set(polled.volume),
        bid: set(polled.bid),
        ask: set(polled.ask),
        update_mode: text(&polled.update_mode),
        description: text(&polled.description),
        ..QuoteValues::default()
    }
}

//! The bounded event queue between the driver and the application.
//!
//! Below its capacity every event is delivered. At capacity, a quote replaces the quote of the
//! same symbol still waiting in the queue (the merged quote is complete, so only intermediate
//! ticks are lost; the changed-field sets are combined), and a forming bar replaces the forming
//! bar of the same series. Closed bars, errors, history answers and state changes are never
//! dropped. So a consumer that stops reading holds at most one quote per symbol and one forming
//! bar per series beyond the capacity, plus the rare events that are never dropped.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use tickwire_core::client::{Event, SeriesId};

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Event>,
    /// Sequence number of `items[0]`.
    head: u64,
    pending_quotes: HashMap<Arc<str>, u64>,
    pending_bars: HashMap<SeriesId, u64>,
    capacity: usize,
    conflated: u64,
    waker: Option<Waker>,
    closed: bool,
}

/// A bounded, conflating, single-consumer event queue.
#[derive(Debug, Clone)]
pub struct EventQueue {
    inner: Arc<Mutex<Inner>>,
}

impl EventQueue {
    /// A queue that conflates past `capacity` waiting events.
    pub fn new(capacity: usize) -> Self {
        EventQueue {
            inner: Arc::new(Mutex::new(Inner {
                capacity: capacity.max(1),
                ..Inner::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an event, conflating when the consumer is behind.
    pub fn push(&self, event: Event) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        let behind = inner.items.len() >= inner.capacity;
        let head = inner.head;
        let next = head + inner.items.len() as u64;
        match &event {
            Event::Quote(quote) => {
                let symbol = Arc::clone(&quote.quote.symbol);
                if behind {
                    if let Some(&seq) = inner.pending_quotes.get(&symbol) {
                        let waiting = seq
                            .checked_sub(head)
                            .and_then(|offset| inner.items.get_mut(offset as usize));
                        if let Some(Event::Quote(waiting)) = waiting {
                            let Event::Quote(mut newer) = event else {
                                return;
                            };
                            newer.changed.insert(waiting.changed);
                            *waiting = newer;
                            inner.conflated += 1;
                            return;
                        }
                    }
                }
                inner.pending_quotes.insert(symbol, next);
            }
            Event::Bar(bar) if !bar.closed => {
                if behind {
                    if let Some(&seq) = inner.pending_bars.get(&bar.series) {
                        let waiting = seq
                            .checked_sub(head)
                            .and_then(|offset| inner.items.get_mut(offset as usize));
                        if let Some(Event::Bar(waiting)) = waiting {
                            if !waiting.closed && waiting.bar.time == bar.bar.time {
                                *waiting = bar.clone();
                                inner.conflated += 1;
                                return;
                            }
                        }
                    }
                }
                inner.pending_bars.insert(bar.series, next);
            }
            _ => {}
        }
        inner.items.push_back(event);
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    /// Takes the oldest event.
    pub fn pop(&self) -> Option<Event> {
        let mut inner = self.lock();
        inner.pop()
    }

    /// Events waiting now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Quote and forming-bar updates replaced by newer ones because the consumer was behind.
    pub fn conflated(&self) -> u64 {
        self.lock().conflated
    }

    /// Ends the stream once the waiting events are taken.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut inner = self.lock();
        if let Some(event) = inner.pop() {
            return Poll::Ready(Some(event));
        }
        if inner.closed {
            return Poll::Ready(None);
        }
        inner.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Inner {
    fn pop(&mut self) -> Option<Event> {
        let event = self.items.pop_front()?;
        let seq = self.head;
        self.head += 1;
        match &event {
            Event::Quote(quote) if self.pending_quotes.get(&quote.quote.symbol) == Some(&seq) => {
                self.pending_quotes.remove(&quote.quote.symbol);
            }
            Event::Bar(bar) if self.pending_bars.get(&bar.series) == Some(&seq) => {
                self.pending_bars.remove(&bar.series);
            }
            _ => {}
        }
        Some(event)
    }
}

/// The application's stream of events; ends after the client is closed and drained.
#[derive(Debug, Clone)]
pub struct Events {
    queue: EventQueue,
}

impl Events {
    pub(crate) fn new(queue: EventQueue) -> Self {
        Events { queue }
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.queue.poll_event(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickwire_core::client::{BarEvent, Quote, QuoteEvent, QuoteFields, Source};
    use tickwire_core::message::Bar;

    fn quote(symbol: &str, price: f64, changed: QuoteFields) -> Event {
        let mut quote = Quote::new(Arc::from(symbol));
        quote.last_price = Some(price);
        Event::Quote(QuoteEvent {
            quote,
            changed,
            source: Source::Stream,
        })
    }

    fn bar(series: u64, time: f64, close: f64, closed: bool) -> Event {
        let bar = Bar {
            index: 0,
            time,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close,
            volume: None,
        };
        Event::Bar(BarEvent {
            series: SeriesId(series),
            symbol: "S".into(),
            timeframe: "1".into(),
            bar,
            closed,
        })
    }

    fn price(event: &Event) -> f64 {
        match event {
            Event::Quote(quote) => quote.quote.last_price.unwrap_or_default(),
            Event::Bar(bar) => bar.bar.close,
            _ => f64::NAN,
        }
    }

    #[test]
    fn below_capacity_everything_is_delivered_in_order() {
        let queue = EventQueue::new(10);
        for index in 0..5 {
            queue.push(quote("A", f64::from(index), QuoteFields::LAST_PRICE));
        }
        let prices: Vec<f64> = std::iter::from_fn(|| queue.pop())
            .map(|event| price(&event))
            .collect();
        assert_eq!(prices, [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(queue.conflated(), 0);
    }

    #[test]
    fn a_slow_consumer_gets_the_latest_quote_per_symbol_and_bounded_memory() {
        let queue = EventQueue::new(3);
        for index in 0..10_000 {
            let symbol = if index % 2 == 0 { "A" } else { "B" };
            let changed = if index == 0 {
                QuoteFields::VOLUME
            } else {
                QuoteFields::LAST_PRICE
            };
            queue.push(quote(symbol, f64::from(index), changed));
        }
        assert!(queue.len() <= 3 + 2, "{}", queue.len());
        let events: Vec<Event> = std::iter::from_fn(|| queue.pop()).collect();
        let last_a = events
            .iter()
            .rev()
            .find(|event| matches!(event, Event::Quote(q) if &*q.quote.symbol == "A"))
            .unwrap();
        let last_b = events
            .iter()
            .rev()
            .find(|event| matches!(event, Event::Quote(q) if &*q.quote.symbol == "B"))
            .unwrap();
        assert_eq!(
            (price(last_a), price(last_b)),
            (9_998.0, 9_999.0),
            "the latest value is never lost"
        );
        assert!(queue.conflated() > 9_000);
        // Per symbol, order is preserved.
        let a_prices: Vec<f64> = events
            .iter()
            .filter(|event| matches!(event, Event::Quote(q) if &*q.quote.symbol == "A"))
            .map(price)
            .collect();
        assert!(
            a_prices.windows(2).all(|pair| pair[0] < pair[1]),
            "{a_prices:?}"
        );
    }

    #[test]
    fn conflated_quotes_keep_every_changed_field() {
        let queue = EventQueue::new(1);
        queue.push(quote("X", 0.0, QuoteFields::NONE));
        queue.push(quote("A", 1.0, QuoteFields::VOLUME));
        queue.push(quote("A", 2.0, QuoteFields::LAST_PRICE));
        queue.pop();
        let Some(Event::Quote(merged)) = queue.pop() else {
            panic!()
        };
        assert!(
            merged.changed.contains(QuoteFields::VOLUME)
                && merged.changed.contains(QuoteFields::LAST_PRICE)
        );
        assert_eq!(merged.quote.last_price, Some(2.0));
    }

    #[test]
    fn closed_bars_are_never_dropped_and_forming_bars_conflate() {
        let queue = EventQueue::new(1);
        queue.push(quote("X", 0.0, QuoteFields::NONE));
        queue.push(bar(1, 60.0, 1.0, false));
        queue.push(bar(1, 60.0, 1.5, false));
        queue.push(bar(1, 60.0, 2.0, true));
        queue.push(bar(1, 120.0, 3.0, false));
        let events: Vec<Event> = std::iter::from_fn(|| queue.pop()).collect();
        let bars: Vec<(f64, bool)> = events
            .iter()
            .filter_map(|event| match event {
                Event::Bar(bar) => Some((bar.bar.close, bar.closed)),
                _ => None,
            })
            .collect();
        assert_eq!(bars, [(1.5, false), (2.0, true), (3.0, false)]);
    }

    #[test]
    fn stream_ends_after_close_once_drained() {
        let queue = EventQueue::new(4);
        let mut events = Events::new(queue.clone());
        queue.push(quote("A", 1.0, QuoteFields::LAST_PRICE));
        queue.close();
        queue.push(quote("A", 2.0, QuoteFields::LAST_PRICE));
        let collected: Vec<Event> =
            futures::executor::block_on(futures::StreamExt::collect(&mut events));
        assert_eq!(collected.len(), 1);
    }
}

//! The merged state of one quote: every `qsd` delta applied in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::message::{FieldUpdate, QuoteValues, Text};

/// A set of quote fields, e.g. those a delta changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QuoteFields(u32);

macro_rules! quote_fields {
    ($($(#[$doc:meta])* $name:ident = $bit:expr, $wire:literal;)*) => {
        impl QuoteFields {
            $($(#[$doc])* pub const $name: QuoteFields = QuoteFields(1 << $bit);)*
            const NAMES: &'static [(QuoteFields, &'static str)] = &[$((QuoteFields::$name, $wire)),*];
        }
    };
}

quote_fields! {
    /// `lp`.
    LAST_PRICE = 0, "lp";
    /// `lp_time`.
    LAST_PRICE_TIME = 1, "lp_time";
    /// `ch`.
    CHANGE = 2, "ch";
    /// `chp`.
    CHANGE_PERCENT = 3, "chp";
    /// `volume`.
    VOLUME = 4, "volume";
    /// `bid`.
    BID = 5, "bid";
    /// `ask`.
    ASK = 6, "ask";
    /// `bid_size`.
    BID_SIZE = 7, "bid_size";
    /// `ask_size`.
    ASK_SIZE = 8, "ask_size";
    /// `open_price`.
    OPEN_PRICE = 9, "open_price";
    /// `high_price`.
    HIGH_PRICE = 10, "high_price";
    /// `low_price`.
    LOW_PRICE = 11, "low_price";
    /// `prev_close_price`.
    PREV_CLOSE_PRICE = 12, "prev_close_price";
    /// `update_mode`.
    UPDATE_MODE = 13, "update_mode";
    /// `current_session`.
    CURRENT_SESSION = 14, "current_session";
    /// `description`.
    DESCRIPTION = 15, "description";
    /// `currency_code`.
    CURRENCY_CODE = 16, "currency_code";
    /// Any field kept in [`Quote::other`].
    OTHER = 17, "other";
}

impl QuoteFields {
    /// No field.
    pub const NONE: QuoteFields = QuoteFields(0);

    /// Whether every field of `other` is in `self`.
    pub fn contains(self, other: QuoteFields) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no field is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Adds `other`'s fields.
    pub fn insert(&mut self, other: QuoteFields) {
        self.0 |= other.0;
    }

    /// Wire names of the fields in the set.
    ///
    /// ```
    /// use tickwire_core::client::QuoteFields;
    /// let mut fields = QuoteFields::LAST_PRICE;
    /// fields.insert(QuoteFields::VOLUME);
    /// assert_eq!(fields.names().collect::<Vec<_>>(), ["lp", "volume"]);
    /// ```
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        QuoteFields::NAMES
            .iter()
            .filter(move |(field, _)| self.contains(*field))
            .map(|(_, name)| *name)
    }
}

/// A full quote: the latest value of every field seen for one symbol.
///
/// Cheap to clone (shared strings), so each quote event can carry the whole quote.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quote {
    /// The quote key as subscribed (`EXCH:TICKER` or an `=`+JSON spec).
    pub symbol: Arc<str>,
    /// Last price.
    pub last_price: Option<f64>,
    /// Time of the last price, Unix seconds.
    pub last_price_time: Option<i64>,
    /// Change since the previous close.
    pub change: Option<f64>,
    /// Change in percent.
    pub change_percent: Option<f64>,
    /// Volume; `None` for instruments without volume.
    pub volume: Option<f64>,
    /// Best bid.
    pub bid: Option<f64>,
    /// Best ask.
    pub ask: Option<f64>,
    /// Size at the best bid.
    pub bid_size: Option<f64>,
    /// Size at the best ask.
    pub ask_size: Option<f64>,
    /// Session open.
    pub open_price: Option<f64>,
    /// Session high.
    pub high_price: Option<f64>,
    /// Session low.
    pub low_price: Option<f64>,
    /// Previous close.
    pub prev_close_price: Option<f64>,
    /// e.g. `streaming`, `delayed_streaming_900`.
    pub update_mode: Option<Arc<str>>,
    /// e.g. `market`, `out_of_session`.
    pub current_session: Option<Arc<str>>,
    /// Human-readable description.
    pub description: Option<Arc<str>>,
    /// e.g. `USD`.
    pub currency_code: Option<Arc<str>>,
    /// Every other field received, by wire name.
    pub other: Arc<BTreeMap<String, Value>>,
}

/// Applies one numeric update; reports whether the merged value changed.
fn merge<T: PartialEq + Copy>(target: &mut Option<T>, update: &FieldUpdate<T>) -> bool {
    let before = *target;
    update.apply_to(target);
    // Plain comparison is enough: JSON cannot carry NaN.
    before != *target
}

fn merge_text(target: &mut Option<Arc<str>>, update: &FieldUpdate<Text<'_>>) -> bool {
    match update {
        FieldUpdate::Unchanged => false,
        FieldUpdate::Cleared => target.take().is_some(),
        FieldUpdate::Set(text) => {
            if target.as_deref() == Some(text.as_ref()) {
                return false;
            }
            *target = Some(Arc::from(text.as_ref()));
            true
        }
    }
}

impl Quote {
    /// An empty quote for `symbol`.
    pub fn new(symbol: Arc<str>) -> Self {
        Quote {
            symbol,
            ..Quote::default()
        }
    }

    /// Applies a delta and returns the fields whose value changed.
    ///
    /// ```
    /// use tickwire_core::client::{Quote, QuoteFields};
    /// use tickwire_core::message::{FieldUpdate, QuoteValues};
    ///
    /// let mut quote = Quote::new("FX:EURUSD".into());
    /// let delta = QuoteValues { last_price: FieldUpdate::Set(1.08), ..QuoteValues::default() };
    /// assert_eq!(quote.apply(&delta), QuoteFields::LAST_PRICE);
    /// assert_eq!(quote.apply(&delta), QuoteFields::NONE);
    /// assert_eq!(quote.last_price, Some(1.08));
    /// ```
    pub fn apply(&mut self, delta: &QuoteValues<'_>) -> QuoteFields {
        let mut changed = QuoteFields::NONE;
        let numbers = [
            (
                &mut self.last_price,
                &delta.last_price,
                QuoteFields::LAST_PRICE,
            ),
            (&mut self.change, &delta.change, QuoteFields::CHANGE),
            (
                &mut self.change_percent,
                &delta.change_percent,
                QuoteFields::CHANGE_PERCENT,
            ),
            (&mut self.volume, &delta.volume, QuoteFields::VOLUME),
            (&mut self.bid, &delta.bid, QuoteFields::BID),
            (&mut self.ask, &delta.ask, QuoteFields::ASK),
            (&mut self.bid_size, &delta.bid_size, QuoteFields::BID_SIZE),
            (&mut self.ask_size, &delta.ask_size, QuoteFields::ASK_SIZE),
            (
                &mut self.open_price,
                &delta.open_price,
                QuoteFields::OPEN_PRICE,
            ),
            (
                &mut self.high_price,
                &delta.high_price,
                QuoteFields::HIGH_PRICE,
            ),
            (
                &mut self.low_price,
                &delta.low_price,
                QuoteFields::LOW_PRICE,
            ),
            (
                &mut self.prev_close_price,
                &delta.prev_close_price,
                QuoteFields::PREV_CLOSE_PRICE,
            ),
        ];
        for (target, update, field) in numbers {
            if merge(target, update) {
                changed.insert(field);
            }
        }
        if merge(&mut self.last_price_time, &delta.last_price_time) {
            changed.insert(QuoteFields::LAST_PRICE_TIME);
        }
        let texts = [
            (
                &mut self.update_mode,
                &delta.update_mode,
                QuoteFields::UPDATE_MODE,
            ),
            (
                &mut self.current_session,
                &delta.current_session,
                QuoteFields::CURRENT_SESSION,
            ),
            (
                &mut self.description,
                &delta.description,
                QuoteFields::DESCRIPTION,
            ),
            (
                &mut self.currency_code,
                &delta.currency_code,
                QuoteFields::CURRENCY_CODE,
            ),
        ];
        for (target, update, field) in texts {
            if merge_text(target, update) {
                changed.insert(field);
            }
        }
        for (name, value) in &delta.other {
            let current = self.other.get(name.as_ref());
            let differs = match value {
                Value::Null => current.is_some(),
                value => current != Some(value),
            };
            if differs {
                let other = Arc::make_mut(&mut self.other);
                match value {
                    Value::Null => other.remove(name.as_ref()),
                    value => other.insert(name.to_string(), value.clone()),
                };
                changed.insert(QuoteFields::OTHER);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::borrow::Cow;

    fn update() -> impl Strategy<Value = FieldUpdate<f64>> {
        prop_oneof![
            Just(FieldUpdate::Unchanged),
            Just(FieldUpdate::Cleared),
            (-1e6f64..1e6).prop_map(FieldUpdate::Set),
            Just(FieldUpdate::Set(1.0)),
        ]
    }

    fn delta() -> impl Strategy<Value = QuoteValues<'static>> {
        (
            update(),
            update(),
            update(),
            proptest::option::of(0i64..3),
            proptest::option::of("[ab]"),
            proptest::option::of(0u8..3),
        )
            .prop_map(|(last_price, bid, volume, time, mode, extra)| QuoteValues {
                last_price,
                bid,
                volume,
                last_price_time: time.map_or(FieldUpdate::Unchanged, FieldUpdate::Set),
                update_mode: mode.map_or(FieldUpdate::Unchanged, |mode| {
                    FieldUpdate::Set(Cow::Owned(mode))
                }),
                other: extra
                    .map(|value| {
                        let value = if value == 0 {
                            Value::Null
                        } else {
                            Value::from(value)
                        };
                        vec![(Cow::Borrowed("rch"), value)]
                    })
                    .unwrap_or_default(),
                ..QuoteValues::default()
            })
    }

    proptest! {
        #[test]
        fn merged_state_equals_applying_the_deltas_in_order(deltas in proptest::collection::vec(delta(), 0..40)) {
            let mut quote = Quote::new("X".into());
            // The model: the last update of each field wins; null clears.
            let (mut last_price, mut bid, mut volume, mut time, mut mode, mut rch) = (None, None, None, None, None, None);
            for delta in &deltas {
                let before = quote.clone();
                let changed = quote.apply(delta);
                delta.last_price.apply_to(&mut last_price);
                delta.bid.apply_to(&mut bid);
                delta.volume.apply_to(&mut volume);
                delta.last_price_time.apply_to(&mut time);
                delta.update_mode.clone().apply_to(&mut mode);
                for (_, value) in &delta.other {
                    rch = (!value.is_null()).then(|| value.clone());
                }
                prop_assert_eq!(changed.contains(QuoteFields::LAST_PRICE), before.last_price != quote.last_price);
                prop_assert_eq!(changed.contains(QuoteFields::BID), before.bid != quote.bid);
                prop_assert_eq!(changed.contains(QuoteFields::OTHER), before.other != quote.other);
            }
            prop_assert_eq!(quote.last_price, last_price);
            prop_assert_eq!(quote.bid, bid);
            prop_assert_eq!(quote.volume, volume);
            prop_assert_eq!(quote.last_price_time, time);
            prop_assert_eq!(quote.update_mode.as_deref(), mode.as_deref());
            prop_assert_eq!(quote.other.get("rch"), rch.as_ref());
        }
    }

    #[test]
    fn clone_shares_strings() {
        let mut quote = Quote::new("X".into());
        let delta = QuoteValues {
            description: FieldUpdate::Set(Cow::Borrowed("Thing")),
            ..QuoteValues::default()
        };
        assert_eq!(quote.apply(&delta), QuoteFields::DESCRIPTION);
        let copy = quote.clone();
        assert!(Arc::ptr_eq(
            copy.description.as_ref().unwrap(),
            quote.description.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&copy.symbol, &quote.symbol));
    }
}

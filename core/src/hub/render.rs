//! The JSON the hub sends downstream, rendered once per update and shared by every recipient.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::client::{Quote, QuoteFields};
use crate::json::write_ascii;
use crate::message::Bar;

/// The latest bar of a symbol, as the hub last broadcast it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BarState {
    pub(crate) timeframe: std::sync::Arc<str>,
    pub(crate) bar: Bar,
    pub(crate) closed: bool,
}

/// One quote field's value, for comparing and rendering without a per-field match.
#[derive(PartialEq)]
enum FieldValue<'a> {
    Number(Option<f64>),
    Integer(Option<i64>),
    Text(Option<&'a str>),
}

fn standard_fields(quote: &Quote) -> [(QuoteFields, &'static str, FieldValue<'_>); 17] {
    use FieldValue::{Integer, Number, Text};
    [
        (QuoteFields::LAST_PRICE, "lp", Number(quote.last_price)),
        (
            QuoteFields::LAST_PRICE_TIME,
            "lp_time",
            Integer(quote.last_price_time),
        ),
        (QuoteFields::CHANGE, "ch", Number(quote.change)),
        (
            QuoteFields::CHANGE_PERCENT,
            "chp",
            Number(quote.change_percent),
        ),
        (QuoteFields::VOLUME, "volume", Number(quote.volume)),
        (QuoteFields::BID, "bid", Number(quote.bid)),
        (QuoteFields::ASK, "ask", Number(quote.ask)),
        (QuoteFields::BID_SIZE, "bid_size", Number(quote.bid_size)),
        (QuoteFields::ASK_SIZE, "ask_size", Number(quote.ask_size)),
        (
            QuoteFields::OPEN_PRICE,
            "open_price",
            Number(quote.open_price),
        ),
        (
            QuoteFields::HIGH_PRICE,
            "high_price",
            Number(quote.high_price),
        ),
        (QuoteFields::LOW_PRICE, "low_price", Number(quote.low_price)),
        (
            QuoteFields::PREV_CLOSE_PRICE,
            "prev_close_price",
            Number(quote.prev_close_price),
        ),
        (
            QuoteFields::UPDATE_MODE,
            "update_mode",
            Text(quote.update_mode.as_deref()),
        ),
        (
            QuoteFields::CURRENT_SESSION,
            "current_session",
            Text(quote.current_session.as_deref()),
        ),
        (
            QuoteFields::DESCRIPTION,
            "description",
            Text(quote.description.as_deref()),
        ),
        (
            QuoteFields::CURRENCY_CODE,
            "currency_code",
            Text(quote.currency_code.as_deref()),
        ),
    ]
}

/// The fields whose values differ between what was last sent and the new quote.
pub(crate) fn changed_fields(sent: Option<&Quote>, new: &Quote) -> QuoteFields {
    let empty = Quote::default();
    let sent = sent.unwrap_or(&empty);
    let mut changed = QuoteFields::NONE;
    for ((field, _, old), (_, _, value)) in
        standard_fields(sent).into_iter().zip(standard_fields(new))
    {
        if old != value {
            changed.insert(field);
        }
    }
    if sent.other != new.other {
        changed.insert(QuoteFields::OTHER);
    }
    changed
}

/// Writes `value` as JSON; nothing the hub renders can fail to serialise, and a failure would
/// only shorten one frame, never panic.
fn push<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = write_ascii(value, out);
}

fn push_field(out: &mut Vec<u8>, first: &mut bool, name: &str, value: &FieldValue<'_>) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    push(out, name);
    out.push(b':');
    match value {
        FieldValue::Number(number) => push(out, number),
        FieldValue::Integer(number) => push(out, number),
        FieldValue::Text(text) => push(out, text),
    }
}

fn push_other(
    out: &mut Vec<u8>,
    first: &mut bool,
    sent: Option<&BTreeMap<String, Value>>,
    new: &BTreeMap<String, Value>,
) {
    for (name, value) in new {
        if sent.and_then(|sent| sent.get(name)) == Some(value) {
            continue;
        }
        if !std::mem::take(first) {
            out.push(b',');
        }
        push(out, name);
        out.push(b':');
        push(out, value);
    }
    // A key that disappeared was cleared upstream: null tells the consumer to drop it.
    for name in sent.into_iter().flat_map(BTreeMap::keys) {
        if !new.contains_key(name) {
            if !std::mem::take(first) {
                out.push(b',');
            }
            push(out, name);
            out.extend_from_slice(b":null");
        }
    }
}

/// The quote's fields as a JSON object: only `fields` (with `sent` as the baseline for the
/// free-form ones), or every known field when `fields` is `None`.
fn push_quote_object(
    out: &mut Vec<u8>,
    quote: &Quote,
    fields: Option<QuoteFields>,
    sent: Option<&Quote>,
) {
    out.push(b'{');
    let mut first = true;
    for (field, name, value) in standard_fields(quote) {
        let wanted = match fields {
            Some(fields) => fields.contains(field),
            None => {
                value != FieldValue::Number(None)
                    && value != FieldValue::Integer(None)
                    && value != FieldValue::Text(None)
            }
        };
        if wanted {
            push_field(out, &mut first, name, &value);
        }
    }
    if fields.is_none_or(|fields| fields.contains(QuoteFields::OTHER)) {
        let baseline = fields.and(sent.map(|sent| sent.other.as_ref()));
        push_other(out, &mut first, baseline, &quote.other);
    }
    out.push(b'}');
}

fn push_bar_object(out: &mut Vec<u8>, bar: &Bar) {
    out.extend_from_slice(b"{\"time\":");
    push(out, &bar.time);
    out.extend_from_slice(b",\"open\":");
    push(out, &bar.open);
    out.extend_from_slice(b",\"high\":");
    push(out, &bar.high);
    out.extend_from_slice(b",\"low\":");
    push(out, &bar.low);
    out.extend_from_slice(b",\"close\":");
    push(out, &bar.close);
    out.extend_from_slice(b",\"volume\":");
    push(out, &bar.volume);
    out.push(b'}');
}

fn start(kind: &str, symbol: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"symbol\":");
    push(&mut out, symbol);
    out
}

/// `{"type":"quote","symbol":…,"data":{changed fields}}`.
pub(crate) fn quote_update(
    symbol: &str,
    quote: &Quote,
    fields: QuoteFields,
    sent: Option<&Quote>,
) -> Vec<u8> {
    let mut out = start("quote", symbol);
    out.extend_from_slice(b",\"data\":");
    push_quote_object(&mut out, quote, Some(fields), sent);
    out.push(b'}');
    out
}

/// `{"type":"snapshot","symbol":…,"quote":{…}|null,"bar":{…}|null}`: everything known, to
/// replace whatever the consumer had.
pub(crate) fn snapshot(symbol: &str, quote: Option<&Quote>, bar: Option<&BarState>) -> Vec<u8> {
    snapshot_marked(symbol, quote, bar, false)
}

/// [`snapshot`], with `,"stale":true` after the bar when `stale`: the state was loaded from a
/// store and upstream has not confirmed it yet. A live snapshot has no `stale` key at all, so
/// its bytes are exactly what they were before stored state existed.
pub(crate) fn snapshot_marked(
    symbol: &str,
    quote: Option<&Quote>,
    bar: Option<&BarState>,
    stale: bool,
) -> Vec<u8> {
    let mut out = start("snapshot", symbol);
    out.extend_from_slice(b",\"quote\":");
    match quote {
        Some(quote) => push_quote_object(&mut out, quote, None, None),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bar\":");
    match bar {
        Some(state) => push_bar_state(&mut out, state),
        None => out.extend_from_slice(b"null"),
    }
    if stale {
        out.extend_from_slice(b",\"stale\":true");
    }
    out.push(b'}');
    out
}

/// A rendered snapshot with `,"update_interval":<seconds>` added as its last key: the answer
/// to a subscribe with an interval, built from the shared snapshot with one copy, not a render.
pub(crate) fn with_update_interval(snapshot: &[u8], interval: std::time::Duration) -> Vec<u8> {
    let body = snapshot.strip_suffix(b"}").unwrap_or(snapshot);
    let mut out = Vec::with_capacity(body.len().saturating_add(32));
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"update_interval\":");
    if interval.subsec_nanos() == 0 {
        push(&mut out, &interval.as_secs());
    } else {
        push(&mut out, &interval.as_secs_f64());
    }
    out.push(b'}');
    out
}

fn push_bar_state(out: &mut Vec<u8>, state: &BarState) {
    out.extend_from_slice(b"{\"timeframe\":");
    push(out, state.timeframe.as_ref());
    out.extend_from_slice(b",\"bar\":");
    push_bar_object(out, &state.bar);
    out.extend_from_slice(b",\"closed\":");
    push(out, &state.closed);
    out.push(b'}');
}

/// `{"type":"bar","symbol":…,"timeframe":…,"bar":{…},"closed":…}`.
pub(crate) fn bar_update(symbol: &str, state: &BarState) -> Vec<u8> {
    let mut out = start("bar", symbol);
    out.extend_from_slice(b",\"timeframe\":");
    push(&mut out, state.timeframe.as_ref());
    out.extend_from_slice(b",\"bar\":");
    push_bar_object(&mut out, &state.bar);
    out.extend_from_slice(b",\"closed\":");
    push(&mut out, &state.closed);
    out.push(b'}');
    out
}

/// `{"type":"unsubscribed","symbol":…}`.
pub(crate) fn unsubscribed(symbol: &str) -> Vec<u8> {
    let mut out = start("unsubscribed", symbol);
    out.push(b'}');
    out
}

/// `{"type":"status","upstream":…}`.
pub(crate) fn status(upstream: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(b"{\"type\":\"status\",\"upstream\":");
    push(&mut out, upstream);
    out.push(b'}');
    out
}

/// `{"type":"error","code":…,"message":…[,"symbol":…]}`.
pub(crate) fn error(code: &str, message: &str, symbol: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"error\",\"code\":");
    push(&mut out, code);
    out.extend_from_slice(b",\"message\":");
    push(&mut out, message);
    if let Some(symbol) = symbol {
        out.extend_from_slice(b",\"symbol\":");
        push(&mut out, symbol);
    }
    out.push(b'}');
    out
}

/// `{"type":"warning","code":…,"message":…}`.
pub(crate) fn warning(code: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"warning\",\"code\":");
    push(&mut out, code);
    out.extend_from_slice(b",\"message\":");
    push(&mut out, message);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn quote() -> Quote {
        Quote {
            last_price: Some(1.5),
            change: Some(-0.25),
            description: Some(Arc::from("Thing \"quoted\" é")),
            ..Quote::new(Arc::from("X:Y"))
        }
    }

    fn parse(bytes: &[u8]) -> Value {
        assert!(bytes.is_ascii());
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_quote_update_carries_only_the_changed_fields_and_nulls_for_cleared_ones() {
        let sent = quote();
        let mut new = quote();
        new.last_price = Some(1.75);
        new.change = None;
        let fields = changed_fields(Some(&sent), &new);
        assert_eq!(fields, {
            let mut fields = QuoteFields::LAST_PRICE;
            fields.insert(QuoteFields::CHANGE);
            fields
        });
        let json = parse(&quote_update("X:Y", &new, fields, Some(&sent)));
        assert_eq!(
            json,
            serde_json::json!({"type":"quote","symbol":"X:Y","data":{"lp":1.75,"ch":null}})
        );
        assert_eq!(changed_fields(Some(&new), &new), QuoteFields::NONE);
    }

    #[test]
    fn free_form_fields_are_diffed_by_key() {
        let mut sent = quote();
        Arc::make_mut(&mut sent.other).insert("a".into(), Value::from(1));
        Arc::make_mut(&mut sent.other).insert("gone".into(), Value::from(2));
        let mut new = quote();
        Arc::make_mut(&mut new.other).insert("a".into(), Value::from(1));
        Arc::make_mut(&mut new.other).insert("b".into(), Value::from("x"));
        let fields = changed_fields(Some(&sent), &new);
        assert_eq!(fields, QuoteFields::OTHER);
        let json = parse(&quote_update("X:Y", &new, fields, Some(&sent)));
        assert_eq!(json["data"], serde_json::json!({"b":"x","gone":null}));
    }

    #[test]
    fn a_snapshot_has_every_known_field_and_the_bar() {
        let bar = BarState {
            timeframe: Arc::from("1"),
            bar: Bar {
                index: 3,
                time: 60.0,
                open: 1.0,
                high: 2.0,
                low: 0.5,
                close: 1.5,
                volume: None,
            },
            closed: false,
        };
        let json = parse(&snapshot("X:Y", Some(&quote()), Some(&bar)));
        assert_eq!(
            json,
            serde_json::json!({"type":"snapshot","symbol":"X:Y",
                "quote":{"lp":1.5,"ch":-0.25,"description":"Thing \"quoted\" é"},
                "bar":{"timeframe":"1","bar":{"time":60.0,"open":1.0,"high":2.0,"low":0.5,"close":1.5,"volume":null},"closed":false}})
        );
        assert_eq!(
            parse(&snapshot("X:Y", None, None)),
            serde_json::json!({"type":"snapshot","symbol":"X:Y","quote":null,"bar":null})
        );
    }

    #[test]
    fn a_stale_snapshot_marks_itself_after_the_bar_and_a_live_one_does_not() {
        let live = snapshot("X:Y", Some(&quote()), None);
        assert_eq!(snapshot_marked("X:Y", Some(&quote()), None, false), live);
        let stale = snapshot_marked("X:Y", Some(&quote()), None, true);
        let body = live.strip_suffix(b"}").unwrap();
        assert_eq!(stale, [body, b",\"stale\":true}"].concat());
        let paced = with_update_interval(&stale, std::time::Duration::from_secs(2));
        assert!(paced.ends_with(b",\"bar\":null,\"stale\":true,\"update_interval\":2}"));
    }

    #[test]
    fn a_subscribe_answer_names_its_update_interval() {
        let shared = snapshot("X:Y", Some(&quote()), None);
        let json = parse(&with_update_interval(
            &shared,
            std::time::Duration::from_secs(5),
        ));
        assert_eq!(json["update_interval"], 5);
        assert_eq!(json["quote"]["lp"], 1.5);
        let json = parse(&with_update_interval(
            &shared,
            std::time::Duration::from_millis(250),
        ));
        assert_eq!(json["update_interval"], 0.25);
    }

    #[test]
    fn control_messages_are_valid_json() {
        assert_eq!(
            parse(&error("BAD_REQUEST", "no \"action\"", Some("A"))),
            serde_json::json!({"type":"error","code":"BAD_REQUEST","message":"no \"action\"","symbol":"A"})
        );
        assert_eq!(
            parse(&warning("SLOW_CONSUMER", "behind")),
            serde_json::json!({"type":"warning","code":"SLOW_CONSUMER","message":"behind"})
        );
        assert_eq!(
            parse(&status("live")),
            serde_json::json!({"type":"status","upstream":"live"})
        );
        assert_eq!(
            parse(&unsubscribed("A")),
            serde_json::json!({"type":"unsubscribed","symbol":"A"})
        );
    }
}

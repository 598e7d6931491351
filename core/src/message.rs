//! Server messages: the typed form of each JSON packet the server sends.
//!
//! [`parse`] reads one packet payload (from [`crate::codec::Packet::Json`]) into a
//! [`ServerMessage`] that borrows its strings from the payload wherever the JSON has no escapes.
//! The `p` array is deserialised straight into the message's own shape (no intermediate
//! `serde_json::Value`), choosing the shape from `m`. Methods tickwire does not know become
//! [`ServerMessage::Unknown`] with their raw parameters instead of failing.
//!
//! ```
//! use tickwire_core::message::{parse, ServerMessage};
//!
//! let payload = br#"{"m":"qsd","p":["qs_a",{"n":"NASDAQ:AAPL","s":"ok","v":{"lp":189.5,"ch":null}}]}"#;
//! let ServerMessage::QuoteData(quote) = parse(payload).unwrap() else { panic!() };
//! assert_eq!(quote.symbol, "NASDAQ:AAPL");
//! assert_eq!(quote.values.last_price.value(), Some(&189.5));
//! assert!(quote.values.change.is_cleared());
//! ```

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;

mod fast_qsd;
use serde_json::value::RawValue;

/// A string from the payload: borrowed when the JSON had no escapes, owned otherwise.
pub type Text<'a> = Cow<'a, str>;

/// A JSON value kept as its exact source text, borrowed from the payload.
#[derive(Debug, Clone, Copy)]
pub struct RawJson<'a>(&'a RawValue);

impl<'a> RawJson<'a> {
    /// The JSON text as sent.
    pub fn get(&self) -> &'a str {
        self.0.get()
    }
}

impl PartialEq for RawJson<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl<'de> Deserialize<'de> for RawJson<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'de RawValue>::deserialize(deserializer).map(RawJson)
    }
}

/// Quote volume at or above this value means "no volume" (indices report `1e100`).
pub const NO_VOLUME: f64 = 1e100;

/// Why a JSON payload is not a valid server message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The payload was empty.
    #[error("empty payload")]
    Empty,
    /// Not JSON, or JSON of the wrong shape for its method.
    #[error("{0}")]
    Malformed(#[from] serde_json::Error),
}

/// One server message.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage<'a> {
    /// The first packet on a connection: a JSON object without `m`.
    Hello(Hello),
    /// `qsd` with status `ok`: a quote delta.
    QuoteData(QuoteData<'a>),
    /// `qsd` with status `error`, e.g. `no_such_symbol`.
    QuoteError(QuoteError<'a>),
    /// `quote_completed [qs, key]`: the first snapshot of `symbol` is complete.
    QuoteCompleted {
        /// Quote session id.
        session: Text<'a>,
        /// The quote key as added.
        symbol: Text<'a>,
    },
    /// `symbol_resolved [cs, symbol_id, info]`.
    SymbolResolved(SymbolResolved<'a>),
    /// `symbol_error [cs, symbol_id, reason]`: the series will never complete.
    SymbolError {
        /// Chart session id.
        session: Text<'a>,
        /// Client-chosen symbol id.
        symbol_id: Text<'a>,
        /// e.g. `invalid symbol`.
        reason: Text<'a>,
    },
    /// `series_loading [cs, series_id, turnaround]`.
    SeriesLoading {
        /// Chart session id.
        session: Text<'a>,
        /// Client-chosen series id.
        series_id: Text<'a>,
        /// Turnaround tag, when sent.
        turnaround: Option<Text<'a>>,
    },
    /// `series_timeframe [cs, series_id, turnaround, first, last, range, flag]`.
    SeriesTimeframe(SeriesTimeframe<'a>),
    /// `timescale_update`: a historical batch of bars.
    TimescaleUpdate(ChartUpdate<'a>),
    /// `du`: live bar and study updates.
    DataUpdate(ChartUpdate<'a>),
    /// `series_completed [cs, series_id, status, turnaround, {…}]`.
    SeriesCompleted(SeriesCompleted<'a>),
    /// `series_error [cs, series_id, turnaround, reason]`.
    SeriesError {
        /// Chart session id.
        session: Text<'a>,
        /// Client-chosen series id.
        series_id: Text<'a>,
        /// Turnaround tag, when sent.
        turnaround: Option<Text<'a>>,
        /// e.g. `seconds_not_entitled`.
        reason: Text<'a>,
    },
    /// `study_loading [cs, study_id, turnaround]`.
    StudyLoading {
        /// Chart session id.
        session: Text<'a>,
        /// Client-chosen study id.
        study_id: Text<'a>,
        /// e.g. `s1_st1`.
        turnaround: Option<Text<'a>>,
    },
    /// `study_completed [cs, study_id, turnaround]`.
    StudyCompleted {
        /// Chart session id.
        session: Text<'a>,
        /// Client-chosen study id.
        study_id: Text<'a>,
        /// e.g. `s1_st1`.
        turnaround: Option<Text<'a>>,
    },
    /// `study_error [cs, study_id, turnaround, error, …]`.
    StudyError {
        /// Chart session id.
        session: Text<'a>,
        /// Client-chosen study id.
        study_id: Text<'a>,
        /// Turnaround tag, when sent.
        turnaround: Option<Text<'a>>,
        /// The error text.
        reason: Text<'a>,
        /// Any further parameters, as sent.
        details: Vec<Value>,
    },
    /// `critical_error [session, name, detail?]`: session-level; the socket stays usable.
    CriticalError {
        /// The session concerned.
        session: Text<'a>,
        /// e.g. `invalid_parameters`.
        name: Text<'a>,
        /// Further detail, when sent.
        detail: Option<Text<'a>>,
    },
    /// `protocol_error [text]`: connection-level, e.g. `bad auth token`.
    ProtocolError {
        /// The server's text.
        text: Text<'a>,
    },
    /// A method tickwire does not model; kept rather than failing.
    Unknown {
        /// The method name.
        method: Text<'a>,
        /// The raw `p` value, when present.
        params: Option<RawJson<'a>>,
    },
}

impl ServerMessage<'_> {
    /// The wire method (`hello` for the hello, the server's name for unknown methods).
    pub fn method(&self) -> &str {
        match self {
            ServerMessage::Hello(_) => "hello",
            ServerMessage::QuoteData(_) | ServerMessage::QuoteError(_) => "qsd",
            ServerMessage::QuoteCompleted { .. } => "quote_completed",
            ServerMessage::SymbolResolved(_) => "symbol_resolved",
            ServerMessage::SymbolError { .. } => "symbol_error",
            ServerMessage::SeriesLoading { .. } => "series_loading",
            ServerMessage::SeriesTimeframe(_) => "series_timeframe",
            ServerMessage::TimescaleUpdate(_) => "timescale_update",
            ServerMessage::DataUpdate(_) => "du",
            ServerMessage::SeriesCompleted(_) => "series_completed",
            ServerMessage::SeriesError { .. } => "series_error",
            ServerMessage::StudyLoading { .. } => "study_loading",
            ServerMessage::StudyCompleted { .. } => "study_completed",
            ServerMessage::StudyError { .. } => "study_error",
            ServerMessage::CriticalError { .. } => "critical_error",
            ServerMessage::ProtocolError { .. } => "protocol_error",
            ServerMessage::Unknown { method, .. } => method,
        }
    }

    /// The session id (`p[0]`) for session-scoped messages.
    pub fn session(&self) -> Option<&str> {
        match self {
            ServerMessage::Hello(_)
            | ServerMessage::ProtocolError { .. }
            | ServerMessage::Unknown { .. } => None,
            ServerMessage::QuoteData(quote) => Some(&quote.session),
            ServerMessage::QuoteError(error) => Some(&error.session),
            ServerMessage::SymbolResolved(resolved) => Some(&resolved.session),
            ServerMessage::SeriesTimeframe(timeframe) => Some(&timeframe.session),
            ServerMessage::TimescaleUpdate(update) | ServerMessage::DataUpdate(update) => {
                Some(&update.session)
            }
            ServerMessage::SeriesCompleted(completed) => Some(&completed.session),
            ServerMessage::QuoteCompleted { session, .. }
            | ServerMessage::SymbolError { session, .. }
            | ServerMessage::SeriesLoading { session, .. }
            | ServerMessage::SeriesError { session, .. }
            | ServerMessage::StudyLoading { session, .. }
            | ServerMessage::StudyCompleted { session, .. }
            | ServerMessage::StudyError { session, .. }
            | ServerMessage::CriticalError { session, .. } => Some(session),
        }
    }
}

/// The server hello. Every field is optional: an unexpected type leaves that field `None`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Hello {
    /// Server-side connection id.
    #[serde(deserialize_with = "lenient")]
    pub session_id: Option<String>,
    /// Server time, Unix seconds.
    #[serde(deserialize_with = "lenient")]
    pub timestamp: Option<i64>,
    /// Server time, Unix milliseconds.
    #[serde(rename = "timestampMs", deserialize_with = "lenient")]
    pub timestamp_ms: Option<i64>,
    /// Server release tag.
    #[serde(deserialize_with = "lenient")]
    pub release: Option<String>,
    /// `json` for the text protocol.
    #[serde(deserialize_with = "lenient")]
    pub protocol: Option<String>,
    /// Address of the front end, e.g. `1.2.3.4:443`.
    #[serde(deserialize_with = "lenient")]
    pub via: Option<String>,
    /// Auth scheme version.
    #[serde(deserialize_with = "lenient")]
    pub auth_scheme_vsn: Option<i64>,
}

/// Deserialises a field as `Some(T)`, or `None` when it is null or of another type.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: de::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).ok())
}

/// One field of a quote delta.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum FieldUpdate<T> {
    /// Not in this delta: keep the previous value.
    #[default]
    Unchanged,
    /// Sent as `null` (or, for volume, as the `1e100` "no volume" marker): the value is gone.
    Cleared,
    /// A new value.
    Set(T),
}

impl<T> FieldUpdate<T> {
    /// The new value, if this update sets one.
    pub fn value(&self) -> Option<&T> {
        match self {
            FieldUpdate::Set(value) => Some(value),
            _ => None,
        }
    }

    /// Whether the delta did not mention this field.
    pub fn is_unchanged(&self) -> bool {
        matches!(self, FieldUpdate::Unchanged)
    }

    /// Whether the delta cleared this field.
    pub fn is_cleared(&self) -> bool {
        matches!(self, FieldUpdate::Cleared)
    }

    /// Applies this update to a merged value.
    ///
    /// ```
    /// use tickwire_core::message::FieldUpdate;
    /// let mut price = Some(1.0);
    /// FieldUpdate::Unchanged.apply_to(&mut price);
    /// assert_eq!(price, Some(1.0));
    /// FieldUpdate::Set(2.0).apply_to(&mut price);
    /// assert_eq!(price, Some(2.0));
    /// FieldUpdate::Cleared.apply_to(&mut price);
    /// assert_eq!(price, None);
    /// ```
    pub fn apply_to(self, target: &mut Option<T>) {
        match self {
            FieldUpdate::Unchanged => {}
            FieldUpdate::Cleared => *target = None,
            FieldUpdate::Set(value) => *target = Some(value),
        }
    }
}

/// The `v` object of a `qsd`: the fields that changed. Well-known fields are typed; the rest
/// are kept as JSON values in [`QuoteValues::other`], in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuoteValues<'a> {
    /// `lp`: last price.
    pub last_price: FieldUpdate<f64>,
    /// `lp_time`: time of the last price, Unix seconds.
    pub last_price_time: FieldUpdate<i64>,
    /// `ch`: change since the previous close.
    pub change: FieldUpdate<f64>,
    /// `chp`: change in percent.
    pub change_percent: FieldUpdate<f64>,
    /// `volume`; `1e100` (no volume) becomes [`FieldUpdate::Cleared`].
    pub volume: FieldUpdate<f64>,
    /// `bid`.
    pub bid: FieldUpdate<f64>,
    /// `ask`.
    pub ask: FieldUpdate<f64>,
    /// `bid_size`.
    pub bid_size: FieldUpdate<f64>,
    /// `ask_size`.
    pub ask_size: FieldUpdate<f64>,
    /// `open_price`.
    pub open_price: FieldUpdate<f64>,
    /// `high_price`.
    pub high_price: FieldUpdate<f64>,
    /// `low_price`.
    pub low_price: FieldUpdate<f64>,
    /// `prev_close_price`.
    pub prev_close_price: FieldUpdate<f64>,
    /// `update_mode`, e.g. `streaming`, `delayed_streaming_900`.
    pub update_mode: FieldUpdate<Text<'a>>,
    /// `current_session`, e.g. `market`, `out_of_session`.
    pub current_session: FieldUpdate<Text<'a>>,
    /// `description`.
    pub description: FieldUpdate<Text<'a>>,
    /// `currency_code`.
    pub currency_code: FieldUpdate<Text<'a>>,
    /// Every other field, and any well-known field whose value had an unexpected type.
    pub other: Vec<(Text<'a>, Value)>,
}

/// A `qsd` quote delta for one symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct QuoteData<'a> {
    /// Quote session id.
    pub session: Text<'a>,
    /// The quote key exactly as the client added it (`n`).
    pub symbol: Text<'a>,
    /// The changed fields.
    pub values: QuoteValues<'a>,
}

/// A `qsd` with status `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuoteError<'a> {
    /// Quote session id.
    pub session: Text<'a>,
    /// The quote key exactly as the client added it.
    pub symbol: Text<'a>,
    /// `errmsg`, e.g. `no_such_symbol`.
    pub message: Text<'a>,
}

/// `symbol_resolved`.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolResolved<'a> {
    /// Chart session id.
    pub session: Text<'a>,
    /// Client-chosen symbol id.
    pub symbol_id: Text<'a>,
    /// The well-known fields of the info object.
    pub info: SymbolInfo,
    /// The whole info object as sent.
    pub raw_info: Option<RawJson<'a>>,
}

/// Well-known fields of a `symbol_resolved` info object (each `None` when absent or odd).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SymbolInfo {
    /// Short name, e.g. `BTCUSDT`.
    #[serde(deserialize_with = "lenient")]
    pub name: Option<String>,
    /// e.g. `BINANCE:BTCUSDT`.
    #[serde(deserialize_with = "lenient")]
    pub full_name: Option<String>,
    /// e.g. `BINANCE:BTCUSDT`.
    #[serde(deserialize_with = "lenient")]
    pub pro_name: Option<String>,
    /// Human-readable description.
    #[serde(deserialize_with = "lenient")]
    pub description: Option<String>,
    /// Exchange name.
    #[serde(deserialize_with = "lenient")]
    pub exchange: Option<String>,
    /// Instrument type, e.g. `stock`, `crypto`, `index`.
    #[serde(rename = "type", deserialize_with = "lenient")]
    pub kind: Option<String>,
    /// e.g. `USD`.
    #[serde(deserialize_with = "lenient")]
    pub currency_code: Option<String>,
    /// IANA time zone of the exchange.
    #[serde(deserialize_with = "lenient")]
    pub timezone: Option<String>,
    /// Trading session, e.g. `0930-1600`.
    #[serde(deserialize_with = "lenient")]
    pub session: Option<String>,
    /// Price scale: prices are multiples of `minmov / pricescale`.
    #[serde(deserialize_with = "lenient")]
    pub pricescale: Option<f64>,
    /// Minimal price movement numerator.
    #[serde(deserialize_with = "lenient")]
    pub minmov: Option<f64>,
    /// Data delay in seconds for anonymous users, e.g. 900.
    #[serde(deserialize_with = "lenient")]
    pub delay: Option<f64>,
}

/// `series_timeframe`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesTimeframe<'a> {
    /// Chart session id.
    pub session: Text<'a>,
    /// Client-chosen series id.
    pub series_id: Text<'a>,
    /// Turnaround tag.
    pub turnaround: Option<Text<'a>>,
    /// Index of the first bar.
    pub first_index: Option<i64>,
    /// Index of the last bar.
    pub last_index: Option<i64>,
    /// Range name, e.g. `LASTSESSION`, `12M`.
    pub range: Option<Text<'a>>,
    /// The trailing flag, as sent.
    pub flag: Option<bool>,
}

/// `series_completed`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesCompleted<'a> {
    /// Chart session id.
    pub session: Text<'a>,
    /// Client-chosen series id.
    pub series_id: Text<'a>,
    /// `streaming`, `delayed_streaming_900`, `replay`, …
    pub status: Text<'a>,
    /// Turnaround tag.
    pub turnaround: Option<Text<'a>>,
    /// `rt_update_period` in seconds, when sent.
    pub update_period: Option<f64>,
    /// `data_completed`: `end` (no older data) or `limit` (bar cap reached), when sent.
    pub data_completed: Option<Text<'a>>,
}

/// One OHLC(V) bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// Position in the series (`i`), 0 = oldest loaded.
    pub index: i64,
    /// Bar open time, Unix seconds (the server sends a float).
    pub time: f64,
    /// Open.
    pub open: f64,
    /// High.
    pub high: f64,
    /// Low.
    pub low: f64,
    /// Close.
    pub close: f64,
    /// Volume; `None` for instruments without volume (5-value bars).
    pub volume: Option<f64>,
}

/// The bars of one series in a `timescale_update` or `du`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesBars<'a> {
    /// Client-chosen series id.
    pub series_id: Text<'a>,
    /// Turnaround tag (`t`).
    pub turnaround: Option<Text<'a>>,
    /// Bars, oldest first.
    pub bars: Vec<Bar>,
    /// `lbs.bar_close_time`: when the last bar closes, Unix seconds.
    pub bar_close_time: Option<f64>,
}

/// One row of study values: `[time, plot…]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRow {
    /// Position in the series.
    pub index: i64,
    /// The values, time first; `None` where the server sent null.
    pub values: Vec<Option<f64>>,
}

/// The rows of one study in a `timescale_update` or `du` (the `st` key).
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRows<'a> {
    /// Client-chosen study id.
    pub study_id: Text<'a>,
    /// Turnaround tag (`t`).
    pub turnaround: Option<Text<'a>>,
    /// Rows, in order.
    pub rows: Vec<StudyRow>,
    /// Graphics commands (`ns.d`, a JSON string), when not empty.
    pub graphics: Option<Text<'a>>,
}

/// `timescale_update` or `du`: bars per series and rows per study, kept apart.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartUpdate<'a> {
    /// Chart session id.
    pub session: Text<'a>,
    /// Series entries (objects with `s`, or neither `s` nor `st`).
    pub series: Vec<SeriesBars<'a>>,
    /// Study entries (objects with `st`).
    pub studies: Vec<StudyRows<'a>>,
    /// The time-scale object (`p[2]` of `timescale_update`), as sent.
    pub timescale: Option<RawJson<'a>>,
}

/// Parses one JSON packet payload.
///
/// # Errors
/// [`ParseError::Empty`] for an empty payload; [`ParseError::Malformed`] for anything that is not
/// JSON, not an object, or whose `p` does not have the shape of its method.
///
/// The payload is checked to be UTF-8 once, as a whole (the decoder's payloads always are), and
/// then read as [`parse_str`] reads it.
pub fn parse(payload: &[u8]) -> Result<ServerMessage<'_>, ParseError> {
    match std::str::from_utf8(payload) {
        Ok(text) => parse_str(text),
        // serde_json reports where the text stops being UTF-8.
        Err(_) => general(serde_json::Deserializer::from_slice(payload), payload),
    }
}

/// Parses one JSON packet payload that is already text.
///
/// # Errors
/// As [`parse`].
pub fn parse_str(payload: &str) -> Result<ServerMessage<'_>, ParseError> {
    let mut values = QuoteValues::default();
    match fast_qsd::parse_into(payload, &mut values) {
        Some((session, symbol)) => Ok(ServerMessage::QuoteData(QuoteData {
            session: Cow::Borrowed(session),
            symbol: Cow::Borrowed(symbol),
            values,
        })),
        None => parse_general(payload),
    }
}

/// Reads a plain `ok` qsd in the server's compact form into `values` (which starts out
/// empty), returning its session and symbol, without building a [`ServerMessage`]; `None` for
/// any other payload, which then goes to [`parse_general`] (and `values` is to be discarded).
/// The client's hot path, where each move of a whole message is a copy of ~380 bytes.
pub(crate) fn parse_quote_into<'a>(
    payload: &'a str,
    values: &mut QuoteValues<'a>,
) -> Option<(&'a str, &'a str)> {
    fast_qsd::parse_into(payload, values)
}

/// The serde path, for every message the fast path does not take.
pub(crate) fn parse_general(payload: &str) -> Result<ServerMessage<'_>, ParseError> {
    general(
        serde_json::Deserializer::from_str(payload),
        payload.as_bytes(),
    )
}

/// Reads one message with serde from `deserializer`, which reads `payload`.
fn general<'a, R: serde_json::de::Read<'a>>(
    mut deserializer: serde_json::Deserializer<R>,
    payload: &'a [u8],
) -> Result<ServerMessage<'a>, ParseError> {
    if payload.is_empty() {
        return Err(ParseError::Empty);
    }
    let envelope = deserializer.deserialize_map(EnvelopeVisitor)?;
    deserializer.end()?;
    match envelope {
        Some(message) => Ok(message),
        None => Ok(ServerMessage::Hello(serde_json::from_slice(payload)?)),
    }
}

/// Methods with a typed shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Qsd,
    QuoteCompleted,
    SymbolResolved,
    SymbolError,
    SeriesLoading,
    SeriesTimeframe,
    TimescaleUpdate,
    DataUpdate,
    SeriesCompleted,
    SeriesError,
    StudyLoading,
    StudyCompleted,
    StudyError,
    CriticalError,
    ProtocolError,
}

impl Method {
    fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "qsd" => Method::Qsd,
            "du" => Method::DataUpdate,
            "timescale_update" => Method::TimescaleUpdate,
            "quote_completed" => Method::QuoteCompleted,
            "symbol_resolved" => Method::SymbolResolved,
            "symbol_error" => Method::SymbolError,
            "series_loading" => Method::SeriesLoading,
            "series_timeframe" => Method::SeriesTimeframe,
            "series_completed" => Method::SeriesCompleted,
            "series_error" => Method::SeriesError,
            "study_loading" => Method::StudyLoading,
            "study_completed" => Method::StudyCompleted,
            "study_error" => Method::StudyError,
            "critical_error" => Method::CriticalError,
            "protocol_error" => Method::ProtocolError,
            _ => return None,
        })
    }
}

/// A JSON string as [`Text`], borrowed when it has no escapes.
struct TextValue<'de>(Text<'de>);

impl<'de> Deserialize<'de> for TextValue<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = TextValue<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(TextValue(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(TextValue(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(TextValue(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Any JSON value, classified without allocating for numbers, strings and null.
enum Scalar<'de> {
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Null,
    Text(Text<'de>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other(Value::Bool(value)))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Signed(value))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Unsigned(value))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(value))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(text)))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(text.to_owned())))
    }
    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(text)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(Scalar::Other)
    }
}

impl<'de> Scalar<'de> {
    fn as_f64(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)] // prices and sizes: f64 precision is the contract
        match *self {
            Scalar::Signed(value) => Some(value as f64),
            Scalar::Unsigned(value) => Some(value as f64),
            Scalar::Float(value) => Some(value),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match *self {
            Scalar::Signed(value) => Some(value),
            Scalar::Unsigned(value) => i64::try_from(value).ok(),
            Scalar::Float(value) => float_to_i64(value),
            _ => None,
        }
    }

    fn float_update(&self) -> Option<FieldUpdate<f64>> {
        match self {
            Scalar::Null => Some(FieldUpdate::Cleared),
            other => other.as_f64().map(FieldUpdate::Set),
        }
    }

    fn integer_update(&self) -> Option<FieldUpdate<i64>> {
        match self {
            Scalar::Null => Some(FieldUpdate::Cleared),
            other => other.as_i64().map(FieldUpdate::Set),
        }
    }

    /// Text as is; any other value rendered as JSON (error texts must never be lost).
    fn into_text(self) -> Text<'de> {
        match self {
            Scalar::Text(text) => text,
            other => Cow::Owned(other.into_value().to_string()),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Scalar::Signed(value) => Value::from(value),
            Scalar::Unsigned(value) => Value::from(value),
            Scalar::Float(value) => Value::from(value),
            Scalar::Null => Value::Null,
            Scalar::Text(text) => Value::String(text.into_owned()),
            Scalar::Other(value) => value,
        }
    }
}

/// An integral float as `i64`; `None` for fractions, infinities, NaN and out-of-range values.
fn float_to_i64(value: f64) -> Option<i64> {
    // 2^63 as f64 is exact; everything in [-2^63, 2^63) converts without loss of range.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    #[allow(clippy::cast_possible_truncation)] // range and integrality checked just above
    if value.fract() == 0.0 && (-LIMIT..LIMIT).contains(&value) {
        Some(value as i64)
    } else {
        None
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    /// `None` when the object has no `m`: the hello.
    type Value = Option<ServerMessage<'de>>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut method: Option<Text<'de>> = None;
        let mut message: Option<ServerMessage<'de>> = None;
        let mut params_before_method: Option<&'de RawValue> = None;
        while let Some(key) = map.next_key::<TextValue<'de>>()? {
            match key.0.as_ref() {
                "m" => {
                    if method.is_some() {
                        return Err(de::Error::duplicate_field("m"));
                    }
                    method = Some(map.next_value::<TextValue<'de>>()?.0);
                }
                "p" => {
                    if message.is_some() || params_before_method.is_some() {
                        return Err(de::Error::duplicate_field("p"));
                    }
                    match &method {
                        Some(name) => {
                            message = Some(map.next_value_seed(ParamsSeed {
                                method: name.clone(),
                            })?)
                        }
                        None => params_before_method = Some(map.next_value()?),
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let Some(method) = method else {
            return Ok(None);
        };
        if let Some(message) = message {
            return Ok(Some(message));
        }
        let seed = ParamsSeed { method };
        match params_before_method {
            Some(raw) => {
                let mut deserializer = serde_json::Deserializer::from_str(raw.get());
                seed.deserialize(&mut deserializer)
                    .map(Some)
                    .map_err(de::Error::custom)
            }
            None => match Method::from_name(&seed.method) {
                None => Ok(Some(ServerMessage::Unknown {
                    method: seed.method,
                    params: None,
                })),
                Some(_) => Err(de::Error::custom(format_args!(
                    "{}: missing field `p`",
                    seed.method
                ))),
            },
        }
    }
}

/// Deserialises `p` into the message shape of its method.
struct ParamsSeed<'de> {
    method: Text<'de>,
}

impl<'de> DeserializeSeed<'de> for ParamsSeed<'de> {
    type Value = ServerMessage<'de>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        match Method::from_name(&self.method) {
            Some(method) => deserializer.deserialize_seq(ParamsVisitor {
                method,
                name: self.method,
            }),
            None => {
                let params = RawJson::deserialize(deserializer)?;
                Ok(ServerMessage::Unknown {
                    method: self.method,
                    params: Some(params),
                })
            }
        }
    }
}

struct ParamsVisitor<'de> {
    method: Method,
    name: Text<'de>,
}

/// Reads the parameters of one message, naming the method and parameter in every error.
struct Params<'n, A> {
    seq: A,
    method: &'n str,
}

impl<'de, A: SeqAccess<'de>> Params<'_, A> {
    fn required<T: Deserialize<'de>>(&mut self, what: &str) -> Result<T, A::Error> {
        self.seq
            .next_element()?
            .ok_or_else(|| de::Error::custom(format_args!("{}: missing {what}", self.method)))
    }

    fn required_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
        what: &str,
    ) -> Result<S::Value, A::Error> {
        self.seq
            .next_element_seed(seed)?
            .ok_or_else(|| de::Error::custom(format_args!("{}: missing {what}", self.method)))
    }

    fn text(&mut self, what: &str) -> Result<Text<'de>, A::Error> {
        Ok(self.required::<TextValue<'de>>(what)?.0)
    }

    /// A parameter that is usually a string but is kept whatever it is.
    fn lenient_text(&mut self, what: &str) -> Result<Text<'de>, A::Error> {
        Ok(self.required::<Scalar<'de>>(what)?.into_text())
    }

    fn optional_text(&mut self) -> Result<Option<Text<'de>>, A::Error> {
        Ok(self
            .seq
            .next_element::<Scalar<'de>>()?
            .and_then(|scalar| match scalar {
                Scalar::Null => None,
                other => Some(other.into_text()),
            }))
    }

    fn optional_scalar(&mut self) -> Result<Option<Scalar<'de>>, A::Error> {
        self.seq.next_element::<Scalar<'de>>()
    }

    /// Skips parameters a newer server may add.
    fn finish(mut self) -> Result<(), A::Error> {
        while self.seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn rest(mut self) -> Result<Vec<Value>, A::Error> {
        let mut rest = Vec::new();
        while let Some(value) = self.seq.next_element::<Value>()? {
            rest.push(value);
        }
        Ok(rest)
    }
}

impl<'de> Visitor<'de> for ParamsVisitor<'de> {
    type Value = ServerMessage<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "the `p` array of {}", self.name)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let mut p = Params {
            seq,
            method: &self.name,
        };
        let message = match self.method {
            Method::Qsd => {
                let session = p.text("session id")?;
                let body = p.required::<QuoteBody<'de>>("quote object")?;
                match body.status {
                    QuoteStatus::Error(message) => ServerMessage::QuoteError(QuoteError {
                        session,
                        symbol: body.symbol,
                        message,
                    }),
                    QuoteStatus::Ok => ServerMessage::QuoteData(QuoteData {
                        session,
                        symbol: body.symbol,
                        values: body.values,
                    }),
                }
            }
            Method::QuoteCompleted => ServerMessage::QuoteCompleted {
                session: p.text("session id")?,
                symbol: p.text("symbol")?,
            },
            Method::SymbolResolved => {
                let session = p.text("session id")?;
                let symbol_id = p.text("symbol id")?;
                let raw_info = p.seq.next_element::<RawJson<'de>>()?;
                let info = raw_info
                    .and_then(|raw| serde_json::from_str::<SymbolInfo>(raw.get()).ok())
                    .unwrap_or_default();
                ServerMessage::SymbolResolved(SymbolResolved {
                    session,
                    symbol_id,
                    info,
                    raw_info,
                })
            }
            Method::SymbolError => ServerMessage::SymbolError {
                session: p.text("session id")?,
                symbol_id: p.text("symbol id")?,
                reason: p.optional_text()?.unwrap_or(Cow::Borrowed("")),
            },
            Method::SeriesLoading => ServerMessage::SeriesLoading {
                session: p.text("session id")?,
                series_id: p.text("series id")?,
                turnaround: p.optional_text()?,
            },
            Method::SeriesTimeframe => {
                let session = p.text("session id")?;
                let series_id = p.text("series id")?;
                let turnaround = p.optional_text()?;
                let first_index = p.optional_scalar()?.and_then(|index| index.as_i64());
                let last_index = p.optional_scalar()?.and_then(|index| index.as_i64());
                let range = p.optional_text()?;
                let flag = p
                    .seq
                    .next_element::<Value>()?
                    .and_then(|flag| flag.as_bool());
                ServerMessage::SeriesTimeframe(SeriesTimeframe {
                    session,
                    series_id,
                    turnaround,
                    first_index,
                    last_index,
                    range,
                    flag,
                })
            }
            Method::TimescaleUpdate | Method::DataUpdate => {
                let session = p.text("session id")?;
                let (series, studies) = p.required_seed(ChartEntriesSeed, "series map")?;
                let timescale = p.seq.next_element::<RawJson<'de>>()?;
                let update = ChartUpdate {
                    session,
                    series,
                    studies,
                    timescale,
                };
                if self.method == Method::DataUpdate {
                    ServerMessage::DataUpdate(update)
                } else {
                    ServerMessage::TimescaleUpdate(update)
                }
            }
            Method::SeriesCompleted => {
                let session = p.text("session id")?;
                let series_id = p.text("series id")?;
                let status = p.lenient_text("status")?;
                let turnaround = p.optional_text()?;
                let extra = p
                    .seq
                    .next_element::<CompletionInfo<'de>>()?
                    .unwrap_or_default();
                ServerMessage::SeriesCompleted(SeriesCompleted {
                    session,
                    series_id,
                    status,
                    turnaround,
                    update_period: extra.update_period,
                    data_completed: extra.data_completed,
                })
            }
            Method::SeriesError => ServerMessage::SeriesError {
                session: p.text("session id")?,
                series_id: p.text("series id")?,
                turnaround: p.optional_text()?,
                reason: p.optional_text()?.unwrap_or(Cow::Borrowed("")),
            },
            Method::StudyLoading => ServerMessage::StudyLoading {
                session: p.text("session id")?,
                study_id: p.text("study id")?,
                turnaround: p.optional_text()?,
            },
            Method::StudyCompleted => ServerMessage::StudyCompleted {
                session: p.text("session id")?,
                study_id: p.text("study id")?,
                turnaround: p.optional_text()?,
            },
            Method::StudyError => {
                let session = p.text("session id")?;
                let study_id = p.text("study id")?;
                let turnaround = p.optional_text()?;
                let reason = p.optional_text()?.unwrap_or(Cow::Borrowed(""));
                let details = p.rest()?;
                return Ok(ServerMessage::StudyError {
                    session,
                    study_id,
                    turnaround,
                    reason,
                    details,
                });
            }
            Method::CriticalError => ServerMessage::CriticalError {
                session: p.lenient_text("session id")?,
                name: p.lenient_text("error name")?,
                detail: p.optional_text()?,
            },
            Method::ProtocolError => ServerMessage::ProtocolError {
                text: p.lenient_text("error text")?,
            },
        };
        p.finish()?;
        Ok(message)
    }
}

enum QuoteStatus<'de> {
    Ok,
    Error(Text<'de>),
}

/// The `{"n":…,"s":…,"v":{…}}` object of a `qsd`.
struct QuoteBody<'de> {
    symbol: Text<'de>,
    status: QuoteStatus<'de>,
    values: QuoteValues<'de>,
}

impl<'de> Deserialize<'de> for QuoteBody<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = QuoteBody<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a qsd object with `n`, `s` and `v`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut symbol = None;
                let mut is_error = false;
                let mut error_message = None;
                let mut values = QuoteValues::default();
                while let Some(key) = map.next_key::<TextValue<'de>>()? {
                    match key.0.as_ref() {
                        "n" => symbol = Some(map.next_value::<TextValue<'de>>()?.0),
                        "s" => is_error = map.next_value::<Scalar<'de>>()?.into_text() == "error",
                        "v" => {
                            values = map
                                .next_value::<Option<QuoteValues<'de>>>()?
                                .unwrap_or_default()
                        }
                        "errmsg" => {
                            error_message = Some(map.next_value::<Scalar<'de>>()?.into_text())
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let symbol =
                    symbol.ok_or_else(|| de::Error::custom("qsd: missing `n` (the quote key)"))?;
                let status = if is_error {
                    QuoteStatus::Error(error_message.unwrap_or(Cow::Borrowed("error")))
                } else {
                    QuoteStatus::Ok
                };
                Ok(QuoteBody {
                    symbol,
                    status,
                    values,
                })
            }
        }
        deserializer.deserialize_map(BodyVisitor)
    }
}

impl<'de> Deserialize<'de> for QuoteValues<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;
        impl<'de> Visitor<'de> for ValuesVisitor {
            type Value = QuoteValues<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object of quote fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut values = QuoteValues::default();
                while let Some(key) = map.next_key::<TextValue<'de>>()? {
                    let scalar = map.next_value::<Scalar<'de>>()?;
                    values.set(key.0, scalar);
                }
                Ok(values)
            }
        }
        deserializer.deserialize_map(ValuesVisitor)
    }
}

impl<'de> QuoteValues<'de> {
    /// Stores one field: typed when it is well known and of the expected type, else in `other`.
    fn set(&mut self, key: Text<'de>, scalar: Scalar<'de>) {
        let float_slot = match key.as_ref() {
            "lp" => Some(&mut self.last_price),
            "ch" => Some(&mut self.change),
            "chp" => Some(&mut self.change_percent),
            "volume" => Some(&mut self.volume),
            "bid" => Some(&mut self.bid),
            "ask" => Some(&mut self.ask),
            "bid_size" => Some(&mut self.bid_size),
            "ask_size" => Some(&mut self.ask_size),
            "open_price" => Some(&mut self.open_price),
            "high_price" => Some(&mut self.high_price),
            "low_price" => Some(&mut self.low_price),
            "prev_close_price" => Some(&mut self.prev_close_price),
            _ => None,
        };
        if let Some(slot) = float_slot {
            if let Some(update) = scalar.float_update() {
                *slot = match update {
                    FieldUpdate::Set(volume) if key == "volume" && volume >= NO_VOLUME => {
                        FieldUpdate::Cleared
                    }
                    update => update,
                };
                return;
            }
            self.other.push((key, scalar.into_value()));
            return;
        }
        if key == "lp_time" {
            match scalar.integer_update() {
                Some(update) => self.last_price_time = update,
                None => self.other.push((key, scalar.into_value())),
            }
            return;
        }
        let text_slot = match key.as_ref() {
            "update_mode" => Some(&mut self.update_mode),
            "current_session" => Some(&mut self.current_session),
            "description" => Some(&mut self.description),
            "currency_code" => Some(&mut self.currency_code),
            _ => None,
        };
        match (text_slot, scalar) {
            (Some(slot), Scalar::Text(text)) => *slot = FieldUpdate::Set(text),
            (Some(slot), Scalar::Null) => *slot = FieldUpdate::Cleared,
            (_, scalar) => self.other.push((key, scalar.into_value())),
        }
    }
}

/// The trailing object of `series_completed`.
#[derive(Default)]
struct CompletionInfo<'de> {
    update_period: Option<f64>,
    data_completed: Option<Text<'de>>,
}

impl<'de> Deserialize<'de> for CompletionInfo<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Anything but an object is tolerated and ignored.
        let Scalar::Other(Value::Object(object)) = Scalar::deserialize(deserializer)? else {
            return Ok(CompletionInfo::default());
        };
        Ok(CompletionInfo {
            update_period: object.get("rt_update_period").and_then(Value::as_f64),
            data_completed: object
                .get("data_completed")
                .and_then(Value::as_str)
                .map(|text| Cow::Owned(text.to_owned())),
        })
    }
}

/// `p[1]` of `timescale_update` / `du`: one entry per series or study id.
struct ChartEntriesSeed;

type ChartEntries<'de> = (Vec<SeriesBars<'de>>, Vec<StudyRows<'de>>);

impl<'de> DeserializeSeed<'de> for ChartEntriesSeed {
    type Value = ChartEntries<'de>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChartEntriesSeed {
    type Value = ChartEntries<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object of series and study entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut series = Vec::new();
        let mut studies = Vec::new();
        while let Some(id) = map.next_key::<TextValue<'de>>()? {
            let entry = map.next_value::<ChartEntry<'de>>()?;
            match entry.study_rows {
                Some(rows) => studies.push(StudyRows {
                    study_id: id.0,
                    turnaround: entry.turnaround,
                    rows,
                    graphics: entry.graphics,
                }),
                None => series.push(SeriesBars {
                    series_id: id.0,
                    turnaround: entry.turnaround,
                    bars: entry.bars,
                    bar_close_time: entry.bar_close_time,
                }),
            }
        }
        Ok((series, studies))
    }
}

#[derive(Default)]
struct ChartEntry<'de> {
    bars: Vec<Bar>,
    study_rows: Option<Vec<StudyRow>>,
    turnaround: Option<Text<'de>>,
    bar_close_time: Option<f64>,
    graphics: Option<Text<'de>>,
}

impl<'de> Deserialize<'de> for ChartEntry<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = ChartEntry<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a series or study entry object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entry = ChartEntry::default();
                while let Some(key) = map.next_key::<TextValue<'de>>()? {
                    match key.0.as_ref() {
                        "s" => entry.bars = map.next_value()?,
                        "st" => entry.study_rows = Some(map.next_value()?),
                        "t" => {
                            entry.turnaround = Some(map.next_value::<Scalar<'de>>()?.into_text())
                        }
                        "lbs" => entry.bar_close_time = map.next_value::<LastBarStatus>()?.0,
                        "ns" => entry.graphics = map.next_value::<Graphics<'de>>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(entry)
            }
        }
        deserializer.deserialize_map(EntryVisitor)
    }
}

/// `lbs`: `{"bar_close_time": unix}`; anything else is ignored.
struct LastBarStatus(Option<f64>);

impl<'de> Deserialize<'de> for LastBarStatus {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(LastBarStatus(
            value.get("bar_close_time").and_then(Value::as_f64),
        ))
    }
}

/// `ns`: `{"d": "<graphics JSON>", "indexes": …}`; an empty `d` means no graphics.
struct Graphics<'de>(Option<Text<'de>>);

impl<'de> Deserialize<'de> for Graphics<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GraphicsVisitor;
        impl<'de> Visitor<'de> for GraphicsVisitor {
            type Value = Graphics<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an `ns` object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut graphics = None;
                while let Some(key) = map.next_key::<TextValue<'de>>()? {
                    if key.0 == "d" {
                        graphics = match map.next_value::<Scalar<'de>>()? {
                            Scalar::Text(text) if text.is_empty() => None,
                            Scalar::Null => None,
                            other => Some(other.into_text()),
                        };
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Graphics(graphics))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Graphics(None))
            }
        }
        deserializer.deserialize_any(GraphicsVisitor)
    }
}

/// Reads the `{"i": index, "v": [values…]}` shape shared by bars and study rows.
fn visit_indexed_row<'de, A, V, F>(
    mut map: A,
    what: &str,
    mut read_values: F,
) -> Result<(i64, V), A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(&mut A) -> Result<V, A::Error>,
{
    let mut index = None;
    let mut values = None;
    while let Some(key) = map.next_key::<TextValue<'de>>()? {
        match key.0.as_ref() {
            "i" => {
                let scalar = map.next_value::<Scalar<'de>>()?;
                let Some(value) = scalar.as_i64() else {
                    return Err(de::Error::custom(format_args!(
                        "{what}: `i` is not an integer"
                    )));
                };
                index = Some(value);
            }
            "v" => values = Some(read_values(&mut map)?),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    let index = index.ok_or_else(|| de::Error::custom(format_args!("{what}: missing `i`")))?;
    let values =
        values.ok_or_else(|| de::Error::custom(format_args!("{what} {index}: missing `v`")))?;
    Ok((index, values))
}

impl<'de> Deserialize<'de> for Bar {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BarVisitor;
        impl<'de> Visitor<'de> for BarVisitor {
            type Value = Bar;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(
                    "a bar object {\"i\": index, \"v\": [time, open, high, low, close, volume?]}",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let (index, values) =
                    visit_indexed_row(map, "bar", |map| map.next_value::<BarValues>())?;
                let [time, open, high, low, close] = values.prices;
                Ok(Bar {
                    index,
                    time,
                    open,
                    high,
                    low,
                    close,
                    volume: values.volume,
                })
            }
        }
        deserializer.deserialize_map(BarVisitor)
    }
}

/// `[time, open, high, low, close, volume?]`: 5 or 6 numbers; a null volume means none.
struct BarValues {
    prices: [f64; 5],
    volume: Option<f64>,
}

impl<'de> Deserialize<'de> for BarValues {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;
        impl<'de> Visitor<'de> for ValuesVisitor {
            type Value = BarValues;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("5 or 6 bar values [time, open, high, low, close, volume?]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut prices = [0.0; 5];
                for (position, slot) in prices.iter_mut().enumerate() {
                    *slot = seq
                        .next_element::<f64>()?
                        .ok_or_else(|| de::Error::invalid_length(position, &self))?;
                }
                let volume = seq.next_element::<Option<f64>>()?.flatten();
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("bar has more than 6 values"));
                }
                Ok(BarValues { prices, volume })
            }
        }
        deserializer.deserialize_seq(ValuesVisitor)
    }
}

impl<'de> Deserialize<'de> for StudyRow {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = StudyRow;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a study row {\"i\": index, \"v\": [time, values…]}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let (index, values) = visit_indexed_row(map, "study row", |map| {
                    map.next_value::<Vec<Option<f64>>>()
                })?;
                Ok(StudyRow { index, values })
            }
        }
        deserializer.deserialize_map(RowVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(payload: &str) -> ServerMessage<'_> {
        parse(payload.as_bytes()).unwrap_or_else(|error| panic!("{payload}: {error}"))
    }

    fn err(payload: &str) -> String {
        match parse(payload.as_bytes()) {
            Ok(message) => panic!("{payload} parsed as {message:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn hello_is_an_object_without_m() {
        let hello = ok(
            r#"{"session_id":"<0.4949.2378>_dal-charts-5","timestamp":1730000000,"timestampMs":1730000000123,"release":"registry.xtools.tv/tvbs_release/webchart:release_207-48","studies_metadata_hash":"0123","auth_scheme_vsn":2,"protocol":"json","via":"1.2.3.4:443","javastudies":["3.64"]}"#,
        );
        let ServerMessage::Hello(hello) = hello else {
            panic!("{hello:?}")
        };
        assert_eq!(
            hello.session_id.as_deref(),
            Some("<0.4949.2378>_dal-charts-5")
        );
        assert_eq!(hello.timestamp_ms, Some(1_730_000_000_123));
        assert_eq!(hello.protocol.as_deref(), Some("json"));
        assert_eq!(hello.auth_scheme_vsn, Some(2));
        // Unexpected types leave the field empty instead of failing the hello.
        let ServerMessage::Hello(odd) = ok(r#"{"session_id":5,"protocol":"json"}"#) else {
            panic!()
        };
        assert_eq!(odd.session_id, None);
        assert_eq!(odd.protocol.as_deref(), Some("json"));
    }

    #[test]
    fn qsd_ok_types_well_known_fields_and_keeps_the_rest() {
        let message = ok(
            r#"{"m":"qsd","p":["qs_a",{"n":"NASDAQ:NDX","s":"ok","v":{"volume":1e+100,"update_mode":"delayed_streaming_900","typespecs":["main"],"lp_time":1686427872,"lp":14528.3605,"rch":null,"description":"NASDAQ 100","current_session":"out_of_session","currency_code":"USD","chp":0.3,"ch":43.82,"bid":1,"ask":2.5,"bid_size":3,"ask_size":4,"open_price":5,"high_price":6,"low_price":7,"prev_close_price":8}}]}"#,
        );
        let ServerMessage::QuoteData(quote) = message else {
            panic!("{message:?}")
        };
        assert_eq!(quote.session, "qs_a");
        assert_eq!(quote.symbol, "NASDAQ:NDX");
        let v = &quote.values;
        assert_eq!(v.volume, FieldUpdate::Cleared, "1e100 means no volume");
        assert_eq!(v.last_price, FieldUpdate::Set(14528.3605));
        assert_eq!(v.last_price_time, FieldUpdate::Set(1_686_427_872));
        assert_eq!(v.change, FieldUpdate::Set(43.82));
        assert_eq!(v.change_percent, FieldUpdate::Set(0.3));
        assert_eq!(v.bid, FieldUpdate::Set(1.0));
        assert_eq!(v.ask, FieldUpdate::Set(2.5));
        assert_eq!(v.bid_size, FieldUpdate::Set(3.0));
        assert_eq!(v.ask_size, FieldUpdate::Set(4.0));
        assert_eq!(v.open_price, FieldUpdate::Set(5.0));
        assert_eq!(v.high_price, FieldUpdate::Set(6.0));
        assert_eq!(v.low_price, FieldUpdate::Set(7.0));
        assert_eq!(v.prev_close_price, FieldUpdate::Set(8.0));
        assert_eq!(
            v.update_mode,
            FieldUpdate::Set(Cow::Borrowed("delayed_streaming_900"))
        );
        assert_eq!(
            v.current_session.value().map(|s| s.as_ref()),
            Some("out_of_session")
        );
        assert_eq!(
            v.description.value().map(|s| s.as_ref()),
            Some("NASDAQ 100")
        );
        assert_eq!(v.currency_code.value().map(|s| s.as_ref()), Some("USD"));
        assert_eq!(
            v.other,
            vec![
                (Cow::Borrowed("typespecs"), serde_json::json!(["main"])),
                (Cow::Borrowed("rch"), Value::Null)
            ]
        );
    }

    #[test]
    fn qsd_delta_distinguishes_absent_null_and_set() {
        let ServerMessage::QuoteData(quote) =
            ok(r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"lp":null,"bid":1.5}}]}"#)
        else {
            panic!()
        };
        assert!(quote.values.last_price.is_cleared());
        assert_eq!(quote.values.bid.value(), Some(&1.5));
        assert!(quote.values.ask.is_unchanged());
        assert!(quote.values.other.is_empty());
    }

    #[test]
    fn qsd_well_known_field_of_the_wrong_type_is_kept_in_other() {
        let ServerMessage::QuoteData(quote) = ok(
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"lp":"12.5","lp_time":1.5,"update_mode":7}}]}"#,
        ) else {
            panic!()
        };
        assert!(quote.values.last_price.is_unchanged());
        assert!(quote.values.last_price_time.is_unchanged());
        assert!(quote.values.update_mode.is_unchanged());
        assert_eq!(
            quote.values.other,
            vec![
                (Cow::Borrowed("lp"), serde_json::json!("12.5")),
                (Cow::Borrowed("lp_time"), serde_json::json!(1.5)),
                (Cow::Borrowed("update_mode"), serde_json::json!(7)),
            ]
        );
    }

    #[test]
    fn qsd_error_variant() {
        let message = ok(
            r#"{"m":"qsd","p":["qs_a",{"n":"NASDAQ:NOPE","s":"error","errmsg":"no_such_symbol","v":{}}]}"#,
        );
        assert_eq!(
            message,
            ServerMessage::QuoteError(QuoteError {
                session: "qs_a".into(),
                symbol: "NASDAQ:NOPE".into(),
                message: "no_such_symbol".into()
            })
        );
        assert_eq!(message.method(), "qsd");
        assert_eq!(message.session(), Some("qs_a"));
    }

    #[test]
    fn qsd_key_with_a_json_spec_is_kept_exactly() {
        let payload = r#"{"m":"qsd","p":["qs_a",{"n":"={\"session\":\"regular\",\"symbol\":\"BINANCE:BTCEUR\"}","s":"ok","v":{"lp":1}}]}"#;
        let ServerMessage::QuoteData(quote) = ok(payload) else {
            panic!()
        };
        assert_eq!(
            quote.symbol,
            r#"={"session":"regular","symbol":"BINANCE:BTCEUR"}"#
        );
    }

    #[test]
    fn qsd_without_n_is_an_error() {
        assert!(err(r#"{"m":"qsd","p":["qs_a",{"s":"ok","v":{}}]}"#).contains("missing `n`"));
        assert!(err(r#"{"m":"qsd","p":["qs_a"]}"#).contains("qsd: missing quote object"));
    }

    #[test]
    fn quote_completed_and_strings_with_escapes() {
        let message = ok(r#"{"m":"quote_completed","p":["qs_a","A\u00e9"]}"#);
        let ServerMessage::QuoteCompleted { session, symbol } = message else {
            panic!()
        };
        assert!(
            matches!(session, Cow::Borrowed("qs_a")),
            "strings without escapes are borrowed"
        );
        assert!(matches!(&symbol, Cow::Owned(text) if text == "Aé"));
    }

    #[test]
    fn params_before_method_still_parse() {
        let message = ok(r#"{"p":["qs_a","X"],"m":"quote_completed"}"#);
        assert_eq!(
            message,
            ServerMessage::QuoteCompleted {
                session: "qs_a".into(),
                symbol: "X".into()
            }
        );
    }

    #[test]
    fn symbol_resolved_keeps_typed_and_raw_info() {
        let message = ok(
            r#"{"m":"symbol_resolved","p":["cs_a","sds_sym_1",{"name":"BTCUSDT","pro_name":"BINANCE:BTCUSDT","description":"Bitcoin","type":"crypto","pricescale":100,"minmov":1,"timezone":"Etc/UTC","session":"24x7","currency_code":"USDT","delay":0,"subsessions":[]}],"t":1,"t_ms":2}"#,
        );
        let ServerMessage::SymbolResolved(resolved) = message else {
            panic!()
        };
        assert_eq!(resolved.symbol_id, "sds_sym_1");
        assert_eq!(resolved.info.pro_name.as_deref(), Some("BINANCE:BTCUSDT"));
        assert_eq!(resolved.info.kind.as_deref(), Some("crypto"));
        assert_eq!(resolved.info.pricescale, Some(100.0));
        assert!(
            resolved
                .raw_info
                .unwrap()
                .get()
                .contains("\"subsessions\":[]")
        );
    }

    #[test]
    fn symbol_and_series_errors() {
        assert_eq!(
            ok(r#"{"m":"symbol_error","p":["cs_a","sds_sym_1","invalid symbol"],"t":1,"t_ms":2}"#),
            ServerMessage::SymbolError {
                session: "cs_a".into(),
                symbol_id: "sds_sym_1".into(),
                reason: "invalid symbol".into()
            }
        );
        assert_eq!(
            ok(r#"{"m":"series_error","p":["cs_a","sds_1","s1","seconds_not_entitled"]}"#),
            ServerMessage::SeriesError {
                session: "cs_a".into(),
                series_id: "sds_1".into(),
                turnaround: Some("s1".into()),
                reason: "seconds_not_entitled".into()
            }
        );
    }

    #[test]
    fn series_lifecycle_messages() {
        assert_eq!(
            ok(r#"{"m":"series_loading","p":["cs_a","sds_1","s1"],"t":1,"t_ms":2}"#),
            ServerMessage::SeriesLoading {
                session: "cs_a".into(),
                series_id: "sds_1".into(),
                turnaround: Some("s1".into())
            }
        );
        assert_eq!(
            ok(
                r#"{"m":"series_timeframe","p":["cs_a","sds_5","s1",2242,2636,"LASTSESSION",true]}"#
            ),
            ServerMessage::SeriesTimeframe(SeriesTimeframe {
                session: "cs_a".into(),
                series_id: "sds_5".into(),
                turnaround: Some("s1".into()),
                first_index: Some(2242),
                last_index: Some(2636),
                range: Some("LASTSESSION".into()),
                flag: Some(true),
            })
        );
        assert_eq!(
            ok(
                r#"{"m":"series_completed","p":["cs_a","sds_1","delayed_streaming_900","s1",{"rt_update_period":5,"data_completed":"limit"}]}"#
            ),
            ServerMessage::SeriesCompleted(SeriesCompleted {
                session: "cs_a".into(),
                series_id: "sds_1".into(),
                status: "delayed_streaming_900".into(),
                turnaround: Some("s1".into()),
                update_period: Some(5.0),
                data_completed: Some("limit".into()),
            })
        );
        // Older servers send fewer parameters; extra parameters are ignored.
        let ServerMessage::SeriesCompleted(short) =
            ok(r#"{"m":"series_completed","p":["cs_a","sds_1","streaming"]}"#)
        else {
            panic!()
        };
        assert_eq!((short.turnaround, short.update_period), (None, None));
        assert!(matches!(
            ok(r#"{"m":"series_loading","p":["cs_a","sds_1","s1","new",{}]}"#),
            ServerMessage::SeriesLoading { .. }
        ));
    }

    #[test]
    fn timescale_update_bars_with_and_without_volume() {
        let message = ok(
            r#"{"m":"timescale_update","p":["cs_a",{"sds_1":{"node":"n1","s":[{"i":0,"v":[1685633880.0,33019.3,33025.31,33018.84,33021.84,638315.0]},{"i":1,"v":[1685633940.0,1,2,0.5,1.5]}],"ns":{"d":"","indexes":[]},"t":"s1","lbs":{"bar_close_time":1685634000}}},{"index":1,"zoffset":0,"changes":[],"marks":[],"index_diff":[]}],"t":1,"t_ms":2}"#,
        );
        let ServerMessage::TimescaleUpdate(update) = message else {
            panic!()
        };
        assert_eq!(update.session, "cs_a");
        assert!(update.studies.is_empty());
        let [series] = update.series.as_slice() else {
            panic!("{update:?}")
        };
        assert_eq!(series.series_id, "sds_1");
        assert_eq!(series.turnaround.as_deref(), Some("s1"));
        assert_eq!(series.bar_close_time, Some(1_685_634_000.0));
        assert_eq!(
            series.bars,
            vec![
                Bar {
                    index: 0,
                    time: 1_685_633_880.0,
                    open: 33019.3,
                    high: 33025.31,
                    low: 33018.84,
                    close: 33021.84,
                    volume: Some(638_315.0)
                },
                Bar {
                    index: 1,
                    time: 1_685_633_940.0,
                    open: 1.0,
                    high: 2.0,
                    low: 0.5,
                    close: 1.5,
                    volume: None
                },
            ]
        );
        assert!(update.timescale.unwrap().get().starts_with("{\"index\":1"));
    }

    #[test]
    fn du_keeps_study_rows_apart_from_bars() {
        let message = ok(
            r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":9,"v":[1700000000.0,1,2,0.5,1.5,10]}],"ns":{"d":"","indexes":"nochange"},"t":"s1"},"st1":{"node":"x","st":[{"i":9,"v":[1700000000.0,1.25,null]}],"ns":{"d":"{\"graphicsCmds\":{}}","indexes":"nochange"},"t":"s1_st1"}}]}"#,
        );
        let ServerMessage::DataUpdate(update) = message else {
            panic!()
        };
        assert_eq!(update.series.len(), 1);
        assert_eq!(update.series[0].bars[0].volume, Some(10.0));
        let [study] = update.studies.as_slice() else {
            panic!()
        };
        assert_eq!(study.study_id, "st1");
        assert_eq!(
            study.rows,
            vec![StudyRow {
                index: 9,
                values: vec![Some(1_700_000_000.0), Some(1.25), None]
            }]
        );
        assert_eq!(study.graphics.as_deref(), Some("{\"graphicsCmds\":{}}"));
        // A pure time-scale change: an empty series map.
        let ServerMessage::TimescaleUpdate(empty) =
            ok(r#"{"m":"timescale_update","p":["cs_a",{},{"index":3}]}"#)
        else {
            panic!()
        };
        assert!(empty.series.is_empty() && empty.studies.is_empty());
    }

    #[test]
    fn malformed_bars_are_errors_naming_the_problem() {
        let too_few = err(r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":0,"v":[1,2,3,4]}]}}]}"#);
        assert!(too_few.contains("5 or 6 bar values"), "{too_few}");
        let too_many =
            err(r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":0,"v":[1,2,3,4,5,6,7]}]}}]}"#);
        assert!(too_many.contains("more than 6"), "{too_many}");
        let not_number =
            err(r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":0,"v":[1,"2",3,4,5]}]}}]}"#);
        assert!(not_number.contains("invalid type"), "{not_number}");
        let no_index = err(r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"v":[1,2,3,4,5]}]}}]}"#);
        assert!(no_index.contains("missing `i`"), "{no_index}");
        let fractional_index =
            err(r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":0.5,"v":[1,2,3,4,5]}]}}]}"#);
        assert!(
            fractional_index.contains("not an integer"),
            "{fractional_index}"
        );
        // A null volume is read as "no volume".
        let ServerMessage::DataUpdate(update) =
            ok(r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":0,"v":[1,2,3,4,5,null]}]}}]}"#)
        else {
            panic!()
        };
        assert_eq!(update.series[0].bars[0].volume, None);
    }

    #[test]
    fn study_messages() {
        assert_eq!(
            ok(r#"{"m":"study_completed","p":["cs_a","st2","s1_st1"],"t":1,"t_ms":2}"#),
            ServerMessage::StudyCompleted {
                session: "cs_a".into(),
                study_id: "st2".into(),
                turnaround: Some("s1_st1".into())
            }
        );
        assert_eq!(
            ok(r#"{"m":"study_loading","p":["cs_a","st2","s1_st1"]}"#).method(),
            "study_loading"
        );
        assert_eq!(
            ok(
                r#"{"m":"study_error","p":["cs_a","st2","s1_st1","The maximum number of studies per chart has been reached",{"x":1}]}"#
            ),
            ServerMessage::StudyError {
                session: "cs_a".into(),
                study_id: "st2".into(),
                turnaround: Some("s1_st1".into()),
                reason: "The maximum number of studies per chart has been reached".into(),
                details: vec![serde_json::json!({"x": 1})],
            }
        );
    }

    #[test]
    fn critical_and_protocol_errors_keep_their_text() {
        assert_eq!(
            ok(
                r#"{"m":"critical_error","p":["cs_a","invalid parameters","method: create_series. args: \"[sds_1, s1, sds_sym_1, 1h, 300, ]\""]}"#
            ),
            ServerMessage::CriticalError {
                session: "cs_a".into(),
                name: "invalid parameters".into(),
                detail: Some(
                    "method: create_series. args: \"[sds_1, s1, sds_sym_1, 1h, 300, ]\"".into()
                ),
            }
        );
        assert_eq!(
            ok(r#"{"m":"protocol_error","p":["bad auth token"]}"#),
            ServerMessage::ProtocolError {
                text: "bad auth token".into()
            }
        );
        // A non-string error is rendered, never lost.
        assert_eq!(
            ok(r#"{"m":"protocol_error","p":[{"unknown_session_id":"cs_a"}]}"#),
            ServerMessage::ProtocolError {
                text: r#"{"unknown_session_id":"cs_a"}"#.into()
            }
        );
    }

    #[test]
    fn unknown_methods_keep_method_and_raw_params() {
        let message = ok(r#"{"m":"replay_point","p":["rs_a",1700000000]}"#);
        let ServerMessage::Unknown { method, params } = &message else {
            panic!()
        };
        assert_eq!(method, "replay_point");
        assert_eq!(params.unwrap().get(), r#"["rs_a",1700000000]"#);
        assert_eq!(message.method(), "replay_point");
        assert_eq!(message.session(), None);
        assert_eq!(
            ok(r#"{"m":"mystery"}"#),
            ServerMessage::Unknown {
                method: "mystery".into(),
                params: None
            }
        );
    }

    #[test]
    fn malformed_payloads_are_typed_errors() {
        assert!(matches!(parse(b""), Err(ParseError::Empty)));
        for payload in [
            "not json",
            "[1,2]",
            "42",
            "{\"m\":\"qsd\",\"p\":[",
            "{\"m\":5,\"p\":[]}",
            "{\"m\":\"du\",\"p\":{}}",
            "{\"m\":\"du\"}",
            "{\"m\":\"qsd\",\"m\":\"du\",\"p\":[]}",
            "{} trailing",
            "{\"m\":\"quote_completed\",\"p\":[\"qs\"]}",
        ] {
            assert!(
                matches!(parse(payload.as_bytes()), Err(ParseError::Malformed(_))),
                "{payload}"
            );
        }
        assert!(err("{\"m\":\"du\"}").contains("du: missing field `p`"));
        assert!(
            err("{\"m\":\"quote_completed\",\"p\":[\"qs\"]}")
                .contains("quote_completed: missing symbol")
        );
    }

    #[test]
    fn invalid_utf8_in_a_string_is_an_error() {
        let mut payload = br#"{"m":"qsd","p":["qs_a",{"n":""#.to_vec();
        payload.extend_from_slice(&[0xff, 0xfe]);
        payload.extend_from_slice(br#"","s":"ok","v":{}}]}"#);
        assert!(matches!(parse(&payload), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn fast_path_takes_compact_ok_qsd_only() {
        assert!(fast_qsd::parse(r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"lp":1.5,"lp_time":17,"x":true}}]}"#).is_some());
        assert!(fast_qsd::parse(r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{}}]}"#).is_some());
        for slow in [
            r#"{"m":"qsd", "p":["qs_a",{"n":"X","s":"ok","v":{}}]}"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X\"","s":"ok","v":{}}]}"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"error","errmsg":"no_such_symbol","v":{}}]}"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"a":[1]}}]}"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"a":01}}]}"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"a":1.}}]}"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"a":1e999}}]}"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"a":12345678901234567890}}]}"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{}}]}x"#,
            r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{}},1]}"#,
        ] {
            assert!(fast_qsd::parse(slow).is_none(), "{slow}");
        }
    }

    #[test]
    fn fast_path_strings_end_at_the_first_quote_backslash_or_control_character() {
        for length in 0..24 {
            for special in [b'"', b'\\', b'\n', 0x00, 0x1f] {
                let mut text = vec![b'a'; length];
                text.push(special);
                text.extend_from_slice(b"b\"c");
                assert_eq!(fast_qsd::string_length(&text), Some(length), "{text:?}");
            }
            // Bytes at or past 0x20 are text, non-ASCII included.
            let text: Vec<u8> = "é~ \u{7f}€".bytes().cycle().take(length).collect();
            assert_eq!(fast_qsd::string_length(&text), None, "{text:?}");
        }
    }

    #[test]
    fn fast_path_numbers_match_std() {
        for text in [
            "0.1",
            "-0.0",
            "9007199254740992.5",
            "9007199254740993.0",
            "1.7976931348623157e308",
            "5e-324",
            "1e22",
            "1e23",
            "123456789012345678.9",
            "0.000000000000000000001",
            "1.0e-22",
            "4.9406564584124654e-324",
            "2.2250738585072011e-308",
        ] {
            let payload =
                format!(r#"{{"m":"qsd","p":["qs_a",{{"n":"X","s":"ok","v":{{"lp":{text}}}}}]}}"#);
            let Some(ServerMessage::QuoteData(quote)) = fast_qsd::parse(&payload) else {
                panic!("{text}")
            };
            let expected: f64 = text.parse().unwrap();
            let value = *quote.values.last_price.value().unwrap();
            assert_eq!(value.to_bits(), expected.to_bits(), "{text}");
        }
    }

    /// Builds a qsd payload from generated parts, sometimes in shapes the fast path refuses.
    fn qsd_payload() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("lp".to_owned()),
            Just("lp_time".to_owned()),
            Just("volume".to_owned()),
            Just("bid".to_owned()),
            Just("ask_size".to_owned()),
            Just("update_mode".to_owned()),
            Just("description".to_owned()),
            "[a-z_]{1,8}",
        ];
        let number = prop_oneof![
            any::<f64>()
                .prop_filter("finite", |value| value.is_finite())
                .prop_map(|value| format!("{value:?}")),
            any::<i64>().prop_map(|value| value.to_string()),
            any::<u64>().prop_map(|value| value.to_string()),
            (any::<i32>(), -400i32..400)
                .prop_map(|(mantissa, exponent)| format!("{mantissa}e{exponent}")),
            (0u32..1000, 0u32..1000)
                .prop_map(|(whole, fraction)| format!("-{whole}.{fraction:03}E+2")),
            Just("1e+100".to_owned()),
            Just("-0".to_owned()),
            Just("01".to_owned()),
            // Short decimals as prices are sent: mostly exact digits and powers of ten, the
            // fast path's own arithmetic, and sometimes just past what is exact.
            (
                0u64..100_000_000_000_000_000,
                0usize..18,
                -25i32..25,
                any::<bool>()
            )
                .prop_map(|(digits, point, exponent, with_exponent)| {
                    let digits = digits.to_string();
                    let point = point.min(digits.len().saturating_sub(1)).max(1);
                    let (whole, fraction) = digits.split_at(point.min(digits.len()));
                    let fraction = if fraction.is_empty() { "0" } else { fraction };
                    if with_exponent {
                        format!("{whole}.{fraction}e{exponent}")
                    } else {
                        format!("{whole}.{fraction}")
                    }
                }),
        ];
        let value = prop_oneof![
            4 => number,
            1 => Just("null".to_owned()),
            1 => Just("true".to_owned()),
            1 => "[a-zA-Z0-9 :é]{0,10}".prop_map(|text| format!("\"{text}\"")),
            1 => Just("\"a\\u00e9\"".to_owned()),
            1 => Just("[1,{\"x\":null}]".to_owned()),
        ];
        let fields = proptest::collection::vec((key, value), 0..8);
        (fields, "[A-Z:]{1,12}", any::<bool>()).prop_map(|(fields, symbol, spaced)| {
            let body: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("\"{key}\":{value}"))
                .collect();
            let separator = if spaced { ", " } else { "," };
            format!(
                r#"{{"m":"qsd","p":["qs_a",{{"n":"{symbol}","s":"ok","v":{{{}}}}}]}}"#,
                body.join(separator)
            )
        })
    }

    #[test]
    fn differential_generator_exercises_both_paths() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = qsd_payload();
        let fast = (0..500)
            .filter(|_| {
                let payload = strategy.new_tree(&mut runner).unwrap().current();
                fast_qsd::parse(&payload).is_some()
            })
            .count();
        assert!(
            (100..450).contains(&fast),
            "{fast} of 500 took the fast path"
        );
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_the_serde_path(payload in qsd_payload()) {
            let general = parse_general(&payload);
            if let Some(fast) = fast_qsd::parse(&payload) {
                prop_assert_eq!(Some(fast), general.ok(), "{}", payload);
            }
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutated_messages(
            index in 0usize..6,
            cut in 0usize..400,
            byte in any::<u8>(),
        ) {
            let samples = [
                r#"{"m":"qsd","p":["qs_a",{"n":"X","s":"ok","v":{"lp":1.5,"volume":1e100}}]}"#,
                r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":9,"v":[1700000000.0,1,2,0.5,1.5,10]}],"t":"s1"}}]}"#,
                r#"{"m":"series_completed","p":["cs_a","sds_1","streaming","s1",{"rt_update_period":5}]}"#,
                r#"{"m":"symbol_resolved","p":["cs_a","sds_sym_1",{"name":"X","pricescale":100}]}"#,
                r#"{"m":"critical_error","p":["cs_a","invalid parameters","detail"]}"#,
                r#"{"session_id":"x","timestamp":1,"protocol":"json"}"#,
            ];
            let mut bytes = samples[index].as_bytes().to_vec();
            let position = cut % bytes.len();
            bytes[position] = byte;
            let _ = parse(&bytes);
            let _ = parse(&bytes[..position]);
        }
    }
}

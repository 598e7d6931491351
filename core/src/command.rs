//! Client commands: what a streaming client sends to the server.
//!
//! Each command has a constructor named after its wire method and encodes to the exact
//! compact JSON the real clients send, e.g. `{"m":"quote_add_symbols","p":["qs_x","NASDAQ:AAPL"]}`.
//! [`Command::to_frame`] adds the `~m~<len>~m~` framing.
//!
//! ```
//! use tickwire_core::command::Command;
//!
//! let command = Command::quote_add_symbols("qs_abc", ["BINANCE:BTCUSDT"]);
//! assert_eq!(command.to_json(), r#"{"m":"quote_add_symbols","p":["qs_abc","BINANCE:BTCUSDT"]}"#);
//! assert_eq!(command.to_frame(), r#"~m~58~m~{"m":"quote_add_symbols","p":["qs_abc","BINANCE:BTCUSDT"]}"#);
//! ```

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::codec;
use crate::json;

/// Price adjustment of a resolved symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Adjustment {
    /// Adjusted for splits (the default of every client).
    Splits,
    /// Adjusted for splits and dividends.
    Dividends,
}

impl Adjustment {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Adjustment::Splits => "splits",
            Adjustment::Dividends => "dividends",
        }
    }
}

/// Trading session of a resolved symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TradingSession {
    /// Regular trading hours.
    Regular,
    /// Including pre- and post-market.
    Extended,
}

impl TradingSession {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TradingSession::Regular => "regular",
            TradingSession::Extended => "extended",
        }
    }
}

/// The `=`+JSON symbol specification of `resolve_symbol` (and usable as a quote key).
///
/// Keys are written in alphabetical order, as the official web client writes them.
///
/// ```
/// use tickwire_core::command::{Adjustment, SymbolSpec, TradingSession};
///
/// let spec = SymbolSpec::new("AMEX:SPY")
///     .adjustment(Adjustment::Splits)
///     .currency("USD")
///     .session(TradingSession::Extended);
/// assert_eq!(
///     spec.encode(),
///     r#"={"adjustment":"splits","currency-id":"USD","session":"extended","symbol":"AMEX:SPY"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SymbolSpec {
    symbol: String,
    adjustment: Option<Adjustment>,
    currency_id: Option<String>,
    session: Option<TradingSession>,
}

impl SymbolSpec {
    /// A spec for `symbol` (`EXCHANGE:TICKER`) with no options.
    pub fn new(symbol: impl Into<String>) -> Self {
        SymbolSpec {
            symbol: symbol.into(),
            adjustment: None,
            currency_id: None,
            session: None,
        }
    }

    /// Sets the price adjustment.
    pub fn adjustment(mut self, adjustment: Adjustment) -> Self {
        self.adjustment = Some(adjustment);
        self
    }

    /// Converts prices to `currency` (e.g. `USD`).
    pub fn currency(mut self, currency: impl Into<String>) -> Self {
        self.currency_id = Some(currency.into());
        self
    }

    /// Sets the trading session.
    pub fn session(mut self, session: TradingSession) -> Self {
        self.session = Some(session);
        self
    }

    /// The symbol this spec names.
    pub fn symbol(&self) -> &str {
        &self.symbol
    }

    /// `=` followed by the compact ASCII JSON object.
    pub fn encode(&self) -> String {
        let mut out = b"=".to_vec();
        // Serialising strings and options into a Vec cannot fail.
        let _ = json::write_ascii(&SpecJson(self), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

struct SpecJson<'a>(&'a SymbolSpec);

impl Serialize for SpecJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let spec = self.0;
        let mut object = serializer.serialize_struct("SymbolSpec", 4)?;
        if let Some(adjustment) = spec.adjustment {
            object.serialize_field("adjustment", adjustment.as_str())?;
        }
        if let Some(currency) = &spec.currency_id {
            object.serialize_field("currency-id", currency)?;
        }
        if let Some(session) = spec.session {
            object.serialize_field("session", session.as_str())?;
        }
        object.serialize_field("symbol", &spec.symbol)?;
        object.end()
    }
}

/// A command to the server. Build one with the constructor named after its method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `set_auth_token [token]`.
    SetAuthToken {
        /// A JWT, or `unauthorized_user_token` for anonymous access.
        token: String,
    },
    /// `set_locale [language, country]`.
    SetLocale {
        /// e.g. `en`.
        language: String,
        /// e.g. `US`.
        country: String,
    },
    /// `chart_create_session [cs, ""]`.
    ChartCreateSession {
        /// Chart session id, conventionally `cs_` + 12 characters.
        session: String,
    },
    /// `chart_delete_session [cs]`.
    ChartDeleteSession {
        /// Chart session id.
        session: String,
    },
    /// `quote_create_session [qs]`.
    QuoteCreateSession {
        /// Quote session id, conventionally `qs_` + 12 characters.
        session: String,
    },
    /// `quote_delete_session [qs]`.
    QuoteDeleteSession {
        /// Quote session id.
        session: String,
    },
    /// `quote_set_fields [qs, field...]`.
    QuoteSetFields {
        /// Quote session id.
        session: String,
        /// Field names such as `lp`, `ch`, `volume`.
        fields: Vec<String>,
    },
    /// `quote_add_symbols [qs, symbol...]`.
    QuoteAddSymbols {
        /// Quote session id.
        session: String,
        /// `EXCH:TICKER` or `=`+JSON specs; the server echoes each key verbatim.
        symbols: Vec<String>,
    },
    /// `quote_remove_symbols [qs, symbol...]`.
    QuoteRemoveSymbols {
        /// Quote session id.
        session: String,
        /// Keys as they were added.
        symbols: Vec<String>,
    },
    /// `quote_fast_symbols [qs, symbol...]`.
    QuoteFastSymbols {
        /// Quote session id.
        session: String,
        /// Keys as they were added.
        symbols: Vec<String>,
    },
    /// `resolve_symbol [cs, symbol_id, "="+JSON]`.
    ResolveSymbol {
        /// Chart session id.
        session: String,
        /// Client-chosen id, e.g. `sds_sym_1`.
        symbol_id: String,
        /// What to resolve.
        spec: SymbolSpec,
    },
    /// `create_series [cs, series_id, turnaround, symbol_id, timeframe, count(, range)]`.
    CreateSeries {
        /// Chart session id.
        session: String,
        /// Client-chosen id, e.g. `sds_1`.
        series_id: String,
        /// Client-chosen turnaround tag echoed by the server, e.g. `s1`.
        turnaround: String,
        /// Id given to `resolve_symbol`.
        symbol_id: String,
        /// e.g. `1`, `60`, `1D`, `1W`.
        timeframe: String,
        /// How many bars of history to load.
        count: u32,
        /// Optional 7th parameter, e.g. `""` or `"r,<from>:<to>"`.
        range: Option<String>,
    },
    /// `modify_series [cs, series_id, turnaround, symbol_id, timeframe, ""]`.
    ModifySeries {
        /// Chart session id.
        session: String,
        /// The series to change.
        series_id: String,
        /// New turnaround tag.
        turnaround: String,
        /// Id given to `resolve_symbol`.
        symbol_id: String,
        /// New timeframe.
        timeframe: String,
    },
    /// `remove_series [cs, series_id]`.
    RemoveSeries {
        /// Chart session id.
        session: String,
        /// The series to remove.
        series_id: String,
    },
    /// `request_more_data [cs, series_id, count]`: older bars.
    RequestMoreData {
        /// Chart session id.
        session: String,
        /// The series to extend.
        series_id: String,
        /// How many more bars.
        count: u32,
    },
    /// `switch_timezone [cs, timezone]`.
    SwitchTimezone {
        /// Chart session id.
        session: String,
        /// `exchange`, `Etc/UTC` or an IANA name.
        timezone: String,
    },
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

impl Command {
    /// `set_auth_token`; use `"unauthorized_user_token"` for anonymous access.
    pub fn set_auth_token(token: impl Into<String>) -> Self {
        Command::SetAuthToken {
            token: token.into(),
        }
    }

    /// `set_locale`, e.g. `("en", "US")`.
    pub fn set_locale(language: impl Into<String>, country: impl Into<String>) -> Self {
        Command::SetLocale {
            language: language.into(),
            country: country.into(),
        }
    }

    /// `chart_create_session`.
    pub fn chart_create_session(session: impl Into<String>) -> Self {
        Command::ChartCreateSession {
            session: session.into(),
        }
    }

    /// `chart_delete_session`.
    pub fn chart_delete_session(session: impl Into<String>) -> Self {
        Command::ChartDeleteSession {
            session: session.into(),
        }
    }

    /// `quote_create_session`.
    pub fn quote_create_session(session: impl Into<String>) -> Self {
        Command::QuoteCreateSession {
            session: session.into(),
        }
    }

    /// `quote_delete_session`.
    pub fn quote_delete_session(session: impl Into<String>) -> Self {
        Command::QuoteDeleteSession {
            session: session.into(),
        }
    }

    /// `quote_set_fields`.
    pub fn quote_set_fields<I, S>(session: impl Into<String>, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::QuoteSetFields {
            session: session.into(),
            fields: strings(fields),
        }
    }

    /// `quote_add_symbols`.
    pub fn quote_add_symbols<I, S>(session: impl Into<String>, symbols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::QuoteAddSymbols {
            session: session.into(),
            symbols: strings(symbols),
        }
    }

    /// `quote_remove_symbols`.
    pub fn quote_remove_symbols<I, S>(session: impl Into<String>, symbols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::QuoteRemoveSymbols {
            session: session.into(),
            symbols: strings(symbols),
        }
    }

    /// `quote_fast_symbols`.
    pub fn quote_fast_symbols<I, S>(session: impl Into<String>, symbols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::QuoteFastSymbols {
            session: session.into(),
            symbols: strings(symbols),
        }
    }

    /// `resolve_symbol`.
    pub fn resolve_symbol(
        session: impl Into<String>,
        symbol_id: impl Into<String>,
        spec: SymbolSpec,
    ) -> Self {
        Command::ResolveSymbol {
            session: session.into(),
            symbol_id: symbol_id.into(),
            spec,
        }
    }

    /// `create_series` with six parameters; add a range with [`Command::with_range`].
    pub fn create_series(
        session: impl Into<String>,
        series_id: impl Into<String>,
        turnaround: impl Into<String>,
        symbol_id: impl Into<String>,
        timeframe: impl Into<String>,
        count: u32,
    ) -> Self {
        Command::CreateSeries {
            session: session.into(),
            series_id: series_id.into(),
            turnaround: turnaround.into(),
            symbol_id: symbol_id.into(),
            timeframe: timeframe.into(),
            count,
            range: None,
        }
    }

    /// Adds the optional 7th `create_series` parameter (`""`, `"r,<from>:<to>"`, `"12M"`...).
    /// Other commands are returned unchanged.
    pub fn with_range(self, new_range: impl Into<String>) -> Self {
        match self {
            Command::CreateSeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                timeframe,
                count,
                ..
            } => Command::CreateSeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                timeframe,
                count,
                range: Some(new_range.into()),
            },
            other => other,
        }
    }

    /// `modify_series`.
    pub fn modify_series(
        session: impl Into<String>,
        series_id: impl Into<String>,
        turnaround: impl Into<String>,
        symbol_id: impl Into<String>,
        timeframe: impl Into<String>,
    ) -> Self {
        Command::ModifySeries {
            session: session.into(),
            series_id: series_id.into(),
            turnaround: turnaround.into(),
            symbol_id: symbol_id.into(),
            timeframe: timeframe.into(),
        }
    }

    /// `remove_series`.
    pub fn remove_series(session: impl Into<String>, series_id: impl Into<String>) -> Self {
        Command::RemoveSeries {
            session: session.into(),
            series_id: series_id.into(),
        }
    }

    /// `request_more_data`.
    pub fn request_more_data(
        session: impl Into<String>,
        series_id: impl Into<String>,
        count: u32,
    ) -> Self {
        Command::RequestMoreData {
            session: session.into(),
            series_id: series_id.into(),
            count,
        }
    }

    /// `switch_timezone`.
    pub fn switch_timezone(session: impl Into<String>, timezone: impl Into<String>) -> Self {
        Command::SwitchTimezone {
            session: session.into(),
            timezone: timezone.into(),
        }
    }

    /// The wire method name.
    pub fn method(&self) -> &'static str {
        match self {
            Command::SetAuthToken { .. } => "set_auth_token",
            Command::SetLocale { .. } => "set_locale",
            Command::ChartCreateSession { .. } => "chart_create_session",
            Command::ChartDeleteSession { .. } => "chart_delete_session",
            Command::QuoteCreateSession { .. } => "quote_create_session",
            Command::QuoteDeleteSession { .. } => "quote_delete_session",
            Command::QuoteSetFields { .. } => "quote_set_fields",
            Command::QuoteAddSymbols { .. } => "quote_add_symbols",
            Command::QuoteRemoveSymbols { .. } => "quote_remove_symbols",
            Command::QuoteFastSymbols { .. } => "quote_fast_symbols",
            Command::ResolveSymbol { .. } => "resolve_symbol",
            Command::CreateSeries { .. } => "create_series",
            Command::ModifySeries { .. } => "modify_series",
            Command::RemoveSeries { .. } => "remove_series",
            Command::RequestMoreData { .. } => "request_more_data",
            Command::SwitchTimezone { .. } => "switch_timezone",
        }
    }

    /// The compact, ASCII-only JSON payload `{"m":…,"p":[…]}`.
    pub fn to_json(&self) -> String {
        // Only strings and integers are serialised: this cannot fail.
        json::to_ascii_string(self).unwrap_or_default()
    }

    /// The payload framed as one packet, ready to send as a WebSocket text message.
    pub fn to_frame(&self) -> String {
        codec::frame(&self.to_json())
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut envelope = serializer.serialize_struct("Command", 2)?;
        envelope.serialize_field("m", self.method())?;
        envelope.serialize_field("p", &Params(self))?;
        envelope.end()
    }
}

/// The `p` array of a command.
struct Params<'a>(&'a Command);

/// One element of a `p` array.
enum Param<'a> {
    Text(&'a str),
    Owned(String),
    Number(u32),
    List(&'a [String]),
}

impl Serialize for Params<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use Param::{List, Number, Owned, Text};
        let params: Vec<Param<'_>> = match self.0 {
            Command::SetAuthToken { token } => vec![Text(token)],
            Command::SetLocale { language, country } => vec![Text(language), Text(country)],
            Command::ChartCreateSession { session } => vec![Text(session), Text("")],
            Command::ChartDeleteSession { session }
            | Command::QuoteCreateSession { session }
            | Command::QuoteDeleteSession { session } => vec![Text(session)],
            Command::QuoteSetFields {
                session,
                fields: items,
            }
            | Command::QuoteAddSymbols {
                session,
                symbols: items,
            }
            | Command::QuoteRemoveSymbols {
                session,
                symbols: items,
            }
            | Command::QuoteFastSymbols {
                session,
                symbols: items,
            } => vec![Text(session), List(items)],
            Command::ResolveSymbol {
                session,
                symbol_id,
                spec,
            } => {
                vec![Text(session), Text(symbol_id), Owned(spec.encode())]
            }
            Command::CreateSeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                timeframe,
                count,
                range,
            } => {
                let mut params = vec![
                    Text(session),
                    Text(series_id),
                    Text(turnaround),
                    Text(symbol_id),
                    Text(timeframe),
                    Number(*count),
                ];
                if let Some(range) = range {
                    params.push(Text(range));
                }
                params
            }
            Command::ModifySeries {
                session,
                series_id,
                turnaround,
                symbol_id,
                timeframe,
            } => {
                vec![
                    Text(session),
                    Text(series_id),
                    Text(turnaround),
                    Text(symbol_id),
                    Text(timeframe),
                    Text(""),
                ]
            }
            Command::RemoveSeries { session, series_id } => vec![Text(session), Text(series_id)],
            Command::RequestMoreData {
                session,
                series_id,
                count,
            } => {
                vec![Text(session), Text(series_id), Number(*count)]
            }
            Command::SwitchTimezone { session, timezone } => vec![Text(session), Text(timezone)],
        };
        let mut seq = serializer.serialize_seq(None)?;
        for param in &params {
            match param {
                Text(text) => seq.serialize_element(text)?,
                Owned(text) => seq.serialize_element(text)?,
                Number(number) => seq.serialize_element(number)?,
                List(items) => {
                    for item in items.iter() {
                        seq.serialize_element(item)?;
                    }
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn wire(command: Command, expected: &str) {
        assert_eq!(command.to_json(), expected);
        assert_eq!(
            command.to_frame(),
            format!("~m~{}~m~{expected}", expected.len())
        );
    }

    #[test]
    fn session_setup_commands() {
        wire(
            Command::set_auth_token("unauthorized_user_token"),
            r#"{"m":"set_auth_token","p":["unauthorized_user_token"]}"#,
        );
        wire(
            Command::set_locale("en", "US"),
            r#"{"m":"set_locale","p":["en","US"]}"#,
        );
        wire(
            Command::chart_create_session("cs_abc"),
            r#"{"m":"chart_create_session","p":["cs_abc",""]}"#,
        );
        wire(
            Command::chart_delete_session("cs_abc"),
            r#"{"m":"chart_delete_session","p":["cs_abc"]}"#,
        );
        wire(
            Command::quote_create_session("qs_abc"),
            r#"{"m":"quote_create_session","p":["qs_abc"]}"#,
        );
        wire(
            Command::quote_delete_session("qs_abc"),
            r#"{"m":"quote_delete_session","p":["qs_abc"]}"#,
        );
        wire(
            Command::quote_set_fields("qs_abc", ["lp", "ch", "chp"]),
            r#"{"m":"quote_set_fields","p":["qs_abc","lp","ch","chp"]}"#,
        );
    }

    #[test]
    fn quote_symbol_commands_keep_spec_keys_verbatim() {
        let spec = SymbolSpec::new("BINANCE:BTCEUR")
            .session(TradingSession::Regular)
            .encode();
        assert_eq!(spec, r#"={"session":"regular","symbol":"BINANCE:BTCEUR"}"#);
        wire(
            Command::quote_add_symbols("qs_a", ["NASDAQ:AAPL", spec.as_str()]),
            r#"{"m":"quote_add_symbols","p":["qs_a","NASDAQ:AAPL","={\"session\":\"regular\",\"symbol\":\"BINANCE:BTCEUR\"}"]}"#,
        );
        wire(
            Command::quote_remove_symbols("qs_a", ["NASDAQ:AAPL"]),
            r#"{"m":"quote_remove_symbols","p":["qs_a","NASDAQ:AAPL"]}"#,
        );
        wire(
            Command::quote_fast_symbols("qs_a", ["NASDAQ:AAPL"]),
            r#"{"m":"quote_fast_symbols","p":["qs_a","NASDAQ:AAPL"]}"#,
        );
    }

    #[test]
    fn chart_commands() {
        wire(
            Command::resolve_symbol(
                "cs_a",
                "sds_sym_1",
                SymbolSpec::new("BINANCE:BTCUSDT").adjustment(Adjustment::Splits),
            ),
            r#"{"m":"resolve_symbol","p":["cs_a","sds_sym_1","={\"adjustment\":\"splits\",\"symbol\":\"BINANCE:BTCUSDT\"}"]}"#,
        );
        wire(
            Command::create_series("cs_a", "sds_1", "s1", "sds_sym_1", "1D", 300),
            r#"{"m":"create_series","p":["cs_a","sds_1","s1","sds_sym_1","1D",300]}"#,
        );
        wire(
            Command::create_series("cs_a", "sds_1", "s1", "sds_sym_1", "60", 10).with_range(""),
            r#"{"m":"create_series","p":["cs_a","sds_1","s1","sds_sym_1","60",10,""]}"#,
        );
        wire(
            Command::modify_series("cs_a", "sds_1", "s2", "sds_sym_1", "5"),
            r#"{"m":"modify_series","p":["cs_a","sds_1","s2","sds_sym_1","5",""]}"#,
        );
        wire(
            Command::remove_series("cs_a", "sds_1"),
            r#"{"m":"remove_series","p":["cs_a","sds_1"]}"#,
        );
        wire(
            Command::request_more_data("cs_a", "sds_1", 500),
            r#"{"m":"request_more_data","p":["cs_a","sds_1",500]}"#,
        );
        wire(
            Command::switch_timezone("cs_a", "Etc/UTC"),
            r#"{"m":"switch_timezone","p":["cs_a","Etc/UTC"]}"#,
        );
    }

    #[test]
    fn with_range_leaves_other_commands_alone() {
        let command = Command::remove_series("cs_a", "sds_1");
        assert_eq!(command.clone().with_range("12M"), command);
    }

    #[test]
    fn non_ascii_is_escaped_so_lengths_agree() {
        let command = Command::quote_add_symbols("qs_a", ["TSE:トヨタ"]);
        let json = command.to_json();
        assert!(json.is_ascii(), "{json}");
        assert_eq!(
            json,
            r#"{"m":"quote_add_symbols","p":["qs_a","TSE:\u30c8\u30e8\u30bf"]}"#
        );
        assert_eq!(command.to_frame(), format!("~m~{}~m~{json}", json.len()));
    }
}

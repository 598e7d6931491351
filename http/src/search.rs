//! Symbol search (`/symbol_search/v3/`): what a text matches, with the id the socket takes.
//!
//! ```no_run
//! use tickwire_http::search::{self, SearchQuery};
//! use tickwire_http::{HttpClient, HttpConfig};
//!
//! let client = HttpClient::new(HttpConfig::default());
//! let query = SearchQuery::new("btcusdt").with_kind("crypto").with_limit(10);
//! for found in search::search(&client, &query)? {
//!     println!("{}", found.id); // BINANCE:BTCUSDT, ...
//! }
//! # Ok::<(), tickwire_http::HttpError>(())
//! ```

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::client::Request;
use crate::{HttpClient, HttpError, text};

/// Results per page the server gives.
pub const PAGE_SIZE: usize = 50;
/// [`SearchQuery::limit`] by default.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest [`SearchQuery::limit`] honoured (10 pages).
pub const MAX_LIMIT: usize = 500;

/// Longest text field kept from a result.
const FIELD_CHARS: usize = 200;

/// Everything but RFC 3986's unreserved characters is percent-encoded in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What to search for.
///
/// ```
/// use tickwire_http::search::SearchQuery;
///
/// let query = SearchQuery::new("NASDAQ:aapl").with_kind("stock");
/// assert_eq!(query.limit, 50);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// The text; `EXCH:TEXT` also sets the exchange (as TradingView's own client does).
    pub text: String,
    /// Only this exchange (takes precedence over an `EXCH:` prefix in the text; upper-cased).
    pub exchange: Option<String>,
    /// Only this type: a `search_type` value, or a friendly name ([`search_type`] maps them).
    pub kind: Option<String>,
    /// Most results wanted ([`DEFAULT_LIMIT`]; at most [`MAX_LIMIT`]).
    pub limit: usize,
}

impl Default for SearchQuery {
    fn default() -> Self {
        Self::new("")
    }
}

impl SearchQuery {
    /// A search for `text`, any exchange, any type, [`DEFAULT_LIMIT`] results.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            exchange: None,
            kind: None,
            limit: DEFAULT_LIMIT,
        }
    }

    /// Only `exchange`.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Only `kind` (`stock`, `crypto`, `forex`, `futures`, `index`, `bond`, `fund`, `etf`,
    /// `economic`, or any `search_type` value).
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// At most `limit` results.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// The `search_type` value for a friendly type name: `stock` is `stocks`, `fund` is `funds`,
/// `indices` is `index`, `bonds` is `bond`; other names pass through lower-cased.
///
/// ```
/// use tickwire_http::search::search_type;
///
/// assert_eq!(search_type("Stock"), "stocks");
/// assert_eq!(search_type("crypto"), "crypto");
/// assert_eq!(search_type("common_stock"), "common_stock");
/// ```
pub fn search_type(kind: &str) -> String {
    let kind = kind.trim().to_lowercase();
    match kind.as_str() {
        "stock" | "stocks" | "equity" | "equities" => "stocks".to_owned(),
        "fund" | "funds" => "funds".to_owned(),
        "index" | "indices" | "indexes" => "index".to_owned(),
        "bond" | "bonds" => "bond".to_owned(),
        "future" | "futures" => "futures".to_owned(),
        "etf" | "etfs" => "etf".to_owned(),
        "economic" | "economy" | "economics" => "economic".to_owned(),
        _ => kind,
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SymbolMatch {
    /// The socket symbol: the `prefix` (or the exchange's first word), `:`, the symbol.
    pub id: String,
    /// The ticker without the exchange.
    pub symbol: String,
    /// The name.
    pub description: Option<String>,
    /// The type (`stock`, `crypto`, `forex`, ...).
    pub kind: Option<String>,
    /// The exchange as displayed.
    pub exchange: Option<String>,
    /// The quote currency.
    pub currency: Option<String>,
    /// The country code.
    pub country: Option<String>,
}

/// Searches, one page of 50 after another (never two at once) while the server says more
/// remain and fewer than the limit are in hand. Text and exchange are upper-cased; `hl=0` is sent and
/// `<em>` tags are stripped anyway; results without a `symbol` are skipped, repeats dropped.
pub fn search(client: &HttpClient, query: &SearchQuery) -> Result<Vec<SymbolMatch>, HttpError> {
    let limit = query.limit.min(MAX_LIMIT);
    let (prefix, text) = split_exchange(&query.text);
    let exchange = query
        .exchange
        .as_deref()
        .map(str::trim)
        .filter(|exchange| !exchange.is_empty())
        .or(prefix)
        .unwrap_or_default()
        .to_uppercase();
    let kind = query.kind.as_deref().map(search_type).unwrap_or_default();
    let text = text.trim().to_uppercase();
    let encode = |value: &str| utf8_percent_encode(value, QUERY_VALUE).to_string();

    let mut found: Vec<SymbolMatch> = Vec::new();
    let mut start = 0usize;
    while start < limit {
        let url = format!(
            "{}/symbol_search/v3/?text={}&hl=0&exchange={}&lang=en&search_type={}&start={start}&domain=production",
            client.bases().search,
            encode(&text),
            encode(&exchange),
            encode(&kind),
        );
        let reply = client
            .execute(Request::get("symbol search", url))?
            .success()?;
        let body = reply.json()?;
        let page = parse_page(&body)
            .ok_or_else(|| HttpError::not_json(reply.status, &reply.body, &reply.secrets))?;
        if page.items.is_empty() {
            break;
        }
        for item in page.items.iter().filter_map(parse_item) {
            if found.len() >= limit {
                break;
            }
            if !found.iter().any(|known| known.id == item.id) {
                found.push(item);
            }
        }
        if found.len() >= limit || page.remaining == 0 {
            break;
        }
        start = start.saturating_add(PAGE_SIZE);
    }
    Ok(found)
}

/// `EXCH:TEXT` as (`EXCH`, `TEXT`); other text as is.
fn split_exchange(text: &str) -> (Option<&str>, &str) {
    match text.split_once(':') {
        Some((exchange, rest)) if !exchange.trim().is_empty() => (Some(exchange.trim()), rest),
        _ => (None, text),
    }
}

/// One answer: its items and how many the server says remain (0 when it does not say).
#[derive(Debug)]
pub(crate) struct Page<'a> {
    pub(crate) items: &'a [Value],
    pub(crate) remaining: u64,
}

/// The v3 object, or the old bare array; `None` for any other JSON.
pub(crate) fn parse_page(body: &Value) -> Option<Page<'_>> {
    match body {
        Value::Array(items) => Some(Page {
            items,
            remaining: 0,
        }),
        Value::Object(object) => Some(Page {
            items: object
                .get("symbols")
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice),
            remaining: object
                .get("symbols_remaining")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        }),
        _ => None,
    }
}

/// A text field without `<em>` tags and control characters; `None` when nothing is left.
fn field(item: &Value, name: &str) -> Option<String> {
    let value = item.get(name)?.as_str()?;
    let cleaned = text::clean(&text::strip_em(value), FIELD_CHARS);
    (!cleaned.is_empty()).then_some(cleaned)
}

pub(crate) fn parse_item(item: &Value) -> Option<SymbolMatch> {
    let symbol = field(item, "symbol")?;
    let exchange = field(item, "exchange");
    let head = field(item, "prefix").or_else(|| {
        exchange
            .as_deref()
            .and_then(|exchange| exchange.split_whitespace().next())
            .map(str::to_owned)
    });
    let id = match head {
        Some(head) => format!("{head}:{symbol}"),
        None => symbol.clone(),
    };
    Some(SymbolMatch {
        id,
        symbol,
        description: field(item, "description"),
        kind: field(item, "type"),
        exchange,
        currency: field(item, "currency_code"),
        country: field(item, "country"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(body: &str) -> Vec<SymbolMatch> {
        let value: Value = serde_json::from_str(body).unwrap();
        parse_page(&value)
            .unwrap()
            .items
            .iter()
            .filter_map(parse_item)
            .collect()
    }

    #[test]
    fn ids_use_the_prefix_or_the_exchanges_first_word() {
        let found = items(
            r#"{"symbols_remaining":0,"symbols":[
                {"symbol":"AAPL","description":"Apple Inc.","type":"stock","exchange":"NASDAQ","currency_code":"USD","country":"US","typespecs":["common"]},
                {"symbol":"EURUSD","description":"Euro / U.S. Dollar","type":"forex","exchange":"FXCM","prefix":"FX"},
                {"symbol":"BTCUSDT","type":"crypto","exchange":"Binance","prefix":"BINANCE"},
                {"symbol":"SPX","exchange":"S&P Global Indices"},
                {"symbol":"LONELY"}
            ]}"#,
        );
        let ids: Vec<_> = found.iter().map(|item| item.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "NASDAQ:AAPL",
                "FX:EURUSD",
                "BINANCE:BTCUSDT",
                "S&P:SPX",
                "LONELY"
            ]
        );
        assert_eq!(
            found.first(),
            Some(&SymbolMatch {
                id: "NASDAQ:AAPL".into(),
                symbol: "AAPL".into(),
                description: Some("Apple Inc.".into()),
                kind: Some("stock".into()),
                exchange: Some("NASDAQ".into()),
                currency: Some("USD".into()),
                country: Some("US".into()),
            })
        );
    }

    #[test]
    fn em_tags_are_stripped_from_every_text_field() {
        let found = items(
            r#"[{"symbol":"<em>AA</em>PL","description":"<em>Apple</em> Inc.","exchange":"<em>NASDAQ</em>","type":"<EM>stock</EM>","currency_code":"<em>USD</em>","country":"<em>US</em>"}]"#,
        );
        let item = found.first().unwrap();
        assert_eq!(item.id, "NASDAQ:AAPL");
        assert_eq!(item.description.as_deref(), Some("Apple Inc."));
        assert_eq!(item.kind.as_deref(), Some("stock"));
        assert_eq!(item.currency.as_deref(), Some("USD"));
        assert_eq!(item.country.as_deref(), Some("US"));
    }

    #[test]
    fn hostile_items_are_skipped_or_defaulted() {
        let found = items(
            r#"{"symbols":[
                {"description":"no symbol"},
                {"symbol":null},
                {"symbol":12345},
                {"symbol":"<em></em>"},
                {"symbol":"\u0000\n"},
                "not an object",
                7,
                {"symbol":"OK","description":["wrong"],"exchange":{"x":1},"type":123456789012345678901234567890,"prefix":"","country":true}
            ]}"#,
        );
        assert_eq!(
            found,
            vec![SymbolMatch {
                id: "OK".into(),
                symbol: "OK".into(),
                description: None,
                kind: None,
                exchange: None,
                currency: None,
                country: None,
            }]
        );
    }

    #[test]
    fn pages_report_what_remains() {
        let page = |body: &str| {
            let value: Value = serde_json::from_str(body).unwrap();
            parse_page(&value).map(|page| (page.items.len(), page.remaining))
        };
        assert_eq!(
            page(r#"{"symbols_remaining":120,"symbols":[{}]}"#),
            Some((1, 120))
        );
        assert_eq!(
            page(r#"{"symbols_remaining":-3,"symbols":[]}"#),
            Some((0, 0))
        );
        assert_eq!(
            page(r#"{"symbols_remaining":"9","symbols":{}}"#),
            Some((0, 0))
        );
        assert_eq!(
            page(r#"{"symbols_remaining":1e30,"symbols":[]}"#),
            Some((0, 0))
        );
        assert_eq!(page(r#"[]"#), Some((0, 0)));
        assert_eq!(page(r#"null"#), None);
        assert_eq!(page(r#""text""#), None);
    }

    #[test]
    fn exchange_prefixes_split_off() {
        assert_eq!(split_exchange("NASDAQ:AAPL"), (Some("NASDAQ"), "AAPL"));
        assert_eq!(split_exchange(":AAPL"), (None, ":AAPL"));
        assert_eq!(split_exchange("AAPL"), (None, "AAPL"));
        assert_eq!(split_exchange("A:B:C"), (Some("A"), "B:C"));
    }

    #[test]
    fn friendly_kinds_map_to_search_types() {
        for (friendly, value) in [
            ("stock", "stocks"),
            ("crypto", "crypto"),
            ("forex", "forex"),
            ("futures", "futures"),
            ("index", "index"),
            ("bond", "bond"),
            ("fund", "funds"),
            ("etf", "etf"),
            ("economic", "economic"),
            (" ETF ", "etf"),
            ("crypto_spot", "crypto_spot"),
            ("", ""),
        ] {
            assert_eq!(search_type(friendly), value, "{friendly}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        let encode = |value: &str| utf8_percent_encode(value, QUERY_VALUE).to_string();
        assert_eq!(
            encode("S&P 500+é%/?#="),
            "S%26P%20500%2B%C3%A9%25%2F%3F%23%3D"
        );
        assert_eq!(encode("BTC-USD_1.x~"), "BTC-USD_1.x~");
    }
}

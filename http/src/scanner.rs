//! Quotes by polling the scanner (`POST /{market}/scan`), the fallback when the socket is not
//! an option.
//!
//! ```no_run
//! use tickwire_http::scanner::Scanner;
//! use tickwire_http::{HttpClient, HttpConfig};
//!
//! let scanner = Scanner::new(HttpClient::new(HttpConfig::default()));
//! let outcome = scanner.scan(&["NASDAQ:AAPL", "BINANCE:BTCUSDT"])?;
//! for row in &outcome.rows {
//!     println!("{} {:?} ({:?})", row.ticker, row.close, row.update_mode);
//! }
//! println!("unknown: {:?}", outcome.missing);
//! # Ok::<(), tickwire_http::HttpError>(())
//! ```

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::client::{Payload, Request};
use crate::session::Cookies;
use crate::{HttpClient, HttpError, text};

/// The columns asked for, in the order of [`ScanRow`]'s fields.
pub const COLUMNS: [&str; 6] = [
    "close",
    "change_abs",
    "change",
    "volume",
    "update_mode",
    "description",
];
/// Tickers per request by default.
pub const DEFAULT_CHUNK: usize = 200;
/// The most tickers one request may carry (the server refuses more).
pub const MAX_CHUNK: usize = 1000;

/// A scanner client: the market (`global` takes any ticker), tickers per request, and the
/// session cookies when there are some (real-time values where the account is entitled).
///
/// ```
/// use tickwire_http::HttpClient;
/// use tickwire_http::scanner::Scanner;
/// use tickwire_http::session::Cookies;
///
/// let scanner = Scanner::new(HttpClient::default())
///     .with_chunk_size(100)
///     .with_cookies(Some(Cookies::new("sessionid value")));
/// assert_eq!(scanner.market(), "global");
/// ```
#[derive(Debug, Clone)]
pub struct Scanner {
    client: HttpClient,
    market: String,
    chunk_size: usize,
    cookies: Option<Cookies>,
}

/// One ticker's values; a value the server left null (or sent as the wrong type) is `None`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScanRow {
    /// The ticker as asked (`NASDAQ:AAPL`).
    pub ticker: String,
    /// Last price.
    pub close: Option<f64>,
    /// Change since the previous close.
    pub change_abs: Option<f64>,
    /// The same in percent.
    pub change_percent: Option<f64>,
    /// Volume.
    pub volume: Option<f64>,
    /// `streaming`, or `delayed_streaming_900` and the like.
    pub update_mode: Option<String>,
    /// The name.
    pub description: Option<String>,
}

/// A scan's result: rows in the order the tickers were asked, and the tickers the server did
/// not answer for.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ScanOutcome {
    /// One row per ticker answered.
    pub rows: Vec<ScanRow>,
    /// Tickers asked for and not answered (unknown to the server).
    pub missing: Vec<String>,
}

impl Scanner {
    /// Market `global`, [`DEFAULT_CHUNK`] tickers per request, no cookies.
    pub fn new(client: HttpClient) -> Self {
        Self {
            client,
            market: "global".to_owned(),
            chunk_size: DEFAULT_CHUNK,
            cookies: None,
        }
    }

    /// Another market (`america`, `crypto`, ...).
    pub fn with_market(mut self, market: impl Into<String>) -> Self {
        self.market = market.into();
        self
    }

    /// Tickers per request, kept within 1..=[`MAX_CHUNK`].
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size.clamp(1, MAX_CHUNK);
        self
    }

    /// Session cookies to send (or none).
    pub fn with_cookies(mut self, cookies: Option<Cookies>) -> Self {
        self.cookies = cookies;
        self
    }

    /// The market scanned.
    pub fn market(&self) -> &str {
        &self.market
    }

    /// Scans `tickers` (repeats asked once), one request per chunk, one after another.
    pub fn scan(&self, tickers: &[&str]) -> Result<ScanOutcome, HttpError> {
        let market_ok = !self.market.is_empty()
            && self.market.len() <= 64
            && self
                .market
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !market_ok {
            return Err(HttpError::BadUrl(format!(
                "not a scanner market: {:?}",
                text::clean(&self.market, 64)
            )));
        }
        let mut seen = HashSet::new();
        let wanted: Vec<&str> = tickers
            .iter()
            .copied()
            .filter(|ticker| seen.insert(*ticker))
            .collect();
        let url = format!("{}/{}/scan", self.client.bases().scanner, self.market);
        let mut answered: HashMap<String, ScanRow> = HashMap::new();
        for chunk in wanted.chunks(self.chunk_size.clamp(1, MAX_CHUNK)) {
            let body = json!({
                "symbols": {"tickers": chunk, "query": {"types": []}},
                "columns": COLUMNS,
            });
            let bytes =
                serde_json::to_vec(&body).map_err(|error| HttpError::Io(error.to_string()))?;
            let mut request = Request::post("scanner", url.clone(), Payload::Json(&bytes));
            if let Some(cookies) = &self.cookies {
                request.cookies = cookies.jar();
            }
            let reply = self.client.execute(request)?.success()?;
            let data = reply.json()?;
            let asked: HashSet<&str> = chunk.iter().copied().collect();
            for row in rows(&data) {
                if asked.contains(row.ticker.as_str()) && !answered.contains_key(&row.ticker) {
                    answered.insert(row.ticker.clone(), row);
                }
            }
        }
        let mut outcome = ScanOutcome::default();
        for ticker in wanted {
            match answered.remove(ticker) {
                Some(row) => outcome.rows.push(row),
                None => outcome.missing.push(ticker.to_owned()),
            }
        }
        Ok(outcome)
    }
}

/// The rows of a scanner answer (`{"data":[{"s":..,"d":[..]}]}`), in the order sent; rows
/// without a string `s` are skipped, a missing or wrong `data` is no rows.
pub(crate) fn rows(answer: &Value) -> impl Iterator<Item = ScanRow> + '_ {
    answer
        .get("data")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(row)
}

fn row(item: &Value) -> Option<ScanRow> {
    let ticker = item.get("s")?.as_str()?.to_owned();
    let values = item.get("d").and_then(Value::as_array);
    let value = |index: usize| values.and_then(|values| values.get(index));
    let number = |index: usize| value(index).and_then(Value::as_f64);
    let string = |index: usize| {
        value(index)
            .and_then(Value::as_str)
            .map(|text| text::clean(&text::strip_em(text), 200))
            .filter(|text| !text.is_empty())
    };
    Some(ScanRow {
        ticker,
        close: number(0),
        change_abs: number(1),
        change_percent: number(2),
        volume: number(3),
        update_mode: string(4),
        description: string(5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Vec<ScanRow> {
        rows(&serde_json::from_str(body).unwrap()).collect()
    }

    #[test]
    fn rows_follow_the_column_order() {
        let found = parse(
            r#"{"totalCount":1,"data":[{"s":"NASDAQ:AAPL","d":[189.5,-1.25,-0.65,51234567,"delayed_streaming_900","Apple Inc."]}]}"#,
        );
        assert_eq!(
            found,
            vec![ScanRow {
                ticker: "NASDAQ:AAPL".into(),
                close: Some(189.5),
                change_abs: Some(-1.25),
                change_percent: Some(-0.65),
                volume: Some(51_234_567.0),
                update_mode: Some("delayed_streaming_900".into()),
                description: Some("Apple Inc.".into()),
            }]
        );
    }

    #[test]
    fn nulls_wrong_types_and_short_rows_are_none() {
        let found = parse(
            r#"{"data":[
                {"s":"A:X","d":[null,"1.5",true,{"v":1},7,["x"]]},
                {"s":"A:Y","d":[1]},
                {"s":"A:Z"},
                {"s":"A:W","d":"nope"},
                {"s":"A:V","d":[123456789012345678901234567890,1e300]},
                {"d":[1,2,3]},
                {"s":5,"d":[1]},
                "junk"
            ]}"#,
        );
        let tickers: Vec<_> = found.iter().map(|row| row.ticker.as_str()).collect();
        assert_eq!(tickers, ["A:X", "A:Y", "A:Z", "A:W", "A:V"]);
        let x = found.first().unwrap();
        assert_eq!(
            (x.close, x.change_abs, x.change_percent, x.volume),
            (None, None, None, None)
        );
        assert_eq!(
            (x.update_mode.as_deref(), x.description.as_deref()),
            (None, None)
        );
        assert_eq!(found.get(1).unwrap().close, Some(1.0));
        assert_eq!(found.get(1).unwrap().volume, None);
        let v = found.get(4).unwrap();
        assert_eq!(v.close, Some(1.2345678901234568e29));
        assert_eq!(v.change_abs, Some(1e300));
    }

    #[test]
    fn numbers_past_f64_make_the_body_not_json() {
        // serde_json refuses a literal no f64 holds; the whole answer is an error, not a panic.
        let reply = crate::client::Reply {
            what: "scanner",
            status: 200,
            retry_after: None,
            body: br#"{"data":[{"s":"A:B","d":[1e400]}]}"#.to_vec(),
            received: crate::cookie::Received::default(),
            secrets: Vec::new(),
        };
        assert!(matches!(
            reply.json(),
            Err(HttpError::NotJson { status: 200, .. })
        ));
        // So are bytes that are not UTF-8.
        let reply = crate::client::Reply {
            body: b"{\"data\":[{\"s\":\"A:\xff\",\"d\":[1]}]}".to_vec(),
            ..reply
        };
        let Err(HttpError::NotJson { snippet, .. }) = reply.json() else {
            panic!("not NotJson");
        };
        assert!(
            snippet.starts_with("{\"data\":[{\"s\":\"A:\u{fffd}"),
            "{snippet}"
        );
    }

    #[test]
    fn odd_answers_have_no_rows() {
        for body in [
            r#"{}"#,
            r#"{"data":null}"#,
            r#"{"data":{}}"#,
            r#"[]"#,
            r#"{"data":[]}"#,
        ] {
            assert!(parse(body).is_empty(), "{body}");
        }
    }
}

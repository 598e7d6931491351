//! The emulator's HTTP side, on the WebSocket's port: sign-in with a second factor, the home
//! page that turns a session cookie into an auth token, symbol search and the scanner, as the
//! HTTP contract between the emulator and tickwire-http fixes them; and the hostile answers of
//! [`HttpFault`], per path prefix, at run time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, timeout_at};

use crate::auth::{self, SigninMode, TotpOutcome};
use crate::market::{Instrument, Kind};
use crate::server::{Shared, unix_now};
use crate::session::update_mode;

/// The longest request body read (sign-in forms, scanner queries).
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// How long a request body may take to arrive.
const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// The size of the [`HttpFault::Oversized`] body.
pub const OVERSIZED_BODY: usize = 9 * 1024 * 1024;
/// Search results per page.
pub const SEARCH_PAGE: usize = 50;
/// The most tickers one scanner query may name.
pub const MAX_SCAN_TICKERS: usize = 1_000;
/// Distinct paths counted for [`crate::Emulator::http_requests`]; later new paths are not.
const COUNTED_PATHS: usize = 4_096;
/// How long a [`HttpFault::Hang`] hangs at most (the emulator's shutdown ends it sooner).
const HANG_LIMIT: Duration = Duration::from_secs(600);

/// The only Origin (and Referer, with an optional path) sign-in, search and scanner accept.
pub const TRUSTED_ORIGIN: &str = "https://www.tradingview.com";

/// A hostile answer for the requests under a path prefix ([`crate::Emulator::set_http_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFault {
    /// This status (a 1xx or invalid code means 500), with a JSON body
    /// (`{"error":"<reason>"}`) or an HTML page, and a `Retry-After` when given.
    Status {
        /// The HTTP status.
        code: u16,
        /// `Retry-After` seconds.
        retry_after: Option<u64>,
        /// An HTML body instead of JSON.
        html: bool,
    },
    /// HTTP 200 with an HTML page where JSON is expected.
    HtmlInsteadOfJson,
    /// HTTP 200 with a body of [`OVERSIZED_BODY`] bytes (9 MiB), streamed without a length.
    Oversized,
    /// The request is read, then nothing comes back: no status line, no headers.
    Hang,
    /// The real answer's headers, then its body one byte per second.
    Trickle,
    /// HTTP 302 to the very URL asked for, for ever.
    RedirectLoop,
    /// This many HTTP 302 hops (through `?hop=1`, `?hop=2`, …, other query parameters kept),
    /// then the real answer.
    Redirects(u32),
    /// HTTP 301 without a `Location`.
    RedirectWithoutLocation,
}

/// The run-time HTTP controls of one emulator.
#[derive(Debug, Default)]
pub(crate) struct WebControls {
    signin_mode: Mutex<SigninMode>,
    faults: Mutex<Vec<(String, HttpFault)>>,
    refused_upgrades: Mutex<Option<u16>>,
    requests: Mutex<HashMap<String, u64>>,
}

impl WebControls {
    pub(crate) fn set_signin_mode(&self, mode: SigninMode) {
        *self
            .signin_mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = mode;
    }

    fn signin_mode(&self) -> SigninMode {
        *self
            .signin_mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_fault(&self, prefix: &str, fault: HttpFault) {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        faults.retain(|(existing, _)| existing != prefix);
        faults.push((prefix.to_owned(), fault));
    }

    pub(crate) fn clear_faults(&self) {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The fault of the longest prefix `path` starts with.
    fn fault_for(&self, path: &str) -> Option<HttpFault> {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, fault)| *fault)
    }

    pub(crate) fn refuse_upgrades(&self, code: Option<u16>) {
        *self
            .refused_upgrades
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = code;
    }

    pub(crate) fn refused_upgrades(&self) -> Option<u16> {
        *self
            .refused_upgrades
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count(&self, path: &str) {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = requests.get_mut(path) {
            *count += 1;
        } else if requests.len() < COUNTED_PATHS {
            requests.insert(path.to_owned(), 1);
        }
    }

    pub(crate) fn requests(&self, prefix: &str) -> u64 {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(_, count)| count)
            .sum()
    }
}

/// A response body: all at once, or streamed from a task.
#[derive(Debug)]
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body {
    pub(crate) fn empty() -> Body {
        Body::Full(None)
    }

    fn text(text: impl Into<String>) -> Body {
        Body::Full(Some(Bytes::from(text.into())))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Body::Stream(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Unknown")
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

const JSON: &str = "application/json; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    response(status, JSON, Body::text(value.to_string()))
}

fn html_response(status: StatusCode, page: impl Into<String>) -> Response<Body> {
    response(status, HTML, Body::text(page))
}

/// A short plain answer (refused upgrades and the like).
pub(crate) fn plain(status: StatusCode) -> Response<Body> {
    response(
        status,
        "text/plain; charset=utf-8",
        Body::text(reason(status)),
    )
}

fn with_retry_after(mut response: Response<Body>, retry_after: Option<u64>) -> Response<Body> {
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn forbidden() -> Response<Body> {
    html_response(
        StatusCode::FORBIDDEN,
        "<html><body>403 Forbidden</body></html>",
    )
}

/// `Origin` is exactly [`TRUSTED_ORIGIN`] and `Referer` is it, optionally with a path.
fn trusted(headers: &HeaderMap) -> bool {
    let value = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
    };
    let origin = value(header::ORIGIN) == Some(TRUSTED_ORIGIN);
    let referer = value(header::REFERER).is_some_and(|referer| {
        referer
            .strip_prefix(TRUSTED_ORIGIN)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    });
    origin && referer
}

/// Percent-decoding of a form or query value (`+` is a space); bad escapes stay as they are.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let escaped = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                if let Some(decoded) = escaped {
                    out.push(decoded);
                    index += 3;
                    continue;
                }
                out.push(b'%');
            }
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `(name, value)` pairs of a url-encoded form or query, decoded.
pub(crate) fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.as_str())
}

/// The request body, at most [`MAX_BODY`] bytes within [`BODY_DEADLINE`].
async fn read_body(mut body: Incoming, headers: &HeaderMap) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": "request body too large"}),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large());
    }
    let deadline = Instant::now() + BODY_DEADLINE;
    let mut collected = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match timeout_at(deadline, frame).await {
            Err(_) => {
                return Err(json_response(
                    StatusCode::REQUEST_TIMEOUT,
                    &json!({"error": "request body too slow"}),
                ));
            }
            Ok(None) => return Ok(Bytes::from(collected)),
            Ok(Some(Err(_))) => {
                return Err(json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "bad request body"}),
                ));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if collected.len() + data.len() > MAX_BODY {
                        return Err(too_large());
                    }
                    collected.extend_from_slice(&data);
                }
            }
        }
    }
}

fn request_cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    auth::parse_cookies(
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    )
}

/// The host of the request, without its port, for the cookies' `Domain`.
fn cookie_domain(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("127.0.0.1");
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    without_port
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        .collect()
}

/// Seconds a signed-in session's cookies are kept.
const SESSION_COOKIE_AGE: u64 = 30 * 86_400;
/// Seconds a provisional (second factor) cookie is kept.
const CHALLENGE_COOKIE_AGE: u64 = 600;
/// Seconds the device cookie is kept.
const DEVICE_COOKIE_AGE: u64 = 365 * 86_400;

fn set_cookie(response: &mut Response<Body>, domain: &str, name: &str, value: &str, age: u64) {
    let cookie = format!(
        "{name}={value}; Domain={domain}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={age}"
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn set_session_cookies(
    response: &mut Response<Body>,
    domain: &str,
    cookies: &auth::Cookies,
    age: u64,
) {
    set_cookie(response, domain, "sessionid", &cookies.sessionid, age);
    set_cookie(
        response,
        domain,
        "sessionid_sign",
        &cookies.sessionid_sign,
        age,
    );
}

/// The user object of a fresh token for the session the cookies name, counted.
fn issue(shared: &Shared, cookies: &[(String, String)]) -> Option<Value> {
    let user = shared.auth.issue(cookies, unix_now())?;
    shared
        .stats
        .tokens_issued
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(user)
}

/// A signed-in session: the user with a fresh token, and the session's cookies.
fn signed_in(
    shared: &Shared,
    domain: &str,
    cookies: &auth::Cookies,
    device: bool,
) -> Response<Body> {
    let jar = [
        ("sessionid".to_owned(), cookies.sessionid.clone()),
        ("sessionid_sign".to_owned(), cookies.sessionid_sign.clone()),
    ];
    let Some(user) = issue(shared, &jar) else {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "session vanished"}),
        );
    };
    shared
        .stats
        .sign_ins
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut response = json_response(StatusCode::OK, &json!({"error": "", "user": user}));
    set_session_cookies(&mut response, domain, cookies, SESSION_COOKIE_AGE);
    if device {
        set_cookie(
            &mut response,
            domain,
            "device_t",
            &auth::new_device_token(),
            DEVICE_COOKIE_AGE,
        );
    }
    response
}

const CLOUDFRONT_400: &str = concat!(
    "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\" \"http://www.w3.org/TR/html4/loose.dtd\">\n",
    "<HTML><HEAD><META HTTP-EQUIV=\"Content-Type\" CONTENT=\"text/html; charset=iso-8859-1\">\n",
    "<TITLE>ERROR: The request could not be satisfied</TITLE>\n",
    "</HEAD><BODY>\n",
    "<H1>400 ERROR</H1>\n",
    "<H2>The request could not be satisfied.</H2>\n",
    "<HR noshade size=\"1px\">\n",
    "Bad request.\n",
    "<BR clear=\"all\">\n",
    "<HR noshade size=\"1px\">\n",
    "<PRE>\n",
    "Generated by cloudfront (CloudFront)\n",
    "Request ID: tickwire-emulator\n",
    "</PRE>\n",
    "</BODY></HTML>"
);

fn signin(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    match shared.web.signin_mode() {
        SigninMode::Normal => {}
        SigninMode::Captcha => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "error": "Please confirm that you are not a robot by clicking the captcha box.",
                    "code": "recaptcha_required",
                }),
            );
        }
        SigninMode::Lockout => {
            return json_response(
                StatusCode::OK,
                &json!({"error": "You have been locked out. Please try again later."}),
            );
        }
        SigninMode::TryLater => {
            return json_response(
                StatusCode::OK,
                &json!({"error": "We're having a little trouble with that request. Try again a little later"}),
            );
        }
        SigninMode::Html => return html_response(StatusCode::BAD_REQUEST, CLOUDFRONT_400),
        SigninMode::RateLimited { retry_after } => {
            return with_retry_after(
                json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({"error": "Too Many Requests", "code": "rate_limit"}),
                ),
                retry_after,
            );
        }
    }
    let form = parse_form(&String::from_utf8_lossy(body));
    let username = field(&form, "username").unwrap_or_default();
    let password = field(&form, "password").unwrap_or_default();
    let Some(account) = shared.auth.find(username, password) else {
        return json_response(
            StatusCode::OK,
            &json!({"error": "Invalid username or password.", "code": "invalid_credentials"}),
        );
    };
    let domain = cookie_domain(headers);
    let needs_second_factor = shared
        .auth
        .account(account)
        .is_some_and(|account| account.totp_secret.is_some());
    if needs_second_factor {
        let provisional = shared.auth.challenge(account);
        let mut response = json_response(
            StatusCode::OK,
            &json!({
                "error": "2FA_required",
                "code": "2FA_required",
                "message": "Second authentication factor is needed",
                "two_factor_types": [{"name": "totp"}],
            }),
        );
        set_session_cookies(&mut response, &domain, &provisional, CHALLENGE_COOKIE_AGE);
        return response;
    }
    let cookies = shared.auth.sign_in(account);
    signed_in(shared, &domain, &cookies, true)
}

fn second_factor(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let form = parse_form(&String::from_utf8_lossy(body));
    let code = field(&form, "code").unwrap_or_default().trim();
    let now = unix_now().max(0.0) as u64;
    match shared
        .auth
        .verify_totp(&request_cookies(headers), code, now)
    {
        TotpOutcome::SignedIn(cookies, _) => {
            signed_in(shared, &cookie_domain(headers), &cookies, true)
        }
        TotpOutcome::Invalid => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "Invalid code", "code": "2FA_invalid_credential"}),
        ),
        TotpOutcome::TooMany => json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"error": "Too many requests", "code": "2FA_too_many_requests"}),
        ),
        TotpOutcome::Expired => json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "Session expired", "code": "2FA_challenge_expired"}),
        ),
    }
}

/// JSON inside a `<script>`: `</` cannot end it early.
fn script_json(value: &Value) -> String {
    value.to_string().replace("</", "<\\/")
}

fn home(shared: &Shared, headers: &HeaderMap) -> Response<Body> {
    let cookies = request_cookies(headers);
    // Unrelated JSON with its own "id" keys comes first, as on the real page.
    let preamble = r#"window.__TV_CONFIG = {"id":4242,"locale":"en","features":[{"id":7,"name":"dark_theme"},{"id":8,"name":"alerts"}]};"#;
    let user = if shared.auth.session(&cookies).is_some() {
        issue(shared, &cookies)
    } else {
        None
    };
    let script = match &user {
        Some(user) => format!(
            "{preamble}\nwindow.initData = {{}};\nvar user = {};\nwindow.initData.theme = {{\"id\":1}};",
            script_json(user)
        ),
        None => format!("{preamble}\nwindow.initData = {{}};\nvar is_authenticated = false;"),
    };
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>TradingView: Track All Markets</title>\n\
         <script>\n{script}\n</script>\n</head>\n<body>\n\
         <div id=\"tv-content\">Markets are open.</div>\n</body>\n</html>\n"
    );
    html_response(StatusCode::OK, page)
}

/// How one instrument shows in search and in the scanner.
struct Listing<'a> {
    instrument: &'a Instrument,
    /// The ticker without exchange.
    symbol: &'a str,
    /// The exchange part of the socket id (`FX`, `BINANCE`, `NASDAQ`, …).
    market_exchange: &'a str,
    /// The exchange as search shows it (`FXCM`, `Binance`, `NASDAQ`, …).
    exchange: &'a str,
    /// The id prefix search gives, when it is not the exchange.
    prefix: Option<&'a str>,
}

impl<'a> Listing<'a> {
    fn of(instrument: &'a Instrument) -> Listing<'a> {
        let (market_exchange, symbol) = instrument
            .name
            .split_once(':')
            .unwrap_or(("", instrument.name.as_str()));
        let (exchange, prefix) = match (instrument.kind, market_exchange) {
            (Kind::Forex, "FX") => ("FXCM", Some(market_exchange)),
            (Kind::Crypto, "BINANCE") => ("Binance", Some(market_exchange)),
            _ => (market_exchange, None),
        };
        Listing {
            instrument,
            symbol,
            market_exchange,
            exchange,
            prefix,
        }
    }

    fn kind_name(&self) -> &'static str {
        kind_name(self.instrument.kind)
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Stock => "stock",
        Kind::Crypto => "crypto",
        Kind::Forex => "forex",
        Kind::Index => "index",
    }
}

/// Whether `search_type` takes instruments of `kind` (empty = every type).
fn type_matches(search_type: &str, kind: Kind) -> bool {
    match search_type {
        "" | "undefined" => true,
        "stocks" | "stock" | "common_stock" => kind == Kind::Stock,
        "crypto" | "crypto_spot" => kind == Kind::Crypto,
        "forex" => kind == Kind::Forex,
        "index" | "indices" => kind == Kind::Index,
        _ => false,
    }
}

/// Where `needle` occurs in `haystack`, ASCII case-insensitively.
fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack
        .to_ascii_lowercase()
        .find(&needle.to_ascii_lowercase())
}

/// `text` with every case-insensitive occurrence of `needle` wrapped in `<em>`.
fn highlight(text: &str, needle: &str) -> String {
    let mut out = String::with_capacity(text.len() + 9);
    let mut rest = text;
    while let Some(at) = find_ci(rest, needle) {
        let (before, matched_and_after) = rest.split_at(at);
        let (matched, after) = matched_and_after.split_at(needle.len());
        out.push_str(before);
        let _ = write!(out, "<em>{matched}</em>");
        rest = after;
    }
    out.push_str(rest);
    out
}

fn search(shared: &Shared, query: &str) -> Response<Body> {
    let params = parse_form(query);
    let text = field(&params, "text").unwrap_or_default().trim();
    let exchange = field(&params, "exchange").unwrap_or_default().trim();
    let search_type = field(&params, "search_type")
        .or_else(|| field(&params, "type"))
        .unwrap_or_default()
        .trim();
    let start: usize = field(&params, "start")
        .and_then(|start| start.trim().parse().ok())
        .unwrap_or(0);
    let highlighted = field(&params, "hl") == Some("1");
    let market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
    let matches: Vec<Listing<'_>> = market
        .instruments()
        .iter()
        .map(Listing::of)
        .filter(|listing| {
            type_matches(search_type, listing.instrument.kind)
                && (exchange.is_empty()
                    || listing.exchange.eq_ignore_ascii_case(exchange)
                    || listing
                        .prefix
                        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(exchange)))
                && (text.is_empty()
                    || find_ci(listing.symbol, text).is_some()
                    || find_ci(&listing.instrument.description, text).is_some())
        })
        .collect();
    let symbols: Vec<Value> = matches
        .iter()
        .enumerate()
        .skip(start)
        .take(SEARCH_PAGE)
        .map(|(index, listing)| {
            let description = &listing.instrument.description;
            let (symbol, description) = if highlighted {
                (
                    highlight(listing.symbol, text),
                    highlight(description, text),
                )
            } else if index == 0 {
                // The quirk: one description comes highlighted even with hl=0.
                let wrapped = if find_ci(description, text).is_some() {
                    highlight(description, text)
                } else {
                    format!("<em>{description}</em>")
                };
                (listing.symbol.to_owned(), wrapped)
            } else {
                (listing.symbol.to_owned(), description.clone())
            };
            let mut item = json!({
                "symbol": symbol,
                "description": description,
                "type": listing.kind_name(),
                "exchange": listing.exchange,
                "currency_code": "USD",
            });
            let extra = match listing.instrument.kind {
                Kind::Stock => {
                    json!({"provider_id": "ice", "country": "US", "typespecs": ["common"]})
                }
                Kind::Crypto => json!({"provider_id": "binance", "typespecs": ["crypto"]}),
                Kind::Forex => json!({"provider_id": "fxcm", "typespecs": []}),
                Kind::Index => {
                    json!({"provider_id": "tvc", "country": "US", "typespecs": ["main"]})
                }
            };
            if let (Value::Object(item), Value::Object(extra)) = (&mut item, extra) {
                item.extend(extra);
                if let Some(prefix) = listing.prefix {
                    item.insert("prefix".to_owned(), json!(prefix));
                }
            }
            item
        })
        .collect();
    let remaining = matches
        .len()
        .saturating_sub(start.saturating_add(symbols.len()));
    json_response(
        StatusCode::OK,
        &json!({"symbols_remaining": remaining, "symbols": symbols}),
    )
}

/// One scanner column of one instrument; `null` for columns it does not know.
fn column(listing: &Listing<'_>, name: &str, authenticated: bool) -> Value {
    let instrument = listing.instrument;
    match name {
        "close" => json!(instrument.price),
        "change_abs" => json!(instrument.change()),
        "change" => json!(instrument.change_percent()),
        "volume" if instrument.has_volume() => json!(instrument.volume),
        "update_mode" => json!(update_mode(instrument.kind, authenticated)),
        "description" => json!(instrument.description),
        "name" => json!(listing.symbol),
        "exchange" => json!(listing.market_exchange),
        "type" => json!(listing.kind_name()),
        "currency" => json!("USD"),
        "pricescale" => json!(100_000),
        "minmov" => json!(1),
        _ => Value::Null,
    }
}

fn scan(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let Ok(query) = serde_json::from_slice::<Value>(body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "the body is not JSON"}),
        );
    };
    let empty = Vec::new();
    let tickers = query
        .pointer("/symbols/tickers")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if tickers.len() > MAX_SCAN_TICKERS {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "too many tickers"}),
        );
    }
    let columns: Vec<&str> = query
        .get("columns")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .map(|column| column.as_str().unwrap_or_default())
        .collect();
    let authenticated = shared.auth.session(&request_cookies(headers)).is_some();
    let market = shared.market.lock().unwrap_or_else(PoisonError::into_inner);
    let data: Vec<Value> = tickers
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|ticker| {
            let instrument = market.instrument(market.lookup(ticker)?)?;
            let listing = Listing::of(instrument);
            let values: Vec<Value> = columns
                .iter()
                .map(|name| column(&listing, name, authenticated))
                .collect();
            Some(json!({"s": ticker, "d": values}))
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"totalCount": data.len(), "data": data}),
    )
}

fn is_scan_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.strip_suffix("/scan"))
        .is_some_and(|market| !market.is_empty() && !market.contains('/'))
}

fn not_found() -> Response<Body> {
    html_response(
        StatusCode::NOT_FOUND,
        "<html><body>404 Not Found</body></html>",
    )
}

fn method_not_allowed(allowed: &'static str) -> Response<Body> {
    let mut response = html_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "<html><body>405 Method Not Allowed</body></html>",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    response
}

/// The real answer to a request, faults aside.
async fn route(
    shared: &Shared,
    request: Request<Incoming>,
    path: &str,
    query: &str,
) -> Response<Body> {
    enum Endpoint {
        Home,
        Signin,
        SecondFactor,
        Search,
        Scan,
    }
    let (endpoint, method) = match path {
        "/" => (Endpoint::Home, Method::GET),
        "/accounts/signin/" => (Endpoint::Signin, Method::POST),
        "/accounts/two-factor/signin/totp/" => (Endpoint::SecondFactor, Method::POST),
        "/symbol_search/v3/" => (Endpoint::Search, Method::GET),
        _ if is_scan_path(path) => (Endpoint::Scan, Method::POST),
        _ => return not_found(),
    };
    if request.method() != method {
        return method_not_allowed(if method == Method::GET { "GET" } else { "POST" });
    }
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    if !matches!(endpoint, Endpoint::Home) && !trusted(headers) {
        return forbidden();
    }
    let body = match endpoint {
        Endpoint::Signin | Endpoint::SecondFactor | Endpoint::Scan => {
            match read_body(body, headers).await {
                Ok(body) => body,
                Err(refusal) => return refusal,
            }
        }
        Endpoint::Home | Endpoint::Search => Bytes::new(),
    };
    match endpoint {
        Endpoint::Home => home(shared, headers),
        Endpoint::Signin => signin(shared, headers, &body),
        Endpoint::SecondFactor => second_factor(shared, headers, &body),
        Endpoint::Search => search(shared, query),
        Endpoint::Scan => scan(shared, headers, &body),
    }
}

/// The query without its `hop` parameter.
fn without_hop(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some("hop"))
        .collect::<Vec<_>>()
        .join("&")
}

fn redirect(status: StatusCode, headers: &HeaderMap, path: &str, query: &str) -> Response<Body> {
    let mut response = html_response(
        status,
        format!(
            "<html><body>{} {}</body></html>",
            status.as_u16(),
            reason(status)
        ),
    );
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("127.0.0.1");
    let separator = if query.is_empty() { "" } else { "?" };
    if let Ok(location) = HeaderValue::from_str(&format!("http://{host}{path}{separator}{query}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn status_fault(code: u16, retry_after: Option<u64>, html: bool) -> Response<Body> {
    let status = crate::server::final_status(code, StatusCode::INTERNAL_SERVER_ERROR);
    let response = if html {
        html_response(
            status,
            format!(
                "<html><head><title>{0} {1}</title></head><body><h1>{0} {1}</h1></body></html>",
                status.as_u16(),
                reason(status)
            ),
        )
    } else {
        json_response(status, &json!({"error": reason(status)}))
    };
    with_retry_after(response, retry_after)
}

/// A 200 body of [`OVERSIZED_BODY`] bytes, JSON-looking, streamed in 64 KiB chunks.
fn oversized() -> Response<Body> {
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        let head: &[u8] = br#"{"symbols_remaining":0,"padding":""#;
        let tail: &[u8] = br#""}"#;
        let mut left = OVERSIZED_BODY - head.len() - tail.len();
        if sender.send(Bytes::from_static(head)).await.is_err() {
            return;
        }
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        while left > 0 {
            let size = left.min(chunk.len());
            if sender.send(chunk.slice(..size)).await.is_err() {
                return;
            }
            left -= size;
        }
        let _ = sender.send(Bytes::from_static(tail)).await;
    });
    response(StatusCode::OK, JSON, Body::Stream(receiver))
}

/// The answer's headers at once, then its body one byte per second.
async fn trickle(answer: Response<Body>) -> Response<Body> {
    let (parts, mut body) = answer.into_parts();
    let mut bytes = Vec::new();
    while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
    {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let period = Duration::from_secs(1);
        let mut ticks = interval_at(Instant::now() + period, period);
        // Late ticks must not come in a burst: one byte a second, never faster.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for byte in bytes {
            ticks.tick().await;
            if sender.send(Bytes::from(vec![byte])).await.is_err() {
                return;
            }
        }
    });
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::Stream(receiver))
}

/// Answers one HTTP request (not a WebSocket upgrade): the path's fault, if any, else the real
/// answer.
pub(crate) async fn respond(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    shared.web.count(&path);
    let fault = match shared.web.fault_for(&path) {
        None => return route(shared, request, &path, &query).await,
        Some(HttpFault::Trickle) => {
            return trickle(route(shared, request, &path, &query).await).await;
        }
        Some(HttpFault::Redirects(hops)) => {
            let hop: u32 = parse_form(&query)
                .iter()
                .find(|(name, _)| name == "hop")
                .and_then(|(_, value)| value.parse().ok())
                .unwrap_or(0);
            let rest = without_hop(&query);
            if hop >= hops {
                return route(shared, request, &path, &rest).await;
            }
            let separator = if rest.is_empty() { "" } else { "&" };
            HttpFault::Redirects(hops).with_next(format!("{rest}{separator}hop={}", hop + 1))
        }
        Some(other) => FaultAnswer::plain(other),
    };
    // Answered without the real route: read the request first, as a real server does. Closing
    // a socket with the request body unread resets it, and the client can lose the answer's
    // tail. (The routes read it themselves.)
    let (parts, body) = request.into_parts();
    if let Err(refusal) = read_body(body, &parts.headers).await {
        return refusal;
    }
    let headers = &parts.headers;
    match fault.fault {
        HttpFault::Status {
            code,
            retry_after,
            html,
        } => status_fault(code, retry_after, html),
        HttpFault::HtmlInsteadOfJson => html_response(
            StatusCode::OK,
            "<!DOCTYPE html><html><head><title>TradingView</title></head>\
             <body><p>Something went wrong. Please refresh the page.</p></body></html>",
        ),
        HttpFault::Oversized => oversized(),
        HttpFault::Hang => {
            let mut shutdown = shared.shutdown.clone();
            tokio::select! {
                _ = shutdown.wait_for(|&stopping| stopping) => {}
                () = sleep(HANG_LIMIT) => {}
            }
            plain(StatusCode::SERVICE_UNAVAILABLE)
        }
        HttpFault::RedirectLoop => redirect(StatusCode::FOUND, headers, &path, &query),
        HttpFault::Redirects(_) => redirect(
            StatusCode::FOUND,
            headers,
            &path,
            fault.next_query.as_deref().unwrap_or_default(),
        ),
        HttpFault::RedirectWithoutLocation => html_response(
            StatusCode::MOVED_PERMANENTLY,
            "<html><body>301 Moved Permanently</body></html>",
        ),
        // Answered through the route above.
        HttpFault::Trickle => plain(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// A fault to answer without the real route, and the query of a redirect's next hop.
struct FaultAnswer {
    fault: HttpFault,
    next_query: Option<String>,
}

impl FaultAnswer {
    fn plain(fault: HttpFault) -> FaultAnswer {
        FaultAnswer {
            fault,
            next_query: None,
        }
    }
}

impl HttpFault {
    fn with_next(self, query: String) -> FaultAnswer {
        FaultAnswer {
            fault: self,
            next_query: Some(query),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_percent_escapes_and_plus() {
        assert_eq!(
            parse_form("username=a%26b&password=p%2Bq+r%25s%C3%A9&remember=on&flag"),
            [
                ("username".to_owned(), "a&b".to_owned()),
                ("password".to_owned(), "p+q r%sé".to_owned()),
                ("remember".to_owned(), "on".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn origins_must_be_tradingview() {
        let headers = |origin: Option<&'static str>, referer: Option<&'static str>| {
            let mut map = HeaderMap::new();
            if let Some(origin) = origin {
                map.insert(header::ORIGIN, HeaderValue::from_static(origin));
            }
            if let Some(referer) = referer {
                map.insert(header::REFERER, HeaderValue::from_static(referer));
            }
            map
        };
        let site = Some("https://www.tradingview.com");
        assert!(trusted(&headers(
            site,
            Some("https://www.tradingview.com/")
        )));
        assert!(trusted(&headers(site, site)));
        assert!(trusted(&headers(
            site,
            Some("https://www.tradingview.com/chart/x/")
        )));
        assert!(!trusted(&headers(site, None)));
        assert!(!trusted(&headers(None, site)));
        assert!(!trusted(&headers(
            site,
            Some("https://www.tradingview.com.evil/")
        )));
        assert!(!trusted(&headers(Some("https://evil.example"), site)));
    }

    #[test]
    fn highlighting_keeps_case_and_finds_every_match() {
        assert_eq!(
            highlight("Apple Inc. apple", "APPLE"),
            "<em>Apple</em> Inc. <em>apple</em>"
        );
        assert_eq!(highlight("Gold", ""), "Gold");
        assert_eq!(highlight("Gold", "x"), "Gold");
    }

    #[test]
    fn hops_and_scan_paths() {
        assert_eq!(without_hop("text=a&hop=2&start=50"), "text=a&start=50");
        assert_eq!(without_hop("hop=1"), "");
        assert!(is_scan_path("/global/scan"));
        assert!(is_scan_path("/america/scan"));
        assert!(!is_scan_path("/scan"));
        assert!(!is_scan_path("//scan"));
        assert!(!is_scan_path("/a/b/scan"));
    }

    #[test]
    fn cookie_domains_drop_the_port() {
        let domain = |host: &'static str| {
            let mut map = HeaderMap::new();
            map.insert(header::HOST, HeaderValue::from_static(host));
            cookie_domain(&map)
        };
        assert_eq!(domain("127.0.0.1:8765"), "127.0.0.1");
        assert_eq!(domain("localhost"), "localhost");
        assert_eq!(domain("[::1]:80"), "[::1]");
        assert_eq!(cookie_domain(&HeaderMap::new()), "127.0.0.1");
    }
}

//! One blocking HTTP client with TradingView's headers, bounds on everything a server controls,
//! and redirects followed by hand.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::http::{Response, Uri, header};
use ureq::{Agent, Body, RequestBuilder};

use crate::HttpError;
use crate::Secret;
use crate::cookie::{Jar, Received, parse_set_cookie};
use crate::error::parse_retry_after;

/// How long an idle connection may be reused (for the next page of a search, say).
const POOLED_FOR: Duration = Duration::from_secs(2);

/// The `Origin` every request sends (TradingView's front end refuses others).
pub const ORIGIN: &str = "https://www.tradingview.com";
/// The `Referer` every request sends.
pub const REFERER: &str = "https://www.tradingview.com/";
/// A desktop Chrome user agent, the default [`HttpConfig::user_agent`].
pub const DEFAULT_USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/138.0.0.0 Safari/537.36";

/// `Accept` for the JSON endpoints.
pub(crate) const ACCEPT_JSON: &str = "application/json";
/// `Accept` for the home page.
pub(crate) const ACCEPT_HTML: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// Longest URL a redirect may lead to.
const MAX_URL: usize = 8192;

/// The hosts the endpoints live on, without a trailing slash.
///
/// ```
/// use tickwire_http::Bases;
///
/// let real = Bases::real();
/// assert_eq!(real.www, "https://www.tradingview.com");
///
/// // The emulator serves every path on its one port.
/// let local = Bases::single("http://127.0.0.1:8080/");
/// assert_eq!(local.scanner, "http://127.0.0.1:8080");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bases {
    /// Sign-in, second factor, the home page (`https://www.tradingview.com`).
    pub www: String,
    /// Symbol search (`https://symbol-search.tradingview.com`).
    pub search: String,
    /// The scanner (`https://scanner.tradingview.com`).
    pub scanner: String,
}

impl Bases {
    /// TradingView's own hosts.
    pub fn real() -> Self {
        Self {
            www: "https://www.tradingview.com".to_owned(),
            search: "https://symbol-search.tradingview.com".to_owned(),
            scanner: "https://scanner.tradingview.com".to_owned(),
        }
    }

    /// One base for all three (`--http-base`, the emulator), trailing slashes trimmed.
    pub fn single(url: &str) -> Self {
        let base = url.trim().trim_end_matches('/').to_owned();
        Self {
            www: base.clone(),
            search: base.clone(),
            scanner: base,
        }
    }
}

impl Default for Bases {
    fn default() -> Self {
        Self::real()
    }
}

/// How the client talks: where to, how long it waits, how much it reads.
///
/// ```
/// use std::time::Duration;
/// use tickwire_http::{Bases, HttpConfig};
///
/// let config = HttpConfig {
///     bases: Bases::single("http://127.0.0.1:8080"),
///     timeout: Duration::from_secs(5),
///     ..HttpConfig::default()
/// };
/// assert_eq!(config.max_body, 8 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where the endpoints are.
    pub bases: Bases,
    /// Longest wait for a connection (10 s).
    pub connect_timeout: Duration,
    /// Longest a whole request may take, redirects and the body included (30 s).
    pub timeout: Duration,
    /// Largest body read, in bytes (8 MiB); a longer one is [`HttpError::TooLarge`].
    pub max_body: usize,
    /// Most redirects followed (5); one more is [`HttpError::TooManyRedirects`].
    pub max_redirects: u32,
    /// The `User-Agent` sent ([`DEFAULT_USER_AGENT`]).
    pub user_agent: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bases: Bases::real(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_body: 8 * 1024 * 1024,
            max_redirects: 5,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
        }
    }
}

/// The blocking HTTP client every endpoint module takes. Cheap to clone (the connection pool
/// is shared). Every request sends `Origin`, `Referer`, the user agent and `Accept`; TLS is
/// always verified against the bundled web roots; redirects are followed by the client itself
/// (at most [`HttpConfig::max_redirects`], carrying the chain's cookies); statuses are read, not
/// turned into errors by the agent.
///
/// ```
/// use tickwire_http::{HttpClient, HttpConfig};
///
/// let client = HttpClient::new(HttpConfig::default());
/// assert_eq!(client.config().max_redirects, 5);
/// ```
#[derive(Clone)]
pub struct HttpClient {
    agent: Agent,
    config: Arc<HttpConfig>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HttpClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(HttpConfig::default())
    }
}

/// The request methods the endpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
}

/// A request body.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Payload<'a> {
    Empty,
    /// `application/x-www-form-urlencoded`, encoded by ureq.
    Form(&'a [(&'a str, &'a str)]),
    /// `application/json`, already serialized.
    Json(&'a [u8]),
}

/// One request, before redirects.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// Names the request in a [`HttpError::Forbidden`].
    pub(crate) what: &'static str,
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) accept: &'static str,
    /// Cookies to send (and to update from `Set-Cookie` along the chain).
    pub(crate) cookies: Jar,
    pub(crate) payload: Payload<'a>,
    /// Secrets in the payload (the password), kept out of errors with the cookie values.
    pub(crate) secrets: Vec<Secret>,
}

impl<'a> Request<'a> {
    pub(crate) fn get(what: &'static str, url: String) -> Self {
        Self {
            what,
            method: Method::Get,
            url,
            accept: ACCEPT_JSON,
            cookies: Jar::default(),
            payload: Payload::Empty,
            secrets: Vec::new(),
        }
    }

    pub(crate) fn post(what: &'static str, url: String, payload: Payload<'a>) -> Self {
        Self {
            what,
            method: Method::Post,
            url,
            accept: ACCEPT_JSON,
            cookies: Jar::default(),
            payload,
            secrets: Vec::new(),
        }
    }
}

/// The final answer of a request chain (not a redirect), body read within the bound.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) what: &'static str,
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: Vec<u8>,
    /// What the chain's `Set-Cookie` headers did.
    pub(crate) received: Received,
    /// Every secret the chain sent or received, blanked in anything quoted from the body.
    pub(crate) secrets: Vec<Secret>,
}

impl Reply {
    /// Whether the status is 2xx.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// This reply when its status is 2xx, else the typed error for the status.
    pub(crate) fn success(self) -> Result<Self, HttpError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(HttpError::from_status(
                self.status,
                self.retry_after,
                &self.body,
                self.what,
                &self.secrets,
            ))
        }
    }

    /// The body as JSON, or [`HttpError::NotJson`].
    pub(crate) fn json(&self) -> Result<serde_json::Value, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|_| HttpError::not_json(self.status, &self.body, &self.secrets))
    }
}

impl HttpClient {
    /// A client for `config`.
    pub fn new(config: HttpConfig) -> Self {
        let agent_config = Agent::config_builder()
            // Statuses are read here, never turned into agent errors.
            .http_status_as_error(false)
            // Redirects are followed below, counted, with the chain's cookies.
            .max_redirects(0)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_global(Some(config.timeout))
            // Requests here come seconds to hours apart, and a server may close an idle
            // connection at any time: reusing one only within a burst (search pages) keeps a
            // stale connection from failing a request ("closed early").
            .max_idle_age(POOLED_FOR)
            .user_agent(config.user_agent.as_str())
            // The emulator is plain http on loopback; the real bases are https.
            .https_only(false)
            // Verified against the bundled web roots; verification is never turned off.
            .tls_config(ureq::tls::TlsConfig::builder().build())
            .build();
        Self {
            agent: Agent::new_with_config(agent_config),
            config: Arc::new(config),
        }
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Where the endpoints are.
    pub fn bases(&self) -> &Bases {
        &self.config.bases
    }

    /// Sends `request`, following redirects, and reads the final answer's body.
    pub(crate) fn execute(&self, request: Request<'_>) -> Result<Reply, HttpError> {
        let started = Instant::now();
        let Request {
            what,
            mut method,
            mut url,
            accept,
            cookies: mut jar,
            mut payload,
            mut secrets,
        } = request;
        secrets.extend(jar.values().cloned());
        let first = parse_url(&url)?;
        let mut received = Received::default();
        let mut redirects: u32 = 0;
        loop {
            let remaining = self
                .config
                .timeout
                .checked_sub(started.elapsed())
                .filter(|left| !left.is_zero())
                .ok_or(HttpError::Timeout)?;
            let target = parse_url(&url)?;
            let same_site = may_share_cookies(&first, &target);
            let cookie = if same_site { jar.header() } else { None };
            let response =
                self.send_once(method, &url, accept, cookie.as_ref(), payload, remaining)?;
            let status = response.status().as_u16();
            if same_site {
                for value in response.headers().get_all(header::SET_COOKIE) {
                    if let Some((name, value)) = value.to_str().ok().and_then(parse_set_cookie) {
                        secrets.extend(value.clone());
                        jar.set(&name, value.clone());
                        received.record(&name, value);
                    }
                }
            }
            if (300..400).contains(&status) {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .ok_or(HttpError::BadRedirect)?;
                if redirects >= self.config.max_redirects {
                    return Err(HttpError::TooManyRedirects {
                        limit: self.config.max_redirects,
                    });
                }
                redirects = redirects.saturating_add(1);
                url = resolve_location(&target, location)?;
                // As browsers do: 303, and 301/302 after a POST, continue as a GET without body.
                if status == 303 || (matches!(status, 301 | 302) && method == Method::Post) {
                    method = Method::Get;
                    payload = Payload::Empty;
                }
                continue;
            }
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_retry_after);
            let body = read_body(response.into_body(), self.config.max_body)?;
            return Ok(Reply {
                what,
                status,
                retry_after,
                body,
                received,
                secrets,
            });
        }
    }

    fn send_once(
        &self,
        method: Method,
        url: &str,
        accept: &str,
        cookie: Option<&Secret>,
        payload: Payload<'_>,
        remaining: Duration,
    ) -> Result<Response<Body>, HttpError> {
        let result = match method {
            Method::Get => {
                let builder = self
                    .agent
                    .get(url)
                    .config()
                    .timeout_global(Some(remaining))
                    .build();
                self.headers(builder, accept, cookie).call()
            }
            Method::Post => {
                let builder = self
                    .agent
                    .post(url)
                    .config()
                    .timeout_global(Some(remaining))
                    // A POST is not retried, so it never goes on a connection the server may
                    // just have closed: always a fresh one.
                    .max_idle_age(Duration::ZERO)
                    .build();
                let builder = self.headers(builder, accept, cookie);
                match payload {
                    Payload::Empty => builder.send_empty(),
                    Payload::Form(fields) => builder.send_form(fields.iter().copied()),
                    Payload::Json(bytes) => builder.content_type("application/json").send(bytes),
                }
            }
        };
        result.map_err(map_error)
    }

    fn headers<B>(
        &self,
        builder: RequestBuilder<B>,
        accept: &str,
        cookie: Option<&Secret>,
    ) -> RequestBuilder<B> {
        let builder = builder
            .header(header::ORIGIN, ORIGIN)
            .header(header::REFERER, REFERER)
            .header(header::USER_AGENT, self.config.user_agent.as_str())
            .header(header::ACCEPT, accept);
        match cookie {
            Some(cookie) => builder.header(header::COOKIE, cookie.expose()),
            None => builder,
        }
    }
}

/// Reads at most `max` bytes; a body that is longer (by its `Content-Length`, or by one byte
/// read past the bound) is [`HttpError::TooLarge`] and is not read further.
fn read_body(body: Body, max: usize) -> Result<Vec<u8>, HttpError> {
    let bound = u64::try_from(max).unwrap_or(u64::MAX);
    let declared = body.content_length();
    if declared.is_some_and(|length| length > bound) {
        return Err(HttpError::TooLarge { limit: max });
    }
    let capacity = declared
        .and_then(|length| usize::try_from(length).ok())
        .unwrap_or(0)
        .min(max)
        .min(1024 * 1024);
    let mut buffer = Vec::with_capacity(capacity);
    body.into_reader()
        .take(bound.saturating_add(1))
        .read_to_end(&mut buffer)
        .map_err(|error| map_error(ureq::Error::from(error)))?;
    if buffer.len() > max {
        return Err(HttpError::TooLarge { limit: max });
    }
    Ok(buffer)
}

fn map_error(error: ureq::Error) -> HttpError {
    match error {
        ureq::Error::Timeout(_) => HttpError::Timeout,
        ureq::Error::Io(error) => map_io(&error),
        ureq::Error::HostNotFound => HttpError::Connect("host not found".to_owned()),
        ureq::Error::ConnectionFailed => HttpError::Connect("connection failed".to_owned()),
        ureq::Error::BadUri(text) => HttpError::BadUrl(text),
        ureq::Error::RequireHttpsOnly(text) => HttpError::BadUrl(text),
        // Invalid characters in a URL or header value (the value itself is not quoted).
        ureq::Error::Http(error) => HttpError::BadUrl(format!("invalid request: {error}")),
        ureq::Error::Tls(text) => HttpError::Tls(text.to_owned()),
        ureq::Error::Rustls(error) => HttpError::Tls(error.to_string()),
        ureq::Error::TlsRequired => HttpError::Tls("the connection is not TLS".to_owned()),
        // The protocol error may quote a response header (a Set-Cookie among them): not kept.
        ureq::Error::Protocol(_) => HttpError::Io("malformed HTTP response".to_owned()),
        ureq::Error::LargeResponseHeader(..) => {
            HttpError::Io("the response headers are too large".to_owned())
        }
        ureq::Error::BodyExceedsLimit(limit) => HttpError::TooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        },
        ureq::Error::TooManyRedirects => HttpError::TooManyRedirects { limit: 0 },
        other => HttpError::Io(other.to_string()),
    }
}

fn map_io(error: &std::io::Error) -> HttpError {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => HttpError::Timeout,
        ErrorKind::ConnectionRefused
        | ErrorKind::AddrNotAvailable
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::NetworkDown => HttpError::Connect(error.to_string()),
        ErrorKind::UnexpectedEof => HttpError::Io("the connection closed early".to_owned()),
        _ => HttpError::Io(error.to_string()),
    }
}

/// An absolute http(s) URL with a host.
fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let bad = || HttpError::BadUrl(crate::text::clean(url, 200));
    let uri = url.parse::<Uri>().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(uri)
}

/// Whether a URL starts with a scheme (`x:` before any `/`, `?` or `#`).
fn has_scheme(location: &str) -> bool {
    let Some(colon) = location.find(':') else {
        return false;
    };
    let Some(scheme) = location.get(..colon) else {
        return false;
    };
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `location` resolved against the URL that answered with it. Only http(s) targets are
/// followed; anything unparsable is [`HttpError::BadRedirect`].
pub(crate) fn resolve_location(base: &Uri, location: &str) -> Result<String, HttpError> {
    let location = location.trim();
    // The fragment is for the browser; it is never sent.
    let location = location.split('#').next().unwrap_or_default();
    if location.is_empty()
        || location.len() > MAX_URL
        || !location.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(HttpError::BadRedirect);
    }
    let scheme = base.scheme_str().ok_or(HttpError::BadRedirect)?;
    let authority = base
        .authority()
        .map(|authority| authority.as_str())
        .ok_or(HttpError::BadRedirect)?;
    let resolved = if has_scheme(location) {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if location.starts_with('?') {
        format!("{scheme}://{authority}{}{location}", base.path())
    } else {
        let path = base.path();
        let directory = path
            .rfind('/')
            .and_then(|slash| path.get(..=slash))
            .unwrap_or("/");
        format!("{scheme}://{authority}{directory}{location}")
    };
    parse_url(&resolved).map_err(|_| HttpError::BadRedirect)?;
    Ok(resolved)
}

fn is_tradingview(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == "tradingview.com" || host.ends_with(".tradingview.com")
}

/// Whether the chain's cookies go to (and are taken from) `target`: the same host as the first
/// request, or both on tradingview.com; never from https down to http.
fn may_share_cookies(first: &Uri, target: &Uri) -> bool {
    if first.scheme_str() == Some("https") && target.scheme_str() != Some("https") {
        return false;
    }
    match (first.host(), target.host()) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b) || (is_tradingview(a) && is_tradingview(b)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    fn resolve(base: &str, location: &str) -> Result<String, HttpError> {
        resolve_location(&uri(base), location)
    }

    #[test]
    fn locations_resolve_against_the_request_url() {
        let base = "http://127.0.0.1:9000/a/b/c?x=1";
        assert_eq!(
            resolve(base, "/next").unwrap(),
            "http://127.0.0.1:9000/next"
        );
        assert_eq!(resolve(base, "d").unwrap(), "http://127.0.0.1:9000/a/b/d");
        assert_eq!(
            resolve(base, "../d").unwrap(),
            "http://127.0.0.1:9000/a/b/../d"
        );
        assert_eq!(
            resolve(base, "?y=2").unwrap(),
            "http://127.0.0.1:9000/a/b/c?y=2"
        );
        assert_eq!(
            resolve(base, "https://www.tradingview.com/x#frag").unwrap(),
            "https://www.tradingview.com/x"
        );
        assert_eq!(
            resolve("https://tradingview.com/", "//www.tradingview.com/").unwrap(),
            "https://www.tradingview.com/"
        );
        assert_eq!(resolve("http://h", "x").unwrap(), "http://h/x");
    }

    #[test]
    fn unusable_locations_are_bad_redirects() {
        let base = "https://www.tradingview.com/";
        for location in [
            "",
            "   ",
            "javascript:alert(1)",
            "ftp://example.com/",
            "file:///etc/passwd",
            "/with space",
            "/new\r\nline",
            "/é",
            "http://",
            "https:///nohost",
        ] {
            assert_eq!(
                resolve(base, location),
                Err(HttpError::BadRedirect),
                "{location:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_URL));
        assert_eq!(resolve(base, &long), Err(HttpError::BadRedirect));
    }

    #[test]
    fn cookies_stay_on_the_site() {
        let share = |a: &str, b: &str| may_share_cookies(&uri(a), &uri(b));
        assert!(share("http://127.0.0.1:1/", "http://127.0.0.1:2/x"));
        assert!(share(
            "https://tradingview.com/",
            "https://www.tradingview.com/"
        ));
        assert!(share(
            "https://www.tradingview.com/",
            "https://fr.tradingview.com/"
        ));
        assert!(!share(
            "https://www.tradingview.com/",
            "https://evil.example/"
        ));
        assert!(!share(
            "https://www.tradingview.com/",
            "https://eviltradingview.com/"
        ));
        assert!(!share(
            "https://www.tradingview.com/",
            "http://www.tradingview.com/"
        ));
        assert!(!share("http://127.0.0.1/", "http://localhost/"));
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(parse_url("http://127.0.0.1:1/x").is_ok());
        assert!(parse_url("https://www.tradingview.com").is_ok());
        assert!(matches!(parse_url("/relative"), Err(HttpError::BadUrl(_))));
        assert!(matches!(parse_url("ws://h/"), Err(HttpError::BadUrl(_))));
        assert!(matches!(parse_url("not a url"), Err(HttpError::BadUrl(_))));
    }

    #[test]
    fn bases() {
        assert_eq!(Bases::single(" http://h:1// ").www, "http://h:1");
        assert_eq!(Bases::default(), Bases::real());
        let config = HttpConfig::default();
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.timeout, Duration::from_secs(30));
        assert_eq!(config.max_redirects, 5);
        assert!(config.user_agent.contains("Chrome/"));
    }
}

//! The HTTP side as the driver sees it: a [`TokenProvider`] backed by a stored session and a
//! [`Poller`] over the scanner.
//!
//! Both run each blocking request on a thread of its own and hand the answer back as a future,
//! so they serve either runtime. Neither decides anything: the core asks for one token or one
//! poll at a time, and after a failure decides (backoff, jitter, breaker) when to ask again.
//!
//! ```no_run
//! use tickwire_driver::Options;
//! use tickwire_http::feed::{ScannerPoller, SessionTokens};
//! use tickwire_http::scanner::Scanner;
//! use tickwire_http::session::Session;
//! use tickwire_http::{HttpClient, HttpConfig};
//!
//! let client = HttpClient::new(HttpConfig::default());
//! let path = tickwire_http::session::default_session_path().expect("a home directory");
//! let session = Session::load(&path)?;
//! let tokens = SessionTokens::new(client.clone(), session.clone(), Some(path));
//! let first = tokens.fetch_now()?; // the token to start with, and its lifetime
//! let poller = ScannerPoller::new(Scanner::new(client).with_cookies(Some(session.cookies)));
//! let options = Options {
//!     token_provider: Some(tokens.provider()),
//!     poller: Some(std::sync::Arc::new(poller)),
//!     ..Options::default()
//! };
//! # let _ = (first, options);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use futures::future::{BoxFuture, FutureExt};
use tickwire_driver::{AuthToken, PollError, PollErrorKind, PolledQuote, Poller, TokenProvider};

use crate::scanner::Scanner;
use crate::session::{Session, UserInfo};
use crate::token::{TokenError, fetch_auth_token};
use crate::{HttpClient, HttpError};

/// Runs `work` on a thread of its own; the future ends with its answer, or with `fallback`
/// should the thread die.
fn off_thread<T: Send + 'static>(
    name: &str,
    fallback: impl FnOnce() -> T + Send + 'static,
    work: impl FnOnce() -> T + Send + 'static,
) -> BoxFuture<'static, T> {
    let (answer, answered) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // The receiver may be gone (the feed closed); the answer is then moot.
            let _ = answer.send(work());
        });
    match spawned {
        Ok(_) => answered
            .map(|result| result.unwrap_or_else(|_| fallback()))
            .boxed(),
        Err(_) => futures::future::ready(fallback()).boxed(),
    }
}

/// The auth token as the session's cookies yield it, refreshed on the core's request.
///
/// Every fetch reads the home page with the cookies (never a password login: that happens only
/// when the user runs `tickwire login`). Cookies the page refreshes are saved back to the
/// session file. A signed-out session is remembered ([`SessionTokens::signed_out`]) so the
/// application can tell the user to sign in again instead of waiting.
#[derive(Debug, Clone)]
pub struct SessionTokens {
    inner: Arc<TokensInner>,
}

#[derive(Debug)]
struct TokensInner {
    client: HttpClient,
    session: Mutex<Session>,
    path: Option<PathBuf>,
    last_error: Mutex<Option<TokenError>>,
}

/// A token fetched from the session: what to start the feed with.
#[derive(Debug, Clone)]
pub struct StartToken {
    /// The token and its lifetime, for `Config::auth_token` / `Config::auth_token_lifetime`.
    pub token: AuthToken,
    /// Who it belongs to.
    pub user: UserInfo,
}

impl SessionTokens {
    /// Tokens from `session`; refreshed cookies are saved to `path` when given.
    pub fn new(client: HttpClient, session: Session, path: Option<PathBuf>) -> SessionTokens {
        SessionTokens {
            inner: Arc::new(TokensInner {
                client,
                session: Mutex::new(session),
                path,
                last_error: Mutex::new(None),
            }),
        }
    }

    /// Fetches a token now (blocking): the one to start with.
    ///
    /// # Errors
    /// [`TokenError::SessionExpired`] when the cookies are signed out, or the HTTP failure.
    pub fn fetch_now(&self) -> Result<StartToken, TokenError> {
        self.inner.fetch()
    }

    /// The provider for `tickwire_driver::Options::token_provider`.
    pub fn provider(&self) -> TokenProvider {
        let tokens = self.clone();
        Arc::new(move || {
            let inner = Arc::clone(&tokens.inner);
            off_thread(
                "tickwire-token",
                || None,
                move || inner.fetch().ok().map(|start| start.token),
            )
        })
    }

    /// Whether the last fetch found the session signed out or expired (then only `tickwire
    /// login` helps).
    pub fn signed_out(&self) -> bool {
        matches!(
            *self
                .inner
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            Some(TokenError::SessionExpired)
        )
    }

    /// The last fetch's failure, if the last fetch failed.
    pub fn last_error(&self) -> Option<TokenError> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl TokensInner {
    fn fetch(&self) -> Result<StartToken, TokenError> {
        let cookies = self
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cookies
            .clone();
        let result = fetch_auth_token(&self.client, &cookies);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = result.as_ref().err().cloned();
        let fetched = result?;
        if let Some(updated) = fetched.updated_cookies {
            let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
            session.cookies = updated;
            session.user = Some(fetched.user.clone());
            if let Some(path) = &self.path {
                // The old cookies still work for now; a failed save is not worth losing the token.
                let _ = session.save(path);
            }
        }
        let lifetime = fetched
            .claims
            .as_ref()
            .and_then(|claims| claims.exp)
            .map(remaining_until);
        let token = AuthToken::new(fetched.token.expose());
        let token = match lifetime {
            Some(lifetime) => token.valid_for(lifetime),
            None => token,
        };
        Ok(StartToken {
            token,
            user: fetched.user,
        })
    }
}

/// Fallback polls over the scanner: one request per poll for every symbol (chunked by the
/// scanner), rows matched by ticker.
///
/// Quote keys that are `=`+JSON specs (`={"symbol":"NASDAQ:AAPL","session":"extended"}`) are
/// polled by their `symbol` and answered under the key as subscribed.
#[derive(Debug, Clone)]
pub struct ScannerPoller {
    scanner: Arc<Scanner>,
}

impl ScannerPoller {
    /// Polls through `scanner`.
    pub fn new(scanner: Scanner) -> ScannerPoller {
        ScannerPoller {
            scanner: Arc::new(scanner),
        }
    }
}

impl Poller for ScannerPoller {
    fn poll(
        &self,
        symbols: Vec<Arc<str>>,
    ) -> BoxFuture<'static, Result<Vec<PolledQuote>, PollError>> {
        let scanner = Arc::clone(&self.scanner);
        off_thread(
            "tickwire-poll",
            || {
                Err(PollError::new(
                    PollErrorKind::Network,
                    "the poll thread ended without an answer",
                ))
            },
            move || poll_once(&scanner, &symbols),
        )
    }
}

fn poll_once(scanner: &Scanner, symbols: &[Arc<str>]) -> Result<Vec<PolledQuote>, PollError> {
    // Ticker → the keys subscribed under it (a plain key and a spec may share one ticker).
    let mut keys: HashMap<String, Vec<Arc<str>>> = HashMap::with_capacity(symbols.len());
    for symbol in symbols {
        keys.entry(ticker_of(symbol))
            .or_default()
            .push(Arc::clone(symbol));
    }
    let tickers: Vec<&str> = keys.keys().map(String::as_str).collect();
    let outcome = scanner.scan(&tickers).map_err(poll_error)?;
    let mut quotes = Vec::with_capacity(outcome.rows.len());
    for row in outcome.rows {
        for key in keys.get(&row.ticker).into_iter().flatten() {
            quotes.push(PolledQuote {
                symbol: key.to_string(),
                last_price: row.close,
                change: row.change_abs,
                change_percent: row.change_percent,
                volume: row.volume,
                update_mode: row.update_mode.clone(),
                description: row.description.clone(),
                ..PolledQuote::default()
            });
        }
    }
    Ok(quotes)
}

/// The scanner ticker of a quote key: the key itself, or the `symbol` of an `=`+JSON spec.
fn ticker_of(key: &str) -> String {
    key.strip_prefix('=')
        .and_then(|spec| serde_json::from_str::<serde_json::Value>(spec).ok())
        .and_then(|spec| spec.get("symbol")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| key.to_owned())
}

/// The poll policy's view of an HTTP failure.
pub fn poll_error(error: HttpError) -> PollError {
    let kind = match &error {
        HttpError::RateLimited { retry_after } => PollErrorKind::RateLimited {
            retry_after: *retry_after,
        },
        HttpError::Forbidden { .. } => PollErrorKind::Status(403),
        HttpError::Status { code, .. } => PollErrorKind::Status(*code),
        HttpError::Timeout => PollErrorKind::Timeout,
        HttpError::Connect(_) | HttpError::Tls(_) | HttpError::Io(_) | HttpError::BadUrl(_) => {
            PollErrorKind::Network
        }
        _ => PollErrorKind::BadResponse,
    };
    PollError::new(kind, error.to_string())
}

/// How long a JWT is still good for, from now (its `exp`); for callers that build a `Config`
/// by hand.
pub fn lifetime_of(token: &str) -> Option<Duration> {
    crate::jwt::claims(token)?.exp.map(remaining_until)
}

/// Time left until `exp` (Unix seconds), measured to the sub-second: whole seconds on our side
/// would read a token issued late in a second as valid for most of a second longer than it is.
fn remaining_until(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_polled_by_their_symbol() {
        assert_eq!(ticker_of("NASDAQ:AAPL"), "NASDAQ:AAPL");
        assert_eq!(
            ticker_of(r#"={"symbol":"NASDAQ:AAPL","session":"extended"}"#),
            "NASDAQ:AAPL"
        );
        assert_eq!(ticker_of("={broken"), "={broken");
    }

    #[test]
    fn http_failures_map_to_the_poll_policy_kinds() {
        let kind = |error| poll_error(error).kind;
        assert_eq!(
            kind(HttpError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }),
            PollErrorKind::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(kind(HttpError::Timeout), PollErrorKind::Timeout);
        assert_eq!(
            kind(HttpError::TooLarge { limit: 8 }),
            PollErrorKind::BadResponse
        );
    }
}

//! Who a feed command signs in as (a stored session, a fixed token, or nobody), where the HTTP
//! side goes, and the polling fallback: the flags and what they build.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tickwire_core::client::{
    ANONYMOUS_TOKEN, Config, DisconnectCause, PollingConfig, parse_duration,
};
use tickwire_driver::{Feed, Options, Poller};
use tickwire_http::feed::{ScannerPoller, SessionTokens};
use tickwire_http::scanner::Scanner;
use tickwire_http::session::{self, Cookies, Session, SessionFileError, UserInfo};
use tickwire_http::token::TokenError;
use tickwire_http::{Bases, HttpClient, HttpConfig, Secret};

use crate::Failure;
use crate::output::human_duration;

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// Where every HTTP call goes.
#[derive(Debug, Clone, Args)]
pub(crate) struct HttpArgs {
    /// One base URL for every HTTP call (sign-in, token, search, scanner) instead of
    /// TradingView's hosts, e.g. the emulator's `http://127.0.0.1:PORT`.
    #[arg(long, env = "TICKWIRE_HTTP_BASE", value_parser = http_base)]
    pub(crate) http_base: Option<String>,
}

fn http_base(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if (trimmed.starts_with("http://") || trimmed.starts_with("https://"))
        && trimmed.len() > "https://".len()
    {
        Ok(trimmed.to_owned())
    } else {
        Err(format!("{text:?}: expected an http:// or https:// URL"))
    }
}

impl HttpArgs {
    /// The client for these bases, with the crate's bounds (8 MiB bodies, 5 redirects, 30 s).
    pub(crate) fn client(&self) -> HttpClient {
        HttpClient::new(HttpConfig {
            bases: self
                .http_base
                .as_deref()
                .map_or_else(Bases::real, Bases::single),
            ..HttpConfig::default()
        })
    }
}

/// Which session a command uses.
#[derive(Debug, Clone, Args)]
pub(crate) struct SessionArgs {
    /// The session file `tickwire login` wrote (default:
    /// $XDG_CONFIG_HOME/tickwire/session.json, else ~/.config/tickwire/session.json). A fixed
    /// token in TICKWIRE_AUTH_TOKEN takes precedence (it cannot be refreshed).
    #[arg(long, env = "TICKWIRE_SESSION")]
    pub(crate) session: Option<PathBuf>,
}

impl SessionArgs {
    /// The file to use, and whether the user named it.
    pub(crate) fn path(&self) -> Result<(PathBuf, bool), Failure> {
        match &self.session {
            Some(path) => Ok((path.clone(), true)),
            None => session::default_session_path()
                .map(|path| (path, false))
                .ok_or_else(|| {
                    Failure::Message(
                        "no configuration directory (neither XDG_CONFIG_HOME nor HOME is set): \
                         give --session FILE"
                            .to_owned(),
                    )
                }),
        }
    }
}

/// Who a feed signs in as.
#[derive(Debug, Clone, Args)]
pub(crate) struct AccessArgs {
    #[command(flatten)]
    pub(crate) session: SessionArgs,
    /// Ignore any stored session and connect anonymously (delayed data on many exchanges).
    #[arg(long, env = "TICKWIRE_ANONYMOUS", conflicts_with = "session")]
    pub(crate) anonymous: bool,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
}

/// What the stream falls back to while it is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Fallback {
    /// Nothing: wait for the stream.
    None,
    /// Poll the scanner over HTTP until the stream is back.
    Poll,
}

/// The polling fallback's flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct FallbackArgs {
    /// While the stream is unavailable, poll quotes over HTTP (the scanner); the stream is
    /// retried throughout and takes over again when it is back.
    #[arg(long, value_enum, env = "TICKWIRE_FALLBACK", default_value = "none")]
    pub(crate) fallback: Fallback,
    /// Time between polls (failed polls back off from there).
    #[arg(long, env = "TICKWIRE_POLL_INTERVAL", value_parser = duration, default_value = "10s")]
    pub(crate) poll_interval: Duration,
    /// Start polling once the stream has been unavailable this long (or when the breaker opens).
    #[arg(long, env = "TICKWIRE_POLL_AFTER", value_parser = duration, default_value = "30s")]
    pub(crate) poll_after: Duration,
}

impl FallbackArgs {
    /// Sets (or clears) the core's polling configuration.
    pub(crate) fn apply(&self, config: &mut Config) -> Result<(), Failure> {
        config.polling = match self.fallback {
            Fallback::None => None,
            Fallback::Poll => {
                if self.poll_interval.is_zero() {
                    return Err(Failure::Message(
                        "--poll-interval must be positive".to_owned(),
                    ));
                }
                Some(PollingConfig {
                    interval: self.poll_interval,
                    unavailable_after: self.poll_after,
                    ..PollingConfig::default()
                })
            }
        };
        Ok(())
    }
}

/// Who the feed is, once resolved.
#[derive(Debug)]
enum Identity {
    /// `TICKWIRE_AUTH_TOKEN`: nothing can refresh it.
    Fixed(Secret),
    /// No session.
    Anonymous,
    /// A stored session: tokens from its cookies, refreshed through the core.
    Session {
        tokens: SessionTokens,
        cookies: Cookies,
        user: Option<UserInfo>,
        path: PathBuf,
    },
}

/// The resolved identity and the HTTP client, for building the feed's options.
#[derive(Debug)]
pub(crate) struct Access {
    identity: Identity,
    http: HttpClient,
}

impl AccessArgs {
    /// Resolves who the feed is and puts the starting token into `config`. A `fixed_token`
    /// (`TICKWIRE_AUTH_TOKEN`) wins over any session; `--anonymous` ignores the session; otherwise the
    /// named session file must load, and the default one is used when it exists (and
    /// `default_session` allows it: not for the relay's embedded emulator).
    pub(crate) async fn resolve(
        &self,
        config: &mut Config,
        fixed_token: bool,
        default_session: bool,
    ) -> Result<Access, Failure> {
        let http = self.http.client();
        if fixed_token {
            return Ok(Access {
                identity: Identity::Fixed(Secret::new(config.auth_token.clone())),
                http,
            });
        }
        if self.anonymous || (!default_session && self.session.session.is_none()) {
            return Ok(Access {
                identity: Identity::Anonymous,
                http,
            });
        }
        let (path, named) = self.session.path()?;
        let session = match load_session(path.clone()).await {
            Ok(session) => session,
            Err(SessionFileError::Missing { .. }) if !named => {
                return Ok(Access {
                    identity: Identity::Anonymous,
                    http,
                });
            }
            Err(error) => return Err(Failure::Message(error.to_string())),
        };
        let tokens = SessionTokens::new(http.clone(), session.clone(), Some(path.clone()));
        let fetching = tokens.clone();
        let first = tokio::task::spawn_blocking(move || fetching.fetch_now())
            .await
            .map_err(|_| Failure::Message("the token fetch thread failed".to_owned()))?;
        let user = match first {
            Ok(start) => {
                config.auth_token = start.token.token;
                config.auth_token_lifetime = start.token.lifetime;
                Some(start.user)
            }
            Err(TokenError::SessionExpired) => {
                return Err(Failure::Message(format!(
                    "the session in {} is signed out or expired: run `tickwire login`",
                    path.display()
                )));
            }
            Err(TokenError::Http(error)) => {
                // Start anonymously and have the core ask for the session's token at once:
                // it retries with backoff and hands the token to the open connection.
                eprintln!(
                    "tickwire: cannot fetch the session's auth token yet ({error}); starting with \
                     delayed anonymous data until it arrives"
                );
                config.auth_token = ANONYMOUS_TOKEN.to_owned();
                config.auth_token_lifetime = Some(Duration::ZERO);
                session.user.clone()
            }
        };
        Ok(Access {
            identity: Identity::Session {
                tokens,
                cookies: session.cookies,
                user,
                path,
            },
            http,
        })
    }
}

async fn load_session(path: PathBuf) -> Result<Session, SessionFileError> {
    match tokio::task::spawn_blocking(move || Session::load(&path)).await {
        Ok(result) => result,
        Err(_) => Err(SessionFileError::Io {
            path: PathBuf::new(),
            message: "the session file reader failed".to_owned(),
        }),
    }
}

impl Access {
    /// The driver options: the session's token provider, and the scanner poller when the core
    /// polls (`config.polling`).
    pub(crate) fn options(&self, config: &Config) -> Options {
        let mut options = Options::default();
        if let Identity::Session { tokens, .. } = &self.identity {
            options.token_provider = Some(tokens.provider());
        }
        if config.polling.is_some() {
            options.poller = Some(self.poller());
        }
        options
    }

    /// The scanner poller, with the session's cookies when there is one (real-time where the
    /// account is entitled).
    pub(crate) fn poller(&self) -> Arc<dyn Poller> {
        let cookies = match &self.identity {
            Identity::Session { cookies, .. } => Some(cookies.clone()),
            _ => None,
        };
        Arc::new(ScannerPoller::new(
            Scanner::new(self.http.clone()).with_cookies(cookies),
        ))
    }

    /// The failure to stop with once the server rejected the token for good: a fixed token
    /// was rejected, or the session turned out signed out. A session whose token fetch failed
    /// for another reason keeps trying (the core backs off).
    pub(crate) fn rejected(&self, feed: &Feed) -> Option<Failure> {
        match &self.identity {
            Identity::Fixed(token) => crate::token::rejected(feed, token.expose()),
            Identity::Anonymous => crate::token::rejected(feed, ANONYMOUS_TOKEN),
            // The current token works until it expires: only its rejection ends the feed.
            Identity::Session { tokens, path, .. } => {
                let rejected = feed
                    .status()
                    .client
                    .counters
                    .disconnects
                    .get(DisconnectCause::BadAuthToken)
                    > 0;
                (rejected && tokens.signed_out()).then(|| {
                    Failure::Message(format!(
                        "the session in {} is signed out or expired: run `tickwire login`",
                        path.display()
                    ))
                })
            }
        }
    }

    /// The warning to show once when a refresh found the session signed out while the current
    /// token still works.
    pub(crate) fn signed_out_warning(&self) -> Option<String> {
        match &self.identity {
            Identity::Session { tokens, path, .. } if tokens.signed_out() => Some(format!(
                "the session in {} is signed out or expired: data flows until the current auth \
                 token expires; run `tickwire login` to go on after that",
                path.display()
            )),
            _ => None,
        }
    }

    /// One line for stderr: who the feed is and what data that gets.
    pub(crate) fn describe(&self, config: &Config) -> String {
        match &self.identity {
            Identity::Fixed(token) => format!(
                "signed in with TICKWIRE_AUTH_TOKEN ({}); it cannot be refreshed",
                crate::token::describe(token.expose())
            ),
            Identity::Anonymous => "anonymous: delayed data on many exchanges; run `tickwire \
                                    login` to use your account"
                .to_owned(),
            Identity::Session { user, path, .. } => {
                let who = user.as_ref().map_or_else(
                    || "a stored session".to_owned(),
                    |user| match &user.plan {
                        Some(plan) => format!("{} ({plan})", user.username),
                        None => user.username.clone(),
                    },
                );
                let validity = match config.auth_token_lifetime {
                    None => "of unknown lifetime".to_owned(),
                    Some(lifetime) if lifetime.is_zero() => "not fetched yet".to_owned(),
                    Some(lifetime) => format!("valid for {}", human_duration(lifetime)),
                };
                format!(
                    "signed in as {who} from {}; auth token {validity}, refreshed from the \
                     session before it expires",
                    path.display()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_token_or_cookie() {
        let fixed = Access {
            identity: Identity::Fixed(Secret::new("eyJfixed-secret")),
            http: HttpArgs { http_base: None }.client(),
        };
        let session = Session::new(Cookies::new("cookie-secret"), None);
        let tokens = SessionTokens::new(fixed.http.clone(), session.clone(), None);
        let signed_in = Access {
            identity: Identity::Session {
                tokens,
                cookies: session.cookies,
                user: None,
                path: PathBuf::from("/tmp/session.json"),
            },
            http: fixed.http.clone(),
        };
        let shown = format!("{fixed:?} {signed_in:?}");
        assert!(
            !shown.contains("fixed-secret") && !shown.contains("cookie-secret"),
            "{shown}"
        );
    }

    #[test]
    fn http_bases_must_be_http_urls() {
        assert!(http_base("http://127.0.0.1:8080").is_ok());
        assert!(http_base("https://example.com/").is_ok());
        assert!(http_base("ws://127.0.0.1:1").is_err());
        assert!(http_base("https://").is_err());
    }
}

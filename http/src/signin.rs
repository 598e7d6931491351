//! Password sign-in and the TOTP second factor. Each call makes exactly one request and never
//! retries: repeated logins lead to captchas and lockouts, so every refusal says what to do
//! instead.
//!
//! ```no_run
//! use tickwire_http::signin::{self, SignIn};
//! use tickwire_http::{HttpClient, HttpConfig, Secret, totp};
//!
//! let client = HttpClient::new(HttpConfig::default());
//! let password = Secret::from("correct horse battery staple");
//! let session = match signin::sign_in(&client, "alice", &password)? {
//!     SignIn::Done(session) => session,
//!     SignIn::SecondFactor(pending) => {
//!         let secret = totp::decode_secret("JBSWY3DPEHPK3PXP").expect("base32");
//!         let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
//!         signin::second_factor(&client, pending, &totp::code_at(&secret, now.as_secs()))?
//!     }
//! };
//! # let _ = session;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use serde_json::Value;

use crate::client::{Payload, Reply, Request};
use crate::error::{MESSAGE_CHARS, scalar_text};
use crate::session::{Cookies, Session, UserInfo};
use crate::{HttpClient, HttpError, text};

/// What a password sign-in led to.
#[derive(Debug)]
pub enum SignIn {
    /// Signed in.
    Done(Session),
    /// TradingView wants the second factor: pass this to [`second_factor`] with the code.
    SecondFactor(PendingSecondFactor),
}

/// A sign-in waiting for its second factor: the provisional cookies the first answer set.
/// Clone it before [`second_factor`] to try another code after a wrong one.
#[derive(Debug, Clone)]
pub struct PendingSecondFactor {
    cookies: Cookies,
    methods: Vec<String>,
}

impl PendingSecondFactor {
    /// The factor types TradingView offered (`["totp"]`); empty when it did not say.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }
}

/// Why a sign-in did not succeed. Each message says in one line what to do.
///
/// ```
/// use tickwire_http::signin::SignInError;
///
/// let text = SignInError::Captcha.to_string();
/// assert!(text.contains("sign in once in a browser"));
/// assert!(text.contains("tickwire login --cookie"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignInError {
    /// TradingView wants a captcha solved (after repeated logins); it sticks for a while.
    #[error(
        "TradingView asks for a captcha: sign in once in a browser, then run `tickwire login --cookie` with its sessionid cookie"
    )]
    Captcha,
    /// The account is locked out after failed attempts.
    #[error(
        "TradingView locked the account out ({message}): wait (hours) before trying again; do not retry in a loop"
    )]
    LockedOut {
        /// TradingView's text.
        message: String,
    },
    /// TradingView refused for now (its throttling).
    #[error(
        "TradingView refused the sign-in for now ({message}): wait (hours) before trying again; do not retry in a loop"
    )]
    TryLater {
        /// TradingView's text.
        message: String,
    },
    /// Bad credentials or another refusal.
    #[error(
        "TradingView rejected the sign-in ({message}): check the username and password; do not retry in a loop"
    )]
    Rejected {
        /// TradingView's text.
        message: String,
    },
    /// HTTP 429.
    #[error(
        "TradingView rate-limited the sign-in{}: wait (hours) before trying again; do not retry in a loop",
        retry_text(*.retry_after)
    )]
    RateLimited {
        /// How long it asked to wait, when it said so in seconds.
        retry_after: Option<Duration>,
    },
    /// The second-factor code was refused.
    #[error(
        "the second-factor code was refused ({message}): check the authenticator (and the clock) and enter the current code"
    )]
    WrongCode {
        /// TradingView's text.
        message: String,
    },
    /// The request failed, or the answer was not one a sign-in gives.
    #[error("the sign-in request failed: {0}")]
    Http(#[from] HttpError),
}

fn retry_text(retry_after: Option<Duration>) -> String {
    retry_after.map_or_else(String::new, |wait| {
        format!(" (it asked for {} s)", wait.as_secs())
    })
}

/// Signs in with a username (or e-mail) and password: one POST to
/// `{www}/accounts/signin/`, the form percent-encoded.
pub fn sign_in(
    client: &HttpClient,
    username: &str,
    password: &crate::Secret,
) -> Result<SignIn, SignInError> {
    let form = [
        ("username", username),
        ("password", password.expose()),
        ("remember", "on"),
    ];
    let url = format!("{}/accounts/signin/", client.bases().www);
    let mut request = Request::post("sign-in", url, Payload::Form(&form));
    request.secrets.push(password.clone());
    let reply = client.execute(request)?;
    match classify(&reply, Step::Password)? {
        Outcome::SecondFactor(methods) => {
            let cookies = Cookies::from_chain(None, &reply.received).ok_or_else(|| {
                SignInError::Rejected {
                    message: "the second-factor answer set no session cookie".to_owned(),
                }
            })?;
            Ok(SignIn::SecondFactor(PendingSecondFactor {
                cookies,
                methods,
            }))
        }
        Outcome::Success(user) => {
            let cookies = Cookies::from_chain(None, &reply.received).ok_or_else(no_cookie)?;
            Ok(SignIn::Done(Session::new(cookies, user)))
        }
    }
}

/// Sends the second factor (`code`: the 6 digits from the authenticator) with the provisional
/// cookies: one POST to `{www}/accounts/two-factor/signin/totp/`.
pub fn second_factor(
    client: &HttpClient,
    pending: PendingSecondFactor,
    code: &str,
) -> Result<Session, SignInError> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignInError::WrongCode {
            message: "the code must be 6 digits".to_owned(),
        });
    }
    let form = [("code", code)];
    let url = format!("{}/accounts/two-factor/signin/totp/", client.bases().www);
    let mut request = Request::post("second factor", url, Payload::Form(&form));
    request.cookies = pending.cookies.jar();
    let reply = client.execute(request)?;
    match classify(&reply, Step::SecondFactor)? {
        Outcome::Success(user) => {
            let cookies = Cookies::from_chain(Some(&pending.cookies), &reply.received)
                .ok_or_else(no_cookie)?;
            Ok(Session::new(cookies, user))
        }
        Outcome::SecondFactor(_) => Err(SignInError::Rejected {
            message: "TradingView asked for the second factor again".to_owned(),
        }),
    }
}

fn no_cookie() -> SignInError {
    SignInError::Rejected {
        message: "no session cookie".to_owned(),
    }
}

/// Which request an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Password,
    SecondFactor,
}

/// A sign-in answer that is not a refusal.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `error` empty and a session cookie: the user object when it has `id` and `username`.
    Success(Option<UserInfo>),
    /// `2FA_required`, with the factor types offered.
    SecondFactor(Vec<String>),
}

/// Sorts a sign-in answer, in the contract's order: 429; not JSON; captcha; second factor;
/// (second step: wrong code); "locked out"; `rate_limit` or "try again"; (5xx); other error
/// text; another non-2xx; no session cookie; success.
fn classify(reply: &Reply, step: Step) -> Result<Outcome, SignInError> {
    if reply.status == 429 {
        return Err(SignInError::RateLimited {
            retry_after: reply.retry_after,
        });
    }
    let body = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(body @ Value::Object(_)) => body,
        _ if reply.status == 403 => {
            return Err(HttpError::Forbidden {
                what: reply.what.to_owned(),
            }
            .into());
        }
        _ => return Err(HttpError::not_json(reply.status, &reply.body, &reply.secrets).into()),
    };
    let quote = |text: &str| text::clean(&text::redact(text, &reply.secrets), MESSAGE_CHARS);
    let field = |name: &str| {
        body.get(name)
            .and_then(scalar_text)
            .map(|text| quote(&text))
            .filter(|text| !text.is_empty())
    };
    let code = field("code");
    let error = match body.get("error") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            scalar_text(value)
                .map(|text| quote(&text))
                .unwrap_or_else(|| "an error TradingView did not explain".to_owned()),
        ),
    }
    .filter(|text| !text.is_empty());
    let message = || {
        error
            .clone()
            .or_else(|| field("message"))
            .unwrap_or_default()
    };
    let lower = error.as_deref().unwrap_or_default().to_lowercase();

    match code.as_deref() {
        Some("recaptcha_required") => return Err(SignInError::Captcha),
        Some("2FA_required") => {
            let methods = body
                .get("two_factor_types")
                .and_then(Value::as_array)
                .map(|types| {
                    types
                        .iter()
                        .filter_map(|kind| kind.get("name").and_then(Value::as_str))
                        .map(|name| text::clean(name, 32))
                        .take(8)
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Outcome::SecondFactor(methods));
        }
        Some("2FA_invalid_credential") if step == Step::SecondFactor => {
            return Err(SignInError::WrongCode { message: message() });
        }
        _ => {}
    }
    if lower.contains("locked out") {
        return Err(SignInError::LockedOut { message: message() });
    }
    if code.as_deref() == Some("rate_limit") || lower.contains("try again") {
        return Err(SignInError::TryLater { message: message() });
    }
    if (500..600).contains(&reply.status) {
        return Err(HttpError::Status {
            code: reply.status,
            api_code: code,
            message: error,
        }
        .into());
    }
    if let Some(error) = error {
        return Err(SignInError::Rejected { message: error });
    }
    if !reply.is_success() {
        return Err(HttpError::Status {
            code: reply.status,
            api_code: code,
            message: field("message"),
        }
        .into());
    }
    if reply
        .received
        .value("sessionid")
        .is_none_or(|value| value.is_empty())
        && step == Step::Password
    {
        return Err(no_cookie());
    }
    Ok(Outcome::Success(
        body.get("user").and_then(UserInfo::from_json),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::Received;

    fn reply(status: u16, body: &str, session_cookie: bool) -> Reply {
        let mut received = Received::default();
        if session_cookie {
            received.record("sessionid", Some("sid".into()));
        }
        Reply {
            what: "sign-in",
            status,
            retry_after: Some(Duration::from_secs(9)),
            body: body.as_bytes().to_vec(),
            received,
            secrets: vec!["PASSWORD1".into()],
        }
    }

    fn password(status: u16, body: &str) -> Result<Outcome, SignInError> {
        classify(&reply(status, body, true), Step::Password)
    }

    const SUCCESS: &str = r#"{"error":"","user":{"id":1,"username":"alice","is_pro":true,"pro_plan":"pro_premium","auth_token":"t"}}"#;

    #[test]
    fn the_contract_table() {
        let rejected = |message: &str| {
            Err(SignInError::Rejected {
                message: message.into(),
            })
        };
        assert_eq!(
            password(429, r#"{"error":"Too many"}"#),
            Err(SignInError::RateLimited {
                retry_after: Some(Duration::from_secs(9))
            })
        );
        assert!(matches!(
            password(400, "<HTML><HEAD><TITLE>400 ERROR</TITLE></HEAD></HTML>"),
            Err(SignInError::Http(HttpError::NotJson { status: 400, .. }))
        ));
        assert!(matches!(
            password(200, r#"{"error":"","user":{"id":1"#),
            Err(SignInError::Http(HttpError::NotJson { status: 200, .. }))
        ));
        assert!(matches!(
            password(200, r#""a string""#),
            Err(SignInError::Http(HttpError::NotJson { .. }))
        ));
        assert!(matches!(
            password(200, "\u{0}\u{ff}"),
            Err(SignInError::Http(HttpError::NotJson { status: 200, .. }))
        ));
        assert_eq!(
            password(403, "<html><body>403 Forbidden</body></html>"),
            Err(SignInError::Http(HttpError::Forbidden {
                what: "sign-in".into()
            }))
        );
        assert_eq!(
            password(
                200,
                r#"{"error":"Please confirm that you are not a robot by clicking the captcha box.","code":"recaptcha_required"}"#
            ),
            Err(SignInError::Captcha)
        );
        // The code decides whatever the status.
        assert_eq!(
            password(400, r#"{"error":"x","code":"recaptcha_required"}"#),
            Err(SignInError::Captcha)
        );
        assert_eq!(
            password(
                200,
                r#"{"error":"2FA_required","code":"2FA_required","message":"Second authentication factor is needed","two_factor_types":[{"name":"totp"},{"bad":1},7]}"#
            ),
            Ok(Outcome::SecondFactor(vec!["totp".into()]))
        );
        assert_eq!(
            password(
                200,
                r#"{"error":"You have been locked out. Please try again later."}"#
            ),
            Err(SignInError::LockedOut {
                message: "You have been locked out. Please try again later.".into()
            })
        );
        assert_eq!(
            password(
                200,
                r#"{"error":"We're having a little trouble with that request. Try again a little later"}"#
            ),
            Err(SignInError::TryLater {
                message:
                    "We're having a little trouble with that request. Try again a little later"
                        .into()
            })
        );
        assert_eq!(
            password(200, r#"{"error":"Slow down","code":"rate_limit"}"#),
            Err(SignInError::TryLater {
                message: "Slow down".into()
            })
        );
        assert_eq!(
            password(
                200,
                r#"{"error":"Invalid username or password.","code":"invalid_credentials"}"#
            ),
            rejected("Invalid username or password.")
        );
        assert_eq!(
            password(401, r#"{"error":"Invalid username or password."}"#),
            rejected("Invalid username or password.")
        );
        assert_eq!(
            password(200, r#"{"error":{"nested":true}}"#),
            rejected("an error TradingView did not explain")
        );
        assert_eq!(
            password(503, r#"{"error":"Service unavailable"}"#),
            Err(SignInError::Http(HttpError::Status {
                code: 503,
                api_code: None,
                message: Some("Service unavailable".into())
            }))
        );
        assert_eq!(
            password(400, r#"{"error":""}"#),
            Err(SignInError::Http(HttpError::Status {
                code: 400,
                api_code: None,
                message: None
            }))
        );
        assert_eq!(
            classify(&reply(200, SUCCESS, false), Step::Password),
            rejected("no session cookie")
        );
        assert_eq!(
            password(200, SUCCESS),
            Ok(Outcome::Success(Some(UserInfo {
                id: 1,
                username: "alice".into(),
                plan: Some("pro_premium".into()),
                is_pro: Some(true)
            })))
        );
        // Success with a user object that lacks fields: still signed in, user unknown.
        assert_eq!(
            password(200, r#"{"error":"","user":{"id":"x"}}"#),
            Ok(Outcome::Success(None))
        );
        assert_eq!(password(200, r#"{}"#), Ok(Outcome::Success(None)));
    }

    #[test]
    fn second_step_answers() {
        let second = |status, body: &str| classify(&reply(status, body, false), Step::SecondFactor);
        assert_eq!(
            second(
                400,
                r#"{"error":"Invalid code","code":"2FA_invalid_credential"}"#
            ),
            Err(SignInError::WrongCode {
                message: "Invalid code".into()
            })
        );
        assert_eq!(
            second(
                429,
                r#"{"error":"Too many requests","code":"2FA_too_many_requests"}"#
            ),
            Err(SignInError::RateLimited {
                retry_after: Some(Duration::from_secs(9))
            })
        );
        assert_eq!(
            second(
                400,
                r#"{"error":"Session expired","code":"2FA_challenge_expired"}"#
            ),
            Err(SignInError::Rejected {
                message: "Session expired".into()
            })
        );
        // The fresh cookies may be missing; the provisional ones are used then.
        assert!(matches!(
            second(200, SUCCESS),
            Ok(Outcome::Success(Some(_)))
        ));
        // A wrong-code code on the password step is just a refusal.
        assert_eq!(
            password(
                400,
                r#"{"error":"Invalid code","code":"2FA_invalid_credential"}"#
            ),
            Err(SignInError::Rejected {
                message: "Invalid code".into()
            })
        );
    }

    #[test]
    fn messages_are_cleaned_and_bounded() {
        let body = format!(r#"{{"error":"line\nbreak {}"}}"#, "x".repeat(5_000));
        let Err(SignInError::Rejected { message }) = password(200, &body) else {
            panic!("not rejected");
        };
        assert!(message.starts_with("linebreak x"));
        assert!(message.chars().count() <= MESSAGE_CHARS);
    }

    #[test]
    fn echoed_secrets_are_blanked() {
        let error = password(
            200,
            r#"{"error":"bad password PASSWORD1","code":"PASSWORD1"}"#,
        );
        assert_eq!(
            error,
            Err(SignInError::Rejected {
                message: "bad password <redacted>".into()
            })
        );
        let Err(SignInError::Http(HttpError::NotJson { snippet, .. })) =
            password(400, "<html>password=PASSWORD1</html>")
        else {
            panic!("not NotJson");
        };
        assert_eq!(snippet, "<html>password=<redacted></html>");
    }

    #[test]
    fn displays_say_what_to_do() {
        assert!(
            SignInError::Captcha
                .to_string()
                .contains("tickwire login --cookie")
        );
        for error in [
            SignInError::LockedOut {
                message: "m".into(),
            },
            SignInError::TryLater {
                message: "m".into(),
            },
            SignInError::RateLimited { retry_after: None },
        ] {
            let text = error.to_string();
            assert!(text.contains("wait (hours)"), "{text}");
            assert!(text.contains("do not retry in a loop"), "{text}");
            assert!(!text.contains('\n'));
        }
        assert_eq!(
            SignInError::RateLimited {
                retry_after: Some(Duration::from_secs(120))
            }
            .to_string(),
            "TradingView rate-limited the sign-in (it asked for 120 s): wait (hours) before trying again; do not retry in a loop"
        );
    }

    #[test]
    fn pending_debug_hides_the_provisional_cookies() {
        let pending = PendingSecondFactor {
            cookies: Cookies::new("provisional-sid"),
            methods: vec!["totp".into()],
        };
        let debug = format!("{pending:?}");
        assert!(!debug.contains("provisional-sid"), "{debug}");
        assert_eq!(pending.methods(), ["totp".to_owned()]);
    }
}

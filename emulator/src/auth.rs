//! Accounts, sign-in sessions and the JWT auth tokens they yield, all in memory.
//!
//! The HTTP side (`web`) signs users in and hands out tokens; the WebSocket side
//! (`Session`) asks `AuthStore::check_token` whether a token it is shown is
//! one of them and still good.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use data_encoding::{BASE64, BASE64URL_NOPAD};
use serde_json::{Value, json};

/// The plan of the default accounts, and of accounts given on the command line.
pub const DEFAULT_PLAN: &str = "pro_premium";

/// Wrong second-factor codes allowed per sign-in before the answer is "too many requests".
pub(crate) const TOTP_ATTEMPTS: u32 = 5;

/// An account the emulator's sign-in accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// The user name to sign in with.
    pub username: String,
    /// The password.
    pub password: String,
    /// The TOTP secret (raw bytes, not base32); `Some` asks for a second factor.
    pub totp_secret: Option<Vec<u8>>,
    /// The plan reported in the user object and the JWT, e.g. `pro_premium`.
    pub plan: String,
}

impl Account {
    /// An account without a second factor, on [`DEFAULT_PLAN`].
    pub fn new(username: &str, password: &str) -> Account {
        Account {
            username: username.to_owned(),
            password: password.to_owned(),
            totp_secret: None,
            plan: DEFAULT_PLAN.to_owned(),
        }
    }

    /// The default accounts: `demo` / `demo-password`, and `demo2fa` / `demo-password` with the
    /// TOTP secret `12345678901234567890` (base32 `GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ`, the
    /// RFC 6238 test secret).
    pub fn defaults() -> Vec<Account> {
        vec![
            Account::new("demo", "demo-password"),
            Account {
                totp_secret: Some(b"12345678901234567890".to_vec()),
                ..Account::new("demo2fa", "demo-password")
            },
        ]
    }
}

/// Passwords and secrets stay out of logs.
impl fmt::Debug for Account {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Account")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("totp", &self.totp_secret.is_some())
            .field("plan", &self.plan)
            .finish()
    }
}

/// An account spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpecError(String);

impl fmt::Display for AccountSpecError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for AccountSpecError {}

/// `NAME:PASSWORD[:TOTP_BASE32]` (the password cannot hold a `:`), on [`DEFAULT_PLAN`].
impl FromStr for Account {
    type Err = AccountSpecError;

    fn from_str(spec: &str) -> Result<Account, AccountSpecError> {
        let mut parts = spec.splitn(3, ':');
        let (Some(username), Some(password)) = (parts.next(), parts.next()) else {
            return Err(AccountSpecError(
                "expected NAME:PASSWORD[:TOTP_BASE32]".into(),
            ));
        };
        if username.is_empty() || password.is_empty() {
            return Err(AccountSpecError(
                "expected NAME:PASSWORD[:TOTP_BASE32], neither empty".into(),
            ));
        }
        let totp_secret = match parts.next() {
            Some(secret) => Some(
                tickwire_http::totp::decode_secret(secret)
                    .map_err(|error| AccountSpecError(format!("account {username:?}: {error}")))?,
            ),
            None => None,
        };
        Ok(Account {
            totp_secret,
            ..Account::new(username, password)
        })
    }
}

/// How `POST /accounts/signin/` answers, whatever the credentials (except `Normal`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SigninMode {
    /// Checks the credentials.
    #[default]
    Normal,
    /// `recaptcha_required`.
    Captcha,
    /// "You have been locked out. Please try again later." (no code).
    Lockout,
    /// "We're having a little trouble with that request. Try again a little later" (no code).
    TryLater,
    /// HTTP 400 with a CloudFront-like HTML page.
    Html,
    /// HTTP 429, with `Retry-After: <secs>` when given.
    RateLimited {
        /// The `Retry-After` seconds, if any.
        retry_after: Option<u64>,
    },
}

/// A sign-in mode name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigninModeError(String);

impl fmt::Display for SigninModeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for SigninModeError {}

/// `normal`, `captcha`, `lockout`, `try-later`, `html`, `rate-limited` or
/// `rate-limited:SECS` (with a `Retry-After`).
impl FromStr for SigninMode {
    type Err = SigninModeError;

    fn from_str(text: &str) -> Result<SigninMode, SigninModeError> {
        Ok(match text {
            "normal" => SigninMode::Normal,
            "captcha" => SigninMode::Captcha,
            "lockout" => SigninMode::Lockout,
            "try-later" => SigninMode::TryLater,
            "html" => SigninMode::Html,
            "rate-limited" => SigninMode::RateLimited { retry_after: None },
            other => match other.strip_prefix("rate-limited:") {
                Some(seconds) => SigninMode::RateLimited {
                    retry_after: Some(seconds.parse().map_err(|_| {
                        SigninModeError(format!("{text:?}: expected rate-limited:SECONDS"))
                    })?),
                },
                None => {
                    return Err(SigninModeError(format!(
                        "{text:?}: expected normal, captcha, lockout, try-later, html, \
                         rate-limited or rate-limited:SECONDS"
                    )));
                }
            },
        })
    }
}

/// The JWT layout of the contract: `{"alg":"RS512","typ":"JWT"}`, the claims, and a signature of
/// random bytes (nobody verifies it).
pub(crate) fn build_jwt(user_id: u64, plan: &str, iat: u64, exp: u64) -> String {
    let header = br#"{"alg":"RS512","typ":"JWT"}"#;
    // Written out so the claims keep the contract's order.
    let plan = Value::from(plan);
    let claims = format!(
        r#"{{"user_id":{user_id},"exp":{exp},"iat":{iat},"plan":{plan},"perm":"","prodplan":{plan}}}"#
    );
    let signature: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
        .take(256)
        .collect();
    format!(
        "{}.{}.{}",
        BASE64URL_NOPAD.encode(header),
        BASE64URL_NOPAD.encode(claims.as_bytes()),
        BASE64URL_NOPAD.encode(&signature)
    )
}

/// The claims of `token` when it has the shape of a JWT: three base64url parts (no padding)
/// whose first two are JSON objects. The signature is not checked.
pub(crate) fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let object = |part: &str| -> Option<serde_json::Map<String, Value>> {
        let bytes = BASE64URL_NOPAD.decode(part.as_bytes()).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            Value::Object(map) => Some(map),
            _ => None,
        }
    };
    object(header)?;
    BASE64URL_NOPAD.decode(signature.as_bytes()).ok()?;
    object(payload)
}

/// The `(name, value)` pairs of `Cookie` header values, in order; quotes around a value are
/// dropped, pieces without `=` skipped.
pub(crate) fn parse_cookies<'a>(
    headers: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, String)> {
    headers
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|piece| {
            let (name, value) = piece.split_once('=')?;
            let name = name.trim();
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|inner| inner.strip_suffix('"'))
                .unwrap_or(value);
            (!name.is_empty()).then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The first value of cookie `name`.
pub(crate) fn cookie<'a>(cookies: &'a [(String, String)], name: &str) -> Option<&'a str> {
    cookies
        .iter()
        .find(|(cookie, _)| cookie == name)
        .map(|(_, value)| value.as_str())
}

/// What the WebSocket side learns about a token shown at `set_auth_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenVerdict {
    /// Not shaped like a JWT (`unauthorized_user_token`, test strings): judged as before.
    NotJwt,
    /// A JWT this emulator issued, its session still signed in, not expired.
    Valid {
        /// Its `exp` (Unix seconds).
        expires_at: u64,
    },
    /// Expired, not issued here, or its session was signed out.
    Refused,
}

/// A signed-in session.
#[derive(Debug, Clone)]
struct SignedIn {
    sign: String,
    account: usize,
    session_hash: String,
    private_channel: String,
}

/// A sign-in waiting for its second factor.
#[derive(Debug, Clone)]
struct Challenge {
    sign: String,
    account: usize,
    failures: u32,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, SignedIn>,
    challenges: HashMap<String, Challenge>,
    /// Issued JWT → (its session id, its exp).
    tokens: HashMap<String, (String, u64)>,
    lifetime: Duration,
}

/// The cookie values of a new session or challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cookies {
    pub(crate) sessionid: String,
    pub(crate) sessionid_sign: String,
}

/// What the second factor step came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TotpOutcome {
    /// Signed in: the session's cookies and user.
    SignedIn(Cookies, usize),
    /// The code is wrong.
    Invalid,
    /// Too many wrong codes for this sign-in.
    TooMany,
    /// No such challenge (missing, unknown or signed out).
    Expired,
}

/// Accounts, sessions and issued tokens of one emulator.
#[derive(Debug, Default)]
pub(crate) struct AuthStore {
    accounts: Vec<Account>,
    inner: Mutex<Inner>,
}

fn random_text(length: usize, alphabet: &[u8]) -> String {
    std::iter::repeat_with(|| {
        char::from(
            alphabet
                .get(fastrand::usize(..alphabet.len().max(1)))
                .copied()
                .unwrap_or(b'x'),
        )
    })
    .take(length)
    .collect()
}

const LOWER_ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_bytes(count: usize) -> Vec<u8> {
    std::iter::repeat_with(|| fastrand::u8(..))
        .take(count)
        .collect()
}

/// A fresh `device_t` cookie value.
pub(crate) fn new_device_token() -> String {
    BASE64URL_NOPAD.encode(&random_bytes(30))
}

fn new_cookies() -> Cookies {
    Cookies {
        sessionid: random_text(32, LOWER_ALPHANUMERIC),
        sessionid_sign: format!("v3:{}", BASE64.encode(&random_bytes(32))),
    }
}

impl AuthStore {
    /// A store with these accounts, issuing tokens that live `lifetime`.
    pub(crate) fn new(accounts: Vec<Account>, lifetime: Duration) -> AuthStore {
        AuthStore {
            accounts,
            inner: Mutex::new(Inner {
                lifetime,
                ..Inner::default()
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The account at `index`.
    pub(crate) fn account(&self, index: usize) -> Option<&Account> {
        self.accounts.get(index)
    }

    /// The user id of the account at `index` (stable per position).
    pub(crate) fn user_id(index: usize) -> u64 {
        10_000_001 + index as u64
    }

    /// Tokens issued from now on live `lifetime`.
    pub(crate) fn set_lifetime(&self, lifetime: Duration) {
        self.inner().lifetime = lifetime;
    }

    /// The account these credentials name.
    pub(crate) fn find(&self, username: &str, password: &str) -> Option<usize> {
        self.accounts
            .iter()
            .position(|account| account.username == username && account.password == password)
    }

    /// Signs account `index` in: a new session.
    pub(crate) fn sign_in(&self, account: usize) -> Cookies {
        let cookies = new_cookies();
        self.inner().sessions.insert(
            cookies.sessionid.clone(),
            SignedIn {
                sign: cookies.sessionid_sign.clone(),
                account,
                session_hash: random_text(32, LOWER_ALPHANUMERIC),
                private_channel: random_text(20, LOWER_ALPHANUMERIC),
            },
        );
        cookies
    }

    /// Starts a sign-in that waits for its second factor: provisional cookies.
    pub(crate) fn challenge(&self, account: usize) -> Cookies {
        let cookies = new_cookies();
        self.inner().challenges.insert(
            cookies.sessionid.clone(),
            Challenge {
                sign: cookies.sessionid_sign.clone(),
                account,
                failures: 0,
            },
        );
        cookies
    }

    /// The second factor for the challenge the cookies name, checked at `unix_secs`: the
    /// current 30 s step and one either side pass.
    pub(crate) fn verify_totp(
        &self,
        cookies: &[(String, String)],
        code: &str,
        unix_secs: u64,
    ) -> TotpOutcome {
        let Some(id) = cookie(cookies, "sessionid") else {
            return TotpOutcome::Expired;
        };
        let mut inner = self.inner();
        let Some(challenge) = inner.challenges.get_mut(id) else {
            return TotpOutcome::Expired;
        };
        if cookie(cookies, "sessionid_sign").is_some_and(|sign| sign != challenge.sign) {
            return TotpOutcome::Expired;
        }
        if challenge.failures >= TOTP_ATTEMPTS {
            return TotpOutcome::TooMany;
        }
        let secret = self
            .accounts
            .get(challenge.account)
            .and_then(|account| account.totp_secret.as_deref());
        let step = unix_secs / tickwire_http::totp::STEP_SECS;
        let good = secret.is_some_and(|secret| {
            [step.saturating_sub(1), step, step.saturating_add(1)]
                .iter()
                .any(|&step| tickwire_http::totp::code_for_step(secret, step) == code)
        });
        if !good {
            challenge.failures += 1;
            return TotpOutcome::Invalid;
        }
        let account = challenge.account;
        inner.challenges.remove(id);
        drop(inner);
        TotpOutcome::SignedIn(self.sign_in(account), account)
    }

    /// The signed-in session the cookies name: `sessionid` must be one, and `sessionid_sign`,
    /// when sent, must be its own. Returns the account index.
    pub(crate) fn session(&self, cookies: &[(String, String)]) -> Option<usize> {
        let id = cookie(cookies, "sessionid")?;
        let inner = self.inner();
        let session = inner.sessions.get(id)?;
        if cookie(cookies, "sessionid_sign").is_some_and(|sign| sign != session.sign) {
            return None;
        }
        Some(session.account)
    }

    /// A fresh JWT for the session the cookies name, with the user object that carries it;
    /// `None` when they name no signed-in session.
    pub(crate) fn issue(&self, cookies: &[(String, String)], now: f64) -> Option<Value> {
        let id = cookie(cookies, "sessionid")?.to_owned();
        let mut inner = self.inner();
        let session = inner.sessions.get(&id)?.clone();
        if cookie(cookies, "sessionid_sign").is_some_and(|sign| sign != session.sign) {
            return None;
        }
        let account = self.accounts.get(session.account)?;
        let iat = now.max(0.0).floor() as u64;
        let exp = (now.max(0.0) + inner.lifetime.as_secs_f64()).floor() as u64;
        let user_id = AuthStore::user_id(session.account);
        let token = build_jwt(user_id, &account.plan, iat, exp);
        // Expired tokens are refused whether known or not: no need to keep them.
        inner.tokens.retain(|_, (_, exp)| *exp as f64 > now);
        inner.tokens.insert(token.clone(), (id, exp));
        Some(json!({
            "id": user_id,
            "username": account.username,
            "first_name": "",
            "last_name": "",
            "is_pro": !account.plan.is_empty() && account.plan != "free",
            "pro_plan": account.plan,
            "auth_token": token,
            "session_hash": session.session_hash,
            "private_channel": session.private_channel,
            "date_joined": "2020-01-02T03:04:05.123456",
        }))
    }

    /// Signs every session out (pending second factors too); their tokens are refused from
    /// now on.
    pub(crate) fn expire_sessions(&self) {
        let mut inner = self.inner();
        inner.sessions.clear();
        inner.challenges.clear();
        inner.tokens.clear();
    }

    /// What `token` is at `now` (Unix seconds).
    pub(crate) fn check_token(&self, token: &str, now: f64) -> TokenVerdict {
        let Some(claims) = jwt_claims(token) else {
            return TokenVerdict::NotJwt;
        };
        if claims
            .get("exp")
            .and_then(Value::as_f64)
            .is_some_and(|exp| exp <= now)
        {
            return TokenVerdict::Refused;
        }
        let inner = self.inner();
        match inner.tokens.get(token) {
            Some((session, exp)) if inner.sessions.contains_key(session) && *exp as f64 > now => {
                TokenVerdict::Valid { expires_at: *exp }
            }
            _ => TokenVerdict::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_of(token: &str) -> serde_json::Map<String, Value> {
        jwt_claims(token).expect("a JWT")
    }

    #[test]
    fn jwts_have_the_contract_layout() {
        let token = build_jwt(7, "pro_premium", 1_700_000_000, 1_700_014_400);
        assert!(token.starts_with("eyJ"), "{token}");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(
            parts
                .iter()
                .all(|part| !part.contains('=') && !part.contains('+') && !part.contains('/'))
        );
        let header = BASE64URL_NOPAD.decode(parts[0].as_bytes()).unwrap();
        assert_eq!(header, br#"{"alg":"RS512","typ":"JWT"}"#);
        let payload = BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            r#"{"user_id":7,"exp":1700014400,"iat":1700000000,"plan":"pro_premium","perm":"","prodplan":"pro_premium"}"#
        );
        let claims = claims_of(&token);
        assert_eq!(claims["user_id"], 7);
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_014_400u64);
        assert_eq!(claims["plan"], "pro_premium");
        assert_eq!(claims["prodplan"], "pro_premium");
        assert_eq!(claims["perm"], "");
        assert_ne!(
            token,
            build_jwt(7, "pro_premium", 1_700_000_000, 1_700_014_400),
            "the signature differs per token"
        );
    }

    #[test]
    fn only_jwt_shapes_count_as_jwts() {
        for not_jwt in [
            "unauthorized_user_token",
            "jwt-a",
            "a.b.c",
            "",
            "eyJhbGciOiJSUzUxMiJ9.eyJ1c2VyX2lkIjoxfQ",
            "eyJhbGciOiJSUzUxMiJ9.bm90IGpzb24.c2ln",
            "eyJhbGciOiJSUzUxMiJ9.eyJ1c2VyX2lkIjoxfQ.c2ln.extra",
            "eyJhbGciOiJSUzUxMiJ9.WzFd.c2ln",
        ] {
            assert!(jwt_claims(not_jwt).is_none(), "{not_jwt:?}");
        }
        // {"alg":"RS512"} . {"user_id":1} . "sig"
        let claims = jwt_claims("eyJhbGciOiJSUzUxMiJ9.eyJ1c2VyX2lkIjoxfQ.c2ln").unwrap();
        assert_eq!(claims["user_id"], 1);
    }

    #[test]
    fn cookies_parse_by_name_across_headers() {
        let cookies = parse_cookies([
            "sessionid=abc123; sessionid_sign=v3:x/y+z==",
            " device_t=\"q\" ;broken; =nameless; empty=",
        ]);
        assert_eq!(
            cookies,
            [
                ("sessionid".to_owned(), "abc123".to_owned()),
                ("sessionid_sign".to_owned(), "v3:x/y+z==".to_owned()),
                ("device_t".to_owned(), "q".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        assert_eq!(cookie(&cookies, "sessionid_sign"), Some("v3:x/y+z=="));
        assert_eq!(cookie(&cookies, "nope"), None);
        assert!(parse_cookies([""]).is_empty());
    }

    fn jar(cookies: &Cookies) -> Vec<(String, String)> {
        vec![
            ("sessionid".to_owned(), cookies.sessionid.clone()),
            ("sessionid_sign".to_owned(), cookies.sessionid_sign.clone()),
        ]
    }

    #[test]
    fn tokens_are_valid_until_exp_or_sign_out() {
        let store = AuthStore::new(Account::defaults(), Duration::from_secs(100));
        let account = store.find("demo", "demo-password").unwrap();
        assert_eq!(store.find("demo", "wrong"), None);
        let cookies = store.sign_in(account);
        assert_eq!(store.session(&jar(&cookies)), Some(account));
        let mut forged = jar(&cookies);
        forged[1].1 = "v3:forged".into();
        assert_eq!(store.session(&forged), None, "a wrong sign");
        assert_eq!(store.session(&forged[..1]), Some(account), "sign optional");
        let user = store.issue(&jar(&cookies), 1_000.5).unwrap();
        let token = user["auth_token"].as_str().unwrap().to_owned();
        assert_eq!(claims_of(&token)["exp"], 1_100);
        assert_eq!(claims_of(&token)["iat"], 1_000);
        assert_eq!(
            store.check_token(&token, 1_050.0),
            TokenVerdict::Valid { expires_at: 1_100 }
        );
        assert_eq!(store.check_token(&token, 1_100.0), TokenVerdict::Refused);
        assert_eq!(
            store.check_token("unauthorized_user_token", 1_050.0),
            TokenVerdict::NotJwt
        );
        let stranger = build_jwt(1, "pro_premium", 1_000, 2_000);
        assert_eq!(store.check_token(&stranger, 1_050.0), TokenVerdict::Refused);
        store.expire_sessions();
        assert_eq!(store.check_token(&token, 1_050.0), TokenVerdict::Refused);
        assert_eq!(store.session(&jar(&cookies)), None);
        assert!(store.issue(&jar(&cookies), 1_050.0).is_none());
    }

    #[test]
    fn the_second_factor_takes_the_current_step_and_one_either_side() {
        let store = AuthStore::new(Account::defaults(), Duration::from_secs(100));
        let account = store.find("demo2fa", "demo-password").unwrap();
        let secret = store.account(account).unwrap().totp_secret.clone().unwrap();
        let now: u64 = 1_700_000_000;
        let step = now / 30;
        for (offset, passes) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let challenge = store.challenge(account);
            let code = tickwire_http::totp::code_for_step(
                &secret,
                step.checked_add_signed(offset).unwrap(),
            );
            let outcome = store.verify_totp(&jar(&challenge), &code, now);
            assert_eq!(
                matches!(outcome, TotpOutcome::SignedIn(_, index) if index == account),
                passes,
                "step {offset:+}: {outcome:?}"
            );
        }
        let challenge = store.challenge(account);
        for _ in 0..TOTP_ATTEMPTS {
            assert_eq!(
                store.verify_totp(&jar(&challenge), "000000x", now),
                TotpOutcome::Invalid
            );
        }
        let good = tickwire_http::totp::code_for_step(&secret, step);
        assert_eq!(
            store.verify_totp(&jar(&challenge), &good, now),
            TotpOutcome::TooMany
        );
        assert_eq!(store.verify_totp(&[], &good, now), TotpOutcome::Expired);
        let fresh = store.challenge(account);
        let TotpOutcome::SignedIn(session, _) = store.verify_totp(&jar(&fresh), &good, now) else {
            panic!()
        };
        assert_eq!(
            store.verify_totp(&jar(&fresh), &good, now),
            TotpOutcome::Expired,
            "a challenge is used once"
        );
        assert_eq!(store.session(&jar(&session)), Some(account));
        assert_eq!(
            store.session(&jar(&fresh)),
            None,
            "provisional cookies are not a session"
        );
    }

    #[test]
    fn account_specs_and_modes_parse() {
        let plain: Account = "alice:s3cret".parse().unwrap();
        assert_eq!(plain, Account::new("alice", "s3cret"));
        let with_totp: Account = "bob:pw:GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".parse().unwrap();
        assert_eq!(
            with_totp.totp_secret.as_deref(),
            Some(&b"12345678901234567890"[..])
        );
        assert!("bob".parse::<Account>().is_err());
        assert!(":pw".parse::<Account>().is_err());
        assert!(
            "bob:pw:not base32!"
                .parse::<Account>()
                .unwrap_err()
                .to_string()
                .contains("base32")
        );
        assert!(
            !format!("{with_totp:?}").contains("pw"),
            "no password in Debug"
        );
        assert_eq!("try-later".parse(), Ok(SigninMode::TryLater));
        assert_eq!(
            "rate-limited".parse(),
            Ok(SigninMode::RateLimited { retry_after: None })
        );
        assert_eq!(
            "rate-limited:30".parse(),
            Ok(SigninMode::RateLimited {
                retry_after: Some(30)
            })
        );
        assert!("sometimes".parse::<SigninMode>().is_err());
    }
}

//! `tickwire login`, `logout` and `session`: a TradingView session kept in a file only its
//! owner can read.
//!
//! A password sign-in happens only here, once per call, never in a loop: TradingView answers
//! repeated sign-ins with a captcha and a block of a day or more. Every feed command reuses the
//! stored cookies instead.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use tickwire_http::session::{self, Cookies, Session};
use tickwire_http::signin::{self, SignIn};
use tickwire_http::token::TokenError;
use tickwire_http::{HttpClient, Secret, totp};

use crate::Failure;
use crate::access::{HttpArgs, SessionArgs};
use crate::output::{Object, human_duration};

/// Longest line read from standard input (a password, a code, a cookie).
const MAX_INPUT_LINE: u64 = 16 * 1024;

/// Sign in to TradingView and store the session.
#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// Username or e-mail (also TICKWIRE_USERNAME; asked for when omitted on a terminal).
    #[arg(env = "TICKWIRE_USERNAME")]
    username: Option<String>,
    /// Store cookies pasted from a browser instead of signing in with a password (the way out
    /// when TradingView asks for a captcha): the `sessionid` value, or a `Cookie` header with
    /// `sessionid` and `sessionid_sign`. Read from TICKWIRE_COOKIE, a no-echo prompt, or
    /// standard input.
    #[arg(long)]
    cookie: bool,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    http: HttpArgs,
}

/// Remove the stored session.
#[derive(Debug, Args)]
pub(crate) struct LogoutArgs {
    #[command(flatten)]
    session: SessionArgs,
}

/// Show the stored session: user, plan and the auth token's expiry.
#[derive(Debug, Args)]
pub(crate) struct SessionShowArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    http: HttpArgs,
}

/// Where secrets come from: an environment variable, a no-echo prompt on a terminal, or the
/// next line of standard input.
fn secret_input(env: &str, prompt: &str) -> Result<Secret, Failure> {
    if let Some(value) = std::env::var_os(env) {
        let value = value
            .into_string()
            .map_err(|_| Failure::Message(format!("{env} is not valid UTF-8")))?;
        return Ok(Secret::new(value));
    }
    if std::io::stdin().is_terminal() {
        let value = rpassword::prompt_password(prompt)
            .map_err(|error| Failure::Message(format!("cannot read the {prompt:?}: {error}")))?;
        return Ok(Secret::new(value));
    }
    let line = stdin_line()?
        .ok_or_else(|| Failure::Message(format!("standard input ended before the {prompt:?}")))?;
    Ok(Secret::new(line))
}

/// The next line of standard input without its line ending; `None` at the end.
fn stdin_line() -> Result<Option<String>, Failure> {
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_INPUT_LINE)
        .read_line(&mut line)
        .map_err(|error| Failure::Message(format!("cannot read standard input: {error}")))?;
    if read == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
}

fn visible_input(prompt: &str) -> Result<Option<String>, Failure> {
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    stdin_line()
}

/// Runs a blocking HTTP step off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| Failure::Message("the HTTP thread failed".to_owned()))
}

pub(crate) async fn login(args: LoginArgs) -> Result<(), Failure> {
    let (path, _) = args.session.path()?;
    let client = args.http.client();
    let session = if args.cookie {
        let pasted = secret_input("TICKWIRE_COOKIE", "sessionid cookie (or Cookie header): ")?;
        let cookies =
            Cookies::parse(pasted.expose()).map_err(|error| Failure::Message(error.to_string()))?;
        let checking = client.clone();
        let checked = cookies.clone();
        let token = blocking(move || tickwire_http::token::fetch_auth_token(&checking, &checked))
            .await?
            .map_err(|error| match error {
                TokenError::SessionExpired => Failure::Message(
                    "TradingView does not know these cookies (signed out or expired): copy \
                     sessionid and sessionid_sign again from a signed-in browser"
                        .to_owned(),
                ),
                other => Failure::Message(other.to_string()),
            })?;
        Session::new(token.updated_cookies.unwrap_or(cookies), Some(token.user))
    } else {
        password_login(&client, args.username).await?
    };
    let saving = session.clone();
    let save_path = path.clone();
    blocking(move || saving.save(&save_path))
        .await?
        .map_err(|error| Failure::Message(error.to_string()))?;
    let who = session.user.as_ref().map_or_else(
        || "signed in".to_owned(),
        |user| format!("signed in as {}", user.username),
    );
    println!("{who}; session saved to {} (mode 0600)", path.display());
    Ok(())
}

async fn password_login(client: &HttpClient, username: Option<String>) -> Result<Session, Failure> {
    let username = match username {
        Some(username) => username,
        None => visible_input("TradingView username or e-mail: ")?
            .filter(|name| !name.trim().is_empty())
            .ok_or_else(|| {
                Failure::Message("no username: give it as an argument or TICKWIRE_USERNAME".into())
            })?,
    };
    let password = secret_input("TICKWIRE_PASSWORD", "TradingView password: ")?;
    let signing = client.clone();
    let name = username.trim().to_owned();
    // One attempt; whatever TradingView answers is reported, never retried.
    let outcome = blocking(move || signin::sign_in(&signing, &name, &password))
        .await?
        .map_err(|error| Failure::Message(error.to_string()))?;
    let pending = match outcome {
        SignIn::Done(session) => return Ok(session),
        SignIn::SecondFactor(pending) => pending,
    };
    let code = match std::env::var("TICKWIRE_TOTP_SECRET") {
        Ok(secret) => {
            let secret = totp::decode_secret(&secret)
                .map_err(|error| Failure::Message(format!("TICKWIRE_TOTP_SECRET: {error}")))?;
            totp::code_at(&secret, unix_now())
        }
        Err(_) => visible_input("authenticator code: ")?.ok_or_else(|| {
            Failure::Message(
                "TradingView asks for the second factor: enter the authenticator code, or set \
                 TICKWIRE_TOTP_SECRET"
                    .to_owned(),
            )
        })?,
    };
    let confirming = client.clone();
    blocking(move || signin::second_factor(&confirming, pending, &code))
        .await?
        .map_err(|error| Failure::Message(error.to_string()))
}

pub(crate) fn logout(args: LogoutArgs) -> Result<(), Failure> {
    let (path, _) = args.session.path()?;
    match session::remove(&path) {
        Ok(true) => println!("signed out: removed {}", path.display()),
        Ok(false) => println!("no session at {}", path.display()),
        Err(error) => return Err(Failure::Message(error.to_string())),
    }
    Ok(())
}

pub(crate) async fn show(args: SessionShowArgs) -> Result<(), Failure> {
    let (path, _) = args.session.path()?;
    let load_path = path.clone();
    let stored = blocking(move || Session::load(&load_path))
        .await?
        .map_err(|error| Failure::Message(error.to_string()))?;
    let client = args.http.client();
    let cookies = stored.cookies.clone();
    let fetched = blocking(move || tickwire_http::token::fetch_auth_token(&client, &cookies))
        .await?
        .map_err(|error| match error {
            TokenError::SessionExpired => Failure::Message(format!(
                "the session in {} is signed out or expired: run `tickwire login`",
                path.display()
            )),
            other => Failure::Message(other.to_string()),
        })?;
    if let Some(updated) = fetched.updated_cookies.clone() {
        let refreshed = Session {
            cookies: updated,
            user: Some(fetched.user.clone()),
            ..stored.clone()
        };
        let save_path = path.clone();
        // The old cookies still work; failing to store the refreshed ones is not fatal here.
        let _ = blocking(move || refreshed.save(&save_path)).await;
    }
    let now = unix_now();
    let expires = fetched.claims.as_ref().and_then(|claims| claims.exp);
    let remaining = fetched
        .claims
        .as_ref()
        .and_then(|claims| claims.remaining_at(now));
    let user = &fetched.user;
    if args.json {
        let mut object = Object::new("type", "session");
        object.insert("file", path.display().to_string());
        object.insert("user", user.username.as_str());
        object.insert("user_id", user.id);
        object.insert("plan", user.plan.as_deref());
        object.insert("token_exp", expires);
        object.insert("token_valid_for_s", remaining.map(|left| left.as_secs()));
        object.insert("session_created", stored.created_unix);
        println!("{object}");
        return Ok(());
    }
    println!("session file: {}", path.display());
    println!("user:         {} (id {})", user.username, user.id);
    println!(
        "plan:         {}",
        user.plan.as_deref().unwrap_or("free (no plan named)")
    );
    match (expires, remaining) {
        (Some(exp), Some(left)) => println!(
            "auth token:   expires in {} (exp {exp}); refreshed from the session cookies",
            human_duration(left)
        ),
        _ => println!("auth token:   no expiry in the token; refreshed when the server rejects it"),
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

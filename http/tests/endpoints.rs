//! Sign-in with the second factor, the home-page token, search paging and scanner chunking
//! against a canned-response server; and no secret in any error or Debug output.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{Answer, Recorded, assert_error_is_clean, assert_no_secret, serve, serve_always};
use tickwire_http::scanner::Scanner;
use tickwire_http::search::{self, SearchQuery};
use tickwire_http::session::Cookies;
use tickwire_http::signin::{self, SignIn, SignInError};
use tickwire_http::token::{self, TokenError};
use tickwire_http::{HttpError, Secret, jwt, totp};

const PASSWORD: &str = "a&b+c%d e/é=x";
const SESSION: &str = "SESSIONVALUE0123456789";
const SIGN: &str = "v3:SIGNVALUE0123456789";
const DEVICE: &str = "DEVICEVALUE0123456789";
const PROVISIONAL: &str = "PROVISIONAL0123456789";
const TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DP";

fn jwt_for(user_id: u64, exp: u64) -> String {
    let encode = |text: &str| data_encoding::BASE64URL_NOPAD.encode(text.as_bytes());
    format!(
        "{}.{}.{}",
        encode(r#"{"alg":"RS512","typ":"JWT"}"#),
        encode(&format!(
            r#"{{"user_id":{user_id},"exp":{exp},"iat":{},"plan":"pro_premium","perm":"","prodplan":"pro_premium"}}"#,
            exp - 14_400
        )),
        encode("opaque")
    )
}

fn user_json(token: &str) -> String {
    format!(
        r#"{{"id":4242,"username":"alice","first_name":"","last_name":"","is_pro":true,"pro_plan":"pro_premium","auth_token":"{token}","session_hash":"h","private_channel":"p","date_joined":"2020-01-02T03:04:05.123456"}}"#
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn success(token: &str) -> Answer {
    Answer::json(200, format!(r#"{{"error":"","user":{}}}"#, user_json(token)))
        .header(
            "Set-Cookie",
            &format!("sessionid={SESSION}; Domain=127.0.0.1; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=1000"),
        )
        .header("Set-Cookie", &format!("sessionid_sign={SIGN}; Path=/; HttpOnly"))
        .header("Set-Cookie", &format!("device_t={DEVICE}; Path=/"))
}

/// The sign-in endpoints, by username.
fn sign_in_server() -> support::Server {
    serve(|request: &Recorded, _| match request.path() {
        "/accounts/signin/" => {
            let username = request.form("username").unwrap_or_default();
            let password = request.form("password").unwrap_or_default();
            match username.as_str() {
                "alice" if password == PASSWORD => success(&jwt_for(4242, now() + 3600)),
                "totp-user" => Answer::json(
                    200,
                    r#"{"error":"2FA_required","code":"2FA_required","message":"Second authentication factor is needed","two_factor_types":[{"name":"totp"}]}"#,
                )
                .header("Set-Cookie", &format!("sessionid={PROVISIONAL}; Path=/"))
                .header("Set-Cookie", "sessionid_sign=v3:PROVSIGN; Path=/"),
                "captcha" => Answer::json(
                    200,
                    r#"{"error":"Please confirm that you are not a robot by clicking the captcha box.","code":"recaptcha_required"}"#,
                ),
                "locked" => Answer::json(
                    200,
                    r#"{"error":"You have been locked out. Please try again later."}"#,
                ),
                "busy" => Answer::json(
                    200,
                    r#"{"error":"We're having a little trouble with that request. Try again a little later"}"#,
                ),
                "limited" => Answer::html(429, "<html>429</html>").header("Retry-After", "3600"),
                "html" => Answer::html(
                    400,
                    "<HTML><HEAD><META HTTP-EQUIV=\"Content-Type\" CONTENT=\"text/html\">\n<TITLE>ERROR: The request could not be satisfied</TITLE>\n</HEAD><BODY><H1>400 ERROR</H1></BODY></HTML>",
                ),
                "nocookie" => Answer::json(200, r#"{"error":"","user":{"id":1,"username":"x"}}"#),
                _ => Answer::json(
                    200,
                    r#"{"error":"Invalid username or password.","code":"invalid_credentials"}"#,
                ),
            }
        }
        "/accounts/two-factor/signin/totp/" => {
            if request.cookie("sessionid").as_deref() != Some(PROVISIONAL) {
                return Answer::json(
                    400,
                    r#"{"error":"Session expired","code":"2FA_challenge_expired"}"#,
                );
            }
            let secret = totp::decode_secret(TOTP_SECRET).unwrap();
            let code = request.form("code").unwrap_or_default();
            let step = now() / totp::STEP_SECS;
            let accepted = [step - 1, step, step + 1]
                .iter()
                .any(|step| totp::code_for_step(&secret, *step) == code);
            if accepted {
                success(&jwt_for(4242, now() + 3600))
            } else {
                Answer::json(
                    400,
                    r#"{"error":"Invalid code","code":"2FA_invalid_credential"}"#,
                )
            }
        }
        _ => Answer::html(404, "<html>404</html>"),
    })
}

fn secrets() -> Vec<&'static str> {
    vec![PASSWORD, SESSION, SIGN, DEVICE, PROVISIONAL, "PROVSIGN"]
}

#[test]
fn sign_in_sends_a_percent_encoded_form_and_keeps_the_cookies() {
    let server = sign_in_server();
    let outcome = signin::sign_in(&server.client(), "alice", &Secret::from(PASSWORD)).unwrap();
    assert_no_secret(&format!("{outcome:?}"), &secrets());
    let SignIn::Done(session) = outcome else {
        panic!("expected a session");
    };
    let request = &server.requests()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let body = std::str::from_utf8(&request.body).unwrap();
    assert!(
        body.contains("password=a%26b%2Bc%25d+e%2F%C3%A9%3Dx"),
        "the raw form: {body}"
    );
    assert!(body.starts_with("username=alice&"), "{body}");
    assert!(body.ends_with("&remember=on"), "{body}");
    assert_eq!(request.form("password").as_deref(), Some(PASSWORD));
    assert_eq!(
        session.cookies,
        Cookies {
            sessionid: SESSION.into(),
            sessionid_sign: Some(SIGN.into()),
            device_t: Some(DEVICE.into()),
        }
    );
    let user = session.user.unwrap();
    assert_eq!((user.id, user.username.as_str()), (4242, "alice"));
    assert_eq!(user.plan.as_deref(), Some("pro_premium"));
    assert!(session.created_unix >= now() - 60);
}

#[test]
fn sign_in_with_the_second_factor() {
    let server = sign_in_server();
    let client = server.client();
    let outcome = signin::sign_in(&client, "totp-user", &Secret::from(PASSWORD)).unwrap();
    let SignIn::SecondFactor(pending) = outcome else {
        panic!("expected the second factor");
    };
    assert_eq!(pending.methods(), ["totp".to_owned()]);
    assert_no_secret(&format!("{pending:?}"), &secrets());

    // Not six digits: refused without a request.
    let error = signin::second_factor(&client, pending.clone(), "12345").unwrap_err();
    assert!(matches!(error, SignInError::WrongCode { .. }));
    assert_eq!(server.requests().len(), 1);

    // A wrong code: the server's refusal.
    let secret = totp::decode_secret(TOTP_SECRET).unwrap();
    let good = totp::code_at(&secret, now());
    let wrong = if good == "000000" { "111111" } else { "000000" };
    let error = signin::second_factor(&client, pending.clone(), wrong).unwrap_err();
    assert_eq!(
        error,
        SignInError::WrongCode {
            message: "Invalid code".into()
        }
    );
    assert_error_is_clean(&error, &secrets());

    let session = signin::second_factor(&client, pending, &good).unwrap();
    assert_eq!(session.cookies.sessionid.expose(), SESSION);
    assert_eq!(
        session.cookies.sessionid_sign.as_ref().map(Secret::expose),
        Some(SIGN)
    );
    assert_eq!(session.user.map(|user| user.id), Some(4242));
    let requests = server.requests();
    let second = requests.last().unwrap();
    assert_eq!(second.path(), "/accounts/two-factor/signin/totp/");
    assert_eq!(
        second.header("cookie").map(str::to_owned),
        Some(format!(
            "sessionid={PROVISIONAL}; sessionid_sign=v3:PROVSIGN"
        ))
    );
    assert_eq!(second.form("code"), Some(good));
}

#[test]
fn refusals_are_classified_and_say_what_to_do() {
    let server = sign_in_server();
    let client = server.client();
    let password = Secret::from(PASSWORD);
    let refuse = |username: &str| signin::sign_in(&client, username, &password).unwrap_err();

    assert_eq!(refuse("captcha"), SignInError::Captcha);
    assert!(matches!(refuse("locked"), SignInError::LockedOut { .. }));
    assert!(matches!(refuse("busy"), SignInError::TryLater { .. }));
    assert_eq!(
        refuse("limited"),
        SignInError::RateLimited {
            retry_after: Some(Duration::from_secs(3600))
        }
    );
    let html = refuse("html");
    let SignInError::Http(HttpError::NotJson { status, snippet }) = &html else {
        panic!("{html:?}");
    };
    assert_eq!(*status, 400);
    assert!(snippet.starts_with("<HTML><HEAD>"), "{snippet}");
    assert_eq!(
        refuse("mallory"),
        SignInError::Rejected {
            message: "Invalid username or password.".into()
        }
    );
    assert_eq!(
        refuse("nocookie"),
        SignInError::Rejected {
            message: "no session cookie".into()
        }
    );
    for username in [
        "captcha", "locked", "busy", "limited", "html", "mallory", "nocookie",
    ] {
        let error = refuse(username);
        assert_error_is_clean(&error, &secrets());
        assert!(!error.to_string().contains('\n'));
    }
}

#[test]
fn an_expired_challenge_is_refused() {
    let server = serve(|request, _| match request.path() {
        "/accounts/signin/" => {
            Answer::json(200, r#"{"error":"2FA_required","code":"2FA_required"}"#)
                .header("Set-Cookie", "sessionid=OTHER; Path=/")
        }
        _ => Answer::json(
            400,
            r#"{"error":"Session expired","code":"2FA_challenge_expired"}"#,
        ),
    });
    let client = server.client();
    let SignIn::SecondFactor(pending) =
        signin::sign_in(&client, "u", &Secret::from(PASSWORD)).unwrap()
    else {
        panic!("expected the second factor");
    };
    assert!(pending.methods().is_empty());
    assert_eq!(
        signin::second_factor(&client, pending, "123456").unwrap_err(),
        SignInError::Rejected {
            message: "Session expired".into()
        }
    );
}

fn home_page(token: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><script>\nwindow.initData = {{}};\nwindow.config = {{\"id\":1,\"layout\":{{\"id\":77,\"username\":\"not-this\"}}}};\nvar user = {};\nvar other = [1,2];\n</script></head><body></body></html>",
        user_json(token)
    )
}

#[test]
fn the_home_page_yields_the_token_and_its_claims() {
    let exp = now() + 14_400;
    let jwt = jwt_for(4242, exp);
    let page = home_page(&jwt);
    let server = serve(move |request, _| {
        if request.cookie("sessionid").as_deref() == Some(SESSION) {
            Answer::html(200, page.clone())
        } else {
            Answer::html(200, "<html><script>var user = {\"id\":0};</script></html>")
        }
    });
    let client = server.client();
    let cookies = Cookies {
        sessionid: SESSION.into(),
        sessionid_sign: Some(SIGN.into()),
        device_t: Some(DEVICE.into()),
    };
    let token = token::fetch_auth_token(&client, &cookies).unwrap();
    assert_eq!(token.token.expose(), jwt);
    assert_eq!(
        (token.user.id, token.user.username.as_str()),
        (4242, "alice")
    );
    let claims = token.claims.clone().unwrap();
    assert_eq!(claims.exp, Some(exp));
    assert_eq!(claims.user_id, Some(4242));
    assert_eq!(token.updated_cookies, None);
    let debug = format!("{token:?}");
    assert_no_secret(&debug, &[SESSION, SIGN, DEVICE, &jwt]);
    assert_eq!(jwt::claims(token.token.expose()), Some(claims));

    let request = &server.requests()[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.path(), "/");
    assert_eq!(
        request.header("cookie").map(str::to_owned),
        Some(format!(
            "sessionid={SESSION}; sessionid_sign={SIGN}; device_t={DEVICE}"
        ))
    );

    let error = token::fetch_auth_token(&client, &Cookies::new("EXPIREDSESSION")).unwrap_err();
    assert_eq!(error, TokenError::SessionExpired);
    assert!(error.to_string().contains("tickwire login"));
    assert_error_is_clean(&error, &["EXPIREDSESSION"]);
}

#[test]
fn refreshed_cookies_come_back_with_the_token() {
    let page = home_page(&jwt_for(4242, now() + 100));
    let server = serve_always(
        Answer::html(200, page).header("Set-Cookie", "sessionid_sign=v3:NEWSIGN; Path=/"),
    );
    let token = token::fetch_auth_token(&server.client(), &Cookies::new(SESSION)).unwrap();
    assert_eq!(
        token.updated_cookies,
        Some(Cookies {
            sessionid: SESSION.into(),
            sessionid_sign: Some("v3:NEWSIGN".into()),
            device_t: None,
        })
    );
}

#[test]
fn token_errors_keep_the_cookies_out() {
    let server = serve_always(Answer::html(503, format!("<html>{SESSION}</html>")));
    let error = token::fetch_auth_token(&server.client(), &Cookies::new(SESSION)).unwrap_err();
    assert!(matches!(
        error,
        TokenError::Http(HttpError::Status { code: 503, .. })
    ));
    assert_error_is_clean(&error, &[SESSION]);
}

/// 120 instruments, pages of 50 by `start`.
fn search_server() -> support::Server {
    serve(|request, _| {
        let start: usize = request.query("start").unwrap().parse().unwrap();
        let end = (start + 50).min(120);
        let items: Vec<String> = (start..end)
            .map(|index| {
                format!(
                    r#"{{"symbol":"SYM{index:03}","description":"<em>Item</em> {index}","type":"stock","exchange":"NASDAQ","currency_code":"USD","country":"US"}}"#
                )
            })
            .collect();
        Answer::json(
            200,
            format!(
                r#"{{"symbols_remaining":{},"symbols":[{}]}}"#,
                120usize.saturating_sub(end),
                items.join(",")
            ),
        )
    })
}

#[test]
fn search_pages_one_after_another_while_more_remain() {
    let server = search_server();
    let query = SearchQuery::new("nasdaq:sym")
        .with_kind("stock")
        .with_limit(500);
    let found = search::search(&server.client(), &query).unwrap();
    assert_eq!(found.len(), 120);
    assert_eq!(found[0].id, "NASDAQ:SYM000");
    assert_eq!(found[119].id, "NASDAQ:SYM119");
    assert_eq!(found[7].description.as_deref(), Some("Item 7"));
    let requests = server.requests();
    let starts: Vec<_> = requests.iter().map(|r| r.query("start").unwrap()).collect();
    assert_eq!(starts, ["0", "50", "100"]);
    for request in &requests {
        assert_eq!(request.path(), "/symbol_search/v3/");
        assert_eq!(request.query("text").as_deref(), Some("SYM"));
        assert_eq!(request.query("exchange").as_deref(), Some("NASDAQ"));
        assert_eq!(request.query("search_type").as_deref(), Some("stocks"));
        assert_eq!(request.query("hl").as_deref(), Some("0"));
        assert_eq!(request.query("lang").as_deref(), Some("en"));
        assert_eq!(request.query("domain").as_deref(), Some("production"));
    }
}

#[test]
fn search_stops_at_the_limit() {
    let server = search_server();
    let found = search::search(&server.client(), &SearchQuery::new("sym").with_limit(60)).unwrap();
    assert_eq!(found.len(), 60);
    assert_eq!(server.requests().len(), 2);
    let server = search_server();
    let found = search::search(&server.client(), &SearchQuery::new("sym")).unwrap();
    assert_eq!(found.len(), 50);
    assert_eq!(server.requests().len(), 1);
    assert_eq!(server.requests()[0].query("exchange").as_deref(), Some(""));
    assert_eq!(
        server.requests()[0].query("search_type").as_deref(),
        Some("")
    );
}

#[test]
fn search_stops_on_an_empty_page_and_reads_the_old_shape() {
    let server = serve_always(Answer::json(
        200,
        r#"{"symbols_remaining":999,"symbols":[]}"#,
    ));
    let found = search::search(&server.client(), &SearchQuery::new("x").with_limit(500)).unwrap();
    assert!(found.is_empty());
    assert_eq!(server.requests().len(), 1);

    let server = serve_always(Answer::json(
        200,
        r#"[{"symbol":"EURUSD","description":"Euro / U.S. <em>Dollar</em>","type":"forex","exchange":"FXCM","prefix":"FX"},{"description":"no symbol"}]"#,
    ));
    let found = search::search(&server.client(), &SearchQuery::new("S&P 500+é")).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, "FX:EURUSD");
    assert_eq!(found[0].description.as_deref(), Some("Euro / U.S. Dollar"));
    let request = &server.requests()[0];
    assert!(
        request
            .raw_query()
            .starts_with("text=S%26P%20500%2B%C3%89&hl=0&"),
        "{}",
        request.raw_query()
    );
    assert_eq!(request.query("text").as_deref(), Some("S&P 500+É"));
}

/// Answers every asked ticker but the MISSING ones, in reverse order, plus a row nobody asked
/// for and a later duplicate of the first row.
fn scanner_server() -> support::Server {
    serve(|request, _| {
        let body = request.json();
        let tickers: Vec<String> = body["symbols"]["tickers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ticker| ticker.as_str().unwrap().to_owned())
            .collect();
        let mut rows: Vec<String> = tickers
            .iter()
            .filter(|ticker| !ticker.contains("MISSING"))
            .map(|ticker| {
                let number: f64 = ticker.trim_start_matches("EX:T").parse().unwrap_or(-1.0);
                format!(
                    r#"{{"s":"{ticker}","d":[{number},0.5,null,1000,"delayed_streaming_900","<em>Name</em> {ticker}"]}}"#
                )
            })
            .rev()
            .collect();
        rows.push(r#"{"s":"UNASKED:X","d":[1,2,3,4,"streaming","x"]}"#.to_owned());
        if let Some(first) = tickers.first() {
            rows.push(format!(
                r#"{{"s":"{first}","d":[999999,null,null,null,null,null]}}"#
            ));
        }
        Answer::json(
            200,
            format!(
                r#"{{"totalCount":{},"data":[{}]}}"#,
                rows.len(),
                rows.join(",")
            ),
        )
    })
}

#[test]
fn the_scanner_chunks_and_matches_rows_by_ticker() {
    let server = scanner_server();
    let tickers: Vec<String> = (0..450)
        .map(|index| {
            if index % 100 == 99 {
                format!("EX:MISSING{index}")
            } else {
                format!("EX:T{index}")
            }
        })
        .collect();
    let mut asked: Vec<&str> = tickers.iter().map(String::as_str).collect();
    asked.push("EX:T0"); // a repeat is asked once
    let outcome = Scanner::new(server.client()).scan(&asked).unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let sizes: Vec<usize> = requests
        .iter()
        .map(|r| r.json()["symbols"]["tickers"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [200, 200, 50]);
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path(), "/global/scan");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("cookie"), None);
        let body = request.json();
        assert_eq!(
            body["columns"],
            serde_json::json!([
                "close",
                "change_abs",
                "change",
                "volume",
                "update_mode",
                "description"
            ])
        );
        assert_eq!(body["symbols"]["query"], serde_json::json!({"types": []}));
    }

    assert_eq!(
        outcome.missing,
        [
            "EX:MISSING99",
            "EX:MISSING199",
            "EX:MISSING299",
            "EX:MISSING399"
        ]
    );
    assert_eq!(outcome.rows.len(), 446);
    let first = &outcome.rows[0];
    assert_eq!(first.ticker, "EX:T0");
    assert_eq!(first.close, Some(0.0), "the first row for a ticker wins");
    assert_eq!(first.change_abs, Some(0.5));
    assert_eq!(first.change_percent, None);
    assert_eq!(first.volume, Some(1000.0));
    assert_eq!(first.update_mode.as_deref(), Some("delayed_streaming_900"));
    assert_eq!(first.description.as_deref(), Some("Name EX:T0"));
    let order: Vec<&str> = outcome
        .rows
        .iter()
        .take(3)
        .map(|r| r.ticker.as_str())
        .collect();
    assert_eq!(order, ["EX:T0", "EX:T1", "EX:T2"]);
    assert!(outcome.rows.iter().all(|row| row.ticker != "UNASKED:X"));
    assert_eq!(outcome.rows[445].ticker, "EX:T449");
}

#[test]
fn the_scanner_sends_the_session_cookie_when_it_has_one() {
    let server = scanner_server();
    let cookies = Cookies {
        sessionid: SESSION.into(),
        sessionid_sign: Some(SIGN.into()),
        device_t: None,
    };
    let scanner = Scanner::new(server.client())
        .with_market("america")
        .with_cookies(Some(cookies));
    let outcome = scanner.scan(&["EX:T1"]).unwrap();
    assert_eq!(outcome.rows.len(), 1);
    let request = &server.requests()[0];
    assert_eq!(request.path(), "/america/scan");
    assert_eq!(
        request.header("cookie").map(str::to_owned),
        Some(format!("sessionid={SESSION}; sessionid_sign={SIGN}"))
    );
    assert_no_secret(&format!("{scanner:?}"), &[SESSION, SIGN]);
}

#[test]
fn the_scanner_refuses_odd_markets_and_skips_empty_scans() {
    let server = scanner_server();
    let scanner = Scanner::new(server.client());
    assert_eq!(scanner.scan(&[]).unwrap(), Default::default());
    let error = scanner
        .clone()
        .with_market("../accounts")
        .scan(&["A:B"])
        .unwrap_err();
    assert!(matches!(error, HttpError::BadUrl(_)));
    assert!(server.requests().is_empty());
}

/// A server (a proxy's debug page, say) that echoes the request's cookies and body back in
/// its error bodies.
#[test]
fn echoed_secrets_never_reach_errors() {
    let server = serve(|request, index| {
        let echo = format!(
            "{} {}",
            request.header("cookie").unwrap_or_default(),
            support::form_decode(&String::from_utf8_lossy(&request.body))
        );
        let echo = echo.replace('"', "'");
        match index {
            0 | 2 => Answer::html(200, format!("<html>{echo}</html>")),
            1 | 3 => Answer::json(400, format!(r#"{{"error":"{echo}","code":"{echo}"}}"#)),
            _ => Answer::json(200, format!(r#"{{"error":"{echo} FRESHSECRET42"}}"#))
                .header("Set-Cookie", "sessionid=FRESHSECRET42; Path=/"),
        }
    });
    let client = server.client();
    let cookies = Cookies {
        sessionid: SESSION.into(),
        sessionid_sign: Some(SIGN.into()),
        device_t: Some(DEVICE.into()),
    };
    let scanner = Scanner::new(client.clone()).with_cookies(Some(cookies));
    let mut errors: Vec<String> = Vec::new();
    for _ in 0..2 {
        let error = scanner.scan(&["A:B"]).unwrap_err();
        errors.push(format!("{error} {error:?}"));
    }
    for _ in 0..3 {
        let error = signin::sign_in(&client, "alice", &Secret::from(PASSWORD)).unwrap_err();
        errors.push(format!("{error} {error:?}"));
    }
    assert_eq!(server.requests().len(), 5);
    for text in &errors {
        assert_no_secret(text, &[SESSION, SIGN, DEVICE, PASSWORD, "FRESHSECRET42"]);
        assert!(text.contains("<redacted>"), "{text}");
    }
}

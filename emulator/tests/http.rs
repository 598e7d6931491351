//! The emulator's HTTP side over loopback, with raw HTTP/1.1 on a tokio TcpStream: sign-in and
//! the second factor, the sign-in modes, the Origin/Referer check, the home page's token,
//! symbol search, the scanner, every HttpFault, refused upgrades, and the JWTs on the socket
//! (expired, expiring mid-connection, replaced, streaming vs delayed).
//!
//! Every wait has a deadline; nothing sleeps for a fixed time.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Client, PATIENCE, config};
use tickwire_emulator::{Account, Emulator, EmulatorConfig, HttpFault, SigninMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::connect_async;

const SITE: &str = "https://www.tradingview.com";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---- a raw HTTP/1.1 client ---------------------------------------------------------------

/// A request to build.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn get(target: &str) -> Req {
    Req {
        method: "GET",
        target: target.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn post(target: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Req {
    Req {
        method: "POST",
        target: target.to_owned(),
        headers: vec![("Content-Type".into(), content_type.into())],
        body: body.into(),
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The headers the client always sends: Origin, Referer, a browser user agent.
    fn browser(self) -> Req {
        self.header("Origin", SITE)
            .header("Referer", &format!("{SITE}/"))
            .header(
                "User-Agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
            )
            .header("Accept", "application/json")
    }

    fn cookies(self, jar: &[(String, String)]) -> Req {
        let cookie = jar
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        self.header("Cookie", &cookie)
    }

    fn bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(header, _)| header.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The `name=value` of every Set-Cookie, as a jar.
    fn jar(&self) -> Vec<(String, String)> {
        self.set_cookies()
            .iter()
            .filter_map(|cookie| {
                let pair = cookie.split(';').next()?;
                let (name, value) = pair.split_once('=')?;
                Some((name.trim().to_owned(), value.trim().to_owned()))
            })
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Splits a raw response into status, headers and the bytes after the head.
/// Status, headers, and where the body starts.
type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(raw: &[u8]) -> Option<Head> {
    let end = find(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect();
    Some((status, headers, end + 4))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(raw, b"\r\n") else {
            return body;
        };
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return body;
        }
        let start = line_end + 2;
        body.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
}

/// Sends the request and reads the whole answer (the server closes: `Connection: close`).
async fn send(addr: SocketAddr, request: &Req) -> Reply {
    send_raw(addr, &request.bytes(addr)).await
}

async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    let mut tcp = TcpStream::connect(addr).await.expect("connects");
    tcp.write_all(bytes).await.expect("writes");
    let mut raw = Vec::new();
    timeout_at(deadline, tcp.read_to_end(&mut raw))
        .await
        .expect("the answer in time")
        .expect("reads");
    let (status, headers, body_start) = parse_head(&raw)
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let mut reply = Reply {
        status,
        headers,
        body: raw[body_start..].to_vec(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|value| value.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(&reply.body);
    }
    reply
}

/// Signs `username` in with `password`; returns the answer.
async fn sign_in(addr: SocketAddr, username: &str, password: &str) -> Reply {
    send(
        addr,
        &post(
            "/accounts/signin/",
            "application/x-www-form-urlencoded",
            form(&[
                ("username", username),
                ("password", password),
                ("remember", "on"),
            ]),
        )
        .browser(),
    )
    .await
}

/// The session cookies of `demo`, and the JWT of its sign-in.
async fn demo_session(addr: SocketAddr) -> (Vec<(String, String)>, String) {
    let reply = sign_in(addr, "demo", "demo-password").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let token = reply.json()["user"]["auth_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    (reply.jar(), token)
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.as_bytes())
        .expect("base64url without padding");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The `var user = {...}` object of a home page, if any.
fn page_user(page: &str) -> Option<Value> {
    let start = page.find("var user = ")? + "var user = ".len();
    let mut values = serde_json::Deserializer::from_str(&page[start..]).into_iter::<Value>();
    values.next()?.ok()
}

// ---- a raw WebSocket client -------------------------------------------------------------

// The client itself is in `support`; what only these tests ask of it.
impl Client {
    async fn set_token(&mut self, token: &str) {
        self.send(&format!(r#"{{"m":"set_auth_token","p":["{token}"]}}"#))
            .await;
    }

    /// The `update_mode` of the snapshot of `symbol` in a new quote session `session`.
    async fn update_mode(&mut self, session: &str, symbol: &str) -> String {
        self.send(&format!(
            r#"{{"m":"quote_create_session","p":["{session}"]}}"#
        ))
        .await;
        self.send(&format!(
            r#"{{"m":"quote_add_symbols","p":["{session}","{symbol}"]}}"#
        ))
        .await;
        let (snapshot, _) = self
            .until(|packet| {
                packet.starts_with(r#"{"m":"qsd""#)
                    && packet.contains(session)
                    && packet.contains("update_mode")
            })
            .await;
        let parsed: Value = serde_json::from_str(&snapshot).unwrap();
        parsed["p"][1]["v"]["update_mode"]
            .as_str()
            .unwrap_or_else(|| panic!("{snapshot}"))
            .to_owned()
    }
}

const BAD_AUTH: &str = r#"{"m":"protocol_error","p":["bad auth token"]}"#;

// ---- sign-in -----------------------------------------------------------------------------

#[tokio::test]
async fn sign_in_sets_three_cookies_and_a_jwt_that_lives_the_configured_lifetime() {
    let lifetime = Duration::from_secs(7_200);
    let emulator = Emulator::start(EmulatorConfig {
        token_lifetime: lifetime,
        accounts: vec![
            Account::new("demo", "demo-password"),
            Account::new("odd user", "p&ss+w%rd é=1"),
        ],
        ..config()
    })
    .await
    .unwrap();
    let addr = emulator.addr();
    assert_eq!(emulator.http_base(), format!("http://{addr}"));
    let before = unix_now();
    let reply = sign_in(addr, "demo", "demo-password").await;
    let after = unix_now();
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let body = reply.json();
    assert_eq!(body["error"], "");
    let user = &body["user"];
    for key in [
        "id",
        "username",
        "first_name",
        "last_name",
        "is_pro",
        "pro_plan",
        "auth_token",
        "session_hash",
        "private_channel",
        "date_joined",
    ] {
        assert!(user.get(key).is_some(), "{key} in {user}");
    }
    assert_eq!(user["username"], "demo");
    assert_eq!(user["is_pro"], true);
    assert_eq!(user["pro_plan"], "pro_premium");
    assert_eq!(user["date_joined"], "2020-01-02T03:04:05.123456");
    let token = user["auth_token"].as_str().unwrap();
    assert!(
        token.starts_with("eyJ") && token.split('.').count() == 3,
        "{token}"
    );
    let header = data_encoding::BASE64URL_NOPAD
        .decode(token.split('.').next().unwrap().as_bytes())
        .unwrap();
    assert_eq!(header, br#"{"alg":"RS512","typ":"JWT"}"#);
    let claims = jwt_claims(token);
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(
        (before.floor() as u64..=after.ceil() as u64).contains(&iat),
        "iat {iat} within [{before}, {after}]"
    );
    let span = lifetime.as_secs();
    assert!(
        (before.floor() as u64 + span..=after.ceil() as u64 + span).contains(&exp),
        "exp {exp} = now + {span}"
    );
    assert_eq!(claims["user_id"], user["id"]);
    assert_eq!(claims["plan"], "pro_premium");
    assert_eq!(claims["prodplan"], "pro_premium");
    assert_eq!(claims["perm"], "");

    let cookies = reply.set_cookies();
    let names: Vec<&str> = cookies
        .iter()
        .map(|cookie| cookie.split('=').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sessionid", "sessionid_sign", "device_t"],
        "{cookies:?}"
    );
    for cookie in &cookies {
        for attribute in [
            "; Domain=127.0.0.1",
            "; Path=/",
            "; HttpOnly",
            "; Secure",
            "; SameSite=Lax",
            "; Max-Age=",
        ] {
            assert!(cookie.contains(attribute), "{attribute} in {cookie}");
        }
    }
    let stats = emulator.stats();
    assert_eq!(stats.tokens_issued.load(Ordering::Relaxed), 1);
    assert_eq!(stats.sign_ins.load(Ordering::Relaxed), 1);
    assert_eq!(emulator.http_requests("/accounts/signin/"), 1, "no retry");

    // Characters that break unescaped forms survive percent-encoding.
    let odd = sign_in(addr, "odd user", "p&ss+w%rd é=1").await;
    assert_eq!(odd.json()["user"]["username"], "odd user", "{}", odd.text());
    let wrong = sign_in(addr, "odd user", "p&ss w%rd é=1").await;
    assert_eq!(wrong.status, 200);
    assert_eq!(
        wrong.json(),
        json!({"error": "Invalid username or password.", "code": "invalid_credentials"})
    );
    assert!(wrong.set_cookies().is_empty());
    let unknown = sign_in(addr, "nobody", "demo-password").await;
    assert_eq!(unknown.json()["code"], "invalid_credentials");
    assert_eq!(emulator.http_requests("/accounts/"), 4);
    assert_eq!(stats.sign_ins.load(Ordering::Relaxed), 2);

    // A shorter lifetime takes effect for the next token.
    emulator.set_token_lifetime(Duration::from_secs(60));
    let (_, short) = demo_session(addr).await;
    let claims = jwt_claims(&short);
    let span = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!((59..=61).contains(&span), "{span}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_second_factor_is_asked_for_then_accepted_or_rejected() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    let first = sign_in(addr, "demo2fa", "demo-password").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.json(),
        json!({
            "error": "2FA_required",
            "code": "2FA_required",
            "message": "Second authentication factor is needed",
            "two_factor_types": [{"name": "totp"}],
        })
    );
    let provisional = first.jar();
    let names: Vec<&str> = provisional.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["sessionid", "sessionid_sign"]);
    let totp = |code: &str, jar: &[(String, String)]| {
        post(
            "/accounts/two-factor/signin/totp/",
            "application/x-www-form-urlencoded",
            form(&[("code", code)]),
        )
        .browser()
        .cookies(jar)
    };
    // Provisional cookies are not a session: the home page stays anonymous.
    let home = send(addr, &get("/").cookies(&provisional)).await;
    assert!(!home.text().contains("auth_token"));

    let secret = b"12345678901234567890";
    let now = unix_now() as u64;
    let good = tickwire_http::totp::code_at(secret, now);
    let wrong = if good == "000000" { "111111" } else { "000000" };
    let rejected = send(addr, &totp(wrong, &provisional)).await;
    assert_eq!(rejected.status, 400);
    assert_eq!(
        rejected.json(),
        json!({"error": "Invalid code", "code": "2FA_invalid_credential"})
    );
    let expired = send(addr, &totp(&good, &[])).await;
    assert_eq!(expired.status, 400);
    assert_eq!(expired.json()["code"], "2FA_challenge_expired");

    // (Steps either side are unit-tested; here one could fall past a step boundary.)
    let accepted = send(addr, &totp(&good, &provisional)).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let body = accepted.json();
    assert_eq!(body["error"], "");
    assert_eq!(body["user"]["username"], "demo2fa");
    assert!(
        body["user"]["auth_token"]
            .as_str()
            .unwrap()
            .starts_with("eyJ")
    );
    let session = accepted.jar();
    let session_id = session
        .iter()
        .find(|(name, _)| name == "sessionid")
        .unwrap();
    let provisional_id = provisional
        .iter()
        .find(|(name, _)| name == "sessionid")
        .unwrap();
    assert_ne!(session_id, provisional_id, "fresh cookies");
    let home = send(addr, &get("/").cookies(&session)).await;
    assert_eq!(page_user(&home.text()).unwrap()["username"], "demo2fa");
    let again = send(addr, &totp(&good, &provisional)).await;
    assert_eq!(again.json()["code"], "2FA_challenge_expired", "used once");

    // Too many wrong codes.
    let challenge = sign_in(addr, "demo2fa", "demo-password").await.jar();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(addr, &totp(wrong, &challenge)).await.status);
    }
    assert_eq!(statuses, [400, 400, 400, 400, 400, 429]);
    let too_many = send(addr, &totp(&good, &challenge)).await;
    assert_eq!(too_many.status, 429);
    assert_eq!(
        too_many.json(),
        json!({"error": "Too many requests", "code": "2FA_too_many_requests"})
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn each_signin_mode_answers_as_the_real_site_does() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    emulator.set_signin_mode(SigninMode::Captcha);
    let reply = sign_in(addr, "demo", "demo-password").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({
            "error": "Please confirm that you are not a robot by clicking the captcha box.",
            "code": "recaptcha_required",
        })
    );
    assert!(reply.set_cookies().is_empty());

    emulator.set_signin_mode(SigninMode::Lockout);
    let reply = sign_in(addr, "demo", "demo-password").await;
    assert_eq!(
        (reply.status, reply.json()),
        (
            200,
            json!({"error": "You have been locked out. Please try again later."})
        )
    );

    emulator.set_signin_mode(SigninMode::TryLater);
    let reply = sign_in(addr, "demo", "demo-password").await;
    assert_eq!(
        (reply.status, reply.json()),
        (
            200,
            json!({"error": "We're having a little trouble with that request. Try again a little later"})
        )
    );

    emulator.set_signin_mode(SigninMode::Html);
    let reply = sign_in(addr, "demo", "demo-password").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        reply.text().contains("<HTML>") && reply.text().contains("400 ERROR"),
        "{}",
        reply.text()
    );
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());

    emulator.set_signin_mode(SigninMode::RateLimited {
        retry_after: Some(90),
    });
    let reply = sign_in(addr, "demo", "demo-password").await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("90"));
    emulator.set_signin_mode(SigninMode::RateLimited { retry_after: None });
    let reply = sign_in(addr, "demo", "demo-password").await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), None);

    emulator.set_signin_mode(SigninMode::Normal);
    let reply = sign_in(addr, "demo", "demo-password").await;
    assert_eq!(reply.json()["error"], "");
    assert_eq!(emulator.http_requests("/accounts/signin/"), 7);
    assert_eq!(emulator.stats().sign_ins.load(Ordering::Relaxed), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn sign_in_search_and_scanner_need_the_tradingview_origin_and_referer() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    let signin = post(
        "/accounts/signin/",
        "application/x-www-form-urlencoded",
        form(&[("username", "demo"), ("password", "demo-password")]),
    );
    let search = get(
        "/symbol_search/v3/?text=AAPL&hl=0&exchange=&lang=en&search_type=&start=0&domain=production",
    );
    let scan = post(
        "/global/scan",
        "application/json",
        r#"{"symbols":{"tickers":["NASDAQ:AAPL"],"query":{"types":[]}},"columns":["close"]}"#,
    );
    for request in [&signin, &search, &scan] {
        let bare = send(addr, request).await;
        assert_eq!(bare.status, 403, "{} {}", request.method, request.target);
        assert_eq!(bare.text(), "<html><body>403 Forbidden</body></html>");
        assert!(
            bare.header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        let origin_only = send(addr, &request.clone().header("Origin", SITE)).await;
        assert_eq!(origin_only.status, 403);
        let referer_only = send(
            addr,
            &request.clone().header("Referer", &format!("{SITE}/")),
        )
        .await;
        assert_eq!(referer_only.status, 403);
        let elsewhere = send(
            addr,
            &request
                .clone()
                .header("Origin", "https://example.com")
                .header("Referer", "https://example.com/"),
        )
        .await;
        assert_eq!(elsewhere.status, 403);
        let with_path = send(
            addr,
            &request
                .clone()
                .header("Origin", SITE)
                .header("Referer", &format!("{SITE}/chart/abc/")),
        )
        .await;
        assert_eq!(with_path.status, 200, "{}", with_path.text());
    }
    // The home page needs neither.
    assert_eq!(send(addr, &get("/")).await.status, 200);
    emulator.shutdown().await;
}

// ---- the home page -----------------------------------------------------------------------

#[tokio::test]
async fn the_home_page_carries_a_fresh_token_for_a_valid_session_only() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    let anonymous = send(addr, &get("/").header("Accept", "text/html")).await;
    assert_eq!(anonymous.status, 200);
    assert!(
        anonymous
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        !anonymous.text().contains("auth_token"),
        "{}",
        anonymous.text()
    );

    let (jar, signin_token) = demo_session(addr).await;
    let page = send(addr, &get("/").cookies(&jar)).await;
    assert_eq!(page.status, 200);
    let text = page.text();
    assert!(text.contains("window.initData = {};"), "{text}");
    let user_at = text.find("var user = ").unwrap();
    assert!(
        text[..user_at].contains(r#""id":"#),
        "unrelated ids come first: {text}"
    );
    let user = page_user(&text).expect("a user object");
    assert_eq!(user["username"], "demo");
    assert!(user["id"].as_u64().is_some());
    let token = user["auth_token"].as_str().unwrap();
    assert!(token.starts_with("eyJ"));
    assert_ne!(token, signin_token, "a fresh token per page");
    assert_eq!(emulator.stats().tokens_issued.load(Ordering::Relaxed), 2);

    // A forged sign, an unknown id: anonymous.
    let forged: Vec<(String, String)> = jar
        .iter()
        .map(|(name, value)| {
            let value = if name == "sessionid_sign" {
                "v3:forged".to_owned()
            } else {
                value.clone()
            };
            (name.clone(), value)
        })
        .collect();
    assert!(
        !send(addr, &get("/").cookies(&forged))
            .await
            .text()
            .contains("auth_token")
    );
    let unknown = vec![("sessionid".to_owned(), "nosuchsession".to_owned())];
    assert!(
        !send(addr, &get("/").cookies(&unknown))
            .await
            .text()
            .contains("auth_token")
    );

    emulator.expire_sessions();
    let after = send(addr, &get("/").cookies(&jar)).await;
    assert_eq!(after.status, 200);
    assert!(!after.text().contains("auth_token"), "signed out");
    assert_eq!(emulator.http_requests("/"), 6);
    emulator.shutdown().await;
}

// ---- symbol search -----------------------------------------------------------------------

async fn search(addr: SocketAddr, query: &str) -> Value {
    let reply = send(addr, &get(&format!("/symbol_search/v3/?{query}")).browser()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn symbols(answer: &Value) -> Vec<String> {
    answer["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let prefix = item
                .get("prefix")
                .and_then(Value::as_str)
                .unwrap_or_else(|| item["exchange"].as_str().unwrap());
            format!("{prefix}:{}", item["symbol"].as_str().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn search_filters_pages_and_prefixes_like_the_real_endpoint() {
    let emulator = Emulator::start(EmulatorConfig {
        symbols: 130,
        ..config()
    })
    .await
    .unwrap();
    let addr = emulator.addr();
    let apple = search(
        addr,
        "text=apple&hl=0&exchange=&lang=en&search_type=&start=0&domain=production",
    )
    .await;
    assert_eq!(apple["symbols_remaining"], 0);
    let item = &apple["symbols"][0];
    assert_eq!(symbols(&apple), ["NASDAQ:AAPL"]);
    assert_eq!(item["symbol"], "AAPL");
    assert_eq!(item["type"], "stock");
    assert_eq!(item["exchange"], "NASDAQ");
    assert_eq!(item["currency_code"], "USD");
    assert_eq!(item["country"], "US");
    assert!(item["typespecs"].is_array() && item["provider_id"].is_string());
    assert_eq!(
        item["description"], "<em>Apple</em> Inc.",
        "one description is highlighted even with hl=0"
    );

    let forex = search(addr, "text=usd&hl=0&exchange=&search_type=forex&start=0").await;
    assert_eq!(symbols(&forex), ["FX:EURUSD", "FX:GBPUSD"]);
    for item in forex["symbols"].as_array().unwrap() {
        assert_eq!(
            (&item["exchange"], &item["prefix"]),
            (&json!("FXCM"), &json!("FX"))
        );
    }
    let crypto = search(addr, "text=&search_type=crypto&start=0").await;
    assert_eq!(symbols(&crypto), ["BINANCE:BTCUSDT", "BINANCE:ETHUSDT"]);
    assert_eq!(crypto["symbols"][0]["exchange"], "Binance");
    let nasdaq = search(addr, "text=&exchange=nasdaq&search_type=stocks").await;
    assert_eq!(symbols(&nasdaq), ["NASDAQ:AAPL", "NASDAQ:MSFT"]);
    let index = search(addr, "text=&search_type=index").await;
    assert_eq!(symbols(&index), ["SP:SPX", "NASDAQ:NDX", "TVC:GOLD"]);
    let none = search(addr, "text=zzzz&search_type=").await;
    assert_eq!(
        (none["symbols_remaining"].clone(), symbols(&none).len()),
        (json!(0), 0)
    );
    let futures = search(addr, "text=&search_type=futures").await;
    assert!(symbols(&futures).is_empty());

    // Highlighting with hl=1 wraps every match.
    let highlighted = search(addr, "text=us&hl=1&search_type=forex").await;
    for item in highlighted["symbols"].as_array().unwrap() {
        assert!(
            item["symbol"].as_str().unwrap().contains("<em>US</em>"),
            "{item}"
        );
    }
    let plain = search(addr, "text=synthetic&hl=0&start=0").await;
    let wrapped = plain["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["description"].as_str().unwrap().contains("<em>"))
        .count();
    assert_eq!(wrapped, 1, "exactly one description wrapped with hl=0");

    // Pages of 50: 120 synthetic symbols.
    let first = search(addr, "text=synthetic&start=0").await;
    assert_eq!(symbols(&first).len(), 50);
    assert_eq!(first["symbols_remaining"], 70);
    let second = search(addr, "text=synthetic&start=50").await;
    assert_eq!(second["symbols_remaining"], 20);
    assert_eq!(symbols(&second)[0], "EMU:S60");
    let last = search(addr, "text=synthetic&start=100").await;
    assert_eq!(
        (symbols(&last).len(), last["symbols_remaining"].clone()),
        (20, json!(0))
    );
    let beyond = search(addr, "text=synthetic&start=500").await;
    assert!(symbols(&beyond).is_empty());
    emulator.shutdown().await;
}

// ---- the scanner -------------------------------------------------------------------------

fn scan_request(tickers: &[&str], columns: &[&str]) -> Req {
    let body = json!({
        "symbols": {"tickers": tickers, "query": {"types": []}},
        "columns": columns,
    });
    post("/global/scan", "application/json", body.to_string()).browser()
}

fn rows(answer: &Value) -> Vec<(String, Vec<Value>)> {
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["s"].as_str().unwrap().to_owned(),
                row["d"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_scanner_reports_live_prices_leaves_unknown_tickers_out_and_delays_anonymous() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    let columns = [
        "close",
        "change_abs",
        "change",
        "volume",
        "update_mode",
        "description",
        "no_such_column",
    ];
    let reply = send(
        addr,
        &scan_request(
            &["NASDAQ:AAPL", "NOPE:XYZ", "BINANCE:BTCUSDT", "FX:EURUSD"],
            &columns,
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["totalCount"], 3);
    let rows = rows(&answer);
    let names: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["NASDAQ:AAPL", "BINANCE:BTCUSDT", "FX:EURUSD"]);
    let (_, aapl) = &rows[0];
    assert_eq!(aapl.len(), columns.len());
    assert!(aapl[0].as_f64().unwrap() > 0.0);
    assert!(aapl[3].as_f64().is_some(), "stocks have volume");
    assert_eq!(aapl[4], "delayed_streaming_900", "anonymous");
    assert_eq!(aapl[5], "Apple Inc.");
    assert_eq!(aapl[6], Value::Null, "unknown column");
    assert_eq!(rows[1].1[4], "streaming", "crypto always streams");
    assert_eq!(rows[2].1[3], Value::Null, "forex has no volume");

    let (jar, _) = demo_session(addr).await;
    let signed_in = send(
        addr,
        &scan_request(&["NASDAQ:AAPL"], &["update_mode"]).cookies(&jar),
    )
    .await;
    assert_eq!(rows_of(&signed_in)[0].1[0], "streaming");
    emulator.expire_sessions();
    let signed_out = send(
        addr,
        &scan_request(&["NASDAQ:AAPL"], &["update_mode"]).cookies(&jar),
    )
    .await;
    assert_eq!(rows_of(&signed_out)[0].1[0], "delayed_streaming_900");

    let many: Vec<String> = (0..1_001).map(|index| format!("EMU:S{index}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let too_many = send(addr, &scan_request(&many, &["close"])).await;
    assert_eq!(too_many.status, 400);
    assert_eq!(too_many.json(), json!({"error": "too many tickers"}));
    let thousand = send(addr, &scan_request(&many[..1_000], &["close"])).await;
    assert_eq!(thousand.status, 200);
    assert_eq!(
        thousand.json()["totalCount"],
        2,
        "of 12 symbols, EMU:S10 and EMU:S11"
    );
    let not_json = send(
        addr,
        &post("/global/scan", "application/json", "{").browser(),
    )
    .await;
    assert_eq!(not_json.status, 400);

    // The scanner's close is the price the socket streams: let the market move, stop it, and
    // compare with a fresh snapshot.
    let mut client = Client::connect(&emulator).await;
    client.set_token("unauthorized_user_token").await;
    client
        .send(r#"{"m":"quote_create_session","p":["qs_live"]}"#)
        .await;
    client
        .send(r#"{"m":"quote_add_symbols","p":["qs_live","NASDAQ:AAPL"]}"#)
        .await;
    let (first, _) = client.until(|packet| packet.contains(r#""lp":"#)).await;
    let lp = |packet: &str| -> f64 {
        let parsed: Value = serde_json::from_str(packet).unwrap();
        parsed["p"][1]["v"]["lp"].as_f64().unwrap()
    };
    let start_price = lp(&first);
    client
        .until(|packet| packet.contains(r#""lp":"#) && lp(packet) != start_price)
        .await;
    emulator.pause_market(true);
    // A batch made just as the pause began may still land: retry a few times.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let session = format!("qs_check{attempts}");
        client
            .send(&format!(
                r#"{{"m":"quote_create_session","p":["{session}"]}}"#
            ))
            .await;
        client
            .send(&format!(
                r#"{{"m":"quote_add_symbols","p":["{session}","NASDAQ:AAPL"]}}"#
            ))
            .await;
        let (snapshot, _) = client
            .until(|packet| packet.contains(&session) && packet.contains(r#""lp":"#))
            .await;
        let scanned = send(addr, &scan_request(&["NASDAQ:AAPL"], &["close"])).await;
        let close = rows_of(&scanned)[0].1[0].as_f64();
        if close == Some(lp(&snapshot)) {
            assert_ne!(lp(&snapshot), start_price, "the price moved");
            break;
        }
        assert!(attempts < 5, "scanner {close:?}, socket {}", lp(&snapshot));
    }
    emulator.shutdown().await;
}

fn rows_of(reply: &Reply) -> Vec<(String, Vec<Value>)> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    rows(&reply.json())
}

// ---- hostile answers ---------------------------------------------------------------------

#[tokio::test]
async fn status_html_and_oversized_faults_per_path_prefix() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    let search_request = get("/symbol_search/v3/?text=aapl").browser();
    emulator.set_http_fault(
        "/symbol_search/",
        HttpFault::Status {
            code: 503,
            retry_after: Some(12),
            html: false,
        },
    );
    let reply = send(addr, &search_request).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("12"));
    assert_eq!(reply.json(), json!({"error": "Service Unavailable"}));
    // Other paths are untouched.
    assert_eq!(
        send(addr, &scan_request(&["NASDAQ:AAPL"], &["close"]))
            .await
            .status,
        200
    );

    emulator.set_http_fault(
        "/symbol_search/",
        HttpFault::Status {
            code: 429,
            retry_after: None,
            html: true,
        },
    );
    let reply = send(addr, &search_request).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), None);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(reply.text().contains("429"));

    emulator.set_http_fault("/symbol_search/", HttpFault::HtmlInsteadOfJson);
    let reply = send(addr, &search_request).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());

    // The longest prefix wins.
    emulator.set_http_fault("/", HttpFault::Oversized);
    let reply = send(addr, &search_request).await;
    assert_eq!(reply.status, 200, "the search fault, not the one for /");
    let reply = send(addr, &scan_request(&["NASDAQ:AAPL"], &["close"])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), None, "streamed");
    assert_eq!(reply.body.len(), tickwire_emulator::OVERSIZED_BODY);
    assert_eq!(reply.body.len(), 9 * 1024 * 1024);

    emulator.clear_http_faults();
    assert_eq!(
        send(addr, &search_request).await.json()["symbols"][0]["symbol"],
        "AAPL"
    );
    assert_eq!(emulator.http_requests("/symbol_search/v3/"), 5);
    emulator.shutdown().await;
}

#[tokio::test]
async fn hang_and_trickle_faults_hold_the_answer_back() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    emulator.set_http_fault("/symbol_search/", HttpFault::Hang);
    let request = get("/symbol_search/v3/?text=aapl").browser();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&request.bytes(addr)).await.unwrap();
    let mut buffer = [0u8; 1024];
    let nothing = timeout(Duration::from_millis(1_500), tcp.read(&mut buffer)).await;
    assert!(nothing.is_err(), "no headers while hanging: {nothing:?}");
    // The request was read and counted.
    assert_eq!(emulator.http_requests("/symbol_search/"), 1);

    emulator.set_http_fault("/symbol_search/", HttpFault::Trickle);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&request.bytes(addr)).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut raw = Vec::new();
    let head_end = loop {
        let read = timeout_at(deadline, tcp.read(&mut buffer))
            .await
            .expect("headers in time")
            .unwrap();
        assert!(read > 0, "closed early");
        raw.extend_from_slice(&buffer[..read]);
        if let Some((status, headers, end)) = parse_head(&raw) {
            assert_eq!(status, 200);
            assert!(
                headers.iter().any(
                    |(name, value)| name.eq_ignore_ascii_case("transfer-encoding")
                        && value == "chunked"
                ),
                "{headers:?}"
            );
            break end;
        }
    };
    // The first byte comes…
    while dechunk(&raw[head_end..]).is_empty() {
        let read = timeout_at(deadline, tcp.read(&mut buffer))
            .await
            .expect("a first body byte in time")
            .unwrap();
        assert!(read > 0, "closed early");
        raw.extend_from_slice(&buffer[..read]);
    }
    // …then, at one byte a second, at most two more in the next 1.5 s.
    let window_end = Instant::now() + Duration::from_millis(1_500);
    while let Ok(read) = timeout_at(window_end, tcp.read(&mut buffer)).await {
        let read = read.unwrap();
        assert!(read > 0, "closed early");
        raw.extend_from_slice(&buffer[..read]);
    }
    let body = dechunk(&raw[head_end..]);
    assert!(
        (1..=3).contains(&body.len()),
        "{} bytes: {:?}",
        body.len(),
        String::from_utf8_lossy(&body)
    );
    // …and they are the start of the real answer.
    assert!(br#"{"symbols"#.starts_with(&body), "{body:?}");
    drop(tcp);
    emulator.shutdown().await;
}

#[tokio::test]
async fn redirect_faults_loop_hop_or_lack_a_location() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    emulator.set_http_fault("/symbol_search/", HttpFault::RedirectLoop);
    let target = "/symbol_search/v3/?text=aapl&start=0";
    let reply = send(addr, &get(target).browser()).await;
    assert_eq!(reply.status, 302);
    assert_eq!(
        reply.header("location"),
        Some(format!("http://{addr}{target}").as_str())
    );
    let again = send(addr, &get(target).browser()).await;
    assert_eq!(
        again.header("location"),
        reply.header("location"),
        "to itself, for ever"
    );

    emulator.set_http_fault("/symbol_search/", HttpFault::Redirects(3));
    let mut target = target.to_owned();
    let mut hops = Vec::new();
    let answer = loop {
        let reply = send(addr, &get(&target).browser()).await;
        if reply.status != 302 {
            break reply;
        }
        let location = reply.header("location").unwrap();
        target = location
            .strip_prefix(&format!("http://{addr}"))
            .unwrap()
            .to_owned();
        hops.push(target.clone());
        assert!(hops.len() <= 3, "{hops:?}");
    };
    assert_eq!(
        hops,
        [
            "/symbol_search/v3/?text=aapl&start=0&hop=1",
            "/symbol_search/v3/?text=aapl&start=0&hop=2",
            "/symbol_search/v3/?text=aapl&start=0&hop=3",
        ]
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["symbols"][0]["symbol"], "AAPL");

    emulator.set_http_fault("/", HttpFault::RedirectWithoutLocation);
    let reply = send(addr, &get("/")).await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location"), None);
    assert_eq!(emulator.http_requests("/symbol_search/"), 6);
    emulator.shutdown().await;
}

#[tokio::test]
async fn request_heads_and_bodies_are_bounded() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    let fits = send(addr, &get("/").header("X-Padding", &"x".repeat(15 * 1024))).await;
    assert_eq!(fits.status, 200);
    // Past 16 KiB of head: 431, though the server may close before reading it all, and a
    // reset can then swallow the answer. Never a page.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let huge = get("/")
        .header("X-Padding", &"x".repeat(17 * 1024))
        .bytes(addr);
    let _ = tcp.write_all(&huge).await;
    let mut raw = Vec::new();
    let _ = timeout(PATIENCE, tcp.read_to_end(&mut raw))
        .await
        .expect("an end in time");
    if let Some((status, _, _)) = parse_head(&raw) {
        assert_eq!(status, 431);
    }
    // A body declared past 1 MiB is refused before it is sent.
    let head = format!(
        "POST /global/scan HTTP/1.1\r\nHost: {addr}\r\nOrigin: {SITE}\r\nReferer: {SITE}/\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        1024 * 1024 + 1
    );
    let reply = send_raw(addr, head.as_bytes()).await;
    assert_eq!(reply.status, 413);
    // 1 MiB itself is read (and is not JSON).
    let body = "a".repeat(1024 * 1024);
    let reply = send(
        addr,
        &post("/global/scan", "application/json", body).browser(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json(), json!({"error": "the body is not JSON"}));
    let reply = send(addr, &get("/nowhere")).await;
    assert_eq!(reply.status, 404);
    let reply = send(addr, &get("/accounts/signin/").browser()).await;
    assert_eq!(reply.status, 405);
    emulator.shutdown().await;
}

// ---- the WebSocket side ------------------------------------------------------------------

#[tokio::test]
async fn refused_upgrades_leave_http_working_then_accept_again() {
    let emulator = Emulator::start(config()).await.unwrap();
    let addr = emulator.addr();
    emulator.refuse_upgrades(Some(503));
    let refused = connect_async(emulator.url()).await;
    let error = refused.expect_err("no WebSocket while refused").to_string();
    assert!(error.contains("503"), "{error}");
    assert_eq!(
        send(addr, &scan_request(&["NASDAQ:AAPL"], &["close"]))
            .await
            .status,
        200
    );
    assert_eq!(emulator.stats().upgrades_refused.load(Ordering::Relaxed), 1);
    assert_eq!(emulator.stats().sessions.load(Ordering::Relaxed), 0);
    emulator.refuse_upgrades(None);
    let mut client = Client::connect(&emulator).await;
    client.until(|packet| packet.contains("session_id")).await;
    assert_eq!(emulator.stats().sessions.load(Ordering::Relaxed), 1);
    assert_eq!(emulator.http_requests("/socket.io/"), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_http_connection_can_upgrade_after_a_request_and_the_429_fault_still_refuses() {
    let emulator = Emulator::start(EmulatorConfig {
        faults: vec!["#1:http-429".parse().unwrap()],
        ..config()
    })
    .await
    .unwrap();
    let error = connect_async(emulator.url())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("429"), "{error}");
    let mut client = Client::connect(&emulator).await;
    client.until(|packet| packet.contains("session_id")).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn expired_foreign_and_signed_out_jwts_are_refused_on_the_socket() {
    let emulator = Emulator::start(EmulatorConfig {
        token_lifetime: Duration::ZERO,
        ..config()
    })
    .await
    .unwrap();
    let addr = emulator.addr();
    let (_, expired) = demo_session(addr).await;
    let mut client = Client::connect(&emulator).await;
    client.set_token(&expired).await;
    let before = client.until_close_frame().await;
    assert_eq!(
        before.last().map(String::as_str),
        Some(BAD_AUTH),
        "{before:?}"
    );

    // Someone else's JWT (same shape, not issued here).
    emulator.set_token_lifetime(Duration::from_secs(3_600));
    let (jar, good) = demo_session(addr).await;
    let mut parts: Vec<&str> = good.split('.').collect();
    let other_signature = data_encoding::BASE64URL_NOPAD.encode(b"someone else's signature");
    parts[2] = &other_signature;
    let foreign = parts.join(".");
    let mut client = Client::connect(&emulator).await;
    client.set_token(&foreign).await;
    assert_eq!(
        client.until_close_frame().await.last().map(String::as_str),
        Some(BAD_AUTH)
    );

    // A good one works until its session is signed out.
    let mut client = Client::connect(&emulator).await;
    client.set_token(&good).await;
    assert_eq!(
        client.update_mode("qs_ok", "NASDAQ:AAPL").await,
        "streaming"
    );
    let page = send(addr, &get("/").cookies(&jar)).await;
    let from_page = page_user(&page.text()).unwrap()["auth_token"]
        .as_str()
        .unwrap()
        .to_owned();
    emulator.expire_sessions();
    for token in [&good, &from_page] {
        let mut late = Client::connect(&emulator).await;
        late.set_token(token).await;
        assert_eq!(
            late.until_close_frame().await.last().map(String::as_str),
            Some(BAD_AUTH)
        );
    }
    // The open connection goes on.
    client.until(|packet| packet.starts_with("~h~")).await;
    assert_eq!(emulator.stats().token_rejections.load(Ordering::Relaxed), 4);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_jwt_that_expires_mid_connection_gets_bad_auth_token_and_a_close() {
    let emulator = Emulator::start(EmulatorConfig {
        token_lifetime: Duration::from_secs(3),
        ..config()
    })
    .await
    .unwrap();
    let (_, token) = demo_session(emulator.addr()).await;
    let exp = jwt_claims(&token)["exp"].as_u64().unwrap();
    let mut client = Client::connect(&emulator).await;
    client.set_token(&token).await;
    assert_eq!(client.update_mode("qs_a", "NASDAQ:AAPL").await, "streaming");
    let before = client.until_close_frame().await;
    let closed_at = unix_now();
    assert_eq!(
        before.last().map(String::as_str),
        Some(BAD_AUTH),
        "{before:?}"
    );
    assert!(
        closed_at >= exp as f64,
        "closed at {closed_at}, before exp {exp}"
    );
    assert!(
        closed_at < exp as f64 + 5.0,
        "closed at {closed_at}, long after exp {exp}"
    );
    assert!(
        before
            .iter()
            .any(|packet| packet.contains("qs_a") && packet.contains(r#""lp":"#)),
        "data flowed until then"
    );
    assert_eq!(emulator.stats().token_rejections.load(Ordering::Relaxed), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_replacement_token_keeps_the_socket_alive_past_the_first_exp() {
    let emulator = Emulator::start(EmulatorConfig {
        token_lifetime: Duration::from_secs(3),
        ..config()
    })
    .await
    .unwrap();
    let addr = emulator.addr();
    let (jar, first) = demo_session(addr).await;
    let first_exp = jwt_claims(&first)["exp"].as_u64().unwrap();
    // The replacement is fetched first, so it arrives long before the first one runs out.
    emulator.set_token_lifetime(Duration::from_secs(60));
    let page = send(addr, &get("/").cookies(&jar)).await;
    let second = page_user(&page.text()).unwrap()["auth_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(jwt_claims(&second)["exp"].as_u64().unwrap() > first_exp + 10);
    let mut client = Client::connect(&emulator).await;
    client.set_token(&first).await;
    assert_eq!(client.update_mode("qs_a", "NASDAQ:AAPL").await, "streaming");
    client.set_token(&second).await;
    // Data goes on well past the first token's exp, with no answer to the replacement.
    let (_, before) = client
        .until(|packet| packet.starts_with("~h~") && unix_now() > first_exp as f64 + 1.0)
        .await;
    assert!(
        before
            .iter()
            .all(|packet| !packet.contains("protocol_error")),
        "{before:?}"
    );
    assert!(before.iter().any(|packet| packet.contains(r#""lp":"#)));
    assert_eq!(client.update_mode("qs_b", "NASDAQ:MSFT").await, "streaming");
    assert_eq!(emulator.stats().token_rejections.load(Ordering::Relaxed), 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn update_mode_streams_for_a_valid_jwt_and_for_crypto_and_is_delayed_otherwise() {
    let emulator = Emulator::start(config()).await.unwrap();
    let (_, token) = demo_session(emulator.addr()).await;
    let mut signed_in = Client::connect(&emulator).await;
    signed_in.set_token(&token).await;
    assert_eq!(
        signed_in.update_mode("qs_a", "NASDAQ:AAPL").await,
        "streaming"
    );
    assert_eq!(
        signed_in.update_mode("qs_b", "FX:EURUSD").await,
        "streaming"
    );
    let mut anonymous = Client::connect(&emulator).await;
    anonymous.set_token("unauthorized_user_token").await;
    assert_eq!(
        anonymous.update_mode("qs_c", "NASDAQ:AAPL").await,
        "delayed_streaming_900"
    );
    assert_eq!(
        anonymous.update_mode("qs_d", "BINANCE:BTCUSDT").await,
        "streaming"
    );
    let mut no_token = Client::connect(&emulator).await;
    assert_eq!(
        no_token.update_mode("qs_e", "SP:SPX").await,
        "delayed_streaming_900"
    );
    emulator.shutdown().await;
}

//! `tickwire login`, `logout`, `session` and `search`, and the feed commands with a stored
//! session and the polling fallback, end to end against the emulator's HTTP side.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{Server, exit_within, line_channel, scratch_dir, tickwire};
use tickwire_emulator::SigninMode;

const PASSWORD: &str = "demo-password";
/// The emulator's `demo2fa` TOTP secret ("12345678901234567890"), as an authenticator shows it.
const TOTP_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

fn login(server: &Server, session: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = tickwire()
        .args(["login", "--http-base", &server.http_base(), "--session"])
        .arg(session)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `tickwire <args> --http-base <the server's> --session <session>` with `envs`, standard input
/// closed, run to the end.
fn with_session(server: &Server, args: &[&str], session: &Path, envs: &[(&str, &str)]) -> Output {
    tickwire()
        .args(args)
        .args(["--http-base", &server.http_base(), "--session"])
        .arg(session)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `tickwire search <args> --http-base <the server's>`, run to the end.
fn search(server: &Server, args: &[&str]) -> Output {
    tickwire()
        .arg("search")
        .args(args)
        .args(["--http-base", &server.http_base()])
        .output()
        .unwrap()
}

/// `tickwire stream` against the emulator's socket and HTTP side; the test adds the rest.
fn stream(server: &Server) -> std::process::Command {
    let mut command = tickwire();
    command.args([
        "stream",
        "--url",
        &server.url(),
        "--http-base",
        &server.http_base(),
    ]);
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn signed_in(server: &Server, dir: &Path) -> std::path::PathBuf {
    let session = dir.join("session.json");
    let output = login(server, &session, &["demo"], &format!("{PASSWORD}\n"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    session
}

#[test]
fn login_stores_a_private_session_that_session_shows_and_logout_removes() {
    let server = Server::start();
    let dir = scratch_dir("login");
    let session = dir.join("nested").join("session.json");
    let output = with_session(
        &server,
        &["login", "demo"],
        &session,
        &[("TICKWIRE_PASSWORD", PASSWORD)],
    );
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("signed in as demo"), "{stdout}");
    let mode = std::fs::metadata(&session).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = std::fs::read_to_string(&session).unwrap();
    assert!(stored.contains("sessionid") && !stored.contains(PASSWORD));

    let output = with_session(&server, &["session", "--json"], &session, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["user"], "demo");
    assert_eq!(shown["plan"], "pro_premium");
    let valid = shown["token_valid_for_s"].as_u64().unwrap();
    assert!((3 * 3600..=4 * 3600).contains(&valid), "{shown}");
    let stdout = text(&output.stdout);
    assert!(
        !stdout.contains("eyJ"),
        "the token itself is never shown: {stdout}"
    );

    let output = tickwire()
        .args(["logout", "--session"])
        .arg(&session)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("signed out"));
    assert!(!session.exists());
    let output = with_session(&server, &["session"], &session, &[]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("run `tickwire login`"));
}

#[test]
fn the_second_factor_comes_from_the_secret_or_from_standard_input() {
    let server = Server::start();
    let dir = scratch_dir("login-2fa");
    let session = dir.join("a.json");
    let output = with_session(
        &server,
        &["login", "demo2fa"],
        &session,
        &[
            ("TICKWIRE_PASSWORD", PASSWORD),
            ("TICKWIRE_TOTP_SECRET", TOTP_SECRET),
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("signed in as demo2fa"));

    // Password and code on standard input, one line each, as a script would pipe them.
    let secret = tickwire_http::totp::decode_secret(TOTP_SECRET).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = tickwire_http::totp::code_at(&secret, now);
    let session = dir.join("b.json");
    let output = login(
        &server,
        &session,
        &["demo2fa"],
        &format!("{PASSWORD}\n{code}\n"),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(session.exists());

    // A wrong code: one line, nothing stored.
    let session = dir.join("c.json");
    let output = login(
        &server,
        &session,
        &["demo2fa"],
        &format!("{PASSWORD}\n000000\n"),
    );
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("second-factor code was refused"),
        "{stderr}"
    );
    assert!(!session.exists());
}

#[test]
fn refusals_are_one_line_that_says_what_to_do_and_are_never_retried() {
    let server = Server::start();
    let dir = scratch_dir("login-refused");
    let session = dir.join("session.json");
    let cases = [
        (SigninMode::Captcha, "captcha"),
        (SigninMode::Lockout, "locked the account out"),
        (SigninMode::TryLater, "refused the sign-in for now"),
        (
            SigninMode::RateLimited {
                retry_after: Some(3600),
            },
            "rate-limited",
        ),
        (SigninMode::Html, "sign-in request failed"),
    ];
    for (mode, expected) in cases {
        server.emulator().set_signin_mode(mode);
        let before = server.emulator().http_requests("/accounts/signin/");
        let output = login(&server, &session, &["demo"], &format!("{PASSWORD}\n"));
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{mode:?}");
        assert_eq!(stderr.lines().count(), 1, "{mode:?}: {stderr}");
        assert!(stderr.contains(expected), "{mode:?}: {stderr}");
        assert!(!stderr.contains(PASSWORD) && !text(&output.stdout).contains(PASSWORD));
        assert_eq!(
            server.emulator().http_requests("/accounts/signin/"),
            before + 1,
            "{mode:?}: exactly one sign-in request"
        );
        assert!(!session.exists());
    }
    server.emulator().set_signin_mode(SigninMode::Normal);
    let output = login(&server, &session, &["demo"], "wrong-password\n");
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("check the username and password"));
}

#[test]
fn pasted_browser_cookies_are_checked_before_they_are_stored() {
    let server = Server::start();
    let dir = scratch_dir("login-cookie");
    // Cookies as a browser would hold them after a sign-in.
    let first = signed_in(&server, &dir);
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    let header = format!(
        "sessionid={}; sessionid_sign={}",
        stored["cookies"]["sessionid"].as_str().unwrap(),
        stored["cookies"]["sessionid_sign"].as_str().unwrap()
    );
    let session = dir.join("pasted.json");
    let output = with_session(
        &server,
        &["login", "--cookie"],
        &session,
        &[("TICKWIRE_COOKIE", &header)],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("signed in as demo"));
    assert_eq!(
        std::fs::metadata(&session).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let session = dir.join("stale.json");
    let output = with_session(
        &server,
        &["login", "--cookie"],
        &session,
        &[("TICKWIRE_COOKIE", "sessionid=nosuchsession")],
    );
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("does not know these cookies"), "{stderr}");
    assert!(!stderr.contains("nosuchsession"));
    assert!(!session.exists());
}

#[test]
fn a_session_file_others_can_read_is_refused() {
    let server = Server::start();
    let dir = scratch_dir("session-mode");
    let session = signed_in(&server, &dir);
    std::fs::set_permissions(&session, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = stream(&server)
        .arg("--session")
        .arg(&session)
        .arg("NASDAQ:AAPL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("readable by others") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn search_prints_socket_ids_with_type_and_exchange() {
    let server = Server::start();
    let output = search(&server, &["apple"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("NASDAQ:AAPL"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("stock") && line.contains("Apple"), "{line}");
    assert!(!stdout.contains("<em>"), "{stdout}");

    let output = search(&server, &["EUR", "--type", "forex", "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let ids: Vec<String> = text(&output.stdout)
        .lines()
        .map(|line| {
            let found: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(found["kind"], "forex");
            found["id"].as_str().unwrap().to_owned()
        })
        .collect();
    // The prefix, not the exchange's display name, makes the id.
    assert!(ids.contains(&"FX:EURUSD".to_owned()), "{ids:?}");

    let output = search(&server, &[""]);
    assert!(!output.status.success());
}

/// Reads `receiver` until a line satisfies `wanted`, failing after `limit`.
fn line_matching(
    receiver: &std::sync::mpsc::Receiver<String>,
    limit: Duration,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no {what} within {limit:?}; saw {seen:#?}"),
        }
    }
}

#[test]
fn stream_uses_the_session_for_real_time_data_and_anonymous_is_delayed() {
    let server = Server::start();
    let dir = scratch_dir("stream-session");
    let session = signed_in(&server, &dir);
    for (flag, first, delayed, runtime) in [
        (None, "signed in as demo (pro_premium)", false, "tokio"),
        (None, "signed in as demo (pro_premium)", false, "async-std"),
        (
            Some("--anonymous"),
            "anonymous: delayed data",
            true,
            "tokio",
        ),
    ] {
        let mut command = stream(&server);
        command
            .args(["--runtime", runtime])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        match flag {
            Some(flag) => command.arg(flag),
            None => command.arg("--session").arg(&session),
        };
        let mut child = command.arg("NASDAQ:AAPL").spawn().unwrap();
        let lines = line_channel(child.stdout.take().unwrap());
        line_matching(&lines, Duration::from_secs(10), first, |line| {
            line.contains(first)
        });
        let quote = line_matching(&lines, Duration::from_secs(10), "an AAPL quote", |line| {
            line.contains("NASDAQ:AAPL") && line.contains("bid")
        });
        assert_eq!(quote.contains("[delayed]"), delayed, "{quote}");
        child.kill().unwrap();
        let _ = child.wait();
    }
}

#[test]
fn stream_polls_while_upgrades_are_refused_and_streams_again_after() {
    let server = Server::start();
    server.emulator().refuse_upgrades(Some(503));
    let mut child = stream(&server)
        .args([
            "--fallback",
            "poll",
            "--poll-after",
            "300ms",
            "--poll-interval",
            "300ms",
        ])
        .args(["--backoff-initial", "100ms", "--backoff-max", "500ms"])
        .args([
            "--breaker-recovery",
            "500ms",
            "--breaker-recovery-max",
            "1s",
        ])
        .args(["--anonymous", "NASDAQ:AAPL"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_matching_channel(&mut child);
    line_matching(&lines, Duration::from_secs(10), "a polled quote", |line| {
        line.contains("NASDAQ:AAPL") && line.contains("[poll]")
    });
    line_matching(&lines, Duration::from_secs(5), "the polling mode", |line| {
        line.contains("polling]")
    });
    server.emulator().refuse_upgrades(None);
    line_matching(
        &lines,
        Duration::from_secs(10),
        "a streamed quote",
        |line| line.contains("NASDAQ:AAPL") && line.contains("bid") && !line.contains("[poll]"),
    );
    child.kill().unwrap();
    assert!(exit_within(&mut child, Duration::from_secs(5)).is_some());
}

fn line_matching_channel(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    line_channel(child.stdout.take().unwrap())
}

#[test]
fn a_signed_out_session_streams_until_its_token_expires_then_says_to_log_in() {
    let server = Server::start();
    // Tokens from now on live 4 s: the stream's refresh comes after the sign-out below.
    server.emulator().set_token_lifetime(Duration::from_secs(4));
    let dir = scratch_dir("signed-out");
    let session = signed_in(&server, &dir);
    let mut child = stream(&server)
        .args(["--backoff-initial", "100ms"])
        .arg("--session")
        .arg(&session)
        .arg("NASDAQ:AAPL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_channel(child.stdout.take().unwrap());
    let errors = line_channel(child.stderr.take().unwrap());
    line_matching(&lines, Duration::from_secs(10), "a quote", |line| {
        line.contains("NASDAQ:AAPL") && line.contains("bid")
    });
    server.emulator().expire_sessions();
    // The refresh finds the session signed out: a warning, and data goes on meanwhile.
    line_matching(&errors, Duration::from_secs(10), "the warning", |line| {
        line.contains("signed out or expired: data flows until the current auth token expires")
    });
    // The token expires on the socket; nothing can replace it: one line, a failure.
    let status = exit_within(&mut child, Duration::from_secs(15)).expect("stream ends");
    assert!(!status.success());
    let last = line_matching(&errors, Duration::from_secs(2), "the final line", |line| {
        line.contains("run `tickwire login`")
    });
    assert!(last.starts_with("tickwire: the session in"), "{last}");
}

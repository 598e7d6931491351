//! `tickwire stream`, `history`, `emulate` and `demo` as a user runs them: the real binary
//! against the emulator over loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{Server, http_get, tickwire};

/// Runs `command`, collects stdout lines until `enough` says so (or 15 s pass), then kills it.
fn lines_until(command: &mut Command, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    while !enough(&lines) && start.elapsed() < Duration::from_secs(15) {
        if let Ok(line) = receiver.recv_timeout(Duration::from_millis(100)) {
            lines.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn stream_json_prints_quotes_and_bars() {
    let server = Server::start();
    let lines = lines_until(
        tickwire().args([
            "stream",
            "--json",
            "--bars",
            "1:5",
            "--url",
            &server.url(),
            "BINANCE:BTCUSDT",
            "NASDAQ:AAPL",
        ]),
        |lines| {
            lines
                .iter()
                .filter(|line| line.contains("\"type\":\"quote\""))
                .count()
                >= 5
        },
    );
    let objects: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let quote = objects
        .iter()
        .find(|object| object["type"] == "quote")
        .expect("a quote");
    for key in [
        "symbol",
        "price",
        "bid",
        "ask",
        "volume",
        "change",
        "change_pct",
        "time",
        "source",
    ] {
        assert!(quote.get(key).is_some(), "{key} missing in {quote}");
    }
    let bar = objects
        .iter()
        .find(|object| object["type"] == "bar")
        .expect("a bar");
    for key in [
        "symbol",
        "timeframe",
        "time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "closed",
    ] {
        assert!(bar.get(key).is_some(), "{key} missing in {bar}");
    }
    assert!(
        objects
            .iter()
            .any(|object| object["type"] == "status" && object["state"] == "live")
    );
}

#[test]
fn stream_async_std_runtime_prints_text() {
    let server = Server::start();
    let lines = lines_until(
        tickwire().args([
            "stream",
            "--runtime",
            "async-std",
            "--url",
            &server.url(),
            "FX:EURUSD",
        ]),
        |lines| lines.iter().any(|line| line.contains("FX:EURUSD")),
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("FX:EURUSD") && line.contains("bid")),
        "{lines:?}"
    );
}

#[test]
fn history_prints_csv_and_fails_clearly_on_a_bad_symbol() {
    let server = Server::start();
    let output = tickwire()
        .args([
            "history",
            "NASDAQ:AAPL",
            "--timeframe",
            "1D",
            "--count",
            "7",
            "--csv",
            "--url",
            &server.url(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "time,open,high,low,close,volume,closed");
    assert_eq!(lines.len(), 8);

    let output = tickwire()
        .args(["history", "NOPE:NOPE", "-t", "1", "--url", &server.url()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("NOPE:NOPE") && stderr.contains("invalid symbol"),
        "{stderr}"
    );
}

#[test]
fn unreachable_hosts_and_tls_failures_are_one_line_and_a_failure() {
    let fast = [
        "--max-attempts",
        "1",
        "--connect-timeout",
        "2s",
        "--backoff-initial",
        "100ms",
    ];
    let output = tickwire()
        .args(["stream", "--url", "ws://127.0.0.1:1/x", "NASDAQ:AAPL"])
        .args(fast)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("tickwire: cannot connect to ws://127.0.0.1:1/x"),
        "{stderr}"
    );

    // TLS against a plain server: the handshake fails.
    let server = Server::start();
    let tls_url = server.url().replace("ws://", "wss://");
    let output = tickwire()
        .args(["history", "NASDAQ:AAPL", "-t", "1", "--url", &tls_url])
        .args(fast)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to wss://"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn bad_command_lines_are_rejected_without_a_panic() {
    for args in [
        vec!["stream"],
        vec!["stream", "--read-timeout", "soon", "X:Y"],
        vec!["stream", "--url", "http://example.com", "X:Y"],
        vec!["stream", "--jitter", "3", "X:Y"],
        vec!["history", "X:Y"],
        vec!["emulate", "--fault", "explode"],
        vec!["stream", "--bars", "1:many", "X:Y"],
    ] {
        let output = tickwire().args(&args).output().unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.is_empty(),
            "{args:?}: {stderr}"
        );
    }
    let help = tickwire().args(["stream", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--connect-timeout",
        "--read-timeout",
        "--idle-heartbeats",
        "--data-silence",
        "--health-interval",
        "--grace",
        "--backoff-initial",
        "--backoff-max",
        "--jitter",
        "--max-attempts",
        "--breaker-recovery",
        "--rate-limit",
        "--burst",
        "--session",
        "--anonymous",
        "--http-base",
        "--fallback",
        "--poll-interval",
        "TICKWIRE_URL",
    ] {
        assert!(help.contains(flag), "{flag} missing from stream --help");
    }
}

#[test]
fn emulate_serves_other_clients() {
    let mut emulate = tickwire()
        .args(["emulate", "--listen", "127.0.0.1:0", "--rate", "100"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(emulate.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.split_whitespace().last().unwrap().to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"), "{first}");
    let output = tickwire()
        .args([
            "history",
            "BINANCE:BTCUSDT",
            "-t",
            "5",
            "-c",
            "3",
            "--json",
            "--url",
            &url,
        ])
        .output()
        .unwrap();
    let _ = emulate.kill();
    let _ = emulate.wait();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap().lines().count(), 3);
}

#[test]
fn demo_recovers_and_summarises() {
    let output = tickwire()
        .args(["demo", "--duration", "7s"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("++ recovered from remote closed"), "{text}");
    assert!(text.contains("== summary"), "{text}");
    // A short run squeezes the schedule: the reset, then the refused stretch's drop.
    assert!(text.contains("remote_closed          "), "{text}");
    assert!(text.contains("polling fallback"), "{text}");
}

/// Starts a relay and returns it with the address from its first line.
fn start_relay(command: &mut Command) -> (std::process::Child, String) {
    let mut relay = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(relay.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .to_owned();
    (relay, addr)
}

#[test]
fn relay_runs_on_the_embedded_emulator_and_stops_cleanly_on_sigterm() {
    let (mut relay, addr) = start_relay(tickwire().args(["relay", "--listen", "127.0.0.1:0"]));
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        match http_get(&addr, "/healthz") {
            Some((200, body)) => break body,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("relay never healthy: {other:?}"),
        }
    };
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["upstream"], "live");
    let (status, symbols) = http_get(&addr, "/symbols").unwrap();
    assert_eq!(status, 200);
    let symbols: Vec<String> = serde_json::from_str(&symbols).unwrap();
    assert!(
        symbols.contains(&"BINANCE:BTCUSDT".to_owned()),
        "{symbols:?}"
    );
    let (status, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("tickwire_relay_upstream_state{state=\"live\"} 1"));

    let killed = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = relay.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "relay still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "relay exited with {status}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut relay.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("upstream state=live"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
}

#[test]
fn relay_listens_by_host_name_and_its_page_offers_only_whitelisted_symbols() {
    let (mut relay, addr) = start_relay(tickwire().args([
        "relay",
        "--listen",
        "localhost:0",
        "--whitelist",
        "NASDAQ:AAPL,FX:EURUSD,EMU:S1",
    ]));
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let (status, symbols) = http_get(&addr, "/symbols").unwrap();
    assert_eq!(status, 200);
    let symbols: Vec<String> = serde_json::from_str(&symbols).unwrap();
    // The embedded emulator's defaults, less those the whitelist refuses.
    assert_eq!(symbols, ["NASDAQ:AAPL", "FX:EURUSD"]);
    relay.kill().unwrap();
    let _ = relay.wait();
}

#[test]
fn relay_rejects_bad_settings_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (args, expected) in [
        (
            vec!["relay", "--queue", "0"],
            "queue_capacity must be at least 1",
        ),
        (
            vec!["relay", "--whitelist", "/no/such/file"],
            "--whitelist /no/such/file: no such file",
        ),
        (vec!["relay", "--whitelist", ", ,"], "no symbols in it"),
        (vec!["relay", "--bars", "5 min"], "--bars"),
        (vec!["relay", "--bars", "7X"], "--bars 7X"),
        (vec!["relay", "--bars", "1:0"], "from 1 to 5000"),
        (vec!["relay", "--bars", "1:lots"], "from 1 to 5000"),
        (
            vec!["relay", "--max-upstream-symbols", "20000"],
            "relay settings: the hub may carry 20000 symbols upstream",
        ),
        (
            vec!["relay", "--upstream", "http://x"],
            "expected a ws:// or wss:// URL",
        ),
        (vec!["relay", "--listen", &taken], "cannot listen on"),
        (vec!["relay", "--keepalive", "often"], "often"),
        (
            vec!["relay", "--update-interval", "0.05"],
            "update interval must be from 0.1 to 3600 seconds",
        ),
    ] {
        let output = tickwire().args(&args).output().unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

/// The soft and hard open-file limits of a process, from /proc.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

#[cfg(target_os = "linux")]
#[test]
fn relay_raises_its_open_file_limit_and_warns_when_it_cannot_reach_its_connection_limit() {
    // A soft limit of 256 under a hard one of 4096: the relay lifts it to what 1 000 clients,
    // 1 024 HTTP connections and 64 internal files need.
    let shell = format!(
        "ulimit -S -n 256 && ulimit -H -n 4096 && \
         exec {} relay --listen 127.0.0.1:0 --emulator-rate 0 --max-connections 1000",
        env!("CARGO_BIN_EXE_tickwire")
    );
    let (mut relay, _) = start_relay(Command::new("sh").args(["-c", &shell]));
    let limits = open_file_limits(relay.id());
    relay.kill().unwrap();
    relay.wait().unwrap();
    assert_eq!(limits, ("2088".to_owned(), "4096".to_owned()));

    // A hard limit of 256 cannot be lifted: the relay says what that means, and still serves.
    let shell = format!(
        "ulimit -n 256 && exec {} relay --listen 127.0.0.1:0 --emulator-rate 0",
        env!("CARGO_BIN_EXE_tickwire")
    );
    let (mut relay, addr) = start_relay(Command::new("sh").args(["-c", &shell]));
    let served = http_get(&addr, "/symbols");
    relay.kill().unwrap();
    relay.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut relay.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(served.map(|(status, _)| status), Some(200));
    assert!(
        log.contains("open-file limit") && log.contains("limit=256"),
        "{log}"
    );
}

/// Runs `tickwire ARGS` with its standard output closed from the start (like `| head -0`) for
/// at most `within`: how it exited (`None`: still running, then killed) and its stderr.
fn run_with_output_closed(
    args: &[&str],
    within: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut child = tickwire()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    (exited, log)
}

#[test]
fn emulate_and_relay_keep_serving_when_their_output_is_closed() {
    for args in [
        ["emulate", "--listen", "127.0.0.1:0"].as_slice(),
        &["relay", "--listen", "127.0.0.1:0", "--emulator-rate", "0"],
    ] {
        let (exited, log) = run_with_output_closed(args, Duration::from_secs(2));
        assert!(
            exited.is_none() && !log.contains("panicked"),
            "{args:?} ended with {exited:?}: {log}"
        );
    }
}

#[test]
fn demo_ends_quietly_when_its_reader_goes_away() {
    let (exited, log) = run_with_output_closed(&["demo"], Duration::from_secs(10));
    assert!(
        exited.is_some_and(|status| status.success()) && log.is_empty(),
        "demo ended with {exited:?}: {log}"
    );
}

#[test]
fn emulate_lists_the_symbols_its_market_has() {
    let output = tickwire()
        .args(["emulate", "--list-symbols", "--symbols", "12"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let names: Vec<&str> = text
        .lines()
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names.len(), 12, "{text}");
    assert_eq!(names[0], "BINANCE:BTCUSDT");
    assert!(
        names.contains(&"NASDAQ:AAPL") && names.contains(&"FX:EURUSD"),
        "{text}"
    );
    let unique: std::collections::BTreeSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{text}");
    // Past the majors the synthetic symbols are numbered by their place in the market.
    assert!(names.iter().any(|name| name.starts_with("EMU:S")), "{text}");
}

#[test]
fn every_relay_flag_has_an_environment_variable() {
    let output = tickwire().args(["relay", "--help"]).output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    // Each option's block in --help, from its `--name` line to the next option.
    let mut missing = Vec::new();
    let mut current: Option<(String, bool)> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(flag) = trimmed
            .strip_prefix("--")
            .or_else(|| trimmed.get(4..).and_then(|rest| rest.strip_prefix("--")))
            .filter(|_| line.starts_with("  "))
        {
            if let Some((name, false)) = current.take() {
                missing.push(name);
            }
            let name = flag.split([' ', '=']).next().unwrap_or_default().to_owned();
            current = Some((name, false));
        }
        if line.contains("[env: TICKWIRE_") {
            if let Some((_, seen)) = current.as_mut() {
                *seen = true;
            }
        }
    }
    if let Some((name, false)) = current {
        missing.push(name);
    }
    missing.retain(|name| name != "help");
    assert!(
        missing.is_empty(),
        "flags without an environment variable: {missing:?}"
    );
    // And the variables work: a bad limit from the environment is refused like the flag.
    let output = tickwire()
        .args(["relay", "--listen", "127.0.0.1:0"])
        .env("TICKWIRE_RELAY_QUEUE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("queue_capacity must be at least 1"));
}

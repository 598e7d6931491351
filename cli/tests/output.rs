//! What `tickwire history` and `stream` print (timeframes, closed bars, integer times) and how
//! `stream` stops on SIGTERM: the real binary against the emulator over loopback.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod support;

use support::{Server, exit_within, line_channel, tickwire};

/// Runs `command` to the end (killed after 20 s): status, stdout, stderr.
fn run(command: &mut Command) -> (ExitStatus, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let status = exit_within(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let status = status.unwrap_or_else(|| panic!("still running after 20 s: {stderr}"));
    (status, stdout, stderr)
}

/// Reads lines until `wanted` holds for one of them or `within` passes; every line read.
fn lines_until(
    lines: &Receiver<String>,
    within: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let done = wanted(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("nothing wanted within {within:?}: {seen:?}");
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn history_refuses_a_bad_timeframe_before_connecting() {
    // A listener nobody should reach: a connection attempt would wait in its backlog.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "ws://{}/socket.io/websocket",
        listener.local_addr().unwrap()
    );
    for timeframe in ["7X", "15min", "0", "1.5", "25h", ""] {
        let started = Instant::now();
        let (status, stdout, stderr) = run(tickwire().args([
            "history",
            "NASDAQ:AAPL",
            "--timeframe",
            timeframe,
            "--url",
            &url,
        ]));
        assert!(!status.success(), "{timeframe:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{timeframe:?} took {:?}",
            started.elapsed()
        );
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains(&format!("timeframe {timeframe:?} is not valid")),
            "{stderr}"
        );
        for form in [
            "seconds 1S",
            "minutes 1, 5",
            "1h",
            "days 1D",
            "weeks 1W",
            "months 1M",
        ] {
            assert!(stderr.contains(form), "{form} missing: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the command connected"
    );
}

#[test]
fn stream_refuses_a_bad_bars_timeframe() {
    let (status, _, stderr) = run(tickwire().args([
        "stream",
        "--bars",
        "15min:5",
        "--url",
        "ws://127.0.0.1:1/x",
        "NASDAQ:AAPL",
    ]));
    assert!(!status.success());
    assert!(
        stderr.contains("timeframe \"15min\" is not valid"),
        "{stderr}"
    );
}

/// `history NASDAQ:AAPL -t 1h -c 5 EXTRA...` against `server`: stdout, checked to succeed.
/// Retried once if an hour boundary passed during the request (the forming bar then closed).
fn history_1h(server: &Server, extra: &[&str], forming_last: impl Fn(&str) -> bool) -> String {
    let mut stdout = String::new();
    for _ in 0..2 {
        let (status, out, stderr) = run(tickwire()
            .args(["history", "NASDAQ:AAPL", "--timeframe", "1h", "-c", "5"])
            .args(extra)
            .args(["--url", &server.url()]));
        assert!(status.success(), "{stderr}");
        stdout = out;
        if stdout.lines().last().is_some_and(&forming_last) {
            break;
        }
    }
    stdout
}

#[test]
fn history_json_has_integer_times_and_the_forming_bar_open() {
    let server = Server::start_at(50.0);
    let stdout = history_1h(&server, &["--json"], |line| {
        line.contains("\"closed\":false")
    });
    let bars: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(bars.len(), 5, "{stdout}");
    let now = unix_now();
    for (position, bar) in bars.iter().enumerate() {
        assert_eq!(bar["timeframe"], "60", "sent in the server's form: {bar}");
        let time = bar["time"]
            .as_i64()
            .unwrap_or_else(|| panic!("time not an integer: {bar}"));
        assert!(
            bar["volume"].is_i64() || bar["volume"].is_u64(),
            "volume not an integer: {bar}"
        );
        let last = position == bars.len() - 1;
        assert_eq!(bar["closed"], !last, "{bar}");
        if last {
            assert!(time <= now && now < time + 3_600, "{bar} at {now}");
        }
    }
    for line in stdout.lines() {
        assert!(!line.contains(".0,\"open\""), "{line}");
    }
}

#[test]
fn history_csv_and_text_show_closed_and_integral_times() {
    let server = Server::start_at(50.0);
    let stdout = history_1h(&server, &["--csv"], |line| line.ends_with(",false"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "time,open,high,low,close,volume,closed");
    assert_eq!(lines.len(), 6, "{stdout}");
    for (position, line) in lines[1..].iter().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 7, "{line}");
        assert!(fields[0].parse::<i64>().is_ok(), "time {line}");
        assert!(fields[5].parse::<i64>().is_ok(), "volume {line}");
        let expected = if position == 4 { "false" } else { "true" };
        assert_eq!(fields[6], expected, "{line}");
    }

    let stdout = history_1h(&server, &[], |line| line.ends_with(" forming"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for line in &lines {
        let time = line.split_whitespace().next().unwrap();
        assert!(time.parse::<i64>().is_ok(), "{line}");
    }
}

#[test]
fn stream_bars_use_the_canonical_timeframe_and_integer_times() {
    let server = Server::start_at(50.0);
    let mut child = tickwire()
        .args([
            "stream",
            "--json",
            "--bars",
            "1h:3",
            "--url",
            &server.url(),
            "NASDAQ:AAPL",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_channel(child.stdout.take().unwrap());
    let seen = lines_until(&lines, Duration::from_secs(15), |line| {
        line.contains("\"type\":\"bar\"")
    });
    let _ = child.kill();
    let _ = child.wait();
    let bar: Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    assert_eq!(bar["timeframe"], "60", "{bar}");
    assert!(bar["time"].is_i64(), "{bar}");
    assert!(bar["volume"].is_i64() || bar["volume"].is_u64(), "{bar}");
    let quote = seen
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|object| object["type"] == "quote");
    if let Some(quote) = quote {
        assert!(
            quote["volume"].is_u64() || quote["volume"].is_null(),
            "{quote}"
        );
        assert!(quote["time"].is_i64() || quote["time"].is_null(), "{quote}");
    }
}

#[cfg(unix)]
#[test]
fn stream_stops_cleanly_on_sigterm() {
    for runtime in ["tokio", "async-std"] {
        stream_stops_cleanly_on_sigterm_on(runtime);
    }
}

#[cfg(unix)]
fn stream_stops_cleanly_on_sigterm_on(runtime: &str) {
    let server = Server::start_at(50.0);
    let mut child = tickwire()
        .args([
            "stream",
            "--json",
            "--runtime",
            runtime,
            "--url",
            &server.url(),
            "BINANCE:BTCUSDT",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_channel(child.stdout.take().unwrap());
    lines_until(&lines, Duration::from_secs(15), |line| {
        line.contains("\"type\":\"quote\"")
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = exit_within(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = status.unwrap_or_else(|| panic!("stream still running 10 s after SIGTERM"));
    assert!(status.success(), "stream exited with {status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn stream_stops_cleanly_on_sigterm_while_still_connecting() {
    // Nothing answers the handshake: the signal arrives before any event.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/x", listener.local_addr().unwrap());
    let mut child = tickwire()
        .args(["stream", "--url", &url, "NASDAQ:AAPL"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it has connected (so its runtime and handlers are up).
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let _socket = loop {
        match listener.accept() {
            Ok(connection) => break connection,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "stream never connected");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("{error}"),
        }
    };
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = exit_within(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status.expect("stream still running 10 s after SIGTERM");
    assert!(status.success(), "stream exited with {status}");
}

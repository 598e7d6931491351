//! The binary against field conditions: a rejected token ends `stream`, `history` and `relay`
//! with one clear line; `emulate` shuts down cleanly on SIGTERM; two processes started together
//! neither share session ids nor retry in lockstep.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;

use support::{line_channel, tickwire};

/// A free loopback port, released again so a child can take it.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `child` to exit within `limit`; kills it and fails the test otherwise.
fn exit_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    support::exit_within(child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{what} did not exit within {limit:?}")
    })
}

/// Collects lines until `enough` holds or `limit` passes.
fn collect_until(
    receiver: &mpsc::Receiver<String>,
    limit: Duration,
    enough: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut collected = Vec::new();
    while !enough(&collected) && Instant::now() < deadline {
        if let Ok(line) = receiver.recv_timeout(Duration::from_millis(50)) {
            collected.push(line);
        }
    }
    collected
}

/// `tickwire emulate` on a free port; returns the child, its URL and its stderr lines.
fn emulator(extra: &[&str]) -> (Child, String, mpsc::Receiver<String>) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tickwire()
        .args([
            "emulate",
            "--listen",
            &listen,
            "--rate",
            "50",
            "--heartbeat",
            "200ms",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = line_channel(child.stdout.take().unwrap());
    let stderr = line_channel(child.stderr.take().unwrap());
    let ready = collect_until(&stdout, Duration::from_secs(10), |lines| {
        lines.iter().any(|line| line.contains("listening on"))
    });
    assert!(!ready.is_empty(), "the emulator started");
    (
        child,
        format!("ws://{listen}/socket.io/websocket?type=chart"),
        stderr,
    )
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A fixed token the server rejects is final: one line naming the token (not showing it), a
/// non-zero exit, and no retry loop.
#[test]
fn a_rejected_token_stops_stream_history_and_relay_with_one_clear_line() {
    let (mut server, url, _) = emulator(&[]);
    // The emulator rejects tokens that start with "bad".
    let secret = "bad-secret-value";
    let commands: [Vec<&str>; 3] = [
        vec!["stream", "NASDAQ:AAPL", "--url", &url],
        vec!["history", "NASDAQ:AAPL", "-t", "1D", "--url", &url],
        vec!["relay", "--listen", "127.0.0.1:0", "--upstream", &url],
    ];
    for args in commands {
        let mut child = tickwire()
            .args(&args)
            .env("TICKWIRE_AUTH_TOKEN", secret)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let status = exit_within(&mut child, Duration::from_secs(10), args[0]);
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        assert!(!status.success(), "{} exited {status}", args[0]);
        let last = text.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("tickwire: the server rejected the auth token (a 16-character token)"),
            "{}: {text}",
            args[0]
        );
        assert!(
            !text.contains(secret),
            "{}: the token leaked: {text}",
            args[0]
        );
    }
    terminate(&server);
    exit_within(&mut server, Duration::from_secs(10), "emulate");
}

#[test]
fn emulate_shuts_down_cleanly_on_sigterm_with_close_frames() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let (mut server, url, _) = emulator(&[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        // The hello arrives: the connection is served.
        let hello = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
        assert!(matches!(hello, Ok(Some(Ok(Message::Text(_))))), "{hello:?}");
        terminate(&server);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut closed = false;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, socket.next()).await {
            if matches!(message, Ok(Message::Close(_))) {
                closed = true;
                break;
            }
        }
        assert!(closed, "a close frame before the process ended");
        let _ = socket.close(None).await;
    });
    let status = exit_within(&mut server, Duration::from_secs(10), "emulate");
    assert!(status.success(), "emulate exited {status} on SIGTERM");
}

/// Two processes started together draw different seeds: different session ids at the server,
/// and different retry delays against a port that refuses them. (With a fixed seed both would
/// be identical, so this fails if the seed ever becomes a constant again.)
#[test]
fn two_processes_started_together_do_not_move_in_lockstep() {
    let (mut server, url, stderr) = emulator(&["--verbose"]);
    let mut streams: Vec<Child> = (0..2)
        .map(|_| {
            tickwire()
                .args(["stream", "NASDAQ:AAPL", "--json", "--url", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let sessions: Vec<String> = collect_until(&stderr, Duration::from_secs(10), |lines| {
        lines
            .iter()
            .filter(|line| line.contains("quote session"))
            .count()
            >= 2
    })
    .into_iter()
    .filter(|line| line.contains("quote session"))
    .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
    .collect();
    for stream in &mut streams {
        let _ = stream.kill();
        let _ = stream.wait();
    }
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_ne!(
        sessions[0], sessions[1],
        "two processes drew the same session id"
    );
    terminate(&server);
    exit_within(&mut server, Duration::from_secs(10), "emulate");

    // Nobody listens on this port: every attempt is refused and backs off.
    let refused = format!("ws://127.0.0.1:{}/socket.io/websocket", free_port());
    let delays: Vec<Vec<u64>> = {
        let children: Vec<(Child, mpsc::Receiver<String>)> = (0..2)
            .map(|_| {
                let mut child = tickwire()
                    .args(["stream", "NASDAQ:AAPL", "--json", "--url", &refused])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let stdout = line_channel(child.stdout.take().unwrap());
                (child, stdout)
            })
            .collect();
        children
            .into_iter()
            .map(|(mut child, stdout)| {
                let retries = |lines: &[String]| -> Vec<u64> {
                    lines
                        .iter()
                        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                        .filter(|value| value["type"] == "status" && value["cause"].is_string())
                        .filter_map(|value| value["retry_in_ms"].as_u64())
                        .collect()
                };
                let seen = collect_until(&stdout, Duration::from_secs(10), |lines| {
                    retries(lines).len() >= 2
                });
                let _ = child.kill();
                let _ = child.wait();
                retries(&seen)
            })
            .collect()
    };
    assert!(delays.iter().all(|list| list.len() >= 2), "{delays:?}");
    // Jitter is ±20 % of 1 s and 2 s: independent draws differ by more than printing noise.
    let apart = delays[0]
        .iter()
        .zip(&delays[1])
        .any(|(first, second)| first.abs_diff(*second) > 30);
    assert!(apart, "both processes retried in lockstep: {delays:?}");
}

/// An answer the server already gave ends `history` at once with the server's reason, instead
/// of the history timeout.
#[test]
fn history_fails_at_once_with_the_servers_reason() {
    let (mut server, url, _) = emulator(&[]);
    let started = Instant::now();
    let output = tickwire()
        .args(["history", "NASDAQ:AAPL", "-t", "5S", "--url", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("seconds_not_entitled"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered in {:?}, well inside the 30 s history timeout",
        started.elapsed()
    );
    terminate(&server);
    exit_within(&mut server, Duration::from_secs(10), "emulate");
}

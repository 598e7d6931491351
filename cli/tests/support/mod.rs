//! What the CLI test binaries share: the binary with a clean environment, an emulator on its own
//! runtime, and waiting on children and their output with deadlines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use tickwire_emulator::{Emulator, EmulatorConfig};

/// The `tickwire` binary; nothing from the developer's environment leaks into the tests, not
/// even a stored session: the configuration directory is one of the test's own.
pub(crate) fn tickwire() -> Command {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickwire"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TICKWIRE_") {
            command.env_remove(name);
        }
    }
    let config_home = std::env::temp_dir().join(format!(
        "tickwire-cli-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    command.env("XDG_CONFIG_HOME", config_home);
    command
}

/// The emulator on its own runtime, shut down on drop.
pub(crate) struct Server {
    runtime: tokio::runtime::Runtime,
    emulator: Option<Emulator>,
}

impl Server {
    /// Ten symbols ticking 200 times a second in all.
    pub(crate) fn start() -> Server {
        Server::start_at(200.0)
    }

    pub(crate) fn start_at(rate_hz: f64) -> Server {
        Server::start_with(EmulatorConfig {
            rate_hz,
            symbols: 10,
            ..EmulatorConfig::default()
        })
    }

    pub(crate) fn start_with(config: EmulatorConfig) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let emulator = runtime.block_on(Emulator::start(config)).unwrap();
        Server {
            runtime,
            emulator: Some(emulator),
        }
    }

    pub(crate) fn url(&self) -> String {
        self.emulator().url()
    }

    /// The emulator's HTTP side (sign-in, home page, search, scanner), for `--http-base`.
    pub(crate) fn http_base(&self) -> String {
        self.emulator().http_base()
    }

    pub(crate) fn emulator(&self) -> &Emulator {
        self.emulator.as_ref().unwrap()
    }
}

/// A directory of the test's own, removed and created afresh.
pub(crate) fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tickwire-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(emulator) = self.emulator.take() {
            self.runtime.block_on(emulator.shutdown());
        }
    }
}

/// A plain HTTP/1.0 GET against a relay: status code and body. `None` when it cannot connect
/// or does not answer within 10 s.
pub(crate) fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n").ok()?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Waits up to `within` for `child` to exit.
pub(crate) fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines of a child's output, sent as they come (read on a thread, so a test can wait on
/// them with a deadline).
pub(crate) fn line_channel(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

//! A real `redis-server` for the cluster tests (no mocks of Redis): started on a free loopback
//! port with persistence off and a directory of its own, and stopped when dropped.
//!
//! When `redis-server` is missing, [`RedisServer::start`] prints a notice and returns `None`
//! so the test can return early, unless CI asks for it (`CI=true`, or
//! `TICKWIRE_REQUIRE_REDIS` set as `.ci/run` does, like `TICKWIRE_REQUIRE_BROWSER`): then a
//! missing server is a failure. Every wait polls with a deadline.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it is started.
const STARTUP: Duration = Duration::from_secs(10);

/// Ports tried before giving up (another process may take a free port before the server
/// binds it).
const ATTEMPTS: usize = 5;

/// A `redis-server` child process. Dropping it kills the server and removes its directory.
#[derive(Debug)]
pub(crate) struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    /// `None` once killed.
    child: Option<Child>,
}

impl RedisServer {
    /// A running, empty server, or `None` (after a notice on stderr) when `redis-server` is
    /// not installed and CI does not require it.
    ///
    /// # Panics
    /// When the server cannot be started, or is missing while CI requires it.
    pub(crate) fn start() -> Option<RedisServer> {
        let Some(binary) = find_binary() else {
            assert!(
                !required(),
                "redis-server not found on PATH, and CI requires the Redis tests \
                 (CI=true or TICKWIRE_REQUIRE_REDIS): apt-get install -y redis-server"
            );
            eprintln!("skipping: redis-server not found (apt install redis-server)");
            return None;
        };
        static SERVERS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tickwire-redis-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the Redis server's directory");
        let mut server = RedisServer {
            binary,
            port: 0,
            dir,
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(why) => failures.push(format!("port {}: {why}", server.port)),
            }
        }
        panic!(
            "redis-server did not start in {ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    ///
    /// # Panics
    /// After [`RedisServer::kill`].
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server was killed").id()
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (SIGKILL; every connection drops) and starts an empty one on the same
    /// port.
    ///
    /// # Panics
    /// When it does not come back.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let mut failures = Vec::new();
        // The port was ours a moment ago; another process taking it now is unlikely, and
        // redis-server binds with SO_REUSEADDR, so a retry or two is all it can need.
        for _ in 0..ATTEMPTS {
            match self.spawn() {
                Ok(()) => return,
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "redis-server did not restart on port {}:\n{}",
            self.port,
            failures.join("\n")
        );
    }

    /// Kills the server (SIGKILL) and waits for it to exit; it stays down.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}: {status}", self.pid());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts the server on `self.port` and waits until it answers as itself.
    fn spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|error| format!("open the log: {error}"))?;
        let log_err = log
            .try_clone()
            .map_err(|error| format!("clone the log: {error}"))?;
        let mut child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|error| format!("run {}: {error}", self.binary.display()))?;
        let deadline = Instant::now() + STARTUP;
        loop {
            // The pid check: a server that failed to bind must not pass for one that another
            // test started on the same port.
            if server_pid(self.port) == Some(child.id()) {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}); its log:\n{}", self.log_tail()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer within {STARTUP:?}; its log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server's log (last lines) ---\n{}",
                self.log_tail()
            );
        }
        // A paused server still dies of SIGKILL.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether CI requires the Redis tests to run.
fn required() -> bool {
    let set = |name: &str| {
        std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0" && value != "false")
    };
    set("CI") || set("TICKWIRE_REQUIRE_REDIS")
}

/// `redis-server` on `PATH`, or in the usual places.
fn find_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("redis-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/bin/redis-server", "/usr/local/bin/redis-server"].map(PathBuf::from))
        .find(|candidate| is_file(candidate))
}

fn is_file(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| file.metadata().is_ok_and(|meta| meta.is_file()))
}

/// A port nothing listens on right now (the kernel's pick, released at once).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// The `process_id` that the server on `port` reports in `INFO server`, if one answers.
fn server_pid(port: u16) -> Option<u32> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    // A bulk string: `$<length>\r\n<text>\r\n` (an error such as -LOADING is not an answer).
    let mut reply = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&reply);
        // Until the header's line is complete there is nothing to judge.
        let Some((header, body)) = text.split_once("\r\n") else {
            continue;
        };
        let length: usize = header.strip_prefix('$')?.parse().ok()?;
        if body.len() >= length {
            return body
                .lines()
                .find_map(|line| line.strip_prefix("process_id:"))
                .and_then(|pid| pid.trim().parse().ok());
        }
    }
}

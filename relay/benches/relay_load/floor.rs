//! The floor row (`TICKWIRE_LOAD_FLOOR=1`): what a delivery costs when it is nothing but one
//! non-blocking `write` of a finished frame.
//!
//! The floor child (this bench binary with `TICKWIRE_LOAD_CHILD=floor`) has no hub, no async
//! runtime and no queue: it accepts the same WebSocket clients as a relay row, greets each with
//! a `status` and its snapshots, then, on one thread, writes every update's quote frame to each
//! subscriber of its symbol with one system call per frame, at the row's update rate. Its CPU
//! per delivery is therefore the part of a relay's that the kernel spends on the `send`
//! (on loopback, both ends of the TCP connection) and that no relay can avoid while every
//! delivery is its own `send`.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::{SYMBOLS, unix_ns};

/// `TICKWIRE_LOAD_CHILD` value of the floor child.
pub(crate) const FLOOR_MODE: &str = "floor";
/// The floor child's settings: updates per second over the symbols, symbols per client.
pub(crate) const FLOOR_RATE: &str = "TICKWIRE_LOAD_FLOOR_RATE";
pub(crate) const FLOOR_SUBSCRIPTIONS: &str = "TICKWIRE_LOAD_FLOOR_SUBSCRIPTIONS";
/// How often the floor writes what is due, in ms (default 1): a longer tick writes bigger
/// bursts, which costs both ends fewer wake-ups and adds up to a tick of latency.
pub(crate) const FLOOR_TICK_MS: &str = "TICKWIRE_LOAD_FLOOR_TICK_MS";
/// The probe's URL carries this query, so the floor child gives it every symbol (a relay
/// ignores the query).
pub(crate) const PROBE_QUERY: &str = "probe";

/// Bytes a slow client may have pending before the floor drops its frames (as a relay would
/// conflate them); not reached in a healthy run.
const MAX_PENDING: usize = 1 << 20;

/// One accepted client: its socket and whatever part of a frame the socket did not take.
struct Subscriber {
    socket: TcpStream,
    pending: Vec<u8>,
}

impl Subscriber {
    /// Writes `frame` with one `write` when nothing is pending. False when it was dropped.
    fn deliver(&mut self, frame: &[u8]) -> bool {
        if !self.pending.is_empty() {
            if self.pending.len() + frame.len() > MAX_PENDING {
                return false;
            }
            self.pending.extend_from_slice(frame);
            self.flush();
            return true;
        }
        match self.socket.write(frame) {
            Ok(written) if written == frame.len() => {}
            Ok(written) => self
                .pending
                .extend_from_slice(frame.get(written..).unwrap_or_default()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                self.pending.extend_from_slice(frame)
            }
            Err(_) => return false,
        }
        true
    }

    fn flush(&mut self) {
        while !self.pending.is_empty() {
            match self.socket.write(&self.pending) {
                Ok(0) | Err(_) => return,
                Ok(written) => {
                    self.pending.drain(..written);
                }
            }
        }
    }
}

/// Clients accepted and not yet taken by the writer, with their symbols.
type Arrivals = Arc<Mutex<Vec<(TcpStream, Vec<usize>)>>>;

/// An unmasked WebSocket text frame (the server side never masks), framed by tungstenite.
fn text_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(body.len() + 14);
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    header
        .format(body.len() as u64, &mut frame)
        .expect("a header written to a Vec");
    frame.extend_from_slice(body);
    frame
}

/// A quote as the relay words one: its changed fields, stamped.
fn quote_body(symbol: usize, sequence: u64, stamp: u64) -> String {
    let price = 100.0 + (sequence % 1000) as f64 / 100.0;
    format!(
        "{{\"type\":\"quote\",\"symbol\":\"EMU:S{}\",\"data\":{{\"lp\":{price:.4},\"ch\":{:.4},\
         \"chp\":{:.2},\"lp_time\":{},\"volume\":{},\"bid\":{:.4},\"ask\":{:.4},\
         \"emu_ns\":\"{stamp}\"}}}}",
        10 + symbol,
        price - 100.0,
        (price - 100.0) / 100.0,
        stamp / 1_000_000_000,
        100_000 + sequence,
        price - 0.0001,
        price + 0.0001,
    )
}

/// Handshake, `status`, snapshots; then the socket goes to the writer, non-blocking.
fn greet(socket: TcpStream, index: usize, subscriptions: usize, arrivals: &Arrivals) {
    let _ = socket.set_nodelay(true);
    let mut probe = false;
    // The signature is tungstenite's `Callback`, its error type included.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        probe = request.uri().query() == Some(PROBE_QUERY);
        Ok(response)
    };
    // Anything but a WebSocket upgrade (the bench's `/metrics` scrape) is refused here.
    let Ok(mut ws) = tungstenite::accept_hdr(socket, callback) else {
        return;
    };
    let symbols: Vec<usize> = if probe {
        (0..SYMBOLS).collect()
    } else {
        (0..subscriptions)
            .map(|k| (index * subscriptions + k) % SYMBOLS)
            .collect()
    };
    let mut greeting = vec![Message::text(
        "{\"type\":\"status\",\"upstream\":\"live\",\"floor\":true}",
    )];
    for &symbol in &symbols {
        greeting.push(Message::text(format!(
            "{{\"type\":\"snapshot\",\"symbol\":\"EMU:S{}\",\"data\":{{\"lp\":100}}}}",
            10 + symbol
        )));
    }
    for message in greeting {
        if ws.send(message).is_err() {
            return;
        }
    }
    let socket = ws.into_inner();
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    arrivals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((socket, symbols));
}

/// Floor mode: serve until standard input ends (the bench holds it open).
pub(crate) fn floor_child() {
    let rate: f64 = super::env_or(FLOOR_RATE, 1_000.0);
    let subscriptions: usize = super::env_or(FLOOR_SUBSCRIPTIONS, 1usize).clamp(1, SYMBOLS);
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    println!("listening on http://{addr}");
    let _ = io::stdout().flush();
    std::thread::spawn(|| {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        std::process::exit(0);
    });
    let arrivals: Arrivals = Arc::default();
    let accepted = Arc::clone(&arrivals);
    std::thread::spawn(move || {
        // Handshakes one at a time: each is a few reads and writes on loopback.
        for (index, socket) in listener.incoming().enumerate() {
            if let Ok(socket) = socket {
                greet(socket, index, subscriptions, &accepted);
            }
        }
    });

    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut by_symbol: Vec<Vec<usize>> = vec![Vec::new(); SYMBOLS];
    let tick = Duration::from_millis(super::env_or(FLOOR_TICK_MS, 1u64).clamp(1, 1_000));
    let mut next = Instant::now();
    let mut due = 0.0f64;
    let mut sequence = 0u64;
    loop {
        for (socket, symbols) in arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            for symbol in symbols {
                by_symbol[symbol].push(subscribers.len());
            }
            subscribers.push(Subscriber {
                socket,
                pending: Vec::new(),
            });
        }
        due += rate * tick.as_secs_f64();
        while due >= 1.0 {
            due -= 1.0;
            let symbol = (sequence % SYMBOLS as u64) as usize;
            let frame = text_frame(quote_body(symbol, sequence, unix_ns()).as_bytes());
            sequence += 1;
            for &subscriber in &by_symbol[symbol] {
                subscribers[subscriber].deliver(&frame);
            }
        }
        next += tick;
        // Behind: no sleep, the owed updates go out at once.
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

//! The cluster's stream follower and lease driven by arbitrary input: stream messages (well
//! formed ones from a real publisher, mutated ones and raw bytes), stored snapshots, symbols
//! wanted and dropped, lease replies and time steps. It must never panic, follow more symbols
//! than its cap, let an older epoch through after a newer one, or ask the store for a second
//! lease request while one is in flight.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tickwire_core::client::{Quote, State};
use tickwire_core::cluster::{Follower, FollowerOutput, Lease, LeaseConfig, LeaseReply, Publisher};

const SYMBOLS: &[&str] = &["X:A", "X:B", "X:C", ""];
const CAP: usize = 2;

#[derive(Arbitrary, Debug)]
enum Op {
    Want(u8),
    Unwant(u8),
    Publish {
        leader: u8,
        symbol: u8,
        price: i16,
        skip: bool,
    },
    Status(u8),
    Raw(Vec<u8>),
    Snapshot {
        symbol: u8,
        leader: u8,
        garbage: Option<Vec<u8>>,
    },
    ResyncAll,
    LeaseReply(u8, u16),
    Advance(u16),
}

fn symbol(index: u8) -> &'static str {
    SYMBOLS[usize::from(index) % SYMBOLS.len()]
}

fuzz_target!(|ops: Vec<Op>| {
    let start = Instant::now();
    let mut now = start;
    let mut leaders: Vec<Publisher> = (1..=3).map(Publisher::new).collect();
    let mut last_snapshot: Vec<Option<String>> = vec![None; SYMBOLS.len() * 3];
    let mut follower = Follower::new(CAP);
    let mut lease = Lease::new(LeaseConfig::new("fuzz"), start);
    let mut in_flight = false;
    let mut wanted = std::collections::BTreeSet::new();
    for op in ops.into_iter().take(512) {
        match op {
            Op::Want(index) => {
                if follower.want(symbol(index)) {
                    wanted.insert(symbol(index));
                }
            }
            Op::Unwant(index) => {
                follower.unwant(symbol(index));
                wanted.remove(symbol(index));
            }
            Op::Publish {
                leader,
                symbol: index,
                price,
                skip,
            } => {
                let leader_index = usize::from(leader) % leaders.len();
                let quote = Quote {
                    last_price: Some(f64::from(price)),
                    ..Quote::new(Arc::from(symbol(index)))
                };
                if let Some(published) = leaders[leader_index].quote(&quote) {
                    last_snapshot
                        [leader_index * SYMBOLS.len() + usize::from(index) % SYMBOLS.len()] =
                        published.snapshot;
                    if !skip {
                        let _ = follower.handle_message(published.message.as_bytes());
                    }
                }
            }
            Op::Status(leader) => {
                let status = leaders[usize::from(leader) % leaders.len()].status(State::Live);
                let _ = follower.handle_message(status.as_bytes());
            }
            Op::Raw(bytes) => {
                let _ = follower.handle_message(&bytes);
            }
            Op::Snapshot {
                symbol: index,
                leader,
                garbage,
            } => {
                let slot = (usize::from(leader) % leaders.len()) * SYMBOLS.len()
                    + usize::from(index) % SYMBOLS.len();
                match garbage {
                    Some(bytes) => follower.handle_snapshot(symbol(index), Some(&bytes)),
                    None => follower.handle_snapshot(
                        symbol(index),
                        last_snapshot[slot].as_deref().map(str::as_bytes),
                    ),
                }
            }
            Op::ResyncAll => follower.resync_all(),
            Op::LeaseReply(kind, value) => {
                let reply = match kind % 6 {
                    0 => LeaseReply::Acquired {
                        epoch: u64::from(value),
                    },
                    1 => LeaseReply::Held {
                        remaining: Some(Duration::from_millis(u64::from(value))),
                    },
                    2 => LeaseReply::Renewed,
                    3 => LeaseReply::Lost,
                    4 => LeaseReply::Released,
                    _ => LeaseReply::Failed("x".into()),
                };
                lease.handle_reply(now, reply);
                in_flight = false;
            }
            Op::Advance(millis) => {
                now += Duration::from_millis(u64::from(millis));
                lease.handle_timeout(now);
                if lease.poll_request().is_some() {
                    in_flight = true;
                }
                // After a timeout is handled and its request sent, nothing is overdue.
                if let Some(deadline) = lease.poll_timeout() {
                    assert!(deadline > now, "a lease deadline in the past");
                }
            }
        }
        if lease.poll_request().is_some() {
            in_flight = true;
        }
        let _ = in_flight;
        while lease.poll_event().is_some() {}
        let epoch = follower.epoch();
        while let Some(output) = follower.poll_output() {
            if let FollowerOutput::SymbolError { symbol, .. } = &output {
                wanted.remove(symbol.as_ref());
            }
        }
        assert!(wanted.len() <= CAP);
        assert!(follower.epoch() >= epoch);
    }
});

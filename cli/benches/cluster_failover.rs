//! Failover benchmark: how long a cluster of three relays takes to replace a leader killed with
//! `SIGKILL`, over several kills.
//!
//! Run: `cargo bench -p tickwire --bench cluster_failover` (needs `redis-server` on `PATH`).
//!
//! The harness is the cluster scenarios' (`tests/support/cluster.rs`): a real `redis-server`,
//! the emulator in this process as the feed (40 symbols, 200 quotes/s in all, each stamped with
//! its send time), three `tickwire relay` children with the default cluster timings (a 5 s
//! lease), and one client per relay subscribed to one symbol. Each round waits until exactly
//! one relay leads and every client gets quotes, kills the leader, and measures from the kill:
//!
//! - *silence seen*: every surviving client has been told `"upstream":"connecting"` (the
//!   followers noticed the leader's heartbeat stop);
//! - *lease taken*: a survivor's `/healthz` says it leads and carries the upstream;
//! - *data flowing*: every surviving client has received a quote or snapshot that the emulator
//!   sent after the kill, so through the new leader's upstream connection.
//!
//! It also counts surviving clients that were disconnected (there should be none). The killed
//! relay is then replaced by a new one, with a client of its own, before the next round.
//!
//! Environment: `TICKWIRE_FAILOVER_KILLS`, the number of kills (default 5).

use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../tests/support/cluster.rs"]
mod cluster_support;
#[allow(dead_code)]
#[path = "../../relay/tests/support/redis.rs"]
mod redis_support;
#[path = "../tests/support/mod.rs"]
mod support;

use cluster_support::{Cluster, Received, eventually, kind, stamp, unix_ns};

/// The symbol every client holds.
const SYMBOL: &str = "EMU:S11";
/// How often the conditions are checked after a kill: the resolution of the figures.
const RESOLUTION: Duration = Duration::from_millis(10);
/// Long enough for a start or a takeover on a busy machine; a round that takes longer fails.
const PATIENCE: Duration = Duration::from_secs(40);

/// What one kill measured, in seconds after it.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    silence_seen: Option<f64>,
    lease_taken: Option<f64>,
    data_flowing: Option<f64>,
    disconnected: usize,
}

/// Whether `messages` holds a quote or snapshot of [`SYMBOL`] that the emulator sent after
/// `since_ns`.
fn has_data_after(messages: &[Received], since_ns: u64) -> bool {
    messages.iter().any(|received| {
        received.value["symbol"] == SYMBOL && stamp(&received.value).is_some_and(|s| s > since_ns)
    })
}

fn is_connecting(value: &Value) -> bool {
    kind(value) == "status" && value["upstream"] == "connecting"
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |s| format!("{s:.2}"))
}

fn main() {
    let kills: usize = std::env::var("TICKWIRE_FAILOVER_KILLS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5);
    let Some(mut cluster) = Cluster::start(&["r1", "r2", "r3"], 200.0) else {
        return;
    };
    // The relays alive, and the client of each (by index in the cluster).
    let mut alive: Vec<(usize, usize)> = (0..3)
        .map(|relay| (relay, cluster.add_client(relay, &[SYMBOL])))
        .collect();
    let mut rounds = Vec::new();
    println!(
        "cluster_failover: 3 relays, lease {:?}, {kills} kills of the leader",
        tickwire_core::cluster::LeaseConfig::new("any").ttl
    );
    println!();
    println!(
        "| kill | killed | new leader | silence seen (s) | lease taken (s) | data flowing (s) | survivors disconnected |"
    );
    println!("| ---: | --- | --- | ---: | ---: | ---: | ---: |");
    for round in 1..=kills {
        let relays: Vec<usize> = alive.iter().map(|&(relay, _)| relay).collect();
        let leader = cluster.wait_one_leader(&relays, PATIENCE);
        let start_ns = unix_ns();
        eventually("every client gets quotes", PATIENCE, || {
            for &(_, client) in &alive {
                let client = cluster.client(client);
                if !has_data_after(&client.messages(), start_ns) {
                    return Err(client.tail(4));
                }
            }
            Ok(())
        });
        let survivors: Vec<(usize, usize)> = alive
            .iter()
            .copied()
            .filter(|&(relay, _)| relay != leader)
            .collect();
        let marks: Vec<usize> = survivors
            .iter()
            .map(|&(_, client)| cluster.client(client).mark())
            .collect();
        let killed_id = cluster.relays[leader].id.clone();

        let kill_ns = unix_ns();
        let killed_at = Instant::now();
        cluster.relays[leader].kill();
        let mut measured = Round::default();
        let mut new_leader = None;
        while measured.lease_taken.is_none()
            || measured.data_flowing.is_none()
            || measured.silence_seen.is_none()
        {
            assert!(
                killed_at.elapsed() < PATIENCE,
                "round {round}: not recovered within {PATIENCE:?}: {measured:?}"
            );
            let elapsed = killed_at.elapsed().as_secs_f64();
            if measured.lease_taken.is_none() {
                new_leader = survivors.iter().map(|&(relay, _)| relay).find(|&relay| {
                    cluster.relays[relay]
                        .health()
                        .is_ok_and(|health| health.role() == "leader" && health.carries_upstream())
                });
                if new_leader.is_some() {
                    measured.lease_taken = Some(elapsed);
                }
            }
            let since: Vec<Vec<Received>> = survivors
                .iter()
                .zip(&marks)
                .map(|(&(_, client), &mark)| cluster.client(client).since(mark))
                .collect();
            if measured.silence_seen.is_none()
                && since
                    .iter()
                    .all(|messages| messages.iter().any(|m| is_connecting(&m.value)))
            {
                measured.silence_seen = Some(elapsed);
            }
            if measured.data_flowing.is_none()
                && since
                    .iter()
                    .all(|messages| has_data_after(messages, kill_ns))
            {
                measured.data_flowing = Some(elapsed);
            }
            std::thread::sleep(RESOLUTION);
        }
        measured.disconnected = survivors
            .iter()
            .filter(|&&(_, client)| cluster.client(client).ended().is_some())
            .count();
        let new_leader_id = new_leader.map_or("?", |relay| cluster.relays[relay].id.as_str());
        println!(
            "| {round} | {killed_id} | {new_leader_id} | {} | {} | {} | {} |",
            seconds(measured.silence_seen),
            seconds(measured.lease_taken),
            seconds(measured.data_flowing),
            measured.disconnected
        );
        rounds.push(measured);

        // A new relay (and its client) in place of the killed one.
        let replacement = cluster.add_relay(&format!("r{}", round + 3));
        let client = cluster.add_client(replacement, &[SYMBOL]);
        alive = survivors;
        alive.push((replacement, client));
    }

    let summary = |pick: fn(&Round) -> Option<f64>| -> (f64, f64) {
        let mut values: Vec<f64> = rounds.iter().filter_map(pick).collect();
        let max = values.iter().copied().fold(f64::NAN, f64::max);
        (median(&mut values), max)
    };
    let silence = summary(|round| round.silence_seen);
    let lease = summary(|round| round.lease_taken);
    let data = summary(|round| round.data_flowing);
    let disconnected: usize = rounds.iter().map(|round| round.disconnected).sum();
    println!();
    println!("| over {kills} kills | median (s) | max (s) |");
    println!("| --- | ---: | ---: |");
    println!("| silence seen | {:.2} | {:.2} |", silence.0, silence.1);
    println!("| lease taken | {:.2} | {:.2} |", lease.0, lease.1);
    println!("| data flowing | {:.2} | {:.2} |", data.0, data.1);
    println!("surviving clients disconnected: {disconnected}");
}

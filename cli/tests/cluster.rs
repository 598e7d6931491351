//! The relay's cluster mode (issue 14) end to end, with real processes over loopback: a real
//! `redis-server`, the emulator (in this process) as the upstream feed, `tickwire relay`
//! children linked through Redis (`TICKWIRE_RELAY_REDIS`), and WebSocket clients on every
//! relay.
//!
//! The relays run with the default cluster timings (a 5 s lease, a 15 s demand TTL) and
//! `--linger 2s`. Every wait polls a condition with a deadline; every child is killed when its
//! guard drops, so a failing test leaves no process behind (and prints the relays' logs).
//!
//! The emulator stamps every quote with the time it sent it (`emu_ns`, nanoseconds). Each
//! upstream connection is stamped at its own flush, so a stamp names the connection a quote
//! came through: that is how the scenarios tell the new leader's feed from a paused one's.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use tickwire_core::cluster::{Keys, LeaseConfig, NodeConfig};

mod support;
// Shared with the relay's own tests; this binary uses only part of it.
#[allow(dead_code)]
#[path = "../../relay/tests/support/redis.rs"]
mod redis_support;

#[path = "support/cluster.rs"]
mod cluster_support;

use cluster_support::*;

/// The relays' `--cluster` (the default).
const CLUSTER: &str = "tickwire";
/// Every relay's `--linger`.
const LINGER: Duration = Duration::from_secs(2);
/// How long clients and relays get to settle (connect, lead, sync) at the start.
const SETTLE: Duration = Duration::from_secs(20);
/// Slack for timing assertions (polling, scheduling on busy shared cores).
const SLACK: Duration = Duration::from_millis(500);

/// The lease TTL the relays use (`LeaseConfig::new`'s).
fn lease_ttl() -> Duration {
    LeaseConfig::new("any").ttl
}

/// A follower asks for the lease again within 1.5 × what was left of it (50 % jitter, never
/// less than a renewal period), so a dead leader is replaced within the TTL and a few
/// seconds.
fn takeover_deadline() -> Duration {
    lease_ttl() + Duration::from_secs(7)
}

fn node_config() -> NodeConfig {
    NodeConfig::new(keys(), "any")
}

fn keys() -> Keys {
    Keys::new(CLUSTER).unwrap()
}

/// A message looked for: its name (for failures) and how to recognise it.
type Step<'a> = (&'a str, &'a dyn Fn(&Value) -> bool);

/// Finds `steps` in this order in `messages`; the index after the last one, or the first step
/// not found.
fn in_order(messages: &[Received], steps: &[Step<'_>]) -> Result<usize, String> {
    let mut at = 0;
    for (name, matches) in steps {
        let found = messages[at..]
            .iter()
            .position(|received| matches(&received.value))
            .ok_or_else(|| format!("no {name} (after {at} of {} messages)", messages.len()))?;
        at += found + 1;
    }
    Ok(at)
}

/// In `messages`: a snapshot of `symbol`, then `quotes` quotes of it, and a price. (The
/// snapshot answering a subscribe is empty when the relay has nothing of the symbol yet; its
/// first quote then carries every field, as with a relay that runs alone.)
fn synced(messages: &[Received], symbol: &str, quotes: usize) -> Result<(), String> {
    let after = in_order(
        messages,
        &[("snapshot", &|value| {
            kind(value) == "snapshot" && value["symbol"] == symbol
        })],
    )?;
    let priced = messages[after - 1..].iter().any(|received| {
        let value = &received.value;
        snapshot_price(value, symbol).is_some()
            || (is_quote(value, symbol) && value["data"]["lp"].is_number())
    });
    if !priced {
        return Err(format!("no price of {symbol}"));
    }
    count_quotes(&messages[after..], symbol, quotes)
}

/// In `messages`: a fresh snapshot of `symbol` with a price, then `quotes` quotes of it.
fn resynced(messages: &[Received], symbol: &str, quotes: usize) -> Result<(), String> {
    let after = in_order(
        messages,
        &[("priced snapshot", &|value| {
            snapshot_price(value, symbol).is_some()
        })],
    )?;
    count_quotes(&messages[after..], symbol, quotes)
}

fn count_quotes(messages: &[Received], symbol: &str, quotes: usize) -> Result<(), String> {
    let got = messages
        .iter()
        .filter(|received| is_quote(&received.value, symbol))
        .count();
    if got >= quotes {
        Ok(())
    } else {
        Err(format!(
            "{got} of {quotes} quotes of {symbol} after its snapshot"
        ))
    }
}

/// Waits until every client (since its mark) is `check`ed (`synced` or `resynced`).
fn wait_for(
    check: fn(&[Received], &str, usize) -> Result<(), String>,
    clients: &[(&Client, usize)],
    symbol: &str,
    quotes: usize,
    within: Duration,
) {
    eventually(&format!("clients synced on {symbol}"), within, || {
        for (client, mark) in clients {
            check(&client.since(*mark), symbol, quotes)
                .map_err(|why| format!("{why}; {}", client.tail(6)))?;
        }
        Ok(())
    });
}

/// Waits until every client (since its mark) has a snapshot of `symbol`, a price, and then
/// `quotes` quotes of it.
fn wait_synced(clients: &[(&Client, usize)], symbol: &str, quotes: usize, within: Duration) {
    wait_for(synced, clients, symbol, quotes, within);
}

/// Waits until every client (since its mark) has a fresh priced snapshot of `symbol` and then
/// `quotes` quotes of it.
fn wait_resynced(clients: &[(&Client, usize)], symbol: &str, quotes: usize, within: Duration) {
    wait_for(resynced, clients, symbol, quotes, within);
}

/// A data message of a symbol: its emulator stamp, the price the client knows after it (a
/// quote carries only what changed), and when the client got it.
#[derive(Debug, Clone, Copy)]
struct Priced {
    stamp: u64,
    price: Option<f64>,
    at: Instant,
}

/// The stamped data messages of `symbol` received after `since`, with their prices.
fn priced(messages: &[Received], symbol: &str, since: Instant) -> Vec<Priced> {
    let mut price = None;
    let mut out = Vec::new();
    for received in messages {
        let value = &received.value;
        if value["symbol"] != symbol {
            continue;
        }
        match kind(value) {
            "snapshot" => price = value["quote"]["lp"].as_f64(),
            "quote" => {
                if let Some(lp) = value["data"]["lp"].as_f64() {
                    price = Some(lp);
                }
            }
            _ => continue,
        }
        if received.at >= since
            && let Some(stamp) = stamp(value)
        {
            out.push(Priced {
                stamp,
                price,
                at: received.at,
            });
        }
    }
    out
}

/// Every data message of `symbol` that a client of `others` got after `since` comes from the
/// feed `reference` (a client of the relay holding the upstream) got its data from: the same
/// emulator stamp (so the same upstream connection) with the same price, and stamps never go
/// back. The messages right after a resync may be ones the reference got before `since`, so
/// the reference is taken whole (once it has caught up with what the others got).
fn assert_same_feed(reference: &Client, others: &[&Client], symbol: &str, since: Instant) {
    let seen: Vec<(&Client, Vec<Priced>)> = others
        .iter()
        .map(|client| (*client, priced(&client.messages(), symbol, since)))
        .collect();
    let newest = seen
        .iter()
        .flat_map(|(_, seen)| seen.iter().map(|message| message.stamp))
        .max()
        .unwrap_or(0);
    // The leader's own client may get a message a moment after a follower's does.
    let known: BTreeMap<u64, Option<f64>> = eventually(
        "the reference client has what the others got",
        Duration::from_secs(5),
        || {
            let known: BTreeMap<u64, Option<f64>> =
                priced(&reference.messages(), symbol, far_past())
                    .into_iter()
                    .map(|message| (message.stamp, message.price))
                    .collect();
            match known.keys().next_back() {
                Some(&last) if last >= newest => Ok(known),
                last => Err(format!("its newest stamp is {last:?}, below {newest}")),
            }
        },
    );
    for (client, seen) in seen {
        assert!(
            !seen.is_empty(),
            "{} got nothing of {symbol} since then: {}",
            client.name,
            client.tail(8)
        );
        let mut last = 0;
        for &Priced { stamp, price, at } in &seen {
            match known.get(&stamp) {
                Some(expected) => assert_eq!(
                    *expected, price,
                    "{}: the message stamped {stamp} carries another price than the leader's",
                    client.name
                ),
                None => panic!(
                    "{}: a {symbol} message received {:?} after the reference time, stamped \
                     {stamp} (sent {:?} before it was received), is not from the leader's feed \
                     (whose client saw {} stamps from {:?} to {:?}); {}",
                    client.name,
                    at.saturating_duration_since(since),
                    age_at_receipt(client, stamp),
                    known.len(),
                    known.keys().next(),
                    known.keys().next_back(),
                    client.tail(8)
                ),
            }
            assert!(
                stamp >= last,
                "{}: a {symbol} message stamped {stamp} came after one stamped {last}",
                client.name
            );
            last = stamp;
        }
    }
}

/// How long after the emulator sent it the client got the message stamped `stamp`.
fn age_at_receipt(client: &Client, stamp: u64) -> Option<Duration> {
    client
        .messages()
        .iter()
        .find(|received| self::stamp(&received.value) == Some(stamp))
        .map(|received| Duration::from_nanos(received.unix_ns.saturating_sub(stamp)))
}

/// An instant before anything a test does.
fn far_past() -> Instant {
    Instant::now()
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or_else(Instant::now)
}

// ----- Redis ---------------------------------------------------------------------------------

/// One command to the Redis on `port`, its reply as text: an integer, a string, `(nil)`.
fn redis_command(port: u16, args: &[&str]) -> Result<String, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|error| format!("connect to Redis: {error}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|error| error.to_string())?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("write to Redis: {error}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|error| format!("read from Redis: {error}"))?;
    let line = line.trim_end();
    let (head, rest) = line.split_at(line.len().min(1));
    match head {
        ":" | "+" => Ok(rest.to_owned()),
        "-" => Err(format!("Redis: {rest}")),
        "$" => {
            let Ok(length) = rest.parse::<usize>() else {
                return Ok("(nil)".to_owned());
            };
            let mut body = vec![0; length + 2];
            reader
                .read_exact(&mut body)
                .map_err(|error| format!("read from Redis: {error}"))?;
            body.truncate(length);
            String::from_utf8(body).map_err(|error| error.to_string())
        }
        _ => Err(format!("Redis answered {line:?}")),
    }
}

// ----- scenarios -----------------------------------------------------------------------------

/// Three relays with one client each on `symbol`, every client synced (a snapshot, a price,
/// three quotes) and one relay leading: the cluster, the clients (by relay) and the leader.
/// `None` when redis-server is missing (and CI does not require it).
fn three_relays_on(symbol: &str) -> Option<(Cluster, Vec<usize>, usize)> {
    let mut cluster = Cluster::start(&["r1", "r2", "r3"], 200.0)?;
    let clients: Vec<usize> = (0..3)
        .map(|relay| cluster.add_client(relay, &[symbol]))
        .collect();
    let all: Vec<(&Client, usize)> = clients.iter().map(|&c| (cluster.client(c), 0)).collect();
    wait_synced(&all, symbol, 3, SETTLE);
    let leader = cluster.wait_one_leader(&[0, 1, 2], SETTLE);
    Some((cluster, clients, leader))
}

/// Clients of three relays get the same symbol: a snapshot, then quotes; one relay leads and
/// carries the one upstream connection, the others follow from Redis.
#[test]
fn clients_of_every_relay_get_the_symbol_through_one_upstream_connection() {
    let Some(mut cluster) = Cluster::start(&["r1", "r2", "r3"], 200.0) else {
        return;
    };
    let symbol = "EMU:S10";
    let clients: Vec<usize> = (0..3)
        .map(|relay| cluster.add_client(relay, &[symbol]))
        .collect();
    let marks: Vec<(&Client, usize)> = clients.iter().map(|&c| (cluster.client(c), 0)).collect();
    wait_synced(&marks, symbol, 5, SETTLE);
    let leader = cluster.wait_one_leader(&[0, 1, 2], SETTLE);
    // The followers' clients get what the leader's feed got, from their first data on.
    let reference = cluster.client(clients[leader]);
    let others: Vec<&Client> = clients
        .iter()
        .filter(|&&c| c != clients[leader])
        .map(|&c| cluster.client(c))
        .collect();
    assert_same_feed(reference, &others, symbol, far_past());
    assert_eq!(
        cluster.upstream_connections(),
        (1, 1),
        "one upstream connection (open, peak)"
    );
    cluster.assert_connected(&clients);
}

/// A client, after `mark`: the status `lost` (`connecting`, `degraded`), then `live`, then a
/// priced snapshot of `symbol`, then `quotes` quotes of it.
fn came_back(
    client: &Client,
    mark: usize,
    lost: &str,
    symbol: &str,
    quotes: usize,
) -> Result<(), String> {
    let messages = client.since(mark);
    let after = in_order(
        &messages,
        &[
            ("the lost status", &|value| is_status(value, lost)),
            ("live status", &|value| is_status(value, "live")),
            ("priced snapshot", &|value| {
                snapshot_price(value, symbol).is_some()
            }),
        ],
    )
    .map_err(|why| format!("{why}; {}", client.tail(8)))?;
    count_quotes(&messages[after..], symbol, quotes)
        .map_err(|why| format!("{why}; {}", client.tail(8)))
}

/// `kill -9` of the leader: a follower takes the lease and the upstream within the lease TTL
/// and a few seconds; the surviving relays' clients stay connected and see the upstream come
/// back (`connecting`, `live`, a fresh snapshot, quotes), all from the new leader's feed.
#[test]
fn a_killed_leader_is_replaced_within_the_lease_and_no_client_of_the_others_notices_more() {
    let symbol = "EMU:S11";
    let Some((mut cluster, clients, leader)) = three_relays_on(symbol) else {
        return;
    };
    let survivors: Vec<usize> = (0..3).filter(|&relay| relay != leader).collect();
    let marks: Vec<usize> = survivors
        .iter()
        .map(|&relay| cluster.client(clients[relay]).mark())
        .collect();

    let killed_at = Instant::now();
    cluster.relays[leader].kill();
    let new_leader = cluster.wait_one_leader(&survivors, takeover_deadline());
    eprintln!(
        "{} took over {:?} after {} was killed",
        cluster.relays[new_leader].id,
        killed_at.elapsed(),
        cluster.relays[leader].id
    );
    eventually(
        "the surviving clients see the upstream back",
        SETTLE,
        || {
            for (&relay, &mark) in survivors.iter().zip(&marks) {
                came_back(
                    cluster.client(clients[relay]),
                    mark,
                    "connecting",
                    symbol,
                    3,
                )?;
            }
            Ok(())
        },
    );
    // The killed relay's client did lose its connection (so a disconnect would show).
    eventually(
        "the killed relay's client sees its end",
        Duration::from_secs(5),
        || {
            cluster
                .client(clients[leader])
                .ended()
                .ok_or_else(|| "still open".to_owned())
        },
    );
    let survivor_clients: Vec<usize> = survivors.iter().map(|&relay| clients[relay]).collect();
    cluster.assert_connected(&survivor_clients);
    let reference = cluster.client(clients[new_leader]);
    let others: Vec<&Client> = survivors
        .iter()
        .filter(|&&relay| relay != new_leader)
        .map(|&relay| cluster.client(clients[relay]))
        .collect();
    assert_same_feed(reference, &others, symbol, killed_at);
    // SIGKILL closes the dead leader's socket at once, long before the lease runs out.
    assert_eq!(
        cluster.upstream_connections(),
        (1, 1),
        "one upstream connection at any time (open, peak)"
    );
}

/// `SIGSTOP` of the leader for longer than its lease: another relay takes over; once the
/// paused one resumes, nothing from its stale feed reaches any client (every data message
/// after the takeover carries a stamp of the new leader's feed, with its price, in order), and
/// it ends up a follower with its upstream closed.
#[test]
fn a_paused_leader_is_fenced_out_and_rejoins_as_a_follower() {
    let symbol = "EMU:S12";
    let Some((cluster, clients, paused)) = three_relays_on(symbol) else {
        return;
    };
    let others: Vec<usize> = (0..3).filter(|&relay| relay != paused).collect();
    let marks: Vec<usize> = clients.iter().map(|&c| cluster.client(c).mark()).collect();

    let paused_at = Instant::now();
    cluster.relays[paused].signal("-STOP");
    let new_leader = cluster.wait_one_leader(&others, takeover_deadline());
    let took_over = Instant::now();
    eprintln!(
        "{} took over {:?} after {} was paused",
        cluster.relays[new_leader].id,
        paused_at.elapsed(),
        cluster.relays[paused].id
    );
    let following: Vec<(&Client, usize)> = others
        .iter()
        .map(|&relay| (cluster.client(clients[relay]), marks[relay]))
        .collect();
    wait_resynced(&following, symbol, 3, SETTLE);
    // Paused past its lease (the takeover says it ran out in Redis; this keeps the paused
    // relay's feed filling its socket a while longer).
    let resume_at = paused_at + lease_ttl() + Duration::from_secs(2);
    std::thread::sleep(resume_at.saturating_duration_since(Instant::now()));
    cluster.relays[paused].signal("-CONT");
    let resumed_at = Instant::now();

    let leader = cluster.wait_one_leader(&[0, 1, 2], SETTLE);
    assert_eq!(leader, new_leader, "the relay that took over still leads");
    let health = cluster.relays[paused].health().unwrap();
    assert!(
        health.role() == "follower" && !health.carries_upstream(),
        "the resumed relay: {}",
        health.body
    );
    eventually(
        "the resumed relay's upstream closed",
        Duration::from_secs(10),
        || match cluster.upstream_connections() {
            (1, peak) => Ok(peak),
            other => Err(format!("{other:?} open (now, peak)")),
        },
    );
    // Its client is resynchronised from the stream, and everyone gets quotes after it.
    let resumed: Vec<(&Client, usize)> = clients
        .iter()
        .map(|&c| (cluster.client(c), cluster.client(c).mark()))
        .collect();
    wait_resynced(
        &[(cluster.client(clients[paused]), marks[paused])],
        symbol,
        3,
        SETTLE,
    );
    eventually("quotes everywhere after the resume", SETTLE, || {
        for (client, mark) in &resumed {
            let got = client
                .since(*mark)
                .iter()
                .filter(|received| is_quote(&received.value, symbol))
                .count();
            if got < 3 {
                return Err(format!("{got} quotes; {}", client.tail(6)));
            }
        }
        Ok(())
    });
    let reference = cluster.client(clients[new_leader]);
    let rest: Vec<&Client> = clients
        .iter()
        .filter(|&&c| c != clients[new_leader])
        .map(|&c| cluster.client(c))
        .collect();
    assert_same_feed(reference, &rest, symbol, took_over);
    cluster.assert_connected(&clients);
    let counters = |relay: usize| {
        let relay = &cluster.relays[relay];
        (
            relay.metric("tickwire_relay_cluster_publishes_fenced_total"),
            relay.metric("tickwire_relay_cluster_stale_messages_total"),
        )
    };
    eprintln!(
        "resumed {:?} after the pause; fenced publishes, stale messages: paused {:?}, others {:?}; \
         upstream connections (open, peak): {:?}",
        resumed_at.duration_since(paused_at),
        counters(paused),
        others
            .iter()
            .map(|&relay| counters(relay))
            .collect::<Vec<_>>(),
        cluster.upstream_connections()
    );
    // A paused process cannot close its socket: while it slept, the new leader's connection
    // and its own were both open. Never more than those two.
    assert!(cluster.upstream_connections().1 <= 2);
}

/// Redis killed and started empty on the same port: every client hears `degraded`, then the
/// relays resynchronise (live again, a fresh snapshot, quotes) under one leader, and no client
/// is disconnected.
#[test]
fn relays_resynchronise_after_redis_restarts_empty() {
    let symbol = "EMU:S13";
    let Some((mut cluster, clients, leader)) = three_relays_on(symbol) else {
        return;
    };
    let marks: Vec<usize> = clients.iter().map(|&c| cluster.client(c).mark()).collect();

    let restarted_at = Instant::now();
    cluster.redis.restart();
    eventually("every client resynchronised", SETTLE, || {
        for (&c, &mark) in clients.iter().zip(&marks) {
            came_back(cluster.client(c), mark, "degraded", symbol, 3)?;
        }
        Ok(())
    });
    let now_leading = cluster.wait_one_leader(&[0, 1, 2], SETTLE);
    eprintln!(
        "resynchronised {:?} after the restart; {} led before, {} after; upstream (open, peak): {:?}",
        restarted_at.elapsed(),
        cluster.relays[leader].id,
        cluster.relays[now_leading].id,
        cluster.upstream_connections()
    );
    wait_one_upstream_connection(&cluster);
    cluster.assert_connected(&clients);
}

/// Waits until exactly one upstream connection is open (any one left over has closed).
fn wait_one_upstream_connection(cluster: &Cluster) {
    eventually(
        "one upstream connection",
        Duration::from_secs(10),
        || match cluster.upstream_connections() {
            (1, _) => Ok(()),
            other => Err(format!("{other:?} (open, peak)")),
        },
    );
}

/// Redis paused (SIGSTOP) past the lease: clients stay connected and are told `degraded`
/// (`/healthz` 503), the leader's clients keep getting quotes from its feed; after the resume
/// there is one leader again and quotes everywhere.
#[test]
fn relays_ride_out_a_paused_redis_and_recover() {
    let symbol = "EMU:S14";
    let Some((cluster, clients, leader)) = three_relays_on(symbol) else {
        return;
    };
    let marks: Vec<usize> = clients.iter().map(|&c| cluster.client(c).mark()).collect();

    let paused_at = Instant::now();
    cluster.redis.pause();
    // A relay notices at its next request (a demand rewrite is due every third of the demand
    // TTL) once that is unanswered for the link's timeout.
    let notice = node_config().demand_ttl / 3 + Duration::from_secs(5);
    eventually("every relay degraded", notice, || {
        for relay in &cluster.relays {
            let health = relay.health()?;
            if health.code != 503 || health.upstream() != "degraded" {
                return Err(format!("{}: {} {}", relay.id, health.code, health.body));
            }
        }
        for (&c, &mark) in clients.iter().zip(&marks) {
            let client = cluster.client(c);
            if !client
                .since(mark)
                .iter()
                .any(|received| is_status(&received.value, "degraded"))
            {
                return Err(format!("no degraded status: {}", client.tail(4)));
            }
        }
        Ok(())
    });
    eprintln!(
        "degraded everywhere {:?} after the pause",
        paused_at.elapsed()
    );
    // Past the lease, the leader's clients still get quotes from its feed.
    let past_lease = paused_at + lease_ttl() + Duration::from_secs(1);
    std::thread::sleep(past_lease.saturating_duration_since(Instant::now()));
    let own = cluster.client(clients[leader]);
    let mark = own.mark();
    eventually(
        "the leader's client gets quotes past the lease",
        Duration::from_secs(5),
        || count_quotes(&own.since(mark), symbol, 3),
    );
    let health = cluster.relays[leader].health().unwrap();
    assert!(health.carries_upstream(), "{}", health.body);
    eprintln!("the leader while Redis is paused: {}", health.body);

    cluster.redis.resume();
    let resumed_at = Instant::now();
    let marks: Vec<usize> = clients.iter().map(|&c| cluster.client(c).mark()).collect();
    // Reconnects back off up to 10 s (with jitter) while Redis does not answer.
    let recovery = node_config().store_backoff_max * 2 + Duration::from_secs(5);
    let now_leading = cluster.wait_one_leader(&[0, 1, 2], recovery);
    eventually("quotes everywhere after the resume", SETTLE, || {
        for (&c, &mark) in clients.iter().zip(&marks) {
            let client = cluster.client(c);
            let got = client
                .since(mark)
                .iter()
                .filter(|received| is_quote(&received.value, symbol))
                .count();
            if got < 3 {
                return Err(format!("{got} quotes; {}", client.tail(4)));
            }
        }
        Ok(())
    });
    eprintln!(
        "recovered {:?} after the resume; {} led before, {} after; upstream (open, peak): {:?}",
        resumed_at.elapsed(),
        cluster.relays[leader].id,
        cluster.relays[now_leading].id,
        cluster.upstream_connections()
    );
    wait_one_upstream_connection(&cluster);
    cluster.assert_connected(&clients);
}

/// A relay started after quotes have flowed gives its client the symbols' prices from the
/// stored snapshots at once: the market ticks each symbol only every 8 s or so, so waiting for
/// ticks would not do.
#[test]
fn a_relay_joining_late_gives_its_clients_stored_prices() {
    // 5 ticks a second over 40 symbols: each symbol about every 8 s.
    let Some(mut cluster) = Cluster::start(&["r1", "r2"], 5.0) else {
        return;
    };
    let symbols: Vec<String> = (10..20).map(|index| format!("EMU:S{index}")).collect();
    let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let early = cluster.add_client(1, &names);
    eventually(
        "the early client has every price and a quote",
        SETTLE,
        || {
            let client = cluster.client(early);
            let messages = client.messages();
            for symbol in &names {
                if !messages
                    .iter()
                    .any(|received| snapshot_price(&received.value, symbol).is_some())
                {
                    return Err(format!("no price of {symbol}: {}", client.tail(4)));
                }
            }
            if messages
                .iter()
                .any(|received| kind(&received.value) == "quote")
            {
                Ok(())
            } else {
                Err("no quote yet".to_owned())
            }
        },
    );
    cluster.wait_one_leader(&[0, 1], SETTLE);

    let late = cluster.add_relay("r3");
    let subscribed_at = Instant::now();
    let client = cluster.add_client(late, &names);
    let within = Duration::from_secs(5);
    eventually("the late relay's client has every price", within, || {
        let client = cluster.client(client);
        let messages = client.messages();
        for symbol in &names {
            if !messages
                .iter()
                .any(|received| snapshot_price(&received.value, symbol).is_some())
            {
                return Err(format!("no price of {symbol}: {}", client.tail(4)));
            }
        }
        Ok(())
    });
    eprintln!(
        "the late client had every price {:?} after subscribing",
        subscribed_at.elapsed()
    );
    // The prices are the cluster's: ones the early client got too.
    let early = cluster.client(early).messages();
    for received in cluster.client(client).messages() {
        for symbol in &names {
            let Some(price) = snapshot_price(&received.value, symbol) else {
                continue;
            };
            let known = early.iter().any(|got| {
                let value = &got.value;
                value["symbol"] == *symbol
                    && (value["quote"]["lp"].as_f64() == Some(price)
                        || value["data"]["lp"].as_f64() == Some(price))
            });
            assert!(
                known,
                "{symbol} at {price}: a price the early client never got"
            );
        }
    }
    cluster.wait_one_leader(&[0, 1, late], SETTLE);
}

/// Demand from a relay that died expires: the symbol only its client wanted leaves the
/// leader's upstream once the dead relay's demand entry has run out (its TTL left in Redis at
/// the kill) and the linger has passed, not before. Observed in Redis, where the leader deletes
/// the symbol's stored snapshot as the symbol leaves its feed, and on the leader's `/metrics`
/// (`tickwire_relay_cluster_relays`).
#[test]
fn demand_from_a_dead_relay_expires_and_its_symbol_leaves_the_upstream() {
    let Some(mut cluster) = Cluster::start(&["rA"], 200.0) else {
        return;
    };
    let kept = "EMU:S10";
    let orphan = "EMU:S17";
    let a = cluster.add_client(0, &[kept]);
    cluster.wait_one_leader(&[0], SETTLE);
    let b = cluster.add_relay("rB");
    let b_client = cluster.add_client(b, &[orphan]);
    wait_synced(&[(cluster.client(a), 0)], kept, 3, SETTLE);
    wait_synced(&[(cluster.client(b_client), 0)], orphan, 3, SETTLE);
    assert_eq!(cluster.wait_one_leader(&[0, 1], SETTLE), 0, "rA leads");
    let port = cluster.redis.port();
    let keys = keys();
    let stored = |symbol: &str| redis_command(port, &["EXISTS", &keys.snapshot(symbol)]);
    assert_eq!(
        stored(orphan).unwrap(),
        "1",
        "{orphan} is stored while carried"
    );
    eventually(
        "rA knows both relays",
        Duration::from_secs(10),
        || match cluster.relays[0].metric("tickwire_relay_cluster_relays")? {
            2.0 => Ok(()),
            other => Err(format!("{other} relays")),
        },
    );

    cluster.relays[b].kill();
    let killed_at = Instant::now();
    let left_ms: u64 = redis_command(port, &["PTTL", &keys.demand("rB")])
        .unwrap()
        .parse()
        .unwrap();
    let demand_ttl = node_config().demand_ttl;
    assert!(
        left_ms > 0 && left_ms <= demand_ttl.as_millis() as u64,
        "rB's demand entry has {left_ms} ms left"
    );
    let expires_at = killed_at + Duration::from_millis(left_ms);
    // The leader rereads every entry about every half demand TTL (±20 %); a reread just
    // before the entry ran out in Redis keeps it until the next one.
    let reread = demand_ttl.mul_f64(0.5 * 1.2);
    let deadline = Duration::from_millis(left_ms) + reread + LINGER + Duration::from_secs(3);
    let mut relays_at = None;
    let gone_at = eventually(&format!("{orphan} leaves the upstream"), deadline, || {
        if relays_at.is_none() && cluster.relays[0].metric("tickwire_relay_cluster_relays")? == 1.0
        {
            relays_at = Some(Instant::now());
        }
        match stored(orphan)?.as_str() {
            "0" => Ok(Instant::now()),
            _ => Err("still stored".to_owned()),
        }
    });
    let relays_at = relays_at.unwrap_or(gone_at);
    eprintln!(
        "rB killed with {left_ms} ms left on its demand entry; rA forgot it {:?} and {orphan} \
         left the upstream {:?} after the kill",
        relays_at.duration_since(killed_at),
        gone_at.duration_since(killed_at)
    );
    assert!(
        relays_at + SLACK >= expires_at,
        "rA forgot rB's demand {:?} before its entry ran out",
        expires_at.duration_since(relays_at)
    );
    assert!(
        gone_at + SLACK >= expires_at + LINGER,
        "{orphan} left {:?} before the demand TTL and the linger had passed",
        (expires_at + LINGER).duration_since(gone_at)
    );
    // What the living relay's client wants stays.
    assert_eq!(stored(kept).unwrap(), "1");
    let mark = cluster.client(a).mark();
    eventually(
        "quotes of the kept symbol go on",
        Duration::from_secs(5),
        || count_quotes(&cluster.client(a).since(mark), kept, 3),
    );
    cluster.assert_connected(&[a]);
}

/// The leader's upstream feed carries every relay's demand, and its `/metrics` says how many
/// symbols that is (`tickwire_relay_upstream_symbols`, "Symbols subscribed upstream").
#[test]
fn the_leaders_upstream_symbols_metric_counts_what_its_feed_carries() {
    let Some(mut cluster) = Cluster::start(&["rA"], 200.0) else {
        return;
    };
    let a = cluster.add_client(0, &["EMU:S10"]);
    cluster.wait_one_leader(&[0], SETTLE);
    let b = cluster.add_relay("rB");
    let b_client = cluster.add_client(b, &["EMU:S17"]);
    wait_synced(&[(cluster.client(a), 0)], "EMU:S10", 3, SETTLE);
    // rB's client gets quotes of EMU:S17: rA's feed carries it.
    wait_synced(&[(cluster.client(b_client), 0)], "EMU:S17", 3, SETTLE);
    assert_eq!(cluster.wait_one_leader(&[0, 1], SETTLE), 0, "rA leads");
    eventually(
        "rA's metrics count both symbols on its feed",
        Duration::from_secs(5),
        || match cluster.relays[0].metric("tickwire_relay_upstream_symbols")? {
            2.0 => Ok(()),
            other => Err(format!("tickwire_relay_upstream_symbols {other}")),
        },
    );
    // The follower has no feed of its own.
    assert_eq!(
        cluster.relays[b].metric("tickwire_relay_upstream_symbols"),
        Ok(0.0),
        "rB carries nothing upstream"
    );
}

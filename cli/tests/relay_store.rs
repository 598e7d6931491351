//! The relay's DuckDB side as a user runs it, over loopback with real files: `--source
//! duckdb:FILE` serving the rows of a query (and what a broken query leaves), and `--store`
//! recording what it relays and answering at once, marked stale, after a restart.
#![cfg(feature = "store")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tickwire_store::Store;
use tokio::runtime::Runtime;

mod support;
// The cluster harness's relays and clients; its Redis half is not used here.
#[path = "support/cluster.rs"]
mod cluster_support;
#[allow(dead_code)]
#[path = "../../relay/tests/support/redis.rs"]
mod redis_support;

use cluster_support::{Client, RelayProcess, eventually};
use support::{Server, scratch_dir, tickwire};

const WAIT: Duration = Duration::from_secs(20);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `sql` on the file as a job that loads it would: open, write, close. DuckDB refuses the
/// file while the relay has it open for a query run, so a refusal is tried again.
fn write(db: &Path, sql: &str) {
    eventually("writing to the file", WAIT, || {
        let store = Store::open(db).map_err(|error| error.to_string())?;
        store
            .connection()
            .execute_batch(sql)
            .map_err(|error| error.to_string())
    });
}

/// Messages of `symbol` carrying data (snapshot, quote), in order.
fn data_of<'a>(messages: &'a [Value], symbol: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|value| {
            value["symbol"] == symbol
                && matches!(value["type"].as_str(), Some("snapshot" | "quote"))
        })
        .collect()
}

/// The `close` a message says, from a snapshot's quote or a quote's data.
fn close(value: &Value) -> Option<f64> {
    value["quote"]["close"]
        .as_f64()
        .or_else(|| value["data"]["close"].as_f64())
}

fn values(client: &Client, mark: usize) -> Vec<Value> {
    client
        .since(mark)
        .into_iter()
        .map(|received| received.value)
        .collect()
}

const LATEST: &str = "SELECT symbol, arg_max(close, open_time) AS close, \
     max(open_time) AS open_time FROM klines GROUP BY symbol";

#[test]
fn a_query_relay_sends_exactly_the_changed_symbols_and_a_broken_query_keeps_the_last_state() {
    let dir = scratch_dir("query-relay");
    let db = dir.join("market.duckdb");
    write(
        &db,
        "CREATE TABLE klines (symbol VARCHAR, open_time TIMESTAMPTZ, close DOUBLE);
         INSERT INTO klines VALUES
           ('BINANCE:BTCUSDT', '2026-12-03 08:00:00+00', 97000),
           ('BINANCE:ETHUSDT', '2026-12-03 08:00:00+00', 3500),
           ('NASDAQ:AAPL', '2026-12-03 08:00:00+00', 230),
           ('FX:EURUSD', '2026-12-03 08:00:00+00', 1.08);",
    );
    let mut command = tickwire();
    command
        .arg("relay")
        .arg(format!("--source=duckdb:{}", db.display()))
        .args(["--query", LATEST, "--interval", "200ms"]);
    let relay = RelayProcess::spawn("query", command);
    // With no --symbols, the page shows what the query returns.
    let (code, page) = support::http_get(&relay.addr, "/symbols").expect("/symbols answers");
    let mut shown: Vec<String> = serde_json::from_str(&page).unwrap();
    shown.sort();
    assert_eq!(
        (code, shown),
        (
            200,
            [
                "BINANCE:BTCUSDT",
                "BINANCE:ETHUSDT",
                "FX:EURUSD",
                "NASDAQ:AAPL"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    let runtime = runtime();
    let crypto = Client::connect(
        &runtime,
        "crypto",
        &relay.addr,
        &["BINANCE:BTCUSDT", "BINANCE:ETHUSDT"],
    );
    let stocks = Client::connect(&runtime, "stocks", &relay.addr, &["NASDAQ:AAPL"]);
    eventually("every subscriber has its symbols' rows", WAIT, || {
        let crypto = values(&crypto, 0);
        let stocks = values(&stocks, 0);
        let last =
            |messages: &[Value], symbol| data_of(messages, symbol).last().and_then(|v| close(v));
        match (
            last(&crypto, "BINANCE:BTCUSDT"),
            last(&crypto, "BINANCE:ETHUSDT"),
            last(&stocks, "NASDAQ:AAPL"),
        ) {
            (Some(97000.0), Some(3500.0), Some(230.0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let runs = |relay: &RelayProcess| relay.metric("tickwire_relay_query_runs_total");
    let (crypto_mark, stocks_mark) = (crypto.mark(), stocks.mark());

    // A new kline for BTC only: it alone is broadcast, to its subscriber alone.
    write(
        &db,
        "INSERT INTO klines VALUES ('BINANCE:BTCUSDT', '2026-12-03 08:05:00+00', 97100);",
    );
    eventually("BTC's new close reaches its subscriber", WAIT, || {
        let got = values(&crypto, crypto_mark);
        match data_of(&got, "BINANCE:BTCUSDT")
            .last()
            .and_then(|v| close(v))
        {
            Some(97100.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Several more runs of an unchanged table send nobody anything.
    let after_change = runs(&relay).unwrap();
    eventually("three more runs", WAIT, || match runs(&relay) {
        Ok(now) if now >= after_change + 3.0 => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let crypto_got = values(&crypto, crypto_mark);
    let data: Vec<&Value> = crypto_got
        .iter()
        .filter(|value| value["type"] == "quote" || value["type"] == "snapshot")
        .collect();
    assert_eq!(data.len(), 1, "crypto got: {crypto_got:?}");
    assert_eq!(
        data[0]["data"],
        serde_json::json!({"close": 97100.0, "open_time": 1_796_285_100})
    );
    assert!(
        data_of(&values(&stocks, stocks_mark), "NASDAQ:AAPL").is_empty(),
        "an unchanged symbol was broadcast: {}",
        stocks.tail(5)
    );

    // The query breaks (its table is gone): failures are counted, clients keep the last state
    // and are told, a newcomer still gets the last good state, even of a symbol nobody was
    // subscribed to (the query source's, not the hub's).
    let (crypto_mark, failures_before) = (
        crypto.mark(),
        relay.metric("tickwire_relay_query_failures_total").unwrap(),
    );
    write(&db, "ALTER TABLE klines RENAME TO klines_old;");
    eventually("failed runs", WAIT, || {
        match relay.metric("tickwire_relay_query_failures_total") {
            Ok(failures) if failures >= failures_before + 2.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let health = relay.health().unwrap();
    assert_eq!(health.code, 503, "{:?}", health.body);
    // No feed stands behind it: nothing of one in its health.
    assert!(health.body.get("mode").is_none(), "{:?}", health.body);
    assert!(
        health.body["query"]["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("klines")),
        "{:?}",
        health.body
    );
    let newcomer = Client::connect(
        &runtime,
        "newcomer",
        &relay.addr,
        &["BINANCE:BTCUSDT", "FX:EURUSD"],
    );
    eventually("the newcomer gets the last good state", WAIT, || {
        let got = values(&newcomer, 0);
        let last = |symbol| data_of(&got, symbol).last().and_then(|v| close(v));
        match (last("BINANCE:BTCUSDT"), last("FX:EURUSD")) {
            (Some(97100.0), Some(1.08)) => Ok(()),
            other => Err(format!("{other:?}: {}", newcomer.tail(4))),
        }
    });
    let crypto_got = values(&crypto, crypto_mark);
    assert!(
        crypto_got
            .iter()
            .any(|value| value["type"] == "status" && value["upstream"] == "backing_off"),
        "{crypto_got:?}"
    );
    assert!(
        data_of(&crypto_got, "BINANCE:BTCUSDT").is_empty(),
        "{crypto_got:?}"
    );

    // Repaired: live again, and the next change flows.
    let crypto_mark = crypto.mark();
    write(
        &db,
        "ALTER TABLE klines_old RENAME TO klines;
         INSERT INTO klines VALUES ('BINANCE:ETHUSDT', '2026-12-03 08:05:00+00', 3510);",
    );
    eventually("ETH's change after the repair", WAIT, || {
        let got = values(&crypto, crypto_mark);
        match data_of(&got, "BINANCE:ETHUSDT")
            .last()
            .and_then(|v| close(v))
        {
            Some(3510.0) => Ok(()),
            other => Err(format!("{other:?}: {}", crypto.tail(4))),
        }
    });
    eventually("healthy again", WAIT, || match relay.health() {
        Ok(health) if health.code == 200 => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

fn relay_on(server: &Server, db: &PathBuf) -> Command {
    let mut command = tickwire();
    command
        .args(["relay", "--upstream", &server.url(), "--store"])
        .arg(db)
        .args(["--bars", "1", "--commit-every", "200ms"])
        .args([
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "500ms",
            "--grace",
            "100ms",
        ]);
    command
}

fn last_lp(messages: &[Value], symbol: &str) -> Option<f64> {
    messages
        .iter()
        .rev()
        .filter(|value| value["symbol"] == symbol)
        .find_map(|value| {
            value["quote"]["lp"]
                .as_f64()
                .or_else(|| value["data"]["lp"].as_f64())
        })
}

#[test]
fn a_relay_with_a_store_records_what_it_relays_and_restarts_answering_stale() {
    const BTC: &str = "BINANCE:BTCUSDT";
    let dir = scratch_dir("relay-store");
    let db = dir.join("relay.duckdb");
    let server = Server::start();
    let runtime = runtime();

    // First life: relay, record, stop cleanly.
    let mut relay = RelayProcess::spawn("first", relay_on(&server, &db));
    let client = Client::connect(
        &runtime,
        "first-client",
        &relay.addr,
        &[BTC, "BINANCE:ETHUSDT"],
    );
    eventually("quotes flow", WAIT, || {
        match last_lp(&values(&client, 0), BTC) {
            Some(_) if client.mark() > 10 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // The market stops; the client's last price is the market's.
    server.emulator().pause_market(true);
    let market_price = || {
        server
            .emulator()
            .bar_history(BTC, "1")
            .last()
            .map(|bar| bar.close)
    };
    let last_price = eventually("the client has the market's last price", WAIT, || {
        match (last_lp(&values(&client, 0), BTC), market_price()) {
            (Some(seen), Some(market)) if seen == market => Ok(seen),
            other => Err(format!("{other:?}")),
        }
    });
    relay.signal("-TERM");
    let status = support::exit_within(&mut relay.child, WAIT).expect("the relay exits on SIGTERM");
    relay.killed = true;
    assert!(status.success(), "{status}: {}", relay.log_tail(20));
    let log = relay.log_tail(40);
    assert!(log.contains("recorded to"), "{log}");
    drop(relay);
    let client_messages = values(&client, 0);
    drop(client);
    {
        let store = Store::open_read_only(&db).unwrap();
        let states = store.last_states(Some("1"), 10).unwrap();
        let btc = states
            .iter()
            .find(|state| state.quote.symbol.as_ref() == BTC)
            .expect("BTC recorded");
        assert_eq!(
            btc.quote.price,
            Some(last_price),
            "the last quote relayed is recorded"
        );
        assert!(btc.bar.is_some(), "its bars are recorded");
        // Every quote relayed was recorded (the relay sends only changes, so it records as
        // many or more).
        let relayed = client_messages
            .iter()
            .filter(|value| value["type"] == "quote")
            .count() as u64;
        let recorded = store.count("quotes").unwrap();
        assert!(
            recorded >= relayed && relayed > 0,
            "{recorded} recorded, {relayed} relayed"
        );
    }

    // Second life, upstream refused: a new subscriber gets the recorded state at once, stale.
    server.emulator().refuse_upgrades(Some(503));
    let relay = RelayProcess::spawn("second", relay_on(&server, &db));
    let client = Client::connect(&runtime, "second-client", &relay.addr, &[BTC]);
    let stale = eventually("a stale snapshot", WAIT, || {
        values(&client, 0)
            .into_iter()
            .find(|value| value["type"] == "snapshot" && value["symbol"] == BTC)
            .ok_or_else(|| client.tail(3))
    });
    assert_eq!(stale["stale"], true, "{stale}");
    assert_eq!(stale["quote"]["lp"].as_f64(), Some(last_price), "{stale}");
    assert!(stale["bar"]["bar"]["close"].is_number(), "{stale}");
    assert_eq!(
        relay.metric("tickwire_relay_stale_snapshots_sent_total"),
        Ok(1.0)
    );

    // The upstream comes back: the first quote replaces it with a live snapshot.
    server.emulator().pause_market(false);
    server.emulator().refuse_upgrades(None);
    let live = eventually("a live snapshot", WAIT, || {
        values(&client, 0)
            .into_iter()
            .filter(|value| value["type"] == "snapshot" && value["symbol"] == BTC)
            .find(|value| value.get("stale").is_none())
            .ok_or_else(|| client.tail(3))
    });
    assert!(live["quote"]["lp"].is_number(), "{live}");
    drop(client);
    drop(relay);
}

#[test]
fn the_query_relay_refuses_what_cannot_work() {
    let dir = scratch_dir("query-relay-flags");
    let db = dir.join("nothing.duckdb");
    let source = format!("--source=duckdb:{}", db.display());
    let cases: [(&[&str], &str); 5] = [
        (&["relay", &source], "--query"),
        (
            &["relay", "--source", "sqlite:x.db", "--query", "SELECT 1"],
            "duckdb:FILE",
        ),
        (
            &["relay", &source, "--query", LATEST, "--upstream", "ws://x"],
            "--upstream",
        ),
        (
            &["relay", &source, "--query", LATEST, "--interval", "10ms"],
            "interval",
        ),
        (
            &["relay", &source, "--query", LATEST, "--bars", "1"],
            "--bars",
        ),
    ];
    for (args, expected) in cases {
        let output = tickwire().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn a_relay_killed_with_sigkill_leaves_its_store_readable_missing_at_most_the_last_interval() {
    let dir = scratch_dir("relay-store-kill");
    let db = dir.join("relay.duckdb");
    let server = Server::start_at(400.0);
    let runtime = runtime();
    let mut relay = RelayProcess::spawn("killed", relay_on(&server, &db));
    let client = Client::connect(
        &runtime,
        "client",
        &relay.addr,
        &["BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "NASDAQ:AAPL"],
    );
    eventually("quotes flow for a while", WAIT, || match client.mark() {
        received if received > 200 => Ok(()),
        received => Err(format!("{received} messages")),
    });
    relay.kill();
    let killed_at_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    // Read-write: DuckDB replays its write-ahead log on open.
    let store = Store::open(&db).unwrap();
    let quotes = store.count("quotes").unwrap();
    assert!(
        quotes > 100,
        "{quotes} quote rows after 200 messages relayed"
    );
    let newest: i64 = store
        .connection()
        .query_row("SELECT max(epoch_us(received_at)) FROM quotes", [], |row| {
            row.get(0)
        })
        .unwrap();
    let missing = Duration::from_micros(u64::try_from((killed_at_us - newest).max(0)).unwrap());
    // The 200 ms commit interval, plus a batch being written and a loaded machine's scheduling.
    assert!(
        missing <= Duration::from_millis(200) + Duration::from_millis(1500),
        "the newest committed quote is {missing:?} older than the kill"
    );
}

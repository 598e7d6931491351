//! The relay's SQL source: one read-only run against a file, its rows as JSON columns.

use std::path::PathBuf;

use serde_json::json;
use tickwire_store::query::SqlQuery;

fn temp_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tickwire-query-{}-{name}.duckdb",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn rows_come_back_keyed_by_symbol_with_every_type_as_json() {
    let path = temp_path("types");
    {
        let connection = duckdb::Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "SET TimeZone = 'UTC';
                 CREATE TABLE t (symbol VARCHAR, i INTEGER, big HUGEINT, d DECIMAL(10, 2),
                   f DOUBLE, ts TIMESTAMPTZ, day DATE, flag BOOLEAN, note VARCHAR,
                   tags VARCHAR[], nothing INTEGER);
                 INSERT INTO t VALUES ('X:A', 7, 170141183460469231731687303715884105727,
                   12.34, 0.5, TIMESTAMPTZ '2024-01-02 03:04:05.5+00', DATE '1970-01-02', true,
                   'hi', ['a', 'b'], NULL),
                   (NULL, 1, 1, 1, 1, NULL, NULL, NULL, NULL, NULL, NULL);",
            )
            .unwrap();
    }
    let query = SqlQuery::new(&path, "SELECT * FROM t ORDER BY i DESC;").unwrap();
    let rows = query.run(10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].symbol.as_ref(), "X:A");
    let columns = serde_json::to_value(&rows[0].columns).unwrap();
    assert_eq!(
        columns,
        json!({
            "i": 7,
            "big": "170141183460469231731687303715884105727",
            "d": 12.34,
            "f": 0.5,
            "ts": 1_704_164_645.5,
            "day": 86_400,
            "flag": true,
            "note": "hi",
            "tags": ["a", "b"],
            "nothing": null,
        })
    );
    // A NULL symbol gives an empty one, which the core counts as invalid.
    assert_eq!(rows[1].symbol.as_ref(), "");
    // The limit stops reading.
    assert_eq!(query.run(1).unwrap().len(), 1);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn failures_are_one_line_reasons() {
    let path = temp_path("failures");
    let missing = SqlQuery::new(&path, "SELECT 1 AS symbol").unwrap();
    let error = missing.run(10).unwrap_err();
    assert!(error.contains("cannot open"), "{error}");
    duckdb::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (name VARCHAR); INSERT INTO t VALUES ('a');")
        .unwrap();
    let no_symbol = SqlQuery::new(&path, "SELECT name FROM t").unwrap();
    let error = no_symbol.run(10).unwrap_err();
    assert!(
        error.contains("no `symbol` column") && error.contains("name"),
        "{error}"
    );
    let broken = SqlQuery::new(&path, "SELEC name FROM t").unwrap();
    let error = broken.run(10).unwrap_err();
    assert!(!error.contains('\n') && error.contains("syntax"), "{error}");
    // Read-only: a query cannot change the file.
    let writing =
        SqlQuery::new(&path, "INSERT INTO t VALUES ('b') RETURNING name AS symbol").unwrap();
    assert!(writing.run(10).is_err());
    assert!(SqlQuery::new(&path, "  ").is_err());
    let _ = std::fs::remove_file(&path);
}

/// A failed run's reason goes to logs and `/healthz`: it must not carry the SQL's literals
/// (where an S3 key or a token would be) nor DuckDB's excerpt of the statement.
#[test]
fn a_failed_run_never_quotes_the_sql() {
    let path = temp_path("redacted");
    duckdb::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (symbol VARCHAR); INSERT INTO t VALUES ('X:A');")
        .unwrap();
    let secret = "tok-5ecret-8841";
    let cases = [
        // A syntax error: DuckDB quotes the statement line under `LINE 1:`.
        format!("SELECT symbol, '{secret}' AS token FROMM t"),
        // A missing file: DuckDB names the pattern it could not find.
        format!("SELECT 'X:B' AS symbol FROM read_csv('/nonexistent/{secret}/x.csv')"),
        // A bad cast of the literal itself.
        format!("SELECT symbol, CAST('{secret}' AS INTEGER) AS n FROM t"),
        // A literal holding a quote and a line break.
        format!("SELECT symbol FROM read_csv('/nonexistent/it''s\n{secret}.csv')"),
    ];
    for sql in &cases {
        let query = SqlQuery::new(&path, sql).unwrap();
        let error = query.run(10).unwrap_err();
        assert!(!error.contains(secret), "{sql}: {error}");
        assert!(!error.contains("LINE "), "{sql}: {error}");
        assert!(!error.is_empty() && !error.contains('\n'), "{sql}: {error}");
        assert!(!format!("{query:?}").contains(secret));
    }
    // What is not a literal still explains the failure.
    let query = SqlQuery::new(&path, "SELECT symbol FROM missing_table").unwrap();
    let error = query.run(10).unwrap_err();
    assert!(error.contains("missing_table"), "{error}");
    let _ = std::fs::remove_file(&path);
}

/// The README's example of the database-driven relay: a 5-minute klines table and the latest
/// snapshot per symbol (keep the two in step).
#[test]
fn the_readmes_klines_example_gives_the_latest_snapshot_per_symbol() {
    let path = temp_path("klines");
    duckdb::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE klines (
                 symbol VARCHAR NOT NULL,
                 open_time TIMESTAMPTZ NOT NULL,
                 open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE,
                 PRIMARY KEY (symbol, open_time)
             );
             INSERT INTO klines VALUES
               ('BINANCE:BTCUSDT', now() - INTERVAL 10 MINUTE, 97000, 97200, 96900, 97100, 12.5),
               ('BINANCE:BTCUSDT', now() - INTERVAL 5 MINUTE, 97100, 97300, 97000, 97250, 8.0),
               ('BINANCE:ETHUSDT', now() - INTERVAL 5 MINUTE, 3500, 3510, 3490, 3505, 40.0),
               ('BINANCE:ETHUSDT', now() - INTERVAL 3 DAY, 3000, 3000, 3000, 3000, 1.0);",
        )
        .unwrap();
    let sql = "SELECT symbol,
                      arg_max(close, open_time) AS lp,
                      arg_max(volume, open_time) AS volume,
                      max(open_time) AS time
               FROM klines
               WHERE open_time > now() - INTERVAL 1 DAY
               GROUP BY symbol";
    let mut rows = SqlQuery::new(&path, sql).unwrap().run(100).unwrap();
    rows.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    let summary: Vec<(&str, f64, f64)> = rows
        .iter()
        .map(|row| {
            (
                row.symbol.as_ref(),
                row.columns["lp"].as_f64().unwrap(),
                row.columns["volume"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("BINANCE:BTCUSDT", 97250.0, 8.0),
            ("BINANCE:ETHUSDT", 3505.0, 40.0)
        ]
    );
    assert!(rows.iter().all(|row| row.columns["time"].is_number()));
    let _ = std::fs::remove_file(&path);
}

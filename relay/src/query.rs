//! A relay fed by a periodic query instead of an upstream feed ([`RelayConfig::query`]): the
//! core's [`QueryFanout`] decides when the query runs and what changed; this runs it on a
//! blocking thread and hands the rows back.
//!
//! [`RelayConfig::query`]: crate::RelayConfig::query

use std::sync::Arc;
use std::time::Instant;

use tickwire_core::query::{QueryConfig, QueryFanout, QueryRow, QuerySource};
use tokio::sync::mpsc;

/// Runs the relay's query: given to [`RelayQuery`], called on a blocking thread once per run,
/// never twice at once.
///
/// ```
/// use tickwire_core::query::QueryRow;
/// use tickwire_relay::QueryRunner;
///
/// /// Rows from wherever the application keeps them.
/// struct Fixed(Vec<QueryRow>);
///
/// impl QueryRunner for Fixed {
///     fn run(&self, limit: usize) -> Result<Vec<QueryRow>, String> {
///         Ok(self.0.iter().take(limit).cloned().collect())
///     }
///
///     fn describe(&self) -> String {
///         "fixed rows".to_owned()
///     }
/// }
/// ```
pub trait QueryRunner: Send + Sync + 'static {
    /// Runs the query: its rows (at most `limit` of them need be read; the relay counts the
    /// rest as over its limit), or why it failed, in one line.
    ///
    /// # Errors
    /// Any reason the run failed: the relay logs it, counts it and keeps the last good state.
    fn run(&self, limit: usize) -> Result<Vec<QueryRow>, String>;

    /// What is queried, for the log (never a secret).
    fn describe(&self) -> String;
}

/// What a query-fed relay runs, and how often (see [`tickwire_core::query`]).
#[derive(Clone)]
pub struct RelayQuery {
    /// When to run it, its timeout, its row limits and its backoff.
    pub config: QueryConfig,
    /// What runs it.
    pub runner: Arc<dyn QueryRunner>,
}

impl std::fmt::Debug for RelayQuery {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RelayQuery")
            .field("config", &self.config)
            .field("runner", &self.runner.describe())
            .finish()
    }
}

/// A run's id and its result.
pub(crate) type QueryResult = (u64, Result<Vec<QueryRow>, String>);

/// A query relay's moving parts: the core decides, these carry it out.
pub(crate) struct QueryEngine {
    pub(crate) relay: QueryFanout,
    pub(crate) runner: Arc<dyn QueryRunner>,
    pub(crate) results: mpsc::Sender<QueryResult>,
}

impl QueryEngine {
    /// Starts run `id` on a blocking thread; its result comes back on the results channel.
    pub(crate) fn start_run(&self, id: u64) {
        let runner = self.runner.clone();
        let results = self.results.clone();
        // One more than kept, so that a result past the limit is seen (and counted) as such.
        let limit = self.relay.source().config().max_rows.saturating_add(1);
        tokio::task::spawn_blocking(move || {
            let result = runner.run(limit);
            // One run at a time, so the channel always has room; a relay gone drops it.
            let _ = results.try_send((id, result));
        });
    }

    /// Takes run `id`'s result, logging what an operator needs to see.
    pub(crate) fn handle_result(
        &mut self,
        now: Instant,
        id: u64,
        result: Result<Vec<QueryRow>, String>,
    ) {
        let failures_before = self.relay.source().consecutive_failures();
        let rows = result.as_ref().map_or(0, Vec::len);
        self.relay.handle_result(now, id, result);
        let source = self.relay.source();
        match source.last_error() {
            Some(error) if source.consecutive_failures() > failures_before => {
                let retry_in = source
                    .next_run()
                    .map_or(0, |at| at.saturating_duration_since(now).as_millis());
                tracing::warn!(
                    %error,
                    failures = source.consecutive_failures(),
                    retry_in = %format!("{retry_in}ms"),
                    "the query failed; clients keep the last good state"
                );
            }
            None if failures_before > 0 => {
                tracing::info!(
                    rows,
                    after_failures = failures_before,
                    "the query works again"
                );
            }
            None if source.counters().runs == 1 => {
                tracing::info!(rows, symbols = source.symbol_count(), "first query result");
            }
            _ => {}
        }
    }

    /// A timed-out run is logged once, when the core counts it.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let timeouts = self.relay.source().counters().timeouts;
        self.relay.handle_timeout(now);
        if self.relay.source().counters().timeouts != timeouts {
            tracing::warn!(
                timeout = ?self.relay.source().config().timeout,
                "the query did not answer in time; the next run waits for it to return"
            );
        }
    }
}

/// `/healthz`'s part for a query-fed relay.
pub(crate) fn health(engine: &QueryEngine, now: Instant) -> serde_json::Value {
    let source = engine.relay.source();
    let counters = source.counters();
    serde_json::json!({
        "source": engine.runner.describe(),
        "runs": counters.runs,
        "failures": counters.failures,
        "consecutive_failures": source.consecutive_failures(),
        "last_error": source.last_error(),
        "symbols": source.symbol_count(),
        "next_run_in_ms": source
            .next_run()
            .map(|at| u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
    })
}

/// `/metrics`' part for a query-fed relay.
pub(crate) fn metrics(out: &mut String, source: &QuerySource) {
    let counters = source.counters();
    let series: [(&str, &str, &str, u64); 9] = [
        (
            "tickwire_relay_query_runs_total",
            "counter",
            "Query runs started.",
            counters.runs,
        ),
        (
            "tickwire_relay_query_failures_total",
            "counter",
            "Query runs that failed or timed out (the last good state kept).",
            counters.failures,
        ),
        (
            "tickwire_relay_query_timeouts_total",
            "counter",
            "Query runs that did not answer in time.",
            counters.timeouts,
        ),
        (
            "tickwire_relay_query_consecutive_failures",
            "gauge",
            "Query runs failed in a row.",
            u64::from(source.consecutive_failures()),
        ),
        (
            "tickwire_relay_query_rows_total",
            "counter",
            "Rows returned by good runs.",
            counters.rows,
        ),
        (
            "tickwire_relay_query_rows_changed_total",
            "counter",
            "Rows that changed their symbol's state (broadcast to its subscribers).",
            counters.rows_changed,
        ),
        (
            "tickwire_relay_query_rows_unchanged_total",
            "counter",
            "Rows equal to their symbol's last state (sent to nobody).",
            counters.rows_unchanged,
        ),
        (
            "tickwire_relay_query_rows_dropped_total",
            "counter",
            "Rows dropped: no usable symbol, a symbol repeated in one result, past the row or \
             size limit.",
            counters
                .rows_invalid
                .saturating_add(counters.rows_over_limit),
        ),
        (
            "tickwire_relay_query_symbols",
            "gauge",
            "Symbols whose state the query source holds.",
            source.symbol_count() as u64,
        ),
    ];
    for (name, kind, help, value) in series {
        crate::metrics::single(out, name, kind, help, value);
    }
}

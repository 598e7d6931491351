//! The relay's `/metrics` page (Prometheus text format) and its latency histogram.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tickwire_core::cluster::{Node, Role};
use tickwire_core::hub::{CloseReason, Fanout, SymbolCounters};
use tickwire_driver::FeedStatus;

use super::cluster::link::LinkCounters;
use super::http::HttpStats;

/// Upper bounds of the broadcast-latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Time from an update reaching the hub to its frame being written to a client socket.
/// Written by every connection's writer without a lock.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// One counter per bucket, plus the overflow bucket.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0u64;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative = cumulative.saturating_add(count.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        if let Some(overflow) = self.counts.last() {
            cumulative = cumulative.saturating_add(overflow.load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub(crate) fn single(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// A relay-wide counter and, in a family of its own (so summing either never counts twice),
/// one series of it per symbol.
fn by_symbol<'a>(
    out: &mut String,
    names: (&str, &str),
    helps: (&str, &str),
    total: u64,
    symbols: impl Iterator<Item = (&'a str, u64)>,
) {
    let (name, per_symbol) = names;
    header(out, name, "counter", helps.0);
    let _ = writeln!(out, "{name} {total}");
    header(out, per_symbol, "counter", helps.1);
    for (symbol, value) in symbols {
        let _ = writeln!(out, "{per_symbol}{{symbol=\"{}\"}} {value}", label(symbol));
    }
}

/// Everything `/metrics` shows.
pub(crate) fn render(
    fanout: &Fanout,
    latency: &LatencyHistogram,
    http: &HttpStats,
    upstream: Option<&FeedStatus>,
    cluster: Option<(&Node, LinkCounters)>,
) -> String {
    let mut out = String::with_capacity(4096);
    let hub = fanout.hub();
    let counters = hub.counters();
    let upstream_side = fanout.counters();
    single(
        &mut out,
        "tickwire_relay_upstream_series",
        "gauge",
        "Bar series open upstream (one per carried symbol when bars are relayed).",
        fanout.series_count(),
    );
    header(
        &mut out,
        "tickwire_relay_upstream_refusals_total",
        "counter",
        "Upstream refusals passed on to clients: symbols the upstream feed had no room for \
         (UPSTREAM_LIMIT) and bar series it refused (BARS_UNAVAILABLE).",
    );
    let _ = writeln!(
        out,
        "tickwire_relay_upstream_refusals_total{{kind=\"symbol_limit\"}} {}",
        upstream_side.symbols_refused
    );
    let _ = writeln!(
        out,
        "tickwire_relay_upstream_refusals_total{{kind=\"series\"}} {}",
        upstream_side.series_refused
    );
    single(
        &mut out,
        "tickwire_relay_connections",
        "gauge",
        "Downstream connections open now.",
        hub.connection_count(),
    );
    single(
        &mut out,
        "tickwire_relay_connections_accepted_total",
        "counter",
        "Downstream connections accepted.",
        counters.connections_accepted,
    );
    single(
        &mut out,
        "tickwire_relay_connections_refused_total",
        "counter",
        "Downstream connections refused at the connection limit.",
        counters.connections_refused,
    );
    header(
        &mut out,
        "tickwire_relay_disconnects_total",
        "counter",
        "Downstream connections ended, by cause.",
    );
    for reason in CloseReason::ALL {
        let _ = writeln!(
            out,
            "tickwire_relay_disconnects_total{{cause=\"{}\"}} {}",
            reason.as_str(),
            counters.disconnects(reason)
        );
    }
    header(
        &mut out,
        "tickwire_relay_subscribers",
        "gauge",
        "Downstream subscribers per symbol.",
    );
    for (symbol, subscribers, _) in hub.symbols() {
        let _ = writeln!(
            out,
            "tickwire_relay_subscribers{{symbol=\"{}\"}} {subscribers}",
            label(symbol)
        );
    }
    // In a cluster the feed (the leader's) carries every relay's demand; a follower has none.
    let upstream_symbols = match cluster {
        Some((node, _)) => node.carried_symbols().len(),
        None => hub.symbols().filter(|(_, _, upstream)| *upstream).count(),
    };
    single(
        &mut out,
        "tickwire_relay_upstream_symbols",
        "gauge",
        "Symbols subscribed upstream (including lingering ones; in a cluster, what this relay's \
         feed carries for every relay while it leads).",
        upstream_symbols,
    );
    // The per-symbol series follow the symbols the hub carries, so there are never more than
    // `max_upstream_symbols` of them; a symbol dropped (linger over, rejected) loses its series.
    let per_symbol: Vec<(&str, SymbolCounters)> = hub
        .symbol_counters()
        .map(|(symbol, counters)| (symbol.as_ref(), counters))
        .collect();
    by_symbol(
        &mut out,
        (
            "tickwire_relay_messages_sent_total",
            "tickwire_relay_symbol_messages_sent_total",
        ),
        (
            "Messages handed to client sockets.",
            "Data messages (snapshot, quote, bar) of a symbol handed to client sockets, for each \
             symbol the relay carries now (at most max_upstream_symbols series; a symbol no \
             longer carried loses its series).",
        ),
        counters.frames_sent,
        per_symbol
            .iter()
            .map(|(symbol, counters)| (*symbol, counters.messages_sent)),
    );
    by_symbol(
        &mut out,
        (
            "tickwire_relay_slow_consumers_total",
            "tickwire_relay_symbol_slow_consumers_total",
        ),
        (
            "SLOW_CONSUMER warnings sent.",
            "SLOW_CONSUMER warnings to connections subscribed to a symbol (one warning counts \
             for each of its symbols), for each symbol the relay carries now.",
        ),
        counters.slow_consumer_warnings,
        per_symbol
            .iter()
            .map(|(symbol, counters)| (*symbol, counters.slow_consumers)),
    );
    let totals = [
        (
            "tickwire_relay_bytes_sent_total",
            "Bytes of messages handed to client sockets.",
            counters.bytes_sent,
        ),
        (
            "tickwire_relay_updates_received_total",
            "Quote and bar updates from upstream.",
            counters.updates_received,
        ),
        (
            "tickwire_relay_updates_unchanged_total",
            "Upstream updates not broadcast because nothing changed.",
            counters.updates_unchanged,
        ),
        (
            "tickwire_relay_deliveries_conflated_total",
            "Deliveries to slow consumers replaced by a later value.",
            counters.deliveries_conflated,
        ),
        (
            "tickwire_relay_control_messages_dropped_total",
            "Replies dropped because the client's queue was full.",
            counters.control_frames_dropped,
        ),
        (
            "tickwire_relay_requests_total",
            "Messages received from clients.",
            counters.requests,
        ),
        (
            "tickwire_relay_errors_sent_total",
            "Error replies sent to clients.",
            counters.errors_sent,
        ),
        (
            "tickwire_relay_stale_snapshots_sent_total",
            "Snapshots of a stored state the upstream had not confirmed yet (--store), per \
             client.",
            counters.stale_snapshots_sent,
        ),
    ];
    for (name, help, value) in totals {
        single(&mut out, name, "counter", help, value);
    }
    single(
        &mut out,
        "tickwire_relay_http_connections",
        "gauge",
        "Connections at the HTTP stage now (page, metrics, health, WebSocket handshakes).",
        http.open.load(Ordering::Relaxed),
    );
    let http_totals = [
        (
            "tickwire_relay_http_accepted_total",
            "TCP connections accepted.",
            &http.accepted,
        ),
        (
            "tickwire_relay_http_header_timeouts_total",
            "Connections closed because their request headers did not arrive in time.",
            &http.header_timeouts,
        ),
        (
            "tickwire_relay_http_accept_errors_total",
            "Failed accepts, such as running out of file descriptors.",
            &http.accept_errors,
        ),
    ];
    for (name, help, value) in http_totals {
        single(
            &mut out,
            name,
            "counter",
            help,
            value.load(Ordering::Relaxed),
        );
    }
    single(
        &mut out,
        "tickwire_relay_stored_states",
        "gauge",
        "Stored states loaded at start (--store) that no client has subscribed to yet.",
        hub.preloaded_count(),
    );
    header(
        &mut out,
        "tickwire_relay_broadcast_latency_seconds",
        "histogram",
        "Time from an upstream update reaching the relay to its message being written to a client socket.",
    );
    latency.render(&mut out, "tickwire_relay_broadcast_latency_seconds");

    header(
        &mut out,
        "tickwire_relay_upstream_state",
        "gauge",
        "1 for the upstream state clients are told (in a cluster, the leader's; degraded while \
         Redis is unreachable).",
    );
    let told = if hub.is_degraded() {
        "degraded"
    } else {
        hub.upstream_state().as_str()
    };
    for state in [
        "idle",
        "connecting",
        "live",
        "backing_off",
        "circuit_open",
        "closed",
        "degraded",
    ] {
        let value = u8::from(told == state);
        let _ = writeln!(
            out,
            "tickwire_relay_upstream_state{{state=\"{state}\"}} {value}"
        );
    }
    if let Some(upstream) = upstream {
        feed_metrics(&mut out, upstream);
    }
    if let Some((node, link)) = cluster {
        cluster_metrics(&mut out, node, link);
    }
    out
}

/// The upstream feed this relay holds (always when alone; while it leads, in a cluster).
fn feed_metrics(out: &mut String, upstream: &FeedStatus) {
    let client = &upstream.client;
    single(
        out,
        "tickwire_relay_upstream_connections_total",
        "counter",
        "Upstream connections opened (the first one plus every reconnect).",
        client.counters.connections,
    );
    single(
        out,
        "tickwire_relay_upstream_reconnects_total",
        "counter",
        "Upstream connections opened after the first.",
        client.counters.connections.saturating_sub(1),
    );
    single(
        out,
        "tickwire_relay_upstream_connection_attempts_total",
        "counter",
        "Upstream connection attempts.",
        client.counters.connection_attempts,
    );
    single(
        out,
        "tickwire_relay_upstream_consecutive_failures",
        "gauge",
        "Upstream attempts failed in a row.",
        client.consecutive_failures,
    );
    single(
        out,
        "tickwire_relay_upstream_packets_total",
        "counter",
        "Packets received from upstream.",
        client.counters.packets,
    );
}

/// The relay's part in its cluster.
fn cluster_metrics(out: &mut String, node: &Node, link: LinkCounters) {
    let leader = matches!(node.role(), Role::Leader { .. });
    let epoch = node.epoch();
    header(
        out,
        "tickwire_relay_cluster_role",
        "gauge",
        "1 for this relay's role in the cluster.",
    );
    let _ = writeln!(
        out,
        "tickwire_relay_cluster_role{{role=\"leader\"}} {}",
        u8::from(leader)
    );
    let _ = writeln!(
        out,
        "tickwire_relay_cluster_role{{role=\"follower\"}} {}",
        u8::from(!leader)
    );
    single(
        out,
        "tickwire_relay_cluster_epoch",
        "gauge",
        "The fencing epoch held (leader) or last followed (follower).",
        epoch,
    );
    header(
        out,
        "tickwire_relay_cluster_redis_state",
        "gauge",
        "1 for the state of the link to Redis.",
    );
    let redis = node.store_state().as_str();
    for state in ["up", "connecting", "down"] {
        let _ = writeln!(
            out,
            "tickwire_relay_cluster_redis_state{{state=\"{state}\"}} {}",
            u8::from(redis == state)
        );
    }
    single(
        out,
        "tickwire_relay_cluster_carries_upstream",
        "gauge",
        "1 while this relay holds the upstream feed.",
        u8::from(node.carries_upstream()),
    );
    let counters = node.counters();
    let follower = node.follower().counters();
    let lease = node.lease().counters();
    let totals = [
        (
            "tickwire_relay_cluster_published_total",
            "Stream messages this relay published as leader.",
            counters.published,
        ),
        (
            "tickwire_relay_cluster_publishes_fenced_total",
            "Publishes Redis refused because a newer leader's epoch was stored.",
            counters.publishes_fenced,
        ),
        (
            "tickwire_relay_cluster_publishes_coalesced_total",
            "Changes sent later as one snapshot message because Redis was behind.",
            counters.publishes_coalesced,
        ),
        (
            "tickwire_relay_cluster_received_total",
            "Stream messages followed.",
            follower.received,
        ),
        (
            "tickwire_relay_cluster_stale_messages_total",
            "Stream messages of a deposed leader (an older epoch), ignored.",
            follower.stale,
        ),
        (
            "tickwire_relay_cluster_sequence_gaps_total",
            "Gaps in a symbol's stream sequence.",
            follower.gaps,
        ),
        (
            "tickwire_relay_cluster_resyncs_total",
            "Snapshots read from Redis to resynchronise a symbol.",
            follower.resyncs,
        ),
        (
            "tickwire_relay_cluster_malformed_messages_total",
            "Stream messages that could not be read.",
            follower.malformed,
        ),
        (
            "tickwire_relay_cluster_lease_takeovers_total",
            "Times this relay took the lease.",
            lease.acquired,
        ),
        (
            "tickwire_relay_cluster_lease_step_downs_total",
            "Times this relay stopped holding the lease.",
            lease.stepped_down,
        ),
        (
            "tickwire_relay_cluster_redis_connects_total",
            "Links to Redis opened.",
            counters.store_connects,
        ),
        (
            "tickwire_relay_cluster_redis_failures_total",
            "Links to Redis that failed.",
            counters.store_failures,
        ),
        (
            "tickwire_relay_cluster_dropped_messages_total",
            "Stream messages dropped because the relay was behind (resynchronised from \
             snapshots) or oversized.",
            link.messages_dropped
                .saturating_add(link.messages_oversized),
        ),
        (
            "tickwire_relay_cluster_bad_demand_entries_total",
            "Demand entries in Redis that could not be read.",
            counters.demand_entries_bad,
        ),
    ];
    for (name, help, value) in totals {
        single(out, name, "counter", help, value);
    }
    single(
        out,
        "tickwire_relay_cluster_relays",
        "gauge",
        "Relays with live demand entries, this one included.",
        node.demand().relays().count(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let mut out = String::new();
        histogram.render(&mut out, "x");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn per_symbol_series_have_a_family_of_their_own_and_escape_their_labels() {
        let mut out = String::new();
        by_symbol(
            &mut out,
            ("x_total", "x_symbol_total"),
            ("Help.", "Per symbol."),
            7,
            [("EMU:S1", 3), ("ODD\"NAME\\", 4)].into_iter(),
        );
        assert_eq!(
            out,
            "# HELP x_total Help.\n# TYPE x_total counter\nx_total 7\n\
             # HELP x_symbol_total Per symbol.\n# TYPE x_symbol_total counter\n\
             x_symbol_total{symbol=\"EMU:S1\"} 3\nx_symbol_total{symbol=\"ODD\\\"NAME\\\\\"} 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

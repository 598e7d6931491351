//! Shared by the core's integration tests and benchmarks: a live client fed the qsd corpus.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use tickwire_core::client::{Client, Config, Input, Output};

/// The session id the synthetic corpus uses.
pub(crate) const CORPUS_SESSION: &str = "qs_a1b2c3d4e5f6";

pub(crate) fn testdata(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(name);
    Bytes::from(
        std::fs::read(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display())),
    )
}

/// A live client subscribed to every symbol of the qsd corpus, and the corpus as WebSocket
/// messages rewritten to the client's quote session id (same length, so prefixes still hold).
pub(crate) struct LiveCorpus {
    pub(crate) client: Client,
    pub(crate) id: tickwire_core::client::ConnectionId,
    pub(crate) messages: Vec<Bytes>,
    pub(crate) qsd_packets: usize,
    pub(crate) now: Instant,
}

pub(crate) fn live_corpus() -> LiveCorpus {
    let corpus = testdata("qsd-burst-synthetic.txt");
    let text = std::str::from_utf8(&corpus).expect("ASCII corpus");
    let symbols: BTreeSet<&str> = text
        .split("\"n\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let now = Instant::now();
    let config = Config {
        burst: 1_000,
        rate_limit_per_minute: 60_000,
        ..Config::default()
    };
    let mut client = Client::new(config, now);
    client.subscribe_quotes(now, symbols.iter().copied());
    client.handle_timeout(now);
    let mut id = None;
    while let Some(output) = client.poll_output() {
        if let Output::Connect(request) = output {
            id = Some(request.id);
        }
    }
    let id = id.expect("connect");
    client.handle_input(now, Input::Connected(id));
    let mut session = None;
    while let Some(output) = client.poll_output() {
        if let Output::Transmit { text, .. } = output {
            if text.contains("quote_create_session") {
                session = text.split('"').nth(7).map(str::to_owned);
            }
        }
    }
    let session = session.expect("quote session");
    assert_eq!(session.len(), CORPUS_SESSION.len());
    let rewritten = text.replace(CORPUS_SESSION, &session);
    let qsd_packets = rewritten.matches("\"m\":\"qsd\"").count();
    let messages = rewritten
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| Bytes::copy_from_slice(line.as_bytes()))
        .collect();
    client.handle_input(
        now,
        Input::Message {
            id,
            text: Bytes::from_static(b"~m~17~m~{\"protocol\":\"json\"}"),
        },
    );
    while client.poll_output().is_some() {}
    LiveCorpus {
        client,
        id,
        messages,
        qsd_packets,
        now,
    }
}

/// Feeds every message and drains every output; returns how many quote events came out.
pub(crate) fn feed(corpus: &mut LiveCorpus) -> usize {
    let mut quotes = 0;
    feed_with(
        corpus,
        |event| {
            if let tickwire_core::client::Event::Quote(event) = event {
                std::hint::black_box(&event);
                quotes += 1;
            }
        },
        || {},
    );
    quotes
}

/// Feeds every message, hands every event to `on_event`, and calls `after_message` once each
/// message's outputs are drained.
pub(crate) fn feed_with(
    corpus: &mut LiveCorpus,
    mut on_event: impl FnMut(tickwire_core::client::Event),
    mut after_message: impl FnMut(),
) {
    for message in &corpus.messages {
        corpus.client.handle_input(
            corpus.now,
            Input::Message {
                id: corpus.id,
                text: message.clone(),
            },
        );
        while let Some(output) = corpus.client.poll_output() {
            if let Output::Event(event) = output {
                on_event(event);
            }
        }
        after_message();
    }
}

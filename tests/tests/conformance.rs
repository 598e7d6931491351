//! Conformance on real captured traffic from `../shared/testdata/`.
//!
//! The 2023 capture (from the public tradingview-rs repository) is 42 packets concatenated into
//! one string, exactly as the server framed them; the qsd corpus is one WebSocket message per
//! line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use tickwire_core::codec::{Decoder, Packet};
use tickwire_core::message::{self, Bar, FieldUpdate, ServerMessage};

fn testdata(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(name);
    Bytes::from(
        std::fs::read(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display())),
    )
}

#[test]
fn capture_2023_decodes_to_the_exact_packets() {
    let capture = testdata("tradingview-rs-socket-messages-2023.txt");
    let decoder = Decoder::new();
    let mut packets = decoder.decode(&capture);
    let payloads: Vec<Bytes> = packets
        .by_ref()
        .map(|packet| match packet {
            Ok(Packet::Json(payload)) => payload,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        packets.resyncs(),
        0,
        "every length prefix in the capture is exact"
    );
    assert_eq!(payloads.len(), 42);

    let messages: Vec<ServerMessage<'_>> = payloads
        .iter()
        .map(|payload| message::parse(payload).expect("every captured packet parses"))
        .collect();
    let mut kinds = BTreeMap::new();
    for message in &messages {
        *kinds.entry(message.method().to_owned()).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> = [
        ("timescale_update", 6),
        ("series_timeframe", 8),
        ("series_completed", 6),
        ("du", 5),
        ("study_completed", 5),
        ("symbol_resolved", 2),
        ("qsd", 5),
        ("quote_completed", 5),
    ]
    .into_iter()
    .map(|(kind, count)| (kind.to_owned(), count))
    .collect();
    assert_eq!(kinds, expected);

    // The first packet: a 284 774-byte timescale_update of 1-minute bars with volume.
    let ServerMessage::TimescaleUpdate(first) = &messages[0] else {
        panic!("{:?}", messages[0].method())
    };
    assert_eq!(payloads[0].len(), 284_774);
    assert_eq!(first.session, "cs_1lMtxZTkwtYN");
    let series = &first.series[0];
    assert_eq!(series.series_id, "sds_5");
    assert_eq!(
        series.bars[0],
        Bar {
            index: 0,
            time: 1_685_633_880.0,
            open: 33019.3,
            high: 33025.31,
            low: 33018.84,
            close: 33021.84,
            volume: Some(638_315.0)
        }
    );
    assert_eq!(
        series.bars[1],
        Bar {
            index: 1,
            time: 1_685_633_940.0,
            open: 33021.96,
            high: 33023.2,
            low: 33015.98,
            close: 33017.97,
            volume: Some(536_590.0)
        }
    );
    assert!(
        series
            .bars
            .windows(2)
            .all(|pair| pair[0].time < pair[1].time && pair[1].index == pair[0].index + 1)
    );

    // A forex-like series without volume: 5-value bars.
    let no_volume = messages
        .iter()
        .find_map(|message| match message {
            ServerMessage::TimescaleUpdate(update) if update.session == "cs_FgfPxXzCgyqG" => {
                Some(update)
            }
            _ => None,
        })
        .expect("the sds_2 series is in the capture");
    assert_eq!(
        no_volume.series[0].bars[0],
        Bar {
            index: 0,
            time: 1_685_632_200.0,
            open: 14324.2495,
            high: 14329.3185,
            low: 14321.9913,
            close: 14329.2387,
            volume: None
        }
    );

    // Every bar in the capture has a time, and every series its last bar close time.
    let bar_count: usize = messages
        .iter()
        .filter_map(|message| match message {
            ServerMessage::TimescaleUpdate(update) => Some(
                update
                    .series
                    .iter()
                    .map(|series| series.bars.len())
                    .sum::<usize>(),
            ),
            _ => None,
        })
        .sum();
    assert!(bar_count > 1_000, "{bar_count}");

    // Quotes: NDX reports 1e+100 as its volume, which means none.
    let ndx = messages
        .iter()
        .find_map(|message| match message {
            ServerMessage::QuoteData(quote) if quote.symbol == "NASDAQ:NDX" => Some(quote),
            _ => None,
        })
        .expect("NDX quote");
    assert_eq!(ndx.session, "qs_PL4Mnuk8pRGP");
    assert_eq!(ndx.values.volume, FieldUpdate::Cleared);
    assert_eq!(ndx.values.last_price, FieldUpdate::Set(14528.3605));
    assert_eq!(ndx.values.last_price_time, FieldUpdate::Set(1_686_427_872));
    let spx = messages
        .iter()
        .find_map(|message| match message {
            ServerMessage::QuoteData(quote) if quote.symbol == "SP:SPX" => Some(quote),
            _ => None,
        })
        .expect("SPX quote");
    assert_eq!(spx.values.volume, FieldUpdate::Set(2_109_000_000.0));
    assert_eq!(
        spx.values.description.value().map(|text| text.as_ref()),
        Some("S&P 500")
    );

    // series_completed carries the status of delayed markets.
    let statuses: Vec<&str> = messages
        .iter()
        .filter_map(|message| match message {
            ServerMessage::SeriesCompleted(completed) => Some(completed.status.as_ref()),
            _ => None,
        })
        .collect();
    assert!(
        statuses.contains(&"streaming") && statuses.contains(&"delayed_streaming_900"),
        "{statuses:?}"
    );
}

#[test]
fn qsd_corpus_decodes_every_line_without_errors() {
    let corpus = testdata("qsd-burst-synthetic.txt");
    let decoder = Decoder::new();
    let (mut lines, mut quotes, mut heartbeats) = (0, 0, 0);
    for line in corpus
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
    {
        lines += 1;
        let message = corpus.slice_ref(line);
        let mut packets = decoder.decode(&message);
        for packet in packets.by_ref() {
            match packet.expect("the corpus is well framed") {
                Packet::Heartbeat(beat) => {
                    assert!(beat.number().is_some());
                    heartbeats += 1;
                }
                Packet::Json(payload) => {
                    match message::parse(&payload).expect("every qsd parses") {
                        ServerMessage::QuoteData(quote) => {
                            assert_eq!(quote.session, "qs_a1b2c3d4e5f6");
                            assert!(
                                quote.values.other.is_empty(),
                                "only well-known fields: {:?}",
                                quote.values.other
                            );
                            quotes += 1;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                Packet::LegacyJson(_) => panic!("no legacy packets in the corpus"),
            }
        }
        assert_eq!(packets.resyncs(), 0);
    }
    assert_eq!(lines, 4_000);
    assert_eq!(quotes + heartbeats, 64_442);
    assert_eq!(quotes, 62_562);
}

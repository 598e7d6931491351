//! Any bytes as one WebSocket message: never panics, always progresses, payloads are valid
//! UTF-8 slices of the input, and re-framing what was decoded decodes to the same packets.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tickwire_core::codec::{self, Decoder, Packet};

fn payload_text(packet: &Packet) -> String {
    let bytes = match packet {
        Packet::Json(payload) => payload.to_vec(),
        Packet::Heartbeat(beat) => beat.payload().to_vec(),
        Packet::LegacyJson(json) => [b"~j~".as_slice(), json].concat(),
    };
    String::from_utf8(bytes).expect("decoded payloads are UTF-8")
}

fuzz_target!(|data: &[u8]| {
    let message = Bytes::copy_from_slice(data);
    let decoder = Decoder::with_max_packet_size(1 << 16);
    let results: Vec<_> = decoder.decode(&message).collect();
    assert!(results.len() <= data.len() + 1, "more items than bytes");
    let payloads: Vec<String> = results
        .iter()
        .filter_map(|result| result.as_ref().ok())
        .map(payload_text)
        .collect();
    if payloads.is_empty() {
        return;
    }
    let mut reframed = String::new();
    for payload in &payloads {
        codec::encode_into(payload, &mut reframed);
    }
    let reframed = Bytes::from(reframed);
    let again: Vec<String> = decoder
        .decode(&reframed)
        .map(|result| payload_text(&result.expect("re-framed packets decode")))
        .collect();
    assert_eq!(again, payloads);
});

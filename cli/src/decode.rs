//! `tickwire decode`: raw WebSocket message texts in, one JSON object per packet out.

use std::io::{self, BufRead, Write};

use crate::output::Object;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tickwire_core::codec::{Decoder, Packet};
use tickwire_core::message::{self, ChartUpdate, FieldUpdate, QuoteValues, ServerMessage};

/// Longest input line accepted; longer lines are reported and skipped without being buffered.
pub(crate) const MAX_LINE_BYTES: u64 = 64 * 1024 * 1024;

/// Decodes every line of `input` and writes one JSON object per packet to `output`.
///
/// Blank lines are skipped. Returns an error only when reading or writing fails.
pub(crate) fn run(
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    decoder: &Decoder,
) -> io::Result<()> {
    let mut line = Vec::new();
    let mut line_number: u64 = 0;
    loop {
        line.clear();
        line_number = line_number.saturating_add(1);
        let read = io::Read::take(&mut *input, MAX_LINE_BYTES).read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && read as u64 == MAX_LINE_BYTES {
            skip_rest_of_line(input)?;
            let reason = format!("line longer than {MAX_LINE_BYTES} bytes, skipped");
            write_object(output, error_object(line_number, &reason))?;
            continue;
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let message = Bytes::copy_from_slice(&line);
        for packet in decoder.decode(&message) {
            let object = match packet {
                Ok(packet) => packet_object(line_number, &packet),
                Err(error) => error_object(line_number, &error.to_string()),
            };
            write_object(output, object)?;
        }
    }
}

fn skip_rest_of_line(input: &mut dyn BufRead) -> io::Result<()> {
    loop {
        let buffer = input.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        match memchr_newline(buffer) {
            Some(position) => {
                input.consume(position.saturating_add(1));
                return Ok(());
            }
            None => {
                let length = buffer.len();
                input.consume(length);
            }
        }
    }
}

fn memchr_newline(buffer: &[u8]) -> Option<usize> {
    buffer.iter().position(|&byte| byte == b'\n')
}

fn write_object(output: &mut dyn Write, object: Object) -> io::Result<()> {
    serde_json::to_writer(&mut *output, &object)?;
    output.write_all(b"\n")
}

fn error_object(line: u64, reason: &str) -> Object {
    let mut object = Object::default();
    object.insert("kind", "error");
    object.insert("line", line);
    object.insert("reason", reason);
    object
}

fn packet_object(line: u64, packet: &Packet) -> Object {
    match packet {
        Packet::Heartbeat(beat) => {
            let mut object = Object::default();
            object.insert("kind", "heartbeat");
            object.insert("line", line);
            object.insert("number", beat.number());
            object.insert(
                "payload",
                String::from_utf8_lossy(beat.payload()).into_owned(),
            );
            object
        }
        Packet::Json(payload) => message_object(line, payload, false),
        Packet::LegacyJson(payload) => message_object(line, payload, true),
    }
}

fn message_object(line: u64, payload: &[u8], legacy: bool) -> Object {
    let parsed = match message::parse(payload) {
        Ok(parsed) => parsed,
        Err(error) => return error_object(line, &error.to_string()),
    };
    let mut object = Object::default();
    let kind = match &parsed {
        ServerMessage::Unknown { .. } => "unknown",
        known => known.method(),
    };
    object.insert("kind", kind);
    object.insert("line", line);
    if legacy {
        object.insert("legacy", true);
    }
    if let Some(session) = parsed.session() {
        object.insert("session", session);
    }
    describe(&parsed, &mut object);
    object
}

fn describe(parsed: &ServerMessage<'_>, object: &mut Object) {
    let mut put = |key: &str, value: Value| object.insert(key, value);
    match parsed {
        ServerMessage::Hello(hello) => {
            put("server_session", json!(hello.session_id));
            put("protocol", json!(hello.protocol));
            put("release", json!(hello.release));
            put("timestamp_ms", json!(hello.timestamp_ms));
        }
        ServerMessage::QuoteData(quote) => {
            put("symbol", json!(quote.symbol));
            put("status", json!("ok"));
            put("fields", quote_fields(&quote.values));
        }
        ServerMessage::QuoteError(error) => {
            put("symbol", json!(error.symbol));
            put("status", json!("error"));
            put("error", json!(error.message));
        }
        ServerMessage::QuoteCompleted { symbol, .. } => put("symbol", json!(symbol)),
        ServerMessage::SymbolResolved(resolved) => {
            put("symbol_id", json!(resolved.symbol_id));
            put(
                "name",
                json!(
                    resolved
                        .info
                        .pro_name
                        .as_ref()
                        .or(resolved.info.full_name.as_ref())
                ),
            );
            put("description", json!(resolved.info.description));
        }
        ServerMessage::SymbolError {
            symbol_id, reason, ..
        } => {
            put("symbol_id", json!(symbol_id));
            put("reason", json!(reason));
        }
        ServerMessage::SeriesLoading {
            series_id,
            turnaround,
            ..
        } => {
            put("series_id", json!(series_id));
            put("turnaround", json!(turnaround));
        }
        ServerMessage::SeriesTimeframe(timeframe) => {
            put("series_id", json!(timeframe.series_id));
            put("first_index", json!(timeframe.first_index));
            put("last_index", json!(timeframe.last_index));
            put("range", json!(timeframe.range));
        }
        ServerMessage::TimescaleUpdate(update) | ServerMessage::DataUpdate(update) => {
            chart_update(update, &mut put)
        }
        ServerMessage::SeriesCompleted(completed) => {
            put("series_id", json!(completed.series_id));
            put("status", json!(completed.status));
            put("data_completed", json!(completed.data_completed));
        }
        ServerMessage::SeriesError {
            series_id, reason, ..
        } => {
            put("series_id", json!(series_id));
            put("reason", json!(reason));
        }
        ServerMessage::StudyLoading {
            study_id,
            turnaround,
            ..
        }
        | ServerMessage::StudyCompleted {
            study_id,
            turnaround,
            ..
        } => {
            put("study_id", json!(study_id));
            put("turnaround", json!(turnaround));
        }
        ServerMessage::StudyError {
            study_id, reason, ..
        } => {
            put("study_id", json!(study_id));
            put("reason", json!(reason));
        }
        ServerMessage::CriticalError { name, detail, .. } => {
            put("name", json!(name));
            put("detail", json!(detail));
        }
        ServerMessage::ProtocolError { text } => put("reason", json!(text)),
        ServerMessage::Unknown { method, params } => {
            put("method", json!(method));
            let params = params.and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
            put("params", params.unwrap_or(Value::Null));
        }
    }
}

fn chart_update(update: &ChartUpdate<'_>, put: &mut impl FnMut(&str, Value)) {
    let bars: Vec<Value> = update
        .series
        .iter()
        .flat_map(|series| series.bars.iter())
        .map(|bar| json!([bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume]))
        .collect();
    let series: Vec<Value> = update
        .series
        .iter()
        .map(|series| json!({"id": series.series_id, "turnaround": series.turnaround, "bars": series.bars.len()}))
        .collect();
    let studies: Vec<Value> = update
        .studies
        .iter()
        .map(|study| json!({"id": study.study_id, "turnaround": study.turnaround, "rows": study.rows.len()}))
        .collect();
    put("bars", Value::Array(bars));
    put("series", Value::Array(series));
    put("studies", Value::Array(studies));
}

/// The delta as sent: wire names, nulls for cleared fields, unknown fields as they came.
fn quote_fields(values: &QuoteValues<'_>) -> Value {
    let mut fields = Map::new();
    let mut number = |name: &str, update: &FieldUpdate<f64>| match update {
        FieldUpdate::Unchanged => {}
        FieldUpdate::Cleared => {
            fields.insert(name.to_owned(), Value::Null);
        }
        FieldUpdate::Set(value) => {
            fields.insert(name.to_owned(), json!(value));
        }
    };
    number("lp", &values.last_price);
    number("ch", &values.change);
    number("chp", &values.change_percent);
    number("volume", &values.volume);
    number("bid", &values.bid);
    number("ask", &values.ask);
    number("bid_size", &values.bid_size);
    number("ask_size", &values.ask_size);
    number("open_price", &values.open_price);
    number("high_price", &values.high_price);
    number("low_price", &values.low_price);
    number("prev_close_price", &values.prev_close_price);
    match values.last_price_time {
        FieldUpdate::Unchanged => {}
        FieldUpdate::Cleared => {
            fields.insert("lp_time".into(), Value::Null);
        }
        FieldUpdate::Set(time) => {
            fields.insert("lp_time".into(), time.into());
        }
    }
    for (name, update) in [
        ("update_mode", &values.update_mode),
        ("current_session", &values.current_session),
        ("description", &values.description),
        ("currency_code", &values.currency_code),
    ] {
        match update {
            FieldUpdate::Unchanged => {}
            FieldUpdate::Cleared => {
                fields.insert(name.into(), Value::Null);
            }
            FieldUpdate::Set(text) => {
                fields.insert(name.into(), json!(text));
            }
        }
    }
    for (name, value) in &values.other {
        fields.insert(name.to_string(), value.clone());
    }
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_text(input: &str) -> Vec<Value> {
        let mut output = Vec::new();
        run(&mut input.as_bytes(), &mut output, &Decoder::new()).unwrap();
        String::from_utf8(output)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn prints_one_object_per_packet_and_goes_on_after_errors() {
        let input = concat!(
            "~m~4~m~~h~1~m~67~m~{\"m\":\"qsd\",\"p\":[\"qs_a\",{\"n\":\"FX:EURUSD\",\"s\":\"ok\",\"v\":{\"lp\":1.08}}]}\n",
            "\n",
            "~m~5~m~{bad}~m~40~m~{\"m\":\"quote_completed\",\"p\":[\"qs_a\",\"X\"]}\r\n",
            "~m~99~m~{}\n",
        );
        let objects = decode_text(input);
        assert_eq!(objects.len(), 5, "{objects:#?}");
        assert_eq!(
            objects[0],
            json!({"kind":"heartbeat","line":1,"number":1,"payload":"~h~1"})
        );
        assert_eq!(objects[1]["kind"], "qsd");
        assert_eq!(objects[1]["session"], "qs_a");
        assert_eq!(objects[1]["symbol"], "FX:EURUSD");
        assert_eq!(objects[1]["fields"], json!({"lp": 1.08}));
        assert_eq!(objects[2]["kind"], "error");
        assert_eq!(objects[2]["line"], 3);
        assert_eq!(objects[3]["kind"], "quote_completed");
        assert_eq!(objects[3]["symbol"], "X");
        assert_eq!(objects[4]["kind"], "error");
        assert_eq!(objects[4]["line"], 4);
    }

    #[test]
    fn bars_are_printed_as_arrays_with_null_volume() {
        let payload = r#"{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":3,"v":[1700000000.0,1.0,2.0,0.5,1.5]}],"t":"s1"}}]}"#;
        let objects = decode_text(&format!("~m~{}~m~{payload}\n", payload.len()));
        assert_eq!(objects[0]["kind"], "du");
        assert_eq!(
            objects[0]["bars"],
            json!([[1700000000.0, 1.0, 2.0, 0.5, 1.5, null]])
        );
    }

    #[test]
    fn unknown_methods_keep_their_params() {
        let payload = r#"{"m":"replay_point","p":["rs_a",1700000000]}"#;
        let objects = decode_text(&format!("~m~{}~m~{payload}\n", payload.len()));
        assert_eq!(
            objects[0],
            json!({"kind":"unknown","line":1,"method":"replay_point","params":["rs_a",1700000000]})
        );
    }
}

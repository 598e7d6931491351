//! Structure-aware parser fuzzing: a valid server message, mutated at the JSON level (values
//! replaced by other types, elements removed or duplicated, methods swapped), then parsed.
//! Checks: no panic; a parsed message's accessors work; and framing the payload then decoding
//! it gives back exactly the payload (decode(encode(x)) = x).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tickwire_core::codec::{Decoder, Packet, frame};
use tickwire_core::message;

const METHODS: &[&str] = &[
    "qsd",
    "du",
    "timescale_update",
    "quote_completed",
    "symbol_resolved",
    "symbol_error",
    "series_loading",
    "series_timeframe",
    "series_completed",
    "series_error",
    "study_loading",
    "study_completed",
    "study_error",
    "critical_error",
    "protocol_error",
    "replay_point",
];

fn templates() -> Vec<Value> {
    vec![
        json!({"m":"qsd","p":["qs_a",{"n":"NASDAQ:AAPL","s":"ok","v":{"lp":189.5,"ch":-1.2,"chp":-0.6,"volume":1e100,"lp_time":1700000000,"bid":189.4,"ask":189.6,"update_mode":"streaming","rch":null}}]}),
        json!({"m":"qsd","p":["qs_a",{"n":"X","s":"error","errmsg":"no_such_symbol","v":{}}]}),
        json!({"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":9,"v":[1700000000.0,1,2,0.5,1.5,10]}],"ns":{"d":"","indexes":"nochange"},"t":"s1","lbs":{"bar_close_time":1700000060}},"st1":{"st":[{"i":9,"v":[1700000000.0,1.25,null]}],"ns":{"d":"{}"}}}]}),
        json!({"m":"timescale_update","p":["cs_a",{"sds_1":{"node":"n","s":[{"i":0,"v":[1.0,1,2,0.5,1.5]},{"i":1,"v":[2.0,1,2,0.5,1.5,3]}],"t":"s1"}},{"index":1,"changes":[]}],"t":1,"t_ms":2}),
        json!({"m":"series_completed","p":["cs_a","sds_1","streaming","s1",{"rt_update_period":5,"data_completed":"end"}]}),
        json!({"m":"series_timeframe","p":["cs_a","sds_1","s1",1,2,"LASTSESSION",true]}),
        json!({"m":"symbol_resolved","p":["cs_a","sds_sym_1",{"name":"X","pricescale":100,"type":"stock"}]}),
        json!({"m":"study_error","p":["cs_a","st1","s1_st1","too many",{"x":1}]}),
        json!({"m":"critical_error","p":["cs_a","invalid parameters","detail"]}),
        json!({"m":"protocol_error","p":["bad auth token"]}),
        json!({"session_id":"x","timestamp":1,"timestampMs":1000,"protocol":"json"}),
    ]
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Replace { path: Vec<u8>, with: Scalar },
    Remove { path: Vec<u8> },
    Duplicate { path: Vec<u8> },
    Method(u8),
}

#[derive(Arbitrary, Debug)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    EmptyArray,
    EmptyObject,
}

impl Scalar {
    fn value(self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(flag) => json!(flag),
            Scalar::Int(number) => json!(number),
            Scalar::Float(number) => {
                serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number)
            }
            Scalar::Text(text) => json!(text),
            Scalar::EmptyArray => json!([]),
            Scalar::EmptyObject => json!({}),
        }
    }
}

/// The node a path of child choices leads to (each step picks a child modulo the count).
fn node<'a>(root: &'a mut Value, path: &[u8]) -> &'a mut Value {
    let mut current = root;
    for &step in path {
        let count = match &*current {
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            _ => 0,
        };
        if count == 0 {
            break;
        }
        let index = usize::from(step) % count;
        current = match current {
            Value::Array(items) => &mut items[index],
            Value::Object(map) => map.values_mut().nth(index).expect("index below len"),
            _ => unreachable!(),
        };
    }
    current
}

fn remove_child(parent: &mut Value, choice: u8) {
    match parent {
        Value::Array(items) if !items.is_empty() => {
            let index = usize::from(choice) % items.len();
            items.remove(index);
        }
        Value::Object(map) if !map.is_empty() => {
            let key = map
                .keys()
                .nth(usize::from(choice) % map.len())
                .cloned()
                .expect("index below len");
            map.remove(&key);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Unstructured::new(data);
    let mut templates = templates();
    let Ok(choice) = input.choose_index(templates.len()) else {
        return;
    };
    let mut message = templates.swap_remove(choice);
    let mutations: Vec<Mutation> = input.arbitrary().unwrap_or_default();
    for mutation in mutations.into_iter().take(8) {
        match mutation {
            Mutation::Replace { path, with } => *node(&mut message, &path) = with.value(),
            Mutation::Remove { path } => {
                let (last, parent) = path
                    .split_last()
                    .map_or((0, &path[..0]), |(last, rest)| (*last, rest));
                remove_child(node(&mut message, parent), last);
            }
            Mutation::Duplicate { path } => {
                if let Value::Array(items) = node(&mut message, &path) {
                    if let Some(first) = items.first().cloned() {
                        items.push(first);
                    }
                }
            }
            Mutation::Method(index) => {
                if let Some(object) = message.as_object_mut() {
                    object.insert(
                        "m".into(),
                        json!(METHODS[usize::from(index) % METHODS.len()]),
                    );
                }
            }
        }
    }
    let payload = serde_json::to_string(&message).expect("a Value serialises");
    if let Ok(parsed) = message::parse(payload.as_bytes()) {
        let _ = parsed.method().len();
        let _ = parsed.session().map(str::len);
    }
    // decode(encode(x)) = x, for any payload text.
    let framed = Bytes::from(frame(&payload));
    let packets: Vec<_> = Decoder::new().decode(&framed).collect();
    match packets.as_slice() {
        [Ok(Packet::Json(decoded))] => assert_eq!(&decoded[..], payload.as_bytes()),
        other => panic!("framing round trip failed: {other:?}"),
    }
});

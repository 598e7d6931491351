#!/usr/bin/env bash
# Seeds the fuzz corpora from ../shared/testdata (read in place, never copied into the repo)
# and from hand-written protocol examples. Idempotent; writes under fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")"
testdata=../../shared/testdata
python3 - "$testdata" <<'PY'
import hashlib, os, re, sys
testdata = sys.argv[1]
def put(target, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)
lines = open(f"{testdata}/qsd-burst-synthetic.txt", "rb").read().split(b"\n")
payloads = []
for line in lines[:300]:
    if line:
        put("codec", line)
        for length, rest in re.findall(rb"~m~(\d+)~m~", line) and [(m.group(1), m.end()) for m in re.finditer(rb"~m~(\d+)~m~", line)]:
            payloads.append(line[rest:rest + int(length)])
capture = open(f"{testdata}/tradingview-rs-socket-messages-2023.txt", "rb").read()
position = 0
while position < len(capture):
    match = re.match(rb"~m~(\d+)~m~", capture[position:])
    if not match:
        break
    start = position + match.end()
    end = start + int(match.group(1))
    payload = capture[start:end]
    # Keep seeds small: long chart batches are cut to their first few kilobytes.
    payloads.append(payload if len(payload) < 4096 else payload[:4096])
    put("codec", capture[position:min(end, position + 4096)])
    position = end
extra = [
    b'{"session_id":"x","timestamp":1,"timestampMs":1000,"protocol":"json"}',
    b'{"m":"qsd","p":["qs_a",{"n":"X","s":"error","errmsg":"no_such_symbol","v":{}}]}',
    b'{"m":"symbol_error","p":["cs_a","sds_sym_1","invalid symbol"]}',
    b'{"m":"series_error","p":["cs_a","sds_1","s1","seconds_not_entitled"]}',
    b'{"m":"critical_error","p":["cs_a","invalid_parameters","quote_add_symbols"]}',
    b'{"m":"protocol_error","p":["bad auth token"]}',
    b'{"m":"du","p":["cs_a",{"sds_1":{"s":[{"i":9,"v":[1700000000.0,1,2,0.5,1.5]}],"ns":{"d":"","indexes":"nochange"},"t":"s1","lbs":{"bar_close_time":1700000060}}}]}',
    b'{"m":"study_error","p":["cs_a","st1","s1_st1","too many studies",{}]}',
]
for payload in payloads[:400] + extra:
    put("parse", payload)
    put("parse_structured", payload)
    put("client", b"\x00" + payload)
# HTTP answers as the endpoints give them (PROTOCOL.md section 9 shapes).
for answer in [
    b'{"symbols_remaining":0,"symbols":[{"symbol":"AAPL","description":"<em>Apple</em> Inc.","type":"stock","exchange":"NASDAQ","currency_code":"USD"},{"symbol":"EURUSD","exchange":"FXCM","prefix":"FX","type":"forex"}]}',
    b'[{"symbol":"BTCUSDT","exchange":"Binance","prefix":"BINANCE","type":"crypto"}]',
    b'{"totalCount":2,"data":[{"s":"NASDAQ:AAPL","d":[190.1,1.2,0.6,1000,"delayed_streaming_900","Apple Inc."]},{"s":"X:Y","d":[null,"x",null]}]}',
    b'<script>window.initData = {"id":7}; var user = {"id":1,"username":"demo","auth_token":"eyJhbGciOiJSUzUxMiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2ln","pro_plan":"pro_premium"};</script>',
    b'eyJhbGciOiJSUzUxMiJ9.eyJ1c2VyX2lkIjoxLCJleHAiOjE3MDAwMDAwMDAsImlhdCI6MTY5OTk4NTYwMH0.c2ln',
    b'sessionid=abc; sessionid_sign=v1:xyz; device_t=d; Path=/; Max-Age=100; HttpOnly; Secure',
    b'120',
    b'Wed, 21 Oct 2015 07:28:00 GMT',
]:
    put("http", answer)
PY
# The hub target's input is a schedule of operations, which libFuzzer builds up from nothing.
mkdir -p corpus/hub corpus/cluster corpus/node corpus/query
# The node target's schedules are seeded with a few that reach its deep states (leading and
# carrying a feed, following a stream, a store that flaps, a full publish window), which
# libFuzzer rarely finds from nothing. They are written in the `arbitrary` encoding of its
# `Schedule`; the `Op` variants' order is read from the target, their fields are spelled out
# here (keep them in step with fuzz_targets/node.rs).
python3 - <<'PY'
import hashlib, os, re, struct
source = open("fuzz_targets/node.rs").read()
block = source[source.index("enum Op {"):]
block = block[:block.index("\n}\n")]
variants = re.findall(r"^    ([A-Z][A-Za-z]*)", block, re.M)
def variant(index, count):
    # derive(Arbitrary) picks variant (u32 * count) >> 32.
    value = -(-(index << 32) // count)
    assert (value * count) >> 32 == index
    return struct.pack("<I", value)
u8 = lambda value: bytes([value])
u16 = lambda value: struct.pack("<H", value)
i16 = lambda value: struct.pack("<h", value)
none = b"\x00"
some = lambda encoded: b"\x01" + encoded
def op(name, *fields):
    # Each element of the schedule's last field (taken to the end) follows a "more" byte.
    return b"\x01" + variant(variants.index(name), len(variants)) + b"".join(fields)
STREAM = ["Quote", "Bar", "Status", "SymbolError", "SeriesError", "Snapshot"]
def stream(leader, kind, *fields, mutation=none):
    return op("Stream", u8(leader), variant(STREAM.index(kind), len(STREAM)), *fields, mutation)
def schedule(max_publishes, linger, batched, bars, ops):
    return u8(max_publishes) + u8(linger) + u8(batched) + u8(bars) + none + b"".join(ops) + b"\x00"
LIVE = 2  # State::ALL[2]
LEAD, HELD = 0, 3  # Settle choices: the lease acquired and publishes accepted, or held and fenced
def quote(symbol, price):
    return op("FeedQuote", u8(symbol), u8(0), some(i16(price)), some(u8(1)))
seeds = {
    "leader-carrying": schedule(1, 1, 0, 1, [
        op("Settle", u8(LEAD)), op("Connect"), op("Subscribe", u8(0), u8(0), u8(0)),
        op("Want", u8(1), u8(0b110), u16(15000)), op("Timeout"), op("FeedState", u8(LIVE)),
        quote(0, 100), quote(1, 200), op("FeedBar", u8(0), u8(0), u8(1), i16(101), u8(0)),
        op("Settle", u8(LEAD)), op("Written", u8(0), u8(2)), op("Timeout"), quote(2, 300),
        op("Advance", u16(2000), u8(1)), op("Settle", u8(LEAD)), op("FeedQuoteError", u8(1)),
        op("FeedSeriesError", u8(0), u8(0)), op("Want", u8(1), u8(0b11000), u16(15000)),
        op("Timeout"), op("Settle", u8(LEAD)), op("Timeout"),
    ]),
    "follower": schedule(3, 0, 0, 1, [
        op("Settle", u8(HELD)), op("Connect"), op("Subscribe", u8(0), u8(0), u8(0)),
        op("Subscribe", u8(0), u8(1), u8(0)), op("Settle", u8(HELD)),
        stream(0, "Quote", u8(0), i16(100), some(u8(1))), stream(0, "Quote", u8(0), i16(101), none),
        stream(0, "Status", u8(LIVE)), stream(0, "Bar", u8(0), u8(1), i16(100), u8(0)),
        op("Written", u8(0), u8(3)), stream(1, "Quote", u8(1), i16(50), none),
        op("NewEpoch", u8(0), u8(9), u8(1)), stream(0, "Quote", u8(0), i16(99), none),
        stream(0, "Snapshot", u8(0)), op("Settle", u8(HELD)), op("Timeout"),
        op("Advance", u16(5000), u8(1)), stream(0, "Quote", u8(1), i16(7), none, mutation=some(variant(3, 4) + u16(1))),
        op("Timeout"),
    ]),
    "store-flaps-while-leading": schedule(2, 1, 1, 0, [
        op("Settle", u8(LEAD)), op("Want", u8(1), u8(0b111), u16(15000)), op("Timeout"),
        op("FeedState", u8(LIVE)), quote(0, 1), quote(1, 2), op("StoreFailed"), quote(0, 3),
        op("Timeout"), op("Timeout"), op("Settle", u8(LEAD)), quote(1, 4), op("Settle", u8(LEAD)),
        stream(2, "Status", u8(LIVE)), op("Timeout"), op("Settle", u8(LEAD)),
    ]),
    "publish-window-full": schedule(0, 0, 0, 1, [
        op("Settle", u8(LEAD)), op("Want", u8(1), u8(0b111), u16(15000)), op("Timeout"),
        op("Settle", u8(LEAD)), op("FeedState", u8(LIVE)), quote(0, 1), quote(1, 2), quote(2, 3),
        quote(0, 4), quote(1, 5), op("Settle", u8(LEAD)), quote(2, 6), op("Timeout"),
        op("Settle", u8(HELD)), op("Timeout"),
    ]),
}
for data in seeds.values():
    with open(f"corpus/node/{hashlib.sha1(data).hexdigest()}", "wb") as f:
        f.write(data)
PY
echo "corpora: $(ls corpus/codec | wc -l) codec, $(ls corpus/parse | wc -l) parse"

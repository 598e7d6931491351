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
mkdir -p corpus/hub corpus/cluster
echo "corpora: $(ls corpus/codec | wc -l) codec, $(ls corpus/parse | wc -l) parse"

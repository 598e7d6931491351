//! Instruction counts of the hot paths, measured by callgrind: numbers that a reader on another
//! machine reproduces within a few per cent, where times vary by 2× and more.
//!
//! Run: `cargo bench -p tickwire-core --bench instructions` (needs `valgrind` on the `PATH`;
//! Debian's package is enough). Names after `--` select workloads, e.g. `-- client hub`.
//!
//! The bench binary re-runs itself under `valgrind --tool=callgrind` once per workload, with
//! collection switched on only inside that workload's measured function (`--toggle-collect`),
//! so setup, corpus loading and warm-up are not counted. Each workload runs one pass unmeasured
//! first (queues reach their capacity, quotes their first values) and then one measured pass;
//! the instruction count of that pass is printed per byte of input and per element.
//!
//! - `framing`, `framing+parse`: the qsd corpus (`../shared/testdata/qsd-burst-synthetic.txt`,
//!   one WebSocket message per line) split into packets, then also every JSON packet parsed
//!   into a typed `ServerMessage`. Elements: all packets, then JSON (qsd) packets.
//! - `capture framing+parse`: the real 2023 capture, one message, big chart batches.
//! - `client`: the qsd corpus through a live `Client` subscribed to every symbol, every output
//!   drained (as the `client` bench). Elements: qsd packets, each one quote event.
//! - `hub`: one round of the `hub` bench's fan-out (100 quote updates to 1 000 connections,
//!   frames reported written). Elements: frames delivered.
//!
//! Under `cargo test --benches` (no `--bench` argument) every workload runs once natively as
//! a smoke test and nothing is measured.

#[path = "fixtures/corpus.rs"]
mod corpus;
#[path = "fixtures/hub.rs"]
mod hub_fixture;
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use tickwire_core::codec::Decoder;

/// What one measured pass went over.
struct Work {
    bytes: u64,
    elements: u64,
}

/// The workloads, by the name given on the command line.
const WORKLOADS: &[&str] = &[
    "framing",
    "framing+parse",
    "capture framing+parse",
    "client",
    "hub",
];

/// The function whose calls callgrind counts for each workload.
fn measured_function(name: &str) -> &'static str {
    match name {
        "framing" => "measured_framing",
        "framing+parse" | "capture framing+parse" => "measured_framing_and_parse",
        "client" => "measured_client",
        "hub" => "measured_hub",
        _ => unreachable!("unknown workload {name}"),
    }
}

// Each workload's pass is one function, called once unmeasured through `warm` and once through
// its `measured_*` wrapper, the only frame in which callgrind counts (it counts every call).
// Each wrapper first passes its own name to `black_box`, so that no wrapper has the same code
// as an instance of `warm` and the compiler cannot fold the two into one function.

#[inline(never)]
fn warm<T>(pass: impl FnOnce() -> T) -> T {
    pass()
}

#[inline(never)]
fn measured_framing(decoder: &Decoder, messages: &[Bytes]) -> u64 {
    black_box("measured_framing");
    corpus::frame_all(decoder, messages)
}

#[inline(never)]
fn measured_framing_and_parse(decoder: &Decoder, messages: &[Bytes]) -> u64 {
    black_box("measured_framing_and_parse");
    corpus::frame_and_parse_all(decoder, messages)
}

#[inline(never)]
fn measured_client(corpus: &mut support::LiveCorpus) -> u64 {
    black_box("measured_client");
    support::feed(corpus) as u64
}

#[inline(never)]
fn measured_hub(fixture: &mut hub_fixture::Fixture) -> u64 {
    black_box("measured_hub");
    fixture.round(true)
}

fn total_bytes(messages: &[Bytes]) -> u64 {
    messages.iter().map(|message| message.len() as u64).sum()
}

/// Sets up `name`, runs one pass unmeasured and one through its measured function.
fn run(name: &str) -> Work {
    let decoder = Decoder::new();
    match name {
        "framing" | "framing+parse" | "capture framing+parse" => {
            let messages = if name.starts_with("capture") {
                vec![support::testdata("tradingview-rs-socket-messages-2023.txt")]
            } else {
                corpus::lines(&support::testdata("qsd-burst-synthetic.txt"))
            };
            let elements = if name == "framing" {
                warm(|| corpus::frame_all(&decoder, &messages));
                measured_framing(&decoder, black_box(&messages))
            } else {
                warm(|| corpus::frame_and_parse_all(&decoder, &messages));
                measured_framing_and_parse(&decoder, black_box(&messages))
            };
            Work {
                bytes: total_bytes(&messages),
                elements,
            }
        }
        "client" => {
            let mut corpus = support::live_corpus();
            let quotes = warm(|| support::feed(&mut corpus)) as u64;
            assert_eq!(quotes, corpus.qsd_packets as u64);
            let quotes = measured_client(black_box(&mut corpus));
            Work {
                bytes: total_bytes(&corpus.messages),
                elements: quotes,
            }
        }
        "hub" => {
            let mut fixture = hub_fixture::Fixture::new();
            warm(|| fixture.round(true));
            Work {
                bytes: 0,
                elements: measured_hub(black_box(&mut fixture)),
            }
        }
        _ => panic!("unknown workload {name:?}; known: {WORKLOADS:?}"),
    }
}

/// Runs `name` in a child process under callgrind; returns the instructions counted and the work.
fn measure(name: &str, out_dir: &std::path::Path) -> (u64, Work) {
    let out_file = out_dir.join(format!("callgrind.{}.out", name.replace([' ', '+'], "_")));
    let exe = std::env::current_exe().expect("own path");
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(format!("--toggle-collect=*{}*", measured_function(name)))
        .arg(&exe)
        .arg("--child")
        .arg(name)
        .output()
        .unwrap_or_else(|error| panic!("cannot run valgrind (is it installed?): {error}"));
    assert!(
        output.status.success(),
        "valgrind failed for {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    let field = |key: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("child printed no {key}: {report}"))
    };
    let work = Work {
        bytes: field("bytes="),
        elements: field("elements="),
    };
    let profile = std::fs::read_to_string(&out_file).expect("callgrind output");
    let instructions = profile
        .lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .or_else(|| {
            profile
                .lines()
                .find_map(|line| line.strip_prefix("summary:"))
        })
        .and_then(|counts| counts.split_whitespace().next()?.parse().ok())
        .expect("callgrind totals");
    (instructions, work)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(position) = args.iter().position(|arg| arg == "--child") {
        let name = &args[position + 1];
        let work = run(name);
        println!("bytes={} elements={}", work.bytes, work.elements);
        return;
    }
    let selected: Vec<&str> = WORKLOADS
        .iter()
        .copied()
        .filter(|name| {
            let filters: Vec<&String> = args.iter().filter(|arg| !arg.starts_with("--")).collect();
            filters.is_empty() || filters.iter().any(|filter| name == filter)
        })
        .collect();
    if !args.iter().any(|arg| arg == "--bench") {
        // `cargo test --benches`: a quick native run of each workload, nothing measured.
        for name in selected {
            let work = run(name);
            println!(
                "{name}: {} {}, smoke run only",
                work.elements,
                elements(name)
            );
        }
        return;
    }
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("callgrind");
    std::fs::create_dir_all(&out_dir).expect("output directory");
    println!(
        "{:<24} {:>14} {:>9} {:>12}  of",
        "workload", "instructions", "per byte", "per element"
    );
    for name in selected {
        let (instructions, work) = measure(name, &out_dir);
        let element = elements(name);
        let per_byte = if work.bytes == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}", instructions as f64 / work.bytes as f64)
        };
        println!(
            "{:<24} {:>14} {:>9} {:>12.1}  {} {element}, {} bytes",
            name,
            instructions,
            per_byte,
            instructions as f64 / work.elements as f64,
            work.elements,
            work.bytes,
        );
    }
    println!("callgrind profiles: {}", out_dir.display());
}

/// The elements each workload counts, for the table.
fn elements(name: &str) -> &'static str {
    match name {
        "framing" => "packets",
        "framing+parse" | "capture framing+parse" => "JSON packets",
        "client" => "quotes",
        _ => "deliveries",
    }
}

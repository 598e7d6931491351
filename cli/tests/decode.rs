//! `tickwire decode` as a user runs it: the real binary, real files and pipes.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/tradingview-rs-socket-messages-2023.txt"
);

fn tickwire() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickwire"))
}

fn objects(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8(stdout.to_vec())
        .expect("output is UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}")))
        .collect()
}

#[test]
fn decodes_the_real_capture_from_a_file() {
    let output = tickwire().args(["decode", CAPTURE]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = objects(&output.stdout);
    assert_eq!(objects.len(), 42);
    let count = |kind: &str| {
        objects
            .iter()
            .filter(|object| object["kind"] == kind)
            .count()
    };
    assert_eq!(count("timescale_update"), 6);
    assert_eq!(count("qsd"), 5);
    assert_eq!(count("error"), 0);
    assert_eq!(objects[0]["session"], "cs_1lMtxZTkwtYN");
    assert_eq!(
        objects[0]["bars"][0],
        serde_json::json!([
            1685633880.0,
            33019.3,
            33025.31,
            33018.84,
            33021.84,
            638315.0
        ])
    );
    let ndx = objects
        .iter()
        .find(|object| object["symbol"] == "NASDAQ:NDX" && object["kind"] == "qsd")
        .unwrap();
    assert_eq!(ndx["fields"]["lp"], 14528.3605);
    assert_eq!(ndx["fields"]["volume"], Value::Null);
}

#[test]
fn reads_standard_input_and_reports_bad_packets_without_stopping() {
    let mut child = tickwire()
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = "~m~5~m~~h~12\ngarbage\n~m~9999~m~{}\n~m~7~m~{\"m\":1}~m~29~m~{\"m\":\"protocol_error\",\"p\":[]}\n\u{0}\u{ff}\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let objects = objects(&output.stdout);
    let kinds: Vec<&str> = objects
        .iter()
        .map(|object| object["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["heartbeat", "error", "error", "error", "error", "error"]
    );
    assert_eq!(objects[0]["number"], 12);
    assert_eq!(objects[1]["line"], 2);
    assert!(
        objects[2]["reason"]
            .as_str()
            .unwrap()
            .contains("runs past the end")
    );
    assert!(
        objects[4]["reason"]
            .as_str()
            .unwrap()
            .contains("protocol_error: missing error text")
    );
    assert_eq!(objects[5]["line"], 5);
}

#[test]
fn missing_file_is_one_clear_line_and_a_failure() {
    let output = tickwire()
        .args(["decode", "/nonexistent/capture.txt"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("tickwire: cannot open /nonexistent/capture.txt"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_fail_with_usage() {
    let output = tickwire()
        .args(["decode", "--max-packet-size", "lots"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'lots'"));
    let help = tickwire().args(["decode", "--help"]).output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("one JSON object per packet"));
}

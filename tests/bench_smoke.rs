//! The benchmark tool is not a test, but it must keep working: run every
//! scenario once with tiny sizes against the debug server.

mod common;

use std::process::Command;

#[test]
fn every_benchmark_scenario_runs() {
    let output = Command::new(env!("CARGO_BIN_EXE_replication-bench"))
        .args([
            "--quick",
            "--server",
            env!("CARGO_BIN_EXE_replication-serve"),
        ])
        .args(["--port", &common::free_base_port().to_string()])
        .output()
        .expect("run replication-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for measure in [
        "late join",
        "+20 ms round trip",
        "bytes from the server to the joiner",
        "one stream, bare loopback TCP: those bytes",
        "late join's time (DATABLOCKS) / one stream's",
        "fan-out",
        "libzmq ceiling",
        "bare TCP relay",
        "ours / relay",
        "latency p99",
        "p99 ours / libzmq ceiling's",
        "one-value patch",
        "idle",
        "stalled",
        "recorded, normal",
        "recorded, strict",
        "initial upload of",
        "late join of",
        "UPDATE of",
        "dd bs=1M",
        "Rust client",
        "late join's throughput / one stream's",
        "took from this machine",
    ] {
        assert!(stdout.contains(measure), "no {measure:?} row:\n{stdout}");
    }
    // Nothing may be lost even in the smoke run.
    for line in stdout
        .lines()
        .filter(|l| l.contains("lost") || l.contains("missing"))
    {
        assert!(line.trim_end().ends_with("| 0 |"), "{line}");
    }
}

//! `bora bench` end to end with tiny sizes: it runs against the local broker
//! (in its own vhost), exits 0, and its last line is the JSON report with
//! every key and sane values. No timing is asserted.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

#[test]
fn bench_prints_a_sane_json_line() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args([
        "bench",
        "--tasks",
        "200",
        "--servers",
        "4",
        "--chain",
        "20",
        "--json-only",
    ]);
    if let Ok(base) = std::env::var("BORA_TEST_AMQP") {
        cmd.env("BORA__AMQP__URL", format!("{base}/%2f"));
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("bora runs");
    let pid = child.id();
    // A watchdog so a hung bench fails the test instead of stalling the suite.
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(180));
        // SAFETY: kill(2) on our own child's pid; harmless if it already exited.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGINT);
        }
    });
    let out = child.wait_with_output().expect("bora bench finishes");
    drop(watchdog);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bora bench failed: {stdout}");
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let j: Value = serde_json::from_str(line).expect("valid JSON");
    for key in [
        "throughput_tps",
        "raw_throughput_tps",
        "throughput_ratio",
        "chain_link_p50_us",
        "chain_link_p99_us",
        "raw_rtt_p50_us",
        "chain_ratio",
    ] {
        let v = j[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing or not a number: {j}"));
        assert!(v > 0.0 && v.is_finite(), "{key} = {v}: {j}");
    }
    assert_eq!(j["tasks"], 200, "{j}");
    assert_eq!(j["servers"], 4, "{j}");
    assert!(
        j["chain_link_p99_us"].as_f64() >= j["chain_link_p50_us"].as_f64(),
        "{j}"
    );
}

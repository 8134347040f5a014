//! `bora bench` end to end with tiny sizes: it runs against the local broker
//! (in its own vhost), exits 0, and its last line is the JSON report with
//! every key and sane values. No timing is asserted. With
//! `BORA_TEST_STORE=postgres` the bench runs on PostgreSQL
//! (`--store-url` = the test server): it must report the database it made
//! for itself, and that database must be gone afterwards.

#[path = "../common/store.rs"]
mod store;

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
        "--dag-tasks",
        "100",
        "--json-only",
    ]);
    let pg = store::postgres_selected().then(store::pg_admin_url);
    if let Some(url) = &pg {
        cmd.args(["--store-url", url]);
    }
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
        "chain_refs_link_p50_us",
        "chain_refs_ratio",
        // Of the dispatcher process, apart from the bench's own.
        "dispatcher_rss_mb",
        "dispatcher_peak_rss_mb",
        "dispatcher_cpu_us_per_task",
        "workers_cpu_us_per_task",
        // The test broker runs on this machine.
        "broker_cpu_us_per_task",
        "raw_broker_cpu_us_per_task",
        "dag_create_s",
        "dag_drain_s",
        "dag_drain_tps",
        "dag_rss_mb",
        "dag_peak_rss_mb",
    ] {
        let v = j[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing or not a number: {j}"));
        assert!(v > 0.0 && v.is_finite(), "{key} = {v}: {j}");
    }
    assert_eq!(j["tasks"], 200, "{j}");
    assert_eq!(j["servers"], 4, "{j}");
    assert_eq!(j["dag_tasks"], 100, "{j}");
    assert!(
        j["dispatcher_peak_rss_mb"].as_f64() >= j["dispatcher_rss_mb"].as_f64(),
        "{j}"
    );
    assert!(
        j["chain_link_p99_us"].as_f64() >= j["chain_link_p50_us"].as_f64(),
        "{j}"
    );
    match &pg {
        None => {
            assert_eq!(j["store"], "sqlite", "{j}");
            assert!(j.get("store_database").is_none(), "{j}");
            // SQLite works inside the dispatcher: no server to measure.
            assert!(j["database_cpu_us_per_task"].is_null(), "{j}");
        }
        Some(url) => {
            assert_eq!(j["store"], "postgres", "{j}");
            let db = j["store_database"]
                .as_str()
                .unwrap_or_else(|| panic!("no store_database: {j}"));
            assert!(db.starts_with("bora_bench_"), "{j}");
            // The server runs on this machine (a short run may round to 0).
            assert!(j["database_cpu_us_per_task"].is_u64(), "{j}");
            assert!(!database_exists(url, db), "the bench left {db} behind");
        }
    }
}

/// Whether the PostgreSQL server of `url` has a database `name`.
fn database_exists(url: &str, name: &str) -> bool {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        n > 0
    })
}

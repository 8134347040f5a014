//! Logging: the one tracing subscriber of each process.
//!
//! Human-readable lines by default, JSON with `log.format = "json"` (or
//! `--log-format json`). `RUST_LOG` overrides `log.level`. Spans carry
//! `workflow_id`, `task_id`, `server_id` and `attempt`; input values are never
//! logged anywhere (Heat passes credentials as inputs).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it twice is harmless (the second
/// call does nothing), which keeps tests that start several apps simple.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Buckets (seconds) of bora's latency histograms: from a millisecond to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide Prometheus recorder, installed on first use. Every
/// `metrics::counter!` in bora lands here; `GET /metrics` renders it.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::PrometheusBuilder;
            // Only fails for an empty bucket list; fall back to summaries then.
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; bora installs none.
            let _ = metrics::set_global_recorder(recorder);
            describe_metrics();
            handle
        })
        .clone()
}

/// Help texts, and a zero for counters that would otherwise appear only
/// after their first event (so dashboards and alerts see them from the start).
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "bora_tasks",
        "Tasks in the store by state (computed at scrape)"
    );
    describe_gauge!(
        "bora_servers_online",
        "Servers whose worker sent a heartbeat within dispatch.heartbeat_timeout_s (computed at scrape)"
    );
    describe_counter!(
        "bora_task_transitions_total",
        "Task state changes committed, by the state entered (creation enters waiting)"
    );
    describe_histogram!(
        "bora_publish_latency_seconds",
        metrics::Unit::Seconds,
        "From the commit that queued a task or cancel message to the broker's confirm"
    );
    describe_histogram!(
        "bora_result_to_release_seconds",
        metrics::Unit::Seconds,
        "From taking a result off the reply queue to the commit that recorded it and released its dependents"
    );
    describe_counter!(
        "bora_results_rejected_total",
        "Replies dropped without a state change, by reason"
    );
    describe_counter!(
        "bora_broker_reconnects_total",
        "Broker connections re-established after a loss, by component"
    );
    describe_counter!(
        "bora_messages_published_total",
        "Messages confirmed by the broker"
    );
    describe_counter!("bora_results_recorded_total", "Final results recorded");
    describe_counter!("bora_heartbeats_total", "Heartbeat replies recorded");
    for component in ["relay", "replies"] {
        metrics::counter!("bora_broker_reconnects_total", "component" => component).absolute(0);
    }
    metrics::counter!("bora_messages_published_total").absolute(0);
    metrics::counter!("bora_results_recorded_total").absolute(0);
}

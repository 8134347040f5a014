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

/// The process-wide Prometheus recorder, installed on first use. Every
/// `metrics::counter!` in bora lands here; `GET /metrics` renders it.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; bora installs none.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

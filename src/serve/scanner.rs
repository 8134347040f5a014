//! The timeout scanner: once a second, ends attempts whose worker went
//! silent (`dispatch.heartbeat_timeout_s`) and attempts with no result
//! within their `timeout_s` of publish, so no task waits forever on a worker
//! that died after acking (bora workers ack at start, oslo servers on
//! receipt).
//!
//! Silence only counts once it could have been heard: the scanner judges
//! nothing until the result consumer has been consuming for
//! `heartbeat_timeout_s` without a break (after a dispatcher restart or a
//! lost broker connection, the heartbeats and results sent meanwhile are in
//! `reply_bora`, and the workers that sent them are not lost), and judges
//! time only up to what the consumer has heard: the stamp of the newest
//! probe it recorded (`serve::probe`), not the clock. A consumer behind a
//! flood of replies or a slow store therefore never makes a live worker
//! look silent. While the reply queue refuses probes (full, see
//! `amqp.reply_queue_max_bytes`), and for `heartbeat_timeout_s` after, it
//! may have refused heartbeats too: no silence counts then.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::error;

use super::replies::Listening;
use crate::app::App;
use crate::app::now_us;
use crate::config::Settings;

pub async fn run(
    app: App,
    settings: Arc<Settings>,
    listening: Listening,
    shutdown: CancellationToken,
) {
    let heartbeat_timeout = settings.dispatch.heartbeat_timeout_s;
    // The worker kills a task at timeout_s after it started and reports; give
    // that report time to arrive before the dispatcher calls it lost.
    let grace = heartbeat_timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let window = settings.dispatch.heartbeat_timeout_us();
        let now = now_us();
        // Not consuming, or not for long enough to have heard a heartbeat.
        if listening.since().is_none_or(|t| now - t < window) {
            continue;
        }
        // Heard up to the newest recorded probe (and up to a probe interval
        // after it: the next probe was not sent yet).
        let Some(heard) = listening.heard_until() else {
            continue;
        };
        let lag = (now - heard).max(0);
        metrics::gauge!("bora_reply_lag_seconds").set(lag as f64 / 1e6);
        if listening.refused_at().is_some_and(|t| now - t < window) {
            continue;
        }
        let interval = i64::try_from(super::probe::PROBE_INTERVAL.as_micros()).unwrap_or(i64::MAX);
        let heard_until = now.min(heard.saturating_add(interval));
        match app.scan(heard_until, heartbeat_timeout, grace).await {
            Ok(r) => {
                metrics::counter!("bora_attempts_lost_total").increment(r.lost as u64);
                metrics::counter!("bora_attempts_expired_total").increment(r.expired as u64);
            }
            Err(e) => error!(error = %e, "timeout scan failed; retrying"),
        }
    }
}

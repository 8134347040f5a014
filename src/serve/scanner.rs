//! The timeout scanner: once a second, ends attempts whose worker went
//! silent (`dispatch.heartbeat_timeout_s`) and attempts with no result
//! within their `timeout_s` of publish, so no task waits forever on a worker
//! that died after acking (bora workers ack at start, oslo servers on
//! receipt).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::Settings;
use crate::tracker::Tracker;

pub async fn run(tracker: Tracker, settings: Arc<Settings>, shutdown: CancellationToken) {
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
        match tracker.scan(heartbeat_timeout, grace).await {
            Ok(r) => {
                metrics::counter!("bora_attempts_lost_total").increment(r.lost as u64);
                metrics::counter!("bora_attempts_expired_total").increment(r.expired as u64);
            }
            Err(e) => error!(error = %e, "timeout scan failed; retrying"),
        }
    }
}

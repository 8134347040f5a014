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
//! `amqp.reply_queue_max_bytes`) it may refuse heartbeats too: no silence
//! counts until the consumer has heard `heartbeat_timeout_s` of probes sent
//! after the last refusal.

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
        let heard = listening.heard_until();
        if let Some(heard) = heard {
            let lag = (now - heard).max(0);
            metrics::gauge!("bora_reply_lag_seconds").set(lag as f64 / 1e6);
        }
        let Some(heard_until) = judged_until(
            now,
            window,
            listening.since(),
            heard,
            listening.refused_at(),
        ) else {
            continue;
        };
        match app.scan(heard_until, heartbeat_timeout, grace).await {
            Ok(r) => {
                metrics::counter!("bora_attempts_lost_total").increment(r.lost as u64);
                metrics::counter!("bora_attempts_expired_total").increment(r.expired as u64);
            }
            Err(e) => error!(error = %e, "timeout scan failed; retrying"),
        }
    }
}

/// Up to when silence may be judged at `now` (all in µs of the
/// dispatcher's clock), or `None` to judge nothing yet: the consumer has
/// not been consuming for a `window` (the heartbeat timeout) without a
/// break, or has heard no probe, or a probe was refused within a `window`
/// (and a probe interval) of what it has heard. The last is measured
/// against what was heard, not the clock: a consumer behind a flood
/// records, after the refusals ended, the replies sent while they went on,
/// and a heartbeat refused then is missing from them.
fn judged_until(
    now: i64,
    window: i64,
    since: Option<i64>,
    heard: Option<i64>,
    refused_at: Option<i64>,
) -> Option<i64> {
    if since.is_none_or(|t| now - t < window) {
        return None;
    }
    let heard = heard?;
    let interval = i64::try_from(super::probe::PROBE_INTERVAL.as_micros()).unwrap_or(i64::MAX);
    // Heard up to the newest recorded probe, and up to a probe interval
    // after it: the next probe was not sent yet.
    let heard_until = now.min(heard.saturating_add(interval));
    if refused_at.is_some_and(|r| heard_until - r < window.saturating_add(interval)) {
        return None;
    }
    Some(heard_until)
}

#[cfg(test)]
mod tests {
    use super::judged_until;

    const S: i64 = 1_000_000;

    #[test]
    fn nothing_is_judged_before_a_window_of_consuming_or_a_probe() {
        assert_eq!(judged_until(100 * S, 2 * S, None, Some(99 * S), None), None);
        assert_eq!(
            judged_until(100 * S, 2 * S, Some(99 * S), Some(99 * S), None),
            None
        );
        assert_eq!(judged_until(100 * S, 2 * S, Some(90 * S), None, None), None);
        assert_eq!(
            judged_until(100 * S, 2 * S, Some(90 * S), Some(99 * S), None),
            Some(99 * S + S / 2)
        );
        assert_eq!(
            judged_until(100 * S, 2 * S, Some(90 * S), Some(100 * S), None),
            Some(100 * S)
        );
    }

    #[test]
    fn a_refusal_counts_against_what_was_heard_not_the_clock() {
        // Refusals ended at 20 s; at 30 s the consumer, behind the flood,
        // has heard up to 15 s: heartbeats refused before 20 s are missing
        // from what it heard, so nothing is judged (the clock says the
        // refusal is 10 s old).
        assert_eq!(
            judged_until(30 * S, 2 * S, Some(S), Some(15 * S), Some(20 * S)),
            None
        );
        // Heard up to 21 s: not yet a window after the refusal.
        assert_eq!(
            judged_until(30 * S, 2 * S, Some(S), Some(21 * S), Some(20 * S)),
            None
        );
        // Heard up to 23 s: a window and an interval of accepted probes.
        assert_eq!(
            judged_until(30 * S, 2 * S, Some(S), Some(23 * S), Some(20 * S)),
            Some(23 * S + S / 2)
        );
    }
}

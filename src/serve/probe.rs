//! The probe loop: every [`PROBE_INTERVAL`] the dispatcher sends a probe
//! (`broker::probe`) through the reply path, so the result consumer learns
//! up to when it has heard everything, and the scanner judges silence only
//! up to there. A probe the reply queue refuses (full) is noted in
//! [`Listening`]: while the queue refuses, so may it a worker's heartbeat,
//! and no silence counts.
//!
//! At its first connection it also sets the reply queue's length limit
//! (`amqp.reply_queue_max_bytes`) as the policy `bora-reply-limit`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::replies::Listening;
use crate::app::now_us;
use crate::broker::management::{Management, regex_escape, user_of, vhost_of};
use crate::broker::reconnect::Reconnect;
use crate::broker::{Broker, Published};
use crate::config::Settings;

/// How often a probe is sent: the most the scanner's judgement lags behind
/// what the consumer has heard.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The name of the policy that limits the reply queue.
pub const REPLY_POLICY: &str = "bora-reply-limit";

pub async fn run(
    broker: Broker,
    settings: Arc<Settings>,
    listening: Listening,
    shutdown: CancellationToken,
) {
    let user = user_of(settings.amqp.url.expose());
    let mut link = Reconnect::new("probe");
    if settings.amqp.reply_queue_max_bytes > 0 {
        tokio::spawn(keep_trying_to_limit(settings.clone(), shutdown.clone()));
    }
    loop {
        let connected = link.connect(&shutdown, || broker.probe_sender(&user)).await;
        let Some(sender) = connected else {
            return;
        };
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sent = now_us();
            match sender.send(sent).await {
                Ok(Published::Confirmed) => {
                    metrics::counter!("bora_reply_probes_total", "outcome" => "sent").increment(1);
                }
                Ok(Published::Nacked) => {
                    listening.probe_refused(sent);
                    metrics::counter!("bora_reply_probes_total", "outcome" => "refused")
                        .increment(1);
                }
                Ok(Published::Unroutable) => {
                    // The reply queue is gone; the consumer declares it again.
                    metrics::counter!("bora_reply_probes_total", "outcome" => "unroutable")
                        .increment(1);
                }
                Err(e) => {
                    warn!(error = %e, "probe not sent; reconnecting");
                    break;
                }
            }
        }
    }
}

/// How long after a failed attempt to set the reply queue's limit the next
/// is made.
const LIMIT_RETRY: Duration = Duration::from_secs(5);

/// Sets the reply queue's limit ([`limit_reply_queue`]), trying again every
/// [`LIMIT_RETRY`] until it is set: a management API that was busy or down
/// when the dispatcher started (a loaded broker) must not leave the reply
/// path unlimited for the dispatcher's whole life.
async fn keep_trying_to_limit(settings: Arc<Settings>, shutdown: CancellationToken) {
    while !limit_reply_queue(&settings).await {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LIMIT_RETRY) => {}
        }
    }
}

/// Sets the policy that limits the reply queue's waiting bytes, refusing
/// new replies beyond (`reject-publish`). Returns whether it is set; a
/// failure is logged.
async fn limit_reply_queue(settings: &Settings) -> bool {
    let a = &settings.amqp;
    let set = async {
        let m = Management::new(&a.management_url)?;
        m.set_policy(
            &vhost_of(a.url.expose()),
            REPLY_POLICY,
            &format!("^{}$", regex_escape(&a.reply_queue)),
            "queues",
            json!({"max-length-bytes": a.reply_queue_max_bytes, "overflow": "reject-publish"}),
        )
        .await
    };
    match set.await {
        Ok(()) => {
            info!(queue = %a.reply_queue, max_bytes = a.reply_queue_max_bytes, policy = REPLY_POLICY, "reply queue limited");
            true
        }
        Err(e) => {
            warn!(error = %e, queue = %a.reply_queue, "could not set the reply queue's length limit (policy {REPLY_POLICY}); trying again in {} s", LIMIT_RETRY.as_secs());
            false
        }
    }
}

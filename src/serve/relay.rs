//! The outbox relay: publishes what committed transactions queued, with
//! confirms, and records the confirms (attempts become `queued`).
//!
//! Woken by every commit that queues a message, and by a timer for messages
//! due later (retry delays) and as a safety sweep. A message leaves the
//! outbox only once the broker confirmed it, so a crash or a broken
//! connection re-sends it; workers and oslo servers tolerate the duplicate
//! (fixed `_unique_id`, results recorded once per attempt).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::views::{TaskView, WorkflowView};
use crate::backoff::Backoff;
use crate::broker::{Broker, BrokerError, Outgoing, Published, Publisher};
use crate::config::Settings;
use crate::domain::{TaskState, WorkflowState};
use crate::protocol::{CancelMessage, Notification};
use crate::store::{Backend, OutboxItem, OutboxKind, StoreError, now_us};
use crate::tracker::Tracker;

/// Messages taken from the outbox per round.
const BATCH: u32 = 500;
/// Delay before a refused or unroutable publish is tried again.
const RETRY_US: i64 = 1_000_000;
/// Delay before messages for a queue the broker refused to declare (it
/// exists with other arguments: an operator must act) are tried again.
const REFUSED_RETRY_US: i64 = 30_000_000;

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn run(
    tracker: Tracker,
    broker: Broker,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let wake = tracker.relay_wake();
    let interval = Duration::from_millis(settings.dispatch.relay_interval_ms.max(10));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut connected_before = false;
    'connect: while !shutdown.is_cancelled() {
        let connected = async {
            broker.declare_topology().await?;
            broker.publisher().await
        };
        // A broker that accepts the TCP connection and then says nothing
        // holds `connected` for the pool's create timeout: obey shutdown.
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = connected => c,
        };
        let mut publisher = match connected {
            Ok(p) => {
                info!("relay connected to the broker");
                if std::mem::replace(&mut connected_before, true) {
                    metrics::counter!("bora_broker_reconnects_total", "component" => "relay")
                        .increment(1);
                }
                backoff.reset();
                p
            }
            Err(e) => {
                warn!(error = %e, "relay cannot reach the broker; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue 'connect,
                }
            }
        };
        loop {
            match relay_once(&tracker, &mut publisher, &settings).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(RelayError::Broker(e)) => {
                    warn!(error = %e, "publish failed; reconnecting (unconfirmed messages stay in the outbox)");
                    continue 'connect;
                }
                Err(RelayError::Store(e)) => {
                    error!(error = %e, "relay cannot read or update the store");
                }
            }
            if !publisher.is_open() {
                continue 'connect;
            }
            let wait = match tracker.store().next_outbox_due().await {
                Ok(Some(due)) => {
                    Duration::from_micros((due - now_us()).max(0) as u64).min(interval)
                }
                _ => interval,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Publishes one batch of due messages. Returns whether the batch was full
/// (more may be due at once).
async fn relay_once(
    tracker: &Tracker,
    publisher: &mut Publisher,
    settings: &Settings,
) -> Result<bool, RelayError> {
    let now = now_us();
    let lease_until = now + settings.dispatch.outbox_lease_s.max(1) as i64 * 1_000_000;
    let items = tracker.store().due_outbox(now, BATCH, lease_until).await?;
    if items.is_empty() {
        return Ok(false);
    }
    let full = items.len() == BATCH as usize;
    let mut moot = Vec::new();
    let mut sending: Vec<(OutboxItem, Outgoing)> = Vec::with_capacity(items.len());
    for item in items {
        match render(&item, tracker, settings).await? {
            Some(msg) => sending.push((item, msg)),
            None => moot.push(item),
        }
    }
    match publish(tracker, publisher, sending, moot).await {
        Ok(()) => Ok(full),
        Err((e, claimed)) => {
            // Claimed rows (PostgreSQL) would wait for their lease to end:
            // give them back now, for whichever relay reconnects first.
            if tracker.store().backend() == Backend::Postgres
                && let Err(e) = tracker.postpone(&claimed, now_us()).await
            {
                warn!(error = %e, "cannot give claimed outbox rows back; they are due again when their lease ends");
            }
            Err(e)
        }
    }
}

/// Publishes rendered messages and records the outcome. On a broker error,
/// returns it with the rows that were not recorded.
async fn publish(
    tracker: &Tracker,
    publisher: &mut Publisher,
    sending: Vec<(OutboxItem, Outgoing)>,
    moot: Vec<OutboxItem>,
) -> Result<(), (RelayError, Vec<OutboxItem>)> {
    let unrecorded = |sending: &[(OutboxItem, Outgoing)]| -> Vec<OutboxItem> {
        sending.iter().map(|(i, _)| i.clone()).collect()
    };
    let mut servers = BTreeSet::new();
    let mut notification_queues = BTreeSet::new();
    for (item, msg) in &sending {
        match item.kind {
            OutboxKind::Task | OutboxKind::Cancel => servers.insert(item.server_id.clone()),
            OutboxKind::TaskEnd | OutboxKind::WorkflowEnd => {
                notification_queues.insert(msg.routing_key.clone())
            }
        };
    }
    // A queue that exists with other arguments (another queue type) is an
    // operator's error about that queue: its messages wait, everyone
    // else's go. Any other failure is the connection's.
    let mut refused = BTreeSet::new();
    let mut refused_queues = BTreeSet::new();
    for server in &servers {
        match publisher.ensure_server_queues(server).await {
            Ok(()) => {}
            Err(e @ BrokerError::Inequivalent { .. }) => {
                error!(server_id = %server, error = %e, "cannot declare the server's queues; its messages wait");
                refused.insert(server.clone());
            }
            Err(e) => return Err((e.into(), unrecorded(&sending))),
        }
    }
    for queue in &notification_queues {
        match publisher.ensure_notification_queue(queue).await {
            Ok(()) => {}
            Err(e @ BrokerError::Inequivalent { .. }) => {
                error!(queue = %queue, error = %e, "cannot declare a notification queue; its notifications wait");
                refused_queues.insert(queue.clone());
            }
            Err(e) => return Err((e.into(), unrecorded(&sending))),
        }
    }
    let mut waiting = Vec::new();
    let sending: Vec<(OutboxItem, Outgoing)> = if refused.is_empty() && refused_queues.is_empty() {
        sending
    } else {
        let (blocked, go): (Vec<_>, Vec<_>) =
            sending
                .into_iter()
                .partition(|(item, msg)| match item.kind {
                    OutboxKind::Task | OutboxKind::Cancel => refused.contains(&item.server_id),
                    OutboxKind::TaskEnd | OutboxKind::WorkflowEnd => {
                        refused_queues.contains(&msg.routing_key)
                    }
                });
        waiting.extend(blocked.into_iter().map(|(item, _)| item));
        go
    };
    let batch: Vec<Outgoing> = sending.iter().map(|(_, m)| m.clone()).collect();
    let outcomes = match publisher.publish_batch(&batch).await {
        Ok(o) => o,
        Err(e) => return Err((e.into(), unrecorded(&sending))),
    };
    let mut confirmed = Vec::with_capacity(outcomes.len());
    let mut failed = Vec::new();
    for ((item, _), outcome) in sending.into_iter().zip(outcomes) {
        match outcome {
            Published::Confirmed => confirmed.push(item),
            Published::Unroutable => {
                warn!(server_id = %item.server_id, kind = item.kind.as_str(), "publish returned unroutable; redeclaring the server's queues");
                publisher.forget_server(&item.server_id);
                failed.push(item);
            }
            Published::Nacked => {
                warn!(server_id = %item.server_id, kind = item.kind.as_str(), "broker nacked a publish; retrying");
                failed.push(item);
            }
        }
    }
    debug!(
        confirmed = confirmed.len(),
        failed = failed.len(),
        moot = moot.len(),
        "relay round"
    );
    metrics::counter!("bora_messages_published_total").increment(confirmed.len() as u64);
    let confirmed_at = now_us();
    for item in &confirmed {
        metrics::histogram!("bora_publish_latency_seconds")
            .record((confirmed_at - item.created_at).max(0) as f64 / 1e6);
    }
    // A store failure here leaves the rows claimed until their lease ends
    // (PostgreSQL) or due at once (SQLite): sent again either way.
    let recorded = async {
        tracker.confirm_published(&confirmed).await?;
        tracker.postpone(&failed, now_us() + RETRY_US).await?;
        tracker
            .postpone(&waiting, now_us() + REFUSED_RETRY_US)
            .await?;
        tracker.discard(&moot).await
    };
    recorded.await.map_err(|e| (e.into(), Vec::new()))
}

/// The message an outbox row stands for, or `None` if it is moot (its task
/// was deleted or moved to another attempt).
async fn render(
    item: &OutboxItem,
    tracker: &Tracker,
    settings: &Settings,
) -> Result<Option<Outgoing>, StoreError> {
    let store = tracker.store();
    Ok(match item.kind {
        OutboxKind::Cancel => item.task_id.map(|task_id| Outgoing {
            routing_key: settings.amqp.control_queue(&item.server_id),
            body: CancelMessage {
                task_id,
                attempt: item.attempt as u32,
            }
            .to_cast()
            .encode(),
            mandatory: true,
        }),
        OutboxKind::Task => {
            let Some(task) = item.task.as_ref() else {
                return Ok(None);
            };
            if task.attempt != item.attempt || task.state != TaskState::Waiting {
                return Ok(None);
            }
            match task.message() {
                Ok(m) => Some(Outgoing {
                    routing_key: settings.amqp.task_queue(&item.server_id),
                    body: m
                        .to_call(&settings.amqp.reply_queue, settings.worker.heartbeat_s)
                        .encode(),
                    mandatory: true,
                }),
                Err(e) => {
                    error!(task_id = %task.id, error = %e, "cannot render a task message; dropping it");
                    None
                }
            }
        }
        OutboxKind::TaskEnd => {
            let Some(task) = item.task.clone() else {
                return Ok(None);
            };
            let error = task.state != TaskState::Succeeded;
            let deps = store.dependencies(task.id).await?;
            let window = settings.dispatch.heartbeat_timeout_s as i64 * 1_000_000;
            let last_seen = store.server_last_seen(&task.server_id).await?;
            let online = last_seen.is_some_and(|t| now_us() - t <= window);
            let mut view = TaskView::new(task, &deps, last_seen, online)?;
            // Without the streams: notifications are summaries.
            if let Some(r) = view.result.as_mut() {
                r.stdout.clear();
                r.stderr.clear();
            }
            let payload = serde_json::to_value(view).unwrap_or_default();
            Some(notification(settings, "bora.task.end", error, payload))
        }
        OutboxKind::WorkflowEnd => {
            let Some(wf) = item.workflow_id else {
                return Ok(None);
            };
            let Some(row) = store.workflow(wf).await? else {
                return Ok(None);
            };
            let counts = store.task_counts(wf).await?;
            let view = WorkflowView::new(row, counts);
            let error = view.state != WorkflowState::Succeeded;
            let payload = serde_json::to_value(view).unwrap_or_default();
            Some(notification(settings, "bora.workflow.end", error, payload))
        }
    })
}

fn notification(
    settings: &Settings,
    event_type: &str,
    error: bool,
    payload: serde_json::Value,
) -> Outgoing {
    let n = Notification::new(&settings.publisher_id(), event_type, error, payload);
    Outgoing {
        routing_key: n.routing_key(&settings.notifications.topic),
        body: n.encode(),
        mandatory: false,
    }
}

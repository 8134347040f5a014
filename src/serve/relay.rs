//! The outbox relay: publishes what committed transactions queued, with
//! confirms, and records the confirms (attempts become `queued`).
//!
//! Two ways in. A commit hands the messages it queued straight to this
//! dispatcher's relay (a bounded channel; their rows are claimed for the
//! relay until a lease ends), so a released task is published without the
//! relay reading it back. And a sweep of the store, woken by commits whose
//! messages were not handed over (the channel was full, or they are due
//! later) and by a timer, finds the rest: retry delays, messages of a
//! previous run, of a dispatcher that died (PostgreSQL), or given back
//! after a broker failure. A message leaves the outbox only once the broker
//! confirmed it, so a crash or a broken connection re-sends it; workers and
//! oslo servers tolerate the duplicate (fixed `_unique_id`, results
//! recorded once per attempt).
//!
//! Publishing never waits for the broker's confirms: a round's messages go
//! out, their confirms are collected as they come while later rounds are
//! published, and what was confirmed is recorded in a transaction of its
//! own (once per [`FLUSH_WINDOW`], off the publishing loop). A released
//! task therefore waits neither for the confirms of the messages before it
//! nor for the store's writer.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::app::{App, AppError, now_us};
use crate::broker::reconnect::Reconnect;
use crate::broker::{Broker, BrokerError, Confirms, Outgoing, Published, Publisher};
use crate::config::Settings;
use crate::domain::{Task, TaskId, TaskState, WorkflowState};
use crate::protocol::{CancelMessage, Notification, TaskEndPayload, WorkflowEndPayload};
use crate::store::{OutboxItem, OutboxKind, StoreError};

/// Messages taken from the outbox per round.
const BATCH: u32 = 500;
/// Messages published and not yet confirmed beyond which the relay waits
/// for confirms before it publishes more.
const MAX_UNCONFIRMED: usize = 4 * BATCH as usize;
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
    Store(#[from] AppError),
}

impl From<StoreError> for RelayError {
    fn from(e: StoreError) -> Self {
        RelayError::Store(e.into())
    }
}

pub async fn run(app: App, broker: Broker, settings: Arc<Settings>, shutdown: CancellationToken) {
    let wake = app.relay_wake();
    let Some(mut handed) = app.take_handoff() else {
        error!("the relay's hand-off was taken already; is a second relay running?");
        return;
    };
    // SQLite has this one dispatcher: whatever its previous run claimed and
    // never sent is due now, not at the end of its lease.
    match app.store().release_leases().await {
        Ok(0) => {}
        Ok(n) => info!(
            messages = n,
            "outbox messages of the previous run are due again"
        ),
        Err(e) => {
            warn!(error = %e, "cannot release the previous run's outbox claims; they are due when their lease ends")
        }
    }
    let interval = Duration::from_millis(settings.dispatch.relay_interval_ms.max(10));
    let lease_us = settings.dispatch.outbox_lease_us();
    let mut link = Reconnect::new("relay");
    // Handed messages taken from the channel and not yet sent.
    let mut pending: Vec<OutboxItem> = Vec::new();
    let mut held = Held::new(app.clone(), settings.clone());
    'connect: loop {
        let connected = link
            .connect(&shutdown, || async {
                broker.declare_topology().await?;
                broker.publisher().await
            })
            .await;
        let Some(mut publisher) = connected else {
            return;
        };
        // Sweep the store first after every (re)connect.
        let mut sweep = true;
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            while pending.len() < BATCH as usize {
                match handed.try_recv() {
                    Ok(item) => pending.push(item),
                    Err(_) => break,
                }
            }
            // A handed message whose lease is half gone is left to the
            // sweep, which finds it due once the lease ends: sending it
            // from here too could send it twice.
            let fresh_after = now_us() - lease_us / 2;
            pending.retain(|i| i.created_at > fresh_after);
            let round = async {
                // Confirms that came meanwhile; and, with too many messages
                // unconfirmed, the oldest round's confirms first.
                held.collect_confirms(&mut publisher).await?;
                if !pending.is_empty() {
                    let items = std::mem::take(&mut pending);
                    held.take(&mut publisher, items).await?;
                } else if sweep {
                    sweep = false;
                    let now = now_us();
                    let items = app.store().due_outbox(now, BATCH, now + lease_us).await?;
                    // A full batch: more may be due at once.
                    sweep = items.len() == BATCH as usize;
                    held.take(&mut publisher, items).await?;
                    let wait = match app.store().next_outbox_due().await {
                        Ok(Some(due)) => {
                            Duration::from_micros((due - now_us()).max(0) as u64).min(interval)
                        }
                        _ => interval,
                    };
                    next_sweep = tokio::time::Instant::now() + wait;
                }
                if held.flush_due() {
                    held.flush(&mut publisher).await?;
                }
                Ok::<(), RelayError>(())
            };
            match round.await {
                Ok(()) => {}
                Err(RelayError::Broker(e)) => {
                    warn!(error = %e, "publish failed; reconnecting (unconfirmed messages stay in the outbox)");
                    held.abandon().await;
                    continue 'connect;
                }
                Err(RelayError::Store(e)) => {
                    error!(error = %e, "relay cannot read or update the store");
                }
            }
            if !publisher.is_open() {
                held.abandon().await;
                continue 'connect;
            }
            if sweep || !pending.is_empty() || !handed.is_empty() {
                continue;
            }
            let flush_at = held.flush_at();
            tokio::select! {
                _ = shutdown.cancelled() => {
                    held.abandon().await;
                    return;
                }
                Some(item) = handed.recv() => pending.push(item),
                Some((items, confirms)) = held.in_flight.next() => {
                    if let Err(e) = held.confirmed(&mut publisher, items, confirms).await {
                        warn!(error = %e, "publish failed; reconnecting (unconfirmed messages stay in the outbox)");
                        held.abandon().await;
                        continue 'connect;
                    }
                }
                _ = wake.notified() => sweep = true,
                _ = tokio::time::sleep_until(next_sweep) => sweep = true,
                _ = async {
                    match flush_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }
}

/// How long the relay may hold what it published before recording it: the
/// confirms (attempts become `queued`, rows leave the outbox) and the
/// notifications (which only announce). One transaction per window instead
/// of one per publish keeps the store's one writer free for the results a
/// chain waits on.
const FLUSH_WINDOW: Duration = Duration::from_millis(10);

/// What became of the messages of one round.
#[derive(Default)]
struct Outcome {
    confirmed: Vec<OutboxItem>,
    /// Nacked or unroutable: tried again shortly.
    failed: Vec<OutboxItem>,
    /// For a queue the broker refuses to declare: tried again much later.
    waiting: Vec<OutboxItem>,
    /// Their task moved on: nothing to send.
    moot: Vec<OutboxItem>,
    /// Task messages that cannot be rendered (a stored value that does not
    /// parse, a secret that does not open), with why: their tasks fail.
    unsendable: Vec<(OutboxItem, String)>,
}

impl Outcome {
    fn len(&self) -> usize {
        self.confirmed.len()
            + self.failed.len()
            + self.waiting.len()
            + self.moot.len()
            + self.unsendable.len()
    }
}

/// A published round: its messages, and their confirms when they come.
type InFlight = BoxFuture<'static, (Vec<OutboxItem>, Result<Vec<Published>, BrokerError>)>;

/// What the relay holds between a publish and the transaction that records
/// it: the rounds published whose confirms are still to come, the outcome
/// of those confirmed, and the notifications not sent yet (they take store
/// reads to render, and nobody waits for them).
struct Held {
    app: App,
    settings: Arc<Settings>,
    /// Published rounds, oldest first.
    in_flight: FuturesOrdered<InFlight>,
    /// Messages in `in_flight`.
    unconfirmed: usize,
    outcome: Outcome,
    notes: Vec<OutboxItem>,
    since: Option<tokio::time::Instant>,
    /// The transaction recording the last flush's outcome, while it runs.
    recording: Option<tokio::task::JoinHandle<()>>,
}

impl Held {
    fn new(app: App, settings: Arc<Settings>) -> Self {
        Self {
            app,
            settings,
            in_flight: FuturesOrdered::new(),
            unconfirmed: 0,
            outcome: Outcome::default(),
            notes: Vec::new(),
            since: None,
            recording: None,
        }
    }

    /// Publishes a round's rendered messages; their confirms are collected
    /// later ([`Held::collect_confirms`], or the relay's wait).
    fn launch(&mut self, round: Option<(Vec<OutboxItem>, Confirms)>) {
        if let Some((items, confirms)) = round {
            self.unconfirmed += items.len();
            self.in_flight
                .push_back(async move { (items, confirms.outcomes().await) }.boxed());
        }
    }

    /// Takes in the confirms that came, and waits for the oldest rounds'
    /// while too many messages are unconfirmed.
    async fn collect_confirms(&mut self, publisher: &mut Publisher) -> Result<(), RelayError> {
        loop {
            let next = if self.unconfirmed > MAX_UNCONFIRMED {
                self.in_flight.next().await
            } else {
                match self.in_flight.next().now_or_never() {
                    Some(next) => next,
                    None => return Ok(()),
                }
            };
            let Some((items, confirms)) = next else {
                return Ok(());
            };
            self.confirmed(publisher, items, confirms).await?;
        }
    }

    /// Sorts a round's confirms into the outcome. A broken channel gives the
    /// round's rows back (sent again after the reconnect).
    async fn confirmed(
        &mut self,
        publisher: &mut Publisher,
        items: Vec<OutboxItem>,
        confirms: Result<Vec<Published>, BrokerError>,
    ) -> Result<(), RelayError> {
        self.unconfirmed = self.unconfirmed.saturating_sub(items.len());
        match confirms {
            Ok(outcomes) => {
                self.since.get_or_insert_with(tokio::time::Instant::now);
                // An unroutable message: its server's queues are declared
                // again next time.
                sort_published(items, outcomes, &mut self.outcome, |server| {
                    publisher.forget_server(server)
                });
                Ok(())
            }
            Err(e) => self.give_back_on_error(Err((e.into(), items))).await,
        }
    }

    /// Sends the task and cancel messages among `items` now and keeps the
    /// notifications for the next flush.
    async fn take(
        &mut self,
        publisher: &mut Publisher,
        items: Vec<OutboxItem>,
    ) -> Result<(), RelayError> {
        if items.is_empty() {
            return Ok(());
        }
        self.since.get_or_insert_with(tokio::time::Instant::now);
        let (urgent, notes): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|i| matches!(i.kind, OutboxKind::Task | OutboxKind::Cancel));
        self.notes.extend(notes);
        let sent = send(
            &self.app,
            publisher,
            &self.settings,
            urgent,
            &mut self.outcome,
        )
        .await;
        let round = self.give_back_on_error(sent).await?;
        self.launch(round);
        Ok(())
    }

    fn flush_due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= FLUSH_WINDOW)
            || self.outcome.len() + self.notes.len() >= BATCH as usize
    }

    fn flush_at(&self) -> Option<tokio::time::Instant> {
        self.since.map(|t| t + FLUSH_WINDOW)
    }

    /// Sends the notifications held, and starts recording the outcome
    /// held (unless the previous recording still runs: then it waits for
    /// the next window).
    async fn flush(&mut self, publisher: &mut Publisher) -> Result<(), RelayError> {
        let notes = std::mem::take(&mut self.notes);
        let sent = send(
            &self.app,
            publisher,
            &self.settings,
            notes,
            &mut self.outcome,
        )
        .await;
        let round = self.give_back_on_error(sent).await?;
        self.launch(round);
        if self.recording.as_ref().is_some_and(|r| !r.is_finished()) {
            self.since = Some(tokio::time::Instant::now());
            return Ok(());
        }
        let outcome = std::mem::take(&mut self.outcome);
        self.since = None;
        if outcome.len() > 0 {
            let app = self.app.clone();
            self.recording = Some(tokio::spawn(async move {
                // A store failure leaves the rows claimed until their lease
                // ends: sent again then.
                if let Err(e) = record(&app, outcome).await {
                    error!(error = %e, "relay cannot record what the broker confirmed; it is sent again when its lease ends");
                }
            }));
        }
        Ok(())
    }

    async fn give_back_on_error<T>(
        &mut self,
        sent: Result<T, (RelayError, Vec<OutboxItem>)>,
    ) -> Result<T, RelayError> {
        let (e, unsent) = match sent {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        // Claimed rows would wait for their lease to end: give them back
        // now, for whichever relay reconnects first.
        if let Err(e) = self.app.postpone(&unsent, now_us()).await {
            warn!(error = %e, "cannot give claimed outbox rows back; they are due again when their lease ends");
        }
        Err(e)
    }

    /// The connection is gone or the relay stops: collects the confirms
    /// still to come (a broken channel fails them at once) and records
    /// them, and gives back the unsent notifications and the messages whose
    /// confirm never came.
    async fn abandon(&mut self) {
        let mut unsent = std::mem::take(&mut self.notes);
        while let Some((items, confirms)) = self.in_flight.next().await {
            match confirms {
                Ok(outcomes) => sort_published(items, outcomes, &mut self.outcome, |_| {}),
                Err(_) => unsent.extend(items),
            }
        }
        self.unconfirmed = 0;
        if let Err(e) = self.app.postpone(&unsent, now_us()).await {
            warn!(error = %e, "cannot give claimed outbox rows back; they are due again when their lease ends");
        }
        if let Some(r) = self.recording.take() {
            let _ = r.await;
        }
        self.since = None;
        if let Err(e) = record(&self.app, std::mem::take(&mut self.outcome)).await {
            warn!(error = %e, "cannot record confirmed publishes; they are sent again");
        }
    }
}

/// Records an outcome: confirmed attempts become `queued` and their rows
/// leave the outbox, refused ones are tried again later, moot ones go.
async fn record(app: &App, o: Outcome) -> Result<(), AppError> {
    debug!(
        confirmed = o.confirmed.len(),
        failed = o.failed.len(),
        waiting = o.waiting.len(),
        moot = o.moot.len(),
        unsendable = o.unsendable.len(),
        "relay round"
    );
    app.fail_unsendable(&o.unsendable).await?;
    app.confirm_published(&o.confirmed).await?;
    app.postpone(&o.failed, now_us() + RETRY_US).await?;
    app.postpone(&o.waiting, now_us() + REFUSED_RETRY_US)
        .await?;
    app.discard(&o.moot).await
}

/// Sorts a round's confirms into the outcome, calling `unroutable` with
/// the server of each message no queue took.
fn sort_published(
    items: Vec<OutboxItem>,
    outcomes: Vec<Published>,
    outcome: &mut Outcome,
    mut unroutable: impl FnMut(&str),
) {
    let mut confirmed = 0u64;
    let confirmed_at = now_us();
    for (item, published) in items.into_iter().zip(outcomes) {
        match published {
            Published::Confirmed => {
                confirmed += 1;
                metrics::histogram!("bora_publish_latency_seconds")
                    .record((confirmed_at - item.created_at).max(0) as f64 / 1e6);
                outcome.confirmed.push(item);
            }
            Published::Unroutable => {
                warn!(server_id = %item.server_id, kind = item.kind.as_str(), "publish returned unroutable; redeclaring the server's queues");
                unroutable(&item.server_id);
                outcome.failed.push(item);
            }
            Published::Nacked => {
                warn!(server_id = %item.server_id, kind = item.kind.as_str(), "broker nacked a publish; retrying");
                outcome.failed.push(item);
            }
        }
    }
    metrics::counter!("bora_messages_published_total").increment(confirmed);
}

/// Renders and publishes `items`: those with nothing to send, or that
/// wait for their queue, go to `outcome`; the rest are returned with their
/// confirms to come. On a broker error, returns it with the items not sent.
async fn send(
    app: &App,
    publisher: &mut Publisher,
    settings: &Settings,
    items: Vec<OutboxItem>,
    outcome: &mut Outcome,
) -> Result<Option<(Vec<OutboxItem>, Confirms)>, (RelayError, Vec<OutboxItem>)> {
    if items.is_empty() {
        return Ok(None);
    }
    let context = match RenderContext::load(app, &items).await {
        Ok(c) => c,
        Err(e) => return Err((e.into(), items)),
    };
    let mut sending: Vec<(OutboxItem, Outgoing)> = Vec::with_capacity(items.len());
    let mut rest = items.into_iter();
    while let Some(item) = rest.next() {
        match render(&item, app, settings, &context).await {
            Ok(Rendered::Send(msg)) => sending.push((item, msg)),
            Ok(Rendered::Moot) => outcome.moot.push(item),
            Ok(Rendered::Unsendable(why)) => outcome.unsendable.push((item, why)),
            Err(e) => {
                let mut unsent: Vec<OutboxItem> = sending.into_iter().map(|(i, _)| i).collect();
                unsent.push(item);
                unsent.extend(rest);
                return Err((e.into(), unsent));
            }
        }
    }
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
    let refused = match publisher.ensure_servers_queues(&servers).await {
        Ok(refused) => refused,
        Err(e) => return Err((e.into(), unrecorded(&sending))),
    };
    for (server, e) in &refused {
        error!(server_id = %server, error = %e, "cannot declare the server's queues; its messages wait");
    }
    let mut refused_queues = BTreeSet::new();
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
    let sending: Vec<(OutboxItem, Outgoing)> = if refused.is_empty() && refused_queues.is_empty() {
        sending
    } else {
        let (blocked, go): (Vec<_>, Vec<_>) =
            sending
                .into_iter()
                .partition(|(item, msg)| match item.kind {
                    OutboxKind::Task | OutboxKind::Cancel => refused.contains_key(&item.server_id),
                    OutboxKind::TaskEnd | OutboxKind::WorkflowEnd => {
                        refused_queues.contains(&msg.routing_key)
                    }
                });
        outcome
            .waiting
            .extend(blocked.into_iter().map(|(item, _)| item));
        go
    };
    if sending.is_empty() {
        return Ok(None);
    }
    let (items, batch): (Vec<OutboxItem>, Vec<Outgoing>) = sending.into_iter().unzip();
    match publisher.publish_batch(&batch).await {
        Ok(confirms) => Ok(Some((items, confirms))),
        Err(e) => Err((e.into(), items)),
    }
}

/// What the task-end notifications of a round need from the store, read
/// with one query each for the whole round.
#[derive(Default)]
struct RenderContext {
    dependencies: HashMap<TaskId, Vec<(String, TaskState)>>,
    last_seen: HashMap<String, i64>,
}

impl RenderContext {
    async fn load(app: &App, items: &[OutboxItem]) -> Result<Self, StoreError> {
        let ended: Vec<&Task> = items
            .iter()
            .filter(|i| i.kind == OutboxKind::TaskEnd)
            .filter_map(|i| i.task.as_ref())
            .collect();
        if ended.is_empty() {
            return Ok(Self::default());
        }
        let ids: Vec<TaskId> = ended.iter().map(|t| t.id).collect();
        let servers: BTreeSet<&str> = ended.iter().map(|t| t.server_id.as_str()).collect();
        let servers: Vec<&str> = servers.into_iter().collect();
        Ok(Self {
            dependencies: app.store().dependencies_many(&ids).await?,
            last_seen: app.store().last_seen_many(&servers).await?,
        })
    }
}

/// What an outbox row comes to.
enum Rendered {
    /// The message to publish.
    Send(Outgoing),
    /// Nothing: its task was deleted or moved to another attempt.
    Moot,
    /// A task message that cannot be made, and why: the task fails.
    Unsendable(String),
}

/// The message an outbox row stands for.
async fn render(
    item: &OutboxItem,
    app: &App,
    settings: &Settings,
    context: &RenderContext,
) -> Result<Rendered, StoreError> {
    let store = app.store();
    let rendered = match item.kind {
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
                return Ok(Rendered::Moot);
            };
            if task.attempt != item.attempt || task.state() != TaskState::Waiting {
                return Ok(Rendered::Moot);
            }
            match app.task_message(task) {
                Ok(mut m) => Some(Outgoing {
                    routing_key: settings.amqp.task_queue(&item.server_id),
                    body: {
                        m.live_output_bytes = Some(settings.dispatch.max_live_output_bytes);
                        m.max_result_bytes = Some(settings.dispatch.max_result_bytes as u64);
                        m.to_call(&settings.amqp.reply_queue, settings.worker.heartbeat_s)
                            .encode()
                    },
                    mandatory: true,
                }),
                Err(e) => {
                    error!(task_id = %task.id, error = %e, "cannot render a task message; the task fails");
                    return Ok(Rendered::Unsendable(format!("cannot send the task: {e}")));
                }
            }
        }
        OutboxKind::TaskEnd => {
            let Some(task) = item.task.as_ref() else {
                return Ok(Rendered::Moot);
            };
            let error = task.state() != TaskState::Succeeded;
            let deps = context
                .dependencies
                .get(&task.id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let last_seen = context.last_seen.get(&task.server_id).copied();
            let online = app.online(last_seen);
            let payload = match TaskEndPayload::new(task, deps, last_seen, online) {
                Ok(p) => serde_json::to_value(p).unwrap_or_default(),
                Err(e) => {
                    error!(task_id = %task.id, error = %e, "cannot render a task's end; dropping it");
                    return Ok(Rendered::Moot);
                }
            };
            Some(notification(settings, "bora.task.end", error, payload))
        }
        OutboxKind::WorkflowEnd => {
            let Some(wf) = item.workflow_id else {
                return Ok(Rendered::Moot);
            };
            let Some(row) = store.workflow(wf).await? else {
                return Ok(Rendered::Moot);
            };
            let counts = store.task_counts(wf).await?;
            let payload = WorkflowEndPayload::new(&row, counts);
            let error = payload.state != WorkflowState::Succeeded;
            let payload = serde_json::to_value(payload).unwrap_or_default();
            Some(notification(settings, "bora.workflow.end", error, payload))
        }
    };
    Ok(rendered.map_or(Rendered::Moot, Rendered::Send))
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

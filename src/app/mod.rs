//! The use cases: every change of a workflow's, a task's or a server's
//! state, one per file, each one store transaction. A use case reads what
//! it needs, decides in memory (task moves through the task entity, the
//! release through [`release`]'s one walk), and hands what changed to the
//! unit of work ([`unit`](mod@unit)), which writes rows, events, outbox
//! messages and notifications with per-batch statements before the commit.
//! So a state change and the messages it causes commit together or not at
//! all.
//!
//! Also here, shared by both APIs: what clients send ([`input`]), the read
//! models both answer with ([`views`], [`queries`]), and the one error type
//! each maps its own way ([`AppError`]). This layer knows nothing of HTTP
//! or AMQP; the relay (in `serve`) publishes what commits queued.

mod approve;
mod cancel;
mod confirm;
mod create;
mod error;
mod group;
pub mod input;
mod patch;
mod pause;
pub mod queries;
mod release;
mod replies;
mod rerun;
mod scan;
mod schema;
mod secrets;
mod servers;
pub mod summary;
#[cfg(test)]
mod tests;
mod unit;
pub mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc, watch};

pub use approve::MAX_COMMENT_LEN;
pub use error::AppError;
pub use replies::{Incoming, Verdict};
pub use scan::ScanReport;

use crate::protocol::{RenderError, TaskMessage};
use crate::seal::Sealer;
use crate::store::{OutboxItem, Store, StoreError, WriteTx};
use unit::{Publishing, UnitOfWork};

/// Microseconds since the Unix epoch: the store's clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Settings of the use cases (from `dispatch.*`).
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Tasks may only target servers registered through the API.
    pub require_registration: bool,
    /// How often a lost attempt is sent again before it fails.
    pub max_redeliveries: u32,
    /// The dispatcher's own broker user: accepted as a result's `user_id`
    /// while registration is not required (quick start).
    pub dispatcher_user: String,
    /// The direct exchange bora's workers publish results to.
    pub reply_exchange: String,
    /// Larger replies are dropped unread.
    pub max_result_bytes: usize,
    /// The largest value an input reference may resolve to (bytes of JSON).
    pub max_input_bytes: usize,
    /// Most tasks one workflow may hold.
    pub max_tasks_per_workflow: u64,
    /// The most live output kept per stream of one attempt (bytes).
    pub max_live_output_bytes: u64,
    /// Queue oslo notifications on task and workflow ends.
    pub notifications: bool,
    /// How long a relay holds the outbox rows it publishes (microseconds).
    pub outbox_lease_us: i64,
    /// A server is online while its last heartbeat is this recent (µs).
    pub online_window_us: i64,
}

/// Cheap handle; clone it into every component that changes state.
#[derive(Clone)]
pub struct App {
    store: Store,
    config: Arc<AppConfig>,
    /// Woken after each commit that queued messages the relay must find
    /// in the store.
    relay_wake: Arc<Notify>,
    /// Bumped after every commit, so event streams (`GET .../events`) read
    /// the event log again at once instead of waiting for their poll.
    committed: Arc<watch::Sender<u64>>,
    /// When this dispatcher last wrote each server's `last_seen`.
    heard: Arc<std::sync::Mutex<HashMap<String, i64>>>,
    /// Committed messages handed straight to this dispatcher's relay.
    handoff: mpsc::Sender<OutboxItem>,
    /// The relay's end, until the relay takes it (hand-off starts then).
    handoff_rx: Arc<std::sync::Mutex<Option<mpsc::Receiver<OutboxItem>>>>,
    handoff_on: Arc<AtomicBool>,
    /// Seals secrets where the use cases take them in, and opens them for a
    /// worker's message ([`App::task_message`]).
    sealer: Sealer,
}

/// Most messages waiting for the relay in memory; beyond, commits leave
/// their messages to the relay's sweep of the store. Bounds the memory a
/// burst of commits can hold (a message holds its task row).
const HANDOFF_CAPACITY: usize = 2048;

impl App {
    /// A handle over `store`, sealing secrets with `sealer` (the store's
    /// key).
    pub fn new(store: Store, config: AppConfig, sealer: Sealer) -> Self {
        let (handoff, handoff_rx) = mpsc::channel(HANDOFF_CAPACITY);
        Self {
            store,
            config: Arc::new(config),
            relay_wake: Arc::new(Notify::new()),
            committed: Arc::new(watch::Sender::new(0)),
            heard: Arc::default(),
            handoff,
            handoff_rx: Arc::new(std::sync::Mutex::new(Some(handoff_rx))),
            handoff_on: Arc::default(),
            sealer,
        }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The settings of the use cases.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// The message that carries `task`'s current attempt to its worker,
    /// its secrets opened (the one place they are).
    ///
    /// # Errors
    /// A stored value that does not parse, or a secret that does not open
    /// with this dispatcher's key.
    pub fn task_message(&self, task: &crate::domain::Task) -> Result<TaskMessage, RenderError> {
        TaskMessage::of(task, |token| {
            self.sealer.open(token).map_err(|e| e.to_string())
        })
    }

    /// Whether a heartbeat at `last_seen` is recent enough to call its
    /// server online.
    pub fn online(&self, last_seen: Option<i64>) -> bool {
        last_seen.is_some_and(|t| now_us() - t <= self.config.online_window_us)
    }

    /// The messages commits hand to the relay. The first call takes them
    /// (one relay per dispatcher) and turns the hand-off on.
    pub fn take_handoff(&self) -> Option<mpsc::Receiver<OutboxItem>> {
        let rx = self
            .handoff_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if rx.is_some() {
            self.handoff_on.store(true, Ordering::Release);
        }
        rx
    }

    /// The signal the relay waits on.
    pub fn relay_wake(&self) -> Arc<Notify> {
        self.relay_wake.clone()
    }

    /// A receiver that sees a new value after each commit of this handle.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Starts a use case's transaction.
    async fn begin(&self) -> Result<WriteTx, StoreError> {
        self.store.begin().await
    }

    /// Writes `uow` and commits; then hands the messages it claimed to the
    /// relay, wakes the relay for the others, and counts the moves.
    async fn commit(&self, mut tx: WriteTx, uow: UnitOfWork, now: i64) -> Result<(), StoreError> {
        let relay_listens = self.handoff_on.load(Ordering::Acquire) && !self.handoff.is_closed();
        let publishing = Publishing {
            notifications: self.config.notifications,
            handoff_lease: relay_listens.then(|| now_us() + self.config.outbox_lease_us),
        };
        let mut written = uow.write(&mut tx, &publishing, now).await?;
        // Room for every handed message is reserved before the commit, so
        // none is left claimed and unsent; without room (the relay is
        // behind or gone) they are given back to the store's sweep.
        let handed = std::mem::take(&mut written.handed);
        let permits = if handed.is_empty() {
            None
        } else {
            match self.handoff.try_reserve_many(handed.len()) {
                Ok(permits) => Some(permits),
                Err(_) => {
                    let ids: Vec<i64> = handed.iter().map(|i| i.id).collect();
                    tx.postpone_outbox_many(&ids, now_us()).await?;
                    written.wake_relay = true;
                    None
                }
            }
        };
        tx.commit().await?;
        if written.wake_relay {
            self.relay_wake.notify_one();
        }
        if let Some(permits) = permits {
            for (permit, item) in permits.zip(handed) {
                permit.send(item);
            }
        }
        for state in written.entered {
            metrics::counter!("bora_task_transitions_total", "state" => state.as_str())
                .increment(1);
        }
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Commits a transaction that changed no task (outbox or server
    /// bookkeeping), waking the relay if `wake`.
    async fn commit_plain(&self, tx: WriteTx, wake: bool) -> Result<(), StoreError> {
        tx.commit().await?;
        if wake {
            self.relay_wake.notify_one();
        }
        Ok(())
    }
}

/// The workflow `id`, locked until the transaction ends (see
/// [`WriteTx::workflow`]): read first by every use case that changes it.
async fn locked_workflow(
    tx: &mut WriteTx,
    id: crate::domain::WorkflowId,
) -> Result<crate::domain::Workflow, AppError> {
    tx.workflow(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("workflow {id} not found")))
}

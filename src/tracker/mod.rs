//! The state tracker: every change of a workflow's or a task's state.
//!
//! Each public operation is one store transaction that changes rows and queues
//! the messages the change causes (the outbox), so a state change and its
//! messages commit together or not at all. Every task state move goes through
//! [`TaskState::check_transition`]. The tracker decides; the store executes
//! SQL; the relay (in `serve`) publishes what was queued. The tracker knows
//! nothing of AMQP or HTTP.

mod release;
mod replies;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc, watch};

pub use replies::{Incoming, Verdict};

use crate::domain::{
    FieldError, NewWorkflow, ServerId, ServerKind, TaskId, TaskPatch, TaskSpec, TaskState,
    WorkflowId, WorkflowPatch, check_name,
};
use crate::store::{
    OutboxItem, OutboxKind, Store, StoreError, TaskRow, WorkflowRow, WriteTx, now_us,
};

/// Why an operation was refused. Each maps to one HTTP status in the API.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("{0} not found")]
    NotFound(String),
    /// The operation conflicts with the current state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Valid JSON, invalid content (422).
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        details: Vec<FieldError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TrackerError {
    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        TrackerError::Invalid {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        TrackerError::Conflict {
            code,
            message: message.into(),
        }
    }
}

/// Tracker settings (from `dispatch.*`).
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    pub require_registration: bool,
    pub max_redeliveries: u32,
    /// The dispatcher's own broker user: accepted as a result's `user_id`
    /// while registration is not required (quick start).
    pub dispatcher_user: String,
    /// The direct exchange bora's workers publish results to.
    pub reply_exchange: String,
    /// Larger replies are dropped unread.
    pub max_result_bytes: usize,
    /// Most tasks one workflow may hold.
    pub max_tasks_per_workflow: u64,
    /// Queue oslo notifications on task and workflow ends.
    pub notifications: bool,
    /// How long a relay holds the outbox rows it publishes (microseconds).
    pub outbox_lease_us: i64,
}

/// Cheap handle; clone it into every component that changes state.
#[derive(Clone)]
pub struct Tracker {
    store: Store,
    config: TrackerConfig,
    /// Woken after each commit that queued outbox messages.
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
}

/// Most messages waiting for the relay in memory; beyond, commits leave
/// their messages to the relay's sweep of the store. Bounds the memory a
/// burst of commits can hold (a message holds its task row).
const HANDOFF_CAPACITY: usize = 2048;

/// A server's `last_seen` is written at most this often: it only says
/// whether a server is online (within `heartbeat_timeout_s`), and skipping
/// the write saves a statement in most reply batches.
const LAST_SEEN_RESOLUTION_US: i64 = 1_000_000;

impl Tracker {
    pub fn new(store: Store, config: TrackerConfig) -> Self {
        let (handoff, handoff_rx) = mpsc::channel(HANDOFF_CAPACITY);
        Self {
            store,
            config,
            relay_wake: Arc::new(Notify::new()),
            committed: Arc::new(watch::Sender::new(0)),
            heard: Arc::default(),
            handoff,
            handoff_rx: Arc::new(std::sync::Mutex::new(Some(handoff_rx))),
            handoff_on: Arc::default(),
        }
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

    /// Starts a state change's transaction, with hand-off to the relay on
    /// when a relay listens.
    async fn begin(&self) -> Result<WriteTx, StoreError> {
        let mut tx = self.store.begin().await?;
        if self.handoff_on.load(Ordering::Acquire) && !self.handoff.is_closed() {
            tx.hand_off(now_us() + self.config.outbox_lease_us);
        }
        Ok(tx)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The signal the relay waits on.
    pub fn relay_wake(&self) -> Arc<Notify> {
        self.relay_wake.clone()
    }

    /// A receiver that sees a new value after each commit of this tracker.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    async fn commit(&self, tx: WriteTx) -> Result<(), StoreError> {
        self.commit_with(tx, release::Changes::default()).await
    }

    /// Commits, after writing `changes` (rows, their events, the first
    /// attempts to queue) together with the task-end notifications of the
    /// transaction: one statement on PostgreSQL (see [`WriteTx::write_noted`]).
    async fn commit_with(
        &self,
        mut tx: WriteTx,
        changes: release::Changes,
    ) -> Result<(), StoreError> {
        let now = now_us();
        let events: Vec<&TaskRow> = changes.events.iter().collect();
        tx.note_events(&events);
        let ended = if self.config.notifications {
            tx.take_ended()
        } else {
            Vec::new()
        };
        let mut messages: Vec<(OutboxKind, &TaskRow)> = changes
            .dispatched
            .iter()
            .filter_map(|id| changes.rows.get(id))
            .map(|t| (OutboxKind::Task, t))
            .collect();
        messages.extend(ended.iter().map(|t| (OutboxKind::TaskEnd, t)));
        let rows: Vec<&TaskRow> = changes.rows.values().collect();
        tx.write_noted(&rows, &events, &messages, now).await?;
        if self.config.notifications {
            // Every task end is announced; a workflow whose last unfinished
            // task ended here ends with this commit.
            let workflows: std::collections::BTreeSet<WorkflowId> =
                ended.iter().map(|t| t.workflow_id).collect();
            for wf in workflows {
                if tx.workflow_done(wf).await? {
                    tx.enqueue_workflow_end(wf, now).await?;
                }
            }
        }
        // Room for every handed message is reserved before the commit, so
        // none is left claimed and unsent; without room (the relay is
        // behind or gone) they are given back to the store's sweep.
        let handed = tx.take_handed();
        let permits = if handed.is_empty() {
            None
        } else {
            match self.handoff.try_reserve_many(handed.len()) {
                Ok(permits) => Some(permits),
                Err(_) => {
                    let ids: Vec<i64> = handed.iter().map(|i| i.id).collect();
                    tx.postpone_outbox_many(&ids, now_us()).await?;
                    None
                }
            }
        };
        let entered = tx.entered_states().to_vec();
        if tx.commit().await? {
            self.relay_wake.notify_one();
        }
        if let Some(permits) = permits {
            for (permit, item) in permits.zip(handed) {
                permit.send(item);
            }
        }
        for state in entered {
            metrics::counter!("bora_task_transitions_total", "state" => state.as_str())
                .increment(1);
        }
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Creates a workflow and its first batch of tasks (validated already);
    /// returns its id and the tasks' rows as committed.
    ///
    /// # Errors
    /// Invalid name, or any error of [`Tracker::add_tasks`].
    pub async fn create_workflow(
        &self,
        new: NewWorkflow,
        tasks: Vec<TaskSpec>,
    ) -> Result<(WorkflowId, Vec<TaskRow>), TrackerError> {
        check_workflow_name(&new.name)?;
        let now = now_us();
        let row = WorkflowRow {
            id: WorkflowId::new(),
            name: new.name,
            description: new.description,
            cancelled: false,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin().await?;
        tx.insert_workflow(&row).await?;
        let tasks = self.insert_tasks(&mut tx, &row, tasks, now).await?;
        self.commit(tx).await?;
        Ok((row.id, tasks))
    }

    /// Adds a batch of tasks to a workflow. Tasks in the batch may refer to each
    /// other by name in any order, and to existing tasks by id or name.
    ///
    /// # Errors
    /// Unknown workflow (404), cancelled workflow or duplicate name (409),
    /// unknown dependency, cycle or unregistered server (422).
    pub async fn add_tasks(
        &self,
        workflow: WorkflowId,
        tasks: Vec<TaskSpec>,
    ) -> Result<Vec<TaskId>, TrackerError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let wf = tx
            .workflow(workflow)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("workflow {workflow}")))?;
        let rows = self.insert_tasks(&mut tx, &wf, tasks, now).await?;
        self.commit(tx).await?;
        Ok(rows.iter().map(|r| r.id).collect())
    }

    async fn insert_tasks(
        &self,
        tx: &mut WriteTx,
        wf: &WorkflowRow,
        tasks: Vec<TaskSpec>,
        now: i64,
    ) -> Result<Vec<TaskRow>, TrackerError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        if wf.cancelled {
            return Err(TrackerError::conflict(
                "workflow_cancelled",
                format!("workflow {} is cancelled: it takes no new tasks", wf.id),
            ));
        }
        let existing = tx.count_tasks(wf.id).await?;
        if existing + tasks.len() as u64 > self.config.max_tasks_per_workflow {
            return Err(TrackerError::invalid(
                "too_many_tasks",
                format!(
                    "workflow {} would hold {} tasks; the limit is {} (dispatch.max_tasks_per_workflow)",
                    wf.id,
                    existing + tasks.len() as u64,
                    self.config.max_tasks_per_workflow
                ),
            ));
        }
        // Names are unique within the batch and the workflow. One query asks
        // the store which of the batch's names are taken (none can be in a
        // workflow that has no tasks yet).
        let taken: HashSet<String> = if existing == 0 {
            HashSet::new()
        } else {
            let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
            tx.taken_names(wf.id, &names).await?.into_iter().collect()
        };
        let mut registered: HashMap<&str, bool> = HashMap::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            if by_name.insert(t.name.as_str(), i).is_some() {
                return Err(TrackerError::conflict(
                    "duplicate_name",
                    format!("task name {:?} appears twice in the request", t.name),
                ));
            }
            if taken.contains(&t.name) {
                return Err(TrackerError::conflict(
                    "duplicate_name",
                    format!("workflow already has a task named {:?}", t.name),
                ));
            }
            if self.config.require_registration {
                let server = t.server_id.as_str();
                let ok = match registered.get(server) {
                    Some(&ok) => ok,
                    None => {
                        let ok = tx.is_registered(server).await?;
                        registered.insert(server, ok);
                        ok
                    }
                };
                if !ok {
                    return Err(TrackerError::invalid(
                        "unregistered_server",
                        format!(
                            "tasks[{i}].server_id: server {server:?} is not registered (dispatch.require_registration is on)"
                        ),
                    ));
                }
            }
        }
        // Resolve references: first within the batch (by name), then existing tasks.
        let mut batch_edges: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
        let mut existing_deps: Vec<Vec<TaskId>> = vec![Vec::new(); tasks.len()];
        let mut resolved: HashMap<&str, TaskRow> = HashMap::new();
        for (i, t) in tasks.iter().enumerate() {
            for r in &t.depends_on {
                if let Some(&j) = by_name.get(r.as_str()) {
                    if j == i {
                        return Err(TrackerError::invalid(
                            "dependency_cycle",
                            format!("task {:?} depends on itself", t.name),
                        ));
                    }
                    batch_edges[i].push(j);
                } else if let Some(dep) = resolved.get(r.as_str()) {
                    existing_deps[i].push(dep.id);
                } else if let Some(dep) = tx.task_by_ref(wf.id, r).await? {
                    existing_deps[i].push(dep.id);
                    resolved.insert(r.as_str(), dep);
                } else {
                    return Err(TrackerError::invalid(
                        "unknown_dependency",
                        format!(
                            "task {:?} depends on {r:?}, which is neither in this request nor in workflow {}",
                            t.name, wf.id
                        ),
                    ));
                }
            }
        }
        let order = topological_order(&batch_edges).map_err(|cycle| {
            let names: Vec<&str> = cycle.iter().map(|&i| tasks[i].name.as_str()).collect();
            TrackerError::invalid(
                "dependency_cycle",
                format!("dependency cycle among tasks {names:?}"),
            )
        })?;
        let mut rows: Vec<TaskRow> = tasks
            .iter()
            .map(|spec| TaskRow::new(wf.id, spec, now))
            .collect();
        // Each task is created `waiting` (one event each, in request order).
        let created: Vec<&TaskRow> = rows.iter().collect();
        tx.task_events(&created, now).await?;
        // Then evaluated in memory, dependencies first, so a skip travels down
        // the batch in one pass and each row is inserted as it ends up.
        let existing_states: HashMap<TaskId, crate::domain::TaskState> =
            resolved.values().map(|t| (t.id, t.state)).collect();
        let mut skipped = Vec::new();
        let mut dispatched = Vec::new();
        for &i in &order {
            let states: Vec<_> = batch_edges[i]
                .iter()
                .map(|&j| rows[j].state)
                .chain(existing_deps[i].iter().map(|d| existing_states[d]))
                .collect();
            match release::evaluate_new(&mut rows[i], &states, now)? {
                release::Start::Dispatch => dispatched.push(i),
                release::Start::Skip => skipped.push(i),
                release::Start::Wait => {}
            }
        }
        tx.insert_tasks(&rows).await.map_err(|e| {
            if e.is_unique_violation() {
                TrackerError::conflict(
                    "duplicate_name",
                    "workflow already has a task of one of these names",
                )
            } else {
                e.into()
            }
        })?;
        let mut edges = Vec::new();
        for i in 0..rows.len() {
            edges.extend(batch_edges[i].iter().map(|&j| (rows[i].id, rows[j].id)));
            edges.extend(existing_deps[i].iter().map(|&d| (rows[i].id, d)));
        }
        tx.add_dependencies(&edges).await?;
        let skipped: Vec<&TaskRow> = skipped.iter().map(|&i| &rows[i]).collect();
        tx.task_events(&skipped, now).await?;
        let dispatched: Vec<&TaskRow> = dispatched.iter().map(|&i| &rows[i]).collect();
        tx.enqueue_many(OutboxKind::Task, &dispatched, now, now)
            .await?;
        Ok(rows)
    }

    /// Changes a workflow's name or description.
    ///
    /// # Errors
    /// Unknown workflow (404), invalid name (422).
    pub async fn patch_workflow(
        &self,
        workflow: WorkflowId,
        patch: WorkflowPatch,
    ) -> Result<(), TrackerError> {
        let mut tx = self.begin().await?;
        let mut wf = tx
            .workflow(workflow)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("workflow {workflow}")))?;
        if let Some(name) = patch.name {
            check_workflow_name(&name)?;
            wf.name = name;
        }
        if let Some(d) = patch.description {
            wf.description = Some(d);
        }
        wf.updated_at = now_us();
        tx.update_workflow(&wf).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Cancels every unfinished task and marks the workflow cancelled.
    ///
    /// # Errors
    /// Unknown workflow (404).
    pub async fn cancel_workflow(&self, workflow: WorkflowId) -> Result<(), TrackerError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        self.cancel_all(&mut tx, workflow, now).await?;
        self.commit(tx).await?;
        Ok(())
    }

    async fn cancel_all(
        &self,
        tx: &mut WriteTx,
        workflow: WorkflowId,
        now: i64,
    ) -> Result<(), TrackerError> {
        let mut wf = tx
            .workflow(workflow)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("workflow {workflow}")))?;
        if !wf.cancelled {
            wf.cancelled = true;
            wf.updated_at = now;
            tx.update_workflow(&wf).await?;
            tx.workflow_event(workflow, "cancelled", now).await?;
        }
        // Every unfinished task is cancelled, so there is nothing to release.
        for mut task in tx.unfinished_tasks(workflow).await? {
            release::cancel(tx, &mut task, now).await?;
        }
        Ok(())
    }

    /// Cancels every unfinished task (workers are told), then deletes the workflow.
    ///
    /// # Errors
    /// Unknown workflow (404).
    pub async fn delete_workflow(&self, workflow: WorkflowId) -> Result<(), TrackerError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        self.cancel_all(&mut tx, workflow, now).await?;
        tx.delete_workflow(workflow).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Changes a task that is still waiting for its dependencies.
    ///
    /// # Errors
    /// Unknown workflow or task (404), task no longer waiting or duplicate name
    /// (409), invalid fields, unknown dependency or cycle (422).
    pub async fn patch_task(
        &self,
        workflow: WorkflowId,
        reference: &str,
        patch: TaskPatch,
    ) -> Result<TaskId, TrackerError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let wf = tx
            .workflow(workflow)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("workflow {workflow}")))?;
        let mut row = tx
            .task_by_ref(workflow, reference)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("task {reference:?}")))?;
        if wf.cancelled || row.state != crate::domain::TaskState::Waiting || row.attempt != 0 {
            return Err(TrackerError::conflict(
                "task_not_waiting",
                format!(
                    "task {:?} is {} and was already handed to the broker or finished; only waiting tasks can change",
                    row.name, row.state
                ),
            ));
        }
        let deps_changed = patch.depends_on.is_some();
        let old_deps = tx.dependency_names(row.id).await?;
        let spec = patch
            .apply(&row.spec(old_deps)?)
            .map_err(|details| TrackerError::Invalid {
                code: "validation_failed",
                message: details
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                details,
            })?;
        if self.config.require_registration && !tx.is_registered(spec.server_id.as_str()).await? {
            return Err(TrackerError::invalid(
                "unregistered_server",
                format!("server {:?} is not registered", spec.server_id.as_str()),
            ));
        }
        if deps_changed {
            let mut deps = Vec::new();
            for r in &spec.depends_on {
                let dep = tx.task_by_ref(workflow, r).await?.ok_or_else(|| {
                    TrackerError::invalid(
                        "unknown_dependency",
                        format!(
                            "task {:?} depends on {r:?}, which is not in workflow {workflow}",
                            spec.name
                        ),
                    )
                })?;
                deps.push(dep.id);
            }
            let edges = tx.workflow_edges(workflow).await?;
            if creates_cycle(row.id, &deps, &edges) {
                return Err(TrackerError::invalid(
                    "dependency_cycle",
                    format!(
                        "the new dependencies of task {:?} would form a cycle",
                        spec.name
                    ),
                ));
            }
            tx.clear_dependencies(row.id).await?;
            for d in deps {
                tx.add_dependency(row.id, d).await?;
            }
        }
        row.set_spec(&spec);
        row.updated_at = now;
        tx.update_task(&row).await.map_err(|e| {
            if e.is_unique_violation() {
                TrackerError::conflict(
                    "duplicate_name",
                    format!("workflow already has a task named {:?}", row.name),
                )
            } else {
                e.into()
            }
        })?;
        release::evaluate_and_release(&mut tx, &mut row, now).await?;
        self.commit(tx).await?;
        Ok(row.id)
    }

    /// Cancels one task; deletes it if it was never handed to the broker.
    /// Its dependents are skipped or released as for any unsuccessful end.
    ///
    /// # Errors
    /// Unknown workflow or task (404), task already finished (409).
    pub async fn cancel_task(
        &self,
        workflow: WorkflowId,
        reference: &str,
    ) -> Result<(), TrackerError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        tx.workflow(workflow)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("workflow {workflow}")))?;
        let mut row = tx
            .task_by_ref(workflow, reference)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("task {reference:?}")))?;
        if row.state.is_terminal() {
            return Err(TrackerError::conflict(
                "task_finished",
                format!("task {:?} already ended ({})", row.name, row.state),
            ));
        }
        release::cancel(&mut tx, &mut row, now).await?;
        release::release_dependents(&mut tx, &row, now).await?;
        if row.attempt == 0 {
            tx.delete_task(row.id).await?;
        }
        self.commit(tx).await?;
        Ok(())
    }

    /// Marks a server registered (its broker user exists).
    ///
    /// # Errors
    /// A store failure.
    pub async fn register_server(
        &self,
        server: &ServerId,
        kind: ServerKind,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.register_server(server.as_str(), kind, now_us()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a server whose broker user was removed: cancels its unfinished
    /// tasks (their dependents are skipped or released) and deletes its row.
    /// Returns how many tasks were cancelled.
    ///
    /// # Errors
    /// A store failure.
    pub async fn forget_server(&self, server: &ServerId) -> Result<usize, StoreError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let tasks = tx.unfinished_tasks_of_server(server.as_str()).await?;
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        tx.lock_workflows_of(&ids).await?;
        let mut cancelled = 0;
        for t in tasks {
            // An earlier release in this loop may have skipped it already.
            let Some(mut task) = tx.task(t.id).await? else {
                continue;
            };
            if task.state.is_terminal() {
                continue;
            }
            release::cancel(&mut tx, &mut task, now).await?;
            release::release_dependents(&mut tx, &task, now).await?;
            cancelled += 1;
        }
        tx.delete_server(server.as_str()).await?;
        self.commit(tx).await?;
        Ok(cancelled)
    }

    /// Records replies from workers in one transaction, returning a verdict per reply.
    ///
    /// # Errors
    /// A store failure: nothing was recorded, the caller must not ack.
    pub async fn record_replies(&self, batch: &[Incoming]) -> Result<Vec<Verdict>, StoreError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let (mut ctx, decoded) = replies::Batch::load(&mut tx, &self.config, batch).await?;
        let mut verdicts = Vec::with_capacity(batch.len());
        for (incoming, reply) in batch.iter().zip(decoded) {
            verdicts.push(
                replies::record(&mut tx, &self.config, &mut ctx, incoming, reply, now).await?,
            );
        }
        let changes = ctx.finish(&mut tx, now).await?;
        let due: Vec<&str> = {
            let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            ctx.touched()
                .filter(|s| match heard.get_mut(*s) {
                    // Known: no allocation on this path, once per reply batch.
                    Some(last) if now.saturating_sub(*last) < LAST_SEEN_RESOLUTION_US => false,
                    Some(last) => {
                        *last = now;
                        true
                    }
                    None => {
                        heard.insert((*s).to_owned(), now);
                        true
                    }
                })
                .collect()
        };
        tx.touch_servers(&due, now).await?;
        self.commit_with(tx, changes).await?;
        Ok(verdicts)
    }

    /// Records what the broker confirmed: published attempts become `queued`
    /// and their outbox rows go.
    ///
    /// # Errors
    /// A store failure: the messages stay in the outbox and are sent again.
    pub async fn confirm_published(&self, confirmed: &[OutboxItem]) -> Result<(), StoreError> {
        if confirmed.is_empty() {
            return Ok(());
        }
        let now = now_us();
        let mut tx = self.begin().await?;
        lock_outbox_workflows(&mut tx, confirmed).await?;
        let ids: Vec<i64> = confirmed.iter().map(|i| i.id).collect();
        tx.delete_outbox_many(&ids).await?;
        // Confirmed task messages: (task, attempt).
        let published: Vec<(TaskId, i64)> = confirmed
            .iter()
            .filter(|i| i.kind == OutboxKind::Task)
            .filter_map(|i| i.task_id.map(|t| (t, i.attempt)))
            .collect();
        tx.queue_published(&published, now).await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Postpones messages whose publish failed; they are tried again at `retry_at`.
    ///
    /// # Errors
    /// A store failure.
    pub async fn postpone(&self, failed: &[OutboxItem], retry_at: i64) -> Result<(), StoreError> {
        if failed.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        lock_outbox_workflows(&mut tx, failed).await?;
        let ids: Vec<i64> = failed.iter().map(|i| i.id).collect();
        tx.postpone_outbox_many(&ids, retry_at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops outbox messages that are moot (their task is gone or moved on).
    ///
    /// # Errors
    /// A store failure.
    pub async fn discard(&self, moot: &[OutboxItem]) -> Result<(), StoreError> {
        if moot.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        lock_outbox_workflows(&mut tx, moot).await?;
        let ids: Vec<i64> = moot.iter().map(|i| i.id).collect();
        tx.delete_outbox_many(&ids).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Locks the workflows of the tasks outbox rows name. Transactions that
/// change a workflow's tasks also change their outbox rows, under the
/// workflow's lock: taking it first here too keeps every lock in one order.
async fn lock_outbox_workflows(tx: &mut WriteTx, items: &[OutboxItem]) -> Result<(), StoreError> {
    let tasks: Vec<TaskId> = items.iter().filter_map(|i| i.task_id).collect();
    tx.lock_workflows_of(&tasks).await
}

/// What one scan ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Attempts whose worker went silent.
    pub lost: usize,
    /// Attempts past their deadline.
    pub expired: usize,
}

impl Tracker {
    /// Ends attempts whose worker went silent for `heartbeat_timeout_s`, and
    /// attempts with no result `timeout_s` (+ `grace_s`) after their publish,
    /// so no task stays `queued` or `running` forever. One transaction.
    ///
    /// # Errors
    /// A store failure (nothing changed; the next scan tries again).
    pub async fn scan(
        &self,
        heartbeat_timeout_s: u64,
        grace_s: u64,
    ) -> Result<ScanReport, StoreError> {
        let now = now_us();
        let mut report = ScanReport::default();
        let mut tx = self.begin().await?;
        let cutoff = now - heartbeat_timeout_s as i64 * 1_000_000;
        let grace_us = grace_s as i64 * 1_000_000;
        let silent = tx.silent_running(cutoff).await?;
        let overdue = tx.overdue(now, grace_us).await?;
        if silent.is_empty() && overdue.is_empty() {
            // Nothing to change: no need to hold the write lock for a commit.
            return Ok(report);
        }
        // Found without locks: lock their workflows, then decide on the rows
        // as they are now (another dispatcher's scan or a late result may
        // have moved them on).
        let ids: Vec<TaskId> = silent.iter().chain(&overdue).map(|t| t.id).collect();
        tx.lock_workflows_of(&ids).await?;
        for t in silent {
            let Some(mut task) = tx.task(t.id).await? else {
                continue;
            };
            if task.attempt != t.attempt
                || task.state != TaskState::Running
                || task.last_heartbeat_at.or(task.started_at).unwrap_or(0) >= cutoff
            {
                continue;
            }
            tracing::warn!(task_id = %task.id, server_id = %task.server_id, attempt = task.attempt, "worker went silent; attempt lost");
            release::lose(
                &mut tx,
                &mut task,
                self.config.max_redeliveries,
                heartbeat_timeout_s,
                now,
            )
            .await?;
            report.lost += 1;
        }
        for t in overdue {
            // A lost attempt above may have moved on already.
            let Some(mut task) = tx.task(t.id).await? else {
                continue;
            };
            if task.attempt != t.attempt
                || !matches!(task.state, TaskState::Queued | TaskState::Running)
            {
                continue;
            }
            tracing::warn!(task_id = %task.id, server_id = %task.server_id, attempt = task.attempt, "no result within the task's timeout");
            release::expire(&mut tx, &mut task, now).await?;
            report.expired += 1;
        }
        if report == ScanReport::default() {
            drop(tx);
            return Ok(report);
        }
        self.commit(tx).await?;
        Ok(report)
    }
}

fn check_workflow_name(name: &str) -> Result<(), TrackerError> {
    check_name(name).map_err(|e| TrackerError::Invalid {
        code: "validation_failed",
        message: format!("name: {e}"),
        details: vec![FieldError {
            field: "name".into(),
            message: e,
        }],
    })
}

/// Kahn's algorithm over `edges[i]` = the batch indexes task `i` depends on.
/// Returns dependencies before dependents, or the tasks left in a cycle.
fn topological_order(edges: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = edges.len();
    let mut pending: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in edges.iter().enumerate() {
        for &d in deps {
            dependents[d].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    if order.len() == n {
        Ok(order)
    } else {
        Err((0..n).filter(|&i| pending[i] > 0).collect())
    }
}

/// Whether making `task` depend on `deps` closes a cycle, given the existing
/// `(task, dependency)` edges: true if `task` is reachable from any new dependency.
fn creates_cycle(task: TaskId, deps: &[TaskId], edges: &[(TaskId, TaskId)]) -> bool {
    let mut graph: HashMap<TaskId, Vec<TaskId>> = HashMap::new();
    for &(t, d) in edges {
        if t != task {
            graph.entry(t).or_default().push(d);
        }
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<TaskId> = deps.to_vec();
    while let Some(n) = stack.pop() {
        if n == task {
            return true;
        }
        if seen.insert(n)
            && let Some(next) = graph.get(&n)
        {
            stack.extend(next.iter().copied());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topological_order_puts_dependencies_first() {
        // 0 depends on 2, 2 depends on 1.
        let order = topological_order(&[vec![2], vec![], vec![1]]).unwrap();
        assert_eq!(order, vec![1, 2, 0]);
    }

    #[test]
    fn topological_order_reports_the_cycle() {
        // 0 -> 1 -> 2 -> 1, 3 free.
        let cycle = topological_order(&[vec![1], vec![2], vec![1], vec![]]).unwrap_err();
        assert_eq!(cycle, vec![0, 1, 2]);
    }

    #[test]
    fn cycle_through_existing_edges() {
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        // b depends on a, c depends on b.
        let edges = [(b, a), (c, b)];
        assert!(creates_cycle(a, &[c], &edges));
        assert!(!creates_cycle(c, &[a], &edges));
        assert!(creates_cycle(a, &[a], &edges));
    }
}

/// Reply batches against a real (SQLite) store: several results in one
/// transaction, whose release walk runs in memory.
#[cfg(test)]
mod batch_tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::domain::NewTask;
    use crate::protocol::{RpcReply, TaskResult, task_msg_id};

    async fn tracker() -> (Tracker, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url, 4).await.unwrap();
        let config = TrackerConfig {
            require_registration: false,
            max_redeliveries: 3,
            dispatcher_user: "guest".into(),
            reply_exchange: "reply_bora".into(),
            max_result_bytes: 1 << 20,
            max_tasks_per_workflow: 100,
            notifications: true,
            outbox_lease_us: 5_000_000,
        };
        (Tracker::new(store, config), dir)
    }

    /// a and b, a join of both, and a task after the join.
    async fn join_workflow(tracker: &Tracker) -> WorkflowId {
        let tasks = specs(json!([
            {"name": "a", "server_id": "s"},
            {"name": "b", "server_id": "s"},
            {"name": "join", "server_id": "s", "depends_on": ["a", "b"]},
            {"name": "after", "server_id": "s", "depends_on": ["join"]}
        ]));
        let new = NewWorkflow {
            name: "join".into(),
            description: None,
            tasks: None,
        };
        tracker.create_workflow(new, tasks).await.unwrap().0
    }

    fn specs(tasks: Value) -> Vec<TaskSpec> {
        serde_json::from_value::<Vec<NewTask>>(tasks)
            .unwrap()
            .into_iter()
            .map(|t| t.validate("").unwrap())
            .collect()
    }

    /// The final result of attempt 1, as an oslo server sends it.
    fn result(task: &TaskRow, exit_code: i64) -> Incoming {
        let r = TaskResult::from_streams(1, exit_code, String::new(), String::new());
        Incoming {
            body: RpcReply::final_result(task_msg_id(task.id, 1), serde_json::to_value(r).unwrap())
                .encode(),
            exchange: String::new(),
            user_id: None,
        }
    }

    async fn by_name(tracker: &Tracker, wf: WorkflowId) -> HashMap<String, TaskRow> {
        let rows = tracker.store().tasks(wf, None, None).await.unwrap();
        rows.into_iter().map(|t| (t.name.clone(), t)).collect()
    }

    /// The outbox as (kind, task name or "") in insertion order.
    async fn outbox(tracker: &Tracker, wf: WorkflowId) -> Vec<(OutboxKind, String)> {
        let names: HashMap<TaskId, String> = by_name(tracker, wf)
            .await
            .into_values()
            .map(|t| (t.id, t.name))
            .collect();
        let mut items = tracker
            .store()
            .due_outbox(now_us() + 1_000_000, 1000, now_us() + 1_000_000)
            .await
            .unwrap();
        items.sort_by_key(|i| i.id);
        items
            .into_iter()
            .map(|i| {
                let name = i.task_id.and_then(|t| names.get(&t).cloned());
                (i.kind, name.unwrap_or_default())
            })
            .collect()
    }

    fn states(rows: &HashMap<String, TaskRow>) -> Vec<(String, TaskState, i64)> {
        let mut out: Vec<_> = rows
            .values()
            .map(|t| (t.name.clone(), t.state, t.attempt))
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn one_batch_ending_both_dependencies_of_a_join_releases_it_once() {
        let (tracker, _dir) = tracker().await;
        let wf = join_workflow(&tracker).await;
        let rows = by_name(&tracker, wf).await;
        let before = outbox(&tracker, wf).await;
        let verdicts = tracker
            .record_replies(&[result(&rows["a"], 0), result(&rows["b"], 0)])
            .await
            .unwrap();
        assert_eq!(verdicts, vec![Verdict::Recorded, Verdict::Recorded]);

        let rows = by_name(&tracker, wf).await;
        assert_eq!(
            states(&rows),
            vec![
                ("a".into(), TaskState::Succeeded, 1),
                ("after".into(), TaskState::Waiting, 0),
                ("b".into(), TaskState::Succeeded, 1),
                ("join".into(), TaskState::Waiting, 1),
            ]
        );
        // One message for the join (first attempt), and the two ends.
        let after: Vec<_> = outbox(&tracker, wf).await[before.len()..].to_vec();
        assert_eq!(
            after,
            vec![
                (OutboxKind::Task, "join".into()),
                (OutboxKind::TaskEnd, "a".into()),
                (OutboxKind::TaskEnd, "b".into()),
            ]
        );
        // Each task's end is in the log once; the join's dispatch is no event.
        let events = tracker.store().events_after(wf, 0, 100).await.unwrap();
        let ended: Vec<_> = events
            .iter()
            .filter(|e| e.state == "succeeded")
            .map(|e| e.task_name.clone())
            .collect();
        assert_eq!(ended, vec![Some("a".to_owned()), Some("b".to_owned())]);
    }

    #[tokio::test]
    async fn one_batch_with_a_failure_skips_down_the_graph_and_ends_the_workflow() {
        let (tracker, _dir) = tracker().await;
        let wf = join_workflow(&tracker).await;
        let rows = by_name(&tracker, wf).await;
        let before = outbox(&tracker, wf).await;
        tracker
            .record_replies(&[result(&rows["a"], 0), result(&rows["b"], 2)])
            .await
            .unwrap();
        let rows = by_name(&tracker, wf).await;
        assert_eq!(
            states(&rows),
            vec![
                ("a".into(), TaskState::Succeeded, 1),
                ("after".into(), TaskState::Skipped, 0),
                ("b".into(), TaskState::Failed, 1),
                ("join".into(), TaskState::Skipped, 0),
            ]
        );
        let after: Vec<_> = outbox(&tracker, wf).await[before.len()..].to_vec();
        assert_eq!(
            after,
            vec![
                (OutboxKind::TaskEnd, "a".into()),
                (OutboxKind::TaskEnd, "b".into()),
                (OutboxKind::TaskEnd, "join".into()),
                (OutboxKind::TaskEnd, "after".into()),
                (OutboxKind::WorkflowEnd, String::new()),
            ]
        );
        let skipped = tracker
            .store()
            .events_after(wf, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.state == "skipped")
            .count();
        assert_eq!(skipped, 2);
    }

    #[tokio::test]
    async fn a_confirm_moves_only_the_attempts_still_waiting_for_it() {
        let (tracker, _dir) = tracker().await;
        let wf = join_workflow(&tracker).await;
        let rows = by_name(&tracker, wf).await;
        let items = tracker
            .store()
            .due_outbox(now_us() + 1_000_000, 1000, now_us() + 1_000_000)
            .await
            .unwrap();
        let item = |name: &str| {
            items
                .iter()
                .find(|i| i.kind == OutboxKind::Task && i.task_id == Some(rows[name].id))
                .cloned()
                .unwrap()
        };
        // b's worker answered before the broker's confirm was recorded; the
        // confirm of an attempt a has not reached yet moves nothing either.
        tracker
            .record_replies(&[result(&rows["b"], 0)])
            .await
            .unwrap();
        let mut later = item("a");
        later.attempt = 2;
        tracker
            .confirm_published(&[item("b"), later])
            .await
            .unwrap();
        let queued = |events: &[crate::store::EventRow]| -> Vec<Option<String>> {
            events
                .iter()
                .filter(|e| e.state == "queued")
                .map(|e| e.task_name.clone())
                .collect()
        };
        let events = tracker.store().events_after(wf, 0, 100).await.unwrap();
        assert_eq!(queued(&events), Vec::<Option<String>>::new());
        let now = by_name(&tracker, wf).await;
        assert_eq!(now["a"].state, TaskState::Waiting);
        assert_eq!(now["b"].state, TaskState::Succeeded);

        tracker.confirm_published(&[item("a")]).await.unwrap();
        let events = tracker.store().events_after(wf, 0, 100).await.unwrap();
        assert_eq!(queued(&events), vec![Some("a".to_owned())]);
        let now = by_name(&tracker, wf).await;
        assert_eq!(now["a"].state, TaskState::Queued);
        assert!(now["a"].queued_at.is_some());
    }
}

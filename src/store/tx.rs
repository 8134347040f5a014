//! The write transaction: the primitives the tracker composes into one state
//! change. Nothing is visible to anyone until [`WriteTx::commit`]; dropping a
//! `WriteTx` rolls it back.

use std::collections::HashSet;
use std::str::FromStr;

use sqlx::{Any, Row, Transaction};

use super::rows::{parse_id, task_by_ref};
use super::{Backend, OutboxItem, OutboxKind, ServerRow, StoreError, TaskRow, WorkflowRow};
use crate::domain::{ServerKind, TaskId, TaskState, WorkflowId};

pub struct WriteTx {
    pub(super) tx: Transaction<'static, Any>,
    pub(super) backend: Backend,
    /// Whether this transaction queued an outbox message the relay must
    /// find in the store (it is woken after commit only then).
    pub(super) queued_messages: bool,
    /// While set (see [`WriteTx::hand_off`]), messages due at once are
    /// claimed until this time for the committing dispatcher's relay.
    handoff_lease: Option<i64>,
    /// Those messages, whole, for the relay.
    pub(super) handed: Vec<OutboxItem>,
    /// Tasks that reached a terminal state in this transaction, as they were then.
    ended: Vec<TaskRow>,
    /// The state of every task event appended, in order (counted by the
    /// tracker as transitions once the commit succeeded).
    entered: Vec<TaskState>,
    /// Workflows this transaction queued a task message for: not finished,
    /// whatever else happened to them here.
    pub(super) dispatched_in: HashSet<WorkflowId>,
}

impl WriteTx {
    pub(super) fn new(tx: Transaction<'static, Any>, backend: Backend) -> Self {
        Self {
            tx,
            backend,
            queued_messages: false,
            handoff_lease: None,
            handed: Vec::new(),
            ended: Vec::new(),
            entered: Vec::new(),
            dispatched_in: HashSet::new(),
        }
    }

    /// Commits; returns whether outbox messages were queued.
    ///
    /// # Errors
    /// The commit failed (nothing was written).
    pub async fn commit(self) -> Result<bool, StoreError> {
        self.tx.commit().await?;
        Ok(self.queued_messages)
    }

    /// From now on, messages due at once are claimed until `lease_until`
    /// (no sweep, no other relay takes them) and kept whole: after the
    /// commit, [`WriteTx::take_handed`] gives them to this dispatcher's
    /// relay, which publishes them without reading them back.
    pub fn hand_off(&mut self, lease_until: i64) {
        self.handoff_lease = Some(lease_until);
    }

    /// The messages claimed for hand-off (emptied on read). Give them back
    /// with [`WriteTx::postpone_outbox_many`] if the relay cannot take them.
    pub fn take_handed(&mut self) -> Vec<OutboxItem> {
        std::mem::take(&mut self.handed)
    }

    /// The lease a message due at `not_before` is inserted with: 0
    /// (unclaimed) unless hand-off is on and it is due at once.
    pub(super) fn lease_for(&mut self, not_before: i64, now: i64) -> i64 {
        match self.handoff_lease {
            Some(lease) if not_before <= now => lease,
            _ => {
                self.queued_messages = true;
                0
            }
        }
    }

    /// Forgets handed messages that `keep` rejects (their rows were deleted).
    fn unhand(&mut self, keep: impl Fn(&OutboxItem) -> bool) {
        self.handed.retain(keep);
    }

    /// The states tasks entered in this transaction (one per task event).
    pub fn entered_states(&self) -> &[TaskState] {
        &self.entered
    }

    /// # Errors
    /// A database failure.
    pub async fn insert_workflow(&mut self, w: &WorkflowRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workflows (id, name, description, cancelled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(w.id.to_string())
        .bind(&w.name)
        .bind(&w.description)
        .bind(i64::from(w.cancelled))
        .bind(w.created_at)
        .bind(w.updated_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// A workflow, locked until this transaction ends (on PostgreSQL; SQLite's
    /// transactions hold the whole database): read it first, before any of
    /// its tasks, in every transaction that changes them.
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflow(&mut self, id: WorkflowId) -> Result<Option<WorkflowRow>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => concat!(
                "SELECT ",
                workflow_columns!(),
                " FROM workflows WHERE id = $1"
            ),
            Backend::Postgres => concat!(
                "SELECT ",
                workflow_columns!(),
                " FROM workflows WHERE id = $1 FOR UPDATE"
            ),
        };
        let row = sqlx::query(sql)
            .bind(id.to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(WorkflowRow::from_row).transpose()
    }

    /// Writes name, description, cancelled and updated_at.
    ///
    /// # Errors
    /// A database failure.
    pub async fn update_workflow(&mut self, w: &WorkflowRow) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workflows SET name = $2, description = $3, cancelled = $4, updated_at = $5 \
             WHERE id = $1",
        )
        .bind(w.id.to_string())
        .bind(&w.name)
        .bind(&w.description)
        .bind(i64::from(w.cancelled))
        .bind(w.updated_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Deletes a workflow with its tasks and their edges (outbox cancels stay).
    ///
    /// # Errors
    /// A database failure.
    pub async fn delete_workflow(&mut self, id: WorkflowId) -> Result<(), StoreError> {
        self.unhand(|i| !(i.kind == OutboxKind::Task && i.workflow_id == Some(id)));
        let id = id.to_string();
        sqlx::query(
            "DELETE FROM outbox WHERE kind = 'task' AND task_id IN \
             (SELECT id FROM tasks WHERE workflow_id = $1)",
        )
        .bind(&id)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "DELETE FROM task_deps WHERE task_id IN (SELECT id FROM tasks WHERE workflow_id = $1)",
        )
        .bind(&id)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query("DELETE FROM tasks WHERE workflow_id = $1")
            .bind(&id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM workflows WHERE id = $1")
            .bind(&id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Writes every column of `t` but its id and workflow: the one-row form
    /// of [`WriteTx::update_tasks`] (an upsert on the id; callers read the
    /// row under its workflow's lock, so it exists).
    ///
    /// # Errors
    /// A database failure, or a duplicate name.
    pub async fn update_task(&mut self, t: &TaskRow) -> Result<(), StoreError> {
        self.update_tasks(&[t]).await
    }

    /// # Errors
    /// A database failure.
    pub async fn delete_task(&mut self, id: TaskId) -> Result<(), StoreError> {
        self.unhand(|i| !(i.kind == OutboxKind::Task && i.task_id == Some(id)));
        let id = id.to_string();
        sqlx::query("DELETE FROM outbox WHERE kind = 'task' AND task_id = $1")
            .bind(&id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM task_deps WHERE task_id = $1 OR dep_id = $1")
            .bind(&id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(&id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// # Errors
    /// A database failure.
    pub async fn task(&mut self, id: TaskId) -> Result<Option<TaskRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(TaskRow::from_row).transpose()
    }

    /// A task by id or, failing that, by name.
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_by_ref(
        &mut self,
        workflow: WorkflowId,
        reference: &str,
    ) -> Result<Option<TaskRow>, StoreError> {
        task_by_ref(&mut self.tx, workflow, reference).await
    }

    /// The tasks of a workflow that are not in a terminal state.
    ///
    /// # Errors
    /// A database failure.
    pub async fn unfinished_tasks(
        &mut self,
        workflow: WorkflowId,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE workflow_id = $1 AND state IN ('waiting', 'queued', 'running') \
             ORDER BY id"
        ))
        .bind(workflow.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(TaskRow::from_row).collect()
    }

    /// How many tasks a workflow holds.
    ///
    /// # Errors
    /// A database failure.
    pub async fn count_tasks(&mut self, workflow: WorkflowId) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE workflow_id = $1")
            .bind(workflow.to_string())
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(n as u64)
    }

    /// # Errors
    /// A database failure.
    pub async fn add_dependency(&mut self, task: TaskId, dep: TaskId) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO task_deps (task_id, dep_id) VALUES ($1, $2)")
            .bind(task.to_string())
            .bind(dep.to_string())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// # Errors
    /// A database failure.
    pub async fn clear_dependencies(&mut self, task: TaskId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM task_deps WHERE task_id = $1")
            .bind(task.to_string())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The states of a task's dependencies.
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependency_states(&mut self, task: TaskId) -> Result<Vec<TaskState>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.state AS state FROM task_deps d JOIN tasks t ON t.id = d.dep_id \
             WHERE d.task_id = $1",
        )
        .bind(task.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get("state")?;
                TaskState::from_str(&s).map_err(StoreError::Corrupt)
            })
            .collect()
    }

    /// The tasks that depend on any of `tasks`, whole and each once, in id
    /// order, with the id and state of every dependency each has: one query
    /// per chunk of ids.
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependents_many(
        &mut self,
        tasks: &[TaskId],
    ) -> Result<Vec<(TaskRow, Vec<(TaskId, TaskState)>)>, StoreError> {
        let mut out: Vec<(TaskRow, Vec<(TaskId, TaskState)>)> = Vec::new();
        let mut seen = HashSet::new();
        for chunk in tasks.chunks(super::batch::MAX_IN) {
            let list = super::batch::InList::new(chunk);
            let sql = format!(
                concat!(
                    "SELECT ",
                    task_columns!(t),
                    ", s.id AS dep_id, s.state AS dep_state FROM tasks t ",
                    "JOIN task_deps d2 ON d2.task_id = t.id JOIN tasks s ON s.id = d2.dep_id ",
                    "WHERE t.id IN (SELECT d.task_id FROM task_deps d WHERE d.dep_id IN ({})) ",
                    "ORDER BY t.id"
                ),
                super::batch::Params::new(self.backend).list(list.len())
            );
            let mut q = super::batch::query(sql, false, list.len());
            for id in list.values() {
                q = q.bind(id.to_string());
            }
            let mut fresh = false;
            for row in q.fetch_all(&mut *self.tx).await? {
                let id = parse_id(&row.try_get::<String, _>("id")?)?;
                let dep = parse_id(&row.try_get::<String, _>("dep_id")?)?;
                let state: String = row.try_get("dep_state")?;
                let state = TaskState::from_str(&state).map_err(StoreError::Corrupt)?;
                match out.last_mut() {
                    Some((t, deps)) if t.id == id && fresh => deps.push((dep, state)),
                    _ => {
                        // A dependent found by an earlier chunk too is kept once.
                        fresh = seen.insert(id);
                        if fresh {
                            out.push((TaskRow::from_row(&row)?, vec![(dep, state)]));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every dependency edge `(task, dependency)` among a workflow's tasks.
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflow_edges(
        &mut self,
        workflow: WorkflowId,
    ) -> Result<Vec<(TaskId, TaskId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.task_id AS task_id, d.dep_id AS dep_id FROM task_deps d \
             JOIN tasks t ON t.id = d.task_id WHERE t.workflow_id = $1",
        )
        .bind(workflow.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                let a: String = r.try_get("task_id")?;
                let b: String = r.try_get("dep_id")?;
                Ok((parse_id(&a)?, parse_id(&b)?))
            })
            .collect()
    }

    /// The names of a task's dependencies (for `depends_on` on re-validation).
    ///
    /// # Errors
    /// A database failure.
    pub async fn dependency_names(&mut self, task: TaskId) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.name AS name FROM task_deps d JOIN tasks t ON t.id = d.dep_id \
             WHERE d.task_id = $1 ORDER BY t.id",
        )
        .bind(task.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| r.try_get("name").map_err(StoreError::from))
            .collect()
    }

    /// Queues a message for the relay, due at `not_before` (the one-row
    /// form of [`WriteTx::enqueue_many`]).
    ///
    /// # Errors
    /// A database failure.
    pub async fn enqueue(
        &mut self,
        kind: OutboxKind,
        task: &TaskRow,
        not_before: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.enqueue_many(kind, &[task], not_before, now).await
    }

    /// Queues the notification of a workflow's end.
    ///
    /// # Errors
    /// A database failure.
    pub async fn enqueue_workflow_end(
        &mut self,
        workflow: WorkflowId,
        now: i64,
    ) -> Result<(), StoreError> {
        let lease = self.lease_for(now, now);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (kind, task_id, workflow_id, attempt, server_id, not_before, \
             created_at, lease_until) VALUES ('workflow_end', '', $1, 0, '', $2, $2, $3) RETURNING id",
        )
        .bind(workflow.to_string())
        .bind(now)
        .bind(lease)
        .fetch_one(&mut *self.tx)
        .await?;
        if lease > 0 {
            self.handed.push(OutboxItem {
                id,
                kind: OutboxKind::WorkflowEnd,
                task_id: None,
                workflow_id: Some(workflow),
                attempt: 0,
                server_id: String::new(),
                created_at: now,
                task: None,
            });
        }
        Ok(())
    }

    /// The tasks this transaction ended so far (emptied on read).
    pub fn take_ended(&mut self) -> Vec<TaskRow> {
        std::mem::take(&mut self.ended)
    }

    /// Whether a workflow has no unfinished task left.
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflow_done(&mut self, workflow: WorkflowId) -> Result<bool, StoreError> {
        if self.dispatched_in.contains(&workflow) {
            return Ok(false);
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE workflow_id = $1 AND state IN ('waiting', 'queued', 'running')",
        )
        .bind(workflow.to_string())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(n == 0)
    }

    /// Drops a task's queued `run_task` messages that were not yet confirmed.
    /// Returns how many there were.
    ///
    /// # Errors
    /// A database failure.
    pub async fn drop_pending_publish(&mut self, task: TaskId) -> Result<u64, StoreError> {
        self.unhand(|i| !(i.kind == OutboxKind::Task && i.task_id == Some(task)));
        let r = sqlx::query("DELETE FROM outbox WHERE kind = 'task' AND task_id = $1")
            .bind(task.to_string())
            .execute(&mut *self.tx)
            .await?;
        Ok(r.rows_affected())
    }

    /// One server, as the reply check needs it.
    ///
    /// # Errors
    /// A database failure.
    pub async fn server(&mut self, server: &str) -> Result<Option<ServerRow>, StoreError> {
        let row = sqlx::query(
            "SELECT server_id, kind, registered, last_seen, created_at FROM servers WHERE server_id = $1",
        )
        .bind(server)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(ServerRow::from_row).transpose()
    }

    /// Marks a server registered, with its kind.
    ///
    /// # Errors
    /// A database failure.
    pub async fn register_server(
        &mut self,
        server: &str,
        kind: ServerKind,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO servers (server_id, kind, registered, created_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (server_id) DO UPDATE SET kind = excluded.kind, registered = 1",
        )
        .bind(server)
        .bind(kind.as_str())
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Forgets a server.
    ///
    /// # Errors
    /// A database failure.
    pub async fn delete_server(&mut self, server: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM servers WHERE server_id = $1")
            .bind(server)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The unfinished tasks aimed at a server.
    ///
    /// # Errors
    /// A database failure.
    pub async fn unfinished_tasks_of_server(
        &mut self,
        server: &str,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE server_id = $1 AND state IN ('waiting', 'queued', 'running') ORDER BY id"
        ))
        .bind(server)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(TaskRow::from_row).collect()
    }

    /// Whether `server` was registered through the API.
    ///
    /// # Errors
    /// A database failure.
    pub async fn is_registered(&mut self, server: &str) -> Result<bool, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT registered FROM servers WHERE server_id = $1")
                .bind(server)
                .fetch_optional(&mut *self.tx)
                .await?;
        Ok(v.unwrap_or(0) != 0)
    }

    /// Appends a task's state change to the event log (the one-row form of
    /// [`WriteTx::task_events`]).
    ///
    /// # Errors
    /// A database failure.
    pub async fn task_event(&mut self, task: &TaskRow, now: i64) -> Result<(), StoreError> {
        self.task_events(&[task], now).await
    }

    /// Remembers a task event for what the tracker does after commit
    /// (transition counts; end notifications).
    /// Counts `n` events into `state` written by the store itself.
    pub(super) fn note_entered(&mut self, state: TaskState, n: usize) {
        self.entered.extend(std::iter::repeat_n(state, n));
    }

    pub(super) fn note_event(&mut self, task: &TaskRow) {
        self.entered.push(task.state);
        if task.state.is_terminal() {
            self.ended.push(task.clone());
        }
    }

    /// Appends a workflow-level event (`state` is a workflow state).
    ///
    /// # Errors
    /// A database failure.
    pub async fn workflow_event(
        &mut self,
        workflow: WorkflowId,
        state: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO events (workflow_id, kind, state, at) VALUES ($1, 'workflow', $2, $3)",
        )
        .bind(workflow.to_string())
        .bind(state)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Running attempts whose last heartbeat is older than `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn silent_running(&mut self, cutoff: i64) -> Result<Vec<TaskRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE state = 'running' AND COALESCE(last_heartbeat_at, started_at, 0) < $1 \
             ORDER BY id LIMIT 1000"
        ))
        .bind(cutoff)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(TaskRow::from_row).collect()
    }

    /// Queued or running attempts published more than their `timeout_s`
    /// (plus `grace_us`) before `now`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn overdue(&mut self, now: i64, grace_us: i64) -> Result<Vec<TaskRow>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE state IN ('queued', 'running') AND queued_at IS NOT NULL \
             AND queued_at + timeout_s * 1000000 + $2 < $1 ORDER BY id LIMIT 1000"
        ))
        .bind(now)
        .bind(grace_us)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(TaskRow::from_row).collect()
    }
}

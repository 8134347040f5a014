//! The `events` table: the log of every state change, appended in the
//! transaction that makes the change (so the log and the state never
//! disagree), read by the event stream after a client's `Last-Event-ID`.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{AnyQuery, MAX_PARAMS, Params, query};
use super::{Store, StoreError, WriteTx, parse_id};
use crate::domain::{TaskId, TaskState, WorkflowId};

/// An event to append.
#[derive(Debug, Clone)]
pub enum NewEvent {
    /// A task entered `state` (at `attempt`).
    Task {
        /// The task's workflow.
        workflow_id: WorkflowId,
        /// The task.
        task_id: TaskId,
        /// Its name then.
        task_name: String,
        /// Its server then.
        server_id: String,
        /// The state entered.
        state: TaskState,
        /// Its attempt then.
        attempt: i64,
    },
    /// A workflow-level change (`state` is a workflow state: `cancelled`).
    Workflow {
        /// The workflow.
        workflow_id: WorkflowId,
        /// The state entered.
        state: &'static str,
    },
}

pub(super) const INSERT: &str = "INSERT INTO events (workflow_id, task_id, task_name, server_id, \
     state, attempt, at, kind) VALUES ";
pub(super) const COLS: usize = 8;

/// Binds one event's columns, in [`INSERT`]'s order.
pub(super) fn bind<'q>(q: AnyQuery<'q>, e: &'q NewEvent, now: i64) -> AnyQuery<'q> {
    match e {
        NewEvent::Task {
            workflow_id,
            task_id,
            task_name,
            server_id,
            state,
            attempt,
        } => q
            .bind(workflow_id.to_string())
            .bind(Some(task_id.to_string()))
            .bind(Some(task_name.as_str()))
            // An approval gate has no server.
            .bind((!server_id.is_empty()).then_some(server_id.as_str()))
            .bind(state.as_str())
            .bind(Some(*attempt))
            .bind(now)
            .bind("task"),
        NewEvent::Workflow { workflow_id, state } => q
            .bind(workflow_id.to_string())
            .bind(None::<String>)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(*state)
            .bind(None::<i64>)
            .bind(now)
            .bind("workflow"),
    }
}

impl Store {
    /// A workflow's events after event id `after`, oldest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn events_after(
        &self,
        workflow: WorkflowId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, workflow_id, task_id, task_name, server_id, kind, state, attempt, at \
             FROM events WHERE workflow_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(workflow.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(EventRow::from_row).collect()
    }
}

impl WriteTx {
    /// Appends `events` in order, all at `now`, a statement per chunk.
    ///
    /// # Errors
    /// A database failure.
    pub async fn insert_events(&mut self, events: &[NewEvent], now: i64) -> Result<(), StoreError> {
        let size = MAX_PARAMS / COLS;
        for chunk in events.chunks(size) {
            let sql = format!(
                "{INSERT}{}",
                Params::new(self.backend).values(chunk.len(), COLS)
            );
            let mut q = query(sql, chunk.len() == size, chunk.len());
            for e in chunk {
                q = bind(q, e, now);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}

/// One recorded state change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    /// Increasing in commit order; the SSE event id.
    pub id: i64,
    /// The workflow the change belongs to.
    pub workflow_id: WorkflowId,
    /// `task` or `workflow`.
    pub kind: String,
    /// The new state (a task state, or a workflow state for `workflow` events).
    pub state: String,
    /// The task that changed; `None` for `workflow` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The task's name at the change; `None` for `workflow` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_name: Option<String>,
    /// The task's server at the change; `None` for `workflow` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The task's attempt at the change; `None` for `workflow` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i64>,
    /// Microseconds since the epoch.
    pub at: i64,
}

impl EventRow {
    fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let wf: String = row.try_get("workflow_id")?;
        let task: Option<String> = row.try_get("task_id")?;
        Ok(Self {
            id: row.try_get("id")?,
            workflow_id: parse_id(&wf)?,
            kind: row.try_get("kind")?,
            state: row.try_get("state")?,
            task_id: task.as_deref().map(parse_id).transpose()?,
            task_name: row.try_get("task_name")?,
            server_id: row.try_get("server_id")?,
            attempt: row.try_get("attempt")?,
            at: row.try_get("at")?,
        })
    }
}

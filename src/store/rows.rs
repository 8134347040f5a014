//! Row types of the store and their decoding. JSON columns stay text here;
//! they are parsed only where a value is needed.

use std::str::FromStr;

use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::StoreError;
use crate::domain::{
    Delivery, OnDependencyFailure, OutputSpec, ServerId, ServerKind, TaskId, TaskSpec, TaskState,
    WorkflowId,
};
use crate::protocol::{TaskMessage, TaskResult};

macro_rules! workflow_columns {
    () => {
        "id, name, description, cancelled, created_at, updated_at"
    };
}

/// An outbox row `o` with its task `t` (LEFT JOIN), as [`OutboxItem`] reads it.
macro_rules! outbox_item_columns {
    () => {
        concat!(
            "o.id AS o_id, o.kind AS o_kind, o.task_id AS o_task_id, ",
            "o.attempt AS o_attempt, o.server_id AS o_server_id, o.workflow_id AS o_workflow_id, ",
            "o.created_at AS o_created_at, t.state AS t_state, ",
            task_columns!(t)
        )
    };
}

macro_rules! task_columns {
    () => {
        "id, workflow_id, name, server_id, task_group, config, inputs, outputs, options, \
         on_dependency_failure, timeout_s, retries, retry_delay_s, delivery, state, attempt, \
         failures, redeliveries, result, created_at, queued_at, started_at, finished_at, \
         last_heartbeat_at, updated_at"
    };
    (t) => {
        "t.id, t.workflow_id, t.name, t.server_id, t.task_group, t.config, t.inputs, t.outputs, \
         t.options, t.on_dependency_failure, t.timeout_s, t.retries, t.retry_delay_s, \
         t.delivery, t.state, t.attempt, t.failures, t.redeliveries, t.result, t.created_at, \
         t.queued_at, t.started_at, t.finished_at, t.last_heartbeat_at, t.updated_at"
    };
}

pub(super) fn parse_id<T: FromStr>(s: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad id {s:?}")))
}

fn parse<T: FromStr<Err = String>>(s: &str) -> Result<T, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A workflow as stored; its state and counts are derived from its tasks.
#[derive(Debug, Clone)]
pub struct WorkflowRow {
    pub id: WorkflowId,
    pub name: String,
    pub description: Option<String>,
    pub cancelled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl WorkflowRow {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        Ok(Self {
            id: parse_id(&id)?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            cancelled: row.try_get::<i64, _>("cancelled")? != 0,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// A task as stored.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: TaskId,
    pub workflow_id: WorkflowId,
    pub name: String,
    pub server_id: String,
    pub group: String,
    pub config: String,
    /// JSON object text.
    pub inputs: String,
    /// JSON list text of [`OutputSpec`].
    pub outputs: String,
    /// JSON object text.
    pub options: String,
    pub on_dependency_failure: OnDependencyFailure,
    pub timeout_s: i64,
    pub retries: i64,
    pub retry_delay_s: i64,
    pub delivery: Delivery,
    pub state: TaskState,
    pub attempt: i64,
    pub failures: i64,
    pub redeliveries: i64,
    /// JSON text of the last [`TaskResult`].
    pub result: Option<String>,
    pub created_at: i64,
    pub queued_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub updated_at: i64,
}

impl TaskRow {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let id: String = row.try_get("id")?;
        let workflow_id: String = row.try_get("workflow_id")?;
        let odf: String = row.try_get("on_dependency_failure")?;
        let delivery: String = row.try_get("delivery")?;
        let state: String = row.try_get("state")?;
        Ok(Self {
            id: parse_id(&id)?,
            workflow_id: parse_id(&workflow_id)?,
            name: row.try_get("name")?,
            server_id: row.try_get("server_id")?,
            group: row.try_get("task_group")?,
            config: row.try_get("config")?,
            inputs: row.try_get("inputs")?,
            outputs: row.try_get("outputs")?,
            options: row.try_get("options")?,
            on_dependency_failure: parse(&odf)?,
            timeout_s: row.try_get("timeout_s")?,
            retries: row.try_get("retries")?,
            retry_delay_s: row.try_get("retry_delay_s")?,
            delivery: parse(&delivery)?,
            state: parse(&state)?,
            attempt: row.try_get("attempt")?,
            failures: row.try_get("failures")?,
            redeliveries: row.try_get("redeliveries")?,
            result: row.try_get("result")?,
            created_at: row.try_get("created_at")?,
            queued_at: row.try_get("queued_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            last_heartbeat_at: row.try_get("last_heartbeat_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// A new row for a validated spec, in state `waiting`, attempt 0.
    pub fn new(workflow_id: WorkflowId, spec: &TaskSpec, now: i64) -> Self {
        let mut row = Self {
            id: spec.id,
            workflow_id,
            name: String::new(),
            server_id: String::new(),
            group: String::new(),
            config: String::new(),
            inputs: String::new(),
            outputs: String::new(),
            options: String::new(),
            on_dependency_failure: spec.on_dependency_failure,
            timeout_s: 0,
            retries: 0,
            retry_delay_s: 0,
            delivery: spec.delivery,
            state: TaskState::Waiting,
            attempt: 0,
            failures: 0,
            redeliveries: 0,
            result: None,
            created_at: now,
            queued_at: None,
            started_at: None,
            finished_at: None,
            last_heartbeat_at: None,
            updated_at: now,
        };
        row.set_spec(spec);
        row
    }

    /// Overwrites the client-given fields with `spec` (not the id).
    pub fn set_spec(&mut self, spec: &TaskSpec) {
        self.name = spec.name.clone();
        self.server_id = spec.server_id.as_str().to_owned();
        self.group = spec.group.clone();
        self.config = spec.config.clone();
        self.inputs = Value::Object(spec.inputs.clone()).to_string();
        self.outputs = serde_json::to_string(&spec.outputs).unwrap_or_else(|_| "[]".into());
        self.options = Value::Object(spec.options.clone()).to_string();
        self.on_dependency_failure = spec.on_dependency_failure;
        self.timeout_s = i64::from(spec.timeout_s);
        self.retries = i64::from(spec.retries);
        self.retry_delay_s = i64::from(spec.retry_delay_s);
        self.delivery = spec.delivery;
    }

    /// # Errors
    /// A stored JSON column that does not parse.
    pub fn inputs(&self) -> Result<Map<String, Value>, StoreError> {
        json(&self.inputs, "inputs")
    }

    /// # Errors
    /// A stored JSON column that does not parse.
    pub fn options(&self) -> Result<Map<String, Value>, StoreError> {
        json(&self.options, "options")
    }

    /// # Errors
    /// A stored JSON column that does not parse.
    pub fn outputs(&self) -> Result<Vec<OutputSpec>, StoreError> {
        json(&self.outputs, "outputs")
    }

    /// # Errors
    /// A stored JSON column that does not parse.
    pub fn result(&self) -> Result<Option<TaskResult>, StoreError> {
        self.result
            .as_deref()
            .map(|r| json(r, "result"))
            .transpose()
    }

    /// The spec this row was made from, with `depends_on` as given.
    ///
    /// # Errors
    /// A stored value that does not parse.
    pub fn spec(&self, depends_on: Vec<String>) -> Result<TaskSpec, StoreError> {
        Ok(TaskSpec {
            id: self.id,
            name: self.name.clone(),
            server_id: ServerId::parse(&self.server_id).map_err(StoreError::Corrupt)?,
            group: self.group.clone(),
            config: self.config.clone(),
            inputs: self.inputs()?,
            outputs: self.outputs()?,
            options: self.options()?,
            depends_on,
            on_dependency_failure: self.on_dependency_failure,
            timeout_s: self.timeout_s as u32,
            retries: self.retries as u32,
            retry_delay_s: self.retry_delay_s as u32,
            delivery: self.delivery,
        })
    }

    /// What a worker needs to run the current attempt.
    ///
    /// # Errors
    /// A stored value that does not parse.
    pub fn message(&self) -> Result<TaskMessage, StoreError> {
        Ok(TaskMessage {
            id: self.id,
            workflow_id: self.workflow_id,
            name: self.name.clone(),
            server_id: ServerId::parse(&self.server_id).map_err(StoreError::Corrupt)?,
            group: self.group.clone(),
            config: self.config.clone(),
            inputs: self.inputs()?,
            outputs: self.outputs()?,
            options: self.options()?,
            timeout_s: self.timeout_s as u32,
            attempt: self.attempt as u32,
            delivery: self.delivery,
        })
    }
}

/// What an outbox row asks the relay to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A `run_task` call for one attempt, to the server's task queue.
    Task,
    /// A `cancel_task` cast, to the server's control queue.
    Cancel,
    /// An oslo notification `bora.task.end`.
    TaskEnd,
    /// An oslo notification `bora.workflow.end`.
    WorkflowEnd,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Task => "task",
            OutboxKind::Cancel => "cancel",
            OutboxKind::TaskEnd => "task_end",
            OutboxKind::WorkflowEnd => "workflow_end",
        }
    }
}

/// One due outbox message.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub kind: OutboxKind,
    /// The task concerned; `None` for a workflow's end.
    pub task_id: Option<TaskId>,
    /// The workflow of a workflow's end.
    pub workflow_id: Option<WorkflowId>,
    pub attempt: i64,
    pub server_id: String,
    /// When the transaction that queued it committed (microseconds); the
    /// start of the publish latency.
    pub created_at: i64,
    /// The task as it is now; `None` once deleted (a cancel may outlive it).
    pub task: Option<TaskRow>,
}

impl OutboxItem {
    /// The message `kind` about `task` in outbox row `id`, queued at `now`.
    pub(super) fn of_task(id: i64, kind: OutboxKind, task: &TaskRow, now: i64) -> Self {
        Self {
            id,
            kind,
            task_id: Some(task.id),
            workflow_id: Some(task.workflow_id),
            attempt: task.attempt,
            server_id: task.server_id.clone(),
            created_at: now,
            task: Some(task.clone()),
        }
    }

    pub(super) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        let kind: String = row.try_get("o_kind")?;
        let task_id: String = row.try_get("o_task_id")?;
        let workflow_id: Option<String> = row.try_get("o_workflow_id")?;
        let t_state: Option<String> = row.try_get("t_state")?;
        Ok(Self {
            id: row.try_get("o_id")?,
            kind: match kind.as_str() {
                "task" => OutboxKind::Task,
                "cancel" => OutboxKind::Cancel,
                "task_end" => OutboxKind::TaskEnd,
                "workflow_end" => OutboxKind::WorkflowEnd,
                other => return Err(StoreError::Corrupt(format!("outbox kind {other:?}"))),
            },
            task_id: (!task_id.is_empty())
                .then(|| parse_id(&task_id))
                .transpose()?,
            workflow_id: workflow_id.as_deref().map(parse_id).transpose()?,
            attempt: row.try_get("o_attempt")?,
            server_id: row.try_get("o_server_id")?,
            created_at: row.try_get("o_created_at")?,
            task: match t_state {
                Some(_) => Some(TaskRow::from_row(row)?),
                None => None,
            },
        })
    }
}

/// A task of `workflow` by id, else by name.
pub(super) async fn task_by_ref(
    conn: &mut AnyConnection,
    workflow: WorkflowId,
    reference: &str,
) -> Result<Option<TaskRow>, StoreError> {
    let by_id = match reference.parse::<TaskId>() {
        Ok(id) => {
            sqlx::query(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE id = $1 AND workflow_id = $2"
            ))
            .bind(id.to_string())
            .bind(workflow.to_string())
            .fetch_optional(&mut *conn)
            .await?
        }
        Err(_) => None,
    };
    let row = match by_id {
        Some(r) => Some(r),
        None => {
            sqlx::query(concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE workflow_id = $1 AND name = $2"
            ))
            .bind(workflow.to_string())
            .bind(reference)
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    row.as_ref().map(TaskRow::from_row).transpose()
}

/// One recorded state change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    /// Increasing in commit order; the SSE event id.
    pub id: i64,
    pub workflow_id: WorkflowId,
    /// `task` or `workflow`.
    pub kind: String,
    /// The new state (a task state, or a workflow state for `workflow` events).
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i64>,
    /// Microseconds since the epoch.
    pub at: i64,
}

impl EventRow {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
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

/// A server bora knows: registered through the API, or seen in a heartbeat.
#[derive(Debug, Clone)]
pub struct ServerRow {
    pub server_id: String,
    pub kind: ServerKind,
    pub registered: bool,
    pub last_seen: Option<i64>,
    pub created_at: i64,
}

impl ServerRow {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, StoreError> {
        Self::from_columns(
            row,
            ["server_id", "kind", "registered", "last_seen", "created_at"],
        )
    }

    /// The server columns of a join, aliased `s_<column>`; `None` when the
    /// join found no server row.
    pub(super) fn from_joined(row: &AnyRow) -> Result<Option<Self>, StoreError> {
        if row.try_get::<Option<String>, _>("s_server_id")?.is_none() {
            return Ok(None);
        }
        Self::from_columns(
            row,
            [
                "s_server_id",
                "s_kind",
                "s_registered",
                "s_last_seen",
                "s_created_at",
            ],
        )
        .map(Some)
    }

    fn from_columns(
        row: &AnyRow,
        [id, kind, registered, last_seen, created_at]: [&str; 5],
    ) -> Result<Self, StoreError> {
        let kind: String = row.try_get(kind)?;
        Ok(Self {
            server_id: row.try_get(id)?,
            kind: parse(&kind)?,
            registered: row.try_get::<i64, _>(registered)? != 0,
            last_seen: row.try_get(last_seen)?,
            created_at: row.try_get(created_at)?,
        })
    }
}

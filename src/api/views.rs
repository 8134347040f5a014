//! Response bodies: workflows and tasks as the REST API (and later the RPC
//! API) return them, built from store rows plus what is derived (state,
//! counts, `blocked_by`, `server_online`), and the other bodies of the API
//! (lists, the event stream's events, health). Each derives its OpenAPI
//! schema, so `/openapi.json` describes exactly what is serialised.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::domain::{
    Delivery, OnDependencyFailure, OutputSpec, TaskCounts, TaskId, TaskState, WorkflowId,
    WorkflowState,
};
use crate::protocol::TaskResult;
use crate::store::{EventRow, StoreError, TaskRow, WorkflowRow};

/// RFC 3339 with microseconds, UTC.
pub fn timestamp(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    pub id: WorkflowId,
    pub name: String,
    #[schema(required)]
    pub description: Option<String>,
    pub state: WorkflowState,
    pub task_counts: TaskCounts,
    pub created_at: String,
    pub updated_at: String,
    /// Only in the answer to a create with tasks: the tasks created.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub tasks: Option<Vec<TaskView>>,
}

impl WorkflowView {
    pub fn new(row: WorkflowRow, counts: TaskCounts) -> Self {
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            state: WorkflowState::derive(row.cancelled, &counts),
            task_counts: counts,
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
            tasks: None,
        }
    }
}

/// A dependency of a task and where it stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DependencyView {
    pub name: String,
    pub state: TaskState,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub id: TaskId,
    pub workflow_id: WorkflowId,
    pub name: String,
    pub server_id: String,
    pub group: String,
    pub config: String,
    pub inputs: Map<String, Value>,
    pub outputs: Vec<OutputSpec>,
    pub options: Map<String, Value>,
    /// Names of the dependencies.
    pub depends_on: Vec<String>,
    pub on_dependency_failure: OnDependencyFailure,
    pub timeout_s: i64,
    pub retries: i64,
    pub retry_delay_s: i64,
    pub delivery: Delivery,
    pub state: TaskState,
    pub attempt: i64,
    #[schema(required)]
    pub result: Option<TaskResult>,
    /// The unfinished dependencies of a waiting task.
    pub blocked_by: Vec<String>,
    /// Every dependency with its current state (what a waiting task waits for).
    pub dependencies: Vec<DependencyView>,
    /// Whether the target server's worker sent a heartbeat recently.
    pub server_online: bool,
    /// The last heartbeat from the target server's worker, if any ever came.
    #[schema(required)]
    pub server_last_seen: Option<String>,
    /// Only for a queued task shown alone: the messages ready in its server's
    /// queue, an upper bound of those ahead of it (it counts the task itself
    /// and anything published after it). Null when not asked or the broker
    /// did not answer.
    #[schema(required)]
    pub messages_ahead: Option<u32>,
    pub created_at: String,
    #[schema(required)]
    pub queued_at: Option<String>,
    #[schema(required)]
    pub started_at: Option<String>,
    #[schema(required)]
    pub finished_at: Option<String>,
}

impl TaskView {
    /// `deps` are the task's dependencies as (name, state).
    ///
    /// # Errors
    /// A stored JSON column that does not parse.
    pub fn new(
        row: TaskRow,
        deps: &[(String, TaskState)],
        server_last_seen: Option<i64>,
        server_online: bool,
    ) -> Result<Self, StoreError> {
        let blocked_by = if row.state == TaskState::Waiting {
            deps.iter()
                .filter(|(_, s)| !s.is_terminal())
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            inputs: row.inputs()?,
            outputs: row.outputs()?,
            options: row.options()?,
            result: row.result()?,
            id: row.id,
            workflow_id: row.workflow_id,
            name: row.name,
            server_id: row.server_id,
            group: row.group,
            config: row.config,
            depends_on: deps.iter().map(|(n, _)| n.clone()).collect(),
            dependencies: deps
                .iter()
                .map(|(name, state)| DependencyView {
                    name: name.clone(),
                    state: *state,
                })
                .collect(),
            on_dependency_failure: row.on_dependency_failure,
            timeout_s: row.timeout_s,
            retries: row.retries,
            retry_delay_s: row.retry_delay_s,
            delivery: row.delivery,
            state: row.state,
            attempt: row.attempt,
            blocked_by,
            server_online,
            server_last_seen: server_last_seen.map(timestamp),
            messages_ahead: None,
            created_at: timestamp(row.created_at),
            queued_at: row.queued_at.map(timestamp),
            started_at: row.started_at.map(timestamp),
            finished_at: row.finished_at.map(timestamp),
        })
    }
}

/// `GET /v1/workflows`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
    /// Pass as `marker` for the next page; null on the last page.
    #[schema(required)]
    pub next_marker: Option<WorkflowId>,
}

/// `GET /v1/workflows/{wf}/tasks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
}

/// One state change, the data of a `task` or `workflow` server-sent event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Increasing in commit order; also the SSE `id` to resume from.
    pub id: i64,
    pub workflow_id: WorkflowId,
    /// `task` (a task entered `state`) or `workflow` (the workflow was cancelled).
    pub kind: String,
    /// The state entered: a task state, or `cancelled` for a workflow event.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub task_id: Option<TaskId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub task_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub server_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub attempt: Option<i64>,
    /// When the change committed (RFC 3339).
    pub at: String,
}

impl From<EventRow> for EventView {
    fn from(e: EventRow) -> Self {
        Self {
            id: e.id,
            workflow_id: e.workflow_id,
            kind: e.kind,
            state: e.state,
            task_id: e.task_id,
            task_name: e.task_name,
            server_id: e.server_id,
            attempt: e.attempt,
            at: timestamp(e.at),
        }
    }
}

/// The data of the final `end` event: the workflow ended (or was deleted)
/// and every event before it was sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamEnd {
    pub workflow_id: WorkflowId,
    /// `succeeded`, `failed`, `cancelled`, or `deleted`.
    pub state: String,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`: `ok` or `unreachable` for the whole and for each part.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    pub store: String,
    pub broker: String,
}

/// `GET .../tasks/{task}?format=heat`: the result as Heat's signal body
/// (`deploy_*` plus one key per output), ready for `signal_software_deployment`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeatSignal {
    pub deploy_stdout: String,
    pub deploy_stderr: String,
    pub deploy_status_code: i64,
    /// Present when the attempt failed for a reason other than the script.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub deploy_error: Option<String>,
    /// The outputs, one key each.
    #[serde(flatten)]
    pub outputs: Map<String, Value>,
}

impl From<Map<String, Value>> for HeatSignal {
    /// Splits [`crate::protocol::TaskResult::to_heat`]'s map into the
    /// `deploy_*` keys and the outputs.
    fn from(mut m: Map<String, Value>) -> Self {
        let mut text = |key: &str| match m.remove(key) {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        let deploy_stdout = text("deploy_stdout");
        let deploy_stderr = text("deploy_stderr");
        let deploy_status_code = m
            .remove("deploy_status_code")
            .and_then(|v| v.as_i64())
            .unwrap_or(-1);
        let deploy_error = match m.remove("deploy_error") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Self {
            deploy_stdout,
            deploy_stderr,
            deploy_status_code,
            deploy_error,
            outputs: m,
        }
    }
}

//! The REST API's own bodies: lists, the event stream's events, health,
//! and Heat's signal format. Workflow and task views are the application's
//! ([`crate::app::views`]), shared with the RPC API. Each derives its
//! OpenAPI schema, so `/openapi.json` describes exactly what is serialised.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub use crate::app::views::{DependencyView, TaskView, WorkflowView, timestamp};
use crate::domain::{TaskId, WorkflowId};
use crate::store::EventRow;

/// `GET /v1/workflows`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    /// This page's workflows, in id (creation) order.
    pub workflows: Vec<WorkflowView>,
    /// Pass as `marker` for the next page; null on the last page.
    #[schema(required)]
    pub next_marker: Option<WorkflowId>,
}

/// `GET /v1/workflows/{wf}/tasks`: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// This page's tasks that match the filters, in id (creation) order.
    pub tasks: Vec<TaskView>,
    /// Pass as `marker` for the next page; null on the last page.
    #[schema(required)]
    pub next_marker: Option<TaskId>,
}

/// One state change, the data of a `task` or `workflow` server-sent event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Increasing in commit order; also the SSE `id` to resume from.
    pub id: i64,
    /// The workflow the change belongs to.
    pub workflow_id: WorkflowId,
    /// `task` (a task entered `state`) or `workflow` (the workflow was cancelled).
    pub kind: String,
    /// The state entered: a task state, or `cancelled` for a workflow event.
    pub state: String,
    /// The task that changed; absent for `workflow` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub task_id: Option<TaskId>,
    /// The task's name at the change; absent for `workflow` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub task_name: Option<String>,
    /// The task's server at the change; absent for `workflow` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub server_id: Option<String>,
    /// The task's attempt at the change (0 before its first); absent for
    /// `workflow` events.
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
    /// The workflow whose stream this ends.
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
    /// `ok` when both the store and the broker are.
    pub status: String,
    /// `ok` when the store answered a ping.
    pub store: String,
    /// `ok` when a connection to the broker is up (checked within 3 s).
    pub broker: String,
}

/// `GET .../tasks/{task}?format=heat`: the result as Heat's signal body
/// (`deploy_*` plus one key per output), ready for `signal_software_deployment`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeatSignal {
    /// The captured standard output (capped, head and tail).
    pub deploy_stdout: String,
    /// The captured standard error (capped, head and tail).
    pub deploy_stderr: String,
    /// The process exit code; -1 when no process ran or it was killed.
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

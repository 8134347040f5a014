//! Response bodies: workflows and tasks as the REST API (and later the RPC
//! API) return them, built from store rows plus what is derived (state,
//! counts, `blocked_by`, `server_online`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{
    Delivery, OnDependencyFailure, OutputSpec, TaskCounts, TaskId, TaskState, WorkflowId,
    WorkflowState,
};
use crate::protocol::TaskResult;
use crate::store::{StoreError, TaskRow, WorkflowRow};

/// RFC 3339 with microseconds, UTC.
pub fn timestamp(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Debug, Serialize)]
pub struct WorkflowView {
    pub id: WorkflowId,
    pub name: String,
    pub description: Option<String>,
    pub state: WorkflowState,
    pub task_counts: TaskCounts,
    pub created_at: String,
    pub updated_at: String,
    /// Only in the answer to a create with tasks: the tasks created.
    #[serde(skip_serializing_if = "Option::is_none")]
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

#[derive(Debug, Serialize)]
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
    pub result: Option<TaskResult>,
    /// The unfinished dependencies of a waiting task.
    pub blocked_by: Vec<String>,
    /// Whether the target server's worker sent a heartbeat recently.
    pub server_online: bool,
    pub created_at: String,
    pub queued_at: Option<String>,
    pub started_at: Option<String>,
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
            on_dependency_failure: row.on_dependency_failure,
            timeout_s: row.timeout_s,
            retries: row.retries,
            retry_delay_s: row.retry_delay_s,
            delivery: row.delivery,
            state: row.state,
            attempt: row.attempt,
            blocked_by,
            server_online,
            created_at: timestamp(row.created_at),
            queued_at: row.queued_at.map(timestamp),
            started_at: row.started_at.map(timestamp),
            finished_at: row.finished_at.map(timestamp),
        })
    }
}

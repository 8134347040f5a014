//! The read models both APIs answer with: a workflow with its derived state
//! and counts, a task with what is derived about it (`blocked_by`, its
//! dependencies' states, whether its server is online). REST serialises
//! them as its bodies (their OpenAPI schemas are derived here), the RPC API
//! as its results, so the two cannot drift.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::domain::{
    Corrupt, Delivery, OnDependencyFailure, OutputSpec, Task, TaskCounts, TaskId, TaskState,
    Workflow, WorkflowId, WorkflowState,
};
use crate::protocol::TaskResult;

pub use crate::protocol::timestamp;

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
    pub fn new(row: Workflow, counts: TaskCounts) -> Self {
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
        row: Task,
        deps: &[(String, TaskState)],
        server_last_seen: Option<i64>,
        server_online: bool,
    ) -> Result<Self, Corrupt> {
        let state = row.state();
        let blocked_by = crate::domain::blocked_by(state, deps);
        Ok(Self {
            inputs: row.inputs()?,
            outputs: row.outputs()?,
            options: row.options()?,
            result: TaskResult::of_task(&row)?,
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
            state,
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

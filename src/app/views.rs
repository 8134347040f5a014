//! The read models both APIs answer with: a workflow with its derived state
//! and counts, a task with what is derived about it (`blocked_by`, its
//! dependencies' states, whether its server is online), a server with its
//! labels and last heartbeat. REST serialises
//! them as its bodies (their OpenAPI schemas are derived here), the RPC API
//! as its results, so the two cannot drift.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::domain::secret::{mask_all, may_hold_sealed};
use crate::domain::{
    Corrupt, Delivery, OnDependencyFailure, OutputSpec, Target, Task, TaskCounts, TaskId,
    TaskState, Workflow, WorkflowId, WorkflowState,
};
use crate::domain::{Labels, ServerKind};
use crate::protocol::TaskResult;
use crate::store::ServerRow;

pub use crate::protocol::timestamp;

/// The entry of `blocked_by` that names a workflow's pause.
pub const PAUSED: &str = "workflow paused";

/// A workflow as both APIs show it: its own fields, its state derived from
/// its tasks, and how many tasks are in each state.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    /// Never changes.
    pub id: WorkflowId,
    /// For people; not unique.
    pub name: String,
    /// For people; null when none was given.
    #[schema(required)]
    pub description: Option<String>,
    /// Derived from its tasks and whether it was cancelled.
    pub state: WorkflowState,
    /// Paused through the API: nothing more of it is published until it is
    /// resumed (tasks already queued or running go on).
    pub paused: bool,
    /// The number of its tasks in every state.
    pub task_counts: TaskCounts,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The last change of its name, description or cancel flag (RFC 3339).
    pub updated_at: String,
    /// Only in the answer to a create with tasks: the tasks created.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub tasks: Option<Vec<TaskView>>,
}

impl WorkflowView {
    /// The view of a stored workflow whose tasks number `counts`; `tasks`
    /// is left out.
    pub fn new(row: Workflow, counts: TaskCounts) -> Self {
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            state: WorkflowState::derive(row.cancelled, &counts),
            paused: row.paused,
            task_counts: counts,
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
            tasks: None,
        }
    }
}

/// A group's child, as its group lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChildView {
    /// `<group>[<server>]`.
    pub name: String,
    /// The server it runs on.
    pub server_id: String,
    /// Where it stands.
    pub state: TaskState,
    /// Its current attempt.
    pub attempt: i64,
}

impl ChildView {
    /// The entry of `child` in its group's list.
    pub fn of(child: &Task) -> Self {
        Self {
            name: child.name.clone(),
            server_id: child.server_id.clone(),
            state: child.state(),
            attempt: child.attempt,
        }
    }
}

/// A server as both APIs show it: its registration, its labels and its
/// last heartbeat.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerView {
    /// Its id: 1–64 of `[A-Za-z0-9_-]`.
    pub server_id: String,
    /// What consumes its queue (`guest` for a server only seen).
    pub kind: ServerKind,
    /// Registered through the API (else only seen in heartbeats).
    pub registered: bool,
    /// Its labels, key → value, set only through the API.
    #[schema(value_type = BTreeMap<String, String>)]
    pub labels: Labels,
    /// Its worker's last heartbeat (RFC 3339), null before the first.
    #[schema(required)]
    pub last_seen: Option<String>,
    /// Whether that heartbeat is recent.
    pub online: bool,
    /// When bora first registered or heard from it (RFC 3339).
    pub created_at: String,
    /// How many of its tasks are unfinished (waiting, queued or running);
    /// in `GET /v1/servers` and `GET /v1/servers/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub unfinished_tasks: Option<u64>,
}

impl ServerView {
    /// The view of a stored server; `online` says whether its last
    /// heartbeat is recent.
    pub fn new(row: ServerRow, online: bool) -> Self {
        Self {
            server_id: row.server_id,
            kind: row.kind,
            registered: row.registered,
            labels: row.labels,
            last_seen: row.last_seen.map(timestamp),
            online,
            created_at: timestamp(row.created_at),
            unfinished_tasks: None,
        }
    }
}

/// The servers bora knows, by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerList {
    /// Registered or seen in a heartbeat (filtered by label when asked).
    pub servers: Vec<ServerView>,
}

/// A dependency of a task and where it stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DependencyView {
    /// The dependency's name in the workflow.
    pub name: String,
    /// Its state now.
    pub state: TaskState,
}

/// A task as both APIs show it: its spec, where it stands, its last result,
/// and what is derived about it (what it waits for, whether its server is
/// online).
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// Never changes.
    pub id: TaskId,
    /// The workflow it belongs to.
    pub workflow_id: WorkflowId,
    /// Unique in its workflow.
    pub name: String,
    /// The server whose worker runs it; null for an approval gate, a group
    /// task, and a task for `any` matching server until it is released.
    #[schema(required)]
    pub server_id: Option<String>,
    /// The servers it targets by label (`labels`, `mode`, `batch`), with
    /// `servers`: those matched at its release (for `any`, the one chosen).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<Object>)]
    pub target: Option<Target>,
    /// For a group's child: its group's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub parent: Option<String>,
    /// For a group task: its children (one per matched server) and where
    /// each stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub children: Option<Vec<ChildView>>,
    /// The runner or hook that runs it (`bora.approval`: an approval gate).
    pub group: String,
    /// The script body, or the hook's config.
    pub config: String,
    /// Name → JSON value, as submitted (references included); a secret
    /// shows as `{"secret": "***"}`.
    pub inputs: Map<String, Value>,
    /// Once the task was released, what each input reference resolved to:
    /// `NAME -> {"value", "from": {"task", "task_id", "output", "attempt"}}`,
    /// and `"secret": true` with `"value": "***"` for a secret output.
    /// Absent for a task without references or not released yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub resolved_inputs: Option<Map<String, Value>>,
    /// The declared outputs.
    pub outputs: Vec<OutputSpec>,
    /// Passed through to hooks.
    pub options: Map<String, Value>,
    /// Names of the dependencies.
    pub depends_on: Vec<String>,
    /// What a dependency that ends unsuccessfully does to it.
    pub on_dependency_failure: OnDependencyFailure,
    /// Seconds an attempt may run before the worker kills it.
    pub timeout_s: i64,
    /// Extra attempts allowed after a failure or timeout.
    pub retries: i64,
    /// Seconds from a failed attempt to the publish of the next.
    pub retry_delay_s: i64,
    /// Each retry waits this many times longer than the one before.
    pub retry_backoff: f64,
    /// The longest delay before a retry, in seconds.
    pub retry_max_delay_s: i64,
    /// When set, only failures with these exit codes are retried (timeouts
    /// and lost workers always are); null: every failure is.
    #[schema(required)]
    pub retry_exit_codes: Option<Vec<i64>>,
    /// While a retry waits for its delay: when its message is due (RFC 3339).
    #[schema(required)]
    pub next_attempt_at: Option<String>,
    /// `at_least_once` or `at_most_once`.
    pub delivery: Delivery,
    /// Where it is in its life.
    pub state: TaskState,
    /// 0 until its first attempt goes out; the current attempt after.
    pub attempt: i64,
    /// The last result that came back (its `attempt` says whose), secret
    /// outputs shown as `"***"`; null until one did.
    #[schema(required)]
    pub result: Option<TaskResult>,
    /// Why a waiting task waits: the names of its unfinished dependencies,
    /// then `workflow paused` while its workflow is paused, or `retry at
    /// <time>` while a retry waits for its delay.
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
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When the current attempt was queued: the broker's confirm, or the
    /// worker's first report if that came first (RFC 3339).
    #[schema(required)]
    pub queued_at: Option<String>,
    /// When the current attempt reported that it started (RFC 3339).
    #[schema(required)]
    pub started_at: Option<String>,
    /// When it reached a terminal state (RFC 3339).
    #[schema(required)]
    pub finished_at: Option<String>,
}

impl TaskView {
    /// `deps` are the task's dependencies as (name, state); `paused`:
    /// whether its workflow is.
    ///
    /// # Errors
    /// A stored JSON column that does not parse.
    pub fn new(
        row: Task,
        deps: &[(String, TaskState)],
        paused: bool,
        server_last_seen: Option<i64>,
        server_online: bool,
    ) -> Result<Self, Corrupt> {
        let state = row.state();
        let mut blocked_by = crate::domain::blocked_by(state, deps);
        if paused && row.awaits_release() {
            blocked_by.push(PAUSED.to_owned());
        }
        if let (TaskState::Waiting, Some(at)) = (state, row.next_attempt_at) {
            blocked_by.push(format!("retry at {}", timestamp(at)));
        }
        // Secrets are kept sealed; a view shows them as `***`.
        let mut inputs = row.inputs()?;
        if may_hold_sealed(&row.inputs) {
            mask_all(&mut inputs);
        }
        let mut resolved_inputs = row.resolved_inputs()?;
        if let Some(r) = resolved_inputs.as_mut() {
            mask_all(r);
        }
        Ok(Self {
            inputs,
            resolved_inputs,
            outputs: row.outputs()?,
            options: row.options()?,
            result: TaskResult::of_task(&row)?.map(TaskResult::masked),
            id: row.id,
            workflow_id: row.workflow_id,
            name: row.name,
            server_id: (!row.server_id.is_empty()).then_some(row.server_id),
            target: row.target,
            parent: None,
            children: None,
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
            retry_backoff: row.retry_backoff,
            retry_max_delay_s: row.retry_max_delay_s,
            retry_exit_codes: row.retry_exit_codes,
            next_attempt_at: row.next_attempt_at.map(timestamp),
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

/// One page of a workflow's tasks, as both APIs list them.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    /// The page's tasks, in id (creation) order.
    pub tasks: Vec<TaskView>,
    /// The last task's id when more follow (the next page's `marker`);
    /// null on the last page.
    #[schema(required)]
    pub next_marker: Option<TaskId>,
}

/// The result of one attempt of a task (`GET .../attempts`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// The attempt, from 1 (0: the task failed before its first attempt
    /// went out, on an input it could not resolve).
    pub attempt: i64,
    /// How the attempt ended, as its result says: `succeeded`, `failed` or
    /// `timed_out`.
    pub state: TaskState,
    /// What came back.
    pub result: TaskResult,
}

/// Every attempt of a task that has a result, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptsView {
    /// The task's current attempt.
    pub current_attempt: i64,
    /// The results, oldest first; the last is the task's `result`.
    pub attempts: Vec<AttemptView>,
}

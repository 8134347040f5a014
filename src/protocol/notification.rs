//! oslo notifications (`bora.task.end`, `bora.workflow.end`) and their
//! payloads. The payloads are wire types of their own, built from the
//! domain's values: changing a REST view never changes a notification.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{TaskResult, encode_envelope, fresh_unique_id};
use crate::domain::{
    Corrupt, Delivery, OnDependencyFailure, OutputSpec, Task, TaskCounts, TaskId, TaskState,
    Workflow, WorkflowId, WorkflowState,
};

/// RFC 3339 with microseconds, UTC: how every time is written in JSON.
pub fn timestamp(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An oslo.messaging Notifier message (messaging v2 driver): what a
/// `NotificationListener` receives as `(ctxt, publisher_id, event_type,
/// payload, metadata)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// A fresh UUID4 per message.
    pub message_id: String,
    /// Who sent it: `notifications.publisher_id`, else `bora.<hostname>`.
    pub publisher_id: String,
    /// `bora.task.end` or `bora.workflow.end`.
    pub event_type: String,
    /// `INFO` or `ERROR` (upper case, as oslo's Notifier sends it).
    pub priority: String,
    /// A [`TaskEndPayload`] or a [`WorkflowEndPayload`], as JSON.
    pub payload: Value,
    /// Python's `str(datetime.utcnow())`: `2026-11-25 04:51:47.722413`.
    pub timestamp: String,
    /// A fresh deduplication key per message.
    #[serde(rename = "_unique_id")]
    pub unique_id: String,
}

impl Notification {
    /// A notification sent now: priority `ERROR` if `error`, else `INFO`.
    pub fn new(publisher_id: &str, event_type: &str, error: bool, payload: Value) -> Self {
        Self {
            message_id: Uuid::new_v4().to_string(),
            publisher_id: publisher_id.to_owned(),
            event_type: event_type.to_owned(),
            priority: if error { "ERROR" } else { "INFO" }.to_owned(),
            payload,
            timestamp: chrono::Utc::now()
                .naive_utc()
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string(),
            unique_id: fresh_unique_id(),
        }
    }

    /// The routing key under `topic`: `<topic>.info` or `<topic>.error`.
    pub fn routing_key(&self, topic: &str) -> String {
        format!("{topic}.{}", self.priority.to_lowercase())
    }

    /// The enveloped body.
    pub fn encode(&self) -> Vec<u8> {
        encode_envelope(self)
    }
}

/// A dependency of a task and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyState {
    /// The dependency's name.
    pub name: String,
    /// Its state when the notification was rendered.
    pub state: TaskState,
}

/// The payload of `bora.task.end`: the task as it ended and its last
/// result, without what may carry credentials (SPEC 7.4): no inputs, no
/// config, the result's streams emptied (their sizes and digests stay) and
/// its secret outputs masked (`"***"`).
/// Notifications pile up in `notifications.*` when nobody listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEndPayload {
    /// The task.
    pub id: TaskId,
    /// Its workflow.
    pub workflow_id: WorkflowId,
    /// Unique in its workflow.
    pub name: String,
    /// The server whose worker ran it (or would have).
    pub server_id: String,
    /// The runner or hook.
    pub group: String,
    /// The declared outputs.
    pub outputs: Vec<OutputSpec>,
    /// Passed through to hooks.
    pub options: Map<String, Value>,
    /// Names of the dependencies.
    pub depends_on: Vec<String>,
    /// What a dependency that ends unsuccessfully does to it.
    pub on_dependency_failure: OnDependencyFailure,
    /// Seconds an attempt may run.
    pub timeout_s: i64,
    /// Extra attempts allowed after a failure or timeout.
    pub retries: i64,
    /// Seconds from a failed attempt to the publish of the next.
    pub retry_delay_s: i64,
    /// `at_least_once` or `at_most_once`.
    pub delivery: Delivery,
    /// The terminal state it ended in.
    pub state: TaskState,
    /// Its last attempt; 0 if none went out (skipped, cancelled early).
    pub attempt: i64,
    /// The last result, with `stdout` and `stderr` emptied and secret
    /// outputs masked; null if none came back.
    pub result: Option<TaskResult>,
    /// The unfinished dependencies of a waiting task (empty at an end).
    pub blocked_by: Vec<String>,
    /// Every dependency with its state.
    pub dependencies: Vec<DependencyState>,
    /// Whether its server's worker sent a heartbeat recently.
    pub server_online: bool,
    /// Its server's last heartbeat (RFC 3339), if any ever came.
    pub server_last_seen: Option<String>,
    /// Always null here (a REST-only hint).
    pub messages_ahead: Option<u32>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When its last attempt was queued (RFC 3339).
    pub queued_at: Option<String>,
    /// When its last attempt reported that it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
}

impl TaskEndPayload {
    /// The payload for `task` with its dependencies as (name, state) and its
    /// server's last heartbeat.
    ///
    /// # Errors
    /// A stored value of the task that does not parse.
    pub fn new(
        task: &Task,
        deps: &[(String, TaskState)],
        server_last_seen: Option<i64>,
        server_online: bool,
    ) -> Result<Self, Corrupt> {
        let mut result: Option<TaskResult> = TaskResult::of_task(task)?.map(TaskResult::masked);
        if let Some(r) = result.as_mut() {
            r.stdout.clear();
            r.stderr.clear();
        }
        let blocked_by = crate::domain::blocked_by(task.state(), deps);
        Ok(Self {
            id: task.id,
            workflow_id: task.workflow_id,
            name: task.name.clone(),
            server_id: task.server_id.clone(),
            group: task.group.clone(),
            outputs: task.outputs()?,
            options: task.options()?,
            depends_on: deps.iter().map(|(n, _)| n.clone()).collect(),
            on_dependency_failure: task.on_dependency_failure,
            timeout_s: task.timeout_s,
            retries: task.retries,
            retry_delay_s: task.retry_delay_s,
            delivery: task.delivery,
            state: task.state(),
            attempt: task.attempt,
            result,
            blocked_by,
            dependencies: deps
                .iter()
                .map(|(name, state)| DependencyState {
                    name: name.clone(),
                    state: *state,
                })
                .collect(),
            server_online,
            server_last_seen: server_last_seen.map(timestamp),
            messages_ahead: None,
            created_at: timestamp(task.created_at),
            queued_at: task.queued_at.map(timestamp),
            started_at: task.started_at.map(timestamp),
            finished_at: task.finished_at.map(timestamp),
        })
    }
}

/// The payload of `bora.workflow.end`: the workflow with its derived state
/// and counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowEndPayload {
    /// The workflow.
    pub id: WorkflowId,
    /// For people; not unique.
    pub name: String,
    /// For people.
    pub description: Option<String>,
    /// The state it ended in: `succeeded`, `failed` or `cancelled`.
    pub state: WorkflowState,
    /// The number of its tasks in every state.
    pub task_counts: TaskCounts,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The last change of its name, description or cancel flag (RFC 3339).
    pub updated_at: String,
}

impl WorkflowEndPayload {
    /// The payload for `workflow` with these task counts.
    pub fn new(workflow: &Workflow, counts: TaskCounts) -> Self {
        Self {
            id: workflow.id,
            name: workflow.name.clone(),
            description: workflow.description.clone(),
            state: WorkflowState::derive(workflow.cancelled, &counts),
            task_counts: counts,
            created_at: timestamp(workflow.created_at),
            updated_at: timestamp(workflow.updated_at),
        }
    }
}

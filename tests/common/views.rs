//! Typed views of the REST API's bodies, for tests that check what a
//! workflow, task or event *is* rather than how it is written on the wire.
//!
//! The crate's own views only derive `Serialize`, so these are the test
//! side's, read strictly: a field that is missing or of the wrong type fails
//! the test with the body it came from (see [`parse`]). Only the `Option`
//! fields may be null, as in the API. States stay strings, compared with
//! their wire names (`"succeeded"`), so the tests still pin those names.
//!
//! Tests about the JSON itself (error bodies, the Heat format, OpenAPI,
//! notifications, the CLI's `--json`) keep reading `serde_json::Value`.

#![allow(dead_code)]

use bora::domain::{TaskId, WorkflowId};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// An RFC 3339 timestamp as the API writes it.
pub type Timestamp = DateTime<Utc>;

/// Reads `body` as `T`; on a mismatch the test fails naming `what` and
/// showing the body.
pub fn parse<T: DeserializeOwned>(what: &str, body: Value) -> T {
    match serde_json::from_value(body.clone()) {
        Ok(t) => t,
        Err(e) => panic!("{what}: unexpected body ({e}): {body}"),
    }
}

/// `GET /v1/workflows/{wf}` (and the answer to a create, a PATCH, a cancel).
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowOut {
    pub id: WorkflowId,
    pub name: String,
    pub description: Option<String>,
    pub state: String,
    pub paused: bool,
    pub task_counts: TaskCountsOut,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Only in the answer to a create with tasks.
    pub tasks: Option<Vec<TaskOut>>,
}

impl WorkflowOut {
    /// The id as it goes into a path.
    pub fn id(&self) -> String {
        self.id.to_string()
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// Tasks per state. Every state is in the JSON, and only those: a new state
/// fails here until it is added, so comparing two counts compares them all.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCountsOut {
    pub waiting: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    pub skipped: u64,
}

/// `GET /v1/workflows/{wf}/tasks/{task}` (the fields tests read).
#[derive(Debug, Clone, Deserialize)]
pub struct TaskOut {
    pub id: TaskId,
    pub workflow_id: WorkflowId,
    pub name: String,
    /// Null for an approval gate and a group task.
    pub server_id: Option<String>,
    /// A target by label, with the servers matched once released.
    #[serde(default)]
    pub target: Option<Value>,
    /// A group's child names its group.
    #[serde(default)]
    pub parent: Option<String>,
    /// A group lists its children.
    #[serde(default)]
    pub children: Option<Vec<ChildOut>>,
    pub group: String,
    pub config: String,
    pub inputs: Map<String, Value>,
    /// What the input references resolved to, once released.
    #[serde(default)]
    pub resolved_inputs: Option<Map<String, Value>>,
    pub depends_on: Vec<String>,
    pub timeout_s: i64,
    pub retries: i64,
    pub retry_delay_s: i64,
    pub retry_backoff: f64,
    pub retry_max_delay_s: i64,
    pub retry_exit_codes: Option<Vec<i64>>,
    pub next_attempt_at: Option<Timestamp>,
    pub state: String,
    pub attempt: i64,
    pub result: Option<ResultOut>,
    pub blocked_by: Vec<String>,
    pub dependencies: Vec<DependencyOut>,
    pub server_online: bool,
    pub server_last_seen: Option<Timestamp>,
    pub messages_ahead: Option<u32>,
    pub created_at: Timestamp,
    pub queued_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl TaskOut {
    /// The server, which the test expects there (not an approval gate).
    #[track_caller]
    pub fn server(&self) -> &str {
        match &self.server_id {
            Some(s) => s,
            None => panic!("task {} has no server: {self:?}", self.name),
        }
    }

    /// The result, which the test expects there.
    #[track_caller]
    pub fn result(&self) -> &ResultOut {
        match &self.result {
            Some(r) => r,
            None => panic!("task {} has no result: {self:?}", self.name),
        }
    }

    #[track_caller]
    pub fn started_at(&self) -> Timestamp {
        match self.started_at {
            Some(t) => t,
            None => panic!("task {} never started: {self:?}", self.name),
        }
    }

    #[track_caller]
    pub fn finished_at(&self) -> Timestamp {
        match self.finished_at {
            Some(t) => t,
            None => panic!("task {} never finished: {self:?}", self.name),
        }
    }

    #[track_caller]
    pub fn queued_at(&self) -> Timestamp {
        match self.queued_at {
            Some(t) => t,
            None => panic!("task {} never queued: {self:?}", self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DependencyOut {
    pub name: String,
    pub state: String,
}

/// A task's result. Unlike the crate's `TaskResult` (whose fields all
/// default, to read what workers send), every field the API writes must be
/// there; `timed_out` is only written when true.
#[derive(Debug, Clone, Deserialize)]
pub struct ResultOut {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    pub outputs: Map<String, Value>,
    pub truncated: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_sha256: String,
    pub stderr_sha256: String,
    pub error: Option<String>,
    pub attempt: u32,
    #[serde(default)]
    pub timed_out: bool,
    /// Only for an approval gate a person decided.
    #[serde(default)]
    pub decision: Option<DecisionOut>,
    /// Only for a group: each server's child state.
    #[serde(default)]
    pub servers: Option<std::collections::BTreeMap<String, String>>,
}

/// A group's child as its group lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildOut {
    pub name: String,
    pub server_id: String,
    pub state: String,
    pub attempt: i64,
}

/// A person's decision on an approval gate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionOut {
    pub decision: String,
    pub comment: Option<String>,
    pub at: Timestamp,
}

/// `GET .../tasks/{task}/attempts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptsOut {
    pub current_attempt: i64,
    pub attempts: Vec<AttemptOut>,
}

/// One attempt's result.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptOut {
    pub attempt: i64,
    pub state: String,
    pub result: ResultOut,
}

/// `GET /v1/workflows`.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowListOut {
    pub workflows: Vec<WorkflowOut>,
    pub next_marker: Option<WorkflowId>,
}

impl WorkflowListOut {
    pub fn names(&self) -> Vec<&str> {
        self.workflows.iter().map(|w| w.name.as_str()).collect()
    }
}

/// `GET /v1/workflows/{wf}/tasks`.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskListOut {
    pub tasks: Vec<TaskOut>,
    pub next_marker: Option<TaskId>,
}

/// The data of a `task` or `workflow` event of `GET .../events`. Exactly
/// these fields, so two streams compare equal only if they are the same.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventOut {
    pub id: i64,
    pub workflow_id: WorkflowId,
    pub kind: String,
    pub state: String,
    pub task_id: Option<TaskId>,
    pub task_name: Option<String>,
    pub server_id: Option<String>,
    pub attempt: Option<i64>,
    pub at: Timestamp,
}

impl EventOut {
    /// The task's name; empty for a workflow event.
    pub fn task(&self) -> &str {
        self.task_name.as_deref().unwrap_or_default()
    }
}

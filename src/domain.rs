//! Domain types: ids, names, the task state machine and the validated specs
//! that the edges (REST, RPC) hand inward.
//!
//! Everything here is parsed at the edge, so inner code only sees valid values.
//! `TaskState::check_transition` is the one place that says which state moves are
//! legal; the tracker calls it before every write. This module knows nothing of
//! SQL, AMQP or HTTP.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Default `timeout_s` of a task: one hour, like Heat's software deployments.
pub const DEFAULT_TIMEOUT_S: u32 = 3600;
pub const MAX_TIMEOUT_S: u32 = 86_400;
pub const MAX_RETRIES: u32 = 100;
pub const MAX_RETRY_DELAY_S: u32 = 3600;
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_SERVER_ID_LEN: usize = 64;
pub const MAX_GROUP_LEN: usize = 255;

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, " (a UUIDv7, so ids sort by creation time).")]
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Serialize,
            Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(WorkflowId, "workflow");
uuid_id!(TaskId, "task");

/// A target server: 1–64 characters of `[A-Za-z0-9_-]` (Nova ids are UUIDs).
/// The charset keeps it safe inside queue names, routing keys and regexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServerId(String);

impl ServerId {
    /// # Errors
    /// An empty, too long or non-`[A-Za-z0-9_-]` id.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_SERVER_ID_LEN {
            return Err(format!(
                "server_id must be 1 to {MAX_SERVER_ID_LEN} characters"
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("server_id may only contain A-Z, a-z, 0-9, '_' and '-'".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServerId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a task is in its life. One closed set; the store persists these names.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Some dependency is not finished, or the task is handed to the outbox and
    /// the broker has not confirmed it yet.
    Waiting,
    /// Published and confirmed by the broker.
    Queued,
    /// The worker reported that it started.
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// A dependency ended unsuccessfully and `on_dependency_failure` is `skip`.
    Skipped,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Waiting,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
        TaskState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
            TaskState::Skipped => "skipped",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded
                | TaskState::Failed
                | TaskState::TimedOut
                | TaskState::Cancelled
                | TaskState::Skipped
        )
    }

    /// Whether a dependent with `policy` may run after its dependency ended in `self`.
    /// `None` while `self` is not terminal.
    pub fn satisfies(self, policy: OnDependencyFailure) -> Option<bool> {
        if !self.is_terminal() {
            return None;
        }
        Some(self == TaskState::Succeeded || policy == OnDependencyFailure::Run)
    }

    /// The one rule of legal state moves.
    ///
    /// A published attempt may report before its confirm is recorded (a fast
    /// worker), so `waiting` may move straight to `running` or an end; `queued`
    /// and `running` go back to `waiting` when a new attempt is scheduled (retry,
    /// lost worker). Terminal states never move.
    ///
    /// # Errors
    /// [`IllegalTransition`] for any other move, including staying in place.
    pub fn check_transition(self, to: TaskState) -> Result<(), IllegalTransition> {
        use TaskState::*;
        let ok = match (self, to) {
            (from, _) if from.is_terminal() => false,
            (Waiting, Queued | Running) => true,
            (Waiting, Succeeded | Failed | TimedOut | Cancelled | Skipped) => true,
            (Queued, Running | Waiting) => true,
            (Queued, Succeeded | Failed | TimedOut | Cancelled) => true,
            (Running, Waiting) => true,
            (Running, Succeeded | Failed | TimedOut | Cancelled) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal task state change from {from} to {to}")]
pub struct IllegalTransition {
    pub from: TaskState,
    pub to: TaskState,
}

/// Derived from a workflow's tasks (and its cancel flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    Empty,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl WorkflowState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowState::Empty => "empty",
            WorkflowState::Running => "running",
            WorkflowState::Succeeded => "succeeded",
            WorkflowState::Failed => "failed",
            WorkflowState::Cancelled => "cancelled",
        }
    }

    /// The state of a workflow with these task counts.
    ///
    /// `cancelled` when cancelled through the API; otherwise `empty`, `running`
    /// while any task is not terminal, `succeeded` when all succeeded, `failed`
    /// when any failed, timed out or was skipped, and `cancelled` when the only
    /// unsuccessful ends are single-task cancels.
    pub fn derive(cancelled: bool, counts: &TaskCounts) -> Self {
        if cancelled {
            return WorkflowState::Cancelled;
        }
        let total: u64 = counts.0.values().sum();
        let get = |s: TaskState| counts.0.get(&s).copied().unwrap_or(0);
        if total == 0 {
            WorkflowState::Empty
        } else if TaskState::ALL
            .iter()
            .any(|s| !s.is_terminal() && get(*s) > 0)
        {
            WorkflowState::Running
        } else if get(TaskState::Succeeded) == total {
            WorkflowState::Succeeded
        } else if get(TaskState::Failed) + get(TaskState::TimedOut) + get(TaskState::Skipped) > 0 {
            WorkflowState::Failed
        } else {
            WorkflowState::Cancelled
        }
    }
}

impl FromStr for WorkflowState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            WorkflowState::Empty,
            WorkflowState::Running,
            WorkflowState::Succeeded,
            WorkflowState::Failed,
            WorkflowState::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown workflow state {s:?}"))
    }
}

/// Number of tasks per state; every state is present in the JSON form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskCounts(pub BTreeMap<TaskState, u64>);

impl Serialize for TaskCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(TaskState::ALL.len()))?;
        for st in TaskState::ALL {
            m.serialize_entry(st.as_str(), &self.0.get(&st).copied().unwrap_or(0))?;
        }
        m.end()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDependencyFailure {
    #[default]
    Skip,
    Run,
}

impl OnDependencyFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnDependencyFailure::Skip => "skip",
            OnDependencyFailure::Run => "run",
        }
    }
}

impl FromStr for OnDependencyFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Self::Skip),
            "run" => Ok(Self::Run),
            _ => Err(format!("unknown on_dependency_failure {s:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    #[default]
    AtLeastOnce,
    AtMostOnce,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at_least_once",
            Delivery::AtMostOnce => "at_most_once",
        }
    }
}

impl FromStr for Delivery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "at_least_once" => Ok(Self::AtLeastOnce),
            "at_most_once" => Ok(Self::AtMostOnce),
            _ => Err(format!("unknown delivery {s:?}")),
        }
    }
}

/// What consumes a server's queue (SPEC 2, 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerKind {
    /// A bora worker on an untrusted machine: least-privilege broker user,
    /// results accepted only with its broker-validated `user_id`.
    #[default]
    Guest,
    /// A stock oslo.messaging RPC server: a trusted service.
    Oslo,
}

impl ServerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::Guest => "guest",
            ServerKind::Oslo => "oslo",
        }
    }
}

impl FromStr for ServerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "guest" => Ok(Self::Guest),
            "oslo" => Ok(Self::Oslo),
            _ => Err(format!("unknown server kind {s:?}: guest or oslo")),
        }
    }
}

/// A registration request (`POST /v1/servers`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    pub server_id: String,
    #[serde(default)]
    pub kind: ServerKind,
}

/// A declared output. In JSON either a bare name or `{name, error_output}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputSpec {
    pub name: String,
    /// Heat's rule: if this output comes back non-empty, the task failed.
    pub error_output: bool,
}

impl<'de> Deserialize<'de> for OutputSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            name: String,
            #[serde(default)]
            error_output: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Name(String),
            Full(Full),
        }
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom("an output is a name or {\"name\", \"error_output\"}")
        })? {
            Either::Name(name) => Ok(OutputSpec {
                name,
                error_output: false,
            }),
            Either::Full(f) => Ok(OutputSpec {
                name: f.name,
                error_output: f.error_output,
            }),
        }
    }
}

/// A task as a client submits it (REST body or RPC argument), before validation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    pub name: Option<String>,
    pub server_id: String,
    pub group: Option<String>,
    pub config: Option<String>,
    pub inputs: Option<serde_json::Map<String, Value>>,
    pub outputs: Option<Vec<OutputSpec>>,
    pub options: Option<serde_json::Map<String, Value>>,
    pub depends_on: Option<Vec<String>>,
    pub on_dependency_failure: Option<OnDependencyFailure>,
    pub timeout_s: Option<i64>,
    pub retries: Option<i64>,
    pub retry_delay_s: Option<i64>,
    pub delivery: Option<Delivery>,
}

/// A fully validated task, ready for the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub id: TaskId,
    /// Unique in the workflow; defaults to the id.
    pub name: String,
    pub server_id: ServerId,
    pub group: String,
    pub config: String,
    pub inputs: serde_json::Map<String, Value>,
    pub outputs: Vec<OutputSpec>,
    pub options: serde_json::Map<String, Value>,
    /// References as the client wrote them (ids or names); resolved by the tracker.
    pub depends_on: Vec<String>,
    pub on_dependency_failure: OnDependencyFailure,
    pub timeout_s: u32,
    pub retries: u32,
    pub retry_delay_s: u32,
    pub delivery: Delivery,
}

/// One problem with a submitted value: where it is, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// A workflow or task name: 1–255 characters, no control characters.
///
/// # Errors
/// The reason the name is not acceptable.
pub fn check_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// A group names a runner or a hook file: `[A-Za-z0-9_.:-]`, not `.` or `..`.
fn check_group(group: &str) -> Result<(), String> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN {
        return Err(format!("must be 1 to {MAX_GROUP_LEN} characters"));
    }
    if group == "." || group == ".." {
        return Err("must not be '.' or '..'".into());
    }
    if !group
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        return Err("may only contain A-Z, a-z, 0-9, '_', '.', ':' and '-'".into());
    }
    Ok(())
}

/// An input becomes an environment variable of the same name.
fn check_input_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("input names must be 1 to {MAX_NAME_LEN} bytes"));
    }
    if name.contains('=') || name.contains('\0') {
        return Err("input names must not contain '=' or NUL".into());
    }
    Ok(())
}

/// An output becomes the file suffix `${heat_outputs_path}.NAME`.
fn check_output_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("output names must be 1 to {MAX_NAME_LEN} bytes"));
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err("output names must not contain '/' or NUL, nor be '.' or '..'".into());
    }
    Ok(())
}

fn ranged(
    field: &str,
    value: Option<i64>,
    default: u32,
    min: u32,
    max: u32,
    errors: &mut Vec<FieldError>,
) -> u32 {
    match value {
        None => default,
        Some(v) if v >= i64::from(min) && v <= i64::from(max) => v as u32,
        Some(_) => {
            errors.push(field_err(field, format!("must be between {min} and {max}")));
            default
        }
    }
}

impl NewTask {
    /// Validates every field, reporting all problems at once. `prefix` locates
    /// the task in the request (e.g. `tasks[3].`).
    ///
    /// # Errors
    /// Every field that is out of range or malformed.
    pub fn validate(self, prefix: &str) -> Result<TaskSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let f = |name: &str| format!("{prefix}{name}");
        let id = TaskId::new();
        let name = match self.name {
            Some(n) => {
                if let Err(e) = check_name(&n) {
                    errors.push(field_err(f("name"), e));
                }
                n
            }
            None => id.to_string(),
        };
        let server_id = match ServerId::parse(&self.server_id) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(field_err(f("server_id"), e));
                None
            }
        };
        let group = self.group.unwrap_or_else(|| "script".to_owned());
        if let Err(e) = check_group(&group) {
            errors.push(field_err(f("group"), e));
        }
        let inputs = self.inputs.unwrap_or_default();
        for k in inputs.keys() {
            if let Err(e) = check_input_name(k) {
                errors.push(field_err(f("inputs"), e));
            }
        }
        let outputs = self.outputs.unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for o in &outputs {
            if let Err(e) = check_output_name(&o.name) {
                errors.push(field_err(f("outputs"), e));
            } else if !seen.insert(o.name.as_str()) {
                errors.push(field_err(
                    f("outputs"),
                    format!("output {:?} is declared twice", o.name),
                ));
            }
        }
        let depends_on = self.depends_on.unwrap_or_default();
        let mut seen_deps = std::collections::HashSet::new();
        for d in &depends_on {
            if !seen_deps.insert(d.as_str()) {
                errors.push(field_err(
                    f("depends_on"),
                    format!("dependency {d:?} is listed twice"),
                ));
            }
        }
        let timeout_s = ranged(
            &f("timeout_s"),
            self.timeout_s,
            DEFAULT_TIMEOUT_S,
            1,
            MAX_TIMEOUT_S,
            &mut errors,
        );
        let retries = ranged(&f("retries"), self.retries, 0, 0, MAX_RETRIES, &mut errors);
        let retry_delay_s = ranged(
            &f("retry_delay_s"),
            self.retry_delay_s,
            0,
            0,
            MAX_RETRY_DELAY_S,
            &mut errors,
        );
        match server_id {
            Some(server_id) if errors.is_empty() => Ok(TaskSpec {
                id,
                name,
                server_id,
                group,
                config: self.config.unwrap_or_default(),
                inputs,
                outputs,
                options: self.options.unwrap_or_default(),
                depends_on,
                on_dependency_failure: self.on_dependency_failure.unwrap_or_default(),
                timeout_s,
                retries,
                retry_delay_s,
                delivery: self.delivery.unwrap_or_default(),
            }),
            _ => Err(errors),
        }
    }
}

/// A change to a waiting task (`PATCH`): absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskPatch {
    pub name: Option<String>,
    pub server_id: Option<String>,
    pub group: Option<String>,
    pub config: Option<String>,
    pub inputs: Option<serde_json::Map<String, Value>>,
    pub outputs: Option<Vec<OutputSpec>>,
    pub options: Option<serde_json::Map<String, Value>>,
    pub depends_on: Option<Vec<String>>,
    pub on_dependency_failure: Option<OnDependencyFailure>,
    pub timeout_s: Option<i64>,
    pub retries: Option<i64>,
    pub retry_delay_s: Option<i64>,
    pub delivery: Option<Delivery>,
}

impl TaskPatch {
    /// Applies the patch to `spec` and re-validates the result.
    ///
    /// # Errors
    /// Every field of the result that is invalid.
    pub fn apply(self, spec: &TaskSpec) -> Result<TaskSpec, Vec<FieldError>> {
        let merged = NewTask {
            name: Some(self.name.unwrap_or_else(|| spec.name.clone())),
            server_id: self
                .server_id
                .unwrap_or_else(|| spec.server_id.as_str().to_owned()),
            group: Some(self.group.unwrap_or_else(|| spec.group.clone())),
            config: Some(self.config.unwrap_or_else(|| spec.config.clone())),
            inputs: Some(self.inputs.unwrap_or_else(|| spec.inputs.clone())),
            outputs: Some(self.outputs.unwrap_or_else(|| spec.outputs.clone())),
            options: Some(self.options.unwrap_or_else(|| spec.options.clone())),
            depends_on: Some(self.depends_on.unwrap_or_else(|| spec.depends_on.clone())),
            on_dependency_failure: Some(
                self.on_dependency_failure
                    .unwrap_or(spec.on_dependency_failure),
            ),
            timeout_s: Some(self.timeout_s.unwrap_or(i64::from(spec.timeout_s))),
            retries: Some(self.retries.unwrap_or(i64::from(spec.retries))),
            retry_delay_s: Some(self.retry_delay_s.unwrap_or(i64::from(spec.retry_delay_s))),
            delivery: Some(self.delivery.unwrap_or(spec.delivery)),
        };
        let mut out = merged.validate("")?;
        out.id = spec.id;
        Ok(out)
    }
}

/// A new workflow with its optional first batch of tasks.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkflow {
    pub name: String,
    pub description: Option<String>,
    pub tasks: Option<Vec<NewTask>>,
}

/// A change to a workflow's name or description.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowPatch {
    pub name: Option<String>,
    pub description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn state_names_round_trip() {
        for st in TaskState::ALL {
            assert_eq!(st.as_str().parse::<TaskState>().unwrap(), st);
            assert_eq!(serde_json::to_value(st).unwrap(), json!(st.as_str()));
        }
        assert!("done".parse::<TaskState>().is_err());
    }

    #[test]
    fn terminal_states_never_move() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskState::ALL {
                assert!(from.check_transition(to).is_err(), "{from} -> {to}");
            }
        }
        assert!(
            TaskState::Waiting
                .check_transition(TaskState::Queued)
                .is_ok()
        );
        assert!(
            TaskState::Queued
                .check_transition(TaskState::Skipped)
                .is_err()
        );
        assert!(
            TaskState::Running
                .check_transition(TaskState::Queued)
                .is_err()
        );
        assert!(
            TaskState::Running
                .check_transition(TaskState::Running)
                .is_err()
        );
    }

    #[test]
    fn dependency_satisfaction() {
        use OnDependencyFailure::*;
        assert_eq!(TaskState::Running.satisfies(Skip), None);
        assert_eq!(TaskState::Succeeded.satisfies(Skip), Some(true));
        assert_eq!(TaskState::Failed.satisfies(Skip), Some(false));
        assert_eq!(TaskState::Skipped.satisfies(Run), Some(true));
        assert_eq!(TaskState::Cancelled.satisfies(Run), Some(true));
    }

    fn counts(pairs: &[(TaskState, u64)]) -> TaskCounts {
        TaskCounts(pairs.iter().copied().collect())
    }

    #[test]
    fn workflow_state_is_derived() {
        use TaskState::*;
        assert_eq!(
            WorkflowState::derive(false, &counts(&[])),
            WorkflowState::Empty
        );
        assert_eq!(
            WorkflowState::derive(false, &counts(&[(Succeeded, 2), (Queued, 1)])),
            WorkflowState::Running
        );
        assert_eq!(
            WorkflowState::derive(false, &counts(&[(Succeeded, 3)])),
            WorkflowState::Succeeded
        );
        assert_eq!(
            WorkflowState::derive(false, &counts(&[(Succeeded, 1), (Skipped, 1)])),
            WorkflowState::Failed
        );
        assert_eq!(
            WorkflowState::derive(false, &counts(&[(Succeeded, 1), (Cancelled, 1)])),
            WorkflowState::Cancelled
        );
        assert_eq!(
            WorkflowState::derive(true, &counts(&[(Succeeded, 1)])),
            WorkflowState::Cancelled
        );
    }

    #[test]
    fn task_counts_list_every_state() {
        let v = serde_json::to_value(counts(&[(TaskState::Failed, 2)])).unwrap();
        assert_eq!(v["failed"], 2);
        assert_eq!(v["waiting"], 0);
        assert_eq!(v.as_object().unwrap().len(), 8);
    }

    #[test]
    fn server_ids() {
        assert!(ServerId::parse("6f1c2b9e-0d3a-4c1e-9a7b-1234567890ab").is_ok());
        assert!(ServerId::parse("web_1").is_ok());
        assert!(ServerId::parse("").is_err());
        assert!(ServerId::parse("a.b").is_err());
        assert!(ServerId::parse("a b").is_err());
        assert!(ServerId::parse(&"x".repeat(65)).is_err());
    }

    fn new_task(v: Value) -> NewTask {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let t = new_task(json!({"server_id": "x"})).validate("").unwrap();
        assert_eq!(t.name, t.id.to_string());
        assert_eq!(t.group, "script");
        assert_eq!(t.config, "");
        assert_eq!(t.timeout_s, 3600);
        assert_eq!(t.retries, 0);
        assert_eq!(t.on_dependency_failure, OnDependencyFailure::Skip);
        assert_eq!(t.delivery, Delivery::AtLeastOnce);
    }

    #[test]
    fn validation_reports_every_field() {
        let errs = new_task(json!({
            "name": "",
            "server_id": "bad id",
            "group": "../x",
            "timeout_s": 0,
            "retries": 101,
            "retry_delay_s": -1,
            "inputs": {"A=B": 1},
            "outputs": ["ok", "a/b", {"name": "ok"}],
            "depends_on": ["a", "a"]
        }))
        .validate("tasks[0].")
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "tasks[0].name",
            "tasks[0].server_id",
            "tasks[0].group",
            "tasks[0].timeout_s",
            "tasks[0].retries",
            "tasks[0].retry_delay_s",
            "tasks[0].inputs",
            "tasks[0].outputs",
            "tasks[0].depends_on",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn outputs_accept_both_forms() {
        let t = new_task(json!({
            "server_id": "x",
            "outputs": ["a", {"name": "b", "error_output": true}]
        }))
        .validate("")
        .unwrap();
        assert_eq!(
            t.outputs,
            vec![
                OutputSpec {
                    name: "a".into(),
                    error_output: false
                },
                OutputSpec {
                    name: "b".into(),
                    error_output: true
                },
            ]
        );
        assert!(
            serde_json::from_value::<NewTask>(json!({"server_id": "x", "outputs": [1]})).is_err()
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e =
            serde_json::from_value::<NewTask>(json!({"server_id": "x", "timeout": 5})).unwrap_err();
        assert!(e.to_string().contains("unknown field `timeout`"), "{e}");
    }

    #[test]
    fn patch_keeps_id_and_revalidates() {
        let t = new_task(json!({"server_id": "x", "name": "a"}))
            .validate("")
            .unwrap();
        let p: TaskPatch = serde_json::from_value(json!({"timeout_s": 5})).unwrap();
        let t2 = p.apply(&t).unwrap();
        assert_eq!(t2.id, t.id);
        assert_eq!(t2.timeout_s, 5);
        assert_eq!(t2.name, "a");
        let p: TaskPatch = serde_json::from_value(json!({"timeout_s": 0})).unwrap();
        assert!(p.apply(&t).is_err());
    }
}

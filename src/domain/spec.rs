//! What a task is asked to do: the validated [`TaskSpec`], its parts
//! (outputs, dependency policy, delivery, server kind), and the field rules
//! the edges validate client input with (names, groups, input and output
//! names, ranges). Every rule reports a message; the edges gather them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ServerId, TaskId};

/// Default `timeout_s` of a task: one hour, like Heat's software deployments.
pub const DEFAULT_TIMEOUT_S: u32 = 3600;
/// The longest `timeout_s`: one day.
pub const MAX_TIMEOUT_S: u32 = 86_400;
/// The most `retries` a task may ask for.
pub const MAX_RETRIES: u32 = 100;
/// The longest `retry_delay_s`: one hour.
pub const MAX_RETRY_DELAY_S: u32 = 3600;
/// The largest `retry_backoff` factor.
pub const MAX_RETRY_BACKOFF: f64 = 10.0;
/// Default `retry_max_delay_s`: one hour.
pub const DEFAULT_RETRY_MAX_DELAY_S: u32 = 3600;
/// The longest `retry_max_delay_s`: one day.
pub const MAX_RETRY_MAX_DELAY_S: u32 = 86_400;
/// The most exit codes `retry_exit_codes` may list.
pub const MAX_RETRY_EXIT_CODES: usize = 256;
/// The group of an approval gate (SPEC 7.3): a task with no server that
/// waits in `running` until a person approves or rejects it.
pub const APPROVAL_GROUP: &str = "bora.approval";
/// The longest workflow or task name, in characters.
pub const MAX_NAME_LEN: usize = 255;
/// The longest group name, in bytes.
pub const MAX_GROUP_LEN: usize = 255;

/// What a task does when a dependency ends unsuccessfully (failed, timed
/// out, cancelled or skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDependencyFailure {
    /// End as `skipped` without running (the default).
    #[default]
    Skip,
    /// Run anyway once every dependency has ended.
    Run,
}

impl OnDependencyFailure {
    /// The snake_case name of the APIs and the store.
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

/// How often one attempt may run on its server, when workers crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// A lost attempt is sent again (up to `dispatch.max_redeliveries`), so
    /// a script may run more than once (the default).
    #[default]
    AtLeastOnce,
    /// The worker records each attempt in a ledger before it starts and
    /// never starts it twice; a lost attempt fails instead.
    AtMostOnce,
}

impl Delivery {
    /// The snake_case name of the APIs and the store.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
    /// The snake_case name of the APIs and the store.
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

/// A declared output. In JSON either a bare name or `{name, error_output,
/// secret}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputSpec {
    /// Its key in the result's `outputs`.
    pub name: String,
    /// Heat's rule: if this output comes back non-empty, the task failed.
    pub error_output: bool,
    /// Its value is a secret (SPEC 7.4): sealed in the store, masked in
    /// every view, and a secret input of the tasks that refer to it. Left
    /// out of the JSON when false, so outputs without it read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl OutputSpec {
    /// A plain output called `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            error_output: false,
            secret: false,
        }
    }
}

impl<'de> Deserialize<'de> for OutputSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            name: String,
            #[serde(default)]
            error_output: bool,
            #[serde(default)]
            secret: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Name(String),
            Full(Full),
        }
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "an output is a name or {\"name\", \"error_output\", \"secret\"}",
            )
        })? {
            Either::Name(name) => Ok(OutputSpec::named(name)),
            Either::Full(f) => Ok(OutputSpec {
                name: f.name,
                error_output: f.error_output,
                secret: f.secret,
            }),
        }
    }
}

/// A fully validated task, ready for the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// Chosen at validation (UUIDv7); kept by a patch.
    pub id: TaskId,
    /// Unique in the workflow; defaults to the id.
    pub name: String,
    /// The server whose worker runs it; `None` for an approval gate and a
    /// task with a `target`.
    pub server_id: Option<ServerId>,
    /// The servers it targets by label instead of one `server_id`.
    pub target: Option<super::Target>,
    /// The runner or hook that runs it (`script` by default).
    pub group: String,
    /// The script body, or the hook's config.
    pub config: String,
    /// Name → JSON value; never logged.
    pub inputs: serde_json::Map<String, Value>,
    /// The declared outputs, names unique.
    pub outputs: Vec<OutputSpec>,
    /// Passed through to hooks.
    pub options: serde_json::Map<String, Value>,
    /// References as the client wrote them (ids or names); resolved by the tracker.
    pub depends_on: Vec<String>,
    /// What a dependency that ends unsuccessfully does to it.
    pub on_dependency_failure: OnDependencyFailure,
    /// Seconds an attempt may run: 1..=[`MAX_TIMEOUT_S`].
    pub timeout_s: u32,
    /// Extra attempts after a failure or timeout: 0..=[`MAX_RETRIES`].
    pub retries: u32,
    /// Seconds before the first retry is published: 0..=[`MAX_RETRY_DELAY_S`].
    pub retry_delay_s: u32,
    /// Each retry waits this many times longer than the one before:
    /// 1.0..=[`MAX_RETRY_BACKOFF`] (1.0: a fixed delay).
    pub retry_backoff: f64,
    /// The longest delay before a retry: 0..=[`MAX_RETRY_MAX_DELAY_S`].
    pub retry_max_delay_s: u32,
    /// When given, only a failure with one of these exit codes is retried
    /// (a timeout and a lost worker always are).
    pub retry_exit_codes: Option<Vec<i64>>,
    /// Whether a lost attempt may run again.
    pub delivery: Delivery,
}

/// One problem with a submitted value: where it is, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Where the value is in the request, e.g. `tasks[3].timeout_s`.
    pub field: String,
    /// What is wrong with it, for people.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A [`FieldError`] for `field`, without spelling out the struct.
pub fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
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

/// Free text bora stores (a config, a description): anything but NUL,
/// which PostgreSQL's text cannot hold.
///
/// # Errors
/// The reason the text is not acceptable.
pub fn check_text(text: &str) -> Result<(), String> {
    if text.contains('\0') {
        return Err("must not contain NUL characters".into());
    }
    Ok(())
}

/// A group names a runner or a hook file: `[A-Za-z0-9_.:-]`, not `.` or `..`.
pub fn check_group(group: &str) -> Result<(), String> {
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
pub fn check_input_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("input names must be 1 to {MAX_NAME_LEN} bytes"));
    }
    if name.contains('=') || name.contains('\0') {
        return Err("input names must not contain '=' or NUL".into());
    }
    Ok(())
}

/// An output becomes the file suffix `${heat_outputs_path}.NAME`.
pub fn check_output_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("output names must be 1 to {MAX_NAME_LEN} bytes"));
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err("output names must not contain '/' or NUL, nor be '.' or '..'".into());
    }
    Ok(())
}

/// `value` if within `[min, max]`, else `default` with an error for `field`.
pub fn ranged(
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

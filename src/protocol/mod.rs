//! Wire types: the oslo.messaging RPC envelope, task calls, cancel casts,
//! replies (results and heartbeats), failures, and the result object.
//!
//! Every byte that crosses the broker is built and parsed here, so the
//! dispatcher, the worker and the RPC API agree by construction. The facts
//! come from `oslo-wire.md` (oslo.messaging 18.3.1); the tests replay the
//! messages captured from the real library (`tests/fixtures/oslo-captures.json`).
//! This module knows nothing of AMQP connections, SQL or processes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{Corrupt, Delivery, OutputSpec, ServerId, Task, TaskId, TaskState, WorkflowId};

mod notification;
pub use notification::{Notification, TaskEndPayload, WorkflowEndPayload, timestamp};

/// `oslo.version` of the envelope.
pub const OSLO_VERSION: &str = "2.0";
/// `content_type` of every message (oslo rejects anything else, oslo-wire 4.4).
pub const CONTENT_TYPE: &str = "application/json";
/// `content_encoding` of every message, as oslo sets it.
pub const CONTENT_ENCODING: &str = "utf-8";
/// The RPC method a task call invokes on a worker.
pub const RUN_TASK: &str = "run_task";
/// The RPC method of a cancel cast on a worker's control queue.
pub const CANCEL_TASK: &str = "cancel_task";
/// `_msg_id` prefix of a worker's idle heartbeat (`server.<server_id>`).
pub const IDLE_HEARTBEAT_PREFIX: &str = "server.";

/// Why a message could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The body does not parse as JSON.
    #[error("body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON, but not an object.
    #[error("body is not a JSON object")]
    NotObject,
    /// An envelope whose `oslo.version` is not [`OSLO_VERSION`] (as sent).
    #[error("unsupported oslo.version {0:?}")]
    Version(String),
    /// The envelope's `oslo.message` is not a string holding a JSON object.
    #[error("oslo.message is not a JSON string holding an object")]
    BadInner,
    /// The inner message lacks a field, has one of the wrong type, or names
    /// another method.
    #[error("malformed message: {0}")]
    Shape(#[source] serde_json::Error),
    /// A reply's `_msg_id` that bora did not send (its first 80 characters).
    #[error("unknown _msg_id {0:?}")]
    MsgId(String),
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "oslo.version")]
    version: &'static str,
    #[serde(rename = "oslo.message")]
    message: &'a str,
}

/// Wraps an inner message in oslo's envelope: the inner JSON travels as a string.
pub fn encode_envelope<T: Serialize>(inner: &T) -> Vec<u8> {
    // Serializing our own plain data types cannot fail (no maps with non-string keys).
    let inner = serde_json::to_string(inner).unwrap_or_else(|_| "{}".to_owned());
    serde_json::to_vec(&Envelope {
        version: OSLO_VERSION,
        message: &inner,
    })
    .unwrap_or_default()
}

/// Unwraps the envelope and returns the inner message as a JSON object.
///
/// Like an oslo server, accepts a bare inner message (no envelope, "v1.0").
///
/// # Errors
/// Body not JSON, not an object, an envelope of another version, or an inner
/// message that is not a JSON object.
pub fn decode_envelope(body: &[u8]) -> Result<Map<String, Value>, ProtocolError> {
    let outer: Value = serde_json::from_slice(body).map_err(ProtocolError::NotJson)?;
    let Value::Object(mut outer) = outer else {
        return Err(ProtocolError::NotObject);
    };
    let Some(version) = outer.get("oslo.version") else {
        return Ok(outer);
    };
    if version.as_str() != Some(OSLO_VERSION) {
        return Err(ProtocolError::Version(version.to_string()));
    }
    match outer.remove("oslo.message") {
        Some(Value::String(s)) => match serde_json::from_str(&s) {
            Ok(Value::Object(inner)) => Ok(inner),
            _ => Err(ProtocolError::BadInner),
        },
        _ => Err(ProtocolError::BadInner),
    }
}

/// An RPC request (call or cast) as oslo sends it (oslo-wire 4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest {
    /// The method called: `run_task`, `cancel_task`, or an RPC API method.
    pub method: String,
    /// The method's keyword arguments.
    #[serde(default)]
    pub args: Map<String, Value>,
    /// oslo's target namespace, if the caller set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// oslo's target API version, if the caller set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Call only: correlation id echoed in every reply.
    #[serde(rename = "_msg_id", default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// Call only: the queue replies are routed to.
    #[serde(rename = "_reply_q", default, skip_serializing_if = "Option::is_none")]
    pub reply_q: Option<String>,
    /// Call only: call-monitor timeout; heartbeats are sent only when set.
    #[serde(rename = "_timeout", default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Deduplication key: an oslo server drops a repeated one silently.
    #[serde(
        rename = "_unique_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unique_id: Option<String>,
    /// `_context_*` entries and anything else, kept as they came (never logged:
    /// `_context_auth_token` travels in clear).
    #[serde(flatten)]
    pub context: Map<String, Value>,
}

impl RpcRequest {
    /// Parses a request body (enveloped or bare).
    ///
    /// # Errors
    /// See [`decode_envelope`]; also a request whose fields have the wrong types.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let inner = decode_envelope(body)?;
        serde_json::from_value(Value::Object(inner)).map_err(ProtocolError::Shape)
    }

    /// The enveloped body. A call always carries `_timeout`, null when unset, as oslo's does.
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = serde_json::to_value(self).unwrap_or(Value::Null);
        if let (Some(_), Value::Object(m)) = (&self.msg_id, &mut inner) {
            m.entry("_timeout").or_insert(Value::Null);
        }
        encode_envelope(&inner)
    }
}

/// An oslo reply: a heartbeat (`ending: false`) or the final answer (oslo-wire 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcReply {
    /// The method's return value: a [`TaskResult`] for a task call; null
    /// in heartbeats and failures.
    #[serde(default)]
    pub result: Value,
    /// Null, or a JSON string holding a [`Failure`]. Always sent: an oslo client
    /// without it raises `KeyError` (oslo-wire 11.3).
    #[serde(default)]
    pub failure: Option<String>,
    /// `false` for a heartbeat (`started` included), `true` for the final
    /// answer (assumed when absent).
    #[serde(default = "default_true")]
    pub ending: bool,
    /// The `_msg_id` of the call it answers (`<task_id>.<attempt>`), or
    /// `server.<server_id>` for a worker's idle heartbeat.
    #[serde(rename = "_msg_id")]
    pub msg_id: String,
    /// A fresh deduplication key per reply.
    #[serde(rename = "_unique_id", default)]
    pub unique_id: Option<String>,
}

fn default_true() -> bool {
    true
}

impl RpcReply {
    /// A final reply carrying `result`.
    pub fn final_result(msg_id: impl Into<String>, result: Value) -> Self {
        Self {
            result,
            failure: None,
            ending: true,
            msg_id: msg_id.into(),
            unique_id: Some(fresh_unique_id()),
        }
    }

    /// A final reply carrying an exception.
    pub fn final_failure(msg_id: impl Into<String>, failure: &Failure) -> Self {
        Self {
            result: Value::Null,
            failure: Some(failure.encode()),
            ending: true,
            msg_id: msg_id.into(),
            unique_id: Some(fresh_unique_id()),
        }
    }

    /// A non-final reply carrying live output (SPEC 7.5); it also says the
    /// attempt runs.
    pub fn output(msg_id: impl Into<String>, chunk: &OutputChunk) -> Self {
        Self {
            result: serde_json::json!({ "output": chunk }),
            failure: None,
            ending: false,
            msg_id: msg_id.into(),
            unique_id: Some(fresh_unique_id()),
        }
    }

    /// The live output a non-final reply carries, if it carries some.
    pub fn output_chunk(&self) -> Option<OutputChunk> {
        if self.ending {
            return None;
        }
        let chunk = self.result.get("output")?;
        serde_json::from_value(chunk.clone()).ok()
    }

    /// A call-monitor heartbeat (`ending: false`, null result).
    pub fn heartbeat(msg_id: impl Into<String>) -> Self {
        Self {
            result: Value::Null,
            failure: None,
            ending: false,
            msg_id: msg_id.into(),
            unique_id: Some(fresh_unique_id()),
        }
    }

    /// # Errors
    /// See [`RpcRequest::decode`].
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let inner = decode_envelope(body)?;
        serde_json::from_value(Value::Object(inner)).map_err(ProtocolError::Shape)
    }

    /// The enveloped body.
    pub fn encode(&self) -> Vec<u8> {
        encode_envelope(self)
    }
}

/// An exception as oslo serialises it into a reply's `failure` string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The exception's class name, e.g. `ValueError`.
    pub class: String,
    /// The class's module; `builtins` (or empty) for Python's own.
    pub module: String,
    /// The exception's text.
    pub message: String,
    /// The traceback lines; bora sends none.
    #[serde(default)]
    pub tb: Vec<String>,
    /// The exception's positional arguments (bora sends the message).
    #[serde(default)]
    pub args: Vec<Value>,
    /// The exception's keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

impl Failure {
    /// An exception of `module.class` with `message`, as bora raises it.
    pub fn new(module: &str, class: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            class: class.to_owned(),
            module: module.to_owned(),
            args: vec![Value::String(message.clone())],
            message,
            tb: Vec::new(),
            kwargs: Map::new(),
        }
    }

    /// The JSON string a reply's `failure` carries.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Parses a `failure` string; a string that is not oslo's JSON is kept as the message.
    pub fn decode(s: &str) -> Self {
        serde_json::from_str(s).unwrap_or_else(|_| Failure::new("", "RemoteError", s))
    }

    /// `Class: message`, with the module when it is not a builtin.
    pub fn summary(&self) -> String {
        match self.module.as_str() {
            "" | "builtins" | "exceptions" => format!("{}: {}", self.class, self.message),
            m => format!("{m}.{}: {}", self.class, self.message),
        }
    }
}

/// A fresh `_unique_id`: a UUID4 without hyphens, like oslo's.
pub fn fresh_unique_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// The `_unique_id` of one (task, attempt): fixed, so a re-send of the same
/// attempt is dropped by an oslo server while a new attempt is not (oslo-wire 6).
pub fn attempt_unique_id(task: TaskId, attempt: u32) -> String {
    Uuid::new_v5(&task.0, format!("attempt-{attempt}").as_bytes())
        .simple()
        .to_string()
}

/// `_msg_id` of a task call: `<task_id>.<attempt>`.
pub fn task_msg_id(task: TaskId, attempt: u32) -> String {
    format!("{task}.{attempt}")
}

/// What a reply's `_msg_id` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgTarget {
    /// One attempt of a task.
    Attempt {
        /// The task.
        task: TaskId,
        /// Its attempt, from 1.
        attempt: u32,
    },
    /// A worker's idle heartbeat.
    Server(ServerId),
}

/// Parses a reply's `_msg_id`.
///
/// # Errors
/// [`ProtocolError::MsgId`] for anything bora did not send.
pub fn parse_msg_id(msg_id: &str) -> Result<MsgTarget, ProtocolError> {
    let bad = || ProtocolError::MsgId(msg_id.chars().take(80).collect());
    if let Some(server) = msg_id.strip_prefix(IDLE_HEARTBEAT_PREFIX) {
        return ServerId::parse(server)
            .map(MsgTarget::Server)
            .map_err(|_| bad());
    }
    let (task, attempt) = msg_id.rsplit_once('.').ok_or_else(bad)?;
    let task = task.parse::<TaskId>().map_err(|_| bad())?;
    let attempt = attempt.parse::<u32>().map_err(|_| bad())?;
    Ok(MsgTarget::Attempt { task, attempt })
}

/// The `args.task` of a `run_task` call: what a worker needs to run one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// The task.
    pub id: TaskId,
    /// Its workflow (for the worker's span).
    pub workflow_id: WorkflowId,
    /// Its name, as hooks receive it.
    pub name: String,
    /// The server it is for; a worker refuses another server's task.
    pub server_id: ServerId,
    /// The runner or hook that runs it.
    pub group: String,
    /// The script body, or the hook's config.
    pub config: String,
    /// Name → JSON value; never logged.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// The outputs to collect.
    #[serde(default)]
    pub outputs: Vec<OutputSpec>,
    /// Passed through to hooks.
    #[serde(default)]
    pub options: Map<String, Value>,
    /// Seconds the worker lets it run before it kills the process group.
    pub timeout_s: u32,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// Whether the worker must record the attempt in its ledger first.
    #[serde(default)]
    pub delivery: Delivery,
    /// The most live output (bytes per stream) the dispatcher keeps of this
    /// attempt (SPEC 7.5); absent: the worker sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_output_bytes: Option<u64>,
    /// The largest reply (bytes of the encoded message) the dispatcher
    /// records (`dispatch.max_result_bytes`): a bora worker trims its result
    /// to fit. Absent (an older dispatcher): the worker trims nothing. An
    /// oslo endpoint takes it as one more key it does not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_result_bytes: Option<u64>,
    /// The names of the inputs that are secrets (SPEC 7.4): a bora worker
    /// scrubs their values from the streams and outputs it reports. Left
    /// out when there are none, so a message without secrets is what it
    /// was; inside `task`, so a worker that predates it and an oslo
    /// endpoint (`run_task(ctxt, task)`) take it as one more key they do
    /// not read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// Why a task message could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A stored value of the task does not parse.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// A secret input could not be opened (the reason from the opener).
    #[error("secret input {input} cannot be opened: {reason}")]
    Secret {
        /// The input's name.
        input: String,
        /// Why not.
        reason: String,
    },
}

impl TaskMessage {
    /// What a worker needs to run `task`'s current attempt: its inputs with
    /// every reference replaced by the value it resolved to, and every
    /// secret opened by `open` (a sealed token to the plain value).
    ///
    /// # Errors
    /// A stored value of the task that does not parse, or a secret `open`
    /// refuses.
    pub fn of(
        task: &Task,
        mut open: impl FnMut(&str) -> Result<Value, String>,
    ) -> Result<Self, RenderError> {
        let (mut inputs, secrets) = task.effective_inputs()?;
        for name in &secrets {
            if let Some(slot) = inputs.get_mut(name) {
                let sealed = std::mem::take(slot);
                *slot = crate::domain::secret::open_value(sealed, &mut open).map_err(|reason| {
                    RenderError::Secret {
                        input: name.clone(),
                        reason,
                    }
                })?;
            }
        }
        Ok(Self {
            id: task.id,
            workflow_id: task.workflow_id,
            name: task.name.clone(),
            server_id: task.server()?,
            group: task.group.clone(),
            config: task.config.clone(),
            inputs,
            outputs: task.outputs()?,
            options: task.options()?,
            timeout_s: task.timeout_s as u32,
            attempt: task.attempt as u32,
            delivery: task.delivery,
            live_output_bytes: None,
            max_result_bytes: None,
            secrets,
        })
    }

    /// The call that carries this attempt to a worker (SPEC 5): `_msg_id` =
    /// `<task_id>.<attempt>`, `_unique_id` fixed per attempt, `_timeout` = twice
    /// the heartbeat period so oslo servers heartbeat as often as bora's worker.
    pub fn to_call(&self, reply_q: &str, heartbeat_s: u64) -> RpcRequest {
        let mut args = Map::new();
        args.insert(
            "task".to_owned(),
            serde_json::to_value(self).unwrap_or(Value::Null),
        );
        RpcRequest {
            method: RUN_TASK.to_owned(),
            args,
            namespace: None,
            version: None,
            msg_id: Some(task_msg_id(self.id, self.attempt)),
            reply_q: Some(reply_q.to_owned()),
            timeout: Some((2 * heartbeat_s) as f64),
            unique_id: Some(attempt_unique_id(self.id, self.attempt)),
            context: Map::new(),
        }
    }

    /// Reads the task out of a `run_task` request.
    ///
    /// # Errors
    /// Another method, or `args.task` missing or malformed.
    pub fn from_call(req: &RpcRequest) -> Result<Self, ProtocolError> {
        if req.method != RUN_TASK {
            return Err(ProtocolError::Shape(serde::de::Error::custom(format!(
                "unknown method {:?}",
                req.method
            ))));
        }
        let task = req.args.get("task").cloned().unwrap_or(Value::Null);
        serde_json::from_value(task).map_err(ProtocolError::Shape)
    }
}

/// The `args` of a `cancel_task` cast on a worker's control queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelMessage {
    /// The task to stop.
    pub task_id: TaskId,
    /// The attempt to stop; other attempts of the task are not touched.
    pub attempt: u32,
}

impl CancelMessage {
    /// The `cancel_task` cast that carries it (no `_msg_id`: no reply).
    pub fn to_cast(&self) -> RpcRequest {
        let mut args = Map::new();
        args.insert("task_id".into(), Value::String(self.task_id.to_string()));
        args.insert("attempt".into(), Value::from(self.attempt));
        RpcRequest {
            method: CANCEL_TASK.to_owned(),
            args,
            namespace: None,
            version: None,
            msg_id: None,
            reply_q: None,
            timeout: None,
            unique_id: Some(fresh_unique_id()),
            context: Map::new(),
        }
    }

    /// # Errors
    /// Another method, or malformed arguments.
    pub fn from_cast(req: &RpcRequest) -> Result<Self, ProtocolError> {
        if req.method != CANCEL_TASK {
            return Err(ProtocolError::Shape(serde::de::Error::custom(format!(
                "unknown method {:?}",
                req.method
            ))));
        }
        serde_json::from_value(Value::Object(req.args.clone())).map_err(ProtocolError::Shape)
    }
}

/// Which output stream a chunk of live output is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// `stdout` or `stderr`: the store's and the event's name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }

    /// The stream of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(OutputStream::Stdout),
            "stderr" => Some(OutputStream::Stderr),
            _ => None,
        }
    }
}

/// A piece of a running attempt's output (SPEC 7.5): the text at byte
/// `offset` of its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// Which stream.
    pub stream: OutputStream,
    /// Where in the stream `data` starts, in bytes.
    pub offset: u64,
    /// The text (whole UTF-8 characters; invalid bytes shown lossily).
    pub data: String,
    /// The live output of this stream stops here (its cap was reached);
    /// `data` is a marker, not output. The result keeps head and tail.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// The result of one attempt (SPEC 2), also Heat's `deploy_*` signal under plain names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskResult {
    /// The process exit code; -1 when no process ran or it was killed.
    #[serde(default)]
    pub exit_code: i64,
    /// The process's standard output; over the worker's cap, its head and
    /// tail.
    #[serde(default)]
    pub stdout: String,
    /// The process's standard error; over the worker's cap, its head and
    /// tail.
    #[serde(default)]
    pub stderr: String,
    /// The outputs that came back, name → value.
    #[serde(default)]
    pub outputs: Map<String, Value>,
    /// Whether stdout or stderr was cut to the cap (head and tail kept),
    /// or to fit the reply limit (see `trimmed`).
    #[serde(default)]
    pub truncated: bool,
    /// What the worker cut so that its reply fits `dispatch.max_result_bytes`:
    /// `stdout`, `stderr`, `outputs.<name>`; each cut part carries a marker
    /// `...[N bytes cut by bora to fit dispatch.max_result_bytes]...`.
    /// Absent when nothing was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trimmed: Vec<String>,
    /// The length of the whole standard output in bytes, before any cut.
    #[serde(default)]
    pub stdout_bytes: u64,
    /// The length of the whole standard error in bytes, before any cut.
    #[serde(default)]
    pub stderr_bytes: u64,
    /// Hex SHA-256 of the whole standard output.
    #[serde(default)]
    pub stdout_sha256: String,
    /// Hex SHA-256 of the whole standard error.
    #[serde(default)]
    pub stderr_sha256: String,
    /// Anything that is not the task's own failure (missing hook, bad message, ...).
    #[serde(default)]
    pub error: Option<String>,
    /// The attempt this is the result of, from 1.
    #[serde(default)]
    pub attempt: u32,
    /// The worker killed the task at its `timeout_s`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub timed_out: bool,
    /// Only for a group task: each matched server's child state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub servers: Option<std::collections::BTreeMap<String, String>>,
    /// Only for an approval gate a person decided: who said what, when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub decision: Option<Decision>,
}

/// A person's decision on an approval gate (SPEC 7.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// `approved` or `rejected`.
    pub decision: String,
    /// What the person said, if anything.
    #[schema(required)]
    pub comment: Option<String>,
    /// When (RFC 3339).
    pub at: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Hex SHA-256 of a byte string.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl TaskResult {
    /// The last result stored on `task`, if it has one.
    ///
    /// # Errors
    /// The stored JSON does not parse.
    pub fn of_task(task: &Task) -> Result<Option<Self>, Corrupt> {
        task.result
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Corrupt(format!("result: {e}")))
    }

    /// The result as views show it: every sealed (secret) output value
    /// replaced by `"***"` (SPEC 7.4).
    pub fn masked(mut self) -> Self {
        crate::domain::secret::mask_all(&mut self.outputs);
        self
    }

    /// A result that says only what went wrong outside the task itself.
    pub fn error(attempt: u32, message: impl Into<String>) -> Self {
        let mut r = Self::from_streams(attempt, -1, String::new(), String::new());
        r.error = Some(message.into());
        r
    }

    /// A result from whole (uncut) streams: counts and digests are computed here.
    pub fn from_streams(attempt: u32, exit_code: i64, stdout: String, stderr: String) -> Self {
        Self {
            exit_code,
            stdout_bytes: stdout.len() as u64,
            stderr_bytes: stderr.len() as u64,
            stdout_sha256: sha256_hex(stdout.as_bytes()),
            stderr_sha256: sha256_hex(stderr.as_bytes()),
            stdout,
            stderr,
            outputs: Map::new(),
            truncated: false,
            trimmed: Vec::new(),
            error: None,
            attempt,
            timed_out: false,
            servers: None,
            decision: None,
        }
    }

    /// Maps Heat's signal (`deploy_stdout`, `deploy_stderr`, `deploy_status_code`
    /// and the outputs) to a result. Non-string streams are serialised.
    pub fn from_heat(attempt: u32, mut heat: Map<String, Value>) -> Self {
        let text = |v: Option<Value>| match v {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
        };
        let stdout = text(heat.remove("deploy_stdout"));
        let stderr = text(heat.remove("deploy_stderr"));
        let code = match heat.remove("deploy_status_code") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(-1),
            Some(_) => -1,
        };
        let mut r = Self::from_streams(attempt, code, stdout, stderr);
        if let Some(e) = heat.remove("deploy_error") {
            r.error = Some(text(Some(e)));
        }
        r.outputs = heat;
        r
    }

    /// Reads an oslo reply's final `result` and `failure` into a result.
    ///
    /// bora's own worker sends the result object; an oslo endpoint may return
    /// Heat's `deploy_*` dict, `None` (success with nothing to say), or any other
    /// value (kept as the output `result`). An exception becomes a failed result
    /// whose `error` names its class and message.
    pub fn from_reply(attempt: u32, result: Value, failure: Option<&str>) -> Self {
        if let Some(f) = failure {
            return Self::error(attempt, Failure::decode(f).summary());
        }
        match result {
            Value::Null => Self::from_streams(attempt, 0, String::new(), String::new()),
            Value::Object(m) if m.contains_key("exit_code") => {
                match serde_json::from_value::<TaskResult>(Value::Object(m)) {
                    Ok(mut r) => {
                        r.attempt = attempt;
                        r
                    }
                    Err(e) => Self::error(attempt, format!("malformed result object: {e}")),
                }
            }
            Value::Object(m)
                if m.contains_key("deploy_status_code")
                    || m.contains_key("deploy_stdout")
                    || m.contains_key("deploy_stderr") =>
            {
                Self::from_heat(attempt, m)
            }
            other => {
                let mut r = Self::from_streams(attempt, 0, String::new(), String::new());
                r.outputs.insert("result".to_owned(), other);
                r
            }
        }
    }

    /// The state an attempt with this result ends in (before any retry):
    /// `succeeded`, `timed_out` or `failed`.
    pub fn end(&self, declared: &[OutputSpec]) -> TaskState {
        if self.succeeded(declared) {
            TaskState::Succeeded
        } else if self.timed_out {
            TaskState::TimedOut
        } else {
            TaskState::Failed
        }
    }

    /// Whether this result is a success: exit code 0, no error, not timed
    /// out, and no declared `error_output` came back non-empty.
    pub fn succeeded(&self, declared: &[OutputSpec]) -> bool {
        self.exit_code == 0
            && self.error.is_none()
            && !self.timed_out
            && declared
                .iter()
                .filter(|o| o.error_output)
                .all(|o| match self.outputs.get(&o.name) {
                    None | Some(Value::Null) => true,
                    Some(Value::String(s)) => s.is_empty(),
                    Some(_) => false,
                })
    }

    /// Heat's signal body (`?format=heat`): `deploy_stdout`, `deploy_stderr`,
    /// `deploy_status_code` and the outputs.
    pub fn to_heat(&self) -> Map<String, Value> {
        let mut m = self.outputs.clone();
        m.insert("deploy_stdout".into(), Value::String(self.stdout.clone()));
        m.insert("deploy_stderr".into(), Value::String(self.stderr.clone()));
        m.insert("deploy_status_code".into(), Value::from(self.exit_code));
        if let Some(e) = &self.error {
            m.insert("deploy_error".into(), Value::String(e.clone()));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn captures() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/oslo-captures.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn raw_body(message: &Value) -> Vec<u8> {
        serde_json::to_vec(&message["body"]).unwrap()
    }

    #[test]
    fn decodes_captured_oslo_call() {
        let c = captures();
        let tap = &c["A"]["A2_call"]["tap"][0];
        let raw = tap["body_raw"].as_str().unwrap().as_bytes();
        let req = RpcRequest::decode(raw).unwrap();
        assert_eq!(req.method, "run_task");
        assert_eq!(req.args["task"]["id"], "t-call");
        assert_eq!(
            req.msg_id.as_deref(),
            Some("a5c5079321ab49ddbfe5cd57f9a2b57c")
        );
        assert_eq!(
            req.reply_q.as_deref(),
            Some("reply_51b1585f189c4a2fbdeb8029699e58d9")
        );
        assert_eq!(req.timeout, None);
        assert_eq!(req.context["_context_request_id"], "req-probe-1");
        // Round trip: the re-encoded inner message equals the captured one.
        let again = decode_envelope(&req.encode()).unwrap();
        assert_eq!(Value::Object(again), tap["oslo.message (decoded)"]);
    }

    #[test]
    fn decodes_captured_cast_and_replies() {
        let c = captures();
        let cast = RpcRequest::decode(&raw_body(&c["A"]["A1_cast"]["tap"][0])).unwrap();
        assert_eq!(cast.msg_id, None);
        assert_eq!(cast.reply_q, None);

        let reply = RpcReply::decode(&raw_body(&c["A"]["A2_call"]["firehose"][1])).unwrap();
        assert!(reply.ending);
        assert_eq!(reply.failure, None);
        let r = TaskResult::from_reply(1, reply.result, None);
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.stdout, "hello\n");
        assert_eq!(r.stdout_bytes, 6);
        assert_eq!(r.outputs["task_id"], "t-call");
        assert!(r.succeeded(&[]));
    }

    #[test]
    fn captured_failure_becomes_failed_result() {
        let c = captures();
        let reply = RpcReply::decode(&raw_body(
            &c["A"]["A4_call_builtin_exception"]["firehose"][1],
        ))
        .unwrap();
        let f = Failure::decode(reply.failure.as_deref().unwrap());
        assert_eq!(f.class, "ValueError");
        assert_eq!(f.module, "builtins");
        assert_eq!(f.message, "bad input");
        let r = TaskResult::from_reply(2, reply.result, reply.failure.as_deref());
        assert_eq!(r.error.as_deref(), Some("ValueError: bad input"));
        assert_eq!(r.attempt, 2);
        assert!(!r.succeeded(&[]));
    }

    #[test]
    fn captured_heartbeat_is_not_ending() {
        let c = captures();
        let hb = RpcReply::decode(&raw_body(&c["A"]["A8_call_monitor"]["firehose"][1])).unwrap();
        assert!(!hb.ending);
        assert_eq!(hb.result, Value::Null);
    }

    #[test]
    fn captured_none_result_is_success() {
        let c = captures();
        let reply =
            RpcReply::decode(&raw_body(&c["A"]["A9_call_returning_none"]["firehose"][1])).unwrap();
        let r = TaskResult::from_reply(1, reply.result, reply.failure.as_deref());
        assert!(r.succeeded(&[]));
    }

    #[test]
    fn undecodable_bodies_are_errors() {
        assert!(matches!(
            decode_envelope(b"nope"),
            Err(ProtocolError::NotJson(_))
        ));
        assert!(matches!(
            decode_envelope(b"[1]"),
            Err(ProtocolError::NotObject)
        ));
        assert!(matches!(
            decode_envelope(br#"{"oslo.version":"3.0","oslo.message":"{}"}"#),
            Err(ProtocolError::Version(_))
        ));
        assert!(matches!(
            decode_envelope(br#"{"oslo.version":"2.0","oslo.message":"[1]"}"#),
            Err(ProtocolError::BadInner)
        ));
        // A bare inner message is accepted, as oslo does.
        let bare = decode_envelope(br#"{"method":"x","args":{}}"#).unwrap();
        assert_eq!(bare["method"], "x");
    }

    fn sample_task() -> TaskMessage {
        TaskMessage {
            id: TaskId::new(),
            workflow_id: WorkflowId::new(),
            name: "a".into(),
            server_id: ServerId::parse("server-x").unwrap(),
            group: "script".into(),
            config: "echo hi".into(),
            inputs: json!({"foo": "bar"}).as_object().unwrap().clone(),
            outputs: vec![OutputSpec {
                name: "result".into(),
                error_output: false,
                secret: false,
            }],
            options: Map::new(),
            timeout_s: 60,
            attempt: 3,
            delivery: Delivery::AtLeastOnce,
            live_output_bytes: None,
            max_result_bytes: None,
            secrets: Vec::new(),
        }
    }

    #[test]
    fn task_call_follows_spec_section_5() {
        let t = sample_task();
        let call = t.to_call("reply_bora", 10);
        let body = call.encode();
        // Double encoding: the outer body holds a string.
        let outer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        assert!(outer["oslo.message"].is_string());
        let inner = decode_envelope(&body).unwrap();
        assert_eq!(inner["method"], "run_task");
        assert_eq!(inner["_msg_id"], format!("{}.3", t.id));
        assert_eq!(inner["_reply_q"], "reply_bora");
        assert_eq!(inner["_timeout"], 20.0);
        assert_eq!(inner["_unique_id"], attempt_unique_id(t.id, 3));
        assert!(
            !inner.contains_key("version"),
            "version must be omitted (oslo-wire 11.7)"
        );
        let back = TaskMessage::from_call(&RpcRequest::decode(&body).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn unique_ids_are_fixed_per_attempt() {
        let id = TaskId::new();
        assert_eq!(attempt_unique_id(id, 1), attempt_unique_id(id, 1));
        assert_ne!(attempt_unique_id(id, 1), attempt_unique_id(id, 2));
        assert_eq!(attempt_unique_id(id, 1).len(), 32);
    }

    #[test]
    fn msg_ids_round_trip() {
        let id = TaskId::new();
        assert_eq!(
            parse_msg_id(&task_msg_id(id, 7)).unwrap(),
            MsgTarget::Attempt {
                task: id,
                attempt: 7
            }
        );
        assert_eq!(
            parse_msg_id("server.web-1").unwrap(),
            MsgTarget::Server(ServerId::parse("web-1").unwrap())
        );
        assert!(parse_msg_id("a5c5079321ab49ddbfe5cd57f9a2b57c").is_err());
        assert!(parse_msg_id("server.bad id").is_err());
    }

    #[test]
    fn cancel_cast_round_trips() {
        let c = CancelMessage {
            task_id: TaskId::new(),
            attempt: 2,
        };
        let req = RpcRequest::decode(&c.to_cast().encode()).unwrap();
        assert_eq!(req.msg_id, None);
        assert_eq!(CancelMessage::from_cast(&req).unwrap(), c);
    }

    #[test]
    fn replies_always_carry_failure_and_ending() {
        let body = RpcReply::final_result("m.1", json!({"exit_code": 0})).encode();
        let inner = decode_envelope(&body).unwrap();
        for k in ["result", "failure", "ending", "_msg_id", "_unique_id"] {
            assert!(inner.contains_key(k), "{k} missing");
        }
        let hb = decode_envelope(&RpcReply::heartbeat("m.1").encode()).unwrap();
        assert_eq!(hb["ending"], false);
        assert_eq!(hb["result"], Value::Null);
    }

    #[test]
    fn result_object_round_trips_and_error_outputs_fail() {
        let mut r = TaskResult::from_streams(1, 0, "out".into(), String::new());
        r.outputs.insert("err".into(), json!("boom"));
        let back = TaskResult::from_reply(1, serde_json::to_value(&r).unwrap(), None);
        assert_eq!(back, r);
        let declared = [OutputSpec {
            name: "err".into(),
            error_output: true,
            secret: false,
        }];
        assert!(!r.succeeded(&declared));
        r.outputs.insert("err".into(), json!(""));
        assert!(r.succeeded(&declared));
    }

    #[test]
    fn heat_mapping_both_ways() {
        let heat =
            json!({"deploy_stdout": "o", "deploy_stderr": "e", "deploy_status_code": 3, "x": 1});
        let r = TaskResult::from_reply(1, heat, None);
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.stderr, "e");
        assert_eq!(r.outputs["x"], 1);
        assert!(!r.succeeded(&[]));
        let h = r.to_heat();
        assert_eq!(h["deploy_status_code"], 3);
        assert_eq!(h["deploy_stdout"], "o");
        assert_eq!(h["x"], 1);
    }

    #[test]
    fn notifications_look_like_oslo_notifier_messages() {
        let n = Notification::new("bora.host", "bora.task.end", true, json!({"id": "x"}));
        assert_eq!(n.routing_key("notifications"), "notifications.error");
        let inner = decode_envelope(&n.encode()).unwrap();
        for k in [
            "message_id",
            "publisher_id",
            "event_type",
            "priority",
            "payload",
            "timestamp",
            "_unique_id",
        ] {
            assert!(inner.contains_key(k), "{k} missing");
        }
        assert_eq!(inner["priority"], "ERROR");
        // Python's str(datetime): a space, microseconds.
        let ts = inner["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 26, "{ts}");
        assert_eq!(&ts[10..11], " ");
    }

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

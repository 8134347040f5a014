//! The oslo RPC API (SPEC 5): bora answers calls on topic `bora_api` (and
//! `bora_api.<server>`) as an oslo.messaging RPC server would, with the same
//! arguments, validation and results as REST, so Heat can drive bora with the
//! library it already uses.
//!
//! Requests are decoded by `protocol`, served through the same use cases and
//! views as REST (`app`; this module never imports `api`), and answered
//! like oslo (oslo-wire 5):
//! `result`, `failure`, `ending: true`, `_msg_id`; errors as failures of
//! module `bora.errors` that an oslo client raises as `RemoteError`. Casts
//! (no `_msg_id`) run and get no reply. A repeated `_unique_id` is dropped
//! silently, as oslo does. This module knows no AMQP (that is `broker::rpc`)
//! and no SQL.
//!
//! Two kinds of request are dropped unanswered (acked, counted in
//! `bora_rpc_rejected_total`, logged without their payload): an unauthorized
//! one (no valid token while `api.tokens` is set, and `register_server` or
//! `label_server` whenever no tokens are set), so a stranger learns nothing and cannot aim
//! even a failure anywhere; and one whose `_reply_q` names a queue of bora's
//! own (`Settings::is_own_queue`), which would have the dispatcher's own user
//! publish into `reply_bora` (a result for any task) or a worker's queue.

use std::collections::{HashSet, VecDeque};

use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::input::{LabelPatch, NewServer, NewTask, NewWorkflow};
use crate::app::queries::{WorkflowAction, server_id, workflow_id};
use crate::app::{App, AppError};
use crate::broker::Broker;
use crate::broker::reconnect::Reconnect;
use crate::broker::rpc::RpcEndpoint;
use crate::config::Settings;
use crate::domain::TaskId;
use crate::protocol::{Failure, RpcReply, RpcRequest};
use crate::registration::{Registry, RegistryError};

/// How many recent `_unique_id`s are remembered to drop re-sent requests.
const DEDUP_WINDOW: usize = 1024;

/// What the RPC API serves with; cheap to clone.
#[derive(Clone)]
pub struct RpcState {
    /// The use cases and reads (shared with REST).
    pub app: App,
    /// Server registration (shared with REST).
    pub registry: Registry,
    /// The broker the endpoint consumes from.
    pub broker: Broker,
    /// `rpc.*` and the API tokens.
    pub settings: Arc<Settings>,
}

/// Why a call failed, before it becomes an oslo failure.
#[derive(Debug)]
enum CallError {
    /// A use case refused or failed.
    App(AppError),
    /// Registration failed on the broker's side.
    Registry(RegistryError),
    /// The arguments do not fit the method.
    Arguments(String),
}

impl From<AppError> for CallError {
    fn from(e: AppError) -> Self {
        CallError::App(e)
    }
}

impl From<RegistryError> for CallError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::App(e) => CallError::App(e),
            other => CallError::Registry(other),
        }
    }
}

/// The oslo failure a client sees (`RemoteError.exc_type` and the `code`
/// keyword argument): classes `bora.errors.{NotFound, Conflict,
/// ValidationError, ServiceUnavailable}`. (An unauthorized call gets no
/// answer at all.)
fn failure_of(e: &CallError) -> Failure {
    let (class, code, message) = match e {
        CallError::App(AppError::NotFound(m)) => ("NotFound", "not_found", m.clone()),
        CallError::App(AppError::Conflict { code, message }) => {
            ("Conflict", *code, message.clone())
        }
        CallError::App(AppError::Invalid { code, message, .. }) => {
            ("ValidationError", *code, message.clone())
        }
        CallError::App(AppError::IllegalMove(e)) => {
            ("Conflict", "illegal_state_change", e.to_string())
        }
        CallError::App(AppError::Store(e)) => {
            warn!(error = %e, "store failure while serving an RPC call");
            (
                "ServiceUnavailable",
                "store_unavailable",
                "the store failed to answer; try again".to_owned(),
            )
        }
        CallError::Registry(e) => (
            "ServiceUnavailable",
            "broker_unavailable",
            format!("the broker did not complete the change: {e}"),
        ),
        CallError::Arguments(m) => ("ValidationError", "invalid_arguments", m.clone()),
    };
    let mut f = Failure::new("bora.errors", class, message);
    f.kwargs
        .insert("code".into(), Value::String(code.to_owned()));
    f
}

fn no_such_method(method: &str) -> Failure {
    Failure::new(
        "oslo_messaging.rpc.dispatcher",
        "NoSuchMethod",
        format!("Endpoint does not support RPC method {method}"),
    )
}

/// Parses a call's keyword arguments into `T`; a mismatch is a ValidationError.
fn kwargs<T: DeserializeOwned>(args: &Map<String, Value>) -> Result<T, CallError> {
    kwargs_owned(args.clone())
}

fn kwargs_owned<T: DeserializeOwned>(args: Map<String, Value>) -> Result<T, CallError> {
    serde_json::from_value(Value::Object(args)).map_err(|e| CallError::Arguments(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowArg {
    workflow_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListTasksArgs {
    workflow_id: String,
    /// A page of at most this many (1 to api.max_page_size); with neither
    /// this nor `marker`, every task.
    #[serde(default)]
    limit: Option<u32>,
    /// The previous page's `next_marker`.
    #[serde(default)]
    marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTaskArgs {
    workflow_id: String,
    task: NewTask,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTaskArgs {
    workflow_id: String,
    task: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideArgs {
    workflow_id: String,
    task: String,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelArgs {
    server_id: String,
    labels: LabelPatch,
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Runs one method; `Err(None)` for an unknown method.
async fn call(
    state: &RpcState,
    method: &str,
    args: &Map<String, Value>,
) -> Result<Value, Option<CallError>> {
    let r = match method {
        "create_workflow" => create_workflow(state, args).await,
        "add_task" => add_task(state, args).await,
        "get_workflow" => get_workflow(state, args).await,
        "get_task" => get_task(state, args).await,
        "list_tasks" => list_tasks(state, args).await,
        "cancel_workflow" => workflow_action(state, args, WorkflowAction::Cancel).await,
        "pause_workflow" => workflow_action(state, args, WorkflowAction::Pause).await,
        "resume_workflow" => workflow_action(state, args, WorkflowAction::Resume).await,
        "rerun_workflow" => workflow_action(state, args, WorkflowAction::Rerun).await,
        "rerun_task" => rerun_task(state, args).await,
        "approve_task" => decide_gate(state, args, true).await,
        "reject_task" => decide_gate(state, args, false).await,
        "list_attempts" => list_attempts(state, args).await,
        "register_server" => register_server(state, args).await,
        "label_server" => label_server(state, args).await,
        _ => return Err(None),
    };
    r.map_err(Some)
}

async fn create_workflow(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    // `minimal=True`: the answer leaves the tasks out (REST's `Prefer:
    // return=minimal`).
    let minimal = match args.get("minimal") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(CallError::Arguments("minimal: expected a boolean".into())),
    };
    let mut rest = args.clone();
    rest.remove("minimal");
    let new: NewWorkflow = kwargs_owned(rest)?;
    Ok(to_value(
        state.app.create_workflow_view(new, !minimal).await?,
    ))
}

async fn add_task(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    let a: AddTaskArgs = kwargs(args)?;
    Ok(to_value(
        state.app.add_task_view(&a.workflow_id, a.task).await?,
    ))
}

async fn get_workflow(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    let a: WorkflowArg = kwargs(args)?;
    Ok(to_value(
        state
            .app
            .workflow_view(workflow_id(&a.workflow_id)?)
            .await?,
    ))
}

async fn get_task(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    let a: GetTaskArgs = kwargs(args)?;
    let wf = state.app.existing_workflow(&a.workflow_id).await?;
    let row = state.app.task(wf, &a.task).await?;
    Ok(to_value(state.app.task_view(row).await?))
}

async fn list_tasks(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    let a: ListTasksArgs = kwargs(args)?;
    let wf = state.app.existing_workflow(&a.workflow_id).await?;
    let marker = a
        .marker
        .as_deref()
        .map(str::parse::<TaskId>)
        .transpose()
        .map_err(|_| CallError::Arguments("marker must be a task id".into()))?;
    if a.limit.is_none() && marker.is_none() {
        // Neither given: every task, as before paging existed.
        let rows = state
            .app
            .store()
            .tasks(wf, None, None)
            .await
            .map_err(AppError::from)?;
        let tasks = state.app.task_views(wf, rows).await?;
        return Ok(json!({ "tasks": tasks, "next_marker": null }));
    }
    let max = state.settings.api.max_page_size;
    let limit = a.limit.unwrap_or(max.min(100));
    if limit == 0 || limit > max {
        return Err(CallError::Arguments(format!(
            "limit must be between 1 and {max}"
        )));
    }
    let page = state.app.task_page(wf, None, None, marker, limit).await?;
    Ok(to_value(page))
}

async fn workflow_action(
    state: &RpcState,
    args: &Map<String, Value>,
    action: WorkflowAction,
) -> Result<Value, CallError> {
    let a: WorkflowArg = kwargs(args)?;
    Ok(to_value(
        state
            .app
            .workflow_action_view(&a.workflow_id, action)
            .await?,
    ))
}

async fn rerun_task(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    let a: GetTaskArgs = kwargs(args)?;
    Ok(to_value(
        state.app.rerun_task_view(&a.workflow_id, &a.task).await?,
    ))
}

async fn decide_gate(
    state: &RpcState,
    args: &Map<String, Value>,
    approve: bool,
) -> Result<Value, CallError> {
    let a: DecideArgs = kwargs(args)?;
    Ok(to_value(
        state
            .app
            .decide_gate_view(&a.workflow_id, &a.task, approve, a.comment)
            .await?,
    ))
}

async fn list_attempts(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    let a: GetTaskArgs = kwargs(args)?;
    Ok(to_value(
        state
            .app
            .task_attempts_view(&a.workflow_id, &a.task)
            .await?,
    ))
}

/// `register_server(server_id, kind="guest", labels=None)`: the body of
/// `POST /v1/servers`, every field checked before the broker is touched.
async fn register_server(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    let new: NewServer = kwargs(args)?;
    let new = new.validate()?;
    Ok(to_value(
        state
            .registry
            .register(&new.server_id, new.kind, new.labels.as_ref())
            .await?,
    ))
}

/// `label_server(server_id, labels)`: a JSON merge patch of a registered
/// server's labels (`None` removes one), answered with the server's view.
async fn label_server(state: &RpcState, args: &Map<String, Value>) -> Result<Value, CallError> {
    let a: LabelArgs = kwargs(args)?;
    let id = server_id(&a.server_id)?;
    Ok(to_value(state.app.label_server_view(&id, &a.labels).await?))
}

/// The methods that always need a token, even while `api.tokens` is
/// empty: `register_server` hands out broker credentials (for `kind:
/// "oslo"`, a user that may write into any queue), and `label_server`
/// chooses which servers' queues targeted tasks go to. Whoever may publish
/// to the RPC topic must not do either without a token.
const TOKEN_ONLY: [&str; 2] = ["register_server", "label_server"];

/// With API tokens configured, a call must carry one as its context's
/// `auth_token` (`_context_auth_token`, as oslo's RequestContext sends it).
/// The [`TOKEN_ONLY`] methods always need one, so an API without tokens
/// never registers or labels over RPC.
fn authorized(state: &RpcState, req: &RpcRequest) -> bool {
    let api = &state.settings.api;
    if api.tokens.is_empty() {
        return !TOKEN_ONLY.contains(&req.method.as_str());
    }
    req.context
        .get("_context_auth_token")
        .and_then(Value::as_str)
        .is_some_and(|presented| api.accepts_token(presented))
}

/// Whether the request's `version`/`namespace` are ones bora's endpoint
/// (unversioned = 1.0, no namespace) accepts, with oslo's rule: same major,
/// minor not above ours.
fn compatible(req: &RpcRequest) -> bool {
    if req.namespace.is_some() {
        return false;
    }
    match req.version.as_deref() {
        None => true,
        Some(v) => matches!(v.split_once('.'), Some(("1", "0"))) || v == "1",
    }
}

/// Serves the RPC API until shutdown, reconnecting after broker failures.
pub async fn run(state: RpcState, shutdown: CancellationToken) {
    let topic = state.settings.rpc.topic.clone();
    let server = state.settings.rpc_server_name();
    let mut link = Reconnect::new("rpc");
    let mut seen: (HashSet<String>, VecDeque<String>) = (HashSet::new(), VecDeque::new());
    'connect: loop {
        let connected = link
            .connect(&shutdown, || state.broker.rpc_endpoint(&topic, &server))
            .await;
        let Some(mut endpoint) = connected else {
            return;
        };
        info!(topic, server, "RPC API consuming");
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = endpoint.next() => n,
            };
            let delivery = match next {
                Ok(Some(d)) => d,
                Ok(None) | Err(_) => {
                    warn!("RPC API lost its consumer; reconnecting");
                    continue 'connect;
                }
            };
            if let Err(e) = serve_one(&state, &endpoint, delivery, &mut seen).await {
                warn!(error = %e, "RPC API channel failed; reconnecting");
                continue 'connect;
            }
        }
    }
}

async fn serve_one(
    state: &RpcState,
    endpoint: &RpcEndpoint,
    delivery: crate::broker::rpc::RpcDelivery,
    seen: &mut (HashSet<String>, VecDeque<String>),
) -> Result<(), crate::broker::BrokerError> {
    let req = match RpcRequest::decode(&delivery.body) {
        Ok(r) => r,
        Err(e) => {
            // As oslo: rejected without requeue, no reply. Never the payload.
            warn!(error = %e, "undecodable RPC request dropped");
            metrics::counter!("bora_rpc_rejected_total", "reason" => "malformed").increment(1);
            return endpoint.reject(delivery.delivery_tag).await;
        }
    };
    // Refusals first, unanswered: nothing of such a request is kept or run.
    if !authorized(state, &req) {
        warn!(
            method = method_label(&req.method),
            "unauthorized RPC request dropped unanswered (no valid API token in _context_auth_token)"
        );
        metrics::counter!("bora_rpc_rejected_total", "reason" => "unauthorized").increment(1);
        return endpoint.ack(delivery.delivery_tag).await;
    }
    if let Some(reply_q) = req.reply_q.as_deref()
        && state.settings.is_own_queue(reply_q)
    {
        warn!(
            method = method_label(&req.method),
            reply_q, "RPC request whose _reply_q is one of bora's own queues dropped unanswered"
        );
        metrics::counter!("bora_rpc_rejected_total", "reason" => "reply_to_own_queue").increment(1);
        return endpoint.ack(delivery.delivery_tag).await;
    }
    if let Some(id) = &req.unique_id {
        if seen.0.contains(id) {
            metrics::counter!("bora_rpc_rejected_total", "reason" => "duplicate").increment(1);
            return endpoint.ack(delivery.delivery_tag).await;
        }
        seen.0.insert(id.clone());
        seen.1.push_back(id.clone());
        if seen.1.len() > DEDUP_WINDOW
            && let Some(old) = seen.1.pop_front()
        {
            seen.0.remove(&old);
        }
    }
    let outcome = if req.method.starts_with('_') {
        Err(no_such_method(&req.method))
    } else if !compatible(&req) {
        Err(Failure::new(
            "oslo_messaging.rpc.dispatcher",
            "UnsupportedVersion",
            format!(
                "Endpoint does not support RPC version {}. Attempted method: {}",
                req.version.as_deref().unwrap_or("1.0"),
                req.method
            ),
        ))
    } else {
        match call(state, &req.method, &req.args).await {
            Ok(v) => Ok(v),
            Err(None) => Err(no_such_method(&req.method)),
            Err(Some(e)) => Err(failure_of(&e)),
        }
    };
    metrics::counter!("bora_rpc_calls_total", "method" => method_label(&req.method), "ok" => if outcome.is_ok() { "true" } else { "false" }).increment(1);
    if let (Some(msg_id), Some(reply_q)) = (&req.msg_id, &req.reply_q) {
        let reply = match outcome {
            Ok(v) => RpcReply::final_result(msg_id.clone(), v),
            Err(f) => RpcReply::final_failure(msg_id.clone(), &f),
        };
        if !endpoint.reply(reply_q, &reply.encode()).await? {
            warn!(reply_q, "the caller's reply queue is gone; reply dropped");
        }
    }
    endpoint.ack(delivery.delivery_tag).await
}

/// A bounded label: known methods by name, anything else as `other`.
fn method_label(method: &str) -> &'static str {
    match method {
        "create_workflow" => "create_workflow",
        "add_task" => "add_task",
        "get_workflow" => "get_workflow",
        "get_task" => "get_task",
        "list_tasks" => "list_tasks",
        "cancel_workflow" => "cancel_workflow",
        "register_server" => "register_server",
        "label_server" => "label_server",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_oslo_failure_classes() {
        let f = failure_of(&CallError::App(AppError::NotFound(
            "workflow x not found".into(),
        )));
        assert_eq!(f.module, "bora.errors");
        assert_eq!(f.class, "NotFound");
        assert_eq!(f.message, "workflow x not found");
        let class = |e: CallError| failure_of(&e).class;
        assert_eq!(
            class(CallError::App(AppError::invalid("x", "y"))),
            "ValidationError"
        );
        assert_eq!(class(CallError::Arguments("x".into())), "ValidationError");
        assert_eq!(
            class(CallError::App(AppError::conflict("x", "y"))),
            "Conflict"
        );
    }
}

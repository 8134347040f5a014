//! Handlers of an operator's actions on a run (SPEC 7.3): rerun a task or
//! a workflow, pause and resume a workflow, approve or reject an approval
//! gate, and read every attempt's result.

use axum::Json;
use axum::extract::{Path, State};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::OptionalJsonBody;
use super::views::{TaskView, WorkflowView};
use crate::app::input::GateDecision;
use crate::app::queries::WorkflowAction;
use crate::app::views::AttemptsView;

/// Runs every task of the workflow that ended other than `succeeded` again
/// (each as a new attempt; the tasks they had skipped go back to waiting).
#[utoipa::path(post, path = "/workflows/{wf}/rerun", tag = "operate",
    params(("wf" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The workflow, running again", body = WorkflowView),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
        (status = 409, description = "`workflow_cancelled`, or `nothing_to_rerun`", body = ErrorBody),
    ))]
pub(super) async fn rerun_workflow(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    action(&state, &wf, WorkflowAction::Rerun).await
}

/// Pauses the workflow: nothing more of it is published (tasks already
/// queued or running go on); tasks that become ready wait, with
/// `workflow paused` in their `blocked_by`.
#[utoipa::path(post, path = "/workflows/{wf}/pause", tag = "operate",
    params(("wf" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The paused workflow", body = WorkflowView),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
        (status = 409, description = "`workflow_cancelled`, or `workflow_paused` (already)", body = ErrorBody),
    ))]
pub(super) async fn pause(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    action(&state, &wf, WorkflowAction::Pause).await
}

/// Resumes a paused workflow: what became ready is published.
#[utoipa::path(post, path = "/workflows/{wf}/resume", tag = "operate",
    params(("wf" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The resumed workflow", body = WorkflowView),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
        (status = 409, description = "`workflow_cancelled`, or `workflow_not_paused`", body = ErrorBody),
    ))]
pub(super) async fn resume(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    action(&state, &wf, WorkflowAction::Resume).await
}

async fn action(
    state: &AppState,
    wf: &str,
    action: WorkflowAction,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(state.app.workflow_action_view(wf, action).await?))
}

/// Runs a task that ended other than `succeeded` again, as a new attempt;
/// the dependents it had skipped go back to waiting.
#[utoipa::path(post, path = "/workflows/{wf}/tasks/{task}/rerun", tag = "operate",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("task" = String, Path, description = "Task id or name"),
    ),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "Unknown workflow or task", body = ErrorBody),
        (status = 409, description = "`workflow_cancelled`, `task_not_ended`, or `task_succeeded`", body = ErrorBody),
    ))]
pub(super) async fn rerun_task(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(state.app.rerun_task_view(&wf, &task).await?))
}

/// Approves an approval gate that waits for a decision: it succeeds.
#[utoipa::path(post, path = "/workflows/{wf}/tasks/{task}/approve", tag = "operate",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("task" = String, Path, description = "Task id or name"),
    ),
    request_body(content = Option<GateDecision>, description = "Optional"),
    responses(
        (status = 200, description = "The gate, succeeded", body = TaskView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown workflow or task", body = ErrorBody),
        (status = 409, description = "`workflow_cancelled`, `not_an_approval`, or `approval_not_pending`", body = ErrorBody),
        (status = 422, description = "Invalid comment", body = ErrorBody),
    ))]
pub(super) async fn approve(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
    OptionalJsonBody(body): OptionalJsonBody<GateDecision>,
) -> Result<Json<TaskView>, ApiError> {
    decide(&state, &wf, &task, true, body).await
}

/// Rejects an approval gate that waits for a decision: it fails.
#[utoipa::path(post, path = "/workflows/{wf}/tasks/{task}/reject", tag = "operate",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("task" = String, Path, description = "Task id or name"),
    ),
    request_body(content = Option<GateDecision>, description = "Optional"),
    responses(
        (status = 200, description = "The gate, failed", body = TaskView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown workflow or task", body = ErrorBody),
        (status = 409, description = "`workflow_cancelled`, `not_an_approval`, or `approval_not_pending`", body = ErrorBody),
        (status = 422, description = "Invalid comment", body = ErrorBody),
    ))]
pub(super) async fn reject(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
    OptionalJsonBody(body): OptionalJsonBody<GateDecision>,
) -> Result<Json<TaskView>, ApiError> {
    decide(&state, &wf, &task, false, body).await
}

async fn decide(
    state: &AppState,
    wf: &str,
    task: &str,
    approve: bool,
    body: GateDecision,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(
        state
            .app
            .decide_gate_view(wf, task, approve, body.comment)
            .await?,
    ))
}

/// Every attempt of the task that has a result, oldest first (the last is
/// the task's `result`).
#[utoipa::path(get, path = "/workflows/{wf}/tasks/{task}/attempts", tag = "operate",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("task" = String, Path, description = "Task id or name"),
    ),
    responses(
        (status = 200, description = "The attempts", body = AttemptsView),
        (status = 404, description = "Unknown workflow or task", body = ErrorBody),
    ))]
pub(super) async fn attempts(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
) -> Result<Json<AttemptsView>, ApiError> {
    Ok(Json(state.app.task_attempts_view(&wf, &task).await?))
}

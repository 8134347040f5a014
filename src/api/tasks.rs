//! Handlers of `/v1/workflows/{wf}/tasks` and `/v1/workflows/{wf}/tasks/{task}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{JsonBody, QueryParams};
use super::views::TaskView;
use super::workflows::validate_tasks;
use super::{AppState, workflow_id};
use crate::domain::{NewTask, ServerId, TaskPatch, TaskState, WorkflowId};
use crate::store::TaskRow;

pub(crate) async fn existing_workflow(state: &AppState, raw: &str) -> Result<WorkflowId, ApiError> {
    let id = workflow_id(raw)?;
    state
        .store()
        .workflow(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workflow {id} not found")))?;
    Ok(id)
}

pub(crate) async fn task_row(
    state: &AppState,
    wf: WorkflowId,
    reference: &str,
) -> Result<TaskRow, ApiError> {
    state
        .store()
        .task_by_ref(wf, reference)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("task {reference:?} not found in workflow {wf}"))
        })
}

pub(super) async fn add(
    State(state): State<AppState>,
    Path(wf): Path<String>,
    JsonBody(task): JsonBody<NewTask>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let wf = workflow_id(&wf)?;
    let specs = validate_tasks(vec![task], "tasks")?;
    let ids = state.tracker.add_tasks(wf, specs).await?;
    let id = ids
        .first()
        .ok_or_else(|| ApiError::not_found("task vanished"))?;
    let row = task_row(&state, wf, &id.to_string()).await?;
    Ok((StatusCode::CREATED, Json(state.task_view(row).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    server_id: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    Path(wf): Path<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let wf = existing_workflow(&state, &wf).await?;
    let filter = q
        .state
        .as_deref()
        .map(str::parse::<TaskState>)
        .transpose()
        .map_err(|e| ApiError::unprocessable("invalid_query", format!("state: {e}")))?;
    let server = q
        .server_id
        .as_deref()
        .map(ServerId::parse)
        .transpose()
        .map_err(|e| ApiError::unprocessable("invalid_query", e))?;
    let rows = state.store().tasks(wf, filter, server.as_ref()).await?;
    let tasks = state.task_views(wf, rows).await?;
    Ok(Json(json!({ "tasks": tasks })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShowQuery {
    format: Option<String>,
}

pub(super) async fn show(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
    QueryParams(q): QueryParams<ShowQuery>,
) -> Result<Response, ApiError> {
    let wf = existing_workflow(&state, &wf).await?;
    let row = task_row(&state, wf, &task).await?;
    match q.format.as_deref() {
        None | Some("bora") => Ok(Json(state.task_view(row).await?).into_response()),
        Some("heat") => {
            let result = row.result()?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "no_result",
                    format!("task {:?} has no result yet ({})", row.name, row.state),
                )
            })?;
            Ok(Json(result.to_heat()).into_response())
        }
        Some(other) => Err(ApiError::unprocessable(
            "invalid_query",
            format!("format must be \"heat\" or \"bora\", not {other:?}"),
        )),
    }
}

pub(super) async fn patch(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
    JsonBody(patch): JsonBody<TaskPatch>,
) -> Result<Json<TaskView>, ApiError> {
    let wf = workflow_id(&wf)?;
    let id = state.tracker.patch_task(wf, &task, patch).await?;
    let row = task_row(&state, wf, &id.to_string()).await?;
    Ok(Json(state.task_view(row).await?))
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.tracker.cancel_task(workflow_id(&wf)?, &task).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Handlers of `/v1/workflows/{wf}/tasks` and `/v1/workflows/{wf}/tasks/{task}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, QueryParams};
use super::views::{HeatSignal, TaskList, TaskView};
use super::{AppState, workflow_id};
use crate::app::input::{NewTask, TaskPatch};
use crate::domain::{ServerId, TaskId, TaskState};

/// Adds one task to a workflow.
#[utoipa::path(post, path = "/workflows/{wf}/tasks", tag = "tasks",
    params(("wf" = String, Path, description = "Workflow id")),
    request_body = NewTask,
    responses(
        (status = 201, description = "Created", body = TaskView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
        (status = 409, description = "Duplicate name, or the workflow is cancelled", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid content: fields, dependencies, cycle, server", body = ErrorBody),
    ))]
pub(super) async fn add(
    State(state): State<AppState>,
    Path(wf): Path<String>,
    JsonBody(task): JsonBody<NewTask>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.app.add_task_view(&wf, task).await?),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<TaskState>)]
    state: Option<String>,
    /// Only tasks for this server.
    server_id: Option<String>,
    /// Page size, 1 to api.max_page_size (default 100).
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// The `next_marker` of the previous page: the id of its last task.
    #[param(value_type = Option<TaskId>)]
    marker: Option<String>,
}

/// Lists a workflow's tasks in creation order, one page at a time.
#[utoipa::path(get, path = "/workflows/{wf}/tasks", tag = "tasks",
    params(("wf" = String, Path, description = "Workflow id"), ListQuery),
    responses(
        (status = 200, description = "One page", body = TaskList),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
        (status = 422, description = "Invalid query", body = ErrorBody),
    ))]
pub(super) async fn list(
    State(state): State<AppState>,
    Path(wf): Path<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let wf = state.app.existing_workflow(&wf).await?;
    let limit = super::page_limit(&state.settings, q.limit)?;
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
    let marker = q
        .marker
        .as_deref()
        .map(str::parse::<TaskId>)
        .transpose()
        .map_err(|_| ApiError::unprocessable("invalid_query", "marker must be a task id"))?;
    let page = state
        .app
        .task_page(wf, filter, server.as_ref(), marker, limit)
        .await?;
    Ok(Json(TaskList {
        tasks: page.tasks,
        next_marker: page.next_marker,
    }))
}

/// How `GET .../tasks/{task}` answers.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum Format {
    /// The task view (the default).
    Bora,
    /// The result as Heat's signal body (409 `no_result` until there is one).
    Heat,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ShowQuery {
    /// `heat` for the result as Heat's signal body.
    #[param(inline, value_type = Option<Format>)]
    format: Option<String>,
}

/// One task, by id or name. A queued task shown alone also carries
/// `messages_ahead` (asked of the broker).
#[utoipa::path(get, path = "/workflows/{wf}/tasks/{task}", tag = "tasks",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("task" = String, Path, description = "Task id or name"),
        ShowQuery,
    ),
    responses(
        (status = 200, description = "The task, or with `format=heat` its result as Heat's signal body",
            body = inline(TaskOrHeat)),
        (status = 404, description = "Unknown workflow or task", body = ErrorBody),
        (status = 409, description = "`format=heat` and no result yet", body = ErrorBody),
        (status = 422, description = "Invalid query", body = ErrorBody),
    ))]
pub(super) async fn show(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
    QueryParams(q): QueryParams<ShowQuery>,
) -> Result<Response, ApiError> {
    let wf = state.app.existing_workflow(&wf).await?;
    let row = state.app.task(wf, &task).await?;
    match q.format.as_deref() {
        None | Some("bora") => {
            let queued = row.state() == TaskState::Queued;
            let server = row.server_id.clone();
            let mut view = state.app.task_view(row).await?;
            if queued {
                view.messages_ahead = state.broker.task_queue_ready(&server).await.ok();
            }
            Ok(Json(view).into_response())
        }
        Some("heat") => {
            let result = crate::protocol::TaskResult::of_task(&row)?
                .map(crate::protocol::TaskResult::masked)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "no_result",
                        format!("task {:?} has no result yet ({})", row.name, row.state()),
                    )
                })?;
            Ok(Json(HeatSignal::from(result.to_heat())).into_response())
        }
        Some(other) => Err(ApiError::unprocessable(
            "invalid_query",
            format!("format must be \"heat\" or \"bora\", not {other:?}"),
        )),
    }
}

/// Changes a task while it waits for its dependencies.
#[utoipa::path(patch, path = "/workflows/{wf}/tasks/{task}", tag = "tasks",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("task" = String, Path, description = "Task id or name"),
    ),
    request_body = TaskPatch,
    responses(
        (status = 200, description = "The changed task", body = TaskView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown workflow or task", body = ErrorBody),
        (status = 409, description = "Already handed to the broker, or duplicate name", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid content", body = ErrorBody),
    ))]
pub(super) async fn patch(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
    JsonBody(patch): JsonBody<TaskPatch>,
) -> Result<Json<TaskView>, ApiError> {
    let wf = workflow_id(&wf)?;
    let id = state.app.patch_task(wf, &task, patch).await?;
    let row = state.app.task(wf, &id.to_string()).await?;
    Ok(Json(state.app.task_view(row).await?))
}

/// Cancels a task (its worker is told); deletes it if it was never handed
/// to the broker.
#[utoipa::path(delete, path = "/workflows/{wf}/tasks/{task}", tag = "tasks",
    params(
        ("wf" = String, Path, description = "Workflow id"),
        ("task" = String, Path, description = "Task id or name"),
    ),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 404, description = "Unknown workflow or task", body = ErrorBody),
        (status = 409, description = "The task already ended", body = ErrorBody),
    ))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Path((wf, task)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.app.cancel_task(workflow_id(&wf)?, &task).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The 200 body of `GET .../tasks/{task}`: the task, or (`format=heat`) Heat's
/// signal body. Only for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub(super) enum TaskOrHeat {
    Task(Box<TaskView>),
    Heat(HeatSignal),
}

//! Handlers of `/v1/workflows` and `/v1/workflows/{wf}` (and `/cancel`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, QueryParams};
use super::views::{WorkflowList, WorkflowView};
use super::{AppState, workflow_id};
use crate::app::input::{NewWorkflow, WorkflowPatch};
use crate::app::queries::WorkflowAction;
use crate::domain::{WorkflowId, WorkflowState};

/// Creates a workflow, optionally with a first batch of tasks (which may
/// refer to each other by name, in any order). With `Prefer:
/// return=minimal` (RFC 7240) the answer leaves the tasks out: what a
/// client of a large batch that needs only the id asks for.
#[utoipa::path(post, path = "/workflows", tag = "workflows",
    request_body = NewWorkflow,
    params(
        ("Prefer" = Option<String>, Header, description = "`return=minimal`: answer without `tasks`"),
    ),
    responses(
        (status = 201, description = "Created; with `tasks` when some were given, unless `Prefer: return=minimal`", body = WorkflowView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "Duplicate task name", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid content: fields, dependencies, cycle, server", body = ErrorBody),
    ))]
pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewWorkflow>,
) -> Result<Response, ApiError> {
    let minimal = prefers_minimal(&headers);
    let view = state.app.create_workflow_view(new, !minimal).await?;
    let mut resp = (StatusCode::CREATED, Json(view)).into_response();
    if minimal {
        resp.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("return=minimal"),
        );
    }
    Ok(resp)
}

/// Whether a `Prefer` header asks for `return=minimal` (RFC 7240: a
/// comma-separated list; unknown preferences are ignored).
fn prefers_minimal(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            let p = p.split(';').next().unwrap_or_default().trim();
            p.eq_ignore_ascii_case("return=minimal")
        })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only workflows in this state.
    #[param(value_type = Option<WorkflowState>)]
    state: Option<String>,
    /// Page size, 1 to api.max_page_size (default 100).
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// The `next_marker` of the previous page.
    #[param(value_type = Option<WorkflowId>)]
    marker: Option<String>,
}

/// Lists workflows, oldest first, one page at a time.
#[utoipa::path(get, path = "/workflows", tag = "workflows",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = WorkflowList),
        (status = 422, description = "Invalid query", body = ErrorBody),
    ))]
pub(super) async fn list(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<WorkflowList>, ApiError> {
    let limit = super::page_limit(&state.settings, q.limit)?;
    let filter = q
        .state
        .as_deref()
        .map(str::parse::<WorkflowState>)
        .transpose()
        .map_err(|e| ApiError::unprocessable("invalid_query", format!("state: {e}")))?;
    let marker = q
        .marker
        .as_deref()
        .map(str::parse::<WorkflowId>)
        .transpose()
        .map_err(|_| ApiError::unprocessable("invalid_query", "marker must be a workflow id"))?;
    let page = state.store().workflow_page(marker, limit, filter).await?;
    let next_marker = (page.len() == limit as usize)
        .then(|| page.last().map(|(w, _)| w.id))
        .flatten();
    let out: Vec<WorkflowView> = page
        .into_iter()
        .map(|(row, counts)| WorkflowView::new(row, counts))
        .collect();
    Ok(Json(WorkflowList {
        workflows: out,
        next_marker,
    }))
}

/// One workflow, with its derived state and task counts.
#[utoipa::path(get, path = "/workflows/{wf}", tag = "workflows",
    params(("wf" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowView),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
    ))]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(state.app.workflow_view(workflow_id(&wf)?).await?))
}

/// Changes a workflow's name or description.
#[utoipa::path(patch, path = "/workflows/{wf}", tag = "workflows",
    params(("wf" = String, Path, description = "Workflow id")),
    request_body = WorkflowPatch,
    responses(
        (status = 200, description = "The changed workflow", body = WorkflowView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid content", body = ErrorBody),
    ))]
pub(super) async fn patch(
    State(state): State<AppState>,
    Path(wf): Path<String>,
    JsonBody(patch): JsonBody<WorkflowPatch>,
) -> Result<Json<WorkflowView>, ApiError> {
    let id = workflow_id(&wf)?;
    state.app.patch_workflow(id, patch).await?;
    Ok(Json(state.app.workflow_view(id).await?))
}

/// Cancels every unfinished task (workers are told), then deletes the workflow.
#[utoipa::path(delete, path = "/workflows/{wf}", tag = "workflows",
    params(("wf" = String, Path, description = "Workflow id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
    ))]
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.delete_workflow(workflow_id(&wf)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cancels every unfinished task and keeps the record; the workflow takes
/// no new tasks.
#[utoipa::path(post, path = "/workflows/{wf}/cancel", tag = "workflows",
    params(("wf" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The cancelled workflow", body = WorkflowView),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
    ))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(
        state
            .app
            .workflow_action_view(&wf, WorkflowAction::Cancel)
            .await?,
    ))
}

//! Handlers of `/v1/workflows` and `/v1/workflows/{wf}` (and `/cancel`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{JsonBody, QueryParams};
use super::views::WorkflowView;
use super::{AppState, workflow_id};
use crate::domain::{NewWorkflow, TaskSpec, WorkflowId, WorkflowPatch, WorkflowState};

/// Validates every task of a batch, reporting all invalid fields at once.
pub(crate) fn validate_tasks(
    tasks: Vec<crate::domain::NewTask>,
    prefix: &str,
) -> Result<Vec<TaskSpec>, ApiError> {
    let mut specs = Vec::with_capacity(tasks.len());
    let mut errors = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.validate(&format!("{prefix}[{i}].")) {
            Ok(s) => specs.push(s),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(ApiError::validation(errors))
    }
}

pub(super) async fn create(
    State(state): State<AppState>,
    JsonBody(mut new): JsonBody<NewWorkflow>,
) -> Result<(StatusCode, Json<WorkflowView>), ApiError> {
    let tasks = new.tasks.take();
    let with_tasks = tasks.is_some();
    let specs = validate_tasks(tasks.unwrap_or_default(), "tasks")?;
    let id = state.tracker.create_workflow(new, specs).await?;
    let mut view = state.workflow_view(id).await?;
    if with_tasks {
        let rows = state.store().tasks(id, None, None).await?;
        view.tasks = Some(state.task_views(id, rows).await?);
    }
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
    marker: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let max = state.settings.api.max_page_size;
    let limit = q.limit.unwrap_or(max.min(100));
    if limit == 0 || limit > max {
        return Err(ApiError::unprocessable(
            "invalid_query",
            format!("limit must be between 1 and {max}"),
        ));
    }
    let filter = q
        .state
        .as_deref()
        .map(str::parse::<WorkflowState>)
        .transpose()
        .map_err(|e| ApiError::unprocessable("invalid_query", format!("state: {e}")))?;
    let mut marker = q
        .marker
        .as_deref()
        .map(str::parse::<WorkflowId>)
        .transpose()
        .map_err(|_| ApiError::unprocessable("invalid_query", "marker must be a workflow id"))?;
    let mut out = Vec::new();
    let mut next_marker = None;
    'pages: loop {
        let page = state.store().workflows_after(marker, limit).await?;
        let exhausted = page.len() < limit as usize;
        for row in page {
            marker = Some(row.id);
            let counts = state.store().task_counts(row.id).await?;
            let view = WorkflowView::new(row, counts);
            if filter.is_none_or(|f| f == view.state) {
                out.push(view);
                if out.len() == limit as usize {
                    next_marker = marker;
                    break 'pages;
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(Json(json!({"workflows": out, "next_marker": next_marker})))
}

pub(super) async fn show(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(state.workflow_view(workflow_id(&wf)?).await?))
}

pub(super) async fn patch(
    State(state): State<AppState>,
    Path(wf): Path<String>,
    JsonBody(patch): JsonBody<WorkflowPatch>,
) -> Result<Json<WorkflowView>, ApiError> {
    let id = workflow_id(&wf)?;
    state.tracker.patch_workflow(id, patch).await?;
    Ok(Json(state.workflow_view(id).await?))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.tracker.delete_workflow(workflow_id(&wf)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    let id = workflow_id(&wf)?;
    state.tracker.cancel_workflow(id).await?;
    Ok(Json(state.workflow_view(id).await?))
}

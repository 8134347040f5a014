//! `GET /v1/workflows/{wf}/graph`: a workflow's graph folded and laid out
//! on the server (see [`crate::app::summary`]), bounded in size whatever
//! the workflow's: what the web console draws.

use axum::Json;
use axum::extract::{Path, State};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::app::summary::GraphSummary;

/// A workflow's graph for drawing: counts per state, and nodes in layers
/// with group tasks as one node (their children counted), long chains and
/// fan-outs folded into one node each with counts, and at most 1,500 nodes
/// whatever the workflow's size.
#[utoipa::path(get, path = "/workflows/{wf}/graph", tag = "workflows",
    params(("wf" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The folded graph", body = GraphSummary),
        (status = 404, description = "Unknown workflow", body = ErrorBody),
    ))]
pub(super) async fn graph(
    State(state): State<AppState>,
    Path(wf): Path<String>,
) -> Result<Json<GraphSummary>, ApiError> {
    Ok(Json(state.app.graph_summary(&wf).await?))
}

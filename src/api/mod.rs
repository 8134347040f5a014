//! The REST API (SPEC 3): routes, shared state, readiness, and the views
//! built from the store. Handlers validate input (parse at the edge), hand
//! state changes to the tracker and read through the store; they never touch
//! AMQP or SQL themselves.

mod auth;
mod error;
mod extract;
mod servers;
pub(crate) mod tasks;
pub mod views;
pub(crate) mod workflows;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use error::ApiError;

use crate::broker::Broker;
use crate::config::Settings;
use crate::domain::{TaskState, WorkflowId};
use crate::store::{Store, TaskRow, now_us};
use crate::tracker::Tracker;
use views::{TaskView, WorkflowView};

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub tracker: Tracker,
    pub broker: Broker,
    pub registry: crate::registration::Registry,
    pub settings: Arc<Settings>,
}

impl AppState {
    pub(crate) fn store(&self) -> &Store {
        self.tracker.store()
    }

    /// Whether a heartbeat at `last_seen` is recent enough to call the server online.
    fn online(&self, last_seen: Option<i64>) -> bool {
        let window = self.settings.dispatch.heartbeat_timeout_s as i64 * 1_000_000;
        last_seen.is_some_and(|t| now_us() - t <= window)
    }

    pub(crate) async fn workflow_view(&self, id: WorkflowId) -> Result<WorkflowView, ApiError> {
        let row = self
            .store()
            .workflow(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workflow {id} not found")))?;
        let counts = self.store().task_counts(id).await?;
        Ok(WorkflowView::new(row, counts))
    }

    pub(crate) async fn task_view(&self, row: TaskRow) -> Result<TaskView, ApiError> {
        let deps = self.store().dependencies(row.id).await?;
        let online = self.online(self.store().server_last_seen(&row.server_id).await?);
        Ok(TaskView::new(row, &deps, online)?)
    }

    /// Views of many tasks of one workflow, with two extra queries in all.
    pub(crate) async fn task_views(
        &self,
        workflow: WorkflowId,
        rows: Vec<TaskRow>,
    ) -> Result<Vec<TaskView>, ApiError> {
        let mut deps: HashMap<_, Vec<(String, TaskState)>> = HashMap::new();
        for (task, name, state) in self.store().dependency_edges(workflow).await? {
            deps.entry(task).or_default().push((name, state));
        }
        let seen = self.store().servers_last_seen().await?;
        rows.into_iter()
            .map(|row| {
                let online = self.online(seen.get(&row.server_id).copied());
                let d = deps.get(&row.id).map(Vec::as_slice).unwrap_or(&[]);
                TaskView::new(row, d, online).map_err(ApiError::from)
            })
            .collect()
    }
}

/// Parses a workflow id from a path; anything else names no workflow.
pub(crate) fn workflow_id(raw: &str) -> Result<WorkflowId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("workflow {raw:?} not found")))
}

/// The application's router.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.api.max_body_bytes;
    let v1 = Router::new()
        .route("/workflows", post(workflows::create).get(workflows::list))
        .route(
            "/workflows/{wf}",
            get(workflows::show)
                .patch(workflows::patch)
                .delete(workflows::delete),
        )
        .route("/workflows/{wf}/cancel", post(workflows::cancel))
        .route("/servers", post(servers::register).get(servers::list))
        .route("/servers/{id}", get(servers::show).delete(servers::revoke))
        .route("/workflows/{wf}/tasks", post(tasks::add).get(tasks::list))
        .route(
            "/workflows/{wf}/tasks/{task}",
            get(tasks::show).patch(tasks::patch).delete(tasks::cancel),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store().ping().await.is_ok();
    let broker = state.broker.ping().await;
    let status = if store && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    (
        status,
        Json(
            json!({"status": word(store && broker), "store": word(store), "broker": word(broker)}),
        ),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::metrics_handle().render(),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

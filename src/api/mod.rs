//! The REST API (SPEC 3): routes, shared state, readiness and metrics.
//! Handlers parse input at the edge, call the use cases and queries of
//! `app` (shared with the RPC API, which this module never imports), and
//! map [`crate::app::AppError`] to statuses; they never touch AMQP or SQL
//! themselves (the one broker question, a queue's depth, goes through
//! `broker`). Every route is registered through utoipa-axum, so
//! `/openapi.json` cannot miss one.

mod auth;
mod error;
mod events;
mod extract;
pub mod openapi;
mod operate;
mod output;
mod servers;
mod summary;
pub(crate) mod tasks;
mod ui;
pub mod views;
mod workflows;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json, Router};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};

use crate::app::App;
use crate::broker::Broker;
use crate::config::Settings;
use crate::domain::{TaskState, WorkflowId};
use crate::store::Store;
use views::{Health, Readiness};

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The use cases and reads.
    pub app: App,
    /// The dispatcher's broker, for `/readyz` and the one broker question
    /// the API asks (a server's task queue depth).
    pub broker: Broker,
    /// Creates and revokes registered servers' broker users and queues.
    pub registry: crate::registration::Registry,
    /// The loaded settings: tokens, body and page limits.
    pub settings: Arc<Settings>,
    /// Cancelled at shutdown: ends event streams, which would otherwise
    /// hold the graceful shutdown open forever.
    pub shutdown: CancellationToken,
    /// When `/metrics` last computed its gauges from the store: they are
    /// full-table counts, done at most once per [`GAUGE_MAX_AGE`] however
    /// often scrapers come.
    pub gauges_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// One permit per open event stream (`api.max_event_streams`), held by
    /// the stream until it ends or its client goes.
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// How old the store-computed gauges of `/metrics` may be.
const GAUGE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

impl AppState {
    pub(crate) fn store(&self) -> &Store {
        self.app.store()
    }
}

/// Parses a workflow id from a path; anything else names no workflow.
pub(crate) fn workflow_id(raw: &str) -> Result<WorkflowId, ApiError> {
    Ok(crate::app::queries::workflow_id(raw)?)
}

/// A list's page size: `limit` if given, else 100 (or `api.max_page_size`
/// if smaller); 422 outside 1 to `api.max_page_size`.
pub(crate) fn page_limit(settings: &Settings, limit: Option<u32>) -> Result<u32, ApiError> {
    let max = settings.api.max_page_size;
    let limit = limit.unwrap_or(max.min(100));
    if limit == 0 || limit > max {
        return Err(ApiError::unprocessable(
            "invalid_query",
            format!("limit must be between 1 and {max}"),
        ));
    }
    Ok(limit)
}

/// Every documented route, with its OpenAPI description.
fn api_routes(state: &AppState) -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(workflows::create, workflows::list))
        .routes(routes!(
            workflows::show,
            workflows::patch,
            workflows::delete
        ))
        .routes(routes!(workflows::cancel))
        .routes(routes!(operate::rerun_workflow))
        .routes(routes!(operate::pause))
        .routes(routes!(operate::resume))
        .routes(routes!(operate::rerun_task))
        .routes(routes!(operate::approve))
        .routes(routes!(operate::reject))
        .routes(routes!(operate::attempts))
        .routes(routes!(output::output))
        .routes(routes!(tasks::add, tasks::list))
        .routes(routes!(tasks::show, tasks::patch, tasks::cancel))
        .routes(routes!(events::stream))
        .routes(routes!(summary::graph))
        .routes(routes!(servers::register, servers::list))
        .routes(routes!(servers::show, servers::patch, servers::revoke))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    OpenApiRouter::with_openapi(openapi::base())
        .nest("/v1", v1)
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .merge(OpenApiRouter::new().routes(routes!(metrics)).route_layer(
            axum::middleware::from_fn_with_state(state.clone(), auth::require_metrics_token),
        ))
        .routes(routes!(openapi::document))
}

/// The OpenAPI document of [`router`], complete.
pub fn openapi_document(state: &AppState) -> utoipa::openapi::OpenApi {
    openapi::finish(api_routes(state).into_openapi())
}

/// The application's router.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.api.max_body_bytes;
    let (router, doc) = api_routes(&state).split_for_parts();
    let doc = Arc::new(openapi::finish(doc));
    router
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(doc))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the store and the broker are reachable.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Store and broker reachable", body = Readiness),
        (status = 503, description = "The store or the broker is unreachable", body = Readiness),
    ))]
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store().ping().await.is_ok();
    let broker = state.broker.ping().await;
    let status = if store && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" }.to_owned();
    (
        status,
        Json(Readiness {
            status: word(store && broker),
            store: word(store),
            broker: word(broker),
        }),
    )
}

/// Prometheus metrics (text exposition format). The gauges `bora_tasks` and
/// `bora_servers_online` are computed from the store, at most once per
/// [`GAUGE_MAX_AGE`] however often it is scraped. With `api.tokens` or
/// `api.metrics_token` set it needs one of them.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format", body = String,
            content_type = "text/plain"),
        (status = 401, description = "With api.tokens or api.metrics_token set: no or a wrong bearer token",
            body = ErrorBody),
    ))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Full-table counts: at most once per GAUGE_MAX_AGE. A store that does
    // not answer leaves the last values in place; the counters still render.
    let due = {
        let mut at = state.gauges_at.lock().unwrap_or_else(|e| e.into_inner());
        let due = at.is_none_or(|t| t.elapsed() >= GAUGE_MAX_AGE);
        if due {
            *at = Some(std::time::Instant::now());
        }
        due
    };
    if due {
        if let Ok(counts) = state.store().task_counts_all().await {
            for st in TaskState::ALL {
                let n = counts.0.get(&st).copied().unwrap_or(0);
                metrics::gauge!("bora_tasks", "state" => st.as_str()).set(n as f64);
            }
        }
        if let Ok(seen) = state.store().servers_last_seen().await {
            let online = seen
                .values()
                .filter(|&&t| state.app.online(Some(t)))
                .count();
            metrics::gauge!("bora_servers_online").set(online as f64);
        }
    }
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

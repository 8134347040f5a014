//! Handlers of `/v1/servers`: registration (broker credentials returned
//! once), listing with `last_seen`, and revocation.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::views::timestamp;
use crate::app::input::NewServer;
use crate::domain::{ServerId, ServerKind};
use crate::registration::{Registration, RegistryError};
use crate::store::ServerRow;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerView {
    pub server_id: String,
    pub kind: ServerKind,
    /// Registered through the API (else only seen in heartbeats).
    pub registered: bool,
    pub last_seen: Option<String>,
    pub online: bool,
    pub created_at: String,
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::App(e) => e.into(),
            other => {
                tracing::error!(error = %other, "broker refused a registration step");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "broker_unavailable",
                    format!("the broker did not complete the change: {other}"),
                )
            }
        }
    }
}

fn server_id(raw: &str) -> Result<ServerId, ApiError> {
    ServerId::parse(raw).map_err(|_| ApiError::not_found(format!("server {raw:?} not found")))
}

impl AppState {
    fn server_view(&self, row: ServerRow) -> ServerView {
        ServerView {
            online: self.app.online(row.last_seen),
            server_id: row.server_id,
            kind: row.kind,
            registered: row.registered,
            last_seen: row.last_seen.map(timestamp),
            created_at: timestamp(row.created_at),
        }
    }
}

/// The servers bora knows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerView>,
}

/// Registers a server: its broker user, permissions and queues. The
/// password is returned here once.
#[utoipa::path(post, path = "/servers", tag = "servers",
    request_body = NewServer,
    responses(
        (status = 201, description = "Registered", body = Registration),
        (status = 200, description = "Already registered: password rotated", body = Registration),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid server id or kind", body = ErrorBody),
        (status = 502, description = "The broker did not complete a step", body = ErrorBody),
    ))]
pub(super) async fn register(
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewServer>,
) -> Result<(StatusCode, Json<Registration>), ApiError> {
    let id = ServerId::parse(&new.server_id).map_err(|e| {
        ApiError::validation(vec![crate::domain::FieldError {
            field: "server_id".into(),
            message: e,
        }])
    })?;
    let reg = state.registry.register(&id, new.kind).await?;
    tracing::info!(server_id = %id, kind = new.kind.as_str(), rotated = reg.rotated, "server registered");
    let status = if reg.rotated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(reg)))
}

/// Every server known: registered, or seen in a heartbeat.
#[utoipa::path(get, path = "/servers", tag = "servers",
    responses((status = 200, description = "The servers", body = ServerList)))]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<ServerList>, ApiError> {
    let rows = state.store().servers().await?;
    let servers = rows.into_iter().map(|r| state.server_view(r)).collect();
    Ok(Json(ServerList { servers }))
}

/// One server, with its last heartbeat.
#[utoipa::path(get, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "Server id")),
    responses(
        (status = 200, description = "The server", body = ServerView),
        (status = 404, description = "Unknown server", body = ErrorBody),
    ))]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ServerView>, ApiError> {
    let id = server_id(&id)?;
    let row = state
        .store()
        .server(id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("server {id} not found")))?;
    Ok(Json(state.server_view(row)))
}

/// Revokes a server: deletes its broker user (its connections drop),
/// cancels its unfinished tasks and deletes its queues.
#[utoipa::path(delete, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "Server id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "Not a registered server", body = ErrorBody),
        (status = 502, description = "The broker did not complete a step", body = ErrorBody),
    ))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = server_id(&id)?;
    let known = state.store().server(id.as_str()).await?;
    if !known.is_some_and(|s| s.registered) {
        return Err(ApiError::not_found(format!(
            "server {id} is not registered"
        )));
    }
    let cancelled = state.registry.revoke(&id).await?;
    tracing::info!(server_id = %id, cancelled, "server revoked");
    Ok(StatusCode::NO_CONTENT)
}

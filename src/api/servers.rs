//! Handlers of `/v1/servers`: registration (broker credentials returned
//! once), labels, listing with `last_seen` (filtered by label), and
//! revocation.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use crate::app::input::{NewServer, ServerPatch};
use crate::app::queries::server_id;
use crate::app::views::{ServerList, ServerView};
use crate::domain::{Labels, field_err, parse_label};
use crate::registration::{Registration, RegistryError};

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

/// The labels `?label=k=v&label=...` asks for: every one must match.
///
/// # Errors
/// 422 `invalid_query` for a parameter other than `label`;
/// `validation_failed` naming every `label` that is not `key=value` with a
/// valid key and value, or a key given twice with two values.
fn wanted_labels(query: Option<&str>) -> Result<Labels, ApiError> {
    let mut wanted = Labels::new();
    let mut errors = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "label" {
            return Err(ApiError::unprocessable(
                "invalid_query",
                format!("unknown query parameter {name:?}: only label=key=value is accepted"),
            ));
        }
        match parse_label(&value) {
            Ok((k, v)) => {
                if let Some(other) = wanted.get(&k).filter(|o| **o != v) {
                    errors.push(field_err(
                        "label",
                        format!(
                            "label {k:?} is given as {other:?} and as {v:?}: no server carries both"
                        ),
                    ));
                    continue;
                }
                wanted.insert(k, v);
            }
            Err(message) => errors.push(field_err("label", message)),
        }
    }
    if errors.is_empty() {
        Ok(wanted)
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Registers a server: its broker user, permissions and queues. The
/// password is returned here once.
#[utoipa::path(post, path = "/servers", tag = "servers",
    request_body = NewServer,
    responses(
        (status = 201, description = "Registered", body = Registration),
        (status = 200, description = "Already registered: password rotated (its labels kept unless `labels` is given)", body = Registration),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid server id, kind or labels (`validation_failed` names each)", body = ErrorBody),
        (status = 502, description = "The broker did not complete a step", body = ErrorBody),
    ))]
pub(super) async fn register(
    State(state): State<AppState>,
    JsonBody(new): JsonBody<NewServer>,
) -> Result<(StatusCode, Json<Registration>), ApiError> {
    // Every field is checked before the broker is touched.
    let new = new.validate()?;
    let id = &new.server_id;
    let reg = state
        .registry
        .register(id, new.kind, new.labels.as_ref())
        .await?;
    tracing::info!(server_id = %id, kind = new.kind.as_str(), rotated = reg.rotated, labels = reg.labels.len(), "server registered");
    let status = if reg.rotated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(reg)))
}

/// Every server known: registered, or seen in a heartbeat; with `label`,
/// only those carrying every label given.
#[utoipa::path(get, path = "/servers", tag = "servers",
    params(
        ("label" = Option<Vec<String>>, Query, style = Form, explode,
            description = "`key=value`; repeatable: a server must carry every label given"),
    ),
    responses(
        (status = 200, description = "The servers", body = ServerList),
        (status = 422, description = "A label that is not key=value with a valid key and value (`validation_failed`), or another parameter (`invalid_query`)", body = ErrorBody),
    ))]
pub(super) async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<ServerList>, ApiError> {
    let wanted = wanted_labels(query.as_deref())?;
    Ok(Json(state.app.servers_view(&wanted).await?))
}

/// One server, with its labels and last heartbeat.
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
    Ok(Json(state.app.server_view(&id).await?))
}

/// Changes a registered server's labels: a JSON merge patch of them
/// (`{"labels": {"role": "web", "old": null}}` sets `role` and removes
/// `old`). Only the API sets labels, never a worker.
#[utoipa::path(patch, path = "/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "Server id")),
    request_body = ServerPatch,
    responses(
        (status = 200, description = "The server with its labels changed", body = ServerView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Not a registered server", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A bad label key or value, or more than 32 labels (`validation_failed` names each)", body = ErrorBody),
    ))]
pub(super) async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<ServerPatch>,
) -> Result<Json<ServerView>, ApiError> {
    let id = server_id(&id)?;
    Ok(Json(state.app.label_server_view(&id, &patch.labels).await?))
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

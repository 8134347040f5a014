//! The API's one error type and its JSON body:
//! `{"error": {"code": "snake_case", "message": "...", "details": [...]}}`.
//! Every refusal, including those of extractors and unknown routes, goes
//! through here, so a client never sees a body of another shape.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::AppError;
use crate::domain::FieldError;
use crate::store::StoreError;

/// A refusal on its way to the client: the status and what goes into
/// [`ErrorBody`]. Built from an [`AppError`] or by the API itself.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status of the response.
    pub status: StatusCode,
    /// Stable, snake_case: what scripts match on.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Every invalid field, for `validation_failed`; else empty.
    pub details: Vec<FieldError>,
    /// Seconds for a `Retry-After` header (a 503 that will pass).
    pub retry_after_s: Option<u32>,
}

/// The body of every refusal.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was refused and why.
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: what scripts match on.
    pub code: String,
    /// For people.
    pub message: String,
    /// Every invalid field, for `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

impl ApiError {
    /// A refusal with `status`, `code` and `message`, and no field details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after_s: None,
        }
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422 with a code of its own (such as `invalid_query` or
    /// `invalid_body`) and no field details.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 422 listing every invalid field.
    pub fn validation(details: Vec<FieldError>) -> Self {
        AppError::validation(details).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(s),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // Not the client's fault: log it, and say only that the store failed.
        tracing::error!(error = %e, "store failure while serving a request");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store failed to answer; try again",
        )
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NotFound(message) => ApiError::not_found(message),
            AppError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            AppError::Invalid {
                code,
                message,
                details,
            } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code,
                message,
                details,
                retry_after_s: None,
            },
            AppError::IllegalMove(e) => {
                tracing::error!(error = %e, "a request asked for an illegal state move");
                ApiError::new(StatusCode::CONFLICT, "illegal_state_change", e.to_string())
            }
            AppError::Store(e) => e.into(),
        }
    }
}

impl From<crate::domain::Corrupt> for ApiError {
    fn from(e: crate::domain::Corrupt) -> Self {
        StoreError::from(e).into()
    }
}

//! Bearer-token authentication of `/v1` (SPEC 3): with `api.tokens` set,
//! every request needs `Authorization: Bearer <token>` matching one of them,
//! compared in constant time. With none set the API is open, which start-up
//! allows only on a loopback address.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

pub(super) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let tokens = &state.settings.api.tokens;
    if tokens.is_empty() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = presented.is_some_and(|p| {
        // Check every token, so the time taken says nothing about which matched.
        tokens.iter().fold(false, |acc, t| {
            acc | bool::from(t.expose().as_bytes().ct_eq(p.as_bytes()))
        })
    });
    if ok {
        return next.run(req).await;
    }
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        if presented.is_some() {
            "invalid bearer token"
        } else {
            "missing Authorization: Bearer <token>"
        },
    )
    .into_response();
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    resp
}

//! Bearer-token authentication of `/v1` (SPEC 3): with `api.tokens` set,
//! every request needs `Authorization: Bearer <token>` (the scheme in any
//! case, RFC 7235) matching one of them, compared as SHA-256 digests in
//! constant time (`ApiSettings::accepts_token`). With none set the API is
//! open, which start-up allows only on a loopback address.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

pub(super) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if state.settings.api.tokens.is_empty() {
        return next.run(req).await;
    }
    let presented = presented(&req);
    if presented.is_some_and(|p| state.settings.api.accepts_token(p)) {
        return next.run(req).await;
    }
    unauthorized(if presented.is_some() {
        "invalid bearer token"
    } else {
        "missing Authorization: Bearer <token>"
    })
}

/// `GET /metrics`: open while neither `api.tokens` nor `api.metrics_token`
/// is set (start-up allows that only on loopback), else it needs one of
/// them as a bearer token.
pub(super) async fn require_metrics_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let api = &state.settings.api;
    if !api.metrics_closed() || presented(&req).is_some_and(|p| api.accepts_metrics_token(p)) {
        return next.run(req).await;
    }
    unauthorized("GET /metrics needs Authorization: Bearer <an API token or api.metrics_token>")
}

/// The bearer token a request presents, if any.
fn presented(req: &Request) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

/// 401 `unauthorized` with `WWW-Authenticate: Bearer`.
fn unauthorized(message: &'static str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// The credentials of a `Bearer` authorization (the scheme in any case, one
/// or more spaces after it); `None` for another scheme or none.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("BEARER\tabc"), Some("abc"));
        assert_eq!(bearer("Bearer "), Some(""));
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer("Basic abc"), None);
    }
}

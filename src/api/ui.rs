//! The web console (SPEC 7.6): `GET /ui/` and its assets, embedded in the
//! binary at build time from `ui/` (rust-embed; no JavaScript toolchain, no
//! build step: plain modules and CSS). The page itself needs no token: it
//! asks for one when the API answers 401 and sends it on every call. Not
//! part of `/openapi.json` (plain axum routes). Every answer carries a
//! `Content-Security-Policy` of `default-src 'self'`: the console loads
//! nothing from another origin and runs no inline script.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use super::error::ApiError;

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
struct Assets;

/// What every console answer carries.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// The console's routes (outside `/v1`, outside the token check).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/config.json", get(config))
        .route("/ui/{*path}", get(asset))
}

/// What the page must know before its first API call: whether to ask for
/// a token (so it never starts with a 401).
async fn config(State(state): State<AppState>) -> Response {
    let auth = !state.settings.api.tokens.is_empty();
    let mut resp = Json(serde_json::json!({ "auth": auth })).into_response();
    secure(resp.headers_mut());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// One embedded file, with its type, the CSP, and an ETag (its SHA-256):
/// browsers revalidate (`no-cache`) and get 304 while it is unchanged.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found(format!("no console file {path:?}")).into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.data.into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(file.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(h);
    resp
}

/// The headers every console answer carries.
fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

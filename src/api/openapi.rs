//! The OpenAPI 3.1 document served at `GET /openapi.json`.
//!
//! Paths come from the `#[utoipa::path]` of each handler, registered through
//! utoipa-axum's router (so a route cannot exist undocumented); this module
//! adds what is common to them: the document's info, the bearer scheme, the
//! refusals every `/v1` route can give (401, 503). The schemas of the
//! domain's types are `app::schema`'s.

use std::borrow::Cow;
use std::sync::Arc;

use axum::{Extension, Json};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Content, OpenApi, RefOr, Response, ResponseBuilder, Responses, ServerBuilder,
};
use utoipa::{OpenApi as _, ToSchema};

use super::error::ErrorBody;
use super::views::{EventView, StreamEnd};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "bora",
        description = "Message-queue-driven task dispatcher for configuring servers. \
            Errors are always `{\"error\": {\"code\", \"message\", \"details\"?}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, EventView, StreamEnd)),
    tags(
        (name = "workflows", description = "Workflows and their event stream"),
        (name = "tasks", description = "Tasks of a workflow"),
        (name = "operate", description = "Operating a run: rerun, pause and resume, approval gates, attempts"),
        (name = "servers", description = "Server registration and broker credentials"),
        (name = "health", description = "Liveness, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

/// The document before the routes are added.
pub(super) fn base() -> OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.servers = Some(vec![ServerBuilder::new().url("/").build()]);
    doc
}

/// Adds what every `/v1` operation shares: bearer auth (when tokens are
/// configured), 401, and 503 when the store does not answer.
pub(super) fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    let error = |description: &str| -> RefOr<Response> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                )))),
            )
            .build()
            .into()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if path.ends_with("/events")
            && let Some(op) = &mut item.get
            && let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200")
        {
            ok.content.insert(
                "text/event-stream".into(),
                RefOr::T(Content::new(Some(sse_event_schema()))),
            );
        }
        if !path.starts_with("/v1/") {
            continue;
        }
        let ops: [&mut Option<Operation>; 5] = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in ops.into_iter().flatten() {
            // Either no auth (no tokens configured) or a bearer token.
            op.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new("bearer", Vec::<String>::new()),
            ]);
            let responses: &mut Responses = &mut op.responses;
            responses
                .responses
                .entry("401".into())
                .or_insert_with(|| error("No or bad bearer token (only when api.tokens is set)"));
            responses
                .responses
                .entry("503".into())
                .or_insert_with(|| error("The store did not answer (`store_unavailable`)"));
        }
    }
    doc
}

/// One event of the stream, as OpenAPI 3.1 describes a `text/event-stream`
/// item: `{event, data, id}`, `data` being JSON of the schema named by the
/// event (`contentMediaType`/`contentSchema`).
fn sse_event_schema() -> RefOr<Schema> {
    let schema_ref = |name: Cow<'static, str>| -> RefOr<Schema> {
        RefOr::Ref(utoipa::openapi::Ref::from_schema_name(name))
    };
    let event = |names: &[&str], data: RefOr<Schema>, with_id: bool| {
        let mut obj = ObjectBuilder::new()
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(names.iter().copied())),
            )
            .required("event")
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json")
                    .content_schema(Some(data)),
            )
            .required("data");
        if with_id {
            obj = obj
                .property(
                    "id",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some(
                            "The event's id in the log; send it back as Last-Event-ID",
                        )),
                )
                .required("id");
        }
        obj
    };
    RefOr::T(Schema::OneOf(
        OneOfBuilder::new()
            .description(Some(
                "`task` and `workflow` events (with an id) carry an EventView; the final `end` event a StreamEnd",
            ))
            .item(event(&["task", "workflow"], schema_ref(EventView::name()), true))
            .item(event(&["end"], schema_ref(StreamEnd::name()), false))
            .build(),
    ))
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub(super) async fn document(Extension(doc): Extension<Arc<OpenApi>>) -> Json<OpenApi> {
    Json(OpenApi::clone(&doc))
}

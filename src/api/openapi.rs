//! The OpenAPI 3.1 description of the HTTP API, served at `/openapi.json`, generated from the handlers'
//! annotations and the request and response types themselves; a test checks that every route the router
//! serves is described.

use axum::Json;
use serde_json::Value;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{documents, embeddings, health, search};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "recall",
        description = "A searchable, auditable memory for AI agents. Commands append events to a log and answer at \
            once; a projector embeds them into pgvector; searches answer with the log position they reflect (a \
            receipt) that replays the same search later with `as_of`."
    ),
    paths(
        documents::add,
        documents::get,
        documents::update,
        documents::remove,
        documents::history,
        search::search,
        embeddings::embeddings,
        embeddings::models,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_document,
    ),
    modifiers(&BearerToken),
    security((), ("bearer" = []))
)]
struct ApiDoc;

/// The bearer scheme, required when the server has RECALL_API_TOKEN set.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("Required when the server has RECALL_API_TOKEN set.".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

pub fn openapi() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document is JSON")
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", security(()), responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi())
}

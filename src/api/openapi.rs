//! The OpenAPI 3.1 description of the HTTP API, served at `/openapi.json`. Written by hand beside the
//! handlers; a test checks that every route the router serves is described here.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

pub fn openapi() -> Value {
    let scope = json!({"name": "scope", "in": "query", "schema": {"type": "string", "default": "default"},
        "description": "The document's scope (tenant or collection)."});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"},
        "description": "The document id; percent-encode `/` as %2F."});
    let wait_for = json!({"name": "wait_for", "in": "query", "schema": {"type": "integer", "minimum": 0},
        "description": "Wait until the read model has passed this log position (read-your-writes); 504 on timeout."});
    let if_match = json!({"name": "If-Match", "in": "header", "schema": {"type": "string"},
        "description": "The version the document must be at (its ETag); 409 when it is not."});
    let idempotency = json!({"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "format": "uuid"},
        "description": "Makes a retried command a no-op: the same key and content is appended once."});
    let command_errors = json!({
        "400": error_response("Invalid JSON, an unknown field or an invalid document (the message names it)."),
        "401": error_response("Missing or wrong bearer token."),
        "409": error_response("Version conflict, or the document already exists with other content."),
        "413": error_response("The body or the text is over the size limit."),
        "503": error_response("The database is unavailable; nothing was written. Retry after the Retry-After seconds."),
    });
    let with = |extra: Value| {
        let mut all = command_errors.clone();
        all.as_object_mut()
            .expect("an object")
            .extend(extra.as_object().expect("an object").clone());
        all
    };
    // Apart, because one json! of the whole document is past the macro's recursion limit.
    let search_request = json!({"type": "object", "required": ["query"], "additionalProperties": false, "properties": {
                    "query": {"type": "string"},
                    "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    "mode": {"enum": ["dense", "lexical", "hybrid"], "default": "hybrid",
                        "description": "Embeddings, BM25, or both fused by reciprocal rank."},
                    "scope": {"type": "string"},
                    "filter": {"type": "object", "description": "Metadata the documents must contain."},
                    "as_of": {"type": "integer", "minimum": 0, "description": "Search as of this log position (a receipt)."},
                    "wait_for": {"type": "integer", "minimum": 0},
                    "distinct_documents": {"type": "boolean", "default": false,
                        "description": "Each document once, at its best chunk: up to k distinct documents."},
                    "other_chunks": {"type": "boolean", "default": false,
                        "description": "With distinct_documents: each result lists its document's other matching chunks."}}});
    let search_response = json!({"type": "object", "properties": {
                    "position": {"type": "integer", "description": "The receipt: the log position the read model reflected."},
                    "results": {"type": "array", "items": {"type": "object", "properties": {
                        "scope": {"type": "string"}, "document_id": {"type": "string"},
                        "chunk_index": {"type": "integer"}, "score": {"type": "number"},
                        "title": {"type": "string"}, "text": {"type": "string"},
                        "char_start": {"type": "integer"}, "char_end": {"type": "integer"},
                        "metadata": {"type": "object"},
                        "other_chunks": {"type": "array", "items": {"type": "object", "properties": {
                            "chunk_index": {"type": "integer"}, "char_start": {"type": "integer"},
                            "char_end": {"type": "integer"}, "score": {"type": "number"}}}}}}}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "recall",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A searchable, auditable memory for AI agents. Commands append events to a log and answer at once; \
                a projector embeds them into pgvector; searches answer with the log position they reflect (a receipt) \
                that replays the same search later with `as_of`."
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/documents": {"post": {
                "summary": "Add a document",
                "parameters": [idempotency],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewDocument"}}}},
                "responses": with(json!({
                    "201": ok("Appended; `position` is the event's log position (pass it as wait_for).", "CommandResult"),
                    "200": ok("The same content was already there; nothing appended.", "CommandResult"),
                })),
            }},
            "/v1/documents/{id}": {
                "get": {
                    "summary": "A document as the read model has it",
                    "parameters": [id, scope, wait_for],
                    "responses": {
                        "200": ok("The document", "Document"),
                        "404": error_response("Not in the read model (not added, or not projected yet)."),
                        "410": error_response("Removed."),
                        "504": error_response("wait_for timed out."),
                    },
                },
                "put": {
                    "summary": "Replace a document's title, text and metadata",
                    "parameters": [id, scope, if_match, idempotency],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Replacement"}}}},
                    "responses": with(json!({
                        "200": ok("Appended (or unchanged).", "CommandResult"),
                        "404": error_response("No such document."),
                        "410": error_response("The document was removed; add it again."),
                    })),
                },
                "delete": {
                    "summary": "Remove a document",
                    "parameters": [id, scope, if_match, idempotency],
                    "responses": with(json!({
                        "200": ok("Appended.", "CommandResult"),
                        "404": error_response("No such document."),
                        "410": error_response("Already removed."),
                    })),
                },
            },
            "/v1/documents/{id}/history": {"get": {
                "summary": "Every event of a document, oldest first",
                "parameters": [id, scope],
                "responses": {"200": ok("The events", "History"), "404": error_response("No such document.")},
            }},
            "/v1/search": {"post": {
                "summary": "The chunks nearest a question, with a receipt",
                "parameters": [wait_for],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}}}},
                "responses": {
                    "200": ok("Results, best first, and the receipt position.", "SearchResponse"),
                    "400": error_response("Invalid request (an empty or over-long query, k out of 1..100, a bad filter or as_of, unknown field)."),
                    "401": error_response("Missing or wrong bearer token."),
                    "409": error_response("as_of is ahead of what the read model reflects."),
                    "503": error_response("The model is loading, there is no read model yet, or the database is unavailable."),
                    "504": error_response("wait_for timed out."),
                },
            }},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "Up"}}}},
            "/readyz": {"get": {"summary": "Readiness: database, migrations, model, projector", "security": [],
                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready; `checks` says why"}}}},
            "/metrics": {"get": {"summary": "Prometheus text-format metrics",
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "Required when the server has RECALL_API_TOKEN set."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "NewDocument": {"type": "object", "required": ["text"], "additionalProperties": false, "properties": {
                    "id": {"type": "string", "description": "1 to 256 of A-Z a-z 0-9 . _ : / @ -; generated when absent"},
                    "scope": {"type": "string", "default": "default"},
                    "title": {"type": "string"},
                    "text": {"type": "string"},
                    "metadata": {"type": "object"}}},
                "Replacement": {"type": "object", "required": ["text"], "additionalProperties": false, "properties": {
                    "title": {"type": "string"}, "text": {"type": "string"}, "metadata": {"type": "object"}}},
                "CommandResult": {"type": "object", "properties": {
                    "scope": {"type": "string"}, "id": {"type": "string"}, "version": {"type": "integer"},
                    "position": {"type": ["integer", "null"]}, "status": {"enum": ["appended", "unchanged"]}}},
                "Document": {"type": "object", "properties": {
                    "scope": {"type": "string"}, "id": {"type": "string"}, "version": {"type": "integer"},
                    "title": {"type": "string"}, "text": {"type": "string"}, "metadata": {"type": "object"},
                    "chunks": {"type": "integer"}, "projected_at": {"type": "integer"},
                    "position": {"type": "integer", "description": "The log position the read model reflected."}}},
                "History": {"type": "object", "properties": {
                    "scope": {"type": "string"}, "id": {"type": "string"}, "events": {"type": "array", "items": {"type": "object"}}}},
                "SearchRequest": search_request,
                "SearchResponse": search_response,
            },
        },
    })
}

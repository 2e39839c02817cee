//! `/v1/documents`: add, replace, remove (commands: they answer once the event is committed), and reads
//! of one document from the read model and of its history from the log.

use crate::read_model::{self, ProjectedDocument};
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::commands::{CommandContext, CommandOutcome};
use crate::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Metadata, Scope, Text, Title};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    id: Option<String>,
    scope: Option<String>,
    title: Option<String>,
    text: String,
    metadata: Option<Value>,
}

/// A replacement: what is left out becomes empty (PUT replaces the whole document).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceBody {
    title: Option<String>,
    text: String,
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentQuery {
    scope: Option<String>,
    /// For reads: wait until the read model has passed this position first.
    wait_for: Option<i64>,
}

fn key(scope: Option<&str>, id: &str) -> Result<DocumentKey, ApiError> {
    let scope = Scope::parse(scope.unwrap_or(Scope::DEFAULT))?;
    Ok(DocumentKey::new(scope, DocumentId::parse(id)?))
}

fn content(
    state: &AppState,
    title: Option<String>,
    text: String,
    metadata: Option<Value>,
) -> Result<DocumentContent, ApiError> {
    Ok(DocumentContent {
        title: Title::parse(title.as_deref().unwrap_or(""))?,
        text: Text::parse(text, &state.config().limits)?,
        metadata: Metadata::parse(metadata.unwrap_or_else(|| json!({})))?,
    })
}

fn uuid_header(headers: &HeaderMap, name: &str) -> Result<Option<Uuid>, ApiError> {
    let Some(value) = headers.get(name.to_ascii_lowercase().as_str()) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("the {name} header must be a UUID")))
}

/// Who and why, from the request headers: `X-Recall-Actor`, `Idempotency-Key` (a UUID that makes a
/// retried command a no-op) and `X-Correlation-Id`.
fn context(state: &AppState, headers: &HeaderMap) -> Result<CommandContext, ApiError> {
    let actor = match headers.get("x-recall-actor") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("the X-Recall-Actor header must be visible ASCII"))?
                .to_owned(),
        ),
        None => state.config().actor.clone(),
    };
    Ok(CommandContext {
        actor,
        correlation_id: uuid_header(headers, "X-Correlation-Id")?,
        causation_id: None,
        event_id: uuid_header(headers, "Idempotency-Key")?,
    })
}

/// `If-Match: "3"` (or a bare 3) is an expected version; `*` or no header means any. A weak tag
/// (`W/"3"`) never matches: If-Match compares strongly (RFC 9110 §13.1.1).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or("").trim();
    if raw == "*" {
        return Ok(None);
    }
    if raw.starts_with("W/") {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            format!(
                "If-Match compares strongly, so the weak tag {raw} never matches (RFC 9110 §13.1.1); send the strong ETag, such as {:?}",
                raw.trim_start_matches("W/")
            ),
        ));
    }
    raw.trim_matches('"').parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "If-Match must be a document version such as \"3\" (from the ETag or `version`), not {raw:?}"
        ))
    })
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

async fn execute(
    state: &AppState,
    name: &'static str,
    key: &DocumentKey,
    command: DocumentCommand,
    ctx: &CommandContext,
) -> Result<CommandOutcome, ApiError> {
    let started = Instant::now();
    let result = state.handler().execute(key, command, ctx).await.map_err(ApiError::from);
    state.metrics().append_latency.observe(started.elapsed());
    let outcome = match &result {
        Ok(CommandOutcome::Appended { .. }) => "appended",
        Ok(CommandOutcome::Unchanged { .. }) => "unchanged",
        Err(e) => e.code,
    };
    state.metrics().command(name, outcome);
    result
}

fn answer(key: &DocumentKey, outcome: CommandOutcome, created: bool) -> Response {
    let (status, version, position, label) = match outcome {
        CommandOutcome::Appended { version, position } => (
            if created { StatusCode::CREATED } else { StatusCode::OK },
            version,
            Some(position),
            "appended",
        ),
        CommandOutcome::Unchanged { version } => (StatusCode::OK, version, None, "unchanged"),
    };
    let body = json!({
        "scope": key.scope.as_str(),
        "id": key.id.as_str(),
        "version": version,
        "position": position,
        "status": label,
    });
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    if created {
        let location = format!(
            "/v1/documents/{}?scope={}",
            key.id.as_str().replace('/', "%2F"),
            key.scope.as_str()
        );
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    response
}

pub async fn add(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<AddBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let id = match body.id.as_deref() {
        Some(id) => DocumentId::parse(id)?,
        None => DocumentId::generate(),
    };
    let key = DocumentKey::new(Scope::parse(body.scope.as_deref().unwrap_or(Scope::DEFAULT))?, id);
    let content = content(&state, body.title, body.text, body.metadata)?;
    let ctx = context(&state, &headers)?;
    let outcome = execute(&state, "add", &key, DocumentCommand::Add { content }, &ctx).await?;
    Ok(answer(
        &key,
        outcome,
        matches!(outcome, CommandOutcome::Appended { .. }),
    ))
}

pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DocumentQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Json<ReplaceBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let key = key(query.scope.as_deref(), &id)?;
    let Json(body) = body?;
    let content = content(&state, body.title, body.text, body.metadata)?;
    let command = DocumentCommand::Update {
        content,
        expected_version: if_match(&headers)?,
    };
    let ctx = context(&state, &headers)?;
    let outcome = execute(&state, "update", &key, command, &ctx).await?;
    Ok(answer(&key, outcome, false))
}

pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DocumentQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let key = key(query.scope.as_deref(), &id)?;
    let command = DocumentCommand::Remove {
        expected_version: if_match(&headers)?,
    };
    let ctx = context(&state, &headers)?;
    let outcome = execute(&state, "remove", &key, command, &ctx).await?;
    Ok(answer(&key, outcome, false))
}

/// One document as the read model has it (the text from the event it was projected from).
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DocumentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let key = key(query.scope.as_deref(), &id)?;
    state.wait_for(query.wait_for).await?;
    let row = state.within_deadline(read_document(&state, &key)).await?;
    let not_projected = || {
        ApiError::not_found(format!(
            "document {:?} is not in scope {:?} of the read model; if you just added it, pass ?wait_for=<position> \
             from the add's answer",
            key.id.as_str(),
            key.scope.as_str()
        ))
    };
    let row = row.ok_or_else(not_projected)?;
    if row.removed {
        return Err(ApiError::new(
            StatusCode::GONE,
            "removed",
            format!(
                "document {:?} in scope {:?} was removed at version {}",
                key.id.as_str(),
                key.scope.as_str(),
                row.version
            ),
        ));
    }
    let version = row.version as u64;
    let mut response = Json(json!({
        "scope": key.scope.as_str(),
        "id": key.id.as_str(),
        "version": version,
        "title": row.title,
        "text": row.text,
        "metadata": row.metadata,
        "chunks": row.chunks,
        "projected_at": row.position,
        "position": row.checkpoint,
    }))
    .into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    Ok(response)
}

/// The document as the active read model has it, with the receipt.
async fn read_document(state: &AppState, key: &DocumentKey) -> Result<Option<ProjectedDocument>, ApiError> {
    let _turn = state.read_turn().await?;
    Ok(read_model::document(state.pool(), key).await?)
}

/// Every event of one document, oldest first, straight from the log.
pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DocumentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let key = key(query.scope.as_deref(), &id)?;
    let _turn = state.read_turn().await?;
    let events = state.handler().store().read_stream(&key.stream_id(), 1).await?;
    if events.is_empty() {
        return Err(ApiError::not_found(format!(
            "document {:?} has no history in scope {:?}",
            key.id.as_str(),
            key.scope.as_str()
        )));
    }
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "position": e.position,
                "version": e.version,
                "event_id": e.event_id,
                "type": e.event_type,
                "schema_version": e.schema_version,
                "recorded_at": e.recorded_at,
                "actor": e.actor,
                "correlation_id": e.correlation_id,
                "payload": serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::String(e.payload)),
                "hash": hex::encode(&e.hash),
            })
        })
        .collect();
    Ok(Json(json!({"scope": key.scope.as_str(), "id": key.id.as_str(), "events": events})).into_response())
}

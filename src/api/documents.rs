//! `/v1/documents`: add, replace, remove (commands: they answer once the event is committed), and reads
//! of one document from the read model and of its history from the log.

use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::commands::{CommandContext, CommandOutcome};
use crate::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Metadata, Scope, Text, Title};
use crate::extract::{Format, Hint};
use crate::read_model::{self, ProjectedDocument};

/// A new document.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewDocument)]
pub struct AddBody {
    /// 1 to 256 of A-Z a-z 0-9 . _ : / @ -; generated when absent.
    id: Option<String>,
    /// The document's scope (tenant or collection); `default` when absent.
    scope: Option<String>,
    title: Option<String>,
    text: String,
    /// A JSON object; searches can filter on it.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// A replacement: what is left out becomes empty (PUT replaces the whole document).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Replacement)]
pub struct ReplaceBody {
    title: Option<String>,
    text: String,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DocumentQuery {
    /// The document's scope (tenant or collection); `default` when absent.
    scope: Option<String>,
    /// For reads: wait until the read model has passed this log position first (read-your-writes);
    /// 504 on timeout.
    #[param(minimum = 0)]
    wait_for: Option<i64>,
}

/// What a command did.
#[derive(Serialize, ToSchema, schemars::JsonSchema)]
pub struct CommandResult {
    pub(crate) scope: String,
    pub(crate) id: String,
    /// The document's version after the command (its ETag).
    pub(crate) version: u64,
    /// The appended event's log position (pass it as `wait_for`); null when nothing was appended.
    pub(crate) position: Option<i64>,
    pub(crate) status: CommandStatus,
}

#[derive(Serialize, ToSchema, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    Appended,
    Unchanged,
}

/// A document as the read model has it.
#[derive(Serialize, ToSchema, schemars::JsonSchema)]
#[schema(as = Document)]
pub struct DocumentView {
    pub(crate) scope: String,
    pub(crate) id: String,
    pub(crate) version: u64,
    pub(crate) title: String,
    pub(crate) text: String,
    #[schema(value_type = Object)]
    pub(crate) metadata: Value,
    /// The file the text was extracted from: `{media_type, bytes, sha256, pages?, sections?}` (pages and
    /// sections as character ranges of `text`); absent for text given as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) origin: Option<Value>,
    /// Its current chunks.
    pub(crate) chunks: i64,
    /// The log position of the event this state was projected from.
    pub(crate) projected_at: i64,
    /// The receipt: the log position the read model reflected.
    pub(crate) position: i64,
}

/// Every event of a document, oldest first.
#[derive(Serialize, ToSchema, schemars::JsonSchema)]
pub struct History {
    pub(crate) scope: String,
    pub(crate) id: String,
    pub(crate) events: Vec<HistoryEvent>,
}

#[derive(Serialize, ToSchema, schemars::JsonSchema)]
pub struct HistoryEvent {
    pub(crate) position: i64,
    pub(crate) version: i64,
    pub(crate) event_id: Uuid,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    pub(crate) recorded_at: DateTime<Utc>,
    pub(crate) actor: Option<String>,
    pub(crate) correlation_id: Option<Uuid>,
    /// The event's payload as stored (JSON).
    #[schema(value_type = Object)]
    pub(crate) payload: Value,
    /// SHA-256 over the event and the previous hash (hex): the chain `recall verify` checks.
    pub(crate) hash: String,
}

pub(crate) fn key(scope: Option<&str>, id: &str) -> Result<DocumentKey, ApiError> {
    let scope = Scope::parse(scope.unwrap_or(Scope::DEFAULT))?;
    Ok(DocumentKey::new(scope, DocumentId::parse(id)?))
}

/// The key of a new document: its id, or a generated one.
pub(crate) fn new_key(scope: Option<&str>, id: Option<&str>) -> Result<DocumentKey, ApiError> {
    let id = match id {
        Some(id) => DocumentId::parse(id)?,
        None => DocumentId::generate(),
    };
    Ok(DocumentKey::new(Scope::parse(scope.unwrap_or(Scope::DEFAULT))?, id))
}

pub(crate) fn content(
    state: &AppState,
    title: Option<String>,
    text: String,
    metadata: Option<Value>,
) -> Result<DocumentContent, ApiError> {
    Ok(DocumentContent::plain(
        Title::parse(title.as_deref().unwrap_or(""))?,
        Text::parse(text, &state.config().limits)?,
        Metadata::parse(metadata.unwrap_or_else(|| json!({})))?,
    ))
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

pub(crate) async fn execute(
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

impl CommandResult {
    pub(crate) fn new(key: &DocumentKey, outcome: CommandOutcome) -> Self {
        let (version, position, status) = match outcome {
            CommandOutcome::Appended { version, position } => (version, Some(position), CommandStatus::Appended),
            CommandOutcome::Unchanged { version } => (version, None, CommandStatus::Unchanged),
        };
        CommandResult {
            scope: key.scope.as_str().to_owned(),
            id: key.id.as_str().to_owned(),
            version,
            position,
            status,
        }
    }
}

fn answer(key: &DocumentKey, outcome: CommandOutcome, created: bool) -> Response {
    let body = CommandResult::new(key, outcome);
    let (status, version) = match outcome {
        CommandOutcome::Appended { .. } if created => (StatusCode::CREATED, body.version),
        _ => (StatusCode::OK, body.version),
    };
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

/// Add a document.
#[utoipa::path(post, path = "/v1/documents",
    params(("Idempotency-Key" = Option<Uuid>, Header, description = "Makes a retried command a no-op: the same key and content is appended once."), UploadQuery),
    request_body(description = "The document as JSON, or a file as the body (PDF, HTML, Markdown or text; `application/octet-stream` to let recall tell from the content) with id, scope, title and metadata as query parameters (see UploadQuery). A file is extracted with its pages and heading sections; the event keeps the text, that structure and the file's media type, size and SHA-256, not the file.",
        content(
            (AddBody = "application/json"),
            ("application/pdf"),
            ("text/html"),
            ("text/markdown"),
            ("text/plain"),
            ("application/octet-stream")
        )),
    responses(
        (status = 201, description = "Appended; `position` is the event's log position (pass it as wait_for).", body = CommandResult),
        (status = 200, description = "The same content was already there; nothing appended.", body = CommandResult),
        (status = 400, description = "Invalid JSON, an unknown field or an invalid document (the message names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 409, description = "The document already exists with other content.", body = ErrorBody),
        (status = 413, description = "The body, the file or the text is over the size limit.", body = ErrorBody),
        (status = 415, description = "A media type recall does not read.", body = ErrorBody),
        (status = 422, description = "The file cannot be read (encrypted, no text layer, corrupt, over its time or memory bound); the message says what to do.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; nothing was written. Retry after the Retry-After seconds.", body = ErrorBody),
    ))]
pub async fn add(State(state): State<AppState>, headers: HeaderMap, request: Request) -> Result<Response, ApiError> {
    let (key, content) = match upload_type(&headers)? {
        None => {
            let Json(body) = Json::<AddBody>::from_request(request, &state).await?;
            let key = new_key(body.scope.as_deref(), body.id.as_deref())?;
            (key, content(&state, body.title, body.text, body.metadata)?)
        }
        Some(media_type) => {
            let query = upload_query(&request)?;
            let key = new_key(query.scope.as_deref(), query.id.as_deref())?;
            (key, upload_content(&state, &headers, media_type, query, request).await?)
        }
    };
    let ctx = context(&state, &headers)?;
    let outcome = execute(&state, "add", &key, DocumentCommand::Add { content }, &ctx).await?;
    Ok(answer(
        &key,
        outcome,
        matches!(outcome, CommandOutcome::Appended { .. }),
    ))
}

/// Where an upload (a file as the body) says who it is: the JSON body's fields, as query parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// POST only: the new document's id (generated when absent).
    id: Option<String>,
    /// The document's scope (tenant or collection); `default` when absent.
    scope: Option<String>,
    /// The title; default: the file's own (an HTML page's title, a PDF's), else the Content-Disposition
    /// file name.
    title: Option<String>,
    /// Metadata as a JSON object (URL-encoded).
    metadata: Option<String>,
}

/// The media type of an upload, or `None` for a JSON body (or none declared: the JSON path says what
/// it expected). A type recall does not read is refused with 415.
pub(super) fn upload_type(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let media_type = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let essence = media_type.split(';').next().unwrap_or("").trim();
    if essence == "application/json" || essence.ends_with("+json") {
        return Ok(None);
    }
    if Format::from_media_type(essence).is_some() || essence == "application/octet-stream" {
        return Ok(Some(media_type));
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "recall reads application/json documents and application/pdf, text/html, text/markdown or text/plain \
             files, not {essence:?}; send application/octet-stream to let recall tell from the content"
        ),
    ))
}

fn upload_query(request: &Request) -> Result<UploadQuery, ApiError> {
    let Query(query) = Query::<UploadQuery>::try_from_uri(request.uri())?;
    Ok(query)
}

/// The file in the body as a document: read up to the file limit, extracted in a bounded worker, and
/// titled (the query's title, else the file's own, else its Content-Disposition name).
async fn upload_content(
    state: &AppState,
    headers: &HeaderMap,
    media_type: String,
    query: UploadQuery,
    request: Request,
) -> Result<DocumentContent, ApiError> {
    let extractor = &state.config().extractor;
    let limit = extractor.limits().max_file_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit as usize)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the file is over the limit of {limit} bytes; split it or raise RECALL_MAX_FILE_BYTES"),
            )
        })?;
    let file_name = headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(disposition_file_name);
    let metadata = match query.metadata.as_deref() {
        Some(raw) => serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("the metadata parameter is not JSON ({e}); give an object")))?,
        None => match &file_name {
            Some(name) => json!({ "filename": name }),
            None => json!({}),
        },
    };
    let hint = Hint {
        name: file_name.clone(),
        media_type: Some(media_type).filter(|m| !m.starts_with("application/octet-stream")),
    };
    let (_, mut content) = extractor
        .document(
            &bytes,
            &hint,
            file_name.as_deref().unwrap_or(""),
            Metadata::parse(metadata)?,
        )
        .await?;
    if let Some(title) = query.title {
        content.title = Title::parse(&title)?;
    }
    Ok(content)
}

/// The file name of `Content-Disposition: attachment; filename="report.pdf"` (the plain form).
fn disposition_file_name(value: &str) -> Option<String> {
    value.split(';').map(str::trim).find_map(|part| {
        let name = part.strip_prefix("filename=")?.trim_matches('"');
        let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
        (!name.is_empty()).then(|| name.to_owned())
    })
}

/// Replace a document's title, text and metadata.
#[utoipa::path(put, path = "/v1/documents/{id}",
    params(("id" = String, Path, description = "The document id; percent-encode `/` as %2F."), DocumentQuery, ("If-Match" = Option<String>, Header, description = "The version the document must be at (its ETag); 409 when it is not."), ("Idempotency-Key" = Option<Uuid>, Header, description = "Makes a retried command a no-op: the same key and content is appended once.")),
    request_body(description = "The document as JSON, or a file as the body (PDF, HTML, Markdown or text; `application/octet-stream` to let recall tell from the content) with scope, title and metadata as query parameters (see UploadQuery). A file is extracted with its pages and heading sections; the event keeps the text, that structure and the file's media type, size and SHA-256, not the file.",
        content(
            (ReplaceBody = "application/json"),
            ("application/pdf"),
            ("text/html"),
            ("text/markdown"),
            ("text/plain"),
            ("application/octet-stream")
        )),
    responses(
        (status = 200, description = "Appended (or unchanged).", body = CommandResult),
        (status = 400, description = "Invalid JSON, an unknown field or an invalid document (the message names it).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such document.", body = ErrorBody),
        (status = 409, description = "Version conflict (If-Match).", body = ErrorBody),
        (status = 410, description = "The document was removed; add it again.", body = ErrorBody),
        (status = 412, description = "If-Match is not a version (a weak ETag, or not a number).", body = ErrorBody),
        (status = 413, description = "The body, the file or the text is over the size limit.", body = ErrorBody),
        (status = 415, description = "A media type recall does not read.", body = ErrorBody),
        (status = 422, description = "The file cannot be read; the message says why and what to do.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; nothing was written.", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let (key, content) = match upload_type(&headers)? {
        None => {
            let Query(query) = Query::<DocumentQuery>::try_from_uri(request.uri())?;
            let key = key(query.scope.as_deref(), &id)?;
            let Json(body) = Json::<ReplaceBody>::from_request(request, &state).await?;
            (key, content(&state, body.title, body.text, body.metadata)?)
        }
        Some(media_type) => {
            let query = upload_query(&request)?;
            if query.id.is_some() {
                return Err(ApiError::bad_request("the id is in the path; drop the id parameter"));
            }
            let key = key(query.scope.as_deref(), &id)?;
            (key, upload_content(&state, &headers, media_type, query, request).await?)
        }
    };
    let command = DocumentCommand::Update {
        content,
        expected_version: if_match(&headers)?,
    };
    let ctx = context(&state, &headers)?;
    let outcome = execute(&state, "update", &key, command, &ctx).await?;
    Ok(answer(&key, outcome, false))
}

/// Remove a document.
#[utoipa::path(delete, path = "/v1/documents/{id}",
    params(("id" = String, Path, description = "The document id; percent-encode `/` as %2F."), DocumentQuery, ("If-Match" = Option<String>, Header, description = "The version the document must be at (its ETag); 409 when it is not."), ("Idempotency-Key" = Option<Uuid>, Header, description = "Makes a retried command a no-op: the same key and content is appended once.")),
    responses(
        (status = 200, description = "Appended.", body = CommandResult),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such document.", body = ErrorBody),
        (status = 409, description = "Version conflict (If-Match).", body = ErrorBody),
        (status = 410, description = "Already removed.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; nothing was written.", body = ErrorBody),
    ))]
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

/// One document as the read model has it.
#[utoipa::path(get, path = "/v1/documents/{id}",
    params(("id" = String, Path, description = "The document id; percent-encode `/` as %2F."), DocumentQuery),
    responses(
        (status = 200, description = "The document, with the receipt.", body = DocumentView),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "Not in the read model (not added, or not projected yet).", body = ErrorBody),
        (status = 410, description = "Removed.", body = ErrorBody),
        (status = 504, description = "wait_for timed out.", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DocumentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let key = key(query.scope.as_deref(), &id)?;
    let document = document(&state, &key, query.wait_for).await?;
    let version = document.version;
    let mut response = Json(document).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    Ok(response)
}

/// One document as the read model has it, after waiting for `wait_for`; 404 when it is not there and
/// 410 when it was removed.
pub(crate) async fn document(
    state: &AppState,
    key: &DocumentKey,
    wait_for: Option<i64>,
) -> Result<DocumentView, ApiError> {
    state.wait_for(wait_for).await?;
    let row = state.within_deadline(read_document(state, key, wait_for)).await?;
    let not_projected = || {
        ApiError::not_found(format!(
            "document {:?} is not in scope {:?} of the read model; if you just added it, pass wait_for=<position> \
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
    Ok(DocumentView {
        scope: key.scope.as_str().to_owned(),
        id: key.id.as_str().to_owned(),
        version: row.version as u64,
        title: row.title,
        text: row.text,
        metadata: row.metadata,
        origin: row.origin,
        chunks: row.chunks,
        projected_at: row.position,
        position: row.checkpoint,
    })
}

/// The document as the active read model has it, with the receipt: from a replica that has reached
/// `at_least` when one has, else from the primary.
async fn read_document(
    state: &AppState,
    key: &DocumentKey,
    at_least: Option<i64>,
) -> Result<Option<ProjectedDocument>, ApiError> {
    let _turn = state.read_turn().await?;
    let (document, _) = state
        .readers()
        .read(
            at_least,
            |pool| async move { read_model::document(&pool, key).await },
            |e| match e {
                read_model::ReadModelError::Database(e) => Some(e),
                _ => None,
            },
        )
        .await?;
    Ok(document)
}

/// Every event of one document, oldest first, straight from the log.
#[utoipa::path(get, path = "/v1/documents/{id}/history",
    params(("id" = String, Path, description = "The document id; percent-encode `/` as %2F."), DocumentQuery),
    responses(
        (status = 200, description = "The events.", body = History),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such document.", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DocumentQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let Query(query) = query?;
    let key = key(query.scope.as_deref(), &id)?;
    Ok(Json(history_of(&state, &key).await?))
}

/// Every event of one document, oldest first; 404 when it has none.
pub(crate) async fn history_of(state: &AppState, key: &DocumentKey) -> Result<History, ApiError> {
    let _turn = state.read_turn().await?;
    let events = state.handler().store().read_stream(&key.stream_id(), 1).await?;
    if events.is_empty() {
        return Err(ApiError::not_found(format!(
            "document {:?} has no history in scope {:?}",
            key.id.as_str(),
            key.scope.as_str()
        )));
    }
    let events = events
        .into_iter()
        .map(|e| HistoryEvent {
            position: e.position,
            version: e.version,
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            actor: e.actor,
            correlation_id: e.correlation_id,
            payload: serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::String(e.payload)),
            hash: hex::encode(&e.hash),
        })
        .collect();
    Ok(History {
        scope: key.scope.as_str().to_owned(),
        id: key.id.as_str().to_owned(),
        events,
    })
}

//! Every failure the API reports, as `{"error": {"code", "message"}}` with a status that says whose
//! move it is. Messages say what was wrong and what to do; database internals stay in the server log.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::commands::CommandError;
use crate::domain::DomainError;
use crate::event_store::EventStoreError;
use crate::extract::ExtractError;
use crate::postgres::{is_transient, is_unavailable};
use crate::projector::ProjectorError;
use crate::read_model::ReadModelError;
use crate::search::SearchError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A database failure: "retry later" when the server is unreachable or gave the statement up for a
    /// reason of the moment (the request deadline, a conflicting transaction), else an internal error whose
    /// details go to the log only.
    pub fn database(error: &sqlx::Error) -> Self {
        if is_unavailable(error) {
            tracing::warn!(%error, "database unavailable");
            Self::unavailable("the database is unavailable; retry shortly")
        } else if is_transient(error) {
            tracing::warn!(%error, "database gave up on the request for now");
            Self::unavailable(
                "the database could not finish the request in time (too slow for the request deadline, or a \
                 conflicting transaction); retry shortly",
            )
        } else {
            Self::internal(error)
        }
    }

    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged on the server",
        )
    }
}

/// Every refusal's body.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`not_found`, `conflict`, `unavailable`, ...).
    pub code: &'static str,
    /// What was wrong and how to fix it.
    pub message: String,
}

impl ApiError {
    /// The body every refusal carries (MCP tool errors carry it too).
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }

    /// The headers a refusal's status calls for: `Retry-After` on 503, the challenge on 401.
    pub(crate) fn add_status_headers(&self, response: &mut Response) {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(RETRY_AFTER_SECS));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"recall\""),
            );
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        self.add_status_headers(&mut response);
        response
    }
}

/// The outermost layer: any error status that left without recall's JSON body (a rejection by one of the
/// framework's extractors, such as a path that is not valid percent-encoded UTF-8, or a method the route
/// does not have) gets one, with the framework's explanation as the message and its headers kept.
pub async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&bytes).trim().to_owned();
    let allow = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("{method} is not allowed here; this path takes {allow}"),
        ),
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint; see /openapi.json".to_owned()),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is over the size limit".to_owned(),
        ),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the service is unavailable; retry shortly".to_owned()),
        s if s.is_server_error() => ("internal", "an internal error occurred".to_owned()),
        _ if detail.is_empty() => ("invalid_request", format!("the request was refused ({status})")),
        _ => ("invalid_request", format!("the request was refused: {detail}")),
    };
    let mut replaced = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().insert(name.clone(), value.clone());
        }
    }
    replaced
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        let (status, code) = match &error {
            DomainError::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            DomainError::VersionConflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            DomainError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            DomainError::Removed { .. } => (StatusCode::GONE, "removed"),
            DomainError::TextTooLong { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "text_too_long"),
            _ => (StatusCode::BAD_REQUEST, "invalid_document"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<EventStoreError> for ApiError {
    fn from(error: EventStoreError) -> Self {
        match &error {
            EventStoreError::Unavailable(_) | EventStoreError::WriterGone => {
                tracing::warn!(%error, "event store unavailable");
                ApiError::unavailable("the event log is unavailable; nothing was written; retry shortly")
            }
            EventStoreError::EventIdReused { .. } => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_key_reused", error.to_string())
            }
            EventStoreError::Database(e) => ApiError::database(e),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Rejected(e) => e.into(),
            CommandError::Store(e) => e.into(),
            CommandError::Contended { .. } => ApiError::unavailable(error.to_string()),
            CommandError::Corrupt { .. } => ApiError::internal(&error),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(error: SearchError) -> Self {
        match &error {
            SearchError::BadK { .. }
            | SearchError::BadAsOf(_)
            | SearchError::BadFilter
            | SearchError::EmptyQuery
            | SearchError::QueryTooLong { .. } => ApiError::bad_request(error.to_string()),
            SearchError::AsOfAhead { .. } => ApiError::new(StatusCode::CONFLICT, "as_of_ahead", error.to_string()),
            SearchError::NoReadModel => ApiError::unavailable(
                "there is no read model yet: the projector has not started; retry shortly or run `recall project`",
            ),
            SearchError::Database(e) => ApiError::database(e),
            SearchError::NoVector { .. } => ApiError::internal(&error),
        }
    }
}

impl From<ProjectorError> for ApiError {
    fn from(error: ProjectorError) -> Self {
        match error {
            ProjectorError::ReadModel(error) => error.into(),
            ProjectorError::Database(e) => ApiError::database(&e),
            ProjectorError::Store(_) => ApiError::unavailable(error.to_string()),
            _ => ApiError::internal(&error),
        }
    }
}

impl From<ReadModelError> for ApiError {
    fn from(error: ReadModelError) -> Self {
        match &error {
            ReadModelError::WaitTimeout { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "wait_timeout", error.to_string())
            }
            ReadModelError::Database(e) => ApiError::database(e),
            _ => ApiError::internal(&error),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            // Syntax errors, wrong types, unknown and missing fields: all the client's to fix.
            _ => (StatusCode::BAD_REQUEST, "invalid_json"),
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is over the size limit; send a smaller document or raise --max-body-bytes".into()
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "send the body as JSON with `Content-Type: application/json`".into(),
            _ => rejection.body_text(),
        };
        ApiError::new(status, code, message)
    }
}

impl From<ExtractError> for ApiError {
    fn from(error: ExtractError) -> Self {
        let (status, code) = match &error {
            ExtractError::Invalid(domain) => return domain.clone().into(),
            ExtractError::TooLarge { .. } | ExtractError::TextTooLong { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ExtractError::NoWorker { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "extractor_unavailable"),
            // The file itself is the problem: the same request will fail the same way.
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "unreadable_file"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", rejection.body_text())
    }
}

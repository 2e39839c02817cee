//! The HTTP API (axum) that agents use: document commands, reads of the read model, search with
//! receipts and read-your-writes, health, readiness, metrics and an OpenAPI document. Handlers are
//! thin: they parse, call the command handler or the search module, and map errors to
//! `{"error": {"code", "message"}}`. Commands never touch the model; searches reach it through the
//! query path's own thread pool.

pub(crate) mod documents;
mod embeddings;
mod error;
mod health;
mod metrics;
mod openapi;
pub(crate) mod search;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::commands::CommandHandler;
use crate::domain::Limits;
use crate::event_store::EventStore;
use crate::extract::{ExtractLimits, Extractor};
use crate::postgres::Databases;
use crate::projector::{Foreground, ProjectorStats};
use crate::read_model::CheckpointWatch;
use crate::search::QueryEncoder;
use tokio::sync::{Semaphore, SemaphorePermit};

pub use error::ApiError;
pub use metrics::Metrics;
pub use openapi::openapi;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Accepted bearer tokens; empty means no authentication (loopback only, enforced by `recall serve`).
    pub tokens: Vec<String>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// The longest a `wait_for` may hold a request before answering 504.
    pub wait_timeout: Duration,
    pub limits: Limits,
    /// Stored as the actor of commands that do not name one (`X-Recall-Actor`).
    pub actor: Option<String>,
    /// How long after a request the in-process projector keeps a core free (see `projector::Foreground`);
    /// zero never yields.
    pub foreground_window: Duration,
    /// Every request answers within this (a search's `wait_for` may add `wait_timeout`): past it, 503
    /// with Retry-After, so that a stalled database never holds a client.
    pub request_deadline: Duration,
    /// Searches waiting for a position (`wait_for`) at once; more get 429.
    pub max_waiters: usize,
    /// Turns uploaded files (PDF, HTML, Markdown, text) into documents, in bounded worker processes.
    pub extractor: Extractor,
}

/// Connections of the pool that reads (searches, document reads, metrics) never take, so that commands
/// always find one however many searches run.
const COMMAND_RESERVE: u32 = 4;

impl Default for ApiConfig {
    fn default() -> Self {
        let limits = Limits::default();
        ApiConfig {
            tokens: Vec::new(),
            max_body_bytes: default_max_body_bytes(&limits),
            wait_timeout: Duration::from_secs(30),
            limits,
            actor: None,
            foreground_window: Duration::from_secs(2),
            request_deadline: Duration::from_secs(5),
            max_waiters: 1000,
            extractor: Extractor::new(Extractor::program_from_env(), ExtractLimits::default(), limits),
        }
    }
}

/// Room for the largest accepted text after JSON escaping, plus title and metadata.
pub fn default_max_body_bytes(limits: &Limits) -> usize {
    limits.max_text_bytes * 2 + (1 << 20)
}

/// Tokens from `RECALL_API_TOKEN`: one or more, separated by commas or whitespace.
pub fn parse_tokens(raw: &str) -> Vec<String> {
    raw.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The in-process projector, as readiness and metrics see it.
#[derive(Clone)]
pub enum ProjectorState {
    /// Runs elsewhere (`recall serve --no-projector`).
    External,
    /// Waiting for the model to load.
    Starting,
    Running(Arc<ProjectorStats>),
    Failed(String),
}

/// Shared by every handler. The query encoder arrives after start-up: the API takes commands while the
/// model loads, and searches answer 503 until it is there.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    handler: CommandHandler,
    /// The log (the handler's) and the read model, in one database or two.
    databases: Databases,
    config: ApiConfig,
    metrics: Metrics,
    queries: OnceLock<Arc<QueryEncoder>>,
    projector: Mutex<ProjectorState>,
    foreground: Foreground,
    /// Started with the first `wait_for`.
    checkpoints: OnceLock<CheckpointWatch>,
    /// Searches and document reads: replicas of the read model when there are, else its primary.
    readers: crate::read_model::Readers,
    waiters: Semaphore,
    reads: Semaphore,
    /// Cancelled when the server stops: ends long-lived streams (MCP sessions) so shutdown can finish.
    shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// Commands append to `databases`' log; searches, document reads and waits read its read model.
    pub fn new(databases: &Databases, config: ApiConfig) -> Self {
        let connections = databases.read_model().options().get_max_connections();
        // Reads leave commands a few connections when the two share a pool; apart, reads may take all.
        let reserve = match databases.is_split() {
            true => 0,
            false => COMMAND_RESERVE,
        };
        let reads = connections.saturating_sub(reserve).max(1) as usize;
        AppState {
            inner: Arc::new(Inner {
                handler: CommandHandler::new(EventStore::new(databases.log().clone())),
                databases: databases.clone(),
                foreground: Foreground::new(config.foreground_window),
                checkpoints: OnceLock::new(),
                readers: crate::read_model::Readers::new(databases),
                waiters: Semaphore::new(config.max_waiters),
                reads: Semaphore::new(reads),
                config,
                metrics: Metrics::default(),
                queries: OnceLock::new(),
                projector: Mutex::new(ProjectorState::External),
                shutdown: tokio_util::sync::CancellationToken::new(),
            }),
        }
    }

    /// Makes searches possible; later calls are ignored.
    pub fn set_query_encoder(&self, encoder: Arc<QueryEncoder>) {
        let _ = self.inner.queries.set(encoder);
    }

    pub fn set_projector(&self, state: ProjectorState) {
        *self.inner.projector.lock().expect("projector state lock") = state;
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Marked by every API request; give it to an in-process projector so that it yields to them.
    pub fn foreground(&self) -> &Foreground {
        &self.inner.foreground
    }

    fn projector(&self) -> ProjectorState {
        self.inner.projector.lock().expect("projector state lock").clone()
    }

    /// Signalled when the server stops.
    pub fn shutdown(&self) -> &tokio_util::sync::CancellationToken {
        &self.inner.shutdown
    }

    /// Where this service's commands spent their time (what `/metrics` shows).
    pub fn command_timings(&self) -> &crate::event_store::CommandTimings {
        self.inner.handler.store().command_timings()
    }

    pub(crate) fn handler(&self) -> &CommandHandler {
        &self.inner.handler
    }

    /// The read model's database.
    pub(crate) fn read_model(&self) -> &sqlx::PgPool {
        self.inner.databases.read_model()
    }

    pub(crate) fn readers(&self) -> &crate::read_model::Readers {
        &self.inner.readers
    }

    pub(crate) fn databases(&self) -> &Databases {
        &self.inner.databases
    }

    pub(crate) fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Read-your-writes: waits until the read model has passed `position` (if given), or answers 504.
    /// A waiter holds no database connection (it watches the checkpoint that one task follows), and at
    /// most `max_waiters` wait at once.
    pub(crate) async fn wait_for(&self, position: Option<i64>) -> Result<(), ApiError> {
        let Some(position) = position else {
            return Ok(());
        };
        let _waiting = self.inner.waiters.try_acquire().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_waiters",
                format!(
                    "{} searches are already waiting for positions; retry shortly or search without wait_for",
                    self.config().max_waiters
                ),
            )
        })?;
        let watch = self
            .inner
            .checkpoints
            .get_or_init(|| CheckpointWatch::spawn(self.read_model().clone()));
        let timeout = self.config().wait_timeout;
        watch.wait_for(position, timeout).await.map(drop).map_err(|checkpoint| {
            crate::read_model::ReadModelError::WaitTimeout {
                position,
                checkpoint,
                waited: timeout,
            }
            .into()
        })
    }

    /// Runs the work after a request's wait (`wait_for`) within the request deadline: 503 with
    /// Retry-After past it.
    pub(crate) async fn within_deadline<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let limit = self.config().request_deadline;
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(past_deadline(limit)))
    }

    /// A turn to read from the database: reads share the pool less COMMAND_RESERVE connections.
    pub(crate) async fn read_turn(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        self.inner
            .reads
            .acquire()
            .await
            .map_err(|_| ApiError::unavailable("shutting down"))
    }

    pub(crate) fn query_encoder(&self) -> Result<Arc<QueryEncoder>, ApiError> {
        self.inner
            .queries
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("the embedding model is still loading; retry shortly"))
    }
}

pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The API with further routes behind the same tokens, limits and error handling (the server adds MCP
/// at `/mcp` this way).
pub fn router_with(state: AppState, protected: Router<AppState>) -> Router {
    let protected = protected
        .route("/v1/documents", post(documents::add))
        .route(
            "/v1/documents/{id}",
            get(documents::get).put(documents::update).delete(documents::remove),
        )
        .route("/v1/documents/{id}/history", get(documents::history))
        .route("/v1/search", post(search::search))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(embeddings::models))
        .route("/metrics", get(health::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::openapi_document))
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(middleware::from_fn(error::json_errors))
        .with_state(state)
}

/// Bearer-token check: constant-time over each configured token.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let tokens = &state.config().tokens;
    if tokens.is_empty() {
        return Ok(next.run(request).await);
    }
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match offered {
        Some(token) if tokens.iter().any(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) => {
            Ok(next.run(request).await)
        }
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not one of this server's RECALL_API_TOKEN values",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server requires `Authorization: Bearer <token>` (one of its RECALL_API_TOKEN values)",
        )),
    }
}

/// The token of a `Bearer` credential; the scheme's name is case-insensitive (RFC 9110 §11.1).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One log line and one status count per request.
/// Every request answers within the deadline. A command cut off by it may or may not have been
/// appended (the database was too slow to say), and the answer says so: a retry with the same
/// Idempotency-Key is safe either way.
async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let config = state.config();
    if request.uri().path().starts_with("/mcp") {
        // A session's event stream lives as long as the session; each tool call has its own deadline.
        return next.run(request).await;
    }
    let is_command = request.uri().path().starts_with("/v1/documents") && request.method() != Method::GET;
    // A file in the body is extracted first, within the extractor's own time bound.
    let is_upload = is_command && matches!(documents::upload_type(request.headers()), Ok(Some(_)));
    // A search may wait for a position in its body, a document read in its query string.
    let may_wait =
        request.uri().path() == "/v1/search" || request.uri().query().is_some_and(|q| q.contains("wait_for"));
    let limit = if may_wait {
        config.request_deadline + config.wait_timeout
    } else if is_upload {
        config.request_deadline + config.extractor.limits().timeout
    } else {
        config.request_deadline
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) if is_command => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown",
            format!(
                "the command did not finish within the request deadline of {limit:?} (the database is slow or \
                 unreachable), so it may or may not have been appended; retry with the same Idempotency-Key, \
                 which is safe either way"
            ),
        )
        .into_response(),
        Err(_) => past_deadline(limit).into_response(),
    }
}

/// A request (other than a command, whose outcome it leaves unknown) cut off by its deadline.
fn past_deadline(limit: Duration) -> ApiError {
    ApiError::unavailable(format!(
        "the request did not finish within the deadline of {limit:?} (the database is slow or unreachable); retry shortly"
    ))
}

async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    if path.starts_with("/v1/") || path.starts_with("/mcp") {
        // Agents' requests, not health checks or scrapes, which would keep the projector slowed forever.
        state.foreground().touch();
    }
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    state.metrics().response(status.as_u16());
    tracing::info!(%method, %path, status = status.as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "request");
    response
}

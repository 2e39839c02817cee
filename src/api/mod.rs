//! The HTTP API (axum) that agents use: document commands, reads of the read model, search with
//! receipts and read-your-writes, health, readiness, metrics and an OpenAPI document. Handlers are
//! thin: they parse, call the command handler or the search module, and map errors to
//! `{"error": {"code", "message"}}`. Commands never touch the model; searches reach it through the
//! query path's own thread pool.

mod documents;
mod error;
mod health;
mod metrics;
mod openapi;
mod search;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::commands::CommandHandler;
use crate::domain::Limits;
use crate::projector::{Foreground, ProjectorStats};
use crate::search::QueryEncoder;

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
}

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
    config: ApiConfig,
    metrics: Metrics,
    queries: OnceLock<Arc<QueryEncoder>>,
    projector: Mutex<ProjectorState>,
    foreground: Foreground,
}

impl AppState {
    pub fn new(handler: CommandHandler, config: ApiConfig) -> Self {
        AppState {
            inner: Arc::new(Inner {
                handler,
                foreground: Foreground::new(config.foreground_window),
                config,
                metrics: Metrics::default(),
                queries: OnceLock::new(),
                projector: Mutex::new(ProjectorState::External),
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

    fn handler(&self) -> &CommandHandler {
        &self.inner.handler
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.inner.handler.store().pool()
    }

    fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Read-your-writes: waits until the read model has passed `position` (if given), or answers 504.
    async fn wait_for(&self, position: Option<i64>) -> Result<(), ApiError> {
        if let Some(position) = position {
            crate::projector::wait_for(self.pool(), position, self.config().wait_timeout).await?;
        }
        Ok(())
    }

    fn query_encoder(&self) -> Result<Arc<QueryEncoder>, ApiError> {
        self.inner
            .queries
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("the embedding model is still loading; retry shortly"))
    }
}

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/documents", post(documents::add))
        .route(
            "/v1/documents/{id}",
            get(documents::get).put(documents::update).delete(documents::remove),
        )
        .route("/v1/documents/{id}/history", get(documents::history))
        .route("/v1/search", post(search::search))
        .route("/metrics", get(health::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(health::openapi_document))
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
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
    let (scheme, token) = authorization.trim().split_once(|c: char| c == ' ' || c == '\t')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One log line and one status count per request.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    if path.starts_with("/v1/") {
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
